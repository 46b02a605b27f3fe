/* The MAD task suite and MQAR (mad.md §1-§3, §6): shapes and vocabularies,
 * scored positions, the invariants of each generator, distributions against
 * their exact expectations (bounds of 5 standard errors, which the wrong
 * generators named in each test miss by far), determinism per seed,
 * independence across seeds and splits, and the rejection of impossible
 * settings before training. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../tasks/task.h"
#include "../train/train.h"

/* ---- helpers ----------------------------------------------------------------------- */

static void setup(const char *task, const char *args, const Task **t, TaskParams *p) {
    Config *c = cfg_new();
    Err e = {{0}};
    char buf[512];
    snprintf(buf, sizeof buf, "task=%s %s", task, args);
    char *save = NULL;
    for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
        if (cfg_parse_arg(c, w, &e) != 0) fail_msg("'%s': %s", w, e.msg);
    if (task_resolve(c, t, p, &e) != 0) fail_msg("%s %s: %s", task, args, e.msg);
    cfg_free(c);
}

typedef struct {
    int n, len;
    int *x, *y;
    SeqInfo *info;
} Gen;

static Gen gen(const Task *t, const TaskParams *p, unsigned long seed, Split split, int n) {
    Gen g = {n, t->length(p), NULL, NULL, NULL};
    g.x = malloc(sizeof(int) * (size_t)n * g.len);
    g.y = malloc(sizeof(int) * (size_t)n * g.len);
    g.info = malloc(sizeof(SeqInfo) * (size_t)n);
    TaskStream *s = task_stream_new(t, p, seed, split);
    task_stream_next(s, n, g.x, g.y, g.info);
    task_stream_free(s);
    return g;
}
static void gen_free(Gen *g) { free(g->x), free(g->y), free(g->info); }
static int scored(const int *y, int len) {
    int c = 0;
    for (int j = 0; j < len; j++) c += y[j] != IGNORE_INDEX;
    return c;
}

/* |observed mean - expected| in standard errors */
static double zscore(double mean, double expect, double var, int n) {
    return fabs(mean - expect) / sqrt(var / n + 1e-300);
}

/* Pearson chi-square of counts against probabilities */
static double chi2(const long *count, const double *prob, int k) {
    long n = 0;
    for (int i = 0; i < k; i++) n += count[i];
    double c = 0;
    for (int i = 0; i < k; i++) {
        double e = prob[i] * n;
        c += (count[i] - e) * (count[i] - e) / e;
    }
    return c;
}
/* a bound that a chi-square with df degrees of freedom exceeds with p < 1e-6 */
static double chi2_bound(int df) { return df + 7.5 * sqrt(2.0 * df) + 12; }

static double uniform_chi2(const long *count, int k) {
    double *p = malloc(sizeof(double) * (size_t)k);
    for (int i = 0; i < k; i++) p[i] = 1.0 / k;
    double c = chi2(count, p, k);
    free(p);
    return c;
}

/* ---- shapes, vocabularies, scored counts (every task) ------------------------------- */

typedef struct {
    const char *task, *args;
} Case;

static const Case small[] = {
    {"in_context_recall", "task.seq_len=32"},
    {"noisy_in_context_recall", "task.seq_len=32"},
    {"fuzzy_in_context_recall", "task.seq_len=48"},
    {"selective_copying", "task.seq_len=40 task.num_tokens_to_copy=6"},
    {"compression", "task.seq_len=16"},
    {"memorization", "task.vocab_size=64 task.seq_len=16"},
    {"mqar", "task.vocab_size=128 task.seq_len=64 task.num_kv_pairs=8"},
};
enum { NCASES = sizeof small / sizeof small[0] };

static void test_registry_complete(void **st) {
    (void)st;
    assert_int_equal(task_count(), NCASES);
    for (int i = 0; i < NCASES; i++) assert_non_null(task_find(small[i].task));
}

