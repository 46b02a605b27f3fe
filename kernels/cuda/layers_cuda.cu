// Layers: RMSNorm, embedding, SwiGLU, RoPE, sigmoid gate, short causal conv. One warp per row for
// row reductions; column reductions (dw, dtable) go through a gemv/gemm in
// fp32 over a scratch buffer, so nothing is summed with atomics.
#include <cstdint>

#include <cuda_bf16.h>

#include "cuda_common.cuh"

// ---- RMSNorm ---------------------------------------------------------------------
// Rows of C <= 16 (per-head norms) take a thread per row; wider rows a warp per row.

__global__ void rmsnorm_fwd_kernel(float *out, float *rstd, const float *x, const float *w, int N,
                                   int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *xn = x + (size_t)row * C;
    float ss = 0;
    for (int c = lane; c < C; c += 32) ss += xn[c] * xn[c];
    ss = warp_sum(ss);
    float r = (float)(1.0 / sqrt((double)(ss / C + eps)));
    if (lane == 0) rstd[row] = r;
    float *on = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) on[c] = xn[c] * r * (w ? w[c] : 1.f);
}
__global__ void rmsnorm_fwd_row_kernel(float *out, float *rstd, const float *x, const float *w,
                                       int N, int C, float eps) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float *xn = x + (size_t)row * C;
    float ss = 0;
    for (int c = 0; c < C; c++) ss += xn[c] * xn[c];
    float r = (float)(1.0 / sqrt((double)(ss / C + eps)));
    rstd[row] = r;
    float *on = out + (size_t)row * C;
    for (int c = 0; c < C; c++) on[c] = xn[c] * r * (w ? w[c] : 1.f);
}
// the per-head norms (C = head dim 4, 8, 16): the row in registers through float4
// loads and stores, the sums in the same order as rmsnorm_fwd_row_kernel
template <int C> __device__ __forceinline__ void load_row(float (&v)[C], const float *p) {
#pragma unroll
    for (int c = 0; c < C; c += 4) *reinterpret_cast<float4 *>(v + c) = *reinterpret_cast<const float4 *>(p + c);
}
template <int C> __device__ __forceinline__ void store_row(float *p, const float (&v)[C]) {
#pragma unroll
    for (int c = 0; c < C; c += 4) *reinterpret_cast<float4 *>(p + c) = *reinterpret_cast<const float4 *>(v + c);
}
// cs (when not null): then RoPE on the row's first rot dims as rope_kernel turns them
// (rmsnorm_rope_forward: row = token * H + head, position token % T)
template <int C>
__global__ void rmsnorm_fwd_rowv_kernel(float *out, float *rstd, const float *x, const float *w,
                                        int N, float eps, const float *cs, int T, int H, int rot) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    float v[C], ss = 0;
    load_row<C>(v, x + (size_t)row * C);
#pragma unroll
    for (int c = 0; c < C; c++) ss += v[c] * v[c];
    float r = (float)(1.0 / sqrt((double)(ss / C + eps)));
    rstd[row] = r;
#pragma unroll
    for (int c = 0; c < C; c++) v[c] = v[c] * r * (w ? w[c] : 1.f);
    if (cs) {
        const int half = rot / 2;
        const float *ct = cs + (size_t)2 * (row / H % T) * half;
#pragma unroll
        for (int k = 0; k < C / 2; k++) {
            if (k >= half) break;
            const float c = ct[2 * k], s = ct[2 * k + 1], x1 = v[k], x2 = v[k + half];
            v[k] = x1 * c - x2 * s;
            v[k + half] = x2 * c + x1 * s;
        }
    }
    store_row<C>(out + (size_t)row * C, v);
}
// part (when not null): the block's sums of dy x r per column, the weight gradient's
// first stage (lanes by shuffles, then the 8 warps in order: deterministic), so that no
// column-sum pass reads dy and x again; 256 threads a block
template <int C>
__global__ void __launch_bounds__(256) rmsnorm_bwd_rowv_kernel(float *dx, float *part, const float *dout,
                                                               const float *x, const float *w,
                                                               const float *rstd, int N, bool write) {
    __shared__ float red[8][C];
    const int row = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
    float g[C] = {}, xv[C] = {}, r = 0.f;
    if (row < N) {
        size_t o = (size_t)row * C;
        float d[C] = {}, dot = 0;
        r = rstd[row];
        load_row<C>(g, dout + o), load_row<C>(xv, x + o);
        if (!write) load_row<C>(d, dx + o);
#pragma unroll
        for (int c = 0; c < C; c++) dot += (w ? w[c] : 1.f) * g[c] * xv[c];
#pragma unroll
        for (int c = 0; c < C; c++) d[c] += r * (w ? w[c] : 1.f) * g[c] - r * r * r / C * xv[c] * dot;
        store_row<C>(dx + o, d);
    }
    if (!part) return; // block-uniform
#pragma unroll
    for (int c = 0; c < C; c++) {
        const float t = warp_sum(g[c] * xv[c] * r); // rows >= N add 0
        if (lane == 0) red[threadIdx.x / 32][c] = t;
    }
    __syncthreads();
    if (threadIdx.x < C) {
        float t = 0.f;
        for (int k = 0; k < 8; k++) t += red[k][threadIdx.x];
        part[(size_t)blockIdx.x * C + threadIdx.x] = t;
    }
}

