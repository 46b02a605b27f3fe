/* The training loop (issue "training spine"): epochs over a fixed generated
 * train set, shuffled per epoch from the run seed; evaluation on the test set
 * every epoch (loss, perplexity, MAD accuracy, token accuracy); early stop;
 * divergence detection. The same seed gives the same run bit for bit on the
 * CPU: every random draw comes from generators seeded from `seed`. */
#include "train.h"

#include <gsl/gsl_randist.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <gsl/gsl_rng.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../models/mixer.h"
#include "../models/model.h"
#include "../optim/optim.h"
#include "../tasks/task.h"
#include "metrics.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void emit(const RunSink *s, long step, int epoch, const char *key, double v) {
    if (s && s->metric) s->metric(s->ctx, step, epoch, key, v);
}
static void emit_final(const RunSink *s, const char *key, const char *kind, double v) {
    if (s && s->final) s->final(s->ctx, key, kind, v);
}

/* seeds of the independent random streams of a run */
static unsigned long sub_seed(unsigned long seed, unsigned long stream) {
    unsigned long long x = (unsigned long long)seed * 0x9E3779B97F4A7C15ULL + stream * 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 31;
    return (unsigned long)(x & 0xffffffffUL);
}

static void gather(const Dataset *d, const size_t *idx, int B, int *tok, int *tgt) {
    for (int b = 0; b < B; b++) {
        memcpy(tok + (size_t)b * d->len, d->inputs + idx[b] * d->len, sizeof(int) * (size_t)d->len);
        memcpy(tgt + (size_t)b * d->len, d->targets + idx[b] * d->len, sizeof(int) * (size_t)d->len);
    }
}

/* One pass over the test set in order (MAD's test loader is not shuffled). */
/* On a backend with CUDA graphs, full batches replay one captured forward. */
static void evaluate(Model *m, const Dataset *test, int B, EvalAcc *acc, void **graph) {
    const Ops *ops = model_ops(m);
    memset(acc, 0, sizeof *acc);
    int T = test->len, V = model_dims(m)->V;
    int *pred = xmalloc(sizeof(int) * (size_t)B * T);
    real *nll = xmalloc(sizeof(real) * (size_t)B * T);
    size_t *idx = xmalloc(sizeof(size_t) * (size_t)B);
    int *tok = xmalloc(sizeof(int) * (size_t)B * T), *tgt = xmalloc(sizeof(int) * (size_t)B * T);
    for (int start = 0; start < test->n; start += B) {
        int nb = test->n - start < B ? test->n - start : B;
        for (int b = 0; b < nb; b++) idx[b] = (size_t)(start + b);
        gather(test, idx, nb, tok, tgt);
        model_set_batch(m, tok, tgt, nb);
        if (graph && nb == B) {
            if (!*graph) {
                ops->graph_begin();
                model_forward(m, B, 0);
                *graph = ops->graph_end();
            }
            ops->graph_launch(*graph);
        } else model_forward(m, nb, 0);
        model_predict(m, nb, pred, nll);
        eval_add_batch(acc, pred, nll, tgt, (long)nb * T, nb, V);
    }
    free(pred), free(nll), free(idx), free(tok), free(tgt);
}

/* The data is generated on a second thread while the backend starts: a CUDA context
 * and cuBLAS take about 0.3 s to come up, MAD's in-context recall data about 30 ms. */
typedef struct {
    const Task *task;
    TaskParams tp;
    unsigned long seed;
    Dataset train, test;
    pthread_t thread;
} DataJob;

static void *data_job_main(void *p) {
    DataJob *j = p;
    task_generate(j->task, &j->tp, j->seed, &j->train, &j->test);
    return NULL;
}

