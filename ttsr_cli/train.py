"""Training TTSR as the paper does, on one CPU or many GPUs, resumable at any step.

Presets: ``rec`` trains with the L1 reconstruction loss only (TTSR-rec); ``gan`` trains two
epochs with L1 only, then with reconstruction 1, perceptual 1e-2, transferal perceptual 1e-2
and adversarial 1e-3 (TTSR).  Adam (0.9, 0.999) with a separate, smaller learning rate for the
LTE; the critic uses Adam (0, 0.9) and takes two steps per generator step.

Under ``torchrun`` the generator is wrapped in DistributedDataParallel (nccl on GPU, gloo on
CPU); every rank draws a distinct slice of each global batch and only rank 0 logs and writes.
Every random choice derives from (seed, step, rank), so a run resumed from a checkpoint goes
on exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ttsr_cli.atomic import atomic_path
from ttsr_cli.devices import select_device
from ttsr_cli.errors import TTSRError
from ttsr_cli.losses import (
    critic_loss,
    generator_adversarial_loss,
    matching_loss,
    perceptual_loss,
    reconstruction_loss,
    transferal_perceptual_loss,
)
from ttsr_cli.nn import TTSR, TTSRConfig
from ttsr_cli.nn.discriminator import Discriminator
from ttsr_cli.pairs import PairDataset
from ttsr_cli.weights import save_safetensors

CONFIGS = {
    "tiny": TTSRConfig(n_feats=16, num_res_blocks=(1, 1, 1, 1), lte_widths=(16, 32, 64)),
    # CPU-trainable: narrow, few blocks, and a global bicubic skip (see TTSRConfig).
    "lite": TTSRConfig(
        n_feats=32, num_res_blocks=(4, 4, 2, 1), lte_widths=(16, 32, 64), global_skip=True
    ),
    "paper": TTSRConfig(),
}
#: Loss weights after the warm-up: reconstruction, perceptual, transferal, adversarial.
PRESETS = {
    "rec": {"rec": 1.0},
    "gan": {"rec": 1.0, "per": 1e-2, "tpl": 1e-2, "adv": 1e-3},
}
GAN_WARMUP_EPOCHS = 2
CRITIC_STEPS = 2
_CHECKPOINT = re.compile(r"step-(\d+)\.pt$")


@dataclass
class TrainOptions:
    """Everything ``ttsr train`` accepts; defaults are the paper's."""

    data: Path | Sequence[Path]
    out: Path
    config: TTSRConfig = field(default_factory=TTSRConfig)
    preset: str = "rec"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 9
    patch_size: int = 160
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


def load_config(name: str) -> TTSRConfig:
    """A named configuration (tiny, lite, paper) or a TOML file of TTSRConfig fields."""
    if name in CONFIGS:
        return CONFIGS[name]
    path = Path(name)
    if not path.is_file():
        raise TTSRError(f"unknown configuration '{name}' (tiny, lite, paper or a .toml file)")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text())
        return TTSRConfig.from_dict(data.get("model", data))
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise TTSRError(f"{path}: invalid configuration ({exc})") from None


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


def step_batches(start: int, total: int, batch: int, dist_info: Distributed) -> Iterator[list[int]]:
    """Sample ids of this rank's share of global batches ``start .. total-1``."""
    per_step = batch * dist_info.world
    for step in range(start, total):
        first = step * per_step + dist_info.rank * batch
        yield list(range(first, first + batch))


