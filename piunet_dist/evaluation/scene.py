"""Predict one scene directory in the challenge layout (a user's own data).

    python -m piunet_dist predict --weights nir_model_checkpoint.pt --scene my_scene/ --out sr/

The directory holds LR000.png, QM000.png, ... (HR.png and SM.png are not needed). The
weights may be a published checkpoint file or this project's (a run's best/ or a
checkpoint directory). Writes <scene>.png (16-bit SR) and <scene>_scale.npy (float32
Laplace scale in DN).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..core.config import DataConfig
from ..core.errors import UserError
from ..data.pipeline import prepare_frames
from ..data.probav import MIN_CLEARANCE, SceneRef, load_scene, validate_scene
from ..network.weights import model_from_weights
from .inference import resolve_precision, super_resolve, views_for
from .members import trained_with_rotations
from .outputs import write_outputs


def predict_scene(
    weights: Path,
    scene_dir: Path,
    out: Path,
    self_ensemble: str,
    n_frames: int,
    n_heads: int | None = None,
    precision: str = "auto",
    keep_unclear: bool = False,
) -> Path:
    if not scene_dir.is_dir():
        raise UserError(f"{scene_dir}: no such scene directory")
    ref = SceneRef(scene_dir.name, "?", "test", scene_dir)  # no target needed
    problems = validate_scene(ref, where=str(scene_dir))
    if problems:
        raise UserError("; ".join(problems))
    scene = load_scene(ref)
    if not keep_unclear and scene.clearance.max() <= MIN_CLEARANCE:
        raise UserError(
            f"{scene_dir}: no frame is more than {MIN_CLEARANCE:.0%} clear (the clearest: "
            f"{scene.clearance.max():.0%}), too cloudy to trust; --keep-unclear predicts from the "
            "clearest frames anyway"
        )
    # the clearest frames first; with --keep-unclear a scene without a clear frame keeps its clearest one
    lr, _ = prepare_frames(scene, DataConfig(n_frames=n_frames), np.random.default_rng(0), keep_unclear=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_weights(weights, n_heads).to(device).eval()
    views = views_for(self_ensemble, trained_with_rotations(weights))
    sr, scale = super_resolve(model, torch.from_numpy(lr)[None].to(device), views, resolve_precision(precision, device))
    write_outputs(out, scene.name, sr[0], scale[0])
    return out / f"{scene.name}.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        type=Path,
        required=True,
        help="a published checkpoint file, or a run's best/ or checkpoint directory",
    )
    parser.add_argument("--scene", type=Path, required=True, help="directory with LR000.png, QM000.png, ...")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the SR PNG and scale map go (default .)")
    parser.add_argument(
        "--self-ensemble",
        default="auto",
        choices=("auto", "1", "4", "8"),
        help="views averaged: auto (the views the weights were trained to expect: 1 for the "
        "published files and runs trained without data.augment, the 4 rotations for runs "
        "trained with it), 1, 4 (rotations) or 8 (with flips) (default auto)",
    )
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
        "--precision",
        choices=("auto", "no", "bf16"),
        default="auto",
        help="auto (bf16 on a GPU that supports it, float32 elsewhere), no (float32) or bf16 (default auto)",
    )


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise UserError("--frames: must be at least 1")
    if args.heads is not None and args.heads < 1:
        raise UserError("--heads: must be at least 1")
    path = predict_scene(
        args.weights,
        args.scene,
        args.out,
        args.self_ensemble,
        args.frames,
        args.heads,
        args.precision,
        args.keep_unclear,
    )
    print(f"{path} and {path.with_name(path.stem + '_scale.npy')}")
    return 0
