/* The Mamba mixers inside the model: initialisations as the references give
 * them (baselines.md §1.4, §4.1, §5.1), optimizer groups, state sizes, clear
 * errors on bad shapes, and finite losses and gradients at 1024 tokens. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../models/mixer.h"

static Model *build(const char *args, int B, int T, Config **cfg_out) {
    Config *cfg = test_config(args);
    Err e = {{0}};
    Model *m = model_create(cfg, ops_cpu(), B, T, &e);
    if (!m) fail_msg("model_create: %s", e.msg);
    model_init_params(m, 1234);
    if (cfg_out) *cfg_out = cfg;
    else cfg_free(cfg);
    return m;
}

static const ParamSpec *spec(const Model *m, const char *name) {
    int i = model_find_param(m, name);
    if (i < 0) fail_msg("no tensor %s", name);
    return model_spec(m, i);
}

static real *param(Model *m, const char *name) { return model_params(m) + spec(m, name)->offset; }

/* softplus(dt_bias) is log-uniform on [1e-3, 1e-1]: in range, log-mean at the
 * geometric midpoint, half the mass below 1e-2. A uniform-in-dt draw (mean
 * log ~ -3.3) or a missing inverse softplus fails this. */
static void check_dt_bias(const real *b, int n) {
    double mean = 0, below = 0, mid = 0.5 * (log(1e-3) + log(1e-1));
    for (int i = 0; i < n; i++) {
        double dt = log1p(exp((double)b[i]));
        assert_true(dt >= 1e-3 * (1 - 1e-9) && dt <= 1e-1 * (1 + 1e-9));
        mean += log(dt) / n;
        below += (dt < 1e-2) / (double)n;
    }
    /* log dt ~ U(mid +- 2.30): sd 1.33, so the mean of n draws has sd 1.33/sqrt(n) */
    printf("    %d dt: mean log %.3f (midpoint %.3f), fraction below 1e-2 %.3f\n", n, mean, mid, below);
    assert_true(fabs(mean - mid) < 5 * 1.33 / sqrt((double)n));
    assert_true(fabs(below - 0.5) < 5 * 0.5 / sqrt((double)n));
}

static void test_mamba_init(void **s) {
    (void)s;
    Model *m = build("task.vocab_size=16 task.seq_len=16 model.mixer=mamba model.d_model=64 "
                     "model.heads=2 mamba.d_state=5",
                     2, 16, NULL);
    int di = 128, N = 5, R = 4; /* expand 2, dt_rank = ceil(64/16) */
    for (int l = 0; l < 2; l++) {
        char name[96];
#define P(suffix) (snprintf(name, sizeof name, "blocks.%d.mixer.%s", l, suffix), name)
        const real *alog = param(m, P("A_log")), *D = param(m, P("D"));
        assert_int_equal(spec(m, P("A_log"))->rows, di);
        assert_int_equal(spec(m, P("A_log"))->cols, N);
        for (int d = 0; d < di; d++) {
            for (int n = 0; n < N; n++) /* S4D real: A[d, n] = -(n + 1) */
                assert_true(fabs(-exp((double)alog[d * N + n]) + (n + 1)) < 1e-12);
            assert_true(D[d] == 1);
        }
        check_dt_bias(param(m, P("dt_bias")), di);
        const real *wdt = param(m, P("dt_proj")), *cw = param(m, P("conv_w"));
        double mx = 0, mc = 0;
        for (int i = 0; i < di * R; i++) mx = fmax(mx, fabs(wdt[i]));
        for (int i = 0; i < di * 4; i++) mc = fmax(mc, fabs(cw[i]));
        assert_true(mx <= 1 / sqrt((double)R) && mx > 0.8 / sqrt((double)R)); /* U(+-R^-1/2) */
        assert_true(mc <= 0.5 && mc > 0.4);                                    /* U(+-1/sqrt 4) */
        /* optimizer groups (baselines.md §10.3) */
        const char *muon[] = {"in_proj", "x_proj", "dt_proj", "out_proj"};
        for (int i = 0; i < 4; i++) assert_true(spec(m, P(muon[i]))->flags & PARAM_MUON);
        const char *nodecay[] = {"A_log", "D", "dt_bias"};
        for (int i = 0; i < 3; i++) {
            assert_true(spec(m, P(nodecay[i]))->flags & PARAM_NO_DECAY);
            assert_false(spec(m, P(nodecay[i]))->flags & PARAM_MUON);
        }
        assert_false(spec(m, P("conv_w"))->flags & PARAM_MUON);
        assert_int_equal(spec(m, P("in_proj"))->rows, 2 * di);
        assert_int_equal(spec(m, P("x_proj"))->rows, R + 2 * N);
#undef P
    }
    /* MAD: Mamba layers replace the MLP too: 4 layers, no MLP (the test's config says
     * nothing about either, so these come from the mixer's preset) */
    assert_int_equal(model_dims(m)->mlp_width, 0);
    assert_int_equal(model_dims(m)->layers, 4);
    model_free(m);
}

