#!/usr/bin/env bash
# Everything the GPU machine runs in one call (docs/DEVICE.md):
#   bash bench/run_device.sh [tests] [bench] [solve] [profile] [torch] [torch-compile] [torch-solve]
# (no argument: all). Expects the binaries of `make device` under $BIN, or the tarball
# of `make devcarry` in $BIN
# (default build/device). Logs go to $OUT (or /tmp/plab-out); RESULT lines are
# collected into $OUT/results.txt, the input of docs/BENCHMARKS.md.
set -u
BIN=${BIN:-build/device}
OUT=${OUT:-/tmp/plab-out}
mkdir -p "$OUT"
# `make devcarry` packs the binaries into one tarball (the carry limit is 64 MiB)
if [ -f "$BIN/plab-device.tar.xz" ]; then
    mkdir -p /tmp/plab-bin && tar -xJf "$BIN/plab-device.tar.xz" -C /tmp/plab-bin && BIN=/tmp/plab-bin
fi
# cuBLAS: the toolkit's, else the one that ships with PyTorch
TORCH_CUBLAS=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${TORCH_CUBLAS}:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
phases=${*:-tests bench solve torch torch-compile torch-solve}  # also: profile (ncu)
has() { [[ " $phases " == *" $1 "* ]]; }
# every mixer, softmax and Parallax first (MIXERS overrides, comma separated)
ALL=softmax,parallax,lla,value_avg,affine_linear_attention,affine_mesa,linear_attention,mesa
ALL=$ALL,deltanet,gated_deltanet,kda,mesanet,mamba,mamba2
MIXERS=${MIXERS:-$ALL}
R="$OUT/results.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee -a "$R"
date -u +"date %Y-%m-%dT%H:%M:%SZ" | tee -a "$R"

if has tests; then
    echo "== make test-cuda (CPU-vs-CUDA parity, determinism, training parity)"
    PLAB_REQUIRE_GPU=1 bash tests/run.sh "$BIN"/tests/cuda_* 2>&1 | tee "$OUT/tests.log" | grep -E "^\s+(  )?[a-z].*(rel|bound)|PASSED|FAILED|SKIPPED|passed|ERROR|error" | tail -150
    tail -1 "$OUT/tests.log" | sed 's/^/TESTS /' >> "$R"
fi

if has bench; then
    echo "== plab step benchmark (MAD shape)"
    # every mixer in bf16 (one without a CUDA kernel prints "not available" and the
    # reason); softmax and Parallax in fp32 as well
    MIXERS=$MIXERS "$BIN"/bench/step_bench precision=bf16 2>&1 | tee -a "$OUT/bench.log" | grep -v '^RESULT'
    MIXERS=softmax,parallax "$BIN"/bench/step_bench precision=fp32 2>&1 | tee -a "$OUT/bench.log" | grep -v '^RESULT'
    grep '^RESULT' "$OUT/bench.log" >> "$R"
fi

if has solve; then
    echo "== plab: MAD in-context recall to test acc >= 0.999 (protocol=mad, bf16)"
    "$BIN"/bench/step_bench --dump "$OUT/icr.bin" | tee -a "$OUT/solve.log"
    # seed 1 is PyTorch's data (torch-solve); the epoch count of a seed moves with the last
    # bit of the bf16 rounding, so several seeds (SOLVE_SEEDS) say what a solve costs
    for m in softmax parallax; do
        for seed in ${SOLVE_SEEDS:-1 2 3 4 5}; do
            t0=$(date +%s.%N)
            "$BIN"/plab train protocol=mad task=in_context_recall model.mixer=$m device=cuda \
                precision=bf16 progress=false log_every=100000 seed=$seed 2>&1 | tee -a "$OUT/solve.log"
            t1=$(date +%s.%N)
            line=$(grep '^finished' "$OUT/solve.log" | tail -1)
            echo "RESULT plab-solve $m seed $seed wall_s $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") :: $line" | tee -a "$R"
        done
    done
fi

if has profile; then
    # per mixer of $PROFILE (default softmax,parallax): the first eager steps, at the GPU's own
    # clocks and with warm caches (as in a training loop), so the kernel times add up to the step
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    for m in $(echo "${PROFILE:-softmax,parallax}" | tr , ' '); do
        echo "== per-kernel time of the $m bf16 step (ncu, the first eager steps)"
        MIXERS=$m timeout 120 "$NCU" --cache-control none --clock-control none \
            --metrics gpu__time_duration.sum --launch-count 600 --csv \
            --print-units base "$BIN"/bench/step_bench precision=bf16 > "$OUT/ncu-$m.csv" 2>/dev/null
        python3 bench/ncu_summary.py "$OUT/ncu-$m.csv" | tee "$OUT/profile-$m.txt"
        python3 bench/ncu_summary.py "$OUT/ncu-$m.csv" --sequence | sed -n '/launch sequence/,$p' > "$OUT/sequence-$m.txt"; rm -f "$OUT/ncu-$m.csv"
    done
fi

if has torch; then
    echo "== PyTorch reference, eager"
    python3 bench/torch_ref.py step --mixer "$MIXERS" 2>&1 | tee -a "$OUT/torch.log" | grep -v '^RESULT'
    grep '^RESULT torch' "$OUT/torch.log" | sort -u >> "$R"
fi
if has torch-compile; then
    # one process per mixer, each at most COMPILE_S seconds (compiling a sequential
    # reference unrolls its loop over time)
    echo "== PyTorch reference, torch.compile (at most ${COMPILE_S:=120} s a mixer)"
    for m in $(echo "$MIXERS" | tr , ' '); do
        timeout "$COMPILE_S" python3 bench/torch_ref.py step --compile --mixer $m > "$OUT/torchc-$m.log" 2>&1
        rc=$?
        [ $rc -eq 124 ] && echo "torch $m compile: over $COMPILE_S s, not timed" >> "$OUT/torchc-$m.log"
        grep -E "^torch |FAILED|Error" "$OUT/torchc-$m.log" | tail -2
        cat "$OUT/torchc-$m.log" >> "$OUT/torchc.log"
    done
    grep '^RESULT torch' "$OUT/torchc.log" | sort -u >> "$R"
fi
if has torch-solve; then
    echo "== PyTorch reference: the same in-context recall data to acc >= 0.999 (eager, bf16)"
    [ -f "$OUT/icr.bin" ] || "$BIN"/bench/step_bench --dump "$OUT/icr.bin"
    for m in softmax parallax; do
        python3 bench/torch_ref.py solve --data "$OUT/icr.bin" --mixer $m --budget ${TORCH_BUDGET:-90} 2>&1 | tee -a "$OUT/torchs.log" | grep -v '^RESULT'
    done
    grep '^RESULT torch-solve' "$OUT/torchs.log" >> "$R"
fi
rm -f "$OUT/icr.bin"
echo "== results"
cat "$R"
