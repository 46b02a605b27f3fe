/* Mamba-2 mixer (SSD), the full layer of mamba2.py as baselines.md §5.1 gives
 * it, shapes for N = B*T tokens, di = expand*d, H = di/P heads, G groups:
 *
 *   [z ; xr ; Br ; Cr ; dtr] = h W_in^T    W_in [2di + 2GN + H, d], no bias
 *   xc, Bc, Cc = silu(causal depthwise conv(xr, Br, Cr))   conv [di + 2GN, W] + bias (§1.1)
 *   dt = softplus(dtr + dt_bias)           [N, H]
 *   y  = SSD(xc, dt, A, Bc, Cc) + D xc,  A = -exp(A_log) per head   (§5.2-5.4)
 *   out = RMSNorm_groups(y * silu(z)) w  W_out^T                  (norm_before_gate = False, eps 1e-5)
 *
 * Inits: A ~ U(1, 16) (A_log = log A), D = 1, dt_bias = softplus^-1(dt) with
 * dt ~ logU(1e-3, 1e-1) (§1.4), norm weight 1, conv as PyTorch's default.
 * W_in is one tensor as in the reference; its row blocks (and the conv's
 * channel blocks) are read in place so every buffer stays contiguous. */
#include <math.h>
#include <stdlib.h>

#include "../kernels/ops_scan.h"
#include "layers.h"
#include "mixer.h"

/* shared with mamba.c */
void mamba_dt_bias_init(real *p, size_t n, double (*u01)(void *), void *rng);
void mamba_add_conv(ParamBuilder *pb, int channels, int W, int *w, int *b);
void mamba_require_scan(const Ops *ops);

/* A ~ U(1, 16) per head, stored as log A (mamba2.py A_init_range) */
static void a_log_init(real *p, size_t n, double (*u01)(void *), void *rng) {
    for (size_t i = 0; i < n; i++) p[i] = (real)log(1.0 + 15.0 * u01(rng));
}

enum { S_WIN, S_CW, S_CB, S_BDT, S_ALOG, S_D, S_NW, S_WOUT, NSLOT };

typedef struct {
    ModelDims dims;
    int di, H, P, G, Ns, W, chunk;
    int idx[NSLOT];
    real *Pp[NSLOT], *Gp[NSLOT];
    real eps;
    /* activations: [N, di] unless noted; BC = [N, G*Ns], h = [N, H] */
    real *z, *xr, *Br, *Cr, *dtr, *xpre, *xc, *Bpre, *Bc, *Cpre, *Cc, *dt, *y, *g, *gn, *rstd;
    real *dgn, *dg, *dz, *dy, *dxc, *dBc, *dCc, *ddt, *ddtr, *dxr, *dBr, *dCr;
} Mamba2;

static void *mamba2_create(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err) {
    int d = dims->d, di = (int)cfg_int(cfg, "mamba.expand") * d;
    int P = (int)cfg_int(cfg, "mamba2.headdim"), G = (int)cfg_int(cfg, "mamba2.ngroups");
    if (di % P != 0) {
        err_set(err, "key 'mamba2.headdim': %d does not divide d_inner = mamba.expand * model.d_model = %d",
                P, di);
        return NULL;
    }
    if ((di / P) % G != 0) {
        err_set(err, "key 'mamba2.ngroups': %d does not divide the number of heads %d (d_inner %d / headdim %d)",
                G, di / P, di, P);
        return NULL;
    }
    Mamba2 *m = xcalloc(1, sizeof *m);
    m->dims = *dims;
    m->di = di, m->P = P, m->H = di / P, m->G = G;
    m->Ns = (int)cfg_int(cfg, "mamba2.d_state");
    m->W = (int)cfg_int(cfg, "mamba.d_conv");
    m->chunk = (int)cfg_int(cfg, "mamba2.chunk");
    m->eps = (real)1e-5; /* RMSNormGated eps, baselines.md §1.3 */
    int gn = G * m->Ns, H = m->H;
    m->idx[S_WIN] = pb_linear(pb, dims, "in_proj", 2 * di + 2 * gn + H, d, PARAM_MUON);
    mamba_add_conv(pb, di + 2 * gn, m->W, &m->idx[S_CW], &m->idx[S_CB]);
    m->idx[S_BDT] = pb_add(pb, "dt_bias", H, 0, PARAM_NO_DECAY, INIT_CUSTOM, 0);
    pb->specs[m->idx[S_BDT]].init_fn = mamba_dt_bias_init;
    m->idx[S_ALOG] = pb_add(pb, "A_log", H, 0, PARAM_NO_DECAY, INIT_CUSTOM, 0);
    pb->specs[m->idx[S_ALOG]].init_fn = a_log_init;
    m->idx[S_D] = pb_add(pb, "D", H, 0, PARAM_NO_DECAY, INIT_CONST, 1);
    m->idx[S_NW] = pb_add(pb, "norm_w", di, 0, 0, INIT_CONST, 1);
    m->idx[S_WOUT] = pb_linear(pb, dims, "out_proj", d, di, PARAM_MUON);
    return m;
}

