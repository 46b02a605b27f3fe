#include <stdio.h>
#include <string.h>

#include "../core/config.h"
#include "../models/mixer.h"
#include "../train/train.h"
#include "cli.h"

extern const Command *const commands[];
extern const int command_count;

int wants_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

static const char *type_name(const KeyDef *k) {
    switch (k->type) {
    case KEY_INT: return "int";
    case KEY_FLOAT: return "float";
    case KEY_BOOL: return "bool";
    case KEY_STR: return "string";
    case KEY_ENUM: return "choice";
    }
    return "?";
}

void print_keys(const char *prefix) {
    const char *section = NULL;
    for (int i = 0; i < key_count(); i++) {
        const KeyDef *k = key_at(i);
        if (prefix && strncmp(k->name, prefix, strlen(prefix)) != 0) continue;
        if (!section || strcmp(section, key_section(i)) != 0) {
            section = key_section(i);
            printf("\n[%s]\n", section);
        }
        char def[64];
        snprintf(def, sizeof def, "%s", k->def ? k->def : "(task)");
        printf("  %-22s %-7s %-12s %s", k->name, type_name(k), def, k->help);
        if (k->type == KEY_ENUM) printf(" {%s}", k->choices);
        printf("\n");
    }
}

/* one row per mixer with its parameters and state at the default config
 * (d_model 128, MAD's vocabulary 16), the numbers MAD compares at */
static void print_mixers(void) {
    printf("mixers (model.mixer=NAME); params and state per layer at d_model=128, vocab 16:\n\n");
    printf("  %-24s %9s %11s  %s\n", "name", "params", "state", "what");
    for (int i = 0; i < mixer_count(); i++) {
        const MixerKind *m = mixer_at(i);
        Config *c = cfg_new();
        Err e;
        size_t np = 0, ns = 0;
        char pbuf[32] = "?", sbuf[32] = "?";
        if (cfg_set(c, "model.mixer", m->name, &e) == 0 && config_resolve(c, &e) == 0 &&
            mixer_layer_stats(c, &np, &ns, &e) == 0) {
            snprintf(pbuf, sizeof pbuf, "%zu", np);
            if (ns) snprintf(sbuf, sizeof sbuf, "%zu", ns);
            else snprintf(sbuf, sizeof sbuf, "grows (KV)");
        }
        cfg_free(c);
        printf("  %-24s %9s %11s  %s\n", m->name, pbuf, sbuf, m->help);
        if (m->preset) printf("  %-24s %9s %11s    sets: %s\n", "", "", "", m->preset);
    }
}

void help_help(void) {
    printf("usage: plab help [COMMAND | keys [PREFIX] | mixers]\n\n"
           "  plab help train     every run key with type, default and meaning\n"
           "  plab help keys mixer.   only keys starting with a prefix\n"
           "  plab help mixers    the sequence mixers and their presets\n");
}

int cmd_help(int argc, char **argv) {
    if (argc == 0) {
        help_help();
        return 0;
    }
    if (!strcmp(argv[0], "mixers")) {
        print_mixers();
        return 0;
    }
    if (!strcmp(argv[0], "keys")) {
        print_keys(argc > 1 ? argv[1] : NULL);
        return 0;
    }
    for (int i = 0; i < command_count; i++)
        if (!strcmp(argv[0], commands[i]->name)) {
            commands[i]->help();
            return 0;
        }
    fprintf(stderr, "plab help: no help on '%s' (try `plab help`)\n", argv[0]);
    return 2;
}
