// bf16 tensor-core helpers of the attention kernels: mma.sync
// with fp32 accumulation, fragment layouts of the PTX ISA ("Matrix Fragments for
// mma.m16n8k8 / m16n8k16"): with g = lane / 4 and u = lane % 4, an A fragment holds rows g
// and g + 8, a B fragment column g, a C fragment rows g and g + 8, columns 2u and 2u + 1.
// The CPU emulation (kernels/cuda/emu) gathers the warp's fragments instead.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ uint32_t ld2(const __nv_bfloat16 *p) { // two adjacent bf16
    return *reinterpret_cast<const uint32_t *>(p);
}

// d += A(16x8) B(8x8): A rows g / g+8 in a0 / a1, B column g in b
__device__ __forceinline__ void mma8(float d[4], uint32_t a0, uint32_t a1, uint32_t b) {
#ifdef PLAB_EMU
    emu_mma_m16n8k8_bf16(d, a0, a1, b);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b));
#endif
}
// d += A(16x16) B(16x8): a[0] row g, k 2u..2u+1; a[1] row g+8; a[2], a[3] the same at k + 8;
// b0 = B(2u..2u+1, g), b1 = B(2u+8..2u+9, g)
__device__ __forceinline__ void mma16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#ifdef PLAB_EMU
    emu_mma_m16n8k16_bf16(d, a, b0, b1);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ldmatrix.m8n8.x{2,4} (.trans) .shared.b16: N 8 x 8 bf16 matrices of 16-byte rows from shared
// memory, lanes 8m..8m+7 giving the row addresses of matrix m (row: this lane's address;
// lanes past 8N give none). r[m] gets, non-transposed, row g's elements 2u, 2u+1 (a B
// fragment of S = Q K^T from K's rows), transposed, rows 2u, 2u+1 of column g (a B fragment
// of P V from V's rows). The emulation gathers the rows' addresses by shuffles.
template <int N> __device__ __forceinline__ void ldsm(uint32_t (&r)[N], const __nv_bfloat16 *row) {
#ifdef PLAB_EMU
    const int lane = threadIdx.x & 31;
    for (int m = 0; m < 4; m++) { // (every lane takes part in the shuffles)
        const __nv_bfloat16 *p = __shfl_sync(0xffffffffu, row, 8 * m + (lane >> 2));
        if (m < N) r[m] = ld2(p + 2 * (lane & 3));
    }
#else
    if constexpr (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"((uint32_t)__cvta_generic_to_shared(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"((uint32_t)__cvta_generic_to_shared(row)));
#endif
}
template <int N> __device__ __forceinline__ void ldsm_trans(uint32_t (&r)[N], const __nv_bfloat16 *row) {
#ifdef PLAB_EMU
    const int lane = threadIdx.x & 31;
    for (int m = 0; m < 4; m++) {
        const __nv_bfloat16 *lo = __shfl_sync(0xffffffffu, row, 8 * m + 2 * (lane & 3));
        const __nv_bfloat16 *hi = __shfl_sync(0xffffffffu, row, 8 * m + 2 * (lane & 3) + 1);
        if (m < N)
            r[m] = (uint32_t) * reinterpret_cast<const unsigned short *>(lo + (lane >> 2)) |
                   (uint32_t) * reinterpret_cast<const unsigned short *>(hi + (lane >> 2)) << 16;
    }
#else
    if constexpr (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"((uint32_t)__cvta_generic_to_shared(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"((uint32_t)__cvta_generic_to_shared(row)));
#endif
}
