"""One image file in, its results written: the upscaled image, and on request pictures of
what the network did (attention and texture-source maps, a comparison sheet).

Every file is written atomically (:mod:`ttsr_cli.atomic`), so an interrupted run never
leaves a truncated one.  A batch is a loop over :func:`upscale_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ttsr_cli.errors import InputError
from ttsr_cli.imageio import ImageData, output_format, read_image, to_8bit, write_image
from ttsr_cli.pictures import attention_picture, compare_sheet, most_used_region, source_picture
from ttsr_cli.pixels import resize_bicubic
from ttsr_cli.run.common import Runner, Upscaled

if TYPE_CHECKING:
    from ttsr_cli.priors import PriorMaps


@dataclass(frozen=True)
class UpscaleOptions:
    """What to write besides the upscaled image.

    ``outscale``: final scale (the model's result resized with Lanczos); ``attention_dir``:
    folder for ``STEM_attention.png`` and ``STEM_source.png`` (models with a reference
    search); ``compare``: ``STEM_compare.png`` beside the output; ``steps_dir``: folder for
    ``STEM_stepK_toolNN.png``, the image after each tool (RL-Restore); ``priors_dir``:
    folder for ``STEM_segmentation.png`` and ``STEM_prob_CLASS.png`` (SFT-GAN's priors);
    ``seg_maps``: SFT-GAN priors given as files (``--seg-maps``), read for each input.
    STEM is the output's, so runs to different outputs never overwrite each other's pictures.
    """

    outscale: float | None = None
    attention_dir: Path | None = None
    compare: bool = False
    steps_dir: Path | None = None
    priors_dir: Path | None = None
    seg_maps: PriorMaps | None = None


@dataclass(frozen=True)
class Written:
    """What :func:`upscale_file` wrote: the output's ``(width, height)``, the tile count,
    the choices the run made (``mode``, e.g. the search or attention used), the mean soft
    attention (TTSR) and what was probably not meant."""

    size: tuple[int, int]
    tiles: int
    mode: dict[str, Any]
    relevance: float | None = None
    warnings: tuple[str, ...] = ()


def upscale_file(
    runner: Runner,
    source: Path,
    destination: Path,
    references: Any = None,
    quality: int = 95,
    options: UpscaleOptions = UpscaleOptions(),
    reference_paths: Sequence[Path] = (),
) -> Written:
    """Upscale one image file into ``destination``, with the pictures ``options`` ask for.
    ``reference_paths``: the files ``references`` were encoded from (none: the image is its
    own reference), for the comparison sheet."""
    if destination.resolve() == source.resolve():
        raise InputError(f"{source}: refusing to overwrite the input with its own output")
    output_format(destination)
    image = read_image(source)
    if options.seg_maps is not None:
        scale = runner.descriptor.scale
        output_size = (image.size[0] * scale, image.size[1] * scale)
        references = options.seg_maps.read(source, output_size)
    sr, result = runner.upscale_image(image, references, options.outscale)
    write_image(destination, sr, quality)
    if options.attention_dir is not None and result.attention is not None:
        _write_maps(options.attention_dir, destination.stem, result, sr.size)
    if options.steps_dir is not None:
        _write_steps(options.steps_dir, destination.stem, image, result)
    if options.priors_dir is not None and result.priors is not None:
        from ttsr_cli.run.sftgan import prior_pictures

        for name, picture in prior_pictures(result.priors).items():
            _write_png(options.priors_dir / f"{destination.stem}_{name}.png", picture)
    if options.compare:
        scale = runner.descriptor.scale
        first = ("bicubic", _bicubic(image.rgb, scale)) if scale > 1 else ("input", image.rgb)
        panels = [first, (runner.descriptor.family, result.sr)]
        if runner.descriptor.takes_reference:
            window = _compare_reference(image.rgb, reference_paths, result, scale)
            panels.append(("reference", window))
        sheet = destination.with_name(f"{destination.stem}_compare.png")
        _write_png(sheet, compare_sheet(panels))
    return Written(sr.size, result.tiles, result.mode, result.relevance, tuple(result.warnings))


def _write_maps(folder: Path, stem: str, result: Upscaled, size: tuple[int, int]) -> None:
    assert result.attention is not None and result.source is not None
    _write_png(folder / f"{stem}_attention.png", attention_picture(result.attention, size))
    _write_png(folder / f"{stem}_source.png", source_picture(result.source, result.grids, size))


def _write_steps(folder: Path, stem: str, image: ImageData, result: Upscaled) -> None:
    """Each step's image at the input's depth, with its alpha, named by step and tool."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, (tool, step) in enumerate(
        zip(result.mode["tools"], result.steps, strict=True), start=1
    ):
        write_image(folder / f"{stem}_step{number}_tool{tool:02d}.png", replace(image, rgb=step))


def _bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    return resize_bicubic(lr, lr.shape[1] * scale, lr.shape[0] * scale)


def _compare_reference(
    lr: np.ndarray, paths: Sequence[Path], result: Upscaled, scale: int
) -> np.ndarray:
    """The reference window the hard attention used most, at the output's scale (the
    search's grid is at LR resolution, the references at ``scale`` x)."""
    assert result.source is not None
    number, top, left, height, width = most_used_region(result.source, result.grids)
    ref = read_image(paths[number]).rgb if paths else _bicubic(lr, scale)
    rows = slice(top * scale, (top + height) * scale)
    return ref[rows, left * scale : (left + width) * scale]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, ImageData(rgb=to_8bit(rgb)))
