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

from .data.pipeline import prepare_frames
from .data.probav import MIN_CLEARANCE, SceneRef, load_scene, validate_scene
from .errors import UserError
from .evaluate import write_outputs
from .inference import predict, resolve_precision
from .weights import model_from_weights


def predict_scene(weights: Path, scene_dir: Path, out: Path, self_ensemble: int, n_frames: int,
                  n_heads: int = 1, precision: str = "auto") -> Path:
    if not scene_dir.is_dir():
        raise UserError(f"{scene_dir}: no such scene directory")
    ref = SceneRef(scene_dir.name, "?", "test", scene_dir)  # no target needed
    problems = validate_scene(ref, where=str(scene_dir))
    if problems:
        raise UserError("; ".join(problems))
    scene = load_scene(ref)
    # the clearest frames first; a scene without a clear frame keeps its clearest one
    lr, _ = prepare_frames(scene, n_frames, "paper", np.random.default_rng(0), keep_unclear=True, register=False,
                           min_clearance=MIN_CLEARANCE)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_weights(weights, n_heads).to(device).eval()
    sr, scale = predict(model, torch.from_numpy(lr)[None].to(device), self_ensemble, resolve_precision(precision, device))
    write_outputs(out, scene.name, sr[0], scale[0])
    return out / f"{scene.name}.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True,
                        help="a published checkpoint file, or a run's best/ or checkpoint directory")
    parser.add_argument("--scene", type=Path, required=True, help="directory with LR000.png, QM000.png, ...")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the SR PNG and scale map go (default .)")
    parser.add_argument("--self-ensemble", type=int, default=4, choices=(1, 4, 8),
                        help="predictions averaged: 1, 4 rotations, 8 with flips (default 4)")
    parser.add_argument("--frames", type=int, default=9, help="frames used, T (default 9, as trained in the paper)")
    parser.add_argument("--heads", type=int, default=1, help="attention heads of the weights (default 1)")
    parser.add_argument("--precision", choices=("auto", "no", "bf16"), default="auto",
                        help="auto (bf16 on a GPU, no on a CPU), no (float32) or bf16 (default auto)")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise UserError("--frames: must be at least 1")
    path = predict_scene(args.weights, args.scene, args.out, args.self_ensemble, args.frames, args.heads,
                         args.precision)
    print(f"{path} and {path.with_name(path.stem + '_scale.npy')}")
    return 0
