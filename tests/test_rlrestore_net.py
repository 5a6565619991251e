"""RL-Restore's network against the authors' own outputs (``../shared/fixtures/
rl-restore-official``): tools, Q-values, chains, whole-image votes, and the runner's tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_rl_fixture
from ttsr_cli import archs
from ttsr_cli.archs.rlrestore import RLRestore, RLRestoreConfig
from ttsr_cli.archs.rlrestore.agent import same_padding
from ttsr_cli.archs.rlrestore.load import from_tensorflow
from ttsr_cli.archs.rlrestore.toolchain import views, vote
from ttsr_cli.errors import TTSRError
from ttsr_cli.run.rlrestore import RLRestoreRunner

STOP = 12


@pytest.fixture(scope="module")
def authors() -> RLRestore:
    variables = dict(np.load(require_rl_fixture() / "weights.npz"))
    model, descriptor = archs.load(from_tensorflow(variables))
    assert descriptor.family == "rl-restore" and descriptor.scale == 1
    return model


@pytest.fixture(scope="module")
def parity() -> dict[str, np.ndarray]:
    return dict(np.load(require_rl_fixture() / "parity.npz"))


def nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


@torch.inference_mode()
def patch_episodes(model: RLRestore, patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each patch its own episode, as the authors' synthetic test path runs them."""
    state = model.agent.initial_state(patches)
    done = torch.zeros(len(patches), dtype=torch.bool)
    qs, actions, images = [], [], []
    current = patches
    for _ in range(3):
        q, state = model.agent(current, state)
        action = torch.where(done, torch.full_like(q[:, 0], STOP, dtype=torch.long), q.argmax(1))
        after = current.clone()
        for n, chosen in enumerate(action.tolist()):
            if chosen != STOP:
                after[n : n + 1] = model.tools[chosen](current[n : n + 1])
        done |= action == STOP
        qs.append(q), actions.append(action), images.append(after)
        current, state = after, state.after(action)
    return torch.stack(qs, 1), torch.stack(actions, 1), torch.stack(images, 1)


def test_every_variable_is_used_with_the_published_shapes(authors: RLRestore) -> None:
    params = sum(p.numel() for p in authors.parameters())
    assert params == 523_931  # the float32 parameters the README counts (step is int32)
    assert authors.config.tools == ("3-layer", "3-layer", "8-layer", "8-layer") * 3


def test_tools_give_the_authors_outputs(authors: RLRestore, parity: dict) -> None:
    source = nchw(parity["input_fed"])[int(parity["tools_input_index"])][None]
    with torch.inference_mode():
        for k, tool in enumerate(authors.tools):
            out = tool(source)[0].permute(1, 2, 0).numpy()
            assert np.abs(out - parity["tools_out"][k]).max() <= 1e-5, f"tool {k + 1}"


def test_patch_chains_q_values_and_steps(authors: RLRestore, parity: dict) -> None:
    q, actions, images = patch_episodes(authors, nchw(parity["input_fed"]))
    assert actions.tolist() == parity["actions"].tolist()
    assert np.abs(q.numpy() - parity["q"]).max() <= 5e-5
    steps = images.permute(0, 1, 3, 4, 2).numpy()
    assert np.abs(steps - parity["steps_fed"]).max() <= 1e-5


def test_all_twelve_shipped_samples_choose_the_authors_chains(
    authors: RLRestore, parity: dict
) -> None:
    # The synthetic path feeds patches transposed (MATLAB wrote the HDF5 column-major).
    fed = parity["all_input_u8"].astype(np.float32).transpose(0, 2, 1, 3) / 255
    q, actions, images = patch_episodes(authors, nchw(fed))
    assert actions.tolist() == parity["all_actions"].tolist()
    for n, chain in enumerate(parity["all_actions"].tolist()):
        steps = chain.index(STOP) + 1 if STOP in chain else 3
        assert np.abs(q[n, :steps].numpy() - parity["all_q"][n, :steps]).max() <= 5e-5
    final = images[:, 2].permute(0, 3, 2, 1).numpy()  # transposed back, as written
    u8 = np.clip(np.rint(final * 255), 0, 255).astype(np.int16)
    off = np.abs(u8 - parity["all_final_u8"])
    assert off.max() <= 1 and (off > 0).mean() <= 1e-4


