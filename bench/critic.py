"""A PIUnet trained on real scenes as the critic of synthetic ones: its gain over the
challenge baseline (cPSNR, dB) on scenes of `synth`, with plain predictions from the nine
clearest frames, as `predict` makes them. On real NIR scenes such a network gains about
+2.9 dB (docs/method.md section 3); on scenes unlike the real sensor's it gains nothing.

    python bench/critic.py --weights piunet-nir-real.pt [--scenes 24] [--seed 1] [--preset proba-v]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import report

from piunet_dist.core.config import DataConfig
from piunet_dist.data.pipeline import prepare_frames
from piunet_dist.data.probav import Scene
from piunet_dist.data.sensor import PRESETS, Physics
from piunet_dist.data.synthetic import make_scene
from piunet_dist.evaluation.inference import super_resolve
from piunet_dist.network.baselines import challenge_baseline
from piunet_dist.network.metrics import cpsnr
from piunet_dist.network.weights import model_from_weights


def gain(model, scene: dict, band: str) -> tuple[float, float]:
    """(network's cPSNR, baseline's cPSNR) of one scene."""
    s = Scene("scene", band, scene["lr"], scene["qm"], scene["hr"], scene["sm"])
    lr, _ = prepare_frames(s, DataConfig(), np.random.default_rng(0), keep_unclear=True)
    sr, _ = super_resolve(model, torch.from_numpy(lr)[None])
    hr = torch.from_numpy(scene["hr"].astype(np.float32))[None, None]
    sm = torch.from_numpy(scene["sm"])[None, None]
    base = challenge_baseline(scene["lr"], scene["qm"])[None, None]
    return float(cpsnr(sr, hr, sm)[0]), float(cpsnr(base, hr, sm)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a PIUnet trained on real scenes (a state_dict file)")
    parser.add_argument("--band", default="NIR", choices=("NIR", "RED"))
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preset", choices=PRESETS, default="proba-v")
    args = parser.parse_args()
    model = model_from_weights(args.weights).eval()
    rows = []
    for i in range(args.scenes):
        net, base = gain(model, make_scene(args.seed, args.band, i, Physics.preset(args.preset)), args.band)
        rows.append({"scene": i, "network_cpsnr": net, "baseline_cpsnr": base, "gain_db": net - base})
        print(f"scene {i}: {net:.2f} against {base:.2f}: {net - base:+.2f} dB", flush=True)
    gains = np.array([r["gain_db"] for r in rows])
    rows.append(
        {
            "scene": "mean",
            "network_cpsnr": float(np.mean([r["network_cpsnr"] for r in rows])),
            "baseline_cpsnr": float(np.mean([r["baseline_cpsnr"] for r in rows])),
            "gain_db": float(gains.mean()),
            "spread_db": float(gains.std()),
        }
    )
    report(
        f"critic-{args.preset}-{args.band.lower()}",
        rows[-1:],
        ["scene", "network_cpsnr", "baseline_cpsnr", "gain_db", "spread_db"],
    )


if __name__ == "__main__":
    main()
