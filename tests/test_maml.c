/* The MAML step graph against PyTorch's fixtures and finite differences of the meta-loss. */
#include <criterion/criterion.h>
#include <math.h>
#include <yaml.h>

#include "batch.h"
#include "graph.h"
#include "layers.h"
#include "maml.h"
#include "params.h"
#include "ref.h"
#include "safetensors.h"
#include "spec.h"
#include "test_util.h"

typedef struct {
    char name[64], params_file[128], batch_file[128], expected64_file[128];
    int T, n_way, q_query, inner_steps;
    bool first_order;
    double inner_lr, torch_f32_rel_err;
} FixtureCase;

/* Reads the case list of fixtures/pytorch_maml/manifest.yaml with libyaml. */
static int read_manifest(FixtureCase *cases, int max) {
    FILE *f = fopen(shared_path(0, "fixtures/pytorch_maml/manifest.yaml"), "r");
    cr_assert(f, "cannot open the fixture manifest");
    yaml_parser_t p;
    yaml_document_t doc;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_file(&p, f);
    cr_assert(yaml_parser_load(&p, &doc), "manifest.yaml does not parse");
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int n = 0;
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
         pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pair->key);
        if (strcmp((char *)k->data.scalar.value, "cases") != 0) continue;
        yaml_node_t *list = yaml_document_get_node(&doc, pair->value);
        for (yaml_node_item_t *it = list->data.sequence.items.start;
             it < list->data.sequence.items.top && n < max; it++, n++) {
            yaml_node_t *c = yaml_document_get_node(&doc, *it);
            FixtureCase *fc = &cases[n];
            memset(fc, 0, sizeof *fc);
            for (yaml_node_pair_t *q = c->data.mapping.pairs.start; q < c->data.mapping.pairs.top;
                 q++) {
                const char *key = (char *)yaml_document_get_node(&doc, q->key)->data.scalar.value;
                yaml_node_t *vn = yaml_document_get_node(&doc, q->value);
                if (vn->type != YAML_SCALAR_NODE) continue;
                const char *v = (char *)vn->data.scalar.value;
                if (!strcmp(key, "name"))
                    snprintf(fc->name, sizeof fc->name, "%s", v);
                else if (!strcmp(key, "params_file"))
                    snprintf(fc->params_file, 128, "%s", v);
                else if (!strcmp(key, "batch_file"))
                    snprintf(fc->batch_file, 128, "%s", v);
                else if (!strcmp(key, "expected64_file"))
                    snprintf(fc->expected64_file, 128, "%s", v);
                else if (!strcmp(key, "T"))
                    fc->T = atoi(v);
                else if (!strcmp(key, "n_way"))
                    fc->n_way = atoi(v);
                else if (!strcmp(key, "q_query"))
                    fc->q_query = atoi(v);
                else if (!strcmp(key, "inner_steps"))
                    fc->inner_steps = atoi(v);
                else if (!strcmp(key, "first_order"))
                    fc->first_order = !strcmp(v, "true");
                else if (!strcmp(key, "inner_lr"))
                    fc->inner_lr = atof(v);
                else if (!strcmp(key, "torch_f32_rel_err"))
                    fc->torch_f32_rel_err = atof(v);
            }
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    fclose(f);
    return n;
}

static void load_seed_spec(GraphSpec *spec, const FixtureCase *c) {
    char sets[6][64];
    snprintf(sets[0], 64, "maml.n_way=%d", c->n_way);
    snprintf(sets[1], 64, "maml.q_query=%d", c->q_query);
    snprintf(sets[2], 64, "maml.inner.steps=%d", c->inner_steps);
    snprintf(sets[3], 64, "maml.inner.lr=%.17g", c->inner_lr);
    snprintf(sets[4], 64, "maml.inner.first_order=%s", c->first_order ? "true" : "false");
    snprintf(sets[5], 64, "maml.k_shot=1");
    const char *ov[6] = {sets[0], sets[1], sets[2], sets[3], sets[4], sets[5]};
    MamlError err;
    cr_assert_eq(spec_load("graphs/omniglot_seed.yaml", ov, 6, spec, &err), 0, "%s", err.message);
}

static void read_fixture(const char *file, TensorSet *set) {
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/pytorch_maml/%s", file);
    MamlError err;
    tensorset_init(set);
    cr_assert_eq(safetensors_read(shared_path(1, rel), set, &err), 0, "%s", err.message);
}

