// Tensor-core attention for precision=bf16: the same functions as attention_cuda.cu
// (softmax and Parallax, parallax_lla.md §3.4 forward, §3.6 backward), with the
// (query x key) products on mma.sync (bf16 operands, fp32 accumulation) instead of
// a thread per query row. Used for head dims 8, 16 and 32; other sizes and the fp32
// / tf32 tables keep the scalar kernels.
// Softmax at head dim 8 and T <= 128 on bf16 rows (MAD's shape in the bf16 attention
// block) runs attention_short_cuda.cu's kernels instead.
//
// Layout: a block of 4 warps takes 128 rows (queries in the forward and the dq pass,
// keys in the dk/dv pass) of one (batch, head) as eight 16-row tiles; warp w owns
// tiles w and 7 - w, so that every warp does the same causal work (9 tile pairs of 16
// x 16, where one warp per tile would leave the block waiting on the longest, 8 of an
// average 4.5). Each warp streams the other side through shared memory in chunks of
// KC rows (the whole sequence at MAD's T = 128: loaded once for both tiles), 16 at a time:
//   16x8 score tiles   S = Q K^T        mma m16n8k8 per 8 head dims
//   16xHD products     O += P V         mma m16n8k16, P re-packed from two score tiles
// Fragment layouts are those of the PTX ISA ("Matrix Fragments for mma.m16n8k8 /
// m16n8k16"): with g = lane/4 and u = lane%4, a score tile holds rows g and g+8,
// columns 2u and 2u+1. Each output element is written once by one lane, in a
// fixed order: no atomics, results are bit-reproducible.
//
// Numerics: q, k, v, r, the probabilities and the score gradients are rounded to
// bf16 on their way into the tensor cores; every sum (row max, normaliser, the
// products) is accumulated in fp32, and the per-row scalars T_i = g.o_i and
// b_i = g.obar_i are computed in fp32 from the fp32 activations.
#include <cstdint>

#include <cuda_bf16.h>

#include "attention_tc_util.cuh"

namespace {

constexpr int PAD = 8; // bf16 padding of transposed tiles: rows 4 banks apart, no conflicts
// other-side rows per shared-memory chunk: 128 where the block's tiles fit in 48 KB
template <int HD> __host__ __device__ constexpr int kc() { return HD <= 16 ? 128 : 64; }
// the forward's running max before any visible key: finite, so that 2^(m_old - m_new) and
// 2^(s - m) need no test for "no key yet" (2^(-inf - NEG_BIG) = 0, 2^(NEG_BIG - NEG_BIG) = 1)
constexpr float NEG_BIG = -1e30f;

// A-operand fragments of rows r0..r0+15 of a [B,T,H,HD] tensor (times mul), rows >= T as 0:
// a[c][0] = row g, dims 8c+2u, 8c+2u+1;  a[c][1] = row g+8, the same dims
template <int HD, typename T_>
__device__ void load_afrag(uint32_t (&a)[HD / 8][2], const T_ *x, int ld, int b, int T, int h,
                           int r0, float mul) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int t = r0 + g + 8 * half;
        const T_ *p = t < T ? row_ptr(x, ld, b, t, T, h, HD) : nullptr;
#pragma unroll
        for (int c = 0; c < HD / 8; c++)
            a[c][half] = p ? pack2(mul * ldf(p + 8 * c + 2 * u), mul * ldf(p + 8 * c + 2 * u + 1)) : 0u;
    }
}

// Rows [r0, r0+KC) of a [B,T,H,HD] tensor on their way to shared memory: chunk_read
// issues a thread's loads of 4 adjacent dims (one float4, or 8 bytes of bf16, where rows
// are aligned, as in the model's fused [N, 3d] rows; rows >= T as 0), chunk_write stores
// them in bf16 as rows (nat[KC][HD], times mn) and/or transposed (tr[HD][KC+PAD],
// times mt). Split so that a kernel issues every load of a chunk before it waits at
// the barrier.
template <int HD, int KC> struct Chunk {
    static constexpr int N4 = KC * HD / 4, PER = (N4 + NTHREADS - 1) / NTHREADS;
    float4 v[PER];
};
__device__ __forceinline__ float4 load4(const float *p, bool vec) {
    return vec ? *reinterpret_cast<const float4 *>(p) : make_float4(p[0], p[1], p[2], p[3]);
}
__device__ __forceinline__ float4 load4(const bf16 *p, bool vec) {
    if (!vec) return make_float4(ldf(p), ldf(p + 1), ldf(p + 2), ldf(p + 3));
    const uint2 w = *reinterpret_cast<const uint2 *>(p);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}
