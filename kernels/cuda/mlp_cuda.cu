// The SwiGLU MLP for precision=bf16 with its hidden activations stored in bf16, as
// PyTorch's bf16 autocast stores a linear layer's output (MAD-Lab's mixed precision):
// the [N, 2F] gate/up projection, the [N, F] product and their gradients are the
// largest tensors of a MAD step, and at fp32 the MLP's matmuls and SwiGLU passes are
// bound by moving them. Matmuls take bf16 operands and accumulate in fp32 (cuBLAS
// COMPUTE_32F); the MLP's output, the weight gradients and dx stay fp32.
//   forward   xb = bf16(x) (or written by the norm before), ab = xb W13^T (bf16), h = silu(a) b (bf16), y = h W2^T (fp32)
//   backward  dyb = bf16(dy) (or written by the norm's backward), dh = dyb W2 (bf16), dW2 += dyb^T h, dab = SwiGLU' (bf16),
//             dx = dab W13 (fp32, written), dW13 += dab^T xb
// W13 = [W1; W3] ([2F, d]: the model's adjacent W1, W3), a and b side by side in ab's
// rows. At d = 128 ab and dh are never stored: the fused kernels below compute them
// tile by tile with SwiGLU and its gradient.
#include <cuda_bf16.h>

#include <cstring>

#include "cuda_common.cuh"
#include "mma_bf16.cuh"

