"""Validation during training: every val scene predicted whole, each process its share, and
scored over all of them: cPSNR (the challenge's metric), cSSIM where train.val_cssim asks,
and the Laplace NLL of the predicted uncertainty."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..core.config import Config
from ..data.pipeline import EvalScenes
from ..data.probav import LR_SIZE
from ..evaluation.inference import scenes_per_batch, super_resolve
from ..network.metrics import CPSNR, CSSIM, UncertaintyCalibration


@dataclass
class ValScores:
    cpsnr: float
    cssim: float | None
    nll: float
    scenes: int


@torch.no_grad()
def validate(model: torch.nn.Module, val_shards: list[str], cfg: Config, acc) -> ValScores:
    # the bare module: ranks hold different scene counts, and DDP's forward may talk to the others
    model = acc.unwrap_model(model).eval()
    scenes = EvalScenes(val_shards, cfg.data, rank=acc.process_index, world_size=acc.num_processes, seed=cfg.train.seed)
    batch_size = scenes_per_batch(
        cfg.train.val_batch_size, "train.val_batch_size", acc.device, cfg.data.n_frames, LR_SIZE, cfg.model.n_feat
    )
    loader = DataLoader(scenes, batch_size=batch_size, num_workers=min(2, cfg.data.workers))
    psnr, ssim, calibration = (m.to(acc.device) for m in (CPSNR(), CSSIM(), UncertaintyCalibration()))
    # eagerly: compiled blocks would compile again for whole scenes in eval mode
    with torch.compiler.set_stance("force_eager"):
        for batch in loader:
            sr, scale = super_resolve(model, batch["lr"].to(acc.device))
            hr, sm = batch["hr"][:, None].to(acc.device), batch["sm"][:, None].to(acc.device)
            psnr.update(sr, hr, sm)
            if cfg.train.val_cssim:
                ssim.update(sr, hr, sm)
            calibration.update(sr, scale, hr, sm)
    with warnings.catch_warnings():  # a rank with no val scene adds zeros to the sums: that is right
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
        cpsnr = psnr.compute().item()
        cssim = ssim.compute().item() if cfg.train.val_cssim else None
        nll = calibration.compute()["nll"].item()
    # compute() hands back each rank its own states once it has the global value
    count = int(acc.reduce(psnr.count.clone(), "sum").item())
    model.train()
    return ValScores(cpsnr, cssim, nll, count)
