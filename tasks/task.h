/* Synthetic tasks (mad.md). A task is a name, its keys with MAD's defaults,
 * a validity check and a generator of one (inputs, targets) sequence at a
 * time from a GSL random generator. Targets use -100 for "not scored".
 *
 * Sequences are produced by a stream (one per split), so a consumer holds only
 * what it uses: `task_generate` materialises both splits for training,
 * `plab tasks stats` walks a split sequence by sequence. */
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
    int k_motif_size, v_motif_size; /* fuzzy recall: largest key / value size */
    int num_tokens_to_copy;         /* selective copying */
    int num_kv_pairs;               /* MQAR */
    double power_a;                 /* MQAR query-gap power law */
    int random_non_queries;         /* MQAR: filler tokens random instead of 0 */
} TaskParams;

/* What a generator knows about the sequence it just wrote (for stats and
 * tests); any field a task does not track stays 0. */
typedef struct {
    int n_pad;          /* padding tokens (fuzzy recall's left padding) */
    int n_queries;      /* recall queries: keys whose value is asked for */
    int n_unanswerable; /* queries whose key never appeared before (fuzzy quirk, mad.md §2.2) */
} SeqInfo;

typedef struct Task {
    const char *name;
    const char *help;
    /* MAD baseline of this task (mad.md §3), applied for keys the user did not
     * set; may also preset model keys (compression: the autoencoder backbone) */
    const char *defaults;
    /* the task.* keys this task reads, space separated */
    const char *keys;
    /* rejects impossible settings, naming key, value and rule; 0 when fine */
    int (*validate)(const TaskParams *p, Err *err);
    /* tokens per produced sequence for nominal seq_len (e.g. L-1 for recall) */
    int (*length)(const TaskParams *p);
    /* Per-stream state: scratch buffers, and anything shared by both splits
     * (memorization's map), which must depend on `seed` only. NULL = none. */
    void *(*state_new)(const TaskParams *p, unsigned long seed);
    void (*state_free)(void *state);
    /* writes inputs[len] and targets[len]; info may be NULL */
    void (*generate)(const TaskParams *p, void *state, gsl_rng *rng, Split split, int *inputs,
                     int *targets, SeqInfo *info);
    /* name of a token's role ("key", "value", "noise", ...) for `plab tasks` */
    const char *(*role)(const TaskParams *p, int token);
} Task;

/* A generated split: n sequences of len tokens, row-major. */
typedef struct {
    int n, len;
    int *inputs, *targets;
} Dataset;

const Task *task_find(const char *name);
int task_count(void);
const Task *task_at(int i);
/* Applies the task's defaults to unset keys, parses and validates them;
 * rejects task.* keys the user set that the task does not read. */
int task_resolve(Config *cfg, const Task **task, TaskParams *p, Err *err);
void task_params_from_config(const Config *cfg, TaskParams *p);
/* Validates params directly (tests, tools). */
int task_validate(const Task *t, const TaskParams *p, Err *err);

/* The data seed of a run seed (the same derivation as train/train.c uses). */
unsigned long task_data_seed(unsigned long run_seed);

/* A stream of one split's sequences. Train and test draw from independent
 * generators derived from `seed`, so either split can be produced alone;
 * state shared across splits (memorization's map) depends on `seed` only. */
typedef struct TaskStream TaskStream;
TaskStream *task_stream_new(const Task *t, const TaskParams *p, unsigned long seed, Split split);
/* writes the next n sequences (n * len tokens each into inputs and targets);
 * info may be NULL, else n entries */
void task_stream_next(TaskStream *s, int n, int *inputs, int *targets, SeqInfo *info);
int task_stream_len(const TaskStream *s);
void task_stream_free(TaskStream *s);

/* Generates both splits (num_train and num_test sequences). */
void task_generate(const Task *t, const TaskParams *p, unsigned long seed, Dataset *train,
                   Dataset *test);
void dataset_free(Dataset *d);
/* noise (frac_noise > 0) needs at least one noise token; 0 when fine */
int task_check_noise(const TaskParams *p, Err *err);

/* ---- helpers shared by the generators ---------------------------------------------- */
/* uniform int in [0, n) */
static inline int task_uniform(gsl_rng *r, int n) { return (int)gsl_rng_uniform_int(r, (unsigned long)n); }
/* Writes m distinct tokens of pool[0..n) in uniform random order to out: a
 * partial Fisher-Yates over `pool`, which it leaves permuted (mad.md §1: a
 * uniformly random ordered m-tuple of distinct tokens). */
void task_distinct(gsl_rng *r, int *pool, int n, int m, int *out);

#endif
