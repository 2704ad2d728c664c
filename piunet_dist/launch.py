"""Submit training to SLURM with submitit, or run it as local processes.

    python -m piunet_dist.launch --config configs/nir.yaml --nodes 2 --gpus-per-node 4 --wait
    python -m piunet_dist.launch --config configs/base.yaml --bands NIR RED --seeds 0 1 2 3
    python -m piunet_dist.launch evaluate --runs runs/piunet/*-seed* --split val --out runs/eval
    python -m piunet_dist.launch status runs/piunet        # every member: job, state, step, ETA
    python -m piunet_dist.launch cancel runs/piunet/nir-seed0

Each task exports the torch.distributed environment from SLURM (submitit's
TorchDistributedEnvironment) and runs the trainer in-process; Accelerate joins them in
one group, NCCL on GPUs and gloo on CPUs. The job is Checkpointable: on SLURM's signal
before a preemption or the time limit, rank 0 requeues it, and the requeued job resumes
from the newest complete checkpoint that the run writes every train.ckpt_every steps.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit

from . import checkpoint
from .config import Config, EvalConfig, LaunchConfig, add_setting_flags, check_world, flag_overrides, load_config
from .errors import UserError
from .evaluate import add_evaluation_arguments, evaluate
from .files import append_record, read_json_lines
from .members import check_runs
from .run_dir import RunDir
from .slurm import ENDED, cancel, check_request, hopeless, job_state, minutes

class TrainJob(submitit.helpers.Checkpointable):
    """One training run as a SLURM (or local) job; every task of the job calls it. It carries
    the resolved config it was submitted with: a requeued job does not read the YAML again."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self) -> dict:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        import torch

        from .train import Trainer  # after the environment: Accelerate reads it when built
        # torch would take every core of the node in each process; the task was given cpus_per_task
        torch.set_num_threads(self.cfg.launch.cpus_per_task)
        return Trainer(self.cfg, stop_on_signals=False).train()

    def checkpoint(self, *args, **kwargs):
        """On SLURM's signal (global rank 0 only): requeue, up to launch.max_requeues times
        (submitit's own limit on time-outs is set to the same number)."""
        count = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        limit = self.cfg.launch.max_requeues
        requeue = count < limit
        append_record(RunDir(self.cfg.run_dir).metrics, {"event": "requeue" if requeue else "requeue_refused",
                                               "restart_count": count, "max_requeues": limit,
                                               "job_id": os.environ.get("SLURM_JOB_ID")})
        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg)) if requeue else None


class EvaluateTask(submitit.helpers.Checkpointable):
    """One phase of an evaluation as a job (a predict task of the array, or the scoring);
    predictions are deterministic and resumable, so a preempted task simply runs again."""

    def __init__(self, runs: list[Path], settings: EvalConfig, phase: str, member: int | None, threads: int):
        self.runs, self.settings, self.phase, self.member, self.threads = runs, settings, phase, member, threads

    def __call__(self) -> None:
        import torch
        torch.set_num_threads(self.threads)
        evaluate(self.runs, self.settings, self.phase, self.member)


def cluster_kind(choice: str) -> str:
    """slurm or local. auto: SLURM where sbatch is on the PATH and a controller answers."""
    if choice == "local":
        return "local"
    if not shutil.which("sbatch"):
        if choice == "slurm":
            raise UserError("--cluster slurm: sbatch is not on the PATH (use --cluster local, or run on a login node)")
        return "local"
    if choice == "slurm":
        return "slurm"
    # SLURM's client tools without a cluster to talk to (installed, but no slurm.conf or
    # controller) must not stop a laptop run; a cluster that does not answer is said aloud
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
        answer = probe.stderr.strip().splitlines()[-1] if probe.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        answer = str(e) or type(e).__name__
    if not answer:
        return "slurm"
    print(f"launch: sbatch is here but no SLURM controller answers ({answer}); running local processes "
          "(--cluster slurm insists on SLURM)", file=sys.stderr)
    return "local"


def slurm_request(launch: LaunchConfig) -> dict[str, object]:
    """The job's request, by the names sbatch gives its options: what the executor is given and
    what --dry-run prints."""
    request = {"nodes": launch.nodes, "ntasks-per-node": launch.gpus_per_node or launch.tasks_per_node,
               "cpus-per-task": launch.cpus_per_task, "time": minutes(launch.time)}
    if launch.gpus_per_node:
        request["gpus-per-node"] = launch.gpus_per_node
    return request | {k: getattr(launch, k) for k in ("partition", "account", "qos", "constraint", "mem")
                      if getattr(launch, k)}


