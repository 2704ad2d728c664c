"""A prediction as this project writes it: NAME.png, the SR as a 16-bit PNG (as the
challenge takes it), and NAME_scale.npy, the float32 Laplace scale in DN; with a
self-ensemble scored on a scene with a target, NAME_views.json, each view's cPSNR. Each is
written whole or not at all, the PNG last, so a scene whose PNG is there is complete. With
a calibration, NAME_scale_calibrated.npy; with an interval asked for, NAME_lower.png and
NAME_upper.png.
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
    _write_scale(folder / f"{name}_scale.npy", scale)
    _write_png(folder / f"{name}.png", sr)


def write_calibrated(
    folder: Path, name: str, scale: torch.Tensor | None, interval: tuple[torch.Tensor, torch.Tensor] | None
) -> None:
    """Beside a prediction: NAME_scale_calibrated.npy, the calibrated scale map, and
    NAME_lower.png and NAME_upper.png, the bounds of a central interval (16-bit, DN)."""
    if scale is not None:
        _write_scale(folder / f"{name}_scale_calibrated.npy", scale)
    if interval is not None:
        _write_png(folder / f"{name}_lower.png", interval[0])
        _write_png(folder / f"{name}_upper.png", interval[1])


def _write_scale(path: Path, scale: torch.Tensor) -> None:
    buffer = io.BytesIO()  # written by one write, whose failure (a full disk) names its cause
    np.save(buffer, scale[0].float().cpu().numpy())
    with replacing(path) as partial:
        partial.write_bytes(buffer.getvalue())


def _write_png(path: Path, image: torch.Tensor) -> None:
    values = image[0].round().clamp(0, PEAK).to(torch.int32).cpu().numpy().astype(np.uint16)
    with replacing(path) as partial:
        Image.fromarray(values).save(partial, format="PNG")


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
