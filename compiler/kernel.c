/* Lowering the graph to the kernel IR (kernel.h).
 *
 * Grouping is decided node by node in reverse topological order, so every consumer of a node is
 * decided before the node itself. A node is materialized (gets a buffer and a kernel whose root it
 * is), aliased (reshape and stop_grad of a buffer: same memory), or inlined into the kernel of the
 * one root all its consumers belong to. With fuse=false only constants are inlined.
 *
 * Inlining rules (fuse=true):
 *  - a constant is always inlined, into any number of kernels;
 *  - a view (broadcast, permute, a reshape that only adds or drops size-1 axes, stop_grad) is
 *    inlined as an index remapping, duplicated into several kernels if need be (it costs nothing);
 *  - an elementwise node is inlined when all its consumers are in the same kernel and no expanding
 *    broadcast lies between it and the root (that would recompute it per broadcast element);
 *    one whose consumers are in several kernels is recomputed in each of them when that moves no
 *    more data than storing it (cheap_to_recompute): batch norm's centred, normalized and affine
 *    values and the ReLU mask are recomputed from the convolution's output in the kernels that
 *    read them instead of taking a pass over memory each;
 *  - a reduction is inlined into its consumer's kernel (which becomes its epilogue) when the
 *    path to that root is elementwise at the reduction's own shape and the kernel has no other one;
 *  - template ops (conv family, matmul, pool family), graph outputs and the operands of template
 *    ops and of non-unit reshapes are always materialized;
 *  - a graph output that is elementwise and would otherwise be inlined (its consumers all in one
 *    loop kernel, reached elementwise at that kernel's own shape) is materialized by that kernel:
 *    the kernel computes it and stores it besides its root (multi-output fusion; Adam's m, v and
 *    parameter updates become one kernel instead of three launches). */
#include "kernel.h"
#include "kernel_internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROOT_MULTI (-2)
#define ROOT_NONE (-1)
/* An operand at least this many times smaller than the node counts as small (see
 * cheap_to_recompute). */
#define RECOMPUTE_SMALL 8

typedef enum { M_DEAD, M_BUFFER, M_ALIAS, M_INLINE } Mode;

typedef enum { C_INPUT, C_CONST, C_ELEM, C_VIEW, C_REDUCE, C_TEMPLATE } NodeClass;

typedef struct {
    const Graph *g;
    bool fuse;
    bool *live, *is_output, *need_buf, *expanded, *direct, *has_reduce;
    int *cons_start, *cons; /* consumers of node i: cons[cons_start[i] .. cons_start[i+1]) */
    Mode *mode;
    int *root;
    int *host; /* per materialized node: the root of the loop kernel that stores it too, or -1 */
    int *fused_reduce; /* per root: the reduction fused as its epilogue's source, or -1 */
    MamlError *err;
} Lower;

static const Node *gnode(const Lower *L, int id) {
    return &L->g->nodes[id];
}

static NodeClass node_class(OpKind op) {
    switch (op) {
    case OP_INPUT:
        return C_INPUT;
    case OP_CONST:
        return C_CONST;
    case OP_REDUCE_SUM:
    case OP_REDUCE_MAX:
        return C_REDUCE;
    case OP_BROADCAST:
    case OP_PERMUTE:
    case OP_RESHAPE:
    case OP_STOP_GRAD:
        return C_VIEW;
    case OP_MATMUL:
    case OP_CONV2D:
    case OP_CONV2D_GRAD_INPUT:
    case OP_CONV2D_GRAD_WEIGHT:
    case OP_MAX_POOL2D:
    case OP_POOL_SCATTER:
    case OP_POOL_GATHER:
        return C_TEMPLATE;
    default:
        return C_ELEM;
    }
}

/* Elementwise ops whose operands have the node's own shape (one_hot does not). */
static bool plain_elem(OpKind op) {
    return node_class(op) == C_ELEM && op != OP_ONE_HOT;
}

/* A reshape that only inserts or removes size-1 axes: the other axes keep their order. */
static bool unit_reshape(Shape a, Shape b) {
    int i = 0, j = 0;
    for (;;) {
        while (i < a.rank && a.dims[i] == 1) i++;
        while (j < b.rank && b.dims[j] == 1) j++;
        if (i == a.rank || j == b.rank) return i == a.rank && j == b.rank;
        if (a.dims[i++] != b.dims[j++]) return false;
    }
}

/* ---- analysis ---- */