/* Runs the case's meta-gradient graph on the ref backend. */
static void run_case(const FixtureCase *c, Precision prec, GraphSpec *spec, TensorSet *out) {
    TensorSet inputs, batch;
    read_fixture(c->params_file, &inputs);
    read_fixture(c->batch_file, &batch);
    MamlError err;
    int64_t tasks;
    cr_assert_eq(batch_check(spec, &batch, c->batch_file, &tasks, &err), 0, "%s", err.message);
    cr_assert_eq(tasks, c->T);
    for (int i = 0; i < batch.n; i++)
        tensorset_add(&inputs, batch.items[i].name, batch.items[i].dtype, batch.items[i].shape,
                      batch.items[i].data, &err);
    Graph g;
    graph_init(&g);
    cr_assert_eq(maml_build(spec, MAML_META_GRAD, tasks, &g, NULL, &err), 0, "%s", err.message);
    tensorset_init(out);
    cr_assert_eq(ref_run(&g, prec, &inputs, out, &err), 0, "%s", err.message);
    graph_free(&g);
    tensorset_free(&inputs);
    tensorset_free(&batch);
}

/* Largest |g| over every gradient tensor of the reference: the yardstick the fixtures' README
 * prescribes (conv biases' exact gradient is 0). */
static double global_grad_scale(const TensorSet *ref) {
    double m = 0;
    for (int i = 0; i < ref->n; i++)
        if (!strncmp(ref->items[i].name, "grad/", 5))
            for (int64_t k = 0; k < shape_numel(ref->items[i].shape); k++)
                m = fmax(m, fabs(tensor_get(&ref->items[i], k)));
    return m;
}

/* Max over gradient tensors of max|got - want| / scale; also checks meta_loss and meta_acc. */
static double compare(const TensorSet *got, const TensorSet *want, const char *label) {
    double scale = global_grad_scale(want), worst = 0;
    int n_grads = 0;
    for (int i = 0; i < want->n; i++) {
        const Tensor *w = &want->items[i];
        const Tensor *g = tensorset_find(got, w->name);
        cr_assert(g, "%s: output '%s' missing", label, w->name);
        cr_assert(shape_equal(g->shape, w->shape), "%s: '%s' shape differs", label, w->name);
        double err = 0;
        for (int64_t k = 0; k < shape_numel(w->shape); k++)
            err = fmax(err, fabs(tensor_get(g, k) - tensor_get(w, k)));
        if (!strncmp(w->name, "grad/", 5)) {
            worst = fmax(worst, err / scale);
            n_grads++;
        } else {
            cr_assert(err <= 1e-5 * fmax(1.0, fabs(tensor_get(w, 0))), "%s: %s off by %g", label,
                      w->name, err);
        }
    }
    cr_assert_eq(n_grads, 18, "%s: expected 18 gradient tensors, found %d", label, n_grads);
    return worst;
}

Test(maml, meta_gradient_matches_pytorch_in_float64_within_1e9) {
    FixtureCase cases[16];
    int n = read_manifest(cases, 16);
    cr_assert_geq(n, 5);
    for (int i = 0; i < n; i++) {
        GraphSpec spec = {0};
        load_seed_spec(&spec, &cases[i]);
        TensorSet out, want;
        run_case(&cases[i], PREC_F64, &spec, &out);
        read_fixture(cases[i].expected64_file, &want);
        double rel = compare(&out, &want, cases[i].name);
        cr_log_info("f64 %s: max rel err %.3g", cases[i].name, rel);
        cr_expect_lt(rel, 1e-9, "%s: float64 meta-gradient rel err %g", cases[i].name, rel);
        tensorset_free(&out);
        tensorset_free(&want);
        spec_free(&spec);
    }
}

Test(maml, meta_gradient_matches_pytorch_in_float32_within_5e4_or_3x_torch) {
    FixtureCase cases[16];
    int n = read_manifest(cases, 16);
    for (int i = 0; i < n; i++) {
        GraphSpec spec = {0};
        load_seed_spec(&spec, &cases[i]);
        TensorSet out, want;
        run_case(&cases[i], PREC_F32, &spec, &out);
        read_fixture(cases[i].expected64_file, &want);
        double rel = compare(&out, &want, cases[i].name);
        double bound = fmax(5e-4, 3 * cases[i].torch_f32_rel_err);
        cr_log_info("f32 %s: max rel err %.3g (bound %.3g)", cases[i].name, rel, bound);
        cr_expect_lt(rel, bound, "%s: float32 meta-gradient rel err %g > %g", cases[i].name, rel,
                     bound);
        tensorset_free(&out);
        tensorset_free(&want);
        spec_free(&spec);
    }
}

