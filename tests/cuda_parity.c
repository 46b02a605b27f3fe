/* CPU-vs-CUDA parity: every op of the table, the attention cores (softmax and
 * Parallax, parallax_lla.md §3.4/§3.6), whole models (forward loss and every
 * gradient, per mixer and option), a Muon/AdamW update, in fp32 (tight bounds)
 * and bf16 (bounds in units of bf16's epsilon 2^-8). Without a usable GPU every
 * test is skipped with the reason printed; PLAB_REQUIRE_GPU=1 (make test-cuda)
 * turns that into a failure. */
#include "cudautil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>

#include "../models/layers.h"
#include "../optim/optim.h"

/* backends, NEED_GPU, up/down/randv/host_copy/cmp, model_case: tests/cudautil.h */

/* ---- dense -------------------------------------------------------------------------- */

static void matmul_case(const Ops *g, double bound, int M, int N, int K, int tA, int tB,
                        gsl_rng *r) {
    real *A = randv(r, (size_t)M * K, 1), *B = randv(r, (size_t)K * N, 1);
    real *C = randv(r, (size_t)M * N, 1);
    real *dA = up(g, A, sizeof(real) * M * K), *dB = up(g, B, sizeof(real) * K * N);
    real *dC = up(g, C, sizeof(real) * M * N);
    CPU->matmul(C, A, B, M, N, K, tA, tB, (real)0.7, (real)0.3);
    g->matmul(dC, dA, dB, M, N, K, tA, tB, (real)0.7, (real)0.3);
    char name[64];
    snprintf(name, sizeof name, "matmul %dx%dx%d t%d%d", M, N, K, tA, tB);
    cmp(name, C, dC, (size_t)M * N, bound);
    /* strided batch of 3 over the same shapes */
    int nb = 3;
    size_t a = (size_t)M * K, b = (size_t)K * N, c = (size_t)M * N;
    real *A3 = randv(r, a * nb, 1), *B3 = randv(r, b * nb, 1), *C3 = randv(r, c * nb, 1);
    real *dA3 = up(g, A3, sizeof(real) * a * nb), *dB3 = up(g, B3, sizeof(real) * b * nb);
    real *dC3 = up(g, C3, sizeof(real) * c * nb);
    CPU->matmul_strided(C3, A3, B3, M, N, K, tA, tB, 1, (real)0.5, nb, (long)a, (long)b, (long)c);
    g->matmul_strided(dC3, dA3, dB3, M, N, K, tA, tB, 1, (real)0.5, nb, (long)a, (long)b, (long)c);
    cmp("  strided x3", C3, dC3, c * nb, bound);
    g->release(dA), g->release(dB), g->release(dC), g->release(dA3), g->release(dB3), g->release(dC3);
    free(A), free(B), free(C), free(A3), free(B3), free(C3);
}

/* a linear layer's parameter gradients (Ops.linear_param_grad: on the GPU the split-K
 * parts and column sums finish in the deferred launch before the host read), twice into
 * the same dW and db, against the CPU's matmul and bias_backward */
static void param_grad_case(const Ops *g, double bound, int M, int N, int K, gsl_rng *r) {
    real *dY = randv(r, (size_t)K * M, 1), *X = randv(r, (size_t)K * N, 1);
    real *dW = randv(r, (size_t)M * N, 1), *db = randv(r, (size_t)M, 1);
    real *gdY = up(g, dY, sizeof(real) * K * M), *gX = up(g, X, sizeof(real) * K * N);
    real *gdW = up(g, dW, sizeof(real) * M * N), *gdb = up(g, db, sizeof(real) * M);
    for (int rep = 0; rep < 2; rep++) {
        CPU->matmul(dW, dY, X, M, N, K, 1, 0, 1, 1);
        CPU->bias_backward(db, dY, K, M);
        g->linear_param_grad(gdW, gdb, gdY, gX, M, N, K);
    }
    char name[64];
    snprintf(name, sizeof name, "linear_param_grad %dx%dx%d, twice", M, N, K);
    cmp(name, dW, gdW, (size_t)M * N, bound);
    cmp("  its bias", db, gdb, (size_t)M, bound);
    g->release(gdY), g->release(gX), g->release(gdW), g->release(gdb);
    free(dY), free(X), free(dW), free(db);
}

static void test_matmul(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(1);
    for (int t = 0; t < 4; t++) matmul_case(GPU, 1e-5, 37, 23, 51, t & 1, t >> 1, r);
    /* bf16 operands: each product carries ~2 eps of relative error, averaging over K */
    for (int t = 0; t < 4; t++) matmul_case(GPU16, 2 * BF16_EPS, 64, 40, 96, t & 1, t >> 1, r);
    assert_non_null(GPU->linear_param_grad);
    /* K split (16 x 128: the head's shape; 40 x 24: whole float4s; 3 x 5: single
     * elements) and not (K = 1000: no slice of whole 8-row groups) */
    const int shapes[][3] = {{16, 128, 2048}, {40, 24, 1024}, {3, 5, 512}, {24, 40, 1000}};
    for (size_t i = 0; i < NCASES(shapes); i++) {
        param_grad_case(GPU, 1e-5, shapes[i][0], shapes[i][1], shapes[i][2], r);
        param_grad_case(GPU16, 2 * BF16_EPS, shapes[i][0], shapes[i][1], shapes[i][2], r);
    }
    gsl_rng_free(r);
}

/* the linear layer with its bias inside the matmul (cuBLASLt epilogue) against the
 * CPU's matmul and add_bias; an op that returns 0 ran nothing (no cuBLASLt kernel
 * for the shape) and says so */
static void linear_case(const Ops *g, double bound, int N, int in, int out, gsl_rng *r) {
    size_t nx = (size_t)N * in, ny = (size_t)N * out, nw = (size_t)out * in;
    real *x = randv(r, nx, 1), *W = randv(r, nw, 1), *b = randv(r, out, 1), *y = randv(r, ny, 1);
    real *gx = up(g, x, sizeof(real) * nx), *gW = up(g, W, sizeof(real) * nw);
    real *gb = up(g, b, sizeof(real) * out), *gy = up(g, y, sizeof(real) * ny);
    printf("  linear N=%d in=%d out=%d\n", N, in, out);
    CPU->matmul(y, x, W, N, out, in, 0, 1, 1, 0);
    CPU->add_bias(y, b, N, out);
    if (g->linear_bias_forward(gy, gx, gW, gb, N, in, out)) cmp("bias epilogue", y, gy, ny, bound);
    else printf("    bias epilogue: no cuBLASLt kernel for this shape (unfused ops run)\n");
    real *bufs[] = {gx, gW, gb, gy};
    for (int i = 0; i < 4; i++) g->release(bufs[i]);
    free(x), free(W), free(b), free(y);
}

static void test_linear_fused(void **s) {
    (void)s;
    NEED_GPU();
    if (!GPU->linear_bias_forward) {
        printf("  this CUDA build has no cuBLASLt fusions (the CPU emulation): nothing to compare\n");
        return;
    }
    gsl_rng *r = test_rng(11);
    linear_case(GPU, 1e-5, 1000, 128, 384, r);
    linear_case(GPU, 1e-5, 77, 24, 40, r);
    linear_case(GPU16, 2 * BF16_EPS, 1000, 128, 384, r);
    linear_case(GPU16, 2 * BF16_EPS, 512, 128, 16, r);
    gsl_rng_free(r);
}

/* bf16 rounding (to nearest even) of every element, the CPU side of the bf16 MLP */
static real *bf16_round(real *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float f = (float)x[i];
        unsigned u;
        memcpy(&u, &f, 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        memcpy(&f, &u, 4);
        x[i] = f;
    }
    return x;
}

/* The bf16 table's whole-MLP op (hidden activations stored in bf16) against the CPU's
 * fp32 ops on the same bf16-rounded operands and intermediates */
