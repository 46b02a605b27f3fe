/* Shared helpers of the CPU-vs-CUDA tests (tests/cuda_*.c): backends, device
 * copies, error comparison, and the whole-model parity case. */
#include "cudautil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>

#include "../optim/optim.h"

const Ops *CPU, *GPU, *GPU16;
char cuda_why[256];

int need_gpu(void) {
    if (GPU) return 1;
    if (getenv("PLAB_REQUIRE_GPU")) fail_msg("no CUDA backend: %s", cuda_why);
    printf("  skipped: no CUDA backend (%s)\n", cuda_why);
    return 0;
}

/* device copy of a host buffer */
void *up(const Ops *o, const void *h, size_t bytes) {
    void *d = o->alloc(bytes);
    o->to_device(d, h, bytes);
    return d;
}
real *down(const Ops *o, const real *d, size_t n) {
    real *h = xmalloc(sizeof(real) * n);
    o->to_host(h, d, sizeof(real) * n);
    return h;
}
real *randv(gsl_rng *r, size_t n, double s) {
    real *x = xmalloc(sizeof(real) * n);
    fill_randn(x, n, r, s);
    return x;
}
real *host_copy(const real *x, size_t n) {
    real *y = xmalloc(sizeof(real) * n);
    memcpy(y, x, sizeof(real) * n);
    return y;
}

/* compares a CPU result (host) with a GPU result (device) */
double cmp(const char *what, const real *cpu, const real *gpu_dev, size_t n, double bound) {
    real *g = down(GPU, gpu_dev, n);
    double e = norm_rel_err(g, cpu, n), em = max_rel_err(g, cpu, n, 1e-6);
    printf("    %-26s norm rel %.2e  max rel %.2e  (bound %.1e)\n", what, e, em, bound);
    free(g);
    if (!(e <= bound && em <= 10 * bound)) fail_msg("%s: error %.3e / %.3e over %.1e", what, e, em, bound);
    return e;
}

/* ---- whole models: loss and every gradient; one optimizer step ------------------------ */

static const char *model_base =
    "task.vocab_size=16 task.seq_len=40 model.d_model=32 model.heads=4 model.layers=2 ";

void model_case(const char *extra, const Ops *g, double bound) {
    char args[1024];
    snprintf(args, sizeof args, "%s%s", model_base, extra);
    Config *cfg = test_config(args);
    Err e = {{0}};
    int B = 5, T = (int)cfg_int(cfg, "task.seq_len"), V = 16, N = B * T;
    Model *mc = model_create(cfg, CPU, B, T, &e), *mg = model_create(cfg, g, B, T, &e);
    if (!mc || !mg) fail_msg("model_create: %s", e.msg);
    model_init_params(mc, 9), model_init_params(mg, 9);
    /* zero-initialised tensors (biases, probe) get small values so every path is live */
    gsl_rng *r = test_rng(10);
    size_t np = model_num_params(mc);
    real *p = model_params(mc);
    for (int i = 0; i < model_num_specs(mc); i++) {
        const ParamSpec *sp = model_spec(mc, i);
        for (size_t j = 0; j < sp->numel; j++) p[sp->offset + j] += (real)gsl_ran_gaussian(r, 0.05);
    }
    g->to_device(model_params(mg), p, sizeof(real) * np);
    int *tok = xmalloc(sizeof(int) * N), *tgt = xmalloc(sizeof(int) * N);
    for (int i = 0; i < N; i++) {
        tok[i] = (int)gsl_rng_uniform_int(r, V);
        tgt[i] = gsl_rng_uniform(r) < 0.3 ? -100 : (int)gsl_rng_uniform_int(r, V);
    }
    printf("  %s [%s]\n", extra, g->name);
    Model *ms[2] = {mc, mg};
    double loss[2];
    for (int k = 0; k < 2; k++) {
        model_set_batch(ms[k], tok, tgt, B);
        model_zero_grad(ms[k]);
        model_forward(ms[k], B, 1);
        loss[k] = model_take_loss(ms[k]);
        model_backward(ms[k], B);
    }
    double le = fabs(loss[0] - loss[1]) / fabs(loss[0]);
    printf("    loss cpu %.6f cuda %.6f rel %.2e\n", loss[0], loss[1], le);
    assert_true(le < bound);
    real *gg = down(g, model_grads(mg), np), *gc = model_grads(mc);
    double worst = 0;
    for (int i = 0; i < model_num_specs(mc); i++) {
        const ParamSpec *sp = model_spec(mc, i);
        double err = norm_rel_err(gg + sp->offset, gc + sp->offset, sp->numel);
        if (getenv("VERBOSE")) printf("    %-28s grad norm rel %.2e\n", sp->name, err);
        if (!(err <= worst)) worst = err;
        if (!(err < bound)) fail_msg("%s: gradient of %s off by %.3e (bound %.1e)", extra, sp->name, err, bound);
    }
    printf("    every gradient: worst norm rel %.2e (bound %.1e)\n", worst, bound);
    /* one optimizer step each (Muon on hidden matrices, AdamW elsewhere): compare updates */
    Optimizer *oc = optim_create(cfg, mc, 10, 10), *og = optim_create(cfg, mg, 10, 10);
    real *before = host_copy(p, np), *g0 = host_copy(gc, np);
    optim_step(oc, 0), optim_step(og, 0);
    real *pg = down(g, model_params(mg), np);
    /* AdamW's first update is lr g/(|g| + eps): where |g| is within 10 eps (1e-8) of 0 it
     * turns rounding-level gradient differences (checked above) into O(lr) ones, so those
     * elements are left out of the update comparison */
    for (size_t i = 0; i < np; i++) {
        pg[i] -= before[i], before[i] = p[i] - before[i];
        if (fabs((double)g0[i]) < 1e-7) pg[i] = before[i] = 0;
    }
    double ue = norm_rel_err(pg, before, np);
    printf("    %s update: norm rel %.2e\n", optim_describe(oc), ue);
    assert_true(ue < 10 * bound);
    /* the backend's view of the updated weights (the bf16 copy the optimizer keeps) must be
     * what a fresh upload of them gives: the same loss to the last bit */
    double after[2];
    for (int k = 0; k < 2; k++) {
        if (k == 1) {
            real *now = down(g, model_params(mg), np);
            g->to_device(model_params(mg), now, sizeof(real) * np);
            free(now);
        }
        model_forward(mg, B, 1);
        after[k] = model_take_loss(mg);
    }
    printf("    loss after the update %.9f, after uploading its weights %.9f\n", after[0], after[1]);
    assert_true(after[0] == after[1]);
    optim_free(oc), optim_free(og);
    free(gg), free(pg), free(before), free(g0), free(tok), free(tgt);
    gsl_rng_free(r);
    model_free(mc), model_free(mg);
    cfg_free(cfg);
}


int cuda_setup(void **s) {
    (void)s;
    CPU = ops_cpu();
    GPU = ops_for_device("cuda", "fp32", cuda_why, sizeof cuda_why);
    GPU16 = GPU ? ops_for_device("cuda", "bf16", cuda_why, sizeof cuda_why) : NULL;
    if (!GPU) printf("CUDA tests: no CUDA backend (%s); they are skipped\n", cuda_why);
    return 0;
}

void run_model_cases(const char *const *cases, size_t n, const Ops *g, double bound) {
    for (size_t i = 0; i < n; i++) model_case(cases[i], g, bound);
}
