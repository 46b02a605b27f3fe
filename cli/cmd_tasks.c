/* plab tasks [sample|stats] TASK [key=value ...]: the task suite seen from the
 * terminal: the list with keys and defaults, a few sequences with their scored
 * positions marked, and empirical statistics of a generated split to compare
 * with MAD-Lab (mad.md §1-§3, §6). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../analysis/mad_score.h"
#include "../core/config.h"
#include "../db/db.h"
#include "../tasks/task.h"
#include "cli.h"

void help_tasks(void) {
    printf("usage: plab tasks                                  list tasks, their keys and defaults\n"
           "       plab tasks sample TASK [key=value ...] [-n N] [--train]\n"
           "       plab tasks stats  TASK [key=value ...] [-n N] [--train]\n"
           "       plab tasks score [--db PATH]                  MAD score per mechanism\n\n"
           "sample prints N sequences (default 3) of the test split (--train: the train split),\n"
           "scored positions as [input>target]. stats walks N sequences (default: the whole\n"
           "split) and prints targets per sequence, token shares by role, padding, queries and\n"
           "unanswerable queries, and (test split) the share of test inputs also in train.\n"
           "`seed=S` picks the data of a training run with that seed.\n"
           "score computes the MAD score (mad.md 4.5: best over lr x wd per setting, mean per\n"
           "task, mean of the six tasks) of every mechanism in the results database (default\n"
           "plab.db) from its finished runs, and says how complete each task's grid is.\n"
           "Example:  plab tasks sample selective_copying task.seq_len=32 task.num_tokens_to_copy=4\n");
}

static void print_list(void) {
    printf("tasks (task=NAME); the values shown are the task's defaults (MAD's baseline):\n");
    for (int i = 0; i < task_count(); i++) {
        const Task *t = task_at(i);
        printf("\n  %s\n    %s\n    ", t->name, t->help);
        int col = 4;
        char *d = xstrdup(t->defaults), *save = NULL;
        for (char *w = strtok_r(d, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            int n = (int)strlen(w) + 1;
            if (col + n > 96) printf("\n    "), col = 4;
            printf("%s ", w);
            col += n;
        }
        free(d);
        printf("\n");
    }
    printf("\nkeys:\n");
    print_keys("task.");
}

/* contiguous token ranges of each role, e.g. "key 0-7, value 8-15" */
static void print_roles(const Task *t, const TaskParams *p) {
    printf("vocabulary:");
    int V = p->vocab_size, start = 0;
    for (int v = 1; v <= V; v++) {
        if (v < V && !strcmp(t->role(p, v), t->role(p, start))) continue;
        if (strcmp(t->role(p, start), "unused") != 0) {
            if (v - 1 > start) printf(" %s %d-%d;", t->role(p, start), start, v - 1);
            else printf(" %s %d;", t->role(p, start), start);
        }
        start = v;
    }
    printf("\n");
}

typedef struct {
    const Task *t;
    TaskParams p;
    unsigned long seed;
    Split split;
    int n; /* sequences; 0 = default */
} TasksArgs;

static int parse(int argc, char **argv, TasksArgs *a, const char *what) {
    memset(a, 0, sizeof *a);
    a->split = SPLIT_TEST;
    if (argc < 1) {
        fprintf(stderr, "plab tasks %s: which task? (`plab tasks` lists them)\n", what);
        return 2;
    }
    Config *cfg = cfg_new();
    Err err = {{0}};
    int rc = 0;
    if (cfg_set(cfg, "task", argv[0], &err) != 0) rc = 2;
    for (int i = 1; i < argc && !rc; i++) {
        if (!strcmp(argv[i], "--train")) a->split = SPLIT_TRAIN;
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > (1L << 28)) {
                err_set(&err, "-n: '%s' is not a count between 1 and 2^28", argv[i]);
                rc = 2;
            }
            a->n = (int)n;
        } else if (cfg_parse_arg(cfg, argv[i], &err) != 0) rc = 2;
    }
    if (!rc && task_resolve(cfg, &a->t, &a->p, &err) != 0) rc = 2;
    if (rc) fprintf(stderr, "plab tasks %s: %s\n", what, err.msg);
    else a->seed = task_data_seed((unsigned long)cfg_int(cfg, "seed"));
    cfg_free(cfg);
    return rc;
}

