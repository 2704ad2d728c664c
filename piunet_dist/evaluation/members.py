"""The members an evaluation combines: trained runs and weights files alike, each with its
settings, its weights and what it is (how far it trained, when, by which version, how
well it validated; for a file its path and sha256).

A member is given as a run directory (its best/ or newest checkpoint, eval.checkpoint), a
run's best/ or checkpoint directory (those weights, the run's settings), or a weights
file: a published `.pt`/`.pth` state_dict or a `.safetensors` file. A file has no
settings: its band is given after it (`nir_model_checkpoint.pt:NIR`) or is eval.band, its
heads eval.heads, its shape its own, and it reads its
scenes as the paper does (data section defaults).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import checkpoint
from ..core.config import BANDS, CHOICES, Config, config_hash
from ..core.config_load import load_config
from ..core.errors import UserError
from ..core.eval_dir import ENSEMBLE
from ..core.files import read_json_lines, read_json_or_empty, sha256
from ..core.run_dir import STEP, RunDir
from ..network.model import PIUNet
from ..network.weights import load_weights, model_from_weights, shape_of

WEIGHTS_FILES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass
class Member:
    name: str
    source: Path  # what was given
    cfg: Config  # the run's settings; for a weights file, the defaults with its band, shape and heads
    weights: Path  # a checkpoint or best/ directory, or the weights file
    run_dir: Path | None  # None for a weights file
    model: PIUNet | None = None  # loaded only where this process predicts with it

    @property
    def band(self) -> str:
        return self.cfg.data.band

    @property
    def is_file(self) -> bool:
        return self.run_dir is None

    @property
    def trained_with_rotations(self) -> bool:
        """Whether its training rotated and flipped the patches (a weights file: as published, no)."""
        return not self.is_file and self.cfg.data.augment

    def weights_file(self) -> Path:
        return self.weights if self.is_file else self.weights / "model.safetensors"

    def load(self, device: torch.device) -> Member:
        self.model = load_weights(PIUNet.from_config(self.cfg.model), self.weights).to(device).eval()
        return self

    def weights_sha256(self) -> str:
        return sha256(self.weights_file())

    def val_cpsnr(self) -> float | None:
        """The validation cPSNR of these weights: what made best/ best, or the run's last
        validation at or before the checkpoint's step; None where it never validated."""
        if self.is_file:
            return None
        state = read_json_or_empty(self.weights / checkpoint.STATE)
        if "val_cpsnr" in state:
            return state["val_cpsnr"]
        metrics = RunDir(self.run_dir).metrics
        events = read_json_lines(metrics)[0] if metrics.is_file() else []
        scores = [e["val_cpsnr"] for e in events if e.get("event") == "val" and e["step"] <= state.get("step", 0)]
        return scores[-1] if scores else None

    def describe(self, views: int) -> dict:
        """What a reader needs to tell a finished member from a 30-step one, or a published file
        from a run, and the views of the self-ensemble it was predicted with."""
        if self.is_file:
            when = datetime.datetime.fromtimestamp(self.weights.stat().st_mtime, datetime.timezone.utc)
            return {
                "kind": "weights file",
                "path": str(self.weights),
                "sha256": self.weights_sha256(),
                "band": self.band,
                "heads": self.cfg.model.n_heads,
                "self_ensemble": views,
                "trained_with_rotations": False,
                "weights": self.weights.name,
                "weights_step": None,
                "trained_steps": None,
                "max_steps": None,
                "val_cpsnr": None,
                "config_hash": None,
                "date": when.isoformat(timespec="seconds"),
                "version": "unknown",
            }
        state = read_json_or_empty(self.weights / checkpoint.STATE)
        when = state.get("time") or datetime.datetime.fromtimestamp(
            self.weights_file().stat().st_mtime, datetime.timezone.utc
        ).isoformat(timespec="seconds")
        return {
            "kind": "run",
            "run": str(self.run_dir),
            "band": self.band,
            "self_ensemble": views,
            "trained_with_rotations": self.trained_with_rotations,
            "weights": self.weights.name,
            "weights_step": state.get("step"),
            "trained_steps": checkpoint.latest_step(self.run_dir),
            "max_steps": self.cfg.train.max_steps,
            "val_cpsnr": self.val_cpsnr(),
            "config_hash": config_hash(self.cfg),
            "date": when,
            "version": state.get("version", "unknown"),
        }


