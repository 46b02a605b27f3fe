/* CPU reference of the delta-rule / MesaNet op group (kernels/ops_delta.h).
 *
 * The cores run the exact recurrences (baselines.md §6.2-§8.2, §9.2) with one
 * OpenMP task per (batch, head): outputs of different tasks never overlap, so
 * results do not depend on the thread count. The backward passes are the
 * reverse recurrences of §6.4(a)/§8.4(a) and the implicit-differentiation
 * backward of §9.4, recomputing states chunk by chunk from checkpoints. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/check.h"
#include "../ops_delta.h"
#include "cpu.h"

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
/* softplus with the FLA/Mamba threshold (x > 20: x) */
static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

/* ---- L2 norm (§1.2) -------------------------------------------------------------- */

static void l2norm_forward(real *y, real *rinv, const real *x, int N, int D, real eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *xr = x + (size_t)n * D;
        double ss = 0;
        for (int i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
        double r = 1.0 / sqrt(ss + eps);
        rinv[n] = (real)r;
        for (int i = 0; i < D; i++) y[(size_t)n * D + i] = (real)(xr[i] * r);
    }
}

static void l2norm_backward(real *dx, const real *dy, const real *y, const real *rinv, int N,
                            int D) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *g = dy + (size_t)n * D, *yr = y + (size_t)n * D;
        double dot = 0;
        for (int i = 0; i < D; i++) dot += (double)g[i] * yr[i];
        for (int i = 0; i < D; i++) dx[(size_t)n * D + i] += (real)(rinv[n] * (g[i] - dot * yr[i]));
    }
}

/* ---- elementwise maps, gates ----------------------------------------------------- */

static void map_forward(real *y, const real *x, long n, int kind, real scale, real shift) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        double v = x[i];
        if (kind == DELTA_MAP_SIGMOID) y[i] = (real)(scale * sigm(v));
        else if (kind == DELTA_MAP_SOFTPLUS) y[i] = (real)(softplus(v) + shift);
        else y[i] = (real)(-softplus(-v));
    }
}

static void map_backward(real *dx, const real *dy, const real *x, long n, int kind, real scale) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        double v = x[i], s = sigm(v), d;
        if (kind == DELTA_MAP_SIGMOID) d = scale * s * (1 - s);
        else if (kind == DELTA_MAP_SOFTPLUS) d = v > 20 ? 1 : s;
        else d = -v > 20 ? 0 : 1 - s; /* d/dx logsigmoid(x) = sigmoid(-x) */
        dx[i] += (real)(dy[i] * d);
    }
}

/* g for one element: default -e^{A_log} softplus(a + b), or with lb < 0 the KDA
 * "safe gate" lb * sigmoid(e^{A_log} (a + b)) (§8.1) */
static double decay_value(double a, double A_log, double bias, double lb) {
    double z = a + bias;
    return lb < 0 ? lb * sigm(exp(A_log) * z) : -exp(A_log) * softplus(z);
}

static void decay_forward(real *g, const real *a, const real *A_log, const real *dt_bias, int N,
                          int H, int Dg, real lb) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < H * Dg; j++) {
            size_t o = (size_t)n * H * Dg + j;
            g[o] = (real)decay_value(a[o], A_log[j / Dg], dt_bias[j], lb);
        }
}

/* dg/dz with z = a + bias, and dg/dA_log, for one element (§7.4 step 7, §8.4 step 7) */
static void decay_grads(double a, double A_log, double bias, double lb, double *dz, double *dA) {
    double z = a + bias, eA = exp(A_log);
    if (lb < 0) {
        double s = sigm(eA * z);
        *dz = lb * s * (1 - s) * eA;
        *dA = lb * s * (1 - s) * eA * z;
    } else {
        *dz = -eA * (z > 20 ? 1 : sigm(z));
        *dA = -eA * softplus(z); /* = g */
    }
}

