"""Straightforward losses and metrics, written from docs/method.md section 4 as loops over the
49 shifts: the oracles of the tests and the baselines of the benchmarks."""

import math

import torch
import torch.nn.functional as F

SHIFTS = [(u, v) for u in range(7) for v in range(7)]


def _windows(y, m, u, v, h, w):
    return y[:, :, u : u + h, v : v + w], m[:, :, u : u + h, v : v + w].to(y.dtype)


def loss_per_shift(y, mu, s, m, kind, legacy=False):
    """(B, 49) registered loss of every shift, each with its own autograd graph."""
    p = mu[:, :, 3:-3, 3:-3]
    h, w = p.shape[-2:]
    out = []
    for u, v in SHIFTS:
        yw, mw = _windows(y, m, u, v, h, w)
        n = mw.sum(dim=(1, 2, 3))
        b = (mw * (yw - p)).sum(dim=(1, 2, 3)) / n
        b4 = b[:, None, None, None]
        if kind == "l1":
            per_pixel = (yw - p - b4).abs()
        else:
            ls = s[:, :, 3:-3, 3:-3] + (b4 if legacy else 0)
            per_pixel = ls + (yw - p - b4).abs() * torch.exp(-ls)
        out.append((mw * per_pixel).sum(dim=(1, 2, 3)) / n)
    return torch.stack(out, dim=1)


def registered_l1(y, mu, m):
    return loss_per_shift(y, mu, None, m, "l1").min(dim=1).values.mean()


def registered_laplace(y, mu, s, m, legacy=False):
    return loss_per_shift(y, mu, s, m, "laplace", legacy).min(dim=1).values.mean()


def cmse_per_shift(sr, hr, m):
    """(B, 49) clear MSE and (B, 49) bias of every shift, float64."""
    p = sr.double()[:, :, 3:-3, 3:-3]
    y = hr.double()
    h, w = p.shape[-2:]
    mses, biases = [], []
    for u, v in SHIFTS:
        yw, mw = _windows(y, m, u, v, h, w)
        n = mw.sum(dim=(1, 2, 3))
        b = (mw * (yw - p)).sum(dim=(1, 2, 3)) / n
        mses.append((mw * (yw - p - b[:, None, None, None]) ** 2).sum(dim=(1, 2, 3)) / n)
        biases.append(b)
    return torch.stack(mses, 1), torch.stack(biases, 1)


def cpsnr(sr, hr, m):
    mse, _ = cmse_per_shift(sr, hr, m)
    return (10 * torch.log10(65535.0**2 / mse)).max(dim=1).values


def ssim(a, b, peak=65535.0):
    """Mean of the valid SSIM map, Gaussian window 11, sigma 1.5, one image pair at a time."""
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / 4.5)
    g = (g / g.sum()).view(1, 1, 11, 1) * (g / g.sum()).view(1, 1, 1, 11)

    def blur(x):
        return F.conv2d(x, g)

    a, b = a.double(), b.double()
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean().item()


def cssim(sr, hr, m):
    p = sr.double()[:, :, 3:-3, 3:-3]
    h, w = p.shape[-2:]
    out = []
    for i in range(sr.shape[0]):
        best = -math.inf
        for u, v in SHIFTS:
            yw, mw = _windows(hr.double()[i : i + 1], m[i : i + 1], u, v, h, w)
            b = (mw * (yw - p[i : i + 1])).sum() / mw.sum()
            best = max(best, ssim((p[i : i + 1] + b) * mw, yw * mw))
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)
