/* MesaNet (models/mesanet.c, the mesa core of kernels/cpu/delta_cpu.c), in double:
 * - with gates disabled the core equals the dense closed form
 *   o_t = sum_j v_j k_j^T (sum_j k_j k_j^T + Lambda)^{-1} q_t (baselines.md §9.2);
 * - CG against the exact solve, and the bias of FLA's epsilon (§9.5);
 * - finite-difference gradients of the core (implicit differentiation, §9.4) and of
 *   the whole model for every option; lambda init and bounds; T = 1024. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_delta.h"
#include "../kernels/ops_family.h"
#include "../models/mixer.h"

static const DeltaOps *D(void) { return ops_cpu()->delta; }

typedef struct {
    MesaArgs a;
    real *q, *k, *v, *beta, *g, *lam, *R;
    size_t nq, nv, nh;
} Core;

static Core core_new(int B, int T, int H, int K, int V, int gates, int cg_steps, double cg_eps,
                     gsl_rng *r) {
    Core c = {0};
    c.nq = (size_t)B * T * H * K, c.nv = (size_t)B * T * H * V, c.nh = (size_t)B * T * H;
    c.q = malloc(sizeof(real) * c.nq), c.k = malloc(sizeof(real) * c.nq);
    c.v = malloc(sizeof(real) * c.nv), c.R = malloc(sizeof(real) * c.nv);
    c.beta = malloc(sizeof(real) * c.nh), c.g = malloc(sizeof(real) * c.nh);
    c.lam = malloc(sizeof(real) * (size_t)H * K);
    fill_randn(c.q, c.nq, r, 1), fill_randn(c.k, c.nq, r, 0.6), fill_randn(c.v, c.nv, r, 1);
    fill_randn(c.R, c.nv, r, 1);
    for (size_t i = 0; i < c.nh; i++) {
        c.beta[i] = gates ? (real)(0.1 + 0.9 * gsl_rng_uniform(r)) : 1;
        c.g[i] = (real)(-0.3 * gsl_rng_uniform(r));
    }
    for (int i = 0; i < H * K; i++) c.lam[i] = (real)(0.3 + gsl_rng_uniform(r));
    c.a = (MesaArgs){.B = B, .T = T, .H = H, .K = K, .V = V, .cg_steps = cg_steps,
                     .cg_eps = (real)cg_eps, .q = c.q, .k = c.k, .v = c.v, .beta = c.beta,
                     .g = gates ? c.g : NULL, .lam = c.lam};
    c.a.o = calloc(c.nv, sizeof(real)), c.a.qstar = calloc(c.nq, sizeof(real));
    c.a.ckpt = calloc(delta_ckpt_len(B, H, T, (size_t)K * (K + V)), sizeof(real));
    c.a.dq = calloc(c.nq, sizeof(real)), c.a.dk = calloc(c.nq, sizeof(real));
    c.a.dv = calloc(c.nv, sizeof(real)), c.a.dbeta = calloc(c.nh, sizeof(real));
    c.a.dg = calloc(c.nh, sizeof(real)), c.a.dlam = calloc((size_t)H * K, sizeof(real));
    c.a.dout = c.R;
    return c;
}

static void core_free(Core *c) {
    free(c->q), free(c->k), free(c->v), free(c->beta), free(c->g), free(c->lam), free(c->R);
    free(c->a.o), free(c->a.qstar), free(c->a.ckpt), free(c->a.dq), free(c->a.dk);
    free(c->a.dv), free(c->a.dbeta), free(c->a.dg), free(c->a.dlam);
}

static double core_loss(void *ctx) {
    Core *c = ctx;
    D()->mesa_forward(&c->a);
    double s = 0;
    for (size_t i = 0; i < c->nv; i++) s += c->a.o[i] * c->R[i];
    return s;
}

/* x = A^{-1} b by Gaussian elimination with partial pivoting (A is n x n, destroyed) */
static void dense_solve(double *A, double *b, double *x, int n) {
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(A[r * n + c]) > fabs(A[p * n + c])) p = r;
        for (int j = 0; j < n; j++) {
            double t = A[c * n + j];
            A[c * n + j] = A[p * n + j], A[p * n + j] = t;
        }
        double t = b[c];
        b[c] = b[p], b[p] = t;
        for (int r = c + 1; r < n; r++) {
            double f = A[r * n + c] / A[c * n + c];
            for (int j = c; j < n; j++) A[r * n + j] -= f * A[c * n + j];
            b[r] -= f * b[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double s = b[r];
        for (int j = r + 1; j < n; j++) s -= A[r * n + j] * x[j];
        x[r] = s / A[r * n + r];
    }
}

