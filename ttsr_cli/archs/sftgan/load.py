"""SFT-GAN checkpoints: recognise the generators and the segmentation network by their keys,
read the configuration off tensor shapes, load strictly.

The family (``FAMILY``) is the generator, in either published layout.  The segmentation
network is a separate file that the generator needs beside it, loaded by
:func:`load_segmentation`; the family still recognises it, so that a segmentation file given
where a generator is expected is refused in one line saying what it is, not "unknown network".

A ``module.`` prefix (a ``DataParallel`` wrapper's save) is stripped, unlike CSNLN's: the
official test code loads strictly, so the prefix can never make a file load partially there,
and here every key is still checked strictly after stripping; the tensors are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs import Family, StateDict, check_declared, load_strictly
from ttsr_cli.archs.descriptor import PRECISIONS, Descriptor, Tiling
from ttsr_cli.archs.sftgan.condition import HIDDEN_LAYERS
from ttsr_cli.archs.sftgan.generator import SCALE, SFTGAN, SFTGANConfig
from ttsr_cli.archs.sftgan.segmentation import STRIDE, OutdoorSceneSeg
from ttsr_cli.errors import TTSRError

_PREFIX = "module."
_CONV0 = "conv0.weight"
_COND_FIRST = "CondNet.0.weight"
_COND_LAST = f"CondNet.{2 * (HIDDEN_LAYERS + 1)}.weight"
_GENERATOR_MARKERS = (_CONV0, "sft_branch.0.sft0.SFT_scale_conv0.weight", _COND_FIRST)
_SEGMENTATION_MARKERS = ("feature.0.weight", "feature.47.weight", "deconv.weight")
#: The first up-sampling conv of each layout: conv then pixel shuffle, or nearest then conv.
_UPSAMPLING_KEY = {"pytorch": "HR_branch.0.weight", "torch": "HR_branch.1.weight"}
_BATCHES_TRACKED = ".num_batches_tracked"
#: What :attr:`Descriptor.prior` says an SFT-GAN takes: OutdoorSceneSeg's class
#: probabilities at the output size.
PRIOR = "outdoor-scene-seg"


def _strip(key: str) -> str:
    while key.startswith(_PREFIX):
        key = key[len(_PREFIX) :]
    return key


def normalize(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The tensors with any ``module.`` prefix stripped (see the module docstring)."""
    return {_strip(key): value for key, value in state.items()}


def _has(state: Mapping[str, torch.Tensor], markers: tuple[str, ...]) -> bool:
    keys = {_strip(key) for key in state}
    return all(marker in keys for marker in markers)


def is_generator(state: Mapping[str, torch.Tensor]) -> bool:
    """The generator's first conv, first SFT layer and condition network."""
    return _has(state, _GENERATOR_MARKERS)


def is_segmentation(state: Mapping[str, torch.Tensor]) -> bool:
    """OutdoorSceneSeg's first conv, classifier and transposed convolution."""
    return _has(state, _SEGMENTATION_MARKERS)


def detect(state: Mapping[str, torch.Tensor]) -> bool:
    """A generator, or the segmentation network (which :func:`build` then refuses by name)."""
    return is_generator(state) or is_segmentation(state)


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise TTSRError(f"SFT-GAN checkpoint lacks {key}")
    shape = tuple(state[key].shape)
    if len(shape) != 4:
        raise TTSRError(f"SFT-GAN checkpoint {key} has shape {shape}, expected a conv weight")
    return shape


def _variant(state: Mapping[str, torch.Tensor]) -> str:
    """The layout, from which up-sampling conv keys are present (never from a file name)."""
    found = [variant for variant, key in _UPSAMPLING_KEY.items() if key in state]
    if len(found) != 1:
        said = "both" if found else "neither"
        keys = " and ".join(_UPSAMPLING_KEY.values())
        raise TTSRError(f"SFT-GAN checkpoint has {said} of {keys}: not a known layout")
    return found[0]


