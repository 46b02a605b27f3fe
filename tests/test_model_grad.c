/* Whole-model finite-difference gradient checks in double precision, one per
 * mixer and option. A wrong backward anywhere in the model turns these red. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>

static const char *base =
    "task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 model.layers=2 ";

static void check(const char *extra, double tol) { assert_model_grad(base, extra, 6, tol); }

static void test_softmax(void **s) { (void)s; check("model.mixer=softmax", 1e-5); }
static void test_softmax_qknorm_window(void **s) {
    (void)s;
    check("model.mixer=softmax mixer.qk_norm=true mixer.window=3 mixer.rotary_dim=4", 1e-5);
}
static void test_softmax_nobias_normal_init(void **s) {
    (void)s;
    check("model.mixer=softmax mixer.qkv_bias=false model.init=normal mixer.rotary_dim=0", 1e-5);
}
static void test_parallax(void **s) { (void)s; check("model.mixer=parallax", 1e-5); }
static void test_parallax_gate(void **s) {
    (void)s;
    check("model.mixer=parallax mixer.probe_gate=true mixer.probe_rope=false", 1e-5);
}
static void test_parallax_nonorm_window(void **s) {
    (void)s;
    check("model.mixer=parallax mixer.probe_norm=false mixer.window=2 mixer.qk_norm=true", 1e-5);
}
static void test_no_mlp(void **s) { (void)s; check("model.mixer=parallax model.mlp=none", 1e-5); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_softmax_qknorm_window),
        cmocka_unit_test(test_softmax_nobias_normal_init),
        cmocka_unit_test(test_parallax),
        cmocka_unit_test(test_parallax_gate),
        cmocka_unit_test(test_parallax_nonorm_window),
        cmocka_unit_test(test_no_mlp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
