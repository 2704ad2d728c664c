import math

import pytest
import torch

from piunet_dist.network.metrics import (
    CPSNR,
    CSSIM,
    ChallengeScore,
    UncertaintyCalibration,
    challenge_score,
    cpsnr,
    cssim,
    shift_search,
    uncertainty_stats,
)
from references import oracles
from tests.helpers.distributed import run_group


def scenes(seed, b=3, size=60, noise=20.0, clear=0.8):
    """HR in DN, an SR that is shifted, biased and noisy, a cloudy mask."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(b, 1, size + 8, size + 8, generator=g), 5, 1)
    hr = (6000 + 4000 * base[..., :size, :size]).round()
    sr = hr.roll((1, -2), dims=(2, 3)) + 150 + noise * torch.randn(hr.shape, generator=g)
    mask = torch.rand(hr.shape, generator=g) < clear
    return sr, hr, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpsnr_equals_oracle(seed):
    sr, hr, mask = scenes(seed)
    torch.testing.assert_close(cpsnr(sr, hr, mask), oracles.cpsnr(sr, hr, mask), rtol=0, atol=1e-6)


def test_shift_search_finds_the_shift_and_bias():
    sr, hr, mask = scenes(3, noise=1.0)
    found = shift_search(sr, hr, mask)
    mse, bias = oracles.cmse_per_shift(sr, hr, mask)
    assert found.best.tolist() == mse.argmin(dim=1).tolist()
    torch.testing.assert_close(found.bias, bias.gather(1, found.best[:, None]).squeeze(1))
    torch.testing.assert_close(found.cmse, mse.min(dim=1).values)


def test_cpsnr_is_per_sample_not_per_batch():
    sr, hr, mask = scenes(4, b=4)
    mask[0, :, :30] = False  # samples with different clear counts
    alone = torch.cat([cpsnr(sr[i : i + 1], hr[i : i + 1], mask[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(cpsnr(sr, hr, mask), alone)


def test_cpsnr_of_a_perfect_prediction_up_to_bias_is_very_high():
    _, hr, mask = scenes(5)
    assert (cpsnr(hr + 37.0, hr, mask) > 120).all()


def test_cpsnr_survives_large_bias_and_values():
    sr, hr, mask = scenes(6, noise=0.5)
    hr = hr + 40000
    torch.testing.assert_close(cpsnr(sr + 9000, hr, mask), oracles.cpsnr(sr + 9000, hr, mask), rtol=0, atol=1e-6)


def test_cssim_equals_oracle():
    sr, hr, mask = scenes(7, b=2, size=40, noise=200.0)
    torch.testing.assert_close(cssim(sr, hr, mask), oracles.cssim(sr, hr, mask), rtol=0, atol=1e-4)


def test_challenge_score_clips_and_divides_by_norm():
    sr, hr, mask = scenes(8)
    norm = torch.tensor([45.0, 50.0, 55.0])
    torch.testing.assert_close(challenge_score(sr, hr, mask, norm), norm / oracles.cpsnr(sr, hr, mask))
    sr[0, 0, 10, 10] = 70000  # out of range: clipped to 65535 first
    clipped = sr.clamp(max=65535)
    torch.testing.assert_close(challenge_score(sr, hr, mask, norm)[0], norm[0] / oracles.cpsnr(clipped, hr, mask)[0])


def test_uncertainty_stats_at_the_best_shift():
    sr, hr, mask = scenes(9, b=2, noise=30.0)
    scale = torch.full_like(sr, 30.0) + torch.rand(sr.shape) * 10
    got = uncertainty_stats(sr, scale, hr, mask)
    mse, bias = oracles.cmse_per_shift(sr, hr, mask)
    for i in range(2):
        k = mse[i].argmin().item()
        u, v = divmod(k, 7)
        y = hr[i, 0, u : u + 54, v : v + 54].double()
        m = mask[i, 0, u : u + 54, v : v + 54]
        p = sr[i, 0, 3:-3, 3:-3].double() + bias[i, k]
        b = scale[i, 0, 3:-3, 3:-3].double()
        e, b = (y - p).abs()[m], b[m]
        assert got["nll"][i].item() == pytest.approx((torch.log(2 * b) + e / b).mean().item())
        assert got["coverage50"][i].item() == pytest.approx((e <= b * math.log(2)).double().mean().item())
        assert got["coverage90"][i].item() == pytest.approx((e <= b * math.log(10)).double().mean().item())
        want_corr = torch.corrcoef(torch.stack([e, b]))[0, 1].item()
        assert got["scale_error_corr"][i].item() == pytest.approx(want_corr, abs=1e-9)


def test_laplace_scale_matching_the_noise_is_calibrated():
    g = torch.Generator().manual_seed(10)
    hr = 8000 + 1000 * torch.rand(2, 1, 120, 120, generator=g)
    noise = torch.distributions.Laplace(0.0, 25.0).sample(hr.shape)
    stats = uncertainty_stats(hr + noise, torch.full_like(hr, 25.0), hr, torch.ones_like(hr, dtype=torch.bool))
    assert stats["coverage50"].sub(0.5).abs().max() < 0.03
    assert stats["coverage90"].sub(0.9).abs().max() < 0.03


def _metrics_on_rank(rank, world_size, data, expected):
    sr, hr, mask, norm, scale = (t[rank::world_size] for t in data)  # 3 scenes and 2
    metrics = [CPSNR(), CSSIM(), ChallengeScore(), UncertaintyCalibration()]
    metrics[0].update(sr, hr, mask)
    metrics[1].update(sr, hr, mask)
    metrics[2].update(sr, hr, mask, norm)
    metrics[3].update(sr, scale, hr, mask)
    got = [m.compute() for m in metrics]
    for value, want in zip(got[:3], expected[:3]):
        torch.testing.assert_close(value, want)
    for key, want in expected[3].items():
        torch.testing.assert_close(got[3][key], want)


@pytest.mark.processes
def test_metric_classes_average_scenes_across_two_processes():
    sr, hr, mask = scenes(11, b=5, size=40)
    norm = torch.linspace(45, 50, 5)
    scale = torch.full_like(sr, 20.0)
    expected = [
        cpsnr(sr, hr, mask).mean(),
        cssim(sr, hr, mask).mean(),
        challenge_score(sr, hr, mask, norm).mean(),
        {k: v.mean() for k, v in uncertainty_stats(sr, scale, hr, mask).items()},
    ]
    run_group(_metrics_on_rank, 2, (sr, hr, mask, norm, scale), expected)
