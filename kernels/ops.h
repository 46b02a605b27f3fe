/* One table of operations.
 *
 * Model code calls these through a `const Ops *` and never knows which
 * backend runs them. kernels/cpu fills the table with the readable reference
 * (float, or double under PLAB_DOUBLE for gradient checks); kernels/cuda fills
 * it with CUDA kernels and cuBLAS. Every pointer argument is backend memory.
 *
 * Conventions (llm.c style):
 *   - row-major; shapes in the comment of each entry;
 *   - `*_backward` entries ACCUMULATE (+=) into gradient buffers unless the
 *     comment says "writes";
 *   - hyper-parameters that change during training (learning rate, loss
 *     normaliser) are read from backend memory so that a captured CUDA graph
 *     can be replayed without rebuilding it.
 * An entry may be NULL when a backend does not implement it yet; models check
 * with ops_require() at build time and report which op is missing. */
#ifndef PLAB_OPS_H
#define PLAB_OPS_H

#include <stddef.h>

#include "../core/real.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Arguments of the attention cores (softmax and Parallax share one kernel:
 * r == NULL is plain softmax attention). parallax_lla.md §3.4 / §3.6.
 * q, k, v, r, o: [B, T, H, hd] with row stride `ld` elements between tokens
 * (ld >= H*hd lets the cores read straight out of a fused projection: q, k, v
 * and their gradients in one [N, 3d] buffer each, ld_in = ld_dqkv = 3d).
 * Saved for backward: obar [B,T,H,hd] (softmax output, Parallax only),
 * lse [B,H,T] (log-sum-exp of the scaled logits), tbar [B,H,T] (Parallax). */
typedef struct {
    int B, T, H, hd;
    int ld_in;        /* row stride of q, k, v (elements) */
    int ld_out;       /* row stride of o, obar, dout, dr */
    int ld_r;         /* row stride of r (0: ld_in) */
    int ld_dqkv;      /* row stride of dq, dk, dv (0: ld_out) */
    real scale;       /* on q.k only; r.k is raw (§3.2) */
    int window;       /* 0 = full causal; W keeps keys i-W+1..i */
    const real *q, *k, *v, *r;
    real *o, *obar, *lse, *tbar;
    /* backward */
    const real *dout;
    real *dq, *dk, *dv, *dr; /* accumulate, or with grads_write are written (every row's
                              * hd columns of each head), so that the caller need not zero them */
    int grads_write;
    /* RoPE inside the core (rope_rot > 0: over the first rope_rot dims, base rope_base;
     * r too with rope_r), as rope_forward / rope_backward would do it but without their
     * passes where a backend can: the forward turns q, k, r IN PLACE before using them
     * (the backward then reads the turned values); the backward (needs grads_write)
     * leaves dq, dk, dr turned back, the gradients of q, k, r before their rotation.
     * r_roped: the forward finds r turned already (rmsnorm_rope_forward did it with the
     * probe's norm); the backward still turns dr back */
    int rope_rot, rope_r, r_roped;
    real rope_base;
    /* backward with grads_write: when not NULL, += the column sums of dq, dk, dv as
     * written, [q | k | v] (3*H*hd reals: the projections' bias gradients); needs dq, dk,
     * dv side by side in one row (dk = dq + H*hd, dv = dk + H*hd), the model's fused rows */
    real *dbias;
    real *scratch;           /* >= 2*B*H*T reals */
    /* q, k, v, r, o, obar, dout, dq, dk, dv, dr hold bf16, not real: set only inside the
     * CUDA backend's bf16 attention block (attn_block_forward); lse, tbar stay real */
    int io_bf16;
} AttnArgs;

/* The attention block of the softmax / Parallax core for a backend that runs it whole
 * with bf16 activations (Ops.attn_block_*):
 *   q | k | v = x Wqkv^T + bqkv      (one matmul, bf16 rows)
 *   r = RoPE(RMSNorm_head(x Wr^T) * r_norm)   (Parallax's probe, parallax_lla.md §3.2;
 *                                     turned when core.rope_r and core.rope_rot)
 *   o = attention core (q, k, v, r)  (AttnArgs core: B, T, H, hd, scale, window, RoPE,
 *                                     lse and tbar as attention_forward takes them; the
 *                                     rest is the block's own)
 *   y = o Wo^T + bo
 * Wqkv = [Wq; Wk; Wv] [3d,d], Wo [d,d], Wr [d,d], r_norm [hd]; bqkv [3d] and bo [d] both
 * or neither; Wr NULL: no probe (softmax). The backward adds into the d* gradients. */
