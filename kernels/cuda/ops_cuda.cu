// The CUDA backend: state, memory, CUDA graphs, and the op table per precision.
// precision selects the cuBLAS compute type of every matmul (DEVICE.md):
//   fp32  CUBLAS_COMPUTE_32F            exact fp32
//   tf32  CUBLAS_COMPUTE_32F_FAST_TF32  tf32 operands, fp32 accumulation
//   bf16  CUBLAS_COMPUTE_32F_FAST_16BF  bf16 operands, fp32 accumulation
// Storage, master weights, optimizer state and all non-matmul kernels stay fp32.
#include <cstring>
#ifndef PLAB_EMU
#include <cublasLt.h>
#include <thread>
#endif

#include "cuda_common.cuh"

CuState cu = {-1, nullptr, nullptr, nullptr, nullptr, 0};

void cu_die(const char *file, int line, const char *what, const char *why) {
    fprintf(stderr, "%s:%d: CUDA error in %s: %s\n", file, line, what, why);
    exit(1);
}

static void check_not_capturing(const char *what) {
    cudaStreamCaptureStatus st;
    CK(cudaStreamIsCapturing(cu.stream, &st));
    if (st != cudaStreamCaptureStatusNone) {
        fprintf(stderr, "CUDA backend: %s while a graph is being captured (run one step "
                        "uncaptured first)\n", what);
        exit(1);
    }
}

float *cu_scratch(size_t n) {
    if (n > cu.scratch_n) {
        check_not_capturing("growing the scratch buffer");
        CK(cudaStreamSynchronize(cu.stream));
        if (cu.scratch) CK(cudaFree(cu.scratch));
        size_t m = n + n / 2;
        CK(cudaMalloc(&cu.scratch, m * sizeof(float)));
        cu.scratch_n = m;
    }
    return cu.scratch;
}

// The parts of the deferred column sums (dense_cuda.cu): a bump arena, emptied when the
// sums are added. A chunk too small is kept until then and another started, so parts
// already written stay valid; after the first (uncaptured) step one chunk holds them all.
static struct {
    float *buf, *old[8];
    size_t cap, off, peak;
    int n_old;
} parts;
float *cu_parts(size_t n) {
    n = (n + 3) & ~(size_t)3; // 16-byte aligned parts (float4 stores)
    if (parts.off + n > parts.cap) {
        check_not_capturing("growing the column sums' parts");
        if (parts.n_old == 8) cu_sums_flush(); // empties it
    }
    if (parts.off + n > parts.cap) {
        if (parts.buf) parts.old[parts.n_old++] = parts.buf;
        parts.cap = 2 * (parts.peak + n);
        CK(cudaMalloc(&parts.buf, parts.cap * sizeof(float)));
        parts.off = 0;
    }
    float *p = parts.buf + parts.off;
    parts.off += n, parts.peak += n;
    return p;
}
void cu_parts_release() {
    if (parts.n_old) { // it grew: one chunk for all of it next time (never inside a capture,
                       // where growing has already stopped the program)
        CK(cudaStreamSynchronize(cu.stream));
        for (int i = 0; i < parts.n_old; i++) CK(cudaFree(parts.old[i]));
        CK(cudaFree(parts.buf));
        parts.n_old = 0, parts.cap = parts.peak + parts.peak / 2;
        CK(cudaMalloc(&parts.buf, parts.cap * sizeof(float)));
    }
    parts.off = parts.peak = 0;
}

// ---- memory ----------------------------------------------------------------------

static void *cu_alloc(size_t bytes) {
    check_not_capturing("cudaMalloc");
    void *p = nullptr;
    CK(cudaMalloc(&p, bytes ? bytes : 1));
    CK(cudaMemsetAsync(p, 0, bytes ? bytes : 1, cu.stream));
    CK(cudaStreamSynchronize(cu.stream));
    return p;
}
static void cu_release(void *p) {
    cu_sums_flush();
    CK(cudaStreamSynchronize(cu.stream));
    cu_params_bf16_drop(p);
    CK(cudaFree(p));
}
// Host-to-device copies go through a pinned staging ring, so that they never wait for
// the GPU: the host gathers and uploads the next batch while the step runs (a copy from
// pageable memory may wait for the stream while the driver stages it). The source is
// copied into the ring at once, so the caller may reuse its buffer; the device copy
// runs in stream order. The ring's two halves alternate: before the host refills a
// half it waits for the event recorded after the last copy out of it, long done in a
// training loop (a half holds about 30 MAD batches).
constexpr size_t STAGE_HALF = (size_t)4 << 20;
static struct {
    char *buf;
    size_t off;
    int half;
    cudaEvent_t done[2];
} stage;

