"""The training loop every family shares, on one CPU or many GPUs, resumable at any step.

A family's recipe (:mod:`ttsr_cli.train.ttsr`, :mod:`ttsr_cli.train.csnln`) gives the model,
the data, the optimiser groups and the loss terms; this loop does the rest the same way for
all of them.  Under ``torchrun`` the model is wrapped in DistributedDataParallel (nccl on
GPU, gloo on CPU); every rank draws a distinct slice of each global batch and only rank 0
logs and writes.  Every random choice derives from (seed, step, rank), so a run resumed from
a checkpoint goes on exactly as the uninterrupted run would have.  Checkpoints are written
atomically, so a run killed at any moment resumes from its last complete one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ttsr_cli.atomic import atomic_path
from ttsr_cli.devices import TorchrunEnv, select_device, torchrun_env
from ttsr_cli.errors import TTSRError
from ttsr_cli.train.ema import WeightAverage
from ttsr_cli.train.recipe import Recipe

ARCHS = ("ttsr", "csnln", "rl-restore", "sftgan", "sftgan-seg")
_CHECKPOINT = re.compile(r"step-(\d+)\.pt$")


@dataclass
class TrainOptions:
    """Everything ``ttsr train`` accepts.  ``config``: the family's configuration as plain
    data (None: its paper configuration); ``batch_size`` and ``patch_size`` (the HR patch
    side) default to the family's official values; ``preset`` and ``vgg`` are TTSR's and
    SFT-GAN's, ``lte_init``, ``lr_lte`` and ``match_loss`` TTSR's; ``scale`` is CSNLN's
    (TTSR and SFT-GAN are x4); ``stage`` is RL-Restore's; ``init`` (the weights a run starts
    from) is all but CSNLN's; ``seg_maps`` and ``seg_palette`` (the photos' class
    maps) SFT-GAN's.  ``time_limit`` (seconds of steps) ends the run early, as if its last step
    were the total: a checkpoint and ``model.safetensors``, so ``--resume`` goes on.  ``ema``
    (a decay; 0: off) exports the weights' moving average (:mod:`ttsr_cli.train.ema`) instead
    of the last weights."""

    data: Path | Sequence[Path]
    out: Path
    arch: str = "ttsr"
    config: Mapping[str, Any] | None = None
    scale: int = 4
    preset: str = "rec"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    resume: bool = False
    log_every: int = 10
    checkpoint_every: int = 500
    keep: int = 3
    workers: int = 0
    lte_init: str = "auto"
    vgg: str = "hub"
    lr: float = 1e-4
    lr_lte: float = 1e-5
    lr_decay_steps: int = 0
    lr_gamma: float = 0.5
    match_loss: float = 0.0
    channels_last: bool = False
    compile: bool = False
    val: Path | None = None
    val_every: int = 1000
    val_limit: int | None = None
    stage: str = "tools"
    init: Path | None = None
    seg_maps: Path | None = None
    seg_palette: Path | None = None
    time_limit: float | None = None
    ema: float = 0.0


def recipe_for(opts: TrainOptions) -> Recipe:
    """The recipe of ``opts.arch``, with the family's defaults filled into ``opts``."""
    _refuse_foreign_options(opts)
    if opts.arch == "ttsr":
        from ttsr_cli.train.ttsr import TTSRRecipe as chosen
    elif opts.arch == "csnln":
        from ttsr_cli.train.csnln import CSNLNRecipe as chosen
    elif opts.arch == "rl-restore":
        from ttsr_cli.train.rlrestore import recipe_class

        chosen = recipe_class(opts.stage)
    elif opts.arch == "sftgan":
        from ttsr_cli.train.sftgan import SFTGANRecipe as chosen
    elif opts.arch == "sftgan-seg":
        from ttsr_cli.train.sftgan import SegmentationRecipe as chosen
    else:
        raise TTSRError(f"unknown --arch '{opts.arch}' (use {', '.join(ARCHS)})")
    if opts.config is None:
        opts.config = load_config("paper", opts.arch)
    recipe = chosen(opts)
    opts.batch_size = opts.batch_size or recipe.default_batch
    opts.patch_size = opts.patch_size or recipe.default_patch
    return recipe


