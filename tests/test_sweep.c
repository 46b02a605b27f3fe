/* Sweep files: grid expansion, tied parameters, random draws (reproducible,
 * inside their bounds, with the right distribution) and a table of malformed
 * files, each with the exact error (file:line:col and the expected wording). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../sweeps/sweep.h"

static const char *small =
    "base: {task: in_context_recall, task.seq_len: 16, task.num_train: 64, model.d_model: 16,"
    " model.heads: 2}\n";

static Sweep *load(const char *body) {
    char text[4096];
    snprintf(text, sizeof text, "%s%s", small, body);
    Sweep *s;
    Err e = {{0}};
    int rc = sweep_load_text(text, "t.yaml", &s, &e);
    if (rc) print_error("unexpected error: %s\n", e.msg);
    assert_int_equal(rc, 0);
    return s;
}

static void test_grid_counts_and_contents(void **st) {
    (void)st;
    Sweep *s = load("method: grid\nparameters:\n"
                    "  model.mixer: {values: [softmax, parallax]}\n"
                    "  lr: {values: [1e-4, 5e-4, 1e-3]}\n"
                    "  weight_decay: {values: [0.0, 0.1]}\n");
    assert_string_equal(s->name, "t");
    assert_int_equal(sweep_grid_size(s), 12);
    Plan p;
    Err e;
    assert_int_equal(sweep_plan(s, &p, &e), 0);
    assert_int_equal(p.n, 12);
    assert_int_equal(p.duplicates, 0);
    /* first parameter slowest, last fastest; every combination once */
    const char *mix[] = {"softmax", "parallax"}, *lr[] = {"0.0001", "0.0005", "0.001"}, *wd[] = {"0", "0.1"};
    int seen[2][3][2] = {{{0}}};
    for (int i = 0; i < p.n; i++) {
        const Config *c = p.runs[i].cfg;
        assert_string_equal(cfg_str(c, "model.mixer"), mix[i / 6]);
        assert_string_equal(cfg_str(c, "lr"), lr[(i / 2) % 3]);
        assert_string_equal(cfg_str(c, "weight_decay"), wd[i % 2]);
        assert_string_equal(cfg_str(c, "task.seq_len"), "16"); /* base applies to all */
        seen[i / 6][(i / 2) % 3][i % 2]++;
        for (int j = 0; j < i; j++) assert_string_not_equal(p.runs[i].hash, p.runs[j].hash);
    }
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 2; c++) assert_int_equal(seen[a][b][c], 1);
    assert_string_equal(p.runs[0].overrides, "model.mixer=softmax lr=1e-4 weight_decay=0.0");
    plan_free(&p);
    sweep_free(s);
}

/* configs that resolve to the same hash run once; run_cap cuts a grid */
static void test_grid_duplicates_and_cap(void **st) {
    (void)st;
    Sweep *s = load("method: grid\nparameters:\n  lr: {values: [1e-3, 0.001, 2e-3]}\n"
                    "  seed: {value: 3}\n");
    Plan p;
    Err e;
    assert_int_equal(sweep_plan(s, &p, &e), 0);
    assert_int_equal(p.generated, 3);
    assert_int_equal(p.n, 2);
    assert_int_equal(p.duplicates, 1);
    assert_string_equal(cfg_str(p.runs[1].cfg, "seed"), "3");
    plan_free(&p);
    sweep_free(s);
    s = load("method: grid\nrun_cap: 2\nparameters:\n  seed: {values: [1, 2, 3, 4, 5]}\n");
    assert_int_equal(sweep_plan(s, &p, &e), 0);
    assert_int_equal(p.n, 2);
    assert_int_equal(p.capped, 3);
    plan_free(&p);
    sweep_free(s);
}

/* a tied parameter sets its keys together; the rest stay at the task's defaults */
static void test_tied_parameters(void **st) {
    (void)st;
    Sweep *s = load("method: grid\nparameters:\n"
                    "  setting:\n    values:\n"
                    "      - {task.vocab_size: 32}\n"
                    "      - {task.seq_len: 32, task.num_train: 100}\n"
                    "  lr: {values: [1e-3, 2e-3]}\n");
    Plan p;
    Err e;
    assert_int_equal(sweep_plan(s, &p, &e), 0);
    assert_int_equal(p.n, 4);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(cfg_str(p.runs[i].cfg, "task.vocab_size"), "32");
        assert_string_equal(cfg_str(p.runs[i].cfg, "task.seq_len"), "16");
        assert_string_equal(cfg_str(p.runs[i].cfg, "task.num_train"), "64");
        assert_string_equal(cfg_str(p.runs[2 + i].cfg, "task.seq_len"), "32");
        assert_string_equal(cfg_str(p.runs[2 + i].cfg, "task.num_train"), "100");
        assert_string_not_equal(cfg_str(p.runs[2 + i].cfg, "task.vocab_size"), "32");
    }
    assert_string_equal(p.runs[3].overrides, "task.seq_len=32 task.num_train=100 lr=2e-3");
    plan_free(&p);
    sweep_free(s);
}

