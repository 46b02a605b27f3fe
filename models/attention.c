/* The attention family (parallax_lla.md §3.3): one mixer whose three axes are
 * run keys, with the named members (softmax, parallax, lla, value_avg, ...)
 * as presets of those axes.
 *
 *   q = x Wq^T + bq, k = x Wk^T + bk, v = x Wv^T + bv       [B*T, H*hd]
 *   (optional per-head RMSNorm on q and k)
 *   learned probe: r = RMSNorm_head(x Wr^T) * sigmoid(x wg + bg)?   (§3.2)
 *   RoPE on q, k and (option) r with the same angles (§3.2)
 *   o = family core (bandwidth h, probe zero|learned|solved, affine or not)
 *   y = o Wo^T + bo
 * Axes: the weights are softmax(q.k / (h sqrt(hd))) (h = inf: uniform causal
 * weights, scale 0); the probe is 0, r, or solved per query (LLA, §1.2); the
 * output keeps the intercept (centred, §1.3/§3.1) or not (§3.3 last row).
 * Points with a fixed bandwidth, an intercept and no solve run on the plain
 * attention core (ops->attention_*); the others on ops->family
 * (kernels/ops_family.h). Linear attention may also run by its state
 * recurrence (mixer.algorithm=recurrent, baselines.md §3). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_family.h"
#include "layers.h"
#include "mixer.h"

static const KeyDef attention_keys[] = {
    {"mixer.rotary_dim", KEY_INT, "-1", -1, 65536, NULL,
     "RoPE dims per head (even); -1 = whole head, 0 = no RoPE", 0},
    {"mixer.rope_base", KEY_FLOAT, "10000", 1, 1e12, NULL, "RoPE base theta", 0},
    {"mixer.qkv_bias", KEY_BOOL, "true", 1, 0, NULL, "biases on q, k, v and output (MAD: true)", 0},
    {"mixer.qk_norm", KEY_BOOL, "false", 1, 0, NULL, "per-head RMSNorm on q and k", 0},
    {"mixer.window", KEY_INT, "0", 0, 1 << 24, NULL, "sliding window in keys (0 = full causal)", 0},
    {"mixer.probe_init", KEY_ENUM, "q", 1, 0, "q|zero",
     "Parallax W_R init: like W_Q, or zero (then the layer starts as softmax attention)", 0},
    {"mixer.probe_norm", KEY_BOOL, "true", 1, 0, NULL, "per-head RMSNorm on the probe r (own weight)", 0},
    {"mixer.probe_rope", KEY_BOOL, "true", 1, 0, NULL, "rotate the probe like q (paper's best)", 0},
    {"mixer.probe_gate", KEY_BOOL, "false", 1, 0, NULL,
     "learned sigmoid gate per head and token on the probe (paper's gating experiment)", 0},
    /* the family's axes (parallax_lla.md §3.3) */
    {"mixer.bandwidth", KEY_FLOAT, "1", 1e-6, INFINITY, NULL,
     "kernel bandwidth h of the weights exp(q.k/(h sqrt(hd))); 1 = softmax, inf = uniform causal", 0},
    {"mixer.bandwidth_learned", KEY_BOOL, "false", 1, 0, NULL,
     "learn log h per head (initialised at mixer.bandwidth, which must be finite)", 0},
    {"mixer.probe", KEY_ENUM, "zero", 1, 0, "zero|learned|solved",
     "probe rho: zero, learned r = W_R x (Parallax), solved per query (LLA)", 0},
    {"mixer.affine", KEY_BOOL, "true", 1, 0, NULL,
     "local linear fit with intercept (centred); false = no intercept (linear attention, MesaNet)", 0},
    {"mixer.boundary_factor", KEY_BOOL, "true", 1, 0, NULL,
     "solved probe with intercept: keep LLA's (1+eta) (true) or drop it as Parallax does", 0},
    {"mixer.ridge", KEY_FLOAT, "1", 0, 1e12, NULL,
     "ridge lambda of the solved probe (on normalised weights: LLA's lambda*omega; MesaNet's lambda)", 0},
    {"mixer.ridge_grad", KEY_ENUM, "exact", 1, 0, "exact|frozen",
     "LLA backward: exact gradient, or FlashLLA's (omega in lambda*omega held constant)", 0},
    {"mixer.cg_iters", KEY_INT, "32", 1, 100000, NULL, "CG iterations of the probe solve (fixed cap)", 0},
    {"mixer.cg_precondition", KEY_BOOL, "false", 1, 0, NULL, "Jacobi preconditioner in the CG solve", 0},
    {"mixer.cg_tol", KEY_FLOAT, "1e-12", 0, 1, NULL,
     "CG stops a row when |r|^2 <= tol*max(tol,|r0|^2) (FlashLLA's rtol = atol)", 0},
    {"mixer.algorithm", KEY_ENUM, "quadratic", 1, 0, "quadratic|recurrent",
     "linear attention: quadratic (weights) or recurrent (state S_t = S_{t-1} + k v^T)", 0},
    {"mixer.feature_map", KEY_ENUM, "identity", 1, 0, "identity|elu1|relu",
     "feature map on k and the probe (no-intercept members only)", 0},
    {"mixer.normalize", KEY_BOOL, "false", 1, 0, NULL,
     "no-intercept members: divide by sum_j a_j rho.k_j (+1e-6)", 0},
};
const KeyTable attention_key_table = KEYTABLE("mixer (attention family)", attention_keys);

