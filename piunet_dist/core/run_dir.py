"""The layout of a run directory, named in one place:

RUN_DIR/config.yaml                the resolved settings of the run
RUN_DIR/metrics.jsonl              one JSON object per event (start, train, val, requeue)
RUN_DIR/jobs.jsonl                 every job the launcher submitted for it
RUN_DIR/checkpoints/step_NNNNNNN/  complete checkpoints (see checkpoint.py)
RUN_DIR/best/                      the weights with the best validation cPSNR
RUN_DIR/slurm/                     submitit's scripts and the jobs' logs
"""

from __future__ import annotations

import re
from pathlib import Path

STEP = re.compile(r"step_(\d{7})$")


class Folder:
    """A directory whose layout a subclass names; its path wherever a path is taken."""

    def __init__(self, path: str | Path | Folder):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


class RunDir(Folder):
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def jobs(self) -> Path:
        return self.path / "jobs.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    @classmethod
    def of_weights(cls, path: str | Path) -> RunDir | None:
        """The run whose best/ (or best.old/, left by a kill) or checkpoint holds these
        weights (the folder or a file in it); None for weights from elsewhere."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if folder.name in ("best", "best.old"):
            return cls(folder.parent)
        if STEP.match(folder.name) and folder.parent.name == "checkpoints":
            return cls(folder.parent.parent)
        return None