def trained_with_rotations(weights: Path) -> bool:
    """Whether the run that wrote these weights (best/ or a checkpoint) rotated and flipped its
    patches; False for a weights file of its own, like the published ones."""
    run = RunDir.of_weights(weights)
    return run is not None and run.config.is_file() and load_config(run.config).data.augment


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


def _of_run(path: Path, which: str) -> tuple[Path, Path] | None:
    """(run dir, weights) when `path` is a run directory, or a run's best/ or checkpoint directory."""
    if RunDir(path).config.is_file():
        return path, weights_path(path, which)
    run = RunDir.of_weights(path)
    if path.is_dir() and run is not None and run.config.is_file():
        return run.path, path
    return None


def _file_member(path: Path, band: str, heads: int) -> tuple[Config, Path]:
    """A weights file's settings: its band and heads as given, its shape its own (read now, so
    that a file that is no PIUnet is refused before anything is written)."""
    if not band:
        raise UserError(
            f"--band: {path} is a weights file, which does not say its band; give it as {path}:NIR or "
            f"{path}:RED, or --band for every file"
        )
    model = model_from_weights(path, heads)  # the whole file fits, or one line says which keys do not
    cfg = Config()
    cfg.data.band, cfg.model.n_heads = band, heads
    cfg.model.n_feat, cfg.model.r_bneck, cfg.model.n_tefa = shape_of(model.state_dict(), path)
    return cfg, path


def with_band(given) -> tuple[Path, str]:
    """A member as given, PATH or PATH:BAND (a weights file says no band of its own), and that band."""
    text = str(given)
    path, _, band = text.rpartition(":")
    if path and band.upper() in BANDS:
        return Path(path), band.upper()
    return Path(text), ""


def find_members(paths: list[Path], which: str = "best", band: str = "", heads: int = 1) -> list[Member]:
    """The given runs and weights as members (weights not loaded), each named by its run
    directory or file stem (and its parent's where two share a name). Every one is checked
    now: a path that is neither, a file without `band`, the same weights given twice."""
    members, names, seen = [], {ENSEMBLE, *CHOICES["eval.ensemble"]}, {}  # OUT/<band>/ensemble/, scenes.csv's columns
    for given in paths:
        source, own_band = with_band(given)
        found = _of_run(source, which)
        if found is not None:
            run_dir, weights = found
            cfg = load_config(RunDir(run_dir).config)
            if own_band and own_band != cfg.data.band:
                raise UserError(f"--runs {given}: {run_dir} is a {cfg.data.band} run (its config.yaml)")
            given_step = STEP.match(source.name) if source != run_dir else None
            stem = f"{run_dir.name}-step{int(given_step.group(1))}" if given_step else run_dir.name
            base = run_dir
        elif source.is_file() and source.suffix in WEIGHTS_FILES:
            run_dir, (cfg, weights) = None, _file_member(source, own_band or band, heads)
            stem, base = source.stem, source
        else:
            raise UserError(
                f"{source}: not a run directory (no config.yaml), a run's best/ or checkpoint directory, "
                f"nor a weights file ({', '.join(WEIGHTS_FILES)})"
            )
        key = weights.resolve()
        if key in seen:
            raise UserError(f"--runs: {source} is given twice (as {seen[key]} too); each run is one member")
        seen[key] = source
        name = stem if stem not in names else f"{base.parent.name}-{stem}"
        taken = name
        while name in names:  # a/x/run, b/x/run, c/x/run: still one column each in scenes.csv
            name = f"{taken}-{len(names)}"
        names.add(name)
        members.append(Member(name, source, cfg, weights, run_dir))
    return members


def by_band(members: list[Member]) -> dict[str, list[Member]]:
    bands: dict[str, list[Member]] = {}
    for m in members:
        bands.setdefault(m.band, []).append(m)
    return bands
