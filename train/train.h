/* One training run: the function that `plab train` calls and that sweeps call
 * once per resolved config (in a worker process). */
#ifndef PLAB_TRAIN_H
#define PLAB_TRAIN_H

#include "../core/config.h"

typedef enum { RUN_FINISHED = 0, RUN_DIVERGED = 1, RUN_FAILED = 2 } RunStatus;

/* What a run reports while it goes. Any callback may be NULL. */
typedef struct RunSink {
    void *ctx;
    /* one row of the metric history: key e.g. "train_loss", "test_acc" */
    void (*metric)(void *ctx, long step, int epoch, const char *key, double value);
    /* the live line: called every log interval and at each evaluation */
    void (*progress)(void *ctx, long step, long total_steps, int epoch, double loss, double acc,
                     double tokens_per_s);
    /* a final value: kind is "last", "best" or "at_best_ppl" */
    void (*final)(void *ctx, const char *key, const char *kind, double value);
} RunSink;

typedef struct {
    RunStatus status;
    char reason[1100];  /* why it diverged or failed */
    long step;         /* step reached (where it diverged) */
    int epochs;        /* epochs completed */
    double test_acc;       /* MAD accuracy of the best-perplexity epoch (MAD's report) */
    double best_test_acc;  /* best MAD accuracy over epochs */
    double test_token_acc; /* plain token accuracy at the best-perplexity epoch */
    double test_ppl;       /* best test perplexity */
    double last_train_loss;
    double seconds;      /* the whole run */
    double setup_seconds; /* of which data generation, model and optimizer set-up */
    double eval_seconds;  /* of which evaluation */
} RunResult;

/* Resolves presets (protocol, task defaults, mixer preset) and validates every
 * key; 0 on success, else fills err and returns -1 without side effects on
 * anything but cfg. */
int config_resolve(Config *cfg, Err *err);

/* The sizes MAD compares at, as "key=value" lines (caller frees):
 * info.num_params (whole model), info.mixer_params_per_layer and
 * info.mixer_state_per_layer (reals per sequence; 0 = grows with length).
 * All 0 when the config does not resolve. */
char *run_size_info(const Config *cfg);

/* Trains one resolved config. Never exits on a diverging run: reports it. */
RunResult train_run(const Config *cfg, const RunSink *sink);

#endif
