/* The model: embedding, blocks of (RMSNorm, mixer, residual, RMSNorm, SwiGLU,
 * residual), final RMSNorm, linear head, cross-entropy. See model.h. */
#include "model.h"

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autoencoder.h"
#include "layers.h"
#include "mixer.h"

/* ---- parameter layout ----------------------------------------------------------- */

int pb_add(ParamBuilder *pb, const char *name, int rows, int cols, unsigned flags, InitKind init,
           double init_a) {
    if (pb->n == pb->cap) {
        pb->cap = pb->cap ? 2 * pb->cap : 64;
        pb->specs = xrealloc(pb->specs, sizeof(ParamSpec) * (size_t)pb->cap);
    }
    ParamSpec *s = &pb->specs[pb->n];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s%s", pb->prefix, name);
    s->rows = rows, s->cols = cols;
    s->numel = (size_t)rows * (size_t)(cols ? cols : 1);
    s->offset = pb->total;
    s->flags = flags;
    s->init = init, s->init_a = init_a;
    pb->total += (s->numel + 15) & ~(size_t)15; /* 64-byte aligned tensors */
    return pb->n++;
}

int pb_linear(ParamBuilder *pb, const ModelDims *dims, const char *name, int out, int in,
              unsigned flags) {
    if (dims->init_normal) return pb_add(pb, name, out, in, flags, INIT_NORMAL, 0.02);
    return pb_add(pb, name, out, in, flags, INIT_UNIFORM, 1.0 / sqrt((double)in));
}

/* ---- SwiGLU MLP (MAD width rule 16*ceil(int(8d/3)/16)) ------------------------------ */

typedef struct {
    int w1, w3, w2; /* gate [F,d], up [F,d], down [d,F] */
    real *a, *b, *h, *da, *db, *dh;
    /* row stride of a, b (da, db): 2F when W1 and W3 are adjacent parameters and one
     * matmul writes a and b side by side (one launch instead of two, each way) */
    int ld;
    void *save; /* the backend's whole-MLP op (ops->mlp_forward) in use: its saved state */
    int x_saved; /* the norm before wrote the input into save (residual_rmsnorm_bf16_forward) */
    int dy_saved; /* the norm after wrote the output gradient into save (rmsnorm_backward_bf16) */
    int dx_saved; /* the backward wrote the input gradient into save in bf16, not into dln */
} Mlp;

struct Model {
    const Ops *ops;
    ModelDims dims;
    ParamBuilder pb;
    real *params, *grads;
    const MixerKind *kind;
    void **mixers;
    int *mixer_x_saved; /* the norm before wrote layer l's input into its mixer's bf16 state */
    int *mixer_dx_saved; /* layer l's backward wrote its input gradient there, not into dln */
    int *mixer_dy_saved; /* the norm after wrote layer l's output gradient there (these three
                          * flags share mixer_x_saved's allocation) */
    Mlp *mlps;
    AutoEncoder *ae; /* model.backbone=autoencoder (compression), else NULL */
    int p_embed, p_final_norm, p_head_w, p_head_b;
    int *p_norm; /* [2 * layers]: before mixer, before MLP */
    /* activations */
    real **res;   /* [2L+1] residual stream states [N,d] */
    real **ln;    /* [2L] normed inputs [N,d] */
    real **rstd;  /* [2L] [N] */
    real *tmp;    /* [N,d] sublayer output / scratch */
    real *fin, *fin_rstd, *logits, *dlogits;
    real *dres, *dln;
    int *tokens, *targets, *pred;
    real *inv_count, *loss, *nll;
    /* tokens [N], targets [N] and inv_count side by side in one allocation (`batch`), so
     * that a batch goes up in one copy from `host_batch` (one step of MAD is 0.8 ms on an
     * H100; each copy between two graph replays costs a few microseconds) */
    void *batch, *host_batch;
    size_t batch_bytes;
    /* the last forward ran the backend's head_loss_step: the head's and final norm's
     * backward are done, dres holds their gradient */
    int tail_done;
};

