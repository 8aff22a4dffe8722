/* A check of backend_launch / backend_stage / backend_finish shared by the backends' tests
 * (test_ref.c: the bookkeeping in backend.c; test_cuda.c: the cuda backend on the fake driver):
 * staged batches give exactly the bits of plain runs, and misuse is a clear error. */
#ifndef MAMLC_STAGING_CHECK_H
#define MAMLC_STAGING_CHECK_H

#include <criterion/criterion.h>

#include "backend.h"
#include "bench.h"

/* base with the data inputs of other in place of its own. */
static void with_batch_of(const Graph *g, const TensorSet *base, const TensorSet *other,
                          TensorSet *out, TensorSet *batch) {
    MamlError err;
    tensorset_init(out);
    tensorset_init(batch);
    for (int i = 0; i < base->n; i++) {
        const Tensor *t = &base->items[i];
        int node = graph_find_input(g, t->name);
        bool data = node >= 0 && g->nodes[node].input_kind == INPUT_DATA;
        const Tensor *src = data ? tensorset_find(other, t->name) : t;
        cr_assert(src);
        cr_assert(tensorset_add(out, src->name, src->dtype, src->shape, src->data, &err), "%s",
                  err.message);
        if (data)
            cr_assert(tensorset_add(batch, src->name, src->dtype, src->shape, src->data, &err),
                      "%s", err.message);
    }
}

static bool same_bits(const TensorSet *a, const TensorSet *b) {
    if (a->n != b->n) return false;
    for (int i = 0; i < a->n; i++) {
        const Tensor *x = &a->items[i], *y = tensorset_find(b, x->name);
        if (!y || x->dtype != y->dtype || !shape_equal(x->shape, y->shape) ||
            memcmp(x->data, y->data, (size_t)shape_numel(x->shape) * tensor_dtype_size(x->dtype)))
            return false;
    }
    return true;
}

/* Three steps with the parameters of bench_inputs(7) and the batches of seeds 7, 8 and 9: run
 * plainly, and run with each batch staged during the step before while the inputs keep the
 * first (stale) batch. The two must agree bit for bit. */
static void check_staged_runs_match_plain_runs(Backend *b, const GraphSpec *spec, const Graph *g) {
    MamlError err;
    TensorSet in[3], batch[3], plain[3], staged[3], raw;
    cr_assert_eq(bench_inputs(spec, g, 7, &in[0], &err), 0, "%s", err.message);
    for (int k = 1; k < 3; k++) {
        cr_assert_eq(bench_inputs(spec, g, 7 + (uint64_t)k, &raw, &err), 0, "%s", err.message);
        with_batch_of(g, &in[0], &raw, &in[k], &batch[k]);
        tensorset_free(&raw);
    }
    for (int k = 0; k < 3; k++) {
        tensorset_init(&plain[k]);
        tensorset_init(&staged[k]);
        cr_assert_eq(backend_run(b, &in[k], &plain[k], &err), 0, "%s", err.message);
    }
    cr_assert(!same_bits(&plain[0], &plain[1]), "the batch matters");
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(backend_launch(b, &in[0], &err), 0, "%s", err.message);
        if (k < 2) cr_assert_eq(backend_stage(b, &batch[k + 1], &err), 0, "%s", err.message);
        cr_assert_eq(backend_finish(b, &staged[k], &err), 0, "%s", err.message);
        cr_assert(same_bits(&plain[k], &staged[k]), "%s: step %d with a staged batch", b->name, k);
    }
    for (int k = 0; k < 3; k++) {
        tensorset_free(&in[k]);
        tensorset_free(&plain[k]);
        tensorset_free(&staged[k]);
        if (k) tensorset_free(&batch[k]);
    }
}

static void expect_error(int rc, const MamlError *err, const char *what) {
    cr_assert_eq(rc, -1, "accepted: %s", what);
    cr_assert(strstr(err->message, what), "'%s' not in: %s", what, err->message);
    cr_assert_null(strchr(err->message, '\n'), "one line: %s", err->message);
}

/* Launching twice, finishing without a launch, staging twice, and staging anything but exactly
 * the batch are errors that say so; the backend still runs afterwards. */
static void check_staging_misuse_is_refused(Backend *b, const GraphSpec *spec, const Graph *g) {
    MamlError err;
    TensorSet in, batch, out, partial;
    cr_assert_eq(bench_inputs(spec, g, 7, &in, &err), 0, "%s", err.message);
    with_batch_of(g, &in, &in, &out, &batch);
    tensorset_free(&out);
    tensorset_init(&out);
    tensorset_init(&partial);
    expect_error(backend_finish(b, &out, &err), &err, "no run launched");
    cr_assert_eq(backend_launch(b, &in, &err), 0, "%s", err.message);
    expect_error(backend_launch(b, &in, &err), &err, "already launched");
    cr_assert_eq(backend_finish(b, &out, &err), 0, "%s", err.message);
    const Tensor *param = NULL;
    for (int i = 0; i < in.n && !param; i++)
        if (!tensorset_find(&batch, in.items[i].name)) param = &in.items[i];
    cr_assert(param);
    cr_assert(tensorset_add(&partial, param->name, param->dtype, param->shape, param->data, &err));
    expect_error(backend_stage(b, &partial, &err), &err, "is not a data input");
    tensorset_free(&partial);
    tensorset_init(&partial);
    const Tensor *x = &batch.items[0];
    cr_assert(tensorset_add(&partial, x->name, x->dtype, x->shape, x->data, &err));
    expect_error(backend_stage(b, &partial, &err), &err, "missing tensor");
    cr_assert_eq(backend_stage(b, &batch, &err), 0, "%s", err.message);
    expect_error(backend_stage(b, &batch, &err), &err, "already staged");
    cr_assert_eq(backend_run(b, &in, &out, &err), 0, "%s", err.message);
    tensorset_free(&in);
    tensorset_free(&batch);
    tensorset_free(&out);
    tensorset_free(&partial);
}

