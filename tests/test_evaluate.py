"""Evaluation of tiny trained members on synthetic shards: files, ensembles, processes, submission."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piunet_dist import __version__
from piunet_dist.__main__ import main
from piunet_dist.core.eval_dir import EvalDir
from piunet_dist.core.files import sha256
from piunet_dist.data.packing import pack
from piunet_dist.data.shards import scene_names, shard_paths
from piunet_dist.data.synthetic import synthesise
from piunet_dist.evaluation.ensembles import METHODS
from piunet_dist.evaluation.submission import write_submission
from tests.helpers.faults import fill
from tests.helpers.runs import TINY_RUN, train_command
from tests.helpers.scene_tree import holds_real_oddities

ROOT = Path(__file__).parent.parent
TINY = [
    *TINY_RUN,
    "data.workers=0",
    "train.compile_loss=false",
    "train.l1_warmup_steps=1",
    "train.max_steps=2",
    "train.val_every=2",
    "train.ckpt_every=2",
]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    synthesise(root / "scenes", 5, 3, ["NIR"], seed=9, workers=2)
    assert holds_real_oddities(root / "scenes")  # every command below meets them
    pack(root / "scenes", root / "shards", ["NIR"], val_fraction=0.4, workers=2, scenes_per_shard=1)
    runs = []
    for seed in (0, 1):
        run_dir = root / f"nir-seed{seed}"
        subprocess.run(
            train_command(run_dir, root / "shards", f"train.seed={seed}", *TINY),
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        runs.append(run_dir)
    return root, runs


def evaluate(*args):
    assert main(["evaluate", *map(str, args)]) == 0


def test_two_members_write_every_promised_file_once_per_scene(members, tmp_path):
    root, runs = members
    out = tmp_path / "out"
    evaluate("--runs", *runs, "--split", "val", "--self-ensemble", "4", "--out", out)
    val = scene_names(shard_paths(root / "shards", "NIR", "val"))
    assert len(val) == 2
    for method in ("nir-seed0", "nir-seed1", "ensemble"):
        for name in val:
            png = np.asarray(Image.open(out / "NIR" / method / f"{name}.png"))
            assert png.shape == (384, 384) and png.dtype == np.uint16
            scale = np.load(out / "NIR" / method / f"{name}_scale.npy")
            assert scale.shape == (384, 384) and scale.dtype == np.float32 and (scale > 0).all()
    rows = (out / "scenes.csv").read_text().splitlines()
    assert len(rows) == 1 + len(val) and sorted(r.split(",")[0] for r in rows[1:]) == sorted(val)
    summary = json.loads((out / "summary.json").read_text())["bands"]["NIR"]
    assert set(summary["members"]) == {"nir-seed0", "nir-seed1"} and summary["scenes"] == 2
    for key in ("baseline_cpsnr", "bicubic_mean_cpsnr", "ensemble_cpsnr", "score"):
        assert 20 < summary[key] < 80 or key == "score"
    best = max(summary["members"].values())
    assert set(summary["ensembles"]) == set(METHODS) and summary["ensemble_method"] == "val_weighted"
    for method, entry in summary["ensembles"].items():
        assert entry["gain_over_best_member_db"] == pytest.approx(entry["cpsnr"] - best), method
    assert summary["ensemble_cpsnr"] == summary["ensembles"]["val_weighted"]["cpsnr"]
    assert set(summary["calibration"]) == {"nll", "coverage50", "coverage90", "scale_error_corr"}
    coverage = {c["nominal"]: c["observed"] for c in summary["coverage"]}
    assert len(coverage) == 9 and coverage[0.5] == pytest.approx(summary["calibration"]["coverage50"], abs=0.05)
    assert list(coverage.values()) == sorted(coverage.values())  # wider intervals hold more pixels
    assert summary["epistemic_dn"] > 0 and 0 < summary["epistemic_share"] < 1
    assert summary["left_out"] == []
    member = json.loads((out / "summary.json").read_text())["members"]["nir-seed0"]
    assert member["weights"] == "best" and member["weights_step"] == 2 and member["trained_steps"] == 2
    assert member["max_steps"] == 2 and len(member["config_hash"]) == 12 and member["version"] == __version__
    assert member["date"].startswith("20") and member["val_cpsnr"] > 0


def test_ensemble_of_identical_members_equals_the_member(members, tmp_path):
    _, runs = members
    twin = tmp_path / "twin"
    shutil.copytree(runs[0], twin)
    out = tmp_path / "out"
    evaluate("--runs", runs[0], twin, "--split", "val", "--self-ensemble", "1", "--out", out)
    for png in (out / "NIR" / "nir-seed0").glob("*.png"):
        member = np.asarray(Image.open(png))
        assert np.array_equal(np.asarray(Image.open(out / "NIR" / "ensemble" / png.name)), member)
        scale = np.load(png.with_name(png.stem + "_scale.npy"))
        np.testing.assert_allclose(np.load(out / "NIR" / "ensemble" / f"{png.stem}_scale.npy"), scale, rtol=1e-5)
    band = json.loads((out / "summary.json").read_text())["bands"]["NIR"]
    for method, entry in band["ensembles"].items():  # weighting rounds: (wx + wx)/2w
        assert entry["cpsnr"] == pytest.approx(band["members"]["nir-seed0"], abs=1e-4), method
    assert band["ensemble_cpsnr"] == pytest.approx(band["members"]["nir-seed0"], abs=1e-6)
    assert band["epistemic_dn"] == 0 and band["epistemic_share"] == 0


def assert_close(a, b, where="summary", pixels=None):
    """Equal structure, equal text and counts, numbers equal to a float32 rounding; a
    calibration report's coverages to a few of its pixels."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        pixels = a.get("pixels", pixels)
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}", pixels)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]", pixels)
    elif isinstance(a, float):
        # a coverage is a share of the report's pixels: one whose error sits on an interval's
        # edge may fall on either side of it as the rounding goes
        edge = 3 / pixels if pixels and ".coverage" in where else 0.0
        assert a == pytest.approx(b, rel=1e-6, abs=max(1e-6, edge)), where
    else:
        assert a == b, where


