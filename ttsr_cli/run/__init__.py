"""Running any loaded network on image arrays within a memory budget: one runner per family,
chosen from the descriptor, each taking the same :class:`RunSettings`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
    seg_weights: str | None = None,
    seg_maps: bool = False,
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
        seg_weights=seg_weights,
        seg_maps=seg_maps,
    )


def load_runner(
    model: str | None,
    weights_file: str | None,
    run: RunSettings,
    expect: str | None = None,
    purpose: str = "upscale",
) -> Runner:
    """The runner of ``--model NAME`` or ``--weights FILE`` (the bundled default for
    ``purpose`` without either: upscale, no-reference (an upscale given no reference),
    restore, or evaluate, which takes upscale's default and any model); ``expect``: the
    family the command needs."""
    path = registry.resolve(model, weights_file, purpose)
    network, descriptor = weights.load(path, expect)
    if purpose in ("upscale", "no-reference") and descriptor.scale == 1:
        raise TTSRError(
            f"{path}: a {descriptor.family} model restores at the same size: use ttsr restore, "
            "or ttsr upscale --restore"
        )
    named = registry.entry(model, weights_file, purpose)
    if named is not None:
        registry.check_loaded(named, descriptor.family, descriptor.scale)
        run = _with_named_segmentation(named, run)
    name = next(k for k, v in PRECISIONS.items() if v == run.precision)
    if name not in descriptor.dtypes:
        raise TTSRError(f"--precision {name}: a {descriptor.family} model does not run in it")
    return make_runner(network, descriptor, run, _segmentation(descriptor, run))


def _with_named_segmentation(named: registry.Model, run: RunSettings) -> RunSettings:
    """A named SFT-GAN brings its own segmentation network (fetched like its weights) unless
    ``--seg-weights`` names another or ``--seg-maps`` gives the priors."""
    if named.segmentation is None or run.seg_weights is not None or run.seg_maps:
        return run
    found = registry.fetch(registry.load_registry(), named, "segmentation")
    return replace(run, seg_weights=str(found))


def _segmentation(descriptor: Descriptor, run: RunSettings) -> nn.Module | None:
    """The network that makes an SFT-GAN's priors (``--seg-weights``); refused for a model
    that takes none, required by one that does unless ``--seg-maps`` gives the priors."""
    seg_weights = run.seg_weights
    if descriptor.prior is None:
        if seg_weights is not None:
            raise TTSRError(f"--seg-weights: a {descriptor.family} model takes no priors")
        return None
    if seg_weights is None:
        if run.seg_maps:
            return None
        raise TTSRError(
            f"a {descriptor.family} generator needs its segmentation network: pass "
            "--seg-weights FILE (the authors' segmentation_OST_bic.pth), or give the priors "
            "with --seg-maps"
        )
    from ttsr_cli.archs.blocks import fold_batchnorm
    from ttsr_cli.archs.sftgan.load import load_segmentation

    path = Path(seg_weights)
    state, _ = weights.read_checkpoint(path)
    try:
        network = load_segmentation(state)
    except TTSRError as exc:
        raise TTSRError(f"{path}: {exc}") from None
    return fold_batchnorm(network)  # this copy is only run: never trained or saved


def load_restorer(choice: str, run: RunSettings) -> Runner:
    """The restoration model ``--restore`` names: ``auto`` (the bundled one), a model
    name, or a weights file or folder."""
    if choice == "auto":
        return load_runner(None, None, run, "rl-restore", purpose="restore")
    if choice.startswith(registry.HF_SCHEME) or Path(choice).exists():
        return load_runner(None, choice, run, "rl-restore", purpose="restore")
    return load_runner(choice, None, run, "rl-restore", purpose="restore")


def with_restoration(
    upscaler: Runner, choice: str, restore_references: bool, run: RunSettings
) -> Runner:
    """``upscaler`` behind the restoration ``--restore`` names (``none``: itself)."""
    if choice == "none":
        if restore_references:
            raise TTSRError("--restore-ref restores the references as well: it needs --restore")
        return upscaler
    from ttsr_cli.run.restored import Restored

    return Restored(load_restorer(choice, run), upscaler, restore_references)


def make_runner(
    model: nn.Module,
    descriptor: Descriptor,
    settings: RunSettings,
    segmentation: nn.Module | None = None,
) -> Runner:
    """The runner for ``model``'s family, with ``settings`` applied (an SFT-GAN also needs
    the ``segmentation`` network that makes its priors)."""
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
            settings.channels_last,
        )
    if descriptor.family == "sftgan":
        from ttsr_cli.run.sftgan import SFTGANRunner

        return SFTGANRunner(
            model,
            descriptor,
            segmentation,
            settings.device,
            settings.precision,
            settings.memory_budget,
            settings.tile,
            channels_last=settings.channels_last,
        )
    raise ValueError(f"no runner for the {descriptor.family} family")


__all__ = [
    "RunSettings",
    "Runner",
    "TileCallback",
    "Upscaled",
    "load_restorer",
    "load_runner",
    "make_runner",
    "settings",
    "with_restoration",
]
