import hashlib

import numpy as np
import pytest

from piunet_dist.__main__ import main
from piunet_dist.data.probav import find_scenes, load_scene, read_norm, validate_scene
from piunet_dist.data.synthetic import make_scene


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    out = root / "a"
    assert main(["synth", str(out), "--scenes", "3", "--test-scenes", "1", "--seed", "5", "--workers", "2"]) == 0
    return out


def test_writes_the_challenge_layout_that_validates(synth):
    refs = find_scenes(synth)
    assert [(r.split, r.band, r.name) for r in refs] == (
        [("train", "NIR", f"imgset{i:04d}") for i in (3, 4, 5)]
        + [("test", "NIR", "imgset0007")]
        + [("train", "RED", f"imgset{i:04d}") for i in (0, 1, 2)]
        + [("test", "RED", "imgset0006")]
    )
    assert all(validate_scene(r) == [] for r in refs)
    norm = read_norm(synth)
    assert sorted(norm) == sorted(r.name for r in refs)
    assert all(35 < v < 60 for v in norm.values())  # the baseline's cPSNR, in dB
    for ref in refs:
        scene = load_scene(ref)
        assert 9 <= len(scene.lr) <= 30
        assert scene.lr.max() < 2**14 and scene.lr.min() >= 0
        assert (scene.hr is None) == (ref.split == "test")


def test_same_seed_same_bytes_other_seed_other_scenes(synth, tmp_path):
    again = tmp_path / "again"
    main(["synth", str(again), "--scenes", "3", "--test-scenes", "1", "--seed", "5", "--workers", "1"])
    assert digest(again) == digest(synth)
    other = make_scene(6, "NIR", 0)
    assert not np.array_equal(other["hr"], make_scene(5, "NIR", 0)["hr"])


def test_scenes_look_like_land_seen_through_shifted_blurred_noisy_cloudy_frames():
    scene = make_scene(0, "RED", 0)
    hr = scene["hr"].astype(float)
    # structure at many scales: large-scale variance, and edges (fields, roads, a river)
    coarse = hr.reshape(12, 32, 12, 32).mean(axis=(1, 3))
    assert coarse.std() > 300 and np.abs(np.diff(hr, axis=1)).max() > 1000
    lr = scene["lr"].astype(float)
    clear = scene["qm"].all(axis=(1, 2))
    assert clear.any() and not clear.all()  # some frames clear, some cloudy
    both = [i for i in range(len(lr)) if clear[i]][:2]
    if len(both) == 2:
        assert np.abs(lr[both[0]] - lr[both[1]]).mean() > 20  # frames differ (shift, noise)
    down = hr.reshape(128, 3, 128, 3).mean(axis=(1, 3))
    i = both[0]
    corr = np.corrcoef(down.ravel(), lr[i].ravel())[0, 1]
    assert corr > 0.5  # yet each views the HR scene


def test_rerun_with_same_parameters_reuses_and_other_content_is_refused(synth, tmp_path, capsys):
    assert main(["synth", str(synth), "--scenes", "3", "--test-scenes", "1", "--seed", "5"]) == 0
    assert "already there" in capsys.readouterr().out
    assert main(["synth", str(synth), "--scenes", "4", "--test-scenes", "1", "--seed", "5"]) == 2
    assert "exists and is not this synthetic set" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--scenes", "0", "--test-scenes", "0"]) == 2
