"""RL-Restore's agent stage: deep Q-learning with the PSNR gain as reward, as the authors'
``dqn/agent.py`` trains it, batched for a CPU.

**Episodes.**  A clean 63x63 crop with the paper's ``moderate`` mixed degradation; at each
of at most ``max_steps`` (3) steps the agent picks a tool or stop, epsilon-greedily; the
frozen tools (eval mode, no gradient) run on the sub-batch that chose each.  The reward of a
tool is the PSNR gain in dB (:func:`ttsr_cli.train.rlrestore.psnr`: float, unclipped), stop
earns 0 and ends the episode, and so does the last step.  The authors' training also ends an
episode when a tool lowers the PSNR (its reward, negative, is kept); that rule is training's
only: the test path (and the joint stage) let the agent go on.

Logged: the mean episode ``return`` (undiscounted PSNR gain, dB), ``length``, ``epsilon``,
``memory`` (transitions held), ``greedy`` (how many different first tools the greedy policy
picks over the step's patches: 1 means the agent ignores its input, a collapse worth seeing
early), and once learning has begun the mean ``loss`` and ``q``; ``samples_per_s`` counts
episodes.

**One step** plays ``--batch-size`` episodes in parallel (default 32), stores them, and,
from step ``learn_start`` on, makes ``updates`` updates, each on ``--batch-size`` episodes
sampled uniformly (with replacement) from the replay memory.  The paper's 8 keeps the
authors' replay ratio: they make one update of 32 transitions every 4 transitions played (8
samples per transition played), and a step here plays about 80 transitions while an update
samples 32 episodes, about 80.  The target network is a copy of the
agent refreshed every ``target_sync`` steps.  Epsilon falls linearly from 1 to 0.1 over the
first ``explore`` steps and stays there.  Adam at ``--lr`` (1e-4), multiplied by
``--lr-gamma`` every ``--lr-decay-steps`` updates.  The counts come from the configuration's
``dqn`` table; the paper's values convert the authors' (memory and exploration of 500,000
transitions, a target sync every 10,000) at about 80 transitions (32 episodes) a step.

**The LSTM.**  Q of a transition depends on the LSTM state, i.e. on the whole episode so
far, so the memory keeps whole episodes (the images each step saw, as float16, unclipped;
the actions; the rewards) and an update unrolls the agent from the zero state over each
sampled episode, feeding the actions taken, exactly as it ran when playing.  Its loss is the
Huber loss (delta 1: the authors' clipped error) between Q(s_t, a_t) and the target
``r_t + 0.99 max_a Q_target(s_{t+1}, a)``, or ``r_t`` for an episode's last transition.
Memory capacity (``memory``) counts transitions; the oldest episodes go first.

**Checkpoints** (atomic, as every trainer's) hold the network (tools and agent), the target
network, the optimiser, the scheduler, the step and the stage.  Every random choice
(patches, degradations, exploration, sampling) derives from (seed, step), so nothing else is
needed to go on, except the replay memory, which is not saved (it can take gigabytes): a
resumed run starts it empty and refills it as it plays, its first updates sampling only the
episodes played since the resume, so it does not retrace the uninterrupted run bit for bit.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ttsr_cli.archs.rlrestore.agent import Agent
from ttsr_cli.archs.rlrestore.model import RLRestore
from ttsr_cli.devices import TorchrunEnv
from ttsr_cli.errors import TTSRError
from ttsr_cli.train.loop import (
    Trainer,
    learning_state,
    load_learning_state,
    read_resume_state,
    write_checkpoint,
)
from ttsr_cli.train.rlrestore import MixedPatches, RLRestoreRecipe, apply_tools, psnr

DISCOUNT = 0.99
EPSILON_START, EPSILON_END = 1.0, 0.1


def epsilon(step: int, explore: int) -> float:
    """The exploration rate of step ``step`` (0-based): linear from 1 to 0.1 over the first
    ``explore`` steps, then 0.1."""
    done = min(step / explore, 1.0)
    return EPSILON_START + done * (EPSILON_END - EPSILON_START)


@dataclass
class Episode:
    """What replaying an episode needs: the image each step's choice saw (``[L, 3, 63, 63]``
    float16), the actions taken (``[L]``) and their rewards (``[L]``, dB)."""

    views: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor


@dataclass
class EpisodeBatch:
    """Episodes padded to ``S`` steps: ``views [B, S, 3, 63, 63]``, ``actions``, ``rewards``,
    ``valid`` (a real transition) and ``terminal`` (an episode's last), all ``[B, S]``."""

    views: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    valid: torch.Tensor
    terminal: torch.Tensor

    def to(self, device: torch.device) -> EpisodeBatch:
        return EpisodeBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


class ReplayMemory:
    """Whole episodes, the newest ``capacity`` transitions' worth (at least one episode)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.episodes: deque[Episode] = deque()
        self.transitions = 0

    def __len__(self) -> int:
        return len(self.episodes)

    def add(self, episode: Episode) -> None:
        self.episodes.append(episode)
        self.transitions += len(episode.actions)
        while self.transitions > self.capacity and len(self.episodes) > 1:
            self.transitions -= len(self.episodes.popleft().actions)

    def sample(self, count: int, rng: np.random.Generator, steps: int) -> EpisodeBatch:
        """``count`` episodes drawn uniformly with replacement, padded to ``steps``."""
        chosen = [self.episodes[int(i)] for i in rng.integers(len(self.episodes), size=count)]
        views = torch.zeros(count, steps, *chosen[0].views.shape[1:])
        actions = torch.zeros(count, steps, dtype=torch.long)
        rewards = torch.zeros(count, steps)
        valid = torch.zeros(count, steps, dtype=torch.bool)
        terminal = torch.zeros(count, steps, dtype=torch.bool)
        for row, episode in enumerate(chosen):
            length = len(episode.actions)
            views[row, :length] = episode.views.float()
            actions[row, :length] = episode.actions
            rewards[row, :length] = episode.rewards
            valid[row, :length] = True
            terminal[row, length - 1] = True
        return EpisodeBatch(views, actions, rewards, valid, terminal)


def unroll(agent: Agent, views: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q-values ``[B, S, actions]`` of each step of each episode, the LSTM run from the zero
    state with the actions taken fed back, as when the episodes were played."""
    state = agent.initial_state(views[:, 0])
    values = []
    for t in range(views.shape[1]):
        q, state = agent(views[:, t], state)
        values.append(q)
        state = state.after(actions[:, t])
    return torch.stack(values, dim=1)


def td_targets(
    q_next: torch.Tensor, rewards: torch.Tensor, terminal: torch.Tensor, discount: float = DISCOUNT
) -> torch.Tensor:
    """``r_t + discount * max_a q_next[:, t, a]``, or ``r_t`` where the transition ends its
    episode; ``q_next[:, t]`` is the target network's Q of the state after step ``t``."""
    future = q_next.max(dim=2).values.masked_fill(terminal, 0.0)
    return rewards + discount * future


def td_loss(online: Agent, target: Agent, batch: EpisodeBatch) -> tuple[torch.Tensor, float]:
    """The Huber TD loss over the batch's real transitions, and their mean Q(s, a)."""
    q = unroll(online, batch.views, batch.actions)
    acted = q.gather(2, batch.actions.unsqueeze(2)).squeeze(2)
    with torch.no_grad():
        q_target = unroll(target, batch.views, batch.actions)
        q_next = torch.cat([q_target[:, 1:], torch.zeros_like(q_target[:, :1])], dim=1)
        wanted = td_targets(q_next, batch.rewards, batch.terminal | ~batch.valid)
    loss = F.smooth_l1_loss(acted[batch.valid], wanted[batch.valid])
    return loss, float(acted[batch.valid].detach().mean())


def play(
    model: RLRestore,
    images: torch.Tensor,
    clean: torch.Tensor,
    eps: float,
    rng: np.random.Generator,
) -> tuple[list[Episode], torch.Tensor]:
    """Episodes from ``images`` (``[E, 3, 63, 63]``), the agent epsilon-greedy, the tools
    frozen; ended rows stay in the batch as stops and record nothing more.  Also the greedy
    first action of each image (``[E]``), exploration aside, for the ``greedy`` log."""
    agent, stop, count = model.agent, model.agent.stop, images.shape[0]
    steps = model.config.max_steps
    explore = torch.from_numpy(rng.random((steps, count)) < eps)
    random_actions = torch.from_numpy(rng.integers(0, stop + 1, size=(steps, count)))
    active = torch.ones(count, dtype=torch.bool)
    taken: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    state, before = agent.initial_state(images), psnr(images, clean)
    greedy_first = torch.empty(0, dtype=torch.long)
    for t in range(steps):
        q, state = agent(images, state)
        if t == 0:
            greedy_first = q.argmax(1).cpu()
        actions = torch.where(explore[t], random_actions[t], q.argmax(1).cpu())
        actions = actions.masked_fill(~active, stop)
        after_images = apply_tools(model.tools, images, actions.to(images.device))
        after = psnr(after_images, clean)
        rewards = (after - before).cpu().masked_fill(actions == stop, 0.0)
        taken.append((images.cpu().half(), actions, rewards, active.clone()))
        active &= (actions != stop) & (rewards >= 0)
        state, images, before = state.after(actions.to(images.device)), after_images, after
    return _episodes(taken), greedy_first


def _episodes(
    taken: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> list[Episode]:
    """Per-episode records from per-step batches (a row counts while it was active)."""
    views, actions, rewards, active = (
        torch.stack(part, dim=1) for part in zip(*taken, strict=True)
    )
    lengths = active.sum(dim=1).tolist()
    return [
        Episode(views[row, :n].clone(), actions[row, :n].clone(), rewards[row, :n].clone())
        for row, n in enumerate(lengths)
    ]


@dataclass(frozen=True)
class Schedule:
    """The ``dqn`` table of the configuration (see the module docstring)."""

    memory: int
    explore: int
    learn_start: int
    target_sync: int
    updates: int = 1


class AgentTrainer:
    """Stage 2's loop, with the shared ``Trainer``'s interface (``run``, checkpoints,
    ``model``, ``step``) so that :func:`ttsr_cli.train.loop.train` drives it the same way."""

    def __init__(
        self,
        opts: Any,
        recipe: RLRestoreRecipe,
        env: TorchrunEnv,
        device: torch.device,
        dataset: torch.utils.data.Dataset,
    ) -> None:
        self.opts, self.recipe, self.dist, self.device = opts, recipe, env, device
        self.dataset = dataset
        self.schedule = Schedule(**opts.config["dqn"])
        torch.manual_seed(opts.seed)
        self.model: RLRestore = recipe.create().to(device)  # type: ignore[assignment]
        self.model.tools.eval().requires_grad_(False)
        self.target = copy.deepcopy(self.model.agent).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.agent.parameters(), lr=opts.lr)
        decay = opts.lr_decay_steps or 10**12
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, decay, opts.lr_gamma)
        self.memory = ReplayMemory(self.schedule.memory)
        self.average = None  # --ema is refused for this stage
        self.step = 0

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Play a batch of episodes, store them, learn from the memory, sync the target."""
        eps = epsilon(self.step, self.schedule.explore)
        images, clean = batch["input"].to(self.device), batch["target"].to(self.device)
        rng = np.random.default_rng([self.opts.seed, self.step])
        with torch.no_grad():
            episodes, greedy_first = play(self.model, images, clean, eps, rng)
        for episode in episodes:
            self.memory.add(episode)
        logged = {
            "return": float(np.mean([float(e.rewards.sum()) for e in episodes])),
            "length": float(np.mean([len(e.actions) for e in episodes])),
            "epsilon": eps,
            "memory": float(self.memory.transitions),
            "greedy": float(greedy_first.unique().numel()),
        }
        if self.step >= self.schedule.learn_start and len(self.memory) >= self.opts.batch_size:
            updates = [self._update(rng) for _ in range(self.schedule.updates)]
            logged.update({key: float(np.mean([u[key] for u in updates])) for key in updates[0]})
        self.step += 1
        if self.step % self.schedule.target_sync == 0:
            self.target.load_state_dict(self.model.agent.state_dict())
        return logged

    def _update(self, rng: np.random.Generator) -> dict[str, float]:
        """One Adam step on a sample of the memory."""
        steps = self.model.config.max_steps
        sample = self.memory.sample(self.opts.batch_size, rng, steps).to(self.device)
        self.model.agent.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, q = td_loss(self.model.agent, self.target, sample)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach()), "q": q}

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def save_checkpoint(self) -> Path:
        """Everything but the replay memory (module docstring)."""
        state = {**learning_state(self), "target": self.target.state_dict()}
        return write_checkpoint(self.opts, self.step, {**state, **self.recipe.state()})

    def load_checkpoint(self, path: Path) -> None:
        state = read_resume_state(path, self.recipe, self.device)
        load_learning_state(self, state)
        self.target.load_state_dict(state["target"])

    # The shared loop (batches, logging, checkpoints on schedule) drives this trainer too.
    run = Trainer.run
    parameter_checksum = Trainer.parameter_checksum
    exported = Trainer.exported


class AgentRecipe(RLRestoreRecipe):
    """Stage 2: the data (``moderate`` patches) and checks; :class:`AgentTrainer` runs it."""

    default_batch = 32
    needs_init = True
    trainer_class = AgentTrainer

    def __init__(self, opts: Any) -> None:
        super().__init__(opts)
        if opts.precision != "fp32":
            raise TTSRError("--precision: the agent stage trains in fp32")

    def dataset(self) -> torch.utils.data.Dataset:
        return MixedPatches(self.clean_patches(), self.opts.seed)
