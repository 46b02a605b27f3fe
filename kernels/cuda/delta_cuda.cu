// The delta-rule / MesaNet op group (kernels/ops_delta.h) on CUDA, mirroring the CPU
// reference kernels/cpu/delta_cpu.c line by line (baselines.md §1.2, §6-§9).
//
// Precision: like the CPU reference, every kernel computes in double and rounds to
// float on store (states, checkpoints excepted: they are float in both). The
// recurrent cores are latency-bound (one block per (batch, head), sequential over
// T), so double costs little and keeps the fp32 parity with the CPU at rounding level.
//
// Layouts (no float atomics, fixed summation orders, so runs are bit-identical):
//   elementwise ops      one thread per element (l2norm: one thread per row)
//   decay_backward       token-chunk partial sums per channel, then one block sums
//                        the chunks in order (dt_bias) and the channels of a head (A_log)
//   delta_forward        one block per (b, h); thread j owns column j of the K x V state
//                        (shared, double); checkpoint every DELTA_CKPT steps as the CPU
//   delta_backward       one block per (b, h); chunk states recomputed from the
//                        checkpoint into global scratch (double); reverse recurrence
//                        (§6.4(a), §8.4(a)) with G = dL/dS in shared memory; column
//                        threads do the column sums, row threads the row sums
//   mesa_forward/backward K <= MESA_KT: parallel in time (see "time-parallel path"):
//                        states per token by an elementwise recurrence into scratch, then
//                        one thread per token for each solve, then (backward) one warp per
//                        (b, h) for the reverse accumulation of the state gradients.
//                        Wider heads: one block per (b, h); Hkk, Hkv (and the gradients
//                        Gkk, Gkv) in shared memory; CG or Cholesky solve (§9.3) by the
//                        whole block; implicit backward (§9.4). dlam by per-(b,h) partials
//                        reduced over b in a second kernel.
#include "cuda_common.cuh"

#include "../ops_delta.h"

__device__ __forceinline__ double d_sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
// softplus with the FLA/Mamba threshold (x > 20: x)
__device__ __forceinline__ double d_softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

static int roundup32(int n) { return (n + 31) / 32 * 32; }

// Dynamic shared memory of `bytes` for kernel fn: dies with a message when the GPU
// cannot give it; opts in above the 48 KB default (once per size: never during capture,
// since the first step runs uncaptured with the same shapes).
static void smem_check(const void *fn, size_t bytes, size_t *optin_set, const char *op, int K,
                       int V) {
    static int optin = 0;
    if (!optin) CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cu.device));
    if (bytes > (size_t)optin) {
        char why[256];
        snprintf(why, sizeof why,
                 "head dims K=%d V=%d need %zu bytes of shared memory per block, this GPU allows %d "
                 "(use smaller heads: more model.heads)", K, V, bytes, optin);
        cu_die(__FILE__, __LINE__, op, why);
    }
    if (bytes > 48 * 1024 && bytes > *optin_set) {
        CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        *optin_set = bytes;
    }
}

// ---- L2 norm (§1.2): one thread per row, the CPU's summation order -----------------

__global__ void l2norm_fwd_kernel(float *y, float *rinv, const float *x, int N, int D, float eps) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *xr = x + (size_t)n * D;
    double ss = 0;
    for (int i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
    double r = 1.0 / sqrt(ss + eps);
    rinv[n] = (float)r;
    for (int i = 0; i < D; i++) y[(size_t)n * D + i] = (float)(xr[i] * r);
}
static void l2norm_forward(float *y, float *rinv, const float *x, int N, int D, float eps) {
    if (N <= 0) return;
    l2norm_fwd_kernel<<<cu_blocks(N, 128), 128, 0, cu.stream>>>(y, rinv, x, N, D, eps);
    CKL();
}

// dx += r dy - r (dy.y) y
__global__ void l2norm_bwd_kernel(float *dx, const float *dy, const float *y, const float *rinv,
                                  int N, int D) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *g = dy + (size_t)n * D, *yr = y + (size_t)n * D;
    double dot = 0;
    for (int i = 0; i < D; i++) dot += (double)g[i] * yr[i];
    for (int i = 0; i < D; i++) dx[(size_t)n * D + i] += (float)(rinv[n] * (g[i] - dot * yr[i]));
}
static void l2norm_backward(float *dx, const float *dy, const float *y, const float *rinv, int N,
                            int D) {
    if (N <= 0) return;
    l2norm_bwd_kernel<<<cu_blocks(N, 128), 128, 0, cu.stream>>>(dx, dy, y, rinv, N, D);
    CKL();
}

// ---- elementwise maps, gates --------------------------------------------------------

__global__ void map_fwd_kernel(float *y, const float *x, long n, int kind, float scale, float shift) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v = x[i];
    if (kind == DELTA_MAP_SIGMOID) y[i] = (float)(scale * d_sigm(v));
    else if (kind == DELTA_MAP_SOFTPLUS) y[i] = (float)(d_softplus(v) + shift);
    else y[i] = (float)(-d_softplus(-v));
}
static void map_forward(float *y, const float *x, long n, int kind, float scale, float shift) {
    if (n <= 0) return;
    map_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, n, kind, scale, shift);
    CKL();
}

__global__ void map_bwd_kernel(float *dx, const float *dy, const float *x, long n, int kind,
                               float scale) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v = x[i], s = d_sigm(v), d;
    if (kind == DELTA_MAP_SIGMOID) d = scale * s * (1 - s);
    else if (kind == DELTA_MAP_SOFTPLUS) d = v > 20 ? 1 : s;
    else d = -v > 20 ? 0 : 1 - s; // d/dx logsigmoid(x) = sigmoid(-x)
    dx[i] += (float)(dy[i] * d);
}
static void map_backward(float *dx, const float *dy, const float *x, long n, int kind, float scale) {
    if (n <= 0) return;
    map_bwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dx, dy, x, n, kind, scale);
    CKL();
}

// g of one element (§7.1, §8.1): -e^{A_log} softplus(a + b), or with lb < 0 the KDA safe
// gate lb * sigmoid(e^{A_log} (a + b))
__device__ __forceinline__ double decay_value(double a, double A_log, double bias, double lb) {
    double z = a + bias;
    return lb < 0 ? lb * d_sigm(exp(A_log) * z) : -exp(A_log) * d_softplus(z);
}
// dg/dz (z = a + bias) and dg/dA_log of one element (§7.4 step 7, §8.4 step 7)
__device__ __forceinline__ void decay_grads(double a, double A_log, double bias, double lb,
                                            double *dz, double *dA) {
    double z = a + bias, eA = exp(A_log);
    if (lb < 0) {
        double s = d_sigm(eA * z);
        *dz = lb * s * (1 - s) * eA;
        *dA = lb * s * (1 - s) * eA * z;
    } else {
        *dz = -eA * (z > 20 ? 1 : d_sigm(z));
        *dA = -eA * d_softplus(z); // = g
    }
}

// g, a [N, H*Dg]; A_log [H]; dt_bias [H*Dg]
__global__ void decay_fwd_kernel(float *g, const float *a, const float *A_log, const float *dt_bias,
                                 long n, int HD, int Dg, float lb) {
    long o = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (o >= n) return;
    int j = (int)(o % HD);
    g[o] = (float)decay_value(a[o], A_log[j / Dg], dt_bias[j], lb);
}
static void decay_forward(float *g, const float *a, const float *A_log, const float *dt_bias, int N,
                          int H, int Dg, float lb) {
    long n = (long)N * H * Dg;
    if (n <= 0) return;
    decay_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(g, a, A_log, dt_bias, n, H * Dg, Dg, lb);
    CKL();
}

// da += dz dg, elementwise
__global__ void decay_da_kernel(float *da, const float *dg, const float *a, const float *A_log,
                                const float *dt_bias, long n, int HD, int Dg, float lb) {
    long o = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (o >= n) return;
    int j = (int)(o % HD);
    double dz, dA;
    decay_grads(a[o], A_log[j / Dg], dt_bias[j], lb, &dz, &dA);
    da[o] += (float)(dz * dg[o]);
}

#define DECAY_ROWS 256 // tokens per partial sum of the parameter gradients

