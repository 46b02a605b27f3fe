#!/usr/bin/env bash
# The README demo: softmax attention and Parallax learn MAD in-context recall
# (vocab 16, seq 64) on the CPU with Muon, each in about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAB=${PLAB:-./plab}
common="task=in_context_recall task.vocab_size=16 task.seq_len=64 task.num_train=4000 task.num_test=512
        model.d_model=64 model.heads=4 model.layers=2 optim=muon lr=5e-3 schedule=constant
        batch_size=32 epochs=15 early_stop_acc=0.99 log_every=25 seed=1"
TIMEFORMAT="   wall time %R s"
for mixer in softmax parallax; do
    echo "== $mixer"
    # shellcheck disable=SC2086
    time "$PLAB" train $common model.mixer=$mixer
done
