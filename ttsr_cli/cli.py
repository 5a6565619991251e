"""Command-line interface: parse arguments, call the library, report.  No logic lives here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ttsr_cli import __version__
from ttsr_cli.console import reported_errors, stderr
from ttsr_cli.devices import parse_size, select_device
from ttsr_cli.pipeline import Upscaler, load_reference, upscale_file
from ttsr_cli.weights import load_model

app = typer.Typer(
    name="ttsr",
    help="Reference-based x4 super-resolution with the Texture Transformer Network (TTSR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ttsr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Upscale photos x4, borrowing real texture from a sharper reference photo."""


@app.command()
def upscale(
    image: Annotated[Path, typer.Argument(help="Low-resolution image to upscale x4.")],
    ref: Annotated[
        list[Path] | None,
        typer.Option(
            "--ref",
            "-r",
            help="Reference image. Repeat to search several together (each patch takes its "
            "best match across all). Omit to use the image itself as its reference.",
        ),
    ] = None,
    weights: Annotated[
        Path,
        typer.Option(
            "--weights",
            "-w",
            help="Checkpoint: an original TTSR .pt (TTSR.pt, TTSR-rec.pt) or a ttsr "
            ".safetensors. The architecture is read from the file.",
        ),
    ] = ...,  # type: ignore[assignment]
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Output file (default: IMAGE_ttsr.png beside the input)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    ] = "auto",
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Working memory for the reference search, e.g. 512MB or 2GB "
            "(default: a quarter of free memory, at most 1GB). Never changes the result.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on failure.")
    ] = False,
) -> None:
    """Upscale IMAGE x4 with texture transferred from one or more reference images.

    Example: [bold]ttsr upscale photo.png --ref sharp.jpg --weights TTSR.pt -o photo_x4.png[/]
    """
    with reported_errors(debug):
        start = time.perf_counter()
        target = select_device(device)
        budget = parse_size(max_memory) if max_memory else None
        upscaler = Upscaler(load_model(weights, target), target, budget)
        references = [load_reference(upscaler, path) for path in ref or []]
        destination = output or image.with_name(f"{image.stem}_ttsr.png")
        width, height = upscale_file(upscaler, image, destination, references)
        if not quiet:
            seconds = time.perf_counter() - start
            stderr.print(f"wrote {destination} ({width}x{height}) in {seconds:.1f} s on {target}")


def main() -> None:
    """Console-script entry point."""
    app()
