"""Training-step benchmark: samples/s (and peak GPU memory) of one optimizer step for the
paper and demo configurations, fp32 and bf16, eager and torch.compile.

    python bench/step.py [--configs paper demo] [--precisions fp32 bf16] [--repeats N] [--no-compile]
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch

from common import report, seconds  # noqa: E402
from piunet_dist.losses import registered_laplace
from piunet_dist.model import PIUNet

CONFIGS = {  # model settings, batch, frames, LR patch side
    "paper": ({"n_feat": 42, "r_bneck": 8, "n_tefa": 16, "n_heads": 1}, 24, 9, 32),
    "demo": ({"n_feat": 16, "r_bneck": 4, "n_tefa": 2, "n_heads": 1}, 8, 9, 32),
}


def make_step(name: str, precision: str, compiled: bool, device: str):
    model_cfg, batch, frames, side = CONFIGS[name]
    torch.manual_seed(0)
    model = PIUNet(**model_cfg).to(device).train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, side, side, generator=g).to(device)
    y = torch.randn(batch, 1, 3 * side, 3 * side, generator=g).to(device)
    mask = (torch.rand(y.shape, generator=g) > 0.1).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step():
        with autocast:
            mu, s = forward(x)
        registered_laplace(y, mu.float(), s.float(), mask, compiled=compiled).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 15.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per figure (median)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in args.configs:
        for precision in args.precisions:
            for compiled in (False,) if args.no_compile else (False, True):
                step, batch = make_step(name, precision, compiled, device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t = seconds(step, args.repeats, warmup=2)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
                rows.append({"config": name, "precision": precision, "mode": "compiled" if compiled else "eager",
                             "batch": batch, "step_s": t, "samples_per_s": batch / t, "peak_gib": peak})
    report("step", rows, ["config", "precision", "mode", "batch", "step_s", "samples_per_s", "peak_gib"])


if __name__ == "__main__":
    main()
