/* CPU-vs-CUDA parity of the scan op group (kernels/ops_scan.h): softplus with
 * and without a bias, the Mamba-1 selective scan (baselines.md §4) and the
 * Mamba-2 SSD (§5), the forward output and every gradient (the buffers start
 * non-zero: backward accumulates), then whole Mamba and Mamba-2 models in fp32
 * and bf16. The GPU runs the SSD token recurrence for every `chunk`; with
 * chunk > 0 the CPU runs the chunked form, so those cases also check that the
 * two exact algorithms agree to rounding. Shapes cover T not a multiple of the
 * backward's chunk of tokens (16 / 8 / 4 for N <= 32 / 64 / 128), N below,
 * at and between powers of two, channel tiles cut short, and batches large
 * enough that one block walks several channel tiles. Without a GPU every test
 * is skipped. */
#include "cudautil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_scan.h"

static real *univ(gsl_rng *r, size_t n, double lo, double hi) {
    real *x = xmalloc(sizeof(real) * n);
    for (size_t i = 0; i < n; i++) x[i] = (real)(lo + (hi - lo) * gsl_rng_uniform(r));
    return x;
}

static void release_all(void **b, int n) {
    for (int i = 0; i < n; i++)
        if (b[i]) GPU->release(b[i]);
}

/* ---- softplus ------------------------------------------------------------------------ */

/* mode 0: no bias; 1: bias and dbias; 2: bias, dbias NULL */
static void softplus_case(int N, int C, int mode, gsl_rng *r) {
    size_t n = (size_t)N * C;
    real *x = randv(r, n, 10), *b = mode ? randv(r, C, 3) : NULL; /* some u beyond 20 */
    real *out = xcalloc(n, sizeof(real)), *dout = randv(r, n, 1), *dx = randv(r, n, 1);
    real *db = mode == 1 ? randv(r, C, 1) : NULL;
    real *gx = up(GPU, x, sizeof(real) * n), *gb = b ? up(GPU, b, sizeof(real) * C) : NULL;
    real *gout = GPU->alloc(sizeof(real) * n), *gdout = up(GPU, dout, sizeof(real) * n);
    real *gdx = up(GPU, dx, sizeof(real) * n), *gdb = db ? up(GPU, db, sizeof(real) * C) : NULL;
    printf("  softplus N=%d C=%d %s\n", N, C, mode == 0 ? "no bias" : mode == 1 ? "bias" : "bias, no dbias");
    CPU->scan->softplus_forward(out, x, b, N, C);
    GPU->scan->softplus_forward(gout, gx, gb, N, C);
    cmp("out", out, gout, n, 1e-6);
    CPU->scan->softplus_backward(dx, db, dout, x, b, N, C);
    GPU->scan->softplus_backward(gdx, gdb, gdout, gx, gb, N, C);
    cmp("dx (accumulated)", dx, gdx, n, 1e-6);
    if (db) cmp("dbias (accumulated)", db, gdb, C, 1e-5);
    void *g[] = {gx, gb, gout, gdout, gdx, gdb};
    release_all(g, 6);
    free(x), free(b), free(out), free(dout), free(dx), free(db);
}

static void test_softplus(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(31);
    for (int mode = 0; mode < 3; mode++) softplus_case(301, 45, mode, r);
    softplus_case(3000, 4, 1, r); /* few columns, many row chunks */
    gsl_rng_free(r);
}

/* ---- Mamba-1 selective scan ------------------------------------------------------------ */

