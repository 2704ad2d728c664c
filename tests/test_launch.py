"""The launcher against a real SLURM cluster (slurm/testcluster/start.sh) and without one."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piunet_dist.__main__ import main
from piunet_dist.core.config_load import load_config
from piunet_dist.data.packing import pack
from piunet_dist.data.shards import scene_names, shard_paths
from piunet_dist.data.synthetic import synthesise
from tests.helpers.runs import TINY_RUN, train_command
from tests.helpers.scene_tree import holds_real_oddities

pytestmark = pytest.mark.processes

ROOT = Path(__file__).parent.parent
TINY = [
    *TINY_RUN,
    "data.workers=0",
    "train.compile_loss=false",
    "train.l1_warmup_steps=2",
    "train.val_batch_size=1",
]


def slurm_available() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (make test starts slurm/testcluster when it can)"
    if not shutil.which("sbatch"):
        return "sbatch is not on the PATH"
    return None


needs_slurm = pytest.mark.skipif(
    slurm_available() is not None and os.environ.get("CI") != "true",
    reason=f"no SLURM test cluster: {slurm_available()}",
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("launchdata")
    synthesise(root / "scenes", 4, 0, ["NIR", "RED"], seed=5, workers=2)
    assert holds_real_oddities(root / "scenes")  # every command below meets them
    pack(root / "scenes", root / "shards", ["NIR", "RED"], val_fraction=0.25, workers=2, scenes_per_shard=2)
    return root / "shards"


def launch(*args, check=True, timeout=400, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "piunet_dist.launch", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"launch {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def events(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def job_id(stdout: str) -> str:
    return stdout.split("job ", 1)[1].split()[0]


def wait_for_job(job: str, timeout: float = 300) -> str:
    """The final state of a job (of every task, for an array) once it has ended."""
    deadline, states = time.time() + timeout, set()
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State", "-P"], capture_output=True, text=True)
        states = {s.split(" ")[0] for s in out.stdout.split()}
        if states and not states & {"PENDING", "RUNNING", "REQUEUED", "COMPLETING"}:
            return "COMPLETED" if states == {"COMPLETED"} else ",".join(sorted(states))
        assert time.time() < deadline, f"job {job} still {states}"
        time.sleep(2)


def sbatch(*args: str) -> str:
    """Submit one of slurm/'s scripts as a user would, with this test's Python; the job's id."""
    return subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PIUNET_PYTHON": sys.executable},
    ).stdout.strip()


def wait_until(path: Path, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, what
        time.sleep(0.5)


def sacct_nodes(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "NodeList%40"], capture_output=True, text=True)
    return out.stdout.strip()


def test_local_cluster_runs_the_same_two_process_job(shards, tmp_path):
    run_dir = tmp_path / "local"
    launch(
        "--config",
        "configs/demo.yaml",
        "--cluster",
        "local",
        "--tasks-per-node",
        "2",
        "--wait",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=4",
        "train.ckpt_every=2",
        "train.val_every=2",
    )
    assert events(run_dir)[0]["world_size"] == 2
    assert (run_dir / "checkpoints/step_0000004").is_dir()


def test_auto_runs_locally_where_no_controller_answers_and_skips_a_trained_run(shards, tmp_path):
    run_dir = tmp_path / "auto"
    no_cluster = {"SLURM_CONF": str(tmp_path / "no-slurm.conf")}  # sinfo, if installed, finds no cluster
    args = (
        "--config",
        "configs/demo.yaml",
        "--wait",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=2",
        "train.ckpt_every=2",
        "train.val_every=2",
    )
    first = launch(*args, env=no_cluster)
    assert "(local): run dir" in first.stdout and "done" in first.stdout
    if shutil.which("sbatch"):
        assert f"no SLURM controller answers (SLURM_CONF={no_cluster['SLURM_CONF']} is no file)" in first.stderr
        assert "running local processes" in first.stderr
    again = launch(*args, env=no_cluster)
    assert again.stdout.strip() == f"{run_dir}: trained to train.max_steps=2 already; not submitted"
    assert [e["event"] for e in events(run_dir)].count("start") == 1
    # the recipe changed since (a new version's configs/demo.yaml): the finished run is not taken as done
    other = launch(*args, "data.augment=false", env=no_cluster, check=False)
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.strip().splitlines()[-1] == (
        f"piunet-dist launch: error: {run_dir}: resuming with settings that define another run "
        "(data.augment: True -> False); give the run's own, or choose another run_dir"
    )
    assert [e["event"] for e in events(run_dir)].count("start") == 1


