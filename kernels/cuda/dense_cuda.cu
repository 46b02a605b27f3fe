// Dense algebra: cuBLAS matmuls (row-major through the column-major API) and
// the small vector ops. Row-major C[M,N] is column-major C^T[N,M], so
// C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T with A and B swapped.
#include <cstdint>

#include "cuda_common.cuh"

template <int P>
static void mm(float *C, const float *A, const float *B, int M, int N, int K, int tA, int tB,
               float alpha, float beta) {
    if (M == 0 || N == 0) return;
    CKB(cublasGemmEx(cu.blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                     K, &alpha, B, CUDA_R_32F, tB ? K : N, A, CUDA_R_32F, tA ? M : K, &beta, C,
                     CUDA_R_32F, N, cu_compute_type(P), CUBLAS_GEMM_DEFAULT));
}

template <int P>
static void mm_strided(float *C, const float *A, const float *B, int M, int N, int K, int tA,
                       int tB, float alpha, float beta, int batch, long sA, long sB, long sC) {
    if (M == 0 || N == 0 || batch == 0) return;
    CKB(cublasGemmStridedBatchedEx(cu.blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, CUDA_R_32F,
                                   tB ? K : N, sB, A, CUDA_R_32F, tA ? M : K, sA, &beta, C,
                                   CUDA_R_32F, N, sC, batch, cu_compute_type(P), CUBLAS_GEMM_DEFAULT));
}

// row-major C[M,N] = op(A) op(B) (+ beta C), A and B bf16, C bf16 or fp32, fp32 arithmetic
void cu_gemm_bf16(void *C, cudaDataType ct, const __nv_bfloat16 *A, const __nv_bfloat16 *B, int M,
                  int N, int K, int tA, int tB, float beta) {
    if (M == 0 || N == 0) return;
    const float alpha = 1.f;
    CKB(cublasGemmEx(cu.blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                     K, &alpha, B, CUDA_R_16BF, tB ? K : N, A, CUDA_R_16BF, tA ? M : K, &beta, C,
                     ct, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

__global__ void to_bf16_kernel(__nv_bfloat16 *y, const float *x, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}
// 4 elements a thread: one float4 load, one 8-byte store
__global__ void to_bf16_v4_kernel(__nv_bfloat16 *y, const float *x, long n4) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n4) return;
    st4(y + 4 * i, ld4(x + 4 * i));
}
void cu_to_bf16(__nv_bfloat16 *y, const float *x, long n) {
    if (n == 0) return;
    if (n % 4 == 0 && cu_aligned16(y, x))
        to_bf16_v4_kernel<<<cu_blocks(n / 4, 256), 256, 0, cu.stream>>>(y, x, n / 4);
    else
        to_bf16_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, n);
    CKL();
}

