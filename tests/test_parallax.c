/* The attention core (softmax and Parallax) on the CPU in double precision:
 * op-level gradient checks, the invariants of parallax_lla.md §3.6, the
 * covariance form of §3.1, and W_R = 0 reproducing softmax attention. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int B, T, H, hd, window;
    size_t n;
    real *q, *k, *v, *r, *o, *obar, *lse, *tbar, *g, *dq, *dk, *dv, *dr;
} Case;

static Case make_case(int B, int T, int H, int hd, int window, int parallax, unsigned long seed) {
    Case c = {.B = B, .T = T, .H = H, .hd = hd, .window = window};
    c.n = (size_t)B * T * H * hd;
    gsl_rng *r = test_rng(seed);
    real **bufs[] = {&c.q, &c.k, &c.v, &c.r, &c.o, &c.obar, &c.g, &c.dq, &c.dk, &c.dv, &c.dr};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) *bufs[i] = calloc(c.n, sizeof(real));
    c.lse = calloc((size_t)B * H * T, sizeof(real));
    c.tbar = calloc((size_t)B * H * T, sizeof(real));
    fill_randn(c.q, c.n, r, 1.0), fill_randn(c.k, c.n, r, 1.0), fill_randn(c.v, c.n, r, 1.0);
    fill_randn(c.g, c.n, r, 1.0);
    if (parallax) fill_randn(c.r, c.n, r, 0.5);
    else free(c.r), c.r = NULL;
    gsl_rng_free(r);
    return c;
}

static void free_case(Case *c) {
    real *bufs[] = {c->q, c->k, c->v, c->r, c->o, c->obar, c->g, c->dq, c->dk, c->dv, c->dr, c->lse, c->tbar};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

static AttnArgs args_of(Case *c) {
    int ld = c->H * c->hd;
    AttnArgs a = {.B = c->B, .T = c->T, .H = c->H, .hd = c->hd, .ld_in = ld, .ld_out = ld,
                  .scale = (real)(1 / sqrt((double)c->hd)), .window = c->window, .q = c->q,
                  .k = c->k, .v = c->v, .r = c->r, .o = c->o, .obar = c->obar, .lse = c->lse,
                  .tbar = c->tbar, .dout = c->g, .dq = c->dq, .dk = c->dk, .dv = c->dv, .dr = c->dr};
    return a;
}

static void run(Case *c) {
    AttnArgs a = args_of(c);
    ops_cpu()->attention_forward(&a);
    memset(c->dq, 0, c->n * sizeof(real)), memset(c->dk, 0, c->n * sizeof(real));
    memset(c->dv, 0, c->n * sizeof(real));
    if (c->dr) memset(c->dr, 0, c->n * sizeof(real));
    ops_cpu()->attention_backward(&a);
}

/* loss = sum o * g, so d loss / d o = g */
static double core_loss(void *ctx) {
    Case *c = ctx;
    AttnArgs a = args_of(c);
    ops_cpu()->attention_forward(&a);
    double s = 0;
    for (size_t i = 0; i < c->n; i++) s += c->o[i] * c->g[i];
    return s;
}

static void check_grads(int parallax, int window) {
    Case c = make_case(2, 7, 2, 4, window, parallax, 3);
    run(&c);
    gsl_rng *r = test_rng(5);
    real *dq = malloc(c.n * sizeof(real)), *dk = malloc(c.n * sizeof(real)),
         *dv = malloc(c.n * sizeof(real)), *dr = malloc(c.n * sizeof(real));
    memcpy(dq, c.dq, c.n * sizeof(real)), memcpy(dk, c.dk, c.n * sizeof(real));
    memcpy(dv, c.dv, c.n * sizeof(real));
    if (parallax) memcpy(dr, c.dr, c.n * sizeof(real));
    double eq = gradcheck(core_loss, &c, c.q, dq, c.n, 0, 1e-5, r);
    double ek = gradcheck(core_loss, &c, c.k, dk, c.n, 0, 1e-5, r);
    double ev = gradcheck(core_loss, &c, c.v, dv, c.n, 0, 1e-5, r);
    double er = parallax ? gradcheck(core_loss, &c, c.r, dr, c.n, 0, 1e-5, r) : 0;
    printf("  %s window %d: rel err dq %.1e dk %.1e dv %.1e dr %.1e\n",
           parallax ? "parallax" : "softmax", window, eq, ek, ev, er);
    assert_true(eq < 1e-6 && ek < 1e-6 && ev < 1e-6 && er < 1e-6);
    free(dq), free(dk), free(dv), free(dr);
    gsl_rng_free(r);
    free_case(&c);
}

