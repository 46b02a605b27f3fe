/* CPU reference of the state-space ops (kernels/ops_scan.h): short causal
 * softplus, Mamba-1 selective scan, Mamba-2 SSD
 * (token recurrence and chunked form). Loops are parallel over the batch only
 * and every reduction runs in a fixed order, so results do not depend on the
 * number of threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/check.h"
#include "../ops_scan.h"
#include "cpu.h"

/* Below this many inner-loop steps a parallel region costs more than it saves
 * (and oversubscribed machines make idle OpenMP threads very expensive). */
#define PAR_MIN 32768L

static inline real sigm(real x) { return (real)(1.0 / (1.0 + exp(-(double)x))); }

/* ---- softplus with a bias (Δ = softplus(raw + b), baselines.md §4.1, §5.1) ------------- */

static inline real softplus(real u) { return u > 20 ? u : (real)log1p(exp((double)u)); }
static inline real softplus_grad(real u) { return u > 20 ? 1 : sigm(u); }

static void softplus_forward(real *out, const real *x, const real *bias, int N, int C) {
#pragma omp parallel for if ((long)N * C > PAR_MIN)
    for (long n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            out[n * C + c] = softplus(x[n * C + c] + (bias ? bias[c] : 0));
}

static void softplus_backward(real *dx, real *dbias, const real *dout, const real *x,
                              const real *bias, int N, int C) {
#pragma omp parallel for if ((long)N * C > PAR_MIN)
    for (long n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            dx[n * C + c] += dout[n * C + c] * softplus_grad(x[n * C + c] + (bias ? bias[c] : 0));
    if (!dbias) return;
#pragma omp parallel for if ((long)N * C > PAR_MIN)
    for (int c = 0; c < C; c++) {
        real s = 0;
        for (long n = 0; n < N; n++) s += dout[n * C + c] * softplus_grad(x[n * C + c] + bias[c]);
        dbias[c] += s;
    }
}

/* ---- Mamba-1 selective scan (baselines.md §4.2, §4.4) -------------------------------- */

static void sscan_forward(real *y, const real *x, const real *delta, const real *A_log,
                          const real *Bm, const real *Cm, const real *D, int B, int T, int Dc,
                          int N) {
#pragma omp parallel if (B > 1 && (long)B * T * Dc * N > PAR_MIN)
    {
        real *h = xmalloc(sizeof(real) * (size_t)N), *A = xmalloc(sizeof(real) * (size_t)N);
#pragma omp for
        for (int b = 0; b < B; b++)
            for (int d = 0; d < Dc; d++) {
                for (int n = 0; n < N; n++) h[n] = 0, A[n] = -(real)exp((double)A_log[(size_t)d * N + n]);
                for (int t = 0; t < T; t++) {
                    size_t r = (size_t)b * T + t;
                    real dl = delta[r * Dc + d], xv = x[r * Dc + d], acc = 0;
                    const real *bt = Bm + r * N, *ct = Cm + r * N;
                    for (int n = 0; n < N; n++) {
                        h[n] = (real)exp((double)(dl * A[n])) * h[n] + dl * bt[n] * xv;
                        acc += ct[n] * h[n];
                    }
                    y[r * Dc + d] = acc + D[d] * xv;
                }
            }
        free(h), free(A);
    }
}

/* Reverse scan dh_t = a_{t+1} dh_{t+1} + dy_t C_t (§4.4) with the states h_t
 * recomputed per (b, d). dA and dD are summed per batch row, then over rows in
 * order. */
static void sscan_backward(real *dx, real *ddelta, real *dA_log, real *dBm, real *dCm, real *dD,
                           const real *dy, const real *x, const real *delta, const real *A_log,
                           const real *Bm, const real *Cm, const real *D, int B, int T, int Dc,
                           int N) {
    size_t DN = (size_t)Dc * N;
    real *dA_part = xcalloc((size_t)B * DN, sizeof(real));
    real *dD_part = xcalloc((size_t)B * Dc, sizeof(real));
#pragma omp parallel if (B > 1 && (long)B * T * Dc * N > PAR_MIN)
    {
        real *hs = xmalloc(sizeof(real) * (size_t)T * N), *dh = xmalloc(sizeof(real) * (size_t)N);
        real *A = xmalloc(sizeof(real) * (size_t)N);
#pragma omp for
        for (int b = 0; b < B; b++)
            for (int d = 0; d < Dc; d++) {
                for (int n = 0; n < N; n++) A[n] = -(real)exp((double)A_log[(size_t)d * N + n]);
                for (int t = 0; t < T; t++) { /* recompute h_t */
                    size_t r = (size_t)b * T + t;
                    real dl = delta[r * Dc + d], xv = x[r * Dc + d];
                    for (int n = 0; n < N; n++) {
                        real prev = t ? hs[(size_t)(t - 1) * N + n] : 0;
                        hs[(size_t)t * N + n] = (real)exp((double)(dl * A[n])) * prev + dl * Bm[r * N + n] * xv;
                    }
                }
                for (int n = 0; n < N; n++) dh[n] = 0;
                real *dAp = dA_part + (size_t)b * DN + (size_t)d * N, dDp = 0;
                for (int t = T - 1; t >= 0; t--) {
                    size_t r = (size_t)b * T + t;
                    real dl = delta[r * Dc + d], xv = x[r * Dc + d], g = dy[r * Dc + d];
                    real dxv = D[d] * g, ddl = 0;
                    dDp += g * xv;
                    for (int n = 0; n < N; n++) {
                        real ht = hs[(size_t)t * N + n], hp = t ? hs[(size_t)(t - 1) * N + n] : 0;
                        real a = (real)exp((double)(dl * A[n]));
                        dh[n] += g * Cm[r * N + n];
                        dCm[r * N + n] += g * ht;
                        dBm[r * N + n] += dh[n] * dl * xv;
                        dxv += dh[n] * dl * Bm[r * N + n];
                        ddl += dh[n] * (Bm[r * N + n] * xv + A[n] * a * hp);
                        dAp[n] += dh[n] * dl * a * hp;
                        dh[n] *= a; /* now the part of dh_{t-1} that flows through h_t */
                    }
                    dx[r * Dc + d] += dxv;
                    ddelta[r * Dc + d] += ddl;
                }
                dD_part[(size_t)b * Dc + d] = dDp;
            }
        free(hs), free(dh), free(A);
    }
    for (int b = 0; b < B; b++) {
        for (size_t i = 0; i < DN; i++) /* dA_log = dA * A, A = -exp(A_log) */
            dA_log[i] -= dA_part[(size_t)b * DN + i] * (real)exp((double)A_log[i]);
        for (int d = 0; d < Dc; d++) dD[d] += dD_part[(size_t)b * Dc + d];
    }
    free(dA_part), free(dD_part);
}

/* ---- Mamba-2 SSD (baselines.md §5.2-5.4) ----------------------------------------------
 * Per (b, head h): q_t = C_t, k_t = B_t (N), v_t = dt_t x_t (P), log-gate
 * g_t = dt_t A; state S [N, P]: S_t = exp(g_t) S_{t-1} + k_t v_t^T, y_t = S_t^T q_t. */

typedef struct {
    const SsdArgs *a;
    int b, h;
    real A;
} Head;

static inline size_t xi(const Head *s, int t) { /* offset of x/y at token t */
    return (((size_t)s->b * s->a->T + t) * s->a->H + s->h) * s->a->P;
}
static inline size_t bi(const Head *s, int t) { /* offset of B/C at token t */
    int grp = s->h / (s->a->H / s->a->G);
    return (((size_t)s->b * s->a->T + t) * s->a->G + grp) * s->a->N;
}
static inline real dt_at(const Head *s, int t) {
    return s->a->dt[((size_t)s->b * s->a->T + t) * s->a->H + s->h];
}

/* token recurrence; S [N*P] scratch; writes y; keeps all states in Ss when given */
static void ssd_head_recurrent(const Head *s, real *S, real *Ss) {
    const SsdArgs *a = s->a;
    int N = a->N, P = a->P;
    memset(S, 0, sizeof(real) * (size_t)N * P);
    for (int t = 0; t < a->T; t++) {
        real dt = dt_at(s, t), g = (real)exp((double)(dt * s->A));
        const real *x = a->x + xi(s, t), *k = a->Bm + bi(s, t), *q = a->Cm + bi(s, t);
        real *y = a->y ? a->y + xi(s, t) : NULL;
        for (int n = 0; n < N; n++)
            for (int p = 0; p < P; p++) S[n * P + p] = g * S[n * P + p] + k[n] * dt * x[p];
        if (Ss) memcpy(Ss + (size_t)t * N * P, S, sizeof(real) * (size_t)N * P);
        if (y)
            for (int p = 0; p < P; p++) {
                real acc = a->D[s->h] * x[p];
                for (int n = 0; n < N; n++) acc += q[n] * S[n * P + p];
                y[p] = acc;
            }
    }
}

/* One chunk [t0, t0+L): G[r] = local inclusive cumsum of g; seg[r*L+j] =
 * sum_{i=j+1..r} g_i for j <= r, summed directly (stable "segsum", §5.3). */
static void chunk_gates(const Head *s, int t0, int L, real *G, real *seg) {
    real acc = 0;
    for (int r = 0; r < L; r++) acc += dt_at(s, t0 + r) * s->A, G[r] = acc;
    for (int r = 0; r < L; r++) {
        real sum = 0;
        for (int j = r; j >= 0; j--) {
            seg[r * L + j] = sum;
            sum += dt_at(s, t0 + j) * s->A;
        }
    }
}

/* Chunked forward (§5.3): with S0 the state before the chunk,
 *   y_r = exp(G_r) S0^T q_r + sum_{j<=r} exp(seg_rj) (q_r.k_j) v_j + D x_r
 *   S  <- exp(G_{L-1}) S0 + sum_j exp(seg_{L-1,j}) k_j v_j^T
 * S is updated in place; y written when a->y is set. */
static void ssd_chunk_forward(const Head *s, int t0, int L, real *S, real *G, real *seg) {
    const SsdArgs *a = s->a;
    int N = a->N, P = a->P;
    chunk_gates(s, t0, L, G, seg);
    if (a->y)
        for (int r = 0; r < L; r++) {
            const real *q = a->Cm + bi(s, t0 + r), *xr = a->x + xi(s, t0 + r);
            real *y = a->y + xi(s, t0 + r), eg = (real)exp((double)G[r]);
            for (int p = 0; p < P; p++) {
                real acc = 0;
                for (int n = 0; n < N; n++) acc += q[n] * S[n * P + p];
                y[p] = eg * acc + a->D[s->h] * xr[p];
            }
            for (int j = 0; j <= r; j++) {
                const real *k = a->Bm + bi(s, t0 + j), *xj = a->x + xi(s, t0 + j);
                real qk = 0;
                for (int n = 0; n < N; n++) qk += q[n] * k[n];
                real w = (real)exp((double)seg[r * L + j]) * qk * dt_at(s, t0 + j);
                for (int p = 0; p < P; p++) y[p] += w * xj[p];
            }
        }
    real eC = (real)exp((double)G[L - 1]);
    for (int i = 0; i < N * P; i++) S[i] *= eC;
    for (int j = 0; j < L; j++) {
        const real *k = a->Bm + bi(s, t0 + j), *xj = a->x + xi(s, t0 + j);
        real w = (real)exp((double)seg[(L - 1) * L + j]) * dt_at(s, t0 + j);
        for (int n = 0; n < N; n++)
            for (int p = 0; p < P; p++) S[n * P + p] += w * k[n] * xj[p];
    }
}

static void ssd_forward(const SsdArgs *a) {
    int C = a->chunk, maxL = C > 0 && C < a->T ? C : a->T;
#pragma omp parallel if (a->B > 1 && (long)a->B * a->T * a->H * a->P * a->N > PAR_MIN)
    {
        real *S = xmalloc(sizeof(real) * (size_t)a->N * a->P);
        real *G = xmalloc(sizeof(real) * (size_t)maxL);
        real *seg = xmalloc(sizeof(real) * (C > 0 ? (size_t)maxL * maxL : 1));
#pragma omp for
        for (int b = 0; b < a->B; b++)
            for (int h = 0; h < a->H; h++) {
                Head s = {a, b, h, -(real)exp((double)a->A_log[h])};
                if (C <= 0) {
                    ssd_head_recurrent(&s, S, NULL);
                    continue;
                }
                memset(S, 0, sizeof(real) * (size_t)a->N * a->P);
                for (int t0 = 0; t0 < a->T; t0 += maxL)
                    ssd_chunk_forward(&s, t0, a->T - t0 < maxL ? a->T - t0 : maxL, S, G, seg);
            }
        free(S), free(G), free(seg);
    }
}

/* Maps the gradients of (q, k, v, g) at token t back to (x, dt, A, B, C, D):
 * v = dt x, g = dt A. dApart/dDpart collect this head's dA and dD. */
static void ssd_map_back(const Head *s, int t, const real *dq, const real *dk, const real *dv,
                         real dg, real *dApart, real *dDpart) {
    const SsdArgs *a = s->a;
    int N = a->N, P = a->P;
    real dt = dt_at(s, t), ddt = s->A * dg, dD = 0;
    const real *x = a->x + xi(s, t), *dy = a->dy + xi(s, t);
    real *dx = a->dx + xi(s, t);
    for (int p = 0; p < P; p++) {
        ddt += x[p] * dv[p];
        dD += x[p] * dy[p];
        dx[p] += dt * dv[p] + a->D[s->h] * dy[p];
    }
    a->ddt[((size_t)s->b * a->T + t) * a->H + s->h] += ddt;
    for (int n = 0; n < N; n++) a->dBm[bi(s, t) + n] += dk[n], a->dCm[bi(s, t) + n] += dq[n];
    *dApart += dt * dg;
    *dDpart += dD;
}

/* Recurrent backward: dS accumulates q_t dy_t^T in reverse and decays by a_t. */
static void ssd_head_backward_recurrent(const Head *s, real *S, real *Ss, real *dS, real *dq,
                                        real *dk, real *dv, real *dApart, real *dDpart) {
    const SsdArgs *a = s->a;
    int N = a->N, P = a->P;
    ssd_head_recurrent(s, S, Ss);
    memset(dS, 0, sizeof(real) * (size_t)N * P);
    for (int t = a->T - 1; t >= 0; t--) {
        real dt = dt_at(s, t), g = (real)exp((double)(dt * s->A));
        const real *x = a->x + xi(s, t), *k = a->Bm + bi(s, t), *q = a->Cm + bi(s, t);
        const real *dy = a->dy + xi(s, t), *St = Ss + (size_t)t * N * P;
        const real *Sp = t ? Ss + (size_t)(t - 1) * N * P : NULL;
        real da = 0;
        for (int n = 0; n < N; n++) {
            dq[n] = 0;
            for (int p = 0; p < P; p++) {
                dS[n * P + p] += q[n] * dy[p];
                dq[n] += St[n * P + p] * dy[p];
            }
        }
        for (int n = 0; n < N; n++) {
            dk[n] = 0;
            for (int p = 0; p < P; p++) dk[n] += dS[n * P + p] * dt * x[p];
        }
        for (int p = 0; p < P; p++) {
            dv[p] = 0;
            for (int n = 0; n < N; n++) dv[p] += dS[n * P + p] * k[n];
        }
        if (Sp)
            for (int i = 0; i < N * P; i++) da += dS[i] * Sp[i];
        ssd_map_back(s, t, dq, dk, dv, g * da, dApart, dDpart);
        for (int i = 0; i < N * P; i++) dS[i] *= g;
    }
}

/* Chunked backward (§5.4) for one chunk with start state S0 and dS = gradient
 * of the state after the chunk (updated in place to the gradient of S0):
 *   dq_r = exp(G_r) S0 dy_r + sum_{j<=r} e_rj (dy_r.v_j) k_j
 *   dk_j = sum_{r>=j} e_rj (dy_r.v_j) q_r + exp(seg_{L-1,j}) dS v_j        (2nd term: dk_inter)
 *   dv_j = sum_{r>=j} e_rj (q_r.k_j) dy_r + exp(seg_{L-1,j}) dS^T k_j
 *   dG_r = q_r.dq_r - k_r.dk_r;  dG_{L-1} += exp(G_{L-1}) <S0, dS> + sum_j k_j.dk_inter_j
 *   dg_t = sum_{r>=t} dG_r;  dS <- exp(G_{L-1}) dS + sum_r exp(G_r) q_r dy_r^T */
typedef struct {
    real *G, *seg, *dq, *dk, *dv, *dG; /* [L], [L*L], [L*N], [L*N], [L*P], [L] */
} ChunkScratch;

static void ssd_chunk_backward(const Head *s, int t0, int L, const real *S0, real *dS,
                               ChunkScratch *w, real *dApart, real *dDpart) {
    const SsdArgs *a = s->a;
    int N = a->N, P = a->P;
    real *G = w->G, *seg = w->seg, *dq = w->dq, *dk = w->dk, *dv = w->dv, *dG = w->dG;
    chunk_gates(s, t0, L, G, seg);
    memset(dq, 0, sizeof(real) * (size_t)L * N);
    memset(dk, 0, sizeof(real) * (size_t)L * N);
    memset(dv, 0, sizeof(real) * (size_t)L * P);
    real eC = (real)exp((double)G[L - 1]), inter_G = 0;
    for (int j = 0; j < L; j++) { /* inter-chunk terms through dS */
        const real *k = a->Bm + bi(s, t0 + j), *xj = a->x + xi(s, t0 + j);
        real e = (real)exp((double)seg[(L - 1) * L + j]), dt = dt_at(s, t0 + j);
        for (int n = 0; n < N; n++) {
            real acc = 0;
            for (int p = 0; p < P; p++) acc += dS[n * P + p] * dt * xj[p];
            dk[j * N + n] = e * acc;
            inter_G += k[n] * dk[j * N + n];
        }
        for (int p = 0; p < P; p++) {
            real acc = 0;
            for (int n = 0; n < N; n++) acc += dS[n * P + p] * k[n];
            dv[j * P + p] = e * acc;
        }
    }
    for (int r = 0; r < L; r++) { /* state -> output and intra-chunk terms */
        const real *q = a->Cm + bi(s, t0 + r), *dy = a->dy + xi(s, t0 + r);
        real eg = (real)exp((double)G[r]);
        for (int n = 0; n < N; n++) {
            real acc = 0;
            for (int p = 0; p < P; p++) acc += S0[n * P + p] * dy[p];
            dq[r * N + n] += eg * acc;
        }
        for (int j = 0; j <= r; j++) {
            const real *k = a->Bm + bi(s, t0 + j), *xj = a->x + xi(s, t0 + j);
            real e = (real)exp((double)seg[r * L + j]), dt = dt_at(s, t0 + j), dyv = 0, qk = 0;
            for (int p = 0; p < P; p++) dyv += dy[p] * dt * xj[p];
            for (int n = 0; n < N; n++) qk += q[n] * k[n];
            for (int n = 0; n < N; n++) {
                dq[r * N + n] += e * dyv * k[n];
                dk[j * N + n] += e * dyv * q[n];
            }
            for (int p = 0; p < P; p++) dv[j * P + p] += e * qk * dy[p];
        }
    }
    for (int r = 0; r < L; r++) {
        const real *q = a->Cm + bi(s, t0 + r), *k = a->Bm + bi(s, t0 + r);
        real v = 0;
        for (int n = 0; n < N; n++) v += q[n] * dq[r * N + n] - k[n] * dk[r * N + n];
        dG[r] = v;
    }
    real sd = 0;
    for (int i = 0; i < N * P; i++) sd += S0[i] * dS[i];
    dG[L - 1] += eC * sd + inter_G;
    real dg = 0;
    for (int r = L - 1; r >= 0; r--) { /* reverse cumsum, then map back */
        dg += dG[r];
        ssd_map_back(s, t0 + r, dq + (size_t)r * N, dk + (size_t)r * N, dv + (size_t)r * P, dg,
                     dApart, dDpart);
    }
    for (int i = 0; i < N * P; i++) dS[i] *= eC;
    for (int r = 0; r < L; r++) {
        const real *q = a->Cm + bi(s, t0 + r), *dy = a->dy + xi(s, t0 + r);
        real eg = (real)exp((double)G[r]);
        for (int n = 0; n < N; n++)
            for (int p = 0; p < P; p++) dS[n * P + p] += eg * q[n] * dy[p];
    }
}

static void ssd_backward(const SsdArgs *a) {
    int C = a->chunk, T = a->T, N = a->N, P = a->P, H = a->H;
    int maxL = C > 0 && C < T ? C : T, nch = (T + maxL - 1) / maxL;
    size_t NP = (size_t)N * P;
    real *dA_part = xcalloc((size_t)a->B * H, sizeof(real));
    real *dD_part = xcalloc((size_t)a->B * H, sizeof(real));
    SsdArgs fa = *a; /* the recomputed forward must not write y */
    fa.y = NULL;
#pragma omp parallel if (a->B > 1 && (long)a->B * T * H * P * N > PAR_MIN)
    {
        /* recurrence keeps every state; the chunked form only the chunk starts */
        size_t nstates = C > 0 ? (size_t)nch + 1 : (size_t)T;
        real *S = xmalloc(sizeof(real) * NP), *Ss = xmalloc(sizeof(real) * NP * nstates);
        real *dS = xmalloc(sizeof(real) * NP);
        ChunkScratch w = {xmalloc(sizeof(real) * (size_t)maxL),
                          xmalloc(sizeof(real) * (C > 0 ? (size_t)maxL * maxL : 1)),
                          xmalloc(sizeof(real) * (size_t)maxL * N),
                          xmalloc(sizeof(real) * (size_t)maxL * N),
                          xmalloc(sizeof(real) * (size_t)maxL * P), xmalloc(sizeof(real) * (size_t)maxL)};
#pragma omp for
        for (int b = 0; b < a->B; b++)
            for (int h = 0; h < H; h++) {
                Head s = {&fa, b, h, -(real)exp((double)a->A_log[h])};
                real *dAp = dA_part + (size_t)b * H + h, *dDp = dD_part + (size_t)b * H + h;
                if (C <= 0) {
                    ssd_head_backward_recurrent(&s, S, Ss, dS, w.dq, w.dk, w.dv, dAp, dDp);
                    continue;
                }
                /* forward pass over chunks keeps the state before each chunk */
                memset(Ss, 0, sizeof(real) * NP);
                for (int c = 0; c < nch; c++) {
                    int t0 = c * maxL, L = T - t0 < maxL ? T - t0 : maxL;
                    memcpy(Ss + (size_t)(c + 1) * NP, Ss + (size_t)c * NP, sizeof(real) * NP);
                    ssd_chunk_forward(&s, t0, L, Ss + (size_t)(c + 1) * NP, w.G, w.seg);
                }
                memset(dS, 0, sizeof(real) * NP);
                for (int c = nch - 1; c >= 0; c--) {
                    int t0 = c * maxL, L = T - t0 < maxL ? T - t0 : maxL;
                    ssd_chunk_backward(&s, t0, L, Ss + (size_t)c * NP, dS, &w, dAp, dDp);
                }
            }
        free(S), free(Ss), free(dS);
        free(w.G), free(w.seg), free(w.dq), free(w.dk), free(w.dv), free(w.dG);
    }
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < H; h++) { /* dA_log = dA * A */
            a->dA_log[h] -= dA_part[(size_t)b * H + h] * (real)exp((double)a->A_log[h]);
            a->dD[h] += dD_part[(size_t)b * H + h];
        }
    free(dA_part), free(dD_part);
}

const ScanOps cpu_scan_ops = {
    .softplus_forward = softplus_forward,
    .softplus_backward = softplus_backward,
    .selective_scan_forward = sscan_forward,
    .selective_scan_backward = sscan_backward,
    .ssd_forward = ssd_forward,
    .ssd_backward = ssd_backward,
};
