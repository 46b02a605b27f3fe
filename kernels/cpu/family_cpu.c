/* CPU reference of the attention-family op group (kernels/ops_family.h).
 *
 * Direct row-by-row form: for each (b, h) and query row i the weights p_ij are
 * recomputed from the logits, the probe is solved by the matrix-free CG of
 * parallax_lla.md §2.3 (the operator x -> sum_j p_j (x.z_j) z_j + lambda x is
 * applied by streaming the keys, Sigma is never formed), and the backward
 * differentiates through the solve with one adjoint CG (§2.4).
 *
 * Backward in one line per part (derivation in docs/family.md): with
 * A_j = g.v_j, L = g.o, rhobar = dL/drho at fixed weights, u = Sigma^-1 rhobar,
 *   LLA explicit:  dL/dw_j = (1 - rho.z_j)(A_j - L)/delta,
 *                  rhobar = -sum_j p_j (A_j - L)/delta z_j
 *   solve:         dL/dw_j += u.z_j - (u.z_j)(rho.z_j) - lambda u.rho  (last term: exact mode)
 *                  dL/dz_j  = p_j [u - u (rho.z_j) - rho (u.z_j)]
 *   weights:       ds_j = p_j dL/dw_j (L is homogeneous of degree 0 in w, §2.4),
 *                  dq += scale sum_j ds_j k_j, dk_j += scale ds_j q, dlog_bw -= sum_j ds_j s_j
 * The Parallax-form output reuses §3.6 for its explicit part. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/check.h"
#include "../ops_family.h"
#include "cpu.h"

#define ROW(ptr, ld, b, t, T, h, hd) ((ptr) + ((size_t)(b) * (T) + (t)) * (ld) + (size_t)(h) * (hd))
#define SROW(a, b, h, i) (((size_t)(b) * (a)->H + (h)) * (a)->T + (i))

static real dot(const real *x, const real *y, int n) {
    real s = 0;
    for (int i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

static int row_start(const FamArgs *a, int i) {
    return a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0;
}

static real head_scale(const FamArgs *a, int h) {
    return a->log_bw ? a->scale * (real)exp(-(double)a->log_bw[h]) : a->scale;
}

/* The SPD system of one row: Sigma x = sum_j w_j (x.z_j) z_j + lam x with
 * z_j = k_j - c (c = the query for the intercept form, none otherwise). */
typedef struct {
    const FamArgs *a;
    int b, h, lo, hi;
    const real *w; /* indexed by key position j */
    const real *c; /* centre or NULL */
    real lam;
} RowSys;

static void key_z(const RowSys *s, int j, real *z) {
    const real *kj = ROW(s->a->k, s->a->ld_in, s->b, j, s->a->T, s->h, s->a->hd);
    for (int c = 0; c < s->a->hd; c++) z[c] = s->c ? kj[c] - s->c[c] : kj[c];
}

/* out = Sigma x, recomputing z_j from the key stream (§2.3, matrix-free) */
static void sys_apply(const RowSys *s, const real *x, real *out, real *z) {
    int hd = s->a->hd;
    for (int c = 0; c < hd; c++) out[c] = s->lam * x[c];
    for (int j = s->lo; j <= s->hi; j++) {
        key_z(s, j, z);
        real xz = s->w[j] * dot(x, z, hd);
        for (int c = 0; c < hd; c++) out[c] += xz * z[c];
    }
}

/* Solves Sigma x = rhs by CG from x0 = 0 (§2.3): at most `iters` steps, the
 * row stops once |r|^2 <= tol*max(tol, |r0|^2) or the curvature p.Sigma p is
 * no longer positive. Optional Jacobi preconditioner diag(Sigma). Returns the
 * relative residual |r|/|rhs| reached. work: 6*hd reals. */