static void test_grad_softmax(void **s) { (void)s; check_grads(0, 0); }
static void test_grad_parallax(void **s) { (void)s; check_grads(1, 0); }
static void test_grad_parallax_window(void **s) { (void)s; check_grads(1, 3); }

/* §3.6: sum_j dS_ij = 0 and sum_j dT_ij = 0. With every key's last coordinate
 * equal to 1, dq_i[last] = scale sum_j dS_ij and dr_i[last] = sum_j dT_ij. */
static void test_row_sums_vanish(void **s) {
    (void)s;
    Case c = make_case(2, 9, 3, 5, 0, 1, 8);
    for (size_t t = 0; t < c.n / c.hd; t++) c.k[t * c.hd + c.hd - 1] = 1;
    run(&c);
    double mq = 0, mr = 0, scale = 0;
    for (size_t t = 0; t < c.n / c.hd; t++) {
        mq = fmax(mq, fabs(c.dq[t * c.hd + c.hd - 1]));
        mr = fmax(mr, fabs(c.dr[t * c.hd + c.hd - 1]));
        scale = fmax(scale, fabs(c.dq[t * c.hd]));
    }
    printf("  max |sum_j dS| %.1e, max |sum_j dT| %.1e (typical |dq| %.1e)\n", mq, mr, scale);
    assert_true(mq < 1e-12 && mr < 1e-12 && scale > 1e-3);
    free_case(&c);
}

/* §3.1: effective weights a_ij = p_ij(1 + tbar - t_ij) sum to 1, so constant
 * values pass through unchanged. */
static void test_weights_sum_to_one(void **s) {
    (void)s;
    Case c = make_case(1, 11, 2, 4, 0, 1, 9);
    for (size_t t = 0; t < c.n / c.hd; t++)
        for (int j = 0; j < c.hd; j++) c.v[t * c.hd + j] = (real)(j + 1);
    run(&c);
    double err = 0;
    for (size_t t = 0; t < c.n / c.hd; t++)
        for (int j = 0; j < c.hd; j++) err = fmax(err, fabs(c.o[t * c.hd + j] - (j + 1)));
    printf("  constant values reproduced to %.1e\n", err);
    assert_true(err < 1e-12);
    free_case(&c);
}

/* §3.1: o_i = ō_i - Σ_KV(i) r_i with the softmax-weighted covariance, computed
 * here directly for every row. */
static void test_covariance_form(void **s) {
    (void)s;
    Case c = make_case(2, 8, 2, 3, 0, 1, 10);
    run(&c);
    int T = c.T, H = c.H, hd = c.hd, ld = H * hd;
    double worst = 0;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const real *qi = c.q + ((size_t)b * T + i) * ld + h * hd;
                const real *ri = c.r + ((size_t)b * T + i) * ld + h * hd;
                double p[64], m = -1e300, z = 0, kbar[8] = {0}, obar[8] = {0}, o[8];
                for (int j = 0; j <= i; j++) {
                    const real *kj = c.k + ((size_t)b * T + j) * ld + h * hd;
                    double sdot = 0;
                    for (int x = 0; x < hd; x++) sdot += qi[x] * kj[x];
                    p[j] = sdot / sqrt((double)hd);
                    m = fmax(m, p[j]);
                }
                for (int j = 0; j <= i; j++) z += p[j] = exp(p[j] - m);
                for (int j = 0; j <= i; j++) {
                    p[j] /= z;
                    for (int x = 0; x < hd; x++) {
                        kbar[x] += p[j] * c.k[((size_t)b * T + j) * ld + h * hd + x];
                        obar[x] += p[j] * c.v[((size_t)b * T + j) * ld + h * hd + x];
                    }
                }
                for (int x = 0; x < hd; x++) o[x] = obar[x];
                for (int j = 0; j <= i; j++) {
                    const real *kj = c.k + ((size_t)b * T + j) * ld + h * hd;
                    const real *vj = c.v + ((size_t)b * T + j) * ld + h * hd;
                    double cr = 0;
                    for (int x = 0; x < hd; x++) cr += (kj[x] - kbar[x]) * ri[x];
                    for (int x = 0; x < hd; x++) o[x] -= p[j] * cr * (vj[x] - obar[x]);
                }
                for (int x = 0; x < hd; x++)
                    worst = fmax(worst, fabs(o[x] - c.o[((size_t)b * T + i) * ld + h * hd + x]));
            }
    printf("  streaming vs covariance form: max diff %.1e\n", worst);
    assert_true(worst < 1e-12);
    free_case(&c);
}