template <int HD, int KC, typename T_>
__device__ __forceinline__ void chunk_read(Chunk<HD, KC> &c, const T_ *x, int ld, int b, int T,
                                           int h, int r0) {
    // 4 elements a load where every row start is aligned to them (block-uniform)
    const bool vec = ((uintptr_t)x | (uintptr_t)ld * sizeof(T_)) % (4 * sizeof(T_)) == 0;
#pragma unroll
    for (int k = 0; k < Chunk<HD, KC>::PER; k++) {
        const int idx = threadIdx.x + k * NTHREADS, t = r0 + idx / (HD / 4);
        const T_ *p = row_ptr(x, ld, b, t, T, h, HD) + 4 * (idx % (HD / 4));
        if (idx >= Chunk<HD, KC>::N4 || t >= T) c.v[k] = make_float4(0.f, 0.f, 0.f, 0.f);
        else c.v[k] = load4(p, vec);
    }
}
template <int HD, int KC>
__device__ __forceinline__ void chunk_write(const Chunk<HD, KC> &c, bf16 *nat, float mn, bf16 *tr,
                                            float mt) {
#pragma unroll
    for (int k = 0; k < Chunk<HD, KC>::PER; k++) {
        const int idx = threadIdx.x + k * NTHREADS, rr = idx / (HD / 4), c0 = 4 * (idx % (HD / 4));
        if (idx >= Chunk<HD, KC>::N4) break;
        const float e[4] = {c.v[k].x, c.v[k].y, c.v[k].z, c.v[k].w};
        if (nat)
            *reinterpret_cast<uint2 *>(nat + rr * HD + c0) =
                make_uint2(pack2(mn * e[0], mn * e[1]), pack2(mn * e[2], mn * e[3]));
        if (tr)
#pragma unroll
            for (int q = 0; q < 4; q++) tr[(c0 + q) * (KC + PAD) + rr] = __float2bfloat16_rn(mt * e[q]);
    }
}

// keys j0..j0+KC-1 of k and v into shared memory, as rows (kn, vn) and/or transposed
// (kt, vt; nullptr: not wanted); the first barrier waits for the previous chunk's readers
template <int HD, int KC, typename TI>
__device__ __forceinline__ void kv_chunk_in(const AttnArgs &a, int b, int h, int j0, bf16 *kn,
                                            bf16 *kt, bf16 *vn, bf16 *vt) {
    Chunk<HD, KC> ck, cv;
    chunk_read(ck, as<TI>(a.k), a.ld_in, b, a.T, h, j0);
    chunk_read(cv, as<TI>(a.v), a.ld_in, b, a.T, h, j0);
    __syncthreads();
    chunk_write(ck, kn, 1.f, kt, 1.f);
    chunk_write(cv, vn, 1.f, vt, 1.f);
    __syncthreads();
}

// 16x8 tile d = A B^T where B's 8 rows nb..nb+7 sit in nat[][HD] (B-operand column g = row nb+g)
template <int HD>
__device__ __forceinline__ void tile_abt(float d[4], const uint32_t (&a)[HD / 8][2],
                                         const __nv_bfloat16 *nat, int nb) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    d[0] = d[1] = d[2] = d[3] = 0.f;
#pragma unroll
    for (int c = 0; c < HD / 8; c++) mma8(d, a[c][0], a[c][1], ld2(nat + (nb + g) * HD + 8 * c + 2 * u));
}

// acc[n] += P (16 x 16 columns kb..kb+15) X[kb..kb+15][8n..8n+7], X transposed in tr[HD][KC+PAD]
template <int HD, int KC>
__device__ __forceinline__ void acc_px(float (&acc)[HD / 8][4], const uint32_t p[4],
                                       const __nv_bfloat16 *tr, int kb) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        const __nv_bfloat16 *col = tr + (8 * n + g) * (KC + PAD) + kb + 2 * u;
        mma16(acc[n], p, ld2(col), ld2(col + 8));
    }
}

// key j visible from query i: causal, inside the window, both real
__device__ __forceinline__ bool visible(int i, int j, int T, int W) {
    return i < T && j <= i && (W == 0 || j > i - W);
}
// every key j0..j0+15 visible from every query i0..i0+15 (warp-uniform): the tile needs no
// mask. Most tiles of a causal block are such (7 of a warp's 9 at T = 128); skipping the
// per-element test took 15% of the instructions of the forward, which is issue-bound (ncu,
// H100: 0.70 issued per scheduler-cycle), and 7% of the query side's
__device__ __forceinline__ bool all_visible(int i0, int j0, int T, int W) {
    return W == 0 && j0 + 15 <= i0 && i0 + 16 <= T;
}

