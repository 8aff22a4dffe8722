/* Composite layers, losses and optimizers as expansions into primitives. Activations are
 * [T, N, ...] (task, example, per-example shape); parameters arrive per task as [T, ...]. */
#ifndef MAMLC_LAYERS_H
#define MAMLC_LAYERS_H

#include "graph.h"
#include "spec.h"

/* Per-task copy of a parameter: reshape [dims] to [1, dims] and broadcast to [T, dims]. */
int layer_per_task(Graph *g, int param, int64_t tasks);

/* One layer's forward pass. w and b are the layer's per-task parameters in ParamSpec order
 * (conv/linear: weight, bias; batch norm: scale, shift), -1 where the layer has none. */
int layer_forward(Graph *g, const LayerSpec *layer, int x, int w, int b);

/* Per-task softmax cross-entropy of logits [T, N, K] against integer labels [T, N]: [T, 1, 1]. */
int loss_cross_entropy(Graph *g, int logits, int labels, LossReduction reduction, int k_shot);

/* Per-task mean squared error of pred and target, both [T, N, F]: [T, 1, 1]. */
int loss_mse(Graph *g, int pred, int target, LossReduction reduction, int k_shot);

/* Per-task accuracy of logits [T, N, K] against labels [T, N] (a prediction counts as correct
 * when the labelled logit equals the maximum): [T, 1, 1]. */
int accuracy(Graph *g, int logits, int labels);

/* Mean over the task axis of a per-task value [T, 1, 1], as a scalar []. */
int mean_over_tasks(Graph *g, int per_task);

/* x broadcast from a scalar [] to shape. */
int scalar_to(Graph *g, int scalar, Shape shape);

#endif
