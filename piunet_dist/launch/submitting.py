"""Submitting: the SLURM request of a launch, its checks, and the jobs sent (or local processes)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import submitit

from ..core import checkpoint, tracking
from ..core.config import Config, LaunchConfig
from ..core.config_flags import flag_overrides
from ..core.config_load import check_sweep, check_world, load_config
from ..core.errors import UserError
from ..core.eval_dir import EvalDir
from ..core.files import append_record, read_json
from ..core.run_dir import RunDir
from ..data.shards import MANIFEST
from ..evaluation.evaluate import plan
from ..evaluation.summary_text import summary_text
from ..training.starting import check_same_settings, check_same_shards, initial_model
from .following import Watched, wait_for
from .jobs import EvaluateTask, TrainJob
from .slurm import check_request, minutes, partition_nodes


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
    # controller) must not stop a laptop run; a cluster that does not answer is said aloud.
    # A SLURM_CONF naming no file is answer enough: sinfo would retry it for a minute.
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        answer = f"SLURM_CONF={conf} is no file"
    else:
        try:
            probe = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
            answer = probe.stderr.strip().splitlines()[-1] if probe.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            answer = str(e) or type(e).__name__
    if not answer:
        return "slurm"
    print(
        f"launch: sbatch is here but no SLURM controller answers ({answer}); running local processes "
        "(--cluster slurm insists on SLURM)",
        file=sys.stderr,
    )
    return "local"


CPU_STEPS = 20_000  # more steps than this on CPU jobs is a GPU recipe: said, not submitted by default


def resolve_gpus(launch: LaunchConfig, kind: str) -> str:
    """launch.gpus_per_node made a count for this cluster (auto: the partition's GPUs per node
    from SLURM's GRES, this machine's for local processes), set on `launch`; returns how auto
    found it ("" where it was given)."""
    if launch.gpus_per_node != "auto":
        return ""
    if kind == "slurm":
        name, nodes = partition_nodes(launch.partition)
        found = max(n.gpus for n in nodes)
        where = f"partition {name}'s nodes have {found}"
    else:
        import torch

        found = torch.cuda.device_count()
        where = f"this machine has {found}"
    launch.gpus_per_node = str(found)
    return f"launch.gpus_per_node auto: {where}"


def processes_per_node(launch: LaunchConfig) -> int:
    return int(launch.gpus_per_node) or launch.tasks_per_node


def said_how(launch: LaunchConfig, precision: str, found: str) -> str:
    """The launch's first line: how many processes a node runs, on what, and in which precision."""
    gpus = int(launch.gpus_per_node)
    on = f"{gpus} GPU(s) per node, a process each" if gpus else f"{launch.tasks_per_node} CPU process(es) per node"
    if precision != "auto":
        how = f"train.precision {precision}"
    elif gpus:
        how = "train.precision auto: bf16 where the GPUs support it, else float32 (each job says which)"
    else:
        how = "train.precision auto: float32 on CPU jobs"
    return f"{on}" + (f" ({found})" if found else "") + f"; {how}"


def slurm_request(launch: LaunchConfig) -> dict[str, object]:
    """The job's request, by the names sbatch gives its options: what the executor is given and
    what --dry-run prints (launch.gpus_per_node resolved)."""
    request = {
        "nodes": launch.nodes,
        "ntasks-per-node": processes_per_node(launch),
        "cpus-per-task": launch.cpus_per_task,
        "time": minutes(launch.time),
    }
    if int(launch.gpus_per_node):
        request["gpus-per-node"] = int(launch.gpus_per_node)
    return request | {
        k: getattr(launch, k) for k in ("partition", "account", "qos", "constraint", "mem") if getattr(launch, k)
    }


# sbatch's option -> submitit's parameter; those not here are SLURM's alone (slurm_<option>)
SUBMITIT = {
    "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node",
    "cpus-per-task": "cpus_per_task",
    "time": "timeout_min",
    "gpus-per-node": "gpus_per_node",
}


def make_executor(cfg: Config, folder: Path, name: str, kind: str):
    """A submitit executor for cfg.launch on `kind` (cluster_kind): SLURM, or local processes."""
    launch = cfg.launch
    resolve_gpus(launch, kind)
    if kind == "local" and launch.nodes > 1:
        raise UserError(f"--nodes {launch.nodes}: local processes run on this machine only (use --nodes 1)")
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster=kind, **{f"{kind}_max_num_timeout": launch.max_requeues}
    )
    params = {"name": name}
    # a job's OpenMP threads are its CPUs: with OpenMP's default, a core's worth of threads in
    # every process, four one-CPU members on two cores took 2.5 samples/s each instead of 16
    threads = f"OMP_NUM_THREADS={launch.cpus_per_task}"
    if kind == "slurm":
        params["slurm_setup"] = [f"export {threads}"]
    else:
        os.environ["OMP_NUM_THREADS"] = str(launch.cpus_per_task)  # the local processes inherit it
    for option, value in slurm_request(launch).items():
        if option in SUBMITIT:
            params[SUBMITIT[option]] = value
        elif kind == "slurm":
            params[f"slurm_{option}"] = value
    executor.update_parameters(**params)
    return executor


