/* AdamW (decoupled weight decay, bias correction) and Muon (baselines.md §10)
 * over the model's flat parameter buffer. Under Muon, 2-D hidden matrices
 * (ParamSpec flag PARAM_MUON) take Muon; embeddings, head, norms and biases
 * take AdamW (§10.3). */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { MUON_MOONLIGHT, MUON_KELLER, MUON_TORCH } MuonVariant;

struct Optimizer {
    Model *m;
    const Ops *ops;
    Schedule sched;
    int muon;
    MuonVariant variant;
    real momentum;
    int nesterov, ns_steps;
    double beta1, beta2, eps, adamw_lr_ratio;
    real *mbuf, *vbuf;     /* AdamW moments, or Muon momentum in mbuf */
    real *scratch;         /* Newton-Schulz work space */
    OptHyper *h_adam, *h_muon; /* backend memory, side by side: one copy a step */
    double cur_lr;
    char desc[64];
};

Optimizer *optim_create(const Config *cfg, Model *m, long total_steps, long steps_per_epoch) {
    Optimizer *o = xcalloc(1, sizeof *o);
    o->m = m;
    o->ops = model_ops(m);
    schedule_from_config(&o->sched, cfg, total_steps, steps_per_epoch);
    o->muon = !strcmp(cfg_str(cfg, "optim"), "muon");
    const char *v = cfg_str(cfg, "muon.variant");
    o->variant = !strcmp(v, "keller") ? MUON_KELLER : !strcmp(v, "torch") ? MUON_TORCH : MUON_MOONLIGHT;
    o->momentum = (real)cfg_float(cfg, "muon.momentum");
    o->nesterov = cfg_bool(cfg, "muon.nesterov");
    o->ns_steps = (int)cfg_int(cfg, "muon.ns_steps");
    o->beta1 = cfg_float(cfg, "adam.beta1");
    o->beta2 = cfg_float(cfg, "adam.beta2");
    o->eps = cfg_float(cfg, "adam.eps");
    double alr = cfg_float(cfg, "muon.adamw_lr");
    o->adamw_lr_ratio = (o->muon && alr > 0) ? alr / cfg_float(cfg, "lr") : 1.0;
    size_t n = model_num_params(m);
    o->mbuf = o->ops->alloc(sizeof(real) * n);
    o->vbuf = o->ops->alloc(sizeof(real) * n);
    if (o->muon) {
        size_t need = 0;
        for (int i = 0; i < model_num_specs(m); i++) {
            const ParamSpec *s = model_spec(m, i);
            if (!(s->flags & PARAM_MUON)) continue;
            size_t mn = (size_t)(s->rows < s->cols ? s->rows : s->cols);
            size_t w = 2 * mn * mn + 2 * s->numel + 1;
            need = w > need ? w : need;
        }
        o->scratch = o->ops->alloc(sizeof(real) * (need ? need : 1));
        snprintf(o->desc, sizeof o->desc, "muon(%s)+adamw", v);
    } else snprintf(o->desc, sizeof o->desc, "adamw");
    o->h_adam = o->ops->alloc(2 * sizeof(OptHyper));
    o->h_muon = o->h_adam + 1;
    return o;
}

void optim_free(Optimizer *o) {
    if (!o) return;
    o->ops->release(o->mbuf), o->ops->release(o->vbuf);
    if (o->scratch) o->ops->release(o->scratch);
    o->ops->release(o->h_adam);
    free(o);
}

const char *optim_describe(const Optimizer *o) { return o->desc; }
double optim_current_lr(const Optimizer *o) { return o->cur_lr; }

/* Newton-Schulz with (a,b,c) = (3.4445, -4.7750, 2.0315) on the Gram matrix of
 * the short side: wide X: A = X X^T, X <- aX + (bA + cA^2) X; tall X: A = X^T X,
 * X <- aX + X (bA + cA^2) (the transposed iteration, A symmetric). */
