/* MAD compression (C), mad.md §2.4: L-1 uniform content tokens and the
 * compression token V-1; the target is the input itself at every position
 * (the final compression token included). Trained with the autoencoder
 * backbone (mad.md §4.2), which the task presets along with MAD's N(0,0.02)
 * init of every linear layer. With noise, content positions become noise
 * tokens with probability frac_noise and stay targets: MAD returns
 * (inputs, inputs) and so discards its noise mask (mad.md §7.6). */
#include "task.h"

static int c_validate(const TaskParams *p, Err *err) {
    int content = p->vocab_size - 1 - p->noise_vocab_size;
    if (content < 1) {
        err_set(err, "key 'task.vocab_size': %d leaves no content token after %d noise tokens and "
                     "the compression token; the rule is vocab_size - noise_vocab_size - 1 >= 1",
                p->vocab_size, p->noise_vocab_size);
        return -1;
    }
    if (task_check_noise(p, err) != 0) return -1;
    return 0;
}

static int c_length(const TaskParams *p) { return p->seq_len; }

static void c_generate(const TaskParams *p, void *state, gsl_rng *rng, Split split, int *x, int *y,
                       SeqInfo *info) {
    (void)state, (void)split, (void)info;
    const int L = p->seq_len, content = p->vocab_size - 1 - p->noise_vocab_size;
    for (int j = 0; j < L - 1; j++) {
        if (p->frac_noise > 0 && gsl_rng_uniform(rng) < p->frac_noise)
            x[j] = content + task_uniform(rng, p->noise_vocab_size);
        else
            x[j] = task_uniform(rng, content);
        y[j] = x[j];
    }
    x[L - 1] = y[L - 1] = p->vocab_size - 1;
}

static const char *c_role(const TaskParams *p, int tok) {
    int content = p->vocab_size - 1 - p->noise_vocab_size;
    if (tok < content) return "content";
    return tok == p->vocab_size - 1 ? "compress" : "noise";
}

const Task task_compression = {
    .name = "compression",
    .help = "MAD compression (C): reproduce the whole sequence from the encoding at its last "
            "token (autoencoder backbone, mad.md §2.4, §4.2)",
    .defaults = "task.vocab_size=16 task.seq_len=32 task.num_train=12800 task.num_test=1280 "
                "task.noise_vocab_size=0 task.frac_noise=0 model.backbone=autoencoder "
                "model.init=normal",
    .keys = "task.vocab_size task.seq_len task.num_train task.num_test task.noise_vocab_size "
            "task.frac_noise",
    .validate = c_validate,
    .length = c_length,
    .generate = c_generate,
    .role = c_role,
};
