"""Network families: one package each, and the one place that tells them apart.

A family package (``archs/NAME/``) holds its network, and in ``load.py`` a :class:`Family`:
a key test that recognises its state dicts from their keys alone, a loader that reads the
configuration off tensor shapes and loads strictly, and the :class:`Descriptor` the rest of
the program uses.  :func:`load` tries the families in turn; a state dict that fits none fails
with one line saying what was found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ttsr_cli.archs.descriptor import Descriptor, Tiling
from ttsr_cli.errors import TTSRError

StateDict = dict[str, torch.Tensor]
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Family:
    """What a family package offers the loader.

    ``detect(state)``: whether the keys are this family's (keys only, never values).
    ``build(state, declared)``: the module with ``state`` loaded strictly and its
    descriptor; ``declared`` is the configuration a file's metadata states (may be empty),
    checked against the one read off the shapes.  ``create(config)``: a fresh, randomly
    initialised module and descriptor from a configuration dict (training).
    ``normalize(state)``: the family's key clean-up before ``build`` (prefixes its
    published files carry, copies kept only for a loss).  ``describe(module)``: the
    descriptor of one of this family's modules, None for any other module.
    """

    name: str
    summary: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    build: Callable[[StateDict, Mapping[str, Any]], tuple[nn.Module, Descriptor]]
    create: Callable[[Mapping[str, Any]], tuple[nn.Module, Descriptor]]
    normalize: Callable[[Mapping[str, torch.Tensor]], StateDict]
    describe: Callable[[nn.Module], Descriptor | None]


def families() -> dict[str, Family]:
    """Every family by name (imported on first use: each pulls in its network code)."""
    from ttsr_cli.archs.csnln.load import FAMILY as CSNLN
    from ttsr_cli.archs.rlrestore.load import FAMILY as RL_RESTORE
    from ttsr_cli.archs.sftgan.load import FAMILY as SFTGAN
    from ttsr_cli.archs.ttsr.load import FAMILY as TTSR

    return {family.name: family for family in (TTSR, CSNLN, RL_RESTORE, SFTGAN)}


def family(name: str) -> Family:
    """The family called ``name``; an unknown name is one line listing the known ones."""
    known = families()
    if name not in known:
        raise TTSRError(f"unknown architecture '{name}' (known: {', '.join(known)})")
    return known[name]


def detect(state: Mapping[str, torch.Tensor]) -> Family:
    """The family whose keys ``state`` has; one line naming what was found otherwise."""
    for candidate in families().values():
        if candidate.detect(state):
            return candidate
    known = ", ".join(family.summary for family in families().values())
    raise TTSRError(f"not a checkpoint of a known network ({known}): {_sample_keys(state)}")


def load(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    expect: str | None = None,
) -> tuple[nn.Module, Descriptor]:
    """Module and descriptor for a state dict of any family, loaded strictly.

    ``metadata`` may name the family (``arch``) and state the configuration (``config``,
    already parsed); ``expect`` is the family the caller needs: a file of another family is
    refused in one line that says what it is.
    """
    metadata = metadata or {}
    found = detect(state)
    stated = metadata.get("arch")
    if stated is not None and stated != found.name:
        raise TTSRError(f"metadata says a {stated} network but the tensors are {found.name}'s")
    if expect is not None and expect != found.name:
        raise TTSRError(f"a {found.summary} checkpoint, where a {family(expect).summary} is needed")
    return found.build(found.normalize(state), metadata.get("config") or {})


def describe(model: nn.Module) -> Descriptor:
    """The descriptor of a module of any family (what a file saved from it will carry)."""
    for candidate in families().values():
        found = candidate.describe(model)
        if found is not None:
            return found
    raise TypeError(f"{type(model).__name__} is not a network of any known family")


def _sample_keys(state: Mapping[str, torch.Tensor]) -> str:
    keys = list(state)
    if not keys:
        return "it holds no tensors"
    shown = ", ".join(keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"it holds {len(keys)} tensor{'s' if len(keys) > 1 else ''}: {shown}{more}"


def check_declared(name: str, declared: Mapping[str, Any], actual: Mapping[str, Any]) -> None:
    """A file's metadata may state any subset of the configuration; each stated field must be
    one the family has and match what the tensors say (``name`` names the family)."""
    unknown = sorted(set(declared) - set(actual))
    if unknown:
        raise TTSRError(f"{name} metadata has unknown config fields: {', '.join(unknown)}")
    differ = [key for key in actual if key in declared and declared[key] != actual[key]]
    if differ:
        said = ", ".join(f"{key} {declared[key]}" for key in differ)
        found = ", ".join(f"{key} {actual[key]}" for key in differ)
        raise TTSRError(f"{name} metadata says {said} but tensors say {found}")


def load_strictly(
    model: M, state: Mapping[str, torch.Tensor], name: str, assign: bool = False
) -> M:
    """``model`` with ``state`` loaded strictly, in eval mode; a mismatch is one line
    (:func:`check_state_dict`) naming ``name``.  ``assign``: the model's tensors become
    ``state``'s (for a model built on the meta device, whose values are never computed)."""
    check_state_dict(model, state, name)
    model.load_state_dict(state, strict=True, assign=assign)
    return model.eval()


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Fail with one line naming missing, unexpected or mis-shaped tensors (before
    ``load_state_dict``, whose own message is many lines)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise TTSRError(f"checkpoint does not fit {name}: " + "; ".join(problems))


__all__ = [
    "Descriptor",
    "Family",
    "StateDict",
    "Tiling",
    "check_declared",
    "check_state_dict",
    "describe",
    "detect",
    "families",
    "family",
    "load",
    "load_strictly",
]
