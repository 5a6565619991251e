"""CSNLN checkpoints: recognise them, read the configuration off tensor shapes, load strictly.

The official loader is ``load_state_dict(..., strict=False)``: an x2 checkpoint fills an x4
model's shared layers and leaves the rest random, and a ``module.``-prefixed file loads
nothing, both without a word.  Here every such file is refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs import Family, StateDict, check_declared, load_strictly
from ttsr_cli.archs.csnln.model import CSNLN, RGB_MEAN, CSNLNConfig
from ttsr_cli.archs.descriptor import PRECISIONS, Descriptor, Tiling
from ttsr_cli.errors import TTSRError

_PREFIX = "module."
_HEAD = "head.0.0.weight"
_TAIL = "tail.0.weight"
_MATCH = "SEM.multi_source_projection.up_attention.conv_match_1.0.weight"
_DOWN_1 = "SEM.down_sample_1.0.weight"
_DOWN_2 = "SEM.down_sample_2.0.weight"
#: Layers only the x4 cell has (a second projection, straight LR <-> x4 layers).
_X4_ONLY = (
    "SEM.multi_source_projection_2.up_attention.conv_match_1.0.weight",
    "SEM.down_sample_3.0.weight",
    "SEM.down_sample_4.0.weight",
    "SEM.error_encode_2.0.weight",
)
#: Kernel side of ``SEM.down_sample_1`` at each scale (x4 has x2's).
_SCALE_OF_KERNEL = {6: 2, 9: 3}
_MARKERS = (_HEAD, _TAIL, _MATCH)


def detect(state: Mapping[str, torch.Tensor]) -> bool:
    """CSNLN's head, tail and cross-scale attention keys, bare or behind ``module.`` (which
    :func:`normalize` then refuses with a reason instead of "unknown network")."""
    return all(k in state for k in _MARKERS) or all(_PREFIX + k in state for k in _MARKERS)


def normalize(state: Mapping[str, torch.Tensor]) -> StateDict:
    """A plain dict of the tensors; a ``module.`` prefix is refused, not stripped: the official
    trainer never writes one, and the official loader silently loads nothing from it."""
    if any(key.startswith(_PREFIX) for key in state):
        raise TTSRError(
            "CSNLN checkpoint keys carry a 'module.' prefix (a DataParallel wrapper's save, "
            "not an official checkpoint, whose loader would load none of it): refused"
        )
    return dict(state)


def _shape(state: Mapping[str, torch.Tensor], key: str, dims: int) -> tuple[int, ...]:
    if key not in state:
        raise TTSRError(f"CSNLN checkpoint lacks {key}")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise TTSRError(f"CSNLN checkpoint {key} has shape {shape}, expected {dims} dimensions")
    return shape


def _scale(state: Mapping[str, torch.Tensor]) -> int:
    x4_layers = [key for key in _X4_ONLY if key in state]
    kernel = _shape(state, _DOWN_1, 4)[2]
    if x4_layers:
        if _DOWN_2 in state or len(x4_layers) != len(_X4_ONLY):
            raise TTSRError("CSNLN checkpoint mixes x4 layers with those of another scale")
        return 4
    if kernel not in _SCALE_OF_KERNEL:
        raise TTSRError(f"CSNLN checkpoint {_DOWN_1} has a {kernel}x{kernel} kernel: no scale")
    return _SCALE_OF_KERNEL[kernel]


def _rgb_range(state: Mapping[str, torch.Tensor]) -> float:
    """``sub_mean.bias`` is ``-rgb_range * RGB_MEAN``: the range the network was trained for."""
    bias = state.get("sub_mean.bias")
    if bias is None or bias.shape != (len(RGB_MEAN),):
        raise TTSRError("CSNLN checkpoint lacks a 3-value sub_mean.bias")
    ratios = [-float(b) / m for b, m in zip(bias.double().tolist(), RGB_MEAN, strict=True)]
    if not ratios[0] > 0 or max(ratios) - min(ratios) > 1e-4 * ratios[0]:
        raise TTSRError(f"CSNLN sub_mean.bias {bias.tolist()} is not -rgb_range * {RGB_MEAN}")
    return round(sum(ratios) / len(ratios), 4)


def infer_config(state: Mapping[str, torch.Tensor]) -> CSNLNConfig:
    """The configuration the tensor shapes describe, or one line saying what disagrees."""
    n_feats, n_colors = _shape(state, _HEAD, 4)[:2]
    tail_out, tail_in = _shape(state, _TAIL, 4)[:2]
    width = _shape(state, _MATCH, 4)[0]
    if tail_out != n_colors or tail_in % n_feats or width == 0 or n_feats % width:
        raise TTSRError(
            f"CSNLN checkpoint shapes disagree: {_HEAD} {n_feats}x{n_colors}, "
            f"{_TAIL} {tail_out}x{tail_in}, attention embedding width {width}"
        )
    try:
        return CSNLNConfig(
            scale=_scale(state),
            n_feats=n_feats,
            depth=tail_in // n_feats,
            n_colors=n_colors,
            rgb_range=_rgb_range(state),
            reduction=n_feats // width,
        )
    except ValueError as exc:
        raise TTSRError(f"CSNLN checkpoint: {exc}") from exc


def describe(model: CSNLN) -> Descriptor:
    """The facts the runner needs: global attention, sides a multiple of the attention factor."""
    config = model.config
    return Descriptor(
        family="csnln",
        config=config.to_dict(),
        scale=config.scale,
        takes_reference=False,
        size_multiple=config.size_multiple,
        dtypes=PRECISIONS,
        tiling=Tiling("global"),
        parameters=sum(p.numel() for p in model.parameters()),
    )


def build(state: StateDict, declared: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """The network the shapes describe, loaded strictly (declared configuration checked)."""
    config = infer_config(state)
    check_declared("CSNLN", declared, config.to_dict())
    model = CSNLN(config)
    name = f"CSNLN x{config.scale} (n_feats {config.n_feats}, depth {config.depth})"
    return load_strictly(model, state, name), describe(model)


def create(config: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """A freshly initialised network (PyTorch's default init, fixed mean shifts) to train."""
    try:
        model = CSNLN(CSNLNConfig.from_dict(config))
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"bad CSNLN configuration: {exc}") from exc
    return model, describe(model)


FAMILY = Family(
    name="csnln",
    summary="CSNLN (cross-scale non-local attention)",
    detect=detect,
    build=build,
    create=create,
    normalize=normalize,
    describe=lambda model: describe(model) if isinstance(model, CSNLN) else None,
)
