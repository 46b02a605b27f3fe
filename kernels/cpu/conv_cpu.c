/* CPU reference of the short causal depthwise convolution (baselines.md §1.1)
 * shared by Mamba, Mamba-2, the delta rule and MesaNet (ops->conv_*).
 * Sums in double; every output is summed by one loop in a fixed order. */
#include <math.h>
#include <stdlib.h>

#include "../../core/check.h"
#include "cpu.h"

/* below this many multiply-adds a parallel region costs more than it saves */
#define PAR_MIN 32768L

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

void cpu_conv_forward(real *y, real *pre, const real *x, const real *w, const real *b, int B,
                      int T, int C, int W, int silu) {
#pragma omp parallel for collapse(2) if ((long)B * T * C * (W + 1) > PAR_MIN)
    for (int bb = 0; bb < B; bb++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                double s = b ? b[c] : 0;
                if (W == 0) s += x[((size_t)bb * T + t) * C + c]; /* no conv: act only */
                for (int i = 0; i < W; i++) {
                    int src = t - W + 1 + i;
                    if (src >= 0) s += (double)w[(size_t)c * W + i] * x[((size_t)bb * T + src) * C + c];
                }
                size_t o = ((size_t)bb * T + t) * C + c;
                pre[o] = (real)s;
                y[o] = (real)(silu ? s * sigm(s) : s);
            }
}

static double act_grad(double z, int silu) {
    if (!silu) return 1;
    double s = sigm(z);
    return s * (1 + z * (1 - s));
}

void cpu_conv_backward(real *dx, real *dw, real *db, const real *dy, const real *x,
                       const real *w, const real *pre, int B, int T, int C, int W, int silu) {
    /* dpre = dy * act'(pre), once */
    size_t NC = (size_t)B * T * C;
    int par = (long)NC * (W + 1) > PAR_MIN;
    double *dp = xmalloc(sizeof(double) * NC);
#pragma omp parallel for if (par)
    for (size_t o = 0; o < NC; o++) dp[o] = dy[o] * act_grad(pre[o], silu);
    /* dw[c,i] = sum_t dpre_t x_{t-W+1+i}, db[c] = sum_t dpre_t: one channel per task */
#pragma omp parallel for if (par)
    for (int c = 0; c < C; c++) {
        for (int i = 0; i < W; i++) {
            double sw = 0;
            for (int bb = 0; bb < B; bb++)
                for (int t = W - 1 - i; t < T; t++)
                    sw += dp[((size_t)bb * T + t) * C + c] * x[((size_t)bb * T + t - W + 1 + i) * C + c];
            dw[(size_t)c * W + i] += (real)sw;
        }
        if (db) {
            double sb = 0;
            for (size_t n = 0; n < (size_t)B * T; n++) sb += dp[n * C + c];
            db[c] += (real)sb;
        }
    }
    /* dx_s = sum_i dpre_{s+W-1-i} w[c,i] (W == 0: dx = dpre) */
#pragma omp parallel for collapse(2) if (par)
    for (int bb = 0; bb < B; bb++)
        for (int s = 0; s < T; s++)
            for (int c = 0; c < C; c++) {
                double acc = W == 0 ? dp[((size_t)bb * T + s) * C + c] : 0;
                for (int i = 0; i < W; i++) {
                    int t = s + W - 1 - i;
                    if (t < T) acc += dp[((size_t)bb * T + t) * C + c] * w[(size_t)c * W + i];
                }
                dx[((size_t)bb * T + s) * C + c] += (real)acc;
            }
    free(dp);
}
