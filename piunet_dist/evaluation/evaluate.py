"""Evaluate trained runs (the members of an ensemble) on a split, per band.

    python -m piunet_dist evaluate --runs runs/nir-seed0 runs/nir-seed1 --split val --out runs/eval

Two phases. predict: each member predicts every scene with its self-ensemble over rotations
(and flips) and writes OUT/<band>/<member>/ (outputs.py); an interrupted evaluation resumes
where it stopped. score: the members' predictions are read back (the SR as delivered, a
16-bit PNG), combined by every ensemble method (ensembles.py) and scored (scoring.py); the
method eval.ensemble names is written to OUT/<band>/ensemble/. Then OUT/scenes.csv,
OUT/summary.json and, for the test split, the submission (submission.py). The launcher runs
the predict phase as an array, one task per member, and the score phase after it. Started
by several processes (accelerate launch, torchrun, srun), every scene is predicted and
scored once, by one of them.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core.config import EvalConfig, add_setting_flags, flag_overrides, load_config
from ..core.errors import UserError
from ..core.files import write_json
from ..data.pipeline import EvalScenes
from ..data.probav import LR_SIZE
from ..data.shards import scene_count, scene_names, shard_paths
from ..network.baselines import bicubic_mean
from ..network.metrics import cpsnr, shift_search
from .ensembles import METHODS, combine, uncertainty
from .inference import resolve_precision, scenes_per_batch, super_resolve, transforms
from .members import Member, by_band, find_members
from .outputs import predicted, read_outputs, write_outputs
from .scoring import Calibration, SceneResult, score, summarise_band, write_csv
from .submission import ENSEMBLE, write_submission

STAMP = "predictions.json"


def evaluate(runs: list[Path], settings: EvalConfig, phase: str = "all", member: int | None = None) -> dict | None:
    """Predict (phase predict: with every member, or only runs[member]) and score (phase
    score); `all` does both. Returns the summary on the main process after scoring, else None."""
    from accelerate import Accelerator
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if member is not None and (phase != "predict" or not 0 <= member < len(runs)):
        raise UserError(f"--member: {member} must go with --phase predict and index one of the {len(runs)} runs")
    members = find_members(runs, settings.checkpoint)
    bands = by_band(members)
    shards = {band: Path(settings.shards or ms[0].cfg.data.shards) for band, ms in bands.items()}
    if phase in ("all", "predict"):
        chosen = {m.name for m in (members if member is None else [members[member]])}
        for band, ms in bands.items():
            predicting = [m.load(acc.device) for m in ms if m.name in chosen]
            if predicting:
                write_predictions(ms, predicting, shards[band], settings, acc)
        acc.wait_for_everyone()
    if phase == "predict":
        return None
    results = []
    for band, ms in bands.items():
        results += score_band(ms, shards[band], settings, acc.process_index, acc.num_processes)
    if acc.num_processes > 1:
        from accelerate.utils import gather_object
        results = gather_object(results)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    return write_results(results, members, shards, settings)


def scenes(members: list[Member], shards: Path, split: str, rank: int, world: int) -> EvalScenes:
    """The scenes of the members' band, read as they read them (the same frames, registration
    and clearance), this process's share of them."""
    data = members[0].cfg.data
    for m in members[1:]:
        d = m.cfg.data
        if (d.n_frames, d.register, d.min_clearance) != (data.n_frames, data.register, data.min_clearance):
            raise UserError(f"{m.run_dir}: reads scenes unlike {members[0].run_dir} (data.n_frames, "
                            "data.register or data.min_clearance differ); evaluate them apart")
    return EvalScenes(shard_paths(shards, data.band, split), data.n_frames, keep_unclear=split == "test",
                      register=data.register, rank=rank, world_size=world, seed=0, min_clearance=data.min_clearance)


def write_predictions(members: list[Member], predicting: list[Member], shards: Path, settings: EvalConfig, acc) -> None:
    """Each member in `predicting` predicts every scene of this process: OUT/<band>/<member>/.
    A scene already predicted by the same weights and settings is not predicted again."""
    band, out = members[0].band, Path(settings.out)
    precision = resolve_precision(settings.precision, acc.device)
    folders = {m.name: out / band / m.name for m in predicting}
    if acc.is_main_process:
        for m in predicting:
            _keep_if_same(folders[m.name], {"weights_sha256": m.weights_sha256(), "self_ensemble": settings.self_ensemble,
                                            "precision": precision, "n_frames": m.cfg.data.n_frames})
    acc.wait_for_everyone()
    batch_size = scenes_per_batch(settings.batch_size, "eval.batch_size", acc.device, members[0].cfg.data.n_frames,
                                  LR_SIZE, max(m.cfg.model.n_feat for m in predicting),
                                  len(transforms(settings.self_ensemble)))
    todo = scenes(members, shards, settings.split, acc.process_index, acc.num_processes)
    with tqdm(total=scene_count(shards, band, settings.split), desc=f"predict {band}", unit="scene",
              disable=not acc.is_main_process, dynamic_ncols=True) as bar:
        for batch in DataLoader(todo, batch_size=batch_size, num_workers=2):
            for m in predicting:
                missing = [j for j, name in enumerate(batch["name"]) if not predicted(folders[m.name], name)]
                if not missing:
                    continue
                sr, scale = super_resolve(m.model, batch["lr"][missing].to(acc.device), settings.self_ensemble, precision)
                for i, j in enumerate(missing):
                    write_outputs(folders[m.name], batch["name"][j], sr[i], scale[i])
            bar.update(len(batch["name"]) * acc.num_processes)


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


