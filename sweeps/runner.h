/* Running a planned sweep against the results database: each run is claimed
 * in the database, trained by train_run in a forked child (a crash or a DIE
 * loses one run, not the sweep), and recorded by that child; up to `workers`
 * children at once. Safe with other `plab sweep` processes on the same file. */
#ifndef PLAB_RUNNER_H
#define PLAB_RUNNER_H

#include "sweep.h"

typedef struct {
    const char *db_path;
    int workers;
    int tty;         /* redraw one live status line (else print a line per run) */
} RunnerOpts;

typedef struct {
    int planned;     /* runs in the plan */
    int done_before; /* finished or diverged before this invocation: skipped */
    int finished, diverged, failed; /* outcomes of the runs this process trained */
    int elsewhere;   /* runs another process was training */
    int interrupted; /* runs requeued because of Ctrl-C / SIGTERM */
} RunnerStats;

/* 0 when every run this process claimed got an outcome; 130 when
 * interrupted (the interrupted runs are queued again: re-running the same
 * command resumes); -1 with err when the database is refused. */
int sweep_run(const Sweep *s, const Plan *plan, const RunnerOpts *o, RunnerStats *st, Err *err);

#endif
