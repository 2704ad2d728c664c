"""Checkpoints of a run: run_dir/checkpoints/step_NNNNNNN/ (complete ones only) and best/.

A checkpoint is Accelerate's full state (model, optimizer, scaler, the registered
scheduler, the RNG states of every rank) plus trainer_state.json (step, data stream
segment, best score so far). It is written under a temporary name by every process and
renamed by the main process once whole, so a directory named step_NNNNNNN is complete.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

STATE = "trainer_state.json"
PARTIAL = ".partial"
STEP_DIR = re.compile(r"step_(\d{7})$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def latest_step(run_dir: Path) -> int:
    """Step of the newest complete checkpoint; 0 when there is none."""
    newest = latest(run_dir)
    return 0 if newest is None else int(STEP_DIR.match(newest.name).group(1))


def _replace_dir(partial: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save(accelerator: Accelerator, run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write the checkpoint of `step` on every process; the main process renames and prunes."""
    final = checkpoints_dir(run_dir) / f"step_{step:07d}"
    partial = final.with_name(final.name + PARTIAL)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE).write_text(json.dumps(state, indent=1))
        _replace_dir(partial, final)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator: Accelerator, path: Path) -> dict:
    """Restore everything saved in `path` on every process; returns its trainer state."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE).read_text())


def best_state(run_dir: Path) -> dict | None:
    """What made run_dir/best/ best (step, val_cpsnr, ...), or None where there is none."""
    path = Path(run_dir) / "best" / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def save_best(accelerator: Accelerator, model: torch.nn.Module, run_dir: Path, state: dict) -> None:
    """run_dir/best/: the weights (model.safetensors) and what made them best. Main process only."""
    if not accelerator.is_main_process:
        return
    final = Path(run_dir) / "best"
    partial = final.with_name("best" + PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    save_file(weights, str(partial / "model.safetensors"))
    (partial / STATE).write_text(json.dumps(state, indent=1))
    _replace_dir(partial, final)
