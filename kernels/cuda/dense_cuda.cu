// Dense algebra: cuBLAS matmuls (row-major through the column-major API) and
// the small vector ops. Row-major C[M,N] is column-major C^T[N,M], so
// C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T with A and B swapped.
#include <cstdint>

#include "cuda_common.cuh"

static cublasComputeType_t compute_type[3] = {CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32,
                                              CUBLAS_COMPUTE_32F_FAST_16BF};

template <int P>
static void mm(float *C, const float *A, const float *B, int M, int N, int K, int tA, int tB,
               float alpha, float beta) {
    if (M == 0 || N == 0) return;
    CKB(cublasGemmEx(cu.blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                     K, &alpha, B, CUDA_R_32F, tB ? K : N, A, CUDA_R_32F, tA ? M : K, &beta, C,
                     CUDA_R_32F, N, compute_type[P], CUBLAS_GEMM_DEFAULT));
}

template <int P>
static void mm_strided(float *C, const float *A, const float *B, int M, int N, int K, int tA,
                       int tB, float alpha, float beta, int batch, long sA, long sB, long sC) {
    if (M == 0 || N == 0 || batch == 0) return;
    CKB(cublasGemmStridedBatchedEx(cu.blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, CUDA_R_32F,
                                   tB ? K : N, sB, A, CUDA_R_32F, tA ? M : K, sA, &beta, C,
                                   CUDA_R_32F, N, sC, batch, compute_type[P], CUBLAS_GEMM_DEFAULT));
}

__global__ void add_bias_kernel(float *y, const float *b, long n, int C) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % C];
}
static void add_bias(float *y, const float *b, int N, int C) {
    long n = (long)N * C;
    add_bias_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, b, n, C);
    CKL();
}

// Column sums out[c] += sum_n a[n,c] (* b[n,c]) (* r[n]) in a fixed order, no atomics:
// stage 1: block (column tile of 32, row chunk s) writes partial[s, c], its 8 row
// lanes combined in lane order; stage 2: one thread per column adds the chunks in order.
__global__ void colsum_part_kernel(float *part, const float *a, const float *b, const float *r,
                                   int N, int C, int rows_per_chunk) {
    __shared__ float acc[8][33];
    int c = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y;
    int n0 = s * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    float v = 0;
    if (c < C)
        for (int n = n0 + threadIdx.y; n < n1; n += 8) {
            size_t i = (size_t)n * C + c;
            float x = a[i];
            if (b) x *= b[i];
            if (r) x *= r[n];
            v += x;
        }
    acc[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0;
        for (int k = 0; k < 8; k++) t += acc[k][threadIdx.x];
        part[(size_t)s * C + c] = t;
    }
}
// the same with float4 loads (C % 4 == 0, 16-byte aligned rows): 4 columns a thread
__global__ void colsum_part4_kernel(float *part, const float *a, const float *b, const float *r,
                                    int N, int C, int rows_per_chunk) {
    __shared__ float4 acc[8][33];
    int c4 = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y, C4 = C / 4;
    int n0 = s * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (c4 < C4)
        for (int n = n0 + threadIdx.y; n < n1; n += 8) {
            size_t i = (size_t)n * C4 + c4;
            float4 x = reinterpret_cast<const float4 *>(a)[i];
            if (b) {
                float4 y = reinterpret_cast<const float4 *>(b)[i];
                x.x *= y.x, x.y *= y.y, x.z *= y.z, x.w *= y.w;
            }
            float m = r ? r[n] : 1.f;
            v.x += x.x * m, v.y += x.y * m, v.z += x.z * m, v.w += x.w * m;
        }
    acc[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && c4 < C4) {
        float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int k = 0; k < 8; k++) {
            float4 u = acc[k][threadIdx.x];
            t.x += u.x, t.y += u.y, t.z += u.z, t.w += u.w;
        }
        reinterpret_cast<float4 *>(part + (size_t)s * C)[c4] = t;
    }
}
__global__ void colsum_final_kernel(float *out, const float *part, int S, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float t = 0;
    for (int s = 0; s < S; s++) t += part[(size_t)s * C + c];
    out[c] += t;
}
void cu_colsum_final(float *out, const float *part, int S, int C) {
    colsum_final_kernel<<<cu_blocks(C, 128), 128, 0, cu.stream>>>(out, part, S, C);
    CKL();
}
void cu_colsum(float *out, const float *a, const float *b, const float *r, int N, int C) {
    if (N == 0 || C == 0) return;
    int S = (N + 255) / 256;
    S = S > 256 ? 256 : S;
    int rows = (N + S - 1) / S;
    float *part = cu_scratch((size_t)S * C);
    if (C % 4 == 0 && ((uintptr_t)a | (uintptr_t)b) % 16 == 0)
        colsum_part4_kernel<<<dim3(cu_blocks(C / 4, 32), S), dim3(32, 8), 0, cu.stream>>>(
            part, a, b, r, N, C, rows);
    else
        colsum_part_kernel<<<dim3(cu_blocks(C, 32), S), dim3(32, 8), 0, cu.stream>>>(part, a, b, r,
                                                                                     N, C, rows);
    CKL();
    cu_colsum_final(out, part, S, C);
}

// db[C] += sum_n dy[n,C]
static void bias_backward(float *db, const float *dy, int N, int C) {
    cu_colsum(db, dy, nullptr, nullptr, N, C);
}

__global__ void axpy_kernel(float *y, const float *x, float a, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}
static void axpy(float *y, const float *x, float a, long n) {
    axpy_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(y, x, a, n);
    CKL();
}

__global__ void scale_kernel(float *x, float a, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}
static void scale(float *x, float a, long n) {
    scale_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(x, a, n);
    CKL();
}

// one block, fixed-order tree: deterministic; double accumulation like the CPU
__global__ void sumsq_kernel(float *out, const float *x, long n) {
    __shared__ double part[1024];
    double s = 0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i] * x[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (float)part[0];
}
static void sumsq(float *out, const float *x, long n) {
    sumsq_kernel<<<1, 1024, 0, cu.stream>>>(out, x, n);
    CKL();
}

__global__ void scale_rsqrt_kernel(float *x, const float *s, float eps, long n) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    float f = (float)(1.0 / (sqrt((double)s[0]) + eps));
    if (i < n) x[i] *= f;
}
static void scale_rsqrt(float *x, const float *s, float eps, long n) {
    scale_rsqrt_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(x, s, eps, n);
    CKL();
}

void cu_fill_dense(Ops *o, int p) {
    o->matmul = p == 0 ? mm<0> : p == 1 ? mm<1> : mm<2>;
    o->matmul_strided = p == 0 ? mm_strided<0> : p == 1 ? mm_strided<1> : mm_strided<2>;
    o->add_bias = add_bias;
    o->bias_backward = bias_backward;
    o->axpy = axpy;
    o->scale = scale;
    o->sumsq = sumsq;
    o->scale_rsqrt = scale_rsqrt;
}
