/* Multi-head causal softmax attention and Parallax (parallax_lla.md §3).
 *
 *   q = x Wq^T + bq, k = x Wk^T + bk, v = x Wv^T + bv       [B*T, H*hd]
 *   (optional per-head RMSNorm on q and k)
 *   Parallax probe: r = RMSNorm_head(x Wr^T) * sigmoid(x wg + bg)?   (§3.2)
 *   RoPE on q, k and (option) r with the same angles (§3.2)
 *   o = attention core (kernels: softmax when there is no probe)
 *   y = o Wo^T + bo
 * The scale 1/sqrt(hd) multiplies q.k only; r.k is raw (§3.2). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
};
const KeyTable attention_key_table = KEYTABLE("mixer (attention)", attention_keys);

typedef struct {
    ModelDims dims;
    int H, hd, rot, window, parallax, qkv_bias, qk_norm, probe_norm, probe_rope, probe_gate;
    real rope_base, eps;
    /* parameter indices (-1 when absent) */
    int wq, wk, wv, wo, bq, bk, bv, bo, qn, kn, wr, rn, wg, bg;
    real *P[14], *G[14]; /* pointers by slot, filled by bind */
    /* activations [N, d] unless noted */
    real *ql, *kl, *q, *k, *v, *rl, *rn_out, *r, *gl /*[N,H]*/, *o, *obar, *lse, *tbar;
    real *rsq, *rsk, *rsr; /* [N*H] */
    real *dq, *dk, *dv, *dr, *dtmp, *dgl, *dob;
} Attn;

enum { S_WQ, S_WK, S_WV, S_WO, S_BQ, S_BK, S_BV, S_BO, S_QN, S_KN, S_WR, S_RN, S_WG, S_BG };

static void *attn_create_common(const Config *cfg, const ModelDims *dims, ParamBuilder *pb,
                                Err *err, int parallax) {
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
    a->rope_base = (real)cfg_float(cfg, "mixer.rope_base");
    a->window = (int)cfg_int(cfg, "mixer.window");
    a->qkv_bias = cfg_bool(cfg, "mixer.qkv_bias");
    a->qk_norm = cfg_bool(cfg, "mixer.qk_norm");
    a->parallax = parallax;
    a->probe_norm = parallax && cfg_bool(cfg, "mixer.probe_norm");
    a->probe_rope = parallax && cfg_bool(cfg, "mixer.probe_rope");
    a->probe_gate = parallax && cfg_bool(cfg, "mixer.probe_gate");
    a->eps = dims->norm_eps;
    int d = dims->d;
    a->wq = pb_linear(pb, dims, "wq", d, d, PARAM_MUON);
    a->wk = pb_linear(pb, dims, "wk", d, d, PARAM_MUON);
    a->wv = pb_linear(pb, dims, "wv", d, d, PARAM_MUON);
    a->wo = pb_linear(pb, dims, "wo", d, d, PARAM_MUON);
    a->bq = a->bk = a->bv = a->bo = a->qn = a->kn = a->wr = a->rn = a->wg = a->bg = -1;
    if (a->qkv_bias) {
        a->bq = pb_add(pb, "bq", d, 0, 0, INIT_ZERO, 0);
        a->bk = pb_add(pb, "bk", d, 0, 0, INIT_ZERO, 0);
        a->bv = pb_add(pb, "bv", d, 0, 0, INIT_ZERO, 0);
        a->bo = pb_add(pb, "bo", d, 0, 0, INIT_ZERO, 0);
    }
    if (a->qk_norm) {
        a->qn = pb_add(pb, "q_norm", a->hd, 0, 0, INIT_CONST, 1);
        a->kn = pb_add(pb, "k_norm", a->hd, 0, 0, INIT_CONST, 1);
    }
    if (parallax) {
        if (strcmp(cfg_str(cfg, "mixer.probe_init"), "zero") == 0)
            a->wr = pb_add(pb, "wr", d, d, PARAM_MUON, INIT_ZERO, 0);
        else a->wr = pb_linear(pb, dims, "wr", d, d, PARAM_MUON);
        if (a->probe_norm) a->rn = pb_add(pb, "r_norm", a->hd, 0, 0, INIT_CONST, 1);
        if (a->probe_gate) {
            a->wg = pb_linear(pb, dims, "wg", a->H, d, PARAM_MUON);
            a->bg = pb_add(pb, "bg", a->H, 0, 0, INIT_ZERO, 0);
        }
    }
    return a;
}

