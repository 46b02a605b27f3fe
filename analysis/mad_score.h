/* The MAD score (mad.md §4.5) and the MAD benchmark grid (mad.md §3).
 *
 * Score: for each setting keep the best test accuracy over its runs (MAD:
 * 3 lr x 2 weight decays), after dropping NaN results; a task's score is the
 * unweighted mean over its settings; the MAD average is the unweighted mean of
 * the six task scores. Input rows come from stored results (the `mad_run`
 * view of db/schema.sql gives task, setting, lr, weight decay, test_acc). */
#ifndef PLAB_MAD_SCORE_H
#define PLAB_MAD_SCORE_H

#include <stdio.h>

#define MAD_TASKS 6
#define MAD_GRID_SIZE 66

typedef struct {
    const char *task;    /* plab task name, e.g. "in_context_recall" */
    const char *setting; /* anything that identifies the setting (e.g. its task.* keys) */
    double lr, wd;
    double acc;          /* MAD test accuracy of the run (at best test perplexity) */
} MadRow;

typedef struct {
    const char *task;
    int settings; /* settings with at least one usable run */
    int expected; /* settings in MAD's grid: 11/11/14/13/11/6 */
    int min_runs; /* fewest usable runs behind one setting (MAD: 6) */
    double score; /* mean over settings of the best accuracy; NaN when no setting */
} MadTaskScore;

typedef struct {
    MadTaskScore task[MAD_TASKS]; /* in the order of mad_task_names */
    double average;               /* mean of the six task scores; NaN unless all six scored */
    int complete;                 /* every task has its full grid of settings */
    int dropped;                  /* rows dropped: NaN accuracy */
    int other;                    /* rows of tasks outside the six (e.g. mqar), ignored */
} MadScore;

extern const char *const mad_task_names[MAD_TASKS];

void mad_score(const MadRow *rows, int n, MadScore *out);
void mad_score_print(FILE *f, const MadScore *s);

/* The score of every mechanism (config minus task keys, lr, weight decay and
 * seed) in a results database, from its `mad_run` view; calls fn once per
 * mechanism and returns how many there were. */
struct sqlite3;
typedef void (*MadScoreFn)(void *ctx, const char *mechanism, const char *mixer, const MadScore *s);
int mad_score_db(struct sqlite3 *db, MadScoreFn fn, void *ctx);

/* One setting of the grid: the baseline or one factor changed (mad.md §3). */
typedef struct {
    const char *task;
    char name[48];  /* "baseline", "task.seq_len=512", ... */
    char args[200]; /* "task=... key=value ..." for plab train / a sweep */
} MadSetting;

/* Fills out[MAD_GRID_SIZE]; returns the count (66). */
int mad_grid(MadSetting *out);
/* The lr x weight-decay grid every setting runs with (mad.md §4.3). */
extern const double mad_grid_lr[3], mad_grid_wd[2];

#endif
