/* The YAML front end, shape inference and the shipped graphs. Malformed graphs are written to a
 * temporary directory; every error is checked for its exact message and file:line:column. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spec.h"
#include "test_util.h"

/* A small valid graph; malformed cases are edits of it. Line numbers for reference:
 *  1 model:                 13     - {block: cb, name: b1}
 *  2   input: [1, 28, 28]   14     - {block: cb, name: b2, args: {ch: 16}}
 *  3   loss: cross_entropy  15     - flatten
 *  4   blocks:              16     - {linear: {name: logits, out_features: $maml.n_way}}
 *  5     cb:                17 maml:
 *  6       args: {ch: 8}    18   n_way: 5
 *  7       layers:          19   k_shot: 1
 *  8 (conv2d)               20   q_query: 1
 *  9 (batch_norm)           21   meta_batch: 4
 * 10         - relu         22   inner: {steps: 1, lr: 0.4}
 * 11 (max_pool2d)           23   outer: {optimizer: adam, lr: 0.001}
 * 12   layers:              24   eval: {inner_steps: 3, tasks: 10}
 *                           25 data: {dataset: omniglot, split: background_evaluation, seed: 1} */
static const char *const BASE =
    "model:\n"
    "  input: [1, 28, 28]\n"
    "  loss: cross_entropy\n"
    "  blocks:\n"
    "    cb:\n"
    "      args: {ch: 8}\n"
    "      layers:\n"
    "        - {conv2d: {name: conv, out_channels: $ch, kernel: 3, padding: 1}}\n"
    "        - {batch_norm: {name: bn}}\n"
    "        - relu\n"
    "        - {max_pool2d: {kernel: 2}}\n"
    "  layers:\n"
    "    - {block: cb, name: b1}\n"
    "    - {block: cb, name: b2, args: {ch: 16}}\n"
    "    - flatten\n"
    "    - {linear: {name: logits, out_features: $maml.n_way}}\n"
    "maml:\n"
    "  n_way: 5\n"
    "  k_shot: 1\n"
    "  q_query: 1\n"
    "  meta_batch: 4\n"
    "  inner: {steps: 1, lr: 0.4}\n"
    "  outer: {optimizer: adam, lr: 0.001}\n"
    "  eval: {inner_steps: 3, tasks: 10}\n"
    "data: {dataset: omniglot, split: background_evaluation, seed: 1}\n";

/* maml and data sections for small hand-written regression graphs (3 lines). */
#define SINUSOID_SETTINGS                                                                          \
    "maml: {n_way: 1, k_shot: 1, q_query: 1, meta_batch: 1, inner: {steps: 1, lr: 0.1},\n"         \
    "       outer: {optimizer: sgd, lr: 0.1}, eval: {inner_steps: 1, tasks: 1}}\n"                 \
    "data: {dataset: sinusoid, seed: 1}\n"

/* The graph file of the current test (one per test process). */
static char graph_path[128];

static void write_graph(const char *text) {
    const char *dir = temp_dir(0);
    cr_assert_not_null(dir);
    snprintf(graph_path, sizeof graph_path, "%s/g.yaml", dir);
    cr_assert_eq(write_text(graph_path, text), 0);
}

static void remove_graph(void) {
    unlink(graph_path);
    char *slash = strrchr(graph_path, '/');
    *slash = '\0';
    rmdir(graph_path);
    *slash = '/';
}

/* BASE with `from` (which must occur exactly once) replaced by `to`. */
static char *edit(const char *from, const char *to) {
    const char *at = strstr(BASE, from);
    cr_assert_not_null(at, "'%s' is not in BASE", from);
    cr_assert_null(strstr(at + 1, from), "'%s' occurs twice in BASE", from);
    size_t size = strlen(BASE) - strlen(from) + strlen(to) + 1;
    char *out = malloc(size);
    snprintf(out, size, "%.*s%s%s", (int)(at - BASE), BASE, to, at + strlen(from));
    return out;
}

/* Loads text with overrides and expects `where_message` ("LINE:COL: message") after the path. */
static void expect_error_set(const char *text, const char *const *ov, int n_ov,
                             const char *where_message) {
    GraphSpec spec;
    MamlError err = {{0}};
    write_graph(text);
    int rc = spec_load(graph_path, ov, n_ov, &spec, &err);
    char want[MAML_ERROR_MAX];
    snprintf(want, sizeof want, "%s:%s", graph_path, where_message);
    remove_graph();
    cr_assert_eq(rc, -1, "expected an error: %s", want);
    cr_assert_str_eq(err.message, want);
    cr_assert_eq(spec.layers, NULL, "a failed load leaves nothing allocated");
}

static void expect_error(const char *text, const char *where_message) {
    expect_error_set(text, NULL, 0, where_message);
}

/* expect_error on an edit of BASE. */
static void expect_edit_error(const char *from, const char *to, const char *where_message) {
    char *text = edit(from, to);
    expect_error(text, where_message);
    free(text);
}

/* Loads an override and expects exactly `message` (overrides carry no line/column). */
static void expect_override_error(const char *setting, const char *message) {
    GraphSpec spec;
    MamlError err = {{0}};
    write_graph(BASE);
    int rc = spec_load(graph_path, &setting, 1, &spec, &err);
    remove_graph();
    cr_assert_eq(rc, -1);
    cr_assert_str_eq(err.message, message);
}

static void load_ok(const char *text, const char *const *ov, int n_ov, GraphSpec *spec) {
    MamlError err = {{0}};
    write_graph(text);
    int rc = spec_load(graph_path, ov, n_ov, spec, &err);
    remove_graph();
    cr_assert_eq(rc, 0, "%s", err.message);
}

static void load_shipped(const char *path, const char *const *ov, int n_ov, GraphSpec *spec) {
    MamlError err = {{0}};
    cr_assert_eq(spec_load(path, ov, n_ov, spec, &err), 0, "%s", err.message);
}

static void assert_dims(const int64_t *dims, int rank, int want_rank, const int64_t *want,
                        const char *what) {
    cr_assert_eq(rank, want_rank, "%s: rank %d, want %d", what, rank, want_rank);
    for (int i = 0; i < rank; i++)
        cr_assert_eq(dims[i], want[i], "%s: dim %d is %lld, want %lld", what, i, (long long)dims[i],
                     (long long)want[i]);
}

static const ParamSpec *param(const GraphSpec *s, const char *name) {
    for (int i = 0; i < s->n_params; i++)
        if (strcmp(s->params[i].name, name) == 0) return &s->params[i];
    cr_assert_fail("no parameter %s", name);
    return NULL;
}

/* ------------------------------------------------------------------ shipped graphs */