static void test_shapes_vocab_scored(void **st) {
    (void)st;
    for (int c = 0; c < NCASES; c++) {
        const Task *t;
        TaskParams p;
        setup(small[c].task, small[c].args, &t, &p);
        int L = p.seq_len, V = p.vocab_size;
        int recall = strstr(t->name, "recall") != NULL;
        int want_len = recall && strcmp(t->name, "fuzzy_in_context_recall") ? L - 1 : L;
        for (int split = 0; split < 2; split++) {
            Gen g = gen(t, &p, 5, (Split)split, 300);
            assert_int_equal(g.len, want_len);
            for (int i = 0; i < g.n; i++) {
                const int *x = g.x + (size_t)i * g.len, *y = g.y + (size_t)i * g.len;
                for (int j = 0; j < g.len; j++) {
                    assert_true(x[j] >= 0 && x[j] < V);
                    assert_true(y[j] == IGNORE_INDEX || (y[j] >= 0 && y[j] < V));
                }
                int s = scored(y, g.len);
                if (recall && split == SPLIT_TRAIN) {
                    /* train: the plain next-token shift, every position (mad.md §1) */
                    assert_int_equal(s, g.len);
                    for (int j = 0; j + 1 < g.len; j++) assert_int_equal(y[j], x[j + 1]);
                } else if (recall) {
                    assert_true(y[g.len - 1] != IGNORE_INDEX); /* the final query */
                    if (t->name[0] != 'f') assert_int_equal(s, g.info[i].n_queries);
                    else assert_true(s >= g.info[i].n_queries);
                } else if (!strcmp(t->name, "selective_copying")) {
                    assert_int_equal(s, p.num_tokens_to_copy);
                } else if (!strcmp(t->name, "compression")) {
                    assert_int_equal(s, L);
                } else if (!strcmp(t->name, "memorization")) {
                    assert_int_equal(s, L / 2);
                } else {
                    assert_int_equal(s, p.num_kv_pairs);
                }
            }
            gen_free(&g);
        }
    }
}

/* ---- in-context recall and noisy recall (mad.md §2.1) ------------------------------- */

static void check_icr_test_split(const Task *t, const TaskParams *p, int n) {
    int ns = p->vocab_size - p->noise_vocab_size - (p->multi_query ? 0 : 1);
    Gen g = gen(t, p, 9, SPLIT_TEST, n);
    for (int i = 0; i < g.n; i++) {
        const int *x = g.x + (size_t)i * g.len, *y = g.y + (size_t)i * g.len;
        int bound[4096];
        for (int k = 0; k < ns / 2; k++) bound[k] = -1;
        /* one value per key across the sequence (non-noise pairs at even positions) */
        for (int j = 0; j + 1 < g.len; j += 2) {
            if (x[j] >= ns || (!p->multi_query && x[j] == p->vocab_size - 1)) continue;
            assert_true(x[j] < ns / 2);
            if (j + 1 < g.len) {
                if (bound[x[j]] < 0) bound[x[j]] = x[j + 1];
                assert_int_equal(bound[x[j]], x[j + 1]);
            }
        }
        /* every scored query's key was seen before, with the scored value */
        for (int j = 0; j < g.len; j++) {
            if (y[j] == IGNORE_INDEX) continue;
            assert_true(x[j] < ns / 2 && y[j] >= ns / 2 && y[j] < ns);
            int found = 0;
            for (int k = 0; k < j && !found; k++) found = k % 2 == 0 && x[k] == x[j] && x[k + 1] == y[j];
            assert_true(found);
            if (!p->multi_query) assert_int_equal(j, g.len - 1);
        }
        if (!p->multi_query) assert_int_equal(x[g.len - 2], p->vocab_size - 1); /* copy prefix */
        assert_int_equal(g.info[i].n_unanswerable, 0);
    }
    gen_free(&g);
}

