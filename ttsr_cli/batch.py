"""Many images in one run: which files, where their results go, which references they use.

A batch is a loop over the single-image path (:func:`ttsr_cli.outputs.upscale_file`), not a
copy of it.  Everything that can be checked before the network runs is checked first (options,
output names, references), so configuration mistakes stop the run before any work; after that
one bad image never stops the others, and each output is written atomically as it completes.
"""

from __future__ import annotations

import csv
import glob
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.atomic import require_writable
from ttsr_cli.devices import torchrun_env
from ttsr_cli.errors import InputError, TTSRError, first_line
from ttsr_cli.imageio import output_format, probe_size
from ttsr_cli.naming import UPSCALED_SUFFIX
from ttsr_cli.outputs import UpscaleOptions, upscale_file
from ttsr_cli.run import Runner
from ttsr_cli.run.ttsr import ReferenceCache

FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
_GLOB_CHARS = frozenset("*?[")


#: Positions a side (``scale`` pixels each) under which a reference draws a warning: the
#: relevance search compares 3x3 patches of them, so fewer than 8x8 leave next to nothing
#: to choose from.
SMALL_REFERENCE = 8
#: ``--ref auto``: choose each input's references from ``--pool`` (match-ref ranking).
AUTO = "auto"


@dataclass(frozen=True)
class Source:
    """One input file and its folder relative to the argument that named it (kept under -o)."""

    path: Path
    subfolder: Path = Path()


@dataclass(frozen=True)
class OutputOptions:
    """Where and how results are written.

    ``target``: ``-o``, a file for one input or a folder (created) for several; None writes
    beside each input.  ``fmt``: ``png|jpg|webp|tiff|same`` for generated names (None: png).
    """

    target: Path | None = None
    suffix: str = UPSCALED_SUFFIX
    fmt: str | None = None
    quality: int = 95
    skip_existing: bool = False
    extras: UpscaleOptions = field(default_factory=UpscaleOptions)


@dataclass(frozen=True)
class ReferenceOptions:
    """``--ref`` (for every input), ``--ref-dir`` (same stem) and ``--ref-map`` (a CSV).

    For each input the first that names references wins: map row, ``--ref auto`` ranking,
    folder match, ``--ref``; with none, the input is its own reference.
    """

    refs: tuple[Path, ...] = ()
    ref_dir: Path | None = None
    ref_map: Path | None = None
    #: ``--ref auto --pool DIR``: each input's best pool images (see :func:`ranked_references`).
    ranked: dict[Path, tuple[Path, ...]] | None = None


@dataclass(frozen=True)
class Job:
    """One input's plan; ``problem`` is why it cannot run (found while planning)."""

    source: Path
    destination: Path
    references: tuple[Path, ...] = ()
    problem: str | None = None


@dataclass
class Result:
    """What happened to one input.  ``status``: ok, error or skipped (already existed)."""

    input: Path
    output: Path | None
    status: str
    error: str | None = None
    seconds: float = 0.0
    size: tuple[int, int] | None = None
    tiles: int = 1
    mode: dict[str, Any] | None = None
    traceback: str | None = field(default=None, repr=False)
    references: tuple[Path, ...] = ()
    relevance: float | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The JSON record: ``input, output, status, error, seconds``, and for a written image
        its ``tiles``, the ``references`` it borrowed from (none: itself, or a model without
        references), the choices made for it (TTSR: the relevance ``search``, exact or
        fast; CSNLN: the ``attention``, exact or windowed), its ``warnings`` and, for TTSR,
        its ``relevance`` (the mean soft attention, 0 to 1)."""
        record = {
            "input": str(self.input),
            "output": None if self.output is None else str(self.output),
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }
        if self.mode is not None:
            record.update(self.mode)
            record["tiles"] = self.tiles
            record["references"] = [str(ref) for ref in self.references]
            record["warnings"] = list(self.warnings)
            if self.relevance is not None:
                record["relevance"] = round(self.relevance, 4)
        return record


def image_extensions() -> frozenset[str]:
    """Extensions of every format Pillow can open (folders are listed by these)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def collect_inputs(
    items: Sequence[Path | str], recursive: bool = False, suffix: str = UPSCALED_SUFFIX
) -> list[Source]:
    """Files named on the command line, folders expanded, globs matched; sorted, unique.

    A named file is kept even if missing (it then fails with a reason, like any bad input).
    A folder gives its image files (``recursive``: and its sub-folders'), except those whose
    stem ends with ``suffix``: ttsr's own earlier outputs.  A glob selects paths as they are,
    so a folder it matches is reported as an error rather than entered.
    """
    found: dict[str, Source] = {}
    extensions = image_extensions()
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            sources = _folder_images(path, recursive, suffix, extensions)
        elif _GLOB_CHARS & set(text) and not path.exists():
            matches = sorted(glob.glob(text, recursive=recursive))
            if not matches:
                raise TTSRError(f"{text}: no files match this pattern")
            sources = [Source(Path(m)) for m in matches]
        else:
            sources = [Source(path)]
        for source in sources:
            found.setdefault(os.path.abspath(source.path), source)
    return [found[key] for key in sorted(found)]


