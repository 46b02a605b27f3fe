/* Mamba-1 mixer (S6 selective scan), the full layer of mamba_simple.py as
 * baselines.md §4.1 gives it, shapes for N = B*T tokens:
 *
 *   [xr ; z] = h W_in^T                  W_in  [2*di, d], no bias     [N, di] each
 *   xc = silu(causal depthwise conv(xr)) conv  [di, W] + bias [di]    §1.1
 *   [dl ; Bm ; Cm] = xc W_x^T            W_x   [R + 2*Ns, di]         [N,R] [N,Ns] [N,Ns]
 *   delta = softplus(dl W_dt^T + b_dt)   W_dt  [di, R], b_dt [di]     [N, di]
 *   y = selective_scan(xc, delta, A, Bm, Cm) + D xc,  A = -exp(A_log) §4.2
 *   out = (y * silu(z)) W_out^T          W_out [d, di], no bias
 *
 * Inits (§4.1, §1.4): A_log[d,n] = log(n+1); D = 1; b_dt = softplus^-1(dt),
 * dt ~ logU(1e-3, 1e-1); W_dt ~ U(+-R^-1/2); conv weight and bias
 * U(+-1/sqrt(W)) (PyTorch Conv1d default); W_in, W_x, W_out follow model.init.
 * W_in and W_x are single tensors (as in the reference, so Muon sees the whole
 * matrix); their row blocks are read in place.
 *
 * This file also holds the key table of both Mamba mixers (mamba2.c). */
#include <math.h>
#include <stdlib.h>

#include "../kernels/ops_scan.h"
#include "layers.h"
#include "mixer.h"

static const KeyDef mamba_keys[] = {
    {"mamba.d_state", KEY_INT, "4", 1, 4096, NULL,
     "Mamba-1 state size per channel (MAD: 4; mamba_simple default 16)", 0},
    {"mamba.d_conv", KEY_INT, "4", 1, 64, NULL, "Mamba-1/-2 short causal conv width", 0},
    {"mamba.expand", KEY_INT, "2", 1, 64, NULL, "Mamba-1/-2 inner width = expand * d_model", 0},
    {"mamba.dt_rank", KEY_INT, "0", 0, 1 << 20, NULL,
     "Mamba-1 rank of the dt projection; 0 = ceil(d_model/16)", 0},
    {"mamba2.d_state", KEY_INT, "64", 1, 4096, NULL,
     "Mamba-2 state size N per head row (mamba2_simple: 64)", 0},
    {"mamba2.headdim", KEY_INT, "64", 1, 65536, NULL,
     "Mamba-2 head dim P; heads = expand*d_model/P", 0},
    {"mamba2.ngroups", KEY_INT, "1", 1, 65536, NULL,
     "Mamba-2 groups of heads sharing B and C (and the gated-norm groups)", 0},
    {"mamba2.chunk", KEY_INT, "0", 0, 1 << 20, NULL,
     "Mamba-2 SSD algorithm: 0 = token recurrence, C = chunked SSD with C-token chunks (exact)", 0},
};
const KeyTable mamba_key_table = KEYTABLE("mixer (mamba, mamba2)", mamba_keys);

/* dt ~ exp(U(log 1e-3, log 1e-1)) clamped at 1e-4; bias = dt + log(-expm1(-dt))
 * = softplus^-1(dt), so softplus(bias) starts in [0.001, 0.1] (baselines.md §1.4).
 * Shared with mamba2.c. */
void mamba_dt_bias_init(real *p, size_t n, double (*u01)(void *), void *rng) {
    const double lo = log(1e-3), hi = log(1e-1);
    for (size_t i = 0; i < n; i++) {
        double dt = exp(lo + (hi - lo) * u01(rng));
        if (dt < 1e-4) dt = 1e-4;
        p[i] = (real)(dt + log(-expm1(-dt)));
    }
}

/* Conv weight and bias as PyTorch's Conv1d default (kaiming_uniform(a=sqrt 5)):
 * U(+-1/sqrt(fan_in)), fan_in = W for a depthwise filter. */
