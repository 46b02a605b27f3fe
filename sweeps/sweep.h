/* Sweep files (docs/sweeps.md): W&B sweep key names over the flat dotted run
 * keys of `plab train`, read with libyaml so every error names file:line:col.
 *
 *   name: icr-demo            method: grid | random      run_cap: N
 *   metric: {name: test_acc, goal: maximize}             seed: S (random draws)
 *   base: {task: in_context_recall, ...}                 (fixed keys)
 *   parameters:
 *     lr: {values: [1e-4, 1e-3]}                         (grid or random)
 *     lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-2}   (random)
 *     setting: {values: [{task.vocab_size: 32}, {task.seq_len: 256}]} (tied keys)
 */
#ifndef PLAB_SWEEP_H
#define PLAB_SWEEP_H

#include <gsl/gsl_rng.h>

#include "../core/config.h"

/* One choice of a parameter: one or more (key, value) assignments. */
typedef struct {
    int n;
    char **keys, **vals;
    int *line, *col; /* 1-based position of each value in the file */
} Assign;

typedef enum {
    DIST_VALUES = 0,        /* values: [...] or value: x */
    DIST_UNIFORM,           /* min + (max-min) U */
    DIST_INT_UNIFORM,       /* integer uniform on [min, max] */
    DIST_Q_UNIFORM,         /* round(uniform(min, max) / q) * q */
    DIST_LOG_UNIFORM_VALUES /* exp(uniform(log min, log max)) */
} Dist;

typedef struct {
    char *name;      /* a run key, or a free label when its values tie several keys */
    int line, col;   /* 1-based position of the name in the file */
    Dist dist;
    int nvalues;
    Assign *values;  /* DIST_VALUES */
    double min, max, q;
} SweepParam;

typedef struct {
    char *file;      /* path or label used in messages */
    char *yaml;      /* full text */
    char *name, *description;
    int random;      /* method: random (else grid) */
    long run_cap;    /* 0 = none (grid) */
    unsigned long seed; /* random draws */
    char *metric;    /* metric.name (default test_acc) */
    int maximize;    /* metric.goal */
    Assign base;
    int nparams;
    SweepParam *params;
} Sweep;

/* Parses and validates a sweep (every key and value against the key table).
 * On error returns -1 with "FILE:LINE:COL: what is wrong" in err. */
int sweep_load_file(const char *path, Sweep **out, Err *err);
int sweep_load_text(const char *text, const char *file, Sweep **out, Err *err);
void sweep_free(Sweep *s);

/* Sets every assignment of `a` on c (cfg_set). */
int sweep_apply(Config *c, const Assign *a, Err *err);

/* Number of grid points (product of the value counts); -1 if over 200000. */
long sweep_grid_size(const Sweep *s);
/* The value of a distribution parameter for one draw, as text. */
void sweep_draw(const SweepParam *p, gsl_rng *r, char *out, int outlen);

/* One planned run: its resolved config, that config's hash, and the sweep's
 * choices for it ("key=value key=value"). */
typedef struct {
    Config *cfg;
    char hash[17];
    char *overrides;
} PlanRun;

typedef struct {
    int n;
    PlanRun *runs;
    long generated;  /* grid points or draws before removing duplicates */
    int duplicates;  /* configs that resolved to a hash already in the plan */
    int capped;      /* grid points left out by run_cap */
} Plan;

/* Expands the grid (first parameter slowest) or draws run_cap random configs
 * (reproducible from `seed`), resolves each config and keeps the first of
 * equal hashes. -1 with err naming the run when a config does not resolve. */
int sweep_plan(const Sweep *s, Plan *plan, Err *err);
void plan_free(Plan *plan);

#endif
