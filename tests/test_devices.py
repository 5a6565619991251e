"""Device choice and memory sizes, with CUDA/MPS availability faked where no GPU exists."""

from __future__ import annotations

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