/* W_R = 0 (r = 0) reproduces softmax attention: output and dq, dk, dv. */
static void test_zero_probe_is_softmax(void **s) {
    (void)s;
    Case a = make_case(2, 10, 2, 4, 0, 1, 12), b = make_case(2, 10, 2, 4, 0, 0, 12);
    memset(a.r, 0, a.n * sizeof(real));
    run(&a), run(&b);
    double eo = max_rel_err(a.o, b.o, a.n, 1e-30), eq = max_rel_err(a.dq, b.dq, a.n, 1e-30);
    double ek = max_rel_err(a.dk, b.dk, a.n, 1e-30), ev = max_rel_err(a.dv, b.dv, a.n, 1e-30);
    double drmax = 0;
    for (size_t i = 0; i < a.n; i++) drmax = fmax(drmax, fabs(a.dr[i]));
    printf("  r = 0 vs softmax: o %.1e dq %.1e dk %.1e dv %.1e; |dr| max %.2f (non-zero, §5)\n",
           eo, eq, ek, ev, drmax);
    assert_true(eo < 1e-14 && eq < 1e-14 && ek < 1e-14 && ev < 1e-14);
    assert_true(drmax > 1e-3);
    free_case(&a), free_case(&b);
}

/* The whole model: Parallax with W_R = 0 has softmax's loss and gradients. */
static void test_model_zero_probe(void **s) {
    (void)s;
    const char *common = "task.vocab_size=10 task.seq_len=8 model.d_model=16 model.heads=2 ";
    char a1[256], a2[256];
    snprintf(a1, sizeof a1, "%smodel.mixer=softmax", common);
    snprintf(a2, sizeof a2, "%smodel.mixer=parallax mixer.probe_init=zero", common);
    Config *c1 = test_config(a1), *c2 = test_config(a2);
    Err e;
    Model *m1 = model_create(c1, ops_cpu(), 2, 7, &e), *m2 = model_create(c2, ops_cpu(), 2, 7, &e);
    model_init_params(m1, 3), model_init_params(m2, 3);
    int tok[14], tgt[14];
    for (int i = 0; i < 14; i++) tok[i] = (i * 7) % 10, tgt[i] = (i * 3) % 10;
    model_set_batch(m1, tok, tgt, 2), model_set_batch(m2, tok, tgt, 2);
    model_zero_grad(m1), model_zero_grad(m2);
    model_forward(m1, 2, 1), model_forward(m2, 2, 1);
    double l1 = model_take_loss(m1), l2 = model_take_loss(m2);
    model_backward(m1, 2), model_backward(m2, 2);
    int iq1 = model_find_param(m1, "blocks.0.mixer.wq"), iq2 = model_find_param(m2, "blocks.0.mixer.wq");
    const ParamSpec *s1 = model_spec(m1, iq1), *s2 = model_spec(m2, iq2);
    double eg = max_rel_err(model_grads(m1) + s1->offset, model_grads(m2) + s2->offset, s1->numel, 1e-30);
    printf("  model loss softmax %.12f parallax(W_R=0) %.12f; dWq rel diff %.1e\n", l1, l2, eg);
    assert_true(fabs(l1 - l2) < 1e-14 && eg < 1e-12);
    model_free(m1), model_free(m2);
    cfg_free(c1), cfg_free(c2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_softmax),
        cmocka_unit_test(test_grad_parallax),
        cmocka_unit_test(test_grad_parallax_window),
        cmocka_unit_test(test_row_sums_vanish),
        cmocka_unit_test(test_weights_sum_to_one),
        cmocka_unit_test(test_covariance_form),
        cmocka_unit_test(test_zero_probe_is_softmax),
        cmocka_unit_test(test_model_zero_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
