"""What SLURM says, read through its own commands: time limits, a partition's nodes, a job's
state and why it waits. The launcher checks a request against the nodes before it sends it,
and follows its jobs with these.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass

from ..core.errors import UserError

TIME_FORMATS = "M, M:S, H:M:S, D-H, D-H:M or D-H:M:S"
# a job that waits for one of these waits forever: the request does not fit what the
# cluster has or allows (ReqNodeNotAvail only while no node of the partition is up)
HOPELESS = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxWallDurationPerJobLimit",
    "QOSMaxNodePerJobLimit",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxGRESPerJob",
    "QOSMaxMemoryPerJob",
    "QOSMinGRES",
    "QOSMinCpuNotSatisfied",
    "BadConstraints",
    "ReqNodeNotAvail",
)
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}
UP = {"idle", "mixed", "allocated", "completing", "planned", "reserved"}


def minutes(text: str, what: str = "--time") -> int:
    """A time limit in any of SLURM's formats, in whole minutes (seconds round up)."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not found:
        raise UserError(f"{what}: {text!r} is not a SLURM time ({TIME_FORMATS})")
    days, a, b, c = found.groups()
    if days is None:
        hours, mins, secs = (0, int(a), int(b or 0)) if c is None else (int(a), int(b), int(c))
    else:
        hours, mins, secs = int(a), int(b or 0), int(c or 0)
    total = int(days or 0) * 1440 + hours * 60 + mins + math.ceil(secs / 60)
    if total < 1:
        raise UserError(f"{what}: {text!r} is no time at all")
    return total


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{args[0]}: did not answer ({e})") from None
    if done.returncode:
        raise UserError(f"{' '.join(args[:2])}: {done.stderr.strip() or 'failed'}")
    return done.stdout


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    state: str
    time_limit: str  # the partition's, as sinfo prints it


def partition_nodes(partition: str) -> tuple[str, list[Node]]:
    """The partition (the default one for "") and its nodes."""
    if not partition:
        names = _run(["sinfo", "-h", "-o", "%P"]).split()
        default = [p for p in names if p.endswith("*")]
        if not default:
            raise UserError("launch.partition: this cluster has no default partition; name one")
        partition = default[0].rstrip("*")
    rows = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%c|%m|%G|%l|%T"]).splitlines()
    if not rows:
        raise UserError(f"launch.partition: {partition!r} is not a partition of this cluster")
    nodes = {}
    for row in rows:
        name, cpus, mem, gres, limit, state = row.split("|")
        gpus = sum(int(g.group(1)) for g in re.finditer(r"gpu(?::[^:(,]+)?:(\d+)", gres))
        nodes[name] = Node(
            name,
            int(cpus.rstrip("+")),
            int(re.sub(r"\D", "", mem) or 0),
            gpus,
            state.rstrip("*~#!%$@^-").lower(),
            limit,
        )
    return partition, list(nodes.values())


def memory_mb(text: str) -> int:
    found = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not found:
        raise UserError(f"launch.mem: {text!r} is not a memory size (e.g. 64G)")
    return int(int(found.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[found.group(2)])


def check_request(
    partition: str, nodes: int, tasks_per_node: int, cpus_per_task: int, gpus_per_node: int, mem: str, time: str
) -> None:
    """Refuse, naming the setting, a request that no node of the partition can ever run."""
    name, found = partition_nodes(partition)
    limit = found[0].time_limit
    if limit not in ("infinite", "UNLIMITED", "n/a") and minutes(time) > minutes(limit, "the partition's limit"):
        raise UserError(f"launch.time: {time} is more than partition {name}'s limit of {limit}")
    cpus = tasks_per_node * cpus_per_task
    fit = [n for n in found if n.cpus >= cpus]
    if not fit:
        raise UserError(
            f"launch.cpus_per_task: {tasks_per_node} task(s) x {cpus_per_task} CPU(s) need {cpus} CPUs "
            f"on a node; partition {name}'s nodes have at most {max(n.cpus for n in found)}"
        )
    if gpus_per_node:
        fit = [n for n in fit if n.gpus >= gpus_per_node]
        if not fit:
            raise UserError(
                f"launch.gpus_per_node: {gpus_per_node} GPUs on a node; partition {name}'s nodes have "
                f"at most {max(n.gpus for n in found)}"
            )
    if mem:
        fit = [n for n in fit if n.memory_mb >= memory_mb(mem)]
        if not fit:
            raise UserError(
                f"launch.mem: {mem} per node; partition {name}'s nodes have at most "
                f"{max(n.memory_mb for n in found)} MB"
            )
    if len(fit) < nodes:
        raise UserError(f"launch.nodes: {nodes} nodes of this shape; partition {name} has {len(fit)}")


@dataclass
class JobState:
    state: str  # SLURM's: PENDING, RUNNING, COMPLETED, CANCELLED, ...
    reason: str  # why it waits ("" when it does not)

    def __post_init__(self):
        if self.reason.strip() == "None":  # squeue's and sacct's word for no reason
            self.reason = ""


def job_state(job_id: str) -> JobState | None:
    """The job's state now: squeue while SLURM holds it, sacct once it has ended; None when
    neither knows it (yet)."""
    # squeue fails on an id it no longer holds: sacct then has the answer
    try:
        queued = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
    except UserError:
        queued = ""
    row = queued.strip().splitlines()
    if row:
        state, reason = row[0].split("|", 1)
        return JobState(state, reason)
    rows = [
        r
        for r in _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,Reason"]).splitlines()
        if r.split("|")[0] == job_id
    ]
    if not rows:
        return None
    _, state, reason = rows[-1].split("|")
    return JobState(state.split()[0], reason)


def hopeless(state: JobState, partition: str) -> bool:
    """A pending job that will never start by itself."""
    if state.state != "PENDING" or not state.reason.startswith(HOPELESS):
        return False
    if state.reason.startswith("ReqNodeNotAvail"):
        return not any(n.state in UP for n in partition_nodes(partition)[1])
    return True


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])
