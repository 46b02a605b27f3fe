"""PyTorch reference of plab's MAD model, for bench/run_device.sh.

The same architecture as plab's `protocol=mad` model (models/model.c,
models/attention.c): token embedding N(0, 0.02); `layers` pre-norm blocks of
x += mixer(RMSNorm(x)); x += SwiGLU(RMSNorm(x)); final RMSNorm; linear head with
bias; cross-entropy ignoring -100. Mixers: softmax attention (q, k, v, o with
bias, GPT-NeoX rotary on the whole head, scale 1/sqrt(hd)) and Parallax
(parallax_lla.md §3.1: probe r = RMSNorm_head(x W_r^T) rotated like q;
o_i = sum_j p_ij (1 + tbar_i - t_ij) v_j with t_ij = r_i.k_j raw and
tbar_i = sum_j p_ij t_ij). AdamW (fused), bf16 autocast (bf16 operands, fp32
master weights), like MAD-Lab's mixed precision. The other mixers come from
torch_family.py (the attention family), torch_delta.py (DeltaNet, GDN, KDA,
MesaNet) and torch_scan.py (Mamba, Mamba-2), each a table MIXERS of
name -> dict(make=(d, H, T, rope) -> module, layers=None|n, mlp=bool).

  python3 bench/torch_ref.py step --mixer softmax[,parallax,...] [--compile]
  python3 bench/torch_ref.py solve --data FILE --mixer softmax
"""
import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp_width(d):
    return 16 * ((int(8 * d / 3) + 15) // 16)


class Rotary:
    def __init__(self, T, hd, base, device):
        half = hd // 2
        inv = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos = ang.cos().float().to(device)  # [T, half]
        self.sin = ang.sin().float().to(device)

    def __call__(self, x):  # x [B, H, T, hd]
        T, half = x.shape[2], x.shape[3] // 2
        c, s = self.cos[:T], self.sin[:T]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, d, H, parallax, rope):
        super().__init__()
        self.H, self.hd, self.parallax, self.rope = H, d // H, parallax, rope
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d) for _ in range(4))
        if parallax:
            self.wr = nn.Linear(d, d, bias=False)
            self.r_norm = nn.Parameter(torch.ones(self.hd))

    def heads(self, t):
        B, T, _ = t.shape
        return t.view(B, T, self.H, self.hd).transpose(1, 2)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.heads(self.wq(x)), self.heads(self.wk(x)), self.heads(self.wv(x))
        q, k = self.rope(q), self.rope(k)
        if not self.parallax:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            r = self.heads(self.wr(x))
            r = self.rope(F.rms_norm(r, (self.hd,), self.r_norm, 1e-5))
            s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            p = torch.softmax(s.float().masked_fill(~mask, float("-inf")), dim=-1)
            pt = p * (r @ k.transpose(-1, -2)).float()
            tbar = pt.sum(-1, keepdim=True)
            o = (p.to(v.dtype) @ v) * (1 + tbar).to(v.dtype) - pt.to(v.dtype) @ v
        return self.wo(o.transpose(1, 2).reshape(B, T, d))


class SwiGLU(nn.Module):
    def __init__(self, d):
        super().__init__()
        F_ = mlp_width(d)
        self.w1 = nn.Linear(d, F_, bias=False)
        self.w3 = nn.Linear(d, F_, bias=False)
        self.w2 = nn.Linear(F_, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def mixer_table():
    """name -> dict(make, layers, mlp): softmax and Parallax here, the others from
    the torch_*.py files beside this one"""
    table = {m: dict(make=lambda d, H, T, rope, px=(m == "parallax"): Attention(d, H, px, rope),
                     layers=None, mlp=True) for m in ("softmax", "parallax")}
    import importlib
    for mod in ("torch_family", "torch_delta", "torch_scan"):
        try:
            table.update(importlib.import_module(mod).MIXERS)
        except Exception as e:  # noqa: BLE001 - the other tables still work
            print(f"torch_ref.py: {mod}.py not loaded: {type(e).__name__}: {e}", file=sys.stderr)
    return table


class LM(nn.Module):
    def __init__(self, V, d, layers, H, T, spec, device):
        super().__init__()
        self.embed = nn.Embedding(V, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        rope = Rotary(T, d // H, 10000.0, device)
        layers = spec["layers"] or layers
        self.mixers = nn.ModuleList(spec["make"](d, H, T, rope) for _ in range(layers))
        self.mlps = nn.ModuleList(SwiGLU(d) if spec["mlp"] else nn.Identity() for _ in range(layers))
        self.n1 = nn.ModuleList(nn.RMSNorm(d, eps=1e-5) for _ in range(layers))
        self.n2 = nn.ModuleList(nn.RMSNorm(d, eps=1e-5) for _ in range(layers))
        self.final = nn.RMSNorm(d, eps=1e-5)
        self.head = nn.Linear(d, V)
        for m in self.modules():  # plab: biases start at zero
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, tok):
        x = self.embed(tok)
        for mix, mlp, n1, n2 in zip(self.mixers, self.mlps, self.n1, self.n2):
            x = x + mix(n1(x))
            if not isinstance(mlp, nn.Identity):
                x = x + mlp(n2(x))
        return self.head(self.final(x))


def make(args, device, mixer):
    torch.manual_seed(args.seed)
    spec = mixer_table()[mixer]
    model = LM(args.vocab, args.d, args.layers, args.heads, args.seq, spec, device).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, fused=True)
    return model, opt


def loss_fn(model, x, y, V, amp):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    return F.cross_entropy(logits.float().view(-1, V), y.view(-1), ignore_index=-100)


def train_step(model, opt, x, y, V, amp):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model, x, y, V, amp)
    loss.backward()
    opt.step()
    return loss


