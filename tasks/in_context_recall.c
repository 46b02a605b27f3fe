/* MAD in-context recall and its noisy variant's generator (mad.md §2.1).
 *
 * A sequence of key/value pairs; keys drawn with replacement, each key bound
 * to one value on first sight. In multi-query mode every repeated key scores
 * its value; the final pair repeats a key already seen. The train split
 * targets the plain next token everywhere; the test split only the answers. */
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
    if (p->frac_noise > 0 && p->noise_vocab_size < 1) {
        err_set(err, "key 'task.noise_vocab_size': 0 with task.frac_noise=%g; noise needs at least "
                     "one noise token", p->frac_noise);
        return -1;
    }
    return 0;
}

static int icr_length(const TaskParams *p) { return p->seq_len - 1 + (p->multi_query ? 0 : 1); }

static void icr_generate(const TaskParams *p, const void *shared, gsl_rng *rng, Split split,
                         int *inputs, int *targets) {
    (void)shared;
    const int mq = p->multi_query, L = p->seq_len, P = L / 2, V = p->vocab_size;
    const int ns = V - p->noise_vocab_size - (mq ? 0 : 1);
    const int nkeys = ns / 2, nvals = ns - ns / 2, key0 = 0, val0 = ns / 2, noise0 = ns;
    const int full = L + (mq ? 0 : 1); /* tokens of seq before the shift */
    int *seq = malloc(sizeof(int) * (size_t)full), *tgt = malloc(sizeof(int) * (size_t)full);
    int map[1 << 12], seen_list[1 << 12];
    char seen[1 << 12];
    CHECK(seq && tgt && nkeys <= (1 << 12), "icr: allocation or vocabulary too large");
    memset(seen, 0, (size_t)nkeys);
    for (int k = 0; k < nkeys; k++) map[k] = -1;
    int nseen = 0, n = 0;
    int nn_idx = (int)gsl_rng_uniform_int(rng, (unsigned long)P); /* drawn every call (MAD) */
    for (int i = 0; i < P - 1; i++) {
        int noise = (p->frac_noise > 0 && i != nn_idx) ? gsl_rng_uniform(rng) < p->frac_noise : 0;
        if (noise) {
            seq[n] = noise0 + (int)gsl_rng_uniform_int(rng, (unsigned long)p->noise_vocab_size);
            seq[n + 1] = noise0 + (int)gsl_rng_uniform_int(rng, (unsigned long)p->noise_vocab_size);
            tgt[n] = tgt[n + 1] = IGNORE_INDEX;
        } else {
            int k = (int)gsl_rng_uniform_int(rng, (unsigned long)nkeys);
            if (map[k] < 0) map[k] = val0 + (int)gsl_rng_uniform_int(rng, (unsigned long)nvals);
            seq[n] = key0 + k;
            seq[n + 1] = map[k];
            tgt[n] = IGNORE_INDEX;
            tgt[n + 1] = (seen[k] && mq) ? map[k] : IGNORE_INDEX;
            if (!seen[k]) seen[k] = 1, seen_list[nseen++] = k;
        }
        n += 2;
    }
    /* The final query repeats a seen key. MAD crashes when every slot was noise
     * (probability ~ frac_noise^(P-1)); we fall back to a fresh key instead. */
    int kq;
    if (nseen > 0) kq = seen_list[gsl_rng_uniform_int(rng, (unsigned long)nseen)];
    else {
        kq = (int)gsl_rng_uniform_int(rng, (unsigned long)nkeys);
        map[kq] = val0 + (int)gsl_rng_uniform_int(rng, (unsigned long)nvals);
    }
    if (!mq) seq[n] = V - 1, tgt[n] = IGNORE_INDEX, n++;
    seq[n] = key0 + kq, tgt[n] = IGNORE_INDEX;
    seq[n + 1] = map[kq], tgt[n + 1] = map[kq];
    n += 2;
    /* x = seq[:-1]; y = seq[1:] in train, tgt[1:] in test */
    for (int j = 0; j < n - 1; j++) {
        inputs[j] = seq[j];
        targets[j] = split == SPLIT_TRAIN ? seq[j + 1] : tgt[j + 1];
    }
    free(seq);
    free(tgt);
}

const Task task_in_context_recall = {
    .name = "in_context_recall",
    .help = "MAD in-context recall: recall the value bound to a repeated key (mad.md §2.1)",
    .defaults = "task.vocab_size=16 task.seq_len=128 task.num_train=12800 task.num_test=1280 "
                "task.noise_vocab_size=0 task.frac_noise=0 task.multi_query=true",
    .keys = "task.vocab_size task.seq_len task.num_train task.num_test task.noise_vocab_size "
            "task.frac_noise task.multi_query",
    .validate = icr_validate,
    .length = icr_length,
    .generate = icr_generate,
};