def _folder_images(
    folder: Path, recursive: bool, suffix: str, extensions: frozenset[str]
) -> list[Source]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return [
        Source(path, path.parent.relative_to(folder))
        for path in candidates
        if path.suffix.lower() in extensions
        and not path.is_dir()
        and not (suffix and path.stem.endswith(suffix))
    ]


def torchrun_shard() -> str | None:
    """``RANK+1/WORLD_SIZE`` under torchrun (several processes), so each rank takes its own
    slice of the inputs without being told; ``None`` when run alone."""
    env = torchrun_env()
    return f"{env.rank + 1}/{env.world}" if env.world > 1 else None


def check_extras(extras: UpscaleOptions, descriptor: Descriptor) -> None:
    """Pictures the model can give, and priors it can take: attention maps need a reference
    search, priors a model that takes them."""
    if extras.attention_dir is not None and not descriptor.takes_reference:
        raise TTSRError(
            f"--save-attention: a {descriptor.family} model has no reference search to picture"
        )
    if extras.priors_dir is not None and descriptor.prior is None:
        raise TTSRError(f"--save-priors: a {descriptor.family} model takes no priors")
    if extras.seg_maps is not None and descriptor.prior is None:
        raise TTSRError(f"--seg-maps: a {descriptor.family} model takes no priors")


def reference_options(
    sources: Sequence[Source],
    refs: Sequence[Path],
    ref_dir: Path | None,
    ref_map: Path | None,
    pool: tuple[Path | None, int],
    descriptor: Descriptor,
    on_error: Callable[[str], None],
) -> ReferenceOptions:
    """The references the options name, checked against the model: one that takes no
    reference refuses them all (a usage error, before any work).  ``refs == [auto]``
    ranks ``pool`` (``(folder, top)``) for each input."""
    options = (("--ref", refs), ("--ref-dir", ref_dir), ("--ref-map", ref_map), ("--pool", pool[0]))
    given = [name for name, value in options if value]
    if given and not descriptor.takes_reference:
        raise TTSRError(
            f"{given[0]}: a {descriptor.family} model takes no reference image (it upscales "
            "from the image alone); leave the reference options out or use a TTSR model"
        )
    if list(refs) != [Path(AUTO)]:
        return ReferenceOptions(tuple(refs), ref_dir, ref_map)
    folder, top = pool
    if folder is None:
        raise TTSRError("--ref auto needs --pool DIR")
    return ReferenceOptions((), ref_dir, ref_map, ranked_references(sources, folder, top, on_error))


def ranked_references(
    sources: Sequence[Source], pool: Path, top: int, on_error: Callable[[str], None]
) -> dict[Path, tuple[Path, ...]]:
    """``--ref auto --pool DIR``: each input's ``top`` best pool images, ranked as
    ``ttsr match-ref`` ranks them.  Unreadable pool images are reported and left out;
    unreadable inputs are left to the batch, which reports them once."""
    from ttsr_cli import matching

    if not pool.is_dir():
        raise TTSRError(f"--pool {pool}: not a folder")
    if top < 1:
        raise TTSRError(f"--ref-top {top}: must be at least 1")
    matcher = matching.Matcher()
    paths = [s.path for s in collect_inputs([pool], suffix="")]
    encoded = matching.encode_pool(matcher, paths, on_error)
    if not encoded:
        raise TTSRError(f"--pool {pool}: no readable images")
    inputs = [s.path for s in sources]
    rankings = matching.rank_inputs(matcher, inputs, encoded, top, lambda message: None)
    return {r.input.resolve(): tuple(m.ref.resolve() for m in r.matches) for r in rankings}


