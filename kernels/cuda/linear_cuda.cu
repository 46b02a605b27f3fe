// The linear layer's bias inside its matmul (cuBLASLt epilogue BIAS: b is added as
// y is stored), so that no separate pass reads and writes the activations for it.
// (The bias gradient stays a column sum: cuBLASLt's BGRADB epilogue ran as a separate
// kernel at MAD's shapes, slower than dense_cuda.cu's column sums, measured on an
// H100 on 2026-11-23.)
// Row-major y[N,out] is column-major y^T[out,N], as in dense_cuda.cu. Where cuBLASLt
// has no kernel for a shape (its heuristic returns none) the op returns 0 and
// layers.h runs the unfused matmul and bias ops. The CPU emulation has no cuBLASLt:
// there the op stays NULL.
#include "cuda_common.cuh"

#ifndef PLAB_EMU
#include <cublasLt.h>

namespace {


cublasLtHandle_t lt;

// one planned matmul per shape: descriptors and the algorithm the heuristic chose
struct Plan {
    int m, n, k, ta, tb, ep, prec; // prec -1: bf16 operands (then ct is C's and D's type)
    cudaDataType ct;
    bool ok; // false: cuBLASLt has no kernel, use the unfused ops
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};
Plan plans[64];
int nplans;

// column-major D[m,n] = op_a(A) op_b(B), A stored [m,k] (or [k,m] when ta), B [k,n] (or [n,k])
Plan *plan(int m, int n, int k, int ta, int tb, cublasLtEpilogue_t ep, int prec, const void *bias,
           cudaDataType ct = CUDA_R_32F) {
    for (int i = 0; i < nplans; i++) {
        Plan *p = &plans[i];
        if (p->m == m && p->n == n && p->k == k && p->ta == ta && p->tb == tb && p->ep == (int)ep &&
            p->prec == prec && p->ct == ct)
            return p;
    }
    if (nplans == (int)(sizeof plans / sizeof plans[0])) return nullptr;
    if (!lt) CKB(cublasLtCreate(&lt));
    Plan *p = &plans[nplans++];
    *p = Plan{m, n, k, ta, tb, (int)ep, prec, ct, false, {}, {}, {}, {}, {}};
    const cudaDataType abt = prec < 0 ? CUDA_R_16BF : CUDA_R_32F;
    CKB(cublasLtMatmulDescCreate(&p->op, prec < 0 ? CUBLAS_COMPUTE_32F : cu_compute_type(prec), CUDA_R_32F));
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CKB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CKB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    CKB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    CKB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    CKB(cublasLtMatrixLayoutCreate(&p->a, abt, ta ? k : m, ta ? m : k, ta ? k : m));
    CKB(cublasLtMatrixLayoutCreate(&p->b, abt, tb ? n : k, tb ? k : n, tb ? n : k));
    CKB(cublasLtMatrixLayoutCreate(&p->c, ct, m, n, m));
    cublasLtMatmulPreference_t pref;
    CKB(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = CU_BLAS_WS; // cu.blas_ws: one stream runs cuBLAS and cuBLASLt in turn
    CKB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                              sizeof ws));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->a, p->b, p->c, p->c, pref, 1,
                                                      &res, &found);
    CKB(cublasLtMatmulPreferenceDestroy(pref));
    p->ok = s == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p->ok) p->algo = res.algo;
    return p;
}

void run(Plan *p, const void *bias, void *D, const void *A, const void *B, float beta) {
    const float alpha = 1.f;
    CKB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                        sizeof bias));
    CKB(cublasLtMatmul(lt, p->op, &alpha, A, p->a, B, p->b, &beta, D, p->c, D, p->c, &p->algo,
                        cu.blas_ws, CU_BLAS_WS, cu.stream));
}

// y[N,out] = x[N,in] W[out,in]^T + b[out] (writes)
template <int P>
int linear_bias_forward(float *y, const float *x, const float *W, const float *b, int N, int in,
                        int out) {
    if (N == 0 || out == 0) return 0;
    Plan *p = plan(out, N, in, 1, 0, CUBLASLT_EPILOGUE_BIAS, P, b);
    if (!p || !p->ok) return 0;
    run(p, b, y, W, x, 0.f);
    return 1;
}

} // namespace

bool cu_linear_bf16(void *y, cudaDataType yt, const __nv_bfloat16 *x, const __nv_bfloat16 *W,
                    const void *b, int N, int in, int out) {
    if (N == 0 || out == 0) return false;
    Plan *p = plan(out, N, in, 1, 0, b ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, -1, b, yt);
    if (!p || !p->ok) return false;
    run(p, b, y, W, x, 0.f);
    return true;
}

void cu_fill_linear(Ops *o, int p) {
    o->linear_bias_forward = p == 0   ? linear_bias_forward<0>
                             : p == 1 ? linear_bias_forward<1>
                                      : linear_bias_forward<2>;
}
#else
bool cu_linear_bf16(void *, cudaDataType, const __nv_bfloat16 *, const __nv_bfloat16 *, const void *,
                    int, int, int) {
    return false;
}
void cu_fill_linear(Ops *o, int p) {
    (void)p;
    o->linear_bias_forward = nullptr;
}
#endif
