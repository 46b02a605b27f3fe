#include "results.h"

#include "../train/train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

void results_sweep_begin(sqlite3 *db, const char *name, const char *yaml, const char *file) {
    char now[32];
    db_now(now);
    sqlite3_stmt *st = db_prepare(db,
        "INSERT INTO sweeps(name, yaml, file, created, updated) VALUES (?1, ?2, ?3, ?4, ?4) "
        "ON CONFLICT(name) DO UPDATE SET yaml = excluded.yaml, file = excluded.file, "
        "updated = excluded.updated");
    SQL_CHECK(db, sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, yaml, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 3, file, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 4, now, -1, SQLITE_TRANSIENT));
    db_step_done(db, st);
    db_finalize(db, st);
}

int results_queue(sqlite3 *db, const char *sweep, const char *hash, const char *overrides,
                  const Config *cfg) {
    char now[32];
    db_now(now);
    sqlite3_stmt *st = db_prepare(db,
        "INSERT INTO runs(sweep, config_hash, overrides, status, queued_at) "
        "VALUES (?1, ?2, ?3, 'queued', ?4) ON CONFLICT(sweep, config_hash) DO NOTHING");
    SQL_CHECK(db, sqlite3_bind_text(st, 1, sweep, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, hash, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 3, overrides, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 4, now, -1, SQLITE_TRANSIENT));
    db_step_done(db, st);
    db_finalize(db, st);
    if (sqlite3_changes(db) == 0) return 0;
    long id = (long)sqlite3_last_insert_rowid(db);
    /* params: every key of the resolved config, then the model's sizes
     * (info.*, derived, not keys), all as "key=value\n" lines */
    char *keys = cfg_canonical(cfg, 0), *info = run_size_info(cfg);
    char *text = xmalloc(strlen(keys) + strlen(info) + 1);
    strcat(strcpy(text, keys), info);
    free(keys), free(info);
    st = db_prepare(db, "INSERT INTO params(run_id, key, value) VALUES (?1, ?2, ?3)");
    for (char *line = text, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        CHECK(nl, "cfg_canonical line without newline");
        char *eq = strchr(line, '=');
        CHECK(eq && eq < nl, "cfg_canonical line without '='");
        SQL_CHECK(db, sqlite3_bind_int64(st, 1, id));
        SQL_CHECK(db, sqlite3_bind_text(st, 2, line, (int)(eq - line), SQLITE_TRANSIENT));
        SQL_CHECK(db, sqlite3_bind_text(st, 3, eq + 1, (int)(nl - eq - 1), SQLITE_TRANSIENT));
        db_step_done(db, st);
    }
    db_finalize(db, st);
    free(text);
    return 1;
}

void results_status(sqlite3 *db, const char *sweep, const char *hash, char out[16]) {
    sqlite3_stmt *st = db_prepare(db, "SELECT status FROM runs WHERE sweep = ?1 AND config_hash = ?2");
    SQL_CHECK(db, sqlite3_bind_text(st, 1, sweep, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, hash, -1, SQLITE_TRANSIENT));
    int rc = sqlite3_step(st);
    out[0] = 0;
    if (rc == SQLITE_ROW) snprintf(out, 16, "%s", (const char *)sqlite3_column_text(st, 0));
    else if (rc != SQLITE_DONE) db_check_fail(db, rc, "results_status", __FILE__, __LINE__);
    db_finalize(db, st);
}

static int pid_alive(long pid) { return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM); }

int results_requeue_stale(sqlite3 *db, const char *sweep, const char *host) {
    db_begin(db);
    sqlite3_stmt *sel = db_prepare(db,
        "SELECT id, worker_pid FROM runs WHERE sweep = ?1 AND status = 'running' AND host = ?2");
    SQL_CHECK(db, sqlite3_bind_text(sel, 1, sweep, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(sel, 2, host, -1, SQLITE_TRANSIENT));
    sqlite3_stmt *upd = db_prepare(db, "UPDATE runs SET status = 'queued' WHERE id = ?1");
    int n = 0, rc;
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        if (pid_alive((long)sqlite3_column_int64(sel, 1))) continue;
        SQL_CHECK(db, sqlite3_bind_int64(upd, 1, sqlite3_column_int64(sel, 0)));
        db_step_done(db, upd);
        n++;
    }
    if (rc != SQLITE_DONE) db_check_fail(db, rc, "results_requeue_stale", __FILE__, __LINE__);
    db_finalize(db, sel), db_finalize(db, upd);
    sqlite3_stmt *st = db_prepare(db, "UPDATE runs SET status = 'queued' WHERE sweep = ?1 AND status = 'failed'");
    SQL_CHECK(db, sqlite3_bind_text(st, 1, sweep, -1, SQLITE_TRANSIENT));
    db_step_done(db, st);
    n += sqlite3_changes(db);
    db_finalize(db, st);
    db_commit(db);
    return n;
}

