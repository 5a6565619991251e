"""Training RL-Restore (Yu et al., CVPR 2018) in the paper's three stages
(``ttsr train --arch rl-restore --stage tools|agent|joint``), each a run folder of its own
that starts from the previous stage's ``model.safetensors`` (``--init``).

1. **tools**: every tool learns its own band of one distortion with the L2 loss (Adam).  A
   step trains all of them at once: a batch holds ``--batch-size`` 63x63 patches per tool,
   each degraded by that tool's distortion alone, and the loss is the sum of the tools'
   MSEs (logged as ``tool01``..``toolNN``, with each tool's gain in dB on its batch as
   ``gain01``.., :func:`pooled_gain`).  Fresh tools start as the identity.  The agent keeps
   its initial weights.
2. **agent**: deep Q-learning with the PSNR gain as reward, in :mod:`ttsr_cli.train.dqn`.
3. **joint**: the agent fixed and greedy, each ``moderate`` training patch walks its chain
   (the test path: no stop when the PSNR falls), and the L2 loss of the chain's output
   against the clean patch trains every tool the chain used, back through the whole chain.

**Bands.**  The authors never wrote down what each tool is for; the fixture README measured
it on their tools: tools 1-4 deblur, 5-8 denoise, 9-12 undo JPEG, and each group of four is
3-layer weaker / 3-layer stronger / 8-layer weaker / 8-layer stronger (e.g. tool 1 helps
blur sigma 0.75-1.5, tool 4 sigma 3.5-4.5).  So a group of four trains on the levels
:data:`BANDS_OF_FOUR` of its distortion's 1..10 (:mod:`ttsr_cli.degrade`'s ranges: level
``l`` is blur sigma in [0.5(l-1), 0.5l], noise sigma in [5(l-1), 5l], JPEG quality between
``q(l+1)`` and ``q(l)``).  Any other toolbox size is spread the same way: tool ``k`` of ``n``
(0-based) takes distortion ``3k // n``, and a group of another size than four splits the ten
levels into that many contiguous bands as evenly as they go (weakest first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttsr_cli.archs.rlrestore.agent import VIEW
from ttsr_cli.archs.rlrestore.load import FAMILY
from ttsr_cli.archs.rlrestore.model import PAPER_TOOLS, RLRestore, RLRestoreConfig
from ttsr_cli.degrade import DISTORTIONS, NUM_LEVELS, degrade, degrade_one
from ttsr_cli.devices import torchrun_env
from ttsr_cli.errors import TTSRError
from ttsr_cli.imageio import read_rgb
from ttsr_cli.train.pairs import list_images
from ttsr_cli.train.patches import augment, chw_tensor
from ttsr_cli.train.recipe import Recipe, Terms

STAGES = ("tools", "agent", "joint")
#: Level bands (first, last) of the four tools of a distortion, weakest first.
BANDS_OF_FOUR = ((1, 3), (4, 5), (6, 7), (8, 10))
#: The severity the paper trains the agent (and the joint stage) on.
TRAIN_LEVEL = "moderate"

#: The network, and the agent stage's schedule (``dqn``, see :mod:`ttsr_cli.train.dqn`; its
#: counts are steps of ``--batch-size`` episodes, ``memory`` is in transitions).  ``lite`` is
#: the paper's network (it is small already) with a replay memory a laptop can hold.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "tools": ["3-layer"] * 3,
        "units": 8,
        "max_steps": 3,
        "dqn": {"memory": 400, "explore": 4, "learn_start": 1, "target_sync": 2, "updates": 1},
    },
    "lite": {
        "tools": list(PAPER_TOOLS),
        "units": 50,
        "max_steps": 3,
        "dqn": {
            "memory": 50_000,
            "explore": 6_000,
            "learn_start": 60,
            "target_sync": 125,
            "updates": 8,
        },
    },
    "paper": {
        "tools": list(PAPER_TOOLS),
        "units": 50,
        "max_steps": 3,
        "dqn": {
            "memory": 500_000,
            "explore": 6_000,
            "learn_start": 60,
            "target_sync": 125,
            "updates": 8,
        },
    },
}
DQN_FIELDS = ("memory", "explore", "learn_start", "target_sync", "updates")


def checked(config: Mapping[str, Any]) -> dict[str, Any]:
    """An RL-Restore configuration from a file: the network's fields, and optionally a
    ``dqn`` table (the paper's schedule fills what it lacks).  Valid, or one line."""
    fields = dict(config)
    dqn = {**CONFIGS["paper"]["dqn"], **dict(fields.pop("dqn", {}))}
    unknown = sorted(set(dqn) - set(DQN_FIELDS))
    bad = [name for name in DQN_FIELDS if not isinstance(dqn[name], int) or dqn[name] < 1]
    if unknown or bad:
        raise TTSRError(f"invalid RL-Restore dqn table ({', '.join(unknown or bad)})")
    try:
        network = RLRestoreConfig.from_dict(fields).to_dict()
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"invalid RL-Restore configuration ({exc})") from None
    return {**network, "dqn": dqn}


