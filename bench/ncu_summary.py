"""Sums `ncu --csv --metrics gpu__time_duration.sum` output per kernel name
(for finding where a plab step spends its time): python3 ncu_summary.py LOG
Steps are counted as launches of the loss kernel (xent_sum, once per step, any mixer)."""
import csv
import sys
from collections import defaultdict

rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
hdr, data = rows[0], rows[1:]
ki, vi = hdr.index("Kernel Name"), hdr.index("Metric Value")
steps = max(1, sum("xent_sum" in r[ki] for r in data))
tot, cnt = defaultdict(float), defaultdict(int)
for r in data:
    name = r[ki].split("(")[0][:70]
    tot[name] += float(r[vi].replace(",", "")) / 1e3 / steps  # ns -> us per step
    cnt[name] += 1
total = sum(tot.values())
print(f"total {total:.1f} us per step ({len(data)} kernels over {steps:g} steps; ncu clocks)")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{v:9.1f} us  {cnt[k] / steps:6.1f}x  {k}")