static void mlp_bf16_case(gsl_rng *r, int N, int d, int F) {
    size_t nx = (size_t)N * d, nab = (size_t)N * 2 * F, nh = (size_t)N * F;
    real *x = randv(r, nx, 1), *W13 = randv(r, 2 * F * d, 0.3), *W2 = randv(r, (size_t)d * F, 0.3);
    real *dy = randv(r, nx, 1), *dW13 = randv(r, 2 * F * d, 1), *dW2 = randv(r, (size_t)d * F, 1);
    real *gx = up(GPU16, x, sizeof(real) * nx), *gW13 = up(GPU16, W13, sizeof(real) * 2 * F * d);
    real *gW2 = up(GPU16, W2, sizeof(real) * d * F), *gdy = up(GPU16, dy, sizeof(real) * nx);
    real *gdW13 = up(GPU16, dW13, sizeof(real) * 2 * F * d), *gdW2 = up(GPU16, dW2, sizeof(real) * d * F);
    real *gy = GPU16->alloc(sizeof(real) * nx), *gdx = GPU16->alloc(sizeof(real) * nx);
    void *save = GPU16->alloc(GPU16->mlp_save_bytes(N, d, F));
    GPU16->mlp_forward(gy, gx, gW13, gW2, save, N, d, F);
    GPU16->mlp_backward(gdx, gdW13, gdW2, gdy, gW13, gW2, save, N, d, F);
    /* CPU: the same steps in fp32 on rounded values */
    real *xb = bf16_round(host_copy(x, nx), nx), *w13 = bf16_round(host_copy(W13, 2 * F * d), 2 * F * d);
    real *w2 = bf16_round(host_copy(W2, (size_t)d * F), (size_t)d * F);
    real *ab = malloc(sizeof(real) * nab), *h = malloc(sizeof(real) * nh), *y = malloc(sizeof(real) * nx);
    CPU->matmul(ab, xb, w13, N, 2 * F, d, 0, 1, 1, 0);
    bf16_round(ab, nab);
    CPU->swiglu_forward(h, ab, ab + F, N, F, 2 * F);
    bf16_round(h, nh);
    CPU->matmul(y, h, w2, N, d, F, 0, 1, 1, 0);
    printf("  bf16 MLP N=%d d=%d F=%d\n", N, d, F);
    cmp("forward y", y, gy, nx, 4 * BF16_EPS);
    real *dyb = bf16_round(host_copy(dy, nx), nx), *dh = malloc(sizeof(real) * nh);
    real *dab = malloc(sizeof(real) * nab), *dx = malloc(sizeof(real) * nx);
    CPU->matmul(dh, dyb, w2, N, F, d, 0, 0, 1, 0);
    bf16_round(dh, nh);
    CPU->matmul(dW2, dyb, h, d, F, N, 1, 0, 1, 1);
    CPU->swiglu_backward(dab, dab + F, dh, ab, ab + F, N, F, 2 * F);
    bf16_round(dab, nab);
    CPU->matmul(dx, dab, w13, N, d, 2 * F, 0, 0, 1, 0);
    CPU->matmul(dW13, dab, xb, 2 * F, d, N, 1, 0, 1, 1);
    cmp("backward dx", dx, gdx, nx, 4 * BF16_EPS);
    cmp("backward dW13 (added)", dW13, gdW13, 2 * F * d, 4 * BF16_EPS);
    cmp("backward dW2 (added)", dW2, gdW2, (size_t)d * F, 4 * BF16_EPS);
    void *bufs[] = {gx, gW13, gW2, gdy, gdW13, gdW2, gy, gdx, save};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) GPU16->release(bufs[i]);
    real *hb[] = {x, W13, W2, dy, dW13, dW2, xb, w13, w2, ab, h, y, dyb, dh, dab, dx};
    for (size_t i = 0; i < sizeof hb / sizeof *hb; i++) free(hb[i]);
}
/* The norm that writes the MLP's input into its saved state in bf16 only
 * (residual_rmsnorm_bf16_forward, then mlp_forward with x = NULL): the residual sum and
 * rstd as the CPU's, and the MLP's output bit for bit that of the fp32 norm output
 * converted by the MLP (both round the same float once, to nearest even). The same for
 * the norm's backward that hands the MLP its output gradient (rmsnorm_backward_bf16), and
 * the MLP's backward that hands the norm before it its input gradient in bf16. */
static void norm_into_mlp_case(gsl_rng *r, int N, int d, int F) {
    size_t nx = (size_t)N * d;
    real *x = randv(r, nx, 1), *y = randv(r, nx, 1), *w = randv(r, d, 1);
    real *W13 = randv(r, 2 * F * d, 0.3), *W2 = randv(r, (size_t)d * F, 0.3);
    real *gx = up(GPU16, x, sizeof(real) * nx), *gy = up(GPU16, y, sizeof(real) * nx);
    real *gw = up(GPU16, w, sizeof(real) * d), *gW13 = up(GPU16, W13, sizeof(real) * 2 * F * d);
    real *gW2 = up(GPU16, W2, sizeof(real) * d * F);
    real *gout = GPU16->alloc(sizeof(real) * nx), *gn = GPU16->alloc(sizeof(real) * nx);
    real *grs = GPU16->alloc(sizeof(real) * N), *gya = GPU16->alloc(sizeof(real) * nx);
    real *gyb = GPU16->alloc(sizeof(real) * nx);
    void *sa = GPU16->alloc(GPU16->mlp_save_bytes(N, d, F)), *sb = GPU16->alloc(GPU16->mlp_save_bytes(N, d, F));
    GPU16->residual_rmsnorm_forward(gout, gx, gy, gn, grs, gw, N, d, 1e-5f);
    GPU16->mlp_forward(gya, gn, gW13, gW2, sa, N, d, F);
    GPU16->zero(gout, sizeof(real) * nx), GPU16->zero(grs, sizeof(real) * N);
    assert_int_equal(GPU16->residual_rmsnorm_bf16_forward(gout, gx, gy, NULL, NULL, sb, grs, gw, N, d, 1e-5f), 1);
    GPU16->mlp_forward(gyb, NULL, gW13, gW2, sb, N, d, F);
    real *out = malloc(sizeof(real) * nx), *n = malloc(sizeof(real) * nx), *rs = malloc(sizeof(real) * N);
    real *ya = malloc(sizeof(real) * nx);
    CPU->residual_rmsnorm_forward(out, x, y, n, rs, w, N, d, 1e-5f);
    GPU16->to_host(ya, gya, sizeof(real) * nx);
    printf("  norm into the bf16 MLP's input N=%d d=%d F=%d\n", N, d, F);
    cmp("residual sum", out, gout, nx, 1e-7);
    cmp("rstd", rs, grs, (size_t)N, 1e-6);
    cmp("MLP output (x = NULL)", ya, gyb, nx, 0);
    /* backward: the norm (after the MLP) that also writes its dx in bf16 as the MLP's
     * output gradient (rmsnorm_backward_bf16, then mlp_backward with dy = NULL), written
     * and accumulated: everything bit for bit as the fp32 dx converted by the MLP */
    real *dout = randv(r, nx, 1), *dx0 = randv(r, nx, 1), *h = malloc(sizeof(real) * nx);
    real *hw = malloc(sizeof(real) * d), *h13 = malloc(sizeof(real) * 2 * F * d);
    real *h2 = malloc(sizeof(real) * d * F), *hmx = malloc(sizeof(real) * nx);
    real *gdout = up(GPU16, dout, sizeof(real) * nx);
    for (int write = 1; write >= 0; write--) {
        real *gd[2], *gdw[2], *gmx[2], *gd13[2], *gd2[2];
        for (int k = 0; k < 2; k++) {
            gd[k] = up(GPU16, dx0, sizeof(real) * nx), gdw[k] = GPU16->alloc(sizeof(real) * d);
            gmx[k] = GPU16->alloc(sizeof(real) * nx), gd13[k] = GPU16->alloc(sizeof(real) * 2 * F * d);
            gd2[k] = GPU16->alloc(sizeof(real) * d * F);
        }
        if (write) GPU16->rmsnorm_backward_write(gd[0], gdw[0], gdout, gout, gw, grs, N, d);
        else GPU16->rmsnorm_backward(gd[0], gdw[0], gdout, gout, gw, grs, N, d);
        GPU16->mlp_backward(gmx[0], gd13[0], gd2[0], gd[0], gW13, gW2, sa, N, d, F);
        real *gcs = GPU16->alloc(sizeof(real) * d), *cs = xcalloc((size_t)d, sizeof(real));
        assert_int_equal(GPU16->rmsnorm_backward_bf16(gd[1], gdw[1], gdout, NULL, gout, gw, grs, N, d, write, sb, gcs), 1);
        GPU16->mlp_backward(gmx[1], gd13[1], gd2[1], NULL, gW13, gW2, sb, N, d, F);
        printf("   %s\n", write ? "norm backward written" : "norm backward accumulated");
        GPU16->to_host(h, gd[0], sizeof(real) * nx), cmp("norm dx", h, gd[1], nx, 0);
        CPU->bias_backward(cs, h, N, d); /* the output bias gradient from dx as written */
        cmp("norm dx column sums", cs, gcs, (size_t)d, 1e-5);
        GPU16->release(gcs), free(cs);
        GPU16->to_host(hw, gdw[0], sizeof(real) * d), cmp("norm dw", hw, gdw[1], (size_t)d, 0);
        GPU16->to_host(hmx, gmx[0], sizeof(real) * nx), cmp("MLP dx (dy = NULL)", hmx, gmx[1], nx, 0);
        GPU16->to_host(h13, gd13[0], sizeof(real) * 2 * F * d), cmp("MLP dW13", h13, gd13[1], 2 * F * d, 0);
        GPU16->to_host(h2, gd2[0], sizeof(real) * d * F), cmp("MLP dW2", h2, gd2[1], (size_t)d * F, 0);
        for (int k = 0; k < 2; k++) {
            void *b[] = {gd[k], gdw[k], gmx[k], gd13[k], gd2[k]};
            for (int i = 0; i < 5; i++) GPU16->release(b[i]);
        }
    }
    /* the MLP's input gradient left in bf16 in its state (mlp_backward with dx = NULL) and the
     * norm before it reading it there (rmsnorm_backward_bf16 with dout = NULL): as from the
     * fp32 dx, within the one rounding (sa's input slot is overwritten: its last use) */
    real *gx32 = GPU16->alloc(sizeof(real) * nx), *gr[2], *gwd[2];
    real *g13 = GPU16->alloc(sizeof(real) * 2 * F * d), *g2 = GPU16->alloc(sizeof(real) * d * F);
    for (int k = 0; k < 2; k++) gr[k] = up(GPU16, dx0, sizeof(real) * nx), gwd[k] = GPU16->alloc(sizeof(real) * d);
    GPU16->mlp_backward(gx32, g13, g2, gdout, gW13, gW2, sa, N, d, F);
    GPU16->rmsnorm_backward(gr[0], gwd[0], gx32, gout, gw, grs, N, d);
    GPU16->mlp_backward(NULL, g13, g2, gdout, gW13, gW2, sa, N, d, F);
    assert_int_equal(GPU16->rmsnorm_backward_bf16(gr[1], gwd[1], NULL, sa, gout, gw, grs, N, d, 0, NULL, NULL), 1);
    printf("   the MLP's input gradient in bf16 into the norm's backward\n");
    GPU16->to_host(h, gr[0], sizeof(real) * nx), cmp("norm dx", h, gr[1], nx, 2 * BF16_EPS);
    GPU16->to_host(hw, gwd[0], sizeof(real) * d), cmp("norm dw", hw, gwd[1], (size_t)d, 2 * BF16_EPS);
    void *b3[] = {gx32, g13, g2, gr[0], gr[1], gwd[0], gwd[1]};
    for (int i = 0; i < 7; i++) GPU16->release(b3[i]);
    GPU16->release(gdout);
    real *hb2[] = {dout, dx0, h, hw, h13, h2, hmx};
    for (size_t i = 0; i < sizeof hb2 / sizeof *hb2; i++) free(hb2[i]);
    void *bufs[] = {gx, gy, gw, gW13, gW2, gout, gn, grs, gya, gyb, sa, sb};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) GPU16->release(bufs[i]);
    real *hb[] = {x, y, w, W13, W2, out, n, rs, ya};
    for (size_t i = 0; i < sizeof hb / sizeof *hb; i++) free(hb[i]);
}