namespace {

typedef __nv_bfloat16 bf16;

// the forward's saved tensors, in one buffer per layer (element offsets), and the output
// gradient dyb, which the norm's backward may write (rmsnorm_backward_mlp); xb (which
// residual_rmsnorm_bf16_forward may write) and dyb come first, where they are whatever F is
struct Save {
    bf16 *xb, *dyb, *ab, *h, *w13, *w2;
};
Save layout(void *p, int N, int d, int F) {
    bf16 *b = (bf16 *)p;
    Save s;
    s.xb = b, b += (size_t)N * d;
    s.dyb = b, b += (size_t)N * d;
    s.ab = b, b += (size_t)N * 2 * F;
    s.h = b, b += (size_t)N * F;
    s.w13 = b, b += (size_t)2 * F * d;
    s.w2 = b;
    return s;
}
size_t save_bytes(int N, int d, int F) {
    return sizeof(bf16) * (2 * (size_t)N * d + (size_t)N * 3 * F + (size_t)3 * F * d);
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

// ---- the fused MLP at d = 128 (MAD's width) --------------------------------------------
// The [N, 2F] gate/up activations (the step's largest tensor) are never stored: the
// forward computes ab = xb W13^T a tile at a time on tensor cores and writes only
// h = silu(a) b; the backward computes the same tiles again, with dh = dyb W2 beside them,
// and writes dab = SwiGLU'(a, b, dh) for the two matmuls that follow (dx, dW13). a, b and dh
// are rounded to bf16 before SwiGLU, as the unfused path stores them: the same function.
// A block of W warps takes 16 W MT tokens (a warp 16 MT, its x and dy rows as A fragments
// in registers, MT m-tiles sharing each weight fragment it reads); the weights stream
// through shared memory FC hidden units at a time, the next chunk's loads in flight while
// the warps multiply the current one. Default W = 8, MT = 1 (128 tokens a block: one
// block an SM at MAD's N, every block reading the weights once from L2); PLAB_MLP_TILE=4x1
// or 4x2 (warps x m-tiles) for A/B runs.
constexpr int FD = 128, FC = 32, FS = FD + 8; // width; hidden units a chunk; row stride (4 banks apart)

// A fragments (m16n8k16) of rows r0..r0+15 of a row-major bf16 [N, FD] tensor, rows >= N as 0
__device__ __forceinline__ void rows_afrag(uint32_t (&a)[FD / 16][4], const bf16 *x, int N, int r0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const bf16 *p0 = x + (size_t)(r0 + g) * FD + 2 * u, *p1 = p0 + 8 * FD;
    const bool in0 = r0 + g < N, in1 = r0 + g + 8 < N;
#pragma unroll
    for (int c = 0; c < FD / 16; c++) {
        a[c][0] = in0 ? ld2(p0 + 16 * c) : 0u, a[c][1] = in1 ? ld2(p1 + 16 * c) : 0u;
        a[c][2] = in0 ? ld2(p0 + 16 * c + 8) : 0u, a[c][3] = in1 ? ld2(p1 + 16 * c + 8) : 0u;
    }
}
// c[m] = A_m (16 x FD) B^T for the 8 rows of bt[8][FS] (B's columns), m < MT
template <int MT>
__device__ __forceinline__ void tiles16x8(float (&c)[MT][4], const uint32_t (&a)[MT][FD / 16][4], const bf16 *bt) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const bf16 *p = bt + g * FS + 2 * u;
#pragma unroll
    for (int m = 0; m < MT; m++) c[m][0] = c[m][1] = c[m][2] = c[m][3] = 0.f;
#pragma unroll
    for (int k = 0; k < FD / 16; k++) {
        const uint32_t b0 = ld2(p + 16 * k), b1 = ld2(p + 16 * k + 8);
#pragma unroll
        for (int m = 0; m < MT; m++) mma16(c[m], a[m][k], b0, b1);
    }
}
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
// a C fragment's two bf16 pairs (rows g, g + 8 of the tile at row r0) into a row-major
// bf16 [N, ld] tensor at column col, rows >= N left out
__device__ __forceinline__ void store_c(bf16 *x, int ld, int N, int r0, int col, const float c[4]) {
    const int g = (threadIdx.x & 31) >> 2;
    if (r0 + g < N) *reinterpret_cast<uint32_t *>(x + (size_t)(r0 + g) * ld + col) = pack2(c[0], c[1]);
    if (r0 + g + 8 < N) *reinterpret_cast<uint32_t *>(x + (size_t)(r0 + g + 8) * ld + col) = pack2(c[2], c[3]);
}

// rows j0..j0+FC-1 of W1 and of W3 (W13 rows F + j), 16 bytes a load: [2 FC][FD]
template <int W> __host__ __device__ constexpr int w13_loads() { return 2 * FC * FD / 8 / (32 * W); }
template <int W>
__device__ __forceinline__ void w13_read(uint4 (&v)[w13_loads<W>()], const bf16 *W13, int F, int j0) {
#pragma unroll
    for (int k = 0; k < w13_loads<W>(); k++) {
        const int i = threadIdx.x + k * 32 * W, r = i / (FD / 8), c = 8 * (i % (FD / 8));
        v[k] = *reinterpret_cast<const uint4 *>(W13 + (size_t)(r < FC ? j0 + r : F + j0 + r - FC) * FD + c);
    }
}
template <int W> __device__ __forceinline__ void w13_write(const uint4 (&v)[w13_loads<W>()], bf16 *s) {
#pragma unroll
    for (int k = 0; k < w13_loads<W>(); k++) {
        const int i = threadIdx.x + k * 32 * W;
        *reinterpret_cast<uint4 *>(s + (i / (FD / 8)) * FS + 8 * (i % (FD / 8))) = v[k];
    }
}
// W2[:, j0..j0+FC), 16 bytes a load; into s[FD][FC + 8] as rows (B^T of y = h W2^T), or
// transposed into s[FC][FS] (B^T of dh = dy W2)
constexpr int FS2 = FC + 8; // rows 20 words apart: a fragment's 8 rows x 4 words on 32 banks
template <int W> __host__ __device__ constexpr int w2_loads() { return FD * FC / 8 / (32 * W); }
template <int W>
__device__ __forceinline__ void w2_read(uint4 (&v)[w2_loads<W>()], const bf16 *W2, int F, int j0) {
#pragma unroll
    for (int k = 0; k < w2_loads<W>(); k++) {
        const int i = threadIdx.x + k * 32 * W, o = i / (FC / 8), c = 8 * (i % (FC / 8));
        v[k] = *reinterpret_cast<const uint4 *>(W2 + (size_t)o * F + j0 + c);
    }
}
template <int W> __device__ __forceinline__ void w2_write(const uint4 (&v)[w2_loads<W>()], bf16 *s) {
#pragma unroll
    for (int k = 0; k < w2_loads<W>(); k++) {
        const int i = threadIdx.x + k * 32 * W, o = i / (FC / 8), c = 8 * (i % (FC / 8));
        *reinterpret_cast<uint4 *>(s + o * FS2 + c) = v[k];
    }
}
template <int W> __device__ __forceinline__ void w2t_write(const uint4 (&v)[w2_loads<W>()], bf16 *s) {
#pragma unroll
    for (int k = 0; k < w2_loads<W>(); k++) {
        const int i = threadIdx.x + k * 32 * W, o = i / (FC / 8), c = 8 * (i % (FC / 8));
        const bf16 *e = reinterpret_cast<const bf16 *>(&v[k]);
#pragma unroll
        for (int q = 0; q < 8; q++) s[(c + q) * FS + o] = e[q];
    }
}

// The forward: h[N, F] = silu(a) b with ab = xb W13^T never stored; DOWN: also
// y[N, FD] = h W2^T (fp32, written), h's tiles re-packed as the A operand (rounded to bf16
// as h is stored), so the down projection needs no pass over h
template <int W, int MT, bool DOWN>
__global__ void __launch_bounds__(32 * W)
    mlp_up_kernel(bf16 *h, float *y, const bf16 *xb, const bf16 *W13, const bf16 *W2, int N, int F) {
    static_assert(!DOWN || MT == 1, "the down projection's accumulators fit one m-tile a warp");
    __shared__ __align__(16) bf16 sW[2 * FC * FS];
    __shared__ __align__(16) bf16 sW2[DOWN ? FD * FS2 : 8];
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const int r0 = (blockIdx.x * W + (threadIdx.x >> 5)) * 16 * MT;
    uint32_t xa[MT][FD / 16][4];
#pragma unroll
    for (int m = 0; m < MT; m++) rows_afrag(xa[m], xb, N, r0 + 16 * m);
    float yc[DOWN ? FD / 8 : 1][4] = {};
    uint4 next[w13_loads<W>()], next2[DOWN ? w2_loads<W>() : 1];
    w13_read<W>(next, W13, F, 0);
    if constexpr (DOWN) w2_read<W>(next2, W2, F, 0);
    for (int j0 = 0; j0 < F; j0 += FC) {
        __syncthreads(); // the previous chunk's readers are done
        w13_write<W>(next, sW);
        if constexpr (DOWN) w2_write<W>(next2, sW2);
        __syncthreads();
        if (j0 + FC < F) {
            w13_read<W>(next, W13, F, j0 + FC);
            if constexpr (DOWN) w2_read<W>(next2, W2, F, j0 + FC);
        }
        float hc[FC / 8][4]; // h of m-tile 0 (DOWN re-reads it)
#pragma unroll
        for (int n = 0; n < FC / 8; n++) {
            float ca[MT][4], cb[MT][4];
            tiles16x8<MT>(ca, xa, sW + 8 * n * FS);
            tiles16x8<MT>(cb, xa, sW + (FC + 8 * n) * FS);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                float hv[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float a = round_bf16(ca[m][e]), b = round_bf16(cb[m][e]);
                    hv[e] = a * cu_sigmoid(a) * b;
                    if (m == 0) hc[n][e] = hv[e];
                }
                store_c(h, F, N, r0 + 16 * m, j0 + 8 * n + 2 * u, hv);
            }
        }
        if constexpr (DOWN) {
#pragma unroll
            for (int kk = 0; kk < FC / 16; kk++) { // h columns j0 + 16 kk .. + 15 as an A fragment
                const uint32_t ha[4] = {pack2(hc[2 * kk][0], hc[2 * kk][1]), pack2(hc[2 * kk][2], hc[2 * kk][3]),
                                        pack2(hc[2 * kk + 1][0], hc[2 * kk + 1][1]),
                                        pack2(hc[2 * kk + 1][2], hc[2 * kk + 1][3])};
#pragma unroll
                for (int n = 0; n < FD / 8; n++) {
                    const bf16 *p = sW2 + (8 * n + g) * FS2 + 16 * kk + 2 * u;
                    mma16(yc[n], ha, ld2(p), ld2(p + 8));
                }
            }
        }
    }
    if constexpr (DOWN) {
#pragma unroll
        for (int n = 0; n < FD / 8; n++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                if (r0 + g + 8 * r < N)
                    *reinterpret_cast<float2 *>(y + (size_t)(r0 + g + 8 * r) * FD + 8 * n + 2 * u) =
                        make_float2(yc[n][2 * r], yc[n][2 * r + 1]);
    }
}

// the backward's SwiGLU side: dab[N, 2F] = SwiGLU'(a, b, dh) with ab = xb W13^T and
// dh = dyb W2 computed here (neither stored)
template <int W, int MT>
__global__ void __launch_bounds__(32 * W)
    mlp_dswiglu_kernel(bf16 *dab, const bf16 *xb, const bf16 *dyb, const bf16 *W13, const bf16 *W2, int N, int F) {
    __shared__ __align__(16) bf16 sW[2 * FC * FS];
    __shared__ __align__(16) bf16 sW2t[FC * FS];
    const int u = threadIdx.x & 3;
    const int r0 = (blockIdx.x * W + (threadIdx.x >> 5)) * 16 * MT;
    uint32_t xa[MT][FD / 16][4], ya[MT][FD / 16][4];
#pragma unroll
    for (int m = 0; m < MT; m++) rows_afrag(xa[m], xb, N, r0 + 16 * m), rows_afrag(ya[m], dyb, N, r0 + 16 * m);
    uint4 next[w13_loads<W>()], next2[w2_loads<W>()];
    w13_read<W>(next, W13, F, 0);
    w2_read<W>(next2, W2, F, 0);
    for (int j0 = 0; j0 < F; j0 += FC) {
        __syncthreads();
        w13_write<W>(next, sW);
        w2t_write<W>(next2, sW2t);
        __syncthreads();
        if (j0 + FC < F) w13_read<W>(next, W13, F, j0 + FC), w2_read<W>(next2, W2, F, j0 + FC);
#pragma unroll
        for (int n = 0; n < FC / 8; n++) {
            float ca[MT][4], cb[MT][4], cd[MT][4];
            tiles16x8<MT>(ca, xa, sW + 8 * n * FS);
            tiles16x8<MT>(cb, xa, sW + (FC + 8 * n) * FS);
            tiles16x8<MT>(cd, ya, sW2t + 8 * n * FS);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                float da[4], db[4];
#pragma unroll
                for (int e = 0; e < 4; e++) { // swiglu_bwd_bf16_kernel's arithmetic
                    const float a = round_bf16(ca[m][e]), b = round_bf16(cb[m][e]), gv = round_bf16(cd[m][e]);
                    const float s = cu_sigmoid(a);
                    da[e] = gv * b * s * (1.f + a * (1.f - s));
                    db[e] = gv * a * s;
                }
                store_c(dab, 2 * F, N, r0 + 16 * m, j0 + 8 * n + 2 * u, da);
                store_c(dab, 2 * F, N, r0 + 16 * m, F + j0 + 8 * n + 2 * u, db);
            }
        }
    }
}