static void decay_backward(real *da, real *dA_log, real *ddt_bias, const real *dg, const real *a,
                           const real *A_log, const real *dt_bias, int N, int H, int Dg, real lb) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < H * Dg; j++) {
            size_t o = (size_t)n * H * Dg + j;
            double dz, dA;
            decay_grads(a[o], A_log[j / Dg], dt_bias[j], lb, &dz, &dA);
            da[o] += (real)(dz * dg[o]);
        }
    /* parameter gradients reduce over tokens: one channel per task, then per head, in a
     * fixed order */
    double *sA = xcalloc((size_t)H * Dg, sizeof(double));
#pragma omp parallel for
    for (int j = 0; j < H * Dg; j++) {
        double sb = 0, sa = 0;
        for (int n = 0; n < N; n++) {
            size_t o = (size_t)n * H * Dg + j;
            double dz, dA;
            decay_grads(a[o], A_log[j / Dg], dt_bias[j], lb, &dz, &dA);
            sb += dz * dg[o], sa += dA * dg[o];
        }
        ddt_bias[j] += (real)sb;
        sA[j] = sa;
    }
    for (int h = 0; h < H; h++) {
        double s = 0;
        for (int i = 0; i < Dg; i++) s += sA[h * Dg + i];
        dA_log[h] += (real)s;
    }
    free(sA);
}

static void gate_mul_forward(real *y, const real *x, const real *z, long n, int act) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        double s = sigm(z[i]);
        y[i] = (real)(x[i] * (act == DELTA_ACT_SILU ? z[i] * s : s));
    }
}

static void gate_mul_backward(real *dx, real *dz, const real *dy, const real *x, const real *z,
                              long n, int act) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        double s = sigm(z[i]);
        double a = act == DELTA_ACT_SILU ? z[i] * s : s;
        double da = act == DELTA_ACT_SILU ? s * (1 + z[i] * (1 - s)) : s * (1 - s);
        dx[i] += (real)(dy[i] * a);
        dz[i] += (real)(dy[i] * x[i] * da);
    }
}

/* ---- gated delta rule (§6.2, §7.2, §8.2; backward §8.4(a)) ----------------------- */

/* per-channel decay alpha of step t for head h (1 without gate) */
static void delta_alpha(const DeltaArgs *a, size_t row, int h, double *alpha) {
    int dk = a->K;
    for (int i = 0; i < dk; i++) {
        if (a->gate == DELTA_GATE_NONE) alpha[i] = 1;
        else if (a->gate == DELTA_GATE_SCALAR) alpha[i] = exp((double)a->g[row * a->H + h]);
        else alpha[i] = exp((double)a->g[(row * a->H + h) * dk + i]);
    }
}

/* one forward step on state S [dk,dv] (double); writes u (before beta) if asked */
static void delta_step(const DeltaArgs *a, double *S, size_t row, int h, double *alpha,
                       double *u, real *o) {
    int dk = a->K, dv = a->V, H = a->H;
    const real *k = a->k + (row * H + h) * dk, *v = a->v + (row * H + h) * dv;
    double beta = a->beta[row * H + h];
    delta_alpha(a, row, h, alpha);
    for (int i = 0; i < dk; i++)
        for (int j = 0; j < dv; j++) S[i * dv + j] *= alpha[i];
    for (int j = 0; j < dv; j++) {
        double s = v[j];
        for (int i = 0; i < dk; i++) s -= S[i * dv + j] * k[i];
        u[j] = s;
    }
    for (int i = 0; i < dk; i++)
        for (int j = 0; j < dv; j++) S[i * dv + j] += k[i] * beta * u[j];
    if (o) {
        const real *q = a->q + (row * H + h) * dk;
        for (int j = 0; j < dv; j++) {
            double s = 0;
            for (int i = 0; i < dk; i++) s += S[i * dv + j] * q[i];
            o[(row * H + h) * dv + j] = (real)(a->scale * s);
        }
    }
}

