/* Entry points of the CPU reference backend, shared by its files. */
#ifndef PLAB_CPU_H
#define PLAB_CPU_H
#include "../ops.h"
void cpu_attention_forward(const AttnArgs *a);
void cpu_attention_backward(const AttnArgs *a);
void cpu_conv_forward(real *y, real *pre, const real *x, const real *w, const real *b, int B,
                      int T, int C, int W, int silu); /* conv_cpu.c */
void cpu_conv_backward(real *dx, real *dw, real *db, const real *dy, const real *x,
                       const real *w, const real *pre, int B, int T, int C, int W, int silu);
extern const DeltaOps cpu_delta_ops; /* delta_cpu.c */
extern const ScanOps cpu_scan_ops;   /* scan_cpu.c */
extern const FamilyOps cpu_family_ops; /* family_cpu.c */
#endif
