// The scan op group (kernels/ops_scan.h) on CUDA: softplus with a bias, the
// Mamba-1 selective scan (baselines.md §4.2, §4.4) and the Mamba-2 SSD (§5.2).
// kernels/cpu/scan_cpu.c is the reference; tests/cuda_scan.c compares the two.
//
// One kernel pair runs both scans. SSD is the selective scan over the channels
// c = h*P + p (Dc = H*P) with the step dt[b,t,h], the decay A[h] and D[h] shared
// by the P channels of a head and B, C shared by the channels of a group (§5.2:
// q = C, k = B, v = dt x, g = dt A). The GPU always runs the token recurrence:
// SsdArgs.chunk (the chunked algorithm of §5.3-5.4) is ignored here. Both CPU
// algorithms are exact, so the results agree with either to rounding.
//
// Layout: one thread per state (b, channel, n). The L = min(pow2 >= N, 32) lanes
// of a channel hold J = pow2 / L states each (N <= 128) and sum over n with xor
// shuffles (each lane gets the same bits). A block holds CH = 256 / L channels of
// one batch row b, all of one B/C group. Every sum runs in a fixed order (no
// atomics), so the same inputs give the same bits; the grouping of the sums does
// not depend on the device either.
#include <cstdio>

#include "../ops_scan.h"
#include "cuda_common.cuh"

namespace {

constexpr int SCAN_THREADS = 256;
constexpr int SCAN_MAX_N = 128;
// backward: blocks of (b, group) are split into at most this many per launch
// (fixed, not per device: partial sums are grouped the same way everywhere)
constexpr int SCAN_BLOCKS_TARGET = 512;

inline int cdiv(long a, long b) { return (int)((a + b - 1) / b); }

// ---- softplus with a bias (Δ = softplus(raw + b), baselines.md §4.1, §5.1) -------------

__device__ __forceinline__ float softplus_f(float u) { return u > 20.f ? u : log1pf(expf(u)); }
__device__ __forceinline__ float softplus_grad_f(float u) { return u > 20.f ? 1.f : cu_sigmoid(u); }

// out, x: [N, C]; bias [C] or NULL
__global__ void softplus_fwd_kernel(float *out, const float *x, const float *bias, int C, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = softplus_f(x[i] + (bias ? bias[i % C] : 0.f));
}
__global__ void softplus_bwd_kernel(float *dx, const float *dout, const float *x, const float *bias,
                                    int C, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) dx[i] += dout[i] * softplus_grad_f(x[i] + (bias ? bias[i % C] : 0.f));
}
// dbias in two fixed-order stages: part[s*C + c] = sum over the rows of chunk s, then chunks in order
__global__ void softplus_dbias_part_kernel(float *part, const float *dout, const float *x,
                                           const float *bias, int N, int C, int rows) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y;
    if (c >= C) return;
    long n0 = (long)s * rows, n1 = min((long)N, n0 + rows);
    float b = bias ? bias[c] : 0.f, v = 0.f;
    for (long n = n0; n < n1; n++) v += dout[n * C + c] * softplus_grad_f(x[n * C + c] + b);
    part[(size_t)s * C + c] = v;
}
__global__ void softplus_dbias_final_kernel(float *dbias, const float *part, int S, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float v = 0.f;
    for (int s = 0; s < S; s++) v += part[(size_t)s * C + c];
    dbias[c] += v;
}

void softplus_forward(float *out, const float *x, const float *bias, int N, int C) {
    long n = (long)N * C;
    if (n == 0) return;
    softplus_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(out, x, bias, C, n);
    CKL();
}

void softplus_backward(float *dx, float *dbias, const float *dout, const float *x,
                       const float *bias, int N, int C) {
    long n = (long)N * C;
    if (n == 0) return;
    softplus_bwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dx, dout, x, bias, C, n);
    CKL();
    if (!dbias) return;
    int S = cdiv(N, 64);
    S = S > 256 ? 256 : S;
    int rows = cdiv(N, S);
    float *part = cu_scratch((size_t)S * C);
    softplus_dbias_part_kernel<<<dim3(cu_blocks(C, 128), S), 128, 0, cu.stream>>>(part, dout, x, bias,
                                                                                 N, C, rows);
    CKL();
    softplus_dbias_final_kernel<<<cu_blocks(C, 128), 128, 0, cu.stream>>>(dbias, part, S, C);
    CKL();
}

