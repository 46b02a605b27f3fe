/* plab sweep FILE.yaml [--db PATH] [--dry-run] [--workers N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../db/db.h"
#include "../sweeps/runner.h"
#include "../sweeps/sweep.h"
#include "cli.h"

void help_sweep(void) {
    printf("usage: plab sweep FILE.yaml [--db PATH] [--dry-run] [--workers N]\n\n"
           "Expands the sweep's grid (or draws its random runs), prints the plan and runs every\n"
           "run that is not already finished in the database (default plab.db). A run is\n"
           "identified by the hash of its resolved config, so re-running the same command after\n"
           "an interrupt (Ctrl-C, kill -9) resumes: finished runs are skipped, the interrupted\n"
           "one is redone. Failed runs are retried; diverged ones are kept.\n\n"
           "  --db PATH     results database (created when missing)\n"
           "  --dry-run     print the runs and write nothing\n"
           "  --workers N   train N runs at once, each in its own process (default 1)\n\n"
           "Sweep file (W&B key names, run keys as in `plab train`; see docs/sweeps.md):\n"
           "  name: icr-demo\n  method: grid            # grid | random (random needs run_cap)\n"
           "  metric: {name: test_acc, goal: maximize}\n"
           "  base: {task: in_context_recall, epochs: 3}\n"
           "  parameters:\n    model.mixer: {values: [softmax, parallax]}\n"
           "    lr: {values: [1e-3, 3e-3]}\n"
           "    setting: {values: [{task.vocab_size: 32}, {task.seq_len: 256}]}   # tied keys\n\n"
           "Then: plab runs; plab query \"SELECT mixer, max(test_acc) FROM run_summary GROUP BY mixer\"\n");
}

static void print_plan(const Sweep *s, const Plan *p, int all) {
    printf("sweep %s (%s", s->name, s->random ? "random" : "grid");
    if (!s->random) {
        printf(": ");
        for (int i = 0; i < s->nparams; i++) printf("%s%d", i ? " x " : "", s->params[i].nvalues);
        printf(" = %ld points", p->generated + p->capped);
    } else {
        printf(": %ld draws, seed %lu", p->generated, s->seed);
    }
    printf(") -> %d runs", p->n);
    if (p->duplicates) printf(", %d duplicate config%s removed", p->duplicates, p->duplicates > 1 ? "s" : "");
    if (p->capped) printf(", %d left out by run_cap", p->capped);
    printf("\n");
    if (s->description) printf("  %s\n", s->description);
    int show = all ? p->n : 0;
    for (int i = 0; i < show; i++) printf("  %4d  %s  %s\n", i + 1, p->runs[i].hash, p->runs[i].overrides);
}

static void print_best(const Sweep *s, const char *path) {
    Err err;
    sqlite3 *db = db_open(path, 0, &err);
    if (!db) return;
    const char *kind = !strcmp(s->metric, "test_acc") || !strcmp(s->metric, "test_token_acc")
                           ? "at_best_ppl" : !strcmp(s->metric, "test_ppl") ? "best" : "last";
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT r.id, r.overrides, f.value FROM runs r JOIN final_metrics f ON f.run_id = r.id "
             "AND f.key = ?2 AND f.kind = ?3 WHERE r.sweep = ?1 AND r.status = 'finished' "
             "AND f.value IS NOT NULL ORDER BY f.value %s LIMIT 1", s->maximize ? "DESC" : "ASC");
    sqlite3_stmt *st = db_prepare(db, sql);
    SQL_CHECK(db, sqlite3_bind_text(st, 1, s->name, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, s->metric, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        printf("best run (%s %s): run %lld %s  %s %.4f\n", s->metric, s->maximize ? "max" : "min",
               (long long)sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1), s->metric,
               sqlite3_column_double(st, 2));
    else if (rc != SQLITE_DONE) db_check_fail(db, rc, "best run", __FILE__, __LINE__);
    db_finalize(db, st);
    db_close(db);
}

int cmd_sweep(int argc, char **argv) {
    const char *file = NULL, *db = "plab.db";
    int dry = 0, workers = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--dry-run")) dry = 1;
        else if (!strcmp(a, "--db") && i + 1 < argc) db = argv[++i];
        else if (!strncmp(a, "--db=", 5)) db = a + 5;
        else if ((!strcmp(a, "--workers") && i + 1 < argc) || !strncmp(a, "--workers=", 10)) {
            const char *v = a[9] == '=' ? a + 10 : argv[++i];
            char *end;
            long n = strtol(v, &end, 10);
            if (!*v || *end || n < 1 || n > 64) {
                fprintf(stderr, "plab sweep: --workers '%s' is not an integer in [1, 64]\n", v);
                return 2;
            }
            workers = (int)n;
        } else if (a[0] == '-') {
            fprintf(stderr, "plab sweep: unknown option '%s' (see plab sweep --help)\n", a);
            return 2;
        } else if (!file) file = a;
        else {
            fprintf(stderr, "plab sweep: one sweep file at a time ('%s' and '%s')\n", file, a);
            return 2;
        }
    }
    if (!file) {
        fprintf(stderr, "plab sweep: missing the sweep file (usage: plab sweep FILE.yaml [--db PATH] "
                        "[--dry-run] [--workers N])\n");
        return 2;
    }
    /* everything that can be wrong with the sweep is found before the database is touched */
    Sweep *s;
    Err err = {{0}};
    if (sweep_load_file(file, &s, &err) != 0) {
        fprintf(stderr, "plab sweep: %s\n", err.msg);
        return 2;
    }
    Plan plan;
    if (sweep_plan(s, &plan, &err) != 0) {
        fprintf(stderr, "plab sweep: %s\n", err.msg);
        sweep_free(s);
        return 2;
    }
    print_plan(s, &plan, dry);
    if (dry) {
        printf("dry run: nothing was written\n");
        plan_free(&plan), sweep_free(s);
        return 0;
    }
    RunnerOpts o = {db, workers, isatty(STDERR_FILENO)};
    RunnerStats st;
    int rc = sweep_run(s, &plan, &o, &st, &err);
    if (rc < 0) {
        fprintf(stderr, "plab sweep: %s\n", err.msg);
        plan_free(&plan), sweep_free(s);
        return 2;
    }
    printf("%s: %d finished, %d diverged, %d failed in this invocation; %d done before",
           rc == 130 ? "interrupted" : "done", st.finished, st.diverged, st.failed, st.done_before);
    if (st.elsewhere) printf("; %d run by another process", st.elsewhere);
    printf("\n");
    if (rc == 130)
        printf("%d interrupted run%s queued again: re-run the same command to resume\n", st.interrupted,
               st.interrupted == 1 ? "" : "s");
    else print_best(s, db);
    plan_free(&plan), sweep_free(s);
    return rc;
}