void mamba_add_conv(ParamBuilder *pb, int channels, int W, int *w, int *b) {
    *w = pb_add(pb, "conv_w", channels, W, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
    *b = pb_add(pb, "conv_b", channels, 0, 0, INIT_UNIFORM, 1.0 / sqrt((double)W));
}

/* Checks that the op groups a Mamba mixer needs exist on this backend. */
void mamba_require_scan(const Ops *ops) {
}

enum { S_WIN, S_CW, S_CB, S_WX, S_WDT, S_BDT, S_ALOG, S_D, S_WOUT, NSLOT };

typedef struct {
    ModelDims dims;
    int di, Ns, R, W;
    int idx[NSLOT];
    real *P[NSLOT], *G[NSLOT];
    /* activations [N, di] unless noted */
    real *xr, *z, *xpre, *xc, *dl /*[N,R]*/, *Bm, *Cm /*[N,Ns]*/, *dtr, *delta, *y, *yg;
    real *dyg, *dy, *dz, *dxc, *ddelta, *ddtr, *ddl, *dBm, *dCm, *dxr;
} Mamba;

static int mamba_dt_rank(const Config *cfg) {
    long r = cfg_int(cfg, "mamba.dt_rank"), d = cfg_int(cfg, "model.d_model");
    return (int)(r > 0 ? r : (d + 15) / 16);
}

static void *mamba_create(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err) {
    (void)err; /* every key is range-checked by the table; no cross-key rule here */
    Mamba *m = xcalloc(1, sizeof *m);
    m->dims = *dims;
    int d = dims->d;
    m->di = (int)cfg_int(cfg, "mamba.expand") * d;
    m->Ns = (int)cfg_int(cfg, "mamba.d_state");
    m->W = (int)cfg_int(cfg, "mamba.d_conv");
    m->R = mamba_dt_rank(cfg);
    int di = m->di, R = m->R, Ns = m->Ns;
    m->idx[S_WIN] = pb_linear(pb, dims, "in_proj", 2 * di, d, PARAM_MUON);
    mamba_add_conv(pb, di, m->W, &m->idx[S_CW], &m->idx[S_CB]);
    m->idx[S_WX] = pb_linear(pb, dims, "x_proj", R + 2 * Ns, di, PARAM_MUON);
    m->idx[S_WDT] = pb_add(pb, "dt_proj", di, R, PARAM_MUON, INIT_UNIFORM, 1.0 / sqrt((double)R));
    m->idx[S_BDT] = pb_add(pb, "dt_bias", di, 0, PARAM_NO_DECAY, INIT_CUSTOM, 0);
    pb->specs[m->idx[S_BDT]].init_fn = mamba_dt_bias_init;
    m->idx[S_ALOG] = pb_add(pb, "A_log", di, Ns, PARAM_NO_DECAY, INIT_S4D_REAL, 0);
    m->idx[S_D] = pb_add(pb, "D", di, 0, PARAM_NO_DECAY, INIT_CONST, 1);
    m->idx[S_WOUT] = pb_linear(pb, dims, "out_proj", d, di, PARAM_MUON);
    return m;
}

static void mamba_bind(void *self, const Ops *ops, const ParamSpec *specs, real *params,
                       real *grads) {
    Mamba *m = self;
    mamba_require_scan(ops);
    for (int s = 0; s < NSLOT; s++) {
        m->P[s] = params + specs[m->idx[s]].offset;
        m->G[s] = grads + specs[m->idx[s]].offset;
    }
    size_t N = (size_t)m->dims.B * m->dims.T, sz = sizeof(real);
    size_t nd = sz * N * m->di, nr = sz * N * m->R, ns = sz * N * m->Ns;
    real **big[] = {&m->xr, &m->z, &m->xpre, &m->xc, &m->dtr, &m->delta, &m->y, &m->yg,
                    &m->dyg, &m->dy, &m->dz, &m->dxc, &m->ddelta, &m->ddtr, &m->dxr};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) *big[i] = ops->alloc(nd);
    m->dl = ops->alloc(nr), m->ddl = ops->alloc(nr);
    m->Bm = ops->alloc(ns), m->Cm = ops->alloc(ns), m->dBm = ops->alloc(ns), m->dCm = ops->alloc(ns);
}

static void mamba_forward(void *self, const Ops *ops, const real *x, real *out, int B, int T) {
    Mamba *m = self;
    const ScanOps *sc = ops->scan;
    int N = B * T, d = m->dims.d, di = m->di, R = m->R, Ns = m->Ns;
    real **P = m->P;
    linear_forward(ops, m->xr, x, P[S_WIN], NULL, N, d, di);
    linear_forward(ops, m->z, x, P[S_WIN] + (size_t)di * d, NULL, N, d, di);
    ops->conv_forward(m->xc, m->xpre, m->xr, P[S_CW], P[S_CB], B, T, di, m->W, 1);
    linear_forward(ops, m->dl, m->xc, P[S_WX], NULL, N, di, R);
    linear_forward(ops, m->Bm, m->xc, P[S_WX] + (size_t)R * di, NULL, N, di, Ns);
    linear_forward(ops, m->Cm, m->xc, P[S_WX] + (size_t)(R + Ns) * di, NULL, N, di, Ns);
    linear_forward(ops, m->dtr, m->dl, P[S_WDT], NULL, N, R, di);
    sc->softplus_forward(m->delta, m->dtr, P[S_BDT], N, di);
    sc->selective_scan_forward(m->y, m->xc, m->delta, P[S_ALOG], m->Bm, m->Cm, P[S_D], B, T, di, Ns);
    ops->swiglu_forward(m->yg, m->z, m->y, N, di, di); /* y * silu(z) */
    linear_forward(ops, out, m->yg, P[S_WOUT], NULL, N, di, d);
}

