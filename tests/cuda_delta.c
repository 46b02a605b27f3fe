/* CPU-vs-CUDA parity of the delta-rule / MesaNet op group (kernels/ops_delta.h,
 * kernels/cuda/delta_cuda.cu against kernels/cpu/delta_cpu.c): every op of the group
 * (forward outputs, checkpoints and every gradient, the gradients accumulating into
 * non-zero buffers), then whole models (DeltaNet, Gated DeltaNet, KDA, MesaNet) in
 * fp32 and bf16. Both backends compute these ops in double and round to float, so the
 * op-level bounds are tight. Without a usable GPU every test is skipped. */
#include "cudautil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>

#include "../kernels/ops_delta.h"

#define R sizeof(real)

static const DeltaOps *DC(void) { return CPU->delta; }
static const DeltaOps *DG(void) { return GPU->delta; }

static void unit_rows(real *x, size_t rows, int d) {
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < d; i++) s += (double)x[r * d + i] * x[r * d + i];
        for (int i = 0; i < d; i++) x[r * d + i] = (real)(x[r * d + i] / sqrt(s));
    }
}

static real *uniform(gsl_rng *r, size_t n, double lo, double hi) {
    real *x = xmalloc(R * n);
    for (size_t i = 0; i < n; i++) x[i] = (real)(lo + (hi - lo) * gsl_rng_uniform(r));
    return x;
}

/* ---- elementwise ops ------------------------------------------------------------------ */

static void test_l2norm(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(21);
    int Ds[3] = {8, 17, 64};
    for (int k = 0; k < 3; k++) {
        int N = 301, D = Ds[k];
        size_t n = (size_t)N * D;
        real *x = randv(r, n, 2), *y = randv(r, n, 1), *ri = randv(r, N, 1);
        real *dy = randv(r, n, 1), *dx = randv(r, n, 1);
        real *gx = up(GPU, x, R * n), *gy = up(GPU, y, R * n), *gri = up(GPU, ri, R * N);
        real *gdy = up(GPU, dy, R * n), *gdx = up(GPU, dx, R * n);
        printf("  l2norm N=%d D=%d\n", N, D);
        DC()->l2norm_forward(y, ri, x, N, D, (real)1e-6), DG()->l2norm_forward(gy, gri, gx, N, D, (real)1e-6);
        cmp("y", y, gy, n, 1e-6);
        cmp("rinv", ri, gri, N, 1e-6);
        DC()->l2norm_backward(dx, dy, y, ri, N, D), DG()->l2norm_backward(gdx, gdy, gy, gri, N, D);
        cmp("dx (accumulated)", dx, gdx, n, 1e-6);
        real *b[] = {gx, gy, gri, gdy, gdx};
        for (int i = 0; i < 5; i++) GPU->release(b[i]);
        free(x), free(y), free(ri), free(dy), free(dx);
    }
    gsl_rng_free(r);
}