// ---- forward: one online pass per 16 keys --------------------------------------------
// Per row: m (running max, log2 units), d (sum e), st (sum e t); per row and dim:
// ov = sum e v, otv = sum e t v, all rescaled by 2^(m_old - m_new) when m grows.
template <int HD, bool PX, typename TI>
__global__ void __launch_bounds__(NTHREADS) tc_fwd_kernel(AttnArgs a) {
    constexpr int KC = kc<HD>();
    __shared__ __align__(16) bf16 sK[KC * HD];
    __shared__ __align__(16) bf16 sVt[HD * (KC + PAD)];
    const int T = a.T, H = a.H, W = a.window, b = blockIdx.y / H, h = blockIdx.y % H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const int blk0 = blockIdx.x * ROWS;
    const int jlo = W > 0 ? max(0, blk0 - W + 1) : 0, jhi = min(T - 1, blk0 + ROWS - 1);
    const bool once = jhi - jlo < KC; // one chunk holds the block's keys: load it for both tiles
    for (int pass = 0; pass < 2; pass++) {
        const int q0 = blk0 + 16 * (pass ? ROWS / 16 - 1 - warp : warp);
        const int rows[2] = {q0 + g, q0 + g + 8};
        uint32_t qa[HD / 8][2], ra[HD / 8][2];
        load_afrag<HD>(qa, as<TI>(a.q), a.ld_in, b, T, h, q0, a.scale * L2E); // scores in log2 units
        if (PX) load_afrag<HD>(ra, as<TI>(a.r), a.ld_r, b, T, h, q0, 1.f);
        float m[2] = {NEG_BIG, NEG_BIG}, d[2] = {0.f, 0.f}, st[2] = {0.f, 0.f};
        float ov[HD / 8][4], otv[HD / 8][4];
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) ov[n][e] = otv[n][e] = 0.f;
        for (int j0 = jlo; j0 <= jhi; j0 += KC) {
            if (pass == 0 || !once) kv_chunk_in<HD, KC, TI>(a, b, h, j0, sK, nullptr, nullptr, sVt);
            for (int kb = 0; kb < KC; kb += 16) {
                const int jb = j0 + kb; // keys jb..jb+15
                if (jb >= T || jb > q0 + 15 || (W > 0 && jb + 15 <= q0 - W)) continue; // warp-uniform
                float s[2][4], tt[2][4];
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    tile_abt<HD>(s[hf], qa, sK, kb + 8 * hf);
                    if (PX) tile_abt<HD>(tt[hf], ra, sK, kb + 8 * hf);
                }
                if (!all_visible(q0, jb, T, W))
#pragma unroll
                    for (int hf = 0; hf < 2; hf++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            if (!visible(rows[e >> 1], jb + 8 * hf + 2 * u + (e & 1), T, W))
                                s[hf][e] = NEG_INF;
                float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int e = 0; e < 4; e++) mx[e >> 1] = fmaxf(mx[e >> 1], s[hf][e]);
                float corr[2];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    float mn = fmaxf(m[r], quad_max(mx[r]));
                    corr[r] = cu_ex2(m[r] - mn);
                    m[r] = mn;
                }
                float p[2][4], pt[2][4];
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        p[hf][e] = cu_ex2(s[hf][e] - m[e >> 1]);
                        pt[hf][e] = PX ? p[hf][e] * tt[hf][e] : 0.f;
                    }
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    d[r] = d[r] * corr[r] + p[0][2 * r] + p[0][2 * r + 1] + p[1][2 * r] + p[1][2 * r + 1];
                    if (PX)
                        st[r] = st[r] * corr[r] + pt[0][2 * r] + pt[0][2 * r + 1] + pt[1][2 * r] +
                                pt[1][2 * r + 1];
                }