static void *softmax_create(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err) {
    return attn_create_common(cfg, dims, pb, err, 0);
}

static void *parallax_create(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err) {
    return attn_create_common(cfg, dims, pb, err, 1);
}

static void attn_bind(void *self, const Ops *ops, const ParamSpec *specs, real *params,
                      real *grads) {
    Attn *a = self;
    int idx[14] = {a->wq, a->wk, a->wv, a->wo, a->bq, a->bk, a->bv, a->bo,
                   a->qn, a->kn, a->wr, a->rn, a->wg, a->bg};
    for (int s = 0; s < 14; s++) {
        a->P[s] = idx[s] >= 0 ? params + specs[idx[s]].offset : NULL;
        a->G[s] = idx[s] >= 0 ? grads + specs[idx[s]].offset : NULL;
    }
    size_t N = (size_t)a->dims.B * a->dims.T, d = (size_t)a->dims.d, H = (size_t)a->H;
    size_t nd = sizeof(real) * N * d, nh = sizeof(real) * N * H;
    a->ql = ops->alloc(nd), a->kl = ops->alloc(nd), a->v = ops->alloc(nd);
    a->q = a->qk_norm ? ops->alloc(nd) : a->ql;
    a->k = a->qk_norm ? ops->alloc(nd) : a->kl;
    a->o = ops->alloc(nd), a->lse = ops->alloc(nh);
    a->rsq = ops->alloc(nh), a->rsk = ops->alloc(nh);
    a->dq = ops->alloc(nd), a->dk = ops->alloc(nd), a->dv = ops->alloc(nd), a->dtmp = ops->alloc(nd);
    a->dob = ops->alloc(nd);
    if (a->parallax) {
        a->rl = ops->alloc(nd), a->obar = ops->alloc(nd), a->tbar = ops->alloc(nh);
        a->rn_out = a->probe_norm ? ops->alloc(nd) : a->rl;
        a->r = a->probe_gate ? ops->alloc(nd) : a->rn_out;
        a->rsr = ops->alloc(nh);
        a->dr = ops->alloc(nd);
        if (a->probe_gate) a->gl = ops->alloc(nh), a->dgl = ops->alloc(nh);
    }
}

static AttnArgs attn_args(const Attn *a, int B, int T) {
    AttnArgs args = {.B = B, .T = T, .H = a->H, .hd = a->hd, .ld_in = a->dims.d,
                     .ld_out = a->dims.d, .scale = (real)(1.0 / sqrt((double)a->hd)),
                     .window = a->window, .q = a->q, .k = a->k, .v = a->v,
                     .r = a->parallax ? a->r : NULL, .o = a->o, .obar = a->obar, .lse = a->lse,
                     .tbar = a->tbar};
    return args;
}

static void attn_forward(void *self, const Ops *ops, const real *x, real *y, int B, int T) {
    Attn *a = self;
    int N = B * T, d = a->dims.d, H = a->H, hd = a->hd;
    real **P = a->P;
    linear_forward(ops, a->ql, x, P[S_WQ], P[S_BQ], N, d, d);
    linear_forward(ops, a->kl, x, P[S_WK], P[S_BK], N, d, d);
    linear_forward(ops, a->v, x, P[S_WV], P[S_BV], N, d, d);
    if (a->qk_norm) {
        ops->rmsnorm_forward(a->q, a->rsq, a->ql, P[S_QN], N * H, hd, a->eps);
        ops->rmsnorm_forward(a->k, a->rsk, a->kl, P[S_KN], N * H, hd, a->eps);
    }
    if (a->rot) {
        ops->rope_forward(a->q, N, T, H, hd, d, a->rot, a->rope_base);
        ops->rope_forward(a->k, N, T, H, hd, d, a->rot, a->rope_base);
    }
    if (a->parallax) {
        linear_forward(ops, a->rl, x, P[S_WR], NULL, N, d, d);
        if (a->probe_norm) ops->rmsnorm_forward(a->rn_out, a->rsr, a->rl, P[S_RN], N * H, hd, a->eps);
        if (a->probe_gate) {
            linear_forward(ops, a->gl, x, P[S_WG], P[S_BG], N, d, H);
            ops->gate_forward(a->r, a->rn_out, a->gl, N, H, hd);
        }
        if (a->probe_rope && a->rot) ops->rope_forward(a->r, N, T, H, hd, d, a->rot, a->rope_base);
    }
    AttnArgs args = attn_args(a, B, T);
    ops->attention_forward(&args);
    linear_forward(ops, y, a->o, P[S_WO], P[S_BO], N, d, d);
}

