/* Merging lowered loop kernels that can share a launch (kernel_internal.h: kernels_merge):
 * lowering (kernel.c) puts every materialized node in a kernel of its own, and two patterns of the
 * training graphs then pay a launch and a pass over memory each time they occur. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_internal.h"

/* ---- sibling kernels: loop kernels over one iteration space that read a common buffer ----
 *
 * Batch norm's backward pass sums dy and dy * xhat over the same axes in two kernels, the forward
 * pass several maps read one activation: each pair reads the buffer twice and pays two launches.
 * A later kernel j joins an earlier kernel i (its body is appended, loads shared by local CSE,
 * its stores placed before i's root store) when both have the same loop space and reduce axes,
 * share a read or are both small, and j can run at i's place: no kernel from i up to j writes
 * what j reads. Small kernels (the inner SGD step of each per-task batch-norm parameter and conv
 * bias, their sums over tasks) cost a launch each and almost no memory traffic, so joining them
 * saves launches even without a common read. */

#define MERGE_MAX_REDUCES 4 /* accumulators of one kernel (registers; CUDA shared memory) */
#define MERGE_MAX_OPS 256   /* keeps a merged body about the size of the larger fused ones */
#define MERGE_MAX_BUFS 32   /* buffers of one kernel, well below the CUDA renderer's limit */
#define MERGE_WINDOW 8      /* kernels j may move up: a longer move keeps its results live longer */
#define MERGE_SMALL 65536   /* loop points of a launch-bound kernel: 256 KB of floats */

static bool same_space(const Kernel *a, const Kernel *b) {
    if (a->kind != KERNEL_LOOP || b->kind != KERNEL_LOOP || a->rank != b->rank) return false;
    if (a->reduce_axes != b->reduce_axes) return false;
    return memcmp(a->dims, b->dims, (size_t)a->rank * sizeof a->dims[0]) == 0;
}

static bool small(const Kernel *k) {
    int64_t points = 1;
    for (int a = 0; a < k->rank; a++) points *= k->dims[a];
    return points <= MERGE_SMALL;
}

static int count_reduces(const Kernel *k) {
    int n = 0;
    for (int i = 0; i < k->n_ops; i++)
        n += k->ops[i].op == KOP_REDUCE_SUM || k->ops[i].op == KOP_REDUCE_MAX;
    return n;
}

static bool reads_buf(const Kernel *k, int buf) {
    for (int i = 0; i < k->n_ops; i++)
        if (k->ops[i].op == KOP_LOAD && k->ops[i].buf == buf) return true;
    return false;
}

static bool shares_read(const Kernel *a, const Kernel *b) {
    for (int i = 0; i < b->n_ops; i++)
        if (b->ops[i].op == KOP_LOAD && reads_buf(a, b->ops[i].buf)) return true;
    return false;
}

/* Whether kernel k (of any kind) writes something j reads (then j cannot run before k). */
static bool feeds(const Kernel *k, const Kernel *j) {
    if (k->kind != KERNEL_LOOP) return reads_buf(j, k->out);
    for (int s = 0; s < k->n_stores; s++)
        if (reads_buf(j, k->stores[s].buf)) return true;
    return false;
}

static bool fits(const Kernel *a, const Kernel *b) {
    int bufs[2 * MERGE_MAX_BUFS];
    if (a->n_ops + b->n_ops > MERGE_MAX_OPS) return false;
    if (count_reduces(a) + count_reduces(b) > MERGE_MAX_REDUCES) return false;
    int n = kernel_reads(a, bufs, MERGE_MAX_BUFS);
    n += kernel_reads(b, bufs + n, MERGE_MAX_BUFS);
    return n + a->n_stores + b->n_stores <= MERGE_MAX_BUFS;
}

/* The kernel before j that j may join, or -1. */
static int merge_target(const KernelProgram *p, int j) {
    const Kernel *kj = &p->kernels[j];
    for (int i = j - 1; i >= 0 && i >= j - MERGE_WINDOW; i--) {
        const Kernel *ki = &p->kernels[i];
        if (feeds(ki, kj)) return -1;
        if (same_space(ki, kj) && (shares_read(ki, kj) || (small(ki) && small(kj))) && fits(ki, kj))
            return i;
    }
    return -1;
}

/* src's stores go before dst's root store, which stays last (kernel_stores). */
static int merge_stores(Kernel *dst, const Kernel *src, const int *map, MamlError *err) {
    int n = dst->n_stores + src->n_stores;
    KStore *st = maml_realloc(dst->stores, (size_t)n, sizeof *st, err);
    if (!st) return -1;
    KStore root = st[dst->n_stores - 1];
    for (int s = 0; s < src->n_stores; s++) {
        st[dst->n_stores - 1 + s] = src->stores[s];
        st[dst->n_stores - 1 + s].src = map[src->stores[s].src];
    }
    st[n - 1] = root;
    dst->stores = st;
    dst->n_stores = n;
    return 0;
}

static int merge_nodes(Kernel *dst, const Kernel *src, MamlError *err) {
    int *nodes =
        maml_realloc(dst->nodes, (size_t)(dst->n_nodes + src->n_nodes), sizeof *nodes, err);
    if (!nodes) return -1;
    memcpy(nodes + dst->n_nodes, src->nodes, (size_t)src->n_nodes * sizeof *nodes);
    dst->nodes = nodes;
    dst->n_nodes += src->n_nodes;
    return 0;
}

