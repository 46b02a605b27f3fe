// TF32 tensor-core helpers (the tail step, loss_cuda.cu): mma.sync.m16n8k8 with tf32 operands
// and fp32 accumulation. Fragment layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k8",
// .tf32): with g = lane / 4 and t = lane % 4, A (16 x 8) holds a0 = (g, t), a1 = (g + 8, t),
// a2 = (g, t + 4), a3 = (g + 8, t + 4); B (8 x 8) b0 = (t, g), b1 = (t + 4, g); C (16 x 8)
// c0, c1 = (g, 2t), (g, 2t + 1) and c2, c3 the same in row g + 8. The CPU emulation
// (kernels/cuda/emu) gathers the warp's fragments instead.
#pragma once
#include <cstdint>
#include <cstring>

// x rounded to tf32 (10 mantissa bits, to nearest, ties away from zero: cvt.rna), as the bits
// of an fp32 whose low 13 bits are zero
__device__ __forceinline__ uint32_t tf32(float x) {
#ifdef PLAB_EMU
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u; // finite: half an ulp of tf32, away from 0
    return u & 0xffffe000u;
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}
// d += A(16x8) B(8x8), operands from tf32()
__device__ __forceinline__ void mma_tf32(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#ifdef PLAB_EMU
    emu_mma_m16n8k8_tf32(d, a, b0, b1);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