static void sscan_case(int B, int T, int Dc, int N, double bound, gsl_rng *r) {
    size_t nx = (size_t)B * T * Dc, nb = (size_t)B * T * N, na = (size_t)Dc * N;
    real *x = randv(r, nx, 1), *dl = univ(r, nx, 0.02, 0.6), *Al = randv(r, na, 0.5);
    real *Bm = randv(r, nb, 1), *Cm = randv(r, nb, 1), *D = randv(r, Dc, 1), *dy = randv(r, nx, 1);
    real *y = xcalloc(nx, sizeof(real));
    /* gradients start non-zero: backward accumulates */
    real *dx = randv(r, nx, 1), *ddl = randv(r, nx, 1), *dAl = randv(r, na, 1);
    real *dB = randv(r, nb, 1), *dC = randv(r, nb, 1), *dD = randv(r, Dc, 1);
    real *gx = up(GPU, x, sizeof(real) * nx), *gdl = up(GPU, dl, sizeof(real) * nx);
    real *gAl = up(GPU, Al, sizeof(real) * na), *gBm = up(GPU, Bm, sizeof(real) * nb);
    real *gCm = up(GPU, Cm, sizeof(real) * nb), *gD = up(GPU, D, sizeof(real) * Dc);
    real *gdy = up(GPU, dy, sizeof(real) * nx), *gy = GPU->alloc(sizeof(real) * nx);
    real *gdx = up(GPU, dx, sizeof(real) * nx), *gddl = up(GPU, ddl, sizeof(real) * nx);
    real *gdAl = up(GPU, dAl, sizeof(real) * na), *gdB = up(GPU, dB, sizeof(real) * nb);
    real *gdC = up(GPU, dC, sizeof(real) * nb), *gdD = up(GPU, dD, sizeof(real) * Dc);
    printf("  selective scan B=%d T=%d Dc=%d N=%d\n", B, T, Dc, N);
    CPU->scan->selective_scan_forward(y, x, dl, Al, Bm, Cm, D, B, T, Dc, N);
    GPU->scan->selective_scan_forward(gy, gx, gdl, gAl, gBm, gCm, gD, B, T, Dc, N);
    cmp("y", y, gy, nx, bound);
    CPU->scan->selective_scan_backward(dx, ddl, dAl, dB, dC, dD, dy, x, dl, Al, Bm, Cm, D, B, T, Dc, N);
    GPU->scan->selective_scan_backward(gdx, gddl, gdAl, gdB, gdC, gdD, gdy, gx, gdl, gAl, gBm, gCm,
                                       gD, B, T, Dc, N);
    cmp("dx (accumulated)", dx, gdx, nx, bound);
    cmp("ddelta (accumulated)", ddl, gddl, nx, bound);
    cmp("dA_log (accumulated)", dAl, gdAl, na, bound);
    cmp("dBm (accumulated)", dB, gdB, nb, bound);
    cmp("dCm (accumulated)", dC, gdC, nb, bound);
    cmp("dD (accumulated)", dD, gdD, Dc, bound);
    void *g[] = {gx, gdl, gAl, gBm, gCm, gD, gdy, gy, gdx, gddl, gdAl, gdB, gdC, gdD};
    release_all(g, 14);
    real *h[] = {x, dl, Al, Bm, Cm, D, dy, y, dx, ddl, dAl, dB, dC, dD};
    for (int i = 0; i < 14; i++) free(h[i]);
}

static void test_selective_scan(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(32);
    sscan_case(2, 37, 24, 16, 2e-5, r);   /* 16 lanes a channel; T = 16 + 16 + 5 */
    sscan_case(3, 50, 40, 4, 2e-5, r);    /* MAD's N; 64 channels a block, 40 used */
    sscan_case(2, 21, 12, 5, 2e-5, r);    /* N between powers of two (8 lanes, 3 idle) */
    sscan_case(2, 33, 20, 64, 2e-5, r);   /* 2 states a lane, 8-token chunks: 8 + ... + 1 */
    sscan_case(1, 19, 6, 100, 2e-5, r);   /* 4 states a lane, 4-token chunks */
    sscan_case(64, 20, 256, 16, 2e-5, r); /* large batch: a block walks 2 channel tiles */
    gsl_rng_free(r);
}

/* ---- Mamba-2 SSD ------------------------------------------------------------------------ */