// block c sums tokens [c*DECAY_ROWS, ...) per channel j: part[c][0][j] = sum dz dg,
// part[c][1][j] = sum dA dg (token order, as the CPU)
__global__ void decay_part_kernel(double *part, const float *dg, const float *a, const float *A_log,
                                  const float *dt_bias, int N, int HD, int Dg, float lb) {
    int c = blockIdx.x, n0 = c * DECAY_ROWS, n1 = min(N, n0 + DECAY_ROWS);
    for (int j = threadIdx.x; j < HD; j += blockDim.x) {
        double sb = 0, sa = 0;
        for (int n = n0; n < n1; n++) {
            size_t o = (size_t)n * HD + j;
            double dz, dA;
            decay_grads(a[o], A_log[j / Dg], dt_bias[j], lb, &dz, &dA);
            sb += dz * dg[o], sa += dA * dg[o];
        }
        part[(size_t)c * 2 * HD + j] = sb;
        part[(size_t)c * 2 * HD + HD + j] = sa;
    }
}

// one block: chunks summed in order per channel (ddt_bias), then channels per head (dA_log)
__global__ void decay_final_kernel(float *dA_log, float *ddt_bias, const double *part, double *sA,
                                   int nc, int H, int Dg) {
    int HD = H * Dg;
    for (int j = threadIdx.x; j < HD; j += blockDim.x) {
        double sb = 0, sa = 0;
        for (int c = 0; c < nc; c++) sb += part[(size_t)c * 2 * HD + j], sa += part[(size_t)c * 2 * HD + HD + j];
        ddt_bias[j] += (float)sb;
        sA[j] = sa;
    }
    __syncthreads();
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        double s = 0;
        for (int i = 0; i < Dg; i++) s += sA[h * Dg + i];
        dA_log[h] += (float)s;
    }
}

static void decay_backward(float *da, float *dA_log, float *ddt_bias, const float *dg,
                           const float *a, const float *A_log, const float *dt_bias, int N, int H,
                           int Dg, float lb) {
    int HD = H * Dg;
    long n = (long)N * HD;
    if (n <= 0) return;
    decay_da_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(da, dg, a, A_log, dt_bias, n, HD, Dg, lb);
    CKL();
    int nc = (N + DECAY_ROWS - 1) / DECAY_ROWS;
    // one scratch: partials [nc][2][HD] and per-channel A_log sums [HD], doubles
    double *part = (double *)cu_scratch(2 * ((size_t)nc * 2 * HD + HD));
    double *sA = part + (size_t)nc * 2 * HD;
    int th = HD < 256 ? roundup32(HD) : 256;
    decay_part_kernel<<<nc, th, 0, cu.stream>>>(part, dg, a, A_log, dt_bias, N, HD, Dg, lb);
    CKL();
    decay_final_kernel<<<1, 256, 0, cu.stream>>>(dA_log, ddt_bias, part, sA, nc, H, Dg);
    CKL();
}

__global__ void gate_mul_fwd_kernel(float *y, const float *x, const float *z, long n, int act) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    double s = d_sigm(z[i]);
    y[i] = (float)(x[i] * (act == DELTA_ACT_SILU ? z[i] * s : s));
}
static void gate_mul_forward(float *y, const float *x, const float *z, long n, int act) {
    if (n <= 0) return;
    gate_mul_fwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, z, n, act);
    CKL();
}

__global__ void gate_mul_bwd_kernel(float *dx, float *dz, const float *dy, const float *x,
                                    const float *z, long n, int act) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    double s = d_sigm(z[i]);
    double a = act == DELTA_ACT_SILU ? z[i] * s : s;
    double da = act == DELTA_ACT_SILU ? s * (1 + z[i] * (1 - s)) : s * (1 - s);
    dx[i] += (float)(dy[i] * a);
    dz[i] += (float)(dy[i] * x[i] * da);
}
static void gate_mul_backward(float *dx, float *dz, const float *dy, const float *x, const float *z,
                              long n, int act) {
    if (n <= 0) return;
    gate_mul_bwd_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(dx, dz, dy, x, z, n, act);
    CKL();
}

// ---- gated delta rule (§6.2, §7.2, §8.2; backward §6.4(a), §8.4(a)) ----------------------

// decay alpha_i of head row hi (= (b*T + t)*H + h): 1 without gate
__device__ __forceinline__ double delta_alpha(const DeltaArgs &a, size_t hi, int i) {
    if (a.gate == DELTA_GATE_NONE) return 1;
    if (a.gate == DELTA_GATE_SCALAR) return exp((double)a.g[hi]);
    return exp((double)a.g[hi * a.K + i]);
}

// One step of column j of the state [K, V] (row-major, Sp and Sn may alias):
//   S~ = Diag(alpha) S_{t-1};  u_j = v_j - S~[:,j].k;  S_t[:,j] = S~[:,j] + k beta u_j
// Returns u_j (before beta). Shared by the forward and the backward's recompute, so both
// produce the same states.
__device__ __forceinline__ double delta_col_step(const double *Sp, double *Sn, int j, int K, int V,
                                                 const double *k, const double *al, double vj,
                                                 double beta) {
    double u = vj;
    for (int i = 0; i < K; i++) u -= (al[i] * Sp[i * V + j]) * k[i];
    for (int i = 0; i < K; i++) Sn[i * V + j] = al[i] * Sp[i * V + j] + k[i] * beta * u;
    return u;
}

// grid B*H (block = b*H + h), threads >= max(K, V): thread j < V owns column j of S.
// shared: S [K*V], k [K], q [K], alpha [K] (doubles)
__global__ void delta_fwd_kernel(DeltaArgs a) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, H = a.H, T = a.T, tid = threadIdx.x;
    const int b = blockIdx.x / H, h = blockIdx.x % H, nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    const size_t SL = (size_t)K * V;
    double *S = sm, *kk = S + SL, *qq = kk + K, *al = qq + K;
    float *ck = a.ckpt + (size_t)blockIdx.x * nck * SL;
    const double sc = a.scale;
    if (tid < V)
        for (int i = 0; i < K; i++) S[i * V + tid] = 0;
    for (int t = 0; t < T; t++) {
        size_t hi = ((size_t)b * T + t) * H + h;
        if (tid < K) {
            kk[tid] = a.k[hi * K + tid];
            qq[tid] = a.q[hi * K + tid];
            al[tid] = delta_alpha(a, hi, tid);
        }
        __syncthreads();
        if (tid < V) {
            const int j = tid;
            if (t % DELTA_CKPT == 0) // state before step t, as the CPU
                for (int i = 0; i < K; i++) ck[(size_t)(t / DELTA_CKPT) * SL + i * V + j] = (float)S[i * V + j];
            delta_col_step(S, S, j, K, V, kk, al, (double)a.v[hi * V + j], (double)a.beta[hi]);
            double s = 0;
            for (int i = 0; i < K; i++) s += S[i * V + j] * qq[i];
            a.o[hi * V + j] = (float)(sc * s);
        }
        __syncthreads();
    }
}

