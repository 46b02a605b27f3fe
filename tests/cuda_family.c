/* CPU-vs-CUDA parity of the attention-family op group (kernels/ops_family.h:
 * CPU kernels/cpu/family_cpu.c, CUDA kernels/cuda/family_cuda.cu): the
 * quadratic core forward (o, rho, lse, den, cg_resid) and backward (dq, dk, dv,
 * dr, dlog_bw, all accumulated into non-zero buffers) over a grid of the axes
 * (probe x affine x (1+eta) x bandwidth fixed/learned/inf x window, with the
 * normalisation, the ridge-gradient mode and the preconditioner rotating
 * through the grid), linear attention by its recurrence, the feature maps, and
 * whole models of every named family member in fp32 and bf16.
 * Without a usable GPU every test is skipped (tests/cudautil.h). */
#include "cudautil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_family.h"

/* Bounds. Without a solve the GPU computes the CPU's sums in another order:
 * a few float eps, as the attention cores (1e-5). With a solve both sides run
 * float CG to the stopping rule |r|^2 <= 1e-12 |r0|^2 (relative residual
 * ~1e-6) along their own rounding trajectories: rho differs by about
 * cond(Sigma) * 1e-6 and LLA's output carries that times 1/delta = 1 + eta,
 * eta ~ |q - kbar|^2 / lambda, which grows with the head dim. Measured on the
 * CUDA backend emulated on the CPU, lanes and butterfly order included (no GPU
 * in the session that wrote this): within 0.1 of these bounds on the grid, but
 * 0.56 of B_SOLVE on LLA with hd 64/128, hence B_SOLVE_WIDE there (the GPU's
 * fused multiply-adds add rounding of about the same size).
 * dlog_bw sums B*T row terms of both signs: 10x the case's bound. */
#define B_PLAIN 1e-5
#define B_SOLVE 1e-4
#define B_SOLVE_WIDE 5e-4

enum { BW_FIXED, BW_LEARNED, BW_INF };

typedef struct {
    int B, T, H, hd, window;
    int probe, affine, boundary, normalize;
    int bw;                /* BW_* */
    int precond, frozen;   /* Jacobi preconditioner; ridge_grad=frozen */
    int ridge_hook;        /* set FamArgs.ridge_lse (the frozen-ridge test model) */
    int cg_iters;          /* small: a truncated solve, whose cg_resid is compared */
    double ridge, bound;
} Case;

/* cg_resid: a truncated solve's residual is a smooth function of the inputs and
 * is compared like the other outputs; a converged one is rounding noise near
 * the stopping rule (1e-6), so both sides must just be below 1e-4 */
static void check_resid(const Case *c, const real *cpu, const real *gdev, size_t n) {
    if (c->probe != FAM_PROBE_SOLVED) {
        cmp("cg_resid (0: no solve)", cpu, gdev, n, 0);
        return;
    }
    if (c->cg_iters < c->hd) {
        cmp("cg_resid (truncated solve)", cpu, gdev, n, c->bound);
        return;
    }
    real *g = down(GPU, gdev, n);
    double mc = 0, mg = 0;
    for (size_t i = 0; i < n; i++) {
        mc = fabs((double)cpu[i]) > mc || isnan(cpu[i]) ? fabs((double)cpu[i]) : mc;
        mg = fabs((double)g[i]) > mg || isnan(g[i]) ? fabs((double)g[i]) : mg;
    }
    printf("    %-26s max cpu %.2e  max cuda %.2e  (both <= 1e-4)\n", "cg_resid (converged)", mc, mg);
    free(g);
    if (!(mc <= 1e-4 && mg <= 1e-4)) fail_msg("cg_resid: cpu %.3e cuda %.3e over 1e-4", mc, mg);
}

