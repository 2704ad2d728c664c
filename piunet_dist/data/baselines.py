"""Reference upsamplings every result is compared with, in digital numbers.

challenge_baseline: the challenge's baseline, the mean of the bicubic x3 upsamplings of
the clearest frames (those with the largest clear share); norm.csv holds its cPSNR.
bicubic_mean: bicubic x3 upsampling of the mean of the selected frames (PIUNET.md s. 6).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .probav import HR_SIZE, LR_SIZE

SCALE = HR_SIZE // LR_SIZE


def bicubic(frames: torch.Tensor) -> torch.Tensor:
    """(..., X, Y) -> (..., 3X, 3Y), bicubic, align_corners=False."""
    lead = frames.shape[:-2]
    flat = frames.reshape(-1, 1, *frames.shape[-2:]).float()
    up = F.interpolate(flat, scale_factor=SCALE, mode="bicubic", align_corners=False)
    return up.reshape(*lead, *up.shape[-2:])


def challenge_baseline(lr: np.ndarray | torch.Tensor, qm: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,X,Y) frames and quality maps of one scene -> (3X,3Y) baseline in DN."""
    lr, qm = torch.as_tensor(np.asarray(lr, dtype=np.float32)), torch.as_tensor(np.asarray(qm))
    clearance = qm.reshape(len(qm), -1).float().mean(dim=1)
    clearest = lr[clearance == clearance.max()]
    return bicubic(clearest).mean(dim=0)


def bicubic_mean(frames: torch.Tensor) -> torch.Tensor:
    """(B,T,X,Y) selected frames -> (B,1,3X,3Y): bicubic of their mean."""
    return bicubic(frames.float().mean(dim=1, keepdim=True))