static void delta_forward(const DeltaArgs *a) {
    int B = a->B, T = a->T, H = a->H, dk = a->K, dv = a->V;
    int nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    size_t SL = (size_t)dk * dv;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            double *S = xcalloc(SL + (size_t)dk + dv, sizeof(double));
            double *alpha = S + SL, *u = alpha + dk;
            real *ck = a->ckpt + ((size_t)b * H + h) * nck * SL;
            for (int t = 0; t < T; t++) {
                if (t % DELTA_CKPT == 0)
                    for (size_t e = 0; e < SL; e++) ck[(size_t)(t / DELTA_CKPT) * SL + e] = (real)S[e];
                delta_step(a, S, (size_t)b * T + t, h, alpha, u, a->o);
            }
            free(S);
        }
}

static void delta_backward(const DeltaArgs *a) {
    int B = a->B, T = a->T, H = a->H, dk = a->K, dv = a->V;
    int nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    size_t SL = (size_t)dk * dv;
    double sc = a->scale;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            /* states of one chunk [C+1][SL], u per step [C][dv], G, dS~, small vectors */
            double *St = xmalloc(sizeof(double) * ((DELTA_CKPT + 1) * SL + DELTA_CKPT * (size_t)dv +
                                                   2 * SL + 2 * (size_t)dk + 2 * (size_t)dv));
            double *U = St + (DELTA_CKPT + 1) * SL, *G = U + DELTA_CKPT * (size_t)dv, *dSt = G + SL;
            double *alpha = dSt + SL, *dkv = alpha + dk, *dd = dkv + dk, *du = dd + dv;
            memset(G, 0, sizeof(double) * SL); /* dL/dS_T = 0 */
            const real *ck = a->ckpt + ((size_t)b * H + h) * nck * SL;
            for (int c = nck - 1; c >= 0; c--) {
                int t0 = c * DELTA_CKPT, t1 = t0 + DELTA_CKPT < T ? t0 + DELTA_CKPT : T;
                for (size_t e = 0; e < SL; e++) St[e] = ck[(size_t)c * SL + e];
                for (int t = t0; t < t1; t++) {
                    memcpy(St + (t - t0 + 1) * SL, St + (t - t0) * SL, sizeof(double) * SL);
                    delta_step(a, St + (t - t0 + 1) * SL, (size_t)b * T + t, h, alpha,
                               U + (size_t)(t - t0) * dv, NULL);
                }
                for (int t = t1 - 1; t >= t0; t--) {
                    size_t row = (size_t)b * T + t, hi = row * H + h;
                    const double *Sp = St + (t - t0) * SL, *Sc = St + (t - t0 + 1) * SL;
                    const double *u = U + (size_t)(t - t0) * dv;
                    const real *q = a->q + hi * dk, *k = a->k + hi * dk, *dO = a->dout + hi * dv;
                    double beta = a->beta[hi];
                    delta_alpha(a, row, h, alpha);
                    /* readout o = S_t^T (s q): G += s q dO^T; dq = s S_t dO */
                    for (int i = 0; i < dk; i++) {
                        double s = 0;
                        for (int j = 0; j < dv; j++) {
                            G[i * dv + j] += sc * q[i] * dO[j];
                            s += Sc[i * dv + j] * dO[j];
                        }
                        a->dq[hi * dk + i] += (real)(sc * s);
                    }
                    /* S_t = S~ + k (beta u)^T */
                    for (int j = 0; j < dv; j++) {
                        double s = 0;
                        for (int i = 0; i < dk; i++) s += G[i * dv + j] * k[i];
                        dd[j] = s; /* d(beta u) */
                    }
                    double dbeta = 0;
                    for (int j = 0; j < dv; j++) dbeta += dd[j] * u[j], du[j] = beta * dd[j];
                    a->dbeta[hi] += (real)dbeta;
                    for (int j = 0; j < dv; j++) a->dv[hi * dv + j] += (real)du[j];
                    /* u = v - S~^T k, S~ = Diag(alpha) S_{t-1} */
                    for (int i = 0; i < dk; i++) {
                        double s = 0;
                        for (int j = 0; j < dv; j++)
                            s += G[i * dv + j] * beta * u[j] - alpha[i] * Sp[i * dv + j] * du[j];
                        dkv[i] = s;
                        a->dk[hi * dk + i] += (real)s;
                    }
                    double dgs = 0;
                    for (int i = 0; i < dk; i++) {
                        double s = 0;
                        for (int j = 0; j < dv; j++) {
                            double v = G[i * dv + j] - k[i] * du[j];
                            dSt[i * dv + j] = v;
                            s += v * Sp[i * dv + j];
                        }
                        s *= alpha[i]; /* dg_i = alpha_i <dS~_i, S_{t-1,i}> */
                        if (a->gate == DELTA_GATE_CHANNEL) a->dg[hi * dk + i] += (real)s;
                        dgs += s;
                    }
                    if (a->gate == DELTA_GATE_SCALAR) a->dg[hi] += (real)dgs;
                    for (int i = 0; i < dk; i++)
                        for (int j = 0; j < dv; j++) G[i * dv + j] = alpha[i] * dSt[i * dv + j];
                }
            }
            free(St);
        }
}

