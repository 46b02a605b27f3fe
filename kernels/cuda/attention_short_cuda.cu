// Softmax attention at head dim 8 for T <= 128 with bf16 rows (the bf16 attention block,
// AttnArgs.io_bf16, at MAD's shape): the function of attention_tc_cuda.cu's kernels
// (parallax_lla.md §3.4 forward, §3.6 backward with r = 0) for a block that holds a whole
// (batch, head). Those kernels are issue-bound at head dim 8 (ncu, H100: about 200
// instructions a warp per 16 x 16 tile, of which 3 are tensor-core products); these drop
// the bookkeeping around the products:
//  - the other side (k, v; q, dout) sits in shared memory as plain 16-byte rows, loaded
//    once, and reaches the tensor cores by ldmatrix (transposed where the product needs
//    it), four 8 x 8 operands an instruction;
//  - the forward makes two passes over the keys, the row max first (the scores recomputed
//    after: two mma a tile), so nothing is rescaled; its normaliser comes out of the
//    tensor cores as P times a column of ones, from the same bf16 P as the output;
//  - a warp walks a tile's partners from the diagonal outwards, so the causal mask is a
//    fixed per-lane pattern on the first step only;
//  - the rows come into shared memory by cp.async (no registers held, no conversion on
//    the way): loads into registers left the forward waiting on long scoreboard 5.7 cycles
//    of 14 an instruction (ncu, H100). Two heads a block, the next one's rows copied while
//    this one's were computed, lost (fewer warps an SM: 0.558 -> 0.578 ms a step), and so
//    did turning q and k by RoPE here instead of the pass before (0.558 -> 0.565 ms).
// Layout as attention_tc_cuda.cu's: 4 warps, warp w owns the 16-row tiles w and 7 - w; the
// fragment layouts are in mma_bf16.cuh. Each output element is written once by one lane in
// a fixed order: bit-reproducible.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <cuda_bf16.h>

#include "attention_tc_util.cuh"

namespace {

static_assert(ROWS == NTHREADS, "a thread per row of the head in rows_async");
constexpr uint32_t ONES = 0x3f803f80u; // two bf16 ones: the B operand of a row sum

// global -> shared without registers (cp.async, sm_80+): N = 16 or 4 bytes, zeros where !ok
// (then src is not read); the block waits for all of its copies with cp_wait_all
template <int N> __device__ __forceinline__ void cp_async(void *dst, const void *src, bool ok) {
    static_assert(N == 16 || N == 4, "cp.async of 16 (.cg) or 4 (.ca) bytes");
#ifdef PLAB_EMU
    if (ok) memcpy(dst, src, N);
    else memset(dst, 0, N);
#else
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    if constexpr (N == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 4 : 0));
#endif
}
__device__ __forceinline__ void cp_wait_all() {
#ifndef PLAB_EMU
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}
// a head's rows 0..ROWS-1 ([T, 8] bf16, rows ld apart) into s[ROWS][8], a thread a row;
// rows >= T as 0
__device__ __forceinline__ void rows_async(bf16 *s, const bf16 *x, int ld, int b, int T, int h) {
    const int t = threadIdx.x;
    cp_async<16>(s + 8 * t, t < T ? row_ptr(x, ld, b, t, T, h, 8) : x, t < T);
}
// a head's T floats (lse, T_i: [B, H, T] rows) into s[ROWS]; past T as 0
__device__ __forceinline__ void floats_async(float *s, const float *x, int T) {
    const int t = threadIdx.x;
    cp_async<4>(s + t, t < T ? x + t : x, t < T);
}
// the RoPE table's rows (cu_rope_table(T, 8, base): 4 (cos, sin) pairs a position) into
// s[ROWS * 4], as rope8_back reads it; rows >= T as 0
__device__ __forceinline__ void rope_rows_async(float2 *s, const float *cs, int T) {
    const int t = threadIdx.x;
    cp_async<16>(s + 4 * t, t < T ? cs + 8 * t : cs, t < T);
    cp_async<16>(s + 4 * t + 2, t < T ? cs + 8 * t + 4 : cs, t < T);
}
// an A fragment of rows r0..r0+15 from s[ROWS][8] (ldmatrix), times mul
__device__ __forceinline__ void afrag(uint32_t (&a)[2], const bf16 *s, int r0, float mul = 1.f) {
    ldsm<2>(a, s + (r0 + (threadIdx.x & 15)) * 8);
    if (mul != 1.f)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&a[r]));
            a[r] = pack2(mul * f.x, mul * f.y);
        }
}
__device__ __forceinline__ float2 wordf(uint32_t w) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w));
}