/* If second-order terms were dropped, the second-order case would equal the first-order one. */
Test(maml, second_order_and_first_order_differ_and_each_matches_its_reference) {
    FixtureCase cases[16];
    int n = read_manifest(cases, 16);
    const FixtureCase *so = NULL, *fo = NULL;
    for (int i = 0; i < n; i++) {
        if (!strcmp(cases[i].name, "so_T3_5w1s_q3_in3")) so = &cases[i];
        if (!strcmp(cases[i].name, "fo_T3_5w1s_q3_in3")) fo = &cases[i];
    }
    cr_assert(so && fo, "fixture cases so_/fo_T3_5w1s_q3_in3 missing");
    GraphSpec s1 = {0}, s2 = {0};
    load_seed_spec(&s1, so);
    load_seed_spec(&s2, fo);
    TensorSet a, b, want_so, want_fo;
    run_case(so, PREC_F64, &s1, &a);
    run_case(fo, PREC_F64, &s2, &b);
    read_fixture(so->expected64_file, &want_so);
    read_fixture(fo->expected64_file, &want_fo);
    double between = compare(&b, &want_so, "fo vs so reference");
    cr_assert_gt(between, 1e-3,
                 "first- and second-order meta-gradients agree (%g): second-order "
                 "terms missing",
                 between);
    cr_assert_lt(compare(&a, &want_so, "so"), 1e-9);
    cr_assert_lt(compare(&b, &want_fo, "fo"), 1e-9);
    tensorset_free(&a);
    tensorset_free(&b);
    tensorset_free(&want_so);
    tensorset_free(&want_fo);
    spec_free(&s1);
    spec_free(&s2);
}

/* ---- finite differences of the meta-loss (float64) ---- */

/* A spec whose eval graph reproduces the training meta-loss: same inner steps and lr. */
static void load_fd_spec(GraphSpec *spec, int steps, bool first_order) {
    FixtureCase c = {.n_way = 5,
                     .q_query = 1,
                     .inner_steps = steps,
                     .inner_lr = 0.4,
                     .first_order = first_order};
    load_seed_spec(spec, &c);
    spec->maml.eval.inner_steps = steps;
    spec->maml.eval.lr = spec->maml.inner.lr;
}

static TensorSet fd_inputs(void) {
    TensorSet in, batch;
    read_fixture("params_p5_bnpert.safetensors", &in);
    read_fixture("batch_so_T2_5w1s_q1_in1.safetensors", &batch);
    MamlError err;
    for (int i = 0; i < batch.n; i++)
        tensorset_add(&in, batch.items[i].name, batch.items[i].dtype, batch.items[i].shape,
                      batch.items[i].data, &err);
    tensorset_free(&batch);
    return in;
}

static double run_scalar(const Graph *g, const TensorSet *in, const char *name) {
    TensorSet out;
    tensorset_init(&out);
    MamlError err;
    cr_assert_eq(ref_run(g, PREC_F64, in, &out, &err), 0, "%s", err.message);
    double v = tensor_get(tensorset_find(&out, name), 0);
    tensorset_free(&out);
    return v;
}

/* The query loss with every task's weights frozen at theta - offset_t: the function whose
 * gradient first-order MAML computes (inner gradients held constant at their values). */
static void build_frozen_offset_loss(const GraphSpec *spec, Graph *g) {
    int64_t T = 2, Q = spec_query_size(spec);
    int *phi = calloc((size_t)spec->n_params, sizeof *phi);
    for (int p = 0; p < spec->n_params; p++) {
        const ParamSpec *ps = &spec->params[p];
        int theta = g_input(g, ps->name, INPUT_PARAM, DT_REAL, shape_make(ps->rank, ps->dims));
        phi[p] = layer_per_task(g, theta, T);
        char name[200];
        snprintf(name, sizeof name, "offset/%s", ps->name);
        int off = g_input(g, name, INPUT_DATA, DT_REAL, g->nodes[phi[p]].shape);
        phi[p] = g_sub(g, phi[p], off);
    }
    int x = g_input(g, "query_x", INPUT_DATA, DT_REAL, SHAPE(T, Q, 1, 28, 28));
    int y = g_input(g, "query_y", INPUT_DATA, DT_INT, SHAPE(T, Q));
    for (int l = 0; l < spec->n_layers; l++) {
        int w = -1, b = -1;
        for (int p = 0; p < spec->n_params; p++)
            if (spec->params[p].layer == l) *(spec->params[p].is_bias ? &b : &w) = phi[p];
        x = layer_forward(g, &spec->layers[l], x, w, b);
    }
    int loss = mean_over_tasks(g, loss_cross_entropy(g, x, y, REDUCE_MEAN, 1));
    graph_add_output(g, "meta_loss", loss);
    free(phi);
    MamlError err;
    cr_assert_eq(graph_status(g, &err), 0, "%s", err.message);
}

