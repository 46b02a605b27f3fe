/* Resolution of a run config: protocol preset, mixer preset, task defaults,
 * then cross-key checks. Explicit user keys always win over presets. */
#include <stdio.h>
#include <string.h>

#include "../models/mixer.h"
#include "../models/model.h"
#include "../tasks/task.h"
#include "train.h"

/* MAD-Lab's protocol (mad.md §4): d 128, [mixer, swiglu, mixer, swiglu],
 * 16 heads with rotary dim 8 (= head dim), AdamW with PyTorch defaults,
 * cosine per epoch over 200 epochs to 1e-6, batch 128, stop at 0.999. */
static const char *const mad_protocol =
    "model.d_model=128 model.layers=2 model.heads=16 model.mlp=swiglu model.mlp_width=0 "
    "mixer.rotary_dim=-1 mixer.qkv_bias=true optim=adamw adam.beta1=0.9 adam.beta2=0.999 "
    "adam.eps=1e-8 schedule=cosine schedule.unit=epoch min_lr=1e-6 warmup=0 epochs=200 "
    "batch_size=128 early_stop_acc=0.999";

static int check_device(const char *dev, Err *err) {
    if (!strcmp(dev, "cpu") || !strcmp(dev, "cuda")) return 0;
    int n;
    char tail;
    if (sscanf(dev, "cuda:%d%c", &n, &tail) == 1 && n >= 0) return 0;
    err_set(err, "key 'device': '%s' is not cpu, cuda or cuda:N", dev);
    return -1;
}

int config_resolve(Config *cfg, Err *err) {
    if (!strcmp(cfg_str(cfg, "protocol"), "mad") && cfg_preset_list(cfg, mad_protocol, err) != 0)
        return -1;
    const MixerKind *mk;
    if (mixer_resolve(cfg, &mk, err) != 0) return -1;
    const Task *t;
    TaskParams tp;
    if (task_resolve(cfg, &t, &tp, err) != 0) return -1;
    if (check_device(cfg_str(cfg, "device"), err) != 0) return -1;
    /* a dry build of one mixer layer checks the mixer's own rules (heads dividing
     * the width, head sizes, axis combinations) before anything runs */
    size_t params, state;
    if (mixer_layer_stats(cfg, &params, &state, err) != 0) return -1;
    return 0;
}

char *run_size_info(const Config *cfg_in) {
    Err e;
    size_t lp = 0, ls = 0, total = 0;
    Config *cfg = cfg_copy(cfg_in);
    if (config_resolve(cfg, &e) == 0) {
        Model *m = model_create(cfg, ops_cpu(), 1, 1, &e); /* a dry build: sizes only */
        if (m) total = model_count_params(m), model_free(m);
        if (mixer_layer_stats(cfg, &lp, &ls, &e) != 0) lp = ls = 0;
    }
    cfg_free(cfg);
    char *out = xmalloc(160);
    snprintf(out, 160, "info.num_params=%zu\ninfo.mixer_params_per_layer=%zu\ninfo.mixer_state_per_layer=%zu\n",
             total, lp, ls);
    return out;
}
