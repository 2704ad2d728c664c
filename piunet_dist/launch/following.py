"""Following jobs: waiting for them to end with a live view of where each stands, cancelling."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from ..core.files import read_json_lines
from ..core.run_dir import RunDir
from .progress import blank_row, lines, run_dirs, run_row, state_text
from .slurm import ENDED, JobState, cancel, hopeless, job_state


@dataclass
class Watched:
    """A job followed by --wait: a training run's (with its run directory) or an evaluation task's."""

    job: object  # a submitit job
    label: str
    run_dir: Path | None = None


class LiveView:
    """One table of the jobs on a terminal, redrawn in place at each poll; elsewhere (a SLURM
    log, a pipe) a line for each row when its state or validation changes or its step passes
    another tenth of its run."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.drawn = 0
        self.said: dict[str, tuple] = {}

    def show(self, rows: list[dict]) -> None:
        if self.tty:
            table = lines(rows)
            self.out.write((f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "") + "\n".join(table) + "\n")
            self.drawn = len(table)
        else:
            for row in rows:
                mark = (row["state"], row["val_cpsnr"], _tenth(row["step"]))
                if self.said.get(row["run"]) != mark:
                    self.said[row["run"]] = mark
                    self.out.write(_line(row) + "\n")
        self.out.flush()

    def said_below(self) -> None:
        """What is printed next goes below the table, which is not redrawn over it."""
        self.drawn = 0


def _tenth(step: str) -> int:
    done, _, planned = step.partition("/")
    return int(10 * int(done) / int(planned)) if planned.isdigit() and done.isdigit() and int(planned) else -1


def _line(row: dict) -> str:
    parts = [f"job {row['job']} {row['state']}"]
    parts += [f"step {row['step']}"] if row["step"] != "-" else []
    parts += [f"loss {row['loss']}"] if row["loss"] != "-" else []
    parts += [f"val cPSNR {row['val_cpsnr']} dB"] if row["val_cpsnr"] != "-" else []
    parts += [f"{row['samples_s']} samples/s, ETA {row['eta']}"] if row["samples_s"] != "-" else []
    return f"{row['run']}: " + ", ".join(parts)


def wait_for(watched: list[Watched], partition: str = "", view: LiveView | None = None) -> int:
    """Follow jobs to their end, showing where each stands (the rows of `launch status`),
    asking SLURM at least every 30 s and a local process at every redraw; a line as each
    ends, then a summary as the last lines: how many succeeded and, for each that did not,
    its run, job id, error and log. Non-zero when any failed. A job that waits for a reason
    that will not resolve by itself is cancelled and named with that reason."""
    view = view or LiveView()
    ended, pending, pause, asked, states = {}, list(watched), 2.0, 0.0, {}
    while pending:
        slurm_due = time.time() - asked >= pause  # on a schedule that lengthens to 30 s
        if slurm_due:
            asked, pause = time.time(), min(30.0, pause * 1.5)
        # a local process costs nothing to ask: the next phase starts as soon as it ends
        for w in [w for w in pending if slurm_due or isinstance(w.job, submitit.LocalJob)]:
            states[w.label], outcome = _progress(w.job, partition)
            if outcome is None:
                continue
            pending.remove(w)
            ended[w.label] = outcome
            view.show(_rows(watched, states))
            view.said_below()
            if outcome.error:
                print(f"job {w.job.job_id}: {outcome.error}", file=sys.stderr, flush=True)
            else:
                print(f"job {w.job.job_id}: done", flush=True)
        view.show(_rows(watched, states))
        if pending:
            time.sleep(REFRESH)
    return summary(watched, ended)


@dataclass
class Outcome:
    """How a job ended: error is "" when it succeeded, else its own error line or its state."""

    error: str = ""
    log: str = ""  # its error stream