static void mamba2_bind(void *self, const Ops *ops, const ParamSpec *specs, real *params,
                        real *grads) {
    Mamba2 *m = self;
    mamba_require_scan(ops);
    for (int s = 0; s < NSLOT; s++) {
        m->Pp[s] = params + specs[m->idx[s]].offset;
        m->Gp[s] = grads + specs[m->idx[s]].offset;
    }
    size_t N = (size_t)m->dims.B * m->dims.T, sz = sizeof(real);
    size_t nd = sz * N * m->di, nbc = sz * N * m->G * m->Ns, nh = sz * N * m->H;
    real **d_[] = {&m->z, &m->xr, &m->xpre, &m->xc, &m->y, &m->g, &m->gn,
                   &m->dgn, &m->dg, &m->dz, &m->dy, &m->dxc, &m->dxr};
    for (size_t i = 0; i < sizeof d_ / sizeof d_[0]; i++) *d_[i] = ops->alloc(nd);
    real **bc[] = {&m->Br, &m->Cr, &m->Bpre, &m->Bc, &m->Cpre, &m->Cc, &m->dBc, &m->dCc,
                   &m->dBr, &m->dCr};
    for (size_t i = 0; i < sizeof bc / sizeof bc[0]; i++) *bc[i] = ops->alloc(nbc);
    m->dtr = ops->alloc(nh), m->dt = ops->alloc(nh), m->ddt = ops->alloc(nh), m->ddtr = ops->alloc(nh);
    m->rstd = ops->alloc(sz * N * m->G);
}

static SsdArgs mamba2_args(const Mamba2 *m, int B, int T) {
    SsdArgs a = {.B = B, .T = T, .H = m->H, .P = m->P, .G = m->G, .N = m->Ns, .chunk = m->chunk,
                 .x = m->xc, .dt = m->dt, .A_log = m->Pp[S_ALOG], .Bm = m->Bc, .Cm = m->Cc,
                 .D = m->Pp[S_D], .y = m->y};
    return a;
}

/* row offsets of the blocks of W_in: z, x, B, C, dt */
static void win_blocks(const Mamba2 *m, size_t off[5]) {
    size_t d = (size_t)m->dims.d, gn = (size_t)m->G * m->Ns;
    off[0] = 0, off[1] = m->di * d, off[2] = 2 * m->di * d, off[3] = off[2] + gn * d;
    off[4] = off[3] + gn * d;
}

static void mamba2_forward(void *self, const Ops *ops, const real *x, real *out, int B, int T) {
    Mamba2 *m = self;
    const ScanOps *sc = ops->scan;
    int N = B * T, d = m->dims.d, di = m->di, gn = m->G * m->Ns, W = m->W;
    real **P = m->Pp, *win = P[S_WIN];
    size_t o[5];
    win_blocks(m, o);
    linear_forward(ops, m->z, x, win + o[0], NULL, N, d, di);
    linear_forward(ops, m->xr, x, win + o[1], NULL, N, d, di);
    linear_forward(ops, m->Br, x, win + o[2], NULL, N, d, gn);
    linear_forward(ops, m->Cr, x, win + o[3], NULL, N, d, gn);
    linear_forward(ops, m->dtr, x, win + o[4], NULL, N, d, m->H);
    size_t cB = (size_t)di, cC = (size_t)di + gn; /* channel offsets in the conv */
    ops->conv_forward(m->xc, m->xpre, m->xr, P[S_CW], P[S_CB], B, T, di, W, 1);
    ops->conv_forward(m->Bc, m->Bpre, m->Br, P[S_CW] + cB * W, P[S_CB] + cB, B, T, gn, W, 1);
    ops->conv_forward(m->Cc, m->Cpre, m->Cr, P[S_CW] + cC * W, P[S_CB] + cC, B, T, gn, W, 1);
    sc->softplus_forward(m->dt, m->dtr, P[S_BDT], N, m->H);
    SsdArgs a = mamba2_args(m, B, T);
    sc->ssd_forward(&a);
    ops->swiglu_forward(m->g, m->z, m->y, N, di, di); /* y * silu(z) */
    ops->rmsnorm_forward(m->gn, m->rstd, m->g, P[S_NW], N * m->G, di / m->G, m->eps);
    linear_forward(ops, out, m->gn, P[S_WOUT], NULL, N, di, d);
}