// ---- a model's parameters in bf16 (Ops.params_bf16) ----------------------------------
// The bf16 blocks rounded their own weights, one or two launches a block (four a MAD step,
// about 3 us each); the model keeps one bf16 copy of its whole parameter vector and the
// blocks take views of it (cu_params_bf16_of). Whatever writes the parameters writes the
// copy too: the optimizer's kernels as they update (cu_params_bf16_out), and to_device,
// copy and zero after they land (cu_params_bf16_sync); so the forward rounds the vector
// only when it first meets it. PLAB_PARAMS_SYNC=0 (A/B) rounds it at every forward
// instead, as up to 4ba11cf. One copy per vector (the tests keep several models alive),
// dropped when the vector is released; a vector met first inside a graph capture (no
// allocation there) or past the slots gets none.
struct ParamsCopy {
    const float *base;
    long n;
    __nv_bfloat16 *bf;
};
static ParamsCopy pcopy[8];
static bool params_sync() {
    static const bool on = !cu_env_off("PLAB_PARAMS_SYNC");
    return on;
}
static void params_bf16(const float *p, long n) {
    ParamsCopy *c = nullptr, *free_slot = nullptr;
    for (ParamsCopy &e : pcopy) {
        if (e.base == p && e.n == n) c = &e;
        if (!e.base && !free_slot) free_slot = &e;
    }
    if (c && params_sync()) return; // kept current by its writers
    cudaStreamCaptureStatus st;
    CK(cudaStreamIsCapturing(cu.stream, &st));
    if (!c && free_slot && st == cudaStreamCaptureStatusNone) {
        CK(cudaMalloc(&free_slot->bf, sizeof(__nv_bfloat16) * n));
        free_slot->base = p, free_slot->n = n, c = free_slot;
    }
    if (c) cu_to_bf16(c->bf, p, n);
}
const __nv_bfloat16 *cu_params_bf16_of(const float *w, long n) {
    for (const ParamsCopy &e : pcopy)
        if (e.base && w >= e.base && w + n <= e.base + e.n) return e.bf + (w - e.base);
    return nullptr;
}
__nv_bfloat16 *cu_params_bf16_out(const float *w, long n) {
    if (!params_sync()) return nullptr;
    for (const ParamsCopy &e : pcopy)
        if (e.base && w >= e.base && w + n <= e.base + e.n) return e.bf + (w - e.base);
    return nullptr;
}
void cu_params_bf16_sync(const void *dst, size_t bytes) {
    if (!params_sync()) return;
    const char *lo = (const char *)dst, *hi = lo + bytes;
    for (const ParamsCopy &e : pcopy) {
        if (!e.base) continue;
        const char *b = (const char *)e.base, *t = (const char *)(e.base + e.n);
        if (hi <= b || t <= lo) continue;
        const long i0 = (long)((lo > b ? lo - b : 0) / sizeof(float));
        const long i1 = (long)(((hi < t ? hi : t) - b + sizeof(float) - 1) / sizeof(float));
        cu_to_bf16(e.bf + i0, e.base + i0, i1 - i0);
    }
}
void cu_params_bf16_drop(const void *p) {
    for (ParamsCopy &e : pcopy)
        if (e.base == p) {
            CK(cudaFree(e.bf));
            e = ParamsCopy{};
        }
}

__global__ void add_bias_kernel(float *y, const float *b, long n, int C) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % C];
}
static void add_bias(float *y, const float *b, int N, int C) {
    long n = (long)N * C;
    add_bias_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, b, n, C);
    CKL();
}

