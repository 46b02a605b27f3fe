/* Learning-rate and weight-decay schedules.
 * Cosine follows PyTorch's CosineAnnealingLR (eta_min = min_lr), stepped per
 * epoch like MAD-Lab or per step. WSD follows baselines.md §11 with the
 * weight-decay annealing wd(t) = wd (1 - t)^gamma of the Parallax paper during
 * the decay phase. Warmup is linear from 0 for every schedule. */
#include <math.h>
#include <string.h>

#include "optim.h"

void schedule_from_config(Schedule *s, const Config *cfg, long total_steps, long steps_per_epoch) {
    memset(s, 0, sizeof *s);
    const char *k = cfg_str(cfg, "schedule");
    s->kind = !strcmp(k, "constant") ? 0 : !strcmp(k, "cosine") ? 1 : 2;
    s->per_epoch = !strcmp(cfg_str(cfg, "schedule.unit"), "epoch");
    s->lr = cfg_float(cfg, "lr");
    s->min_lr = cfg_float(cfg, "min_lr");
    s->warmup = cfg_float(cfg, "warmup");
    s->decay_frac = cfg_float(cfg, "wsd.decay_frac");
    s->wd = cfg_float(cfg, "weight_decay");
    s->wd_gamma = cfg_float(cfg, "wd_anneal_gamma");
    const char *sh = cfg_str(cfg, "wsd.decay_shape");
    s->decay_shape = !strcmp(sh, "linear") ? 0 : !strcmp(sh, "cosine") ? 1 : 2;
    s->total_steps = total_steps;
    s->steps_per_epoch = steps_per_epoch > 0 ? steps_per_epoch : 1;
}

/* position and length in schedule units (epochs or steps) */
static void where(const Schedule *s, long step, double *pos, double *len) {
    if (s->per_epoch) {
        *pos = (double)(step / s->steps_per_epoch);
        *len = ceil((double)s->total_steps / (double)s->steps_per_epoch);
    } else {
        *pos = (double)step;
        *len = (double)s->total_steps;
    }
    if (*len < 1) *len = 1;
}

/* decay progress in [0,1] of WSD's last phase, or -1 outside it */
static double wsd_progress(const Schedule *s, double pos, double len) {
    double D = s->decay_frac * len, start = len - D;
    if (s->kind != 2 || D <= 0 || pos < start) return -1;
    double p = (pos - start) / D;
    return p > 1 ? 1 : p;
}

double schedule_lr(const Schedule *s, long step) {
    double pos, len;
    where(s, step, &pos, &len);
    double W = s->warmup * len;
    if (W > 0 && pos < W) return s->lr * (pos + 1) / (W + 1);
    switch (s->kind) {
    case 1: {
        double p = (pos - W) / (len - W > 0 ? len - W : 1);
        return s->min_lr + (s->lr - s->min_lr) * 0.5 * (1 + cos(M_PI * p));
    }
    case 2: {
        double p = wsd_progress(s, pos, len);
        if (p < 0) return s->lr;
        double d = s->decay_shape == 0 ? 1 - p
                 : s->decay_shape == 1 ? 0.5 * (1 + cos(M_PI * p))
                                       : 1 - sqrt(p);
        return s->min_lr + (s->lr - s->min_lr) * d;
    }
    default: return s->lr;
    }
}

double schedule_wd(const Schedule *s, long step) {
    if (s->wd_gamma <= 0) return s->wd;
    double pos, len;
    where(s, step, &pos, &len);
    double p = wsd_progress(s, pos, len);
    return p < 0 ? s->wd : s->wd * pow(1 - p, s->wd_gamma);
}
