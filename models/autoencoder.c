/* The compression backbone: code = encoder output at the last position;
 * decoder MLP over code + sincos position embedding (mad.md §4.2).
 *
 *   h0[b,p] = h[b,T-1] + pe[p]                       [B*T, d]
 *   a1 = RMSNorm(h0; n1) W1^T + b1;  g1 = GELU(a1)
 *   a2 = RMSNorm(g1; n2) W2^T + b2;  out = GELU(a2)
 *   pe[p, i] = sin(p f_i), pe[p, d/2 + i] = cos(p f_i), f_i = exp(-i ln(10000) / (d/2 - 1))
 * GELU is the exact erf form (torch nn.GELU default), an op of the table. */
#include "autoencoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

static const KeyDef ae_keys[] = {
    {"model.backbone", KEY_ENUM, "lm", 1, 0, "lm|autoencoder",
     "lm = language model; autoencoder = MAD's compression backbone (mad.md 4.2; task "
     "compression presets it)", 0},
};
const KeyTable autoencoder_key_table = KEYTABLE("model (backbone)", ae_keys);

enum { S_N1, S_W1, S_B1, S_N2, S_W2, S_B2, S_COUNT };

struct AutoEncoder {
    int d, B, T;
    real eps;
    int idx[S_COUNT];
    real *P[S_COUNT], *G[S_COUNT];
    real *pe; /* [T, d] */
    real *h0, *n1, *r1, *a1, *g1, *n2, *r2, *a2, *out;
    real *dout, *da, *dn, *dg1, *dh0;
};

int ae_wanted(const Config *cfg) { return !strcmp(cfg_str(cfg, "model.backbone"), "autoencoder"); }

AutoEncoder *ae_create(const Config *cfg, const ModelDims *dims, const Ops *ops, ParamBuilder *pb,
                       Err *err) {
    (void)cfg, (void)ops;
    if (dims->d % 2 != 0 || dims->d < 4) {
        err_set(err, "key 'model.d_model': %d; the autoencoder's sincos position embedding needs "
                     "an even width of at least 4", dims->d);
        return NULL;
    }
    AutoEncoder *ae = xcalloc(1, sizeof *ae);
    int d = dims->d;
    ae->d = d, ae->B = dims->B, ae->T = dims->T, ae->eps = dims->norm_eps;
    char keep[sizeof pb->prefix];
    memcpy(keep, pb->prefix, sizeof keep);
    snprintf(pb->prefix, sizeof pb->prefix, "decoder.");
    ae->idx[S_N1] = pb_add(pb, "norm1", d, 0, 0, INIT_CONST, 1);
    ae->idx[S_W1] = pb_linear(pb, dims, "w1", d, d, PARAM_MUON);
    ae->idx[S_B1] = pb_add(pb, "b1", d, 0, 0, INIT_ZERO, 0);
    ae->idx[S_N2] = pb_add(pb, "norm2", d, 0, 0, INIT_CONST, 1);
    ae->idx[S_W2] = pb_linear(pb, dims, "w2", d, d, PARAM_MUON);
    ae->idx[S_B2] = pb_add(pb, "b2", d, 0, 0, INIT_ZERO, 0);
    memcpy(pb->prefix, keep, sizeof keep);
    return ae;
}

void ae_bind(AutoEncoder *ae, const Ops *ops, const ParamSpec *specs, real *params, real *grads) {
    for (int i = 0; i < S_COUNT; i++) {
        ae->P[i] = params + specs[ae->idx[i]].offset;
        ae->G[i] = grads + specs[ae->idx[i]].offset;
    }
    int d = ae->d, T = ae->T, half = d / 2;
    size_t N = (size_t)ae->B * T, nd = sizeof(real) * N * d;
    real *pe = xmalloc(sizeof(real) * (size_t)T * d);
    for (int p = 0; p < T; p++)
        for (int i = 0; i < half; i++) {
            double f = exp(-(double)i * log(10000.0) / (double)(half - 1));
            pe[(size_t)p * d + i] = (real)sin(p * f);
            pe[(size_t)p * d + half + i] = (real)cos(p * f);
        }
    ae->pe = ops->alloc(sizeof(real) * (size_t)T * d);
    ops->to_device(ae->pe, pe, sizeof(real) * (size_t)T * d);
    free(pe);
    real **bufs[] = {&ae->h0, &ae->n1, &ae->a1, &ae->g1, &ae->n2, &ae->a2, &ae->out,
                     &ae->dout, &ae->da, &ae->dn, &ae->dg1, &ae->dh0};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) *bufs[i] = ops->alloc(nd);
    ae->r1 = ops->alloc(sizeof(real) * N);
    ae->r2 = ops->alloc(sizeof(real) * N);
}

void ae_free(AutoEncoder *ae, const Ops *ops) {
    if (!ae) return;
    real *bufs[] = {ae->pe, ae->h0, ae->n1, ae->r1, ae->a1, ae->g1, ae->n2, ae->r2, ae->a2,
                    ae->out, ae->dout, ae->da, ae->dn, ae->dg1, ae->dh0};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ops->release(bufs[i]);
    free(ae);
}

const real *ae_forward(AutoEncoder *ae, const Ops *ops, const real *h, int B, int T) {
    int d = ae->d, N = B * T;
    size_t td = (size_t)T * d;
    for (int b = 0; b < B; b++) {
        ops->copy(ae->h0 + b * td, ae->pe, sizeof(real) * td);
        ops->add_bias(ae->h0 + b * td, h + b * td + (size_t)(T - 1) * d, T, d);
    }
    ops->rmsnorm_forward(ae->n1, ae->r1, ae->h0, ae->P[S_N1], N, d, ae->eps);
    linear_forward(ops, ae->a1, ae->n1, ae->P[S_W1], ae->P[S_B1], N, d, d);
    ops->gelu_forward(ae->g1, ae->a1, (long)N * d);
    ops->rmsnorm_forward(ae->n2, ae->r2, ae->g1, ae->P[S_N2], N, d, ae->eps);
    linear_forward(ops, ae->a2, ae->n2, ae->P[S_W2], ae->P[S_B2], N, d, d);
    ops->gelu_forward(ae->out, ae->a2, (long)N * d);
    return ae->out;
}

void ae_backward(AutoEncoder *ae, const Ops *ops, const real *dfin, const real *w, real *dw,
                 const real *rstd, real *dh, int B, int T) {
    int d = ae->d, N = B * T;
    size_t td = (size_t)T * d;
    rmsnorm_backward_write(ops, ae->dout, dw, dfin, ae->out, w, rstd, N, d);
    ops->gelu_backward(ae->da, ae->dout, ae->a2, (long)N * d);
    linear_backward_beta(ops, ae->dn, 0, ae->G[S_W2], ae->G[S_B2], ae->da, ae->n2, ae->P[S_W2], N, d, d);
    rmsnorm_backward_write(ops, ae->dg1, ae->G[S_N2], ae->dn, ae->g1, ae->P[S_N2], ae->r2, N, d);
    ops->gelu_backward(ae->da, ae->dg1, ae->a1, (long)N * d);
    linear_backward_beta(ops, ae->dn, 0, ae->G[S_W1], ae->G[S_B1], ae->da, ae->n1, ae->P[S_W1], N, d, d);
    rmsnorm_backward_write(ops, ae->dh0, ae->G[S_N1], ae->dn, ae->h0, ae->P[S_N1], ae->r1, N, d);
    /* the code feeds every position: its gradient is the sum over positions */
    for (int b = 0; b < B; b++) ops->bias_backward(dh + b * td + (size_t)(T - 1) * d, ae->dh0 + b * td, T, d);
}
