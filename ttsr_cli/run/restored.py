"""Restoration before super-resolution (``ttsr upscale --restore``): a restoration model's
output is what the super-resolution model sees.

Networks trained on clean bicubic downscales amplify blur, noise and JPEG blocks in real
photos; restoring first removes what the SR model would otherwise sharpen.  The reference
is a sharp photo by assumption, so it is restored only when asked (``--restore-ref``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ttsr_cli.run.common import Runner, TileCallback, Upscaled


class Restored(Runner):
    """``upscaler`` applied to what ``restorer`` makes of each input (and of each reference
    with ``restore_references``).  It is the upscaler to everything that asks: descriptor,
    references, tile progress."""

    def __init__(self, restorer: Runner, upscaler: Runner, restore_references: bool) -> None:
        self.restorer, self.upscaler = restorer, upscaler
        self.restore_references = restore_references
        self.descriptor = upscaler.descriptor

    @property  # type: ignore[override]
    def on_tile(self) -> TileCallback | None:
        return self.upscaler.on_tile

    @on_tile.setter
    def on_tile(self, callback: TileCallback | None) -> None:
        self.restorer.on_tile = self.upscaler.on_tile = callback

    def encode_reference(self, ref: np.ndarray) -> Any:
        """The upscaler's encoding of ``ref``, restored first with ``restore_references``."""
        if self.restore_references:
            ref = self.restorer.upscale(ref)
        return self.upscaler.encode_reference(ref)

    def upscale_detailed(self, lr: np.ndarray, references: Any = None) -> Upscaled:
        """The upscaled restoration of ``lr``; ``mode["restore_tools"]`` says which tools
        restored it (1-based, in order)."""
        restored = self.restorer.upscale_detailed(lr)
        result = self.upscaler.upscale_detailed(restored.sr, references)
        result.mode = {**result.mode, "restore_tools": restored.mode.get("tools", [])}
        result.warnings = [*restored.warnings, *result.warnings]
        return result
