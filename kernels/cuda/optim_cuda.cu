// Optimizers: AdamW and Muon's momentum and update (baselines.md §10). The
// hyper-parameters are read from device memory (OptHyper) so a captured graph
// sees each step's learning rate. Newton-Schulz itself is matmuls and
// sumsq/scale_rsqrt from the dense group (optim.c drives it).
#include "cuda_common.cuh"

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, const OptHyper *h,
                             int wd_on) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float lr = h->lr, b1 = h->beta1, b2 = h->beta2;
    float decay = wd_on ? 1.f - lr * h->wd : 1.f;
    float gi = g[i];
    float mi = b1 * m[i] + (1.f - b1) * gi;
    float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi, v[i] = vi;
    float mhat = mi / h->bc1, vhat = vi / h->bc2;
    p[i] = p[i] * decay - lr * mhat / (sqrtf(vhat) + h->eps);
}
static void adamw(float *p, const float *g, float *m, float *v, long n, const OptHyper *h,
                  int wd_on) {
    cu_sums_flush(); // the gradients' pending column sums (cuda_common.cuh)
    adamw_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(p, g, m, v, n, h, wd_on);
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

__global__ void muon_apply_kernel(float *p, const float *o, long n, const OptHyper *h, float scale) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float lr = h->lr;
    p[i] = p[i] * (1.f - lr * h->wd) - lr * scale * o[i];
}
static void muon_apply(float *p, const float *o, long n, const OptHyper *h, float scale) {
    muon_apply_kernel<<<cu_blocks(n, 256), 256, 0, cu.stream>>>(p, o, n, h, scale);
    CKL();
}

void cu_fill_optim(Ops *o) {
    o->adamw = adamw;
    o->muon_momentum = muon_momentum;
    o->muon_apply = muon_apply;
}
