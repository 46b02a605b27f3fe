// The attention block (q, k, v projection, the softmax / Parallax core, output projection)
// for precision=bf16 with its activations stored in bf16, as PyTorch's bf16 autocast stores
// a linear layer's output (MAD-Lab's mixed precision). At fp32 the block's matmuls ran
// cuBLAS's TF32 kernels on fp32 rows and every pass moved twice the bytes; here the
// matmuls take bf16 operands on Hopper's kernels and accumulate in fp32, the core reads
// and writes bf16 rows (AttnArgs.io_bf16, attention_tc_cuda.cu), and the weight gradients,
// dx and the output y stay fp32.
//   forward   xb = bf16(x), qkv = xb Wqkv^T + bqkv (bf16), o = core (bf16), y = o Wo^T + bo
//   backward  dyb = bf16(dy) and dbo += colsum(dy) in one pass, dob = dyb Wo (bf16), dWo += dyb^T o,
//             dqkv = core backward (bf16; the bias sums dbqkv and dr fp32),
//             dx = dqkv Wqkv (fp32, written), dWqkv += dqkv^T xb
// The weights and biases are rounded to bf16 once per forward (autocast casts them too).
#include "cuda_common.cuh"

namespace {

typedef __nv_bfloat16 bf16;

// the layer's bf16 tensors in one buffer (element offsets, each a multiple of 8: 16-byte
// aligned): activations and gradients [N, d or 3d], then Wqkv [3d, d], Wo [d, d] and bqkv,
// bo, side by side in the parameter vector's order (wq wk wv wo bq bk bv bo) so that one
// conversion serves them all where they are adjacent
struct Save {
    bf16 *xb, *qkv, *o, *dyb, *dob, *dqkv, *w, *wo, *bqkv, *bo;
};
size_t up8(size_t n) { return (n + 7) / 8 * 8; }
Save layout(void *p, int N, int d) {
    const size_t nd = (size_t)N * d, dd = (size_t)d * d;
    bf16 *b = (bf16 *)p;
    Save s;
    s.xb = b, b += up8(nd);
    s.qkv = b, b += up8(3 * nd);
    s.o = b, b += up8(nd);
    s.dyb = b, b += up8(nd);
    s.dob = b, b += up8(nd);
    s.dqkv = b, b += up8(3 * nd);
    s.w = b, s.wo = b + 3 * dd, s.bqkv = b + 4 * dd, s.bo = b + 4 * dd + 3 * d;
    return s;
}

size_t save_bytes(const AttnArgs *core) {
    if (!cu_attention_tc_io_bf16(core)) return 0;
    const size_t N = (size_t)core->B * core->T, d = (size_t)core->H * core->hd;
    return sizeof(bf16) * (up8(N * d) * 4 + up8(3 * N * d) * 2 + 4 * d * d + 4 * d);
}

// the core's arguments on the block's bf16 rows (r, obar, dr: [N, d], r's rows ld_r apart
// where that is set)
AttnArgs core_args(const AttnArgs *core, const Save &s) {
    const int d = core->H * core->hd;
    AttnArgs c = *core;
    c.io_bf16 = 1;
    c.ld_r = core->ld_r ? core->ld_r : d;
    c.q = (const float *)s.qkv, c.k = (const float *)(s.qkv + d), c.v = (const float *)(s.qkv + 2 * d);
    c.o = (float *)s.o, c.dout = (const float *)s.dob;
    c.dq = (float *)s.dqkv, c.dk = (float *)(s.dqkv + d), c.dv = (float *)(s.dqkv + 2 * d);
    c.ld_in = c.ld_dqkv = 3 * d;
    c.ld_out = d;
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

void forward(float *y, const float *x, const float *Wqkv, const float *bqkv, const float *Wo,
             const float *bo, const AttnArgs *core, void *save) {
    const int N = core->B * core->T, d = core->H * core->hd;
    const size_t dd = (size_t)d * d;
    Save s = layout(save, N, d);
    cu_to_bf16(s.xb, x, (long)N * d);
    if (Wo == Wqkv + 3 * dd && (!bqkv || (bqkv == Wo + dd && bo == bqkv + 3 * d))) {
        cu_to_bf16(s.w, Wqkv, (long)(4 * dd + (bqkv ? 4 * d : 0))); // one pass (the model's)
    } else {
        cu_to_bf16(s.w, Wqkv, (long)(3 * dd));
        cu_to_bf16(s.wo, Wo, (long)dd);
        if (bqkv) cu_to_bf16(s.bqkv, bqkv, 3L * d), cu_to_bf16(s.bo, bo, d);
    }
    linear<bf16>(s.qkv, CUDA_R_16BF, s.xb, s.w, bqkv ? s.bqkv : nullptr, N, d, 3 * d);
    const AttnArgs c = core_args(core, s);
    cu_attention_tc(&c, 0);
    linear<float>(y, CUDA_R_32F, s.o, s.wo, bo, N, d, d);
}

void backward(float *dx, float *dWqkv, float *dbqkv, float *dWo, float *dbo, const float *dy,
              const AttnArgs *core, void *save) {
    const int N = core->B * core->T, d = core->H * core->hd;
    Save s = layout(save, N, d);
    if (dbo) cu_colsum(dbo, dy, nullptr, nullptr, N, d, s.dyb); // dy's bf16 copy in the same pass
    else cu_to_bf16(s.dyb, dy, (long)N * d);
    cu_gemm_bf16(s.dob, CUDA_R_16BF, s.dyb, s.wo, N, d, d, 0, 0, 0.f);
    cu_gemm_bf16(dWo, CUDA_R_32F, s.dyb, s.o, d, d, N, 1, 0, 1.f);
    AttnArgs c = core_args(core, s);
    c.grads_write = 1;
    c.dbias = dbqkv;
    cu_attention_tc(&c, 1);
    cu_gemm_bf16(dx, CUDA_R_32F, s.dqkv, s.w, N, d, 3 * d, 0, 0, 0.f);
    cu_gemm_bf16(dWqkv, CUDA_R_32F, s.dqkv, s.xb, 3 * d, d, N, 1, 0, 1.f);
}

} // namespace

void cu_fill_attn_block(Ops *o, int p) {
    o->attn_block_save_bytes = p == 2 ? save_bytes : nullptr;
    o->attn_block_forward = p == 2 ? forward : nullptr;
    o->attn_block_backward = p == 2 ? backward : nullptr;
}
