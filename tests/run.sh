#!/usr/bin/env bash
# Runs test binaries (cmocka) and end-to-end scripts, then prints one closing
# line "N passed, N failed, N skipped". Exits non-zero if anything failed.
set -u
# tests use tiny tensors: one OpenMP thread avoids paying for idle threads
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
passed=0 failed=0 skipped=0 failures=()
for t in "$@"; do
    [ -e "$t" ] || continue
    echo "== $t"
    if [[ "$t" == *.sh ]]; then
        if bash "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$t"); fi
        continue
    fi
    out=$("$t" 2>&1); rc=$?
    echo "$out"
    p=$(echo "$out" | sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    f=$(echo "$out" | sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    s=$(echo "$out" | sed -n 's/.*\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | tail -1)
    passed=$((passed + ${p:-0})); skipped=$((skipped + ${s:-0}))
    if [ "$rc" -ne 0 ] || [ "${f:-0}" -gt 0 ]; then
        failed=$((failed + ${f:-1})); failures+=("$t")
    fi
done
[ ${#failures[@]} -gt 0 ] && printf 'failed: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
