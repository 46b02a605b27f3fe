/* Training on the GPU: reproducibility and agreement with the CPU.
 *   - the same seed gives bit-identical CUDA runs (loss curve and test metrics),
 *     in bf16 with the captured CUDA-graph step;
 *   - the graph-replayed step equals the eagerly launched step bit for bit;
 *   - a short fp32 run follows the CPU's loss curve within tolerance.
 * Skipped with the reason printed when no GPU is usable (PLAB_REQUIRE_GPU=1 fails). */
#include "cudautil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../train/train.h"

#define MAXPTS 256
typedef struct {
    int n;
    double loss[MAXPTS];
    double acc[MAXPTS];
    int nacc;
} Curve;

static void on_metric(void *ctx, long step, int epoch, const char *key, double v) {
    (void)step, (void)epoch;
    Curve *c = ctx;
    if (!strcmp(key, "train_loss") && c->n < MAXPTS) c->loss[c->n++] = v;
    if (!strcmp(key, "test_acc") && c->nacc < MAXPTS) c->acc[c->nacc++] = v;
}


static RunResult run(const char *args, Curve *c) {
    memset(c, 0, sizeof *c);
    Config *cfg = test_config(args);
    RunSink sink = {.ctx = c, .metric = on_metric};
    RunResult r = train_run(cfg, &sink);
    cfg_free(cfg);
    if (r.status != RUN_FINISHED) fail_msg("run '%s': status %d: %s", args, r.status, r.reason);
    return r;
}

static const char *small =
    "task=in_context_recall task.vocab_size=16 task.seq_len=32 task.num_train=512 "
    "task.num_test=128 model.d_model=32 model.heads=4 model.layers=2 batch_size=32 "
    "log_every=4 progress=false early_stop_acc=2 lr=3e-3 schedule=constant ";

static void test_bit_identical(void **s) {
    (void)s;
    NEED_GPU();
    if (getenv("PLAB_EMU")) { /* make emu-test (docs/DEVICE.md) */
        printf("  skipped under the CUDA emulation (PLAB_EMU set): it runs every kernel in one fixed "
               "order, so equal runs say nothing about the GPU, and the 18 bf16 epochs take minutes\n");
        skip();
    }
    const char *mixers[2] = {"softmax", "parallax"};
    for (int k = 0; k < 2; k++) {
        char args[1024];
        snprintf(args, sizeof args, "%s device=cuda precision=bf16 epochs=3 seed=5 model.mixer=%s",
                 small, mixers[k]);
        Curve a, b;
        RunResult ra = run(args, &a), rb = run(args, &b);
        printf("  %s bf16: %d loss points, last %.6f / %.6f, test acc %.4f / %.4f\n", mixers[k],
               a.n, ra.last_train_loss, rb.last_train_loss, ra.test_acc, rb.test_acc);
        assert_int_equal(a.n, b.n);
        assert_true(a.n >= 10);
        assert_memory_equal(a.loss, b.loss, sizeof(double) * (size_t)a.n);
        assert_memory_equal(a.acc, b.acc, sizeof(double) * (size_t)a.nacc);
        assert_true(ra.test_ppl == rb.test_ppl);
        /* a different seed must give a different curve (the comparison can fail) */
        snprintf(args, sizeof args, "%s device=cuda precision=bf16 epochs=3 seed=6 model.mixer=%s",
                 small, mixers[k]);
        Curve c;
        run(args, &c);
        assert_true(memcmp(a.loss, c.loss, sizeof(double) * (size_t)a.n) != 0);
    }
}

static void test_graph_equals_eager(void **s) {
    (void)s;
    NEED_GPU();
    char args[1024];
    snprintf(args, sizeof args, "%s device=cuda epochs=2 seed=3 model.mixer=parallax optim=muon", small);
    Curve g, e;
    RunResult rg = run(args, &g);
    setenv("PLAB_CUDA_GRAPH", "0", 1);
    RunResult re = run(args, &e);
    unsetenv("PLAB_CUDA_GRAPH");
    printf("  graph last loss %.7f, eager %.7f\n", rg.last_train_loss, re.last_train_loss);
    assert_int_equal(g.n, e.n);
    assert_memory_equal(g.loss, e.loss, sizeof(double) * (size_t)g.n);
    assert_true(rg.test_ppl == re.test_ppl);
}

static void test_loss_curve_matches_cpu(void **s) {
    (void)s;
    NEED_GPU();
    const char *mixers[2] = {"softmax", "parallax"};
    for (int k = 0; k < 2; k++) {
        char a1[1024], a2[1024];
        snprintf(a1, sizeof a1, "%s device=cpu epochs=4 seed=2 model.mixer=%s", small, mixers[k]);
        snprintf(a2, sizeof a2, "%s device=cuda epochs=4 seed=2 model.mixer=%s", small, mixers[k]);
        Curve c, g;
        run(a1, &c), run(a2, &g);
        assert_int_equal(c.n, g.n);
        double worst = 0;
        for (int i = 0; i < c.n; i++) {
            double e = fabs(c.loss[i] - g.loss[i]) / fabs(c.loss[i]);
            worst = e > worst ? e : worst;
        }
        printf("  %s fp32: %d points, loss %.4f -> %.4f (cpu) / %.4f -> %.4f (cuda), worst rel "
               "diff %.2e (bound 5e-3)\n",
               mixers[k], c.n, c.loss[0], c.loss[c.n - 1], g.loss[0], g.loss[g.n - 1], worst);
        assert_true(c.loss[c.n - 1] < 0.9 * c.loss[0]); /* it learned something */
        assert_true(worst < 5e-3);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bit_identical),
        cmocka_unit_test(test_graph_equals_eager),
        cmocka_unit_test(test_loss_curve_matches_cpu),
    };
    return cmocka_run_group_tests(tests, cuda_setup, NULL);
}
