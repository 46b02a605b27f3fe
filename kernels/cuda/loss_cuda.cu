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

// ---- the training step's tail: Ops.head_loss_step (ops.h HeadLoss) -------------------
// At MAD's shape the last residual add, the final norm, the head (V = 16), the cross-entropy
// and their backward were seven launches (two TF32 matmuls a way, the head's weight and bias
// gradients, the norm's backward), each moving [N, d] or [N, V] through memory. Here a warp
// takes rows (two at a time) with everything in registers: the row in, dx out (and its bf16
// copy for the MLP below). Lane l owns columns 4l..4l+3 (C <= 128) and keeps the head's weights
// of its columns and its share of their gradient (V <= 16: 64 registers each); the block's
// warps add their gradients in a fixed order into a part row, summed with the other weight
// gradients' parts at the flush (cu_grad_colsum_parts), and the loss as crossentropy sums it.
constexpr int HL_V = 16, HL_WARPS = 4, HL_ROWS = 64; // vocab bound; warps, rows a block
__device__ __forceinline__ float4 f4(float a) { return make_float4(a, a, a, a); }
__device__ __forceinline__ float4 operator+(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 operator*(float4 a, float4 b) {
    return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w);
}
__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
__device__ __forceinline__ float4 fma4(float a, float4 b, float4 c) {
    return make_float4(fmaf(a, b.x, c.x), fmaf(a, b.y, c.y), fmaf(a, b.z, c.z), fmaf(a, b.w, c.w));
}
// one exchange of warp_sum16: lanes with bit M set keep the upper H of their vector and send
// the lower H, the others the reverse (H and M template arguments: with them as loop
// variables nvcc kept p in local memory and branched on the lane bit)
template <int H, int M> __device__ __forceinline__ void fold16(float (&p)[HL_V], int lane) {
    const bool up = lane & M;
#pragma unroll
    for (int j = 0; j < H; j++) {
        const float keep = up ? p[j + H] : p[j], give = up ? p[j] : p[j + H];
        p[j] = keep + __shfl_xor_sync(0xffffffffu, give, M);
    }
}
// the lanes' 16 partial sums p[v] summed over the warp: lane l ends with v = l / 2's (lanes
// 2v and 2v + 1 the same). Each exchange halves the vector a lane carries: 8 + 4 + 2 + 1 + 1
// shuffles where 16 warp sums take 80.
__device__ __forceinline__ float warp_sum16(float (&p)[HL_V], int lane) {
    static_assert(HL_V == 16, "four exchanges");
    fold16<8, 16>(p, lane);
    fold16<4, 8>(p, lane);
    fold16<2, 4>(p, lane);
    fold16<1, 2>(p, lane);
    return p[0] + __shfl_xor_sync(0xffffffffu, p[0], 1);
}
__device__ __forceinline__ void hl_load(float4 &x, float4 &y, const HeadLoss &h, int n, int c, bool on) {
    x = on ? ld4(h.x + (size_t)n * h.C + c) : f4(0.f);
    y = on && h.y ? ld4(h.y + (size_t)n * h.C + c) : f4(0.f);
}
// a block's part rows: pW [V C], pb [V], pn [C] (dW, db, dnorm_w). A warp takes R rows side
// by side (one, two or three took the same time on the H100, 2026-12-07: two kept). FAST:
// the norm's rstd, the exponentials and the log by the fast single-precision instructions
// instead of the double rstd of residual_rmsnorm4_kernel and libm's expf and logf (2 us a
// step on the H100; PLAB_HL_FAST=0 for the exact ones).
// (The head's weights in shared memory, three blocks an SM instead of two, lost 3 us on the
// H100, 16:30Z.)
template <bool FAST, int R = 2>
__global__ void __launch_bounds__(32 * HL_WARPS)
    head_loss_kernel(const HeadLoss h, double *nll_part, float *pW, float *pb, float *pn,
                     __nv_bfloat16 *dxb) {
    __shared__ float red[HL_WARPS][HL_V * 128 + HL_V + 128];
    __shared__ double red_d[HL_WARPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, C = h.C, V = h.V, c = 4 * lane;
    const int my_v = lane / 2; // the logit this lane holds after warp_sum16
    const bool on = c < C, valid = my_v < V;
    float4 W[HL_V], dW[HL_V];
#pragma unroll
    for (int v = 0; v < HL_V; v++) {
        W[v] = on && v < V ? ld4(h.W + (size_t)v * C + c) : f4(0.f);
        dW[v] = f4(0.f);
    }
    const float4 wn = on ? ld4(h.norm_w + c) : f4(0.f);
    const float bias = valid ? h.b[my_v] : 0.f, ic = h.inv_count[0];
    float db = 0.f;
    float4 dwn = f4(0.f);
    double nll = 0;
    const int n0 = blockIdx.x * HL_ROWS, n1 = min(h.N, n0 + HL_ROWS), step = HL_WARPS * R;
    // rows n + k (k < R) an iteration; one past n1 is computed on row n with no target
    // (its gradient zero) and not stored
    int n = n0 + warp * R;
    float4 x[R], y[R];
#pragma unroll
    for (int k = 0; k < R; k++)
        if (n < n1) hl_load(x[k], y[k], h, n + k < n1 ? n + k : n, c, on);
    for (; n < n1; n += step) {
        float4 xn[R], yn[R]; // the next rows', in flight during these
        int tgt[R];
#pragma unroll
        for (int k = 0; k < R; k++) {
            const int m = n + step + k;
            hl_load(xn[k], yn[k], h, m < n1 ? m : n, c, on);
            tgt[k] = n + k < n1 ? h.targets[n + k] : -1;
        }
        // forward: r = x + y, f = rmsnorm(r) w (as residual_rmsnorm4_kernel), the logits as
        // rstd ((r w) W^T) + b: their sums need not wait for the norm's (two chains of
        // shuffles side by side, twice)
        float4 r[R], u[R];
        float ss[R], sum[R];
#pragma unroll
        for (int k = 0; k < R; k++) {
            r[k] = x[k] + y[k], u[k] = r[k] * wn;
            float p[HL_V];
#pragma unroll
            for (int v = 0; v < HL_V; v++) p[v] = dot4(u[k], W[v]);
            ss[k] = warp_sum(dot4(r[k], r[k])), sum[k] = warp_sum16(p, lane); // every lane
        }
        float rs[R], g[R];
#pragma unroll
        for (int k = 0; k < R; k++) {
            rs[k] = FAST ? rsqrtf(ss[k] / C + h.eps) : (float)(1.0 / sqrt((double)(ss[k] / C + h.eps)));
            const float l = valid ? rs[k] * sum[k] + bias : -INFINITY;
            // the cross-entropy over the 16 lanes of one parity (as xent_group_kernel)
            float mx = l;
#pragma unroll
            for (int m = 2; m < 32; m *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
            float s = valid ? (FAST ? __expf(l - mx) : expf(l - mx)) : 0.f;
#pragma unroll
            for (int m = 2; m < 32; m *= 2) s += __shfl_xor_sync(0xffffffffu, s, m);
            const float lse = mx + (FAST ? __logf(s) : logf(s));
            const bool hit = my_v == tgt[k];
            g[k] = tgt[k] < 0 || !valid ? 0.f : (FAST ? __expf(l - lse) : expf(l - lse)) * ic - (hit ? ic : 0.f);
            if (hit && lane % 2 == 0) nll += lse - l;
            db += g[k];
        }
        // backward: the head (df = g W, dW += g f), then the norm (rmsnorm_bwd_fused_kernel's
        // formulas, baselines.md §1.3)
        float4 df[R];
        float dot[R];
#pragma unroll
        for (int k = 0; k < R; k++) {
            const float4 f = u[k] * f4(rs[k]);
            df[k] = f4(0.f);
#pragma unroll
            for (int v = 0; v < HL_V; v++) {
                const float gv = __shfl_sync(0xffffffffu, g[k], 2 * v);
                df[k] = fma4(gv, W[v], df[k]);
                dW[v] = fma4(gv, f, dW[v]);
            }
            dot[k] = warp_sum(dot4(wn * df[k], r[k]));
        }
#pragma unroll
        for (int k = 0; k < R; k++) {
            const float q = rs[k], s3 = q * q * q / C, t = dot[k];
            const float4 rr = r[k], dd = df[k];
            const float4 dx = make_float4(q * wn.x * dd.x - s3 * rr.x * t, q * wn.y * dd.y - s3 * rr.y * t,
                                          q * wn.z * dd.z - s3 * rr.z * t, q * wn.w * dd.w - s3 * rr.w * t);
            if (on && n + k < n1) {
                const size_t o = (size_t)(n + k) * C + c;
                st4(h.dx + o, dx);
                if (dxb) st4(dxb + o, dx);
            }
            dwn = dwn + dd * rr * f4(q);
            x[k] = xn[k], y[k] = yn[k];
        }
    }
    // the block's gradients: each warp's into shared memory, then summed over the warps in
    // a fixed order into the block's part rows
    float *w = red[warp];
#pragma unroll
    for (int v = 0; v < HL_V; v++)
        if (on && v < V) st4(w + v * C + c, dW[v]);
    if (valid && lane % 2 == 0) w[V * C + my_v] = db;
    if (on) st4(w + V * C + HL_V + c, dwn); // 16-byte aligned
    __syncthreads();
    for (int e = threadIdx.x; e < V * C + HL_V + C; e += blockDim.x) {
        const int i = e - V * C; // db's, then past HL_V dnorm_w's
        if (i >= V && i < HL_V) continue;
        float t = 0.f;
        for (int k = 0; k < HL_WARPS; k++) t += red[k][e];
        if (i < 0) pW[(size_t)blockIdx.x * V * C + e] = t;
        else if (i < V) pb[(size_t)blockIdx.x * V + i] = t;
        else pn[(size_t)blockIdx.x * C + i - HL_V] = t;
    }
    xent_finish(h.loss, nll_part, nll, h.inv_count, red_d);
}
#include "head_loss_tc.cuh"

// TC: the bf16 backend's tensor-core kernel where the shape allows (C = 32, 64, 128; PLAB_HL_TC=0:
// off, A/B)
template <bool TC> static int head_loss_step(const HeadLoss *h) {
    if (!(h->V <= HL_V && h->C <= 128 && h->C % 4 == 0 && cu_aligned16(h->x, h->y, h->dx, h->W) &&
          cu_aligned16(h->norm_w)))
        return 0;
    if (h->N == 0) return 1;
    static const bool fast = !cu_env_off("PLAB_HL_FAST"); // A/B switch
    static const bool tc_on = !cu_env_off("PLAB_HL_TC");
    void (*tck)(const HeadLoss, double *, float *, float *, float *, __nv_bfloat16 *) =
        h->C == 128 ? head_loss_tc_kernel<16> : h->C == 64 ? head_loss_tc_kernel<8> : h->C == 32 ? head_loss_tc_kernel<4> : nullptr;
    const bool tc = TC && tc_on && tck;
    const int S = cu_blocks(h->N, tc ? HT_ROWS : HL_ROWS), V = h->V, C = h->C;
    float *pW = cu_parts((size_t)S * V * C), *pb = cu_parts((size_t)S * V), *pn = cu_parts((size_t)S * C);
    double *nll_part = (double *)cu_scratch(2 * (size_t)S);
    __nv_bfloat16 *dxb = h->mlp_save ? cu_state_slot(h->mlp_save, h->N, C, 1) : nullptr;
    if (tc) {
        CK(cudaFuncSetAttribute(tck, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sizeof(HeadTcSmem)));
        tck<<<S, 32 * HT_WARPS, sizeof(HeadTcSmem), cu.stream>>>(*h, nll_part, pW, pb, pn, dxb);
    } else {
        auto kern = fast ? head_loss_kernel<true> : head_loss_kernel<false>;
        kern<<<S, 32 * HL_WARPS, 0, cu.stream>>>(*h, nll_part, pW, pb, pn, dxb);
    }
    CKL();
    cu_grad_colsum_parts(h->dW, pW, S, V * C, true);
    cu_grad_colsum_parts(h->db, pb, S, V);
    cu_grad_colsum_parts(h->dnorm_w, pn, S, C);
    return 1;
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

void cu_fill_loss(Ops *o, int p) {
    o->crossentropy = crossentropy;
    o->predict = predict;
    o->head_loss_step = cu_env_off("PLAB_HEAD_STEP") ? nullptr // A/B switch
                        : p == 2                      ? head_loss_step<true>
                                                      : head_loss_step<false>;
}
