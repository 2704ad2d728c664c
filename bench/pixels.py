"""Do synthetic LR frames hold values and local gradients as real ones do? Per band, real
(../shared/reference/real-scenes, as bench/spectra.py reads them) against `synth`'s: how a
scene's clear values are spread, and how its frames' gradients are spread and oriented.

A pixel counts where it is clear and at most 16,383 DN (bright clouds are not ground), in a
frame where at least half of them do. A band's figure is the median over its scenes of each
scene's, taken over all such frames.

- values, over a scene's pixels: the scenes' medians (DN, the lowest and the highest), the
  spread (interquartile range over the median), the skew (Bowley's: (q75 + q25 - 2 q50) /
  (q75 - q25); 0 for a symmetric spread) and the tails ((q99 - q1) / (q75 - q25); 3.45 for
  a Gaussian).
- gradients, neighbour minus pixel along x and y, in tiles of 32x32 LR px (a training
  patch) whose every pixel counts, each tile's figure and then the median over a scene's
  tiles: the grain (the gradients' interquartile range over the tile's values': how much a
  pixel differs from its neighbour against how much the tile's ground differs from place to
  place) and the tails ((q98 - q2) / (q75 - q25): 3.04 for a Gaussian, 4.64 for a Laplace
  distribution; flat land between sharp edges makes them heavier); and over the scene, the
  rms along x over that along y (the PSF and the noise are wider along x).
- orientation, from the structure tensor (gradients of the frame seen through a Gaussian of
  1 px, gathered by one of 2 px) wherever its whole window counts: the coherence, how much
  of the gradients' energy points one way at each place (1 for parallel lines; white noise
  gives 0.31 through these windows), weighted by that energy; and the scene's one way, the
  same over the whole scene (a direction every place shares: furrows all aligned, a PSF
  elongated along x).

    python bench/pixels.py [--scenes 48] [--seed 1] [--physics NAME=VALUE ...]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import command, report
from scenes import compared_scenes, comparison_arguments, whole_tiles

from piunet_dist.core.errors import UserError
from piunet_dist.data.probav import BANDS
from piunet_dist.data.sensor import blurred

DERIVATIVE_SIGMA, WINDOW_SIGMA = 1.0, 2.0  # LR px
TILE = 32
# a frame mostly under cloud holds too few pixels of ground for its values and orientation
# to speak for the scene's
MIN_USABLE = 0.5


def eroded(mask: np.ndarray, r: int) -> np.ndarray:
    """Where the whole (2 r + 1)-square around a pixel is in `mask` (and inside the frame)."""
    padded = np.pad(mask, r, constant_values=False)
    return np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1)).all(axis=(2, 3))


def tails(values: np.ndarray, share: float) -> float:
    """(q(1 - share) - q(share)) / interquartile range."""
    low, q25, q75, high = np.quantile(values, [share, 0.25, 0.75, 1 - share])
    return float((high - low) / max(q75 - q25, 1e-9))


def tile_gradients(frame: np.ndarray, usable: np.ndarray) -> list[tuple[float, float]]:
    """(grain, tails) of the gradients of each tile of a frame whose every pixel counts."""
    out = []
    for cut in whole_tiles(usable, TILE):
        tile = frame[cut]
        g = np.concatenate([np.diff(tile, axis=1).ravel(), np.diff(tile, axis=0).ravel()])
        g25, g75 = np.quantile(g, [0.25, 0.75])
        v25, v75 = np.quantile(tile, [0.25, 0.75])
        out.append(((g75 - g25) / max(v75 - v25, 1e-9), tails(g, 0.02)))
    return out


def structure(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The structure tensor (xx, yy, xy) at every pixel of a frame."""
    gy, gx = np.gradient(blurred(frame, DERIVATIVE_SIGMA))
    return tuple(blurred(g, WINDOW_SIGMA) for g in (gx * gx, gy * gy, gx * gy))


# how far from a pixel the structure tensor reaches, each Gaussian to 3 sigma and np.gradient's
# neighbour: what the Gaussians bring round from the frame's other edge stays beyond it
TENSOR_REACH = int(np.ceil(3 * (DERIVATIVE_SIGMA + WINDOW_SIGMA))) + 1


def measure_scene(lr: np.ndarray, usable: np.ndarray) -> dict | None:
    """The figures of one scene (None where no tile of it counts)."""
    values, gx, gy, tiles = [], [], [], []
    energy = coherent = 0.0
    summed = np.zeros(2)  # (xx - yy, 2 xy) summed over the scene: the direction its places share
    for frame, ok in zip(lr.astype(np.float64), usable):
        if ok.mean() < MIN_USABLE:
            continue
        values.append(frame[ok])
        gx.append(np.diff(frame, axis=1)[ok[:, 1:] & ok[:, :-1]])
        gy.append(np.diff(frame, axis=0)[ok[1:] & ok[:-1]])
        tiles += tile_gradients(frame, ok)
        filled = np.where(ok, frame, np.median(frame[ok]))  # what lies outside the counted windows
        xx, yy, xy = (t[eroded(ok, TENSOR_REACH)] for t in structure(filled))
        energy += (xx + yy).sum()
        coherent += np.sqrt((xx - yy) ** 2 + 4 * xy**2).sum()
        summed += [(xx - yy).sum(), 2 * xy.sum()]
    if not tiles or energy == 0:
        return None
    values, gx, gy = np.concatenate(values), np.concatenate(gx), np.concatenate(gy)
    q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    grain, gradient_tails = np.median(tiles, axis=0)
    return {
        "median": float(q50),
        "spread": float((q75 - q25) / q50),
        "skew": float((q75 + q25 - 2 * q50) / max(q75 - q25, 1e-9)),
        "tails": tails(values, 0.01),
        "grain": float(grain),
        "gradient tails": float(gradient_tails),
        "x/y": float(np.sqrt(np.mean(gx**2) / np.mean(gy**2))),
        "coherence": float(coherent / energy),
        "one way": float(np.hypot(*summed) / energy),
    }


def measure(scenes, of: str, band: str) -> dict:
    """The median over scenes, given as (lr, where it shows the ground), of each figure; the
    lowest and highest of the scenes' medians in place of their median."""
    figures = [f for f in (measure_scene(lr, usable) for lr, usable in scenes) if f is not None]
    if not figures:
        raise UserError(f"no {of} {band} scene has a frame {MIN_USABLE:.0%} usable with a whole {TILE}x{TILE} tile")
    row = {"band": band, "of": of, "scenes": len(figures)}
    for name in figures[0]:
        found = [f[name] for f in figures]
        row[name] = f"{min(found):,.0f}-{max(found):,.0f}" if name == "median" else float(np.median(found))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    comparison_arguments(parser, scenes=48)
    args = parser.parse_args()
    rows = []
    for band in BANDS:
        real, synthetic = compared_scenes(args, band)
        rows += [measure(real, "real", band), measure(synthetic, "synthetic", band)]
    report("pixels", rows, list(rows[0]))


if __name__ == "__main__":
    command(main)
