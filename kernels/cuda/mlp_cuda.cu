// The SwiGLU MLP for precision=bf16 with its hidden activations stored in bf16, as
// PyTorch's bf16 autocast stores a linear layer's output (MAD-Lab's mixed precision):
// the [N, 2F] gate/up projection, the [N, F] product and their gradients are the
// largest tensors of a MAD step, and at fp32 the MLP's matmuls and SwiGLU passes are
// bound by moving them. Matmuls take bf16 operands and accumulate in fp32 (cuBLAS
// COMPUTE_32F); the MLP's output, the weight gradients and dx stay fp32.
//   forward   xb = bf16(x) (or written by the norm before), ab = xb W13^T (bf16), h = silu(a) b (bf16),
//             y = h W2^T (fp32, or bf16 in dyb's slot for the norm after)
//   backward  dyb = bf16(dy) (or written by the norm's backward), dh = dyb W2 (bf16), dW2 += dyb^T h, dab = SwiGLU' (bf16),
//             dW13 += dab^T xb, dx = dab W13 (fp32 written, or bf16 into xb's slot for the norm's backward)
// W13 = [W1; W3] ([2F, d]: the model's adjacent W1, W3), a and b side by side in ab's
// rows.
#include <cuda_bf16.h>

#include "cuda_common.cuh"

namespace {

typedef __nv_bfloat16 bf16;

// the forward's saved tensors, in one buffer per layer (element offsets), and the output
// gradient dyb; xb (the input, then the input gradient) and dyb are slots 0 and 1 of the
// bf16 block state (ops.h), which the model's norms read and write
struct Save {
    bf16 *xb, *dyb, *ab, *h, *w13, *w2;
};
Save layout(void *p, int N, int d, int F) {
    Save s;
    s.xb = cu_state_slot(p, N, d, 0);
    s.dyb = cu_state_slot(p, N, d, 1);
    bf16 *b = cu_state_slot(p, N, d, 2);
    s.ab = b, b += (size_t)N * 2 * F;
    s.h = b, b += (size_t)N * F;
    s.w13 = b, b += (size_t)2 * F * d;
    s.w2 = b;
    return s;
}
size_t save_bytes(int N, int d, int F) {
    return sizeof(bf16) * (2 * cu_slot_elems(N, d) + (size_t)N * 3 * F + (size_t)3 * F * d);
}

// h = silu(a) b in fp32 from bf16 a, b (rows 2F apart), rounded once to bf16
__global__ void swiglu_fwd_bf16_kernel(bf16 *h, const bf16 *ab, int F, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t j = (size_t)(i / F) * 2 * F + i % F;
    float a = __bfloat162float(ab[j]), b = __bfloat162float(ab[j + F]);
    h[i] = __float2bfloat16_rn(a * cu_sigmoid(a) * b);
}
__global__ void swiglu_bwd_bf16_kernel(bf16 *dab, const bf16 *dh, const bf16 *ab, int F, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t j = (size_t)(i / F) * 2 * F + i % F;
    float a = __bfloat162float(ab[j]), b = __bfloat162float(ab[j + F]), g = __bfloat162float(dh[i]);
    float s = cu_sigmoid(a);
    dab[j] = __float2bfloat16_rn(g * b * s * (1.f + a * (1.f - s)));
    dab[j + F] = __float2bfloat16_rn(g * a * s);
}

// The same two kernels 8 elements a thread (16-byte loads and stores; F % 8 == 0 and
// aligned rows): the same arithmetic per element, so the same bits.
typedef __nv_bfloat162 bf162;
__global__ void swiglu_fwd_bf16_v8_kernel(bf16 *h, const bf16 *ab, int F, long n8) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n8) return;
    const int F8 = F / 8;
    size_t j = (size_t)(i / F8) * 2 * F + 8 * (i % F8);
    uint4 av = *reinterpret_cast<const uint4 *>(ab + j), bv = *reinterpret_cast<const uint4 *>(ab + j + F), hv;
    const bf162 *a2 = reinterpret_cast<const bf162 *>(&av), *b2 = reinterpret_cast<const bf162 *>(&bv);
    bf162 *h2 = reinterpret_cast<bf162 *>(&hv);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 a = __bfloat1622float2(a2[k]), b = __bfloat1622float2(b2[k]);
        h2[k] = __floats2bfloat162_rn(a.x * cu_sigmoid(a.x) * b.x, a.y * cu_sigmoid(a.y) * b.y);
    }
    *reinterpret_cast<uint4 *>(h + 8 * i) = hv;
}
__global__ void swiglu_bwd_bf16_v8_kernel(bf16 *dab, const bf16 *dh, const bf16 *ab, int F, long n8) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n8) return;
    const int F8 = F / 8;
    size_t j = (size_t)(i / F8) * 2 * F + 8 * (i % F8);
    uint4 av = *reinterpret_cast<const uint4 *>(ab + j), bv = *reinterpret_cast<const uint4 *>(ab + j + F);
    uint4 gv = *reinterpret_cast<const uint4 *>(dh + 8 * i), dav, dbv;
    const bf162 *a2 = reinterpret_cast<const bf162 *>(&av), *b2 = reinterpret_cast<const bf162 *>(&bv);
    const bf162 *g2 = reinterpret_cast<const bf162 *>(&gv);
    bf162 *da2 = reinterpret_cast<bf162 *>(&dav), *db2 = reinterpret_cast<bf162 *>(&dbv);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 a = __bfloat1622float2(a2[k]), b = __bfloat1622float2(b2[k]), g = __bfloat1622float2(g2[k]);
        float sx = cu_sigmoid(a.x), sy = cu_sigmoid(a.y);
        da2[k] = __floats2bfloat162_rn(g.x * b.x * sx * (1.f + a.x * (1.f - sx)),
                                       g.y * b.y * sy * (1.f + a.y * (1.f - sy)));
        db2[k] = __floats2bfloat162_rn(g.x * a.x * sx, g.y * a.y * sy);
    }
    *reinterpret_cast<uint4 *>(dab + j) = dav;
    *reinterpret_cast<uint4 *>(dab + j + F) = dbv;
}
void swiglu_fwd_bf16(bf16 *h, const bf16 *ab, int N, int F) {
    long n = (long)N * F;
    if (F % 8 == 0 && cu_aligned16(h, ab))
        swiglu_fwd_bf16_v8_kernel<<<cu_blocks(n / 8, 256), 256, 0, cu.stream>>>(h, ab, F, n / 8);
    else
        swiglu_fwd_bf16_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(h, ab, F, n);
    CKL();
}
void swiglu_bwd_bf16(bf16 *dab, const bf16 *dh, const bf16 *ab, int N, int F) {
    long n = (long)N * F;
    if (F % 8 == 0 && cu_aligned16(dab, dh, ab))
        swiglu_bwd_bf16_v8_kernel<<<cu_blocks(n / 8, 256), 256, 0, cu.stream>>>(dab, dh, ab, F, n / 8);
    else
        swiglu_bwd_bf16_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dab, dh, ab, F, n);
    CKL();
}

