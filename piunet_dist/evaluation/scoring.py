"""Every score of an evaluated scene, and the files that hold them: scenes.csv (a row per
scene: each member's and each ensemble method's scores) and summary.json (per band, the
means over scenes, the calibration of the ensemble and what each member is).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.files import replacing
from ..network.metrics import ShiftSearch, challenge_score, cssim, psnr_db, shift_search, uncertainty_stats
from ..network.shifts import aligned, crop
from .calibration import Residuals

SCALE_BINS = np.geomspace(1.0, 1e4, 25)  # DN: edges of the calibration curve's bins
LEVELS = np.round(np.arange(0.1, 1.0, 0.1), 2)  # nominal coverages of the Laplace's central intervals


@dataclass
class Scores:
    """One prediction of one scene, scored at its best shift."""

    cpsnr: float
    cssim: float  # nan where not asked for: 49 SSIM maps cost more than everything else together
    score: float  # the challenge's: the baseline's cPSNR (norm.csv) over ours; nan without norm.csv
    shift: int
    nll: float
    coverage50: float
    coverage90: float
    scale_error_corr: float


def score(
    sr: torch.Tensor,
    scale: torch.Tensor,
    hr: torch.Tensor,
    sm: torch.Tensor,
    norm: float,
    search: ShiftSearch | None = None,
    with_cssim: bool = True,
) -> Scores:
    """Tensors (1,1,H,W) in DN; `search` is shift_search(sr, hr, sm) where the caller has it."""
    search = search or shift_search(sr, hr, sm)
    stats = uncertainty_stats(sr, scale, hr, sm, search)
    return Scores(
        cpsnr=float(psnr_db(search.cmse)[0]),
        cssim=float(cssim(sr, hr, sm)[0]) if with_cssim else math.nan,
        score=math.nan if math.isnan(norm) else float(challenge_score(sr, hr, sm, torch.tensor([norm]))[0]),
        shift=int(search.best[0]),
        nll=float(stats["nll"][0]),
        coverage50=float(stats["coverage50"][0]),
        coverage90=float(stats["coverage90"][0]),
        scale_error_corr=float(stats["scale_error_corr"][0]),
    )


@dataclass
class Calibration:
    """Sums over clear pixels at the best shift, which add up over scenes: per bin of predicted
    scale the |error|, the scale and the pixels; per nominal level the pixels inside the
    Laplace's central interval of that coverage (|error| <= -b ln(1 - level))."""

    error: np.ndarray = field(default_factory=lambda: np.zeros(len(SCALE_BINS) - 1))
    scale: np.ndarray = field(default_factory=lambda: np.zeros(len(SCALE_BINS) - 1))
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(len(SCALE_BINS) - 1))
    inside: np.ndarray = field(default_factory=lambda: np.zeros(len(LEVELS)))
    residuals: Residuals = field(default_factory=Residuals)  # what a calibration is fitted to

    @classmethod
    def of(cls, sr, scale, hr, sm, search: ShiftSearch) -> Calibration:
        y, m = (aligned(t[0, 0], search.best[0], sr.shape[-2:]) for t in (hr, sm))
        p = crop(sr)[0, 0].double() + search.bias[0]
        b = crop(scale)[0, 0].double()[m].numpy()
        err = (y.double() - p)[m].abs().numpy()
        which = np.clip(np.digitize(b, SCALE_BINS) - 1, 0, len(SCALE_BINS) - 2)
        n = len(SCALE_BINS) - 1
        inside = [(err <= -b * math.log(1 - level)).sum() for level in LEVELS]
        return cls(
            np.bincount(which, err, n),
            np.bincount(which, b, n),
            np.bincount(which, None, n),
            np.array(inside, dtype=float),
            Residuals.of(err, b),
        )

    def __add__(self, other: Calibration) -> Calibration:
        return Calibration(
            self.error + other.error,
            self.scale + other.scale,
            self.pixels + other.pixels,
            self.inside + other.inside,
            self.residuals + other.residuals,
        )

    def summary(self) -> dict:
        """Bins with pixels (mean predicted scale, mean observed |error|: a Laplace's equal) and
        the observed coverage of each nominal level."""
        bins = [
            {
                "scale_dn": float(self.scale[i] / self.pixels[i]),
                "abs_error_dn": float(self.error[i] / self.pixels[i]),
                "pixels": int(self.pixels[i]),
            }
            for i in range(len(self.pixels))
            if self.pixels[i]
        ]
        total = self.pixels.sum()
        coverage = [{"nominal": float(level), "observed": float(n / total)} for level, n in zip(LEVELS, self.inside)]
        return {"curve": bins, "coverage": coverage if total else []}