void newton_schulz5(const Ops *ops, real *x, int rows, int cols, int steps, real *scratch) {
    const real a = (real)3.4445, b = (real)-4.7750, c = (real)2.0315;
    int mn = rows < cols ? rows : cols;
    size_t mm = (size_t)mn * mn, n = (size_t)rows * cols;
    real *A = scratch, *Bm = A + mm, *Xn = Bm + mm, *s = Xn + n;
    ops->sumsq(s, x, (long)n);
    ops->scale_rsqrt(x, s, (real)1e-7, (long)n);
    int wide = rows <= cols;
    for (int it = 0; it < steps; it++) {
        if (wide) ops->matmul(A, x, x, rows, rows, cols, 0, 1, 1, 0);
        else ops->matmul(A, x, x, cols, cols, rows, 1, 0, 1, 0);
        ops->copy(Bm, A, sizeof(real) * mm);
        ops->matmul(Bm, A, A, mn, mn, mn, 0, 0, c, b);
        ops->copy(Xn, x, sizeof(real) * n);
        if (wide) ops->matmul(Xn, Bm, x, rows, cols, rows, 0, 0, 1, a);
        else ops->matmul(Xn, x, Bm, rows, cols, cols, 0, 0, 1, a);
        ops->copy(x, Xn, sizeof(real) * n);
    }
}

void optim_upload(Optimizer *o, long step) {
    double lr = schedule_lr(&o->sched, step), wd = schedule_wd(&o->sched, step);
    o->cur_lr = lr;
    double t = (double)(step + 1);
    OptHyper h[2] = {{.lr = (real)(lr * o->adamw_lr_ratio), .wd = (real)wd,
                      .beta1 = (real)o->beta1, .beta2 = (real)o->beta2, .eps = (real)o->eps,
                      .bc1 = (real)(1 - pow(o->beta1, t)), .bc2 = (real)(1 - pow(o->beta2, t))}};
    h[1] = h[0];
    h[1].lr = (real)lr;
    o->ops->to_device(o->h_adam, h, sizeof h); /* h_adam, h_muon */
}

/* AdamW runs over maximal runs of adjacent tensors with the same decay flag in
 * one call each (tensors are contiguous up to zero padding, whose gradient and
 * state stay zero): a few launches per step instead of one per tensor. */
void optim_apply(Optimizer *o) {
    const Ops *ops = o->ops;
    real *p = model_params(o->m), *g = model_grads(o->m);
    int n = model_num_specs(o->m);
    for (int i = 0; i < n;) {
        const ParamSpec *s = model_spec(o->m, i);
        size_t off = s->offset;
        int wd_on = !(s->flags & PARAM_NO_DECAY);
        if (o->muon && (s->flags & PARAM_MUON) && s->cols > 0) {
            int ema = o->variant == MUON_KELLER;
            real *u = o->scratch; /* the update, orthogonalised in place */
            ops->muon_momentum(u, o->mbuf + off, g + off, (long)s->numel, o->momentum, o->nesterov,
                               ema);
            newton_schulz5(ops, u, s->rows, s->cols, o->ns_steps, o->scratch + s->numel);
            double r = s->rows, c = s->cols, scale;
            if (o->variant == MUON_MOONLIGHT) scale = 0.2 * sqrt(r > c ? r : c);
            else scale = sqrt(r / c > 1 ? r / c : 1);
            ops->muon_apply(p + off, u, (long)s->numel, o->h_muon, (real)scale);
            i++;
            continue;
        }
        int j = i + 1; /* extend the run of AdamW tensors with the same decay flag */
        for (; j < n; j++) {
            const ParamSpec *t = model_spec(o->m, j);
            if ((o->muon && (t->flags & PARAM_MUON) && t->cols > 0) ||
                (!(t->flags & PARAM_NO_DECAY)) != wd_on)
                break;
        }
        const ParamSpec *last = model_spec(o->m, j - 1);
        long len = (long)(last->offset + last->numel - off);
        ops->adamw(p + off, g + off, o->mbuf + off, o->vbuf + off, len, o->h_adam, wd_on);
        i = j;
    }
}

void optim_step(Optimizer *o, long step) {
    optim_upload(o, step);
    optim_apply(o);
}
