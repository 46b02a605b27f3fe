#include <stdio.h>
#include <string.h>

#include "../core/config.h"
#include "../models/mixer.h"
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

static void print_mixers(void) {
    printf("mixers (model.mixer=NAME):\n");
    for (int i = 0; i < mixer_count(); i++) {
        const MixerKind *m = mixer_at(i);
        printf("  %-24s %s\n", m->name, m->help);
        if (m->preset) printf("  %-24s   sets: %s\n", "", m->preset);
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
