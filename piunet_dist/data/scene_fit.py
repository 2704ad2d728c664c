"""The sensor model fitted to scenes with a target, beside what every scene's values hold:
what `synth --describe TREE` prints.

Each LR frame is fitted as gain · (3×3 mean of (Gaussian PSF ∗ shifted HR)) + a smooth
offset (a quadratic surface, which takes the slow brightness changes between dates), over
the pixels clear in both masks, away from the borders, once more without the pixels the
first fit explains worst (outliers, land that changed). What is left in flat areas is the
noise. The same model makes synthetic frames (sensor.py), so a synthetic tree, fitted, gives
back the physics it was drawn with, and a real tree says what to draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.errors import UserError
from ..core.stop import process_pool
from .probav import BANDS, find_scenes, load_scene
from .scene_values import SceneValues, scene_values, values_lines

BORDER = 6  # LR px left out at each side: what the shifts and the PSF draw from beyond the HR
PAD = 24  # HR px of mirrored margin, so that the Fourier shift sees no edge
SEARCH = 6  # HR px: the shifts tried before the fine fit, each axis, in steps of STEP
STEP = 2  # within the fine fit's reach of the true shift
FLAT = 0.3  # the share of pixels with the least model gradient where the noise is measured


@dataclass
class FrameFit:
    dy: float
    dx: float
    sigma_x: float  # PSF width along the columns (HR px)
    sigma_y: float  # along the rows
    gain: float
    mean_change: float  # of the frame's mean against the HR's, as a share
    noise: float  # DN, in flat areas
    correlation_x: float
    correlation_y: float
    clear: float  # the frame's clear share
    residual: float  # rms of what the model leaves, DN


class FrameModel:
    """Views of one HR image by the sensor model, differentiable in shift and PSF."""

    def __init__(self, hr: np.ndarray):
        padded = np.pad(hr.astype(np.float64), PAD, mode="symmetric")
        self.size = padded.shape
        self.spectrum = torch.fft.rfft2(torch.from_numpy(padded))
        self.fy = torch.fft.fftfreq(self.size[0], dtype=torch.float64)[:, None]
        self.fx = torch.fft.rfftfreq(self.size[1], dtype=torch.float64)[None, :]

    def view(self, dy, dx, sigma_x, sigma_y, rho) -> torch.Tensor:
        quadratic = sigma_y**2 * self.fy**2 + sigma_x**2 * self.fx**2 + 2 * rho * sigma_x * sigma_y * self.fx * self.fy
        phase = -2 * math.pi * (self.fy * dy + self.fx * dx)
        transfer = torch.exp(-2 * math.pi**2 * quadratic) * torch.complex(torch.cos(phase), torch.sin(phase))
        seen = torch.fft.irfft2(self.spectrum * transfer, s=self.size)[PAD:-PAD, PAD:-PAD]
        return F.avg_pool2d(seen[None, None], 3)[0, 0]


def _design(v: torch.Tensor) -> torch.Tensor:
    """The columns the frame is explained by: the view, and a quadratic surface."""
    h, w = v.shape
    y = torch.linspace(-1, 1, h, dtype=v.dtype)[:, None].expand(h, w)
    x = torch.linspace(-1, 1, w, dtype=v.dtype)[None, :].expand(h, w)
    return torch.stack([v, torch.ones_like(v), x, y, x * x, x * y, y * y], dim=-1)


def _solve(v: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares coefficients over the kept pixels, and the residual image."""
    a = _design(v)
    ak, yk = a[keep], target[keep]
    coef = torch.linalg.solve(ak.T @ ak + 1e-9 * torch.eye(a.shape[-1], dtype=a.dtype), ak.T @ yk)
    return coef, target - a @ coef


