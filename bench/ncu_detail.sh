#!/usr/bin/env bash
# Nsight Compute's detailed sections (speed of light, occupancy, warp stalls, instruction
# mix) for the kernels of a mixer's bf16 step whose names match KERNELS, on the GPU machine:
#   BIN=build/devcarry MIXER=softmax KERNELS='tc_fwd|tc_bwd' bash bench/ncu_detail.sh
# (after the first SKIP matching launches, COUNT of them). Output: $OUT/ncu-detail-$MIXER.txt
set -u
BIN=${BIN:-build/devcarry} OUT=${OUT:-/tmp/plab-out} MIXER=${MIXER:-softmax}
mkdir -p "$OUT"
if [ -f "$BIN/plab-device.tar.xz" ]; then
    mkdir -p /tmp/plab-bin && tar -xJf "$BIN/plab-device.tar.xz" -C /tmp/plab-bin && BIN=/tmp/plab-bin
fi
TORCH_CUBLAS=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${TORCH_CUBLAS}:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
MIXERS=$MIXER timeout "${LIMIT:-150}" "$NCU" --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --section InstructionStats --section MemoryWorkloadAnalysis -k "regex:${KERNELS:-tc_}" \
    --launch-skip "${SKIP:-6}" --launch-count "${COUNT:-3}" "$BIN"/bench/step_bench precision=bf16 \
    > "$OUT/ncu-detail-$MIXER.txt" 2>&1
grep -E "^\s+[a-z_:<>, 0-9A-Z]+\(|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Issue Slots Busy|Issued Warp|No Eligible|Eligible Warps|Active Warps Per|Warp Cycles Per Issued|Executed Ipc A|Memory Throughput|DRAM Throughput|L1/TEX Hit|L2 Hit|Compute \(SM\) Th|Shared Memory Configuration Size|Dynamic Shared|Static Shared|Stall|stall" \
    "$OUT/ncu-detail-$MIXER.txt" | cut -c1-160 | head -"${LINES_OUT:-150}"
