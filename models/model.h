/* The language model: token embedding, N pre-norm residual blocks
 * (x += mixer(RMSNorm(x)); x += mlp(RMSNorm(x))), final RMSNorm, untied linear
 * head with bias, cross-entropy that skips target -100.
 *
 * Parameters and gradients live in one flat buffer each (backend memory), laid
 * out by a ParamBuilder; every tensor is described by a ParamSpec so that
 * optimizers, init and diagnostics can walk them. */
#ifndef PLAB_MODEL_H
#define PLAB_MODEL_H

#include <stddef.h>

#include "../core/config.h"
#include "../kernels/ops.h"

typedef struct {
    int V;         /* vocabulary */
    int d;         /* width */
    int layers;    /* blocks */
    int heads;
    int mlp_width; /* 0 = no MLP */
    int B, T;      /* largest batch the activations are sized for */
    real norm_eps;
    int init_normal; /* 1: N(0,0.02) linear init (MAD paper); 0: PyTorch default */
} ModelDims;

typedef enum { INIT_ZERO, INIT_CONST, INIT_NORMAL, INIT_UNIFORM, INIT_CUSTOM,
               INIT_S4D_REAL /* [rows, cols]: log(1 + column), Mamba A_log (baselines.md §4.1) */
} InitKind;

/* INIT_CUSTOM: fills the tensor on the host (e.g. A_log, dt bias, baselines.md §1.4);
 * u01(rng) draws U[0,1) from the model's init stream. */
typedef void (*InitFn)(real *p, size_t numel, double (*u01)(void *rng), void *rng);

enum {
    PARAM_MUON = 1,     /* 2-D hidden matrix: Muon eligible (baselines.md §10.3) */
    PARAM_NO_DECAY = 2, /* never weight-decayed (e.g. Mamba's A_log, dt bias) */
};

typedef struct {
    char name[64];
    size_t offset, numel;
    int rows, cols; /* matrices are [rows, cols] = [out, in]; vectors have cols = 0 */
    unsigned flags;
    InitKind init;
    double init_a; /* std (normal), bound (uniform) or value (const) */
    InitFn init_fn; /* INIT_CUSTOM only (set after pb_add) */
} ParamSpec;

typedef struct {
    ParamSpec *specs;
    int n, cap;
    size_t total;
    char prefix[48];
} ParamBuilder;

/* Declares a tensor; returns its index. rows x cols (cols = 0: vector of rows). */
int pb_add(ParamBuilder *pb, const char *name, int rows, int cols, unsigned flags, InitKind init,
           double init_a);
/* A linear layer's weight [out, in] with the model's init rule; returns its index. */
int pb_linear(ParamBuilder *pb, const ModelDims *dims, const char *name, int out, int in,
              unsigned flags);

typedef struct Model Model;

struct MixerKind;

Model *model_create(const Config *cfg, const Ops *ops, int B, int T, Err *err);
void model_free(Model *m);
/* Draws every parameter on the host from `seed` and uploads it. */
void model_init_params(Model *m, unsigned long seed);

/* Copies a batch (host memory) to the model's device buffers; B <= dims.B. */
void model_set_batch(Model *m, const int *tokens, const int *targets, int B);
/* Forward pass; with `with_loss`, also the loss (added into the device loss
 * accumulator) and dlogits for the backward pass, which must follow: a backend with
 * Ops.head_loss_step already adds the head's and final norm's gradients here, and then
 * writes no logits. */
void model_forward(Model *m, int B, int with_loss);
void model_backward(Model *m, int B);
void model_zero_grad(Model *m);
/* Per-position argmax and NLL of the last forward (device -> host). */
void model_predict(Model *m, int B, int *pred, real *nll);

/* Device accumulator of the batch-mean loss; read and reset. */
double model_take_loss(Model *m);

const ModelDims *model_dims(const Model *m);
const Ops *model_ops(const Model *m);
real *model_params(Model *m);
real *model_grads(Model *m);
/* length of the flat buffers (tensors are padded to 64 bytes) */
size_t model_num_params(const Model *m);
/* number of trainable scalars */
size_t model_count_params(const Model *m);

int model_num_specs(const Model *m);
const ParamSpec *model_spec(const Model *m, int i);
const struct MixerKind *model_mixer_kind(const Model *m);
/* Mixer diagnostics of the last forward, every layer ("blocks.0.cg_resid_max");
 * returns how many were written (at most max). */
int model_diagnostics(Model *m, char (*names)[64], double *values, int max);
/* Index of a named tensor ("blocks.0.mixer.wr"), -1 when absent. */
int model_find_param(const Model *m, const char *name);

#endif