def fit_frame(model: FrameModel, lr: np.ndarray, clear: np.ndarray) -> FrameFit | None:
    """One frame's shift, PSF, gain, change and noise; None where too little is clear."""
    keep = torch.from_numpy(clear.copy())
    keep[:BORDER], keep[-BORDER:], keep[:, :BORDER], keep[:, -BORDER:] = False, False, False, False
    if keep.sum() < 2000:
        return None
    target = torch.from_numpy(lr.astype(np.float64))
    scale = float(target[keep].std()) or 1.0
    with torch.no_grad():  # the coarse search, with a typical PSF
        start = min(
            (float((_solve(model.view(dy, dx, 0.8, 0.6, 0.0), target, keep)[1][keep] ** 2).mean()), dy, dx)
            for dy in range(-SEARCH, SEARCH + 1, STEP)
            for dx in range(-SEARCH, SEARCH + 1, STEP)
        )
    params = torch.tensor(
        [start[1], start[2], math.log(0.8), math.log(0.6), 0.0], dtype=torch.float64, requires_grad=True
    )

    def fitted(keep):
        optimizer = torch.optim.LBFGS([params], lr=1, max_iter=40, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            v = model.view(params[0], params[1], params[2].exp(), params[3].exp(), torch.tanh(params[4]))
            loss = (_solve(v, target, keep)[1][keep] ** 2).mean() / scale**2
            loss.backward()
            return loss

        optimizer.step(closure)

    fitted(keep)
    with torch.no_grad():
        v = model.view(params[0], params[1], params[2].exp(), params[3].exp(), torch.tanh(params[4]))
        residual = _solve(v, target, keep)[1]
        spread = 1.4826 * float(residual[keep].abs().median())
        keep = keep & (residual.abs() < 3.5 * spread)  # outliers and changed land
    fitted(keep)
    with torch.no_grad():
        dy, dx, sx, sy, rho = params[0], params[1], params[2].exp(), params[3].exp(), torch.tanh(params[4])
        v = model.view(dy, dx, sx, sy, rho)
        coef, residual = _solve(v, target, keep)
        gy, gx = torch.gradient(v)
        slope = torch.hypot(gx, gy)
        flat = keep & (slope <= torch.quantile(slope[keep], FLAT))
        # second differences across one axis take out what varies slowly (the dates' brightness
        # fields) and keep the noise: across y for its level and its correlation along x,
        # across x for its correlation along y
        r, f = residual.numpy(), flat.numpy()
        across_y = r[1:-1] - (r[:-2] + r[2:]) / 2
        across_x = r[:, 1:-1] - (r[:, :-2] + r[:, 2:]) / 2
        in_y = f[1:-1] & f[:-2] & f[2:]
        in_x = f[:, 1:-1] & f[:, :-2] & f[:, 2:]
        noise = 1.4826 * float(np.median(np.abs(across_y[in_y]))) / math.sqrt(1.5) if in_y.any() else math.nan

        def correlation(a, b, both):
            a, b = a[both], b[both]
            return float(np.corrcoef(a, b)[0, 1]) if len(a) > 10 else math.nan

        return FrameFit(
            float(dy),
            float(dx),
            float(sx),
            float(sy),
            float(coef[0]),
            float(target[keep].mean() / v[keep].mean() - 1),
            noise,
            correlation(across_y[:, :-1], across_y[:, 1:], in_y[:, :-1] & in_y[:, 1:]),
            correlation(across_x[:-1], across_x[1:], in_x[:-1] & in_x[1:]),
            float(clear.mean()),
            float(residual[keep].pow(2).mean().sqrt()),
        )


@dataclass
class SceneFit:
    name: str
    band: str
    frames: list[FrameFit]
    n_frames: int
    clear: list[float]  # every frame's clear share
    hr_clear: float


def fit_scene(scene, min_clear: float = 0.6) -> SceneFit:
    """Every frame of a scene more than `min_clear` clear, fitted against its HR."""
    model = FrameModel(scene.hr)
    # an LR pixel is clear in the target where its nine HR pixels are
    target_clear = scene.sm.reshape(scene.lr.shape[1], 3, scene.lr.shape[2], 3).all(axis=(1, 3))
    fits = []
    for frame, qm, share in zip(scene.lr, scene.qm, scene.clearance):
        if share > min_clear:
            found = fit_frame(model, frame, qm & target_clear)
            if found is not None:
                fits.append(found)
    return SceneFit(
        scene.name, scene.band, fits, len(scene.lr), [float(c) for c in scene.clearance], float(scene.sm.mean())
    )


def _fit_ref(ref) -> SceneFit:
    torch.set_num_threads(1)
    return fit_scene(load_scene(ref))


def fit_tree(root: Path, per_band: int, workers: int) -> list[SceneFit]:
    """The sensor model fitted to the first `per_band` scenes with a target of each band."""
    refs = [r for r in find_scenes(root) if r.has_target and (r.path / "HR.png").is_file()]
    chosen = [r for band in BANDS for r in [r for r in refs if r.band == band][:per_band]]
    with process_pool(workers) as pool:
        return list(pool.map(_fit_ref, chosen))


def _values_of(ref) -> SceneValues:
    return scene_values(load_scene(ref, masks_required=False))


def tree_values(refs: list, workers: int) -> list[SceneValues]:
    with process_pool(workers) as pool:
        return list(tqdm(pool.map(_values_of, refs, chunksize=4), total=len(refs), desc="values", unit="scene"))


def jumped(shifts: np.ndarray) -> np.ndarray:
    """Frames that sit more than 1.5 HR px off the scene's median shift along an axis."""
    return (np.abs(shifts - np.median(shifts, axis=0)) > 1.5).any(axis=1)


def scene_summary(fit: SceneFit) -> dict:
    """What one scene shows: its grid offset, its frames' scatter about it, its jumps, ..."""
    shifts = np.array([[f.dy, f.dx] for f in fit.frames]) if fit.frames else np.zeros((0, 2))
    off = jumped(shifts) if len(shifts) else np.zeros(0, bool)
    steady = shifts[~off]
    return {
        "frames": fit.n_frames,
        "fitted": len(fit.frames),
        "jumped": int(off.sum()),
        "offset_x": float(np.mean(steady[:, 1])) if len(steady) else math.nan,
        "offset_y": float(np.mean(steady[:, 0])) if len(steady) else math.nan,
        "scatter": float(np.sqrt(np.mean(np.var(steady, axis=0)))) if len(steady) > 1 else math.nan,
        "sigma_x": [f.sigma_x for f in fit.frames],
        "sigma_y": [f.sigma_y for f in fit.frames],
        "gain_spread": float(np.std([f.gain for f in fit.frames])) if fit.frames else math.nan,
        "mean_change": float(np.std([f.mean_change for f in fit.frames])) if fit.frames else math.nan,
        "noise": [f.noise for f in fit.frames],
        "correlation_x": [f.correlation_x for f in fit.frames],
        "correlation_y": [f.correlation_y for f in fit.frames],
        "clear": fit.clear,
        "hr_clear": fit.hr_clear,
        "residual": [f.residual for f in fit.frames],
    }


def _range(values) -> str:
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if not len(v):
        return "-"
    low, mid, high = np.percentile(v, [5, 50, 95])
    return f"{mid:8.3f}   {low:.3f} .. {high:.3f}"


def describe(root: Path, per_band: int, workers: int) -> str:
    """The table of what the scenes of a tree show, per band: the values of every scene, and
    the sensor model fitted to those with a target."""
    refs = find_scenes(root)
    if not refs:
        raise UserError(f"{root}: no scenes (expected {root}/train/NIR/imgsetNNNN/LR000.png ...)")
    values = dict(zip(refs, tree_values(refs, workers)))
    fits = fit_tree(root, per_band, workers)
    lines = [f"{root}: what its scenes' values hold (docs/method.md section 5)", ""]
    for band in BANDS:
        found = [v for r, v in values.items() if r.band == band]
        if found:
            lines += values_lines(band, found) + [""]
    if not fits:
        return "\n".join(lines + ["no scene with HR.png and SM.png: the sensor model is fitted only against a target"])
    lines += [
        "the sensor model fitted (docs/method.md section 7); x is the column index, y the row index, in HR pixels",
        "",
    ]
    for band in BANDS:
        scenes = [scene_summary(f) for f in fits if f.band == band]
        if scenes:
            lines += band_lines(band, scenes) + [""]
    return "\n".join(lines).rstrip()


def band_lines(band: str, scenes: list[dict]) -> list[str]:
    def over_frames(key):
        return [x for s in scenes for x in s[key]]

    rows = [
        ("frames per scene", [s["frames"] for s in scenes]),
        ("frames fitted per scene (> 60% clear)", [s["fitted"] for s in scenes]),
        ("shift offset x, per scene", [s["offset_x"] for s in scenes]),
        ("shift offset y, per scene", [s["offset_y"] for s in scenes]),
        ("shift scatter about it, per scene", [s["scatter"] for s in scenes]),
        ("frames a whole LR pixel off, per scene", [s["jumped"] for s in scenes]),
        ("PSF width x, per frame", over_frames("sigma_x")),
        ("PSF width y, per frame", over_frames("sigma_y")),
        ("PSF width x - y, per frame", [a - b for s in scenes for a, b in zip(s["sigma_x"], s["sigma_y"])]),
        ("gain spread (sd), per scene", [s["gain_spread"] for s in scenes]),
        ("frame mean change (sd), per scene", [s["mean_change"] for s in scenes]),
        ("noise in flat areas (DN), per frame", over_frames("noise")),
        ("noise correlation along x", over_frames("correlation_x")),
        ("noise correlation along y", over_frames("correlation_y")),
        ("what the model leaves (rms DN), per frame", over_frames("residual")),
        ("clear share, per frame", over_frames("clear")),
        ("HR clear share, per scene", [s["hr_clear"] for s in scenes]),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{band}: {len(scenes)} scenes", f"  {'':<{width}}  {'median':>8}   5% .. 95%"] + [
        f"  {name:<{width}}  {_range(values)}" for name, values in rows
    ]