static real *P(Model *m, int i) { return m->params + m->pb.specs[i].offset; }
static real *G(Model *m, int i) { return m->grads + m->pb.specs[i].offset; }

static int mlp_width(const Config *cfg, int d) {
    int w = (int)cfg_int(cfg, "model.mlp_width");
    if (w > 0) return w;
    int base = (int)(8.0 * d / 3.0);
    return 16 * ((base + 15) / 16);
}

Model *model_create(const Config *cfg, const Ops *ops, int B, int T, Err *err) {
    const MixerKind *kind = mixer_find(cfg_str(cfg, "model.mixer"));
    if (!kind) {
        err_set(err, "key 'model.mixer': unknown mixer '%s'", cfg_str(cfg, "model.mixer"));
        return NULL;
    }
    Model *m = xcalloc(1, sizeof *m);
    m->ops = ops;
    m->kind = kind;
    ModelDims *D = &m->dims;
    D->V = (int)cfg_int(cfg, "task.vocab_size");
    D->d = (int)cfg_int(cfg, "model.d_model");
    D->layers = (int)cfg_int(cfg, "model.layers");
    D->heads = (int)cfg_int(cfg, "model.heads");
    D->mlp_width = strcmp(cfg_str(cfg, "model.mlp"), "none") == 0 ? 0 : mlp_width(cfg, D->d);
    D->B = B, D->T = T;
    D->norm_eps = (real)cfg_float(cfg, "model.norm_eps");
    D->init_normal = strcmp(cfg_str(cfg, "model.init"), "normal") == 0;
    int L = D->layers, d = D->d, F = D->mlp_width;

    ParamBuilder *pb = &m->pb;
    if (ae_wanted(cfg) && !(m->ae = ae_create(cfg, D, ops, pb, err))) {
        free(pb->specs), free(m);
        return NULL;
    }
    m->p_embed = pb_add(pb, "embed", D->V, d, 0, INIT_NORMAL, 0.02);
    m->p_norm = xcalloc((size_t)(2 * L), sizeof(int));
    m->mixers = xcalloc((size_t)L, sizeof(void *));
    m->mixer_x_saved = xcalloc((size_t)(3 * L), sizeof(int));
    m->mixer_dx_saved = m->mixer_x_saved + L, m->mixer_dy_saved = m->mixer_x_saved + 2 * L;
    m->mlps = xcalloc((size_t)L, sizeof(Mlp));
    for (int l = 0; l < L; l++) {
        snprintf(pb->prefix, sizeof pb->prefix, "blocks.%d.", l);
        m->p_norm[2 * l] = pb_add(pb, "norm1", d, 0, 0, INIT_CONST, 1);
        m->p_norm[2 * l + 1] = pb_add(pb, "norm2", d, 0, 0, INIT_CONST, 1);
        snprintf(pb->prefix, sizeof pb->prefix, "blocks.%d.mixer.", l);
        m->mixers[l] = kind->create(cfg, D, pb, err);
        if (m->mixers[l] && kind->check_ops && kind->check_ops(m->mixers[l], ops, err) != 0) {
            kind->destroy(m->mixers[l], ops);
            m->mixers[l] = NULL;
        }
        if (!m->mixers[l]) {
            for (int j = 0; j < l; j++) kind->destroy(m->mixers[j], ops);
            free(m->mixers), free(m->mixer_x_saved), free(m->mlps), free(m->p_norm), free(pb->specs);
            free(m);
            return NULL;
        }
        if (F) {
            snprintf(pb->prefix, sizeof pb->prefix, "blocks.%d.mlp.", l);
            m->mlps[l].w1 = pb_linear(pb, D, "w1", F, d, PARAM_MUON);
            m->mlps[l].w3 = pb_linear(pb, D, "w3", F, d, PARAM_MUON);
            m->mlps[l].w2 = pb_linear(pb, D, "w2", d, F, PARAM_MUON);
        }
    }
    pb->prefix[0] = 0;
    m->p_final_norm = pb_add(pb, "final_norm", d, 0, 0, INIT_CONST, 1);
    m->p_head_w = pb_linear(pb, D, "head.w", D->V, d, 0);
    m->p_head_b = pb_add(pb, "head.b", D->V, 0, 0, INIT_ZERO, 0);

    m->params = ops->alloc(sizeof(real) * pb->total);
    m->grads = ops->alloc(sizeof(real) * pb->total);
    for (int l = 0; l < L; l++) kind->bind(m->mixers[l], ops, pb->specs, m->params, m->grads);
    if (m->ae) ae_bind(m->ae, ops, pb->specs, m->params, m->grads);

    size_t N = (size_t)B * T, nd = sizeof(real) * N * d;
    m->res = xcalloc((size_t)(2 * L + 1), sizeof(real *));
    m->ln = xcalloc((size_t)(2 * L), sizeof(real *));
    m->rstd = xcalloc((size_t)(2 * L), sizeof(real *));
    for (int i = 0; i < 2 * L + 1; i++) m->res[i] = ops->alloc(nd);
    for (int i = 0; i < 2 * L; i++) {
        m->ln[i] = ops->alloc(nd);
        m->rstd[i] = ops->alloc(sizeof(real) * N);
    }
    for (int l = 0; F && l < L; l++) {
        Mlp *p = &m->mlps[l];
        size_t nf = sizeof(real) * N * F;
        p->ld = m->pb.specs[p->w3].offset == m->pb.specs[p->w1].offset + (size_t)F * d ? 2 * F : F;
        if (p->ld == 2 * F && ops->mlp_forward) {
            p->save = ops->alloc(ops->mlp_save_bytes((int)N, d, F));
            continue;
        }
        if (p->ld == 2 * F) {
            p->a = ops->alloc(2 * nf), p->b = p->a + F;
            p->da = ops->alloc(2 * nf), p->db = p->da + F;
        } else {
            p->a = ops->alloc(nf), p->b = ops->alloc(nf);
            p->da = ops->alloc(nf), p->db = ops->alloc(nf);
        }
        p->h = ops->alloc(nf), p->dh = ops->alloc(nf);
    }
    m->tmp = ops->alloc(nd);
    m->fin = ops->alloc(nd);
    m->fin_rstd = ops->alloc(sizeof(real) * N);
    m->logits = ops->alloc(sizeof(real) * N * D->V);
    m->dlogits = ops->alloc(sizeof(real) * N * D->V);
    m->dres = ops->alloc(nd);
    m->dln = ops->alloc(nd);
    m->batch_bytes = 2 * sizeof(int) * N + sizeof(real); /* 2N ints keep the real aligned */
    m->batch = ops->alloc(m->batch_bytes);
    m->host_batch = xcalloc(1, m->batch_bytes);
    m->tokens = m->batch, m->targets = m->tokens + N;
    m->inv_count = (real *)(m->targets + N);
    m->pred = ops->alloc(sizeof(int) * N);
    m->nll = ops->alloc(sizeof(real) * N);
    m->loss = ops->alloc(sizeof(real));
    return m;
}