def select_shard(sources: list[Source], shard: str | None) -> list[Source]:
    """``K/N``: every N-th input starting at the K-th (1-based) of the sorted list, so N
    machines given 1/N..N/N split any batch evenly and deterministically."""
    if shard is None:
        return sources
    try:
        k, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise TTSRError(f"--shard '{shard}' must be K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise TTSRError(f"--shard '{shard}': K must be between 1 and N")
    return sources[k - 1 :: n]


def plan(
    sources: Sequence[Source], outputs: OutputOptions, references: ReferenceOptions
) -> list[Job]:
    """Destination and references for every input; options are checked here (exit 2).
    That the folders can take files is :func:`check_outputs`'s, before the model loads."""
    _check_output_options(sources, outputs)
    to_folder = _writes_to_folder(outputs.target, len(sources))
    chooser = _reference_chooser(references)
    inputs = {s.path.resolve() for s in sources}
    claimed: dict[Path, Path] = {}
    jobs = []
    for source in sources:
        destination = _destination(source, outputs, to_folder)
        resolved = destination.resolve()
        problem = None
        if resolved in inputs:
            problem = f"refusing to overwrite the input {destination} with an output"
        elif resolved in claimed:
            problem = f"output {destination} would also be written for {claimed[resolved]}"
        claimed.setdefault(resolved, source.path)
        jobs.append(Job(source.path, destination, chooser(source.path), problem))
    return jobs


def check_outputs(sources: Sequence[Source], outputs: OutputOptions) -> None:
    """Everything about the outputs that can be known before any work (exit 2): the
    options, that one ``--seg-maps`` file serves one input, and that every folder to be
    written can take files."""
    _check_output_options(sources, outputs)
    if outputs.extras.seg_maps is not None:
        outputs.extras.seg_maps.check_inputs(len(sources))
    to_folder = _writes_to_folder(outputs.target, len(sources))
    folders = [_destination(source, outputs, to_folder).parent for source in sources]
    extras = outputs.extras
    require_writable([*folders, extras.attention_dir, extras.steps_dir, extras.priors_dir])


def _check_output_options(sources: Sequence[Source], outputs: OutputOptions) -> None:
    if not sources:
        raise TTSRError("no input images found")
    count = len(sources)
    if outputs.fmt is not None and outputs.fmt not in (*FORMATS, "same"):
        raise TTSRError(f"unknown --format '{outputs.fmt}' (use png, jpg, webp, tiff or same)")
    if not 1 <= outputs.quality <= 100:
        raise TTSRError(f"--quality must be between 1 and 100, got {outputs.quality}")
    if "/" in outputs.suffix or os.sep in outputs.suffix:
        raise TTSRError(f"--suffix '{outputs.suffix}' must not contain a path separator")
    target = outputs.target
    if target is None:
        return
    if count > 1 and target.is_file():
        raise TTSRError(f"-o {target}: with several inputs -o must be a folder, not a file")
    if not _writes_to_folder(target, count):
        try:
            output_format(target)
        except InputError as exc:
            raise TTSRError(str(exc)) from None
        if outputs.fmt not in (None, "same") and target.suffix.lower() != FORMATS[outputs.fmt]:
            raise TTSRError(f"-o {target} does not match --format {outputs.fmt}")


def _writes_to_folder(target: Path | None, count: int) -> bool:
    """-o names a folder when there are several inputs, it is one, or it has no extension."""
    return target is not None and (count > 1 or target.is_dir() or not target.suffix)


def _destination(source: Source, outputs: OutputOptions, to_folder: bool) -> Path:
    if outputs.target is not None and not to_folder:
        return outputs.target
    path = source.path
    name = f"{path.stem}{outputs.suffix}{_extension(path, outputs.fmt)}"
    if outputs.target is None:
        return path.with_name(name)
    return outputs.target / source.subfolder / name


def _extension(path: Path, fmt: str | None) -> str:
    """``same`` keeps the input's extension when ttsr can write it, else falls back to PNG."""
    if fmt == "same":
        try:
            output_format(path)
            return path.suffix
        except InputError:
            return FORMATS["png"]
    return FORMATS[fmt or "png"]


def _reference_chooser(options: ReferenceOptions) -> Callable[[Path], tuple[Path, ...]]:
    """A function giving each input its references (resolved paths) by the documented order."""
    rows = {**(options.ranked or {}), **(read_ref_map(options.ref_map) if options.ref_map else {})}
    by_stem = _index_by_stem(options.ref_dir) if options.ref_dir else {}
    common = tuple(path.resolve() for path in options.refs)

    def choose(source: Path) -> tuple[Path, ...]:
        if source.resolve() in rows:
            return rows[source.resolve()]
        if options.ref_dir is not None:
            matches = by_stem.get(source.stem, [])
            if len(matches) == 1:
                return (matches[0].resolve(),)
            if len(matches) > 1:
                names = ", ".join(m.name for m in matches)
                raise TTSRError(
                    f"--ref-dir {options.ref_dir}: several references for {source}: {names}"
                )
            if not common:
                raise TTSRError(
                    f"--ref-dir {options.ref_dir}: no reference named {source.stem}.* for {source}"
                )
        return common

    return choose


def _index_by_stem(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise TTSRError(f"--ref-dir {folder}: not a folder")
    extensions = image_extensions()
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in extensions and not path.is_dir():
            index.setdefault(path.stem, []).append(path)
    return index


def read_ref_map(path: Path) -> dict[Path, tuple[Path, ...]]:
    """``input,ref[,ref...]`` rows (header optional) -> references by resolved input path.

    Relative paths are relative to the CSV's folder, so a map moves with its images.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [[cell.strip() for cell in row] for row in csv.reader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TTSRError(f"--ref-map {path}: cannot read it ({exc})") from None
    rows = [[cell for cell in row if cell] for row in rows]
    rows = [row for row in rows if row]
    if rows and rows[0][0].lower() == "input":
        rows = rows[1:]
    base = path.parent
    table: dict[Path, tuple[Path, ...]] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise TTSRError(f"--ref-map {path}: row {number} names no reference: {','.join(row)}")
        table[(base / row[0]).resolve()] = tuple((base / ref).resolve() for ref in row[1:])
    return table


def check_references(jobs: Sequence[Job], scale: int = 4) -> list[str]:
    """Every reference that will be used exists, is an image and is at least ``scale``
    pixels a side (TTSR crops it to multiples of its scale); returns a warning for each
    one under :data:`SMALL_REFERENCE` positions a side, which is accepted.

    Only headers are read.  A problem here is a configuration error (exit 2) found before any
    input is processed; a reference whose pixels later fail to decode fails only the inputs
    that use it.
    """
    warnings = []
    for ref in sorted({r for job in jobs if job.problem is None for r in job.references}):
        try:
            width, height = probe_size(ref)
        except InputError as exc:
            raise TTSRError(f"reference {exc}") from None
        if width < scale or height < scale:
            raise TTSRError(
                f"reference {ref}: is {width}x{height}; it must be at least {scale}x{scale}"
            )
        if min(width, height) < SMALL_REFERENCE * scale:
            side = SMALL_REFERENCE * scale
            warnings.append(
                f"reference {ref}: {width}x{height} holds little texture to borrow "
                f"(under {side}x{side} pixels); it is used anyway"
            )
    return warnings


def run(
    runner: Runner,
    jobs: Sequence[Job],
    outputs: OutputOptions,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Upscale every job in order; each outcome is reported as soon as it is known."""
    runnable = [job for job in jobs if job.problem is None]
    cache = ReferenceCache(runner, [ref for job in runnable for ref in job.references])
    results = []
    for job in jobs:
        result = _run_one(runner, cache, job, outputs)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _run_one(runner: Runner, cache: ReferenceCache, job: Job, outputs: OutputOptions) -> Result:
    start = time.perf_counter()
    if job.problem is not None:
        return Result(job.source, None, "error", job.problem)
    if outputs.skip_existing and job.destination.exists():
        return Result(job.source, job.destination, "skipped")
    try:
        with cache.borrow(job.references) as references:
            written = upscale_file(
                runner,
                job.source,
                job.destination,
                references,
                outputs.quality,
                outputs.extras,
                job.references,
            )
    except Exception as exc:  # one image's failure, expected or not, must not end the batch
        if isinstance(exc, InputError):
            reason = str(exc).removeprefix(f"{job.source}: ")
        else:
            reason = f"{type(exc).__name__}: {first_line(exc, 1000)}"
        seconds = time.perf_counter() - start
        return Result(job.source, None, "error", reason, seconds, traceback=traceback.format_exc())
    seconds = time.perf_counter() - start
    return Result(
        job.source,
        job.destination,
        "ok",
        seconds=seconds,
        size=written.size,
        tiles=written.tiles,
        mode=written.mode,
        references=job.references,
        relevance=written.relevance,
        warnings=written.warnings,
    )
