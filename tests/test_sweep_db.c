/* The results database: refusing files that are not ours or too new, the
 * atomic claim (one worker per run), requeueing after a dead sweep process,
 * outcome rows, and the MAD score views against a hand computation. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../db/results.h"

static char dir[256];

static const char *path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void raw_sql(const char *file, const char *sql) {
    sqlite3 *db;
    assert_int_equal(sqlite3_open(file, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static long one_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = db_prepare(db, sql);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long v = (long)sqlite3_column_int64(st, 0);
    db_finalize(db, st);
    return v;
}

static void test_refuses_foreign_and_newer(void **s) {
    (void)s;
    Err e = {{0}};
    FILE *f = fopen(path("text.db"), "w");
    fputs("hello, not a database\n", f);
    fclose(f);
    assert_null(db_open(path("text.db"), 1, &e));
    assert_non_null(strstr(e.msg, "is not a plab database (not an SQLite file)"));

    raw_sql(path("other.db"), "CREATE TABLE t(x)");
    assert_null(db_open(path("other.db"), 1, &e));
    assert_non_null(strstr(e.msg, "is an SQLite database but not a plab database"));

    assert_null(db_open(path("missing.db"), 0, &e));
    assert_non_null(strstr(e.msg, "no results database at"));

    sqlite3 *db = db_open(path("new.db"), 1, &e);
    assert_non_null(db);
    assert_int_equal(one_int(db, "PRAGMA user_version"), DB_SCHEMA_VERSION);
    assert_int_equal(one_int(db, "PRAGMA application_id"), DB_APPLICATION_ID);
    db_close(db);
    db = db_open(path("new.db"), 0, &e); /* reopening changes nothing */
    assert_non_null(db);
    db_close(db);
    raw_sql(path("new.db"), "PRAGMA user_version = 99");
    assert_null(db_open(path("new.db"), 0, &e));
    assert_non_null(strstr(e.msg, "schema version 99, newer than this plab understands"));
}

static Config *small_cfg(const char *lr) {
    Config *c = cfg_new();
    Err e;
    assert_int_equal(cfg_set(c, "lr", lr, &e), 0);
    return c;
}

static void test_claim_requeue_and_outcome(void **s) {
    (void)s;
    Err e;
    sqlite3 *db = db_open(path("claim.db"), 1, &e);
    assert_non_null(db);
    results_sweep_begin(db, "sw", "method: grid", "sw.yaml");
    Config *a = small_cfg("1e-3"), *b = small_cfg("2e-3");
    db_begin(db);
    assert_int_equal(results_queue(db, "sw", "aaaa", "lr=1e-3", a), 1);
    assert_int_equal(results_queue(db, "sw", "bbbb", "lr=2e-3", b), 1);
    assert_int_equal(results_queue(db, "sw", "aaaa", "lr=1e-3", a), 0); /* already there */
    db_commit(db);
    long nkeys = 0; /* every key with a value (unresolved task keys have none) */
    for (int i = 0; i < a->n; i++) nkeys += a->values[i] != NULL;
    assert_true(nkeys > 40);
    /* plus the three derived info.* sizes */
    assert_int_equal(one_int(db, "SELECT count(*) FROM params WHERE run_id = 1"), nkeys + 3);
    assert_int_equal(one_int(db, "SELECT count(*) FROM params WHERE key = 'lr' AND value = '0.002'"), 1);

    long id = results_claim(db, "sw", "aaaa", (long)getpid(), "h", "abc", "cpu");
    assert_true(id > 0);
    assert_int_equal(results_claim(db, "sw", "aaaa", (long)getpid(), "h", "abc", "cpu"), 0);
    ResultWriter *w = results_writer(db, id);
    results_metric(w, 0, 0, "train_loss", 2.5);
    results_metric(w, 1, 0, "train_loss", NAN);
    results_flush(w);
    /* abandon the writer, as a killed worker would: the flushed rows stay */
    assert_int_equal(one_int(db, "SELECT count(*) FROM metrics WHERE run_id = 1"), 2);
    assert_int_equal(one_int(db, "SELECT count(*) FROM metrics WHERE value IS NULL"), 1);

    /* our own process is alive: nothing to requeue */
    assert_int_equal(results_requeue_stale(db, "sw", "h"), 0);
    /* a dead sweep process: requeued, and the redo starts with no old rows */
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE runs SET worker_pid = %d WHERE id = %ld", (int)child, id);
    db_exec(db, sql);
    assert_int_equal(results_requeue_stale(db, "sw", "other-host"), 0); /* not ours to judge */
    assert_int_equal(results_requeue_stale(db, "sw", "h"), 1);
    assert_int_equal(results_claim(db, "sw", "aaaa", (long)getpid(), "h", "abc", "cpu"), id);
    assert_int_equal(one_int(db, "SELECT count(*) FROM metrics WHERE run_id = 1"), 0);
    assert_int_equal(one_int(db, "SELECT attempts FROM runs WHERE id = 1"), 2);

    w = results_writer(db, id);
    results_metric(w, 0, 0, "train_loss", 2.0);
    results_final(w, "test_acc", "at_best_ppl", 0.75);
    results_end(w, "finished", 10, NULL);
    assert_int_equal(one_int(db, "SELECT count(*) FROM runs WHERE status = 'finished' AND step = 10"), 1);
    assert_int_equal(one_int(db, "SELECT count(*) FROM run_summary WHERE test_acc = 0.75"), 1);

    long id2 = results_claim(db, "sw", "bbbb", (long)getpid(), "h", "abc", "cpu");
    w = results_writer(db, id2);
    results_end(w, "diverged", 3, "train loss is nan at step 3");
    assert_int_equal(one_int(db, "SELECT count(*) FROM runs WHERE status = 'diverged' AND "
                                 "error = 'train loss is nan at step 3' AND step = 3"), 1);
    /* a failed run goes back to the queue on the next sweep; a diverged one stays */
    db_exec(db, "UPDATE runs SET status = 'failed' WHERE id = 1");
    assert_int_equal(results_requeue_stale(db, "sw", "h"), 1);
    assert_int_equal(one_int(db, "SELECT count(*) FROM runs WHERE status = 'queued'"), 1);
    assert_int_equal(one_int(db, "SELECT count(*) FROM runs WHERE status = 'diverged'"), 1);
    db_close(db);
    cfg_free(a), cfg_free(b);
}

