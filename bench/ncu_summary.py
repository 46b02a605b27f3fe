"""Sums `ncu --csv --metrics gpu__time_duration.sum` output per kernel name
(for finding where a plab step spends its time): python3 ncu_summary.py LOG [layers]
Steps are counted as attention forward launches / layers (default 2)."""
import csv
import sys
from collections import defaultdict

rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
hdr, data = rows[0], rows[1:]
ki, vi = hdr.index("Kernel Name"), hdr.index("Metric Value")
layers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
steps = max(1.0, sum("attn_fwd" in r[ki] for r in data) / layers)
tot, cnt = defaultdict(float), defaultdict(int)
for r in data:
    name = r[ki].split("(")[0][:70]
    tot[name] += float(r[vi].replace(",", "")) / 1e3 / steps  # ns -> us per step
    cnt[name] += 1
total = sum(tot.values())
print(f"total {total:.1f} us per step ({len(data)} kernels over {steps:g} steps; ncu clocks)")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{v:9.1f} us  {cnt[k] / steps:6.1f}x  {k}")
