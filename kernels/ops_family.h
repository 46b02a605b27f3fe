/* Op group of the attention family (parallax_lla.md §1–§3), reached through
 * ops->family. The plain softmax / Parallax core stays in ops->attention_*;
 * this group covers the rest of the grid:
 *   - a solved probe (LLA, §1.2/§2.3: rho = Sigma^-1 mu per query by a
 *     matrix-free conjugate-gradient solve, backward by one adjoint solve §2.4),
 *   - no intercept (linear attention / MesaNet and their kernel-weighted
 *     versions, §3.3 table, last row),
 *   - a learned per-head bandwidth (scale_h = scale * exp(-log_bw[h])),
 *   - linear attention by its state recurrence (baselines.md §3),
 *   - element-wise feature maps (identity, elu+1, relu).
 *
 * Weights (one row i, keys j in the causal window J(i), n = |J(i)|):
 *   p_ij = softmax_j(scale_h q_i.k_j)   (scale 0, i.e. bandwidth inf: p = 1/n)
 * affine = 1 (with intercept), centred on the query (§1.2, normalised by omega):
 *   z_j = k_j - q_i,  mu = sum_j p_j z_j = kbar - q,
 *   Sigma = sum_j p_j z_j z_j^T + lambda I            (= §1.2's Sigma / omega)
 *   rho   = Sigma^-1 mu        (probe SOLVED; GIVEN: rho = r_i; ZERO: rho = 0)
 *   boundary = 1 (LLA, keeps (1+eta), §1.3):
 *       delta = 1 - mu.rho,  o = sum_j p_j (1 - rho.z_j) v_j / delta
 *   otherwise (Parallax form, eta dropped, §3.1):
 *       t_j = rho.k_j,  o = sum_j p_j (1 + tbar - t_j) v_j
 * affine = 0 (no intercept), weights a_j = n p_j (= 1 for bandwidth inf, so
 * sums as in linear attention and MesaNet):
 *   rho = (sum_j a_j k_j k_j^T + lambda I)^-1 q   (SOLVED) or r_i (GIVEN)
 *   o = sum_j a_j (rho.k_j) v_j   [ / (sum_j a_j rho.k_j + norm_eps) if normalize ]
 *
 * Layouts as AttnArgs: q, k, v, r, o [B, T, H, hd] with row strides ld_in /
 * ld_out; per-row scalars [B, H, T]. Backward entries ACCUMULATE. */
#ifndef PLAB_OPS_FAMILY_H
#define PLAB_OPS_FAMILY_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { FAM_PROBE_ZERO = 0, FAM_PROBE_GIVEN = 1, FAM_PROBE_SOLVED = 2 };
enum { FAM_FMAP_IDENTITY = 0, FAM_FMAP_ELU1 = 1, FAM_FMAP_RELU = 2 };

typedef struct {
    int B, T, H, hd;
    int ld_in, ld_out;
    real scale;          /* on q.k; 0 = uniform causal weights (bandwidth inf) */
    const real *log_bw;  /* [H] learned log-bandwidth, or NULL (fixed) */
    int window;          /* 0 = full causal; W keeps keys i-W+1..i */
    int probe;           /* FAM_PROBE_* */
    int affine, boundary, normalize;
    real norm_eps;       /* no-intercept normalisation denominator guard */
    real ridge;          /* lambda, relative to normalised weights (λ·ω in §1.2's units) */
    int ridge_frozen;    /* backward: official FlashLLA gradient, omega in λω held constant (§2.4) */
    /* Test hook: per-row log-sum-exp of a reference point [B,H,T]; the ridge
     * becomes lambda*exp(ridge_lse - lse), i.e. λ·ω_ref in §1.2's units, which
     * is the model whose exact gradient the frozen mode is. NULL in training. */
    const real *ridge_lse;
    int cg_iters, cg_precond;
    real cg_tol;         /* per-row stop: |r|^2 <= tol * max(tol, |r0|^2) (§2.3) */
    real delta_eps;      /* delta += eps*sign(delta) (§1.2) */
    const real *q, *k, *v, *r; /* r: probe (GIVEN) */
    real *o;        /* writes */
    real *rho;      /* [B,T,H,hd] (ld_out) probe used; forward writes, backward reads */
    real *lse;      /* [B,H,T] forward writes */
    real *den;      /* [B,H,T] LLA delta or normalise denominator; forward writes */
    real *cg_resid; /* [B,H,T] final relative residual |r|/|b| of the row's solve (0 if none) */
    /* backward */
    const real *dout;
    real *dq, *dk, *dv, *dr, *dlog_bw; /* accumulate; dr only for GIVEN, dlog_bw when log_bw */
} FamArgs;

struct FamilyOps {
    void (*forward)(const FamArgs *a);
    void (*backward)(const FamArgs *a);
    /* Linear attention by the state recurrence (baselines.md §3), bandwidth inf,
     * no intercept, GIVEN probe, window 0: S_t = S_{t-1} + k_t v_t^T,
     * o_t = S_t^T r_t [/ (z_t.r_t + norm_eps), z_t = z_{t-1} + k_t]. Same
     * arguments and result as forward; uses o, den, dout, dk, dv, dr. */
    void (*linear_recurrent_forward)(const FamArgs *a);
    void (*linear_recurrent_backward)(const FamArgs *a);
    /* y = phi(x) element-wise on [N, C] rows with stride ld (writes) */
    void (*feature_map_forward)(real *y, const real *x, int N, int C, int ld, int kind);
    /* dx += phi'(x) * dy */
    void (*feature_map_backward)(real *dx, const real *dy, const real *x, int N, int C, int ld,
                                 int kind);
};

#ifdef __cplusplus
}
#endif

#endif
