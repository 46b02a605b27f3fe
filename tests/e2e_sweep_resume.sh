#!/usr/bin/env bash
# Resume: kill -9 a running sweep, then Ctrl-C (SIGINT) the next invocation,
# then run the same command a third time. In the end every run is finished
# exactly once: none lost, none duplicated, no metric row twice, and the
# interrupted runs were redone from scratch. Env PLAB = the binary.
set -u
PLAB=${PLAB:-./plab}
PLAB=$(cd "$(dirname "$PLAB")" && pwd)/$(basename "$PLAB")
T=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null; rm -rf "$T"' EXIT
cd "$T"
fail=0
DB="$T/r.db"
cat > s.yaml <<'Y'
name: resume
method: grid
base: {task: in_context_recall, task.vocab_size: 8, task.seq_len: 16, task.num_train: 256,
       task.num_test: 32, model.d_model: 32, model.heads: 2, model.layers: 1, epochs: 12,
       batch_size: 32, log_every: 2, early_stop_acc: 2}
parameters:
  seed: {values: [1, 2, 3, 4, 5]}
Y
q() { "$PLAB" query "$1" --db "$DB" --format csv | tail -n +2; }
# waits until at least $1 runs are finished and one is running, while the
# sweep process $pid lives (sqlite3 polls fast; the runs take about a second)
wait_for() {
    for _ in $(seq 1 1200); do
        kill -0 $pid 2>/dev/null || { echo "FAIL: the sweep ended before $1 runs finished"; return 1; }
        s=$(sqlite3 "$DB" "SELECT sum(status = 'finished') >= $1 AND sum(status = 'running') >= 1 FROM runs" 2>/dev/null)
        [ "$s" = 1 ] && return 0
        sleep 0.05
    done
    echo "FAIL: timed out waiting for $1 finished runs"; return 1
}

# 1. kill -9 the sweep process while a run is going
"$PLAB" sweep s.yaml --db "$DB" > run1.out 2>&1 &
pid=$!
wait_for 1 || fail=1
kill -9 $pid
wait $pid 2>/dev/null
sleep 0.5
# its worker died with it (PR_SET_PDEATHSIG): nothing writes to the database any more
if pgrep -f "$DB" > /dev/null; then echo "FAIL: a worker outlived kill -9 of its sweep"; fail=1; fi
[ "$(q "SELECT count(*) FROM runs WHERE status = 'running'")" = 1 ] || { echo "FAIL: expected one stale running run"; fail=1; }
killed1=$(q "SELECT id FROM runs WHERE status = 'running'")
done1=$(q "SELECT count(*) FROM runs WHERE status = 'finished'")

# 2. SIGINT the second invocation: it requeues the run it was on and exits 130.
# A signal can land in the gap between two runs, with nothing to requeue; then
# a fresh invocation is interrupted again, mid-run (three tries at most).
interrupted=0
for try in 1 2 3; do
    "$PLAB" sweep s.yaml --db "$DB" > run2.out 2>&1 &
    pid=$!
    if [ $try = 1 ]; then wait_for $((done1 + 1)) || fail=1
    else wait_for "$(q "SELECT count(*) FROM runs WHERE status = 'finished'")" || fail=1; fi
    kill -INT $pid
    wait $pid
    rc=$?
    [ $rc -eq 130 ] || { echo "FAIL: SIGINT exit code $rc, expected 130"; cat run2.out; fail=1; }
    grep -q "queued again: re-run the same command to resume" run2.out || { echo "FAIL: no resume hint"; cat run2.out; fail=1; }
    [ $try = 1 ] && { grep -q "including interrupted or failed ones" run2.out || { echo "FAIL: stale run not requeued"; cat run2.out; fail=1; }; }
    [ "$(q "SELECT count(*) FROM runs WHERE status = 'running'")" = 0 ] || { echo "FAIL: a run stayed running after SIGINT"; fail=1; }
    interrupted=$(q "SELECT count(*) FROM runs WHERE status = 'queued' AND attempts > 0")
    [ "$interrupted" -ge 1 ] && break
    grep -q "^0 interrupted runs queued again" run2.out || { echo "FAIL: the SIGINT-ed run was not requeued"; cat run2.out; fail=1; break; }
done
[ "$interrupted" -ge 1 ] || { echo "FAIL: the SIGINT-ed run was not requeued"; fail=1; }

# 3. the same command again finishes the sweep, skipping what is done
"$PLAB" sweep s.yaml --db "$DB" > run3.out 2>&1 || { echo "FAIL: third run"; cat run3.out; fail=1; }
done_before=$(sed -n 's/.* \([0-9]*\) done before.*/\1/p' run3.out | head -1)
[ "$done_before" -ge 2 ] || { echo "FAIL: third run did not skip finished runs"; cat run3.out; fail=1; }

[ "$(q "SELECT count(*) FROM runs")" = 5 ] || { echo "FAIL: not 5 runs"; fail=1; }
[ "$(q "SELECT count(*) FROM runs WHERE status = 'finished'")" = 5 ] || { echo "FAIL: not all finished"; "$PLAB" runs --db "$DB"; fail=1; }
[ "$(q "SELECT attempts FROM runs WHERE id = $killed1")" = 2 ] || { echo "FAIL: the killed run was not redone once"; fail=1; }
# every run claimed once, plus one redo per interruption
[ "$(q "SELECT sum(attempts) FROM runs")" = $((5 + 1 + interrupted)) ] || { echo "FAIL: attempts"; q "SELECT id, attempts FROM runs"; fail=1; }
[ "$(q "SELECT count(*) FROM (SELECT run_id, key, step FROM metrics GROUP BY 1, 2, 3 HAVING count(*) > 1)")" = 0 ] \
    || { echo "FAIL: duplicated metric rows"; fail=1; }
# same schedule for every run: the same number of history rows, 12 epochs of test metrics
[ "$(q "SELECT count(DISTINCT n) FROM (SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id)")" = 1 ] \
    || { echo "FAIL: runs have different history lengths"; q "SELECT run_id, count(*) FROM metrics GROUP BY run_id"; fail=1; }
[ "$(q "SELECT count(*) FROM metrics WHERE key = 'test_acc'")" = 60 ] || { echo "FAIL: test_acc rows"; fail=1; }
[ "$(q "SELECT count(*) FROM final_metrics WHERE key = 'test_acc' AND kind = 'at_best_ppl'")" = 5 ] || { echo "FAIL: finals"; fail=1; }
# the database opens in the plain sqlite3 shell
[ "$(sqlite3 "$DB" "SELECT count(*) FROM run_summary WHERE test_acc IS NOT NULL")" = 5 ] || { echo "FAIL: sqlite3 shell"; fail=1; }

[ $fail -eq 0 ] && echo "e2e_sweep_resume: passed (kill -9, SIGINT, resume)"
exit $fail