// ---- the scan (Mamba-1 §4.2/§4.4; SSD §5.2 as the same recurrence) ---------------------

struct ScanGeom {
    int B, T, Dc, N; // batch, tokens, channels, states per channel
    int ldd;         // entries of delta per token: Dc (Mamba-1) or H (SSD)
    int dp;          // channels per delta/A/D entry: 1 (Mamba-1) or P (SSD)
    int G, cpg;      // groups of B/C, channels per group
    int L, J, CH;    // lanes per channel, states per lane, channels per block
    int nsub;        // channel tiles (of CH) per group
    int spb, ntile;  // backward: tiles per block, blocks per (b, group)
    int nch;         // backward: chunks of K = 16 / J tokens
};

struct ScanPtrs {
    const float *x, *delta, *A_log, *Bm, *Cm, *D, *dy;
    float *y, *dx;
    float *ddelta;  // Mamba-1: += per channel; SSD: = per channel (scratch, summed over p after)
    float *ck;      // checkpoints: state before each chunk, per block and thread
    float *bc_part; // [B, G, ntile, T, 2, N]: dBm, dCm summed over the channels of one block
    float *dA_part; // Mamba-1 [B, Dc, N]; SSD [B, Dc] (summed over n)
    float *dD_part; // [B, Dc]
};

// sum over the L lanes of a channel (aligned groups of a warp); every lane gets the same bits
__device__ __forceinline__ float group_sum(float v, int L) {
    for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// A[c, n] = -exp(A_log) (Mamba-1: A_log [Dc, N]; SSD: A_log [H], one per head)
template <bool SSD>
__device__ __forceinline__ float decay(const float *A_log, int c, int n, const ScanGeom &g) {
    return -expf(SSD ? A_log[c / g.dp] : A_log[(size_t)c * g.N + n]);
}

// B/C row of token r for channel c
__device__ __forceinline__ size_t bc_row(const ScanGeom &g, size_t r, int c) {
    return (r * g.G + c / g.cpg) * (size_t)g.N;
}

// Forward (§4.2): h_t = exp(dl_t A) h_{t-1} + dl_t B_t x_t; y_t = sum_n C_t h_t + D x_t.
// grid (ceil(Dc/CH), B); writes y.
template <int J, bool SSD>
__global__ void __launch_bounds__(SCAN_THREADS) scan_fwd_kernel(ScanGeom g, ScanPtrs p) {
    const int L = g.L, lane = threadIdx.x % L, b = blockIdx.y;
    const int c = blockIdx.x * g.CH + threadIdx.x / L;
    const bool ok = c < g.Dc; // idle threads still run the loop (shuffles need the whole warp)
    float A[J], h[J];
#pragma unroll
    for (int j = 0; j < J; j++) {
        int n = lane + j * L;
        A[j] = ok && n < g.N ? decay<SSD>(p.A_log, c, n, g) : 0.f;
        h[j] = 0.f;
    }
    const float Dd = ok ? p.D[c / g.dp] : 0.f;
    for (int t = 0; t < g.T; t++) {
        size_t r = (size_t)b * g.T + t;
        float dl = ok ? p.delta[r * g.ldd + c / g.dp] : 0.f, xv = ok ? p.x[r * g.Dc + c] : 0.f;
        size_t row = ok ? bc_row(g, r, c) : 0;
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < J; j++) {
            int n = lane + j * L;
            bool on = ok && n < g.N;
            float bn = on ? p.Bm[row + n] : 0.f, cn = on ? p.Cm[row + n] : 0.f;
            h[j] = expf(dl * A[j]) * h[j] + dl * bn * xv;
            acc += cn * h[j];
        }
        acc = group_sum(acc, L);
        if (ok && lane == 0) p.y[r * g.Dc + c] = acc + Dd * xv;
    }
}

