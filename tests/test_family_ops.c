/* Op-level tests of the attention-family core (kernels/ops_family.h) in
 * double precision: finite-difference gradients for every branch (including
 * both LLA ridge-gradient modes), and the identities of parallax_lla.md
 * §1.3 / §3.3 against dense closed forms computed here independently. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_family.h"

enum { B = 2, T = 7, H = 2, HD = 4, LD = H * HD, N = B * T * LD, NR = B * H * T };

typedef struct {
    real q[N], k[N], v[N], r[N], G[N];
    real o[N], rho[N], lse[NR], den[NR], resid[NR], rlse[NR];
    real dq[N], dk[N], dv[N], dr[N], logbw[H], dlogbw[H];
    FamArgs a;
    int recurrent;
} Fix;

static void fix_init(Fix *f, unsigned long seed) {
    memset(f, 0, sizeof *f);
    gsl_rng *r = test_rng(seed);
    fill_randn(f->q, N, r, 0.8);
    fill_randn(f->k, N, r, 0.8);
    fill_randn(f->v, N, r, 1.0);
    fill_randn(f->r, N, r, 0.5);
    fill_randn(f->G, N, r, 1.0);
    fill_randn(f->logbw, H, r, 0.3);
    gsl_rng_free(r);
    f->a = (FamArgs){.B = B, .T = T, .H = H, .hd = HD, .ld_in = LD, .ld_out = LD,
                     .scale = (real)(1 / sqrt((double)HD)), .probe = FAM_PROBE_SOLVED, .affine = 1,
                     .boundary = 1, .norm_eps = (real)1e-6, .ridge = (real)0.3, .cg_iters = 3 * HD,
                     .cg_tol = 0, .delta_eps = (real)1e-12, .q = f->q, .k = f->k, .v = f->v,
                     .r = f->r, .o = f->o, .rho = f->rho, .lse = f->lse, .den = f->den,
                     .cg_resid = f->resid, .dout = f->G, .dq = f->dq, .dk = f->dk, .dv = f->dv,
                     .dr = f->dr};
}

static void fwd(Fix *f) {
    if (f->recurrent) ops_cpu()->family->linear_recurrent_forward(&f->a);
    else ops_cpu()->family->forward(&f->a);
}

static void bwd(Fix *f) {
    memset(f->dq, 0, sizeof f->dq), memset(f->dk, 0, sizeof f->dk);
    memset(f->dv, 0, sizeof f->dv), memset(f->dr, 0, sizeof f->dr);
    memset(f->dlogbw, 0, sizeof f->dlogbw);
    if (f->recurrent) ops_cpu()->family->linear_recurrent_backward(&f->a);
    else ops_cpu()->family->backward(&f->a);
}

static double loss(void *ctx) {
    Fix *f = ctx;
    fwd(f);
    double s = 0;
    for (int i = 0; i < N; i++) s += (double)f->o[i] * f->G[i];
    return s;
}

/* forward + backward, then finite differences on every input the case uses */
static double grad_err(Fix *f) {
    fwd(f);
    bwd(f);
    double worst = 0, e;
    gsl_rng *r = test_rng(5);
    struct { real *x, *g; int n; int on; } in[] = {
        {f->q, f->dq, N, f->a.scale != 0 || f->a.probe == FAM_PROBE_SOLVED},
        {f->k, f->dk, N, 1},
        {f->v, f->dv, N, 1},
        {f->r, f->dr, N, f->a.probe == FAM_PROBE_GIVEN},
        {f->logbw, f->dlogbw, H, f->a.log_bw != NULL},
    };
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        if (!in[i].on) continue;
        real *g = malloc(sizeof(real) * (size_t)in[i].n);
        memcpy(g, in[i].g, sizeof(real) * (size_t)in[i].n);
        e = gradcheck(loss, f, in[i].x, g, (size_t)in[i].n, 0, 1e-5, r);
        free(g);
        if (getenv("VERBOSE")) printf("    input %zu: %.2e\n", i, e);
        if (e > worst || isnan(e)) worst = isnan(e) ? INFINITY : e;
    }
    gsl_rng_free(r);
    return worst;
}

static void expect_grad(Fix *f, const char *what, double tol) {
    double e = grad_err(f);
    printf("  %-52s worst rel err %.2e (bound %.0e)\n", what, e, tol);
    assert_true(e < tol);
}

/* ---- gradients ---------------------------------------------------------------------- */

