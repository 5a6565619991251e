"""Weights files in and out, for every network family.

Three formats are read:

* PyTorch ``.pt``/``.pth`` state dicts as the authors' trainers save them, possibly wrapped one
  level down (``state_dict``, ``model``, ``params``, ``params_ema``), always read with
  ``torch.load(weights_only=True)``: no code inside a file is ever run;
* our own ``.safetensors``, whose metadata names the family (``arch``) and carries the
  configuration (``config``);
* the RL-Restore authors' TensorFlow checkpoints, a folder holding ``toolbox/`` (``tool01``
  .. ``tool12``) and ``models/`` (the agent) as in their repository, read by
  :mod:`ttsr_cli.tfcheckpoint` without TensorFlow.

Which network a file holds is recognised from its keys (:func:`ttsr_cli.archs.detect`) and
its configuration read off tensor shapes, so no flags are needed; loading is strict.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ttsr_cli import archs
from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.atomic import atomic_path
from ttsr_cli.errors import TTSRError, first_line
from ttsr_cli.tfcheckpoint import checkpoint_prefix, read_bundle

StateDict = dict[str, torch.Tensor]

METADATA_FORMAT = "ttsr"
_WRAPPER_KEYS = ("state_dict", "model", "params", "params_ema")
#: Extensions of files that hold pictures, not weights: named in the error instead of a
#: decoder's complaint about their bytes.
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
#: First bytes of PyTorch's two formats: a zip archive, and the legacy pickle (protocol >= 2).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
#: What a checkpoint of tensors imports when unpickled; anything else is code or objects.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict")
#: A tool checkpoint's index file in the authors' ``toolbox/``.
_TOOL_INDEX = re.compile(r"tool(\d+)\.index")


def read_checkpoint(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of a ``.pt``/``.pth`` or ``.safetensors`` file, keys as stored,
    or of the RL-Restore authors' TensorFlow folder, keys mapped to ours."""
    if path.is_dir():
        from ttsr_cli.archs.rlrestore.load import from_tensorflow

        try:
            return from_tensorflow(_read_tensorflow_folder(path)), {"arch": "rl-restore"}
        except TTSRError as exc:
            message = str(exc)
            raise TTSRError(message if str(path) in message else f"{path}: {message}") from None
    if not path.is_file():
        raise TTSRError(f"{path}: weights file not found")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        raise TTSRError(f"{path}: an image, not a weights file (.pt, .pth or .safetensors)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            return {k: fh.get_tensor(k) for k in fh.keys()}, metadata  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TTSRError(
            f"{path}: not a safetensors file, or a truncated or damaged one ({first_line(exc)})"
        ) from None


def _read_tensorflow_folder(folder: Path) -> dict[str, np.ndarray]:
    """Every variable of the authors' checkpoints: tools keyed ``toolNN/<TF name>`` (they
    all share TF names), the agent's by their TF names."""
    toolbox, agent = folder / "toolbox", folder / "models"
    missing = [name for name in ("toolbox", "models") if not (folder / name).is_dir()]
    if missing:
        raise TTSRError(
            f"{folder}: not an RL-Restore checkpoint folder (no {' or '.join(missing)}/ in it; "
            "expected toolbox/tool01..tool12 and models/ as in the authors' repository)"
        )
    tools = sorted(
        (int(match.group(1)), path)
        for path in toolbox.iterdir()
        if (match := _TOOL_INDEX.fullmatch(path.name))
    )
    if not tools:
        raise TTSRError(f"{toolbox}: no tool checkpoints (tool01.index, ...) in it")
    numbers = [number for number, _ in tools]
    if numbers != list(range(1, len(numbers) + 1)):
        raise TTSRError(f"{toolbox}: tools are not numbered 1..{len(numbers)}: {numbers}")
    variables: dict[str, np.ndarray] = {}
    for number, index in tools:
        for name, value in read_bundle(index.with_suffix("")).items():
            variables[f"tool{number:02d}/{name}"] = value
    variables.update(read_bundle(checkpoint_prefix(agent)))
    return variables


