"""A PIUnet trained on real scenes as the critic of synthetic ones: its gain over the
challenge baseline (cPSNR, dB) on scenes of `synth`, with plain predictions from the nine
clearest frames, as `predict` makes them. On real NIR scenes such a network gains about
+2.9 dB (docs/method.md section 3); on scenes unlike the real sensor's it gains nothing.

    python bench/critic.py --weights piunet-nir-real.pt [--scenes 24] [--seed 1] [--preset proba-v]
    python bench/critic.py --weights piunet-nir-real.pt runs/demo/nir-seed0/best --scenes 8 --physics blur_jitter=0.3

With several weights, each one's gain on the same scenes; --physics draws them with settings
over the preset's (as `synth --physics`): which changes a network that knows the real sensor
takes in its stride, and which a network trained on synthetic scenes does.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import command, report
from scenes import prediction

from piunet_dist.data.probav import Scene
from piunet_dist.data.sensor import PRESETS
from piunet_dist.data.synthetic import make_scene, physics_from
from piunet_dist.network.baselines import challenge_baseline
from piunet_dist.network.metrics import cpsnr
from piunet_dist.network.weights import model_from_weights


def gain(model, scene: dict, band: str) -> tuple[float, float]:
    """(network's cPSNR, baseline's cPSNR) of one scene."""
    sr = prediction(model, Scene("scene", band, scene["lr"], scene["qm"], scene["hr"], scene["sm"]))
    hr = torch.from_numpy(scene["hr"].astype(np.float32))[None, None]
    sm = torch.from_numpy(scene["sm"])[None, None]
    base = challenge_baseline(scene["lr"], scene["qm"])[None, None]
    return float(cpsnr(sr, hr, sm)[0]), float(cpsnr(base, hr, sm)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", required=True, help="a PIUnet trained on real scenes, then any others")
    parser.add_argument("--band", default="NIR", choices=("NIR", "RED"))
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preset", choices=PRESETS, default="proba-v")
    parser.add_argument("--physics", nargs="*", default=[], help="NAME=VALUE over the preset's")
    args = parser.parse_args()
    physics = physics_from(args.preset, args.physics)
    models = {str(w): model_from_weights(w).eval() for w in args.weights}
    gains = {w: [] for w in models}
    scores = {w: [] for w in models}
    for i in range(args.scenes):
        scene = make_scene(args.seed, args.band, i, physics)
        for w, model in models.items():
            net, base = gain(model, scene, args.band)
            gains[w].append(net - base)
            scores[w].append((net, base))
            print(f"scene {i}, {w}: {net:.2f} against {base:.2f}: {net - base:+.2f} dB", flush=True)
    rows = [
        {
            "weights": w,
            "physics": " ".join(args.physics) or args.preset,
            "network_cpsnr": float(np.mean([n for n, _ in scores[w]])),
            "baseline_cpsnr": float(np.mean([b for _, b in scores[w]])),
            "gain_db": float(np.mean(gains[w])),
            "spread_db": float(np.std(gains[w])),
        }
        for w in models
    ]
    changed = "".join(f"-{setting}" for setting in args.physics).replace(",", "_").replace("=", "")
    report(f"critic-{args.preset}-{args.band.lower()}{changed}", rows, list(rows[0]))


if __name__ == "__main__":
    command(main)