/* the dense closed form of the ungated core, from sums over the prefix */
static void closed_form(const Core *c, real *out) {
    const MesaArgs *a = &c->a;
    int K = a->K, V = a->V, H = a->H;
    double *A = malloc(sizeof(double) * K * K), *b = malloc(sizeof(double) * K);
    double *x = malloc(sizeof(double) * K);
    for (int bb = 0; bb < a->B; bb++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < a->T; t++) {
                size_t ht = ((size_t)bb * a->T + t) * H + h;
                for (int i = 0; i < K; i++) {
                    for (int j = 0; j < K; j++) {
                        double s = i == j ? a->lam[h * K + i] : 0;
                        for (int u = 0; u <= t; u++) {
                            size_t hu = ((size_t)bb * a->T + u) * H + h;
                            s += (double)a->k[hu * K + i] * a->k[hu * K + j];
                        }
                        A[i * K + j] = s;
                    }
                    b[i] = a->q[ht * K + i];
                }
                dense_solve(A, b, x, K);
                for (int e = 0; e < V; e++) {
                    double s = 0;
                    for (int u = 0; u <= t; u++) {
                        size_t hu = ((size_t)bb * a->T + u) * H + h;
                        double kx = 0;
                        for (int i = 0; i < K; i++) kx += a->k[hu * K + i] * x[i];
                        s += a->v[hu * V + e] * kx;
                    }
                    out[ht * V + e] = (real)s;
                }
            }
    free(A), free(b), free(x);
}

static void test_ungated_equals_closed_form(void **s) {
    (void)s;
    gsl_rng *r = test_rng(1);
    int steps[2] = {0, 12};
    for (int i = 0; i < 2; i++) {
        Core c = core_new(2, 9, 2, 5, 3, 0, steps[i], 0, r);
        core_loss(&c);
        real *ref = malloc(sizeof(real) * c.nv);
        closed_form(&c, ref);
        double err = max_rel_err(c.a.o, ref, c.nv, 1e-12);
        printf("  cg_steps=%d%s: core vs closed form max rel err %.2e\n", steps[i], steps[i] ? "" : " (Cholesky)", err);
        assert_true(err < 1e-10);
        free(ref), core_free(&c);
    }
    gsl_rng_free(r);
}

/* The attention family's `mesa` member (uniform weights, no intercept, solved probe,
 * ridge lambda) runs the same map through its own core: mesanet with gates off must
 * match it on the same q, k, v. */
static void test_ungated_equals_family_mesa(void **s) {
    (void)s;
    const FamilyOps *F = ops_cpu()->family;
    if (!F || !F->forward || !mixer_find("mesa")) skip();
    gsl_rng *r = test_rng(4);
    int B = 2, T = 9, H = 2, K = 5;
    Core c = core_new(B, T, H, K, K, 0, 0, 0, r);
    for (int i = 0; i < H * K; i++) c.lam[i] = (real)0.7; /* one ridge for every channel */
    core_loss(&c);
    size_t nr = (size_t)B * H * T;
    real *o = calloc(c.nv, sizeof(real)), *rho = calloc(c.nq, sizeof(real));
    real *lse = calloc(nr, sizeof(real)), *den = calloc(nr, sizeof(real));
    real *res = calloc(nr, sizeof(real));
    FamArgs fa = {.B = B, .T = T, .H = H, .hd = K, .ld_in = H * K, .ld_out = H * K, .scale = 0,
                  .probe = FAM_PROBE_SOLVED, .affine = 0, .ridge = (real)0.7, .cg_iters = 200,
                  .cg_tol = (real)1e-30, .q = c.q, .k = c.k, .v = c.v, .o = o, .rho = rho,
                  .lse = lse, .den = den, .cg_resid = res};
    F->forward(&fa);
    double err = max_rel_err(c.a.o, o, c.nv, 1e-12);
    printf("  mesanet core (gates off) vs family mesa core: max rel err %.2e\n", err);
    assert_true(err < 1e-9);
    free(o), free(rho), free(lse), free(den), free(res), core_free(&c), gsl_rng_free(r);
}

/* CG with eps = 0 and at least K steps is exact; FLA's eps = 1e-5 leaves a bias of
 * order sqrt(eps) that must stay small but is visible (§9.5). */
static void test_cg_vs_exact(void **s) {
    (void)s;
    gsl_rng *r = test_rng(2);
    Core ex = core_new(1, 40, 2, 6, 4, 1, 0, 0, r);
    core_loss(&ex);
    double e[3];
    struct { int steps; double eps; } cases[3] = {{6, 0}, {30, 1e-5}, {2, 0}};
    for (int i = 0; i < 3; i++) {
        gsl_rng *r2 = test_rng(2);
        Core c = core_new(1, 40, 2, 6, 4, 1, cases[i].steps, cases[i].eps, r2);
        core_loss(&c);
        e[i] = max_rel_err(c.a.qstar, ex.a.qstar, c.nq, 1e-12);
        printf("  CG %d steps eps %g: q* max rel err vs exact %.2e\n", cases[i].steps,
               cases[i].eps, e[i]);
        core_free(&c), gsl_rng_free(r2);
    }
    assert_true(e[0] < 1e-9);
    assert_true(e[1] < 2e-2);
    assert_true(e[2] > 1e-4); /* 2 steps on a 6-dim system cannot be exact */
    core_free(&ex), gsl_rng_free(r);
}

