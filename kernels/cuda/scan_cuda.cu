// The scan op group (kernels/ops_scan.h) on CUDA: softplus with a bias, the
// Mamba-1 selective scan (baselines.md §4.2, §4.4) and the Mamba-2 SSD (§5.2, §5.4).
// kernels/cpu/scan_cpu.c is the reference; tests/cuda_scan.c compares the two.
//
// Both scans run the token recurrence (SsdArgs.chunk, the chunked algorithm of §5.3-5.4,
// is ignored here; both CPU algorithms are exact, so the results agree with either to
// rounding). Mamba-1 has one state per (channel, n) with its own decay: one thread per
// state. The SSD shares the decay over a head's P x N state and B, C over a group's
// heads, so it runs per head with register tiles of the state (see its section).
// Every sum runs in a fixed order (no atomics), so the same inputs give the same bits;
// the grouping of the sums does not depend on the device either.
#include <cstdio>

#include "../ops_scan.h"
#include "cuda_common.cuh"

namespace {

constexpr int SCAN_THREADS = 256;
constexpr int SCAN_MAX_N = 128;
// Mamba-1 backward: blocks of a batch row are split into at most this many per launch
// (fixed, not per device: partial sums are grouped the same way everywhere)
constexpr int SCAN_BLOCKS_TARGET = 512;

__host__ __device__ inline int cdiv(long a, long b) { return (int)((a + b - 1) / b); }

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

// ---- Mamba-1 selective scan (§4.2, §4.4) ------------------------------------------------

// Layout: one thread per state (b, channel, n). The L = min(pow2 >= N, 32) lanes of a
// channel hold J = pow2 / L states each (N <= 128) and sum over n with xor shuffles (each
// lane gets the same bits). A block holds CH = 256 / L channels of one batch row.
//
// Mamba-1 always passes ldd = Dc, dp = 1, G = 1 (cpg = Dc), but they stay runtime fields
// (the code of b69bd78): with them ptxas (13.0, sm_90a) gives scan_bwd_kernel<1> (N <= 4,
// MAD) 128 registers, 2 blocks of 256 an SM; with the strides folded to Dc, N (93fc50e) it
// took 196, 1 block an SM: at MAD 512 blocks ran in 4 waves of 132 instead of 2.
struct ScanGeom {
    int B, T, Dc, N; // batch, tokens, channels, states per channel
    int ldd;         // entries of delta per token
    int dp;          // channels per delta/A/D entry
    int G, cpg;      // groups of B/C, channels per group
    int L, J, CH;    // lanes per channel, states per lane, channels per block
    int nsub;        // channel tiles (of CH) per group
    int spb, ntile;  // backward: tiles per block, blocks per (b, group)
    int nch;         // backward: chunks of K = 16 / J tokens
};

struct ScanPtrs {
    const float *x, *delta, *A_log, *Bm, *Cm, *D, *dy;
    float *y, *dx;
    float *ddelta;  // += per channel
    float *ck;      // checkpoints: state before each chunk, per block and thread
    float *bc_part; // [B, G, ntile, T, 2, N]: dBm, dCm summed over the channels of one block
    float *dA_part; // [B, Dc, N]
    float *dD_part; // [B, Dc]
};

// sum over the L lanes of a channel (aligned groups of a warp); every lane gets the same bits
__device__ __forceinline__ float group_sum(float v, int L) {
    for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// A[c, n] = -exp(A_log), A_log [Dc, N]
__device__ __forceinline__ float decay(const float *A_log, int c, int n, const ScanGeom &g) {
    return -expf(A_log[(size_t)c * g.N + n]);
}

// B/C row of token r for channel c
__device__ __forceinline__ size_t bc_row(const ScanGeom &g, size_t r, int c) {
    return (r * g.G + c / g.cpg) * (size_t)g.N;
}

// Forward (§4.2): h_t = exp(dl_t A) h_{t-1} + dl_t B_t x_t; y_t = sum_n C_t h_t + D x_t.
// grid (ceil(Dc/CH), B); writes y.
template <int J>
__global__ void __launch_bounds__(SCAN_THREADS) scan_fwd_kernel(ScanGeom g, ScanPtrs p) {
    const int L = g.L, lane = threadIdx.x % L, b = blockIdx.y;
    const int c = blockIdx.x * g.CH + threadIdx.x / L;
    const bool ok = c < g.Dc; // idle threads still run the loop (shuffles need the whole warp)
    float A[J], h[J];
#pragma unroll
    for (int j = 0; j < J; j++) {
        int n = lane + j * L;
        A[j] = ok && n < g.N ? decay(p.A_log, c, n, g) : 0.f;
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
template <int J>
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
            A[j] = ok && n < g.N ? decay(p.A_log, c, n, g) : 0.f;
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
                        p.ddelta[r * g.Dc + c] += ddl;
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
        if (ok) {
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
void state_size_check(int N) {
    if (N < 1 || N > SCAN_MAX_N) {
        static char why[160];
        snprintf(why, sizeof why, "state size N = %d is not supported by the CUDA scan kernels "
                                  "(1..%d); use device=cpu or a smaller d_state", N, SCAN_MAX_N);
        cu_die(__FILE__, __LINE__, "scan", why);
    }
}

// geometry of a scan over Dc channels; ldd/dp/G describe the sharing (see ScanGeom)
ScanGeom scan_geom(int B, int T, int Dc, int N, int ldd, int dp, int G) {
    state_size_check(N);
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

// x, delta, y: [B, T, Dc]; Bm, Cm: [B, T, N]; A_log [Dc, N]; D [Dc]
void sscan_forward(float *y, const float *x, const float *delta, const float *A_log,
                   const float *Bm, const float *Cm, const float *D, int B, int T, int Dc, int N) {
    ScanGeom g = scan_geom(B, T, Dc, N, Dc, 1, 1);
    if ((long)g.B * g.T * g.Dc == 0) return;
    ScanPtrs p = {};
    p.x = x, p.delta = delta, p.A_log = A_log, p.Bm = Bm, p.Cm = Cm, p.D = D, p.y = y;
    dim3 grid(cdiv(g.Dc, g.CH), g.B);
    switch (g.J) {
    case 1: scan_fwd_kernel<1><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    case 2: scan_fwd_kernel<2><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    default: scan_fwd_kernel<4><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    }
    CKL();
}

// One scratch allocation, carved: ck, bc_part, dA_part, dD_part. Then the fixed-order
// reductions: dBm, dCm over block partials; dA_log[d,n] and dD[d] over b.
void sscan_backward(float *dx, float *ddelta, float *dA_log, float *dBm, float *dCm, float *dD,
                    const float *dy, const float *x, const float *delta, const float *A_log,
                    const float *Bm, const float *Cm, const float *D, int B, int T, int Dc, int N) {
    ScanGeom g = scan_geom(B, T, Dc, N, Dc, 1, 1);
    if ((long)g.B * g.T * g.Dc == 0) return;
    ScanPtrs p = {};
    p.x = x, p.delta = delta, p.A_log = A_log, p.Bm = Bm, p.Cm = Cm, p.D = D, p.dy = dy;
    p.dx = dx, p.ddelta = ddelta;
    size_t nblk = (size_t)g.B * g.G * g.ntile;
    size_t n_ck = nblk * g.nch * SCAN_THREADS * g.J, n_bc = nblk * g.T * 2 * g.N;
    size_t n_dA = (size_t)g.B * g.Dc * g.N, n_dD = (size_t)g.B * g.Dc;
    float *s = cu_scratch(n_ck + n_bc + n_dA + n_dD);
    p.ck = s, p.bc_part = s + n_ck, p.dA_part = p.bc_part + n_bc, p.dD_part = p.dA_part + n_dA;
    dim3 grid(g.G * g.ntile, g.B);
    switch (g.J) {
    case 1: scan_bwd_kernel<1><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    case 2: scan_bwd_kernel<2><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    default: scan_bwd_kernel<4><<<grid, SCAN_THREADS, 0, cu.stream>>>(g, p); break;
    }
    CKL();
    long nbc = (long)g.B * g.G * g.T * 2 * g.N;
    scan_bc_final_kernel<<<cu_blocks(nbc, 256), 256, 0, cu.stream>>>(dBm, dCm, p.bc_part, g.B, g.T,
                                                                     g.G, g.N, g.ntile);
    CKL();
    scan_param_kernel<<<g.Dc * g.N, 128, 0, cu.stream>>>(dA_log, p.dA_part, p.A_log, g.B,
                                                         (long)g.Dc * g.N, 1);
    CKL();
    scan_param_kernel<<<g.Dc, 128, 0, cu.stream>>>(dD, p.dD_part, nullptr, g.B, g.Dc, 1);
    CKL();
}

// ---- Mamba-2 SSD (§5.2) ------------------------------------------------------------------
//
// Per (b, head) the state is h[p, n] (P x N) with one scalar decay a_t = exp(dt_t A) per token:
//   h_t = a_t h_{t-1} + v_t B_t^T (v_t = dt_t x_t),   y_t = h_t C_t + D x_t.
// A block takes PT channels p of one head of one batch row with all N states: each thread
// holds a 4 (p) x 8 (n) tile of the state in registers, so the per-token contractions are
// mostly in-thread FMAs; the rest of a sum over n (the TN lanes of a row, y and dx) or
// over p (the WP rows of a warp, dB and dC) is a butterfly that halves the values each
// lane keeps (every sum formed in one place), then the NW warps' column partials are summed
// from shared memory once per chunk of KT tokens. x, dy, B, C, dt of a chunk are staged in
// shared memory. Every sum has a fixed order: the same inputs give the same bits.
//
// The backward never walks the states h backwards. dt's gradient through the decay uses
// the gated-linear-attention identity of §5.4 (g = dt A, q = C, k = B, v = dt x): inside
// segments of KC tokens [t0, t1),
//   dg_t = sum_{t <= r < t1} (q_r.dq_r - k_r.dk_r) + <h_{t1-1}, dh'_{t1-1}>
// (the last term is dg_{t1}, the pairs (s < t1 <= r) crossing the boundary, exact as in
// the CPU's chunked form), with the diagonal pair (r, r) of w_rs = e^{G_r - G_s}
// (q_r.k_s)(dy_r.v_s) taken out of both terms, where it cancels exactly:
//   q_r.dq_r - w_rr = a_r sum_p dy_r[p] (h_{r-1} C_r)[p]     (forward walk, with h)
//   k_r.dk_r - w_rr = dt_r sum_p x_r[p] (dh'_r B_r)[p]       (reverse walk, dh'_r = a_{r+1} dh_{r+1})
// So a forward walk (h: dC, the first sums, h at the segment boundaries) runs first, then
// a reverse walk (dh: dB, dx, the second sums, the boundary products), then a small
// kernel per (b, head, segment) forms dg and ddt. The segments bound the cancellation
// in the sums to KC tokens whatever T is.

constexpr int SSD_RP = 4;  // channels per thread
constexpr int SSD_RN = 8;  // states per thread (two float4 of B, C)
constexpr int SSD_KT = 16; // tokens staged per chunk (fewer when shared memory is short)
constexpr int SSD_KC = 32; // tokens a segment of the dg sums (a multiple of every KT)
constexpr int SSD_MAX_THREADS = 256;
constexpr size_t SSD_SMEM_MAX = 48 * 1024; // no opt-in needed
enum { SSD_FWD = 0, SSD_BWD_F = 1, SSD_BWD_R = 2 };

struct SsdGeom {
    int B, T, H, P, G, N, hpg; // hpg: heads per group
    int TN, NT;                // lanes across n (pow2 <= 16), NT = 8 TN >= N states
    int NW, PT, nptile;        // warps per block, channels per block = NW (32/TN) 4, tiles a head
    int KT;                    // tokens per staged chunk
};

struct SsdPtrs {
    const float *x, *dt, *A_log, *Bm, *Cm, *D, *dy;
    float *y, *dx;
    float *dBp, *dCp;          // [B, H, nptile, T, N]: dB (reverse walk), dC (forward walk)
    float *s1, *s2, *s2d, *s3; // [B, H, nptile, T]: sum_p dy.(h_{t-1} C), x.u, x.u', x.dy
    float *ck;                 // [B, H, nptile, nseg - 1, 32, threads]: h at segment ends
    float *beta;               // [B, H, nptile, nseg - 1]: <h, dh'> at segment ends
};

// offsets (floats) of the shared arrays; float4-read ones first, all multiples of 4
struct SsdSmem {
    int x, dy, B, C, row, col, dl, a, red, total;
};

__host__ __device__ inline SsdSmem ssd_smem(const SsdGeom &g, bool bwd) {
    SsdSmem s;
    int o = 0, kp = g.KT * g.PT, kn = g.KT * g.NT;
    s.x = o, o += kp;
    s.dy = o, o += bwd ? kp : 0;
    s.B = o, o += kn;
    s.C = o, o += kn;
    s.row = o, o += kp;                     // per (token, channel): the sum over n
    s.col = o, o += bwd ? kn * g.NW : 0;    // per (token, warp, n): a warp's sum over p
    s.dl = o, o += g.KT;
    s.a = o, o += g.KT;
    s.red = o, o += g.NW;                   // the warps' parts of a boundary product
    s.total = o;
    return s;
}

// Sums v[0..M) over the 2^NB lanes differing in lane bits LO..LO+NB-1. The top H = min(NB,
// log2 M) bits halve the values a lane keeps (the half it sends is added by its partner),
// the remaining lower bits run a butterfly on the one value left. Returns `base`: v[i],
// i < M >> H, is the sum of index base + i; lanes whose butterfly bits are zero hold
// distinct sets, together all M.
template <int M, int LO, int NB>
__device__ __forceinline__ int xsum_scatter(float (&v)[M], int lane) {
    constexpr int LM = M == 8 ? 3 : M == 4 ? 2 : M == 2 ? 1 : 0;
    constexpr int HS = NB < LM ? NB : LM;
    int base = 0;
#pragma unroll
    for (int s = 0; s < HS; s++) {
        const int mask = 1 << (LO + NB - 1 - s), half = M >> (s + 1);
        const bool up = lane & mask;
#pragma unroll
        for (int i = 0; i < half; i++) {
            float send = up ? v[i] : v[i + half], keep = up ? v[i + half] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
        }
        base += up ? half : 0;
    }
#pragma unroll
    for (int s = HS; s < NB; s++)
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1 << (LO + NB - 1 - s));
    return base;
}

// One block's walk over the tokens of (b, head h, channel tile pt). MODE SSD_FWD writes y;
// SSD_BWD_F walks forward (h) for dC and s1; SSD_BWD_R walks backward (dh) for dB, dx,
// s2, s2d, s3.
template <int TN, int MODE>
__device__ __forceinline__ void ssd_walk(const SsdGeom &g, const SsdPtrs &q, float *sm) {
    constexpr int WP = 32 / TN, LTN = TN == 1 ? 0 : TN == 2 ? 1 : TN == 4 ? 2 : TN == 8 ? 3 : 4;
    constexpr bool REV = MODE == SSD_BWD_R;
    const SsdSmem L = ssd_smem(g, MODE != SSD_FWD);
    float *sx = sm + L.x, *sdy = sm + L.dy, *sB = sm + L.B, *sC = sm + L.C, *srow = sm + L.row;
    float *scol = sm + L.col, *sdl = sm + L.dl, *sa = sm + L.a, *sred = sm + L.red;
    const int tid = threadIdx.x, nth = blockDim.x, lane = tid & 31, w = tid >> 5;
    const int nl = lane & (TN - 1), prow = w * WP + lane / TN;
    const int pt = blockIdx.x % g.nptile, h = blockIdx.x / g.nptile, b = blockIdx.y;
    const int p0 = pt * g.PT, grp = h / g.hpg, PT = g.PT, NT = g.NT, KT = g.KT;
    const float A = -expf(q.A_log[h]), Dh = q.D[h];
    const size_t blk = ((size_t)b * g.H + h) * g.nptile + pt, part = blk * g.T; // partials' row
    const int nbd = cdiv(g.T, SSD_KC) - 1;                                      // segment ends
    constexpr int NS = SSD_RP * SSD_RN;                                         // states a thread
    float *ck = MODE == SSD_FWD ? nullptr : q.ck + blk * nbd * NS * nth + tid; // ck[(bd NS + s) nth]
    float st[SSD_RP][SSD_RN];                                         // h or dh
#pragma unroll
    for (int i = 0; i < SSD_RP; i++)
#pragma unroll
        for (int j = 0; j < SSD_RN; j++) st[i][j] = 0.f;
    const int nch = cdiv(g.T, KT);
    for (int cc = 0; cc < nch; cc++) {
        const int ci = REV ? nch - 1 - cc : cc, t0 = ci * KT, kn = min(KT, g.T - t0);
        // stage the chunk, one warp a token, zero-padded past T, P, N (padding keeps every
        // lane in the loop below)
        for (int k = w; k < KT; k += g.NW) {
            const bool on = k < kn;
            const size_t r = (size_t)b * g.T + t0 + k, ox = (r * g.H + h) * g.P;
            const size_t ob = (r * g.G + grp) * g.N;
            for (int i = lane; i < PT; i += 32) {
                bool pon = on && p0 + i < g.P;
                sx[k * PT + i] = pon ? q.x[ox + p0 + i] : 0.f;
                if (MODE != SSD_FWD) sdy[k * PT + i] = pon ? q.dy[ox + p0 + i] : 0.f;
            }
            for (int n = lane; n < NT; n += 32) {
                bool non = on && n < g.N;
                sB[k * NT + n] = non ? q.Bm[ob + n] : 0.f;
                sC[k * NT + n] = non ? q.Cm[ob + n] : 0.f;
            }
            if (lane == 0) {
                float dl = on ? q.dt[r * g.H + h] : 0.f;
                sdl[k] = dl, sa[k] = expf(dl * A);
            }
        }
        __syncthreads();
        for (int kk = 0; kk < kn; kk++) {
            const int k = REV ? kn - 1 - kk : kk;
            const float a = sa[k], dl = sdl[k];
            const float4 x4 = *reinterpret_cast<const float4 *>(sx + k * PT + prow * 4);
            const float xv[4] = {x4.x, x4.y, x4.z, x4.w};
            float Bv[SSD_RN], Cv[SSD_RN];
#pragma unroll
            for (int hf = 0; hf < 2; hf++) { // n = (hf TN + nl) 4 + 0..3
                const int o = k * NT + (hf * TN + nl) * 4;
                const float4 b4 = *reinterpret_cast<const float4 *>(sB + o);
                const float4 c4 = *reinterpret_cast<const float4 *>(sC + o);
                Bv[hf * 4] = b4.x, Bv[hf * 4 + 1] = b4.y, Bv[hf * 4 + 2] = b4.z, Bv[hf * 4 + 3] = b4.w;
                Cv[hf * 4] = c4.x, Cv[hf * 4 + 1] = c4.y, Cv[hf * 4 + 2] = c4.z, Cv[hf * 4 + 3] = c4.w;
            }
            float dyv[4] = {0.f, 0.f, 0.f, 0.f};
            if (MODE != SSD_FWD) {
                const float4 d4 = *reinterpret_cast<const float4 *>(sdy + k * PT + prow * 4);
                dyv[0] = d4.x, dyv[1] = d4.y, dyv[2] = d4.z, dyv[3] = d4.w;
            }
            float rs[SSD_RP], cs[SSD_RN]; // row sums (over n), column sums (over p, i in order)
#pragma unroll
            for (int j = 0; j < SSD_RN; j++) cs[j] = 0.f;
#pragma unroll
            for (int i = 0; i < SSD_RP; i++) {
                const float v = dl * xv[i];
                float r = 0.f;
                if (MODE == SSD_BWD_R) {
                    // u'[p] = (dh' B)[p] before this token's injection; dh_t = dh' + dy_t C_t;
                    // dB_t[n] = sum_p v[p] dh_t[p, n]; then dh' for t-1 = a_t dh_t
#pragma unroll
                    for (int j = 0; j < SSD_RN; j++) r = fmaf(Bv[j], st[i][j], r);
#pragma unroll
                    for (int j = 0; j < SSD_RN; j++) {
                        const float d = fmaf(dyv[i], Cv[j], st[i][j]);
                        cs[j] = fmaf(v, d, cs[j]);
                        st[i][j] = d * a;
                    }
                } else {
                    // forward: (h_{t-1} C_t)[p] first (backward only), then h_t, then
                    // y: (h_t C_t)[p], or dC_t[n] = sum_p dy[p] h_t[p, n]
                    if (MODE == SSD_BWD_F)
#pragma unroll
                        for (int j = 0; j < SSD_RN; j++) r = fmaf(Cv[j], st[i][j], r);
#pragma unroll
                    for (int j = 0; j < SSD_RN; j++) st[i][j] = fmaf(a, st[i][j], v * Bv[j]);
                    if (MODE == SSD_FWD)
#pragma unroll
                        for (int j = 0; j < SSD_RN; j++) r = fmaf(Cv[j], st[i][j], r);
                    if (MODE == SSD_BWD_F)
#pragma unroll
                        for (int j = 0; j < SSD_RN; j++) cs[j] = fmaf(dyv[i], st[i][j], cs[j]);
                }
                rs[i] = r;
            }
            { // rows: over the TN lanes (lane bits 0..LTN-1)
                constexpr int HS = LTN < 2 ? LTN : 2;
                const int base = xsum_scatter<SSD_RP, 0, LTN>(rs, lane);
                if ((nl & ((1 << (LTN - HS)) - 1)) == 0)
#pragma unroll
                    for (int i = 0; i < (SSD_RP >> HS); i++)
                        srow[k * PT + prow * 4 + base + i] = rs[i];
            }
            if (MODE != SSD_FWD) { // columns: over the WP rows of the warp (lane bits LTN..4)
                constexpr int NB = 5 - LTN, HS = NB < 3 ? NB : 3;
                const int base = xsum_scatter<SSD_RN, LTN, NB>(cs, lane);
                if (((lane >> LTN) & ((1 << (NB - HS)) - 1)) == 0)
#pragma unroll
                    for (int i = 0; i < (SSD_RN >> HS); i++) {
                        const int j = base + i;
                        scol[(k * g.NW + w) * NT + ((j >> 2) * TN + nl) * 4 + (j & 3)] = cs[i];
                    }
            }
        }
        // segment ends: the forward walk keeps h_{t1-1}; the reverse walk, now holding
        // dh'_{t1-1} (t1 = t0), forms this block's part of <h_{t1-1}, dh'_{t1-1}>
        const int t1 = REV ? t0 : t0 + kn, bd = t1 / SSD_KC - 1;
        const bool at_end = t1 % SSD_KC == 0 && t1 > 0 && t1 < g.T; // uniform over the block
        if (MODE == SSD_BWD_F && at_end)
#pragma unroll
            for (int i = 0; i < SSD_RP; i++)
#pragma unroll
                for (int j = 0; j < SSD_RN; j++)
                    ck[((size_t)bd * NS + i * SSD_RN + j) * nth] = st[i][j];
        if (REV && at_end) {
            float v = 0.f;
#pragma unroll
            for (int i = 0; i < SSD_RP; i++)
#pragma unroll
                for (int j = 0; j < SSD_RN; j++)
                    v = fmaf(st[i][j], ck[((size_t)bd * NS + i * SSD_RN + j) * nth], v);
            v = warp_sum(v);
            if (lane == 0) sred[w] = v;
        }
        __syncthreads();
        // the chunk's outputs, one warp a token (coalesced over p or n); the sums over p
        // are lane sums, then a butterfly
        for (int k = w; k < kn; k += g.NW) {
            const size_t r = (size_t)b * g.T + t0 + k, ox = (r * g.H + h) * g.P;
            const float *rx = sx + k * PT, *rdy = sdy + k * PT, *rrow = srow + k * PT;
            if (MODE == SSD_FWD)
                for (int i = lane; i < PT && p0 + i < g.P; i += 32)
                    q.y[ox + p0 + i] = rrow[i] + Dh * rx[i];
            else
                for (int n = lane; n < g.N; n += 32) { // dB (reverse) or dC: the warps in order
                    float v = 0.f;
                    for (int ww = 0; ww < g.NW; ww++) v += scol[(k * g.NW + ww) * NT + n];
                    (REV ? q.dBp : q.dCp)[(part + t0 + k) * g.N + n] = v;
                }
            if (REV) {
                float cb = 0.f, v1 = 0.f, v2 = 0.f, v3 = 0.f; // u = u' + dy (C_t.B_t) = (dh_t B_t)
                for (int n = lane; n < g.N; n += 32) cb += sC[k * NT + n] * sB[k * NT + n];
                cb = warp_sum(cb);
                for (int i = lane; i < PT; i += 32) {
                    float u = rrow[i] + rdy[i] * cb;
                    if (p0 + i < g.P) q.dx[ox + p0 + i] += Dh * rdy[i] + sdl[k] * u;
                    v1 += rx[i] * u, v2 += rx[i] * rrow[i], v3 += rx[i] * rdy[i];
                }
                v1 = warp_sum(v1), v2 = warp_sum(v2), v3 = warp_sum(v3);
                if (lane == 0)
                    q.s2[part + t0 + k] = v1, q.s2d[part + t0 + k] = v2, q.s3[part + t0 + k] = v3;
            } else if (MODE == SSD_BWD_F) {
                float v1 = 0.f;
                for (int i = lane; i < PT; i += 32) v1 += rdy[i] * rrow[i];
                v1 = warp_sum(v1);
                if (lane == 0) q.s1[part + t0 + k] = v1;
            }
        }
        if (REV && at_end && tid == 0) {
            float v = 0.f;
            for (int ww = 0; ww < g.NW; ww++) v += sred[ww];
            q.beta[blk * nbd + bd] = v;
        }
        __syncthreads(); // the next chunk overwrites the staged arrays
    }
}

// grid (H * nptile, B); one walk (MODE) per block
template <int TN, int MODE>
__global__ void __launch_bounds__(SSD_MAX_THREADS) ssd_scan_kernel(SsdGeom g, SsdPtrs q) {
    extern __shared__ __align__(16) float ssd_sm[];
    ssd_walk<TN, MODE>(g, q, ssd_sm);
}

// dBm, dCm [B, T, G, N] += the partials of the group's heads and channel tiles, in order
__global__ void ssd_bc_final_kernel(float *dBm, float *dCm, const float *dBp, const float *dCp,
                                    SsdGeom g) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x; // ((b*T + t)*G + grp)*N + n
    if (i >= (long)g.B * g.T * g.G * g.N) return;
    int n = (int)(i % g.N), grp = (int)(i / g.N % g.G), t = (int)(i / ((long)g.N * g.G) % g.T);
    int b = (int)(i / ((long)g.N * g.G * g.T));
    float vb = 0.f, vc = 0.f;
    for (int hh = grp * g.hpg; hh < (grp + 1) * g.hpg; hh++)
        for (int pt = 0; pt < g.nptile; pt++) {
            size_t o = ((((size_t)b * g.H + hh) * g.nptile + pt) * g.T + t) * g.N + n;
            vb += dBp[o], vc += dCp[o];
        }
    dBm[i] += vb, dCm[i] += vc;
}

// One warp per (b, head, segment [c KC, (c+1) KC) of the tokens):
// dG_t = a_t s1_t - dt_t s2d_t (each summed over the channel tiles), dg_t = beta_c +
// sum_{r >= t} dG_r in the segment (lane runs, then a suffix scan over the lanes: fixed
// shape), ddt += s2_t + A dg_t; dA_part = sum_t dt_t dg_t, dD_part = sum_t s3_t.
__global__ void ssd_head_final_kernel(float *ddt, float *dA_part, float *dD_part, const float *dt,
                                      const float *A_log, SsdPtrs q, SsdGeom g) {
    const int nseg = cdiv(g.T, SSD_KC), lane = threadIdx.x & 31;
    const int wid = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (wid >= g.B * g.H * nseg) return; // whole warps
    const int bh = wid / nseg, c = wid % nseg, b = bh / g.H, h = bh % g.H, per = cdiv(SSD_KC, 32);
    const int t0 = min(g.T, c * SSD_KC + lane * per), t1 = min(min(g.T, (c + 1) * SSD_KC), t0 + per);
    const float A = -expf(A_log[h]);
    const size_t row = (size_t)bh * g.nptile * g.T;
    float run = 0.f;
    for (int t = t1 - 1; t >= t0; t--) { // same order as the walk below
        float dl = dt[((size_t)b * g.T + t) * g.H + h], s1 = 0.f, s2d = 0.f;
        for (int pt = 0; pt < g.nptile; pt++)
            s1 += q.s1[row + pt * g.T + t], s2d += q.s2d[row + pt * g.T + t];
        run += expf(dl * A) * s1 - dl * s2d;
    }
    float incl = run; // sum over lanes >= this one
    for (int o = 1; o < 32; o <<= 1) {
        float v = __shfl_down_sync(0xffffffffu, incl, o);
        if (lane + o < 32) incl += v;
    }
    float dg = __shfl_down_sync(0xffffffffu, incl, 1), beta = 0.f, dA = 0.f, dD = 0.f;
    if ((c + 1) * SSD_KC < g.T) // the pairs crossing the segment's end
        for (int pt = 0; pt < g.nptile; pt++)
            beta += q.beta[((size_t)bh * g.nptile + pt) * (nseg - 1) + c];
    dg = lane == 31 ? beta : dg + beta;
    for (int t = t1 - 1; t >= t0; t--) {
        float dl = dt[((size_t)b * g.T + t) * g.H + h], s1 = 0.f, s2d = 0.f, s2 = 0.f, s3 = 0.f;
        for (int pt = 0; pt < g.nptile; pt++) {
            size_t o = row + pt * g.T + t;
            s1 += q.s1[o], s2d += q.s2d[o], s2 += q.s2[o], s3 += q.s3[o];
        }
        dg += expf(dl * A) * s1 - dl * s2d;
        ddt[((size_t)b * g.T + t) * g.H + h] += s2 + A * dg;
        dA += dl * dg, dD += s3;
    }
    dA = warp_sum(dA), dD = warp_sum(dD);
    if (lane == 0) dA_part[wid] = dA, dD_part[wid] = dD;
}

SsdGeom ssd_geom(const SsdArgs *a) {
    state_size_check(a->N);
    SsdGeom g;
    g.B = a->B, g.T = a->T, g.H = a->H, g.P = a->P, g.G = a->G, g.N = a->N, g.hpg = a->H / a->G;
    int tn = 1;
    while (tn * SSD_RN < g.N) tn <<= 1;
    g.TN = tn, g.NT = tn * SSD_RN;
    int rows = 32 / tn * SSD_RP; // channels a warp
    g.NW = min(SSD_MAX_THREADS / 32, cdiv(g.P, rows));
    g.PT = g.NW * rows;
    g.nptile = cdiv(g.P, g.PT);
    g.KT = SSD_KT;
    while (g.KT > 1 && ssd_smem(g, true).total * sizeof(float) > SSD_SMEM_MAX) g.KT /= 2;
    return g;
}

template <int MODE>
void ssd_launch(const SsdGeom &g, const SsdPtrs &q) {
    dim3 grid(g.H * g.nptile, g.B);
    int threads = g.NW * 32;
    size_t smem = ssd_smem(g, MODE != SSD_FWD).total * sizeof(float);
    switch (g.TN) {
    case 1: ssd_scan_kernel<1, MODE><<<grid, threads, smem, cu.stream>>>(g, q); break;
    case 2: ssd_scan_kernel<2, MODE><<<grid, threads, smem, cu.stream>>>(g, q); break;
    case 4: ssd_scan_kernel<4, MODE><<<grid, threads, smem, cu.stream>>>(g, q); break;
    case 8: ssd_scan_kernel<8, MODE><<<grid, threads, smem, cu.stream>>>(g, q); break;
    default: ssd_scan_kernel<16, MODE><<<grid, threads, smem, cu.stream>>>(g, q); break;
    }
    CKL();
}

void ssd_forward(const SsdArgs *a) {
    SsdGeom g = ssd_geom(a);
    if ((long)a->B * a->T * a->H * a->P == 0) return;
    SsdPtrs q = {};
    q.x = a->x, q.dt = a->dt, q.A_log = a->A_log, q.Bm = a->Bm, q.Cm = a->Cm, q.D = a->D, q.y = a->y;
    ssd_launch<SSD_FWD>(g, q);
}

// One scratch allocation, carved: dB/dC partials, the per-token sums, the segment-end
// states and products, dA/dD per (b, head, segment). The forward walk, then the reverse
// walk (it reads the forward walk's segment-end states); then dBm, dCm over heads and
// tiles, ddt per (b, head, segment), dA_log and dD over (b, segment).
void ssd_backward(const SsdArgs *a) {
    SsdGeom g = ssd_geom(a);
    if ((long)a->B * a->T * a->H * a->P == 0) return;
    SsdPtrs q = {};
    q.x = a->x, q.dt = a->dt, q.A_log = a->A_log, q.Bm = a->Bm, q.Cm = a->Cm, q.D = a->D;
    q.dy = a->dy, q.dx = a->dx;
    const int nseg = cdiv(g.T, SSD_KC);
    size_t nblk = (size_t)g.B * g.H * g.nptile, n_s = nblk * g.T, n_bc = n_s * g.N;
    size_t n_ck = nblk * (nseg - 1) * SSD_RP * SSD_RN * g.NW * 32, n_beta = nblk * (nseg - 1);
    size_t n_part = (size_t)g.B * g.H * nseg;
    float *s = cu_scratch(2 * n_bc + 4 * n_s + n_ck + n_beta + 2 * n_part);
    q.dBp = s, q.dCp = s + n_bc, q.s1 = s + 2 * n_bc, q.s2 = q.s1 + n_s, q.s2d = q.s2 + n_s;
    q.s3 = q.s2d + n_s, q.ck = q.s3 + n_s, q.beta = q.ck + n_ck;
    float *dA_part = q.beta + n_beta, *dD_part = dA_part + n_part;
    ssd_launch<SSD_BWD_F>(g, q);
    ssd_launch<SSD_BWD_R>(g, q);
    long nbc = (long)g.B * g.T * g.G * g.N;
    ssd_bc_final_kernel<<<cu_blocks(nbc, 256), 256, 0, cu.stream>>>(a->dBm, a->dCm, q.dBp, q.dCp, g);
    CKL();
    ssd_head_final_kernel<<<cu_blocks((long)n_part * 32, 128), 128, 0, cu.stream>>>(
        a->ddt, dA_part, dD_part, a->dt, a->A_log, q, g);
    CKL();
    // dA_part, dD_part: [B, H, nseg]; output h sums b and segments
    long ld = (long)g.H * nseg;
    scan_param_kernel<<<g.H, 128, 0, cu.stream>>>(a->dA_log, dA_part, a->A_log, g.B, ld, nseg);
    CKL();
    scan_param_kernel<<<g.H, 128, 0, cu.stream>>>(a->dD, dD_part, nullptr, g.B, ld, nseg);
    CKL();
}

const ScanOps cuda_scan_ops = {
    softplus_forward, softplus_backward, sscan_forward, sscan_backward, ssd_forward, ssd_backward,
};

} // namespace

void cu_fill_scan(Ops *o) { o->scan = &cuda_scan_ops; }
