"""Benchmark runs: a model and the bicubic baseline over a dataset, scored per image.

The bicubic baseline is always measured beside the model: it checks the data and metric
set-up (its numbers are known for every benchmark) and shows what the model adds.

With a degradation (``--degrade mild|moderate|severe``, :mod:`ttsr_cli.degrade`) the inputs
are damaged by blur, noise and JPEG first, each image from its own seed (``--seed`` and its
place in the dataset, so a subset scores its images as the whole set does).  A restoration
model is then scored on the damaged ground truth against the damaged input itself (the
``input`` baseline); a super-resolution model on the damaged LR, restored first when a
restorer is given, against bicubic up-sampling of the damaged LR.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ttsr_cli.atomic import atomic_path
from ttsr_cli.data import Sample, dataset_info, dataset_root, list_samples
from ttsr_cli.degrade import degrade_u8, level_triples
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import read_rgb, write_rgb
from ttsr_cli.metrics import PROTOCOLS, score
from ttsr_cli.pixels import degrade, resize_bicubic
from ttsr_cli.run import Runner

METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")


@dataclass(frozen=True)
class ImageResult:
    """Scores of one image; ``psnr``/``ssim`` are ``None`` when only the baseline ran."""

    name: str
    psnr: float | None
    ssim: float | None
    bicubic_psnr: float
    bicubic_ssim: float


@dataclass(frozen=True)
class Skipped:
    """An image that could not be evaluated, with the one-line reason."""

    name: str
    message: str


@dataclass(frozen=True)
class Damage:
    """``--degrade LEVEL --seed N``: the RL-Restore recipe applied to every input."""

    level: str
    seed: int = 0


@dataclass
class Benchmark:
    """What to run: the dataset's samples, the protocol, the model (``None``: baseline),
    the scale the LR inputs are made at (the model's), the damage done to the inputs and
    the restoration model run before the upscaler (if any)."""

    dataset: str
    protocol: str
    samples: list[Sample]
    upscaler: Runner | None = None
    scale: int = 4
    damage: Damage | None = None
    restorer: Runner | None = None

    @property
    def baseline(self) -> str:
        """What the model is measured beside: the damaged input itself for restoration,
        else bicubic up-sampling."""
        return "input" if self.scale == 1 else "bicubic"


@dataclass
class Report:
    """Per-image results, images skipped, and the means the papers report."""

    dataset: str
    protocol: str
    with_model: bool
    results: list[ImageResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    baseline: str = "bicubic"
    damage: Damage | None = None

    def mean(self, metric: str) -> float | None:
        """Average of the per-image values (the original averages PSNR in dB, not MSE)."""
        values = [getattr(r, metric) for r in self.results]
        if not values or any(v is None for v in values):
            return None
        return float(np.mean(values))

    def label(self, metric: str) -> str:
        """A metric's name in reports: the baseline's columns are named after it."""
        return metric.replace("bicubic", self.baseline, 1)

    def to_dict(self) -> dict:
        """The ``--json`` document; non-finite numbers (identical images) become null."""
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "baseline": self.baseline,
            "degrade": None if self.damage is None else asdict(self.damage),
            "images": len(self.results),
            **{self.label(m): _finite(self.mean(m)) for m in METRICS},
            "per_image": [
                {self.label(k): _finite(v) if k != "name" else v for k, v in asdict(r).items()}
                for r in self.results
            ],
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def prepare(
    dataset: str,
    data_dir: Path | None = None,
    runner: Runner | None = None,
    *,
    ref_level: str = "1",
    protocol: str = "ttsr",
    limit: int | None = None,
    damage: Damage | None = None,
    restorer: Runner | None = None,
) -> Benchmark:
    """Resolve the dataset (downloading it if no folder is given) and list its samples for
    ``runner``'s model (any family; None: the bicubic baseline alone); every configuration
    problem surfaces here, before any image is run.  The LR inputs are made at the model's
    scale (x4 for the baseline alone).  ``damage`` degrades the inputs; ``restorer``
    restores them before ``runner`` upscales them."""
    if protocol not in PROTOCOLS:
        raise TTSRError(f"unknown protocol '{protocol}' (use {' or '.join(PROTOCOLS)})")
    if limit is not None and limit < 1:
        raise TTSRError(f"--limit must be at least 1, got {limit}")
    if damage is not None:
        level_triples(damage.level)  # an unknown level fails here, before any image
    if restorer is not None and (damage is None or runner is None or runner.descriptor.scale == 1):
        raise TTSRError(
            "--restore measures restoration before upscaling: it needs --degrade "
            "and a super-resolution model"
        )
    info = dataset_info(dataset, data_dir)
    samples = list_samples(info, dataset_root(info, data_dir), ref_level)[:limit]
    scale = 4 if runner is None else runner.descriptor.scale
    if scale == 1 and damage is None:
        raise TTSRError("a restoration model is evaluated on damaged inputs: add --degrade LEVEL")
    return Benchmark(info.name, protocol, samples, runner, scale, damage, restorer)


def run(
    benchmark: Benchmark,
    save_dir: Path | None = None,
    on_image: Callable[[ImageResult | Skipped], None] | None = None,
) -> Report:
    """Evaluate every sample; an unreadable image is skipped and recorded, the rest go on."""
    report = Report(benchmark.dataset, benchmark.protocol, benchmark.upscaler is not None)
    report.baseline, report.damage = benchmark.baseline, benchmark.damage
    for index, sample in enumerate(benchmark.samples):
        try:
            outcome: ImageResult | Skipped = evaluate_sample(sample, benchmark, save_dir, index)
            report.results.append(outcome)
        except InputError as exc:
            outcome = Skipped(sample.name, str(exc))
            report.skipped.append(outcome)
        if on_image is not None:
            on_image(outcome)
    return report


def evaluate_sample(
    sample: Sample, benchmark: Benchmark, save_dir: Path | None, index: int = 0
) -> ImageResult:
    """Score the baseline and (if any) the model on one ground-truth image, the ``index``-th
    of the dataset (which, with ``--degrade``, seeds its damage)."""
    hr, baseline, sr = outputs_for(sample, benchmark, index)
    with _naming(sample.hr):
        base = score(baseline, hr, benchmark.protocol, benchmark.scale)
    psnr = ssim = None
    if sr is not None:
        model = score(sr, hr, benchmark.protocol, benchmark.scale)
        psnr, ssim = model.psnr, model.ssim
    if save_dir is not None:
        save_outputs(save_dir, sample, {benchmark.baseline: baseline, "ttsr": sr})
    return ImageResult(sample.name, psnr, ssim, base.psnr, base.ssim)


def outputs_for(
    sample: Sample, benchmark: Benchmark, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(ground truth, baseline output, model output or None)`` for the ``index``-th
    sample: what is scored, and what ``--report`` pictures."""
    image = read_rgb(sample.hr)
    with _naming(sample.hr):
        hr, lr, baseline = model_inputs(image, benchmark, index)
    if benchmark.upscaler is None:
        return hr, baseline, None
    if benchmark.restorer is not None:
        lr = benchmark.restorer.upscale(lr)
    return hr, baseline, super_resolve(benchmark.upscaler, sample, lr)


def model_inputs(
    image: np.ndarray, benchmark: Benchmark, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ground truth, model input, baseline output)`` for one image: the LR at the
    model's scale, damaged if asked (at scale 1 the input is the damaged image and the
    baseline that input itself)."""
    damage = benchmark.damage
    if benchmark.scale == 1:
        assert damage is not None, "prepare() refuses restoration without damage"
        damaged, _ = degrade_u8(image, damage.level, damage.seed, index)
        return image, damaged, damaged
    hr, lr, baseline = degrade(image, benchmark.scale)
    if damage is None:
        return hr, lr, baseline
    lr, _ = degrade_u8(lr, damage.level, damage.seed, index)
    return hr, lr, resize_bicubic(lr, hr.shape[1], hr.shape[0])


def super_resolve(upscaler: Runner, sample: Sample, lr: np.ndarray) -> np.ndarray:
    """The model's output for ``lr``.  A TTSR searches all of the sample's references
    together (none: the LR is its own reference, the TTSR authors' protocol for Urban100);
    a model without a reference search ignores them."""
    if not upscaler.descriptor.takes_reference:
        return upscaler.upscale(lr)
    if sample.problem:
        raise InputError(f"{sample.hr}: {sample.problem}")
    references = []
    for path in sample.references:
        image = read_rgb(path)
        with _naming(path):
            references.append(upscaler.encode_reference(image))
    return upscaler.upscale(lr, references)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Prefix ``path`` to input errors raised by code that only sees pixels (too small)."""
    try:
        yield
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def save_outputs(save_dir: Path, sample: Sample, outputs: dict[str, np.ndarray | None]) -> None:
    """``NAME_bicubic.png`` (``NAME_input.png``: the damaged input, for restoration) and,
    with a model, ``NAME_ttsr.png``, each written atomically.  A folder that cannot be
    written stops the run: every later image would fail the same way."""
    stem = Path(sample.name).stem
    for suffix, image in outputs.items():
        if image is None:
            continue
        path = save_dir / f"{stem}_{suffix}.png"
        try:
            write_rgb(path, image)
        except OSError as exc:
            raise TTSRError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_csv(report: Report, path: Path) -> None:
    """One row per image and a final ``mean`` row; empty cells where no model ran."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", *(report.label(m) for m in METRICS)])
    for result in report.results:
        writer.writerow([result.name, *(_cell(getattr(result, m)) for m in METRICS)])
    writer.writerow(["mean", *(_cell(report.mean(m)) for m in METRICS)])
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise TTSRError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)