Test(shipped, seed_has_112261_parameters_in_pytorch_order_and_layouts) {
    GraphSpec s;
    load_shipped("graphs/omniglot_seed.yaml", NULL, 0, &s);
    cr_assert_eq(s.total_params, 112261);
    cr_assert_eq(s.n_params, 18);
    int p = 0;
    for (int b = 1; b <= 4; b++) {
        char name[64];
        int64_t in = b == 1 ? 1 : 64;
        const char *suffix[] = {"conv2d.weight", "conv2d.bias", "bn.weight", "bn.bias"};
        for (int k = 0; k < 4; k++, p++) {
            snprintf(name, sizeof name, "conv%d.%s", b, suffix[k]);
            cr_assert_str_eq(s.params[p].name, name);
            if (k == 0)
                assert_dims(s.params[p].dims, s.params[p].rank, 4, (int64_t[]){64, in, 3, 3}, name);
            else
                assert_dims(s.params[p].dims, s.params[p].rank, 1, (int64_t[]){64}, name);
            cr_assert(s.params[p].adapt, "%s adapts", name);
            cr_assert_eq(s.params[p].is_bn, k >= 2);
            cr_assert_eq(s.params[p].is_bias, k == 1 || k == 3);
        }
    }
    cr_assert_str_eq(s.params[16].name, "logits.weight");
    assert_dims(s.params[16].dims, s.params[16].rank, 2, (int64_t[]){5, 64}, "logits.weight");
    cr_assert_str_eq(s.params[17].name, "logits.bias");
    assert_dims(s.params[17].dims, s.params[17].rank, 1, (int64_t[]){5}, "logits.bias");
    cr_assert_eq(s.params[0].fan_in, 9);
    cr_assert_eq(s.params[4].fan_in, 64 * 9);
    cr_assert_eq(s.params[16].fan_in, 64);
    cr_assert_eq(s.params[17].fan_in, 64);
    spec_free(&s);
}

Test(shipped, seed_shapes_go_28_14_7_3_1_through_max_pool) {
    GraphSpec s;
    load_shipped("graphs/omniglot_seed.yaml", NULL, 0, &s);
    cr_assert_eq(s.n_layers, 18);
    const int64_t sizes[] = {14, 7, 3, 1};
    for (int b = 0; b < 4; b++) {
        const LayerSpec *conv = &s.layers[4 * b], *pool = &s.layers[4 * b + 3];
        cr_assert_eq(conv->kind, LAYER_CONV2D);
        cr_assert_eq(conv->padding, 1);
        cr_assert_eq(conv->stride, 1);
        cr_assert_eq(s.layers[4 * b + 1].kind, LAYER_BATCH_NORM);
        cr_assert(s.layers[4 * b + 1].scale && s.layers[4 * b + 1].shift);
        cr_assert_float_eq(s.layers[4 * b + 1].eps, 1e-5, 1e-12);
        cr_assert_eq(s.layers[4 * b + 2].kind, LAYER_RELU);
        cr_assert_str_eq(s.layers[4 * b + 2].name, "");
        cr_assert_eq(pool->kind, LAYER_MAX_POOL2D);
        cr_assert_eq(pool->stride, 2, "max-pool stride defaults to its kernel");
        assert_dims(pool->out_shape.dims, pool->out_shape.rank, 3,
                    (int64_t[]){64, sizes[b], sizes[b]}, "pool");
    }
    cr_assert_str_eq(s.layers[0].name, "conv1.conv2d");
    cr_assert_str_eq(s.layers[13].name, "conv4.bn");
    cr_assert_eq(s.layers[16].kind, LAYER_FLATTEN);
    assert_dims(s.layers[16].out_shape.dims, s.layers[16].out_shape.rank, 1, (int64_t[]){64},
                "flatten");
    cr_assert_eq(s.layers[17].n_params, 325);
    spec_free(&s);
}

Test(shipped, seed_settings_are_the_seeds) {
    GraphSpec s;
    load_shipped("graphs/omniglot_seed.yaml", NULL, 0, &s);
    const MamlSettings *m = &s.maml;
    cr_assert_eq(s.loss, LOSS_CROSS_ENTROPY);
    cr_assert(m->n_way == 5 && m->k_shot == 1 && m->q_query == 1 && m->meta_batch == 32);
    cr_assert(m->inner.steps == 1 && !m->inner.first_order && !m->inner.lr_learnable);
    cr_assert_float_eq(m->inner.lr, 0.04, 1e-12);
    cr_assert_eq(m->inner.n_adapt, 0);
    cr_assert_eq(m->inner.reduction, REDUCE_MEAN);
    cr_assert_eq(m->outer.optimizer, OPT_ADAM);
    cr_assert_float_eq(m->outer.lr, 0.001, 1e-12);
    cr_assert_float_eq(m->outer.beta1, 0.9, 1e-12);
    cr_assert_float_eq(m->outer.beta2, 0.999, 1e-12);
    cr_assert_float_eq(m->outer.eps, 1e-8, 1e-20);
    cr_assert_eq(m->eval.inner_steps, 3);
    cr_assert_float_eq(m->eval.lr, 0.04, 1e-12, "eval.lr defaults to inner.lr");
    cr_assert_eq(m->eval.tasks, 600);
    cr_assert_eq(s.data.dataset, DATASET_OMNIGLOT);
    cr_assert_eq(s.data.split, SPLIT_BACKGROUND_EVALUATION);
    cr_assert(s.data.n_rotations == 1 && s.data.rotations[0] == 0);
    cr_assert(s.data.image_size == 28 && s.data.resize == RESIZE_NEAREST && !s.data.invert);
    cr_assert_eq(s.data.seed, 1206);
    cr_assert_eq(spec_support_size(&s), 5);
    cr_assert_eq(spec_query_size(&s), 5);
    spec_free(&s);
}

Test(shipped, maml_5w1s_shapes_go_28_14_7_4_2_and_bn_shift_is_not_adapted) {
    GraphSpec s;
    load_shipped("graphs/omniglot_5w1s.yaml", NULL, 0, &s);
    const int64_t sizes[] = {14, 7, 4, 2};
    for (int b = 0; b < 4; b++) {
        const LayerSpec *conv = &s.layers[3 * b];
        cr_assert(conv->kind == LAYER_CONV2D && conv->stride == 2 && conv->padding == 1);
        assert_dims(conv->out_shape.dims, conv->out_shape.rank, 3,
                    (int64_t[]){64, sizes[b], sizes[b]}, "conv");
        cr_assert(!s.layers[3 * b + 1].scale && s.layers[3 * b + 1].shift);
    }
    cr_assert_eq(s.layers[12].kind, LAYER_GLOBAL_AVG_POOL);
    assert_dims(s.layers[12].out_shape.dims, s.layers[12].out_shape.rank, 1, (int64_t[]){64},
                "gap");
    assert_dims(param(&s, "logits.weight")->dims, 2, 2, (int64_t[]){5, 64}, "logits.weight");
    cr_assert_eq(s.n_params, 14, "4 x (conv weight, conv bias, bn shift) + linear weight, bias");
    for (int i = 0; i < s.n_params; i++)
        cr_assert_eq(s.params[i].adapt, !s.params[i].is_bn, "%s", s.params[i].name);
    const ParamSpec *shift = param(&s, "conv3.bn.bias");
    cr_assert(shift->is_bn && shift->is_bias);
    cr_assert_float_eq(s.maml.inner.lr, 0.4, 1e-12);
    cr_assert_eq(s.maml.inner.reduction, REDUCE_SUM_OVER_K_SHOT);
    cr_assert(s.maml.inner.steps == 1 && s.maml.eval.inner_steps == 3 && s.maml.meta_batch == 32);
    cr_assert(s.data.split == SPLIT_SHUFFLED_CHARACTERS && s.data.train_characters == 1200);
    cr_assert_eq(s.data.n_rotations, 4);
    cr_assert(s.data.rotations[1] == 90 && s.data.rotations[3] == 270);
    spec_free(&s);
}