// the float4 row kernels (C = 4, 8, 16, aligned rows), with RoPE when cs is given;
// false (nothing done) elsewhere
static bool rmsnorm_fwd_rowv(float *out, float *rstd, const float *x, const float *w, int N, int C,
                             float eps, const float *cs, int T, int H, int rot) {
    if (!((C == 4 || C == 8 || C == 16) && cu_aligned16(out, x))) return false;
    int nb = cu_blocks(N, 256);
    if (C == 4) rmsnorm_fwd_rowv_kernel<4><<<nb, 256, 0, cu.stream>>>(out, rstd, x, w, N, eps, cs, T, H, rot);
    if (C == 8) rmsnorm_fwd_rowv_kernel<8><<<nb, 256, 0, cu.stream>>>(out, rstd, x, w, N, eps, cs, T, H, rot);
    if (C == 16) rmsnorm_fwd_rowv_kernel<16><<<nb, 256, 0, cu.stream>>>(out, rstd, x, w, N, eps, cs, T, H, rot);
    CKL();
    return true;
}
static void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C,
                            float eps) {
    if (rmsnorm_fwd_rowv(out, rstd, x, w, N, C, eps, nullptr, 1, 1, 0)) return;
    if (C <= 16) rmsnorm_fwd_row_kernel<<<cu_blocks(N, 256), 256, 0, cu.stream>>>(out, rstd, x, w, N, C, eps);
    else rmsnorm_fwd_kernel<<<cu_blocks(N, 8), 256, 0, cu.stream>>>(out, rstd, x, w, N, C, eps);
    CKL();
}

// out = x + y and its norm in one pass, the norm written as NT (float, or bf16 for a bf16
// block's input: residual_rmsnorm_bf16_forward): a warp per row, kept in registers, 16-byte accesses
// (C % 4 == 0, C <= 128 K, aligned rows); lane owns columns 4 lane + 128 k .. + 3, as
// rmsnorm_bwd_fused_kernel (MAD's d = 128: one float4 a lane)
// y: float, or bf16 (a bf16 block's output). tok (then y == NULL): out = the embedding rows
// x[tok[row]] instead of x + y (embedding_rmsnorm_forward)
template <int K, typename NT, typename YT>
__global__ void residual_rmsnorm4_kernel(float *out, const float *x, const YT *y, NT *nout,
                                         float *rstd, const float *w, int N, int C, float eps,
                                         const int *tok) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t o = (size_t)row * C, xo = tok ? (size_t)tok[row] * C : o;
    float4 v[K];
    float ss = 0;
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = 4 * lane + 128 * k;
        if (c >= C) continue;
        float4 a = ld4(x + xo + c);
        float4 b = y ? ld4(y + o + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        v[k] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
        st4(out + o + c, v[k]);
        ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
    if (!nout) return;
    ss = warp_sum(ss);
    float r = (float)(1.0 / sqrt((double)(ss / C + eps)));
    if (lane == 0) rstd[row] = r;
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = 4 * lane + 128 * k;
        if (c >= C) continue;
        float4 g = w ? *reinterpret_cast<const float4 *>(w + c) : make_float4(1.f, 1.f, 1.f, 1.f);
        st4(nout + o + c, make_float4(v[k].x * r * g.x, v[k].y * r * g.y, v[k].z * r * g.z, v[k].w * r * g.w));
    }
}
__global__ void add_kernel(float *out, const float *x, const float *y, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + y[i];
}
// the one-pass kernel where C fits (16 < C <= 256, C % 4 == 0, aligned); false: the caller
// runs it in passes (add, then the norm). tok: x's rows by token, y NULL (the embedding)
template <typename NT, typename YT>
static bool residual_rmsnorm_fused(float *out, const float *x, const YT *y, NT *nout,
                                   float *rstd, const float *w, int N, int C, float eps,
                                   const int *tok = nullptr) {
    if (!(C > 16 && C <= 256 && C % 4 == 0 && cu_aligned16(out, x, y, w) && cu_aligned16(nout)))
        return false;
    if (C <= 128)
        residual_rmsnorm4_kernel<1, NT, YT><<<cu_blocks(N, 8), 256, 0, cu.stream>>>(out, x, y, nout, rstd, w, N, C, eps, tok);
    else residual_rmsnorm4_kernel<2, NT, YT><<<cu_blocks(N, 8), 256, 0, cu.stream>>>(out, x, y, nout, rstd, w, N, C, eps, tok);
    CKL();
    return true;
}
static void residual_rmsnorm_forward(float *out, const float *x, const float *y, float *nout,
                                     float *rstd, const float *w, int N, int C, float eps) {
    if (residual_rmsnorm_fused(out, x, y, nout, rstd, w, N, C, eps)) return;
    long n = (long)N * C;
    add_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(out, x, y, n);
    CKL();
    if (nout) rmsnorm_forward(nout, rstd, out, w, N, C, eps);
}
__global__ void from_bf16_kernel(float *y, const __nv_bfloat16 *x, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat162float(x[i]);
}
static float *widen(const __nv_bfloat16 *x, long n, float *y) { // y = float(x), y in scratch
    from_bf16_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, n);
    CKL();
    return y;
}
// the norm written into slot 0 of a bf16 block's state, its input: no fp32 copy and no
// conversion pass (tokens: the embedding's rows, as embedding_rmsnorm_forward); y NULL and
// y_state: y is the bf16 output in slot 1 of that block's state. Where the one-pass kernel
// does not apply: 0, or with y_state (whose y exists in no other form) the passes
static int residual_rmsnorm_bf16_forward(float *out, const float *x, const float *y, const void *y_state,
                                         const int *tokens, void *save, float *rstd, const float *w,
                                         int N, int C, float eps) {
    __nv_bfloat16 *xb = cu_state_slot(save, N, C, 0);
    if (!y_state) return residual_rmsnorm_fused(out, x, y, xb, rstd, w, N, C, eps, tokens);
    const __nv_bfloat16 *yb = cu_state_slot((void *)y_state, N, C, 1);
    if (residual_rmsnorm_fused(out, x, yb, xb, rstd, w, N, C, eps)) return 1;
    const long n = (long)N * C;
    float *y32 = widen(yb, n, cu_scratch(2 * (size_t)n)), *nout = y32 + n;
    residual_rmsnorm_forward(out, x, y32, nout, rstd, w, N, C, eps);
    cu_to_bf16(xb, nout, n);
    return 1;
}

