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
the ground changing between dates, together). And how much each frame's shift changes from
place to place: the rms spread of the shifts of its 32x32 tiles, each registered to the same
tile of the clearest frame (data/registration.py), about their mean, in HR px (a frame
shifted as a whole gives the registration's own error).

    python bench/spectra.py [--scenes 48] [--seed 1] [--physics noise=12,12 ...] [--tile 128 --no-window]

--physics sets the synthetic scenes' physics, as `synth --physics` does.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import command, report
from scenes import compared_scenes, comparison_arguments, whole_tiles

from piunet_dist.data.probav import BANDS, LR_SIZE
from piunet_dist.data.registration import estimate_shift

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

    def power(self, tile: np.ndarray) -> np.ndarray:
        """The power spectrum of a tile without its mean, through the window."""
        return np.abs(np.fft.fft2((tile - tile.mean()) * self.window)) ** 2

    def radial(self, power: np.ndarray) -> np.ndarray:
        """The mean of a power spectrum in each bin."""
        return (np.bincount(self.radius, power.ravel(), self.side) / self.count)[self.bins]

    def spectra(self, frame: np.ndarray, usable: np.ndarray) -> list[np.ndarray]:
        """The share of the power in each bin, for each tile of a frame that shows only ground."""
        out = []
        for cut in whole_tiles(usable, self.side):
            power = self.power(frame[cut].astype(np.float64))
            if power.sum() > 0:
                out.append(self.radial(power) / power.sum())
        return out


def difference_correlation(lr: np.ndarray, usable: np.ndarray) -> tuple[float, float]:
    """Correlation of neighbours along x and y of what each frame holds beyond the others:
    the frame minus the median of the others, each moved by the whole LR pixel that brings
    it nearest, over the pixels where the frame shows the ground."""
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


def local_shift_spread(lr: np.ndarray, usable: np.ndarray, side: int = 32) -> float:
    """Median over a scene's frames of the rms spread (both axes, HR px) of their tiles'
    shifts against the clearest frame's; only frames and tiles nearly all clear count, and a
    tile registered a whole LR pixel off (a mistake, not a warp) is left out."""
    share = usable.reshape(len(lr), -1).mean(axis=1)
    frames = [i for i in np.argsort(-share) if share[i] > 0.97][:12]
    if len(frames) < 3:
        return np.nan
    ref, spreads = frames[0], []
    cuts = [(slice(y, y + side), slice(x, x + side)) for y in range(0, LR_SIZE, side) for x in range(0, LR_SIZE, side)]
    for i in frames[1:]:
        shifts = np.array(
            [
                estimate_shift(lr[i][c], usable[i][c], lr[ref][c], usable[ref][c])
                for c in cuts
                if usable[i][c].mean() > 0.98 and usable[ref][c].mean() > 0.98
            ]
        ).reshape(-1, 2)
        shifts = shifts[np.all(np.abs(shifts - np.median(shifts, axis=0)) < 1, axis=1)]
        if len(shifts) >= 4:
            spreads.append(3 * np.sqrt(shifts.var(axis=0).mean()))
    return float(np.median(spreads)) if spreads else np.nan


def aligned_to(reference: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """`frame` rolled by the whole pixels (-1..1 each way) that bring it nearest `reference`."""
    ref = reference.astype(np.float64)
    best = min(
        ((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
        key=lambda s: np.mean((np.roll(frame.astype(np.float64), s, axis=(0, 1)) - ref)[2:-2, 2:-2] ** 2),
    )
    return np.roll(frame.astype(np.float64), best, axis=(0, 1))


def measure(scenes, tiles: Tiles) -> tuple[np.ndarray, np.ndarray, float]:
    """The band's median spectrum (dB, per bin), the median correlation of its frames'
    differences (x, y) and the median spread of their local shifts (HR px), of scenes given
    as (lr, where it shows the ground)."""
    spectra, correlations, spreads = [], [], []
    for lr, usable in scenes:
        shares = [t for frame, ok in zip(lr, usable) for t in tiles.spectra(frame, ok)]
        if shares:
            spectra.append(10 * np.log10(np.mean(shares, axis=0)))
        correlations.append(difference_correlation(lr, usable))
        spreads.append(local_shift_spread(lr, usable))
    return np.median(spectra, axis=0), np.nanmedian(np.array(correlations), axis=0), float(np.nanmedian(spreads))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    comparison_arguments(parser, scenes=48, scenes_help="synthetic scenes a band (16: 0.7 dB noisier)")
    parser.add_argument("--tile", type=int, default=64, choices=(32, 64, 128), help="tile side (128: whole frames)")
    parser.add_argument("--no-window", action="store_true", help="no Hann window: the tiles' edges add to the spectra")
    args = parser.parse_args()
    tiles = Tiles(args.tile, window=not args.no_window)
    shown = [int(np.argmin(np.abs(tiles.frequencies() - f))) for f in SHOWN]
    rows = []
    worst = {}
    for band in BANDS:
        real, synthetic = compared_scenes(args, band)
        (real_db, real_corr, real_spread), (synth_db, synth_corr, synth_spread) = (
            measure(real, tiles),
            measure(synthetic, tiles),
        )
        gap = synth_db - real_db
        worst[band] = float(np.abs(gap).max())
        for name, db, corr, spread in (
            ("real", real_db, real_corr, real_spread),
            ("synthetic", synth_db, synth_corr, synth_spread),
            ("gap", gap, None, None),
        ):
            counted = {"real": f" ({len(real)} scenes)", "synthetic": f" ({args.scenes} scenes)"}.get(name, "")
            row = {"band": band, "of": name + counted}
            row.update({f"{tiles.frequencies()[i]:.3f}": float(db[i]) for i in shown})
            row["worst |gap|"] = worst[band] if name == "gap" else ""
            row["differences corr x, y"] = "" if corr is None else f"{corr[0]:.2f}, {corr[1]:.2f}"
            row["local shift spread (HR px)"] = "" if spread is None else round(spread, 3)
            rows.append(row)
    report(f"spectra-{args.tile}" + ("-nowindow" if args.no_window else ""), rows, list(rows[0]))
    print("worst gap from 0.06 to 0.49 cycles/px: " + ", ".join(f"{b} {w:.2f} dB" for b, w in worst.items()))


if __name__ == "__main__":
    command(main)
