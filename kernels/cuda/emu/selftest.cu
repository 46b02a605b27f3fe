// Self-test of the CUDA emulation (make emu-selftest): small kernels, right and wrong,
// each run in a child process; a wrong one must fail with the emulator's message (or
// the sanitizer's), a right one must give the right numbers. Built only in the emulation
// (rewrite.pl + g++), never by nvcc.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>

static float *dev(size_t n) {
    float *p;
    if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess) exit(3);
    return p;
}

// ---- kernels ------------------------------------------------------------------------------

// out[b] = sum of x over the block's 256 values: shared-memory tree, then a warp shuffle
__global__ void block_sum(float *out, const float *x) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * 256 + t];
    __syncthreads();
    for (int w = 128; w >= 32; w >>= 1) {
        if (t < w) s[t] += s[t + w];
        __syncthreads();
    }
    if (t < 32) {
        float v = s[t];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (t == 0) out[blockIdx.x] = v;
    }
}
// the same without the barrier after the load: threads read slots not yet written
__global__ void block_sum_nosync(float *out, const float *x) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * 256 + t];
    for (int w = 128; w >= 1; w >>= 1) {
        if (t < w) s[t] += s[t + w];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}
// half the block at one __syncthreads, half at another
__global__ void split_barrier(float *out) {
    if (threadIdx.x < 64) __syncthreads();
    else __syncthreads();
    out[threadIdx.x] = 1;
}
// lanes 0-15 in a full-warp shuffle, lanes 16-31 at a block barrier: nobody can go on
__global__ void stuck(float *out) {
    float v = threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncthreads();
    out[threadIdx.x] = v;
}
// lanes of a full mask returned before the shuffle
__global__ void shuffle_after_return(float *out, int n) {
    if ((int)threadIdx.x >= n) return;
    float v = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, 1);
    out[threadIdx.x] = v;
}
// the threads that returned no longer count at later barriers (sm_70+)
__global__ void barrier_after_return(float *out, int n) {
    __shared__ float s[64];
    if ((int)threadIdx.x >= n) return;
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[n - 1 - threadIdx.x];
}
// group shuffles of 8 lanes with their own mask and width
__global__ void group_sum(float *out) {
    unsigned l = threadIdx.x & 31, mask = 0xffu << (l & ~7u);
    float v = threadIdx.x;
    for (int o = 4; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, 8);
    out[threadIdx.x] = v;
}
__global__ void write_one_past(float *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) x[i] = 1; // <= : one element too many
}
__global__ void shared_overrun(float *out) {
    __shared__ float s[32];
    s[threadIdx.x] = 1; // 64 threads
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}
__global__ void dyn_shared_overrun(float *out, int n) {
    extern __shared__ float sm[];
    sm[threadIdx.x] = 2; // n floats of dynamic shared memory, blockDim.x > n
    __syncthreads();
    if (threadIdx.x < (unsigned)n) out[threadIdx.x] = sm[threadIdx.x];
}
__global__ void add_one(float *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1;
}
__global__ void misaligned_float4(float *out, const float *x) {
    float4 v = *reinterpret_cast<const float4 *>(x + 1 + 4 * threadIdx.x);
    out[threadIdx.x] = v.x;
}

// ---- cases -----------------------------------------------------------------------------------

static int check(bool ok, const char *what) {
    if (!ok) fprintf(stderr, "selftest: %s\n", what);
    return ok ? 0 : 1;
}