enum { PROBE_ZERO, PROBE_LEARNED, PROBE_SOLVED };
enum { ROUTE_ATTN, ROUTE_FAMILY, ROUTE_RECURRENT };

typedef struct {
    ModelDims dims;
    int H, hd, rot, window, learned, qkv_bias, qk_norm, probe_norm, probe_rope, probe_gate;
    int probe, affine, boundary, bw_learned, uses_q, uses_k, fmap, normalize, route;
    int ridge_frozen, cg_iters, cg_precond;
    int core_rope; /* the plain core turns q, k (r) by RoPE itself (AttnArgs.rope_rot) */
    int r_roped;   /* the probe's norm turns r instead, in the same pass (AttnArgs.r_roped) */
    int core_bias; /* and sums the q, k, v bias gradients (AttnArgs.dbias, fused rows) */
    double bandwidth;
    real rope_base, eps, ridge, cg_tol;
    /* parameter indices (-1 when absent) */
    int wq, wk, wv, wo, bq, bk, bv, bo, qn, kn, wr, rn, wg, bg, lbw;
    real *P[15], *G[15]; /* pointers by slot, filled by bind */
    /* activations [N, d] unless noted */
    real *ql, *kl, *q, *k, *v, *rl, *rn_out, *r, *gl /*[N,H]*/, *o, *obar, *lse, *tbar;
    real *kf, *rf, *rho, *den, *resid; /* feature-mapped k, r; solved probe; [N*H] row scalars */
    real *rsq, *rsk, *rsr; /* [N*H] */
    real *dq, *dk, *dv, *dr, *dtmp, *dgl, *dob;
    /* fused projection: q, k, v (and dq, dk, dv) side by side in one [N, 3d]
     * buffer, made by one matmul with W_Q, W_K, W_V stacked (they are adjacent
     * parameters): one launch and one bias pass instead of three, and one each
     * in the backward. ld = 3d there, d otherwise. */
    real *qkv, *dqkv;
    int ld;
    /* the backend's bf16 attention block (Ops.attn_block_*: projections, probe, core and
     * output on bf16 rows, kernels/cuda/attn_block_cuda.cu), its saved state; NULL: the
     * block is composed here */
    void *block;
    int last_B, last_T;
} Attn;

enum { S_WQ, S_WK, S_WV, S_WO, S_BQ, S_BK, S_BV, S_BO, S_QN, S_KN, S_WR, S_RN, S_WG, S_BG, S_LBW };

static int attn_check(Attn *a, const Config *cfg, Err *err) {
    const char *fm = cfg_str(cfg, "mixer.feature_map");
    int recurrent = strcmp(cfg_str(cfg, "mixer.algorithm"), "recurrent") == 0;
    int bw_inf = isinf(a->bandwidth);
    if (a->bw_learned && bw_inf) {
        err_set(err, "key 'mixer.bandwidth_learned': true needs a finite mixer.bandwidth (got inf); "
                     "the learned parameter is log h");
        return -1;
    }
    if (!a->affine && a->probe == PROBE_ZERO) {
        err_set(err, "key 'mixer.probe': zero with mixer.affine=false gives an output of 0; "
                     "use learned (linear attention) or solved (MesaNet)");
        return -1;
    }
    if (a->fmap != FAM_FMAP_IDENTITY && a->affine) {
        err_set(err, "key 'mixer.feature_map': %s needs mixer.affine=false (feature maps belong to "
                     "the no-intercept members)", fm);
        return -1;
    }
    if (a->normalize && a->affine) {
        err_set(err, "key 'mixer.normalize': true needs mixer.affine=false (members with an "
                     "intercept are normalised already)");
        return -1;
    }
    if (recurrent && (!bw_inf || a->bw_learned || a->affine || a->probe != PROBE_LEARNED ||
                      a->window)) {
        err_set(err, "key 'mixer.algorithm': recurrent runs linear attention only: needs "
                     "mixer.bandwidth=inf, mixer.affine=false, mixer.probe=learned, mixer.window=0 "
                     "(got bandwidth=%g affine=%d probe=%s window=%d)",
                a->bandwidth, a->affine, cfg_str(cfg, "mixer.probe"), a->window);
        return -1;
    }
    a->route = recurrent                                                ? ROUTE_RECURRENT
               : a->affine && a->probe != PROBE_SOLVED && !a->bw_learned ? ROUTE_ATTN
                                                                         : ROUTE_FAMILY;
    /* q is read by the weights (finite h) and as the solve's query point */
    a->uses_q = !bw_inf || a->probe == PROBE_SOLVED;
    a->uses_k = !bw_inf || a->probe != PROBE_ZERO; /* value_avg reads v only */
    /* not where q or k stands in for another buffer (uniform weights read neither) */
    a->core_rope = a->route == ROUTE_ATTN && a->uses_q && a->uses_k && a->rot > 0;
    return 0;
}

