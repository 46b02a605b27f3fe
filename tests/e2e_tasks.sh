#!/usr/bin/env bash
# End to end: `plab tasks` lists every task, `sample` marks scored positions,
# `stats` summarises a split, and impossible settings are refused (exit 2,
# naming the key) by `plab tasks` and by `plab train` before any training.
set -u
PLAB=${PLAB:-./plab}
err=$(mktemp)
trap 'rm -f "$err"' EXIT
fail() { echo "e2e_tasks: $*"; exit 1; }

out=$("$PLAB" tasks) || fail "plab tasks exited $?"
for t in in_context_recall noisy_in_context_recall fuzzy_in_context_recall selective_copying \
         compression memorization mqar; do
    grep -q "^  $t\$" <<<"$out" || fail "plab tasks does not list $t"
done
grep -q "task.num_tokens_to_copy=16" <<<"$out" || fail "SC default missing from the list"

out=$("$PLAB" tasks sample selective_copying task.seq_len=32 task.num_tokens_to_copy=4 -n 2) \
    || fail "sample exited $?"
[ "$(grep -o '\[[0-9]*>[0-9]*\]' <<<"$out" | wc -l)" -eq 8 ] || fail "sample: expected 2 x 4 scored marks"$'\n'"$out"

out=$("$PLAB" tasks stats in_context_recall task.seq_len=32 -n 500) || fail "stats exited $?"
grep -q "500 sequences of 31 tokens" <<<"$out" || fail "stats header"$'\n'"$out"
grep -q "unique test inputs" <<<"$out" || fail "stats: no leakage line"

"$PLAB" tasks sample in_context_recall task.seq_len=33 >/dev/null 2>"$err" && fail "odd seq_len accepted"
grep -q "task.seq_len" "$err" || fail "error does not name the key: $(cat "$err")"
"$PLAB" train task=selective_copying task.seq_len=10 task.num_tokens_to_copy=5 progress=false \
    >/dev/null 2>"$err"
rc=$?
[ $rc -eq 2 ] || fail "plab train on an impossible setting exited $rc"
grep -q "task.num_tokens_to_copy" "$err" || fail "train error does not name the key: $(cat "$err")"
echo "e2e_tasks: ok"
