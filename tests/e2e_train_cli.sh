#!/usr/bin/env bash
# plab train on the command line: help, key errors with suggestions, run
# configs in YAML with file:line:col errors, and a tiny run that finishes.
set -u
P=${PLAB:-./plab}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
fail=0
expect() { # expect NAME WANT_RC WANT_TEXT -- command...
    local name=$1 rc=$2 text=$3; shift 4
    out=$("$@" 2>&1); got=$?
    if [ "$got" -ne "$rc" ] || [[ "$out" != *"$text"* ]]; then
        echo "FAIL $name: rc $got (want $rc); output:"; echo "$out" | tail -5; fail=1
    fi
}
expect help 0 "task.vocab_size" -- "$P" help train
expect help-flag 0 "--config run.yaml" -- "$P" train --help
expect unknown-key 2 "did you mean 'model.d_model'" -- "$P" train model.d_modle=8
expect bad-value 2 "key 'lr': 'x' is not a number" -- "$P" train lr=x
expect bad-mixer 2 "did you mean 'parallax'" -- "$P" train model.mixer=paralax
printf 'task: in_context_recall\nmodel:\n  mixer: parallax\n  d_model: 16\n  heads: 2\ntask.seq_len: 16\ntask.num_train: 64\ntask.num_test: 32\nepochs: 2\nprogress: false\n' > "$d/run.yaml"
expect config-run 0 "finished: 2 epochs" -- "$P" train --config "$d/run.yaml"
expect config-override 0 "finished: 1 epochs" -- "$P" train --config "$d/run.yaml" epochs=1
printf 'model:\n  mixr: parallax\n' > "$d/bad.yaml"
expect config-key 2 "bad.yaml:2:3: unknown key 'model.mixr' (did you mean 'model.mixer'?)" -- "$P" train --config "$d/bad.yaml"
printf 'lr: [1, 2\n' > "$d/bad2.yaml"
expect config-syntax 2 "bad2.yaml:2:1: YAML syntax error" -- "$P" train --config "$d/bad2.yaml"
[ $fail -eq 0 ] && echo "e2e_train_cli: ok"
exit $fail
