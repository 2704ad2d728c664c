import io
import logging

import numpy as np
import pytest
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader

from piunet_dist.core.config import DataConfig
from piunet_dist.data.pipeline import CorruptData, EvalScenes, TrainPatches, fill_no_data
from piunet_dist.data.probav import Scene
from piunet_dist.data.shards import encode_scene
from tests.helpers.distributed import run_group


def consistent_scene(name, seed, n_frames=12, cloudy_frames=0):
    """LR frames that are exact 3x3 means of the HR, so any patch can be checked against it."""
    rng = np.random.default_rng(seed)
    hr = rng.integers(4000, 12000, (384, 384)).astype(np.uint16)
    hr = (hr // 9 * 9).astype(np.uint16)
    lr = np.repeat(hr.reshape(128, 3, 128, 3).mean(axis=(1, 3)).round().astype(np.uint16)[None], n_frames, 0)
    qm = np.ones((n_frames, 128, 128), bool)
    qm[:cloudy_frames, :, :64] = False
    sm = rng.random((384, 384)) > 0.2
    return Scene(name=name, band="NIR", lr=lr, qm=qm, hr=hr, sm=sm, norm=45.0)


def write_shards(directory, scenes, per_shard, split="train"):
    paths = []
    for start in range(0, len(scenes), per_shard):
        path = directory / f"{split}-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(path), encoder=False) as sink:
            for scene in scenes[start : start + per_shard]:
                sink.write(encode_scene(scene, split))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    scenes = [consistent_scene(f"imgset{i:04d}", i) for i in range(7)]
    scenes.append(consistent_scene("imgset0007", 7, cloudy_frames=12))  # no clear frame at all
    return write_shards(d, scenes, per_shard=3)


def settings(**kw):
    return DataConfig(**{"shuffle_buffer": 8, "patches_per_scene": 4, **kw})


def test_train_patches_are_consistent_after_augmentation(shards):
    stream = iter(TrainPatches(shards, settings(augment=True), seed=0, rank=0))
    for _ in range(40):
        lr, hr, sm, skipped = next(stream)
        assert skipped.tolist() == [0, 0]
        assert lr.shape == (9, 32, 32) and hr.shape == sm.shape == (1, 96, 96)
        assert lr.dtype == hr.dtype == np.float32 and sm.dtype == bool
        assert sm.mean() > 0.1
        expected = hr[0].reshape(32, 3, 32, 3).mean(axis=(1, 3))  # in DN, as every batch of the data layer
        np.testing.assert_allclose(lr[0], expected, atol=0.6)  # frames and HR turned alike
        np.testing.assert_allclose(lr[5], lr[0])


def test_train_stream_is_a_function_of_seed_segment_rank(shards):
    def first(n, **kw):
        stream = iter(TrainPatches(shards, settings(), **kw))
        return np.stack([next(stream)[0] for _ in range(n)])

    a = first(10, seed=1, rank=0, segment=0)
    np.testing.assert_array_equal(a, first(10, seed=1, rank=0, segment=0))
    assert not np.array_equal(a, first(10, seed=1, rank=1, segment=0))
    assert not np.array_equal(a, first(10, seed=1, rank=0, segment=1))


def _ranks_read(rank, world_size, shards, names):
    train = DataLoader(TrainPatches(shards, settings(), seed=0, rank=rank), batch_size=6, num_workers=2)
    batches = []
    for i, (lr, _, _, _) in enumerate(train):
        assert lr.shape == (6, 9, 32, 32)
        batches.append(lr)
        if i == 4:
            break
    counts = [None] * world_size
    dist.all_gather_object(counts, (len(batches), batches[0][0, 0, 0, 0].item()))
    assert counts[0][0] == counts[1][0] == 5, counts
    assert counts[0][1] != counts[1][1], "ranks must draw different patches"

    scenes = DataLoader(EvalScenes(shards, rank=rank, world_size=world_size), batch_size=None, num_workers=2)
    seen = [s["name"] for s in scenes]
    everyone = [None] * world_size
    dist.all_gather_object(everyone, seen)
    flat = [n for part in everyone for n in part]
    assert sorted(flat) == names, flat
    assert all(part for part in everyone), "both ranks evaluate"


@pytest.mark.processes
def test_two_ranks_two_workers_train_evenly_and_evaluate_every_scene_once(shards):
    # 3 shards for 4 readers; the scene with no clear frame is left out of validation
    run_group(_ranks_read, 2, shards, [f"imgset{i:04d}" for i in range(7)])


def test_eval_scenes_keep_unclear_test_scenes_and_carry_metadata(shards):
    scenes = list(EvalScenes(shards, keep_unclear=True))
    assert [s["name"] for s in scenes] == [f"imgset{i:04d}" for i in range(8)]
    s = scenes[0]
    assert s["lr"].shape == (9, 128, 128) and s["hr"].shape == (384, 384) and s["sm"].dtype == torch.bool
    assert s["band"] == "NIR" and s["norm"] == 45.0 and s["has_target"]
    assert s["baseline"].shape == (384, 384)
    again = list(EvalScenes(shards, keep_unclear=True))
    assert all(torch.equal(a["lr"], b["lr"]) for a, b in zip(scenes, again))


@pytest.fixture
def broken(tmp_path, shards):
    good = consistent_scene("imgset0100", 100)
    bad = encode_scene(consistent_scene("imgset0101", 101), "train")
    bad["lr.npy"] = b"\x93NUMPY garbage"
    path = tmp_path / "broken.tar"
    with wds.TarWriter(str(path), encoder=False) as sink:
        sink.write(encode_scene(good, "train"))
        sink.write(bad)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(shards[0], "rb").read()[:30000])
    return str(path), str(truncated)