// Column sums out[c] += sum_n a[n,c] (* b[n,c]) (* r[n]) in a fixed order, no atomics.
// The data is read as a [R, W] view: W = C, or for narrow rows (C dividing 128, as the
// per-head norms' C = head dim) the flat array folded into rows of W = 128, where
// view column w holds original column w % C and element i belongs to row i / C.
// stage 1: block (32 x VW columns, chunk s of 64 view rows) writes part[s, w], its 8
//          row lanes combined in lane order (VW = 4: float4 loads);
// stage 2: a block per output column c adds part[s, c + kC] over s and k (deferred, below).
constexpr int COLSUM_ROWS = 64; // view rows per chunk: enough blocks at C = 128
// (ab: also writes a in bf16 there, VW = 4 only: the bf16 attention block's dy)
template <int VW>
__global__ void colsum_part_kernel(float *part, const float *a, const float *b, const float *r,
                                   int R, int W, int C, __nv_bfloat16 *ab) {
    __shared__ float acc[8][32 * VW + 1];
    int w0 = (blockIdx.x * 32 + threadIdx.x) * VW, s = blockIdx.y;
    int n0 = s * COLSUM_ROWS, n1 = min(R, n0 + COLSUM_ROWS);
    float v[VW] = {};
    if (w0 < W)
        for (int n = n0 + threadIdx.y; n < n1; n += 8) {
            size_t i = (size_t)n * W + w0;
            float x[VW], y[VW];
            if (VW == 4) {
                *reinterpret_cast<float4 *>(x) = *reinterpret_cast<const float4 *>(a + i);
                if (b) *reinterpret_cast<float4 *>(y) = *reinterpret_cast<const float4 *>(b + i);
                if (ab) {
                    __nv_bfloat162 lo = __floats2bfloat162_rn(x[0], x[1]), hi = __floats2bfloat162_rn(x[2], x[3]);
                    *reinterpret_cast<uint2 *>(ab + i) = make_uint2(*reinterpret_cast<uint32_t *>(&lo),
                                                                    *reinterpret_cast<uint32_t *>(&hi));
                }
            } else {
                x[0] = a[i];
                if (b) y[0] = b[i];
            }
            float m = r ? r[i / C] : 1.f; // C % VW == 0: the VW elements share their row
#pragma unroll
            for (int e = 0; e < VW; e++) v[e] += (b ? x[e] * y[e] : x[e]) * m;
        }
#pragma unroll
    for (int e = 0; e < VW; e++) acc[threadIdx.y][threadIdx.x * VW + e] = v[e];
    __syncthreads();
    if (threadIdx.y == 0)
#pragma unroll
        for (int e = 0; e < VW; e++) {
            int w = w0 + e;
            if (w >= W) break;
            float t = 0;
            for (int k = 0; k < 8; k++) t += acc[k][threadIdx.x * VW + e];
            part[(size_t)s * W + w] = t;
        }
}
// ---- the column sums' second stage, deferred ----------------------------------------
// Each column sum of the backward ends in a small pass (out[c] += its parts) that is mostly
// launch and ramp: 12 of them in a Parallax step at MAD's shape. Their outputs are weight
// gradients, which nothing reads before the optimizer, so they wait in `pending` and run
// as one launch, a block per output column, when something may read them (cu_sums_flush:
// ops_cuda.cu calls it before every host read, copy, zero, optimizer op and graph end).
// A sum into anything else (the bias_backward op, whose output may be an activation's
// gradient) runs the same kernel at once.
// out[c] += sum over s < S and k < W / C of part[s, c + kC], the parts in cu_parts memory.
// wide (the split weight gradients, cu_grad_gemm_bf16; the head step's; most with W = C,
// promote_wide): out[i] += sum_s part[s, i] for i < C, coalesced (wide_sum),
// instead of a warp per column reading down it
struct PendingSum {
    float *out;
    const float *part;
    int S, W, C, first; // first: the index of its first block in the launch
    bool wide;
    int slices; // wide: warps that split S (1, 2, 4 or 8); a block spans 8 / slices x 128 elements
};
constexpr int WIDE_WARPS = 8, WIDE_ELEMS = 128; // 256 threads; a warp's lanes span 32 x 4 elements
constexpr int MAX_PENDING = 40; // the launch's argument stays under 4 KB
struct PendingSums {
    PendingSum e[MAX_PENDING];
    int n;
};
static PendingSums pending;
// a wide entry's slices: about 16 part rows a warp (two rounds of eight loads), so the launch
// has few blocks of real work. 95f14fe split every entry 8 ways, 128 elements a block: 3,378
// blocks a softmax step, most of them four rows deep (26 us under ncu; now 439 blocks, 12.6 us;
// 8 and 4 rows a warp timed 0.5 and 1 us slower on the H100, 16:45Z). PLAB_FLUSH_ROWS: A/B.
static int wide_slices(int S) {
    static const int rows = getenv("PLAB_FLUSH_ROWS") ? atoi(getenv("PLAB_FLUSH_ROWS")) : 16;
    int sl = 1;
    while (sl < WIDE_WARPS && rows * sl < S) sl *= 2;
    return sl;
}
// a sum of whole rows (W = C) as a wide one where its lanes are full and its chain no longer
// than the head step's (4 rounds of loads a warp): 0.5 us on the H100 (16:45Z); a narrow one
// (Parallax's probe norm, C = 8 over 1,024 rows) stays a warp per column
static bool promote_wide(int S, int W, int C) {
    return W == C && C >= WIDE_ELEMS && S <= 32 * WIDE_WARPS;
}
static int wide_elems_per_block(const PendingSum &e) { return WIDE_ELEMS * (WIDE_WARPS / e.slices); }

