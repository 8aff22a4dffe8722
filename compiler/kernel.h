/* The kernel IR: what the graph becomes before a renderer (C or CUDA) turns it into source.
 *
 * A program is a sequence of kernels over numbered buffers (one per materialized graph node; graph
 * inputs are buffers too). There are two kinds of kernel:
 *
 *  - LOOP kernels: an iteration space (dims, some of them flagged as reduce axes) and a small
 *    scalar SSA body. Loads address a buffer with one stride per loop axis (broadcast = stride 0,
 *    permute = permuted strides) plus an offset; the body computes elementwise ops, compares and
 *    selects; a REDUCE op accumulates its operand over the reduce axes. Ops of phase INNER run for
 *    every point of the full space (the reduction's prologue), ops of phase OUTER once per point of
 *    the output space (the epilogue, or the whole body when there is no reduction). Stores write
 *    phase-OUTER values with per-axis strides (0 on reduce axes), or phase-INNER values at every
 *    point of the full space.
 *  - TEMPLATE kernels (conv family, matmul, pool family): rendered from a template per kind with
 *    the parameters below, reading and writing whole contiguous buffers.
 *
 * Fusion only changes which graph nodes each kernel covers (kernels_lower's grouping); renderers
 * see the same IR either way. */
#ifndef MAMLC_KERNEL_H
#define MAMLC_KERNEL_H

#include <stdbool.h>
#include <stdint.h>

#include "graph.h"

typedef enum {
    KOP_LOAD,  /* buf[offset + sum_i idx_i * strides[i]] */
    KOP_CONST, /* value */
    KOP_INDEX, /* the loop index of `axis`, as a real */
    KOP_ADD,
    KOP_SUB,
    KOP_MUL,
    KOP_DIV,
    KOP_NEG,
    KOP_EXP,
    KOP_LOG,
    KOP_RSQRT,
    KOP_SQRT,
    KOP_GT,         /* 1 if a > b else 0 */
    KOP_EQ,         /* 1 if a == b else 0 */
    KOP_SELECT,     /* a != 0 ? b : c */
    KOP_REDUCE_SUM, /* sum of src over the kernel's reduce axes */
    KOP_REDUCE_MAX, /* max of src (NaN ignored, as fmax) over the reduce axes */
    KOP_COUNT
} KOpKind;

typedef enum { KPHASE_INNER, KPHASE_OUTER } KPhase;

typedef struct {
    KOpKind op;
    KPhase phase;
    int src[3];
    double value;              /* CONST */
    int axis;                  /* INDEX */
    int buf;                   /* LOAD */
    int64_t offset;            /* LOAD, in elements */
    int64_t strides[MAX_RANK]; /* LOAD, per loop axis, in elements */
} KOp;

typedef struct {
    int buf;
    int src;      /* op index, of the store's phase */
    KPhase phase; /* OUTER: once per output point; INNER: at every point of the full space (the
                     values of a map fused ahead of a reduction, see kernels_lower) */
    int64_t strides[MAX_RANK];
} KStore;

typedef enum {
    KERNEL_LOOP,
    KERNEL_CONV2D,
    KERNEL_CONV2D_GRAD_INPUT,
    KERNEL_CONV2D_GRAD_WEIGHT,
    KERNEL_MATMUL,
    KERNEL_MAX_POOL2D,
    KERNEL_POOL_SCATTER,
    KERNEL_POOL_GATHER,
    KERNEL_KIND_COUNT
} KernelKind;

/* Parameters of the template kernels. Conv family: x [T,N,C,H,W], w [T,O,C,KH,KW],
 * y [T,N,O,HO,WO]. Matmul: batch x [M,K]x[K,N] with transposes. Pool: planes x [H,W] -> [HO,WO]. */
typedef struct {
    int64_t T, N, C, H, W, O, KH, KW, HO, WO;
    int stride, padding, kernel;
    int64_t batch, m, n, k;
    bool trans_a, trans_b;
    int64_t planes;
} KTemplate;

