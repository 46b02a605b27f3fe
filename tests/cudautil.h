/* Shared helpers of the CPU-vs-CUDA parity tests (tests/cuda_*.c).
 * cuda_setup (a cmocka group setup) fills CPU, GPU (fp32) and GPU16 (bf16);
 * without a usable GPU every test calling NEED_GPU() is skipped with the reason
 * printed, and PLAB_REQUIRE_GPU=1 (make test-cuda) turns that into a failure. */
#ifndef PLAB_CUDAUTIL_H
#define PLAB_CUDAUTIL_H

#include "testutil.h"

extern const Ops *CPU, *GPU, *GPU16;
extern char cuda_why[256];
#define BF16_EPS (1.0 / 256)

int cuda_setup(void **state);
int need_gpu(void);
#define NEED_GPU()                                                                          \
    do {                                                                                    \
        if (!need_gpu()) skip();                                                            \
    } while (0)

/* device copy of a host buffer (backend o) */
void *up(const Ops *o, const void *h, size_t bytes);
/* host copy (malloc'd) of n reals of device memory */
real *down(const Ops *o, const real *d, size_t n);
/* n normal(0, s) reals (malloc'd) */
real *randv(gsl_rng *r, size_t n, double s);
real *host_copy(const real *x, size_t n);
/* Compares a CPU result (host) with a GPU result (device): prints both errors,
 * fails unless norm rel <= bound and max rel <= 10 bound; returns norm rel. */
double cmp(const char *what, const real *cpu, const real *gpu_dev, size_t n, double bound);

/* Whole model "task.vocab_size=16 task.seq_len=40 d32 4 heads 2 layers <extra>" on
 * the CPU and on backend g with the same parameters and batch: loss, every
 * parameter gradient and one optimizer update must agree within `bound`. */
void model_case(const char *extra, const Ops *g, double bound);
/* model_case of each of the n entries of cases */
void run_model_cases(const char *const *cases, size_t n, const Ops *g, double bound);
#define NCASES(a) (sizeof(a) / sizeof *(a))

#endif
