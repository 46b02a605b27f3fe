/* Reading a sweep file with libyaml's document API: every node carries its
 * start mark, so every complaint names file:line:col (design.md, "one table
 * of keys": values are checked against the same key table as `plab train`). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../train/train.h"
#include "sweep.h"

typedef struct {
    yaml_document_t doc;
    const char *file;
    Err *err;
    Config *scratch; /* values are validated by setting them here */
} P;

static int fail(P *p, const yaml_node_t *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(P *p, const yaml_node_t *n, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n) err_set(p->err, "%s:%zu:%zu: %s", p->file, n->start_mark.line + 1, n->start_mark.column + 1, msg);
    else err_set(p->err, "%s: %s", p->file, msg);
    return -1;
}

static yaml_node_t *node(P *p, int i) { return yaml_document_get_node(&p->doc, i); }
static const char *text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }
static int is_scalar(const yaml_node_t *n) { return n->type == YAML_SCALAR_NODE; }
static int is_map(const yaml_node_t *n) { return n->type == YAML_MAPPING_NODE; }
static int is_seq(const yaml_node_t *n) { return n->type == YAML_SEQUENCE_NODE; }
static const char *kind(const yaml_node_t *n) {
    return is_scalar(n) ? "a scalar" : is_map(n) ? "a mapping" : "a list";
}

#define FOR_PAIRS(p, map, k, v)                                                         \
    for (yaml_node_pair_t *pr_ = (map)->data.mapping.pairs.start;                       \
         pr_ < (map)->data.mapping.pairs.top &&                                         \
         ((k) = node((p), pr_->key), (v) = node((p), pr_->value), 1);                  \
         pr_++)