# sbatch's option -> submitit's parameter; those not here are SLURM's alone (slurm_<option>)
SUBMITIT = {"nodes": "nodes", "ntasks-per-node": "tasks_per_node", "cpus-per-task": "cpus_per_task",
            "time": "timeout_min", "gpus-per-node": "gpus_per_node"}


def make_executor(cfg: Config, folder: Path, name: str, kind: str):
    """A submitit executor for cfg.launch on `kind` (cluster_kind): SLURM, or local processes."""
    launch = cfg.launch
    if kind == "local" and launch.nodes > 1:
        raise UserError(f"--nodes {launch.nodes}: local processes run on this machine only (use --nodes 1)")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind,
                                     **{f"{kind}_max_num_timeout": launch.max_requeues})
    params = {"name": name}
    for option, value in slurm_request(launch).items():
        if option in SUBMITIT:
            params[SUBMITIT[option]] = value
        elif kind == "slurm":
            params[f"slurm_{option}"] = value
    executor.update_parameters(**params)
    return executor


def sbatch_request(cfg: Config, name: str) -> str:
    """The job's SLURM request as #SBATCH lines (for --dry-run); submitit adds its own lines for
    logs, the signal before the time limit and requeueing."""
    if cluster_kind(cfg.launch.cluster) != "slurm":
        raise UserError("--dry-run prints a SLURM request: it needs SLURM (sbatch on the PATH) or --cluster slurm")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    lines += [f"#SBATCH --{option}={value}" for option, value in slurm_request(cfg.launch).items()]
    return "\n".join(lines + ["# then srun, one task per process, runs the training (submitit)"])


def members(args, cfg: Config) -> list[tuple[str, list[str]]]:
    """(run dir, overrides) of every run: one, or one per band x seed under run_dir."""
    bands, seeds = args.bands or [cfg.data.band], args.seeds or [cfg.train.seed]
    if not args.bands and not args.seeds:
        return [(cfg.run_dir, [])]
    return [(str(Path(cfg.run_dir) / f"{band.lower()}-seed{seed}"),
             [f"data.band={band}", f"train.seed={seed}", f"run_dir={Path(cfg.run_dir) / f'{band.lower()}-seed{seed}'}"])
            for band in bands for seed in seeds]


