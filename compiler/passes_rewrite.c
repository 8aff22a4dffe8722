/* Constant folding and algebraic simplification: per-node rules over the graph being copied.
 *
 * A rule sees its node's operands as they are in the new graph (already folded or simplified in
 * this sweep) and returns the new graph's node that computes the same values: an operand, a fill
 * constant, a fresh node, or a copy of the node when no rule applies. Fill constants (OP_CONST) are
 * the only constants the IR has, so "is the operand the constant c" is one node test. */
#include <string.h>

#include "passes_internal.h"

static const char *const rule_names[PASS_RULE_COUNT] = {
    [RULE_FOLD_ELEMENTWISE] = "fold_elementwise",
    [RULE_FOLD_SHAPE] = "fold_shape",
    [RULE_FOLD_REDUCE] = "fold_reduce",
    [RULE_FOLD_MATMUL] = "fold_matmul",
    [RULE_FOLD_POOL] = "fold_pool",
    [RULE_FOLD_SELECT] = "fold_select",
    [RULE_MUL_ONE] = "mul_one",
    [RULE_MUL_ZERO] = "mul_zero",
    [RULE_MUL_NEG_ONE] = "mul_neg_one",
    [RULE_DIV_ONE] = "div_one",
    [RULE_ADD_ZERO] = "add_zero",
    [RULE_ZERO_SUB] = "zero_sub",
    [RULE_NEG_NEG] = "neg_neg",
    [RULE_NEG_ABSORB] = "neg_absorb",
    [RULE_NEG_SINK] = "neg_sink",
    [RULE_SCALE_SCALE] = "scale_scale",
    [RULE_STOP_GRAD] = "stop_grad",
    [RULE_SELECT_SAME] = "select_same",
    [RULE_SELECT_NESTED] = "select_nested",
    [RULE_BROADCAST_IDENTITY] = "broadcast_identity",
    [RULE_BROADCAST_BROADCAST] = "broadcast_broadcast",
    [RULE_RESHAPE_IDENTITY] = "reshape_identity",
    [RULE_RESHAPE_RESHAPE] = "reshape_reshape",
    [RULE_PERMUTE_IDENTITY] = "permute_identity",
    [RULE_PERMUTE_PERMUTE] = "permute_permute",
    [RULE_REDUCE_TRIVIAL] = "reduce_trivial",
    [RULE_REDUCE_REDUCE] = "reduce_reduce",
    [RULE_REDUCE_BROADCAST] = "reduce_broadcast",
    [RULE_ZERO_PRODUCT] = "zero_product",
    [RULE_POOL_RELU_MASK] = "pool_relu_mask",
};

const char *pass_rule_name(PassRule rule) {
    return (unsigned)rule < PASS_RULE_COUNT ? rule_names[rule] : "?";
}

/* ---- helpers ---- */

/* The operands of src node i, mapped into the new graph. */
static const Node *mapped(const Rewrite *rw, int i, int *in) {
    const Node *n = &rw->src->nodes[i];
    for (int k = 0; k < n->n_in; k++) in[k] = rw->map[n->in[k]];
    return n;
}

/* Node id of the new graph. The pointer dies with the next emission (the node array may move),
 * so rules read what they need from it before building anything. */
static const Node *dnode(const Rewrite *rw, int id) {
    return &rw->dst->nodes[id];
}

static bool is_fill(const Rewrite *rw, int id, double *value) {
    const Node *n = dnode(rw, id);
    if (n->op != OP_CONST) return false;
    if (value) *value = n->attr.value;
    return true;
}

/* True when node id is the fill constant c (c = 0 matches both zeros: -0 * x is a zero too). */
static bool is_value(const Rewrite *rw, int id, double c) {
    double v;
    return is_fill(rw, id, &v) && v == c;
}

