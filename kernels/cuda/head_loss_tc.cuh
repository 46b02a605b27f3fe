// The tail step (Ops.head_loss_step) on the tensor cores, for the bf16 backend (included by
// loss_cuda.cu, which owns xent_finish). Same maths as head_loss_kernel; its three products,
// 16 x 128 a row, are TF32 mma (as cuBLAS ran the head on this backend before the fused
// step), the rest fp32. head_loss_kernel spent most of its time in chains of shuffles (the
// logits' sums over the warp) at 2 warps a scheduler: 24 us a MAD step under ncu. This one
// times the same on the H100's step (17:34Z: both bound by one pass of loads, products and
// stores a warp at 8 warps an SM) and writes half the part rows (128 rows a block).
//
// A warp takes a tile of 16 rows; thread (g, t) = (lane / 4, lane % 4) holds rows g and g + 8,
// columns 8j + 2t and 8j + 2t + 1 of each group j of 8: exactly a C fragment of a product
// with n over the columns, and, taking those two columns as k = t and k = t + 4 of step j, an
// A fragment of a product with k over the columns. So with r = x + y (the residual) and
// Wt = W diag(w) (the norm's weight folded into the head; baselines.md §1.3 for the norm):
//   logits  L = rstd (r Wt^T) + b                 A = r (k = columns), B = Wt^T
//   dU      = dL Wt  (= w * df, df = dL W)        A = dL (k = vocabulary, same pairing), B = Wt
//   dx      = rstd dU - rstd^3 / C (dU . r) r
//   G       = dL^T (rstd r) over the block's rows  k = rows: both through shared memory
//   dW = G diag(w),  dw_norm[c] = sum_v W[v, c] G[v, c],  db = column sums of dL
// L's C fragments are dU's A fragments (no shuffles); the row sums (rstd, softmax, dU . r)
// are over a quad of lanes (two shuffles). The block's G is summed over its warps in a fixed
// order (deterministic) into part rows, added at the flush like head_loss_kernel's.
#include "mma_tf32.cuh"

constexpr int HT_WARPS = 8, HT_ROWS = 16 * HT_WARPS; // a 16-row tile a warp
constexpr int HT_RS = 136;                            // staged rows' stride (bank-conflict free)
constexpr int HT_DS = 24;                             // staged dL's stride
struct HeadTcSmem {
    uint2 wl[16][2][32];  // B fragments of L: [j][vocabulary half s][lane], tf32 of Wt
    uint2 wu[16][2][32];  // B fragments of dU: [j][s][lane]
    float rs[HT_WARPS][16 * HT_RS]; // a warp's rstd r (then its G, [v][c]) in fp32
    float dl[HT_WARPS][16 * HT_DS]; // a warp's dL, [row][v]
    float db[HT_WARPS][16];
    double red[HT_WARPS];
};

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// pW [V C], pb [V], pn [C]: the block's part rows (as head_loss_kernel). C = 8 J (a compile-time
// J: with a loop bound known at run time nvcc issued each group's loads after the previous
// group's sums, 16 round trips a warp), V <= 16.
template <int J>
__global__ void __launch_bounds__(32 * HT_WARPS)
    head_loss_tc_kernel(const HeadLoss h, double *nll_part, float *pW, float *pb, float *pn,
                        __nv_bfloat16 *dxb) {
#ifdef PLAB_EMU // (the emulation's rewriting of dynamic shared memory runs on .cu files only)
    HeadTcSmem &sm = *emu_dyn_smem<HeadTcSmem>();
#else
    extern __shared__ __align__(16) unsigned char ht_raw[];
    HeadTcSmem &sm = *reinterpret_cast<HeadTcSmem *>(ht_raw);
#endif
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    constexpr int C = 8 * J;
    const int V = h.V;
    const int n0 = blockIdx.x * HT_ROWS + 16 * warp, ra = n0 + g, rb = n0 + g + 8;
    const bool ona = ra < h.N, onb = rb < h.N;
    // everything a tile reads is loaded first, in flight together
    const int ta = ona ? h.targets[ra] : -1, tb = onb ? h.targets[rb] : -1;
    const float ic = h.inv_count[0];
    float bias[4]; // vocabulary 8 (k / 2) + 2t + k % 2
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int v = 8 * (k / 2) + 2 * t + k % 2;
        bias[k] = v < V ? h.b[v] : 0.f;
    }
    // r = x + y for rows ra (r[j][0..1]) and rb (r[j][2..3])
    float r[J][4];
    float ssa = 0.f, ssb = 0.f;
