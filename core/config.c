#include "config.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern const KeyTable *const key_tables[];
extern const int key_table_count;

/* ---- key table ------------------------------------------------------------------ */

static int nkeys = -1;
static const KeyDef **keys_flat;
static const char **keys_section;

static void keys_build(void) {
    if (nkeys >= 0) return;
    int n = 0;
    for (int t = 0; t < key_table_count; t++) n += key_tables[t]->n;
    keys_flat = xmalloc(sizeof(*keys_flat) * (size_t)n);
    keys_section = xmalloc(sizeof(*keys_section) * (size_t)n);
    n = 0;
    for (int t = 0; t < key_table_count; t++)
        for (int i = 0; i < key_tables[t]->n; i++) {
            const KeyDef *k = &key_tables[t]->keys[i];
            for (int j = 0; j < n; j++)
                CHECK(strcmp(keys_flat[j]->name, k->name) != 0, "key '%s' declared twice", k->name);
            keys_section[n] = key_tables[t]->section;
            keys_flat[n++] = k;
        }
    nkeys = n;
}

int key_count(void) {
    keys_build();
    return nkeys;
}

const KeyDef *key_at(int i) {
    keys_build();
    return keys_flat[i];
}

const char *key_section(int i) {
    keys_build();
    return keys_section[i];
}

int key_index(const char *name) {
    keys_build();
    for (int i = 0; i < nkeys; i++)
        if (strcmp(keys_flat[i]->name, name) == 0) return i;
    return -1;
}

static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 200 || lb > 200) return 1000;
    int prev[201], cur[201];
    for (int j = 0; j <= lb; j++) prev[j] = j;
    for (int i = 1; i <= la; i++) {
        cur[0] = i;
        for (int j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
    }
    return prev[lb];
}

/* distance of `word` to `cand`, also trying cand's last dotted component
 * so that "vocab_size" suggests "task.vocab_size" */
static int key_distance(const char *word, const char *cand) {
    int d = edit_distance(word, cand);
    const char *dot = strrchr(cand, '.');
    if (dot && !strchr(word, '.')) {
        int d2 = edit_distance(word, dot + 1);
        if (d2 < d) d = d2;
    }
    return d;
}

const char *key_suggest(const char *name) {
    keys_build();
    const char *best = NULL;
    int bestd = 1 << 30;
    for (int i = 0; i < nkeys; i++) {
        int d = key_distance(name, keys_flat[i]->name);
        if (d < bestd) bestd = d, best = keys_flat[i]->name;
    }
    int len = (int)strlen(name);
    return bestd <= (len < 6 ? 2 : len / 3 + 1) ? best : NULL;
}

const char *choice_suggest(const char *word, const char *choices, char *buf, int buflen) {
    const char *best = NULL;
    int bestd = 1 << 30, bestlen = 0;
    const char *p = choices;
    while (*p) {
        const char *e = strchr(p, '|');
        int len = e ? (int)(e - p) : (int)strlen(p);
        char tmp[128];
        snprintf(tmp, sizeof tmp, "%.*s", len, p);
        int d = edit_distance(word, tmp);
        if (d < bestd) bestd = d, best = p, bestlen = len;
        p += len + (e ? 1 : 0);
    }
    int wl = (int)strlen(word);
    if (!best || bestd > (wl < 6 ? 2 : wl / 3 + 1)) return NULL;
    snprintf(buf, (size_t)buflen, "%.*s", bestlen, best);
    return buf;
}

/* ---- values --------------------------------------------------------------------- */

static int choice_ok(const char *choices, const char *v) {
    size_t lv = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == lv && strncmp(p, v, len) == 0) return 1;
        p += len + (e ? 1 : 0);
    }
    return 0;
}

int canonical_value(const KeyDef *k, const char *value, char *out, int outlen, Err *err) {
    while (isspace((unsigned char)*value)) value++;
    char v[512];
    snprintf(v, sizeof v, "%s", value);
    for (int n = (int)strlen(v); n > 0 && isspace((unsigned char)v[n - 1]); n--) v[n - 1] = 0;
    char *end;
    switch (k->type) {
    case KEY_INT: {
        double d = strtod(v, &end);
        if (!*v || *end || d != floor(d) || fabs(d) > 9e15) {
            err_set(err, "key '%s': '%s' is not an integer", k->name, v);
            return -1;
        }
        if (k->min <= k->max && (d < k->min || d > k->max)) {
            err_set(err, "key '%s': %s is out of range; expected an integer in [%.15g, %.15g]",
                    k->name, v, k->min, k->max);
            return -1;
        }
        snprintf(out, (size_t)outlen, "%lld", (long long)d);
        return 0;
    }
    case KEY_FLOAT: {
        double d;
        if (strcmp(v, "inf") == 0 || strcmp(v, "infinity") == 0) d = INFINITY;
        else {
            d = strtod(v, &end);
            if (!*v || *end || isnan(d)) {
                err_set(err, "key '%s': '%s' is not a number", k->name, v);
                return -1;
            }
        }
        if (k->min <= k->max && (d < k->min || d > k->max)) {
            err_set(err, "key '%s': %s is out of range; expected a number in [%.6g, %.6g]", k->name,
                    v, k->min, k->max);
            return -1;
        }
        if (isinf(d)) snprintf(out, (size_t)outlen, "%s", d > 0 ? "inf" : "-inf");
        else snprintf(out, (size_t)outlen, "%.10g", d);
        return 0;
    }
    case KEY_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
            snprintf(out, (size_t)outlen, "true");
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
            snprintf(out, (size_t)outlen, "false");
        else {
            err_set(err, "key '%s': '%s' is not a boolean; expected true or false", k->name, v);
            return -1;
        }
        return 0;
    case KEY_ENUM:
        if (!choice_ok(k->choices, v)) {
            char buf[128];
            const char *s = choice_suggest(v, k->choices, buf, sizeof buf);
            err_set(err, "key '%s': '%s' is not one of %s%s%s%s", k->name, v, k->choices,
                    s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
            return -1;
        }
        snprintf(out, (size_t)outlen, "%s", v);
        return 0;
    case KEY_STR:
        snprintf(out, (size_t)outlen, "%s", v);
        return 0;
    }
    return -1;
}

/* ---- configs -------------------------------------------------------------------- */

Config *cfg_new(void) {
    Config *c = xcalloc(1, sizeof *c);
    c->n = key_count();
    c->values = xcalloc((size_t)c->n, sizeof(char *));
    c->src = xcalloc((size_t)c->n, sizeof(ValueSource));
    for (int i = 0; i < c->n; i++) {
        const KeyDef *k = key_at(i);
        if (k->def) {
            char buf[512];
            Err e;
            CHECK(canonical_value(k, k->def, buf, sizeof buf, &e) == 0, "bad default: %s", e.msg);
            c->values[i] = xstrdup(buf);
        }
    }
    return c;
}

Config *cfg_copy(const Config *c) {
    Config *d = xcalloc(1, sizeof *d);
    d->n = c->n;
    d->values = xcalloc((size_t)c->n, sizeof(char *));
    d->src = xcalloc((size_t)c->n, sizeof(ValueSource));
    for (int i = 0; i < c->n; i++) {
        d->values[i] = c->values[i] ? xstrdup(c->values[i]) : NULL;
        d->src[i] = c->src[i];
    }
    return d;
}

void cfg_free(Config *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) free(c->values[i]);
    free(c->values);
    free(c->src);
    free(c);
}