def _pickled_globals(path: Path) -> list[str]:
    """The names the pickles in ``path`` would import, read as opcodes and never run (the
    legacy format is several pickles in a row; a zip holds one, ``data.pkl``)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(pickles[0]) if pickles else b""
    else:
        data = path.read_bytes()
    stream = io.BytesIO(data)
    names: list[str] = []
    strings: list[str] = []
    try:
        while stream.tell() < len(data):
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError):  # damaged bytes: what was read so far is what we know
        pass
    return names


def _check_torch_container(path: Path) -> None:
    """Name what a ``.pt`` that is not one is, in words, before ``torch.load`` complains in
    its own: PyTorch writes a zip archive (since 1.6) or, before, a pickle."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise TTSRError(f"{path}: a truncated PyTorch checkpoint (its zip index is missing)")
        return
    if not head.startswith(_PICKLE_MAGIC):
        raise TTSRError(
            f"{path}: not a weights file (neither a PyTorch checkpoint nor safetensors)"
        )


def _read_torch(path: Path) -> tuple[StateDict, dict[str, str]]:
    """The tensors, and as metadata the ``config`` (and ``arch``) that ``ttsr train``
    checkpoints carry beside their ``model`` (what shapes cannot tell, e.g. ``global_skip``)."""
    _check_torch_container(path)
    try:
        with warnings.catch_warnings():  # its notes on pickle protocols are not the user's
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = [name for name in _pickled_globals(path) if not name.startswith(_TENSOR_GLOBALS)]
        if foreign:
            raise TTSRError(
                f"{path}: refused: it holds Python code or objects ({', '.join(foreign[:3])}), "
                "which are never unpickled; a weights file holds tensors only"
            ) from None
        raise TTSRError(f"{path}: a damaged PyTorch checkpoint ({first_line(exc)})") from None
    except Exception as exc:  # damaged bytes make torch.load raise almost anything
        raise TTSRError(f"{path}: a damaged PyTorch checkpoint ({first_line(exc)})") from None
    if not isinstance(obj, Mapping):
        raise TTSRError(f"{path}: expected a state dict, found {type(obj).__name__}")
    metadata = {}
    if isinstance(obj.get("config"), Mapping):
        metadata["config"] = json.dumps(obj["config"])
    if isinstance(obj.get("arch"), str):
        metadata["arch"] = obj["arch"]
    for key in _WRAPPER_KEYS:  # trainers that wrap the state dict one level down
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise TTSRError(f"{path}: contains no tensors")
    return tensors, metadata


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """``arch`` and the parsed ``config`` of a file's metadata (either may be absent)."""
    parsed: dict[str, Any] = {}
    if "arch" in metadata:
        parsed["arch"] = metadata["arch"]
    if "config" in metadata:
        try:
            parsed["config"] = json.loads(metadata["config"])
        except json.JSONDecodeError:
            raise TTSRError("weights metadata 'config' is not valid JSON") from None
    return parsed


def load(path: str | Path, expect: str | None = None) -> tuple[nn.Module, Descriptor]:
    """The network in a weights file of any family, loaded strictly, on the CPU, in eval
    mode, with its descriptor.  ``expect`` names the family the caller needs."""
    path = Path(path)
    state, metadata = read_checkpoint(path)
    try:
        return archs.load(state, parse_metadata(metadata), expect)
    except TTSRError as exc:
        raise TTSRError(f"{path}: {exc}") from None


def save_safetensors(
    model: nn.Module, path: str | Path, extra: Mapping[str, str] | None = None
) -> None:
    """Write our format: contiguous tensors, the family and the configuration in the metadata."""
    descriptor = archs.describe(model)
    metadata = {"arch": descriptor.family, "config": json.dumps(descriptor.config)}
    save_tensors(model, path, {**metadata, **(extra or {})})


def save_tensors(model: nn.Module, path: str | Path, metadata: Mapping[str, str]) -> None:
    """``model``'s state as safetensors with our format marker and ``metadata``, atomically
    (also for networks of no family, such as SFT-GAN's segmentation network)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": METADATA_FORMAT, **metadata})
