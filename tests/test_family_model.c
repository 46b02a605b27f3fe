/* Whole-model finite-difference gradient checks (double) for every named
 * member of the attention family and for points of its axis grid
 * (parallax_lla.md §3.3), plus the config rules of the family's keys. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "../models/mixer.h"
#include "../train/train.h"

static const char *base =
    "task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 model.layers=1 mixer.cg_tol=0 ";

static void check(const char *extra, double tol) { assert_model_grad(base, extra, 6, tol); }

/* one test per named member (the CG solves get enough iterations to converge,
 * since the backward is the gradient of the converged solve) */
static void test_lla(void **s) { (void)s; check("model.mixer=lla mixer.cg_iters=40 mixer.ridge=0.5", 1e-5); }
static void test_lla_precond_window(void **s) {
    (void)s;
    check("model.mixer=lla mixer.cg_iters=40 mixer.cg_precondition=true mixer.window=3 "
          "mixer.qk_norm=true", 1e-5);
}
static void test_lla_no_boundary(void **s) {
    (void)s;
    check("model.mixer=lla mixer.boundary_factor=false mixer.cg_iters=40 mixer.ridge=0.3", 1e-5);
}
static void test_value_avg(void **s) { (void)s; check("model.mixer=value_avg", 1e-5); }
static void test_affine_linear_attention(void **s) {
    (void)s;
    check("model.mixer=affine_linear_attention", 1e-5);
}
static void test_affine_mesa(void **s) { (void)s; check("model.mixer=affine_mesa mixer.cg_iters=40", 1e-5); }
static void test_linear_attention(void **s) {
    (void)s;
    check("model.mixer=linear_attention mixer.probe_norm=false", 1e-5);
}
static void test_linear_attention_recurrent(void **s) {
    (void)s;
    check("model.mixer=linear_attention mixer.algorithm=recurrent mixer.feature_map=elu1 "
          "mixer.normalize=true", 1e-5);
}
static void test_linear_attention_relu(void **s) {
    (void)s;
    check("model.mixer=linear_attention mixer.feature_map=relu mixer.window=3", 1e-5);
}
static void test_mesa(void **s) { (void)s; check("model.mixer=mesa mixer.cg_iters=40 mixer.ridge=0.7", 1e-5); }

/* mixer.ridge_grad=frozen reaches the core: FlashLLA's gradient is not the
 * gradient of the true forward at small lambda (parallax_lla.md §2.4) */
static void test_lla_frozen_ridge_is_wired(void **s) {
    (void)s;
    char args[512];
    snprintf(args, sizeof args, "%s%s", base,
             "model.mixer=lla mixer.cg_iters=40 mixer.ridge=0.2 mixer.ridge_grad=frozen");
    double err = model_gradcheck(args, 2, 6, 0);
    printf("  frozen ridge gradient vs finite differences of the model: %.3e (must be large)\n", err);
    assert_true(err > 1e-3);
}

/* points of the grid that no preset names */
static void test_grid_points(void **s) {
    (void)s;
    check("model.mixer=family mixer.bandwidth=2.5 mixer.bandwidth_learned=true mixer.qkv_bias=false", 1e-5);
    check("model.mixer=family mixer.bandwidth=0.7 mixer.probe=learned mixer.bandwidth_learned=true "
          "mixer.window=4", 1e-5);
    check("model.mixer=family mixer.bandwidth=1.5 mixer.probe=solved mixer.bandwidth_learned=true "
          "mixer.cg_iters=40", 1e-5);
    check("model.mixer=family mixer.bandwidth=3 mixer.probe=learned mixer.affine=false", 1e-5);
    check("model.mixer=family mixer.bandwidth=2 mixer.probe=solved mixer.affine=false "
          "mixer.window=5 mixer.cg_iters=40", 1e-5);
    check("model.mixer=family mixer.bandwidth=2 mixer.probe=learned mixer.affine=false "
          "mixer.normalize=true mixer.feature_map=elu1", 1e-5);
    check("model.mixer=family mixer.bandwidth=inf mixer.probe=solved mixer.boundary_factor=false "
          "mixer.cg_iters=40", 1e-5);
}

/* A preset only fills keys the user left alone: lla with bandwidth inf is affine_mesa. */
static void test_presets_are_axes(void **s) {
    (void)s;
    Config *c = test_config("model.mixer=lla mixer.bandwidth=inf");
    assert_string_equal(cfg_str(c, "mixer.probe"), "solved");
    assert_true(isinf(cfg_float(c, "mixer.bandwidth")));
    assert_true(cfg_bool(c, "mixer.affine"));
    cfg_free(c);
    c = test_config("model.mixer=mesa");
    assert_string_equal(cfg_str(c, "mixer.probe"), "solved");
    assert_false(cfg_bool(c, "mixer.affine"));
    cfg_free(c);
}

static void expect_error(const char *args, const char *needle) {
    Config *c = cfg_new();
    Err e = {{0}};
    char *copy = strdup(args), *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save))
        assert_int_equal(cfg_parse_arg(c, t, &e), 0);
    free(copy);
    int rc = config_resolve(c, &e);
    Model *m = NULL;
    if (rc == 0) m = model_create(c, ops_cpu(), 2, 8, &e);
    assert_null(m);
    printf("    %s -> %s\n", args, e.msg);
    assert_non_null(strstr(e.msg, needle));
    cfg_free(c);
}

static void test_bad_axis_combinations(void **s) {
    (void)s;
    expect_error("model.mixer=family mixer.bandwidth=inf mixer.bandwidth_learned=true",
                 "mixer.bandwidth_learned");
    expect_error("model.mixer=family mixer.affine=false", "mixer.probe");
    expect_error("model.mixer=lla mixer.algorithm=recurrent", "mixer.algorithm");
    expect_error("model.mixer=parallax mixer.feature_map=relu", "mixer.feature_map");
    expect_error("model.mixer=softmax mixer.normalize=true", "mixer.normalize");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lla),
        cmocka_unit_test(test_lla_precond_window),
        cmocka_unit_test(test_lla_no_boundary),
        cmocka_unit_test(test_value_avg),
        cmocka_unit_test(test_affine_linear_attention),
        cmocka_unit_test(test_affine_mesa),
        cmocka_unit_test(test_linear_attention),
        cmocka_unit_test(test_linear_attention_recurrent),
        cmocka_unit_test(test_linear_attention_relu),
        cmocka_unit_test(test_mesa),
        cmocka_unit_test(test_lla_frozen_ridge_is_wired),
        cmocka_unit_test(test_grid_points),
        cmocka_unit_test(test_presets_are_axes),
        cmocka_unit_test(test_bad_axis_combinations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
