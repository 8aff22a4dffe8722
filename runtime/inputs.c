/* Input checks shared by the backends (see inputs.h). */
#include "inputs.h"

#include <math.h>

static bool dtype_fits(DType want, TensorDType have) {
    bool is_float = have == TENSOR_F32 || have == TENSOR_F64;
    return want == DT_REAL ? is_float : !is_float;
}

/* Input node n against its tensor t (NULL: missing). */
static int check_one(const Node *n, const Tensor *t, MamlError *err) {
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
    return 0;
}

int inputs_check(const Graph *g, const TensorSet *inputs, MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op == OP_INPUT && check_one(n, tensorset_find(inputs, n->name), err)) return -1;
    }
    return 0;
}

int inputs_check_data(const Graph *g, const TensorSet *data, MamlError *err) {
    for (int i = 0; i < data->n; i++) {
        if (!graph_is_data_input(g, data->items[i].name))
            return maml_fail(err,
                             "tensor '%s' is not a data input of the graph: only the task "
                             "batch can be staged for the next run",
                             data->items[i].name);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op == OP_INPUT && n->input_kind == INPUT_DATA &&
            check_one(n, tensorset_find(data, n->name), err))
            return -1;
    }
    return inputs_check_labels(g, data, err);
}

int inputs_check_labels(const Graph *g, const TensorSet *inputs, MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        const Node *src = n->op == OP_ONE_HOT ? &g->nodes[n->in[0]] : NULL;
        if (!src || src->op != OP_INPUT) continue;
        const Tensor *t = tensorset_find(inputs, src->name);
        if (!t) continue; /* a staged batch holds the data inputs only */
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