static void test_grad_lla(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    fix_init(f, 1);
    expect_grad(f, "LLA, exact ridge gradient", 1e-6);
    f->a.window = 3, f->a.cg_precond = 1;
    expect_grad(f, "LLA, window 3, Jacobi preconditioner", 1e-6);
    f->a.window = 0, f->a.boundary = 0;
    expect_grad(f, "solved probe without (1+eta)", 1e-6);
    f->a.boundary = 1, f->a.scale = 0;
    expect_grad(f, "affine MesaNet (uniform weights)", 1e-6);
    f->a.scale = (real)0.5, f->a.log_bw = f->logbw, f->a.dlog_bw = f->dlogbw;
    expect_grad(f, "LLA, learned per-head bandwidth", 1e-6);
    free(f);
}

/* The official FlashLLA backward holds omega in lambda*omega constant (§2.4):
 * it is the exact gradient of the model whose ridge is frozen at the reference
 * point, and differs from the true gradient by a measurable amount at small
 * lambda. */
static void test_grad_ridge_modes(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    fix_init(f, 2);
    f->a.ridge = (real)0.3;
    fwd(f);
    bwd(f);
    real *exact = malloc(sizeof f->dq);
    memcpy(exact, f->dq, sizeof f->dq);
    memcpy(f->rlse, f->lse, sizeof f->lse);
    f->a.ridge_frozen = 1, f->a.ridge_lse = f->rlse; /* the frozen-ridge model */
    expect_grad(f, "frozen ridge gradient vs frozen-ridge model", 1e-6);
    fwd(f);
    bwd(f);
    double diff = norm_rel_err(f->dq, exact, N);
    printf("  |dq_frozen - dq_exact| / |dq_exact| = %.3e at lambda 0.3\n", diff);
    assert_true(diff > 1e-2);
    /* and the frozen gradient is not the gradient of the true forward */
    f->a.ridge_lse = NULL;
    double e = grad_err(f);
    printf("  frozen gradient vs true forward: worst rel err %.2e (must be large)\n", e);
    assert_true(e > 1e-3);
    free(exact);
    free(f);
}

static void test_grad_no_intercept(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    fix_init(f, 3);
    f->a.affine = 0, f->a.scale = 0, f->a.ridge = (real)0.7;
    expect_grad(f, "MesaNet (uniform, no intercept, solved)", 1e-6);
    f->a.scale = (real)0.4, f->a.window = 4;
    expect_grad(f, "kernel-weighted MesaNet, window 4", 1e-6);
    f->a.probe = FAM_PROBE_GIVEN, f->a.window = 0;
    expect_grad(f, "kernel-weighted linear attention", 1e-6);
    f->a.scale = 0;
    expect_grad(f, "linear attention (quadratic)", 1e-6);
    for (int i = 0; i < N; i++) f->k[i] = (real)exp((double)f->k[i]), f->r[i] = (real)exp((double)f->r[i]);
    f->a.normalize = 1;
    expect_grad(f, "linear attention, normalised, positive features", 1e-6);
    f->recurrent = 1;
    expect_grad(f, "linear attention, recurrent, normalised", 1e-6);
    f->a.normalize = 0;
    expect_grad(f, "linear attention, recurrent", 1e-6);
    free(f);
}

static void test_grad_given_probe(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    fix_init(f, 4);
    f->a.probe = FAM_PROBE_GIVEN, f->a.log_bw = f->logbw, f->a.dlog_bw = f->dlogbw;
    expect_grad(f, "Parallax with learned bandwidth", 1e-6);
    f->a.probe = FAM_PROBE_ZERO;
    expect_grad(f, "softmax with learned bandwidth", 1e-6);
    free(f);
}

/* random points of the axis grid (bandwidth x probe x affine x window x boundary x
 * learned bandwidth), drawn with a fixed seed */
static void test_grad_random_grid(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    gsl_rng *r = test_rng(77);
    const double hs[] = {0.5, 1, 3, INFINITY};
    for (int n = 0; n < 12; n++) {
        fix_init(f, 100 + (unsigned long)n);
        double h = hs[gsl_rng_uniform_int(r, 4)];
        f->a.scale = isinf(h) ? 0 : (real)(1 / (h * sqrt((double)HD)));
        f->a.affine = (int)gsl_rng_uniform_int(r, 2);
        f->a.probe = f->a.affine ? (int)gsl_rng_uniform_int(r, 3) : 1 + (int)gsl_rng_uniform_int(r, 2);
        f->a.boundary = (int)gsl_rng_uniform_int(r, 2);
        f->a.window = (int)gsl_rng_uniform_int(r, 2) ? 2 + (int)gsl_rng_uniform_int(r, 4) : 0;
        f->a.cg_precond = (int)gsl_rng_uniform_int(r, 2);
        f->a.ridge = (real)(0.2 + gsl_rng_uniform(r));
        if (!isinf(h) && gsl_rng_uniform_int(r, 2)) f->a.log_bw = f->logbw, f->a.dlog_bw = f->dlogbw;
        char what[128];
        snprintf(what, sizeof what, "h=%g affine=%d probe=%d boundary=%d window=%d learned_h=%d",
                 h, f->a.affine, f->a.probe, f->a.boundary, f->a.window, f->a.log_bw != NULL);
        expect_grad(f, what, 1e-6);
    }
    gsl_rng_free(r);
    free(f);
}