/* ---- MesaNet (§9.2-§9.4) --------------------------------------------------------- */

/* x = (Hkk + Diag(lam))^{-1} b; work >= d*d + 3d doubles */
static void mesa_solve(const double *Hkk, const real *lam, const double *b, double *x, int d,
                       int steps, double eps, double *work) {
    if (steps == 0) {
        /* exact: Cholesky A = L L^T (A is SPD: Hkk PSD, lam >= lower bound > 0) */
        double *L = work;
        for (int i = 0; i < d; i++)
            for (int j = 0; j <= i; j++) {
                double s = Hkk[i * d + j] + (i == j ? (double)lam[i] : 0);
                for (int m = 0; m < j; m++) s -= L[i * d + m] * L[j * d + m];
                if (i == j) L[i * d + i] = sqrt(s > 1e-300 ? s : 1e-300);
                else L[i * d + j] = s / L[j * d + j];
            }
        for (int i = 0; i < d; i++) {
            double s = b[i];
            for (int m = 0; m < i; m++) s -= L[i * d + m] * x[m];
            x[i] = s / L[i * d + i];
        }
        for (int i = d - 1; i >= 0; i--) {
            double s = x[i];
            for (int m = i + 1; m < d; m++) s -= L[m * d + i] * x[m];
            x[i] = s / L[i * d + i];
        }
        return;
    }
    /* CG from x0 = 0 with a fixed step count (§9.3); stops early only on an exactly
     * zero residual (eps = 0 would otherwise divide 0 by 0) */
    double *r = work, *p = r + d, *z = p + d;
    double delta = 0;
    for (int i = 0; i < d; i++) x[i] = 0, r[i] = b[i], p[i] = b[i], delta += b[i] * b[i];
    for (int it = 0; it < steps && delta > 0; it++) {
        double pz = 0;
        for (int i = 0; i < d; i++) {
            double s = (double)lam[i] * p[i];
            for (int j = 0; j < d; j++) s += Hkk[i * d + j] * p[j];
            z[i] = s;
            pz += p[i] * s;
        }
        double al = delta / (pz + eps), nd = 0;
        for (int i = 0; i < d; i++) x[i] += al * p[i], r[i] -= al * z[i], nd += r[i] * r[i];
        double bt = nd / (delta + eps);
        for (int i = 0; i < d; i++) p[i] = r[i] + bt * p[i];
        delta = nd;
    }
}

