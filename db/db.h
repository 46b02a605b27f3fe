/* The results database (db/schema.sql is its documentation).
 *
 * Every sqlite3 call is checked: a failure that is a bug or an environment
 * problem dies with file, line and SQLite's message (SQL_CHECK). Mistakes the
 * user can make (a path that is not a plab database, a newer schema, bad SQL
 * in `plab query`) come back as an Err. */
#ifndef PLAB_DB_H
#define PLAB_DB_H

#include <sqlite3.h>

#include "../core/check.h"

#define DB_SCHEMA_VERSION 1
#define DB_APPLICATION_ID 0x706c6162 /* 'plab' */

void db_check_fail(sqlite3 *db, int rc, const char *what, const char *file, int line);
#define SQL_CHECK(db, call)                                                             \
    do {                                                                                \
        int rc_ = (call);                                                               \
        if (rc_ != SQLITE_OK && rc_ != SQLITE_ROW && rc_ != SQLITE_DONE)                \
            db_check_fail((db), rc_, #call, __FILE__, __LINE__);                        \
    } while (0)

/* Opens (create: creates and initialises when missing) a plab database in WAL
 * mode with a busy timeout, applying migrations up to DB_SCHEMA_VERSION.
 * Returns NULL and fills err when the file is not a plab database or has a
 * newer schema. */
sqlite3 *db_open(const char *path, int create, Err *err);
void db_close(sqlite3 *db);

/* Runs SQL without results (checked). */
void db_exec(sqlite3 *db, const char *sql);
/* Prepared statement (checked); bind with sqlite3_bind_* under SQL_CHECK. */
sqlite3_stmt *db_prepare(sqlite3 *db, const char *sql);
/* Steps a statement that returns no row, then resets it (checked). */
void db_step_done(sqlite3 *db, sqlite3_stmt *st);
void db_finalize(sqlite3 *db, sqlite3_stmt *st);

/* BEGIN IMMEDIATE / COMMIT: short write transactions that take the write lock
 * up front, so two processes never deadlock upgrading a read lock. */
void db_begin(sqlite3 *db);
void db_commit(sqlite3 *db);

/* The embedded db/schema.sql. */
const char *db_schema_sql(void);
/* UTC time now as ISO-8601 text. */
void db_now(char out[32]);

#endif
