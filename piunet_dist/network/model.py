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

from ..core.config import ModelConfig
from .attention import TemporalAttention

# Fixed normalisation of LR and HR digital numbers (docs/method.md section 2), both bands.
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
    scale in normalised units, both float32. The output is invariant to the order of the
    T frames. `attention` picks the temporal attention's implementation (attention.py).
    """

    def __init__(
        self,
        n_feat: int = 42,
        r_bneck: int = 8,
        n_tefa: int = 16,
        n_heads: int = 1,
        checkpoint_blocks: bool = False,
        attention: str = "auto",
    ):
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
        self.set_attention(attention)

    @classmethod
    def from_config(cls, cfg: ModelConfig, checkpoint_blocks: bool = False) -> PIUNet:
        return cls(cfg.n_feat, cfg.r_bneck, cfg.n_tefa, cfg.n_heads, checkpoint_blocks, cfg.attention)

    def set_attention(self, impl: str) -> None:
        """Which implementation of the temporal attention's core runs (attention.py): same
        parameters, same function to rounding."""
        for module in self.modules():
            if isinstance(module, TemporalAttention):
                module.impl = impl

    def compile_blocks(self, **options) -> None:
        """torch.compile each TEFA block in place: the 16 blocks share one compiled graph, so
        the compile takes a block's time, not the network's; the state_dict keeps its names."""
        for block in self.res:
            block.compile(**options)

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
        # the output in float32 under any autocast: in bfloat16 its rounding alone (8 bits)
        # would be ~10 DN on the image
        with torch.autocast(x.device.type, enabled=False):
            return self._head(x.float(), h.float())

    def _head(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # bilinear upsampling is linear, so upsampling the mean frame equals the mean of
        # the upsampled frames
        base = F.interpolate(x.mean(dim=1, keepdim=True), scale_factor=SCALE, mode="bilinear", align_corners=False)
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