def time_mixer(args, mixer):
    """median ms per step over --reps runs of steps (--steps, fewer for a slow mixer:
    about 0.1 s a run, at least 3), CUDA events, after --warmup steps (which include
    compilation under --compile)"""
    dev = torch.device("cuda")
    model, opt = make(args, dev, mixer)
    g = torch.Generator(device=dev).manual_seed(7)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev, generator=g)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev, generator=g)
    fwd = torch.compile(model) if args.compile else model
    step = lambda: train_step(fwd, opt, x, y, args.vocab, not args.fp32)
    t0 = time.time()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm = time.time() - t0
    t1 = time.time()
    step()
    torch.cuda.synchronize()
    steps = max(3, min(args.steps, int(0.1 / (time.time() - t1))))
    times = []
    for _ in range(args.reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(steps):
            step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / steps)
    times.sort()
    med = times[len(times) // 2]
    mode = "compile" if args.compile else "eager"
    print(f"torch {mixer:24s} {mode:8s} {med:8.3f} ms/step  (spread {times[0]:.3f}.."
          f"{times[-1]:.3f}, {args.reps} x {steps} steps; warm-up {warm:.1f} s; "
          f"{sum(p.numel() for p in model.parameters())} params)")
    print(f"RESULT torch {mixer} {mode} {med:.4f}")


def cmd_step(args):
    """times each mixer of the comma list; one that fails prints why, the others go on"""
    bad = 0
    for mixer in args.mixer.split(","):
        try:
            time_mixer(args, mixer)
        except Exception as e:  # noqa: BLE001 - report and go on to the next mixer
            print(f"torch {mixer}: FAILED: {type(e).__name__}: {e}")
            bad = 1
        if args.compile:
            torch._dynamo.reset()
        torch.cuda.empty_cache()
    sys.exit(bad)


def read_data(path, dev):
    import numpy as np
    raw = np.fromfile(path, dtype=np.int32)
    ntr, ltr, nte, lte = (int(v) for v in raw[:4])
    o = 4
    parts = []
    for n, L in ((ntr, ltr), (ntr, ltr), (nte, lte), (nte, lte)):
        parts.append(torch.from_numpy(raw[o:o + n * L].reshape(n, L).astype("int64")).to(dev))
        o += n * L
    return parts


def mad_acc_batch(pred, y, V):
    """torchmetrics MulticlassAccuracy(average='macro', ignore_index=-100) of one batch:
    mean recall over the classes that occur as target or prediction (train/metrics.c)."""
    m = y >= 0
    p, t = pred[m], y[m]
    tp = torch.bincount(t[p == t], minlength=V)
    fn = torch.bincount(t[p != t], minlength=V)
    fp = torch.bincount(p[p != t], minlength=V)
    present = (tp + fp + fn) > 0
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp, dtype=torch.float))
    return (rec[present].sum() / present.sum().clamp(min=1)).item()


def cmd_solve(args):
    """MAD protocol on plab's generated data: batch 128, AdamW, cosine per epoch over
    200 epochs to 1e-6, evaluation every epoch, stop at MAD accuracy >= 0.999."""
    t0 = time.time()
    dev = torch.device("cuda")
    xtr, ytr, xte, yte = read_data(args.data, dev)
    args.seq = xtr.shape[1]
    model, opt = make(args, dev, args.mixer)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    B, V, epochs = args.batch, args.vocab, 200
    acc, ep = 0.0, 0
    for ep in range(epochs):
        lr = 1e-6 + (args.lr - 1e-6) * (1 + math.cos(math.pi * ep / epochs)) / 2
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(xtr.shape[0], device=dev, generator=g)
        for s in range(0, xtr.shape[0], B):
            idx = perm[s:s + B]
            train_step(model, opt, xtr[idx], ytr[idx], V, not args.fp32)
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, xte.shape[0], B):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not args.fp32):
                    pred = model(xte[s:s + B]).argmax(-1)
                nb = pred.shape[0]
                tot += mad_acc_batch(pred, yte[s:s + B], V) * nb
                n += nb
        acc = tot / n
        if acc >= 0.999 or time.time() - t0 > args.budget:
            break
    secs = time.time() - t0
    ok = acc >= 0.999
    print(f"torch solve {args.mixer}: {'reached' if ok else 'NOT reached'} acc {acc:.4f} after "
          f"{ep + 1} epochs in {secs:.2f} s (eager, bf16)")
    print(f"RESULT torch-solve {args.mixer} {ep + 1} {acc:.4f} {secs:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["step", "solve"])
    ap.add_argument("--mixer", default="softmax", help="a mixer, or a comma list (step)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--vocab", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--data")
    ap.add_argument("--budget", type=float, default=120.0, help="solve: seconds before giving up")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_ref.py: no CUDA device")
    cmd_step(args) if args.cmd == "step" else cmd_solve(args)


if __name__ == "__main__":
    main()