def _refuse_foreign_options(opts: TrainOptions) -> None:
    """Options of one family given to another are refused, not silently ignored."""
    if opts.arch != "rl-restore" and opts.stage != "tools":
        raise TTSRError("--stage is RL-Restore's (--arch rl-restore)")
    if not 0.0 <= opts.ema < 1.0:
        raise TTSRError(f"--ema {opts.ema}: a decay in [0, 1), such as 0.999 (0: off)")
    if opts.ema and opts.arch == "rl-restore" and opts.stage == "agent":
        raise TTSRError("--ema is for networks trained on a loss, not RL-Restore's agent")
    if opts.arch == "csnln" and opts.init is not None:
        raise TTSRError("--init is for --arch ttsr, rl-restore, sftgan and sftgan-seg")
    if not opts.arch.startswith("sftgan") and (opts.seg_maps or opts.seg_palette):
        raise TTSRError("--seg-maps and --seg-palette are SFT-GAN's (--arch sftgan, sftgan-seg)")


def load_config(name: str | None, arch: str = "ttsr") -> dict[str, Any]:
    """A named configuration of ``arch`` (tiny, lite, paper) or a TOML file of its fields
    (optionally under ``[model]``); None: lite, or paper for a family without one (the
    segmentation network, whose only configuration is the authors')."""
    if arch == "csnln":
        from ttsr_cli.train.csnln import CONFIGS, checked
    elif arch == "rl-restore":
        from ttsr_cli.train.rlrestore import CONFIGS, checked
    elif arch == "sftgan":
        from ttsr_cli.train.sftgan import CONFIGS, checked
    elif arch == "sftgan-seg":
        CONFIGS, checked = {"paper": {}}, _no_fields
    else:
        from ttsr_cli.train.ttsr import CONFIGS, checked
    if name is None:
        name = "lite" if "lite" in CONFIGS else "paper"
    if name in CONFIGS:
        found = CONFIGS[name]
        return dict(found) if isinstance(found, Mapping) else found.to_dict()
    path = Path(name)
    if not path.is_file():
        raise TTSRError(f"unknown configuration '{name}' ({', '.join(CONFIGS)} or a .toml file)")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TTSRError(f"{path}: invalid configuration ({exc})") from None
    try:
        return checked(dict(data.get("model", data)))
    except TTSRError as exc:
        raise TTSRError(f"{path}: {exc}") from None


def _no_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    if config:
        raise TTSRError("the segmentation network has no configuration fields")
    return {}


def step_batches(start: int, total: int, batch: int, env: TorchrunEnv) -> Iterator[list[int]]:
    """Sample ids of this rank's share of global batches ``start .. total-1``."""
    per_step = batch * env.world
    for step in range(start, total):
        first = step * per_step + env.rank * batch
        yield list(range(first, first + batch))