static void *attn_create(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err) {
    Attn *a = xcalloc(1, sizeof *a);
    a->dims = *dims;
    a->H = dims->heads;
    if (dims->d % a->H != 0) {
        err_set(err, "key 'model.heads': %d does not divide model.d_model=%d", a->H, dims->d);
        free(a);
        return NULL;
    }
    a->hd = dims->d / a->H;
    int rot = (int)cfg_int(cfg, "mixer.rotary_dim");
    a->rot = rot < 0 ? a->hd : rot;
    if (a->rot > a->hd || a->rot % 2) {
        err_set(err, "key 'mixer.rotary_dim': %d must be even and at most the head dim %d", rot,
                a->hd);
        free(a);
        return NULL;
    }
    const char *probe = cfg_str(cfg, "mixer.probe"), *fm = cfg_str(cfg, "mixer.feature_map");
    a->probe = !strcmp(probe, "learned") ? PROBE_LEARNED
               : !strcmp(probe, "solved") ? PROBE_SOLVED
                                          : PROBE_ZERO;
    a->fmap = !strcmp(fm, "elu1") ? FAM_FMAP_ELU1 : !strcmp(fm, "relu") ? FAM_FMAP_RELU : FAM_FMAP_IDENTITY;
    a->affine = cfg_bool(cfg, "mixer.affine");
    a->boundary = cfg_bool(cfg, "mixer.boundary_factor");
    a->normalize = cfg_bool(cfg, "mixer.normalize");
    a->bandwidth = cfg_float(cfg, "mixer.bandwidth");
    a->bw_learned = cfg_bool(cfg, "mixer.bandwidth_learned");
    a->ridge = (real)cfg_float(cfg, "mixer.ridge");
    a->ridge_frozen = strcmp(cfg_str(cfg, "mixer.ridge_grad"), "frozen") == 0;
    a->cg_iters = (int)cfg_int(cfg, "mixer.cg_iters");
    a->cg_precond = cfg_bool(cfg, "mixer.cg_precondition");
    a->cg_tol = (real)cfg_float(cfg, "mixer.cg_tol");
    a->rope_base = (real)cfg_float(cfg, "mixer.rope_base");
    a->window = (int)cfg_int(cfg, "mixer.window");
    a->qkv_bias = cfg_bool(cfg, "mixer.qkv_bias");
    a->qk_norm = cfg_bool(cfg, "mixer.qk_norm");
    if (attn_check(a, cfg, err) != 0) {
        free(a);
        return NULL;
    }
    int learned = a->learned = a->probe == PROBE_LEARNED;
    a->probe_norm = learned && cfg_bool(cfg, "mixer.probe_norm");
    a->probe_rope = learned && cfg_bool(cfg, "mixer.probe_rope");
    a->probe_gate = learned && cfg_bool(cfg, "mixer.probe_gate");
    a->r_roped = a->probe_norm && a->probe_rope && a->core_rope && !a->probe_gate;
    a->eps = dims->norm_eps;
    int d = dims->d;
    a->wq = a->bq = a->qn = a->wk = a->bk = a->kn = -1;
    if (a->uses_q) a->wq = pb_linear(pb, dims, "wq", d, d, PARAM_MUON);
    if (a->uses_k) a->wk = pb_linear(pb, dims, "wk", d, d, PARAM_MUON);
    a->wv = pb_linear(pb, dims, "wv", d, d, PARAM_MUON);
    a->wo = pb_linear(pb, dims, "wo", d, d, PARAM_MUON);
    a->bv = a->bo = a->wr = a->rn = a->wg = a->bg = a->lbw = -1;
    if (a->qkv_bias) {
        if (a->uses_q) a->bq = pb_add(pb, "bq", d, 0, 0, INIT_ZERO, 0);
        if (a->uses_k) a->bk = pb_add(pb, "bk", d, 0, 0, INIT_ZERO, 0);
        a->bv = pb_add(pb, "bv", d, 0, 0, INIT_ZERO, 0);
        a->bo = pb_add(pb, "bo", d, 0, 0, INIT_ZERO, 0);
    }
    if (a->qk_norm) {
        if (a->uses_q) a->qn = pb_add(pb, "q_norm", a->hd, 0, 0, INIT_CONST, 1);
        if (a->uses_k) a->kn = pb_add(pb, "k_norm", a->hd, 0, 0, INIT_CONST, 1);
    }
    if (learned) {
        if (strcmp(cfg_str(cfg, "mixer.probe_init"), "zero") == 0)
            a->wr = pb_add(pb, "wr", d, d, PARAM_MUON, INIT_ZERO, 0);
        else a->wr = pb_linear(pb, dims, "wr", d, d, PARAM_MUON);
        if (a->probe_norm) a->rn = pb_add(pb, "r_norm", a->hd, 0, 0, INIT_CONST, 1);
        if (a->probe_gate) {
            a->wg = pb_linear(pb, dims, "wg", a->H, d, PARAM_MUON);
            a->bg = pb_add(pb, "bg", a->H, 0, 0, INIT_ZERO, 0);
        }
    }
    if (a->bw_learned)
        a->lbw = pb_add(pb, "log_bw", a->H, 0, PARAM_NO_DECAY, INIT_CONST, log(a->bandwidth));
    return a;
}

