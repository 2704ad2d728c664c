import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piunet_dist.__main__ import main
from piunet_dist.core.errors import UserError
from piunet_dist.core.files import sha256
from piunet_dist.data.packing import pack
from piunet_dist.data.pipeline import EvalScenes
from piunet_dist.data.probav import find_scenes, load_scene
from piunet_dist.data.shards import decode_sample, load_manifest, shard_paths, verify
from tests.helpers.scene_tree import write_norm, write_scene


def small_tree(root, n_train=10, n_test=2):
    names = []
    for band, offset in (("RED", 0), ("NIR", 100)):
        for i in range(n_train):
            names.append(
                write_scene(
                    root,
                    "train",
                    band,
                    f"imgset{offset + i:04d}",
                    n_frames=9 + i,
                    mask_bits=1 if i % 2 else 8,
                    seed=offset + i,
                ).name
            )
        for i in range(n_test):
            names.append(write_scene(root, "test", band, f"imgset{offset + 50 + i:04d}", seed=offset + 50 + i).name)
    write_norm(root, names)
    return root


def read_back(out):
    """{(band, split, scene): sample dict} of every shard in the manifest."""
    got = {}
    for entry in load_manifest(out)["shards"]:
        with tarfile.open(out / entry["path"]) as tar:
            members = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
        for key, sample in members.items():
            got[(entry["band"], entry["split"], key)] = decode_sample(sample)
    return got


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    src = small_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("shards")
    pack(src, out, ["NIR", "RED"], seed=7, workers=2, scenes_per_shard=4)
    return src, out


def test_pack_then_read_back_equals_the_files_bit_for_bit(packed):
    src, out = packed
    got = read_back(out)
    refs = find_scenes(src)
    assert len(got) == len(refs) == 24
    for ref in refs:
        split = "test" if ref.split == "test" else next(s for s in ("train", "val") if (ref.band, s, ref.name) in got)
        scene, meta = got[(ref.band, split, ref.name)]
        for i in range(len(scene.lr)):
            png = np.asarray(Image.open(ref.path / f"LR{i:03d}.png"))
            assert scene.lr[i].dtype == np.uint16 and np.array_equal(scene.lr[i], png)
        original = load_scene(ref)
        assert np.array_equal(scene.qm, original.qm)
        assert (scene.hr is None) == (ref.split == "test")
        if scene.hr is not None:
            assert np.array_equal(scene.hr, np.asarray(Image.open(ref.path / "HR.png")))
            assert np.array_equal(scene.sm, original.sm)
        assert meta["scene"] == ref.name and meta["band"] == ref.band and meta["split"] == split
        assert meta["clearance"] == pytest.approx(original.clearance.tolist(), abs=1e-6)
        assert meta["norm"] is not None


def test_manifest_counts_and_checksums(packed):
    _, out = packed
    manifest = load_manifest(out)
    assert manifest["summary"] == {"NIR": {"train": 7, "val": 3, "test": 2}, "RED": {"train": 7, "val": 3, "test": 2}}
    assert sum(s["samples"] for s in manifest["shards"]) == 24
    assert manifest["params"]["seed"] == 7 and manifest["skipped"] == []
    assert verify(out) == []
    assert [p.rsplit("/", 1)[1] for p in shard_paths(out, "NIR", "train")] == ["train-000000.tar", "train-000001.tar"]


def test_validation_split_is_disjoint_and_reproducible(packed, tmp_path):
    src, out = packed

    def names(root, split):
        return {k[2] for k in read_back(root) if k[1] == split}

    train, val = names(out, "train"), names(out, "val")
    assert not train & val and len(train | val) == 20
    again = tmp_path / "again"
    pack(src, again, ["NIR", "RED"], seed=7, scenes_per_shard=16)
    assert names(again, "val") == val
    other = tmp_path / "other"
    pack(src, other, ["NIR", "RED"], seed=8, scenes_per_shard=16)
    assert names(other, "val") != val


