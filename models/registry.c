/* The mixer registry: adding a mechanism is one mixer file, one line here and
 * one test file. */
#include <stdlib.h>
#include <string.h>

#include "mixer.h"

extern const MixerKind mixer_softmax, mixer_parallax;
extern const MixerKind mixer_family, mixer_lla, mixer_value_avg, mixer_affine_linear_attention,
    mixer_affine_mesa, mixer_linear_attention, mixer_mesa; /* attention.c */
extern const MixerKind mixer_deltanet, mixer_gated_deltanet, mixer_kda, mixer_mesanet;
extern const MixerKind mixer_mamba, mixer_mamba2; /* mamba.c, mamba2.c */

static const MixerKind *const mixers[] = {
    &mixer_softmax,
    &mixer_parallax,
    &mixer_family, &mixer_lla, &mixer_value_avg, &mixer_affine_linear_attention, &mixer_affine_mesa, &mixer_linear_attention, &mixer_mesa,
    &mixer_deltanet, &mixer_gated_deltanet, &mixer_kda, &mixer_mesanet,
    &mixer_mamba,
    &mixer_mamba2,
};

int mixer_count(void) { return (int)(sizeof mixers / sizeof mixers[0]); }
const MixerKind *mixer_at(int i) { return mixers[i]; }

const MixerKind *mixer_find(const char *name) {
    for (int i = 0; i < mixer_count(); i++)
        if (strcmp(mixers[i]->name, name) == 0) return mixers[i];
    return NULL;
}

int mixer_resolve(Config *cfg, const MixerKind **kind, Err *err) {
    const char *name = cfg_str(cfg, "model.mixer");
    const MixerKind *k = mixer_find(name);
    if (!k) {
        char choices[2048] = "", buf[128];
        for (int i = 0; i < mixer_count(); i++) {
            if (i) strcat(choices, "|");
            strncat(choices, mixers[i]->name, sizeof choices - strlen(choices) - 1);
        }
        const char *s = choice_suggest(name, choices, buf, sizeof buf);
        err_set(err, "key 'model.mixer': unknown mixer '%s'%s%s%s (mixers: %s)", name,
                s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "", choices);
        return -1;
    }
    if (k->preset && cfg_preset_list(cfg, k->preset, err) != 0) return -1;
    *kind = k;
    return 0;
}

int mixer_layer_stats(const Config *cfg, size_t *params, size_t *state, Err *err) {
    const MixerKind *k = mixer_find(cfg_str(cfg, "model.mixer"));
    if (!k) {
        err_set(err, "unknown mixer '%s'", cfg_str(cfg, "model.mixer"));
        return -1;
    }
    ModelDims D = {.V = (int)cfg_int(cfg, "task.vocab_size"), .d = (int)cfg_int(cfg, "model.d_model"),
                   .layers = 1, .heads = (int)cfg_int(cfg, "model.heads"), .B = 1, .T = 1,
                   .norm_eps = (real)cfg_float(cfg, "model.norm_eps")};
    ParamBuilder pb = {0};
    void *self = k->create(cfg, &D, &pb, err);
    if (!self) {
        free(pb.specs);
        return -1;
    }
    *params = 0;
    for (int i = 0; i < pb.n; i++) *params += pb.specs[i].numel;
    *state = k->state_size ? k->state_size(cfg, &D) : 0;
    k->destroy(self, ops_cpu());
    free(pb.specs);
    return 0;
}