static real cg_solve(const RowSys *s, const real *rhs, real *x, real *work) {
    const FamArgs *a = s->a;
    int hd = a->hd;
    real *r = work, *p = r + hd, *Ap = p + hd, *zc = Ap + hd, *diag = zc + hd, *z = diag + hd;
    for (int c = 0; c < hd; c++) x[c] = 0, r[c] = rhs[c], diag[c] = 1;
    if (a->cg_precond) {
        for (int c = 0; c < hd; c++) diag[c] = s->lam;
        for (int j = s->lo; j <= s->hi; j++) {
            key_z(s, j, z);
            for (int c = 0; c < hd; c++) diag[c] += s->w[j] * z[c] * z[c];
        }
    }
    real rr0 = dot(r, r, hd), rr = rr0;
    if (!(rr0 > 0) || !isfinite((double)rr0)) return 0;
    for (int c = 0; c < hd; c++) zc[c] = r[c] / diag[c], p[c] = zc[c];
    real rz = dot(r, zc, hd);
    real stop = a->cg_tol * (rr0 > a->cg_tol ? rr0 : a->cg_tol);
    for (int it = 0; it < a->cg_iters; it++) {
        sys_apply(s, p, Ap, z);
        real pAp = dot(p, Ap, hd);
        if (!(pAp > 0)) break;
        real alpha = rz / pAp;
        for (int c = 0; c < hd; c++) x[c] += alpha * p[c], r[c] -= alpha * Ap[c];
        rr = dot(r, r, hd);
        if (rr <= stop || !isfinite((double)rr)) break;
        for (int c = 0; c < hd; c++) zc[c] = r[c] / diag[c];
        real rz_new = dot(r, zc, hd), beta = rz_new / rz;
        for (int c = 0; c < hd; c++) p[c] = zc[c] + beta * p[c];
        rz = rz_new;
    }
    return (real)sqrt((double)(rr / rr0));
}

/* per-thread scratch of one (b, h) */
typedef struct {
    real *s, *p, *t, *wj, *ds;          /* [T] */
    real *mu, *rho, *u, *rb, *z, *obar; /* [hd] */
    real *work;                         /* [6 hd] */
} Scratch;

static Scratch scratch_new(int T, int hd) {
    Scratch w;
    w.s = xcalloc((size_t)5 * T + 12 * (size_t)hd, sizeof(real));
    w.p = w.s + T, w.t = w.p + T, w.wj = w.t + T, w.ds = w.wj + T;
    w.mu = w.ds + T, w.rho = w.mu + hd, w.u = w.rho + hd, w.rb = w.u + hd, w.z = w.rb + hd;
    w.obar = w.z + hd, w.work = w.obar + hd;
    return w;
}

/* weights p_j of row i; returns the row's log-sum-exp (from `lse_in` if given) */
static real row_weights(const FamArgs *a, Scratch *w, int b, int h, int i, real sc,
                        const real *lse_in) {
    int hd = a->hd, lo = row_start(a, i);
    const real *qi = ROW(a->q, a->ld_in, b, i, a->T, h, hd);
    real m = -INFINITY;
    for (int j = lo; j <= i; j++) {
        w->s[j] = sc * dot(qi, ROW(a->k, a->ld_in, b, j, a->T, h, hd), hd);
        if (w->s[j] > m) m = w->s[j];
    }
    if (lse_in) {
        for (int j = lo; j <= i; j++) w->p[j] = (real)exp((double)(w->s[j] - *lse_in));
        return *lse_in;
    }
    real om = 0;
    for (int j = lo; j <= i; j++) om += w->p[j] = (real)exp((double)(w->s[j] - m));
    for (int j = lo; j <= i; j++) w->p[j] /= om;
    return m + (real)log((double)om);
}

static real row_ridge(const FamArgs *a, size_t si, real lse) {
    if (!a->affine || !a->ridge_lse) return a->ridge;
    return a->ridge * (real)exp((double)(a->ridge_lse[si] - lse));
}

