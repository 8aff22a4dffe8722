/* The memory plan: every buffer of a KernelProgram gets an offset in one arena.
 *
 * Liveness runs over the kernel sequence: graph inputs are live from before the first kernel
 * (they are copied in), a buffer is live from the kernel that writes it to the last kernel that
 * reads it, outputs until after the last kernel (they are copied out). Buffers whose lifetimes
 * overlap never share bytes, except that a loop kernel may write a result (each of its stores) over
 * an operand that dies there when it reads exactly the element it writes (in place). Placement is
 * greedy best-fit by decreasing size.
 *
 * Two blocks are fixed and reserved for the whole step, so that a backend moves each in one copy:
 *   inputs, from offset 0: the data inputs (the task batch), then the inputs that an output of the
 *     same name updates (parameters, optimizer state: the feedback), then the other inputs;
 *   at outputs_at: the outputs held in buffers of their own, the feedback outputs first in their
 *     inputs' order, so [data_bytes, data_bytes + feedback_bytes) of the inputs and
 *     [outputs_at, outputs_at + feedback_bytes) line up byte for byte.
 * An output that is an input buffer itself lies in the inputs block. No in-place write takes over
 * an input or an output. */
#ifndef MAMLC_MEMPLAN_H
#define MAMLC_MEMPLAN_H

#include <stddef.h>
#include <stdint.h>

#include "kernel.h"

#define MEMPLAN_ALIGN 64 /* bytes: every buffer starts on a cache line */

typedef struct {
    int n_bufs;
    size_t elem_size;
    int64_t *offset;   /* per buffer: byte offset in the arena */
    int64_t *bytes;    /* per buffer: size rounded up to MEMPLAN_ALIGN */
    int *first, *last; /* per buffer: writing kernel (-1: input), last reader (n_kernels: output) */
    int *inplace;      /* per buffer: the operand whose bytes it takes over in place, or -1 */
    int n_inplace;
    int64_t arena_bytes;    /* the plan's peak: the arena's size */
    int64_t input_bytes;    /* graph inputs: the block [0, input_bytes) */
    int64_t data_bytes;     /* its data inputs: [0, data_bytes) */
    int64_t feedback_bytes; /* the inputs updated by outputs: [data_bytes, + feedback_bytes) */
    int64_t outputs_at, outputs_bytes; /* the outputs block */
    int64_t temp_bytes;                /* sum of every intermediate (and output) buffer */
    int64_t lower_bound;               /* max over time of the bytes live at once */
} MemPlan;

/* Plans p's buffers for elements of elem_size bytes. */
int memplan_build(const KernelProgram *p, size_t elem_size, MemPlan *out, MamlError *err);

void memplan_free(MemPlan *m);

/* Whether buffers a and b share any byte. */
bool memplan_overlap(const MemPlan *m, int a, int b);

#endif
