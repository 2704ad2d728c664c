"""The scenes and predictions the benchmarks of quality share: the real PROBA-V files in
../shared/reference/real-scenes, the synthetic scenes compared with them, and a network's
prediction of a scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from common import ROOT

from piunet_dist.core.config import DataConfig
from piunet_dist.core.errors import UserError
from piunet_dist.core.memory import keep_freed_memory
from piunet_dist.data.pipeline import prepare_frames
from piunet_dist.data.probav import NOMINAL_DN, Scene, SceneRef, find_scenes, load_scene
from piunet_dist.data.synthetic import make_scene, physics_from
from piunet_dist.evaluation.inference import super_resolve

SHARED = ROOT.parent / "shared" / "reference"


def comparison_arguments(parser, scenes: int, scenes_help: str = "synthetic scenes a band") -> None:
    """--real, --scenes, --seed and --physics: the real scenes of a comparison and the
    synthetic ones drawn to compare with them."""
    parser.add_argument("--real", type=Path, default=SHARED / "real-scenes")
    parser.add_argument("--scenes", type=int, default=scenes, help=scenes_help)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--physics", nargs="*", default=[], help="NAME=VALUE over synth's defaults")


def showing_ground(lr: np.ndarray, qm: np.ndarray) -> np.ndarray:
    """Where each frame shows the ground: clear, and at most 16,383 DN (a bright cloud is no
    ground, even where a quality map calls it clear)."""
    return qm.astype(bool) & (lr <= NOMINAL_DN)


def compared_scenes(args, band: str) -> tuple[list, list]:
    """The real scenes of a band and the synthetic ones drawn to compare with them (the
    arguments of comparison_arguments), each as (lr, where it shows the ground)."""
    if args.scenes < 1:
        raise UserError(f"--scenes: {args.scenes} is not 1 or more")
    physics = physics_from("proba-v", args.physics)
    real = [(s.lr, showing_ground(s.lr, s.qm)) for s in real_scenes(args.real, band)]
    drawn = (make_scene(args.seed, band, i, physics) for i in range(args.scenes))
    return real, [(s["lr"], showing_ground(s["lr"], s["qm"])) for s in drawn]


def whole_tiles(usable: np.ndarray, side: int) -> list[tuple[slice, slice]]:
    """The side x side tiles of a frame, from its corner and without overlap, in which every
    pixel is usable."""
    cuts = [
        (slice(y, y + side), slice(x, x + side))
        for y in range(0, usable.shape[0] - side + 1, side)
        for x in range(0, usable.shape[1] - side + 1, side)
    ]
    return [c for c in cuts if usable[c].all()]


def real_scenes(root: Path, band: str) -> list[Scene]:
    """A band's scenes of the real-scenes folder: its challenge tree (probav/) and its LR-only
    copies (lr-only/BAND/), whose frames without a quality map load as all clear."""
    refs = find_scenes(root / "probav", [band])
    refs += [SceneRef(d.name, band, "train", d) for d in sorted((root / "lr-only" / band).glob("imgset*"))]
    if not refs:
        raise UserError(f"--real: {root} holds no {band} scene (in probav/ or lr-only/{band}/)")
    return [load_scene(ref, masks_required=False) for ref in sorted(refs, key=lambda r: r.name)]


def prediction(model, scene: Scene, views: int = 1) -> torch.Tensor:
    """The SR (1,1,384,384) of a scene from its nine clearest frames, as `predict` makes it
    (averaged over a self-ensemble of `views`), with the C heap kept as `evaluate` keeps it."""
    keep_freed_memory()
    lr, _ = prepare_frames(scene, DataConfig(), np.random.default_rng(0), keep_unclear=True)
    return super_resolve(model, torch.from_numpy(lr)[None], views)[0]