def test_val_list_chooses_the_validation_scenes(packed, tmp_path):
    src, _ = packed
    (tmp_path / "val.txt").write_text("# held out\nimgset0001\nimgset0102\n")
    pack(src, tmp_path / "o", ["NIR", "RED"], val_list=tmp_path / "val.txt", scenes_per_shard=16)
    assert sorted(k[2] for k in read_back(tmp_path / "o") if k[1] == "val") == ["imgset0001", "imgset0102"]
    (tmp_path / "bad.txt").write_text("imgset0001\nimgset9999\n")
    with pytest.raises(UserError, match=r"bad.txt: 1 name\(s\) that are not train scenes here: imgset9999"):
        pack(src, tmp_path / "o2", ["NIR"], val_list=tmp_path / "bad.txt", scenes_per_shard=16)


def test_invalid_scenes_stop_the_pack_and_leave_no_manifest(tmp_path, capsys):
    src = small_tree(tmp_path / "src", n_train=3, n_test=1)
    (src / "train/NIR/imgset0101/QM002.png").unlink()
    (src / "train/RED/imgset0000/HR.png").unlink()
    out = tmp_path / "out"
    assert main(["pack", str(src), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "train/NIR/imgset0101: LR002.png has no quality map QM002.png" in err
    assert "train/RED/imgset0000: HR.png is missing" in err
    assert "2 invalid scene(s) listed above; nothing written" in err
    assert not out.exists()

    assert main(["pack", str(src), "--out", str(out), "--workers", "1", "--skip-invalid"]) == 0
    err = capsys.readouterr().err
    assert "skipped train/NIR/imgset0101: train/NIR/imgset0101: LR002.png has no quality map QM002.png" in err
    assert "skipped train/RED/imgset0000: train/RED/imgset0000: HR.png is missing" in err
    manifest = load_manifest(out)
    assert [s["scene"] for s in manifest["skipped"]] == ["train/NIR/imgset0101", "train/RED/imgset0000"]
    assert sum(s["samples"] for s in manifest["shards"]) == 6


def test_a_repack_removes_the_old_manifest_before_writing(packed, tmp_path):
    src, _ = packed
    out = tmp_path / "out"
    pack(src, out, ["NIR"], scenes_per_shard=16)
    (src / "norm.csv").rename(src / "norm.bak")
    (src / "norm.csv").write_text("broken line\n")
    try:
        with pytest.raises(UserError, match="norm.csv:1"):
            pack(src, out, ["NIR"], scenes_per_shard=16)
    finally:
        (src / "norm.bak").replace(src / "norm.csv")
    assert load_manifest(out)  # a pack that stopped before writing leaves the old, true one


@pytest.mark.faults
def test_verify_finds_changed_missing_and_short_shards(packed, tmp_path, capsys):
    _, out = packed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shards = load_manifest(copy)["shards"]
    (copy / shards[0]["path"]).write_bytes(b"garbage")
    (copy / shards[1]["path"]).unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][2]["samples"] += 1
    entry = manifest["shards"][2]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(copy)
    assert len(problems) == 3
    assert "sha256 differs" in problems[0] and "missing" in problems[1]
    assert f"{entry['samples'] - 1} samples, the manifest says {entry['samples']}" in problems[2]
    assert main(["pack", "--verify", str(copy)]) == 1
    assert f"{len(shards) - 3} of {len(shards)} shards verified" in capsys.readouterr().out
    assert main(["pack", "--verify", str(tmp_path)]) == 2  # no manifest: one clear line


@pytest.mark.faults
def test_verify_decodes_every_sample_as_the_loaders_do(packed, tmp_path, capsys):
    """A shard whose bytes match its manifest but whose sample no loader can read is not whole."""
    _, out = packed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["shards"][0]
    path = copy / entry["path"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    damaged = members[1][0].name.split(".")[0]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name == f"{damaged}.qm.npy":
                buffer = io.BytesIO()
                np.save(buffer, np.ones((3, 128, 128), bool))  # fewer masks than frames
                data = buffer.getvalue()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    entry["sha256"] = sha256(path)  # the digest agrees: only decoding finds it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    shard_paths(copy, entry["band"], entry["split"], digest=True)
    problems = verify(copy)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: sample {damaged}: quality maps are bool (3, 128, 128), expected bool (")
    assert problems[0].endswith(", 128, 128) like the frames (damaged)")
    assert main(["pack", "--verify", str(copy)]) == 1
    assert f"{len(manifest['shards']) - 1} of {len(manifest['shards'])} shards verified" in capsys.readouterr().out


def test_the_summary_counts_how_scenes_will_be_read_and_an_sm_with_no_clear_pixel_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    names = [
        write_scene(src, "train", "NIR", "imgset0600", clearance=[1.0] * 5 + [0.0] * 5).name,  # 5 clear frames
        write_scene(src, "train", "NIR", "imgset0601", clearance=[0.6] * 9).name,  # none
        write_scene(src, "train", "NIR", "imgset0602", sm_clear=0.5).name,
        write_scene(src, "test", "NIR", "imgset1306", clearance=[0.0] * 9).name,  # every QM all zeros
    ]
    odd = src / "train" / "NIR" / "imgset0600" / "LR003.png"
    frame = np.asarray(Image.open(odd)).copy()
    frame[:3, :3], frame[5, 5] = 65520, 28656
    Image.fromarray(frame).save(odd)
    write_norm(src, names)
    assert main(["pack", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "  fewer than 9 frames over 85% clear (topped up with repeats when read): 1 train, 0 test" in out
    assert "  no frame over 85% clear (train and val: left out when read, as in the paper; test: read from its " in out
    assert "clearest frame): 1 train, 1 test" in out
    assert "  values above 16,383 DN (bright clouds; read as they are): 1 train, 0 test" in out
    assert (
        "  65,520 (no data) in some frame (kept; the network sees what other frames saw there): 1 train, 0 test" in out
    )
    assert "  HR under 75% clear, the data set's own floor (scored on its clear pixels): 1 train, 0 test" in out
    facts = load_manifest(tmp_path / "out")["facts"]["NIR"]
    assert facts["train"] == {
        "fewer_clear_frames": 1,
        "no_clear_frame": 1,
        "above_14_bits": 1,
        "no_data": 1,
        "target_under_75": 1,
    }
    assert verify(tmp_path / "out") == []
    (test,) = EvalScenes(shard_paths(tmp_path / "out", "NIR", "test"), keep_unclear=True)
    assert test["name"] == "imgset1306" and test["lr"].shape == (9, 128, 128)  # from its clearest frame
    write_scene(src, "train", "NIR", "imgset0603", sm_clear=0.0)
    write_norm(src, [*names, "imgset0603"])
    assert main(["pack", str(src), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "train/NIR/imgset0603: SM.png marks no pixel clear: nothing of its HR can be learnt or scored" in err


def test_cli_refuses_impossible_settings(tmp_path, capsys):
    assert main(["pack", str(tmp_path), "--out", str(tmp_path / "o"), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction: 1.5 is not in [0, 1)" in capsys.readouterr().err
    assert main(["pack", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no scenes" in capsys.readouterr().err


def test_parts_packed_apart_merge_into_the_manifest_of_one_pack(packed, tmp_path):
    src, whole = packed
    out = tmp_path / "parts"
    for band in ("NIR", "RED"):
        for split in ("train", "val", "test"):
            assert (
                main(
                    [
                        "pack",
                        str(src),
                        "--out",
                        str(out),
                        "--bands",
                        band,
                        "--splits",
                        split,
                        "--part",
                        "--seed",
                        "7",
                        "--scenes-per-shard",
                        "4",
                        "--workers",
                        "1",
                    ]
                )
                == 0
            )
    assert not (out / "manifest.json").exists()
    assert main(["pack", "--merge", str(out)]) == 0
    merged, single = load_manifest(out), load_manifest(whole)
    key = lambda m: sorted((s["path"], s["samples"], s["sha256"]) for s in m["shards"])  # noqa: E731
    assert key(merged) == key(single)
    assert merged["summary"] == single["summary"] and merged["facts"] == single["facts"]
    assert verify(out) == []


def test_merge_refuses_parts_that_disagree(packed, tmp_path):
    src, _ = packed
    out = tmp_path / "parts"
    pack(src, out, ["NIR"], seed=7, scenes_per_shard=4, splits=("train",), part=True)
    pack(src, out, ["RED"], seed=8, scenes_per_shard=4, splits=("train",), part=True)
    with pytest.raises(UserError, match="with other parameters"):
        from piunet_dist.data.packing import merge

        merge(out)


def shard_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*"))}


@pytest.mark.faults
def test_an_interrupted_repack_leaves_the_previous_pack_whole_and_no_worker(tmp_path):
    src = small_tree(tmp_path / "src", n_train=24, n_test=0)
    out = tmp_path / "out"
    assert main(["pack", str(src), "--out", str(out), "--workers", "2", "--scenes-per-shard", "4"]) == 0
    before = (out / "manifest.json").read_text(), shard_files(out)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piunet_dist",
            "pack",
            str(src),
            "--out",
            str(out),
            "--workers",
            "2",
            "--scenes-per-shard",
            "1",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and not list(out.glob(".pack.partial-*/*/*.tar")):
        time.sleep(0.01)  # until the new pack is being written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == "piunet-dist pack: error: pack interrupted by SIGTERM"
    assert ((out / "manifest.json").read_text(), shard_files(out)) == before
    assert verify(out) == [] and not list(out.glob(".pack*"))
    left = subprocess.run(["pgrep", "-f", "--", f"--out {out} "], capture_output=True, text=True).stdout
    assert left == "", f"pack workers left running: {left}"


def test_a_subset_repack_keeps_the_rest_and_deletes_only_its_own_shards(packed, tmp_path):
    src, whole = packed
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    (out / "NIR" / "train-backup.tar.gz").write_bytes(b"the user's own file")
    old = load_manifest(out)
    pack(src, out, ["NIR"], seed=7, scenes_per_shard=16)  # fewer, larger NIR shards
    new = load_manifest(out)
    red = lambda m: [e for e in m["shards"] if e["band"] == "RED"]  # noqa: E731
    assert red(new) == red(old) and new["summary"]["RED"] == old["summary"]["RED"]
    assert new["params"]["bands"] == ["NIR", "RED"]
    assert (out / "NIR" / "train-backup.tar.gz").read_bytes() == b"the user's own file"
    listed = {e["path"] for e in new["shards"]}
    assert {str(p.relative_to(out)) for p in out.glob("*/*.tar")} == listed  # the stale NIR shards are gone
    assert verify(out) == []


@pytest.mark.faults
def test_a_switch_cut_short_is_finished_by_the_next_reader(packed, tmp_path, monkeypatch):
    src, whole = packed
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    real_replace, calls = os.replace, []

    def failing(a, b):
        calls.append(b)
        if len(calls) == 3:  # the plan is written, one shard is moved in, the next fails
            raise OSError(5, "Input/output error")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        pack(src, out, ["NIR", "RED"], seed=8, scenes_per_shard=3)
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(out.glob(".pack.partial-*.switch.json"))
    manifest = load_manifest(out)  # finishes the switch
    assert manifest["params"]["seed"] == 8 and manifest["params"]["scenes_per_shard"] == 3
    assert verify(out) == [] and not list(out.glob(".pack*"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("imgset0100 nan", "imgset0100 has nan, not a positive cPSNR in dB"),
        ("imgset0100 -3.5", "imgset0100 has -3.5, not a positive cPSNR in dB"),
        ("imgset0100 inf", "imgset0100 has inf, not a positive cPSNR in dB"),
        ("imgset0101 40.0", "imgset0101 is listed a second time"),
        (None, "no baseline for 1 train scene(s): imgset0100"),
    ],
)
def test_a_damaged_norm_csv_stops_the_pack(tmp_path, capsys, line, message):
    src = small_tree(tmp_path / "src", n_train=2, n_test=0)
    rows = [r for r in (src / "norm.csv").read_text().splitlines() if not r.startswith("imgset0100 ")]
    (src / "norm.csv").write_text("\n".join(rows + ([line] if line else [])) + "\n")
    assert main(["pack", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("piunet-dist pack: error: ") and err[-1].endswith(message), err
    assert not (tmp_path / "out").exists()
