/* The state-space ops (kernels/ops_scan.h) on the CPU in double precision:
 * forwards against closed-form sums written independently of the scans,
 * backwards against central finite differences on every input, and the
 * chunked SSD against the token recurrence (forward and backward). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops_scan.h"

static const ScanOps *scan(void) {
    const ScanOps *s = ops_cpu()->scan;
    assert_non_null(s);
    return s;
}

static real *rnd(size_t n, gsl_rng *r, double scale) {
    real *x = malloc(sizeof(real) * n);
    fill_randn(x, n, r, scale);
    return x;
}

static real *uni(size_t n, gsl_rng *r, double lo, double hi) {
    real *x = malloc(sizeof(real) * n);
    for (size_t i = 0; i < n; i++) x[i] = (real)(lo + (hi - lo) * gsl_rng_uniform(r));
    return x;
}

static double dot(const real *a, const real *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ---- short conv -------------------------------------------------------------------- */

enum { CB = 2, CT = 7, CC = 3 };

typedef struct {
    real *x, *w, *b, *y, *pre, *wout;
    int silu, W;
} ConvCtx;

static double conv_loss(void *p) {
    ConvCtx *c = p;
    ops_cpu()->conv_forward(c->y, c->pre, c->x, c->w, c->b, CB, CT, CC, c->W, c->silu);
    return dot(c->y, c->wout, CB * CT * CC);
}

/* W == 0 is "no conv": pre = x + b (the delta family with mixer.short_conv=0) */
static void conv_case(int silu, int CW) {
    gsl_rng *r = test_rng(3);
    size_t n = CB * CT * CC;
    ConvCtx c = {rnd(n, r, 1), rnd(CC * CW + 1, r, 0.7), rnd(CC, r, 0.5), calloc(n, sizeof(real)),
                 calloc(n, sizeof(real)), rnd(n, r, 1), silu, CW};
    conv_loss(&c);
    for (int b = 0; b < CB; b++) /* forward: the §1.1 sum written out */
        for (int t = 0; t < CT; t++)
            for (int ch = 0; ch < CC; ch++) {
                double s = c.b[ch] + (CW == 0 ? c.x[(b * CT + t) * CC + ch] : 0);
                for (int i = 0; i < CW; i++)
                    if (t - CW + 1 + i >= 0) s += c.w[ch * CW + i] * c.x[(b * CT + t - CW + 1 + i) * CC + ch];
                double want = silu ? s / (1 + exp(-s)) : s;
                assert_true(fabs(want - c.y[(b * CT + t) * CC + ch]) < 1e-12);
            }
    real *dx = calloc(n, sizeof(real)), *dw = calloc(CC * CW + 1, sizeof(real)), *db = calloc(CC, sizeof(real));
    ops_cpu()->conv_backward(dx, dw, db, c.wout, c.x, c.w, c.pre, CB, CT, CC, CW, silu);
    double e = fmax(gradcheck(conv_loss, &c, c.x, dx, n, 0, 1e-5, r),
                    fmax(gradcheck(conv_loss, &c, c.w, dw, CC * CW, 0, 1e-5, r),
                         gradcheck(conv_loss, &c, c.b, db, CC, 0, 1e-5, r)));
    printf("  conv silu=%d W=%d: worst gradient error %.2e\n", silu, CW, e);
    assert_true(e < 1e-6);
    free(c.x), free(c.w), free(c.b), free(c.y), free(c.pre), free(c.wout), free(dx), free(dw), free(db);
    gsl_rng_free(r);
}

static void test_conv_silu(void **s) { (void)s; conv_case(1, 4); conv_case(1, 0); }
static void test_conv_identity(void **s) { (void)s; conv_case(0, 4); conv_case(0, 1); }

/* ---- softplus ---------------------------------------------------------------------- */

typedef struct {
    real *x, *b, *y, *wout;
} SpCtx;

static double sp_loss(void *p) {
    SpCtx *c = p;
    scan()->softplus_forward(c->y, c->x, c->b, 4, 5);
    return dot(c->y, c->wout, 20);
}

static void test_softplus(void **s) {
    (void)s;
    gsl_rng *r = test_rng(5);
    SpCtx c = {rnd(20, r, 4), rnd(5, r, 1), calloc(20, sizeof(real)), rnd(20, r, 1)};
    c.x[3] = 30; /* above Mamba's threshold: identity */
    sp_loss(&c);
    for (int i = 0; i < 20; i++) {
        double u = c.x[i] + c.b[i % 5];
        assert_true(fabs(c.y[i] - (u > 20 ? u : log(1 + exp(u)))) < 1e-12);
        assert_true(c.y[i] > 0);
    }
    real *dx = calloc(20, sizeof(real)), *db = calloc(5, sizeof(real));
    scan()->softplus_backward(dx, db, c.wout, c.x, c.b, 4, 5);
    double e = fmax(gradcheck(sp_loss, &c, c.x, dx, 20, 0, 1e-5, r),
                    gradcheck(sp_loss, &c, c.b, db, 5, 0, 1e-5, r));
    printf("  softplus: worst gradient error %.2e\n", e);
    assert_true(e < 1e-6);
    free(c.x), free(c.b), free(c.y), free(c.wout), free(dx), free(db);
    gsl_rng_free(r);
}

