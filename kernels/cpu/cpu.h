/* Entry points of the CPU reference backend, shared by its files. */
#ifndef PLAB_CPU_H
#define PLAB_CPU_H
#include "../ops.h"
void cpu_attention_forward(const AttnArgs *a);
void cpu_attention_backward(const AttnArgs *a);
extern const DeltaOps cpu_delta_ops; /* delta_cpu.c */
extern const ScanOps cpu_scan_ops;   /* scan_cpu.c */
extern const FamilyOps cpu_family_ops; /* family_cpu.c */
#endif
