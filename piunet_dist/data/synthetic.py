"""Synthetic scenes written in exactly the PROBA-V challenge layout, with the real sensor's
physics (docs/method.md section 7; the ranges are data/sensor.Physics).

A scene is a ground image (data/landscape.py) and its target HR, seen on many dates: each
LR frame views the ground as it was that date (a seasonal brightness field, some land
changed) through the scene's anisotropic PSF, shifted by the scene's grid offset and its
own scatter (now and then a whole LR pixel more), and more by place (a smooth warp),
averaged over 3x3 pixels, with its own gain and offset, noise correlated along x, outlier
pixels no mask marks, and small clouds that its quality map marks; every value a multiple
of 16 DN. As in real frames, some clouds are brighter than the sensor's nominal 14 bits (a
few of their pixels marked clear), and in some scenes a few frames hold 65,520 beyond a
swath edge, masked (docs/method.md section 5).
norm.csv holds the cPSNR of the challenge baseline on every scene, test scenes included
(their HR is not written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from .landscape import fractal_noise, landscape
from .probav import BANDS, HR_SIZE, LR_SIZE, NO_DATA, NOMINAL_DN
from .sensor import PRESETS, FrameGeometry, Physics, blurred, correlated_noise, displacement_field, quantise, view

PAD = 24  # HR margin that shifted views draw from
MAX_CLOUD_COVER = 0.4
MARKED = 0.15  # the opacity from which a quality map marks a cloud: thinner haze goes unmarked
TOP = 2**16 - 1  # values are stored as uint16: at most 65,520 in steps of 16


def clouds(rng: np.random.Generator, size: int, cover: float, scale: float) -> np.ndarray:
    """How opaque the clouds are at each pixel, 0..1: blobs about `scale` px across over about
    `cover` of the image (where the opacity passes MARKED), thinning out at their edges."""
    if cover <= 0:
        return np.zeros((size, size))
    field = fractal_noise(rng, size, 2.5, lowest=1 / (4 * scale))
    edge = np.quantile(field, 1 - cover)
    return np.clip((field - edge) / 0.6 + MARKED, 0, 1)


def frame_cover(rng: np.random.Generator, physics: Physics) -> float:
    if rng.random() < physics.clear_frames:
        return 0.0
    # most cloudy frames hold a little cloud, a few a lot: a median of 3.5% (with the clear
    # frames, 0.965 of a frame is clear at the median), at most MAX_CLOUD_COVER
    return float(MAX_CLOUD_COVER * rng.random() ** physics.cloud_skew)


SMALL_NO_DATA = 0.01  # the first no-data frame of a scene holds at most this share of it
MIN_FRAME_CLEAR = 0.6  # ESA's data set holds only LR frames at least this clear


def no_data_plan(rng: np.random.Generator, physics: Physics, n_frames: int) -> dict[int, float]:
    """Frame index -> the share of it beyond a swath edge, for the scenes that have such
    frames: the first one cloudless and only a little cut, so that it is among the clearest."""
    if rng.random() >= physics.no_data_scenes:
        return {}
    count = max(1, round(physics.draw(rng, "no_data_frames") * n_frames))
    chosen = rng.choice(n_frames, count, replace=False)
    plan = {int(i): physics.draw(rng, "no_data_extent") for i in chosen}
    plan[int(chosen[0])] = float(rng.uniform(min(physics.no_data_extent[0], SMALL_NO_DATA), SMALL_NO_DATA))
    return plan


def swath_edge(rng: np.random.Generator, size: int, extent: float) -> np.ndarray:
    """The pixels beyond a straight edge at a random angle that cuts off `extent` of a frame."""
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    along = xx * math.cos(angle) + yy * math.sin(angle)
    return along > np.quantile(along, 1 - extent)


def make_scene(seed: int, band: str, index: int, physics: Physics | None = None) -> dict:
    """One scene's arrays and the physics drawn for it (`truth`: per frame shift, PSF,
    gain, offset; per scene noise); deterministic for (seed, band, index, physics)."""
    physics = physics or Physics()
    rng = np.random.default_rng([seed, BANDS.index(band), index])
    ground = blurred(landscape(rng, band, HR_SIZE + 2 * PAD), physics.draw(rng, "hr_blur"))
    hr = ground[PAD : PAD + HR_SIZE, PAD : PAD + HR_SIZE]
    low, high = physics.frames
    n_frames = int(rng.integers(low, high + 1))
    offset = rng.uniform(-physics.shift_offset, physics.shift_offset, 2)
    scatter = physics.draw(rng, "shift_scatter")
    jumped = np.zeros(n_frames, bool)
    jump = np.zeros(2)
    if rng.random() < physics.jump_chance:
        jumped = rng.random(n_frames) < physics.draw(rng, "jump_share")
        jump[rng.integers(2)] = 3.0 * rng.choice([-1, 1])
    widths = physics.draw(rng, "blur_x"), physics.draw(rng, "blur_y")
    angle = math.radians(rng.uniform(-physics.blur_angle, physics.blur_angle))
    gain_spread, change = physics.draw(rng, "gain_spread"), physics.draw(rng, "brightness_change")
    seasonal, changed = physics.draw(rng, "seasonal"), physics.draw(rng, "local_change")
    outliers = physics.draw(rng, "outliers")
    noise, correlation = physics.draw(rng, "noise"), physics.draw(rng, "noise_correlation")
    mean = float(hr.mean())
    # the oddities and the warps draw from streams of their own: the rest of a scene is as without them
    odd_rng = np.random.default_rng([seed, BANDS.index(band), index, 1])
    warp_rng = np.random.default_rng([seed, BANDS.index(band), index, 2])
    warp = physics.draw(warp_rng, "warp")
    no_data = no_data_plan(odd_rng, physics, n_frames)
    lr, qm, truth = [], [], []
    for i in range(n_frames):
        if physics.uniform_shifts:
            shift = offset + rng.uniform(-1, 1, 2) * scatter * math.sqrt(3)
        else:
            shift = offset + rng.normal(0, scatter, 2)
        shift = shift + jump * jumped[i]
        geometry = FrameGeometry(
            float(shift[0]),
            float(shift[1]),
            max(0.2, widths[0] + rng.normal(0, physics.blur_jitter)),
            max(0.2, widths[1] + rng.normal(0, physics.blur_jitter)),
            angle,
        )
        dated = ground
        if seasonal > 0:
            dated = dated * (1 + seasonal * fractal_noise(rng, ground.shape[0], physics.seasonal_slope))
        if changed > 0:
            patches = fractal_noise(rng, ground.shape[0], 3.0)
            dated = dated * (
                1 + physics.local_strength * rng.choice([-1, 1]) * (patches > np.quantile(patches, 1 - changed))
            )
        gain = 1 + rng.normal(0, gain_spread)
        shift_dn = (1 - gain) * mean + rng.normal(0, change) * mean
        displacement = displacement_field(warp_rng, ground.shape[0], PAD, warp, physics.warp_scale) if warp else None
        frame = gain * view(dated, geometry, PAD, displacement) + shift_dn
        sigma = np.sqrt(noise**2 + physics.noise_rise * np.maximum(frame, 0))
        frame = frame + sigma * correlated_noise(rng, frame.shape, correlation)
        odd = rng.random(frame.shape) < outliers
        frame = np.where(odd, frame + rng.choice([-1, 1], frame.shape) * rng.uniform(150, 600, frame.shape), frame)
        cover = frame_cover(rng, physics)
        opacity = clouds(rng, LR_SIZE, cover, physics.cloud_scale)
        lift, texture = rng.uniform(1500, 5000), fractal_noise(rng, LR_SIZE, 3.0)
        top = frame + lift * (1 + 0.3 * texture)
        if cover > 0 and odd_rng.random() < physics.bright_clouds:
            top = np.maximum(top, physics.draw(odd_rng, "bright_cloud_top") * (1 + 0.05 * texture))
        extent = no_data.get(i)
        if extent is not None and extent < SMALL_NO_DATA:  # a frame among the clearest, whatever its clouds
            opacity = np.zeros_like(opacity)
        frame = quantise((1 - opacity) * frame + opacity * top, physics.quantum, TOP)
        marked = opacity < MARKED
        bright = ~marked & (frame > NOMINAL_DN)
        marked |= bright & (odd_rng.random(frame.shape) < physics.unmarked_bright)
        # no more than leaves the frame 60% clear: the data set holds no frame less clear
        if extent is not None and (extent := min(extent, marked.mean() - MIN_FRAME_CLEAR)) > 0:
            beyond = swath_edge(odd_rng, LR_SIZE, extent)
            frame[beyond], marked[beyond] = NO_DATA, False
        lr.append(frame)
        qm.append(marked)
        truth.append(
            {
                "dy": geometry.dy,
                "dx": geometry.dx,
                "sigma_x": geometry.sigma_x,
                "sigma_y": geometry.sigma_y,
                "angle": angle,
                "gain": gain,
                "offset": shift_dn,
            }
        )
    hr_cover = physics.draw(rng, "hr_cover")
    return {
        "lr": np.stack(lr),
        "qm": np.stack(qm),
        "hr": quantise(hr, physics.quantum, TOP),
        "sm": clouds(rng, HR_SIZE, hr_cover, 3 * physics.cloud_scale) < MARKED,
        "truth": {"frames": truth, "noise": noise, "noise_correlation": correlation, "warp": warp},
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
    seed, band, index, directory, with_target, physics = job
    torch.set_num_threads(1)
    scene = make_scene(seed, band, index, physics)
    directory.mkdir(parents=True)
    for i, (frame, mask) in enumerate(zip(scene["lr"], scene["qm"])):
        _png(frame, directory / f"LR{i:03d}.png")
        _png(mask, directory / f"QM{i:03d}.png")
    if with_target:
        _png(scene["hr"], directory / "HR.png")
        _png(scene["sm"], directory / "SM.png")
    return directory.name, baseline_cpsnr(scene)


# the challenge's own numbers: where each band's scenes of a split start, and how many it has
CHALLENGE = {
    ("train", "RED"): (0, 594),
    ("train", "NIR"): (594, 566),
    ("test", "RED"): (1160, 146),
    ("test", "NIR"): (1306, 144),
}


def scene_jobs(
    out: Path, n_train: int, n_test: int, bands, seed: int, physics: Physics, numbering: str = "sequential"
) -> list[tuple]:
    """Scenes ordered as in the challenge: train RED then NIR, then test RED then NIR, numbered
    one after the other (sequential) or by the challenge's own numbers (challenge: each band's
    count at most the challenge's, so --test-scenes 146 writes its 290 test scenes)."""
    jobs, number = [], 0
    ordered = [b for b in ("RED", "NIR") if b in bands]
    for split, count in (("train", n_train), ("test", n_test)):
        for band in ordered:
            first, most = CHALLENGE[(split, band)]
            if numbering == "challenge":
                number, count_here = first, min(count, most)
            else:
                count_here = count
            for i in range(count_here):
                index = i if split == "train" else n_train + i
                name = f"imgset{number:04d}"
                jobs.append((seed, band, index, out / split / band / name, split == "train", physics))
                number += 1
    return jobs