/* one state update: Hkk = gamma Hkk + beta k k^T, Hkv = gamma Hkv + beta k v^T */
static void mesa_update(const MesaArgs *a, double *Hkk, double *Hkv, size_t hi) {
    int dk = a->K, dv = a->V;
    double gamma = a->g ? exp((double)a->g[hi]) : 1, beta = a->beta[hi];
    const real *k = a->k + hi * dk, *v = a->v + hi * dv;
    for (int i = 0; i < dk; i++) {
        for (int j = 0; j < dk; j++) Hkk[i * dk + j] = gamma * Hkk[i * dk + j] + beta * k[i] * k[j];
        for (int j = 0; j < dv; j++) Hkv[i * dv + j] = gamma * Hkv[i * dv + j] + beta * k[i] * v[j];
    }
}

static void mesa_forward(const MesaArgs *a) {
    int B = a->B, T = a->T, H = a->H, dk = a->K, dv = a->V;
    int nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    size_t KK = (size_t)dk * dk, SL = KK + (size_t)dk * dv;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            double *Hs = xcalloc(SL + KK + 6 * (size_t)dk, sizeof(double));
            double *Hkk = Hs, *Hkv = Hs + KK, *work = Hs + SL, *qd = work + KK + 3 * dk, *x = qd + dk;
            real *ck = a->ckpt + ((size_t)b * H + h) * nck * SL;
            const real *lam = a->lam + (size_t)h * dk;
            for (int t = 0; t < T; t++) {
                size_t hi = ((size_t)b * T + t) * H + h;
                if (t % DELTA_CKPT == 0)
                    for (size_t e = 0; e < SL; e++) ck[(size_t)(t / DELTA_CKPT) * SL + e] = (real)Hs[e];
                mesa_update(a, Hkk, Hkv, hi);
                for (int i = 0; i < dk; i++) qd[i] = a->q[hi * dk + i];
                mesa_solve(Hkk, lam, qd, x, dk, a->cg_steps, a->cg_eps, work);
                for (int i = 0; i < dk; i++) a->qstar[hi * dk + i] = (real)x[i];
                for (int j = 0; j < dv; j++) {
                    double s = 0;
                    for (int i = 0; i < dk; i++) s += Hkv[i * dv + j] * x[i];
                    a->o[hi * dv + j] = (real)s;
                }
            }
            free(Hs);
        }
}

