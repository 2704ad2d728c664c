"""Following jobs: waiting for them to end, each member's status, cancelling."""

from __future__ import annotations

import datetime
import re
import sys
import time
from pathlib import Path

import submitit

from ..core.config import load_config
from ..core.errors import UserError
from ..core.files import read_json_lines
from ..core.run_dir import RunDir
from .slurm import ENDED, cancel, hopeless, job_state


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
                return (
                    f"cancelled: it waited for {state.reason}, which will not change by itself: the request "
                    "does not fit the partition (launch.nodes, cpus_per_task, gpus_per_node, mem, time) or "
                    "the account or QOS (launch.account, launch.qos)"
                )
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
        row = {
            "run": str(run_dir),
            "job": job["job_id"],
            "state": job["cluster"],
            "step": "-",
            "val_cpsnr": "-",
            "samples_s": "-",
            "eta": "-",
        }
        if job["cluster"] == "slurm":
            state = job_state(job["job_id"])
            row["state"] = (
                "unknown" if state is None else state.state + (f" ({state.reason})" if state.state == "PENDING" else "")
            )
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


def table(rows: list[dict]) -> None:
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in widths.items()))
