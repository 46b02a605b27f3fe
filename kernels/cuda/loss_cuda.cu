// Softmax cross-entropy with ignore index (-100, any negative target) and the
// evaluation's argmax / NLL. One warp per row; the loss sum is a fixed-order reduction
// (deterministic), accumulated in double like the CPU.
#include "cuda_common.cuh"

// A warp per row; each block's rows' NLL summed in double, in row order, into part[block];
// the last block to finish (a counter, reset by it for the next launch) adds the parts in
// block order into the loss: a fixed order, the same bits on every run, and no second
// launch (the single-block sum over every row that it replaces took 6.5 us at MAD's N)
constexpr int XENT_ROWS = 16; // rows (warps) per block
__device__ __forceinline__ double warp_sum_d(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ unsigned int xent_blocks_done;

__global__ void xent_kernel(float *loss, double *part, float *dlogits, const float *logits,
                            const int *tgt, const float *inv_count, int N, int V) {
    __shared__ double rows[XENT_ROWS];
    __shared__ bool last;
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
            nll = lse - l[y];
        }
    }
    if (lane == 0) rows[warp] = nll;
    __syncthreads();
    if (threadIdx.x == 0) {
        double b = 0;
        for (int k = 0; k < XENT_ROWS; k++) b += rows[k];
        part[blockIdx.x] = b;
        __threadfence(); // the part is visible before the count says so
        last = atomicAdd(&xent_blocks_done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // the last block: strided sums of the parts (through L2, not L1; eight loads in flight
    // a thread), then the warps' shuffle trees and the warps' sums in order
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
    v = warp_sum_d(v);
    if (lane == 0) rows[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int k = 0; k < XENT_ROWS; k++) t += rows[k];
        loss[0] += (float)(t * inv_count[0]);
        xent_blocks_done = 0;
    }
}

static void crossentropy(float *loss, float *dlogits, const float *logits, const int *targets,
                         const float *inv_count, int N, int V) {
    if (N == 0) return;
    int nb = cu_blocks(N, XENT_ROWS);
    double *part = (double *)cu_scratch(2 * (size_t)nb);
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
