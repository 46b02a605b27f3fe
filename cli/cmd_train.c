/* plab train key=value ... [--config run.yaml]: one run, printed to the terminal. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/config.h"
#include "../train/train.h"
#include "cli.h"

void help_train(void) {
    printf("usage: plab train [--config run.yaml] [key=value ...]\n\n"
           "Trains one run and prints its progress and final test metrics. A run config is a\n"
           "YAML mapping of the same keys (flat `model.mixer: parallax` or nested `model: {mixer:\n"
           "parallax}`); key=value arguments override it.\n"
           "Example:\n  plab train task=in_context_recall task.vocab_size=16 task.seq_len=64 \\\n"
           "      model.mixer=parallax model.d_model=64 model.heads=4 optim=muon lr=1e-3 epochs=10\n\n"
           "Keys (type, default, meaning):\n");
    print_keys(NULL);
}

typedef struct {
    int progress;
    int tty;
} TrainView;

static void on_progress(void *ctx, long step, long total, int epoch, double loss, double acc,
                        double tps) {
    TrainView *v = ctx;
    if (!v->progress) return;
    if (tps > 0)
        fprintf(stderr, "%sstep %6ld/%ld  epoch %3d  loss %.4f  test acc %.4f  %.0f tok/s   %s",
                v->tty ? "\r" : "", step, total, epoch + 1, loss, acc, tps, v->tty ? "" : "\n");
    else
        fprintf(stderr, "%sepoch %3d  step %6ld  loss %.4f  test acc %.4f%s\n",
                v->tty ? "\r" : "", epoch + 1, step, loss, acc, v->tty ? "                         " : "");
    fflush(stderr);
}

int cmd_train(int argc, char **argv) {
    Config *cfg = cfg_new();
    Err err = {{0}};
    /* the run config file first, so that key=value arguments override it */
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc || run_config_load(argv[i + 1], cfg, &err) != 0) {
                fprintf(stderr, "plab train: %s\n", i + 1 < argc ? err.msg : "--config needs a file");
                cfg_free(cfg);
                return 2;
            }
        }
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        if (cfg_parse_arg(cfg, argv[i], &err) != 0) {
            fprintf(stderr, "plab train: %s\n", err.msg);
            cfg_free(cfg);
            return 2;
        }
    }
    Config *check = cfg_copy(cfg);
    if (config_resolve(check, &err) != 0) {
        fprintf(stderr, "plab train: %s\n", err.msg);
        cfg_free(check), cfg_free(cfg);
        return 2;
    }
    char hash[17];
    cfg_hash(check, hash);
    char *info = run_size_info(check);
    long np = 0;
    sscanf(info, "info.num_params=%ld", &np);
    printf("run %s: task=%s mixer=%s optim=%s device=%s, %ld parameters\n", hash,
           cfg_str(check, "task"), cfg_str(check, "model.mixer"), cfg_str(check, "optim"),
           cfg_str(check, "device"), np);
    free(info);
    cfg_free(check);
    TrainView view = {cfg_bool(cfg, "progress"), isatty(2)};
    RunSink sink = {.ctx = &view, .progress = on_progress};
    RunResult r = train_run(cfg, &sink);
    if (view.progress && view.tty) fputc('\n', stderr);
    cfg_free(cfg);
    if (r.status == RUN_FAILED) {
        fprintf(stderr, "plab train: run failed: %s\n", r.reason);
        return 1;
    }
    if (r.status == RUN_DIVERGED) {
        printf("diverged: %s\n", r.reason);
        return 1;
    }
    printf("finished: %d epochs, %.1f s (set-up %.2f s, evaluation %.2f s); test acc %.4f (MAD, "
           "at best ppl), best %.4f, token acc %.4f, ppl %.4f\n",
           r.epochs, r.seconds, r.setup_seconds, r.eval_seconds, r.test_acc, r.best_test_acc,
           r.test_token_acc, r.test_ppl);
    return 0;
}
