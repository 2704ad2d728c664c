"""The calibration's sums, fits and split on errors whose distribution is known."""

import json
import math

import numpy as np
import pytest

from piunet_dist.core.errors import UserError
from piunet_dist.evaluation.calibration import (
    REPORT_LEVELS,
    Fit,
    Residuals,
    bounds,
    fit_and_check,
    laplace_width,
    split_scenes,
)


def scene_residuals(rng, n_pixels, draw, scale):
    """A scene's Residuals: |error| drawn by `draw`, a predicted scale that varies per pixel."""
    b = scale * rng.uniform(0.5, 2.0, n_pixels)
    return Residuals.of(np.abs(draw(rng, n_pixels)) * b, b)


def laplace(rng, n):
    return rng.laplace(0.0, 1.0, n)


def test_sums_add_up_over_scenes_and_give_the_nll_of_any_factor():
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 50, 1000)
    err = np.abs(rng.laplace(0, 1, 1000)) * b * 3
    whole, halves = Residuals.of(err, b), Residuals.of(err[:400], b[:400]) + Residuals.of(err[400:], b[400:])
    assert np.array_equal(whole.counts, halves.counts) and whole.pixels == 1000
    for k in (1.0, 3.0):
        exact = np.mean(np.log(2 * k * b) + err / (k * b))
        assert whole.nll(k) == pytest.approx(exact) and halves.nll(k) == pytest.approx(exact)
    u = err / b
    assert whole.share_within(np.array([np.median(u)]))[0] == pytest.approx(0.5, abs=0.002)
    assert whole.quantiles(np.array([0.9]))[0] == pytest.approx(np.quantile(u, 0.9), rel=0.02)


def test_a_true_laplace_scale_is_left_as_it_is():
    rng = np.random.default_rng(1)
    residuals = scene_residuals(rng, 200_000, laplace, 10.0)
    fit = Fit.of(residuals, "quantile", "NIR", {"a": "0"}, 1)
    assert fit.factor == pytest.approx(1.0, abs=0.01)
    for level in REPORT_LEVELS:
        assert fit.width(level) == pytest.approx(laplace_width(level), rel=0.03), level


@pytest.mark.parametrize(
    ("draw", "scale_fits"),
    [
        (lambda rng, n: 2.5 * rng.laplace(0, 1, n), True),  # too sure by 2.5: one factor mends it
        (lambda rng, n: rng.normal(0, 1, n), False),  # not a Laplace: narrow near the centre, wide at the tails
        (lambda rng, n: rng.standard_t(3, n), False),  # heavier tails than a Laplace
    ],
    ids=["too-sure", "gaussian", "heavy-tailed"],
)
def test_a_fit_holds_on_scenes_it_did_not_see(draw, scale_fits):
    rng = np.random.default_rng(2)
    by_scene = {f"imgset{i:04d}": scene_residuals(rng, 20_000, draw, rng.uniform(5, 50)) for i in range(20)}
    for method in ("scale", "quantile"):
        fit, checked = fit_and_check(by_scene, method, 0.5, "RED", {"a": "0"})
        assert fit.fitted_on == 10 and checked["pixels"] == 10 * 20_000
        assert checked["after"]["nll"] <= checked["before"]["nll"] + 1e-9  # k = mean(u) is the NLL's minimum
        off = np.abs(np.array(checked["after"]["coverage"]) - REPORT_LEVELS)
        if method == "quantile" or scale_fits:
            assert off.max() < 0.015, (method, off)
        else:
            assert off.max() > 0.02, (method, off)  # the shape is off: one factor cannot mend both ends


def test_the_split_keeps_scenes_back_by_their_names_alone():
    names = [f"imgset{i:04d}" for i in range(40)]
    fit_on, check = split_scenes(names, 0.5)
    assert len(check) == 20 and set(fit_on) | set(check) == set(names) and not set(fit_on) & set(check)
    assert split_scenes(list(reversed(names)), 0.5) == (fit_on, check)  # not the order they come in
    assert check != sorted(names)[:20]  # not the first by name either
    assert split_scenes(["a", "b"], 0.5)[1] and split_scenes(["a", "b"], 0.5)[0]  # one each at least
    assert split_scenes(["a"], 0.5) == (["a"], []) and split_scenes(names, 0.0) == (names, [])


def test_a_fit_is_refused_for_other_weights_or_another_band_and_read_back_whole(tmp_path):
    rng = np.random.default_rng(3)
    fit = Fit.of(scene_residuals(rng, 5000, laplace, 3.0), "scale", "NIR", {"nir-seed0": "abc"}, 4)
    fit.write(tmp_path)
    back = Fit.read(tmp_path / "calibration.json")
    assert back == fit and json.loads((tmp_path / "calibration.json").read_text())["method"] == "scale"
    back.check("NIR", {"renamed": "abc"}, tmp_path)  # the same weights under another name
    with pytest.raises(UserError, match=r"^x: a calibration of NIR, not of RED$"):
        back.check("RED", {"nir-seed0": "abc"}, "x")
    with pytest.raises(UserError, match=r"^x: fitted for other weights \(nir-seed0\) than these \(b\); "):
        back.check("NIR", {"b": "def"}, "x")
    (tmp_path / "bad.json").write_text('{"method": "scale"}')
    with pytest.raises(UserError, match="not a calibration this project wrote"):
        Fit.read(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no calibration there"):
        Fit.read(tmp_path / "none.json")


def test_bounds_are_the_central_interval_calibrated_or_not():
    import torch

    sr, scale = torch.full((1, 4, 4), 100.0), torch.full((1, 4, 4), 10.0)
    low, high = bounds(sr, scale, None, 0.9)
    assert torch.allclose(high - sr, torch.full_like(sr, 10 * math.log(10))) and torch.allclose(sr - low, high - sr)
    fit = Fit("scale", "NIR", {}, 2.0, [0.5], [1.0], 1)
    low, high = bounds(sr, scale, fit, 0.9)
    assert torch.allclose(high - sr, torch.full_like(sr, 20 * math.log(10)))
