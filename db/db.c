/* Opening, checking and migrating the results database; checked helpers. */
#include "db.h"

#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void db_check_fail(sqlite3 *db, int rc, const char *what, const char *file, int line) {
    plab_die(file, line, "sqlite: %s (code %d) in %s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
             rc, what);
}

void db_exec(sqlite3 *db, const char *sql) {
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) DIE("sqlite: %s (code %d) in: %.200s", msg ? msg : sqlite3_errstr(rc), rc, sql);
}

sqlite3_stmt *db_prepare(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    SQL_CHECK(db, sqlite3_prepare_v2(db, sql, -1, &st, NULL));
    return st;
}

void db_step_done(sqlite3 *db, sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) db_check_fail(db, rc, sqlite3_sql(st), __FILE__, __LINE__);
    SQL_CHECK(db, sqlite3_reset(st));
    SQL_CHECK(db, sqlite3_clear_bindings(st));
}

void db_finalize(sqlite3 *db, sqlite3_stmt *st) { SQL_CHECK(db, sqlite3_finalize(st)); }

void db_begin(sqlite3 *db) { db_exec(db, "BEGIN IMMEDIATE"); }
void db_commit(sqlite3 *db) { db_exec(db, "COMMIT"); }

void db_now(char out[32]) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Migrations from version v to v+1 (index v-1). A new database gets
 * schema.sql directly, which always describes the newest version: bumping
 * DB_SCHEMA_VERSION means editing schema.sql AND appending the step here. */
static const char *const migrations[] = {
    NULL, /* 1 -> 2: none yet */
};

/* One integer from a pragma or query; returns an SQLite code instead of dying
 * because the first read of a file that is not SQLite fails here (NOTADB). */
static int query_int(sqlite3 *db, const char *sql, long *out) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    int rc2 = sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? rc2 : rc;
}

/* application_id, user_version and the number of schema objects in ONE statement,
 * hence one snapshot: another process may be initialising the same new file right
 * now, and its schema and ids appear together when it commits (three separate reads
 * could see the schema but not yet the id, and reject a good database). */
static int read_header(sqlite3 *db, long *app, long *version, long *objects) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT (SELECT application_id FROM pragma_application_id), "
                                "(SELECT user_version FROM pragma_user_version), "
                                "(SELECT count(*) FROM sqlite_master)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *app = sqlite3_column_int64(st, 0);
        *version = sqlite3_column_int64(st, 1);
        *objects = sqlite3_column_int64(st, 2);
    }
    int rc2 = sqlite3_finalize(st);
    return rc == SQLITE_ROW ? rc2 : rc;
}

static void set_version(sqlite3 *db, int version) {
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d;",
             DB_APPLICATION_ID, version);
    db_exec(db, sql);
}

sqlite3 *db_open(const char *path, int create, Err *err) {
    struct stat sb;
    int exists = stat(path, &sb) == 0;
    if (!exists && !create) {
        err_set(err, "no results database at '%s' (run `plab sweep` first, or choose one with --db PATH)",
                path);
        return NULL;
    }
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        err_set(err, "cannot open database '%s': %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    SQL_CHECK(db, sqlite3_busy_timeout(db, 60000));
    long app = 0, version = 0, objects = 0;
    rc = read_header(db, &app, &version, &objects);
    if (rc == SQLITE_NOTADB) {
        err_set(err, "'%s' is not a plab database (not an SQLite file); choose another path with --db",
                path);
        sqlite3_close(db);
        return NULL;
    }
    if (rc != SQLITE_OK) db_check_fail(db, rc, "reading the schema version", __FILE__, __LINE__);
    if (objects > 0 && app != DB_APPLICATION_ID) {
        err_set(err, "'%s' is an SQLite database but not a plab database (application_id %ld, "
                     "expected %d); choose another path with --db", path, app, DB_APPLICATION_ID);
        sqlite3_close(db);
        return NULL;
    }
    if (version > DB_SCHEMA_VERSION) {
        err_set(err, "'%s' has schema version %ld, newer than this plab understands (%d); "
                     "use a newer plab", path, version, DB_SCHEMA_VERSION);
        sqlite3_close(db);
        return NULL;
    }
    /* WAL: readers (query, plots) never block the writers (workers). Switching
     * needs the file to itself and does not wait on the busy handler, so a
     * second process creating the same new database retries here. */
    for (int tries = 0;; tries++) {
        sqlite3_stmt *st = db_prepare(db, "PRAGMA journal_mode = WAL");
        rc = sqlite3_step(st);
        int wal = rc == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(st, 0), "wal");
        sqlite3_finalize(st); /* a BUSY step is retried below */
        if (wal) break;
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED && rc != SQLITE_ROW) || tries > 6000)
            db_check_fail(db, rc, "PRAGMA journal_mode = WAL", __FILE__, __LINE__);
        usleep(10000);
    }
    db_exec(db, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;");
    if (version < DB_SCHEMA_VERSION) {
        db_begin(db);
        /* another process may have initialised it since we looked */
        SQL_CHECK(db, query_int(db, "PRAGMA user_version", &version));
        SQL_CHECK(db, query_int(db, "SELECT count(*) FROM sqlite_master", &objects));
        if (objects == 0) {
            db_exec(db, db_schema_sql());
            set_version(db, DB_SCHEMA_VERSION);
        } else {
            for (long v = version; v < DB_SCHEMA_VERSION; v++) {
                CHECK(v >= 1 && v - 1 < (long)(sizeof migrations / sizeof *migrations) && migrations[v - 1],
                      "no migration from schema version %ld", v);
                db_exec(db, migrations[v - 1]);
                set_version(db, (int)v + 1);
            }
        }
        db_commit(db);
    }
    return db;
}

void db_close(sqlite3 *db) {
    if (db) SQL_CHECK(db, sqlite3_close(db));
}
