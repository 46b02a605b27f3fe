/* The CPU backend: the readable reference every other backend is tested
 * against. Matmuls go through CBLAS (OpenBLAS); the rest is plain loops,
 * parallelised with OpenMP only over independent outputs so that results do
 * not depend on the number of threads (bit-exact determinism). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/check.h"
#include "cpu.h"

#ifdef PLAB_DOUBLE
#define GEMM cblas_dgemm
#else
#define GEMM cblas_sgemm
#endif

/* ---- memory --------------------------------------------------------------------- */

static void *cpu_alloc(size_t bytes) { return xcalloc(1, bytes); }
static void cpu_release(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_sync(void) {}

/* ---- dense ---------------------------------------------------------------------- */

static void cpu_matmul(real *C, const real *A, const real *B, int M, int N, int K, int tA, int tB,
                       real alpha, real beta) {
    GEMM(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N, K,
         alpha, A, tA ? M : K, B, tB ? K : N, beta, C, N);
}

static void cpu_matmul_strided(real *C, const real *A, const real *B, int M, int N, int K, int tA,
                               int tB, real alpha, real beta, int batch, long sA, long sB, long sC) {
    for (int i = 0; i < batch; i++)
        cpu_matmul(C + i * sC, A + i * sA, B + i * sB, M, N, K, tA, tB, alpha, beta);
}

static void cpu_add_bias(real *y, const real *b, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) y[(size_t)n * C + c] += b[c];
}

static void cpu_bias_backward(real *db, const real *dy, int N, int C) {
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        real s = 0;
        for (int n = 0; n < N; n++) s += dy[(size_t)n * C + c];
        db[c] += s;
    }
}

static void cpu_axpy(real *y, const real *x, real a, long n) {
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

static void cpu_scale(real *x, real a, long n) {
    for (long i = 0; i < n; i++) x[i] *= a;
}

static void cpu_sumsq(real *out, const real *x, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += (double)x[i] * x[i];
    out[0] = (real)s;
}

static void cpu_scale_rsqrt(real *x, const real *s, real eps, long n) {
    real f = (real)(1.0 / (sqrt((double)s[0]) + eps));
    for (long i = 0; i < n; i++) x[i] *= f;
}

/* ---- layers --------------------------------------------------------------------- */

static void cpu_rmsnorm_forward(real *out, real *rstd, const real *x, const real *w, int N, int C,
                                real eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *xn = x + (size_t)n * C;
        real *on = out + (size_t)n * C;
        real ss = 0;
        for (int c = 0; c < C; c++) ss += xn[c] * xn[c];
        real r = (real)(1.0 / sqrt(ss / C + eps));
        rstd[n] = r;
        for (int c = 0; c < C; c++) on[c] = xn[c] * r * (w ? w[c] : 1);
    }
}

static void cpu_residual_rmsnorm_forward(real *out, const real *x, const real *y, real *norm_out,
                                         real *rstd, const real *w, int N, int C, real eps) {
    long n = (long)N * C;
#pragma omp parallel for
    for (long i = 0; i < n; i++) out[i] = x[i] + y[i];
    if (norm_out) cpu_rmsnorm_forward(norm_out, rstd, out, w, N, C, eps);
}

/* y = x r w, r = (mean x^2 + eps)^(-1/2): dx = r (w dy) - r^3/C x sum(w dy x); dw = sum dy x r */
static void cpu_rmsnorm_backward(real *dx, real *dw, const real *dout, const real *x, const real *w,
                                 const real *rstd, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *xn = x + (size_t)n * C, *dn = dout + (size_t)n * C;
        real *dxn = dx + (size_t)n * C;
        real r = rstd[n], dot = 0;
        for (int c = 0; c < C; c++) dot += (w ? w[c] : 1) * dn[c] * xn[c];
        for (int c = 0; c < C; c++)
            dxn[c] += r * (w ? w[c] : 1) * dn[c] - r * r * r / C * xn[c] * dot;
    }
    if (dw) {
#pragma omp parallel for
        for (int c = 0; c < C; c++) {
            real s = 0;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
            dw[c] += s;
        }
    }
}

static void cpu_embedding_forward(real *out, const int *tokens, const real *table, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)tokens[n] * C, sizeof(real) * (size_t)C);
}

/* sequential over tokens: several rows may hit one table row */
static void cpu_embedding_backward(real *dtable, const real *dout, const int *tokens, int N, int C,
                                   int V) {
    (void)V;
    for (int n = 0; n < N; n++) {
        real *row = dtable + (size_t)tokens[n] * C;
        for (int c = 0; c < C; c++) row[c] += dout[(size_t)n * C + c];
    }
}

static inline real sigm(real x) { return (real)(1.0 / (1.0 + exp(-(double)x))); }

static void cpu_swiglu_forward(real *h, const real *a, const real *b, int N, int F, int ld) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            size_t j = (size_t)n * ld + f;
            h[(size_t)n * F + f] = a[j] * sigm(a[j]) * b[j];
        }
}