// the causal pattern of a diagonal 16 x 16 tile, bit 4 hf + e for C-fragment element e of
// its 8-column half hf: row r = g + 8 (e / 2), column c = 8 hf + 2u + e % 2 (local indices);
// queries on rows (forward, query side): key c visible from query r when c <= r; keys on
// rows (key side): when r <= c
__device__ __forceinline__ unsigned diag_bits(bool keys_on_rows) {
    const int lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    unsigned bits = 0;
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = g + 8 * (e >> 1), c = 8 * hf + 2 * u + (e & 1);
            if (keys_on_rows ? r <= c : c <= r) bits |= 1u << (4 * hf + e);
        }
    return bits;
}

// this lane's ldmatrix row of a 16-row tile at r0: lanes 0-15 in x, 16-31 in y
__device__ __forceinline__ const bf16 *tile_row(const bf16 *x, const bf16 *y, int r0) {
    const int lane = threadIdx.x & 31;
    return (lane < 16 ? x : y) + (r0 + (lane & 15)) * 8;
}

// S = Qs K^T for keys k0..k0+15 (two 16 x 8 halves), as the forward and query side form it
__device__ __forceinline__ void scores(float (&s)[2][4], uint32_t qa0, uint32_t qa1, const bf16 *sK, int k0) {
    uint32_t kb[2];
    ldsm<2>(kb, tile_row(sK, sK, k0));
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        s[hf][0] = s[hf][1] = s[hf][2] = s[hf][3] = 0.f;
        mma8(s[hf], qa0, qa1, kb[hf]);
    }
}

// the two score-like tiles of a 16-row step: s = a X^T and A = b Y^T for rows r0..r0+15 of
// x and y (two 8-row halves each; one ldmatrix for all four operands): the query side's
// S = Qs K^T and g.v, the key side's S^T = Ks Q^T and v.g
__device__ __forceinline__ void two_products(float (&s)[2][4], float (&A)[2][4], const uint32_t (&a)[2],
                                             const uint32_t (&b)[2], const bf16 *x, const bf16 *y, int r0) {
    uint32_t f[4];
    ldsm<4>(f, tile_row(x, y, r0)); // x's two halves, y's two halves
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        s[hf][0] = s[hf][1] = s[hf][2] = s[hf][3] = 0.f;
        A[hf][0] = A[hf][1] = A[hf][2] = A[hf][3] = 0.f;
        mma8(s[hf], a[0], a[1], f[hf]);
        mma8(A[hf], b[0], b[1], f[2 + hf]);
    }
}

