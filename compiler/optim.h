/* Outer-loop optimizers as graph expansions; their state tensors are graph inputs and outputs. */
#ifndef MAMLC_OPTIM_H
#define MAMLC_OPTIM_H

#include "graph.h"
#include "spec.h"

/* Adds the update of one parameter: sets *new_param (and for Adam *new_m, *new_v; the state
 * inputs m, v and the scalar step counter `step` (the 1-based number of this update) are ignored
 * by SGD). Adam follows torch.optim.Adam exactly:
 *   m' = b1 m + (1-b1) g,  v' = b2 v + (1-b2) g^2,
 *   p' = p - (lr / (1 - b1^t)) * m' / (sqrt(v') / sqrt(1 - b2^t) + eps). */
int optim_update(Graph *g, const MamlSettings *s, int param, int grad, int m, int v, int step,
                 int *new_param, int *new_m, int *new_v);

#endif
