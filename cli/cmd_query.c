/* plab query "SQL" [--db PATH] [--format table|csv|json]: the results
 * database answers in SQL (db/schema.sql lists the tables and views). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db.h"
#include "cli.h"

void help_query(void) {
    printf("usage: plab query \"SQL\" [--db PATH] [--format table|csv|json]\n\n"
           "Runs SQL on the results database (default plab.db) and prints the rows.\n"
           "Tables: sweeps, runs, params, metrics, final_metrics, attn_hist, attn_sink, layer_diag.\n"
           "Views:  run_summary (one row per run: task, mixer, optim, lr, weight_decay, seed,\n"
           "        vocab_size, seq_len, test_acc, best_test_acc, test_ppl, ...), latest_metrics,\n"
           "        sweep_progress, mad_setting, mad_task_score, mad_score (mad.md §4.5).\n"
           "Examples:\n"
           "  plab query \"SELECT mixer, max(test_acc) AS best FROM run_summary GROUP BY mixer\"\n"
           "  plab query \"SELECT mixer, mad_score, tasks, per_task FROM mad_score\" --format csv\n"
           "The file is plain SQLite: `sqlite3 plab.db` and pandas.read_sql open it as well.\n");
}

typedef enum { FMT_TABLE, FMT_CSV, FMT_JSON } Format;

/* text of one cell: integers as is, reals with 6 significant digits */
static void cell_text(sqlite3_stmt *st, int c, char *out, size_t n, int *numeric) {
    int t = sqlite3_column_type(st, c);
    *numeric = t == SQLITE_INTEGER || t == SQLITE_FLOAT;
    if (t == SQLITE_NULL) snprintf(out, n, "NULL");
    else if (t == SQLITE_INTEGER) snprintf(out, n, "%lld", (long long)sqlite3_column_int64(st, c));
    else if (t == SQLITE_FLOAT) snprintf(out, n, "%.6g", sqlite3_column_double(st, c));
    else snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, c));
}

static void csv_field(const char *s) {
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        if (*s == '"') putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch == '\n') printf("\\n");
        else if (ch == '\t') printf("\\t");
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

/* One statement's rows. Tables are buffered to size their columns. */
static int print_rows(sqlite3 *db, sqlite3_stmt *st, Format f, int *first_json) {
    int nc = sqlite3_column_count(st);
    if (nc == 0) { /* not a query: just run it */
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {}
        return rc == SQLITE_DONE ? 0 : -1;
    }
    int cap = 64, n = 0;
    char **cells = f == FMT_TABLE ? xmalloc(sizeof(char *) * (size_t)cap * nc) : NULL;
    int *numeric = xcalloc((size_t)nc, sizeof(int));
    if (f == FMT_CSV) {
        for (int c = 0; c < nc; c++) {
            if (c) putchar(',');
            csv_field(sqlite3_column_name(st, c));
        }
        putchar('\n');
    }
    int rc;
    char buf[4096];
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (f == FMT_JSON) printf("%s\n  {", *first_json ? "[" : ","), *first_json = 0;
        if (f == FMT_TABLE && n == cap) cells = xrealloc(cells, sizeof(char *) * (size_t)(cap *= 2) * nc);
        for (int c = 0; c < nc; c++) {
            int num;
            cell_text(st, c, buf, sizeof buf, &num);
            if (f == FMT_TABLE) {
                cells[(size_t)n * nc + c] = xstrdup(buf);
                if (num) numeric[c] = 1;
            } else if (f == FMT_CSV) {
                if (c) putchar(',');
                csv_field(sqlite3_column_type(st, c) == SQLITE_NULL ? "" : buf);
            } else {
                if (c) printf(", ");
                json_string(sqlite3_column_name(st, c));
                printf(": ");
                int t = sqlite3_column_type(st, c);
                double d = sqlite3_column_double(st, c);
                if (t == SQLITE_NULL || (t == SQLITE_FLOAT && !isfinite(d))) printf("null");
                else if (t == SQLITE_INTEGER) printf("%lld", (long long)sqlite3_column_int64(st, c));
                else if (t == SQLITE_FLOAT) printf("%.17g", d);
                else json_string(buf);
            }
        }
        if (f == FMT_CSV) putchar('\n');
        if (f == FMT_JSON) putchar('}');
        n++;
    }
    if (f == FMT_TABLE) {
        int *w = xcalloc((size_t)nc, sizeof(int));
        for (int c = 0; c < nc; c++) w[c] = (int)strlen(sqlite3_column_name(st, c));
        for (int r = 0; r < n; r++)
            for (int c = 0; c < nc; c++) {
                int l = (int)strlen(cells[(size_t)r * nc + c]);
                if (l > w[c]) w[c] = l;
            }
        size_t cap_line = 256;
        for (int c = 0; c < nc; c++) cap_line += (size_t)w[c] + 2;
        char *line = xmalloc(cap_line);
        for (int r = -2; r < n; r++) { /* -2: header, -1: rule */
            size_t len = 0;
            for (int c = 0; c < nc; c++) {
                const char *cell = r == -2 ? sqlite3_column_name(st, c) : r == -1 ? "" : cells[(size_t)r * nc + c];
                len += (size_t)sprintf(line + len, "%s", c ? "  " : "");
                if (r == -1) {
                    memset(line + len, '-', (size_t)w[c]);
                    len += (size_t)w[c];
                } else {
                    len += (size_t)sprintf(line + len, "%*s", numeric[c] ? w[c] : -w[c], cell);
                }
                if (r >= 0) free(cells[(size_t)r * nc + c]);
            }
            while (len > 0 && line[len - 1] == ' ') len--; /* no trailing blanks */
            line[len] = 0;
            puts(line);
        }
        free(line);
        printf("(%d row%s)\n", n, n == 1 ? "" : "s");
        free(w);
    }
    free(cells), free(numeric);
    return rc == SQLITE_DONE ? 0 : -1;
}

