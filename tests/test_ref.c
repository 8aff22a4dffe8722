/* The reference interpreter's forward pass on small cases computed by hand. */
#include <criterion/criterion.h>
#include <math.h>

#include "graph.h"
#include "layers.h"
#include "maml.h"
#include "ref.h"
#include "spec.h"
#include "staging_check.h"
#include "test_util.h"

/* Runs g (outputs "y") on the given real inputs in float64 and returns y's values in out. */
static void run_y(Graph *g, const char **names, const double *const *data, int n, double *out) {
    TensorSet in, res;
    tensorset_init(&in);
    tensorset_init(&res);
    MamlError err;
    for (int i = 0; i < n; i++) {
        int id = graph_find_input(g, names[i]);
        cr_assert_geq(id, 0);
        const Node *node = &g->nodes[id];
        TensorDType dt = node->dtype == DT_INT ? TENSOR_I64 : TENSOR_F64;
        Tensor *t = tensorset_add(&in, names[i], dt, node->shape, NULL, &err);
        for (int64_t k = 0; k < shape_numel(node->shape); k++) tensor_set(t, k, data[i][k]);
    }
    cr_assert_eq(ref_run(g, PREC_F64, &in, &res, &err), 0, "%s", err.message);
    const Tensor *y = tensorset_find(&res, "y");
    for (int64_t k = 0; k < shape_numel(y->shape); k++) out[k] = tensor_get(y, k);
    tensorset_free(&in);
    tensorset_free(&res);
}

static void expect_values(const double *got, const double *want, int n) {
    for (int i = 0; i < n; i++)
        cr_expect(fabs(got[i] - want[i]) < 1e-12, "element %d: got %.15g, want %.15g", i, got[i],
                  want[i]);
}

Test(ref, conv2d_with_stride_2_and_padding_1_matches_hand_computation) {
    /* x = 1..16 as a 4x4 image, w = 3x3 of ones: each output sums the window inside the image. */
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(1, 1, 1, 4, 4));
    int w = g_input(&g, "w", INPUT_DATA, DT_REAL, SHAPE(1, 1, 1, 3, 3));
    graph_add_output(&g, "y", g_conv2d(&g, x, w, 2, 1));
    cr_assert_eq(g.nodes[g.outputs[0].node].shape.dims[3], 2);
    double xv[16], wv[9], y[4];
    for (int i = 0; i < 16; i++) xv[i] = i + 1;
    for (int i = 0; i < 9; i++) wv[i] = 1;
    const double *data[2] = {xv, wv};
    run_y(&g, (const char *[]){"x", "w"}, data, 2, y);
    /* windows centred on (0,0), (0,2), (2,0), (2,2) */
    double want[4] = {1 + 2 + 5 + 6, 2 + 3 + 4 + 6 + 7 + 8, 5 + 6 + 9 + 10 + 13 + 14,
                      6 + 7 + 8 + 10 + 11 + 12 + 14 + 15 + 16};
    expect_values(y, want, 4);
    graph_free(&g);
}

Test(ref, conv2d_sums_over_input_channels_per_task_weights) {
    /* two tasks, each with its own 1x1 kernel over 2 channels */
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(2, 1, 2, 1, 2));
    int w = g_input(&g, "w", INPUT_DATA, DT_REAL, SHAPE(2, 1, 2, 1, 1));
    graph_add_output(&g, "y", g_conv2d(&g, x, w, 1, 0));
    double xv[8] = {1, 2, 3, 4, 5, 6, 7, 8}, wv[4] = {1, 10, 2, -1}, y[4];
    const double *data[2] = {xv, wv};
    run_y(&g, (const char *[]){"x", "w"}, data, 2, y);
    double want[4] = {1 + 30, 2 + 40, 10 - 7, 12 - 8};
    expect_values(y, want, 4);
    graph_free(&g);
}

