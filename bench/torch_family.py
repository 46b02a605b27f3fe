"""PyTorch references of plab's attention-family mixers (models/attention.c), for
bench/torch_ref.py: lla, value_avg, affine_linear_attention, affine_mesa,
linear_attention, mesa. Like plab, one module whose axes (bandwidth, probe, affine;
parallax_lla.md §3.3, docs/family.md) are set by a preset per member.

Settings at MAD protocol defaults (attention.c key table and presets): RoPE on the
whole head of q, k and the learned probe r (r: per-head RMSNorm with its own weight,
then RoPE, like q; §3.2), biases on q, k, v, o, no qk-norm, no probe gate, ridge
lambda 1, CG capped at 32 iterations with the stop |r|^2 <= 1e-12 max(1e-12, |r0|^2)
and no preconditioner, LLA's (1+eta) kept (boundary_factor), delta guard 1e-12,
linear attention in its quadratic form (mixer.algorithm default), identity feature
map, no normalisation.

Precision as plab's precision=bf16: members on the family op group (lla, affine_mesa,
linear_attention, mesa) run the whole core in fp32 (kernels/cuda/family_cuda.cu:
"fp32 in every precision table"); affine_linear_attention runs on plab's plain
attention core at scale 0 (bf16 operands, fp32 sums: docs/DEVICE.md) and is written
like torch_ref.py's Parallax; value_avg is an fp32 prefix mean. As in torch_ref.py,
q, k, v, r reach the core rounded to bf16 by autocast (plab keeps them fp32).

Trainable parameters at vocab 16, d 128, heads 16 (hd 8), 2 layers, SwiGLU F = 352:
  rest of the model = embed 16*128 + final norm 128 + head 128*16+16 = 4240
  per layer without the mixer = 2 norms 2*128 + SwiGLU 3*128*352 = 135424
  one linear d->d with bias = 128*128+128 = 16512
  lla, affine_mesa, mesa (wq, wk, wv, wo + biases)      = 4*16512 = 66048
      4240 + 2*(135424 + 66048) = 407184
  value_avg (no q, no k: wv, wo + biases)                = 2*16512 = 33024
      4240 + 2*(135424 + 33024) = 341136
  affine_linear_attention, linear_attention (no q; wk, wv, wo + biases,
  wr 128*128 without bias, r_norm 8)                     = 3*16512 + 16384 + 8 = 65928
      4240 + 2*(135424 + 65928) = 406944
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

RIDGE = 1.0        # mixer.ridge (lambda on the normalised weights, docs/family.md "Conventions")
CG_ITERS = 32      # mixer.cg_iters
CG_TOL = 1e-12     # mixer.cg_tol
DELTA_EPS = 1e-12  # FamArgs.delta_eps: delta += eps*sign(delta) (§1.2)
NORM_EPS = 1e-5    # model.norm_eps, the probe's RMSNorm

INF = math.inf
PRESETS = {  # attention.c FAMILY_MEMBER presets (parallax_lla.md §3.3 table)
    "lla": dict(bandwidth=1.0, probe="solved", affine=True),
    "value_avg": dict(bandwidth=INF, probe="zero", affine=True),
    "affine_linear_attention": dict(bandwidth=INF, probe="learned", affine=True),
    "affine_mesa": dict(bandwidth=INF, probe="solved", affine=True),
    "linear_attention": dict(bandwidth=INF, probe="learned", affine=False),
    "mesa": dict(bandwidth=INF, probe="solved", affine=False),
}


def _cg(A, b, iters, tol):
    """x = A^-1 b for every row at once by plab's cg_solve (parallax_lla.md §2.3,
    kernels/cpu/family_cpu.c): x0 = 0, at most `iters` steps, no preconditioner; a row
    stops (its x frozen) once |r|^2 <= tol*max(tol, |r0|^2), on non-positive curvature
    p.Ap or a non-finite residual; a row with |r0|^2 = 0 or non-finite gets x = 0.
    plab's `break` becomes a per-row mask, so the loop always runs `iters` steps.
    A [..., n, n] SPD fp32, b [..., n] fp32 -> x [..., n]."""
    rr0 = (b * b).sum(-1)                                    # [...]
    active = (rr0 > 0) & torch.isfinite(rr0)                 # [...]
    r = torch.where(active[..., None], b, torch.zeros_like(b))  # [..., n]
    x = torch.zeros_like(b)                                  # [..., n]
    p, rz = r, (r * r).sum(-1)                               # [..., n], [...]
    stop = tol * rr0.clamp(min=tol)                          # [...]
    for _ in range(iters):
        Ap = (A @ p.unsqueeze(-1)).squeeze(-1)               # [..., n, n] @ [..., n, 1] -> [..., n]
        pAp = (p * Ap).sum(-1)                               # [...]
        ok = active & (pAp > 0)
        alpha = (rz / pAp).unsqueeze(-1)                     # [..., 1]; inf/nan only where not ok
        x = torch.where(ok[..., None], x + alpha * p, x)
        r = torch.where(ok[..., None], r - alpha * Ap, r)
        rr = (r * r).sum(-1)                                 # [...]
        active = ok & (rr > stop) & torch.isfinite(rr)
        p = torch.where(active[..., None], r + (rr / rz).unsqueeze(-1) * p, p)
        rz = torch.where(active, rr, rz)
    return x


class _Solve(torch.autograd.Function):
    """rho = A^-1 b by _cg; the backward is plab's (§2.4): one adjoint CG u = A^-1 g
    with the same operator and stopping rule (A is symmetric), then db = u and
    dA = -u rho^T, i.e. the implicit-function gradient (exact for the converged
    solve), not autograd through the iterations, which would store all 32 steps and,
    past convergence, divide by |r|^2 -> 0."""

    @staticmethod
    def forward(ctx, A, b):
        x = _cg(A, b, CG_ITERS, CG_TOL)
        ctx.save_for_backward(A, x)
        return x

    @staticmethod
    def backward(ctx, g):
        A, x = ctx.saved_tensors
        u = _cg(A, g.float(), CG_ITERS, CG_TOL)                  # [..., n]
        return -u.unsqueeze(-1) * x.unsqueeze(-2), u              # [..., n, n], [..., n]


def _outer(a, b):
    return a.unsqueeze(-1) * b.unsqueeze(-2)  # [..., n], [..., n] -> [..., n, n]


def _moment(w, k):
    """sum_j w_ij k_j k_j^T of every row i: one matmul against the flattened outer
    products. w [T, T] or [B, H, T, T], k [B, H, T, hd] -> [B, H, T, hd, hd]."""
    B, H, T, hd = k.shape
    kk = _outer(k, k).flatten(-2)                 # [B, H, T, hd, hd] -> [B, H, T, hd*hd]
    return (w @ kk).view(B, H, T, hd, hd)         # [B, H, T, hd*hd] -> [B, H, T, hd, hd]


class Family(nn.Module):
    def __init__(self, d, H, rope, bandwidth, probe, affine):
        super().__init__()
        self.H, self.hd, self.rope = H, d // H, rope
        self.bandwidth, self.probe, self.affine = bandwidth, probe, affine
        # attention.c attn_check: q is read by finite-bandwidth weights and as the
        # solve's query point; k by finite-bandwidth weights and by any probe
        self.uses_q = bandwidth != INF or probe == "solved"
        self.uses_k = bandwidth != INF or probe != "zero"
        if self.uses_q:
            self.wq = nn.Linear(d, d)
        if self.uses_k:
            self.wk = nn.Linear(d, d)
        self.wv, self.wo = nn.Linear(d, d), nn.Linear(d, d)
        if probe == "learned":  # W_R initialised like W_Q (mixer.probe_init=q), no bias
            self.wr = nn.Linear(d, d, bias=False)
            self.r_norm = nn.Parameter(torch.ones(self.hd))

    def heads(self, t):
        B, T, _ = t.shape
        return t.view(B, T, self.H, self.hd).transpose(1, 2)  # [B, T, d] -> [B, H, T, hd]

    def forward(self, x):
        B, T, d = x.shape
        v = self.heads(self.wv(x))
        q = self.rope(self.heads(self.wq(x))) if self.uses_q else None
        k = self.rope(self.heads(self.wk(x))) if self.uses_k else None
        r = None
        if self.probe == "learned":  # §3.2: per-head RMSNorm with its own weight, then RoPE like q
            r = self.rope(F.rms_norm(self.heads(self.wr(x)), (self.hd,), self.r_norm, NORM_EPS))
        if self.probe == "zero":
            o = self.value_avg(v)
        elif self.probe == "learned" and self.affine:
            o = self.affine_linear_attention(r, k, v)
        else:
            with torch.autocast(x.device.type, enabled=False):  # plab's family ops are fp32
                o = self.family_core(None if q is None else q.float(), k.float(), v.float(),
                                     None if r is None else r.float())
        return self.wo(o.transpose(1, 2).reshape(B, T, d))  # [B, H, T, hd] -> [B, T, d]

    @staticmethod
    def uniform(T, device):
        """h = inf: the weights p_ij = 1/n_i = 1/(i+1) on the causal keys j <= i."""
        n = torch.arange(1, T + 1, device=device, dtype=torch.float32)
        return torch.ones(T, T, device=device).tril() / n[:, None]  # [T, T]

    def value_avg(self, v):
        """Uniform causal weights, zero probe: the running mean of v. plab runs its
        attention core at scale 0; the prefix sum (fp32) is the same function."""
        T = v.shape[2]
        n = torch.arange(1, T + 1, device=v.device, dtype=torch.float32)
        return (v.float().cumsum(2) / n[:, None]).to(v.dtype)  # [B, H, T, hd]

    def affine_linear_attention(self, r, k, v):
        """§3.1 with uniform weights: o_i = sum_j p_ij (1 + tbar_i - t_ij) v_j,
        t_ij = r_i.k_j (raw), tbar_i = sum_j p_ij t_ij; torch_ref.py's Parallax form."""
        p = self.uniform(v.shape[2], v.device)                   # [T, T]
        pt = p * (r @ k.transpose(-1, -2)).float()               # [B, H, T, T]
        tbar = pt.sum(-1, keepdim=True)                          # [B, H, T, 1]
        return (p.to(v.dtype) @ v) * (1 + tbar).to(v.dtype) - pt.to(v.dtype) @ v

    def family_core(self, q, k, v, r):
        """ops_family.h, all fp32, window 0. q, k, v, r [B, H, T, hd] (q None when unused)."""
        B, H, T, hd = v.shape
        if self.bandwidth == INF:
            p = self.uniform(T, v.device)                        # [T, T]
        else:  # p_ij = softmax_j(q_i.k_j / (h sqrt(hd))) over j <= i
            mask = torch.ones(T, T, dtype=torch.bool, device=v.device).tril()
            s = (q @ k.transpose(-1, -2)) / (self.bandwidth * math.sqrt(hd))  # [B, H, T, T]
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        if not self.affine:
            # no intercept (§3.3 last row), weights a_ij = n_i p_ij (= 1 at h = inf, so
            # the plain sums of linear attention and MesaNet): rho = r_i (linear
            # attention), or rho = (sum_j a_ij k_j k_j^T + lambda I)^-1 q_i (MesaNet);
            # o_i = sum_j a_ij (rho.k_j) v_j
            n = torch.arange(1, T + 1, device=v.device, dtype=torch.float32)
            a = p * n[:, None]                                   # [T, T] or [B, H, T, T]
            if self.probe == "learned":
                rho = r
            else:
                Sig = _moment(a, k) + RIDGE * torch.eye(hd, device=v.device)  # [B, H, T, hd, hd]
                rho = _Solve.apply(Sig, q)                       # [B, H, T, hd]
            return (a * (rho @ k.transpose(-1, -2))) @ v
        # With intercept (§1.2 normalised by omega, §1.3), z_ij = k_j - q_i:
        #   mu = kbar - q,  Sigma = sum_j p_ij z_ij z_ij^T + lambda I
        #                         = (sum_j p_ij k_j k_j^T - kbar kbar^T) + mu mu^T + lambda I
        # formed explicitly (hd = 8: 64 floats a row, one matmul; plab applies the same
        # operator matrix-free by streaming the keys, §2.3), rho = Sigma^-1 mu by CG.
        kbar = p @ k                                             # [B, H, T, hd]
        mu = kbar - q                                            # [B, H, T, hd]
        Sig = (_moment(p, k) - _outer(kbar, kbar) + _outer(mu, mu)  # [B, H, T, hd, hd]
               + RIDGE * torch.eye(hd, device=v.device))
        rho = _Solve.apply(Sig, mu)                              # [B, H, T, hd]
        # LLA weights (§1.2, boundary_factor kept): l_ij = p_ij (1 - rho_i.z_ij) / delta_i,
        # delta_i = sum_j p_ij (1 - rho_i.z_ij) (+ eps sign), rho.z_ij = rho.k_j - rho.q_i
        c = 1 - rho @ k.transpose(-1, -2) + (rho * q).sum(-1, keepdim=True)  # [B, H, T, T]
        w = p * c                                                # [B, H, T, T]
        delta = w.sum(-1, keepdim=True)                          # [B, H, T, 1]
        delta = delta + torch.where(delta < 0, -DELTA_EPS, DELTA_EPS)
        return (w @ v) / delta


MIXERS = {
    name: dict(make=lambda d, H, T, rope, pre=pre: Family(d, H, rope, **pre), layers=None, mlp=True)
    for name, pre in PRESETS.items()
}