static void fam_forward(const FamArgs *a) {
    const int B = a->B, T = a->T, H = a->H, hd = a->hd;
#pragma omp parallel
    {
        Scratch w = scratch_new(T, hd);
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                real sc = head_scale(a, h);
                for (int i = 0; i < T; i++) {
                    size_t si = SROW(a, b, h, i);
                    int lo = row_start(a, i), n = i - lo + 1;
                    const real *qi = ROW(a->q, a->ld_in, b, i, T, h, hd);
                    real lse = row_weights(a, &w, b, h, i, sc, NULL);
                    real *rho = a->rho ? ROW(a->rho, a->ld_out, b, i, T, h, hd) : w.rho;
                    real *oi = ROW(a->o, a->ld_out, b, i, T, h, hd), den = 1, resid = 0;
                    if (!a->affine)
                        for (int j = lo; j <= i; j++) w.p[j] *= (real)n; /* a_j = n p_j */
                    RowSys sys = {a, b, h, lo, i, w.p, a->affine ? qi : NULL, row_ridge(a, si, lse)};
                    if (a->probe == FAM_PROBE_SOLVED) {
                        if (a->affine) { /* mu = kbar - q */
                            memset(w.mu, 0, sizeof(real) * (size_t)hd);
                            for (int j = lo; j <= i; j++) {
                                key_z(&sys, j, w.z);
                                for (int c = 0; c < hd; c++) w.mu[c] += w.p[j] * w.z[c];
                            }
                            resid = cg_solve(&sys, w.mu, rho, w.work);
                        } else resid = cg_solve(&sys, qi, rho, w.work);
                    } else if (a->probe == FAM_PROBE_GIVEN)
                        memcpy(rho, ROW(a->r, a->ld_in, b, i, T, h, hd), sizeof(real) * (size_t)hd);
                    else memset(rho, 0, sizeof(real) * (size_t)hd);
                    /* per-key coefficient of v_j */
                    if (a->affine && a->probe == FAM_PROBE_SOLVED && a->boundary) {
                        den = 0;
                        for (int j = lo; j <= i; j++) {
                            key_z(&sys, j, w.z);
                            w.t[j] = w.p[j] * (1 - dot(rho, w.z, hd));
                            den += w.t[j];
                        }
                        den += a->delta_eps * (den < 0 ? -1 : 1);
                        for (int j = lo; j <= i; j++) w.t[j] /= den;
                    } else if (a->affine) {
                        real tbar = 0;
                        for (int j = lo; j <= i; j++) {
                            w.t[j] = dot(rho, ROW(a->k, a->ld_in, b, j, T, h, hd), hd);
                            tbar += w.p[j] * w.t[j];
                        }
                        for (int j = lo; j <= i; j++) w.t[j] = w.p[j] * (1 + tbar - w.t[j]);
                    } else {
                        real sum = 0;
                        for (int j = lo; j <= i; j++) {
                            w.t[j] = w.p[j] * dot(rho, ROW(a->k, a->ld_in, b, j, T, h, hd), hd);
                            sum += w.t[j];
                        }
                        if (a->normalize) {
                            den = sum + a->norm_eps;
                            for (int j = lo; j <= i; j++) w.t[j] /= den;
                        }
                    }
                    memset(oi, 0, sizeof(real) * (size_t)hd);
                    for (int j = lo; j <= i; j++) {
                        const real *vj = ROW(a->v, a->ld_in, b, j, T, h, hd);
                        for (int c = 0; c < hd; c++) oi[c] += w.t[j] * vj[c];
                    }
                    a->lse[si] = lse;
                    if (a->den) a->den[si] = den;
                    if (a->cg_resid) a->cg_resid[si] = resid;
                }
            }
        free(w.s);
    }
}

