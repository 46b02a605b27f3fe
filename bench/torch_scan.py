"""PyTorch references of plab's state-space mixers, for bench/torch_ref.py.

  mamba   Mamba-1 selective scan layer (models/mamba.c, baselines.md §4)
  mamba2  Mamba-2 SSD layer with gated RMSNorm (models/mamba2.c, baselines.md §5)

Both presets are `model.mlp=none model.layers=4` (mad.md §4.1: Mamba layers
replace the sequence and the channel mixer). Settings are plab's key defaults
(models/mamba.c key table): d_conv 4, expand 2; Mamba-1 d_state 4, dt_rank
ceil(d/16); Mamba-2 headdim 64, d_state 64, ngroups 1. Neither uses the
model's `heads` (Mamba-2 has d_inner/headdim heads of its own) nor rotary.

Precision: plab's bf16 mode only runs the GEMMs in bf16 (fp32 accumulation);
conv, softplus, the scans and the norm stay fp32. So here the nn.Linear
projections follow autocast and everything else is computed on fp32 tensors
(the SSD matmuls with autocast switched off).

Trainable parameters at V 16, d 128 (d_inner di = 256):
  mamba, one layer (R = 8, N = 4, W = 4):
    in_proj 2*di*d 65536 + conv_w di*W 1024 + conv_b di 256 + x_proj (R+2N)*di 4096
    + dt_proj di*R 2048 + dt_bias di 256 + A_log di*N 1024 + D di 256 + out_proj d*di 32768
    = 107264
  mamba2, one layer (P = 64 -> H = 4 heads, G = 1, N = 64, W = 4):
    in_proj (2*di + 2*G*N + H)*d = 644*128 = 82432 + conv_w (di+2GN)*W 1536 + conv_b 384
    + dt_bias H 4 + A_log H 4 + D H 4 + norm_w di 256 + out_proj d*di 32768
    = 117388
  whole model, 4 layers, no MLP: embed V*d 2048 + 4 * (mixer + norm1 d + norm2 d) + final norm d 128
    + head d*V+V 2064. plab still allocates norm2 of every block when model.mlp=none (it is
    never used, models/model.c), so the count keeps it:
    mamba  2048 + 4*(107264 + 256) + 128 + 2064 = 434320
    mamba2 2048 + 4*(117388 + 256) + 128 + 2064 = 474816
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def causal_conv(x, w, b):
    """Short causal depthwise conv (baselines.md §1.1), fp32, before the SiLU:
    pre_t[c] = b[c] + sum_i w[c,i] x_{t-W+1+i}[c], x_s = 0 for s < 0.
    x [B, T, C], w [C, W], b [C] -> [B, T, C]."""
    T, W = x.shape[1], w.shape[1]
    xp = F.pad(x.float(), (0, 0, W - 1, 0))  # [B, T+W-1, C]: W-1 zeros in front
    return b + sum(xp[:, i:i + T] * w[:, i] for i in range(W))  # [B, T, C]


def uniform_param(shape, bound):
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def dt_bias_param(n):
    """baselines.md §1.4: dt ~ logU(1e-3, 1e-1) clamped at 1e-4; bias = softplus^-1(dt)."""
    lo, hi = math.log(1e-3), math.log(1e-1)
    dt = torch.exp(lo + (hi - lo) * torch.rand(n, dtype=torch.float64)).clamp(min=1e-4)
    return nn.Parameter((dt + torch.log(-torch.expm1(-dt))).float())


def linear_scan(a, b):
    """h_t = a_t h_{t-1} + b_t with h_{-1} = 0, along dim 1, for a, b [B, T, ...].
    Hillis-Steele scan: log2(T) rounds of (a, b)_t <- (a_t a_{t-k}, a_t b_{t-k} + b_t)
    (the associative operator of baselines.md §4.3); the first k tokens already hold
    their prefix. Exact, the same recurrence as plab's token loop up to rounding."""
    T, k = a.shape[1], 1
    while k < T:
        b = torch.cat((b[:, :k], a[:, k:] * b[:, :-k] + b[:, k:]), 1)  # [B, T, ...]
        a = torch.cat((a[:, :k], a[:, k:] * a[:, :-k]), 1)  # [B, T, ...]
        k *= 2
    return b


class Mamba(nn.Module):
    """Mamba-1 layer (baselines.md §4.1), parameters laid out as models/mamba.c."""

    def __init__(self, d, d_state=4, d_conv=4, expand=2, dt_rank=0):
        super().__init__()
        di, N, W = expand * d, d_state, d_conv
        R = dt_rank if dt_rank > 0 else (d + 15) // 16
        self.di, self.N, self.R = di, N, R
        self.in_proj = nn.Linear(d, 2 * di, bias=False)  # rows: [x ; z]
        self.conv_w = uniform_param((di, W), 1 / math.sqrt(W))  # Conv1d default, fan_in W
        self.conv_b = uniform_param((di,), 1 / math.sqrt(W))
        self.x_proj = nn.Linear(di, R + 2 * N, bias=False)  # rows: [delta_low ; B ; C]
        self.dt_proj = nn.Linear(R, di, bias=False)  # default init U(+-R^-1/2), as plab
        self.dt_bias = dt_bias_param(di)
        # S4D real: A_log[c, n] = log(n + 1), so A = -(1..N) for every channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, N + 1)).repeat(di, 1))  # [di, N]
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def forward(self, h):  # h [B, T, d]
        xr, z = self.in_proj(h).split((self.di, self.di), -1)  # [B, T, di] each
        xc = F.silu(causal_conv(xr, self.conv_w, self.conv_b))  # [B, T, di] fp32
        dl, Bm, Cm = self.x_proj(xc).float().split((self.R, self.N, self.N), -1)  # [B,T,R] [B,T,N] [B,T,N]
        # softplus threshold 20, as plab and Mamba
        delta = F.softplus(self.dt_proj(dl).float() + self.dt_bias, threshold=20.0)  # [B, T, di]
        A = -torch.exp(self.A_log)  # [di, N]
        # §4.2 per channel c, state n: h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t
        a = torch.exp(delta[..., None] * A)  # [B, T, di, N]
        u = (delta * xc)[..., None] * Bm[:, :, None, :]  # [B, T, di, N]
        hs = linear_scan(a, u)  # [B, T, di, N] every state, fp32
        y = (hs * Cm[:, :, None, :]).sum(-1) + self.D * xc  # [B, T, di]
        return self.out_proj(y * F.silu(z.float()))  # [B, T, d]


