// Device helpers shared by the tensor-core attention kernels (attention_tc_cuda.cu, the
// general one; attention_short_cuda.cu, head dim 8 at T <= 128): the block layout, the
// fragment helpers, RoPE turned back as gradients are written, the bias column sums.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

#include "cuda_common.cuh"
#include "mma_bf16.cuh"

namespace {

// rows per block: 128 is one block per (batch, head) at MAD's T = 128, so the other
// side is loaded once; it was 2.8% (softmax) and 1.6% (Parallax) faster per training
// step than 64 on the H100 (2026-11-23)
constexpr int ROWS = 128;
constexpr int WARPS = 4, NTHREADS = 32 * WARPS; // warp w: tiles w and ROWS / 16 - 1 - w

typedef __nv_bfloat16 bf16;
constexpr float L2E = 1.4426950408889634f;
constexpr float NEG_INF = -__builtin_huge_valf();

// The P operand of P V (16 rows x 16 columns) from two 16x8 tiles (columns 0-7, 8-15)
__device__ __forceinline__ void pack_tiles(uint32_t a[4], const float lo[4], const float hi[4]) {
    a[0] = pack2(lo[0], lo[1]), a[1] = pack2(lo[2], lo[3]);
    a[2] = pack2(hi[0], hi[1]), a[3] = pack2(hi[2], hi[3]);
}

// q, k, v, r, o, obar, dout and dq, dk, dv, dr are stored as TI: float, or bf16 in the bf16
// attention block (AttnArgs.io_bf16, attn_block_cuda.cu); lse and tbar stay float
__device__ __forceinline__ float ldf(const float *p) { return *p; }
__device__ __forceinline__ float ldf(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void stf(float *p, float v) { *p = v; }
__device__ __forceinline__ void stf(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }
template <typename TI> __device__ __forceinline__ const TI *as(const float *p) {
    return reinterpret_cast<const TI *>(p);
}
template <typename TI> __device__ __forceinline__ TI *as(float *p) { return reinterpret_cast<TI *>(p); }

template <typename P>
__device__ __forceinline__ P *row_ptr(P *p, int ld, int b, int t, int T, int h, int hd) {
    return p + ((size_t)b * T + t) * ld + (size_t)h * hd;
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- RoPE turned back as the backward writes (AttnArgs.rope_rot = HD = 8) ---------------
// Dims c and c + 4 of a head-dim-8 row turn together; a lane's fragment holds dims 2u and
// 2u + 1 of its rows, their partners sit in lane u ^ 2 (one shuffle). The (cos, sin) of
// the block's ROWS positions are staged in shared memory beside its first chunk, so the
// stores wait on no global load. Elsewhere attention_cuda.cu's pass turns them after.
constexpr int ROPE8 = ROWS * 4; // float2 entries of a block's table: [row][dim % 4]
__device__ __forceinline__ void rope8_rows_in(float2 *s, const float *cs, int r0, int T) {
    for (int x = threadIdx.x; x < ROPE8; x += NTHREADS)
        s[x] = reinterpret_cast<const float2 *>(cs)[min(r0 + x / 4, T - 1) * 4 + x % 4];
}
// a C fragment of block rows lr0 + g and lr0 + g + 8, turned back (every lane calls it)
__device__ __forceinline__ void rope8_back(float (&acc)[1][4], const float2 *s, int lr0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float partner = __shfl_xor_sync(0xffffffffu, acc[0][e], 2);
        const int c = 2 * u + (e & 1);
        const float2 w = s[(lr0 + g + 8 * (e >> 1)) * 4 + (c & 3)];
        acc[0][e] = c < 4 ? acc[0][e] * w.x + partner * w.y : acc[0][e] * w.x - partner * w.y;
    }
}

// The block's column sums (AttnArgs.dbias) of a head-dim-8 C-fragment quantity, a pass
// at a time so that no sum stays live across the next pass: the lane's rows (dims 2u,
// 2u + 1 in bs) summed over the 8 row groups (butterfly) into this warp's and pass's slot
// of sred; after a barrier, colsum8_out adds the slots in order (fixed: deterministic).
__device__ __forceinline__ void colsum8_slot(float *slot, float bs0, float bs1) {
    const int lane = threadIdx.x & 31, u = lane & 3;
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
        bs0 += __shfl_xor_sync(0xffffffffu, bs0, o);
        bs1 += __shfl_xor_sync(0xffffffffu, bs1, o);
    }
    if (lane < 4) slot[2 * u] = bs0, slot[2 * u + 1] = bs1;
}
__device__ __forceinline__ void colsum8_out(float *out, const float *sred) {
    if (threadIdx.x < 8) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < 2 * WARPS; w++) t += sred[w * 8 + threadIdx.x];
        out[threadIdx.x] = t;
    }
}

} // namespace
