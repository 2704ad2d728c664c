"""The ground a synthetic scene looks at: natural terrain (ridges and slopes, branching
drainage, texture at every scale) mixed with fields, thin roads, settlements and water, in
proportions drawn per scene, in the 14-bit range of a band. PROBA-V's scenes come from many
regions of the world; so does the mix.
"""

from __future__ import annotations

import numpy as np

from .sensor import blurred

BAND_LEVELS = {"NIR": (9000.0, 1800.0), "RED": (6000.0, 1200.0)}  # mean, spread in DN
# how each land cover looks in each band, in units of the spread: vegetation is bright in
# NIR and dark in RED, water dark in both, settlements and roads bright in RED
COVER_LEVELS = {
    "NIR": {"fields": 0.3, "water": -3.0, "settlement": -0.3, "road": -0.8, "channel": -1.2},
    "RED": {"fields": -0.2, "water": -1.5, "settlement": 1.2, "road": 1.5, "channel": -0.8},
}
# the weight of the smooth height field in the relief, by band: real RED frames hold more of
# their variance from 0.19 to 0.31 cycles per LR pixel than NIR ones do, and less at the
# largest scales (bench/spectra.py against the real frames; BENCHMARKS.md)
HEIGHT_WEIGHT = {"NIR": 0.5, "RED": 0.3}


def fractal_noise(rng: np.random.Generator, size: int, beta: float, lowest: float = 0.0) -> np.ndarray:
    """Zero-mean unit-variance noise with power spectrum 1/f^beta, without the frequencies
    below `lowest` (cycles per pixel)."""
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    f[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) / f ** (beta / 2)
    spectrum[f < max(lowest, 1e-9)] = 0.0
    out = np.fft.irfft2(spectrum, s=(size, size))
    return out / out.std()


def _smooth_mask(rng, size: int, share: float, beta: float = 3.0) -> np.ndarray:
    """A soft mask over about `share` of the image, in large smooth patches."""
    if share <= 0:
        return np.zeros((size, size))
    field = fractal_noise(rng, size, beta)
    edge = np.quantile(field, 1 - share)
    return np.clip((field - edge) / 0.3 + 0.5, 0, 1)