def network_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The network's part of a configuration (without the agent stage's schedule)."""
    return {key: value for key, value in config.items() if key != "dqn"}


def tool_bands(count: int) -> list[tuple[str, int, int]]:
    """(distortion, first level, last level) of each of ``count`` tools (module docstring)."""
    groups: list[list[int]] = [[] for _ in DISTORTIONS]
    for k in range(count):
        groups[3 * k // count].append(k)
    bands: list[tuple[str, int, int]] = []
    for distortion, members in zip(DISTORTIONS, groups, strict=True):
        if len(members) == len(BANDS_OF_FOUR):
            spans = BANDS_OF_FOUR
        else:
            split = np.array_split(np.arange(1, NUM_LEVELS + 1), len(members))
            spans = tuple((int(part[0]), int(part[-1])) for part in split)
        bands += [(distortion, first, last) for first, last in spans]
    return bands


def psnr(image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image of a batch, as the authors compute it: float, unclipped,
    over all RGB values, ``10 log10(1 / (MSE + 1e-10))``."""
    mse = (image.float() - clean.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / (mse + 1e-10))


def pooled_gain(restored: torch.Tensor, damaged: torch.Tensor, clean: torch.Tensor) -> float:
    """How many dB a batch's restoration gains on the MSE of all its pixels pooled.  Robust
    where a mean of per-patch PSNR gains is not: a patch the mildest level left (almost)
    intact has a PSNR near 100 dB, and any change to it costs tens of dB."""
    before = (damaged.float() - clean.float()).pow(2).mean()
    after = (restored.float() - clean.float()).pow(2).mean()
    return float(10 * torch.log10((before + 1e-10) / (after + 1e-10)))


