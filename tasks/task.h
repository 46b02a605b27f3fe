/* Synthetic tasks (mad.md). A task is a name, its keys with MAD's defaults,
 * a validity check and a generator of one (inputs, targets) sequence at a
 * time from a GSL random generator. Targets use -100 for "not scored". */
#ifndef PLAB_TASK_H
#define PLAB_TASK_H

#include <gsl/gsl_rng.h>

#include "../core/config.h"

#define IGNORE_INDEX (-100)

typedef enum { SPLIT_TRAIN = 0, SPLIT_TEST = 1 } Split;

/* Every task.* key, parsed once (generators run per sequence and must not
 * look keys up by name). Fields a task does not use are ignored. */
typedef struct {
    int vocab_size, seq_len, num_train, num_test;
    int noise_vocab_size;
    double frac_noise;
    int multi_query;
    int k_motif_size, v_motif_size;
    int num_tokens_to_copy;
    int num_kv_pairs;
    double power_a;
    int random_non_queries;
} TaskParams;

typedef struct Task {
    const char *name;
    const char *help;
    /* MAD baseline of this task, applied for keys the user did not set */
    const char *defaults;
    /* the task.* keys this task reads, space separated (for `plab tasks`) */
    const char *keys;
    /* rejects impossible settings, naming key, value and rule; 0 when fine */
    int (*validate)(const TaskParams *p, Err *err);
    /* tokens per produced sequence for nominal seq_len (e.g. L-1 for recall) */
    int (*length)(const TaskParams *p);
    /* state shared by every sequence of both splits (e.g. memorization's map);
     * may be NULL. Created from its own generator seeded by `seed`. */
    void *(*shared_new)(const TaskParams *p, unsigned long seed);
    void (*shared_free)(void *shared);
    /* writes inputs[len] and targets[len] */
    void (*generate)(const TaskParams *p, const void *shared, gsl_rng *rng, Split split,
                     int *inputs, int *targets);
} Task;

/* A generated split: n sequences of len tokens, row-major. */
typedef struct {
    int n, len;
    int *inputs, *targets;
} Dataset;

const Task *task_find(const char *name);
int task_count(void);
const Task *task_at(int i);
/* Applies the task's defaults to unset task keys and parses them. */
int task_resolve(Config *cfg, const Task **task, TaskParams *p, Err *err);
void task_params_from_config(const Config *cfg, TaskParams *p);
/* Generates train then test from one stream seeded by `seed` (as MAD-Lab,
 * whose test set continues the train stream). */
void task_generate(const Task *t, const TaskParams *p, unsigned long seed, Dataset *train,
                   Dataset *test);
void dataset_free(Dataset *d);

#endif