static int same_plan(const Plan *a, const Plan *b) {
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->runs[i].hash, b->runs[i].hash)) return 0;
    return 1;
}

static void test_random_reproducible(void **st) {
    (void)st;
    const char *body = "method: random\nrun_cap: 20\nseed: %d\nparameters:\n"
                       "  model.mixer: {values: [softmax, parallax]}\n"
                       "  lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-2}\n"
                       "  weight_decay: {distribution: uniform, min: 0, max: 0.2}\n"
                       "  model.layers: {distribution: int_uniform, min: 1, max: 3}\n";
    char text[1024];
    Plan p[3];
    Err e;
    for (int k = 0; k < 3; k++) {
        snprintf(text, sizeof text, body, k < 2 ? 7 : 8);
        Sweep *s = load(text);
        assert_int_equal(sweep_plan(s, &p[k], &e), 0);
        assert_int_equal(p[k].n, 20);
        for (int i = 0; i < p[k].n; i++) {
            const Config *c = p[k].runs[i].cfg;
            double lr = cfg_float(c, "lr"), wd = cfg_float(c, "weight_decay");
            long layers = cfg_int(c, "model.layers");
            assert_true(lr >= 1e-4 && lr <= 1e-2);
            assert_true(wd >= 0 && wd <= 0.2);
            assert_true(layers >= 1 && layers <= 3);
        }
        sweep_free(s);
    }
    assert_true(same_plan(&p[0], &p[1]));  /* same seed, same runs */
    assert_false(same_plan(&p[0], &p[2])); /* another seed, other runs */
    for (int k = 0; k < 3; k++) plan_free(&p[k]);
}

/* the distributions themselves, on many draws: a wrong generator fails */
static void test_random_distributions(void **st) {
    (void)st;
    gsl_rng *r = test_rng(5);
    const int N = 4000;
    char buf[64];
    SweepParam lu = {.dist = DIST_LOG_UNIFORM_VALUES, .min = 1e-4, .max = 1e-2};
    int below = 0; /* log-uniform: half the mass below the geometric mean 1e-3 */
    for (int i = 0; i < N; i++) {
        sweep_draw(&lu, r, buf, sizeof buf);
        double x = atof(buf);
        assert_true(x >= 1e-4 * (1 - 1e-6) && x <= 1e-2 * (1 + 1e-6));
        below += x < 1e-3;
    }
    assert_true(fabs((double)below / N - 0.5) < 0.04); /* plain uniform would give 0.09 */
    SweepParam un = {.dist = DIST_UNIFORM, .min = 2, .max = 4};
    double sum = 0, sum2 = 0;
    for (int i = 0; i < N; i++) {
        sweep_draw(&un, r, buf, sizeof buf);
        double x = atof(buf);
        assert_true(x >= 2 && x <= 4);
        sum += x, sum2 += x * x;
    }
    double mean = sum / N, var = sum2 / N - mean * mean;
    assert_true(fabs(mean - 3) < 0.05);
    assert_true(fabs(var - 4.0 / 12) < 0.03); /* uniform on [2,4]: variance 1/3 */
    SweepParam iu = {.dist = DIST_INT_UNIFORM, .min = -2, .max = 2};
    int count[5] = {0};
    for (int i = 0; i < N; i++) {
        sweep_draw(&iu, r, buf, sizeof buf);
        char *end;
        long v = strtol(buf, &end, 10);
        assert_true(*end == 0 && v >= -2 && v <= 2);
        count[v + 2]++;
    }
    for (int k = 0; k < 5; k++) assert_true(abs(count[k] - N / 5) < 120); /* both ends reached */
    SweepParam qu = {.dist = DIST_Q_UNIFORM, .min = 16, .max = 128, .q = 16};
    int hit16 = 0, hit128 = 0;
    for (int i = 0; i < N; i++) {
        sweep_draw(&qu, r, buf, sizeof buf);
        double x = atof(buf);
        assert_true(x >= 16 && x <= 128 && fmod(x, 16) == 0);
        hit16 += x == 16, hit128 += x == 128;
    }
    assert_true(hit16 > 0 && hit128 > 0);
    gsl_rng_free(r);
}

