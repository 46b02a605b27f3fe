#!/usr/bin/env bash
# Two processes on one database, one of them with --workers 2: every config
# is trained exactly once. A diverging run (lr 10, weight decay 10: NaN loss)
# is recorded as diverged with its reason and step, and the sweep goes on.
# Env PLAB = the binary.
set -u
PLAB=${PLAB:-./plab}
PLAB=$(cd "$(dirname "$PLAB")" && pwd)/$(basename "$PLAB")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail=0
cat > s.yaml <<'Y'
name: workers
method: grid
base: {task: in_context_recall, task.seq_len: 16, task.num_train: 64, task.num_test: 32,
       model.d_model: 16, model.heads: 2, model.layers: 1, epochs: 30, batch_size: 8, log_every: 1,
       early_stop_acc: 2}
parameters:
  hp:
    values:
      - {lr: 1e-3, weight_decay: 0}
      - {lr: 10, weight_decay: 10}     # diverges: the weights overflow within a few steps
  seed: {values: [1, 2, 3, 4]}
Y
q() { "$PLAB" query "$1" --db r.db --format csv | tail -n +2; }
"$PLAB" sweep s.yaml --db r.db --workers 2 > a.out 2>&1 &
a=$!
"$PLAB" sweep s.yaml --db r.db > b.out 2>&1 &
b=$!
wait $a || { echo "FAIL: process A"; cat a.out; fail=1; }
wait $b || { echo "FAIL: process B"; cat b.out; fail=1; }

[ "$(q "SELECT count(*) FROM runs")" = 8 ] || { echo "FAIL: not 8 runs"; fail=1; }
[ "$(q "SELECT sum(attempts) FROM runs")" = 8 ] || { echo "FAIL: a config was trained twice"; q "SELECT id, attempts FROM runs"; fail=1; }
# each run reported by exactly one process
n=$(cat a.out b.out | grep -cE '^\[[0-9]+/[0-9]+\] (finished|diverged) run')
[ "$n" = 8 ] || { echo "FAIL: $n outcome lines, expected 8"; cat a.out b.out; fail=1; }
[ "$(q "SELECT count(*) FROM runs WHERE status = 'finished' AND overrides LIKE 'lr=1e-3%'")" = 4 ] \
    || { echo "FAIL: the normal runs did not all finish"; "$PLAB" runs --db r.db; fail=1; }
[ "$(q "SELECT count(*) FROM runs WHERE status = 'diverged' AND overrides LIKE 'lr=10 %'
        AND error LIKE '%loss is %nan%' AND step IS NOT NULL")" = 4 ] \
    || { echo "FAIL: diverged runs not recorded with reason and step"; "$PLAB" runs --db r.db; fail=1; }
[ "$(q "SELECT count(*) FROM run_summary WHERE status = 'diverged' AND test_acc IS NOT NULL")" = 0 ] \
    || { echo "FAIL: a diverged run has a final test_acc"; fail=1; }
[ "$(q "SELECT count(*) FROM (SELECT run_id, key, step FROM metrics GROUP BY 1, 2, 3 HAVING count(*) > 1)")" = 0 ] \
    || { echo "FAIL: duplicated metric rows"; fail=1; }
na=$(grep -cE '^\[[0-9]+/[0-9]+\] (finished|diverged) run' a.out)
echo "  process A (2 workers) trained $na runs, process B $((n - na))"
# a second invocation has nothing left to do
"$PLAB" sweep s.yaml --db r.db > c.out 2>&1
grep -q "0 to run" c.out || { echo "FAIL: re-run found work"; cat c.out; fail=1; }
[ "$(q "SELECT sum(attempts) FROM runs")" = 8 ] || { echo "FAIL: re-run trained again"; fail=1; }

# a run that fails (no such device) is recorded with its reason; the sweep goes on
cat > f.yaml <<'Y'
name: failing
method: grid
base: {task: in_context_recall, task.seq_len: 16, task.num_train: 64, model.d_model: 16,
       model.heads: 2, model.layers: 1, epochs: 1}
parameters:
  device: {values: ["cuda:63", cpu]}
Y
"$PLAB" sweep f.yaml --db r.db > f.out 2>&1 || { echo "FAIL: a failed run stopped the sweep"; cat f.out; fail=1; }
[ "$(q "SELECT count(*) FROM runs WHERE sweep = 'failing' AND status = 'failed' AND overrides = 'device=cuda:63'
        AND length(error) > 0")" = 1 ] || { echo "FAIL: failed run not recorded"; "$PLAB" runs --db r.db --sweep failing; fail=1; }
[ "$(q "SELECT count(*) FROM runs WHERE sweep = 'failing' AND status = 'finished'")" = 1 ] \
    || { echo "FAIL: the run after the failure did not finish"; fail=1; }

[ $fail -eq 0 ] && echo "e2e_sweep_workers: passed"
exit $fail