/* The norm after a bf16 block reading the block's output in bf16 from its state
 * (mlp_forward with y = NULL, then residual_rmsnorm_bf16_forward with y_state): the sum and
 * rstd as from the fp32 output within its rounding; d = 18: not the one-pass kernel */
static void norm_after_mlp_case(gsl_rng *r, int N, int d, int F) {
    size_t nx = (size_t)N * d;
    real *x = randv(r, nx, 1), *xin = randv(r, nx, 1), *w = randv(r, d, 1);
    real *W13 = randv(r, 2 * F * d, 0.3), *W2 = randv(r, (size_t)d * F, 0.3);
    real *gx = up(GPU16, x, sizeof(real) * nx), *gin = up(GPU16, xin, sizeof(real) * nx);
    real *gw = up(GPU16, w, sizeof(real) * d), *gW13 = up(GPU16, W13, sizeof(real) * 2 * F * d);
    real *gW2 = up(GPU16, W2, sizeof(real) * d * F), *gy = GPU16->alloc(sizeof(real) * nx);
    real *gout[2], *grs[2], *gn = GPU16->alloc(sizeof(real) * nx);
    for (int k = 0; k < 2; k++) gout[k] = GPU16->alloc(sizeof(real) * nx), grs[k] = GPU16->alloc(sizeof(real) * N);
    void *sa = GPU16->alloc(GPU16->mlp_save_bytes(N, d, F)), *sb = GPU16->alloc(GPU16->mlp_save_bytes(N, d, F));
    GPU16->mlp_forward(gy, gin, gW13, gW2, sa, N, d, F);
    GPU16->mlp_forward(NULL, gin, gW13, gW2, sa, N, d, F);
    GPU16->residual_rmsnorm_forward(gout[0], gx, gy, gn, grs[0], gw, N, d, 1e-5f);
    assert_int_equal(GPU16->residual_rmsnorm_bf16_forward(gout[1], gx, NULL, sa, NULL, sb, grs[1], gw, N, d, 1e-5f), 1);
    printf("  the norm after the bf16 MLP reading its output in bf16, N=%d d=%d F=%d\n", N, d, F);
    real *h = down(GPU16, gout[0], nx), *hr = down(GPU16, grs[0], N);
    cmp("residual sum", h, gout[1], nx, BF16_EPS);
    cmp("rstd", hr, grs[1], (size_t)N, BF16_EPS);
    void *bufs[] = {gx, gin, gw, gW13, gW2, gy, gn, gout[0], gout[1], grs[0], grs[1], sa, sb};
    for (size_t i = 0; i < NCASES(bufs); i++) GPU16->release(bufs[i]);
    free(x), free(xin), free(w), free(W13), free(W2), free(h), free(hr);
}

static void test_mlp_bf16(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(12);
    mlp_bf16_case(r, 300, 32, 48); /* F % 8 == 0: the 8-wide SwiGLU kernels */
    mlp_bf16_case(r, 77, 24, 20);  /* the one-element kernels */
    mlp_bf16_case(r, 300, 128, 352); /* MAD's d = 128 and F */
    mlp_bf16_case(r, 256, 128, 64);  /* d = 128, a small F */
    norm_into_mlp_case(r, 300, 128, 352); /* MAD's d and F */
    norm_after_mlp_case(r, 300, 128, 352);
    norm_after_mlp_case(r, 50, 18, 24);
    norm_into_mlp_case(r, 77, 200, 48);   /* the 8-column-a-lane kernel, ragged */
    gsl_rng_free(r);
}

static void test_vector_ops(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(2);
    int N = 301, C = 45;
    size_t n = (size_t)N * C;
    real *y = randv(r, n, 1), *b = randv(r, C, 1), *x = randv(r, n, 1), *db = randv(r, C, 1);
    real *dy = up(GPU, y, sizeof(real) * n), *dbias = up(GPU, b, sizeof(real) * C);
    real *dx = up(GPU, x, sizeof(real) * n), *ddb = up(GPU, db, sizeof(real) * C);
    CPU->add_bias(y, b, N, C), GPU->add_bias(dy, dbias, N, C);
    cmp("add_bias", y, dy, n, 1e-6);
    CPU->bias_backward(db, x, N, C), GPU->bias_backward(ddb, dx, N, C);
    cmp("bias_backward", db, ddb, C, 1e-5);
    { /* column sums at MAD's size (two-stage: 256 x 128 parts) and larger, twice in a row */
        int rows[2] = {16384, 40000};
        for (int k = 0; k < 2; k++) {
            size_t m = (size_t)rows[k] * 128;
            real *a = randv(r, m, 1), *o = randv(r, 128, 1), *ga = up(GPU, a, sizeof(real) * m);
            real *go = up(GPU, o, sizeof(real) * 128);
            for (int rep = 0; rep < 2; rep++)
                CPU->bias_backward(o, a, rows[k], 128), GPU->bias_backward(go, ga, rows[k], 128);
            printf("  bias_backward N=%d C=128, twice\n", rows[k]);
            cmp("bias_backward", o, go, 128, 1e-5);
            GPU->release(ga), GPU->release(go), free(a), free(o);
        }
    }
    CPU->axpy(y, x, (real)-0.3, (long)n), GPU->axpy(dy, dx, (real)-0.3, (long)n);
    cmp("axpy", y, dy, n, 1e-6);
    CPU->scale(y, (real)1.7, (long)n), GPU->scale(dy, (real)1.7, (long)n);
    cmp("scale", y, dy, n, 1e-6);
    real ss, *dss = GPU->alloc(sizeof(real));
    CPU->sumsq(&ss, y, (long)n), GPU->sumsq(dss, dy, (long)n);
    cmp("sumsq", &ss, dss, 1, 1e-6);
    CPU->scale_rsqrt(y, &ss, (real)1e-7, (long)n), GPU->scale_rsqrt(dy, dss, (real)1e-7, (long)n);
    cmp("scale_rsqrt", y, dy, n, 1e-6);
    GPU->release(dy), GPU->release(dbias), GPU->release(dx), GPU->release(ddb), GPU->release(dss);
    free(y), free(b), free(x), free(db);
    gsl_rng_free(r);
}

/* ---- layers ------------------------------------------------------------------------- */

static void test_rmsnorm(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(3);
    /* {257, 128}, {333, 192}, {130, 32}: the backward with the weight gradient's partial
     * sums inside (ragged last blocks, idle lanes, two column groups); {512, 8}: the
     * column sum folds narrow rows into rows of 128; C = 4, 8, 16: the per-head norms'
     * float4 row kernels; the residual add and norm: one pass for C % 4 == 0 (one or two
     * column groups), an add and a norm pass for C = 70 */
    int shapes[][2] = {{257, 128}, {333, 192}, {130, 32}, {300, 8}, {33, 70}, {512, 8}, {77, 4}, {65, 16}};
    for (int k = 0; k < (int)(sizeof shapes / sizeof *shapes); k++)
        for (int with_w = 0; with_w < 2; with_w++) {
            int N = shapes[k][0], C = shapes[k][1];
            size_t n = (size_t)N * C;
            real *x = randv(r, n, 2), *w = randv(r, C, 1), *out = randv(r, n, 1), *rs = randv(r, N, 1);
            real *dout = randv(r, n, 1), *dx = randv(r, n, 1), *dw = randv(r, C, 1);
            real *gx = up(GPU, x, sizeof(real) * n), *gw = up(GPU, w, sizeof(real) * C);
            real *gout = up(GPU, out, sizeof(real) * n), *grs = up(GPU, rs, sizeof(real) * N);
            real *gdout = up(GPU, dout, sizeof(real) * n), *gdx = up(GPU, dx, sizeof(real) * n);
            real *gdw = up(GPU, dw, sizeof(real) * C);
            const real *W = with_w ? w : NULL, *GW = with_w ? gw : NULL;
            CPU->rmsnorm_forward(out, rs, x, W, N, C, (real)1e-5);
            GPU->rmsnorm_forward(gout, grs, gx, GW, N, C, (real)1e-5);
            printf("  rmsnorm N=%d C=%d w=%d\n", N, C, with_w);
            cmp("forward", out, gout, n, 1e-6);
            cmp("rstd", rs, grs, N, 1e-6);
            CPU->rmsnorm_backward(dx, with_w ? dw : NULL, dout, x, W, rs, N, C);
            GPU->rmsnorm_backward(gdx, with_w ? gdw : NULL, gdout, gx, GW, grs, N, C);
            cmp("dx", dx, gdx, n, 1e-5);
            cmp("dw", dw, gdw, C, 1e-5);
            /* the writing variant over the non-zero dx (the CPU: zeroed, then added) */
            if (GPU->rmsnorm_backward_write) {
                for (size_t i = 0; i < n; i++) dx[i] = 0;
                CPU->rmsnorm_backward(dx, with_w ? dw : NULL, dout, x, W, rs, N, C);
                GPU->rmsnorm_backward_write(gdx, with_w ? gdw : NULL, gdout, gx, GW, grs, N, C);
                cmp("dx (written)", dx, gdx, n, 1e-5);
                cmp("dw (again added)", dw, gdw, C, 1e-5);
            }
            /* the residual add with the norm after it (and without) */
            real *y = randv(r, n, 1), *res = randv(r, n, 1), *gy = up(GPU, y, sizeof(real) * n);
            real *gres = up(GPU, res, sizeof(real) * n);
            CPU->residual_rmsnorm_forward(res, x, y, with_w ? out : NULL, rs, W, N, C, (real)1e-5);
            GPU->residual_rmsnorm_forward(gres, gx, gy, with_w ? gout : NULL, grs, GW, N, C,
                                          (real)1e-5);
            cmp("residual add", res, gres, n, 1e-6);
            if (with_w) cmp("residual norm", out, gout, n, 1e-6), cmp("residual rstd", rs, grs, N, 1e-6);
            real *b[] = {gx, gw, gout, grs, gdout, gdx, gdw, gy, gres};
            for (int i = 0; i < 9; i++) GPU->release(b[i]);
            free(y), free(res);
            free(x), free(w), free(out), free(rs), free(dout), free(dx), free(dw);
        }
    gsl_rng_free(r);
}

