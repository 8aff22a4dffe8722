#include "batch.h"

#include <math.h>
#include <stdio.h>

static Shape expected_x(const GraphSpec *spec, int64_t tasks, int64_t count) {
    Shape s = {.rank = 2 + spec->input.rank, .dims = {tasks, count}};
    for (int i = 0; i < spec->input.rank; i++) s.dims[2 + i] = spec->input.dims[i];
    return s;
}

static Shape expected_y(const GraphSpec *spec, int64_t tasks, int64_t count) {
    if (spec->loss == LOSS_CROSS_ENTROPY) return SHAPE(tasks, count);
    return SHAPE(tasks, count, spec->layers[spec->n_layers - 1].out_shape.dims[0]);
}

static int check_shape(const Tensor *t, Shape want, const char *path, const char *hint,
                       MamlError *err) {
    char a[96], b[96];
    if (shape_equal(t->shape, want)) return 0;
    return maml_fail(err, "%s: tensor '%s': expected shape %s, found %s%s", path, t->name,
                     shape_str(want, a, sizeof a), shape_str(t->shape, b, sizeof b), hint);
}

static int check_labels(const GraphSpec *spec, const Tensor *t, const char *path, MamlError *err) {
    if (spec->loss != LOSS_CROSS_ENTROPY) {
        if (t->dtype == TENSOR_F32 || t->dtype == TENSOR_F64) return 0;
        return maml_fail(err, "%s: tensor '%s': regression targets must be F32 or F64, found %s",
                         path, t->name, tensor_dtype_name(t->dtype));
    }
    if (t->dtype != TENSOR_I32 && t->dtype != TENSOR_I64)
        return maml_fail(err, "%s: tensor '%s': labels must be I32 or I64, found %s", path, t->name,
                         tensor_dtype_name(t->dtype));
    int64_t per_task = t->shape.dims[1];
    for (int64_t i = 0, n = shape_numel(t->shape); i < n; i++) {
        double v = tensor_get(t, i);
        if (v < 0 || v >= spec->maml.n_way)
            return maml_fail(err,
                             "%s: tensor '%s': label %.0f of task %lld, example %lld is out of "
                             "range [0, %d)",
                             path, t->name, v, (long long)(i / per_task), (long long)(i % per_task),
                             spec->maml.n_way);
    }
    return 0;
}

int batch_check(const GraphSpec *spec, const TensorSet *batch, const char *path, int64_t *tasks,
                MamlError *err) {
    static const char *names[4] = {"support_x", "support_y", "query_x", "query_y"};
    const Tensor *t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = tensorset_find(batch, names[i]);
        if (!t[i]) return maml_fail(err, "%s: missing tensor '%s'", path, names[i]);
        if (t[i]->shape.rank < 2)
            return maml_fail(err, "%s: tensor '%s' must have a task and an example axis", path,
                             names[i]);
    }
    for (int i = 0; i < 4; i += 2)
        if (t[i]->dtype != TENSOR_F32 && t[i]->dtype != TENSOR_F64)
            return maml_fail(err, "%s: tensor '%s': images must be F32 or F64, found %s", path,
                             names[i], tensor_dtype_name(t[i]->dtype));
    int64_t T = t[0]->shape.dims[0];
    int64_t S = spec_support_size(spec), Q = spec_query_size(spec);
    char hint_s[160], hint_q[160];
    snprintf(hint_s, sizeof hint_s, " (n_way %d x k_shot %d; adjust with --set maml.k_shot=...)",
             spec->maml.n_way, spec->maml.k_shot);
    snprintf(hint_q, sizeof hint_q, " (n_way %d x q_query %d; adjust with --set maml.q_query=...)",
             spec->maml.n_way, spec->maml.q_query);
    if (check_shape(t[0], expected_x(spec, T, S), path, hint_s, err) ||
        check_shape(t[1], expected_y(spec, T, S), path, hint_s, err) ||
        check_shape(t[2], expected_x(spec, T, Q), path, hint_q, err) ||
        check_shape(t[3], expected_y(spec, T, Q), path, hint_q, err) ||
        check_labels(spec, t[1], path, err) || check_labels(spec, t[3], path, err))
        return -1;
    *tasks = T;
    return 0;
}
