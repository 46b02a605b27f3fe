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
