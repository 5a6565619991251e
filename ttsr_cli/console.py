"""User-facing output: one-line errors on stderr and exit codes, tracebacks only on request."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ttsr_cli.errors import TTSRError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True)


def warning(message: str) -> None:
    """Something accepted that was probably not meant: one line, the run goes on."""
    stderr.print(f"[bold yellow]warning:[/] {escape(message)}", markup=True)


@contextlib.contextmanager
def reported_errors(debug: bool = False) -> Iterator[None]:
    """Turn library failures into one line and the right exit code (2 configuration,
    1 input, 130 interrupted); ``debug`` prints the traceback first, and a script sees the
    same exit code with it as without."""
    try:
        yield
    except TTSRError as exc:
        if debug:
            traceback.print_exc()
        error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        if debug:
            traceback.print_exc()
        error("out of memory: lower --max-memory or use a smaller reference")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        error("interrupted")
        raise typer.Exit(130) from None


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text


@contextlib.contextmanager
def training_progress(quiet: bool) -> Iterator[Callable[[int, int, dict | None], None]]:
    """A progress bar over training steps showing the last logged loss and throughput."""
    if quiet:
        yield lambda step, total, record: None
        return
    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task("train", total=None, info="")

        def update(step: int, total: int, record: dict | None) -> None:
            info = None
            if record is not None:  # RL-Restore's agent logs no loss before it learns
                loss = f"loss {record['loss']:.4f}  " if "loss" in record else ""
                info = f"{loss}{record['samples_per_s']:.1f} samples/s"
            progress.update(task, completed=step, total=total, **({"info": info} if info else {}))

        yield update