Test(shipped, maml_20w1s_takes_5_steps_at_lr_0_1_with_meta_batch_16) {
    GraphSpec s;
    load_shipped("graphs/omniglot_20w1s.yaml", NULL, 0, &s);
    cr_assert(s.maml.n_way == 20 && s.maml.inner.steps == 5 && s.maml.meta_batch == 16);
    cr_assert_float_eq(s.maml.inner.lr, 0.1, 1e-12);
    cr_assert_eq(s.maml.inner.reduction, REDUCE_SUM_OVER_K_SHOT);
    assert_dims(param(&s, "logits.weight")->dims, 2, 2, (int64_t[]){20, 64}, "logits.weight");
    cr_assert(!param(&s, "conv1.bn.bias")->adapt && param(&s, "conv1.conv2d.weight")->adapt);
    cr_assert_eq(spec_support_size(&s), 20);
    spec_free(&s);
}

Test(shipped, sinusoid_is_an_mlp_1_40_40_1_with_mse) {
    GraphSpec s;
    load_shipped("graphs/sinusoid.yaml", NULL, 0, &s);
    cr_assert_eq(s.loss, LOSS_MSE);
    assert_dims(s.input.dims, s.input.rank, 1, (int64_t[]){1}, "input");
    assert_dims(param(&s, "hidden1.weight")->dims, 2, 2, (int64_t[]){40, 1}, "hidden1.weight");
    assert_dims(param(&s, "hidden2.weight")->dims, 2, 2, (int64_t[]){40, 40}, "hidden2.weight");
    assert_dims(param(&s, "out.weight")->dims, 2, 2, (int64_t[]){1, 40}, "out.weight");
    cr_assert_eq(s.total_params, 40 + 40 + 1600 + 40 + 40 + 1);
    cr_assert_eq(s.layers[1].kind, LAYER_RELU);
    cr_assert(s.maml.n_way == 1 && s.maml.k_shot == 10 && s.maml.q_query == 10 &&
              s.maml.meta_batch == 25);
    cr_assert_float_eq(s.maml.inner.lr, 0.01, 1e-12);
    cr_assert(s.maml.inner.steps == 1 && s.maml.eval.inner_steps == 10);
    cr_assert_eq(s.data.dataset, DATASET_SINUSOID);
    cr_assert_float_eq(s.data.amplitude[1], 5.0, 1e-12);
    cr_assert_float_eq(s.data.phase[1], 3.14159265358979, 1e-12);
    cr_assert_float_eq(s.data.x_range[0], -5.0, 1e-12);
    cr_assert_eq(spec_support_size(&s), 10);
    spec_free(&s);
}

/* ------------------------------------------------------------------ valid graphs, references,
 * blocks */

Test(frontend, base_graph_loads_with_block_args_and_reference_to_n_way) {
    GraphSpec s;
    load_ok(BASE, NULL, 0, &s);
    cr_assert_eq(s.n_layers, 10);
    cr_assert_str_eq(s.layers[0].name, "b1.conv");
    cr_assert_eq(s.layers[0].out_channels, 8, "the block's default argument");
    cr_assert_str_eq(s.layers[4].name, "b2.conv");
    cr_assert_eq(s.layers[4].out_channels, 16, "the instance's argument");
    assert_dims(s.layers[8].out_shape.dims, s.layers[8].out_shape.rank, 1, (int64_t[]){16 * 7 * 7},
                "flatten");
    cr_assert_eq(s.layers[9].out_features, 5);
    cr_assert_eq(s.layers[0].loc.line, 8);
    cr_assert_eq(s.layers[0].loc.column, 11);
    cr_assert_str_eq(s.layers[0].loc.file, graph_path);
    spec_free(&s);
}

Test(frontend, nested_blocks_forward_arguments_and_prefix_names) {
    const char *text =
        "model:\n"
        "  input: [1, 28, 28]\n"
        "  loss: cross_entropy\n"
        "  blocks:\n"
        "    inner: {args: {w: ~}, layers: [{conv2d: {name: c, out_channels: $w, kernel: 3, "
        "stride: 2, bias: false}}]}\n"
        "    outer: {args: {width: 4}, layers: [{block: inner, name: a, args: {w: $width}}, relu, "
        "{max_pool2d: {kernel: 3, stride: 1}}]}\n"
        "  layers:\n"
        "    - {block: outer, name: x, args: {width: $maml.k_shot}}\n"
        "    - {block: outer}\n"
        "    - flatten\n"
        "    - {linear: {name: head, out_features: 5, in_features: 36, bias: false}}\n"
        "maml: {n_way: 5, k_shot: 3, q_query: 2, meta_batch: 2,\n"
        "       inner: {steps: 2, lr: learnable, lr_init: 0.1, first_order: true, adapt: [head.*], "
        "reduction: sum},\n"
        "       outer: {optimizer: sgd, lr: 0.5}, eval: {inner_steps: 4, lr: 0.2, tasks: 7}}\n"
        "data: {dataset: omniglot, split: shuffled_characters, train_characters: 1000, rotations: "
        "[0, 180],\n"
        "       image_size: 28, resize: lanczos, invert: true, seed: 0x10}\n";
    GraphSpec s;
    load_ok(text, NULL, 0, &s);
    cr_assert_str_eq(s.layers[0].name, "x.a.c");
    cr_assert_eq(s.layers[0].out_channels, 3, "k_shot through two levels of arguments");
    cr_assert_str_eq(s.layers[3].name, "a.c", "an unnamed instance adds no prefix");
    cr_assert_eq(s.layers[3].out_channels, 4);
    /* 28 -conv3/2-> 13 -pool3/1-> 11 -conv3/2-> 5 -pool3/1-> 3: 4 x 3 x 3 = 36 */
    assert_dims(s.layers[5].out_shape.dims, 3, 3, (int64_t[]){4, 3, 3}, "second pool");
    cr_assert_eq(s.n_params, 3, "two bias-free convs and a bias-free linear");
    cr_assert(!param(&s, "x.a.c.weight")->adapt && param(&s, "head.weight")->adapt);
    cr_assert(s.maml.inner.lr_learnable && s.maml.inner.first_order);
    cr_assert_float_eq(s.maml.inner.lr, 0.1, 1e-12);
    cr_assert_eq(s.maml.inner.reduction, REDUCE_SUM);
    cr_assert_eq(s.maml.outer.optimizer, OPT_SGD);
    cr_assert_float_eq(s.maml.eval.lr, 0.2, 1e-12);
    cr_assert(s.data.train_characters == 1000 && s.data.n_rotations == 2 &&
              s.data.rotations[1] == 180);
    cr_assert(s.data.resize == RESIZE_LANCZOS && s.data.invert && s.data.seed == 16);
    spec_free(&s);
}