/* Stages a batch and leaves it in flight: closing the backend next must still be clean. */
static void stage_and_leave(Backend *b, const GraphSpec *spec, const Graph *g) {
    MamlError err;
    TensorSet in, full, batch;
    cr_assert_eq(bench_inputs(spec, g, 11, &in, &err), 0, "%s", err.message);
    with_batch_of(g, &in, &in, &full, &batch);
    cr_assert_eq(backend_stage(b, &batch, &err), 0, "%s", err.message);
    tensorset_free(&in);
    tensorset_free(&full);
    tensorset_free(&batch);
}

/* Three steps fed back by hand (each output bearing an input's name replaces that input) against
 * the same steps with the state kept on a fresh backend b (backend_keep_state) while the inputs
 * keep the first step's values: the other outputs and, at the end, backend_get_state give the
 * same bits, each step's batch staged during the step before. */
static void check_kept_state_matches_feedback_by_hand(Backend *b, Backend *plain,
                                                      const GraphSpec *spec, const Graph *g) {
    MamlError err;
    TensorSet in, host, out, kept_out, state, raw, batch[3], unused;
    cr_assert_eq(bench_inputs(spec, g, 7, &in, &err), 0, "%s", err.message);
    with_batch_of(g, &in, &in, &host, &batch[0]);
    for (int k = 1; k < 3; k++) {
        cr_assert_eq(bench_inputs(spec, g, 7 + (uint64_t)k, &raw, &err), 0, "%s", err.message);
        with_batch_of(g, &in, &raw, &unused, &batch[k]);
        tensorset_free(&raw);
        tensorset_free(&unused);
    }
    cr_assert_eq(backend_keep_state(b, &err), 0, "%s", err.message);
    tensorset_init(&state);
    cr_assert_eq(backend_get_state(b, &state, &err), 0, "%s", err.message);
    cr_assert_eq(state.n, 0, "no state before the first run");
    int fed_back = 0;
    for (int k = 0; k < 3; k++) {
        tensorset_init(&out);
        tensorset_init(&kept_out);
        for (int i = 0; i < batch[k].n; i++) {
            const Tensor *t = &batch[k].items[i];
            cr_assert(tensorset_add(&host, t->name, t->dtype, t->shape, t->data, &err));
        }
        cr_assert_eq(backend_run(plain, &host, &out, &err), 0, "%s", err.message);
        cr_assert_eq(backend_launch(b, &in, &err), 0, "%s", err.message);
        if (k < 2) cr_assert_eq(backend_stage(b, &batch[k + 1], &err), 0, "%s", err.message);
        cr_assert_eq(backend_finish(b, &kept_out, &err), 0, "%s", err.message);
        fed_back = 0;
        for (int i = 0; i < out.n; i++) {
            const Tensor *t = &out.items[i], *x = tensorset_find(&kept_out, t->name);
            if (graph_find_input(g, t->name) >= 0) {
                cr_assert_null(x, "%s: a fed-back output is not handed out", t->name);
                cr_assert(tensorset_add(&host, t->name, t->dtype, t->shape, t->data, &err));
                fed_back++;
                continue;
            }
            cr_assert(x && !memcmp(x->data, t->data,
                                   (size_t)shape_numel(t->shape) * tensor_dtype_size(t->dtype)),
                      "%s: step %d output %s", b->name, k, t->name);
        }
        tensorset_free(&out);
        tensorset_free(&kept_out);
    }
    cr_assert(fed_back > 0);
    cr_assert_eq(backend_get_state(b, &state, &err), 0, "%s", err.message);
    cr_assert_eq(state.n, fed_back);
    for (int i = 0; i < state.n; i++) {
        const Tensor *t = &state.items[i], *x = tensorset_find(&host, t->name);
        cr_assert(x && x->dtype == t->dtype && shape_equal(x->shape, t->shape) &&
                      !memcmp(x->data, t->data,
                              (size_t)shape_numel(t->shape) * tensor_dtype_size(t->dtype)),
                  "%s: state %s after 3 steps", b->name, t->name);
    }
    for (int k = 0; k < 3; k++) tensorset_free(&batch[k]);
    tensorset_free(&in);
    tensorset_free(&host);
    tensorset_free(&state);
}

#endif