#pragma unroll
                for (int n = 0; n < HD / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        ov[n][e] *= corr[e >> 1];
                        if (PX) otv[n][e] *= corr[e >> 1];
                    }
                uint32_t pa[4];
                pack_tiles(pa, p[0], p[1]);
                acc_px<HD, KC>(ov, pa, sVt, kb);
                if (PX) {
                    pack_tiles(pa, pt[0], pt[1]);
                    acc_px<HD, KC>(otv, pa, sVt, kb);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            d[r] = quad_sum(d[r]);
            if (PX) st[r] = quad_sum(st[r]);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = rows[r];
            if (i >= T) continue;
            const float inv = 1.f / d[r], tbar = st[r] * inv;
            TI *o = row_ptr(as<TI>(a.o), a.ld_out, b, i, T, h, HD);
            TI *ob = PX ? row_ptr(as<TI>(a.obar), a.ld_out, b, i, T, h, HD) : nullptr;
#pragma unroll
            for (int n = 0; n < HD / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int c = 8 * n + 2 * u + e;
                    float obar = ov[n][2 * r + e] * inv;
                    stf(o + c, PX ? obar * (1.f + tbar) - otv[n][2 * r + e] * inv : obar);
                    if (PX) stf(ob + c, obar);
                }
            if (u == 0) {
                size_t si = ((size_t)b * H + h) * T + i;
                a.lse[si] = m[r] * (1.f / L2E) + logf(d[r]);
                if (PX && a.tbar) a.tbar[si] = tbar;
            }
        }
    }
}