static void family_case(const Case *c, gsl_rng *r) {
    const int B = c->B, T = c->T, H = c->H, hd = c->hd;
    const int ldi = H * hd + 3, ldo = H * hd; /* inputs read from a wider (fused) row */
    const size_t ni = (size_t)B * T * ldi, no = (size_t)B * T * ldo, ns = (size_t)B * H * T;
    const size_t R = sizeof(real);
    real *q = randv(r, ni, 0.7), *k = randv(r, ni, 0.7), *v = randv(r, ni, 1), *rr = randv(r, ni, 0.5);
    if (c->normalize) /* positive features keep the denominator away from 0 */
        for (size_t i = 0; i < ni; i++) k[i] = (real)exp((double)k[i]), rr[i] = (real)exp((double)rr[i]);
    real *o = randv(r, no, 1), *rho = randv(r, no, 1), *lse = randv(r, ns, 1), *den = randv(r, ns, 1);
    real *res = randv(r, ns, 1), *rlse = randv(r, ns, 0.1);
    real *dout = randv(r, no, 1), *dq = randv(r, no, 1), *dk = randv(r, no, 1), *dv = randv(r, no, 1);
    real *dr = randv(r, no, 1), *lbw = randv(r, H, 0.3), *dlbw = randv(r, H, 1);
    double h = c->bw == BW_INF ? INFINITY : 1.3;
    FamArgs ca = {.B = B, .T = T, .H = H, .hd = hd, .ld_in = ldi, .ld_out = ldo,
                  .scale = isinf(h) ? 0 : (real)(1 / (h * sqrt((double)hd))),
                  .log_bw = c->bw == BW_LEARNED ? lbw : NULL, .window = c->window,
                  .probe = c->probe, .affine = c->affine, .boundary = c->boundary,
                  .normalize = c->normalize, .norm_eps = (real)1e-6, .ridge = (real)c->ridge,
                  .ridge_frozen = c->frozen, .cg_iters = c->cg_iters, .cg_precond = c->precond,
                  .cg_tol = (real)1e-12, .delta_eps = (real)1e-12, .q = q, .k = k, .v = v,
                  .r = rr, .o = o, .rho = rho, .lse = lse, .den = den, .cg_resid = res,
                  .dout = dout, .dq = dq, .dk = dk, .dv = dv,
                  .dr = c->probe == FAM_PROBE_GIVEN ? dr : NULL,
                  .dlog_bw = c->bw == BW_LEARNED ? dlbw : NULL};
    if (c->ridge_hook) { /* a reference point near the current one: lse + noise */
        CPU->family->forward(&ca);
        for (size_t i = 0; i < ns; i++) rlse[i] += lse[i];
        ca.ridge_lse = rlse;
    }
    FamArgs ga = ca;
    ga.log_bw = ca.log_bw ? up(GPU, lbw, R * H) : NULL;
    ga.ridge_lse = ca.ridge_lse ? up(GPU, rlse, R * ns) : NULL;
    ga.q = up(GPU, q, R * ni), ga.k = up(GPU, k, R * ni), ga.v = up(GPU, v, R * ni);
    ga.r = up(GPU, rr, R * ni), ga.o = up(GPU, o, R * no), ga.rho = up(GPU, rho, R * no);
    ga.lse = up(GPU, lse, R * ns), ga.den = up(GPU, den, R * ns), ga.cg_resid = up(GPU, res, R * ns);
    ga.dout = up(GPU, dout, R * no), ga.dq = up(GPU, dq, R * no), ga.dk = up(GPU, dk, R * no);
    ga.dv = up(GPU, dv, R * no), ga.dr = ca.dr ? up(GPU, dr, R * no) : NULL;
    ga.dlog_bw = ca.dlog_bw ? up(GPU, dlbw, R * H) : NULL;
    printf("  B=%d T=%d H=%d hd=%d window=%d probe=%d affine=%d boundary=%d normalize=%d bw=%s "
           "precond=%d frozen=%d ridge_lse=%d cg_iters=%d ridge=%g\n",
           B, T, H, hd, c->window, c->probe, c->affine, c->boundary, c->normalize,
           c->bw == BW_FIXED ? "fixed" : c->bw == BW_LEARNED ? "learned" : "inf", c->precond,
           c->frozen, c->ridge_hook, c->cg_iters, c->ridge);
    CPU->family->forward(&ca), GPU->family->forward(&ga);
    cmp("o", o, ga.o, no, c->bound);
    cmp("rho", rho, ga.rho, no, c->bound);
    cmp("lse", lse, ga.lse, ns, c->bound);
    cmp("den", den, ga.den, ns, c->bound);
    check_resid(c, res, ga.cg_resid, ns);
    CPU->family->backward(&ca), GPU->family->backward(&ga);
    cmp("dq (accumulated)", dq, ga.dq, no, c->bound);
    cmp("dk (accumulated)", dk, ga.dk, no, c->bound);
    cmp("dv (accumulated)", dv, ga.dv, no, c->bound);
    if (ca.dr) cmp("dr (accumulated)", dr, ga.dr, no, c->bound);
    if (ca.dlog_bw) cmp("dlog_bw (accumulated)", dlbw, ga.dlog_bw, H, 10 * c->bound);
    const void *g[] = {ga.log_bw, ga.ridge_lse, ga.q, ga.k, ga.v, ga.r, ga.o, ga.rho, ga.lse,
                       ga.den, ga.cg_resid, ga.dout, ga.dq, ga.dk, ga.dv, ga.dr, ga.dlog_bw};
    for (size_t i = 0; i < sizeof g / sizeof *g; i++)
        if (g[i]) GPU->release((void *)g[i]);
    real *h_[] = {q, k, v, rr, o, rho, lse, den, res, rlse, dout, dq, dk, dv, dr, lbw, dlbw};
    for (size_t i = 0; i < sizeof h_ / sizeof *h_; i++) free(h_[i]);
}

