"""What differs between a scene's frames once they are registered, real (../shared/reference/
real-scenes) against `synth`'s, per band: the changes between dates that no shift explains.

Each scene's clearest frames (over 97% clear, up to 10) are registered to the clearest one
(data/registration.py: sub-pixel shifts, applied in Fourier space), given its gain and offset
by least squares, and each is compared with the median of the others. Per 64x64 tile (Hann
window, only tiles clear in the frame): the power of that difference in each ring of
frequencies over the frame's own power there, in dB; the median over a scene's tiles (a few
tiles with an unmarked cloud do not move it), then over scenes. 0 dB: the frames differ as
much as they hold; synthetic frames that agree more than real ones read lower.

A second table: the pixels of that difference far off (beyond 150 DN and 4 robust standard
deviations of it, 8 px from the borders), their share, how many of them touch another (a
4-neighbour also far off: blobs, not single pixels), how far off they are (the median and the
90th percentile of their distance, as a share of the frame's clear mean; frames without a pixel
far off count in the share, not here), and the difference's correlation between neighbours
along x; the median over frames, then over scenes. Last, the tail over frames: the 90th
percentile, over every frame of every scene, of each frame's 90th percentile of that distance.

    python bench/differences.py [--scenes 16] [--seed 1] [--physics seasonal=0.02,0.04 ...]
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np
from common import command, report
from scenes import compared_scenes, comparison_arguments
from spectra import SHOWN, Tiles

from piunet_dist.core.errors import UserError
from piunet_dist.data.probav import BANDS
from piunet_dist.data.registration import estimate_shift
from piunet_dist.data.sensor import transfer

TILE = Tiles(64, window=True)
TILE_ORIGINS = [(y, x) for y in (16, 48) for x in (16, 48)]  # 4 tiles away from the borders a shift wraps


def ring_power(tile: np.ndarray) -> np.ndarray:
    return TILE.radial(TILE.power(tile))


def registered(lr: np.ndarray, usable: np.ndarray, frames: list[int]) -> np.ndarray:
    """The frames moved onto the first one by their sub-pixel shifts and brought to its gain
    and offset; unusable pixels hold the frame's clear mean before the move. The shift is a
    phase ramp, not data/registration.register_frames' bilinear resampling: that blurs what
    it moves, and the blur would read here as a difference at the highest frequencies."""
    ref = frames[0]
    out = []
    for i in frames:
        frame = np.where(usable[i], lr[i], lr[i][usable[i]].mean()).astype(np.float64)
        if i != ref:
            dy, dx = estimate_shift(lr[i], usable[i], lr[ref], usable[ref])
            frame = np.fft.irfft2(np.fft.rfft2(frame) * transfer(frame.shape, -dy, -dx, 0, 0, 0), s=frame.shape)
        both = usable[i] & usable[ref]
        gain, offset = np.polyfit(frame[both], lr[ref][both].astype(np.float64), 1)
        out.append(gain * frame + offset)
    return np.stack(out)


class FarOff(NamedTuple):
    """Of one frame's difference from the others: the share of its pixels far off, the share
    of those touching another, the median and 90th percentile of how far off they are over the
    frame's clear mean (NaN where none is), and its correlation between neighbours along x."""

    share: float
    touching: float
    off_by: float
    off_by_90th: float
    neighbours_x: float


def far_off(beyond: np.ndarray, usable: np.ndarray, level: float) -> FarOff:
    """FarOff of a frame's difference `beyond`, where `usable`, the frame's clear mean `level`."""
    d, m = beyond[8:-8, 8:-8], usable[8:-8, 8:-8]
    spread = 1.4826 * np.median(np.abs(d[m] - np.median(d[m])))
    off = (np.abs(d) > max(150.0, 4 * spread)) & m
    touching = np.zeros_like(off)
    touching[1:] |= off[:-1]
    touching[:-1] |= off[1:]
    touching[:, 1:] |= off[:, :-1]
    touching[:, :-1] |= off[:, 1:]
    pairs = m[:, 1:] & m[:, :-1]
    neighbours = np.corrcoef(d[:, 1:][pairs], d[:, :-1][pairs])[0, 1]
    size = np.percentile(np.abs(d[off]), [50, 90]) / level if off.any() else (np.nan, np.nan)
    return FarOff(off.sum() / m.sum(), (off & touching).sum() / max(off.sum(), 1), *size, neighbours)