static int good_sum() {
    const int B = 3, n = 256 * B;
    float h[n], r[B], *x = dev(n), *o = dev(B);
    for (int i = 0; i < n; i++) h[i] = (float)(i % 7) - 3.f;
    cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice);
    block_sum<<<B, 256>>>(o, x);
    cudaMemcpy(r, o, sizeof r, cudaMemcpyDeviceToHost);
    for (int b = 0; b < B; b++) {
        float s = 0;
        for (int i = 0; i < 256; i++) s += h[256 * b + i];
        if (r[b] != s) return check(false, "block_sum is wrong");
    }
    return cudaGetLastError() != cudaSuccess;
}
static int nosync_sum() {
    const int n = 256;
    float h[n], r, *x = dev(n), *o = dev(1);
    for (int i = 0; i < n; i++) h[i] = 1;
    cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice);
    block_sum_nosync<<<1, 256>>>(o, x);
    cudaMemcpy(&r, o, 4, cudaMemcpyDeviceToHost);
    return check(r == 256.f, "the missing barrier went unnoticed: the sum is right"); // expected to fail
}
static int split() {
    float *o = dev(128);
    split_barrier<<<1, 128>>>(o);
    return 0;
}
static int deadlock() {
    float *o = dev(64);
    stuck<<<1, 64>>>(o);
    return 0;
}
static int shfl_returned() {
    float *o = dev(32);
    shuffle_after_return<<<1, 32>>>(o, 20);
    return 0;
}
static int barrier_returned() {
    float r[40], *o = dev(40);
    barrier_after_return<<<1, 64>>>(o, 40);
    cudaMemcpy(r, o, sizeof r, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 40; i++)
        if (r[i] != (float)(39 - i)) return check(false, "barrier_after_return is wrong");
    return 0;
}
static int groups() {
    float r[64], *o = dev(64);
    group_sum<<<1, 64>>>(o);
    cudaMemcpy(r, o, sizeof r, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 64; i++) {
        int g = i / 8 * 8;
        if (r[i] != (float)(8 * g + 28)) return check(false, "group_sum is wrong");
    }
    return 0;
}
static int oob_global() {
    float *x = dev(100);
    write_one_past<<<1, 128>>>(x, 100);
    cudaDeviceSynchronize();
    return 0;
}
static int oob_shared() {
    float *o = dev(64);
    shared_overrun<<<1, 64>>>(o);
    return 0;
}
static int oob_dyn_shared() {
    float *o = dev(64);
    dyn_shared_overrun<<<1, 64, 32 * sizeof(float)>>>(o, 32);
    return 0;
}
static int host_pointer() {
    static float h[32];
    add_one<<<1, 32>>>(h, 32);
    return 0;
}
static int empty_grid() {
    float *x = dev(4);
    add_one<<<0, 256>>>(x, 0);
    return check(cudaGetLastError() == cudaErrorInvalidConfiguration, "a grid of 0 blocks was accepted");
}
static int big_block() {
    float *x = dev(4);
    add_one<<<1, 2048>>>(x, 4);
    return check(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block were accepted");
}
static int misaligned() {
    float *x = dev(256), *o = dev(32);
    misaligned_float4<<<1, 32>>>(o, x);
    return 0;
}
static int gemm_bad_ld() {
    cublasHandle_t h;
    cublasCreate(&h);
    float *A = dev(64), *B = dev(64), *C = dev(64), one = 1, zero = 0;
    // column-major C[8x8] = A[8x8] B[8x8] with lda 4 < 8 rows
    cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, A, CUDA_R_32F, 4, B,
                                    CUDA_R_32F, 8, &zero, C, CUDA_R_32F, 8, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    return check(s == CUBLAS_STATUS_INVALID_VALUE, "lda smaller than the rows was accepted");
}
static int gemm_out_of_buffer() {
    cublasHandle_t h;
    cublasCreate(&h);
    float *A = dev(64), *B = dev(64), *C = dev(60), one = 1, zero = 0; // C is 4 floats short
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, A, CUDA_R_32F, 8, B, CUDA_R_32F, 8, &zero, C,
                 CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return 0;
}
// column-major C = A^T B against a loop, and a strided batch of 2
static int gemm_values() {
    cublasHandle_t h;
    cublasCreate(&h);
    const int m = 3, n = 4, k = 5, lda = 6, ldb = 7, ldc = 5; // A stored k x m (lda >= k)
    float hA[2 * lda * m], hB[2 * ldb * n], hC[2 * ldc * n], r[2 * ldc * n];
    for (size_t i = 0; i < sizeof hA / 4; i++) hA[i] = (float)((i * 7) % 11) - 5;
    for (size_t i = 0; i < sizeof hB / 4; i++) hB[i] = (float)((i * 5) % 13) - 6;
    for (size_t i = 0; i < sizeof hC / 4; i++) hC[i] = (float)(i % 3);
    float *A = dev(sizeof hA / 4), *B = dev(sizeof hB / 4), *C = dev(sizeof hC / 4), al = 2, be = 0.5f;
    cudaMemcpy(A, hA, sizeof hA, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB, sizeof hB, cudaMemcpyHostToDevice);
    cudaMemcpy(C, hC, sizeof hC, cudaMemcpyHostToDevice);
    cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &al, A, CUDA_R_32F, lda, lda * m, B,
                               CUDA_R_32F, ldb, ldb * n, &be, C, CUDA_R_32F, ldc, ldc * n, 2,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaMemcpy(r, C, sizeof r, cudaMemcpyDeviceToHost);
    for (int bt = 0; bt < 2; bt++)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float s = 0;
                for (int p = 0; p < k; p++) s += hA[bt * lda * m + i * lda + p] * hB[bt * ldb * n + j * ldb + p];
                float want = al * s + be * hC[bt * ldc * n + j * ldc + i];
                if (fabsf(r[bt * ldc * n + j * ldc + i] - want) > 1e-4f) return check(false, "gemm values");
            }
    return 0;
}
static int graph_replay() {
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    float r[8], *x = dev(8);
    cudaMemsetAsync(x, 0, 8 * sizeof(float), s);
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    add_one<<<1, 8, 0, s>>>(x, 8);
    add_one<<<1, 8, 0, s>>>(x, 8);
    cudaGraph_t g;
    cudaStreamEndCapture(s, &g);
    cudaMemcpy(r, x, sizeof r, cudaMemcpyDeviceToHost);
    if (r[3] != 0) return check(false, "a captured launch ran at capture time");
    cudaGraphExec_t e;
    cudaGraphInstantiate(&e, g, 0);
    cudaGraphLaunch(e, s);
    cudaGraphLaunch(e, s);
    cudaStreamSynchronize(s);
    cudaMemcpy(r, x, sizeof r, cudaMemcpyDeviceToHost);
    return check(r[3] == 4 && r[7] == 4, "graph replay");
}
static int malloc_in_capture() {
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    void *p;
    return check(cudaMalloc(&p, 16) == cudaErrorStreamCaptureUnsupported, "cudaMalloc while capturing was accepted");
}
static int fresh_memory_is_nan() {
    float r[4], *x = dev(4);
    cudaMemcpy(r, x, sizeof r, cudaMemcpyDeviceToHost);
    return check(std::isnan(r[0]) && std::isnan(r[3]), "fresh cudaMalloc memory is not NaN");
}

