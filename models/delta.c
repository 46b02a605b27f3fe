/* The delta-rule family: DeltaNet, Gated DeltaNet and Kimi Delta Attention as
 * options of one layer (baselines.md §6-§8, FLA's layers).
 *
 *   q = L2norm(SiLU(conv(x Wq^T))), k = L2norm(SiLU(conv(x Wk^T)))   [N, H*K]  (§1.1, §1.2)
 *   v = SiLU(conv(x Wv^T))                                            [N, H*V]
 *   beta = sigmoid(x Wb^T) (x2 with mixer.neg_eigval)                 [N, H]
 *   log decay g: none (deltanet);
 *     gated_deltanet: g = -exp(A_log) softplus(x Wa^T + dt_bias)      [N, H]    (§7.1)
 *     kda:            g = -exp(A_log) softplus(x Wfd^T Wfu^T + dt_bias) [N, H*K] (§8.1)
 *       (kda safe gate, mixer.gate_lower_bound = lb < 0: g = lb sigmoid(exp(A_log)(a + dt_bias)))
 *   o = DeltaRule(q, k, v, beta, g), scale K^-1/2                      [N, H*V]  (§6.2)
 *   o = RMSNorm_head(o) w  (* SiLU(x Wg^T), or kda: * sigmoid(x Wgd^T Wgu^T + bg))
 *   y = o Wo^T                                                        [N, d]
 * N = B*T, K = d/H (key head dim), V = expand_v*K. No biases except kda's gate.
 * The keys of MesaNet (models/mesanet.c) live in this table too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_delta.h"
#include "layers.h"
#include "mixer.h"

static const KeyDef delta_keys[] = {
    {"mixer.short_conv", KEY_INT, "4", 0, 64, NULL,
     "delta family / mesanet: width of the causal depthwise conv before SiLU on q,k(,v); 0 = SiLU only", 0},
    {"mixer.expand_v", KEY_INT, "1", 1, 8, NULL,
     "delta family: value head dim / key head dim (gated_deltanet presets 2)", 0},
    {"mixer.output_gate", KEY_BOOL, "false", 1, 0, NULL,
     "delta family / mesanet: RMSNorm(o) w * SiLU(x Wg) (kda: low-rank sigmoid gate); "
     "gated_deltanet and kda preset true", 0},
    {"mixer.neg_eigval", KEY_BOOL, "false", 1, 0, NULL,
     "delta family: allow negative eigenvalues, beta = 2 sigmoid (baselines.md §6.1)", 0},
    {"mixer.gate_lower_bound", KEY_FLOAT, "0", -1e3, 0, NULL,
     "kda: 0 = default gate -exp(A_log) softplus(a + dt_bias); < 0 (FLA safe_gate: -5) = "
     "lb sigmoid(exp(A_log) (a + dt_bias)), A_log init 0 (baselines.md §8.1)", 0},
    {"mixer.cg_steps", KEY_INT, "30", 0, 10000, NULL,
     "mesanet: conjugate-gradient steps per solve (§9.3); 0 = exact Cholesky solve", 0},
    {"mixer.cg_eps", KEY_FLOAT, "1e-5", 0, 1, NULL, "mesanet: epsilon in both CG denominators (FLA)", 0},
    {"mixer.lambda_lb", KEY_FLOAT, "0.25", 0, 1e6, NULL,
     "mesanet: lower bound of the ridge lambda = softplus(p) + lb (§9.1)", 0},
    {"mixer.lambda_init", KEY_FLOAT, "1", 1e-9, 1e6, NULL,
     "mesanet: initial lambda, must exceed mixer.lambda_lb", 0},
    {"mixer.mesa_gates", KEY_BOOL, "true", 1, 0, NULL,
     "mesanet: forget gate and input strength beta; false = gamma = beta = 1 (the family's mesa)", 0},
};
const KeyTable delta_key_table = KEYTABLE("mixer (delta rule, MesaNet)", delta_keys);

enum { KIND_DELTANET, KIND_GDN, KIND_KDA };
enum { WQ, WK, WV, CQ, CK, CV, WB, WA, ALOG, DTB, WFD, WFU, ONORM, WG, WGD, WGU, BG, WO, NP };

typedef struct {
    ModelDims dims;
    int kind, H, K, V, W, ogate, neg, Dg;
    real lb; /* kda safe-gate lower bound, 0 = default gate */
    int p[NP];
    real *P[NP], *G[NP];
    /* activations: l = after the projection, p = conv pre-activation, c = after SiLU */
    real *ql, *qp, *qc, *q, *rq, *kl, *kp, *kc, *k, *rk, *vl, *vp, *v;
    real *bl, *beta, *al, *g, *fl, *o, *on, *orstd, *zl, *zlow, *y2, *ckpt;
    /* gradients */
    real *dy2, *don, *dO, *dzl, *dzlow, *gq, *gk, *gv, *gbeta, *gg, *dbl, *dal, *dfl, *t1, *t2;
} Delta;

