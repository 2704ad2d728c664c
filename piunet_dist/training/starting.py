"""Where a run starts, decided before anything is written: a new run in an unused run_dir, its
own newest checkpoint (train.resume), or, for a new run, other weights (train.init_weights).
A run resumes only under the settings that define it and on the shards it was trained on.
"""

from __future__ import annotations

from pathlib import Path

from ..core import checkpoint
from ..core.config import Config, run_differences
from ..core.config_load import load_config
from ..core.errors import UserError
from ..core.run_dir import RunDir
from ..data.shards import band_digest
from ..network.model import PIUNet
from ..network.weights import load_weights


def initial_model(cfg: Config, resuming: bool) -> PIUNet:
    """The network a run starts from: newly initialised, or for a new run with
    train.init_weights those weights, batch-norm statistics included (a file that does not
    fit is one line naming its keys and shapes). A resumed run loads its own checkpoint later."""
    model = PIUNet.from_config(cfg.model, checkpoint_blocks=cfg.train.activation_checkpointing)
    if cfg.train.init_weights and not resuming:
        load_weights(model, cfg.train.init_weights)
    return model


def check_run_dir(cfg: Config) -> Path | None:
    """The checkpoint to resume from, or None for a new run; a run_dir that holds another
    run, or this one under other defining settings, is refused before anything is written."""
    run_dir = Path(cfg.run_dir)
    newest = checkpoint.latest(run_dir)
    used = newest is not None or checkpoint.best_dir(run_dir) is not None
    if not cfg.train.resume:
        if used:
            raise UserError(
                f"{run_dir}: holds a run already (checkpoints or best/); train.resume=false starts a "
                "new run only in an unused run_dir: choose another run_dir, or move this one aside"
            )
        return None
    if used:
        check_same_settings(cfg)
    return newest


def check_same_settings(cfg: Config) -> None:
    """A run continues (or counts as done) only under the settings that define it: its
    config.yaml's, where it has one."""
    saved = RunDir(cfg.run_dir).config
    if not saved.is_file():
        return
    try:
        previous = load_config(saved)
    except UserError as e:
        raise UserError(f"cannot resume: {e}") from None
    changed = run_differences(previous, cfg)
    if changed:
        raise UserError(
            f"{cfg.run_dir}: resuming with settings that define another run ({'; '.join(changed)}); "
            "give the run's own, or choose another run_dir"
        )


def check_same_shards(cfg: Config, checkpoint_dir: Path, digest: str | None = None) -> None:
    """A run resumes on the shards its checkpoint was trained on (wherever they lie now): its
    stream position and its val scores mean nothing on other scenes. Checkpoints written
    before they kept the digest are taken as they are."""
    trained_on = checkpoint.saved_state(checkpoint_dir).get("shards_sha256")
    root = Path(cfg.data.shards)
    if trained_on is not None and trained_on != (digest or band_digest(root, cfg.data.band)):
        raise UserError(
            f"{cfg.run_dir}: {checkpoint_dir.name} was trained on other {cfg.data.band} shards than data.shards={root} "
            "holds now (their manifest differs: scenes drawn or packed again); resume it on the shards it was "
            "trained on, or choose another run_dir"
        )