// grid B*H, threads >= max(K, V). shared: G = dL/dS [K, V+1 (padded)], k, q, alpha,
// dg_i [K]; dO, u, d(beta u), du [V]. scratch per block: the chunk's states
// [DELTA_CKPT+1][K*V] and u per step [DELTA_CKPT][V] (doubles).
__global__ void delta_bwd_kernel(DeltaArgs a, double *scr) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, H = a.H, T = a.T, tid = threadIdx.x, ldg = V + 1;
    const int b = blockIdx.x / H, h = blockIdx.x % H, nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    const size_t SL = (size_t)K * V;
    double *G = sm, *kk = G + (size_t)K * ldg, *qq = kk + K, *al = qq + K, *dgs = al + K;
    double *dO = dgs + K, *uu = dO + V, *dd = uu + V, *du = dd + V;
    double *St = scr + (size_t)blockIdx.x * ((DELTA_CKPT + 1) * SL + (size_t)DELTA_CKPT * V);
    double *U = St + (DELTA_CKPT + 1) * SL;
    const float *ck = a.ckpt + (size_t)blockIdx.x * nck * SL;
    const double sc = a.scale;
    for (size_t e = tid; e < (size_t)K * ldg; e += blockDim.x) G[e] = 0; // dL/dS_T = 0
    for (int c = nck - 1; c >= 0; c--) {
        const int t0 = c * DELTA_CKPT, t1 = t0 + DELTA_CKPT < T ? t0 + DELTA_CKPT : T;
        __syncthreads();
        // recompute the chunk's states S_{t0..t1} from the checkpoint (column j by thread j)
        if (tid < V)
            for (int i = 0; i < K; i++) St[i * V + tid] = ck[(size_t)c * SL + i * V + tid];
        for (int t = t0; t < t1; t++) {
            size_t hi = ((size_t)b * T + t) * H + h;
            if (tid < K) kk[tid] = a.k[hi * K + tid], al[tid] = delta_alpha(a, hi, tid);
            __syncthreads();
            if (tid < V)
                U[(size_t)(t - t0) * V + tid] =
                    delta_col_step(St + (t - t0) * SL, St + (t - t0 + 1) * SL, tid, K, V, kk, al,
                                   (double)a.v[hi * V + tid], (double)a.beta[hi]);
            __syncthreads();
        }
        // reverse recurrence over the chunk
        for (int t = t1 - 1; t >= t0; t--) {
            size_t hi = ((size_t)b * T + t) * H + h;
            const double *Sp = St + (t - t0) * SL, *Sc = Sp + SL; // S_{t-1}, S_t
            const double beta = a.beta[hi];
            if (tid < K) {
                kk[tid] = a.k[hi * K + tid];
                qq[tid] = a.q[hi * K + tid];
                al[tid] = delta_alpha(a, hi, tid);
            }
            if (tid < V) dO[tid] = a.dout[hi * V + tid], uu[tid] = U[(size_t)(t - t0) * V + tid];
            __syncthreads();
            // readout o = S_t^T (s q): G += s q dO^T (column j); then d(beta u)_j = G[:,j].k
            if (tid < V) {
                const int j = tid;
                double s = 0;
                for (int i = 0; i < K; i++) {
                    G[i * ldg + j] += sc * qq[i] * dO[j];
                    s += G[i * ldg + j] * kk[i];
                }
                dd[j] = s, du[j] = beta * s;
                a.dv[hi * V + j] += (float)du[j];
            }
            // dq = s S_t dO (row i)
            if (tid < K) {
                const int i = tid;
                double s = 0;
                for (int j = 0; j < V; j++) s += Sc[i * V + j] * dO[j];
                a.dq[hi * K + i] += (float)(sc * s);
            }
            __syncthreads();
            if (tid == 0) {
                double db = 0;
                for (int j = 0; j < V; j++) db += dd[j] * uu[j];
                a.dbeta[hi] += (float)db;
            }
            // row i: dk = G beta u - Diag(alpha) S_{t-1} du; dS~ = G - k du^T;
            // dg_i = alpha_i <dS~_i, S_{t-1,i}>; G <- Diag(alpha) dS~ (= dL/dS_{t-1})
            if (tid < K) {
                const int i = tid;
                double s = 0, s2 = 0;
                for (int j = 0; j < V; j++)
                    s += G[i * ldg + j] * beta * uu[j] - al[i] * Sp[i * V + j] * du[j];
                a.dk[hi * K + i] += (float)s;
                for (int j = 0; j < V; j++) {
                    double v = G[i * ldg + j] - kk[i] * du[j];
                    s2 += v * Sp[i * V + j];
                    G[i * ldg + j] = al[i] * v;
                }
                s2 *= al[i];
                if (a.gate == DELTA_GATE_CHANNEL) a.dg[hi * K + i] += (float)s2;
                dgs[i] = s2;
            }
            __syncthreads();
            if (tid == 0 && a.gate == DELTA_GATE_SCALAR) {
                double s = 0;
                for (int i = 0; i < K; i++) s += dgs[i];
                a.dg[hi] += (float)s;
            }
        }
    }
}

static void delta_check(const DeltaArgs *a, const char *op) {
    if (a->K < 1 || a->V < 1 || a->K > 1024 || a->V > 1024) {
        char why[128];
        snprintf(why, sizeof why, "head dims K=%d V=%d out of range 1..1024", a->K, a->V);
        cu_die(__FILE__, __LINE__, op, why);
    }
}

static void delta_forward(const DeltaArgs *a) {
    if (a->B <= 0 || a->H <= 0 || a->T <= 0) return;
    delta_check(a, "delta_forward");
    static size_t set = 0;
    size_t smem = sizeof(double) * ((size_t)a->K * a->V + 3 * (size_t)a->K);
    smem_check((const void *)delta_fwd_kernel, smem, &set, "delta_forward", a->K, a->V);
    int nt = roundup32(a->K > a->V ? a->K : a->V);
    delta_fwd_kernel<<<a->B * a->H, nt, smem, cu.stream>>>(*a);
    CKL();
}

static void delta_backward(const DeltaArgs *a) {
    if (a->B <= 0 || a->H <= 0 || a->T <= 0) return;
    delta_check(a, "delta_backward");
    static size_t set = 0;
    size_t K = a->K, V = a->V;
    size_t smem = sizeof(double) * (K * (V + 1) + 4 * K + 4 * V);
    smem_check((const void *)delta_bwd_kernel, smem, &set, "delta_backward", a->K, a->V);
    size_t per = (DELTA_CKPT + 1) * K * V + DELTA_CKPT * V; // doubles per (b, h)
    double *scr = (double *)cu_scratch(2 * per * (size_t)a->B * a->H);
    int nt = roundup32(a->K > a->V ? a->K : a->V);
    delta_bwd_kernel<<<a->B * a->H, nt, smem, cu.stream>>>(*a, scr);
    CKL();
}

// ---- MesaNet (§9.2-§9.4) ------------------------------------------------------------------

#define MESA_THREADS 128

// sum over lanes 0..d-1 of v in lane order, in every lane: the order of the CPU's loop
__device__ __forceinline__ double lane_sum_ordered(double v, int d) {
    double s = 0;
    for (int i = 0; i < d; i++) s += __shfl_sync(0xffffffffu, v, i);
    return s;
}

// The CG of mesa_solve_dev for d <= 32 on warp 0 alone: lane i holds x_i, r_i, p_i, z_i
// in registers, p_j reaches the matrix product by shuffles, and every dot product is
// summed in index order (lane_sum_ordered), so each step computes what the block
// version computes, without its five block barriers a step. x is written at the end.
__device__ void mesa_cg_warp(const double *A, int lda, const double *lam, const double *b,
                             double *x, int d, int steps, double eps) {
    if (threadIdx.x >= 32) return;
    const int i = threadIdx.x;
    const bool on = i < d;
    const double li = on ? lam[i] : 0;
    double xi = 0, ri = on ? b[i] : 0, pi = ri;
    double rr = lane_sum_ordered(ri * ri, d);
    for (int it = 0; it < steps && rr > 0; it++) {
        double zi = li * pi;
        for (int j = 0; j < d; j++) {
            const double pj = __shfl_sync(0xffffffffu, pi, j);
            if (on) zi += A[i * lda + j] * pj;
        }
        const double al = rr / (lane_sum_ordered(pi * zi, d) + eps);
        xi += al * pi, ri -= al * zi;
        const double nd = lane_sum_ordered(ri * ri, d), bt = nd / (rr + eps);
        rr = nd;
        pi = ri + bt * pi;
    }
    if (on) x[i] = xi;
}

