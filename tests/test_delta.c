/* Delta-rule family (models/delta.c, kernels/cpu/delta_cpu.c), in double precision:
 * - the recurrent core against the chunkwise UT-transform form (baselines.md §7.3, §8.3)
 *   written independently here, for every gate kind;
 * - finite-difference gradients of the core (across checkpoint chunks) and of the
 *   whole model for every mixer and option;
 * - initialisations (§1.4, §7.1, §8.1), gate ranges and long sequences (T = 1024). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_delta.h"
#include "../models/mixer.h"

static const DeltaOps *D(void) { return ops_cpu()->delta; }

/* ---- random core problems ----------------------------------------------------------- */

typedef struct {
    DeltaArgs a;
    real *q, *k, *v, *beta, *g, *R; /* R: weights of the scalar loss sum(o * R) */
    size_t nq, nv, nh, ng;
} Core;

static void unit_rows(real *x, size_t rows, int d) {
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < d; i++) s += x[r * d + i] * x[r * d + i];
        for (int i = 0; i < d; i++) x[r * d + i] /= sqrt(s);
    }
}

static Core core_new(int B, int T, int H, int K, int V, int gate, double beta_max, gsl_rng *r) {
    Core c = {0};
    c.nq = (size_t)B * T * H * K, c.nv = (size_t)B * T * H * V, c.nh = (size_t)B * T * H;
    c.ng = gate == DELTA_GATE_CHANNEL ? c.nq : c.nh;
    c.q = malloc(sizeof(real) * c.nq), c.k = malloc(sizeof(real) * c.nq);
    c.v = malloc(sizeof(real) * c.nv), c.R = malloc(sizeof(real) * c.nv);
    c.beta = malloc(sizeof(real) * c.nh), c.g = malloc(sizeof(real) * c.ng);
    fill_randn(c.q, c.nq, r, 1), fill_randn(c.k, c.nq, r, 1), fill_randn(c.v, c.nv, r, 1);
    fill_randn(c.R, c.nv, r, 1);
    unit_rows(c.k, c.nh, K); /* the layer L2-normalises k (§6.4 numerics) */
    for (size_t i = 0; i < c.nh; i++) c.beta[i] = (real)(beta_max * gsl_rng_uniform(r));
    for (size_t i = 0; i < c.ng; i++) c.g[i] = (real)(-0.5 * gsl_rng_uniform(r));
    c.a = (DeltaArgs){.B = B, .T = T, .H = H, .K = K, .V = V, .gate = gate,
                      .scale = (real)(1 / sqrt((double)K)), .q = c.q, .k = c.k, .v = c.v,
                      .beta = c.beta, .g = gate ? c.g : NULL};
    c.a.o = calloc(c.nv, sizeof(real));
    c.a.ckpt = calloc(delta_ckpt_len(B, H, T, (size_t)K * V), sizeof(real));
    c.a.dq = calloc(c.nq, sizeof(real)), c.a.dk = calloc(c.nq, sizeof(real));
    c.a.dv = calloc(c.nv, sizeof(real)), c.a.dbeta = calloc(c.nh, sizeof(real));
    c.a.dg = calloc(c.ng, sizeof(real));
    c.a.dout = c.R;
    return c;
}

static void core_free(Core *c) {
    free(c->q), free(c->k), free(c->v), free(c->beta), free(c->g), free(c->R);
    free(c->a.o), free(c->a.ckpt), free(c->a.dq), free(c->a.dk), free(c->a.dv);
    free(c->a.dbeta), free(c->a.dg);
}

static double core_loss(void *ctx) {
    Core *c = ctx;
    D()->delta_forward(&c->a);
    double s = 0;
    for (size_t i = 0; i < c->nv; i++) s += c->a.o[i] * c->R[i];
    return s;
}

/* ---- the chunkwise form (§8.3; scalar and no gate are special cases) ---------------- */

