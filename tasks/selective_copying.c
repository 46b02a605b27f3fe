/* MAD selective copying (SC), mad.md §2.3.
 *
 * T content tokens spread over the data region with B = L - 2T - 1 blanks in
 * front of them (blank counts Multinomial(B, uniform over T): B iid gap picks),
 * then the copy token and T blanks; the model must emit the content tokens in
 * order at those T blanks. No shift and no teacher forcing; train and test
 * are masked alike. Vocabulary: content [0, V-2), blank V-2, copy V-1. */
#include <stdlib.h>
#include <string.h>

#include "task.h"

static int sc_validate(const TaskParams *p, Err *err) {
    if (p->vocab_size < 3) {
        err_set(err, "key 'task.vocab_size': %d leaves no content token; selective copying needs "
                     "vocab_size >= 3 (content tokens, blank, copy)", p->vocab_size);
        return -1;
    }
    int T = p->num_tokens_to_copy;
    if (p->seq_len <= 2 * T + 1) {
        err_set(err, "key 'task.num_tokens_to_copy': %d is too many for task.seq_len=%d; the rule "
                     "is seq_len > 2*num_tokens_to_copy + 1 (content, copy token, answer slots)",
                T, p->seq_len);
        return -1;
    }
    return 0;
}

static int sc_length(const TaskParams *p) { return p->seq_len; }

typedef struct {
    int *c, *count; /* [T] content tokens, blanks in front of each */
} ScState;

static void *sc_state_new(const TaskParams *p, unsigned long seed) {
    (void)seed;
    ScState *s = xcalloc(1, sizeof *s);
    s->c = xmalloc(sizeof(int) * (size_t)p->num_tokens_to_copy);
    s->count = xmalloc(sizeof(int) * (size_t)p->num_tokens_to_copy);
    return s;
}

static void sc_state_free(void *state) {
    ScState *s = state;
    free(s->c), free(s->count), free(s);
}

static void sc_generate(const TaskParams *p, void *state, gsl_rng *rng, Split split, int *x,
                        int *y, SeqInfo *info) {
    (void)split, (void)info;
    ScState *s = state;
    const int V = p->vocab_size, L = p->seq_len, T = p->num_tokens_to_copy, B = L - 2 * T - 1;
    const int blank = V - 2, copy = V - 1;
    for (int j = 0; j < T; j++) s->c[j] = task_uniform(rng, V - 2);
    memset(s->count, 0, sizeof(int) * (size_t)T);
    for (int b = 0; b < B; b++) s->count[task_uniform(rng, T)]++;
    int n = 0;
    for (int j = 0; j < T; j++) {
        for (int b = 0; b < s->count[j]; b++) x[n++] = blank;
        x[n++] = s->c[j];
    }
    x[n++] = copy;
    for (int j = 0; j < T; j++) x[n++] = blank;
    for (int j = 0; j < T + B + 1; j++) y[j] = IGNORE_INDEX;
    memcpy(y + T + B + 1, s->c, sizeof(int) * (size_t)T);
}

static const char *sc_role(const TaskParams *p, int tok) {
    if (tok < p->vocab_size - 2) return "content";
    return tok == p->vocab_size - 2 ? "blank" : "copy";
}

const Task task_selective_copying = {
    .name = "selective_copying",
    .help = "MAD selective copying (SC): copy the content tokens scattered among blanks "
            "(mad.md §2.3)",
    .defaults = "task.vocab_size=16 task.seq_len=256 task.num_train=12800 task.num_test=1280 "
                "task.num_tokens_to_copy=16",
    .keys = "task.vocab_size task.seq_len task.num_train task.num_test task.num_tokens_to_copy",
    .validate = sc_validate,
    .length = sc_length,
    .state_new = sc_state_new,
    .state_free = sc_state_free,
    .generate = sc_generate,
    .role = sc_role,
};