// x = (A + Diag(lam))^{-1} b (§9.3), run by every thread of the block (it synchronises).
// A [d x d] with row stride lda (shared or global); lam, b, x, r, p, z [d], L [d x (d+1)],
// sc [4] in shared memory. steps == 0: exact Cholesky solve (column by column, each
// entry with the CPU's formula and order); else steps of CG from x0 = 0 with eps in both
// denominators, stopping early only on an exactly zero residual, as the CPU (for
// d <= 32 on one warp: mesa_cg_warp).
__device__ void mesa_solve_dev(const double *A, int lda, const double *lam, const double *b,
                               double *x, int d, int steps, double eps, double *L, double *r,
                               double *p, double *z, double *sc) {
    const int tid = threadIdx.x, nt = blockDim.x, ldl = d + 1;
    __syncthreads();
    if (steps == 0) {
        // A + Diag(lam) = L L^T
        for (int j = 0; j < d; j++) {
            if (tid == 0) {
                double s = A[j * lda + j] + lam[j];
                for (int m = 0; m < j; m++) s -= L[j * ldl + m] * L[j * ldl + m];
                L[j * ldl + j] = sqrt(s > 1e-300 ? s : 1e-300);
            }
            __syncthreads();
            for (int i = j + 1 + tid; i < d; i += nt) {
                double s = A[i * lda + j];
                for (int m = 0; m < j; m++) s -= L[i * ldl + m] * L[j * ldl + m];
                L[i * ldl + j] = s / L[j * ldl + j];
            }
            __syncthreads();
        }
        // L y = b: row m subtracts L[m,i] y_i for i = 0, 1, ... (the CPU's order)
        for (int i = tid; i < d; i += nt) r[i] = b[i];
        __syncthreads();
        for (int i = 0; i < d; i++) {
            if (tid == 0) x[i] = r[i] / L[i * ldl + i];
            __syncthreads();
            for (int m = i + 1 + tid; m < d; m += nt) r[m] -= L[m * ldl + i] * x[i];
            __syncthreads();
        }
        // L^T x = y: row m subtracts L[i,m] x_i for i = d-1, d-2, ... (the CPU sums
        // ascending; the difference is double rounding)
        for (int i = tid; i < d; i += nt) r[i] = x[i];
        __syncthreads();
        for (int i = d - 1; i >= 0; i--) {
            if (tid == 0) x[i] = r[i] / L[i * ldl + i];
            __syncthreads();
            for (int m = tid; m < i; m += nt) r[m] -= L[i * ldl + m] * x[i];
            __syncthreads();
        }
        return;
    }
    if (d <= 32) { // one warp, no block barriers inside the steps
        mesa_cg_warp(A, lda, lam, b, x, d, steps, eps);
        __syncthreads();
        return;
    }
    for (int i = tid; i < d; i += nt) x[i] = 0, r[i] = b[i], p[i] = b[i];
    __syncthreads();
    if (tid == 0) {
        double de = 0;
        for (int i = 0; i < d; i++) de += b[i] * b[i];
        sc[0] = de;
    }
    __syncthreads();
    for (int it = 0; it < steps && sc[0] > 0; it++) {
        for (int i = tid; i < d; i += nt) {
            double s = lam[i] * p[i];
            for (int j = 0; j < d; j++) s += A[i * lda + j] * p[j];
            z[i] = s;
        }
        __syncthreads();
        if (tid == 0) {
            double pz = 0;
            for (int i = 0; i < d; i++) pz += p[i] * z[i];
            sc[1] = sc[0] / (pz + eps);
        }
        __syncthreads();
        const double al = sc[1];
        for (int i = tid; i < d; i += nt) x[i] += al * p[i], r[i] -= al * z[i];
        __syncthreads();
        if (tid == 0) {
            double nd = 0;
            for (int i = 0; i < d; i++) nd += r[i] * r[i];
            sc[2] = nd / (sc[0] + eps);
            sc[0] = nd;
        }
        __syncthreads();
        const double bt = sc[2];
        for (int i = tid; i < d; i += nt) p[i] = r[i] + bt * p[i];
        __syncthreads();
    }
}

// doubles of the solver's shared work: L (Cholesky only), r, p, z, sc
static size_t mesa_solve_smem(int K, int steps) {
    return (steps == 0 ? (size_t)K * (K + 1) : 0) + 3 * (size_t)K + 4;
}

// grid B*H, MESA_THREADS threads. shared: Hkk [K, K+1 (padded)], Hkv [K, V], lam, q, k, x
// [K], v [V], solver work. Checkpoint layout per state: Hkk [K*K] then Hkv [K*V] (the CPU's).
__global__ void mesa_fwd_kernel(MesaArgs a) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, H = a.H, T = a.T, tid = threadIdx.x, nt = blockDim.x, ldk = K + 1;
    const int b = blockIdx.x / H, h = blockIdx.x % H, nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    const size_t KK = (size_t)K * K, SL = KK + (size_t)K * V;
    double *Hkk = sm, *Hkv = Hkk + (size_t)K * ldk, *lam = Hkv + (size_t)K * V;
    double *qb = lam + K, *kk = qb + K, *x = kk + K, *vv = x + K;
    double *L = vv + V, *r = L + (a.cg_steps == 0 ? (size_t)K * ldk : 0), *p = r + K, *z = p + K, *sc = z + K;
    float *ck = a.ckpt + (size_t)blockIdx.x * nck * SL;
    for (size_t e = tid; e < (size_t)K * ldk; e += nt) Hkk[e] = 0;
    for (size_t e = tid; e < (size_t)K * V; e += nt) Hkv[e] = 0;
    for (int i = tid; i < K; i += nt) lam[i] = a.lam[(size_t)h * K + i];
    for (int t = 0; t < T; t++) {
        size_t hi = ((size_t)b * T + t) * H + h;
        const double gamma = a.g ? exp((double)a.g[hi]) : 1, beta = a.beta[hi];
        __syncthreads();
        for (int i = tid; i < K; i += nt) qb[i] = a.q[hi * K + i], kk[i] = a.k[hi * K + i];
        for (int j = tid; j < V; j += nt) vv[j] = a.v[hi * V + j];
        __syncthreads();
        // checkpoint (state before step t), then Hkk = gamma Hkk + beta k k^T, Hkv = gamma Hkv + beta k v^T
        const bool save = t % DELTA_CKPT == 0;
        float *cks = ck + (size_t)(t / DELTA_CKPT) * SL;
        for (size_t e = tid; e < SL; e += nt) {
            if (e < KK) {
                int i = (int)(e / K), j = (int)(e % K);
                double *s = Hkk + i * ldk + j;
                if (save) cks[e] = (float)*s;
                *s = gamma * *s + beta * kk[i] * kk[j];
            } else {
                size_t f = e - KK;
                int i = (int)(f / V), j = (int)(f % V);
                if (save) cks[e] = (float)Hkv[f];
                Hkv[f] = gamma * Hkv[f] + beta * kk[i] * vv[j];
            }
        }
        mesa_solve_dev(Hkk, ldk, lam, qb, x, K, a.cg_steps, a.cg_eps, L, r, p, z, sc);
        for (int i = tid; i < K; i += nt) a.qstar[hi * K + i] = (float)x[i];
        for (int j = tid; j < V; j += nt) { // o = Hkv^T q*
            double s = 0;
            for (int i = 0; i < K; i++) s += Hkv[(size_t)i * V + j] * x[i];
            a.o[hi * V + j] = (float)s;
        }
    }
}

