"""What the rest of the program knows about a loaded network, instead of asking the network.

Each family's ``load.py`` returns a :class:`Descriptor` beside the module.  Running, tiling,
the command line and the registry read it: whether a reference is taken, the scale, which
input sides the network accepts as they are, the precisions it runs in, and what cutting the
input into tiles does to its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Compute precisions by name, as ``--precision`` spells them.
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Tiling:
    """What tiling does to the output.

    ``local``: every output pixel depends on the input within ``reach`` LR pixels (beyond the
    stages run whole), so tiles with margins of at least ``reach`` give the untiled pixels.
    ``global``: attention spans the whole image, so tiles (windows) change the output; they
    are a choice (``--attention windowed``), not a free way to save memory.
    """

    kind: Literal["local", "global"]
    reach: int = 0


@dataclass(frozen=True)
class Descriptor:
    """A network's facts: ``family`` (a package under :mod:`ttsr_cli.archs`), its
    ``config`` as plain data (what its safetensors metadata stores), ``scale``,
    ``takes_reference``, ``size_multiple`` (LR sides the network accepts as they are; the
    runner pads other sizes), supported ``dtypes``, :class:`Tiling`, and ``prior``: what the
    network takes beside the LR, made by another network (None: nothing;
    ``"outdoor-scene-seg"``: OutdoorSceneSeg's 8 class probabilities at the output size)."""

    family: str
    config: dict[str, Any]
    scale: int
    takes_reference: bool
    size_multiple: int = 1
    dtypes: tuple[str, ...] = PRECISIONS
    tiling: Tiling = field(default_factory=lambda: Tiling("local"))
    parameters: int = 0
    prior: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` outputs."""
        return {
            "family": self.family,
            "scale": self.scale,
            "takes_reference": self.takes_reference,
            "size_multiple": self.size_multiple,
            "dtypes": list(self.dtypes),
            "tiling": {"kind": self.tiling.kind, "reach": self.tiling.reach},
            "parameters": self.parameters,
            "prior": self.prior,
            "config": self.config,
        }