static void chunked_reference(const DeltaArgs *a, int C, double *out) {
    int K = a->K, V = a->V, H = a->H;
    double *S = malloc(sizeof(double) * K * V), *G = malloc(sizeof(double) * C * K);
    double *L = malloc(sizeof(double) * C * C), *W = malloc(sizeof(double) * C * K);
    double *U = malloc(sizeof(double) * C * V), *Vn = malloc(sizeof(double) * C * V);
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < H; h++) {
            memset(S, 0, sizeof(double) * K * V);
            for (int t0 = 0; t0 < a->T; t0 += C) {
                int n = a->T - t0 < C ? a->T - t0 : C;
#define IDX(r) (((size_t)b * a->T + t0 + (r)) * H + h)
#define KK(r, i) ((double)a->k[IDX(r) * K + (i)])
                for (int r = 0; r < n; r++) /* local cumsum of the log decay, per channel */
                    for (int i = 0; i < K; i++) {
                        double g = a->gate == DELTA_GATE_NONE      ? 0
                                   : a->gate == DELTA_GATE_SCALAR ? a->g[IDX(r)]
                                                                  : a->g[IDX(r) * K + i];
                        G[r * K + i] = g + (r ? G[(r - 1) * K + i] : 0);
                    }
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < i; j++) {
                        double s = 0;
                        for (int d = 0; d < K; d++)
                            s += KK(i, d) * KK(j, d) * exp(G[i * K + d] - G[j * K + d]);
                        L[i * C + j] = a->beta[IDX(i)] * s;
                    }
                /* W = (I+L)^-1 diag(beta)(exp(G) K), U = (I+L)^-1 diag(beta) V */
                for (int i = 0; i < n; i++) {
                    for (int d = 0; d < K; d++) {
                        double s = a->beta[IDX(i)] * exp(G[i * K + d]) * KK(i, d);
                        for (int j = 0; j < i; j++) s -= L[i * C + j] * W[j * K + d];
                        W[i * K + d] = s;
                    }
                    for (int e = 0; e < V; e++) {
                        double s = a->beta[IDX(i)] * a->v[IDX(i) * V + e];
                        for (int j = 0; j < i; j++) s -= L[i * C + j] * U[j * V + e];
                        U[i * V + e] = s;
                    }
                }
                for (int i = 0; i < n; i++) /* V_new = U - W S */
                    for (int e = 0; e < V; e++) {
                        double s = U[i * V + e];
                        for (int d = 0; d < K; d++) s -= W[i * K + d] * S[d * V + e];
                        Vn[i * V + e] = s;
                    }
                for (int i = 0; i < n; i++) /* O = (exp(G) sQ) S + Aqk V_new */
                    for (int e = 0; e < V; e++) {
                        double s = 0;
                        for (int d = 0; d < K; d++)
                            s += exp(G[i * K + d]) * a->q[IDX(i) * K + d] * S[d * V + e];
                        for (int j = 0; j <= i; j++) {
                            double aq = 0;
                            for (int d = 0; d < K; d++)
                                aq += a->q[IDX(i) * K + d] * KK(j, d) *
                                      exp(G[i * K + d] - G[j * K + d]);
                            s += aq * Vn[j * V + e];
                        }
                        out[IDX(i) * V + e] = a->scale * s;
                    }
                for (int d = 0; d < K; d++) /* S <- Diag(exp(G_C)) S + (exp(G_C - G) K)^T V_new */
                    for (int e = 0; e < V; e++) {
                        double s = exp(G[(n - 1) * K + d]) * S[d * V + e];
                        for (int j = 0; j < n; j++)
                            s += exp(G[(n - 1) * K + d] - G[j * K + d]) * KK(j, d) * Vn[j * V + e];
                        S[d * V + e] = s;
                    }
#undef KK
#undef IDX
            }
        }
    free(S), free(G), free(L), free(W), free(U), free(Vn);
}

static void chunked_case(int gate, double beta_max) {
    gsl_rng *r = test_rng(3 + gate);
    Core c = core_new(2, 11, 2, 4, 3, gate, beta_max, r);
    core_loss(&c);
    double *ref = malloc(sizeof(double) * c.nv);
    real *refr = malloc(sizeof(real) * c.nv);
    chunked_reference(&c.a, 4, ref); /* chunks 4+4+3: partial last chunk */
    for (size_t i = 0; i < c.nv; i++) refr[i] = (real)ref[i];
    double err = max_rel_err(c.a.o, refr, c.nv, 1e-12);
    printf("  gate %d beta<%.0f: recurrent vs chunked max rel err %.2e\n", gate, beta_max, err);
    assert_true(err < 1e-12);
    free(ref), free(refr), core_free(&c), gsl_rng_free(r);
}

static void test_chunked_none(void **s) { (void)s; chunked_case(DELTA_GATE_NONE, 1); }
static void test_chunked_scalar(void **s) { (void)s; chunked_case(DELTA_GATE_SCALAR, 1); }
static void test_chunked_channel(void **s) { (void)s; chunked_case(DELTA_GATE_CHANNEL, 1); }
static void test_chunked_negeig(void **s) { (void)s; chunked_case(DELTA_GATE_CHANNEL, 2); }

/* ---- core gradients (T = 70 crosses the checkpoint boundary at 64) ------------------ */

