"""An evaluation sent to experiment trackers (eval.log_with), once summary.json is written.

Each run member's figures go to the tracker runs of the run it came from (continued by the
ids its trackers.json keeps), at the step of the weights evaluated: cPSNR, cSSIM, the
challenge's score and the calibration, as `eval/<split>_<figure>`. A band's ensembles, its
weights files (which have no run) and the report's figures, as images where the tracker
takes them (TensorBoard, W&B; MLflow as artifacts), go to a tracker run of the evaluation's
own, kept in OUT/<band>.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import tracking
from ..core.config import EvalConfig, TrainConfig
from ..core.eval_dir import EvalDir
from ..report.figures import calibration_figure, panels_figure, scatter_figure
from .members import Member, by_band

PANELS = 3  # scenes drawn per band, as the report draws them


def send(summary: dict, members: list[Member], settings: EvalConfig) -> None:
    names = tracking.resolve(settings.log_with, "eval.log_with")
    if not names:
        return
    out, split = EvalDir(settings.out), settings.split
    for band, ms in by_band(members).items():
        entry = summary["bands"][band]
        for m in ms:
            if m.is_file:
                continue
            figures = member_figures(entry, m.name, split)
            if not figures:  # a split without targets scores no member: its runs are left as they are
                continue
            described = summary["members"][m.name]
            step = described["weights_step"] or described["trained_steps"] or 0
            runs = tracking.trackers(
                names, m.run_dir, m.cfg.train.tracker_project, tracking.run_tags(m.cfg), m.cfg.train.tracker_group
            )
            _log(runs, figures, step)
        project = next((m.cfg.train.tracker_project for m in ms if not m.is_file), TrainConfig().tracker_project)
        tags = {"band": band, "split": split, "evaluation": out.path.name}
        runs = tracking.trackers(names, out.band(band), project, tags)
        config = {f"eval.{k}": v for k, v in dataclasses.asdict(settings).items()}
        config["members"] = json.dumps({m.name: str(m.source) for m in ms})
        drawn = out.figures(band)
        figures = [
            f
            for f in (
                scatter_figure(out, band, settings.ensemble, drawn),
                calibration_figure(entry, band, drawn),
                panels_figure(out, summary, band, PANELS, drawn),
            )
            if f
        ]
        _log(runs, evaluation_figures(entry, split), 0, tracking.config_values(config), figures)


def member_figures(entry: dict, name: str, split: str) -> dict[str, float]:
    """A member's scene means on the split, and its calibration's check where one was fitted."""
    found = {
        "cpsnr": entry.get("members", {}).get(name),
        "cssim": entry.get("members_cssim", {}).get(name),
        "score": entry.get("members_score", {}).get(name),
        **entry.get("members_calibration", {}).get(name, {}),
        **_calibrated(entry.get("calibration_fit", {}).get("members", {}).get(name)),
    }
    return {f"eval/{split}_{k}": v for k, v in found.items() if v is not None}


def evaluation_figures(entry: dict, split: str) -> dict[str, float]:
    """A band's: its scenes, the chosen ensemble's figures, every method's cPSNR and each
    member's, the baselines' and the ensemble's calibration."""
    found = {"scenes": entry["scenes"], "scored_scenes": entry["scored_scenes"]}
    if "ensembles" in entry:
        found |= {
            "cpsnr": entry["ensemble_cpsnr"],
            "cssim": entry["ensemble_cssim"],
            "score": entry["score"],
            "baseline_cpsnr": entry["baseline_cpsnr"],
            "bicubic_mean_cpsnr": entry["bicubic_mean_cpsnr"],
            **entry["calibration"],
            **{f"cpsnr_{method}": e["cpsnr"] for method, e in entry["ensembles"].items()},
            **{f"cpsnr_member_{name}": v for name, v in entry["members"].items()},
            **_calibrated(entry.get("calibration_fit", {}).get("ensemble")),
        }
    return {f"eval/{split}_{k}": v for k, v in found.items() if v is not None}


def _calibrated(check: dict | None) -> dict[str, float]:
    """A calibration's check on the scenes it was not fitted on: NLL and the worst miss of the
    nominal coverages (points), before and after."""
    if not check:
        return {}

    def worst(coverage: list[float]) -> float:
        return 100 * max(abs(c - n) for c, n in zip(coverage, check["nominal"]))

    return {
        "nll_before_calibration": check["before"]["nll"],
        "nll_calibrated": check["after"]["nll"],
        "coverage_worst_miss_before_calibration": worst(check["before"]["coverage"]),
        "coverage_worst_miss_calibrated": worst(check["after"]["coverage"]),
    }


def _log(runs: list, values: dict, step: int, config: dict | None = None, figures: list[Path] = ()) -> None:
    for run in runs:
        run.start()
        try:
            if config:
                run.store_init_configuration(config)
            # W&B drops a step below its run's last: there an evaluation goes at the run's next
            # step, with the step of its weights among its values
            at = None if run.name == "wandb" else step
            run.log(values | ({"eval/weights_step": step} if at is None else {}), step=at)
            _images(run, figures, at)
        finally:
            run.finish()


def _images(run, figures: list[Path], step: int | None) -> None:
    if run.name == "mlflow":
        for figure in figures:
            run.log_artifact(str(figure), "figures")
        return
    pixels = {f"figures/{f.stem}": np.asarray(Image.open(f).convert("RGB"))[None] for f in figures}
    if pixels and run.name == "tensorboard":
        run.log_images(pixels, step=step, dataformats="NHWC")
    elif pixels and run.name == "wandb":
        run.log_images(pixels, step=step)
