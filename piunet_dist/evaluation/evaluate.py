"""Evaluate trained runs and weights files (the members of an ensemble) on a split, per band.

    python -m piunet_dist evaluate --runs runs/nir-seed0 runs/nir-seed1 --split val --out runs/eval
    python -m piunet_dist evaluate --runs nir_model_checkpoint.pt:NIR red_model_checkpoint.pt:RED \
        --shards shards/probav --split test --out runs/test

Two phases. predict: each member predicts every scene with its self-ensemble (by default
the views its training showed it: inference.views_for) and writes OUT/<band>/<member>/
(outputs.py); an interrupted evaluation resumes where it stopped. score: the members'
predictions are read back (the SR as delivered, a 16-bit PNG), combined by every ensemble
method (ensembles.py) and scored (scoring.py); the method eval.ensemble names is written
to OUT/<band>/ensemble/. Then OUT/scenes.csv, OUT/summary.json and, for the test split,
the submission (submission.py). The launcher runs the predict phase as an array, one task
per member, and the score phase after it. Started by several processes (accelerate
launch, torchrun, srun), every scene is predicted and scored once, by one of them. With
eval.log_with the figures go to experiment trackers too (trackers.py).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core import tracking
from ..core.config import EvalConfig, sweep_point
from ..core.config_flags import add_setting_flags, flag_overrides
from ..core.config_load import load_config
from ..core.errors import UserError
from ..core.eval_dir import EvalDir
from ..core.files import read_json_or_empty, write_json
from ..core.memory import keep_freed_memory
from ..data.pipeline import EvalScenes
from ..data.probav import LR_SIZE
from ..data.shards import scene_count, scene_names, shard_paths
from ..network.baselines import bicubic_mean
from ..network.metrics import cpsnr, shift_search
from . import trackers
from .calibration import FILE, Fit, bounds, fit_and_check, split_scenes
from .ensembles import METHODS, combine, uncertainty
from .inference import resolve_precision, scenes_per_batch, super_resolve_views, view_names, views_for
from .members import Member, by_band, find_members
from .outputs import predicted, read_outputs, read_view_cpsnr, write_calibrated, write_outputs
from .scoring import Calibration, SceneResult, grid, score, summarise_band, write_csv
from .submission import check_complete, write_submission
from .summary_text import summary_text

STAMP = "predictions.json"


def evaluate(runs: list[Path], settings: EvalConfig, phase: str = "all", member: int | None = None) -> dict | None:
    """Predict (phase predict: with every member, or only runs[member]) and score (phase
    score); `all` does both. Returns the summary on the main process after scoring, else None."""
    from accelerate import Accelerator

    keep_freed_memory()
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if member is not None and (phase != "predict" or not 0 <= member < len(runs)):
        raise UserError(f"--member: {member} must go with --phase predict and index one of the {len(runs)} runs")
    members, bands, shards = plan(runs, settings)
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
    summary = write_results(results, members, shards, settings)
    trackers.send(summary, members, settings)
    return summary


def plan(runs: list[Path], settings: EvalConfig) -> tuple[list[Member], dict[str, list[Member]], dict[str, Path]]:
    """The members, by band, and where each band's scenes are; every mistake refused here,
    before anything is written (the launcher asks it before it submits)."""
    tracking.resolve(settings.log_with, "eval.log_with")
    members = find_members(runs, settings.checkpoint, settings.band, settings.heads)
    bands = by_band(members)
    shards = {band: band_shards(ms, settings) for band, ms in bands.items()}
    for band, where in shards.items():
        shard_paths(where, band, settings.split)  # a split that is not there is said before anything is written
    if settings.split == "test":
        check_complete(shards, settings.partial)
    for ms in bands.values():
        applied_fit(ms, settings)  # a calibration of other members is refused before they predict
    return members, bands, shards


def band_shards(members: list[Member], settings: EvalConfig) -> Path:
    """Where a band's scenes are: eval.shards, else where its first run trained."""
    if settings.shards:
        return Path(settings.shards)
    runs = [m for m in members if not m.is_file]
    if not runs:
        raise UserError(
            f"--shards: {members[0].source} is a weights file, which does not say where its scenes are; "
            "give --shards DIR (a directory that pack wrote)"
        )
    return Path(runs[0].cfg.data.shards)