static int unknown_key(const char *key, Err *err) {
    const char *s = key_suggest(key);
    if (s) err_set(err, "unknown key '%s' (did you mean '%s'?)", key, s);
    else err_set(err, "unknown key '%s' (see `plab help train` for the list)", key);
    return -1;
}

static int set_with_source(Config *c, const char *key, const char *value, ValueSource src,
                           Err *err) {
    int i = key_index(key);
    if (i < 0) return unknown_key(key, err);
    if (c->src[i] > src) return 0; /* a stronger source already set it */
    char buf[512];
    if (canonical_value(key_at(i), value, buf, sizeof buf, err) != 0) return -1;
    free(c->values[i]);
    c->values[i] = xstrdup(buf);
    c->src[i] = src;
    return 0;
}

int cfg_set(Config *c, const char *key, const char *value, Err *err) {
    return set_with_source(c, key, value, SRC_USER, err);
}

int cfg_preset(Config *c, const char *key, const char *value, Err *err) {
    return set_with_source(c, key, value, SRC_PRESET, err);
}

int cfg_preset_list(Config *c, const char *list, Err *err) {
    char *copy = xstrdup(list), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        char *eq = strchr(tok, '=');
        CHECK(eq, "preset item '%s' lacks '='", tok);
        *eq = 0;
        if (cfg_preset(c, tok, eq + 1, err) != 0) {
            rc = -1;
            break;
        }
    }
    free(copy);
    return rc;
}

int cfg_parse_arg(Config *c, const char *arg, Err *err) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        err_set(err, "argument '%s' is not of the form key=value", arg);
        return -1;
    }
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(eq - arg), arg);
    return cfg_set(c, key, eq + 1, err);
}

int cfg_is_user_set(const Config *c, const char *key) {
    int i = key_index(key);
    CHECK(i >= 0, "internal: unknown key '%s'", key);
    return c->src[i] == SRC_USER;
}

const char *cfg_str(const Config *c, const char *key) {
    int i = key_index(key);
    CHECK(i >= 0, "internal: unknown key '%s'", key);
    return c->values[i];
}

long cfg_int(const Config *c, const char *key) {
    const char *v = cfg_str(c, key);
    CHECK(v, "key '%s' has no value", key);
    return strtol(v, NULL, 10);
}

double cfg_float(const Config *c, const char *key) {
    const char *v = cfg_str(c, key);
    CHECK(v, "key '%s' has no value", key);
    if (!strcmp(v, "inf")) return INFINITY;
    if (!strcmp(v, "-inf")) return -INFINITY;
    return strtod(v, NULL);
}

int cfg_bool(const Config *c, const char *key) {
    const char *v = cfg_str(c, key);
    CHECK(v, "key '%s' has no value", key);
    return strcmp(v, "true") == 0;
}

static int cmp_idx(const void *a, const void *b) {
    return strcmp(key_at(*(const int *)a)->name, key_at(*(const int *)b)->name);
}

char *cfg_canonical(const Config *c, int hashed_only) {
    int *idx = xmalloc(sizeof(int) * (size_t)c->n);
    for (int i = 0; i < c->n; i++) idx[i] = i;
    qsort(idx, (size_t)c->n, sizeof(int), cmp_idx);
    size_t cap = 4096, len = 0;
    char *out = xmalloc(cap);
    out[0] = 0;
    for (int j = 0; j < c->n; j++) {
        int i = idx[j];
        if (!c->values[i]) continue;
        if (hashed_only && (key_at(i)->flags & KEY_NOHASH)) continue;
        size_t need = strlen(key_at(i)->name) + strlen(c->values[i]) + 3;
        if (len + need >= cap) out = xrealloc(out, cap = 2 * cap + need);
        len += (size_t)sprintf(out + len, "%s=%s\n", key_at(i)->name, c->values[i]);
    }
    free(idx);
    return out;
}

void cfg_hash(const Config *c, char out[17]) {
    char *text = cfg_canonical(c, 1);
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    free(text);
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}
