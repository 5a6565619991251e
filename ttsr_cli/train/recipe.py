"""What one family's training needs beyond the shared loop (:mod:`ttsr_cli.train.loop`):
its model, its data, its optimiser groups and its loss terms.  The loop does the rest the
same way for every family: devices, DDP, precision, checkpoints, exact resume, logging."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ttsr_cli.train.loop import Trainer, TrainOptions

#: Loss terms of one step (tensors), values to log beside them, and each term's weight.
Terms = tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float]]


class Recipe:
    """Base of the per-family recipes; ``arch`` names the family (``--arch``)."""

    arch = ""
    #: ``ttsr evaluate`` protocol the validation reports.
    protocol = "ttsr"
    #: Samples per step and process, and HR patch side, when the options give none.
    default_batch = 16
    default_patch = 96
    #: The class that runs the steps: None for the shared supervised ``Trainer``; a stage
    #: with a loop of its own (RL-Restore's Q-learning) gives one with the same interface.
    trainer_class: type | None = None

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts

    def create(self) -> nn.Module:
        """A freshly initialised model of ``opts.config``."""
        raise NotImplementedError

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups, each with its ``lr`` (logged as ``lr``, ``lr_...``)."""
        return [{"params": model.parameters(), "lr": self.opts.lr, "name": "lr"}]

    def attach(self, trainer: Trainer) -> None:
        """Set up what the loss needs once the model is on its device (critics, VGG)."""

    def terms(self, trainer: Trainer, batch: Mapping[str, torch.Tensor]) -> Terms:
        """The forward pass and the loss terms of one step (under the trainer's autocast)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps beyond model, optimiser and scheduler."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` saved."""

    def save(self, model: nn.Module, path: Path, extra: Mapping[str, str]) -> None:
        """Write the trained network (``model.safetensors``), ``extra`` in its metadata."""
        from ttsr_cli.weights import save_safetensors

        save_safetensors(model, path, extra)
