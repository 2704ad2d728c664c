"""The straightforward PIUnet, written from docs/method.md section 1 line by line.

Oracle for the tests and the baseline of the benchmarks: (B, F, T, X, Y) features,
Conv3d, torch.nn.MultiheadAttention on sequence-first tokens, and TERN's per-frame
filtering as a loop. Same parameter names as piunet_dist.PIUNet.
"""

import torch
import torch.nn.functional as F
from torch import nn


def lrelu(x):
    return F.leaky_relu(x, 0.01)


def conv3d(c_in, c_out):
    return nn.Conv3d(c_in, c_out, kernel_size=(1, 3, 3), padding=(0, 1, 1))


def temporal_attention(mha: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    b, f, t, x, y = h.shape
    seq = h.permute(2, 0, 3, 4, 1).reshape(t, b * x * y, f)  # tokens ordered b, x, y
    out, _ = mha(seq, seq, seq, need_weights=False)
    return out.reshape(t, b, x, y, f).permute(1, 4, 0, 2, 3)


class RefTEFA(nn.Module):
    def __init__(self, n_feat, r_bneck, n_heads):
        super().__init__()
        self.conv0 = conv3d(n_feat, n_feat)
        self.norm00 = nn.BatchNorm3d(n_feat)
        self.tran0 = nn.MultiheadAttention(n_feat, n_heads)
        self.norm0 = nn.BatchNorm3d(n_feat)
        self.conv1 = conv3d(n_feat, n_feat)
        self.tran1 = nn.MultiheadAttention(n_feat, n_heads)
        self.norm11 = nn.BatchNorm3d(n_feat)
        self.norm1 = nn.BatchNorm3d(n_feat)
        self.lin0 = nn.Linear(n_feat, n_feat // r_bneck)
        self.lin1 = nn.Linear(n_feat // r_bneck, n_feat)

    def forward(self, h0):
        h = lrelu(self.norm00(self.conv0(h0)))
        h = self.norm0(h + temporal_attention(self.tran0, h))
        h = lrelu(h)
        h = lrelu(self.norm11(self.conv1(h)))
        h = self.norm1(h + temporal_attention(self.tran1, h))
        g = h.mean(dim=(2, 3, 4))
        g = torch.sigmoid(self.lin1(lrelu(self.lin0(g))))
        h = h * g[:, :, None, None, None]
        return h + h0


def per_frame_filter(h_in, filters):
    """h_in (B,C,T,X,Y), filters (B,T,5,5): frame t of sample b, every channel, its own filter."""
    b, c, t, x, y = h_in.shape
    out = torch.empty_like(h_in)
    for i in range(b):
        for j in range(t):
            frame = h_in[i, :, j].unsqueeze(1)  # (C,1,X,Y)
            kernel = filters[i, j].view(1, 1, 5, 5)
            out[i, :, j] = F.conv2d(frame, kernel, padding=2).squeeze(1)
    return out


class RefTERN(nn.Module):
    def __init__(self, n_feat, n_heads):
        super().__init__()
        self.conv0 = conv3d(n_feat, n_feat)
        self.norm00 = nn.BatchNorm3d(n_feat)
        self.tran0 = nn.MultiheadAttention(n_feat, n_heads)
        self.norm0 = nn.BatchNorm3d(n_feat)
        self.conv1 = nn.Conv1d(n_feat, 25, 1)

    def forward(self, h_in):
        h = lrelu(self.norm00(self.conv0(h_in)))
        h = lrelu(self.norm0(h + temporal_attention(self.tran0, h)))
        w = self.conv1(h.mean(dim=(3, 4)))  # (B, 25, T)
        filters = w.permute(0, 2, 1).reshape(h.shape[0], h.shape[2], 5, 5)
        return per_frame_filter(h_in, filters)


class RefPIUNet(nn.Module):
    def __init__(self, n_feat=42, r_bneck=8, n_tefa=16, n_heads=1):
        super().__init__()
        self.conv_in = conv3d(1, n_feat)
        self.tran_in = nn.MultiheadAttention(n_feat, n_heads)
        self.norm00 = nn.BatchNorm3d(n_feat)
        self.norm0 = nn.BatchNorm3d(n_feat)
        self.res = nn.ModuleList(RefTEFA(n_feat, r_bneck, n_heads) for _ in range(n_tefa))
        self.conv_mid = conv3d(n_feat, n_feat)
        self.tran_mid = nn.MultiheadAttention(n_feat, n_heads)
        self.norm11 = nn.BatchNorm3d(n_feat)
        self.norm1 = nn.BatchNorm3d(n_feat)
        self.regnet = RefTERN(n_feat, n_heads)
        self.conv_d2s_mu = nn.Conv2d(n_feat, 9, 3, padding=1)
        self.conv_d2s_sigma = nn.Conv2d(n_feat, n_feat, 3, padding=1)
        self.conv_out_sigma = nn.Conv2d(n_feat, 1, 1)
        self.norm_sigma = nn.BatchNorm2d(n_feat)

    def forward(self, x):
        h = x.unsqueeze(1)
        h = lrelu(self.norm00(self.conv_in(h)))
        h = self.norm0(h + temporal_attention(self.tran_in, h))
        h_res = h
        for block in self.res:
            h = block(h)
        h = lrelu(self.norm11(self.conv_mid(h)))
        h = lrelu(self.norm1(h + temporal_attention(self.tran_mid, h)))
        h = h + h_res
        h = self.regnet(h)
        h = h.mean(dim=2)
        up = F.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False)
        mu = F.pixel_shuffle(self.conv_d2s_mu(h), 3) + up.mean(dim=1, keepdim=True)
        u = F.interpolate(h, scale_factor=3, mode="bilinear", align_corners=False)
        s = self.conv_out_sigma(lrelu(self.norm_sigma(self.conv_d2s_sigma(u))))
        return mu, s
