// The attention block (q, k, v projection, Parallax's probe, the softmax / Parallax core,
// output projection; AttnBlock in kernels/ops.h) for precision=bf16 with its activations
// stored in bf16, as PyTorch's bf16 autocast stores a linear layer's output (MAD-Lab's
// mixed precision). At fp32 the block's matmuls ran cuBLAS's TF32 kernels on fp32 rows
// and every pass moved twice the bytes; here the matmuls take bf16 operands on Hopper's
// kernels and accumulate in fp32, the core reads and writes bf16 rows (AttnArgs.io_bf16,
// attention_tc_cuda.cu), and the weight gradients, dx and the output y stay fp32.
//   forward   xb = bf16(x), qkv = xb Wqkv^T + bqkv, rl = xb Wr^T, r = RoPE(norm(rl) r_norm),
//             o = core(q, k, v, r), y = o Wo^T + bo   (bf16 but y, unless y goes to dyb's slot for
//                                                      the norm after)
//   backward  dyb = bf16(dy) with dbo += colsum(dy) in one pass (or both by the norm's backward),
//             dob = dyb Wo, dWo += dyb^T o,
//             dqkv, dr = core backward (the bias sums dbqkv inside), dl = norm backward (dr),
//             dWqkv += dqkv^T xb, dWr += dl^T xb, dx = dqkv Wqkv + dl Wr (fp32, or bf16 in xb's slot)
// The weights and biases are rounded to bf16 once per forward (autocast casts them too): the
// model's whole parameter vector at once (Ops.params_bf16), or here.
#include <cstring>

#include "cuda_common.cuh"

namespace {

typedef __nv_bfloat16 bf16;
constexpr int HD = 8; // the head dim the core runs on bf16 rows (cu_attention_tc_io_bf16)

// the layer's tensors in one buffer (bf16 element offsets, each a multiple of 8: 16-byte
// aligned): activations and gradients [N, d or 3d], the input xb (then the input gradient)
// and the output gradient dyb first, slots 0 and 1 of the bf16 block state (ops.h), which
// the model's norms read and write; the weights in the parameter vector's
// order (wq wk wv wo bq bk bv bo wr), so that one conversion serves them where they are
// adjacent; then the probe norm's rstd [N*H] (fp32)
struct Save {
    bf16 *xb, *qkv, *o, *obar, *rl, *r, *dyb, *dob, *dqkv, *dr, *dl, *w, *wo, *bqkv, *bo, *wr;
    float *rsr;
};
size_t up8(size_t n) { return (n + 7) / 8 * 8; }
Save layout(void *p, int N, int d) {
    const size_t nd = up8((size_t)N * d), dd = (size_t)d * d;
    bf16 *b = (bf16 *)p;
    Save s;
    bf16 **one[] = {&s.xb, &s.dyb, &s.o, &s.obar, &s.rl, &s.r, &s.dob, &s.dr, &s.dl};
    for (bf16 **x : one) *x = b, b += nd;
    s.qkv = b, b += 3 * nd;
    s.dqkv = b, b += 3 * nd;
    s.w = b, s.wo = b + 3 * dd, s.bqkv = b + 4 * dd, s.bo = s.bqkv + 3 * d, s.wr = s.bo + d;
    b += up8(5 * dd + 4 * (size_t)d);
    s.rsr = (float *)b;
    return s;
}

size_t save_bytes(const AttnBlock *blk) {
    const AttnArgs *c = &blk->core;
    // a probe is the block's own (c->r is ignored), normed; RoPE on it is the core's rot
    AttnArgs shape = *c;
    shape.r = nullptr;
    if (!cu_attention_tc_io_bf16(&shape) || (blk->Wr && !blk->r_norm)) return 0;
    if ((blk->bqkv == nullptr) != (blk->bo == nullptr)) return 0;
    const size_t N = (size_t)c->B * c->T, d = (size_t)c->H * c->hd;
    return sizeof(bf16) * (15 * up8(N * d) + up8(5 * d * d + 4 * d)) + /* layout: 9 [N,d], 2 [N,3d] */
           sizeof(float) * N * c->H;
}

// the core's arguments on the block's bf16 rows
AttnArgs core_args(const AttnBlock *blk, const Save &s) {
    const int d = blk->core.H * blk->core.hd;
    AttnArgs c = blk->core;
    c.io_bf16 = 1;
    c.q = (const float *)s.qkv, c.k = (const float *)(s.qkv + d), c.v = (const float *)(s.qkv + 2 * d);
    c.r = blk->Wr ? (const float *)s.r : nullptr, c.r_roped = 1; // turned by the probe's norm
    c.o = (float *)s.o, c.obar = (float *)s.obar, c.dout = (const float *)s.dob;
    c.dq = (float *)s.dqkv, c.dk = (float *)(s.dqkv + d), c.dv = (float *)(s.dqkv + 2 * d);
    c.dr = (float *)s.dr;
    c.ld_in = c.ld_dqkv = 3 * d;
    c.ld_out = c.ld_r = d;
    return c;
}

template <typename T> __device__ __forceinline__ void add_to(T *p, float v) { *p = (float)*p + v; }
template <> __device__ __forceinline__ void add_to(bf16 *p, float v) {
    *p = __float2bfloat16_rn(__bfloat162float(*p) + v);
}
// y[n, c] += b[c] (where cuBLASLt has no bias epilogue for the shape)
template <typename T> __global__ void add_bias_kernel(T *y, const T *b, long n, int C) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) add_to(y + i, (float)b[i % C]);
}
// y = x W^T + b, x and W bf16, y of type yt (b of y's type, or NULL)
template <typename T>
void linear(T *y, cudaDataType yt, const bf16 *x, const bf16 *W, const T *b, int N, int in, int out) {
    if (cu_linear_bf16(y, yt, x, W, b, N, in, out)) return;
    cu_gemm_bf16(y, yt, x, W, N, out, in, 0, 1, 0.f);
    if (!b) return;
    const long n = (long)N * out;
    add_bias_kernel<T><<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, b, n, out);
    CKL();
}