// a wide entry's 4 elements i0.. of part row s (zero past C)
__device__ __forceinline__ float4 wide_load(const PendingSum &e, int s, int i0, bool vec) {
    const float *p = e.part + (size_t)s * e.C + i0;
    if (vec) return __ldcg(reinterpret_cast<const float4 *>(p));
    float t[4];
    for (int k = 0; k < 4; k++) t[k] = i0 + k < e.C ? __ldcg(p + k) : 0.f;
    return make_float4(t[0], t[1], t[2], t[3]);
}
// a wide entry's block: groups of e.slices warps, each group WIDE_ELEMS elements (4 a lane);
// each warp sums its contiguous share of the S part rows in order (eight loads in flight),
// then the group's slices are added in slice order: deterministic. One thread down all
// S rows was a chain of S / 8 round trips (the head step's 256 rows: 20 us of the flush).
__device__ void wide_sum(const PendingSum &e, int blk) {
    __shared__ float4 acc[WIDE_WARPS][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sl = e.slices;
    const int slice = warp % sl, group = warp / sl;
    const int i0 = (blk * (WIDE_WARPS / sl) + group) * WIDE_ELEMS + 4 * lane;
    const bool vec = e.C % 4 == 0 && (uintptr_t)e.out % 16 == 0; // parts: 16-byte aligned
    const int s0 = (int)((long)e.S * slice / sl), s1 = (int)((long)e.S * (slice + 1) / sl);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (i0 < e.C)
        for (int s = s0; s < s1; s += 8) {
            float4 x[8];
#pragma unroll
            for (int k = 0; k < 8; k++)
                x[k] = s + k < s1 ? wide_load(e, s + k, i0, vec) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int k = 0; k < 8; k++) v.x += x[k].x, v.y += x[k].y, v.z += x[k].z, v.w += x[k].w;
        }
    if (sl > 1) {
        acc[warp][lane] = v;
        __syncthreads();
        if (slice != 0) return;
        for (int k = 1; k < sl; k++) {
            const float4 x = acc[warp + k][lane];
            v.x += x.x, v.y += x.y, v.z += x.z, v.w += x.w;
        }
    }
    if (i0 >= e.C) return;
    if (vec) {
        float4 *o = reinterpret_cast<float4 *>(e.out + i0);
        const float4 y = *o;
        *o = make_float4(y.x + v.x, y.y + v.y, y.z + v.z, y.w + v.w);
        return;
    }
    const float t[4] = {v.x, v.y, v.z, v.w};
    for (int k = 0; k < 4 && i0 + k < e.C; k++) e.out[i0 + k] += t[k];
}
// a warp per column of each entry (COLS_PER_BLOCK a block; a wide entry: WIDE_ELEMS a
// block): lane-strided sums, eight loads in flight, then the warp's butterfly (a fixed
// order: deterministic). A 256-thread block per column with a shared-memory tree made this
// launch 2,000 short blocks a step at MAD's shape (22 us under ncu); this form saved about
// 1 us a step on the H100 (Parallax, 2026-12-07): the wide sums are most of the launch.
constexpr int COLS_PER_BLOCK = 8;
__global__ void colsum_final_kernel(const PendingSums p) {
    int i = 0;
    while (i + 1 < p.n && (int)blockIdx.x >= p.e[i + 1].first) i++;
    const PendingSum e = p.e[i];
    if (e.wide) { // block-uniform
        wide_sum(e, blockIdx.x - e.first);
        return;
    }
    const int c = (blockIdx.x - e.first) * COLS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (c >= e.C) return; // warp-uniform
    const int K = e.W / e.C, n = e.S * K;
    float v = 0.f;
#pragma unroll 8
    for (int idx = lane; idx < n; idx += 32) v += __ldcg(e.part + (size_t)(idx / K) * e.W + c + (idx % K) * e.C);
    v = warp_sum(v);
    if (lane == 0) e.out[c] += v;
}
// the launch of p's entries, their first blocks set here
static void sum_parts(PendingSums &p) {
    int blocks = 0;
    for (int i = 0; i < p.n; i++) {
        const PendingSum &e = p.e[i];
        p.e[i].first = blocks;
        const int per = e.wide ? wide_elems_per_block(e) : COLS_PER_BLOCK;
        blocks += (e.C + per - 1) / per;
    }
    colsum_final_kernel<<<blocks, 256, 0, cu.stream>>>(p);
    CKL();
}
// the pending sums' launch; their parts stay allocated (a caller may hold a new one)
static void run_pending() {
    if (pending.n == 0) return;
    sum_parts(pending);
    pending.n = 0;
}
void cu_sums_flush() {
    if (pending.n == 0) return;
    run_pending();
    cu_parts_release();
}
// out[c] += the parts' sums: now, or (defer) with the pending sums
static void add_parts(float *out, const float *part, int S, int W, int C, bool defer,
                      bool wide = false) {
    if (!defer) {
        PendingSums one;
        one.e[0] = {out, part, S, W, C, 0, false, 0}, one.n = 1;
        sum_parts(one);
        return;
    }
    // two sums into one column would race: the first goes now (the caller's new part,
    // already written, stays allocated until the next full flush)
    for (int i = 0; i < pending.n; i++)
        if (out < pending.e[i].out + pending.e[i].C && pending.e[i].out < out + C) {
            run_pending();
            break;
        }
    if (pending.n == MAX_PENDING) run_pending();
    wide = wide || promote_wide(S, W, C);
    pending.e[pending.n++] = {out, part, S, W, C, 0, wide, wide ? wide_slices(S) : 0};
}

