// Shared state and helpers of the CUDA backend (kernels/cuda/*.cu).
//
// One stream and one cuBLAS handle per process: every op is enqueued on that
// stream, so a whole training step can be captured into a CUDA graph and
// replayed. No op synchronises the host except to_host and sync.
// Reductions never use float atomics: each output is summed by one thread or
// one block in a fixed order, so the same inputs give bit-identical results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "../ops.h"

#define CK(call)                                                                           \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess) cu_die(__FILE__, __LINE__, #call, cudaGetErrorString(e_));   \
    } while (0)
#define CKB(call)                                                                          \
    do {                                                                                   \
        cublasStatus_t s_ = (call);                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            cu_die(__FILE__, __LINE__, #call, cublasGetStatusString(s_));                  \
    } while (0)
// after every kernel launch: catches bad launch configurations at once
#define CKL() CK(cudaGetLastError())

[[noreturn]] void cu_die(const char *file, int line, const char *what, const char *why);

constexpr size_t CU_BLAS_WS = 32u << 20;

struct CuState {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;     // cuBLAS (and cuBLASLt) workspace of CU_BLAS_WS bytes, fixed so that
                       // graph capture allocates nothing
    float *scratch;    // grows on demand (never during capture): see cu_scratch
    size_t scratch_n;
};
extern CuState cu;

// Scratch of at least n floats, valid until the next call. Growing it while a
// graph is being captured is a bug (the first step always runs uncaptured).
float *cu_scratch(size_t n);

// an A/B switch: the environment variable `name` set to 0 turns a fused path off
static inline bool cu_env_off(const char *name) {
    const char *e = getenv(name);
    return e && e[0] == '0' && !e[1];
}
static inline int cu_blocks(long n, int threads) { return (int)((n + threads - 1) / threads); }
// every pointer 16-byte aligned (float4 / uint4 access); nullptr counts as aligned
static inline bool cu_aligned16(const void *a, const void *b = nullptr, const void *c = nullptr,
                         const void *d = nullptr) {
    return ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) % 16 == 0;
}

