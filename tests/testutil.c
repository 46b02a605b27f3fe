#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>

#include "../train/train.h"

gsl_rng *test_rng(unsigned long seed) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, seed);
    return r;
}

void fill_randn(real *x, size_t n, gsl_rng *r, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (real)gsl_ran_gaussian(r, scale);
}

double max_rel_err(const real *a, const real *b, size_t n, double floor) {
    double mx = floor, err = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(a[i]) > mx) mx = fabs(a[i]);
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
    }
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (e > err || isnan(e)) err = isnan(e) ? INFINITY : e;
    }
    return err / mx;
}

double norm_rel_err(const real *a, const real *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (isnan(num)) return INFINITY;
    return sqrt(num) / (sqrt(den) + 1e-300);
}

Config *test_config(const char *args) {
    Config *c = cfg_new();
    Err e = {{0}};
    char *copy = strdup(args), *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save))
        if (cfg_parse_arg(c, t, &e) != 0) fail_msg("config '%s': %s", t, e.msg);
    free(copy);
    if (config_resolve(c, &e) != 0) fail_msg("config '%s': %s", args, e.msg);
    return c;
}

void assert_config_rejected(const char *args, const char *expect) {
    Config *c = cfg_new();
    Err e = {{0}};
    char *copy = strdup(args), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, " ", &save); t && rc == 0; t = strtok_r(NULL, " ", &save))
        rc = cfg_parse_arg(c, t, &e);
    free(copy);
    if (rc == 0) rc = config_resolve(c, &e);
    printf("    rejected: %s\n", e.msg);
    cfg_free(c);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(e.msg, expect));
}

double gradcheck(double (*loss)(void *ctx), void *ctx, real *x, const real *grad, size_t n,
                 int samples, double h, gsl_rng *r) {
    double gmax = 0, worst = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(grad[i]));
    size_t count = samples <= 0 || (size_t)samples > n ? n : (size_t)samples;
    for (size_t s = 0; s < count; s++) {
        size_t i = count == n ? s : gsl_rng_uniform_int(r, n);
        real keep = x[i];
        x[i] = keep + (real)h;
        double lp = loss(ctx);
        x[i] = keep - (real)h;
        double lm = loss(ctx);
        x[i] = keep;
        double fd = (lp - lm) / (2 * h);
        double den = fmax(fmax(fabs(fd), fabs(grad[i])), 1e-6 + 1e-3 * gmax);
        double e = fabs(fd - grad[i]) / den;
        if (e > worst || isnan(e)) worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

typedef struct {
    Model *m;
    int B;
} ModelCtx;

static double model_loss(void *ctx) {
    ModelCtx *c = ctx;
    model_forward(c->m, c->B, 1);
    return model_take_loss(c->m);
}

double model_gradcheck(const char *config_args, int B, int per_tensor, int verbose) {
    Config *cfg = test_config(config_args);
    Err e = {{0}};
    int T = (int)cfg_int(cfg, "task.seq_len");
    Model *m = model_create(cfg, ops_cpu(), B, T, &e);
    if (!m) fail_msg("model_create: %s", e.msg);
    model_init_params(m, 7);
    gsl_rng *r = test_rng(11);
    int V = model_dims(m)->V, N = B * T;
    int *tok = malloc(sizeof(int) * (size_t)N), *tgt = malloc(sizeof(int) * (size_t)N);
    for (int i = 0; i < N; i++) {
        tok[i] = (int)gsl_rng_uniform_int(r, (unsigned long)V);
        tgt[i] = gsl_rng_uniform(r) < 0.2 ? -100 : (int)gsl_rng_uniform_int(r, (unsigned long)V);
    }
    /* non-trivial parameters: zero-initialised tensors get small random values */
    real *p = model_params(m);
    for (int i = 0; i < model_num_specs(m); i++) {
        const ParamSpec *s = model_spec(m, i);
        for (size_t j = 0; j < s->numel; j++)
            p[s->offset + j] += (real)gsl_ran_gaussian(r, s->init == INIT_ZERO ? 0.1 : 0.02);
    }
    model_set_batch(m, tok, tgt, B);
    model_zero_grad(m);
    model_forward(m, B, 1);
    model_take_loss(m);
    model_backward(m, B);
    size_t n = model_num_params(m);
    real *g = malloc(sizeof(real) * n);
    memcpy(g, model_grads(m), sizeof(real) * n);
    ModelCtx ctx = {m, B};
    double worst = 0;
    for (int i = 0; i < model_num_specs(m); i++) {
        const ParamSpec *s = model_spec(m, i);
        double err = gradcheck(model_loss, &ctx, p + s->offset, g + s->offset, s->numel,
                               per_tensor, 1e-5, r);
        if (verbose) printf("    %-28s rel err %.2e\n", s->name, err);
        if (err > worst || isnan(err)) worst = isnan(err) ? INFINITY : err;
    }
    free(g), free(tok), free(tgt);
    gsl_rng_free(r);
    model_free(m);
    cfg_free(cfg);
    return worst;
}

void assert_model_grad(const char *base, const char *extra, int per_tensor, double tol) {
    char args[1024];
    snprintf(args, sizeof args, "%s %s", base, extra);
    printf("  %s\n", extra);
    double err = model_gradcheck(args, 2, per_tensor, getenv("VERBOSE") != NULL);
    printf("    worst relative error %.3e (bound %.0e)\n", err, tol);
    assert_true(err < tol);
}

void assert_long_sequence_finite(const char *args, int T) {
    Config *cfg = test_config(args);
    Err e = {{0}};
    Model *m = model_create(cfg, ops_cpu(), 1, T, &e);
    if (!m) fail_msg("model_create: %s", e.msg);
    model_init_params(m, 9);
    int V = model_dims(m)->V;
    int *tok = malloc(sizeof(int) * (size_t)T), *tgt = malloc(sizeof(int) * (size_t)T);
    gsl_rng *r = test_rng(3);
    for (int i = 0; i < T; i++)
        tok[i] = (int)gsl_rng_uniform_int(r, (unsigned long)V), tgt[i] = (int)gsl_rng_uniform_int(r, (unsigned long)V);
    model_set_batch(m, tok, tgt, 1);
    model_zero_grad(m);
    model_forward(m, 1, 1);
    double loss = model_take_loss(m);
    model_backward(m, 1);
    size_t bad = 0;
    for (size_t i = 0; i < model_num_params(m); i++) bad += !isfinite(model_grads(m)[i]);
    printf("  T=%d %s: loss %.4f, %zu non-finite gradients\n", T, args, loss, bad);
    assert_true(isfinite(loss) && loss > 0);
    assert_int_equal(bad, 0);
    free(tok), free(tgt);
    gsl_rng_free(r);
    model_free(m);
    cfg_free(cfg);
}