def _distance_to_path(points: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        best = np.minimum(best, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return best


def _line(distance: np.ndarray, half_width: float) -> np.ndarray:
    """A line of that half-width, antialiased over a pixel."""
    return np.clip(half_width + 0.5 - distance, 0, 1)


def terrain(rng, size: int, height_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Relief as it looks from above (slopes lit from one side, sharp ridges, texture at every
    scale), and the height it comes from."""
    height = fractal_noise(rng, size, rng.uniform(2.4, 3.0))
    gy, gx = np.gradient(height * rng.uniform(20, 60))
    light = rng.uniform(0, 2 * np.pi)
    shade = (np.cos(light) * gx + np.sin(light) * gy) / np.sqrt(1 + gx**2 + gy**2)
    ridges = 1 - np.abs(fractal_noise(rng, size, rng.uniform(1.8, 2.4)))
    relief = height_weight * height + 0.6 * shade / (shade.std() + 1e-9) + 0.4 * (ridges**3 - (ridges**3).mean())
    relief += rng.uniform(0.1, 0.3) * fractal_noise(rng, size, 1.3) + 0.05 * fractal_noise(rng, size, 0.6)
    return relief / relief.std(), height


def drainage(rng, height: np.ndarray, sources: int) -> np.ndarray:
    """Branching channels: water from many sources flowing downhill, merging as it goes;
    the more water, the wider the channel (1 to 3 px)."""
    size = height.shape[0]
    gy, gx = np.gradient(blurred(height, 3.0))
    flow = np.zeros_like(height)
    y, x = rng.uniform(0, size, (2, sources))
    for _ in range(2 * size):  # every source a step at a time, until each has run off the image
        iy, ix = y.astype(int), x.astype(int)
        inside = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size) & (y >= 0) & (x >= 0)
        if not inside.any():
            break
        y, x, iy, ix = y[inside], x[inside], iy[inside], ix[inside]
        np.add.at(flow, (iy, ix), 1)
        down = -np.stack([gy[iy, ix], gx[iy, ix]])
        down += rng.normal(0, 0.15, down.shape) * np.hypot(*down)
        norm = np.maximum(np.hypot(*down), 1e-12)
        y, x = y + down[0] / norm, x + down[1] / norm
    # widen by the flow: a pixel-wide line where one source ran, up to three where many met
    return np.clip(1.6 * blurred(np.minimum(flow, 3) / 3, 0.6), 0, 1)


def fields(rng, size: int) -> np.ndarray:
    """Parcels, each with a brightness and a furrow texture of its own: the cells of seeds
    jittered on a grid, each pixel the parcel of the nearest seed among its 3x3 cells."""
    cell = rng.uniform(25, 60)
    cells = int(np.ceil(size / cell)) + 2
    seeds = (np.mgrid[0:cells, 0:cells].transpose(1, 2, 0) - 1 + rng.random((cells, cells, 2))) * cell
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = (yy // cell).astype(int) + 1, (xx // cell).astype(int) + 1
    best, label = np.full((size, size), np.inf, np.float32), np.zeros((size, size), int)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            sy, sx = np.clip(cy + oy, 0, cells - 1), np.clip(cx + ox, 0, cells - 1)
            d = (yy - seeds[sy, sx, 0]) ** 2 + (xx - seeds[sy, sx, 1]) ** 2
            nearer = d < best
            best, label = np.where(nearer, d, best), np.where(nearer, sy * cells + sx, label)
    n = cells * cells
    level = rng.normal(0, 1, n)[label]
    angle = rng.uniform(0, np.pi, n)[label]
    period = rng.uniform(3, 10, n)[label]
    strength = rng.uniform(0, 0.3, n)[label]
    furrows = strength * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    borders = (np.diff(label, axis=0, prepend=label[:1]) != 0) | (np.diff(label, axis=1, prepend=label[:, :1]) != 0)
    return level + furrows - 0.5 * borders


def roads(rng, size: int) -> np.ndarray:
    """A few thin roads, one or two pixels wide, straight or gently bending."""
    out = np.zeros((size, size))
    for _ in range(rng.integers(0, 5)):
        start, angle = rng.uniform(0, size, 2), rng.uniform(0, np.pi)
        points = [start - 2 * size * np.array([np.sin(angle), np.cos(angle)])]
        for _ in range(12):
            angle += rng.normal(0, 0.08)
            points.append(points[-1] + (size / 3) * np.array([np.sin(angle), np.cos(angle)]))
        out = np.maximum(out, _line(_distance_to_path(np.array(points), size), rng.uniform(0.3, 0.9)))
    return out


def settlement(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where a town is (a soft mask) and its blocky texture."""
    mask = _smooth_mask(rng, size, rng.choice([0.0, rng.uniform(0.02, 0.12)]), beta=3.5)
    blocks = np.kron(rng.normal(0, 1, (size // 3 + 1, size // 3 + 1)), np.ones((3, 3)))[:size, :size]
    return mask, blocks + 0.5 * fractal_noise(rng, size, 0.8)


def landscape(rng: np.random.Generator, band: str, size: int) -> np.ndarray:
    """A ground image in DN, float64, (size, size): one scene's mix of land covers."""
    mean, spread = BAND_LEVELS[band]
    mean *= rng.uniform(0.75, 1.25)
    spread *= rng.uniform(0.6, 1.3)
    levels = COVER_LEVELS[band]
    relief, height = terrain(rng, size, HEIGHT_WEIGHT[band])
    ground = relief
    farmed = _smooth_mask(rng, size, rng.uniform(0.0, 0.8))
    ground = (1 - farmed) * ground + farmed * (levels["fields"] + 0.7 * fields(rng, size) + 0.3 * relief)
    town, blocks = settlement(rng, size)
    ground = (1 - town) * ground + town * (levels["settlement"] + 0.8 * blocks)
    channels = drainage(rng, height, int(rng.integers(20, 90)))
    ground = (1 - channels) * ground + channels * (levels["channel"] + 0.2 * relief)
    water = _smooth_mask(rng, size, rng.choice([0.0, rng.uniform(0.01, 0.08)]), beta=3.5)
    ground = (1 - water) * ground + water * (levels["water"] + 0.05 * relief)
    road = roads(rng, size)
    ground = (1 - road) * ground + road * levels["road"]
    return np.clip(mean + spread * ground, 200, 16000)
