#!/usr/bin/env bash
# Bad sweep files and foreign databases: every case exits non-zero before any
# run starts, says what is wrong (file:line:col where there is a place), and
# leaves the database byte for byte as it was (or absent). --dry-run writes
# nothing. Env PLAB = the binary.
set -u
PLAB=${PLAB:-./plab}
PLAB=$(cd "$(dirname "$PLAB")" && pwd)/$(basename "$PLAB")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
fail=0
base='base: {task: in_context_recall, task.seq_len: 16, task.num_train: 64, task.num_test: 32, model.d_model: 16, model.heads: 2, model.layers: 1, epochs: 1, batch_size: 32}'

# a good sweep fills the database once, so we can see that bad ones leave it alone
printf 'name: good\nmethod: grid\n%s\nparameters:\n  seed: {values: [1, 2]}\n' "$base" > good.yaml
"$PLAB" sweep good.yaml --db r.db > good.out 2>&1 || { echo "FAIL: good sweep"; cat good.out; exit 1; }
sum_before=$(cat r.db r.db-wal 2>/dev/null | md5sum)

check() { # name expected-substring yaml-text
    printf '%s' "$3" > "$1.yaml"
    "$PLAB" sweep "$1.yaml" --db r.db > "$1.out" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then echo "FAIL $1: exit 0"; fail=1; fi
    if ! grep -qF -- "$2" "$1.out"; then echo "FAIL $1: expected '$2', got:"; cat "$1.out"; fail=1; fi
    "$PLAB" sweep "$1.yaml" --db fresh.db > /dev/null 2>&1
    if [ -e fresh.db ]; then echo "FAIL $1: created a database"; fail=1; rm -f fresh.db*; fi
}

check syntax "syntax.yaml:4:27: YAML syntax error" "method: grid
$base
parameters:
  lr: {values: [1e-3, 2e-3}
"
check unknown_top "unknown_top.yaml:2:1: unknown sweep key 'paramters' (did you mean 'parameters'?)" "method: grid
paramters:
  lr: {values: [1e-3]}
"
check unknown_key "unknown_key.yaml:4:3: unknown key 'model.mixr' (did you mean 'model.mixer'?)" "method: grid
$base
parameters:
  model.mixr: {values: [softmax]}
"
check wrong_type "wrong_type.yaml:4:23: key 'lr': 'fast' is not a number" "method: grid
$base
parameters:
  lr: {values: [1e-3, fast]}
"
check out_of_range "key 'model.d_model': 0 is out of range; expected an integer in [1, 65536]" "method: grid
parameters:
  model.d_model: {values: [0]}
"
check empty_grid "empty_grid.yaml:4:16: parameter 'lr' has an empty list of values: the grid is empty" "method: grid
$base
parameters:
  lr: {values: []}
"
check unknown_mixer "unknown_mixer.yaml:4:35: key 'model.mixer': unknown mixer 'softmaxx'" "method: grid
$base
parameters:
  model.mixer: {values: [softmax, softmaxx]}
"
check combination "combination.yaml:4:29: key 'model.heads': 3 does not divide model.d_model=16" "method: grid
$base
parameters:
  model.heads: {values: [2, 3]}
"
check random_cap "method random needs run_cap" "method: random
parameters:
  lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-2}
"
"$PLAB" sweep missing_file.yaml --db r.db > missing.out 2>&1 && { echo "FAIL: missing file exit 0"; fail=1; }
grep -qF "cannot read sweep file 'missing_file.yaml'" missing.out || { echo "FAIL: missing file message"; cat missing.out; fail=1; }

# --dry-run prints the runs and writes nothing, not even a new database
printf 'name: dry\nmethod: grid\n%s\nparameters:\n  seed: {values: [1, 2, 3]}\n  lr: {values: [1e-3, 2e-3]}\n' "$base" > dry.yaml
"$PLAB" sweep dry.yaml --db dry.db --dry-run > dry.out 2>&1 || { echo "FAIL: dry run exit"; fail=1; }
[ -e dry.db ] && { echo "FAIL: dry run created a database"; fail=1; }
[ "$(grep -cE '^ +[0-9]+  [0-9a-f]{16}  seed=' dry.out)" = 6 ] || { echo "FAIL: dry run lists 6 runs"; cat dry.out; fail=1; }
"$PLAB" sweep dry.yaml --db r.db --dry-run > /dev/null 2>&1

sum_after=$(cat r.db r.db-wal 2>/dev/null | md5sum)
[ "$sum_before" = "$sum_after" ] || { echo "FAIL: a refused sweep changed the database"; fail=1; }

# databases that are not ours, or newer, are refused with a clear message
echo "just text" > text.db
"$PLAB" sweep good.yaml --db text.db > t.out 2>&1 && { echo "FAIL: text db accepted"; fail=1; }
grep -qF "'text.db' is not a plab database (not an SQLite file)" t.out || { echo "FAIL: text db message"; cat t.out; fail=1; }
sqlite3 other.db "CREATE TABLE experiments(id)"
"$PLAB" query "SELECT 1" --db other.db > o.out 2>&1 && { echo "FAIL: foreign db accepted"; fail=1; }
grep -qF "is an SQLite database but not a plab database" o.out || { echo "FAIL: foreign db message"; cat o.out; fail=1; }
[ "$(sqlite3 other.db "SELECT count(*) FROM sqlite_master")" = 1 ] || { echo "FAIL: foreign db changed"; fail=1; }
cp r.db newer.db
sqlite3 newer.db "PRAGMA user_version = 7"
"$PLAB" runs --db newer.db > n.out 2>&1 && { echo "FAIL: newer db accepted"; fail=1; }
grep -qF "has schema version 7, newer than this plab understands" n.out || { echo "FAIL: newer message"; cat n.out; fail=1; }

# query: formats and a clear SQL error
"$PLAB" query "SELECT seed, status FROM run_summary ORDER BY seed" --db r.db --format csv > q.csv
[ "$(cat q.csv)" = "$(printf 'seed,status\n1,finished\n2,finished')" ] || { echo "FAIL: csv"; cat q.csv; fail=1; }
"$PLAB" query "SELECT count(*) AS n FROM runs" --db r.db --format json > q.json
[ "$(tr -d ' \n' < q.json)" = '[{"n":2}]' ] || { echo "FAIL: json"; cat q.json; fail=1; }
"$PLAB" query "SELEC 1" --db r.db > e.out 2>&1 && { echo "FAIL: bad SQL exit 0"; fail=1; }
grep -qF "SQL error" e.out || { echo "FAIL: SQL error message"; cat e.out; fail=1; }

[ $fail -eq 0 ] && echo "e2e_sweep_bad: all cases passed"
exit $fail
