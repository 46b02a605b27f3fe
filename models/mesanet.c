/* MesaNet: the Mesa layer, a per-step ridge regression solved by conjugate
 * gradients (baselines.md §9, FLA's MesaNet layer).
 *
 *   q = L2norm(SiLU(conv(x Wq^T))), k = L2norm(SiLU(conv(x Wk^T)))  [N, H*K]  (§9.1)
 *   v = x Wv^T (no conv, no activation)                              [N, H*K]
 *   beta = sigmoid(x Wb^T + bb), g = logsigmoid(x Wa^T + ba)         [N, H]
 *   lambda = softplus(lambda_p) + mixer.lambda_lb                    [H, K]
 *   o_t = Hkv_t^T (Hkk_t + Diag(lambda))^{-1} q_t                    (§9.2, no 1/sqrt(K))
 *   o = RMSNorm_head(o) w (* SiLU(x Wg^T) with mixer.output_gate)
 *   y = o Wo^T
 * N = B*T, K = d/H (d_k = d_v). mixer.mesa_gates=false drops beta and g
 * (gamma = beta = 1): the core is then the family's ridge-regression `mesa`,
 * o_t = sum v k^T (sum k k^T + Lambda)^{-1} q_t. Keys: models/delta.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_delta.h"
#include "layers.h"
#include "mixer.h"

enum { WQ, WK, WV, CQ, CK, WB, BB, WA, BA, LAM, ONORM, WG, WO, NP };

typedef struct {
    ModelDims dims;
    int H, K, W, ogate, gates, cg_steps;
    real cg_eps, lam_lb;
    int p[NP];
    real *P[NP], *G[NP];
    real *ql, *qp, *qc, *q, *rq, *kl, *kp, *kc, *k, *rk, *v;
    real *bl, *beta, *al, *g, *lam, *o, *qstar, *on, *orstd, *zl, *y2, *ckpt;
    real *dy2, *don, *dO, *dzl, *gq, *gk, *gv, *gbeta, *gg, *glam, *dbl, *dal, *t1, *t2;
} Mesa;

static void *mesa_create(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err) {
    int d = dims->d, H = dims->heads;
    if (d % H != 0) {
        err_set(err, "key 'model.heads': %d does not divide model.d_model=%d", H, d);
        return NULL;
    }
    double lb = cfg_float(cfg, "mixer.lambda_lb"), li = cfg_float(cfg, "mixer.lambda_init");
    if (!(li > lb)) {
        err_set(err, "key 'mixer.lambda_init': %g must exceed mixer.lambda_lb=%g "
                "(lambda = softplus(p) + lb > lb)", li, lb);
        return NULL;
    }
    Mesa *a = xcalloc(1, sizeof *a);
    a->dims = *dims;
    a->H = H, a->K = d / H;
    a->W = (int)cfg_int(cfg, "mixer.short_conv");
    a->ogate = cfg_bool(cfg, "mixer.output_gate");
    a->gates = cfg_bool(cfg, "mixer.mesa_gates");
    a->cg_steps = (int)cfg_int(cfg, "mixer.cg_steps");
    a->cg_eps = (real)cfg_float(cfg, "mixer.cg_eps");
    a->lam_lb = (real)lb;
    int W = a->W;
    for (int i = 0; i < NP; i++) a->p[i] = -1;
    a->p[WQ] = pb_linear(pb, dims, "wq", d, d, PARAM_MUON);
    a->p[WK] = pb_linear(pb, dims, "wk", d, d, PARAM_MUON);
    a->p[WV] = pb_linear(pb, dims, "wv", d, d, PARAM_MUON);
    if (W) {
        a->p[CQ] = pb_add(pb, "conv_q", d, W, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
        a->p[CK] = pb_add(pb, "conv_k", d, W, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
    }
    if (a->gates) {
        a->p[WB] = pb_linear(pb, dims, "wb", H, d, PARAM_MUON);
        a->p[BB] = pb_add(pb, "bb", H, 0, 0, INIT_ZERO, 0);
        a->p[WA] = pb_linear(pb, dims, "wa", H, d, PARAM_MUON);
        a->p[BA] = pb_add(pb, "ba", H, 0, 0, INIT_ZERO, 0);
    }
    /* lambda_p = softplus^-1(lambda_init - lb), so that lambda starts at lambda_init */
    double t = li - lb;
    a->p[LAM] = pb_add(pb, "lambda_p", H * a->K, 0, PARAM_NO_DECAY, INIT_CONST,
                       t > 20 ? t : log(expm1(t)));
    a->p[ONORM] = pb_add(pb, "o_norm", a->K, 0, 0, INIT_CONST, 1);
    if (a->ogate) a->p[WG] = pb_linear(pb, dims, "wg", d, d, PARAM_MUON);
    a->p[WO] = pb_linear(pb, dims, "wo", d, d, PARAM_MUON);
    return a;
}