/* ---- MAD score views -------------------------------------------------------------- */

static void add_run(sqlite3 *db, int id, const char *status, const char *mixer, const char *task,
                    int vocab, double lr, double wd, double acc) {
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO runs(id, sweep, config_hash, overrides, status, queued_at) "
             "VALUES (%d, 'mad', 'h%d', '', '%s', 'now');"
             "INSERT INTO params VALUES (%d, 'model.mixer', '%s'), (%d, 'task', '%s'),"
             " (%d, 'task.vocab_size', '%d'), (%d, 'lr', '%g'), (%d, 'weight_decay', '%g'),"
             " (%d, 'seed', '1'), (%d, 'device', 'cpu'), (%d, 'model.d_model', '128'),"
             " (%d, 'mixer.window', '0'), (%d, 'model.backbone', '%s');"
             "INSERT INTO final_metrics VALUES (%d, 'test_acc', 'at_best_ppl', %.17g),"
             " (%d, 'test_acc', 'best', 1.0);",
             id, id, status, id, mixer, id, task, id, vocab, id, lr, id, wd, id, id, id, id, id,
             /* a task preset (compression's backbone) must not split a mechanism */
             strcmp(task, "compression") ? "lm" : "autoencoder", id, acc, id);
    db_exec(db, sql);
}

static void test_mad_score_views(void **s) {
    (void)s;
    Err e;
    sqlite3 *db = db_open(path("mad.db"), 1, &e);
    assert_non_null(db);
    results_sweep_begin(db, "mad", "", "");
    const char *mixers[2] = {"softmax", "parallax"};
    const char *tasks[2] = {"in_context_recall", "compression"};
    int nset[2] = {3, 2}; /* settings per task (vocab sizes) */
    double lrs[3] = {1e-4, 5e-4, 1e-3}, wds[2] = {0, 0.1};
    gsl_rng *r = test_rng(3);
    int id = 1;
    double expect[2];
    for (int m = 0; m < 2; m++) {
        double task_sum = 0;
        for (int t = 0; t < 2; t++) {
            double set_sum = 0;
            for (int k = 0; k < nset[t]; k++) {
                double best = 0;
                for (int a = 0; a < 3; a++)
                    for (int b = 0; b < 2; b++) {
                        double acc = gsl_rng_uniform(r);
                        add_run(db, id++, "finished", mixers[m], tasks[t], 16 << k, lrs[a], wds[b], acc);
                        if (acc > best) best = acc;
                    }
                /* runs that failed or diverged never count, whatever they hold */
                add_run(db, id++, "diverged", mixers[m], tasks[t], 16 << k, 1e-2, 0, 2.0);
                add_run(db, id++, "failed", mixers[m], tasks[t], 16 << k, 2e-2, 0, 3.0);
                set_sum += best;
            }
            task_sum += set_sum / nset[t];
        }
        expect[m] = task_sum / 2;
    }
    gsl_rng_free(r);
    sqlite3_stmt *st = db_prepare(db, "SELECT mixer, mad_score, tasks, settings, runs, mechanism FROM mad_score");
    int rows = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *mixer = (const char *)sqlite3_column_text(st, 0);
        int m = !strcmp(mixer, "parallax");
        printf("  %-8s mad_score %.12f expected %.12f\n", mixer, sqlite3_column_double(st, 1), expect[m]);
        assert_true(fabs(sqlite3_column_double(st, 1) - expect[m]) < 1e-12);
        assert_int_equal(sqlite3_column_int(st, 2), 2);
        assert_int_equal(sqlite3_column_int(st, 3), 5);
        assert_int_equal(sqlite3_column_int(st, 4), 30);
        char mech[64];
        snprintf(mech, sizeof mech, "mixer.window=0 model.mixer=%s", mixer);
        assert_string_equal((const char *)sqlite3_column_text(st, 5), mech);
        rows++;
    }
    assert_int_equal(rc, SQLITE_DONE);
    db_finalize(db, st);
    assert_int_equal(rows, 2);
    db_close(db);
}

/* the binary carries db/schema.sql as it is on disk (a stale build fails here) */
static void test_embedded_schema_is_the_file(void **s) {
    (void)s;
    FILE *f = fopen("db/schema.sql", "rb");
    if (!f) {
        printf("  run from the repository root to compare with db/schema.sql\n");
        skip();
    }
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    assert_string_equal(db_schema_sql(), buf);
}

static int setup(void **s) {
    (void)s;
    snprintf(dir, sizeof dir, "/tmp/plab_test_sweep_db_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **s) {
    (void)s;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_schema_is_the_file),
        cmocka_unit_test(test_refuses_foreign_and_newer),
        cmocka_unit_test(test_claim_requeue_and_outcome),
        cmocka_unit_test(test_mad_score_views),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
