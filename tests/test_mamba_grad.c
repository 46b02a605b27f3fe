/* Whole-model finite-difference gradient checks (double precision) of the
 * Mamba-1 and Mamba-2 mixers, one per option. Every parameter tensor of the
 * layer (projections, conv, dt bias, A_log, D, gated-norm weight) is probed. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>

/* dt starts in [1e-3, 1e-1] (§1.4), so the gradients of dt_proj, dt_bias and
 * A_log are ~1e-6 in absolute size; central differences (h = 1e-5) then carry
 * ~4e-11 of round-off, i.e. up to ~5e-5 relative. A wrong backward gives O(1). */
#define TOL 2e-4

static const char *base = "task.vocab_size=12 task.seq_len=10 model.d_model=8 model.heads=2 model.layers=2 ";

static void check(const char *extra, double tol) { assert_model_grad(base, extra, 8, tol); }

static void test_mamba(void **s) { (void)s; check("model.mixer=mamba", TOL); }
static void test_mamba_options(void **s) {
    (void)s; /* wider state, explicit dt rank, short conv 2, N(0,0.02) linears, with the MLP */
    check("model.mixer=mamba mamba.d_state=6 mamba.dt_rank=3 mamba.d_conv=2 model.init=normal "
          "model.mlp=swiglu", TOL);
}
static void test_mamba_expand1_conv1(void **s) {
    (void)s;
    check("model.mixer=mamba mamba.expand=1 mamba.d_conv=1", TOL);
}
static void test_mamba2_recurrent(void **s) {
    (void)s;
    check("model.mixer=mamba2 mamba2.headdim=4 mamba2.d_state=5 mamba2.chunk=0", TOL);
}
static void test_mamba2_chunked(void **s) {
    (void)s; /* 10 tokens in chunks of 4: the last chunk is short */
    check("model.mixer=mamba2 mamba2.headdim=4 mamba2.d_state=5 mamba2.chunk=4", TOL);
}
static void test_mamba2_groups(void **s) {
    (void)s; /* 4 heads in 2 groups sharing B, C and the norm groups; chunks of 2 */
    check("model.mixer=mamba2 mamba2.headdim=4 mamba2.d_state=3 mamba2.ngroups=2 mamba2.chunk=2 "
          "mamba.d_conv=3 model.mlp=swiglu", TOL);
}
static void test_mamba2_one_chunk(void **s) {
    (void)s; /* chunk longer than the sequence: one chunk, no state passing */
    check("model.mixer=mamba2 mamba2.headdim=16 mamba2.d_state=4 mamba2.chunk=64 model.init=normal", TOL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mamba),
        cmocka_unit_test(test_mamba_options),
        cmocka_unit_test(test_mamba_expand1_conv1),
        cmocka_unit_test(test_mamba2_recurrent),
        cmocka_unit_test(test_mamba2_chunked),
        cmocka_unit_test(test_mamba2_groups),
        cmocka_unit_test(test_mamba2_one_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