static void test_icr_invariants(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("in_context_recall", "task.seq_len=64", &t, &p);
    check_icr_test_split(t, &p, 2000);
    setup("in_context_recall", "task.seq_len=64 task.multi_query=false", &t, &p);
    check_icr_test_split(t, &p, 2000);
    setup("noisy_in_context_recall", "", &t, &p);
    check_icr_test_split(t, &p, 1000);
    /* the baseline vocabulary split (mad.md §2.1): CR keys 0-7, values 8-15 */
    setup("in_context_recall", "", &t, &p);
    assert_string_equal(t->role(&p, 7), "key");
    assert_string_equal(t->role(&p, 8), "value");
    setup("noisy_in_context_recall", "", &t, &p);
    assert_string_equal(t->role(&p, 15), "value");
    assert_string_equal(t->role(&p, 16), "noise");
    assert_string_equal(t->role(&p, 31), "noise");
}

/* Noise pairs per sequence: each of the P-1 loop slots but nn_idx ~ U(P) is
 * noise with probability fn, so E = (P-1) fn (1 - 1/P). A generator that
 * forgets the guaranteed slot is off by fn (P-1)/P, ~9 standard errors here. */
static void check_noise_share(double fn) {
    const Task *t;
    TaskParams p;
    char args[64];
    snprintf(args, sizeof args, "task.frac_noise=%g", fn);
    setup("noisy_in_context_recall", args, &t, &p);
    int P = p.seq_len / 2, ns = p.vocab_size - p.noise_vocab_size, N = 20000;
    Gen g = gen(t, &p, 3, SPLIT_TEST, N);
    double sum = 0;
    long keys[8] = {0};
    for (int i = 0; i < N; i++) {
        const int *x = g.x + (size_t)i * g.len;
        int c = 0;
        for (int j = 0; j < 2 * (P - 1); j += 2) {
            if (x[j] >= ns) {
                c++;
                assert_true(x[j + 1] >= ns); /* noise fills whole pairs */
            } else keys[x[j]]++;
        }
        sum += c;
    }
    double mean = sum / N, expect = (P - 1) * fn * (1.0 - 1.0 / P);
    double var = fn * (1 - fn) * (P - 2 + 1.0 / P) + fn * fn * (1.0 / P) * (1 - 1.0 / P);
    double z = zscore(mean, expect, var, N);
    printf("  noise pairs per sequence at fn=%.1f: %.4f, expected %.4f (z = %.2f)\n", fn, mean,
           expect, z);
    assert_true(z < 5);
    double c2 = uniform_chi2(keys, 8);
    printf("  key uniformity chi2 = %.1f (df 7, bound %.1f)\n", c2, chi2_bound(7));
    assert_true(c2 < chi2_bound(7));
    gen_free(&g);
}

static void test_noise_share(void **st) {
    (void)st;
    check_noise_share(0.2);
    check_noise_share(0.8);
}

/* ---- fuzzy recall (mad.md §2.2) ----------------------------------------------------- */

static int find_run(const int *x, int from, int to, const int *pat, int n) {
    for (int i = from; i + n <= to; i++)
        if (!memcmp(x + i, pat, sizeof(int) * (size_t)n)) return 1;
    return 0;
}