// the fused kernels' level for this shape: 0 none, 1 the gate/up projection with SwiGLU,
// 2 also the down projection in the forward (PLAB_MLP_FUSED=0/1/2, default 1, for A/B runs)
int fused(int d, int F, const Save &s) {
    static const int level = [] {
        const char *e = getenv("PLAB_MLP_FUSED");
        return !e ? 1 : !strcmp(e, "0") ? 0 : !strcmp(e, "2") ? 2 : 1;
    }();
    return d == FD && F % FC == 0 && cu_aligned16(s.w13, s.w2) ? level : 0; // uint4 weight loads
}
// PLAB_MLP_TILE: 8x1 (default), 4x1 or 4x2 (warps a block x m-tiles a warp); 4x2 runs the
// down projection (level 2) as 4x1
int fused_tile() {
    static const int t = [] {
        const char *e = getenv("PLAB_MLP_TILE");
        return e && !strcmp(e, "4x1") ? 41 : e && !strcmp(e, "4x2") ? 42 : 81;
    }();
    return t;
}
template <int W, int MT, bool DOWN>
void launch_up(bf16 *h, float *y, const bf16 *xb, const bf16 *W13, const bf16 *W2, int N, int F) {
    mlp_up_kernel<W, MT, DOWN><<<cu_blocks(N, 16 * W * MT), 32 * W, 0, cu.stream>>>(h, y, xb, W13, W2, N, F);
    CKL();
}
// y: also the down projection (level 2), else nullptr
void mlp_up(bf16 *h, float *y, const bf16 *xb, const bf16 *W13, const bf16 *W2, int N, int F) {
    const int t = fused_tile();
    if (y) (t == 81 ? launch_up<8, 1, true> : launch_up<4, 1, true>)(h, y, xb, W13, W2, N, F);
    else (t == 81 ? launch_up<8, 1, false> : t == 41 ? launch_up<4, 1, false> : launch_up<4, 2, false>)(
        h, y, xb, W13, W2, N, F);
}
template <int W, int MT>
void launch_dswiglu(bf16 *dab, const bf16 *xb, const bf16 *dyb, const bf16 *W13, const bf16 *W2, int N, int F) {
    mlp_dswiglu_kernel<W, MT><<<cu_blocks(N, 16 * W * MT), 32 * W, 0, cu.stream>>>(dab, xb, dyb, W13, W2, N, F);
    CKL();
}
void mlp_dswiglu(bf16 *dab, const bf16 *xb, const bf16 *dyb, const bf16 *W13, const bf16 *W2, int N, int F) {
    const int t = fused_tile();
    (t == 81 ? launch_dswiglu<8, 1> : t == 41 ? launch_dswiglu<4, 1> : launch_dswiglu<4, 2>)(dab, xb, dyb, W13, W2, N, F);
}