/* the probe's per-head norm with RoPE in the same pass (rmsnorm_rope_forward): the float4
 * row kernel for hd = 4, 8, 16 (whole head or part turned, none), passes for hd = 6 */
static void test_rmsnorm_rope(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(13);
    int cases[][3] = {{8, 8}, {8, 4}, {16, 8}, {4, 4}, {8, 0}, {6, 4}}; /* hd, rot */
    const int N = 74, T = 37, H = 3;
    for (int k = 0; k < (int)(sizeof cases / sizeof *cases); k++) {
        int hd = cases[k][0], rot = cases[k][1];
        size_t n = (size_t)N * H * hd;
        real *x = randv(r, n, 2), *w = randv(r, hd, 1), *out = randv(r, n, 1), *rs = randv(r, (size_t)N * H, 1);
        real *gx = up(GPU, x, sizeof(real) * n), *gw = up(GPU, w, sizeof(real) * hd);
        real *gout = up(GPU, out, sizeof(real) * n), *grs = up(GPU, rs, sizeof(real) * N * H);
        CPU->rmsnorm_rope_forward(out, rs, x, w, N, T, H, hd, rot, (real)10000, (real)1e-5);
        GPU->rmsnorm_rope_forward(gout, grs, gx, gw, N, T, H, hd, rot, (real)10000, (real)1e-5);
        printf("  rmsnorm_rope N=%d T=%d H=%d hd=%d rot=%d\n", N, T, H, hd, rot);
        cmp("forward", out, gout, n, 1e-6);
        cmp("rstd", rs, grs, (size_t)N * H, 1e-6);
        real *b[] = {gx, gw, gout, grs};
        for (int i = 0; i < 4; i++) GPU->release(b[i]);
        free(x), free(w), free(out), free(rs);
    }
    gsl_rng_free(r);
}

static void test_embedding_swiglu_gate(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(4);
    int N = 513, C = 24, V = 19, H = 3, hd = 8;
    int *tok = xmalloc(sizeof(int) * N);
    for (int i = 0; i < N; i++) tok[i] = (int)gsl_rng_uniform_int(r, (unsigned long)(V - 2)) + 1;
    real *table = randv(r, (size_t)V * C, 1), *out = randv(r, (size_t)N * C, 1);
    real *dout = randv(r, (size_t)N * C, 1), *dtab = randv(r, (size_t)V * C, 1);
    int *gtok = up(GPU, tok, sizeof(int) * N);
    real *gtab = up(GPU, table, sizeof(real) * V * C), *gout = up(GPU, out, sizeof(real) * N * C);
    real *gdout = up(GPU, dout, sizeof(real) * N * C), *gdtab = up(GPU, dtab, sizeof(real) * V * C);
    CPU->embedding_forward(out, tok, table, N, C), GPU->embedding_forward(gout, gtok, gtab, N, C);
    cmp("embedding forward", out, gout, (size_t)N * C, 0);
    /* rows 0 and V-1 never appear: they must stay exactly as they were */
    CPU->embedding_backward(dtab, dout, tok, N, C, V), GPU->embedding_backward(gdtab, gdout, gtok, N, C, V);
    cmp("embedding backward", dtab, gdtab, (size_t)V * C, 1e-5);
    /* MAD's table (16 x 128, a warp's table in shared memory) and a larger one (the one-hot matmul) */
    const int eshape[][3] = {{1000, 128, 16}, {300, 128, 40}};
    for (size_t k = 0; k < NCASES(eshape); k++) {
        int EN = eshape[k][0], EC = eshape[k][1], EV = eshape[k][2];
        int *et = xmalloc(sizeof(int) * EN);
        for (int i = 0; i < EN; i++) et[i] = (int)gsl_rng_uniform_int(r, (unsigned long)EV);
        real *ed = randv(r, (size_t)EN * EC, 1), *edt = randv(r, (size_t)EV * EC, 1);
        int *get = up(GPU, et, sizeof(int) * EN);
        real *ged = up(GPU, ed, sizeof(real) * EN * EC), *gedt = up(GPU, edt, sizeof(real) * EV * EC);
        printf("  embedding backward N=%d C=%d V=%d\n", EN, EC, EV);
        CPU->embedding_backward(edt, ed, et, EN, EC, EV), GPU->embedding_backward(gedt, ged, get, EN, EC, EV);
        cmp("embedding backward", edt, gedt, (size_t)EV * EC, 1e-5);
        GPU->release(get), GPU->release(ged), GPU->release(gedt);
        free(et), free(ed), free(edt);
    }
    /* the embedding with the norm after it in one pass, where the backend has it (C = 24: one
     * column group; C = 200: two) */
    for (int k = 0; k < 2 && GPU->embedding_rmsnorm_forward; k++) {
        int EC = k ? 200 : 24;
        size_t ne = (size_t)N * EC;
        real *et = randv(r, (size_t)V * EC, 1), *w = randv(r, EC, 1), *eo = malloc(sizeof(real) * ne);
        real *en = malloc(sizeof(real) * ne), *ers = malloc(sizeof(real) * N);
        real *get = up(GPU, et, sizeof(real) * V * EC), *gw = up(GPU, w, sizeof(real) * EC);
        real *geo = GPU->alloc(sizeof(real) * ne), *gen = GPU->alloc(sizeof(real) * ne);
        real *gers = GPU->alloc(sizeof(real) * N);
        CPU->embedding_forward(eo, tok, et, N, EC);
        CPU->rmsnorm_forward(en, ers, eo, w, N, EC, (real)1e-5);
        assert_int_equal(GPU->embedding_rmsnorm_forward(geo, gtok, get, gen, gers, gw, N, EC, (real)1e-5), 1);
        printf("  embedding + norm N=%d C=%d\n", N, EC);
        cmp("embedding (+ norm)", eo, geo, ne, 0);
        cmp("norm after it", en, gen, ne, 1e-6);
        cmp("its rstd", ers, gers, (size_t)N, 1e-6);
        void *gb[] = {get, gw, geo, gen, gers};
        for (int i = 0; i < 5; i++) GPU->release(gb[i]);
        free(et), free(w), free(eo), free(en), free(ers);
    }

    /* SwiGLU on a and b side by side in rows of 2F (as the MLP's one matmul writes them) */
    int SN = 77, F = 13;
    long n = (long)SN * F;
    real *a = randv(r, 2 * n, 2), *b = a + F, *h = randv(r, n, 1), *dh = randv(r, n, 1);
    real *da = randv(r, 2 * n, 1), *db = da + F;
    real *ga = up(GPU, a, sizeof(real) * 2 * n), *gb = ga + F;
    real *gh = up(GPU, h, sizeof(real) * n), *gdh = up(GPU, dh, sizeof(real) * n);
    real *gda = up(GPU, da, sizeof(real) * 2 * n), *gdb = gda + F;
    CPU->swiglu_forward(h, a, b, SN, F, 2 * F), GPU->swiglu_forward(gh, ga, gb, SN, F, 2 * F);
    cmp("swiglu forward", h, gh, n, 1e-6);
    CPU->swiglu_backward(da, db, dh, a, b, SN, F, 2 * F);
    GPU->swiglu_backward(gda, gdb, gdh, ga, gb, SN, F, 2 * F);
    cmp("swiglu da, db", da, gda, 2 * n, 1e-6);
    CPU->gelu_forward(h, a, n), GPU->gelu_forward(gh, ga, n);
    cmp("gelu forward", h, gh, n, 1e-6);
    CPU->gelu_backward(da, dh, a, n), GPU->gelu_backward(gda, gdh, ga, n);
    cmp("gelu backward", da, gda, n, 1e-6);

    size_t nx = (size_t)N * H * hd;
    real *x = randv(r, nx, 1), *g = randv(r, (size_t)N * H, 2), *o = randv(r, nx, 1);
    real *dx = randv(r, nx, 1), *dg = randv(r, (size_t)N * H, 1), *go_ = randv(r, nx, 1);
    real *gx = up(GPU, x, sizeof(real) * nx), *gg = up(GPU, g, sizeof(real) * N * H);
    real *gout2 = up(GPU, o, sizeof(real) * nx), *gdx = up(GPU, dx, sizeof(real) * nx);
    real *gdg = up(GPU, dg, sizeof(real) * N * H), *ggo = up(GPU, go_, sizeof(real) * nx);
    CPU->gate_forward(o, x, g, N, H, hd), GPU->gate_forward(gout2, gx, gg, N, H, hd);
    cmp("gate forward", o, gout2, nx, 1e-6);
    CPU->gate_backward(dx, dg, go_, x, g, N, H, hd), GPU->gate_backward(gdx, gdg, ggo, gx, gg, N, H, hd);
    cmp("gate dx", dx, gdx, nx, 1e-6);
    cmp("gate dg", dg, gdg, (size_t)N * H, 1e-5);
    void *bufs[] = {gtok, gtab, gout, gdout, gdtab, ga, gh, gdh, gda, gx, gg, gout2, gdx, gdg, ggo};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) GPU->release(bufs[i]);
    free(tok), free(table), free(out), free(dout), free(dtab), free(a), free(h), free(dh);
    free(da), free(x), free(g), free(o), free(dx), free(dg), free(go_);
    gsl_rng_free(r);
}

