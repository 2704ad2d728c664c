"""How far to trust a predicted scale: a calibration fitted on validation scenes, checked on
others, and applied to every interval written after (docs/evaluation.md, "Calibration").

A prediction's Laplace scale b says that a pixel's |error| lies within -b ln(1 - p) with
probability p. Over the clear pixels of scenes with a target, u = |error| / b (at the best
shift, with its brightness bias) says how true that is; its histogram adds up over scenes
and processes (Residuals). Two fits are made from it:

- scale: one factor k = mean(u), the one that minimises the Laplace NLL of k b (the sigma
  scaling of Laves et al. 2020); the interval of coverage p is -k b ln(1 - p).
- quantile: the observed quantiles of u (Kuleshov et al. 2018), a table of 99 levels; the
  interval of coverage p is b q(p). Its scale map is k b, as the scale fit's.

A fit is made on validation scenes, never on those it is checked on: the scenes are split by
a hash of their names (split_scenes), and the coverage and NLL before and after are those
of the part kept back.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.files import write_json

U_EDGES = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, 1401), [np.inf]])  # bins of u, 200 a decade
FIT_LEVELS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # the quantile table's levels
REPORT_LEVELS = np.round(np.arange(0.1, 1.0, 0.1), 2)  # the levels a report shows
HOLDOUT_SEED = "piunet-dist calibration"
FILE = "calibration.json"
METHODS = ("none", "scale", "quantile")


@dataclass
class Residuals:
    """Sums over clear pixels that add over scenes: the histogram of u = |error|/b (U_EDGES),
    the sum of u and of ln(2b) (the NLL of k b follows from them for any k)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(U_EDGES) - 1))
    sum_u: float = 0.0
    sum_log_2b: float = 0.0

    @classmethod
    def of(cls, error: np.ndarray, scale: np.ndarray) -> Residuals:
        """From the |error| and the predicted scale of each clear pixel, in DN."""
        u = error / scale
        which = np.searchsorted(U_EDGES, u, side="right") - 1
        counts = np.bincount(which, minlength=len(U_EDGES) - 1).astype(float)
        return cls(counts, float(u.sum()), float(np.log(2 * scale).sum()))

    def __add__(self, other: Residuals) -> Residuals:
        return Residuals(self.counts + other.counts, self.sum_u + other.sum_u, self.sum_log_2b + other.sum_log_2b)

    @property
    def pixels(self) -> float:
        return float(self.counts.sum())

    def share_within(self, widths: np.ndarray) -> np.ndarray:
        """The share of pixels with u <= each width (linear within a bin)."""
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)]) / max(self.pixels, 1.0)
        return np.interp(widths, U_EDGES[:-1], cdf[:-1])

    def quantiles(self, levels: np.ndarray) -> np.ndarray:
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)]) / max(self.pixels, 1.0)
        finite = U_EDGES[:-1]
        keep = np.concatenate([[True], np.diff(cdf[:-1]) > 0])  # np.interp needs the cdf increasing
        return np.interp(levels, cdf[:-1][keep], finite[keep])

    def nll(self, factor: float = 1.0) -> float:
        """Mean Laplace NLL per clear pixel (in DN) of the scale factor * b."""
        n = max(self.pixels, 1.0)
        return (self.sum_log_2b + n * math.log(factor) + self.sum_u / factor) / n


@dataclass
class Fit:
    """A calibration of one member's or ensemble's scale, for those weights only."""

    method: str  # scale or quantile
    band: str
    weights: dict[str, str]  # member name -> weights sha256: the member, or the ensemble's members
    factor: float  # k: the scale map is k b
    levels: list[float]
    widths: list[float]  # per level, the central interval's half-width in units of b
    fitted_on: int  # validation scenes

    @classmethod
    def of(cls, residuals: Residuals, method: str, band: str, weights: dict[str, str], scenes: int) -> Fit:
        if method not in ("scale", "quantile") or not residuals.pixels:
            raise ValueError(f"no {method} fit without pixels")
        factor = residuals.sum_u / residuals.pixels
        widths = -factor * np.log1p(-FIT_LEVELS) if method == "scale" else residuals.quantiles(FIT_LEVELS)
        return cls(method, band, weights, factor, FIT_LEVELS.tolist(), widths.tolist(), scenes)

    def width(self, level: float) -> float:
        """The half-width, in units of b, of the central interval holding `level` of the pixels."""
        if self.method == "scale" or not 0.01 <= level <= 0.99:
            return -self.factor * math.log1p(-level)
        return float(np.interp(level, self.levels, self.widths))

    def check(self, band: str, weights: dict[str, str], where: Path) -> None:
        """Refuse a fit made for another band or other weights, in one line."""
        if band != self.band:
            raise UserError(f"{where}: a calibration of {self.band}, not of {band}")
        if sorted(weights.values()) != sorted(self.weights.values()):
            raise UserError(
                f"{where}: fitted for other weights ({', '.join(sorted(self.weights))}) than these "
                f"({', '.join(sorted(weights))}); evaluate these on the val split to fit theirs"
            )

    def write(self, folder: Path) -> None:
        write_json(folder / FILE, asdict(self))

    @classmethod
    def read(cls, path: Path) -> Fit:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{path}: no calibration there (an evaluation of the val split writes one)") from None
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{path}: not a calibration this project wrote ({type(e).__name__}: {e})") from None


def laplace_width(level: float) -> float:
    return -math.log1p(-level)


def split_scenes(scenes: list[str], share: float) -> tuple[list[str], list[str]]:
    """The validation scenes a fit is made on, and those kept back to check it: ranked by a
    hash of their names alone (the same in every process and evaluation), the first `share`
    of them kept back, at least one on either side where there are two."""
    ranked = sorted(scenes, key=lambda s: hashlib.sha256(f"{HOLDOUT_SEED}:{s}".encode()).digest())
    n = len(ranked)
    kept = min(max(round(share * n), 1 if share and n > 1 else 0), n - 1 if n > 1 else n)
    return sorted(ranked[kept:]), sorted(ranked[:kept])


def fit_and_check(
    by_scene: dict[str, Residuals], method: str, share: float, band: str, weights: dict[str, str]
) -> tuple[Fit, dict | None]:
    """The fit on the scenes split_scenes gives it, and its report on the others (None where
    none was kept back)."""
    fit_on, check = split_scenes(list(by_scene), share)
    fit = Fit.of(sum((by_scene[s] for s in fit_on), Residuals()), method, band, weights, len(fit_on))
    return fit, report(fit, sum((by_scene[s] for s in check), Residuals())) if check else None


def report(fit: Fit, checked: Residuals) -> dict:
    """Coverage at REPORT_LEVELS and NLL on scenes the fit did not see, before and after."""
    before = checked.share_within(np.array([laplace_width(p) for p in REPORT_LEVELS]))
    after = checked.share_within(np.array([fit.width(p) for p in REPORT_LEVELS]))
    return {
        "factor": fit.factor,
        "pixels": int(checked.pixels),
        "nominal": REPORT_LEVELS.tolist(),
        "before": {"coverage": before.tolist(), "nll": checked.nll()},
        "after": {"coverage": after.tolist(), "nll": checked.nll(fit.factor)},
    }


def bounds(sr: torch.Tensor, scale: torch.Tensor, fit: Fit | None, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The central interval of coverage `level` around the SR (DN), calibrated where a fit is given."""
    half = scale * (fit.width(level) if fit else laplace_width(level))
    return sr - half, sr + half