typedef struct {
    KernelKind kind;
    char name[48]; /* unique C identifier, e.g. "k12_conv2d" */
    int root;      /* the graph node whose value the kernel stores (last, for a loop kernel) */
    int *nodes;    /* graph nodes the kernel computes (root last) */
    int n_nodes;
    /* LOOP */
    int rank;
    int64_t dims[MAX_RANK];
    uint32_t reduce_axes; /* bit i: loop axis i is reduced */
    KOp *ops;
    int n_ops, cap_ops;
    KStore *stores; /* the root's last; others: fused graph outputs, joined sibling kernels */
    int n_stores;
    /* TEMPLATE: in[0], in[1] are buffers (x/w, dy/w, x/dy, a/b, x/z), out the result buffer */
    int in[2];
    int n_in;
    int out;
    KTemplate t;
} Kernel;

typedef enum { BUF_INPUT, BUF_TEMP } BufKind;

typedef struct {
    BufKind kind;
    int node;         /* the graph node the buffer holds */
    int64_t numel;    /* in elements of the backend's real type */
    const char *name; /* BUF_INPUT: the graph input's name (owned by the graph) */
    bool is_data;     /* BUF_INPUT: a data input (INPUT_DATA: the task batch) */
    bool is_output;   /* read after the last kernel */
} KBuffer;

typedef struct {
    const char *name; /* owned by the graph */
    int buf;
    int node;
    Shape shape;
} KOutput;

typedef struct {
    Kernel *kernels;
    int n_kernels;
    KBuffer *bufs;
    int n_bufs;
    KOutput *outputs;
    int n_outputs;
    int *node_buf; /* per graph node: its buffer, or -1 (inlined, constant, dead) */
    int n_graph_nodes;
    int n_live_nodes; /* nodes some output depends on */
    bool fused;
} KernelProgram;

/* Lowers g to kernels. fuse=false: one kernel per computing node (reshape and stop_grad alias
 * their input's buffer, constants are inlined into their consumers). fuse=true: elementwise
 * chains, views and constants are inlined into the kernel of their single consumer group, and
 * reductions take their elementwise prologue and epilogue; an elementwise graph output whose
 * consumers are all in one loop kernel is stored by that kernel too, and a loop kernel joins an
 * earlier one over the same loop space that reads a common buffer (sibling reductions, maps of
 * one input), or any earlier one over the same small loop space (launches that move almost no
 * memory), when it may run there, and a reduction takes in the map just before it when it
 * reads the map's results only where the map writes them. Dead nodes are dropped. */
int kernels_lower(const Graph *g, bool fuse, KernelProgram *out, MamlError *err);

void kernel_program_free(KernelProgram *p);

/* True when kernel k may write its store to buffer w over buffer buf (an operand dying at k): a
 * loop kernel whose every load of buf reads exactly the element it then stores to w (a store at
 * every point: a kernel without reduction, or an inner store). */
bool kernel_can_write_in_place(const Kernel *k, int w, int buf);

/* Buffers a kernel reads (up to max; returns the count, each buffer once). */
int kernel_reads(const Kernel *k, int *bufs, int max);

/* The buffer of the kernel's root, the one buffer a template kernel writes. */
int kernel_writes(const Kernel *k);

/* Every buffer a kernel writes (up to max; returns the count): a loop kernel's stores in order,
 * the root's last; several when outputs are fused into it (kernels_lower). */
int kernel_stores(const Kernel *k, int *bufs, int max);

/* Estimated floating-point operations and bytes moved (elem_size bytes per element). */
double kernel_flops(const Kernel *k);
double kernel_bytes(const KernelProgram *p, const Kernel *k, int elem_size);

/* A short description of the fused nodes, e.g. "mul+exp+reduce_sum" (truncated to size). */
void kernel_describe(const Graph *g, const Kernel *k, char *buf, int size);

/* Whether kind is one of the convolution family (forward, grad-input, grad-weight). */
bool kernel_is_conv(KernelKind kind);

const char *kernel_kind_name(KernelKind kind);
const char *kop_name(KOpKind op);

#endif