// ---- backward, query side: dq, dr and the row scalars T_i, b_i ---------------------------
// dS = p[(A - T_i) + (tbar_i - t)(A - b_i)], dT = -p (A - b_i), A_ij = g_i.v_j (§3.6;
// softmax: t = tbar = 0, b_i unused);  dq += scale dS K,  dr += dT K.
template <int HD, bool PX, typename TI>
// (at head dim 8, the RoPE and bias sums held to the registers the kernel had without)
__global__ void __launch_bounds__(NTHREADS, HD == 8 ? (PX ? 6 : 8) : 0)
    tc_bwd_q_kernel(AttnArgs a, float *Tv, float *bv, const float *cs, float *part) {
    constexpr int KC = kc<HD>();
    __shared__ __align__(16) bf16 sK[KC * HD];
    __shared__ __align__(16) bf16 sKt[HD * (KC + PAD)];
    __shared__ __align__(16) bf16 sV[KC * HD];
    __shared__ float2 sCS[HD == 8 ? ROPE8 : 1]; // cs: dq, dr turned back as written
    __shared__ float sRed[2 * WARPS * 8];       // part: dq's column sums, [pass][warp][dim]
    const int T = a.T, H = a.H, W = a.window, b = blockIdx.y / H, h = blockIdx.y % H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const int blk0 = blockIdx.x * ROWS;
    const size_t sb = ((size_t)b * H + h) * T;
    const int jlo = W > 0 ? max(0, blk0 - W + 1) : 0, jhi = min(T - 1, blk0 + ROWS - 1);
    const bool once = jhi - jlo < KC;
    if (HD == 8 && cs) rope8_rows_in(sCS, cs, blk0, T); // seen after the first chunk's barriers
    for (int pass = 0; pass < 2; pass++) {
        const int q0 = blk0 + 16 * (pass ? ROWS / 16 - 1 - warp : warp);
        const int rows[2] = {q0 + g, q0 + g + 8};
        uint32_t qa[HD / 8][2], ra[HD / 8][2], ga[HD / 8][2];
        load_afrag<HD>(qa, as<TI>(a.q), a.ld_in, b, T, h, q0, a.scale * L2E);
        if (PX) load_afrag<HD>(ra, as<TI>(a.r), a.ld_r, b, T, h, q0, 1.f);
        load_afrag<HD>(ga, as<TI>(a.dout), a.ld_out, b, T, h, q0, 1.f);
        // row scalars in fp32: each lane sums its dims 8c+2u, 8c+2u+1, then the quad
        float Ti[2], bi[2], lse2[2], tb[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = rows[r];
            float sT = 0.f, sB = 0.f;
            if (i < T) {
                const TI *gr = row_ptr(as<TI>(a.dout), a.ld_out, b, i, T, h, HD);
                const TI *orow = row_ptr(as<TI>(a.o), a.ld_out, b, i, T, h, HD);
                const TI *obr = PX ? row_ptr(as<TI>(a.obar), a.ld_out, b, i, T, h, HD) : nullptr;
#pragma unroll
                for (int c = 0; c < HD / 8; c++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int col = 8 * c + 2 * u + e;
                        const float gv = ldf(gr + col);
                        sT += gv * ldf(orow + col);
                        sB += gv * ldf((PX ? obr : orow) + col);
                    }
            }
            Ti[r] = quad_sum(sT), bi[r] = quad_sum(sB);
            lse2[r] = i < T ? a.lse[sb + i] * L2E : 0.f;
            tb[r] = PX && i < T ? a.tbar[sb + i] : 0.f;
        }
        float dq[HD / 8][4], dr[HD / 8][4];
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dq[n][e] = dr[n][e] = 0.f;
        for (int j0 = jlo; j0 <= jhi; j0 += KC) {
            if (pass == 0 || !once) kv_chunk_in<HD, KC, TI>(a, b, h, j0, sK, sKt, sV, nullptr);
            for (int kb = 0; kb < KC; kb += 16) {
                const int jb = j0 + kb;
                if (jb >= T || jb > q0 + 15 || (W > 0 && jb + 15 <= q0 - W)) continue;
                float s[2][4], A[2][4], tt[2][4], p[2][4], ds[2][4], dt[2][4];
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    tile_abt<HD>(s[hf], qa, sK, kb + 8 * hf);
                    tile_abt<HD>(A[hf], ga, sV, kb + 8 * hf);
                    if (PX) tile_abt<HD>(tt[hf], ra, sK, kb + 8 * hf);
#pragma unroll
                    for (int e = 0; e < 4; e++) p[hf][e] = cu_ex2(s[hf][e] - lse2[e >> 1]);
                }
                if (!all_visible(q0, jb, T, W)) // (a block of its own: one branch a tile)
#pragma unroll
                    for (int hf = 0; hf < 2; hf++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            if (!visible(rows[e >> 1], jb + 8 * hf + 2 * u + (e & 1), T, W)) p[hf][e] = 0.f;
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int r = e >> 1;
                        const float Aij = A[hf][e];
                        if (PX) {
                            ds[hf][e] = p[hf][e] * ((Aij - Ti[r]) + (tb[r] - tt[hf][e]) * (Aij - bi[r]));
                            dt[hf][e] = -p[hf][e] * (Aij - bi[r]);
                        } else {
                            ds[hf][e] = p[hf][e] * (Aij - Ti[r]);
                        }
                    }
                uint32_t pa[4];
                pack_tiles(pa, ds[0], ds[1]);
                acc_px<HD, KC>(dq, pa, sKt, kb);
                if (PX) {
                    pack_tiles(pa, dt[0], dt[1]);
                    acc_px<HD, KC>(dr, pa, sKt, kb);
                }
            }
        }
        if constexpr (HD == 8) {
            if (cs) {
                rope8_back(dq, sCS, q0 - blk0);
                if (PX && a.rope_r) rope8_back(dr, sCS, q0 - blk0);
            }
            if (part) // rows >= T hold 0
                colsum8_slot(sRed + (pass * WARPS + warp) * 8, a.scale * (dq[0][0] + dq[0][2]),
                             a.scale * (dq[0][1] + dq[0][3]));
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = rows[r];
            if (i >= T) continue;
            TI *dqo = row_ptr(as<TI>(a.dq), a.ld_dqkv, b, i, T, h, HD);
            TI *dro = PX ? row_ptr(as<TI>(a.dr), a.ld_out, b, i, T, h, HD) : nullptr;
#pragma unroll
            for (int n = 0; n < HD / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int c = 8 * n + 2 * u + e;
                    stf(dqo + c, (a.grads_write ? 0.f : ldf(dqo + c)) + a.scale * dq[n][2 * r + e]);
                    if (PX) stf(dro + c, (a.grads_write ? 0.f : ldf(dro + c)) + dr[n][2 * r + e]);
                }
            if (u == 0) Tv[sb + i] = Ti[r], bv[sb + i] = bi[r];
        }
    }
    if constexpr (HD == 8)
        if (part) { // [q | k | v] columns of this (batch, query block)'s row of partial sums
            __syncthreads();
            colsum8_out(part + (size_t)(b * gridDim.x + blockIdx.x) * 3 * H * HD + h * HD, sRed);
        }
}