static void test_maps_gates(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(22);
    long n = 1001;
    /* wide inputs so that the softplus thresholds (|x| > 20) are crossed */
    real *x = randv(r, n, 12), *y = randv(r, n, 1), *dy = randv(r, n, 1), *dx = randv(r, n, 1);
    real *gx = up(GPU, x, R * n), *gy = up(GPU, y, R * n), *gdy = up(GPU, dy, R * n);
    real *gdx = up(GPU, dx, R * n);
    const char *names[3] = {"sigmoid x2", "softplus + 0.25", "logsigmoid"};
    real scales[3] = {2, 1, 1}, shifts[3] = {0, (real)0.25, 0};
    for (int kind = 0; kind < 3; kind++) {
        printf("  map %s\n", names[kind]);
        DC()->map_forward(y, x, n, kind, scales[kind], shifts[kind]);
        DG()->map_forward(gy, gx, n, kind, scales[kind], shifts[kind]);
        cmp("forward", y, gy, n, 1e-6);
        DC()->map_backward(dx, dy, x, n, kind, scales[kind]);
        DG()->map_backward(gdx, gdy, gx, n, kind, scales[kind]);
        cmp("dx (accumulated)", dx, gdx, n, 1e-6);
    }
    /* output gate y = x act(z) */
    real *z = randv(r, n, 3), *dz = randv(r, n, 1), *gz = up(GPU, z, R * n), *gdz = up(GPU, dz, R * n);
    for (int act = DELTA_ACT_SILU; act <= DELTA_ACT_SIGMOID; act++) {
        printf("  gate_mul %s\n", act == DELTA_ACT_SILU ? "silu" : "sigmoid");
        DC()->gate_mul_forward(y, x, z, n, act), DG()->gate_mul_forward(gy, gx, gz, n, act);
        cmp("forward", y, gy, n, 1e-6);
        DC()->gate_mul_backward(dx, dz, dy, x, z, n, act);
        DG()->gate_mul_backward(gdx, gdz, gdy, gx, gz, n, act);
        cmp("dx (accumulated)", dx, gdx, n, 1e-6);
        cmp("dz (accumulated)", dz, gdz, n, 1e-6);
    }
    real *b[] = {gx, gy, gdy, gdx, gz, gdz};
    for (int i = 0; i < 6; i++) GPU->release(b[i]);
    free(x), free(y), free(dy), free(dx), free(z), free(dz);
    gsl_rng_free(r);
}

/* decay gate (§7.1, §8.1): default and safe gate, scalar (Dg = 1) and per channel */
static void decay_case(int N, int H, int Dg, real lb, gsl_rng *r) {
    size_t n = (size_t)N * H * Dg, HD = (size_t)H * Dg;
    real *a = randv(r, n, 2), *Al = uniform(r, H, lb < 0 ? -0.5 : 0, lb < 0 ? 0.5 : 2.7);
    real *bias = randv(r, HD, 1), *g = randv(r, n, 1), *dg = randv(r, n, 1), *da = randv(r, n, 1);
    real *dAl = randv(r, H, 1), *db = randv(r, HD, 1);
    a[0] = 30, a[1] = -30; /* past the softplus threshold */
    real *ga = up(GPU, a, R * n), *gAl = up(GPU, Al, R * H), *gbias = up(GPU, bias, R * HD);
    real *gg = up(GPU, g, R * n), *gdg = up(GPU, dg, R * n), *gda = up(GPU, da, R * n);
    real *gdAl = up(GPU, dAl, R * H), *gdb = up(GPU, db, R * HD);
    printf("  decay N=%d H=%d Dg=%d lb=%g\n", N, H, Dg, (double)lb);
    DC()->decay_forward(g, a, Al, bias, N, H, Dg, lb), DG()->decay_forward(gg, ga, gAl, gbias, N, H, Dg, lb);
    cmp("g", g, gg, n, 1e-6);
    DC()->decay_backward(da, dAl, db, dg, a, Al, bias, N, H, Dg, lb);
    DG()->decay_backward(gda, gdAl, gdb, gdg, ga, gAl, gbias, N, H, Dg, lb);
    cmp("da (accumulated)", da, gda, n, 1e-6);
    cmp("dA_log (accumulated)", dAl, gdAl, H, 1e-6);
    cmp("ddt_bias (accumulated)", db, gdb, HD, 1e-6);
    real *b[] = {ga, gAl, gbias, gg, gdg, gda, gdAl, gdb};
    for (int i = 0; i < 8; i++) GPU->release(b[i]);
    free(a), free(Al), free(bias), free(g), free(dg), free(da), free(dAl), free(db);
}

static void test_decay(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(23);
    decay_case(700, 3, 1, 0, r);   /* GDN: several 256-token partial sums, a ragged last one */
    decay_case(700, 2, 8, 0, r);   /* KDA */
    decay_case(300, 2, 8, -5, r);  /* KDA safe gate */
    decay_case(100, 3, 1, -5, r);  /* one partial sum */
    decay_case(40, 2, 160, 0, r);  /* more channels than threads of a block */
    gsl_rng_free(r);
}