static void ssd_case(int B, int T, int H, int P, int G, int N, int chunk, double bound, gsl_rng *r) {
    size_t nx = (size_t)B * T * H * P, nt = (size_t)B * T * H, nb = (size_t)B * T * G * N;
    real *x = randv(r, nx, 1), *dt = univ(r, nt, 0.05, 0.9), *Al = randv(r, H, 0.5);
    real *Bm = randv(r, nb, 1), *Cm = randv(r, nb, 1), *D = randv(r, H, 1), *dy = randv(r, nx, 1);
    real *y = xcalloc(nx, sizeof(real));
    real *dx = randv(r, nx, 1), *ddt = randv(r, nt, 1), *dAl = randv(r, H, 1);
    real *dB = randv(r, nb, 1), *dC = randv(r, nb, 1), *dD = randv(r, H, 1);
    SsdArgs c = {.B = B, .T = T, .H = H, .P = P, .G = G, .N = N, .chunk = chunk, .x = x, .dt = dt,
                 .A_log = Al, .Bm = Bm, .Cm = Cm, .D = D, .y = y, .dy = dy, .dx = dx, .ddt = ddt,
                 .dA_log = dAl, .dBm = dB, .dCm = dC, .dD = dD};
    SsdArgs g = c;
    g.x = up(GPU, x, sizeof(real) * nx), g.dt = up(GPU, dt, sizeof(real) * nt);
    g.A_log = up(GPU, Al, sizeof(real) * H), g.Bm = up(GPU, Bm, sizeof(real) * nb);
    g.Cm = up(GPU, Cm, sizeof(real) * nb), g.D = up(GPU, D, sizeof(real) * H);
    g.y = GPU->alloc(sizeof(real) * nx), g.dy = up(GPU, dy, sizeof(real) * nx);
    g.dx = up(GPU, dx, sizeof(real) * nx), g.ddt = up(GPU, ddt, sizeof(real) * nt);
    g.dA_log = up(GPU, dAl, sizeof(real) * H), g.dBm = up(GPU, dB, sizeof(real) * nb);
    g.dCm = up(GPU, dC, sizeof(real) * nb), g.dD = up(GPU, dD, sizeof(real) * H);
    printf("  ssd B=%d T=%d H=%d P=%d G=%d N=%d chunk=%d\n", B, T, H, P, G, N, chunk);
    CPU->scan->ssd_forward(&c), GPU->scan->ssd_forward(&g);
    cmp("y", y, g.y, nx, bound);
    CPU->scan->ssd_backward(&c), GPU->scan->ssd_backward(&g);
    cmp("dx (accumulated)", dx, g.dx, nx, bound);
    cmp("ddt (accumulated)", ddt, g.ddt, nt, bound);
    cmp("dA_log (accumulated)", dAl, g.dA_log, H, bound);
    cmp("dBm (accumulated)", dB, g.dBm, nb, bound);
    cmp("dCm (accumulated)", dC, g.dCm, nb, bound);
    cmp("dD (accumulated)", dD, g.dD, H, bound);
    void *gb[] = {(void *)g.x, (void *)g.dt, (void *)g.A_log, (void *)g.Bm, (void *)g.Cm,
                  (void *)g.D, g.y, (void *)g.dy, g.dx, g.ddt, g.dA_log, g.dBm, g.dCm, g.dD};
    release_all(gb, 14);
    real *h[] = {x, dt, Al, Bm, Cm, D, dy, y, dx, ddt, dAl, dB, dC, dD};
    for (int i = 0; i < 14; i++) free(h[i]);
}

static void test_ssd(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(33);
    for (int chunk = 0; chunk <= 16; chunk += 16) {
        double bound = chunk ? 1e-4 : 2e-5; /* chunked CPU form vs the GPU's recurrence */
        ssd_case(2, 37, 4, 8, 1, 16, chunk, bound, r);   /* G = 1, T ragged */
        ssd_case(2, 37, 4, 8, 2, 16, chunk, bound, r);   /* G = 2 */
        ssd_case(2, 45, 6, 4, 2, 4, chunk, bound, r);    /* 12 channels a group in a 64-channel tile */
        ssd_case(1, 50, 2, 16, 2, 64, chunk, bound, r);  /* N 64: 2 states a lane */
        ssd_case(2, 29, 3, 5, 1, 24, chunk, bound, r);   /* odd P and N (32 lanes, 8 idle) */
        ssd_case(32, 24, 4, 64, 1, 64, chunk, bound, r); /* MAD's head: blocks walk 2 tiles */
        ssd_case(64, 20, 8, 16, 2, 32, chunk, bound, r); /* G = 2 with several tiles a block */
        ssd_case(2, 70, 2, 64, 1, 64, chunk, bound, r);  /* MAD's head past two 32-token restarts */
    }
    gsl_rng_free(r);
}

/* ---- whole models ----------------------------------------------------------------------- */

static const char *model_cases[] = {
    "model.mixer=mamba",
    "model.mixer=mamba mamba.d_state=16 mamba.d_conv=3 mamba.dt_rank=3 optim=muon",
    "model.mixer=mamba2", /* d_inner 64 = one head of P 64, N 64 */
    "model.mixer=mamba2 mamba2.headdim=16 mamba2.ngroups=2 mamba2.d_state=16 mamba2.chunk=8",
};

static void test_models_fp32(void **s) {
    (void)s;
    NEED_GPU();
    run_model_cases(model_cases, NCASES(model_cases), GPU, 1e-4);
}

/* bf16 operands in every matmul (the scans stay fp32) */
static void test_models_bf16(void **s) {
    (void)s;
    NEED_GPU();
    run_model_cases(model_cases, NCASES(model_cases), GPU16, 8 * BF16_EPS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softplus),    cmocka_unit_test(test_selective_scan),
        cmocka_unit_test(test_ssd),         cmocka_unit_test(test_models_fp32),
        cmocka_unit_test(test_models_bf16),
    };
    return cmocka_run_group_tests(tests, cuda_setup, NULL);
}