static void delete_history(sqlite3 *db, long id) {
    static const char *const sql[] = {"DELETE FROM metrics WHERE run_id = ?1",
                                      "DELETE FROM final_metrics WHERE run_id = ?1",
                                      "DELETE FROM attn_hist WHERE run_id = ?1",
                                      "DELETE FROM attn_sink WHERE run_id = ?1",
                                      "DELETE FROM layer_diag WHERE run_id = ?1"};
    for (size_t i = 0; i < sizeof sql / sizeof *sql; i++) {
        sqlite3_stmt *st = db_prepare(db, sql[i]);
        SQL_CHECK(db, sqlite3_bind_int64(st, 1, id));
        db_step_done(db, st);
        db_finalize(db, st);
    }
}

long results_claim(sqlite3 *db, const char *sweep, const char *hash, long pid, const char *host,
                   const char *git, const char *device) {
    char now[32];
    db_now(now);
    db_begin(db);
    sqlite3_stmt *st = db_prepare(db,
        "UPDATE runs SET status = 'running', attempts = attempts + 1, worker_pid = ?3, host = ?4, "
        "git_commit = ?5, device = ?6, started_at = ?7, finished_at = NULL, error = NULL, step = NULL "
        "WHERE sweep = ?1 AND config_hash = ?2 AND status = 'queued' RETURNING id");
    SQL_CHECK(db, sqlite3_bind_text(st, 1, sweep, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, hash, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_int64(st, 3, pid));
    SQL_CHECK(db, sqlite3_bind_text(st, 4, host, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 5, git, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 6, device, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 7, now, -1, SQLITE_TRANSIENT));
    long id = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        id = (long)sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE) db_check_fail(db, rc, "results_claim", __FILE__, __LINE__);
    db_finalize(db, st);
    if (id) delete_history(db, id);
    db_commit(db);
    return id;
}

void results_requeue(sqlite3 *db, long run_id) {
    db_begin(db);
    sqlite3_stmt *st = db_prepare(db,
        "UPDATE runs SET status = 'queued', started_at = NULL, step = NULL, error = NULL "
        "WHERE id = ?1 AND status = 'running'");
    SQL_CHECK(db, sqlite3_bind_int64(st, 1, run_id));
    db_step_done(db, st);
    db_finalize(db, st);
    delete_history(db, run_id);
    db_commit(db);
}

int results_fail_if_running(sqlite3 *db, long run_id, const char *reason, long step) {
    char now[32];
    db_now(now);
    sqlite3_stmt *st = db_prepare(db,
        "UPDATE runs SET status = 'failed', error = ?2, finished_at = ?3, step = ?4 "
        "WHERE id = ?1 AND status = 'running'");
    SQL_CHECK(db, sqlite3_bind_int64(st, 1, run_id));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, reason, -1, SQLITE_TRANSIENT));
    SQL_CHECK(db, sqlite3_bind_text(st, 3, now, -1, SQLITE_TRANSIENT));
    if (step >= 0) SQL_CHECK(db, sqlite3_bind_int64(st, 4, step));
    db_step_done(db, st);
    db_finalize(db, st);
    return sqlite3_changes(db) > 0;
}

/* ---- the worker's writer ---------------------------------------------------------- */

typedef struct {
    long step;
    int epoch;
    char key[32];
    double value;
} MetricRow;

typedef struct {
    char key[32], kind[16];
    double value;
} FinalRow;

struct ResultWriter {
    sqlite3 *db;
    long run_id;
    int n, cap, nf, fcap;
    MetricRow *rows;
    FinalRow *finals;
};