static void mesa_bind(void *self, const Ops *ops, const ParamSpec *specs, real *params,
                      real *grads) {
    Mesa *a = self;
    for (int i = 0; i < NP; i++) {
        a->P[i] = a->p[i] >= 0 ? params + specs[a->p[i]].offset : NULL;
        a->G[i] = a->p[i] >= 0 ? grads + specs[a->p[i]].offset : NULL;
    }
    size_t N = (size_t)a->dims.B * a->dims.T, H = (size_t)a->H, d = (size_t)a->dims.d;
#define A(n) ops->alloc(sizeof(real) * (n))
    a->ql = A(N * d), a->qp = A(N * d), a->qc = A(N * d), a->q = A(N * d), a->rq = A(N * H);
    a->kl = A(N * d), a->kp = A(N * d), a->kc = A(N * d), a->k = A(N * d), a->rk = A(N * H);
    a->v = A(N * d);
    a->beta = A(N * H), a->gbeta = A(N * H);
    if (a->gates) {
        a->bl = A(N * H), a->al = A(N * H), a->g = A(N * H);
        a->gg = A(N * H), a->dbl = A(N * H), a->dal = A(N * H);
    } else { /* beta = 1 for ever */
        real *one = xmalloc(sizeof(real) * N * H);
        for (size_t i = 0; i < N * H; i++) one[i] = 1;
        ops->to_device(a->beta, one, sizeof(real) * N * H);
        free(one);
    }
    a->lam = A(H * a->K), a->glam = A(H * a->K);
    a->o = A(N * d), a->qstar = A(N * d), a->on = A(N * d), a->orstd = A(N * H), a->y2 = A(N * d);
    if (a->ogate) a->zl = A(N * d), a->dzl = A(N * d);
    a->ckpt = A(delta_ckpt_len(a->dims.B, a->H, a->dims.T, (size_t)a->K * 2 * a->K));
    a->dy2 = A(N * d), a->don = A(N * d), a->dO = A(N * d);
    a->gq = A(N * d), a->gk = A(N * d), a->gv = A(N * d), a->t1 = A(N * d), a->t2 = A(N * d);
#undef A
}

static MesaArgs mesa_args(const Mesa *a, int B, int T) {
    MesaArgs r = {.B = B, .T = T, .H = a->H, .K = a->K, .V = a->K, .cg_steps = a->cg_steps,
                  .cg_eps = a->cg_eps, .q = a->q, .k = a->k, .v = a->v, .beta = a->beta,
                  .g = a->gates ? a->g : NULL, .lam = a->lam, .o = a->o, .qstar = a->qstar,
                  .ckpt = a->ckpt};
    return r;
}

static void mesa_forward(void *self, const Ops *ops, const real *x, real *y, int B, int T) {
    Mesa *a = self;
    const DeltaOps *D = ops->delta;
    int N = B * T, d = a->dims.d, H = a->H, K = a->K, W = a->W;
    real **P = a->P;
    linear_forward(ops, a->ql, x, P[WQ], NULL, N, d, d);
    ops->conv_forward(a->qc, a->qp, a->ql, P[CQ], NULL, B, T, d, W, 1);
    D->l2norm_forward(a->q, a->rq, a->qc, N * H, K, (real)1e-6);
    linear_forward(ops, a->kl, x, P[WK], NULL, N, d, d);
    ops->conv_forward(a->kc, a->kp, a->kl, P[CK], NULL, B, T, d, W, 1);
    D->l2norm_forward(a->k, a->rk, a->kc, N * H, K, (real)1e-6);
    linear_forward(ops, a->v, x, P[WV], NULL, N, d, d);
    if (a->gates) {
        linear_forward(ops, a->bl, x, P[WB], P[BB], N, d, H);
        D->map_forward(a->beta, a->bl, (long)N * H, DELTA_MAP_SIGMOID, 1, 0);
        linear_forward(ops, a->al, x, P[WA], P[BA], N, d, H);
        D->map_forward(a->g, a->al, (long)N * H, DELTA_MAP_LOGSIGMOID, 1, 0);
    }
    D->map_forward(a->lam, P[LAM], (long)H * K, DELTA_MAP_SOFTPLUS, 1, a->lam_lb);
    MesaArgs args = mesa_args(a, B, T);
    D->mesa_forward(&args);
    ops->rmsnorm_forward(a->on, a->orstd, a->o, P[ONORM], N * H, K, a->dims.norm_eps);
    real *yo = a->on;
    if (a->ogate) {
        linear_forward(ops, a->zl, x, P[WG], NULL, N, d, d);
        D->gate_mul_forward(a->y2, a->on, a->zl, (long)N * d, DELTA_ACT_SILU);
        yo = a->y2;
    }
    linear_forward(ops, y, yo, P[WO], NULL, N, d, d);
}

