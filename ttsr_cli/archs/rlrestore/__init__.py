"""RL-Restore (Yu et al., CVPR 2018): a toolbox of small restoration CNNs and an agent that
picks the next tool, or stop, step by step.  The authors' TensorFlow checkpoints convert to
it unchanged (``ttsr convert``).  ``load.FAMILY`` is what :mod:`ttsr_cli.archs` sees."""

from ttsr_cli.archs.rlrestore.agent import Agent, AgentState
from ttsr_cli.archs.rlrestore.model import RLRestore, RLRestoreConfig
from ttsr_cli.archs.rlrestore.tools import TOOL_KINDS, ResidualTool, ShallowTool

__all__ = [
    "TOOL_KINDS",
    "Agent",
    "AgentState",
    "RLRestore",
    "RLRestoreConfig",
    "ResidualTool",
    "ShallowTool",
]
