"""Synthetic scenes written in exactly the PROBA-V challenge layout.

An HR scene is a landscape with structure at many scales: a fractal base, fields with
their own brightness and furrow texture, a meandering river, straight roads and fine
texture, in the 14-bit range. Each LR frame views it through its own sub-pixel and
few-pixel shift and an optical blur, averaged over 3x3 pixels, with its own gain and
offset, sensor noise and clouds that its quality map marks. norm.csv holds the cPSNR of
the challenge baseline on every scene, test scenes included (their HR is not written).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..core.errors import UserError
from ..core.files import replacing
from ..core.stop import process_pool, raising_on_signals
from ..network.baselines import challenge_baseline
from ..network.metrics import cpsnr
from .probav import BANDS, HR_SIZE, LR_SIZE, MAX_DN

PAD = 24  # HR margin that shifted views draw from
MAX_SHIFT = 4.5  # HR pixels, each axis (1.5 LR pixels)
FRAMES = (9, 30)  # frames per scene, inclusive
BAND_LEVELS = {"NIR": (9000.0, 1800.0), "RED": (6000.0, 1200.0)}  # mean, spread in DN


def fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Zero-mean unit-variance noise with power spectrum 1/f^beta."""
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    f[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) / f ** (beta / 2)
    spectrum[0, 0] = 0.0
    out = np.fft.irfft2(spectrum, s=(size, size))
    return out / out.std()


def _fields(rng, size):
    """Voronoi fields, each with a brightness and a furrow texture of its own."""
    n = rng.integers(25, 70)
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    label = d.argmin(axis=-1)
    level = rng.normal(0, 1, n)[label]
    angle = rng.uniform(0, np.pi, n)[label]
    period = rng.uniform(4, 12, n)[label]
    strength = rng.uniform(0, 0.35, n)[label]
    furrows = strength * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    return level + furrows


