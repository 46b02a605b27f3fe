/* Entry points of the CPU reference backend, shared by its files. */
#ifndef PLAB_CPU_H
#define PLAB_CPU_H
#include "../ops.h"
void cpu_attention_forward(const AttnArgs *a);
void cpu_attention_backward(const AttnArgs *a);
#endif