class Trainer:
    """Holds the model and optimiser; runs steps; saves and restores checkpoints."""

    def __init__(
        self,
        opts: TrainOptions,
        recipe: Recipe,
        env: TorchrunEnv,
        device: torch.device,
        dataset: torch.utils.data.Dataset,
    ) -> None:
        self.opts, self.recipe, self.dist, self.device = opts, recipe, env, device
        self.dataset = dataset
        torch.manual_seed(opts.seed)
        self.model = recipe.create().to(device)
        if opts.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.average = WeightAverage(self.model, opts.ema) if opts.ema else None
        groups = recipe.param_groups(self.model)
        self.rate_names = [group.pop("name") for group in groups]
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=opts.precision == "fp16")
        decay = opts.lr_decay_steps or 10**12
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, decay, opts.lr_gamma)
        self.net: nn.Module = self.distributed(self.model)
        if opts.compile:
            self.net = torch.compile(self.net)
        self.step = 0
        recipe.attach(self)

    def distributed(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in DistributedDataParallel under torchrun, else itself."""
        if self.dist.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def autocast(self) -> AbstractContextManager:
        precision = self.opts.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on the recipe's weighted loss terms."""
        torch.manual_seed(self.opts.seed * 1_000_003 + self.step * 4099 + self.dist.rank)
        x = {k: self._to_device(v) for k, v in batch.items()}
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms, logged, weights = self.recipe.terms(self, x)
        loss = sum(weights[name] * value for name, value in terms.items())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.model)
        self.step += 1
        logged.update({name: float(value.detach()) for name, value in terms.items()})
        logged["loss"] = float(loss.detach())
        return logged

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.opts.channels_last and t.dim() == 4:  # images; labels stay as they are
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N.pt`` (:func:`write_checkpoint`)."""
        state = {**learning_state(self), "scaler": self.scaler.state_dict()}
        if self.average is not None:
            state["ema"] = self.average.state_dict()
        return write_checkpoint(self.opts, self.step, {**state, **self.recipe.state()})

    def load_checkpoint(self, path: Path) -> None:
        state = read_resume_state(path, self.recipe, self.device)
        load_learning_state(self, state)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:  # a checkpoint without one starts it from its weights
            self.average.load_state_dict(state.get("ema", state["model"]))

    def run(
        self,
        total: int,
        log: RunLog | None,
        val_samples: list,
        on_step: Callable[[int, int, dict | None], None] | None,
    ) -> None:
        """Steps up to ``total`` (see :func:`_loop`)."""
        _loop(self, total, log, val_samples, on_step)

    def exported(self) -> nn.Module:
        """The network ``model.safetensors`` gets: the weight average with ``--ema``."""
        return self.model if self.average is None else self.average.module

    def validate(self, samples: list) -> dict[str, float | None]:
        """PSNR/SSIM (the family's protocol) of the exported weights and of bicubic."""
        from ttsr_cli.archs import describe
        from ttsr_cli.evaluate import Benchmark, run
        from ttsr_cli.run import RunSettings, make_runner

        settings = RunSettings(self.device, search="exact", channels_last=self.opts.channels_last)
        model = self.exported()
        descriptor = describe(model)
        runner = make_runner(model, descriptor, settings)
        benchmark = Benchmark("val", self.recipe.protocol, samples, runner, descriptor.scale)
        report = run(benchmark)
        self.model.train()
        return {
            f"val_{m}": report.mean(m) for m in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
        }

    def learning_rates(self) -> dict[str, float]:
        groups = self.optimizer.param_groups
        return {name: group["lr"] for name, group in zip(self.rate_names, groups, strict=True)}

    def parameter_checksum(self) -> float:
        """Sum of all weights in float64: equal across ranks when DDP keeps them in step."""
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))


def learning_state(trainer: Any) -> dict[str, Any]:
    """What every trainer's checkpoint holds of its learning: the model, the optimiser and
    the schedule (``trainer``: anything with ``model``, ``optimizer`` and ``scheduler``)."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
    }


def load_learning_state(trainer: Any, state: Mapping[str, Any]) -> None:
    """Restore what :func:`learning_state` saved, and the step."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step = int(state["step"])