// dx = r (w dy) - r^3/C x sum(w dy x)  (the CPU reference's formula); dw by column sums
__global__ void rmsnorm_bwd_kernel(float *dx, const float *dout, const float *x, const float *w,
                                   const float *rstd, int N, int C, bool write) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t o = (size_t)row * C;
    float r = rstd[row], dot = 0;
    for (int c = lane; c < C; c += 32) dot += (w ? w[c] : 1.f) * dout[o + c] * x[o + c];
    dot = warp_sum(dot);
    for (int c = lane; c < C; c += 32)
        dx[o + c] = (write ? 0.f : dx[o + c]) +
                    (r * (w ? w[c] : 1.f) * dout[o + c] - r * r * r / C * x[o + c] * dot);
}
__global__ void rmsnorm_bwd_row_kernel(float *dx, const float *dout, const float *x, const float *w,
                                       const float *rstd, int N, int C, bool write) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    size_t o = (size_t)row * C;
    float r = rstd[row], dot = 0;
    for (int c = 0; c < C; c++) dot += (w ? w[c] : 1.f) * dout[o + c] * x[o + c];
    for (int c = 0; c < C; c++)
        dx[o + c] = (write ? 0.f : dx[o + c]) +
                    (r * (w ? w[c] : 1.f) * dout[o + c] - r * r * r / C * x[o + c] * dot);
}
// dx and dw in one pass (16 < C <= 256, C % 4 == 0, 16-byte aligned rows): the kernel reads
// dout and x for dx anyway, so it also sums dy x r over its rows per column (a lane owns
// 4 columns, float4) and writes one partial row per block; cu_grad_colsum_parts adds the
// partials to dw. Before, a separate column-sum pass re-read dout and x (8 N C bytes).
// Formulas: baselines.md §1.3 (dx = r (w dy) - r^3/C x sum(w dy x), dw = sum dy x r).
constexpr int NORM_BLOCK_ROWS = 64; // rows per block: 256 blocks at N = 16384 (MAD)
// a warp's row at offset o: this lane's float4s of dout (float or bf16), x and dx
template <int K, typename GT>
__device__ __forceinline__ void norm_row_load(float4 (&g)[K], float4 (&xv)[K], float4 (&d)[K],
                                              const GT *dout, const float *x, const float *dx,
                                              size_t o, int lane, const bool (&on)[K], bool write) {
#pragma unroll
    for (int k = 0; k < K; k++)
        if (on[k]) {
            size_t i = o + 4 * lane + 128 * k;
            g[k] = ld4(dout + i), xv[k] = ld4(x + i);
            d[k] = write ? make_float4(0.f, 0.f, 0.f, 0.f) : ld4(dx + i);
        }
}
// the block's column sums: each warp's float4s acc into red, then the 8 warps in a fixed order
// into the block's part row (every thread of the block calls it)
template <int K>
__device__ void norm_block_sums(float (&red)[8][256], const float4 (&acc)[K], const bool (&on)[K],
                                float *part, int C) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); // red free