static void colsum(float *out, const float *a, const float *b, const float *r, int N, int C,
                   __nv_bfloat16 *ab, bool defer) {
    if (N == 0 || C == 0) return;
    int W = C, R = N;
    if (C < 128 && 128 % C == 0 && (long)N * C % 128 == 0) W = 128, R = (int)((long)N * C / 128);
    int S = (R + COLSUM_ROWS - 1) / COLSUM_ROWS;
    float *part = defer ? cu_parts((size_t)S * W) : cu_scratch((size_t)S * W);
    const bool v4 = C % 4 == 0 && cu_aligned16(a, b) && (uintptr_t)ab % 8 == 0;
    if (v4)
        colsum_part_kernel<4><<<dim3(cu_blocks(W, 128), S), dim3(32, 8), 0, cu.stream>>>(
            part, a, b, r, R, W, C, ab);
    else
        colsum_part_kernel<1><<<dim3(cu_blocks(W, 32), S), dim3(32, 8), 0, cu.stream>>>(
            part, a, b, r, R, W, C, nullptr);
    CKL();
    if (ab && !v4) cu_to_bf16(ab, a, (long)N * C);
    add_parts(out, part, S, W, C, defer);
}
void cu_colsum(float *out, const float *a, const float *b, const float *r, int N, int C,
               __nv_bfloat16 *ab) {
    colsum(out, a, b, r, N, C, ab, false);
}
void cu_grad_colsum(float *dw, const float *a, const float *b, const float *r, int N, int C,
                    __nv_bfloat16 *ab) {
    colsum(dw, a, b, r, N, C, ab, true);
}
void cu_grad_colsum_parts(float *dw, const float *part, int S, int C, bool wide) {
    if (S == 0 || C == 0) return;
    add_parts(dw, part, S, C, C, true, wide);
}

