"""``ttsr convert``: any checkpoint ttsr can load (:func:`ttsr_cli.weights.load`: PyTorch
files, safetensors, the RL-Restore authors' TensorFlow folder), re-saved as our safetensors,
which load fastest, hold no code by construction and carry the configuration."""

from __future__ import annotations

from pathlib import Path

from ttsr_cli import weights
from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.errors import TTSRError


def convert(source: Path, target: Path) -> Descriptor:
    """Load ``source`` strictly and write it to ``target`` as safetensors, its family and
    configuration in the metadata; the descriptor of what was written."""
    if target.suffix != ".safetensors":
        raise TTSRError(f"-o {target}: the output must be a .safetensors file")
    if source.resolve() == target.resolve():
        raise TTSRError(f"-o {target}: refusing to overwrite the source with its conversion")
    model, descriptor = weights.load(source)
    weights.save_safetensors(model, target, {"converted_from": source.name})
    return descriptor
