"""The layout of an evaluation's directory (eval.out), named in one place:

OUT/<band>/<member>/        a member's predictions (outputs.py), what made them, its calibration
OUT/<band>/ensemble/        the predictions of eval.ensemble's method, its calibration
OUT/<band>/figures/         what the experiment trackers were sent (OUT/<band>/ their runs)
OUT/scenes.csv              a row per scene: every member's and every ensemble method's scores
OUT/summary.json            per band the scene means, views, calibration, grid; what was chosen
OUT/submission/, OUT/submission.zip   for the test split: the challenge submission
OUT/slurm/                  the launcher's scripts and its jobs' logs
"""

from __future__ import annotations

from pathlib import Path

from .run_dir import Folder

ENSEMBLE = "ensemble"


class EvalDir(Folder):
    def band(self, band: str) -> Path:
        return self.path / band

    def member(self, band: str, name: str) -> Path:
        return self.band(band) / name

    def ensemble(self, band: str) -> Path:
        return self.band(band) / ENSEMBLE

    def figures(self, band: str) -> Path:
        return self.band(band) / "figures"

    @property
    def scenes(self) -> Path:
        return self.path / "scenes.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def submission(self) -> Path:
        return self.path / "submission"

    @property
    def submission_zip(self) -> Path:
        return self.path / "submission.zip"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"