static int analyse_uses(Lower *L) {
    const Graph *g = L->g;
    int n = g->n_nodes;
    for (int i = 0; i < g->n_outputs; i++) {
        L->is_output[g->outputs[i].node] = true;
        L->live[g->outputs[i].node] = true;
    }
    for (int i = n - 1; i >= 0; i--)
        if (L->live[i])
            for (int k = 0; k < g->nodes[i].n_in; k++) L->live[g->nodes[i].in[k]] = true;
    /* consumers in CSR form, counting each consumer once per node */
    for (int i = 0; i < n; i++) {
        if (!L->live[i]) continue;
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            int s = g->nodes[i].in[k];
            bool dup = false;
            for (int q = 0; q < k; q++) dup |= g->nodes[i].in[q] == s;
            if (!dup) L->cons_start[s + 1]++;
        }
    }
    for (int i = 0; i < n; i++) L->cons_start[i + 1] += L->cons_start[i];
    int *fill = maml_calloc((size_t)n + 1, sizeof *fill, L->err);
    if (!fill) return -1;
    memcpy(fill, L->cons_start, ((size_t)n + 1) * sizeof *fill);
    for (int i = 0; i < n; i++) {
        if (!L->live[i]) continue;
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            int s = g->nodes[i].in[k];
            bool dup = false;
            for (int q = 0; q < k; q++) dup |= g->nodes[i].in[q] == s;
            if (!dup) L->cons[fill[s]++] = i;
        }
    }
    free(fill);
    return 0;
}

/* The root every consumer of n belongs to, ROOT_MULTI when they differ; *expanded is set when
 * some consumer evaluates n more often than n has elements. */
static int common_root(const Lower *L, int n, bool *expanded) {
    int r = ROOT_NONE;
    *expanded = false;
    for (int q = L->cons_start[n]; q < L->cons_start[n + 1]; q++) {
        int c = L->cons[q];
        int rc = L->mode[c] == M_BUFFER   ? (L->host[c] >= 0 ? L->host[c] : c)
                 : L->mode[c] == M_INLINE ? L->root[c]
                                          : ROOT_MULTI;
        r = rc == ROOT_MULTI || (r != ROOT_NONE && r != rc) ? ROOT_MULTI : rc;
        if (L->mode[c] == M_INLINE && L->expanded[c]) *expanded = true;
        if (gnode(L, c)->op == OP_BROADCAST &&
            shape_numel(gnode(L, c)->shape) > shape_numel(gnode(L, n)->shape))
            *expanded = true;
    }
    return r == ROOT_NONE ? ROOT_MULTI : r;
}

/* The node a chain of views reads. */
static int view_source(const Lower *L, int n) {
    while (node_class(gnode(L, n)->op) == C_VIEW) n = gnode(L, n)->in[0];
    return n;
}

/* Whether recomputing elementwise node n in each consumer's kernel moves no more data than
 * storing it and loading it there: n reads at most one operand of about its own size (the others
 * are constants or broadcasts of small tensors), so each consumer loads that operand instead of
 * n, and n's own pass over memory disappears. */
static bool cheap_to_recompute(const Lower *L, int n) {
    const Node *nd = gnode(L, n);
    if (!plain_elem(nd->op)) return false;
    int64_t size = shape_numel(nd->shape);
    int big = 0;
    for (int k = 0; k < nd->n_in; k++) {
        const Node *src = gnode(L, view_source(L, nd->in[k]));
        if (src->op != OP_CONST && shape_numel(src->shape) * RECOMPUTE_SMALL > size) big++;
    }
    return big <= 1;
}

/* Whether every consumer of n reaches root r through plain elementwise nodes of r's shape. */
static bool direct_to(const Lower *L, int n, int r) {
    for (int q = L->cons_start[n]; q < L->cons_start[n + 1]; q++) {
        int c = L->cons[q];
        if (c != r && !L->direct[c]) return false;
    }
    return true;
}

static bool can_fuse_epilogue(const Lower *L, int n, int r) {
    if (r < 0 || L->mode[r] != M_BUFFER || !plain_elem(gnode(L, r)->op)) return false;
    if (L->has_reduce[r] || L->is_output[n]) return false;
    if (!shape_equal(gnode(L, n)->shape, gnode(L, r)->shape)) return false;
    return direct_to(L, n, r);
}

static void set_alias(Lower *L, int n) {
    L->mode[n] = M_ALIAS;
    L->need_buf[gnode(L, n)->in[0]] = true;
}

static void set_buffer(Lower *L, int n) {
    const Node *nd = gnode(L, n);
    L->mode[n] = M_BUFFER;
    if (node_class(nd->op) == C_TEMPLATE)
        for (int k = 0; k < nd->n_in; k++) L->need_buf[nd->in[k]] = true;
}

/* Lets the loop kernel that all of output n's consumers belong to compute and store n (see the
 * header comment); n is then evaluated exactly once per point of that kernel's output space. */
static bool try_host(Lower *L, int n) {
    const Node *nd = gnode(L, n);
    if (!L->is_output[n] || L->need_buf[n] || !plain_elem(nd->op)) return false;
    bool expanded;
    int r = common_root(L, n, &expanded);
    if (r < 0 || expanded || L->mode[r] != M_BUFFER || !plain_elem(gnode(L, r)->op)) return false;
    if (!shape_equal(nd->shape, gnode(L, r)->shape) || !direct_to(L, n, r)) return false;
    L->mode[n] = M_BUFFER;
    L->host[n] = r;
    L->direct[n] = true;
    return true;
}

/* A node that needs a buffer: its own kernel, unless a consumer's kernel may store it. */
static void materialize(Lower *L, int n) {
    if (!L->fuse || !try_host(L, n)) set_buffer(L, n);
}

