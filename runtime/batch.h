/* Task batches as graph inputs: support_x [T, S, ...example], support_y [T, S] integer labels
 * (or [T, S, F] regression targets), query_x [T, Q, ...], query_y [T, Q] (or [T, Q, F]). */
#ifndef MAMLC_BATCH_H
#define MAMLC_BATCH_H

#include "spec.h"
#include "tensor.h"

/* Checks a batch against the graph's settings before anything is computed: all four tensors
 * present with consistent T, S = n_way * k_shot, Q = n_way * q_query, example shapes equal to the
 * model's input, labels integral and in [0, n_way). Sets *tasks to T. Errors name the file
 * (`path`), the tensor and the expected and found values. */
int batch_check(const GraphSpec *spec, const TensorSet *batch, const char *path, int64_t *tasks,
                MamlError *err);

#endif