def scenes(members: list[Member], shards: Path, split: str, rank: int, world: int) -> EvalScenes:
    """The scenes of the members' band, read as they read them (the same frames, registration
    and clearance), this process's share of them."""
    data = members[0].cfg.data
    for m in members[1:]:
        if reading(m.cfg.data) != reading(data):
            raise UserError(
                f"{m.source}: reads scenes unlike {members[0].source} ({', '.join(f'data.{k}' for k in READING)} "
                "differ); evaluate them apart"
            )
    return EvalScenes(
        shard_paths(shards, data.band, split), data, keep_unclear=split == "test", rank=rank, world_size=world, seed=0
    )


READING = ("n_frames", "min_clearance", "no_data", "register")  # how a scene's frames are read for the network


def reading(data) -> tuple:
    return tuple(getattr(data, k) for k in READING)


def write_predictions(members: list[Member], predicting: list[Member], shards: Path, settings: EvalConfig, acc) -> None:
    """Each member in `predicting` predicts every scene of this process: OUT/<band>/<member>/,
    with each view's cPSNR where it averages several and the scene has a target. A scene
    already predicted by the same weights and settings is not predicted again."""
    band, out = members[0].band, EvalDir(settings.out)
    precision, _ = resolve_precision(settings.precision, acc.device)
    folders = {m.name: out.member(band, m.name) for m in predicting}
    views = {m.name: views_for(settings.self_ensemble, m.trained_with_rotations) for m in predicting}
    if acc.is_main_process:
        for m in predicting:
            _keep_if_same(
                folders[m.name],
                {
                    "weights_sha256": m.weights_sha256(),
                    "self_ensemble": views[m.name],
                    "precision": precision,
                    "n_frames": m.cfg.data.n_frames,
                },
            )
    acc.wait_for_everyone()
    batch_size = scenes_per_batch(
        settings.batch_size,
        "eval.batch_size",
        acc.device,
        members[0].cfg.data.n_frames,
        LR_SIZE,
        max(m.cfg.model.n_feat for m in predicting),
        max(views.values()),
    )
    todo = scenes(members, shards, settings.split, acc.process_index, acc.num_processes)
    with tqdm(
        total=scene_count(shards, band, settings.split),
        desc=f"predict {band}",
        unit="scene",
        disable=not acc.is_main_process,
        dynamic_ncols=True,
    ) as bar:
        for batch in DataLoader(todo, batch_size=batch_size, num_workers=settings.workers):
            for m in predicting:
                missing = [j for j, name in enumerate(batch["name"]) if not predicted(folders[m.name], name)]
                if not missing:
                    continue
                srs, scales = super_resolve_views(
                    m.model, batch["lr"][missing].to(acc.device), views[m.name], precision
                )
                sr, scale = srs.mean(dim=0), scales.mean(dim=0)
                for i, j in enumerate(missing):
                    each = None
                    if views[m.name] > 1 and batch["has_target"][j]:
                        hr, sm = batch["hr"][j][None, None].to(acc.device), batch["sm"][j][None, None].to(acc.device)
                        each = [float(cpsnr(v[i][None], hr, sm)[0]) for v in srs]
                    write_outputs(folders[m.name], batch["name"][j], sr[i], scale[i], each)
            bar.update(len(batch["name"]) * acc.num_processes)


def _keep_if_same(folder: Path, stamp: dict) -> None:
    """Keep a member's predictions only when they were made with `stamp`'s weights and
    settings; otherwise remove them (only the files this evaluation writes) and stamp anew."""
    if read_json_or_empty(folder / STAMP) == stamp:
        return
    if folder.is_dir():
        for path in folder.iterdir():
            if path.suffix in (".png", ".npy", ".json", ".partial") and path.name.startswith("imgset"):
                path.unlink()
    write_json(folder / STAMP, stamp)


