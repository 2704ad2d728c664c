"""Where runs stand, read off their own files: the rows of `launch status` and of the live
view that `--wait` keeps. Every run directory counts, also one started by hand, by
`accelerate launch` or by slurm/train.sbatch: its settings are in config.yaml, its progress
in metrics.jsonl, its job in jobs.jsonl (the launcher's) or in its start events (SLURM's
environment, recorded by the trainer).
"""

from __future__ import annotations

import datetime
import shutil
import time
from pathlib import Path

from ..core.config import Config, sweep_point
from ..core.config_load import load_config
from ..core.errors import UserError
from ..core.files import read_json_lines
from ..core.run_dir import RunDir
from .slurm import JobState, job_state

COLUMNS = ("run", "job", "state", "step", "loss", "val_cpsnr", "samples_s", "eta")


def run_dirs(dirs: list[Path]) -> list[Path]:
    """Every run directory at or under the given ones (a folder with config.yaml), in order;
    a run's own folders are not searched."""
    found = []
    for root in map(Path, dirs):
        if not root.is_dir():
            raise UserError(f"{root}: no such directory")
        here = [root] if RunDir(root).config.is_file() else sorted(p.parent for p in root.rglob("config.yaml"))
        here = [d for d in here if not any(parent in here for parent in d.parents)]
        if not here:
            raise UserError(f"{root}: holds no run (no config.yaml at or under it)")
        found += [d for d in here if d not in found]
    return found


def recorded_job(run_dir: Path) -> tuple[str | None, str | None]:
    """(job id, cluster) of the run's newest job: the launcher's record, else the SLURM job
    the trainer found itself in; (None, None) for a run started outside SLURM."""
    run = RunDir(run_dir)
    jobs = read_json_lines(run.jobs)[0] if run.jobs.is_file() else []
    if jobs:
        return jobs[-1]["job_id"], jobs[-1]["cluster"]
    starts = [e for e in _events(run_dir) if e.get("event") == "start" and e.get("slurm_job_id")]
    return (starts[-1]["slurm_job_id"], "slurm") if starts else (None, None)


def _events(run_dir: Path) -> list[dict]:
    metrics = RunDir(run_dir).metrics
    return read_json_lines(metrics)[0] if metrics.is_file() else []


def _config(run_dir: Path) -> Config | None:
    try:
        return load_config(RunDir(run_dir).config)
    except UserError:
        return None


def state_text(state: JobState | None) -> str:
    if state is None:
        return "unknown"
    return state.state + (f" ({state.reason})" if state.state == "PENDING" and state.reason else "")


def blank_row(run: str, job: str, state: str | None) -> dict:
    """A row before its run has logged anything: every figure a dash."""
    return {"run": run, "job": job, "state": state} | dict.fromkeys(COLUMNS[3:], "-")


def run_row(run_dir: Path, state: str | None = None) -> dict:
    """One run's row: its job and state (asked of SLURM unless given), the step it reached of
    its max_steps, its last loss and validation cPSNR, its samples/s and the time it needs."""
    cfg, events = _config(run_dir), _events(run_dir)
    job, cluster = recorded_job(run_dir)
    train = [e for e in events if e.get("event") == "train"]
    val = [e for e in events if e.get("event") == "val"]
    row = blank_row(str(run_dir), job or "-", state)
    if state is None:
        row["state"] = _state(job, cluster, cfg, train, events)
    if train and cfg is not None:
        last = train[-1]
        row["step"] = f"{last['step']}/{cfg.train.max_steps}"
        row["loss"] = f"{last['loss']:.4f}"
        row["samples_s"] = f"{last['samples_per_s']:.1f}"
        left = (cfg.train.max_steps - last["step"]) * cfg.train.batch_size / max(last["samples_per_s"], 1e-9)
        row["eta"] = str(datetime.timedelta(seconds=round(left))) if left > 0 else "-"
    if val:
        row["val_cpsnr"] = f"{val[-1]['val_cpsnr']:.3f}"
    return row


def _state(job, cluster, cfg, train, events) -> str:
    if cluster == "slurm" and shutil.which("squeue"):
        return state_text(job_state(job))
    if cfg is not None and train and train[-1]["step"] >= cfg.train.max_steps:
        return "done"
    if cluster == "local":
        return "local"  # a process of the launcher's on this machine: only that launcher can ask it
    if not events:
        return "not started"
    minutes = (time.time() - _when(events[-1])) / 60
    return f"by hand, last logged {minutes:.0f} min ago"


def _when(event: dict) -> float:
    try:
        return datetime.datetime.fromisoformat(event["time"]).timestamp()
    except (KeyError, ValueError):
        return time.time()


def status(dirs: list[Path]) -> list[dict]:
    """A row per run under `dirs`, with a column for each setting that tells a sweep's grid
    points apart."""
    found = run_dirs(dirs)
    rows = [run_row(d) for d in found]
    configs = [_config(d) for d in found]
    if all(c is not None for c in configs):
        points = sweep_point(configs)
        for row, point in zip(rows, points):
            row.update({key: str(value) for key, value in point.items()})
    return rows


def lines(rows: list[dict]) -> list[str]:
    """The rows as a table: a header and a line each, every column as wide as its widest cell."""
    if not rows:
        return []
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    return ["  ".join(k.ljust(w) for k, w in widths.items()).rstrip()] + [
        "  ".join(str(r.get(k, "")).ljust(w) for k, w in widths.items()).rstrip() for r in rows
    ]