def segsum(g):
    """g [..., T] -> [..., T, T] with out[r, j] = sum_{j<i<=r} g_i for j <= r and -inf
    above the diagonal, built as a cumsum of a masked repeated vector rather than a
    difference of cumsums (baselines.md §5.3: the stable way)."""
    T = g.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=g.device)
    rep = g[..., :, None].expand(*g.shape, T)  # [..., T(i), T(j)] = g_i
    seg = rep.masked_fill(~ones.tril(-1), 0).cumsum(-2)  # [..., T(r), T(j)]
    return seg.masked_fill(~ones.tril(), float("-inf"))


def ssd(x, dt, A, Bm, Cm, D):
    """Mamba-2 SSD (baselines.md §5.2) as one quadratic block over the whole sequence,
    the §5.3 intra-chunk term with a single chunk of T tokens: the same maths as
    plab's token recurrence (mamba2.chunk=0, which its CUDA backend always runs):
      y_r = sum_{j<=r} exp(sum_{j<i<=r} dt_i A) (C_r.B_j) dt_j x_j + D x_r.
    x [B, T, H, P], dt [B, T, H], A, D [H], Bm, Cm [B, T, G, N] -> y [B, T, H, P], fp32."""
    H, G = x.shape[2], Bm.shape[2]
    with torch.autocast(x.device.type, enabled=False):  # plab's SSD is fp32
        # head h reads group h // (H/G)
        k = Bm.float().repeat_interleave(H // G, 2).transpose(1, 2)  # [B, H, T, N]
        q = Cm.float().repeat_interleave(H // G, 2).transpose(1, 2)  # [B, H, T, N]
        dth = dt.float().transpose(1, 2)  # [B, H, T]
        xh = x.float().transpose(1, 2)  # [B, H, T, P]
        decay = torch.exp(segsum(dth * A[:, None]))  # [B, H, T, T], zero above the diagonal
        w = (q @ k.transpose(-1, -2)) * decay  # [B, H, T, T]
        y = w @ (dth[..., None] * xh) + D[:, None, None] * xh  # [B, H, T, P]
    return y.transpose(1, 2)  # [B, T, H, P]


class Mamba2(nn.Module):
    """Mamba-2 layer (baselines.md §5.1), parameters laid out as models/mamba2.c."""

    def __init__(self, d, d_state=64, headdim=64, ngroups=1, d_conv=4, expand=2):
        super().__init__()
        di = expand * d
        H, G, N, W = di // headdim, ngroups, d_state, d_conv
        self.di, self.H, self.P, self.G, self.N = di, H, headdim, G, N
        self.in_proj = nn.Linear(d, 2 * di + 2 * G * N + H, bias=False)  # rows: [z ; x ; B ; C ; dt]
        self.conv_w = uniform_param((di + 2 * G * N, W), 1 / math.sqrt(W))  # channels [x ; B ; C]
        self.conv_b = uniform_param((di + 2 * G * N,), 1 / math.sqrt(W))
        self.dt_bias = dt_bias_param(H)
        self.A_log = nn.Parameter(torch.log(1 + 15 * torch.rand(H)))  # A ~ U(1, 16)
        self.D = nn.Parameter(torch.ones(H))
        self.norm_w = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def forward(self, h):  # h [B, T, d]
        B, T, _ = h.shape
        di, H, P, G, N = self.di, self.H, self.P, self.G, self.N
        z, xbc, dtr = self.in_proj(h).split((di, di + 2 * G * N, H), -1)  # [B,T,di] [B,T,di+2GN] [B,T,H]
        xbc = F.silu(causal_conv(xbc, self.conv_w, self.conv_b))  # [B, T, di+2GN] fp32
        x, Bm, Cm = xbc.split((di, G * N, G * N), -1)  # [B,T,di] [B,T,GN] [B,T,GN]
        dt = F.softplus(dtr.float() + self.dt_bias, threshold=20.0)  # [B, T, H]
        y = ssd(x.reshape(B, T, H, P), dt, -torch.exp(self.A_log), Bm.reshape(B, T, G, N),
                Cm.reshape(B, T, G, N), self.D)  # [B, T, H, P]
        g = y.reshape(B, T, G, di // G) * F.silu(z.float()).reshape(B, T, G, di // G)  # [B, T, G, di/G]
        # RMSNormGated, norm_before_gate=False: per group of di/G channels, eps 1e-5 (§1.3)
        gn = F.rms_norm(g, (di // G,), eps=1e-5) * self.norm_w.view(G, di // G)  # [B, T, G, di/G]
        return self.out_proj(gn.reshape(B, T, di))  # [B, T, d]


MIXERS = {
    "mamba": dict(make=lambda d, H, T, rope: Mamba(d), layers=4, mlp=False),
    "mamba2": dict(make=lambda d, H, T, rope: Mamba2(d), layers=4, mlp=False),
}