// Backward (§4.4): dh_t = a_{t+1} dh_{t+1} + dy_t C_t walked in reverse, with the states
// recomputed: a forward pass keeps the state before every chunk of K tokens (ck), then
// the chunks are walked backwards, each recomputing its K states into registers.
// grid (G * ntile, B): a block takes tiles s0..s1-1 of its group in turn. Per chunk the
// block sums its channels' dB, dC terms in shared memory (channel order) and adds them
// to its own slice of bc_part; dA, dD go to per-(b, channel) partials. dx (and, Mamba-1,
// ddelta) are per channel and accumulated directly.
template <int J, bool SSD>
__global__ void __launch_bounds__(SCAN_THREADS) scan_bwd_kernel(ScanGeom g, ScanPtrs p) {
    constexpr int K = 16 / J;                     // K*J registers hold a chunk's states
    __shared__ float red[K][2][SCAN_THREADS * J]; // [k][dB|dC][ch*NP + n]
    const int L = g.L, NP = L * J, lane = threadIdx.x % L, ch = threadIdx.x / L;
    const int b = blockIdx.y, grp = blockIdx.x / g.ntile, tile = blockIdx.x % g.ntile;
    const int s0 = tile * g.spb, s1 = min(g.nsub, s0 + g.spb);
    float *ck = p.ck + (size_t)(blockIdx.y * gridDim.x + blockIdx.x) * g.nch * SCAN_THREADS * J;
    float *part = p.bc_part + ((size_t)(b * g.G + grp) * g.ntile + tile) * g.T * 2 * g.N;
    for (int s = s0; s < s1; s++) { // uniform over the block
        const int cg = s * g.CH + ch, c = grp * g.cpg + cg;
        const bool ok = cg < g.cpg;
        float A[J], h[J];
#pragma unroll
        for (int j = 0; j < J; j++) {
            int n = lane + j * L;
            A[j] = ok && n < g.N ? decay<SSD>(p.A_log, c, n, g) : 0.f;
            h[j] = 0.f;
        }
        const float Dd = ok ? p.D[c / g.dp] : 0.f;
        // pass 1: the state before each chunk
        for (int ci = 0; ci < g.nch; ci++) {
#pragma unroll
            for (int j = 0; j < J; j++) ck[((size_t)ci * J + j) * SCAN_THREADS + threadIdx.x] = h[j];
            int t1 = min(g.T, (ci + 1) * K);
            for (int t = ci * K; t < t1; t++) {
                size_t r = (size_t)b * g.T + t;
                float dl = ok ? p.delta[r * g.ldd + c / g.dp] : 0.f, xv = ok ? p.x[r * g.Dc + c] : 0.f;
                size_t row = ok ? bc_row(g, r, c) : 0;
#pragma unroll
                for (int j = 0; j < J; j++) {
                    int n = lane + j * L;
                    float bn = ok && n < g.N ? p.Bm[row + n] : 0.f;
                    h[j] = expf(dl * A[j]) * h[j] + dl * bn * xv;
                }
            }
        }
        // pass 2: chunks in reverse
        float dh[J], dA[J], dDp = 0.f;
#pragma unroll
        for (int j = 0; j < J; j++) dh[j] = 0.f, dA[j] = 0.f;
        for (int ci = g.nch - 1; ci >= 0; ci--) {
            const int t0 = ci * K, Lc = min(K, g.T - t0);
            float h0[J], hs[K][J];
#pragma unroll
            for (int j = 0; j < J; j++) h0[j] = ck[((size_t)ci * J + j) * SCAN_THREADS + threadIdx.x];
#pragma unroll
            for (int k = 0; k < K; k++) { // states h_{t0+k}
                if (k < Lc) {
                    size_t r = (size_t)b * g.T + t0 + k;
                    float dl = ok ? p.delta[r * g.ldd + c / g.dp] : 0.f, xv = ok ? p.x[r * g.Dc + c] : 0.f;
                    size_t row = ok ? bc_row(g, r, c) : 0;
#pragma unroll
                    for (int j = 0; j < J; j++) {
                        int n = lane + j * L;
                        float bn = ok && n < g.N ? p.Bm[row + n] : 0.f;
                        hs[k][j] = expf(dl * A[j]) * (k ? hs[k - 1][j] : h0[j]) + dl * bn * xv;
                    }
                }
            }
#pragma unroll
            for (int k = K - 1; k >= 0; k--) {
                if (k < Lc) { // uniform over the block: the shuffles below see every lane
                    size_t r = (size_t)b * g.T + t0 + k;
                    float dl = ok ? p.delta[r * g.ldd + c / g.dp] : 0.f, xv = ok ? p.x[r * g.Dc + c] : 0.f;
                    float gy = ok ? p.dy[r * g.Dc + c] : 0.f, dxv = 0.f, ddl = 0.f;
                    size_t row = ok ? bc_row(g, r, c) : 0;
#pragma unroll
                    for (int j = 0; j < J; j++) {
                        int n = lane + j * L;
                        bool on = ok && n < g.N;
                        float bn = on ? p.Bm[row + n] : 0.f, cn = on ? p.Cm[row + n] : 0.f;
                        float hp = k ? hs[k - 1][j] : h0[j], a = expf(dl * A[j]);
                        dh[j] += gy * cn;
                        red[k][0][ch * NP + n] = dh[j] * dl * xv;  // dB_t[n] term
                        red[k][1][ch * NP + n] = gy * hs[k][j];    // dC_t[n] term
                        dxv += dh[j] * dl * bn;
                        ddl += dh[j] * (bn * xv + A[j] * a * hp);
                        dA[j] += dh[j] * dl * a * hp;
                        dh[j] *= a; // now the part of dh_{t-1} that flows through h_t
                    }
                    dxv = group_sum(dxv, L);
                    ddl = group_sum(ddl, L);
                    if (ok && lane == 0) {
                        p.dx[r * g.Dc + c] += Dd * gy + dxv;
                        if (SSD) p.ddelta[r * g.Dc + c] = ddl;
                        else p.ddelta[r * g.Dc + c] += ddl;
                        dDp += gy * xv;
                    }
                }
            }
            __syncthreads();
            // dB, dC of the chunk's tokens summed over the block's channels, in channel order
            for (int o = threadIdx.x; o < Lc * 2 * g.N; o += SCAN_THREADS) {
                int k = o / (2 * g.N), w = (o / g.N) % 2, n = o % g.N;
                float v = 0.f;
                for (int q = 0; q < g.CH; q++) v += red[k][w][q * NP + n];
                float *dst = part + (size_t)(t0 + k) * 2 * g.N + w * g.N + n;
                *dst = s == s0 ? v : *dst + v; // this block owns its slice: plain read-modify-write
            }
            __syncthreads();
        }
        if (SSD) { // one A per head: sum the channel's states here
            float v = 0.f;
#pragma unroll
            for (int j = 0; j < J; j++) v += dA[j];
            v = group_sum(v, L);
            if (ok && lane == 0) p.dA_part[(size_t)b * g.Dc + c] = v;
        } else if (ok) {
#pragma unroll
            for (int j = 0; j < J; j++) {
                int n = lane + j * L;
                if (n < g.N) p.dA_part[((size_t)b * g.Dc + c) * g.N + n] = dA[j];
            }
        }
        if (ok && lane == 0) p.dD_part[(size_t)b * g.Dc + c] = dDp;
    }
}