static void test_fuzzy_invariants(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("fuzzy_in_context_recall", "", &t, &p); /* V=16, L=128, K=Vm=3 */
    const int K = p.k_motif_size, L = p.seq_len, pad = p.vocab_size - 1, ns = p.vocab_size - 1;
    const int N = 6000;
    Gen g = gen(t, &p, 21, SPLIT_TEST, N);
    long vlen[3] = {0}, first_key[7] = {0};
    int unanswerable = 0;
    for (int i = 0; i < N; i++) {
        const int *x = g.x + (size_t)i * L, *y = g.y + (size_t)i * L;
        int np = g.info[i].n_pad;
        /* left padding, and no pad token after it */
        assert_true(np >= 1);
        for (int j = 0; j < L; j++) assert_int_equal(x[j] == pad, j < np);
        /* the final query: the trailing scored run is its value */
        int r = 0;
        while (r < L && y[L - 1 - r] != IGNORE_INDEX) r++;
        assert_true(r >= 1 && r <= p.v_motif_size);
        vlen[r - 1]++;
        int j0 = L - r;
        const int *key = x + j0 - K + 1;
        int kv[16];
        for (int a = 0; a < K; a++) {
            assert_true(key[a] < ns / 2);
            for (int b = 0; b < a; b++) assert_true(key[a] != key[b]); /* distinct tokens */
            kv[a] = key[a];
        }
        first_key[key[0]]++;
        for (int a = 0; a < r; a++) {
            assert_true(y[j0 + a] >= ns / 2 && y[j0 + a] < ns);
            kv[K + a] = y[j0 + a];
        }
        /* answerable queries: the key with its value occurred earlier (the probe pair) */
        if (g.info[i].n_unanswerable == 0) assert_true(find_run(x, np, j0 - K + 1, kv, K + r));
        unanswerable += g.info[i].n_unanswerable;
        /* any other scored position is a repeated key's value token, fed as the next input */
        for (int j = np; j < j0; j++)
            if (y[j] != IGNORE_INDEX) assert_int_equal(y[j], x[j + 1]);
    }
    /* MAD's quirk: a few final queries are unanswerable (probe slot never reached) */
    printf("  unanswerable final queries: %d of %d\n", unanswerable, N);
    assert_true(unanswerable > 0 && unanswerable < N / 10);
    /* value sizes uniform over 1..Vm and key tokens uniform over the 7 keys */
    double c2 = uniform_chi2(vlen, 3), c2k = uniform_chi2(first_key, 7);
    printf("  value size chi2 %.1f (df 2), first key token chi2 %.1f (df 6)\n", c2, c2k);
    assert_true(c2 < chi2_bound(2) && c2k < chi2_bound(6));
    gen_free(&g);
}

/* ---- selective copying (mad.md §2.3) ------------------------------------------------ */

static void test_selective_copying(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("selective_copying", "task.seq_len=64 task.num_tokens_to_copy=8", &t, &p);
    const int L = p.seq_len, T = p.num_tokens_to_copy, V = p.vocab_size, B = L - 2 * T - 1;
    const int blank = V - 2, copy = V - 1, N = 20000;
    Gen g = gen(t, &p, 17, SPLIT_TRAIN, N);
    double s0 = 0, s00 = 0, sl = 0, sll = 0, s01 = 0, s1 = 0, s11 = 0;
    long content[14] = {0};
    for (int i = 0; i < N; i++) {
        const int *x = g.x + (size_t)i * L, *y = g.y + (size_t)i * L;
        assert_int_equal(x[L - T - 1], copy);
        for (int j = L - T; j < L; j++) assert_int_equal(x[j], blank);
        assert_true(x[L - T - 2] < blank); /* the last content token is right before copy */
        int n_c = 0, gap = 0, gaps[64];
        for (int j = 0; j < L - T - 1; j++) {
            if (x[j] == blank) gap++;
            else {
                assert_true(x[j] < blank);
                assert_int_equal(y[L - T + n_c], x[j]); /* copied in order */
                content[x[j]]++;
                gaps[n_c++] = gap, gap = 0;
            }
        }
        assert_int_equal(n_c, T);
        for (int j = 0; j < L - T; j++) assert_int_equal(y[j], IGNORE_INDEX);
        s0 += gaps[0], s00 += gaps[0] * gaps[0], sl += gaps[T - 1], sll += gaps[T - 1] * gaps[T - 1];
        s1 += gaps[1], s11 += gaps[1] * gaps[1], s01 += gaps[0] * gaps[1];
    }
    /* blank counts ~ Multinomial(B, 1/T): mean B/T, variance B/T (1-1/T), corr -1/(T-1).
     * Evenly spread blanks (variance 0) or blanks after the last token both fail. */
    double m = (double)B / T, v = m * (1 - 1.0 / T);
    double m0 = s0 / N, ml = sl / N, v0 = s00 / N - m0 * m0, vl = sll / N - ml * ml;
    double m1 = s1 / N, v1 = s11 / N - m1 * m1, corr = (s01 / N - m0 * m1) / sqrt(v0 * v1);
    printf("  blanks before first/last token: mean %.3f/%.3f var %.3f/%.3f (exact %.3f, %.3f); "
           "corr %.4f (exact %.4f)\n", m0, ml, v0, vl, m, v, corr, -1.0 / (T - 1));
    assert_true(zscore(m0, m, v, N) < 5 && zscore(ml, m, v, N) < 5);
    assert_true(fabs(v0 / v - 1) < 0.06 && fabs(vl / v - 1) < 0.06);
    assert_true(fabs(corr + 1.0 / (T - 1)) < 0.04);
    double c2 = uniform_chi2(content, V - 2);
    assert_true(c2 < chi2_bound(V - 3));
    gen_free(&g);
}