// grid B*H, MESA_THREADS threads. shared: Gkk [K, K+1], Gkv [K, V+1] (the state gradients,
// padded), lam, k, q*, dq*, dq, dlam partial, row sums, dg row sums [K]; v, dO, column
// sums [V]; solver work. scratch per block: the chunk's states [DELTA_CKPT+1][K*K + K*V]
// (doubles). dlam_part [B*H*K]: this block's sum of -dq q* over its tokens.
__global__ void mesa_bwd_kernel(MesaArgs a, double *scr, double *dlam_part) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, H = a.H, T = a.T, tid = threadIdx.x, nt = blockDim.x;
    const int ldk = K + 1, ldv = V + 1;
    const int b = blockIdx.x / H, h = blockIdx.x % H, nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    const size_t KK = (size_t)K * K, KV = (size_t)K * V, SL = KK + KV;
    double *Gkk = sm, *Gkv = Gkk + (size_t)K * ldk, *lam = Gkv + (size_t)K * ldv;
    double *kk = lam + K, *qs = kk + K, *dqs = qs + K, *dq = dqs + K, *dl = dq + K;
    double *rowp = dl + K, *dgp = rowp + K, *vv = dgp + K, *dO = vv + V, *colp = dO + V;
    double *L = colp + V, *r = L + (a.cg_steps == 0 ? (size_t)K * ldk : 0), *p = r + K, *z = p + K, *sc = z + K;
    double *St = scr + (size_t)blockIdx.x * (DELTA_CKPT + 1) * SL;
    const float *ck = a.ckpt + (size_t)blockIdx.x * nck * SL;
    for (size_t e = tid; e < (size_t)K * ldk; e += nt) Gkk[e] = 0;
    for (size_t e = tid; e < (size_t)K * ldv; e += nt) Gkv[e] = 0;
    for (int i = tid; i < K; i += nt) lam[i] = a.lam[(size_t)h * K + i], dl[i] = 0;
    for (int c = nck - 1; c >= 0; c--) {
        const int t0 = c * DELTA_CKPT, t1 = t0 + DELTA_CKPT < T ? t0 + DELTA_CKPT : T;
        __syncthreads();
        for (size_t e = tid; e < SL; e += nt) St[e] = ck[(size_t)c * SL + e];
        // recompute the chunk's states (element e of step t by the same thread throughout)
        for (int t = t0; t < t1; t++) {
            size_t hi = ((size_t)b * T + t) * H + h;
            const double gamma = a.g ? exp((double)a.g[hi]) : 1, beta = a.beta[hi];
            __syncthreads();
            for (int i = tid; i < K; i += nt) kk[i] = a.k[hi * K + i];
            for (int j = tid; j < V; j += nt) vv[j] = a.v[hi * V + j];
            __syncthreads();
            const double *pv = St + (size_t)(t - t0) * SL;
            double *nx = St + (size_t)(t - t0 + 1) * SL;
            for (size_t e = tid; e < SL; e += nt) {
                if (e < KK) {
                    int i = (int)(e / K), j = (int)(e % K);
                    nx[e] = gamma * pv[e] + beta * kk[i] * kk[j];
                } else {
                    size_t f = e - KK;
                    int i = (int)(f / V), j = (int)(f % V);
                    nx[e] = gamma * pv[e] + beta * kk[i] * vv[j];
                }
            }
        }
        for (int t = t1 - 1; t >= t0; t--) {
            size_t hi = ((size_t)b * T + t) * H + h;
            const double *Pkk = St + (size_t)(t - t0) * SL, *Pkv = Pkk + KK; // states t-1
            const double *Ckk = Pkk + SL, *Ckv = Ckk + KK;                   // states t
            const double gamma = a.g ? exp((double)a.g[hi]) : 1, beta = a.beta[hi];
            __syncthreads();
            for (int i = tid; i < K; i += nt) kk[i] = a.k[hi * K + i], qs[i] = a.qstar[hi * K + i];
            for (int j = tid; j < V; j += nt) vv[j] = a.v[hi * V + j], dO[j] = a.dout[hi * V + j];
            __syncthreads();
            for (int i = tid; i < K; i += nt) { // dq* = Hkv_t dO
                double s = 0;
                for (int j = 0; j < V; j++) s += Ckv[(size_t)i * V + j] * dO[j];
                dqs[i] = s;
            }
            // dq = (Hkk_t + Diag(lam))^{-1} dq* (A symmetric)
            mesa_solve_dev(Ckk, K, lam, dqs, dq, K, a.cg_steps, a.cg_eps, L, r, p, z, sc);
            for (int i = tid; i < K; i += nt) {
                a.dq[hi * K + i] += (float)dq[i];
                dl[i] -= dq[i] * qs[i]; // dlam = -sum dq (.) q*
            }
            // Gkv_t = gamma_{t+1} Gkv_{t+1} + q* dO^T;  Gkk_t = gamma_{t+1} Gkk_{t+1} - dq q*^T
            for (size_t e = tid; e < KV; e += nt) {
                int i = (int)(e / V), j = (int)(e % V);
                Gkv[i * ldv + j] += qs[i] * dO[j];
            }
            for (size_t e = tid; e < KK; e += nt) {
                int i = (int)(e / K), j = (int)(e % K);
                Gkk[i * ldk + j] -= dq[i] * qs[j];
            }
            __syncthreads();
            // dv_j = beta Gkv[:,j].k;  dbeta gets Gkv[:,j].k v_j
            for (int j = tid; j < V; j += nt) {
                double s = 0;
                for (int i = 0; i < K; i++) s += Gkv[i * ldv + j] * kk[i];
                a.dv[hi * V + j] += (float)(beta * s);
                colp[j] = s * vv[j];
            }
            // dk_i = beta (Gkv v + (Gkk + Gkk^T) k)_i;  dbeta gets k_i (Gkk k)_i;
            // dgamma gets <Gkk_i, Hkk_{t-1,i}> + <Gkv_i, Hkv_{t-1,i}>
            for (int i = tid; i < K; i += nt) {
                double s = 0, s2 = 0, rb = 0;
                for (int j = 0; j < V; j++) s += Gkv[i * ldv + j] * vv[j];
                for (int j = 0; j < K; j++) {
                    s2 += (Gkk[i * ldk + j] + Gkk[j * ldk + i]) * kk[j];
                    rb += kk[i] * Gkk[i * ldk + j] * kk[j];
                }
                a.dk[hi * K + i] += (float)(beta * (s + s2));
                rowp[i] = rb;
                if (a.g) {
                    double s3 = 0;
                    for (int j = 0; j < K; j++) s3 += Gkk[i * ldk + j] * Pkk[(size_t)i * K + j];
                    for (int j = 0; j < V; j++) s3 += Gkv[i * ldv + j] * Pkv[(size_t)i * V + j];
                    dgp[i] = s3;
                }
            }
            __syncthreads();
            if (tid == 0) {
                double db = 0;
                for (int j = 0; j < V; j++) db += colp[j];
                for (int i = 0; i < K; i++) db += rowp[i];
                a.dbeta[hi] += (float)db;
                if (a.g) {
                    double dgam = 0;
                    for (int i = 0; i < K; i++) dgam += dgp[i];
                    a.dg[hi] += (float)(gamma * dgam); // dg = gamma dgamma
                }
            }
            for (size_t e = tid; e < KV; e += nt) Gkv[(e / V) * ldv + e % V] *= gamma;
            for (size_t e = tid; e < KK; e += nt) Gkk[(e / K) * ldk + e % K] *= gamma;
        }
    }
    __syncthreads();
    for (int i = tid; i < K; i += nt) dlam_part[(size_t)blockIdx.x * K + i] = dl[i];
}

// dlam[h, i] += sum over b of the per-(b, h) partials, in batch order
__global__ void mesa_dlam_kernel(float *dlam, const double *part, int B, int HK) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= HK) return;
    double s = 0;
    for (int b = 0; b < B; b++) s += part[(size_t)b * HK + e];
    dlam[e] += (float)s;
}

// ---- MesaNet, time-parallel path (K <= MESA_KT: mesa_par_ok) ----------------------------------
//
// Every token's solve needs only its own Hkk_t (§9.2), not the previous token's solve, so
// the sequential part is reduced to the state recurrence, which is elementwise:
//   mesa_state_kernel    one thread per state element (b, h, [chunk,] e), sequential over t:
//                        Hkk/Hkv_t[e] = gamma_t prev + beta_t k_i (k|v)_j, the CPU's formula,
//                        stored per token (double) in scratch S [bh][t][K*K + K*V] (the
//                        checkpoint layout); forward from zero over all T (writing the
//                        checkpoints), backward from each checkpoint over its chunk, as the CPU
//   mesa_tok_fwd_kernel  one thread per token: Hkk_t in registers, CG / Cholesky with the CPU's
//                        loops and index order, q*, o = Hkv_t^T q*
//   mesa_tok_bwd_kernel  one thread per token: dq* = Hkv_t dO, dq = A^{-1} dq* (§9.4)
//   mesa_rev_kernel      one warp per (b, h), reverse in t: the accumulation of Gkk, Gkv and
//                        the per-token gradients (§9.4), as mesa_bwd_kernel without its solves
// Work is done in slices of (b, h) so that S stays under MESA_SCR_DOUBLES.

#define MESA_KT 8                   // largest K of the time-parallel path (registers)
#define MESA_TOK 64                 // tokens (threads) per block of the token kernels
#define MESA_SCR_DOUBLES (1u << 25) // S per slice: 256 MB (MAD shape: one slice)

// gam[tok] = gamma of token tok = bhl*T + t of the slice starting at (b, h) index bh0
__global__ void mesa_gam_kernel(double *gam, const float *g, int bh0, int nbh, int T, int H) {
    int tok = blockIdx.x * blockDim.x + threadIdx.x;
    if (tok >= nbh * T) return;
    int bh = bh0 + tok / T, t = tok % T;
    size_t hi = ((size_t)(bh / H) * T + t) * H + bh % H;
    gam[tok] = g ? exp((double)g[hi]) : 1;
}

// from_ckpt == 0: thread (bhl, e), t over [0, T), writes the checkpoints (state before step t);
// from_ckpt == 1: thread (bhl, c, e), t over chunk c, starting from checkpoint c.
__global__ void mesa_state_kernel(MesaArgs a, double *S, const double *gam, int bh0, int nbh,
                                  int from_ckpt) {
    const int K = a.K, V = a.V, H = a.H, T = a.T, nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    const int KK = K * K, SL = KK + K * V, nc = from_ckpt ? nck : 1;
    long id = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (id >= (long)nbh * nc * SL) return;
    const int e = (int)(id % SL), c = (int)(id / SL % nc), bhl = (int)(id / ((long)SL * nc));
    const int bh = bh0 + bhl, b = bh / H, h = bh % H;
    const bool kk = e < KK;
    const int i = kk ? e / K : (e - KK) / V, j = kk ? e % K : (e - KK) % V;
    float *ck = a.ckpt + (size_t)bh * nck * SL + e;
    const int t0 = from_ckpt ? c * DELTA_CKPT : 0;
    const int t1 = from_ckpt ? min(T, t0 + DELTA_CKPT) : T;
    double s = from_ckpt ? (double)ck[(size_t)c * SL] : 0;
    // per-step pointers (token rows of one (b, h) are H rows apart)
    const size_t hi0 = ((size_t)b * T + t0) * H + h;
    const float *bp = a.beta + hi0, *kp = a.k + hi0 * K + i;
    const float *wp = kk ? a.k + hi0 * K + j : a.v + hi0 * V + j;
    const size_t kst = (size_t)H * K, wst = kk ? kst : (size_t)H * V;
    const double *gp = gam + (size_t)bhl * T + t0;
    double *out = S + ((size_t)bhl * T + t0) * SL + e;
#pragma unroll 4
    for (int t = t0; t < t1; t++) {
        if (!from_ckpt && t % DELTA_CKPT == 0) ck[(size_t)(t / DELTA_CKPT) * SL] = (float)s;
        const double beta = *bp, ki = *kp, w = *wp;
        s = *gp * s + beta * ki * w;
        *out = s;
        bp += H, kp += kst, wp += wst, gp++, out += SL;
    }
}

