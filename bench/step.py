"""Training-step benchmark: samples/s and peak memory of the trainer's own optimizer step
(training/step.py: forward, registered Laplace loss, backward, the agreed finiteness check,
clipping, Adam) for the paper and demo configurations,
against the straightforward reference (references/reference_piunet.py with the loss looped over
the 49 shifts), in fp32 and bf16, eager, compiled and with activation checkpointing.

    python bench/step.py [--configs paper demo] [--precisions fp32 bf16] [--modes ...] [--repeats N]

Every row runs in a process of its own, so that its peak memory is its own: on a GPU the
peak allocated by torch, on a CPU the growth of the resident set over the first steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import command, plain_step, report, seconds, trainer_step  # noqa: E402  (sets up the path to the references)

CONFIGS = {  # model settings, batch, frames, LR patch side
    "paper": ({"n_feat": 42, "r_bneck": 8, "n_tefa": 16, "n_heads": 1}, 24, 9, 32),
    "demo": ({"n_feat": 16, "r_bneck": 4, "n_tefa": 2, "n_heads": 1}, 8, 9, 16),
}
MODES = ("reference", "eager", "compiled", "checkpointed", "compiled+checkpointed")


def make_step(name: str, precision: str, mode: str, device: str):
    """The trainer's own step, or the straightforward reference's (the model of references/
    with the loss looped over the 49 shifts, plain Adam)."""
    model_cfg, batch, frames, side = CONFIGS[name]
    if mode != "reference":
        step, _ = trainer_step(
            model_cfg, batch, frames, side, precision, compiled="compiled" in mode, checkpointed="checkpointed" in mode
        )
        return step, batch
    from references import oracles
    from references.reference_piunet import RefPIUNet

    torch.manual_seed(0)
    return plain_step(RefPIUNet(**model_cfg), oracles.registered_laplace, batch, frames, side, device), batch


def resident_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_row(name: str, precision: str, mode: str, repeats: int) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step, batch = make_step(name, precision, mode, device)
    before = resident_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = seconds(step, repeats, warmup=2)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resident_mib() - before
    return {
        "config": name,
        "precision": precision,
        "mode": mode,
        "batch": batch,
        "step_s": t,
        "samples_per_s": batch / t,
        "peak_mib": peak,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    on_gpu = torch.cuda.is_available()
    # bf16 has no fast path on most CPUs: there it is asked for by name
    parser.add_argument(
        "--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"] if on_gpu else ["fp32"]
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per figure (median)")
    parser.add_argument("--row", nargs=3, metavar=("CONFIG", "PRECISION", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(one_row(*args.row, args.repeats)))
        return
    rows = []
    for name in args.configs:
        for precision in args.precisions:
            for mode in args.modes:
                if mode == "reference" and precision != "fp32":
                    continue
                out = subprocess.run(
                    [sys.executable, __file__, "--row", name, precision, mode, "--repeats", str(args.repeats)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        ref = next((r for r in rows if r["config"] == row["config"] and r["mode"] == "reference"), None)
        if ref is not None:
            row["speedup"] = ref["step_s"] / row["step_s"]
            row["memory_ratio"] = row["peak_mib"] / ref["peak_mib"]
    report(
        "step",
        rows,
        ["config", "precision", "mode", "batch", "step_s", "samples_per_s", "speedup", "peak_mib", "memory_ratio"],
    )


if __name__ == "__main__":
    command(main)