/* ---- malformed files ------------------------------------------------------------ */

typedef struct {
    const char *yaml;
    const char *expect; /* the error must contain this */
} Bad;

static const Bad bad[] = {
    {"method: grid\nparameters:\n  lr: {values: [1e-3, 2e-3}\n", "t.yaml:3:"},
    {"method: grid\nparameters:\n  lr: {values: [1e-3, 2e-3]}\n   seed: 1\n", "t.yaml:4:"},
    {"method: grid\nparamters:\n  lr: {values: [1e-3]}\n",
     "t.yaml:2:1: unknown sweep key 'paramters' (did you mean 'parameters'?)"},
    {"method: grid\nparameters:\n  model.mixr: {values: [softmax]}\n",
     "t.yaml:3:3: unknown key 'model.mixr' (did you mean 'model.mixer'?)"},
    {"method: grid\nbase: {lrr: 1}\nparameters:\n  lr: {values: [1e-3]}\n",
     "t.yaml:2:8: unknown key 'lrr' (did you mean 'lr'?)"},
    {"method: grid\nparameters:\n  setting: {values: [{task.vocab_siz: 3}]}\n",
     "t.yaml:3:23: unknown key 'task.vocab_siz' (did you mean 'task.vocab_size'?)"},
    {"method: grid\nparameters:\n  lr: {values: [1e-3, fast]}\n",
     "t.yaml:3:23: key 'lr': 'fast' is not a number"},
    {"method: grid\nparameters:\n  model.layers: {values: [2.5]}\n",
     "t.yaml:3:27: key 'model.layers': '2.5' is not an integer"},
    {"method: grid\nparameters:\n  lr: {values: [-1]}\n", "t.yaml:3:17: key 'lr': -1 is out of range"},
    {"method: grid\nparameters:\n  optim: {values: [adam]}\n", "is not one of adamw|muon (did you mean 'adamw'?)"},
    {"method: grid\nparameters:\n  lr: {values: []}\n",
     "t.yaml:3:16: parameter 'lr' has an empty list of values: the grid is empty"},
    {"method: grid\nparameters: {}\n", "t.yaml:2:13: parameters is empty: the grid is empty"},
    {"method: grid\nparameters:\n  lr: {values: 1e-3}\n", "t.yaml:3:16: parameter 'lr': values: expected a list"},
    {"method: grid\nparameters:\n  lr: {valuse: [1e-3]}\n",
     "t.yaml:3:8: parameter 'lr': unknown field 'valuse' (did you mean 'value'?)"},
    {"method: grid\nparameters:\n  lr: [1e-3, 1e-2]\n", "t.yaml:3:7: parameter 'lr': expected a mapping"},
    {"method: bayes\nparameters:\n  lr: {values: [1e-3]}\n",
     "t.yaml:1:9: method: 'bayes' is not supported; expected grid or random"},
    {"method: random\nparameters:\n  lr: {values: [1e-3]}\n", "t.yaml:1:9: method random needs run_cap"},
    {"method: grid\nparameters:\n  lr: {distribution: uniform, min: 1e-4, max: 1e-2}\n",
     "parameter 'lr' (line 3) has a distribution, which grid search cannot enumerate"},
    {"method: random\nrun_cap: 3\nparameters:\n  lr: {distribution: log_uniform_values, min: 1e-2, max: 1e-4}\n",
     "t.yaml:4:47: parameter 'lr': min 0.01 is above max 0.0001"},
    {"method: random\nrun_cap: 3\nparameters:\n  lr: {distribution: gaussian, min: 0, max: 1}\n",
     "t.yaml:4:22: parameter 'lr': distribution 'gaussian' is not supported"},
    {"method: random\nrun_cap: 3\nparameters:\n  optim: {min: 0, max: 1}\n",
     "t.yaml:4:3: parameter 'optim': a distribution needs a numeric key"},
    {"method: grid\nrun_cap: -3\nparameters:\n  lr: {values: [1e-3]}\n",
     "t.yaml:2:10: run_cap: '-3' is not an integer in [1, 200000]"},
    {"method: grid\nmetric: {name: test_acc, goal: up}\nparameters:\n  lr: {values: [1e-3]}\n",
     "t.yaml:2:32: metric.goal: 'up' is not maximize or minimize"},
    {"method: grid\nparameters:\n  lr: {values: [1e-3]}\n  lr: {values: [2e-3]}\n",
     "t.yaml:4:3: parameter 'lr' is given twice"},
    {"method: grid\nparameters:\n  model.mixer: {values: [softmax, softmaxx]}\n",
     "t.yaml:3:35: "}, /* an unknown mixer, found by resolving the config */
    {"method: grid\nparameters:\n  lr: {values: [1e-3]}\nearly_terminate: {type: hyperband}\n",
     "t.yaml:4:1: sweep key 'early_terminate' (W&B) is not supported by plab"},
    {"", "t.yaml: the file is empty"},
    {"- a\n- b\n", "t.yaml:1:1: expected a mapping of sweep keys at the top, found a list"},
    {"parameters:\n  lr: {values: [1e-3]}\n", "t.yaml:1:1: missing 'method' (grid or random)"},
};

