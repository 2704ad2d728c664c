"""Experiment trackers (train.log_with), through Accelerate's: which are asked for and
installed, and a run's tracker runs, which a resumed run continues rather than starting anew.

A run's tracker runs are named after its directory (a sweep member's: nir-lr3e-4-seed0),
tagged with its band, seed and sweep, and given every setting as their config; an
evaluation continues them, and has runs of its own in OUT/<band>. W&B and MLflow runs are
continued by id, kept in RUN_DIR/trackers.json; MLflow's store is MLFLOW_TRACKING_URI where
it is set (a server), else RUN_DIR/mlflow.db with its artifacts in RUN_DIR/mlflow-artifacts.
W&B reads its own environment (WANDB_MODE=offline on nodes without internet; `wandb sync`
uploads later).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
from pathlib import Path

from accelerate.tracking import (
    LOGGER_TYPE_TO_CLASS,
    MLflowTracker,
    TensorBoardTracker,
    WandBTracker,
    get_available_trackers,
    on_main_process,
)

from .errors import UserError
from .files import write_json

KEPT = "trackers.json"
# read once: mlflow.set_tracking_uri sets it too, and a run's own store is no server
MLFLOW_SERVER = os.environ.get("MLFLOW_TRACKING_URI", "")

# what to install for each tracker Accelerate speaks to
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "piunet-dist[wandb]",
    "mlflow": "piunet-dist[mlflow]",
    "aim": "aim",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def resolve(names: list[str], setting: str = "train.log_with") -> list[str]:
    """The trackers asked for, `all` standing for every one installed; one that is unknown or
    not installed is refused, naming what to install."""
    installed = [str(t.value) for t in get_available_trackers()]
    installed = [t for t in installed if t != "mlflow" or _mlflow_store_installed()]
    if "all" in names:
        return installed
    for name in names:
        if name not in PACKAGES:
            raise UserError(f"{setting}: {name!r} is not a tracker: {', '.join(PACKAGES)} or all")
        if name not in installed:
            raise UserError(f"{setting}: {name} is not installed here: pip install '{PACKAGES[name]}'")
    return list(dict.fromkeys(names))


def _mlflow_store_installed() -> bool:
    """A store of its own (SQLite, through SQLAlchemy) or a server's address."""
    return bool(MLFLOW_SERVER) or importlib.util.find_spec("sqlalchemy") is not None


def trackers(names: list[str], run_dir: Path, project: str, tags: dict[str, str], group: str = "") -> list:
    """The trackers of the tracker runs of run_dir, not started: Accelerate's, those this
    project continues by id among them."""
    made = []
    for name in names:
        if name == "tensorboard":
            made.append(TensorBoardTracker("tensorboard", str(run_dir)))
        elif name == "wandb":
            made.append(WandBRun(run_dir, project, tags, group))
        elif name == "mlflow":
            made.append(MLflowRun(run_dir, project, tags))
        else:
            kind = LOGGER_TYPE_TO_CLASS[name]
            made.append(kind(project, str(run_dir)) if kind.requires_logging_directory else kind(project))
    return made


def run_tags(cfg) -> dict[str, str]:
    """A training run's tags: its band, its seed and, for a member of a sweep, the sweep."""
    tags = {"band": cfg.data.band, "seed": str(cfg.train.seed)}
    return tags | ({"sweep": cfg.train.tracker_group} if cfg.train.tracker_group else {})


def config_values(flat: dict) -> dict:
    """Settings as trackers take them: numbers, text and booleans; lists and mappings as JSON."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flat.items()}


def kept(run_dir: Path) -> dict:
    try:
        found = json.loads((run_dir / KEPT).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def _keep(run_dir: Path, **ids) -> None:
    write_json(run_dir / KEPT, kept(run_dir) | ids)


class WandBRun(WandBTracker):
    """A W&B run with the run directory's name, continued by the id the directory keeps."""

    def __init__(self, run_dir: Path, project: str, tags: dict, group: str):
        self.run_dir = run_dir
        run_id = kept(run_dir).get("wandb") or secrets.token_hex(8)
        super().__init__(
            project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            tags=[f"{k}:{v}" for k, v in tags.items()],
            group=group or None,
        )

    @on_main_process
    def start(self):
        import wandb

        _keep(self.run_dir, wandb=self.init_kwargs["id"])  # before: a run killed in its first step is continued
        try:
            super().start()
        except wandb.errors.UsageError as e:  # no API key, an unknown entity: the user's to mend
            raise UserError(f"wandb: {e} (on nodes without internet: WANDB_MODE=offline)") from None


class MLflowRun(MLflowTracker):
    """An MLflow run with the run directory's name, continued by the id the directory keeps
    for the same store."""

    def __init__(self, run_dir: Path, experiment: str, tags: dict):
        self.run_dir = run_dir
        self.uri = MLFLOW_SERVER or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        found = kept(run_dir)
        run_id = found.get("mlflow") if found.get("mlflow_uri") == self.uri else None
        # its artifacts beside its store, not in the working directory
        artifacts = None if MLFLOW_SERVER else str((run_dir / "mlflow-artifacts").resolve())
        super().__init__(experiment, artifacts, run_id=run_id, tags=tags, run_name=run_dir.name)

    @on_main_process
    def start(self):
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its store's table creation on every start
        mlflow.set_tracking_uri(self.uri)
        super().start()
        _keep(self.run_dir, mlflow=self.active_run.info.run_id, mlflow_uri=self.uri)

    @on_main_process
    def store_init_configuration(self, values: dict):
        """The settings as parameters; a continued run keeps the values it started with (MLflow
        refuses to change a parameter), so only settings it lacks are added."""
        import mlflow

        logged = mlflow.get_run(self.active_run.info.run_id).data.params
        super().store_init_configuration({k: v for k, v in values.items() if k not in logged})
