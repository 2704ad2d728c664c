"""Experiment trackers (train.log_with, eval.log_with) for real, offline: MLflow's store in the
run directory and W&B in offline mode, written by launched, resumed and evaluated runs and
read back."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from piunet_dist.data.packing import pack
from piunet_dist.data.synthetic import synthesise
from tests.helpers.runs import TINY_RUN, train_command
from tests.helpers.wandb_offline import offline_run

pytestmark = pytest.mark.processes

ROOT = Path(__file__).parent.parent
TINY = [*TINY_RUN, "data.workers=0", "train.compile_loss=false", "train.l1_warmup_steps=2", "train.val_batch_size=1"]
TRACKERS = "train.log_with=tensorboard,wandb,mlflow"
# no server, no network: W&B writes its runs under the run directory, MLflow its store there
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def environment(**more) -> dict:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | OFFLINE | more


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackdata")
    synthesise(root / "scenes", 6, 0, ["NIR"], seed=3, workers=2)
    pack(root / "scenes", root / "shards", ["NIR"], val_fraction=0.34, workers=2, scenes_per_shard=1)
    return root / "shards"


def events(run_dir: Path, event: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def mlflow_run(run_dir: Path):
    ids = json.loads((run_dir / "trackers.json").read_text())
    assert ids["mlflow_uri"] == f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(ids["mlflow_uri"])
    return client, client.get_run(ids["mlflow"])


def history(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def wandb_runs(run_dir: Path) -> list[dict]:
    return [offline_run(f) for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def test_a_sweep_of_two_members_logs_two_tracker_runs_and_their_evaluation_goes_to_them(shards, tmp_path):
    sweep = tmp_path / "lrs"
    result = subprocess.run(
        [sys.executable, "-m", "piunet_dist.launch", "--config", "configs/demo.yaml", "--cluster", "local"]
        + ["--cpus-per-task", "1", "--gpus-per-node", "0", "--wait", f"run_dir={sweep}", f"data.shards={shards}"]
        + [*TINY, "train.max_steps=4", "train.val_every=2", "train.log_every=1", TRACKERS]
        + ["--sweep", "train.lr=1e-3,3e-3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=environment(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    members = sorted(sweep.glob("nir-*-seed0"))
    assert len(members) == 2
    for member in members:
        lr = yaml.safe_load((member / "config.yaml").read_text())["train"]["lr"]
        val = [(e["step"], e["val_cpsnr"]) for e in events(member, "val")]
        assert [s for s, _ in val] == [2, 4]

        client, run = mlflow_run(member)
        assert run.info.run_name == member.name and run.info.status == "FINISHED"
        assert {k: run.data.tags[k] for k in ("band", "seed", "sweep")} == {"band": "NIR", "seed": "0", "sweep": "lrs"}
        assert float(run.data.params["train.lr"]) == lr and run.data.params["run_dir"] == str(member)
        assert history(client, run, "val/val_cpsnr") == val
        assert [s for s, _ in history(client, run, "train/loss")] == [1, 2, 3, 4]

        (logged,) = wandb_runs(member)
        assert logged["id"] == json.loads((member / "trackers.json").read_text())["wandb"]
        assert logged["name"] == member.name and logged["group"] == "lrs"
        assert set(logged["tags"]) == {"band:NIR", "seed:0", "sweep:lrs"}
        assert (
            logged["config"]["train.lr"] == lr
            and logged["config"]["train.log_with"] == '["tensorboard", "wandb", "mlflow"]'
        )
        assert [(r["_step"], r["val/val_cpsnr"]) for r in logged["history"] if "val/val_cpsnr" in r] == val
        assert (member / "tensorboard").is_dir()
    assert len({json.loads((m / "trackers.json").read_text())["wandb"] for m in members}) == 2

    # their evaluation, with a weights file beside them, goes to their runs and to one of its own
    weights = tmp_path / "published.safetensors"
    shutil.copy(members[0] / "best/model.safetensors", weights)
    out = tmp_path / "eval"
    evaluated = subprocess.run(
        [sys.executable, "-m", "piunet_dist", "evaluate", "--runs", *map(str, members), f"{weights}:NIR"]
        + ["--shards", str(shards), "--split", "val", "--out", str(out), "--log-with", "tensorboard,wandb,mlflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment(),
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    band = summary["bands"]["NIR"]
    for member in members:
        client, run = mlflow_run(member)  # the training's own run, continued
        assert len(client.search_runs([run.info.experiment_id])) == 1
        step = summary["members"][member.name]["weights_step"]
        assert history(client, run, "eval/val_cpsnr") == [(step, band["members"][member.name])]
        assert run.data.metrics["eval/val_score"] == band["members_score"][member.name]
        fit = band["calibration_fit"]["members"][member.name]["after"]["nll"]
        assert run.data.metrics["eval/val_nll_calibrated"] == fit
        trained, evaluation = wandb_runs(member)
        assert trained["id"] == evaluation["id"]
        (row,) = evaluation["history"]
        assert row["eval/val_cpsnr"] == band["members"][member.name] and row["eval/weights_step"] == step
        tensorboard = EventAccumulator(str(member / "tensorboard"))
        tensorboard.Reload()
        assert [(e.step, e.value) for e in tensorboard.Scalars("eval/val_cpsnr")] == [
            (step, pytest.approx(band["members"][member.name]))
        ]

    client, run = mlflow_run(out / "NIR")
    assert run.info.run_name == "NIR" and run.data.tags["split"] == "val"
    assert run.data.metrics["eval/val_cpsnr"] == band["ensemble_cpsnr"]
    assert run.data.metrics["eval/val_cpsnr_member_published"] == band["members"]["published"]
    assert run.data.metrics["eval/val_nll_calibrated"] == band["calibration_fit"]["ensemble"]["after"]["nll"]
    figures = ["figures/calibration_NIR.png", "figures/panels_NIR.png", "figures/scenes_NIR.png"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == figures
    (evaluation,) = wandb_runs(out / "NIR")
    assert evaluation["history"][0]["eval/val_cpsnr"] == band["ensemble_cpsnr"]
    images = [r for r in evaluation["history"] if any(k.endswith("/_type") for k in r)]
    assert sorted(k for r in images for k in r if k.endswith("/_type")) == [
        "figures/calibration_NIR/_type",
        "figures/panels_NIR/_type",
        "figures/scenes_NIR/_type",
    ]
    tensorboard = EventAccumulator(str(out / "NIR" / "tensorboard"))
    tensorboard.Reload()
    assert sorted(tensorboard.Tags()["images"]) == [
        "figures/calibration_NIR",
        "figures/panels_NIR",
        "figures/scenes_NIR",
    ]
    assert not (ROOT / "mlruns").exists() and not (tmp_path / "mlruns").exists()  # artifacts stay in the run's own


def test_a_stopped_and_resumed_run_continues_its_tracker_runs(shards, tmp_path):
    run_dir = tmp_path / "run"
    command = train_command(run_dir, shards, *TINY, "train.max_steps=16", "train.val_every=2", "train.ckpt_every=2")
    command += ["train.log_every=1", TRACKERS]
    metrics = run_dir / "metrics.jsonl"
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=environment())
    while proc.poll() is None and not (metrics.is_file() and '"event": "val"' in metrics.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", err)
    assert proc.returncode == 2 and stopped, err[-2000:]
    step = int(stopped[1])
    ids = json.loads((run_dir / "trackers.json").read_text())

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
    val = [(e["step"], e["val_cpsnr"]) for e in events(run_dir, "val")]
    assert val[0][0] <= step < val[-1][0] == 16

    client, run = mlflow_run(run_dir)
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [ids["mlflow"]]
    assert [s for s, _ in history(client, run, "train/loss")] == list(range(1, 17))
    assert history(client, run, "val/val_cpsnr") == val

    before, after = wandb_runs(run_dir)  # one offline directory per process, both the same W&B run
    assert before["id"] == after["id"] == ids["wandb"]
    assert [r["_step"] for r in before["history"]] == list(range(1, step + 1))
    assert [r["_step"] for r in after["history"]] == list(range(step + 1, 17))
    rows = before["history"] + after["history"]
    assert [(r["_step"], r["val/val_cpsnr"]) for r in rows if "val/val_cpsnr" in r] == val


def test_a_tracker_not_installed_is_one_line_naming_its_package_before_anything_is_written(shards, tmp_path):
    hidden = tmp_path / "without-wandb"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text("import sys\n\nsys.modules['wandb'] = None  # as if not installed\n")
    env = environment(PYTHONPATH=str(hidden))
    run_dir = tmp_path / "run"
    said = "train.log_with: wandb is not installed here: pip install 'piunet-dist[wandb]'"
    trained = subprocess.run(
        train_command(run_dir, shards, "train.log_with=wandb"), cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert trained.returncode == 2 and trained.stderr.strip() == f"piunet-dist train: error: {said}", trained.stderr
    launched = subprocess.run(
        [sys.executable, "-m", "piunet_dist.launch", "--config", "configs/demo.yaml", "--cluster", "local"]
        + [f"run_dir={run_dir}", f"data.shards={shards}", "train.log_with=tensorboard,wandb", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert launched.returncode == 2 and launched.stderr.strip().endswith(said), launched.stderr
    out = tmp_path / "eval"
    evaluated = subprocess.run(
        [sys.executable, "-m", "piunet_dist", "evaluate", "--runs", f"{tmp_path / 'w.safetensors'}:NIR"]
        + ["--shards", str(shards), "--out", str(out), "--log-with", "mlflow,wandb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    said = "eval.log_with: wandb is not installed here: pip install 'piunet-dist[wandb]'"
    assert evaluated.returncode == 2 and evaluated.stderr.strip() == f"piunet-dist evaluate: error: {said}"
    assert not run_dir.exists() and not out.exists()


def test_wandb_refusing_to_start_online_is_one_line_saying_how_to_run_offline(shards, tmp_path):
    home = tmp_path / "home"  # no ~/.netrc, no W&B settings: no API key anywhere
    home.mkdir()
    env = {k: v for k, v in environment(HOME=str(home), WANDB_MODE="online").items() if not k.startswith("WANDB_API")}
    trained = subprocess.run(
        train_command(tmp_path / "run", shards, *TINY, "train.max_steps=2", "train.log_with=wandb"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    err = trained.stderr.strip().splitlines()
    assert trained.returncode == 2 and len(err) == 1, trained.stderr[-3000:]
    assert err[0].startswith("piunet-dist train: error: wandb: ") and err[0].endswith(
        "(on nodes without internet: WANDB_MODE=offline)"
    ), err
