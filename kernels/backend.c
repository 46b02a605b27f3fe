/* Backend selection from the `device` key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#ifndef PLAB_HAVE_CUDA
const Ops *ops_cuda(int device, const char *precision, char *why, size_t whylen) {
    (void)device, (void)precision;
    snprintf(why, whylen, "this plab was built without CUDA (no nvcc at build time)");
    return NULL;
}
#endif

const Ops *ops_for_device(const char *device, const char *precision, char *why, size_t whylen) {
    if (!strcmp(device, "cpu")) return ops_cpu();
    if (!strncmp(device, "cuda", 4)) {
#ifdef PLAB_DOUBLE
        snprintf(why, whylen, "the double-precision build has no CUDA backend");
        return NULL;
#else
        int n = device[4] == ':' ? atoi(device + 5) : 0;
        return ops_cuda(n, precision, why, whylen);
#endif
    }
    snprintf(why, whylen, "unknown device '%s'", device);
    return NULL;
}
