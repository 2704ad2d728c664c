"""The floor under a training step: its FLOPs (counted by torch.utils.flop_counter) and the
bytes of the activations it saves for backward (each written once and read once), for the
paper configuration at batch 24, this project's network (bf16) against the published
architecture in fp32, counted through its straightforward copy in references/
(reference_piunet.py: Conv3d on (B,F,T,X,Y), torch.nn.MultiheadAttention; the loss over
the 49 shifts as the published code computes it). Counted on the CPU: the counts are the
card's too. With a card's peaks (--tflops, --fp32-tflops, --tbs) and measured steps
(--measured-ms this=MS published=MS, from bench/gpu.py in one run), the time each step
would take at the peak and the fraction of it reached.

    python bench/roofline.py [--batch 24] [--tflops 989 --tbs 4.8 --measured-ms this=136.6 published=212.6]
"""

from __future__ import annotations

import argparse

import torch
from common import command, report
from torch.utils.flop_counter import FlopCounterMode

from piunet_dist.network.losses import registered_laplace
from piunet_dist.network.model import PIUNet
from references import oracles
from references.reference_piunet import RefPIUNet

PAPER = {"n_feat": 42, "r_bneck": 8, "n_tefa": 16, "n_heads": 1}


def count(model: torch.nn.Module, loss_fn, batch: int, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOPs, bytes saved for backward) of one forward and backward at batch `batch` of 9 frames
    of 32x32, the saved tensors counted in `dtype` (the step's precision)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 9, 32, 32, generator=g)
    y = torch.randn(batch, 1, 96, 96, generator=g)
    mask = torch.rand(y.shape, generator=g) > 0.1
    seen, saved = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            saved[0] += t.numel() * (torch.finfo(dtype).bits // 8 if t.is_floating_point() else t.element_size())
        return t

    with FlopCounterMode(display=False) as flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mu, s = model(x)
        loss_fn(y, mu, s, mask).backward()
    return float(flops.get_total_flops()), float(saved[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--tflops", type=float, default=989.0, help="the card's dense bf16 peak, TFLOP/s (H200: 989)")
    parser.add_argument(
        "--fp32-tflops", type=float, default=67.0, help="its float32 peak without tensor cores, TFLOP/s (H200: 67)"
    )
    parser.add_argument("--tbs", type=float, default=4.8, help="its memory bandwidth, TB/s (H200: 4.8)")
    parser.add_argument(
        "--measured-ms",
        nargs="*",
        default=[],
        metavar="WHICH=MS",
        help="measured step times to set against the floor (this=..., published=...)",
    )
    args = parser.parse_args()
    measured = dict(item.split("=") for item in args.measured_ms)
    torch.manual_seed(0)
    cases = {
        "this (bf16)": (
            PIUNet(**PAPER),
            lambda y, mu, s, m: registered_laplace(y, mu, s, m),
            torch.bfloat16,
            args.tflops,
            measured.get("this"),
        ),
        "published architecture (fp32)": (
            RefPIUNet(**PAPER),
            oracles.registered_laplace,
            torch.float32,
            args.fp32_tflops,
            measured.get("published"),
        ),
    }
    rows = []
    for name, (model, loss_fn, dtype, peak, ms) in cases.items():
        flops, saved = count(model.train(), loss_fn, args.batch, dtype)
        compute_ms, memory_ms = flops / (peak * 1e12) * 1e3, 2 * saved / (args.tbs * 1e12) * 1e3
        row = {
            "case": name,
            "gflop": flops / 1e9,
            "saved_gb": saved / 1e9,
            "at_peak_flops_ms": compute_ms,
            "at_peak_bandwidth_ms": memory_ms,
            "floor_ms": max(compute_ms, memory_ms),
        }
        if ms:
            row |= {"measured_ms": float(ms), "fraction_of_floor": max(compute_ms, memory_ms) / float(ms)}
        rows.append(row)
        print(row, flush=True)
    report(
        "roofline",
        rows,
        [
            "case",
            "gflop",
            "saved_gb",
            "at_peak_flops_ms",
            "at_peak_bandwidth_ms",
            "floor_ms",
            "measured_ms",
            "fraction_of_floor",
        ],
    )


if __name__ == "__main__":
    command(main)
