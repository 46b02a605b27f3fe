/* Sequence mixers are entries of a registry (models/registry.c).
 *
 * A mixer declares its parameters with a ParamBuilder, then gets pointers to
 * them once the flat buffers exist, allocates its own activations for the
 * model's largest batch, and provides a forward/backward pair over [B, T, d]:
 * forward WRITES y; backward ACCUMULATES into dx and into its gradients. */
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
    void (*destroy)(void *self, const Ops *ops);
} MixerKind;

const MixerKind *mixer_find(const char *name);
int mixer_count(void);
const MixerKind *mixer_at(int i);
/* Checks model.mixer and applies its preset; fills err with a suggestion. */
int mixer_resolve(Config *cfg, const MixerKind **kind, Err *err);

#endif