def synthesise(
    out: Path,
    n_train: int,
    n_test: int,
    bands,
    seed: int,
    workers: int,
    physics: Physics | None = None,
    numbering: str = "sequential",
) -> bool:
    """Write the tree under `out`; False when the same tree is already there."""
    physics = physics or Physics()
    params = {
        "scenes": n_train,
        "test_scenes": n_test,
        "bands": sorted(bands),
        "seed": seed,
        "physics": json.loads(json.dumps(dataclasses.asdict(physics))),
    }
    if numbering != "sequential":
        params["numbering"] = numbering
    stamp = out / "synth.json"
    if out.exists():
        if stamp.is_file() and json.loads(stamp.read_text()) == params:
            return False
        if any(out.iterdir()):
            raise UserError(f"{out}: exists and is not this synthetic set; remove it or pick another OUT")
    if n_train + n_test > 9999:
        raise UserError("--scenes and --test-scenes: at most 9999 scenes in all (imgsetNNNN)")
    with replacing(out) as partial:  # the tree appears whole or not at all
        jobs = scene_jobs(partial, n_train, n_test, bands, seed, physics, numbering)
        with process_pool(workers) as pool, raising_on_signals("synth"):
            results = list(tqdm(pool.map(write_scene, jobs), total=len(jobs), desc="synth", unit="scene"))
        (partial / "norm.csv").write_text("".join(f"{name} {value:.6f}\n" for name, value in results))
        (partial / "synth.json").write_text(json.dumps(params))
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = physics_help()
    parser.add_argument("out", type=Path, nargs="?", help="directory to create (the PROBA-V layout goes inside)")
    parser.add_argument("--scenes", type=int, default=40, help="train scenes per band (default 40)")
    parser.add_argument("--test-scenes", type=int, default=10, help="test scenes per band (default 10)")
    parser.add_argument("--bands", nargs="+", choices=BANDS, default=list(BANDS), help="bands (default both)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same scenes (default 0)")
    parser.add_argument(
        "--numbering",
        choices=("sequential", "challenge"),
        default="sequential",
        help="scene numbers one after the other (default), or the challenge's own (train RED from imgset0000, NIR "
        "from imgset0594, test RED from imgset1160, NIR from imgset1306; each band's count at most the "
        "challenge's, so --test-scenes 146 writes its 290 test scenes)",
    )
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes writing scenes (default: up to 4)"
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="proba-v",
        help="the physics: proba-v (the real sensor's, the default) or simple (the easier world of earlier versions)",
    )
    parser.add_argument(
        "--physics",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="physics settings over the preset's, e.g. noise=12,16 blur_angle=0 (listed below)",
    )
    parser.add_argument(
        "--describe",
        type=Path,
        metavar="TREE",
        help="fit the sensor model to the train scenes of a PROBA-V tree (real or synthetic) and "
        "print what it finds; writes nothing",
    )
    parser.add_argument("--describe-scenes", type=int, default=20, help="with --describe: scenes per band fitted")


