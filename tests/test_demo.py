"""`make demo` as a user runs it, at a scale that fits the test pass: the same targets,
launcher, evaluation and report, on a few scenes and a few steps; then again, reusing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from piunet_dist.core.config_load import load_config
from tests.helpers.scene_tree import holds_real_oddities

pytestmark = pytest.mark.demo

ROOT = Path(__file__).parent.parent
TINY = [
    "model.n_feat=8",
    "model.r_bneck=4",
    "model.n_tefa=1",
    "train.max_steps=2",
    "train.val_every=2",
    "train.ckpt_every=2",
    "train.l1_warmup_steps=1",
    "data.workers=0",
    "train.compile_loss=false",
]
MEMBERS = ("nir-seed0", "nir-seed1", "red-seed0", "red-seed1")


def make_demo(tmp_path, scenes=4, check=True):
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            "install",
            "demo",
            f"PY={sys.executable}",
            f"DEMO={tmp_path / 'demo'}",
            f"DEMO_SHARDS={tmp_path / 'shards'}",
            f"DEMO_SCENES={scenes}",
            "DEMO_TEST_SCENES=1",
            f"DEMO_SETTINGS={' '.join(TINY)}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SLURM_CONF": str(tmp_path / "no-slurm.conf")},
    )  # local processes, as on a laptop
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout
    return result


def test_make_demo_runs_the_flow_then_reuses_it(tmp_path):
    demo = tmp_path / "demo"
    out = make_demo(tmp_path)
    assert holds_real_oddities(demo / "scenes")  # the flow met bright clouds and frames with no data
    for member in MEMBERS:
        start = json.loads((demo / member / "metrics.jsonl").read_text().splitlines()[0])
        assert start["event"] == "start" and start["world_size"] == 1
    summary = json.loads((demo / "report" / "summary.json").read_text())
    assert summary["self_ensemble"] == "auto" and set(summary["bands"]) == {"NIR", "RED"}
    rotated = load_config(ROOT / "configs" / "demo.yaml").data.augment  # each member predicts as it was trained
    assert {m["self_ensemble"] for m in summary["members"].values()} == {4 if rotated else 1}
    for band, entry in summary["bands"].items():
        assert set(entry["members"]) == {m for m in MEMBERS if m.startswith(band.lower())}
        for key in ("baseline_cpsnr", "bicubic_mean_cpsnr", "ensemble_cpsnr", "score"):
            assert isinstance(entry[key], float), key
        assert all(isinstance(e["gain_over_best_member_db"], float) for e in entry["ensembles"].values())
        assert set(entry["calibration"]) == {"nll", "coverage50", "coverage90", "scale_error_corr"}
        assert f"{band}, val split" in out
    assert "ensemble (weighted by validation cPSNR) *" in out
    assert out.strip().splitlines()[-1] == str(demo / "report" / "index.html")
    assert (demo / "report" / "index.html").is_file()

    evaluated = (demo / "report" / "summary.json").stat().st_mtime_ns
    again = make_demo(tmp_path)
    assert "already there, same parameters" in again
    assert all(f"{demo / m}: trained to train.max_steps=2 already; not submitted" in again for m in MEMBERS)
    assert "job " not in again  # nothing trained or evaluated again
    assert (demo / "report" / "summary.json").stat().st_mtime_ns == evaluated
    assert again.strip().splitlines()[-1] == str(demo / "report" / "index.html")

    shutil.rmtree(demo / "scenes")  # the same scenes drawn again: packed again to the same bytes, members kept
    packed_before = (tmp_path / "shards" / "manifest.json").stat().st_mtime_ns
    same = make_demo(tmp_path)
    assert (tmp_path / "shards" / "manifest.json").stat().st_mtime_ns != packed_before
    assert all(f"{demo / m}: trained to train.max_steps=2 already; not submitted" in same for m in MEMBERS)

    shutil.rmtree(demo / "scenes")  # drawn again with one scene more: members trained before are refused
    redrawn = make_demo(tmp_path, scenes=5, check=False)
    assert redrawn.returncode != 0
    packed = json.loads((tmp_path / "shards" / "manifest.json").read_text())["summary"]["NIR"]
    assert packed["train"] + packed["val"] == 5
    assert (
        f"piunet-dist launch: error: {demo / 'nir-seed0'}: step_0000002 was trained on other NIR shards than "
        f"data.shards={tmp_path / 'shards'} holds now"
    ) in redrawn.stderr
    assert "job " not in redrawn.stdout and (demo / "report" / "summary.json").stat().st_mtime_ns == evaluated