// ---- forward ------------------------------------------------------------------------------
// Pass 1: m_i = max_j s_ij (log2 units: q carries scale log2 e). Pass 2: p = 2^(s - m),
// o += P V and l += P 1 on the tensor cores; o / l and lse = m ln 2 + ln l. The diagonal
// tile (DIAG) first, with the mask; the tiles before it need none.
template <bool DIAG>
__device__ __forceinline__ void fwd_max(float (&mx)[2], uint32_t qa0, uint32_t qa1, const bf16 *sK, int k0,
                                        unsigned diag) {
    float s[2][4];
    scores(s, qa0, qa1, sK, k0);
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            if (!DIAG || diag >> (4 * hf + e) & 1) mx[e >> 1] = fmaxf(mx[e >> 1], s[hf][e]);
}
template <bool DIAG>
__device__ __forceinline__ void fwd_acc(float (&o)[4], float (&l)[4], const float (&mx)[2], uint32_t qa0,
                                        uint32_t qa1, const bf16 *sK, const bf16 *sV, int k0, unsigned diag) {
    float s[2][4];
    scores(s, qa0, qa1, sK, k0);
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float p = cu_ex2(s[hf][e] - mx[e >> 1]);
            s[hf][e] = !DIAG || diag >> (4 * hf + e) & 1 ? p : 0.f;
        }
    uint32_t pa[4], vb[2];
    pack_tiles(pa, s[0], s[1]);
    ldsm_trans<2>(vb, tile_row(sV, sV, k0));
    mma16(o, pa, vb[0], vb[1]);
    mma16(l, pa, ONES, ONES);
}
__global__ void __launch_bounds__(NTHREADS) short_fwd_kernel(AttnArgs a) {
    __shared__ __align__(16) bf16 sK[ROWS * 8], sV[ROWS * 8], sQ[ROWS * 8];
    const int T = a.T, H = a.H, b = blockIdx.y / H, h = blockIdx.y % H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    rows_async(sK, as<bf16>(a.k), a.ld_in, b, T, h);
    rows_async(sV, as<bf16>(a.v), a.ld_in, b, T, h);
    rows_async(sQ, as<bf16>(a.q), a.ld_in, b, T, h);
    cp_wait_all();
    __syncthreads();
    const unsigned diag = diag_bits(false);
    for (int pass = 0; pass < 2; pass++) {
        const int qt = pass ? ROWS / 16 - 1 - warp : warp, q0 = 16 * qt;
        if (q0 >= T) continue; // warp-uniform
        uint32_t qa[2];
        afrag(qa, sQ, q0, a.scale * L2E);
        float mx[2] = {NEG_INF, NEG_INF};
        fwd_max<true>(mx, qa[0], qa[1], sK, q0, diag);
        for (int kt = qt - 1; kt >= 0; kt--) fwd_max<false>(mx, qa[0], qa[1], sK, 16 * kt, diag);
        mx[0] = quad_max(mx[0]), mx[1] = quad_max(mx[1]);
        float o[4] = {0.f, 0.f, 0.f, 0.f}, l[4] = {0.f, 0.f, 0.f, 0.f};
        fwd_acc<true>(o, l, mx, qa[0], qa[1], sK, sV, q0, diag);
        for (int kt = qt - 1; kt >= 0; kt--) fwd_acc<false>(o, l, mx, qa[0], qa[1], sK, sV, 16 * kt, diag);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = q0 + g + 8 * r;
            if (i >= T) continue;
            const float inv = __fdividef(1.f, l[2 * r]); // l >= 1 (the max's own term)
            *reinterpret_cast<uint32_t *>(row_ptr(as<bf16>(a.o), a.ld_out, b, i, T, h, 8) + 2 * u) =
                pack2(o[2 * r] * inv, o[2 * r + 1] * inv);
            if (u == 0) a.lse[((size_t)b * H + h) * T + i] = (mx[r] + __log2f(l[2 * r])) * (1.f / L2E);
        }
    }
}

