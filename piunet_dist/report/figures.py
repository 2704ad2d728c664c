"""The report's figures, each a PNG written whole: training curves (a row per band), each
scene's cPSNR against the baseline, the ensemble's calibration and coverage, and panels of
a few scenes.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from PIL import Image  # noqa: E402

from ..core.config_load import load_config  # noqa: E402
from ..core.errors import UserError  # noqa: E402
from ..core.eval_dir import EvalDir  # noqa: E402
from ..core.files import read_json_lines, replacing  # noqa: E402
from ..core.run_dir import RunDir  # noqa: E402
from ..data.pipeline import EvalScenes  # noqa: E402
from ..data.shards import shard_paths  # noqa: E402
from ..network.baselines import bicubic_mean  # noqa: E402
from ..network.metrics import shift_search  # noqa: E402
from ..network.shifts import aligned, crop  # noqa: E402

MASKED = "#3b8eea"  # cloud-masked pixels: a colour magma, the error and scale map, never takes


def _events(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).metrics
    records, bad = read_json_lines(path)
    if bad:  # a line torn by a kill, which the run's next start removes
        print(f"{path}: {bad} line(s) that are not whole records left out", file=sys.stderr)
    return [r for r in records if "event" in r and "step" in r]


def _band(run_dir: Path) -> str:
    try:
        return load_config(RunDir(run_dir).config).data.band
    except UserError:  # a run dir without a readable config.yaml still has its curves
        return "unknown band"


def curves_figure(runs: list[Path], out: Path) -> Path | None:
    """Training loss and validation cPSNR and NLL against steps, a row per band (their levels
    are not comparable), a line per run."""
    if not runs:
        return None
    bands: dict[str, list[Path]] = {}
    for run_dir in runs:
        bands.setdefault(_band(run_dir), []).append(run_dir)
    fig, grid = plt.subplots(len(bands), 3, figsize=(15, 3.8 * len(bands)), squeeze=False)
    for axes, (band, members) in zip(grid, sorted(bands.items())):
        for run_dir in members:
            log = _events(run_dir)
            train = [e for e in log if e["event"] == "train"]
            val = [e for e in log if e["event"] == "val"]
            axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], label=run_dir.name)
            axes[1].plot([e["step"] for e in val], [e["val_cpsnr"] for e in val], marker="o", label=run_dir.name)
            axes[2].plot([e["step"] for e in val], [e["val_nll"] for e in val], marker="o", label=run_dir.name)
        for ax, title in zip(
            axes, ("training loss (L1 warm-up, then Laplace)", "validation cPSNR (dB)", "validation Laplace NLL (DN)")
        ):
            ax.set_title(f"{band}: {title}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return _save(fig, out / "curves.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        with replacing(path) as partial:
            fig.savefig(partial, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path


def _rows(eval_dir: Path) -> list[dict]:
    with open(EvalDir(eval_dir).scenes, newline="") as f:
        return list(csv.DictReader(f))


def scatter_figure(eval_dir: Path, band: str, method: str, out: Path) -> Path | None:
    rows = [r for r in _rows(eval_dir) if r["band"] == band and r.get("baseline_cpsnr")]
    if not rows:
        return None
    base = np.array([float(r["baseline_cpsnr"]) for r in rows])
    ens = np.array([float(r[f"{method}:cpsnr"]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(base, ens, s=18, alpha=0.8)
    lo, hi = min(base.min(), ens.min()) - 0.5, max(base.max(), ens.max()) + 0.5
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("challenge baseline cPSNR (dB)")
    ax.set_ylabel("ensemble cPSNR (dB)")
    ax.set_title(f"{band}: {np.mean(ens > base):.0%} of scenes above the baseline")
    ax.grid(alpha=0.3)
    return _save(fig, out / f"scenes_{band}.png")


def calibration_figure(entry: dict, band: str, out: Path) -> Path | None:
    """The ensemble's calibration: mean observed |error| against the predicted scale, and the
    observed coverage of the predicted central intervals against their nominal coverage, as
    predicted and, where a calibration was fitted, after it on the scenes kept back from its
    fit; on the dashed lines a Laplace is calibrated."""
    curve, coverage = entry.get("calibration_curve"), entry.get("coverage")
    if not curve or not coverage:
        return None
    scale = [c["scale_dn"] for c in curve]
    err = [c["abs_error_dn"] for c in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6))
    left.loglog(scale, err, marker="o", label="ensemble")
    lo, hi = min(scale + err), max(scale + err)
    left.loglog([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="calibrated: E|error| = b")
    left.set_xlabel("predicted Laplace scale b (DN)")
    left.set_ylabel("mean observed |error| (DN)")
    left.set_title(f"{band}: |error| against predicted scale")
    left.grid(alpha=0.3, which="both")
    for axis in (left.xaxis, left.yaxis):  # 100, 200, 500, 1000: log's own minor labels collide
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    left.legend(fontsize=8)
    nominal = [c["nominal"] for c in coverage]
    observed = [c["observed"] for c in coverage]
    right.plot(nominal, observed, marker="o", label="ensemble, every scene")
    checked = (entry.get("calibration_fit") or {}).get("ensemble")
    if checked:
        method = entry["calibration_fit"]["method"]
        right.plot(checked["nominal"], checked["after"]["coverage"], marker="s", label=f"{method}-calibrated, held out")
    right.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated: observed = nominal")
    marked = [nominal.index(level) for level in (0.5, 0.9)]
    right.plot(
        [nominal[i] for i in marked],
        [observed[i] for i in marked],
        "o",
        color="crimson",
        ms=8,
        label="the 50% and 90% intervals",
    )
    right.text(
        0.97,
        0.04,
        "\n".join(f"{nominal[i]:.0%} interval: {observed[i]:.1%} inside" for i in marked),
        transform=right.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
        bbox={"facecolor": "white", "edgecolor": "#ccd3df"},
    )
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("nominal coverage of the predicted central interval")
    right.set_ylabel("share of clear pixels inside it")
    right.set_title(f"{band}: coverage")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    return _save(fig, out / f"calibration_{band}.png")


MAGMA_MASKED = matplotlib.colormaps["magma"].with_extremes(bad=MASKED)


def panels_figure(eval_dir: Path, summary: dict, band: str, n_scenes: int, out: Path) -> Path | None:
    """For a few scenes: an LR frame, bicubic, SR, HR, |error| and predicted scale."""
    shards = summary.get("shards", {}).get(band)
    split = summary.get("split", "val")
    names = sorted({r["scene"] for r in _rows(eval_dir) if r["band"] == band})[:n_scenes]
    if not shards or not names or split != "val":
        return None
    found = {}
    for scene in EvalScenes(shard_paths(Path(shards), band, split)):
        if scene["name"] in names:
            found[scene["name"]] = scene
        if len(found) == len(names):
            break
    titles = (
        "LR frame (x3)",
        "bicubic mean",
        "SR (ensemble)",
        "HR",
        "|error| (DN), masked in blue",
        "predicted scale (DN), masked in blue",
    )
    predicted = EvalDir(eval_dir).ensemble(band)
    fig, axes = plt.subplots(len(found), 6, figsize=(18, 3.1 * len(found)), squeeze=False)
    for row, name in zip(axes, sorted(found)):
        scene = found[name]
        sr = torch.from_numpy(np.asarray(Image.open(predicted / f"{name}.png")).astype(np.float32))
        scale = np.load(predicted / f"{name}_scale.npy")
        hr, sm = scene["hr"], scene["sm"]
        found_shift = shift_search(sr[None, None], hr[None, None], sm[None, None])
        shift = found_shift.best[0]
        err = (aligned(hr, shift, sr.shape) - crop(sr[None, None])[0, 0] - float(found_shift.bias[0])).abs().numpy()
        err[~aligned(sm, shift, sr.shape).numpy()] = np.nan
        scale = np.where(sm.numpy(), scale, np.nan)
        lo, hi = np.percentile(hr.numpy()[sm.numpy()], [1, 99]) if sm.any() else (hr.min(), hr.max())
        images = (
            np.kron(scene["lr"][0].numpy(), np.ones((3, 3))),
            bicubic_mean(scene["lr"][None])[0, 0].numpy(),
            sr.numpy(),
            hr.numpy(),
        )
        for ax, image in zip(row[:4], images):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        for ax, values, floor in ((row[4], err, 0), (row[5], scale, 1)):  # the scale never nears 0: from its 1%
            bottom, top = np.nanpercentile(values, [floor, 99]) if np.isfinite(values).any() else (0.0, 1.0)
            shown = ax.imshow(values, cmap=MAGMA_MASKED, vmin=bottom, vmax=top)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
        row[0].set_ylabel(name)
        for ax, title in zip(row, titles):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    return _save(fig, out / f"panels_{band}.png")