def score_band(members: list[Member], shards: Path, settings: EvalConfig, rank: int, world: int) -> list[SceneResult]:
    """Combine the members' predictions of this process's scenes, write the ensemble's, and
    score every member and method where the scene has a target."""
    band, out = members[0].band, EvalDir(settings.out)
    val_cpsnr = torch.tensor([math.nan if (v := m.val_cpsnr()) is None else v for m in members])
    views = {m.name: views_for(settings.self_ensemble, m.trained_with_rotations) for m in members}
    applied = applied_fit(members, settings)
    results = []
    reading = scenes(members, shards, settings.split, rank, world)
    for batch in DataLoader(reading, batch_size=1, num_workers=settings.workers):
        name, has_target = batch["name"][0], bool(batch["has_target"][0])
        predictions = [read_outputs(out.member(band, m.name), name) for m in members]
        srs = torch.stack([p[0] for p in predictions])  # (M, 1, H, W)
        scales = torch.stack([p[1] for p in predictions])
        ensembles, u = combine(srs, scales, val_cpsnr), uncertainty(srs, scales)
        write_outputs(out.ensemble(band), name, ensembles[settings.ensemble], u.total)
        if applied or settings.interval:
            sr = ensembles[settings.ensemble]
            write_calibrated(
                out.ensemble(band),
                name,
                u.total * applied.factor if applied else None,
                bounds(sr, u.total, applied, settings.interval) if settings.interval else None,
            )
        # over the clear pixels of the target where there is one: clouds would swamp the means
        region = batch["sm"][0] if has_target else torch.ones(srs.shape[-2:], dtype=torch.bool)
        result = SceneResult(name, band, *u.means(region), views={m.name: views[m.name] for m in members})
        if has_target:
            hr, sm, norm = batch["hr"][None], batch["sm"][None], float(batch["norm"][0])
            result.baseline_cpsnr = float(cpsnr(batch["baseline"][None], hr, sm)[0])
            result.bicubic_mean_cpsnr = float(cpsnr(bicubic_mean(batch["lr"]), hr, sm)[0])
            candidates = {m.name: (srs[i], scales[i]) for i, m in enumerate(members)}
            candidates |= {method: (sr, u.total) for method, sr in ensembles.items()}
            for method, (sr, scale) in candidates.items():
                search = shift_search(sr[None], hr, sm)
                result.scores[method] = score(
                    sr[None],
                    scale[None],
                    hr,
                    sm,
                    norm,
                    search,
                    with_cssim=method not in ensembles or method == settings.ensemble,
                )
                if method not in ensembles or method == settings.ensemble:
                    result.calibration[method] = Calibration.of(sr[None], scale[None], hr, sm, search)
        results.append(result)
    return results


def write_results(
    results: list[SceneResult], members: list[Member], shards: dict[str, Path], settings: EvalConfig
) -> dict:
    """scenes.csv, summary.json and, for the test split, the submission; returns the summary."""
    out = EvalDir(settings.out)
    setting = settings.self_ensemble
    summary = {
        "split": settings.split,
        "self_ensemble": int(setting) if setting.isdigit() else setting,
        "ensemble": settings.ensemble,
        "runs": {m.name: str(m.source) for m in members},
        "shards": {b: str(p) for b, p in shards.items()},
        "members": {m.name: m.describe(views_for(setting, m.trained_with_rotations)) for m in members},
        "bands": {},
    }
    for band, ms in by_band(members).items():
        mine = [r for r in results if r.band == band]
        seen = {r.scene for r in mine}
        left_out = [n for n in scene_names(shard_paths(shards[band], band, settings.split)) if n not in seen]
        summary["bands"][band] = summarise_band(mine, [m.name for m in ms], list(METHODS), settings.ensemble, left_out)
        summary["bands"][band]["views"] = view_scores(ms, mine, out, summary["members"])
        runs = [m for m in ms if not m.is_file]
        points = sweep_point([m.cfg for m in runs]) if len(runs) > 1 else []
        if any(p.values() for p in points):
            summary["bands"][band]["grid"] = grid(
                dict(zip([m.name for m in runs], points)),
                summary["bands"][band].get("members", {}),
                {m.name: m.val_cpsnr() for m in runs},
            )
        if settings.split == "val" and settings.calibrate != "none":
            summary["bands"][band]["calibration_fit"] = fit_calibrations(ms, mine, settings)
    summary["chosen"] = chosen(members, settings, out)
    write_csv(out.scenes, results)
    if settings.split == "test":
        summary["submission"] = write_submission(out, shards)
    write_json(out.summary, summary)
    return summary