static void attention_core(Fix *f, const real *r, real *o);

/* ---- identities --------------------------------------------------------------------- */

/* x = M^-1 y by Gaussian elimination with partial pivoting (n <= 8) */
static void dense_solve(double M[8][8], double *y, int n) {
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int i = c + 1; i < n; i++)
            if (fabs(M[i][c]) > fabs(M[p][c])) p = i;
        for (int j = 0; j < n; j++) {
            double t = M[c][j];
            M[c][j] = M[p][j], M[p][j] = t;
        }
        double t = y[c];
        y[c] = y[p], y[p] = t;
        for (int i = c + 1; i < n; i++) {
            double m = M[i][c] / M[c][c];
            for (int j = c; j < n; j++) M[i][j] -= m * M[c][j];
            y[i] -= m * y[c];
        }
    }
    for (int c = n - 1; c >= 0; c--) {
        for (int j = c + 1; j < n; j++) y[c] -= M[c][j] * y[j];
        y[c] /= M[c][c];
    }
}

#define EL(x, b, t, h, c) (x)[((size_t)(b) * T + (t)) * LD + (size_t)(h) * HD + (c)]

/* Dense references, per row (window = 0):
 *   mode 0 (LLA closed form, §1.3): o = obar - C_vk (C_kk + lam I)^-1 (kbar - q), rho = Sigma^-1 mu
 *   mode 1 (MesaNet, §3.3):         o = sum v k^T (sum k k^T + lam I)^-1 q
 *   mode 2 (value average):          o = mean of v_j, j <= i
 *   mode 3 (Parallax form, §3.1):    o = obar - C_vk r (affine linear attention at scale 0) */
static void dense_reference(const Fix *f, int mode, real *o, real *rho) {
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double p[T], m = -INFINITY, om = 0, kb[HD] = {0}, vb[HD] = {0};
                double C[8][8] = {{0}}, Cvk[HD][HD] = {{0}}, Sg[8][8] = {{0}}, y[HD], mu[HD];
                for (int j = 0; j <= i; j++) {
                    double s = 0;
                    for (int c = 0; c < HD; c++) s += EL(f->q, b, i, h, c) * EL(f->k, b, j, h, c);
                    p[j] = f->a.scale * s;
                    m = fmax(m, p[j]);
                }
                for (int j = 0; j <= i; j++) om += p[j] = exp(p[j] - m);
                for (int j = 0; j <= i; j++) {
                    p[j] /= om;
                    for (int c = 0; c < HD; c++)
                        kb[c] += p[j] * EL(f->k, b, j, h, c), vb[c] += p[j] * EL(f->v, b, j, h, c);
                }
                double lam = f->a.ridge;
                for (int j = 0; j <= i; j++)
                    for (int c = 0; c < HD; c++)
                        for (int e = 0; e < HD; e++) {
                            double kc = EL(f->k, b, j, h, c), ke = EL(f->k, b, j, h, e);
                            double qc = EL(f->q, b, i, h, c), qe = EL(f->q, b, i, h, e);
                            C[c][e] += p[j] * (kc - kb[c]) * (ke - kb[e]);
                            Cvk[c][e] += p[j] * (EL(f->v, b, j, h, c) - vb[c]) * (ke - kb[e]);
                            Sg[c][e] += mode == 1 ? kc * ke : p[j] * (kc - qc) * (ke - qe);
                        }
                for (int c = 0; c < HD; c++) {
                    C[c][c] += lam, Sg[c][c] += lam;
                    mu[c] = kb[c] - EL(f->q, b, i, h, c);
                    y[c] = mode == 1 ? EL(f->q, b, i, h, c) : mu[c];
                }
                if (mode == 3) {
                    for (int c = 0; c < HD; c++) {
                        double corr = 0;
                        for (int e = 0; e < HD; e++) corr += Cvk[c][e] * EL(f->r, b, i, h, e);
                        EL(o, b, i, h, c) = (real)(vb[c] - corr);
                    }
                    continue;
                }
                if (mode == 2) {
                    for (int c = 0; c < HD; c++) {
                        double s = 0;
                        for (int j = 0; j <= i; j++) s += EL(f->v, b, j, h, c);
                        EL(o, b, i, h, c) = (real)(s / (i + 1));
                    }
                    continue;
                }
                if (mode == 1) { /* y = (sum k k^T + lam I)^-1 q; o = sum_j v_j (k_j.y) */
                    dense_solve(Sg, y, HD);
                    for (int c = 0; c < HD; c++) {
                        double acc = 0;
                        for (int j = 0; j <= i; j++) {
                            double kt = 0;
                            for (int e = 0; e < HD; e++) kt += EL(f->k, b, j, h, e) * y[e];
                            acc += EL(f->v, b, j, h, c) * kt;
                        }
                        EL(o, b, i, h, c) = (real)acc;
                    }
                    continue;
                }
                double x[HD];
                memcpy(x, mu, sizeof x);
                dense_solve(Sg, x, HD); /* rho = Sigma^-1 mu (q-centred, §1.2) */
                dense_solve(C, y, HD);  /* (C_kk + lam I)^-1 (kbar - q) */
                for (int c = 0; c < HD; c++) {
                    double corr = 0;
                    for (int e = 0; e < HD; e++) corr += Cvk[c][e] * y[e];
                    EL(o, b, i, h, c) = (real)(vb[c] - corr);
                    if (rho) EL(rho, b, i, h, c) = (real)x[c];
                }
            }
}

