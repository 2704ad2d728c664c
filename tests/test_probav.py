import numpy as np
import pytest
from PIL import Image

from piunet_dist.data.probav import find_scenes, load_scene, read_norm, select_frames, validate_scene
from piunet_dist.data.registration import estimate_shift, register_frames, shift_frame
from tests.helpers.scene_tree import write_norm, write_scene


@pytest.fixture
def tree(tmp_path):
    write_scene(tmp_path, "train", "NIR", "imgset0000", n_frames=9, mask_bits=1, seed=1)
    write_scene(tmp_path, "train", "NIR", "imgset0001", n_frames=30, mask_bits=8, seed=2)
    write_scene(tmp_path, "train", "RED", "imgset0002", clearance=[0.5, 0.8, 0.2] * 3, seed=3)
    write_scene(tmp_path, "test", "RED", "imgset0003", n_frames=12, seed=4)
    write_norm(tmp_path, [f"imgset000{i}" for i in range(4)])
    return tmp_path


def test_reads_the_challenge_layout(tree):
    refs = find_scenes(tree)
    assert [(r.band, r.split, r.name) for r in refs] == [
        ("NIR", "train", "imgset0000"),
        ("NIR", "train", "imgset0001"),
        ("RED", "train", "imgset0002"),
        ("RED", "test", "imgset0003"),
    ]
    assert all(validate_scene(r) == [] for r in refs)
    norm = read_norm(tree)
    one_bit, thirty, cloudy, test = (load_scene(r, norm) for r in refs)
    assert one_bit.lr.shape == (9, 128, 128) and one_bit.lr.dtype == np.uint16
    assert one_bit.qm.dtype == bool and one_bit.qm.all()
    assert thirty.lr.shape[0] == 30 and thirty.hr.shape == (384, 384) and thirty.sm.dtype == bool
    np.testing.assert_array_equal(thirty.lr[29], np.asarray(Image.open(tree / "train/NIR/imgset0001/LR029.png")))
    np.testing.assert_allclose(cloudy.clearance, [0.5, 0.8, 0.2] * 3, atol=1e-4)
    assert test.hr is None and test.sm is None and test.norm == 41.5


def test_paper_selection_keeps_clear_frames_best_first_and_tops_up():
    rng = np.random.default_rng(0)
    clearance = np.array([0.9, 0.99, 0.5, 0.86, 1.0, 0.2])
    assert select_frames(clearance, 3, "paper", rng).tolist() == [4, 1, 0]
    topped = select_frames(clearance, 9, "paper", rng)
    assert topped[:4].tolist() == [4, 1, 0, 3] and set(topped[4:]) <= {4, 1, 0, 3} and len(topped) == 9


def test_scene_without_clear_frame_is_dropped_unless_test():
    rng = np.random.default_rng(0)
    clearance = np.array([0.5, 0.8, 0.2])
    assert select_frames(clearance, 9, "paper", rng) is None
    assert select_frames(clearance, 9, "paper", rng, keep_unclear=True).tolist() == [1] * 9


def test_random_policy_draws_anew_among_clear_frames():
    rng = np.random.default_rng(0)
    clearance = np.linspace(0.86, 1.0, 20)
    draws = [tuple(select_frames(clearance, 9, "random", rng)) for _ in range(5)]
    assert len(set(draws)) == 5 and all(len(set(d)) == 9 for d in draws)
    assert select_frames(np.array([0.9, 0.1]), 4, "random", rng).tolist() == [0] * 4


def test_invalid_scenes_get_one_line_each(tmp_path):
    d = write_scene(tmp_path, "train", "NIR", "imgset0000")
    (d / "QM003.png").unlink()
    Image.fromarray(np.zeros((100, 128), np.uint16)).save(d / "LR004.png")
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(d / "LR005.png")
    (d / "LR006.png").write_bytes(b"not a png")
    (d / "SM.png").unlink()
    problems = validate_scene(find_scenes(tmp_path)[0])
    assert problems == [
        "train/NIR/imgset0000: LR003.png has no quality map QM003.png",
        "train/NIR/imgset0000: LR004.png is 128x100, expected 128x128",
        "train/NIR/imgset0000: LR005.png is L, expected a 16-bit greyscale image",
        problems[3],
        "train/NIR/imgset0000: SM.png is missing (train scenes need HR.png and SM.png)",
    ]
    assert problems[3].startswith("train/NIR/imgset0000: LR006.png is not a readable PNG")


def test_bad_norm_line_names_file_and_line(tmp_path):
    (tmp_path / "norm.csv").write_text("imgset0000 45.1\nimgset0001,44\n")
    with pytest.raises(ValueError, match=r"norm.csv:2: expected 'imgsetNNNN <number>'"):
        read_norm(tmp_path)


def smooth_image(seed, size=128):
    rng = np.random.default_rng(seed)
    f = np.fft.rfft2(rng.standard_normal((size, size)))
    freq = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]) + 1e-3
    return 8000 + 1000 * np.fft.irfft2(f / freq**1.2, s=(size, size)) / 30


@pytest.mark.parametrize("dy, dx", [(2.0, -3.0), (0.4, -1.3), (-1.7, 0.6)])
def test_phase_correlation_recovers_integer_and_subpixel_shifts(dy, dx):
    ref = smooth_image(0)
    mask = np.ones_like(ref, bool)
    moved, _ = shift_frame(ref, mask, -dy, -dx)  # moved[y, x] = ref[y - dy, x - dx]
    got = estimate_shift(moved, mask, ref, mask)
    assert got == pytest.approx((dy, dx), abs=0.1)


def test_registration_aligns_frames_and_ignores_clouds():
    ref = smooth_image(1)
    mask = np.ones_like(ref, bool)
    moved, moved_mask = shift_frame(ref, mask, -1.0, 2.0)
    moved_mask[40:70, 40:90] = False
    moved = np.where(moved_mask, moved, 15000.0)  # a bright cloud where the mask says so
    lr, qm, shifts = register_frames(np.stack([ref, moved]), np.stack([mask, moved_mask]), reference=0)
    assert shifts[1] == pytest.approx((1.0, -2.0), abs=0.2)
    inner = (slice(8, -8), slice(8, -8))
    clear = qm[1][inner]
    before = np.abs(moved[inner] - ref[inner])[clear].mean()
    after = np.abs(lr[1][inner] - ref[inner])[clear].mean()
    assert after < 0.1 * before
