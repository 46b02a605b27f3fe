// CUDA emulation on the CPU (docs/DEVICE.md, "Emulating the CUDA backend on the CPU").
//
// Force-included (-include emu.h -DPLAB_EMU) into every kernels/cuda/*.cu after
// rewrite.pl turned launches and shared memory into plain C++. The execution model:
//   - blocks run one after another; inside a block every CUDA thread is a fiber with
//     its own small stack, scheduled round-robin; threadIdx & co. read the running one;
//   - __syncthreads waits until every live thread of the block reached the same barrier
//     (threads that returned no longer count, as on sm_70+); different __syncthreads
//     lines meeting in one barrier, or no thread able to go on, abort naming the kernel;
//   - warp collectives (__shfl*_sync, __ballot_sync, __syncwarp, mma.sync) wait for every
//     lane of their mask; a lane of the mask that has returned is an error;
//   - shared memory and fresh cudaMalloc memory start as NaN bytes, so reading what
//     was never written shows up in the results.
// emu.cpp implements it, and the runtime / cuBLAS shims of this folder.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime.h"

// The one compilation pass is both host and device code: device paths are taken.
#define __CUDA_ARCH__ 900
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static // rewrite.pl turns each declaration into static + EMU_SHARED

namespace emu {
extern uint3 tid, bid;   // the running thread's threadIdx, its block's blockIdx
extern dim3 bdim, gdim;  // blockDim, gridDim of the running launch
extern unsigned long block_serial; // counts the blocks run so far
extern size_t static_smem; // bytes of __shared__ arrays the running block reached

// a __shared__ array: NaN bytes when the running block first reaches its declaration
inline void shared_block(void *p, size_t bytes, unsigned long *seen) {
    if (*seen == block_serial) return;
    *seen = block_serial;
    std::memset(p, 0xff, bytes);
    static_smem += bytes;
}

void *dyn_smem(); // the running block's dynamic shared memory

struct Site {
    const char *name, *file;
    int line;
};
void launch(const Site &site, const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            std::function<void()> body);
void check_kernel_pointer(const Site &site, int arg, const void *p);
template <class T> inline void check_kernel_arg(const Site &site, int arg, const T &v) {
    if constexpr (std::is_pointer_v<T>) check_kernel_pointer(site, arg, (const void *)v);
}

unsigned lane(); // the running thread's lane in its warp
// Warp collective over the lanes of mask: deposits `bytes` (<= 48) of `mine`, waits for
// every lane of the mask, returns the 32 slots of 64 bytes (lane l's deposit at 64 l);
// *last says whether this lane completed it (arrived last: the others still wait).
const unsigned char *collective(unsigned mask, const void *mine, size_t bytes, const char *what,
                                const char *file, int line, bool *last = nullptr);
// the slot of lane `from`, which must be in the mask
const unsigned char *slot_of(const unsigned char *slots, unsigned mask, unsigned from,
                             const char *what, const char *file, int line);
void check_width(int width, const char *what, const char *file, int line);

template <class T>
inline T shuffle(unsigned mask, T v, unsigned from, const char *what, const char *file, int line) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 48, "shuffle of this type");
    const unsigned char *s = collective(mask, &v, sizeof v, what, file, line);
    T r;
    std::memcpy(&r, slot_of(s, mask, from, what, file, line), sizeof r);
    return r;
}
} // namespace emu

#define threadIdx (::emu::tid)
#define blockIdx (::emu::bid)
#define blockDim (::emu::bdim)
#define gridDim (::emu::gdim)
#define warpSize 32

// ---- launches (rewrite.pl rule 1) -------------------------------------------------------
// Arguments are converted to the kernel's parameter types once, at launch (a captured
// graph keeps them); every thread calls the kernel with its own copies.
template <class... P, class... A>
void emu_launch(const char *name, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                cudaStream_t s, void (*kernel)(P...), A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with a wrong number of arguments");
    auto a = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
    const emu::Site site{name, file, line};
    std::apply([&](const auto &...x) {
        int i = 0;
        (emu::check_kernel_arg(site, i++, x), ...);
    }, *a);
    emu::launch(site, (const void *)kernel, grid, block, smem, s, [kernel, a] { std::apply(kernel, *a); });
}

template <class T> inline T *emu_dyn_smem() { return static_cast<T *>(emu::dyn_smem()); }

#define EMU_SHARED(x)                                                                    \
    do {                                                                                 \
        static unsigned long emu_seen_ = ~0ul;                                           \
        ::emu::shared_block(&(x), sizeof(x), &emu_seen_);                                \
    } while (0)

// ---- synchronisation and warp collectives -------------------------------------------------
void emu_syncthreads(const char *file, int line);
#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)
// one OS thread runs every fiber, switching only at collectives: device atomics and
// fences are plain operations
inline unsigned atomicAdd(unsigned *p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}
inline void __threadfence() {}
template <typename T> inline T __ldcg(const T *p) { return *p; }

inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    emu::collective(mask, nullptr, 0, "__syncwarp", file, line);
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    emu::check_width(width, "__shfl_sync", file, line);
    unsigned l = emu::lane();
    return emu::shuffle(mask, v, l / width * width + ((unsigned)src & (width - 1)), "__shfl_sync", file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::check_width(width, "__shfl_xor_sync", file, line);
    unsigned l = emu::lane(), from = l ^ (unsigned)lane_mask;
    if (from >= (l / width + 1) * width) from = l; // a later segment: own value (CUDA docs)
    return emu::shuffle(mask, v, from, "__shfl_xor_sync", file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::check_width(width, "__shfl_down_sync", file, line);
    unsigned l = emu::lane(), from = l % width + delta >= (unsigned)width ? l : l + delta;
    return emu::shuffle(mask, v, from, "__shfl_down_sync", file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::check_width(width, "__shfl_up_sync", file, line);
    unsigned l = emu::lane(), from = l % width < delta ? l : l - delta;
    return emu::shuffle(mask, v, from, "__shfl_up_sync", file, line);
}
unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE());
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) == mask;
}

// mma.sync.aligned.m16n8k8 / m16n8k16 .row.col.f32.bf16.bf16.f32, d += A B, warp-collective,
// with the PTX ISA fragment layouts (emu.cpp)
void emu_mma_m16n8k8_bf16(float d[4], uint32_t a0, uint32_t a1, uint32_t b,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE());
void emu_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                           const char *file = __builtin_FILE(), int line = __builtin_LINE());
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (the operands' low 13 bits ignored)
void emu_mma_m16n8k8_tf32(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE());

// ---- device math --------------------------------------------------------------------------
// CUDA's min / max overloads, with the usual arithmetic conversions (fminf / fmaxf for floats)
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin((C)a, (C)b);
    else return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax((C)a, (C)b);
    else return (C)a < (C)b ? (C)b : (C)a;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
// IEEE operations rounded to nearest, never contracted (g++ -std=c++17 does not fuse)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
