"""Evaluate trained runs (members of an ensemble) on a split, per band.

    python -m piunet_dist evaluate --runs runs/nir-seed0 runs/nir-seed1 --split val --out runs/eval

For every scene, each member predicts with a self-ensemble over rotations (and flips);
members are combined by their plain mean and by the inverse-variance-weighted mean
(weights 1/b^2 from each member's Laplace scale b). Two phases: predict writes each
member's outputs, score reads them back (the SR as delivered, a 16-bit PNG), combines
and scores them; the launcher runs the first as an array and the second after it. Outputs, under OUT/<band>/<method>/:
imgsetNNNN.png (16-bit SR) and imgsetNNNN_scale.npy (float32 Laplace scale in DN);
OUT/scenes.csv (every score of every scene and method); OUT/summary.json; and for the
test split OUT/submission/ with OUT/submission.zip, written only when complete.
Started by several processes (accelerate launch, torchrun, srun), every scene is
predicted once, by one of them.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint
from .baselines import bicubic_mean
from .config import Config, EvalConfig, count_or_auto, load_config
from .data.pipeline import EvalScenes
from .data.probav import LR_SIZE
from .data.shards import scene_count, scene_names, shard_paths
from .errors import UserError
from .files import replacing, sha256, write_json
from .outputs import predicted, read_outputs, write_outputs
from .run_dir import RunDir
from .shifts import aligned, crop
from .inference import predict, resolve_precision, scenes_per_batch, transforms
from .metrics import ShiftSearch, challenge_score, cpsnr, cssim, psnr_db, shift_search, uncertainty_stats
from .model import PIUNet
from .weights import load_weights

ENSEMBLE, WEIGHTED = "ensemble", "weighted_ensemble"


@dataclass
class Member:
    name: str
    run_dir: Path
    cfg: Config
    model: PIUNet | None
    weights_sha256: str | None = None


def weights_path(run_dir: Path, which: str) -> Path:
    if which == "best":
        path = checkpoint.best_dir(run_dir)
        if path is None:
            raise UserError(f"{run_dir}: no best/ weights (has it validated once?); try --checkpoint last")
        return path
    newest = checkpoint.latest(run_dir)
    if newest is None:
        raise UserError(f"{run_dir}: no complete checkpoint in checkpoints/")
    return newest


def load_members(runs: list[Path], which: str, device, predicting: set[int] | None = None) -> list[Member]:
    """The runs as members, with weights for those that predict (all when None); scoring
    reads the others' predictions back from disk."""
    check_runs(runs)
    members, names = [], set()
    for i, run_dir in enumerate(runs):
        cfg = load_config(RunDir(run_dir).config)
        model, digest = None, None
        if predicting is None or i in predicting:
            path = weights_path(run_dir, which)
            model = PIUNet.from_config(cfg.model)
            model = load_weights(model, path).to(device).eval()
            digest = sha256(path / "model.safetensors")
        name = run_dir.name if run_dir.name not in names else f"{run_dir.parent.name}-{run_dir.name}"
        names.add(name)
        members.append(Member(name, run_dir, cfg, model, digest))
    return members


def check_runs(runs: list[Path]) -> None:
    """Every run a run directory, none given twice (it would count as two members)."""
    seen = {}
    for run_dir in runs:
        if not RunDir(run_dir).config.is_file():
            raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
        key = Path(run_dir).resolve()
        if key in seen:
            raise UserError(f"--runs: {run_dir} is given twice (as {seen[key]} too); each run is one member")
        seen[key] = run_dir


