"""Whole scenes through the model (inference.py): all views of the self-ensemble in one
batch give what one view at a time gives; batch sizes and precision resolve per device."""

import pytest
import torch

from piunet_dist.core.errors import UserError
from piunet_dist.evaluation.inference import resolve_precision, scenes_per_batch, super_resolve, transforms
from piunet_dist.network.model import PIUNet, denormalise, normalise, scale_dn
from tests.helpers.models import randomise_norm_stats


def view_by_view(model, lr_dn, n):
    """The self-ensemble written plainly: each view through the model on its own."""
    sr = scale = 0
    for k, flip in transforms(n):
        x = torch.rot90(lr_dn, k, dims=(-2, -1))
        x = x.flip(-1) if flip else x
        mu, s = model(normalise(x))
        mu, s = (t.flip(-1) if flip else t for t in (mu, s))
        sr = sr + torch.rot90(denormalise(mu), -k, dims=(-2, -1))
        scale = scale + torch.rot90(scale_dn(s), -k, dims=(-2, -1))
    return sr / n, scale / n


@pytest.mark.parametrize("n", [1, 4, 8])
@pytest.mark.parametrize("side", [(10, 10), (8, 12)])  # rotated non-square frames go in a batch of their own
def test_views_in_one_batch_equal_views_one_by_one(n, side):
    torch.manual_seed(0)
    model = randomise_norm_stats(PIUNet(n_feat=8, r_bneck=4, n_tefa=1)).eval()
    lr = 7000 + 500 * torch.rand(3, 4, *side)
    with torch.no_grad():
        want = view_by_view(model, lr, n)
    got = super_resolve(model, lr, n)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and a.shape == (3, 1, 3 * side[0], 3 * side[1])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_bf16_inference_stays_near_float32():
    torch.manual_seed(0)
    model = randomise_norm_stats(PIUNet(n_feat=8, r_bneck=4, n_tefa=1)).eval()
    lr = 7000 + 500 * torch.rand(2, 4, 8, 8)
    sr, scale = super_resolve(model, lr, 4, "no")
    sr16, scale16 = super_resolve(model, lr, 4, "bf16")
    assert sr16.dtype == torch.float32
    assert (sr16 - sr).abs().max() < 0.01 * sr.std() + 5  # DN: bf16 inside, float32 output layers
    assert ((scale16 - scale).abs() / scale).max() < 0.05


def test_a_cpu_takes_one_scene_per_batch_and_float32():
    cpu = torch.device("cpu")
    assert scenes_per_batch("auto", "eval.batch_size", cpu, 9, 128, 42, views=4) == 1
    assert scenes_per_batch("6", "eval.batch_size", cpu, 9, 128, 42) == 6
    assert resolve_precision("auto", cpu) == ("no", "eval.precision auto: float32 without a GPU")
    assert resolve_precision("bf16", cpu) == ("bf16", "")


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_batch_size_is_auto_or_a_positive_whole_number(bad):
    with pytest.raises(UserError, match=rf"--batch-size: expected auto or a positive whole number, got '{bad}'"):
        scenes_per_batch(bad, "--batch-size", torch.device("cpu"), 9, 128, 42)