static void mamba2_backward(void *self, const Ops *ops, const real *x, const real *dout, real *dx,
                            int B, int T) {
    Mamba2 *m = self;
    const ScanOps *sc = ops->scan;
    int N = B * T, d = m->dims.d, di = m->di, gn = m->G * m->Ns, W = m->W, H = m->H;
    real **P = m->Pp, **G = m->Gp;
    size_t sz = sizeof(real), nd = sz * (size_t)N * di, nbc = sz * (size_t)N * gn;
    size_t nh = sz * (size_t)N * H;
    linear_backward_beta(ops, m->dgn, 0, G[S_WOUT], NULL, dout, m->gn, P[S_WOUT], N, di, d);
    rmsnorm_backward_write(ops, m->dg, G[S_NW], m->dgn, m->g, P[S_NW], m->rstd, N * m->G, di / m->G);
    ops->swiglu_backward(m->dz, m->dy, m->dg, m->z, m->y, N, di, di);
    ops->zero(m->dxc, nd), ops->zero(m->dBc, nbc), ops->zero(m->dCc, nbc), ops->zero(m->ddt, nh);
    SsdArgs a = mamba2_args(m, B, T);
    a.dy = m->dy, a.dx = m->dxc, a.ddt = m->ddt, a.dA_log = G[S_ALOG], a.dBm = m->dBc,
    a.dCm = m->dCc, a.dD = G[S_D];
    sc->ssd_backward(&a);
    ops->zero(m->ddtr, nh);
    sc->softplus_backward(m->ddtr, G[S_BDT], m->ddt, m->dtr, P[S_BDT], N, H);
    ops->zero(m->dxr, nd), ops->zero(m->dBr, nbc), ops->zero(m->dCr, nbc);
    size_t cB = (size_t)di, cC = (size_t)di + gn;
    ops->conv_backward(m->dxr, G[S_CW], G[S_CB], m->dxc, m->xr, P[S_CW], m->xpre, B, T, di, W, 1);
    ops->conv_backward(m->dBr, G[S_CW] + cB * W, G[S_CB] + cB, m->dBc, m->Br, P[S_CW] + cB * W,
                       m->Bpre, B, T, gn, W, 1);
    ops->conv_backward(m->dCr, G[S_CW] + cC * W, G[S_CB] + cC, m->dCc, m->Cr, P[S_CW] + cC * W,
                       m->Cpre, B, T, gn, W, 1);
    size_t o[5];
    win_blocks(m, o);
    const real *dblk[5] = {m->dz, m->dxr, m->dBr, m->dCr, m->ddtr};
    int width[5] = {di, di, gn, gn, H};
    for (int i = 0; i < 5; i++)
        linear_backward(ops, dx, G[S_WIN] + o[i], NULL, dblk[i], x, P[S_WIN] + o[i], N, d, width[i]);
}

static void mamba2_destroy(void *self, const Ops *ops) {
    Mamba2 *m = self;
    real *bufs[] = {m->z, m->xr, m->Br, m->Cr, m->dtr, m->xpre, m->xc, m->Bpre, m->Bc, m->Cpre,
                    m->Cc, m->dt, m->y, m->g, m->gn, m->rstd, m->dgn, m->dg, m->dz, m->dy,
                    m->dxc, m->dBc, m->dCc, m->ddt, m->ddtr, m->dxr, m->dBr, m->dCr};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    free(m);
}

/* recurrent state per sequence and layer: H heads of P x N = d_inner * d_state (§5.2) */
static size_t mamba2_state_size(const Config *cfg, const ModelDims *dims) {
    return (size_t)cfg_int(cfg, "mamba.expand") * (size_t)dims->d * (size_t)cfg_int(cfg, "mamba2.d_state");
}

/* the backend must have the scan op group (kernels/ops_scan.h) */
static int mamba2_check_ops(const void *self, const Ops *ops, Err *err) {
    (void)self;
    if (ops->scan) return 0;
    err_set(err, "key 'model.mixer': Mamba-2 needs the scan ops (kernels/ops_scan.h), which backend "
                 "'%s' does not have yet; use device=cpu", ops->name);
    return -1;
}

const MixerKind mixer_mamba2 = {
    .name = "mamba2",
    .help = "Mamba-2 SSD layer with gated RMSNorm (baselines.md §5); like mamba, 4 layers and no MLP",
    /* MAD: Mamba layers replace both the sequence and the channel mixer, so the
     * 2 blocks x (mixer, MLP) of the protocol become 4 Mamba layers (mad.md §4.1) */
    .preset = "model.mlp=none model.layers=4",
    .create = mamba2_create,
    .bind = mamba2_bind,
    .forward = mamba2_forward,
    .backward = mamba2_backward,
    .destroy = mamba2_destroy,
    .state_size = mamba2_state_size,
    .check_ops = mamba2_check_ops,
};
