"""Challenge metrics on digital numbers (docs/method.md section 4), per sample, and
torchmetrics Metrics that average them over scenes across processes.

The shift search of cPSNR needs no pass per shift: with d = y - p on the clear pixels
of a window, the bias is sum(M d)/n and n*cMSE = sum(M d^2) - (sum(M d))^2/n. Every sum
is a fixed image correlated with a fixed kernel: n, sum(M y), sum(M y^2) are window
sums, sum(M p), sum(M y p), sum(M p^2) are FFT correlations, all 49 shifts at once. Float64 and
centring keep the cancellation in that difference harmless.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from .shifts import SIDE, crop, select_shift, shift_windows

PEAK = 65535.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


@dataclass
class ShiftSearch:
    """Per sample (B,): the best of the 49 shifts (index u*7+v), its clear MSE and bias."""

    best: torch.Tensor
    cmse: torch.Tensor
    bias: torch.Tensor


def _window_sums(a: torch.Tensor) -> torch.Tensor:
    """Sum of a (B,H,W) over the (H-6)x(W-6) window at each of the 7x7 offsets -> (B,49).

    A window leaves out only 6 rows and 6 columns, so only the edges are summed again.
    """
    n, e = SIDE, SIDE - 1
    b, hgt, wid = a.shape
    zeros = a.new_zeros(b, hgt, 1)
    # per row, the sum over columns v .. v+w-1: the row total less what lies left and right
    left = torch.cat([zeros, a[:, :, :e].cumsum(2)], dim=2)  # sum of cols < v
    right = torch.cat([a[:, :, wid - e :].flip(2).cumsum(2).flip(2), zeros], dim=2)  # cols >= v+w
    rows = a.sum(dim=2, keepdim=True) - left - right  # (B, H, 7)
    zeros = rows.new_zeros(b, 1, n)
    top = torch.cat([zeros, rows[:, :e].cumsum(1)], dim=1)
    bottom = torch.cat([rows[:, hgt - e :].flip(1).cumsum(1).flip(1), zeros], dim=1)
    return (rows.sum(dim=1, keepdim=True) - top - bottom).flatten(1)  # (B, 7*7)


def _inverse_at_shifts(spectrum: torch.Tensor, size) -> torch.Tensor:
    """irfft2(spectrum) at the 7x7 shifts only, (B,49): two small matrix products instead of a
    full inverse transform. Columns 1..W/2-1 of a real signal's half spectrum stand for two."""
    hgt, wid = size
    k = torch.arange(hgt, device=spectrum.device, dtype=torch.float64)
    m = torch.arange(spectrum.shape[-1], device=spectrum.device, dtype=torch.float64)
    u = torch.arange(SIDE, device=spectrum.device, dtype=torch.float64)
    rows = torch.exp(2j * torch.pi * u[:, None] * k[None, :] / hgt)  # (7, H)
    weight = torch.full_like(m, 2.0)
    weight[0] = 1.0
    if wid % 2 == 0:
        weight[-1] = 1.0
    cols = weight[:, None] * torch.exp(2j * torch.pi * m[:, None] * u[None, :] / wid)  # (W/2+1, 7)
    return (rows @ spectrum @ cols).real.flatten(1) / (hgt * wid)


def shift_search(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> ShiftSearch:
    """Best shift by clear MSE; `sr`, `hr`, `mask` (B,1,H,W), SR and HR in DN."""
    m = mask[:, 0].to(torch.float64)
    y = hr[:, 0].to(torch.float64)
    p = crop(sr.to(torch.float64))[:, 0]
    # a constant added to y or to p only moves the bias: centre both to keep sums small
    y_mean = (m * y).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1)
    p_mean = p.mean(dim=(1, 2))
    y = (y - y_mean[:, None, None]) * m
    p = p - p_mean[:, None, None]
    n, s_y, s_yy = _window_sums(m), _window_sums(y), _window_sums(y * y)
    size = y.shape[-2:]
    f_m, f_y = torch.fft.rfft2(m), torch.fft.rfft2(y)
    f_p, f_pp = torch.fft.rfft2(p, s=size).conj(), torch.fft.rfft2(p * p, s=size).conj()
    # sum(M p) and sum(M p^2) - 2 sum(M y p), each transformed back at the 7x7 shifts only
    s_p = _inverse_at_shifts(f_m * f_p, size)
    s_pp_yp = _inverse_at_shifts(f_m * f_pp - 2 * f_y * f_p, size)
    n = n.round()
    safe_n = n.clamp(min=1)
    s_d = s_y - s_p
    cmse = ((s_yy + s_pp_yp - s_d * s_d / safe_n) / safe_n).clamp(min=0)
    cmse = cmse.masked_fill(n == 0, float("inf"))
    best = cmse.argmin(dim=1, keepdim=True)
    bias = (s_d / safe_n).gather(1, best).squeeze(1) + y_mean - p_mean
    return ShiftSearch(best=best.squeeze(1), cmse=cmse.gather(1, best).squeeze(1), bias=bias)


