/* Reference interpreter: every node is a dense double array, computed by the plainest loops that
 * express the primitive's definition. float32 runs round each stored value to float. Buffers are
 * freed after their last consumer, so the unrolled MAML graphs fit in memory. */
#include "ref.h"

#include "inputs.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const Graph *g;
    Precision prec;
    double **val; /* per node; NULL until computed or after release */
    MamlError *err;
} Interp;

/* Row-major strides of a shape; axes of size 1 get stride 0 when `broadcast` is set, so the same
 * offset formula reads a smaller operand inside a bigger loop. */
static void strides_of(Shape s, bool broadcast, int64_t *st) {
    int64_t acc = 1;
    for (int i = s.rank - 1; i >= 0; i--) {
        st[i] = (broadcast && s.dims[i] == 1) ? 0 : acc;
        acc *= s.dims[i];
    }
}

/* Walks the elements of shape s in row-major order while keeping the offset, under strides st, of
 * the current one: a counter per axis instead of a division per axis and element. */
typedef struct {
    Shape s;
    const int64_t *st;
    int64_t idx[MAX_RANK], off;
} Walk;

static Walk walk_start(Shape s, const int64_t *st) {
    assert(s.rank >= 0 && s.rank <= MAX_RANK); /* a node's shape: 0 to MAX_RANK axes */
    Walk w = {.s = s, .st = st, .off = 0};
    memset(w.idx, 0, sizeof w.idx);
    return w;
}

static void walk_next(Walk *w) {
    for (int i = w->s.rank - 1; i >= 0; i--) {
        w->off += w->st[i];
        if (++w->idx[i] < w->s.dims[i]) return;
        w->off -= w->st[i] * w->s.dims[i];
        w->idx[i] = 0;
    }
}

static double *in_val(Interp *in, const Node *n, int k) {
    return in->val[n->in[k]];
}

static const Node *in_node(Interp *in, const Node *n, int k) {
    return &in->g->nodes[n->in[k]];
}

static void run_elementwise(Interp *in, const Node *n, double *out, int64_t count) {
    const double *a = in_val(in, n, 0);
    if (n->n_in == 1) {
        for (int64_t i = 0; i < count; i++) out[i] = op_eval_unary(n->op, a[i]);
    } else if (n->op == OP_SELECT) {
        const double *x = in_val(in, n, 1), *y = in_val(in, n, 2);
        for (int64_t i = 0; i < count; i++) out[i] = a[i] != 0.0 ? x[i] : y[i];
    } else {
        const double *b = in_val(in, n, 1);
        for (int64_t i = 0; i < count; i++) out[i] = op_eval_binary(n->op, a[i], b[i]);
    }
}

static void run_reduce(Interp *in, const Node *n, double *out) {
    Shape xs = in_node(in, n, 0)->shape;
    const double *x = in_val(in, n, 0);
    int64_t st[MAX_RANK], count = shape_numel(n->shape);
    strides_of(n->shape, true, st);
    for (int64_t i = 0; i < count; i++) out[i] = n->op == OP_REDUCE_SUM ? 0.0 : -INFINITY;
    Walk w = walk_start(xs, st);
    for (int64_t i = 0, total = shape_numel(xs); i < total; i++, walk_next(&w)) {
        double *o = &out[w.off];
        *o = n->op == OP_REDUCE_SUM ? *o + x[i] : fmax(*o, x[i]);
    }
}

static void run_broadcast(Interp *in, const Node *n, double *out) {
    const double *x = in_val(in, n, 0);
    int64_t st[MAX_RANK];
    strides_of(in_node(in, n, 0)->shape, true, st);
    Walk w = walk_start(n->shape, st);
    for (int64_t i = 0, total = shape_numel(n->shape); i < total; i++, walk_next(&w))
        out[i] = x[w.off];
}

static void run_permute(Interp *in, const Node *n, double *out) {
    const double *x = in_val(in, n, 0);
    int64_t xst[MAX_RANK], st[MAX_RANK];
    strides_of(in_node(in, n, 0)->shape, false, xst);
    for (int i = 0; i < n->shape.rank; i++) st[i] = xst[n->attr.perm[i]];
    Walk w = walk_start(n->shape, st);
    for (int64_t i = 0, total = shape_numel(n->shape); i < total; i++, walk_next(&w))
        out[i] = x[w.off];
}