typedef struct {
    const real *Wqkv, *bqkv, *Wo, *bo, *Wr, *r_norm;
    real *dWqkv, *dbqkv, *dWo, *dbo, *dWr, *dr_norm;
    real eps; /* of the probe's norm */
    AttnArgs core;
} AttnBlock;

/* a copy with the defaulted strides filled in (what every backend reads) */
static inline AttnArgs attn_strides(const AttnArgs *a) {
    AttnArgs s = *a;
    if (!s.ld_r) s.ld_r = s.ld_in;
    if (!s.ld_dqkv) s.ld_dqkv = s.ld_out;
    return s;
}

/* The training step's tail (Ops.head_loss_step), for a model whose final norm feeds only
 * the head (model.c):
 *   r = x + y                           (the last residual add; y NULL: r = x)
 *   f = rmsnorm(r) * norm_w             (the final norm)
 *   logits = f W^T + b                  (the head, W [V,C], b [V])
 *   loss[0] += crossentropy's sum       (as Ops.crossentropy, ignore index and inv_count)
 *   dx = dloss / dr                     (writes, [N,C])
 *   dnorm_w, dW, db += their gradients
 * mlp_save (may be NULL): the last bf16 MLP's state, which also gets dx in bf16 (its output
 * gradient, slot 1: as rmsnorm_backward_bf16 writes it). Nothing else is written: not r, f or the logits. */
typedef struct {
    const real *x, *y, *norm_w, *W, *b, *inv_count;
    const int *targets;
    real *loss, *dx, *dnorm_w, *dW, *db;
    void *mlp_save;
    int N, C, V;
    real eps;
} HeadLoss;

/* Optimizer hyper-parameters, stored in backend memory, refreshed every step. */
typedef struct {
    real lr;     /* learning rate of this step */
    real wd;     /* decoupled weight decay of this step (already annealed) */
    real beta1, beta2, eps;
    real bc1, bc2; /* bias corrections 1-beta^t */
} OptHyper;

/* Op groups of larger mechanisms live in their own headers and are reached
 * through these pointers (NULL when a backend lacks the group). */
typedef struct FamilyOps FamilyOps; /* kernels/ops_family.h: LLA / attention family cores */
typedef struct ScanOps ScanOps;     /* kernels/ops_scan.h: Mamba, SSD, linear attention */
typedef struct DeltaOps DeltaOps;   /* kernels/ops_delta.h: DeltaNet, GDN, KDA, MesaNet */