/* ---- compression (mad.md §2.4) ------------------------------------------------------ */

static void test_compression(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("compression", "", &t, &p);
    const int L = p.seq_len, V = p.vocab_size, N = 5000;
    Gen g = gen(t, &p, 2, SPLIT_TEST, N);
    long count[15] = {0};
    for (int i = 0; i < N; i++) {
        const int *x = g.x + (size_t)i * L, *y = g.y + (size_t)i * L;
        assert_memory_equal(x, y, sizeof(int) * (size_t)L);
        assert_int_equal(x[L - 1], V - 1);
        for (int j = 0; j < L - 1; j++) assert_true(x[j] < V - 1), count[x[j]]++;
    }
    assert_true(uniform_chi2(count, V - 1) < chi2_bound(V - 2));
    gen_free(&g);
    /* noise: each content position is a noise token with probability fn, still a target */
    setup("compression", "task.noise_vocab_size=4 task.frac_noise=0.3", &t, &p);
    g = gen(t, &p, 2, SPLIT_TRAIN, N);
    long noise = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < L - 1; j++) {
            int tok = g.x[(size_t)i * L + j];
            noise += tok >= V - 1 - 4 && tok < V - 1;
            assert_int_equal(g.y[(size_t)i * L + j], tok);
        }
    double share = (double)noise / ((double)N * (L - 1));
    assert_true(zscore(share, 0.3, 0.3 * 0.7, N * (L - 1)) < 5);
    gen_free(&g);
}

/* ---- memorization (mad.md §2.5) ----------------------------------------------------- */

static void read_map(const Gen *g, int *map, int nk) {
    for (int i = 0; i < g->n; i++)
        for (int j = 0; j < g->len; j += 2) {
            int k = g->x[(size_t)i * g->len + j], v = g->y[(size_t)i * g->len + j + 1];
            assert_int_equal(g->y[(size_t)i * g->len + j], IGNORE_INDEX);
            assert_true(k < nk);
            if (map[k] < 0) map[k] = v;
            assert_int_equal(map[k], v); /* one value per key, in every sequence */
        }
}

static void test_memorization_map(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("memorization", "task.vocab_size=64 task.seq_len=16", &t, &p);
    const int V = p.vocab_size, nk = (V - 1) / 2;
    Gen tr = gen(t, &p, 4, SPLIT_TRAIN, 600), te = gen(t, &p, 4, SPLIT_TEST, 600);
    int map_tr[64], map_te[64], map_other[64];
    for (int k = 0; k < 64; k++) map_tr[k] = map_te[k] = map_other[k] = -1;
    read_map(&tr, map_tr, nk);
    read_map(&te, map_te, nk);
    /* the same map in train and test; every key seen; injective into [nk, V-1) */
    char used[64] = {0};
    for (int k = 0; k < nk; k++) {
        assert_true(map_tr[k] >= 0);
        assert_int_equal(map_tr[k], map_te[k]);
        assert_true(map_tr[k] >= nk && map_tr[k] < V - 1);
        assert_false(used[map_tr[k]]);
        used[map_tr[k]] = 1;
    }
    for (int i = 0; i < tr.n; i++)
        for (int j = 1; j < tr.len; j += 2) assert_int_equal(tr.x[(size_t)i * tr.len + j], V - 1);
    /* another seed, another map */
    Gen o = gen(t, &p, 5, SPLIT_TRAIN, 600);
    read_map(&o, map_other, nk);
    int differ = 0;
    for (int k = 0; k < nk; k++) differ += map_other[k] != map_tr[k];
    assert_true(differ > nk / 2);
    gen_free(&tr), gen_free(&te), gen_free(&o);
}