@dataclass
class SceneResult:
    """A scene of a band: its baselines' cPSNR, the scores of each member and ensemble method
    (by name; none on the test split, which has no target), and the mean uncertainty of the
    ensemble over its clear target pixels (all pixels without a target)."""

    scene: str
    band: str
    aleatoric_dn: float
    epistemic_dn: float
    total_dn: float
    epistemic_share: float  # of the total variance
    baseline_cpsnr: float | None = None
    bicubic_mean_cpsnr: float | None = None
    scores: dict[str, Scores] = field(default_factory=dict)
    calibration: dict[str, Calibration] = field(default_factory=dict)  # of each member and the chosen ensemble
    views: dict[str, int] = field(default_factory=dict)  # the self-ensemble's views of each member

    def csv_row(self) -> dict:
        row = {
            k: getattr(self, k)
            for k in (
                "scene",
                "band",
                "aleatoric_dn",
                "epistemic_dn",
                "total_dn",
                "epistemic_share",
                "baseline_cpsnr",
                "bicubic_mean_cpsnr",
            )
        }
        row |= {f"{member}:views": n for member, n in self.views.items()}
        for method, scores in self.scores.items():
            row |= {f"{method}:{k}": v for k, v in dataclasses.asdict(scores).items()}
        return row


def write_csv(path: Path, results: list[SceneResult]) -> None:
    rows = [r.csv_row() for r in sorted(results, key=lambda r: (r.band, r.scene))]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with replacing(path) as partial, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def summarise_band(
    results: list[SceneResult], members: list[str], methods: list[str], ensemble: str, left_out: list[str]
) -> dict:
    """summary.json's entry of a band: counts, scene means of every figure, each ensemble
    method's gain over the best member, and the chosen ensemble's calibration."""
    scored = [r for r in results if r.scores]
    entry = {"scenes": len(results), "scored_scenes": len(scored), "left_out": sorted(left_out)}
    entry |= {k: _mean(getattr(r, k) for r in results) for k in ("aleatoric_dn", "epistemic_dn", "total_dn")}
    entry["epistemic_share"] = _mean(r.epistemic_share for r in results)
    if not scored:
        return entry

    def mean_of(method: str, key: str) -> float | None:
        return _mean(getattr(r.scores[method], key) for r in scored)

    member_cpsnr = {m: mean_of(m, "cpsnr") for m in members}
    best = max(member_cpsnr.values())
    ensembles = {
        m: {
            "cpsnr": mean_of(m, "cpsnr"),
            "cssim": mean_of(m, "cssim"),
            "gain_over_best_member_db": mean_of(m, "cpsnr") - best,
        }
        for m in methods
    }
    entry |= {
        "baseline_cpsnr": _mean(r.baseline_cpsnr for r in scored),
        "bicubic_mean_cpsnr": _mean(r.bicubic_mean_cpsnr for r in scored),
        "members": member_cpsnr,
        "members_cssim": {m: mean_of(m, "cssim") for m in members},
        "members_score": {m: mean_of(m, "score") for m in members},
        "members_calibration": {
            m: {k: mean_of(m, k) for k in ("nll", "coverage50", "coverage90", "scale_error_corr")} for m in members
        },
        "best_member": max(member_cpsnr, key=member_cpsnr.get),
        "ensemble_method": ensemble,
        "ensemble_cpsnr": ensembles[ensemble]["cpsnr"],
        "ensemble_cssim": ensembles[ensemble]["cssim"],
        "ensembles": ensembles,
        "score": mean_of(ensemble, "score"),
        "calibration": {k: mean_of(ensemble, k) for k in ("nll", "coverage50", "coverage90", "scale_error_corr")},
    }
    calibration = sum((r.calibration[ensemble] for r in scored), Calibration()).summary()
    entry["calibration_curve"], entry["coverage"] = calibration["curve"], calibration["coverage"]
    return entry


def grid(points: dict[str, dict], cpsnr: dict[str, float | None], val_cpsnr: dict[str, float | None]) -> dict:
    """A sweep's grid points (members whose settings differ only in their seed share one):
    each one's members, their mean cPSNR here and its spread over the seeds, their mean
    validation cPSNR from training; and the best one on validation (this split's cPSNR where
    it has targets, else training's)."""
    groups: dict[str, dict] = {}
    for member, point in points.items():
        key = json.dumps(point, sort_keys=True)
        groups.setdefault(key, {"settings": point, "members": []})["members"].append(member)
    rows = []
    for entry in groups.values():
        here = [cpsnr[m] for m in entry["members"] if cpsnr.get(m) is not None]
        trained = [val_cpsnr[m] for m in entry["members"] if val_cpsnr.get(m) is not None]
        rows.append(
            entry
            | {
                "cpsnr_mean": _mean(here),
                "cpsnr_spread": float(np.std(here)) if here else None,
                "val_cpsnr_mean": _mean(trained),
            }
        )
    by = "cpsnr_mean" if any(r["cpsnr_mean"] is not None for r in rows) else "val_cpsnr_mean"
    scored = [r for r in rows if r[by] is not None]
    best = max(scored, key=lambda r: r[by])["settings"] if scored else None
    return {"points": rows, "best": best, "best_by": by}
