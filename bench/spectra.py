"""Do synthetic LR frames hold the detail real ones hold? The radially averaged power spectrum
of clear LR frames, real (../shared/reference/real-scenes: the test scenes with their quality
maps, the LR-only scenes taken as clear) against `synth`'s, per band, in dB by frequency in
cycles per LR pixel; and how what differs between a scene's frames correlates between
neighbours along x and y.

Each frame is cut into tiles (64x64 by default); a tile counts where every pixel is clear
and at most 16,383 DN (bright clouds are not ground). Its mean is removed, a Hann window
applied (so that the tile's edges add no power of their own), and the mean power of each
ring of frequencies divided by the tile's total power: what is compared is the shape of the
spectrum, not the tile's contrast. A scene's spectrum is the mean over its tiles; a band's, the
median over scenes. What differs between frames: a frame minus the median of the others,
each moved by the whole LR pixel that brings it nearest (noise, sub-pixel shifts, blur and
the ground changing between dates, together).

    python bench/spectra.py [--scenes 48] [--seed 1] [--physics noise=12,12 ...] [--tile 128 --no-window]

--physics sets the synthetic scenes' physics, as `synth --physics` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import report
from scenes import SHARED, real_scenes

from piunet_dist.data.probav import BANDS, NOMINAL_DN
from piunet_dist.data.synthetic import make_scene, physics_from

SHOWN = (0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.484)  # cycles per LR pixel


class Tiles:
    """Square tiles of `side` px, with a Hann window or none: the radial spectrum of each,
    in bins of one cycle per tile from 0.06 to 0.49 cycles per pixel."""

    def __init__(self, side: int, window: bool):
        self.side = side
        self.bins = np.arange(round(0.0625 * side), side // 2)
        self.window = np.outer(np.hanning(side), np.hanning(side)) if window else np.ones((side, side))
        f = np.fft.fftfreq(side)
        self.radius = np.rint(side * np.hypot(*np.meshgrid(f, f, indexing="ij"))).astype(int).ravel()
        self.count = np.maximum(np.bincount(self.radius, None, side), 1)

    def frequencies(self) -> np.ndarray:
        return self.bins / self.side

    def spectra(self, frame: np.ndarray, clear: np.ndarray) -> list[np.ndarray]:
        """The share of the power in each bin, for each usable tile of a frame."""
        out, side = [], self.side
        usable = clear & (frame <= NOMINAL_DN)
        for y in range(0, frame.shape[0] - side + 1, side):
            for x in range(0, frame.shape[1] - side + 1, side):
                if not usable[y : y + side, x : x + side].all():
                    continue
                tile = frame[y : y + side, x : x + side].astype(np.float64)
                power = np.abs(np.fft.fft2((tile - tile.mean()) * self.window)) ** 2
                if power.sum() > 0:
                    radial = np.bincount(self.radius, power.ravel(), side) / self.count
                    out.append(radial[self.bins] / power.sum())
        return out


def difference_correlation(lr: np.ndarray, clear: np.ndarray) -> tuple[float, float]:
    """Correlation of neighbours along x and y of what each frame holds beyond the others:
    the frame minus the median of the others, each moved by the whole LR pixel that brings
    it nearest, over the frame's clear pixels."""
    usable = clear & (lr <= NOMINAL_DN)
    frames = [i for i in range(len(lr)) if usable[i].mean() > 0.9][:12]
    if len(frames) < 3:
        return np.nan, np.nan
    sums = np.zeros(3)
    for i in frames:
        others = [aligned_to(lr[i], lr[j]) for j in frames if j != i]
        rest = np.median(np.stack(others), axis=0)
        d = lr[i].astype(np.float64) - rest
        m = usable[i]
        d = np.where(m, d - d[m].mean(), 0.0)
        sums += [(d * d).sum(), (d[:, 1:] * d[:, :-1]).sum(), (d[1:] * d[:-1]).sum()]
    return sums[1] / sums[0], sums[2] / sums[0]


def aligned_to(reference: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """`frame` rolled by the whole pixels (-1..1 each way) that bring it nearest `reference`."""
    ref = reference.astype(np.float64)
    best = min(
        ((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
        key=lambda s: np.mean((np.roll(frame.astype(np.float64), s, axis=(0, 1)) - ref)[2:-2, 2:-2] ** 2),
    )
    return np.roll(frame.astype(np.float64), best, axis=(0, 1))


def measure(scenes, tiles: Tiles) -> tuple[np.ndarray, np.ndarray]:
    """The band's median spectrum (dB, per bin) and the median correlation of its frames' differences (x, y)."""
    spectra, correlations = [], []
    for lr, qm in scenes:
        shares = [t for frame, clear in zip(lr, qm) for t in tiles.spectra(frame, clear)]
        if shares:
            spectra.append(10 * np.log10(np.mean(shares, axis=0)))
        correlations.append(difference_correlation(lr, qm))
    return np.median(spectra, axis=0), np.nanmedian(np.array(correlations), axis=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=SHARED / "real-scenes")
    parser.add_argument("--scenes", type=int, default=48, help="synthetic scenes a band (16: 0.7 dB noisier)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--physics", nargs="*", default=[], help="NAME=VALUE over synth's defaults")
    parser.add_argument("--tile", type=int, default=64, choices=(32, 64, 128), help="tile side (128: whole frames)")
    parser.add_argument("--no-window", action="store_true", help="no Hann window: the tiles' edges add to the spectra")
    args = parser.parse_args()
    physics = physics_from("proba-v", args.physics)
    tiles = Tiles(args.tile, window=not args.no_window)
    shown = [int(np.argmin(np.abs(tiles.frequencies() - f))) for f in SHOWN]
    rows = []
    worst = {}
    for band in BANDS:
        real = [(s.lr, s.qm) for s in real_scenes(args.real, band)]
        synthetic = [(s["lr"], s["qm"]) for s in (make_scene(args.seed, band, i, physics) for i in range(args.scenes))]
        (real_db, real_corr), (synth_db, synth_corr) = measure(real, tiles), measure(synthetic, tiles)
        gap = synth_db - real_db
        worst[band] = float(np.abs(gap).max())
        for name, db, corr in (("real", real_db, real_corr), ("synthetic", synth_db, synth_corr), ("gap", gap, None)):
            counted = {"real": f" ({len(real)} scenes)", "synthetic": f" ({args.scenes} scenes)"}.get(name, "")
            row = {"band": band, "of": name + counted}
            row.update({f"{tiles.frequencies()[i]:.3f}": float(db[i]) for i in shown})
            row["worst |gap|"] = worst[band] if name == "gap" else ""
            row["differences corr x, y"] = "" if corr is None else f"{corr[0]:.2f}, {corr[1]:.2f}"
            rows.append(row)
    report(f"spectra-{args.tile}" + ("-nowindow" if args.no_window else ""), rows, list(rows[0]))
    print("worst gap from 0.06 to 0.49 cycles/px: " + ", ".join(f"{b} {w:.2f} dB" for b, w in worst.items()))


if __name__ == "__main__":
    main()
