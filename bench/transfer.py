"""Does what a network learns on synthetic scenes hold on real ones? The real scenes in
../shared/reference/real-scenes have no HR; the reference is instead the PIUnet trained on
real NIR scenes (../shared/reference/weights), a network that knows the sensor. Each weights'
cPSNR against the reference's prediction, beside the challenge baseline's, per scene: a proxy
with a bias (on a real NIR scene with its HR it ranked networks as their HR did, and widened
the gaps: BENCHMARKS.md). On RED scenes (--band RED) the reference knows the sensor but not
the band: a weaker proxy, for comparing networks with each other.

Beside it, where each weights' detail differs from the reference's: the radially averaged
power spectrum of its SR over the reference's, in dB, at frequencies in cycles per HR pixel
(1/6 is the LR frames' Nyquist frequency; what lies above it the network must unfold from
the frames' shifts), averaged over the scenes.

With --low-pass F, each SR is also scored with its detail above F cycles per HR pixel taken
out: what that detail is worth. With --gain G, the real frames are scaled by G (to the
nearest 16 DN; bright clouds and no data left as they are) and the reference with them (G
times its prediction of the scene as it is): the same scenes, brighter or dimmer, where a
network trained on a narrow range of brightness may not hold.

Predictions from the nine clearest frames, as `predict` makes them: each weights with the
views `eval.self_ensemble` gives it (--views; auto: plainly, or the 4 rotations for a run
trained with them), the reference plainly. The LR-only scenes have no quality maps: their
pixels above 16,383 DN (bright clouds, no data) count as not clear.

    python bench/transfer.py --weights runs/demo/nir-seed0/best runs/demo/nir-seed1/best
    python bench/transfer.py --band RED --weights runs/demo/red-seed0/best --views 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import command, report
from scenes import SHARED, prediction, real_scenes

from piunet_dist.data.probav import BANDS, NO_DATA, NOMINAL_DN, Scene
from piunet_dist.evaluation.inference import views_for
from piunet_dist.evaluation.members import trained_with_rotations
from piunet_dist.network.baselines import challenge_baseline
from piunet_dist.network.metrics import cpsnr
from piunet_dist.network.weights import model_from_weights

HR = 384
FREQUENCIES = (0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5)  # cycles per HR pixel
HANN = np.outer(np.hanning(HR), np.hanning(HR))
RADIUS = np.rint(HR * np.hypot(*np.meshgrid(np.fft.fftfreq(HR), np.fft.fftfreq(HR), indexing="ij"))).astype(int)


def radial_power(image: torch.Tensor) -> np.ndarray:
    """The radially averaged power spectrum of a (1,1,384,384) image, windowed, at FREQUENCIES."""
    a = image[0, 0].double().numpy()
    power = np.abs(np.fft.fft2((a - a.mean()) * HANN)) ** 2
    radial = np.bincount(RADIUS.ravel(), power.ravel(), HR) / np.maximum(np.bincount(RADIUS.ravel(), None, HR), 1)
    return radial[[round(f * HR) for f in FREQUENCIES]]


def low_passed(image: torch.Tensor, cut: float) -> torch.Tensor:
    """A (1,1,384,384) image without its frequencies above `cut` cycles per pixel."""
    kept = np.real(np.fft.ifft2(np.fft.fft2(image[0, 0].double().numpy()) * (RADIUS <= cut * HR)))
    return torch.from_numpy(kept)[None, None].float()


def scaled(lr: np.ndarray, gain: float) -> np.ndarray:
    """Frames with their values up to 16,383 DN scaled by `gain`, in the sensor's 16-DN steps."""
    out = np.clip(np.rint(lr * gain / 16) * 16, 0, NO_DATA - 16)  # a scaled value is never "no data"
    return np.where(lr <= NOMINAL_DN, out, lr).astype(np.uint16)