/* the six valid (probe, affine, boundary) forms of the op */
static const int forms[6][3] = {
    {FAM_PROBE_ZERO, 1, 1},   /* softmax / value_avg (learned bandwidth reaches the op) */
    {FAM_PROBE_GIVEN, 1, 1},  /* Parallax / affine linear attention */
    {FAM_PROBE_SOLVED, 1, 0}, /* solved probe without (1+eta) */
    {FAM_PROBE_SOLVED, 1, 1}, /* LLA / affine MesaNet */
    {FAM_PROBE_GIVEN, 0, 1},  /* (kernel-weighted) linear attention */
    {FAM_PROBE_SOLVED, 0, 1}, /* (kernel-weighted) MesaNet */
};

/* The grid: head dim 8 and 16 x bandwidth fixed/learned/inf x the six forms x
 * window 0/5; the secondary switches alternate with the outer indices so that
 * every form meets both of their values: Jacobi preconditioner, frozen ridge
 * gradient (solved with intercept), normalisation (no intercept, given probe). */
static void test_family_grid(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(21);
    for (int hi = 0; hi < 2; hi++)
        for (int bw = 0; bw < 3; bw++)
            for (int f = 0; f < 6; f++)
                for (int w = 0; w < 2; w++) {
                    int hd = hi ? 16 : 8;
                    Case c = {.B = 2, .T = 37, .H = 3, .hd = hd, .window = w ? 5 : 0,
                              .probe = forms[f][0], .affine = forms[f][1], .boundary = forms[f][2],
                              .bw = bw, .precond = (bw + hi + f / 2) & 1,
                              .frozen = (f + w + bw + hi) & 1, .cg_iters = 2 * hd, .ridge = 0.5};
                    c.normalize = !c.affine && c.probe == FAM_PROBE_GIVEN && ((w + hi + bw / 2) & 1);
                    c.bound = c.probe == FAM_PROBE_SOLVED ? B_SOLVE : B_PLAIN;
                    family_case(&c, r);
                }
    gsl_rng_free(r);
}

/* points the grid does not reach: wide heads (groups of a full warp, 2 and 4
 * elements per lane), a head dim that is no power of two (padded lanes), many
 * rows, a truncated solve (cg_resid compared), the ridge_lse hook */
