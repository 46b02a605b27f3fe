/* MAD-Lab's AutoEncoder backbone for the compression task (mad.md §4.2).
 *
 * The encoder is the model's usual block stack (causal); its residual stream
 * at the last position of each sequence is the code. The decoder gives every
 * output position p the input code + sincos(p) and runs
 * [RMSNorm, Linear(d,d), GELU, RMSNorm, Linear(d,d), GELU]; the model's final
 * RMSNorm and head then act as MAD's unembedding [norm, Linear(d,V)].
 * Chosen by model.backbone=autoencoder (the compression task presets it). */
#ifndef PLAB_AUTOENCODER_H
#define PLAB_AUTOENCODER_H

#include "model.h"

typedef struct AutoEncoder AutoEncoder;

/* true when the config asks for the autoencoder backbone */
int ae_wanted(const Config *cfg);
/* declares the decoder's parameters ("decoder.*"); NULL + err when impossible */
AutoEncoder *ae_create(const Config *cfg, const ModelDims *dims, const Ops *ops, ParamBuilder *pb,
                       Err *err);
/* points at parameters and gradients, allocates activations for dims B x T */
void ae_bind(AutoEncoder *ae, const Ops *ops, const ParamSpec *specs, real *params, real *grads);
/* h [B*T, d]: encoder output; returns the decoder output [B*T, d] (ae's buffer) */
const real *ae_forward(AutoEncoder *ae, const Ops *ops, const real *h, int B, int T);
/* Backward of the model's final RMSNorm (weight w, gradient dw, saved rstd)
 * applied to the decoder output, then of the decoder: dfin [B*T, d] is the
 * gradient of the final norm's output; ACCUMULATES the code's gradient into
 * dh at each sequence's last position. */
void ae_backward(AutoEncoder *ae, const Ops *ops, const real *dfin, const real *w, real *dw,
                 const real *rstd, real *dh, int B, int T);
void ae_free(AutoEncoder *ae, const Ops *ops);

#endif