def sbatch_request(cfg: Config, name: str, kind: str, said: str) -> str:
    """The job's SLURM request as #SBATCH lines (for --dry-run); submitit adds its own lines for
    logs, the signal before the time limit and requeueing."""
    if kind != "slurm":
        raise UserError("--dry-run prints a SLURM request: it needs SLURM (sbatch on the PATH) or --cluster slurm")
    lines = ["#!/bin/bash", f"# {said}", f"#SBATCH --job-name={name}"]
    lines += [f"#SBATCH --{option}={value}" for option, value in slurm_request(cfg.launch).items()]
    return "\n".join(lines + ["# then srun, one task per process, runs the training (submitit)"])


def sweep_members(args, cfg: Config) -> list[tuple[str, list[str]]]:
    """(run dir, overrides) of every run: one, or one per point of the grid of the swept
    settings (the config's sweep section, then --sweep) x band x seed, each in a directory
    under run_dir named by its values (nir-lr3e-4-n_tefa8-seed0), its trackers' group the
    sweep's run_dir name."""
    grid = dict(cfg.sweep) | dict(parse_sweep(text) for text in args.sweep or [])
    bands, seeds = args.bands or [cfg.data.band], args.seeds or [cfg.train.seed]
    if not args.bands and not args.seeds and not grid:
        return [(cfg.run_dir, [])]
    names = _short_names(list(grid))
    group = f"train.tracker_group={cfg.train.tracker_group or Path(cfg.run_dir).name}"
    runs = []
    for point in itertools.product(*(list(v) for v in grid.values())) if grid else [()]:
        values = dict(zip(grid, point))
        label = "".join(f"-{names[k]}{_text(v)}" for k, v in values.items())
        for band in bands:
            for seed in seeds:
                run_dir = Path(cfg.run_dir) / f"{band.lower()}{label}-seed{seed}"
                settings = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
                runs.append(
                    (
                        str(run_dir),
                        [f"data.band={band}", f"train.seed={seed}", f"run_dir={run_dir}", "sweep={}", group, *settings],
                    )
                )
    return runs


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """--sweep train.lr=1e-4,3e-4: the setting and the text of each of its values."""
    key, _, text_values = text.partition("=")
    key, values = key.strip(), [v.strip() for v in text_values.split(",") if v.strip()]
    if not values:
        raise UserError(f"--sweep {text}: expected section.key=VALUE,VALUE,...")
    try:
        check_sweep(key, values)
    except UserError as e:
        if len(values) > 1:
            raise
        # --sweep takes every section.key=value after it: a setting of the run may be among them
        raise UserError(f"{e}; --sweep {text}: settings that are not swept go before --sweep") from None
    return key, values