void model_free(Model *m) {
    if (!m) return;
    const Ops *ops = m->ops;
    int L = m->dims.layers;
    ae_free(m->ae, ops);
    for (int l = 0; l < L; l++) {
        m->kind->destroy(m->mixers[l], ops);
        if (m->dims.mlp_width) {
            Mlp *p = &m->mlps[l];
            int sep = p->ld != 2 * m->dims.mlp_width; /* else b, db live inside a, da */
            void *b[] = {p->a, p->h, p->da, p->dh, sep ? p->b : NULL, sep ? p->db : NULL, p->save};
            for (int i = 0; i < 7; i++)
                if (b[i]) ops->release(b[i]);
        }
    }
    for (int i = 0; i < 2 * L + 1; i++) ops->release(m->res[i]);
    for (int i = 0; i < 2 * L; i++) ops->release(m->ln[i]), ops->release(m->rstd[i]);
    void *bufs[] = {m->tmp, m->fin, m->fin_rstd, m->logits, m->dlogits, m->dres, m->dln,
                    m->batch, m->pred, m->nll, m->loss, m->params, m->grads};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) ops->release(bufs[i]);
    free(m->res), free(m->ln), free(m->rstd), free(m->mixers), free(m->mixer_x_saved), free(m->mlps);
    free(m->p_norm);
    free(m->pb.specs);
    free(m->host_batch);
    free(m);
}