static void cu_to_device(void *dst, const void *src, size_t bytes) {
    cudaStreamCaptureStatus st;
    CK(cudaStreamIsCapturing(cu.stream, &st));
    if (bytes > STAGE_HALF || st != cudaStreamCaptureStatusNone) {
        CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu.stream));
        cu_params_bf16_sync(dst, bytes);
        return;
    }
    if (!stage.buf) {
        CK(cudaMallocHost(&stage.buf, 2 * STAGE_HALF));
        for (int i = 0; i < 2; i++) CK(cudaEventCreateWithFlags(&stage.done[i], cudaEventDisableTiming));
    }
    if (stage.off + bytes > STAGE_HALF) {
        CK(cudaEventRecord(stage.done[stage.half], cu.stream));
        stage.half ^= 1, stage.off = 0;
        CK(cudaEventSynchronize(stage.done[stage.half])); // never recorded: returns at once
    }
    char *p = stage.buf + stage.half * STAGE_HALF + stage.off;
    memcpy(p, src, bytes);
    CK(cudaMemcpyAsync(dst, p, bytes, cudaMemcpyHostToDevice, cu.stream));
    cu_params_bf16_sync(dst, bytes);
    stage.off += (bytes + 255) & ~(size_t)255;
}
static void cu_to_host(void *dst, const void *src, size_t bytes) {
    cu_sums_flush();
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu.stream));
    CK(cudaStreamSynchronize(cu.stream));
}
static void cu_copy(void *dst, const void *src, size_t bytes) {
    cu_sums_flush();
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu.stream));
    cu_params_bf16_sync(dst, bytes);
}
static void cu_zero(void *p, size_t bytes) {
    cu_sums_flush();
    CK(cudaMemsetAsync(p, 0, bytes, cu.stream));
    cu_params_bf16_sync(p, bytes);
}
static void cu_sync(void) {
    cu_sums_flush();
    CK(cudaStreamSynchronize(cu.stream));
}

// ---- graphs ----------------------------------------------------------------------

static void cu_graph_begin(void) {
    CK(cudaStreamBeginCapture(cu.stream, cudaStreamCaptureModeThreadLocal));
}
static void *cu_graph_end(void) {
    cu_sums_flush(); // inside the recording
    cudaGraph_t g;
    CK(cudaStreamEndCapture(cu.stream, &g));
    cudaGraphExec_t ex;
    CK(cudaGraphInstantiate(&ex, g, 0));
    CK(cudaGraphDestroy(g));
    CK(cudaGraphUpload(ex, cu.stream));
    return (void *)ex;
}
static void cu_graph_launch(void *g) { CK(cudaGraphLaunch((cudaGraphExec_t)g, cu.stream)); }
static void cu_graph_free(void *g) {
    CK(cudaStreamSynchronize(cu.stream));
    CK(cudaGraphExecDestroy((cudaGraphExec_t)g));
}

// ---- setup -----------------------------------------------------------------------

#ifndef PLAB_EMU
// cuBLAS and cuBLASLt spend 40-90 ms of host time setting themselves up on the first
// matmul of each combination of types in a process (not on handle creation; whatever the
// shape). A step of precision=bf16 uses four, ~0.2 s one after another; measured on an
// H100 on 2026-11-23, the four at once on four threads take 0.09-0.13 s. So the backend
// makes one tiny matmul of each combination its precision uses, all at once, when it starts.
struct BlasCombo {
    bool lt;              // through cuBLASLt (linear_cuda.cu), else cublasGemmEx
    cudaDataType in, out; // operand and result types
    cublasComputeType_t compute;
};

static void first_matmul(BlasCombo c, float *buf) {
    const float one = 1.f, zero = 0.f;
    cudaStream_t s;
    CK(cudaSetDevice(cu.device));
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    if (c.lt) {
        cublasLtHandle_t h;
        cublasLtMatmulDesc_t op;
        cublasLtMatrixLayout_t l;
        CKB(cublasLtCreate(&h));
        CKB(cublasLtMatmulDescCreate(&op, c.compute, CUDA_R_32F));
        CKB(cublasLtMatrixLayoutCreate(&l, c.in, 8, 8, 8));
        CKB(cublasLtMatmul(h, op, &one, buf, l, buf + 64, l, &zero, buf + 128, l, buf + 128, l,
                           nullptr, nullptr, 0, s));
        CK(cudaStreamSynchronize(s));
        CKB(cublasLtMatrixLayoutDestroy(l));
        CKB(cublasLtMatmulDescDestroy(op));
        CKB(cublasLtDestroy(h));
    } else {
        cublasHandle_t h;
        CKB(cublasCreate(&h));
        CKB(cublasSetStream(h, s));
        CKB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, buf, c.in, 8, buf + 64, c.in,
                         8, &zero, buf + 128, c.out, 8, c.compute, CUBLAS_GEMM_DEFAULT));
        CK(cudaStreamSynchronize(s));
        CKB(cublasDestroy(h));
    }
    CK(cudaStreamDestroy(s));
}