#pragma unroll
    for (int k = 0; k < K; k++)
        if (on[k]) *reinterpret_cast<float4 *>(&red[warp][4 * lane + 128 * k]) = acc[k];
    __syncthreads();
    const int c = threadIdx.x;
    if (c < C) {
        float t = 0.f;
        for (int k = 0; k < 8; k++) t += red[k][c];
        part[(size_t)blockIdx.x * C + c] = t;
    }
}
// dout: fp32, or bf16 (a bf16 block's input gradient); dxb (may be NULL): dx also in bf16, a
// bf16 block's output gradient; cpart (may be NULL): the block's column sums of dx as written
// (that block's output bias gradient: rmsnorm_backward_bf16)
template <int K, typename GT> // C <= 128 K: lane owns columns 4 lane + 128 k .. + 3 for k < K
__global__ void __launch_bounds__(256) rmsnorm_bwd_fused_kernel(float *dx, float *part, const GT *dout,
                                                                 const float *x, const float *w,
                                                                 const float *rstd, int N, int C,
                                                                 bool write, __nv_bfloat16 *dxb,
                                                                 float *cpart) {
    __shared__ float red[8][256]; // [warp][column] partial dw sums
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, b = blockIdx.x;
    int n = b * NORM_BLOCK_ROWS + warp, n1 = min(N, (b + 1) * NORM_BLOCK_ROWS);
    bool on[K];
    float4 wv[K], acc[K], cacc[K], g[K], xv[K], d[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = 4 * lane + 128 * k;
        on[k] = c < C;
        wv[k] = w && on[k] ? ld4(w + c) : make_float4(1.f, 1.f, 1.f, 1.f);
        acc[k] = cacc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    // the rows of a warp are n, n + 8, ...: the next row's loads are issued before this
    // row's reduction and store, two rows in flight per warp (only 16 warps per SM at MAD)
    float r = 0.f;
    if (n < n1) norm_row_load<K, GT>(g, xv, d, dout, x, dx, (size_t)n * C, lane, on, write), r = rstd[n];
    for (; n < n1; n += 8) {
        // past the last row the "next" loads repeat row n (cached; never used)
        int m = n + 8 < n1 ? n + 8 : n;
        float4 gn[K], xn[K], dn[K];
        norm_row_load<K, GT>(gn, xn, dn, dout, x, dx, (size_t)m * C, lane, on, write);
        float rn = rstd[m], dot = 0.f;
#pragma unroll
        for (int k = 0; k < K; k++)
            if (on[k]) {
                dot += wv[k].x * g[k].x * xv[k].x, dot += wv[k].y * g[k].y * xv[k].y;
                dot += wv[k].z * g[k].z * xv[k].z, dot += wv[k].w * g[k].w * xv[k].w;
            }
        dot = warp_sum(dot);
        float s = r * r * r / C;
        size_t o = (size_t)n * C;
#pragma unroll
        for (int k = 0; k < K; k++)
            if (on[k]) {
                d[k].x += r * wv[k].x * g[k].x - s * xv[k].x * dot;
                d[k].y += r * wv[k].y * g[k].y - s * xv[k].y * dot;
                d[k].z += r * wv[k].z * g[k].z - s * xv[k].z * dot;
                d[k].w += r * wv[k].w * g[k].w - s * xv[k].w * dot;
                *reinterpret_cast<float4 *>(dx + o + 4 * lane + 128 * k) = d[k];
                if (dxb) st4(dxb + o + 4 * lane + 128 * k, d[k]);
                if (cpart) cacc[k].x += d[k].x, cacc[k].y += d[k].y, cacc[k].z += d[k].z, cacc[k].w += d[k].w;
                acc[k].x += g[k].x * xv[k].x * r, acc[k].y += g[k].y * xv[k].y * r;
                acc[k].z += g[k].z * xv[k].z * r, acc[k].w += g[k].w * xv[k].w * r;
                g[k] = gn[k], xv[k] = xn[k], d[k] = dn[k];
            }
        r = rn;
    }
    // (part, cpart: the same for the whole block, which leaves or sums as one)
    if (part) norm_block_sums<K>(red, acc, on, part, C);
    if (cpart) norm_block_sums<K>(red, cacc, on, cpart, C);
}
// write: dx = (not +=) the input gradient, no zeroing pass before (rmsnorm_backward_write)
// the one-pass kernel (16 < C <= 256, C % 4 == 0, aligned rows), dx also in bf16 where
// dxb is given; false: nothing done
template <typename GT>
static bool rmsnorm_bwd_fused(float *dx, float *dw, const GT *dout, const float *x,
                              const float *w, const float *rstd, int N, int C, bool write,
                              __nv_bfloat16 *dxb, float *dx_colsum = nullptr) {
    if (!(C > 16 && C <= 256 && C % 4 == 0 && cu_aligned16(dx, dout, x, w) && cu_aligned16(dxb)))
        return false;
    if (N <= 0) return true;
    int S = cu_blocks(N, NORM_BLOCK_ROWS);
    float *part = dw ? cu_parts((size_t)S * C) : nullptr, *cpart = dx_colsum ? cu_parts((size_t)S * C) : nullptr;
    if (C <= 128)
        rmsnorm_bwd_fused_kernel<1, GT><<<S, 256, 0, cu.stream>>>(dx, part, dout, x, w, rstd, N, C, write, dxb, cpart);
    else rmsnorm_bwd_fused_kernel<2, GT><<<S, 256, 0, cu.stream>>>(dx, part, dout, x, w, rstd, N, C, write, dxb, cpart);
    CKL();
    if (dw) cu_grad_colsum_parts(dw, part, S, C);
    if (dx_colsum) cu_grad_colsum_parts(dx_colsum, cpart, S, C);
    return true;
}
static void rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                        const float *rstd, int N, int C, bool write);
// Ops.rmsnorm_backward_bf16: dout fp32, or (NULL) bf16 in slot 0 of dout_state; dx also in
// bf16 into slot 1 of dx_state (may be NULL) and its column sums into dx_colsum (may be
// NULL). The one-pass kernel where it applies; else (dout in bf16: widened into scratch
// first) the fp32 passes, a conversion and a column sum
static int rmsnorm_backward_bf16(float *dx, float *dw, const float *dout, const void *dout_state,
                                 const float *x, const float *w, const float *rstd, int N, int C,
                                 int write, void *dx_state, float *dx_colsum) {
    __nv_bfloat16 *dxb = dx_state ? cu_state_slot(dx_state, N, C, 1) : nullptr;
    const __nv_bfloat16 *doutb = dout ? nullptr : cu_state_slot((void *)dout_state, N, C, 0);
    if (doutb ? rmsnorm_bwd_fused(dx, dw, doutb, x, w, rstd, N, C, write, dxb, dx_colsum)
              : rmsnorm_bwd_fused(dx, dw, dout, x, w, rstd, N, C, write, dxb, dx_colsum))
        return 1;
    if (doutb) dout = widen(doutb, (long)N * C, cu_scratch((size_t)N * C));
    rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, C, write);
    if (dx_colsum) cu_grad_colsum(dx_colsum, dx, nullptr, nullptr, N, C, dxb);
    else if (dxb) cu_to_bf16(dxb, dx, (long)N * C);
    return 1;
}
static void rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                        const float *rstd, int N, int C, bool write) {
    if (rmsnorm_bwd_fused(dx, dw, dout, x, w, rstd, N, C, write, nullptr)) return;
    int nb = cu_blocks(N, 256);
    if ((C == 4 || C == 8 || C == 16) && cu_aligned16(dx, dout, x)) {
        float *part = dw ? cu_parts((size_t)nb * C) : nullptr; // the weight gradient's parts
        if (C == 4) rmsnorm_bwd_rowv_kernel<4><<<nb, 256, 0, cu.stream>>>(dx, part, dout, x, w, rstd, N, write);
        if (C == 8) rmsnorm_bwd_rowv_kernel<8><<<nb, 256, 0, cu.stream>>>(dx, part, dout, x, w, rstd, N, write);
        if (C == 16) rmsnorm_bwd_rowv_kernel<16><<<nb, 256, 0, cu.stream>>>(dx, part, dout, x, w, rstd, N, write);
        CKL();
        if (dw) cu_grad_colsum_parts(dw, part, nb, C);
        return;
    }
    if (C <= 16)
        rmsnorm_bwd_row_kernel<<<cu_blocks(N, 256), 256, 0, cu.stream>>>(dx, dout, x, w, rstd, N, C, write);
    else rmsnorm_bwd_kernel<<<cu_blocks(N, 8), 256, 0, cu.stream>>>(dx, dout, x, w, rstd, N, C, write);
    CKL();
    if (dw) cu_grad_colsum(dw, dout, x, rstd, N, C); // dw[c] += sum_n dy x r
}
static void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int N, int C) {
    rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, C, false);
}
static void rmsnorm_backward_write(float *dx, float *dw, const float *dout, const float *x,
                                   const float *w, const float *rstd, int N, int C) {
    rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, C, true);
}