def combine(srs: torch.Tensor, scales: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Members' (M,B,1,H,W) SR and Laplace scale -> the two ensembles, each (SR, scale), and
    "uncertainty": (aleatoric: the mean predicted scale, epistemic: the members' spread, total).

    The ensembles' scale is that of a Laplace with the total variance: the members' mean
    variance 2 b^2 plus the variance between their predictions."""
    epistemic_var = srs.var(dim=0, unbiased=False)
    total_scale = (((2 * scales**2).mean(dim=0) + epistemic_var) / 2).sqrt()
    weights = 1 / scales**2
    weighted = (weights * srs).sum(dim=0) / weights.sum(dim=0)
    return {ENSEMBLE: (srs.mean(dim=0), total_scale), WEIGHTED: (weighted, total_scale),
            "uncertainty": (scales.mean(dim=0), epistemic_var.sqrt(), total_scale)}


SCALE_BINS = np.geomspace(1.0, 1e4, 25)  # DN: edges of the calibration curve's bins


def calibration_counts(sr, scale, hr, sm, search: ShiftSearch) -> tuple[list[float], list[int], list[float]]:
    """Per bin of predicted scale (DN): the sum of |error| and of the scale, and the pixel count,
    over the clear pixels at the best shift; summed over scenes they give the calibration curve."""
    y, m = (aligned(t[0, 0], search.best[0], sr.shape[-2:]) for t in (hr, sm))
    p = crop(sr)[0, 0].double() + search.bias[0]
    b = crop(scale)[0, 0].double()[m].numpy()
    err = (y.double() - p)[m].abs().numpy()
    which = np.clip(np.digitize(b, SCALE_BINS) - 1, 0, len(SCALE_BINS) - 2)
    n = len(SCALE_BINS) - 1
    return (np.bincount(which, err, n).tolist(), np.bincount(which, None, n).astype(int).tolist(),
            np.bincount(which, b, n).tolist())


def scene_scores(sr, scale, hr, sm, norm, search: ShiftSearch) -> dict[str, float]:
    """Every score of one scene (tensors (1,1,H,W) in DN); `search` is shift_search(sr, hr, sm)."""
    stats = uncertainty_stats(sr, scale, hr, sm, search)
    return {
        "cpsnr": float(psnr_db(search.cmse)[0]), "cssim": float(cssim(sr, hr, sm)[0]),
        "score": float(challenge_score(sr, hr, sm, torch.tensor([norm]))[0]) if not math.isnan(norm) else math.nan,
        "shift": int(search.best[0]), "nll": float(stats["nll"][0]),
        "coverage50": float(stats["coverage50"][0]), "coverage90": float(stats["coverage90"][0]),
        "scale_error_corr": float(stats["scale_error_corr"][0]),
    }


def _scenes(band: str, members: list[Member], shards: Path, split: str, rank: int, world: int) -> EvalScenes:
    data = members[0].cfg.data
    for m in members[1:]:
        d = m.cfg.data
        if (d.n_frames, d.register, d.min_clearance) != (data.n_frames, data.register, data.min_clearance):
            raise UserError(f"{m.run_dir}: reads scenes unlike {members[0].run_dir} (data.n_frames, "
                            "data.register or data.min_clearance differ); evaluate them apart")
    return EvalScenes(shard_paths(shards, band, split), data.n_frames, keep_unclear=split == "test",
                      register=data.register, rank=rank, world_size=world, seed=0, min_clearance=data.min_clearance)


def predict_band(band: str, members: list[Member], predicting: list[Member], shards: Path, split: str,
                 self_ensemble: int, batch_size: int, precision: str, out: Path, acc) -> None:
    """Each member in `predicting` predicts every scene of this process: OUT/<band>/<member>/.
    A scene already predicted by the same weights and settings is not predicted again, so an
    interrupted evaluation resumes where it stopped."""
    folders = {m.name: out / band / m.name for m in predicting}
    if acc.is_main_process:
        for m in predicting:
            _keep_if_same(folders[m.name], {"weights_sha256": m.weights_sha256, "self_ensemble": self_ensemble,
                                            "precision": precision, "n_frames": m.cfg.data.n_frames})
    acc.wait_for_everyone()
    scenes = _scenes(band, members, shards, split, acc.process_index, acc.num_processes)
    with tqdm(total=scene_count(shards, band, split), desc=f"predict {band}", unit="scene",
              disable=not acc.is_main_process, dynamic_ncols=True) as bar:
        for batch in DataLoader(scenes, batch_size=batch_size, num_workers=2):
            for m in predicting:
                todo = [j for j, name in enumerate(batch["name"]) if not predicted(folders[m.name], name)]
                if not todo:
                    continue
                sr, scale = predict(m.model, batch["lr"][todo].to(acc.device), self_ensemble, precision)
                for i, j in enumerate(todo):
                    write_outputs(folders[m.name], batch["name"][j], sr[i], scale[i])
            bar.update(len(batch["name"]) * acc.num_processes)


STAMP = "predictions.json"


def _keep_if_same(folder: Path, stamp: dict) -> None:
    """Keep a member's predictions only when they were made with `stamp`'s weights and
    settings; otherwise remove them (only the files this evaluation writes) and stamp anew."""
    try:
        kept = json.loads((folder / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        kept = None
    if kept == stamp:
        return
    if folder.is_dir():
        for path in folder.iterdir():
            if path.suffix in (".png", ".npy", ".partial") and path.name.startswith("imgset"):
                path.unlink()
    write_json(folder / STAMP, stamp)


def score_band(band: str, members: list[Member], shards: Path, split: str, out: Path,
               rank: int, world: int) -> list[dict]:
    """Combine the members' predictions of this process's scenes and score them; rows of scenes.csv."""
    rows = []
    for batch in DataLoader(_scenes(band, members, shards, split, rank, world), batch_size=1, num_workers=2):
        bicubic = bicubic_mean(batch["lr"])
        for j, name in enumerate(batch["name"]):
            predictions = [read_outputs(out / band / m.name, name) for m in members]
            srs = torch.stack([p[0] for p in predictions])[:, None]       # (M, 1, 1, H, W)
            scales = torch.stack([p[1] for p in predictions])[:, None]
            combined = combine(srs, scales)
            uncertainty = combined.pop("uncertainty")
            for method, (sr, scale) in combined.items():
                write_outputs(out / band / method, name, sr[0], scale[0])
            methods = {m.name: (srs[i], scales[i]) for i, m in enumerate(members)} | combined
            # over the clear pixels of the target where there is one: clouds would swamp the means
            region = batch["sm"][j] if batch["has_target"][j] else torch.ones(srs.shape[-2:], dtype=torch.bool)
            row = {"scene": name, "band": band} | {
                f"{kind}_dn": float(u[0, 0][region].mean()) for kind, u in zip(("aleatoric", "epistemic", "total"),
                                                                           uncertainty)}
            if batch["has_target"][j]:
                hr, sm = batch["hr"][j][None, None], batch["sm"][j][None, None]
                row["baseline_cpsnr"] = float(cpsnr(batch["baseline"][j][None, None], hr, sm)[0])
                row["bicubic_mean_cpsnr"] = float(cpsnr(bicubic[j][None], hr, sm)[0])
                searches = {method: shift_search(sr, hr, sm) for method, (sr, _) in methods.items()}
                for method, (sr, scale) in methods.items():
                    scores = scene_scores(sr, scale, hr, sm, float(batch["norm"][j]), searches[method])
                    row |= {f"{method}:{k}": v for k, v in scores.items()}
                row["_calibration"] = calibration_counts(*combined[ENSEMBLE], hr, sm, searches[ENSEMBLE])
            rows.append(row)
    return rows


def summarise(rows: list[dict], members_by_band: dict[str, list[Member]]) -> dict:
    """summary.json: per band, the scene means of every figure."""
    bands = {}
    for band, members in members_by_band.items():
        scored = [r for r in rows if r["band"] == band and "baseline_cpsnr" in r]
        band_rows = [r for r in rows if r["band"] == band]

        def mean(key, rows_=scored):
            values = [r[key] for r in rows_ if not math.isnan(r[key])]
            return float(np.mean(values)) if values else None

        entry = {"scenes": len(band_rows), "scored_scenes": len(scored)}
        entry |= {f"{kind}_dn": mean(f"{kind}_dn", band_rows) for kind in ("aleatoric", "epistemic", "total")}
        if scored:
            entry |= {
                "baseline_cpsnr": mean("baseline_cpsnr"), "bicubic_mean_cpsnr": mean("bicubic_mean_cpsnr"),
                "members": {m.name: mean(f"{m.name}:cpsnr") for m in members},
                "members_cssim": {m.name: mean(f"{m.name}:cssim") for m in members},
                "ensemble_cpsnr": mean(f"{ENSEMBLE}:cpsnr"), "ensemble_cssim": mean(f"{ENSEMBLE}:cssim"),
                "weighted_ensemble_cpsnr": mean(f"{WEIGHTED}:cpsnr"),
                "weighted_ensemble_cssim": mean(f"{WEIGHTED}:cssim"),
                "score": mean(f"{ENSEMBLE}:score"),
                "calibration": {k: mean(f"{ENSEMBLE}:{k}")
                                for k in ("nll", "coverage50", "coverage90", "scale_error_corr")},
                "calibration_curve": _curve([r["_calibration"] for r in scored]),
            }
        bands[band] = entry
    return {"bands": bands}


def _curve(per_scene: list) -> list[dict]:
    """Bins with pixels: mean predicted scale and mean observed |error| (a Laplace's is the scale)."""
    err = np.sum([c[0] for c in per_scene], axis=0)
    count = np.sum([c[1] for c in per_scene], axis=0)
    scale = np.sum([c[2] for c in per_scene], axis=0)
    return [{"scale_dn": float(scale[i] / count[i]), "abs_error_dn": float(err[i] / count[i]), "pixels": int(count[i])}
            for i in range(len(count)) if count[i]]


def write_submission(out: Path, members_by_band: dict[str, list[Member]], shards_by_band: dict[str, Path]) -> Path:
    """OUT/submission/ and OUT/submission.zip from the ensemble, refused if a scene is missing."""
    folder = out / "submission"
    expected, missing = [], []
    for band in members_by_band:
        for name in scene_names(shard_paths(shards_by_band[band], band, "test")):
            expected.append((band, name))
            if not (out / band / ENSEMBLE / f"{name}.png").is_file():
                missing.append(f"{band}/{name}")
    if missing:
        raise UserError(f"{out}: {len(missing)} test scene(s) have no prediction ({', '.join(missing[:5])}); "
                        "no submission written")
    with replacing(folder) as partial:
        partial.mkdir()
        for band, name in expected:
            shutil.copyfile(out / band / ENSEMBLE / f"{name}.png", partial / f"{name}.png")
    with replacing(out / "submission.zip") as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for _, name in sorted(expected, key=lambda e: e[1]):
            z.write(folder / f"{name}.png", f"{name}.png")
    return out / "submission.zip"


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if not k.startswith("_")]
    with replacing(path) as partial, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["band"], r["scene"])))


