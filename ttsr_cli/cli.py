"""Command-line interface: parse arguments, call the library, report.  No logic lives here."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ttsr_cli import __version__, registry
from ttsr_cli.atomic import require_writable
from ttsr_cli.console import error, reported_errors, stderr, training_progress, warning
from ttsr_cli.errors import TTSRError
from ttsr_cli.naming import RESTORED_SUFFIX, UPSCALED_SUFFIX

# Network code (torch) is imported inside the commands that run it: --help, --version,
# models and argument errors answer at once.
if TYPE_CHECKING:
    from ttsr_cli import batch, matching, run
    from ttsr_cli.evaluate import Benchmark, Report
    from ttsr_cli.priors import PriorMaps

#: Options every command shares, declared once.
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on failure.")]
DeviceOption = Annotated[
    str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
]
SearchOption = Annotated[
    str,
    typer.Option(
        help="TTSR's relevance search: exact (the paper's), fast (coarse-to-fine, time linear "
        "in the image size, slightly approximate) or auto (exact unless that would take long)."
    ),
]
AttentionOption = Annotated[
    str,
    typer.Option(
        help="CSNLN's attention: exact (over the whole image, as the paper), windowed "
        "(overlapping windows, time linear in the image size) or auto (exact unless that "
        "would take long or not fit --max-memory)."
    ),
]
MaxMemoryOption = Annotated[
    str | None,
    typer.Option(
        help="Memory budget for each image's run, e.g. 2GB (default: half of the free RAM, "
        "or VRAM on a GPU). What does not fit runs in overlapping tiles (TTSR) or attention "
        "windows (CSNLN with --attention auto).",
    ),
]
PrecisionOption = Annotated[
    str, typer.Option(help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")
]

#: Options upscale and restore share (the same meaning in both), declared once.
ImagesArgument = Annotated[
    list[Path],
    typer.Argument(
        help="Images, folders or quoted globs (any format Pillow reads).", show_default=False
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Output file for one input; a folder (created) for several or if it has no "
        "extension. Default: beside each input.",
    ),
]
SuffixOption = Annotated[str, typer.Option(help="Added to each input's stem to name its output.")]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="png, jpg, webp, tiff, or same (the input's) for generated names [default: png].",
        show_default=False,
    ),
]
QualityOption = Annotated[int, typer.Option(help="JPEG/WebP quality, 1-100.")]
SkipExistingOption = Annotated[
    bool, typer.Option("--skip-existing", help="Leave outputs that already exist.")
]
RecursiveOption = Annotated[
    bool, typer.Option("--recursive", "-R", help="Descend into sub-folders of folder inputs.")
]
ShardOption = Annotated[
    str | None,
    typer.Option(help="K/N: process only every N-th input from the K-th (sorted order)."),
]
TileOption = Annotated[
    int | None,
    typer.Option(
        min=8,
        help="Force tiles (CSNLN: attention windows) of this many input pixels a side "
        "(default: by budget).",
    ),
]
CompareOption = Annotated[
    bool,
    typer.Option(
        "--compare",
        help="Write STEM_compare.png beside the output, STEM the output's: the input "
        "(bicubic when upscaling) | the result | the reference crop (TTSR).",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object with every result on stdout.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print a line for every image written.")
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="A named model instead of --weights (see ttsr models)."),
]

app = typer.Typer(
    name="ttsr",
    help="Image super-resolution: TTSR borrows texture from a sharper reference photo, CSNLN "
    "from the image itself. Runs offline with the bundled model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
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
    images: ImagesArgument,
    ref: Annotated[
        list[Path] | None,
        typer.Option(
            "--ref",
            "-r",
            help="Reference image. Repeat to search several together (each patch takes its "
            "best match across all). 'auto' with --pool: pick each input's best. Omit to use "
            "the image itself as its reference.",
        ),
    ] = None,
    ref_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of references: each input uses the one with its file stem."),
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option(help="With --ref auto: folder of candidate references, ranked per input."),
    ] = None,
    ref_top: Annotated[
        int, typer.Option(help="With --ref auto: how many of the best pool images to search.")
    ] = 1,
    ref_map: Annotated[
        Path | None,
        typer.Option(
            help="CSV of 'input,ref[,ref...]' rows (header optional; paths relative to the CSV)."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Checkpoint of any family: the authors' files (TTSR.pt, TTSR-rec.pt, CSNLN "
            "model_x4.pt, SFT-GAN SFTGAN_torch.pth) or a ttsr .safetensors, a local file or "
            "hf://OWNER/REPO/FILE[@REVISION]. The network and its configuration are "
            "read from the file. Without it and --model: the bundled model, ttsr.",
        ),
    ] = None,
    model: ModelOption = None,
    output: OutputOption = None,
    suffix: SuffixOption = UPSCALED_SUFFIX,
    output_format: FormatOption = None,
    quality: QualityOption = 95,
    skip_existing: SkipExistingOption = False,
    recursive: RecursiveOption = False,
    shard: ShardOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    max_memory: MaxMemoryOption = None,
    tile: TileOption = None,
    search: SearchOption = "auto",
    attention: AttentionOption = "auto",
    seg_weights: Annotated[
        str | None,
        typer.Option(
            help="SFT-GAN: its segmentation network (the authors' segmentation_OST_bic.pth), "
            "which makes the generator's priors from the image."
        ),
    ] = None,
    seg_maps: Annotated[
        Path | None,
        typer.Option(
            help="SFT-GAN: the priors as files instead of --seg-weights' network, at the "
            "output's size: FILE.npy (8xHxW probabilities or HxW class indices) or a PNG (the "
            "classes in the authors' palette, or grey indices 0-7); a folder of STEM.npy or "
            "STEM.png for several inputs (without one, an input takes --seg-weights' priors).",
        ),
    ] = None,
    seg_palette: Annotated[
        Path | None,
        typer.Option(
            help="SFT-GAN: the colours of --seg-maps' PNGs, one 'CLASS R G B' line each "
            "(classes: background sky water grass mountain building plant animal)."
        ),
    ] = None,
    save_priors: Annotated[
        Path | None,
        typer.Option(
            help="SFT-GAN: folder for STEM_segmentation.png (the classes in the authors' "
            "palette) and STEM_prob_CLASS.png (each class's probability), STEM the output's."
        ),
    ] = None,
    outscale: Annotated[
        float | None,
        typer.Option(
            min=0.01, help="Final scale: the model's result resized with Lanczos, e.g. 2."
        ),
    ] = None,
    save_attention: Annotated[
        Path | None,
        typer.Option(
            help="Folder for STEM_attention.png and STEM_source.png maps, STEM the output's (TTSR)."
        ),
    ] = None,
    compare: CompareOption = False,
    restore: Annotated[
        str,
        typer.Option(
            help="Restore each input (blur, noise, JPEG) before upscaling: none, auto (the "
            "registry's default restoration model; none is bundled yet), or an RL-Restore "
            "model's name, weights file or folder.",
        ),
    ] = "none",
    restore_ref: Annotated[
        bool,
        typer.Option(
            "--restore-ref", help="With --restore: restore the references too (taken as sharp)."
        ),
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    debug: DebugOption = False,
) -> None:
    """Upscale images with the bundled model or any loaded one: TTSR borrows texture from
    reference images, CSNLN mines it from the image itself.

    Example: `ttsr upscale photo.png --ref sharp.jpg -o photo_x4.png` (the bundled model)

    Exit codes: 0 all done, 1 some inputs failed (the others are still written), 2 a usage or
    configuration problem (nothing is processed).
    """
    from ttsr_cli import batch, run
    from ttsr_cli.outputs import UpscaleOptions

    with reported_errors(debug):
        start = time.perf_counter()
        given = _prior_maps(seg_maps, seg_palette, fallback=seg_weights is not None)
        settings = run.settings(
            device,
            precision,
            max_memory,
            tile,
            search,
            attention,
            seg_weights=seg_weights,
            seg_maps=given is not None,
        )
        extras = UpscaleOptions(
            outscale, save_attention, compare, priors_dir=save_priors, seg_maps=given
        )
        outputs = batch.OutputOptions(output, suffix, output_format, quality, skip_existing, extras)
        shard = shard or batch.torchrun_shard()
        sources = batch.select_shard(batch.collect_inputs(images, recursive, suffix), shard)
        batch.check_outputs(sources, outputs)  # before the model: loading can take long
        purpose = "upscale" if ref or ref_dir or ref_map else "no-reference"
        runner = run.load_runner(model, weights, settings, purpose=purpose)
        runner = run.with_restoration(runner, restore, restore_ref, settings)
        batch.check_extras(extras, runner.descriptor)
        references = batch.reference_options(
            sources, ref or [], ref_dir, ref_map, (pool, ref_top), runner.descriptor, error
        )
        jobs = batch.plan(sources, outputs, references)
        warnings = batch.check_references(jobs, runner.descriptor.scale)
        name = registry.chosen_name(model, weights, purpose)
        report = _Report(
            len(jobs), quiet, verbose, debug, str(settings.device), warnings, model=name
        )
        _run_jobs(runner, jobs, outputs, report, start, json_output)


def _prior_maps(folder: Path | None, palette: Path | None, fallback: bool) -> PriorMaps | None:
    """``--seg-maps`` (with ``--seg-palette``'s colours), checked before any work."""
    if folder is None:
        if palette is not None:
            raise TTSRError("--seg-palette gives the colours of --seg-maps' PNGs: add --seg-maps")
        return None
    from ttsr_cli.priors import PriorMaps, read_palette

    return PriorMaps(folder, read_palette(palette) if palette else None, fallback)


def _run_jobs(
    runner: run.Runner,
    jobs: list[batch.Job],
    outputs: batch.OutputOptions,
    report: _Report,
    start: float,
    json_output: bool,
) -> None:
    """Run a planned batch under its report; exit 1 when any input failed."""
    from ttsr_cli import batch

    runner.on_tile = report.tile
    with report:
        results = batch.run(runner, jobs, outputs, report.add)
    report.finish(results, time.perf_counter() - start, json_output)
    if any(r.status == "error" for r in results):
        raise typer.Exit(1)


@app.command()
def restore(
    images: ImagesArgument,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="An RL-Restore model: the authors' TensorFlow folder (toolbox/, models/) as "
            "it is, a ttsr .safetensors, or hf://OWNER/REPO/FILE[@REVISION]. Without it and "
            "--model: the registry's default restoration model (none is bundled yet).",
        ),
    ] = None,
    model: ModelOption = None,
    output: OutputOption = None,
    suffix: SuffixOption = RESTORED_SUFFIX,
    output_format: FormatOption = None,
    quality: QualityOption = 95,
    skip_existing: SkipExistingOption = False,
    recursive: RecursiveOption = False,
    shard: ShardOption = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="The most tools applied to an image [default: the model's, 3]."),
    ] = None,
    save_steps: Annotated[
        Path | None,
        typer.Option(
            help="Folder for every intermediate image, STEM_stepK_toolNN.png, STEM the output's."
        ),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    max_memory: MaxMemoryOption = None,
    tile: TileOption = None,
    compare: CompareOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    debug: DebugOption = False,
) -> None:
    """Restore photos damaged by blur, noise and JPEG with RL-Restore: an agent picks, step
    by step, which of its small restoration networks to apply next, or to stop.

    Example: `ttsr restore photo.jpg -w RL-Restore/ -o photo_restored.png` (the
    authors' checkpoint folder, from their repository)

    With --json, each image has its tools (1-based, in the order applied) and each step's
    votes (one count per tool, then stop). Exit codes as for upscale.
    """
    from ttsr_cli import batch, run
    from ttsr_cli.outputs import UpscaleOptions

    with reported_errors(debug):
        start = time.perf_counter()
        settings = run.settings(device, precision, max_memory, tile, max_steps=max_steps)
        settings = replace(settings, keep_steps=save_steps is not None)
        extras = UpscaleOptions(compare=compare, steps_dir=save_steps)
        outputs = batch.OutputOptions(output, suffix, output_format, quality, skip_existing, extras)
        shard = shard or batch.torchrun_shard()
        sources = batch.select_shard(batch.collect_inputs(images, recursive, suffix), shard)
        batch.check_outputs(sources, outputs)
        runner = run.load_runner(model, weights, settings, "rl-restore", purpose="restore")
        jobs = batch.plan(sources, outputs, batch.ReferenceOptions())
        report = _Report(len(jobs), quiet, verbose, debug, str(settings.device), [], "restoring")
        _run_jobs(runner, jobs, outputs, report, start, json_output)


