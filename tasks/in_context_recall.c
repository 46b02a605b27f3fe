/* MAD in-context recall (CR) and noisy in-context recall (NR): one generator,
 * mad.md §2.1; NR only changes the defaults (V=32, 16 noise tokens, 20% noise).
 *
 * A sequence of key/value pairs; keys drawn with replacement, each key bound
 * to one value on first sight (values may repeat across keys). In multi-query
 * mode every repeated key scores its value; the final pair repeats a key
 * already seen. The train split targets the plain next token everywhere; the
 * test split only the answers (mad.md §1). */
#include <stdlib.h>
#include <string.h>

#include "task.h"

static int icr_validate(const TaskParams *p, Err *err) {
    if (p->seq_len % 2 != 0) {
        err_set(err, "key 'task.seq_len': %d is odd; in-context recall needs an even length "
                     "(pairs of key and value)", p->seq_len);
        return -1;
    }
    if (p->seq_len < 4) {
        err_set(err, "key 'task.seq_len': %d is too short; in-context recall needs at least 4",
                p->seq_len);
        return -1;
    }
    int ns = p->vocab_size - p->noise_vocab_size - (p->multi_query ? 0 : 1);
    if (ns < 2) {
        err_set(err, "key 'task.vocab_size': %d leaves %d key/value tokens after %d noise tokens%s; "
                     "the rule is vocab_size - noise_vocab_size%s >= 2",
                p->vocab_size, ns, p->noise_vocab_size, p->multi_query ? "" : " and the copy token",
                p->multi_query ? "" : " - 1");
        return -1;
    }
    if (task_check_noise(p, err) != 0) return -1;
    return 0;
}

/* multi-query: L-1 tokens; single query adds the copy-prefix token (mad.md §1) */
static int icr_length(const TaskParams *p) { return p->seq_len - 1 + (p->multi_query ? 0 : 1); }

typedef struct {
    int *map;       /* [nkeys] value of each key, -1 = unbound */
    int *seen_list; /* keys in first-appearance order */
    char *seen;     /* [nkeys] */
    int *seq, *tgt; /* [L+1] the sequence before the shift */
} IcrState;

static int icr_ns(const TaskParams *p) {
    return p->vocab_size - p->noise_vocab_size - (p->multi_query ? 0 : 1);
}

static void *icr_state_new(const TaskParams *p, unsigned long seed) {
    (void)seed;
    int nkeys = icr_ns(p) / 2;
    IcrState *s = xcalloc(1, sizeof *s);
    s->map = xmalloc(sizeof(int) * (size_t)nkeys);
    s->seen_list = xmalloc(sizeof(int) * (size_t)nkeys);
    s->seen = xmalloc((size_t)nkeys);
    s->seq = xmalloc(sizeof(int) * (size_t)(p->seq_len + 1));
    s->tgt = xmalloc(sizeof(int) * (size_t)(p->seq_len + 1));
    return s;
}

static void icr_state_free(void *state) {
    IcrState *s = state;
    free(s->map), free(s->seen_list), free(s->seen), free(s->seq), free(s->tgt);
    free(s);
}

