/* Small layers built from the op table, shared by the model and the mixers. */
#ifndef PLAB_LAYERS_H
#define PLAB_LAYERS_H

#include "../kernels/ops.h"

/* y[N,out] = x[N,in] W[out,in]^T (+ b[out]) (writes) */
static inline void linear_forward(const Ops *ops, real *y, const real *x, const real *W,
                                  const real *b, int N, int in, int out) {
    if (b && ops->linear_bias_forward && ops->linear_bias_forward(y, x, W, b, N, in, out)) return;
    ops->matmul(y, x, W, N, out, in, 0, 1, 1, 0);
    if (b) ops->add_bias(y, b, N, out);
}

/* dx += dy W (dx_beta 1) or dx = dy W (0: no zeroing pass first); dW += dy^T x;
 * db += colsum dy. dx may be NULL. */
static inline void linear_backward_beta(const Ops *ops, real *dx, real dx_beta, real *dW, real *db,
                                        const real *dy, const real *x, const real *W, int N, int in,
                                        int out) {
    if (dx) ops->matmul(dx, dy, W, N, in, out, 0, 0, 1, dx_beta);
    if (ops->linear_param_grad) {
        ops->linear_param_grad(dW, db, dy, x, out, in, N);
        return;
    }
    ops->matmul(dW, dy, x, out, in, N, 1, 0, 1, 1);
    if (db) ops->bias_backward(db, dy, N, out);
}
static inline void linear_backward(const Ops *ops, real *dx, real *dW, real *db, const real *dy,
                                   const real *x, const real *W, int N, int in, int out) {
    linear_backward_beta(ops, dx, 1, dW, db, dy, x, W, N, in, out);
}

/* dx[N,C] = (not +=) the RMSNorm input gradient, dw += its weight gradient */
static inline void rmsnorm_backward_write(const Ops *ops, real *dx, real *dw, const real *dout,
                                          const real *x, const real *w, const real *rstd, int N,
                                          int C) {
    if (ops->rmsnorm_backward_write) {
        ops->rmsnorm_backward_write(dx, dw, dout, x, w, rstd, N, C);
        return;
    }
    ops->zero(dx, sizeof(real) * (size_t)N * C);
    ops->rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
}

#endif