// ---- the probe's per-head RMSNorm (head dim 8) with RoPE, on bf16 rows ------------------
// as rmsnorm_rope_forward / rmsnorm_backward_write (layers_cuda.cu) compute them, a thread
// per (token, head) row of 8: one 16-byte load and store
__device__ __forceinline__ void load8(float (&v)[HD], const bf16 *p) {
    uint4 w = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&w);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 f = __bfloat1622float2(h[k]);
        v[2 * k] = f.x, v[2 * k + 1] = f.y;
    }
}
__device__ __forceinline__ void store8(bf16 *p, const float (&v)[HD]) {
    uint4 w;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&w);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4 *>(p) = w;
}
// r = RoPE(rl * rstd * w) on the first rot dims (cs: cu_rope_table(T, 8, base), or null)
__global__ void probe_norm_fwd_kernel(bf16 *r, float *rstd, const bf16 *rl, const float *w, long NH,
                                      int H, int T, float eps, const float *cs) {
    const long row = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (row >= NH) return;
    float v[HD], ss = 0.f;
    load8(v, rl + row * HD);
#pragma unroll
    for (int c = 0; c < HD; c++) ss += v[c] * v[c];
    const float rs = (float)(1.0 / sqrt((double)(ss / HD + eps)));
    rstd[row] = rs;
#pragma unroll
    for (int c = 0; c < HD; c++) v[c] *= rs * w[c];
    if (cs) {
        const float *ct = cs + (size_t)2 * (row / H % T) * (HD / 2);
#pragma unroll
        for (int k = 0; k < HD / 2; k++) {
            const float c = ct[2 * k], s = ct[2 * k + 1], x1 = v[k], x2 = v[k + HD / 2];
            v[k] = x1 * c - x2 * s, v[k + HD / 2] = x2 * c + x1 * s;
        }
    }
    store8(r + row * HD, v);
}
// dl = rstd w g - rstd^3 / 8 x (sum_c w g x) (written); part: the block's sums of g x rstd per
// column (lanes, then the 8 warps in order), the weight gradient's first stage
__global__ void __launch_bounds__(256) probe_norm_bwd_kernel(bf16 *dl, float *part, const bf16 *g_,
                                                             const bf16 *x_, const float *w,
                                                             const float *rstd, long NH) {
    __shared__ float red[8][HD];
    const long row = blockIdx.x * (long)blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    float g[HD] = {}, x[HD] = {}, rs = 0.f;
    if (row < NH) {
        float d[HD], dot = 0.f;
        rs = rstd[row];
        load8(g, g_ + row * HD), load8(x, x_ + row * HD);
#pragma unroll
        for (int c = 0; c < HD; c++) dot += w[c] * g[c] * x[c];
#pragma unroll
        for (int c = 0; c < HD; c++) d[c] = rs * w[c] * g[c] - rs * rs * rs / HD * x[c] * dot;
        store8(dl + row * HD, d);
    }
#pragma unroll
    for (int c = 0; c < HD; c++) {
        const float t = warp_sum(g[c] * x[c] * rs); // rows >= NH add 0
        if (lane == 0) red[threadIdx.x / 32][c] = t;
    }
    __syncthreads();
    if (threadIdx.x < HD) {
        float t = 0.f;
        for (int k = 0; k < 8; k++) t += red[k][threadIdx.x];
        part[(size_t)blockIdx.x * HD + threadIdx.x] = t;
    }
}

