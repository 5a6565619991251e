"""Test-only launcher: ``python tests/slow_writes.py ARGS...`` runs ``ttsr ARGS...`` (as
``python -m ttsr_cli`` does) with the two file writers made slow enough to kill mid-write.

Real checkpoints and images of the tiny test models are written in milliseconds, so a SIGKILL
sent from a test almost never lands inside a write.  Here ``torch.save`` and
``PIL.Image.Image.save`` serialise to memory first; when the destination is a path, the first
``SLOW_WRITE_SKIP`` (default 0) writes go through whole, and the next one writes half its bytes
to the path, fsyncs them, creates the file named by ``SLOW_WRITE_MARKER`` holding that path,
and sleeps until killed.  The hooks know nothing of ``ttsr_cli.atomic``: whatever path the CLI
hands the writer (a temporary ``.part`` file or the target itself) is the one left half-written.
"""

from __future__ import annotations

import io
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

_original_torch_save = torch.save
_original_image_save = Image.Image.save
_writes = 0


def _is_path(dest: Any) -> bool:
    return isinstance(dest, (str, bytes, os.PathLike))


def _deliver(dest: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` whole for the first SLOW_WRITE_SKIP writes; stall half-way in the next."""
    global _writes
    _writes += 1
    if _writes <= int(os.environ.get("SLOW_WRITE_SKIP", "0")):
        Path(dest).write_bytes(data)
        return
    marker = Path(os.environ["SLOW_WRITE_MARKER"])
    with open(dest, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        # Atomic, so the test never reads a marker that is still being written.
        pending = marker.with_name(marker.name + ".tmp")
        pending.write_text(os.path.abspath(dest))
        os.replace(pending, marker)
        time.sleep(600)  # the test kills us here
    raise SystemExit("slow_writes: not killed within 600 s")


def _slow_torch_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    if not _is_path(f):
        return _original_torch_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    _original_torch_save(obj, buffer, *args, **kwargs)
    _deliver(f, buffer.getvalue())


def _slow_image_save(self: Image.Image, fp: Any, format: str | None = None, **params: Any) -> None:
    if not _is_path(fp):
        return _original_image_save(self, fp, format, **params)
    # A path's extension names the format; a BytesIO has none, so name it.
    fmt = format or Image.registered_extensions().get(Path(os.fsdecode(fp)).suffix.lower())
    buffer = io.BytesIO()
    _original_image_save(self, buffer, fmt, **params)
    _deliver(fp, buffer.getvalue())


def main() -> None:
    """Install the hooks, then run the CLI of the package beside these tests."""
    if "SLOW_WRITE_MARKER" not in os.environ:
        raise SystemExit("slow_writes: set SLOW_WRITE_MARKER to the marker file's path")
    torch.save = _slow_torch_save
    Image.Image.save = _slow_image_save
    sys.path[0] = str(ROOT)  # as ``python -m ttsr_cli`` run from the repository root
    runpy.run_module("ttsr_cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