static double init_u01(void *rng) { return gsl_rng_uniform(rng); }

void model_init_params(Model *m, unsigned long seed) {
    size_t n = m->pb.total;
    real *host = xcalloc(n, sizeof(real));
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    CHECK(rng, "gsl_rng_alloc failed");
    gsl_rng_set(rng, seed);
    for (int i = 0; i < m->pb.n; i++) {
        const ParamSpec *s = &m->pb.specs[i];
        real *p = host + s->offset;
        if (s->init == INIT_CUSTOM) {
            s->init_fn(p, s->numel, init_u01, rng);
            continue;
        }
        for (size_t j = 0; j < s->numel; j++) {
            switch (s->init) {
            case INIT_ZERO: p[j] = 0; break;
            case INIT_CONST: p[j] = (real)s->init_a; break;
            case INIT_NORMAL: p[j] = (real)gsl_ran_gaussian(rng, s->init_a); break;
            case INIT_UNIFORM: p[j] = (real)((2 * gsl_rng_uniform(rng) - 1) * s->init_a); break;
            case INIT_CUSTOM: break; /* handled above */
            case INIT_S4D_REAL: p[j] = (real)log(1.0 + (double)(j % (size_t)s->cols)); break;
            }
        }
    }
    gsl_rng_free(rng);
    m->ops->to_device(m->params, host, sizeof(real) * n);
    free(host);
}

void model_set_batch(Model *m, const int *tokens, const int *targets, int B) {
    CHECK(B <= m->dims.B, "batch of %d exceeds the model's %d", B, m->dims.B);
    size_t N = (size_t)B * m->dims.T, Nmax = (size_t)m->dims.B * m->dims.T;
    int *tok = m->host_batch, *tgt = tok + Nmax;
    memcpy(tok, tokens, sizeof(int) * N);
    memcpy(tgt, targets, sizeof(int) * N);
    size_t valid = 0;
    for (size_t i = 0; i < N; i++) valid += targets[i] >= 0;
    real inv = valid ? (real)(1.0 / (double)valid) : 0;
    memcpy(tgt + Nmax, &inv, sizeof inv);
    m->ops->to_device(m->batch, m->host_batch, m->batch_bytes);
}

/* The norm that reads residual state s (the next sublayer's, or the final one):
 * its output, rstd and weight; 0 when none reads it here (the identity MLP of
 * model.mlp=none, or the autoencoder, whose decoder comes first). */
static int norm_after(Model *m, int s, real **out, real **rstd, const real **w) {
    const ModelDims *D = &m->dims;
    if (s == 2 * D->layers) {
        *out = m->fin, *rstd = m->fin_rstd, *w = P(m, m->p_final_norm);
        return !m->ae;
    }
    *out = m->ln[s], *rstd = m->rstd[s], *w = P(m, m->p_norm[s]);
    return s % 2 == 0 || D->mlp_width > 0;
}

/* the norm after residual state s, on its own */
static void norm_state(Model *m, int s, int N) {
    real *out, *rstd;
    const real *w;
    if (norm_after(m, s, &out, &rstd, &w))
        m->ops->rmsnorm_forward(out, rstd, m->res[s], w, N, m->dims.d, m->dims.norm_eps);
}

/* the bf16 state whose input the norm after residual state s may write (the MLP's after
 * an odd state, the mixer's after an even one), and the flag that says it did; NULL: none */
