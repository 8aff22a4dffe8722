/* Reverse-mode automatic differentiation as a graph-to-graph transform.
 *
 * The gradient nodes are ordinary primitives appended to the same graph, so a gradient can be
 * differentiated again (MAML's second-order terms are the gradient of a graph that already
 * contains a gradient). Every primitive's vector-Jacobian rule lives in autodiff.c. */
#ifndef MAMLC_AUTODIFF_H
#define MAMLC_AUTODIFF_H

#include "error.h"
#include "graph.h"

/* Appends to g the nodes computing the vector-Jacobian product of node y with cotangent dy (same
 * shape as y) with respect to each wrt[i], and stores the gradient node in out[i]: a zero
 * constant of wrt[i]'s shape when y does not depend on it (through differentiable edges: masks,
 * labels and stop_grad carry no gradient). The total derivative is taken, so when one wrt node
 * depends on another, the gradient of the earlier one includes the paths through the later one.
 * New nodes are stamped with origin "grad". Returns 0, or -1 with err filled (invalid nodes, a
 * non-real y, dy or wrt, or a dy whose shape differs from y's). */
int autodiff_vjp(Graph *g, int y, int dy, const int *wrt, int n_wrt, int *out, MamlError *err);

/* The gradient of a node with exactly one element (a loss) with respect to each wrt[i]: the
 * vector-Jacobian product with a cotangent of 1. Returns 0, or -1 with err filled. */
int autodiff_grad(Graph *g, int loss, const int *wrt, int n_wrt, int *out, MamlError *err);

#endif