// the weights in bf16: views of the model's copy (Ops.params_bf16), or the block's own in
// save (w, wo, bqkv, wr), which the forward rounds
struct Weights {
    const bf16 *w, *wo, *bqkv, *bo, *wr;
    bool own;
};
Weights weights(const AttnBlock *blk, const Save &s, int d) {
    const long dd = (long)d * d;
    const Weights m = {cu_params_bf16_of(blk->Wqkv, 3 * dd), cu_params_bf16_of(blk->Wo, dd),
                       blk->bqkv ? cu_params_bf16_of(blk->bqkv, 3L * d) : nullptr,
                       blk->bo ? cu_params_bf16_of(blk->bo, d) : nullptr,
                       blk->Wr ? cu_params_bf16_of(blk->Wr, dd) : nullptr, false};
    if (m.w && m.wo && (!blk->bqkv || (m.bqkv && m.bo)) && (!blk->Wr || m.wr)) return m;
    return {s.w, s.wo, s.bqkv, s.bo, s.wr, true};
}

void forward(float *y, const float *x, const AttnBlock *blk, void *save) {
    const AttnArgs *core = &blk->core;
    const int N = core->B * core->T, d = core->H * core->hd;
    const size_t dd = (size_t)d * d;
    Save s = layout(save, N, d);
    if (x) cu_to_bf16(s.xb, x, (long)N * d); // else residual_rmsnorm_bf16_forward wrote it
    const float *W = blk->Wqkv, *b = blk->bqkv;
    const Weights wb = weights(blk, s, d);
    const bool adjacent = blk->Wo == W + 3 * dd && (!b || (b == W + 4 * dd && blk->bo == b + 3 * d)) &&
                          (!blk->Wr || (b && blk->Wr == b + 4 * d));
    if (wb.own && adjacent) {
        cu_to_bf16(s.w, W, (long)(4 * dd + (b ? 4 * d : 0) + (blk->Wr ? dd : 0))); // one pass
    } else if (wb.own) {
        cu_to_bf16(s.w, W, (long)(3 * dd));
        cu_to_bf16(s.wo, blk->Wo, (long)dd);
        if (b) cu_to_bf16(s.bqkv, b, 3L * d), cu_to_bf16(s.bo, blk->bo, d);
        if (blk->Wr) cu_to_bf16(s.wr, blk->Wr, (long)dd);
    }
    linear<bf16>(s.qkv, CUDA_R_16BF, s.xb, wb.w, b ? wb.bqkv : nullptr, N, d, 3 * d);
    if (blk->Wr) {
        cu_gemm_bf16(s.rl, CUDA_R_16BF, s.xb, wb.wr, N, d, d, 0, 1, 0.f);
        const long nh = (long)N * core->H;
        const float *cs = core->rope_r && core->rope_rot ? cu_rope_table(core->T, HD, core->rope_base) : nullptr;
        probe_norm_fwd_kernel<<<cu_blocks(nh, 256), 256, 0, cu.stream>>>(s.r, s.rsr, s.rl, blk->r_norm,
                                                                         nh, core->H, core->T, blk->eps, cs);
        CKL();
    }
    const AttnArgs c = core_args(blk, s);
    cu_attention_tc(&c, 0);
    if (y) linear<float>(y, CUDA_R_32F, s.o, wb.wo, blk->bo, N, d, d);
    else linear<bf16>(s.dyb, CUDA_R_16BF, s.o, wb.wo, blk->bo ? wb.bo : nullptr, N, d, d); // slot 1

}

