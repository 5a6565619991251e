"""``ttsr`` as a user runs it: real subprocesses, real files, one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import kill_mid_write, run_cli, sample_image, save_png


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    return {
        "lr": save_png(tmp_path / "photo.png", sample_image("astronaut", (37, 29))),
        "ref": save_png(tmp_path / "ref.png", sample_image("astronaut", (130, 98))),
        "ref2": save_png(tmp_path / "ref2.png", sample_image("coffee", (90, 60))),
    }


def assert_one_line_error(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_describes_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "upscale" in result.stdout
    result = run_cli("upscale", "--help")
    assert result.returncode == 0
    for option in ("--ref", "--weights", "--output", "--device", "--max-memory"):
        assert option in result.stdout
    assert "bundled" in result.stdout  # what runs without --model or --weights
    assert run_cli("--version").stdout.startswith("ttsr ")


@pytest.mark.parametrize("command", ["upscale", "train", "evaluate", "match-ref"])
def test_help_examples_need_nothing_a_fresh_install_lacks(command: str) -> None:
    """A newcomer has the bundled model, not the authors' checkpoints."""
    result = run_cli(command, "--help")
    assert result.returncode == 0
    [example] = [line for line in result.stdout.splitlines() if "Example:" in line]
    assert ".pt" not in example and "ttsr " + command in example