static void cpu_swiglu_backward(real *da, real *db, const real *dh, const real *a, const real *b,
                                int N, int F, int ld) {
#pragma omp parallel for
    for (long i = 0; i < (long)N * F; i++) {
        size_t j = (size_t)(i / F) * ld + i % F;
        real s = sigm(a[j]);
        db[j] = dh[i] * a[j] * s;
        da[j] = dh[i] * b[j] * s * (1 + a[j] * (1 - s));
    }
}

static void cpu_gelu_forward(real *y, const real *x, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) y[i] = (real)(0.5 * x[i] * (1.0 + erf(x[i] * M_SQRT1_2)));
}

static void cpu_gelu_backward(real *dx, const real *dy, const real *x, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        double v = x[i];
        double g = 0.5 * (1.0 + erf(v * M_SQRT1_2)) + v * exp(-0.5 * v * v) * 0.3989422804014327;
        dx[i] = (real)(dy[i] * g);
    }
}

/* angles t * base^(-2i/rot) for t < T, i < rot/2, tabulated once per call */
static void rope_apply(real *x, int N, int T, int H, int hd, int ld, int rot, real base, real sgn) {
    int half = rot / 2;
    real *cs = xmalloc(sizeof(real) * 2 * (size_t)T * (size_t)half), *sn = cs + (size_t)T * half;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double ang = t * pow((double)base, -2.0 * i / rot);
            cs[t * half + i] = (real)cos(ang);
            sn[t * half + i] = sgn * (real)sin(ang);
        }
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *c = cs + (size_t)(n % T) * half, *s = sn + (size_t)(n % T) * half;
        for (int h = 0; h < H; h++) {
            real *v = x + (size_t)n * ld + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                real x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
    free(cs);
}

static void cpu_rope_forward(real *x, int N, int T, int H, int hd, int ld, int rot, real base) {
    rope_apply(x, N, T, H, hd, ld, rot, base, 1);
}

static void cpu_rope_backward(real *dx, int N, int T, int H, int hd, int ld, int rot, real base) {
    rope_apply(dx, N, T, H, hd, ld, rot, base, -1);
}

static void cpu_rmsnorm_rope_forward(real *out, real *rstd, const real *x, const real *w, int N,
                                     int T, int H, int hd, int rot, real base, real eps) {
    cpu_rmsnorm_forward(out, rstd, x, w, N * H, hd, eps);
    if (rot) cpu_rope_forward(out, N, T, H, hd, H * hd, rot, base);
}

/* AttnArgs.rope_rot: RoPE on q, k (and r) in place, then the attention core */
static void cpu_attention_forward_rope(const AttnArgs *args) {
    const AttnArgs a = attn_strides(args);
    if (a.rope_rot) {
        int N = a.B * a.T;
        cpu_rope_forward((real *)a.q, N, a.T, a.H, a.hd, a.ld_in, a.rope_rot, a.rope_base);
        cpu_rope_forward((real *)a.k, N, a.T, a.H, a.hd, a.ld_in, a.rope_rot, a.rope_base);
        if (a.r && a.rope_r && !a.r_roped)
            cpu_rope_forward((real *)a.r, N, a.T, a.H, a.hd, a.ld_r, a.rope_rot, a.rope_base);
    }
    cpu_attention_forward(args);
}

/* the attention core, then (AttnArgs.rope_rot) the inverse RoPE of dq, dk (and dr),
 * then (AttnArgs.dbias) the column sums of dq | dk | dv */
static void cpu_attention_backward_rope(const AttnArgs *args) {
    cpu_attention_backward(args);
    const AttnArgs a = attn_strides(args);
    int N = a.B * a.T, HD = a.H * a.hd;
    CHECK(a.grads_write || (!a.rope_rot && !a.dbias), "AttnArgs.rope_rot and dbias need grads_write");
    if (a.rope_rot) {
        cpu_rope_backward(a.dq, N, a.T, a.H, a.hd, a.ld_dqkv, a.rope_rot, a.rope_base);
        cpu_rope_backward(a.dk, N, a.T, a.H, a.hd, a.ld_dqkv, a.rope_rot, a.rope_base);
        if (a.r && a.rope_r)
            cpu_rope_backward(a.dr, N, a.T, a.H, a.hd, a.ld_out, a.rope_rot, a.rope_base);
    }
    if (a.dbias) {
        CHECK(a.dk == a.dq + HD && a.dv == a.dk + HD && a.ld_dqkv == 3 * HD,
              "AttnArgs.dbias needs dq, dk, dv side by side in rows of 3*H*hd");
        cpu_bias_backward(a.dbias, a.dq, N, 3 * HD);
    }
}

static void cpu_gate_forward(real *out, const real *x, const real *g, int N, int H, int hd) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            real s = sigm(g[(size_t)n * H + h]);
            for (int j = 0; j < hd; j++) {
                size_t i = ((size_t)n * H + h) * hd + j;
                out[i] = x[i] * s;
            }
        }
}