// ---- backward, key side: dk, dv ------------------------------------------------------------
// Transposed tiles (16 keys x 8 queries): S^T = K Q^T etc.;
// dv += P'^T G with p' = p (1 + tbar - t);  dk += scale dS^T Q + dT^T R.
template <int HD, bool PX, typename TI>
__global__ void __launch_bounds__(NTHREADS)
    tc_bwd_kv_kernel(AttnArgs a, const float *Tv, const float *bv, const float *cs, float *part) {
    constexpr int KC = kc<HD>();
    __shared__ __align__(16) bf16 sQs[KC * HD];            // q * scale log2 e
    __shared__ __align__(16) bf16 sQt[HD * (KC + PAD)];    // q, transposed
    __shared__ __align__(16) bf16 sG[KC * HD];
    __shared__ __align__(16) bf16 sGt[HD * (KC + PAD)];
    __shared__ __align__(16) bf16 sR[PX ? KC * HD : 2];
    __shared__ __align__(16) bf16 sRt[PX ? HD * (KC + PAD) : 2];
    __shared__ float4 sRow[KC]; // per query row: lse log2 e, tbar, T_i, b_i
    __shared__ float2 sCS[HD == 8 ? ROPE8 : 1]; // cs: dk turned back as written
    __shared__ float sRed[2][2 * WARPS * 8];    // part: dk's, dv's column sums
    const int T = a.T, H = a.H, W = a.window, b = blockIdx.y / H, h = blockIdx.y % H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const int blk0 = blockIdx.x * ROWS;
    const size_t sb = ((size_t)b * H + h) * T;
    const int ihi = W > 0 ? min(T - 1, blk0 + ROWS - 1 + W - 1) : T - 1;
    const bool once = ihi - blk0 < KC; // one chunk holds the block's queries
    if (HD == 8 && cs) rope8_rows_in(sCS, cs, blk0, T); // seen after the first chunk's barrier
    for (int pass = 0; pass < 2; pass++) {
        const int k0 = blk0 + 16 * (pass ? ROWS / 16 - 1 - warp : warp);
        const int keys[2] = {k0 + g, k0 + g + 8};
        uint32_t ka[HD / 8][2], va[HD / 8][2];
        load_afrag<HD>(ka, as<TI>(a.k), a.ld_in, b, T, h, k0, 1.f);
        load_afrag<HD>(va, as<TI>(a.v), a.ld_in, b, T, h, k0, 1.f);
        float dks[HD / 8][4], dkt[HD / 8][4], dv[HD / 8][4];
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dks[n][e] = dkt[n][e] = dv[n][e] = 0.f;
        for (int i0 = blk0; i0 <= ihi; i0 += KC) {
            if (pass == 0 || !once) {
                Chunk<HD, KC> cq, cg;
                chunk_read(cq, as<TI>(a.q), a.ld_in, b, T, h, i0);
                chunk_read(cg, as<TI>(a.dout), a.ld_out, b, T, h, i0);
                __syncthreads();
                chunk_write(cq, sQs, a.scale * L2E, sQt, 1.f);
                chunk_write(cg, sG, 1.f, sGt, 1.f);
                if (PX) {
                    Chunk<HD, KC> cr;
                    chunk_read(cr, as<TI>(a.r), a.ld_r, b, T, h, i0);
                    chunk_write(cr, sR, 1.f, sRt, 1.f);
                }
                for (int x = threadIdx.x; x < KC; x += blockDim.x) {
                    int i = i0 + x;
                    sRow[x] = i < T ? make_float4(a.lse[sb + i] * L2E, PX ? a.tbar[sb + i] : 0.f,
                                                  Tv[sb + i], bv[sb + i])
                                    : make_float4(0.f, 0.f, 0.f, 0.f);
                }
                __syncthreads();
            }
            for (int ib = 0; ib < KC; ib += 16) {
                const int qb = i0 + ib; // queries qb..qb+15
                if (qb >= T || qb + 15 < k0 || (W > 0 && qb > k0 + 15 + W - 1)) continue;
                float s[2][4], A[2][4], tt[2][4], p[2][4], pv[2][4], ds[2][4], dt[2][4];
                float4 rw[2][2]; // the row scalars of this lane's queries ib + 8 hf + 2 u + c
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    tile_abt<HD>(s[hf], ka, sQs, ib + 8 * hf);
                    tile_abt<HD>(A[hf], va, sG, ib + 8 * hf);
                    if (PX) tile_abt<HD>(tt[hf], ka, sR, ib + 8 * hf);
                    rw[hf][0] = sRow[ib + 8 * hf + 2 * u], rw[hf][1] = sRow[ib + 8 * hf + 2 * u + 1];
#pragma unroll
                    for (int e = 0; e < 4; e++) p[hf][e] = cu_ex2(s[hf][e] - rw[hf][e & 1].x);
                }
                if (!all_visible(qb, k0, T, W))
#pragma unroll
                    for (int hf = 0; hf < 2; hf++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int i = qb + 8 * hf + 2 * u + (e & 1), j = keys[e >> 1];
                            if (!(j < T && visible(i, j, T, W))) p[hf][e] = 0.f;
                        }
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float4 rs = rw[hf][e & 1];
                        const float Aij = A[hf][e];
                        if (PX) {
                            const float t = tt[hf][e];
                            pv[hf][e] = p[hf][e] * (1.f + rs.y - t);
                            ds[hf][e] = p[hf][e] * ((Aij - rs.z) + (rs.y - t) * (Aij - rs.w));
                            dt[hf][e] = -p[hf][e] * (Aij - rs.w);
                        } else {
                            pv[hf][e] = p[hf][e];
                            ds[hf][e] = p[hf][e] * (Aij - rs.z);
                        }
                    }
                uint32_t pa[4];
                pack_tiles(pa, pv[0], pv[1]);
                acc_px<HD, KC>(dv, pa, sGt, ib);
                pack_tiles(pa, ds[0], ds[1]);
                acc_px<HD, KC>(dks, pa, sQt, ib);
                if (PX) {
                    pack_tiles(pa, dt[0], dt[1]);
                    acc_px<HD, KC>(dkt, pa, sRt, ib);
                }
            }
        }
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dks[n][e] = a.scale * dks[n][e] + (PX ? dkt[n][e] : 0.f);
        if constexpr (HD == 8) {
            if (cs) rope8_back(dks, sCS, k0 - blk0);
            if (part) {
                const int at = (pass * WARPS + warp) * 8;
                colsum8_slot(sRed[0] + at, dks[0][0] + dks[0][2], dks[0][1] + dks[0][3]);
                colsum8_slot(sRed[1] + at, dv[0][0] + dv[0][2], dv[0][1] + dv[0][3]);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int j = keys[r];
            if (j >= T) continue;
            TI *dko = row_ptr(as<TI>(a.dk), a.ld_dqkv, b, j, T, h, HD);
            TI *dvo = row_ptr(as<TI>(a.dv), a.ld_dqkv, b, j, T, h, HD);
#pragma unroll
            for (int n = 0; n < HD / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int c = 8 * n + 2 * u + e;
                    const float dk0 = a.grads_write ? 0.f : ldf(dko + c), dv0 = a.grads_write ? 0.f : ldf(dvo + c);
                    stf(dko + c, dk0 + dks[n][2 * r + e]);
                    stf(dvo + c, dv0 + dv[n][2 * r + e]);
                }
        }
    }
    if constexpr (HD == 8)
        if (part) {
            float *row = part + (size_t)(b * gridDim.x + blockIdx.x) * 3 * H * HD + h * HD;
            __syncthreads();
            colsum8_out(row + H * HD, sRed[0]);
            colsum8_out(row + 2 * H * HD, sRed[1]);
        }
}