// ---- embedding -------------------------------------------------------------------

__global__ void embed_fwd_kernel(float *out, const int *tok, const float *table, int N, int C) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    int n = (int)(i / C), c = (int)(i % C);
    out[i] = table[(size_t)tok[n] * C + c];
}
// the embedding and the norm after it in one pass (the residual kernel reading table rows
// by token, adding nothing); 0 where it does not apply (the model then runs the two ops)
static int embedding_rmsnorm_forward(float *out, const int *tokens, const float *table, float *nout,
                                     float *rstd, const float *w, int N, int C, float eps) {
    return residual_rmsnorm_fused(out, table, (const float *)nullptr, nout, rstd, w, N, C, eps, tokens);
}
static void embedding_forward(float *out, const int *tokens, const float *table, int N, int C) {
    long n = (long)N * C;
    embed_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(out, tokens, table, N, C);
    CKL();
}

__global__ void onehot_kernel(float *oh, const int *tok, int N, int V) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)N * V) return;
    oh[i] = tok[i / V] == (int)(i % V) ? 1.f : 0.f;
}

// Small tables (V C <= EMB_SMALL, C <= 128, C % 4 == 0: MAD's 16 x 128): each warp adds
// its rows of dout into its own [V, C] table in shared memory (lane l owns columns
// 4l..4l+3 of every token's row: no two lanes touch one address, and a lane's additions
// run in row order), the block's warps are summed in a fixed order into a part row, and the
// parts are summed at the flush (cu_grad_colsum_parts). One pass over dout in fp32, where
// the one-hot matmul below took two launches (10 us under ncu at MAD) at the table's precision.
// (64 rows a block: 256 blocks at MAD's N, 0.8 us less than 128 on the H100, 17:23Z)
constexpr int EMB_WARPS = 4, EMB_ROWS = 64, EMB_SMALL = 2048, EMB_INFLIGHT = 8;
__global__ void __launch_bounds__(32 * EMB_WARPS)
    embed_bwd_small_kernel(float *part, const float *dout, const int *tok, int N, int C, int V, int rows) {
    extern __shared__ float4 emb_tab[]; // [EMB_WARPS][V C / 4]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c4 = V * C / 4;
    float4 *tab = emb_tab + warp * c4;
    const int r0 = blockIdx.x * rows + warp * (rows / EMB_WARPS);
    const int r1 = min(N, r0 + rows / EMB_WARPS);
    if (4 * lane < C) {
        for (int v = 0; v < V; v++) tab[v * C / 4 + lane] = make_float4(0.f, 0.f, 0.f, 0.f); // its own
        for (int n = r0; n < r1; n += EMB_INFLIGHT) { // EMB_INFLIGHT rows' loads, then their sums
            float4 d[EMB_INFLIGHT];
            int t[EMB_INFLIGHT];
#pragma unroll
            for (int k = 0; k < EMB_INFLIGHT; k++)
                if (n + k < r1) {
                    d[k] = ld4(dout + (size_t)(n + k) * C + 4 * lane);
                    t[k] = tok[n + k];
                }
#pragma unroll
            for (int k = 0; k < EMB_INFLIGHT; k++)
                if (n + k < r1) {
                    float4 &a = tab[(t[k] * C) / 4 + lane];
                    a.x += d[k].x, a.y += d[k].y, a.z += d[k].z, a.w += d[k].w;
                }
        }
    }
    __syncthreads();
    const float *all = reinterpret_cast<const float *>(emb_tab);
    for (int e = threadIdx.x; e < V * C; e += blockDim.x) {
        float s = 0.f;
        for (int w = 0; w < EMB_WARPS; w++) s += all[(size_t)w * V * C + e];
        part[(size_t)blockIdx.x * V * C + e] = s;
    }
}
// dtable[V,C] += onehot[N,V]^T dout[N,C]: the small tables' kernel above, else one gemm at
// the table's precision (the one-hot operand is exact in any), deterministic, its split-K
// sum deferred (a weight gradient)
template <int P>
static void embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int C,
                               int V) {
    static const bool small_off = cu_env_off("PLAB_EMB_SMALL"); // A/B switch
    if (V * C <= EMB_SMALL && C <= 128 && C % 4 == 0 && cu_aligned16(dout, dtable) && N > 0 && !small_off) {
        // rows a block: PLAB_EMB_ROWS (A/B; a multiple of EMB_WARPS)
        static const int rows = getenv("PLAB_EMB_ROWS") ? atoi(getenv("PLAB_EMB_ROWS")) / EMB_WARPS * EMB_WARPS : EMB_ROWS;
        const int S = cu_blocks(N, rows);
        float *part = cu_parts((size_t)S * V * C);
        embed_bwd_small_kernel<<<S, 32 * EMB_WARPS, sizeof(float) * EMB_WARPS * V * C, cu.stream>>>(
            part, dout, tokens, N, C, V, rows);
        CKL();
        cu_grad_colsum_parts(dtable, part, S, V * C, true);
        return;
    }
    float *oh = cu_scratch((size_t)N * V);
    long n = (long)N * V;
    onehot_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(oh, tokens, N, V);
    CKL();
    cu_grad_gemm(P, dtable, oh, dout, V, C, N);
}