/* q, k, v from one matmul: the plain attention core (it reads strided rows),
 * no per-head norm or feature map (those run on packed rows), and W_Q, W_K, W_V
 * (and their biases) adjacent in the parameter vector, in that order */
static int fusable(const Attn *a) {
    size_t dd = (size_t)a->dims.d * a->dims.d, d = (size_t)a->dims.d;
    if (a->route != ROUTE_ATTN || !a->uses_q || !a->uses_k || a->qk_norm ||
        a->fmap != FAM_FMAP_IDENTITY)
        return 0;
    if (a->P[S_WK] != a->P[S_WQ] + dd || a->P[S_WV] != a->P[S_WK] + dd) return 0;
    if (a->G[S_WK] != a->G[S_WQ] + dd || a->G[S_WV] != a->G[S_WK] + dd) return 0;
    if (!a->qkv_bias) return 1;
    return a->P[S_BK] == a->P[S_BQ] + d && a->P[S_BV] == a->P[S_BK] + d &&
           a->G[S_BK] == a->G[S_BQ] + d && a->G[S_BV] == a->G[S_BK] + d;
}

static real attn_scale(const Attn *a) {
    return isinf(a->bandwidth) ? 0 : (real)(1.0 / (a->bandwidth * sqrt((double)a->hd)));
}

/* the plain core's arguments; with core_rope it applies RoPE itself, both ways */
static AttnArgs attn_args(const Attn *a, int B, int T) {
    AttnArgs args = {.B = B, .T = T, .H = a->H, .hd = a->hd, .ld_in = a->ld,
                     .ld_out = a->dims.d, .ld_r = a->dims.d, .ld_dqkv = a->ld, .scale = attn_scale(a),
                     .window = a->window, .q = a->uses_q ? a->q : a->k, .k = a->k, .v = a->v,
                     .r = a->learned ? a->r : NULL, .o = a->o, .obar = a->obar, .lse = a->lse,
                     .tbar = a->tbar, .rope_rot = a->core_rope ? a->rot : 0, .rope_r = a->probe_rope,
                     .r_roped = a->r_roped, .rope_base = a->rope_base};
    return args;
}

/* the whole block's arguments, for a backend that runs it on bf16 rows */
static AttnBlock block_args(const Attn *a, int B, int T) {
    real *const *P = a->P, *const *G = a->G;
    AttnBlock k = {.Wqkv = P[S_WQ], .bqkv = P[S_BQ], .Wo = P[S_WO], .bo = P[S_BO], .Wr = P[S_WR],
                   .r_norm = P[S_RN], .dWqkv = G[S_WQ], .dbqkv = G[S_BQ], .dWo = G[S_WO],
                   .dbo = G[S_BO], .dWr = G[S_WR], .dr_norm = G[S_RN], .eps = a->eps,
                   .core = attn_args(a, B, T)};
    return k;
}

/* the backend's bf16 block where it has one for this layer: the plain core on fused rows,
 * a probe (if any) normed and not gated; then only lse and tbar are the model's */
static int bind_block(Attn *a, const Ops *ops) {
    if (!ops->attn_block_save_bytes || !fusable(a) || (a->learned && (!a->probe_norm || a->probe_gate)))
        return 0;
    AttnBlock shape = block_args(a, a->dims.B, a->dims.T);
    size_t bytes = ops->attn_block_save_bytes(&shape), nh = sizeof(real) * a->dims.B * a->dims.T * a->H;
    if (!bytes) return 0;
    a->block = ops->alloc(bytes);
    a->lse = ops->alloc(nh);
    if (a->learned) a->tbar = ops->alloc(nh);
    return 1;
}

