/* Optimizers (AdamW, Muon) and learning-rate / weight-decay schedules. */
#ifndef PLAB_OPTIM_H
#define PLAB_OPTIM_H

#include "../core/config.h"
#include "../models/model.h"

/* ---- schedules (baselines.md §11 for WSD) --------------------------------------- */
typedef struct {
    int kind;        /* 0 constant, 1 cosine, 2 wsd */
    int per_epoch;   /* step the schedule once per epoch (MAD-Lab) */
    double lr, min_lr, warmup, decay_frac, wd, wd_gamma;
    int decay_shape; /* 0 linear, 1 cosine, 2 sqrt */
    long total_steps, steps_per_epoch;
} Schedule;

void schedule_from_config(Schedule *s, const Config *cfg, long total_steps, long steps_per_epoch);
/* learning rate and weight decay at (0-based) step */
double schedule_lr(const Schedule *s, long step);
double schedule_wd(const Schedule *s, long step);

/* ---- optimizers ------------------------------------------------------------------- */
typedef struct Optimizer Optimizer;

Optimizer *optim_create(const Config *cfg, Model *m, long total_steps, long steps_per_epoch);
void optim_free(Optimizer *o);
/* One update with the schedule's values at `step` (uploads them first). */
void optim_step(Optimizer *o, long step);
/* The parameter update alone, reading hyper-parameters already uploaded by
 * optim_upload (what a captured CUDA graph replays). */
void optim_upload(Optimizer *o, long step);
void optim_apply(Optimizer *o);
double optim_current_lr(const Optimizer *o);
/* "adamw" or "muon(moonlight)+adamw", for the run's params */
const char *optim_describe(const Optimizer *o);

/* Newton-Schulz quintic orthogonalisation of x [rows, cols] in place
 * (baselines.md §10.1); scratch needs 2*min^2 + rows*cols reals plus one. */
void newton_schulz5(const Ops *ops, real *x, int rows, int cols, int steps, real *scratch);

#endif
