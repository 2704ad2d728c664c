"""Real PROBA-V files, exactly as ESA ships them, through the readers and every command that
takes them. They lie outside the repository (../shared/reference/real-scenes, whose README
says what they are); where that folder is absent these tests are skipped, saying so."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piunet_dist.__main__ import main
from piunet_dist.data.pipeline import EvalScenes
from piunet_dist.data.probav import NO_DATA, NOMINAL_DN, SceneRef, find_scenes, load_scene, read_norm, validate_scene
from piunet_dist.data.shards import load_manifest, shard_paths, verify

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "reference" / "real-scenes"
TREE = REAL / "probav"  # two test scenes and the whole norm.csv
WEIGHTS = ROOT.parent / "shared" / "reference" / "weights" / "piunet-nir-real.pt"

pytestmark = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"{REAL} is absent: the real PROBA-V files are kept outside the repository"
)


def png(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def lr_only(tmp_path_factory):
    """The LR-only train scenes in the challenge layout, by links: nothing is copied."""
    root = tmp_path_factory.mktemp("lr-only")
    (root / "train").mkdir()
    for band in ("NIR", "RED"):
        (root / "train" / band).symlink_to(REAL / "lr-only" / band)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "shards"
    assert main(["pack", str(TREE), "--out", str(out), "--workers", "1"]) == 0
    return out


def test_the_readers_take_every_value_of_the_real_test_scenes_as_it_is():
    refs = find_scenes(TREE)
    assert [(r.split, r.band, r.name) for r in refs] == [("test", "NIR", "imgset1306"), ("test", "RED", "imgset1160")]
    for ref in refs:
        assert validate_scene(ref) == []
        scene = load_scene(ref)
        for i, frame in enumerate(scene.lr):
            assert np.array_equal(frame, png(ref.path / f"LR{i:03d}.png"))
        assert scene.lr.max() == NO_DATA and not (scene.qm & (scene.lr == NO_DATA)).any()
    nir = load_scene(refs[0])
    bright = (nir.lr[15] > NOMINAL_DN) & (nir.lr[15] != NO_DATA)
    assert bright.sum() == 22 and (bright & nir.qm[15]).sum() == 6  # a bright cloud's pixels, 6 marked clear
    assert (nir.lr[6] == NO_DATA).sum() == 4093
    assert load_scene(refs[1]).lr[5].max() == 27184


def test_the_lr_only_scenes_are_read_with_all_clear_masks_and_refused_for_packing(lr_only):
    refs = find_scenes(lr_only)
    assert [r.name for r in refs] == [
        "imgset0595",
        "imgset0596",
        "imgset0601",
        "imgset0001",
        "imgset0007",
        "imgset0010",
    ]
    for ref in refs:
        scene = load_scene(ref, masks_required=False)
        assert scene.qm.all() and scene.masked_frames == 0 and scene.hr is None
        assert all(np.array_equal(f, png(ref.path / f"LR{i:03d}.png")) for i, f in enumerate(scene.lr))
    assert load_scene(refs[0], masks_required=False).lr.max() == 26672
    assert (load_scene(refs[1], masks_required=False).lr[18] == NO_DATA).sum() == 86
    assert validate_scene(refs[0])[0] == "train/NIR/imgset0595: LR000.png has no quality map QM000.png"


def test_describe_reports_what_real_values_hold(lr_only, capsys):
    assert main(["synth", "--describe", str(TREE), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "NIR: the values of 1 scenes (16 frames)" in out
    assert "above 16,383 DN (bright clouds): 1 of 1 scenes, 1 of 16 frames, up to 17,088 DN; 6 of 22 such" in out
    assert "65,520 (no data): 1 of 1 scenes, 1 frames, up to 4,093 pixels of a frame; 0 marked clear" in out
    assert "RED: the values of 1 scenes (19 frames)" in out and "up to 27,184 DN; 0 of 305 such" in out
    assert "no scene with HR.png and SM.png: the sensor model is fitted only against a target" in out
    assert main(["synth", "--describe", str(lr_only), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "above 16,383 DN (bright clouds): 2 of 3 scenes, 8 of 51 frames, up to 26,672 DN" in out
    assert "65,520 (no data): 1 of 3 scenes, 1 frames, up to 86 pixels of a frame" in out
    assert "51 frames without a quality map, taken as all clear" in out


def test_the_whole_norm_csv_is_read_beside_a_tree_holding_two_of_its_scenes(packed):
    text = (TREE / "norm.csv").read_text()
    assert not text.endswith("\n") and len(text.splitlines()) == 1450
    norm = read_norm(TREE)
    assert sorted(norm) == [f"imgset{i:04d}" for i in range(1450)]
    (scene,) = EvalScenes(shard_paths(packed, "NIR", "test"), keep_unclear=True)
    assert scene["norm"] == norm["imgset1306"]


def test_real_test_scenes_pack_and_verify_as_the_loaders_read_them(packed, capsys):
    manifest = load_manifest(packed)
    assert manifest["summary"] == {b: {"train": 0, "val": 0, "test": 1} for b in ("NIR", "RED")}
    for band in ("NIR", "RED"):
        facts = manifest["facts"][band]["test"]
        assert facts["above_14_bits"] == facts["no_data"] == 1 and facts["no_clear_frame"] == 0
    assert verify(packed) == []
    assert main(["pack", "--verify", str(packed)]) == 0
    assert "2 of 2 shards verified" in capsys.readouterr().out
    for band, name in (("NIR", "imgset1306"), ("RED", "imgset1160")):
        (scene,) = EvalScenes(shard_paths(packed, band, "test"), keep_unclear=True)
        files = load_scene(SceneRef(name, band, "test", TREE / "test" / band / name))
        order = np.argsort(-files.clearance, kind="stable")[:9]  # the nine clearest, as the paper reads them
        assert np.array_equal(scene["lr"].numpy(), files.lr[order].astype(np.float32))


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} is absent: the real-trained weights are not here")
def test_a_real_trained_network_predicts_evaluates_and_submits_the_real_test_scene(packed, tmp_path):
    scene_dir = TREE / "test" / "NIR" / "imgset1306"
    assert main(["predict", "--weights", str(WEIGHTS), "--scene", str(scene_dir), "--out", str(tmp_path)]) == 0
    predicted = png(tmp_path / "imgset1306.png")
    assert predicted.shape == (384, 384) and predicted.dtype == np.uint16
    out = tmp_path / "eval"
    args = ["--runs", f"{WEIGHTS}:NIR", "--split", "test", "--partial", "--shards", str(packed), "--out", str(out)]
    assert main(["evaluate", *args]) == 0
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert z.namelist() == ["imgset1306.png"]
        submitted = np.asarray(Image.open(z.open("imgset1306.png")))
    assert np.array_equal(submitted, predicted)  # one scene, one network, read the same way by both
    frame = png(scene_dir / "LR000.png").astype(np.float64)
    assert abs(predicted[3:-3, 3:-3].mean() - frame.mean()) < 500  # the scene's brightness, in DN