static bool same_bits(double a, double b) {
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Node id if it is op, else NULL. */
static const Node *as_op(const Rewrite *rw, int id, OpKind op) {
    const Node *n = dnode(rw, id);
    return n->op == op ? n : NULL;
}

static int fill(Rewrite *rw, PassRule r, double value, Shape shape) {
    pass_hit(rw, r);
    return g_const(rw->dst, value, shape);
}

static int replace(Rewrite *rw, PassRule r, int id) {
    pass_hit(rw, r);
    return id;
}

/* ---- constant folding ---- */

/* The value a mask node has everywhere when it compares two fills: 1 or 0, or -1 if unknown. */
static int mask_value(const Rewrite *rw, int id) {
    const Node *m = dnode(rw, id);
    double a, b;
    if ((m->op != OP_GT && m->op != OP_EQ) || !is_fill(rw, m->in[0], &a) ||
        !is_fill(rw, m->in[1], &b))
        return -1;
    return op_eval_binary(m->op, a, b) != 0;
}

static int fold_select(Rewrite *rw, int i, const int *in) {
    int m = mask_value(rw, in[0]);
    if (m >= 0) return replace(rw, RULE_FOLD_SELECT, m ? in[1] : in[2]);
    double a, b;
    if (is_fill(rw, in[1], &a) && is_fill(rw, in[2], &b) && same_bits(a, b))
        return replace(rw, RULE_FOLD_SELECT, in[1]);
    return pass_copy(rw, i);
}

/* Pooling routes values: from a fill only that fill can come out (scatter adds zeros elsewhere,
 * so it folds only for a zero fill). */
static int fold_pool(Rewrite *rw, int i, const Node *n, const int *in) {
    double v;
    if (n->op == OP_MAX_POOL2D && is_fill(rw, in[0], &v))
        return fill(rw, RULE_FOLD_POOL, v, n->shape);
    if (n->op == OP_POOL_GATHER && is_fill(rw, in[1], &v))
        return fill(rw, RULE_FOLD_POOL, v, n->shape);
    if (n->op == OP_POOL_SCATTER && is_value(rw, in[1], 0.0))
        return fill(rw, RULE_FOLD_POOL, 0.0, n->shape);
    return pass_copy(rw, i);
}

static int fold_reduce(Rewrite *rw, const Node *n, double v) {
    if (n->op == OP_REDUCE_MAX) return fill(rw, RULE_FOLD_REDUCE, v, n->shape);
    double count =
        (double)(shape_numel(dnode(rw, rw->map[n->in[0]])->shape) / shape_numel(n->shape));
    return fill(rw, RULE_FOLD_REDUCE, v * count, n->shape);
}

static int fold_matmul(Rewrite *rw, const Node *n, double a, double b) {
    Shape as = dnode(rw, rw->map[n->in[0]])->shape;
    int r = as.rank;
    double k = (double)(n->attr.trans_a ? as.dims[r - 2] : as.dims[r - 1]);
    return fill(rw, RULE_FOLD_MATMUL, a * b * k, n->shape);
}

int pass_fold_node(Rewrite *rw, int i) {
    int in[MAX_INPUTS] = {-1, -1, -1};
    const Node *n = mapped(rw, i, in);
    double v[MAX_INPUTS] = {0};
    bool all = n->n_in > 0;
    for (int k = 0; k < n->n_in; k++) all = is_fill(rw, in[k], &v[k]) && all;
    switch (n->op) {
    case OP_NEG:
    case OP_EXP:
    case OP_LOG:
    case OP_RSQRT:
    case OP_SQRT:
    case OP_STOP_GRAD:
        if (all) return fill(rw, RULE_FOLD_ELEMENTWISE, op_eval_unary(n->op, v[0]), n->shape);
        break;
    case OP_ADD:
    case OP_SUB:
    case OP_MUL:
    case OP_DIV:
        if (all)
            return fill(rw, RULE_FOLD_ELEMENTWISE, op_eval_binary(n->op, v[0], v[1]), n->shape);
        break;
    case OP_BROADCAST:
    case OP_RESHAPE:
    case OP_PERMUTE:
        if (all) return fill(rw, RULE_FOLD_SHAPE, v[0], n->shape);
        break;
    case OP_REDUCE_SUM:
    case OP_REDUCE_MAX:
        if (all) return fold_reduce(rw, n, v[0]);
        break;
    case OP_MATMUL:
        if (all) return fold_matmul(rw, n, v[0], v[1]);
        break;
    case OP_SELECT:
        return fold_select(rw, i, in);
    case OP_MAX_POOL2D:
    case OP_POOL_GATHER:
    case OP_POOL_SCATTER:
        return fold_pool(rw, i, n, in);
    default:
        break;
    }
    return pass_copy(rw, i);
}

/* ---- algebraic simplification: arithmetic ---- */

/* If id is x * c with c a fill (either side), sets *x and *c. */
static bool split_scale(const Rewrite *rw, int id, int *x, double *c) {
    const Node *m = as_op(rw, id, OP_MUL);
    if (!m) return false;
    if (is_fill(rw, m->in[1], c) && !is_fill(rw, m->in[0], NULL)) return *x = m->in[0], true;
    if (is_fill(rw, m->in[0], c) && !is_fill(rw, m->in[1], NULL)) return *x = m->in[1], true;
    return false;
}

/* (x * c) * d -> x * (c*d): one multiplication, and the constant folds into one node. */
static int scale_scale(Rewrite *rw, int a, int b) {
    int x;
    double c, d;
    if (!is_fill(rw, b, &d)) {
        int t = a;
        a = b, b = t;
    }
    if (!is_fill(rw, b, &d) || !split_scale(rw, a, &x, &c)) return -2;
    pass_hit(rw, RULE_SCALE_SCALE);
    return g_mul(rw->dst, x, g_const(rw->dst, c * d, dnode(rw, x)->shape));
}

/* neg x * c -> x * (-c): negating a constant is exact. */
static int neg_scale(Rewrite *rw, int x, double c) {
    pass_hit(rw, RULE_NEG_ABSORB);
    return g_mul(rw->dst, x, g_const(rw->dst, -c, dnode(rw, x)->shape));
}

static int simp_mul(Rewrite *rw, int i, const int *in) {
    int a = in[0], b = in[1];
    if (is_value(rw, b, 1.0)) return replace(rw, RULE_MUL_ONE, a);
    if (is_value(rw, a, 1.0)) return replace(rw, RULE_MUL_ONE, b);
    if (rw->opt->assume_finite && is_value(rw, b, 0.0)) return replace(rw, RULE_MUL_ZERO, b);
    if (rw->opt->assume_finite && is_value(rw, a, 0.0)) return replace(rw, RULE_MUL_ZERO, a);
    if (is_value(rw, b, -1.0)) return replace(rw, RULE_MUL_NEG_ONE, g_unary(rw->dst, OP_NEG, a));
    if (is_value(rw, a, -1.0)) return replace(rw, RULE_MUL_NEG_ONE, g_unary(rw->dst, OP_NEG, b));
    const Node *na = as_op(rw, a, OP_NEG), *nb = as_op(rw, b, OP_NEG);
    if (na && nb) return replace(rw, RULE_NEG_ABSORB, g_mul(rw->dst, na->in[0], nb->in[0]));
    double c;
    if (na && is_fill(rw, b, &c)) return neg_scale(rw, na->in[0], c);
    if (nb && is_fill(rw, a, &c)) return neg_scale(rw, nb->in[0], c);
    int id = scale_scale(rw, a, b);
    return id != -2 ? id : pass_copy(rw, i);
}

static int simp_div(Rewrite *rw, int i, const int *in) {
    if (is_value(rw, in[1], 1.0)) return replace(rw, RULE_DIV_ONE, in[0]);
    return pass_copy(rw, i);
}

static int simp_add(Rewrite *rw, int i, const int *in) {
    int a = in[0], b = in[1];
    if (is_value(rw, b, 0.0)) return replace(rw, RULE_ADD_ZERO, a);
    if (is_value(rw, a, 0.0)) return replace(rw, RULE_ADD_ZERO, b);
    const Node *nb = as_op(rw, b, OP_NEG), *na = as_op(rw, a, OP_NEG);
    if (nb) return replace(rw, RULE_NEG_ABSORB, g_sub(rw->dst, a, nb->in[0]));
    if (na) return replace(rw, RULE_NEG_ABSORB, g_sub(rw->dst, b, na->in[0]));
    return pass_copy(rw, i);
}

static int simp_sub(Rewrite *rw, int i, const int *in) {
    int a = in[0], b = in[1];
    if (is_value(rw, b, 0.0)) return replace(rw, RULE_ADD_ZERO, a);
    const Node *nb = as_op(rw, b, OP_NEG);
    if (is_value(rw, a, 0.0))
        return nb ? replace(rw, RULE_ZERO_SUB, nb->in[0])
                  : replace(rw, RULE_ZERO_SUB, g_unary(rw->dst, OP_NEG, b));
    if (nb) return replace(rw, RULE_NEG_ABSORB, g_add(rw->dst, a, nb->in[0]));
    return pass_copy(rw, i);
}

static int simp_neg(Rewrite *rw, int i, const int *in) {
    const Node *na = as_op(rw, in[0], OP_NEG);
    if (na) return replace(rw, RULE_NEG_NEG, na->in[0]);
    return pass_copy(rw, i);
}

/* ---- max-pool after a ReLU ---- */

/* Whether r = select(m, y, 0) with m = (y > 0): a ReLU whose mask is m. */
static bool relu_with_mask(const Rewrite *rw, int r, int m) {
    const Node *sel = as_op(rw, r, OP_SELECT), *gt = as_op(rw, m, OP_GT);
    return sel && gt && sel->in[0] == m && is_value(rw, sel->in[2], 0.0) &&
           gt->in[0] == sel->in[1] && is_value(rw, gt->in[1], 0.0);
}

/* select(max_pool2d(r) > 0, v, 0) on the pooled shape: at each window's argmax the ReLU r is
 * positive exactly when the window's maximum is, so this is r's mask read at the argmax. */
static int pooled_relu_mask(Rewrite *rw, int r, int kernel, int stride, int v) {
    pass_hit(rw, RULE_POOL_RELU_MASK);
    Shape s = dnode(rw, v)->shape;
    int pooled = g_max_pool2d(rw->dst, r, kernel, stride);
    int mask = g_gt(rw->dst, pooled, g_const(rw->dst, 0.0, s));
    return g_select(rw->dst, mask, v, g_const(rw->dst, 0.0, s));
}

/* select(m, pool_scatter(r, g), 0) with r a ReLU of mask m -> pool_scatter(r, g masked on the
 * pooled shape): one pass over the pooled tensor instead of one over the full one. -2: no match. */
static int relu_mask_of_scatter(Rewrite *rw, int m, int a, int b) {
    const Node *ps = as_op(rw, a, OP_POOL_SCATTER);
    if (!ps || !is_value(rw, b, 0.0) || !pass_single_use(rw, a)) return -2;
    int r = ps->in[0], g = ps->in[1], kernel = ps->attr.kernel, stride = ps->attr.stride;
    if (!relu_with_mask(rw, r, m)) return -2;
    return g_pool_scatter(rw->dst, r, pooled_relu_mask(rw, r, kernel, stride, g), kernel, stride);
}

/* pool_gather(r, select(m, z, 0)) with r a ReLU of mask m -> the gather masked on the pooled
 * shape. */
static int simp_pool_gather(Rewrite *rw, int i, const Node *n, const int *in) {
    int r = in[0], kernel = n->attr.kernel, stride = n->attr.stride;
    const Node *sel = as_op(rw, in[1], OP_SELECT);
    if (!sel || !is_value(rw, sel->in[2], 0.0) || !pass_single_use(rw, in[1]) ||
        !relu_with_mask(rw, r, sel->in[0]))
        return pass_copy(rw, i);
    int gathered = g_pool_gather(rw->dst, r, sel->in[1], kernel, stride);
    return pooled_relu_mask(rw, r, kernel, stride, gathered);
}

/* ---- selects ---- */

static int simp_select(Rewrite *rw, int i, const int *in) {
    int m = in[0], a = in[1], b = in[2];
    if (a == b) return replace(rw, RULE_SELECT_SAME, a);
    int pooled = relu_mask_of_scatter(rw, m, a, b);
    if (pooled != -2) return pooled;
    const Node *sa = as_op(rw, a, OP_SELECT), *sb = as_op(rw, b, OP_SELECT);
    bool left = sa && sa->in[0] == m, right = sb && sb->in[0] == m;
    if (!left && !right) return pass_copy(rw, i);
    /* where m holds, the inner select on the left yields its own first branch; elsewhere the one
     * on the right yields its second */
    pass_hit(rw, RULE_SELECT_NESTED);
    return g_select(rw->dst, m, left ? sa->in[1] : a, right ? sb->in[2] : b);
}

/* ---- shape ops ---- */

static int simp_broadcast(Rewrite *rw, int i, const Node *n, const int *in) {
    const Node *a = dnode(rw, in[0]);
    if (shape_equal(a->shape, n->shape)) return replace(rw, RULE_BROADCAST_IDENTITY, in[0]);
    if (a->op == OP_BROADCAST) {
        pass_hit(rw, RULE_BROADCAST_BROADCAST);
        return g_broadcast(rw->dst, a->in[0], n->shape);
    }
    return pass_copy(rw, i);
}

static int simp_reshape(Rewrite *rw, int i, const Node *n, const int *in) {
    const Node *a = dnode(rw, in[0]);
    if (shape_equal(a->shape, n->shape)) return replace(rw, RULE_RESHAPE_IDENTITY, in[0]);
    if (a->op == OP_RESHAPE) {
        int x = a->in[0];
        if (shape_equal(dnode(rw, x)->shape, n->shape)) return replace(rw, RULE_RESHAPE_RESHAPE, x);
        pass_hit(rw, RULE_RESHAPE_RESHAPE);
        return g_reshape(rw->dst, x, n->shape);
    }
    return pass_copy(rw, i);
}

static bool is_identity(const int *perm, int rank) {
    for (int k = 0; k < rank; k++)
        if (perm[k] != k) return false;
    return true;
}

static int simp_permute(Rewrite *rw, int i, const Node *n, const int *in) {
    int rank = n->shape.rank;
    if (is_identity(n->attr.perm, rank)) return replace(rw, RULE_PERMUTE_IDENTITY, in[0]);
    const Node *a = as_op(rw, in[0], OP_PERMUTE);
    if (!a) return pass_copy(rw, i);
    /* out axis k is a's axis perm[k], which is x's axis a->perm[perm[k]] */
    int composed[MAX_RANK];
    for (int k = 0; k < rank; k++) composed[k] = a->attr.perm[n->attr.perm[k]];
    pass_hit(rw, RULE_PERMUTE_PERMUTE);
    if (is_identity(composed, rank)) return a->in[0];
    return g_permute(rw->dst, a->in[0], composed);
}

/* ---- reductions ---- */

/* Axes of s with more than one element: reducing over the others changes nothing. */
static uint32_t wide_axes(Shape s) {
    uint32_t m = 0;
    for (int k = 0; k < s.rank; k++)
        if (s.dims[k] > 1) m |= 1u << k;
    return m;
}

/* Axes a broadcast expands: size 1 in its operand, more in its result. */
static uint32_t expanded_axes(Shape from, Shape to) {
    return wide_axes(to) & ~wide_axes(from);
}

static int64_t count_over(Shape s, uint32_t axes) {
    int64_t c = 1;
    for (int k = 0; k < s.rank; k++)
        if (axes & (1u << k)) c *= s.dims[k];
    return c;
}

/* reduce(broadcast(x), A) where the broadcast expanded only axes in A: every expanded axis holds
 * copies of one value, so max ignores them and sum multiplies by their count; what is left is a
 * reduction of x over the rest of A (the axes x has in full). */
static int reduce_of_broadcast(Rewrite *rw, const Node *n, const Node *b, uint32_t axes) {
    int x = b->in[0];
    uint32_t expanded = expanded_axes(dnode(rw, x)->shape, b->shape);
    if ((expanded & ~axes) != 0) return -2;
    pass_hit(rw, RULE_REDUCE_BROADCAST);
    uint32_t rest = axes & ~expanded & wide_axes(dnode(rw, x)->shape);
    double count = (double)count_over(b->shape, expanded); /* before emitting moves b */
    int y = rest ? g_reduce(rw->dst, n->op, x, rest) : x;
    if (n->op == OP_REDUCE_MAX) return y;
    return g_mul(rw->dst, y, g_const(rw->dst, count, n->shape));
}

static int simp_reduce(Rewrite *rw, int i, const Node *n, const int *in) {
    const Node *a = dnode(rw, in[0]);
    uint32_t axes = n->attr.axes & wide_axes(a->shape);
    if (axes == 0) return replace(rw, RULE_REDUCE_TRIVIAL, in[0]);
    if (a->op == OP_BROADCAST) {
        int id = reduce_of_broadcast(rw, n, a, axes);
        if (id != -2) return id;
    }
    if (n->op == OP_REDUCE_SUM && a->op == OP_NEG && pass_single_use(rw, in[0])) {
        pass_hit(rw, RULE_NEG_SINK); /* exact: rounding is symmetric under negation */
        return g_unary(rw->dst, OP_NEG, g_reduce(rw->dst, OP_REDUCE_SUM, a->in[0], axes));
    }
    if (a->op == n->op) {
        pass_hit(rw, RULE_REDUCE_REDUCE);
        return g_reduce(rw->dst, n->op, a->in[0], axes | a->attr.axes);
    }
    if (axes != n->attr.axes) {
        pass_hit(rw, RULE_REDUCE_TRIVIAL); /* canonical axes let cse match equal reductions */
        return g_reduce(rw->dst, n->op, in[0], axes);
    }
    return pass_copy(rw, i);
}

/* Products with a zero factor: every output element is a sum of products with it. */
static int simp_zero_product(Rewrite *rw, int i, const Node *n, const int *in) {
    if (rw->opt->assume_finite && (is_value(rw, in[0], 0.0) || is_value(rw, in[1], 0.0)))
        return fill(rw, RULE_ZERO_PRODUCT, 0.0, n->shape);
    return pass_copy(rw, i);
}

int pass_simplify_node(Rewrite *rw, int i) {
    int in[MAX_INPUTS] = {-1, -1, -1};
    const Node *n = mapped(rw, i, in);
    switch (n->op) {
    case OP_MUL:
        return simp_mul(rw, i, in);
    case OP_DIV:
        return simp_div(rw, i, in);
    case OP_ADD:
        return simp_add(rw, i, in);
    case OP_SUB:
        return simp_sub(rw, i, in);
    case OP_NEG:
        return simp_neg(rw, i, in);
    case OP_STOP_GRAD:
        return replace(rw, RULE_STOP_GRAD, in[0]);
    case OP_SELECT:
        return simp_select(rw, i, in);
    case OP_BROADCAST:
        return simp_broadcast(rw, i, n, in);
    case OP_RESHAPE:
        return simp_reshape(rw, i, n, in);
    case OP_PERMUTE:
        return simp_permute(rw, i, n, in);
    case OP_REDUCE_SUM:
    case OP_REDUCE_MAX:
        return simp_reduce(rw, i, n, in);
    case OP_POOL_GATHER:
        return simp_pool_gather(rw, i, n, in);
    case OP_MATMUL:
    case OP_CONV2D:
    case OP_CONV2D_GRAD_INPUT:
    case OP_CONV2D_GRAD_WEIGHT:
        return simp_zero_product(rw, i, n, in);
    default:
        return pass_copy(rw, i);
    }
}
