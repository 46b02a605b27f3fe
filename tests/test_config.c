/* The key table: parsing, validation messages, suggestions, presets, hashes. */
#include "testutil.h"

#include <string.h>

#include "../models/model.h"
#include "../train/train.h"

static void test_unknown_key_suggests(void **s) {
    (void)s;
    Config *c = cfg_new();
    Err e;
    assert_int_equal(cfg_parse_arg(c, "model.d_modle=64", &e), -1);
    assert_non_null(strstr(e.msg, "'model.d_modle'"));
    assert_non_null(strstr(e.msg, "did you mean 'model.d_model'"));
    assert_int_equal(cfg_parse_arg(c, "vocab_size=8", &e), -1);
    assert_non_null(strstr(e.msg, "task.vocab_size"));
    cfg_free(c);
}

static void test_bad_values_name_key_value_rule(void **s) {
    (void)s;
    Config *c = cfg_new();
    Err e;
    assert_int_equal(cfg_parse_arg(c, "lr=abc", &e), -1);
    assert_non_null(strstr(e.msg, "'lr'")), assert_non_null(strstr(e.msg, "abc"));
    assert_int_equal(cfg_parse_arg(c, "model.layers=0", &e), -1);
    assert_non_null(strstr(e.msg, "out of range"));
    assert_int_equal(cfg_parse_arg(c, "optim=adamm", &e), -1);
    assert_non_null(strstr(e.msg, "did you mean 'adamw'"));
    assert_int_equal(cfg_parse_arg(c, "model.d_model=64.5", &e), -1);
    assert_int_equal(cfg_parse_arg(c, "noequals", &e), -1);
    assert_int_equal(cfg_parse_arg(c, "model.mixer=paralax", &e), 0);
    assert_int_equal(config_resolve(c, &e), -1);
    assert_non_null(strstr(e.msg, "did you mean 'parallax'"));
    cfg_free(c);
}

static void test_presets_yield_to_user(void **s) {
    (void)s;
    Config *c = cfg_new();
    Err e;
    assert_int_equal(cfg_parse_arg(c, "protocol=mad", &e), 0);
    assert_int_equal(cfg_parse_arg(c, "epochs=3", &e), 0);
    assert_int_equal(config_resolve(c, &e), 0);
    assert_int_equal(cfg_int(c, "epochs"), 3);            /* user wins */
    assert_int_equal(cfg_int(c, "batch_size"), 128);      /* protocol */
    assert_int_equal(cfg_int(c, "task.vocab_size"), 16);  /* task default */
    cfg_free(c);
}

static void test_hash_is_canonical(void **s) {
    (void)s;
    Config *a = cfg_new(), *b = cfg_new(), *c = cfg_new();
    Err e;
    cfg_parse_arg(a, "lr=1e-3", &e), cfg_parse_arg(b, "lr=0.001", &e), cfg_parse_arg(c, "lr=0.002", &e);
    cfg_parse_arg(b, "log_every=99", &e); /* not hashed: does not change results */
    char ha[17], hb[17], hc[17];
    cfg_hash(a, ha), cfg_hash(b, hb), cfg_hash(c, hc);
    assert_string_equal(ha, hb);
    assert_string_not_equal(ha, hc);
    cfg_free(a), cfg_free(b), cfg_free(c);
}

/* A backend without a mixer's op group refuses the model with an error that
 * names the group (no crash): the situation of every GPU-less mixer on CUDA. */
static void test_missing_op_group_is_an_error(void **s) {
    (void)s;
    Ops bare = *ops_cpu();
    bare.family = NULL, bare.scan = NULL, bare.delta = NULL;
    const struct { const char *mixer, *group; } cases[] = {
        {"softmax", NULL}, {"parallax", NULL}, {"lla", "ops_family.h"}, {"mesa", "ops_family.h"},
        {"mamba", "ops_scan.h"}, {"mamba2 mamba2.headdim=8", "ops_scan.h"}, {"gated_deltanet", "ops_delta.h"},
        {"mesanet", "ops_delta.h"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[256];
        snprintf(args, sizeof args, "task.vocab_size=8 task.seq_len=8 model.d_model=16 model.heads=2 "
                 "model.mixer=%s", cases[i].mixer);
        Config *c = test_config(args);
        Err e = {{0}};
        Model *m = model_create(c, &bare, 2, 7, &e);
        printf("  %-16s %s\n", cases[i].mixer, m ? "builds" : e.msg);
        if (cases[i].group) {
            assert_null(m);
            assert_non_null(strstr(e.msg, cases[i].group));
        } else {
            assert_non_null(m);
            model_free(m);
        }
        cfg_free(c);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_key_suggests),
        cmocka_unit_test(test_bad_values_name_key_value_rule),
        cmocka_unit_test(test_presets_yield_to_user),
        cmocka_unit_test(test_hash_is_canonical),
        cmocka_unit_test(test_missing_op_group_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