static void mamba_backward(void *self, const Ops *ops, const real *x, const real *dout, real *dx,
                           int B, int T) {
    Mamba *m = self;
    const ScanOps *sc = ops->scan;
    int N = B * T, d = m->dims.d, di = m->di, R = m->R, Ns = m->Ns;
    real **P = m->P, **G = m->G;
    size_t sz = sizeof(real), nd = sz * (size_t)N * di, ns = sz * (size_t)N * Ns;
    ops->zero(m->dyg, nd);
    linear_backward(ops, m->dyg, G[S_WOUT], NULL, dout, m->yg, P[S_WOUT], N, di, d);
    ops->swiglu_backward(m->dz, m->dy, m->dyg, m->z, m->y, N, di, di);
    ops->zero(m->dxc, nd), ops->zero(m->ddelta, nd), ops->zero(m->dBm, ns), ops->zero(m->dCm, ns);
    sc->selective_scan_backward(m->dxc, m->ddelta, G[S_ALOG], m->dBm, m->dCm, G[S_D], m->dy, m->xc,
                                m->delta, P[S_ALOG], m->Bm, m->Cm, P[S_D], B, T, di, Ns);
    ops->zero(m->ddtr, nd);
    sc->softplus_backward(m->ddtr, G[S_BDT], m->ddelta, m->dtr, P[S_BDT], N, di);
    ops->zero(m->ddl, sz * (size_t)N * R);
    linear_backward(ops, m->ddl, G[S_WDT], NULL, m->ddtr, m->dl, P[S_WDT], N, R, di);
    linear_backward(ops, m->dxc, G[S_WX], NULL, m->ddl, m->xc, P[S_WX], N, di, R);
    size_t oB = (size_t)R * di, oC = (size_t)(R + Ns) * di;
    linear_backward(ops, m->dxc, G[S_WX] + oB, NULL, m->dBm, m->xc, P[S_WX] + oB, N, di, Ns);
    linear_backward(ops, m->dxc, G[S_WX] + oC, NULL, m->dCm, m->xc, P[S_WX] + oC, N, di, Ns);
    ops->zero(m->dxr, nd);
    ops->conv_backward(m->dxr, G[S_CW], G[S_CB], m->dxc, m->xr, P[S_CW], m->xpre, B, T, di, m->W, 1);
    size_t oz = (size_t)di * d;
    linear_backward(ops, dx, G[S_WIN], NULL, m->dxr, x, P[S_WIN], N, d, di);
    linear_backward(ops, dx, G[S_WIN] + oz, NULL, m->dz, x, P[S_WIN] + oz, N, d, di);
}

static void mamba_destroy(void *self, const Ops *ops) {
    Mamba *m = self;
    real *bufs[] = {m->xr, m->z, m->xpre, m->xc, m->dl, m->Bm, m->Cm, m->dtr, m->delta, m->y,
                    m->yg, m->dyg, m->dy, m->dz, m->dxc, m->ddelta, m->ddtr, m->ddl, m->dBm,
                    m->dCm, m->dxr};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    free(m);
}

/* recurrent state per sequence and layer: d_inner * d_state (§4.2) */
static size_t mamba_state_size(const Config *cfg, const ModelDims *dims) {
    return (size_t)cfg_int(cfg, "mamba.expand") * (size_t)dims->d * (size_t)cfg_int(cfg, "mamba.d_state");
}

/* the backend must have the scan op group (kernels/ops_scan.h) */
static int mamba_check_ops(const void *self, const Ops *ops, Err *err) {
    (void)self;
    if (ops->scan) return 0;
    err_set(err, "key 'model.mixer': Mamba needs the scan ops (kernels/ops_scan.h), which backend "
                 "'%s' does not have yet; use device=cpu", ops->name);
    return -1;
}

const MixerKind mixer_mamba = {
    .name = "mamba",
    .help = "Mamba-1 selective scan layer (baselines.md §4); as in MAD it replaces the MLP too (4 layers, no MLP)",
    /* MAD: Mamba layers replace both the sequence and the channel mixer, so the
     * 2 blocks x (mixer, MLP) of the protocol become 4 Mamba layers (mad.md §4.1) */
    .preset = "model.mlp=none model.layers=4",
    .create = mamba_create,
    .bind = mamba_bind,
    .forward = mamba_forward,
    .backward = mamba_backward,
    .destroy = mamba_destroy,
    .state_size = mamba_state_size,
    .check_ops = mamba_check_ops,
};
