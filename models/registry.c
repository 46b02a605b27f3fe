/* The mixer registry: adding a mechanism is one mixer file, one line here and
 * one test file. */
#include <string.h>

#include "mixer.h"

extern const MixerKind mixer_softmax, mixer_parallax;

static const MixerKind *const mixers[] = {
    &mixer_softmax,
    &mixer_parallax,
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