static void icr_generate(const TaskParams *p, void *state, gsl_rng *rng, Split split,
                         int *inputs, int *targets, SeqInfo *info) {
    IcrState *s = state;
    const int mq = p->multi_query, L = p->seq_len, P = L / 2, V = p->vocab_size;
    const int ns = icr_ns(p), nkeys = ns / 2, nvals = ns - ns / 2, val0 = ns / 2, noise0 = ns;
    int *seq = s->seq, *tgt = s->tgt, *map = s->map;
    memset(s->seen, 0, (size_t)nkeys);
    for (int k = 0; k < nkeys; k++) map[k] = -1;
    int nseen = 0, n = 0, queries = 0, unanswerable = 0;
    int nn_idx = task_uniform(rng, P); /* drawn every call, even without noise (MAD) */
    for (int i = 0; i < P - 1; i++) {
        int noise = (p->frac_noise > 0 && i != nn_idx) ? gsl_rng_uniform(rng) < p->frac_noise : 0;
        if (noise) {
            seq[n] = noise0 + task_uniform(rng, p->noise_vocab_size);
            seq[n + 1] = noise0 + task_uniform(rng, p->noise_vocab_size);
            tgt[n] = tgt[n + 1] = IGNORE_INDEX;
        } else {
            int k = task_uniform(rng, nkeys);
            if (map[k] < 0) map[k] = val0 + task_uniform(rng, nvals);
            seq[n] = k;
            seq[n + 1] = map[k];
            tgt[n] = IGNORE_INDEX;
            tgt[n + 1] = (s->seen[k] && mq) ? map[k] : IGNORE_INDEX;
            queries += s->seen[k] && mq;
            if (!s->seen[k]) s->seen[k] = 1, s->seen_list[nseen++] = k;
        }
        n += 2;
    }
    /* The final query repeats a seen key. MAD crashes when every slot was noise
     * (probability ~ frac_noise^(P-1)); we bind a fresh key instead. */
    int kq;
    if (nseen > 0) kq = s->seen_list[task_uniform(rng, nseen)];
    else {
        kq = task_uniform(rng, nkeys);
        map[kq] = val0 + task_uniform(rng, nvals);
        unanswerable = 1;
    }
    if (!mq) seq[n] = V - 1, tgt[n] = IGNORE_INDEX, n++;
    seq[n] = kq, tgt[n] = IGNORE_INDEX;
    seq[n + 1] = map[kq], tgt[n + 1] = map[kq];
    n += 2;
    queries++;
    /* x = seq[:-1]; y = seq[1:] in train, tgt[1:] in test */
    const int *y = split == SPLIT_TRAIN ? seq : tgt;
    memcpy(inputs, seq, sizeof(int) * (size_t)(n - 1));
    memcpy(targets, y + 1, sizeof(int) * (size_t)(n - 1));
    if (info) info->n_queries = queries, info->n_unanswerable = unanswerable;
}

static const char *icr_role(const TaskParams *p, int tok) {
    int ns = icr_ns(p);
    if (tok < ns / 2) return "key";
    if (tok < ns) return "value";
    if (tok < ns + p->noise_vocab_size) return "noise";
    if (!p->multi_query && tok == p->vocab_size - 1) return "copy";
    return "unused";
}

#define ICR_KEYS                                                                                  \
    "task.vocab_size task.seq_len task.num_train task.num_test task.noise_vocab_size "            \
    "task.frac_noise task.multi_query"

const Task task_in_context_recall = {
    .name = "in_context_recall",
    .help = "MAD in-context recall (CR): recall the value bound to a repeated key (mad.md §2.1)",
    .defaults = "task.vocab_size=16 task.seq_len=128 task.num_train=12800 task.num_test=1280 "
                "task.noise_vocab_size=0 task.frac_noise=0 task.multi_query=true",
    .keys = ICR_KEYS,
    .validate = icr_validate,
    .length = icr_length,
    .state_new = icr_state_new,
    .state_free = icr_state_free,
    .generate = icr_generate,
    .role = icr_role,
};

const Task task_noisy_in_context_recall = {
    .name = "noisy_in_context_recall",
    .help = "MAD noisy in-context recall (NR): recall among pairs of noise tokens (mad.md §2.1)",
    .defaults = "task.vocab_size=32 task.seq_len=128 task.num_train=12800 task.num_test=1280 "
                "task.noise_vocab_size=16 task.frac_noise=0.2 task.multi_query=true",
    .keys = ICR_KEYS,
    .validate = icr_validate,
    .length = icr_length,
    .state_new = icr_state_new,
    .state_free = icr_state_free,
    .generate = icr_generate,
    .role = icr_role,
};