static void cpu_gate_backward(real *dx, real *dg, const real *dout, const real *x, const real *g,
                              int N, int H, int hd) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            real s = sigm(g[(size_t)n * H + h]), acc = 0;
            for (int j = 0; j < hd; j++) {
                size_t i = ((size_t)n * H + h) * hd + j;
                dx[i] += dout[i] * s;
                acc += dout[i] * x[i];
            }
            dg[(size_t)n * H + h] += acc * s * (1 - s);
        }
}

static void cpu_crossentropy(real *loss, real *dlogits, const real *logits, const int *targets,
                             const real *inv_count, int N, int V) {
    real *nll = xmalloc(sizeof(real) * (size_t)N);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *l = logits + (size_t)n * V;
        real *dl = dlogits + (size_t)n * V;
        int y = targets[n];
        nll[n] = 0;
        if (y < 0) {
            memset(dl, 0, sizeof(real) * (size_t)V);
            continue;
        }
        real mx = l[0];
        for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        double s = 0;
        for (int v = 0; v < V; v++) s += exp((double)(l[v] - mx));
        real lse = mx + (real)log(s);
        nll[n] = lse - l[y];
        for (int v = 0; v < V; v++) dl[v] = (real)exp((double)(l[v] - lse)) * inv_count[0];
        dl[y] -= inv_count[0];
    }
    double tot = 0; /* fixed order: deterministic */
    for (int n = 0; n < N; n++) tot += nll[n];
    loss[0] += (real)(tot * inv_count[0]);
    free(nll);
}

static void cpu_predict(int *pred, real *nll, const real *logits, const int *targets, int N, int V) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *l = logits + (size_t)n * V;
        int best = 0;
        real mx = l[0];
        for (int v = 1; v < V; v++)
            if (l[v] > mx) mx = l[v], best = v;
        pred[n] = best;
        nll[n] = 0;
        if (targets[n] >= 0) {
            double s = 0;
            for (int v = 0; v < V; v++) s += exp((double)(l[v] - mx));
            nll[n] = mx + (real)log(s) - l[targets[n]];
        }
    }
}

/* ---- optimizers ----------------------------------------------------------------- */

static void cpu_adamw(real *p, const real *g, real *m, real *v, long n, const OptHyper *h, int wd_on) {
    real decay = wd_on ? 1 - h->lr * h->wd : 1;
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        m[i] = h->beta1 * m[i] + (1 - h->beta1) * g[i];
        v[i] = h->beta2 * v[i] + (1 - h->beta2) * g[i] * g[i];
        real mhat = m[i] / h->bc1, vhat = v[i] / h->bc2;
        p[i] = p[i] * decay - h->lr * mhat / ((real)sqrt((double)vhat) + h->eps);
    }
}

static void cpu_muon_momentum(real *u, real *buf, const real *g, long n, real mu, int nesterov,
                              int ema) {
    for (long i = 0; i < n; i++) {
        buf[i] = ema ? mu * buf[i] + (1 - mu) * g[i] : mu * buf[i] + g[i];
        if (!nesterov) u[i] = buf[i];
        else u[i] = ema ? (1 - mu) * g[i] + mu * buf[i] : g[i] + mu * buf[i];
    }
}

static void cpu_muon_apply(real *p, const real *o, long n, const OptHyper *h, real scale) {
    real decay = 1 - h->lr * h->wd;
    for (long i = 0; i < n; i++) p[i] = p[i] * decay - h->lr * scale * o[i];
}

static const Ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .release = cpu_release,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .matmul = cpu_matmul,
    .matmul_strided = cpu_matmul_strided,
    .add_bias = cpu_add_bias,
    .bias_backward = cpu_bias_backward,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .sumsq = cpu_sumsq,
    .scale_rsqrt = cpu_scale_rsqrt,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .residual_rmsnorm_forward = cpu_residual_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .rope_forward = cpu_rope_forward,
    .rmsnorm_rope_forward = cpu_rmsnorm_rope_forward,
    .rope_backward = cpu_rope_backward,
    .gate_forward = cpu_gate_forward,
    .gate_backward = cpu_gate_backward,
    .conv_forward = cpu_conv_forward,
    .conv_backward = cpu_conv_backward,
    .crossentropy = cpu_crossentropy,
    .predict = cpu_predict,
    .attention_forward = cpu_attention_forward_rope,
    .attention_backward = cpu_attention_backward_rope,
    .adamw = cpu_adamw,
    .muon_momentum = cpu_muon_momentum,
    .muon_apply = cpu_muon_apply,
    .family = &cpu_family_ops, /* kernels/cpu/family_cpu.c */
    .scan = &cpu_scan_ops, /* kernels/cpu/scan_cpu.c */
    .delta = &cpu_delta_ops, /* kernels/cpu/delta_cpu.c */
};

const Ops *ops_cpu(void) { return &cpu_ops; }
