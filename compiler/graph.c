#include "graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const OpInfo op_info[OP_COUNT] = {
    [OP_INPUT] = {"input", 0},
    [OP_CONST] = {"const", 0},
    [OP_ADD] = {"add", 2},
    [OP_SUB] = {"sub", 2},
    [OP_MUL] = {"mul", 2},
    [OP_DIV] = {"div", 2},
    [OP_NEG] = {"neg", 1},
    [OP_EXP] = {"exp", 1},
    [OP_LOG] = {"log", 1},
    [OP_RSQRT] = {"rsqrt", 1},
    [OP_SQRT] = {"sqrt", 1},
    [OP_GT] = {"gt", 2},
    [OP_EQ] = {"eq", 2},
    [OP_SELECT] = {"select", 3},
    [OP_REDUCE_SUM] = {"reduce_sum", 1},
    [OP_REDUCE_MAX] = {"reduce_max", 1},
    [OP_BROADCAST] = {"broadcast", 1},
    [OP_RESHAPE] = {"reshape", 1},
    [OP_PERMUTE] = {"permute", 1},
    [OP_MATMUL] = {"matmul", 2},
    [OP_CONV2D] = {"conv2d", 2},
    [OP_CONV2D_GRAD_INPUT] = {"conv2d_grad_input", 2},
    [OP_CONV2D_GRAD_WEIGHT] = {"conv2d_grad_weight", 2},
    [OP_MAX_POOL2D] = {"max_pool2d", 1},
    [OP_POOL_SCATTER] = {"pool_scatter", 2},
    [OP_POOL_GATHER] = {"pool_gather", 2},
    [OP_ONE_HOT] = {"one_hot", 1},
    [OP_STOP_GRAD] = {"stop_grad", 1},
};

void graph_init(Graph *g) {
    memset(g, 0, sizeof *g);
    g->origin = "";
}

void graph_free(Graph *g) {
    for (int i = 0; i < g->n_nodes; i++) free(g->nodes[i].name);
    for (int i = 0; i < g->n_outputs; i++) free(g->outputs[i].name);
    free(g->nodes);
    free(g->outputs);
    memset(g, 0, sizeof *g);
}

int graph_status(const Graph *g, MamlError *err) {
    if (!g->failed) return 0;
    if (err) *err = g->err;
    return -1;
}

/* Records the first failure; later ones are consequences and keep the first message. */
static int fail(Graph *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Graph *g, const char *fmt, ...) {
    if (g->failed) return -1;
    g->failed = true;
    char raw[MAML_ERROR_MAX];
    int n = snprintf(raw, sizeof raw, "%s%s", g->origin, g->origin[0] ? ": " : "");
    if (n < 0 || (size_t)n >= sizeof raw) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw + n, sizeof raw - (size_t)n, fmt, ap);
    va_end(ap);
    /* one line, as maml_fail makes every message */
    maml_error_escape(g->err.message, sizeof g->err.message, raw);
    return -1;
}

/* ---- shapes ---- */

Shape shape_make(int rank, const int64_t *dims) {
    Shape s = {.rank = rank};
    for (int i = 0; i < rank && i < MAX_RANK; i++) s.dims[i] = dims[i];
    return s;
}

Shape shape_scalar(void) {
    Shape s = {.rank = 0};
    return s;
}

int64_t shape_numel(Shape s) {
    int64_t n = 1;
    for (int i = 0; i < s.rank; i++) n *= s.dims[i];
    return n;
}

bool shape_equal(Shape a, Shape b) {
    if (a.rank != b.rank) return false;
    for (int i = 0; i < a.rank; i++)
        if (a.dims[i] != b.dims[i]) return false;
    return true;
}

char *shape_str(Shape s, char *buf, int size) {
    int n = snprintf(buf, (size_t)size, "[");
    for (int i = 0; i < s.rank && n < size; i++)
        n += snprintf(buf + n, (size_t)(size - n), "%s%lld", i ? ", " : "", (long long)s.dims[i]);
    if (n < size) snprintf(buf + n, (size_t)(size - n), "]");
    return buf;
}

