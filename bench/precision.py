"""Does bf16 autocast train as well as float32? The demo recipe (configs/demo.yaml) trained in
both precisions on the same shards and seed, the runs side by side (one process and one
thread each), and their validation cPSNR compared.

    python bench/precision.py --shards shards/demo [--bands NIR RED] [--out runs/precision]

On a CPU bf16 has no fast path (BENCHMARKS.md), so this measures the arithmetic, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import ROOT, command, report

PRECISIONS = ("no", "bf16")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="a pack holding the bands' train and val shards")
    parser.add_argument("--bands", nargs="+", default=["NIR", "RED"], choices=("NIR", "RED"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "precision")
    args = parser.parse_args()
    runs = {(band, p): args.out / f"{band.lower()}-{p}" for band in args.bands for p in PRECISIONS}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args.out.mkdir(parents=True, exist_ok=True)
    logs = {key: open(run_dir.with_suffix(".log"), "w") for key, run_dir in runs.items()}  # a pipe unread would fill
    started = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "piunet_dist",
                "train",
                "--config",
                "configs/demo.yaml",
                f"run_dir={run_dir}",
                f"data.shards={args.shards.resolve()}",
                f"data.band={band}",
                f"train.precision={precision}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=logs[(band, precision)],
        )
        for (band, precision), run_dir in runs.items()
    ]
    for proc, (key, run_dir) in zip(started, runs.items()):
        if proc.wait():
            sys.exit(run_dir.with_suffix(".log").read_text()[-2000:])
        logs[key].close()
    rows = []
    for band in args.bands:
        row = {"band": band}
        for precision in PRECISIONS:
            events = [json.loads(line) for line in (runs[(band, precision)] / "metrics.jsonl").read_text().splitlines()]
            val = [e for e in events if e["event"] == "val"]
            row[f"{precision}: last val cPSNR"] = val[-1]["val_cpsnr"]
            row[f"{precision}: best"] = max(e["val_cpsnr"] for e in val)
        row["bf16 - no, last (dB)"] = row["bf16: last val cPSNR"] - row["no: last val cPSNR"]
        rows.append(row)
    report("precision", rows, list(rows[0]))


if __name__ == "__main__":
    command(main)