// ---- weight gradients: split over the tokens, summed with the deferred sums ----------
// dW[M,N] += dY^T X over K token rows (dY [K,M], X [K,N] bf16, row-major): K is the batch's
// 16K tokens at MAD, M and N a few hundred, so a matmul needs its K split to fill the GPU.
// cuBLAS does that with a reduction kernel after each matmul (splitKreduce, about 4 us,
// 10-12 of them a step); here the S slices of K are one strided-batched matmul into S
// partial [M,N] matrices (cu_parts), and their sum waits with the column sums for one
// launch (cu_sums_flush). S by the size of dW (WGRAD_SPLIT); PLAB_WGRAD_SPLIT overrides
// it with one S, or four "a:b:c:d" for M N up to 4K, 16K, 48K and larger (0: cuBLAS's own
// split-K and its reduce kernel), for A/B runs.
// By size class of dW (the head and embedding, 128 x 128, up to 48K elements, larger); the
// H100's best of the 4 x 4 tried, 2026-12-07 (docs/BENCHMARKS.md): small matrices want many
// slices. Halved at 15:26Z (6 us a step) once the flush summed them by slices in parallel.
static const int WGRAD_SPLIT[4] = {32, 16, 8, 4};
static int wgrad_split(int M, int N, int K) {
    static int env[4] = {-2};
    if (env[0] == -2) {
        const char *e = getenv("PLAB_WGRAD_SPLIT");
        int n = e && *e ? sscanf(e, "%d:%d:%d:%d", &env[0], &env[1], &env[2], &env[3]) : 0;
        if (n == 1) env[1] = env[2] = env[3] = env[0];
        else if (n != 4) env[0] = -1;
    }
    const long mn = (long)M * N;
    const int cls = mn <= 4096 ? 0 : mn <= 16384 ? 1 : mn <= 49152 ? 2 : 3;
    int S = env[0] >= 0 ? env[cls] : WGRAD_SPLIT[cls];
    while (S > 1 && (K % S || (K / S) % 8)) S /= 2; // equal slices of whole 16-byte rows
    return S;
}
// the same on fp32 rows at precision P (Ops.linear_param_grad: the head, the recurrent mixers'
// projections; the embedding's one-hot product)
// (at bf16's table only, where it was tuned: with it the fp32 step of softmax took 2.52 ms
// against 2.40 on cuBLAS's own split-K, H100 2026-12-07)
template <int P>
static void weight_grad(float *dW, const float *dY, const float *X, int M, int N, int K) {
    const int S = P == 2 ? wgrad_split(M, N, K) : 1;
    if (S <= 1) {
        mm<P>(dW, dY, X, M, N, K, 1, 0, 1.f, 1.f);
        return;
    }
    float *part = cu_parts((size_t)S * M * N);
    const long k = K / S;
    mm_strided<P>(part, dY, X, M, N, (int)k, 1, 0, 1.f, 0.f, S, k * M, k * N, (long)M * N);
    add_parts(dW, part, S, M * N, M * N, true, true);
}
void cu_grad_gemm(int precision, float *dW, const float *dY, const float *X, int M, int N, int K) {
    (precision == 0 ? weight_grad<0> : precision == 1 ? weight_grad<1> : weight_grad<2>)(dW, dY, X, M, N, K);
}
template <int P>
static void linear_param_grad(float *dW, float *db, const float *dY, const float *X, int M, int N,
                              int K) {
    weight_grad<P>(dW, dY, X, M, N, K);
    if (db) cu_grad_colsum(db, dY, nullptr, nullptr, K, M);
}
void cu_grad_gemm_bf16(float *dW, const __nv_bfloat16 *dY, const __nv_bfloat16 *X, int M, int N,
                       int K) {
    const int S = wgrad_split(M, N, K);
    if (S <= 1) {
        cu_gemm_bf16(dW, CUDA_R_32F, dY, X, M, N, K, 1, 0, 1.f);
        return;
    }
    float *part = cu_parts((size_t)S * M * N);
    const float alpha = 1.f, beta = 0.f;
    const long k = K / S;
    // column-major view: part_s^T [N,M] = X_s^T dY_s, X_s = rows s k .. (s+1) k - 1
    CKB(cublasGemmStridedBatchedEx(cu.blas, CUBLAS_OP_N, CUBLAS_OP_T, N, M, (int)k, &alpha, X,
                                   CUDA_R_16BF, N, k * N, dY, CUDA_R_16BF, M, k * M, &beta, part,
                                   CUDA_R_32F, N, (long)M * N, S, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    add_parts(dW, part, S, M * N, M * N, true, true);
}

// db[C] += sum_n dy[n,C]
static void bias_backward(float *db, const float *dy, int N, int C) {
    cu_colsum(db, dy, nullptr, nullptr, N, C);
}

__global__ void axpy_kernel(float *y, const float *x, float a, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}
static void axpy(float *y, const float *x, float a, long n) {
    axpy_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, a, n);
    CKL();
}

__global__ void scale_kernel(float *x, float a, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}
static void scale(float *x, float a, long n) {
    scale_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(x, a, n);
    CKL();
}

// one block, fixed-order tree: deterministic; double accumulation like the CPU
__global__ void sumsq_kernel(float *out, const float *x, long n) {
    __shared__ double part[1024];
    double s = 0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i] * x[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (float)part[0];
}
static void sumsq(float *out, const float *x, long n) {
    cu_sums_flush(); // x may be a gradient (clipping)
    sumsq_kernel<<<1, 1024, 0, cu.stream>>>(out, x, n);
    CKL();
}

__global__ void scale_rsqrt_kernel(float *x, const float *s, float eps, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    float f = (float)(1.0 / (sqrt((double)s[0]) + eps));
    if (i < n) x[i] *= f;
}
static void scale_rsqrt(float *x, const float *s, float eps, long n) {
    scale_rsqrt_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(x, s, eps, n);
    CKL();
}

void cu_fill_dense(Ops *o, int p) {
    o->matmul = p == 0 ? mm<0> : p == 1 ? mm<1> : mm<2>;
    o->matmul_strided = p == 0 ? mm_strided<0> : p == 1 ? mm_strided<1> : mm_strided<2>;
    o->linear_param_grad = p == 0 ? linear_param_grad<0> : p == 1 ? linear_param_grad<1> : linear_param_grad<2>;
    o->add_bias = add_bias;
    o->bias_backward = bias_backward;
    o->axpy = axpy;
    o->scale = scale;
    o->sumsq = sumsq;
    o->scale_rsqrt = scale_rsqrt;
    o->params_bf16 = p == 2 && !cu_env_off("PLAB_PARAMS_BF16") ? params_bf16 : nullptr; // A/B switch
}