def score_band(members: list[Member], shards: Path, settings: EvalConfig, rank: int, world: int) -> list[SceneResult]:
    """Combine the members' predictions of this process's scenes, write the ensemble's, and
    score every member and method where the scene has a target."""
    band, out = members[0].band, Path(settings.out)
    val_cpsnr = torch.tensor([math.nan if (v := m.val_cpsnr()) is None else v for m in members])
    results = []
    for batch in DataLoader(scenes(members, shards, settings.split, rank, world), batch_size=1, num_workers=2):
        name, has_target = batch["name"][0], bool(batch["has_target"][0])
        predictions = [read_outputs(out / band / m.name, name) for m in members]
        srs = torch.stack([p[0] for p in predictions])           # (M, 1, H, W)
        scales = torch.stack([p[1] for p in predictions])
        ensembles, u = combine(srs, scales, val_cpsnr), uncertainty(srs, scales)
        write_outputs(out / band / ENSEMBLE, name, ensembles[settings.ensemble], u.total)
        # over the clear pixels of the target where there is one: clouds would swamp the means
        region = batch["sm"][0] if has_target else torch.ones(srs.shape[-2:], dtype=torch.bool)
        result = SceneResult(name, band, *u.means(region))
        if has_target:
            hr, sm, norm = batch["hr"][None], batch["sm"][None], float(batch["norm"][0])
            result.baseline_cpsnr = float(cpsnr(batch["baseline"][None], hr, sm)[0])
            result.bicubic_mean_cpsnr = float(cpsnr(bicubic_mean(batch["lr"]), hr, sm)[0])
            candidates = {m.name: (srs[i], scales[i]) for i, m in enumerate(members)}
            candidates |= {method: (sr, u.total) for method, sr in ensembles.items()}
            for method, (sr, scale) in candidates.items():
                search = shift_search(sr[None], hr, sm)
                result.scores[method] = score(sr[None], scale[None], hr, sm, norm, search,
                                              with_cssim=method not in ensembles or method == settings.ensemble)
                if method == settings.ensemble:
                    result.calibration = Calibration.of(sr[None], scale[None], hr, sm, search)
        results.append(result)
    return results


def write_results(results: list[SceneResult], members: list[Member], shards: dict[str, Path],
                  settings: EvalConfig) -> dict:
    """scenes.csv, summary.json and, for the test split, the submission; returns the summary."""
    out = Path(settings.out)
    summary = {"split": settings.split, "self_ensemble": settings.self_ensemble, "ensemble": settings.ensemble,
               "runs": {m.name: str(m.run_dir) for m in members}, "shards": {b: str(p) for b, p in shards.items()},
               "members": {m.name: m.describe() for m in members}, "bands": {}}
    for band, ms in by_band(members).items():
        mine = [r for r in results if r.band == band]
        seen = {r.scene for r in mine}
        left_out = [n for n in scene_names(shard_paths(shards[band], band, settings.split)) if n not in seen]
        summary["bands"][band] = summarise_band(mine, [m.name for m in ms], list(METHODS), settings.ensemble, left_out)
    write_csv(out / "scenes.csv", results)
    write_json(out / "summary.json", summary)
    if settings.split == "test":
        summary["submission"] = str(write_submission(out, shards))
    return summary


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """What to evaluate and how: the runs, and a flag for each eval setting (this command's
    and `launch evaluate`'s)."""
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run directories (the members)")
    parser.add_argument("--config", type=Path, help="YAML file whose eval section gives the settings the flags do not")
    add_setting_flags(parser, "eval")


def eval_settings(args: argparse.Namespace) -> EvalConfig:
    return load_config(args.config, flag_overrides(args, "eval")).eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.add_argument("--phase", choices=("all", "predict", "score"), default="all",
                        help="predict (members' outputs), score (ensembles, scores, summary) or all (default)")
    parser.add_argument("--member", type=int,
                        help="with --phase predict: predict only --runs[MEMBER] (a task of the launcher's array)")


def run(args: argparse.Namespace) -> int:
    settings = eval_settings(args)
    summary = evaluate(args.runs, settings, args.phase, args.member)
    if summary is None:
        return 0
    for band, entry in summary["bands"].items():
        if "ensemble_cpsnr" not in entry:
            print(f"{band}: {entry['scenes']} scenes predicted")
            continue
        gains = ", ".join(f"{k} {v['gain_over_best_member_db']:+.3f}" for k, v in entry["ensembles"].items())
        print(f"{band}: baseline {entry['baseline_cpsnr']:.2f} dB, bicubic mean {entry['bicubic_mean_cpsnr']:.2f}, "
              + ", ".join(f"{k} {v:.2f}" for k, v in entry["members"].items())
              + f", ensemble ({entry['ensemble_method']}) {entry['ensemble_cpsnr']:.2f}"
              + (f", score {entry['score']:.4f}" if entry["score"] is not None else ", score n/a (no norm.csv)")
              + f"\n  each ensemble method against the best member ({entry['best_member']}), dB: {gains}")
        if entry["left_out"]:
            print(f"  left out (no clear frame): {', '.join(entry['left_out'])}")
    print(f"{settings.out}/summary.json" + (f", {summary['submission']}" if "submission" in summary else ""))
    return 0