static bool shape_valid(Shape s) {
    if (s.rank < 0 || s.rank > MAX_RANK) return false;
    for (int i = 0; i < s.rank; i++)
        if (s.dims[i] <= 0) return false;
    return true;
}

/* ---- node creation ---- */

static int push(Graph *g, OpKind op, DType dtype, Shape shape, int n_in, const int *in,
                const Attr *attr) {
    if (g->failed) return -1;
    for (int i = 0; i < n_in; i++)
        if (in[i] < 0 || in[i] >= g->n_nodes)
            return fail(g, "%s: operand %d is not a node", op_info[op].name, i);
    if (!shape_valid(shape)) {
        char buf[96];
        return fail(g, "%s: invalid shape %s", op_info[op].name, shape_str(shape, buf, sizeof buf));
    }
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? 2 * g->cap_nodes : 256;
        Node *nodes = realloc(g->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) return fail(g, "out of memory growing the graph to %d nodes", cap);
        g->nodes = nodes;
        g->cap_nodes = cap;
    }
    Node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->dtype = dtype;
    n->shape = shape;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++) n->in[i] = in[i];
    if (attr) n->attr = *attr;
    n->origin = g->origin;
    return g->n_nodes++;
}

static const Node *node(const Graph *g, int id) {
    return &g->nodes[id];
}

static bool ids_ok(const Graph *g, int n, const int *ids) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->n_nodes) return false;
    return true;
}

int g_input(Graph *g, const char *name, InputKind kind, DType dtype, Shape shape) {
    if (graph_find_input(g, name) >= 0) return fail(g, "duplicate graph input '%s'", name);
    int id = push(g, OP_INPUT, dtype, shape, 0, NULL, NULL);
    if (id < 0) return -1;
    g->nodes[id].name = strdup(name);
    if (!g->nodes[id].name) return fail(g, "out of memory");
    g->nodes[id].input_kind = kind;
    return id;
}

int g_const(Graph *g, double value, Shape shape) {
    Attr a = {.value = value};
    return push(g, OP_CONST, DT_REAL, shape, 0, NULL, &a);
}

static int check_same(Graph *g, const char *op, int a, int b) {
    char sa[96], sb[96];
    if (!shape_equal(node(g, a)->shape, node(g, b)->shape))
        return fail(g, "%s: operand shapes differ: %s vs %s", op,
                    shape_str(node(g, a)->shape, sa, sizeof sa),
                    shape_str(node(g, b)->shape, sb, sizeof sb));
    return 0;
}

static int check_real(Graph *g, const char *op, int a) {
    if (node(g, a)->dtype != DT_REAL) return fail(g, "%s: operand must be real", op);
    return 0;
}

int g_binary(Graph *g, OpKind op, int a, int b) {
    int in[2] = {a, b};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "%s: missing operand", op_info[op].name);
    if (check_same(g, op_info[op].name, a, b) || check_real(g, op_info[op].name, a) ||
        check_real(g, op_info[op].name, b))
        return -1;
    DType dt = (op == OP_GT || op == OP_EQ) ? DT_BOOL : DT_REAL;
    return push(g, op, dt, node(g, a)->shape, 2, in, NULL);
}

int g_add(Graph *g, int a, int b) {
    return g_binary(g, OP_ADD, a, b);
}
int g_sub(Graph *g, int a, int b) {
    return g_binary(g, OP_SUB, a, b);
}
int g_mul(Graph *g, int a, int b) {
    return g_binary(g, OP_MUL, a, b);
}
int g_div(Graph *g, int a, int b) {
    return g_binary(g, OP_DIV, a, b);
}
int g_gt(Graph *g, int a, int b) {
    return g_binary(g, OP_GT, a, b);
}
int g_eq(Graph *g, int a, int b) {
    return g_binary(g, OP_EQ, a, b);
}