Test(frontend, sinusoid_ranges_default_to_the_maml_paper) {
    const char *text =
        "model: {input: [1], loss: mse, layers: [{linear: {name: out, out_features: 1}}]}\n"
        "maml: {n_way: 1, k_shot: 5, q_query: 5, meta_batch: 3, inner: {steps: 1, lr: 0.01},\n"
        "       outer: {optimizer: adam, lr: 1e-3, beta1: 0.5, beta2: 0.9, eps: 1e-6},\n"
        "       eval: {inner_steps: 2, tasks: 5}}\n"
        "data: {dataset: sinusoid, seed: 3}\n";
    GraphSpec s;
    load_ok(text, NULL, 0, &s);
    cr_assert_float_eq(s.data.amplitude[0], 0.1, 1e-12);
    cr_assert_float_eq(s.data.amplitude[1], 5.0, 1e-12);
    cr_assert_float_eq(s.data.phase[1], 3.141592653589793, 1e-12);
    cr_assert_float_eq(s.data.x_range[1], 5.0, 1e-12);
    cr_assert_float_eq(s.maml.outer.lr, 1e-3, 1e-15, "1e-3 is a float in the YAML 1.2 core schema");
    cr_assert_float_eq(s.maml.outer.beta1, 0.5, 1e-12);
    cr_assert_float_eq(s.maml.outer.eps, 1e-6, 1e-18);
    spec_free(&s);
}

Test(frontend, spec_free_is_safe_on_a_zeroed_spec_and_twice) {
    GraphSpec s;
    memset(&s, 0, sizeof s);
    spec_free(&s);
    load_shipped("graphs/sinusoid.yaml", NULL, 0, &s);
    spec_free(&s);
    spec_free(&s);
    cr_assert_eq(s.params, NULL);
}

Test(frontend, layer_kind_names_match_the_yaml_words) {
    cr_assert_str_eq(layer_kind_name(LAYER_CONV2D), "conv2d");
    cr_assert_str_eq(layer_kind_name(LAYER_BATCH_NORM), "batch_norm");
    cr_assert_str_eq(layer_kind_name(LAYER_RELU), "relu");
    cr_assert_str_eq(layer_kind_name(LAYER_MAX_POOL2D), "max_pool2d");
    cr_assert_str_eq(layer_kind_name(LAYER_GLOBAL_AVG_POOL), "global_avg_pool");
    cr_assert_str_eq(layer_kind_name(LAYER_FLATTEN), "flatten");
    cr_assert_str_eq(layer_kind_name(LAYER_LINEAR), "linear");
}

/* ------------------------------------------------------------------ spec_infer_shapes on
 * hand-built specs */

Test(shapes, hand_built_spec_infers_shapes_and_params_without_task_settings) {
    LayerSpec layers[2] = {
        {.kind = LAYER_CONV2D,
         .name = "c",
         .out_channels = 2,
         .kernel = 3,
         .stride = 2,
         .padding = 1,
         .bias = true},
        {.kind = LAYER_GLOBAL_AVG_POOL},
    };
    GraphSpec s = {.input = {3, {3, 5, 5}}, .layers = layers, .n_layers = 2};
    MamlError err;
    cr_assert_eq(spec_infer_shapes(&s, &err), 0, "%s", err.message);
    assert_dims(layers[0].out_shape.dims, 3, 3, (int64_t[]){2, 3, 3}, "conv");
    assert_dims(layers[1].out_shape.dims, 1, 1, (int64_t[]){2}, "gap");
    cr_assert_eq(s.total_params, 2 * 3 * 9 + 2);
    cr_assert_eq(s.params[1].fan_in, 27);
    free(s.params);
}

Test(shapes, hand_built_spec_with_duplicate_parameter_names_fails) {
    LayerSpec layers[2] = {
        {.kind = LAYER_LINEAR,
         .name = "fc",
         .out_features = 4,
         .bias = true,
         .loc = {"m.yaml", 3, 5}},
        {.kind = LAYER_LINEAR,
         .name = "fc",
         .out_features = 4,
         .bias = true,
         .loc = {"m.yaml", 4, 5}},
    };
    GraphSpec s = {.input = {1, {4}}, .layers = layers, .n_layers = 2};
    MamlError err;
    cr_assert_eq(spec_infer_shapes(&s, &err), -1);
    cr_assert_str_eq(
        err.message,
        "m.yaml:4:5: duplicate parameter name 'fc.weight' (first defined by the layer at line 3)");
    free(s.params);
}

/* ------------------------------------------------------------------ --set overrides */

Test(overrides, inner_lr_and_q_query_are_set_by_dotted_paths) {
    const char *ov[] = {"maml.inner.lr=0.4", "maml.q_query=15"};
    GraphSpec s;
    load_shipped("graphs/omniglot_seed.yaml", ov, 2, &s);
    cr_assert_float_eq(s.maml.inner.lr, 0.4, 1e-12);
    cr_assert_float_eq(s.maml.eval.lr, 0.4, 1e-12, "eval.lr follows the overridden inner.lr");
    cr_assert_eq(s.maml.q_query, 15);
    cr_assert_eq(spec_query_size(&s), 75);
    spec_free(&s);
}

Test(overrides, n_way_reaches_the_layer_that_references_it) {
    const char *ov[] = {"maml.n_way=20"};
    GraphSpec s;
    load_shipped("graphs/omniglot_seed.yaml", ov, 1, &s);
    assert_dims(param(&s, "logits.weight")->dims, 2, 2, (int64_t[]){20, 64}, "logits.weight");
    spec_free(&s);
}

Test(overrides, absent_optional_keys_sequences_and_booleans_can_be_set) {
    const char *ov[] = {"maml.outer.beta1=0.95",       "data.rotations=[0, 90, 270]",
                        "maml.inner.first_order=true", "maml.inner.adapt=[logits.*]",
                        "model.blocks.cb.args.ch=4",   "data.split=shuffled_characters",
                        "data.train_characters=1100"};
    GraphSpec s;
    load_ok(BASE, ov, 7, &s);
    cr_assert_float_eq(s.maml.outer.beta1, 0.95, 1e-12);
    cr_assert(s.data.n_rotations == 3 && s.data.rotations[2] == 270);
    cr_assert(s.maml.inner.first_order);
    cr_assert(s.maml.inner.n_adapt == 1 && !param(&s, "b1.conv.weight")->adapt);
    cr_assert_eq(s.layers[0].out_channels, 4);
    cr_assert_eq(s.data.train_characters, 1100);
    spec_free(&s);
}

