"""Benchmark runs: a model and the bicubic baseline over a dataset, scored per image.

The bicubic baseline is always measured beside the model: it checks the data and metric
set-up (its numbers are known for every benchmark) and shows what the model adds.
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
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import read_rgb, write_rgb
from ttsr_cli.metrics import PROTOCOLS, score
from ttsr_cli.pixels import degrade
from ttsr_cli.run import Runner
from ttsr_cli.run.ttsr import TTSRRunner

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


@dataclass
class Benchmark:
    """What to run: the dataset's samples, the protocol, the model (``None``: baseline) and
    the scale the LR inputs are made at (the model's)."""

    dataset: str
    protocol: str
    samples: list[Sample]
    upscaler: Runner | None = None
    scale: int = 4


@dataclass
class Report:
    """Per-image results, images skipped, and the means the papers report."""

    dataset: str
    protocol: str
    with_model: bool
    results: list[ImageResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def mean(self, metric: str) -> float | None:
        """Average of the per-image values (the original averages PSNR in dB, not MSE)."""
        values = [getattr(r, metric) for r in self.results]
        if not values or any(v is None for v in values):
            return None
        return float(np.mean(values))

    def to_dict(self) -> dict:
        """The ``--json`` document; non-finite numbers (identical images) become null."""
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "images": len(self.results),
            **{m: _finite(self.mean(m)) for m in METRICS},
            "per_image": [
                {k: _finite(v) if k != "name" else v for k, v in asdict(r).items()}
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
) -> Benchmark:
    """Resolve the dataset (downloading it if no folder is given) and list its samples for
    ``runner``'s model (any family; None: the bicubic baseline alone); every configuration
    problem surfaces here, before any image is run.  The LR inputs are made at the model's
    scale (x4 for the baseline alone)."""
    if protocol not in PROTOCOLS:
        raise TTSRError(f"unknown protocol '{protocol}' (use {' or '.join(PROTOCOLS)})")
    if limit is not None and limit < 1:
        raise TTSRError(f"--limit must be at least 1, got {limit}")
    info = dataset_info(dataset, data_dir)
    samples = list_samples(info, dataset_root(info, data_dir), ref_level)[:limit]
    if runner is None:
        return Benchmark(info.name, protocol, samples)
    return Benchmark(info.name, protocol, samples, runner, runner.descriptor.scale)


def run(
    benchmark: Benchmark,
    save_dir: Path | None = None,
    on_image: Callable[[ImageResult | Skipped], None] | None = None,
) -> Report:
    """Evaluate every sample; an unreadable image is skipped and recorded, the rest go on."""
    report = Report(benchmark.dataset, benchmark.protocol, benchmark.upscaler is not None)
    for sample in benchmark.samples:
        try:
            outcome: ImageResult | Skipped = evaluate_sample(sample, benchmark, save_dir)
            report.results.append(outcome)
        except InputError as exc:
            outcome = Skipped(sample.name, str(exc))
            report.skipped.append(outcome)
        if on_image is not None:
            on_image(outcome)
    return report


def evaluate_sample(sample: Sample, benchmark: Benchmark, save_dir: Path | None) -> ImageResult:
    """Score the baseline and (if any) the model on one ground-truth image."""
    image = read_rgb(sample.hr)
    with _naming(sample.hr):
        hr, lr, baseline = degrade(image, benchmark.scale)
        base = score(baseline, hr, benchmark.protocol, benchmark.scale)
    psnr = ssim = None
    sr = None
    if benchmark.upscaler is not None:
        sr = super_resolve(benchmark.upscaler, sample, lr)
        model = score(sr, hr, benchmark.protocol, benchmark.scale)
        psnr, ssim = model.psnr, model.ssim
    if save_dir is not None:
        save_outputs(save_dir, sample, baseline, sr)
    return ImageResult(sample.name, psnr, ssim, base.psnr, base.ssim)


def super_resolve(upscaler: Runner, sample: Sample, lr: np.ndarray) -> np.ndarray:
    """The model's output for ``lr``.  A TTSR searches all of the sample's references
    together (none: the LR is its own reference, the TTSR authors' protocol for Urban100);
    a model without a reference search ignores them."""
    if not isinstance(upscaler, TTSRRunner):
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


def save_outputs(
    save_dir: Path, sample: Sample, baseline: np.ndarray, sr: np.ndarray | None
) -> None:
    """``NAME_bicubic.png`` and, with a model, ``NAME_ttsr.png`` (each written atomically).
    A folder that cannot be written stops the run: every later image would fail the same way."""
    stem = Path(sample.name).stem
    outputs = {"bicubic": baseline, "ttsr": sr}
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
    writer.writerow(["name", *METRICS])
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