def write_checkpoint(opts: TrainOptions, step: int, state: Mapping[str, Any]) -> Path:
    """``checkpoints/step-N.pt`` of ``opts.out`` holding ``state`` and what every
    checkpoint records (step, seed, family, configuration), written atomically so that a
    kill leaves the previous one intact; only the newest ``opts.keep`` are kept."""
    folder = opts.out / "checkpoints"
    record = {
        "step": step,
        "seed": opts.seed,
        "arch": opts.arch,
        "config": dict(opts.config or {}),
        **state,
    }
    path = folder / f"step-{step}.pt"
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    for old in list_checkpoints(folder)[: -opts.keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (temporary ``.part`` files never match), oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_partial_checkpoints(folder: Path) -> None:
    """Delete the temporary files of checkpoint writes that a kill cut short: they are never
    read, and each can be as large as a checkpoint.  One run writes to a folder at a time."""
    if folder.is_dir():
        for partial in folder.glob(".step-*.pt.*.part"):
            partial.unlink(missing_ok=True)


def read_checkpoint_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training checkpoint's contents (plain tensors and data only: ``weights_only``)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a damaged file can make torch.load raise almost anything
        raise TTSRError(f"{path}: unreadable checkpoint ({exc})") from None


def read_resume_state(path: Path, recipe: Recipe, device: torch.device) -> dict[str, Any]:
    """A checkpoint's contents, with what the recipe keeps in it restored (or one line)."""
    state = read_checkpoint_state(path, device)
    try:
        recipe.load_state(state)
    except TTSRError as exc:
        raise TTSRError(f"{path}: {exc}") from None
    return state


def resume_settings(path: Path, opts: TrainOptions) -> None:
    """Resuming keeps what the checkpoint was trained with: its family must be the one
    asked for, and its configuration (and scale) replace the options'."""
    state = read_checkpoint_state(path)
    arch = state.get("arch", "ttsr")  # checkpoints from before several families
    if arch != opts.arch:
        raise TTSRError(f"{path}: a {arch} checkpoint; resume it with --arch {arch}")
    opts.config = dict(state["config"])
    if "scale" in opts.config:
        opts.scale = int(opts.config["scale"])


class RunLog:
    """``log.jsonl``, one object per logged step, mirrored to TensorBoard event files when
    tensorboard is installed.  On resume, lines past the checkpoint's step are dropped, since
    those steps are about to be run (and logged) again."""

    def __init__(self, folder: Path, resume_step: int) -> None:
        self.path = folder / "log.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if _step_of(line) <= resume_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        self.fh = self.path.open("a", encoding="utf-8")
        self.board = _tensorboard(folder / "tensorboard", resume_step)

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.board is not None and "step" in record:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.board.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.fh.close()
        if self.board is not None:
            self.board.close()


def _tensorboard(folder: Path, resume_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder), purge_step=resume_step or None)


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 10**18  # an unreadable (half-written) line is dropped


def total_steps(opts: TrainOptions, dataset_len: int, world: int) -> int:
    if opts.steps is not None:
        return opts.steps
    if opts.epochs is not None:
        return opts.epochs * math.ceil(dataset_len / (opts.batch_size * world))
    raise TTSRError("give --steps N or --epochs N")


@dataclass
class TrainResult:
    steps: int
    model_path: Path
    total: int  # the steps asked for: more than ``steps`` when the time limit ended the run