// ---- backward, query side: dq and T_i = g_i . o_i ---------------------------------------
// p = 2^(s - lse log2 e), dS = p (g.v - T_i), dq = scale dS K (§3.6, softmax)
// one 16-key tile k0 of a query tile: dq += dS K (the diagonal tile with the mask)
template <bool DIAG>
__device__ __forceinline__ void q_unit(float (&dq)[4], const uint32_t (&qa)[2], const uint32_t (&ga)[2],
                                       const float (&Ti)[2], const float (&lse2)[2], const bf16 *sK,
                                       const bf16 *sV, int k0, unsigned diag) {
    float s[2][4], A[2][4];
    two_products(s, A, qa, ga, sK, sV, k0);
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float p = cu_ex2(s[hf][e] - lse2[e >> 1]);
            s[hf][e] = !DIAG || diag >> (4 * hf + e) & 1 ? p * (A[hf][e] - Ti[e >> 1]) : 0.f;
        }
    uint32_t pa[4], kb[2];
    pack_tiles(pa, s[0], s[1]);
    ldsm_trans<2>(kb, tile_row(sK, sK, k0));
    mma16(dq, pa, kb[0], kb[1]);
}

__global__ void __launch_bounds__(NTHREADS)
    short_bwd_q_kernel(AttnArgs a, float *Tv, const float *cs, float *part) {
    __shared__ __align__(16) bf16 sK[ROWS * 8], sV[ROWS * 8], sQ[ROWS * 8], sG[ROWS * 8], sO[ROWS * 8];
    __shared__ __align__(16) float sL[ROWS];
    __shared__ __align__(16) float2 sCS[ROPE8]; // cs: dq turned back as written
    __shared__ float sRed[2 * WARPS * 8];       // part: dq's column sums, [pass][warp][dim]
    const int T = a.T, H = a.H, b = blockIdx.y / H, h = blockIdx.y % H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    const size_t sb = (size_t)blockIdx.y * T;
    rows_async(sK, as<bf16>(a.k), a.ld_in, b, T, h);
    rows_async(sV, as<bf16>(a.v), a.ld_in, b, T, h);
    rows_async(sQ, as<bf16>(a.q), a.ld_in, b, T, h);
    rows_async(sG, as<bf16>(a.dout), a.ld_out, b, T, h);
    rows_async(sO, as<bf16>(a.o), a.ld_out, b, T, h);
    floats_async(sL, a.lse + sb, T);
    if (cs) rope_rows_async(sCS, cs, T);
    cp_wait_all();
    __syncthreads();
    const unsigned diag = diag_bits(false);
    for (int pass = 0; pass < 2; pass++) {
        const int qt = pass ? ROWS / 16 - 1 - warp : warp, q0 = 16 * qt;
        float *slot = sRed + (pass * WARPS + warp) * 8;
        if (q0 >= T) { // no rows: a zero slot
            if (part && lane < 8) slot[lane] = 0.f;
            continue;
        }
        uint32_t qa[2], ga[2], oa[2];
        afrag(qa, sQ, q0, a.scale * L2E);
        afrag(ga, sG, q0);
        afrag(oa, sO, q0);
        float Ti[2], lse2[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const float2 gv = wordf(ga[r]), ov = wordf(oa[r]);
            Ti[r] = quad_sum(gv.x * ov.x + gv.y * ov.y);
            lse2[r] = sL[q0 + g + 8 * r] * L2E;
        }
        float dq[1][4] = {{0.f, 0.f, 0.f, 0.f}};
        q_unit<true>(dq[0], qa, ga, Ti, lse2, sK, sV, q0, diag);
        for (int kt = qt - 1; kt >= 0; kt--) q_unit<false>(dq[0], qa, ga, Ti, lse2, sK, sV, 16 * kt, diag);
        if (cs) rope8_back(dq, sCS, q0);
        if (part) // rows >= T hold 0
            colsum8_slot(slot, a.scale * (dq[0][0] + dq[0][2]), a.scale * (dq[0][1] + dq[0][3]));
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = q0 + g + 8 * r;
            if (i >= T) continue;
            uint32_t *dqo = reinterpret_cast<uint32_t *>(row_ptr(as<bf16>(a.dq), a.ld_dqkv, b, i, T, h, 8) + 2 * u);
            const float2 old = a.grads_write ? make_float2(0.f, 0.f) : wordf(*dqo);
            *dqo = pack2(old.x + a.scale * dq[0][2 * r], old.y + a.scale * dq[0][2 * r + 1]);
            if (u == 0) Tv[sb + i] = Ti[r];
        }
    }
    if (part) { // [q | k | v] columns of this batch's row of partial sums
        __syncthreads();
        colsum8_out(part + (size_t)b * 3 * H * 8 + h * 8, sRed);
    }
}

