// Softmax cross-entropy with ignore index (-100, any negative target) and the
// evaluation's argmax / NLL. One warp per row; the loss sum is a single-block
// fixed-order reduction (deterministic), accumulated in double like the CPU.
#include "cuda_common.cuh"

__global__ void xent_rows_kernel(float *nll, float *dlogits, const float *logits, const int *tgt,
                                 const float *inv_count, int N, int V) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *l = logits + (size_t)row * V;
    float *dl = dlogits + (size_t)row * V;
    int y = tgt[row];
    if (y < 0) {
        for (int v = lane; v < V; v += 32) dl[v] = 0.f;
        if (lane == 0) nll[row] = 0.f;
        return;
    }
    float mx = -INFINITY;
    for (int v = lane; v < V; v += 32) mx = fmaxf(mx, l[v]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float s = 0;
    for (int v = lane; v < V; v += 32) s += expf(l[v] - mx);
    s = warp_sum(s);
    float lse = mx + logf(s), ic = inv_count[0];
    for (int v = lane; v < V; v += 32) dl[v] = expf(l[v] - lse) * ic - (v == y ? ic : 0.f);
    if (lane == 0) nll[row] = lse - l[y];
}

// 1024 threads: strided sums, then shuffles within each warp and across the 32 warps'
// sums (a fixed tree: one barrier instead of a shared-memory tree's ten)
__device__ __forceinline__ double warp_sum_d(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__global__ void xent_sum_kernel(float *loss, const float *nll, const float *inv_count, int N) {
    __shared__ double part[32];
    double s = 0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) s += nll[i];
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x >= 32) return;
    s = warp_sum_d(part[threadIdx.x]);
    if (threadIdx.x == 0) loss[0] += (float)(s * inv_count[0]);
}

static void crossentropy(float *loss, float *dlogits, const float *logits, const int *targets,
                         const float *inv_count, int N, int V) {
    float *nll = cu_scratch((size_t)N);
    xent_rows_kernel<<<cu_blocks(N, 8), 256, 0, cu.stream>>>(nll, dlogits, logits, targets,
                                                             inv_count, N, V);
    CKL();
    xent_sum_kernel<<<1, 1024, 0, cu.stream>>>(loss, nll, inv_count, N);
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
