"""``ttsr evaluate --report DIR``: a picture of a benchmark run that a person can read.

``report.png`` draws one bar per image (the model's PSNR gain over the baseline, bicubic or
the damaged input, or the baseline's PSNR when no model ran); ``best.png`` and ``worst.png``
put the same texture-rich crop of the baseline, the model's result and the ground truth
side by side; ``index.html`` shows
them with the per-image table.  The two crops are recomputed for their images only.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ttsr_cli.atomic import atomic_path
from ttsr_cli.errors import TTSRError
from ttsr_cli.evaluate import Benchmark, ImageResult, Report, outputs_for
from ttsr_cli.imageio import write_rgb

CROP = 96  # ground-truth pixels on a side; shown at 2x
BAR_HEIGHT, BAR_GAP, LABEL_WIDTH, CHART_WIDTH = 14, 4, 160, 420


def gain(result: ImageResult) -> float:
    """What the chart shows: dB over the baseline with a model, else the baseline's PSNR."""
    if result.psnr is None:
        return result.bicubic_psnr
    return result.psnr - result.bicubic_psnr


def write_report(report: Report, benchmark: Benchmark, folder: Path) -> Path:
    """Write ``index.html`` and its pictures into ``folder``; returns the HTML path."""
    if not report.results:
        raise TTSRError("nothing to report: no image was evaluated")
    folder.mkdir(parents=True, exist_ok=True)
    write_rgb(folder / "report.png", bar_chart(report))
    ordered = sorted(report.results, key=gain)
    picks = {"best": ordered[-1], "worst": ordered[0]}
    index = {s.name: k for k, s in enumerate(benchmark.samples)}
    for label, result in picks.items():
        write_rgb(folder / f"{label}.png", comparison(benchmark, index[result.name]))
    page = folder / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text(_html(report, picks), encoding="utf-8")
    return page


def bar_chart(report: Report) -> np.ndarray:
    """One horizontal bar per image, zero line in the middle when gains can be negative."""
    values = [gain(r) for r in report.results]
    height = len(values) * (BAR_HEIGHT + BAR_GAP) + 2 * BAR_GAP
    image = Image.new("RGB", (LABEL_WIDTH + CHART_WIDTH + 80, height), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(0.0, *values), max(0.0, *values)
    span = (high - low) or 1.0
    zero = LABEL_WIDTH + int((0 - low) / span * CHART_WIDTH)
    for i, (result, value) in enumerate(zip(report.results, values, strict=True)):
        top = BAR_GAP + i * (BAR_HEIGHT + BAR_GAP)
        end = LABEL_WIDTH + int((value - low) / span * CHART_WIDTH)
        colour = (46, 139, 87) if value >= 0 else (200, 60, 60)
        draw.rectangle([min(zero, end), top, max(zero, end), top + BAR_HEIGHT], fill=colour)
        draw.text((4, top), result.name[:24], fill="black")
        draw.text((LABEL_WIDTH + CHART_WIDTH + 6, top), f"{value:+.2f}", fill="black")
    draw.line([zero, 0, zero, height], fill="black")
    return np.asarray(image)


def comparison(benchmark: Benchmark, index: int) -> np.ndarray:
    """baseline | model | ground truth for the ``index``-th sample, made as it was scored
    (damaged with ``--degrade``), cropped where the ground truth has most texture."""
    hr, baseline, sr = outputs_for(benchmark.samples[index], benchmark, index)
    panels = [baseline, *([] if sr is None else [sr]), hr]
    y, x = textured_window(hr, CROP)
    crops = [Image.fromarray(p[y : y + CROP, x : x + CROP]) for p in panels]
    side = 2 * min(CROP, *hr.shape[:2])
    sheet = Image.new("RGB", (len(crops) * (side + 4), side + 16), "white")
    names = [benchmark.baseline, *(["ttsr"] if sr is not None else []), "ground truth"]
    draw = ImageDraw.Draw(sheet)
    for i, (crop, name) in enumerate(zip(crops, names, strict=True)):
        sheet.paste(crop.resize((side, side), Image.NEAREST), (i * (side + 4), 16))
        draw.text((i * (side + 4) + 2, 2), name, fill="black")
    return np.asarray(sheet)


def textured_window(image: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window with the most gradient energy (coarse grid)."""
    grey = image.astype(np.float32).mean(axis=2)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    h, w = energy.shape
    size = min(size, h, w)
    best, corner = -1.0, (0, 0)
    step = max(1, size // 4)
    for y in range(0, h - size + 1, step):
        for x in range(0, w - size + 1, step):
            total = float(energy[y : y + size, x : x + size].sum())
            if total > best:
                best, corner = total, (y, x)
    return corner


def _html(report: Report, picks: dict[str, ImageResult]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r.name)}</td><td>{_num(r.psnr, 3)}</td><td>{_num(r.ssim, 4)}</td>"
        f"<td>{r.bicubic_psnr:.3f}</td><td>{r.bicubic_ssim:.4f}</td></tr>"
        for r in report.results
    )
    shown = "".join(
        f"<h2>{label}: {html.escape(r.name)} ({gain(r):+.2f})</h2><img src='{label}.png'>"
        for label, r in picks.items()
    )
    title = html.escape(f"{report.dataset}, {report.protocol} protocol")
    base = html.escape(report.baseline)
    return (
        f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"
        f"<p>{len(report.results)} images; mean PSNR {_num(report.mean('psnr'), 3)} "
        f"({base} {report.mean('bicubic_psnr'):.3f}), SSIM {_num(report.mean('ssim'), 4)} "
        f"({base} {report.mean('bicubic_ssim'):.4f})</p><img src='report.png'>{shown}"
        f"<table border=1><tr><th>image</th><th>PSNR</th><th>SSIM</th><th>{base} PSNR</th>"
        f"<th>{base} SSIM</th></tr>{rows}</table>"
    )


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
