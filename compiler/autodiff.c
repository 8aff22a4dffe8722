#include "autodiff.h"

#include <stdlib.h>

/* ---- vector-Jacobian rules ----
 *
 * A rule receives a copy of the node (pushing new nodes may move g->nodes), its index, the
 * cotangent dy of its output and which operands need a gradient; it writes the cotangent node of
 * each needed operand into dx. Rules use only primitives, so their output can be differentiated
 * again; reusing the node itself (y) where the derivative is a function of the output keeps the
 * gradient graph small and still differentiable, since y is a node of the graph like any other. */
typedef void (*VjpRule)(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx);

static Shape shape_of(const Graph *g, int id) {
    return g->nodes[id].shape;
}

static int zeros_like(Graph *g, int id) {
    if (id < 0) return g_const(g, 0.0, shape_scalar()); /* keeps the sticky error */
    return g_const(g, 0.0, shape_of(g, id));
}

static void vjp_add(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)g, (void)n, (void)y;
    if (need[0]) dx[0] = dy;
    if (need[1]) dx[1] = dy;
}

static void vjp_sub(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)n, (void)y;
    if (need[0]) dx[0] = dy;
    if (need[1]) dx[1] = g_unary(g, OP_NEG, dy);
}

static void vjp_mul(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[0]) dx[0] = g_mul(g, dy, n->in[1]);
    if (need[1]) dx[1] = g_mul(g, dy, n->in[0]);
}

/* y = a / b: da = dy / b, db = -dy * a / b^2 = -(dy * y) / b. */
static void vjp_div(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    if (need[0]) dx[0] = g_div(g, dy, n->in[1]);
    if (need[1]) dx[1] = g_unary(g, OP_NEG, g_div(g, g_mul(g, dy, y), n->in[1]));
}

static void vjp_neg(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)n, (void)y;
    if (need[0]) dx[0] = g_unary(g, OP_NEG, dy);
}

static void vjp_exp(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)n;
    if (need[0]) dx[0] = g_mul(g, dy, y);
}

static void vjp_log(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[0]) dx[0] = g_div(g, dy, n->in[0]);
}

/* y = x^(-1/2): dx = -0.5 * dy * x^(-3/2) = -0.5 * dy * y^3. */
static void vjp_rsqrt(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)n;
    if (need[0]) dx[0] = g_scale(g, g_mul(g, dy, g_mul(g, y, g_mul(g, y, y))), -0.5);
}

/* y = x^(1/2): dx = 0.5 * dy / y. */
static void vjp_sqrt(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)n;
    if (need[0]) dx[0] = g_scale(g, g_div(g, dy, y), 0.5);
}

/* The mask is piecewise constant: only the chosen branch receives the cotangent. */
static void vjp_select(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    int zero = zeros_like(g, dy);
    if (need[1]) dx[1] = g_select(g, n->in[0], dy, zero);
    if (need[2]) dx[2] = g_select(g, n->in[0], zero, dy);
}

static void vjp_reduce_sum(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[0]) dx[0] = g_expand_as(g, dy, shape_of(g, n->in[0]));
}

/* The cotangent goes to every element equal to its window's maximum. With ties it is given in
 * full to each tied element (not split), which is a valid subgradient choice only without ties;
 * inputs of real data essentially never tie, and max_pool2d (argmax-based) is used for pooling. */
static void vjp_reduce_max(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    if (!need[0]) return;
    Shape xs = shape_of(g, n->in[0]);
    int at_max = g_eq(g, n->in[0], g_expand_as(g, y, xs));
    int spread = g_expand_as(g, dy, xs);
    dx[0] = g_select(g, at_max, spread, zeros_like(g, spread));
}

static void vjp_broadcast(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[0]) dx[0] = g_sum_to(g, dy, shape_of(g, n->in[0]));
}

static void vjp_reshape(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[0]) dx[0] = g_reshape(g, dy, shape_of(g, n->in[0]));
}

/* Output axis i is input axis perm[i], so input axis perm[i] comes back from output axis i. */
static void vjp_permute(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (!need[0]) return;
    int inv[MAX_RANK] = {0};
    for (int i = 0; i < n->shape.rank; i++) inv[n->attr.perm[i]] = i;
    dx[0] = g_permute(g, dy, inv);
}

/* C = op(A) op(B). Each case is the plain rule dA' = dC B'^T, dB' = A'^T dC for A' = op(A),
 * B' = op(B), transposed back where A or B entered transposed, and folded into the flags. */
static void vjp_matmul(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    int a = n->in[0], b = n->in[1];
    bool ta = n->attr.trans_a, tb = n->attr.trans_b;
    if (need[0]) dx[0] = ta ? g_matmul(g, b, dy, tb, true) : g_matmul(g, dy, b, false, !tb);
    if (need[1]) dx[1] = tb ? g_matmul(g, dy, a, true, ta) : g_matmul(g, a, dy, !ta, false);
}

/* conv2d, conv2d_grad_input and conv2d_grad_weight are the three faces of one bilinear form
 * <dy, conv2d(x, w)>, so each one's rule is made of the other two with the same attributes. */