/* offset/NAME = theta - fast weights, from the eval graph's fast/NAME outputs. */
static void add_offsets(const GraphSpec *spec, const Graph *eval, TensorSet *in) {
    TensorSet out;
    tensorset_init(&out);
    MamlError err;
    cr_assert_eq(ref_run(eval, PREC_F64, in, &out, &err), 0, "%s", err.message);
    for (int p = 0; p < spec->n_params; p++) {
        char fast[200], off[200];
        snprintf(fast, sizeof fast, "fast/%s", spec->params[p].name);
        snprintf(off, sizeof off, "offset/%s", spec->params[p].name);
        const Tensor *f = tensorset_find(&out, fast);
        Tensor *o = tensorset_add(in, off, TENSOR_F64, f->shape, NULL, &err);
        /* looked up after the add, which may move the set's storage */
        const Tensor *theta = tensorset_find(in, spec->params[p].name);
        int64_t per = shape_numel(theta->shape);
        for (int64_t k = 0; k < shape_numel(f->shape); k++)
            tensor_set(o, k, tensor_get(theta, k % per) - tensor_get(f, k));
    }
    tensorset_free(&out);
}

/* One coordinate of every parameter tensor; under sanitizers (MAMLC_SANITIZED=1, set by
 * `make test-asan`, where the interpreter runs several times slower) every fourth tensor. The
 * plain run covers all of them. */
static int fd_tensor_stride(void) {
    return sanitized_run() ? 4 : 1;
}

/* |central difference - analytic| at coordinate k of parameter t, step 1e-6 (the fixtures'
 * README's advice near ReLU and max-pool kinks). */
static double fd_error_at(const Graph *loss_graph, TensorSet *in, Tensor *t, const Tensor *grad,
                          int64_t k) {
    double h = 1e-6, x0 = tensor_get(t, k);
    tensor_set(t, k, x0 + h);
    double up = run_scalar(loss_graph, in, "meta_loss");
    tensor_set(t, k, x0 - h);
    double down = run_scalar(loss_graph, in, "meta_loss");
    tensor_set(t, k, x0);
    return fabs((up - down) / (2 * h) - tensor_get(grad, k));
}

/* Compares d(meta_loss)/d(theta) of the meta-gradient graph with central differences of
 * `loss_graph` at a sample of coordinates of every parameter tensor. */
static void check_fd(int steps, bool first_order) {
    GraphSpec spec = {0};
    load_fd_spec(&spec, steps, first_order);
    TensorSet in = fd_inputs(), grads;
    Graph gg, eval, frozen;
    graph_init(&gg);
    graph_init(&eval);
    graph_init(&frozen);
    MamlError err;
    cr_assert_eq(maml_build(&spec, MAML_META_GRAD, 2, &gg, NULL, &err), 0, "%s", err.message);
    cr_assert_eq(maml_build(&spec, MAML_EVAL, 2, &eval, NULL, &err), 0, "%s", err.message);
    tensorset_init(&grads);
    cr_assert_eq(ref_run(&gg, PREC_F64, &in, &grads, &err), 0, "%s", err.message);
    const Graph *loss_graph = &eval;
    if (first_order) {
        build_frozen_offset_loss(&spec, &frozen);
        add_offsets(&spec, &eval, &in);
        loss_graph = &frozen;
    }
    double scale = global_grad_scale(&grads), worst = 0;
    for (int p = 0; p < spec.n_params; p++) {
        /* the parameters arrive as F32: widen so a step of 1e-6 is representable */
        const Tensor *theta = tensorset_find(&in, spec.params[p].name);
        int64_t n = shape_numel(theta->shape);
        double *wide = malloc((size_t)n * sizeof *wide);
        for (int64_t k = 0; k < n; k++) wide[k] = tensor_get(theta, k);
        Tensor *t = tensorset_add(&in, spec.params[p].name, TENSOR_F64, theta->shape, wide, &err);
        free(wide);
        char gname[200];
        snprintf(gname, sizeof gname, "grad/%s", spec.params[p].name);
        const Tensor *g = tensorset_find(&grads, gname);
        int64_t k = (int64_t)(((int64_t)p * 104729 + 7919) % n);
        if (p % fd_tensor_stride() == 0)
            worst = fmax(worst, fd_error_at(loss_graph, &in, t, g, k) / scale);
    }
    cr_log_info("FD %s-order, %d inner steps: max rel err %.3g", first_order ? "first" : "second",
                steps, worst);
    cr_expect_lt(worst, 1e-5, "meta-gradient vs finite differences: rel err %g", worst);
    graph_free(&gg);
    graph_free(&eval);
    graph_free(&frozen);
    tensorset_free(&in);
    tensorset_free(&grads);
    spec_free(&spec);
}