static void decide_fused(Lower *L, int n) {
    const Node *nd = gnode(L, n);
    NodeClass cls = node_class(nd->op);
    if (nd->op == OP_RESHAPE && !unit_reshape(gnode(L, nd->in[0])->shape, nd->shape)) {
        set_alias(L, n);
        return;
    }
    bool expanded;
    int r = common_root(L, n, &expanded);
    if (cls == C_VIEW) {
        L->mode[n] = M_INLINE;
        L->root[n] = r;
        L->expanded[n] = expanded;
        return;
    }
    if (r == ROOT_MULTI && !expanded && cls == C_ELEM && cheap_to_recompute(L, n)) {
        L->mode[n] = M_INLINE; /* duplicated into every consumer's kernel, like a view */
        L->root[n] = ROOT_MULTI;
        return;
    }
    if (r == ROOT_MULTI || expanded) {
        set_buffer(L, n);
        return;
    }
    if (cls == C_REDUCE) {
        if (!can_fuse_epilogue(L, n, r)) {
            set_buffer(L, n);
            return;
        }
        L->has_reduce[r] = true;
        L->fused_reduce[r] = n;
    }
    L->mode[n] = M_INLINE;
    L->root[n] = r;
    L->direct[n] =
        plain_elem(nd->op) && shape_equal(nd->shape, gnode(L, r)->shape) && direct_to(L, n, r);
}

static void decide(Lower *L, int n) {
    const Node *nd = gnode(L, n);
    NodeClass cls = node_class(nd->op);
    if (!L->live[n]) {
        L->mode[n] = M_DEAD;
        return;
    }
    bool want_buf = L->need_buf[n] || L->is_output[n];
    if (cls == C_INPUT)
        L->mode[n] = M_BUFFER;
    else if (want_buf && (nd->op == OP_RESHAPE || nd->op == OP_STOP_GRAD))
        set_alias(L, n);
    else if (want_buf || cls == C_TEMPLATE)
        materialize(L, n);
    else if (cls == C_CONST) {
        L->mode[n] = M_INLINE;
        L->root[n] = ROOT_MULTI;
    } else if (!L->fuse) {
        if (nd->op == OP_RESHAPE || nd->op == OP_STOP_GRAD)
            set_alias(L, n);
        else
            set_buffer(L, n);
    } else
        decide_fused(L, n);
}

/* ---- buffers ---- */

static void add_buffer(KernelProgram *p, BufKind kind, const Node *nd, int node) {
    KBuffer *b = &p->bufs[p->n_bufs];
    b->kind = kind;
    b->node = node;
    b->numel = shape_numel(nd->shape);
    b->name = kind == BUF_INPUT ? nd->name : NULL;
    b->is_data = kind == BUF_INPUT && nd->input_kind == INPUT_DATA;
    p->node_buf[node] = p->n_bufs++;
}

static int assign_buffers(const Lower *L, KernelProgram *p, MamlError *err) {
    const Graph *g = L->g;
    p->bufs = maml_calloc((size_t)g->n_nodes, sizeof *p->bufs, err);
    if (!p->bufs) return -1;
    for (int i = 0; i < g->n_nodes; i++) {
        p->node_buf[i] = -1;
        if (L->mode[i] == M_BUFFER)
            add_buffer(p, g->nodes[i].op == OP_INPUT ? BUF_INPUT : BUF_TEMP, &g->nodes[i], i);
        else if (L->mode[i] == M_ALIAS)
            p->node_buf[i] = p->node_buf[g->nodes[i].in[0]];
    }
    for (int i = 0; i < g->n_outputs; i++) {
        int b = p->node_buf[g->outputs[i].node];
        if (b < 0) return maml_fail(err, "output '%s' has no buffer", g->outputs[i].name);
        p->bufs[b].is_output = true;
    }
    return 0;
}

/* ---- kernel bodies ---- */

typedef struct {
    int node;
    KPhase phase;
    int sel[MAX_RANK];
    int op;
} Memo;

typedef struct {
    const Lower *L;
    const KernelProgram *p;
    Kernel *k;
    Memo *memo;
    int n_memo, cap_memo;
    MamlError *err;
} Builder;

static bool kop_equal(const KOp *a, const KOp *b, int rank) {
    if (a->op != b->op || a->phase != b->phase) return false;
    for (int i = 0; i < 3; i++)
        if (a->src[i] != b->src[i]) return false;
    if (a->op == KOP_CONST)
        return a->value == b->value || (a->value != a->value && b->value != b->value);
    if (a->op == KOP_INDEX) return a->axis == b->axis;
    if (a->op != KOP_LOAD) return true;
    if (a->buf != b->buf || a->offset != b->offset) return false;
    for (int i = 0; i < rank; i++)
        if (a->strides[i] != b->strides[i]) return false;
    return true;
}

int kernel_append_op(Kernel *k, KOp op, MamlError *err) {
    bool reduce = op.op == KOP_REDUCE_SUM || op.op == KOP_REDUCE_MAX;
    for (int i = 0; i < k->n_ops && !reduce; i++)
        if (kop_equal(&k->ops[i], &op, k->rank)) return i;
    if (k->n_ops == k->cap_ops) {
        int cap = k->cap_ops ? 2 * k->cap_ops : 16;
        KOp *ops = maml_realloc(k->ops, (size_t)cap, sizeof *ops, err);
        if (!ops) return -1;
        k->ops = ops;
        k->cap_ops = cap;
    }
    k->ops[k->n_ops] = op;
    return k->n_ops++;
}

