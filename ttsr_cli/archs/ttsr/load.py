"""Recognising and loading TTSR state dicts.

The original trainer's ``.pt`` files (``TTSR.pt``, ``TTSR-rec.pt``) are flat state dicts,
possibly saved from ``DataParallel`` (``module.`` prefix) and with the transferal-perceptual
loss's copy of the LTE (``LTE_copy.*``), both dropped here.  The configuration is read off
tensor shapes; metadata adds only what shapes cannot tell (``res_scale``, ``global_skip``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs import Family, StateDict, load_strictly
from ttsr_cli.archs.descriptor import Descriptor, Tiling
from ttsr_cli.archs.ttsr.model import SCALE, TTSR, TTSRConfig
from ttsr_cli.errors import TTSRError

#: A key only TTSR has (behind any ``module.`` prefixes).
_SIGNATURE = "MainNet.SFE.conv_head.weight"
_IGNORED_PREFIXES = ("LTE_copy.",)
_STAGES = ("MainNet.SFE.RBs", "MainNet.RB11", "MainNet.RB21", "MainNet.RB31")
#: LR pixels a tile reads beyond its core in the pass that sees furthest (the 1x/2x stages);
#: tiled output matches untiled to above 45 dB PSNR with it.
TILE_REACH = 32


def detect(state: Mapping[str, torch.Tensor]) -> bool:
    return any(_strip(key) == _SIGNATURE for key in state)


def normalize(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Strip ``module.`` prefixes and drop the LTE copy the original keeps for its loss."""
    out: StateDict = {}
    for key, value in state.items():
        key = _strip(key)
        if not key.startswith(_IGNORED_PREFIXES):
            out[key] = value
    return out


def _strip(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def infer_config(
    state: Mapping[str, torch.Tensor], res_scale: float = 1.0, global_skip: bool = False
) -> TTSRConfig:
    """Architecture from tensor shapes: feature width, blocks per stage and LTE widths; the
    rest (which shapes cannot show) as given."""
    try:
        n_feats = state[_SIGNATURE].shape[0]
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


def build(state: StateDict, declared: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """A TTSR with ``state`` loaded strictly; the configuration read off the shapes must
    agree with what the file's metadata declares."""
    config = infer_config(
        state,
        res_scale=float(declared.get("res_scale", 1.0)),
        global_skip=bool(declared.get("global_skip", False)),
    )
    if declared:
        try:
            stated = TTSRConfig.from_dict(dict(declared))
        except (TypeError, ValueError) as exc:
            raise TTSRError(f"weights metadata has an invalid configuration: {exc}") from None
        if stated != config:
            raise TTSRError(f"weights metadata says {stated} but tensors say {config}")
    model = TTSR(config)
    return load_strictly(model, state, "TTSR"), describe_config(config, model)


def create(config: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """A freshly initialised TTSR (for training) and its descriptor."""
    try:
        parsed = TTSRConfig.from_dict(dict(config))
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"invalid TTSR configuration: {exc}") from None
    model = TTSR(parsed)
    return model, describe_config(parsed, model)


def describe(model: nn.Module) -> Descriptor | None:
    return describe_config(model.config, model) if isinstance(model, TTSR) else None


def describe_config(config: TTSRConfig, model: nn.Module) -> Descriptor:
    return Descriptor(
        family="ttsr",
        config=config.to_dict(),
        scale=SCALE,
        takes_reference=True,
        tiling=Tiling("local", TILE_REACH),
        parameters=sum(p.numel() for p in model.parameters()),
    )


FAMILY = Family(
    name="ttsr",
    summary="TTSR (reference-based, x4)",
    detect=detect,
    build=build,
    create=create,
    normalize=normalize,
    describe=describe,
)