static void attn_backward(void *self, const Ops *ops, const real *x, const real *dy, real *dx,
                          int B, int T) {
    Attn *a = self;
    int N = B * T, d = a->dims.d, H = a->H, hd = a->hd;
    real **P = a->P, **G = a->G;
    size_t nd = sizeof(real) * (size_t)N * d;
    ops->zero(a->dob, nd);
    linear_backward(ops, a->dob, G[S_WO], G[S_BO], dy, a->o, P[S_WO], N, d, d);
    ops->zero(a->dq, nd), ops->zero(a->dk, nd), ops->zero(a->dv, nd);
    if (a->parallax) ops->zero(a->dr, nd);
    AttnArgs args = attn_args(a, B, T);
    args.dout = a->dob, args.dq = a->dq, args.dk = a->dk, args.dv = a->dv;
    args.dr = a->parallax ? a->dr : NULL;
    ops->attention_backward(&args);
    if (a->parallax) {
        if (a->probe_rope && a->rot) ops->rope_backward(a->dr, N, T, H, hd, d, a->rot, a->rope_base);
        real *dpre = a->dr; /* gradient w.r.t. the normed probe */
        if (a->probe_gate) {
            ops->zero(a->dtmp, nd);
            ops->zero(a->dgl, sizeof(real) * (size_t)N * H);
            ops->gate_backward(a->dtmp, a->dgl, a->dr, a->rn_out, a->gl, N, H, hd);
            linear_backward(ops, dx, G[S_WG], G[S_BG], a->dgl, x, P[S_WG], N, d, H);
            dpre = a->dtmp;
        }
        if (a->probe_norm) {
            real *dl = dpre == a->dr ? a->dtmp : a->dr;
            ops->zero(dl, nd);
            ops->rmsnorm_backward(dl, G[S_RN], dpre, a->rl, P[S_RN], a->rsr, N * H, hd);
            dpre = dl;
        }
        linear_backward(ops, dx, G[S_WR], NULL, dpre, x, P[S_WR], N, d, d);
    }
    if (a->rot) {
        ops->rope_backward(a->dq, N, T, H, hd, d, a->rot, a->rope_base);
        ops->rope_backward(a->dk, N, T, H, hd, d, a->rot, a->rope_base);
    }
    real *dql = a->dq, *dkl = a->dk;
    if (a->qk_norm) {
        ops->zero(a->dtmp, nd);
        ops->rmsnorm_backward(a->dtmp, G[S_QN], a->dq, a->ql, P[S_QN], a->rsq, N * H, hd);
        ops->copy(a->dq, a->dtmp, nd);
        ops->zero(a->dtmp, nd);
        ops->rmsnorm_backward(a->dtmp, G[S_KN], a->dk, a->kl, P[S_KN], a->rsk, N * H, hd);
        ops->copy(a->dk, a->dtmp, nd);
    }
    linear_backward(ops, dx, G[S_WQ], G[S_BQ], dql, x, P[S_WQ], N, d, d);
    linear_backward(ops, dx, G[S_WK], G[S_BK], dkl, x, P[S_WK], N, d, d);
    linear_backward(ops, dx, G[S_WV], G[S_BV], a->dv, x, P[S_WV], N, d, d);
}

static void attn_destroy(void *self, const Ops *ops) {
    Attn *a = self;
    real *bufs[] = {a->ql, a->kl, a->v, a->o, a->lse, a->rsq, a->rsk, a->dq, a->dk, a->dv,
                    a->dtmp, a->dob, a->rl, a->obar, a->tbar, a->rsr, a->dr, a->gl, a->dgl};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    if (a->qk_norm) ops->release(a->q), ops->release(a->k);
    if (a->parallax && a->probe_norm) ops->release(a->rn_out);
    if (a->parallax && a->probe_gate) ops->release(a->r);
    free(a);
}

const MixerKind mixer_softmax = {
    .name = "softmax",
    .help = "multi-head causal softmax attention with RoPE (baselines.md §2)",
    .create = softmax_create,
    .bind = attn_bind,
    .forward = attn_forward,
    .backward = attn_backward,
    .destroy = attn_destroy,
};

const MixerKind mixer_parallax = {
    .name = "parallax",
    .help = "softmax attention minus a learned covariance correction, r = W_R x (parallax_lla.md §3)",
    .create = parallax_create,
    .bind = attn_bind,
    .forward = attn_forward,
    .backward = attn_backward,
    .destroy = attn_destroy,
};