#pragma unroll
    for (int j = 0; j < J; j++) {
        const int c = 8 * j + 2 * t;
        const float2 a = ona ? *reinterpret_cast<const float2 *>(h.x + (size_t)ra * C + c) : make_float2(0.f, 0.f);
        const float2 b = onb ? *reinterpret_cast<const float2 *>(h.x + (size_t)rb * C + c) : make_float2(0.f, 0.f);
        r[j][0] = a.x, r[j][1] = a.y, r[j][2] = b.x, r[j][3] = b.y;
    }
    if (h.y)
#pragma unroll
        for (int j = 0; j < J; j++) {
            const int c = 8 * j + 2 * t;
            const float2 a = ona ? *reinterpret_cast<const float2 *>(h.y + (size_t)ra * C + c) : make_float2(0.f, 0.f);
            const float2 b = onb ? *reinterpret_cast<const float2 *>(h.y + (size_t)rb * C + c) : make_float2(0.f, 0.f);
            r[j][0] += a.x, r[j][1] += a.y, r[j][2] += b.x, r[j][3] += b.y;
        }
    // the B fragments, from Wt = W diag(w) (zero past V), while the rows load: W and w staged in
    // shared memory first (rs's space, free until the tables are built; 16-byte loads)
    float *wst = &sm.rs[0][0]; // [17][C]: W's rows (zero past V), then w
    static_assert(17 * 128 <= HT_WARPS * 16 * HT_RS, "W and w fit the staging space");
    constexpr int C4 = C / 4;
#pragma unroll
    for (int i0 = 0; i0 < 17 * C4; i0 += 32 * HT_WARPS) {
        const int i = i0 + threadIdx.x, v = i / C4, c = 4 * (i % C4);
        if (i < 17 * C4)
            st4(wst + v * C + c, v < V ? ld4(h.W + (size_t)v * C + c) : v == 16 ? ld4(h.norm_w + c) : f4(0.f));
    }
    __syncthreads();
    constexpr int ROUNDS = J * 64 / (32 * HT_WARPS); // table entries a thread
    static_assert(ROUNDS * 32 * HT_WARPS == J * 64 && J <= 16, "whole rounds; a thread a column at the end");
#pragma unroll
    for (int i = 0; i < ROUNDS; i++) {
        const int e = threadIdx.x + 32 * HT_WARPS * i, j = e / 64, s = (e / 32) % 2, l = e % 32, lg = l / 4, lt = l % 4;
        auto wt = [&](int v, int c) { return tf32(wst[v * C + c] * wst[16 * C + c]); };
        const int c0 = 8 * j + 2 * lt; // L: B(k, n) = Wt[8s + n][column of k]
        sm.wl[j][s][l] = make_uint2(wt(8 * s + lg, c0), wt(8 * s + lg, c0 + 1));
        const int v0 = 8 * s + 2 * lt; // dU: B(k, n) = Wt[vocabulary of k][8j + n]
        sm.wu[j][s][l] = make_uint2(wt(v0, 8 * j + lg), wt(v0 + 1, 8 * j + lg));
    }
#pragma unroll
    for (int j = 0; j < J; j++)
        ssa += r[j][0] * r[j][0] + r[j][1] * r[j][1], ssb += r[j][2] * r[j][2] + r[j][3] * r[j][3];
    __syncthreads();
    const float qa = rsqrtf(quad_sum(ssa) / C + h.eps), qb = rsqrtf(quad_sum(ssb) / C + h.eps);

    // logits: acc[s] holds rows ra / rb, vocabulary 8s + 2t, 8s + 2t + 1
    float L[2][4] = {};
