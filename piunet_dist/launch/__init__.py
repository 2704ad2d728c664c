"""Submitting training and evaluation to SLURM with submitit (or as local processes), and
following the jobs: `python -m piunet_dist.launch` (see cli.py)."""

from .cli import main

__all__ = ["main"]