static void mesa_backward(void *self, const Ops *ops, const real *x, const real *dy, real *dx,
                          int B, int T) {
    Mesa *a = self;
    const DeltaOps *D = ops->delta;
    int N = B * T, d = a->dims.d, H = a->H, K = a->K, W = a->W;
    real **P = a->P, **G = a->G;
    size_t r = sizeof(real), nd = r * (size_t)N * d;
    ops->zero(a->dy2, nd);
    linear_backward(ops, a->dy2, G[WO], NULL, dy, a->ogate ? a->y2 : a->on, P[WO], N, d, d);
    real *don = a->dy2;
    if (a->ogate) {
        ops->zero(a->don, nd), ops->zero(a->dzl, nd);
        D->gate_mul_backward(a->don, a->dzl, a->dy2, a->on, a->zl, (long)N * d, DELTA_ACT_SILU);
        linear_backward(ops, dx, G[WG], NULL, a->dzl, x, P[WG], N, d, d);
        don = a->don;
    }
    rmsnorm_backward_write(ops, a->dO, G[ONORM], don, a->o, P[ONORM], a->orstd, N * H, K);
    ops->zero(a->gq, nd), ops->zero(a->gk, nd), ops->zero(a->gv, nd);
    ops->zero(a->gbeta, r * N * H), ops->zero(a->glam, r * H * K);
    if (a->gates) ops->zero(a->gg, r * N * H);
    MesaArgs args = mesa_args(a, B, T);
    args.dout = a->dO, args.dq = a->gq, args.dk = a->gk, args.dv = a->gv;
    args.dbeta = a->gbeta, args.dg = a->gg, args.dlam = a->glam;
    D->mesa_backward(&args);
    D->map_backward(G[LAM], a->glam, P[LAM], (long)H * K, DELTA_MAP_SOFTPLUS, 1);
    if (a->gates) {
        ops->zero(a->dbl, r * N * H), ops->zero(a->dal, r * N * H);
        D->map_backward(a->dbl, a->gbeta, a->bl, (long)N * H, DELTA_MAP_SIGMOID, 1);
        linear_backward(ops, dx, G[WB], G[BB], a->dbl, x, P[WB], N, d, H);
        D->map_backward(a->dal, a->gg, a->al, (long)N * H, DELTA_MAP_LOGSIGMOID, 1);
        linear_backward(ops, dx, G[WA], G[BA], a->dal, x, P[WA], N, d, H);
    }
    linear_backward(ops, dx, G[WV], NULL, a->gv, x, P[WV], N, d, d);
    const real *gin[2] = {a->gq, a->gk}, *nrm[2] = {a->q, a->k}, *rin[2] = {a->rq, a->rk};
    const real *lin[2] = {a->ql, a->kl}, *pre[2] = {a->qp, a->kp};
    int cw[2] = {CQ, CK}, pw[2] = {WQ, WK};
    for (int s = 0; s < 2; s++) {
        ops->zero(a->t1, nd), ops->zero(a->t2, nd);
        D->l2norm_backward(a->t1, gin[s], nrm[s], rin[s], N * H, K);
        ops->conv_backward(a->t2, G[cw[s]], NULL, a->t1, lin[s], P[cw[s]], pre[s], B, T, d, W, 1);
        linear_backward(ops, dx, G[pw[s]], NULL, a->t2, x, P[pw[s]], N, d, d);
    }
}

static void mesa_destroy(void *self, const Ops *ops) {
    Mesa *a = self;
    real *bufs[] = {a->ql, a->qp, a->qc, a->q, a->rq, a->kl, a->kp, a->kc, a->k, a->rk,
                    a->v, a->bl, a->beta, a->al, a->g, a->lam, a->o, a->qstar, a->on,
                    a->orstd, a->zl, a->y2, a->ckpt, a->dy2, a->don, a->dO, a->dzl, a->gq,
                    a->gk, a->gv, a->gbeta, a->gg, a->glam, a->dbl, a->dal, a->t1, a->t2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    free(a);
}

/* two states per head: Hkk (K x K) and Hkv (K x K) */
static size_t mesa_state_size(const Config *cfg, const ModelDims *dims) {
    size_t K = (size_t)(dims->d / dims->heads);
    return (size_t)dims->heads * 2 * K * K;
}

/* the backend must have the delta op group (kernels/ops_delta.h) */
static int mesa_check_ops(const void *self, const Ops *ops, Err *err) {
    (void)self;
    if (ops->delta) return 0;
    err_set(err, "key 'model.mixer': MesaNet needs the delta ops (kernels/ops_delta.h), which backend "
                 "'%s' does not have yet; use device=cpu", ops->name);
    return -1;
}

const MixerKind mixer_mesanet = {
    .name = "mesanet",
    .help = "MesaNet: per-step ridge regression by conjugate gradients, forget gate, "
            "implicit-differentiation backward (baselines.md §9)",
    .create = mesa_create,
    .bind = mesa_bind,
    .forward = mesa_forward,
    .backward = mesa_backward,
    .destroy = mesa_destroy,
    .state_size = mesa_state_size,
    .check_ops = mesa_check_ops,
};