// the weights in bf16: views of the model's copy (Ops.params_bf16), or the block's own in save
// (w13, w2), which the forward rounds
struct Weights {
    const bf16 *w13, *w2;
    bool own;
};
Weights weights(const float *W13, const float *W2, const Save &s, int d, int F) {
    const bf16 *a = cu_params_bf16_of(W13, 2L * F * d), *b = cu_params_bf16_of(W2, (long)d * F);
    if (a && b) return {a, b, false};
    return {s.w13, s.w2, true};
}

void mlp_forward(float *y, const float *x, const float *W13, const float *W2, void *save, int N,
                 int d, int F) {
    Save s = layout(save, N, d, F);
    if (x) cu_to_bf16(s.xb, x, (long)N * d); // else residual_rmsnorm_bf16_forward wrote it
    const Weights w = weights(W13, W2, s, d, F);
    if (w.own && W2 == W13 + 2L * F * d) { // adjacent parameters (the model's): one conversion
        cu_to_bf16(s.w13, W13, 3L * F * d);
    } else if (w.own) {
        cu_to_bf16(s.w13, W13, 2L * F * d);
        cu_to_bf16(s.w2, W2, (long)d * F);
    }
    cu_gemm_bf16(s.ab, CUDA_R_16BF, s.xb, w.w13, N, 2 * F, d, 0, 1, 0.f);
    swiglu_fwd_bf16(s.h, s.ab, N, F);
    if (y) cu_gemm_bf16(y, CUDA_R_32F, s.h, w.w2, N, d, F, 0, 1, 0.f);
    else cu_gemm_bf16(s.dyb, CUDA_R_16BF, s.h, w.w2, N, d, F, 0, 1, 0.f); // slot 1, for the norm after
}

void mlp_backward(float *dx, float *dW13, float *dW2, const float *dy, const float *W13,
                  const float *W2, void *save, int N, int d, int F) {
    Save s = layout(save, N, d, F);
    const Weights w = weights(W13, W2, s, d, F);
    bf16 *dyb = s.dyb, *dh = (bf16 *)cu_scratch(((size_t)N * 3 * F + 1) / 2); // dh [N,F], dab [N,2F]
    bf16 *dab = dh + (size_t)N * F;
    if (dy) cu_to_bf16(dyb, dy, (long)N * d); // else the norm's backward wrote it
    cu_gemm_bf16(dh, CUDA_R_16BF, dyb, w.w2, N, F, d, 0, 0, 0.f);
    swiglu_bwd_bf16(dab, dh, s.ab, N, F);
    cu_grad_gemm_bf16(dW2, dyb, s.h, d, F, N);
    cu_grad_gemm_bf16(dW13, dab, s.xb, 2 * F, d, N);
    if (dx) cu_gemm_bf16(dx, CUDA_R_32F, dab, w.w13, N, d, 2 * F, 0, 0, 0.f);
    else cu_gemm_bf16(s.xb, CUDA_R_16BF, dab, w.w13, N, d, 2 * F, 0, 0, 0.f); // xb is done with

}

} // namespace

void cu_fill_mlp(Ops *o, int p) {
    o->mlp_save_bytes = p == 2 ? save_bytes : nullptr;
    o->mlp_forward = p == 2 ? mlp_forward : nullptr;
    o->mlp_backward = p == 2 ? mlp_backward : nullptr;
}