@pytest.mark.processes
def test_two_processes_give_the_summary_of_one(members, tmp_path):
    _, runs = members
    evaluate("--runs", *runs, "--split", "val", "--self-ensemble", "1", "--out", tmp_path / "one")
    subprocess.run(
        [
            str(Path(sys.executable).parent / "torchrun"),
            "--nproc_per_node",
            "2",
            "-m",
            "piunet_dist",
            "evaluate",
            "--runs",
            *map(str, runs),
            "--split",
            "val",
            "--self-ensemble",
            "1",
            "--out",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one.keys() == two.keys()
    assert_close(one["bands"], two["bands"])  # batches differ, so float32 rounding may
    assert (tmp_path / "one" / "scenes.csv").read_text().splitlines()[0] == (
        tmp_path / "two" / "scenes.csv"
    ).read_text().splitlines()[0]


def test_test_split_writes_a_complete_submission_or_none(members, tmp_path, capsys):
    root, runs = members
    out = tmp_path / "out"
    test = ["--runs", runs[0], "--split", "test", "--self-ensemble", "1", "--out", out]
    assert main(["evaluate", *map(str, test)]) == 2  # a synthetic set: not the challenge's 290 scenes
    assert capsys.readouterr().err.strip() == (
        "piunet-dist evaluate: error: --split test: a submission holds the challenge's 290 test scenes; these "
        "members' test shards lack 146 of the 146 RED and 144 of the 144 NIR (give every band's members, or "
        "--partial to write it all the same)"
    )
    assert not out.exists()
    evaluate(*test, "--partial")
    summary = json.loads((out / "summary.json").read_text())["submission"]
    assert summary["scenes"] == 3 and summary["lacking"] == {"RED": 146, "NIR": 144} and not summary["complete"]
    names = scene_names(shard_paths(root / "shards", "NIR", "test"))
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert sorted(z.namelist()) == sorted(f"{n}.png" for n in names)
        image = np.asarray(Image.open(z.open(z.namelist()[0])))
        assert image.shape == (384, 384) and image.dtype == np.uint16

    (out / "NIR" / "ensemble" / f"{names[0]}.png").unlink()
    (out / "submission.zip").unlink()
    with pytest.raises(Exception, match=rf"1 test scene\(s\) have no prediction \(NIR/{names[0]}\)"):
        write_submission(EvalDir(out), {"NIR": root / "shards"})
    assert not (out / "submission.zip").exists()


def test_bad_runs_are_one_line_errors(tmp_path, capsys):
    assert main(["evaluate", "--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err


def test_predict_a_scene_directory_with_published_and_trained_weights(members, tmp_path, capsys):
    import torch

    from references.reference_piunet import RefPIUNet

    root, runs = members
    scene = next((root / "scenes" / "test" / "NIR").iterdir())
    published = tmp_path / "nir_model_checkpoint.pt"
    torch.save(RefPIUNet(8, 4, 1).state_dict(), published)  # the published format: a bare state_dict
    for weights, out in ((published, tmp_path / "a"), (runs[0] / "best", tmp_path / "b")):
        assert (
            main(
                ["predict", "--weights", str(weights), "--scene", str(scene), "--out", str(out), "--self-ensemble", "4"]
            )
            == 0
        )
        image = np.asarray(Image.open(out / f"{scene.name}.png"))
        assert image.shape == (384, 384) and image.dtype == np.uint16 and image.std() > 0
        assert np.load(out / f"{scene.name}_scale.npy").shape == (384, 384)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "LR000.png").write_bytes(b"no")
    assert main(["predict", "--weights", str(published), "--scene", str(tmp_path / "broken")]) == 2
    assert f"{tmp_path / 'broken'}: LR000.png has no quality map QM000.png" in capsys.readouterr().err


@pytest.mark.faults
def test_a_damaged_shard_is_one_line_even_from_a_loader_worker(members, tmp_path, capsys):
    root, runs = members
    damaged = tmp_path / "shards"
    shutil.copytree(root / "shards", damaged)
    val = Path(shard_paths(damaged, "NIR", "val")[0])
    val.write_bytes(val.read_bytes()[:20000])
    assert (
        main(
            [
                "evaluate",
                "--runs",
                str(runs[0]),
                "--shards",
                str(damaged),
                "--out",
                str(tmp_path / "o"),
                "--self-ensemble",
                "1",
            ]
        )
        == 2
    )
    captured = capsys.readouterr().err
    err = [line for line in captured.splitlines() if line.startswith("piunet-dist")]  # besides the progress bar
    assert len(err) == 1 and err[0].startswith("piunet-dist evaluate: error: ") and "Traceback" not in captured
    assert f"{val}: unreadable tar" in err[0] or f"{val}: sample" in err[0]


def chromium() -> str | None:
    """Debian's Chromium, installed here when it is missing and this is root with apt."""
    import os

    if not shutil.which("chromium") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, capture_output=True, env=env).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            subprocess.run(install, capture_output=True, env=env)
    return shutil.which("chromium")


@pytest.mark.processes
def test_report_page_loads_in_headless_chromium(members, tmp_path):
    import os

    _, runs = members
    # the scenes read in this process (eval.workers 0), as where worker processes cannot start
    evaluate("--runs", *runs, "--split", "val", "--self-ensemble", "1", "--workers", "0", "--out", tmp_path / "eval")
    assert main(["report", str(tmp_path / "eval"), *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    for name in ("index.html", "report.md", "curves.png", "scenes_NIR.png", "calibration_NIR.png", "panels_NIR.png"):
        assert (report / name).is_file(), name
    md = (report / "report.md").read_text()
    assert "| ensemble (weighted by validation cPSNR) * |" in md and "![scene panels](panels_NIR.png)" in md
    assert "### Members" in md and "### Uncertainty" in md and "n/a (no norm.csv)" not in md
    assert f"| nir-seed0 | run {runs[0]} | best (2) | 2 / 2 |" in md
    assert "| of | intervals | 10% | 20% | 30% | 40% | 50% | 60% | 70% | 80% | 90% | NLL (DN) |" in md
    assert "| ensemble | calibrated |" in md and "| nir-seed1 | as predicted |" in md
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    summary["bands"]["NIR"]["score"] = None  # scenes without norm.csv
    summary["bands"]["NIR"]["left_out"] = ["imgset0999"]
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path / "eval"), "--out", str(tmp_path / "again"), "--scenes", "0"]) == 0
    md = (tmp_path / "again" / "report.md").read_text()
    assert (
        "Challenge score: n/a (no norm.csv)." in md
        and "no frame is clear enough (data.min_clearance): imgset0999" in md
    )
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary)[:-40])  # cut short
    refused = subprocess.run(
        [sys.executable, "-m", "piunet_dist", "report", str(tmp_path / "eval"), "--out", str(tmp_path / "cut")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and refused.stderr.startswith(
        f"piunet-dist report: error: {tmp_path / 'eval' / 'summary.json'}: not valid JSON ("
    ), refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and not (tmp_path / "cut").exists()
    browser = chromium()
    if browser is None:
        assert os.environ.get("CI") != "true", "CI must check the report page in Chromium"
        pytest.skip("no Chromium here (Debian's chromium package) and no way to install it")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    page = (report / "index.html").as_uri()
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert 'data-loaded="yes"' in dom.stdout, dom.stderr[-2000:]  # every image decoded
    assert "PIUnet report" in dom.stdout and "ensemble (inverse-variance)" in dom.stdout
    assert dom.stdout.count("<h3>") == 2 and "Coverage of the ensemble" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = subprocess.run(
        [*flags, "--window-size=1280,2000", f"--screenshot={tmp_path / 'page.png'}", page],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (tmp_path / "page.png").stat().st_size > 50_000, shot.stderr[-2000:]


def predictions(folder: Path) -> dict[str, int]:
    """Every prediction file of a member's folder and when it was written."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("imgset*"))}


@pytest.mark.faults
def test_a_killed_evaluation_resumes_where_it_stopped_from_whole_files(members, tmp_path, capsys):
    root, runs = members
    out = tmp_path / "out"
    args = [
        "--runs",
        *map(str, runs),
        "--split",
        "test",
        "--partial",
        "--self-ensemble",
        "4",
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "piunet_dist", "evaluate", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    while proc.poll() is None and not list((out / "NIR" / runs[0].name).glob("*.png")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    before = {m.name: predictions(out / "NIR" / m.name) for m in runs}
    for name in before:
        for png in (out / "NIR" / name).glob("*.png"):
            Image.open(png).load()  # whole, or not there at all
    evaluate(*args)
    assert "predict NIR" in capsys.readouterr().err  # the progress bar
    for name, files in before.items():
        after = predictions(out / "NIR" / name)
        assert {k: after[k] for k in files} == files  # what was there was not predicted again
        assert len(after) == 2 * 3 and not list((out / "NIR" / name).glob("*.partial"))
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert len(z.namelist()) == 3


def test_other_weights_or_settings_predict_again_and_a_run_given_twice_is_refused(members, tmp_path, capsys):
    _, runs = members
    out = tmp_path / "out"
    evaluate("--runs", runs[0], "--self-ensemble", "1", "--out", out)
    first = predictions(out / "NIR" / runs[0].name)
    evaluate("--runs", runs[0], "--self-ensemble", "4", "--out", out)
    again = predictions(out / "NIR" / runs[0].name)
    views = {k for k in again if k.endswith("_views.json")}  # with four views, each one's cPSNR too
    assert again.keys() - views == first.keys() and all(again[k] != first[k] for k in first)
    assert len(views) == len([k for k in first if k.endswith(".png")])
    assert json.loads((out / "NIR" / runs[0].name / "predictions.json").read_text())["self_ensemble"] == 4
    capsys.readouterr()
    twice = runs[0].parent / "." / runs[0].name
    assert main(["evaluate", "--runs", str(runs[0]), str(runs[1]), str(twice), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"piunet-dist evaluate: error: --runs: {twice} is given twice (as {runs[0]} too); each run is one member"
    )


@pytest.mark.faults
def test_a_kill_while_best_was_replaced_leaves_best_old_which_evaluation_reads(members, tmp_path):
    _, runs = members
    run_dir = tmp_path / "nir-seed0"
    shutil.copytree(runs[0], run_dir)
    (run_dir / "best").rename(run_dir / "best.old")  # killed between the two renames
    evaluate("--runs", run_dir, "--self-ensemble", "1", "--out", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["bands"]["NIR"]["scenes"] == 2


def test_predict_refuses_a_scene_without_a_clear_frame_and_heads_that_do_not_fit(members, tmp_path, capsys):
    import torch

    from references.reference_piunet import RefPIUNet

    root, runs = members
    scene = tmp_path / "imgset0900"
    shutil.copytree(next((root / "scenes" / "test" / "NIR").iterdir()), scene)
    for qm in scene.glob("QM*.png"):
        Image.fromarray(np.zeros((128, 128), np.uint8)).save(qm)  # every frame under cloud
    published = tmp_path / "published.pt"
    torch.save(RefPIUNet(8, 4, 1).state_dict(), published)
    cases = [
        (
            ["--weights", published],
            f"{scene}: no frame is more than 85% clear (the clearest: 0%), too cloudy to "
            "trust; --keep-unclear predicts from the clearest frames anyway",
        ),
        (
            ["--weights", runs[0] / "best", "--heads", "2", "--keep-unclear"],
            f"--heads 2: {runs[0] / 'best'} was trained with 1 head(s) (its run's config.yaml)",
        ),
        (
            ["--weights", published, "--heads", "3", "--keep-unclear"],
            f"--heads 3: does not divide the 8 feature channels of {published}",
        ),
    ]
    for flags, message in cases:
        assert main(["predict", *map(str, flags), "--scene", str(scene), "--out", str(tmp_path / "sr")]) == 2
        assert capsys.readouterr().err.strip() == f"piunet-dist predict: error: {message}"
    assert not (tmp_path / "sr").exists()
    assert (
        main(
            [
                "predict",
                "--weights",
                str(published),
                "--scene",
                str(scene),
                "--out",
                str(tmp_path / "sr"),
                "--keep-unclear",
                "--self-ensemble",
                "1",
            ]
        )
        == 0
    )


@pytest.mark.faults
def test_a_full_disk_is_one_line_for_every_command_and_nothing_is_left_half_written(members, small_disk, capsys):
    root, runs = members
    evaluate("--runs", runs[0], "--self-ensemble", "1", "--out", small_disk / "eval")  # before the disk fills
    fill(small_disk)
    scene = next((root / "scenes" / "test" / "NIR").iterdir())
    commands = {
        "synth": (
            ["synth", small_disk / "scenes", "--scenes", "1", "--test-scenes", "0", "--bands", "NIR"],
            small_disk / "scenes",
        ),
        "pack": (["pack", root / "scenes", "--out", small_disk / "shards", "--workers", "1"], small_disk / "shards"),
        "evaluate": (
            ["evaluate", "--runs", runs[1], "--self-ensemble", "1", "--out", small_disk / "eval2"],
            small_disk / "eval2",
        ),
        "predict": (
            [
                "predict",
                "--weights",
                runs[0] / "best",
                "--scene",
                scene,
                "--out",
                small_disk / "sr",
                "--self-ensemble",
                "1",
            ],
            small_disk / "sr",
        ),
        "report": (["report", small_disk / "eval", runs[0], "--out", small_disk / "report"], small_disk / "report"),
    }
    for command, (argv, where) in commands.items():
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 2, command
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if line.startswith("piunet-dist")]  # besides progress bars
        assert (
            len(said) == 1
            and said[0].startswith(f"piunet-dist {command}: error: {where}")
            and said[0].endswith(": cannot write (No space left on device)")
        ), (command, err[-2000:])
        assert "Traceback" not in err
    assert [p for p in small_disk.rglob("*") if p.name.endswith(".partial") or ".partial" in p.name] == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # and a read-only disk
    assert main(["report", str(small_disk / "eval"), "--out", str(small_disk / "eval" / "report")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"piunet-dist report: error: {small_disk / 'eval' / 'report'}: cannot write (Read-only file system)"
    )


def test_the_report_leaves_out_a_torn_line_of_metrics_jsonl(members, tmp_path, capsys):
    _, runs = members
    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"event": "val", "st')  # a write cut short by a kill
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert f"{run_dir / 'metrics.jsonl'}: 1 line(s) that are not whole records left out" in capsys.readouterr().err
    assert (tmp_path / "report" / "curves.png").is_file()


def test_members_with_the_same_names_get_a_column_each(members, tmp_path):
    from piunet_dist.evaluation.members import find_members

    _, runs = members
    dirs = []
    for where in ("a/x/nir", "b/x/nir", "c/x/nir", "d/mean"):  # "mean" is also an ensemble method's column
        shutil.copytree(runs[0], tmp_path / where, ignore=shutil.ignore_patterns("checkpoints"))
        dirs.append(tmp_path / where)
    names = [m.name for m in find_members(dirs, "best")]
    assert len(set(names)) == 4 and names[:2] == ["nir", "x-nir"] and "mean" not in names


def test_a_calibration_fitted_on_val_scenes_is_checked_on_others_and_applied_after(members, tmp_path, capsys):
    root, runs = members
    val = tmp_path / "val"
    evaluate("--runs", *runs, "--split", "val", "--out", val)
    assert "calibration (quantile, fitted on 1 scenes, checked on 1 others)" in capsys.readouterr().out
    found = json.loads((val / "summary.json").read_text())["bands"]["NIR"]["calibration_fit"]
    scenes = scene_names(shard_paths(root / "shards", "NIR", "val"))
    assert found["method"] == "quantile" and found["fit_scenes"] == 1 and len(found["check_scenes"]) == 1
    assert found["check_scenes"][0] in scenes
    for checked in (found["ensemble"], *found["members"].values()):
        assert checked["nominal"] == pytest.approx([0.1 * i for i in range(1, 10)])
        for when in ("before", "after"):
            coverage = checked[when]["coverage"]
            assert len(coverage) == 9 and coverage == sorted(coverage) and 0 <= coverage[0] and coverage[-1] <= 1
    fit = json.loads((val / "NIR" / "ensemble" / "calibration.json").read_text())
    assert fit["band"] == "NIR" and fit["fitted_on"] == 1 and fit["factor"] > 0
    for run in runs:  # beside the weights it was fitted for, where predict finds it
        own = json.loads((run / "best" / "calibration.json").read_text())
        assert own == json.loads((val / "NIR" / run.name / "calibration.json").read_text())
        assert list(own["weights"].values()) == [sha256(run / "best" / "model.safetensors")]

    test = tmp_path / "test"
    evaluate("--runs", *runs, "--split", "test", "--partial", "--calibration", val, "--interval", "0.9", "--out", test)
    width = np.interp(0.9, fit["levels"], fit["widths"])
    for name in scene_names(shard_paths(root / "shards", "NIR", "test")):
        folder = test / "NIR" / "ensemble"
        sr = np.asarray(Image.open(folder / f"{name}.png")).astype(float)
        scale = np.load(folder / f"{name}_scale.npy")
        np.testing.assert_allclose(np.load(folder / f"{name}_scale_calibrated.npy"), scale * fit["factor"], rtol=1e-5)
        lower, upper = (
            np.asarray(Image.open(folder / f"{name}_{end}.png")).astype(float) for end in ("lower", "upper")
        )
        assert np.abs(upper - np.clip(sr + width * scale, 0, 65535)).max() <= 1.0
        assert np.abs(lower - np.clip(sr - width * scale, 0, 65535)).max() <= 1.0

    capsys.readouterr()
    assert main(["evaluate", "--runs", str(runs[0]), "--split", "test", "--partial", "--calibration", str(val)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"piunet-dist evaluate: error: {val / 'NIR' / 'ensemble' / 'calibration.json'}: fitted for other weights "
        "(nir-seed0, nir-seed1) than these (nir-seed0); evaluate these on the val split to fit theirs"
    )
    scene = next((root / "scenes" / "test" / "NIR").iterdir())
    out = tmp_path / "sr"
    assert main(["predict", "--weights", str(runs[0] / "best"), "--scene", str(scene), "--out", str(out)]) == 0
    member = json.loads((runs[0] / "best" / "calibration.json").read_text())
    calibrated = np.load(out / f"{scene.name}_scale_calibrated.npy")
    np.testing.assert_allclose(calibrated, np.load(out / f"{scene.name}_scale.npy") * member["factor"], rtol=1e-5)
    ensemble_fit = val / "NIR" / "ensemble" / "calibration.json"
    flags = ["--weights", str(runs[0] / "best"), "--scene", str(scene), "--calibration", str(ensemble_fit)]
    capsys.readouterr()
    assert main(["predict", *flags, "--out", str(out)]) == 2
    assert "fitted for other weights" in capsys.readouterr().err
