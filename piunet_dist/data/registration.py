"""Registration of LR frames to a reference frame by masked phase correlation.

Cloudy pixels are set to the frame's clear mean before a Hann window, so that clouds
and borders do not dominate the cross-power spectrum. The normalised spectrum is
weighted by a Gaussian, which turns the correlation peak into a Gaussian blob whose
centre a three-point fit of its logarithm finds to a fraction of a pixel.
"""

from __future__ import annotations

import numpy as np


def _prepared(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    f = frame.astype(np.float64)
    clear_mean = f[mask].mean() if mask.any() else f.mean()
    f = np.where(mask, f - clear_mean, 0.0)
    window = np.outer(np.hanning(f.shape[0]), np.hanning(f.shape[1]))
    return f * window


PEAK_WIDTH = 0.12  # cycles per pixel: the Gaussian weight of the cross-power spectrum


def _gaussian_offset(left: float, centre: float, right: float) -> float:
    left, centre, right = (np.log(max(v, 1e-12)) for v in (left, centre, right))
    denom = left - 2 * centre + right
    return 0.0 if denom == 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def estimate_shift(frame: np.ndarray, mask: np.ndarray, ref: np.ndarray, ref_mask: np.ndarray) -> tuple[float, float]:
    """(dy, dx) such that frame[y, x] ~ ref[y - dy, x - dx]."""
    spectrum = np.fft.fft2(_prepared(frame, mask)) * np.conj(np.fft.fft2(_prepared(ref, ref_mask)))
    h, w = spectrum.shape
    radius2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    spectrum *= np.exp(-radius2 / (2 * PEAK_WIDTH**2)) / (np.abs(spectrum) + 1e-12)
    corr = np.fft.ifft2(spectrum).real
    py, px = np.unravel_index(np.argmax(corr), corr.shape)
    dy = py + _gaussian_offset(corr[(py - 1) % h, px], corr[py, px], corr[(py + 1) % h, px])
    dx = px + _gaussian_offset(corr[py, (px - 1) % w], corr[py, px], corr[py, (px + 1) % w])
    return (dy - h if dy > h / 2 else dy), (dx - w if dx > w / 2 else dx)


def shift_frame(frame: np.ndarray, mask: np.ndarray, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample frame at (y + dy, x + dx), bilinear; pixels that came from outside are unclear."""
    h, w = frame.shape
    ys = np.arange(h)[:, None] + dy
    xs = np.arange(w)[None, :] + dx
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    f = frame.astype(np.float32)

    def at(yy, xx):
        return f[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

    out = (
        (1 - fy) * (1 - fx) * at(y0, x0)
        + (1 - fy) * fx * at(y0, x0 + 1)
        + fy * (1 - fx) * at(y0 + 1, x0)
        + fy * fx * at(y0 + 1, x0 + 1)
    )
    ny, nx = np.rint(ys).astype(int), np.rint(xs).astype(int)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    new_mask = inside & mask[np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)]
    return out.astype(np.float32), new_mask


def register_frames(lr: np.ndarray, qm: np.ndarray, reference: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align every frame of (N,H,W) lr/qm to frame `reference`: (lr float32, qm, shifts (N,2))."""
    out_lr = np.empty(lr.shape, np.float32)
    out_qm = np.empty(qm.shape, bool)
    shifts = np.zeros((len(lr), 2))
    for i in range(len(lr)):
        if i == reference:
            out_lr[i], out_qm[i] = lr[i], qm[i]
            continue
        shifts[i] = estimate_shift(lr[i], qm[i], lr[reference], qm[reference])
        out_lr[i], out_qm[i] = shift_frame(lr[i], qm[i], *shifts[i])
    return out_lr, out_qm, shifts