def test_the_piunet_dist_launch_command_is_the_launcher(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "piunet_dist",
            "launch",
            "--config",
            "configs/demo.yaml",
            "--time",
            "soon",
            "--cluster",
            "local",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.strip() == (
        "piunet-dist launch: error: --time: 'soon' is not a SLURM time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)"
    )


def test_bad_flags_are_one_line_errors(tmp_path):
    result = launch("--config", "configs/demo.yaml", "--time", "soon", "--cluster", "local", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "piunet-dist launch: error: --time: 'soon' is not a SLURM time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)"
    )
    run_dir = tmp_path / "uneven"
    result = launch(
        "--config",
        "configs/demo.yaml",
        "--cluster",
        "local",
        "--tasks-per-node",
        "3",
        f"run_dir={run_dir}",
        "train.batch_size=8",
        check=False,
    )  # checked before anything is sent
    assert result.returncode == 2 and result.stderr.strip() == (
        "piunet-dist launch: error: train.batch_size: 8 patches (train.grad_accum=1) do not split evenly over "
        "3 processes"
    )
    assert not run_dir.exists()
    result = launch("--config", "configs/demo.yaml", "--nodes", "2", "--cluster", "local", check=False)
    assert "local processes run on this machine only" in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    result = launch(
        "evaluate",
        "--runs",
        str(tmp_path / "run"),
        "--batch-size",
        "0",
        "--out",
        str(tmp_path / "eval"),
        "--cluster",
        "local",
        check=False,
    )
    assert (
        result.returncode == 2
        and result.stderr.startswith("usage: python -m piunet_dist.launch evaluate")
        and result.stderr.strip().endswith(
            "error: argument --batch-size: expected auto or a positive whole number, got '0'"
        )
    )
    assert not (tmp_path / "eval").exists()  # nothing sent, nothing written


@needs_slurm
@pytest.mark.slurm
def test_two_nodes_one_task_each_train_and_checkpoint(shards, tmp_path):
    run_dir = tmp_path / "two"
    result = launch(
        "--config",
        "configs/demo.yaml",
        "--nodes",
        "2",
        "--gpus-per-node",
        "0",
        "--cpus-per-task",
        "1",
        "--wait",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=4",
        "train.ckpt_every=2",
        "train.val_every=2",
    )
    assert "(slurm)" in result.stdout and "done" in result.stdout
    assert events(run_dir)[0]["world_size"] == 2
    assert sacct_nodes(job_id(result.stdout)) == "n[1-2]"
    assert (run_dir / "checkpoints/step_0000004").is_dir()


@needs_slurm
@pytest.mark.slurm
def test_preempted_job_requeues_and_finishes_from_its_checkpoint(shards, tmp_path):
    run_dir = tmp_path / "preempt"
    config = tmp_path / "run.yaml"
    config.write_text(f"extends: {ROOT / 'configs/demo.yaml'}\n")
    result = launch(
        "--config",
        str(config),
        "--nodes",
        "2",
        "--gpus-per-node",
        "0",
        "--cpus-per-task",
        "1",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=60",
        "train.ckpt_every=10",
        "train.val_every=1000",
        "train.log_every=1",
    )
    job = job_id(result.stdout)
    wait_until(run_dir / "checkpoints/step_0000010", 240, "no checkpoint before the deadline")
    config.write_text(config.read_text() + "train:\n  lr: 0.5\n")  # edited after submission
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints/step_0000060").is_dir():
        assert time.time() < deadline, f"the requeued job did not finish: {events(run_dir)[-3:]}"
        time.sleep(1)
    log = events(run_dir)
    requeues = [e for e in log if e["event"] == "requeue"]
    starts = [e for e in log if e["event"] == "start"]
    assert len(requeues) == 1 and requeues[0]["restart_count"] == 0
    assert len(starts) == 2 and starts[1]["resumed_from"] is not None
    resumed = int(starts[1]["resumed_from"].split("_")[1])
    second = log.index(starts[1])
    before = [e["step"] for e in log[:second] if e["event"] == "train"]
    after = [e["step"] for e in log[second:] if e["event"] == "train"]
    assert after == list(range(resumed + 1, 61))  # nothing lost after the checkpoint
    assert before[:resumed] == list(range(1, resumed + 1))  # and what came before was all there
    # redone: at most train.ckpt_every steps, when the signal lands while the next checkpoint is written
    assert max(before) - resumed <= 10
    assert "lr: 0.003" in (run_dir / "config.yaml").read_text()  # the job kept the config it was sent with


@needs_slurm
@pytest.mark.slurm
def test_the_one_requeue_limit_is_honoured_and_its_end_logged(shards, tmp_path):
    run_dir = tmp_path / "norequeue"
    result = launch(
        "--config",
        "configs/demo.yaml",
        "--cpus-per-task",
        "1",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=40",
        "train.ckpt_every=10",
        "train.val_every=1000",
        "train.log_every=1",
        "launch.max_requeues=0",
    )
    job = job_id(result.stdout)
    wait_until(run_dir / "checkpoints/step_0000010", 240, "no checkpoint before the deadline")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert wait_for_job(job) == "FAILED"  # not requeued: it ends, as a job at its time limit would
    log = events(run_dir)
    assert [e["event"] for e in log if e["event"].startswith("requeue")] == ["requeue_refused"]
    assert sum(e["event"] == "start" for e in log) == 1


@needs_slurm
@pytest.mark.slurm
def test_band_seed_array_trains_every_member(shards, tmp_path):
    run_dir = tmp_path / "sweep"
    result = launch(
        "--config",
        "configs/demo.yaml",
        "--bands",
        "NIR",
        "RED",
        "--seeds",
        "0",
        "1",
        "--cpus-per-task",
        "1",
        "--wait",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=2",
        "train.ckpt_every=2",
        "train.val_every=2",
    )
    ids = {job_id(line) for line in result.stdout.splitlines() if line.startswith("job ") and "run dir" in line}
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1  # one array
    for member in ("nir-seed0", "nir-seed1", "red-seed0", "red-seed1"):
        cfg = (run_dir / member / "config.yaml").read_text()
        assert f"band: {member[:3].upper()}" in cfg and f"seed: {member[-1]}" in cfg
        assert (run_dir / member / "checkpoints/step_0000002").is_dir()


@needs_slurm
@pytest.mark.slurm
def test_a_sweep_of_two_settings_is_one_array_followed_live_and_tabled_per_grid_point(shards, tmp_path):
    run_dir = tmp_path / "grid"
    args = [
        "--config",
        "configs/demo.yaml",
        "--sweep",
        "train.lr=1e-3,3e-3",
        "model.n_tefa=1,2",
        "--seeds",
        "0",
        "--cpus-per-task",
        "1",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.max_steps=4",
        "train.ckpt_every=2",
        "train.val_every=2",
        "train.log_every=2",
    ]
    result = launch(*args, "--wait")
    names = [
        "nir-lr1e-3-n_tefa1-seed0",
        "nir-lr1e-3-n_tefa2-seed0",
        "nir-lr3e-3-n_tefa1-seed0",
        "nir-lr3e-3-n_tefa2-seed0",
    ]
    assert sorted(p.name for p in run_dir.iterdir() if (p / "config.yaml").is_file()) == names
    ids = {job_id(line) for line in result.stdout.splitlines() if line.startswith("job ") and "run dir" in line}
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1  # one array
    for name in names:
        cfg = load_config(run_dir / name / "config.yaml")
        assert (cfg.train.lr, cfg.model.n_tefa, cfg.sweep) == (float(name[6:10]), int(name[17]), {})
    # the live view, in a log: a line per change, the last of each run the figures status gives
    shown = launch("status", str(run_dir)).stdout.splitlines()
    assert shown[0].split()[:8] == ["run", "job", "state", "step", "loss", "val_cpsnr", "samples_s", "eta"]
    assert shown[0].split()[8:] == ["model.n_tefa", "train.lr"]  # the grid
    for line in shown[1:]:
        run, job, state, step, loss, val = line.split()[:6]
        said = [s for s in result.stdout.splitlines() if s.startswith(f"{run}: job {job}")]
        assert said and said[-1].startswith(f"{run}: job {job} ")  # one view line (or more) per run
        last = said[-1]
        assert f"step {step}" in last and f"loss {loss}" in last and f"val cPSNR {val} dB" in last, last
        assert state == "COMPLETED" and step == "4/4"
    # sent again, nothing is trained again
    again = launch(*args)
    assert all(f"{run_dir / n}: trained to train.max_steps=4 already; not submitted" in again.stdout for n in names)
    assert "job " not in again.stdout
    # the evaluation and the report give the grid points of the band, the best on validation
    out = tmp_path / "eval"
    assert main(["evaluate", "--runs", *(str(run_dir / n) for n in names), "--out", str(out)]) == 0
    grid = json.loads((out / "summary.json").read_text())["bands"]["NIR"]["grid"]
    assert [p["settings"] for p in grid["points"]] == [
        {"model.n_tefa": n, "train.lr": lr} for lr in (0.001, 0.003) for n in (1, 2)
    ]
    best = max(grid["points"], key=lambda p: p["cpsnr_mean"])
    assert grid["best"] == best["settings"] and grid["best_by"] == "cpsnr_mean"
    assert main(["report", str(out), "--out", str(out / "report")]) == 0
    page = (out / "report" / "report.md").read_text()
    assert "### Sweep" in page and "| model.n_tefa | train.lr | members | cPSNR mean (dB) |" in page


@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=[needs_slurm, pytest.mark.slurm])])
def test_a_launch_with_a_failed_member_ends_with_a_summary_of_every_job(cluster, shards, tmp_path):
    """One member cannot read its data and fails; the other trains. The launch's last lines are
    the summary, whatever order the jobs ended in."""
    missing = tmp_path / "no-shards"
    result = subprocess.run(
        [sys.executable, "-m", "piunet_dist.launch", "--config", "configs/demo.yaml", "--cluster", cluster]
        + ["--cpus-per-task", "1", "--wait", f"run_dir={tmp_path / 'mixed'}", *TINY, "train.max_steps=6"]
        + ["--sweep", f"data.shards={shards},{missing}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order it was written
        text=True,
        timeout=400,
    )
    said = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout
    good, bad = sorted((tmp_path / "mixed").glob("nir-*-seed0"), key=lambda d: str(missing).replace("/", "_") in d.name)
    jobs = {json.loads(line)["job_id"]: d for d in (good, bad) for line in (d / "jobs.jsonl").read_text().splitlines()}
    bad_job = next(j for j, d in jobs.items() if d == bad)
    good_job = next(j for j, d in jobs.items() if d == good)
    # which job ends first is the scheduler's choice; the summary follows both, in either order
    assert f"job {good_job}: done" in said[:-2] and any(x.startswith(f"job {bad_job}: failed") for x in said[:-2]), said
    assert said[-2] == "launch: 1 of 2 jobs succeeded, 1 failed:", said[-6:]
    line = re.fullmatch(rf"  {re.escape(str(bad))}: job {bad_job}: failed: UserError: (.*) \(log: (.*)\)", said[-1])
    assert line and line[1] == f"{missing}: no manifest.json (not packed here, or the pack did not finish)", said[-1]
    assert Path(line[2]).is_file() and "no manifest.json" in Path(line[2]).read_text()
    assert (good / "checkpoints/step_0000006").is_dir()


@pytest.mark.faults
def test_a_member_killed_from_outside_is_named_as_killed_in_the_summary(shards, tmp_path):
    """kill -9 leaves no error in a job's log: the summary says what that means."""
    run_dir = tmp_path / "killed"
    waiting = subprocess.Popen(
        [sys.executable, "-m", "piunet_dist.launch", "--config", "configs/demo.yaml", "--cluster", "local"]
        + ["--cpus-per-task", "1", "--gpus-per-node", "0", "--wait", f"run_dir={run_dir}", f"data.shards={shards}"]
        + [*TINY, "train.max_steps=100000", "train.log_every=1", "train.val_every=100000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while not ((run_dir / "metrics.jsonl").is_file() and '"event": "train"' in (run_dir / "metrics.jsonl").read_text()):
        assert time.time() < deadline and waiting.poll() is None, "the job did not start training"
        time.sleep(1)
    job = json.loads((run_dir / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    # the local job is submitit's controller; the training is its child
    trainer = int(Path(f"/proc/{job}/task/{job}/children").read_text().split()[0])
    os.kill(trainer, 9)
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 1
    assert out.splitlines()[-2:] == [
        "launch: 0 of 1 job succeeded, 1 failed:",
        f"  {run_dir}: job {job}: ended without a result or an error of its own: killed by a signal (kill -9, "
        f"the out-of-memory killer: launch.mem, or a crash) (log: {run_dir}/slurm/{job}_0_log.err)",
    ], out[-2000:]


@needs_slurm
@pytest.mark.slurm
def test_dry_run_prints_the_sbatch_script(tmp_path):
    result = launch(
        "--config",
        "configs/demo.yaml",
        f"run_dir={tmp_path / 'dry'}",
        "--nodes",
        "2",
        "train.lr=1e-3",
        "--partition",
        "debug",
        "--time",
        "30:00",
        "--dry-run",
    )  # mixed, any order
    script = result.stdout
    assert script.startswith("#!/bin/bash") and "#SBATCH --nodes=2" in script
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=30" in script  # SLURM's M:S
    assert not (tmp_path / "dry" / "slurm").exists() or not any((tmp_path / "dry" / "slurm").glob("*.pkl"))


@needs_slurm
@pytest.mark.slurm
def test_stop_sh_stops_the_test_cluster_and_start_sh_brings_it_back():
    stopped = subprocess.run(["slurm/testcluster/stop.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert subprocess.run(["sinfo"], capture_output=True, timeout=60).returncode != 0  # no controller answers
    started = subprocess.run(["slurm/testcluster/start.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={os.environ['SLURM_CONF']}"
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()
    assert states == ["idle", "idle"]


@needs_slurm
@pytest.mark.slurm
def test_sbatch_templates_pass_test_only():
    for template, args in (
        ("slurm/train.sbatch", ["--nodes", "2", "configs/demo.yaml"]),
        ("slurm/evaluate.sbatch", ["runs", "runs/eval"]),
        ("slurm/pack.sbatch", ["data/probav", "shards/probav"]),
    ):
        result = subprocess.run(
            ["sbatch", "--test-only", "--cpus-per-task", "1", template, *args], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0 and "to start at" in result.stderr, (template, result.stderr)


@needs_slurm
@pytest.mark.slurm
def test_train_sbatch_requeues_no_more_than_launch_max_requeues(shards, tmp_path):
    run_dir, out = tmp_path / "sbatch", tmp_path / "sbatch.out"
    job = sbatch(
        *("--output", str(out), "slurm/train.sbatch", "configs/demo.yaml", f"run_dir={run_dir}"),
        *(f"data.shards={shards}", *TINY, "train.max_steps=100000", "launch.max_requeues=0"),
    )
    try:
        wait_until(run_dir / "metrics.jsonl", 120, "the run's first event")
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)  # SLURM's warning before the end
        refused = f"[train.sbatch] USR1: not requeued: job {job} restarted 0 times, launch.max_requeues=0"
        deadline = time.time() + 60
        while refused not in out.read_text() and time.time() < deadline:
            time.sleep(1)
        assert refused in out.read_text(), out.read_text()[-2000:]

        # and training goes on in the same job: more steps logged, the job still running
        def logged():
            return (run_dir / "metrics.jsonl").read_text().count("\n")

        before = logged()
        while logged() == before and time.time() < deadline + 60:
            time.sleep(1)
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        assert logged() > before and state.strip() == "RUNNING", (state, out.read_text()[-2000:])
    finally:
        subprocess.run(["scancel", job])


@needs_slurm
@pytest.mark.slurm
def test_train_sbatch_runs_a_tiny_job_to_completion(shards, tmp_path):
    run_dir, out = tmp_path / "sbatch", tmp_path / "sbatch.out"
    job = sbatch(
        *("--nodes", "2", "--output", str(out), "slurm/train.sbatch", "configs/demo.yaml", f"run_dir={run_dir}"),
        *(f"data.shards={shards}", *TINY, "train.max_steps=4", "train.ckpt_every=2", "train.val_every=2"),
    )
    assert wait_for_job(job) == "COMPLETED", out.read_text()[-3000:]
    assert events(run_dir)[0]["world_size"] == 2 and sacct_nodes(job) == "n[1-2]"
    assert (run_dir / "checkpoints/step_0000004").is_dir()
    # a run started by hand is one of status's rows, with the job SLURM gave it
    shown = launch("status", str(tmp_path)).stdout.splitlines()
    row = next(line.split() for line in shown[1:] if line.startswith(str(run_dir)))
    assert row[:4] == [str(run_dir), job, "COMPLETED", "4/4"]


@pytest.fixture(scope="module")
def two_runs(shards, tmp_path_factory):
    """A tiny trained run per band: the members an evaluation array is made of."""
    root = tmp_path_factory.mktemp("members")
    runs = []
    for band in ("NIR", "RED"):
        run_dir = root / band.lower()
        subprocess.run(
            train_command(
                run_dir,
                shards,
                f"data.band={band}",
                *TINY,
                "train.max_steps=2",
                "train.val_every=2",
                "train.ckpt_every=2",
            ),
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        runs.append(run_dir)
    return runs


def evaluation(runs, out, *flags):
    result = launch(
        "evaluate",
        "--runs",
        *map(str, runs),
        "--split",
        "val",
        "--self-ensemble",
        "1",
        "--cpus-per-task",
        "1",
        "--out",
        str(out),
        "--wait",
        *flags,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["bands"]) == {"NIR", "RED"}
    assert summary["bands"]["NIR"]["members"].keys() == {"nir"}
    # the scores are shown where the command was given, not only in the scoring job's log
    nir = summary["bands"]["NIR"]
    shown = f"NIR: baseline {nir['baseline_cpsnr']:.2f} dB, bicubic mean {nir['bicubic_mean_cpsnr']:.2f}, nir "
    assert shown in result.stdout and result.stdout.rstrip().endswith(str(out / "summary.json")), result.stdout
    return result


@needs_slurm
@pytest.mark.slurm
def test_evaluate_sbatch_scores_both_bands_in_one_job(shards, two_runs, tmp_path):
    out = tmp_path / "eval"
    job = sbatch(
        *("--output", str(tmp_path / "ev-%j.out"), "slurm/evaluate.sbatch", str(two_runs[0].parent), str(out)),
        *("--split", "val", "--self-ensemble", "1"),
    )
    assert wait_for_job(job) == "COMPLETED", [p.read_text()[-2000:] for p in tmp_path.glob("ev-*.out")]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["bands"]) == {"NIR", "RED"}
    for band in ("NIR", "RED"):
        assert summary["bands"][band]["scenes"] == len(scene_names(shard_paths(shards, band, "val")))


def test_local_evaluation_predicts_then_scores(two_runs, tmp_path):
    evaluation(two_runs, tmp_path / "eval", "--cluster", "local")


@needs_slurm
@pytest.mark.slurm
def test_evaluation_array_then_scoring_job_after_it(two_runs, tmp_path):
    result = evaluation(two_runs, tmp_path / "eval")
    ids = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("job ") and "(slurm)" in line]
    predict, score = ids[:-1], ids[-1]
    assert len(predict) == 2 and {i.split("_")[0] for i in predict} == {predict[0].split("_")[0]}  # one array

    def times(job):
        out = (
            subprocess.run(
                ["sacct", "-n", "-X", "-j", job, "-o", "Start,End,State", "-P"], capture_output=True, text=True
            )
            .stdout.strip()
            .splitlines()[0]
        )
        return out.split("|")

    ends = [times(i)[1] for i in predict]
    start, _, state = times(score)
    assert state == "COMPLETED" and start >= max(ends)  # afterok: scoring only once every task is done


@needs_slurm
@pytest.mark.slurm
def test_pack_sbatch_packs_bands_and_splits_as_an_array_then_merges(tmp_path):
    from piunet_dist.data.shards import load_manifest, verify

    synthesise(tmp_path / "scenes", 4, 1, ["NIR", "RED"], seed=2, workers=2)
    pack(tmp_path / "scenes", tmp_path / "whole", ["NIR", "RED"], val_fraction=0.25, workers=2, scenes_per_shard=2)
    array = sbatch(
        *("--chdir", str(ROOT), "--output", str(tmp_path / "pack-%A_%a.out"), "slurm/pack.sbatch"),
        *(str(tmp_path / "scenes"), str(tmp_path / "out"), "--val-fraction", "0.25", "--scenes-per-shard", "2"),
    )
    assert wait_for_job(array) == "COMPLETED"
    deadline = time.time() + 120
    while not (tmp_path / "out" / "manifest.json").is_file():
        assert time.time() < deadline, "the merge job did not write the manifest"
        time.sleep(1)
    key = lambda m: sorted((s["path"], s["sha256"]) for s in m["shards"])  # noqa: E731
    assert key(load_manifest(tmp_path / "out")) == key(load_manifest(tmp_path / "whole"))
    assert verify(tmp_path / "out") == []


@pytest.mark.parametrize(
    "text, minutes",
    [("30", 30), ("30:00", 30), ("30:01", 31), ("1:30:00", 90), ("2-0", 2880), ("1-12:30", 2190), ("1-00:00:30", 1441)],
)
def test_time_limits_in_every_format_slurm_reads(text, minutes):
    from piunet_dist.launch.slurm import minutes as read

    assert read(text) == minutes


def test_the_tasks_of_an_array_meet_on_ports_of_their_own_below_the_ephemeral_range():
    from piunet_dist.launch.jobs import rendezvous_port

    ports = [rendezvous_port("434", str(task)) for task in range(64)]
    assert len(set(ports)) == 64 and all(20000 <= port < 32768 for port in ports)
    assert rendezvous_port("435", "0") not in ports  # the next array starts elsewhere


def test_flags_and_settings_mix_in_any_order():
    from piunet_dist.__main__ import build_command_parser
    from piunet_dist.launch.cli import build_parser

    args = build_parser().parse_intermixed_args(
        ["--config", "x.yaml", "data.band=NIR", "--nodes", "2", "train.lr=1e-3", "--wait"]
    )
    assert (args.nodes, args.wait, args.overrides) == (2, True, ["data.band=NIR", "train.lr=1e-3"])
    args = build_command_parser("train").parse_intermixed_args(["data.band=RED", "--config", "y.yaml", "train.lr=1"])
    assert (str(args.config), args.overrides) == ("y.yaml", ["data.band=RED", "train.lr=1"])
    usage = launch("--help").stdout
    assert all(f"piunet_dist.launch {command}" in usage for command in ("evaluate", "status", "cancel"))


@needs_slurm
@pytest.mark.slurm
def test_a_request_no_node_can_run_is_refused_before_it_is_sent(shards, tmp_path):
    run_dir = tmp_path / "big"
    result = launch(
        "--config",
        "configs/demo.yaml",
        "--nodes",
        "2",
        "--gpus-per-node",
        "0",
        "--cpus-per-task",
        "4",
        "--wait",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "piunet-dist launch: error: launch.cpus_per_task: 1 task(s) x 4 CPU(s) need 4 "
        "CPUs on a node; partition debug's nodes have at most 2"
    )
    assert not run_dir.exists()
    result = launch(
        "--config",
        "configs/demo.yaml",
        "--nodes",
        "2",
        "--cpus-per-task",
        "1",
        "--cluster",
        "slurm",
        f"run_dir={run_dir}",
        "train.batch_size=3",
        check=False,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.strip() == (
        "piunet-dist launch: error: train.batch_size: 3 patches (train.grad_accum=1) do not split evenly over "
        "2 processes"
    )
    assert not run_dir.exists()


@needs_slurm
@pytest.mark.slurm
def test_a_job_pending_for_a_hopeless_reason_is_cancelled_and_named(tmp_path, capsys):
    from piunet_dist.core.config_load import load_config
    from piunet_dist.launch.following import Watched, wait_for
    from piunet_dist.launch.slurm import job_state
    from piunet_dist.launch.submitting import make_executor

    # the partition's limit drops below the job's time after the launcher's check: SLURM
    # queues the job, which would then wait for ever
    subprocess.run(["scontrol", "update", "PartitionName=debug", "MaxTime=1"], check=True)
    try:
        cfg = load_config(None, ["launch.cpus_per_task=1", "launch.time=5"])
        job = make_executor(cfg, tmp_path, "hopeless", "slurm").submit(print, "never")
        started = time.time()
        assert wait_for([Watched(job, "hopeless")], "debug") == 1
        assert time.time() - started < 90
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "MaxTime=UNLIMITED"], check=True)
    assert job_state(job.job_id).state == "CANCELLED"
    said = capsys.readouterr().err  # SLURM gives either reason, depending on when its scheduler looked
    assert re.search(
        rf"job {job.job_id}: cancelled: it waited for (PartitionConfig|PartitionTimeLimit), which will "
        "not change by itself",
        said,
    ), said


@needs_slurm
@pytest.mark.slurm
def test_status_then_cancel_and_wait_reports_the_cancelled_job_promptly(shards, tmp_path):
    run_dir = tmp_path / "long"
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piunet_dist.launch",
            "--config",
            "configs/demo.yaml",
            "--cpus-per-task",
            "1",
            "--gpus-per-node",
            "0",  # a long run on CPU jobs, meant
            "--wait",
            f"run_dir={run_dir}",
            f"data.shards={shards}",
            *TINY,
            "train.max_steps=100000",
            "train.log_every=1",
            "train.val_every=100000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not ((run_dir / "metrics.jsonl").is_file() and '"event": "train"' in (run_dir / "metrics.jsonl").read_text()):
        assert time.time() < deadline and waiting.poll() is None, "the job did not start training"
        time.sleep(1)
    job = json.loads((run_dir / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    shown = launch("status", str(run_dir)).stdout.splitlines()
    assert shown[0].split() == ["run", "job", "state", "step", "loss", "val_cpsnr", "samples_s", "eta"]
    row = shown[1].split()
    assert row[:3] == [str(run_dir), job, "RUNNING"] and row[3].endswith("/100000")
    assert launch("cancel", str(tmp_path)).stdout.strip() == f"{run_dir}: cancelled job {job} (RUNNING)"
    cancelled = time.time()
    _, err = waiting.communicate(timeout=120)
    assert time.time() - cancelled < 90 and waiting.returncode == 1
    assert f"job {job}: CANCELLED" in err
