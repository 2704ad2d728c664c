import hashlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from piunet_dist.__main__ import main
from piunet_dist.data.landscape import landscape
from piunet_dist.data.probav import (
    HR_SIZE,
    LR_SIZE,
    NO_DATA,
    NOMINAL_DN,
    find_scenes,
    load_scene,
    read_norm,
    select_frames,
    validate_scene,
)
from piunet_dist.data.registration import estimate_shift
from piunet_dist.data.scene_fit import FrameModel, fit_frame
from piunet_dist.data.sensor import QUANTUM, FrameGeometry, Physics, view
from piunet_dist.data.synthetic import PAD, make_scene


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
        assert scene.hr is None or scene.hr.max() <= NOMINAL_DN  # real HR images stay within 14 bits
        assert (scene.hr is None) == (ref.split == "test")


def test_same_seed_same_bytes_other_seed_other_scenes(synth, tmp_path):
    again = tmp_path / "again"
    main(["synth", str(again), "--scenes", "3", "--test-scenes", "1", "--seed", "5", "--workers", "1"])
    assert digest(again) == digest(synth)
    other = make_scene(6, "NIR", 0)
    assert not np.array_equal(other["hr"], make_scene(5, "NIR", 0)["hr"])


def test_scenes_look_like_land_seen_through_many_shifted_blurred_frames():
    scene = make_scene(0, "RED", 0)
    hr = scene["hr"].astype(float)
    coarse = hr.reshape(12, 32, 12, 32).mean(axis=(1, 3))
    assert coarse.std() > 100  # structure at large scales, and at the pixel's
    assert np.abs(np.diff(hr, axis=1)).mean() > 16
    lr = scene["lr"].astype(float)
    down = hr.reshape(128, 3, 128, 3).mean(axis=(1, 3))
    clearest = int(scene["qm"].mean(axis=(1, 2)).argmax())
    other = make_scene(0, "RED", 1)["hr"].astype(float).reshape(128, 3, 128, 3).mean(axis=(1, 3))
    own = np.corrcoef(down.ravel(), lr[clearest].ravel())[0, 1]
    assert own > 0.7 and np.corrcoef(other.ravel(), lr[clearest].ravel())[0, 1] < own - 0.5  # it views its HR
    assert np.abs(lr[0] - lr[1]).mean() > 20  # and each its own way


def test_a_constant_displacement_is_the_frame_shifted_by_it_and_a_warp_shifts_by_place():
    ground = landscape(np.random.default_rng(0), "NIR", HR_SIZE + 2 * PAD)
    geometry = FrameGeometry(0.3, -0.2, 1.0, 0.7, 0.1)
    plain = view(ground, geometry, PAD)
    shifted = view(ground, FrameGeometry(0.4, -0.3, 1.0, 0.7, 0.1), PAD)
    displaced = view(ground, geometry, PAD, (np.full(ground.shape, 0.1), np.full(ground.shape, -0.1)))
    assert np.std(shifted - displaced) < 0.1 * np.std(shifted - plain)  # to first order, the same shift

    def tile_shifts(scene):  # each 32x32 tile of frame 1 registered to frame 0's (LR px)
        lr, clear = scene["lr"].astype(float), scene["qm"] & (scene["lr"] <= NOMINAL_DN)
        cuts = [(slice(y, y + 32), slice(x, x + 32)) for y in range(0, LR_SIZE, 32) for x in range(0, LR_SIZE, 32)]
        return np.array([estimate_shift(lr[1][c], clear[1][c], lr[0][c], clear[0][c]) for c in cuts])

    physics = Physics(clear_frames=1.0, outliers=(0.0, 0.0))
    still, warped = (make_scene(2, "NIR", 0, replace(physics, warp=(w, w))) for w in (0.0, 0.3))
    assert warped["truth"]["warp"] == 0.3 and still["truth"]["warp"] == 0.0
    assert tile_shifts(warped).std(axis=0).min() > 2 * tile_shifts(still).std(axis=0).max()