/* short causal conv: widths 4, 1 and 0 (no conv), with and without bias and SiLU;
 * gradients accumulate into non-zero buffers */
static void conv_case(int B, int T, int C, int W, int silu, int bias, gsl_rng *r) {
    size_t n = (size_t)B * T * C, nw = (size_t)C * W + 1, R = sizeof(real);
    real *x = randv(r, n, 1), *w = randv(r, nw, 0.5), *b = randv(r, C, 0.3);
    real *y = randv(r, n, 1), *pre = randv(r, n, 1), *dy = randv(r, n, 1);
    real *dx = randv(r, n, 1), *dw = randv(r, nw, 1), *db = randv(r, C, 1);
    real *g[9] = {up(GPU, x, R * n), up(GPU, w, R * nw), up(GPU, b, R * C), up(GPU, y, R * n),
                  up(GPU, pre, R * n), up(GPU, dy, R * n), up(GPU, dx, R * n), up(GPU, dw, R * nw),
                  up(GPU, db, R * C)};
    printf("  conv B=%d T=%d C=%d W=%d silu=%d bias=%d\n", B, T, C, W, silu, bias);
    CPU->conv_forward(y, pre, x, w, bias ? b : NULL, B, T, C, W, silu);
    GPU->conv_forward(g[3], g[4], g[0], g[1], bias ? g[2] : NULL, B, T, C, W, silu);
    cmp("y", y, g[3], n, 1e-6);
    cmp("pre", pre, g[4], n, 1e-6);
    CPU->conv_backward(dx, dw, bias ? db : NULL, dy, x, w, pre, B, T, C, W, silu);
    GPU->conv_backward(g[6], g[7], bias ? g[8] : NULL, g[5], g[0], g[1], g[4], B, T, C, W, silu);
    cmp("dx", dx, g[6], n, 1e-6);
    cmp("dw", dw, g[7], nw, 1e-5);
    cmp("db", db, g[8], C, 1e-5);
    for (int i = 0; i < 9; i++) GPU->release(g[i]);
    free(x), free(w), free(b), free(y), free(pre), free(dy), free(dx), free(dw), free(db);
}

static void test_conv(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(5);
    conv_case(3, 37, 20, 4, 1, 1, r);
    conv_case(2, 300, 33, 4, 0, 0, r); /* several row chunks */
    conv_case(2, 9, 7, 1, 1, 1, r);
    conv_case(2, 9, 7, 0, 1, 0, r);
    conv_case(1, 3, 5, 4, 1, 1, r);    /* shorter than the kernel */
    gsl_rng_free(r);
}

static void test_rope(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(5);
    int T = 50, B = 3, N = B * T, H = 4;
    /* (head dim, rot): four pairs a thread where rot % 8 == 0 (one or two groups), else one */
    int hds[4] = {8, 8, 16, 16}, rots[4] = {8, 4, 16, 8};
    for (int k = 0; k < 4; k++) {
        int hd = hds[k], ld = 3 * H * hd; /* inside a fused row */
        size_t n = (size_t)N * ld;
        real *x = randv(r, n, 1), *gx = up(GPU, x, sizeof(real) * n);
        CPU->rope_forward(x, N, T, H, hd, ld, rots[k], 10000), GPU->rope_forward(gx, N, T, H, hd, ld, rots[k], 10000);
        cmp("rope forward", x, gx, n, 1e-6);
        CPU->rope_backward(x, N, T, H, hd, ld, rots[k], 500), GPU->rope_backward(gx, N, T, H, hd, ld, rots[k], 500);
        cmp("rope backward", x, gx, n, 1e-6);
        GPU->release(gx), free(x);
    }
    gsl_rng_free(r);
}

static void test_crossentropy_predict(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(6);
    /* V <= 32, V % 4 == 0: a group of 2, 4 or 8 threads per row (20: 5 of 8 busy); else a warp
     * per row, in one pass and several */
    int Vs[] = {16, 8, 32, 20, 77};
    for (int k = 0; k < (int)NCASES(Vs); k++) {
        int N = 403, V = Vs[k];
        real *l = randv(r, (size_t)N * V, 3), *dl = randv(r, (size_t)N * V, 1);
        int *t = xmalloc(sizeof(int) * N), valid = 0;
        for (int i = 0; i < N; i++) {
            t[i] = gsl_rng_uniform(r) < 0.3 ? -100 : (int)gsl_rng_uniform_int(r, (unsigned long)V);
            valid += t[i] >= 0;
        }
        real inv = (real)(1.0 / valid), loss = (real)0.25;
        real *gl = up(GPU, l, sizeof(real) * N * V), *gdl = up(GPU, dl, sizeof(real) * N * V);
        int *gt = up(GPU, t, sizeof(int) * N);
        real *ginv = up(GPU, &inv, sizeof inv), *gloss = up(GPU, &loss, sizeof loss);
        CPU->crossentropy(&loss, dl, l, t, &inv, N, V);
        GPU->crossentropy(gloss, gdl, gl, gt, ginv, N, V);
        cmp("crossentropy loss", &loss, gloss, 1, 1e-6);
        cmp("crossentropy dlogits", dl, gdl, (size_t)N * V, 1e-6);
        int *pred = xmalloc(sizeof(int) * N), *gpred_h = xmalloc(sizeof(int) * N);
        real *nll = xmalloc(sizeof(real) * N);
        int *gpred = GPU->alloc(sizeof(int) * N);
        real *gnll = GPU->alloc(sizeof(real) * N);
        CPU->predict(pred, nll, l, t, N, V), GPU->predict(gpred, gnll, gl, gt, N, V);
        GPU->to_host(gpred_h, gpred, sizeof(int) * N);
        for (int i = 0; i < N; i++) assert_int_equal(pred[i], gpred_h[i]);
        cmp("predict nll", nll, gnll, N, 1e-6);
        void *b[] = {gl, gdl, gt, ginv, gloss, gpred, gnll};
        for (int i = 0; i < 7; i++) GPU->release(b[i]);
        free(l), free(dl), free(t), free(pred), free(gpred_h), free(nll);
    }
    gsl_rng_free(r);
}

/* The training step's tail in one op (Ops.head_loss_step) against the CPU's ops one by one:
 * residual add and final norm, head, cross-entropy, the head's and the norm's backward.
 * Shapes: MAD's (C 128, V 16) over a ragged last block; C 32 (idle lanes); V 5 (idle logits);
 * no sublayer output (y NULL). On the bf16 backend its products run on the tensor cores in
 * TF32 (10-bit mantissas): bound 4e-3 there. */