// ---- backward, key side: dk, dv ----------------------------------------------------------
// Transposed tiles (16 keys x 8 queries): S^T = Ks Q^T (k carries scale log2 e here),
// A^T = V G^T; dv += P^T G, dk += scale dS^T Q
// one 16-query tile qb of a key tile: dv += P^T G, dk += dS^T Q (the diagonal tile with the mask)
template <bool DIAG>
__device__ __forceinline__ void kv_unit(float (&dk)[4], float (&dv)[4], const uint32_t (&ka)[2],
                                        const uint32_t (&va)[2], const bf16 *sQ, const bf16 *sG,
                                        const float *sL, const float *sT, int qb, unsigned diag) {
    const int u = threadIdx.x & 3;
    float s[2][4], A[2][4], ds[2][4];
    two_products(s, A, ka, va, sQ, sG, qb);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const float2 lse = *reinterpret_cast<const float2 *>(sL + qb + 8 * hf + 2 * u);
        const float2 tv = *reinterpret_cast<const float2 *>(sT + qb + 8 * hf + 2 * u);
        const float lse2[2] = {lse.x * L2E, lse.y * L2E}, Ti[2] = {tv.x, tv.y};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float p = cu_ex2(s[hf][e] - lse2[e & 1]);
            const bool vis = !DIAG || diag >> (4 * hf + e) & 1;
            s[hf][e] = vis ? p : 0.f;
            ds[hf][e] = vis ? p * (A[hf][e] - Ti[e & 1]) : 0.f;
        }
    }
    uint32_t pa[4], gq[4];
    ldsm_trans<4>(gq, tile_row(sG, sQ, qb)); // G's, then Q's B operands
    pack_tiles(pa, s[0], s[1]);
    mma16(dv, pa, gq[0], gq[1]);
    pack_tiles(pa, ds[0], ds[1]);
    mma16(dk, pa, gq[2], gq[3]);
}