static int cmd_sample(int argc, char **argv) {
    TasksArgs a;
    int rc = parse(argc, argv, &a, "sample");
    if (rc) return rc;
    int n = a.n ? a.n : 3, color = isatty(1);
    TaskStream *s = task_stream_new(a.t, &a.p, a.seed, a.split);
    int len = task_stream_len(s);
    int *x = xmalloc(sizeof(int) * (size_t)len), *y = xmalloc(sizeof(int) * (size_t)len);
    printf("%s, %s split, %d tokens per sequence\n", a.t->name,
           a.split == SPLIT_TRAIN ? "train" : "test", len);
    print_roles(a.t, &a.p);
    printf("scored positions are shown as [input>target]\n");
    for (int i = 0; i < n; i++) {
        SeqInfo info;
        task_stream_next(s, 1, x, y, &info);
        int scored = 0;
        for (int j = 0; j < len; j++) scored += y[j] != IGNORE_INDEX;
        printf("\nsequence %d: %d scored", i, scored);
        if (info.n_pad) printf(", %d padding", info.n_pad);
        if (info.n_unanswerable) printf(", %d unanswerable quer%s", info.n_unanswerable,
                                        info.n_unanswerable > 1 ? "ies" : "y");
        printf("\n ");
        int col = 1;
        for (int j = 0; j < len; j++) {
            char buf[64];
            int w = y[j] == IGNORE_INDEX ? snprintf(buf, sizeof buf, " %d", x[j])
                                         : snprintf(buf, sizeof buf, " [%d>%d]", x[j], y[j]);
            if (col + w > 100) printf("\n "), col = 1;
            if (color && y[j] != IGNORE_INDEX) printf(" \033[1;33m%s\033[0m", buf + 1);
            else printf("%s", buf);
            col += w;
        }
        printf("\n");
    }
    free(x), free(y);
    task_stream_free(s);
    return 0;
}

/* 64-bit FNV-1a of a sequence (for the train/test overlap check) */
static uint64_t seq_hash(const int *x, int len) {
    uint64_t h = 1469598103934665603ULL;
    for (int j = 0; j < len; j++) h = (h ^ (uint64_t)(uint32_t)x[j]) * 1099511628211ULL;
    return h;
}
static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

enum { MAX_ROLES = 16, CHUNK = 256 };

typedef struct {
    const char *name[MAX_ROLES];
    long in[MAX_ROLES], tgt[MAX_ROLES];
    int n;
} RoleCount;

static int role_slot(RoleCount *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->name[i], name)) return i;
    CHECK(r->n < MAX_ROLES, "too many token roles");
    r->name[r->n] = name;
    return r->n++;
}

static int cmd_stats(int argc, char **argv) {
    TasksArgs a;
    int rc = parse(argc, argv, &a, "stats");
    if (rc) return rc;
    const TaskParams *p = &a.p;
    int n = a.n ? a.n : (a.split == SPLIT_TRAIN ? p->num_train : p->num_test);
    TaskStream *s = task_stream_new(a.t, p, a.seed, a.split);
    int len = task_stream_len(s), V = p->vocab_size;
    int *x = xmalloc(sizeof(int) * (size_t)CHUNK * len), *y = xmalloc(sizeof(int) * (size_t)CHUNK * len);
    SeqInfo *info = xmalloc(sizeof(SeqInfo) * CHUNK);
    /* role of every token, looked up once */
    RoleCount rc_ = {0};
    int *role = xmalloc(sizeof(int) * (size_t)V);
    for (int v = 0; v < V; v++) role[v] = role_slot(&rc_, a.t->role(p, v));
    double sum_sc = 0, sum_sc2 = 0, sum_pad = 0, sum_q = 0;
    long min_sc = -1, max_sc = 0, unans = 0, seqs_unans = 0, bad = 0;
    uint64_t *hashes = xmalloc(sizeof(uint64_t) * (size_t)n);
    for (int done = 0; done < n; done += CHUNK) {
        int m = n - done < CHUNK ? n - done : CHUNK;
        task_stream_next(s, m, x, y, info);
        for (int i = 0; i < m; i++) {
            const int *xi = x + (size_t)i * len, *yi = y + (size_t)i * len;
            long sc = 0;
            for (int j = 0; j < len; j++) {
                if (xi[j] < 0 || xi[j] >= V) bad++;
                else rc_.in[role[xi[j]]]++;
                if (yi[j] == IGNORE_INDEX) continue;
                sc++;
                if (yi[j] < 0 || yi[j] >= V) bad++;
                else rc_.tgt[role[yi[j]]]++;
            }
            sum_sc += (double)sc, sum_sc2 += (double)sc * sc;
            if (min_sc < 0 || sc < min_sc) min_sc = sc;
            if (sc > max_sc) max_sc = sc;
            sum_pad += info[i].n_pad, sum_q += info[i].n_queries;
            unans += info[i].n_unanswerable, seqs_unans += info[i].n_unanswerable > 0;
            hashes[done + i] = seq_hash(xi, len);
        }
    }
    task_stream_free(s);
    double mean = sum_sc / n, var = sum_sc2 / n - mean * mean;
    long tot_in = (long)n * len, tot_tgt = (long)sum_sc;
    printf("%s, %s split: %d sequences of %d tokens (seed %lu)\n", a.t->name,
           a.split == SPLIT_TRAIN ? "train" : "test", n, len, a.seed);
    print_roles(a.t, p);
    printf("scored targets per sequence: mean %.3f  sd %.3f  min %ld  max %ld  (%.2f%% of positions)\n",
           mean, var > 0 ? sqrt(var) : 0.0, min_sc, max_sc, 100.0 * sum_sc / (double)tot_in);
    printf("%-10s %12s %12s\n", "role", "input share", "target share");
    for (int r = 0; r < rc_.n; r++)
        printf("%-10s %11.4f%% %11.4f%%\n", rc_.name[r], 100.0 * rc_.in[r] / (double)tot_in,
               tot_tgt ? 100.0 * rc_.tgt[r] / (double)tot_tgt : 0.0);
    if (sum_pad > 0) printf("padding per sequence: mean %.3f tokens\n", sum_pad / n);
    if (sum_q > 0)
        printf("queries per sequence: mean %.3f; unanswerable: %ld (%.3f%% of queries), in %.3f%% "
               "of sequences\n", sum_q / n, unans, 100.0 * unans / sum_q, 100.0 * seqs_unans / n);
    if (bad) printf("ERROR: %ld tokens outside [0, %d)\n", bad, V);
    if (a.split == SPLIT_TEST) {
        /* MAD-Lab warns when > 0.1%% of the unique test inputs also occur in train (mad.md §1) */
        qsort(hashes, (size_t)n, sizeof *hashes, cmp_u64);
        int uniq = 0;
        for (int i = 0; i < n; i++)
            if (i == 0 || hashes[i] != hashes[i - 1]) hashes[uniq++] = hashes[i];
        char *hit = xcalloc((size_t)uniq, 1);
        TaskStream *tr = task_stream_new(a.t, p, a.seed, SPLIT_TRAIN);
        for (int done = 0; done < p->num_train; done += CHUNK) {
            int m = p->num_train - done < CHUNK ? p->num_train - done : CHUNK;
            task_stream_next(tr, m, x, y, NULL);
            for (int i = 0; i < m; i++) {
                uint64_t h = seq_hash(x + (size_t)i * len, len);
                uint64_t *f = bsearch(&h, hashes, (size_t)uniq, sizeof h, cmp_u64);
                if (f) hit[f - hashes] = 1;
            }
        }
        task_stream_free(tr);
        int leaked = 0;
        for (int i = 0; i < uniq; i++) leaked += hit[i];
        printf("unique test inputs: %d of %d; also in train (%d sequences): %d (%.3f%%)%s\n", uniq,
               n, p->num_train, leaked, 100.0 * leaked / uniq,
               leaked > 0.001 * uniq ? "  [MAD-Lab would warn: > 0.1%]" : "");
        free(hit);
    }
    free(x), free(y), free(info), free(role), free(hashes);
    return bad ? 1 : 0;
}

