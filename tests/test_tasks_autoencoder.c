/* The compression backbone (mad.md §4.2, models/autoencoder.c): whole-model
 * finite-difference gradients in double precision, and its structure: the
 * logits at every position depend on the input only through the code at the
 * last position, so changing an earlier token changes them only through it. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *base =
    "task=compression task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 "
    "model.layers=2 ";

static void check(const char *extra, double tol) { assert_model_grad(base, extra, 6, tol); }

static void test_grad_softmax(void **s) { (void)s; check("model.mixer=softmax mixer.qk_norm=true model.init=pytorch", 1e-5); }
/* MAD's N(0,0.02) init: the encoder's gradients pass through the small decoder
 * weights and are ~1e-3 of the largest, so finite differences are noisier */
static void test_grad_normal_init(void **s) { (void)s; check("model.mixer=softmax", 2e-4); }
static void test_grad_parallax_pytorch_init(void **s) {
    (void)s;
    check("model.mixer=parallax model.init=pytorch", 1e-5);
}

/* the compression task presets the backbone and MAD's N(0,0.02) init, and the
 * decoder declares its tensors */
static void test_preset_and_params(void **s) {
    (void)s;
    Config *cfg = test_config(base);
    assert_string_equal(cfg_str(cfg, "model.backbone"), "autoencoder");
    assert_string_equal(cfg_str(cfg, "model.init"), "normal");
    Err e = {{0}};
    Model *m = model_create(cfg, ops_cpu(), 2, 8, &e);
    assert_non_null(m);
    const char *names[] = {"decoder.norm1", "decoder.w1", "decoder.b1", "decoder.norm2",
                           "decoder.w2", "decoder.b2"};
    for (int i = 0; i < 6; i++) assert_true(model_find_param(m, names[i]) >= 0);
    model_free(m);
    cfg_free(cfg);
    /* the language model has none of them */
    cfg = test_config("task=in_context_recall task.seq_len=8 model.d_model=16 model.heads=2");
    m = model_create(cfg, ops_cpu(), 2, 7, &e);
    assert_int_equal(model_find_param(m, "decoder.w1"), -1);
    model_free(m);
    cfg_free(cfg);
}

/* Every logit is decoded from the code at the last position: changing only
 * the last token changes the output at every position (a causal language
 * model would change only the last one). */
static void test_code_bottleneck(void **s) {
    (void)s;
    Config *cfg = test_config(base);
    Err e = {{0}};
    const int T = 8;
    Model *m = model_create(cfg, ops_cpu(), 1, T, &e);
    model_init_params(m, 3);
    int tok[8] = {1, 2, 3, 4, 5, 6, 7, 11}, tgt[8];
    for (int j = 0; j < T; j++) tgt[j] = tok[j];
    int pred[8];
    real nll_a[8], nll_b[8];
    model_set_batch(m, tok, tgt, 1);
    model_forward(m, 1, 0);
    model_predict(m, 1, pred, nll_a);
    tok[T - 1] = 10;
    model_set_batch(m, tok, tgt, 1);
    model_forward(m, 1, 0);
    model_predict(m, 1, pred, nll_b);
    int changed = 0;
    for (int j = 0; j < T; j++) changed += nll_a[j] != nll_b[j];
    assert_int_equal(changed, T);
    model_free(m);
    cfg_free(cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_softmax),
        cmocka_unit_test(test_grad_normal_init),
        cmocka_unit_test(test_grad_parallax_pytorch_init),
        cmocka_unit_test(test_preset_and_params),
        cmocka_unit_test(test_code_bottleneck),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