def fit_calibrations(members: list[Member], results: list[SceneResult], settings: EvalConfig) -> dict:
    """A calibration of each member's scale and of the ensemble's, fitted on part of the
    band's scored scenes and checked on the rest; written to OUT/<band>/<member or ensemble>/
    and to each run's weights directory (its best/), where predict finds it."""
    band, out = members[0].band, EvalDir(settings.out)
    scored = [r for r in results if r.scores]
    weights = {m.name: m.weights_sha256() for m in members}
    entry = {"method": settings.calibrate, "holdout": settings.calibration_holdout, "members": {}}
    if not scored:
        return entry | {"fit_scenes": 0}
    for name in [m.name for m in members] + [settings.ensemble]:
        by_scene = {r.scene: r.calibration[name].residuals for r in scored}
        ensemble = name == settings.ensemble
        fitted_for = weights if ensemble else {name: weights[name]}
        fit, checked = fit_and_check(by_scene, settings.calibrate, settings.calibration_holdout, band, fitted_for)
        fit.write(out.ensemble(band) if ensemble else out.member(band, name))
        if ensemble:
            fit_on, check = split_scenes(list(by_scene), settings.calibration_holdout)
            entry |= {"fit_scenes": len(fit_on), "check_scenes": check, "ensemble": checked}
        else:
            entry["members"][name] = checked
            member = next(m for m in members if m.name == name)
            if not member.is_file:
                fit.write(member.weights)
    return entry


def applied_fit(members: list[Member], settings: EvalConfig) -> Fit | None:
    """The ensemble's calibration that eval.calibration names, checked to be these members'."""
    if not settings.calibration:
        return None
    band = members[0].band
    path = EvalDir(settings.calibration).ensemble(band) / FILE
    fit = Fit.read(path)
    fit.check(band, {m.name: m.weights_sha256() for m in members}, path)
    return fit


def chosen(members: list[Member], settings: EvalConfig, out: EvalDir) -> list[str]:
    """What was decided for the user, a line each, where a setting's auto or a fallback decided
    it: each member's views and precision, an ensemble method that could not be used as named,
    and weights files scored on validation scenes that may be their own training scenes."""
    lines = []
    for m in members:
        stamp = read_json_or_empty(out.member(m.band, m.name) / STAMP)
        if settings.self_ensemble == "auto":
            why = "trained with rotations" if m.trained_with_rotations else "trained without rotations"
            lines.append(
                f"{m.name}: {views_for('auto', m.trained_with_rotations)} view(s) (eval.self_ensemble auto: {why})"
            )
        if settings.precision == "auto" and stamp:
            lines.append(
                f"{m.name}: precision {stamp['precision']} "
                "(eval.precision auto: bf16 on a GPU that supports it, float32 elsewhere)"
            )
        if m.is_file and settings.split == "val":
            lines.append(
                f"{m.name}: a weights file, trained on a split this project does not know: its training scenes may be "
                "among these validation scenes (pack --val-list with its own split holds them out)"
            )
    for band, ms in by_band(members).items():
        unscored = [m.name for m in ms if m.val_cpsnr() is None]
        if settings.ensemble == "val_weighted" and unscored and len(ms) > 1:
            lines.append(
                f"{band}: the val_weighted ensemble weighs its members equally, as the mean: "
                f"{', '.join(unscored)} never validated"
            )
    return lines


def view_scores(members: list[Member], results: list[SceneResult], out: EvalDir, described: dict) -> dict:
    """Per member that averaged several views: each view's mean cPSNR over the scored scenes,
    so a user sees whether averaging the views helps their network."""
    scores = {}
    for m in members:
        names = view_names(described[m.name]["self_ensemble"])
        found = [v for r in results if r.scores and (v := read_view_cpsnr(out.member(m.band, m.name), r.scene))]
        if len(names) > 1 and found:
            scores[m.name] = dict(zip(names, np.mean(found, axis=0).tolist()))
    return scores


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """What to evaluate and how: the runs, and a flag for each eval setting (this command's
    and `launch evaluate`'s)."""
    parser.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        required=True,
        help="the members: run directories, a run's best/ or checkpoint directories, or weights files "
        "(.pt, .pth, .safetensors) with their band, nir_model_checkpoint.pt:NIR (or --band for every file), "
        "and --shards where no run of their band says",
    )
    parser.add_argument("--config", type=Path, help="YAML file whose eval section gives the settings the flags do not")
    add_setting_flags(parser, "eval")


def eval_settings(args: argparse.Namespace) -> EvalConfig:
    return load_config(args.config, flag_overrides(args, "eval")).eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.add_argument(
        "--phase",
        choices=("all", "predict", "score"),
        default="all",
        help="predict (members' outputs), score (ensembles, scores, summary) or all (default)",
    )
    parser.add_argument(
        "--member", type=int, help="with --phase predict: predict only --runs[MEMBER] (a task of the launcher's array)"
    )


def run(args: argparse.Namespace) -> int:
    settings = eval_settings(args)
    summary = evaluate(args.runs, settings, args.phase, args.member)
    if summary is not None:
        print(summary_text(summary, EvalDir(settings.out)))
    return 0