Test(maml_fd, second_order_one_step_matches_finite_differences) {
    check_fd(1, false);
}
Test(maml_fd, second_order_three_steps_matches_finite_differences) {
    check_fd(3, false);
}
Test(maml_fd, first_order_one_step_matches_finite_differences_with_frozen_inner_grads) {
    check_fd(1, true);
}
Test(maml_fd, first_order_three_steps_matches_finite_differences_with_frozen_inner_grads) {
    check_fd(3, true);
}

/* ---- learnable inner learning rates and the outer optimizers ---- */

static void load_overrides(GraphSpec *spec, const char **ov, int n) {
    MamlError err;
    cr_assert_eq(spec_load("graphs/omniglot_seed.yaml", ov, n, spec, &err), 0, "%s", err.message);
}

static void run_graph(const GraphSpec *spec, MamlGraphKind kind, const TensorSet *in,
                      TensorSet *out) {
    Graph g;
    graph_init(&g);
    MamlError err;
    cr_assert_eq(maml_build(spec, kind, 2, &g, NULL, &err), 0, "%s", err.message);
    tensorset_init(out);
    cr_assert_eq(ref_run(&g, PREC_F64, in, out, &err), 0, "%s", err.message);
    graph_free(&g);
}

Test(maml, learnable_inner_lr_at_its_initial_value_reproduces_the_fixed_lr_meta_gradient) {
    const char *ov[] = {"maml.inner.lr=learnable", "maml.inner.lr_init=0.4"};
    GraphSpec spec = {0};
    load_overrides(&spec, ov, 2);
    TensorSet in, out, want;
    read_fixture("params_p5_default.safetensors", &in);
    TensorSet batch;
    read_fixture("batch_so_T2_5w1s_q1_in1.safetensors", &batch);
    MamlError err;
    for (int i = 0; i < batch.n; i++)
        tensorset_add(&in, batch.items[i].name, batch.items[i].dtype, batch.items[i].shape,
                      batch.items[i].data, &err);
    int n_lr = 0;
    for (int l = 0; l < spec.n_layers; l++) {
        if (!spec.layers[l].name[0]) continue;
        char name[200];
        snprintf(name, sizeof name, "inner_lr.%s.step0", spec.layers[l].name);
        double lr = 0.4;
        tensorset_add(&in, name, TENSOR_F64, shape_scalar(), &lr, &err);
        n_lr++;
    }
    run_graph(&spec, MAML_META_GRAD, &in, &out);
    read_fixture("expected64_so_T2_5w1s_q1_in1.safetensors", &want);
    cr_assert_lt(compare(&out, &want, "learnable lr"), 1e-9);
    int n_lr_grads = 0;
    for (int i = 0; i < out.n; i++) n_lr_grads += !strncmp(out.items[i].name, "grad/inner_lr.", 14);
    cr_assert_eq(n_lr_grads, n_lr, "one gradient per learnable lr expected");
    /* d meta_loss / d lr by central differences, on the eval graph with the same single step */
    spec.maml.eval.inner_steps = 1;
    Graph eval;
    graph_init(&eval);
    cr_assert_eq(maml_build(&spec, MAML_EVAL, 2, &eval, NULL, &err), 0, "%s", err.message);
    for (const char **name =
             (const char *[]){"inner_lr.conv2.conv2d.step0", "inner_lr.logits.step0", NULL};
         *name; name++) {
        Tensor *t = tensorset_find(&in, *name);
        char gname[200];
        snprintf(gname, sizeof gname, "grad/%s", *name);
        double err_abs = fd_error_at(&eval, &in, t, tensorset_find(&out, gname), 0);
        cr_log_info("learnable lr %s: |fd - analytic| = %.3g", *name, err_abs);
        cr_expect_lt(err_abs, 1e-6 * fmax(1.0, fabs(tensor_get(tensorset_find(&out, gname), 0))),
                     "%s: finite differences disagree by %g", *name, err_abs);
    }
    graph_free(&eval);
    tensorset_free(&in);
    tensorset_free(&batch);
    tensorset_free(&out);
    tensorset_free(&want);
    spec_free(&spec);
}

