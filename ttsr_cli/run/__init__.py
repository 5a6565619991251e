"""Running any loaded network on image arrays within a memory budget: one runner per family,
chosen from the descriptor, each taking the same :class:`RunSettings`."""

from __future__ import annotations

from torch import nn

from ttsr_cli import registry, weights
from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.devices import PRECISIONS, parse_size, select_device, select_precision
from ttsr_cli.errors import TTSRError
from ttsr_cli.run.common import Runner, RunSettings, TileCallback, Upscaled


def settings(
    device: str = "auto",
    precision: str = "auto",
    max_memory: str | None = None,
    tile: int | None = None,
    search: str = "auto",
    attention: str = "auto",
    max_steps: int | None = None,
) -> RunSettings:
    """:class:`RunSettings` from the command line's words (``--device cuda``,
    ``--max-memory 2GB``): every command that runs a model reads them the same way."""
    target = select_device(device)
    return RunSettings(
        device=target,
        precision=select_precision(precision, target),
        memory_budget=parse_size(max_memory) if max_memory else None,
        tile=tile,
        search=search,
        attention=attention,
        max_steps=max_steps,
    )


def load_runner(
    model: str | None,
    weights_file: str | None,
    run: RunSettings,
    expect: str | None = None,
    purpose: str = "upscale",
) -> Runner:
    """The runner of ``--model NAME`` or ``--weights FILE`` (the bundled default for
    ``purpose`` without either); ``expect``: the family the command needs."""
    path = registry.resolve(model, weights_file, purpose)
    network, descriptor = weights.load(path, expect)
    if purpose == "upscale" and descriptor.scale == 1:
        raise TTSRError(
            f"{path}: a {descriptor.family} model restores at the same size: use ttsr restore, "
            "or ttsr upscale --restore"
        )
    named = registry.entry(model, weights_file, purpose)
    if named is not None:
        registry.check_loaded(named, descriptor.family, descriptor.scale)
    name = next(k for k, v in PRECISIONS.items() if v == run.precision)
    if name not in descriptor.dtypes:
        raise TTSRError(f"--precision {name}: a {descriptor.family} model does not run in it")
    return make_runner(network, descriptor, run)


def make_runner(model: nn.Module, descriptor: Descriptor, settings: RunSettings) -> Runner:
    """The runner for ``model``'s family, with ``settings`` applied."""
    if descriptor.family == "ttsr":
        from ttsr_cli.run.ttsr import TTSRRunner

        return TTSRRunner(
            model,  # type: ignore[arg-type]
            settings.device,
            precision=settings.precision,
            memory_budget=settings.memory_budget,
            tile=settings.tile,
            search=settings.search,
            channels_last=settings.channels_last,
            descriptor=descriptor,
        )
    if descriptor.family == "csnln":
        from ttsr_cli.run.csnln import CSNLNRunner

        return CSNLNRunner(
            model,
            descriptor,
            settings.device,
            settings.precision,
            settings.memory_budget,
            settings.tile,
            settings.attention,
        )
    if descriptor.family == "rl-restore":
        from ttsr_cli.run.rlrestore import RLRestoreRunner

        return RLRestoreRunner(
            model,
            descriptor,
            settings.device,
            settings.precision,
            settings.memory_budget,
            settings.tile,
            settings.max_steps,
            settings.keep_steps,
        )
    raise ValueError(f"no runner for the {descriptor.family} family")


__all__ = [
    "RunSettings",
    "Runner",
    "TileCallback",
    "Upscaled",
    "load_runner",
    "make_runner",
    "settings",
]