static void test_malformed_files(void **st) {
    (void)st;
    int failures = 0;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        Sweep *s = (Sweep *)1;
        Err e = {{0}};
        int rc = sweep_load_text(bad[i].yaml, "t.yaml", &s, &e);
        int ok = rc == -1 && s == NULL && strstr(e.msg, bad[i].expect) != NULL;
        if (!ok) {
            failures++;
            print_error("case %zu: rc %d, got \"%s\"\n   expected to contain \"%s\"\n", i, rc, e.msg,
                        bad[i].expect);
        }
    }
    assert_int_equal(failures, 0);
}

/* a config that only fails in combination is reported with the run's choices */
static void test_combination_error_names_run(void **st) {
    (void)st;
    Sweep *s = load("method: grid\nparameters:\n  model.d_model: {values: [16, 20]}\n"
                    "  model.heads: {values: [2, 8]}\n");
    Plan p;
    Err e = {{0}};
    assert_int_equal(sweep_plan(s, &p, &e), -1);
    assert_non_null(strstr(e.msg, "t.yaml: run 4 (model.d_model=20 model.heads=8): "));
    assert_non_null(strstr(e.msg, "does not divide"));
    sweep_free(s);
}

/* the shipped sweeps load, resolve, and have the documented sizes; the MAD
 * protocol has mad.md §3's settings per task (x 3 lr x 2 wd) */
static void test_shipped_sweeps(void **st) {
    (void)st;
    struct { const char *file; int runs; } files[] = {
        {"sweeps/quickstart.yaml", 8}, {"sweeps/mad_protocol.yaml", 396}, {"sweeps/family_icr.yaml", 30},
        {"sweeps/family_members_mad.yaml", 192}};
    for (int f = 0; f < (int)(sizeof files / sizeof files[0]); f++) {
        Sweep *s;
        Err e = {{0}};
        if (sweep_load_file(files[f].file, &s, &e) != 0) {
            if (strstr(e.msg, "cannot read")) {
                printf("  run from the repository root to check %s\n", files[f].file);
                skip();
            }
            fail_msg("%s", e.msg);
        }
        Plan p;
        if (sweep_plan(s, &p, &e) != 0) fail_msg("%s", e.msg);
        printf("  %s: %d runs\n", files[f].file, p.n);
        assert_int_equal(p.n, files[f].runs);
        assert_int_equal(p.duplicates, 0);
        if (f == 1) {
            const char *tasks[6] = {"in_context_recall", "fuzzy_in_context_recall", "noisy_in_context_recall",
                                    "selective_copying", "compression", "memorization"};
            int want[6] = {11, 11, 14, 13, 11, 6};
            for (int t = 0; t < 6; t++) {
                int n = 0;
                for (int i = 0; i < p.n; i++) n += !strcmp(cfg_str(p.runs[i].cfg, "task"), tasks[t]);
                assert_int_equal(n, want[t] * 6);
            }
            for (int i = 0; i < p.n; i++) assert_string_equal(cfg_str(p.runs[i].cfg, "protocol"), "mad");
        }
        plan_free(&p);
        sweep_free(s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_counts_and_contents),
        cmocka_unit_test(test_grid_duplicates_and_cap),
        cmocka_unit_test(test_tied_parameters),
        cmocka_unit_test(test_random_reproducible),
        cmocka_unit_test(test_random_distributions),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_combination_error_names_run),
        cmocka_unit_test(test_shipped_sweeps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