void backward(float *dx, const float *dy, const AttnBlock *blk, void *save) {
    const AttnArgs *core = &blk->core;
    const int N = core->B * core->T, d = core->H * core->hd;
    Save s = layout(save, N, d);
    const Weights wb = weights(blk, s, d);
    if (dy && blk->dbo) cu_grad_colsum(blk->dbo, dy, nullptr, nullptr, N, d, s.dyb); // dy in bf16, same pass
    else if (dy) cu_to_bf16(s.dyb, dy, (long)N * d); // (no dy: the norm's backward did both)
    cu_gemm_bf16(s.dob, CUDA_R_16BF, s.dyb, wb.wo, N, d, d, 0, 0, 0.f);
    cu_grad_gemm_bf16(blk->dWo, s.dyb, s.o, d, d, N);
    AttnArgs c = core_args(blk, s);
    c.grads_write = 1;
    c.dbias = blk->dbqkv;
    cu_attention_tc(&c, 1);
    cu_grad_gemm_bf16(blk->dWqkv, s.dqkv, s.xb, 3 * d, d, N);
    if (blk->Wr) {
        const long nh = (long)N * core->H;
        const int nb = cu_blocks(nh, 256);
        float *part = cu_parts((size_t)nb * HD);
        probe_norm_bwd_kernel<<<nb, 256, 0, cu.stream>>>(s.dl, part, s.dr, s.rl, blk->r_norm, s.rsr, nh);
        CKL();
        cu_grad_colsum_parts(blk->dr_norm, part, nb, HD);
        cu_grad_gemm_bf16(blk->dWr, s.dl, s.xb, d, d, N);
    }
    // dx = dqkv Wqkv (+ dl Wr): fp32, or (dx NULL) bf16 into xb's slot, which the weight
    // gradients above were the last to read (with a probe: each product rounded to bf16 as
    // it is added, as autocast sums the two linear layers' bf16 input gradients)
    void *out = dx ? (void *)dx : (void *)s.xb;
    const cudaDataType ot = dx ? CUDA_R_32F : CUDA_R_16BF;
    cu_gemm_bf16(out, ot, s.dqkv, wb.w, N, d, 3 * d, 0, 0, 0.f);
    if (blk->Wr) cu_gemm_bf16(out, ot, s.dl, wb.wr, N, d, d, 0, 0, 1.f);
}

} // namespace

// PLAB_ATTN_BLOCK=0 leaves the block out (the model composes the fp32-row ops, as before it):
// for A/B runs and as a fallback
void cu_fill_attn_block(Ops *o, int p) {
    const char *e = getenv("PLAB_ATTN_BLOCK");
    const bool on = p == 2 && !(e && !strcmp(e, "0"));
    o->attn_block_save_bytes = on ? save_bytes : nullptr;
    o->attn_block_forward = on ? forward : nullptr;
    o->attn_block_backward = on ? backward : nullptr;
}