static void core_grad_case(int gates, int steps) {
    gsl_rng *r = test_rng(20 + gates + steps);
    Core c = core_new(2, 70, 2, 3, 4, gates, steps, 0, r);
    core_loss(&c);
    D()->mesa_backward(&c.a);
    struct { const char *name; real *x, *g; size_t n; } t[] = {
        {"q", c.q, c.a.dq, c.nq}, {"k", c.k, c.a.dk, c.nq}, {"v", c.v, c.a.dv, c.nv},
        {"beta", c.beta, c.a.dbeta, c.nh}, {"g", c.g, c.a.dg, gates ? c.nh : 0},
        {"lam", c.lam, c.a.dlam, (size_t)c.a.H * c.a.K}};
    for (int i = 0; i < 6; i++) {
        if (!t[i].n) continue;
        double e = gradcheck(core_loss, &c, t[i].x, t[i].g, t[i].n, 40, 1e-5, r);
        printf("  gates %d cg_steps %d: d%-5s rel err %.2e\n", gates, steps, t[i].name, e);
        assert_true(e < 1e-5);
    }
    core_free(&c), gsl_rng_free(r);
}

static void test_core_grad_exact(void **s) { (void)s; core_grad_case(1, 0); }
static void test_core_grad_cg(void **s) { (void)s; core_grad_case(1, 10); }
static void test_core_grad_ungated(void **s) { (void)s; core_grad_case(0, 0); }

static void model_case(const char *extra) {
    assert_model_grad("task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 model.layers=2 "
                      "model.mixer=mesanet", extra, 6, 1e-5);
}

static void test_model_grad(void **s) {
    (void)s;
    model_case("mixer.cg_steps=0");
    model_case("mixer.cg_steps=20 mixer.cg_eps=0 mixer.output_gate=true");
    model_case("mixer.cg_steps=0 mixer.mesa_gates=false mixer.short_conv=0");
}

static void test_lambda(void **s) {
    (void)s;
    Config *cfg = test_config("task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 "
                              "model.mixer=mesanet mixer.lambda_init=1.5 mixer.lambda_lb=0.25");
    Err e = {{0}};
    Model *m = model_create(cfg, ops_cpu(), 1, 8, &e);
    assert_non_null(m);
    model_init_params(m, 3);
    int i = model_find_param(m, "blocks.0.mixer.lambda_p");
    assert_true(i >= 0);
    const real *p = model_params(m) + model_spec(m, i)->offset;
    real lam[16], x[3] = {-800, 0, 800}, y[3];
    D()->map_forward(lam, p, 16, DELTA_MAP_SOFTPLUS, 1, (real)0.25);
    for (int j = 0; j < 16; j++) assert_true(fabs(lam[j] - 1.5) < 1e-12);
    D()->map_forward(y, x, 3, DELTA_MAP_SOFTPLUS, 1, (real)0.25);
    assert_true(y[0] >= 0.25 && y[0] < 0.25 + 1e-12 && isfinite(y[2])); /* never below lb */
    model_free(m), cfg_free(cfg);
    /* lambda_init must exceed the lower bound: a clear error naming the key */
    assert_config_rejected("task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 "
                           "model.mixer=mesanet mixer.lambda_init=0.2", "mixer.lambda_init");
}

static void test_long_sequence(void **s) {
    (void)s;
    assert_long_sequence_finite("task.vocab_size=12 task.seq_len=1024 model.d_model=16 model.heads=2 "
                                "model.layers=1 model.mixer=mesanet", 1024);
}

static void test_state_size(void **s) {
    (void)s;
    Config *cfg = test_config("model.mixer=mesanet model.d_model=32 model.heads=2");
    ModelDims dims = {.d = 32, .heads = 2};
    assert_int_equal(mixer_find("mesanet")->state_size(cfg, &dims), 2 * 2 * 16 * 16);
    cfg_free(cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ungated_equals_closed_form),
        cmocka_unit_test(test_ungated_equals_family_mesa),
        cmocka_unit_test(test_cg_vs_exact),
        cmocka_unit_test(test_core_grad_exact),
        cmocka_unit_test(test_core_grad_cg),
        cmocka_unit_test(test_core_grad_ungated),
        cmocka_unit_test(test_model_grad),
        cmocka_unit_test(test_lambda),
        cmocka_unit_test(test_long_sequence),
        cmocka_unit_test(test_state_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
