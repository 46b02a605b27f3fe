#!/usr/bin/env bash
# A/B of two builds on one warm GPU (docs/DEVICE.md): the CUDA suites of the new build, then
# step_bench of old and new alternated, each round also the new build under each setting of
# VARIANTS (default: the bf16 attention block off), then one MAD solve per mixer with the new
# build.
#   OLD=build/devold NEW=build/devcarry bash bench/ab_device.sh
# (each folder holds a plab-device.tar.xz of `make devcarry`; ROUNDS, MIXERS, SOLVE_SEEDS,
# NOTEST=1 to skip the suites, TEST_ENV to run them again under other settings). Logs and
# RESULT lines go to $OUT (default /tmp/plab-out).
set -u
OUT=${OUT:-/tmp/plab-out}; mkdir -p "$OUT"
OLD=${OLD:-build/devold} NEW=${NEW:-build/devcarry}
for v in old new; do
    dir=$OLD; [ $v = new ] && dir=$NEW
    mkdir -p /tmp/pb-$v && tar -xJf "$dir/plab-device.tar.xz" -C /tmp/pb-$v
done
TORCH_CUBLAS=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${TORCH_CUBLAS}:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/ab.txt"
# the suites with the defaults, then once more under each setting of TEST_ENV (e.g. TEST_ENV=PLAB_ATTN_BLOCK=0)
if [ -z "${NOTEST:-}" ]; then
    for e in defaults ${TEST_ENV:-}; do
        echo "== CUDA suites, $e" | tee -a "$OUT/ab.txt"
        log="$OUT/tests-${e//=/-}.log"
        (case $e in *=*) export "$e" ;; esac; PLAB_REQUIRE_GPU=1 bash tests/run.sh /tmp/pb-new/tests/cuda_*) > "$log" 2>&1
        grep -E "FAILED|ERROR|passed|failed" "$log" | tail -20 | tee -a "$OUT/ab.txt"
    done
fi
bench() { MIXERS=${MIXERS:-softmax,parallax} "$@" precision=bf16 2>&1 | grep -E "^RESULT" | cut -c1-150; }
for i in $(seq "${ROUNDS:-2}"); do
    for v in old new; do echo "== $v, round $i"; bench /tmp/pb-$v/bench/step_bench; done
    for e in ${VARIANTS:-PLAB_ATTN_BLOCK=0}; do
        echo "== new, $e, round $i"; (export "$e"; bench /tmp/pb-new/bench/step_bench)
    done
done | tee -a "$OUT/ab.txt"
for m in softmax parallax; do
    for seed in ${SOLVE_SEEDS:-1}; do
        t0=$(date +%s.%N)
        /tmp/pb-new/plab train protocol=mad task=in_context_recall model.mixer=$m device=cuda precision=bf16 \
            progress=false log_every=100000 seed=$seed > "$OUT/solve-$m-$seed.log" 2>&1
        t1=$(date +%s.%N)
        echo "solve $m seed $seed wall $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") :: $(grep '^finished' "$OUT/solve-$m-$seed.log" | tail -1)"
    done
done | tee -a "$OUT/ab.txt"