/* ---- MQAR (mad.md §6.1) ------------------------------------------------------------- */

static void test_mqar(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("mqar", "task.vocab_size=128 task.seq_len=64 task.num_kv_pairs=8", &t, &p);
    const int L = p.seq_len, V = p.vocab_size, D = p.num_kv_pairs, C = 2 * D, space = (L - C) / 2;
    const int N = 20000;
    Gen g = gen(t, &p, 8, SPLIT_TRAIN, N);
    long g0[64] = {0}, g1_zero = 0;
    for (int i = 0; i < N; i++) {
        const int *x = g.x + (size_t)i * L, *y = g.y + (size_t)i * L;
        for (int a = 0; a < D; a++) {
            assert_true(x[2 * a] >= 1 && x[2 * a] < V / 2);
            assert_true(x[2 * a + 1] >= V / 2 && x[2 * a + 1] < V);
            for (int b = 0; b < a; b++) {
                assert_true(x[2 * a] != x[2 * b]);         /* distinct keys */
                assert_true(x[2 * a + 1] != x[2 * b + 1]); /* distinct values */
            }
        }
        int queried[64] = {0};
        for (int j = 0; j < C; j++) assert_int_equal(y[j], IGNORE_INDEX);
        for (int j = C; j < L; j++) {
            if (y[j] == IGNORE_INDEX) {
                assert_int_equal(x[j], 0); /* filler (random_non_queries=false) */
                continue;
            }
            assert_int_equal((j - C) % 2, 0);
            int a = 0;
            while (a < D && x[2 * a] != x[j]) a++;
            assert_true(a < D);
            assert_int_equal(y[j], x[2 * a + 1]);
            if (j + 1 < L) assert_int_equal(x[j + 1], 0); /* the answer is never fed back */
            queried[a]++;
            if (a == 0) g0[(j - C) / 2]++;
            if (a == 1) g1_zero += j == C;
        }
        for (int a = 0; a < D; a++) assert_int_equal(queried[a], 1);
    }
    /* key 0's gap ~ p_i = a i^(a-1) / Z exactly; key 1's gap 0 has probability
     * sum_{i>0} p_i p_0 / (1 - p_i) (successive sampling). Uniform gaps fail both. */
    double w[64] = {0}, Z = 0, a = p.power_a;
    for (int i = 0; i < space; i++) Z += w[i] = a * pow(i + 1.0, a - 1);
    for (int i = 0; i < space; i++) w[i] /= Z;
    double c2 = chi2(g0, w, space), e1 = 0;
    for (int i = 1; i < space; i++) e1 += w[i] * w[0] / (1 - w[i]);
    double f1 = (double)g1_zero / N;
    printf("  key-0 gap chi2 %.1f (df %d); P(key-1 gap = 0) %.4f, exact %.4f\n", c2, space - 1, f1, e1);
    assert_true(c2 < chi2_bound(space - 1));
    assert_true(zscore(f1, e1, e1 * (1 - e1), N) < 5);
    gen_free(&g);
    /* random non-queries: filler uniform over the vocabulary */
    setup("mqar", "task.vocab_size=128 task.seq_len=64 task.num_kv_pairs=8 task.random_non_queries=true",
          &t, &p);
    g = gen(t, &p, 8, SPLIT_TRAIN, 2000);
    long zeros = 0, fill = 0;
    for (int i = 0; i < g.n; i++)
        for (int j = C; j < L; j++)
            if (g.y[(size_t)i * L + j] == IGNORE_INDEX) fill++, zeros += g.x[(size_t)i * L + j] == 0;
    double z0 = (double)zeros / fill;
    assert_true(zscore(z0, 1.0 / V, (1.0 / V) * (1 - 1.0 / V), (int)fill) < 5);
    gen_free(&g);
}

