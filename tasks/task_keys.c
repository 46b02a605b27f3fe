/* task.* keys. Their defaults come from the chosen task (MAD's baseline for
 * that task, mad.md §3), so the table leaves them unset. */
#include "../core/config.h"

static const KeyDef task_keys[] = {
    {"task.vocab_size", KEY_INT, NULL, 2, 1 << 24, NULL, "vocabulary size (task default)", 0},
    {"task.seq_len", KEY_INT, NULL, 2, 1 << 20, NULL, "nominal sequence length (task default)", 0},
    {"task.num_train", KEY_INT, NULL, 1, 1 << 28, NULL, "training sequences (task default)", 0},
    {"task.num_test", KEY_INT, NULL, 1, 1 << 28, NULL, "test sequences (task default)", 0},
    {"task.noise_vocab_size", KEY_INT, NULL, 0, 1 << 24, NULL, "noise tokens (recall, compression)", 0},
    {"task.frac_noise", KEY_FLOAT, NULL, 0, 1, NULL, "probability of a noise pair (recall) or token (compression)", 0},
    {"task.multi_query", KEY_BOOL, NULL, 1, 0, NULL, "score every repeated key (recall tasks)", 0},
    {"task.k_motif_size", KEY_INT, NULL, 1, 64, NULL, "fuzzy recall: keys have 1..K tokens (test: K)", 0},
    {"task.v_motif_size", KEY_INT, NULL, 1, 64, NULL, "fuzzy recall: values have 1..V tokens", 0},
    {"task.num_tokens_to_copy", KEY_INT, NULL, 1, 1 << 20, NULL, "selective copying: tokens to copy", 0},
    {"task.num_kv_pairs", KEY_INT, NULL, 1, 1 << 20, NULL, "MQAR: key-value pairs (= queries) per sequence", 0},
    {"task.power_a", KEY_FLOAT, NULL, 1e-9, 100, NULL, "MQAR: query gaps p(i) ~ a i^(a-1)", 0},
    {"task.random_non_queries", KEY_BOOL, NULL, 1, 0, NULL, "MQAR: filler tokens uniform over the vocabulary instead of 0", 0},
};

const KeyTable task_key_table = KEYTABLE("task", task_keys);
