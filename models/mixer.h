/* Sequence mixers are entries of a registry (models/registry.c).
 *
 * A mixer declares its parameters with a ParamBuilder, then gets pointers to
 * them once the flat buffers exist, allocates its own activations for the
 * model's largest batch, and provides a forward/backward pair over [B, T, d]:
 * forward WRITES y; backward ACCUMULATES into dx and into its gradients (or, with
 * backward_writes_dx, writes dx, so that the model skips zeroing it). */
#ifndef PLAB_MIXER_H
#define PLAB_MIXER_H

#include "model.h"

typedef struct MixerKind {
    const char *name;
    const char *help;
    /* keys this name sets when the user has not (family members are presets of
     * the family's axes); may be NULL */
    const char *preset;
    /* declares parameters (names relative to the layer) and returns the state */
    void *(*create)(const Config *cfg, const ModelDims *dims, ParamBuilder *pb, Err *err);
    /* points at parameters and gradients (specs[i].offset for an index that
     * create got from the ParamBuilder), allocates activations */
    void (*bind)(void *self, const Ops *ops, const ParamSpec *specs, real *params, real *grads);
    void (*forward)(void *self, const Ops *ops, const real *x, real *y, int B, int T);
    void (*backward)(void *self, const Ops *ops, const real *x, const real *dy, real *dx, int B,
                     int T);
    int backward_writes_dx;
    /* optional: the backend's bf16 state of this layer (Ops.attn_block_*, ops.h "bf16 block
     * states") whose input the norm before may write in bf16 (Ops.residual_rmsnorm_bf16_forward):
     * forward is then called with x = NULL and reads it from there, and may be called with
     * y = NULL and then leaves its output there in bf16 (for the norm after); backward may
     * be called with dx = NULL and then leaves the input gradient there in bf16 (for
     * Ops.rmsnorm_backward_bf16). NULL (or returning NULL): none */
    void *(*bf16_input)(void *self);
    /* optional, with bf16_input: the gradient of the bias of the layer's output projection
     * (NULL: none); the model passes it to the norm's backward that writes the layer's
     * output gradient into its bf16 state, and then calls backward with dy = NULL */
    real *(*bf16_output_bias_grad)(void *self);
    void (*destroy)(void *self, const Ops *ops);
    /* reals of recurrent state one layer keeps per sequence (MAD compares at matched
     * state); NULL when the state grows with the sequence (softmax's KV cache) */
    size_t (*state_size)(const Config *cfg, const ModelDims *dims);
    /* optional: scalar diagnostics of the last forward pass (e.g. the attention
     * family's CG residual, "cg_resid_max"); writes up to `max` names and values
     * and returns how many. NULL when the mixer has none. */
    int (*diagnostics)(void *self, const Ops *ops, const char **names, double *values, int max);
    /* optional: 0 when the backend has the op groups this mixer needs, else -1 with
     * an error naming the missing group (called by model_create before bind) */
    int (*check_ops)(const void *self, const Ops *ops, Err *err);
} MixerKind;

const MixerKind *mixer_find(const char *name);
int mixer_count(void);
const MixerKind *mixer_at(int i);
/* Parameters and recurrent state (reals per sequence, 0 when it grows with the
 * sequence) of one layer of the mixer of a resolved config, by a dry create. */
int mixer_layer_stats(const Config *cfg, size_t *params, size_t *state, Err *err);
/* Checks model.mixer and applies its preset; fills err with a suggestion. */
int mixer_resolve(Config *cfg, const MixerKind **kind, Err *err);

#endif