// ---- GELU (exact erf form) --------------------------------------------------------

__global__ void gelu_fwd_kernel(float *y, const float *x, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = 0.5f * x[i] * (1.f + erff(x[i] * 0.70710678118654752f));
}
static void gelu_forward(float *y, const float *x, long n) {
    gelu_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, n);
    CKL();
}
__global__ void gelu_bwd_kernel(float *dx, const float *dy, const float *x, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float g = 0.5f * (1.f + erff(v * 0.70710678118654752f)) + v * expf(-0.5f * v * v) * 0.39894228040143268f;
    dx[i] = dy[i] * g;
}
static void gelu_backward(float *dx, const float *dy, const float *x, long n) {
    gelu_bwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dx, dy, x, n);
    CKL();
}

// ---- SwiGLU ----------------------------------------------------------------------

// h [N,F] packed; a, b (da, db) rows ld apart (ld = 2F: side by side in one matmul's output)
__global__ void swiglu_fwd_kernel(float *h, const float *a, const float *b, int F, int ld, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t j = (size_t)(i / F) * ld + i % F;
    h[i] = a[j] * cu_sigmoid(a[j]) * b[j];
}
static void swiglu_forward(float *h, const float *a, const float *b, int N, int F, int ld) {
    long n = (long)N * F;
    swiglu_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(h, a, b, F, ld, n);
    CKL();
}
__global__ void swiglu_bwd_kernel(float *da, float *db, const float *dh, const float *a,
                                  const float *b, int F, int ld, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t j = (size_t)(i / F) * ld + i % F;
    float s = cu_sigmoid(a[j]);
    db[j] = dh[i] * a[j] * s;
    da[j] = dh[i] * b[j] * s * (1.f + a[j] * (1.f - s));
}
static void swiglu_backward(float *da, float *db, const float *dh, const float *a, const float *b,
                            int N, int F, int ld) {
    long n = (long)N * F;
    swiglu_bwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(da, db, dh, a, b, F, ld, n);
    CKL();
}

// ---- RoPE (baselines.md §2, GPT-NeoX rotate-half) ----------------------------------
// cos/sin of t * base^(-2i/rot), computed in double as in the CPU reference, are
// tabulated once per (T, rot, base) outside any capture, then only read.

__global__ void rope_table_kernel(float *cs, int T, int rot, float base) {
    int half = rot / 2;
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)T * half) return;
    int t = (int)(i / half), k = (int)(i % half);
    double ang = t * pow((double)base, -2.0 * k / rot);
    cs[2 * i] = (float)cos(ang);
    cs[2 * i + 1] = (float)sin(ang);
}

struct RopeTable {
    int T, rot;
    float base;
    float *cs; // [T, rot/2, 2]
};
static RopeTable rope_tables[16];
static int n_rope_tables;

const float *cu_rope_table(int T, int rot, float base) {
    for (int i = 0; i < n_rope_tables; i++) {
        RopeTable *r = &rope_tables[i];
        if (r->T == T && r->rot == rot && r->base == base) return r->cs;
    }
    cudaStreamCaptureStatus st;
    CK(cudaStreamIsCapturing(cu.stream, &st));
    if (st != cudaStreamCaptureStatusNone || n_rope_tables == 16) {
        fprintf(stderr, "CUDA backend: a new RoPE table (T=%d rot=%d) is needed %s\n", T, rot,
                n_rope_tables == 16 ? "but 16 exist already" : "inside a graph capture");
        exit(1);
    }
    RopeTable *r = &rope_tables[n_rope_tables++];
    r->T = T, r->rot = rot, r->base = base;
    long n = (long)T * (rot / 2);
    CK(cudaMalloc(&r->cs, 2 * n * sizeof(float)));
    rope_table_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(r->cs, T, rot, base);
    CKL();
    return r->cs;
}