class _Report:
    """Progress bar and per-image lines on stderr while a batch runs, summary or JSON after."""

    def __init__(
        self,
        total: int,
        quiet: bool,
        verbose: bool,
        debug: bool,
        device: str,
        warnings: list[str],
        doing: str = "upscaling",
        model: str | None = None,
    ) -> None:
        self.single = total == 1
        self.quiet, self.verbose, self.debug, self.device = quiet, verbose, debug, device
        self.warnings = warnings  # the run's, before any image; each image has its own
        show_bar = not quiet and not self.single and stderr.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            disable=not show_bar,
        )
        self.task = self.progress.add_task(doing, total=total)
        self.tiles = self.progress.add_task("tiles", total=None, visible=False)
        self.model = model  # named by --verbose and --json (None: not said)

    def __enter__(self) -> _Report:
        if not self.quiet:
            for message in self.warnings:
                warning(message)
            if self.verbose and self.model:
                stderr.print(f"model: {self.model}", markup=False)
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def tile(self, done: int, total: int) -> None:
        """Tiles of the image in progress (a large image may take minutes)."""
        self.progress.update(self.tiles, completed=done, total=total, visible=done < total)

    def add(self, result: batch.Result) -> None:
        self.progress.advance(self.task)
        if result.status == "error":
            if self.debug and result.traceback:
                stderr.print(result.traceback, markup=False, highlight=False)
            error(f"{result.input}: {result.error}")
            return
        if not self.quiet:
            for message in result.warnings:
                warning(f"{result.input}: {message}")
        if self.verbose and not self.quiet:
            notes = [f"{result.tiles} tiles"] if result.tiles > 1 else []
            mode = result.mode or {}
            notes += ["fast search"] if mode.get("search") == "fast" else []
            notes += [f"{mode['attention']} attention"] if "attention" in mode else []
            for key, label in (("tools", "tools"), ("restore_tools", "restored by tools")):
                if key in mode:
                    notes += [f"{label} {', '.join(map(str, mode[key])) or 'none'}"]
            detail = f" ({', '.join(notes)})" if notes else ""
            line = f"{result.status}: {result.input} -> {result.output}{detail}"
            stderr.print(line, markup=False)

    def finish(self, results: list[batch.Result], seconds: float, as_json: bool) -> None:
        counts = {s: sum(r.status == s for r in results) for s in ("ok", "error", "skipped")}
        if as_json:
            summary = {"model": self.model} if self.model else {}
            summary.update(results=[r.to_dict() for r in results], ok=counts["ok"])
            summary.update(failed=counts["error"], skipped=counts["skipped"])
            summary["warnings"] = self.warnings
            typer.echo(json.dumps(summary))
        if self.quiet:
            return
        if self.single and results[0].status == "ok" and results[0].size:
            width, height = results[0].size
            stderr.print(
                f"wrote {results[0].output} ({width}x{height}) in {seconds:.1f} s on {self.device}",
                markup=False,
            )
        elif not self.single:
            stderr.print(
                f"{counts['ok']} written, {counts['error']} failed, {counts['skipped']} skipped "
                f"in {seconds:.1f} s on {self.device}",
                markup=False,
            )


