"""Reference upsamplings every result is compared with, in digital numbers.

challenge_baseline: the challenge's own baseline, whose cPSNR norm.csv holds: the frames
with the most clear pixels, each upscaled x3 by PIL's bicubic resize of the float frame (the
Keys cubic with a = -0.5), averaged.
bicubic_mean: torch's bicubic x3 upsampling of the mean of the selected frames (docs/method.md section 6).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SCALE = 3  # a PROBA-V HR pixel is a third of an LR pixel across


def challenge_baseline(lr: np.ndarray | torch.Tensor, qm: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,X,Y) frames and quality maps of one scene -> (3X,3Y) baseline in DN (float32)."""
    lr, qm = np.asarray(lr, dtype=np.float32), np.asarray(qm)
    clear = qm.reshape(len(qm), -1).sum(axis=1, dtype=np.int64)
    height, width = lr.shape[-2:]
    upscaled = [
        np.asarray(Image.fromarray(frame).resize((SCALE * width, SCALE * height), Image.BICUBIC))
        for frame in lr[clear == clear.max()]
    ]
    return torch.from_numpy(np.mean(upscaled, axis=0, dtype=np.float32))


def bicubic_mean(frames: torch.Tensor) -> torch.Tensor:
    """(B,T,X,Y) selected frames -> (B,1,3X,3Y): torch's bicubic (align_corners=False) of their mean."""
    mean = frames.float().mean(dim=1, keepdim=True)
    return F.interpolate(mean, scale_factor=SCALE, mode="bicubic", align_corners=False)