static int emit(Builder *B, KOp op) {
    return kernel_append_op(B->k, op, B->err);
}

static int emit_simple(Builder *B, KOpKind kind, KPhase phase, int a, int b, int c) {
    KOp op = {.op = kind, .phase = phase, .src = {a, b, c}, .buf = -1};
    if (a < 0 && kind != KOP_CONST && kind != KOP_INDEX) return -1;
    return emit(B, op);
}

static int emit_const(Builder *B, double v, KPhase phase) {
    KOp op = {.op = KOP_CONST, .phase = phase, .value = v, .src = {-1, -1, -1}, .buf = -1};
    return emit(B, op);
}

/* Strides of a contiguous buffer of shape s seen through sel (node axis -> loop axis or -1). */
static int emit_load(Builder *B, int buf, Shape s, const int *sel, KPhase phase) {
    KOp op = {.op = KOP_LOAD, .phase = phase, .src = {-1, -1, -1}, .buf = buf};
    int64_t acc = 1;
    for (int j = s.rank - 1; j >= 0; j--) {
        if (s.dims[j] > 1 && sel[j] >= 0) op.strides[sel[j]] += acc;
        acc *= s.dims[j];
    }
    return emit(B, op);
}

static int memo_find(const Builder *B, int node, const int *sel, int rank, KPhase phase) {
    for (int i = 0; i < B->n_memo; i++) {
        const Memo *m = &B->memo[i];
        if (m->node != node || m->phase != phase) continue;
        if (memcmp(m->sel, sel, (size_t)rank * sizeof *sel) == 0) return m->op;
    }
    return -1;
}

static int memo_add(Builder *B, int node, const int *sel, int rank, KPhase phase, int op) {
    if (op < 0) return -1;
    if (B->n_memo == B->cap_memo) {
        int cap = B->cap_memo ? 2 * B->cap_memo : 16;
        Memo *m = maml_realloc(B->memo, (size_t)cap, sizeof *m, B->err);
        if (!m) return -1;
        B->memo = m;
        B->cap_memo = cap;
    }
    Memo *m = &B->memo[B->n_memo++];
    memset(m, 0, sizeof *m);
    m->node = node;
    m->phase = phase;
    memcpy(m->sel, sel, (size_t)rank * sizeof *sel);
    m->op = op;
    return op;
}

static int note_node(Builder *B, int node) {
    Kernel *k = B->k;
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i] == node) return 0;
    int *nodes = maml_realloc(k->nodes, (size_t)k->n_nodes + 1, sizeof *nodes, B->err);
    if (!nodes) return -1;
    k->nodes = nodes;
    k->nodes[k->n_nodes++] = node;
    return 0;
}

static int build(Builder *B, int n, const int *sel, KPhase phase);
static int add_store(Builder *B, int buf, Shape s, int src);

/* The operand selections of a view: which loop axis each of the operand's axes follows. */
static void view_sel(const Node *nd, Shape in, const int *sel, int *in_sel) {
    for (int j = 0; j < MAX_RANK; j++) in_sel[j] = -1;
    if (nd->op == OP_BROADCAST || nd->op == OP_STOP_GRAD) {
        for (int j = 0; j < in.rank; j++) in_sel[j] = in.dims[j] == 1 ? -1 : sel[j];
    } else if (nd->op == OP_PERMUTE) {
        for (int j = 0; j < nd->shape.rank; j++) in_sel[nd->attr.perm[j]] = sel[j];
    } else { /* unit reshape: the non-1 axes pair up in order */
        int j = 0;
        for (int i = 0; i < in.rank; i++) {
            if (in.dims[i] == 1) continue;
            while (nd->shape.dims[j] == 1) j++;
            in_sel[i] = sel[j++];
        }
    }
}

static KOpKind elem_kop(OpKind op) {
    switch (op) {
    case OP_ADD:
        return KOP_ADD;
    case OP_SUB:
        return KOP_SUB;
    case OP_MUL:
        return KOP_MUL;
    case OP_DIV:
        return KOP_DIV;
    case OP_NEG:
        return KOP_NEG;
    case OP_EXP:
        return KOP_EXP;
    case OP_LOG:
        return KOP_LOG;
    case OP_RSQRT:
        return KOP_RSQRT;
    case OP_SQRT:
        return KOP_SQRT;
    case OP_GT:
        return KOP_GT;
    case OP_EQ:
        return KOP_EQ;
    case OP_SELECT:
        return KOP_SELECT;
    case OP_REDUCE_SUM:
        return KOP_REDUCE_SUM;
    case OP_REDUCE_MAX:
        return KOP_REDUCE_MAX;
    default:
        return KOP_COUNT;
    }
}