static void test_lla_closed_form(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    real *o = calloc(N, sizeof(real)), *rho = calloc(N, sizeof(real));
    fix_init(f, 6);
    double sc[] = {1 / sqrt((double)HD), 0};
    for (int pc = 0; pc < 2; pc++)
        for (int k = 0; k < 2; k++) {
            f->a.scale = (real)sc[k], f->a.cg_precond = pc;
            fwd(f);
            dense_reference(f, 0, o, rho);
            double eo = max_rel_err(f->o, o, N, 1e-12), er = max_rel_err(f->rho, rho, N, 1e-12);
            double worst = 0;
            for (int i = 0; i < NR; i++) worst = fmax(worst, f->resid[i]);
            printf("  scale %.3f precond %d: |o - closed form| %.2e, |rho - dense| %.2e, CG resid %.1e\n",
                   sc[k], pc, eo, er, worst);
            assert_true(eo < 1e-10);
            assert_true(er < 1e-10);
            assert_true(worst < 1e-10);
        }
    /* too few CG iterations leave a residual the metric reports */
    f->a.cg_iters = 1, f->a.cg_precond = 0, f->a.scale = (real)sc[0];
    fwd(f);
    double worst = 0;
    for (int i = 0; i < NR; i++) worst = fmax(worst, f->resid[i]);
    printf("  1 CG iteration: worst relative residual %.2e\n", worst);
    assert_true(worst > 1e-3);
    free(o), free(rho), free(f);
}

static void test_uniform_member_closed_forms(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    real *o = calloc(N, sizeof(real));
    fix_init(f, 7);
    f->a.affine = 0, f->a.scale = 0, f->a.ridge = (real)0.7;
    fwd(f);
    dense_reference(f, 1, o, NULL);
    double e = max_rel_err(f->o, o, N, 1e-12);
    printf("  mesa vs sum v k^T (sum k k^T + lam I)^-1 q: %.2e\n", e);
    assert_true(e < 1e-10);
    f->a.affine = 1, f->a.probe = FAM_PROBE_ZERO;
    fwd(f);
    dense_reference(f, 2, o, NULL);
    e = max_rel_err(f->o, o, N, 1e-12);
    printf("  value_avg vs running mean of v: %.2e\n", e);
    assert_true(e < 1e-12);
    f->a.probe = FAM_PROBE_GIVEN;
    fwd(f);
    real *o2 = calloc(N, sizeof(real));
    dense_reference(f, 3, o, NULL);
    attention_core(f, f->r, o2);
    e = fmax(max_rel_err(f->o, o, N, 1e-12), max_rel_err(o2, o, N, 1e-12));
    printf("  affine linear attention (family core, attention core) vs vbar - C_vk r: %.2e\n", e);
    assert_true(e < 1e-12);
    free(o2);
    free(o), free(f);
}

/* sum_j l_ij = 1 (§1.2): with every value equal to 1 the output is 1 */
static void test_weights_sum_to_one(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    fix_init(f, 8);
    for (int i = 0; i < N; i++) f->v[i] = 1;
    f->a.delta_eps = 0; /* the guard shifts delta by 1e-12 (§1.2) */
    for (int bf = 0; bf < 2; bf++) {
        f->a.boundary = bf, f->a.ridge = (real)0.05;
        fwd(f);
        double e = 0;
        for (int i = 0; i < N; i++) e = fmax(e, fabs(f->o[i] - 1));
        printf("  boundary %d: max |sum_j l_ij - 1| = %.2e\n", bf, e);
        assert_true(e < 1e-12);
    }
    free(f);
}

