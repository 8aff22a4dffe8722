/* What lowering (kernel.c) and the merging of lowered kernels (kernel_merge.c) share. Not a
 * public interface. */
#ifndef MAMLC_KERNEL_INTERNAL_H
#define MAMLC_KERNEL_INTERNAL_H

#include "kernel.h"

/* Appends op to k, or finds an identical op already there (local CSE; reductions are never
 * shared), and returns its index; -1 on failure. */
int kernel_append_op(Kernel *k, KOp op, MamlError *err);

/* k's store to buffer buf, or NULL. */
const KStore *kernel_store_of(const Kernel *k, int buf);

/* Merges the lowered loop kernels of p that can share a launch: each map into the reduction
 * that reads its results next, then sibling kernels over one loop space (kernel_merge.c). */
int kernels_merge(const Graph *g, KernelProgram *p, MamlError *err);

#endif
