"""Choosing the compute device and sizing memory budgets from what is actually free."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ttsr_cli.errors import TTSRError

#: Share of free memory the relevance search may use by default.  The rest is left to the
#: network's activations (a few x the output size) and to other processes.
SEARCH_SHARE = 0.25
#: Beyond this the search gains nothing: blocks of a few thousand rows already run matmul at
#: full speed, and a smaller working set leaves room for larger images.
SEARCH_BUDGET_CAP = 1 << 30
SEARCH_BUDGET_FLOOR = 64 << 20
#: Share of free memory a whole upscale may use by default (network, search and blending):
#: half, because free memory shrinks while other processes run and swapping costs more than
#: a few extra tiles.
MEMORY_SHARE = 0.5


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit name must be usable here."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _torchrun_local_rank() % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TTSRError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TTSRError(f"device '{name}' requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise TTSRError(f"device '{name}' requested but only {count} CUDA device(s) exist")
    elif device.type == "mps" and not _mps_available():
        raise TTSRError(f"device '{name}' requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise TTSRError(f"unsupported device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> TorchrunEnv:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them (alone: 0, 1, 0)."""
    return TorchrunEnv(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def _torchrun_local_rank() -> int:
    """Under torchrun each process takes the GPU of its local rank; alone, the first GPU."""
    env = torchrun_env()
    return env.local_rank if env.world > 1 else 0


def free_memory_bytes(device: torch.device) -> int:
    """Memory the process can still allocate on ``device`` without swapping."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _host_available_bytes()


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(pages * page_size // 2)  # no availability figure: assume half of RAM is free


def default_search_budget(device: torch.device) -> int:
    """Working-memory budget for the relevance search on ``device``, in bytes."""
    share = int(free_memory_bytes(device) * SEARCH_SHARE)
    return max(SEARCH_BUDGET_FLOOR, min(SEARCH_BUDGET_CAP, share))


def default_memory_budget(device: torch.device) -> int:
    """Budget for a whole upscale on ``device``, in bytes, from what is free right now."""
    return int(free_memory_bytes(device) * MEMORY_SHARE)


def search_budget_within(budget: int) -> int:
    """The relevance search's share of a whole-upscale budget, bounded as by default: below
    the floor its blocks get so small that Python overhead dominates, for little memory."""
    return max(SEARCH_BUDGET_FLOOR, min(SEARCH_BUDGET_CAP, int(budget * SEARCH_SHARE)))


def release_free_memory(device: torch.device) -> None:
    """Hand memory that torch has freed on the CPU back to the operating system.

    glibc keeps freed blocks below its mmap threshold (up to 32 MB) in its heap, so between
    the tiles of a large upscale the process's resident memory stays hundreds of MB above
    what is in use (0.3 GB measured on a 12-megapixel one), and the next tile's peak sits on
    top of it.  ``malloc_trim`` returns those pages.  Elsewhere (other C libraries, GPUs,
    whose caching allocators reuse memory as intended) this does nothing.
    """
    trim = _malloc_trim()
    if device.type == "cpu" and trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def parse_size(text: str) -> int:
    """``'512MB'``, ``'2G'``, ``'1.5GiB'`` or a plain byte count -> bytes (powers of 1024)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units else (s, "")
    try:
        value = float(number)
    except ValueError:
        raise TTSRError(f"cannot read memory size '{text}' (try 512MB or 2GB)") from None
    if value <= 0:
        raise TTSRError(f"memory size must be positive, got '{text}'")
    return int(value * units[unit])


def format_size(size: int) -> str:
    """Bytes as ``--max-memory`` takes them (powers of 1024): ``'37 MB'``, ``'1.5 GB'``."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{size} bytes"


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def select_precision(name: str, device: torch.device) -> torch.dtype:
    """Compute precision for ``device``.

    ``auto`` is fp16 on CUDA (tensor cores, half the activation memory; every CUDA GPU has
    fp16) and fp32 elsewhere: CPUs gain little from fp16 and MPS reduced precision varies by
    macOS version.  bf16 on CUDA needs an Ampere or newer GPU, so it is checked.
    """
    name = name.strip().lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in PRECISIONS:
        raise TTSRError(f"unknown precision '{name}' (use auto, fp32, fp16 or bf16)")
    dtype = PRECISIONS[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TTSRError(f"precision bf16 requested but {device} does not support it")
    return dtype
