/* Input checks shared by the backends (see inputs.h). */
#include "inputs.h"

#include <math.h>

static bool dtype_fits(DType want, TensorDType have) {
    bool is_float = have == TENSOR_F32 || have == TENSOR_F64;
    return want == DT_REAL ? is_float : !is_float;
}

int inputs_check(const Graph *g, const TensorSet *inputs, MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT) continue;
        const Tensor *t = tensorset_find(inputs, n->name);
        char want[96], have[96];
        if (!t)
            return maml_fail(err, "missing tensor '%s' (expected shape %s)", n->name,
                             shape_str(n->shape, want, sizeof want));
        if (!shape_equal(t->shape, n->shape))
            return maml_fail(err, "tensor '%s': expected shape %s, found %s", n->name,
                             shape_str(n->shape, want, sizeof want),
                             shape_str(t->shape, have, sizeof have));
        if (!dtype_fits(n->dtype, t->dtype))
            return maml_fail(err, "tensor '%s': expected %s values, found %s", n->name,
                             n->dtype == DT_REAL ? "floating-point" : "integer",
                             tensor_dtype_name(t->dtype));
    }
    return 0;
}

int inputs_check_labels(const Graph *g, const TensorSet *inputs, MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        const Node *src = n->op == OP_ONE_HOT ? &g->nodes[n->in[0]] : NULL;
        if (!src || src->op != OP_INPUT) continue;
        const Tensor *t = tensorset_find(inputs, src->name);
        for (int64_t k = 0, count = shape_numel(t->shape); k < count; k++) {
            double l = tensor_get(t, k);
            if (!(l >= 0 && l < n->attr.depth) || l != floor(l))
                return maml_fail(err,
                                 "tensor '%s': label %g at position %lld is out of range [0, %d)",
                                 src->name, l, (long long)k, n->attr.depth);
        }
    }
    return 0;
}
