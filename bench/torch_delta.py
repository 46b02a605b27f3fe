"""PyTorch references of plab's delta-rule mixers and MesaNet, for bench/torch_ref.py.

The same layers as models/delta.c (deltanet, gated_deltanet, kda) and models/mesanet.c
(mesanet) at plab's defaults and presets, so that a timed training step computes the same
function as plab's: same parameters and shapes, same forward maths; autograd supplies the
backward, except for MesaNet's solve, whose backward is plab's implicit-function gradient
(baselines.md §9.4). None of these mixers uses rotary embeddings.

Settings (core/keys.c, models/delta.c key table and presets, protocol=mad): K = d/H = 8,
short conv 4, L2 eps 1e-6, output RMSNorm eps model.norm_eps = 1e-5; deltanet expand_v 1,
no output gate; gated_deltanet expand_v 2, SiLU output gate; kda expand_v 1, low-rank sigmoid
output gate, default gate (gate_lower_bound 0); mesanet gates on, no output gate, 30 CG steps,
CG eps 1e-5, lambda = softplus(p) + 0.25 starting at 1. neg_eigval off everywhere.

Trainable parameters at vocab 16, d 128, heads 16 (K 8), W 4, MLP width 352:
  rest of the model: embed 16*128 = 2048; per layer 2 norms 256 + SwiGLU 3*128*352 = 135168,
    2 layers 270848; final norm 128; head 128*16 + 16 = 2064; sum 275088
  deltanet (V 8, HV 128): wq, wk, wv 3*128*128 = 49152; convs q, k, v 3*128*4 = 1536;
    wb 16*128 = 2048; o_norm 8; wo 128*128 = 16384; sum 69128
    -> 275088 + 2*69128 = 413344
  gated_deltanet (V 16, HV 256): wq, wk 2*128*128 = 32768; wv 256*128 = 32768;
    convs (128 + 128 + 256)*4 = 2048; wb, wa 2*16*128 = 4096; A_log 16, dt_bias 16;
    o_norm 16; wg 256*128 = 32768; wo 128*256 = 32768; sum 137264
    -> 275088 + 2*137264 = 549616
  kda (V 8, HV 128): wq, wk, wv 49152; convs 1536; wb 2048; wf_down 8*128 = 1024;
    wf_up 128*8 = 1024; A_log 16; dt_bias 16*8 = 128; o_norm 8; wg_down 8*128 = 1024;
    wg_up 128*8 + bg 128 = 1152; wo 16384; sum 73496
    -> 275088 + 2*73496 = 422080
  mesanet: wq, wk, wv 49152; convs q, k 2*128*4 = 1024; wb + bb 2048 + 16; wa + ba 2048 + 16;
    lambda_p 16*8 = 128; o_norm 8; wo 16384; sum 70824
    -> 275088 + 2*70824 = 416736
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SHORT_CONV = 4  # mixer.short_conv
L2_EPS = 1e-6  # baselines.md §1.2
NORM_EPS = 1e-5  # model.norm_eps, also the per-head output RMSNorm's
CG_STEPS, CG_EPS = 30, 1e-5  # mixer.cg_steps, mixer.cg_eps (§9.3)
LAMBDA_LB, LAMBDA_INIT = 0.25, 1.0  # mixer.lambda_lb, mixer.lambda_init (§9.1)
# chunk lengths of the chunkwise delta rule: FLA's 64 for scalar gates; 16 (FLA's sub-chunk)
# for KDA, whose per-channel decay needs a [C, C, K] tensor per chunk
CHUNK, CHUNK_KDA = 64, 16


def heads(t, H):  # [B, T, H*D] -> [B, H, T, D]
    B, T, _ = t.shape
    return t.reshape(B, T, H, -1).transpose(1, 2)


def l2norm(x):  # over the last dim, eps inside the sqrt (§1.2)
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + L2_EPS)


def dt_bias_init(n):
    """softplus^-1(dt), dt ~ exp(U(log 1e-3, log 1e-1)) clamped >= 1e-4 (§1.4)."""
    dt = torch.empty(n).uniform_(math.log(1e-3), math.log(1e-1)).exp().clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


class ShortConv(nn.Module):
    """Causal depthwise conv of width W without bias, then SiLU (§1.1); PyTorch's Conv1d
    init U(+-1/sqrt(W)) is plab's."""

    def __init__(self, C, W=SHORT_CONV):
        super().__init__()
        self.conv = nn.Conv1d(C, C, W, groups=C, bias=False, padding=W - 1)  # weight [C, 1, W]

    def forward(self, x):  # x [B, T, C]
        T = x.shape[1]
        y = self.conv(x.transpose(1, 2))[..., :T]  # [B, C, T + W - 1] -> [B, C, T]: left padding only
        return F.silu(y).transpose(1, 2)  # [B, T, C]