static int build_one_hot(Builder *B, const Node *nd, const int *sel, KPhase phase) {
    int r = nd->shape.rank, axis = sel[r - 1];
    int label = build(B, nd->in[0], sel, phase);
    KOp idx = {.op = KOP_INDEX, .phase = phase, .axis = axis, .src = {-1, -1, -1}, .buf = -1};
    int index = axis >= 0 ? emit(B, idx) : emit_const(B, 0.0, phase);
    if (label < 0 || index < 0) return -1;
    return emit_simple(B, KOP_EQ, phase, label, index, -1);
}

/* The reduction's operand over the whole loop space, then the accumulation. */
static int build_reduce(Builder *B, const Node *nd) {
    int ident[MAX_RANK];
    for (int j = 0; j < MAX_RANK; j++) ident[j] = j;
    int src = build(B, nd->in[0], ident, KPHASE_INNER);
    return emit_simple(B, elem_kop(nd->op), KPHASE_OUTER, src, -1, -1);
}

static int build_expr(Builder *B, int n, const int *sel, KPhase phase) {
    const Node *nd = gnode(B->L, n);
    if (node_class(nd->op) != C_CONST && note_node(B, n)) return -1;
    switch (node_class(nd->op)) {
    case C_CONST:
        return emit_const(B, nd->attr.value, phase);
    case C_VIEW: {
        int in_sel[MAX_RANK];
        view_sel(nd, gnode(B->L, nd->in[0])->shape, sel, in_sel);
        return build(B, nd->in[0], in_sel, phase);
    }
    case C_REDUCE:
        return build_reduce(B, nd);
    default:
        break;
    }
    if (nd->op == OP_ONE_HOT) return build_one_hot(B, nd, sel, phase);
    int src[3] = {-1, -1, -1};
    for (int k = 0; k < nd->n_in; k++)
        if ((src[k] = build(B, nd->in[k], sel, phase)) < 0) return -1;
    return emit_simple(B, elem_kop(nd->op), phase, src[0], src[1], src[2]);
}

/* The value of node n at the loop point mapped through sel: a load when n has a buffer (and is
 * not the kernel's own root), else its inlined expression. */
static int build(Builder *B, int n, const int *sel, KPhase phase) {
    const Node *nd = gnode(B->L, n);
    int found = memo_find(B, n, sel, nd->shape.rank, phase);
    if (found >= 0) return found;
    int buf = B->p->node_buf[n];
    bool hosted = B->L->host[n] == B->k->root, load = n != B->k->root && buf >= 0 && !hosted;
    int op = load ? emit_load(B, buf, nd->shape, sel, phase) : build_expr(B, n, sel, phase);
    /* a hosted node lies on the elementwise path to the root: built once, at the root's point */
    if (hosted && op >= 0 && add_store(B, buf, nd->shape, op)) return -1;
    return memo_add(B, n, sel, nd->shape.rank, phase, op);
}

/* ---- kernels ---- */

static int add_store(Builder *B, int buf, Shape s, int src) {
    Kernel *k = B->k;
    KStore *st = maml_realloc(k->stores, (size_t)k->n_stores + 1, sizeof *st, B->err);
    if (!st) return -1;
    k->stores = st;
    KStore *w = &st[k->n_stores++];
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->src = src;
    w->phase = KPHASE_OUTER;
    int64_t acc = 1;
    for (int j = s.rank - 1; j >= 0; j--) {
        w->strides[j] = s.dims[j] > 1 ? acc : 0;
        acc *= s.dims[j];
    }
    return 0;
}

static uint32_t real_axes(uint32_t axes, Shape in) {
    uint32_t m = 0;
    for (int j = 0; j < in.rank; j++)
        if ((axes & (1u << j)) && in.dims[j] > 1) m |= 1u << j;
    return m;
}

static int build_loop_kernel(Builder *B, int root) {
    const Lower *L = B->L;
    Kernel *k = B->k;
    const Node *nd = gnode(L, root);
    int reduce = node_class(nd->op) == C_REDUCE ? root : L->fused_reduce[root];
    Shape space = reduce >= 0 ? gnode(L, gnode(L, reduce)->in[0])->shape : nd->shape;
    k->kind = KERNEL_LOOP;
    k->rank = space.rank;
    memcpy(k->dims, space.dims, sizeof k->dims);
    k->reduce_axes = reduce >= 0 ? real_axes(gnode(L, reduce)->attr.axes, space) : 0;
    int sel[MAX_RANK];
    for (int j = 0; j < MAX_RANK; j++) sel[j] = (k->reduce_axes & (1u << j)) ? -1 : j;
    int v = build(B, root, sel, KPHASE_OUTER);
    if (v < 0) return -1;
    return add_store(B, B->p->node_buf[root], nd->shape, v);
}

static void conv_params(KTemplate *t, Shape x, Shape w, Shape y, const Attr *a) {
    t->T = x.dims[0], t->N = x.dims[1], t->C = x.dims[2], t->H = x.dims[3], t->W = x.dims[4];
    t->O = w.dims[1], t->KH = w.dims[3], t->KW = w.dims[4], t->HO = y.dims[3], t->WO = y.dims[4];
    t->stride = a->stride;
    t->padding = a->padding;
}