def evaluate(runs: list[Path], split: str, shards: Path | None, self_ensemble: int, which: str, out: Path,
             batch_size: str = "auto", phase: str = "all", member: int | None = None,
             precision: str = "auto") -> dict | None:
    """Predict (phase predict: every member, or only --runs[member]) and score (phase score);
    returns the summary on the main process after scoring, else None. `batch_size` and
    `precision` as eval.batch_size and eval.precision."""
    from accelerate import Accelerator
    count_or_auto("--batch-size", batch_size)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    precision = resolve_precision(precision, acc.device)
    if member is not None and (phase != "predict" or not 0 <= member < len(runs)):
        raise UserError(f"--member: {member} must go with --phase predict and index one of the {len(runs)} runs")
    predicting = set() if phase == "score" else {member} if member is not None else None
    members = load_members(runs, which, acc.device, predicting)
    by_band: dict[str, list[Member]] = {}
    for m in members:
        by_band.setdefault(m.cfg.data.band, []).append(m)
    shards_by_band = {band: Path(shards) if shards else Path(ms[0].cfg.data.shards) for band, ms in by_band.items()}
    if phase in ("all", "predict"):
        for band, ms in by_band.items():
            predicting = [m for m in ms if m.model is not None]
            if predicting:
                scenes = scenes_per_batch(batch_size, "--batch-size", acc.device, ms[0].cfg.data.n_frames, LR_SIZE,
                                          max(m.cfg.model.n_feat for m in predicting), len(transforms(self_ensemble)))
                predict_band(band, ms, predicting, shards_by_band[band], split, self_ensemble, scenes, precision,
                             out, acc)
        acc.wait_for_everyone()
    if phase == "predict":
        return None
    rows = []
    for band, ms in by_band.items():
        rows += score_band(band, ms, shards_by_band[band], split, out, acc.process_index, acc.num_processes)
    if acc.num_processes > 1:
        from accelerate.utils import gather_object
        rows = gather_object(rows)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    summary = summarise(rows, by_band)
    summary["split"], summary["self_ensemble"] = split, self_ensemble
    summary["runs"] = {m.name: str(m.run_dir) for m in members}
    summary["shards"] = {band: str(path) for band, path in shards_by_band.items()}
    write_csv(out / "scenes.csv", rows)
    write_json(out / "summary.json", summary)
    if split == "test":
        summary["submission"] = str(write_submission(out, by_band, shards_by_band))
    return summary


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """What to evaluate and how: the flags this command shares with `launch evaluate`."""
    defaults = EvalConfig()
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run directories (the members)")
    parser.add_argument("--split", choices=("val", "test"), default=defaults.split,
                        help=f"split to evaluate (default {defaults.split})")
    parser.add_argument("--shards", type=Path, help="shards to read instead of those each run trained on")
    parser.add_argument("--self-ensemble", type=int, default=defaults.self_ensemble, choices=(1, 4, 8),
                        help="predictions per scene: 1, 4 rotations (the paper's), 8 with flips "
                             f"(default {defaults.self_ensemble})")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=defaults.checkpoint,
                        help=f"each run's best/ weights or its newest checkpoint (default {defaults.checkpoint})")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"), help="output directory (default runs/eval)")
    parser.add_argument("--batch-size", default=defaults.batch_size,
                        help="scenes per prediction batch, each with its self-ensemble's views: auto (1 on a CPU, "
                             f"as many as fit on a GPU) or a number (default {defaults.batch_size})")
    parser.add_argument("--precision", choices=("auto", "no", "bf16"), default=defaults.precision,
                        help="inference precision: auto (bf16 on a GPU, no on a CPU), no (float32) or bf16 "
                             f"(default {defaults.precision})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.add_argument("--phase", choices=("all", "predict", "score"), default="all",
                        help="predict (members' outputs), score (ensembles, scores, summary) or all (default)")
    parser.add_argument("--member", type=int,
                        help="with --phase predict: predict only --runs[MEMBER] (a task of the launcher's array)")


def run(args: argparse.Namespace) -> int:
    summary = evaluate(args.runs, args.split, args.shards, args.self_ensemble, args.checkpoint, args.out,
                       args.batch_size, args.phase, args.member, args.precision)
    if summary is None:
        return 0
    for band, entry in summary["bands"].items():
        if "ensemble_cpsnr" in entry:
            print(f"{band}: baseline {entry['baseline_cpsnr']:.2f} dB, bicubic mean {entry['bicubic_mean_cpsnr']:.2f}, "
                  + ", ".join(f"{k} {v:.2f}" for k, v in entry["members"].items())
                  + f", ensemble {entry['ensemble_cpsnr']:.2f}, weighted {entry['weighted_ensemble_cpsnr']:.2f}"
                  + (f", score {entry['score']:.4f}" if entry["score"] is not None else ""))
        else:
            print(f"{band}: {entry['scenes']} scenes predicted")
    print(f"{args.out}/summary.json" + (f", {summary['submission']}" if "submission" in summary else ""))
    return 0