// dBm, dCm [B, T, G, N] += the ntile block partials of (b, group), in tile order
__global__ void scan_bc_final_kernel(float *dBm, float *dCm, const float *part, int B, int T, int G,
                                     int N, int ntile) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x; // ((b*G + grp)*T + t)*2N + w*N + n
    long n2 = 2L * N;
    if (i >= (long)B * G * T * n2) return;
    int wn = (int)(i % n2), t = (int)((i / n2) % T);
    long bg = i / (n2 * T);
    int b = (int)(bg / G), grp = (int)(bg % G), w = wn / N, n = wn % N;
    float v = 0.f;
    for (int k = 0; k < ntile; k++) v += part[((bg * ntile + k) * T + t) * n2 + wn];
    size_t o = (((size_t)b * T + t) * G + grp) * N + n;
    if (w == 0) dBm[o] += v;
    else dCm[o] += v;
}

// SSD: ddt[r, h] += sum_p ddc[r, h*P + p] (the per-channel dΔ terms of one head)
__global__ void ssd_ddt_kernel(float *ddt, const float *ddc, long n, int P) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = 0.f;
    for (int q = 0; q < P; q++) v += ddc[i * P + q];
    ddt[i] += v;
}

// S = sum_{b < nb, i < m} part[b*ldb + o*m + i], one block per output o, fixed-order tree;
// out[o] += S, or with alog: out[o] -= S exp(alog[o]) (dA_log = dA * A, A = -exp(A_log))
__global__ void scan_param_kernel(float *out, const float *part, const float *alog, int nb, long ldb,
                                  int m) {
    __shared__ float sh[128];
    long o = blockIdx.x, terms = (long)nb * m;
    float v = 0.f;
    for (long i = threadIdx.x; i < terms; i += 128) v += part[(i / m) * ldb + o * m + i % m];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = 64; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[o] = alog ? out[o] - sh[0] * expf(alog[o]) : out[o] + sh[0];
}