static void template_params(const Lower *L, const Node *nd, Kernel *k) {
    Shape a = gnode(L, nd->in[0])->shape, b = nd->n_in > 1 ? gnode(L, nd->in[1])->shape : a;
    KTemplate *t = &k->t;
    switch (nd->op) {
    case OP_CONV2D:
        k->kind = KERNEL_CONV2D;
        conv_params(t, a, b, nd->shape, &nd->attr);
        break;
    case OP_CONV2D_GRAD_INPUT:
        k->kind = KERNEL_CONV2D_GRAD_INPUT;
        conv_params(t, nd->shape, b, a, &nd->attr);
        break;
    case OP_CONV2D_GRAD_WEIGHT:
        k->kind = KERNEL_CONV2D_GRAD_WEIGHT;
        conv_params(t, a, nd->shape, b, &nd->attr);
        break;
    case OP_MATMUL: {
        int r = nd->shape.rank;
        k->kind = KERNEL_MATMUL;
        t->m = nd->shape.dims[r - 2];
        t->n = nd->shape.dims[r - 1];
        t->k = nd->attr.trans_a ? a.dims[r - 2] : a.dims[r - 1];
        t->batch = shape_numel(nd->shape) / (t->m * t->n);
        t->trans_a = nd->attr.trans_a;
        t->trans_b = nd->attr.trans_b;
        break;
    }
    default: /* pool family */
        k->kind = nd->op == OP_MAX_POOL2D     ? KERNEL_MAX_POOL2D
                  : nd->op == OP_POOL_SCATTER ? KERNEL_POOL_SCATTER
                                              : KERNEL_POOL_GATHER;
        t->H = a.dims[a.rank - 2], t->W = a.dims[a.rank - 1];
        t->kernel = nd->attr.kernel, t->stride = nd->attr.stride;
        t->HO = (t->H - t->kernel) / t->stride + 1, t->WO = (t->W - t->kernel) / t->stride + 1;
        t->planes = shape_numel(a) / (t->H * t->W);
        break;
    }
}

static int build_template_kernel(Builder *B, int root) {
    const Node *nd = gnode(B->L, root);
    Kernel *k = B->k;
    template_params(B->L, nd, k);
    k->n_in = nd->n_in;
    for (int i = 0; i < nd->n_in; i++) k->in[i] = B->p->node_buf[nd->in[i]];
    k->out = B->p->node_buf[root];
    return note_node(B, root);
}

static void simplify_dims(Kernel *k);

static int build_kernel(const Lower *L, KernelProgram *p, int root, MamlError *err) {
    Kernel *k = &p->kernels[p->n_kernels];
    memset(k, 0, sizeof *k);
    k->root = root;
    k->out = p->node_buf[root];
    snprintf(k->name, sizeof k->name, "k%d_%s", p->n_kernels, op_info[gnode(L, root)->op].name);
    Builder B = {.L = L, .p = p, .k = k, .err = err};
    int rc = node_class(gnode(L, root)->op) == C_TEMPLATE ? build_template_kernel(&B, root)
                                                          : build_loop_kernel(&B, root);
    free(B.memo);
    p->n_kernels++; /* counted even on failure so kernel_program_free releases it */
    if (rc) return -1;
    if (k->kind == KERNEL_LOOP) simplify_dims(k);
    return 0;
}

/* ---- loop-space simplification: drop size-1 axes, merge axes that stay contiguous ---- */

static void drop_axis(Kernel *k, int a) {
    for (int i = 0; i < k->n_ops; i++) {
        KOp *op = &k->ops[i];
        if (op->op == KOP_INDEX && op->axis == a) {
            op->op = KOP_CONST; /* the index of a size-1 axis is 0 */
            op->value = 0.0;
        } else if (op->op == KOP_INDEX && op->axis > a)
            op->axis--;
        memmove(&op->strides[a], &op->strides[a + 1], (size_t)(MAX_RANK - a - 1) * sizeof(int64_t));
        op->strides[MAX_RANK - 1] = 0;
    }
    for (int i = 0; i < k->n_stores; i++) {
        int64_t *st = k->stores[i].strides;
        memmove(&st[a], &st[a + 1], (size_t)(MAX_RANK - a - 1) * sizeof(int64_t));
        st[MAX_RANK - 1] = 0;
    }
    memmove(&k->dims[a], &k->dims[a + 1], (size_t)(MAX_RANK - a - 1) * sizeof(int64_t));
    uint32_t low = k->reduce_axes & ((1u << a) - 1), high = k->reduce_axes >> (a + 1);
    k->reduce_axes = low | (high << a);
    k->rank--;
}

static bool indexed(const Kernel *k, int a) {
    for (int i = 0; i < k->n_ops; i++)
        if (k->ops[i].op == KOP_INDEX && k->ops[i].axis == a) return true;
    return false;
}

/* Axes a and a+1 can be one loop when every access steps through them as one run. */
static bool mergeable(const Kernel *k, int a) {
    if (((k->reduce_axes >> a) & 1) != ((k->reduce_axes >> (a + 1)) & 1)) return false;
    if (indexed(k, a) || indexed(k, a + 1)) return false;
    for (int i = 0; i < k->n_ops; i++)
        if (k->ops[i].op == KOP_LOAD &&
            k->ops[i].strides[a] != k->ops[i].strides[a + 1] * k->dims[a + 1])
            return false;
    for (int i = 0; i < k->n_stores; i++)
        if (k->stores[i].strides[a] != k->stores[i].strides[a + 1] * k->dims[a + 1]) return false;
    return true;
}

