"""Submit training to SLURM with submitit, or run it as local processes.

python -m piunet_dist.launch --config configs/base.yaml --bands NIR RED --seeds 0 1 --nodes 2 --wait
    (one job array; each job on 2 nodes with as many GPUs as the partition's nodes have)
python -m piunet_dist.launch --config configs/nir.yaml --nodes 2 --gpus-per-node 4 --partition gpu --wait
python -m piunet_dist.launch --config configs/nir.yaml --sweep train.lr=1e-4,3e-4 model.n_tefa=8,16 --seeds 0 1
python -m piunet_dist.launch evaluate --runs runs/piunet/*-seed* --split val --out runs/eval
python -m piunet_dist.launch status runs/piunet        # every member: job, state, step, ETA
python -m piunet_dist.launch cancel runs/piunet/nir-seed0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..core.config import BANDS, LaunchConfig
from ..core.config_flags import add_setting_flags
from ..core.exits import error_exit
from ..evaluation.evaluate import add_evaluation_arguments
from .following import cancel_runs
from .progress import lines, status
from .submitting import submit_evaluation, submit_training


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m piunet_dist.launch evaluate",
        description="Evaluate runs on SLURM: an array of predict tasks (one per "
        "run) and, after them, the job that scores and writes summary.json.",
    )
    add_evaluation_arguments(parser)
    # one task per job, at most one GPU each
    add_setting_flags(
        parser,
        "launch",
        tuple(f.name for f in dataclasses.fields(LaunchConfig) if f.name not in ("nodes", "tasks_per_node")),
    )
    parser.add_argument("--wait", action="store_true", help="follow the jobs to the end; non-zero if one failed")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="eval and launch settings, over --config's"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m piunet_dist.launch",
        description=__doc__,
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file of settings (as for train)")
    add_setting_flags(parser, "launch")
    parser.add_argument("--bands", nargs="+", choices=BANDS, help="a job array over these bands (x --seeds)")
    parser.add_argument("--seeds", nargs="+", type=int, help="a job array over these seeds (x --bands)")
    parser.add_argument(
        "--sweep",
        nargs="+",
        metavar="section.key=V1,V2",
        help="settings to sweep, each over its values: their grid x --bands x --seeds is one job array, each "
        "member in a directory named by its values (over the config's sweep section)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the job's SLURM request; submit nothing")
    parser.add_argument("--wait", action="store_true", help="follow the job(s) to the end; non-zero if one failed")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings, as for train")
    return parser


def build_runs_parser(command: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m piunet_dist.launch {command}", description=doc)
    parser.add_argument(
        "dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories, or a sweep's directory (its members)"
    )
    return parser


USAGE = (
    "python -m piunet_dist.launch [--config FILE] [flags] [section.key=value ...]\n"
    "       python -m piunet_dist.launch evaluate --runs RUN_DIR ... [flags]\n"
    "       python -m piunet_dist.launch status RUN_DIR ...\n"
    "       python -m piunet_dist.launch cancel RUN_DIR ..."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in ("evaluate", "status", "cancel") else "train"
    try:
        if command == "evaluate":
            return submit_evaluation(build_evaluate_parser().parse_intermixed_args(argv[1:]))
        if command == "status":
            rows = status(
                build_runs_parser(
                    "status",
                    "Every run under these directories (launched or started by hand): its job, state, step, last "
                    "loss and validation cPSNR, samples/s, ETA and, for a sweep, its grid point.",
                )
                .parse_args(argv[1:])
                .dirs
            )
            print("\n".join(lines(rows)))
            return 0
        if command == "cancel":
            for line in cancel_runs(
                build_runs_parser("cancel", "Cancel every job of these members.").parse_args(argv[1:]).dirs
            ):
                print(line)
            return 0
        return submit_training(build_parser().parse_intermixed_args(argv))
    except Exception as e:
        return error_exit("launch", e)
