"""``ttsr train --arch rl-restore``: the three stages, resume, the tools' learning, and the
deep Q-learning pieces (replay memory, TD targets, epsilon, the episode's rules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import kill_mid_write, run_cli, sample_image, save_png
from ttsr_cli.archs.rlrestore.model import PAPER_TOOLS, RLRestore, RLRestoreConfig
from ttsr_cli.degrade import degrade_one
from ttsr_cli.errors import TTSRError
from ttsr_cli.train import TrainOptions, load_config, train
from ttsr_cli.train.dqn import (
    Episode,
    ReplayMemory,
    epsilon,
    play,
    td_loss,
    td_targets,
)
from ttsr_cli.train.rlrestore import BANDS_OF_FOUR, pooled_gain, tool_bands
from ttsr_cli.weights import load, save_safetensors

TINY = ("--arch", "rl-restore", "--config", "tiny", "--device", "cpu", "--log-every", "1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, size in (("astronaut", (160, 140)), ("coffee", (150, 100)), ("chelsea", (120, 90))):
        save_png(folder / f"{name}.png", sample_image(name, size))
    return folder


@pytest.fixture(scope="module")
def tools_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tools stage of two steps through the CLI: what the later stages start from."""
    run = tmp_path_factory.mktemp("tools")
    result = run_cli(
        "train", "--data", photos, "--out", run, "--steps", "2", "--batch-size", "2", *TINY
    )
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads slow these
    small convolutions several-fold (see test_train's kill test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def step_records(run: Path) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "event" not in r]


def weights(run: Path) -> dict[str, torch.Tensor]:
    model, descriptor = load(run / "model.safetensors", expect="rl-restore")
    assert descriptor.family == "rl-restore"
    return model.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def options(photos: Path, out: Path, **overrides) -> TrainOptions:
    base = dict(
        data=[photos],
        out=out,
        arch="rl-restore",
        config=load_config("tiny", "rl-restore"),
        batch_size=2,
        device="cpu",
        log_every=1,
        checkpoint_every=2,
    )
    return TrainOptions(**{**base, **overrides})


def test_tools_stage_trains_the_tools_and_leaves_the_agent(tools_run: Path) -> None:
    trained = weights(tools_run)
    torch.manual_seed(0)  # the trainer seeds with --seed before it builds the network
    fresh = RLRestore(RLRestoreConfig(tools=("3-layer",) * 3, units=8)).state_dict()
    assert same(trained, fresh, "agent.")
    assert not same(trained, fresh, "tools.")
    records = step_records(tools_run)
    assert [r["step"] for r in records] == [1, 2]
    assert {"tool01", "tool02", "tool03", "gain01", "loss"} <= records[0].keys()
    # a training checkpoint (whose config carries the dqn schedule) loads like the export
    [checkpoint] = sorted((tools_run / "checkpoints").glob("step-*.pt"))[-1:]
    model, descriptor = load(checkpoint, expect="rl-restore")
    assert descriptor.config["units"] == 8 and same(model.state_dict(), trained, "")


def test_agent_then_joint_stage_through_the_cli(photos: Path, tools_run: Path, tmp_path: Path):
    agent_run, joint_run = tmp_path / "agent", tmp_path / "joint"
    init = ("--init", tools_run / "model.safetensors", "--batch-size", "4")
    result = run_cli(
        "train",
        "--data",
        photos,
        "--out",
        agent_run,
        "--stage",
        "agent",
        *init,
        "--steps",
        "3",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    before, after = weights(tools_run), weights(agent_run)
    assert same(before, after, "tools.") and not same(before, after, "agent.")
    records = step_records(agent_run)
    assert [r["epsilon"] for r in records] == pytest.approx([1.0, 0.775, 0.55])
    assert "loss" in records[-1] and "return" in records[0]
    assert all(1 <= r["greedy"] <= 4 for r in records)  # distinct first actions of 3 tools + stop

    init = ("--init", agent_run / "model.safetensors", "--batch-size", "2")
    result = run_cli(
        "train",
        "--data",
        photos,
        "--out",
        joint_run,
        "--stage",
        "joint",
        *init,
        "--steps",
        "2",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    joint = weights(joint_run)
    assert same(after, joint, "agent.") and not same(after, joint, "tools.")
    assert "gain" in step_records(joint_run)[0]


def test_tools_stage_resumes_exactly(photos: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(options(photos, straight, steps=4))
    train(options(photos, split, steps=2))
    train(options(photos, split, steps=4, resume=True))
    a, b = step_records(straight), step_records(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_agent_stage_resumes_from_its_checkpoint(photos: Path, tools_run: Path, tmp_path: Path):
    run = tmp_path / "agent"
    stage = dict(stage="agent", init=tools_run / "model.safetensors", checkpoint_every=1)
    train(options(photos, run, steps=2, **stage))
    saved = torch.load(run / "checkpoints" / "step-2.pt", weights_only=True)
    assert saved["stage"] == "agent" and {"target", "optimizer", "model"} <= saved.keys()
    train(options(photos, run, steps=4, resume=True, **stage))
    records = step_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["epsilon"] == pytest.approx(epsilon(2, 4))  # the schedule went on
    with pytest.raises(TTSRError, match="agent stage, not of --stage joint"):
        train(options(photos, run, steps=5, resume=True, **{**stage, "stage": "joint"}))


@pytest.mark.slow  # the agent's checkpoints go through the one write_checkpoint test_train kills
def test_sigkill_mid_agent_checkpoint_keeps_the_previous_one(
    photos: Path, tools_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see test_train's kill test
    run = tmp_path / "run"
    init = ("--init", tools_run / "model.safetensors", "--batch-size", "2")
    args = ("train", "--data", photos, "--out", run, "--stage", "agent", *init, *TINY)
    every = ("--steps", "3", "--checkpoint-every", "1", "--keep", "2")
    partial = kill_mid_write(*args, *every, skip=1, scratch=tmp_path)
    assert partial.name.endswith(".part") and partial.exists()
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*.pt"))] == ["step-1.pt"]
    result = run_cli(*args, *every, "--resume")
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in step_records(run)] == [1, 2, 3]
    assert not partial.exists()


@pytest.mark.usefixtures("one_thread")
def test_a_tool_learns_its_band(photos: Path, tmp_path: Path) -> None:
    """After 40 steps the denoising tool gains on strong noise of its band, on patches of a
    photo it never saw (a fresh tool is the identity: it gains exactly 0 dB)."""
    run = tmp_path / "run"
    settings = dict(steps=40, batch_size=4, lr=3e-4, log_every=40, checkpoint_every=100)
    train(options(photos, run, **settings))
    model, _ = load(run / "model.safetensors")
    distortion, first, last = tool_bands(3)[1]
    assert (distortion, first, last) == ("noise", 1, 10)
    held_out = sample_image("rocket")
    rng = np.random.default_rng(0)
    damaged, clean = [], []
    for _ in range(8):
        y, x = rng.integers(0, 300, size=2)
        patch = held_out[y : y + 63, x : x + 63]
        damaged.append(degrade_one(patch, "noise", int(rng.integers(6, last + 1)), rng))
        clean.append(patch.astype(np.float32) / 255)
    images, targets = (torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2) for a in (damaged, clean))
    with torch.no_grad():
        gain = pooled_gain(model.tools[1](images), images, targets)
    assert gain > 0.1  # 0.25 dB measured


def test_bands_follow_the_measured_toolbox() -> None:
    bands = tool_bands(len(PAPER_TOOLS))
    assert [b[0] for b in bands] == ["blur"] * 4 + ["noise"] * 4 + ["jpeg"] * 4
    assert [b[1:] for b in bands[4:8]] == list(BANDS_OF_FOUR)
    assert tool_bands(3) == [("blur", 1, 10), ("noise", 1, 10), ("jpeg", 1, 10)]
    assert tool_bands(6)[:2] == [("blur", 1, 5), ("blur", 6, 10)]


def test_epsilon_falls_linearly_to_a_tenth() -> None:
    assert [epsilon(s, 10) for s in (0, 5, 10, 50)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_replay_memory_samples_what_was_stored_and_forgets_the_oldest() -> None:
    memory = ReplayMemory(capacity=5)
    for n, length in enumerate((1, 3, 2)):
        views = torch.full((length, 3, 63, 63), float(n)).half()
        memory.add(Episode(views, torch.full((length,), n), torch.arange(length) + 10.0 * n))
    assert len(memory) == 2 and memory.transitions == 5  # the oldest went
    batch = memory.sample(16, np.random.default_rng(0), steps=3)
    for row in range(16):
        n = int(batch.actions[row, 0])
        length = {1: 3, 2: 2}[n]
        assert batch.valid[row].tolist() == [t < length for t in range(3)]
        assert batch.terminal[row].tolist() == [t == length - 1 for t in range(3)]
        assert torch.equal(batch.rewards[row, :length], torch.arange(length) + 10.0 * n)
        assert bool((batch.views[row, :length] == n).all())


def test_td_targets_discount_the_target_max_unless_terminal() -> None:
    q_next = torch.tensor([[[1.0, 5.0, -2.0], [3.0, 0.0, 7.0], [9.0, 9.0, 9.0]]])
    rewards = torch.tensor([[0.5, -1.0, 2.0]])
    terminal = torch.tensor([[False, False, True]])
    wanted = torch.tensor([[0.5 + 0.99 * 5.0, -1.0 + 0.99 * 7.0, 2.0]])
    assert torch.allclose(td_targets(q_next, rewards, terminal), wanted)


def _constant_agent(model: RLRestore, values: list[float]) -> None:
    """Make the agent's Q the same ``values`` whatever it sees."""
    with torch.no_grad():
        model.agent.q.weight.zero_()
        model.agent.q.bias.copy_(torch.tensor(values))


def test_td_loss_uses_the_target_network() -> None:
    torch.manual_seed(0)
    online, target = (RLRestore(RLRestoreConfig(tools=("3-layer",), units=4)) for _ in "ab")
    _constant_agent(online, [1.0, 2.0])
    _constant_agent(target, [4.0, 3.0])
    memory = ReplayMemory(10)
    memory.add(
        Episode(torch.zeros(2, 3, 63, 63).half(), torch.tensor([0, 1]), torch.tensor([1.5, 0.0]))
    )
    batch = memory.sample(1, np.random.default_rng(0), steps=3)
    loss, q = td_loss(online.agent, target.agent, batch)
    # Q(s0, tool) = 1 against 1.5 + 0.99 * 4; Q(s1, stop) = 2 against 0 (terminal): Huber.
    errors = torch.tensor([1.0 - (1.5 + 0.99 * 4.0), 2.0])
    assert float(loss.detach()) == pytest.approx(float((errors.abs() - 0.5).mean()))
    assert q == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("q", "harmful", "actions", "rewards_sign"),
    [
        ([5.0, 0.0], False, [0, 0, 0], 0),  # an identity tool: three steps, no gain
        ([0.0, 5.0], False, [1], 0),  # stop at once: reward 0, the episode ends
        ([5.0, 0.0], True, [0], -1),  # a tool that lowers the PSNR ends the episode
    ],
)
def test_episode_rules(q: list[float], harmful: bool, actions: list[int], rewards_sign: int):
    torch.manual_seed(0)
    model = RLRestore(RLRestoreConfig(tools=("3-layer",), units=4)).eval()
    _constant_agent(model, q)
    with torch.no_grad():
        model.tools[0].conv3.weight.zero_()
        model.tools[0].conv3.bias.fill_(0.1 if harmful else 0.0)
    clean = torch.rand(2, 3, 63, 63)
    with torch.no_grad():
        episodes, _ = play(model, clean + 0.05, clean, eps=0.0, rng=np.random.default_rng(0))
    for episode in episodes:
        assert episode.actions.tolist() == actions
        assert episode.views.dtype == torch.float16 and len(episode.views) == len(actions)
        if rewards_sign:
            assert bool((episode.rewards < 0).all())
        else:
            assert episode.rewards.tolist() == [0.0] * len(actions)


def test_joint_step_where_every_chain_stops_at_once(photos: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RLRestore(RLRestoreConfig(tools=("3-layer",) * 3, units=8))
    _constant_agent(model, [0.0, 0.0, 0.0, 5.0])
    save_safetensors(model, tmp_path / "stops.safetensors")
    run = tmp_path / "joint"
    train(options(photos, run, steps=1, stage="joint", init=tmp_path / "stops.safetensors"))
    assert same(model.state_dict(), weights(run), "")
    assert step_records(run)[0]["gain"] == 0.0


def test_bad_stage_options_fail_in_one_line(photos: Path, tmp_path: Path, tiny_weights: Path):
    base = ("train", "--data", photos, "--out", tmp_path / "run", "--steps", "1", *TINY)
    for extra, message in (
        (("--stage", "agent"), "give --init FILE"),
        (("--stage", "joint", "--init", tiny_weights), "where a RL-Restore"),
    ):
        result = run_cli(*base, *extra)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr
