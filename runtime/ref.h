/* The reference interpreter (backend "ref"): runs any graph one primitive at a time with plain
 * loops, in float64 or float32. It is the oracle every other backend is judged against, so it
 * favours obviousness over speed and shares no code with the generated kernels. */
#ifndef MAMLC_REF_H
#define MAMLC_REF_H

#include "graph.h"
#include "tensor.h"

typedef enum { PREC_F32, PREC_F64 } Precision;

/* Runs g. Every INPUT node is looked up by name in inputs (any dtype; converted); a missing
 * tensor, or one with another shape, is an error naming it with the expected and found shapes,
 * and nothing is computed. Each graph output is added to outputs under its name, as F32 or F64
 * per prec (integer and mask outputs are converted to that real type). In PREC_F32 every node's
 * result is rounded to float as it is stored, as a float32 backend would. */
int ref_run(const Graph *g, Precision prec, const TensorSet *inputs, TensorSet *outputs,
            MamlError *err);

#endif
