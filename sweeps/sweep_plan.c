/* From a sweep to its runs: grid expansion or random draws, each config
 * resolved (config_resolve) and identified by its hash (cfg_hash), so equal
 * configs reached by different choices run once. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../train/train.h"
#include "sweep.h"

#define GRID_LIMIT 200000L /* each planned run holds its resolved config in memory */

int sweep_apply(Config *c, const Assign *a, Err *err) {
    for (int i = 0; i < a->n; i++)
        if (cfg_set(c, a->keys[i], a->vals[i], err) != 0) return -1;
    return 0;
}

long sweep_grid_size(const Sweep *s) {
    long n = 1;
    for (int i = 0; i < s->nparams; i++) {
        if (s->params[i].dist != DIST_VALUES) return -1;
        n *= s->params[i].nvalues;
        if (n > GRID_LIMIT) return -1;
    }
    return n;
}

void sweep_draw(const SweepParam *p, gsl_rng *r, char *out, int outlen) {
    double u = gsl_rng_uniform(r); /* [0, 1) */
    switch (p->dist) {
    case DIST_UNIFORM: snprintf(out, (size_t)outlen, "%.6g", p->min + (p->max - p->min) * u); break;
    case DIST_INT_UNIFORM: {
        unsigned long span = (unsigned long)(p->max - p->min) + 1;
        snprintf(out, (size_t)outlen, "%ld", (long)p->min + (long)gsl_rng_uniform_int(r, span));
        break;
    }
    case DIST_Q_UNIFORM: {
        /* W&B: round(X / q) * q with X uniform on [min, max] */
        double x = round((p->min + (p->max - p->min) * u) / p->q) * p->q;
        snprintf(out, (size_t)outlen, "%.6g", x);
        break;
    }
    case DIST_LOG_UNIFORM_VALUES:
        snprintf(out, (size_t)outlen, "%.6g", exp(log(p->min) + (log(p->max) - log(p->min)) * u));
        break;
    case DIST_VALUES: CHECK(0, "sweep_draw on a values parameter"); break;
    }
}

/* appends "k=v k=v" of `a` to a growing string */
static void append_assign(char **buf, size_t *len, size_t *cap, const char *key, const char *val) {
    size_t need = strlen(key) + strlen(val) + 3;
    if (*len + need >= *cap) *buf = xrealloc(*buf, *cap = 2 * *cap + need);
    *len += (size_t)sprintf(*buf + *len, "%s%s=%s", *len ? " " : "", key, val);
}

/* Hashes already in the plan: open addressing over the config hash, so
 * removing duplicates stays linear for large random sweeps. */
typedef struct {
    long cap;
    int *slot; /* plan index + 1, 0 = empty */
    const Plan *plan;
} Seen;

/* 1 if `hash` is already there, else records it as plan index `idx` */
static int seen_insert(Seen *s, const char *hash, int idx) {
    unsigned long h = strtoul(hash + 8, NULL, 16);
    for (long i = (long)(h % (unsigned long)s->cap);; i = (i + 1) % s->cap) {
        if (!s->slot[i]) {
            s->slot[i] = idx + 1;
            return 0;
        }
        if (!strcmp(s->plan->runs[s->slot[i] - 1].hash, hash)) return 1;
    }
}

/* Adds one run from the choices (choice[i] for values parameters, draws[i]
 * for distributions); 1 if added, 0 if a duplicate, -1 on error. */
static int add_run(const Sweep *s, Plan *plan, Seen *seen, const int *choice, char draws[][64], long index,
                   Err *err) {
    Config *c = cfg_new();
    size_t len = 0, cap = 256;
    char *over = xmalloc(cap);
    over[0] = 0;
    Err e;
    int rc = sweep_apply(c, &s->base, &e);
    for (int i = 0; i < s->nparams && rc == 0; i++) {
        const SweepParam *p = &s->params[i];
        if (p->dist == DIST_VALUES) {
            const Assign *a = &p->values[choice[i]];
            rc = sweep_apply(c, a, &e);
            for (int j = 0; j < a->n; j++) append_assign(&over, &len, &cap, a->keys[j], a->vals[j]);
        } else {
            rc = cfg_set(c, p->name, draws[i], &e);
            append_assign(&over, &len, &cap, p->name, draws[i]);
        }
    }
    if (rc == 0) rc = config_resolve(c, &e);
    if (rc != 0) {
        err_set(err, "%s: run %ld (%s): %s", s->file, index + 1, over[0] ? over : "base only", e.msg);
        cfg_free(c), free(over);
        return -1;
    }
    char hash[17];
    cfg_hash(c, hash);
    if (seen_insert(seen, hash, plan->n) != 0) {
        plan->duplicates++;
        cfg_free(c), free(over);
        return 0;
    }
    plan->runs = xrealloc(plan->runs, sizeof(PlanRun) * (size_t)(plan->n + 1));
    PlanRun *r = &plan->runs[plan->n++];
    r->cfg = c;
    memcpy(r->hash, hash, sizeof hash);
    r->overrides = over;
    return 1;
}

int sweep_plan(const Sweep *s, Plan *plan, Err *err) {
    memset(plan, 0, sizeof *plan);
    int np = s->nparams;
    int *choice = xcalloc((size_t)(np ? np : 1), sizeof(int));
    char (*draws)[64] = xcalloc((size_t)(np ? np : 1), sizeof *draws);
    int rc = 0;
    long n = s->random ? s->run_cap : sweep_grid_size(s);
    if (s->run_cap > 0 && s->run_cap < n) n = s->run_cap;
    Seen seen = {2 * (n > 0 ? n : 1) + 1, NULL, plan};
    seen.slot = xcalloc((size_t)seen.cap, sizeof(int));
    if (!s->random) {
        n = sweep_grid_size(s);
        if (n < 0) {
            err_set(err, "%s: the grid has more than %ld points; split the sweep", s->file, GRID_LIMIT);
            rc = -1;
        }
        long limit = s->run_cap > 0 && s->run_cap < n ? s->run_cap : n;
        for (long idx = 0; rc == 0 && idx < limit; idx++) {
            /* mixed radix, last parameter fastest */
            long rest = idx;
            for (int i = np - 1; i >= 0; i--) {
                choice[i] = (int)(rest % s->params[i].nvalues);
                rest /= s->params[i].nvalues;
            }
            if (add_run(s, plan, &seen, choice, draws, idx, err) < 0) rc = -1;
            plan->generated++;
        }
        if (rc == 0) plan->capped = (int)(n - limit);
    } else {
        gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
        CHECK(r, "gsl_rng_alloc failed");
        gsl_rng_set(r, s->seed);
        for (long idx = 0; rc == 0 && idx < s->run_cap; idx++) {
            for (int i = 0; i < np; i++) {
                const SweepParam *p = &s->params[i];
                if (p->dist == DIST_VALUES)
                    choice[i] = (int)gsl_rng_uniform_int(r, (unsigned long)p->nvalues);
                else sweep_draw(p, r, draws[i], sizeof draws[i]);
            }
            if (add_run(s, plan, &seen, choice, draws, idx, err) < 0) rc = -1;
            plan->generated++;
        }
        gsl_rng_free(r);
    }
    free(choice), free(draws), free(seen.slot);
    if (rc != 0) plan_free(plan);
    return rc;
}

void plan_free(Plan *plan) {
    for (int i = 0; i < plan->n; i++) cfg_free(plan->runs[i].cfg), free(plan->runs[i].overrides);
    free(plan->runs);
    memset(plan, 0, sizeof *plan);
}