struct Case {
    const char *name;
    int (*run)();
    const char *expect; // null: must succeed; else a failure whose output contains this
};
static const Case cases[] = {
    {"block sum (barriers, shuffles)", good_sum, nullptr},
    {"threads that returned leave the barrier", barrier_returned, nullptr},
    {"group shuffles (mask, width 8)", groups, nullptr},
    {"gemm values (transpose, ld, strided batch)", gemm_values, nullptr},
    {"graph capture and replay", graph_replay, nullptr},
    {"fresh device memory is NaN", fresh_memory_is_nan, nullptr},
    {"missing __syncthreads", nosync_sum, "missing barrier went unnoticed"},
    {"__syncthreads in divergent code", split, "different __syncthreads"},
    {"deadlock", deadlock, "deadlock"},
    {"shuffle with returned lanes", shfl_returned, "returned"},
    {"global write out of bounds", oob_global, "heap-buffer-overflow"},
    {"static shared memory out of bounds", oob_shared, "out of bounds"},
    {"dynamic shared memory out of bounds", oob_dyn_shared, "heap-buffer-overflow"},
    {"host pointer to a kernel", host_pointer, "is not device memory"},
    {"empty grid", empty_grid, nullptr},
    {"block too large", big_block, nullptr},
    {"misaligned float4 load", misaligned, "misaligned"},
    {"gemm lda too small", gemm_bad_ld, nullptr},
    {"gemm C outside its buffer", gemm_out_of_buffer, "not inside one cudaMalloc allocation"},
    {"cudaMalloc while capturing", malloc_in_capture, nullptr},
};

int main() {
    int failed = 0, n = 0;
    for (const Case &c : cases) {
        int fd[2];
        if (pipe(fd)) return 2;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            dup2(fd[1], 2), dup2(fd[1], 1), close(fd[0]);
            _exit(c.run());
        }
        close(fd[1]);
        std::string out;
        char buf[4096];
        ssize_t k;
        while ((k = read(fd[0], buf, sizeof buf)) > 0) out.append(buf, (size_t)k);
        close(fd[0]);
        int st;
        waitpid(pid, &st, 0);
        bool ok_exit = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        bool pass = c.expect ? !ok_exit && out.find(c.expect) != std::string::npos : ok_exit;
        n++;
        failed += !pass;
        printf("%s %s\n", pass ? "ok  " : "FAIL", c.name);
        if (!pass || getenv("VERBOSE")) fputs(out.c_str(), stdout);
    }
    printf("emulator self-test: %d of %d as expected\n", n - failed, n);
    return failed != 0;
}
