/* The MAD score of every mechanism in a results database: rows of the
 * `mad_run` view (db/schema.sql: finished runs, their task, setting, mechanism
 * and MAD test accuracy at best perplexity) grouped by mechanism, through
 * mad_score().
 *
 * A task may preset model keys (compression: model.backbone=autoencoder and
 * model.init=normal, mad.md §4.2), so its runs carry a different mechanism text
 * than the other tasks' runs of the same model. Such a row joins every
 * mechanism that equals its own once the task's preset keys are removed from
 * both; rows that join none form their own mechanism. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db.h"
#include "../tasks/task.h"
#include "mad_score.h"

typedef struct {
    char *mech, *mixer, *task, *setting;
    char pk[256]; /* model keys its task presets, "" for most tasks */
    char *own;    /* mech without pk */
    double acc;
} DbRow;

/* the non-task keys a task presets ("model.backbone model.init"), or "" */
static void preset_keys(const char *task, char *out, size_t cap) {
    out[0] = 0;
    const Task *t = task_find(task);
    if (!t) return;
    char *d = xstrdup(t->defaults), *save = NULL;
    for (char *kv = strtok_r(d, " ", &save); kv; kv = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq || !strncmp(kv, "task.", 5)) continue;
        *eq = 0;
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", out[0] ? " " : "", kv);
    }
    free(d);
}

/* the mechanism text without the given keys */
static char *strip(const char *mech, const char *keys) {
    char *out = xcalloc(strlen(mech) + 1, 1), *m = xstrdup(mech), *save = NULL;
    for (char *kv = strtok_r(m, " ", &save); kv; kv = strtok_r(NULL, " ", &save)) {
        const char *eq = strchr(kv, '=');
        size_t kl = eq ? (size_t)(eq - kv) : strlen(kv);
        int drop = 0;
        for (const char *k = keys; *k && !drop;) {
            size_t l = strcspn(k, " ");
            drop = l == kl && !strncmp(k, kv, kl);
            k += l + (k[l] == ' ');
        }
        if (!drop) strcat(strcat(out, out[0] ? " " : ""), kv);
    }
    free(m);
    return out;
}

/* does row r belong to the mechanism `mech`? (see the header comment) */
static int belongs(const DbRow *r, const char *mech) {
    if (!r->pk[0]) return !strcmp(r->mech, mech);
    char *b = strip(mech, r->pk);
    int same = !strcmp(r->own, b);
    free(b);
    return same;
}

static void score_rows(const DbRow *rows, const char *use, int n, const char *mech,
                       const char *mixer, MadScoreFn fn, void *ctx) {
    MadRow *mr = xmalloc(sizeof(MadRow) * (size_t)(n ? n : 1));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (use[i]) mr[m++] = (MadRow){rows[i].task, rows[i].setting, NAN, NAN, rows[i].acc};
    MadScore s;
    mad_score(mr, m, &s);
    fn(ctx, mech, mixer, &s);
    free(mr);
}

int mad_score_db(struct sqlite3 *db, MadScoreFn fn, void *ctx) {
    sqlite3_stmt *st = db_prepare(
        db, "SELECT coalesce(mechanism, ''), coalesce(mixer, ''), task, coalesce(setting, ''), "
            "test_acc FROM mad_run ORDER BY mechanism, task, setting");
    DbRow *rows = NULL;
    int n = 0, cap = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) rows = xrealloc(rows, sizeof(DbRow) * (size_t)(cap = cap ? 2 * cap : 256));
        DbRow *r = &rows[n++];
        const char *c[4];
        for (int i = 0; i < 4; i++) {
            c[i] = (const char *)sqlite3_column_text(st, i);
            if (!c[i]) c[i] = "";
        }
        r->mech = xstrdup(c[0]), r->mixer = xstrdup(c[1]), r->task = xstrdup(c[2]);
        r->setting = xstrdup(c[3]);
        /* NaN results are stored as NULL: MAD drops them */
        r->acc = sqlite3_column_type(st, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 4);
    }
    if (rc != SQLITE_DONE) db_check_fail(db, rc, "reading mad_run", __FILE__, __LINE__);
    db_finalize(db, st);
    for (int i = 0; i < n; i++) {
        preset_keys(rows[i].task, rows[i].pk, sizeof rows[i].pk);
        rows[i].own = strip(rows[i].mech, rows[i].pk);
    }
    /* mechanisms: those of rows whose task presets nothing, then those of
     * presetting rows that joined none */
    int groups = 0;
    char *joined = xcalloc((size_t)(n ? n : 1), 1), *use = xcalloc((size_t)(n ? n : 1), 1);
    for (int i = 0; i < n; i++) {
        if (rows[i].pk[0] || joined[i]) continue;
        for (int j = 0; j < n; j++) {
            use[j] = belongs(&rows[j], rows[i].mech);
            if (use[j]) joined[j] = 1;
        }
        score_rows(rows, use, n, rows[i].mech, rows[i].mixer, fn, ctx);
        groups++;
    }
    for (int i = 0; i < n; i++) {
        if (joined[i]) continue;
        for (int j = 0; j < n; j++) {
            use[j] = !joined[j] && !strcmp(rows[j].mech, rows[i].mech);
            if (use[j]) joined[j] = 1;
        }
        score_rows(rows, use, n, rows[i].mech, rows[i].mixer, fn, ctx);
        groups++;
    }
    free(joined), free(use);
    for (int i = 0; i < n; i++)
        free(rows[i].mech), free(rows[i].mixer), free(rows[i].task), free(rows[i].setting), free(rows[i].own);
    free(rows);
    return groups;
}
