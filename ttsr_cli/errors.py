"""The error types users see.

Library code raises these with a message that already names the file and the problem; the
CLI prints that single line and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class TTSRError(Exception):
    """A configuration failure (weights, device, options): exit code 2."""

    exit_code = 2


class InputError(TTSRError):
    """One input image could not be processed; in a batch the others go on: exit code 1."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when it has none): what a
    one-line report can quote of a library's multi-line error."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