// geometry of a scan over Dc channels; ldd/dp/G describe the sharing (see ScanGeom)
ScanGeom scan_geom(int B, int T, int Dc, int N, int ldd, int dp, int G) {
    if (N < 1 || N > SCAN_MAX_N) {
        static char why[160];
        snprintf(why, sizeof why, "state size N = %d is not supported by the CUDA scan kernels "
                                  "(1..%d); use device=cpu or a smaller d_state", N, SCAN_MAX_N);
        cu_die(__FILE__, __LINE__, "scan", why);
    }
    ScanGeom g;
    g.B = B, g.T = T, g.Dc = Dc, g.N = N, g.ldd = ldd, g.dp = dp, g.G = G, g.cpg = Dc / G;
    int np = 1;
    while (np < N) np <<= 1;
    g.L = np < 32 ? np : 32;
    g.J = np / g.L;
    g.CH = SCAN_THREADS / g.L;
    g.nsub = cdiv(g.cpg, g.CH);
    int want = cdiv(SCAN_BLOCKS_TARGET, (long)B * G);
    want = want < 1 ? 1 : want > g.nsub ? g.nsub : want;
    g.spb = cdiv(g.nsub, want);
    g.ntile = cdiv(g.nsub, g.spb); // every block gets at least one tile
    g.nch = cdiv(T, 16 / g.J);
    return g;
}

template <bool SSD>
void scan_forward_launch(const ScanGeom &g, const ScanPtrs &p) {
    if ((long)g.B * g.T * g.Dc == 0) return;
    dim3 grid(cdiv(g.Dc, g.CH), g.B);
    switch (g.J) {
    case 1: scan_fwd_kernel<1, SSD><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    case 2: scan_fwd_kernel<2, SSD><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    default: scan_fwd_kernel<4, SSD><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    }
    CKL();
}

// One scratch allocation, carved: ck, bc_part, dA_part, dD_part (and SSD's per-channel dΔ).
// Then the fixed-order reductions: dBm, dCm over block partials; Mamba-1 dA_log[d,n] and
// dD[d] over b; SSD dA_log[h], dD[h] over (b, p) and ddt over p.
template <bool SSD>
void scan_backward_launch(const ScanGeom &g, ScanPtrs p, float *dBm, float *dCm, float *dA_log,
                          float *dD, float *ddt) {
    if ((long)g.B * g.T * g.Dc == 0) return;
    size_t nblk = (size_t)g.B * g.G * g.ntile;
    size_t n_ck = nblk * g.nch * SCAN_THREADS * g.J, n_bc = nblk * g.T * 2 * g.N;
    size_t n_dA = (size_t)g.B * g.Dc * (SSD ? 1 : g.N), n_dD = (size_t)g.B * g.Dc;
    size_t n_ddc = SSD ? (size_t)g.B * g.T * g.Dc : 0;
    float *s = cu_scratch(n_ck + n_bc + n_dA + n_dD + n_ddc);
    p.ck = s, p.bc_part = s + n_ck, p.dA_part = p.bc_part + n_bc, p.dD_part = p.dA_part + n_dA;
    if (SSD) p.ddelta = p.dD_part + n_dD;
    dim3 grid(g.G * g.ntile, g.B);
    switch (g.J) {
    case 1: scan_bwd_kernel<1, SSD><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    case 2: scan_bwd_kernel<2, SSD><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    default: scan_bwd_kernel<4, SSD><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    }
    CKL();
    long nbc = (long)g.B * g.G * g.T * 2 * g.N;
    scan_bc_final_kernel<<<cu_blocks(nbc, 256), 256, 0, cu.stream>>>(dBm, dCm, p.bc_part, g.B, g.T,
                                                                     g.G, g.N, g.ntile);
    CKL();
    if (SSD) {
        int H = g.ldd, P = g.dp;
        long nh = (long)g.B * g.T * H;
        ssd_ddt_kernel<<<cu_blocks(nh, 256), 256, 0, cu.stream>>>(ddt, p.ddelta, nh, P);
        CKL();
        scan_param_kernel<<<H, 128, 0, cu.stream>>>(dA_log, p.dA_part, p.A_log, g.B, g.Dc, P);
        CKL();
        scan_param_kernel<<<H, 128, 0, cu.stream>>>(dD, p.dD_part, nullptr, g.B, g.Dc, P);
        CKL();
    } else {
        scan_param_kernel<<<g.Dc * g.N, 128, 0, cu.stream>>>(dA_log, p.dA_part, p.A_log, g.B,
                                                             (long)g.Dc * g.N, 1);
        CKL();
        scan_param_kernel<<<g.Dc, 128, 0, cu.stream>>>(dD, p.dD_part, nullptr, g.B, g.Dc, 1);
        CKL();
    }
}

