/* One table of run keys.
 *
 * Every run key (task.*, model.*, mixer.*, optim, lr, ...) is declared once,
 * with type, default, range and one line of help (core/keys.c and the tables
 * it lists). From that table come command-line parsing, YAML validation,
 * `plab help`, "did you mean" suggestions, the canonical resolved config whose
 * hash identifies a run, and the params rows in the database. */
#ifndef PLAB_CONFIG_H
#define PLAB_CONFIG_H

#include <stdint.h>

#include "check.h"

typedef enum { KEY_INT, KEY_FLOAT, KEY_BOOL, KEY_STR, KEY_ENUM } KeyType;

enum {
    KEY_NOHASH = 1, /* does not change the result (logging, progress): left out of the hash */
};

typedef struct {
    const char *name;    /* dotted, e.g. "task.vocab_size" */
    KeyType type;
    const char *def;     /* default as text; NULL = set by the task or preset ("auto") */
    double min, max;     /* inclusive numeric range; ignored when min > max */
    const char *choices; /* KEY_ENUM: values separated by '|' */
    const char *help;
    unsigned flags;
} KeyDef;

typedef struct {
    const char *section; /* heading in `plab help` */
    const KeyDef *keys;
    int n;
} KeyTable;

#define KEYTABLE(section, arr) {section, arr, (int)(sizeof(arr) / sizeof(arr[0]))}

/* Where a value came from: explicit beats preset beats default. */
typedef enum { SRC_DEFAULT = 0, SRC_PRESET = 1, SRC_USER = 2 } ValueSource;

typedef struct Config {
    int n;
    char **values;     /* canonical text, or NULL when unset ("auto") */
    ValueSource *src;
} Config;

/* ---- the key table ---------------------------------------------------------------- */
int key_count(void);
const KeyDef *key_at(int i);
int key_index(const char *name);      /* -1 when unknown */
const char *key_section(int i);
/* Closest valid key by edit distance (NULL when nothing is close). */
const char *key_suggest(const char *name);
/* Closest word among '|'-separated choices. */
const char *choice_suggest(const char *word, const char *choices, char *buf, int buflen);

/* ---- configs ---------------------------------------------------------------------- */
Config *cfg_new(void); /* every key at its default */
Config *cfg_copy(const Config *c);
void cfg_free(Config *c);
/* Checks type, range and choices, stores the canonical text; on error fills `err`
 * (naming the key, the value and what was expected, with a suggestion) and returns -1. */
int cfg_set(Config *c, const char *key, const char *value, Err *err);
/* Sets a value only when the user has not set it (presets: protocol, task, mixer). */
int cfg_preset(Config *c, const char *key, const char *value, Err *err);
/* Applies "key=value key=value ..." with cfg_preset. */
int cfg_preset_list(Config *c, const char *list, Err *err);
/* Parses one "key=value" command-line argument. */
int cfg_parse_arg(Config *c, const char *arg, Err *err);
int cfg_is_user_set(const Config *c, const char *key);

const char *cfg_str(const Config *c, const char *key);  /* NULL when unset */
long cfg_int(const Config *c, const char *key);
double cfg_float(const Config *c, const char *key);
int cfg_bool(const Config *c, const char *key);

/* "key=value\n" for every set key, sorted by name, hashed keys only when
 * `hashed_only`. Caller frees. */
char *cfg_canonical(const Config *c, int hashed_only);
/* 64-bit FNV-1a of the canonical hashed text, as 16 hex digits. */
void cfg_hash(const Config *c, char out[17]);

/* Canonical text of a value for a key type (numbers normalised). */
int canonical_value(const KeyDef *k, const char *value, char *out, int outlen, Err *err);

#endif
