"""PIUnet's temporal self-attention: per pixel, its T frames' feature vectors attend to
each other (no positions, so the block is equivariant to the frames' order).

Same parameters as torch.nn.MultiheadAttention(F, heads). Query, key and value all come
from the same tokens x, so per head the scores need only x A x' with A = Wq' Wk (the key
bias and the query bias times x' shift each row of scores by a constant, which the
softmax ignores, except bq Wk, which stays), and the value and output projections fold
into one matrix Wo Wv, the value bias into the output bias (attention weights sum to
one). Two F x F products per token instead of four, equal to the unfolded module to
rounding.

What is left between the two projections, the core, has three implementations of the
same arithmetic (`PIUNet(attention=...)`, the setting model.attention):
- sdpa: torch's scaled_dot_product_attention over (B*P, H, T, F) sequences: the fastest
  on CPUs. Its CUDA kernels put batch x heads on a grid axis limited to 65,535, so
  larger batches go in several launches.
- matmul: the scores as one (B*P, H, T, T) batched product, softmax in float32.
- triton: fused kernels per block of pixels in the features' own layout, the scores as
  tensor-core products, with their own backward (pixel_attention_triton): the fastest
  core on GPUs (BENCHMARKS.md).
"auto" takes triton for CUDA tensors when Triton is installed, sdpa otherwise.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError

IMPLEMENTATIONS = ("auto", "sdpa", "matmul", "triton")
MAX_SEQUENCES = 65_535  # per launch of SDPA on CUDA: batch x heads on one grid axis


class TemporalAttention(nn.Module):
    """Self-attention over the T frames of every pixel of (B*T, F, X, Y) features."""

    def __init__(self, n_feat: int, n_heads: int, impl: str = "auto"):
        super().__init__()
        if n_feat % n_heads:
            raise ValueError(f"n_feat={n_feat} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.impl = impl
        self.in_proj_weight = nn.Parameter(torch.empty(3 * n_feat, n_feat))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * n_feat))
        self.out_proj = nn.Linear(n_feat, n_feat)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query weight (H*F, F), query bias (H*F,), output weight (F, H*F), output bias (F,))."""
        f, heads = self.out_proj.in_features, self.n_heads
        d = f // heads
        w_q, w_k, w_v = self.in_proj_weight.view(3, heads, d, f).unbind(0)
        b_q, _, b_v = self.in_proj_bias.view(3, heads, d).unbind(0)
        q_weight = torch.einsum("hdi,hdj->hji", w_q, w_k).reshape(heads * f, f)
        q_bias = torch.einsum("hd,hdj->hj", b_q, w_k).reshape(heads * f)
        w_o = self.out_proj.weight.view(f, heads, d)
        o_weight = torch.einsum("ohd,hdj->ohj", w_o, w_v).reshape(f, heads * f)
        o_bias = self.out_proj.bias + self.out_proj.weight @ b_v.reshape(f)
        return q_weight, q_bias, o_weight, o_bias

    def forward(self, h: torch.Tensor, n_frames: int) -> torch.Tensor:
        nt, f, x, y = h.shape
        b, p, heads = nt // n_frames, x * y, self.n_heads
        q_weight, q_bias, o_weight, o_bias = self.folded()
        tokens = h.permute(0, 2, 3, 1).reshape(b, n_frames, p, f)  # a view when channels-last
        q = F.linear(tokens, q_weight, q_bias).view(b, n_frames, p, heads, f)
        att = attend(q, tokens.to(q.dtype), (f // heads) ** -0.5, resolve(self.impl, h.device))
        out = F.linear(att.reshape(b, n_frames, p, heads * f), o_weight, o_bias)
        return out.view(nt, x, y, f).permute(0, 3, 1, 2)


def attend(
    q: torch.Tensor, x: torch.Tensor, scale: float, impl: str, max_sequences: int = MAX_SEQUENCES
) -> torch.Tensor:
    """q (B,T,P,H,F) queries, x (B,T,P,F) keys and values -> (B,T,P,H,F): per pixel and head,
    out_i = sum_j softmax_j(scale q_i . x_j) x_j."""
    if impl == "triton":
        return pixel_attention(q, x, scale)[0]
    b, t, p, heads, f = q.shape
    qs = q.permute(0, 2, 3, 1, 4).reshape(b * p, heads, t, f)
    xs = x.transpose(1, 2).reshape(b * p, 1, t, f)
    if impl == "matmul":
        scores = torch.matmul(qs, xs.transpose(-1, -2)).float() * scale  # (B*P, H, T, T)
        out = torch.matmul(torch.softmax(scores, dim=-1).to(xs.dtype), xs)
    elif impl == "sdpa":
        kv = xs.expand(-1, heads, -1, -1)
        step = max(1, max_sequences // heads)
        parts = [
            F.scaled_dot_product_attention(qs[i : i + step], kv[i : i + step], kv[i : i + step], scale=scale)
            for i in range(0, b * p, step)
        ]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    else:
        raise ValueError(f"unknown attention implementation {impl!r}")
    return out.view(b, p, heads, t, f).permute(0, 3, 1, 2, 4)


HAS_TRITON = importlib.util.find_spec("triton") is not None


def resolve(impl: str, device: torch.device) -> str:
    """The implementation `impl` names for tensors on `device` ("auto": the fastest there)."""
    if impl == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else "sdpa"
    if impl == "triton" and not (HAS_TRITON and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")):
        raise UserError(
            "model.attention=triton: needs the triton package and a CUDA GPU "
            "(or TRITON_INTERPRET=1 on a CPU, for tests); use auto, sdpa or matmul"
        )
    if impl not in IMPLEMENTATIONS:
        raise UserError(f"model.attention: {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return impl


# The Triton kernels as an operator torch.compile keeps whole, with its own backward.


@torch.library.custom_op("piunet::pixel_attention", mutates_args=())
def pixel_attention(q: torch.Tensor, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """attend() with impl="triton", and the log-sum-exp (B,T,P,H) of every softmax, float32."""
    from . import pixel_attention_triton as kernels

    return kernels.forward(q.contiguous(), x.contiguous(), scale)


@pixel_attention.register_fake
def _(q, x, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("piunet::pixel_attention_backward", mutates_args=())
def pixel_attention_backward(
    q: torch.Tensor, x: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import pixel_attention_triton as kernels

    return kernels.backward(q.contiguous(), x.contiguous(), out, lse, dout, scale)


@pixel_attention_backward.register_fake
def _(q, x, out, lse, dout, scale):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(x.shape, dtype=x.dtype, device=x.device))


def _save(ctx, inputs, output):
    q, x, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, x, out, lse)
    ctx.scale = scale


def _gradients(ctx, dout, _dlse):
    q, x, out, lse = ctx.saved_tensors
    dq, dx = pixel_attention_backward(q, x, out, lse, dout, ctx.scale)
    return dq, dx, None


pixel_attention.register_autograd(_gradients, setup_context=_save)