Test(ref, batch_norm_normalises_each_channel_with_biased_batch_variance) {
    /* one task, N=2 examples, C=1, 1x2 images: values 1, 3, 5, 7 -> mean 4, var 5 */
    Graph g;
    graph_init(&g);
    LayerSpec bn = {.kind = LAYER_BATCH_NORM, .scale = true, .shift = true, .eps = 1e-5};
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(1, 2, 1, 1, 2));
    int s = g_input(&g, "s", INPUT_DATA, DT_REAL, SHAPE(1, 1));
    int b = g_input(&g, "b", INPUT_DATA, DT_REAL, SHAPE(1, 1));
    graph_add_output(&g, "y", layer_forward(&g, &bn, x, s, b));
    double xv[4] = {1, 3, 5, 7}, sv[1] = {2}, bv[1] = {0.5}, y[4];
    const double *data[3] = {xv, sv, bv};
    run_y(&g, (const char *[]){"x", "s", "b"}, data, 3, y);
    double inv = 1 / sqrt(5 + 1e-5), want[4];
    for (int i = 0; i < 4; i++) want[i] = 2 * (xv[i] - 4) * inv + 0.5;
    expect_values(y, want, 4);
    graph_free(&g);
}

Test(ref, max_pool_takes_window_maxima_and_drops_the_odd_edge) {
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(1, 1, 1, 3, 5));
    graph_add_output(&g, "y", g_max_pool2d(&g, x, 2, 2));
    double xv[15] = {1, 9, 2, 3, 100, 4, 5, 8, 7, 100, 100, 100, 100, 100, 100}, y[2];
    const double *data[1] = {xv};
    run_y(&g, (const char *[]){"x"}, data, 1, y);
    double want[2] = {9, 8};
    expect_values(y, want, 2);
    graph_free(&g);
}

Test(ref, linear_is_x_times_w_transposed_plus_bias) {
    Graph g;
    graph_init(&g);
    LayerSpec lin = {.kind = LAYER_LINEAR, .bias = true, .out_features = 2};
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(1, 2, 3));
    int w = g_input(&g, "w", INPUT_DATA, DT_REAL, SHAPE(1, 2, 3));
    int b = g_input(&g, "b", INPUT_DATA, DT_REAL, SHAPE(1, 2));
    graph_add_output(&g, "y", layer_forward(&g, &lin, x, w, b));
    double xv[6] = {1, 2, 3, 4, 5, 6}, wv[6] = {1, 0, -1, 2, 1, 0}, bv[2] = {10, 20}, y[4];
    const double *data[3] = {xv, wv, bv};
    run_y(&g, (const char *[]){"x", "w", "b"}, data, 3, y);
    double want[4] = {1 - 3 + 10, 2 + 2 + 20, 4 - 6 + 10, 8 + 5 + 20};
    expect_values(y, want, 4);
    graph_free(&g);
}

Test(ref, accuracy_counts_examples_whose_labelled_logit_is_the_maximum) {
    Graph g;
    graph_init(&g);
    int logits = g_input(&g, "logits", INPUT_DATA, DT_REAL, SHAPE(1, 2, 3));
    int labels = g_input(&g, "labels", INPUT_DATA, DT_INT, SHAPE(1, 2));
    graph_add_output(&g, "y", accuracy(&g, logits, labels));
    double lv[6] = {1, 2, 3, 1000, 0, 0}, yl[2] = {2, 1}, y[1];
    const double *data[2] = {lv, yl};
    run_y(&g, (const char *[]){"logits", "labels"}, data, 2, y);
    double want[1] = {0.5};
    expect_values(y, want, 1);
    graph_free(&g);
}

Test(ref, cross_entropy_matches_hand_computation) {
    Graph g;
    graph_init(&g);
    int logits = g_input(&g, "logits", INPUT_DATA, DT_REAL, SHAPE(1, 2, 3));
    int labels = g_input(&g, "labels", INPUT_DATA, DT_INT, SHAPE(1, 2));
    graph_add_output(&g, "y", loss_cross_entropy(&g, logits, labels, REDUCE_MEAN, 1));
    double lv[6] = {1, 2, 3, 1000, 0, 0}, yl[2] = {2, 1}, y[1];
    const double *data[2] = {lv, yl};
    run_y(&g, (const char *[]){"logits", "labels"}, data, 2, y);
    /* example 0: log(e + e^2 + e^3) - 3; example 1: 1000 + log(1 + 2e^-1000) - 0 = 1000 */
    double l0 = log(exp(1) + exp(2) + exp(3)) - 3;
    double want[1] = {(l0 + 1000) / 2};
    expect_values(y, want, 1);
    graph_free(&g);
}