/* ---- gated delta rule ----------------------------------------------------------------- */

static void delta_case(int B, int T, int H, int K, int V, int gate, double beta_max, gsl_rng *r) {
    size_t nq = (size_t)B * T * H * K, nv = (size_t)B * T * H * V, nh = (size_t)B * T * H;
    size_t ng = gate == DELTA_GATE_CHANNEL ? nq : nh, nc = delta_ckpt_len(B, H, T, (size_t)K * V);
    real *q = randv(r, nq, 1), *k = randv(r, nq, 1), *v = randv(r, nv, 1);
    real *beta = uniform(r, nh, 0, beta_max), *g = uniform(r, ng, -0.5, 0), *dout = randv(r, nv, 1);
    unit_rows(q, nh, K), unit_rows(k, nh, K); /* the layer L2-normalises q and k */
    real *o = xcalloc(nv, R), *ck = xcalloc(nc, R);
    real *dq = randv(r, nq, 1), *dk = randv(r, nq, 1), *dv = randv(r, nv, 1);
    real *dbeta = randv(r, nh, 1), *dg = randv(r, ng, 1);
    DeltaArgs c = {.B = B, .T = T, .H = H, .K = K, .V = V, .gate = gate,
                   .scale = (real)(1 / sqrt((double)K)), .q = q, .k = k, .v = v, .beta = beta,
                   .g = gate ? g : NULL, .o = o, .ckpt = ck, .dout = dout, .dq = dq, .dk = dk,
                   .dv = dv, .dbeta = dbeta, .dg = gate ? dg : NULL};
    DeltaArgs d = c;
    d.q = up(GPU, q, R * nq), d.k = up(GPU, k, R * nq), d.v = up(GPU, v, R * nv);
    d.beta = up(GPU, beta, R * nh), d.g = gate ? up(GPU, g, R * ng) : NULL;
    d.o = up(GPU, o, R * nv), d.ckpt = up(GPU, ck, R * nc), d.dout = up(GPU, dout, R * nv);
    d.dq = up(GPU, dq, R * nq), d.dk = up(GPU, dk, R * nq), d.dv = up(GPU, dv, R * nv);
    d.dbeta = up(GPU, dbeta, R * nh), d.dg = gate ? up(GPU, dg, R * ng) : NULL;
    printf("  delta B=%d T=%d H=%d K=%d V=%d gate=%d beta<%g\n", B, T, H, K, V, gate, beta_max);
    DC()->delta_forward(&c), DG()->delta_forward(&d);
    cmp("o", o, d.o, nv, 1e-5);
    cmp("ckpt", ck, d.ckpt, nc, 1e-5);
    DC()->delta_backward(&c), DG()->delta_backward(&d);
    cmp("dq (accumulated)", dq, d.dq, nq, 1e-5);
    cmp("dk (accumulated)", dk, d.dk, nq, 1e-5);
    cmp("dv (accumulated)", dv, d.dv, nv, 1e-5);
    cmp("dbeta (accumulated)", dbeta, d.dbeta, nh, 1e-5);
    if (gate) cmp("dg (accumulated)", dg, d.dg, ng, 1e-5);
    const void *b[] = {d.q, d.k, d.v, d.beta, d.g, d.o, d.ckpt, d.dout, d.dq, d.dk, d.dv, d.dbeta, d.dg};
    for (int i = 0; i < 13; i++)
        if (b[i]) GPU->release((void *)b[i]);
    free(q), free(k), free(v), free(beta), free(g), free(dout), free(o), free(ck);
    free(dq), free(dk), free(dv), free(dbeta), free(dg);
}

