"""Named models and hf:// weights: the packaged registry, downloads through a loopback Hub
(success, 404, cut-off and wrong bodies, offline warm and cold), and the CLI's one-line errors.

CLI calls run in subprocesses so that the Hub client reads ``HF_ENDPOINT``/``HF_HOME``/
``HF_HUB_OFFLINE`` as a user's would; ``TTSR_REGISTRY`` points them at a test registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import fake_hub
from PIL import Image

from conftest import sample_image, save_png
from ttsr_cli.archs.ttsr import TTSR
from ttsr_cli.errors import TTSRError
from ttsr_cli.registry import HubFile, describe, load_registry, parse_hf_url
from ttsr_cli.weights import load

REPO, FILE = "test-org/ttsr-tiny", "tiny.safetensors"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
#: No HF_HUB_OFFLINE, and nothing listens where the Hub should be (port 9, discard).
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9"}


def write_registry(folder: Path, sha256: str, bundled: Path | None = None) -> Path:
    """A registry with a Hub entry ``tiny`` (checked against ``sha256``) and, given a file,
    a bundled entry ``local`` that is also the default."""
    folder.mkdir(parents=True, exist_ok=True)
    text = 'default = "local"\n'
    text += f"""
[models.tiny]
family = "ttsr"
scale = 4
reference = true
description = "tiny test model on the Hub"
hub = {{ repo = "{REPO}", file = "{FILE}", revision = "main" }}
sha256 = "{sha256}"
license = "MIT"
card = "tiny.md"
"""
    if bundled is not None:
        (folder / "local.safetensors").write_bytes(bundled.read_bytes())
        text += """
[models.local]
family = "ttsr"
scale = 4
reference = true
description = "tiny test model, bundled"
file = "local.safetensors"
license = "MIT"
card = "local.md"
"""
    path = folder / "registry.toml"
    path.write_text(text, encoding="utf-8")
    return path


def ttsr(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttsr_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.fixture
def tiny_bytes(tiny_weights: Path) -> bytes:
    return tiny_weights.read_bytes()


@pytest.fixture
def env(tmp_path: Path, tiny_bytes: bytes) -> dict[str, str]:
    """A fresh Hub cache and a test registry whose ``tiny`` has the right checksum."""
    registry = write_registry(tmp_path / "models", hashlib.sha256(tiny_bytes).hexdigest())
    return {"HF_HOME": str(tmp_path / "hf"), "TTSR_REGISTRY": str(registry)}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return save_png(tmp_path / "lr.png", sample_image("astronaut", (24, 20)))


def one_error_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert fragment in lines[0], lines[0]


def gets(hub_requests: list[str]) -> int:
    return sum(r.startswith(f"GET /{REPO}/resolve/") for r in hub_requests)


def test_model_downloads_then_runs_offline_from_the_cache(
    env: dict[str, str], tiny_bytes: bytes, image: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = tiny_bytes
        result = ttsr(
            "upscale", image, "--model", "tiny", "-o", out, env={**env, "HF_ENDPOINT": hub.url}
        )
        assert result.returncode == 0, result.stderr
        assert out.is_file() and gets(hub.requests) == 1
    out.unlink()
    offline = ttsr("upscale", image, "-m", "tiny", "-o", out, "-q", env={**env, **OFFLINE})
    assert offline.returncode == 0, offline.stderr
    assert out.is_file()
    url = ttsr(
        "upscale", image, "-w", f"hf://{REPO}/{FILE}@main", "-o", out, env={**env, **OFFLINE}
    )
    assert url.returncode == 0, url.stderr
    # Unreachable without HF_HUB_OFFLINE: the cache, without the client's retries or warnings.
    unreachable = ttsr("upscale", image, "-m", "tiny", "-o", out, env={**env, **UNREACHABLE})
    assert unreachable.returncode == 0 and unreachable.stderr.count("\n") <= 1, unreachable.stderr


@pytest.mark.parametrize("network", [OFFLINE, UNREACHABLE], ids=["offline", "unreachable"])
def test_offline_with_a_cold_cache(env: dict[str, str], image: Path, network: dict) -> None:
    result = ttsr("upscale", image, "--model", "tiny", env={**env, **network})
    one_error_line(result, "not in the Hugging Face cache")


@pytest.mark.parametrize("weights", [f"hf://{REPO}/other.safetensors", "hf://nobody/none/x.pt"])
def test_missing_file_or_repository(
    env: dict[str, str], tiny_bytes: bytes, image: Path, weights: str
) -> None:
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = tiny_bytes
        result = ttsr("upscale", image, "--weights", weights, env={**env, "HF_ENDPOINT": hub.url})
    one_error_line(result, "not found on the Hugging Face Hub")


def test_a_body_cut_off_once_resumes_and_passes_the_checksum(
    env: dict[str, str], tiny_bytes: bytes, image: Path, tmp_path: Path
) -> None:
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = tiny_bytes
        hub.truncate.add((REPO, FILE))
        result = ttsr(
            "upscale",
            image,
            "-m",
            "tiny",
            "-o",
            tmp_path / "o.png",
            env={**env, "HF_ENDPOINT": hub.url},
        )
        assert result.returncode == 0, result.stderr
        assert gets(hub.requests) == 2  # the second GET is the Range resume
    (cached,) = (tmp_path / "hf").rglob(FILE)
    assert cached.read_bytes() == tiny_bytes


def test_a_body_cut_off_every_time_fails_with_one_line(
    env: dict[str, str], tiny_bytes: bytes, image: Path
) -> None:
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = tiny_bytes
        hub.truncate_always.add((REPO, FILE))
        result = ttsr("upscale", image, "-m", "tiny", env={**env, "HF_ENDPOINT": hub.url})
    # Before giving up the Hub client logs its resume attempts; then ttsr's one error line.
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "download failed" in last, last


def test_a_wrong_body_fails_the_checksum_and_is_not_kept(
    env: dict[str, str], tiny_bytes: bytes, image: Path, tmp_path: Path
) -> None:
    wrong = bytearray(tiny_bytes)
    wrong[-1] ^= 0xFF
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = bytes(wrong)
        online = {**env, "HF_ENDPOINT": hub.url}
        first = ttsr("upscale", image, "-m", "tiny", env=online)
        one_error_line(first, "sha256")
        assert not list((tmp_path / "hf").rglob(FILE))
        again = ttsr("upscale", image, "-m", "tiny", env=online)
        one_error_line(again, "sha256")
        assert gets(hub.requests) == 2  # downloaded afresh, not taken from the cache
    offline = ttsr("upscale", image, "-m", "tiny", env={**env, **OFFLINE})
    one_error_line(offline, "not in the Hugging Face cache")


def test_unknown_model_lists_the_known_ones(env: dict[str, str], image: Path) -> None:
    result = ttsr("upscale", image, "--model", "nope", env=env)
    one_error_line(result, "unknown model 'nope' (known: tiny;")


def test_model_and_weights_together(env: dict[str, str], image: Path, tiny_weights: Path) -> None:
    result = ttsr("upscale", image, "-m", "tiny", "-w", tiny_weights, env=env)
    one_error_line(result, "either --model or --weights")


def test_without_weights_the_bundled_model_runs_offline(image: Path, tmp_path: Path) -> None:
    """The packaged registry's default is bundled: a plain run needs no network."""
    out = tmp_path / "x4.png"
    result = ttsr("upscale", image, "-o", out, "-q", env={"HF_HOME": str(tmp_path), **OFFLINE})
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (96, 80)