/* the mechanism's keys that differ from their defaults */
static void print_mechanism(const char *mechanism) {
    char *m = xstrdup(mechanism), *save = NULL;
    int shown = 0;
    for (char *kv = strtok_r(m, " ", &save); kv; kv = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) continue;
        *eq = 0;
        int i = key_index(kv);
        char def[512];
        Err e;
        if (i >= 0 && key_at(i)->def &&
            canonical_value(key_at(i), key_at(i)->def, def, sizeof def, &e) == 0 && !strcmp(def, eq + 1))
            continue;
        printf("%s%s=%s", shown++ ? " " : "", kv, eq + 1);
    }
    if (!shown) printf("all keys at their defaults");
    free(m);
}

static void print_score(void *ctx, const char *mechanism, const char *mixer, const MadScore *s) {
    (void)ctx, (void)mixer;
    printf("\nmechanism: ");
    print_mechanism(mechanism);
    printf("\n");
    mad_score_print(stdout, s);
}

static int cmd_score(int argc, char **argv) {
    const char *path = "plab.db";
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc) path = argv[++i];
        else {
            fprintf(stderr, "plab tasks score: unexpected argument '%s' (only --db PATH)\n", argv[i]);
            return 2;
        }
    }
    Err err = {{0}};
    sqlite3 *db = db_open(path, 0, &err);
    if (!db) {
        fprintf(stderr, "plab tasks score: %s\n", err.msg);
        return 2;
    }
    int n = mad_score_db(db, print_score, NULL);
    if (n == 0) printf("no finished runs in %s\n", path);
    db_close(db);
    return 0;
}

int cmd_tasks(int argc, char **argv) {
    if (argc == 0) {
        print_list();
        return 0;
    }
    if (!strcmp(argv[0], "sample")) return cmd_sample(argc - 1, argv + 1);
    if (!strcmp(argv[0], "stats")) return cmd_stats(argc - 1, argv + 1);
    if (!strcmp(argv[0], "score")) return cmd_score(argc - 1, argv + 1);
    if (!strcmp(argv[0], "list")) {
        print_list();
        return 0;
    }
    fprintf(stderr, "plab tasks: unknown subcommand '%s' (sample, stats, score, or none to list)\n", argv[0]);
    return 2;
}