def _short_names(keys: list[str]) -> dict[str, str]:
    """A swept setting's name in its run directories: its own, or its dotted key where two share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: n if last.count(n) == 1 else k.replace(".", "_") for k, n in zip(keys, last)}


def _text(value) -> str:
    return re.sub(r"[^\w.+-]", "_", str(value).replace(" ", ""))


def submit_training(args) -> int:
    overrides = list(args.overrides) + flag_overrides(args, "launch")
    cfg = load_config(args.config, overrides)
    launch = cfg.launch
    minutes(launch.time)
    kind = cluster_kind(launch.cluster)
    found = resolve_gpus(launch, kind)
    overrides.append(f"launch.gpus_per_node={launch.gpus_per_node}")  # every member runs as resolved here
    world = launch.nodes * processes_per_node(launch)
    folder = RunDir(cfg.run_dir).slurm
    name = f"piunet-{Path(cfg.run_dir).name}"
    runs = []
    for run_dir, extra in sweep_members(args, cfg):
        member = load_config(args.config, overrides + extra)  # every member is valid before anything is sent
        if found and not int(launch.gpus_per_node) and member.train.max_steps > CPU_STEPS:
            raise UserError(
                f"launch.gpus_per_node: auto found no GPUs ({found.split(': ', 1)[1]}), and {run_dir} trains "
                f"train.max_steps={member.train.max_steps:,} steps, a recipe for GPUs: give --partition with GPU "
                "nodes, or --gpus-per-node 0 to train it on CPU jobs all the same"
            )
        check_world(member, world)
        tracking.resolve(member.train.log_with)  # a tracker not installed here is refused before any job
        newest = checkpoint.latest(Path(run_dir))
        if member.train.init_weights and newest is None:
            initial_model(member, resuming=False)  # weights that are not there, or do not fit, refused now
        # a finished run on other scenes or under other settings is not taken as done; shards
        # seen only from the nodes are checked there, by the job
        if member.train.resume and newest is not None:
            check_same_settings(member)
            if (Path(member.data.shards) / MANIFEST).is_file():
                check_same_shards(member, newest)
        if member.train.resume and checkpoint.latest_step(Path(run_dir)) >= member.train.max_steps:
            print(f"{run_dir}: trained to train.max_steps={member.train.max_steps} already; not submitted")
        else:
            runs.append((run_dir, member))
    said = said_how(launch, cfg.train.precision, found)
    if args.dry_run:
        print(sbatch_request(cfg, name, kind, said))
        return 0
    if not runs:
        return 0
    print(f"launch: {said}")
    if kind == "slurm":
        check_request(
            launch.partition,
            launch.nodes,
            processes_per_node(launch),
            launch.cpus_per_task,
            int(launch.gpus_per_node),
            launch.mem,
            launch.time,
        )
    executor = make_executor(cfg, folder, name, kind)
    with executor.batch() if len(runs) > 1 else contextlib.nullcontext():
        jobs = [executor.submit(TrainJob(member)) for _, member in runs]
    for job, (run_dir, _) in zip(jobs, runs):
        append_record(
            RunDir(run_dir).jobs,
            {
                "job_id": job.job_id,
                "cluster": kind,
                "partition": launch.partition,
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
            },
        )
        print(f"job {job.job_id} ({kind}): run dir {run_dir}")
        print(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    watched = [Watched(job, run_dir, Path(run_dir)) for job, (run_dir, _) in zip(jobs, runs)]
    return wait_for(watched, launch.partition) if args.wait else 0


def submit_evaluation(args) -> int:
    """An array of predict tasks, one per run (a band x member), then the scoring job after them."""
    other = [o for o in args.overrides if not o.startswith(("eval.", "launch."))]
    if other:
        raise UserError(f"{other[0]}: launch evaluate takes eval.* and launch.* settings (a run's own are its config)")
    cfg = load_config(
        args.config,
        list(args.overrides)
        + flag_overrides(args, "eval")
        + flag_overrides(args, "launch")
        + ["launch.nodes=1", "launch.tasks_per_node=1"],
    )
    runs, settings, launch = list(args.runs), cfg.eval, cfg.launch
    plan(runs, settings)  # every member and its scenes found before anything is sent
    out = EvalDir(settings.out)
    folder = out.slurm
    kind = cluster_kind(launch.cluster)
    found = resolve_gpus(launch, kind)
    launch.gpus_per_node = str(min(int(launch.gpus_per_node), 1))  # a task predicts on one GPU at most
    print(f"launch: {int(launch.gpus_per_node)} GPU per task" + (f" ({found})" if found else ""))
    if kind == "slurm":
        check_request(launch.partition, 1, 1, launch.cpus_per_task, int(launch.gpus_per_node), launch.mem, launch.time)
    executor = make_executor(cfg, folder, "piunet-predict", kind)
    with executor.batch():
        tasks = [
            executor.submit(EvaluateTask(runs, settings, "predict", i, launch.cpus_per_task)) for i in range(len(runs))
        ]
    for task, run_dir in zip(tasks, runs):
        print(f"job {task.job_id} ({kind}): predict with {run_dir}")
    scorer = make_executor(cfg, folder, "piunet-score", kind)
    if kind == "slurm":
        scorer.update_parameters(slurm_dependency=f"afterok:{tasks[0].job_id.split('_')[0]}")
    predicting = [Watched(task, f"predict {run_dir}") for task, run_dir in zip(tasks, runs)]
    if kind != "slurm" and wait_for(predicting, launch.partition):  # no scheduler to hold the scoring back
        return 1
    score = scorer.submit(EvaluateTask(runs, settings, "score", None, launch.cpus_per_task))
    print(f"job {score.job_id} ({kind}): ensembles and scores -> {out.summary}")
    print(f"  logs: {folder}")
    if not args.wait:
        return 0
    scoring = [Watched(score, f"score -> {settings.out}")]
    if wait_for([*predicting, *scoring] if kind == "slurm" else scoring, launch.partition):
        return 1
    print(summary_text(read_json(out.summary), out))
    return 0