/* dt bias (baselines.md §1.4): dt ~ exp(U(log 0.001, log 0.1)) >= 1e-4, bias = softplus^-1(dt) */
static void init_dt_bias(real *p, size_t n, double (*u01)(void *), void *rng) {
    for (size_t i = 0; i < n; i++) {
        double dt = exp(log(0.001) + u01(rng) * (log(0.1) - log(0.001)));
        if (dt < 1e-4) dt = 1e-4;
        p[i] = (real)(dt + log(-expm1(-dt)));
    }
}

static void init_a_log_gdn(real *p, size_t n, double (*u01)(void *), void *rng) {
    for (size_t i = 0; i < n; i++) p[i] = (real)log(16.0 * (1.0 - u01(rng))); /* log U(0,16] */
}

static void init_a_log_kda(real *p, size_t n, double (*u01)(void *), void *rng) {
    for (size_t i = 0; i < n; i++) p[i] = (real)log(1.0 + 15.0 * u01(rng)); /* log U(1,16) */
}

static void *delta_create_kind(const Config *cfg, const ModelDims *dims, ParamBuilder *pb,
                               Err *err, int kind) {
    int d = dims->d, H = dims->heads;
    if (d % H != 0) {
        err_set(err, "key 'model.heads': %d does not divide model.d_model=%d", H, d);
        return NULL;
    }
    double lb = cfg_float(cfg, "mixer.gate_lower_bound");
    if (lb != 0 && kind != KIND_KDA) {
        err_set(err, "key 'mixer.gate_lower_bound': %g applies to model.mixer=kda only (0 here)", lb);
        return NULL;
    }
    Delta *a = xcalloc(1, sizeof *a);
    a->dims = *dims;
    a->kind = kind;
    a->lb = (real)lb;
    a->H = H, a->K = d / H, a->V = a->K * (int)cfg_int(cfg, "mixer.expand_v");
    a->W = (int)cfg_int(cfg, "mixer.short_conv");
    a->ogate = cfg_bool(cfg, "mixer.output_gate");
    a->neg = cfg_bool(cfg, "mixer.neg_eigval");
    a->Dg = kind == KIND_KDA ? a->K : 1;
    int HK = H * a->K, HV = H * a->V, V = a->V, W = a->W;
    for (int i = 0; i < NP; i++) a->p[i] = -1;
    a->p[WQ] = pb_linear(pb, dims, "wq", HK, d, PARAM_MUON);
    a->p[WK] = pb_linear(pb, dims, "wk", HK, d, PARAM_MUON);
    a->p[WV] = pb_linear(pb, dims, "wv", HV, d, PARAM_MUON);
    if (W) { /* depthwise conv [C,1,W]: PyTorch default U(+-1/sqrt(W)), AdamW (§10.3) */
        a->p[CQ] = pb_add(pb, "conv_q", HK, W, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
        a->p[CK] = pb_add(pb, "conv_k", HK, W, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
        a->p[CV] = pb_add(pb, "conv_v", HV, W, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
    }
    a->p[WB] = pb_linear(pb, dims, "wb", H, d, PARAM_MUON);
    if (kind == KIND_GDN) a->p[WA] = pb_linear(pb, dims, "wa", H, d, PARAM_MUON);
    if (kind == KIND_KDA) {
        a->p[WFD] = pb_linear(pb, dims, "wf_down", V, d, PARAM_MUON);
        a->p[WFU] = pb_linear(pb, dims, "wf_up", HK, V, PARAM_MUON);
    }
    if (kind != KIND_DELTANET) {
        a->p[ALOG] = pb_add(pb, "A_log", H, 0, PARAM_NO_DECAY, INIT_CUSTOM, 0);
        pb->specs[a->p[ALOG]].init_fn = kind == KIND_GDN ? init_a_log_gdn : init_a_log_kda;
        if (a->lb < 0) pb->specs[a->p[ALOG]].init = INIT_ZERO; /* safe gate: A_log = 0 */
        a->p[DTB] = pb_add(pb, "dt_bias", H * a->Dg, 0, PARAM_NO_DECAY, INIT_CUSTOM, 0);
        pb->specs[a->p[DTB]].init_fn = init_dt_bias;
    }
    a->p[ONORM] = pb_add(pb, "o_norm", V, 0, 0, INIT_CONST, 1);
    if (a->ogate && kind == KIND_KDA) {
        a->p[WGD] = pb_linear(pb, dims, "wg_down", V, d, PARAM_MUON);
        a->p[WGU] = pb_linear(pb, dims, "wg_up", HV, V, PARAM_MUON);
        a->p[BG] = pb_add(pb, "bg", HV, 0, 0, INIT_ZERO, 0);
    } else if (a->ogate) {
        a->p[WG] = pb_linear(pb, dims, "wg", HV, d, PARAM_MUON);
    }
    a->p[WO] = pb_linear(pb, dims, "wo", d, HV, PARAM_MUON);
    return a;
}

static void *deltanet_create(const Config *c, const ModelDims *d, ParamBuilder *pb, Err *e) {
    return delta_create_kind(c, d, pb, e, KIND_DELTANET);
}
static void *gdn_create(const Config *c, const ModelDims *d, ParamBuilder *pb, Err *e) {
    return delta_create_kind(c, d, pb, e, KIND_GDN);
}
static void *kda_create(const Config *c, const ModelDims *d, ParamBuilder *pb, Err *e) {
    return delta_create_kind(c, d, pb, e, KIND_KDA);
}

static void delta_bind(void *self, const Ops *ops, const ParamSpec *specs, real *params,
                       real *grads) {
    Delta *a = self;
    for (int i = 0; i < NP; i++) {
        a->P[i] = a->p[i] >= 0 ? params + specs[a->p[i]].offset : NULL;
        a->G[i] = a->p[i] >= 0 ? grads + specs[a->p[i]].offset : NULL;
    }
    size_t N = (size_t)a->dims.B * a->dims.T, H = (size_t)a->H;
    size_t HK = H * a->K, HV = H * a->V, HG = H * a->Dg, M = HK > HV ? HK : HV;
#define A(n) ops->alloc(sizeof(real) * (n))
    a->ql = A(N * HK), a->qp = A(N * HK), a->qc = A(N * HK), a->q = A(N * HK), a->rq = A(N * H);
    a->kl = A(N * HK), a->kp = A(N * HK), a->kc = A(N * HK), a->k = A(N * HK), a->rk = A(N * H);
    a->vl = A(N * HV), a->vp = A(N * HV), a->v = A(N * HV);
    a->bl = A(N * H), a->beta = A(N * H), a->dbl = A(N * H), a->gbeta = A(N * H);
    if (a->kind != KIND_DELTANET) a->al = A(N * HG), a->g = A(N * HG), a->gg = A(N * HG), a->dal = A(N * HG);
    if (a->kind == KIND_KDA) a->fl = A(N * a->V), a->dfl = A(N * a->V);
    a->o = A(N * HV), a->on = A(N * HV), a->orstd = A(N * H), a->y2 = A(N * HV);
    if (a->ogate) a->zl = A(N * HV), a->dzl = A(N * HV);
    if (a->ogate && a->kind == KIND_KDA) a->zlow = A(N * a->V), a->dzlow = A(N * a->V);
    a->ckpt = A(delta_ckpt_len(a->dims.B, a->H, a->dims.T, (size_t)a->K * a->V));
    a->dy2 = A(N * HV), a->don = A(N * HV), a->dO = A(N * HV);
    a->gq = A(N * HK), a->gk = A(N * HK), a->gv = A(N * HV), a->t1 = A(N * M), a->t2 = A(N * M);
#undef A
}

static DeltaArgs delta_args(const Delta *a, int B, int T) {
    DeltaArgs r = {.B = B, .T = T, .H = a->H, .K = a->K, .V = a->V,
                   .gate = a->kind == KIND_DELTANET ? DELTA_GATE_NONE
                           : a->kind == KIND_GDN    ? DELTA_GATE_SCALAR
                                                    : DELTA_GATE_CHANNEL,
                   .scale = (real)(1.0 / sqrt((double)a->K)),
                   .q = a->q, .k = a->k, .v = a->v, .beta = a->beta, .g = a->g, .o = a->o,
                   .ckpt = a->ckpt};
    return r;
}

static void delta_forward(void *self, const Ops *ops, const real *x, real *y, int B, int T) {
    Delta *a = self;
    const DeltaOps *D = ops->delta;
    int N = B * T, d = a->dims.d, H = a->H, K = a->K, V = a->V, HK = H * K, HV = H * V, W = a->W;
    real **P = a->P;
    linear_forward(ops, a->ql, x, P[WQ], NULL, N, d, HK);
    ops->conv_forward(a->qc, a->qp, a->ql, P[CQ], NULL, B, T, HK, W, 1);
    D->l2norm_forward(a->q, a->rq, a->qc, N * H, K, (real)1e-6);
    linear_forward(ops, a->kl, x, P[WK], NULL, N, d, HK);
    ops->conv_forward(a->kc, a->kp, a->kl, P[CK], NULL, B, T, HK, W, 1);
    D->l2norm_forward(a->k, a->rk, a->kc, N * H, K, (real)1e-6);
    linear_forward(ops, a->vl, x, P[WV], NULL, N, d, HV);
    ops->conv_forward(a->v, a->vp, a->vl, P[CV], NULL, B, T, HV, W, 1);
    linear_forward(ops, a->bl, x, P[WB], NULL, N, d, H);
    D->map_forward(a->beta, a->bl, (long)N * H, DELTA_MAP_SIGMOID, a->neg ? 2 : 1, 0);
    if (a->kind == KIND_GDN) {
        linear_forward(ops, a->al, x, P[WA], NULL, N, d, H);
    } else if (a->kind == KIND_KDA) {
        linear_forward(ops, a->fl, x, P[WFD], NULL, N, d, V);
        linear_forward(ops, a->al, a->fl, P[WFU], NULL, N, V, HK);
    }
    if (a->kind != KIND_DELTANET) D->decay_forward(a->g, a->al, P[ALOG], P[DTB], N, H, a->Dg, a->lb);
    DeltaArgs args = delta_args(a, B, T);
    D->delta_forward(&args);
    ops->rmsnorm_forward(a->on, a->orstd, a->o, P[ONORM], N * H, V, a->dims.norm_eps);
    real *yo = a->on;
    if (a->ogate) {
        if (a->kind == KIND_KDA) {
            linear_forward(ops, a->zlow, x, P[WGD], NULL, N, d, V);
            linear_forward(ops, a->zl, a->zlow, P[WGU], P[BG], N, V, HV);
        } else {
            linear_forward(ops, a->zl, x, P[WG], NULL, N, d, HV);
        }
        D->gate_mul_forward(a->y2, a->on, a->zl, (long)N * HV,
                            a->kind == KIND_KDA ? DELTA_ACT_SIGMOID : DELTA_ACT_SILU);
        yo = a->y2;
    }
    linear_forward(ops, y, yo, P[WO], NULL, N, HV, d);
}

static void delta_backward(void *self, const Ops *ops, const real *x, const real *dy, real *dx,
                           int B, int T) {
    Delta *a = self;
    const DeltaOps *D = ops->delta;
    int N = B * T, d = a->dims.d, H = a->H, K = a->K, V = a->V, HK = H * K, HV = H * V, W = a->W;
    real **P = a->P, **G = a->G;
    size_t r = sizeof(real);
    ops->zero(a->dy2, r * N * HV);
    linear_backward(ops, a->dy2, G[WO], NULL, dy, a->ogate ? a->y2 : a->on, P[WO], N, HV, d);
    real *don = a->dy2;
    if (a->ogate) {
        ops->zero(a->don, r * N * HV), ops->zero(a->dzl, r * N * HV);
        D->gate_mul_backward(a->don, a->dzl, a->dy2, a->on, a->zl, (long)N * HV,
                             a->kind == KIND_KDA ? DELTA_ACT_SIGMOID : DELTA_ACT_SILU);
        if (a->kind == KIND_KDA) {
            ops->zero(a->dzlow, r * N * V);
            linear_backward(ops, a->dzlow, G[WGU], G[BG], a->dzl, a->zlow, P[WGU], N, V, HV);
            linear_backward(ops, dx, G[WGD], NULL, a->dzlow, x, P[WGD], N, d, V);
        } else {
            linear_backward(ops, dx, G[WG], NULL, a->dzl, x, P[WG], N, d, HV);
        }
        don = a->don;
    }
    rmsnorm_backward_write(ops, a->dO, G[ONORM], don, a->o, P[ONORM], a->orstd, N * H, V);
    ops->zero(a->gq, r * N * HK), ops->zero(a->gk, r * N * HK), ops->zero(a->gv, r * N * HV);
    ops->zero(a->gbeta, r * N * H);
    if (a->gg) ops->zero(a->gg, r * N * H * a->Dg);
    DeltaArgs args = delta_args(a, B, T);
    args.dout = a->dO, args.dq = a->gq, args.dk = a->gk, args.dv = a->gv;
    args.dbeta = a->gbeta, args.dg = a->gg;
    D->delta_backward(&args);
    /* gates */
    ops->zero(a->dbl, r * N * H);
    D->map_backward(a->dbl, a->gbeta, a->bl, (long)N * H, DELTA_MAP_SIGMOID, a->neg ? 2 : 1);
    linear_backward(ops, dx, G[WB], NULL, a->dbl, x, P[WB], N, d, H);
    if (a->kind != KIND_DELTANET) {
        ops->zero(a->dal, r * N * H * a->Dg);
        D->decay_backward(a->dal, G[ALOG], G[DTB], a->gg, a->al, P[ALOG], P[DTB], N, H, a->Dg,
                          a->lb);
        if (a->kind == KIND_GDN) {
            linear_backward(ops, dx, G[WA], NULL, a->dal, x, P[WA], N, d, H);
        } else {
            ops->zero(a->dfl, r * N * V);
            linear_backward(ops, a->dfl, G[WFU], NULL, a->dal, a->fl, P[WFU], N, V, HK);
            linear_backward(ops, dx, G[WFD], NULL, a->dfl, x, P[WFD], N, d, V);
        }
    }
    /* q, k: L2 norm, conv + SiLU, projection; v: conv + SiLU, projection */
    const real *gin[2] = {a->gq, a->gk}, *nrm[2] = {a->q, a->k}, *rin[2] = {a->rq, a->rk};
    const real *lin[2] = {a->ql, a->kl}, *pre[2] = {a->qp, a->kp};
    int cw[2] = {CQ, CK}, pw[2] = {WQ, WK};
    for (int s = 0; s < 2; s++) {
        ops->zero(a->t1, r * N * HK), ops->zero(a->t2, r * N * HK);
        D->l2norm_backward(a->t1, gin[s], nrm[s], rin[s], N * H, K);
        ops->conv_backward(a->t2, G[cw[s]], NULL, a->t1, lin[s], P[cw[s]], pre[s], B, T, HK, W, 1);
        linear_backward(ops, dx, G[pw[s]], NULL, a->t2, x, P[pw[s]], N, d, HK);
    }
    ops->zero(a->t2, r * N * HV);
    ops->conv_backward(a->t2, G[CV], NULL, a->gv, a->vl, P[CV], a->vp, B, T, HV, W, 1);
    linear_backward(ops, dx, G[WV], NULL, a->t2, x, P[WV], N, d, HV);
}

static void delta_destroy(void *self, const Ops *ops) {
    Delta *a = self;
    real *bufs[] = {a->ql, a->qp, a->qc, a->q, a->rq, a->kl, a->kp, a->kc, a->k, a->rk,
                    a->vl, a->vp, a->v, a->bl, a->beta, a->al, a->g, a->fl, a->o, a->on,
                    a->orstd, a->zl, a->zlow, a->y2, a->ckpt, a->dy2, a->don, a->dO, a->dzl,
                    a->dzlow, a->gq, a->gk, a->gv, a->gbeta, a->gg, a->dbl, a->dal, a->dfl,
                    a->t1, a->t2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    free(a);
}

/* recurrent state per sequence and layer: H matrices K x V */
static size_t delta_state_size(const Config *cfg, const ModelDims *dims) {
    size_t K = (size_t)(dims->d / dims->heads);
    return (size_t)dims->heads * K * K * (size_t)cfg_int(cfg, "mixer.expand_v");
}

/* the backend must have the delta op group (kernels/ops_delta.h) */
static int delta_check_ops(const void *self, const Ops *ops, Err *err) {
    (void)self;
    if (ops->delta) return 0;
    err_set(err, "key 'model.mixer': the delta rule needs the delta ops (kernels/ops_delta.h), which backend "
                 "'%s' does not have yet; use device=cpu", ops->name);
    return -1;
}

const MixerKind mixer_deltanet = {
    .name = "deltanet",
    .help = "DeltaNet: delta rule, short conv, L2-normalised q/k, beta = sigmoid (baselines.md §6)",
    .preset = "mixer.expand_v=1 mixer.output_gate=false",
    .create = deltanet_create,
    .bind = delta_bind,
    .forward = delta_forward,
    .backward = delta_backward,
    .destroy = delta_destroy,
    .state_size = delta_state_size,
    .check_ops = delta_check_ops,
};

const MixerKind mixer_gated_deltanet = {
    .name = "gated_deltanet",
    .help = "Gated DeltaNet: delta rule with a scalar decay per head, SiLU output gate (§7)",
    .preset = "mixer.expand_v=2 mixer.output_gate=true",
    .create = gdn_create,
    .bind = delta_bind,
    .forward = delta_forward,
    .backward = delta_backward,
    .destroy = delta_destroy,
    .state_size = delta_state_size,
    .check_ops = delta_check_ops,
};

const MixerKind mixer_kda = {
    .name = "kda",
    .help = "Kimi Delta Attention: per-channel low-rank decay, low-rank sigmoid output gate (§8)",
    .preset = "mixer.expand_v=1 mixer.output_gate=true",
    .create = kda_create,
    .bind = delta_bind,
    .forward = delta_forward,
    .backward = delta_backward,
    .destroy = delta_destroy,
    .state_size = delta_state_size,
    .check_ops = delta_check_ops,
};
