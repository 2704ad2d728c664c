"""PIUnet: permutation-invariant multi-image super-resolution with aleatoric uncertainty.

Parameter names and shapes are those of the published checkpoints (a Conv3d with a
(1,3,3) kernel, BatchNorm3d, MultiheadAttention-style projections), so those files load
with strict=True. Internally the frames ride in the batch dimension, features are
(B*T, F, X, Y): the spatial convolutions then run as 2-D convolutions over all frames at
once, and batch norm over (B*T, X, Y) equals the published norm over (B, T, X, Y). The
features are kept channels-last in memory, so the temporal attention reads its tokens
without copies and the convolutions take their fastest path.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# Fixed normalisation of LR and HR digital numbers (PIUNET.md section 2), both bands.
NORM_MEAN = 7433.6436
NORM_STD = 2353.0723
SCALE = 3


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.01)


class FrameConv(nn.Conv3d):
    """Conv3d with kernel (1,3,3) applied as a 2-D convolution to (N, C, X, Y) frames."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=(1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.squeeze(2), self.bias, padding=1)


class FrameNorm(nn.BatchNorm3d):
    """BatchNorm3d whose statistics run over frames laid out as (N, C, X, Y)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"FrameNorm expects (N, C, X, Y), got {tuple(x.shape)}")


class TemporalAttention(nn.Module):
    """Self-attention over the T frames of every pixel, without positions.

    Same parameters as torch.nn.MultiheadAttention(F, heads). Query, key and value all
    come from the same tokens x, so per head the scores need only x A x' with
    A = Wq' Wk (the key bias and the query bias times x' shift each row of scores by a
    constant, which the softmax ignores, except bq Wk, which stays), and the value and
    output projections fold into one matrix Wo Wv, the value bias into the output bias
    (attention weights sum to one). Two F x F products per token instead of four, equal
    to the unfolded module to rounding.
    """

    def __init__(self, n_feat: int, n_heads: int):
        super().__init__()
        if n_feat % n_heads:
            raise ValueError(f"n_feat={n_feat} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
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
        q = q.permute(0, 2, 3, 1, 4).flatten(0, 1)  # (B*P, heads, T, F)
        kv = tokens.transpose(1, 2).reshape(b * p, 1, n_frames, f).expand(-1, heads, -1, -1)
        att = F.scaled_dot_product_attention(q, kv, kv, scale=(f // heads) ** -0.5)
        att = att.view(b, p, heads, n_frames, f).permute(0, 3, 1, 2, 4).reshape(b, n_frames, p, heads * f)
        out = F.linear(att, o_weight, o_bias)
        return out.view(nt, x, y, f).permute(0, 3, 1, 2)


class TEFA(nn.Module):
    """Temporal-spatial feature attention block (residual)."""

    def __init__(self, n_feat: int, r_bneck: int, n_heads: int):
        super().__init__()
        self.conv0 = FrameConv(n_feat, n_feat)
        self.norm00 = FrameNorm(n_feat)
        self.tran0 = TemporalAttention(n_feat, n_heads)
        self.norm0 = FrameNorm(n_feat)
        self.conv1 = FrameConv(n_feat, n_feat)
        self.tran1 = TemporalAttention(n_feat, n_heads)
        self.norm11 = FrameNorm(n_feat)
        self.norm1 = FrameNorm(n_feat)
        self.lin0 = nn.Linear(n_feat, n_feat // r_bneck)
        self.lin1 = nn.Linear(n_feat // r_bneck, n_feat)

    def forward(self, h0: torch.Tensor, n_frames: int) -> torch.Tensor:
        h = lrelu(self.norm00(self.conv0(h0)))
        h = lrelu(self.norm0(h + self.tran0(h, n_frames)))
        h = lrelu(self.norm11(self.conv1(h)))
        h = self.norm1(h + self.tran1(h, n_frames))
        nt, f = h.shape[:2]
        g = h.mean(dim=(2, 3)).view(nt // n_frames, n_frames, f).mean(dim=1)  # (B, F)
        g = torch.sigmoid(self.lin1(lrelu(self.lin0(g))))
        g = g.repeat_interleave(n_frames, dim=0)[:, :, None, None]
        return h * g + h0


class TERN(nn.Module):
    """Temporal registration: one learned 5x5 filter per sample and frame."""

    def __init__(self, n_feat: int, n_heads: int):
        super().__init__()
        self.conv0 = FrameConv(n_feat, n_feat)
        self.norm00 = FrameNorm(n_feat)
        self.tran0 = TemporalAttention(n_feat, n_heads)
        self.norm0 = FrameNorm(n_feat)
        self.conv1 = nn.Conv1d(n_feat, 25, 1)

    def forward(self, h_in: torch.Tensor, n_frames: int) -> torch.Tensor:
        h = lrelu(self.norm00(self.conv0(h_in)))
        h = lrelu(self.norm0(h + self.tran0(h, n_frames)))
        nt, f, x, y = h_in.shape
        pooled = h.mean(dim=(2, 3)).view(nt // n_frames, n_frames, f).transpose(1, 2)
        filters = self.conv1(pooled).transpose(1, 2).reshape(nt, 1, 5, 5)  # (B*T, 1, 5, 5)
        return filter_frames(h_in, filters)


class _StatisticsKept:
    """Checkpoint contexts under which a recomputed block leaves its batch-norm statistics
    as the first pass left them (a second update would change the running means)."""

    def __init__(self, block: nn.Module):
        self.block = block

    def contexts(self):
        return contextlib.nullcontext(), self._restoring()

    @contextlib.contextmanager
    def _restoring(self):
        saved = [b.clone() for b in self.block.buffers()]
        try:
            yield
        finally:  # recomputation stops early, by an exception, once it has what backward needs
            with torch.no_grad():
                for buffer, value in zip(self.block.buffers(), saved):
                    buffer.copy_(value)


def filter_frames(h: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Cross-correlate every channel of frame n of `h` (N, C, X, Y) with filters[n] (N, 1, 5, 5).

    One grouped convolution: channels become the batch and frames the groups.
    """
    out = F.conv2d(h.transpose(0, 1), filters, padding=2, groups=h.shape[0])
    return out.transpose(0, 1)


