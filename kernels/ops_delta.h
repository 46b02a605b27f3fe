/* Op group of the delta-rule family (DeltaNet, Gated DeltaNet, KDA) and of
 * MesaNet, reached through ops->delta (baselines.md §1, §6-§9).
 *
 * Layouts: token rows n = b*T + t; heads contiguous inside a row, e.g.
 * q [B, T, H, dk], v [B, T, H, dv], beta [B, T, H], scalar gates [B, T, H],
 * per-channel gates [B, T, H, dk]. States are [dk, dv] per (b, h), row-major (dk = K, dv = V below).
 * Backward entries ACCUMULATE into gradients unless the comment says "writes".
 *
 * The recurrent cores save the state every DELTA_CKPT steps in the forward pass
 * (`ckpt`, see delta_ckpt_len) and recompute the states of one such chunk at a
 * time in the backward pass, so memory is O(T/DELTA_CKPT) states, not O(T). */
#ifndef PLAB_OPS_DELTA_H
#define PLAB_OPS_DELTA_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DELTA_CKPT 64

/* reals of the checkpoint buffer for `states` of `state_len` reals each */
static inline size_t delta_ckpt_len(int B, int H, int T, size_t state_len) {
    return (size_t)B * H * (size_t)((T + DELTA_CKPT - 1) / DELTA_CKPT) * state_len;
}

enum { DELTA_GATE_NONE = 0, DELTA_GATE_SCALAR = 1, DELTA_GATE_CHANNEL = 2 };
enum { DELTA_ACT_NONE = 0, DELTA_ACT_SILU = 1, DELTA_ACT_SIGMOID = 2 };

/* Gated delta rule (baselines.md §6.2, §7.2, §8.2), per (b, h):
 *   S~ = Diag(exp(g_t)) S_{t-1};  u_t = v_t - S~^T k_t;  S_t = S~ + k_t (beta_t u_t)^T
 *   o_t = S_t^T (scale q_t)
 * gate NONE: exp(g) = 1 (g unused); SCALAR: g [B,T,H]; CHANNEL: g [B,T,H,dk]. S_0 = 0. */
typedef struct {
    int B, T, H, K, V; /* K = key/query head dim, V = value head dim */
    int gate;
    real scale;
    const real *q, *k, *v, *beta, *g;
    real *o;    /* [B,T,H,dv] (writes) */
    real *ckpt; /* delta_ckpt_len(B,H,T,dk*dv) reals: forward writes, backward reads */
    /* backward */
    const real *dout;
    real *dq, *dk, *dv, *dbeta, *dg; /* accumulate; dg unused with gate NONE */
} DeltaArgs;

/* MesaNet (baselines.md §9.2), per (b, h), with gamma_t = exp(g_t) (g == NULL: 1):
 *   Hkk_t = gamma_t Hkk_{t-1} + beta_t k_t k_t^T;   Hkv_t = gamma_t Hkv_{t-1} + beta_t k_t v_t^T
 *   q*_t = (Hkk_t + Diag(lam_h))^{-1} q_t;           o_t = Hkv_t^T q*_t
 * The solve is cg_steps iterations of conjugate gradients from x0 = 0 with eps in
 * both denominators (§9.3), or an exact Cholesky solve when cg_steps == 0. The
 * backward is the implicit-function gradient (§9.4) with a second solve. */
typedef struct {
    int B, T, H, K, V;
    int cg_steps;
    real cg_eps;
    const real *q, *k, *v, *beta, *g, *lam; /* beta [B,T,H]; g [B,T,H] or NULL; lam [H,dk] */
    real *o, *qstar; /* [B,T,H,dv], [B,T,H,dk] (forward writes; backward reads qstar) */
    real *ckpt;      /* delta_ckpt_len(B,H,T,dk*(dk+dv)) reals */
    /* backward */
    const real *dout;
    real *dq, *dk, *dv, *dbeta, *dg, *dlam; /* accumulate; dg unused when g == NULL */
} MesaArgs;

struct DeltaOps {
    /* L2 normalisation of rows (§1.2): r = 1/sqrt(sum x^2 + eps), y = x r; x, y [N,D],
     * rinv [N] (writes y, rinv) */
    void (*l2norm_forward)(real *y, real *rinv, const real *x, int N, int D, real eps);
    /* dx += r dy - r (dy.y) y */
    void (*l2norm_backward)(real *dx, const real *dy, const real *y, const real *rinv, int N,
                            int D);
    /* Elementwise maps [n] (writes y): SIGMOID y = scale*sigmoid(x); SOFTPLUS
     * y = softplus(x) + shift; LOGSIGMOID y = -softplus(-x). Backward: dx += dy*y'(x). */
    void (*map_forward)(real *y, const real *x, long n, int kind, real scale, real shift);
    void (*map_backward)(real *dx, const real *dy, const real *x, long n, int kind, real scale);
    /* Decay gate of GDN / KDA (§7.1, §8.1): a [N, H*Dg], A_log [H], dt_bias [H*Dg];
     * lb == 0: g = -exp(A_log[h]) * softplus(a + dt_bias);
     * lb < 0 (KDA safe gate): g = lb * sigmoid(exp(A_log[h]) * (a + dt_bias)) in (lb, 0).
     * Writes g [N, H*Dg]. */
    void (*decay_forward)(real *g, const real *a, const real *A_log, const real *dt_bias, int N,
                          int H, int Dg, real lb);
    /* da, dA_log, ddt_bias accumulate (§7.4 step 7, §8.4 step 7) */
    void (*decay_backward)(real *da, real *dA_log, real *ddt_bias, const real *dg, const real *a,
                           const real *A_log, const real *dt_bias, int N, int H, int Dg, real lb);
    /* Output gate y = x * act(z), act SILU or SIGMOID, all [n] (writes y) */
    void (*gate_mul_forward)(real *y, const real *x, const real *z, long n, int act);
    /* dx += dy act(z); dz += dy x act'(z) */
    void (*gate_mul_backward)(real *dx, real *dz, const real *dy, const real *x, const real *z,
                              long n, int act);
    /* the recurrent cores */
    void (*delta_forward)(const DeltaArgs *a);
    void (*delta_backward)(const DeltaArgs *a);
    void (*mesa_forward)(const MesaArgs *a);
    void (*mesa_backward)(const MesaArgs *a);
};

enum { DELTA_MAP_SIGMOID = 0, DELTA_MAP_SOFTPLUS = 1, DELTA_MAP_LOGSIGMOID = 2 };

#ifdef __cplusplus
}
#endif

#endif