static void test_delta_rule(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(24);
    /* T = 150: three checkpoint chunks, the last one partial; K != V both ways */
    for (int gate = DELTA_GATE_NONE; gate <= DELTA_GATE_CHANNEL; gate++) delta_case(2, 150, 3, 8, 16, gate, 1, r);
    delta_case(2, 150, 2, 16, 8, DELTA_GATE_CHANNEL, 2, r); /* neg_eigval: beta in (0, 2) */
    delta_case(1, 64, 2, 8, 8, DELTA_GATE_SCALAR, 1, r);    /* exactly one chunk */
    delta_case(3, 5, 1, 4, 4, DELTA_GATE_NONE, 1, r);       /* shorter than a chunk */
    delta_case(1, 130, 2, 64, 64, DELTA_GATE_CHANNEL, 1, r); /* wide heads */
    delta_case(1, 70, 1, 64, 128, DELTA_GATE_SCALAR, 1, r); /* expand_v 2: > 48 KB of shared memory */
    gsl_rng_free(r);
}

/* ---- MesaNet ---------------------------------------------------------------------------- */

static void mesa_case(int B, int T, int H, int K, int V, int cg_steps, int gated, gsl_rng *r) {
    size_t nq = (size_t)B * T * H * K, nv = (size_t)B * T * H * V, nh = (size_t)B * T * H;
    size_t nl = (size_t)H * K, nc = delta_ckpt_len(B, H, T, (size_t)K * (K + V));
    real *q = randv(r, nq, 1), *k = randv(r, nq, 1), *v = randv(r, nv, 1), *dout = randv(r, nv, 1);
    real *beta = uniform(r, nh, 0, 1), *g = uniform(r, nh, -0.5, 0), *lam = uniform(r, nl, 0.5, 1.5);
    unit_rows(q, nh, K), unit_rows(k, nh, K);
    real *o = xcalloc(nv, R), *qs = xcalloc(nq, R), *ck = xcalloc(nc, R);
    real *dq = randv(r, nq, 1), *dk = randv(r, nq, 1), *dv = randv(r, nv, 1);
    real *dbeta = randv(r, nh, 1), *dg = randv(r, nh, 1), *dlam = randv(r, nl, 1);
    MesaArgs c = {.B = B, .T = T, .H = H, .K = K, .V = V, .cg_steps = cg_steps, .cg_eps = (real)1e-5,
                  .q = q, .k = k, .v = v, .beta = beta, .g = gated ? g : NULL, .lam = lam, .o = o,
                  .qstar = qs, .ckpt = ck, .dout = dout, .dq = dq, .dk = dk, .dv = dv,
                  .dbeta = dbeta, .dg = gated ? dg : NULL, .dlam = dlam};
    MesaArgs d = c;
    d.q = up(GPU, q, R * nq), d.k = up(GPU, k, R * nq), d.v = up(GPU, v, R * nv);
    d.beta = up(GPU, beta, R * nh), d.g = gated ? up(GPU, g, R * nh) : NULL, d.lam = up(GPU, lam, R * nl);
    d.o = up(GPU, o, R * nv), d.qstar = up(GPU, qs, R * nq), d.ckpt = up(GPU, ck, R * nc);
    d.dout = up(GPU, dout, R * nv), d.dq = up(GPU, dq, R * nq), d.dk = up(GPU, dk, R * nq);
    d.dv = up(GPU, dv, R * nv), d.dbeta = up(GPU, dbeta, R * nh);
    d.dg = gated ? up(GPU, dg, R * nh) : NULL, d.dlam = up(GPU, dlam, R * nl);
    printf("  mesa B=%d T=%d H=%d K=%d V=%d cg_steps=%d gated=%d\n", B, T, H, K, V, cg_steps, gated);
    DC()->mesa_forward(&c), DG()->mesa_forward(&d);
    cmp("o", o, d.o, nv, 1e-5);
    cmp("qstar", qs, d.qstar, nq, 1e-5);
    cmp("ckpt", ck, d.ckpt, nc, 1e-5);
    DC()->mesa_backward(&c), DG()->mesa_backward(&d);
    cmp("dq (accumulated)", dq, d.dq, nq, 1e-5);
    cmp("dk (accumulated)", dk, d.dk, nq, 1e-5);
    cmp("dv (accumulated)", dv, d.dv, nv, 1e-5);
    cmp("dbeta (accumulated)", dbeta, d.dbeta, nh, 1e-5);
    if (gated) cmp("dg (accumulated)", dg, d.dg, nh, 1e-5);
    cmp("dlam (accumulated)", dlam, d.dlam, nl, 1e-5);
    const void *b[] = {d.q, d.k, d.v, d.beta, d.g, d.lam, d.o, d.qstar, d.ckpt, d.dout,
                       d.dq, d.dk, d.dv, d.dbeta, d.dg, d.dlam};
    for (int i = 0; i < 16; i++)
        if (b[i]) GPU->release((void *)b[i]);
    free(q), free(k), free(v), free(dout), free(beta), free(g), free(lam), free(o), free(qs), free(ck);
    free(dq), free(dk), free(dv), free(dbeta), free(dg), free(dlam);
}

