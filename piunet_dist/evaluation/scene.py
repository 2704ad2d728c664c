"""Predict one scene directory in the challenge layout (a user's own data).

    python -m piunet_dist predict --weights nir_model_checkpoint.pt --scene my_scene/ --out sr/

The directory holds LR000.png, QM000.png, ... (HR.png and SM.png are not needed). The
weights may be a published checkpoint file or this project's (a run's best/ or a
checkpoint directory). Writes <scene>.png (16-bit SR) and <scene>_scale.npy (float32
Laplace scale in DN); with a calibration (a run's own, written by an evaluation of the val
split) <scene>_scale_calibrated.npy, and with --interval the interval's bounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..core.config import DataConfig
from ..core.config_flags import add_setting_flags, flag_overrides
from ..core.config_load import load_config
from ..core.errors import UserError
from ..core.files import sha256
from ..data.pipeline import prepare_frames
from ..data.probav import SceneRef, load_scene, validate_scene
from ..network.weights import model_from_weights
from .calibration import FILE, Fit, bounds
from .inference import resolve_precision, super_resolve, views_for
from .members import trained_with_rotations
from .outputs import write_calibrated, write_outputs


def predict_scene(
    weights: Path,
    scene_dir: Path,
    out: Path,
    self_ensemble: str,
    n_frames: int,
    n_heads: int | None = None,
    precision: str = "auto",
    keep_unclear: bool = False,
    calibration: str = "auto",
    interval: float = 0.0,
) -> list[Path]:
    if not scene_dir.is_dir():
        raise UserError(f"{scene_dir}: no such scene directory")
    ref = SceneRef(scene_dir.name, "?", "test", scene_dir)  # no target needed
    problems = validate_scene(ref, where=str(scene_dir))
    if problems:
        raise UserError("; ".join(problems))
    scene = load_scene(ref)
    reading = DataConfig(n_frames=n_frames)
    if not keep_unclear and scene.clearance.max() <= reading.min_clearance:
        raise UserError(
            f"{scene_dir}: no frame is more than {reading.min_clearance:.0%} clear (the clearest: "
            f"{scene.clearance.max():.0%}), too cloudy to trust; --keep-unclear predicts from the "
            "clearest frames anyway"
        )
    # the clearest frames first; with --keep-unclear a scene without a clear frame keeps its clearest one
    lr, _ = prepare_frames(scene, reading, np.random.default_rng(0), keep_unclear=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_weights(weights, n_heads).to(device).eval()
    views = views_for(self_ensemble, trained_with_rotations(weights))
    sr, scale = super_resolve(
        model, torch.from_numpy(lr)[None].to(device), views, resolve_precision(precision, device)[0]
    )
    write_outputs(out, scene.name, sr[0], scale[0])
    written = [out / f"{scene.name}{end}" for end in (".png", "_scale.npy")]
    fit = calibration_for(weights, calibration)
    if fit or interval:
        write_calibrated(
            out,
            scene.name,
            scale[0] * fit.factor if fit else None,
            bounds(sr[0], scale[0], fit, interval) if interval else None,
        )
        written += [out / f"{scene.name}_scale_calibrated.npy"] if fit else []
        written += [out / f"{scene.name}_{end}.png" for end in ("lower", "upper")] if interval else []
    return written


def calibration_for(weights: Path, choice: str) -> Fit | None:
    """--calibration: auto (the one an evaluation of the val split wrote beside a run's
    weights, if any), none, or a calibration.json; refused where made for other weights."""
    if choice == "none":
        return None
    path = weights / FILE if choice == "auto" else Path(choice)
    if choice == "auto" and not path.is_file():
        return None
    fit = Fit.read(path)
    fit.check(fit.band, {weights.name: sha256(weights / "model.safetensors" if weights.is_dir() else weights)}, path)
    return fit


EVAL_FLAGS = ("self_ensemble", "precision")  # as evaluate predicts a scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        type=Path,
        required=True,
        help="a published checkpoint file, or a run's best/ or checkpoint directory",
    )
    parser.add_argument("--scene", type=Path, required=True, help="directory with LR000.png, QM000.png, ...")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the SR PNG and scale map go (default .)")
    add_setting_flags(parser, "eval", EVAL_FLAGS)
    parser.add_argument("--frames", type=int, default=9, help="frames used, T (default 9, as trained in the paper)")
    parser.add_argument(
        "--heads",
        type=int,
        help="attention heads of the weights: read from a run's config.yaml, else 1 (the published)",
    )
    parser.add_argument(
        "--keep-unclear",
        action="store_true",
        help="predict a scene that has no clear frame from its clearest frames (by default refused)",
    )
    parser.add_argument(
        "--calibration",
        default="auto",
        help="auto (the calibration an evaluation of the val split wrote beside a run's weights, where there is "
        "one), none, or a calibration.json (OUT/<band>/<member>/); it must be these weights' (default auto)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="also write the bounds of the central interval holding this share of the pixels (0.9, say): "
        "<scene>_lower.png and <scene>_upper.png, 16-bit DN, calibrated where a calibration applies (default 0: none)",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.interval < 1:
        raise UserError(f"--interval: {args.interval} is no share of the pixels (0 < P < 1; 0: none)")
    if args.frames < 1:
        raise UserError("--frames: must be at least 1")
    if args.heads is not None and args.heads < 1:
        raise UserError("--heads: must be at least 1")
    settings = load_config(None, flag_overrides(args, "eval", EVAL_FLAGS)).eval
    written = predict_scene(
        args.weights,
        args.scene,
        args.out,
        settings.self_ensemble,
        args.frames,
        args.heads,
        settings.precision,
        args.keep_unclear,
        args.calibration,
        args.interval,
    )
    print("\n".join(map(str, written)))
    return 0
