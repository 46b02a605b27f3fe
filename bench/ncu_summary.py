"""Sums `ncu --csv --metrics gpu__time_duration.sum` output per kernel name
(for finding where a plab step spends its time): python3 ncu_summary.py LOG
Steps are counted as launches of the loss kernel (xent_* or, in training, head_loss_kernel: once a
step)."""
import csv
import sys
from collections import defaultdict

rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
hdr, data = rows[0], rows[1:]
ki, vi = hdr.index("Kernel Name"), hdr.index("Metric Value")
LOSS = ("xent", "head_loss")
steps = max(1, sum(r[ki].removeprefix("void ").startswith(LOSS) for r in data))
tot, cnt = defaultdict(float), defaultdict(int)
for r in data:
    name = r[ki].split("(")[0][:70]
    tot[name] += float(r[vi].replace(",", "")) / 1e3 / steps  # ns -> us per step
    cnt[name] += 1
total = sum(tot.values())
print(f"total {total:.1f} us per step ({len(data)} kernels over {steps:g} steps)")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{v:9.1f} us  {cnt[k] / steps:6.1f}x  {k}")

# the launch sequence of one whole step (the second-to-last complete one), so a
# kernel can be matched to the op that launched it: python3 ncu_summary.py LOG --sequence
if "--sequence" in sys.argv:
    ends = [i for i, r in enumerate(data) if r[ki].removeprefix("void ").startswith(LOSS)]
    if len(ends) >= 3:
        a, b = ends[-3], ends[-2]
        # a step runs from after the previous step's loss kernel's backward start; print
        # everything between two consecutive loss kernels (forward tail, backward, optimizer, forward)
        print(f"\nlaunch sequence between loss kernels {len(ends) - 3} and {len(ends) - 2}:")
        for r in data[a + 1:b + 1]:
            gi = hdr.index("Grid Size") if "Grid Size" in hdr else None
            bi = hdr.index("Block Size") if "Block Size" in hdr else None
            extra = f"  grid {r[gi]} block {r[bi]}" if gi is not None else ""
            print(f"{float(r[vi].replace(',', '')) / 1e3:8.1f} us  {r[ki][:90]}{extra}")
