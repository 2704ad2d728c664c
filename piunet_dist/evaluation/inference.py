"""Whole scenes through a trained PIUnet: every view of the self-ensemble in one batch, in
the precision asked for, in batches as large as the device holds.

Used by validation (training/validation.py), evaluate.py and scene.py (predict) alike.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..core.config_load import count_or_auto
from ..core.errors import UserError
from ..network.model import PIUNet, denormalise, normalise, scale_dn

MAX_AUTO_SCENES = 32  # past this a GPU is full of work; larger batches only hold more memory
# peak bytes per feature channel and LR pixel of one view, per frame and for the output
# layers (at 3x the resolution): on an H200, 32 scenes x 4 views of 9 frames of 128x128 at
# 42 channels peaked at 17.9 GiB in float32 (11.2 GiB in bf16), 9 x 20 + 36 bytes
BYTES_PER_FRAME_PIXEL = 20
BYTES_PER_OUTPUT_PIXEL = 36
ROTATED_VIEWS = 4  # eval.self_ensemble=auto for a network trained with rotations (BENCHMARKS.md)


def transforms(n: int) -> list[tuple[int, bool]]:
    """(quarter turns, flip) of a self-ensemble of n: 1, the 4 rotations, or those and their flips."""
    if n not in (1, 4, 8):
        raise UserError(f"self-ensemble: {n} is not 1, 4 or 8")
    return [(k, flip) for flip in (False, True) for k in range(4)][:n]


def _view(img: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    img = torch.rot90(img, k, dims=(-2, -1))
    return img.flip(-1) if flip else img


def _unview(img: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    return torch.rot90(img.flip(-1) if flip else img, -k, dims=(-2, -1))


def view_names(n: int) -> list[str]:
    """How summary.json names the views of a self-ensemble of n."""
    return [f"{'flip ' if flip else ''}rot{90 * k}" for k, flip in transforms(n)]


def views_for(setting: str, trained_with_rotations: bool) -> int:
    """eval.self_ensemble for one member: a number as given; auto, the views its training
    showed it: 1 for a network trained without rotations (it has learned the sensor's
    orientation, docs/method.md section 3), the 4 rotations for one trained with them."""
    if setting != "auto":
        return int(setting)
    return ROTATED_VIEWS if trained_with_rotations else 1


@torch.no_grad()
def super_resolve(
    model: PIUNet, lr_dn: torch.Tensor, views: int = 1, precision: str = "no"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,T,X,Y) frames in DN -> SR and Laplace scale, both (B,1,3X,3Y) float32 in DN, averaged
    over the self-ensemble's `views`."""
    srs, scales = super_resolve_views(model, lr_dn, views, precision)
    return srs.mean(dim=0), scales.mean(dim=0)


@torch.no_grad()
def super_resolve_views(
    model: PIUNet, lr_dn: torch.Tensor, views: int = 1, precision: str = "no"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's SR and scale, turned back: (V,B,1,3X,3Y) each. The views of all B scenes go
    through the model as one batch (two where rotated frames are not square)."""
    chosen = transforms(views)
    by_shape: dict[tuple, list[int]] = {}
    for i, (k, flip) in enumerate(chosen):
        by_shape.setdefault(tuple(_view(lr_dn[:1, :1], k, flip).shape), []).append(i)
    autocast = torch.autocast(lr_dn.device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    srs, scales = [None] * len(chosen), [None] * len(chosen)
    for group in by_shape.values():
        x = torch.cat([_view(lr_dn, *chosen[i]) for i in group])
        with autocast:
            mu, s = model(normalise(x))
        for i, mu_v, s_v in zip(group, mu.float().chunk(len(group)), s.float().chunk(len(group))):
            srs[i], scales[i] = _unview(denormalise(mu_v), *chosen[i]), _unview(scale_dn(s_v), *chosen[i])
    return torch.stack(srs), torch.stack(scales)


def resolve_precision(setting: str, device: torch.device, key: str = "eval.precision") -> tuple[str, str]:
    """A precision setting (train.precision, eval.precision) for this device, and why where auto
    chose it ("" where it was given): auto is bf16 on a GPU that supports it, no (float32) elsewhere."""
    if setting != "auto":
        return setting, ""
    if device.type != "cuda":
        return "no", f"{key} auto: float32 without a GPU"
    name = torch.cuda.get_device_name(device)
    if torch.cuda.is_bf16_supported():
        return "bf16", f"{key} auto: bf16 on {name}"
    return "no", f"{key} auto: float32, {name} has no bf16"


def scenes_per_batch(
    setting: str, what: str, device: torch.device, n_frames: int, side: int, n_feat: int, views: int = 1
) -> int:
    """A batch-size setting resolved: its number, or for auto 1 on a CPU (where a larger
    batch is slower per scene) and on a GPU as many scenes as half its free memory holds."""
    count = count_or_auto(what, setting)
    if count is not None:
        return count
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    per_scene = views * side * side * n_feat * (n_frames * BYTES_PER_FRAME_PIXEL + BYTES_PER_OUTPUT_PIXEL)
    return int(max(1, min(MAX_AUTO_SCENES, free // 2 // per_scene)))
