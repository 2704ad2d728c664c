"""`python -m piunet_dist <command>` (also installed as `piunet-dist`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .core.exits import error_exit

# command -> (module with add_arguments(parser) and run(args), one line of help)
COMMANDS = {
    "synth": ("piunet_dist.data.synthetic", "write synthetic scenes in the PROBA-V layout"),
    "pack": ("piunet_dist.data.packing", "pack PROBA-V scenes into WebDataset shards, or verify them"),
    "train": (
        "piunet_dist.training.trainer",
        "train PIUnet on one band (DDP with Accelerate on any number of processes)",
    ),
    "evaluate": (
        "piunet_dist.evaluation.evaluate",
        "predict and score a split with one or more runs, and their ensembles",
    ),
    "predict": ("piunet_dist.evaluation.scene", "super-resolve one scene directory with published or trained weights"),
    "report": ("piunet_dist.report.pages", "figures, index.html and report.md of runs and evaluations"),
}


LAUNCH_HELP = "submit training or evaluation to SLURM with submitit (or run it as local processes)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piunet-dist", description="Train and evaluate PIUnet multi-image super-resolution on PROBA-V scenes."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        cmd = sub.add_parser(name, help=summary, description=summary)
        importlib.import_module(module).add_arguments(cmd)
    # its flags are those of `python -m piunet_dist.launch`, which parses them itself
    sub.add_parser("launch", help=LAUNCH_HELP, description=LAUNCH_HELP, add_help=False)
    return parser


def build_command_parser(command: str) -> argparse.ArgumentParser:
    """One command's own parser: its flags and settings may come in any order."""
    module, summary = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"piunet-dist {command}", description=summary)
    importlib.import_module(module).add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        from .launch.cli import main as launch

        return launch(argv[1:])
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # the overview, or the error that names the commands
        return 2
    args = build_command_parser(argv[0]).parse_intermixed_args(argv[1:])
    args.command = argv[0]
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.run(args) or 0
    except Exception as e:
        return error_exit(args.command, e)


if __name__ == "__main__":
    sys.exit(main())