static void test_family_extra(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(22);
    Case base = {.B = 1, .T = 70, .H = 2, .hd = 64, .probe = FAM_PROBE_SOLVED, .affine = 1,
                 .boundary = 1, .bw = BW_FIXED, .cg_iters = 64, .ridge = 0.5, .bound = B_SOLVE_WIDE};
    Case c = base; /* LLA, hd 64 */
    family_case(&c, r);
    c.precond = 1, c.window = 9, c.bw = BW_LEARNED; /* + window, preconditioner, learned h */
    family_case(&c, r);
    c = base, c.hd = 128, c.T = 33, c.cg_iters = 128; /* the widest head */
    family_case(&c, r);
    /* MesaNet, hd 32: lambda is on the plain sum over up to 70 keys here, so a
     * larger one keeps cond(Sigma) (and float CG's reach) as in the model */
    c = base, c.hd = 32, c.affine = 0, c.bw = BW_INF, c.cg_iters = 64, c.ridge = 5, c.bound = B_SOLVE;
    family_case(&c, r);
    c = base, c.hd = 12, c.B = 2, c.H = 3, c.T = 41, c.cg_iters = 24, c.bound = B_SOLVE; /* padded lanes */
    family_case(&c, r);
    c.probe = FAM_PROBE_GIVEN, c.affine = 0, c.bound = B_PLAIN;
    family_case(&c, r);
    c = base, c.hd = 8, c.B = 2, c.H = 2, c.T = 300, c.window = 40, c.cg_iters = 16, c.bound = B_SOLVE;
    family_case(&c, r); /* many rows and blocks, window */
    c = base, c.hd = 16, c.B = 2, c.H = 3, c.T = 37, c.cg_iters = 2, c.bound = B_SOLVE; /* truncated */
    family_case(&c, r);
    c.affine = 0, c.precond = 1;
    family_case(&c, r);
    c = base, c.hd = 8, c.B = 2, c.H = 3, c.T = 37, c.cg_iters = 16, c.ridge = 0.3, c.bound = B_SOLVE;
    c.frozen = 1, c.ridge_hook = 1; /* the frozen-ridge model of the test hook */
    family_case(&c, r);
    c.frozen = 0, c.bw = BW_LEARNED;
    family_case(&c, r);
    gsl_rng_free(r);
}

/* ---- linear attention by its recurrence -------------------------------------------- */