Test(overrides, later_settings_win) {
    const char *ov[] = {"maml.meta_batch=8", "maml.meta_batch=9"};
    GraphSpec s;
    load_ok(BASE, ov, 2, &s);
    cr_assert_eq(s.maml.meta_batch, 9);
    spec_free(&s);
}

Test(overrides, unknown_setting_is_named) {
    expect_override_error("maml.inner.lrr=0.4",
                          "--set maml.inner.lrr=0.4: unknown setting 'maml.inner.lrr'");
}

Test(overrides, unknown_section_names_the_whole_setting) {
    expect_override_error("mam.n_way=3", "--set mam.n_way=3: unknown setting 'mam.n_way'");
}

Test(overrides, path_through_a_value_is_an_unknown_setting) {
    expect_override_error("maml.n_way.x=1", "--set maml.n_way.x=1: unknown setting 'maml.n_way.x' "
                                            "('maml.n_way' is a value, not a mapping)");
}

Test(overrides, wrong_type_goes_through_the_same_checks_as_the_file) {
    expect_override_error("maml.inner.lr=fast",
                          "--set maml.inner.lr=fast: 'lr' must be a number, got 'fast'");
    expect_override_error("maml.k_shot=0",
                          "--set maml.k_shot=0: 'k_shot' must be a positive integer, got 0");
    expect_override_error("maml.meta_batch=",
                          "--set maml.meta_batch=: 'meta_batch' must be an integer, got null");
    expect_override_error(
        "maml.outer.optimizer=rmsprop",
        "--set maml.outer.optimizer=rmsprop: 'optimizer' must be adam or sgd, got 'rmsprop'");
}

Test(overrides, missing_equals_sign_and_bad_path_are_rejected) {
    expect_override_error("maml.n_way", "--set maml.n_way: expected KEY=VALUE");
    expect_override_error("=3", "--set =3: expected KEY=VALUE");
    expect_override_error("maml..n_way=3",
                          "--set maml..n_way=3: malformed setting path 'maml..n_way' (expected "
                          "dotted key names such as maml.inner.lr)");
}

Test(overrides, malformed_yaml_value_reports_the_override) {
    expect_override_error("data.rotations=[0, 90",
                          "--set data.rotations=[0, 90: YAML syntax error: did not find "
                          "expected ',' or ']' (while parsing a flow sequence)");
}

Test(overrides, cross_section_check_points_at_the_override) {
    expect_override_error("maml.q_query=20", "--set maml.q_query=20: k_shot + q_query = 21 exceeds "
                                             "the 20 drawings of an Omniglot character");
}

/* ------------------------------------------------------------------ malformed YAML and files */

Test(malformed, yaml_syntax_error_reports_libyaml_problem_and_mark) {
    expect_edit_error("inner: {steps: 1, lr: 0.4}", "inner: {steps: 1, lr: 0.4",
                      "23:8: YAML syntax error: did not find expected ',' or '}' (while parsing a "
                      "flow mapping that "
                      "starts at line 22, column 10)");
}

Test(malformed, bad_indentation_is_a_syntax_error) {
    expect_edit_error("  k_shot: 1\n", "   k_shot: 1\n",
                      "19:10: YAML syntax error: mapping values are not allowed in this context");
}

Test(malformed, invalid_utf8_is_reported_with_its_position) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: \xff\n",
                      "19:11: invalid YAML text: invalid leading UTF-8 octet");
}

Test(malformed, tab_indentation_is_a_syntax_error) {
    expect_edit_error("  k_shot: 1\n", "\tk_shot: 1\n",
                      "19:1: YAML syntax error: found a tab character that violates indentation "
                      "(while scanning a "
                      "plain scalar that starts at line 18, column 10)");
}

Test(malformed, unreadable_file_names_path_and_strerror) {
    GraphSpec s;
    MamlError err;
    cr_assert_eq(spec_load("/nonexistent/g.yaml", NULL, 0, &s, &err), -1);
    cr_assert_str_eq(err.message, "/nonexistent/g.yaml: cannot open: No such file or directory");
    cr_assert_eq(spec_load("graphs", NULL, 0, &s, &err), -1);
    cr_assert_str_eq(err.message, "graphs: cannot read: Is a directory");
}

Test(malformed, file_over_one_mebibyte_is_refused) {
    size_t size = (1 << 20) + 2;
    char *text = malloc(size + 1);
    memset(text, '#', size);
    text[size] = '\0';
    write_graph(text);
    free(text);
    GraphSpec s;
    MamlError err;
    int rc = spec_load(graph_path, NULL, 0, &s, &err);
    char want[256];
    snprintf(want, sizeof want, "%s: file is larger than the limit of 1048576 bytes", graph_path);
    remove_graph();
    cr_assert_eq(rc, -1);
    cr_assert_str_eq(err.message, want);
}

Test(malformed, empty_file_is_an_error) {
    expect_error("# nothing here\n", "1:1: the graph file is empty");
}

Test(malformed, root_must_be_a_mapping) {
    expect_error("- model\n- maml\n",
                 "1:1: the graph file must be a mapping with model, maml and data");
}

Test(malformed, second_document_is_an_error) {
    char *text = edit("seed: 1}\n", "seed: 1}\n---\nmodel: {}\n");
    expect_error(text, "26:1: a graph file holds one YAML document");
    free(text);
}

Test(malformed, document_deeper_than_32_levels_is_refused) {
    char deep[200];
    snprintf(deep, sizeof deep, "seed: %.40s1%.40s}\n", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
             "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    /* data's mapping is at depth 2, so the 31st bracket is the 33rd level */
    expect_edit_error("seed: 1}\n", deep, "25:93: document nested deeper than 32 levels");
}

Test(malformed, duplicate_key_is_an_error) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: 1\n  k_shot: 2\n",
                      "20:3: duplicate key 'k_shot' (first at line 19)");
}

Test(malformed, yaml_aliases_are_refused) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: &one 1\n  q_query: *one\n  meta_batch: 4\n",
                      "20:12: YAML aliases (*one) are not supported; use blocks or $references");
}

Test(frontend, core_schema_tags_type_their_scalars) {
    char *text = edit("  k_shot: 1\n", "  k_shot: !!int \"1\"\n");
    GraphSpec s;
    load_ok(text, NULL, 0, &s);
    free(text);
    cr_assert_eq(s.maml.k_shot, 1);
    spec_free(&s);
}

Test(malformed, tagged_scalar_that_does_not_fit_its_tag) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: !!int 1.5\n", "19:11: '1.5' is not a valid int");
}

Test(malformed, str_tag_makes_a_number_a_string) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: !!str 1\n",
                      "19:11: 'k_shot' must be an integer, got '1'");
}

Test(malformed, unsupported_tag_is_refused) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: !!binary 1\n",
                      "19:11: unsupported YAML tag 'tag:yaml.org,2002:binary' here");
}

/* ------------------------------------------------------------------ malformed: keys and sections
 */

Test(malformed, unknown_top_level_key) {
    expect_edit_error("maml:\n", "mamll: {}\nmaml:\n",
                      "17:1: unknown key 'mamll' in the graph file (expected model, maml, data)");
}

