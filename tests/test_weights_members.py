"""Weights files as members, fine-tuning from them, and the self-ensemble each member's
training asks for: published-format state_dicts built from the model, real runs, real shards."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from piunet_dist.__main__ import main
from piunet_dist.core.config_load import load_config
from piunet_dist.core.files import sha256
from piunet_dist.data.packing import pack
from piunet_dist.data.probav import find_scenes, load_scene
from piunet_dist.data.sensor import Physics
from piunet_dist.data.synthetic import synthesise
from piunet_dist.network.model import PIUNet
from tests.helpers.runs import TINY_RUN, train_command
from tests.helpers.scene_tree import holds_real_oddities

ROOT = Path(__file__).parent.parent
TINY = [
    *TINY_RUN,
    "data.workers=0",
    "train.compile_loss=false",
    "train.l1_warmup_steps=1",
    "train.max_steps=4",
    "train.val_every=4",
    "train.ckpt_every=4",
    "train.val_batch_size=1",
]
FINE_TUNE = ["train.l1_warmup_steps=0", "train.lr_milestones=[]"]  # what a run from trained weights must have


def train(run_dir, shards, *extra, check=True):
    result = subprocess.run(
        train_command(run_dir, shards, *TINY, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained without rotations, one with them, and the first's best weights as the
    published checkpoints are saved: a bare torch state_dict, and as safetensors."""
    root = tmp_path_factory.mktemp("weights")
    synthesise(root / "scenes", 5, 3, ["NIR"], seed=5, workers=2)
    assert holds_real_oddities(root / "scenes")  # every command below meets them
    pack(root / "scenes", root / "shards", ["NIR"], val_fraction=0.4, workers=2, scenes_per_shard=1)
    plain, rotated = root / "plain", root / "rotated"
    train(plain, root / "shards", "data.augment=false")
    train(rotated, root / "shards", "data.augment=true", "train.seed=1")
    state = load_file(str(plain / "best" / "model.safetensors"))
    published = root / "nir_model_checkpoint.pt"
    torch.save(state, published)
    save_file(state, str(root / "nir_model.safetensors"))
    return root, plain, rotated, published


def summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


def one_error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"piunet-dist {command}: error: "), err
    return err[0]


def test_weights_files_are_members_and_ensemble_with_runs(trained, tmp_path):
    root, plain, _, published = trained
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--runs",
                str(published),
                str(root / "nir_model.safetensors"),
                str(plain),
                "--band",
                "NIR",
                "--split",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    s = summary(out)
    assert s["self_ensemble"] == "auto"
    member = s["members"]["nir_model_checkpoint"]
    assert (member["kind"], member["path"], member["sha256"]) == ("weights file", str(published), sha256(published))
    assert (member["band"], member["heads"], member["self_ensemble"]) == ("NIR", 1, 1)
    assert s["members"]["nir_model"]["kind"] == "weights file" and s["members"]["plain"]["kind"] == "run"
    band = s["bands"]["NIR"]
    assert set(band["members"]) == {"nir_model_checkpoint", "nir_model", "plain"}
    # the same weights as the run's best/: the same predictions, whichever way they are given
    assert band["members"]["nir_model_checkpoint"] == band["members"]["plain"] == band["members"]["nir_model"]
    assert band["views"] == {}  # nobody averaged views
    header = (out / "scenes.csv").read_text().splitlines()[0].split(",")
    assert {"nir_model_checkpoint:views", "plain:views", "nir_model_checkpoint:cpsnr"} <= set(header)
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert f"weights file {published} (sha256 {sha256(published)[:12]})" in page


