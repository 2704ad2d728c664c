"""Checkpoints of a run: run_dir/checkpoints/step_NNNNNNN/ (complete ones only) and best/.

A checkpoint is Accelerate's full state (model, optimizer, scaler, the registered
scheduler, the RNG states of every rank) plus trainer_state.json (step, data stream
segment, best score so far). It is written under a temporary name by every process and
renamed by the main process once whole, so a directory named step_NNNNNNN is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from .errors import UserError
from .files import PARTIAL, disk_error, disk_failure, remove, replacing
from .run_dir import STEP, RunDir

STATE = "trainer_state.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def latest_step(run_dir: Path) -> int:
    """Step of the newest complete checkpoint; 0 when there is none."""
    newest = latest(run_dir)
    return 0 if newest is None else int(STEP.match(newest.name).group(1))


def save(accelerator: Accelerator, run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write the checkpoint of `step` on every process; the main process renames and prunes.
    A process that cannot write (a full disk) stops every process with one line, and the
    half-written directory is removed."""
    final = RunDir(run_dir).checkpoint(step)
    partial = final.with_name(final.name + PARTIAL)
    main = accelerator.is_main_process

    def prepare():
        if main:
            remove(partial)
            partial.mkdir(parents=True)

    def publish():
        if main:
            (partial / STATE).write_text(json.dumps(state, indent=1))
            old = final.with_name(final.name + ".old")
            if final.is_dir():  # the same step saved again (a resumed run stopped at once)
                final.rename(old)
            partial.rename(final)
            remove(old)
            for old in complete_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old)

    for stage in (prepare, lambda: accelerator.save_state(str(partial)), publish):
        _on_every_process(accelerator, stage, final, partial)
    return final


def _on_every_process(accelerator: Accelerator, stage, final: Path, partial: Path) -> None:
    """Run one stage of a save on every process; if it failed on any, all of them raise."""
    error = None
    try:
        stage()
    except Exception as e:  # noqa: BLE001 - every process must learn of it, whatever it is
        error = e
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum")
    if failed.item():
        if accelerator.is_main_process:
            remove(partial)
        if error is None:
            raise UserError(f"{final}: another process could not write its part; nothing kept")
        if disk_failure(error):
            raise disk_error(final, error) from None
        raise error


def load(accelerator: Accelerator, path: Path) -> dict:
    """Restore everything saved in `path` on every process; returns its trainer state."""
    accelerator.load_state(str(path))
    return saved_state(path)


def saved_state(path: Path) -> dict:
    """The trainer state of a checkpoint or of best/ (its trainer_state.json)."""
    return json.loads((Path(path) / STATE).read_text())


def best_state(run_dir: Path) -> dict | None:
    """What made run_dir/best/ best (step, val_cpsnr, ...), or None where there is none."""
    path = best_dir(run_dir)
    return None if path is None else saved_state(path)


def best_dir(run_dir: Path) -> Path | None:
    """run_dir/best/, or what a kill while replacing it left whole (best.old); None if neither."""
    best = RunDir(run_dir).best
    for path in (best, best.with_name("best.old")):
        if (path / "model.safetensors").is_file() and (path / STATE).is_file():
            return path
    return None


def save_best(accelerator: Accelerator, model: torch.nn.Module, run_dir: Path, state: dict) -> None:
    """run_dir/best/: the weights (model.safetensors) and what made them best. Main process only."""
    if not accelerator.is_main_process:
        return
    weights = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    with replacing(RunDir(run_dir).best) as partial:
        partial.mkdir()
        save_file(weights, str(partial / "model.safetensors"))
        (partial / STATE).write_text(json.dumps(state, indent=1))
