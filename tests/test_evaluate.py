"""``ttsr evaluate``: the library run, the command as a user runs it, and the published
bicubic baselines measured on the real benchmark images."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, make_cufed5, run_cli, sample_image, save_png
from ttsr_cli.evaluate import Skipped, prepare, run
from ttsr_cli.metrics import score
from ttsr_cli.pixels import degrade
from ttsr_cli.run import Runner, RunSettings, load_runner

DATASETS = SHARED / "datasets"
KEYS = {"dataset", "protocol", "images", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}
IMAGE_KEYS = {"name", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}


def _runner(weights: Path) -> Runner:
    return load_runner(None, str(weights), RunSettings(search="exact"))


def require_dataset(name: str) -> Path:
    folder = DATASETS / name
    if not folder.is_dir():
        pytest.skip(f"benchmark images not found at {folder} (../shared is absent)")
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    save_png(root / "a.png", sample_image("astronaut", (90, 70)))
    save_png(root / "b.png", sample_image("coffee", (64, 48)))
    return root


def evaluate_json(*args: str | Path) -> dict:
    result = run_cli("evaluate", *args, "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one JSON document, nothing else


@pytest.mark.parametrize(
    ("name", "psnr", "ssim"),
    [
        ("Set5", 28.429, 0.8110),
        ("Set14", 25.857, 0.7057),
        pytest.param("Urban100", 23.133, 0.6592, marks=pytest.mark.slow),  # 100 large images
    ],
)
def test_published_bicubic_baselines(name: str, psnr: float, ssim: float) -> None:
    data_dir = require_dataset(name)
    report = evaluate_json("--dataset", name.lower(), "--data-dir", data_dir, "-m", "bicubic")
    assert report["images"] == len(report["per_image"]) > 0
    assert round(report["bicubic_psnr"], 3) == psnr
    assert round(report["bicubic_ssim"], 4) == ssim
    assert report["psnr"] is None and report["ssim"] is None


def test_library_run_scores_model_and_baseline(folder: Path, tiny_weights: Path) -> None:
    benchmark = prepare("photos", folder, _runner(tiny_weights))
    seen = []
    report = run(benchmark, on_image=seen.append)
    assert [r.name for r in report.results] == ["a.png", "b.png"] == [s.name for s in seen]
    hr, _lr, baseline = degrade(sample_image("astronaut", (90, 70)), 4)
    expected = score(baseline, hr)
    first = report.results[0]
    assert (first.bicubic_psnr, first.bicubic_ssim) == (expected.psnr, expected.ssim)
    assert first.psnr is not None and first.ssim is not None
    assert report.mean("psnr") == pytest.approx(np.mean([r.psnr for r in report.results]))


def test_cufed5_all_levels_are_searched_together(tmp_path: Path, tiny_weights: Path) -> None:
    root = make_cufed5(tmp_path / "CUFED5", ids=("000",))
    for level, expected in (("2", 1), ("all", 5)):
        benchmark = prepare("cufed5", root, _runner(tiny_weights), ref_level=level)
        upscaler = benchmark.upscaler
        counts = []

        def counting_upscale(lr, references, upscale=upscaler.upscale, counts=counts):
            counts.append(len(references))
            return upscale(lr, references)

        upscaler.upscale = counting_upscale
        report = run(benchmark)
        assert [r.name for r in report.results] == ["000"]
        assert counts == [expected]


def test_evaluate_command_json_csv_and_images(
    folder: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    table = tmp_path / "out" / "results.csv"
    saved = tmp_path / "saved"
    report = evaluate_json(
        "-d", "photos", "--data-dir", folder, "-w", tiny_weights, "--csv", table,
        "--save-images", saved,
    )  # fmt: skip
    assert set(report) == KEYS | {"per_image", "model", "baseline", "degrade"}
    assert report["baseline"] == "bicubic" and report["degrade"] is None
    assert report["model"] == str(tiny_weights)
    assert report["dataset"] == "photos" and report["protocol"] == "ttsr"
    assert report["images"] == 2
    assert all(set(row) == IMAGE_KEYS for row in report["per_image"])
    assert all(isinstance(report[k], float) for k in KEYS - {"dataset", "protocol", "images"})
    rows = list(csv.DictReader(table.open()))
    assert [r["name"] for r in rows] == ["a.png", "b.png", "mean"]
    assert float(rows[-1]["psnr"]) == pytest.approx(report["psnr"])
    assert float(rows[0]["bicubic_ssim"]) == pytest.approx(report["per_image"][0]["bicubic_ssim"])
    assert sorted(p.name for p in saved.iterdir()) == [
        "a_bicubic.png", "a_ttsr.png", "b_bicubic.png", "b_ttsr.png"
    ]  # fmt: skip
    assert Image.open(saved / "a_ttsr.png").size == (88, 68)  # cropped to multiples of 4


def test_baseline_only_with_limit_and_rgb_protocol(folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "r.csv"
    report = evaluate_json(
        "-d", "photos", "--data-dir", folder, "--limit", "1", "--protocol", "rgb", "--csv", table,
        "--model", "bicubic",
    )  # fmt: skip
    assert report["protocol"] == "rgb" and report["images"] == 1
    assert report["psnr"] is None and report["per_image"][0]["psnr"] is None
    assert list(csv.reader(table.open()))[1][1:3] == ["", ""]  # no model: empty cells


def test_without_a_model_the_bundled_default_runs_beside_bicubic(folder: Path) -> None:
    report = evaluate_json("-d", "photos", "--data-dir", folder)
    assert report["model"] == "ttsr (the bundled default)"
    assert report["psnr"] > report["bicubic_psnr"]  # the trained model beats bicubic here
    said = run_cli("evaluate", "-d", "photos", "--data-dir", folder, "--limit", "1")
    assert said.returncode == 0, said.stderr
    assert "evaluating ttsr (the bundled default) beside bicubic" in said.stderr


def test_table_on_stdout(folder: Path, tiny_weights: Path) -> None:
    result = run_cli("evaluate", "-d", "photos", "--data-dir", folder, "-w", tiny_weights)
    assert result.returncode == 0, result.stderr
    for text in ("a.png", "b.png", "mean", "bicubic PSNR", "SSIM"):
        assert text in result.stdout


def test_unreadable_or_tiny_images_are_reported_and_skipped(folder: Path) -> None:
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    save_png(folder / "tiny.png", sample_image("coffee", (9, 9)))
    result = run_cli("evaluate", "-d", "photos", "--data-dir", folder, "--json", "-m", "bicubic")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "broken.png" in lines[0] and "not an image" in lines[0]
    assert "tiny.png" in lines[1] and "11x11" in lines[1]
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["images"] == 2


def test_missing_cufed5_reference_skips_that_image(tmp_path: Path, tiny_weights: Path) -> None:
    root = make_cufed5(tmp_path / "CUFED5", ids=("000", "001"), levels=2)
    result = run_cli(
        "evaluate", "-d", "cufed5", "--data-dir", root, "-w", tiny_weights, "--ref-level", "3",
        "--json",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("error: ") == 2 and "level 3" in result.stderr
    assert json.loads(result.stdout)["images"] == 0


def test_skipped_images_are_reported_through_the_callback(folder: Path) -> None:
    (folder / "c.png").write_text("text")
    seen = []
    report = run(prepare("photos", folder), on_image=seen.append)
    assert [type(s).__name__ for s in seen] == ["ImageResult", "ImageResult", "Skipped"]
    assert report.skipped == [s for s in seen if isinstance(s, Skipped)]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("-d", "nope"), "unknown dataset 'nope'"),
        (("-d", "set5", "--data-dir", "absent-dir"), "absent-dir: dataset folder not found"),
        (("-d", "cufed5", "--data-dir", ".", "--ref-level", "7"), "--ref-level"),
        (("-d", "x", "--data-dir", ".", "--protocol", "bt709"), "unknown protocol"),
        (("-d", "x", "--data-dir", ".", "--limit", "0"), "--limit"),
        (("-d", "x", "--data-dir", ".", "-w", "missing.pt"), "missing.pt: weights file not found"),
    ],
)
def test_configuration_errors_are_one_line(
    args: tuple[str, ...], fragment: str, folder: Path
) -> None:
    result = run_cli("evaluate", *args, cwd=folder)  # "." is a folder of two images
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert result.stdout == ""


def test_hub_download_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Offline (as in CI): the Hub code path runs and fails with advice, not a traceback.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("evaluate", "-d", "set5")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ttsr-cli/benchmark-set5" in lines[0] and "--data-dir" in lines[0]


class FakeHub(BaseHTTPRequestHandler):
    """The three Hub endpoints ``snapshot_download`` uses, serving ``files`` of dataset
    ``repo`` at one commit; anything else is 404."""

    repo: ClassVar[str] = ""
    files: ClassVar[dict[str, bytes]] = {}
    commit = "c" * 40

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if f"/datasets/{self.repo}/" not in path:
            self.send_error(404)
        elif path.startswith("/api/datasets/") and "/tree/" in path:
            listing = [
                {"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for n, d in self.files.items()
            ]
            self._send(json.dumps(listing).encode(), "application/json")
        elif path.startswith("/api/datasets/") and "/revision/" in path:
            siblings = [{"rfilename": name} for name in self.files]
            body = {"id": "x", "sha": self.commit, "siblings": siblings}
            self._send(json.dumps(body).encode(), "application/json")
        elif "/resolve/" in path and path.rsplit("/", 1)[-1] in self.files:
            data = self.files[path.rsplit("/", 1)[-1]]
            etag = f'"{hashlib.sha1(data).hexdigest()}"'
            self._send(data, "image/png", {"ETag": etag, "X-Repo-Commit": self.commit})
        else:
            self.send_error(404)

    do_HEAD = do_GET

    def _send(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[FakeHub]]:
    """A loopback Hub for the CLI subprocess (``HF_ENDPOINT``), with an empty HF cache."""
    FakeHub.repo, FakeHub.files = "", {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield FakeHub
    finally:
        server.shutdown()
        server.server_close()


def test_dataset_is_downloaded_from_the_hub_without_data_dir(
    fake_hub: type[FakeHub], tmp_path: Path
) -> None:
    png = tmp_path / "x.png"
    fake_hub.repo = "ttsr-cli/benchmark-set14"
    fake_hub.files = {"x.png": save_png(png, sample_image("coffee", (40, 32))).read_bytes()}
    report = evaluate_json("--dataset", "set14")
    assert report["images"] == 1 and report["per_image"][0]["name"] == "x.png"
    cached = list((tmp_path / "hf").rglob("x.png"))
    assert cached and "datasets--ttsr-cli--benchmark-set14" in str(cached[0])


def test_missing_hub_repository_is_one_line(fake_hub: type[FakeHub]) -> None:
    fake_hub.repo, fake_hub.files = "someone/else", {}
    result = run_cli("evaluate", "--dataset", "bsd100")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ttsr-cli/benchmark-bsd100" in lines[0], result.stderr
