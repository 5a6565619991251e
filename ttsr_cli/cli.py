"""Command-line interface: parse arguments, call the library, report.  No logic lives here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ttsr_cli import __version__
from ttsr_cli.console import reported_errors, stderr, training_progress
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


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Option(
            help="Training data: a CUFED tree (train/input, train/ref) or a folder "
            "of photos (pairs are synthesised)."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Run folder: log.jsonl, checkpoints/, model.safetensors.")
    ],
    config: Annotated[str, typer.Option(help="tiny, lite, paper or a .toml file.")] = "paper",
    preset: Annotated[str, typer.Option(help="rec (L1 only) or gan (the paper's TTSR).")] = "rec",
    steps: Annotated[
        int | None, typer.Option(help="Total steps (with --resume: the new total).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs, instead of --steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per step and process.")] = 9,
    patch_size: Annotated[int, typer.Option(help="HR patch side in pixels (multiple of 4).")] = 160,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16 (autocast) or fp16 (GPU).")] = "fp32",
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint.")
    ] = False,
    log_every: Annotated[int, typer.Option(help="Log every N steps.")] = 10,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 500,
    keep: Annotated[int, typer.Option(help="Checkpoints kept.")] = 3,
    workers: Annotated[int, typer.Option(help="Data-loading processes.")] = 0,
    lte_init: Annotated[
        str,
        typer.Option(
            help="auto (vgg19 when the LTE has VGG's widths), vgg19, random or "
            "a VGG19 weights file."
        ),
    ] = "auto",
    vgg: Annotated[str, typer.Option(help="VGG19 weights: hub or a file.")] = "hub",
    lr: Annotated[float, typer.Option(help="Main-network learning rate.")] = 1e-4,
    lr_lte: Annotated[float, typer.Option(help="LTE learning rate.")] = 1e-5,
    lr_decay_steps: Annotated[
        int, typer.Option(help="Halve the rates every N steps (0: never).")
    ] = 0,
    channels_last: Annotated[
        bool, typer.Option("--channels-last", help="NHWC memory layout.")
    ] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on failure.")
    ] = False,
) -> None:
    """Train or fine-tune TTSR; run under torchrun for several processes (DDP)."""
    from ttsr_cli.train import TrainOptions, load_config
    from ttsr_cli.train import train as run_training

    with reported_errors(debug):
        opts = TrainOptions(
            data=data,
            out=out,
            config=load_config(config),
            preset=preset,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            patch_size=patch_size,
            device=device,
            precision=precision,
            seed=seed,
            resume=resume,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            keep=keep,
            workers=workers,
            lte_init=lte_init,
            vgg=vgg,
            lr=lr,
            lr_lte=lr_lte,
            lr_decay_steps=lr_decay_steps,
            channels_last=channels_last,
            compile=compile,
        )

        with training_progress(quiet) as report:
            result = run_training(opts, on_step=report)
        if not quiet:
            stderr.print(f"wrote {result.model_path} after {result.steps} steps")