def cpsnr(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Best-shift clear PSNR in dB, (B,), on digital numbers with peak 65535."""
    return psnr_db(shift_search(sr, hr, mask).cmse)


def psnr_db(cmse: torch.Tensor) -> torch.Tensor:
    """Clear PSNR in dB of a clear MSE in DN^2."""
    return 10 * torch.log10(PEAK**2 / cmse)


def challenge_score(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Official score N(scene) / cPSNR, (B,): SR clipped to the valid range; lower is better."""
    return norm.to(torch.float64) / cpsnr(sr.clamp(0, PEAK), hr, mask)


def _gaussian_window(device) -> torch.Tensor:
    r = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the valid Gaussian-filtered map of (N,1,h,w) images, (N,)."""
    g = _gaussian_window(a.device)
    maps = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    c = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    mu_a, mu_b, e_aa, e_bb, e_ab = maps.unbind(1)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean(dim=(1, 2))


def cssim(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Best-shift clear SSIM, (B,): SSIM of the bias-corrected masked windows, max over shifts."""
    p = crop(sr.float())
    y_w, m_w = shift_windows(hr.float()), shift_windows(mask.float())
    best = torch.full((sr.shape[0],), -math.inf, device=sr.device)
    for u, v in itertools.product(range(SIDE), repeat=2):
        y_k, m_k = y_w[:, None, u, v], m_w[:, None, u, v]
        n = m_k.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
        bias = (m_k * (y_k - p)).sum(dim=(1, 2, 3), keepdim=True) / n
        best = torch.maximum(best, _ssim((p + bias) * m_k, y_k * m_k))
    return best.double()


def uncertainty_stats(
    sr: torch.Tensor, scale: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, search: ShiftSearch | None = None
) -> dict[str, torch.Tensor]:
    """Quality of the predicted Laplace scale (DN) at the best shift, each (B,).

    nll: mean Laplace negative log-likelihood in DN; coverage50/coverage90: share of
    clear pixels inside the predicted central 50%/90% interval (b*ln2, b*ln10);
    scale_error_corr: Pearson correlation of |error| and the predicted scale.
    `search`: shift_search(sr, hr, mask) when the caller has it already.
    """
    search = search or shift_search(sr, hr, mask)
    y = select_shift(shift_windows(hr.to(torch.float64)), search.best)
    m = select_shift(shift_windows(mask.to(torch.float64)), search.best)
    p = crop(sr.to(torch.float64))[:, 0] + search.bias[:, None, None]
    b = crop(scale.to(torch.float64))[:, 0]
    err = (y - p).abs()
    n = m.sum(dim=(1, 2)).clamp(min=1)

    def clear_mean(v):
        return (m * v).sum(dim=(1, 2)) / n

    e_mean, b_mean = clear_mean(err), clear_mean(b)
    cov = clear_mean((err - e_mean[:, None, None]) * (b - b_mean[:, None, None]))
    std_e = clear_mean((err - e_mean[:, None, None]) ** 2).sqrt()
    std_b = clear_mean((b - b_mean[:, None, None]) ** 2).sqrt()
    return {
        "nll": clear_mean(torch.log(2 * b) + err / b),
        "coverage50": clear_mean((err <= b * math.log(2)).double()),
        "coverage90": clear_mean((err <= b * math.log(10)).double()),
        "scale_error_corr": cov / (std_e * std_b).clamp(min=1e-12),
    }


class _SceneMean(Metric):
    """Mean over scenes of a per-scene value, summed across processes on compute()."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, values: torch.Tensor) -> None:
        self.total += values.to(torch.float64).sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class CPSNR(_SceneMean):
    higher_is_better = True

    def update(self, sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> None:
        self._add(cpsnr(sr, hr, mask))


class CSSIM(_SceneMean):
    higher_is_better = True

    def update(self, sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> None:
        self._add(cssim(sr, hr, mask))


class ChallengeScore(_SceneMean):
    higher_is_better = False

    def update(self, sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, norm: torch.Tensor) -> None:
        self._add(challenge_score(sr, hr, mask, norm))


class UncertaintyCalibration(Metric):
    """Scene means of uncertainty_stats, summed across processes; compute() gives a dict."""

    full_state_update = False
    names = ("nll", "coverage50", "coverage90", "scale_error_corr")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("totals", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, sr: torch.Tensor, scale: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> None:
        stats = uncertainty_stats(sr, scale, hr, mask)
        self.totals += torch.stack([stats[k].sum() for k in self.names])
        self.count += sr.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.totals / self.count))
