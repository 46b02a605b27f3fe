/* `plab train --config run.yaml`: a YAML mapping of run keys, flat and dotted
 * (`model.mixer: parallax`) or nested (`model: {mixer: parallax}`), the same
 * keys as the command line. Every error names file:line:col. */
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "../core/check.h"
#include "../core/config.h"
#include "cli.h"

static int set_node(yaml_document_t *doc, yaml_node_t *map, const char *prefix, Config *c,
                    const char *path, Err *err) {
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(doc, pr->key), *v = yaml_document_get_node(doc, pr->value);
        if (k->type != YAML_SCALAR_NODE) {
            err_set(err, "%s:%zu:%zu: a key must be a plain name", path, k->start_mark.line + 1,
                    k->start_mark.column + 1);
            return -1;
        }
        char key[256];
        snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", (const char *)k->data.scalar.value);
        if (v->type == YAML_MAPPING_NODE) {
            if (set_node(doc, v, key, c, path, err) != 0) return -1;
            continue;
        }
        if (v->type != YAML_SCALAR_NODE) {
            err_set(err, "%s:%zu:%zu: key '%s' needs one value, not a list (sweeps take lists)", path,
                    v->start_mark.line + 1, v->start_mark.column + 1, key);
            return -1;
        }
        Err e;
        if (cfg_set(c, key, (const char *)v->data.scalar.value, &e) != 0) {
            yaml_node_t *at = key_index(key) < 0 ? k : v;
            err_set(err, "%s:%zu:%zu: %s", path, at->start_mark.line + 1, at->start_mark.column + 1, e.msg);
            return -1;
        }
    }
    return 0;
}

int run_config_load(const char *path, Config *c, Err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, "cannot open run config '%s'", path);
        return -1;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    CHECK(yaml_parser_initialize(&parser), "yaml_parser_initialize failed");
    yaml_parser_set_input_file(&parser, f);
    int rc = -1;
    if (!yaml_parser_load(&parser, &doc)) {
        err_set(err, "%s:%zu:%zu: YAML syntax error: %s", path, parser.problem_mark.line + 1,
                parser.problem_mark.column + 1, parser.problem ? parser.problem : "unknown");
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        if (!root) rc = 0; /* empty file: no keys */
        else if (root->type != YAML_MAPPING_NODE)
            err_set(err, "%s:%zu:%zu: a run config is a mapping of keys to values", path,
                    root->start_mark.line + 1, root->start_mark.column + 1);
        else rc = set_node(&doc, root, "", c, path, err);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}
