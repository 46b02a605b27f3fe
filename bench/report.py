"""Markdown tables for docs/BENCHMARKS.md from the RESULT lines of one device run
(bench/run_device.sh writes them to $OUT/results.txt):

  python3 bench/report.py results.txt

Step times per mixer (plab bf16 graph / eager, fp32 graph; PyTorch eager and
torch.compile), the ratios PyTorch / plab bf16 graph, and the GPU-hours of MAD's
full protocol at the baseline shape: 396 runs x 200 epochs x 100 steps = 7.92 M
steps per mechanism (an upper bound: every run to the last epoch, no evaluation)."""
import sys
from collections import defaultdict

STEPS = 396 * 200 * 100


def parse(path):
    plab, torch, head = defaultdict(dict), defaultdict(dict), []
    for line in open(path):
        w = line.split()
        if not w:
            continue
        if w[0] != "RESULT":
            head.append(line.rstrip())
        elif w[1] == "plab" and len(w) >= 6:
            plab[w[2]][w[3]] = (float(w[4]), float(w[5]))  # eager, graph
        elif w[1] == "torch" and len(w) >= 5:
            torch[w[2]][w[3]] = float(w[4])
    return plab, torch, head


def ms(x):
    return "–" if x is None else f"{x:.3f}"


def ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.1f}×"


def hours(x):
    return "–" if x is None else f"{x * STEPS / 3.6e6:.1f} h"


def main():
    plab, torch, head = parse(sys.argv[1])
    for h in head:
        print(f"<!-- {h} -->")
    print("| mixer | plab bf16 graph | plab bf16 eager | plab fp32 graph | PyTorch eager "
          "| PyTorch compile | vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|---|")
    for m, p in plab.items():
        if "bf16" not in p:
            continue
        eager, graph = p["bf16"]
        fp32 = p.get("fp32", (None, None))[1]
        te, tc = torch[m].get("eager"), torch[m].get("compile")
        print(f"| {m} | **{ms(graph)}** | {ms(eager)} | {ms(fp32)} | {ms(te)} | {ms(tc)} "
              f"| {ratio(te, graph)} | {ratio(tc, graph)} |")
    print()
    print("| mixer | plab bf16 | PyTorch eager | PyTorch compile |")
    print("|---|---|---|---|")
    for m, p in plab.items():
        if "bf16" in p:
            print(f"| {m} | {hours(p['bf16'][1])} | {hours(torch[m].get('eager'))} "
                  f"| {hours(torch[m].get('compile'))} |")


if __name__ == "__main__":
    main()