// x = (A + Diag(lam))^{-1} b (§9.3) by one thread, A [KT*KT] in registers (entries i, j < d
// used; overwritten by L when steps == 0), lam read from global; the loops and summation
// orders of the CPU's mesa_solve, so each token's result is the CPU's up to FMA contraction.
template <int KT>
__device__ __forceinline__ void mesa_solve_thread(double *A, const float *lam, const double *bb,
                                                  double *x, int d, int steps, double eps) {
    if (steps == 0) {
#pragma unroll
        for (int i = 0; i < KT; i++)
#pragma unroll
            for (int j = 0; j <= i; j++) {
                if (i >= d) continue;
                double s = A[i * KT + j] + (i == j ? (double)lam[i] : 0);
#pragma unroll
                for (int m = 0; m < j; m++) s -= A[i * KT + m] * A[j * KT + m];
                if (i == j) A[i * KT + i] = sqrt(s > 1e-300 ? s : 1e-300);
                else A[i * KT + j] = s / A[j * KT + j];
            }
#pragma unroll
        for (int i = 0; i < KT; i++) {
            if (i >= d) continue;
            double s = bb[i];
#pragma unroll
            for (int m = 0; m < i; m++) s -= A[i * KT + m] * x[m];
            x[i] = s / A[i * KT + i];
        }
#pragma unroll
        for (int i = KT - 1; i >= 0; i--) {
            if (i >= d) continue;
            double s = x[i];
#pragma unroll
            for (int m = i + 1; m < KT; m++)
                if (m < d) s -= A[m * KT + i] * x[m];
            x[i] = s / A[i * KT + i];
        }
        return;
    }
    double r[KT], p[KT], z[KT], delta = 0;
#pragma unroll
    for (int i = 0; i < KT; i++)
        if (i < d) x[i] = 0, r[i] = bb[i], p[i] = bb[i], delta += bb[i] * bb[i];
    for (int it = 0; it < steps && delta > 0; it++) {
        double pz = 0;
#pragma unroll
        for (int i = 0; i < KT; i++) {
            if (i >= d) continue;
            double s = (double)lam[i] * p[i];
#pragma unroll
            for (int j = 0; j < KT; j++)
                if (j < d) s += A[i * KT + j] * p[j];
            z[i] = s;
            pz += p[i] * s;
        }
        double al = delta / (pz + eps), nd = 0;
#pragma unroll
        for (int i = 0; i < KT; i++)
            if (i < d) x[i] += al * p[i], r[i] -= al * z[i], nd += r[i] * r[i];
        double bt = nd / (delta + eps);
#pragma unroll
        for (int i = 0; i < KT; i++)
            if (i < d) p[i] = r[i] + bt * p[i];
        delta = nd;
    }
}

// Stage part [off, off + n) of the states of the block's tokens into buf [MESA_TOK][n + 1]
// (coalesced: the block's tokens are consecutive in S), then sync.
__device__ __forceinline__ void mesa_stage(double *buf, const double *S, long tok0, long ntok,
                                           int SL, int off, int n) {
    __syncthreads();
    for (int e = threadIdx.x; e < MESA_TOK * n; e += blockDim.x) {
        int tl = e / n, f = e % n;
        if (tok0 + tl < ntok) buf[tl * (n + 1) + f] = S[(size_t)(tok0 + tl) * SL + off + f];
    }
    __syncthreads();
}

// this thread's token of a token kernel: tok of ntok tokens of (b, h) pairs bh0..bh0+nbh-1,
// its head h and row hi ((b, t, h) in [B, T, H])
struct MesaTok {
    long ntok, tok0, tok;
    int h;
    size_t hi;
};
__device__ __forceinline__ MesaTok mesa_tok(const MesaArgs &a, int bh0, int nbh) {
    MesaTok m;
    m.ntok = (long)nbh * a.T, m.tok0 = (long)blockIdx.x * MESA_TOK, m.tok = m.tok0 + threadIdx.x;
    const int bh = bh0 + (int)(m.tok / a.T), t = (int)(m.tok % a.T), b = bh / a.H;
    m.h = bh % a.H, m.hi = ((size_t)b * a.T + t) * a.H + m.h;
    return m;
}

// a token's K x K matrix from its staged row As into registers (KT x KT, K <= KT used)
template <int KT>
__device__ __forceinline__ void mesa_load_A(double (&A)[KT * KT], const double *As, int K) {
#pragma unroll
    for (int i = 0; i < KT; i++)
#pragma unroll
        for (int j = 0; j < KT; j++)
            if (i < K && j < K) A[i * KT + j] = As[i * K + j];
}

// grid ceil(nbh*T / MESA_TOK), MESA_TOK threads; shared buf [MESA_TOK][max(K*K, K*V) + 1]
template <int KT>
__global__ void __launch_bounds__(MESA_TOK) mesa_tok_fwd_kernel(MesaArgs a, const double *S,
                                                                int bh0, int nbh) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, KK = K * K, SL = KK + K * V;
    const MesaTok mt = mesa_tok(a, bh0, nbh);
    const long ntok = mt.ntok, tok0 = mt.tok0, tok = mt.tok;
    const bool on = tok < ntok;
    const int h = mt.h;
    const size_t hi = mt.hi;
    double A[KT * KT], qb[KT], x[KT];
    mesa_stage(sm, S, tok0, ntok, SL, 0, KK);
    if (on) {
        mesa_load_A<KT>(A, sm + threadIdx.x * (KK + 1), K);
#pragma unroll
        for (int i = 0; i < KT; i++)
            if (i < K) qb[i] = a.q[hi * K + i];
        mesa_solve_thread<KT>(A, a.lam + (size_t)h * K, qb, x, K, a.cg_steps, a.cg_eps);
#pragma unroll
        for (int i = 0; i < KT; i++)
            if (i < K) a.qstar[hi * K + i] = (float)x[i];
    }
    mesa_stage(sm, S, tok0, ntok, SL, KK, K * V);
    if (on) {
        const double *Hkv = sm + threadIdx.x * (K * V + 1);
        for (int j = 0; j < V; j++) { // o = Hkv^T q*
            double s = 0;
#pragma unroll
            for (int i = 0; i < KT; i++)
                if (i < K) s += Hkv[i * V + j] * x[i];
            a.o[hi * V + j] = (float)s;
        }
    }
}

// grid ceil(nbh*T / MESA_TOK), MESA_TOK threads; shared as the forward. dq += dq (float),
// DQ [tok][K] = dq (double, for the reverse pass)
template <int KT>
__global__ void __launch_bounds__(MESA_TOK) mesa_tok_bwd_kernel(MesaArgs a, const double *S,
                                                                double *DQ, int bh0, int nbh) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, KK = K * K, SL = KK + K * V;
    const MesaTok mt = mesa_tok(a, bh0, nbh);
    const long ntok = mt.ntok, tok0 = mt.tok0, tok = mt.tok;
    const bool on = tok < ntok;
    const int h = mt.h;
    const size_t hi = mt.hi;
    double A[KT * KT], dqs[KT], x[KT];
    mesa_stage(sm, S, tok0, ntok, SL, KK, K * V);
    if (on) { // dq* = Hkv_t dO
        const double *Hkv = sm + threadIdx.x * (K * V + 1);
#pragma unroll
        for (int i = 0; i < KT; i++) {
            if (i >= K) continue;
            double s = 0;
            for (int j = 0; j < V; j++) s += Hkv[i * V + j] * (double)a.dout[hi * V + j];
            dqs[i] = s;
        }
    }
    mesa_stage(sm, S, tok0, ntok, SL, 0, KK);
    if (on) { // dq = (Hkk_t + Diag(lam))^{-1} dq* (A symmetric)
        mesa_load_A<KT>(A, sm + threadIdx.x * (KK + 1), K);
        mesa_solve_thread<KT>(A, a.lam + (size_t)h * K, dqs, x, K, a.cg_steps, a.cg_eps);
#pragma unroll
        for (int i = 0; i < KT; i++)
            if (i < K) a.dq[hi * K + i] += (float)x[i], DQ[(size_t)tok * K + i] = x[i];
    }
}

