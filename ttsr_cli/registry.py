"""Named models and where their weights come from: bundled in the package, or the Hub.

``models/registry.toml`` (installed as the package data ``ttsr_cli.models``, so a wheel carries
it) names each model, its source, its sha256 and its card.  :func:`resolve` turns what the
user passed (``--model NAME``, ``--weights FILE`` or ``--weights hf://OWNER/REPO/FILE[@REV]``,
or nothing: the bundled default) into a local file for :mod:`ttsr_cli.weights` to load.

Downloads go through ``huggingface_hub.hf_hub_download``, so its cache, resumable downloads
and ``HF_HOME`` / ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` behave as in every other Hub tool.  This
module imports neither torch nor huggingface_hub at import time: listing the registry is
cheap and works in an install without them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ttsr_cli.errors import TTSRError, first_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: A registry file to use instead of the packaged one (its files and cards sit beside it).
REGISTRY_ENV = "TTSR_REGISTRY"
HF_SCHEME = "hf://"
#: Seconds a connection to the Hub may take before it counts as unreachable.
HUB_PROBE_TIMEOUT = 3.0
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class HubFile:
    """A file in a Hub model repository; ``repo`` empty means not known (set ``repo_env``)."""

    repo: str
    file: str
    revision: str | None = None
    repo_env: str | None = None

    def repo_id(self) -> str:
        """The repository, the environment variable ``repo_env`` taking precedence."""
        return (os.environ.get(self.repo_env) if self.repo_env else None) or self.repo

    def url(self) -> str:
        repo = self.repo_id() or f"${self.repo_env}"
        return f"{HF_SCHEME}{repo}/{self.file}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Model:
    """One registry entry: exactly one of ``file`` (bundled) and ``hub`` is set.  ``family``
    (a package of :mod:`ttsr_cli.archs`), ``scale`` and ``reference`` (whether it searches a
    reference image) are stated here so that ``ttsr models`` can list them without loading
    anything; loading checks them against the weights.  ``segmentation``: the file of the
    network that makes an SFT-GAN's priors, stored where the weights are (bundled beside them,
    or in the same Hub repository and revision), checked against ``segmentation_sha256``."""

    name: str
    description: str
    license: str
    card: str
    family: str
    scale: int
    reference: bool
    sha256: str = ""
    file: str | None = None
    hub: HubFile | None = None
    config: dict[str, Any] = field(default_factory=dict)
    published: dict[str, list[float]] = field(default_factory=dict)
    segmentation: str | None = None
    segmentation_sha256: str = ""

    def source(self, part: str = "weights") -> str:
        where, _ = self.part(part)
        return where.url() if isinstance(where, HubFile) else f"bundled:{where}"

    def part(self, which: str = "weights") -> tuple[HubFile | str, str]:
        """Where one of the entry's files is (a Hub file, or a bundled file's name) and its
        sha256: ``weights``, or ``segmentation`` (SFT-GAN's priors network)."""
        if which == "weights":
            return (self.hub or str(self.file)), self.sha256
        if which != "segmentation" or self.segmentation is None:
            raise TTSRError(f"model '{self.name}' has no {which} file")
        where = replace(self.hub, file=self.segmentation) if self.hub else self.segmentation
        return where, self.segmentation_sha256


@dataclass(frozen=True)
class Registry:
    """The models by name, the default's name, and the folder holding bundled files and
    cards.  ``default_restore``: the model ``ttsr restore`` (and ``upscale --restore auto``)
    uses when none is named (empty: none, and ``restore`` then needs a model named).
    ``default_no_reference``: the model an upscale given no reference uses (empty: the
    default), the bundled model that measures better on Urban100 without one."""

    default: str
    models: dict[str, Model]
    root: Path
    default_restore: str = ""
    default_no_reference: str = ""

    def default_for(self, purpose: str) -> str:
        """The default model's name for ``upscale``, ``no-reference`` (an upscale given no
        reference) or ``restore``."""
        if purpose == "restore":
            return self.default_restore
        if purpose == "no-reference":
            return self.default_no_reference or self.default
        return self.default

    def get(self, name: str) -> Model:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise TTSRError(f"unknown model '{name}' (known: {known}; see ttsr models)")
        return self.models[name]


def registry_path() -> Path:
    """``$TTSR_REGISTRY``, else the installed package data, else ``models/`` of a checkout run
    without installing (``PYTHONPATH=.``), where ``ttsr_cli.models`` does not exist."""
    if override := os.environ.get(REGISTRY_ENV):
        return Path(override)
    try:
        return Path(str(resources.files("ttsr_cli.models"))) / "registry.toml"
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "models" / "registry.toml"


def load_registry(path: Path | None = None) -> Registry:
    """Parse and check the registry, failing with one line that names the file and entry."""
    path = path or registry_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TTSRError(f"{path}: cannot read the model registry ({exc})") from None
    models = {}
    for name, table in data.get("models", {}).items():
        try:
            models[name] = _parse_model(name, table)
        except KeyError as exc:
            raise TTSRError(f"{path}: model '{name}': missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise TTSRError(f"{path}: model '{name}': {exc}") from None
    keys = ("default", "default_restore", "default_no_reference")
    defaults = {key: data.get(key, "") for key in keys}
    for key, name in defaults.items():
        if name in models and models[name].file is None:
            raise TTSRError(f"{path}: the {key} model '{name}' must be bundled, not on the Hub")
        if key != "default" and name and name not in models:
            raise TTSRError(f"{path}: the {key} model '{name}' is not one of its models")
    return Registry(models=models, root=path.parent, **defaults)


def _parse_model(name: str, table: dict[str, Any]) -> Model:
    if ("file" in table) == ("hub" in table):
        raise ValueError("needs exactly one of 'file' (bundled) and 'hub'")
    hub = HubFile(**table["hub"]) if "hub" in table else None
    sha256 = _digest(table.get("sha256", ""))
    segmentation = dict(table.get("segmentation", {}))
    description, license_, card = table["description"], table["license"], table["card"]
    family, scale, reference = str(table["family"]), table["scale"], table["reference"]
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return Model(
        name=name,
        description=description,
        license=license_,
        card=card,
        family=family,
        scale=scale,
        reference=bool(reference),
        sha256=sha256,
        file=table.get("file"),
        hub=hub,
        config=dict(table.get("config", {})),
        published=dict(table.get("published", {})),
        segmentation=segmentation.get("file"),
        segmentation_sha256=_digest(segmentation.get("sha256", "")),
    )


def _digest(text: str) -> str:
    sha256 = text.lower()
    if sha256 and (len(sha256) != 64 or set(sha256) - set("0123456789abcdef")):
        raise ValueError("sha256 must be 64 hex digits or empty")
    return sha256


def resolve(
    model: str | None = None, weights: str | Path | None = None, purpose: str = "upscale"
) -> Path:
    """The local weights file for ``--model`` or ``--weights`` (a path or an ``hf://`` URL),
    or for the bundled default for ``purpose`` (upscale, no-reference, restore) when neither
    is given; downloads and checks as needed."""
    if model and weights:
        raise TTSRError("pass either --model or --weights, not both")
    if weights is not None:
        text = str(weights)
        return _download(parse_hf_url(text)) if text.startswith(HF_SCHEME) else Path(text)
    registry = load_registry()
    if model:
        return fetch(registry, registry.get(model))
    return _default(registry, purpose)


def entry(
    model: str | None = None, weights: str | Path | None = None, purpose: str = "upscale"
) -> Model | None:
    """The registry entry :func:`resolve` uses for these options (None for ``--weights``)."""
    if weights is not None:
        return None
    registry = load_registry()
    return registry.get(model) if model else registry.models.get(registry.default_for(purpose))


def chosen_name(
    model: str | None = None, weights: str | Path | None = None, purpose: str = "upscale"
) -> str:
    """How reports name the model these options run: ``--model``, ``--weights``, or the
    registry's default, said to be the default (a user who named none should know)."""
    if weights is not None:
        return str(weights)
    if model:
        return model
    case = " without a reference" if purpose == "no-reference" else ""
    return f"{load_registry().default_for(purpose)} (the bundled default{case})"


def check_loaded(entry: Model, family: str, scale: int) -> None:
    """A named model's weights must be the network its entry states: a file of another
    family or scale is refused (one line), never run as if it were the named model."""
    if (family, scale) != (entry.family, entry.scale):
        raise TTSRError(
            f"model '{entry.name}': its weights are a x{scale} {family} network, but the "
            f"registry states a x{entry.scale} {entry.family} one"
        )


def _default(registry: Registry, purpose: str) -> Path:
    name = registry.default_for(purpose)
    entry = registry.models.get(name)
    if purpose == "restore" and entry is None:
        raise TTSRError(
            "the model registry has no default restoration model (default_restore): name "
            "one with --model or --weights (ttsr models lists them; the RL-Restore authors' "
            "checkpoint folder loads as it is)"
        )
    if entry is None or not (registry.root / str(entry.file)).is_file():
        raise TTSRError(
            f"the default model '{name}' is not in {registry.root}: pass "
            "--weights FILE (e.g. TTSR.pt), --weights hf://OWNER/REPO/FILE, or --model NAME "
            "(ttsr models lists them)"
        )
    return fetch(registry, entry)


def parse_hf_url(url: str) -> HubFile:
    """``hf://OWNER/REPO/PATH/IN/REPO[@REVISION]`` -> the Hub file it names."""
    rest = url.removeprefix(HF_SCHEME)
    spec, at, revision = rest.rpartition("@")
    if not at:
        spec, revision = rest, ""
    parts = spec.split("/", 2)
    if len(parts) != 3 or not all(parts) or (at and not revision):
        raise TTSRError(f"{url}: expected hf://OWNER/REPO/PATH/TO/FILE[@REVISION]")
    return HubFile(f"{parts[0]}/{parts[1]}", parts[2], revision or None)


def fetch(registry: Registry, entry: Model, part: str = "weights") -> Path:
    """One of the entry's files (:meth:`Model.part`) as a local file whose sha256 (when
    known) has been checked."""
    where, _ = entry.part(part)
    if not isinstance(where, HubFile):
        path = registry.root / where
        if not path.is_file():
            raise TTSRError(f"model '{entry.name}': bundled file {path} is missing")
        _check_sha256(entry, part, path, downloaded=False)
        return path
    if not where.repo_id():
        option = "--weights" if part == "weights" else "--seg-weights"
        raise TTSRError(
            f"model '{entry.name}': its Hub repository is not known; set "
            f"{where.repo_env}=OWNER/REPO (the repository holding {where.file}) or "
            f"pass {option} with a local copy of {where.file}"
        )
    path = _download(where)
    _check_sha256(entry, part, path, downloaded=True)
    return path


def hub_file(repo: str, file: str, revision: str | None = None) -> Path:
    """``hf_hub_download``, except when the Hub's host cannot be reached within
    :data:`HUB_PROBE_TIMEOUT`: then the cached copy without asking the Hub, or at once the
    client's ``LocalEntryNotFoundError``.  Offline without ``HF_HUB_OFFLINE``, the client
    itself retries for about 40 s and prints its own warnings before giving up."""
    from huggingface_hub import constants, hf_hub_download

    offline = constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT)
    return Path(hf_hub_download(repo, file, revision=revision, local_files_only=offline))


def _reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the endpoint's host opens (DNS included)."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), HUB_PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def _download(hub: HubFile) -> Path:
    """Through the Hub cache; every failure becomes one line naming the file."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = hub.url()
    try:
        return hub_file(hub.repo_id(), hub.file, hub.revision)
    except LocalEntryNotFoundError:  # first: it subclasses EntryNotFoundError
        raise TTSRError(
            f"{url}: not in the Hugging Face cache and the Hub cannot be reached (offline, or "
            "HF_HUB_OFFLINE is set); connect once to download it, or pass a local --weights file"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise TTSRError(f"{url}: not found on the Hugging Face Hub") from None
    except Exception as exc:  # HTTP errors, whose library (requests, httpx) varies by version
        raise TTSRError(f"{url}: download failed ({first_line(exc)})") from None


def _check_sha256(entry: Model, part: str, path: Path, downloaded: bool) -> None:
    """A mismatch is an error; a downloaded file that fails is removed from the Hub cache,
    so the next run downloads it again instead of finding the same bad bytes."""
    _, expected = entry.part(part)
    if not expected:
        return
    actual = sha256_of(path)
    if actual == expected:
        return
    action = ""
    if downloaded:
        _evict(path)
        action = "; the cached copy was deleted, the next run downloads it again"
    raise TTSRError(
        f"model '{entry.name}': {entry.source(part)} has sha256 {actual[:12]}..., expected "
        f"{expected[:12]}... (damaged or changed upstream){action}"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _evict(path: Path) -> None:
    """Delete a cached snapshot entry and the blob it links to (a copy where no symlinks)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def status(registry: Registry, entry: Model) -> str:
    """``bundled``/``missing`` for bundled files; ``cached``/``not downloaded`` for Hub files
    (looked up in the cache only, never on the network); ``repo unknown`` without a repo.  An
    entry with a segmentation file is as ready as the less ready of its two files."""
    parts = ["weights"] + (["segmentation"] if entry.segmentation else [])
    found = [_part_status(registry, entry.part(part)[0]) for part in parts]
    return next((s for s in found if s not in ("bundled", "cached")), found[0])


def _part_status(registry: Registry, where: HubFile | str) -> str:
    if not isinstance(where, HubFile):
        return "bundled" if (registry.root / where).is_file() else "missing"
    if not where.repo_id():
        return "repo unknown"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(where.repo_id(), where.file, revision=where.revision)
    return "cached" if isinstance(cached, str) else "not downloaded"


def describe(registry: Registry) -> dict[str, Any]:
    """The registry as plain data for ``ttsr models --json``."""
    rows = []
    for entry in registry.models.values():
        rows.append(
            {
                "name": entry.name,
                "description": entry.description,
                "source": entry.source(),
                "segmentation": entry.source("segmentation") if entry.segmentation else None,
                "status": status(registry, entry),
                "sha256": entry.sha256 or None,
                "license": entry.license,
                "card": str(registry.root / entry.card),
                "family": entry.family,
                "scale": entry.scale,
                "reference": entry.reference,
                "config": entry.config,
                "published": entry.published,
            }
        )
    return {
        "default": registry.default,
        "default_restore": registry.default_restore or None,
        "default_no_reference": registry.default_for("no-reference"),
        "models": rows,
    }
