"""What keeping freed blocks in the C heap (core/memory.py) is worth on a CPU: the demo's work
per process, each in a fresh process with glibc's defaults and with keep_freed_memory(), one
thread each as `make demo` gives its members.

    python bench/heap.py [--repeats N]

Rows: the trainer's step on the demo recipe's batch (8 patches of 9 frames, 16x16); a full scene
predicted with the 4 rotations by the demo model and by the paper's; cSSIM of one 384x384 scene
(the scoring's most costly part). Per row: the median wall time, the system time per call (the
kernel's share: page faults of memory mapped afresh), the peak resident set.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import command, report, seconds, trainer_step  # before piunet_dist: it puts the project on the path
from step import CONFIGS

from piunet_dist.core.memory import keep_freed_memory
from piunet_dist.evaluation.inference import super_resolve
from piunet_dist.network.metrics import cssim
from piunet_dist.network.model import PIUNet

WORKS = ("train step demo", "predict demo", "predict paper", "cssim")


def work(name: str):
    g = torch.Generator().manual_seed(0)
    if name == "train step demo":
        step, _ = trainer_step(*CONFIGS["demo"], "fp32")
        return step
    if name.startswith("predict"):
        model = PIUNet(**CONFIGS[name.split()[1]][0]).eval()
        lr = 7000 + 2000 * torch.rand(1, 9, 128, 128, generator=g)
        return lambda: super_resolve(model, lr, 4)
    hr = 7000 + 2000 * torch.rand(1, 1, 384, 384, generator=g)
    sr = hr + 100 * torch.randn(hr.shape, generator=g)
    mask = torch.rand(hr.shape, generator=g) > 0.05
    return lambda: cssim(sr, hr, mask)


def one_row(name: str, kept: bool, repeats: int) -> dict:
    torch.set_num_threads(1)
    if kept:
        keep_freed_memory()
    fn = work(name)
    fn()  # the first call, which grows the heap in either case
    before = resource.getrusage(resource.RUSAGE_SELF)
    call_s = seconds(fn, repeats, warmup=0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    calls = repeats
    return {
        "work": name,
        "heap": "kept" if kept else "glibc default",
        "call_s": call_s,
        "sys_s_per_call": (after.ru_stime - before.ru_stime) / calls,
        "user_s_per_call": (after.ru_utime - before.ru_utime) / calls,
        "peak_mib": after.ru_maxrss / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--works", nargs="+", choices=WORKS, default=list(WORKS))
    parser.add_argument("--row", nargs=2, metavar=("WORK", "KEPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(one_row(args.row[0], args.row[1] == "1", args.repeats)))
        return
    rows = []
    for name in args.works:
        for kept in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "--row", name, str(int(kept)), "--repeats", str(args.repeats)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        default = next(r for r in rows if r["work"] == row["work"] and r["heap"] == "glibc default")
        row["speedup"] = default["call_s"] / row["call_s"]
    report("heap", rows, ["work", "heap", "call_s", "sys_s_per_call", "user_s_per_call", "speedup", "peak_mib"])


if __name__ == "__main__":
    command(main)