static int merge_into(Kernel *dst, const Kernel *src, MamlError *err) {
    int *map = maml_alloc(((size_t)src->n_ops + 1) * sizeof *map, err);
    if (!map) return -1;
    int rc = 0;
    for (int o = 0; rc == 0 && o < src->n_ops; o++) {
        KOp op = src->ops[o];
        for (int q = 0; q < 3; q++)
            if (op.src[q] >= 0) op.src[q] = map[op.src[q]];
        map[o] = kernel_append_op(dst, op, err);
        if (map[o] < 0) rc = -1;
    }
    if (rc == 0) rc = merge_stores(dst, src, map, err);
    if (rc == 0) rc = merge_nodes(dst, src, err);
    free(map);
    return rc;
}

static void drop_kernel(KernelProgram *p, int j) {
    free(p->kernels[j].ops);
    free(p->kernels[j].stores);
    free(p->kernels[j].nodes);
    memmove(&p->kernels[j], &p->kernels[j + 1],
            (size_t)(p->n_kernels - j - 1) * sizeof *p->kernels);
    p->n_kernels--;
}

static int merge_siblings(const Graph *g, KernelProgram *p, MamlError *err) {
    for (int j = 1; j < p->n_kernels; j++) {
        int i = merge_target(p, j);
        if (i < 0) continue;
        if (merge_into(&p->kernels[i], &p->kernels[j], err)) return -1;
        drop_kernel(p, j--);
    }
    for (int i = 0; i < p->n_kernels; i++) /* names follow the kernel order again */
        snprintf(p->kernels[i].name, sizeof p->kernels[i].name, "k%d_%s", i,
                 op_info[g->nodes[p->kernels[i].root].op].name);
    return 0;
}

/* ---- a map and the reduction that reads its results next ----
 *
 * Batch norm's backward pass computes a full-size value in one kernel and sums it over images and
 * pixels in the next, which reads back what the first just wrote. The reduction j takes in the
 * map i just before it when both run over one space and j reads i's results only at the point it
 * is at (with the strides i stores them with): i's body runs first at every point of j's space
 * (phase INNER), its stores become inner stores, and j uses the values instead of loading them. */

static bool map_feeds_reduction(const Kernel *i, const Kernel *j) {
    if (i->kind != KERNEL_LOOP || j->kind != KERNEL_LOOP || i->rank != j->rank) return false;
    if (i->reduce_axes || !j->reduce_axes || count_reduces(i)) return false;
    if (memcmp(i->dims, j->dims, (size_t)i->rank * sizeof i->dims[0]) != 0) return false;
    bool reads = false;
    for (int o = 0; o < j->n_ops; o++) {
        const KOp *op = &j->ops[o];
        const KStore *st = op->op == KOP_LOAD ? kernel_store_of(i, op->buf) : NULL;
        if (!st) continue;
        if (op->phase != KPHASE_INNER || op->offset != 0 ||
            memcmp(op->strides, st->strides, sizeof op->strides) != 0)
            return false;
        reads = true;
    }
    return reads && fits(i, j);
}

/* The reduction j with the map i ahead of it, replacing j's body and stores. */
static int take_in_map(Kernel *j, const Kernel *i, MamlError *err) {
    Kernel m = {.n_ops = 0};
    int *map = maml_alloc(((size_t)i->n_ops + (size_t)j->n_ops + 1) * sizeof *map, err);
    KStore *st = maml_alloc(((size_t)i->n_stores + (size_t)j->n_stores) * sizeof *st, err);
    int rc = map && st ? 0 : -1;
    m.rank = j->rank;
    for (int o = 0; rc == 0 && o < i->n_ops + j->n_ops; o++) {
        KOp op = o < i->n_ops ? i->ops[o] : j->ops[o - i->n_ops];
        const KStore *fed = o >= i->n_ops && op.op == KOP_LOAD ? kernel_store_of(i, op.buf) : NULL;
        if (fed) { /* a load of the map's result: its value */
            map[o] = map[fed->src];
            continue;
        }
        int shift = o < i->n_ops ? 0 : i->n_ops;
        if (o < i->n_ops) op.phase = KPHASE_INNER;
        for (int q = 0; q < 3; q++)
            if (op.src[q] >= 0) op.src[q] = map[op.src[q] + shift];
        map[o] = kernel_append_op(&m, op, err);
        if (map[o] < 0) rc = -1;
    }
    for (int s = 0; rc == 0 && s < i->n_stores + j->n_stores; s++) {
        bool inner = s < i->n_stores;
        st[s] = inner ? i->stores[s] : j->stores[s - i->n_stores];
        st[s].src = map[st[s].src + (inner ? 0 : i->n_ops)];
        if (inner) st[s].phase = KPHASE_INNER;
    }
    if (rc == 0) rc = merge_nodes(&m, i, err); /* i's nodes, then j's (its root last) */
    if (rc == 0) rc = merge_nodes(&m, j, err);
    free(map);
    if (rc) {
        free(m.ops);
        free(m.nodes);
        free(st);
        return -1;
    }
    free(j->ops);
    free(j->stores);
    free(j->nodes);
    j->ops = m.ops;
    j->n_ops = m.n_ops;
    j->cap_ops = m.cap_ops;
    j->stores = st;
    j->n_stores = i->n_stores + j->n_stores;
    j->nodes = m.nodes;
    j->n_nodes = m.n_nodes;
    return 0;
}

static int merge_maps_into_reductions(KernelProgram *p, MamlError *err) {
    for (int j = 1; j < p->n_kernels; j++) {
        if (!map_feeds_reduction(&p->kernels[j - 1], &p->kernels[j])) continue;
        if (take_in_map(&p->kernels[j], &p->kernels[j - 1], err)) return -1;
        drop_kernel(p, j - 1);
        j--;
    }
    return 0;
}

int kernels_merge(const Graph *g, KernelProgram *p, MamlError *err) {
    if (merge_maps_into_reductions(p, err)) return -1;
    return merge_siblings(g, p, err);
}