static void attn_bind(void *self, const Ops *ops, const ParamSpec *specs, real *params,
                      real *grads) {
    Attn *a = self;
    int idx[15] = {a->wq, a->wk, a->wv, a->wo, a->bq, a->bk, a->bv, a->bo,
                   a->qn, a->kn, a->wr, a->rn, a->wg, a->bg, a->lbw};
    for (int s = 0; s < 15; s++) {
        a->P[s] = idx[s] >= 0 ? params + specs[idx[s]].offset : NULL;
        a->G[s] = idx[s] >= 0 ? grads + specs[idx[s]].offset : NULL;
    }
    size_t N = (size_t)a->dims.B * a->dims.T, d = (size_t)a->dims.d, H = (size_t)a->H;
    size_t nd = sizeof(real) * N * d, nh = sizeof(real) * N * H;
    a->ld = (int)d;
    if (bind_block(a, ops)) return;
    if (fusable(a)) {
        a->ld = 3 * (int)d;
        a->qkv = ops->alloc(3 * nd), a->dqkv = ops->alloc(3 * nd);
        a->ql = a->q = a->qkv, a->kl = a->k = a->qkv + d, a->v = a->qkv + 2 * d;
        a->dq = a->dqkv, a->dk = a->dqkv + d, a->dv = a->dqkv + 2 * d;
        a->core_bias = a->qkv_bias; /* bq, bk, bv adjacent too (fusable) */
    } else {
        a->v = ops->alloc(nd);
        if (a->uses_k) {
            a->kl = ops->alloc(nd);
            a->k = a->qk_norm ? ops->alloc(nd) : a->kl;
        } else a->k = a->v; /* read at scale 0 only */
        if (a->uses_q) {
            a->ql = ops->alloc(nd);
            a->q = a->qk_norm ? ops->alloc(nd) : a->ql;
        }
        a->dq = ops->alloc(nd), a->dk = ops->alloc(nd), a->dv = ops->alloc(nd);
    }
    a->o = ops->alloc(nd), a->lse = ops->alloc(nh);
    a->rsq = ops->alloc(nh), a->rsk = ops->alloc(nh);
    a->dtmp = ops->alloc(nd);
    a->dob = ops->alloc(nd);
    if (a->learned) {
        a->rl = ops->alloc(nd), a->obar = ops->alloc(nd), a->tbar = ops->alloc(nh);
        a->rn_out = a->probe_norm ? ops->alloc(nd) : a->rl;
        a->r = a->probe_gate ? ops->alloc(nd) : a->rn_out;
        a->rsr = ops->alloc(nh);
        a->dr = ops->alloc(nd);
        if (a->probe_gate) a->gl = ops->alloc(nh), a->dgl = ops->alloc(nh);
    }
    if (a->route != ROUTE_ATTN) a->den = ops->alloc(nh), a->resid = ops->alloc(nh);
    if (a->probe == PROBE_SOLVED) a->rho = ops->alloc(nd);
    if (a->fmap != FAM_FMAP_IDENTITY) {
        a->kf = ops->alloc(nd);
        if (a->learned) a->rf = ops->alloc(nd);
    }
}

static FamArgs fam_args(const Attn *a, int B, int T) {
    FamArgs f = {.B = B, .T = T, .H = a->H, .hd = a->hd, .ld_in = a->dims.d, .ld_out = a->dims.d,
                 .scale = attn_scale(a), .log_bw = a->P[S_LBW], .window = a->window,
                 .probe = a->probe == PROBE_SOLVED   ? FAM_PROBE_SOLVED
                          : a->probe == PROBE_LEARNED ? FAM_PROBE_GIVEN
                                                      : FAM_PROBE_ZERO,
                 .affine = a->affine, .boundary = a->boundary, .normalize = a->normalize,
                 .norm_eps = (real)1e-6, .ridge = a->ridge, .ridge_frozen = a->ridge_frozen,
                 .cg_iters = a->cg_iters, .cg_precond = a->cg_precond, .cg_tol = a->cg_tol,
                 .delta_eps = (real)1e-12,
                 .q = a->uses_q ? a->q : a->k, /* unused at scale 0 without a solve */
                 .k = a->kf ? a->kf : a->k, .v = a->v, .r = a->rf ? a->rf : a->r, .o = a->o,
                 .rho = a->rho, .lse = a->lse, .den = a->den, .cg_resid = a->resid};
    return f;
}

/* q, k, v from x, each normed as configured and roped unless core_rope (the plain
 * attention core turns q and k itself, AttnArgs.rope_rot) */
static void qkv_forward(Attn *a, const Ops *ops, const real *x, int N, int T) {
    int d = a->dims.d, H = a->H, hd = a->hd;
    real **P = a->P;
    if (a->qkv) {
        /* rows [q | k | v]; RoPE turns q and k as 2H heads of one row */
        linear_forward(ops, a->qkv, x, P[S_WQ], P[S_BQ], N, d, 3 * d);
        if (a->rot && !a->core_rope)
            ops->rope_forward(a->qkv, N, T, 2 * H, hd, 3 * d, a->rot, a->rope_base);
        return;
    }
    if (a->uses_q) linear_forward(ops, a->ql, x, P[S_WQ], P[S_BQ], N, d, d);
    if (a->uses_k) linear_forward(ops, a->kl, x, P[S_WK], P[S_BK], N, d, d);
    linear_forward(ops, a->v, x, P[S_WV], P[S_BV], N, d, d);
    if (a->qk_norm) {
        if (a->uses_q) ops->rmsnorm_forward(a->q, a->rsq, a->ql, P[S_QN], N * H, hd, a->eps);
        if (a->uses_k) ops->rmsnorm_forward(a->k, a->rsk, a->kl, P[S_KN], N * H, hd, a->eps);
    }
    if (a->rot && !a->core_rope) {
        if (a->uses_q) ops->rope_forward(a->q, N, T, H, hd, d, a->rot, a->rope_base);
        if (a->uses_k) ops->rope_forward(a->k, N, T, H, hd, d, a->rot, a->rope_base);
    }
}

