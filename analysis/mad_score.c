/* MAD score aggregation and benchmark grid; see mad_score.h. */
#include "mad_score.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/check.h"

const char *const mad_task_names[MAD_TASKS] = {
    "compression",       "fuzzy_in_context_recall", "in_context_recall",
    "memorization",      "noisy_in_context_recall", "selective_copying",
};
static const int expected_settings[MAD_TASKS] = {11, 11, 11, 6, 14, 13};

const double mad_grid_lr[3] = {1e-4, 5e-4, 1e-3};
const double mad_grid_wd[2] = {0.0, 0.1};

static int task_slot(const char *name) {
    for (int i = 0; i < MAD_TASKS; i++)
        if (name && !strcmp(name, mad_task_names[i])) return i;
    return -1;
}

static const MadRow *sort_rows;
static int cmp_row(const void *a, const void *b) {
    const MadRow *x = &sort_rows[*(const int *)a], *y = &sort_rows[*(const int *)b];
    int c = strcmp(x->task, y->task);
    return c ? c : strcmp(x->setting ? x->setting : "", y->setting ? y->setting : "");
}

void mad_score(const MadRow *rows, int n, MadScore *out) {
    memset(out, 0, sizeof *out);
    double sum[MAD_TASKS] = {0};
    for (int t = 0; t < MAD_TASKS; t++) {
        out->task[t].task = mad_task_names[t];
        out->task[t].expected = expected_settings[t];
    }
    /* 1. drop NaN results and foreign tasks; group the rest by (task, setting) */
    int *idx = xmalloc(sizeof(int) * (size_t)(n > 0 ? n : 1)), m = 0;
    for (int i = 0; i < n; i++) {
        if (task_slot(rows[i].task) < 0) out->other++;
        else if (isnan(rows[i].acc)) out->dropped++;
        else idx[m++] = i;
    }
    sort_rows = rows;
    qsort(idx, (size_t)m, sizeof *idx, cmp_row);
    for (int a = 0; a < m;) {
        int b = a;
        double best = -INFINITY;
        while (b < m && cmp_row(&idx[a], &idx[b]) == 0) best = fmax(best, rows[idx[b++]].acc);
        MadTaskScore *ts = &out->task[task_slot(rows[idx[a]].task)];
        /* 2. best over the setting's runs, summed per task */
        sum[ts - out->task] += best;
        if (ts->settings == 0 || b - a < ts->min_runs) ts->min_runs = b - a;
        ts->settings++;
        a = b;
    }
    free(idx);
    /* 3. task score = mean over settings; MAD average = mean of the six */
    double total = 0;
    int scored = 0;
    out->complete = 1;
    for (int t = 0; t < MAD_TASKS; t++) {
        MadTaskScore *ts = &out->task[t];
        ts->score = ts->settings ? sum[t] / ts->settings : NAN;
        if (ts->settings) total += ts->score, scored++;
        if (ts->settings < ts->expected) out->complete = 0;
    }
    out->average = scored == MAD_TASKS ? total / MAD_TASKS : NAN;
}

void mad_score_print(FILE *f, const MadScore *s) {
    fprintf(f, "%-26s %8s %10s %9s\n", "task", "score", "settings", "min runs");
    for (int t = 0; t < MAD_TASKS; t++) {
        const MadTaskScore *ts = &s->task[t];
        fprintf(f, "%-26s %8.4f %4d / %-3d %9d\n", ts->task, ts->score, ts->settings, ts->expected,
                ts->min_runs);
    }
    fprintf(f, "%-26s %8.4f%s\n", "MAD average (6 tasks)", s->average,
            s->complete ? "" : "  (incomplete grid: not comparable with MAD)");
    if (s->dropped) fprintf(f, "%d runs with NaN accuracy dropped (as MAD)\n", s->dropped);
}

/* ---- the grid (mad.md §3): baseline plus one factor at a time ---------------------- */

typedef struct {
    const char *task, *baseline;
    const char *changes; /* "key=v1,v2 key=v3" */
} GridTask;

static const GridTask grid[MAD_TASKS] = {
    {"in_context_recall", "task.vocab_size=16 task.seq_len=128 task.num_train=12800",
     "task.vocab_size=32,64,128 task.seq_len=256,512,1024 task.num_train=6400,3200,1600,800"},
    {"fuzzy_in_context_recall", "task.vocab_size=16 task.seq_len=128 task.num_train=12800",
     "task.vocab_size=32,64,128 task.seq_len=256,512,1024 task.num_train=6400,3200,1600,800"},
    {"noisy_in_context_recall", "task.vocab_size=32 task.seq_len=128 task.num_train=12800",
     "task.vocab_size=48,80,144 task.seq_len=256,512,1024 task.num_train=6400,3200,1600,800 "
     "task.frac_noise=0.4,0.6,0.8"},
    {"selective_copying", "task.vocab_size=16 task.seq_len=256 task.num_train=12800",
     "task.vocab_size=32,64,128 task.seq_len=512,1024 task.num_train=6400,3200,1600,800 "
     "task.num_tokens_to_copy=32,64,96"},
    {"compression", "task.vocab_size=16 task.seq_len=32 task.num_train=12800",
     "task.vocab_size=32,64,128 task.seq_len=64,128,256 task.num_train=6400,3200,1600,800"},
    {"memorization", "task.vocab_size=256 task.seq_len=32 task.num_train=256",
     "task.vocab_size=512,1024,2048,4096,8192"},
};

/* "task=T" + the baseline with key's value replaced (or appended) */
static void with_change(char *out, size_t cap, const char *task, const char *baseline,
                        const char *key, const char *value) {
    int n = snprintf(out, cap, "task=%s", task), found = 0;
    char *b = strdup_check(baseline, __FILE__, __LINE__), *save = NULL;
    size_t klen = strlen(key);
    for (char *kv = strtok_r(b, " ", &save); kv; kv = strtok_r(NULL, " ", &save)) {
        int same = !strncmp(kv, key, klen) && kv[klen] == '=';
        found |= same;
        if (same) n += snprintf(out + n, cap - (size_t)n, " %s=%s", key, value);
        else n += snprintf(out + n, cap - (size_t)n, " %s", kv);
    }
    if (!found) n += snprintf(out + n, cap - (size_t)n, " %s=%s", key, value);
    CHECK((size_t)n < cap, "MAD grid setting too long");
    free(b);
}

int mad_grid(MadSetting *out) {
    int n = 0;
    for (int t = 0; t < MAD_TASKS; t++) {
        const GridTask *g = &grid[t];
        out[n].task = g->task;
        snprintf(out[n].name, sizeof out[n].name, "baseline");
        snprintf(out[n].args, sizeof out[n].args, "task=%s %s", g->task, g->baseline);
        n++;
        char *ch = strdup_check(g->changes, __FILE__, __LINE__), *s1 = NULL;
        for (char *kv = strtok_r(ch, " ", &s1); kv; kv = strtok_r(NULL, " ", &s1)) {
            char *eq = strchr(kv, '=');
            *eq = 0;
            char *s2 = NULL;
            for (char *v = strtok_r(eq + 1, ",", &s2); v; v = strtok_r(NULL, ",", &s2)) {
                CHECK(n < MAD_GRID_SIZE, "MAD grid larger than %d", MAD_GRID_SIZE);
                out[n].task = g->task;
                snprintf(out[n].name, sizeof out[n].name, "%s=%s", kv, v);
                with_change(out[n].args, sizeof out[n].args, g->task, g->baseline, kv, v);
                n++;
            }
        }
        free(ch);
    }
    return n;
}