/* ---- Mamba-1 selective scan ---------------------------------------------------------- */

enum { SB = 2, ST = 9, SD = 3, SN = 4 };

typedef struct {
    real *x, *dl, *Alog, *Bm, *Cm, *D, *y, *wout;
} ScanCtx;

static double scan_loss(void *p) {
    ScanCtx *c = p;
    scan()->selective_scan_forward(c->y, c->x, c->dl, c->Alog, c->Bm, c->Cm, c->D, SB, ST, SD, SN);
    return dot(c->y, c->wout, SB * ST * SD);
}

static void test_selective_scan(void **s) {
    (void)s;
    gsl_rng *r = test_rng(7);
    size_t nx = SB * ST * SD, nb = SB * ST * SN;
    ScanCtx c = {rnd(nx, r, 1), uni(nx, r, 0.05, 0.8), rnd(SD * SN, r, 0.5), rnd(nb, r, 1),
                 rnd(nb, r, 1), rnd(SD, r, 1), calloc(nx, sizeof(real)), rnd(nx, r, 1)};
    scan_loss(&c);
    /* forward: y_t = sum_{s<=t} sum_n C_t exp(A sum_{s<u<=t} dl_u) dl_s B_s x_s + D x_t */
    double worst = 0;
    for (int b = 0; b < SB; b++)
        for (int t = 0; t < ST; t++)
            for (int d = 0; d < SD; d++) {
                double want = c.D[d] * c.x[(b * ST + t) * SD + d];
                for (int n = 0; n < SN; n++) {
                    double A = -exp(c.Alog[d * SN + n]);
                    for (int s2 = 0; s2 <= t; s2++) {
                        double acc = 0;
                        for (int u = s2 + 1; u <= t; u++) acc += c.dl[(b * ST + u) * SD + d];
                        size_t rs = (size_t)b * ST + s2;
                        want += c.Cm[(b * ST + t) * SN + n] * exp(A * acc) * c.dl[rs * SD + d] *
                                c.Bm[rs * SN + n] * c.x[rs * SD + d];
                    }
                }
                worst = fmax(worst, fabs(want - c.y[(b * ST + t) * SD + d]));
            }
    printf("  selective scan forward vs closed form: %.2e\n", worst);
    assert_true(worst < 1e-12);
    real *g[6];
    size_t sz[6] = {nx, nx, SD * SN, nb, nb, SD};
    for (int i = 0; i < 6; i++) g[i] = calloc(sz[i], sizeof(real));
    scan()->selective_scan_backward(g[0], g[1], g[2], g[3], g[4], g[5], c.wout, c.x, c.dl, c.Alog,
                                    c.Bm, c.Cm, c.D, SB, ST, SD, SN);
    real *in[6] = {c.x, c.dl, c.Alog, c.Bm, c.Cm, c.D};
    const char *name[6] = {"x", "delta", "A_log", "B", "C", "D"};
    for (int i = 0; i < 6; i++) {
        double e = gradcheck(scan_loss, &c, in[i], g[i], sz[i], 0, 1e-5, r);
        printf("  selective scan d%-6s %.2e\n", name[i], e);
        assert_true(e < 1e-6);
        free(g[i]);
    }
    free(c.x), free(c.dl), free(c.Alog), free(c.Bm), free(c.Cm), free(c.D), free(c.y), free(c.wout);
    gsl_rng_free(r);
}

/* ---- Mamba-2 SSD ---------------------------------------------------------------------- */

enum { DB = 2, DT = 11, DH = 4, DP = 3, DG = 2, DN = 5 };
#define NX ((size_t)DB * DT * DH * DP)
#define NDT ((size_t)DB * DT * DH)
#define NBC ((size_t)DB * DT * DG * DN)

typedef struct {
    SsdArgs a;
    real *x, *dt, *Alog, *Bm, *Cm, *D, *y, *wout;
} SsdCtx;