// the combinations of dense_cuda.cu, linear_cuda.cu and (bf16) mlp_cuda.cu
static void warm_blas(int prec) {
    const cublasComputeType_t ct = cu_compute_type(prec);
    BlasCombo combos[4] = {{true, CUDA_R_32F, CUDA_R_32F, ct}, {false, CUDA_R_32F, CUDA_R_32F, ct}};
    int n = 2;
    if (prec == 2) {
        combos[n++] = {false, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F};
        combos[n++] = {false, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    }
    float *buf;
    CK(cudaMalloc(&buf, (size_t)n * 192 * sizeof(float)));
    std::thread threads[4];
    for (int i = 0; i < n; i++) threads[i] = std::thread(first_matmul, combos[i], buf + 192 * i);
    for (int i = 0; i < n; i++) threads[i].join();
    CK(cudaFree(buf));
}
#endif

static int init_state(int device, char *why, size_t whylen) {
    if (cu.stream) {
        if (device != cu.device) {
            snprintf(why, whylen, "the CUDA backend is already bound to cuda:%d (asked cuda:%d)",
                     cu.device, device);
            return -1;
        }
        return 0;
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError(); // clear the sticky "no device" error
        snprintf(why, whylen, "no CUDA device is visible");
        return -1;
    }
    if (device < 0 || device >= n) {
        snprintf(why, whylen, "key 'device': cuda:%d does not exist (%d device%s visible)", device,
                 n, n == 1 ? "" : "s");
        return -1;
    }
    CK(cudaSetDevice(device));
    CK(cudaStreamCreateWithFlags(&cu.stream, cudaStreamNonBlocking));
    CKB(cublasCreate(&cu.blas));
    CKB(cublasSetStream(cu.blas, cu.stream));
    CK(cudaMalloc(&cu.blas_ws, CU_BLAS_WS));
    CKB(cublasSetWorkspace(cu.blas, cu.blas_ws, CU_BLAS_WS));
    cu.device = device;
    return 0;
}

static Ops tables[3];
static int filled[3];

extern "C" const Ops *ops_cuda(int device, const char *precision, char *why, size_t whylen) {
    int prec = -1;
    if (!precision || !strcmp(precision, "fp32")) prec = 0;
    else if (!strcmp(precision, "tf32")) prec = 1;
    else if (!strcmp(precision, "bf16")) prec = 2;
    if (prec < 0) {
        snprintf(why, whylen, "key 'precision': '%s' is not fp32, tf32 or bf16", precision);
        return nullptr;
    }
    if (init_state(device, why, whylen) != 0) return nullptr;
    Ops *o = &tables[prec];
    if (!filled[prec]) {
        memset(o, 0, sizeof *o);
        static const char *names[3] = {"cuda", "cuda-tf32", "cuda-bf16"};
        o->name = names[prec];
        o->alloc = cu_alloc;
        o->release = cu_release;
        o->to_device = cu_to_device;
        o->to_host = cu_to_host;
        o->copy = cu_copy;
        o->zero = cu_zero;
        o->sync = cu_sync;
        o->graph_begin = cu_graph_begin;
        o->graph_end = cu_graph_end;
        o->graph_launch = cu_graph_launch;
        o->graph_free = cu_graph_free;
        cu_fill_dense(o, prec);
        cu_fill_linear(o, prec);
        cu_fill_mlp(o, prec);
        cu_fill_attn_block(o, prec);
        cu_fill_layers(o, prec);
        cu_fill_loss(o, prec);
        cu_fill_attention(o, prec);
        cu_fill_optim(o);
        cu_fill_family(o);
        cu_fill_scan(o);
        cu_fill_delta(o);
#ifndef PLAB_EMU
        warm_blas(prec);
#endif
        filled[prec] = 1;
    }
    return o;
}