/* The train step's update against torch.optim.Adam's formula (or plain SGD) applied by hand to
 * the meta-gradient graph's output, at step 3 with non-zero moments. */
static void check_outer_update(const char *optimizer) {
    char opt[64];
    snprintf(opt, sizeof opt, "maml.outer.optimizer=%s", optimizer);
    const char *ov[] = {opt, "maml.inner.lr=0.4"};
    GraphSpec spec = {0};
    load_overrides(&spec, ov, 2);
    TensorSet in = fd_inputs(), grads, step;
    MamlError err;
    bool adam = strcmp(optimizer, "adam") == 0;
    for (int p = 0; adam && p < spec.n_params; p++) {
        const Tensor *theta = tensorset_find(&in, spec.params[p].name);
        Shape s = theta->shape;
        char mn[200], vn[200];
        snprintf(mn, sizeof mn, "adam/m/%s", spec.params[p].name);
        snprintf(vn, sizeof vn, "adam/v/%s", spec.params[p].name);
        tensorset_add(&in, mn, TENSOR_F64, s, NULL, &err);
        tensorset_add(&in, vn, TENSOR_F64, s, NULL, &err);
        /* looked up after both adds, which may move the set's storage */
        Tensor *m = tensorset_find(&in, mn), *v = tensorset_find(&in, vn);
        for (int64_t k = 0; k < shape_numel(s); k++) {
            tensor_set(m, k, 1e-3 * sin((double)k + p));
            tensor_set(v, k, 1e-6 * (1.5 + cos((double)k * 0.7 + p)));
        }
    }
    double t = 3;
    if (adam) tensorset_add(&in, "adam/step", TENSOR_F64, shape_scalar(), &t, &err);
    run_graph(&spec, MAML_META_GRAD, &in, &grads);
    run_graph(&spec, MAML_TRAIN_STEP, &in, &step);
    double lr = spec.maml.outer.lr, b1 = spec.maml.outer.beta1, b2 = spec.maml.outer.beta2;
    double eps = spec.maml.outer.eps, worst = 0;
    for (int p = 0; p < spec.n_params; p++) {
        const char *name = spec.params[p].name;
        char gn[200], mn[200], vn[200];
        snprintf(gn, sizeof gn, "grad/%s", name);
        snprintf(mn, sizeof mn, "adam/m/%s", name);
        snprintf(vn, sizeof vn, "adam/v/%s", name);
        const Tensor *theta = tensorset_find(&in, name), *g = tensorset_find(&grads, gn);
        const Tensor *updated = tensorset_find(&step, name);
        cr_assert(updated, "the train step does not output '%s'", name);
        for (int64_t k = 0; k < shape_numel(theta->shape); k++) {
            double gk = tensor_get(g, k), want;
            if (adam) {
                double m = b1 * tensor_get(tensorset_find(&in, mn), k) + (1 - b1) * gk;
                double v = b2 * tensor_get(tensorset_find(&in, vn), k) + (1 - b2) * gk * gk;
                double denom = sqrt(v) / sqrt(1 - pow(b2, t)) + eps;
                want = tensor_get(theta, k) - lr / (1 - pow(b1, t)) * m / denom;
                worst = fmax(worst, fabs(tensor_get(tensorset_find(&step, mn), k) - m));
            } else {
                want = tensor_get(theta, k) - lr * gk;
            }
            worst = fmax(worst, fabs(tensor_get(updated, k) - want));
        }
    }
    cr_log_info("%s update: max abs err %.3g", optimizer, worst);
    cr_expect_lt(worst, 1e-12, "%s update differs from the formula by %g", optimizer, worst);
    tensorset_free(&in);
    tensorset_free(&grads);
    tensorset_free(&step);
    spec_free(&spec);
}

Test(maml, train_step_applies_pytorch_adam_with_bias_correction) {
    check_outer_update("adam");
}

Test(maml, train_step_applies_sgd) {
    check_outer_update("sgd");
}