// RoPE on bf16 q and k (AttnArgs.io_bf16) at head dim 8, rot 8: dims c and c + 4 of each
// head turn together; a thread per (token, head) of the fused q|k rows (2H heads), one
// 16-byte load and store
__global__ void rope8_bf16_kernel(bf16 *x, const float *cs, long NH2, int T, int H2, int ld) {
    const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= NH2) return;
    const long n = i / H2;
    const int t = (int)(n % T);
    bf16 *p = x + (size_t)n * ld + (size_t)(i % H2) * 8;
    uint4 w = *reinterpret_cast<const uint4 *>(p);
    __nv_bfloat162 *v = reinterpret_cast<__nv_bfloat162 *>(&w);
    const float4 *c4 = reinterpret_cast<const float4 *>(cs + 8 * (size_t)t);
    const float4 cs01 = c4[0], cs23 = c4[1];
    const float c[4] = {cs01.x, cs01.z, cs23.x, cs23.z}, sn[4] = {cs01.y, cs01.w, cs23.y, cs23.w};
    const float2 a01 = __bfloat1622float2(v[0]), a23 = __bfloat1622float2(v[1]);
    const float2 b01 = __bfloat1622float2(v[2]), b23 = __bfloat1622float2(v[3]);
    const float x1[4] = {a01.x, a01.y, a23.x, a23.y}, x2[4] = {b01.x, b01.y, b23.x, b23.y};
    float y1[4], y2[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        y1[e] = x1[e] * c[e] - x2[e] * sn[e];
        y2[e] = x2[e] * c[e] + x1[e] * sn[e];
    }
    v[0] = __floats2bfloat162_rn(y1[0], y1[1]), v[1] = __floats2bfloat162_rn(y1[2], y1[3]);
    v[2] = __floats2bfloat162_rn(y2[0], y2[1]), v[3] = __floats2bfloat162_rn(y2[2], y2[3]);
    *reinterpret_cast<uint4 *>(p) = w;
}

