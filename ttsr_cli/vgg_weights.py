"""ImageNet VGG19 weights, for the perceptual loss and the LTE's initialisation (as the paper).

They come through the Hugging Face Hub (cached; ``HF_HOME``, ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` are honoured) from a safetensors VGG19 published for timm, or from a local
file.  Only the ``features`` tensors are used, whatever prefix the file puts before them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.archs.vgg import RELU5_1, VGG19Features
from ttsr_cli.errors import TTSRError
from ttsr_cli.registry import hub_file
from ttsr_cli.weights import read_checkpoint

DEFAULT_REPO = os.environ.get("TTSR_VGG19_REPO", "timm/vgg19.tv_in1k")
DEFAULT_FILE = "model.safetensors"
_FEATURE_KEY = re.compile(r"(?:.*\.)?features\.(\d+)\.(weight|bias)$")
#: VGG19 ``features`` index of each LTE conv (the LTE keeps VGG's indices).
_LTE_LAYERS = {"slice1.0": 0, "slice2.2": 2, "slice2.5": 5, "slice3.7": 7, "slice3.10": 10}


def vgg19_features(source: str = "hub") -> dict[int, dict[str, torch.Tensor]]:
    """``{layer index: {"weight", "bias"}}`` of VGG19 ``features`` from the Hub or a file."""
    path = _download() if source == "hub" else Path(source)
    state, _ = read_checkpoint(path)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := _FEATURE_KEY.match(key):
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    expected = [i for i, m in enumerate(VGG19Features().features) if isinstance(m, torch.nn.Conv2d)]
    missing = [i for i in expected if i not in layers]
    if missing:
        raise TTSRError(f"{path}: not a VGG19 (no features.{missing[0]}.weight)")
    return layers


def _download() -> Path:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return hub_file(DEFAULT_REPO, DEFAULT_FILE)
    except LocalEntryNotFoundError:
        raise TTSRError(
            f"ImageNet VGG19 weights ({DEFAULT_REPO}) are not cached and the Hugging Face Hub "
            "cannot be reached; pass a local VGG19 file (--vgg FILE), or train with the rec "
            "preset (TTSR: and --lte-init random), which needs no VGG19"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise TTSRError(f"could not download VGG19 weights from {DEFAULT_REPO}: {exc}") from None


def perceptual_network(
    layers: dict[int, dict[str, torch.Tensor]], end: int = RELU5_1
) -> VGG19Features:
    """The frozen ``features[:end]`` extractor with ImageNet weights (relu5_1 by default)."""
    net = VGG19Features(end)
    state = {
        f"features.{i}.{name}": t for i, p in layers.items() if i < end for name, t in p.items()
    }
    missing, _unexpected = net.load_state_dict(state, strict=False)
    lacking = [k for k in missing if k.startswith("features.")]
    if lacking:
        raise TTSRError(f"VGG19 weights lack {lacking[0]}")
    return net.eval()


def init_lte(lte: LTE, layers: dict[int, dict[str, torch.Tensor]]) -> None:
    """Copy VGG19's first five convs into the LTE (its widths must be VGG's 64/128/256)."""
    if lte.widths != (64, 128, 256):
        raise TTSRError(
            f"LTE widths {lte.widths} differ from VGG19's (64, 128, 256): use --lte-init random"
        )
    state = {f"{name}.{p}": layers[i][p] for name, i in _LTE_LAYERS.items() for p in layers[i]}
    lte.load_state_dict(state, strict=False)