/* a plain scalar that YAML means as null (`~`, `null`, or nothing) */
static int is_null(const yaml_node_t *n) {
    if (!is_scalar(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *t = text(n);
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

static int want_scalar(P *p, const yaml_node_t *n, const char *what) {
    if (!is_scalar(n) || is_null(n))
        return fail(p, n, "%s: expected a value, found %s", what, is_null(n) ? "nothing" : kind(n));
    return 0;
}

/* checks `key: value` against the key table and appends it to `a` */
static int add_assign(P *p, Assign *a, const yaml_node_t *kn, const yaml_node_t *vn) {
    if (!is_scalar(kn)) return fail(p, kn, "expected a key name, found %s", kind(kn));
    const char *key = text(kn);
    Err e;
    if (key_index(key) < 0) {
        cfg_set(p->scratch, key, "", &e); /* builds "unknown key ... (did you mean ...)" */
        return fail(p, kn, "%s", e.msg);
    }
    if (want_scalar(p, vn, key)) return -1;
    if (cfg_set(p->scratch, key, text(vn), &e) != 0) return fail(p, vn, "%s", e.msg);
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->keys[i], key)) return fail(p, kn, "key '%s' is set twice", key);
    a->keys = xrealloc(a->keys, sizeof(char *) * (size_t)(a->n + 1));
    a->vals = xrealloc(a->vals, sizeof(char *) * (size_t)(a->n + 1));
    a->line = xrealloc(a->line, sizeof(int) * (size_t)(a->n + 1));
    a->col = xrealloc(a->col, sizeof(int) * (size_t)(a->n + 1));
    a->line[a->n] = (int)vn->start_mark.line + 1;
    a->col[a->n] = (int)vn->start_mark.column + 1;
    a->keys[a->n] = xstrdup(key);
    a->vals[a->n++] = xstrdup(text(vn));
    return 0;
}

static void assign_free(Assign *a) {
    for (int i = 0; i < a->n; i++) free(a->keys[i]), free(a->vals[i]);
    free(a->keys), free(a->vals), free(a->line), free(a->col);
    memset(a, 0, sizeof *a);
}

/* One entry of values: a scalar for the parameter's own key, or a mapping of
 * several keys set together (a tied parameter). */
static int parse_choice(P *p, const SweepParam *sp, const yaml_node_t *name_node,
                        const yaml_node_t *vn, Assign *out) {
    memset(out, 0, sizeof *out);
    if (is_map(vn)) {
        if (vn->data.mapping.pairs.top == vn->data.mapping.pairs.start)
            return fail(p, vn, "parameter '%s': an empty mapping sets no key", sp->name);
        yaml_node_t *k, *v;
        FOR_PAIRS(p, vn, k, v) if (add_assign(p, out, k, v)) return -1;
        return 0;
    }
    if (is_seq(vn)) return fail(p, vn, "parameter '%s': a value cannot be a list", sp->name);
    return add_assign(p, out, name_node, vn);
}

static double number(P *p, const yaml_node_t *n, const char *what, int *bad) {
    if (want_scalar(p, n, what)) return *bad = 1, 0;
    char *end;
    errno = 0;
    double d = strtod(text(n), &end);
    if (end == text(n) || *end || !isfinite(d)) {
        fail(p, n, "%s: '%s' is not a number", what, text(n));
        return *bad = 1, 0;
    }
    return d;
}

static const char *const param_fields = "values|value|distribution|min|max|q";
static const char *const dists = "uniform|int_uniform|q_uniform|log_uniform_values";

static int parse_param(P *p, Sweep *s, const yaml_node_t *kn, const yaml_node_t *vn) {
    if (!is_scalar(kn)) return fail(p, kn, "expected a parameter name, found %s", kind(kn));
    SweepParam *sp = &s->params[s->nparams];
    memset(sp, 0, sizeof *sp);
    sp->name = xstrdup(text(kn));
    sp->line = (int)kn->start_mark.line + 1, sp->col = (int)kn->start_mark.column + 1;
    s->nparams++;
    for (int i = 0; i < s->nparams - 1; i++)
        if (!strcmp(s->params[i].name, sp->name))
            return fail(p, kn, "parameter '%s' is given twice", sp->name);
    if (!is_map(vn))
        return fail(p, vn, "parameter '%s': expected a mapping such as {values: [...]} or "
                           "{distribution: uniform, min: A, max: B}, found %s", sp->name, kind(vn));
    const yaml_node_t *values = NULL, *value = NULL, *dist = NULL, *mn = NULL, *mx = NULL, *q = NULL;
    yaml_node_t *k, *v;
    FOR_PAIRS(p, vn, k, v) {
        const char *f = is_scalar(k) ? text(k) : "";
        if (!strcmp(f, "values")) values = v;
        else if (!strcmp(f, "value")) value = v;
        else if (!strcmp(f, "distribution")) dist = v;
        else if (!strcmp(f, "min")) mn = v;
        else if (!strcmp(f, "max")) mx = v;
        else if (!strcmp(f, "q")) q = v;
        else {
            char buf[64];
            const char *sug = choice_suggest(f, param_fields, buf, sizeof buf);
            if (!strcmp(f, "parameters"))
                return fail(p, k, "parameter '%s': nested parameters are not supported; use dotted keys "
                                  "(e.g. mixer.bandwidth) or a tied parameter", sp->name);
            return fail(p, k, "parameter '%s': unknown field '%s'%s%s%s; expected one of %s", sp->name, f,
                        sug ? " (did you mean '" : "", sug ? sug : "", sug ? "'?)" : "", param_fields);
        }
    }
    if ((values || value) && (dist || mn || mx || q))
        return fail(p, vn, "parameter '%s': give either values/value or a distribution with min/max, "
                           "not both", sp->name);
    if (values && value) return fail(p, vn, "parameter '%s': give values or value, not both", sp->name);
    if (values || value) {
        sp->dist = DIST_VALUES;
        if (value) {
            sp->values = xcalloc(1, sizeof(Assign));
            sp->nvalues = 1;
            return parse_choice(p, sp, kn, value, &sp->values[0]);
        }
        if (!is_seq(values))
            return fail(p, values, "parameter '%s': values: expected a list such as [a, b], found %s",
                        sp->name, kind(values));
        int n = (int)(values->data.sequence.items.top - values->data.sequence.items.start);
        if (n == 0)
            return fail(p, values, "parameter '%s' has an empty list of values: the grid is empty",
                        sp->name);
        sp->values = xcalloc((size_t)n, sizeof(Assign));
        for (int i = 0; i < n; i++) {
            sp->nvalues = i + 1;
            if (parse_choice(p, sp, kn, node(p, values->data.sequence.items.start[i]), &sp->values[i]))
                return -1;
        }
        return 0;
    }
    /* a distribution: random search only, over one numeric key */
    int ki = key_index(sp->name);
    if (ki < 0) {
        Err e;
        cfg_set(p->scratch, sp->name, "", &e);
        return fail(p, kn, "%s", e.msg);
    }
    const KeyDef *kd = key_at(ki);
    if (kd->type != KEY_INT && kd->type != KEY_FLOAT)
        return fail(p, kn, "parameter '%s': a distribution needs a numeric key; use values: [...]",
                    sp->name);
    if (!mn || !mx)
        return fail(p, vn, "parameter '%s': expected values: [...], value: x, or min and max "
                           "(with an optional distribution)", sp->name);
    int bad = 0;
    sp->min = number(p, mn, "min", &bad);
    if (!bad) sp->max = number(p, mx, "max", &bad);
    if (!bad) sp->q = q ? number(p, q, "q", &bad) : 1;
    if (bad) return -1;
    int ints = sp->min == floor(sp->min) && sp->max == floor(sp->max) && !strpbrk(text(mn), ".eE") &&
               !strpbrk(text(mx), ".eE");
    if (!dist) sp->dist = ints ? DIST_INT_UNIFORM : DIST_UNIFORM; /* the W&B rule */
    else {
        if (want_scalar(p, dist, "distribution")) return -1;
        const char *d = text(dist);
        if (!strcmp(d, "uniform")) sp->dist = DIST_UNIFORM;
        else if (!strcmp(d, "int_uniform")) sp->dist = DIST_INT_UNIFORM;
        else if (!strcmp(d, "q_uniform")) sp->dist = DIST_Q_UNIFORM;
        else if (!strcmp(d, "log_uniform_values")) sp->dist = DIST_LOG_UNIFORM_VALUES;
        else {
            char buf[64];
            const char *sug = choice_suggest(d, dists, buf, sizeof buf);
            return fail(p, dist, "parameter '%s': distribution '%s' is not supported; expected one of "
                                 "%s%s%s%s", sp->name, d, dists, sug ? " (did you mean '" : "",
                        sug ? sug : "", sug ? "'?)" : "");
        }
    }
    if (sp->min > sp->max)
        return fail(p, mn, "parameter '%s': min %g is above max %g", sp->name, sp->min, sp->max);
    if (sp->dist == DIST_INT_UNIFORM && (sp->min != floor(sp->min) || sp->max != floor(sp->max)))
        return fail(p, mn, "parameter '%s': int_uniform needs integer min and max", sp->name);
    if (sp->dist == DIST_LOG_UNIFORM_VALUES && sp->min <= 0)
        return fail(p, mn, "parameter '%s': log_uniform_values needs min > 0, found %g", sp->name, sp->min);
    if (sp->dist == DIST_Q_UNIFORM && !(sp->q > 0))
        return fail(p, q ? q : vn, "parameter '%s': q must be > 0", sp->name);
    if (kd->type == KEY_INT && sp->dist == DIST_UNIFORM)
        return fail(p, kn, "parameter '%s' is an integer key; use int_uniform or q_uniform", sp->name);
    /* both ends must be valid values of the key (range) */
    Err e;
    char buf[64];
    snprintf(buf, sizeof buf, "%.17g", sp->min);
    if (cfg_set(p->scratch, sp->name, buf, &e)) return fail(p, mn, "min: %s", e.msg);
    snprintf(buf, sizeof buf, "%.17g", sp->max);
    if (cfg_set(p->scratch, sp->name, buf, &e)) return fail(p, mx, "max: %s", e.msg);
    return 0;
}

static const char *const top_keys =
    "name|description|method|run_cap|metric|seed|base|parameters";

static int parse_metric(P *p, Sweep *s, const yaml_node_t *n) {
    if (!is_map(n))
        return fail(p, n, "metric: expected a mapping such as {name: test_acc, goal: maximize}, found %s",
                    kind(n));
    yaml_node_t *k, *v;
    FOR_PAIRS(p, n, k, v) {
        const char *f = is_scalar(k) ? text(k) : "";
        if (!strcmp(f, "name")) {
            if (want_scalar(p, v, "metric.name")) return -1;
            static const char *const ok = "test_acc|test_token_acc|test_ppl|train_loss|seconds";
            char buf[64];
            char bar[80];
            snprintf(bar, sizeof bar, "|%s|", text(v));
            if (!strstr("|test_acc|test_token_acc|test_ppl|train_loss|seconds|", bar)) {
                const char *sug = choice_suggest(text(v), ok, buf, sizeof buf);
                return fail(p, v, "metric.name: '%s' is not a final metric; expected one of %s%s%s%s",
                            text(v), ok, sug ? " (did you mean '" : "", sug ? sug : "", sug ? "'?)" : "");
            }
            free(s->metric);
            s->metric = xstrdup(text(v));
        } else if (!strcmp(f, "goal")) {
            if (want_scalar(p, v, "metric.goal")) return -1;
            if (!strcmp(text(v), "maximize")) s->maximize = 1;
            else if (!strcmp(text(v), "minimize")) s->maximize = 0;
            else return fail(p, v, "metric.goal: '%s' is not maximize or minimize", text(v));
        } else if (!strcmp(f, "target")) {
            /* accepted for W&B compatibility; plab does not stop sweeps early */
        } else {
            return fail(p, k, "metric: unknown field '%s'; expected name or goal", f);
        }
    }
    return 0;
}

static int parse_int(P *p, const yaml_node_t *n, const char *what, long lo, long hi, long *out) {
    if (want_scalar(p, n, what)) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(text(n), &end, 10);
    if (end == text(n) || *end || errno || v < lo || v > hi)
        return fail(p, n, "%s: '%s' is not an integer in [%ld, %ld]", what, text(n), lo, hi);
    *out = (long)v;
    return 0;
}

static int parse_doc(P *p, Sweep *s) {
    yaml_node_t *root = yaml_document_get_root_node(&p->doc);
    if (!root) return fail(p, NULL, "the file is empty; a sweep needs at least method and parameters");
    if (!is_map(root)) return fail(p, root, "expected a mapping of sweep keys at the top, found %s", kind(root));
    const yaml_node_t *method = NULL, *cap = NULL, *params = NULL;
    yaml_node_t *k, *v;
    FOR_PAIRS(p, root, k, v) {
        if (!is_scalar(k)) return fail(p, k, "expected a sweep key, found %s", kind(k));
        const char *f = text(k);
        for (yaml_node_pair_t *q = root->data.mapping.pairs.start; q < pr_; q++)
            if (!strcmp(text(node(p, q->key)), f)) return fail(p, k, "sweep key '%s' is given twice", f);
        if (!strcmp(f, "name") || !strcmp(f, "description")) {
            if (want_scalar(p, v, f)) return -1;
            char **dst = f[0] == 'n' ? &s->name : &s->description;
            free(*dst);
            *dst = xstrdup(text(v));
        } else if (!strcmp(f, "method")) method = v;
        else if (!strcmp(f, "run_cap")) cap = v;
        else if (!strcmp(f, "metric")) {
            if (parse_metric(p, s, v)) return -1;
        } else if (!strcmp(f, "seed")) {
            long seed;
            if (parse_int(p, v, "seed", 0, 2147483647L, &seed)) return -1;
            s->seed = (unsigned long)seed;
        } else if (!strcmp(f, "base")) {
            if (is_null(v)) continue;
            if (!is_map(v)) return fail(p, v, "base: expected a mapping of run keys, found %s", kind(v));
            for (yaml_node_pair_t *b = v->data.mapping.pairs.start; b < v->data.mapping.pairs.top; b++)
                if (add_assign(p, &s->base, node(p, b->key), node(p, b->value))) return -1;
        } else if (!strcmp(f, "parameters")) params = v;
        else if (!strcmp(f, "program") || !strcmp(f, "command") || !strcmp(f, "early_terminate") ||
                 !strcmp(f, "project") || !strcmp(f, "entity")) {
            return fail(p, k, "sweep key '%s' (W&B) is not supported by plab; known keys: %s", f,
                        top_keys);
        } else {
            char buf[64];
            const char *sug = choice_suggest(f, top_keys, buf, sizeof buf);
            if (!sug && key_index(f) >= 0)
                return fail(p, k, "unknown sweep key '%s': run keys go under base: or parameters:", f);
            return fail(p, k, "unknown sweep key '%s'%s%s%s; expected one of %s", f,
                        sug ? " (did you mean '" : "", sug ? sug : "", sug ? "'?)" : "", top_keys);
        }
    }
    if (!method) return fail(p, root, "missing 'method' (grid or random)");
    if (want_scalar(p, method, "method")) return -1;
    if (!strcmp(text(method), "random")) s->random = 1;
    else if (strcmp(text(method), "grid"))
        return fail(p, method, "method: '%s' is not supported; expected grid or random", text(method));
    if (cap && parse_int(p, cap, "run_cap", 1, 200000L, &s->run_cap)) return -1;
    if (s->random && !cap) return fail(p, method, "method random needs run_cap (the number of runs to draw)");
    if (!params) return fail(p, root, "missing 'parameters' (the keys to sweep)");
    if (!is_map(params)) return fail(p, params, "parameters: expected a mapping, found %s", kind(params));
    int n = (int)(params->data.mapping.pairs.top - params->data.mapping.pairs.start);
    if (n == 0) return fail(p, params, "parameters is empty: the grid is empty");
    s->params = xcalloc((size_t)n, sizeof(SweepParam));
    FOR_PAIRS(p, params, k, v) if (parse_param(p, s, k, v)) return -1;
    if (!s->random)
        for (int i = 0; i < s->nparams; i++)
            if (s->params[i].dist != DIST_VALUES)
                return fail(p, NULL, "parameter '%s' (line %d) has a distribution, which grid search "
                                     "cannot enumerate; use values: [...] or method: random",
                            s->params[i].name, s->params[i].line);
    return 0;
}

/* A value can be valid for its key yet not resolve (an unknown mixer or
 * task, a setting the task rejects). Each value is resolved together with
 * base and the first value of every other parameter, which is a config the
 * sweep really contains, so a failure here is a real error and can point at
 * the value its message names. Other combinations are checked by sweep_plan. */
static int point_at(P *p, const Assign *a, const char *msg) {
    for (int i = 0; i < a->n; i++) {
        char quoted[160];
        snprintf(quoted, sizeof quoted, "'%s'", a->keys[i]);
        if (strstr(msg, quoted)) {
            err_set(p->err, "%s:%d:%d: %s", p->file, a->line[i], a->col[i], msg);
            return -1;
        }
    }
    return 0;
}


/* base, then parameter i at choice j and every other at its first choice */
static int try_point(const Sweep *s, int pi, int pj, Err *e) {
    Config *c = cfg_new();
    int rc = sweep_apply(c, &s->base, e);
    for (int i = 0; i < s->nparams && rc == 0; i++) {
        const SweepParam *sp = &s->params[i];
        if (sp->dist == DIST_VALUES) rc = sweep_apply(c, &sp->values[i == pi ? pj : 0], e);
        else {
            char v[64];
            snprintf(v, sizeof v, "%.17g", sp->min);
            rc = cfg_set(c, sp->name, v, e);
        }
    }
    if (rc == 0) rc = config_resolve(c, e);
    cfg_free(c);
    return rc;
}

static int check_resolves(P *p, const Sweep *s) {
    Err e;
    if (try_point(s, -1, 0, &e) != 0) {
        if (point_at(p, &s->base, e.msg)) return -1;
        for (int i = 0; i < s->nparams; i++)
            if (s->params[i].dist == DIST_VALUES && point_at(p, &s->params[i].values[0], e.msg))
                return -1;
        return 0; /* sweep_plan reports it with the run's choices */
    }
    for (int i = 0; i < s->nparams; i++)
        for (int j = 1; j < s->params[i].nvalues; j++)
            if (try_point(s, i, j, &e) != 0 && point_at(p, &s->params[i].values[j], e.msg)) return -1;
    return 0;
}

int sweep_load_text(const char *txt, const char *file, Sweep **out, Err *err) {
    *out = NULL;
    Sweep *s = xcalloc(1, sizeof *s);
    s->file = xstrdup(file);
    s->yaml = xstrdup(txt);
    s->metric = xstrdup("test_acc");
    s->maximize = 1;
    P p = {.file = file, .err = err, .scratch = cfg_new()};
    yaml_parser_t parser;
    CHECK(yaml_parser_initialize(&parser), "yaml_parser_initialize failed");
    yaml_parser_set_input_string(&parser, (const unsigned char *)txt, strlen(txt));
    int rc = -1;
    if (!yaml_parser_load(&parser, &p.doc)) {
        const yaml_mark_t *m = &parser.problem_mark;
        err_set(err, "%s:%zu:%zu: YAML syntax error: %s%s%s", file, m->line + 1, m->column + 1,
                parser.problem ? parser.problem : "unknown problem", parser.context ? " " : "",
                parser.context ? parser.context : "");
    } else {
        rc = parse_doc(&p, s);
        yaml_document_delete(&p.doc);
        if (rc == 0) rc = check_resolves(&p, s);
    }
    yaml_parser_delete(&parser);
    cfg_free(p.scratch);
    if (rc == 0 && !s->name) {
        /* default name: the file name without directory and extension */
        const char *b = strrchr(file, '/');
        s->name = xstrdup(b ? b + 1 : file);
        char *dot = strrchr(s->name, '.');
        if (dot && dot != s->name) *dot = 0;
    }
    if (rc != 0) sweep_free(s);
    else *out = s;
    return rc;
}

int sweep_load_file(const char *path, Sweep **out, Err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, "cannot read sweep file '%s': %s", path, strerror(errno));
        *out = NULL;
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) buf = xrealloc(buf, cap *= 2);
    }
    CHECK(!ferror(f), "reading '%s' failed", path);
    xfclose(f);
    buf[len] = 0;
    int rc = sweep_load_text(buf, path, out, err);
    free(buf);
    return rc;
}

void sweep_free(Sweep *s) {
    if (!s) return;
    for (int i = 0; i < s->nparams; i++) {
        for (int j = 0; j < s->params[i].nvalues; j++) assign_free(&s->params[i].values[j]);
        free(s->params[i].values);
        free(s->params[i].name);
    }
    free(s->params);
    assign_free(&s->base);
    free(s->file), free(s->yaml), free(s->name), free(s->description), free(s->metric);
    free(s);
}
