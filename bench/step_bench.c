/* Training-step benchmark of the plab trainer (issue "Train on the GPU").
 *
 *   step_bench [key=value ...]            times one step per mixer in MIXERS
 *   step_bench --dump FILE [key=value ...] writes the run's generated train/test
 *                                          data for the PyTorch reference
 * Defaults: MAD's shape (protocol=mad: vocab 16, batch 128, seq 128, d 128,
 * [mixer, swiglu, mixer, swiglu], 16 heads, AdamW), device=cuda precision=bf16.
 * A step is zero-grad + forward + backward + AdamW on one random batch. Timed
 * two ways: every op launched eagerly, and the step captured in a CUDA graph and
 * replayed (what `plab train` does); each is the median over REPS repetitions of
 * a run of steps (50, fewer for a slow mixer: about 0.1 s a run, at least 3 steps),
 * host clock around a device sync. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gsl/gsl_rng.h>

#include "../core/config.h"
#include "../models/model.h"
#include "../optim/optim.h"
#include "../tasks/task.h"
#include "../train/train.h"

enum { MAX_STEPS = 50, MIN_STEPS = 3, REPS = 11 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static Config *make_config(int argc, char **argv, const char *mixer) {
    Config *cfg = cfg_new();
    Err err = {{0}};
    const char *base[] = {"protocol=mad", "task=in_context_recall", "device=cuda", "precision=bf16"};
    for (int i = 0; i < 4; i++) CHECK(cfg_parse_arg(cfg, base[i], &err) == 0, "%s", err.msg);
    for (int i = 0; i < argc; i++)
        if (cfg_parse_arg(cfg, argv[i], &err) != 0) DIE("step_bench: %s", err.msg);
    if (mixer) {
        char kv[128];
        snprintf(kv, sizeof kv, "model.mixer=%s", mixer);
        CHECK(cfg_parse_arg(cfg, kv, &err) == 0, "%s", err.msg);
    }
    if (config_resolve(cfg, &err) != 0) DIE("step_bench: %s", err.msg);
    return cfg;
}

/* ms per step: median over `reps` runs of `steps` steps */
static double time_steps(const Ops *ops, Model *m, Optimizer *opt, int B, void *graph, int steps,
                         int reps) {
    double t[REPS];
    long step = 1;
    for (int r = 0; r < reps; r++) {
        ops->sync();
        double t0 = now_s();
        for (int s = 0; s < steps; s++, step++) {
            optim_upload(opt, step);
            if (graph) ops->graph_launch(graph);
            else {
                model_zero_grad(m);
                model_forward(m, B, 1);
                model_backward(m, B);
                optim_apply(opt);
            }
        }
        ops->sync();
        t[r] = (now_s() - t0) * 1e3 / steps;
    }
    qsort(t, (size_t)reps, sizeof *t, cmpd);
    return t[reps / 2];
}

static int bench_mixer(int argc, char **argv, const char *mixer) {
    Config *cfg = make_config(argc, argv, mixer);
    char why[256] = "";
    const Ops *ops = ops_for_device(cfg_str(cfg, "device"), cfg_str(cfg, "precision"), why, sizeof why);
    if (!ops) DIE("step_bench: %s", why);
    int B = (int)cfg_int(cfg, "batch_size"), T = (int)cfg_int(cfg, "task.seq_len");
    int V = (int)cfg_int(cfg, "task.vocab_size");
    Err err = {{0}};
    Model *m = model_create(cfg, ops, B, T, &err);
    if (!m) {
        printf("%-12s  not available: %s\n", mixer, err.msg);
        cfg_free(cfg);
        return 1;
    }
    model_init_params(m, 1);
    Optimizer *opt = optim_create(cfg, m, 100000, 100);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 7);
    int *tok = xmalloc(sizeof(int) * (size_t)B * T), *tgt = xmalloc(sizeof(int) * (size_t)B * T);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int)gsl_rng_uniform_int(r, (unsigned long)V);
        tgt[i] = (int)gsl_rng_uniform_int(r, (unsigned long)V);
    }
    model_set_batch(m, tok, tgt, B);
    /* one eager step sizes the lazy buffers, then warm up */
    optim_step(opt, 0);
    double first = time_steps(ops, m, opt, B, NULL, 1, 3); /* sizes the runs */
    int steps = (int)fmin(MAX_STEPS, fmax(MIN_STEPS, 100.0 / first));
    double eager = time_steps(ops, m, opt, B, NULL, steps, REPS);
    void *graph = NULL;
    if (ops->graph_begin) {
        ops->graph_begin();
        model_zero_grad(m);
        model_forward(m, B, 1);
        model_backward(m, B);
        optim_apply(opt);
        graph = ops->graph_end();
        time_steps(ops, m, opt, B, graph, steps, 3); /* warm-up */
    }
    double graphed = graph ? time_steps(ops, m, opt, B, graph, steps, REPS) : NAN;
    double loss = model_take_loss(m);
    printf("%-12s  params %7zu  eager %8.3f ms/step  graph %8.3f ms/step  (B=%d T=%d d=%ld %s, "
           "loss sum %.3g, median of %d x %d steps)\n",
           mixer, model_count_params(m), eager, graphed, B, T, cfg_int(cfg, "model.d_model"),
           cfg_str(cfg, "precision"), loss, REPS, steps);
    printf("RESULT plab %s %s %.4f %.4f\n", mixer, cfg_str(cfg, "precision"), eager, graphed);
    fflush(stdout);
    if (graph) ops->graph_free(graph);
    free(tok), free(tgt);
    gsl_rng_free(r);
    optim_free(opt);
    model_free(m);
    cfg_free(cfg);
    return 0;
}

/* int32 little-endian: n_train len n_test len, then train inputs, targets, test inputs, targets */
static int dump(const char *path, int argc, char **argv) {
    Config *cfg = make_config(argc, argv, NULL);
    const Task *task;
    TaskParams tp;
    Err err = {{0}};
    if (task_resolve(cfg, &task, &tp, &err) != 0) DIE("step_bench: %s", err.msg);
    Dataset tr, te;
    double t0 = now_s();
    /* the run's own data stream: the data `plab train` with this seed trains on */
    task_generate(task, &tp, task_data_seed((unsigned long)cfg_int(cfg, "seed")), &tr, &te);
    double gen = now_s() - t0;
    FILE *f = xfopen(path, "wb");
    int hdr[4] = {tr.n, tr.len, te.n, te.len};
    xfwrite(hdr, sizeof(int), 4, f);
    xfwrite(tr.inputs, sizeof(int), (size_t)tr.n * tr.len, f);
    xfwrite(tr.targets, sizeof(int), (size_t)tr.n * tr.len, f);
    xfwrite(te.inputs, sizeof(int), (size_t)te.n * te.len, f);
    xfwrite(te.targets, sizeof(int), (size_t)te.n * te.len, f);
    xfclose(f);
    printf("wrote %s: %d train and %d test sequences of %d tokens (generated in %.3f s)\n", path,
           tr.n, te.n, tr.len, gen);
    dataset_free(&tr), dataset_free(&te);
    cfg_free(cfg);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "--dump")) return dump(argv[2], argc - 3, argv + 3);
    const char *env = getenv("MIXERS");
    char mixers[512];
    snprintf(mixers, sizeof mixers, "%s", env ? env : "softmax,parallax");
    int bad = 0;
    for (char *save = NULL, *mx = strtok_r(mixers, ",", &save); mx; mx = strtok_r(NULL, ",", &save))
        bad |= bench_mixer(argc - 1, argv + 1, mx);
    return bad;
}
