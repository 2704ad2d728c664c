"""The trainer with real processes: accelerate launch over 2 gloo ranks, stop and resume."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from piunet_dist.data.packing import pack
from piunet_dist.data.shards import band_digest, scene_names, shard_paths
from piunet_dist.data.synthetic import synthesise
from tests.helpers.faults import fill, flip_bytes
from tests.helpers.runs import TINY_RUN, train_command
from tests.helpers.scene_tree import holds_real_oddities

pytestmark = pytest.mark.processes

ROOT = Path(__file__).parent.parent
VENV_BIN = Path(sys.executable).parent
TINY = [
    *TINY_RUN,
    "data.workers=1",
    "train.l1_warmup_steps=3",
    "train.log_every=2",
    "train.val_batch_size=1",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesise(root / "scenes", 6, 0, ["NIR"], seed=3, workers=2)
    assert holds_real_oddities(root / "scenes")  # every command below meets them
    # val: a shard per rank
    pack(root / "scenes", root / "shards", ["NIR"], val_fraction=0.34, workers=2, scenes_per_shard=1)
    return root / "shards"


def run(args, env=None, check=True):
    result = subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def train(run_dir, shards, *extra, **kw):
    return run(
        train_command(run_dir, shards, *TINY, *extra),
        **kw,
    )


def events(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


LAUNCHERS = {
    "accelerate": [
        str(VENV_BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
    "torchrun": [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2"],
}


def test_two_gloo_processes_keep_identical_parameters(shards, tmp_path):
    run_dir = tmp_path / "ddp"
    run(
        [
            *LAUNCHERS["accelerate"],
            "tests/ddp_probe.py",
            "configs/demo.yaml",
            f"run_dir={run_dir}",
            f"data.shards={shards}",
            *TINY,
            "train.max_steps=6",
            "train.val_every=3",
            "train.ckpt_every=3",
        ]
    )
    ranks = [torch.load(run_dir / f"rank{i}.pt") for i in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    start = events(run_dir)[0]
    assert start["event"] == "start" and start["world_size"] == 2
    val = [e for e in events(run_dir) if e["event"] == "val"]
    assert [e["step"] for e in val] == [3, 6]
    assert {e["val_scenes"] for e in val} == {len(scene_names(shard_paths(shards, "NIR", "val")))} == {2}
    saved = weights(run_dir / "checkpoints/step_0000006")
    assert all(torch.equal(saved[k], ranks[0][k]) for k in ranks[0])
    assert not torch.equal(saved["conv_in.weight"], weights(run_dir / "checkpoints/step_0000003")["conv_in.weight"])


RESUMABLE = ["train.val_every=4", "train.ckpt_every=4", "train.keep_last=5"]


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """A run of 12 steps that never stopped."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(run_dir, shards, "train.max_steps=12", *RESUMABLE)
    return run_dir