def test_auto_views_follow_each_members_training_and_predict_agrees(trained, tmp_path, capsys):
    root, plain, rotated, published = trained
    out = tmp_path / "eval"
    test = ["--split", "test", "--partial", "--out", str(out)]
    assert main(["evaluate", "--runs", str(plain), str(rotated), *test]) == 0
    members = summary(out)["members"]
    assert (members["plain"]["self_ensemble"], members["rotated"]["self_ensemble"]) == (1, 4)
    assert (members["plain"]["trained_with_rotations"], members["rotated"]["trained_with_rotations"]) == (False, True)
    for name, views in (("plain", 1), ("rotated", 4)):
        assert json.loads((out / "NIR" / name / "predictions.json").read_text())["self_ensemble"] == views
    # a test scene whose nine clearest frames are all clear: no frame is drawn at random
    scene = next(
        r.path
        for r in find_scenes(root / "scenes")
        if r.split == "test" and (load_scene(r).clearance > 0.85).sum() >= 9
    )
    for run_dir in (plain, rotated):
        assert (
            main(
                [
                    "predict",
                    "--weights",
                    str(run_dir / "best"),
                    "--scene",
                    str(scene),
                    "--out",
                    str(tmp_path / run_dir.name),
                ]
            )
            == 0
        )
        by_predict = np.asarray(Image.open(tmp_path / run_dir.name / f"{scene.name}.png"))
        by_evaluate = np.asarray(Image.open(out / "NIR" / run_dir.name / f"{scene.name}.png"))
        assert np.array_equal(by_predict, by_evaluate), run_dir.name
    capsys.readouterr()
    # a number still forces it; with several views each one's cPSNR is reported
    assert (
        main(
            [
                "evaluate",
                "--runs",
                str(published),
                "--band",
                "NIR",
                "--shards",
                str(root / "shards"),
                "--self-ensemble",
                "8",
                "--out",
                str(tmp_path / "eight"),
            ]
        )
        == 0
    )
    views = summary(tmp_path / "eight")["bands"]["NIR"]["views"]["nir_model_checkpoint"]
    assert list(views) == ["rot0", "rot90", "rot180", "rot270", "flip rot0", "flip rot90", "flip rot180", "flip rot270"]
    assert all(20 < v < 80 for v in views.values())
    said = [line for line in capsys.readouterr().out.splitlines() if "each view alone" in line]
    assert len(said) == 1 and said[0].startswith("  nir_model_checkpoint, each view alone (cPSNR, dB): rot0 ")


@pytest.fixture(scope="module")
def other_scenes(tmp_path_factory):
    """Scenes of another world than the pretraining's (the stand-in for real ones after
    synthetic pretraining): another seed, larger frame gains, heavier noise."""
    root = tmp_path_factory.mktemp("other")
    physics = Physics(gain_spread=(0.1, 0.15), noise=(20.0, 24.0))
    synthesise(root / "scenes", 5, 0, ["NIR"], seed=8, workers=2, physics=physics)
    pack(root / "scenes", root / "shards", ["NIR"], val_fraction=0.4, workers=2, scenes_per_shard=1)
    return root / "shards"


@pytest.mark.processes
@pytest.mark.parametrize("start_from", ["published file", "pretrained run"])
def test_a_fine_tune_starts_from_the_weights_and_resumes_from_its_own_checkpoints(
    trained, other_scenes, tmp_path, start_from
):
    root, plain, _, published = trained
    if start_from == "published file":  # a published checkpoint, fine-tuned on the scenes it was trained on
        start, shards = tmp_path / "published.pt", root / "shards"
        shutil.copy(published, start)
        before = json.loads((plain / "best" / "trainer_state.json").read_text())["val_cpsnr"]
    else:  # synthetic pretraining, then the pretrained run's best/ fine-tuned on other scenes
        pretrained, shards = tmp_path / "pretrained", other_scenes
        shutil.copytree(plain, pretrained)
        start, out = pretrained / "best", tmp_path / "pretrained-on-other"
        scored = ["evaluate", "--runs", str(start), "--split", "val", "--shards", str(shards), "--out", str(out)]
        assert main(scored) == 0
        before = summary(out)["bands"]["NIR"]["members"]["pretrained"]
    run_dir = tmp_path / "fine"
    # a learning rate too small to move them: it validates where the weights are
    train(
        run_dir,
        shards,
        f"train.init_weights={start}",
        *FINE_TUNE,
        "train.lr=1e-12",
        "train.max_steps=2",
        "train.val_every=2",
        "train.ckpt_every=2",
        "data.augment=false",
    )
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [e for e in events if e["event"] == "val"]
    assert val[0]["step"] == 2 and abs(val[0]["val_cpsnr"] - before) < 1.0
    assert events[0]["init_weights"] == str(start) and events[0]["resumed_from"] is None
    assert f"init_weights: {start}" in (run_dir / "config.yaml").read_text()
    state = json.loads((run_dir / "checkpoints" / "step_0000002" / "trainer_state.json").read_text())
    assert state["step"] == 2  # the step count started fresh
    given = load_file(str(plain / "best" / "model.safetensors"))
    now = load_file(str(run_dir / "checkpoints" / "step_0000002" / "model.safetensors"))
    for key, value in given.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # two training steps update the batch-norm statistics, whatever the learning rate
        assert torch.allclose(now[key], value, atol=1e-6), key
    shutil.rmtree(start) if start.is_dir() else start.unlink()  # a resumed run reads its own checkpoint only
    train(
        run_dir,
        shards,
        f"train.init_weights={start}",
        *FINE_TUNE,
        "train.lr=1e-12",
        "train.max_steps=4",
        "train.val_every=2",
        "train.ckpt_every=2",
        "data.augment=false",
    )
    resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"start"' in line][
        -1
    ]
    assert resumed["resumed_from"] == "step_0000002" and resumed["init_weights"] is None


