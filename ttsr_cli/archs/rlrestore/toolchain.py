"""How an image walks the chain: which views the agent sees, and how their choices become
one action.

A 63x63 patch is its own episode.  A larger image follows the authors' arbitrary-size path:
the agent sees its non-overlapping 63x63 tiles from the top-left, row-major (rows and
columns left over at the bottom and right are restored but never looked at), each tile with
its own LSTM state; the majority of the tiles' choices is the action, ties going to the
lowest index (so a tool beats stop); the chosen tool runs on the whole image and every tile
is told that action.  An image under 63 pixels a side, which the authors' code refuses, is
shown to the agent mirrored (symmetric padding) up to 63 on that side.
"""

from __future__ import annotations

import torch

from ttsr_cli.archs.rlrestore.agent import VIEW


def views(image: torch.Tensor) -> torch.Tensor:
    """``[N, 3, 63, 63]``: the tiles of ``image`` (``[1, 3, H, W]``) the agent sees."""
    h, w = image.shape[-2:]
    if h < VIEW or w < VIEW:
        image = _mirror_to(image, max(h, VIEW), max(w, VIEW))
        h, w = image.shape[-2:]
    rows, cols = h // VIEW, w // VIEW
    grid = image[0, :, : rows * VIEW, : cols * VIEW]
    tiles = grid.reshape(3, rows, VIEW, cols, VIEW).permute(1, 3, 0, 2, 4)
    return tiles.reshape(rows * cols, 3, VIEW, VIEW)


def _mirror_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Symmetric padding at the bottom and right, repeated while the image is shorter than
    the pad (PyTorch's reflect needs the pad under the side)."""
    while image.shape[-2] < height or image.shape[-1] < width:
        h, w = image.shape[-2:]
        pad_h, pad_w = min(height - h, h), min(width - w, w)
        image = torch.cat([image, image.flip(-2)[..., :pad_h, :]], dim=-2)
        image = torch.cat([image, image.flip(-1)[..., :pad_w]], dim=-1)
    return image


def vote(q: torch.Tensor) -> tuple[int, list[int]]:
    """The action the views' Q-values (``[N, actions]``) choose together, and the votes
    for each action.  ``argmax`` and the count both break ties toward the lowest index, as
    the authors' ``np.bincount(...).argmax()`` does."""
    choices = q.float().argmax(dim=1)
    counts = torch.bincount(choices, minlength=q.shape[1])
    return int(counts.argmax()), [int(n) for n in counts]