#pragma unroll
    for (int j = 0; j < J; j++) {
        const uint32_t a[4] = {tf32(r[j][0]), tf32(r[j][2]), tf32(r[j][1]), tf32(r[j][3])};
#pragma unroll
        for (int s = 0; s < 2; s++) mma_tf32(L[s], a, sm.wl[j][s][lane].x, sm.wl[j][s][lane].y);
    }
    // the cross-entropy of rows ra (e = 0, 1) and rb (e = 2, 3), over the quad
    double nll = 0;
    float dl[2][4];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const float q = half ? qb : qa;
        const int tg = half ? tb : ta;
        float l[4];
        float mx = -INFINITY;
#pragma unroll
        for (int k = 0; k < 4; k++) { // k: (s, column) = (k / 2, k % 2)
            const int v = 8 * (k / 2) + 2 * t + k % 2;
            l[k] = v < V ? q * L[k / 2][2 * half + k % 2] + bias[k] : -INFINITY;
            mx = fmaxf(mx, l[k]);
        }
        mx = quad_max(mx);
        float se = 0.f;
#pragma unroll
        for (int k = 0; k < 4; k++) se += __expf(l[k] - mx); // exp(-inf) = 0 past V
        const float lse = mx + __logf(quad_sum(se));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int v = 8 * (k / 2) + 2 * t + k % 2;
            const bool hit = v == tg;
            dl[k / 2][2 * half + k % 2] = tg < 0 || v >= V ? 0.f : __expf(l[k] - lse) * ic - (hit ? ic : 0.f);
            if (hit) nll += lse - l[k];
        }
    }
    // dU = dL Wt (A: dL's C fragments as they are), dU . r per row
    float dU[J][4];
    float da = 0.f, dbt = 0.f;
    const uint32_t a0[4] = {tf32(dl[0][0]), tf32(dl[0][2]), tf32(dl[0][1]), tf32(dl[0][3])};
    const uint32_t a1[4] = {tf32(dl[1][0]), tf32(dl[1][2]), tf32(dl[1][1]), tf32(dl[1][3])};
#pragma unroll
    for (int j = 0; j < J; j++) {
        dU[j][0] = dU[j][1] = dU[j][2] = dU[j][3] = 0.f;
        mma_tf32(dU[j], a0, sm.wu[j][0][lane].x, sm.wu[j][0][lane].y);
        mma_tf32(dU[j], a1, sm.wu[j][1][lane].x, sm.wu[j][1][lane].y);
        da += dU[j][0] * r[j][0] + dU[j][1] * r[j][1], dbt += dU[j][2] * r[j][2] + dU[j][3] * r[j][3];
    }
    da = quad_sum(da), dbt = quad_sum(dbt);
    // dx; stage rstd r and dL for G
    float *rs = sm.rs[warp], *dls = sm.dl[warp];
    const float sa = qa * qa * qa / C * da, sb = qb * qb * qb / C * dbt;
#pragma unroll
    for (int j = 0; j < J; j++) {
        const int c = 8 * j + 2 * t;
        const float2 xa = make_float2(qa * dU[j][0] - sa * r[j][0], qa * dU[j][1] - sa * r[j][1]);
        const float2 xb = make_float2(qb * dU[j][2] - sb * r[j][2], qb * dU[j][3] - sb * r[j][3]);
        if (ona) {
            *reinterpret_cast<float2 *>(h.dx + (size_t)ra * C + c) = xa;
            if (dxb) *reinterpret_cast<__nv_bfloat162 *>(dxb + (size_t)ra * C + c) = __floats2bfloat162_rn(xa.x, xa.y);
        }
        if (onb) {
            *reinterpret_cast<float2 *>(h.dx + (size_t)rb * C + c) = xb;
            if (dxb) *reinterpret_cast<__nv_bfloat162 *>(dxb + (size_t)rb * C + c) = __floats2bfloat162_rn(xb.x, xb.y);
        }
        *reinterpret_cast<float2 *>(rs + g * HT_RS + c) = make_float2(qa * r[j][0], qa * r[j][1]);
        *reinterpret_cast<float2 *>(rs + (g + 8) * HT_RS + c) = make_float2(qb * r[j][2], qb * r[j][3]);
    }
