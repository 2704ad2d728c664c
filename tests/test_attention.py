"""The temporal attention's cores (attention.py): each computes the same function as a
float64 attention written out with einsum, forward and gradients, at any size. On a CPU
the Triton kernels run under TRITON_INTERPRET=1 (conftest.py), in float32: the
interpreter's products of bfloat16 blocks are wrong, so bf16 is checked on a GPU by
bench/gpu.py's attention section."""

import pytest
import torch

from piunet_dist.core.errors import UserError
from piunet_dist.network.attention import attend, resolve
from piunet_dist.network.model import PIUNet


def einsum_attention(q, x, scale):
    scores = torch.einsum("biphf,bjpf->bphij", q, x) * scale
    return torch.einsum("bphij,bjpf->biphf", torch.softmax(scores, dim=-1), x)


def random_case(b, t, p, heads, f, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, p, heads, f, generator=g, dtype=torch.float64)
    x = torch.randn(b, t, p, f, generator=g, dtype=torch.float64)
    d = torch.randn(b, t, p, heads, f, generator=g, dtype=torch.float64)
    return q, x, d


def outputs_and_grads(fn, q, x, d):
    q, x = q.clone().requires_grad_(), x.clone().requires_grad_()
    out = fn(q, x)
    out.backward(d.to(out.dtype))
    return out.detach().double(), q.grad.double(), x.grad.double()


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("impl", ["sdpa", "matmul", "triton"])
@pytest.mark.parametrize("b, t, p, heads, f", [(2, 5, 19, 1, 12), (1, 9, 33, 2, 8), (1, 20, 5, 1, 42)])
def test_every_core_is_the_same_attention(impl, b, t, p, heads, f):
    q, x, d = random_case(b, t, p, heads, f)
    scale = f**-0.5
    want = outputs_and_grads(lambda q, x: einsum_attention(q, x, scale), q, x, d)
    got = outputs_and_grads(lambda q, x: attend(q, x, scale, impl), q.float(), x.float(), d)
    for name, a, w in zip(("out", "dq", "dx"), got, want):
        assert relative(a, w) < 1e-5, name


@pytest.mark.parametrize("impl", ["sdpa", "matmul"])
def test_bfloat16_cores_stay_within_bfloat16_rounding(impl):
    q, x, d = random_case(2, 9, 16, 1, 42)
    want = outputs_and_grads(lambda q, x: einsum_attention(q, x, 42**-0.5), q, x, d)
    got = outputs_and_grads(lambda q, x: attend(q, x, 42**-0.5, impl), q.bfloat16(), x.bfloat16(), d)
    for name, a, w in zip(("out", "dq", "dx"), got, want):
        assert relative(a, w) < 1e-2, name


def test_sdpa_in_several_launches_equals_one():
    """On a GPU SDPA runs at most 65,535 sequences per launch; a tiny limit forces the split here."""
    q, x, _ = random_case(3, 9, 25, 2, 12)
    q, x = q.float(), x.float()
    whole = attend(q, x, 0.3, "sdpa")
    split = attend(q, x, 0.3, "sdpa", max_sequences=7)  # 3 sequences (of 2 heads) per launch
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)


def test_the_model_with_the_triton_attention_is_the_model_with_sdpa():
    torch.manual_seed(0)
    fast = PIUNet(n_feat=8, r_bneck=4, n_tefa=1, attention="triton").train()
    plain = PIUNet(n_feat=8, r_bneck=4, n_tefa=1, attention="sdpa").train()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 5, 8, 8)
    (mu, s), (mu_p, s_p) = fast(x), plain(x)
    torch.testing.assert_close(mu, mu_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s, s_p, rtol=1e-4, atol=1e-5)
    (mu.square().mean() + s.mean()).backward()
    (mu_p.square().mean() + s_p.mean()).backward()
    scale = max(p.grad.abs().max() for p in plain.parameters())
    for (name, p), p_p in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad / scale, p_p.grad / scale, rtol=0, atol=1e-5, msg=name)


def test_auto_takes_sdpa_on_a_cpu():
    assert resolve("auto", torch.device("cpu")) == "sdpa"
    assert resolve("matmul", torch.device("cpu")) == "matmul"


def test_triton_on_a_cpu_is_refused_in_one_line_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UserError, match=r"model.attention=triton: needs the triton package and a CUDA GPU"):
        resolve("triton", torch.device("cpu"))