void mlp_forward(float *y, const float *x, const float *W13, const float *W2, void *save, int N,
                 int d, int F) {
    Save s = layout(save, N, d, F);
    if (x) cu_to_bf16(s.xb, x, (long)N * d); // else residual_rmsnorm_bf16_forward wrote it
    if (W2 == W13 + 2L * F * d) { // adjacent parameters (the model's): one conversion
        cu_to_bf16(s.w13, W13, 3L * F * d);
    } else {
        cu_to_bf16(s.w13, W13, 2L * F * d);
        cu_to_bf16(s.w2, W2, (long)d * F);
    }
    const int level = fused(d, F, s);
    if (level) {
        mlp_up(s.h, level == 2 ? y : nullptr, s.xb, s.w13, s.w2, N, F);
        if (level == 2) return;
    } else {
        cu_gemm_bf16(s.ab, CUDA_R_16BF, s.xb, s.w13, N, 2 * F, d, 0, 1, 0.f);
        swiglu_fwd_bf16(s.h, s.ab, N, F);
    }
    cu_gemm_bf16(y, CUDA_R_32F, s.h, s.w2, N, d, F, 0, 1, 0.f);
}

// the norm backward whose dx is the MLP's output gradient: dx in bf16 too, as it is stored
int rmsnorm_backward_mlp(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int N, int C, int write, void *save) {
    return cu_rmsnorm_bwd_bf16(dx, dw, dout, x, w, rstd, N, C, write, layout(save, N, C, 0).dyb);
}

