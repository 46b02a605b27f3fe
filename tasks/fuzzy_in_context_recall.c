/* MAD fuzzy in-context recall (FR), mad.md §2.2.
 *
 * Keys and values are ordered tuples of distinct tokens of 1..K and 1..Vm
 * tokens (test keys: always K), pairs written back to back without a
 * separator, left padding to the nominal length. A value is a function of the
 * exact key tuple. A "probe" pair is inserted once mid-sequence and queried at
 * the end; when the loop never reaches the probe's slot the final query is
 * unanswerable (MAD's quirk, kept and counted in SeqInfo). */
#include <stdlib.h>
#include <string.h>

#include "task.h"

static int fr_ns(const TaskParams *p) {
    return p->vocab_size - (p->multi_query ? 1 : 2) - p->noise_vocab_size;
}
static int fr_pad(const TaskParams *p) { return p->vocab_size - (p->multi_query ? 1 : 2); }

static int fr_validate(const TaskParams *p, Err *err) {
    int K = p->k_motif_size, Vm = p->v_motif_size, ns = fr_ns(p);
    if (ns / 2 < K) {
        err_set(err, "key 'task.vocab_size': %d gives %d key tokens (vocab_size - %d - "
                     "noise_vocab_size, halved) but keys need task.k_motif_size=%d distinct tokens",
                p->vocab_size, ns / 2 < 0 ? 0 : ns / 2, p->multi_query ? 1 : 2, K);
        return -1;
    }
    if (ns - ns / 2 < Vm) {
        err_set(err, "key 'task.vocab_size': %d gives %d value tokens but values need "
                     "task.v_motif_size=%d distinct tokens", p->vocab_size, ns - ns / 2, Vm);
        return -1;
    }
    if (p->seq_len <= 2 * (K + Vm)) {
        err_set(err, "key 'task.seq_len': %d is too short; fuzzy recall needs seq_len > "
                     "2*(k_motif_size + v_motif_size) = %d", p->seq_len, 2 * (K + Vm));
        return -1;
    }
    if (task_check_noise(p, err) != 0) return -1;
    return 0;
}

static int fr_length(const TaskParams *p) { return p->seq_len; }

/* one bound key: its tuple and its value live in seq at koff and voff */
typedef struct {
    int koff, ks, voff, vs, slot;
} Entry;

typedef struct {
    int *kpool, *vpool; /* token pools for distinct draws */
    int *seq, *tgt;     /* [L+2] before padding */
    int *kp, *vp;       /* the probe pair */
    Entry *entries;
    int *slots; /* open addressing, entry index + 1; 0 = empty */
    int nslots, nentries;
} FrState;

static void *fr_state_new(const TaskParams *p, unsigned long seed) {
    (void)seed;
    int ns = fr_ns(p), L = p->seq_len;
    FrState *s = xcalloc(1, sizeof *s);
    s->kpool = xmalloc(sizeof(int) * (size_t)(ns / 2));
    s->vpool = xmalloc(sizeof(int) * (size_t)(ns - ns / 2));
    for (int i = 0; i < ns / 2; i++) s->kpool[i] = i;
    for (int i = 0; i < ns - ns / 2; i++) s->vpool[i] = ns / 2 + i;
    s->seq = xmalloc(sizeof(int) * (size_t)(L + 2));
    s->tgt = xmalloc(sizeof(int) * (size_t)(L + 2));
    s->kp = xmalloc(sizeof(int) * (size_t)p->k_motif_size);
    s->vp = xmalloc(sizeof(int) * (size_t)p->v_motif_size);
    s->entries = xmalloc(sizeof(Entry) * (size_t)(L / 2 + 2));
    for (s->nslots = 16; s->nslots < L + 4; s->nslots *= 2) {}
    s->slots = xcalloc((size_t)s->nslots, sizeof(int));
    return s;
}

static void fr_state_free(void *state) {
    FrState *s = state;
    free(s->kpool), free(s->vpool), free(s->seq), free(s->tgt), free(s->kp), free(s->vp);
    free(s->entries), free(s->slots);
    free(s);
}

static unsigned tuple_hash(const int *t, int n) {
    unsigned h = 2166136261u ^ (unsigned)n;
    for (int i = 0; i < n; i++) h = (h ^ (unsigned)t[i]) * 16777619u;
    return h;
}

/* slot of the key tuple t[0..n) (empty slot when absent) */
static int *lookup(FrState *s, const int *t, int n) {
    unsigned i = tuple_hash(t, n) & (unsigned)(s->nslots - 1);
    for (;; i = (i + 1) & (unsigned)(s->nslots - 1)) {
        int e = s->slots[i];
        if (!e) return &s->slots[i];
        const Entry *en = &s->entries[e - 1];
        if (en->ks == n && !memcmp(s->seq + en->koff, t, sizeof(int) * (size_t)n)) return &s->slots[i];
    }
}