static void *bf16_input(Model *m, int s, int **saved) {
    int l = s / 2;
    if (s >= 2 * m->dims.layers) return NULL;
    if (s % 2) {
        *saved = m->dims.mlp_width ? &m->mlps[l].x_saved : NULL;
        return *saved ? m->mlps[l].save : NULL;
    }
    *saved = &m->mixer_x_saved[l];
    return m->kind->bf16_input ? m->kind->bf16_input(m->mixers[l]) : NULL;
}

/* the bf16 state of the block before residual state s (s >= 1), where it may leave its
 * output in bf16 (slot 1) for the norm after s to read: where that norm writes the next
 * block's bf16 input; NULL: the block writes tmp */
static void *y_state(Model *m, int s) {
    int *saved, l = (s - 1) / 2;
    if (!m->ops->residual_rmsnorm_bf16_forward || !bf16_input(m, s, &saved)) return NULL;
    if (s % 2) return m->kind->bf16_input ? m->kind->bf16_input(m->mixers[l]) : NULL;
    return m->mlps[l].save;
}

/* res[s] = res[s-1] + y (y NULL: in bf16 in y_st, from y_state), and the norm after it in
 * the same pass */
static void residual(Model *m, int s, const real *y, const void *y_st, int N) {
    real *out, *rstd;
    const real *w;
    int norm = norm_after(m, s, &out, &rstd, &w), *saved;
    void *save = bf16_input(m, s, &saved);
    if (save && m->ops->residual_rmsnorm_bf16_forward && /* the block's input, in bf16 only */
        (*saved = m->ops->residual_rmsnorm_bf16_forward(m->res[s], m->res[s - 1], y, y_st, NULL,
                                                         save, rstd, w, N, m->dims.d,
                                                         m->dims.norm_eps)))
        return;
    m->ops->residual_rmsnorm_forward(m->res[s], m->res[s - 1], y, norm ? out : NULL, rstd, w, N,
                                     m->dims.d, m->dims.norm_eps);
}

/* tmp (or with y_st, slot 1 of the MLP's state) = SwiGLU MLP of ln[2l+1]: the backend's
 * whole-MLP op, or matmuls and swiglu */
static void mlp_forward(Model *m, int l, int N, const void *y_st) {
    const Ops *ops = m->ops;
    int d = m->dims.d, F = m->dims.mlp_width;
    Mlp *p = &m->mlps[l];
    const real *x = m->ln[2 * l + 1];
    if (p->save) {
        ops->mlp_forward(y_st ? NULL : m->tmp, p->x_saved ? NULL : x, P(m, p->w1), P(m, p->w2),
                         p->save, N, d, F);
        return;
    }
    if (p->ld == 2 * F) {
        linear_forward(ops, p->a, x, P(m, p->w1), NULL, N, d, 2 * F);
    } else {
        linear_forward(ops, p->a, x, P(m, p->w1), NULL, N, d, F);
        linear_forward(ops, p->b, x, P(m, p->w3), NULL, N, d, F);
    }
    ops->swiglu_forward(p->h, p->a, p->b, N, F, p->ld);
    linear_forward(ops, m->tmp, p->h, P(m, p->w2), NULL, N, F, d);
}

/* dln = gradient of the MLP input from dres; the MLP's weight gradients */
static void mlp_backward(Model *m, int l, int N) {
    const Ops *ops = m->ops;
    int d = m->dims.d, F = m->dims.mlp_width;
    Mlp *p = &m->mlps[l];
    const real *x = m->ln[2 * l + 1];
    if (p->save) { /* its input gradient in bf16 in its state where the norm can read it */
        p->dx_saved = ops->rmsnorm_backward_bf16 != NULL;
        ops->mlp_backward(p->dx_saved ? NULL : m->dln, G(m, p->w1), G(m, p->w2),
                          p->dy_saved ? NULL : m->dres, P(m, p->w1), P(m, p->w2), p->save, N, d, F);
        return;
    }
    linear_backward_beta(ops, p->dh, 0, G(m, p->w2), NULL, m->dres, p->h, P(m, p->w2), N, F, d);
    ops->swiglu_backward(p->da, p->db, p->dh, p->a, p->b, N, F, p->ld);
    if (p->ld == 2 * F) {
        linear_backward_beta(ops, m->dln, 0, G(m, p->w1), NULL, p->da, x, P(m, p->w1), N, d, 2 * F);
    } else {
        linear_backward_beta(ops, m->dln, 0, G(m, p->w1), NULL, p->da, x, P(m, p->w1), N, d, F);
        linear_backward(ops, m->dln, G(m, p->w3), NULL, p->db, x, P(m, p->w3), N, d, F);
    }
}