static void simplify_dims(Kernel *k) {
    assert(k->rank >= 0 && k->rank <= MAX_RANK); /* a node's shape: 0 to MAX_RANK axes */
    for (int a = k->rank - 1; a >= 0; a--)
        if (k->dims[a] == 1) drop_axis(k, a);
    for (int a = k->rank - 2; a >= 0; a--)
        if (mergeable(k, a)) {
            k->dims[a + 1] *= k->dims[a];
            drop_axis(k, a); /* keeps axis a+1's strides, now at position a */
        }
}

/* ---- entry points ---- */

static int lower_alloc(Lower *L, KernelProgram *p, MamlError *err) {
    size_t n = (size_t)L->g->n_nodes;
    L->live = maml_calloc(n, sizeof *L->live, err);
    L->is_output = maml_calloc(n, sizeof *L->is_output, err);
    L->need_buf = maml_calloc(n, sizeof *L->need_buf, err);
    L->expanded = maml_calloc(n, sizeof *L->expanded, err);
    L->direct = maml_calloc(n, sizeof *L->direct, err);
    L->has_reduce = maml_calloc(n, sizeof *L->has_reduce, err);
    L->cons_start = maml_calloc(n + 1, sizeof *L->cons_start, err);
    L->cons = maml_calloc(n * MAX_INPUTS + 1, sizeof *L->cons, err);
    L->mode = maml_calloc(n, sizeof *L->mode, err);
    L->root = maml_calloc(n, sizeof *L->root, err);
    L->host = maml_calloc(n, sizeof *L->host, err);
    L->fused_reduce = maml_calloc(n, sizeof *L->fused_reduce, err);
    p->node_buf = maml_calloc(n, sizeof *p->node_buf, err);
    if (!L->live || !L->is_output || !L->need_buf || !L->expanded || !L->direct || !L->has_reduce ||
        !L->cons_start || !L->cons || !L->mode || !L->root || !L->host || !L->fused_reduce ||
        !p->node_buf)
        return -1;
    for (size_t i = 0; i < n; i++) L->fused_reduce[i] = L->host[i] = -1;
    return 0;
}

static void lower_free(Lower *L) {
    free(L->live);
    free(L->is_output);
    free(L->need_buf);
    free(L->expanded);
    free(L->direct);
    free(L->has_reduce);
    free(L->cons_start);
    free(L->cons);
    free(L->mode);
    free(L->root);
    free(L->host);
    free(L->fused_reduce);
}

static int build_program(const Lower *L, KernelProgram *p, MamlError *err) {
    const Graph *g = L->g;
    if (assign_buffers(L, p, err)) return -1;
    p->kernels = maml_calloc((size_t)g->n_nodes, sizeof *p->kernels, err);
    p->outputs = maml_calloc((size_t)g->n_outputs, sizeof *p->outputs, err);
    if (!p->kernels || !p->outputs) return -1;
    for (int i = 0; i < g->n_nodes; i++) {
        if (L->live[i]) p->n_live_nodes++;
        if (L->mode[i] == M_BUFFER && L->host[i] < 0 && g->nodes[i].op != OP_INPUT &&
            build_kernel(L, p, i, err))
            return -1;
    }
    for (int i = 0; i < g->n_outputs; i++) {
        KOutput *o = &p->outputs[p->n_outputs++];
        o->name = g->outputs[i].name;
        o->node = g->outputs[i].node;
        o->buf = p->node_buf[o->node];
        o->shape = g->nodes[o->node].shape;
    }
    return 0;
}

int kernels_lower(const Graph *g, bool fuse, KernelProgram *out, MamlError *err) {
    memset(out, 0, sizeof *out);
    if (graph_status(g, err)) return -1;
    out->n_graph_nodes = g->n_nodes;
    out->fused = fuse;
    Lower L = {.g = g, .fuse = fuse, .err = err};
    int rc = lower_alloc(&L, out, err);
    if (rc == 0) rc = analyse_uses(&L);
    for (int i = g->n_nodes - 1; rc == 0 && i >= 0; i--) decide(&L, i);
    if (rc == 0) rc = build_program(&L, out, err);
    if (rc == 0 && fuse) rc = kernels_merge(g, out, err);
    lower_free(&L);
    if (rc) kernel_program_free(out);
    return rc;
}

void kernel_program_free(KernelProgram *p) {
    for (int i = 0; p->kernels && i < p->n_kernels; i++) {
        free(p->kernels[i].ops);
        free(p->kernels[i].stores);
        free(p->kernels[i].nodes);
    }
    free(p->kernels);
    free(p->bufs);
    free(p->outputs);
    free(p->node_buf);
    memset(p, 0, sizeof *p);
}

/* ---- queries ---- */

const KStore *kernel_store_of(const Kernel *k, int buf) {
    for (int s = 0; s < k->n_stores; s++)
        if (k->stores[s].buf == buf) return &k->stores[s];
    return NULL;
}

