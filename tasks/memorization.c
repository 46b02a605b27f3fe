/* MAD memorization (M), mad.md §2.5.
 *
 * One key->value map, fixed for the whole data set (train and test alike),
 * drawn once from its own generator: keys [0, n/2) and values [n/2, n) with
 * n = V-1, both shuffled and zipped: a uniformly random injection (with V
 * even there is one value more than keys, and it is never used). A sequence is L/2 pairs (key, insert token V-1); the target at each
 * insert token is the key's value. No shift; train and test masked alike. */
#include <gsl/gsl_randist.h>
#include <stdlib.h>

#include "task.h"

static int m_validate(const TaskParams *p, Err *err) {
    if (p->seq_len % 2 != 0) {
        err_set(err, "key 'task.seq_len': %d is odd; memorization needs an even length "
                     "(pairs of key and insert token)", p->seq_len);
        return -1;
    }
    if ((p->vocab_size - 1) / 2 < 1) {
        err_set(err, "key 'task.vocab_size': %d leaves no key; memorization needs vocab_size >= 3 "
                     "(keys, values, insert token)", p->vocab_size);
        return -1;
    }
    return 0;
}

static int m_length(const TaskParams *p) { return p->seq_len; }

/* the map, keyed by key token; depends on the data seed only */
static void *m_state_new(const TaskParams *p, unsigned long seed) {
    int n = p->vocab_size - 1, nk = n / 2, nv = n - n / 2;
    int *keys = xmalloc(sizeof(int) * (size_t)nk), *vals = xmalloc(sizeof(int) * (size_t)nv);
    int *map = xmalloc(sizeof(int) * (size_t)nk);
    for (int i = 0; i < nk; i++) keys[i] = i;
    for (int i = 0; i < nv; i++) vals[i] = nk + i;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    CHECK(r, "gsl_rng_alloc failed");
    gsl_rng_set(r, seed ^ 0x6d656d6fUL); /* its own stream, as MAD's default_rng(seed) */
    gsl_ran_shuffle(r, keys, (size_t)nk, sizeof(int));
    gsl_ran_shuffle(r, vals, (size_t)nv, sizeof(int));
    for (int i = 0; i < nk; i++) map[keys[i]] = vals[i];
    gsl_rng_free(r);
    free(keys), free(vals);
    return map;
}

static void m_state_free(void *state) { free(state); }

static void m_generate(const TaskParams *p, void *state, gsl_rng *rng, Split split, int *x, int *y,
                       SeqInfo *info) {
    (void)split;
    const int *map = state;
    const int P = p->seq_len / 2, nk = (p->vocab_size - 1) / 2, ins = p->vocab_size - 1;
    (void)task_uniform(rng, P); /* MAD's nn_idx, drawn every call and unused without noise */
    for (int i = 0; i < P; i++) {
        int k = task_uniform(rng, nk);
        x[2 * i] = k, x[2 * i + 1] = ins;
        y[2 * i] = IGNORE_INDEX, y[2 * i + 1] = map[k];
    }
    if (info) info->n_queries = P;
}

static const char *m_role(const TaskParams *p, int tok) {
    int nk = (p->vocab_size - 1) / 2;
    if (tok < nk) return "key";
    return tok == p->vocab_size - 1 ? "insert" : "value";
}

const Task task_memorization = {
    .name = "memorization",
    .help = "MAD memorization (M): one fixed key->value map, learned in the weights (mad.md §2.5)",
    .defaults = "task.vocab_size=256 task.seq_len=32 task.num_train=256 task.num_test=1280",
    .keys = "task.vocab_size task.seq_len task.num_train task.num_test",
    .validate = m_validate,
    .length = m_length,
    .state_new = m_state_new,
    .state_free = m_state_free,
    .generate = m_generate,
    .role = m_role,
};