static void vjp_conv2d(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    int x = n->in[0], w = n->in[1], s = n->attr.stride, p = n->attr.padding;
    if (need[0]) dx[0] = g_conv2d_grad_input(g, dy, w, shape_of(g, x), s, p);
    if (need[1]) dx[1] = g_conv2d_grad_weight(g, x, dy, shape_of(g, w), s, p);
}

/* z = conv2d_grad_input(u, w): d(u) = conv2d(dz, w), d(w) = conv2d_grad_weight(dz, u). */
static void vjp_conv2d_grad_input(Graph *g, const Node *n, int y, int dy, const bool *need,
                                  int *dx) {
    (void)y;
    int u = n->in[0], w = n->in[1], s = n->attr.stride, p = n->attr.padding;
    if (need[0]) dx[0] = g_conv2d(g, dy, w, s, p);
    if (need[1]) dx[1] = g_conv2d_grad_weight(g, dy, u, shape_of(g, w), s, p);
}

/* z = conv2d_grad_weight(x, u): d(x) = conv2d_grad_input(u, dz), d(u) = conv2d(x, dz). */
static void vjp_conv2d_grad_weight(Graph *g, const Node *n, int y, int dy, const bool *need,
                                   int *dx) {
    (void)y;
    int x = n->in[0], u = n->in[1], s = n->attr.stride, p = n->attr.padding;
    if (need[0]) dx[0] = g_conv2d_grad_input(g, u, dy, shape_of(g, x), s, p);
    if (need[1]) dx[1] = g_conv2d(g, x, dy, s, p);
}

/* The argmax positions are piecewise constant in x, so pooling is linear in the routed values:
 * max_pool2d(x) = gather(x, x) with only the second operand differentiable, and scatter and
 * gather are each other's transposes. */
static void vjp_max_pool2d(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[0]) dx[0] = g_pool_scatter(g, n->in[0], dy, n->attr.kernel, n->attr.stride);
}

static void vjp_pool_scatter(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[1]) dx[1] = g_pool_gather(g, n->in[0], dy, n->attr.kernel, n->attr.stride);
}

static void vjp_pool_gather(Graph *g, const Node *n, int y, int dy, const bool *need, int *dx) {
    (void)y;
    if (need[1]) dx[1] = g_pool_scatter(g, n->in[0], dy, n->attr.kernel, n->attr.stride);
}

typedef struct {
    VjpRule rule;
    unsigned diff; /* bit k: operand k can carry a gradient */
} VjpInfo;

/* Ops absent here (input, const, gt, eq, one_hot, stop_grad) pass no gradient to any operand. */
static const VjpInfo vjp_table[OP_COUNT] = {
    [OP_ADD] = {vjp_add, 3},
    [OP_SUB] = {vjp_sub, 3},
    [OP_MUL] = {vjp_mul, 3},
    [OP_DIV] = {vjp_div, 3},
    [OP_NEG] = {vjp_neg, 1},
    [OP_EXP] = {vjp_exp, 1},
    [OP_LOG] = {vjp_log, 1},
    [OP_RSQRT] = {vjp_rsqrt, 1},
    [OP_SQRT] = {vjp_sqrt, 1},
    [OP_SELECT] = {vjp_select, 6},
    [OP_REDUCE_SUM] = {vjp_reduce_sum, 1},
    [OP_REDUCE_MAX] = {vjp_reduce_max, 1},
    [OP_BROADCAST] = {vjp_broadcast, 1},
    [OP_RESHAPE] = {vjp_reshape, 1},
    [OP_PERMUTE] = {vjp_permute, 1},
    [OP_MATMUL] = {vjp_matmul, 3},
    [OP_CONV2D] = {vjp_conv2d, 3},
    [OP_CONV2D_GRAD_INPUT] = {vjp_conv2d_grad_input, 3},
    [OP_CONV2D_GRAD_WEIGHT] = {vjp_conv2d_grad_weight, 3},
    [OP_MAX_POOL2D] = {vjp_max_pool2d, 1},
    [OP_POOL_SCATTER] = {vjp_pool_scatter, 2},
    [OP_POOL_GATHER] = {vjp_pool_gather, 2},
};

/* ---- the transform ---- */

static bool edge_differentiable(const Node *n, int k) {
    return (vjp_table[n->op].diff >> k) & 1u;
}

/* Marks the nodes 0..y that lie on a differentiable path from some wrt node to y: only those
 * receive cotangents, so no rule is emitted for parts of the graph the gradient cannot reach. */
static void mark_active(const Graph *g, int y, const int *wrt, int n_wrt, bool *dep, bool *active) {
    for (int i = 0; i < n_wrt; i++)
        if (wrt[i] <= y) dep[wrt[i]] = true;
    for (int i = 0; i <= y; i++) {
        const Node *n = &g->nodes[i];
        if (dep[i] || n->dtype != DT_REAL) continue;
        for (int k = 0; k < n->n_in; k++)
            if (edge_differentiable(n, k) && dep[n->in[k]]) dep[i] = true;
    }
    /* active doubles as the ancestor-of-y mark, restricted to dependent nodes */
    active[y] = dep[y];
    for (int i = y; i >= 0; i--) {
        if (!active[i]) continue;
        const Node *n = &g->nodes[i];
        for (int k = 0; k < n->n_in; k++)
            if (edge_differentiable(n, k) && dep[n->in[k]]) active[n->in[k]] = true;
    }
}

static int check_args(const Graph *g, int y, int dy, const int *wrt, int n_wrt, const int *out,
                      MamlError *err) {
    if (graph_status(g, err)) return -1;
    if (n_wrt < 0 || (n_wrt > 0 && (!wrt || !out)))
        return maml_fail(err, "autodiff: invalid list of %d wrt nodes", n_wrt);
    if (y < 0 || y >= g->n_nodes || dy < 0 || dy >= g->n_nodes)
        return maml_fail(err, "autodiff: y (%d) or dy (%d) is not a node", y, dy);
    if (g->nodes[y].dtype != DT_REAL || g->nodes[dy].dtype != DT_REAL)
        return maml_fail(err, "autodiff: y and dy must be real");
    char a[96], b[96];
    if (!shape_equal(g->nodes[y].shape, g->nodes[dy].shape))
        return maml_fail(err, "autodiff: cotangent shape %s differs from y's %s",
                         shape_str(g->nodes[dy].shape, a, sizeof a),
                         shape_str(g->nodes[y].shape, b, sizeof b));
    for (int i = 0; i < n_wrt; i++) {
        if (wrt[i] < 0 || wrt[i] >= g->n_nodes)
            return maml_fail(err, "autodiff: wrt[%d] (%d) is not a node", i, wrt[i]);
        if (g->nodes[wrt[i]].dtype != DT_REAL)
            return maml_fail(err, "autodiff: wrt[%d] (node %d, %s) is not real", i, wrt[i],
                             op_info[g->nodes[wrt[i]].op].name);
    }
    return 0;
}

static void accumulate(Graph *g, int *ct, int node, int contribution) {
    ct[node] = ct[node] < 0 ? contribution : g_add(g, ct[node], contribution);
}

/* Applies the rule of node i to its cotangent, adding the results to its operands' cotangents.
 * Walking in decreasing index order guarantees every consumer of a node was processed before the
 * node itself, so its cotangent is complete when it is read. */
static void backprop_node(Graph *g, int i, int *ct, const bool *active) {
    Node n = g->nodes[i];
    bool need[MAX_INPUTS] = {false}, any = false;
    for (int k = 0; k < n.n_in; k++) {
        need[k] = edge_differentiable(&n, k) && active[n.in[k]];
        any = any || need[k];
    }
    if (!any) return;
    int dx[MAX_INPUTS] = {-1, -1, -1};
    vjp_table[n.op].rule(g, &n, i, ct[i], need, dx);
    for (int k = 0; k < n.n_in && !g->failed; k++)
        if (need[k]) accumulate(g, ct, n.in[k], dx[k]);
}

static void backprop(Graph *g, int y, int dy, const int *wrt, int n_wrt, int *out, int *ct,
                     const bool *active) {
    for (int i = 0; i <= y; i++) ct[i] = -1;
    if (active[y]) ct[y] = dy;
    for (int i = y; i >= 0 && !g->failed; i--)
        if (active[i] && ct[i] >= 0) backprop_node(g, i, ct, active);
    for (int i = 0; i < n_wrt && !g->failed; i++) {
        int c = wrt[i] <= y ? ct[wrt[i]] : -1;
        out[i] = c >= 0 ? c : zeros_like(g, wrt[i]);
    }
}

int autodiff_vjp(Graph *g, int y, int dy, const int *wrt, int n_wrt, int *out, MamlError *err) {
    if (check_args(g, y, dy, wrt, n_wrt, out, err)) return -1;
    size_t n = (size_t)y + 1;
    bool *dep = maml_calloc(n, sizeof *dep, err);
    bool *active = maml_calloc(n, sizeof *active, err);
    int *ct = maml_calloc(n, sizeof *ct, err);
    int rc = -1;
    if (dep && active && ct) {
        mark_active(g, y, wrt, n_wrt, dep, active);
        const char *saved = g->origin;
        g->origin = "grad";
        backprop(g, y, dy, wrt, n_wrt, out, ct, active);
        g->origin = saved;
        rc = graph_status(g, err);
    }
    free(dep);
    free(active);
    free(ct);
    return rc;
}

int autodiff_grad(Graph *g, int loss, const int *wrt, int n_wrt, int *out, MamlError *err) {
    if (graph_status(g, err)) return -1;
    if (loss < 0 || loss >= g->n_nodes) return maml_fail(err, "autodiff: loss is not a node");
    Shape s = g->nodes[loss].shape;
    char buf[96];
    if (shape_numel(s) != 1)
        return maml_fail(err, "autodiff: loss must have one element, not shape %s",
                         shape_str(s, buf, sizeof buf));
    const char *saved = g->origin;
    g->origin = "grad";
    int one = g_const(g, 1.0, s);
    g->origin = saved;
    if (graph_status(g, err)) return -1;
    return autodiff_vjp(g, loss, one, wrt, n_wrt, out, err);
}
