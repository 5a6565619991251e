"""Device choice and memory sizes, with CUDA/MPS availability faked where no GPU exists."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ttsr_cli import devices
from ttsr_cli.errors import TTSRError


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    def set_available(cuda: bool, mps: bool, count: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)

    return set_available


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(fake, cuda: bool, mps: bool, expected: str) -> None:
    fake(cuda, mps)
    assert devices.select_device("auto").type == expected


def test_explicit_devices(fake) -> None:
    fake(True, False, count=2)
    assert devices.select_device("cuda:1") == torch.device("cuda:1")
    assert devices.select_device("CPU") == torch.device("cpu")
    with pytest.raises(TTSRError, match="only 2 CUDA"):
        devices.select_device("cuda:2")
    with pytest.raises(TTSRError, match="MPS is not available"):
        devices.select_device("mps")
    fake(False, False)
    with pytest.raises(TTSRError, match="CUDA is not available"):
        devices.select_device("cuda")
    with pytest.raises(TTSRError, match="unknown device"):
        devices.select_device("gpu0")


def test_search_budget_is_a_share_of_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "free_memory_bytes", lambda d: 2 << 30)
    assert devices.default_search_budget(cpu) == 512 << 20
    monkeypatch.setattr(devices, "free_memory_bytes", lambda d: 64 << 30)
    assert devices.default_search_budget(cpu) == devices.SEARCH_BUDGET_CAP
    monkeypatch.setattr(devices, "free_memory_bytes", lambda d: 1 << 20)
    assert devices.default_search_budget(cpu) == devices.SEARCH_BUDGET_FLOOR


def test_cuda_budget_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (8 << 30, 16 << 30))
    assert devices.free_memory_bytes(torch.device("cuda:0")) == 8 << 30


def test_host_memory_is_read() -> None:
    assert devices.free_memory_bytes(torch.device("cpu")) > 0


@pytest.mark.parametrize(
    ("text", "value"),
    [("512MB", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("4096", 4096), ("64kb", 65536)],
)
def test_parse_size(text: str, value: int) -> None:
    assert devices.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(TTSRError):
        devices.parse_size(text)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, False, torch.float16), (False, True, torch.float32), (False, False, torch.float32)],
)
def test_auto_precision_follows_the_device(fake, cuda: bool, mps: bool, expected) -> None:
    fake(cuda, mps)
    device = devices.select_device("auto")
    assert devices.select_precision("auto", device) == expected


def test_explicit_precisions(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(True, False)
    cuda = devices.select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(TTSRError, match="bf16"):
        devices.select_precision("bf16", cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.select_precision("BF16", cuda) == torch.bfloat16
    assert devices.select_precision("fp32", cuda) == torch.float32
    assert devices.select_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(TTSRError, match="unknown precision"):
        devices.select_precision("int8", cuda)


RETAINED_HEAP = """
import os, sys, torch
from ttsr_cli.devices import release_free_memory
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
big = torch.ones(4 << 20); del big  # a freed 16 MB block lifts glibc's mmap threshold
blocks = [torch.ones(64 << 10) for _ in range(2000)]  # 500 MB of 256 KB blocks, on the heap
last = torch.ones(64 << 10)  # keeps the heap's top in use, as a live tensor would
del blocks
before = rss_mb()
release_free_memory(torch.device(sys.argv[1]))
print(before, rss_mb())
"""


@pytest.mark.skipif(devices._malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_memory_goes_back_to_the_system_on_cpu_only() -> None:
    """Between tiles, memory freed by torch would otherwise stay resident."""

    def run(device: str) -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", RETAINED_HEAP, device],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return float(out[0]), float(out[1])

    before, after = run("cpu")
    assert before - after > 400
    before, after = run("meta")  # not the CPU heap: nothing to hand back
    assert abs(before - after) < 50