static void test_mamba2_init(void **s) {
    (void)s;
    /* headdim 1: 256 heads per layer, enough draws to see the distributions */
    Model *m = build("task.vocab_size=16 task.seq_len=16 model.mixer=mamba2 model.d_model=128 "
                     "model.heads=2 mamba2.headdim=1 mamba2.d_state=2",
                     2, 16, NULL);
    int H = 256;
    double meanA = 0;
    for (int l = 0; l < 2; l++) {
        char name[96];
        snprintf(name, sizeof name, "blocks.%d.mixer.A_log", l);
        const real *alog = param(m, name);
        for (int h = 0; h < H; h++) { /* A ~ U(1, 16) */
            double A = exp((double)alog[h]);
            assert_true(A >= 1 && A <= 16);
            meanA += A / (2 * H);
        }
        snprintf(name, sizeof name, "blocks.%d.mixer.dt_bias", l);
        check_dt_bias(param(m, name), H);
        snprintf(name, sizeof name, "blocks.%d.mixer.norm_w", l);
        assert_true(param(m, name)[0] == 1);
        snprintf(name, sizeof name, "blocks.%d.mixer.in_proj", l);
        assert_int_equal(spec(m, name)->rows, 2 * 256 + 2 * 2 + H); /* z, x, B, C, dt */
        assert_true(spec(m, name)->flags & PARAM_MUON);
    }
    printf("    mean A %.3f (U(1,16): 8.5)\n", meanA);
    assert_true(fabs(meanA - 8.5) < 5 * 4.33 / sqrt(2.0 * H));
    model_free(m);
}

static void test_state_size(void **s) {
    (void)s;
    Config *cfg;
    Model *m = build("task.vocab_size=16 task.seq_len=8 model.mixer=mamba model.d_model=32", 1, 8, &cfg);
    const MixerKind *k = mixer_find("mamba");
    assert_non_null(k->state_size);
    assert_int_equal(k->state_size(cfg, model_dims(m)), 2 * 32 * 4); /* MAD: d_inner x d_state */
    model_free(m), cfg_free(cfg);
    m = build("task.vocab_size=16 task.seq_len=8 model.mixer=mamba2 model.d_model=32 "
              "mamba2.headdim=16 mamba2.d_state=8",
              1, 8, &cfg);
    k = mixer_find("mamba2");
    assert_int_equal(k->state_size(cfg, model_dims(m)), 4 * 16 * 8); /* H x P x N */
    model_free(m), cfg_free(cfg);
}

static size_t mixer_params(const Model *m, int layer) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "blocks.%d.mixer.", layer);
    size_t n = 0;
    for (int i = 0; i < model_num_specs(m); i++)
        if (!strncmp(model_spec(m, i)->name, prefix, strlen(prefix))) n += model_spec(m, i)->numel;
    return n;
}