__global__ void rope_kernel(float *x, const float *cs, int N, int T, int H, int hd, int ld, int rot,
                            float sgn) {
    int half = rot / 2;
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)N * H * half) return;
    int k = (int)(i % half);
    long nh = i / half;
    int h = (int)(nh % H), n = (int)(nh / H), t = n % T;
    float *v = x + (size_t)n * ld + (size_t)h * hd;
    float c = cs[2 * ((size_t)t * half + k)], s = sgn * cs[2 * ((size_t)t * half + k) + 1];
    float x1 = v[k], x2 = v[k + half];
    v[k] = x1 * c - x2 * s;
    v[k + half] = x2 * c + x1 * s;
}
// the same, four pairs a thread (rot % 8 == 0, hd and ld multiples of 4, x 16-byte
// aligned): float4 loads and stores of x and the table, the same arithmetic per element
__global__ void rope4_kernel(float *x, const float *cs, int N, int T, int H, int hd, int ld,
                             int rot, float sgn) {
    int half = rot / 2, q4 = half / 4;
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)N * H * q4) return;
    int k = 4 * (int)(i % q4);
    long nh = i / q4;
    int h = (int)(nh % H), n = (int)(nh / H), t = n % T;
    float *v = x + (size_t)n * ld + (size_t)h * hd + k;
    const float4 *c4 = reinterpret_cast<const float4 *>(cs + 2 * ((size_t)t * half + k));
    float4 cs01 = c4[0], cs23 = c4[1];
    float c[4] = {cs01.x, cs01.z, cs23.x, cs23.z};
    float sn[4] = {sgn * cs01.y, sgn * cs01.w, sgn * cs23.y, sgn * cs23.w};
    float4 a = *reinterpret_cast<float4 *>(v), b = *reinterpret_cast<float4 *>(v + half);
    float x1[4] = {a.x, a.y, a.z, a.w}, x2[4] = {b.x, b.y, b.z, b.w}, y1[4], y2[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        y1[e] = x1[e] * c[e] - x2[e] * sn[e];
        y2[e] = x2[e] * c[e] + x1[e] * sn[e];
    }
    *reinterpret_cast<float4 *>(v) = make_float4(y1[0], y1[1], y1[2], y1[3]);
    *reinterpret_cast<float4 *>(v + half) = make_float4(y2[0], y2[1], y2[2], y2[3]);
}
void cu_rope_run(float *x, int N, int T, int H, int hd, int ld, int rot, float base, float sgn) {
    long n = (long)N * H * (rot / 2);
    if (!n) return;
    const float *cs = cu_rope_table(T, rot, base);
    if (rot % 8 == 0 && hd % 4 == 0 && ld % 4 == 0 && cu_aligned16(x, cs))
        rope4_kernel<<<cu_blocks(n / 4, 256), 256, 0, cu.stream>>>(x, cs, N, T, H, hd, ld, rot, sgn);
    else
        rope_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(x, cs, N, T, H, hd, ld, rot, sgn);
    CKL();
}
static void rope_forward(float *x, int N, int T, int H, int hd, int ld, int rot, float base) {
    cu_rope_run(x, N, T, H, hd, ld, rot, base, 1.f);
}
static void rope_backward(float *x, int N, int T, int H, int hd, int ld, int rot, float base) {
    cu_rope_run(x, N, T, H, hd, ld, rot, base, -1.f);
}
static void rmsnorm_rope_forward(float *out, float *rstd, const float *x, const float *w, int N,
                                 int T, int H, int hd, int rot, float base, float eps) {
    const float *cs = rot ? cu_rope_table(T, rot, base) : nullptr;
    if (rmsnorm_fwd_rowv(out, rstd, x, w, N * H, hd, eps, cs, T, H, rot)) return;
    rmsnorm_forward(out, rstd, x, w, N * H, hd, eps);
    if (rot) rope_forward(out, N, T, H, hd, H * hd, rot, base);
}

// ---- sigmoid gate per (token, head) ------------------------------------------------

__global__ void gate_fwd_kernel(float *out, const float *x, const float *g, long NH, int hd) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < NH * hd) out[i] = x[i] * cu_sigmoid(g[i / hd]);
}
static void gate_forward(float *out, const float *x, const float *g, int N, int H, int hd) {
    long n = (long)N * H * hd;
    gate_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(out, x, g, (long)N * H, hd);
    CKL();
}
__global__ void gate_bwd_kernel(float *dx, float *dg, const float *dout, const float *x,
                                const float *g, long NH, int hd) {
    long r = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (r >= NH) return;
    float s = cu_sigmoid(g[r]), acc = 0;
    for (int j = 0; j < hd; j++) {
        size_t i = (size_t)r * hd + j;
        dx[i] += dout[i] * s;
        acc += dout[i] * x[i];
    }
    dg[r] += acc * s * (1.f - s);
}
static void gate_backward(float *dx, float *dg, const float *dout, const float *x, const float *g,
                          int N, int H, int hd) {
    long n = (long)N * H;
    gate_bwd_kernel<<<cu_blocks(n, 128), 128, 0, cu.stream>>>(dx, dg, dout, x, g, n, hd);
    CKL();
}

// ---- short causal depthwise conv (baselines.md §1.1) -----------------------------
// Forward and dx: a thread per element. dw, db: column sums over the B*T rows in two
// fixed-order stages (row chunks, then chunks in order), no atomics.