Test(malformed, key_with_a_newline_is_escaped_and_the_message_stays_one_line) {
    expect_edit_error("  loss: cross_entropy\n", "  loss: cross_entropy\n  \"lo\\nss\": mse\n",
                      "4:3: unknown key 'lo\\nss' in model (expected input, loss, blocks, layers)");
}

Test(malformed, value_with_control_characters_is_escaped) {
    expect_edit_error("loss: cross_entropy", "loss: \"cross\\tentropy\\n\\e\"",
                      "3:9: 'loss' must be cross_entropy or mse, got 'cross\\tentropy\\n\\x1b'");
}

Test(malformed, unknown_key_in_model) {
    expect_edit_error("  loss: cross_entropy\n", "  loss: cross_entropy\n  lose: mse\n",
                      "4:3: unknown key 'lose' in model (expected input, loss, blocks, layers)");
}

Test(malformed, unknown_key_in_layer_settings) {
    expect_edit_error(
        "kernel: 3, padding: 1", "kernal: 3, padding: 1",
        "8:52: unknown key 'kernal' in conv2d layer (expected name, out_channels, kernel, stride, "
        "padding, bias)");
}

Test(malformed, settings_on_a_layer_that_takes_none) {
    expect_edit_error("    - flatten\n", "    - {flatten: {dims: 1}}\n",
                      "15:18: unknown key 'dims': a flatten layer takes no settings");
}

Test(malformed, unknown_key_in_maml) {
    expect_edit_error("  meta_batch: 4\n", "  meta_batch: 4\n  metabatch: 4\n",
                      "22:3: unknown key 'metabatch' in maml (expected n_way, k_shot, q_query, "
                      "meta_batch, inner, "
                      "outer, eval)");
}

Test(malformed, unknown_key_in_inner) {
    expect_edit_error(
        "lr: 0.4}", "lr: 0.4, lrr: 1}",
        "22:30: unknown key 'lrr' in maml.inner (expected steps, lr, lr_init, first_order, adapt, "
        "reduction)");
}

Test(malformed, unknown_key_in_outer) {
    expect_edit_error(
        "lr: 0.001}", "lr: 0.001, momentum: 0.9}",
        "23:39: unknown key 'momentum' in maml.outer (expected optimizer, lr, beta1, beta2, eps)");
}

Test(malformed, unknown_key_in_eval) {
    expect_edit_error("tasks: 10}", "tasks: 10, steps: 3}",
                      "24:37: unknown key 'steps' in maml.eval (expected inner_steps, lr, tasks)");
}

Test(malformed, unknown_key_in_data) {
    expect_edit_error(
        "seed: 1}", "seed: 1, shuffle: true}",
        "25:66: unknown key 'shuffle' in data (omniglot) (expected dataset, seed, split, "
        "train_characters, rotations, image_size, resize, invert)");
}

Test(malformed, sinusoid_key_in_omniglot_data) {
    expect_edit_error(
        "seed: 1}", "seed: 1, amplitude: [1, 2]}",
        "25:66: unknown key 'amplitude' in data (omniglot) (expected dataset, seed, split, "
        "train_characters, rotations, image_size, resize, invert)");
}

Test(malformed, missing_section) {
    expect_edit_error("data: {dataset: omniglot, split: background_evaluation, seed: 1}\n", "",
                      "1:1: missing 'data' in the graph file");
}

Test(malformed, missing_required_key) {
    expect_edit_error("  meta_batch: 4\n", "", "18:3: missing 'meta_batch' in maml");
}

Test(malformed, missing_layer_name) {
    expect_edit_error("{linear: {name: logits, out_features", "{linear: {out_features",
                      "16:16: missing 'name' in linear layer");
}

Test(malformed, missing_seed_has_no_default) {
    expect_edit_error(", seed: 1}", "}", "25:7: missing 'seed' in data");
}

/* ------------------------------------------------------------------ malformed: values */

Test(malformed, string_where_integer_expected) {
    expect_edit_error("  n_way: 5\n", "  n_way: five\n",
                      "18:10: 'n_way' must be an integer, got 'five'");
}

Test(malformed, float_where_integer_expected) {
    expect_edit_error("kernel: 3,", "kernel: 3.5,", "8:60: 'kernel' must be an integer, got 3.5");
}

Test(malformed, quoted_number_is_a_string) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: \"1\"\n",
                      "19:11: 'k_shot' must be an integer, got '1'");
}

Test(malformed, empty_value_is_null_not_a_default) {
    expect_edit_error("  meta_batch: 4\n", "  meta_batch:\n",
                      "21:14: 'meta_batch' must be an integer, got null");
}

Test(malformed, yes_is_not_a_boolean) {
    expect_edit_error("lr: 0.4}", "lr: 0.4, first_order: yes}",
                      "22:43: 'first_order' must be true or false, got 'yes'");
}

Test(malformed, mapping_where_number_expected) {
    expect_edit_error("lr: 0.001}", "lr: {value: 0.001}}",
                      "23:32: 'lr' must be a number, got a mapping");
}

Test(malformed, zero_size_through_a_block_argument) {
    expect_edit_error("args: {ch: 8}", "args: {ch: 0}",
                      "6:18: 'out_channels' must be a positive integer, got 0 (via $ch at line 8)");
}

Test(malformed, negative_count) {
    expect_edit_error("  k_shot: 1\n", "  k_shot: -1\n",
                      "19:11: 'k_shot' must be a positive integer, got -1");
}

Test(malformed, negative_padding) {
    expect_edit_error("padding: 1}", "padding: -1}",
                      "8:72: 'padding' must not be negative, got -1");
}

Test(malformed, size_above_65536_is_refused) {
    expect_edit_error(
        "args: {ch: 8}", "args: {ch: 70000}",
        "6:18: 'out_channels' must be between 1 and 65536, got 70000 (via $ch at line 8)");
}

Test(malformed, non_positive_learning_rate) {
    expect_edit_error("lr: 0.4}", "lr: 0}", "22:25: 'lr' must be positive, got 0");
}

Test(malformed, infinite_learning_rate) {
    expect_edit_error("lr: 0.4}", "lr: .inf}", "22:25: 'lr' must be a finite number, got .inf");
}

Test(malformed, beta_outside_zero_one) {
    expect_edit_error("lr: 0.001}", "lr: 0.001, beta2: 1.0}",
                      "23:46: 'beta2' must be in [0, 1), got 1.0");
}

Test(malformed, bad_optimizer_enum) {
    expect_edit_error("optimizer: adam", "optimizer: rmsprop",
                      "23:22: 'optimizer' must be adam or sgd, got 'rmsprop'");
}

Test(malformed, bad_reduction_enum) {
    expect_edit_error("lr: 0.4}", "lr: 0.4, reduction: average}",
                      "22:41: 'reduction' must be mean, sum or sum_over_k_shot, got 'average'");
}