Test(ref, one_hot_rejects_a_label_out_of_range_naming_it) {
    Graph g;
    graph_init(&g);
    int labels = g_input(&g, "labels", INPUT_DATA, DT_INT, SHAPE(3));
    graph_add_output(&g, "y", g_one_hot(&g, labels, 3));
    TensorSet in, out;
    tensorset_init(&in);
    tensorset_init(&out);
    MamlError err;
    int64_t lv[3] = {0, 3, 1};
    tensorset_add(&in, "labels", TENSOR_I64, SHAPE(3), lv, &err);
    cr_assert_eq(ref_run(&g, PREC_F64, &in, &out, &err), -1);
    cr_assert(strstr(err.message, "label 3 at position 1 is out of range [0, 3)"), "%s",
              err.message);
    tensorset_free(&in);
    tensorset_free(&out);
    graph_free(&g);
}

Test(ref, missing_or_misshapen_inputs_are_rejected_before_anything_runs) {
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(2, 3));
    graph_add_output(&g, "y", g_unary(&g, OP_EXP, x));
    TensorSet in, out;
    tensorset_init(&in);
    tensorset_init(&out);
    MamlError err;
    cr_assert_eq(ref_run(&g, PREC_F64, &in, &out, &err), -1);
    cr_assert_str_eq(err.message, "missing tensor 'x' (expected shape [2, 3])");
    tensorset_add(&in, "x", TENSOR_F32, SHAPE(3, 2), NULL, &err);
    cr_assert_eq(ref_run(&g, PREC_F64, &in, &out, &err), -1);
    cr_assert_str_eq(err.message, "tensor 'x': expected shape [2, 3], found [3, 2]");
    cr_assert_eq(out.n, 0, "outputs were produced from bad input");
    tensorset_free(&in);
    tensorset_free(&out);
    graph_free(&g);
}

Test(ref, float32_mode_rounds_every_stored_value) {
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(1));
    graph_add_output(&g, "y", g_add_scalar(&g, x, 1e-9));
    TensorSet in, out;
    tensorset_init(&in);
    tensorset_init(&out);
    MamlError err;
    double one = 1.0;
    tensorset_add(&in, "x", TENSOR_F64, SHAPE(1), &one, &err);
    cr_assert_eq(ref_run(&g, PREC_F32, &in, &out, &err), 0, "%s", err.message);
    cr_assert_eq(tensor_get(tensorset_find(&out, "y"), 0), 1.0, "1 + 1e-9 must round to 1 in f32");
    cr_assert_eq(tensorset_find(&out, "y")->dtype, TENSOR_F32);
    tensorset_free(&in);
    tensorset_free(&out);
    graph_free(&g);
}

/* backend.c's launch / stage / finish bookkeeping, which the synchronous backends (ref, cpu) share,
 * on the sinusoid training step. */
Test(ref, staged_batches_and_kept_state_give_the_bits_of_plain_runs_and_misuse_is_refused) {
    GraphSpec spec = {0};
    Graph g;
    MamlError err;
    cr_assert_eq(spec_load("graphs/sinusoid.yaml", NULL, 0, &spec, &err), 0, "%s", err.message);
    graph_init(&g);
    cr_assert_eq(maml_build(&spec, MAML_TRAIN_STEP, 4, &g, NULL, &err), 0, "%s", err.message);
    Backend *b = NULL;
    cr_assert_eq(backend_open("ref", &g, PREC_F32, &b, NULL, 0, &err), 0, "%s", err.message);
    check_staged_runs_match_plain_runs(b, &spec, &g);
    check_staging_misuse_is_refused(b, &spec, &g);
    Backend *kept = NULL;
    cr_assert_eq(backend_open("ref", &g, PREC_F32, &kept, NULL, 0, &err), 0, "%s", err.message);
    check_kept_state_matches_feedback_by_hand(kept, b, &spec, &g);
    backend_close(kept);
    stage_and_leave(b, &spec, &g);
    backend_close(b);
    graph_free(&g);
    spec_free(&spec);
}
