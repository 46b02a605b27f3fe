/* Zoology multi-query associative recall (MQAR), mad.md §6.1.
 *
 * D distinct keys [1, V/2) with D distinct values [V/2, V) written as a
 * context k0 v0 ... k_{D-1} v_{D-1}; then a query region of filler tokens
 * (0, or uniform tokens with random_non_queries) where key i reappears at an
 * even offset 2*g_i. The gaps g_i are D distinct slots drawn in order by
 * successive sampling with p(i) ~ a i^(a-1), i = 1..(L-2D)/2 (short gaps
 * favoured). The target sits at the query key; the next input is filler, so
 * answers are never fed back. Exactly D scored positions; train and test
 * masked alike. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "task.h"

static int mq_validate(const TaskParams *p, Err *err) {
    int V = p->vocab_size, L = p->seq_len, D = p->num_kv_pairs;
    if (L % 2 != 0) {
        err_set(err, "key 'task.seq_len': %d is odd; MQAR needs an even length", L);
        return -1;
    }
    if (V <= L) {
        err_set(err, "key 'task.vocab_size': %d is not above task.seq_len=%d; Zoology's MQAR "
                     "requires vocab_size > seq_len", V, L);
        return -1;
    }
    if (4 * D > L) {
        err_set(err, "key 'task.num_kv_pairs': %d pairs do not fit task.seq_len=%d; the rule is "
                     "4*num_kv_pairs <= seq_len (context of 2D tokens, D distinct query slots)", D, L);
        return -1;
    }
    if (D > V / 2 - 1) {
        err_set(err, "key 'task.num_kv_pairs': %d exceeds the %d distinct keys of "
                     "task.vocab_size=%d; the rule is num_kv_pairs <= vocab_size/2 - 1", D, V / 2 - 1, V);
        return -1;
    }
    return 0;
}

static int mq_length(const TaskParams *p) { return p->seq_len; }

typedef struct {
    int *kpool, *vpool, *keys, *vals, *gaps;
    char *taken;  /* [space] */
    double *cdf;  /* [space] cumulative gap weights, cdf[space-1] = 1 */
    double *w;    /* [space] gap weights */
    int space;
} MqState;

static void *mq_state_new(const TaskParams *p, unsigned long seed) {
    (void)seed;
    int V = p->vocab_size, D = p->num_kv_pairs, space = (p->seq_len - 2 * D) / 2;
    MqState *s = xcalloc(1, sizeof *s);
    s->kpool = xmalloc(sizeof(int) * (size_t)(V / 2 - 1));
    s->vpool = xmalloc(sizeof(int) * (size_t)(V - V / 2));
    for (int i = 0; i < V / 2 - 1; i++) s->kpool[i] = 1 + i;
    for (int i = 0; i < V - V / 2; i++) s->vpool[i] = V / 2 + i;
    s->keys = xmalloc(sizeof(int) * (size_t)D);
    s->vals = xmalloc(sizeof(int) * (size_t)D);
    s->gaps = xmalloc(sizeof(int) * (size_t)D);
    s->space = space;
    s->taken = xcalloc((size_t)space, 1);
    s->w = xmalloc(sizeof(double) * (size_t)space);
    s->cdf = xmalloc(sizeof(double) * (size_t)space);
    double a = p->power_a, tot = 0;
    for (int i = 0; i < space; i++) tot += s->w[i] = a * pow(i + 1.0, a - 1.0);
    double c = 0;
    for (int i = 0; i < space; i++) c += s->w[i] /= tot, s->cdf[i] = c;
    s->cdf[space - 1] = 1.0;
    return s;
}

static void mq_state_free(void *state) {
    MqState *s = state;
    free(s->kpool), free(s->vpool), free(s->keys), free(s->vals), free(s->gaps);
    free(s->taken), free(s->w), free(s->cdf);
    free(s);
}

/* one slot from the weights restricted to the free slots: rejection from the
 * full distribution (the same law), falling back to an exact scan when the
 * taken slots hold most of the mass */
static int draw_gap(MqState *s, gsl_rng *rng) {
    for (int tries = 0; tries < 32; tries++) {
        double u = gsl_rng_uniform(rng);
        int lo = 0, hi = s->space - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (s->cdf[mid] > u) hi = mid;
            else lo = mid + 1;
        }
        if (!s->taken[lo]) return lo;
    }
    double free_mass = 0;
    for (int i = 0; i < s->space; i++)
        if (!s->taken[i]) free_mass += s->w[i];
    double u = gsl_rng_uniform(rng) * free_mass, c = 0;
    int last = -1;
    for (int i = 0; i < s->space; i++) {
        if (s->taken[i]) continue;
        last = i;
        if ((c += s->w[i]) > u) return i;
    }
    return last;
}

static void mq_generate(const TaskParams *p, void *state, gsl_rng *rng, Split split, int *x,
                        int *y, SeqInfo *info) {
    (void)split;
    MqState *s = state;
    const int V = p->vocab_size, L = p->seq_len, D = p->num_kv_pairs, C = 2 * D;
    task_distinct(rng, s->kpool, V / 2 - 1, D, s->keys);
    task_distinct(rng, s->vpool, V - V / 2, D, s->vals);
    for (int i = 0; i < D; i++) {
        s->gaps[i] = draw_gap(s, rng);
        s->taken[s->gaps[i]] = 1;
    }
    /* full = context ++ zeros (L+1 tokens); x = full[:-1]; y = label[1:] */
    for (int i = 0; i < D; i++) x[2 * i] = s->keys[i], x[2 * i + 1] = s->vals[i];
    for (int j = C; j < L; j++) x[j] = 0;
    for (int j = 0; j < L; j++) y[j] = IGNORE_INDEX;
    for (int i = 0; i < D; i++) {
        int pos = C + 2 * s->gaps[i]; /* query key; its label sits at pos+1 before the shift */
        x[pos] = s->keys[i];
        y[pos] = s->vals[i];
        s->taken[s->gaps[i]] = 0;
    }
    if (p->random_non_queries)
        for (int j = 0; j < L; j++)
            if (x[j] == 0) x[j] = task_uniform(rng, V);
    if (info) info->n_queries = D;
}

static const char *mq_role(const TaskParams *p, int tok) {
    if (tok == 0) return "filler";
    return tok < p->vocab_size / 2 ? "key" : "value";
}

const Task task_mqar = {
    .name = "mqar",
    .help = "Zoology multi-query associative recall: distinct pairs, then queries at power-law "
            "gaps (mad.md §6)",
    .defaults = "task.vocab_size=8192 task.seq_len=64 task.num_train=100000 task.num_test=3000 "
                "task.num_kv_pairs=4 task.power_a=0.01 task.random_non_queries=false",
    .keys = "task.vocab_size task.seq_len task.num_train task.num_test task.num_kv_pairs "
            "task.power_a task.random_non_queries",
    .validate = mq_validate,
    .length = mq_length,
    .state_new = mq_state_new,
    .state_free = mq_state_free,
    .generate = mq_generate,
    .role = mq_role,
};
