// Placeholder until the CUDA backend lands: reports that no op is available.
#include <cstdio>
#include <cuda_runtime.h>
#include "../ops.h"

extern "C" const Ops *ops_cuda(int device, const char *precision, char *why, size_t whylen) {
    (void)precision;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        snprintf(why, whylen, "no CUDA device is visible");
        return nullptr;
    }
    snprintf(why, whylen, "the CUDA backend is not implemented yet (device %d)", device);
    return nullptr;
}