static SsdCtx ssd_ctx(gsl_rng *r, int chunk) {
    SsdCtx c = {{0}, rnd(NX, r, 1), uni(NDT, r, 0.05, 0.9), rnd(DH, r, 0.5), rnd(NBC, r, 1),
                rnd(NBC, r, 1), rnd(DH, r, 1), calloc(NX, sizeof(real)), rnd(NX, r, 1)};
    SsdArgs a = {.B = DB, .T = DT, .H = DH, .P = DP, .G = DG, .N = DN, .chunk = chunk, .x = c.x,
                 .dt = c.dt, .A_log = c.Alog, .Bm = c.Bm, .Cm = c.Cm, .D = c.D, .y = c.y};
    c.a = a;
    return c;
}

static void ssd_ctx_free(SsdCtx *c) {
    free(c->x), free(c->dt), free(c->Alog), free(c->Bm), free(c->Cm), free(c->D), free(c->y);
    free(c->wout);
}

static double ssd_loss(void *p) {
    SsdCtx *c = p;
    scan()->ssd_forward(&c->a);
    return dot(c->y, c->wout, NX);
}

/* every gradient of one SSD backward: dx, ddt, dA_log, dB, dC, dD */
typedef struct {
    real *g[6];
} SsdGrads;
static const size_t ssd_sz[6] = {NX, NDT, DH, NBC, NBC, DH};

static SsdGrads ssd_grads(SsdCtx *c) {
    SsdGrads G;
    for (int i = 0; i < 6; i++) G.g[i] = calloc(ssd_sz[i], sizeof(real));
    SsdArgs a = c->a;
    a.dy = c->wout, a.dx = G.g[0], a.ddt = G.g[1], a.dA_log = G.g[2], a.dBm = G.g[3],
    a.dCm = G.g[4], a.dD = G.g[5];
    scan()->ssd_backward(&a);
    return G;
}

static void test_ssd_recurrent(void **s) {
    (void)s;
    gsl_rng *r = test_rng(9);
    SsdCtx c = ssd_ctx(r, 0);
    ssd_loss(&c);
    /* forward: y_t = sum_{s<=t} (C_t.B_s) exp(A sum_{s<u<=t} dt_u) dt_s x_s + D x_t */
    double worst = 0;
    for (int b = 0; b < DB; b++)
        for (int t = 0; t < DT; t++)
            for (int h = 0; h < DH; h++) {
                int grp = h / (DH / DG);
                double A = -exp(c.Alog[h]);
                for (int p = 0; p < DP; p++) {
                    double want = c.D[h] * c.x[((b * DT + t) * DH + h) * DP + p];
                    for (int s2 = 0; s2 <= t; s2++) {
                        double acc = 0, cb = 0;
                        for (int u = s2 + 1; u <= t; u++) acc += c.dt[(b * DT + u) * DH + h];
                        for (int n = 0; n < DN; n++)
                            cb += c.Cm[((b * DT + t) * DG + grp) * DN + n] *
                                  c.Bm[((b * DT + s2) * DG + grp) * DN + n];
                        want += cb * exp(A * acc) * c.dt[(b * DT + s2) * DH + h] *
                                c.x[((b * DT + s2) * DH + h) * DP + p];
                    }
                    worst = fmax(worst, fabs(want - c.y[((b * DT + t) * DH + h) * DP + p]));
                }
            }
    printf("  SSD forward vs closed form: %.2e\n", worst);
    assert_true(worst < 1e-12);
    SsdGrads G = ssd_grads(&c);
    real *in[6] = {c.x, c.dt, c.Alog, c.Bm, c.Cm, c.D};
    const char *name[6] = {"x", "dt", "A_log", "B", "C", "D"};
    for (int i = 0; i < 6; i++) {
        double e = gradcheck(ssd_loss, &c, in[i], G.g[i], ssd_sz[i], 0, 1e-5, r);
        printf("  SSD recurrent d%-6s %.2e\n", name[i], e);
        assert_true(e < 1e-6);
        free(G.g[i]);
    }
    ssd_ctx_free(&c);
    gsl_rng_free(r);
}

/* The chunked SSD equals the recurrence, forward and backward, for chunks
 * that divide T, that do not, of one token, and longer than T. */
static void test_ssd_chunked_vs_recurrent(void **s) {
    (void)s;
    int chunks[] = {1, 2, 3, 4, 11, 32};
    gsl_rng *r = test_rng(13);
    SsdCtx ref = ssd_ctx(r, 0);
    ssd_loss(&ref);
    SsdGrads Gr = ssd_grads(&ref);
    real *yref = malloc(sizeof(real) * NX);
    memcpy(yref, ref.y, sizeof(real) * NX);
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
        ref.a.chunk = chunks[k];
        memset(ref.y, 0, sizeof(real) * NX);
        ssd_loss(&ref);
        double ey = max_rel_err(ref.y, yref, NX, 1e-12), eg = 0;
        SsdGrads Gc = ssd_grads(&ref);
        for (int i = 0; i < 6; i++) {
            eg = fmax(eg, max_rel_err(Gc.g[i], Gr.g[i], ssd_sz[i], 1e-12));
            free(Gc.g[i]);
        }
        printf("  chunk %2d: forward %.2e, gradients %.2e (relative to the recurrence)\n", chunks[k],
               ey, eg);
        assert_true(ey < 1e-12);
        assert_true(eg < 1e-11);
    }
    for (int i = 0; i < 6; i++) free(Gr.g[i]);
    free(yref);
    ssd_ctx_free(&ref);
    gsl_rng_free(r);
}

