"""Registered losses (docs/method.md section 4): the prediction is cropped by 3 pixels, and
the loss is the minimum over the 49 placements of that crop in the target, each with the
brightness bias that best matches the clear pixels.

The minimum's gradient is the gradient at its argmin, so the search over the 49 shifts
runs without autograd, batched over shifts (best_shift), and only the chosen shift of
each sample is computed again with a graph. `compiled=True` runs the search through
torch.compile, which fuses its passes over the 49 windows into one loop: the fast path
on CPUs, where the eager search is bound by memory traffic.
"""

from __future__ import annotations

import functools
import logging

import torch

from .shifts import crop, select_shift, shift_windows

log = logging.getLogger(__name__)


def _shift_losses(y_w, p, m_w, log_scale, legacy_sigma_bias):
    """Registered loss of windows y_w, m_w (B, ..., h, w) against p (B, h, w) -> (B, ...).

    L1 when log_scale is None, else the Laplace loss with that log-scale (B, h, w).
    Also returns the clear count of each window.
    """
    n = m_w.sum(dim=(-2, -1))
    safe_n = n.clamp(min=1)
    d = y_w - p
    bias = ((m_w * d).sum(dim=(-2, -1)) / safe_n)[..., None, None]
    err = (d - bias).abs()
    if log_scale is not None:
        s = log_scale + bias if legacy_sigma_bias else log_scale
        err = s + err * torch.exp(-s)
    return (m_w * err).sum(dim=(-2, -1)) / safe_n, n


def best_shift(
    y: torch.Tensor,
    p: torch.Tensor,
    m: torch.Tensor,
    log_scale: torch.Tensor | None = None,
    legacy_sigma_bias: bool = False,
) -> torch.Tensor:
    """Index u*7+v of the shift with the smallest loss, (B,); y, m (B,1,H,W), p, log_scale cropped."""
    expand = (slice(None), None, None)  # (B, h, w) -> (B, 1, 1, h, w) against the 7x7 windows
    s = None if log_scale is None else log_scale[:, 0][expand]
    values, n = _shift_losses(shift_windows(y), p[:, 0][expand], shift_windows(m), s, legacy_sigma_bias)
    # a window with no clear pixel never wins; a sample with none at all adds zero
    return values.masked_fill(n == 0, float("inf")).flatten(1).argmin(dim=1)


class _CompiledSearch:
    """best_shift through torch.compile; where that cannot compile (no C++ compiler, say) it
    says so once and runs eagerly from then on. Only this search falls back: a model that
    fails to compile still fails aloud."""

    def __init__(self):
        self.search = None

    def __call__(self, *args):
        if self.search is None:
            self.search = torch.compile(best_shift, dynamic=False)
        if self.search is best_shift:
            return best_shift(*args)
        try:
            return self.search(*args)
        except Exception as e:  # noqa: BLE001 - inductor fails in many ways; eager is the same function
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning(
                "train.compile_loss: the loss's shift search does not compile here (%s); it runs eagerly", first[:200]
            )
            self.search = best_shift
            return best_shift(*args)


@functools.cache
def _compiled_best_shift() -> _CompiledSearch:
    return _CompiledSearch()


def _registered(y, mu, mask, log_scale, legacy_sigma_bias, compiled) -> torch.Tensor:
    y, m = y.float(), mask.float()
    p = crop(mu.float())
    s = None if log_scale is None else crop(log_scale.float())
    search = _compiled_best_shift() if compiled else best_shift
    with torch.no_grad():
        best = search(y, p.detach(), m, None if s is None else s.detach(), legacy_sigma_bias)
    y_b, m_b = select_shift(shift_windows(y), best), select_shift(shift_windows(m), best)
    values, _ = _shift_losses(y_b, p[:, 0], m_b, None if s is None else s[:, 0], legacy_sigma_bias)
    return values.mean()


def registered_l1(y: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """Registered L1: (B,1,H,W) target, prediction and clear mask in, scalar out."""
    return _registered(y, mu, mask, None, False, compiled)


def registered_laplace(
    y: torch.Tensor,
    mu: torch.Tensor,
    s: torch.Tensor,
    mask: torch.Tensor,
    legacy_sigma_bias: bool = False,
    compiled: bool = False,
) -> torch.Tensor:
    """Registered Laplace negative log-likelihood (up to log 2), `s` the log-scale.

    `legacy_sigma_bias=True` also adds the brightness bias to `s`, as the published
    training code did.
    """
    return _registered(y, mu, mask, s, legacy_sigma_bias, compiled)
