import pytest
import torch

from piunet_dist.network.losses import registered_l1, registered_laplace
from references import oracles


def batch(seed, b=4, size=48, clear=0.7):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, 1, size, size, generator=g)
    # a shifted, biased, noisy prediction so that the search has a real winner
    mu = y.roll((1, -2), dims=(2, 3)) + 0.3 + 0.2 * torch.randn(y.shape, generator=g)
    s = 0.3 * torch.randn(y.shape, generator=g)
    mask = torch.rand(y.shape, generator=g) < clear
    return y, mu.requires_grad_(), s.requires_grad_(), mask


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("seed", [0, 1])
def test_registered_l1_equals_oracle_in_value_and_gradient(seed):
    y, mu, _, mask = batch(seed)
    fast, slow = registered_l1(y, mu, mask), oracles.registered_l1(y, mu, mask)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grads(fast, [mu])[0], grads(slow, [mu])[0])


@pytest.mark.parametrize("legacy", [False, True])
def test_registered_laplace_equals_oracle_in_value_and_gradient(legacy):
    y, mu, s, mask = batch(2)
    fast = registered_laplace(y, mu, s, mask, legacy_sigma_bias=legacy)
    slow = oracles.registered_laplace(y, mu, s, mask, legacy)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(grads(fast, [mu, s]), grads(slow, [mu, s])):
        torch.testing.assert_close(a, b)


def test_legacy_switch_changes_the_loss():
    y, mu, s, mask = batch(3)
    assert not torch.isclose(
        registered_laplace(y, mu, s, mask), registered_laplace(y, mu, s, mask, legacy_sigma_bias=True)
    )


def test_brightness_bias_stays_in_the_graph():
    # a constant offset of the prediction is absorbed by the bias: no gradient on the mean
    y, mu, _, mask = batch(4)
    g = grads(registered_l1(y, mu, mask), [mu])[0]
    per_sample = g.sum(dim=(1, 2, 3))
    torch.testing.assert_close(per_sample, torch.zeros_like(per_sample), atol=1e-6, rtol=0)


def test_finds_the_true_shift():
    y, _, _, mask = batch(5, clear=1.0)
    mu = y.roll((2, 1), dims=(2, 3)).detach().requires_grad_()  # exact up to the rolled border
    assert registered_l1(y, mu, mask).item() < 1e-5


def test_windows_without_clear_pixels_never_win():
    y, mu, s, mask = batch(6, clear=0.9)
    mask[:, :, :10, :] = False  # the top rows are cloudy: some shifts see fewer pixels
    mask[0] = False  # and one sample has no clear pixel at all
    fast = registered_laplace(y, mu, s, mask)
    assert torch.isfinite(fast)
    slow = oracles.loss_per_shift(y, mu, s, mask, "laplace")[1:].min(dim=1).values.sum() / 4
    torch.testing.assert_close(fast, slow)


def test_float16_inputs_are_computed_in_float32():
    y, mu, s, mask = batch(7)
    got = registered_laplace(y.half(), mu.half(), s.half(), mask)
    assert got.dtype == torch.float32
    want = registered_laplace(y.half().float(), mu.half().float(), s.half().float(), mask)
    torch.testing.assert_close(got, want)


def test_compiled_search_gives_the_same_loss_and_gradients():
    y, mu, s, mask = batch(8, b=3, size=30)
    for legacy in (False, True):
        eager = registered_laplace(y, mu, s, mask, legacy_sigma_bias=legacy)
        fused = registered_laplace(y, mu, s, mask, legacy_sigma_bias=legacy, compiled=True)
        torch.testing.assert_close(fused, eager)
        for a, b in zip(grads(fused, [mu, s]), grads(eager, [mu, s])):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(registered_l1(y, mu, mask, compiled=True), registered_l1(y, mu, mask))


def test_a_loss_search_that_cannot_compile_says_so_and_runs_eagerly(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from piunet_dist.network.losses import registered_l1\n"
        "g = torch.Generator().manual_seed(0)\n"
        "y, p = torch.rand(2, 1, 24, 24, generator=g), torch.rand(2, 1, 24, 24, generator=g)\n"
        "m = torch.rand(2, 1, 24, 24, generator=g) > 0.2\n"
        "print(registered_l1(y, p, m, compiled=True).item() == registered_l1(y, p, m).item())\n"
        "print(torch._dynamo.config.suppress_errors)\n"
    )
    # no C++ compiler for inductor, in a cache of its own so that nothing compiled before is reused
    env = {**os.environ, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]  # the eager search, and no process-wide switch
    said = [line for line in done.stderr.splitlines() if "compile_loss" in line]
    assert len(said) == 1 and said[0].startswith(
        "train.compile_loss: the loss's shift search does not compile here ("
    ), done.stderr[-2000:]