def apply_tools(tools: nn.ModuleList, images: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Each image through the tool its action names; stop (or any index past the tools)
    leaves it unchanged.  Each tool runs once, on the sub-batch that chose it."""
    out = images
    for k in actions.unique().tolist():
        if k < len(tools):
            rows = (actions == k).nonzero().squeeze(1)
            out = out.index_copy(0, rows, tools[k](images[rows]).to(images.dtype))
    return out


class CleanPatches:
    """Random 63x63 crops of the training photos (read once), flipped and transposed at
    random as the other trainers augment."""

    def __init__(self, roots: Path | Sequence[Path]) -> None:
        self.paths: list[Path] = []
        for folder in [roots] if isinstance(roots, Path) else list(roots):
            found = list_images(folder) if folder.is_dir() else []
            if not found:
                raise TTSRError(f"{folder}: no training images (a folder of photos)")
            self.paths += found
        self._images: dict[int, np.ndarray] = {}

    def crop(self, rng: np.random.Generator) -> np.ndarray:
        """uint8 ``[63, 63, 3]``: a crop of a photo drawn uniformly."""
        image = self._image(int(rng.integers(len(self.paths))))
        y = int(rng.integers(0, image.shape[0] - VIEW + 1))
        x = int(rng.integers(0, image.shape[1] - VIEW + 1))
        return augment(image[y : y + VIEW, x : x + VIEW], rng.integers(0, 2, size=3))

    def _image(self, index: int) -> np.ndarray:
        if index not in self._images:
            image = read_rgb(self.paths[index])
            if min(image.shape[:2]) < VIEW:
                raise TTSRError(f"{self.paths[index]}: smaller than the {VIEW} px training patch")
            self._images[index] = image
        return self._images[index]


def _float_tensor(image: np.ndarray) -> torch.Tensor:
    """float32 ``[H, W, 3]`` -> ``[3, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


class ToolPatches(torch.utils.data.Dataset):
    """Sample ``k``: one patch per tool, degraded by that tool's distortion at a level drawn
    uniformly from its band (``input``/``target`` ``[tools, 3, 63, 63]``).  Every choice
    derives from ``(seed, k, tool)``, so resumed runs draw what uninterrupted ones do."""

    def __init__(self, patches: CleanPatches, tools: int, seed: int) -> None:
        self.patches, self.bands, self.seed = patches, tool_bands(tools), seed

    def __len__(self) -> int:
        return len(self.patches.paths)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        inputs, targets = [], []
        for tool, (distortion, first, last) in enumerate(self.bands):
            rng = np.random.default_rng([self.seed, k, tool])
            clean = self.patches.crop(rng)
            level = int(rng.integers(first, last + 1))
            inputs.append(_float_tensor(degrade_one(clean, distortion, level, rng)))
            targets.append(chw_tensor(clean))
        return {"input": torch.stack(inputs), "target": torch.stack(targets)}


class MixedPatches(torch.utils.data.Dataset):
    """Sample ``k``: a patch with the paper's mixed ``moderate`` degradation
    (``input``/``target`` ``[3, 63, 63]``), every choice from ``(seed, k)``."""

    def __init__(self, patches: CleanPatches, seed: int) -> None:
        self.patches, self.seed = patches, seed

    def __len__(self) -> int:
        return len(self.patches.paths)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        clean = self.patches.crop(rng)
        damaged, _ = degrade(clean, TRAIN_LEVEL, rng)
        return {"input": _float_tensor(damaged), "target": chw_tensor(clean)}


class RLRestoreRecipe(Recipe):
    """What the three stages share: the network (fresh, or ``--init``'s), one process, 63x63
    patches, and the stage recorded in (and checked against) checkpoints."""

    arch = "rl-restore"
    default_patch = VIEW
    #: Whether the stage builds on a trained toolbox, so that ``--init`` is required.
    needs_init = False

    def __init__(self, opts: Any) -> None:
        super().__init__(opts)
        self._refuse_foreign_options(opts)
        if self.needs_init and opts.init is None:
            raise TTSRError(
                f"--stage {opts.stage} starts from the previous stage's model.safetensors: "
                "give --init FILE"
            )
        self.initial: RLRestore | None = None
        if opts.init is not None:
            from ttsr_cli.weights import load

            model, descriptor = load(opts.init, expect="rl-restore")
            self.initial = model  # type: ignore[assignment]
            opts.config = {**opts.config, **descriptor.config}

    @staticmethod
    def _refuse_foreign_options(opts: Any) -> None:
        if torchrun_env().world > 1:
            raise TTSRError("RL-Restore trains in one process (run it without torchrun)")
        if opts.patch_size not in (None, VIEW):
            raise TTSRError(f"--patch-size: RL-Restore trains on {VIEW}x{VIEW} patches")
        if opts.preset != "rec" or opts.match_loss:
            raise TTSRError("--preset and --match-loss are TTSR's; RL-Restore trains with L2")
        if opts.val is not None or opts.compile:
            raise TTSRError("--val and --compile are not supported for RL-Restore")

    def create(self) -> nn.Module:
        if self.initial is not None:
            return self.initial
        return FAMILY.create(network_fields(self.opts.config))[0]

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Only the tools learn here: the agent stays as it starts."""
        return [{"params": model.tools.parameters(), "lr": self.opts.lr, "name": "lr"}]

    def state(self) -> dict[str, Any]:
        return {"stage": self.opts.stage}

    def load_state(self, state: Mapping[str, Any]) -> None:
        if state.get("stage") != self.opts.stage:
            found = state.get("stage")
            raise TTSRError(f"a checkpoint of the {found} stage, not of --stage {self.opts.stage}")

    def clean_patches(self) -> CleanPatches:
        return CleanPatches(self.opts.data)


class ToolsRecipe(RLRestoreRecipe):
    """Stage 1: each tool on its own band, L2 loss, all tools in one step."""

    default_batch = 8

    def create(self) -> nn.Module:
        """Without ``--init``, every tool starts as the identity (its last convolution zeroed):
        a residual tool at PyTorch's default initialisation adds a random image that costs
        several dB, which its first hundreds of steps would only spend undoing."""
        model = super().create()
        if self.initial is None:
            for tool in model.tools:
                nn.init.zeros_(tool.conv3.weight)
                nn.init.zeros_(tool.conv3.bias)
        return model

    def dataset(self) -> torch.utils.data.Dataset:
        tools = len(self.opts.config["tools"])
        return ToolPatches(self.clean_patches(), tools, self.opts.seed)

    def terms(self, trainer: Any, batch: Mapping[str, torch.Tensor]) -> Terms:
        inputs, targets = batch["input"], batch["target"]
        terms: dict[str, torch.Tensor] = {}
        logged: dict[str, float] = {}
        with trainer.autocast():
            for k, tool in enumerate(trainer.model.tools):
                out = tool(inputs[:, k]).float()
                terms[f"tool{k + 1:02d}"] = F.mse_loss(out, targets[:, k])
                gain = pooled_gain(out.detach(), inputs[:, k], targets[:, k])
                logged[f"gain{k + 1:02d}"] = gain
        return terms, logged, dict.fromkeys(terms, 1.0)


def greedy_chain(model: RLRestore, images: torch.Tensor) -> torch.Tensor:
    """The test path on 63x63 patches: the agent (no gradient) picks the argmax at each step
    until stop or ``max_steps`` tools; the tools run with gradients, so a loss on the result
    reaches every tool of every chain."""
    agent, stop = model.agent, model.agent.stop
    stopped = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    with torch.no_grad():
        state = agent.initial_state(images)
    for _ in range(model.config.max_steps):
        with torch.no_grad():
            q, state = agent(images.detach(), state)
            actions = q.float().argmax(1).masked_fill(stopped, stop)
        images = apply_tools(model.tools, images, actions)
        state = state.after(actions)
        stopped |= actions == stop
    return images


class JointRecipe(RLRestoreRecipe):
    """Stage 3: the tools fine-tuned on the chains the fixed, greedy agent makes."""

    default_batch = 16
    needs_init = True

    def dataset(self) -> torch.utils.data.Dataset:
        return MixedPatches(self.clean_patches(), self.opts.seed)

    def terms(self, trainer: Any, batch: Mapping[str, torch.Tensor]) -> Terms:
        inputs, targets = batch["input"], batch["target"]
        with trainer.autocast():
            out = greedy_chain(trainer.model, inputs).float()
            rec = F.mse_loss(out, targets)
        if not rec.requires_grad:  # every chain stopped at once: no tool to train this step
            rec = rec + sum(p.sum() * 0 for p in trainer.model.tools.parameters())
        gain = psnr(out.detach(), targets) - psnr(inputs, targets)
        return {"rec": rec}, {"gain": float(gain.mean())}, {"rec": 1.0}


def recipe_class(stage: str) -> type[RLRestoreRecipe]:
    """The recipe of ``--stage`` (the agent stage's loop is :mod:`ttsr_cli.train.dqn`'s)."""
    if stage == "tools":
        return ToolsRecipe
    if stage == "joint":
        return JointRecipe
    if stage == "agent":
        from ttsr_cli.train.dqn import AgentRecipe

        return AgentRecipe
    raise TTSRError(f"unknown --stage '{stage}' (use {', '.join(STAGES)})")
