"""What the network should see of values above 14 bits: the PIUnet trained on real NIR
scenes by the published code (which feeds every value as it is) predicts synthetic NIR
scenes that carry the real oddities (bright clouds above 16,383 DN, 65,520 where a frame
has no data), from the nine clearest frames, with those frames as they are and altered
in several ways; and the same scenes drawn without the oddities, for what they cost at all.

    python bench/real_values.py --weights piunet-nir-real.pt [--scenes 40] [--seed 100] [--real DIR]

Only scenes whose selected frames hold such a value are scored: elsewhere the variants
are the same input.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from common import command, report
from PIL import Image

from piunet_dist.data.probav import NO_DATA, NOMINAL_DN, SceneRef, load_scene, select_frames
from piunet_dist.data.sensor import Physics
from piunet_dist.data.synthetic import make_scene
from piunet_dist.evaluation.inference import super_resolve
from piunet_dist.network.baselines import challenge_baseline
from piunet_dist.network.metrics import cpsnr
from piunet_dist.network.weights import model_from_weights

WITHOUT = {"bright_clouds": 0.0, "unmarked_bright": 0.0, "no_data_scenes": 0.0}


def clipped(lr: np.ndarray, qm: np.ndarray) -> np.ndarray:
    return np.minimum(lr, NOMINAL_DN)


def frame_median(lr: np.ndarray, qm: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The pixels `where` of each frame set to the median of its clear ones."""
    out = lr.copy()
    for frame, clear, hole in zip(out, qm, where):
        frame[hole] = np.median(frame[clear]) if clear.any() else np.median(frame)
    return out


def others_median(lr: np.ndarray, qm: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The pixels `where` of each frame set to the median of the frames clear there (else
    of the frame's clear pixels): what the other dates saw."""
    out = frame_median(lr, qm, where)
    seen = np.where(qm & ~where, lr.astype(np.float64), np.nan)
    with np.errstate(all="ignore"):
        across = np.nanmedian(seen, axis=0)
    for frame, hole in zip(out, where):
        known = hole & ~np.isnan(across)
        frame[known] = across[known]
    return out


VARIANTS = {
    "as they are": lambda lr, qm: lr,
    "clipped to 16,383": clipped,
    "no data: frame median": lambda lr, qm: frame_median(lr, qm, lr == NO_DATA),
    "no data: other frames": lambda lr, qm: others_median(lr, qm, lr == NO_DATA),
    "masked: frame median": lambda lr, qm: frame_median(lr, qm, ~qm),
}


def selected(scene: dict) -> np.ndarray:
    clearance = scene["qm"].mean(axis=(1, 2))
    return select_frames(clearance, 9, "paper", np.random.default_rng(0), True)


def score(model, lr: np.ndarray, scene: dict) -> float:
    sr, _ = super_resolve(model, torch.from_numpy(lr.astype(np.float32))[None])
    hr = torch.from_numpy(scene["hr"].astype(np.float32))[None, None]
    return float(cpsnr(sr, hr, torch.from_numpy(scene["sm"])[None, None])[0])


def pasted(model, real: Path) -> list[dict]:
    """A real NIR test scene with a real frame's no-data wedge pasted onto the clearest of its
    nine frames: how far each variant's prediction moves from the scene's own (cPSNR of one
    against the other over the scene's clear HR pixels; higher is nearer)."""
    ref = SceneRef("imgset1306", "NIR", "test", real / "probav" / "test" / "NIR" / "imgset1306")
    scene = load_scene(ref)
    chosen = select_frames(scene.clearance, 9, "paper", np.random.default_rng(0), True)
    lr, qm = scene.lr[chosen], scene.qm[chosen]
    sm = torch.from_numpy(np.asarray(Image.open(ref.path / "SM.png")) != 0)[None, None]  # test scenes ship one too
    own, _ = super_resolve(model, torch.from_numpy(lr.astype(np.float32))[None])
    wedges = {
        "RED imgset1160 LR002": load_scene(
            SceneRef("imgset1160", "RED", "test", real / "probav" / "test" / "RED" / "imgset1160")
        ).lr[2],
        "NIR imgset1306 LR006": scene.lr[6],
    }
    rows = []
    for source, frame in wedges.items():
        hole = frame == NO_DATA
        cut_lr, cut_qm = lr.copy(), qm.copy()
        cut_lr[0][hole], cut_qm[0][hole] = NO_DATA, False
        row = {"wedge from": source, "pixels": int(hole.sum())}
        for name, alter in VARIANTS.items():
            sr, _ = super_resolve(model, torch.from_numpy(alter(cut_lr, cut_qm).astype(np.float32))[None])
            row[name] = float(cpsnr(sr, own, sm)[0])
        rows.append(row)
        print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def synthetic(model, count: int, seed: int) -> list[dict]:
    """Each variant's cPSNR on the synthetic NIR scenes whose nine frames hold an oddity, the
    same scenes drawn without the oddities, the baseline; then means over them."""
    clean = dataclasses.replace(Physics(), **WITHOUT)
    rows = []
    for i in range(count):
        scene = make_scene(seed, "NIR", i)
        chosen = selected(scene)
        lr, qm = scene["lr"][chosen], scene["qm"][chosen]
        bright, no_data = int(((lr > NOMINAL_DN) & (lr != NO_DATA)).sum()), int((lr == NO_DATA).sum())
        if not bright and not no_data:
            continue
        row = {"scene": i, "bright_px": bright, "no_data_px": no_data}
        row |= {name: score(model, alter(lr, qm), scene) for name, alter in VARIANTS.items()}
        plain = make_scene(seed, "NIR", i, clean)
        row["without oddities"] = score(model, plain["lr"][selected(plain)], plain)
        base = challenge_baseline(scene["lr"], scene["qm"])[None, None]
        hr, sm = torch.from_numpy(scene["hr"].astype(np.float32))[None, None], torch.from_numpy(scene["sm"])[None, None]
        row["baseline"] = float(cpsnr(base, hr, sm)[0])
        rows.append(row)
        print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    means = []
    for subset, test in (
        ("with no data", lambda r: r["no_data_px"] > 0),
        ("bright only", lambda r: not r["no_data_px"]),
        ("all", lambda r: True),
    ):
        some = [r for r in rows if test(r)]
        if some:
            means.append({"scene": f"mean, {subset}: {len(some)}", "bright_px": "", "no_data_px": ""})
            means[-1] |= {n: float(np.mean([r[n] for r in some])) for n in COLUMNS}
    return rows + means


COLUMNS = [*VARIANTS, "without oddities", "baseline"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a PIUnet trained on real NIR scenes (a state_dict file)")
    parser.add_argument(
        "--scenes", type=int, default=40, help="scenes drawn (0: none); those without oddities: skipped"
    )
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--real", type=Path, help="the real-scenes folder (../shared/reference/real-scenes)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = model_from_weights(args.weights).eval()
    if args.real:
        report("real-values-pasted", pasted(model, args.real), ["wedge from", "pixels", *VARIANTS])
    if args.scenes:
        report("real-values", synthetic(model, args.scenes, args.seed), ["scene", "bright_px", "no_data_px", *COLUMNS])


if __name__ == "__main__":
    command(main)