static void recurrent_case(int B, int T, int H, int hd, int normalize, gsl_rng *r) {
    const int ldi = H * hd + 5, ldo = H * hd;
    const size_t ni = (size_t)B * T * ldi, no = (size_t)B * T * ldo, ns = (size_t)B * H * T;
    const size_t R = sizeof(real);
    real *k = randv(r, ni, 0.5), *v = randv(r, ni, 1), *rr = randv(r, ni, 0.5);
    if (normalize)
        for (size_t i = 0; i < ni; i++) k[i] = (real)exp((double)k[i]), rr[i] = (real)exp((double)rr[i]);
    real *o = randv(r, no, 1), *lse = randv(r, ns, 1), *den = randv(r, ns, 1), *res = randv(r, ns, 1);
    real *dout = randv(r, no, 1), *dk = randv(r, no, 1), *dv = randv(r, no, 1), *dr = randv(r, no, 1);
    FamArgs ca = {.B = B, .T = T, .H = H, .hd = hd, .ld_in = ldi, .ld_out = ldo,
                  .probe = FAM_PROBE_GIVEN, .normalize = normalize, .norm_eps = (real)1e-6,
                  .q = k, .k = k, .v = v, .r = rr, .o = o, .lse = lse, .den = den, .cg_resid = res,
                  .dout = dout, .dk = dk, .dv = dv, .dr = dr};
    FamArgs ga = ca;
    ga.k = ga.q = up(GPU, k, R * ni), ga.v = up(GPU, v, R * ni), ga.r = up(GPU, rr, R * ni);
    ga.o = up(GPU, o, R * no), ga.lse = up(GPU, lse, R * ns), ga.den = up(GPU, den, R * ns);
    ga.cg_resid = up(GPU, res, R * ns), ga.dout = up(GPU, dout, R * no);
    ga.dk = up(GPU, dk, R * no), ga.dv = up(GPU, dv, R * no), ga.dr = up(GPU, dr, R * no);
    printf("  linear attention, recurrent: B=%d T=%d H=%d hd=%d normalize=%d\n", B, T, H, hd, normalize);
    /* the kernels keep the CPU's order and round every product (no fused
     * multiply-add), so they should match bit for bit; the bound is a margin for
     * the T-term sums of the state (and the backward's downdating) all the same */
    double bound = 1e-5 * (T > 100 ? 4 : 1);
    CPU->family->linear_recurrent_forward(&ca), GPU->family->linear_recurrent_forward(&ga);
    cmp("o", o, ga.o, no, bound);
    cmp("den", den, ga.den, ns, bound);
    cmp("lse (writes 0)", lse, ga.lse, ns, 0);
    cmp("cg_resid (writes 0)", res, ga.cg_resid, ns, 0);
    CPU->family->linear_recurrent_backward(&ca), GPU->family->linear_recurrent_backward(&ga);
    cmp("dk (accumulated)", dk, ga.dk, no, bound);
    cmp("dv (accumulated)", dv, ga.dv, no, bound);
    cmp("dr (accumulated)", dr, ga.dr, no, bound);
    const void *g[] = {ga.k, ga.v, ga.r, ga.o, ga.lse, ga.den, ga.cg_resid, ga.dout, ga.dk, ga.dv, ga.dr};
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) GPU->release((void *)g[i]);
    real *h_[] = {k, v, rr, o, lse, den, res, dout, dk, dv, dr};
    for (size_t i = 0; i < sizeof h_ / sizeof *h_; i++) free(h_[i]);
}

static void test_linear_recurrent(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(23);
    for (int nz = 0; nz < 2; nz++) {
        recurrent_case(2, 37, 3, 8, nz, r);
        recurrent_case(1, 200, 2, 16, nz, r);
        recurrent_case(2, 33, 2, 12, nz, r); /* padded */
        recurrent_case(1, 50, 2, 64, nz, r);
    }
    recurrent_case(1, 20, 1, 128, 1, r);
    gsl_rng_free(r);
}

/* ---- feature maps ------------------------------------------------------------------- */

static void test_feature_maps(void **s) {
    (void)s;
    NEED_GPU();
    gsl_rng *r = test_rng(24);
    const int N = 301, C = 8, lds[2] = {8, 11}; /* packed, and rows of a wider buffer */
    for (int li = 0; li < 2; li++)
        for (int kind = 0; kind < 3; kind++) {
            int ld = lds[li];
            size_t n = (size_t)N * ld, R = sizeof(real);
            real *x = randv(r, n, 1.5), *y = randv(r, n, 1), *dy = randv(r, n, 1), *dx = randv(r, n, 1);
            real *gx = up(GPU, x, R * n), *gy = up(GPU, y, R * n), *gdy = up(GPU, dy, R * n);
            real *gdx = up(GPU, dx, R * n);
            printf("  feature map kind=%d ld=%d\n", kind, ld);
            CPU->family->feature_map_forward(y, x, N, C, ld, kind);
            GPU->family->feature_map_forward(gy, gx, N, C, ld, kind);
            cmp("y (gaps untouched)", y, gy, n, 1e-6);
            CPU->family->feature_map_backward(dx, dy, x, N, C, ld, kind);
            GPU->family->feature_map_backward(gdx, gdy, gx, N, C, ld, kind);
            cmp("dx (accumulated)", dx, gdx, n, 1e-6);
            GPU->release(gx), GPU->release(gy), GPU->release(gdy), GPU->release(gdx);
            free(x), free(y), free(dy), free(dx);
        }
    gsl_rng_free(r);
}

