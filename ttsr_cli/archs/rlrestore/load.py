"""RL-Restore checkpoints: recognise them, read the toolbox off tensor shapes, load strictly,
and map the authors' TensorFlow variables to our keys (``ttsr convert``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ttsr_cli.archs import Family, StateDict, check_declared, load_strictly
from ttsr_cli.archs.descriptor import PRECISIONS, Descriptor, Tiling
from ttsr_cli.archs.rlrestore.model import RLRestore, RLRestoreConfig
from ttsr_cli.archs.rlrestore.tools import ResidualTool, ShallowTool
from ttsr_cli.errors import TTSRError

_MARKERS = ("agent.l1.weight", "agent.lstm.weight", "agent.q.weight", "tools.0.conv1.weight")
#: The first layer's output channels tell the kinds apart.
_KIND_OF_WIDTH = {32: "3-layer", 64: "8-layer"}
#: TensorFlow scope of the agent's layers, and their variables' names there.
_AGENT_SCOPE = "prediction"
_LSTM_SCOPE = "prediction/prediction_rnn/basic_lstm_cell"


def detect(state: Mapping[str, torch.Tensor]) -> bool:
    """The agent's convolution, LSTM and Q layers and a first tool."""
    return all(key in state for key in _MARKERS)


def infer_config(state: Mapping[str, torch.Tensor], max_steps: int = 3) -> RLRestoreConfig:
    """The toolbox (each tool's kind, from its first layer's width) and the LSTM's width,
    checked against the agent's action count."""
    kinds = []
    while f"tools.{len(kinds)}.conv1.weight" in state:
        width = state[f"tools.{len(kinds)}.conv1.weight"].shape[0]
        if width not in _KIND_OF_WIDTH:
            raise TTSRError(f"RL-Restore tool {len(kinds) + 1} has a {width}-channel first layer")
        kinds.append(_KIND_OF_WIDTH[width])
    actions, units = state["agent.q.weight"].shape
    if actions != len(kinds) + 1:
        raise TTSRError(
            f"RL-Restore checkpoint has {len(kinds)} tools but its agent chooses among "
            f"{actions - 1}"
        )
    try:
        return RLRestoreConfig(tuple(kinds), units, max_steps)
    except ValueError as exc:
        raise TTSRError(f"RL-Restore checkpoint: {exc}") from None


def describe(model: RLRestore) -> Descriptor:
    """Scale 1, no reference; tools are local (each step tiles with margins of its reach)."""
    return Descriptor(
        family="rl-restore",
        config=model.config.to_dict(),
        scale=1,
        takes_reference=False,
        dtypes=PRECISIONS,
        tiling=Tiling("local", reach=max(ShallowTool.reach, ResidualTool.reach)),
        parameters=sum(p.numel() for p in model.parameters()),
    )


def build(state: StateDict, declared: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """The network the shapes describe, loaded strictly; ``declared`` may set ``max_steps``
    (shapes cannot tell it) and must agree on the rest.  A training checkpoint's ``dqn``
    table is the agent stage's schedule, not the network's, and is set aside."""
    declared = {key: value for key, value in declared.items() if key != "dqn"}
    inferred = infer_config(state, int(declared.get("max_steps", 3)))
    check_declared("RL-Restore", declared, inferred.to_dict())
    model = RLRestore(inferred)
    name = f"RL-Restore ({len(inferred.tools)} tools)"
    return load_strictly(model, state, name), describe(model)


def create(config: Mapping[str, Any]) -> tuple[nn.Module, Descriptor]:
    """A freshly initialised toolbox and agent to train."""
    try:
        model = RLRestore(RLRestoreConfig.from_dict(dict(config)))
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"bad RL-Restore configuration: {exc}") from None
    return model, describe(model)


class _Variables:
    """The authors' variables, handed out once each, so that what is left over (a variable
    this port does not understand) can be refused instead of ignored."""

    def __init__(self, variables: Mapping[str, np.ndarray]) -> None:
        self.variables, self.used = variables, {"step/step"}  # the step counter: training's

    def take(self, name: str) -> np.ndarray:
        if name not in self.variables:
            raise TTSRError(f"RL-Restore checkpoint lacks the variable {name}")
        self.used.add(name)
        return np.asarray(self.variables[name], dtype=np.float32)

    def left_over(self) -> list[str]:
        return sorted(set(self.variables) - self.used)


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value))


def _tool_variables(variables: _Variables) -> StateDict:
    """Tools keyed ``toolNN/<scope>/weights`` and ``.../biases``, NN counted from 1."""
    state: StateDict = {}
    for key in sorted(k for k in variables.variables if k.startswith("tool")):
        parts = key.split("/")
        number = parts[0].removeprefix("tool")
        if len(parts) != 3 or not number.isdigit() or parts[2] not in ("weights", "biases"):
            continue  # left over, and refused by the caller
        value = variables.take(key)
        target = f"tools.{int(number) - 1}.{parts[1]}"
        if parts[2] == "weights":
            state[f"{target}.weight"] = _tensor(value.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        else:
            state[f"{target}.bias"] = _tensor(value)
    return state


def _agent_variables(variables: _Variables) -> StateDict:
    """The agent by its TF names: convs ``prediction/lN/w`` (HWIO), dense layers
    ``Matrix`` (``[in, out]``, so transposed for ``nn.Linear``), the LSTM's ``kernel``."""
    state: StateDict = {}
    for n in range(1, 5):
        kernel = variables.take(f"{_AGENT_SCOPE}/l{n}/w")
        state[f"agent.l{n}.weight"] = _tensor(kernel.transpose(3, 2, 0, 1))
        state[f"agent.l{n}.bias"] = _tensor(variables.take(f"{_AGENT_SCOPE}/l{n}/biases"))
    for layer in ("l7", "q"):
        state[f"agent.{layer}.weight"] = _tensor(variables.take(f"{_AGENT_SCOPE}/{layer}/Matrix").T)
        state[f"agent.{layer}.bias"] = _tensor(variables.take(f"{_AGENT_SCOPE}/{layer}/bias"))
    state["agent.lstm.weight"] = _tensor(variables.take(f"{_LSTM_SCOPE}/kernel").T)
    state["agent.lstm.bias"] = _tensor(variables.take(f"{_LSTM_SCOPE}/bias"))
    return state


def from_tensorflow(variables: Mapping[str, np.ndarray]) -> StateDict:
    """Our state dict from the authors' variables (tools keyed ``toolNN/...``, the agent by
    its TF names, as ``ttsr convert`` reads them): every variable must be used but the
    training step counter."""
    source = _Variables(variables)
    state = {**_tool_variables(source), **_agent_variables(source)}
    unused = source.left_over()
    if unused:
        raise TTSRError(f"RL-Restore variables not understood: {', '.join(unused[:3])}")
    return state


FAMILY = Family(
    name="rl-restore",
    summary="RL-Restore (toolbox and agent)",
    detect=detect,
    build=build,
    create=create,
    normalize=dict,
    describe=lambda model: describe(model) if isinstance(model, RLRestore) else None,
)
