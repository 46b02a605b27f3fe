// Optimizers: AdamW and Muon's momentum and update (baselines.md §10). The
// hyper-parameters are read from device memory (OptHyper) so a captured graph
// sees each step's learning rate. Newton-Schulz itself is matmuls and
// sumsq/scale_rsqrt from the dense group (optim.c drives it).
#include "cuda_common.cuh"

// one element's AdamW update; m and v updated in place, the new parameter returned
__device__ __forceinline__ float adamw_one(float p, float g, float &m, float &v, const OptHyper &h,
                                           float decay) {
    m = h.beta1 * m + (1.f - h.beta1) * g;
    v = h.beta2 * v + (1.f - h.beta2) * g * g;
    const float mhat = m / h.bc1, vhat = v / h.bc2;
    return p * decay - h.lr * mhat / (sqrtf(vhat) + h.eps);
}
// a thread per element; pb: the parameters' bf16 copy, written as they change (or nullptr)
__global__ void adamw_kernel(float *p, __nv_bfloat16 *pb, const float *g, float *m, float *v, long n,
                             const OptHyper *hp, int wd_on) {
    const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const OptHyper h = *hp;
    float mi = m[i], vi = v[i];
    const float y = adamw_one(p[i], g[i], mi, vi, h, wd_on ? 1.f - h.lr * h.wd : 1.f);
    m[i] = mi, v[i] = vi, p[i] = y;
    if (pb) pb[i] = __float2bfloat16_rn(y);
}
// 4 elements a thread (float4 loads and stores), the last n % 4 one a thread
__global__ void adamw4_kernel(float *p, __nv_bfloat16 *pb, const float *g, float *m, float *v, long n,
                              const OptHyper *hp, int wd_on) {
    const long t = blockIdx.x * (long)blockDim.x + threadIdx.x, n4 = n / 4;
    const OptHyper h = *hp;
    const float decay = wd_on ? 1.f - h.lr * h.wd : 1.f;
    if (t < n4) {
        const float4 gi = ld4(g + 4 * t);
        float4 pi = ld4(p + 4 * t), mi = ld4(m + 4 * t), vi = ld4(v + 4 * t);
        pi.x = adamw_one(pi.x, gi.x, mi.x, vi.x, h, decay);
        pi.y = adamw_one(pi.y, gi.y, mi.y, vi.y, h, decay);
        pi.z = adamw_one(pi.z, gi.z, mi.z, vi.z, h, decay);
        pi.w = adamw_one(pi.w, gi.w, mi.w, vi.w, h, decay);
        st4(p + 4 * t, pi), st4(m + 4 * t, mi), st4(v + 4 * t, vi);
        if (pb) st4(pb + 4 * t, pi);
        return;
    }
    const long i = 4 * n4 + (t - n4);
    if (i >= n) return;
    float mi = m[i], vi = v[i];
    const float y = adamw_one(p[i], g[i], mi, vi, h, decay);
    m[i] = mi, v[i] = vi, p[i] = y;
    if (pb) pb[i] = __float2bfloat16_rn(y);
}
static void adamw(float *p, const float *g, float *m, float *v, long n, const OptHyper *h,
                  int wd_on) {
    cu_sums_flush(); // the gradients' pending column sums (cuda_common.cuh)
    __nv_bfloat16 *pb = cu_params_bf16_out(p, n);
    if (cu_aligned16(p, g, m, v) && (uintptr_t)pb % 8 == 0)
        adamw4_kernel<<<cu_blocks(n / 4 + n % 4, 256), 256, 0, cu.stream>>>(p, pb, g, m, v, n, h, wd_on);
    else
        adamw_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(p, pb, g, m, v, n, h, wd_on);
    CKL();
}

__global__ void muon_momentum_kernel(float *u, float *buf, const float *g, long n, float mu,
                                     int nesterov, int ema) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float b = ema ? mu * buf[i] + (1.f - mu) * g[i] : mu * buf[i] + g[i];
    buf[i] = b;
    u[i] = !nesterov ? b : ema ? (1.f - mu) * g[i] + mu * b : g[i] + mu * b;
}
static void muon_momentum(float *u, float *buf, const float *g, long n, float mu, int nesterov,
                          int ema) {
    cu_sums_flush();
    muon_momentum_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(u, buf, g, n, mu, nesterov, ema);
    CKL();
}

__global__ void muon_apply_kernel(float *p, __nv_bfloat16 *pb, const float *o, long n, const OptHyper *h,
                                  float scale) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float lr = h->lr;
    p[i] = p[i] * (1.f - lr * h->wd) - lr * scale * o[i];
    if (pb) pb[i] = __float2bfloat16_rn(p[i]);
}
static void muon_apply(float *p, const float *o, long n, const OptHyper *h, float scale) {
    muon_apply_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(p, cu_params_bf16_out(p, n), o, n, h,
                                                                 scale);
    CKL();
}

void cu_fill_optim(Ops *o) {
    o->adamw = adamw;
    o->muon_momentum = muon_momentum;
    o->muon_apply = muon_apply;
}