void mlp_backward(float *dx, float *dW13, float *dW2, const float *dy, void *save, int N, int d,
                  int F) {
    Save s = layout(save, N, d, F);
    bf16 *dyb = s.dyb, *dh = (bf16 *)cu_scratch(((size_t)N * 3 * F + 1) / 2); // dh [N,F], dab [N,2F]
    bf16 *dab = dh + (size_t)N * F;
    if (dy) cu_to_bf16(dyb, dy, (long)N * d); // else rmsnorm_backward_mlp wrote it
    if (fused(d, F, s)) {
        mlp_dswiglu(dab, s.xb, dyb, s.w13, s.w2, N, F);
    } else {
        cu_gemm_bf16(dh, CUDA_R_16BF, dyb, s.w2, N, F, d, 0, 0, 0.f);
        swiglu_bwd_bf16(dab, dh, s.ab, N, F);
    }
    cu_gemm_bf16(dW2, CUDA_R_32F, dyb, s.h, d, F, N, 1, 0, 1.f);
    cu_gemm_bf16(dx, CUDA_R_32F, dab, s.w13, N, d, 2 * F, 0, 0, 0.f);
    cu_gemm_bf16(dW13, CUDA_R_32F, dab, s.xb, 2 * F, d, N, 1, 0, 1.f);
}

} // namespace

void cu_fill_mlp(Ops *o, int p) {
    o->mlp_save_bytes = p == 2 ? save_bytes : nullptr;
    o->mlp_forward = p == 2 ? mlp_forward : nullptr;
    o->mlp_backward = p == 2 ? mlp_backward : nullptr;
    o->rmsnorm_backward_mlp = p == 2 ? rmsnorm_backward_mlp : nullptr;
}