def assert_same_weights(a: Path, b: Path) -> None:
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_extending_a_finished_run_equals_an_uninterrupted_run(shards, straight, tmp_path):
    # 6 is no multiple of ckpt_every: the checkpoint at max_steps falls inside a data segment
    train(tmp_path / "stopped", shards, "train.max_steps=6", *RESUMABLE)
    train(tmp_path / "stopped", shards, "train.max_steps=12", *RESUMABLE)  # same run_dir: resumes at 6
    assert_same_weights(straight / "checkpoints/step_0000012", tmp_path / "stopped/checkpoints/step_0000012")
    log = events(tmp_path / "stopped")
    starts = [e for e in log if e["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, "step_0000006"]
    assert [e["step"] for e in log if e["event"] == "train"] == [2, 4, 6, 8, 10, 12]  # appended, none repeated


def resumable_command(run_dir, shards, *extra):
    """A 12-step run with checkpoints to resume from, as `python -m piunet_dist train` is given it."""
    return train_command(run_dir, shards, *TINY, "train.max_steps=12", *RESUMABLE, *extra)


def sigterm_once(command, ready):
    """Start `command`, send it SIGTERM once `ready()`; its exit status and standard error."""
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    while proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def test_sigterm_writes_a_checkpoint_and_the_same_command_resumes_exactly(shards, straight, tmp_path):
    run_dir = tmp_path / "run"
    command = resumable_command(run_dir, shards)
    metrics = run_dir / "metrics.jsonl"
    returncode, err = sigterm_once(command, lambda: metrics.is_file() and '"event": "start"' in metrics.read_text())
    assert returncode == 2, err[-2000:]
    stopped = re.fullmatch(
        r"piunet-dist train: error: stopped by SIGTERM at step (\d+); checkpoint (.+) written: "
        r"run the same command to resume",
        err.strip().splitlines()[-1],
    )
    assert stopped, err[-2000:]
    step = int(stopped.group(1))
    assert 1 <= step < 12 and stopped.group(2) == str(run_dir / f"checkpoints/step_{step:07d}")
    assert json.loads((run_dir / f"checkpoints/step_{step:07d}/trainer_state.json").read_text())["step"] == step

    torn = '{"event": "train", "step": 99, "lo'  # a write cut short by a kill
    with open(metrics, "a") as f:
        f.write(torn)
    result = run(command)
    assert f"{metrics}: removed a torn last line ({len(torn)} bytes) that a killed run left" in result.stderr
    assert f"{run_dir}: resuming from {run_dir / f'checkpoints/step_{step:07d}'} (step {step} of 12" in result.stderr
    assert all(e["step"] != 99 for e in events(run_dir))  # every line whole again
    assert_same_weights(straight / "checkpoints/step_0000012", run_dir / "checkpoints/step_0000012")


def test_queued_steps_are_the_steps_read_one_by_one_also_when_stopped_and_resumed(shards, straight, tmp_path):
    # each step queued before the previous one's outcome is read (as on GPUs), stopped by a
    # signal among the quiet steps after the first checkpoint, resumed: the weights of the
    # run that read every step before the next (only the checkpoints' and validations'
    # steps are read at once)
    run_dir = tmp_path / "queued"
    command = resumable_command(run_dir, shards, "train.pipeline=on", "train.log_every=100")
    returncode, err = sigterm_once(command, (run_dir / "checkpoints/step_0000004").is_dir)
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", err.strip().splitlines()[-1])
    assert returncode == 2 and stopped and int(stopped.group(1)) > 4, err[-2000:]
    run(command)
    assert_same_weights(straight / "checkpoints/step_0000012", run_dir / "checkpoints/step_0000012")


@pytest.mark.parametrize(
    "pipeline, order",
    [
        # queued ahead only where the step being read asks nothing of the host: not at the last
        # L1 step (3), the checkpoint and validation (4) or the last step (8)
        ("on", "c1 c2 o1 c3 o2 o3 c4 o4 c5 c6 o5 c7 o6 c8 o7 o8"),
        ("off", "c1 o1 c2 o2 c3 o3 c4 o4 c5 o5 c6 o6 c7 o7 c8 o8"),
    ],
)
def test_a_quiet_step_is_queued_before_the_one_before_is_read(shards, tmp_path, pipeline, order):
    from piunet_dist.core.config_load import load_config
    from piunet_dist.training.trainer import Trainer

    settings = [f"run_dir={tmp_path / 'run'}", f"data.shards={shards}", *TINY, "train.max_steps=8", *RESUMABLE]
    settings += [f"train.pipeline={pipeline}", "train.log_every=100", "train.compile_loss=false"]
    trainer = Trainer(load_config("configs/demo.yaml", settings), stop_on_signals=False)
    seen, counts = [], {"compute": 0, "outcome": 0}

    def recorded(name, real):
        def call(*args, **kwargs):
            counts[name] += 1
            seen.append(f"{name[0]}{counts[name]}")
            return real(*args, **kwargs)

        return call

    for name in counts:  # the real step's parts, each call noted
        setattr(trainer.step, name, recorded(name, getattr(trainer.step, name)))
    assert trainer.train().step == 8
    assert " ".join(seen) == order


def test_a_step_with_a_non_finite_loss_changes_nothing_on_the_device():
    from accelerate import Accelerator

    from piunet_dist.core.config import TrainConfig
    from piunet_dist.network.model import PIUNet
    from piunet_dist.training.step import prepare_step

    torch.manual_seed(0)
    cfg = TrainConfig(compile_loss=False, lr=1e-2)
    step = prepare_step(PIUNet(n_feat=8, r_bneck=4, n_tefa=1), cfg, Accelerator(cpu=True))
    lr, hr = 7000 + 500 * torch.rand(2, 3, 8, 8), 7000 + 500 * torch.rand(2, 1, 24, 24)
    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    loss, stop = step(lambda: (lr, hr, mask), laplace=True)
    assert loss is not None and not stop
    params = {k: v.detach().clone() for k, v in step.model.named_parameters()}
    moments = {(i, k): v.clone() for i, s in step.optimizer.state_dict()["state"].items() for k, v in s.items()}
    rate = step.scheduler.get_last_lr()
    flags = step.compute(lambda: (lr, hr * float("nan"), mask), laplace=True)
    step.apply(flags)  # queued like any other step: the device skips it
    assert step.outcome(flags) == (None, False)
    assert all(torch.equal(v, params[k]) for k, v in step.model.named_parameters())
    after = {(i, k): v for i, s in step.optimizer.state_dict()["state"].items() for k, v in s.items()}
    assert all(torch.equal(after[k], moments[k]) for k in moments)  # moments and step count untouched
    assert step.scheduler.get_last_lr() == rate and step.scheduler.last_epoch == 1


def test_a_fresh_start_in_a_used_run_dir_is_refused(shards, straight):
    before = sorted(p.name for p in (straight / "checkpoints").iterdir())
    result = train(straight, shards, "train.max_steps=12", *RESUMABLE, "train.resume=false", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"piunet-dist train: error: {straight}: holds a run already (checkpoints or best/); train.resume=false "
        "starts a new run only in an unused run_dir: choose another run_dir, or move this one aside"
    ]
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == before


def test_resuming_with_settings_that_define_another_run_is_refused_before_writing(shards, straight):
    config = (straight / "config.yaml").read_text()
    result = train(
        straight,
        shards,
        "train.max_steps=12",
        *RESUMABLE,
        "data.band=RED",
        "model.n_feat=16",
        "train.lr=1e-3",
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"piunet-dist train: error: {straight}: resuming with settings that define another run (model.n_feat: 8 -> "
        "16; data.band: 'NIR' -> 'RED'; train.lr: 0.003 -> 0.001); give the run's own, or choose another run_dir"
    ]
    assert (straight / "config.yaml").read_text() == config


def test_a_run_resumes_on_its_shards_moved_and_is_refused_on_others(shards, straight, tmp_path):
    run_dir, moved, other = tmp_path / "run", tmp_path / "moved", tmp_path / "other"
    shutil.copytree(straight, run_dir)
    shutil.copytree(shards, moved)
    # the same scenes, split otherwise
    pack(shards.parent / "scenes", other, ["NIR"], val_fraction=0.5, workers=2, scenes_per_shard=1)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = train(run_dir, other, "train.max_steps=12", *RESUMABLE, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"piunet-dist train: error: {run_dir}: step_0000012 was trained on other NIR shards than "
        f"data.shards={other} holds now (their manifest differs: scenes drawn or packed again); resume it on "
        "the shards it was trained on, or choose another run_dir"
    ]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    resumed = train(run_dir, moved, "train.max_steps=16", *RESUMABLE)
    assert f"{run_dir}: resuming from {run_dir / 'checkpoints/step_0000012'}" in resumed.stderr
    state = run_dir / "checkpoints/step_0000016/trainer_state.json"
    assert json.loads(state.read_text())["shards_sha256"] == band_digest(shards, "NIR")
    # a checkpoint written before checkpoints kept the digest resumes wherever it is told
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "shards_sha256"}))
    train(run_dir, other, "train.max_steps=18", *RESUMABLE)
    assert (run_dir / "checkpoints/step_0000018").is_dir()


