/* Model parameters as named host tensors: PyTorch-style default initialisation and checking a
 * loaded set against what a graph spec expects. */
#ifndef MAMLC_PARAMS_H
#define MAMLC_PARAMS_H

#include <stdint.h>

#include "spec.h"
#include "tensor.h"

/* Fills out (which must be initialised; previous contents are dropped) with one F32 tensor per
 * spec->params entry, in spec order, initialised as PyTorch's defaults do:
 *   conv2d / linear weight: kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 *   conv2d / linear bias:   U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 *   batch-norm scale 1, shift 0.
 * Draws come from rng.h seeded with seed, element by element in row-major order, parameter by
 * parameter in spec order, so a seed fixes every value on every platform (they are not
 * PyTorch's values: its generator differs). On failure out is left empty. */
int params_init(const GraphSpec *spec, uint64_t seed, TensorSet *out, MamlError *err);

/* Checks that every parameter spec expects is in params with its shape and a real dtype (F32 or
 * F64); other tensors (optimizer state, metadata) are ignored. Messages name the tensor:
 * "tensor 'conv1.conv2d.weight': expected shape [64, 1, 3, 3], found [64, 3, 3]" or
 * "missing tensor 'logits.bias'"; callers prefix the file name. */
int params_check(const GraphSpec *spec, const TensorSet *params, MamlError *err);

#endif