/* ---- determinism, streams, seeds ---------------------------------------------------- */

static void test_determinism_and_streams(void **st) {
    (void)st;
    for (int c = 0; c < NCASES; c++) {
        const Task *t;
        TaskParams p;
        setup(small[c].task, small[c].args, &t, &p);
        p.num_train = 50, p.num_test = 30;
        Dataset tr, te;
        task_generate(t, &p, 77, &tr, &te);
        Gen a = gen(t, &p, 77, SPLIT_TRAIN, 50), b = gen(t, &p, 77, SPLIT_TEST, 30);
        size_t ntr = (size_t)50 * tr.len, nte = (size_t)30 * te.len;
        /* task_generate = the two streams; a stream read in pieces = read at once */
        assert_memory_equal(tr.inputs, a.x, sizeof(int) * ntr);
        assert_memory_equal(tr.targets, a.y, sizeof(int) * ntr);
        assert_memory_equal(te.inputs, b.x, sizeof(int) * nte);
        TaskStream *s = task_stream_new(t, &p, 77, SPLIT_TRAIN);
        int *x = malloc(sizeof(int) * ntr), *y = malloc(sizeof(int) * ntr);
        for (int i = 0; i < 50; i += 7) {
            int m = 50 - i < 7 ? 50 - i : 7;
            task_stream_next(s, m, x + (size_t)i * tr.len, y + (size_t)i * tr.len, NULL);
        }
        assert_memory_equal(x, a.x, sizeof(int) * ntr);
        assert_memory_equal(y, a.y, sizeof(int) * ntr);
        task_stream_free(s);
        /* another seed gives other data */
        Gen o = gen(t, &p, 78, SPLIT_TRAIN, 50);
        assert_true(memcmp(o.x, a.x, sizeof(int) * ntr) != 0);
        free(x), free(y);
        gen_free(&a), gen_free(&b), gen_free(&o);
        dataset_free(&tr), dataset_free(&te);
    }
}

/* Independence: between seeds s and s+1 (and between the train and test
 * streams of one seed) compression's content tokens agree at a position with
 * probability 1/(V-1), as independent uniform draws do. */
static void test_seed_independence(void **st) {
    (void)st;
    const Task *t;
    TaskParams p;
    setup("compression", "", &t, &p);
    const int L = p.seq_len, V = p.vocab_size, N = 4000;
    for (int pair = 0; pair < 3; pair++) {
        Gen a = gen(t, &p, 1000, SPLIT_TRAIN, N);
        Gen b = pair == 2 ? gen(t, &p, 1000, SPLIT_TEST, N) : gen(t, &p, 1001 + pair * 1000, SPLIT_TRAIN, N);
        long same = 0, n = 0;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < L - 1; j++, n++) same += a.x[(size_t)i * L + j] == b.x[(size_t)i * L + j];
        double q = 1.0 / (V - 1), f = (double)same / n;
        assert_true(zscore(f, q, q * (1 - q), (int)n) < 5);
        gen_free(&a), gen_free(&b);
    }
}

/* ---- impossible settings ------------------------------------------------------------ */

static void expect_reject(const char *args, const char *key, const char *value, const char *rule) {
    Config *c = cfg_new();
    Err e = {{0}};
    char buf[512];
    snprintf(buf, sizeof buf, "%s", args);
    char *save = NULL;
    for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
        assert_int_equal(cfg_parse_arg(c, w, &e), 0);
    int rc = config_resolve(c, &e);
    printf("  %-64s -> %s\n", args, e.msg);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(e.msg, key));
    assert_non_null(strstr(e.msg, value));
    assert_non_null(strstr(e.msg, rule));
    cfg_free(c);
}

