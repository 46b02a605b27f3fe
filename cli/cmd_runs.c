/* plab runs [--sweep NAME | --all] [--db PATH] [--format ...]: the runs of a
 * sweep with status and result (default: the sweep started last). */
#include <stdio.h>
#include <string.h>

#include "../db/db.h"
#include "cli.h"

void help_runs(void) {
    printf("usage: plab runs [--sweep NAME | --all] [--db PATH] [--format table|csv|json]\n\n"
           "Lists the runs of a sweep (default: the one started last) with their status\n"
           "(queued, running, finished, failed, diverged), test accuracy and, for failed or\n"
           "diverged runs, the reason. --all lists every sweep's runs.\n");
}

int cmd_runs(int argc, char **argv) {
    const char *path = "plab.db", *sweep = NULL, *format = "table";
    int all = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc) path = argv[++i];
        else if (!strncmp(argv[i], "--db=", 5)) path = argv[i] + 5;
        else if (!strcmp(argv[i], "--sweep") && i + 1 < argc) sweep = argv[++i];
        else if (!strncmp(argv[i], "--sweep=", 8)) sweep = argv[i] + 8;
        else if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
        else if (!strncmp(argv[i], "--format=", 9)) format = argv[i] + 9;
        else if (!strcmp(argv[i], "--all")) all = 1;
        else {
            fprintf(stderr, "plab runs: unknown argument '%s' (see plab runs --help)\n", argv[i]);
            return 2;
        }
    }
    Err err;
    sqlite3 *db = db_open(path, 0, &err);
    if (!db) {
        fprintf(stderr, "plab runs: %s\n", err.msg);
        return 2;
    }
    char name[512] = "";
    if (!all) {
        sqlite3_stmt *st = db_prepare(db, sweep ? "SELECT name FROM sweeps WHERE name = ?1"
                                                : "SELECT name FROM sweeps ORDER BY updated DESC, rowid DESC LIMIT 1");
        if (sweep) SQL_CHECK(db, sqlite3_bind_text(st, 1, sweep, -1, SQLITE_TRANSIENT));
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) snprintf(name, sizeof name, "%s", (const char *)sqlite3_column_text(st, 0));
        else if (rc != SQLITE_DONE) db_check_fail(db, rc, "runs", __FILE__, __LINE__);
        db_finalize(db, st);
        if (!name[0]) {
            if (sweep) fprintf(stderr, "plab runs: no sweep named '%s' in %s (plab runs --all lists every run)\n", sweep, path);
            else fprintf(stderr, "plab runs: %s holds no sweep yet\n", path);
            db_close(db);
            return 1;
        }
    }
    /* names are bound through SQL quoting: quote() escapes them */
    char *where = name[0] ? sqlite3_mprintf("WHERE sweep = %Q", name) : sqlite3_mprintf("%s", "");
    CHECK(where, "sqlite3_mprintf failed");
    char *sql = sqlite3_mprintf(
        "SELECT sweep, runs, finished, diverged, failed, running, queued FROM sweep_progress %s;"
        "SELECT id, status, round(test_acc, 4) AS test_acc, round(best_test_acc, 4) AS best_acc, "
        "epochs, round(seconds, 1) AS seconds, overrides, coalesce(error, '') AS error "
        "FROM run_summary %s ORDER BY id;", where, where);
    CHECK(sql, "sqlite3_mprintf failed");
    int rc = query_print(db, sql, format);
    sqlite3_free(sql), sqlite3_free(where);
    db_close(db);
    return rc;
}
