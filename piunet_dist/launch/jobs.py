"""What a SLURM (or local) job runs: a training run, or one phase of an evaluation.

Each task exports the torch.distributed environment from SLURM (submitit's
TorchDistributedEnvironment) and runs the trainer in-process; Accelerate joins them in
one group, NCCL on GPUs and gloo on CPUs. The job is Checkpointable: on SLURM's signal
before a preemption or the time limit, rank 0 requeues it, and the requeued job resumes
from the newest complete checkpoint that the run writes every train.ckpt_every steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from ..core.config import Config, EvalConfig
from ..core.eval_dir import EvalDir
from ..core.files import append_record
from ..core.run_dir import RunDir
from ..evaluation.evaluate import evaluate
from ..evaluation.summary_text import summary_text

# below Linux's default ephemeral range (32768-60999), from which the kernel gives outgoing
# connections their ports: submitit draws from 20000-60000, and a test-cluster job whose drawn
# port a connection held failed to rendezvous (EADDRINUSE)
RENDEZVOUS_PORTS = range(20000, 32768)


def rendezvous_port(job_id: str, array_task: str) -> int:
    """The port the tasks of a job meet on: the same for each of its tasks, and one of its own
    for each task of an array, whose tasks may share a node."""
    spread = int(job_id) * 7919  # a prime: consecutive arrays start far apart
    return RENDEZVOUS_PORTS[(spread + int(array_task)) % len(RENDEZVOUS_PORTS)]


class TrainJob(submitit.helpers.Checkpointable):
    """One training run as a SLURM (or local) job; every task of the job calls it. It carries
    the resolved config it was submitted with: a requeued job does not read the YAML again."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self) -> dict:
        job = submitit.JobEnvironment()
        os.environ["MASTER_PORT"] = str(rendezvous_port(job.array_job_id or job.raw_job_id, job.array_task_id or "0"))
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        import torch

        from ..training.trainer import train_run  # after the environment: Accelerate reads it when built

        # torch would take every core of the node in each process; the task was given cpus_per_task
        torch.set_num_threads(self.cfg.launch.cpus_per_task)
        return train_run(self.cfg, stop_on_signals=False)[0]

    def checkpoint(self, *args, **kwargs):
        """On SLURM's signal (global rank 0 only): requeue, up to launch.max_requeues times
        (submitit's own limit on time-outs is set to the same number)."""
        count = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        limit = self.cfg.launch.max_requeues
        requeue = count < limit
        append_record(
            RunDir(self.cfg.run_dir).metrics,
            {
                "event": "requeue" if requeue else "requeue_refused",
                "restart_count": count,
                "max_requeues": limit,
                "job_id": os.environ.get("SLURM_JOB_ID"),
            },
        )
        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg)) if requeue else None


class EvaluateTask(submitit.helpers.Checkpointable):
    """One phase of an evaluation as a job (a predict task of the array, or the scoring);
    predictions are deterministic and resumable, so a preempted task simply runs again."""

    def __init__(self, runs: list[Path], settings: EvalConfig, phase: str, member: int | None, threads: int):
        self.runs, self.settings, self.phase, self.member, self.threads = runs, settings, phase, member, threads

    def __call__(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        summary = evaluate(self.runs, self.settings, self.phase, self.member)
        if summary is not None:
            print(summary_text(summary, EvalDir(self.settings.out)), flush=True)