// grid nbh (block = bhl), MESA_REV threads (one warp: its barriers are cheap, and 16+ blocks
// fit an SM, so all (b, h) run in one wave): the reverse-time part of mesa_bwd_kernel with
// the solves done (DQ) and the states read from S (state t-1 of a chunk's first step: its
// checkpoint, as the CPU). A step's inputs, IN = k, q*, dq [K] | v, dO [V] | states t-1
// [K*K + K*V] (gated only), are loaded into registers during the step before (in reverse
// time), so the loop waits on no memory latency. shared: Gkk [K, K+1], Gkv [K, V+1], IN,
// dlam partial, row sums, dg row sums [K], column sums [V].
#define MESA_REV 32
#define MESA_RPF 8 // registers of inputs per thread: IN has at most MESA_REV * MESA_RPF values

// input n of IN for step t (token row hi, tok; see mesa_rev_kernel), from the step's
// row pointers (the states t-1 from the checkpoint Pf or from S at Pd)
struct MesaRevSrc {
    const float *k, *qs, *v, *dO, *Pf;
    const double *dq, *Pd;
};
__device__ __forceinline__ MesaRevSrc mesa_rev_src(const MesaArgs &a, const double *S,
                                                   const double *DQ, const float *ck, int t,
                                                   size_t hi, size_t tok) {
    const size_t SL = (size_t)a.K * a.K + (size_t)a.K * a.V;
    MesaRevSrc r;
    r.k = a.k + hi * a.K, r.qs = a.qstar + hi * a.K, r.dq = DQ + tok * a.K;
    r.v = a.v + hi * a.V, r.dO = a.dout + hi * a.V;
    const bool pck = t % DELTA_CKPT == 0;
    r.Pf = pck ? ck + (size_t)(t / DELTA_CKPT) * SL : nullptr;
    r.Pd = pck ? nullptr : S + (tok - 1) * SL;
    return r;
}
__device__ __forceinline__ double mesa_rev_in(const MesaRevSrc &r, int K, int V, int n) {
    if (n < K) return r.k[n];
    if (n < 2 * K) return r.qs[n - K];
    if (n < 3 * K) return r.dq[n - 2 * K];
    if (n < 3 * K + V) return r.v[n - 3 * K];
    if (n < 3 * K + 2 * V) return r.dO[n - 3 * K - V];
    n -= 3 * K + 2 * V;
    return r.Pf ? (double)r.Pf[n] : r.Pd[n];
}

__global__ void __launch_bounds__(MESA_REV, 16) mesa_rev_kernel(MesaArgs a, const double *S,
                                                            const double *DQ, const double *gam,
                                                            double *dlam_part, int bh0) {
    extern __shared__ double sm[];
    const int K = a.K, V = a.V, H = a.H, T = a.T, tid = threadIdx.x, nt = blockDim.x;
    const int ldk = K + 1, ldv = V + 1, nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    const int bhl = blockIdx.x, bh = bh0 + bhl, b = bh / H, h = bh % H;
    const int KK = K * K, KV = K * V, SL = KK + KV, NI = 3 * K + 2 * V + (a.g ? SL : 0);
    double *Gkk = sm, *Gkv = Gkk + K * ldk, *IN = Gkv + K * ldv;
    double *kk = IN, *qs = kk + K, *dq = qs + K, *vv = dq + K, *dO = vv + V, *P = dO + V;
    double *dl = IN + 3 * K + 2 * V + SL, *rowp = dl + K, *dgp = rowp + K, *colp = dgp + K;
    const float *ck = a.ckpt + (size_t)bh * nck * SL;
    for (int e = tid; e < K * ldk; e += nt) Gkk[e] = 0;
    for (int e = tid; e < K * ldv; e += nt) Gkv[e] = 0;
    for (int i = tid; i < K; i += nt) dl[i] = 0;
    double pf[MESA_RPF], pg, pb; // inputs of the next step
    {
        const int t = T - 1;
        const size_t hi = ((size_t)b * T + t) * H + h, tok = (size_t)bhl * T + t;
        const MesaRevSrc src = mesa_rev_src(a, S, DQ, ck, t, hi, tok);
#pragma unroll
        for (int u = 0; u < MESA_RPF; u++)
            if (tid + u * nt < NI) pf[u] = mesa_rev_in(src, K, V, tid + u * nt);
        pg = gam[tok], pb = a.beta[hi];
    }
    for (int t = T - 1; t >= 0; t--) {
        const size_t hi = ((size_t)b * T + t) * H + h, tok = (size_t)bhl * T + t;
        const double gamma = pg, beta = pb;
        __syncthreads();
#pragma unroll
        for (int u = 0; u < MESA_RPF; u++)
            if (tid + u * nt < NI) IN[tid + u * nt] = pf[u];
        if (t > 0) { // prefetch step t-1
            const size_t hn = hi - H, tn = tok - 1;
            const MesaRevSrc src = mesa_rev_src(a, S, DQ, ck, t - 1, hn, tn);
#pragma unroll
            for (int u = 0; u < MESA_RPF; u++)
                if (tid + u * nt < NI) pf[u] = mesa_rev_in(src, K, V, tid + u * nt);
            pg = gam[tn], pb = a.beta[hn];
        }
        __syncthreads();
        for (int i = tid; i < K; i += nt) dl[i] -= dq[i] * qs[i]; // dlam = -sum dq (.) q*
        // Gkv_t = gamma_{t+1} Gkv_{t+1} + q* dO^T;  Gkk_t = gamma_{t+1} Gkk_{t+1} - dq q*^T
        for (int e = tid; e < KV; e += nt) {
            int i = e / V, j = e % V;
            Gkv[i * ldv + j] += qs[i] * dO[j];
        }
        for (int e = tid; e < KK; e += nt) {
            int i = e / K, j = e % K;
            Gkk[i * ldk + j] -= dq[i] * qs[j];
        }
        __syncthreads();
        // dv_j = beta Gkv[:,j].k;  dbeta gets Gkv[:,j].k v_j  (threads 0, 1, ...)
        for (int j = tid; j < V; j += nt) {
            double s = 0;
#pragma unroll
            for (int i = 0; i < MESA_KT; i++)
                if (i < K) s += Gkv[i * ldv + j] * kk[i];
            a.dv[hi * V + j] += (float)(beta * s);
            colp[j] = s * vv[j];
        }
        // dk_i = beta (Gkv v + (Gkk + Gkk^T) k)_i;  dbeta gets k_i (Gkk k)_i;
        // dgamma gets <Gkk_i, Hkk_{t-1,i}> + <Gkv_i, Hkv_{t-1,i}>  (threads nt-1, nt-2, ...:
        // beside the column threads when K + V <= nt)
        for (int i = nt - 1 - tid; i < K; i += nt) {
            double s = 0, s2 = 0, rb = 0;
            for (int j = 0; j < V; j++) s += Gkv[i * ldv + j] * vv[j];
#pragma unroll
            for (int j = 0; j < MESA_KT; j++)
                if (j < K) {
                    s2 += (Gkk[i * ldk + j] + Gkk[j * ldk + i]) * kk[j];
                    rb += kk[i] * Gkk[i * ldk + j] * kk[j];
                }
            a.dk[hi * K + i] += (float)(beta * (s + s2));
            rowp[i] = rb;
            if (a.g) {
                double s3 = 0;
#pragma unroll
                for (int j = 0; j < MESA_KT; j++)
                    if (j < K) s3 += Gkk[i * ldk + j] * P[i * K + j];
                for (int j = 0; j < V; j++) s3 += Gkv[i * ldv + j] * P[KK + i * V + j];
                dgp[i] = s3;
            }
        }
        __syncthreads();
        if (tid == 0) {
            double db = 0;
            for (int j = 0; j < V; j++) db += colp[j];
#pragma unroll
            for (int i = 0; i < MESA_KT; i++)
                if (i < K) db += rowp[i];
            a.dbeta[hi] += (float)db;
            if (a.g) {
                double dgam = 0;
#pragma unroll
                for (int i = 0; i < MESA_KT; i++)
                    if (i < K) dgam += dgp[i];
                a.dg[hi] += (float)(gamma * dgam); // dg = gamma dgamma
            }
        }
        for (int e = tid; e < KV; e += nt) Gkv[(e / V) * ldv + e % V] *= gamma;
        for (int e = tid; e < KK; e += nt) Gkk[(e / K) * ldk + e % K] *= gamma;
    }
    __syncthreads();
    for (int i = tid; i < K; i += nt) dlam_part[(size_t)bh * K + i] = dl[i];
}