static void head_loss_case(const Ops *G, double bound, int N, int C, int V, int with_y, gsl_rng *r) {
    size_t nc = (size_t)N * C;
    real *x = randv(r, nc, 1), *y = with_y ? randv(r, nc, 1) : NULL, *wn = randv(r, C, 1);
    real *W = randv(r, (size_t)V * C, 0.5), *b = randv(r, V, 0.5);
    real *dwn = randv(r, C, 1), *dW = randv(r, (size_t)V * C, 1), *db = randv(r, V, 1);
    int *t = xmalloc(sizeof(int) * N), valid = 0;
    for (int i = 0; i < N; i++) {
        t[i] = gsl_rng_uniform(r) < 0.3 ? -100 : (int)gsl_rng_uniform_int(r, (unsigned long)V);
        valid += t[i] >= 0;
    }
    real inv = (real)(1.0 / valid), loss = (real)0.25;
    HeadLoss g = {.x = up(G, x, sizeof(real) * nc), .y = y ? up(G, y, sizeof(real) * nc) : NULL,
                  .norm_w = up(G, wn, sizeof(real) * C), .W = up(G, W, sizeof(real) * V * C),
                  .b = up(G, b, sizeof(real) * V), .inv_count = up(G, &inv, sizeof inv),
                  .targets = up(G, t, sizeof(int) * N), .loss = up(G, &loss, sizeof loss),
                  .dx = G->alloc(sizeof(real) * nc), .dnorm_w = up(G, dwn, sizeof(real) * C),
                  .dW = up(G, dW, sizeof(real) * V * C), .db = up(G, db, sizeof(real) * V),
                  .N = N, .C = C, .V = V, .eps = (real)1e-5};
    /* the CPU: each op of the unfused path (model.c) */
    real *res = xmalloc(sizeof(real) * nc), *f = xmalloc(sizeof(real) * nc), *rstd = xmalloc(sizeof(real) * N);
    real *logits = xmalloc(sizeof(real) * N * V), *dl = xmalloc(sizeof(real) * N * V);
    real *df = xmalloc(sizeof(real) * nc), *dx = xmalloc(sizeof(real) * nc);
    real *zero = xcalloc(nc, sizeof(real));
    CPU->residual_rmsnorm_forward(res, x, y ? y : zero, f, rstd, wn, N, C, g.eps);
    CPU->matmul(logits, f, W, N, V, C, 0, 1, 1, 0);
    CPU->add_bias(logits, b, N, V);
    CPU->crossentropy(&loss, dl, logits, t, &inv, N, V);
    CPU->matmul(df, dl, W, N, C, V, 0, 0, 1, 0);
    CPU->matmul(dW, dl, f, V, C, N, 1, 0, 1, 1);
    CPU->bias_backward(db, dl, N, V);
    rmsnorm_backward_write(CPU, dx, dwn, df, res, wn, rstd, N, C);
    printf("  head_loss_step [%s] N=%d C=%d V=%d%s\n", G->name, N, C, V, y ? "" : " (no y)");
    assert_true(G->head_loss_step(&g));
    cmp("    loss", &loss, g.loss, 1, bound);
    cmp("    dx", dx, g.dx, nc, bound);
    cmp("    dW", dW, g.dW, (size_t)V * C, bound);
    cmp("    db", db, g.db, V, bound);
    cmp("    dnorm_w", dwn, g.dnorm_w, C, bound);
    const void *bufs[] = {g.x, g.y, g.norm_w, g.W, g.b, g.inv_count, g.targets, g.loss, g.dx, g.dnorm_w, g.dW, g.db};
    for (size_t i = 0; i < NCASES(bufs); i++)
        if (bufs[i]) G->release((void *)bufs[i]);
    free(x), free(y), free(wn), free(W), free(b), free(dwn), free(dW), free(db), free(t);
    free(res), free(f), free(rstd), free(logits), free(dl), free(df), free(dx), free(zero);
}
static void test_head_loss(void **s) {
    (void)s;
    NEED_GPU();
    if (!GPU->head_loss_step) {
        printf("  head_loss_step switched off (PLAB_HEAD_STEP=0): nothing to compare\n");
        return;
    }
    const Ops *backends[2] = {GPU, GPU16};
    const double bounds[2] = {1e-5, 4e-3};
    for (int k = 0; k < 2; k++) {
        gsl_rng *r = test_rng(16);
        head_loss_case(backends[k], bounds[k], 1000, 128, 16, 1, r);
        head_loss_case(backends[k], bounds[k], 130, 32, 16, 1, r);
        head_loss_case(backends[k], bounds[k], 77, 128, 5, 1, r);
        head_loss_case(backends[k], bounds[k], 64, 128, 16, 0, r);
        head_loss_case(backends[k], bounds[k], 50, 36, 16, 1, r); /* C % 8 != 0: bf16's fallback */
        gsl_rng_free(r);
    }
}

static void test_optimizer_ops(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(7);
    long n = 777;
    OptHyper h = {.lr = (real)3e-3, .wd = (real)0.1, .beta1 = (real)0.9, .beta2 = (real)0.99,
                  .eps = (real)1e-8, .bc1 = (real)0.19, .bc2 = (real)0.0199};
    OptHyper *gh = up(GPU, &h, sizeof h);
    for (int wd_on = 0; wd_on < 2; wd_on++) {
        real *p = randv(r, n, 1), *g = randv(r, n, 1), *m = randv(r, n, 0.1), *v = randv(r, n, 0.1);
        for (long i = 0; i < n; i++) v[i] = v[i] * v[i];
        real *gp = up(GPU, p, sizeof(real) * n), *gg = up(GPU, g, sizeof(real) * n);
        real *gm = up(GPU, m, sizeof(real) * n), *gv = up(GPU, v, sizeof(real) * n);
        CPU->adamw(p, g, m, v, n, &h, wd_on), GPU->adamw(gp, gg, gm, gv, n, gh, wd_on);
        cmp("adamw p", p, gp, n, 1e-6);
        cmp("adamw m", m, gm, n, 1e-6);
        cmp("adamw v", v, gv, n, 1e-6);
        real *b[] = {gp, gg, gm, gv};
        for (int i = 0; i < 4; i++) GPU->release(b[i]);
        free(p), free(g), free(m), free(v);
    }
    for (int variant = 0; variant < 4; variant++) {
        int nesterov = variant & 1, ema = variant >> 1;
        real *u = randv(r, n, 1), *buf = randv(r, n, 1), *g = randv(r, n, 1), *p = randv(r, n, 1);
        real *gu = up(GPU, u, sizeof(real) * n), *gbuf = up(GPU, buf, sizeof(real) * n);
        real *gg = up(GPU, g, sizeof(real) * n), *gp = up(GPU, p, sizeof(real) * n);
        CPU->muon_momentum(u, buf, g, n, (real)0.95, nesterov, ema);
        GPU->muon_momentum(gu, gbuf, gg, n, (real)0.95, nesterov, ema);
        cmp("muon_momentum u", u, gu, n, 1e-6);
        cmp("muon_momentum buf", buf, gbuf, n, 1e-6);
        CPU->muon_apply(p, u, n, &h, (real)0.7), GPU->muon_apply(gp, gu, n, gh, (real)0.7);
        cmp("muon_apply", p, gp, n, 1e-6);
        real *b[] = {gu, gbuf, gg, gp};
        for (int i = 0; i < 4; i++) GPU->release(b[i]);
        free(u), free(buf), free(g), free(p);
    }
    /* Newton-Schulz through the table (matmuls, sumsq, scale_rsqrt), wide and tall */
    int shapes[2][2] = {{48, 130}, {130, 48}};
    for (int k = 0; k < 2; k++) {
        int R = shapes[k][0], Cc = shapes[k][1];
        size_t nn = (size_t)R * Cc, mn = (size_t)(R < Cc ? R : Cc);
        real *x = randv(r, nn, 1), *scr = xcalloc(2 * mn * mn + nn + 1, sizeof(real));
        real *gx = up(GPU, x, sizeof(real) * nn), *gscr = GPU->alloc(sizeof(real) * (2 * mn * mn + nn + 1));
        newton_schulz5(CPU, x, R, Cc, 5, scr);
        newton_schulz5(GPU, gx, R, Cc, 5, gscr);
        cmp("newton_schulz5 fp32", x, gx, nn, 1e-4);
        GPU->release(gx), GPU->release(gscr), free(x), free(scr);
    }
    GPU->release(gh);
    gsl_rng_free(r);
}

/* ---- attention cores ---------------------------------------------------------------- */

/* G: the fp32 table (scalar kernels, tight bounds) or the bf16 one (tensor cores for head
 * dims 8-32: bf16 operands, bounds from bf16's epsilon). The gradient buffers start
 * non-zero (they accumulate), smaller for bf16 so that they do not mask the increments. */
/* Inputs are read from a wider row: by default H*hd + 3 (unaligned rows); with AC_FUSED,
 * the model's [N, 3d] q|k|v rows (16-byte aligned: the kernels' vector loads), and the
 * gradients dq|dk|dv in one such buffer, as the model keeps them. With AC_WRITE, the
 * backward writes its gradients (AttnArgs.grads_write) over the non-zero values they
 * start from, on both sides: an element a kernel misses shows. AC_BIAS adds the column
 * sums of dq|dk|dv into a bias gradient (AttnArgs.dbias); rope turns q, k, r on the way
 * in and the gradients back (AttnArgs.rope_rot). */