static void fam_backward(const FamArgs *a) {
    const int B = a->B, T = a->T, H = a->H, hd = a->hd;
    real *dbw = a->dlog_bw ? xcalloc((size_t)B * H, sizeof(real)) : NULL;
#pragma omp parallel
    {
        Scratch w = scratch_new(T, hd);
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                real sc = head_scale(a, h), dlb = 0;
                for (int i = 0; i < T; i++) {
                    size_t si = SROW(a, b, h, i);
                    int lo = row_start(a, i), n = i - lo + 1;
                    const real *qi = ROW(a->q, a->ld_in, b, i, T, h, hd);
                    const real *gi = ROW(a->dout, a->ld_out, b, i, T, h, hd);
                    const real *oi = ROW(a->o, a->ld_out, b, i, T, h, hd);
                    real *dqi = ROW(a->dq, a->ld_out, b, i, T, h, hd);
                    real lse = row_weights(a, &w, b, h, i, sc, &a->lse[si]);
                    const real *rho = a->probe == FAM_PROBE_SOLVED
                                          ? ROW(a->rho, a->ld_out, b, i, T, h, hd)
                                      : a->probe == FAM_PROBE_GIVEN
                                          ? ROW(a->r, a->ld_in, b, i, T, h, hd)
                                          : (memset(w.rho, 0, sizeof(real) * (size_t)hd), w.rho);
                    real den = a->den ? a->den[si] : 1, L = dot(gi, oi, hd);
                    if (!a->affine)
                        for (int j = lo; j <= i; j++) w.p[j] *= (real)n;
                    RowSys sys = {a, b, h, lo, i, w.p, a->affine ? qi : NULL, row_ridge(a, si, lse)};
                    memset(w.rb, 0, sizeof(real) * (size_t)hd);
                    /* explicit part: w.wj = dL/dw_j (LLA, no intercept) or w.ds (Parallax form) */
                    if (a->affine && a->probe == FAM_PROBE_SOLVED && a->boundary) {
                        for (int j = lo; j <= i; j++) {
                            const real *vj = ROW(a->v, a->ld_in, b, j, T, h, hd);
                            real *dkj = ROW(a->dk, a->ld_out, b, j, T, h, hd);
                            real *dvj = ROW(a->dv, a->ld_out, b, j, T, h, hd);
                            key_z(&sys, j, w.z);
                            real cj = 1 - dot(rho, w.z, hd), Aj = dot(gi, vj, hd);
                            real e = w.p[j] * (Aj - L) / den;
                            w.wj[j] = cj * (Aj - L) / den;
                            w.ds[j] = 0;
                            for (int c = 0; c < hd; c++) {
                                w.rb[c] -= e * w.z[c];
                                dkj[c] -= e * rho[c];
                                dqi[c] += e * rho[c];
                                dvj[c] += w.p[j] * cj / den * gi[c];
                            }
                        }
                    } else if (a->affine) { /* §3.6 */
                        memset(w.obar, 0, sizeof(real) * (size_t)hd);
                        real tbar = 0;
                        for (int j = lo; j <= i; j++) {
                            const real *vj = ROW(a->v, a->ld_in, b, j, T, h, hd);
                            w.t[j] = dot(rho, ROW(a->k, a->ld_in, b, j, T, h, hd), hd);
                            tbar += w.p[j] * w.t[j];
                            for (int c = 0; c < hd; c++) w.obar[c] += w.p[j] * vj[c];
                        }
                        real bi = dot(gi, w.obar, hd);
                        for (int j = lo; j <= i; j++) {
                            const real *kj = ROW(a->k, a->ld_in, b, j, T, h, hd);
                            const real *vj = ROW(a->v, a->ld_in, b, j, T, h, hd);
                            real *dkj = ROW(a->dk, a->ld_out, b, j, T, h, hd);
                            real *dvj = ROW(a->dv, a->ld_out, b, j, T, h, hd);
                            real Aj = dot(gi, vj, hd), p = w.p[j], t = w.t[j];
                            w.ds[j] = p * ((Aj - L) + (tbar - t) * (Aj - bi));
                            w.wj[j] = 0;
                            real dT = -p * (Aj - bi);
                            for (int c = 0; c < hd; c++) {
                                w.rb[c] += dT * kj[c];
                                dkj[c] += dT * rho[c];
                                dvj[c] += p * (1 + tbar - t) * gi[c];
                            }
                        }
                    } else { /* no intercept: w.wj = dL/da_j */
                        real nd = a->normalize ? den : 1, Lc = a->normalize ? L : 0;
                        for (int j = lo; j <= i; j++) {
                            const real *kj = ROW(a->k, a->ld_in, b, j, T, h, hd);
                            const real *vj = ROW(a->v, a->ld_in, b, j, T, h, hd);
                            real *dkj = ROW(a->dk, a->ld_out, b, j, T, h, hd);
                            real *dvj = ROW(a->dv, a->ld_out, b, j, T, h, hd);
                            real t = dot(rho, kj, hd), Aj = dot(gi, vj, hd);
                            w.wj[j] = t * (Aj - Lc) / nd;
                            real gt = w.p[j] * (Aj - Lc) / nd;
                            w.ds[j] = 0;
                            for (int c = 0; c < hd; c++) {
                                w.rb[c] += gt * kj[c];
                                dkj[c] += gt * rho[c];
                                dvj[c] += w.p[j] * t / nd * gi[c];
                            }
                        }
                    }
                    if (a->probe == FAM_PROBE_GIVEN) {
                        real *dri = ROW(a->dr, a->ld_out, b, i, T, h, hd);
                        for (int c = 0; c < hd; c++) dri[c] += w.rb[c];
                    }
                    if (a->probe == FAM_PROBE_SOLVED) { /* adjoint solve (§2.4) */
                        cg_solve(&sys, w.rb, w.u, w.work);
                        real ridge_term = a->affine && !a->ridge_frozen ? -sys.lam * dot(w.u, rho, hd) : 0;
                        for (int j = lo; j <= i; j++) {
                            real *dkj = ROW(a->dk, a->ld_out, b, j, T, h, hd);
                            key_z(&sys, j, w.z);
                            real uz = dot(w.u, w.z, hd), rz = dot(rho, w.z, hd);
                            w.wj[j] += (a->affine ? uz : 0) - uz * rz + ridge_term;
                            for (int c = 0; c < hd; c++) {
                                real dz = w.p[j] * ((a->affine ? w.u[c] : 0) - w.u[c] * rz - rho[c] * uz);
                                dkj[c] += dz;
                                if (a->affine) dqi[c] -= dz;
                            }
                        }
                        if (!a->affine) /* rhs is q */
                            for (int c = 0; c < hd; c++) dqi[c] += w.u[c];
                    }
                    /* weights -> logits */
                    if (a->affine) {
                        for (int j = lo; j <= i; j++) w.ds[j] += w.p[j] * w.wj[j];
                    } else {
                        real S = 0;
                        for (int j = lo; j <= i; j++) S += w.p[j] * w.wj[j];
                        for (int j = lo; j <= i; j++) w.ds[j] = w.p[j] * (w.wj[j] - S / n);
                    }
                    if (sc != 0)
                        for (int j = lo; j <= i; j++) {
                            const real *kj = ROW(a->k, a->ld_in, b, j, T, h, hd);
                            real *dkj = ROW(a->dk, a->ld_out, b, j, T, h, hd);
                            for (int c = 0; c < hd; c++) {
                                dqi[c] += sc * w.ds[j] * kj[c];
                                dkj[c] += sc * w.ds[j] * qi[c];
                            }
                            dlb -= w.ds[j] * w.s[j];
                        }
                }
                if (dbw) dbw[(size_t)b * H + h] = dlb;
            }
        free(w.s);
    }
    if (dbw) {
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) a->dlog_bw[h] += dbw[(size_t)b * H + h];
        free(dbw);
    }
}

