#include "layers.h"

static const Shape *shape_of_node(const Graph *g, int id) {
    return &g->nodes[id].shape;
}

int layer_per_task(Graph *g, int param, int64_t tasks) {
    if (param < 0) return g_reshape(g, -1, shape_scalar());
    Shape s = *shape_of_node(g, param), one = s;
    one.rank = s.rank + 1;
    one.dims[0] = 1;
    for (int i = 0; i < s.rank; i++) one.dims[i + 1] = s.dims[i];
    Shape full = one;
    full.dims[0] = tasks;
    return g_broadcast(g, g_reshape(g, param, one), full);
}

/* A per-task channel vector [T, C] shaped to broadcast along axis 2 of like: [T, 1, C, 1, ...]. */
static int channel_broadcast(Graph *g, int v, int like) {
    if (v < 0 || like < 0) return g_reshape(g, -1, shape_scalar());
    Shape ls = *shape_of_node(g, like), vs = ls;
    for (int i = 0; i < vs.rank; i++) vs.dims[i] = (i == 0 || i == 2) ? ls.dims[i] : 1;
    return g_broadcast(g, g_reshape(g, v, vs), ls);
}

static int relu(Graph *g, int x) {
    if (x < 0) return -1;
    Shape s = *shape_of_node(g, x);
    int zero = g_const(g, 0.0, s);
    return g_select(g, g_gt(g, x, zero), x, zero);
}

/* Training-mode batch norm: statistics per task and channel over every other axis. */
static int batch_norm(Graph *g, const LayerSpec *L, int x, int scale, int shift) {
    if (x < 0) return -1;
    Shape s = *shape_of_node(g, x);
    uint32_t axes = 0;
    int64_t count = 1;
    for (int i = 1; i < s.rank; i++)
        if (i != 2) axes |= 1u << i, count *= s.dims[i];
    int mean = g_scale(g, g_reduce(g, OP_REDUCE_SUM, x, axes), 1.0 / (double)count);
    int centered = g_sub(g, x, g_broadcast(g, mean, s));
    int var = g_scale(g, g_reduce(g, OP_REDUCE_SUM, g_mul(g, centered, centered), axes),
                      1.0 / (double)count);
    int inv_std = g_unary(g, OP_RSQRT, g_add_scalar(g, var, L->eps));
    int y = g_mul(g, centered, g_broadcast(g, inv_std, s));
    if (L->scale) y = g_mul(g, y, channel_broadcast(g, scale, y));
    if (L->shift) y = g_add(g, y, channel_broadcast(g, shift, y));
    return y;
}

static int conv2d(Graph *g, const LayerSpec *L, int x, int w, int b) {
    int y = g_conv2d(g, x, w, L->stride, L->padding);
    return L->bias ? g_add(g, y, channel_broadcast(g, b, y)) : y;
}

static int linear(Graph *g, const LayerSpec *L, int x, int w, int b) {
    int y = g_matmul(g, x, w, false, true);
    if (!L->bias || y < 0) return y;
    Shape ys = *shape_of_node(g, y), bs = ys;
    bs.dims[1] = 1;
    return g_add(g, y, g_broadcast(g, g_reshape(g, b, bs), ys));
}

static int global_avg_pool(Graph *g, int x) {
    if (x < 0) return -1;
    Shape s = *shape_of_node(g, x);
    int sum = g_reduce(g, OP_REDUCE_SUM, x, (1u << 3) | (1u << 4));
    int mean = g_scale(g, sum, 1.0 / (double)(s.dims[3] * s.dims[4]));
    return g_reshape(g, mean, SHAPE(s.dims[0], s.dims[1], s.dims[2]));
}

static int flatten(Graph *g, int x) {
    if (x < 0) return -1;
    Shape s = *shape_of_node(g, x);
    return g_reshape(g, x, SHAPE(s.dims[0], s.dims[1], shape_numel(s) / (s.dims[0] * s.dims[1])));
}