static void run_matmul(Interp *in, const Node *n, double *out) {
    Shape as = in_node(in, n, 0)->shape;
    int r = n->shape.rank;
    int64_t m = n->shape.dims[r - 2], nn = n->shape.dims[r - 1];
    int64_t k = n->attr.trans_a ? as.dims[r - 2] : as.dims[r - 1];
    int64_t batch = shape_numel(n->shape) / (m * nn);
    const double *a = in_val(in, n, 0), *b = in_val(in, n, 1);
    for (int64_t p = 0; p < batch; p++) {
        const double *ap = a + p * m * k, *bp = b + p * k * nn;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < nn; j++) {
                double s = 0.0;
                for (int64_t q = 0; q < k; q++) {
                    double av = n->attr.trans_a ? ap[q * m + i] : ap[i * k + q];
                    double bv = n->attr.trans_b ? bp[j * k + q] : bp[q * nn + j];
                    s += av * bv;
                }
                out[(p * m + i) * nn + j] = s;
            }
    }
}

/* The three convolution primitives share one loop nest over (t, n, o, i, j, c, kh, kw), pairing
 * input pixel x[t,n,c,i*s-p+kh,j*s-p+kw], weight w[t,o,c,kh,kw] and output y[t,n,o,i,j]; each
 * primitive computes one of the three from the other two. */
typedef struct {
    int64_t T, N, C, H, W, O, KH, KW, HO, WO;
    int stride, pad;
} ConvDims;

static ConvDims conv_dims(Shape x, Shape w, Shape y, const Attr *a) {
    ConvDims d = {x.dims[0], x.dims[1], x.dims[2], x.dims[3], x.dims[4], w.dims[1],
                  w.dims[3], w.dims[4], y.dims[3], y.dims[4], a->stride, a->padding};
    return d;
}

/* First output index i with i*stride - pad + k >= 0, and one past the last with the input
 * index < size: the taps of kernel offset k that fall inside the input. */
static void valid_range(int64_t k, int64_t size, int64_t out, const ConvDims *d, int64_t *lo,
                        int64_t *hi) {
    int64_t first = d->pad - k;
    *lo = first <= 0 ? 0 : (first + d->stride - 1) / d->stride;
    int64_t last = size - 1 + d->pad - k; /* i*stride <= last */
    *hi = last < 0 ? 0 : last / d->stride + 1;
    if (*hi > out) *hi = out;
}

/* One (t, n, o, c, kh, kw) slice of the loop nest: all output positions that see this tap. */
static void conv_tap(OpKind op, const ConvDims *d, int64_t kh, int64_t kw, const double *x,
                     const double *w, const double *y, double *dst, int64_t xb, int64_t wi,
                     int64_t yb) {
    int64_t i0, i1, j0, j1;
    valid_range(kh, d->H, d->HO, d, &i0, &i1);
    valid_range(kw, d->W, d->WO, d, &j0, &j1);
    /* the weight (or, for the weight gradient, its running sum) stays in a register */
    double wv = op == OP_CONV2D_GRAD_WEIGHT ? dst[wi] : w[wi];
    for (int64_t i = i0; i < i1; i++) {
        int64_t xr = xb + (i * d->stride - d->pad + kh) * d->W - d->pad + kw, yr = yb + i * d->WO;
        int64_t s = d->stride;
        if (op == OP_CONV2D)
            for (int64_t j = j0; j < j1; j++) dst[yr + j] += x[xr + j * s] * wv;
        else if (op == OP_CONV2D_GRAD_INPUT)
            for (int64_t j = j0; j < j1; j++) dst[xr + j * s] += y[yr + j] * wv;
        else
            for (int64_t j = j0; j < j1; j++) wv += x[xr + j * s] * y[yr + j];
    }
    if (op == OP_CONV2D_GRAD_WEIGHT) dst[wi] = wv;
}