static void test_rejects_impossible(void **st) {
    (void)st;
    expect_reject("task=in_context_recall task.seq_len=33", "'task.seq_len'", "33", "even");
    expect_reject("task=memorization task.seq_len=31", "'task.seq_len'", "31", "even");
    expect_reject("task=mqar task.seq_len=66 task.vocab_size=40", "'task.vocab_size'", "40",
                  "vocab_size > seq_len");
    expect_reject("task=selective_copying task.seq_len=32 task.num_tokens_to_copy=16",
                  "'task.num_tokens_to_copy'", "16", "seq_len > 2*num_tokens_to_copy + 1");
    expect_reject("task=noisy_in_context_recall task.vocab_size=17", "'task.vocab_size'", "17",
                  "vocab_size - noise_vocab_size >= 2");
    expect_reject("task=fuzzy_in_context_recall task.vocab_size=6", "'task.vocab_size'", "6",
                  "k_motif_size=3");
    expect_reject("task=fuzzy_in_context_recall task.seq_len=12", "'task.seq_len'", "12",
                  "seq_len > 2*(k_motif_size + v_motif_size)");
    expect_reject("task=mqar task.seq_len=64 task.num_kv_pairs=17", "'task.num_kv_pairs'", "17",
                  "4*num_kv_pairs <= seq_len");
    expect_reject("task=mqar task.seq_len=63", "'task.seq_len'", "63", "even");
    expect_reject("task=compression task.vocab_size=5 task.noise_vocab_size=4", "'task.vocab_size'",
                  "5", "vocab_size - noise_vocab_size - 1 >= 1");
    expect_reject("task=noisy_in_context_recall task.noise_vocab_size=0", "'task.noise_vocab_size'",
                  "0.2", "at least one noise token");
    expect_reject("task=in_context_recall task.num_kv_pairs=4", "'task.num_kv_pairs'",
                  "in_context_recall", "does not read");
    expect_reject("task=selective_copying task.vocab_size=2", "'task.vocab_size'", "2",
                  "vocab_size >= 3");
}

/* ---- speed: 12,800 sequences at seq 1024 on one core -------------------------------- */

static void test_generation_speed(void **st) {
    (void)st;
    const char *cases[][2] = {
        {"in_context_recall", "task.seq_len=1024"},
        {"fuzzy_in_context_recall", "task.seq_len=1024"},
        {"selective_copying", "task.seq_len=1024"},
    };
    for (int c = 0; c < 3; c++) {
        const Task *t;
        TaskParams p;
        setup(cases[c][0], cases[c][1], &t, &p);
        p.num_test = 1;
        clock_t t0 = clock();
        Dataset tr;
        task_generate(t, &p, 1, &tr, NULL);
        double s = (double)(clock() - t0) / CLOCKS_PER_SEC;
        printf("  %s: %d x %d tokens in %.3f s CPU\n", t->name, tr.n, tr.len, s);
        assert_int_equal(tr.n, 12800);
        assert_true(s < 1.0);
        dataset_free(&tr);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_complete),
        cmocka_unit_test(test_shapes_vocab_scored),
        cmocka_unit_test(test_icr_invariants),
        cmocka_unit_test(test_noise_share),
        cmocka_unit_test(test_fuzzy_invariants),
        cmocka_unit_test(test_selective_copying),
        cmocka_unit_test(test_compression),
        cmocka_unit_test(test_memorization_map),
        cmocka_unit_test(test_mqar),
        cmocka_unit_test(test_determinism_and_streams),
        cmocka_unit_test(test_seed_independence),
        cmocka_unit_test(test_rejects_impossible),
        cmocka_unit_test(test_generation_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