__global__ void __launch_bounds__(NTHREADS)
    short_bwd_kv_kernel(AttnArgs a, const float *Tv, const float *cs, float *part) {
    __shared__ __align__(16) bf16 sQ[ROWS * 8], sG[ROWS * 8], sK[ROWS * 8], sV[ROWS * 8];
    __shared__ __align__(16) float sL[ROWS], sT[ROWS]; // per query: lse, T_i
    __shared__ __align__(16) float2 sCS[ROPE8];         // cs: dk turned back as written
    __shared__ float sRed[2][2 * WARPS * 8];            // part: dk's, dv's column sums
    const int T = a.T, H = a.H, b = blockIdx.y / H, h = blockIdx.y % H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, u = lane & 3;
    rows_async(sQ, as<bf16>(a.q), a.ld_in, b, T, h);
    rows_async(sG, as<bf16>(a.dout), a.ld_out, b, T, h);
    rows_async(sK, as<bf16>(a.k), a.ld_in, b, T, h);
    rows_async(sV, as<bf16>(a.v), a.ld_in, b, T, h);
    // rows >= T: p = 1 against g = 0 and T_i = 0, adding nothing
    floats_async(sL, a.lse + (size_t)blockIdx.y * T, T);
    floats_async(sT, Tv + (size_t)blockIdx.y * T, T);
    if (cs) rope_rows_async(sCS, cs, T);
    cp_wait_all();
    __syncthreads();
    const unsigned diag = diag_bits(true);
    for (int pass = 0; pass < 2; pass++) {
        const int kt = pass ? ROWS / 16 - 1 - warp : warp, k0 = 16 * kt;
        const int at = (pass * WARPS + warp) * 8;
        if (k0 >= T) {
            if (part && lane < 8) sRed[0][at + lane] = sRed[1][at + lane] = 0.f;
            continue;
        }
        uint32_t ka[2], va[2]; // k carries the scale (log2 units) here, q in the forward
        afrag(ka, sK, k0, a.scale * L2E);
        afrag(va, sV, k0);
        float dk[1][4] = {{0.f, 0.f, 0.f, 0.f}}, dv[4] = {0.f, 0.f, 0.f, 0.f};
        kv_unit<true>(dk[0], dv, ka, va, sQ, sG, sL, sT, k0, diag);
        for (int qt = kt + 1; qt < ROWS / 16 && 16 * qt < T; qt++)
            kv_unit<false>(dk[0], dv, ka, va, sQ, sG, sL, sT, 16 * qt, diag);
#pragma unroll
        for (int e = 0; e < 4; e++) dk[0][e] *= a.scale;
        if (cs) rope8_back(dk, sCS, k0);
        if (part) {
            colsum8_slot(sRed[0] + at, dk[0][0] + dk[0][2], dk[0][1] + dk[0][3]);
            colsum8_slot(sRed[1] + at, dv[0] + dv[2], dv[1] + dv[3]);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int j = k0 + g + 8 * r;
            if (j >= T) continue;
            uint32_t *dko = reinterpret_cast<uint32_t *>(row_ptr(as<bf16>(a.dk), a.ld_dqkv, b, j, T, h, 8) + 2 * u);
            uint32_t *dvo = reinterpret_cast<uint32_t *>(row_ptr(as<bf16>(a.dv), a.ld_dqkv, b, j, T, h, 8) + 2 * u);
            const float2 ok = a.grads_write ? make_float2(0.f, 0.f) : wordf(*dko);
            const float2 ov = a.grads_write ? make_float2(0.f, 0.f) : wordf(*dvo);
            *dko = pack2(ok.x + dk[0][2 * r], ok.y + dk[0][2 * r + 1]);
            *dvo = pack2(ov.x + dv[2 * r], ov.y + dv[2 * r + 1]);
        }
    }
    if (part) {
        float *row = part + (size_t)b * 3 * H * 8 + h * 8;
        __syncthreads();
        colsum8_out(row + H * 8, sRed[0]);
        colsum8_out(row + 2 * H * 8, sRed[1]);
    }
}

} // namespace

// Softmax (no r), io_bf16, head dim 8, T <= 128, every key of the causal past in the window,
// rows that the 16-byte loads can read (after attn_strides). PLAB_ATTN_SHORT=0 leaves these
// kernels out (the general ones run): for A/B runs.
bool cu_attn_short(const AttnArgs *a) {
    static const bool on = [] {
        const char *e = getenv("PLAB_ATTN_SHORT");
        return !(e && !strcmp(e, "0"));
    }();
    return on && a->io_bf16 && !a->r && a->hd == 8 && a->T <= ROWS &&
           (a->window == 0 || a->window >= a->T) && a->ld_in % 8 == 0 && a->ld_out % 8 == 0 &&
           a->ld_dqkv % 8 == 0 && cu_aligned16(a->q, a->k, a->v, a->o) &&
           cu_aligned16(a->dout, a->dq, a->dk, a->dv);
}
void cu_attn_short_fwd(const AttnArgs *a) {
    short_fwd_kernel<<<dim3(1, a->B * a->H), NTHREADS, 0, cu.stream>>>(*a);
    CKL();
}
void cu_attn_short_bwd(const AttnArgs *a, float *Tv, const float *cs, float *part) {
    const dim3 grid(1, a->B * a->H);
    short_bwd_q_kernel<<<grid, NTHREADS, 0, cu.stream>>>(*a, Tv, cs, part);
    CKL();
    short_bwd_kv_kernel<<<grid, NTHREADS, 0, cu.stream>>>(*a, Tv, cs, part);
    CKL();
}