__device__ __forceinline__ float conv_act_grad(float z, int silu) {
    if (!silu) return 1.f;
    float s = cu_sigmoid(z);
    return s * (1.f + z * (1.f - s));
}
__global__ void conv_fwd_kernel(float *y, float *pre, const float *x, const float *w,
                                const float *b, int T, int C, int W, int silu, long n) {
    long o = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (o >= n) return;
    int c = (int)(o % C), t = (int)((o / C) % T);
    long row0 = o / C - t; // first row of this sequence
    float s = b ? b[c] : 0.f;
    if (W == 0) s += x[o];
    for (int i = 0; i < W; i++) {
        int src = t - W + 1 + i;
        if (src >= 0) s += w[(size_t)c * W + i] * x[(row0 + src) * C + c];
    }
    pre[o] = s;
    y[o] = silu ? s * cu_sigmoid(s) : s;
}
__global__ void conv_dpre_kernel(float *dp, const float *dy, const float *pre, int silu, long n) {
    long o = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (o < n) dp[o] = dy[o] * conv_act_grad(pre[o], silu);
}
__global__ void conv_dx_kernel(float *dx, const float *dp, const float *w, int T, int C, int W,
                               long n) {
    long o = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (o >= n) return;
    int c = (int)(o % C), s = (int)((o / C) % T);
    long row0 = o / C - s;
    float acc = W == 0 ? dp[o] : 0.f;
    for (int i = 0; i < W; i++) {
        int t = s + W - 1 - i;
        if (t < T) acc += dp[(row0 + t) * C + c] * w[(size_t)c * W + i];
    }
    dx[o] += acc;
}
// part[(s*(W+1) + i)*C + c]: chunk s's sum over its rows of dp[n,c] x[n-(W-1-i),c]
// (i < W, same sequence only) and, for i == W, of dp[n,c] (the bias)
__global__ void conv_dw_part_kernel(float *part, const float *dp, const float *x, int N, int T,
                                    int C, int W, int rows_per_chunk) {
    __shared__ float acc[8][33];
    int c = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y;
    int n0 = s * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    for (int i = 0; i <= W; i++) {
        float v = 0;
        if (c < C)
            for (int n = n0 + threadIdx.y; n < n1; n += 8) {
                float d = dp[(size_t)n * C + c];
                if (i == W) v += d;
                else if (n % T >= W - 1 - i) v += d * x[(size_t)(n - (W - 1 - i)) * C + c];
            }
        acc[threadIdx.y][threadIdx.x] = v;
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            float t = 0;
            for (int k = 0; k < 8; k++) t += acc[k][threadIdx.x];
            part[((size_t)s * (W + 1) + i) * C + c] = t;
        }
        __syncthreads();
    }
}
__global__ void conv_dw_final_kernel(float *dw, float *db, const float *part, int S, int C, int W) {
    int e = blockIdx.x * blockDim.x + threadIdx.x; // e = i*C + c
    if (e >= (W + 1) * C) return;
    int i = e / C, c = e % C;
    float t = 0;
    for (int s = 0; s < S; s++) t += part[((size_t)s * (W + 1) + i) * C + c];
    if (i < W) dw[(size_t)c * W + i] += t;
    else if (db) db[c] += t;
}
static void conv_forward(float *y, float *pre, const float *x, const float *w, const float *b,
                         int B, int T, int C, int W, int silu) {
    long n = (long)B * T * C;
    if (n == 0) return;
    conv_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, pre, x, w, b, T, C, W, silu, n);
    CKL();
}
static void conv_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, const float *pre, int B, int T, int C, int W, int silu) {
    long n = (long)B * T * C;
    if (n == 0) return;
    int N = B * T, S = (N + 255) / 256;
    S = S > 256 ? 256 : S;
    int rows = (N + S - 1) / S;
    float *dp = cu_scratch((size_t)n + (size_t)S * (W + 1) * C), *part = dp + n;
    conv_dpre_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dp, dy, pre, silu, n);
    CKL();
    conv_dx_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dx, dp, w, T, C, W, n);
    CKL();
    if (W == 0 && !db) return;
    conv_dw_part_kernel<<<dim3(cu_blocks(C, 32), S), dim3(32, 8), 0, cu.stream>>>(part, dp, x, N, T,
                                                                                C, W, rows);
    CKL();
    conv_dw_final_kernel<<<cu_blocks((long)(W + 1) * C, 128), 128, 0, cu.stream>>>(dw, db, part, S,
                                                                                  C, W);
    CKL();
}

void cu_fill_layers(Ops *o, int p) {
    o->rmsnorm_forward = rmsnorm_forward;
    o->residual_rmsnorm_forward = residual_rmsnorm_forward;
    o->residual_rmsnorm_bf16_forward = p == 2 ? residual_rmsnorm_bf16_forward : nullptr;
    o->rmsnorm_backward = rmsnorm_backward;
    o->rmsnorm_backward_write = rmsnorm_backward_write;
    o->rmsnorm_backward_bf16 = p == 2 ? rmsnorm_backward_bf16 : nullptr;
    o->embedding_forward = embedding_forward;
    o->embedding_rmsnorm_forward = embedding_rmsnorm_forward;
    o->embedding_backward = p == 0   ? embedding_backward<0>
                            : p == 1 ? embedding_backward<1>
                                     : embedding_backward<2>;
    o->swiglu_forward = swiglu_forward;
    o->swiglu_backward = swiglu_backward;
    o->gelu_forward = gelu_forward;
    o->gelu_backward = gelu_backward;
    o->rope_forward = rope_forward;
    o->rmsnorm_rope_forward = rmsnorm_rope_forward;
    o->rope_backward = rope_backward;
    o->gate_forward = gate_forward;
    o->gate_backward = gate_backward;
    o->conv_forward = conv_forward;
    o->conv_backward = conv_backward;
}