static void core_grad_case(int gate, double beta_max) {
    gsl_rng *r = test_rng(10 + gate);
    Core c = core_new(2, 70, 2, 3, 4, gate, beta_max, r);
    core_loss(&c);
    D()->delta_backward(&c.a);
    struct { const char *name; real *x, *g; size_t n; } t[] = {
        {"q", c.q, c.a.dq, c.nq}, {"k", c.k, c.a.dk, c.nq}, {"v", c.v, c.a.dv, c.nv},
        {"beta", c.beta, c.a.dbeta, c.nh}, {"g", c.g, c.a.dg, gate ? c.ng : 0}};
    for (int i = 0; i < 5; i++) {
        if (!t[i].n) continue;
        double e = gradcheck(core_loss, &c, t[i].x, t[i].g, t[i].n, 40, 1e-5, r);
        printf("  gate %d: d%-5s rel err %.2e\n", gate, t[i].name, e);
        assert_true(e < 1e-5);
    }
    core_free(&c), gsl_rng_free(r);
}

static void test_core_grad_none(void **s) { (void)s; core_grad_case(DELTA_GATE_NONE, 1); }
static void test_core_grad_scalar(void **s) { (void)s; core_grad_case(DELTA_GATE_SCALAR, 1); }
static void test_core_grad_channel(void **s) { (void)s; core_grad_case(DELTA_GATE_CHANNEL, 2); }

/* ---- whole-model gradients, every mixer and option ---------------------------------- */

static void model_case(const char *extra) {
    assert_model_grad("task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 model.layers=2",
                      extra, 6, 1e-5);
}

static void test_model_deltanet(void **s) {
    (void)s;
    model_case("model.mixer=deltanet");
    model_case("model.mixer=deltanet mixer.neg_eigval=true mixer.output_gate=true");
    model_case("model.mixer=deltanet mixer.short_conv=0 mixer.expand_v=2");
}
static void test_model_gated_deltanet(void **s) {
    (void)s;
    model_case("model.mixer=gated_deltanet");
    model_case("model.mixer=gated_deltanet mixer.neg_eigval=true mixer.output_gate=false");
}
static void test_model_kda(void **s) {
    (void)s;
    model_case("model.mixer=kda");
    model_case("model.mixer=kda mixer.neg_eigval=true mixer.output_gate=false mixer.short_conv=2");
    model_case("model.mixer=kda mixer.gate_lower_bound=-5");
}

/* ---- initialisation, gates, long sequences ------------------------------------------ */

static const real *param(Model *m, const char *name, size_t *n) {
    int i = model_find_param(m, name);
    assert_true(i >= 0);
    *n = model_spec(m, i)->numel;
    return model_params(m) + model_spec(m, i)->offset;
}

static void init_case(const char *mixer, double alo, double ahi) {
    char args[256];
    snprintf(args, sizeof args, "task.vocab_size=12 task.seq_len=8 model.d_model=256 model.heads=8 "
                                "model.mixer=%s", mixer);
    Config *cfg = test_config(args);
    Err e = {{0}};
    Model *m = model_create(cfg, ops_cpu(), 1, 8, &e);
    assert_non_null(m);
    model_init_params(m, 5);
    size_t n;
    const real *b = param(m, "blocks.0.mixer.dt_bias", &n);
    int below = 0;
    double lo = 1, hi = 0;
    for (size_t i = 0; i < n; i++) {
        double dt = log1p(exp((double)b[i])); /* softplus(bias) = dt */
        lo = fmin(lo, dt), hi = fmax(hi, dt), below += dt < 0.01;
    }
    /* log-uniform on [0.001, 0.1]: inside, spread over the range, median near 0.01 */
    printf("  %s: %zu dt in [%.4f, %.4f], %d below 0.01\n", mixer, n, lo, hi, below);
    assert_true(lo >= 0.001 * (1 - 1e-9) && hi <= 0.1 * (1 + 1e-9));
    assert_true(lo < 0.002 && hi > 0.05);
    assert_true(below > 0.3 * n && below < 0.7 * n);
    const real *al = param(m, "blocks.1.mixer.A_log", &n);
    for (size_t i = 0; i < n; i++) {
        double A = exp((double)al[i]);
        assert_true(A > alo && A <= ahi);
    }
    model_free(m), cfg_free(cfg);
}

static void test_init(void **s) {
    (void)s;
    init_case("gated_deltanet", 0, 16); /* A ~ U(0,16) */
    init_case("kda", 1, 16);            /* A ~ U(1,16) */
}