def test_the_date_field_changes_the_ground_more_finely_the_smaller_its_slope():
    # frames that differ by the date's brightness field alone: one place, one PSF, no noise
    alone = Physics(
        shift_offset=0.0, shift_scatter=(0.0, 0.0), jump_chance=0.0, blur_jitter=0.0, warp=(0.0, 0.0),
        gain_spread=(0.0, 0.0), brightness_change=(0.0, 0.0), seasonal=(0.02, 0.02), local_change=(0.0, 0.0),
        outliers=(0.0, 0.0), noise=(0.0, 0.0), noise_rise=0.0, quantum=1, clear_frames=1.0, no_data_scenes=0.0,
    )  # fmt: skip
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(LR_SIZE), np.fft.fftfreq(LR_SIZE), indexing="ij"))

    def fine_share(slope):  # the share of two frames' difference above 0.1 cycles/px
        lr = make_scene(4, "NIR", 0, replace(alone, seasonal_slope=slope))["lr"].astype(np.float64)
        power = np.abs(np.fft.fft2(lr[1] - lr[0])) ** 2
        return power[radius > 0.1].sum() / power.sum()

    assert fine_share(1.0) > 5 * fine_share(3.5)


def test_every_value_is_a_multiple_of_16_dn_and_the_defaults_lie_in_the_real_ranges():
    scene = make_scene(1, "NIR", 0)
    assert (scene["lr"] % QUANTUM == 0).all() and (scene["hr"] % QUANTUM == 0).all()
    physics = Physics()  # docs/method.md section 7
    assert 0.3 <= physics.shift_scatter[0] and physics.shift_scatter[1] <= 0.6
    assert physics.shift_offset >= 0.91  # the NIR scene's offset, and the RED one's, are drawn
    assert 0.7 <= physics.blur_x[0] and physics.blur_x[1] <= 1.3
    assert 0.6 <= physics.blur_y[0] and physics.blur_y[1] <= 0.8 and physics.blur_y[1] < physics.blur_x[1]
    assert 10 <= physics.noise[0] and physics.noise[1] <= 16
    assert 0.25 <= physics.noise_correlation[0] and physics.noise_correlation[1] <= 0.33
    assert 0.01 <= physics.outliers[0] and physics.outliers[1] <= 0.02
    assert physics.hr_cover[1] <= 0.07 and physics.frames[0] >= 9


def test_scenes_carry_the_real_frames_oddities_bright_clouds_and_no_data_beyond_a_swath_edge():
    """As measured on real scenes (docs/method.md section 5): most scenes hold values above
    14 bits, nearly all masked; some hold 65,520, always masked, in a frame still among the
    clearest; no frame is less than 60% clear; the HR stays within 14 bits."""
    scenes = [make_scene(7, band, i) for band in ("NIR", "RED") for i in range(6)]
    bright = [(s["lr"] > NOMINAL_DN) & (s["lr"] != NO_DATA) for s in scenes]
    no_data = [s["lr"] == NO_DATA for s in scenes]
    assert (
        sum(b.any() for b in bright) >= 8 and max(s["lr"][b].max() for s, b in zip(scenes, bright) if b.any()) > 25000
    )
    marked_clear = sum((b & s["qm"]).sum() for s, b in zip(scenes, bright)) / sum(b.sum() for b in bright)
    assert 0 < marked_clear < 0.1
    assert 2 <= sum(n.any() for n in no_data) <= 9 and not any((n & s["qm"]).any() for s, n in zip(scenes, no_data))
    read = 0
    for s, n in zip(scenes, no_data):
        clearance = s["qm"].mean(axis=(1, 2))
        assert clearance.min() >= 0.6 and s["hr"].max() <= NOMINAL_DN
        chosen = select_frames(clearance, 9, "paper", np.random.default_rng(0))
        read += bool(n[chosen].any())
    assert read >= 2  # a frame with no data among the nine a scene is read with


