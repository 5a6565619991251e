"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash or Ctrl-C mid-write leaves either the old file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ttsr_cli.errors import TTSRError


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes 0600 files, and some writers (safetensors) replace the file with
        # another 0600 one: give what is there now the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made first when missing), or None.

    Tried with a probe file in the nearest folder that exists: permission bits do not tell
    (root ignores them, and ``/proc`` refuses every name anyway).  A missing folder under a
    writable one is taken as creatable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            return f"{existing} is a broken link"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".ttsr-probe-", dir=existing)
    except OSError as exc:
        return f"cannot create files in {existing} ({(exc.strerror or str(exc)).lower()})"
    os.close(fd)
    os.unlink(name)
    return None


def require_writable(folders: Iterable[Path | None]) -> None:
    """Stop before any work (exit 2) when one of ``folders`` (None: not asked for) cannot
    take files, naming it and saying why."""
    for folder in sorted({f for f in folders if f is not None}):
        reason = unwritable_reason(folder)
        if reason is not None:
            raise TTSRError(f"cannot write to {folder}: {reason}")