def _distance_to_path(points: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        best = np.minimum(best, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return best


def _river(rng, size):
    angle = rng.uniform(0, 2 * np.pi)
    pos = np.array([size / 2, size / 2]) - 0.75 * size * np.array([np.sin(angle), np.cos(angle)])
    points = [pos.copy()]
    turn = 0.0
    for _ in range(40):
        turn = 0.8 * turn + rng.normal(0, 0.12)
        angle += turn
        pos = pos + (size / 25) * np.array([np.sin(angle), np.cos(angle)])
        points.append(pos.copy())
    width = rng.uniform(2, 7)
    return np.clip(1.5 - _distance_to_path(np.array(points), size) / width, 0, 1)


def _roads(rng, size):
    out = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(0, 4)):
        a, b = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        direction = (b - a) / np.linalg.norm(b - a)
        ends = np.array([a - 2 * size * direction, a + 2 * size * direction])
        out = np.maximum(out, np.clip(1.5 - _distance_to_path(ends, size) / rng.uniform(1, 2), 0, 1))
    return out


def landscape(rng: np.random.Generator, band: str, size: int) -> np.ndarray:
    """An HR scene in DN, float64, (size, size)."""
    mean, spread = BAND_LEVELS[band]
    relief = 0.7 * fractal_noise(rng, size, 2.2) + 0.6 * _fields(rng, size)
    relief += 0.15 * fractal_noise(rng, size, 1.0)
    water, road = _river(rng, size), _roads(rng, size)
    relief = (1 - water) * relief + water * (-2.5 + 0.1 * relief)
    relief = (1 - road) * relief + road * 2.0
    return np.clip(mean + spread * relief, 200, MAX_DN)


def clouds(rng: np.random.Generator, size: int, cover: float) -> np.ndarray:
    """Boolean cloud mask covering about `cover` of the image, in blobs."""
    if cover <= 0:
        return np.zeros((size, size), bool)
    field = fractal_noise(rng, size, 3.0)
    return field > np.quantile(field, 1 - cover)


def view(hr_padded: np.ndarray, dy: float, dx: float, blur: float) -> np.ndarray:
    """The LR view of a padded HR scene: shift by (dy, dx), Gaussian blur, 3x3 mean, crop."""
    size = hr_padded.shape[0]
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    transfer = np.exp(-2 * (np.pi * blur) ** 2 * (fy**2 + fx**2) - 2j * np.pi * (fy * dy + fx * dx))
    shifted = np.fft.irfft2(np.fft.rfft2(hr_padded) * transfer, s=(size, size))
    inner = shifted[PAD : PAD + HR_SIZE, PAD : PAD + HR_SIZE]
    return inner.reshape(LR_SIZE, 3, LR_SIZE, 3).mean(axis=(1, 3))


def make_scene(seed: int, band: str, index: int) -> dict:
    """One scene's arrays; deterministic for (seed, band, index)."""
    rng = np.random.default_rng([seed, BANDS.index(band), index])
    hr_padded = landscape(rng, band, HR_SIZE + 2 * PAD)
    hr = hr_padded[PAD : PAD + HR_SIZE, PAD : PAD + HR_SIZE]
    n_frames = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
    blur = rng.uniform(0.9, 1.4)
    lr, qm = [], []
    for _ in range(n_frames):
        dy, dx = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
        frame = view(hr_padded, dy, dx, blur) * rng.uniform(0.96, 1.04) + rng.uniform(-60, 60)
        frame += rng.normal(0, 1, frame.shape) * np.sqrt(15.0**2 + 0.5 * frame)
        cover = 0.0 if rng.random() < 0.45 else rng.beta(1.0, 4.0)
        cloud = clouds(rng, LR_SIZE, cover)
        frame = np.where(cloud, 13000 + 1500 * fractal_noise(rng, LR_SIZE, 3.0), frame)
        lr.append(np.clip(np.rint(frame), 0, MAX_DN).astype(np.uint16))
        qm.append(~cloud)
    hr_cover = 0.0 if rng.random() < 0.6 else rng.beta(1.0, 8.0)
    return {
        "lr": np.stack(lr),
        "qm": np.stack(qm),
        "hr": np.rint(hr).astype(np.uint16),
        "sm": ~clouds(rng, HR_SIZE, hr_cover),
    }


def baseline_cpsnr(scene: dict) -> float:
    base = challenge_baseline(scene["lr"], scene["qm"])
    hr = torch.from_numpy(scene["hr"].astype(np.float32))
    sm = torch.from_numpy(scene["sm"])
    return float(cpsnr(base[None, None], hr[None, None], sm[None, None])[0])


def _png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def write_scene(job: tuple) -> tuple[str, float]:
    """Write one scene directory; returns (name, baseline cPSNR) for norm.csv."""
    seed, band, index, directory, with_target = job
    torch.set_num_threads(1)
    scene = make_scene(seed, band, index)
    directory.mkdir(parents=True)
    for i, (frame, mask) in enumerate(zip(scene["lr"], scene["qm"])):
        _png(frame, directory / f"LR{i:03d}.png")
        _png(mask, directory / f"QM{i:03d}.png")
    if with_target:
        _png(scene["hr"], directory / "HR.png")
        _png(scene["sm"], directory / "SM.png")
    return directory.name, baseline_cpsnr(scene)


def scene_jobs(out: Path, n_train: int, n_test: int, bands, seed: int) -> list[tuple]:
    """Scene numbers as in the challenge: train RED then NIR, then test RED then NIR."""
    jobs, number = [], 0
    ordered = [b for b in ("RED", "NIR") if b in bands]
    for split, count in (("train", n_train), ("test", n_test)):
        for band in ordered:
            for i in range(count):
                index = i if split == "train" else n_train + i
                name = f"imgset{number:04d}"
                jobs.append((seed, band, index, out / split / band / name, split == "train"))
                number += 1
    return jobs


def synthesise(out: Path, n_train: int, n_test: int, bands, seed: int, workers: int) -> bool:
    """Write the tree under `out`; False when the same tree is already there."""
    params = {"scenes": n_train, "test_scenes": n_test, "bands": sorted(bands), "seed": seed}
    stamp = out / "synth.json"
    if out.exists():
        if stamp.is_file() and json.loads(stamp.read_text()) == params:
            return False
        if any(out.iterdir()):
            raise UserError(f"{out}: exists and is not this synthetic set; remove it or pick another OUT")
    if n_train + n_test > 9999:
        raise UserError("--scenes and --test-scenes: at most 9999 scenes in all (imgsetNNNN)")
    with replacing(out) as partial:  # the tree appears whole or not at all
        jobs = scene_jobs(partial, n_train, n_test, bands, seed)
        with process_pool(workers) as pool, raising_on_signals("synth"):
            results = list(tqdm(pool.map(write_scene, jobs), total=len(jobs), desc="synth", unit="scene"))
        (partial / "norm.csv").write_text("".join(f"{name} {value:.6f}\n" for name, value in results))
        (partial / "synth.json").write_text(json.dumps(params))
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="directory to create (the PROBA-V layout goes inside)")
    parser.add_argument("--scenes", type=int, default=40, help="train scenes per band (default 40)")
    parser.add_argument("--test-scenes", type=int, default=10, help="test scenes per band (default 10)")
    parser.add_argument("--bands", nargs="+", choices=BANDS, default=list(BANDS), help="bands (default both)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same scenes (default 0)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes writing scenes (default: up to 4)"
    )


def run(args: argparse.Namespace) -> int:
    if args.scenes < 0 or args.test_scenes < 0 or args.scenes + args.test_scenes == 0:
        raise UserError("--scenes and --test-scenes: counts must be >= 0 and not both 0")
    if args.workers < 1:
        raise UserError("--workers: must be at least 1")
    written = synthesise(args.out, args.scenes, args.test_scenes, args.bands, args.seed, args.workers)
    print(f"{args.out}: {'written' if written else 'already there, same parameters'}")
    return 0