int g_unary(Graph *g, OpKind op, int a) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "%s: missing operand", op_info[op].name);
    if (check_real(g, op_info[op].name, a)) return -1;
    return push(g, op, DT_REAL, node(g, a)->shape, 1, &a, NULL);
}

int g_stop_grad(Graph *g, int a) {
    return g_unary(g, OP_STOP_GRAD, a);
}

int g_select(Graph *g, int mask, int a, int b) {
    int in[3] = {mask, a, b};
    if (g->failed || !ids_ok(g, 3, in)) return fail(g, "select: missing operand");
    if (node(g, mask)->dtype != DT_BOOL) return fail(g, "select: first operand must be a mask");
    if (check_same(g, "select", mask, a) || check_same(g, "select", a, b) ||
        check_real(g, "select", a) || check_real(g, "select", b))
        return -1;
    return push(g, OP_SELECT, DT_REAL, node(g, a)->shape, 3, in, NULL);
}

int g_reduce(Graph *g, OpKind op, int a, uint32_t axes) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "%s: missing operand", op_info[op].name);
    if (check_real(g, op_info[op].name, a)) return -1;
    Shape s = node(g, a)->shape;
    if (axes >> s.rank)
        return fail(g, "%s: axis out of range for rank %d", op_info[op].name, s.rank);
    for (int i = 0; i < s.rank; i++)
        if (axes & (1u << i)) s.dims[i] = 1;
    Attr attr = {.axes = axes};
    return push(g, op, DT_REAL, s, 1, &a, &attr);
}

int g_broadcast(Graph *g, int a, Shape shape) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "broadcast: missing operand");
    Shape s = node(g, a)->shape;
    char sa[96], sb[96];
    bool ok = s.rank == shape.rank;
    for (int i = 0; ok && i < s.rank; i++) ok = s.dims[i] == shape.dims[i] || s.dims[i] == 1;
    if (!ok)
        return fail(g, "broadcast: cannot expand %s to %s", shape_str(s, sa, sizeof sa),
                    shape_str(shape, sb, sizeof sb));
    return push(g, OP_BROADCAST, node(g, a)->dtype, shape, 1, &a, NULL);
}

int g_reshape(Graph *g, int a, Shape shape) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "reshape: missing operand");
    char sa[96], sb[96];
    if (shape_numel(shape) != shape_numel(node(g, a)->shape))
        return fail(g, "reshape: %s and %s differ in size",
                    shape_str(node(g, a)->shape, sa, sizeof sa), shape_str(shape, sb, sizeof sb));
    return push(g, OP_RESHAPE, node(g, a)->dtype, shape, 1, &a, NULL);
}

int g_permute(Graph *g, int a, const int *perm) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "permute: missing operand");
    Shape s = node(g, a)->shape, out = s;
    uint32_t seen = 0;
    Attr attr = {0};
    for (int i = 0; i < s.rank; i++) {
        if (perm[i] < 0 || perm[i] >= s.rank || (seen & (1u << perm[i])))
            return fail(g, "permute: invalid permutation");
        seen |= 1u << perm[i];
        out.dims[i] = s.dims[perm[i]];
        attr.perm[i] = perm[i];
    }
    return push(g, OP_PERMUTE, node(g, a)->dtype, out, 1, &a, &attr);
}

int g_matmul(Graph *g, int a, int b, bool trans_a, bool trans_b) {
    int in[2] = {a, b};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "matmul: missing operand");
    Shape sa = node(g, a)->shape, sb = node(g, b)->shape;
    char ba[96], bb[96];
    bool ok = sa.rank >= 2 && sa.rank == sb.rank;
    for (int i = 0; ok && i < sa.rank - 2; i++) ok = sa.dims[i] == sb.dims[i];
    int r = sa.rank;
    int64_t m = 0, k1 = 0, k2 = 0, n = 0;
    if (ok) {
        m = trans_a ? sa.dims[r - 1] : sa.dims[r - 2];
        k1 = trans_a ? sa.dims[r - 2] : sa.dims[r - 1];
        k2 = trans_b ? sb.dims[r - 1] : sb.dims[r - 2];
        n = trans_b ? sb.dims[r - 2] : sb.dims[r - 1];
        ok = k1 == k2;
    }
    if (!ok)
        return fail(g, "matmul: shapes %s%s and %s%s do not fit", shape_str(sa, ba, sizeof ba),
                    trans_a ? "^T" : "", shape_str(sb, bb, sizeof bb), trans_b ? "^T" : "");
    Shape out = sa;
    out.dims[r - 2] = m;
    out.dims[r - 1] = n;
    Attr attr = {.trans_a = trans_a, .trans_b = trans_b};
    return push(g, OP_MATMUL, DT_REAL, out, 2, in, &attr);
}

static int64_t conv_out(int64_t in, int64_t k, int stride, int pad) {
    return (in + 2 * pad - k) / stride + 1;
}

/* Checks x [T,N,C,H,W], w [T,O,C,KH,KW] and dy [T,N,O,HO,WO] against each other. */
static int check_conv(Graph *g, const char *op, Shape x, Shape w, Shape y, int stride, int pad) {
    char sx[96], sw[96], sy[96];
    bool ok = x.rank == 5 && w.rank == 5 && y.rank == 5 && stride > 0 && pad >= 0 &&
              x.dims[0] == w.dims[0] && x.dims[0] == y.dims[0] && x.dims[1] == y.dims[1] &&
              x.dims[2] == w.dims[2] && w.dims[1] == y.dims[2] &&
              x.dims[3] + 2 * pad >= w.dims[3] && x.dims[4] + 2 * pad >= w.dims[4] &&
              conv_out(x.dims[3], w.dims[3], stride, pad) == y.dims[3] &&
              conv_out(x.dims[4], w.dims[4], stride, pad) == y.dims[4];
    if (!ok)
        return fail(g, "%s: x %s, w %s, y %s do not fit (stride %d, padding %d)", op,
                    shape_str(x, sx, sizeof sx), shape_str(w, sw, sizeof sw),
                    shape_str(y, sy, sizeof sy), stride, pad);
    return 0;
}

int g_conv2d(Graph *g, int x, int w, int stride, int padding) {
    int in[2] = {x, w};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "conv2d: missing operand");
    Shape sx = node(g, x)->shape, sw = node(g, w)->shape;
    char bx[96], bw[96];
    if (sx.rank != 5 || sw.rank != 5 || stride <= 0 || padding < 0 ||
        sx.dims[3] + 2 * padding < sw.dims[3] || sx.dims[4] + 2 * padding < sw.dims[4])
        return fail(g, "conv2d: x %s and w %s do not fit", shape_str(sx, bx, sizeof bx),
                    shape_str(sw, bw, sizeof bw));
    Shape y =
        SHAPE(sx.dims[0], sx.dims[1], sw.dims[1], conv_out(sx.dims[3], sw.dims[3], stride, padding),
              conv_out(sx.dims[4], sw.dims[4], stride, padding));
    if (check_conv(g, "conv2d", sx, sw, y, stride, padding)) return -1;
    Attr attr = {.stride = stride, .padding = padding};
    return push(g, OP_CONV2D, DT_REAL, y, 2, in, &attr);
}

int g_conv2d_grad_input(Graph *g, int dy, int w, Shape x_shape, int stride, int padding) {
    int in[2] = {dy, w};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "conv2d_grad_input: missing operand");
    if (check_conv(g, "conv2d_grad_input", x_shape, node(g, w)->shape, node(g, dy)->shape, stride,
                   padding))
        return -1;
    Attr attr = {.stride = stride, .padding = padding};
    return push(g, OP_CONV2D_GRAD_INPUT, DT_REAL, x_shape, 2, in, &attr);
}

