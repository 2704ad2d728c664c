"""Do the bounds `predict --interval P` writes hold P of the clear pixels of scenes the
calibration never saw? For each run, `predict` (the same function the command calls) on each
scene its calibration held back, with its best/calibration.json and without, then the share
of each scene's clear HR pixels between NAME_lower.png and NAME_upper.png, summed over scenes:

- as scored: at the shift and brightness bias of cPSNR (the HR's registration and mean are
  not the prediction's error, and the calibration measures |error| there too);
- pixel for pixel: the PNGs against HR.png as they lie, its 3-pixel border included.

    python bench/interval.py --evaluation runs/calibration-calval --runs runs/demo/nir-seed0 runs/demo/red-seed0

The evaluation is the one that wrote the runs' best/calibration.json (`evaluate --split val`);
its summary.json names the scenes each band's fit held back and where the scenes lie.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import ROOT, command, report
from PIL import Image

from piunet_dist.core.config_load import load_config
from piunet_dist.core.eval_dir import EvalDir
from piunet_dist.core.files import read_json
from piunet_dist.data.probav import SceneRef, load_scene
from piunet_dist.evaluation.scene import predict_scene
from piunet_dist.network.metrics import shift_search
from piunet_dist.network.shifts import aligned, crop


def held(folder: Path, scene) -> tuple[float, float, float, float]:
    """Clear pixels inside the written bounds, and clear pixels: as scored, then pixel for pixel."""
    lower, upper, sr = (
        torch.from_numpy(np.asarray(Image.open(folder / f"{scene.name}{end}.png"), dtype=np.float64))[None, None]
        for end in ("_lower", "_upper", "")
    )
    hr = torch.from_numpy(scene.hr.astype(np.float64))[None, None]
    sm = torch.from_numpy(scene.sm.astype(bool))[None, None]
    search = shift_search(sr, hr, sm)
    y, m = (aligned(t[0, 0], search.best[0], sr.shape[-2:]) for t in (hr, sm))
    bias = search.bias[0]
    lo, up = crop(lower)[0, 0] + bias, crop(upper)[0, 0] + bias
    as_scored = ((lo <= y) & (y <= up) & m).sum()
    raw = ((lower <= hr) & (hr <= upper) & sm).sum()
    return float(as_scored), float(m.sum()), float(raw), float(sm.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluation", type=Path, required=True, help="the evaluation of the val split that fitted")
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--interval", type=float, default=0.9)
    args = parser.parse_args()
    summary = read_json(EvalDir(args.evaluation).summary)
    rows = []
    for run in args.runs:
        band = load_config(run / "config.yaml").data.band
        checked = summary["bands"][band]["calibration_fit"]["check_scenes"]
        manifest = ROOT / summary["shards"][band] / "manifest.json"
        source = ROOT / json.loads(manifest.read_text())["source"]
        for calibrated in (False, True):
            inside_scored = inside_raw = pixels = pixels_raw = 0.0
            with tempfile.TemporaryDirectory() as tmp:
                for name in checked:
                    where = source / "train" / band / name
                    fit = str(run / "best" / "calibration.json") if calibrated else "none"
                    predict_scene(run / "best", where, Path(tmp), "auto", 9, None, "no", False, fit, args.interval)
                    scored, n, raw, n_raw = held(Path(tmp), load_scene(SceneRef(name, band, "train", where)))
                    inside_scored, pixels = inside_scored + scored, pixels + n
                    inside_raw, pixels_raw = inside_raw + raw, pixels_raw + n_raw
            rows.append(
                {
                    "run": run.name,
                    "band": band,
                    "calibration": "best/calibration.json" if calibrated else "none",
                    "scenes": len(checked),
                    f"held at {args.interval:.0%}, as scored (%)": 100 * inside_scored / pixels,
                    f"held at {args.interval:.0%}, pixel for pixel (%)": 100 * inside_raw / pixels_raw,
                }
            )
            print(rows[-1], flush=True)
    report("interval", rows, list(rows[0]))


if __name__ == "__main__":
    command(main)
