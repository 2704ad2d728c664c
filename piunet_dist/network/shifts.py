"""The registration geometry of the losses and metrics (docs/method.md section 4): the prediction,
cropped by BORDER pixels on every side, is placed at each of SIDE x SIDE shifts in the
target; shift index u*SIDE+v puts its top-left corner at (u, v).
"""

from __future__ import annotations

import torch

BORDER = 3
SIDE = 2 * BORDER + 1  # shifts per axis


def shift_windows(img: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 7, 7, H-6, W-6): every placement of the cropped window, a view."""
    _, _, hgt, wid = img.shape
    return img[:, 0].unfold(1, hgt - 2 * BORDER, 1).unfold(2, wid - 2 * BORDER, 1)


def crop(img: torch.Tensor) -> torch.Tensor:
    return img[:, :, BORDER:-BORDER, BORDER:-BORDER]


def select_shift(windows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Window of shift index[b] (u*7+v; (B,) or (B,k)) of every sample -> (B,[k,]h,w)."""
    rows = torch.arange(windows.shape[0], device=windows.device)
    if index.dim() == 2:
        rows = rows[:, None]
    return windows[rows, index // SIDE, index % SIDE]


def aligned(target: torch.Tensor, index: int, size: tuple[int, int]) -> torch.Tensor:
    """The window (..., h, w) of `target` (..., H, W) that shift `index` lays the cropped
    prediction of `size` (H, W) on."""
    u, v = divmod(int(index), SIDE)
    h, w = size[0] - 2 * BORDER, size[1] - 2 * BORDER
    return target[..., u : u + h, v : v + w]
