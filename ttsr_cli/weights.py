"""Reading and writing TTSR checkpoints.

Two formats are read:

* the original trainer's ``.pt`` (``TTSR.pt``, ``TTSR-rec.pt``): a flat state dict, possibly
  saved from ``DataParallel`` (``module.`` prefix) or with the transferal-perceptual copy of
  the LTE (``LTE_copy.*``, dropped); always read with ``torch.load(weights_only=True)``;
* our own ``.safetensors``, whose metadata carries the configuration.

The configuration is inferred from tensor shapes (as spandrel does), so no flags are needed;
metadata only adds what shapes cannot tell (``res_scale``, ``global_skip``).  Loading is
strict.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ttsr_cli.atomic import atomic_path
from ttsr_cli.errors import TTSRError
from ttsr_cli.nn import TTSR, TTSRConfig

StateDict = dict[str, torch.Tensor]

METADATA_FORMAT = "ttsr"
_IGNORED_PREFIXES = ("LTE_copy.",)
_WRAPPER_KEYS = ("state_dict", "model", "params", "params_ema")
_STAGES = ("MainNet.SFE.RBs", "MainNet.RB11", "MainNet.RB21", "MainNet.RB31")


def read_checkpoint(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of a ``.pt``/``.pth`` or ``.safetensors`` file, keys normalised."""
    if not path.is_file():
        raise TTSRError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path)
    else:
        tensors, metadata = _read_torch(path)
    return normalize_keys(tensors), metadata


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            return {k: fh.get_tensor(k) for k in fh.keys()}, metadata  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TTSRError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def _read_torch(path: Path) -> tuple[StateDict, dict[str, str]]:
    """The tensors, and as metadata the ``config`` that ``ttsr train`` checkpoints carry beside
    their ``model`` (it holds what shapes cannot tell, e.g. ``global_skip``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TTSRError(
            f"{path}: not a PyTorch checkpoint of plain tensors (damaged, or it holds other "
            "objects, which are never unpickled)"
        ) from None
    except Exception as exc:  # arbitrary bytes make torch.load raise almost anything
        raise TTSRError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    if not isinstance(obj, Mapping):
        raise TTSRError(f"{path}: expected a state dict, found {type(obj).__name__}")
    config = obj.get("config")
    metadata = {"config": json.dumps(config)} if isinstance(config, Mapping) else {}
    for key in _WRAPPER_KEYS:  # trainers that wrap the state dict one level down
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise TTSRError(f"{path}: contains no tensors")
    return tensors, metadata


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def normalize_keys(tensors: Mapping[str, torch.Tensor]) -> StateDict:
    """Strip ``module.`` prefixes and drop the LTE copy the original keeps for its loss."""
    out: StateDict = {}
    for key, value in tensors.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(_IGNORED_PREFIXES):
            continue
        out[key] = value
    return out


def infer_config(
    state: Mapping[str, torch.Tensor], res_scale: float = 1.0, global_skip: bool = False
) -> TTSRConfig:
    """Architecture from tensor shapes: feature width, blocks per stage and LTE widths; the
    rest (which shapes cannot show) as given."""
    try:
        n_feats = state["MainNet.SFE.conv_head.weight"].shape[0]
        widths = (
            state["LTE.slice1.0.weight"].shape[0],
            state["LTE.slice2.5.weight"].shape[0],
            state["LTE.slice3.10.weight"].shape[0],
        )
    except KeyError as exc:
        raise TTSRError(f"not a TTSR checkpoint: no {exc.args[0]}") from None
    blocks = tuple(_count_blocks(state, stage) for stage in _STAGES)
    try:
        return TTSRConfig(n_feats, blocks, res_scale, widths, global_skip)
    except ValueError as exc:
        raise TTSRError(f"unsupported TTSR configuration: {exc}") from None


def _count_blocks(state: Mapping[str, torch.Tensor], stage: str) -> int:
    pattern = re.compile(re.escape(stage) + r"\.(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def config_from_metadata(metadata: Mapping[str, str]) -> dict:
    if "config" not in metadata:
        return {}
    try:
        return json.loads(metadata["config"])
    except json.JSONDecodeError:
        raise TTSRError("weights metadata 'config' is not valid JSON") from None


def build_model(state: StateDict, metadata: Mapping[str, str] | None = None) -> TTSR:
    """A TTSR model with ``state`` loaded strictly; configuration inferred from shapes."""
    declared = config_from_metadata(metadata or {})
    config = infer_config(
        state,
        res_scale=float(declared.get("res_scale", 1.0)),
        global_skip=bool(declared.get("global_skip", False)),
    )
    if declared:
        try:
            stated = TTSRConfig.from_dict(declared)
        except (TypeError, ValueError) as exc:
            raise TTSRError(f"weights metadata has an invalid configuration: {exc}") from None
        if stated != config:
            raise TTSRError(f"weights metadata says {stated} but tensors say {config}")
    model = TTSR(config)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Fail with one line naming missing, unexpected or mis-shaped tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise TTSRError("checkpoint does not fit TTSR: " + "; ".join(problems))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> TTSR:
    """Load a checkpoint in either format, ready for inference on ``device``."""
    path = Path(path)
    state, metadata = read_checkpoint(path)
    try:
        model = build_model(state, metadata)
    except TTSRError as exc:
        raise TTSRError(f"{path}: {exc}") from None
    return model.to(device)


def save_safetensors(model: TTSR, path: str | Path, extra: Mapping[str, str] | None = None) -> None:
    """Write our format: contiguous tensors plus the configuration in the metadata."""
    metadata = {"format": METADATA_FORMAT, "config": json.dumps(model.config.to_dict())}
    metadata.update(extra or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