Test(malformed, bad_loss_enum) {
    expect_edit_error("loss: cross_entropy", "loss: nll",
                      "3:9: 'loss' must be cross_entropy or mse, got 'nll'");
}

Test(malformed, bad_rotation) {
    expect_edit_error("seed: 1}", "seed: 1, rotations: [0, 45]}",
                      "25:81: rotation 45 is not one of 0, 90, 180, 270");
}

Test(malformed, input_with_two_dimensions) {
    expect_edit_error("input: [1, 28, 28]", "input: [28, 28]",
                      "2:10: 'input' must be [C, H, W] or [features], got 2 dimensions");
}

Test(malformed, layer_name_with_a_dot) {
    expect_edit_error("name: logits", "name: log.its",
                      "16:23: layer name 'log.its' must be an identifier (letters, digits, _)");
}

Test(malformed, sgd_with_adam_betas) {
    expect_edit_error("optimizer: adam, lr: 0.001}", "optimizer: sgd, lr: 0.001, beta1: 0.9}",
                      "23:38: 'beta1' applies only to optimizer adam");
}

Test(malformed, lr_init_without_learnable_lr) {
    expect_edit_error("lr: 0.4}", "lr: 0.4, lr_init: 0.1}",
                      "22:30: 'lr_init' applies only when 'lr' is learnable");
}

Test(malformed, learnable_lr_needs_lr_init) {
    expect_edit_error("lr: 0.4}", "lr: learnable}",
                      "22:25: 'lr: learnable' needs 'lr_init' (the initial inner learning rate)");
}

Test(malformed, shuffled_split_needs_train_characters) {
    expect_edit_error("split: background_evaluation", "split: shuffled_characters",
                      "25:7: split shuffled_characters needs 'train_characters'");
}

/* ------------------------------------------------------------------ malformed: layers and blocks
 */

Test(malformed, unknown_layer_kind) {
    expect_edit_error(
        "    - flatten\n", "    - flaten\n",
        "15:7: unknown layer kind 'flaten' (expected conv2d, batch_norm, relu, max_pool2d, "
        "global_avg_pool, flatten, linear or {block: NAME})");
}

Test(malformed, unknown_layer_kind_in_mapping_form) {
    expect_edit_error(
        "{batch_norm: {name: bn}}", "{batchnorm: {name: bn}}",
        "9:12: unknown layer kind 'batchnorm' (expected conv2d, batch_norm, relu, max_pool2d, "
        "global_avg_pool, flatten, linear or {block: NAME})");
}

Test(malformed, layer_settings_outside_the_kind_mapping) {
    expect_edit_error(
        "out_features: $maml.n_way}}", "out_features: $maml.n_way}, bias: false}",
        "16:59: unexpected key 'bias': a layer is {linear: {settings}} with the settings inside");
}

Test(malformed, undefined_reference) {
    expect_edit_error("out_channels: $ch,", "out_channels: $chan,",
                      "8:47: undefined reference '$chan'");
}

Test(malformed, undefined_document_path_reference) {
    expect_edit_error("$maml.n_way", "$maml.n_ways", "16:45: undefined reference '$maml.n_ways'");
}

Test(malformed, malformed_reference) {
    expect_edit_error("out_channels: $ch,", "out_channels: $1ch,",
                      "8:47: malformed reference '$1ch' (expected $NAME or $dotted.path)");
}

Test(malformed, cyclic_reference) {
    expect_edit_error("tasks: 10}", "tasks: 10, lr: $maml.eval.lr}",
                      "24:41: 'lr': cyclic reference $maml.eval.lr -> $maml.eval.lr");
}

Test(malformed, cycle_of_two_references_names_the_chain) {
    expect_edit_error(
        "  n_way: 5\n  k_shot: 1\n", "  n_way: $maml.k_shot\n  k_shot: $maml.n_way\n",
        "18:10: 'n_way': cyclic reference $maml.k_shot -> $maml.n_way -> $maml.k_shot");
}

/* The setting is not in the cycle: the message starts from it. */
Test(malformed, chain_that_runs_into_a_cycle_names_it_from_its_start) {
    char *text = edit("seed: 1}", "seed: $data.seed}");
    char *both = NULL;
    const char *at = strstr(text, "$maml.n_way");
    cr_assert(asprintf(&both, "%.*s$data.seed%s", (int)(at - text), text,
                       at + strlen("$maml.n_way")) > 0);
    expect_error(both,
                 "16:45: 'out_features': cyclic reference $data.seed -> $data.seed -> $data.seed");
    free(text), free(both);
}

Test(malformed, unknown_block) {
    expect_edit_error("{block: cb, name: b2", "{block: cc, name: b2", "14:15: unknown block 'cc'");
}

Test(malformed, cyclic_block_definitions) {
    expect_error(
        "model:\n"
        "  input: [1]\n"
        "  loss: mse\n"
        "  blocks:\n"
        "    a: {layers: [relu, {block: b}]}\n"
        "    b: {layers: [{block: a}]}\n"
        "  layers: [{block: a}, {linear: {name: out, out_features: 1}}]\n" SINUSOID_SETTINGS,
        "6:26: cyclic block definition: a -> b -> a");
}

Test(malformed, block_argument_the_block_does_not_take) {
    expect_edit_error("args: {ch: 16}", "args: {chan: 16}",
                      "14:36: block 'cb' has no argument 'chan'");
}

Test(malformed, block_argument_without_default_must_be_passed) {
    expect_edit_error("args: {ch: 8}", "args: {ch: ~}", "13:7: block 'cb' needs argument 'ch'");
}

Test(malformed, duplicate_layer_names_would_duplicate_parameters) {
    expect_edit_error("name: b2,", "name: b1,",
                      "14:25: layer name 'b1' clashes with layer 'b1.conv' (line 8): parameter "
                      "names must be unique");
}

Test(malformed, unnamed_instances_duplicate_parameter_names) {
    expect_edit_error("{block: cb, name: b1}\n    - {block: cb, name: b2, args: {ch: 16}}",
                      "{block: cb}\n    - {block: cb}",
                      "8:27: layer name 'conv' clashes with layer 'conv' (line 8): parameter names "
                      "must be unique");
}

Test(malformed, more_than_64_layers_after_expansion) {
    char text[4096];
    snprintf(text, sizeof text,
             "model:\n"
             "  input: [1]\n"
             "  loss: mse\n"
             "  blocks:\n"
             "    ten: {layers: [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]}\n"
             "  layers:\n"
             "    - {block: ten}\n    - {block: ten}\n    - {block: ten}\n    - {block: ten}\n"
             "    - {block: ten}\n    - {block: ten}\n    - {block: ten}\n"
             "    - {linear: {name: out, out_features: 1}}\n" SINUSOID_SETTINGS);
    expect_error(text, "5:44: more than 64 layers after block expansion");
}

