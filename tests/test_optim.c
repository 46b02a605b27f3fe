/* Optimizers and schedules: Newton-Schulz gives singular values near 1,
 * AdamW matches its formula, schedules hit their documented values. */
#include "testutil.h"

#include <gsl/gsl_linalg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../optim/optim.h"

static void singular_values(const real *x, int rows, int cols, double *sv) {
    int tall = rows >= cols, m = tall ? rows : cols, n = tall ? cols : rows;
    gsl_matrix *A = gsl_matrix_alloc((size_t)m, (size_t)n), *V = gsl_matrix_alloc((size_t)n, (size_t)n);
    gsl_vector *S = gsl_vector_alloc((size_t)n), *w = gsl_vector_alloc((size_t)n);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            gsl_matrix_set(A, tall ? (size_t)i : (size_t)j, tall ? (size_t)j : (size_t)i, x[i * cols + j]);
    gsl_linalg_SV_decomp(A, V, S, w);
    for (int i = 0; i < n; i++) sv[i] = gsl_vector_get(S, (size_t)i);
    gsl_matrix_free(A), gsl_matrix_free(V), gsl_vector_free(S), gsl_vector_free(w);
}

/* baselines.md §10.1: after 5 steps the singular values land in about
 * [0.47, 1.20] for sigma/||G||_F >= 1e-3; a wrong coefficient or a missing
 * normalisation leaves them far outside. */
static void ns_case(int rows, int cols) {
    gsl_rng *r = test_rng((unsigned long)(rows * 100 + cols));
    int n = rows * cols, mn = rows < cols ? rows : cols;
    real *x = malloc(sizeof(real) * (size_t)n);
    real *scratch = calloc((size_t)(2 * mn * mn + n + 1), sizeof(real));
    fill_randn(x, (size_t)n, r, 3.0);
    newton_schulz5(ops_cpu(), x, rows, cols, 5, scratch);
    double sv[256], lo = 1e9, hi = 0;
    singular_values(x, rows, cols, sv);
    for (int i = 0; i < mn; i++) lo = fmin(lo, sv[i]), hi = fmax(hi, sv[i]);
    printf("  %dx%d: singular values in [%.3f, %.3f]\n", rows, cols, lo, hi);
    assert_true(lo > 0.45 && hi < 1.25);
    free(x), free(scratch);
    gsl_rng_free(r);
}

static void test_newton_schulz_wide(void **s) { (void)s; ns_case(12, 40); }
static void test_newton_schulz_tall(void **s) { (void)s; ns_case(48, 16); }
static void test_newton_schulz_square(void **s) { (void)s; ns_case(24, 24); }

static void test_adamw_formula(void **s) {
    (void)s;
    real p[3] = {1, -2, 0.5}, g[3] = {0.1, -0.3, 2}, m[3] = {0}, v[3] = {0};
    OptHyper h = {.lr = 0.01, .wd = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                  .bc1 = 1 - 0.9, .bc2 = 1 - 0.999};
    real p0[3] = {1, -2, 0.5};
    ops_cpu()->adamw(p, g, m, v, 3, &h, 1);
    for (int i = 0; i < 3; i++) {
        /* first step: mhat = g, vhat = g^2 -> update = sign(g) (up to eps) */
        double want = p0[i] * (1 - 0.01 * 0.1) - 0.01 * g[i] / (fabs(g[i]) + 1e-8);
        assert_true(fabs(p[i] - want) < 1e-12);
    }
    /* no decay when wd is off for this tensor */
    real q[1] = {1}, gq[1] = {0}, mq[1] = {0}, vq[1] = {0};
    ops_cpu()->adamw(q, gq, mq, vq, 1, &h, 0);
    assert_true(q[0] == 1);
}

static Schedule sched(const char *args, long total, long spe) {
    Config *c = test_config(args);
    Schedule s;
    schedule_from_config(&s, c, total, spe);
    cfg_free(c);
    return s;
}

static void test_cosine_per_epoch(void **s) {
    (void)s;
    /* 10 epochs of 5 steps: constant within an epoch, PyTorch CosineAnnealingLR values */
    Schedule c = sched("schedule=cosine lr=1e-3 min_lr=1e-6 schedule.unit=epoch", 50, 5);
    assert_true(fabs(schedule_lr(&c, 0) - 1e-3) < 1e-15);
    assert_true(schedule_lr(&c, 4) == schedule_lr(&c, 0));
    double e3 = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + cos(M_PI * 3 / 10));
    assert_true(fabs(schedule_lr(&c, 15) - e3) < 1e-15);
    assert_true(schedule_lr(&c, 49) > 1e-6 && schedule_lr(&c, 49) < 1e-4);
}

static void test_wsd_and_wd_anneal(void **s) {
    (void)s;
    Schedule w = sched("schedule=wsd schedule.unit=step lr=1 min_lr=0 warmup=0.1 wsd.decay_frac=0.2 "
                       "weight_decay=0.1 wd_anneal_gamma=2", 100, 10);
    assert_true(schedule_lr(&w, 0) < 0.2);               /* warmup */
    assert_true(schedule_lr(&w, 50) == 1);               /* stable */
    assert_true(fabs(schedule_lr(&w, 90) - 0.5) < 1e-12); /* halfway through linear decay */
    assert_true(fabs(schedule_wd(&w, 50) - 0.1) < 1e-15);
    assert_true(fabs(schedule_wd(&w, 90) - 0.1 * 0.25) < 1e-12); /* (1-0.5)^2 */
    Schedule c = sched("schedule=constant lr=0.3", 100, 10);
    assert_true(schedule_lr(&c, 0) == 0.3 && schedule_lr(&c, 99) == 0.3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_newton_schulz_wide),   cmocka_unit_test(test_newton_schulz_tall),
        cmocka_unit_test(test_newton_schulz_square), cmocka_unit_test(test_adamw_formula),
        cmocka_unit_test(test_cosine_per_epoch),     cmocka_unit_test(test_wsd_and_wd_anneal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
