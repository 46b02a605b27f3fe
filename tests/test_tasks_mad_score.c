/* The MAD benchmark grid (mad.md §3) and the MAD score (mad.md §4.5). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../analysis/mad_score.h"
#include "../db/results.h"
#include <unistd.h>
#include "../train/train.h"

/* 66 settings, 11/11/14/13/11/6 per task, each a valid run under protocol=mad
 * whose changed key really takes the listed value */
static void test_grid(void **s) {
    (void)s;
    MadSetting g[MAD_GRID_SIZE];
    assert_int_equal(mad_grid(g), 66);
    const int want[MAD_TASKS] = {11, 11, 11, 6, 14, 13}; /* order of mad_task_names */
    for (int t = 0; t < MAD_TASKS; t++) {
        int n = 0;
        for (int i = 0; i < 66; i++) n += !strcmp(g[i].task, mad_task_names[t]);
        assert_int_equal(n, want[t]);
    }
    for (int i = 0; i < 66; i++) {
        for (int j = 0; j < i; j++)
            assert_false(!strcmp(g[i].task, g[j].task) && !strcmp(g[i].name, g[j].name));
        char args[300];
        snprintf(args, sizeof args, "protocol=mad %s", g[i].args);
        Config *c = test_config(args); /* fails the test if the setting is rejected */
        if (strcmp(g[i].name, "baseline") != 0) {
            char key[48];
            snprintf(key, sizeof key, "%s", g[i].name);
            char *eq = strchr(key, '=');
            *eq = 0;
            assert_string_equal(cfg_str(c, key), eq + 1);
        }
        cfg_free(c);
    }
    /* spot checks against mad.md §3 */
    assert_string_equal(g[0].args, "task=in_context_recall task.vocab_size=16 task.seq_len=128 "
                                   "task.num_train=12800");
}

/* A hand-computed case: in-context recall has settings A (runs 0.5, 0.9, NaN)
 * and B (0.3), so its score is (0.9 + 0.3)/2 = 0.6; every other task one
 * setting at 1.0; an MQAR run at 1.0 is ignored: average (0.6 + 5)/6. */
static void test_score_by_hand(void **s) {
    (void)s;
    MadRow rows[16];
    int n = 0;
    rows[n++] = (MadRow){"in_context_recall", "A", 1e-4, 0, 0.5};
    rows[n++] = (MadRow){"in_context_recall", "A", 5e-4, 0, 0.9};
    rows[n++] = (MadRow){"in_context_recall", "A", 1e-3, 0, NAN};
    rows[n++] = (MadRow){"in_context_recall", "B", 1e-3, 0.1, 0.3};
    rows[n++] = (MadRow){"mqar", "A", 1e-3, 0.1, 1.0};
    for (int t = 0; t < MAD_TASKS; t++)
        if (strcmp(mad_task_names[t], "in_context_recall"))
            rows[n++] = (MadRow){mad_task_names[t], "base", 1e-3, 0, 1.0};
    MadScore sc;
    mad_score(rows, n, &sc);
    mad_score_print(stdout, &sc);
    assert_true(fabs(sc.task[2].score - 0.6) < 1e-12);
    assert_int_equal(sc.task[2].settings, 2);
    assert_int_equal(sc.task[2].min_runs, 1);
    assert_true(fabs(sc.average - (0.6 + 5.0) / 6) < 1e-12);
    assert_int_equal(sc.dropped, 1);
    assert_int_equal(sc.other, 1);
    assert_int_equal(sc.complete, 0);
    /* a missing task: no average */
    mad_score(rows, 4, &sc);
    assert_true(isnan(sc.average));
}

/* The full grid with 6 runs per setting and pseudo-random accuracies, in
 * shuffled order, against a direct computation. */
static void test_score_full_grid(void **s) {
    (void)s;
    MadSetting g[MAD_GRID_SIZE];
    mad_grid(g);
    int n = 66 * 6;
    MadRow *rows = malloc(sizeof(MadRow) * (size_t)n);
    gsl_rng *r = test_rng(5);
    double best[66];
    for (int i = 0; i < 66; i++) {
        best[i] = -1;
        for (int k = 0; k < 6; k++) {
            double acc = gsl_rng_uniform(r);
            rows[i * 6 + k] = (MadRow){g[i].task, g[i].name, mad_grid_lr[k % 3], mad_grid_wd[k / 3], acc};
            if (acc > best[i]) best[i] = acc;
        }
    }
    for (int i = n - 1; i > 0; i--) { /* order must not matter */
        int j = (int)gsl_rng_uniform_int(r, (unsigned long)(i + 1));
        MadRow tmp = rows[i];
        rows[i] = rows[j], rows[j] = tmp;
    }
    MadScore sc;
    mad_score(rows, n, &sc);
    double avg = 0;
    for (int t = 0; t < MAD_TASKS; t++) {
        double sum = 0;
        int cnt = 0;
        for (int i = 0; i < 66; i++)
            if (!strcmp(g[i].task, mad_task_names[t])) sum += best[i], cnt++;
        assert_true(fabs(sc.task[t].score - sum / cnt) < 1e-12);
        assert_int_equal(sc.task[t].min_runs, 6);
        avg += sum / cnt / MAD_TASKS;
    }
    assert_true(fabs(sc.average - avg) < 1e-12);
    assert_int_equal(sc.complete, 1);
    free(rows);
    gsl_rng_free(r);
}