static void attn_forward(void *self, const Ops *ops, const real *x, real *y, int B, int T) {
    Attn *a = self;
    int N = B * T, d = a->dims.d, H = a->H, hd = a->hd;
    real **P = a->P;
    a->last_B = B, a->last_T = T;
    if (a->block) {
        AttnBlock k = block_args(a, B, T);
        ops->attn_block_forward(y, x, &k, a->block);
        return;
    }
    qkv_forward(a, ops, x, N, T);
    if (a->learned) {
        linear_forward(ops, a->rl, x, P[S_WR], NULL, N, d, d);
        if (a->probe_norm)
            ops->rmsnorm_rope_forward(a->rn_out, a->rsr, a->rl, P[S_RN], N, T, H, hd,
                                      a->r_roped ? a->rot : 0, a->rope_base, a->eps);
        if (a->probe_gate) {
            linear_forward(ops, a->gl, x, P[S_WG], P[S_BG], N, d, H);
            ops->gate_forward(a->r, a->rn_out, a->gl, N, H, hd);
        }
        if (a->probe_rope && a->rot && !a->core_rope)
            ops->rope_forward(a->r, N, T, H, hd, d, a->rot, a->rope_base);
    }
    if (a->kf) {
        ops->family->feature_map_forward(a->kf, a->k, N * H, hd, hd, a->fmap);
        if (a->rf) ops->family->feature_map_forward(a->rf, a->r, N * H, hd, hd, a->fmap);
    }
    if (a->route == ROUTE_ATTN) {
        AttnArgs args = attn_args(a, B, T);
        ops->attention_forward(&args);
    } else {
        FamArgs f = fam_args(a, B, T);
        if (a->route == ROUTE_RECURRENT) ops->family->linear_recurrent_forward(&f);
        else ops->family->forward(&f);
    }
    linear_forward(ops, y, a->o, P[S_WO], P[S_BO], N, d, d);
}

/* g (gradient w.r.t. phi(x)) -> gradient w.r.t. x, in place through dtmp */
static void fmap_back(Attn *a, const Ops *ops, real *g, const real *x, int N, size_t nd) {
    ops->zero(a->dtmp, nd);
    ops->family->feature_map_backward(a->dtmp, g, x, N * a->H, a->hd, a->hd, a->fmap);
    ops->copy(g, a->dtmp, nd);
}

/* x's gradient from one projection: the mixer's first writes dx (beta 0), the others
 * add to it, so that the model need not zero dx (MixerKind.backward_writes_dx) */
static void proj_backward(const Ops *ops, real *dx, int *dx_set, real *dW, real *db, const real *dy,
                          const real *x, const real *W, int N, int in, int out) {
    linear_backward_beta(ops, dx, *dx_set ? 1 : 0, dW, db, dy, x, W, N, in, out);
    *dx_set = 1;
}

/* the gradients dq, dk, dv (of the roped, normed q, k; with core_rope the core has turned
 * dq and dk back by RoPE already, with core_bias summed the bias gradients) back to x and
 * the weights */
static void qkv_backward(Attn *a, const Ops *ops, const real *x, real *dx, int *dx_set, int N,
                         int T) {
    int d = a->dims.d, H = a->H, hd = a->hd;
    size_t nd = sizeof(real) * (size_t)N * d;
    real **P = a->P, **G = a->G;
    if (a->dqkv) {
        if (a->rot && !a->core_rope)
            ops->rope_backward(a->dqkv, N, T, 2 * H, hd, 3 * d, a->rot, a->rope_base);
        proj_backward(ops, dx, dx_set, G[S_WQ], a->core_bias ? NULL : G[S_BQ], a->dqkv, x, P[S_WQ],
                      N, d, 3 * d);
        return;
    }
    if (a->rot && !a->core_rope) {
        if (a->uses_q) ops->rope_backward(a->dq, N, T, H, hd, d, a->rot, a->rope_base);
        if (a->uses_k) ops->rope_backward(a->dk, N, T, H, hd, d, a->rot, a->rope_base);
    }
    if (a->qk_norm) {
        if (a->uses_q) {
            rmsnorm_backward_write(ops, a->dtmp, G[S_QN], a->dq, a->ql, P[S_QN], a->rsq, N * H, hd);
            ops->copy(a->dq, a->dtmp, nd);
        }
        if (a->uses_k) {
            rmsnorm_backward_write(ops, a->dtmp, G[S_KN], a->dk, a->kl, P[S_KN], a->rsk, N * H, hd);
            ops->copy(a->dk, a->dtmp, nd);
        }
    }
    if (a->uses_q) proj_backward(ops, dx, dx_set, G[S_WQ], G[S_BQ], a->dq, x, P[S_WQ], N, d, d);
    if (a->uses_k) proj_backward(ops, dx, dx_set, G[S_WK], G[S_BK], a->dk, x, P[S_WK], N, d, d);
    proj_backward(ops, dx, dx_set, G[S_WV], G[S_BV], a->dv, x, P[S_WV], N, d, d);
}