def summary(watched: list[Watched], ended: dict[str, Outcome]) -> int:
    """The launch's last lines: how many jobs succeeded, then each failed one (on stderr); the exit status."""
    failed = [w for w in watched if ended[w.label].error]
    jobs = f"{len(watched)} job{'s' if len(watched) > 1 else ''}"
    if not failed:
        print(f"launch: {jobs} succeeded", flush=True)
        return 0
    sys.stdout.flush()
    lines = [f"launch: {len(watched) - len(failed)} of {jobs} succeeded, {len(failed)} failed:"]
    for w in failed:
        outcome = ended[w.label]
        log = f" (log: {outcome.log})" if outcome.log else ""
        lines.append(f"  {w.label}: job {w.job.job_id}: {outcome.error}{log}")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 1


REFRESH = 2.0  # seconds between two redraws of the view: the run's files are read, SLURM is not asked


def _rows(watched: list[Watched], states: dict[str, str]) -> list[dict]:
    rows = []
    for w in watched:
        state = states.get(w.label, "PENDING")
        if w.run_dir is not None:
            row = run_row(w.run_dir, state)
            row["run"] = w.label
        else:
            row = blank_row(w.label, w.job.job_id, state)
        rows.append(row)
    return rows


def _progress(job, partition: str) -> tuple[str, Outcome | None]:
    """The job's state now, and its Outcome once it ended (None while it goes on)."""
    if isinstance(job, submitit.LocalJob):
        state = "DONE" if job.done() else "RUNNING"
        return state, _ended(job, partition) if job.done() else None
    found = job_state(job.job_id)
    return state_text(found), _ended(job, partition, found)


def _ended(job, partition: str, state: JobState | None = None) -> Outcome | None:
    """None while the job goes on, else how it ended."""
    log = str(job.paths.stderr)
    if not isinstance(job, submitit.LocalJob):
        if state is None or state.state not in ENDED:
            if state is not None and hopeless(state, partition):
                cancel(job.job_id)
                return Outcome(
                    f"cancelled: it waited for {state.reason}, which will not change by itself: the request "
                    "does not fit the partition (launch.nodes, cpus_per_task, gpus_per_node, mem, time) or "
                    "the account or QOS (launch.account, launch.qos)"
                )
            return None
        if state.state != "COMPLETED" and state.state != "FAILED":
            return Outcome(state.state, log)
    try:
        job.results()  # one result per task
        return Outcome()
    except submitit.core.utils.FailedJobError as e:
        return Outcome(f"failed: {_job_error(e)}", log)
    except submitit.core.utils.UncompletedJobError:
        # the job's code returns a result or its error whatever happens in it: without
        # either, the process was ended from outside, which leaves no trace in its log
        return Outcome(
            "ended without a result or an error of its own: killed by a signal (kill -9, the out-of-memory "
            "killer: launch.mem, or a crash)",
            log,
        )


def _job_error(error: Exception) -> str:
    """The job's own error: the last 'SomeError: message' line of its trace, else its last line."""
    lines = [line.strip() for line in str(error).splitlines()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*:", line)]
    if raised:
        kind, message = raised[-1].split(":", 1)
        return f"{kind.rsplit('.', 1)[-1]}:{message}"
    return next((line for line in reversed(lines) if line), "no error text")


def cancel_runs(dirs: list[Path]) -> list[str]:
    """Cancel every SLURM job of these members that has not ended; what was done, a line each."""
    said = []
    for run_dir in run_dirs(dirs):
        for job in read_json_lines(RunDir(run_dir).jobs)[0] if RunDir(run_dir).jobs.is_file() else []:
            if job["cluster"] != "slurm":
                said.append(f"{run_dir}: job {job['job_id']} runs as a local process; stop it with Ctrl-C")
                continue
            state = job_state(job["job_id"])
            if state is not None and state.state not in ENDED:
                cancel(job["job_id"])
                said.append(f"{run_dir}: cancelled job {job['job_id']} ({state.state})")
    return said
