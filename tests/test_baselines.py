"""The challenge's baseline: PIL's bicubic (the Keys cubic, a = -0.5) of the clearest frames,
averaged; checked against PIL itself and against the kernel written out."""

import numpy as np
import pytest
import torch
from PIL import Image

from piunet_dist.network.baselines import bicubic_mean, challenge_baseline


def scene(rng, n=5, size=16):
    lr = rng.integers(0, 2**14, (n, size, size)).astype(np.uint16)
    qm = np.ones((n, size, size), dtype=bool)
    qm[0, :3] = False  # frame 0 the cloudiest
    qm[1, 0, :5] = False  # frames 1 and 3 tie, clearer than 0 and less than 2 and 4
    qm[3, 5, :5] = False
    return lr, qm


def test_the_baseline_is_pils_bicubic_of_the_clearest_frames_averaged():
    lr, qm = scene(np.random.default_rng(0))
    qm[1:] = True  # frames 1..4 are all clear: they are the clearest, 0 is left out
    expected = np.mean(
        [np.asarray(Image.fromarray(f.astype(np.float32)).resize((48, 48), Image.BICUBIC)) for f in lr[1:]],
        axis=0,
        dtype=np.float32,
    )
    got = challenge_baseline(lr, qm)
    assert got.dtype == torch.float32 and got.shape == (48, 48)
    assert torch.equal(got, torch.from_numpy(expected))
    assert torch.equal(challenge_baseline(torch.from_numpy(lr.astype(np.float32)), torch.from_numpy(qm)), got)


def test_only_the_frames_with_the_most_clear_pixels_count():
    lr, qm = scene(np.random.default_rng(1))
    alone = challenge_baseline(lr[[2, 4]], qm[[2, 4]])
    assert torch.equal(challenge_baseline(lr, qm), alone)
    assert not torch.equal(challenge_baseline(lr[[1, 2]], qm[[1, 2]]), challenge_baseline(lr[[1, 3]], qm[[1, 3]]))


def keys(t, a=-0.5):
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0)
    )


@pytest.mark.parametrize("height,width", [(16, 16), (12, 20)])
def test_the_kernel_is_keys_cubic_with_a_minus_a_half(height, width):
    """Away from the borders (where PIL renormalises the clipped kernel) every output pixel is
    the separable Keys cubic of its 4 x 4 LR neighbours, at PIL's pixel centres."""
    frame = np.random.default_rng(2).uniform(0, 2**14, (height, width))
    clear = np.ones((1, height, width), dtype=bool)
    got = challenge_baseline(frame[None], clear).double().numpy()

    def weights(n_in, a):
        centres = (np.arange(3 * n_in) + 0.5) / 3 - 0.5
        return keys(centres[:, None] - np.arange(n_in)[None, :], a)  # (3n, n)

    inner = (slice(6, 3 * height - 6), slice(6, 3 * width - 6))
    for a, within in ((-0.5, True), (-0.75, False)):  # -0.75: torch's bicubic, 0.1 dB off norm.csv
        expected = weights(height, a) @ frame @ weights(width, a).T
        assert (np.abs(got[inner] - expected[inner]).max() < 0.02) == within  # DN, of values up to 16383


def test_bicubic_mean_upsamples_the_mean_frame():
    frames = torch.rand(2, 3, 8, 8) * 1000
    up = bicubic_mean(frames)
    assert up.shape == (2, 1, 24, 24)
    assert torch.allclose(up, bicubic_mean(frames.mean(dim=1, keepdim=True).expand(-1, 5, -1, -1)))
    assert torch.allclose(bicubic_mean(torch.full((1, 2, 8, 8), 700.0)), torch.tensor(700.0))