RunResult train_run(const Config *cfg_in, const RunSink *sink) {
    RunResult res;
    memset(&res, 0, sizeof res);
    double t0 = now_s();
    Config *cfg = cfg_copy(cfg_in);
    Err err = {{0}};
    if (config_resolve(cfg, &err) != 0) {
        res.status = RUN_FAILED;
        snprintf(res.reason, sizeof res.reason, "%s", err.msg);
        cfg_free(cfg);
        return res;
    }
#ifdef _OPENMP
    omp_set_num_threads((int)cfg_int(cfg, "threads"));
#endif
    unsigned long seed = (unsigned long)cfg_int(cfg, "seed");
    DataJob data = {.seed = task_data_seed(seed)};
    task_resolve(cfg, &data.task, &data.tp, &err);
    const Task *task = data.task;
    TaskParams tp = data.tp;
    int rc = pthread_create(&data.thread, NULL, data_job_main, &data);
    CHECK(rc == 0, "pthread_create: %s", strerror(rc));
    char why[256] = "";
    const Ops *ops = ops_for_device(cfg_str(cfg, "device"), cfg_str(cfg, "precision"), why, sizeof why);
    int bs = (int)cfg_int(cfg, "batch_size");
    Model *m = ops ? model_create(cfg, ops, bs < tp.num_train ? bs : tp.num_train,
                                  task->length(&tp), &err)
                   : NULL;
    rc = pthread_join(data.thread, NULL);
    CHECK(rc == 0, "pthread_join: %s", strerror(rc));
    Dataset train = data.train, test = data.test;
    if (!ops || !m) {
        res.status = RUN_FAILED;
        snprintf(res.reason, sizeof res.reason, "%s", ops ? err.msg : why);
        dataset_free(&train), dataset_free(&test);
        cfg_free(cfg);
        return res;
    }
    model_init_params(m, sub_seed(seed, 2));
    int B = model_dims(m)->B, T = train.len;
    long spe = (train.n + B - 1) / B, epochs = cfg_int(cfg, "epochs"), total = spe * epochs;
    Optimizer *opt = optim_create(cfg, m, total, spe);
    gsl_rng *shuf = gsl_rng_alloc(gsl_rng_mt19937);
    CHECK(shuf, "gsl_rng_alloc failed");
    gsl_rng_set(shuf, sub_seed(seed, 3));
    size_t *perm = xmalloc(sizeof(size_t) * (size_t)train.n);
    int *tok = xmalloc(sizeof(int) * (size_t)B * T), *tgt = xmalloc(sizeof(int) * (size_t)B * T);
    long log_every = cfg_int(cfg, "log_every");
    /* CUDA graphs on backends that have them; PLAB_CUDA_GRAPH=0 runs every op eagerly */
    const char *graph_env = getenv("PLAB_CUDA_GRAPH");
    int use_graph = ops->graph_begin && !(graph_env && !strcmp(graph_env, "0"));
    void *step_graph = NULL, *eval_graph = NULL;
    long inject_nan = cfg_int(cfg, "debug.inject_nan_step");
    double stop_acc = cfg_float(cfg, "early_stop_acc");
    double best_ppl = INFINITY, loss_acc = 0, last_loss = NAN;
    long loss_n = 0, step = 0, tokens = 0;
    double t_log = now_s();
    res.setup_seconds = t_log - t0;
    res.best_test_acc = 0;
    res.status = RUN_FINISHED;

    for (int epoch = 0; epoch < epochs && res.status == RUN_FINISHED; epoch++) {
        for (size_t i = 0; i < (size_t)train.n; i++) perm[i] = i;
        gsl_ran_shuffle(shuf, perm, (size_t)train.n, sizeof(size_t));
        for (int start = 0; start < train.n; start += B, step++) {
            int nb = train.n - start < B ? train.n - start : B;
            gather(&train, perm + start, nb, tok, tgt);
            model_set_batch(m, tok, tgt, nb);
            if (use_graph && nb == B && step > 0) {
                /* CUDA: the whole step (zero, forward, backward, update) is captured
                 * once, after one eager step has sized every lazy buffer, and
                 * replayed; only the batch and the schedule's values are uploaded. */
                if (!step_graph) {
                    ops->graph_begin();
                    model_zero_grad(m);
                    model_forward(m, B, 1);
                    model_backward(m, B);
                    optim_apply(opt);
                    step_graph = ops->graph_end();
                }
                optim_upload(opt, step);
                ops->graph_launch(step_graph);
            } else {
                model_zero_grad(m);
                model_forward(m, nb, 1);
                model_backward(m, nb);
                optim_step(opt, step);
            }
            if (step == inject_nan) { /* fault injection: proves divergence handling */
                real nan = (real)NAN;
                ops->to_device(model_params(m), &nan, sizeof nan);
            }
            tokens += (long)nb * T;
            loss_n++;
            int last_of_epoch = start + B >= train.n;
            if ((step + 1) % log_every == 0 || last_of_epoch) {
                loss_acc = model_take_loss(m);
                last_loss = loss_acc / (double)loss_n;
                loss_n = 0;
                if (!isfinite(last_loss)) {
                    res.status = RUN_DIVERGED;
                    snprintf(res.reason, sizeof res.reason,
                             "train loss is %g at step %ld (epoch %d)", last_loss, step, epoch);
                    break;
                }
                double t = now_s();
                emit(sink, step, epoch, "train_loss", last_loss);
                emit(sink, step, epoch, "lr", optim_current_lr(opt));
                if (sink && sink->progress)
                    sink->progress(sink->ctx, step + 1, total, epoch, last_loss, res.best_test_acc,
                                   (double)tokens / (t - t_log));
                tokens = 0;
                t_log = t;
            }
        }
        if (res.status != RUN_FINISHED) break;
        EvalAcc ev;
        double te = now_s();
        evaluate(m, &test, B, &ev, use_graph ? &eval_graph : NULL);
        res.eval_seconds += now_s() - te;
        double acc = eval_mad_acc(&ev), tacc = eval_token_acc(&ev), ppl = eval_ppl(&ev);
        double tl = eval_loss(&ev);
        emit(sink, step, epoch, "test_loss", tl);
        emit(sink, step, epoch, "test_ppl", ppl);
        emit(sink, step, epoch, "test_acc", acc);
        emit(sink, step, epoch, "test_token_acc", tacc);
        char dnames[64][64];
        double dvals[64];
        int nd = model_diagnostics(m, dnames, dvals, 64); /* of the last test batch */
        for (int i = 0; i < nd; i++) emit(sink, step, epoch, dnames[i], dvals[i]);
        res.epochs = epoch + 1;
        if (!isfinite(tl) || !isfinite(ppl)) {
            res.status = RUN_DIVERGED;
            snprintf(res.reason, sizeof res.reason, "test loss %g, perplexity %g after epoch %d", tl,
                     ppl, epoch);
            break;
        }
        if (acc > res.best_test_acc) res.best_test_acc = acc;
        if (ppl < best_ppl) {
            best_ppl = ppl;
            res.test_acc = acc;
            res.test_token_acc = tacc;
            res.test_ppl = ppl;
        }
        if (sink && sink->progress)
            sink->progress(sink->ctx, step, total, epoch, last_loss, acc, 0);
        if (acc >= stop_acc) break;
    }
    res.step = step;
    res.last_train_loss = last_loss;
    res.seconds = now_s() - t0;
    if (res.status == RUN_FINISHED) {
        emit_final(sink, "test_acc", "at_best_ppl", res.test_acc);
        emit_final(sink, "test_acc", "best", res.best_test_acc);
        emit_final(sink, "test_token_acc", "at_best_ppl", res.test_token_acc);
        emit_final(sink, "test_ppl", "best", res.test_ppl);
        emit_final(sink, "train_loss", "last", res.last_train_loss);
        emit_final(sink, "epochs", "last", res.epochs);
        emit_final(sink, "seconds", "last", res.seconds);
    }
    if (step_graph) ops->graph_free(step_graph);
    if (eval_graph) ops->graph_free(eval_graph);
    free(perm), free(tok), free(tgt);
    gsl_rng_free(shuf);
    optim_free(opt);
    model_free(m);
    dataset_free(&train), dataset_free(&test);
    cfg_free(cfg);
    return res;
}
