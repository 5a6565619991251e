"""``ttsr train``: data layouts, losses, checkpoints, exact resume, SIGKILL safety, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import (
    kill_mid_write,
    make_cufed5,
    run_cli,
    run_torchrun_train,
    sample_image,
    save_png,
)
from ttsr_cli.archs.vgg import VGG19Features
from ttsr_cli.devices import TorchrunEnv
from ttsr_cli.errors import TTSRError
from ttsr_cli.train import TrainOptions, load_config, step_batches, train
from ttsr_cli.train.loop import Trainer, recipe_for
from ttsr_cli.train.pairs import PairDataset
from ttsr_cli.train.ttsr import CONFIGS

TRAIN_ARGS = (
    "--config",
    "tiny",
    "--batch-size",
    "2",
    "--patch-size",
    "48",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--log-every",
    "1",
)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size in (("astronaut", (160, 140)), ("coffee", (150, 100)), ("chelsea", (120, 90))):
        save_png(folder / f"{name}.png", sample_image(name, size))
    return folder


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def step_records(run: Path) -> list[dict]:
    return [r for r in read_log(run) if "event" not in r]


def options(photos: Path, out: Path, **overrides) -> TrainOptions:
    base = dict(
        data=photos,
        out=out,
        config=load_config("tiny"),
        batch_size=2,
        patch_size=48,
        device="cpu",
        log_every=1,
        checkpoint_every=2,
    )
    return TrainOptions(**{**base, **overrides})


def test_train_resume_export_and_upscale_through_the_cli(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_cli("train", "--data", photos, "--out", run, "--steps", "4", *TRAIN_ARGS)
    assert first.returncode == 0, first.stderr
    second = run_cli(
        "train", "--data", photos, "--out", run, "--steps", "6", "--resume", *TRAIN_ARGS
    )
    assert second.returncode == 0, second.stderr
    steps = [r["step"] for r in step_records(run)]
    assert steps == [1, 2, 3, 4, 5, 6]  # reached the new total, no step logged twice
    for record in step_records(run):
        assert {"loss", "rec", "lr", "lr_lte", "samples_per_s"} <= record.keys()
    assert (run / "checkpoints" / "step-6.pt").exists()
    out = tmp_path / "sr.png"
    result = run_cli("upscale", photos / "chelsea.png", "-w", run / "model.safetensors", "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_init_fine_tunes_a_model_with_its_own_configuration(photos: Path, tmp_path: Path) -> None:
    """--init starts from the file's weights (its LTE too, not a fresh one) and takes its
    configuration over --config's; CSNLN's --init and an --lte-init beside it are refused."""
    from ttsr_cli.weights import read_checkpoint

    train(options(photos, tmp_path / "base", steps=2, lr=1e-3))
    base = tmp_path / "base" / "model.safetensors"
    tuned = tmp_path / "tuned"
    train(options(photos, tuned, steps=1, lr=1e-9, lr_lte=1e-9, init=base, config={}))
    before, meta = read_checkpoint(base)
    after, tuned_meta = read_checkpoint(tuned / "model.safetensors")
    assert json.loads(tuned_meta["config"]) == json.loads(meta["config"])
    assert before.keys() == after.keys()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-6
    with pytest.raises(TTSRError, match="--init is for --arch ttsr"):
        train(options(photos, tmp_path / "c", steps=1, arch="csnln", init=base))
    with pytest.raises(TTSRError, match="with --init the LTE is the file's"):
        train(options(photos, tmp_path / "d", steps=1, init=base, lte_init="vgg19"))


def test_resumed_run_matches_the_uninterrupted_one(photos: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(options(photos, straight, steps=6))
    split = tmp_path / "split"
    train(options(photos, split, steps=3))
    train(options(photos, split, steps=6, resume=True))
    a, b = step_records(straight), step_records(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_loss_falls(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(
        options(photos, run, steps=40, lr=1e-3, batch_size=4, patch_size=32, checkpoint_every=100)
    )
    losses = [r["loss"] for r in step_records(run)]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_sigkill_mid_checkpoint_write_keeps_the_previous_checkpoint(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed half-way through writing step-2.pt, the run keeps step-1.pt and resumes from it.

    The kill lands inside the write (see ``slow_writes.py``), not at a random moment: tiny
    checkpoints take milliseconds, so a timed kill would test nothing.
    """
    # One thread: on a busy machine, OpenMP threads spinning against other jobs slow these tiny
    # steps down ~50x (measured on 2 shared cores: 0.2 against 8 samples/s; 41 s against 7 s
    # for a 3-step run).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    data = ("--data", photos, "--out", run, *TRAIN_ARGS)
    every = ("--checkpoint-every", "1", "--keep", "2")
    partial = kill_mid_write("train", *data, "--steps", "3", *every, skip=1, scratch=tmp_path)
    target = run / "checkpoints" / "step-2.pt"
    assert partial.name.endswith(".part") and partial.parent == target.parent, partial
    assert partial.exists() and partial != target
    found = sorted((run / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in found] == ["step-1.pt"]  # no half-written step-2.pt
    for path in found:
        assert torch.load(path, weights_only=True)["step"] == int(path.stem[5:])
    result = run_cli("train", *data, "--steps", "3", *every, "--resume")
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in step_records(run)] == [1, 2, 3]
    assert not partial.exists()  # the cut-short write is cleared on the next start