int g_conv2d_grad_weight(Graph *g, int x, int dy, Shape w_shape, int stride, int padding) {
    int in[2] = {x, dy};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "conv2d_grad_weight: missing operand");
    if (check_conv(g, "conv2d_grad_weight", node(g, x)->shape, w_shape, node(g, dy)->shape, stride,
                   padding))
        return -1;
    Attr attr = {.stride = stride, .padding = padding};
    return push(g, OP_CONV2D_GRAD_WEIGHT, DT_REAL, w_shape, 2, in, &attr);
}

static Shape pooled(Shape s, int kernel, int stride) {
    s.dims[s.rank - 2] = (s.dims[s.rank - 2] - kernel) / stride + 1;
    s.dims[s.rank - 1] = (s.dims[s.rank - 1] - kernel) / stride + 1;
    return s;
}

static int check_pool(Graph *g, const char *op, Shape x, int kernel, int stride) {
    char sx[96];
    if (x.rank < 2 || kernel <= 0 || stride <= 0 || x.dims[x.rank - 1] < kernel ||
        x.dims[x.rank - 2] < kernel)
        return fail(g, "%s: input %s too small for kernel %d", op, shape_str(x, sx, sizeof sx),
                    kernel);
    return 0;
}

int g_max_pool2d(Graph *g, int x, int kernel, int stride) {
    if (g->failed || !ids_ok(g, 1, &x)) return fail(g, "max_pool2d: missing operand");
    Shape sx = node(g, x)->shape;
    if (check_pool(g, "max_pool2d", sx, kernel, stride)) return -1;
    Attr attr = {.kernel = kernel, .stride = stride};
    return push(g, OP_MAX_POOL2D, DT_REAL, pooled(sx, kernel, stride), 1, &x, &attr);
}

int g_pool_scatter(Graph *g, int x, int dy, int kernel, int stride) {
    int in[2] = {x, dy};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "pool_scatter: missing operand");
    Shape sx = node(g, x)->shape;
    char a[96], b[96];
    if (check_pool(g, "pool_scatter", sx, kernel, stride)) return -1;
    if (!shape_equal(pooled(sx, kernel, stride), node(g, dy)->shape))
        return fail(g, "pool_scatter: dy %s does not match pooled x %s",
                    shape_str(node(g, dy)->shape, a, sizeof a),
                    shape_str(pooled(sx, kernel, stride), b, sizeof b));
    Attr attr = {.kernel = kernel, .stride = stride};
    return push(g, OP_POOL_SCATTER, DT_REAL, sx, 2, in, &attr);
}

int g_pool_gather(Graph *g, int x, int z, int kernel, int stride) {
    int in[2] = {x, z};
    if (g->failed || !ids_ok(g, 2, in)) return fail(g, "pool_gather: missing operand");
    Shape sx = node(g, x)->shape;
    if (check_pool(g, "pool_gather", sx, kernel, stride) || check_same(g, "pool_gather", x, z))
        return -1;
    Attr attr = {.kernel = kernel, .stride = stride};
    return push(g, OP_POOL_GATHER, DT_REAL, pooled(sx, kernel, stride), 2, in, &attr);
}

int g_one_hot(Graph *g, int labels, int depth) {
    if (g->failed || !ids_ok(g, 1, &labels)) return fail(g, "one_hot: missing operand");
    Shape s = node(g, labels)->shape;
    if (node(g, labels)->dtype != DT_INT) return fail(g, "one_hot: labels must be integers");
    if (s.rank >= MAX_RANK || depth <= 0) return fail(g, "one_hot: invalid depth or rank");
    s.dims[s.rank++] = depth;
    Attr attr = {.depth = depth};
    return push(g, OP_ONE_HOT, DT_REAL, s, 1, &labels, &attr);
}

