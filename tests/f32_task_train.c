/* Training on the tasks with the spine's CPU loop in float, the precision
 * plab trains in (small sizes, a few seconds each):
 * softmax attention must solve small in-context recall and selective copying,
 * learn short compression through the autoencoder backbone, and stay near
 * chance on compression when the code is far too narrow for the sequence
 * (mad.md §2.4, §4.2). The chance levels are exact
 * for a predictor that ignores the content: it can only get the compression
 * token (always last) and, per content class, 1/(V-1) of the positions, so
 * MAD's macro accuracy (mad.md §4.4) is (1 + 1)/V over the V classes (the
 * compression token's recall 1 and 1/(V-1) for each of the V-1 content
 * classes), and token accuracy (1 + (L-1)/(V-1))/L. A metric that counted
 * unscored positions or averaged wrongly would break these bounds too. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../train/train.h"

static RunResult train(const char *args) {
    Config *c = test_config(args);
    cfg_set(c, "progress", "false", NULL);
    RunResult r = train_run(c, NULL);
    cfg_free(c);
    printf("  %s\n    -> %s after %d epochs (%.1f s): MAD acc %.4f, token acc %.4f, ppl %.3f\n",
           args, r.status == RUN_FINISHED ? "finished" : r.reason, r.epochs, r.seconds, r.test_acc,
           r.test_token_acc, r.test_ppl);
    assert_int_equal(r.status, RUN_FINISHED);
    return r;
}

static void test_softmax_solves_recall(void **s) {
    (void)s;
    RunResult r = train("task=in_context_recall task.vocab_size=8 task.seq_len=16 task.num_train=2000 "
                        "task.num_test=256 model.mixer=softmax model.d_model=32 model.heads=2 "
                        "optim=muon lr=2e-2 batch_size=32 epochs=8 seed=1");
    assert_true(r.test_acc > 0.95);
    assert_true(r.test_token_acc > 0.95);
}

static void test_softmax_solves_selective_copying(void **s) {
    (void)s;
    RunResult r = train("task=selective_copying task.vocab_size=8 task.seq_len=16 "
                        "task.num_tokens_to_copy=3 task.num_train=1000 task.num_test=256 "
                        "model.mixer=softmax model.d_model=32 model.heads=2 model.mlp=none lr=1e-2 "
                        "batch_size=16 epochs=10 seed=1");
    assert_true(r.test_acc > 0.95);
    assert_true(r.test_token_acc > 0.95);
}

/* The same recipe (Muon, lr 2e-2, batch 32) on the autoencoder backbone:
 * 7 tokens through a 32-wide code are reproduced... */
static void test_autoencoder_learns_short_compression(void **s) {
    (void)s;
    RunResult r = train("task=compression task.vocab_size=8 task.seq_len=8 task.num_train=2000 "
                        "task.num_test=256 model.mixer=softmax model.d_model=32 model.heads=2 "
                        "model.mlp=none optim=muon lr=2e-2 batch_size=32 epochs=10 seed=1");
    assert_true(r.test_acc > 0.9);
}

/* ...but 63 tokens through a 16-wide code are not: near chance. */
static void test_compression_stays_near_chance(void **s) {
    (void)s;
    const double V = 16, L = 64;
    RunResult r = train("task=compression task.seq_len=64 task.num_train=1000 task.num_test=256 "
                        "model.mixer=softmax model.d_model=16 model.heads=2 model.mlp=none "
                        "optim=muon lr=2e-2 batch_size=32 epochs=4 seed=1");
    double mad_chance = 2 / V, tok_chance = (1 + (L - 1) / (V - 1)) / L;
    printf("    chance: MAD acc %.4f, token acc %.4f\n", mad_chance, tok_chance);
    assert_true(r.test_acc < mad_chance + 0.05);
    assert_true(r.test_token_acc < tok_chance + 0.05);
    /* not broken either: it gets the compression token, so above 1/V */
    assert_true(r.test_acc > 1 / V);
}

int main(void) {
#ifdef _OPENMP
    omp_set_num_threads(1); /* tiny matrices: threads only add overhead on a busy machine */
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softmax_solves_recall),
        cmocka_unit_test(test_softmax_solves_selective_copying),
        cmocka_unit_test(test_autoencoder_learns_short_compression),
        cmocka_unit_test(test_compression_stays_near_chance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