// the time-parallel path: K within the token kernels' registers, a reverse step's inputs
// within mesa_rev_kernel's prefetch registers (else the per-(b, h) kernels)
static bool mesa_par_ok(const MesaArgs *a) {
    int K = a->K, V = a->V;
    return K <= MESA_KT && 3 * K + 2 * V + K * K + K * V <= MESA_REV * MESA_RPF;
}

// (b, h) per slice so that S [nbh][T][SL] fits MESA_SCR_DOUBLES
static int mesa_slice(const MesaArgs *a) {
    size_t per = (size_t)a->T * ((size_t)a->K * a->K + (size_t)a->K * a->V);
    size_t n = MESA_SCR_DOUBLES / per;
    int BH = a->B * a->H;
    return n < 1 ? 1 : n > (size_t)BH ? BH : (int)n;
}

static size_t mesa_tok_smem(const MesaArgs *a) {
    size_t K = a->K, V = a->V, n = K * K > K * V ? K * K : K * V;
    return sizeof(double) * MESA_TOK * (n + 1);
}

static void mesa_forward_par(const MesaArgs *a) {
    const int BH = a->B * a->H, T = a->T, SL = a->K * a->K + a->K * a->V, nsl = mesa_slice(a);
    static size_t set = 0;
    size_t smem = mesa_tok_smem(a);
    smem_check((const void *)mesa_tok_fwd_kernel<MESA_KT>, smem, &set, "mesa_forward", a->K, a->V);
    // one scratch: gamma [nsl*T], S [nsl*T*SL] (doubles)
    double *gam = (double *)cu_scratch(2 * ((size_t)nsl * T + (size_t)nsl * T * SL));
    double *S = gam + (size_t)nsl * T;
    for (int bh0 = 0; bh0 < BH; bh0 += nsl) {
        int nbh = BH - bh0 < nsl ? BH - bh0 : nsl;
        long ntok = (long)nbh * T, nel = (long)nbh * SL;
        mesa_gam_kernel<<<cu_blocks(ntok, 256), 256, 0, cu.stream>>>(gam, a->g, bh0, nbh, T, a->H);
        CKL();
        mesa_state_kernel<<<cu_blocks(nel, 128), 128, 0, cu.stream>>>(*a, S, gam, bh0, nbh, 0);
        CKL();
        mesa_tok_fwd_kernel<MESA_KT>
            <<<cu_blocks(ntok, MESA_TOK), MESA_TOK, smem, cu.stream>>>(*a, S, bh0, nbh);
        CKL();
    }
}

static void mesa_backward_par(const MesaArgs *a) {
    const int BH = a->B * a->H, T = a->T, K = a->K, V = a->V, SL = K * K + K * V;
    const int nsl = mesa_slice(a);
    const int nck = (T + DELTA_CKPT - 1) / DELTA_CKPT;
    static size_t set = 0, set2 = 0;
    size_t smem = mesa_tok_smem(a);
    smem_check((const void *)mesa_tok_bwd_kernel<MESA_KT>, smem, &set, "mesa_backward", K, V);
    size_t smem2 = sizeof(double) * ((size_t)K * (K + 1) + (size_t)K * (V + 1) + (size_t)SL +
                                     6 * (size_t)K + 3 * (size_t)V);
    smem_check((const void *)mesa_rev_kernel, smem2, &set2, "mesa_backward", K, V);
    // one scratch: dlam partials [BH*K], gamma [nsl*T], S [nsl*T*SL], DQ [nsl*T*K] (doubles)
    size_t nt = (size_t)nsl * T;
    double *part = (double *)cu_scratch(2 * ((size_t)BH * K + nt + nt * SL + nt * K));
    double *gam = part + (size_t)BH * K, *S = gam + nt, *DQ = S + nt * SL;
    for (int bh0 = 0; bh0 < BH; bh0 += nsl) {
        int nbh = BH - bh0 < nsl ? BH - bh0 : nsl;
        long ntok = (long)nbh * T, nel = (long)nbh * nck * SL;
        mesa_gam_kernel<<<cu_blocks(ntok, 256), 256, 0, cu.stream>>>(gam, a->g, bh0, nbh, T, a->H);
        CKL();
        mesa_state_kernel<<<cu_blocks(nel, 128), 128, 0, cu.stream>>>(*a, S, gam, bh0, nbh, 1);
        CKL();
        mesa_tok_bwd_kernel<MESA_KT>
            <<<cu_blocks(ntok, MESA_TOK), MESA_TOK, smem, cu.stream>>>(*a, S, DQ, bh0, nbh);
        CKL();
        mesa_rev_kernel<<<nbh, MESA_REV, smem2, cu.stream>>>(*a, S, DQ, gam, part, bh0);
        CKL();
    }
    int HK = a->H * K;
    mesa_dlam_kernel<<<cu_blocks(HK, 128), 128, 0, cu.stream>>>(a->dlam, part, a->B, HK);
    CKL();
}

static void mesa_check(const MesaArgs *a, const char *op) {
    if (a->K < 1 || a->V < 1 || a->cg_steps < 0) {
        char why[128];
        snprintf(why, sizeof why, "bad sizes K=%d V=%d cg_steps=%d", a->K, a->V, a->cg_steps);
        cu_die(__FILE__, __LINE__, op, why);
    }
}

static void mesa_forward(const MesaArgs *a) {
    if (a->B <= 0 || a->H <= 0 || a->T <= 0) return;
    mesa_check(a, "mesa_forward");
    if (mesa_par_ok(a)) { // time-parallel path
        mesa_forward_par(a);
        return;
    }
    static size_t set = 0;
    size_t K = a->K, V = a->V;
    size_t smem = sizeof(double) * (K * (K + 1) + K * V + 4 * K + V + mesa_solve_smem(a->K, a->cg_steps));
    smem_check((const void *)mesa_fwd_kernel, smem, &set, "mesa_forward", a->K, a->V);
    mesa_fwd_kernel<<<a->B * a->H, MESA_THREADS, smem, cu.stream>>>(*a);
    CKL();
}

static void mesa_backward(const MesaArgs *a) {
    if (a->B <= 0 || a->H <= 0 || a->T <= 0) return;
    mesa_check(a, "mesa_backward");
    if (mesa_par_ok(a)) {
        mesa_backward_par(a);
        return;
    }
    static size_t set = 0;
    size_t K = a->K, V = a->V, BH = (size_t)a->B * a->H;
    size_t smem = sizeof(double) * (K * (K + 1) + K * (V + 1) + 8 * K + 3 * V +
                                    mesa_solve_smem(a->K, a->cg_steps));
    smem_check((const void *)mesa_bwd_kernel, smem, &set, "mesa_backward", a->K, a->V);
    // one scratch: the chunk states of every block, then the dlam partials (doubles)
    size_t per = (DELTA_CKPT + 1) * (K * K + K * V);
    double *scr = (double *)cu_scratch(2 * (BH * per + BH * K));
    double *part = scr + BH * per;
    mesa_bwd_kernel<<<(int)BH, MESA_THREADS, smem, cu.stream>>>(*a, scr, part);
    CKL();
    int HK = a->H * a->K;
    mesa_dlam_kernel<<<cu_blocks(HK, 128), 128, 0, cu.stream>>>(a->dlam, part, a->B, HK);
    CKL();
}

static DeltaOps cuda_delta_ops;

void cu_fill_delta(Ops *o) {
    DeltaOps *d = &cuda_delta_ops;
    d->l2norm_forward = l2norm_forward;
    d->l2norm_backward = l2norm_backward;
    d->map_forward = map_forward;
    d->map_backward = map_backward;
    d->decay_forward = decay_forward;
    d->decay_backward = decay_backward;
    d->gate_mul_forward = gate_mul_forward;
    d->gate_mul_backward = gate_mul_backward;
    d->delta_forward = delta_forward;
    d->delta_backward = delta_backward;
    d->mesa_forward = mesa_forward;
    d->mesa_backward = mesa_backward;
    o->delta = &cuda_delta_ops;
}