/* Large steps (dt up to 30, |A| up to e^3) drive exp(dt A) to underflow and
 * long sequences make the state sums long: outputs and gradients stay finite. */
static void test_ssd_extreme_gates_finite(void **s) {
    (void)s;
    gsl_rng *r = test_rng(17);
    SsdCtx c = ssd_ctx(r, 0);
    for (size_t i = 0; i < NDT; i++) c.dt[i] = (real)(30 * gsl_rng_uniform(r));
    for (int h = 0; h < DH; h++) c.Alog[h] = 3;
    for (int chunk = 0; chunk <= 4; chunk += 4) {
        c.a.chunk = chunk;
        double l = ssd_loss(&c);
        SsdGrads G = ssd_grads(&c);
        assert_true(isfinite(l));
        for (int i = 0; i < 6; i++) {
            for (size_t j = 0; j < ssd_sz[i]; j++) assert_true(isfinite(G.g[i][j]));
            free(G.g[i]);
        }
    }
    ssd_ctx_free(&c);
    gsl_rng_free(r);
}

#ifdef _OPENMP
#include <omp.h>

/* Large enough to run in parallel: 1 thread and 2 threads give the same bits
 * (parallel over the batch only, reductions in a fixed order). */
static void test_thread_independence(void **s) {
    (void)s;
    enum { B = 4, T = 256, H = 4, P = 8, G = 1, N = 8, Dc = H * P, NOUT = 14 };
    size_t nx = (size_t)B * T * Dc, ndt = (size_t)B * T * H, nbc = (size_t)B * T * G * N;
    size_t sz[NOUT] = {nx, nx, ndt, H, nbc, nbc, H, nx, nx, (size_t)Dc * N, nbc, nbc, Dc, nx};
    gsl_rng *r = test_rng(21);
    real *x = rnd(nx, r, 1), *dt = uni(ndt, r, 0.01, 0.5), *Al = rnd(H, r, 0.5);
    real *Bm = rnd(nbc, r, 1), *Cm = rnd(nbc, r, 1), *D = rnd(H, r, 1), *dy = rnd(nx, r, 1);
    real *delta = uni(nx, r, 0.01, 0.5), *Al1 = rnd((size_t)Dc * N, r, 0.5), *D1 = rnd(Dc, r, 1);
    real *out[2][NOUT];
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run + 1);
        real **o = out[run];
        for (int i = 0; i < NOUT; i++) o[i] = calloc(sz[i], sizeof(real));
        SsdArgs a = {.B = B, .T = T, .H = H, .P = P, .G = G, .N = N, .chunk = 16, .x = x, .dt = dt,
                     .A_log = Al, .Bm = Bm, .Cm = Cm, .D = D, .y = o[0], .dy = dy, .dx = o[1],
                     .ddt = o[2], .dA_log = o[3], .dBm = o[4], .dCm = o[5], .dD = o[6]};
        scan()->ssd_forward(&a);
        scan()->ssd_backward(&a);
        a.chunk = 0; /* the recurrence accumulates on top */
        scan()->ssd_backward(&a);
        scan()->selective_scan_forward(o[7], x, delta, Al1, Bm, Cm, D1, B, T, Dc, N);
        scan()->selective_scan_backward(o[8], o[13], o[9], o[10], o[11], o[12], dy, x, delta, Al1, Bm,
                                        Cm, D1, B, T, Dc, N);
    }
    for (int i = 0; i < NOUT; i++) {
        assert_memory_equal(out[0][i], out[1][i], sz[i] * sizeof(real));
        free(out[0][i]), free(out[1][i]);
    }
    free(x), free(dt), free(Al), free(Bm), free(Cm), free(D), free(dy), free(delta), free(Al1), free(D1);
    gsl_rng_free(r);
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_silu),
        cmocka_unit_test(test_conv_identity),
        cmocka_unit_test(test_softplus),
        cmocka_unit_test(test_selective_scan),
        cmocka_unit_test(test_ssd_recurrent),
        cmocka_unit_test(test_ssd_chunked_vs_recurrent),
        cmocka_unit_test(test_ssd_extreme_gates_finite),
#ifdef _OPENMP
        cmocka_unit_test(test_thread_independence),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
