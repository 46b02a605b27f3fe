// Softmax cross-entropy with ignore index (-100, any negative target) and the
// evaluation's argmax / NLL. A warp or a thread per row; the loss sum is a fixed-order reduction
// (deterministic), accumulated in double like the CPU.
#include "cuda_common.cuh"

// Each block's rows' NLL summed in double in a fixed order into part[block]; the last block
// to finish (a counter, reset by it for the next launch) adds the parts in block order
// into the loss: a fixed order, the same bits on every run, and no second launch (the
// single-block sum over every row that it replaces took 6.5 us at MAD's N)
__device__ unsigned int xent_blocks_done;
__device__ __forceinline__ double warp_sum_d(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
// the block's sum (red: shared, a slot per warp; every thread of the block calls it)
__device__ double block_sum_d(double v, double *red) {
    const int warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads(); // red free (a previous call's readers are done)
    if (threadIdx.x % 32 == 0) red[warp] = v;
    __syncthreads();
    double t = 0;
    for (int k = 0; k < nw; k++) t += red[k];
    return t;
}
// every thread of every block calls it with its own rows' NLL
__device__ void xent_finish(float *loss, double *part, double nll, const float *inv_count, double *red) {
    __shared__ bool last;
    const double b = block_sum_d(nll, red);
    if (threadIdx.x == 0) {
        part[blockIdx.x] = b;
        __threadfence(); // the part is visible before the count says so
        last = atomicAdd(&xent_blocks_done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // the last block: strided sums of the parts (through L2, not L1; eight loads in flight
    // a thread), then the block's fixed-order sum
    double v = 0;
    for (int i0 = threadIdx.x; i0 < (int)gridDim.x; i0 += 8 * blockDim.x) {
        double p[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int i = i0 + k * blockDim.x;
            p[k] = i < (int)gridDim.x ? __ldcg(part + i) : 0.0;
        }
#pragma unroll
        for (int k = 0; k < 8; k++) v += p[k];
    }
    const double t = block_sum_d(v, red);
    if (threadIdx.x == 0) {
        loss[0] += (float)(t * inv_count[0]);
        xent_blocks_done = 0;
    }
}

// A warp per row
constexpr int XENT_ROWS = 16; // rows (warps) per block
__global__ void xent_kernel(float *loss, double *part, float *dlogits, const float *logits,
                            const int *tgt, const float *inv_count, int N, int V) {
    __shared__ double red[XENT_ROWS];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * XENT_ROWS + warp;
    double nll = 0;
    if (row < N) {
        const float *l = logits + (size_t)row * V;
        float *dl = dlogits + (size_t)row * V;
        int y = tgt[row];
        if (y < 0) {
            for (int v = lane; v < V; v += 32) dl[v] = 0.f;
        } else {
            float mx = -INFINITY;
            for (int v = lane; v < V; v += 32) mx = fmaxf(mx, l[v]);
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float s = 0;
            for (int v = lane; v < V; v += 32) s += expf(l[v] - mx);
            s = warp_sum(s);
            float lse = mx + logf(s), ic = inv_count[0];
            for (int v = lane; v < V; v += 32) dl[v] = expf(l[v] - lse) * ic - (v == y ? ic : 0.f);
            if (lane == 0) nll = lse - l[y];
        }
    }
    xent_finish(loss, part, nll, inv_count, red);
}

// A thread per row for small vocabularies (V <= 32, V % 4 == 0, 16-byte rows: MAD's 16),
// its row in registers by float4: a warp per 16-wide row left half its lanes idle and
// its block's rows went through one serial sum
constexpr int XENT_SMALL_V = 32, XENT_THREADS = 128;
__global__ void __launch_bounds__(XENT_THREADS)
    xent_row_kernel(float *loss, double *part, float *dlogits, const float *logits, const int *tgt,
                    const float *inv_count, int N, int V) {
    __shared__ double red[XENT_THREADS / 32];
    constexpr int Q = XENT_SMALL_V / 4;
    const int row = blockIdx.x * blockDim.x + threadIdx.x, q = V / 4;
    double nll = 0;
    if (row < N) {
        const float4 *l4 = reinterpret_cast<const float4 *>(logits + (size_t)row * V);
        float4 *d4 = reinterpret_cast<float4 *>(dlogits + (size_t)row * V);
        const int y = tgt[row];
        float l[XENT_SMALL_V];
#pragma unroll
        for (int c = 0; c < Q; c++)
            if (c < q) *reinterpret_cast<float4 *>(l + 4 * c) = l4[c];
        float mx = -INFINITY, s = 0.f;
#pragma unroll
        for (int v = 0; v < XENT_SMALL_V; v++)
            if (v < V) mx = fmaxf(mx, l[v]);
#pragma unroll
        for (int v = 0; v < XENT_SMALL_V; v++)
            if (v < V) s += expf(l[v] - mx);
        const float lse = mx + logf(s), ic = inv_count[0];
#pragma unroll
        for (int v = 0; v < XENT_SMALL_V; v++)
            if (v < V) {
                if (v == y) nll = lse - l[v];
                l[v] = y < 0 ? 0.f : expf(l[v] - lse) * ic - (v == y ? ic : 0.f);
            }
#pragma unroll
        for (int c = 0; c < Q; c++)
            if (c < q) d4[c] = *reinterpret_cast<const float4 *>(l + 4 * c);
    }
    xent_finish(loss, part, nll, inv_count, red);
}

static void crossentropy(float *loss, float *dlogits, const float *logits, const int *targets,
                         const float *inv_count, int N, int V) {
    if (N == 0) return;
    const bool by_thread = V <= XENT_SMALL_V && V % 4 == 0 && cu_aligned16(logits, dlogits);
    const int nb = cu_blocks(N, by_thread ? XENT_THREADS : XENT_ROWS);
    double *part = (double *)cu_scratch(2 * (size_t)nb);
    if (by_thread)
        xent_row_kernel<<<nb, XENT_THREADS, 0, cu.stream>>>(loss, part, dlogits, logits, targets,
                                                            inv_count, N, V);
    else
        xent_kernel<<<nb, 32 * XENT_ROWS, 0, cu.stream>>>(loss, part, dlogits, logits, targets,
                                                          inv_count, N, V);
    CKL();
}

// first maximum wins, as in the CPU loop
__global__ void predict_kernel(int *pred, float *nll, const float *logits, const int *tgt, int N,
                               int V) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *l = logits + (size_t)row * V;
    float mx = -INFINITY;
    int best = V;
    for (int v = lane; v < V; v += 32)
        if (l[v] > mx) mx = l[v], best = v;
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, mx, o);
        int ob = __shfl_xor_sync(0xffffffffu, best, o);
        if (om > mx || (om == mx && ob < best)) mx = om, best = ob;
    }
    float s = 0;
    for (int v = lane; v < V; v += 32) s += expf(l[v] - mx);
    s = warp_sum(s);
    if (lane == 0) {
        pred[row] = best;
        nll[row] = tgt[row] >= 0 ? mx + logf(s) - l[tgt[row]] : 0.f;
    }
}
static void predict(int *pred, float *nll, const float *logits, const int *targets, int N, int V) {
    predict_kernel<<<cu_blocks(N, 8), 256, 0, cu.stream>>>(pred, nll, logits, targets, N, V);
    CKL();
}

void cu_fill_loss(Ops *o) {
    o->crossentropy = crossentropy;
    o->predict = predict;
}