def scene_differences(lr: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """dB per bin of TILE of what a frame holds beyond the others, over what it holds, and
    far_off of each frame (a row each); None for a scene with fewer than four frames clear enough."""
    share = usable.reshape(len(lr), -1).mean(axis=1)
    frames = [int(i) for i in np.argsort(-share) if share[i] > 0.97][:10]
    if len(frames) < 4:
        return None
    moved = registered(lr, usable, frames)
    ratios, outliers = [], []
    for k, i in enumerate(frames):
        beyond = moved[k] - np.median(np.delete(moved, k, axis=0), axis=0)
        outliers.append(far_off(beyond, usable[i], moved[k][usable[i]].mean()))
        for y, x in TILE_ORIGINS:
            cut = (slice(y, y + TILE.side), slice(x, x + TILE.side))
            if usable[i][cut].all():
                ratios.append(ring_power(beyond[cut]) / np.maximum(ring_power(moved[k][cut]), 1e-12))
    if not ratios:
        return None
    return 10 * np.log10(np.median(ratios, axis=0)), np.array(outliers)


def band_median(scenes) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Of scenes given as (lr, where it shows the ground): the median over scenes of
    scene_differences' dB, of the median over frames of far_off, the tail over all frames of
    far_off's 90th percentile, and how many scenes had frames clear enough for them."""
    found = [d for d in (scene_differences(lr, usable) for lr, usable in scenes) if d is not None]
    if not found:
        return None, None, None, 0
    off = np.nanmedian([np.nanmedian(f[1], axis=0) for f in found], axis=0)
    tail = np.nanpercentile(np.concatenate([f[1] for f in found])[:, FarOff._fields.index("off_by_90th")], 90)
    return np.median([f[0] for f in found], axis=0), off, tail, len(found)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    comparison_arguments(parser, scenes=16)
    args = parser.parse_args()
    shown = [int(np.argmin(np.abs(TILE.frequencies() - f))) for f in SHOWN]
    rows, outliers = [], []
    for band in BANDS:
        real_frames, synthetic_frames = compared_scenes(args, band)
        real, real_off, real_tail, n_real = band_median(real_frames)
        if not n_real:
            raise UserError(f"--real: {args.real} holds no {band} scene with four frames over 97% clear")
        synthetic, synthetic_off, synthetic_tail, n_synthetic = band_median(synthetic_frames)
        if not n_synthetic:
            raise UserError(f"--scenes: no {band} scene of the {args.scenes} drawn has four frames over 97% clear")
        for name, db in (
            (f"real ({n_real} scenes)", real),
            (f"synthetic ({n_synthetic} scenes)", synthetic),
            ("gap", synthetic - real),
        ):
            rows.append({"band": band, "of": name, **{f"{TILE.frequencies()[i]:.3f}": float(db[i]) for i in shown}})
        for name, off, tail in (("real", real_off, real_tail), ("synthetic", synthetic_off, synthetic_tail)):
            f = FarOff(*(float(v) for v in off))
            outliers.append(
                {
                    "band": band,
                    "of": name,
                    "far_off_%": 100 * f.share,
                    "touching": f.touching,
                    "off_by_%": 100 * f.off_by,
                    "off_by_90th_%": 100 * f.off_by_90th,
                    "tail_over_frames_%": 100 * float(tail),
                    "neighbours_x": f.neighbours_x,
                }
            )
    report("differences", rows, list(rows[0]))
    report("differences_far_off", outliers, list(outliers[0]))


if __name__ == "__main__":
    command(main)