typedef struct Ops {
    const char *name; /* "cpu" or "cuda" */

    /* ---- memory ---------------------------------------------------------------- */
    void *(*alloc)(size_t bytes); /* zero-filled */
    void (*release)(void *p);
    void (*to_device)(void *dst, const void *src, size_t bytes);
    void (*to_host)(void *dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*sync)(void);

    /* ---- dense algebra --------------------------------------------------------- */
    /* C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C; A is [M,K] or (transA) [K,M]. */
    void (*matmul)(real *C, const real *A, const real *B, int M, int N, int K, int transA,
                   int transB, real alpha, real beta);
    /* Optional: y[N,out] = x[N,in] W[out,in]^T + b in one pass (writes); NULL, or
     * returning 0 when it did nothing: then layers.h runs matmul and add_bias */
    int (*linear_bias_forward)(real *y, const real *x, const real *W, const real *b, int N, int in,
                               int out);
    /* the same for `batch` matrices spaced by sA, sB, sC elements */
    void (*matmul_strided)(real *C, const real *A, const real *B, int M, int N, int K,
                           int transA, int transB, real alpha, real beta, int batch, long sA,
                           long sB, long sC);
    /* Optional: a linear layer's parameter gradients, dW[M,N] += dY^T X over K rows (dY
     * [K,M], X [K,N]) and (db not NULL) db[M] += colsum dY. Nothing reads a parameter
     * gradient before the optimizer, so the backend may finish the sums later (CUDA: the
     * split-K parts and the column sums in one deferred launch). NULL: matmul, bias_backward. */
    void (*linear_param_grad)(real *dW, real *db, const real *dY, const real *X, int M, int N, int K);
    void (*add_bias)(real *y, const real *b, int N, int C);      /* y[N,C] += b[C] */
    void (*bias_backward)(real *db, const real *dy, int N, int C); /* db[C] += sum_n dy[n,C] */
    void (*axpy)(real *y, const real *x, real a, long n);          /* y += a x */
    void (*scale)(real *x, real a, long n);                        /* x *= a */
    void (*sumsq)(real *out, const real *x, long n);               /* out[0] = sum x^2 (writes) */
    /* x *= 1 / (sqrt(s[0]) + eps): Frobenius normalisation without a host round trip */
    void (*scale_rsqrt)(real *x, const real *s, real eps, long n);

    /* ---- layers ---------------------------------------------------------------- */
    /* out[N,C] = x * rstd * w (w may be NULL), rstd[N] = 1/sqrt(mean(x^2)+eps) (writes) */
    void (*rmsnorm_forward)(real *out, real *rstd, const real *x, const real *w, int N, int C,
                            real eps);
    /* per-head rmsnorm_forward of x [N tokens, H, hd] (rows of hd, rstd [N*H]), then
     * rope_forward of out on its first rot dims (rot = 0: none), in one pass where a
     * backend can: the Parallax probe's norm and rotation (attention.c) */
    void (*rmsnorm_rope_forward)(real *out, real *rstd, const real *x, const real *w, int N, int T,
                                 int H, int hd, int rot, real base, real eps);
    /* the residual add and the norm that reads its result, in one pass:
     * out = x + y, then (norm_out given) rmsnorm_forward(norm_out, rstd, out, w) (writes) */
    void (*residual_rmsnorm_forward)(real *out, const real *x, const real *y, real *norm_out,
                                     real *rstd, const real *w, int N, int C, real eps);
    /* dx[N,C] += ..., dw[C] += ... (dw may be NULL when w is NULL) */
    void (*rmsnorm_backward)(real *dx, real *dw, const real *dout, const real *x, const real *w,
                             const real *rstd, int N, int C);
    /* the same with dx = (not +=): no zeroing pass first. NULL: layers.h zeroes, then adds */
    void (*rmsnorm_backward_write)(real *dx, real *dw, const real *dout, const real *x,
                                   const real *w, const real *rstd, int N, int C);
    /* out[N,C] = table[tokens[n], :] (writes) */
    void (*embedding_forward)(real *out, const int *tokens, const real *table, int N, int C);
    /* Optional: embedding_forward, then rmsnorm_forward(nout, rstd, out, w) in one pass
     * (writes); returns 0 when it did nothing */
    int (*embedding_rmsnorm_forward)(real *out, const int *tokens, const real *table, real *nout,
                                     real *rstd, const real *w, int N, int C, real eps);
    /* dtable[V,C] += scatter of dout by token */
    void (*embedding_backward)(real *dtable, const real *dout, const int *tokens, int N, int C,
                               int V);
    /* h = silu(a) * b (writes); h [N,F] packed, a and b rows ld apart (ld = 2F when
     * they sit side by side in one matmul's output) */
    void (*swiglu_forward)(real *h, const real *a, const real *b, int N, int F, int ld);
    /* da, db (writes, rows ld apart like a, b) from dh [N,F] */
    void (*swiglu_backward)(real *da, real *db, const real *dh, const real *a, const real *b,
                            int N, int F, int ld);
    /* bf16 block states. The bf16 blocks below (mlp_*, attn_block_*) keep their activations
     * in a backend-private state between forward and backward, which begins with two [N, d]
     * bf16 slots that the model's norms read and write directly (no fp32 copy, no pass):
     *   slot 0: the block's input (residual_rmsnorm_bf16_forward writes it; the forward is
     *           then called with x = NULL), and after the backward, when it is called with
     *           dx = NULL, the input gradient (rmsnorm_backward_bf16 reads it);
     *   slot 1: the output, when the forward is called with y = NULL (the next
     *           residual_rmsnorm_bf16_forward reads it), then the output gradient
     *           (rmsnorm_backward_bf16 writes it; the backward is then called with dy = NULL).
     * Optional (CUDA bf16): the whole SwiGLU MLP y[N,d] = (silu(x W1^T) * x W3^T) W2^T with
     * W13 = [W1; W3] ([2F,d]) and its hidden activations kept in `save`
     * (mlp_save_bytes(N, d, F) bytes) between forward and backward. Forward writes y (or slot 1);
     * backward (the same W13, W2) writes dx and adds into dW13, dW2. NULL: the model composes
     * matmul and swiglu. */
    size_t (*mlp_save_bytes)(int N, int d, int F);
    void (*mlp_forward)(real *y, const real *x, const real *W13, const real *W2, void *save, int N,
                        int d, int F);
    void (*mlp_backward)(real *dx, real *dW13, real *dW2, const real *dy, const real *W13,
                         const real *W2, void *save, int N, int d, int F);
    /* Optional (bf16): residual_rmsnorm_forward whose norm output goes, in bf16 only, into
     * slot 0 of a bf16 block state `save` (above): the block's input. y = NULL and y_state:
     * y is the bf16 output of the block before, in slot 1 of its state. tokens (then y =
     * NULL, y_state = NULL): out = x[tokens[n], :], embedding_rmsnorm_forward's sum.
     * Returns 0 when it did nothing (never with y_state). */
    int (*residual_rmsnorm_bf16_forward)(real *out, const real *x, const real *y,
                                         const void *y_state, const int *tokens, void *save,
                                         real *rstd, const real *w, int N, int C, real eps);
    /* Optional (with the bf16 blocks): rmsnorm_backward (write: dx =, else +=) whose dout is
     * fp32, or (dout NULL) a bf16 block's input gradient in slot 0 of dout_state, and whose dx
     * is also written in bf16 into slot 1 of dx_state (NULL: not), a bf16 block's output
     * gradient, and (dx_colsum not NULL) its column sums added into dx_colsum [C] (that
     * block's output bias gradient). Returns 0 when it did nothing (then dout is not NULL). */
    int (*rmsnorm_backward_bf16)(real *dx, real *dw, const real *dout, const void *dout_state,
                                 const real *x, const real *w, const real *rstd, int N, int C,
                                 int write, void *dx_state, real *dx_colsum);
    /* Optional (CUDA bf16): the plain attention core's whole block with its activations in
     * bf16 (AttnBlock, above), as PyTorch's bf16 autocast stores them. save: per layer,
     * attn_block_save_bytes bytes, kept from forward to backward; 0 bytes: no block for
     * these arguments (the model composes the other ops). Forward writes y [N,d] (fp32)
     * and core.lse, core.tbar; backward writes dx [N,d] and adds into the gradients. x, dy, dx
     * may be NULL: in the state's slots (bf16 block states, above); dy = NULL: dbo too was
     * added by the norm's backward that wrote dy (rmsnorm_backward_bf16's dx_colsum). */
    size_t (*attn_block_save_bytes)(const AttnBlock *blk);
    void (*attn_block_forward)(real *y, const real *x, const AttnBlock *blk, void *save);
    void (*attn_block_backward)(real *dx, const real *dy, const AttnBlock *blk, void *save);
    /* Optional (CUDA bf16): params (n reals, a model's parameter vector) rounded to bf16 once
     * at the start of a forward; the bf16 blocks above then read their weights from this
     * copy, in that forward and the backward after it, instead of rounding their own (one
     * launch a step, not one or two a block). Weights outside any such vector are rounded
     * by their block as before. */
    void (*params_bf16)(const real *params, long n);
    /* y = GELU(x) = x Phi(x), the exact erf form (torch nn.GELU), all [n] (writes) */
    void (*gelu_forward)(real *y, const real *x, long n);
    /* dx = dy (Phi(x) + x phi(x)) (writes) */
    void (*gelu_backward)(real *dx, const real *dy, const real *x, long n);
    /* Rotary embedding, GPT-NeoX "rotate half" layout on the first `rot` dims of each head
     * (baselines.md §2). x [B*T, H, hd] with row stride ld; position = row % T. In place. */
    void (*rope_forward)(real *x, int N, int T, int H, int hd, int ld, int rot, real base);
    /* inverse rotation of a gradient, in place */
    void (*rope_backward)(real *dx, int N, int T, int H, int hd, int ld, int rot, real base);
    /* out[n,h,:] = x[n,h,:] * sigmoid(g[n,h]) (writes); x, out [N,H,hd] */
    void (*gate_forward)(real *out, const real *x, const real *g, int N, int H, int hd);
    /* dx += dout*sigmoid(g); dg += sum_j dout*x*sigmoid'(g) */
    void (*gate_backward)(real *dx, real *dg, const real *dout, const real *x, const real *g,
                          int N, int H, int hd);
    /* Short causal depthwise convolution (baselines.md §1.1) of Mamba, the delta rule and
     * MesaNet, kernel width W, zero left padding; x, pre, y [B,T,C], w [C,W], b [C] or NULL:
     *   pre[b,t,c] = b[c] + sum_i w[c,i] x[b,t-W+1+i,c]   (W == 0: pre = x + b)
     *   y = silu(pre) when `silu`, else pre.  Writes y and pre (saved for backward). */
    void (*conv_forward)(real *y, real *pre, const real *x, const real *w, const real *b, int B,
                         int T, int C, int W, int silu);
    /* dx [B,T,C], dw [C,W], db [C] accumulate (db may be NULL) */
    void (*conv_backward)(real *dx, real *dw, real *db, const real *dy, const real *x,
                          const real *w, const real *pre, int B, int T, int C, int W, int silu);

    /* Fused softmax cross-entropy with ignore index -100 (forward and backward at once).
     * loss[0] += inv_count[0] * sum of per-token NLL over valid targets (accumulates);
     * dlogits[N,V] = (softmax - onehot) * inv_count[0] on valid rows, 0 elsewhere (writes). */
    void (*crossentropy)(real *loss, real *dlogits, const real *logits, const int *targets,
                         const real *inv_count, int N, int V);
    /* Optional: the whole HeadLoss (above) in one pass; returns 0 when it did nothing (the
     * model then runs the norm, head and crossentropy forward and backward one by one) */
    int (*head_loss_step)(const HeadLoss *h);
    /* Evaluation: pred[n] = argmax logits, nll[n] = -log p(target) (0 when ignored). */
    void (*predict)(int *pred, real *nll, const real *logits, const int *targets, int N, int V);

    /* ---- sequence mixers ------------------------------------------------------- */
    void (*attention_forward)(const AttnArgs *a);  /* softmax or Parallax (a->r != NULL) */
    void (*attention_backward)(const AttnArgs *a);

    /* ---- optimizers ------------------------------------------------------------ */
    /* AdamW with decoupled weight decay and bias correction; wd_on selects decay. */
    void (*adamw)(real *p, const real *g, real *m, real *v, long n, const OptHyper *h, int wd_on);
    /* Muon momentum: nesterov / ema variants (baselines.md §10.2). u = update input (writes). */
    void (*muon_momentum)(real *u, real *buf, const real *g, long n, real mu, int nesterov,
                          int ema);
    /* p = p*(1 - lr*wd) - lr*scale*o */
    void (*muon_apply)(real *p, const real *o, long n, const OptHyper *h, real scale);

    /* ---- op groups ------------------------------------------------------------- */
    const FamilyOps *family;
    const ScanOps *scan;
    const DeltaOps *delta;

    /* ---- CUDA graphs (NULL on the CPU) ------------------------------------------- */
    /* Every op enqueued between graph_begin and graph_end is recorded, not run;
     * graph_launch replays the recording asynchronously. No alloc inside. */
    void (*graph_begin)(void);
    void *(*graph_end)(void);
    void (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);
} Ops;

const Ops *ops_cpu(void);
/* NULL when built without CUDA or when no device is usable; `why` explains. */
const Ops *ops_cuda(int device, const char *precision, char *why, size_t whylen);
/* Picks a backend from a device string ("cpu", "cuda", "cuda:1"). */
const Ops *ops_for_device(const char *device, const char *precision, char *why, size_t whylen);

#ifdef __cplusplus
}
#endif

#endif
