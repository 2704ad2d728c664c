"""A prediction as this project writes it: NAME.png, the SR as a 16-bit PNG (as the
challenge takes it), and NAME_scale.npy, the float32 Laplace scale in DN; with a
self-ensemble scored on a scene with a target, NAME_views.json, each view's cPSNR. Each is
written whole or not at all, the PNG last, so a scene whose PNG is there is complete.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import UserError
from ..core.files import replacing, write_json
from ..network.metrics import PEAK


def write_outputs(
    folder: Path, name: str, sr: torch.Tensor, scale: torch.Tensor, view_cpsnr: list[float] | None = None
) -> None:
    """The SR ((1,H,W), DN) as a 16-bit PNG, its scale map and, if given, each view's cPSNR."""
    if view_cpsnr is not None:
        write_json(folder / f"{name}_views.json", view_cpsnr)
    image = sr[0].round().clamp(0, PEAK).to(torch.int32).cpu().numpy().astype(np.uint16)
    scale_npy = io.BytesIO()  # written by one write, whose failure (a full disk) names its cause
    np.save(scale_npy, scale[0].float().cpu().numpy())
    with replacing(folder / f"{name}_scale.npy") as partial:
        partial.write_bytes(scale_npy.getvalue())
    with replacing(folder / f"{name}.png") as partial:
        Image.fromarray(image).save(partial, format="PNG")


def predicted(folder: Path, name: str) -> bool:
    return (folder / f"{name}.png").is_file() and (folder / f"{name}_scale.npy").is_file()


def read_outputs(folder: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's written prediction of a scene: SR (the 16-bit PNG, as delivered) and scale, (1,H,W)."""
    try:
        sr = np.asarray(Image.open(folder / f"{name}.png")).astype(np.float32)
        scale = np.load(folder / f"{name}_scale.npy")
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: missing (did this member's predictions finish?)") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL and numpy name damage in many ways
        raise UserError(
            f"{folder / name}: a damaged prediction ({type(e).__name__}: {e}); delete it and evaluate again"
        ) from None
    return torch.from_numpy(sr)[None], torch.from_numpy(scale)[None]


def read_view_cpsnr(folder: Path, name: str) -> list[float] | None:
    """Each view's cPSNR of a scene, where the prediction scored them."""
    try:
        return json.loads((folder / f"{name}_views.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