@app.command()
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint ttsr loads (.pt, .pth, .safetensors), or the RL-Restore "
            "authors' TensorFlow folder (toolbox/ and models/, as in their repository; "
            "TensorFlow is not needed).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The .safetensors file to write.")
    ] = ...,  # type: ignore[assignment]
    json_output: Annotated[
        bool, typer.Option("--json", help="Print what was written as one JSON object.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Re-save a checkpoint as ttsr's safetensors, the network and its configuration in its
    metadata; nothing in a checkpoint is ever run.

    Example: `ttsr convert RL-Restore/ -o rl-restore-authors.safetensors`
    """
    from ttsr_cli.convert import convert as convert_checkpoint

    with reported_errors(debug):
        require_writable([output.parent])
        descriptor = convert_checkpoint(source, output)
    if json_output:
        typer.echo(json.dumps({"output": str(output), **descriptor.to_dict()}))
    else:
        stderr.print(
            f"wrote {output}: {descriptor.family}, {descriptor.parameters:,} parameters",
            markup=False,
        )


@app.command()
def models(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
    ] = False,
) -> None:
    """List the named models for --model: family, scale, reference use, whether it is here,
    description (--json adds source, sha256, license, card, configuration)."""
    with reported_errors():
        listing = registry.describe(registry.load_registry())
    if json_output:
        typer.echo(json.dumps(listing))
        return
    from rich.console import Console
    from rich.table import Table

    names = [row["name"] for row in listing["models"]]
    default = listing["default"] if listing["default"] in names else "none bundled yet"
    alone = listing["default_no_reference"]
    if alone != listing["default"] and alone in names:
        default += f", without a reference: {alone}"
    table = Table(title=f"models (default: {default}; sources and cards: --json)")
    for column in ("name", "family", "scale", "reference", "status"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for row in listing["models"]:
        reference = "yes" if row["reference"] else "no"
        cells = (row["family"], f"x{row['scale']}", reference, row["status"])
        table.add_row(row["name"], *cells, row["description"])
    Console(highlight=False).print(table)


@app.command()
def train(
    data: Annotated[
        list[Path],
        typer.Option(
            help="Training data: folders of photos (repeat --data); for TTSR also a CUFED "
            "tree (train/input, train/ref). Pairs and patches are made from them."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Run folder: log.jsonl, checkpoints/, model.safetensors.")
    ],
    arch: Annotated[
        str,
        typer.Option(
            help="Network family: ttsr (reference-based), csnln, rl-restore, sftgan (the "
            "generator, on --seg-maps) or sftgan-seg (its segmentation network)."
        ),
    ] = "ttsr",
    stage: Annotated[
        str,
        typer.Option(
            help="RL-Restore's stage: tools (each tool on its band), agent (Q-learning) or "
            "joint (the tools fine-tuned through the agent's chains)."
        ),
    ] = "tools",
    init: Annotated[
        Path | None,
        typer.Option(
            help="Weights to start from (their configuration replaces --config). TTSR: a "
            "model to fine-tune (ours, such as models/ttsr.safetensors, or the authors'); "
            "RL-Restore: the previous stage's model.safetensors (required for --stage agent "
            "and joint); SFT-GAN: a generator (the authors' or a rec run's) or, for "
            "sftgan-seg, the segmentation network to fine-tune."
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            help="The family's tiny, lite (for a CPU; needs no download) or paper (TTSR: its "
            "LTE starts from VGG19, fetched from the Hub; RL-Restore: the authors' 12 tools, "
            "lite the same with a smaller replay memory), or a .toml file of its fields "
            "[default: lite; sftgan-seg: paper, its only one].",
            show_default=False,
        ),
    ] = None,
    scale: Annotated[int, typer.Option(help="CSNLN's scale: 2, 3 or 4 (TTSR is x4).")] = 4,
    preset: Annotated[
        str,
        typer.Option(
            help="TTSR and SFT-GAN: rec (L1 only) or gan (the paper's losses, after a "
            "pretraining on L1; SFT-GAN: none with --init)."
        ),
    ] = "rec",
    steps: Annotated[
        int | None, typer.Option(help="Total steps (with --resume: the new total).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs, instead of --steps.")] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            help="End the run after this much time of steps (90s, 8m, 2h), as if that step "
            "were the last: a checkpoint and model.safetensors; --resume goes on."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Samples per step and process [default: TTSR 9, CSNLN 16, SFT-GAN 16, "
            "sftgan-seg 4; RL-Restore: 8 patches per tool, 32 episodes, 16 chains].",
            show_default=False,
        ),
    ] = None,
    patch_size: Annotated[
        int | None,
        typer.Option(
            help="HR patch side in pixels, a multiple of the scale [default: TTSR 160, "
            "CSNLN 48 x scale, RL-Restore 63, SFT-GAN 96 (gan: a multiple of 16), "
            "sftgan-seg 320].",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
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
            help="TTSR's LTE: auto (vgg19 when the LTE has VGG's widths), vgg19, random or "
            "a VGG19 weights file."
        ),
    ] = "auto",
    vgg: Annotated[
        str, typer.Option(help="VGG19 weights for the gan presets' losses: hub or a file.")
    ] = "hub",
    lr: Annotated[
        float,
        typer.Option(
            help="Learning rate (TTSR: its main network's; SFT-GAN gan: the trunk's and the "
            "discriminator's, the SFT layers' 5x)."
        ),
    ] = 1e-4,
    lr_lte: Annotated[float, typer.Option(help="TTSR's LTE learning rate.")] = 1e-5,
    lr_decay_steps: Annotated[
        int, typer.Option(help="Halve the rates every N steps (0: never).")
    ] = 0,
    match_loss: Annotated[
        float,
        typer.Option(
            help="TTSR: weight of the LTE matching loss (contrastive; 0: off, as the paper). "
            "Helps an LTE trained from scratch tell patches apart."
        ),
    ] = 0.0,
    ema: Annotated[
        float,
        typer.Option(
            help="Export (and validate) the moving average of the weights, with this decay "
            "per step (e.g. 0.999), instead of the last weights; 0: off."
        ),
    ] = 0.0,
    channels_last: Annotated[
        bool, typer.Option("--channels-last", help="NHWC memory layout.")
    ] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    val: Annotated[
        Path | None,
        typer.Option(help="Validation folder: a CUFED5 test tree or HR images (self-reference)."),
    ] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps (and at the end).")] = 1000,
    val_limit: Annotated[
        int | None, typer.Option(help="Validate on the first N images only.")
    ] = None,
    seg_maps: Annotated[
        Path | None,
        typer.Option(
            help="SFT-GAN: the photos' class maps, a folder of STEM.npy or STEM.png at each "
            "photo's size (the forms upscale's --seg-maps reads)."
        ),
    ] = None,
    seg_palette: Annotated[
        Path | None,
        typer.Option(help="SFT-GAN: the colours of --seg-maps' PNGs, as for upscale."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    debug: DebugOption = False,
) -> None:
    """Train a TTSR, a CSNLN, an RL-Restore or an SFT-GAN with its paper's recipe; run under
    torchrun for several processes (DDP; TTSR, CSNLN and SFT-GAN).

    Example: `ttsr train --data photos/ --out runs/mine --steps 2000` (TTSR, lite)
    """
    from ttsr_cli.train import TrainOptions, load_config, parse_duration
    from ttsr_cli.train import train as run_training

    with reported_errors(debug):
        opts = TrainOptions(
            data=data,
            out=out,
            arch=arch,
            config=load_config(config, arch),
            scale=scale,
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
            match_loss=match_loss,
            channels_last=channels_last,
            compile=compile,
            val=val,
            val_every=val_every,
            val_limit=val_limit,
            stage=stage,
            init=init,
            seg_maps=seg_maps,
            seg_palette=seg_palette,
            time_limit=parse_duration(time_limit) if time_limit else None,
            ema=ema,
        )
        require_writable([out])  # before the data and the model are made
        with training_progress(quiet) as report:
            result = run_training(opts, on_step=report)
        if not quiet:
            stderr.print(f"wrote {result.model_path} after {result.steps} steps")
            if result.steps < result.total:
                stderr.print(f"time limit reached before step {result.total}: --resume goes on")


#: ``evaluate --model bicubic``: the baseline alone.
BASELINE = "bicubic"


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
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Checkpoint to evaluate, a file or hf:// URL. Without it and --model: "
            "the bundled default model.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A named model to evaluate (see ttsr models); bicubic: the baseline alone.",
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
            "sisr: luminance PSNR/SSIM with a border of scale pixels cut (EDSR, CSNLN); "
            "rgb: RGB PSNR/SSIM with a border of scale pixels cut."
        ),
    ] = "ttsr",
    limit: Annotated[
        int | None, typer.Option(help="Evaluate only the first N images (name order).")
    ] = None,
    save_images: Annotated[
        Path | None,
        typer.Option(help="Write NAME_ttsr.png and NAME_bicubic.png into this folder."),
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write index.html with a per-image chart and best/worst crops "
            "(bicubic | model | ground truth) into this folder.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
    ] = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write per-image results to this CSV.")
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    max_memory: MaxMemoryOption = None,
    search: SearchOption = "exact",
    attention: AttentionOption = "auto",
    degrade: Annotated[
        str | None,
        typer.Option(
            help="Damage the inputs with RL-Restore's blur + noise + JPEG recipe: mild, "
            "moderate or severe. Without --model/--weights the default restoration model runs "
            "(scored beside the damaged input); with an SR model, it upscales the damaged LR.",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="With --degrade: the seed (each image's damage is its own).")
    ] = 0,
    restore: Annotated[
        str | None,
        typer.Option(
            help="With --degrade and an SR model: restore the damaged LR first, with auto (the "
            "default restoration model; none is bundled yet) or an RL-Restore model's name, "
            "weights file or folder.",
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Measure PSNR/SSIM of a model and of bicubic up-sampling on a benchmark dataset.

    Example: `ttsr evaluate --dataset set5 --data-dir Set5` (the bundled model beside
    bicubic; --model bicubic for the baseline alone)
    """
    from ttsr_cli import run
    from ttsr_cli.evaluate import Damage, prepare, write_csv

    with reported_errors(debug):
        settings = run.settings(device, precision, max_memory, None, search, attention)
        require_writable([None if csv_file is None else csv_file.parent])
        baseline_only = model == BASELINE and weights is None
        purpose = "restore" if degrade and not (model or weights) else "evaluate"
        runner = None if baseline_only else run.load_runner(model, weights, settings, None, purpose)
        name = BASELINE if baseline_only else registry.chosen_name(model, weights, purpose)
        restorer = None if restore is None else run.load_restorer(restore, settings)
        benchmark = prepare(
            dataset,
            data_dir,
            runner,
            ref_level=ref_level,
            protocol=protocol,
            limit=limit,
            damage=None if degrade is None else Damage(degrade, seed),
            restorer=restorer,
        )
        if not json_output:
            beside = "" if baseline_only else f" beside {benchmark.baseline}"
            stderr.print(f"evaluating {name}{beside}")
        report = _run_with_progress(benchmark, save_images, show=not json_output)
        if csv_file is not None:
            write_csv(report, csv_file)
        if report_dir is not None:
            from ttsr_cli.report import write_report

            write_report(report, benchmark, report_dir)
        if json_output:
            typer.echo(json.dumps({"model": name, **report.to_dict()}))
        else:
            _print_table(report)
    if report.skipped:
        raise typer.Exit(1)


def _run_with_progress(benchmark: Benchmark, save_dir: Path | None, show: bool) -> Report:
    """Run the benchmark with a progress bar on stderr; skipped images are reported as
    they happen, one line each."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ttsr_cli.evaluate import ImageResult, Skipped
    from ttsr_cli.evaluate import run as run_benchmark

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not show) as progress:
        task = progress.add_task(benchmark.dataset, total=len(benchmark.samples))

        def on_image(outcome: ImageResult | Skipped) -> None:
            if isinstance(outcome, Skipped):
                error(outcome.message)
            progress.advance(task)

        return run_benchmark(benchmark, save_dir, on_image)


def _print_table(report: Report) -> None:
    """Per-image rows and the mean, PSNR in dB to 3 decimals and SSIM to 4, on stdout; the
    baseline's columns named after it (bicubic, or the damaged input)."""
    from rich.console import Console
    from rich.table import Table

    headers = {"psnr": "PSNR", "ssim": "SSIM"}
    headers |= {f"bicubic_{m}": f"{report.baseline} {m.upper()}" for m in ("psnr", "ssim")}
    metrics = [m for m in headers if report.with_model or m.startswith("bicubic")]
    damaged = "" if report.damage is None else f", inputs degraded {report.damage.level}"
    title = f"{report.dataset}, {report.protocol} protocol{damaged}: {len(report.results)} images"
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


@app.command("match-ref")
def match_ref(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Images, folders or quoted globs to find references for.", show_default=False
        ),
    ],
    pool: Annotated[Path, typer.Option(help="Folder of candidate reference images.")] = ...,  # type: ignore[assignment]
    top: Annotated[int, typer.Option(help="References kept per input, best first.")] = 5,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Score with this checkpoint's LTE, a file or hf:// URL "
            "(default: a fixed texture descriptor).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Score with a named model's LTE (see ttsr models)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with every ranking on stdout.")
    ] = False,
    csv_file: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Write 'input,ref1,ref2,...' rows for 'ttsr upscale --ref-map'."
        ),
    ] = None,
    copy_to: Annotated[
        Path | None, typer.Option(help="Copy each input's references into DIR/STEM/, rank first.")
    ] = None,
    sheet: Annotated[
        Path | None, typer.Option(help="Write a contact sheet PNG: each input with its references.")
    ] = None,
    device: DeviceOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Rank a pool of images as references for each input, by the texture TTSR could borrow.

    Example: `ttsr match-ref photo.png --pool sharp/ --top 3 --csv refs.csv`

    Exit codes: 0 all ranked, 1 some inputs or pool images could not be read (skipped), 2 a
    usage or configuration problem.
    """
    from ttsr_cli import batch, matching
    from ttsr_cli.devices import select_device
    from ttsr_cli.weights import load as load_weights

    with reported_errors(debug):
        if top < 1:
            raise TTSRError(f"--top {top}: must be at least 1")
        if not pool.is_dir():
            raise TTSRError(f"--pool {pool}: not a folder")
        inputs = [s.path for s in batch.collect_inputs(images)]
        pool_paths = [s.path for s in batch.collect_inputs([pool], suffix="")]
        sheet_folder = None if sheet is None else sheet.parent
        require_writable([None if csv_file is None else csv_file.parent, copy_to, sheet_folder])
        target = select_device(device)
        lte = None
        if weights or model:
            lte = load_weights(registry.resolve(model, weights), expect="ttsr")[0].LTE
        matcher = matching.Matcher(lte, target)
        failures: list[str] = []

        def skip(message: str) -> None:
            failures.append(message)
            error(message)

        encoded = matching.encode_pool(matcher, pool_paths, skip)
        if not encoded:
            raise TTSRError(f"--pool {pool}: no readable images")
        rankings = matching.rank_inputs(matcher, inputs, encoded, top, skip)
        if csv_file is not None:
            matching.write_ref_map(rankings, csv_file)
        if copy_to is not None:
            matching.copy_top(rankings, copy_to)
        if sheet is not None:
            matching.contact_sheet(rankings, sheet)
        _print_rankings(rankings, json_output)
    if failures:
        raise typer.Exit(1)


def _print_rankings(rankings: list[matching.Ranking], as_json: bool) -> None:
    """JSON on stdout, or each input followed by its numbered references and scores."""
    if as_json:
        typer.echo(json.dumps({"results": [r.to_dict() for r in rankings]}))
        return
    for ranking in rankings:
        typer.echo(str(ranking.input))
        for rank, found in enumerate(ranking.matches, start=1):
            typer.echo(f"  {rank}. {found.score:.4f}  {found.ref}")


def main() -> None:
    """Console-script entry point."""
    app()
