"""Core benchmark: loss, cPSNR and one training step against the straightforward versions.

python bench/core.py [--repeats N]
"""

from __future__ import annotations

import argparse

import torch
from common import command, plain_step, report, seconds  # noqa: E402  (sets up the path to the references)

from piunet_dist.network.losses import registered_laplace
from piunet_dist.network.metrics import cpsnr
from piunet_dist.network.model import PIUNet
from references import oracles
from references.reference_piunet import RefPIUNet


def loss_case(device):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(24, 1, 96, 96, generator=g).to(device)
    mu = (y.roll(1, 2) + 0.1 * torch.randn(y.shape, generator=g).to(device)).requires_grad_()
    s = torch.zeros_like(y, requires_grad=True)
    mask = (torch.rand(y.shape, generator=g) > 0.2).to(device)

    def run(fn, **kw):
        return lambda: fn(y, mu, s, mask, **kw).backward()

    return {
        "eager": run(registered_laplace),
        "compiled search": run(registered_laplace, compiled=True),
        "reference": run(oracles.registered_laplace),
    }


def cpsnr_case(device):
    g = torch.Generator().manual_seed(1)
    hr = (6000 + 3000 * torch.rand(8, 1, 384, 384, generator=g)).round().to(device)
    sr = hr.roll(2, 3) + 20 * torch.randn(hr.shape, generator=g).to(device)
    mask = (torch.rand(hr.shape, generator=g) > 0.2).to(device)
    return {"eager": lambda: cpsnr(sr, hr, mask), "reference": lambda: oracles.cpsnr(sr, hr, mask)}


def step_case(device):
    def make(model_cls, loss, compile_model=False, **kw):
        model = model_cls()
        if compile_model:
            model.compile_blocks()
        return plain_step(model, lambda *tensors: loss(*tensors, **kw), 2, 9, 32, device)

    return {
        "eager": make(PIUNet, registered_laplace),
        "compiled search": make(PIUNet, registered_laplace, compiled=True),
        "compiled model and search": make(PIUNet, registered_laplace, compile_model=True, compiled=True),
        "reference": make(RefPIUNet, oracles.registered_laplace),
    }


CASES = {
    "loss fwd+bwd (batch 24, 96x96)": loss_case,
    "cPSNR (8 scenes, 384x384)": cpsnr_case,
    "train step (paper config, batch 2, 9x32x32)": step_case,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, case in CASES.items():
        variants = case(device)
        t_ref = seconds(variants.pop("reference"), args.repeats)
        for variant, fn in variants.items():
            t = seconds(fn, args.repeats)
            rows.append(
                {
                    "case": name,
                    "variant": variant,
                    "this_ms": 1000 * t,
                    "reference_ms": 1000 * t_ref,
                    "speedup": t_ref / t,
                }
            )
    report("core", rows, ["case", "variant", "this_ms", "reference_ms", "speedup"])


if __name__ == "__main__":
    command(main)