def test_a_registry_whose_default_is_missing(tmp_path: Path, env: dict[str, str]) -> None:
    result = ttsr("upscale", save_png(tmp_path / "a.png", sample_image()), env=env)
    one_error_line(result, "the default model 'local' is not in")


def test_bundled_default_and_models_listing(
    tmp_path: Path, tiny_weights: Path, tiny_bytes: bytes, image: Path
) -> None:
    sha = hashlib.sha256(tiny_bytes).hexdigest()
    registry = write_registry(tmp_path / "models", sha, bundled=tiny_weights)
    env = {"HF_HOME": str(tmp_path / "hf"), "TTSR_REGISTRY": str(registry), **OFFLINE}
    result = ttsr("upscale", image, "-o", tmp_path / "o.png", "-q", env=env)
    assert result.returncode == 0, result.stderr
    listing = json.loads(ttsr("models", "--json", env=env).stdout)
    assert listing["default"] == "local"
    status = {m["name"]: (m["status"], m["source"]) for m in listing["models"]}
    assert status == {
        "tiny": ("not downloaded", f"hf://{REPO}/{FILE}@main"),
        "local": ("bundled", "bundled:local.safetensors"),
    }


def test_an_upscale_without_a_reference_uses_default_no_reference(
    tmp_path: Path, tiny_weights: Path, tiny_bytes: bytes, image: Path
) -> None:
    """A registry whose default is a TTSR and whose default_no_reference a CSNLN: a plain
    upscale runs the CSNLN, one with --ref the TTSR, and --json and --verbose say which."""
    from ttsr_cli.archs.csnln.load import FAMILY as CSNLN_FAMILY
    from ttsr_cli.weights import save_safetensors

    registry = write_registry(tmp_path / "models", "", bundled=tiny_weights)
    csnln, _ = CSNLN_FAMILY.create({"n_feats": 8, "depth": 1, "scale": 4})
    save_safetensors(csnln, tmp_path / "models" / "alone.safetensors")
    text = registry.read_text().replace(
        'default = "local"', 'default = "local"\ndefault_no_reference = "alone"'
    )
    text += (
        '\n[models.alone]\nfamily = "csnln"\nscale = 4\nreference = false\n'
        'description = "tiny CSNLN, bundled"\nfile = "alone.safetensors"\nlicense = "MIT"\n'
        'card = "alone.md"\n'
    )
    registry.write_text(text, encoding="utf-8")
    env = {"HF_HOME": str(tmp_path / "hf"), "TTSR_REGISTRY": str(registry), **OFFLINE}
    plain = ttsr("upscale", image, "-o", tmp_path / "a.png", "--json", env=env)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["model"] == "alone (the bundled default without a reference)"
    given = ttsr("upscale", image, "--ref", image, "-o", tmp_path / "b.png", "--verbose", env=env)
    assert given.returncode == 0, given.stderr
    assert "model: local (the bundled default)" in given.stderr.splitlines()
    assert not np.array_equal(
        np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    )
    listing = describe(load_registry(registry))  # what ttsr models --json prints
    assert (listing["default"], listing["default_no_reference"]) == ("local", "alone")


