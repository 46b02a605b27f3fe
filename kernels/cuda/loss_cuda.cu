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

// Small vocabularies (V <= 32, V % 4 == 0, 16-byte rows: MAD's 16): TPR threads per row, a
// float4 of the row each, the row's max and sum by shuffles inside the group. A warp per
// 16-wide row left half its lanes idle; a thread per row (its 64-byte row in registers)
// ran 128 blocks at MAD's N, one per SM, and took 8.6 us where this takes about a third.
constexpr int XENT_SMALL_V = 32, XENT_THREADS = 128;
template <int TPR>
__global__ void __launch_bounds__(XENT_THREADS)
    xent_group_kernel(float *loss, double *part, float *dlogits, const float *logits, const int *tgt,
                      const float *inv_count, int N, int V) {
    __shared__ double red[XENT_THREADS / 32];
    const int t = blockIdx.x * blockDim.x + threadIdx.x, row = t / TPR, c = t % TPR, q = V / 4;
    const bool on = row < N && c < q;
    float4 x = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    if (on) x = reinterpret_cast<const float4 *>(logits + (size_t)row * V)[c];
    float mx = fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w));
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float s = on ? expf(x.x - mx) + expf(x.y - mx) + expf(x.z - mx) + expf(x.w - mx) : 0.f;
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    double nll = 0;
    if (on) {
        const int y = tgt[row];
        const float lse = mx + logf(s), ic = inv_count[0];
        float e[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const bool hit = 4 * c + k == y;
            if (hit) nll = lse - e[k];
            e[k] = y < 0 ? 0.f : expf(e[k] - lse) * ic - (hit ? ic : 0.f);
        }
        reinterpret_cast<float4 *>(dlogits + (size_t)row * V)[c] = make_float4(e[0], e[1], e[2], e[3]);
    }
    xent_finish(loss, part, nll, inv_count, red);
}

static void crossentropy(float *loss, float *dlogits, const float *logits, const int *targets,
                         const float *inv_count, int N, int V) {
    if (N == 0) return;
    const bool grouped = V <= XENT_SMALL_V && V % 4 == 0 && cu_aligned16(logits, dlogits);
    const int tpr = V <= 8 ? 2 : V <= 16 ? 4 : 8; // threads per row: V / 4 rounded up to 2^k
    const int nb = grouped ? cu_blocks((long)N * tpr, XENT_THREADS) : cu_blocks(N, XENT_ROWS);
    double *part = (double *)cu_scratch(2 * (size_t)nb);
    if (grouped) {
        auto k = tpr == 2 ? xent_group_kernel<2> : tpr == 4 ? xent_group_kernel<4> : xent_group_kernel<8>;
        k<<<nb, XENT_THREADS, 0, cu.stream>>>(loss, part, dlogits, logits, targets, inv_count, N, V);
    } else
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