static void test_mesa(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(25);
    for (int gated = 0; gated < 2; gated++) {
        mesa_case(2, 150, 2, 8, 8, 0, gated, r);  /* exact Cholesky solves */
        mesa_case(2, 150, 2, 8, 8, 30, gated, r); /* the default CG */
    }
    mesa_case(2, 100, 2, 8, 12, 5, 1, r);     /* truncated CG, K != V */
    mesa_case(3, 20, 1, 6, 4, 3, 0, r);       /* one partial chunk */
    mesa_case(1, 70, 2, 64, 64, 30, 1, r);    /* wide heads: > 48 KB of shared memory */
    mesa_case(1, 70, 1, 64, 64, 0, 0, r);
    gsl_rng_free(r);
}

/* ---- whole models --------------------------------------------------------------------- */

/* (mixer.short_conv=0 is left to the conv tests: with it, one mlp.w3 gradient entry of
 * the neg_eigval case is ~1e-8, AdamW's eps, and its first update swings with rounding) */

static const char *model_cases[] = {
    "model.mixer=deltanet",
    "model.mixer=deltanet mixer.neg_eigval=true mixer.output_gate=true",
    "model.mixer=gated_deltanet",
    "model.mixer=kda",
    "model.mixer=kda mixer.neg_eigval=true",
    "model.mixer=kda mixer.gate_lower_bound=-5",
    "model.mixer=mesanet mixer.cg_steps=0",
    "model.mixer=mesanet",
    "model.mixer=mesanet mixer.mesa_gates=false mixer.output_gate=true",
    "model.mixer=gated_deltanet task.seq_len=100", /* crosses the checkpoint at 64 */
    "model.mixer=mesanet task.seq_len=100",
};

static void test_models_fp32(void **s) {
    (void)s;
    NEED_GPU();
    run_model_cases(model_cases, NCASES(model_cases), GPU, 1e-4);
}

/* bf16 operands in every matmul. Looser than softmax's 8 eps: on the CPU emulation of
 * the CUDA backend (kernels/cuda/emu), where these ops agree bitwise with the CPU, the
 * worst gradients of these models are 3-8% off (12-20 eps; softmax and Parallax 2%),
 * all in small tensors fed by sums over every token with cancellation (A_log, dt_bias,
 * gate biases) or behind the q/k L2-norm backward (conv_q/k, wq/wk), i.e. the bf16
 * rounding of the matmuls amplified by the model, not the delta kernels. */
static void test_models_bf16(void **s) {
    (void)s;
    NEED_GPU();
    run_model_cases(model_cases, NCASES(model_cases), GPU16, 32 * BF16_EPS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_l2norm),      cmocka_unit_test(test_maps_gates),
        cmocka_unit_test(test_decay),       cmocka_unit_test(test_delta_rule),
        cmocka_unit_test(test_mesa),        cmocka_unit_test(test_models_fp32),
        cmocka_unit_test(test_models_bf16),
    };
    return cmocka_run_group_tests(tests, cuda_setup, NULL);
}
