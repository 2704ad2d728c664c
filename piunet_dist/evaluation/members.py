"""The trained runs an evaluation combines: each one's settings, weights and what it is (how
far it trained, when, by which version, how well it validated)."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import checkpoint
from ..core.config import CHOICES, Config, config_hash, load_config
from ..core.errors import UserError
from ..core.files import read_json_lines, sha256
from ..core.run_dir import RunDir
from ..network.model import PIUNet
from ..network.weights import load_weights


@dataclass
class Member:
    name: str
    run_dir: Path
    cfg: Config
    weights: Path
    model: PIUNet | None = None  # loaded only where this process predicts with it

    @property
    def band(self) -> str:
        return self.cfg.data.band

    def load(self, device: torch.device) -> Member:
        self.model = load_weights(PIUNet.from_config(self.cfg.model), self.weights).to(device).eval()
        return self

    def weights_sha256(self) -> str:
        return sha256(self.weights / "model.safetensors")

    def val_cpsnr(self) -> float | None:
        """The validation cPSNR of these weights: what made best/ best, or the run's last
        validation at or before the checkpoint's step; None where it never validated."""
        state = _state(self.weights)
        if "val_cpsnr" in state:
            return state["val_cpsnr"]
        events = read_json_lines(RunDir(self.run_dir).metrics)[0] if RunDir(self.run_dir).metrics.is_file() else []
        scores = [e["val_cpsnr"] for e in events if e.get("event") == "val" and e["step"] <= state.get("step", 0)]
        return scores[-1] if scores else None

    def describe(self) -> dict:
        """What a reader needs to tell a finished member from a 30-step one."""
        state = _state(self.weights)
        when = state.get("time") or datetime.datetime.fromtimestamp(
            (self.weights / "model.safetensors").stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
        return {"run": str(self.run_dir), "band": self.band, "weights": self.weights.name, "weights_step": state.get("step"),
                "trained_steps": checkpoint.latest_step(self.run_dir), "max_steps": self.cfg.train.max_steps,
                "val_cpsnr": self.val_cpsnr(), "config_hash": config_hash(self.cfg), "date": when,
                "version": state.get("version", "unknown")}


def _state(weights: Path) -> dict:
    try:
        return json.loads((weights / checkpoint.STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


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


def find_members(runs: list[Path], which: str) -> list[Member]:
    """The runs as members (weights not loaded), each named by its directory (and its parent's
    where two share a name)."""
    check_runs(runs)
    members, names = [], {"ensemble", *CHOICES["eval.ensemble"]}  # the names of scenes.csv's other columns
    for run_dir in map(Path, runs):
        name = run_dir.name if run_dir.name not in names else f"{run_dir.parent.name}-{run_dir.name}"
        taken = name
        while name in names:  # a/x/run, b/x/run, c/x/run: still one column each in scenes.csv
            name = f"{taken}-{len(names)}"
        names.add(name)
        members.append(Member(name, run_dir, load_config(RunDir(run_dir).config), weights_path(run_dir, which)))
    return members


def by_band(members: list[Member]) -> dict[str, list[Member]]:
    bands: dict[str, list[Member]] = {}
    for m in members:
        bands.setdefault(m.band, []).append(m)
    return bands