static void test_gate_ranges(void **s) {
    (void)s;
    real x[6] = {-800, -30, -1, 0, 30, 800}, y[6], g[6];
    real A_log[1] = {log(16.0)}, dtb[1] = {0};
    D()->map_forward(y, x, 6, DELTA_MAP_SIGMOID, 2, 0);
    D()->decay_forward(g, x, A_log, dtb, 6, 1, 1, 0);
    for (int i = 0; i < 6; i++) {
        assert_true(y[i] >= 0 && y[i] <= 2 && isfinite(y[i])); /* beta in [0,2] */
        assert_true(g[i] <= 0 && isfinite(g[i]));              /* log decay <= 0 */
    }
    assert_true(y[5] > 1.999 && g[0] > -1e-300 && g[5] < -1000);
    D()->decay_forward(g, x, A_log, dtb, 6, 1, 1, -5); /* safe gate: g in [-5, 0] */
    for (int i = 0; i < 6; i++) assert_true(g[i] >= -5 && g[i] <= 0);
    assert_true(g[0] > -1e-6 && g[5] < -4.999);
}

/* T = 1024 through the whole model: finite loss and gradients with the strongest
 * options (negative eigenvalues, per-channel decay). */
static void long_case(const char *mixer) {
    char args[256];
    snprintf(args, sizeof args, "task.vocab_size=12 task.seq_len=1024 model.d_model=16 "
                                "model.heads=2 model.layers=1 model.mixer=%s mixer.neg_eigval=true",
             mixer);
    assert_long_sequence_finite(args, 1024);
}

static void test_long_sequences(void **s) {
    (void)s;
    long_case("deltanet");
    long_case("gated_deltanet");
    long_case("kda");
}

static void test_state_size(void **s) {
    (void)s;
    Config *cfg = test_config("model.mixer=gated_deltanet model.d_model=32 model.heads=2");
    ModelDims dims = {.d = 32, .heads = 2};
    const MixerKind *k = mixer_find("gated_deltanet");
    assert_int_equal(k->state_size(cfg, &dims), 2 * 16 * 32); /* H K (2K) */
    cfg_free(cfg);
}

static void test_bad_keys(void **s) {
    (void)s;
    assert_config_rejected("task.vocab_size=12 task.seq_len=8 model.d_model=16 model.heads=2 "
                           "model.mixer=gated_deltanet mixer.gate_lower_bound=-5",
                           "mixer.gate_lower_bound");
}

/* parameters of one layer's mixer against the counts in docs/recurrent.md */
static long mixer_params(const char *args) {
    Config *cfg = test_config(args);
    Err e = {{0}};
    Model *m = model_create(cfg, ops_cpu(), 1, 8, &e);
    assert_non_null(m);
    long n = 0;
    for (int i = 0; i < model_num_specs(m); i++)
        if (!strncmp(model_spec(m, i)->name, "blocks.0.mixer.", 15)) n += (long)model_spec(m, i)->numel;
    model_free(m), cfg_free(cfg);
    return n;
}

static void test_param_counts(void **s) {
    (void)s;
    const char *b = "task.vocab_size=12 task.seq_len=8 model.d_model=24 model.heads=3 ";
    char a[256];
    long d = 24, H = 3, K = 8, W = 4;
    long V = K, HV = H * V; /* deltanet, kda */
    snprintf(a, sizeof a, "%smodel.mixer=deltanet", b);
    long dn = 2 * d * d + 2 * d * HV + (2 * d + HV) * W + H * d + V;
    assert_int_equal(mixer_params(a), dn);
    snprintf(a, sizeof a, "%smodel.mixer=kda", b);
    assert_int_equal(mixer_params(a), dn + V * d + H * K * V + H + H * K + V * d + HV * V + HV);
    V = 2 * K, HV = H * V; /* gated_deltanet: expand_v 2, SiLU gate */
    snprintf(a, sizeof a, "%smodel.mixer=gated_deltanet", b);
    dn = 2 * d * d + 2 * d * HV + (2 * d + HV) * W + H * d + V;
    assert_int_equal(mixer_params(a), dn + HV * d + H * d + 2 * H);
    snprintf(a, sizeof a, "%smodel.mixer=mesanet", b);
    assert_int_equal(mixer_params(a), 4 * d * d + 2 * d * W + 2 * H * d + 2 * H + d + K);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked_none),       cmocka_unit_test(test_chunked_scalar),
        cmocka_unit_test(test_chunked_channel),    cmocka_unit_test(test_chunked_negeig),
        cmocka_unit_test(test_core_grad_none),     cmocka_unit_test(test_core_grad_scalar),
        cmocka_unit_test(test_core_grad_channel),  cmocka_unit_test(test_model_deltanet),
        cmocka_unit_test(test_model_gated_deltanet), cmocka_unit_test(test_model_kda),
        cmocka_unit_test(test_init),               cmocka_unit_test(test_gate_ranges),
        cmocka_unit_test(test_long_sequences),     cmocka_unit_test(test_state_size),
        cmocka_unit_test(test_param_counts),       cmocka_unit_test(test_bad_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