/* ---- linear attention by its state recurrence (baselines.md §3) ------------------- */

static void lin_rec_forward(const FamArgs *a) {
    const int B = a->B, T = a->T, H = a->H, hd = a->hd;
#pragma omp parallel
    {
        real *S = xcalloc((size_t)hd * hd + hd, sizeof(real)), *z = S + (size_t)hd * hd;
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                memset(S, 0, sizeof(real) * ((size_t)hd * hd + hd));
                for (int t = 0; t < T; t++) {
                    const real *kt = ROW(a->k, a->ld_in, b, t, T, h, hd);
                    const real *vt = ROW(a->v, a->ld_in, b, t, T, h, hd);
                    const real *rt = ROW(a->r, a->ld_in, b, t, T, h, hd);
                    real *ot = ROW(a->o, a->ld_out, b, t, T, h, hd);
                    for (int c = 0; c < hd; c++) { /* S += k v^T, z += k */
                        for (int e = 0; e < hd; e++) S[(size_t)c * hd + e] += kt[c] * vt[e];
                        z[c] += kt[c];
                    }
                    real den = a->normalize ? dot(z, rt, hd) + a->norm_eps : 1;
                    for (int e = 0; e < hd; e++) {
                        real acc = 0;
                        for (int c = 0; c < hd; c++) acc += S[(size_t)c * hd + e] * rt[c];
                        ot[e] = acc / den;
                    }
                    if (a->den) a->den[SROW(a, b, h, t)] = den;
                    if (a->lse) a->lse[SROW(a, b, h, t)] = 0;
                    if (a->cg_resid) a->cg_resid[SROW(a, b, h, t)] = 0;
                }
            }
        free(S);
    }
}

