"""The README's quick start, command by command as a researcher types them, on a synthetic
tree with the challenge's scene numbers and its 290 test scenes, on the SLURM test cluster
(slurm/testcluster): toy networks and steps, the commands otherwise as written."""

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from piunet_dist.evaluation.submission import CHALLENGE_TEST
from tests.helpers.runs import TINY_RUN

pytestmark = [pytest.mark.slurm, pytest.mark.processes]

ROOT = Path(__file__).resolve().parent.parent
PY = shlex.quote(sys.executable)
TOY = [  # what makes the recipe's networks and runs toys; appended to the training launch
    *TINY_RUN,
    "data.workers=0",
    "train.compile_loss=false",
    "train.compile_model=false",
    "train.max_steps=2",
    "train.val_every=2",
    "train.ckpt_every=2",
    "train.l1_warmup_steps=1",
    "train.val_batch_size=1",
    "data.n_frames=3",  # a third of the network's work on each of the 290 test scenes
]
ON_THE_TEST_CLUSTER = "--cpus-per-task 1 --mem 1500M"  # its nodes have 2 CPUs, and a job takes them all otherwise
needs_slurm = pytest.mark.skipif(
    not os.environ.get("SLURM_CONF"), reason="no SLURM test cluster (slurm/testcluster/start.sh; make test starts it)"
)


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = text.split("```\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def as_run_here(command: str) -> str:
    """A quick-start command as this test runs it: the download is a synthetic tree, the
    install is the one this test runs in, launches run toys on the test cluster."""
    if command.startswith("unzip probav_data.zip"):  # 4 train and 2 test scenes a band, the test ones linked to 290
        return (
            f"{PY} -m piunet_dist synth probav_data --numbering challenge --scenes 4 --test-scenes 2 "
            f"--physics frames=9,9 --workers 2 && PYTHONPATH={shlex.quote(str(ROOT))} {PY} -c "
            "'from tests.helpers.scene_tree import fill_challenge_test; fill_challenge_test(\"probav_data\")'"
        )
    if command.startswith(("make install", "source .venv/bin/activate")):
        return ":"  # this test runs in the project's installed environment already
    command = re.sub(r"^python ", f"{PY} ", command)
    if "piunet_dist.launch --config" in command:
        return f"{command} {ON_THE_TEST_CLUSTER} {' '.join(TOY)}"
    if "piunet_dist.launch evaluate" in command:
        return f"{command} {ON_THE_TEST_CLUSTER}"
    return command


@needs_slurm
def test_the_quick_start_ends_in_one_submission_of_the_challenges_290_scenes(tmp_path):
    commands = quick_start()
    assert commands[0].startswith("unzip probav_data.zip") and commands[1] == "make install TORCH_BUILD=cuda"
    assert commands[2] == "source .venv/bin/activate"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    script = "set -euo pipefail\n" + "\n".join(f"echo '+ {c}'\n{as_run_here(c)}" for c in commands)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "launch: 1 CPU process(es) per node (launch.gpus_per_node auto: partition debug's nodes have 0)" in out
    assert (
        "NIR: 4 train" not in out and "NIR: 3 train, 1 val, 144 test" in out and "RED: 3 train, 1 val, 146 test" in out
    )
    for band in ("nir", "red"):
        for seed in (0, 1):
            assert (tmp_path / "runs" / "piunet" / f"{band}-seed{seed}" / "best" / "model.safetensors").is_file()
    val = json.loads((tmp_path / "runs" / "val" / "summary.json").read_text())
    assert set(val["bands"]) == {"NIR", "RED"}
    # the val split's scores and calibration on screen, where the evaluation was launched
    shown = out.split("+ python -m piunet_dist.launch evaluate", 2)[1]
    assert f"NIR: baseline {val['bands']['NIR']['baseline_cpsnr']:.2f} dB" in shown and "  calibration (" in shown
    challenge = sorted(f"{n}.png" for names in CHALLENGE_TEST.values() for n in names)
    with zipfile.ZipFile(tmp_path / "runs" / "test" / "submission.zip") as z:
        assert sorted(z.namelist()) == challenge
    test = json.loads((tmp_path / "runs" / "test" / "summary.json").read_text())["submission"]
    assert test["complete"] and test["scenes"] == 290 and test["lacking"] == {"RED": 0, "NIR": 0}
    for band, names in CHALLENGE_TEST.items():  # the val split's calibration, applied to every test scene
        calibrated = (tmp_path / "runs" / "test" / band / "ensemble").glob("*_scale_calibrated.npy")
        assert sorted(p.name.split("_")[0] for p in calibrated) == names

    # the published checkpoints' format, a bare state_dict a band: one command, one submission
    for band in ("nir", "red"):
        state = load_file(str(tmp_path / "runs" / "piunet" / f"{band}-seed0" / "best" / "model.safetensors"))
        torch.save(state, tmp_path / f"{band}_model_checkpoint.pt")
    published = re.search(
        r"```\n(python -m piunet_dist evaluate --runs nir_model.*?)\n```", (ROOT / "README.md").read_text(), re.S
    )
    command = as_run_here(published.group(1).replace("\\\n", " "))
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runs/published/submission.zip: 290 test scenes, the challenge's 290" in done.stdout
    with zipfile.ZipFile(tmp_path / "runs" / "published" / "submission.zip") as z:
        assert sorted(z.namelist()) == challenge


@needs_slurm
def test_the_recipe_on_cpu_jobs_is_refused_unless_meant(tmp_path):
    def launch(*flags):
        return subprocess.run(
            [sys.executable, "-m", "piunet_dist.launch", "--config", "configs/base.yaml", *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = launch(f"run_dir={tmp_path / 'runs'}", "--cpus-per-task", "1")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "piunet-dist launch: error: launch.gpus_per_node: auto found no GPUs (partition debug's nodes have 0), and "
        f"{tmp_path / 'runs'} trains train.max_steps=195,000 steps, a recipe for GPUs: give --partition with GPU "
        "nodes, or --gpus-per-node 0 to train it on CPU jobs all the same"
    ]
    meant = launch(f"run_dir={tmp_path / 'runs'}", "--cpus-per-task", "1", "--gpus-per-node", "0", "--dry-run")
    assert meant.returncode == 0, meant.stderr
    assert "# 1 CPU process(es) per node; train.precision auto: float32 on CPU jobs" in meant.stdout
    assert "#SBATCH --ntasks-per-node=1" in meant.stdout and "gpus" not in meant.stdout
    assert not (tmp_path / "runs").exists()
