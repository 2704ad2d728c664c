"""How the members' predictions of a scene combine into one, and how uncertain that one is.

Every method takes the members' SR and Laplace scale, (M,1,H,W) in DN, and their validation
cPSNRs, and gives an SR (1,H,W). The ensemble's scale is that of a Laplace with the total
variance: the members' mean variance 2b^2 (aleatoric) plus the variance between their
predictions (epistemic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def spread(srs: torch.Tensor) -> torch.Tensor:
    """The members' variance per pixel (population), (1,H,W). Written out: torch's var over
    the first dimension took 40 times as long on a CPU (17 ms a scene against 0.4)."""
    return (srs - srs.mean(dim=0)).square().mean(dim=0)


def mean(srs: torch.Tensor, scales: torch.Tensor, val_cpsnr: torch.Tensor) -> torch.Tensor:
    return srs.mean(dim=0)


def median(srs: torch.Tensor, scales: torch.Tensor, val_cpsnr: torch.Tensor) -> torch.Tensor:
    """Per pixel; with an even count, the mean of the middle two (torch.median takes the lower)."""
    ordered = srs.sort(dim=0).values
    return (ordered[(len(srs) - 1) // 2] + ordered[len(srs) // 2]) / 2


def val_weighted(srs: torch.Tensor, scales: torch.Tensor, val_cpsnr: torch.Tensor) -> torch.Tensor:
    """Weights 1/MSE of each member on the validation split (10^(cPSNR/10), up to a constant);
    equal where a member never validated (its cPSNR nan)."""
    if val_cpsnr.isnan().any():
        return mean(srs, scales, val_cpsnr)
    weights = torch.pow(10.0, (val_cpsnr.double() - val_cpsnr.max()) / 10).to(srs.dtype)
    return (weights[:, None, None, None] * srs).sum(dim=0) / weights.sum()


def inverse_variance(srs: torch.Tensor, scales: torch.Tensor, val_cpsnr: torch.Tensor) -> torch.Tensor:
    """Per pixel, weights 1/b^2: each member trusted where it says it is sure."""
    weights = 1 / scales**2
    return (weights * srs).sum(dim=0) / weights.sum(dim=0)


def inverse_total_variance(srs: torch.Tensor, scales: torch.Tensor, val_cpsnr: torch.Tensor) -> torch.Tensor:
    """Per pixel, weights 1/(2b^2 + the members' variance): where the members disagree, their
    own scales, often too sure, count for less and the weights tend to the mean's."""
    weights = 1 / (2 * scales**2 + spread(srs))
    return (weights * srs).sum(dim=0) / weights.sum(dim=0)


METHODS = {f.__name__: f for f in (mean, median, val_weighted, inverse_variance, inverse_total_variance)}


@dataclass
class Uncertainty:
    """Per pixel, (1,H,W) in DN: the members' mean scale, the std of their predictions, and
    the scale of a Laplace with the total variance."""

    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    total: torch.Tensor

    def means(self, region: torch.Tensor) -> tuple[float, float, float, float]:
        """Over the (H,W) pixels of `region`: the mean of each scale, and the share of the total
        variance (2 total^2) that is epistemic (nan where there is no variance)."""
        total_var = (2 * self.total[0] ** 2)[region].mean()
        share = float((self.epistemic[0] ** 2)[region].mean() / total_var) if total_var > 0 else math.nan
        return (*(float(u[0][region].mean()) for u in (self.aleatoric, self.epistemic, self.total)), share)


def uncertainty(srs: torch.Tensor, scales: torch.Tensor) -> Uncertainty:
    epistemic_var = spread(srs)
    total = (((2 * scales**2).mean(dim=0) + epistemic_var) / 2).sqrt()
    return Uncertainty(scales.mean(dim=0), epistemic_var.sqrt(), total)


def combine(srs: torch.Tensor, scales: torch.Tensor, val_cpsnr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every method's SR of one scene."""
    return {name: method(srs, scales, val_cpsnr) for name, method in METHODS.items()}