@pytest.mark.faults
def test_corrupt_data_in_training_is_an_error_unless_skipping_is_allowed(broken, caplog):
    bad_sample, truncated = broken
    with pytest.raises(CorruptData, match=r"broken.tar: sample imgset0101: cannot decode"):
        stream = iter(TrainPatches([bad_sample], settings(), seed=0, rank=0))
        for _ in range(20):
            next(stream)
    with caplog.at_level(logging.WARNING):
        stream = iter(
            TrainPatches([bad_sample, truncated], settings(skip_corrupt=True, max_skipped_share=0.9), seed=0, rank=0)
        )
        for _ in range(30):
            *_, skipped_so_far = next(stream)
    skipped = [r.getMessage() for r in caplog.records if "skipped corrupt data" in r.getMessage()]
    assert any("imgset0101" in m for m in skipped) and any("truncated.tar" in m for m in skipped)
    assert "(1 so far in this worker)" in skipped[0]
    assert skipped_so_far[1] >= len(skipped) == 10  # counted, but the log says only the first ten


@pytest.mark.faults
def test_skipping_corrupt_data_stops_when_nothing_readable_is_left(broken, caplog):
    _, truncated = broken
    stream = iter(TrainPatches([truncated], settings(skip_corrupt=True), seed=0, rank=0))
    with caplog.at_level(logging.WARNING), pytest.raises(CorruptData) as error:
        next(stream)
    assert str(error.value).startswith(
        "data.skip_corrupt: 20 of 20 training samples read were corrupt, over data.max_skipped_share=0.05; the last: "
    )
    assert len(caplog.records) == 10