static void fr_generate(const TaskParams *p, void *state, gsl_rng *rng, Split split, int *inputs,
                        int *targets, SeqInfo *info) {
    FrState *s = state;
    const int K = p->k_motif_size, Vm = p->v_motif_size, L = p->seq_len, mq = p->multi_query;
    const int ns = fr_ns(p), nk = ns / 2, nv = ns - ns / 2, pad = fr_pad(p), train = split == SPLIT_TRAIN;
    int *seq = s->seq, *tgt = s->tgt;
    /* clear the map of the previous sequence */
    for (int e = 0; e < s->nentries; e++) s->slots[s->entries[e].slot] = 0;
    s->nentries = 0;

#define KSZ() (train ? 1 + task_uniform(rng, K) : K)
#define VSZ() (1 + task_uniform(rng, Vm))
    int kp_n = KSZ(), vp_n = VSZ();
    task_distinct(rng, s->kpool, nk, kp_n, s->kp);
    task_distinct(rng, s->vpool, nv, vp_n, s->vp);
    const int S = kp_n + vp_n, end = L - S - (K + Vm);
    int probe_idx = task_uniform(rng, L - 2 * S), probe_added = 0, kp_seen = 0;
    int n = 0, queries = 0;
    while (n < end) {
        int ks = KSZ(), vs = VSZ(); /* drawn every iteration, as MAD */
        if (n >= probe_idx && !probe_added) {
            memcpy(seq + n, s->kp, sizeof(int) * (size_t)kp_n);
            memcpy(seq + n + kp_n, s->vp, sizeof(int) * (size_t)vp_n);
            for (int j = 0; j < S; j++) tgt[n + j] = IGNORE_INDEX;
            probe_added = kp_seen = 1;
            n += S;
            continue;
        }
        if (p->frac_noise > 0 && gsl_rng_uniform(rng) < p->frac_noise) {
            for (int j = 0; j < ks + vs; j++) {
                seq[n + j] = ns + task_uniform(rng, p->noise_vocab_size);
                tgt[n + j] = IGNORE_INDEX;
            }
            n += ks + vs;
            continue;
        }
        int *k = seq + n, *v = seq + n + ks, vlen, was_seen;
        task_distinct(rng, s->kpool, nk, ks, k);
        if (ks == kp_n && !memcmp(k, s->kp, sizeof(int) * (size_t)ks)) {
            /* the probe key drawn by chance: it takes the probe's value */
            memcpy(v, s->vp, sizeof(int) * (size_t)vp_n);
            vlen = vp_n, was_seen = kp_seen;
            probe_added = kp_seen = 1;
        } else {
            int *slot = lookup(s, k, ks);
            if (*slot) {
                const Entry *e = &s->entries[*slot - 1];
                memcpy(v, seq + e->voff, sizeof(int) * (size_t)e->vs);
                vlen = e->vs, was_seen = 1;
            } else {
                task_distinct(rng, s->vpool, nv, vs, v);
                vlen = vs, was_seen = 0;
                s->entries[s->nentries] = (Entry){n, ks, n + ks, vs, (int)(slot - s->slots)};
                *slot = ++s->nentries;
            }
        }
        for (int j = 0; j < ks; j++) tgt[n + j] = IGNORE_INDEX;
        for (int j = 0; j < vlen; j++) tgt[n + ks + j] = (was_seen && mq) ? v[j] : IGNORE_INDEX;
        queries += was_seen && mq;
        n += ks + vlen;
    }
#undef KSZ
#undef VSZ
    if (!mq) seq[n] = p->vocab_size - 1, tgt[n] = IGNORE_INDEX, n++;
    /* final query: always scored, every value token */
    for (int j = 0; j < kp_n; j++) seq[n + j] = s->kp[j], tgt[n + j] = IGNORE_INDEX;
    for (int j = 0; j < vp_n; j++) seq[n + kp_n + j] = tgt[n + kp_n + j] = s->vp[j];
    n += S;
    queries++;
    /* left padding to L+1 tokens, then x = full[:-1], y = full[1:] (train) or tgt[1:] */
    const int npad = L + 1 - n;
    CHECK(npad >= 1, "fuzzy recall: sequence of %d tokens exceeds %d", n, L + 1);
    const int *y = train ? seq : tgt;
    for (int j = 0; j < L; j++) {
        inputs[j] = j < npad ? pad : seq[j - npad];
        targets[j] = j + 1 < npad ? (train ? pad : IGNORE_INDEX) : y[j + 1 - npad];
    }
    if (info) info->n_pad = npad, info->n_queries = queries, info->n_unanswerable = !kp_seen;
}

static const char *fr_role(const TaskParams *p, int tok) {
    int ns = fr_ns(p);
    if (tok < ns / 2) return "key";
    if (tok < ns) return "value";
    if (tok < ns + p->noise_vocab_size) return "noise";
    if (tok == fr_pad(p)) return "pad";
    if (!p->multi_query && tok == p->vocab_size - 1) return "copy";
    return "unused";
}

const Task task_fuzzy_in_context_recall = {
    .name = "fuzzy_in_context_recall",
    .help = "MAD fuzzy in-context recall (FR): keys and values of several tokens, no separator "
            "(mad.md §2.2)",
    .defaults = "task.vocab_size=16 task.seq_len=128 task.num_train=12800 task.num_test=1280 "
                "task.noise_vocab_size=0 task.frac_noise=0 task.multi_query=true "
                "task.k_motif_size=3 task.v_motif_size=3",
    .keys = "task.vocab_size task.seq_len task.num_train task.num_test task.noise_vocab_size "
            "task.frac_noise task.multi_query task.k_motif_size task.v_motif_size",
    .validate = fr_validate,
    .length = fr_length,
    .state_new = fr_state_new,
    .state_free = fr_state_free,
    .generate = fr_generate,
    .role = fr_role,
};