/* Every load of buf must read the element the store to w writes at the same point: a point's
 * loads come before its stores, and no other point touches that element of buf. */
bool kernel_can_write_in_place(const Kernel *k, int w, int buf) {
    if (k->kind != KERNEL_LOOP) return false;
    const KStore *st = kernel_store_of(k, w);
    if (!st || (k->reduce_axes && st->phase != KPHASE_INNER)) return false;
    bool reads = false;
    for (int i = 0; i < k->n_ops; i++) {
        const KOp *op = &k->ops[i];
        if (op->op != KOP_LOAD || op->buf != buf) continue;
        if (op->offset != 0 || memcmp(op->strides, st->strides, sizeof op->strides) != 0)
            return false;
        reads = true;
    }
    return reads;
}

int kernel_reads(const Kernel *k, int *bufs, int max) {
    int n = 0;
    if (k->kind != KERNEL_LOOP) {
        for (int i = 0; i < k->n_in && n < max; i++)
            if (n == 0 || bufs[0] != k->in[i]) bufs[n++] = k->in[i];
        return n;
    }
    for (int i = 0; i < k->n_ops; i++) {
        if (k->ops[i].op != KOP_LOAD) continue;
        bool seen = false;
        for (int q = 0; q < n; q++) seen |= bufs[q] == k->ops[i].buf;
        if (!seen && n < max) bufs[n++] = k->ops[i].buf;
    }
    return n;
}

int kernel_writes(const Kernel *k) {
    return k->out;
}

int kernel_stores(const Kernel *k, int *bufs, int max) {
    if (k->kind != KERNEL_LOOP) {
        if (max > 0) bufs[0] = k->out;
        return max > 0;
    }
    int n = 0;
    for (int s = 0; s < k->n_stores && n < max; s++) bufs[n++] = k->stores[s].buf;
    return n;
}

static int64_t loop_points(const Kernel *k, bool outer_only) {
    int64_t n = 1;
    for (int a = 0; a < k->rank; a++)
        if (!outer_only || !(k->reduce_axes & (1u << a))) n *= k->dims[a];
    return n;
}

double kernel_flops(const Kernel *k) {
    const KTemplate *t = &k->t;
    switch (k->kind) {
    case KERNEL_LOOP: {
        double f = 0;
        for (int i = 0; i < k->n_ops; i++) {
            KOpKind op = k->ops[i].op;
            if (op == KOP_LOAD || op == KOP_CONST || op == KOP_INDEX) continue;
            bool inner =
                k->ops[i].phase == KPHASE_INNER || op == KOP_REDUCE_SUM || op == KOP_REDUCE_MAX;
            f += (double)loop_points(k, !inner);
        }
        return f;
    }
    case KERNEL_MATMUL:
        return 2.0 * (double)(t->batch * t->m * t->n * t->k);
    case KERNEL_MAX_POOL2D:
    case KERNEL_POOL_SCATTER:
    case KERNEL_POOL_GATHER:
        return (double)(t->planes * t->HO * t->WO * t->kernel * t->kernel);
    default:
        return 2.0 * (double)(t->T * t->N * t->O * t->C * t->KH * t->KW * t->HO * t->WO);
    }
}

double kernel_bytes(const KernelProgram *p, const Kernel *k, int elem_size) {
    int bufs[64], outs[64];
    int n = kernel_reads(k, bufs, 64), n_out = kernel_stores(k, outs, 64);
    double b = 0;
    for (int i = 0; i < n_out; i++) b += (double)p->bufs[outs[i]].numel;
    for (int i = 0; i < n; i++) b += (double)p->bufs[bufs[i]].numel;
    return b * elem_size;
}

void kernel_describe(const Graph *g, const Kernel *k, char *buf, int size) {
    int n = 0;
    buf[0] = 0;
    for (int i = 0; i < k->n_nodes && n < size; i++) {
        int w = snprintf(buf + n, (size_t)(size - n), "%s%s", i ? "+" : "",
                         op_info[g->nodes[k->nodes[i]].op].name);
        if (w < 0) break;
        n += w;
    }
}

bool kernel_is_conv(KernelKind kind) {
    return kind == KERNEL_CONV2D || kind == KERNEL_CONV2D_GRAD_INPUT ||
           kind == KERNEL_CONV2D_GRAD_WEIGHT;
}

const char *kernel_kind_name(KernelKind kind) {
    static const char *names[KERNEL_KIND_COUNT] = {
        "loop",   "conv2d",     "conv2d_grad_input", "conv2d_grad_weight",
        "matmul", "max_pool2d", "pool_scatter",      "pool_gather"};
    return kind < KERNEL_KIND_COUNT ? names[kind] : "?";
}

const char *kop_name(KOpKind op) {
    static const char *names[KOP_COUNT] = {
        "load", "const", "index", "add", "sub", "mul",    "div",        "neg",       "exp",
        "log",  "rsqrt", "sqrt",  "gt",  "eq",  "select", "reduce_sum", "reduce_max"};
    return op < KOP_COUNT ? names[op] : "?";
}
