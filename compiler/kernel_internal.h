/* What lowering (kernel.c) and the merging of lowered kernels (kernel_merge.c) share. Not a
 * public interface. */
#ifndef MAMLC_KERNEL_INTERNAL_H
#define MAMLC_KERNEL_INTERNAL_H

#include "kernel.h"

/* Whether two ops of a kernel of the given rank compute the same value (local CSE). */
bool kop_equal(const KOp *a, const KOp *b, int rank);

/* k's store to buffer buf, or NULL. */
const KStore *kernel_store_of(const Kernel *k, int buf);

/* Merges the lowered loop kernels of p that can share a launch: each map into the reduction
 * that reads its results next, then sibling kernels over one loop space (kernel_merge.c). */
int kernels_merge(const Graph *g, KernelProgram *p, MamlError *err);

#endif