/* From stored results: runs written through the results API, read back by
 * mad_score_db() through the mad_run view. Two mechanisms; per setting the
 * best over lr x wd; a failed run and a NaN result are dropped; compression
 * runs (whose task presets model keys) join their mechanism. */
typedef struct {
    int calls;
    double icr_softmax, icr_parallax, sc_softmax, c_softmax, c_parallax;
    int icr_settings;
} Seen;

static void on_score(void *ctx, const char *mechanism, const char *mixer, const MadScore *s) {
    Seen *seen = ctx;
    seen->calls++;
    assert_non_null(strstr(mechanism, "model.mixer="));
    if (!strcmp(mixer, "softmax")) {
        seen->icr_softmax = s->task[2].score, seen->sc_softmax = s->task[5].score;
        seen->icr_settings = s->task[2].settings;
        seen->c_softmax = s->task[0].score;
    } else seen->icr_parallax = s->task[2].score, seen->c_parallax = s->task[0].score;
    assert_true(isnan(s->average)); /* four tasks missing */
}

static void add_run(sqlite3 *db, const char *args, const char *status, double acc) {
    Config *c = test_config(args);
    char hash[17];
    cfg_hash(c, hash);
    db_begin(db);
    results_queue(db, "t", hash, args, c);
    db_commit(db);
    long id = results_claim(db, "t", hash, 1, "host", "", "cpu");
    assert_true(id > 0);
    ResultWriter *w = results_writer(db, id);
    if (!strcmp(status, "finished")) results_final(w, "test_acc", "at_best_ppl", acc);
    results_end(w, status, 1, strcmp(status, "finished") ? "boom" : NULL);
    cfg_free(c);
}

static void test_score_from_db(void **st) {
    (void)st;
    char path[] = "/tmp/plab_mad_score_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    Err e = {{0}};
    sqlite3 *db = db_open(path, 1, &e);
    assert_non_null(db);
    results_sweep_begin(db, "t", "method: grid", NULL);
    const char *icr = "task=in_context_recall task.seq_len=16 model.d_model=16 model.heads=2 ";
    const char *icr2 = "task=in_context_recall task.seq_len=32 model.d_model=16 model.heads=2 ";
    const char *sc = "task=selective_copying task.seq_len=16 task.num_tokens_to_copy=3 "
                     "model.d_model=16 model.heads=2 ";
    char a[512];
    /* softmax: ICR setting 1 best 0.8 (NaN dropped, failed 1.0 dropped), setting 2 0.4 */
    snprintf(a, sizeof a, "%slr=1e-4", icr), add_run(db, a, "finished", 0.5);
    snprintf(a, sizeof a, "%slr=5e-4", icr), add_run(db, a, "finished", 0.8);
    snprintf(a, sizeof a, "%slr=1e-3", icr), add_run(db, a, "finished", NAN);
    snprintf(a, sizeof a, "%slr=1e-3 weight_decay=0.1", icr), add_run(db, a, "failed", 1.0);
    snprintf(a, sizeof a, "%slr=1e-3", icr2), add_run(db, a, "finished", 0.4);
    snprintf(a, sizeof a, "%slr=1e-3", sc), add_run(db, a, "finished", 0.9);
    /* parallax: ICR setting 1 at 0.7 */
    snprintf(a, sizeof a, "%smodel.mixer=parallax lr=1e-3", icr), add_run(db, a, "finished", 0.7);
    /* compression presets model.backbone and model.init, yet belongs to each mechanism */
    const char *c = "task=compression task.seq_len=8 model.d_model=16 model.heads=2 lr=1e-3 ";
    snprintf(a, sizeof a, "%s", c), add_run(db, a, "finished", 0.3);
    snprintf(a, sizeof a, "%smodel.mixer=parallax", c), add_run(db, a, "finished", 0.35);
    Seen seen = {0};
    int n = mad_score_db(db, on_score, &seen);
    db_close(db);
    unlink(path);
    char wal[300];
    snprintf(wal, sizeof wal, "%s-wal", path), unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", path), unlink(wal);
    printf("  softmax ICR %.3f over %d settings, SC %.3f; parallax ICR %.3f\n", seen.icr_softmax,
           seen.icr_settings, seen.sc_softmax, seen.icr_parallax);
    assert_int_equal(n, 2);
    assert_int_equal(seen.calls, 2);
    assert_int_equal(seen.icr_settings, 2);
    assert_true(fabs(seen.icr_softmax - (0.8 + 0.4) / 2) < 1e-12);
    assert_true(fabs(seen.sc_softmax - 0.9) < 1e-12);
    assert_true(fabs(seen.icr_parallax - 0.7) < 1e-12);
    assert_true(fabs(seen.c_softmax - 0.3) < 1e-12);
    assert_true(fabs(seen.c_parallax - 0.35) < 1e-12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_score_by_hand),
        cmocka_unit_test(test_score_full_grid),
        cmocka_unit_test(test_score_from_db),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