def test_published_models_need_their_repository(
    image: Path, tiny_model: TTSR, tmp_path: Path
) -> None:
    home = {"HF_HOME": str(tmp_path / "hf")}
    one_error_line(ttsr("upscale", image, "-m", "ttsr-rec", env=home), "set TTSR_HUB_REPO=")
    checkpoint = io.BytesIO()
    torch.save(tiny_model.state_dict(), checkpoint)  # the original trainer's .pt format
    with fake_hub() as hub:
        hub.files[("someone/ttsr", "TTSR-rec.pt")] = checkpoint.getvalue()  # sha256 not checked
        env = {**home, "HF_ENDPOINT": hub.url, "TTSR_HUB_REPO": "someone/ttsr"}
        result = ttsr("upscale", image, "-m", "ttsr-rec", "-o", tmp_path / "o.png", env=env)
    assert result.returncode == 0, result.stderr
    assert "models--someone--ttsr" in str(next((tmp_path / "hf").rglob("TTSR-rec.pt")))


CSNLN = ("csnln-x2", "csnln-x3", "csnln-x4")


def test_packaged_registry() -> None:
    registry = load_registry()
    named = {"ttsr", "ttsr-rec", "ttsr-gan", "rl-restore-authors", *CSNLN}
    assert set(registry.models) == named | {"sftgan", "sftgan-pytorch"}
    for entry in registry.models.values():
        assert (registry.root / entry.card).is_file()
    for name in ("ttsr-rec", "ttsr-gan"):
        entry = registry.models[name]
        assert entry.hub is not None and entry.hub.repo_env == "TTSR_HUB_REPO"
        assert entry.config["num_res_blocks"] == [16, 16, 8, 4]
    assert registry.models["ttsr-rec"].published["CUFED5"] == [27.09, 0.804]
    assert registry.models["ttsr-gan"].published["CUFED5"] == [25.53, 0.765]
    restorer = registry.models["rl-restore-authors"]
    assert (restorer.family, restorer.scale, restorer.reference) == ("rl-restore", 1, False)
    assert restorer.hub is not None and restorer.hub.repo_env == "RL_RESTORE_HUB_REPO"
    assert registry.default_restore == ""  # none bundled yet: its agent is still training
    assert registry.default_no_reference == "ttsr"  # the only bundled x4 model yet
    for name in ("sftgan", "sftgan-pytorch"):
        entry = registry.models[name]
        assert (entry.family, entry.scale, entry.reference) == ("sftgan", 4, False)
        assert entry.hub is not None and entry.hub.repo_env == "SFTGAN_HUB_REPO"
        assert entry.source("segmentation").endswith("/segmentation_OST_bic.pth@main")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("hf://a/b/c.pt", HubFile("a/b", "c.pt")),
        ("hf://a/b/dir/c.safetensors@v1", HubFile("a/b", "dir/c.safetensors", "v1")),
    ],
)
def test_parse_hf_url(url: str, expected: HubFile) -> None:
    assert parse_hf_url(url) == expected


@pytest.mark.parametrize("url", ["hf://a/b", "hf://a//c.pt", "hf://a/b/c.pt@"])
def test_parse_bad_hf_url(url: str) -> None:
    with pytest.raises(TTSRError, match="expected hf://OWNER/REPO"):
        parse_hf_url(url)


