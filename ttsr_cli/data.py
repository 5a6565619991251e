"""Benchmark datasets: where the images are and which references go with each.

The LR inputs are made from the ground truth by :func:`ttsr_cli.pixels.degrade`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ttsr_cli.errors import TTSRError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
CUFED5_LEVELS = 5

#: How a dataset pairs inputs with references.  ``self``: the input is its own reference
#: (LR up x4), as the TTSR authors evaluate benchmarks that have none; ``cufed5``:
#: ``NNN_0`` input with ``NNN_1`` .. ``NNN_5`` references; ``sun80``: a folder of web
#: references per input when present, else ``self``.
ReferencePolicy = Literal["self", "cufed5", "sun80"]


@dataclass(frozen=True)
class DatasetInfo:
    """A named benchmark: its Hub dataset repository and how references are found."""

    name: str
    hub_repo: str
    references: ReferencePolicy


#: Hub repository ids are placeholders until the project publishes its benchmark copies;
#: ``--data-dir`` works for every name today.
REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("set5", "ttsr-cli/benchmark-set5", "self"),
        DatasetInfo("set14", "ttsr-cli/benchmark-set14", "self"),
        DatasetInfo("bsd68", "ttsr-cli/benchmark-bsd68", "self"),
        DatasetInfo("bsd100", "ttsr-cli/benchmark-bsd100", "self"),
        DatasetInfo("urban100", "ttsr-cli/benchmark-urban100", "self"),
        DatasetInfo("manga109", "ttsr-cli/benchmark-manga109", "self"),
        DatasetInfo("sun80", "ttsr-cli/benchmark-sun80", "sun80"),
        DatasetInfo("cufed5", "ttsr-cli/benchmark-cufed5", "cufed5"),
    )
}


@dataclass(frozen=True)
class Sample:
    """One ground-truth image and the reference files to search (none: self-reference).

    ``problem`` says why its references cannot be used (reported for this image alone,
    only when a model needs them: the bicubic baseline does not).
    """

    name: str
    hr: Path
    references: tuple[Path, ...] = ()
    problem: str | None = None


def dataset_info(name: str, data_dir: Path | None) -> DatasetInfo:
    """The registry entry for ``name``; any other name is a plain folder (self-reference),
    which only makes sense with ``data_dir``."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    if data_dir is None:
        known = ", ".join(REGISTRY)
        raise TTSRError(f"unknown dataset '{name}' (known: {known}; or give --data-dir)")
    return DatasetInfo(name, "", "self")


def folder_info(root: Path) -> DatasetInfo:
    """A local folder as a dataset: the CUFED5 test layout (``NNN_0.png`` inputs beside
    ``NNN_1.png`` references) when it has one, else a folder of HR images (self-reference)."""
    inputs = list(root.glob("*_0.png"))
    if any(p.with_name(p.name[: -len("_0.png")] + "_1.png").exists() for p in inputs):
        return DatasetInfo(root.name, "", "cufed5")
    return DatasetInfo(root.name, "", "self")


def dataset_root(info: DatasetInfo, data_dir: Path | None) -> Path:
    """``data_dir`` when given, else the dataset's snapshot in the Hugging Face cache
    (downloaded on first use)."""
    if data_dir is not None:
        if not data_dir.is_dir():
            raise TTSRError(f"{data_dir}: dataset folder not found")
        return data_dir
    return download(info)


