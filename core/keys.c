/* The run keys of the spine. Modules with their own keys (tasks, mixers)
 * declare a KeyTable in their own file and are listed in key_tables below. */
#include "config.h"

static const KeyDef run_keys[] = {
    {"task", KEY_STR, "in_context_recall", 1, 0, NULL, "task to train on (`plab tasks` lists them)", 0},
    {"protocol", KEY_ENUM, "none", 1, 0, "none|mad",
     "preset: mad = MAD-Lab model, AdamW, cosine/epoch over 200 epochs, batch 128, stop at 0.999", 0},
    {"seed", KEY_INT, "1", 0, 4294967295.0, NULL, "seed of data generation, init and shuffling", 0},
    {"device", KEY_STR, "cpu", 1, 0, NULL, "cpu, cuda or cuda:N", 0},
    {"threads", KEY_INT, "1", 1, 1024, NULL,
     "OpenMP threads of the CPU backend; sweeps use cores through --workers instead "
     "(with more than 1, set OMP_WAIT_POLICY=passive on a shared machine)", KEY_NOHASH},
    {"precision", KEY_ENUM, "fp32", 1, 0, "fp32|tf32|bf16",
     "matmul operands on cuda (bf16: bf16 operands, fp32 accumulation and master weights)", 0},
};

static const KeyDef model_keys[] = {
    {"model.mixer", KEY_STR, "softmax", 1, 0, NULL, "sequence mixer (`plab help mixers` lists them)", 0},
    {"model.d_model", KEY_INT, "128", 1, 65536, NULL, "model width", 0},
    {"model.layers", KEY_INT, "2", 1, 256, NULL, "number of blocks (each: mixer then MLP)", 0},
    {"model.heads", KEY_INT, "16", 1, 4096, NULL, "attention heads (d_model must divide)", 0},
    {"model.mlp", KEY_ENUM, "swiglu", 1, 0, "swiglu|none", "channel mixer after each sequence mixer", 0},
    {"model.mlp_width", KEY_INT, "0", 0, 1 << 20, NULL,
     "SwiGLU inner width; 0 = MAD rule 16*ceil(int(8d/3)/16)", 0},
    {"model.norm_eps", KEY_FLOAT, "1e-5", 0, 1, NULL, "RMSNorm epsilon", 0},
    {"model.init", KEY_ENUM, "pytorch", 1, 0, "pytorch|normal",
     "linear weights: pytorch = U(+-1/sqrt(fan_in)) as MAD-Lab HEAD; normal = N(0, 0.02) as the MAD paper", 0},
};

static const KeyDef optim_keys[] = {
    {"optim", KEY_ENUM, "adamw", 1, 0, "adamw|muon",
     "optimizer; muon takes the 2-D hidden matrices, AdamW the rest", 0},
    {"lr", KEY_FLOAT, "1e-3", 0, 10, NULL, "peak learning rate", 0},
    {"weight_decay", KEY_FLOAT, "0", 0, 10, NULL, "decoupled weight decay", 0},
    {"adam.beta1", KEY_FLOAT, "0.9", 0, 1, NULL, "AdamW beta1", 0},
    {"adam.beta2", KEY_FLOAT, "0.999", 0, 1, NULL, "AdamW beta2 (PyTorch default)", 0},
    {"adam.eps", KEY_FLOAT, "1e-8", 0, 1, NULL, "AdamW epsilon", 0},
    {"muon.variant", KEY_ENUM, "moonlight", 1, 0, "moonlight|keller|torch",
     "Muon update (baselines.md 10.2): moonlight = plain momentum, lr*0.2*sqrt(max(m,n)); "
     "keller = EMA momentum, lr*sqrt(max(1,m/n)); torch = plain momentum, lr*sqrt(max(1,m/n))", 0},
    {"muon.momentum", KEY_FLOAT, "0.95", 0, 1, NULL, "Muon momentum", 0},
    {"muon.nesterov", KEY_BOOL, "true", 1, 0, NULL, "Nesterov momentum in Muon", 0},
    {"muon.ns_steps", KEY_INT, "5", 1, 20, NULL, "Newton-Schulz iterations", 0},
    {"muon.adamw_lr", KEY_FLOAT, "0", 0, 10, NULL, "lr of the AdamW group under Muon; 0 = lr", 0},
};

static const KeyDef schedule_keys[] = {
    {"schedule", KEY_ENUM, "cosine", 1, 0, "constant|cosine|wsd", "learning-rate schedule", 0},
    {"schedule.unit", KEY_ENUM, "epoch", 1, 0, "epoch|step",
     "step the schedule once per epoch (MAD-Lab, Lightning default) or per step", 0},
    {"min_lr", KEY_FLOAT, "1e-6", 0, 10, NULL, "floor of cosine and WSD", 0},
    {"warmup", KEY_FLOAT, "0", 0, 1, NULL, "warmup as a fraction of training (linear)", 0},
    {"wsd.decay_frac", KEY_FLOAT, "0.2", 0, 1, NULL, "WSD: fraction of training spent decaying", 0},
    {"wsd.decay_shape", KEY_ENUM, "linear", 1, 0, "linear|cosine|sqrt", "WSD: decay shape (baselines.md 11)", 0},
    {"wd_anneal_gamma", KEY_FLOAT, "0", 0, 100, NULL,
     "WSD weight-decay annealing wd*(1-t)^gamma during decay; 0 = off (paper: gamma 2)", 0},
};

static const KeyDef train_keys[] = {
    {"epochs", KEY_INT, "200", 1, 1000000, NULL, "epochs over the generated train set", 0},
    {"batch_size", KEY_INT, "128", 1, 1 << 20, NULL, "sequences per step (train and test)", 0},
    {"early_stop_acc", KEY_FLOAT, "0.999", 0, 2, NULL,
     "stop once test accuracy (MAD's) reaches this; above 1 = never", 0},
    {"log_every", KEY_INT, "10", 1, 1 << 30, NULL, "steps between progress lines and metric rows", KEY_NOHASH},
    {"progress", KEY_BOOL, "true", 1, 0, NULL, "live progress line on stderr", KEY_NOHASH},
    {"debug.inject_nan_step", KEY_INT, "-1", -1, 1e15, NULL,
     "fault injection for tests: poison a weight with NaN after this step (-1 = never)", 0},
};

extern const KeyTable task_key_table;
extern const KeyTable attention_key_table;
extern const KeyTable delta_key_table;
extern const KeyTable mamba_key_table; /* models/mamba.c */
extern const KeyTable autoencoder_key_table; /* models/autoencoder.c */

static const KeyTable run_table = KEYTABLE("run", run_keys);
static const KeyTable model_table = KEYTABLE("model", model_keys);
static const KeyTable optim_table = KEYTABLE("optimizer", optim_keys);
static const KeyTable schedule_table = KEYTABLE("schedule", schedule_keys);
static const KeyTable train_table = KEYTABLE("training", train_keys);

const KeyTable *const key_tables[] = {
    &run_table,       &task_key_table, &model_table,    &attention_key_table,
    &delta_key_table, &optim_table,     &schedule_table, &train_table,
    &mamba_key_table,
    &autoencoder_key_table,
};
const int key_table_count = (int)(sizeof key_tables / sizeof key_tables[0]);
