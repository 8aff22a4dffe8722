/* Checks of a backend run's input tensors against the graph's INPUT nodes, shared by every
 * backend so that bad input gets the same one-line message whichever one runs. */
#ifndef MAMLC_INPUTS_H
#define MAMLC_INPUTS_H

#include "graph.h"
#include "tensor.h"

/* Every INPUT node has a tensor of its name, of its shape, and of its kind (floating-point for
 * real inputs, integer otherwise); the first that does not is an error naming it, with the
 * expected and the found shape or type. */
int inputs_check(const Graph *g, const TensorSet *inputs, MamlError *err);

/* A batch staged for a later run (backend_stage): exactly the graph's data inputs (INPUT_DATA:
 * the task batch), each checked as inputs_check does, labels as inputs_check_labels does; a
 * missing one, or a tensor that is not a data input, is an error naming it. */
int inputs_check_data(const Graph *g, const TensorSet *data, MamlError *err);

/* The labels feeding one_hot are integers in [0, depth): generated kernels would silently give
 * an all-zero row otherwise. Call after inputs_check. */
int inputs_check_labels(const Graph *g, const TensorSet *inputs, MamlError *err);

#endif