def physics_help() -> str:
    lines = ["physics (--physics NAME=VALUE; a range as LOW,HIGH; defaults of the proba-v preset):"]
    for f in dataclasses.fields(Physics):
        default = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default))
        lines.append(f"  {f.name:<18}  {f.metadata['help']} [{default}]")
    return "\n".join(lines)


def physics_from(preset: str, settings: list[str]) -> Physics:
    """The preset's physics with NAME=VALUE settings over it; each mistake one line."""
    physics = Physics.preset(preset)
    known = {f.name: f for f in dataclasses.fields(Physics)}
    for text in settings:
        name, _, raw = text.partition("=")
        if name not in known or not raw:
            raise UserError(f"--physics {text}: expected NAME=VALUE with NAME one of {', '.join(known)}")
        default = known[name].default
        try:
            if isinstance(default, tuple):
                low, high = (float(v) for v in raw.split(","))
                if high < low:
                    raise ValueError
                parsed = (low, high)
            elif isinstance(default, bool):
                parsed = {"true": True, "false": False}[raw.lower()]
            else:
                parsed = type(default)(raw)
        except (ValueError, KeyError):
            kind = "LOW,HIGH with LOW <= HIGH" if isinstance(default, tuple) else type(default).__name__
            raise UserError(f"--physics {text}: {name} takes {kind}") from None
        lowest, highest = known[name].metadata["bounds"]
        if not isinstance(parsed, bool) and not all(lowest <= v <= highest for v in np.atleast_1d(parsed)):
            within = f"at least {lowest:g}" if highest == math.inf else f"from {lowest:g} to {highest:g}"
            raise UserError(f"--physics {text}: {name} takes values {within}")
        physics = dataclasses.replace(physics, **{name: parsed})
    return physics


def run(args: argparse.Namespace) -> int:
    if args.describe:
        from .scene_fit import describe

        print(describe(args.describe, args.describe_scenes, args.workers))
        return 0
    if args.out is None:
        raise UserError("give OUT to write scenes, or --describe TREE to fit a tree")
    if args.scenes < 0 or args.test_scenes < 0 or args.scenes + args.test_scenes == 0:
        raise UserError("--scenes and --test-scenes: counts must be >= 0 and not both 0")
    if args.workers < 1:
        raise UserError("--workers: must be at least 1")
    physics = physics_from(args.preset, args.physics)
    written = synthesise(
        args.out, args.scenes, args.test_scenes, args.bands, args.seed, args.workers, physics, args.numbering
    )
    print(f"{args.out}: {'written' if written else 'already there, same parameters'}")
    return 0