static void attn_backward(void *self, const Ops *ops, const real *x, const real *dy, real *dx,
                          int B, int T) {
    Attn *a = self;
    int N = B * T, d = a->dims.d, H = a->H, hd = a->hd;
    real **P = a->P, **G = a->G;
    size_t nd = sizeof(real) * (size_t)N * d;
    if (a->block) { /* writes dx (MixerKind.backward_writes_dx) */
        AttnBlock k = block_args(a, B, T);
        ops->attn_block_backward(dx, dy, &k, a->block);
        return;
    }
    linear_backward_beta(ops, a->dob, 0, G[S_WO], G[S_BO], dy, a->o, P[S_WO], N, d, d);
    int dx_set = 0;
    if (a->route == ROUTE_ATTN) {
        /* the core writes dq, dk, dv, dr (no zeroing pass), turns them back by RoPE and
         * sums the bias gradients (no passes for either) */
        AttnArgs args = attn_args(a, B, T);
        args.dout = a->dob, args.dq = a->dq, args.dk = a->dk, args.dv = a->dv;
        args.dr = a->learned ? a->dr : NULL;
        args.grads_write = 1;
        args.dbias = a->core_bias ? G[S_BQ] : NULL;
        ops->attention_backward(&args);
    } else {
        if (a->dqkv) ops->zero(a->dqkv, 3 * nd);
        else ops->zero(a->dq, nd), ops->zero(a->dk, nd), ops->zero(a->dv, nd);
        if (a->learned) ops->zero(a->dr, nd);
        FamArgs f = fam_args(a, B, T);
        f.dout = a->dob, f.dq = a->dq, f.dk = a->dk, f.dv = a->dv, f.dr = a->dr;
        f.dlog_bw = G[S_LBW];
        if (a->route == ROUTE_RECURRENT) ops->family->linear_recurrent_backward(&f);
        else ops->family->backward(&f);
    }
    if (a->kf) {
        fmap_back(a, ops, a->dk, a->k, N, nd);
        if (a->rf) fmap_back(a, ops, a->dr, a->r, N, nd);
    }
    if (a->learned) {
        if (a->probe_rope && a->rot && !a->core_rope)
            ops->rope_backward(a->dr, N, T, H, hd, d, a->rot, a->rope_base);
        real *dpre = a->dr; /* gradient w.r.t. the normed probe */
        if (a->probe_gate) {
            ops->zero(a->dtmp, nd);
            ops->zero(a->dgl, sizeof(real) * (size_t)N * H);
            ops->gate_backward(a->dtmp, a->dgl, a->dr, a->rn_out, a->gl, N, H, hd);
            proj_backward(ops, dx, &dx_set, G[S_WG], G[S_BG], a->dgl, x, P[S_WG], N, d, H);
            dpre = a->dtmp;
        }
        if (a->probe_norm) {
            real *dl = dpre == a->dr ? a->dtmp : a->dr;
            rmsnorm_backward_write(ops, dl, G[S_RN], dpre, a->rl, P[S_RN], a->rsr, N * H, hd);
            dpre = dl;
        }
        proj_backward(ops, dx, &dx_set, G[S_WR], NULL, dpre, x, P[S_WR], N, d, d);
    }
    qkv_backward(a, ops, x, dx, &dx_set, N, T);
}

static void *attn_bf16_input(void *self) { return ((Attn *)self)->block; }
static real *attn_bf16_output_bias_grad(void *self) { return ((Attn *)self)->G[S_BO]; }

/* CG residual of the last forward pass (parallax_lla.md §2.3): the worst and
 * the mean relative residual |r|/|b| over rows, so a run shows whether
 * mixer.cg_iters is enough. */
static int attn_diagnostics(void *self, const Ops *ops, const char **names, double *values,
                            int max) {
    Attn *a = self;
    if (a->probe != PROBE_SOLVED || a->route != ROUTE_FAMILY || max < 2 || !a->last_B) return 0;
    size_t n = (size_t)a->last_B * a->last_T * a->H;
    real *h = xmalloc(sizeof(real) * n);
    ops->to_host(h, a->resid, sizeof(real) * n);
    double mx = 0, sum = 0;
    for (size_t i = 0; i < n; i++) {
        double v = (double)h[i];
        mx = v > mx || isnan(v) ? v : mx;
        sum += v;
    }
    free(h);
    names[0] = "cg_resid_max", values[0] = mx;
    names[1] = "cg_resid_mean", values[1] = sum / (double)n;
    return 2;
}