// RoPE (AttnArgs.rope_rot): the forward's by a pass before it (turning q, k, r as the
// kernel reads them cost the H100 more than the pass, 2026-11-23); the backward's as
// the gradients are written at head dim 8, else by a pass after.
template <int HD, bool PX, typename TI> void tc_fwd(const AttnArgs *a) {
    if (a->io_bf16 && a->rope_rot) { // (cu_attention_tc_io_bf16: HD = rot = 8, q | k fused)
        const long nh2 = (long)a->B * a->T * 2 * a->H;
        rope8_bf16_kernel<<<cu_blocks(nh2, 256), 256, 0, cu.stream>>>(
            reinterpret_cast<bf16 *>(const_cast<float *>(a->q)), cu_rope_table(a->T, 8, a->rope_base),
            nh2, a->T, 2 * a->H, a->ld_in);
        CKL();
    } else {
        cu_attn_rope(a, 1.f);
    }
    if (cu_attn_short(a)) return cu_attn_short_fwd(a);
    dim3 grid(cu_blocks(a->T, ROWS), a->B * a->H);
    tc_fwd_kernel<HD, PX, TI><<<grid, NTHREADS, 0, cu.stream>>>(*a);
    CKL();
}
template <int HD, bool PX, typename TI> void tc_bwd(const AttnArgs *a) {
    const size_t n = (size_t)a->B * a->H * a->T;
    const int nblk = cu_blocks(a->T, ROWS);
    // inside the kernels at head dim 8: RoPE (rot = 8), then the bias sums (one partial
    // row per (batch, query block), added up after); else passes after them
    const bool rope = HD == 8 && a->rope_rot == HD, bias = HD == 8 && a->dbias && (rope || !a->rope_rot);
    const size_t S = (size_t)a->B * nblk, C3 = (size_t)3 * a->H * HD;
    float *Tv = a->scratch ? a->scratch : cu_scratch(2 * n), *bv = Tv + n;
    float *part = bias ? cu_parts(S * C3) : nullptr;
    const float *cs = rope ? cu_rope_table(a->T, HD, a->rope_base) : nullptr;
    dim3 grid(nblk, a->B * a->H);
    if (cu_attn_short(a)) {
        cu_attn_short_bwd(a, Tv, cs, part);
    } else {
        tc_bwd_q_kernel<HD, PX, TI><<<grid, NTHREADS, 0, cu.stream>>>(*a, Tv, bv, cs, part);
        CKL();
        tc_bwd_kv_kernel<HD, PX, TI><<<grid, NTHREADS, 0, cu.stream>>>(*a, Tv, bv, cs, part);
        CKL();
    }
    if (!rope) cu_attn_rope(a, -1.f);
    if (bias) cu_grad_colsum_parts(a->dbias, part, (int)S, (int)C3);
    else cu_attn_bias(a);
}

} // namespace

// Runs the tensor-core forward (backward) when the head dim has a kernel; returns 0
// (and does nothing) otherwise, so that the caller falls back to the scalar kernels.
int cu_attention_tc(const AttnArgs *a, int backward) {
    const bool px = a->r != nullptr;
    void (*fn)(const AttnArgs *) = nullptr;
#define CASE(D)                                                                                   \
    case D:                                                                                       \
        fn = backward ? (px ? tc_bwd<D, true, float> : tc_bwd<D, false, float>)                   \
                      : (px ? tc_fwd<D, true, float> : tc_fwd<D, false, float>);                  \
        break;
    if (a->io_bf16) {
        if (!cu_attention_tc_io_bf16(a)) cu_die(__FILE__, __LINE__, "cu_attention_tc", "io_bf16 "
                                                "arguments without a kernel");
        fn = backward ? (px ? tc_bwd<8, true, bf16> : tc_bwd<8, false, bf16>)
                      : (px ? tc_fwd<8, true, bf16> : tc_fwd<8, false, bf16>);
    } else {
        switch (a->hd) {
            CASE(8) CASE(16) CASE(32)
        default: return 0;
        }
    }
#undef CASE
    const AttnArgs s = attn_strides(a);
    if (a->T > 0 && a->B > 0) fn(&s);
    return 1;
}

// bf16 storage (AttnArgs.io_bf16) where everything stays inside the kernels: head dim 8,
// RoPE on the whole head or none (the forward's bf16 pass turns q and k, side by side in
// one row; the backward turns dq, dk, dr back as it writes them, and sums the q, k, v bias
// gradients), r given turned already or not turned at all
bool cu_attention_tc_io_bf16(const AttnArgs *a) {
    if (a->hd != 8 || (a->rope_rot != 0 && a->rope_rot != 8)) return false;
    return !(a->r && a->rope_r && a->rope_rot && !a->r_roped);
}
