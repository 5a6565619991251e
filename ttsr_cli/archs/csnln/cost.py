"""What a CSNLN forward pass costs, from its configuration and the input size alone.

The attention is what grows with the square of the image: every SEM iteration runs IS-NL
over all positions of each projection's input, and CS-NL matches every position against
every patch of that input downscaled.  Runners use these counts to choose between exact
and windowed attention, and benchmarks to report work done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def projection_scales(scale: int) -> tuple[tuple[int, int], ...]:
    """``(resolution factor, attention scale)`` of each mutual-projected fusion in one SEM
    iteration: one at LR resolution for x2 and x3 (attention scale 2 or 3), two for x4
    (at LR and at 2x, each attending across a factor 2)."""
    if scale == 4:
        return ((1, 2), (2, 2))
    return ((1, scale),)


def attention_macs(config: Mapping[str, Any], height: int, width: int) -> int:
    """Multiply-adds of all IS-NL and CS-NL attentions of an ``height x width`` LR input.

    IS-NL: scores ``Q x Q x C/2`` and values ``Q x Q x C``.  CS-NL, as computed here (see
    :mod:`ttsr_cli.archs.csnln.attention`): scores ``Q x L x 9C/2`` over 3x3 patches and
    values ``Q x L x C s^2``, with ``L = Q / s^2`` downscaled positions.
    """
    channels = int(config["n_feats"])
    embed = channels // int(config.get("reduction", 2))
    total = 0
    for factor, s in projection_scales(int(config["scale"])):
        q = height * width * factor * factor
        keys = q // (s * s)
        total += q * q * (embed + channels)
        total += q * keys * (9 * embed + channels * s * s)
    return total * int(config["depth"])