def download(info: DatasetInfo) -> Path:
    """Fetch (or reuse from the HF cache) the dataset's Hub repository; one-line failure."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=info.hub_repo, repo_type="dataset"))
    except Exception as exc:  # offline, missing repository, or a malformed answer: all the same
        lines = str(exc).strip().splitlines()
        reason = lines[0][:200] if lines else type(exc).__name__
        raise TTSRError(
            f"dataset {info.name}: cannot get {info.hub_repo} from the Hugging Face Hub "
            f"({reason}); download it yourself and pass --data-dir"
        ) from None


def list_samples(info: DatasetInfo, root: Path, ref_level: str = "1") -> list[Sample]:
    """Every input of the dataset under ``root`` with its references, sorted by name.

    ``ref_level``: ``1``..``5`` or ``all`` (CUFED5 similarity levels; for Sun80 web
    references, the n-th in name order).  Self-reference datasets ignore it.
    """
    level = parse_ref_level(ref_level)
    if info.references == "cufed5":
        samples = _cufed5_samples(root, level)
    elif info.references == "sun80":
        samples = _sun80_samples(root, level)
    else:
        samples = [Sample(p.name, p) for p in image_files(root)]
    if not samples:
        raise TTSRError(f"{root}: no {info.name} images found")
    return samples


def parse_ref_level(text: str) -> int | None:
    """``'1'``..``'5'`` -> that level; ``'all'`` -> ``None`` (every reference together)."""
    value = text.strip().lower()
    if value == "all":
        return None
    if value.isdigit() and 1 <= int(value) <= CUFED5_LEVELS:
        return int(value)
    raise TTSRError(f"--ref-level must be 1..{CUFED5_LEVELS} or all, got '{text}'")


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` by extension, hidden files skipped, name order."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


_CUFED5_NAME = re.compile(r"^(?P<id>.+)_(?P<level>\d)$")


def _cufed5_samples(root: Path, level: int | None) -> list[Sample]:
    """CUFED5: ``NNN_0.png`` is the input, ``NNN_k.png`` its level-k reference."""
    by_id: dict[str, dict[int, Path]] = {}
    for path in image_files(root):
        match = _CUFED5_NAME.match(path.stem)
        if match:
            by_id.setdefault(match["id"], {})[int(match["level"])] = path
    levels = range(1, CUFED5_LEVELS + 1) if level is None else (level,)
    samples = []
    for key, files in sorted(by_id.items()):
        if 0 not in files:
            continue
        missing = [str(k) for k in levels if k not in files]
        problem = f"no level {', '.join(missing)} reference ({key}_N.*)" if missing else None
        refs = tuple(files[k] for k in levels if k in files)
        samples.append(Sample(key, files[0], refs, problem))
    return samples


#: The Sun-Hays release used by RefSR papers: ground truth in one folder, ~20 web
#: references per image in a folder named after it.
SUN_HAYS_INPUTS = "Sun_Hays_SR_groundtruth"
SUN_HAYS_REFS = "Sun_Hays_SR_scenematches"


def _sun80_samples(root: Path, level: int | None) -> list[Sample]:
    """Sun80 with whatever references it has.  Layouts, first match wins:
    ``Sun_Hays_SR_groundtruth/X.jpg`` + ``Sun_Hays_SR_scenematches/X/*``; ``X.jpg`` +
    ``refs/X/*``; ``X.jpg`` + ``X_ref.jpg``, ``X_ref1.jpg``, ... beside it.  An image with
    no references is its own reference."""
    if (root / SUN_HAYS_INPUTS).is_dir():
        inputs = image_files(root / SUN_HAYS_INPUTS)
        return [_sun80_sample(p, root / SUN_HAYS_REFS / p.stem, [], level) for p in inputs]
    files = image_files(root)
    beside = _references_beside(files)
    taken = {ref for refs in beside.values() for ref in refs}
    inputs = [p for p in files if p not in taken]
    return [_sun80_sample(p, root / "refs" / p.stem, beside.get(p.stem, []), level) for p in inputs]


_REF_NAME = re.compile(r"^(?P<owner>.+)_ref\d*$")


def _references_beside(files: list[Path]) -> dict[str, list[Path]]:
    """``X_ref*`` files grouped by ``X``, only where ``X`` is itself an image in the folder
    (so that a scene called ``oil_refinery`` stays an input)."""
    stems = {p.stem for p in files}
    grouped: dict[str, list[Path]] = {}
    for path in files:
        match = _REF_NAME.match(path.stem)
        if match and match["owner"] in stems:
            grouped.setdefault(match["owner"], []).append(path)
    return grouped


def _sun80_sample(path: Path, folder: Path, beside: list[Path], level: int | None) -> Sample:
    refs = image_files(folder) if folder.is_dir() else beside
    return _with_level(Sample(path.name, path, tuple(refs)), level)


def _with_level(sample: Sample, level: int | None) -> Sample:
    """Keep the ``level``-th reference (all for ``None``); self-reference stays as it is."""
    refs = sample.references
    if not refs or level is None:
        return sample
    if level > len(refs):
        return replace(sample, references=(), problem=f"has {len(refs)} references, no #{level}")
    return replace(sample, references=(refs[level - 1],))