ResultWriter *results_writer(sqlite3 *db, long run_id) {
    ResultWriter *w = xcalloc(1, sizeof *w);
    w->db = db;
    w->run_id = run_id;
    w->cap = 256;
    w->rows = xmalloc(sizeof(MetricRow) * (size_t)w->cap);
    return w;
}

static void bind_value(sqlite3 *db, sqlite3_stmt *st, int i, double v) {
    if (isnan(v)) SQL_CHECK(db, sqlite3_bind_null(st, i)); /* SQLite has no NaN */
    else SQL_CHECK(db, sqlite3_bind_double(st, i, v));
}

static void write_rows(ResultWriter *w) {
    sqlite3_stmt *st = db_prepare(w->db,
        "INSERT INTO metrics(run_id, step, epoch, key, value) VALUES (?1, ?2, ?3, ?4, ?5)");
    for (int i = 0; i < w->n; i++) {
        SQL_CHECK(w->db, sqlite3_bind_int64(st, 1, w->run_id));
        SQL_CHECK(w->db, sqlite3_bind_int64(st, 2, w->rows[i].step));
        SQL_CHECK(w->db, sqlite3_bind_int(st, 3, w->rows[i].epoch));
        SQL_CHECK(w->db, sqlite3_bind_text(st, 4, w->rows[i].key, -1, SQLITE_TRANSIENT));
        bind_value(w->db, st, 5, w->rows[i].value);
        db_step_done(w->db, st);
    }
    db_finalize(w->db, st);
    w->n = 0;
}

void results_metric(ResultWriter *w, long step, int epoch, const char *key, double value) {
    if (w->n == w->cap) results_flush(w);
    MetricRow *r = &w->rows[w->n++];
    r->step = step, r->epoch = epoch, r->value = value;
    snprintf(r->key, sizeof r->key, "%s", key);
}

void results_final(ResultWriter *w, const char *key, const char *kind, double value) {
    if (w->nf == w->fcap) w->finals = xrealloc(w->finals, sizeof(FinalRow) * (size_t)(w->fcap = 2 * w->fcap + 16));
    FinalRow *f = &w->finals[w->nf++];
    snprintf(f->key, sizeof f->key, "%s", key);
    snprintf(f->kind, sizeof f->kind, "%s", kind);
    f->value = value;
}

void results_flush(ResultWriter *w) {
    if (w->n == 0) return;
    db_begin(w->db);
    write_rows(w);
    db_commit(w->db);
}

void results_end(ResultWriter *w, const char *status, long step, const char *reason) {
    char now[32];
    db_now(now);
    db_begin(w->db);
    write_rows(w);
    sqlite3_stmt *st = db_prepare(w->db,
        "INSERT OR REPLACE INTO final_metrics(run_id, key, kind, value) VALUES (?1, ?2, ?3, ?4)");
    for (int i = 0; i < w->nf; i++) {
        SQL_CHECK(w->db, sqlite3_bind_int64(st, 1, w->run_id));
        SQL_CHECK(w->db, sqlite3_bind_text(st, 2, w->finals[i].key, -1, SQLITE_TRANSIENT));
        SQL_CHECK(w->db, sqlite3_bind_text(st, 3, w->finals[i].kind, -1, SQLITE_TRANSIENT));
        bind_value(w->db, st, 4, w->finals[i].value);
        db_step_done(w->db, st);
    }
    db_finalize(w->db, st);
    st = db_prepare(w->db,
        "UPDATE runs SET status = ?2, finished_at = ?3, step = ?4, error = ?5 WHERE id = ?1");
    SQL_CHECK(w->db, sqlite3_bind_int64(st, 1, w->run_id));
    SQL_CHECK(w->db, sqlite3_bind_text(st, 2, status, -1, SQLITE_TRANSIENT));
    SQL_CHECK(w->db, sqlite3_bind_text(st, 3, now, -1, SQLITE_TRANSIENT));
    SQL_CHECK(w->db, sqlite3_bind_int64(st, 4, step));
    if (reason && *reason) SQL_CHECK(w->db, sqlite3_bind_text(st, 5, reason, -1, SQLITE_TRANSIENT));
    db_step_done(w->db, st);
    db_finalize(w->db, st);
    db_commit(w->db);
    free(w->rows), free(w->finals);
    free(w);
}