def test_the_demo_bands_have_run_dirs_of_their_own():
    from piunet_dist.core.config_load import load_config

    nir, red = (load_config(ROOT / "configs" / name) for name in ("demo.yaml", "demo-red.yaml"))
    assert (nir.data.band, red.data.band) == ("NIR", "RED") and nir.run_dir != red.run_dir


def test_checkpointed_and_compiled_training_follow_the_plain_run(shards, tmp_path):
    common = ["train.max_steps=3", "train.val_every=3", "train.ckpt_every=3"]
    for name, settings in (
        ("plain", []),
        ("checkpointed", ["train.activation_checkpointing=true"]),
        ("compiled", ["train.compile_model=true"]),
    ):
        train(tmp_path / name, shards, *common, *settings)
    plain, checkpointed, compiled = (
        weights(tmp_path / f"{name}/checkpoints/step_0000003") for name in ("plain", "checkpointed", "compiled")
    )
    assert list(compiled) == list(plain)  # compiled in place: the published names
    for key in plain:
        assert torch.equal(checkpointed[key], plain[key]), key
    # compiled, the weights differ by rounding, which Adam turns into whole steps for the
    # biases that batch norm cancels; the function learnt is the same
    losses = {
        name: [e["loss"] for e in events(tmp_path / name) if e["event"] == "train"] for name in ("plain", "compiled")
    }
    assert len(losses["plain"]) == 2
    torch.testing.assert_close(losses["compiled"], losses["plain"], rtol=1e-3, atol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_a_float32_loss(shards, tmp_path, precision):
    run_dir = tmp_path / precision
    train(
        run_dir, shards, f"train.precision={precision}", "train.max_steps=2", "train.val_every=2", "train.ckpt_every=2"
    )
    log = events(run_dir)
    assert log[0]["precision"] == precision
    assert all(math.isfinite(e["loss"]) for e in log if e["event"] == "train")
    assert weights(run_dir / "checkpoints/step_0000002")["conv_in.weight"].dtype == torch.float32


def test_half_written_checkpoints_are_ignored(shards, tmp_path):
    run_dir = tmp_path / "half"
    train(run_dir, shards, "train.max_steps=4", "train.ckpt_every=2", "train.val_every=2")
    ckpts = run_dir / "checkpoints"
    shutil.copytree(ckpts / "step_0000004", ckpts / "step_0000006.partial")
    shutil.copytree(ckpts / "step_0000004", ckpts / "step_0000008")
    (ckpts / "step_0000008" / "trainer_state.json").unlink()  # died before its last file
    train(run_dir, shards, "train.max_steps=6", "train.ckpt_every=2", "train.val_every=2")
    assert events(run_dir)[-1]["event"] != "start"
    assert [e["resumed_from"] for e in events(run_dir) if e["event"] == "start"] == [None, "step_0000004"]
    assert json.loads((ckpts / "step_0000006" / "trainer_state.json").read_text())["step"] == 6


def test_non_finite_losses_stop_the_run_with_a_clear_message(shards, tmp_path):
    result = train(
        tmp_path / "nan",
        shards,
        "train.max_steps=50",
        "train.lr=1e30",
        "train.max_bad_steps=3",
        "train.l1_warmup_steps=0",
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "3 non-finite losses in a row" in result.stderr.strip().splitlines()[-1]


def test_a_world_size_without_a_process_group_is_refused(shards, tmp_path):
    result = train(tmp_path / "w", shards, "train.max_steps=2", env={"WORLD_SIZE": "2"}, check=False)
    assert result.returncode == 2
    assert "WORLD_SIZE=2" in result.stderr.strip().splitlines()[-1]


def test_demo_configuration_beats_bilinear_upsampling_of_the_mean_frame(tmp_path):
    import torch.nn.functional as F

    from piunet_dist.data.pipeline import EvalScenes
    from piunet_dist.network.metrics import cpsnr

    synthesise(tmp_path / "scenes", 24, 0, ["NIR"], seed=11, workers=2)
    pack(tmp_path / "scenes", tmp_path / "shards", ["NIR"], workers=2, scenes_per_shard=8)
    run_dir = tmp_path / "demo"
    # the demo's settings with 300 of its 600 steps, to keep the test pass short: on these scenes
    # it is 1.7 dB above bilinear at step 300 (0.8 at 200, 2.1 at 400)
    run(train_command(run_dir, tmp_path / "shards", "train.max_steps=300", "train.val_every=300"))
    best = max(e["val_cpsnr"] for e in events(run_dir) if e["event"] == "val")
    bilinear = []
    for scene in EvalScenes(shard_paths(tmp_path / "shards", "NIR", "val")):
        mean = scene["lr"].mean(dim=0)[None, None]
        up = F.interpolate(mean, scale_factor=3, mode="bilinear", align_corners=False)
        bilinear.append(cpsnr(up, scene["hr"][None, None], scene["sm"][None, None]))
    assert best > torch.cat(bilinear).mean().item() + 1.0


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_readme_launch_lines_run_train_py_on_two_processes(shards, tmp_path, launcher):
    run_dir = tmp_path / launcher
    run(
        [
            *LAUNCHERS[launcher],
            "train.py",
            "--config",
            "configs/demo.yaml",
            f"run_dir={run_dir}",
            f"data.shards={shards}",
            *TINY,
            "train.max_steps=2",
            "train.val_every=2",
            "train.ckpt_every=2",
        ]
    )
    assert events(run_dir)[0]["world_size"] == 2
    assert (run_dir / "checkpoints/step_0000002").is_dir() and (run_dir / "best/model.safetensors").is_file()


def test_a_run_resumes_on_another_number_of_processes_without_repeating_a_step(shards, tmp_path):
    run_dir = tmp_path / "moved"
    common = [
        "--config",
        "configs/demo.yaml",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *TINY,
        "train.val_every=100",
        "train.ckpt_every=2",
    ]
    run([*LAUNCHERS["torchrun"], "train.py", *common, "train.max_steps=4"])  # two processes
    one = run([sys.executable, "train.py", *common, "train.max_steps=6"])  # one
    said = [line for line in one.stderr.splitlines() if "process count changed" in line]
    assert said == [
        f"{run_dir}: the process count changed from 2 to 1: the global batch stays 4, and the data "
        "stream restarts its segment at step 4"
    ]
    run([*LAUNCHERS["torchrun"], "train.py", *common, "train.max_steps=8"])  # two again
    starts = [e for e in events(run_dir) if e["event"] == "start"]
    assert [(s["world_size"], s["step"], s["resumed_from"]) for s in starts] == [
        (2, 0, None),
        (1, 4, "step_0000004"),
        (2, 6, "step_0000006"),
    ]
    assert [e["step"] for e in events(run_dir) if e["event"] == "train"] == [2, 4, 6, 8]  # none twice
    state = json.loads((run_dir / "checkpoints" / "step_0000008" / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"], state["segment"]) == (8, 2, 8)
    # what cannot work is refused before anything is written: 4 patches over 3 processes
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    three = run(
        [str(VENV_BIN / "torchrun"), "--nproc_per_node", "3", "train.py", *common, "train.max_steps=10"], check=False
    )
    # torchrun reports that its processes failed; none of them printed a trace of this project's code
    assert three.returncode != 0 and not re.search(r'File ".*piunet_dist/', three.stderr)
    refused = re.findall(r"piunet-dist train: error: (.*? processes)", three.stderr)  # ranks write at once
    assert set(refused) == {"train.batch_size: 4 patches (train.grad_accum=1) do not split evenly over 3 processes"}
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_sync_batchnorm_on_without_gpus_is_refused(shards, tmp_path):
    result = train(tmp_path / "sbn", shards, "train.max_steps=2", "train.sync_bn=on", check=False)
    assert result.returncode == 2
    assert "train.sync_bn=on: torch's SyncBatchNorm runs only on GPUs" in result.stderr.strip().splitlines()[-1]


def test_sync_batchnorm_conversion_keeps_the_published_names():
    # SyncBatchNorm itself runs only on GPUs (none here); its conversion must not rename a thing
    from piunet_dist.network.model import PIUNet

    model = PIUNet(n_feat=8, r_bneck=4, n_tefa=2)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(PIUNet(n_feat=8, r_bneck=4, n_tefa=2))
    assert [(k, v.shape) for k, v in synced.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == 2 + 4 * 2 + 2 + 2 + 1


def damaged_copy(shards, tmp_path, split="val"):
    """A copy of the shards whose `split` shards the test may damage."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy, [Path(p) for p in shard_paths(copy, "NIR", split)]


@pytest.mark.parametrize(
    "fault, message", [("missing", "missing"), ("flipped", "sha256 differs from the manifest (changed or damaged)")]
)
def test_a_damaged_val_shard_stops_the_run_before_its_first_step(shards, tmp_path, fault, message):
    data, val = damaged_copy(shards, tmp_path)
    val[-1].unlink() if fault == "missing" else flip_bytes(val[-1])
    result = train(tmp_path / "run", data, "train.max_steps=4", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"piunet-dist train: error: {val[-1]}: {message}; pack again, or see every problem with `pack --verify {data}`"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_attention_this_machine_cannot_run_is_refused_before_the_run_starts(shards, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        train_command(tmp_path / "run", shards, *TINY, "model.attention=triton"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "piunet-dist train: error: model.attention=triton: needs the triton package and "
        "a CUDA GPU (or TRITON_INTERPRET=1 on a CPU, for tests); use auto, sdpa or matmul"
    )
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_validation_that_fails_comes_after_the_checkpoint_of_its_step(shards, tmp_path):
    data, val = damaged_copy(shards, tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(run_dir, data, *TINY, "train.max_steps=60", "train.val_every=60", "train.ckpt_every=60"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = run_dir / "metrics.jsonl"
    while proc.poll() is None and not (metrics.is_file() and '"event": "train"' in metrics.read_text()):
        time.sleep(0.05)  # until the run has passed its start checks and is stepping
    for path in val:
        path.write_bytes(path.read_bytes()[:1000])  # cut short under the running trainer
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    assert (run_dir / "checkpoints" / "step_0000060").is_dir()
    last = err.strip().splitlines()[-1]
    assert last.startswith("piunet-dist train: error: ") and "/NIR/val-" in last, err[-2000:]


def test_skipped_corrupt_samples_are_counted_and_have_a_budget(shards, tmp_path):
    data, train_shards = damaged_copy(shards, tmp_path, "train")
    flip_bytes(train_shards[0])  # one scene of four: a damaged header
    run_dir = tmp_path / "some"
    train(
        run_dir,
        data,
        "data.skip_corrupt=true",
        "data.max_skipped_share=0.6",
        "train.max_steps=6",
        "train.val_every=6",
        "train.ckpt_every=6",
    )
    counts = [e["skipped_samples"] for e in events(run_dir) if e["event"] == "train"]
    assert counts[-1] > 0 and counts == sorted(counts)

    for path in train_shards:
        path.write_bytes(path.read_bytes()[:1000])  # nothing readable is left
    result = train(tmp_path / "none", data, "data.skip_corrupt=true", "train.max_steps=6", check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "piunet-dist train: error: data.skip_corrupt: 20 of 20 training samples read were "
        "corrupt, over data.max_skipped_share=0.05; the last: "
    ), result.stderr[-2000:]
    assert len(result.stderr.splitlines()) < 40  # ten warnings, not thousands


def test_a_disk_that_fills_up_mid_run_is_one_line_and_leaves_no_half_checkpoint(shards, small_disk):
    run_dir = small_disk / "run"
    proc = subprocess.Popen(
        train_command(
            run_dir,
            shards,
            *TINY,
            "train.max_steps=40",
            "train.ckpt_every=20",
            "train.val_every=40",
            "train.log_every=100",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = run_dir / "metrics.jsonl"
    while proc.poll() is None and not (metrics.is_file() and '"event": "start"' in metrics.read_text()):
        time.sleep(0.01)
    fill(small_disk)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"piunet-dist train: error: {run_dir}/checkpoints/step_0000020: cannot write (No space left on device)"
    ), err[-3000:]
    assert "Traceback" not in err
    assert list((run_dir / "checkpoints").iterdir()) == []


def test_ctrl_c_is_remembered_for_the_loop_and_loader_workers_leave_it_to_their_trainer():
    from piunet_dist.core.stop import StopRequest

    before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN in a job started in the background
    stop = StopRequest()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the step under way goes on
        time.sleep(0.01)
        assert stop.signal == "SIGINT"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is before
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from piunet_dist.core.stop import ignore_interrupts_in_worker\n"
            "ignore_interrupts_in_worker(0)\nos.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.05)\nprint('still here')",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert child.stdout == "still here\n"
