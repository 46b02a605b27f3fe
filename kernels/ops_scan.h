/* Ops of the state-space mixers (Mamba-1 selective scan, Mamba-2 SSD) and
 * softplus with a bias (the short causal convolution is ops->conv_*).
 * Reached through ops->scan; kernels/cpu/scan_cpu.c is the reference.
 *
 * Conventions as in ops.h: row-major, contiguous buffers, [B, T, ...] with
 * tokens of one sequence adjacent; `*_forward` WRITES its outputs,
 * `*_backward` ACCUMULATES (+=) into every gradient buffer. A gradient pointer
 * may be NULL when the caller does not need it (only where noted). */
#ifndef PLAB_OPS_SCAN_H
#define PLAB_OPS_SCAN_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Mamba-2 SSD arguments (baselines.md §5.2). One head h reads group
 * h / (H / G) of B and C. A = -exp(A_log[h]).
 *   x, y, dy, dx: [B, T, H, P];  dt, ddt: [B, T, H] (already softplus'd)
 *   Bm, Cm, dBm, dCm: [B, T, G, N];  A_log, D, dA_log, dD: [H]
 * chunk: 0 = token-by-token recurrence; C > 0 = chunked SSD (§5.3, §5.4)
 * with chunks of C tokens (the last one may be shorter). Both are exact. */
typedef struct {
    int B, T, H, P, G, N, chunk;
    const real *x, *dt, *A_log, *Bm, *Cm, *D;
    real *y;
    /* backward */
    const real *dy;
    real *dx, *ddt, *dA_log, *dBm, *dCm, *dD;
} SsdArgs;

typedef struct ScanOps {
    /* out[n,c] = softplus(x[n,c] + bias[c]) (bias may be NULL); x, out [N, C].
     * softplus(u) = u above 20, log1p(exp(u)) otherwise (Mamba's threshold). */
    void (*softplus_forward)(real *out, const real *x, const real *bias, int N, int C);
    /* dx[n,c] += dout * softplus'(x+bias); dbias[c] += sum_n of the same (may be NULL) */
    void (*softplus_backward)(real *dx, real *dbias, const real *dout, const real *x,
                              const real *bias, int N, int C);

    /* Mamba-1 selective scan (baselines.md §4.2), per batch b, channel d, state n:
     *   h_t[d,n] = exp(delta_t[d] A[d,n]) h_{t-1}[d,n] + delta_t[d] Bm_t[n] x_t[d]
     *   y_t[d]   = sum_n Cm_t[n] h_t[d,n] + D[d] x_t[d],    A = -exp(A_log)
     * x, delta, y: [B, T, Dc]; Bm, Cm: [B, T, N]; A_log: [Dc, N]; D: [Dc]. Writes y. */
    void (*selective_scan_forward)(real *y, const real *x, const real *delta, const real *A_log,
                                   const real *Bm, const real *Cm, const real *D, int B, int T,
                                   int Dc, int N);
    /* §4.4: recomputes the states and accumulates every gradient */
    void (*selective_scan_backward)(real *dx, real *ddelta, real *dA_log, real *dBm, real *dCm,
                                    real *dD, const real *dy, const real *x, const real *delta,
                                    const real *A_log, const real *Bm, const real *Cm,
                                    const real *D, int B, int T, int Dc, int N);

    /* Mamba-2 SSD, y = SSD(x, dt, A, B, C) + D x; a->chunk picks the algorithm. */
    void (*ssd_forward)(const SsdArgs *a);
    void (*ssd_backward)(const SsdArgs *a);
} ScanOps;

#ifdef __cplusplus
}
#endif

#endif