/* Reverse sweep: the state S_t is recovered by downdating S_T (S_{t-1} = S_t -
 * k_t v_t^T); dS accumulates sum_{s>=t} r_s gtilde_s^T. */
static void lin_rec_backward(const FamArgs *a) {
    const int B = a->B, T = a->T, H = a->H, hd = a->hd;
    size_t hh = (size_t)hd * hd;
#pragma omp parallel
    {
        real *S = xcalloc(2 * hh + 3 * (size_t)hd, sizeof(real));
        real *dS = S + hh, *z = dS + hh, *dz = z + hd, *gt = dz + hd;
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                memset(S, 0, sizeof(real) * (2 * hh + 3 * (size_t)hd));
                for (int t = 0; t < T; t++) {
                    const real *kt = ROW(a->k, a->ld_in, b, t, T, h, hd);
                    const real *vt = ROW(a->v, a->ld_in, b, t, T, h, hd);
                    for (int c = 0; c < hd; c++) {
                        for (int e = 0; e < hd; e++) S[(size_t)c * hd + e] += kt[c] * vt[e];
                        z[c] += kt[c];
                    }
                }
                for (int t = T - 1; t >= 0; t--) {
                    const real *kt = ROW(a->k, a->ld_in, b, t, T, h, hd);
                    const real *vt = ROW(a->v, a->ld_in, b, t, T, h, hd);
                    const real *rt = ROW(a->r, a->ld_in, b, t, T, h, hd);
                    const real *ot = ROW(a->o, a->ld_out, b, t, T, h, hd);
                    const real *gi = ROW(a->dout, a->ld_out, b, t, T, h, hd);
                    real *dkt = ROW(a->dk, a->ld_out, b, t, T, h, hd);
                    real *dvt = ROW(a->dv, a->ld_out, b, t, T, h, hd);
                    real *drt = ROW(a->dr, a->ld_out, b, t, T, h, hd);
                    real den = a->normalize ? a->den[SROW(a, b, h, t)] : 1;
                    real dden = a->normalize ? -dot(gi, ot, hd) / den : 0;
                    for (int e = 0; e < hd; e++) gt[e] = gi[e] / den;
                    for (int c = 0; c < hd; c++) { /* o = S^T r / den */
                        drt[c] += dot(S + (size_t)c * hd, gt, hd) + z[c] * dden;
                        for (int e = 0; e < hd; e++) dS[(size_t)c * hd + e] += rt[c] * gt[e];
                        dz[c] += rt[c] * dden;
                    }
                    for (int c = 0; c < hd; c++) { /* S_t, z_t contain k_t v_t^T, k_t */
                        dkt[c] += dot(dS + (size_t)c * hd, vt, hd) + dz[c];
                        for (int e = 0; e < hd; e++) {
                            dvt[e] += dS[(size_t)c * hd + e] * kt[c];
                            S[(size_t)c * hd + e] -= kt[c] * vt[e];
                        }
                        z[c] -= kt[c];
                    }
                }
            }
        free(S);
    }
}

/* ---- feature maps ------------------------------------------------------------------ */

static void fmap_forward(real *y, const real *x, int N, int C, int ld, int kind) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            real v = x[(size_t)n * ld + c];
            y[(size_t)n * ld + c] = kind == FAM_FMAP_ELU1   ? (v > 0 ? v + 1 : (real)exp((double)v))
                                    : kind == FAM_FMAP_RELU ? (v > 0 ? v : 0)
                                                            : v;
        }
}

static void fmap_backward(real *dx, const real *dy, const real *x, int N, int C, int ld, int kind) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            size_t o = (size_t)n * ld + c;
            real v = x[o];
            real d = kind == FAM_FMAP_ELU1   ? (v > 0 ? 1 : (real)exp((double)v))
                     : kind == FAM_FMAP_RELU ? (v > 0 ? 1 : 0)
                                             : 1;
            dx[o] += d * dy[o];
        }
}

const FamilyOps cpu_family_ops = {
    .forward = fam_forward,
    .backward = fam_backward,
    .linear_recurrent_forward = lin_rec_forward,
    .linear_recurrent_backward = lin_rec_backward,
    .feature_map_forward = fmap_forward,
    .feature_map_backward = fmap_backward,
};
