"""Command-line interface: parse arguments, call the library, report.  No logic lives here."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ttsr_cli import __version__
from ttsr_cli.console import error, reported_errors, stderr
from ttsr_cli.devices import parse_size, select_device
from ttsr_cli.evaluate import Benchmark, ImageResult, Report, Skipped, prepare, run, write_csv
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


@app.command()
def evaluate(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="set5, set14, bsd68, bsd100, urban100, manga109, sun80, cufed5, or any name "
            "for a folder given with --data-dir (the input is its own reference).",
        ),
    ] = ...,  # type: ignore[assignment]
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of ground-truth images (default: download from the Hub)."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", "-w", help="Checkpoint to evaluate. Omit for the bicubic baseline only."
        ),
    ] = None,
    ref_level: Annotated[
        str,
        typer.Option(
            help="CUFED5 reference level, 1 (most similar) to 5, or all (searched together). "
            "Sun80 with web references: the n-th reference by name, or all."
        ),
    ] = "1",
    protocol: Annotated[
        str,
        typer.Option(
            help="ttsr: luminance PSNR/SSIM exactly as the TTSR paper reports them; "
            "rgb: RGB PSNR/SSIM with a 4-pixel border cropped."
        ),
    ] = "ttsr",
    limit: Annotated[
        int | None, typer.Option(help="Evaluate only the first N images (name order).")
    ] = None,
    save_images: Annotated[
        Path | None,
        typer.Option(help="Write NAME_ttsr.png and NAME_bicubic.png into this folder."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
    ] = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write per-image results to this CSV.")
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    ] = "auto",
    max_memory: Annotated[
        str | None,
        typer.Option(help="Working memory for the reference search, e.g. 512MB or 2GB."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on failure.")
    ] = False,
) -> None:
    """Measure PSNR/SSIM of a model and of bicubic up-sampling on a benchmark dataset.

    Example: [bold]ttsr evaluate --dataset set5 --data-dir Set5 --weights TTSR-rec.pt[/]
    """
    with reported_errors(debug):
        target = select_device(device)
        budget = parse_size(max_memory) if max_memory else None
        benchmark = prepare(
            dataset,
            data_dir,
            weights,
            ref_level=ref_level,
            protocol=protocol,
            limit=limit,
            device=target,
            search_budget=budget,
        )
        report = _run_with_progress(benchmark, save_images, show=not json_output)
        if csv_file is not None:
            write_csv(report, csv_file)
        if json_output:
            typer.echo(json.dumps(report.to_dict()))
        else:
            _print_table(report)
    if report.skipped:
        raise typer.Exit(1)


def _run_with_progress(benchmark: Benchmark, save_dir: Path | None, show: bool) -> Report:
    """Run the benchmark with a progress bar on stderr; skipped images are reported as
    they happen, one line each."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not show) as progress:
        task = progress.add_task(benchmark.dataset, total=len(benchmark.samples))

        def on_image(outcome: ImageResult | Skipped) -> None:
            if isinstance(outcome, Skipped):
                error(outcome.message)
            progress.advance(task)

        return run(benchmark, save_dir, on_image)


def _print_table(report: Report) -> None:
    """Per-image rows and the mean, PSNR in dB to 3 decimals and SSIM to 4, on stdout."""
    from rich.console import Console
    from rich.table import Table

    headers = {"psnr": "PSNR", "ssim": "SSIM", "bicubic_psnr": "bicubic PSNR"}
    headers["bicubic_ssim"] = "bicubic SSIM"
    metrics = [m for m in headers if report.with_model or m.startswith("bicubic")]
    title = f"{report.dataset}, {report.protocol} protocol: {len(report.results)} images"
    table = Table(title=title)
    table.add_column("image")
    for metric in metrics:
        table.add_column(headers[metric], justify="right")
    for result in report.results:
        table.add_row(result.name, *(_fmt(metric, getattr(result, metric)) for metric in metrics))
    table.add_section()
    table.add_row("mean", *(_fmt(metric, report.mean(metric)) for metric in metrics), style="bold")
    Console(highlight=False).print(table)


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric.endswith("ssim") else f"{value:.3f}"