@pytest.mark.slow  # two processes and a gloo rendezvous
def test_two_process_ddp_ranks_end_identical(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    result = run_torchrun_train("--data", photos, "--out", run, "--steps", "3", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    end = next(r for r in read_log(run) if r.get("event") == "end")
    assert len(end["rank_checksums"]) == 2
    assert end["rank_checksums"][0] == end["rank_checksums"][1]
    assert [r["step"] for r in step_records(run)] == [1, 2, 3]  # only rank 0 logs
    # a time limit stops every rank at rank 0's step: the run ends cleanly, ranks identical
    args = ("--steps", "50", "--time-limit", "0.01s", "--resume", *TRAIN_ARGS)
    limited = run_torchrun_train("--data", photos, "--out", run, *args)
    assert limited.returncode == 0, limited.stderr[-3000:]
    end = [r for r in read_log(run) if r.get("event") == "end"][-1]
    assert end["step"] == 4 and end["rank_checksums"][0] == end["rank_checksums"][1]


def test_time_limit_ends_the_run_resumably(photos: Path, tmp_path: Path) -> None:
    """--time-limit ends the run after the step that crosses it, with a checkpoint and the
    model; --resume goes on to the total.  A limit that cannot be read is one line."""
    run = tmp_path / "run"
    args = ("train", "--data", photos, "--out", run, *TRAIN_ARGS)
    first = run_cli(*args, "--steps", "50", "--time-limit", "0.01s")
    assert first.returncode == 0, first.stderr
    assert "time limit reached before step 50: --resume goes on" in first.stderr
    assert {"event": "time_limit", "step": 1, "seconds": 0.01} in read_log(run)
    assert (run / "checkpoints" / "step-1.pt").exists() and (run / "model.safetensors").exists()
    second = run_cli(*args, "--steps", "3", "--resume", "--time-limit", "1h")
    assert second.returncode == 0, second.stderr
    assert [r["step"] for r in step_records(run)] == [1, 2, 3]
    bad = run_cli(*args, "--steps", "3", "--time-limit", "soon")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "error: cannot read duration 'soon' (try 90s, 8m or 2h)"
    ]


def test_ranks_draw_distinct_slices_of_each_global_batch() -> None:
    ranks = [list(step_batches(0, 3, 2, TorchrunEnv(rank=r, world=2))) for r in range(2)]
    assert ranks[0] == [[0, 1], [4, 5], [8, 9]]
    assert ranks[1] == [[2, 3], [6, 7], [10, 11]]


def test_cufed_layout_is_detected_and_padded(tmp_path: Path) -> None:
    for sub in ("input", "ref"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for i in range(3):
        save_png(
            tmp_path / "train" / "input" / f"{i:03d}.png", sample_image("astronaut", (160, 160))
        )
        save_png(tmp_path / "train" / "ref" / f"{i:03d}.png", sample_image("coffee", (150, 120)))
    data = PairDataset(tmp_path, 160, seed=0)
    assert data.layout == "cufed" and len(data) == 3
    sample = data[0]
    assert sample["lr"].shape == (3, 40, 40) and sample["ref"].shape == (3, 160, 160)
    # The 150x120 reference is cropped to 148x120 and zero-padded (-1 in [-1, 1]) to 160x160:
    # 12 padded columns and 40 padded rows, whichever way it was rotated.
    blank = (sample["ref"] == -1).all(dim=0)
    assert int(blank.all(dim=1).sum() + blank.all(dim=0).sum()) == 52


def test_mismatched_cufed_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train" / "input").mkdir(parents=True)
    (tmp_path / "train" / "ref").mkdir(parents=True)
    save_png(tmp_path / "train" / "input" / "a.png", sample_image("astronaut", (160, 160)))
    with pytest.raises(TTSRError, match="train/ref has 0"):
        PairDataset(tmp_path, 160, seed=0)


def test_synthesised_reference_overlaps_the_input(photos: Path) -> None:
    data = PairDataset(photos, 48, seed=3)
    same = [data[k] for k in range(12)]
    # the reference is a view of the same photo in most samples: its colours match, up to the
    # warped views' exposure change
    close = sum(
        float((s["hr"].mean((1, 2)) - s["ref"].mean((1, 2))).abs().max()) < 0.4 for s in same
    )
    assert close >= 8
    assert all(torch.equal(a, b) for a, b in zip(data[5].values(), data[5].values(), strict=True))


def _orientation(image: torch.Tensor) -> tuple[tuple[str, bool], ...]:
    """Which way the ramps of ``_ramp_photo`` run (red to the right, green downwards when
    upright): for each, its axis and whether it rises; the eight turns and flips differ."""
    half = image.shape[1] // 2
    ramps = []
    for channel in image[:2]:
        dx = float(channel[:, half:].mean() - channel[:, :half].mean())
        dy = float(channel[half:].mean() - channel[:half].mean())
        ramps.append(("x", dx > 0) if abs(dx) > abs(dy) else ("y", dy > 0))
    return tuple(ramps)


def _ramp_photo(side: int) -> np.ndarray:
    ramp = np.linspace(20, 235, side)
    photo = np.zeros((side, side, 3), np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = ramp[None, :], ramp[:, None], 128
    return photo


def test_a_reference_from_the_same_photo_keeps_the_pairs_orientation(tmp_path: Path) -> None:
    """Same-photo and self references are turned with the pair (a photo of the same scene is
    upright); only another photo's is turned on its own.  Every photo is the same ramp, so the
    ramps' directions show the turns: independent turns would agree one time in eight."""
    for name in "abc":
        save_png(tmp_path / f"{name}.png", _ramp_photo(200))
    data = PairDataset(tmp_path, 48, seed=5)
    agree = [
        _orientation(s["hr"]) == _orientation(s["ref"]) for s in map(data.__getitem__, range(60))
    ]
    assert sum(agree) >= 50  # 10% of references come from another photo


def test_a_warped_reference_is_shot_at_another_exposure(tmp_path: Path) -> None:
    grey = np.full((200, 200, 3), 128, np.uint8)
    save_png(tmp_path / "grey.png", grey)
    data = PairDataset(tmp_path, 48, seed=1)
    levels = {round(float(data[k]["ref"][:, 16:32, 16:32].mean()), 2) for k in range(40)}
    assert len(levels) > 10  # the unwarped and self references stay at 128 (0.0039)


def _random_vgg_file(path: Path) -> Path:
    torch.manual_seed(0)
    state = {
        f"features.{k[len('features.') :]}": v.contiguous()
        for k, v in VGG19Features().state_dict().items()
        if k.startswith("features.")
    }
    save_file(state, str(path))
    return path


def test_gan_preset_runs_every_loss_after_the_warmup(photos: Path, tmp_path: Path) -> None:
    vgg = _random_vgg_file(tmp_path / "vgg19.safetensors")
    run = tmp_path / "gan"
    # 3 photos, batch 2: an epoch is 2 steps, so the two warm-up epochs end after step 4.
    train(options(photos, run, steps=6, preset="gan", vgg=str(vgg), patch_size=32))
    records = step_records(run)
    assert set(records[0]) >= {"rec"} and "adv" not in records[0]
    assert {"rec", "per", "tpl", "adv", "critic"} <= set(records[-1])
    assert all(np.isfinite(r["loss"]) for r in records)


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_gan_preset_steps_move_the_critic_then_the_generator(photos: Path, tmp_path: Path) -> None:
    """The critic's steps move the critic alone; the generator's adversarial term reaches the
    generator through a frozen critic, and the generator's step moves it."""
    vgg = _random_vgg_file(tmp_path / "vgg19.safetensors")
    opts = options(photos, tmp_path / "gan", preset="gan", vgg=str(vgg), patch_size=32)
    recipe = recipe_for(opts)
    dataset = recipe.dataset()
    trainer = Trainer(opts, recipe, TorchrunEnv(), torch.device("cpu"), dataset)
    trainer.step = recipe.warmup_steps  # adversarial training on
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    critic, generator = _parameters(recipe.critic), _parameters(trainer.model)
    terms, logged, _ = recipe.terms(trainer, batch)
    assert _moved(critic, recipe.critic) and not _moved(generator, trainer.model)
    assert np.isfinite(logged["critic"])
    critic_grads = [p.grad.clone() for p in recipe.critic.parameters()]  # its last step's
    terms["adv"].backward()
    assert all(
        torch.equal(g, p.grad)
        for g, p in zip(critic_grads, recipe.critic.parameters(), strict=True)
    )
    reached = [p.grad for p in trainer.model.MainNet.parameters() if p.grad is not None]
    assert reached and sum(float(g.abs().sum()) for g in reached) > 0
    trainer.model.zero_grad(set_to_none=True)
    trainer.train_step(batch)
    assert _moved(generator, trainer.model)


def test_defaults_train_offline_on_a_fresh_machine(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Hub, an empty cache: ``ttsr train --data --out`` (the lite configuration, a random
    LTE) still runs; only the paper configuration's VGG19 needs a download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    run = tmp_path / "run"
    args = ("--steps", "1", "--batch-size", "2", "--patch-size", "64")  # photos of 120x90 px
    result = run_cli("train", "--data", photos, "--out", run, *args)
    assert result.returncode == 0, result.stderr
    state = torch.load(run / "checkpoints" / "step-1.pt", weights_only=True)
    assert state["config"] == CONFIGS["lite"].to_dict()


def test_offline_perceptual_training_fails_with_a_clear_message(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli(
        "train",
        "--data",
        photos,
        "--out",
        tmp_path / "r",
        "--steps",
        "2",
        "--preset",
        "gan",
        *TRAIN_ARGS,
    )
    assert result.returncode == 2
    assert "VGG19" in result.stderr and "--lte-init random" in result.stderr
    assert "Traceback" not in result.stderr


def test_configuration_files(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        "[model]\nn_feats = 24\nnum_res_blocks = [2, 1, 1, 1]\nlte_widths = [8, 16, 32]\n"
    )
    assert load_config(str(path))["n_feats"] == 24
    assert load_config("paper") == CONFIGS["paper"].to_dict()
    with pytest.raises(TTSRError, match="unknown configuration"):
        load_config("huge")
    path.write_text("[model]\nn_feats = 'wide'\n")
    with pytest.raises(TTSRError):
        load_config(str(path))


def test_validation_lines_report_psnr_beside_bicubic(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(
        "train",
        "--data",
        photos,
        "--out",
        run,
        "--steps",
        "3",
        "--val",
        photos,
        "--val-every",
        "2",
        "--val-limit",
        "2",
        *TRAIN_ARGS,
    )
    assert result.returncode == 0, result.stderr
    vals = [r for r in read_log(run) if r.get("event") == "val"]
    assert [v["step"] for v in vals] == [2, 3]
    for v in vals:
        assert 10 < v["val_psnr"] < 60 and 0 < v["val_ssim"] <= 1
        assert v["val_bicubic_psnr"] > 20


def test_cufed5_test_tree_is_recognised_for_validation(tmp_path: Path) -> None:
    from ttsr_cli.data import folder_info, list_samples

    make_cufed5(tmp_path)
    info = folder_info(tmp_path)
    assert info.references == "cufed5"
    samples = list_samples(info, tmp_path)
    assert [s.references[0].name for s in samples] == ["000_1.png", "001_1.png"]
    assert folder_info(tmp_path.parent).references == "self"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_steps_run_and_resume(photos: Path, tmp_path: Path, precision: str):
    """Autocast paths (fp16 with loss scaling, whose state is checkpointed) train on CPU."""
    run = tmp_path / precision
    train(options(photos, run, steps=2, precision=precision, patch_size=32))
    train(options(photos, run, steps=3, precision=precision, patch_size=32, resume=True))
    records = step_records(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    state = torch.load(run / "checkpoints" / "step-3.pt", weights_only=True)
    assert ("scale" in state["scaler"]) == (precision == "fp16")


def _mean_off_diagonal_cosine(lte: torch.nn.Module, image: torch.Tensor) -> float:
    """Mean relevance (3x3-patch cosine) between different lv3 positions of one image."""
    patches = torch.nn.functional.unfold(lte.lv3((image + 1) / 2), 3, padding=1)[0]
    unit = torch.nn.functional.normalize(patches, dim=0)
    cos = unit.t() @ unit
    n = cos.shape[0]
    return float((cos.sum() - cos.diagonal().sum()) / (n * n - n))


def test_matching_loss_makes_a_random_lte_tell_patches_apart() -> None:
    """The failure it addresses: a random LTE scores every pair of patches near cosine 1."""
    from ttsr_cli.archs.ttsr.lte import LTE
    from ttsr_cli.train.losses import matching_loss

    torch.manual_seed(0)
    lte = LTE((8, 16, 32))
    images = torch.stack(
        [
            torch.from_numpy(sample_image(name, (64, 64))).permute(2, 0, 1).float() / 127.5 - 1
            for name in ("astronaut", "coffee", "chelsea")
        ]
    )
    before = _mean_off_diagonal_cosine(lte, images[:1])
    optimizer = torch.optim.Adam(lte.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = matching_loss(lte, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        after = _mean_off_diagonal_cosine(lte, images[:1])
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert before > 0.8 and after < before - 0.2, (before, after)


def test_match_loss_option_is_logged(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(options(photos, run, steps=2, match_loss=0.1))
    assert all(r["match"] > 0 for r in step_records(run))


def test_weight_average_folds_each_step_in() -> None:
    from ttsr_cli.train.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    average = WeightAverage(model, 0.75)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model.train()(torch.randn(3, 1, 4, 4))  # moves BatchNorm's statistics and its counter
    average.update(model)
    after = model.state_dict()
    for name, value in average.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * before[name] + 0.25 * after[name]), name
        else:
            assert value.item() == after[name].item() == 1, name
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


def test_ema_is_exported_and_survives_a_resume(photos: Path, tmp_path: Path) -> None:
    """With --ema the model file is the average (the checkpoint keeps both), and a resumed
    run's average is the uninterrupted run's."""
    from ttsr_cli.weights import read_checkpoint

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(options(photos, straight, steps=4, ema=0.5))
    train(options(photos, split, steps=2, ema=0.5))
    train(options(photos, split, steps=4, ema=0.5, resume=True))
    exported, meta = read_checkpoint(straight / "model.safetensors")
    assert meta["ema"] == "0.5"
    state = torch.load(straight / "checkpoints" / "step-4.pt", weights_only=True)
    assert all(torch.equal(exported[k], state["ema"][k]) for k in exported)
    assert any(not torch.equal(exported[k], state["model"][k]) for k in exported)
    resumed, _ = read_checkpoint(split / "model.safetensors")
    assert all(torch.equal(exported[k], resumed[k]) for k in exported)
    bad = run_cli("train", "--data", photos, "--out", tmp_path / "bad", "--ema", "1.5")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--ema 1.5: a decay in [0, 1), such as 0.999 (0: off)" in bad.stderr
