"""The whole RL-Restore network: the toolbox and the agent, and its configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs.rlrestore.agent import Agent
from ttsr_cli.archs.rlrestore.tools import TOOL_KINDS

#: The authors' toolbox: per distortion (blur, noise, JPEG) a weaker and a stronger 3-layer
#: tool, then a weaker and a stronger 8-layer tool.
PAPER_TOOLS = ("3-layer", "3-layer", "8-layer", "8-layer") * 3


@dataclass(frozen=True)
class RLRestoreConfig:
    """``tools``: the kind of each tool, in action order; ``units``: the LSTM's width;
    ``max_steps``: the most tools one image gets (the paper's 3)."""

    tools: tuple[str, ...] = PAPER_TOOLS
    units: int = 50
    max_steps: int = 3

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tools) - set(TOOL_KINDS))
        if unknown or not self.tools:
            raise ValueError(f"tools must be a non-empty list of {', '.join(TOOL_KINDS)}")
        if self.units < 1 or self.max_steps < 1:
            raise ValueError("units and max_steps must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return {"tools": list(self.tools), "units": self.units, "max_steps": self.max_steps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLRestoreConfig:
        fields = dict(data)
        if "tools" in fields:
            fields["tools"] = tuple(fields["tools"])
        return cls(**fields)


class RLRestore(nn.Module):
    """``tools[k]`` is action ``k`` (tool ``k + 1`` as users count them); the agent's last
    action, ``len(tools)``, is stop.  How an image walks the chain is :mod:`.toolchain`'s."""

    def __init__(self, config: RLRestoreConfig | None = None) -> None:
        super().__init__()
        self.config = config or RLRestoreConfig()
        self.tools = nn.ModuleList(TOOL_KINDS[kind]() for kind in self.config.tools)
        self.agent = Agent(len(self.config.tools), self.config.units)

    def apply_tool(self, action: int, image: torch.Tensor) -> torch.Tensor:
        """Tool ``action`` (0-based) on ``image`` ``[N, 3, H, W]`` in [0, 1], unclipped."""
        return self.tools[action](image)