/* The last residual add, the final norm, the head and the loss, with their backward, in
 * the backend's one op where it has it (training: nothing reads the logits after); 0: the
 * model runs them one by one */
static int head_loss_step(Model *m, int N) {
    const ModelDims *D = &m->dims;
    Mlp *p = &m->mlps[D->layers - 1];
    if (!m->ops->head_loss_step || m->ae) return 0;
    HeadLoss h = {.x = m->res[2 * D->layers - 1], .y = m->tmp, .norm_w = P(m, m->p_final_norm),
                  .W = P(m, m->p_head_w), .b = P(m, m->p_head_b), .inv_count = m->inv_count,
                  .targets = m->targets, .loss = m->loss, .dx = m->dres,
                  .dnorm_w = G(m, m->p_final_norm), .dW = G(m, m->p_head_w),
                  .db = G(m, m->p_head_b), .mlp_save = p->save, .N = N, .C = D->d, .V = D->V,
                  .eps = D->norm_eps};
    m->tail_done = m->ops->head_loss_step(&h);
    if (m->tail_done) p->dy_saved = p->save != NULL;
    return m->tail_done;
}

void model_forward(Model *m, int B, int with_loss) {
    const Ops *ops = m->ops;
    const ModelDims *D = &m->dims;
    int N = B * D->T, d = D->d, F = D->mlp_width, L = D->layers;
    size_t nd = sizeof(real) * (size_t)N * d;
    real *nout, *rstd;
    const real *nw;
    int norm = norm_after(m, 0, &nout, &rstd, &nw), *saved;
    void *save = bf16_input(m, 0, &saved); /* the first mixer's, its input in bf16 only */
    m->tail_done = 0;
    if (ops->params_bf16) ops->params_bf16(m->params, (long)m->pb.total);
    if (save && norm && ops->residual_rmsnorm_bf16_forward)
        *saved = ops->residual_rmsnorm_bf16_forward(m->res[0], P(m, m->p_embed), NULL, NULL,
                                                    m->tokens, save, rstd, nw, N, d, D->norm_eps);
    if (!(save && *saved) &&
        !(norm && ops->embedding_rmsnorm_forward &&
          ops->embedding_rmsnorm_forward(m->res[0], m->tokens, P(m, m->p_embed), nout, rstd, nw, N,
                                         d, D->norm_eps))) {
        ops->embedding_forward(m->res[0], m->tokens, P(m, m->p_embed), N, d);
        norm_state(m, 0, N);
    }
    for (int l = 0; l < L; l++) {
        /* mixer sublayer (its output in bf16 in its state where the norm after can read it) */
        const void *y_st = y_state(m, 2 * l + 1);
        m->kind->forward(m->mixers[l], ops, m->mixer_x_saved[l] ? NULL : m->ln[2 * l],
                         y_st ? NULL : m->tmp, B, D->T);
        residual(m, 2 * l + 1, y_st ? NULL : m->tmp, y_st, N);
        /* MLP sublayer (identity when model.mlp=none) */
        if (!F) {
            ops->copy(m->res[2 * l + 2], m->res[2 * l + 1], nd);
            norm_state(m, 2 * l + 2, N);
            continue;
        }
        y_st = y_state(m, 2 * l + 2);
        mlp_forward(m, l, N, y_st);
        if (l == L - 1 && with_loss && head_loss_step(m, N)) return;
        residual(m, 2 * l + 2, y_st ? NULL : m->tmp, y_st, N);
    }
    /* autoencoder: the final norm and head unembed the decoder output (mad.md §4.2) */
    if (m->ae)
        ops->rmsnorm_forward(m->fin, m->fin_rstd, ae_forward(m->ae, ops, m->res[2 * L], B, D->T),
                             P(m, m->p_final_norm), N, d, D->norm_eps);
    linear_forward(ops, m->logits, m->fin, P(m, m->p_head_w), P(m, m->p_head_b), N, d, D->V);
    if (with_loss)
        ops->crossentropy(m->loss, m->dlogits, m->logits, m->targets, m->inv_count, N, D->V);
}

