"""The temporal attention's core as two Triton kernels, forward and backward.

Per pixel and head: T query vectors q_i and the T tokens x_j (keys and values at once,
the projections folded outside), out_i = sum_j softmax_j(scale q_i . x_j) x_j. Every
pixel is its own tiny problem (T = 9 tokens of F = 42 features in training), so a program
takes a block of pixels of one sample, loads each pixel's T tokens as one (T, F) tile
(padded to 16 x 64), and computes its T x T scores and the weighted sum as batched
matrix products on the tensor cores; the softmax is in float32. The tensors stay in the
features' channels-last layout, (B, T, P, [H,] F), so no copy into a (B*P, T, F) layout is
needed, and the grid is one-dimensional, so no batch is too large for it.

Imported only where the Triton attention runs. Under TRITON_INTERPRET=1 the kernels run
on the CPU (slowly), which is how the tests check them without a GPU; the interpreter's
products of bfloat16 blocks are wrong, so there they are checked in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _offsets(b, p, P, h, H: tl.constexpr, F, T: tl.constexpr, TP: tl.constexpr, BLOCK_F: tl.constexpr):
    """(BLOCK, TP, BLOCK_F) offsets of the q-like tensors' elements, rows ((b*T+i)*P+p)*H+h, and
    of x's, rows (b*T+i)*P+p; the (BLOCK, TP) offsets of the log-sum-exp; the masks of real
    tokens and features."""
    i = tl.arange(0, TP)
    f = tl.arange(0, BLOCK_F)
    rows = (b * T + i[None, :]) * P + p[:, None]
    token = (p < P)[:, None] & (i < T)[None, :]
    inside = token[:, :, None] & (f < F)[None, None, :]
    return (
        (rows * H + h)[:, :, None] * F + f[None, None, :],
        rows[:, :, None] * F + f[None, None, :],
        rows * H + h,
        inside,
        token,
    )


@triton.jit
def _forward(
    q_ptr,
    x_ptr,
    out_ptr,
    lse_ptr,
    P,
    F,
    scale,
    T: tl.constexpr,
    H: tl.constexpr,
    TP: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_F: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    blocks = tl.cdiv(P, BLOCK)
    h = pid % H
    b = ((pid // H) // blocks).to(tl.int64)  # 64-bit offsets: a batch of scenes passes 2**31 elements
    p = ((pid // H) % blocks) * BLOCK + tl.arange(0, BLOCK)
    at_q, at_x, at_lse, inside, token = _offsets(b, p, P, h, H, F, T, TP, BLOCK_F)
    q = tl.load(q_ptr + at_q, mask=inside, other=0.0)
    x = tl.load(x_ptr + at_x, mask=inside, other=0.0)
    s = tl.dot(q, tl.trans(x), input_precision=PRECISION) * scale  # (BLOCK, TP, TP)
    s = tl.where((tl.arange(0, TP) < T)[None, None, :], s, float("-inf"))
    m = tl.max(s, axis=2)
    e = tl.exp(s - m[:, :, None])
    total = tl.sum(e, axis=2)
    out = tl.dot((e / total[:, :, None]).to(x.dtype), x, input_precision=PRECISION)
    tl.store(out_ptr + at_q, out.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(lse_ptr + at_lse, m + tl.log(total), mask=token)


@triton.jit
def _backward(
    q_ptr,
    x_ptr,
    out_ptr,
    dout_ptr,
    lse_ptr,
    dq_ptr,
    dx_ptr,
    P,
    F,
    scale,
    T: tl.constexpr,
    H: tl.constexpr,
    TP: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_F: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    blocks = tl.cdiv(P, BLOCK)
    b = (pid // blocks).to(tl.int64)
    p = (pid % blocks) * BLOCK + tl.arange(0, BLOCK)
    key = (tl.arange(0, TP) < T)[None, None, :]
    # x is the key and the value of every head: its gradient gathers over the heads
    dx = tl.zeros((BLOCK, TP, BLOCK_F), tl.float32)
    for h in range(H):
        at_q, at_x, at_lse, inside, token = _offsets(b, p, P, h, H, F, T, TP, BLOCK_F)
        x = tl.load(x_ptr + at_x, mask=inside, other=0.0)
        q = tl.load(q_ptr + at_q, mask=inside, other=0.0)
        dout = tl.load(dout_ptr + at_q, mask=inside, other=0.0)
        out = tl.load(out_ptr + at_q, mask=inside, other=0.0)
        lse = tl.load(lse_ptr + at_lse, mask=token, other=0.0)
        s = tl.dot(q, tl.trans(x), input_precision=PRECISION) * scale
        prob = tl.where(key, tl.exp(s - lse[:, :, None]), 0.0)
        dprob = tl.dot(dout, tl.trans(x), input_precision=PRECISION)
        delta = tl.sum(dout.to(tl.float32) * out.to(tl.float32), axis=2)  # = sum_j prob_ij dprob_ij
        ds = prob * (dprob - delta[:, :, None])
        dq = tl.dot(ds.to(x.dtype), x, input_precision=PRECISION) * scale
        tl.store(dq_ptr + at_q, dq.to(dq_ptr.dtype.element_ty), mask=inside)
        dx += tl.dot(tl.trans(prob).to(x.dtype), dout, input_precision=PRECISION)
        dx += tl.dot(tl.trans(ds).to(x.dtype), q, input_precision=PRECISION) * scale
    at_q, at_x, at_lse, inside, token = _offsets(b, p, P, 0, H, F, T, TP, BLOCK_F)
    tl.store(dx_ptr + at_x, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _settings(q: torch.Tensor, pixels: int) -> dict:
    """Tile sizes: tokens padded to a power of two of at least 16 (the products' least side),
    features likewise; `pixels` x tokens rows per program, so longer sequences take fewer pixels."""
    frames, features = q.shape[1], q.shape[-1]
    tp = max(16, triton.next_power_of_2(frames))
    return {
        "T": frames,
        "H": q.shape[3],
        "TP": tp,
        "BLOCK": max(1, pixels * 16 // tp),
        "BLOCK_F": max(16, triton.next_power_of_2(features)),
        # float32 stays float32 (not TF32): the same function to rounding as the other cores
        "PRECISION": "ieee",
    }


def forward(q: torch.Tensor, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B,T,P,H,F), x (B,T,P,F), both contiguous and of one dtype -> out like q, lse (B,T,P,H) float32."""
    b, t, p, heads, f = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, t, p, heads), device=q.device, dtype=torch.float32)
    settings = _settings(q, pixels=16)
    grid = (b * triton.cdiv(p, settings["BLOCK"]) * heads,)
    _forward[grid](q, x, out, lse, p, f, scale, num_warps=8, **settings)
    return out, lse


def backward(q, x, out, lse, dout, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of forward's out with respect to q and x, given dout (like out)."""
    b, t, p, heads, f = q.shape
    dq, dx = torch.empty_like(q), torch.empty_like(x)
    settings = _settings(q, pixels=8)
    grid = (b * triton.cdiv(p, settings["BLOCK"]),)
    _backward[grid](q, x, out, dout.contiguous(), lse, dq, dx, p, f, scale, num_warps=8, **settings)
    return dq, dx