class PIUNet(nn.Module):
    """PIUnet. forward(x: (B, T, X, Y) normalised LR frames) -> (mu, s), each (B, 1, 3X, 3Y).

    `mu` is the super-resolved image in normalised units, `s` the log of the Laplace
    scale in normalised units. The output is invariant to the order of the T frames.
    """

    def __init__(self, n_feat: int = 42, r_bneck: int = 8, n_tefa: int = 16, n_heads: int = 1,
                 checkpoint_blocks: bool = False):
        super().__init__()
        # training only: keep each TEFA block's input and recompute its inside in backward
        self.checkpoint_blocks = checkpoint_blocks
        self.conv_in = FrameConv(1, n_feat)
        self.tran_in = TemporalAttention(n_feat, n_heads)
        self.norm00 = FrameNorm(n_feat)
        self.norm0 = FrameNorm(n_feat)
        self.res = nn.ModuleList(TEFA(n_feat, r_bneck, n_heads) for _ in range(n_tefa))
        self.conv_mid = FrameConv(n_feat, n_feat)
        self.tran_mid = TemporalAttention(n_feat, n_heads)
        self.norm11 = FrameNorm(n_feat)
        self.norm1 = FrameNorm(n_feat)
        self.regnet = TERN(n_feat, n_heads)
        self.conv_d2s_mu = nn.Conv2d(n_feat, SCALE * SCALE, 3, padding=1)
        self.conv_d2s_sigma = nn.Conv2d(n_feat, n_feat, 3, padding=1)
        self.conv_out_sigma = nn.Conv2d(n_feat, 1, 1)
        self.norm_sigma = nn.BatchNorm2d(n_feat)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"PIUNet expects (B, T, X, Y) frames, got {tuple(x.shape)}")
        b, t, px, py = x.shape
        h = self.conv_in(x.reshape(b * t, 1, px, py)).contiguous(memory_format=torch.channels_last)
        h = lrelu(self.norm00(h))
        h = self.norm0(h + self.tran_in(h, t))
        h_res = h
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.res:
            if recompute and torch.compiler.is_compiling():
                # the compiler's recomputation applies no buffer update twice
                h = checkpoint(block, h, t, use_reentrant=False)
            elif recompute:
                h = checkpoint(block, h, t, use_reentrant=False, context_fn=_StatisticsKept(block).contexts)
            else:
                h = block(h, t)
        h = lrelu(self.norm11(self.conv_mid(h)))
        h = lrelu(self.norm1(h + self.tran_mid(h, t)))
        h = h + h_res
        h = self.regnet(h, t)
        h = h.view(b, t, *h.shape[1:]).mean(dim=1)  # (B, F, X, Y)

        # bilinear upsampling is linear, so upsampling the mean frame equals the mean of
        # the upsampled frames
        base = F.interpolate(x.mean(dim=1, keepdim=True), scale_factor=SCALE,
                             mode="bilinear", align_corners=False)
        mu = F.pixel_shuffle(self.conv_d2s_mu(h), SCALE) + base

        u = F.interpolate(h, scale_factor=SCALE, mode="bilinear", align_corners=False)
        s = self.conv_out_sigma(lrelu(self.norm_sigma(self.conv_d2s_sigma(u))))
        return mu, s


def normalise(dn: torch.Tensor) -> torch.Tensor:
    """Digital numbers to the network's units."""
    return (dn - NORM_MEAN) / NORM_STD


def denormalise(mu: torch.Tensor) -> torch.Tensor:
    """Network units to digital numbers."""
    return mu * NORM_STD + NORM_MEAN


def scale_dn(s: torch.Tensor) -> torch.Tensor:
    """Predicted log-scale (network units) to the Laplace scale in digital numbers."""
    return torch.exp(s + math.log(NORM_STD))
