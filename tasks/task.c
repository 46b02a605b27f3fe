#include "task.h"

#include <stdlib.h>
#include <string.h>

extern const Task task_in_context_recall;

/* The task registry: one line per task. */
static const Task *const tasks[] = {
    &task_in_context_recall,
};

int task_count(void) { return (int)(sizeof tasks / sizeof tasks[0]); }
const Task *task_at(int i) { return tasks[i]; }

const Task *task_find(const char *name) {
    for (int i = 0; i < task_count(); i++)
        if (strcmp(tasks[i]->name, name) == 0) return tasks[i];
    return NULL;
}

static int get_int(const Config *c, const char *k, int def) {
    return cfg_str(c, k) ? (int)cfg_int(c, k) : def;
}
static double get_float(const Config *c, const char *k, double def) {
    return cfg_str(c, k) ? cfg_float(c, k) : def;
}

void task_params_from_config(const Config *c, TaskParams *p) {
    memset(p, 0, sizeof *p);
    p->vocab_size = get_int(c, "task.vocab_size", 16);
    p->seq_len = get_int(c, "task.seq_len", 128);
    p->num_train = get_int(c, "task.num_train", 12800);
    p->num_test = get_int(c, "task.num_test", 1280);
    p->noise_vocab_size = get_int(c, "task.noise_vocab_size", 0);
    p->frac_noise = get_float(c, "task.frac_noise", 0.0);
    p->multi_query = cfg_str(c, "task.multi_query") ? cfg_bool(c, "task.multi_query") : 1;
}

int task_resolve(Config *cfg, const Task **task, TaskParams *p, Err *err) {
    const char *name = cfg_str(cfg, "task");
    const Task *t = task_find(name);
    if (!t) {
        char choices[1024] = "", buf[128];
        for (int i = 0; i < task_count(); i++) {
            if (i) strcat(choices, "|");
            strncat(choices, tasks[i]->name, sizeof choices - strlen(choices) - 1);
        }
        const char *s = choice_suggest(name, choices, buf, sizeof buf);
        err_set(err, "key 'task': unknown task '%s'%s%s%s (tasks: %s)", name,
                s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "", choices);
        return -1;
    }
    if (cfg_preset_list(cfg, t->defaults, err) != 0) return -1;
    task_params_from_config(cfg, p);
    if (t->validate && t->validate(p, err) != 0) return -1;
    *task = t;
    return 0;
}

static void generate_split(const Task *t, const TaskParams *p, const void *shared, gsl_rng *rng,
                           Split split, int n, Dataset *d) {
    d->n = n;
    d->len = t->length(p);
    d->inputs = xmalloc(sizeof(int) * (size_t)n * (size_t)d->len);
    d->targets = xmalloc(sizeof(int) * (size_t)n * (size_t)d->len);
    for (int i = 0; i < n; i++)
        t->generate(p, shared, rng, split, d->inputs + (size_t)i * d->len,
                    d->targets + (size_t)i * d->len);
}

void task_generate(const Task *t, const TaskParams *p, unsigned long seed, Dataset *train,
                   Dataset *test) {
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    CHECK(rng, "gsl_rng_alloc failed");
    gsl_rng_set(rng, seed);
    void *shared = t->shared_new ? t->shared_new(p, seed) : NULL;
    if (train) generate_split(t, p, shared, rng, SPLIT_TRAIN, p->num_train, train);
    if (test) generate_split(t, p, shared, rng, SPLIT_TEST, p->num_test, test);
    if (shared) t->shared_free(shared);
    gsl_rng_free(rng);
}

void dataset_free(Dataset *d) {
    free(d->inputs);
    free(d->targets);
    d->inputs = d->targets = NULL;
}