static void run_conv_family(Interp *in, const Node *n, double *out) {
    const Node *a = in_node(in, n, 0), *b = in_node(in, n, 1);
    Shape xs, ws, ys;
    const double *x = NULL, *w = NULL, *y = NULL;
    if (n->op == OP_CONV2D) {
        xs = a->shape, ws = b->shape, ys = n->shape;
        x = in_val(in, n, 0), w = in_val(in, n, 1);
    } else if (n->op == OP_CONV2D_GRAD_INPUT) {
        ys = a->shape, ws = b->shape, xs = n->shape;
        y = in_val(in, n, 0), w = in_val(in, n, 1);
    } else {
        xs = a->shape, ys = b->shape, ws = n->shape;
        x = in_val(in, n, 0), y = in_val(in, n, 1);
    }
    ConvDims d = conv_dims(xs, ws, ys, &n->attr);
    memset(out, 0, (size_t)shape_numel(n->shape) * sizeof *out);
    for (int64_t t = 0; t < d.T; t++)
        for (int64_t nn = 0; nn < d.N; nn++)
            for (int64_t o = 0; o < d.O; o++)
                for (int64_t c = 0; c < d.C; c++)
                    for (int64_t kh = 0; kh < d.KH; kh++)
                        for (int64_t kw = 0; kw < d.KW; kw++) {
                            int64_t xb = ((t * d.N + nn) * d.C + c) * d.H * d.W;
                            int64_t wi = (((t * d.O + o) * d.C + c) * d.KH + kh) * d.KW + kw;
                            int64_t yb = ((t * d.N + nn) * d.O + o) * d.HO * d.WO;
                            conv_tap(n->op, &d, kh, kw, x, w, y, out, xb, wi, yb);
                        }
}

/* Max pooling and its two companions: for every window, the argmax is the first maximum in
 * row-major order, as PyTorch picks it. */
static void run_pool_family(Interp *in, const Node *n, double *out) {
    Shape xs = in_node(in, n, 0)->shape;
    const double *x = in_val(in, n, 0), *z = n->op == OP_MAX_POOL2D ? NULL : in_val(in, n, 1);
    int64_t H = xs.dims[xs.rank - 2], W = xs.dims[xs.rank - 1];
    int64_t HO = (H - n->attr.kernel) / n->attr.stride + 1;
    int64_t WO = (W - n->attr.kernel) / n->attr.stride + 1;
    int64_t planes = shape_numel(xs) / (H * W);
    if (n->op == OP_POOL_SCATTER) memset(out, 0, (size_t)shape_numel(xs) * sizeof *out);
    for (int64_t p = 0; p < planes; p++)
        for (int64_t i = 0; i < HO; i++)
            for (int64_t j = 0; j < WO; j++) {
                int64_t best = -1;
                for (int kh = 0; kh < n->attr.kernel; kh++)
                    for (int kw = 0; kw < n->attr.kernel; kw++) {
                        int64_t idx =
                            (p * H + i * n->attr.stride + kh) * W + j * n->attr.stride + kw;
                        if (best < 0 || x[idx] > x[best]) best = idx;
                    }
                int64_t oi = (p * HO + i) * WO + j;
                if (n->op == OP_MAX_POOL2D)
                    out[oi] = x[best];
                else if (n->op == OP_POOL_GATHER)
                    out[oi] = z[best];
                else
                    out[best] += z[oi];
            }
}

static int run_one_hot(Interp *in, const Node *n, double *out) {
    const double *labels = in_val(in, n, 0);
    int depth = n->attr.depth;
    int64_t count = shape_numel(in_node(in, n, 0)->shape);
    memset(out, 0, (size_t)(count * depth) * sizeof *out);
    for (int64_t i = 0; i < count; i++) {
        double l = labels[i];
        if (!(l >= 0 && l < depth) || l != floor(l))
            return maml_fail(in->err, "label %g at position %lld is out of range [0, %d)", l,
                             (long long)i, depth);
        out[i * depth + (int64_t)l] = 1.0;
    }
    return 0;
}

static int run_node(Interp *in, int id, double *out) {
    const Node *n = &in->g->nodes[id];
    int64_t count = shape_numel(n->shape);
    switch (n->op) {
    case OP_CONST:
        for (int64_t i = 0; i < count; i++) out[i] = n->attr.value;
        return 0;
    case OP_REDUCE_SUM:
    case OP_REDUCE_MAX:
        run_reduce(in, n, out);
        return 0;
    case OP_BROADCAST:
        run_broadcast(in, n, out);
        return 0;
    case OP_RESHAPE:
        memcpy(out, in_val(in, n, 0), (size_t)count * sizeof *out);
        return 0;
    case OP_PERMUTE:
        run_permute(in, n, out);
        return 0;
    case OP_MATMUL:
        run_matmul(in, n, out);
        return 0;
    case OP_CONV2D:
    case OP_CONV2D_GRAD_INPUT:
    case OP_CONV2D_GRAD_WEIGHT:
        run_conv_family(in, n, out);
        return 0;
    case OP_MAX_POOL2D:
    case OP_POOL_SCATTER:
    case OP_POOL_GATHER:
        run_pool_family(in, n, out);
        return 0;
    case OP_ONE_HOT:
        return run_one_hot(in, n, out);
    case OP_INPUT:
    case OP_COUNT:
        return maml_fail(in->err, "node %d: cannot run %s", id, op_info[n->op].name);
    default:
        run_elementwise(in, n, out, count);
        return 0;
    }
}