def largest_blob(cloud: np.ndarray) -> int:
    """Pixels of the largest 4-connected blob of a mask."""
    seen, best = np.zeros_like(cloud), 0
    for start in zip(*np.nonzero(cloud)):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < cloud.shape[0] and 0 <= nx < cloud.shape[1] and cloud[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        best = max(best, size)
    return best


def test_clouds_come_in_the_real_proportions_as_many_small_blobs():
    scenes = [make_scene(2, "NIR", i) for i in range(8)]
    clear = np.concatenate([s["qm"].mean(axis=(1, 2)) for s in scenes])
    # the real median is 0.965; over ~130 frames the median lies within 0.94..0.99 nineteen times in twenty
    assert len(clear) >= 72 and 0.94 < np.median(clear) < 0.99 and clear.min() >= 0.6
    # the clouds: what the masks mark, but for the swath edges beyond which a frame has no data
    frames = [~qm & (lr != NO_DATA) for s in scenes for lr, qm in zip(s["lr"], s["qm"]) if 0.9 < qm.mean() < 0.99]
    assert frames and max(largest_blob(c) for c in frames) < 0.04 * 128 * 128  # no big patch
    assert all(s["sm"].mean() >= 0.93 for s in scenes)


def test_fitting_the_generators_scenes_gives_back_the_physics_it_drew():
    # the fit's model shifts a frame as a whole and sees the ground as on the HR's date: a warp's
    # displacements and the date's brightness field would count as noise
    scene = make_scene(3, "NIR", 1, replace(Physics(), warp=(0.0, 0.0), seasonal=(0.0, 0.0)))
    model = FrameModel(scene["hr"])
    target_clear = scene["sm"].reshape(128, 3, 128, 3).all(axis=(1, 3))
    truth = scene["truth"]
    fitted, along = 0, []
    for frame, qm, drawn in zip(scene["lr"], scene["qm"], truth["frames"]):
        if qm.mean() < 0.9 or fitted == 6:
            continue
        fit = fit_frame(model, frame, qm & target_clear)
        vy, vx, _ = FrameGeometry(
            drawn["dy"], drawn["dx"], drawn["sigma_x"], drawn["sigma_y"], drawn["angle"]
        ).covariance()
        assert abs(fit.dy - drawn["dy"]) < 0.1 and abs(fit.dx - drawn["dx"]) < 0.1
        assert abs(fit.sigma_x - math.sqrt(vx)) < 0.1 and abs(fit.sigma_y - math.sqrt(vy)) < 0.1
        assert abs(fit.gain - drawn["gain"]) < 0.02
        # the noise as drawn at this brightness, with the 16-DN steps' own
        expected = math.sqrt(truth["noise"] ** 2 + Physics().noise_rise * frame.mean() + QUANTUM**2 / 12)
        assert abs(fit.noise - expected) < 0.35 * expected
        along.append((fit.correlation_x, fit.correlation_y))
        fitted += 1
    assert fitted == 6
    x, y = np.median(along, axis=0)  # correlated along the rows, not across them, as drawn
    assert abs(x - truth["noise_correlation"]) < 0.15 and y < x - 0.1


def test_describe_fits_a_tree_and_prints_what_it_shows(synth, capsys):
    assert main(["synth", "--describe", str(synth), "--describe-scenes", "1", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    for row in (
        "NIR: the values of 4 scenes (",
        "  above 16,383 DN (bright clouds): ",
        "  65,520 (no data): ",
        "NIR: 1 scenes",
        "RED: 1 scenes",
        "shift scatter about it",
        "PSF width x, per frame",
        "noise in flat areas (DN)",
        "noise correlation along x",
        "clear share, per frame",
    ):
        assert row in out, row
    assert main(["synth", "--describe", str(synth / "train")]) == 2
    assert f"{synth / 'train'}: no scenes (expected " in capsys.readouterr().err


def test_the_simple_preset_and_physics_settings(tmp_path, capsys):
    simple = make_scene(4, "NIR", 0, Physics.preset("simple"))
    shifts = np.array([[f["dx"], f["dy"]] for f in simple["truth"]["frames"]])
    assert np.abs(shifts).max() > 2  # the easier world's large uniform shifts
    assert (
        main(
            [
                "synth",
                str(tmp_path / "a"),
                "--scenes",
                "1",
                "--test-scenes",
                "0",
                "--bands",
                "NIR",
                "--physics",
                "noise=20,20",
                "blur_angle=0",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    stamp = json.loads((tmp_path / "a" / "synth.json").read_text())["physics"]
    assert stamp["noise"] == [20.0, 20.0] and stamp["blur_angle"] == 0.0
    capsys.readouterr()
    for bad, said in (
        ("noise=20", "--physics noise=20: noise takes LOW,HIGH with LOW <= HIGH"),
        ("nois=1,2", "--physics nois=1,2: expected NAME=VALUE with NAME one of hr_blur,"),
        ("clear_frames=2", "--physics clear_frames=2: clear_frames takes values from 0 to 1"),
        ("noise=-3,4", "--physics noise=-3,4: noise takes values at least 0"),
        ("frames=0,4", "--physics frames=0,4: frames takes values at least 1"),
    ):
        assert main(["synth", str(tmp_path / "b"), "--physics", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err
    assert not (tmp_path / "b").exists()


def test_rerun_with_same_parameters_reuses_and_other_content_is_refused(synth, tmp_path, capsys):
    assert main(["synth", str(synth), "--scenes", "3", "--test-scenes", "1", "--seed", "5"]) == 0
    assert "already there" in capsys.readouterr().out
    assert main(["synth", str(synth), "--scenes", "4", "--test-scenes", "1", "--seed", "5"]) == 2
    assert "exists and is not this synthetic set" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--scenes", "0", "--test-scenes", "0"]) == 2