ENTRY = 'file = "x"\ndescription = "x"\nlicense = "x"\ncard = "x.md"\n'


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('description = "x"\nlicense = "x"\ncard = "x.md"', "exactly one of"),
        ('file = "x"\nlicense = "x"\ncard = "x.md"', "missing field 'description'"),
        ('file = "x"\ndescription = "x"\nlicense = "x"\ncard = "x"\nsha256 = "12"', "64 hex"),
        (f'{ENTRY}family = "ttsr"\nreference = true', "missing field 'scale'"),
        (f'{ENTRY}family = "ttsr"\nreference = true\nscale = 0', "positive integer"),
    ],
)
def test_bad_registry_entries(tmp_path: Path, table: str, fragment: str) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(f"[models.bad]\n{table}\n", encoding="utf-8")
    with pytest.raises(TTSRError, match=fragment):
        load_registry(path)


def test_default_must_be_bundled(tmp_path: Path) -> None:
    path = write_registry(tmp_path, "")
    path.write_text(path.read_text().replace('"local"', '"tiny"'), encoding="utf-8")
    with pytest.raises(TTSRError, match="must be bundled"):
        load_registry(path)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("tiny", "model 'tiny' must be bundled"),
        ("nothing", "model 'nothing' is not one of its models"),
    ],
)
def test_default_no_reference_must_be_a_bundled_model(
    tmp_path: Path, name: str, fragment: str
) -> None:
    path = write_registry(tmp_path, "")
    path.write_text(f'default_no_reference = "{name}"\n' + path.read_text(), encoding="utf-8")
    with pytest.raises(TTSRError, match=f"the default_no_reference {fragment}"):
        load_registry(path)


def test_the_bundled_default_is_the_lite_model_it_claims() -> None:
    """Its checksum, size limit (10 MB) and documented configuration match the file."""
    registry = load_registry()
    entry = registry.models[registry.default]
    path = registry.root / str(entry.file)
    data = path.read_bytes()
    assert len(data) <= 10_000_000
    assert hashlib.sha256(data).hexdigest() == entry.sha256
    config = load(path)[1].config
    assert {k: config[k] for k in entry.config} == entry.config


SFT_REPO = "test-org/sftgan-tiny"


def write_sftgan_registry(folder: Path, seg_sha256: str = "") -> Path:
    """A registry whose ``sft`` is a Hub generator with its segmentation file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.toml"
    path.write_text(
        f"""
[models.sft]
family = "sftgan"
scale = 4
reference = false
description = "tiny SFT-GAN on the Hub"
hub = {{ repo = "{SFT_REPO}", file = "gen.pth", revision = "main" }}
segmentation = {{ file = "seg.pth", sha256 = "{seg_sha256}" }}
license = "MIT"
card = "sft.md"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def sft_generator() -> bytes:
    from ttsr_cli import archs

    torch.manual_seed(0)
    config = {"num_blocks": 1, "channels": 8, "cond_channels": 4, "cond_hidden": 8}
    model, _ = archs.family("sftgan").create(config)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def test_a_named_sftgan_fetches_its_segmentation_file_beside_its_weights(
    tmp_path: Path, image: Path, sft_generator: bytes
) -> None:
    """The segmentation file comes from the generator's repository and is checked against
    its own sha256; with ``--seg-maps`` it is not fetched at all."""
    junk = b"not a segmentation network"
    registry = write_sftgan_registry(tmp_path / "models", "0" * 64)
    env = {"HF_HOME": str(tmp_path / "hf"), "TTSR_REGISTRY": str(registry)}
    maps = tmp_path / "maps.npy"
    np.save(maps, np.zeros((8, 80, 96), np.float32))
    out = tmp_path / "out.png"
    with fake_hub() as hub:
        hub.files[(SFT_REPO, "gen.pth")] = sft_generator
        hub.files[(SFT_REPO, "seg.pth")] = junk
        served = {**env, "HF_ENDPOINT": hub.url}
        given = ttsr("upscale", image, "-m", "sft", "--seg-maps", maps, "-o", out, env=served)
        assert given.returncode == 0, given.stderr
        assert not any("seg.pth" in r for r in hub.requests)
        result = ttsr("upscale", image, "-m", "sft", "-o", tmp_path / "b.png", env=served)
        one_error_line(result, "model 'sft': hf://test-org/sftgan-tiny/seg.pth@main has sha256")
        assert any(r.startswith(f"GET /{SFT_REPO}/resolve/main/seg.pth") for r in hub.requests)
    registry = write_sftgan_registry(tmp_path / "models", hashlib.sha256(junk).hexdigest())
    with fake_hub() as hub:
        hub.files[(SFT_REPO, "gen.pth")] = sft_generator
        hub.files[(SFT_REPO, "seg.pth")] = junk
        result = ttsr(
            "upscale",
            image,
            "-m",
            "sft",
            "-o",
            tmp_path / "c.png",
            env={**env, "HF_ENDPOINT": hub.url},
        )
        one_error_line(result, "seg.pth")
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()