def infer_config(state: Mapping[str, torch.Tensor]) -> SFTGANConfig:
    """The configuration the keys and shapes describe, or one line saying what disagrees."""
    channels, colours = _shape(state, _CONV0)[:2]
    hidden, classes, kernel = _shape(state, _COND_FIRST)[:3]
    cond_channels = _shape(state, _COND_LAST)[0]
    blocks = 0
    while f"sft_branch.{blocks}.sft0.SFT_scale_conv0.weight" in state:
        blocks += 1
    if colours != 3 or kernel != SCALE:
        raise TTSRError(
            f"SFT-GAN checkpoint {_CONV0} takes {colours} channels and {_COND_FIRST} has a "
            f"{kernel}x{kernel} kernel (expected RGB and {SCALE}x{SCALE})"
        )
    try:
        return SFTGANConfig(_variant(state), blocks, channels, cond_channels, hidden, classes)
    except ValueError as exc:
        raise TTSRError(f"SFT-GAN checkpoint: {exc}") from None


def describe(model: SFTGAN) -> Descriptor:
    """x4, no reference but a prior; local (every SFT layer is per pixel, the convs 3x3).

    LR sides must be even: the prior is the segmentation of the 4x image, whose output is
    ``8 * ceil(side / 8)``, which is 4x the LR side only for even sides."""
    config = model.config
    return Descriptor(
        family="sftgan",
        config=config.to_dict(),
        scale=SCALE,
        takes_reference=False,
        size_multiple=STRIDE // SCALE,
        dtypes=PRECISIONS,
        tiling=Tiling("local", reach=config.reach),
        parameters=sum(p.numel() for p in model.parameters()),
        prior=PRIOR,
    )


def build(state: StateDict, declared: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """The generator the shapes describe, loaded strictly (declared configuration checked);
    the segmentation network is refused by name (:func:`load_segmentation` loads it)."""
    if is_segmentation(state) and not is_generator(state):
        raise TTSRError(
            "this is SFT-GAN's OutdoorSceneSeg segmentation network (it makes the priors), "
            "not an SFT-GAN generator"
        )
    config = infer_config(state)
    check_declared("SFT-GAN", declared, config.to_dict())
    model = SFTGAN(config)
    name = f"SFT-GAN ({config.variant} layout, {config.num_blocks} blocks)"
    return load_strictly(model, state, name), describe(model)


def create(config: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """A freshly initialised generator (PyTorch's default init)."""
    try:
        model = SFTGAN(SFTGANConfig.from_dict(config))
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"bad SFT-GAN configuration: {exc}") from None
    return model, describe(model)


def load_segmentation(state: Mapping[str, torch.Tensor]) -> OutdoorSceneSeg:
    """OutdoorSceneSeg loaded strictly, in eval mode.  BatchNorm's ``num_batches_tracked``
    may be absent (PyTorch 0.4.0, which made the published file, did not write it): it only
    counts training steps, so a file without any gets zeros; one with some but not all is
    refused as incomplete."""
    state = normalize(state)
    if is_generator(state):
        raise TTSRError(
            "this is an SFT-GAN generator, not its OutdoorSceneSeg segmentation network"
        )
    with torch.device("meta"):  # no random initialisation of 52M weights to overwrite
        model = OutdoorSceneSeg()
    if not any(key.endswith(_BATCHES_TRACKED) for key in state):
        zero = torch.zeros((), dtype=torch.long)
        state.update({k: zero.clone() for k in model.state_dict() if k.endswith(_BATCHES_TRACKED)})
    # The model's own copies, in float32: what load_state_dict would have copied into.
    state = {k: v.float().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
    name = "OutdoorSceneSeg (SFT-GAN's segmentation network)"
    return load_strictly(model, state, name, assign=True)


FAMILY = Family(
    name="sftgan",
    summary="SFT-GAN (x4 with segmentation priors)",
    detect=detect,
    build=build,
    create=create,
    normalize=normalize,
    describe=lambda model: describe(model) if isinstance(model, SFTGAN) else None,
)