/* parameter counts of one layer against the layer formulas (§4.1, §5.1) */
static void test_param_count(void **s) {
    (void)s;
    Model *m = build("task.vocab_size=16 task.seq_len=8 model.mixer=mamba model.d_model=128", 1, 8, NULL);
    size_t d = 128, di = 256, N = 4, R = 8, W = 4;
    size_t want = 2 * di * d + di * W + di + (R + 2 * N) * di + di * R + di + di * N + di + d * di;
    printf("    mamba layer at d=128 (MAD): %zu parameters\n", mixer_params(m, 1));
    assert_int_equal(mixer_params(m, 1), want);
    model_free(m);
    m = build("task.vocab_size=16 task.seq_len=8 model.mixer=mamba2 model.d_model=128 "
              "mamba2.headdim=32 mamba2.d_state=16 mamba2.ngroups=2", 1, 8, NULL);
    size_t H = 8, G = 2;
    N = 16;
    want = (2 * di + 2 * G * N + H) * d + (di + 2 * G * N) * (W + 1) + 3 * H + di + d * di;
    printf("    mamba2 layer at d=128: %zu parameters\n", mixer_params(m, 0));
    assert_int_equal(mixer_params(m, 0), want);
    model_free(m);
}

/* MAD's protocol with Mamba: 4 Mamba layers, no MLP, d_state 4, d_conv 4, expand 2;
 * explicit keys still win over the mixer's preset */
static void test_mad_protocol(void **s) {
    (void)s;
    Config *c = test_config("protocol=mad model.mixer=mamba");
    assert_int_equal(cfg_int(c, "model.layers"), 4);
    assert_string_equal(cfg_str(c, "model.mlp"), "none");
    assert_int_equal(cfg_int(c, "mamba.d_state"), 4);
    assert_int_equal(cfg_int(c, "mamba.d_conv"), 4);
    assert_int_equal(cfg_int(c, "mamba.expand"), 2);
    cfg_free(c);
    c = test_config("protocol=mad model.mixer=mamba2 model.layers=2 model.mlp=swiglu");
    assert_int_equal(cfg_int(c, "model.layers"), 2);
    assert_string_equal(cfg_str(c, "model.mlp"), "swiglu");
    cfg_free(c);
}

static void test_bad_shapes(void **s) {
    (void)s;
    const char *bad[] = {
        "task.vocab_size=16 task.seq_len=8 model.mixer=mamba2 model.d_model=8 model.heads=2 "
        "mamba2.headdim=5",
        "task.vocab_size=16 task.seq_len=8 model.mixer=mamba2 model.d_model=8 model.heads=2 "
        "mamba2.headdim=4 mamba2.ngroups=3",
    };
    const char *key[] = {"mamba2.headdim", "mamba2.ngroups"};
    for (int i = 0; i < 2; i++) assert_config_rejected(bad[i], key[i]);
}

/* 1024 tokens, default inits: the loss and every gradient stay finite. */
static void long_sequence(const char *extra) {
    char args[512];
    snprintf(args, sizeof args, "task.vocab_size=16 task.seq_len=1024 model.d_model=16 model.layers=2 "
             "model.heads=2 %s", extra);
    assert_long_sequence_finite(args, 1024);
}

static void test_long_sequence(void **s) {
    (void)s;
    long_sequence("model.mixer=mamba");
    long_sequence("model.mixer=mamba2 mamba2.headdim=8 mamba2.d_state=16 mamba2.chunk=64");
    long_sequence("model.mixer=mamba2 mamba2.headdim=8 mamba2.d_state=16 mamba2.chunk=0");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mamba_init),
        cmocka_unit_test(test_mamba2_init),
        cmocka_unit_test(test_state_size),
        cmocka_unit_test(test_param_count),
        cmocka_unit_test(test_mad_protocol),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_long_sequence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
