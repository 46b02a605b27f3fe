/* Causal softmax attention and Parallax, direct (non-streaming) reference.
 *
 * Parallax (parallax_lla.md §3.1): with p the softmax weights of s = scale q.k
 * and t_ij = r_i.k_j (raw, unscaled),
 *     o_i = sum_j p_ij (1 + tbar_i - t_ij) v_j,   tbar_i = sum_j p_ij t_ij,
 * which is the streaming form ō(1 + t̄) - O2/d1 written row by row. r == NULL
 * gives softmax attention. The backward is §3.6:
 *     dS = p[(A - T) + (tbar - t)(A - b)],  dT = -p(A - b),
 * with A_ij = g_i.v_j, T_i = g_i.o_i, b_i = g_i.ō_i. */
#include <math.h>
#include <stdlib.h>

#include "../../core/check.h"
#include "cpu.h"

#define AT(ptr, ld, b, t, T, h, hd) ((ptr) + ((size_t)(b) * (T) + (t)) * (ld) + (size_t)(h) * (hd))

static real dot(const real *a, const real *b, int n) {
    real s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static int row_start(const AttnArgs *a, int i) {
    return a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0;
}

void cpu_attention_forward(const AttnArgs *args) {
    const AttnArgs s = attn_strides(args), *a = &s;
    const int B = a->B, T = a->T, H = a->H, hd = a->hd;
#pragma omp parallel
    {
        real *p = xmalloc(sizeof(real) * (size_t)T), *t = xmalloc(sizeof(real) * (size_t)T);
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++) {
                    const real *qi = AT(a->q, a->ld_in, b, i, T, h, hd);
                    const real *ri = a->r ? AT(a->r, a->ld_r, b, i, T, h, hd) : NULL;
                    int lo = row_start(a, i);
                    real m = -INFINITY;
                    for (int j = lo; j <= i; j++) {
                        p[j] = a->scale * dot(qi, AT(a->k, a->ld_in, b, j, T, h, hd), hd);
                        m = p[j] > m ? p[j] : m;
                    }
                    real d1 = 0, tbar = 0;
                    for (int j = lo; j <= i; j++) {
                        p[j] = (real)exp((double)(p[j] - m));
                        d1 += p[j];
                    }
                    for (int j = lo; j <= i; j++) {
                        p[j] /= d1;
                        t[j] = ri ? dot(ri, AT(a->k, a->ld_in, b, j, T, h, hd), hd) : 0;
                        tbar += p[j] * t[j];
                    }
                    real *oi = AT(a->o, a->ld_out, b, i, T, h, hd);
                    real *obi = a->obar ? AT(a->obar, a->ld_out, b, i, T, h, hd) : NULL;
                    for (int c = 0; c < hd; c++) {
                        real acc = 0, accbar = 0;
                        for (int j = lo; j <= i; j++) {
                            real vj = AT(a->v, a->ld_in, b, j, T, h, hd)[c];
                            accbar += p[j] * vj;
                            acc += p[j] * (1 + tbar - t[j]) * vj;
                        }
                        oi[c] = acc;
                        if (obi) obi[c] = accbar;
                    }
                    a->lse[((size_t)b * H + h) * T + i] = m + (real)log((double)d1);
                    if (a->tbar) a->tbar[((size_t)b * H + h) * T + i] = tbar;
                }
        free(p);
        free(t);
    }
}

/* grads_write: the gradients start from zero */
static void zero_grads(const AttnArgs *a) {
    for (long n = 0; n < (long)a->B * a->T; n++)
        for (int c = 0; c < a->H * a->hd; c++) {
            a->dq[n * a->ld_dqkv + c] = a->dk[n * a->ld_dqkv + c] = a->dv[n * a->ld_dqkv + c] = 0;
            if (a->r) a->dr[n * a->ld_out + c] = 0;
        }
}

void cpu_attention_backward(const AttnArgs *args) {
    const AttnArgs s = attn_strides(args), *a = &s;
    const int B = a->B, T = a->T, H = a->H, hd = a->hd;
    if (a->grads_write) zero_grads(a);
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const real *qi = AT(a->q, a->ld_in, b, i, T, h, hd);
                const real *ri = a->r ? AT(a->r, a->ld_r, b, i, T, h, hd) : NULL;
                const real *gi = AT(a->dout, a->ld_out, b, i, T, h, hd);
                const real *oi = AT(a->o, a->ld_out, b, i, T, h, hd);
                const real *obi = a->r ? AT(a->obar, a->ld_out, b, i, T, h, hd) : oi;
                real *dqi = AT(a->dq, a->ld_dqkv, b, i, T, h, hd);
                real *dri = a->r ? AT(a->dr, a->ld_out, b, i, T, h, hd) : NULL;
                real lse = a->lse[((size_t)b * H + h) * T + i];
                real tbar = a->r ? a->tbar[((size_t)b * H + h) * T + i] : 0;
                real Ti = dot(gi, oi, hd), bi = dot(gi, obi, hd);
                for (int j = row_start(a, i); j <= i; j++) {
                    const real *kj = AT(a->k, a->ld_in, b, j, T, h, hd);
                    const real *vj = AT(a->v, a->ld_in, b, j, T, h, hd);
                    real p = (real)exp((double)(a->scale * dot(qi, kj, hd) - lse));
                    real t = ri ? dot(ri, kj, hd) : 0;
                    real A = dot(gi, vj, hd);
                    real dS = p * ((A - Ti) + (tbar - t) * (A - bi));
                    real dT = -p * (A - bi);
                    real w = p * (1 + tbar - t);
                    real *dkj = AT(a->dk, a->ld_dqkv, b, j, T, h, hd);
                    real *dvj = AT(a->dv, a->ld_dqkv, b, j, T, h, hd);
                    for (int c = 0; c < hd; c++) {
                        dqi[c] += a->scale * dS * kj[c];
                        dkj[c] += a->scale * dS * qi[c];
                        dvj[c] += w * gi[c];
                        if (ri) {
                            dri[c] += dT * kj[c];
                            dkj[c] += dT * ri[c];
                        }
                    }
                }
            }
}
