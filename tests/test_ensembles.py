"""The ensemble methods on members whose answers are known, and the calibration sums on
errors drawn from the predicted Laplace itself."""

import math

import numpy as np
import pytest
import torch

from piunet_dist.core.config import CHOICES
from piunet_dist.evaluation.ensembles import METHODS, combine, median, uncertainty, val_weighted
from piunet_dist.evaluation.scoring import LEVELS, Calibration
from piunet_dist.network.metrics import shift_search


def members(values, scales=None):
    srs = torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 4, 4).clone()
    b = torch.tensor(scales or [1.0] * len(values), dtype=torch.float32)[:, None, None, None].expand_as(srs).clone()
    return srs, b


def test_every_method_is_a_choice_of_eval_ensemble_and_agreeing_members_agree():
    assert tuple(METHODS) == CHOICES["eval.ensemble"]
    srs, b = members([700.0, 700.0, 700.0], [2.0, 5.0, 9.0])
    for name, sr in combine(srs, b, torch.tensor([40.0, 41.0, 42.0])).items():
        assert sr.shape == (1, 4, 4) and torch.allclose(sr, torch.tensor(700.0)), name


def test_each_method_weighs_as_it_says():
    srs, b = members([100.0, 200.0, 600.0], [1.0, 2.0, 4.0])
    val = torch.tensor([30.0, 30.0, 30.0])
    got = {k: float(v[0, 0, 0]) for k, v in combine(srs, b, val).items()}
    assert got["mean"] == pytest.approx(300.0)
    assert got["median"] == pytest.approx(200.0)
    assert got["val_weighted"] == pytest.approx(300.0)  # equal validation: equal weights
    w = np.array([1, 1 / 4, 1 / 16])
    assert got["inverse_variance"] == pytest.approx(float((w * [100, 200, 600]).sum() / w.sum()), rel=1e-6)
    spread = np.var([100.0, 200.0, 600.0])
    w = 1 / (2 * np.array([1.0, 4.0, 16.0]) + spread)
    assert got["inverse_total_variance"] == pytest.approx(float((w * [100, 200, 600]).sum() / w.sum()), rel=1e-6)
    # the members' spread pulls the per-pixel weights toward the mean's
    assert abs(got["inverse_total_variance"] - got["mean"]) < abs(got["inverse_variance"] - got["mean"])


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    srs, b = members([1.0, 10.0, 4.0, 100.0])
    assert float(median(srs, b, None)[0, 0, 0]) == 7.0


def test_val_weighted_weights_by_inverse_validation_mse_and_equally_without_it():
    srs, b = members([0.0, 110.0])
    ten_db_apart = float(val_weighted(srs, b, torch.tensor([40.0, 50.0]))[0, 0, 0])
    assert ten_db_apart == pytest.approx(100.0, rel=1e-5)  # weights 1 : 10
    assert float(val_weighted(srs, b, torch.tensor([40.0, math.nan]))[0, 0, 0]) == pytest.approx(55.0)


def test_uncertainty_splits_the_total_variance():
    srs, b = members([100.0, 104.0], [3.0, 5.0])
    u = uncertainty(srs, b)
    assert float(u.aleatoric[0, 0, 0]) == pytest.approx(4.0)
    assert float(u.epistemic[0, 0, 0]) == pytest.approx(2.0)
    assert float(u.total[0, 0, 0]) ** 2 * 2 == pytest.approx((2 * 9 + 2 * 25) / 2 + 4)
    aleatoric, epistemic, total, share = u.means(torch.ones(4, 4, dtype=torch.bool))
    assert (aleatoric, epistemic) == pytest.approx((4.0, 2.0)) and share == pytest.approx(4 / (34 + 4))


def test_calibration_of_errors_drawn_from_the_predicted_laplace_matches_the_nominal_coverage():
    gen = torch.Generator().manual_seed(0)
    sr = 5000 + 2000 * torch.rand(1, 1, 384, 384, generator=gen)
    scale = 5 + 45 * torch.rand(1, 1, 384, 384, generator=gen)
    noise = torch.distributions.Laplace(0.0, 1.0).sample((1, 1, 384, 384)) * scale
    hr = (sr + noise).double()
    sm = torch.ones(1, 1, 384, 384, dtype=torch.bool)
    sm[..., :100, :100] = False
    calibration = Calibration.of(sr, scale, hr, sm, shift_search(sr, hr, sm))
    summary = (calibration + Calibration()).summary()
    for c in summary["coverage"]:
        assert c["observed"] == pytest.approx(c["nominal"], abs=0.01)
    assert [c["nominal"] for c in summary["coverage"]] == list(LEVELS)
    assert sum(b["pixels"] for b in summary["curve"]) == int(sm[..., 3:-3, 3:-3].sum())
    for b in summary["curve"]:
        if b["pixels"] > 5000:
            assert b["abs_error_dn"] == pytest.approx(b["scale_dn"], rel=0.05)