static void mesa_backward(const MesaArgs *a) {
    int B = a->B, T = a->T, H = a->H, dk = a->K, dv = a->V;
    int nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    size_t KK = (size_t)dk * dk, KV = (size_t)dk * dv, SL = KK + KV;
    /* dlam reduces over the batch: per-(b,h) partial sums, added in a fixed order */
    double *dlam_part = xcalloc((size_t)B * H * dk, sizeof(double));
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            double *St = xmalloc(sizeof(double) * ((DELTA_CKPT + 1) * SL + SL + KK + 6 * (size_t)dk));
            double *Gkk = St + (DELTA_CKPT + 1) * SL, *Gkv = Gkk + KK, *work = Gkv + KV;
            double *dqs = work + KK + 3 * dk, *dq = dqs + dk, *qs = dq + dk;
            double *dl = dlam_part + ((size_t)b * H + h) * dk;
            memset(Gkk, 0, sizeof(double) * SL);
            const real *ck = a->ckpt + ((size_t)b * H + h) * nck * SL;
            const real *lam = a->lam + (size_t)h * dk;
            for (int c = nck - 1; c >= 0; c--) {
                int t0 = c * DELTA_CKPT, t1 = t0 + DELTA_CKPT < T ? t0 + DELTA_CKPT : T;
                for (size_t e = 0; e < SL; e++) St[e] = ck[(size_t)c * SL + e];
                for (int t = t0; t < t1; t++) {
                    double *nx = St + (t - t0 + 1) * SL;
                    memcpy(nx, nx - SL, sizeof(double) * SL);
                    mesa_update(a, nx, nx + KK, ((size_t)b * T + t) * H + h);
                }
                for (int t = t1 - 1; t >= t0; t--) {
                    size_t hi = ((size_t)b * T + t) * H + h;
                    const double *Pkk = St + (t - t0) * SL, *Pkv = Pkk + KK;
                    const double *Ckk = Pkk + SL, *Ckv = Ckk + KK;
                    const real *k = a->k + hi * dk, *v = a->v + hi * dv, *dO = a->dout + hi * dv;
                    double gamma = a->g ? exp((double)a->g[hi]) : 1, beta = a->beta[hi];
                    for (int i = 0; i < dk; i++) {
                        double s = 0;
                        for (int j = 0; j < dv; j++) s += Ckv[i * dv + j] * dO[j];
                        dqs[i] = s; /* dq* = Hkv_t dO */
                        qs[i] = a->qstar[hi * dk + i];
                    }
                    mesa_solve(Ckk, lam, dqs, dq, dk, a->cg_steps, a->cg_eps, work);
                    for (int i = 0; i < dk; i++) {
                        a->dq[hi * dk + i] += (real)dq[i];
                        dl[i] -= dq[i] * qs[i];
                    }
                    /* Gkv_t = gamma_{t+1} Gkv_{t+1} + q* dO^T; Gkk_t = ... - dq q*^T */
                    for (int i = 0; i < dk; i++) {
                        for (int j = 0; j < dv; j++) Gkv[i * dv + j] += qs[i] * dO[j];
                        for (int j = 0; j < dk; j++) Gkk[i * dk + j] -= dq[i] * qs[j];
                    }
                    double dbeta = 0, dgam = 0;
                    for (int j = 0; j < dv; j++) {
                        double s = 0;
                        for (int i = 0; i < dk; i++) s += Gkv[i * dv + j] * k[i];
                        a->dv[hi * dv + j] += (real)(beta * s);
                        dbeta += s * v[j];
                    }
                    for (int i = 0; i < dk; i++) {
                        double s = 0, s2 = 0;
                        for (int j = 0; j < dv; j++) s += Gkv[i * dv + j] * v[j];
                        for (int j = 0; j < dk; j++) {
                            s2 += (Gkk[i * dk + j] + Gkk[j * dk + i]) * k[j];
                            dbeta += k[i] * Gkk[i * dk + j] * k[j];
                        }
                        a->dk[hi * dk + i] += (real)(beta * (s + s2));
                    }
                    a->dbeta[hi] += (real)dbeta;
                    if (a->g) {
                        for (size_t e = 0; e < KK; e++) dgam += Gkk[e] * Pkk[e];
                        for (size_t e = 0; e < KV; e++) dgam += Gkv[e] * Pkv[e];
                        a->dg[hi] += (real)(gamma * dgam);
                    }
                    for (size_t e = 0; e < SL; e++) Gkk[e] *= gamma; /* Gkk, Gkv contiguous */
                }
            }
            free(St);
        }
    for (int h = 0; h < H; h++)
        for (int i = 0; i < dk; i++) {
            double s = 0;
            for (int b = 0; b < B; b++) s += dlam_part[((size_t)b * H + h) * dk + i];
            a->dlam[(size_t)h * dk + i] += (real)s;
        }
    free(dlam_part);
}

const DeltaOps cpu_delta_ops = {
    .l2norm_forward = l2norm_forward,
    .l2norm_backward = l2norm_backward,
    .map_forward = map_forward,
    .map_backward = map_backward,
    .decay_forward = decay_forward,
    .decay_backward = decay_backward,
    .gate_mul_forward = gate_mul_forward,
    .gate_mul_backward = gate_mul_backward,
    .delta_forward = delta_forward,
    .delta_backward = delta_backward,
    .mesa_forward = mesa_forward,
    .mesa_backward = mesa_backward,
};

