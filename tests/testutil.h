/* Shared test helpers: random inputs, relative errors, finite-difference
 * gradient checks (run in the double-precision build), and small configs. */
#ifndef PLAB_TESTUTIL_H
#define PLAB_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <gsl/gsl_rng.h>

#include "../core/config.h"
#include "../kernels/ops.h"
#include "../models/model.h"

gsl_rng *test_rng(unsigned long seed);
void fill_randn(real *x, size_t n, gsl_rng *r, double scale);
/* max_i |a_i - b_i| / max(|a|_inf, |b|_inf, floor) */
double max_rel_err(const real *a, const real *b, size_t n, double floor);
/* ||a - b|| / ||b|| */
double norm_rel_err(const real *a, const real *b, size_t n);

/* A resolved config from "key=value key=value ..." (fails the test on error). */
Config *test_config(const char *args);

/* Asserts that "key=value ..." is rejected before training (config_resolve)
 * with a message containing `expect`; prints the message. */
void assert_config_rejected(const char *args, const char *expect);

/* Finite-difference check of d loss / d x for a scalar function of a buffer:
 * loss(ctx) recomputes the loss from the current x; grad holds the analytic
 * gradient. Checks `samples` coordinates (all when samples <= 0) by central
 * differences with step h; returns the worst error
 * |g - fd| / max(|g|, |fd|, 1e-6 + rel_floor * max|grad|). */
double gradcheck(double (*loss)(void *ctx), void *ctx, real *x, const real *grad, size_t n,
                 int samples, double h, gsl_rng *r);

/* Whole-model check: one batch of random tokens/targets on the CPU in double;
 * compares every tensor's analytic gradient on `per_tensor` sampled entries
 * with central differences. Prints one line per tensor; returns the worst
 * relative error. */
double model_gradcheck(const char *config_args, int B, int per_tensor, int verbose);

/* model_gradcheck of "base extra" with `per_tensor` samples per tensor
 * (VERBOSE=1 prints every tensor); prints the worst error and asserts < tol. */
void assert_model_grad(const char *base, const char *extra, int per_tensor, double tol);

/* One sequence of T tokens (random tokens and targets, fixed seed) through the
 * model of "key=value ..." on the CPU: asserts a finite positive loss and no
 * non-finite gradient (long-sequence numerics of the recurrent mixers). */
void assert_long_sequence_finite(const char *args, int T);

#endif