static void attn_destroy(void *self, const Ops *ops) {
    Attn *a = self;
    if (a->qkv) a->ql = a->kl = a->v = a->dq = a->dk = a->dv = NULL; /* inside qkv, dqkv */
    real *bufs[] = {a->ql, a->kl, a->v,   a->o,   a->lse, a->rsq, a->rsk, a->dq,  a->dk,
                    a->dv, a->dtmp, a->dob, a->rl, a->obar, a->tbar, a->rsr, a->dr, a->gl,
                    a->dgl, a->den, a->resid, a->rho, a->kf, a->rf, a->qkv, a->dqkv, a->block};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    if (a->qk_norm) {
        if (a->uses_q) ops->release(a->q);
        if (a->uses_k) ops->release(a->k);
    }
    if (a->learned && a->probe_norm && a->rn_out) ops->release(a->rn_out); /* none with block */
    if (a->learned && a->probe_gate) ops->release(a->r);
    free(a);
}

/* The named members: presets of the axes (parallax_lla.md §3.3 table). A key
 * the user sets wins over the preset, so model.mixer=lla mixer.bandwidth=inf
 * is affine_mesa. */
/* points off the plain attention core need the family ops (kernels/ops_family.h) */
static int attn_check_ops(const void *self, const Ops *ops, Err *err) {
    const Attn *a = self;
    if (a->route == ROUTE_ATTN || ops->family) return 0;
    err_set(err, "key 'model.mixer': this point of the attention family (probe=%s, affine=%d, "
                 "learned bandwidth=%d) needs the family ops (kernels/ops_family.h), which backend "
                 "'%s' does not have yet; use device=cpu",
            a->probe == PROBE_SOLVED ? "solved" : a->probe == PROBE_LEARNED ? "learned" : "zero",
            a->affine, a->bw_learned, ops->name);
    return -1;
}

#define FAMILY_MEMBER(ident, nm, hp, pre)                                                     \
    const MixerKind ident = {.name = nm, .help = hp, .preset = pre, .create = attn_create,     \
                             .bind = attn_bind, .forward = attn_forward,                      \
                             .backward = attn_backward, .backward_writes_dx = 1,              \
                             .bf16_input = attn_bf16_input,                                   \
                             .bf16_output_bias_grad = attn_bf16_output_bias_grad,             \
                             .destroy = attn_destroy,                                         \
                             .diagnostics = attn_diagnostics, .check_ops = attn_check_ops}

FAMILY_MEMBER(mixer_family, "family",
              "the attention family: set mixer.bandwidth, mixer.probe, mixer.affine freely "
              "(defaults = softmax)",
              NULL);
FAMILY_MEMBER(mixer_softmax, "softmax", "multi-head causal softmax attention with RoPE (baselines.md §2)",
              "mixer.bandwidth=1 mixer.probe=zero mixer.affine=true");
FAMILY_MEMBER(mixer_parallax, "parallax",
              "softmax attention minus a learned covariance correction, r = W_R x (parallax_lla.md §3)",
              "mixer.bandwidth=1 mixer.probe=learned mixer.affine=true");
FAMILY_MEMBER(mixer_lla, "lla",
              "local linear attention: probe solved per query by CG, (1+eta) kept (parallax_lla.md §1-§2)",
              "mixer.bandwidth=1 mixer.probe=solved mixer.affine=true mixer.boundary_factor=true");
FAMILY_MEMBER(mixer_value_avg, "value_avg", "running mean of v (uniform causal weights)",
              "mixer.bandwidth=inf mixer.probe=zero mixer.affine=true");
FAMILY_MEMBER(mixer_affine_linear_attention, "affine_linear_attention",
              "vbar + C_vk r with uniform weights (parallax_lla.md §3.3)",
              "mixer.bandwidth=inf mixer.probe=learned mixer.affine=true");
FAMILY_MEMBER(mixer_affine_mesa, "affine_mesa",
              "vbar + C_vk (C_kk + lambda I)^-1 (q - kbar), uniform weights (parallax_lla.md §3.3)",
              "mixer.bandwidth=inf mixer.probe=solved mixer.affine=true mixer.boundary_factor=true");
FAMILY_MEMBER(mixer_linear_attention, "linear_attention",
              "sum_j v_j (k_j.r): no intercept, uniform weights; mixer.algorithm=recurrent runs "
              "S_t = S_{t-1} + k v^T",
              "mixer.bandwidth=inf mixer.probe=learned mixer.affine=false");
FAMILY_MEMBER(mixer_mesa, "mesa",
              "sum_j v_j k_j^T (sum_j k_j k_j^T + lambda I)^-1 q, lambda = mixer.ridge (parallax_lla.md §3.3)",
              "mixer.bandwidth=inf mixer.probe=solved mixer.affine=false");