class Trainer:
    """Holds the model, optimisers and critic; runs steps; saves and restores checkpoints."""

    def __init__(
        self, opts: TrainOptions, dist_info: Distributed, device: torch.device, dataset: PairDataset
    ) -> None:
        self.opts, self.dist, self.device, self.dataset = opts, dist_info, device, dataset
        torch.manual_seed(opts.seed)
        self.model = TTSR(opts.config).to(device)
        self.weights = PRESETS[opts.preset]
        self.warmup_steps = self._warmup_steps()
        self.vgg = None
        self._init_from_vgg()
        if opts.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            [
                {"params": self.model.MainNet.parameters(), "lr": opts.lr},
                {
                    "params": [p for p in self.model.LTE.parameters() if p.requires_grad],
                    "lr": opts.lr_lte,
                },
            ],
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=opts.precision == "fp16")
        decay = opts.lr_decay_steps or 10**12
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, decay, opts.lr_gamma)
        self.critic = self.critic_optimizer = None
        if "adv" in self.weights:
            self.critic = Discriminator(opts.patch_size).to(device)
            self.critic_optimizer = torch.optim.Adam(
                self.critic.parameters(), lr=opts.lr, betas=(0.0, 0.9), eps=1e-8
            )
        self.net: nn.Module = self.model
        self.critic_net: nn.Module | None = self.critic
        if dist_info.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            if self.critic is not None:
                self.critic_net = nn.parallel.DistributedDataParallel(self.critic, device_ids=ids)
        if opts.compile:
            self.net = torch.compile(self.net)
        self.step = 0

    def _warmup_steps(self) -> int:
        if self.opts.preset != "gan":
            return 0
        per_step = self.opts.batch_size * self.dist.world
        return GAN_WARMUP_EPOCHS * math.ceil(len(self.dataset) / per_step)

    def _init_from_vgg(self) -> None:
        from ttsr_cli import vgg_weights

        lte_init = self.opts.lte_init
        if lte_init == "auto":
            lte_init = "vgg19" if self.model.LTE.widths == (64, 128, 256) else "random"
        needs_vgg = lte_init != "random" or "per" in self.weights
        if not needs_vgg:
            return
        layers = vgg_weights.vgg19_features(
            self.opts.vgg if lte_init in ("vgg19", "random") else lte_init
        )
        if lte_init != "random":
            vgg_weights.init_lte(self.model.LTE, layers)
        if "per" in self.weights:
            self.vgg = vgg_weights.perceptual_network(layers).to(self.device)

    # -- one step -------------------------------------------------------------------------

    def autocast(self):
        precision = self.opts.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One generator step (and, once adversarial training is on, two critic steps)."""
        torch.manual_seed(self.opts.seed * 1_000_003 + self.step * 4099 + self.dist.rank)
        x = {k: self._to_device(v) for k, v in batch.items()}
        full = self.step >= self.warmup_steps
        weights = dict(self.weights if full else {"rec": 1.0})
        if self.opts.match_loss:
            weights["match"] = self.opts.match_loss
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        with self.autocast():
            out = self.net(x["lr"], x["lrsr"], x["ref"], x["refsr"])
            terms["rec"] = reconstruction_loss(out.sr, x["hr"])
            if "per" in weights:
                terms["per"] = perceptual_loss(self.vgg, out.sr, x["hr"])
            if "tpl" in weights:
                terms["tpl"] = transferal_perceptual_loss(self.model.LTE, out)
            if "match" in weights:
                terms["match"] = matching_loss(self.model.LTE, x["lrsr"])
        logged: dict[str, float] = {}
        if "adv" in weights:
            logged["critic"] = self._critic_steps(out.sr.float(), x["hr"])
            self.critic.requires_grad_(False)
            terms["adv"] = generator_adversarial_loss(self.critic, out.sr.float())
            self.critic.requires_grad_(True)
        loss = sum(weights[name] * value for name, value in terms.items())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        logged.update({name: float(value.detach()) for name, value in terms.items()})
        logged["loss"] = float(loss.detach())
        return logged

    def _critic_steps(self, fake: torch.Tensor, real: torch.Tensor) -> float:
        value = 0.0
        for _ in range(CRITIC_STEPS):
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss = critic_loss(self.critic_net, fake, real)
            loss.backward()
            self.critic_optimizer.step()
            value = float(loss.detach())
        return value

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.opts.channels_last else t

    # -- checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.opts.out / "checkpoints"

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N.pt``, written atomically; only the newest ``keep`` are kept."""
        state = {
            "step": self.step,
            "seed": self.opts.seed,
            "preset": self.opts.preset,
            "config": self.opts.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        path = self.checkpoint_dir / f"step-{self.step}.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for old in list_checkpoints(self.checkpoint_dir)[: -self.opts.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # a damaged file can make torch.load raise almost anything
            raise TTSRError(f"{path}: unreadable checkpoint ({exc})") from None
        if state.get("preset") != self.opts.preset:
            raise TTSRError(f"{path}: was trained with --preset {state.get('preset')}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.step = int(state["step"])

    def validate(self, samples: list) -> dict[str, float | None]:
        """PSNR/SSIM (TTSR protocol) of the current weights and of bicubic on ``samples``."""
        from ttsr_cli.evaluate import Benchmark, run
        from ttsr_cli.pipeline import Upscaler

        upscaler = Upscaler(self.model, self.device, channels_last=self.opts.channels_last)
        report = run(Benchmark("val", "ttsr", samples, upscaler))
        return {
            f"val_{m}": report.mean(m) for m in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
        }

    def learning_rates(self) -> dict[str, float]:
        groups = self.optimizer.param_groups
        return {"lr": groups[0]["lr"], "lr_lte": groups[1]["lr"]}

    def parameter_checksum(self) -> float:
        """Sum of all weights in float64: equal across ranks when DDP keeps them in step."""
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (temporary ``.part`` files never match), oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_config(path: Path) -> TTSRConfig:
    """The configuration a checkpoint was trained with (resuming keeps it)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return TTSRConfig.from_dict(state["config"])


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
    last: dict[str, float]


def train(
    opts: TrainOptions, on_step: Callable[[int, int, dict | None], None] | None = None
) -> TrainResult:
    """Run (or resume) a training job as described by ``opts``.

    ``on_step(step, total, record)`` is called on rank 0 after every step; ``record`` is the
    logged line on logged steps, else None.
    """
    if opts.preset not in PRESETS:
        raise TTSRError(f"unknown preset '{opts.preset}' (rec or gan)")
    if opts.precision not in ("fp32", "bf16", "fp16"):
        raise TTSRError(f"unknown precision '{opts.precision}' (fp32, bf16 or fp16)")
    dist_info = Distributed.from_env()
    device = _device_for(opts.device, dist_info)
    if dist_info.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    resume_from = list_checkpoints(opts.out / "checkpoints")[-1:] if opts.resume else []
    if resume_from:
        opts.config = checkpoint_config(resume_from[0])
    dataset = PairDataset(opts.data, opts.patch_size, opts.seed)
    val_samples = _validation_samples(opts) if dist_info.main else []
    trainer = Trainer(opts, dist_info, device, dataset)
    if resume_from:
        trainer.load_checkpoint(resume_from[0])
    total = total_steps(opts, len(dataset), dist_info.world)
    log = RunLog(opts.out, trainer.step) if dist_info.main else None
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=list(step_batches(trainer.step, total, opts.batch_size, dist_info)),
        num_workers=opts.workers,
        persistent_workers=False,
    )
    last: dict[str, float] = {}
    tick = time.perf_counter()
    try:
        for batch in loader:
            last = trainer.train_step(batch)
            step = trainer.step
            record = None
            if log is not None and (step % opts.log_every == 0 or step == total):
                seconds = time.perf_counter() - tick
                record = {
                    "step": step,
                    **last,
                    **trainer.learning_rates(),
                    "samples_per_s": opts.batch_size * dist_info.world / seconds,
                }
                log.write(record)
            if val_samples and (step % opts.val_every == 0 or step == total):
                log.write({"event": "val", "step": step, **trainer.validate(val_samples)})
            if dist_info.main and on_step:
                on_step(step, total, record)
            tick = time.perf_counter()
            if dist_info.main and step % opts.checkpoint_every == 0 and step < total:
                trainer.save_checkpoint()
    except KeyboardInterrupt:
        if dist_info.main and trainer.step > 0:
            trainer.save_checkpoint()
        raise
    model_path = opts.out / "model.safetensors"
    checksums = _gather(trainer.parameter_checksum(), dist_info)
    if dist_info.main:
        trainer.save_checkpoint()
        save_safetensors(
            trainer.model, model_path, {"steps": str(trainer.step), "preset": opts.preset}
        )
        log.write({"event": "end", "step": trainer.step, "rank_checksums": checksums})
        log.close()
    if dist_info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(steps=trainer.step, model_path=model_path, last=last)


def _validation_samples(opts: TrainOptions) -> list:
    """The ``--val`` folder's images: a CUFED5 test tree (level-1 references) or HR images."""
    if opts.val is None:
        return []
    from ttsr_cli.data import folder_info, list_samples

    if not opts.val.is_dir():
        raise TTSRError(f"{opts.val}: validation folder not found")
    return list_samples(folder_info(opts.val), opts.val)[: opts.val_limit]


def _device_for(name: str, dist_info: Distributed) -> torch.device:
    device = select_device(name)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


def _gather(value: float, dist_info: Distributed) -> list[float]:
    if dist_info.world == 1:
        return [value]
    out: list[float | None] = [None] * dist_info.world
    dist.all_gather_object(out, value)
    return [float(v) for v in out]
