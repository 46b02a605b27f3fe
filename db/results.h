/* Writing sweeps and runs (short transactions; a run is claimed, then
 * finished, diverged or failed, each step atomically: design.md "Results"). */
#ifndef PLAB_RESULTS_H
#define PLAB_RESULTS_H

#include "../core/config.h"
#include "db.h"

/* Inserts or refreshes the sweep row (yaml text, file, updated time). */
void results_sweep_begin(sqlite3 *db, const char *name, const char *yaml, const char *file);

/* Inside one transaction per plan: adds a queued run with its params rows
 * (every resolved key) unless (sweep, hash) exists. 1 if added. */
int results_queue(sqlite3 *db, const char *sweep, const char *hash, const char *overrides,
                  const Config *cfg);

/* Status of a run ("finished", ...) into out, or "" when absent. */
void results_status(sqlite3 *db, const char *sweep, const char *hash, char out[16]);

/* Makes runs of this sweep claimable again: 'failed' ones, and 'running'
 * ones whose `plab sweep` process on this host is gone (kill -9, power
 * loss). Their partial metrics are dropped at the next claim. Returns the
 * number of runs requeued. */
int results_requeue_stale(sqlite3 *db, const char *sweep, const char *host);

/* Atomically turns a queued run into running for this process; its old
 * metric rows go (a redo never duplicates history). Returns the run id, or
 * 0 when another worker has it or it is not queued. */
long results_claim(sqlite3 *db, const char *sweep, const char *hash, long pid, const char *host,
                   const char *git, const char *device);

/* Back to queued (an interrupted run), dropping its partial metrics. */
void results_requeue(sqlite3 *db, long run_id);
/* Marks a run failed with a reason if it is still 'running' (its worker died
 * before recording an outcome). 1 if it changed. */
int results_fail_if_running(sqlite3 *db, long run_id, const char *reason, long step);

/* The worker's side: metric history buffered and written in batches, finals
 * and the outcome in one transaction. */
typedef struct ResultWriter ResultWriter;
ResultWriter *results_writer(sqlite3 *db, long run_id);
void results_metric(ResultWriter *w, long step, int epoch, const char *key, double value);
void results_final(ResultWriter *w, const char *key, const char *kind, double value);
void results_flush(ResultWriter *w);
/* status: "finished", "diverged" or "failed"; frees w */
void results_end(ResultWriter *w, const char *status, long step, const char *reason);

#endif
