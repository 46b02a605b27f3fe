#include "task.h"

#include <stdlib.h>
#include <string.h>

extern const Task task_in_context_recall, task_noisy_in_context_recall,
    task_fuzzy_in_context_recall, task_selective_copying, task_compression, task_memorization,
    task_mqar;

/* The task registry: one line per task. */
static const Task *const tasks[] = {
    &task_in_context_recall,
    &task_noisy_in_context_recall,
    &task_fuzzy_in_context_recall,
    &task_selective_copying,
    &task_compression,
    &task_memorization,
    &task_mqar,
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
static int get_bool(const Config *c, const char *k, int def) {
    return cfg_str(c, k) ? cfg_bool(c, k) : def;
}

/* Fallbacks are MADConfig's global defaults (mad.md §3); each task's own
 * baseline is preset before this runs. */
void task_params_from_config(const Config *c, TaskParams *p) {
    memset(p, 0, sizeof *p);
    p->vocab_size = get_int(c, "task.vocab_size", 16);
    p->seq_len = get_int(c, "task.seq_len", 128);
    p->num_train = get_int(c, "task.num_train", 12800);
    p->num_test = get_int(c, "task.num_test", 1280);
    p->noise_vocab_size = get_int(c, "task.noise_vocab_size", 0);
    p->frac_noise = get_float(c, "task.frac_noise", 0.0);
    p->multi_query = get_bool(c, "task.multi_query", 1);
    p->k_motif_size = get_int(c, "task.k_motif_size", 1);
    p->v_motif_size = get_int(c, "task.v_motif_size", 1);
    p->num_tokens_to_copy = get_int(c, "task.num_tokens_to_copy", 16);
    p->num_kv_pairs = get_int(c, "task.num_kv_pairs", 4);
    p->power_a = get_float(c, "task.power_a", 0.01);
    p->random_non_queries = get_bool(c, "task.random_non_queries", 0);
}

static int word_in(const char *word, const char *list) {
    size_t n = strlen(word);
    for (const char *s = list; (s = strstr(s, word)) != NULL; s += n)
        if ((s == list || s[-1] == ' ') && (s[n] == 0 || s[n] == ' ')) return 1;
    return 0;
}

int task_validate(const Task *t, const TaskParams *p, Err *err) {
    return t->validate ? t->validate(p, err) : 0;
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
    /* a task.* key the task ignores is almost surely a mistake (wrong task or key) */
    for (int i = 0; i < key_count(); i++) {
        const char *k = key_at(i)->name;
        if (strncmp(k, "task.", 5) == 0 && cfg_is_user_set(cfg, k) && !word_in(k, t->keys)) {
            err_set(err, "key '%s': task '%s' does not read it (its keys: %s)", k, t->name,
                    t->keys);
            return -1;
        }
    }
    if (cfg_preset_list(cfg, t->defaults, err) != 0) return -1;
    task_params_from_config(cfg, p);
    if (task_validate(t, p, err) != 0) return -1;
    *task = t;
    return 0;
}

/* ---- seeds and streams ------------------------------------------------------------- */

unsigned long task_data_seed(unsigned long seed) {
    /* the data stream of a run (train/train.c uses it), so that `plab tasks` shows that data */
    unsigned long long x = (unsigned long long)seed * 0x9E3779B97F4A7C15ULL + 1ULL * 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 31;
    return (unsigned long)(x & 0xffffffffUL);
}

static unsigned long mix(unsigned long seed, unsigned long long stream) {
    unsigned long long z = (unsigned long long)seed + 0x9E3779B97F4A7C15ULL * (stream + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (unsigned long)(z & 0xffffffffUL);
}

struct TaskStream {
    const Task *t;
    TaskParams p;
    void *state;
    gsl_rng *rng;
    Split split;
    int len;
};

TaskStream *task_stream_new(const Task *t, const TaskParams *p, unsigned long seed, Split split) {
    TaskStream *s = xcalloc(1, sizeof *s);
    s->t = t;
    s->p = *p;
    s->split = split;
    s->len = t->length(p);
    s->rng = gsl_rng_alloc(gsl_rng_mt19937);
    CHECK(s->rng, "gsl_rng_alloc failed");
    gsl_rng_set(s->rng, mix(seed, split == SPLIT_TRAIN ? 1 : 2));
    s->state = t->state_new ? t->state_new(p, seed) : NULL;
    return s;
}

void task_stream_next(TaskStream *s, int n, int *inputs, int *targets, SeqInfo *info) {
    for (int i = 0; i < n; i++) {
        SeqInfo *in = info ? info + i : NULL;
        if (in) memset(in, 0, sizeof *in);
        s->t->generate(&s->p, s->state, s->rng, s->split, inputs + (size_t)i * s->len,
                       targets + (size_t)i * s->len, in);
    }
}

int task_stream_len(const TaskStream *s) { return s->len; }

void task_stream_free(TaskStream *s) {
    if (!s) return;
    if (s->state) s->t->state_free(s->state);
    gsl_rng_free(s->rng);
    free(s);
}

static void generate_split(const Task *t, const TaskParams *p, unsigned long seed, Split split,
                           int n, Dataset *d) {
    TaskStream *s = task_stream_new(t, p, seed, split);
    d->n = n;
    d->len = s->len;
    d->inputs = xmalloc(sizeof(int) * (size_t)n * (size_t)d->len);
    d->targets = xmalloc(sizeof(int) * (size_t)n * (size_t)d->len);
    task_stream_next(s, n, d->inputs, d->targets, NULL);
    task_stream_free(s);
}

void task_generate(const Task *t, const TaskParams *p, unsigned long seed, Dataset *train,
                   Dataset *test) {
    if (train) generate_split(t, p, seed, SPLIT_TRAIN, p->num_train, train);
    if (test) generate_split(t, p, seed, SPLIT_TEST, p->num_test, test);
}

void dataset_free(Dataset *d) {
    free(d->inputs);
    free(d->targets);
    d->inputs = d->targets = NULL;
}

void task_distinct(gsl_rng *r, int *pool, int n, int m, int *out) {
    for (int j = 0; j < m; j++) {
        int i = j + task_uniform(r, n - j);
        int tmp = pool[i];
        pool[i] = pool[j];
        pool[j] = tmp;
        out[j] = tmp;
    }
}

int task_check_noise(const TaskParams *p, Err *err) {
    if (p->frac_noise > 0 && p->noise_vocab_size < 1) {
        err_set(err, "key 'task.noise_vocab_size': 0 with task.frac_noise=%g; noise needs at least "
                     "one noise token", p->frac_noise);
        return -1;
    }
    return 0;
}