__device__ __forceinline__ float cu_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// 2^x on the special-function unit (what __expf uses after its multiply by log2 e);
// 2^-inf = 0. The attention kernels fold the softmax scale and log2 e into q once.
__device__ __forceinline__ float cu_ex2(float x) {
#ifdef PLAB_EMU // CPU emulation (kernels/cuda/emu)
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// four adjacent elements as a float4: fp32 (16-byte access) or bf16 (8 bytes, rounded to
// nearest on the store)
__device__ __forceinline__ float4 ld4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
__device__ __forceinline__ float4 ld4(const __nv_bfloat16 *p) {
    const uint2 u = *reinterpret_cast<const uint2 *>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void st4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
__device__ __forceinline__ void st4(__nv_bfloat16 *p, float4 v) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    *reinterpret_cast<uint2 *>(p) = make_uint2(*reinterpret_cast<uint32_t *>(&lo), *reinterpret_cast<uint32_t *>(&hi));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// bf16 helpers (dense_cuda.cu): y = bf16(x), rounded to nearest; row-major C[M,N] = op(A) op(B)
// (+ beta C) with A, B bf16 and C bf16 or fp32 (ct), fp32 arithmetic (cublasGemmEx)
void cu_to_bf16(__nv_bfloat16 *y, const float *x, long n);
void cu_gemm_bf16(void *C, cudaDataType ct, const __nv_bfloat16 *A, const __nv_bfloat16 *B, int M,
                  int N, int K, int tA, int tB, float beta);
// the bf16 copy of weights w[0..n) kept by Ops.params_bf16 (dense_cuda.cu), or nullptr (then
// the block rounds its own); _out: the same for a kernel that writes w (it writes the copy
// too), nullptr when the copy is rounded at each forward instead; _sync: a copy, upload or
// zero into [dst, dst + bytes) has been queued, round what it covers; cu_release drops a copy
const __nv_bfloat16 *cu_params_bf16_of(const float *w, long n);
__nv_bfloat16 *cu_params_bf16_out(const float *w, long n);
void cu_params_bf16_sync(const void *dst, size_t bytes);
void cu_params_bf16_drop(const void *params);
// out[c] += sum_n a[n,c] * (b ? b[n,c] : 1) * (r ? r[n] : 1), deterministic (dense_cuda.cu);
// ab: a is also written in bf16 there, in the same pass where it can
void cu_colsum(float *out, const float *a, const float *b, const float *r, int N, int C,
               __nv_bfloat16 *ab = nullptr);
// The same into a weight gradient dw, whose last stage (a small pass) waits to run in one
// launch with every other pending one (cu_sums_flush): nothing may read dw before the flush
// that every host read, copy, zero, sync, optimizer op and graph end runs first.
void cu_grad_colsum(float *dw, const float *a, const float *b, const float *r, int N, int C,
                    __nv_bfloat16 *ab = nullptr);
// that last stage alone: dw[c] += sum_{s < S} part[s, c] in a fixed order, part from cu_parts
// (wide: 4 adjacent columns a thread, for thousands of columns; else a warp a column)
void cu_grad_colsum_parts(float *dw, const float *part, int S, int C, bool wide = false);
void cu_sums_flush();
// dW[M,N] += dY^T X over K rows (dY [K,M], X [K,N] bf16) into a weight gradient, its split-K
// partial products summed with the pending sums: nothing may read dW before the flush
void cu_grad_gemm_bf16(float *dW, const __nv_bfloat16 *dY, const __nv_bfloat16 *X, int M, int N,
                       int K);
// the same with fp32 operands at a table's precision (0 fp32, 1 tf32, 2 bf16)
void cu_grad_gemm(int precision, float *dW, const float *dY, const float *X, int M, int N, int K);
// memory for the parts of a pending sum (ops_cuda.cu), valid until the flush, which calls
// cu_parts_release
float *cu_parts(size_t n);
void cu_parts_release();
// RoPE (layers_cuda.cu): the table of (cos, sin) [T, rot/2, 2], made on first use (never
// inside a graph capture), and the rotation in place (sgn -1: the inverse)
const float *cu_rope_table(int T, int rot, float base);
void cu_rope_run(float *x, int N, int T, int H, int hd, int ld, int rot, float base, float sgn);
// AttnArgs.rope_rot by separate passes (attention_cuda.cu): sgn +1 turns q, k (r) before a
// forward, -1 turns dq, dk (dr) back after a backward; AttnArgs.dbias by a column sum after
void cu_attn_rope(const AttnArgs *a, float sgn);
void cu_attn_bias(const AttnArgs *a);

// slot k of a bf16 block's state (ops.h "bf16 block states": 0 its input and input
// gradient, 1 its output gradient), [N, C] bf16 each, 16-byte aligned
inline size_t cu_slot_elems(int N, int C) { return ((size_t)N * C + 7) / 8 * 8; }
inline __nv_bfloat16 *cu_state_slot(void *state, int N, int C, int k) {
    return (__nv_bfloat16 *)state + (size_t)k * cu_slot_elems(N, C);
}

// cuBLAS compute type of a table's precision (0 fp32, 1 tf32, 2 bf16): fp32 in and out,
// tensor-core operands rounded to tf32 or bf16 for 1 and 2
inline cublasComputeType_t cu_compute_type(int precision) {
    return precision == 0 ? CUBLAS_COMPUTE_32F
           : precision == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32
                            : CUBLAS_COMPUTE_32F_FAST_16BF;
}

// per op group (each .cu file fills its part of the table)
void cu_fill_dense(Ops *o, int precision); // 0 fp32, 1 tf32, 2 bf16
void cu_fill_linear(Ops *o, int precision);
void cu_fill_mlp(Ops *o, int precision);
void cu_fill_layers(Ops *o, int precision);
void cu_fill_loss(Ops *o, int precision);
void cu_fill_attention(Ops *o, int precision);
void cu_fill_optim(Ops *o);
void cu_fill_family(Ops *o); // family_cuda.cu: o->family (LLA, solved/learned probes, linear attention)
void cu_fill_scan(Ops *o);   // scan_cuda.cu: o->scan (Mamba-1, Mamba-2 SSD, softplus)
void cu_fill_delta(Ops *o);  // delta_cuda.cu: o->delta (DeltaNet, GDN, KDA, MesaNet)

// tensor-core attention for bf16 (attention_tc_cuda.cu): 0 when the head dim has no kernel
int cu_attention_tc(const AttnArgs *a, int backward);
// whether it runs these arguments on bf16 storage (AttnArgs.io_bf16) with q, k, v (dq, dk,
// dv) side by side in 16-byte aligned rows, as the bf16 attention block lays them out
bool cu_attention_tc_io_bf16(const AttnArgs *a);
void cu_fill_attn_block(Ops *o, int precision); // attn_block_cuda.cu
// softmax at head dim 8, T <= 128, bf16 rows (attention_short_cuda.cu): whether these
// arguments (after attn_strides) have its kernels; then the forward (after the RoPE pass),
// the backward (Tv, cs, part as attention_tc_cuda.cu's tc_bwd makes them)
bool cu_attn_short(const AttnArgs *a);
void cu_attn_short_fwd(const AttnArgs *a);
void cu_attn_short_bwd(const AttnArgs *a, float *Tv, const float *cs, float *part);

// y[N,out] = x[N,in] W[out,in]^T + b (b's type: y's) with bf16 x and W, y bf16 or fp32, on
// cuBLASLt with the bias in its epilogue (linear_cuda.cu); false where it has no kernel
bool cu_linear_bf16(void *y, cudaDataType yt, const __nv_bfloat16 *x, const __nv_bfloat16 *W,
                    const void *b, int N, int in, int out);
