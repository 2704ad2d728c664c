"""The trainer with real processes: accelerate launch over 2 gloo ranks, stop and resume."""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from piunet_dist.data.shards import pack, scene_names, shard_paths
from piunet_dist.data.synthetic import synthesise

ROOT = Path(__file__).parent.parent
VENV_BIN = Path(sys.executable).parent
TINY = ["model.n_feat=8", "model.r_bneck=4", "model.n_tefa=1", "train.batch_size=4", "data.patch=16",
        "data.patches_per_scene=4", "data.shuffle_buffer=16", "data.workers=1", "train.val_cssim=false",
        "train.l1_warmup_steps=3", "train.log_every=2", "train.val_batch_size=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesise(root / "scenes", 6, 0, ["NIR"], seed=3, workers=2)
    pack(root / "scenes", root / "shards", ["NIR"], 0.34, None, 0, 2, 1, False)  # val: a shard per rank
    return root / "shards"


def run(args, env=None, check=True):
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def train(run_dir, shards, *extra, **kw):
    return run([sys.executable, "-m", "piunet_dist", "train", "--config", "configs/demo.yaml",
                f"run_dir={run_dir}", f"data.shards={shards}", *TINY, *extra], **kw)


def events(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


LAUNCHERS = {
    "accelerate": [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
    "torchrun": [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2"],
}


def test_two_gloo_processes_keep_identical_parameters(shards, tmp_path):
    run_dir = tmp_path / "ddp"
    run([*LAUNCHERS["accelerate"], "tests/ddp_probe.py", "configs/demo.yaml",
         f"run_dir={run_dir}", f"data.shards={shards}", *TINY, "train.max_steps=6", "train.val_every=3",
         "train.ckpt_every=3"])
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


def test_stop_and_resume_equals_an_uninterrupted_run(shards, tmp_path):
    common = ["train.val_every=4", "train.ckpt_every=4", "train.keep_last=5"]
    train(tmp_path / "straight", shards, "train.max_steps=8", *common)
    train(tmp_path / "stopped", shards, "train.max_steps=4", *common)
    train(tmp_path / "stopped", shards, "train.max_steps=8", *common)  # same run_dir: resumes at 4
    a = weights(tmp_path / "straight/checkpoints/step_0000008")
    b = weights(tmp_path / "stopped/checkpoints/step_0000008")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = events(tmp_path / "stopped")
    starts = [e for e in log if e["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, "step_0000004"]
    assert [e["step"] for e in log if e["event"] == "train"] == [2, 4, 6, 8]  # appended, none repeated


def test_checkpointed_and_compiled_training_follow_the_plain_run(shards, tmp_path):
    common = ["train.max_steps=3", "train.val_every=3", "train.ckpt_every=3"]
    for name, settings in (("plain", []), ("checkpointed", ["train.activation_checkpointing=true"]),
                           ("compiled", ["train.compile_model=true"])):
        train(tmp_path / name, shards, *common, *settings)
    plain, checkpointed, compiled = (weights(tmp_path / f"{name}/checkpoints/step_0000003")
                                     for name in ("plain", "checkpointed", "compiled"))
    assert list(compiled) == list(plain)  # compiled in place: the published names
    for key in plain:
        assert torch.equal(checkpointed[key], plain[key]), key
    # compiled, the weights differ by rounding, which Adam turns into whole steps for the
    # biases that batch norm cancels; the function learnt is the same
    losses = {name: [e["loss"] for e in events(tmp_path / name) if e["event"] == "train"]
              for name in ("plain", "compiled")}
    assert len(losses["plain"]) == 2
    torch.testing.assert_close(losses["compiled"], losses["plain"], rtol=1e-3, atol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_a_float32_loss(shards, tmp_path, precision):
    run_dir = tmp_path / precision
    train(run_dir, shards, f"train.precision={precision}", "train.max_steps=2", "train.val_every=2",
          "train.ckpt_every=2")
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
    result = train(tmp_path / "nan", shards, "train.max_steps=50", "train.lr=1e30", "train.max_bad_steps=3",
                   "train.l1_warmup_steps=0", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "3 non-finite losses in a row" in result.stderr.strip().splitlines()[-1]


def test_a_world_size_without_a_process_group_is_refused(shards, tmp_path):
    result = train(tmp_path / "w", shards, "train.max_steps=2", env={"WORLD_SIZE": "2"}, check=False)
    assert result.returncode == 2
    assert "WORLD_SIZE=2" in result.stderr.strip().splitlines()[-1]


def test_demo_configuration_beats_bilinear_upsampling_of_the_mean_frame(tmp_path):
    import torch.nn.functional as F
    from piunet_dist.data.pipeline import EvalScenes
    from piunet_dist.metrics import cpsnr

    synthesise(tmp_path / "scenes", 24, 0, ["NIR"], seed=11, workers=2)
    pack(tmp_path / "scenes", tmp_path / "shards", ["NIR"], 0.3, None, 0, 2, 8, False)
    run_dir = tmp_path / "demo"
    run([sys.executable, "-m", "piunet_dist", "train", "--config", "configs/demo.yaml", f"run_dir={run_dir}",
         f"data.shards={tmp_path / 'shards'}"])  # the demo's settings as they are: 800 steps
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
    run([*LAUNCHERS[launcher], "train.py", "--config", "configs/demo.yaml", f"run_dir={run_dir}",
         f"data.shards={shards}", *TINY, "train.max_steps=2", "train.val_every=2", "train.ckpt_every=2"])
    assert events(run_dir)[0]["world_size"] == 2
    assert (run_dir / "checkpoints/step_0000002").is_dir() and (run_dir / "best/model.safetensors").is_file()


def test_sync_batchnorm_on_without_gpus_is_refused(shards, tmp_path):
    result = train(tmp_path / "sbn", shards, "train.max_steps=2", "train.sync_bn=on", check=False)
    assert result.returncode == 2
    assert "train.sync_bn=on: torch's SyncBatchNorm runs only on GPUs" in result.stderr.strip().splitlines()[-1]


def test_sync_batchnorm_conversion_keeps_the_published_names():
    # SyncBatchNorm itself runs only on GPUs (none here); its conversion must not rename a thing
    from piunet_dist.model import PIUNet
    model = PIUNet(n_feat=8, r_bneck=4, n_tefa=2)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(PIUNet(n_feat=8, r_bneck=4, n_tefa=2))
    assert [(k, v.shape) for k, v in synced.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == 2 + 4 * 2 + 2 + 2 + 1


def damaged_copy(shards, tmp_path):
    """A copy of the shards whose val shards the test may damage."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy, [Path(p) for p in shard_paths(copy, "NIR", "val")]


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(600, 700):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault, message", [("missing", "missing"),
                                            ("flipped", "sha256 differs from the manifest (changed or damaged)")])
def test_a_damaged_val_shard_stops_the_run_before_its_first_step(shards, tmp_path, fault, message):
    data, val = damaged_copy(shards, tmp_path)
    val[-1].unlink() if fault == "missing" else flip_bytes(val[-1])
    result = train(tmp_path / "run", data, "train.max_steps=4", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"piunet-dist train: error: {val[-1]}: {message}; pack again, or see every problem with `pack --verify {data}`"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_attention_this_machine_cannot_run_is_refused_before_the_run_starts(shards, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "piunet_dist", "train", "--config", "configs/demo.yaml",
                             f"run_dir={tmp_path / 'run'}", f"data.shards={shards}", *TINY, "model.attention=triton"],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip() == ("piunet-dist train: error: model.attention=triton: needs the triton package and "
                                     "a CUDA GPU (or TRITON_INTERPRET=1 on a CPU, for tests); use auto, sdpa or matmul")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_validation_that_fails_comes_after_the_checkpoint_of_its_step(shards, tmp_path):
    data, val = damaged_copy(shards, tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "piunet_dist", "train", "--config", "configs/demo.yaml",
                             f"run_dir={run_dir}", f"data.shards={data}", *TINY, "train.max_steps=60",
                             "train.val_every=60", "train.ckpt_every=60"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
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