def predicted(weights: Path, scenes: list[Scene], views: int = 1) -> list[torch.Tensor]:
    model = model_from_weights(weights).eval()
    return [prediction(model, scene, views) for scene in scenes]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="weights: files or best/ folders")
    parser.add_argument("--band", choices=BANDS, default="NIR", help="the real scenes of this band (default NIR)")
    parser.add_argument(
        "--views", choices=("auto", "1", "4", "8"), default="auto", help="each weights' self-ensemble (default auto)"
    )
    parser.add_argument("--reference", type=Path, default=SHARED / "weights" / "piunet-nir-real.pt")
    parser.add_argument("--real", type=Path, default=SHARED / "real-scenes")
    parser.add_argument(
        "--low-pass", type=float, default=0.0, help="also score each SR cut off above this (cycles/HR px)"
    )
    parser.add_argument("--gain", type=float, default=1.0, help="scale the real frames' DN by this (default 1)")
    args = parser.parse_args()
    if args.gain <= 0:
        parser.error(f"--gain: {args.gain} is not above 0")
    # an LR-only copy has no quality maps: its bright clouds and no data are marked as a map would
    scenes = [
        s if s.masked_frames else Scene(s.name, s.band, s.lr, s.lr <= NOMINAL_DN)
        for s in real_scenes(args.real, args.band)
    ]
    references = predicted(args.reference, scenes)
    if args.gain != 1:
        scenes = [Scene(s.name, s.band, scaled(s.lr, args.gain), s.qm) for s in scenes]
        references = [args.gain * r for r in references]
    everywhere = [torch.ones_like(r, dtype=torch.bool) for r in references]
    baseline = [
        float(cpsnr(challenge_baseline(s.lr, s.qm)[None, None], r, m)[0])
        for s, r, m in zip(scenes, references, everywhere)
    ]
    rows = [
        {
            "of": "challenge baseline",
            "views": 1,
            **{s.name: b for s, b in zip(scenes, baseline)},
            "mean gap (dB)": 0.0,
            "worst scene (dB)": 0.0,
        }
    ]
    if args.low_pass:
        rows[0][f"mean gap, cut above {args.low_pass} (dB)"] = 0.0
    detail = []
    reference_power = [radial_power(r) for r in references]
    for weights in args.weights:
        views = views_for(args.views, trained_with_rotations(weights))
        predictions = predicted(weights, scenes, views)
        scored = [float(cpsnr(p, r, m)[0]) for p, r, m in zip(predictions, references, everywhere)]
        gaps = np.array(scored) - np.array(baseline)
        rows.append(
            {
                "of": str(weights),
                "views": views,
                **{s.name: v for s, v in zip(scenes, scored)},
                "mean gap (dB)": gaps.mean(),
                "worst scene (dB)": gaps.min(),
            }
        )
        if args.low_pass:
            cut = [
                float(cpsnr(low_passed(p, args.low_pass), r, m)[0])
                for p, r, m in zip(predictions, references, everywhere)
            ]
            rows[-1][f"mean gap, cut above {args.low_pass} (dB)"] = float(np.mean(np.array(cut) - np.array(baseline)))
        print(
            f"{weights} ({views} view{'s' if views > 1 else ''}): "
            + " ".join(f"{g:+.2f}" for g in gaps)
            + f" dB over the baseline; mean {gaps.mean():+.2f}"
        )
        ratio = np.mean([10 * np.log10(radial_power(p) / q) for p, q in zip(predictions, reference_power)], axis=0)
        detail.append({"of": str(weights), **{f"{f:.3f}": float(v) for f, v in zip(FREQUENCIES, ratio)}})
    suffix = args.band.lower() + (f"-gain{args.gain:g}" if args.gain != 1 else "")
    suffix += f"-views{args.views}" if args.views != "auto" else ""
    report(f"transfer-{suffix}", rows, list(rows[0]))
    report(f"transfer_detail-{suffix}", detail, list(detail[0]))


if __name__ == "__main__":
    command(main)