/* ---- conveniences ---- */

int g_scale(Graph *g, int a, double c) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "scale: missing operand");
    return g_mul(g, a, g_const(g, c, node(g, a)->shape));
}

int g_add_scalar(Graph *g, int a, double c) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "add_scalar: missing operand");
    return g_add(g, a, g_const(g, c, node(g, a)->shape));
}

int g_expand_as(Graph *g, int a, Shape shape) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "expand: missing operand");
    if (shape_equal(node(g, a)->shape, shape)) return a;
    return g_broadcast(g, a, shape);
}

int g_sum_to(Graph *g, int a, Shape shape) {
    if (g->failed || !ids_ok(g, 1, &a)) return fail(g, "sum_to: missing operand");
    Shape s = node(g, a)->shape;
    char sa[96], sb[96];
    if (s.rank != shape.rank)
        return fail(g, "sum_to: rank of %s differs from %s", shape_str(s, sa, sizeof sa),
                    shape_str(shape, sb, sizeof sb));
    uint32_t axes = 0;
    for (int i = 0; i < s.rank; i++) {
        if (shape.dims[i] == s.dims[i]) continue;
        if (shape.dims[i] != 1)
            return fail(g, "sum_to: cannot reduce %s to %s", shape_str(s, sa, sizeof sa),
                        shape_str(shape, sb, sizeof sb));
        axes |= 1u << i;
    }
    return axes ? g_reduce(g, OP_REDUCE_SUM, a, axes) : a;
}

/* ---- outputs and lookup ---- */

int graph_add_output(Graph *g, const char *name, int id) {
    if (g->failed) return -1;
    if (id < 0 || id >= g->n_nodes) return fail(g, "output '%s' is not a node", name);
    if (graph_find_output(g, name) >= 0) return fail(g, "duplicate graph output '%s'", name);
    if (g->n_outputs == g->cap_outputs) {
        int cap = g->cap_outputs ? 2 * g->cap_outputs : 32;
        GraphOutput *o = realloc(g->outputs, (size_t)cap * sizeof *o);
        if (!o) return fail(g, "out of memory");
        g->outputs = o;
        g->cap_outputs = cap;
    }
    char *copy = strdup(name);
    if (!copy) return fail(g, "out of memory");
    g->outputs[g->n_outputs].name = copy;
    g->outputs[g->n_outputs].node = id;
    g->n_outputs++;
    return 0;
}

int graph_find_output(const Graph *g, const char *name) {
    for (int i = 0; i < g->n_outputs; i++)
        if (strcmp(g->outputs[i].name, name) == 0) return i;
    return -1;
}

int graph_find_input(const Graph *g, const char *name) {
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == OP_INPUT && strcmp(g->nodes[i].name, name) == 0) return i;
    return -1;
}

bool graph_is_data_input(const Graph *g, const char *name) {
    int node = graph_find_input(g, name);
    return node >= 0 && g->nodes[node].input_kind == INPUT_DATA;
}

/* ---- elementwise arithmetic ---- */

double op_eval_binary(OpKind op, double a, double b) {
    switch (op) {
    case OP_ADD:
        return a + b;
    case OP_SUB:
        return a - b;
    case OP_MUL:
        return a * b;
    case OP_DIV:
        return a / b;
    case OP_GT:
        return a > b ? 1.0 : 0.0;
    case OP_EQ:
        return a == b ? 1.0 : 0.0;
    default:
        return NAN;
    }
}

double op_eval_unary(OpKind op, double a) {
    switch (op) {
    case OP_NEG:
        return -a;
    case OP_EXP:
        return exp(a);
    case OP_LOG:
        return log(a);
    case OP_RSQRT:
        return 1.0 / sqrt(a);
    case OP_SQRT:
        return sqrt(a);
    case OP_STOP_GRAD:
        return a;
    default:
        return NAN;
    }
}