/* the bf16 state of the block after residual state s (s < 2L) whose backward left its input
 * gradient there (slot 0) instead of in dln; NULL: none */
static void *dx_state(Model *m, int s) {
    if (s >= 2 * m->dims.layers) return NULL;
    if (s % 2) return m->mlps[s / 2].dx_saved ? m->mlps[s / 2].save : NULL;
    return m->mixer_dx_saved[s / 2] ? m->kind->bf16_input(m->mixers[s / 2]) : NULL;
}

/* the bf16 state of the block before residual state s (s >= 1), whose output gradient is
 * the dres that the norm after s finishes: the norm may write it there in bf16 too (slot 1;
 * *flag then says so) and sum its columns into *bias_grad, that block's output bias
 * gradient (NULL: none); NULL: no such state */
static void *dy_state(Model *m, int s, int **flag, real **bias_grad) {
    int l = (s - 1) / 2;
    *flag = NULL, *bias_grad = NULL;
    if (s == 0) return NULL;
    if (s % 2 == 0) { /* MLP l */
        if (!m->dims.mlp_width || !m->mlps[l].save) return NULL;
        *flag = &m->mlps[l].dy_saved;
        return m->mlps[l].save;
    }
    void *st = m->kind->bf16_input ? m->kind->bf16_input(m->mixers[l]) : NULL;
    if (!st) return NULL;
    *flag = &m->mixer_dy_saved[l];
    if (m->kind->bf16_output_bias_grad) *bias_grad = m->kind->bf16_output_bias_grad(m->mixers[l]);
    return st;
}

/* dres (write: =, else +=) the gradient through the norm after residual state s (s = 2L:
 * the final one), from dln or from the bf16 state where the block after s left it
 * (dx_state); the backend may also write the result in bf16 into the state of the block
 * before s, its output gradient (dy_state) */
static void norm_backward(Model *m, int s, int N, int write) {
    const Ops *ops = m->ops;
    const ModelDims *D = &m->dims;
    int fin = s == 2 * D->layers, d = D->d, *dy_saved;
    real *dw = G(m, fin ? m->p_final_norm : m->p_norm[s]), *rstd = fin ? m->fin_rstd : m->rstd[s];
    real *dy_bias;
    const real *w = P(m, fin ? m->p_final_norm : m->p_norm[s]);
    void *dout_state = dx_state(m, s), *dy_st = dy_state(m, s, &dy_saved, &dy_bias);
    if (dy_saved) *dy_saved = 0;
    if ((dout_state || dy_st) && ops->rmsnorm_backward_bf16 &&
        ops->rmsnorm_backward_bf16(m->dres, dw, dout_state ? NULL : m->dln, dout_state, m->res[s], w,
                                   rstd, N, d, write, dy_st, dy_bias)) {
        if (dy_saved) *dy_saved = dy_st != NULL;
        return;
    }
    if (write) rmsnorm_backward_write(ops, m->dres, dw, m->dln, m->res[s], w, rstd, N, d);
    else ops->rmsnorm_backward(m->dres, dw, m->dln, m->res[s], w, rstd, N, d);
}