static double round_to(Precision prec, double v) {
    return prec == PREC_F32 ? (double)(float)v : v;
}

static int load_input(const Node *n, double *out, const TensorSet *inputs) {
    const Tensor *t = tensorset_find(inputs, n->name);
    for (int64_t i = 0, count = shape_numel(t->shape); i < count; i++) out[i] = tensor_get(t, i);
    return 0;
}

/* last_use[i]: index of the last live node reading node i, INT32_MAX for graph outputs, -1 for
 * nodes no output depends on (they are never computed). */
static int *compute_last_use(const Graph *g, MamlError *err) {
    int *last = maml_calloc((size_t)g->n_nodes, sizeof *last, err);
    if (!last) return NULL;
    for (int i = 0; i < g->n_nodes; i++) last[i] = -1;
    for (int i = 0; i < g->n_outputs; i++) last[g->outputs[i].node] = 0x7fffffff;
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        if (last[i] < 0) continue;
        for (int k = 0; k < g->nodes[i].n_in; k++)
            if (last[g->nodes[i].in[k]] < i) last[g->nodes[i].in[k]] = i;
    }
    return last;
}

static int store_outputs(Interp *in, TensorSet *outputs) {
    const Graph *g = in->g;
    TensorDType dt = in->prec == PREC_F32 ? TENSOR_F32 : TENSOR_F64;
    for (int i = 0; i < g->n_outputs; i++) {
        const Node *n = &g->nodes[g->outputs[i].node];
        Tensor *t = tensorset_add(outputs, g->outputs[i].name, dt, n->shape, NULL, in->err);
        if (!t) return -1;
        const double *v = in->val[g->outputs[i].node];
        for (int64_t k = 0, count = shape_numel(n->shape); k < count; k++) tensor_set(t, k, v[k]);
    }
    return 0;
}

static int execute(Interp *in, const TensorSet *inputs, const int *last) {
    const Graph *g = in->g;
    for (int i = 0; i < g->n_nodes; i++) {
        if (last[i] < 0) continue; /* dead: nobody reads it */
        int64_t count = shape_numel(g->nodes[i].shape);
        double *out = maml_alloc((size_t)count * sizeof *out, in->err);
        if (!out) return -1;
        in->val[i] = out;
        int rc = g->nodes[i].op == OP_INPUT ? load_input(&g->nodes[i], out, inputs)
                                            : run_node(in, i, out);
        if (rc) {
            char why[MAML_ERROR_MAX];
            memcpy(why, in->err->message, sizeof why);
            return maml_fail(in->err, "%s (node %d, %s%s%s)", why, i, op_info[g->nodes[i].op].name,
                             g->nodes[i].origin[0] ? " in " : "", g->nodes[i].origin);
        }
        if (in->prec == PREC_F32)
            for (int64_t k = 0; k < count; k++) out[k] = round_to(in->prec, out[k]);
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            int src = g->nodes[i].in[k];
            if (last[src] == i) {
                free(in->val[src]);
                in->val[src] = NULL;
            }
        }
    }
    return 0;
}

int ref_run(const Graph *g, Precision prec, const TensorSet *inputs, TensorSet *outputs,
            MamlError *err) {
    if (graph_status(g, err)) return -1;
    if (inputs_check(g, inputs, err)) return -1;
    Interp in = {.g = g, .prec = prec, .err = err};
    int *last = compute_last_use(g, err);
    in.val = maml_calloc((size_t)g->n_nodes, sizeof *in.val, err);
    int rc = (!last || !in.val) ? -1 : execute(&in, inputs, last);
    if (rc == 0) rc = store_outputs(&in, outputs);
    for (int i = 0; in.val && i < g->n_nodes; i++) free(in.val[i]);
    free(in.val);
    free(last);
    return rc;
}