enum { AC_FUSED = 1, AC_WRITE = 2, AC_BIAS = 4 };
static void attention_case_rope(const Ops *G, int B, int T, int H, int hd, int window, int parallax,
                                int flags, int rope, gsl_rng *r) {
    const int bf = G == GPU16, fused = flags & AC_FUSED, write = flags & AC_WRITE;
    const double fb = bf ? 3 * BF16_EPS : 1e-5, bb = bf ? 6 * BF16_EPS : 1e-5, gs = bf ? 0.1 : 1;
    const int HD = H * hd, ldi = fused ? 3 * HD : HD + 3, ldo = HD;
    size_t ni = (size_t)B * T * ldi, no = (size_t)B * T * ldo, ns = (size_t)B * H * T;
    size_t ng = fused ? ni : no; /* each gradient's buffer (one [N, 3d] for all three when fused) */
    real *q = randv(r, ni, 1), *k = randv(r, ni, 1), *v = randv(r, ni, 1), *rr = randv(r, ni, 0.5);
    real *o = randv(r, no, 1), *ob = randv(r, no, 1), *lse = randv(r, ns, 1), *tb = randv(r, ns, 1);
    real *dout = randv(r, no, 1), *dq = randv(r, ng, gs), *dr = randv(r, no, gs);
    real *dk = fused ? dq + HD : randv(r, no, gs), *dv = fused ? dq + 2 * HD : randv(r, no, gs);
    real *db = flags & AC_BIAS ? randv(r, 3 * (size_t)HD, 1) : NULL;
    AttnArgs c = {.B = B, .T = T, .H = H, .hd = hd, .ld_in = ldi, .ld_out = ldo,
                  .ld_dqkv = fused ? 3 * HD : 0, .scale = (real)(1.0 / sqrt((double)hd)),
                  .window = window, .q = q, .k = k, .v = v,
                  .r = parallax ? rr : NULL, .o = o, .obar = parallax ? ob : NULL, .lse = lse,
                  .tbar = parallax ? tb : NULL, .dout = dout, .dq = dq, .dk = dk, .dv = dv,
                  .dr = parallax ? dr : NULL, .grads_write = write, .rope_rot = rope,
                  .rope_r = 1, .rope_base = 10000, .dbias = db};
    AttnArgs g = c;
    g.q = up(GPU, q, sizeof(real) * ni), g.k = up(GPU, k, sizeof(real) * ni);
    g.v = up(GPU, v, sizeof(real) * ni), g.r = parallax ? up(GPU, rr, sizeof(real) * ni) : NULL;
    g.o = up(GPU, o, sizeof(real) * no), g.obar = parallax ? up(GPU, ob, sizeof(real) * no) : NULL;
    g.lse = up(GPU, lse, sizeof(real) * ns), g.tbar = parallax ? up(GPU, tb, sizeof(real) * ns) : NULL;
    g.dout = up(GPU, dout, sizeof(real) * no), g.dq = up(GPU, dq, sizeof(real) * ng);
    g.dk = fused ? g.dq + HD : up(GPU, dk, sizeof(real) * no);
    g.dv = fused ? g.dq + 2 * HD : up(GPU, dv, sizeof(real) * no);
    g.dr = parallax ? up(GPU, dr, sizeof(real) * no) : NULL;
    g.dbias = db ? up(GPU, db, sizeof(real) * 3 * HD) : NULL;
    printf("  %s B=%d T=%d H=%d hd=%d window=%d ld_in=%d%s rope_rot=%d%s [%s]\n",
           parallax ? "parallax" : "softmax", B, T, H, hd, window, ldi,
           write ? " gradients written" : "", rope, db ? " bias sums" : "", G->name);
    CPU->attention_forward(&c), G->attention_forward(&g);
    if (rope) { /* q, k, r turned in place, in fp32 */
        cmp("q (turned)", q, g.q, ni, 1e-5), cmp("k (turned)", k, g.k, ni, 1e-5);
        if (parallax) cmp("r (turned)", rr, g.r, ni, 1e-5);
    }
    cmp("o", o, g.o, no, fb);
    cmp("lse", lse, g.lse, ns, fb);
    if (parallax) cmp("obar", ob, g.obar, no, fb), cmp("tbar", tb, g.tbar, ns, bb);
    CPU->attention_backward(&c), G->attention_backward(&g);
    const char *how = write ? "written" : "accumulated";
    char what[64];
    if (fused) {
        snprintf(what, sizeof what, "dq|dk|dv (%s)", how);
        cmp(what, dq, g.dq, ng, bb);
    } else {
        const real *cg[3] = {dq, dk, dv}, *gg[3] = {g.dq, g.dk, g.dv};
        for (int i = 0; i < 3; i++) {
            snprintf(what, sizeof what, "d%c (%s)", "qkv"[i], how);
            cmp(what, cg[i], gg[i], no, bb);
        }
    }
    if (parallax) snprintf(what, sizeof what, "dr (%s)", how), cmp(what, dr, g.dr, no, bb);
    if (db) cmp("bias sums", db, g.dbias, 3 * (size_t)HD, bb);
    const void *b[] = {g.q, g.k, g.v, g.r, g.o, g.obar, g.lse, g.tbar, g.dout, g.dq, g.dr, g.dbias,
                       fused ? NULL : g.dk, fused ? NULL : g.dv};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        if (b[i]) GPU->release((void *)b[i]);
    free(q), free(k), free(v), free(rr), free(o), free(ob), free(lse), free(tb), free(dout);
    free(dq), free(dr), free(db);
    if (!fused) free(dk), free(dv);
}
static void attention_case_ld(const Ops *G, int B, int T, int H, int hd, int window, int parallax,
                              int fused, int write, gsl_rng *r) {
    attention_case_rope(G, B, T, H, hd, window, parallax, (fused ? AC_FUSED : 0) | (write ? AC_WRITE : 0),
                        0, r);
}
static void attention_case(const Ops *G, int B, int T, int H, int hd, int window, int parallax,
                           gsl_rng *r) {
    attention_case_ld(G, B, T, H, hd, window, parallax, 0, 0, r);
}

static void test_attention(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(8);
    for (int px = 0; px < 2; px++) {
        attention_case(GPU, 2, 37, 3, 8, 0, px, r);    /* one tile, ragged */
        attention_case(GPU, 2, 300, 2, 8, 0, px, r);   /* several query blocks and key tiles */
        attention_case(GPU, 1, 200, 2, 16, 7, px, r);  /* sliding window */
        attention_case(GPU, 1, 150, 2, 64, 0, px, r);  /* wide heads: smaller key tiles */
        attention_case(GPU, 2, 130, 16, 8, 129, px, r); /* window wider than needed */
        attention_case_ld(GPU, 2, 37, 3, 8, 5, px, 0, 1, r); /* gradients written, not added */
        attention_case_rope(GPU, 2, 37, 3, 8, 0, px, AC_FUSED | AC_WRITE | AC_BIAS, 8, r); /* RoPE, bias sums */
    }
    gsl_rng_free(r);
}

/* the bf16 table's tensor-core kernels (kernels/cuda/attention_tc_cuda.cu) */
static void test_attention_tensor_cores(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(9);
    for (int px = 0; px < 2; px++) {
        attention_case(GPU16, 2, 37, 3, 8, 0, px, r);    /* one block, ragged rows */
        attention_case(GPU16, 2, 300, 2, 8, 0, px, r);   /* several blocks and chunks */
        attention_case(GPU16, 1, 200, 2, 16, 7, px, r);  /* window inside one 16-key tile */
        attention_case(GPU16, 1, 100, 2, 8, 20, px, r);  /* one block, window across tiles */
        attention_case(GPU16, 1, 150, 2, 32, 40, px, r); /* window across tiles */
        attention_case_ld(GPU16, 2, 128, 16, 8, 0, px, 1, 1, r); /* MAD's shape, fused rows, as the model */
        attention_case_ld(GPU16, 1, 300, 2, 16, 0, px, 1, 0, r); /* fused rows, several chunks */
        attention_case_ld(GPU16, 1, 200, 2, 32, 0, px, 1, 0, r); /* fused rows, 64-row chunks */
        attention_case_ld(GPU16, 2, 37, 3, 8, 5, px, 0, 1, r);   /* written, ragged, a window */
        attention_case(GPU16, 1, 70, 2, 64, 0, px, r);   /* no tensor-core kernel: scalar */
        /* gradients turned back by RoPE (AttnArgs.rope_rot) and bias sums (dbias): inside
         * the kernels at rot = hd = 8, else by passes after them */
        const int all = AC_FUSED | AC_WRITE | AC_BIAS;
        attention_case_rope(GPU16, 2, 128, 16, 8, 0, px, all, 8, r);   /* MAD's shape, as the model */
        attention_case_rope(GPU16, 2, 37, 3, 8, 5, px, AC_WRITE, 8, r); /* ragged, a window */
        attention_case_rope(GPU16, 1, 300, 2, 8, 0, px, all, 8, r);    /* several query blocks */
        attention_case_rope(GPU16, 1, 100, 2, 8, 0, px, all, 4, r);    /* rot < hd: passes after */
        attention_case_rope(GPU16, 1, 90, 2, 16, 0, px, all, 16, r);   /* head dim 16: passes after */
        attention_case_rope(GPU16, 2, 50, 4, 8, 0, px, all, 0, r);     /* bias sums, no RoPE */
    }
    gsl_rng_free(r);
}

/* The bf16 attention block (Ops.attn_block_*, kernels/cuda/attn_block_cuda.cu: bf16 rows
 * for q, k, v, r, o and their gradients) against the CPU composing the same function from
 * its ops in fp32: y = core(x Wqkv^T + bqkv, r) Wo^T + bo with Parallax's probe
 * r = RoPE(RMSNorm_head(x Wr^T) r_norm), then dx (written) and every weight and bias
 * gradient (added to random values). */