def test_whole_image_votes_tie_to_the_tool_and_match(authors: RLRestore, parity: dict) -> None:
    """The arbitrary-size path: step 2 is a 3:3 tie between tool 12 and stop, which the
    authors' bincount-argmax gives to the tool."""
    runner = RLRestoreRunner(authors, archs.describe(authors), torch.device("cpu"))
    result = runner.upscale_detailed(parity["whole_input_u8"])
    assert result.mode["tools"] == [a + 1 for a in parity["whole_actions"] if a != STOP]
    assert result.mode["votes"] == parity["whole_votes"].tolist()
    off = np.abs(result.sr.astype(np.int16) - parity["whole_final_u8"])
    assert off.max() <= 1 and (off > 0).mean() <= 1e-4
    # the views are the authors' tiles, in their order
    image = nchw(parity["whole_input_u8"][None].astype(np.float32) / 255)
    origins = parity["whole_tile_origin"].tolist()
    seen = views(image)
    assert len(seen) == len(origins)
    for view, (top, left) in zip(seen, origins, strict=True):
        assert torch.equal(view, image[0, :, top : top + 63, left : left + 63])


def test_tiles_give_the_untiled_chain(authors: RLRestore, parity: dict) -> None:
    """Tools are local: tiles with margins of their reach change values only by float
    noise (the convolution's algorithm depends on the tile's size): 1e-7, not seams."""
    image = parity["whole_input_u8"]
    descriptor = archs.describe(authors)
    whole = RLRestoreRunner(authors, descriptor, torch.device("cpu"), keep_steps=True)
    tiled = RLRestoreRunner(authors, descriptor, torch.device("cpu"), tile=40, keep_steps=True)
    a, b = whole.upscale_detailed(image), tiled.upscale_detailed(image)
    assert b.tiles > 1 and a.tiles == 1
    assert a.mode == b.mode
    for x, y in zip([*a.steps, a.sr], [*b.steps, b.sr], strict=True):
        off = np.abs(x.astype(np.int16) - y)
        assert off.max() <= 1 and (off > 0).mean() <= 1e-4
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        for action in range(len(authors.tools)):
            gap = tiled.apply_tool(action, x)[0] - authors.tools[action](x)
            assert gap.abs().max() <= 1e-6, f"tool {action + 1}"


def test_tf_same_padding_is_asymmetric() -> None:
    assert same_padding(63, 9, 2) == (4, 4)
    assert same_padding(32, 5, 2) == (1, 2)
    assert same_padding(4, 5, 2) == (1, 2)


def test_vote_breaks_ties_toward_the_lowest_index() -> None:
    q = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [2.0, 2.0, 0.0]])
    assert vote(q) == (0, [1, 1, 1])
    assert vote(q[:2]) == (1, [0, 1, 1])


def test_views_are_row_major_tiles_and_small_images_are_mirrored() -> None:
    image = torch.arange(130 * 200 * 3, dtype=torch.float32).reshape(1, 3, 130, 200)
    tiles = views(image)
    assert tiles.shape == (6, 3, 63, 63)
    assert torch.equal(tiles[4], image[0, :, 63:126, 63:126])
    small = torch.rand(1, 3, 20, 70)
    seen = views(small)
    assert seen.shape == (1, 3, 63, 63)
    assert torch.equal(seen[0, :, 20:40], small[0].flip(-2)[:, :, :63])


def test_a_toolbox_whose_agent_counts_other_actions_is_refused() -> None:
    state = RLRestore(RLRestoreConfig(tools=("3-layer", "8-layer"))).state_dict()
    del state["tools.1.conv1.weight"]
    with pytest.raises(TTSRError, match="1 tools but its agent chooses among 2"):
        archs.load(state)


def test_reduced_precision_runs_the_tools_and_keeps_the_agent_in_fp32(
    authors: RLRestore, parity: dict
) -> None:
    """bf16 autocast reaches the tools only: the agent's choices are the result, so it
    stays fp32 and chooses as in fp32 when the tools' outputs barely move."""
    image = parity["whole_input_u8"]
    descriptor = archs.describe(authors)
    fp32 = RLRestoreRunner(authors, descriptor, torch.device("cpu")).upscale_detailed(image)
    runner = RLRestoreRunner(authors, descriptor, torch.device("cpu"), torch.bfloat16)
    bf16 = runner.upscale_detailed(image)
    assert bf16.mode == fp32.mode
    off = np.abs(bf16.sr.astype(np.int16) - fp32.sr)
    assert 0 < off.max() <= 3 and off.mean() < 0.3  # measured: 2 levels at most, 0.15 mean
    assert all(p.dtype == torch.float32 for p in authors.agent.parameters())


def test_a_budget_below_the_smallest_tiles_is_used_with_a_warning(
    authors: RLRestore, parity: dict
) -> None:
    descriptor = archs.describe(authors)
    tight = RLRestoreRunner(authors, descriptor, torch.device("cpu"), memory_budget=1 << 20)
    result = tight.upscale_detailed(parity["whole_input_u8"])
    assert result.tiles > 1 and len(result.warnings) == 1
    assert "memory budget is too small" in result.warnings[0]
    roomy = RLRestoreRunner(authors, descriptor, torch.device("cpu"), memory_budget=1 << 30)
    assert not roomy.upscale_detailed(parity["whole_input_u8"]).warnings