@pytest.mark.parametrize(
    "damage, message",
    [
        ("header", "cannot decode (TokenError: "),
        ("masks", "quality maps are bool (11, 128, 128), expected bool (12, 128, 128) like the frames (damaged)"),
        ("depth", "LR frames are int32 (12, 128, 128), expected uint16 (N, 128, 128) (damaged)"),
        ("norm", "norm -1.0 is not a positive cPSNR in dB (damaged)"),
    ],
)
@pytest.mark.faults
def test_damaged_sample_contents_are_one_line_each(tmp_path, damage, message):
    scene = consistent_scene("imgset0102", 102)
    sample = encode_scene(scene, "train")
    if damage == "header":
        lr = bytearray(sample["lr.npy"])
        lr[11] = ord("(")  # an unbalanced header, which numpy's parser fails on in tokenize
        sample["lr.npy"] = bytes(lr)
    elif damage == "masks":
        sample["qm.npy"] = npy(scene.qm[:-1])
    elif damage == "depth":
        sample["lr.npy"] = npy(scene.lr.astype(np.int32))
    else:
        sample["json"] = sample["json"].replace(b'"norm": 45.0', b'"norm": -1.0')
    path = tmp_path / "damaged.tar"
    with wds.TarWriter(str(path), encoder=False) as sink:
        sink.write(sample)
    with pytest.raises(CorruptData) as error:
        list(EvalScenes([str(path)]))
    assert message in str(error.value) and "\n" not in str(error.value)


def npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def odd_scene():
    """A consistent scene with the values real frames hold: 65,535 and a bright cloud's 28,656
    (marked clear, as real masks now and then do), and 65,520 beyond a swath edge of the
    clearest frame, masked."""
    scene = consistent_scene("imgset0103", 103)
    scene.lr[:, 5, 5] = 65535
    scene.lr[:, 60, 70] = 28656
    scene.qm[1:, :20, :15] = False  # a little cloud on every other frame: the cut one is the clearest
    scene.lr[0, 100:, 120:] = 65520
    scene.qm[0, 100:, 120:] = False
    return Scene(scene.name, scene.band, scene.lr, scene.qm, scene.hr, scene.sm, scene.norm)


def test_every_uint16_value_is_read_and_the_network_sees_what_other_frames_saw_where_one_has_no_data(tmp_path):
    scene = odd_scene()
    path = write_shards(tmp_path, [scene], per_shard=1)
    truth = consistent_scene("imgset0103", 103).lr[0].astype(np.float32)  # every frame sees the same ground
    (filled,) = EvalScenes(path)
    (kept,) = EvalScenes(path, DataConfig(no_data="keep"))
    assert (kept["lr"][0] == 65520).sum() == 28 * 8  # the clearest frame comes first
    assert filled["lr"][0, 5, 5] == kept["lr"][0, 5, 5] == 65535 and filled["lr"][0, 60, 70] == 28656
    assert torch.equal(filled["lr"][0, 100:, 120:], torch.from_numpy(truth[100:, 120:]))
    assert (kept["lr"][0, 100:, 120:] == 65520).all()
    assert torch.equal(filled["baseline"], kept["baseline"])  # the challenge's baseline sees the files as they are
    patches = iter(TrainPatches(path, settings(shuffle_buffer=1, patches_per_scene=64, patch=64), seed=0, rank=0))
    assert all((next(patches)[0] != 65520).all() for _ in range(20))


def test_where_no_frame_saw_a_pixel_clear_it_takes_the_frames_own_clear_median():
    lr = np.full((3, 4, 4), 1000, np.float32)
    lr[1] = 2000
    lr[:, 0, 0] = 65520  # every frame's corner
    qm = np.ones((3, 4, 4), bool)
    qm[:, 0, 0] = False
    lr[2, 1, 1], qm[2, 1, 1] = 65520, False
    out = fill_no_data(lr, qm)
    assert out[0, 0, 0] == 1000 and out[1, 0, 0] == 2000
    assert out[2, 1, 1] == 1500  # the median of what the other two frames saw there
    assert lr[0, 0, 0] == 65520  # the frames given are left as they are


@pytest.mark.faults
def test_corrupt_data_in_evaluation_is_always_an_error(broken):
    bad_sample, truncated = broken
    with pytest.raises(CorruptData, match="imgset0101: cannot decode"):
        list(EvalScenes([bad_sample]))
    with pytest.raises(CorruptData, match="truncated.tar"):
        list(EvalScenes([truncated]))