Test(malformed, blocks_nested_deeper_than_16) {
    char text[8192];
    int n = snprintf(text, sizeof text, "model:\n  input: [1]\n  loss: mse\n  blocks:\n");
    for (int i = 0; i < 16; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "    b%d: {layers: [{block: b%d}]}\n", i,
                      i + 1);
    n += snprintf(text + n, sizeof text - (size_t)n, "    b16: {layers: [relu]}\n");
    n += snprintf(
        text + n, sizeof text - (size_t)n,
        "  layers: [{block: b0}, {linear: {name: out, out_features: 1}}]\n" SINUSOID_SETTINGS);
    expect_error(text, "21:5: blocks nested deeper than 16 levels");
}

/* ------------------------------------------------------------------ malformed: shapes */

Test(malformed, linear_in_features_differ_from_the_flattened_size) {
    expect_edit_error("out_features: $maml.n_way}", "out_features: $maml.n_way, in_features: 100}",
                      "16:7: linear 'logits': in_features is 100 but its input has 784 features");
}

Test(malformed, linear_on_an_image_needs_flatten) {
    expect_edit_error(
        "    - flatten\n", "",
        "15:7: linear 'logits' needs a flat input, got [16, 7, 7]; put flatten or global_avg_pool "
        "before it");
}

Test(malformed, conv_kernel_larger_than_padded_input) {
    expect_edit_error(
        "kernel: 3,", "kernel: 31,",
        "8:11: conv2d 'b1.conv': kernel 31 is larger than its padded input 30x30 (padding 1)");
}

Test(malformed, pooling_a_too_small_input) {
    expect_edit_error("{max_pool2d: {kernel: 2}}", "{max_pool2d: {kernel: 16}}",
                      "11:11: max_pool2d: kernel 16 is larger than its input 1x1");
}

Test(malformed, model_output_does_not_match_n_way) {
    expect_edit_error(
        "out_features: $maml.n_way", "out_features: 10",
        "16:7: the model's output is [10] but cross_entropy over n_way = 5 classes needs [5]");
}

Test(malformed, adapt_glob_matching_nothing) {
    expect_edit_error("lr: 0.4}", "lr: 0.4, adapt: [\"*.bn.*\", \"*.bnn.*\"]}",
                      "22:48: adapt pattern '*.bnn.*' matches no parameter");
}

/* ------------------------------------------------------------------ malformed: data versus model
 */

Test(malformed, k_shot_plus_q_query_over_20_for_omniglot) {
    expect_edit_error(
        "  q_query: 1\n", "  q_query: 20\n",
        "20:12: k_shot + q_query = 21 exceeds the 20 drawings of an Omniglot character");
}

Test(malformed, input_does_not_match_image_size) {
    expect_edit_error("input: [1, 28, 28]", "input: [1, 32, 32]",
                      "2:10: 'input' must be [1, 28, 28] for Omniglot images of size 28");
}

Test(malformed, omniglot_with_mse_loss) {
    expect_edit_error("loss: cross_entropy", "loss: mse",
                      "3:9: Omniglot is classification: 'loss' must be cross_entropy");
}

Test(malformed, n_way_beyond_the_classes_of_a_split) {
    expect_edit_error(
        "  n_way: 5\n", "  n_way: 700\n",
        "18:10: 'n_way' must be between 2 and 659 (the classes of the smaller split), got 700");
}

Test(malformed, train_characters_with_the_background_split) {
    expect_edit_error("seed: 1}", "seed: 1, train_characters: 1200}",
                      "25:66: 'train_characters' applies only to split shuffled_characters");
}

/* ------------------------------------------------------------------ limits are inclusive */

Test(limits, sixteen_nested_blocks_and_sixty_four_layers_are_allowed) {
    char text[8192];
    int n = snprintf(text, sizeof text, "model:\n  input: [1]\n  loss: mse\n  blocks:\n");
    for (int i = 0; i < 15; i++)
        n += snprintf(text + n, sizeof text - (size_t)n,
                      "    b%d: {layers: [{block: b%d, name: n}]}\n", i, i + 1);
    n += snprintf(text + n, sizeof text - (size_t)n, "    b15: {layers: [relu]}\n");
    n += snprintf(
        text + n, sizeof text - (size_t)n,
        "    ten: {layers: [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]}\n");
    n += snprintf(
        text + n, sizeof text - (size_t)n,
        "  layers: [{block: b0, name: n}, {block: ten}, {block: ten}, {block: ten}, {block: ten},\n"
        "           {block: ten}, {block: ten}, relu, relu, {linear: {name: out, out_features: "
        "1}}]\n" SINUSOID_SETTINGS);
    GraphSpec s;
    load_ok(text, NULL, 0, &s);
    cr_assert_eq(s.n_layers, 64);
    cr_assert_str_eq(s.layers[63].name, "out");
    spec_free(&s);
}

/* ------------------------------------------------------------------ error messages are one line */

Test(errors, control_characters_become_escapes_and_backslashes_stay) {
    char out[64];
    maml_error_escape(out, sizeof out, "a\nb\tc\x01\x7f\\n\xc3\xa9");
    cr_assert_str_eq(out, "a\\nb\\tc\\x01\\x7f\\n\xc3\xa9");
}

Test(errors, truncation_never_splits_an_escape) {
    char out[8];
    maml_error_escape(out, 6, "abc\nd");
    cr_assert_str_eq(out, "abc\\n", "the escape fits exactly");
    maml_error_escape(out, 5, "abc\nd");
    cr_assert_str_eq(out, "abc", "no lone backslash");
    maml_error_escape(out, 6, "ab\x02z");
    cr_assert_str_eq(out, "ab", "no partial \\xNN");
    maml_error_escape(out, 1, "\n");
    cr_assert_str_eq(out, "");
}

Test(errors, fail_at_keeps_the_location_and_one_line) {
    MamlError err = {{0}};
    SourceLoc loc = {.file = "g.yaml", .line = 3, .column = 5};
    cr_assert_eq(maml_fail_at(&err, loc, "unknown key '%s'", "a\nb"), -1);
    cr_assert_str_eq(err.message, "g.yaml:3:5: unknown key 'a\\nb'");
}

Test(errors, a_message_of_newlines_fills_the_buffer_with_whole_escapes) {
    char raw[3 * MAML_ERROR_MAX];
    memset(raw, '\n', sizeof raw - 1);
    raw[sizeof raw - 1] = '\0';
    MamlError err = {{0}};
    maml_fail(&err, "xy%s", raw);
    size_t n = strlen(err.message);
    /* 1022 + 2 bytes would leave no room for the terminator: the last escape is left out whole */
    cr_assert_eq(n, MAML_ERROR_MAX - 2, "xy then 510 escapes: %zu", n);
    cr_assert_null(strchr(err.message, '\n'));
    cr_assert_eq(err.message[n - 2], '\\');
    cr_assert_eq(err.message[n - 1], 'n');
}

Test(errors, a_message_may_quote_the_previous_one) {
    MamlError err = {{0}};
    maml_fail(&err, "inner\tproblem");
    maml_fail(&err, "outer: %s", err.message);
    cr_assert_str_eq(err.message, "outer: inner\\tproblem", "escaping twice changes nothing");
}