#pragma unroll
    for (int s = 0; s < 2; s++) {
        const int v = 8 * s + 2 * t;
        *reinterpret_cast<float2 *>(dls + g * HT_DS + v) = make_float2(dl[s][0], dl[s][1]);
        *reinterpret_cast<float2 *>(dls + (g + 8) * HT_DS + v) = make_float2(dl[s][2], dl[s][3]);
    }
    __syncwarp();
    // the epilogue's column of W (a thread a column), in flight during G
    const int ce = threadIdx.x; // < C: 32 HT_WARPS = 128 >= C
    float wcol[16];
#pragma unroll
    for (int v = 0; v < 16; v++) wcol[v] = ce < C && v < V ? h.W[(size_t)v * C + ce] : 0.f;
    const float wce = ce < C ? h.norm_w[ce] : 0.f;
    // G = dL^T (rstd r): A(m = v, k = row) = dL[row][v], B(k = row, n = column) = rstd r
    float G[J][4];
    uint32_t ga[2][4];
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
        const int r0 = 8 * kk + t;
        ga[kk][0] = tf32(dls[r0 * HT_DS + g]), ga[kk][1] = tf32(dls[r0 * HT_DS + g + 8]);
        ga[kk][2] = tf32(dls[(r0 + 4) * HT_DS + g]), ga[kk][3] = tf32(dls[(r0 + 4) * HT_DS + g + 8]);
    }
#pragma unroll
    for (int j = 0; j < J; j++) {
        G[j][0] = G[j][1] = G[j][2] = G[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const int r0 = 8 * kk + t, c = 8 * j + g;
            mma_tf32(G[j], ga[kk], tf32(rs[r0 * HT_RS + c]), tf32(rs[(r0 + 4) * HT_RS + c]));
        }
    }
    // db: dL's column sums over the tile
    if (lane < 16) {
        float s = 0.f;
        for (int k = 0; k < 16; k++) s += dls[k * HT_DS + lane];
        sm.db[warp][lane] = s;
    }
    __syncwarp();
    // the warp's G over its staged rows, [v][c]
#pragma unroll
    for (int j = 0; j < J; j++) {
        const int c = 8 * j + 2 * t;
        *reinterpret_cast<float2 *>(rs + g * HT_RS + c) = make_float2(G[j][0], G[j][1]);
        *reinterpret_cast<float2 *>(rs + (g + 8) * HT_RS + c) = make_float2(G[j][2], G[j][3]);
    }
    __syncthreads();
    // the block's part rows: the warps' G in warp order, then dW = G diag(w), dw_norm
    if (ce < C) {
        float dn = 0.f;
#pragma unroll
        for (int v = 0; v < 16; v++) {
            if (v >= V) break;
            float gs = 0.f;
            for (int k = 0; k < HT_WARPS; k++) gs += sm.rs[k][v * HT_RS + ce];
            pW[(size_t)blockIdx.x * V * C + v * C + ce] = wce * gs;
            dn += wcol[v] * gs;
        }
        pn[(size_t)blockIdx.x * C + ce] = dn;
    }
    if ((int)threadIdx.x < V) {
        float s = 0.f;
        for (int k = 0; k < HT_WARPS; k++) s += sm.db[k][threadIdx.x];
        pb[(size_t)blockIdx.x * V + threadIdx.x] = s;
    }
    xent_finish(h.loss, nll_part, nll, h.inv_count, sm.red);
}