@pytest.mark.processes
def test_mistakes_on_the_new_paths_are_one_line_and_write_nothing(trained, tmp_path, capsys):
    root, plain, _, published = trained
    out = tmp_path / "eval"
    assert main(["evaluate", "--runs", str(published), str(plain), "--out", str(out)]) == 2
    assert one_error(capsys, "evaluate") == (
        f"piunet-dist evaluate: error: --band: {published} is a weights file, which does not say its band; "
        f"give it as {published}:NIR or {published}:RED, or --band for every file"
    )
    assert main(["evaluate", "--runs", str(published), "--band", "NIR", "--out", str(out)]) == 2
    assert "--shards: " in one_error(capsys, "evaluate")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--runs", str(junk), "--band", "NIR", "--out", str(out)]) == 2
    assert f"{junk}: not a readable checkpoint" in one_error(capsys, "evaluate")
    assert not out.exists()

    run_dir = tmp_path / "run"
    result = train(run_dir, root / "shards", f"train.init_weights={tmp_path / 'absent.pt'}", *FINE_TUNE, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"piunet-dist train: error: {tmp_path / 'absent.pt'}: no such checkpoint file"
    )
    wider = tmp_path / "wider.pt"
    torch.save(PIUNet(n_feat=16, r_bneck=4, n_tefa=1).state_dict(), wider)
    result = train(run_dir, root / "shards", f"train.init_weights={wider}", *FINE_TUNE, check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith(f"piunet-dist train: error: {wider}: does not fit this PIUnet: ")
    assert "wrong shapes: conv_in.weight (16, 1, 1, 3, 3) (model has (8, 1, 1, 3, 3))" in last
    assert "Traceback" not in result.stderr and not run_dir.exists()

    launch = subprocess.run(
        [
            sys.executable,
            "-m",
            "piunet_dist.launch",
            "evaluate",
            "--runs",
            str(published),
            "--out",
            str(out),
            "--cluster",
            "local",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert launch.returncode == 2 and launch.stderr.strip() == (
        f"piunet-dist launch: error: --band: {published} is a weights file, which does not say its band; "
        f"give it as {published}:NIR or {published}:RED, or --band for every file"
    )
    launch = subprocess.run(
        [
            sys.executable,
            "-m",
            "piunet_dist.launch",
            "--config",
            "configs/demo.yaml",
            f"run_dir={run_dir}",
            f"train.init_weights={wider}",
            *TINY,
            *FINE_TUNE,
            "--cluster",
            "local",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert launch.returncode == 2 and "does not fit this PIUnet" in launch.stderr and not run_dir.exists()
    assert not out.exists()


@pytest.mark.processes
def test_a_fine_tune_with_its_config_has_no_l1_phase_and_its_schedule_inside_its_steps(trained, tmp_path):
    root, _, _, published = trained
    recipe = load_config(ROOT / "configs" / "finetune.yaml")
    assert recipe.train.l1_warmup_steps == 0 and max(recipe.train.lr_milestones) < recipe.train.max_steps
    run_dir = tmp_path / "fine"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "piunet_dist",
            "train",
            "--config",
            "configs/finetune.yaml",
            f"run_dir={run_dir}",
            f"data.shards={root / 'shards'}",
            f"train.init_weights={published}",
            *TINY_RUN,
            "data.workers=0",
            "train.compile_loss=false",
            "train.compile_model=false",
            "train.max_steps=6",
            "train.lr_milestones=[3]",
            "train.log_every=1",
            "train.val_every=6",
            "train.ckpt_every=6",
            "train.val_batch_size=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["event"] == "train"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert {e["objective"] for e in steps} == {"laplace"}  # from the first step
    assert [e["lr"] for e in steps] == pytest.approx([2e-5, 2e-5, 4e-6, 4e-6, 4e-6, 4e-6])
