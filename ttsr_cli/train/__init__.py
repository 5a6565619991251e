"""Training any family on the shared loop: ``ttsr train --arch ttsr|csnln|rl-restore|sftgan|
sftgan-seg``."""

from ttsr_cli.train.loop import (
    ARCHS,
    Trainer,
    TrainOptions,
    TrainResult,
    list_checkpoints,
    load_config,
    parse_duration,
    recipe_for,
    step_batches,
    train,
)

__all__ = [
    "ARCHS",
    "TrainOptions",
    "TrainResult",
    "Trainer",
    "list_checkpoints",
    "load_config",
    "parse_duration",
    "recipe_for",
    "step_batches",
    "train",
]