#: Units ``--time-limit`` takes, in seconds.
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``'90'``, ``'90s'``, ``'8m'``, ``'1.5h'`` -> seconds."""
    s = text.strip().lower()
    number, unit = (s[:-1], s[-1]) if s and s[-1] in _DURATION_UNITS else (s, "s")
    try:
        value = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise TTSRError(f"cannot read duration '{text}' (try 90s, 8m or 2h)") from None
    if not (value > 0 and math.isfinite(value)):
        raise TTSRError(f"duration must be positive, got '{text}'")
    return value


def train(
    opts: TrainOptions, on_step: Callable[[int, int, dict | None], None] | None = None
) -> TrainResult:
    """Run (or resume) a training job as described by ``opts``.

    ``on_step(step, total, record)`` is called on rank 0 after every step; ``record`` is the
    logged line on logged steps, else None.
    """
    if opts.precision not in ("fp32", "bf16", "fp16"):
        raise TTSRError(f"unknown precision '{opts.precision}' (fp32, bf16 or fp16)")
    env = torchrun_env()
    device = _device_for(opts.device, env)
    if env.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if env.main:
        remove_partial_checkpoints(opts.out / "checkpoints")
    resume_from = list_checkpoints(opts.out / "checkpoints")[-1:] if opts.resume else []
    if resume_from:
        resume_settings(resume_from[0], opts)
    recipe = recipe_for(opts)
    dataset = recipe.dataset()
    val_samples = _validation_samples(opts) if env.main else []
    trainer = (recipe.trainer_class or Trainer)(opts, recipe, env, device, dataset)
    if resume_from:
        trainer.load_checkpoint(resume_from[0])
    total = total_steps(opts, len(dataset), env.world)
    log = RunLog(opts.out, trainer.step) if env.main else None
    try:
        trainer.run(total, log, val_samples, on_step)
    except KeyboardInterrupt:
        if env.main and trainer.step > 0:
            trainer.save_checkpoint()
        raise
    return _finish(trainer, log, total)


def _loop(
    trainer: Trainer,
    total: int,
    log: RunLog | None,
    val_samples: list,
    on_step: Callable[[int, int, dict | None], None] | None,
) -> None:
    """Steps up to ``total``: logging, validating and checkpointing on their schedules."""
    opts, env = trainer.opts, trainer.dist
    loader = torch.utils.data.DataLoader(
        trainer.dataset,
        batch_sampler=list(step_batches(trainer.step, total, opts.batch_size, env)),
        num_workers=opts.workers,
        persistent_workers=False,
    )
    tick = time.perf_counter()
    deadline = None if opts.time_limit is None else time.monotonic() + opts.time_limit
    for batch in loader:
        last = trainer.train_step(batch)
        step, record = trainer.step, None
        if log is not None and (step % opts.log_every == 0 or step == total):
            seconds = time.perf_counter() - tick
            record = {"step": step, **last, **trainer.learning_rates()}
            record["samples_per_s"] = opts.batch_size * env.world / seconds
            log.write(record)
        if log is not None and val_samples and (step % opts.val_every == 0 or step == total):
            log.write({"event": "val", "step": step, **trainer.validate(val_samples)})
        if env.main and on_step:
            on_step(step, total, record)
        tick = time.perf_counter()
        if deadline is not None and step < total and _past(deadline, trainer.device, env):
            if log is not None:
                log.write({"event": "time_limit", "step": step, "seconds": opts.time_limit})
            return
        if env.main and step % opts.checkpoint_every == 0 and step < total:
            trainer.save_checkpoint()


def _past(deadline: float, device: torch.device, env: TorchrunEnv) -> bool:
    """Whether the time is up: on rank 0's clock, so that every rank stops at the same step."""
    flag = torch.tensor([float(time.monotonic() >= deadline)], device=device)
    if env.world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _finish(trainer: Trainer, log: RunLog | None, total: int) -> TrainResult:
    """The last checkpoint, ``model.safetensors`` and the end line, on rank 0."""
    opts, env = trainer.opts, trainer.dist
    model_path = opts.out / "model.safetensors"
    checksums = _gather(trainer.parameter_checksum(), env)
    if log is not None:
        trainer.save_checkpoint()
        extra = {"steps": str(trainer.step), "arch": opts.arch}
        if opts.arch in ("ttsr", "sftgan"):
            extra["preset"] = opts.preset
        if opts.arch == "rl-restore":
            extra["stage"] = opts.stage
        if opts.ema:
            extra["ema"] = str(opts.ema)
        trainer.recipe.save(trainer.exported(), model_path, extra)
        log.write({"event": "end", "step": trainer.step, "rank_checksums": checksums})
        log.close()
    if env.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(steps=trainer.step, model_path=model_path, total=total)


def _validation_samples(opts: TrainOptions) -> list:
    """The ``--val`` folder's images: a CUFED5 test tree (level-1 references) or HR images."""
    if opts.val is None:
        return []
    from ttsr_cli.data import folder_info, list_samples

    if not opts.val.is_dir():
        raise TTSRError(f"{opts.val}: validation folder not found")
    return list_samples(folder_info(opts.val), opts.val)[: opts.val_limit]


def _device_for(name: str, env: TorchrunEnv) -> torch.device:
    device = select_device(name)
    if device.type == "cuda" and env.world > 1:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def _gather(value: float, env: TorchrunEnv) -> list[float]:
    if env.world == 1:
        return [value]
    out: list[float | None] = [None] * env.world
    dist.all_gather_object(out, value)
    return [float(v) for v in out]