void model_backward(Model *m, int B) {
    const Ops *ops = m->ops;
    const ModelDims *D = &m->dims;
    int N = B * D->T, d = D->d, F = D->mlp_width, L = D->layers, *saved;
    size_t nd = sizeof(real) * (size_t)N * d;
    if (m->tail_done) { /* the forward's head_loss_step did the head and the final norm */
        m->tail_done = 0;
    } else {
        linear_backward_beta(ops, m->dln, 0, G(m, m->p_head_w), G(m, m->p_head_b), m->dlogits,
                             m->fin, P(m, m->p_head_w), N, d, D->V);
        if (m->ae) {
            ops->zero(m->dres, nd);
            ae_backward(m->ae, ops, m->dln, P(m, m->p_final_norm), G(m, m->p_final_norm),
                        m->fin_rstd, m->dres, B, D->T);
        } else {
            norm_backward(m, 2 * L, N, 1);
        }
    }
    for (int l = L - 1; l >= 0; l--) {
        if (F) {
            mlp_backward(m, l, N);
            norm_backward(m, 2 * l + 1, N, 0);
        }
        /* a bf16 block state: the input gradient in bf16 there, where the norm reads it */
        int *in_state = &m->mixer_dx_saved[l];
        *in_state = bf16_input(m, 2 * l, &saved) && ops->rmsnorm_backward_bf16;
        if (!m->kind->backward_writes_dx && !*in_state) ops->zero(m->dln, nd);
        m->kind->backward(m->mixers[l], ops, m->ln[2 * l], m->mixer_dy_saved[l] ? NULL : m->dres,
                          *in_state ? NULL : m->dln, B, D->T);
        norm_backward(m, 2 * l, N, 0);
    }
    ops->embedding_backward(G(m, m->p_embed), m->dres, m->tokens, N, d, D->V);
}

void model_zero_grad(Model *m) { m->ops->zero(m->grads, sizeof(real) * m->pb.total); }

void model_predict(Model *m, int B, int *pred, real *nll) {
    size_t N = (size_t)B * m->dims.T;
    m->ops->predict(m->pred, m->nll, m->logits, m->targets, (int)N, m->dims.V);
    m->ops->to_host(pred, m->pred, sizeof(int) * N);
    m->ops->to_host(nll, m->nll, sizeof(real) * N);
}

double model_take_loss(Model *m) {
    real l;
    m->ops->to_host(&l, m->loss, sizeof l);
    m->ops->zero(m->loss, sizeof(real));
    return l;
}

const ModelDims *model_dims(const Model *m) { return &m->dims; }
const Ops *model_ops(const Model *m) { return m->ops; }
real *model_params(Model *m) { return m->params; }
real *model_grads(Model *m) { return m->grads; }
size_t model_num_params(const Model *m) { return m->pb.total; }

size_t model_count_params(const Model *m) {
    size_t n = 0;
    for (int i = 0; i < m->pb.n; i++) n += m->pb.specs[i].numel;
    return n;
}
int model_num_specs(const Model *m) { return m->pb.n; }
const ParamSpec *model_spec(const Model *m, int i) { return &m->pb.specs[i]; }
const MixerKind *model_mixer_kind(const Model *m) { return m->kind; }

int model_find_param(const Model *m, const char *name) {
    for (int i = 0; i < m->pb.n; i++)
        if (strcmp(m->pb.specs[i].name, name) == 0) return i;
    return -1;
}

int model_diagnostics(Model *m, char (*names)[64], double *values, int max) {
    if (!m->kind->diagnostics) return 0;
    int n = 0;
    for (int l = 0; l < m->dims.layers && n < max; l++) {
        const char *nm[16];
        double v[16];
        int k = m->kind->diagnostics(m->mixers[l], m->ops, nm, v, 16);
        for (int i = 0; i < k && n < max; i++, n++) {
            snprintf(names[n], 64, "blocks.%d.%s", l, nm[i]);
            values[n] = v[i];
        }
    }
    return n;
}