/* runs the plain attention core (ops->attention_forward) on the fixture */
static void attention_core(Fix *f, const real *r, real *o) {
    real lse[NR], tbar[NR], *obar = calloc(N, sizeof(real));
    AttnArgs a = {.B = B, .T = T, .H = H, .hd = HD, .ld_in = LD, .ld_out = LD,
                  .scale = f->a.scale, .window = f->a.window, .q = f->q, .k = f->k, .v = f->v,
                  .r = r, .o = o, .obar = obar, .lse = lse, .tbar = tbar};
    ops_cpu()->attention_forward(&a);
    free(obar);
}

static void test_limits(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    real *o = calloc(N, sizeof(real)), *o2 = calloc(N, sizeof(real));
    fix_init(f, 9);
    /* lambda -> inf: rho -> 0, softmax */
    attention_core(f, NULL, o);
    f->a.ridge = (real)1e9;
    fwd(f);
    double e = max_rel_err(f->o, o, N, 1e-12);
    printf("  lambda 1e9 vs softmax: %.2e\n", e);
    assert_true(e < 1e-7);
    /* probe zero: softmax exactly, with a window too */
    f->a.probe = FAM_PROBE_ZERO, f->a.window = 3;
    attention_core(f, NULL, o);
    fwd(f);
    e = max_rel_err(f->o, o, N, 1e-12);
    printf("  probe zero vs softmax core: %.2e\n", e);
    assert_true(e < 1e-13);
    /* given probe: the Parallax core */
    f->a.probe = FAM_PROBE_GIVEN;
    attention_core(f, f->r, o);
    fwd(f);
    e = max_rel_err(f->o, o, N, 1e-12);
    printf("  given probe vs Parallax core: %.2e\n", e);
    assert_true(e < 1e-13);
    /* bandwidth -> inf converges to the uniform member, at rate 1/h */
    f->a.probe = FAM_PROBE_SOLVED, f->a.window = 0, f->a.ridge = (real)0.3, f->a.scale = 0;
    fwd(f);
    memcpy(o2, f->o, sizeof(real) * N);
    double prev = INFINITY;
    for (double h = 1e2; h <= 1e6; h *= 100) {
        f->a.scale = (real)(1 / (h * sqrt((double)HD)));
        fwd(f);
        e = max_rel_err(f->o, o2, N, 1e-12);
        printf("  LLA at bandwidth %.0e vs uniform member: %.2e\n", h, e);
        assert_true(e < 10 / h && e < prev);
        prev = e;
    }
    free(o), free(o2), free(f);
}

static void test_recurrent_matches_quadratic(void **s) {
    (void)s;
    Fix *f = malloc(sizeof *f);
    real *o = calloc(N, sizeof(real)), *g[3];
    fix_init(f, 10);
    for (int i = 0; i < N; i++) f->k[i] = (real)exp((double)f->k[i]);
    f->a.affine = 0, f->a.scale = 0, f->a.probe = FAM_PROBE_GIVEN;
    for (int nz = 0; nz < 2; nz++) {
        f->a.normalize = nz;
        f->recurrent = 0;
        fwd(f);
        bwd(f);
        memcpy(o, f->o, sizeof(real) * N);
        real *src[3] = {f->dk, f->dv, f->dr};
        for (int i = 0; i < 3; i++) g[i] = malloc(sizeof(real) * N), memcpy(g[i], src[i], sizeof(real) * N);
        f->recurrent = 1;
        fwd(f);
        bwd(f);
        double e = max_rel_err(f->o, o, N, 1e-12);
        for (int i = 0; i < 3; i++) e = fmax(e, max_rel_err(src[i], g[i], N, 1e-12)), free(g[i]);
        printf("  normalize %d: recurrent vs quadratic (o, dk, dv, dr): %.2e\n", nz, e);
        assert_true(e < 1e-12);
    }
    free(o), free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_lla),
        cmocka_unit_test(test_grad_ridge_modes),
        cmocka_unit_test(test_grad_no_intercept),
        cmocka_unit_test(test_grad_given_probe),
        cmocka_unit_test(test_grad_random_grid),
        cmocka_unit_test(test_lla_closed_form),
        cmocka_unit_test(test_uniform_member_closed_forms),
        cmocka_unit_test(test_weights_sum_to_one),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_recurrent_matches_quadratic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