// ---- Mamba-1 (x, delta, y: [B, T, Dc]; Bm, Cm: [B, T, N]; A_log [Dc, N]; D [Dc]) --------

void sscan_forward(float *y, const float *x, const float *delta, const float *A_log,
                   const float *Bm, const float *Cm, const float *D, int B, int T, int Dc, int N) {
    ScanGeom g = scan_geom(B, T, Dc, N, Dc, 1, 1);
    ScanPtrs p = {};
    p.x = x, p.delta = delta, p.A_log = A_log, p.Bm = Bm, p.Cm = Cm, p.D = D, p.y = y;
    scan_forward_launch<false>(g, p);
}

void sscan_backward(float *dx, float *ddelta, float *dA_log, float *dBm, float *dCm, float *dD,
                    const float *dy, const float *x, const float *delta, const float *A_log,
                    const float *Bm, const float *Cm, const float *D, int B, int T, int Dc, int N) {
    ScanGeom g = scan_geom(B, T, Dc, N, Dc, 1, 1);
    ScanPtrs p = {};
    p.x = x, p.delta = delta, p.A_log = A_log, p.Bm = Bm, p.Cm = Cm, p.D = D, p.dy = dy;
    p.dx = dx, p.ddelta = ddelta;
    scan_backward_launch<false>(g, p, dBm, dCm, dA_log, dD, nullptr);
}

// ---- Mamba-2 SSD (SsdArgs, ops_scan.h): channels c = h*P + p, token recurrence only -----

ScanGeom ssd_geom(const SsdArgs *a) {
    return scan_geom(a->B, a->T, a->H * a->P, a->N, a->H, a->P, a->G);
}

void ssd_forward(const SsdArgs *a) {
    ScanGeom g = ssd_geom(a);
    ScanPtrs p = {};
    p.x = a->x, p.delta = a->dt, p.A_log = a->A_log, p.Bm = a->Bm, p.Cm = a->Cm, p.D = a->D;
    p.y = a->y;
    scan_forward_launch<true>(g, p);
}

void ssd_backward(const SsdArgs *a) {
    ScanGeom g = ssd_geom(a);
    ScanPtrs p = {};
    p.x = a->x, p.delta = a->dt, p.A_log = a->A_log, p.Bm = a->Bm, p.Cm = a->Cm, p.D = a->D;
    p.dy = a->dy, p.dx = a->dx;
    scan_backward_launch<true>(g, p, a->dBm, a->dCm, a->dA_log, a->dD, a->ddt);
}

const ScanOps cuda_scan_ops = {
    softplus_forward, softplus_backward, sscan_forward, sscan_backward, ssd_forward, ssd_backward,
};

} // namespace

void cu_fill_scan(Ops *o) { o->scan = &cuda_scan_ops; }