/* ---- whole models -------------------------------------------------------------------- */

/* Every named member (plab help mixers) and the grid points the ops add: the
 * (1+eta) off, learned bandwidth, windows, feature maps, normalisation, the
 * recurrent algorithm, frozen ridge gradient, preconditioner.
 *
 * Bounds, measured without a GPU (the session that wrote this had none) on the
 * CUDA backend emulated on the CPU (kernels/cuda/emu: these very kernels, lanes
 * and shuffles included) and on CPU proxies:
 * fp32: every gradient within 9e-6 of the CPU's, but the first AdamW update
 * (checked at 10x the bound) differs by up to 4e-4 with a solve (its tiny
 * gradients, |g| ~ eps, carry the CG's rounding noise): 3e-4 for those members.
 * bf16 (every matmul operand rounded to bf16, the family ops fp32): the solves
 * are no worse than softmax (LLA 1.2-1.9e-2), the unnormalised no-intercept sums
 * are (linear attention 4.9e-2, on r_norm's gradient, a sum over every token);
 * the factor (in BF16_EPS) keeps the measured worst gradient under ~0.6 of the
 * bound. relu's kink flips features near 0 under bf16 rounding (0.125 on bk):
 * that case is checked in fp32 only (bf16 factor 0). */
typedef struct {
    const char *args;
    double fp32; /* bound in fp32 */
    int bf16;    /* bound in bf16, in BF16_EPS; 0: fp32 only */
} ModelCase;

static const ModelCase models[] = {
    {"model.mixer=lla", 3e-4, 8},
    {"model.mixer=lla mixer.window=9 mixer.cg_precondition=true mixer.ridge_grad=frozen", 3e-4, 8},
    {"model.mixer=lla mixer.boundary_factor=false mixer.bandwidth=4 mixer.bandwidth_learned=true", 3e-4, 16},
    {"model.mixer=value_avg", 1e-4, 8},
    {"model.mixer=affine_linear_attention", 1e-4, 16}, /* the bf16 tensor-core attention */
    {"model.mixer=affine_mesa", 3e-4, 8},
    {"model.mixer=linear_attention", 1e-4, 24},
    {"model.mixer=linear_attention mixer.algorithm=recurrent", 1e-4, 24},
    {"model.mixer=linear_attention mixer.feature_map=elu1 mixer.normalize=true", 1e-4, 16},
    {"model.mixer=linear_attention mixer.algorithm=recurrent mixer.feature_map=elu1 mixer.normalize=true", 1e-4, 16},
    {"model.mixer=linear_attention mixer.feature_map=relu mixer.window=5 mixer.bandwidth=2", 1e-4, 0},
    {"model.mixer=mesa", 3e-4, 16},
    {"model.mixer=mesa mixer.bandwidth=1 mixer.feature_map=elu1 mixer.qk_norm=true", 3e-4, 16},
    {"model.mixer=family mixer.bandwidth_learned=true", 1e-4, 8},
    {"model.mixer=parallax mixer.bandwidth_learned=true mixer.window=7 optim=muon", 1e-4, 16},
};

static void test_models_fp32(void **s) {
    (void)s;
    NEED_GPU();
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) model_case(models[i].args, GPU, models[i].fp32);
}

/* bf16 operands in every matmul; the family ops themselves stay fp32 */
static void test_models_bf16(void **s) {
    (void)s;
    NEED_GPU();
    for (size_t i = 0; i < sizeof models / sizeof *models; i++)
        if (models[i].bf16) model_case(models[i].args, GPU16, models[i].bf16 * BF16_EPS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_grid),      cmocka_unit_test(test_family_extra),
        cmocka_unit_test(test_linear_recurrent), cmocka_unit_test(test_feature_maps),
        cmocka_unit_test(test_models_fp32),      cmocka_unit_test(test_models_bf16),
    };
    return cmocka_run_group_tests(tests, cuda_setup, NULL);
}
