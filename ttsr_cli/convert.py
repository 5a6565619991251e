"""``ttsr convert``: any checkpoint ttsr can load, re-saved as our safetensors.

Besides the PyTorch and safetensors files every command reads, it reads the RL-Restore
authors' TensorFlow checkpoints, laid out as in their repository: a folder holding
``toolbox/`` (``tool01`` .. ``tool12``) and ``models/`` (the agent), read by
:mod:`ttsr_cli.tfcheckpoint` without TensorFlow and without running anything in them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ttsr_cli import archs, weights
from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.archs.rlrestore.load import from_tensorflow
from ttsr_cli.errors import TTSRError
from ttsr_cli.tfcheckpoint import checkpoint_prefix, read_bundle

_TOOL_INDEX = re.compile(r"tool(\d+)\.index")


def convert(source: Path, target: Path) -> Descriptor:
    """Load ``source`` (a weights file, or the authors' RL-Restore folder) strictly and
    write it to ``target`` as safetensors with its family and configuration in the
    metadata; the descriptor of what was written."""
    if target.suffix != ".safetensors":
        raise TTSRError(f"-o {target}: the output must be a .safetensors file")
    if source.resolve() == target.resolve():
        raise TTSRError(f"-o {target}: refusing to overwrite the source with its conversion")
    if source.is_dir():
        state = from_tensorflow(read_rl_restore_folder(source))
        try:
            model, descriptor = archs.load(state, {}, expect="rl-restore")
        except TTSRError as exc:
            raise TTSRError(f"{source}: {exc}") from None
    else:
        model, descriptor = weights.load(source)
    weights.save_safetensors(model, target, {"converted_from": source.name})
    return descriptor


def read_rl_restore_folder(folder: Path) -> dict[str, np.ndarray]:
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