int layer_forward(Graph *g, const LayerSpec *L, int x, int w, int b) {
    switch (L->kind) {
    case LAYER_CONV2D:
        return conv2d(g, L, x, w, b);
    case LAYER_BATCH_NORM:
        return batch_norm(g, L, x, w, b);
    case LAYER_RELU:
        return relu(g, x);
    case LAYER_MAX_POOL2D:
        return g_max_pool2d(g, x, L->kernel, L->stride);
    case LAYER_GLOBAL_AVG_POOL:
        return global_avg_pool(g, x);
    case LAYER_FLATTEN:
        return flatten(g, x);
    case LAYER_LINEAR:
        return linear(g, L, x, w, b);
    }
    return g_reshape(g, -1, shape_scalar());
}

/* Sums per-example losses [T, N, 1] over N and applies the reduction: [T, 1, 1]. */
static int reduce_examples(Graph *g, int per_example, LossReduction reduction, int k_shot) {
    if (per_example < 0) return -1;
    int64_t n = shape_of_node(g, per_example)->dims[1];
    int sum = g_reduce(g, OP_REDUCE_SUM, per_example, 1u << 1);
    switch (reduction) {
    case REDUCE_MEAN:
        return g_scale(g, sum, 1.0 / (double)n);
    case REDUCE_SUM:
        return sum;
    case REDUCE_SUM_OVER_K_SHOT:
        return g_scale(g, sum, 1.0 / (double)k_shot);
    }
    return sum;
}

int loss_cross_entropy(Graph *g, int logits, int labels, LossReduction reduction, int k_shot) {
    if (logits < 0) return -1;
    Shape s = *shape_of_node(g, logits);
    /* The max shift only keeps exp() finite; its gradient cancels exactly, so it is cut. */
    int shift = g_stop_grad(g, g_reduce(g, OP_REDUCE_MAX, logits, 1u << 2));
    int z = g_sub(g, logits, g_broadcast(g, shift, s));
    int lse = g_unary(g, OP_LOG, g_reduce(g, OP_REDUCE_SUM, g_unary(g, OP_EXP, z), 1u << 2));
    int picked =
        g_reduce(g, OP_REDUCE_SUM, g_mul(g, z, g_one_hot(g, labels, (int)s.dims[2])), 1u << 2);
    return reduce_examples(g, g_sub(g, lse, picked), reduction, k_shot);
}

int loss_mse(Graph *g, int pred, int target, LossReduction reduction, int k_shot) {
    if (pred < 0) return -1;
    Shape s = *shape_of_node(g, pred);
    int diff = g_sub(g, pred, target);
    int sq = g_mul(g, diff, diff);
    int per_example = s.dims[2] == 1 ? sq : g_reduce(g, OP_REDUCE_SUM, sq, 1u << 2);
    if (s.dims[2] != 1) per_example = g_scale(g, per_example, 1.0 / (double)s.dims[2]);
    return reduce_examples(g, per_example, reduction, k_shot);
}

int accuracy(Graph *g, int logits, int labels) {
    if (logits < 0) return -1;
    Shape s = *shape_of_node(g, logits);
    int best = g_reduce(g, OP_REDUCE_MAX, logits, 1u << 2);
    int picked =
        g_reduce(g, OP_REDUCE_SUM, g_mul(g, logits, g_one_hot(g, labels, (int)s.dims[2])), 1u << 2);
    Shape col = SHAPE(s.dims[0], s.dims[1], 1);
    int hit = g_select(g, g_eq(g, picked, best), g_const(g, 1.0, col), g_const(g, 0.0, col));
    return reduce_examples(g, hit, REDUCE_MEAN, 1);
}

int mean_over_tasks(Graph *g, int per_task) {
    if (per_task < 0) return -1;
    int64_t tasks = shape_of_node(g, per_task)->dims[0];
    int sum = g_reduce(g, OP_REDUCE_SUM, per_task, 1u << 0);
    return g_reshape(g, g_scale(g, sum, 1.0 / (double)tasks), shape_scalar());
}

int scalar_to(Graph *g, int scalar, Shape shape) {
    Shape ones = shape;
    for (int i = 0; i < ones.rank; i++) ones.dims[i] = 1;
    return g_expand_as(g, g_reshape(g, scalar, ones), shape);
}
