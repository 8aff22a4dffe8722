#include "optim.h"

#include <math.h>

#include "layers.h"

/* 1 - beta^step as a scalar node. */
static int bias_correction(Graph *g, int step, double beta) {
    Shape sc = shape_scalar();
    int power = g_unary(g, OP_EXP, g_mul(g, step, g_const(g, log(beta), sc)));
    return g_sub(g, g_const(g, 1.0, sc), power);
}

static int adam(Graph *g, const MamlSettings *s, int p, int grad, int m, int v, int step,
                int *new_p, int *new_m, int *new_v) {
    Shape ps = g->nodes[p].shape;
    double b1 = s->outer.beta1, b2 = s->outer.beta2;
    *new_m = g_add(g, g_scale(g, m, b1), g_scale(g, grad, 1.0 - b1));
    *new_v = g_add(g, g_scale(g, v, b2), g_scale(g, g_mul(g, grad, grad), 1.0 - b2));
    int c1 = bias_correction(g, step, b1), c2 = bias_correction(g, step, b2);
    int step_size = g_div(g, g_const(g, s->outer.lr, shape_scalar()), c1);
    int denom = g_add_scalar(
        g, g_div(g, g_unary(g, OP_SQRT, *new_v), scalar_to(g, g_unary(g, OP_SQRT, c2), ps)),
        s->outer.eps);
    *new_p = g_sub(g, p, g_mul(g, scalar_to(g, step_size, ps), g_div(g, *new_m, denom)));
    return *new_p < 0 ? -1 : 0;
}

int optim_update(Graph *g, const MamlSettings *s, int param, int grad, int m, int v, int step,
                 int *new_param, int *new_m, int *new_v) {
    if (s->outer.optimizer == OPT_ADAM)
        return adam(g, s, param, grad, m, v, step, new_param, new_m, new_v);
    *new_m = *new_v = -1;
    *new_param = g_sub(g, param, g_scale(g, grad, s->outer.lr));
    return *new_param < 0 ? -1 : 0;
}