def delta_rule(q, k, v, beta, g, scale, C):
    """Gated delta rule (§6.2, §7.2, §8.2), per (b, h) with S_0 = 0:
        S~ = Diag(exp g_t) S_{t-1};  S_t = S~ + k_t (beta_t (v_t - S~^T k_t))^T;  o_t = S_t^T (scale q_t)
    by the chunkwise UT-transform form (§6.3, §7.3, §8.3), the same algebra: every chunk of C
    tokens at once, then a loop over the T/C chunks that passes the state. fp32 throughout.
    q, k [B, H, T, K]; v [B, H, T, V]; beta [B, H, T]; g, the log decay: None (no decay),
    [B, H, T, 1] (one per head) or [B, H, T, K] (one per key channel). Returns o [B, H, T, V]."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    if g is None:
        g = q.new_zeros(B, H, T, 1)
    Kg = g.shape[-1]
    n = -(-T // C)
    pad = n * C - T  # zero tokens after the end change no earlier output
    q, k, v, g = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, g))  # [B, H, n*C, *]
    beta = F.pad(beta, (0, pad))  # [B, H, n*C]
    q = q.reshape(B, H, n, C, K) * scale
    k = k.reshape(B, H, n, C, K)
    v = v.reshape(B, H, n, C, V)
    beta = beta.reshape(B, H, n, C, 1)
    G = g.reshape(B, H, n, C, Kg).cumsum(3)  # [B, H, n, C, Kg]: log decay from the chunk start
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # i >= j
    if Kg == 1:
        # Gamma_ij = exp(G_i - G_j) <= 1, masked before exp (§7.5)
        gam = (G[..., :, None, 0] - G[..., None, :, 0]).masked_fill(~causal, float("-inf")).exp()  # [B, H, n, C, C]
        kk = (k @ k.transpose(-1, -2)) * gam  # [B, H, n, C, C]
        qk = (q @ k.transpose(-1, -2)) * gam
    else:
        # per-channel decay inside the dot products (§8.3): E_ijd = exp(G_id - G_jd)
        E = (G[..., :, None, :] - G[..., None, :, :]).masked_fill(~causal[..., None], float("-inf")).exp()  # [B, H, n, C, C, K]
        kE = k[..., None, :, :] * E  # [B, H, n, C(i), C(j), K] = k_jd E_ijd
        kk = (kE @ k.unsqueeze(-1)).squeeze(-1)  # [B, H, n, C, C]: sum_d k_id k_jd E_ijd
        qk = (kE @ q.unsqueeze(-1)).squeeze(-1)  # [B, H, n, C, C]: sum_d s q_id k_jd E_ijd
    # kk, qk are zero above the diagonal (masked decay); L also drops it, row i scaled by beta_i
    L = (beta * kk).tril(-1)  # [B, H, n, C, C]
    eG = G.exp()  # [B, H, n, C, Kg]
    # W = T diag(beta) (exp(G) K), U = T diag(beta) V with T = (I + L)^-1: one triangular solve
    eye = torch.eye(C, device=q.device)
    rhs = torch.cat((beta * eG * k, beta * v), -1)  # [B, H, n, C, K + V]
    W, U = torch.linalg.solve_triangular(eye + L, rhs, upper=False, unitriangular=True).split((K, V), -1)
    qg = q * eG  # [B, H, n, C, K]: exp(G) s q, reads the state before the chunk
    kd = k * (G[..., -1:, :] - G).exp()  # [B, H, n, C, K]: exp(G_C - G) k, writes the state after it
    dC = eG[..., -1, :, None]  # [B, H, n, Kg, 1]: decay over the whole chunk
    S = q.new_zeros(B, H, K, V)
    out = []
    for c in range(n):
        vn = U[:, :, c] - W[:, :, c] @ S  # [B, H, C, V]: beta_r u_r row by row
        out.append(qg[:, :, c] @ S + qk[:, :, c] @ vn)  # [B, H, C, V]
        S = dC[:, :, c] * S + kd[:, :, c].transpose(-1, -2) @ vn  # [B, H, K, V]
    return torch.stack(out, 2).view(B, H, n * C, V)[:, :, :T]  # [B, H, T, V]


class DeltaRule(nn.Module):
    """models/delta.c, kind "deltanet", "gated_deltanet" or "kda" (§6.1, §7.1, §8.1):
    q, k = L2norm(SiLU(conv(x W^T))), v = SiLU(conv(x Wv^T)), beta = sigmoid(x Wb^T),
    log decay g, o = DeltaRule(...) K^-1/2, o = RMSNorm_head(o) w [* gate], y = o Wo^T."""

    def __init__(self, d, H, kind):
        super().__init__()
        K = d // H
        V = K * (2 if kind == "gated_deltanet" else 1)  # mixer.expand_v preset
        HK, HV = H * K, H * V
        self.kind, self.H, self.K, self.V = kind, H, K, V
        self.chunk = CHUNK_KDA if kind == "kda" else CHUNK
        self.wq = nn.Linear(d, HK, bias=False)
        self.wk = nn.Linear(d, HK, bias=False)
        self.wv = nn.Linear(d, HV, bias=False)
        self.cq, self.ck, self.cv = ShortConv(HK), ShortConv(HK), ShortConv(HV)
        self.wb = nn.Linear(d, H, bias=False)
        if kind == "gated_deltanet":
            self.wa = nn.Linear(d, H, bias=False)
            self.A_log = nn.Parameter(torch.log(16 * (1 - torch.rand(H))))  # log U(0, 16]
            self.dt_bias = nn.Parameter(dt_bias_init(H))
            self.wg = nn.Linear(d, HV, bias=False)  # SiLU output gate
        elif kind == "kda":
            # low rank d -> V -> H*K decay input and d -> V -> H*V sigmoid gate (bias bg)
            self.wa = nn.Sequential(nn.Linear(d, V, bias=False), nn.Linear(V, HK, bias=False))
            self.A_log = nn.Parameter(torch.log(1 + 15 * torch.rand(H)))  # log U(1, 16)
            self.dt_bias = nn.Parameter(dt_bias_init(HK))
            self.wg = nn.Sequential(nn.Linear(d, V, bias=False), nn.Linear(V, HV))
        self.o_norm = nn.Parameter(torch.ones(V))
        self.wo = nn.Linear(HV, d, bias=False)

    def forward(self, x):  # x [B, T, d]
        B, T, _ = x.shape
        H, K, V = self.H, self.K, self.V
        # every matmul and the convs under the caller's autocast (bf16 operands, like plab)
        q, k, v = self.cq(self.wq(x)), self.ck(self.wk(x)), self.cv(self.wv(x))  # [B, T, HK], [B, T, HK], [B, T, HV]
        bl = self.wb(x)  # [B, T, H]
        al = self.wa(x) if self.kind != "deltanet" else None  # [B, T, H] or [B, T, HK]
        z = self.wg(x) if self.kind != "deltanet" else None  # [B, T, HV]
        with torch.autocast(x.device.type, enabled=False):  # norms, gates and the recurrence in fp32
            q, k, v = l2norm(heads(q.float(), H)), l2norm(heads(k.float(), H)), heads(v.float(), H)  # [B, H, T, K|V]
            beta = torch.sigmoid(bl.float()).transpose(1, 2)  # [B, H, T]
            g = None
            if self.kind == "gated_deltanet":  # g = -exp(A_log) softplus(a + dt_bias) (§7.1)
                g = -self.A_log.exp() * F.softplus(al.float() + self.dt_bias)  # [B, T, H]
                g = g.transpose(1, 2).unsqueeze(-1)  # [B, H, T, 1]
            elif self.kind == "kda":  # the same per key channel, A_log per head (§8.1)
                a = (al.float() + self.dt_bias).view(B, T, H, K)  # [B, T, H, K]
                g = (-self.A_log.exp()[:, None] * F.softplus(a)).transpose(1, 2)  # [B, H, T, K]
            o = delta_rule(q, k, v, beta, g, K ** -0.5, self.chunk)  # [B, H, T, V]
            o = F.rms_norm(o.transpose(1, 2), (V,), self.o_norm, NORM_EPS).reshape(B, T, H * V)  # [B, T, HV]
            if self.kind == "gated_deltanet":
                o = o * F.silu(z.float())
            elif self.kind == "kda":
                o = o * torch.sigmoid(z.float())
        return self.wo(o)


def cg_solve(Hkk, lam, b, steps, eps):
    """x ~ (Hkk + Diag(lam))^-1 b by `steps` conjugate-gradient iterations from x = 0 with eps
    in both denominators, no early exit (§9.3). Hkk [B, H, T, K, K], lam [H, K], b [B, H, T, K].
    (plab stops on an exactly zero residual; with eps > 0 further steps change nothing there.)"""
    lam = lam[:, None, :]  # [H, 1, K]
    x, r, p = torch.zeros_like(b), b, b
    delta = b.square().sum(-1, keepdim=True)  # [B, H, T, 1]
    for _ in range(steps):
        z = (Hkk @ p.unsqueeze(-1)).squeeze(-1) + lam * p  # [B, H, T, K]: A p
        alpha = delta / ((p * z).sum(-1, keepdim=True) + eps)
        x, r = x + alpha * p, r - alpha * z
        nd = r.square().sum(-1, keepdim=True)
        p = r + nd / (delta + eps) * p
        delta = nd
    return x


class MesaSolve(torch.autograd.Function):
    """q* = (Hkk + Diag(lam))^-1 q by CG, with plab's (and FLA's) implicit-function backward
    (§9.4): dq = A^-1 dq* by a second CG solve (A symmetric), dA = -dq q*^T, dlam = -sum dq q*."""

    @staticmethod
    def forward(ctx, Hkk, lam, q):
        x = cg_solve(Hkk, lam, q, CG_STEPS, CG_EPS)
        ctx.save_for_backward(Hkk, lam, x)
        return x

    @staticmethod
    def backward(ctx, dx):
        Hkk, lam, x = ctx.saved_tensors
        dq = cg_solve(Hkk, lam, dx, CG_STEPS, CG_EPS)  # [B, H, T, K]
        dHkk = -dq.unsqueeze(-1) * x.unsqueeze(-2)  # [B, H, T, K, K]
        dlam = -(dq * x).sum((0, 2))  # [H, K]
        return dHkk, dlam, dq


def mesa(q, k, v, beta, g, lam):
    """MesaNet core (§9.2), all T steps at once: with D_ts = beta_s exp(G_t - G_s) (s <= t,
    G = cumsum g), Hkk_t = sum_s D_ts k_s k_s^T, Hkv_t = sum_s D_ts k_s v_s^T,
    q*_t = (Hkk_t + Diag lam)^-1 q_t, o_t = Hkv_t^T q*_t = sum_s D_ts (k_s . q*_t) v_s.
    q, k, v [B, H, T, K]; beta, g [B, H, T]; lam [H, K]. fp32. Returns o [B, H, T, K]."""
    B, H, T, K = q.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    G = g.cumsum(-1)  # [B, H, T]
    D = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp() * beta[..., None, :]  # [B, H, T, T]
    kk = (k.unsqueeze(-1) * k.unsqueeze(-2)).flatten(-2)  # [B, H, T, K*K]
    Hkk = (D @ kk).view(B, H, T, K, K)  # [B, H, T, K, K]
    qs = MesaSolve.apply(Hkk, lam, q)  # [B, H, T, K]
    return ((qs @ k.transpose(-1, -2)) * D) @ v  # [B, H, T, T] @ [B, H, T, K] -> [B, H, T, K]


class MesaNet(nn.Module):
    """models/mesanet.c (§9.1): q, k = L2norm(SiLU(conv(x W^T))), v = x Wv^T,
    beta = sigmoid(x Wb^T + bb), g = logsigmoid(x Wa^T + ba), lambda = softplus(p) + 0.25,
    o = Mesa(...) (no 1/sqrt(K)), o = RMSNorm_head(o) w, y = o Wo^T."""

    def __init__(self, d, H):
        super().__init__()
        self.H, self.K = H, d // H
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.cq, self.ck = ShortConv(d), ShortConv(d)
        self.wb = nn.Linear(d, H)  # bias bb
        self.wa = nn.Linear(d, H)  # bias ba
        # lambda starts at lambda_init: p = softplus^-1(lambda_init - lambda_lb)
        self.lambda_p = nn.Parameter(torch.full((H, self.K), math.log(math.expm1(LAMBDA_INIT - LAMBDA_LB))))
        self.o_norm = nn.Parameter(torch.ones(self.K))
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x):  # x [B, T, d]
        B, T, d = x.shape
        H, K = self.H, self.K
        q, k, v = self.cq(self.wq(x)), self.ck(self.wk(x)), self.wv(x)  # [B, T, d] each
        bl, al = self.wb(x), self.wa(x)  # [B, T, H]
        with torch.autocast(x.device.type, enabled=False):  # norms, gates and the solve in fp32
            q, k, v = l2norm(heads(q.float(), H)), l2norm(heads(k.float(), H)), heads(v.float(), H)  # [B, H, T, K]
            beta = torch.sigmoid(bl.float()).transpose(1, 2)  # [B, H, T]
            g = F.logsigmoid(al.float()).transpose(1, 2)  # [B, H, T]
            lam = F.softplus(self.lambda_p) + LAMBDA_LB  # [H, K]
            o = mesa(q, k, v, beta, g, lam)  # [B, H, T, K]
            o = F.rms_norm(o.transpose(1, 2), (K,), self.o_norm, NORM_EPS).reshape(B, T, d)  # [B, T, d]
        return self.wo(o)


MIXERS = {
    "deltanet": dict(make=lambda d, H, T, rope: DeltaRule(d, H, "deltanet"), layers=None, mlp=True),
    "gated_deltanet": dict(make=lambda d, H, T, rope: DeltaRule(d, H, "gated_deltanet"), layers=None, mlp=True),
    "kda": dict(make=lambda d, H, T, rope: DeltaRule(d, H, "kda"), layers=None, mlp=True),
    "mesanet": dict(make=lambda d, H, T, rope: MesaNet(d, H), layers=None, mlp=True),
}