static void attn_block_case(int B, int T, int H, int window, int parallax, int bias, int rope,
                            gsl_rng *r) {
    const int hd = 8, d = H * hd, N = B * T;
    const size_t nd = (size_t)N * d, n3 = 3 * nd, dd = (size_t)d * d, ns = (size_t)B * H * T;
    const size_t np = 5 * dd + 4 * (size_t)d + hd;
    const real eps = (real)1e-5;
    /* parameters as the model lays them out: Wq Wk Wv Wo bq bk bv bo Wr r_norm */
    real *par = randv(r, np, 1 / sqrt((double)d)), *x = randv(r, nd, 1), *dy = randv(r, nd, 1);
    real *gpar = randv(r, np, 0.1);
    for (int c = 0; c < hd; c++) par[np - hd + c] += 1; /* r_norm near 1 */
    AttnBlock k = {.Wqkv = par, .Wo = par + 3 * dd, .bqkv = bias ? par + 4 * dd : NULL,
                   .bo = bias ? par + 4 * dd + 3 * d : NULL, .Wr = parallax ? par + 4 * dd + 4 * d : NULL,
                   .r_norm = parallax ? par + 5 * dd + 4 * d : NULL, .eps = eps};
    AttnArgs c = {.B = B, .T = T, .H = H, .hd = hd, .ld_in = 3 * d, .ld_out = d, .ld_r = d, .ld_dqkv = 3 * d,
                  .scale = (real)(1.0 / sqrt((double)hd)), .window = window,
                  .rope_rot = rope, .rope_r = 1, .r_roped = 1, .rope_base = 10000};
    k.core = c;
    size_t bytes = GPU16->attn_block_save_bytes(&k);
    assert_true(bytes > 0);
    printf("  %s B=%d T=%d H=%d window=%d%s rope_rot=%d\n", parallax ? "parallax" : "softmax", B, T,
           H, window, bias ? " biases" : "", rope);
    /* the CPU: the same function from the table's ops */
    real *qkv = malloc(sizeof(real) * n3), *o = malloc(sizeof(real) * nd), *y = malloc(sizeof(real) * nd);
    real *obar = malloc(sizeof(real) * nd), *lse = malloc(sizeof(real) * ns), *tbar = malloc(sizeof(real) * ns);
    real *dqkv = malloc(sizeof(real) * n3), *dob = malloc(sizeof(real) * nd), *dx = malloc(sizeof(real) * nd);
    real *rl = malloc(sizeof(real) * nd), *rn = malloc(sizeof(real) * nd), *rsr = malloc(sizeof(real) * ns);
    real *dr = malloc(sizeof(real) * nd), *dl = malloc(sizeof(real) * nd), *gc = host_copy(gpar, np);
    real *cW = gc, *cWo = gc + 3 * dd, *cb = bias ? gc + 4 * dd : NULL, *cbo = bias ? cb + 3 * d : NULL;
    real *cWr = gc + 4 * dd + 4 * d, *crn = gc + 5 * dd + 4 * d;
    CPU->matmul(qkv, x, k.Wqkv, N, 3 * d, d, 0, 1, 1, 0);
    if (bias) CPU->add_bias(qkv, k.bqkv, N, 3 * d);
    c.q = qkv, c.k = qkv + d, c.v = qkv + 2 * d, c.o = o, c.lse = lse;
    if (parallax) {
        CPU->matmul(rl, x, k.Wr, N, d, d, 0, 1, 1, 0);
        CPU->rmsnorm_rope_forward(rn, rsr, rl, k.r_norm, N, T, H, hd, rope, 10000, eps);
        c.r = rn, c.obar = obar, c.tbar = tbar;
    }
    CPU->attention_forward(&c);
    CPU->matmul(y, o, k.Wo, N, d, d, 0, 1, 1, 0);
    if (bias) CPU->add_bias(y, k.bo, N, d);
    CPU->matmul(dob, dy, k.Wo, N, d, d, 0, 0, 1, 0);
    CPU->matmul(cWo, dy, o, d, d, N, 1, 0, 1, 1);
    if (bias) CPU->bias_backward(cbo, dy, N, d);
    c.dout = dob, c.dq = dqkv, c.dk = dqkv + d, c.dv = dqkv + 2 * d, c.dr = parallax ? dr : NULL;
    c.grads_write = 1, c.dbias = cb;
    CPU->attention_backward(&c);
    CPU->matmul(dx, dqkv, k.Wqkv, N, d, 3 * d, 0, 0, 1, 0);
    CPU->matmul(cW, dqkv, x, 3 * d, d, N, 1, 0, 1, 1);
    if (parallax) {
        rmsnorm_backward_write(CPU, dl, crn, dr, rl, k.r_norm, rsr, N * H, hd);
        CPU->matmul(dx, dl, k.Wr, N, d, d, 0, 0, 1, 1);
        CPU->matmul(cWr, dl, x, d, d, N, 1, 0, 1, 1);
    }
    /* the GPU block */
    real *gp = up(GPU16, par, sizeof(real) * np), *gg = up(GPU16, gpar, sizeof(real) * np);
    real *gx = up(GPU16, x, sizeof(real) * nd), *gdy = up(GPU16, dy, sizeof(real) * nd);
    real *gy = GPU16->alloc(sizeof(real) * nd), *gdx = up(GPU16, dy, sizeof(real) * nd);
    AttnBlock g = {.Wqkv = gp, .Wo = gp + 3 * dd, .bqkv = bias ? gp + 4 * dd : NULL,
                   .bo = bias ? gp + 4 * dd + 3 * d : NULL, .Wr = parallax ? gp + 4 * dd + 4 * d : NULL,
                   .r_norm = parallax ? gp + 5 * dd + 4 * d : NULL, .dWqkv = gg, .dWo = gg + 3 * dd,
                   .dbqkv = bias ? gg + 4 * dd : NULL, .dbo = bias ? gg + 4 * dd + 3 * d : NULL,
                   .dWr = parallax ? gg + 4 * dd + 4 * d : NULL,
                   .dr_norm = parallax ? gg + 5 * dd + 4 * d : NULL, .eps = eps, .core = k.core};
    g.core.lse = GPU16->alloc(sizeof(real) * ns);
    if (parallax) g.core.tbar = GPU16->alloc(sizeof(real) * ns);
    void *save = GPU16->alloc(bytes);
    GPU16->attn_block_forward(gy, gx, &g, save);
    GPU16->attn_block_backward(gdx, gdy, &g, save);
    const double fb = 4 * BF16_EPS, bb = 8 * BF16_EPS;
    cmp("y", y, gy, nd, fb);
    cmp("lse", lse, g.core.lse, ns, fb);
    if (parallax) cmp("tbar", tbar, g.core.tbar, ns, bb);
    cmp("dx (written)", dx, gdx, nd, bb);
    cmp("dWqkv (added)", cW, gg, 3 * dd, bb);
    cmp("dWo (added)", cWo, gg + 3 * dd, dd, bb);
    if (bias) cmp("dbqkv, dbo (added)", cb, gg + 4 * dd, 4 * (size_t)d, bb);
    if (parallax) cmp("dWr (added)", cWr, gg + 4 * dd + 4 * d, dd, bb), cmp("dr_norm (added)", crn, gg + 5 * dd + 4 * d, hd, bb);
    void *gb2[] = {gp, gg, gx, gdy, gy, gdx, g.core.lse, g.core.tbar, save};
    for (size_t i = 0; i < sizeof gb2 / sizeof *gb2; i++)
        if (gb2[i]) GPU16->release(gb2[i]);
    real *hb[] = {par, x, dy, gpar, qkv, o, y, obar, lse, tbar, dqkv, dob, dx, rl, rn, rsr, dr, dl, gc};
    for (size_t i = 0; i < sizeof hb / sizeof *hb; i++) free(hb[i]);
}

static void test_attn_block(void **s) {
    (void)s;
    NEED_GPU();
    if (!GPU16->attn_block_forward) {
        printf("  this CUDA build has no bf16 attention block: nothing to compare\n");
        return;
    }
    AttnBlock wide = {.core = {.B = 1, .T = 8, .H = 2, .hd = 16}};
    assert_int_equal(GPU16->attn_block_save_bytes(&wide), 0); /* head dim 16: no block */
    gsl_rng *r = test_rng(13);
    for (int px = 0; px < 2; px++) {
        attn_block_case(2, 128, 16, 0, px, 1, 8, r); /* MAD's shape, as the model runs it */
        attn_block_case(2, 37, 3, 5, px, 0, 0, r);   /* ragged, a window, no biases, no RoPE */
        attn_block_case(1, 300, 2, 0, px, 1, 8, r);  /* several query blocks */
        attn_block_case(2, 45, 3, 0, px, 1, 8, r);   /* ragged T <= 128, no window: softmax's short kernels */
        attn_block_case(1, 9, 2, 0, px, 0, 0, r);    /* one partial tile, no biases, no RoPE */
    }
    gsl_rng_free(r);
}

static const char *model_cases[] = {
    "model.mixer=softmax",
    "model.mixer=softmax mixer.qk_norm=true mixer.window=9 mixer.rotary_dim=4 optim=muon",
    "model.mixer=parallax",
    "model.mixer=parallax mixer.probe_gate=true mixer.probe_rope=false optim=muon",
    "model.mixer=parallax mixer.probe_norm=false mixer.qkv_bias=false model.init=normal",
    "task=compression model.mixer=softmax", /* the autoencoder backbone (GELU decoder) */
    "model.mixer=parallax model.d_model=128 model.heads=16", /* MAD's width: the fused bf16 MLP */
};

static void test_models_fp32(void **s) {
    (void)s;
    NEED_GPU();
    run_model_cases(model_cases, NCASES(model_cases), GPU, 1e-4);
}

/* bf16 operands in every matmul, and the attention block and the MLP store their
 * activations and gradients in bf16 (as autocast does): each stored tensor rounds once,
 * and layer 0's gradients pass through about eight such roundings a layer, two layers
 * deep. Worst seen: Parallax's r_norm gradient, 4.1e-2 under the emulation (exact
 * matmuls); a sign error in the bf16 RoPE gives 0.23. */
static void test_models_bf16(void **s) {
    (void)s;
    NEED_GPU();
    run_model_cases(model_cases, NCASES(model_cases), GPU16, 16 * BF16_EPS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),          cmocka_unit_test(test_linear_fused),
        cmocka_unit_test(test_mlp_bf16),        cmocka_unit_test(test_attn_block),
        cmocka_unit_test(test_vector_ops),
        cmocka_unit_test(test_rmsnorm),         cmocka_unit_test(test_rmsnorm_rope),
        cmocka_unit_test(test_embedding_swiglu_gate),
        cmocka_unit_test(test_rope),            cmocka_unit_test(test_conv),            cmocka_unit_test(test_crossentropy_predict),
        cmocka_unit_test(test_head_loss),
        cmocka_unit_test(test_optimizer_ops),   cmocka_unit_test(test_attention),        cmocka_unit_test(test_attention_tensor_cores),
        cmocka_unit_test(test_models_fp32),     cmocka_unit_test(test_models_bf16),
    };
    return cmocka_run_group_tests(tests, cuda_setup, NULL);
}