def test_upscale_writes_four_times_the_input(images, tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "sr.png"
    result = run_cli(
        "upscale",
        images["lr"],
        "--ref",
        images["ref"],
        "--weights",
        tiny_weights,
        "-o",
        out,
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (148, 116)
    assert "wrote" in result.stderr
    assert not [p for p in out.parent.iterdir() if p.name != "sr.png"]  # no temp files left


def test_without_reference_the_image_is_its_own(images, tiny_weights: Path, tmp_path: Path) -> None:
    result = run_cli("upscale", images["lr"], "--weights", tiny_weights, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert Image.open(tmp_path / "photo_ttsr.png").size == (148, 116)


def test_several_references_and_budgets(images, tiny_weights: Path, tmp_path: Path) -> None:
    outputs = []
    for budget in ("1GB", "64KB"):
        out = tmp_path / f"sr-{budget}.png"
        result = run_cli(
            "upscale",
            images["lr"],
            "-r",
            images["ref"],
            "-r",
            images["ref2"],
            "-w",
            tiny_weights,
            "-o",
            out,
            "--max-memory",
            budget,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(np.asarray(Image.open(out)))
    # A tight budget stores the references' textures in fp16: at most one level of change.
    difference = np.abs(outputs[0].astype(int) - outputs[1].astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.95


def test_output_format_follows_extension(images, tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "sr.jpg"
    result = run_cli("upscale", images["lr"], "-w", tiny_weights, "-o", out)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).format == "JPEG"


def test_missing_input(images, tiny_weights: Path, tmp_path: Path) -> None:
    result = run_cli("upscale", tmp_path / "nope.png", "-w", tiny_weights)
    assert result.returncode == 1
    assert_one_line_error(result, "nope.png", "not found")


def test_input_that_is_not_an_image(images, tiny_weights: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    result = run_cli("upscale", bad, "-w", tiny_weights)
    assert result.returncode == 1
    assert_one_line_error(result, "notes.png", "not an image")


def test_truncated_input(images, tiny_weights: Path, tmp_path: Path) -> None:
    data = images["ref"].read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    result = run_cli("upscale", bad, "-w", tiny_weights)
    assert result.returncode == 1
    assert_one_line_error(result, "cut.png")


def test_corrupt_weights(images, tmp_path: Path) -> None:
    for name in ("w.pt", "w.safetensors"):
        weights = tmp_path / name
        weights.write_bytes(os.urandom(2048))
        result = run_cli("upscale", images["lr"], "-w", weights)
        assert result.returncode == 2
        assert_one_line_error(result, name)


def test_missing_or_tiny_reference(images, tiny_weights: Path, tmp_path: Path) -> None:
    result = run_cli("upscale", images["lr"], "--ref", tmp_path / "gone.jpg", "-w", tiny_weights)
    assert result.returncode == 2
    assert_one_line_error(result, "reference", "gone.jpg", "not found")
    small = save_png(tmp_path / "small.png", sample_image("astronaut", (3, 8)))
    result = run_cli("upscale", images["lr"], "--ref", small, "-w", tiny_weights)
    assert result.returncode == 2
    assert_one_line_error(result, "small.png", "at least 4x4")


def test_never_overwrites_the_input(images, tiny_weights: Path) -> None:
    before = images["lr"].read_bytes()
    result = run_cli("upscale", images["lr"], "-w", tiny_weights, "-o", images["lr"])
    assert result.returncode == 1
    assert_one_line_error(result, "overwrite")
    assert images["lr"].read_bytes() == before


def test_sigkill_mid_image_write_keeps_the_previous_output(
    images, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed half-way through replacing out.png, the old out.png is left whole.

    The kill lands inside the write (see ``slow_writes.py``): a small PNG is written in
    milliseconds, so a timed kill would almost never catch one.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see the SIGKILL test in test_train.py
    out = tmp_path / "out.png"
    first = run_cli("upscale", images["lr"], "-w", tiny_weights, "-o", out, "--device", "cpu")
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    # Another input, so the interrupted image would differ from the one on disk.
    args = ("upscale", images["ref2"], "-w", tiny_weights, "-o", out, "--device", "cpu")
    partial = kill_mid_write(*args, skip=0, scratch=tmp_path)
    assert partial.name.endswith(".part") and partial.parent == out.parent, partial
    assert partial.exists() and partial != out
    assert out.read_bytes() == before
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    with Image.open(out) as image:
        image.load()  # decodes every row: a truncated file raises here
        assert image.size == (360, 240)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--device", "cuda:3", "cuda"),
        ("--device", "tpu", "tpu"),
        ("--max-memory", "lots", "lots"),
        ("-o", "out.xyz", "out.xyz"),
    ],
)
def test_bad_options(images, tiny_weights: Path, option: str, value: str, fragment: str) -> None:
    result = run_cli("upscale", images["lr"], "-w", tiny_weights, option, value)
    assert result.returncode == 2
    assert_one_line_error(result, fragment)


def test_debug_shows_the_traceback(images, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"junk")
    result = run_cli("upscale", images["lr"], "-w", weights, "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr


@pytest.mark.parametrize(
    ("target", "extra", "reason"),
    [
        ("/proc/x.png", (), "cannot create files in /proc"),
        ("{afile}/x.png", (), "is a file, not a folder"),
        ("{afile}/deeper/x.png", (), "is a file, not a folder"),
        ("{tmp}/out.png", ("--save-attention", "{afile}"), "is a file, not a folder"),
    ],
)
def test_an_output_that_cannot_be_written_stops_before_the_model_loads(
    images, tmp_path: Path, target: str, extra: tuple[str, ...], reason: str
) -> None:
    """The weights named here do not exist: the output is checked first, so that is the error
    (before this check, such paths failed after each image had been computed)."""
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    fill = {"afile": afile, "tmp": tmp_path}
    args = [a.format(**fill) for a in ("-o", target, *extra)]
    result = run_cli("upscale", images["lr"], "-w", tmp_path / "missing.safetensors", *args)
    assert result.returncode == 2
    assert_one_line_error(result, "cannot write to", reason)
    assert afile.read_text() == "a file, not a folder"


@pytest.mark.parametrize(
    "command",
    [
        ("train", "--data", "{tmp}", "--out", "{afile}/run", "--config", "tiny"),
        ("match-ref", "{lr}", "--pool", "{tmp}", "--csv", "{afile}/refs.csv"),
        ("evaluate", "--dataset", "set5", "--data-dir", "{tmp}", "--csv", "{afile}/r.csv"),
    ],
)
def test_every_command_checks_its_outputs_first(
    images, tmp_path: Path, command: tuple[str, ...]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    fill = {"afile": afile, "tmp": tmp_path, "lr": images["lr"]}
    result = run_cli(*(a.format(**fill) for a in command))
    assert result.returncode == 2
    assert_one_line_error(result, f"cannot write to {afile}", "is a file, not a folder")


def test_a_tiny_reference_and_a_tiny_budget_are_used_with_a_warning(
    images, tiny_weights: Path, tmp_path: Path
) -> None:
    """Accepted but probably not meant: one ``warning:`` line each on stderr, and the same in
    ``--json``; every TTSR result also reports its relevance (mean soft attention)."""
    small = save_png(tmp_path / "small.png", sample_image("coffee", (20, 24)))
    args = ("upscale", images["lr"], "--ref", small, "-w", tiny_weights, "-o", tmp_path / "o.png")
    result = run_cli(*args, "--max-memory", "1KB", "--json")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    assert f"reference {small.resolve()}: 20x24 holds little texture" in warnings[0]
    assert "memory budget is too small for this image" in warnings[1]
    report = json.loads(result.stdout)
    assert report["warnings"] == [warnings[0].removeprefix("warning: ")]
    [image] = report["results"]
    assert image["tiles"] > 1 and len(image["warnings"]) == 1
    assert image["warnings"][0] in warnings[1]
    assert 0.0 <= image["relevance"] <= 1.0
    quiet = run_cli(*args, "--max-memory", "1KB", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_help_and_models_load_no_network_code() -> None:
    """``--help``, ``--version`` and ``models`` answer without importing torch (seconds)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ttsr_cli.cli import app\n"
        "for args in (['--help'], ['upscale', '--help'], ['models'], ['--version']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