def submit_training(args) -> int:
    overrides = list(args.overrides) + flag_overrides(args, "launch")
    cfg = load_config(args.config, overrides)
    launch = cfg.launch
    minutes(launch.time)
    world = launch.nodes * (launch.gpus_per_node or launch.tasks_per_node)
    folder = RunDir(cfg.run_dir).slurm
    name = f"piunet-{Path(cfg.run_dir).name}"
    runs = []
    for run_dir, extra in members(args, cfg):
        member = load_config(args.config, overrides + extra)  # every member is valid before anything is sent
        check_world(member, world)
        if member.train.resume and checkpoint.latest_step(Path(run_dir)) >= member.train.max_steps:
            print(f"{run_dir}: trained to train.max_steps={member.train.max_steps} already; not submitted")
        else:
            runs.append((run_dir, member))
    if args.dry_run:
        print(sbatch_request(cfg, name))
        return 0
    if not runs:
        return 0
    kind = cluster_kind(launch.cluster)
    if kind == "slurm":
        check_request(launch.partition, launch.nodes, launch.gpus_per_node or launch.tasks_per_node,
                      launch.cpus_per_task, launch.gpus_per_node, launch.mem, launch.time)
    executor = make_executor(cfg, folder, name, kind)
    with executor.batch() if len(runs) > 1 else contextlib.nullcontext():
        jobs = [executor.submit(TrainJob(member)) for _, member in runs]
    for job, (run_dir, _) in zip(jobs, runs):
        append_record(RunDir(run_dir).jobs, {"job_id": job.job_id, "cluster": kind, "partition": launch.partition,
                                             "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
        print(f"job {job.job_id} ({kind}): run dir {run_dir}")
        print(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    return wait_for(jobs, launch.partition) if args.wait else 0


def wait_for(jobs, partition: str = "") -> int:
    """Follow jobs to their end, asking SLURM at least every 30 s; non-zero with each failed
    job's own error or final state. A job that waits for a reason that will not resolve by
    itself is cancelled and named with that reason."""
    print(f"waiting for {len(jobs)} job(s); their progress is in their logs", flush=True)
    failed, pending, pause = 0, list(jobs), 2.0
    while pending:
        for job in list(pending):
            verdict = _ended(job, partition)
            if verdict is None:
                continue
            pending.remove(job)
            if verdict:
                failed += 1
                print(f"job {job.job_id}: {verdict}", file=sys.stderr, flush=True)
            else:
                print(f"job {job.job_id}: done", flush=True)
        if pending:
            time.sleep(pause)
            pause = min(30.0, pause * 1.5)
    return 1 if failed else 0


def _ended(job, partition: str) -> str | None:
    """None while the job goes on; "" when it succeeded; else what went wrong, in a line or two."""
    if isinstance(job, submitit.LocalJob):
        if not job.done():
            return None
    else:
        state = job_state(job.job_id)
        if state is None or state.state not in ENDED:
            if state is not None and hopeless(state, partition):
                cancel(job.job_id)
                return (f"cancelled: it waited for {state.reason}, which will not change by itself: the request "
                        "does not fit the partition (launch.nodes, cpus_per_task, gpus_per_node, mem, time) or "
                        "the account or QOS (launch.account, launch.qos)")
            return None
        if state.state != "COMPLETED" and state.state != "FAILED":
            return f"{state.state} (logs: {job.paths.stderr})"
    try:
        job.results()  # one result per task
        return ""
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        return f"failed\n{_job_error(job, e)}"


def _job_error(job, error: Exception) -> str:
    """The job's own error: the last 'SomeError: message' line of its trace, and where its logs are."""
    lines = [line.strip() for line in str(error).splitlines()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*:", line)]
    if raised:
        kind, message = raised[-1].split(":", 1)
        what = f"{kind.rsplit('.', 1)[-1]}:{message}"
    else:
        what = next((line for line in reversed(lines) if line), "no error text")
    return f"  {what}\n  (logs: {job.paths.stderr})"


def submit_evaluation(args) -> int:
    """An array of predict tasks, one per run (a band x member), then the scoring job after them."""
    cfg = load_config(args.config, flag_overrides(args, "eval") + flag_overrides(args, "launch")
                      + ["launch.nodes=1", "launch.tasks_per_node=1"])
    cfg.launch.gpus_per_node = min(cfg.launch.gpus_per_node, 1)
    check_runs(args.runs)
    runs, settings, launch = list(args.runs), cfg.eval, cfg.launch
    folder = Path(settings.out) / "slurm"
    kind = cluster_kind(launch.cluster)
    if kind == "slurm":
        check_request(launch.partition, 1, 1, launch.cpus_per_task, launch.gpus_per_node, launch.mem, launch.time)
    executor = make_executor(cfg, folder, "piunet-predict", kind)
    with executor.batch():
        tasks = [executor.submit(EvaluateTask(runs, settings, "predict", i, launch.cpus_per_task))
                 for i in range(len(runs))]
    for task, run_dir in zip(tasks, runs):
        print(f"job {task.job_id} ({kind}): predict with {run_dir}")
    scorer = make_executor(cfg, folder, "piunet-score", kind)
    if kind == "slurm":
        scorer.update_parameters(slurm_dependency=f"afterok:{tasks[0].job_id.split('_')[0]}")
    elif wait_for(tasks, launch.partition):  # local processes: no scheduler to hold the scoring back
        return 1
    score = scorer.submit(EvaluateTask(runs, settings, "score", None, launch.cpus_per_task))
    print(f"job {score.job_id} ({kind}): ensembles and scores -> {settings.out}/summary.json")
    print(f"  logs: {folder}")
    return wait_for([*tasks, score] if kind == "slurm" else [score], launch.partition) if args.wait else 0


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m piunet_dist.launch evaluate",
                                     description="Evaluate runs on SLURM: an array of predict tasks (one per "
                                                 "run) and, after them, the job that scores and writes summary.json.")
    add_evaluation_arguments(parser)
    # one task per job, at most one GPU each
    add_setting_flags(parser, "launch", tuple(f.name for f in dataclasses.fields(LaunchConfig)
                                              if f.name not in ("nodes", "tasks_per_node")))
    parser.add_argument("--wait", action="store_true", help="follow the jobs to the end; non-zero if one failed")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m piunet_dist.launch", description=__doc__, usage=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of settings (as for train)")
    add_setting_flags(parser, "launch")
    parser.add_argument("--bands", nargs="+", choices=("NIR", "RED"), help="a job array over these bands (x --seeds)")
    parser.add_argument("--seeds", nargs="+", type=int, help="a job array over these seeds (x --bands)")
    parser.add_argument("--dry-run", action="store_true", help="print the job's SLURM request; submit nothing")
    parser.add_argument("--wait", action="store_true", help="follow the job(s) to the end; non-zero if one failed")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings, as for train")
    return parser


def member_dirs(dirs: list[Path]) -> list[Path]:
    """The run dirs among `dirs`, and the members (run dirs with jobs) of any sweep among them."""
    found = []
    for d in dirs:
        jobs = RunDir(d).jobs.name
        if RunDir(d).jobs.is_file():
            found.append(d)
        else:
            inside = sorted(p.parent for p in d.glob(f"*/{jobs}"))
            if not inside:
                raise UserError(f"{d}: no job was submitted for it (no {jobs}, nor members with one)")
            found += inside
    return found


def _jobs(run_dir: Path) -> list[dict]:
    return read_json_lines(RunDir(run_dir).jobs)[0]


def status(dirs: list[Path]) -> list[dict]:
    """A row per member: its newest job, SLURM's state (and pending reason), progress and ETA."""
    rows = []
    for run_dir in member_dirs(dirs):
        jobs = _jobs(run_dir)
        if not jobs:
            raise UserError(f"{RunDir(run_dir).jobs}: no whole record of a job in it")
        job = jobs[-1]
        row = {"run": str(run_dir), "job": job["job_id"], "state": job["cluster"], "step": "-", "val_cpsnr": "-",
               "samples_s": "-", "eta": "-"}
        if job["cluster"] == "slurm":
            state = job_state(job["job_id"])
            row["state"] = "unknown" if state is None else state.state + (
                f" ({state.reason})" if state.state == "PENDING" else "")
        run = RunDir(run_dir)
        events = read_json_lines(run.metrics)[0] if run.metrics.is_file() else []
        train = [e for e in events if e.get("event") == "train"]
        val = [e for e in events if e.get("event") == "val"]
        planned = load_config(run.config).train if run.config.is_file() else None
        if train and planned:
            last = train[-1]
            row["step"] = f"{last['step']}/{planned.max_steps}"
            row["samples_s"] = f"{last['samples_per_s']:.1f}"
            left = (planned.max_steps - last["step"]) * planned.batch_size / max(last["samples_per_s"], 1e-9)
            row["eta"] = str(datetime.timedelta(seconds=round(left)))
        if val:
            row["val_cpsnr"] = f"{val[-1]['val_cpsnr']:.3f}"
        rows.append(row)
    return rows


def cancel_runs(dirs: list[Path]) -> list[str]:
    """Cancel every SLURM job of these members that has not ended; what was done, a line each."""
    said = []
    for run_dir in member_dirs(dirs):
        for job in _jobs(run_dir):
            if job["cluster"] != "slurm":
                said.append(f"{run_dir}: job {job['job_id']} runs as a local process; stop it with Ctrl-C")
                continue
            state = job_state(job["job_id"])
            if state is not None and state.state not in ENDED:
                cancel(job["job_id"])
                said.append(f"{run_dir}: cancelled job {job['job_id']} ({state.state})")
    return said


def build_runs_parser(command: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m piunet_dist.launch {command}", description=doc)
    parser.add_argument("dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run directories, or a sweep's directory (its members)")
    return parser


USAGE = ("python -m piunet_dist.launch [--config FILE] [flags] [section.key=value ...]\n"
         "       python -m piunet_dist.launch evaluate --runs RUN_DIR ... [flags]\n"
         "       python -m piunet_dist.launch status RUN_DIR ...\n"
         "       python -m piunet_dist.launch cancel RUN_DIR ...")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in ("evaluate", "status", "cancel") else "train"
    try:
        if command == "evaluate":
            return submit_evaluation(build_evaluate_parser().parse_intermixed_args(argv[1:]))
        if command == "status":
            rows = status(build_runs_parser("status", "Each member's job, state, progress and ETA.")
                          .parse_args(argv[1:]).dirs)
            table(rows)
            return 0
        if command == "cancel":
            for line in cancel_runs(build_runs_parser("cancel", "Cancel every job of these members.")
                                    .parse_args(argv[1:]).dirs):
                print(line)
            return 0
        return submit_training(build_parser().parse_intermixed_args(argv))
    except UserError as e:
        print(f"piunet-dist launch: error: {e}", file=sys.stderr)
        return 2


def table(rows: list[dict]) -> None:
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in widths.items()))


if __name__ == "__main__":
    # run the imported module's main, so that jobs pickle TrainJob by reference, not by value
    from piunet_dist.launch import main as launch_main
    sys.exit(launch_main())