int query_print(sqlite3 *db, const char *sql, const char *format) {
    Format f = !strcmp(format, "csv") ? FMT_CSV : !strcmp(format, "json") ? FMT_JSON : FMT_TABLE;
    int first_json = 1, rc = 0;
    const char *tail = sql;
    while (rc == 0 && tail && *tail) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, tail, -1, &st, &tail) != SQLITE_OK) {
            fprintf(stderr, "plab query: SQL error: %s\n", sqlite3_errmsg(db));
            return 1;
        }
        if (!st) break; /* only whitespace or comments left */
        if (print_rows(db, st, f, &first_json) != 0) {
            fprintf(stderr, "plab query: SQL error: %s\n", sqlite3_errmsg(db));
            rc = 1;
        }
        sqlite3_finalize(st); /* its error, if any, was reported above */
    }
    if (f == FMT_JSON) printf(first_json ? "[]\n" : "\n]\n");
    return rc;
}

int cmd_query(int argc, char **argv) {
    const char *sql = NULL, *path = "plab.db", *format = "table";
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc) path = argv[++i];
        else if (!strncmp(argv[i], "--db=", 5)) path = argv[i] + 5;
        else if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
        else if (!strncmp(argv[i], "--format=", 9)) format = argv[i] + 9;
        else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "plab query: unknown option '%s' (see plab query --help)\n", argv[i]);
            return 2;
        } else if (!sql) sql = argv[i];
        else {
            fprintf(stderr, "plab query: give the SQL as one argument (quote it)\n");
            return 2;
        }
    }
    if (!sql) {
        fprintf(stderr, "plab query: missing the SQL (usage: plab query \"SQL\" [--db PATH] "
                        "[--format table|csv|json])\n");
        return 2;
    }
    if (strcmp(format, "table") && strcmp(format, "csv") && strcmp(format, "json")) {
        fprintf(stderr, "plab query: --format '%s' is not one of table, csv, json\n", format);
        return 2;
    }
    Err err;
    sqlite3 *db = db_open(path, 0, &err);
    if (!db) {
        fprintf(stderr, "plab query: %s\n", err.msg);
        return 2;
    }
    int rc = query_print(db, sql, format);
    db_close(db);
    return rc;
}
