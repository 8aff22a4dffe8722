/* Kernel lowering, memory plan, C code generation and the cpu backend, judged against ref.
 *
 * cpu equals ref: in float64 within 1e-12 relative per tensor; in float32 within 1e-5 relative,
 * or within 3x of the float32 reference's own rounding error (ref f32 against ref f64) where that
 * is larger. A tensor's relative error is max|got - want| / max|want|, where tensors whose exact
 * value is zero up to rounding (below 1e-9 of the largest tensor of their group: grad/, adam/m/,
 * ...), like the conv-bias gradients batch norm cancels exactly, are measured against that
 * group's scale, since only rounding noise is left in them.
 *
 * Compiled kernels are cached in $MAMLC_CACHE, default build/test-cache (so a second run, and the
 * ASan run after the plain one, compile nothing); the cache tests use fresh directories. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "codegen.h"
#include "compare.h"
#include "cpu_backend.h"
#include "kernel.h"
#include "maml.h"
#include "memplan.h"
#include "ref.h"
#include "safetensors.h"
#include "spec.h"
#include "test_graphs.h"
#include "test_util.h"

/* ---- helpers ---- */

static const char *test_cache(void) {
    const char *env = getenv("MAMLC_CACHE");
    return env && *env ? env : "build/test-cache";
}

static uint64_t lcg_state = 12345;

static double rnd(void) { /* uniform in [-1, 1) */
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* Fills every graph input with deterministic values that suit its name. */
static void random_inputs(const Graph *g, TensorSet *set, int n_way) {
    MamlError err;
    tensorset_init(set);
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT) continue;
        Tensor *t = tensorset_add(set, n->name, n->dtype == DT_REAL ? TENSOR_F64 : TENSOR_I64,
                                  n->shape, NULL, &err);
        cr_assert(t, "%s", err.message);
        for (int64_t k = 0, c = shape_numel(n->shape); k < c; k++) {
            double v = rnd();
            if (n->dtype != DT_REAL)
                v = (double)((k * 7 + 3) % n_way);
            else if (strstr(n->name, "adam/v/"))
                v = 1e-4 * (v + 1.5);
            else if (strstr(n->name, "adam/step"))
                v = 3;
            else if (strstr(n->name, "pos"))
                v = v + 1.5;
            else if (strstr(n->name, "tie"))
                v = (double)((k * 5) % 3);
            else if (strstr(n->name, "_x"))
                v = 2 * v;
            else
                v = 0.5 * v;
            tensor_set(t, k, v);
        }
    }
}

/* Checks got against ref64 (and, in float32, the allowance from ref32) with runtime/compare.h:
 * bound 1e-12 in float64, 1e-5 or 3x ref32's error in float32; tensors over their bound are
 * printed. Returns the worst ratio of error to bound. */
static double check_outputs(const TensorSet *got, const TensorSet *ref64, const TensorSet *ref32,
                            const char *label) {
    CompareSummary s;
    int bad = compare_sets(got, ref64, ref32, ref32 ? 1e-5 : 1e-12, label, stderr, false, &s);
    cr_expect_eq(bad, 0, "%s: %d of %d tensors over their bound or missing; worst '%s' %.3g > %.3g",
                 label, bad, s.n, s.worst_name, s.worst_err, s.worst_bound);
    return s.worst;
}

static Backend *open_cpu(const Graph *g, Precision prec, bool fuse, const char *cache) {
    CpuOptions opt = {.no_fuse = !fuse, .cache_dir = cache};
    Backend *b = NULL;
    MamlError err;
    cr_assert_eq(cpu_backend_open(g, prec, &opt, &b, &err), 0, "%s", err.message);
    return b;
}

/* Runs g on cpu (fused, unfused, or both: fuse < 0) in both precisions and checks it against
 * ref. */
static void cpu_matches_ref(const Graph *g, const TensorSet *inputs, int fuse_only,
                            const char *label) {
    MamlError err;
    TensorSet r64, r32;
    tensorset_init(&r64);
    tensorset_init(&r32);
    cr_assert_eq(ref_run(g, PREC_F64, inputs, &r64, &err), 0, "%s", err.message);
    cr_assert_eq(ref_run(g, PREC_F32, inputs, &r32, &err), 0, "%s", err.message);
    for (int fuse = 0; fuse < 2; fuse++)
        for (int f64 = 0; f64 < 2 && (fuse_only < 0 || fuse == fuse_only); f64++) {
            Backend *b = open_cpu(g, f64 ? PREC_F64 : PREC_F32, fuse, test_cache());
            TensorSet out;
            tensorset_init(&out);
            cr_assert_eq(backend_run(b, inputs, &out, &err), 0, "%s", err.message);
            char what[160];
            snprintf(what, sizeof what, "%s (%s, %s)", label, fuse ? "fused" : "unfused",
                     f64 ? "f64" : "f32");
            double worst = check_outputs(&out, &r64, f64 ? NULL : &r32, what);
            cr_log_info("%s: worst error/bound %.3g", what, worst);
            tensorset_free(&out);
            backend_close(b);
        }
    tensorset_free(&r64);
    tensorset_free(&r32);
}

/* ---- every primitive on its own (each result is a graph output, so it has its own kernel),
 * plus a few chains that exercise fusion: softmax, a batch-norm style epilogue ---- */

/* Elementwise operations, reductions, views and two fused chains. */
static void add_loop_ops(Graph *g) {
    add_elementwise_ops(g);
    Shape s = SHAPE(2, 3, 4, 5);
    int x = graph_find_input(g, "x"), ta = graph_find_input(g, "tie_a");
    out_node(g, "reduce_sum_13", g_reduce(g, OP_REDUCE_SUM, x, 0xa));
    out_node(g, "reduce_sum_all", g_reduce(g, OP_REDUCE_SUM, x, 0xf));
    out_node(g, "reduce_max_02", g_reduce(g, OP_REDUCE_MAX, x, 0x5));
    out_node(g, "reduce_max_3", g_reduce(g, OP_REDUCE_MAX, ta, 0x8));
    /* kept axes between reduced ones (the C renderer's interleaved loops): innermost reduced
     * (partial sums per run) and innermost kept (the accumulator array updated directly) */
    out_node(g, "reduce_max_13", g_reduce(g, OP_REDUCE_MAX, ta, 0xa));
    out_node(g, "reduce_sum_1", g_reduce(g, OP_REDUCE_SUM, x, 0x2));
    out_node(g, "reduce_max_1", g_reduce(g, OP_REDUCE_MAX, ta, 0x2));
    /* a sum over the leading axis that keeps a long innermost one: in blocks (the last short) */
    int cols = g_input(g, "cols", INPUT_DATA, DT_REAL, SHAPE(3, 1100));
    out_node(g, "reduce_sum_columns", g_reduce(g, OP_REDUCE_SUM, cols, 0x1));
    out_node(g, "reshape", g_reshape(g, x, SHAPE(6, 20)));
    out_node(g, "permute", g_permute(g, x, (int[]){2, 0, 3, 1}));
    out_node(g, "stop_grad", g_stop_grad(g, x));
    out_node(g, "const", g_const(g, 1.5, SHAPE(2, 3)));
    int labels = g_input(g, "labels", INPUT_DATA, DT_INT, SHAPE(2, 3));
    out_node(g, "one_hot", g_one_hot(g, labels, 4));
    /* chains: softmax over the last axis, and rsqrt(mean(x^2) + eps) * x */
    Shape r = SHAPE(2, 3, 4, 1);
    int m = g_broadcast(g, g_reduce(g, OP_REDUCE_MAX, x, 0x8), s);
    int e = g_unary(g, OP_EXP, g_sub(g, x, m));
    out_node(g, "softmax", g_div(g, e, g_broadcast(g, g_reduce(g, OP_REDUCE_SUM, e, 0x8), s)));
    int ms = g_scale(g, g_reduce(g, OP_REDUCE_SUM, g_mul(g, x, x), 0x8), 0.2);
    int rs = g_unary(g, OP_RSQRT, g_add(g, ms, g_const(g, 1e-5, r)));
    out_node(g, "rms_norm", g_mul(g, x, g_broadcast(g, rs, s)));
}

static void build_primitives(Graph *g) {
    graph_init(g);
    add_loop_ops(g);
    add_matmul_ops(g, 2, 3, 4, 5);
    add_conv_ops(g, "", 2, 4);
    add_pool_ops(g);
    MamlError err;
    cr_assert_eq(graph_status(g, &err), 0, "%s", err.message);
}

Test(codegen, every_primitive_matches_ref) {
    Graph g;
    build_primitives(&g);
    TensorSet in;
    random_inputs(&g, &in, 4);
    cpu_matches_ref(&g, &in, -1, "primitives");
    tensorset_free(&in);
    graph_free(&g);
}

/* ---- the shipped graphs ---- */

static void load_graph(const char *path, int tasks, MamlGraphKind kind, GraphSpec *spec, Graph *g) {
    char set[64];
    snprintf(set, sizeof set, "maml.meta_batch=%d", tasks);
    const char *ov[1] = {set};
    MamlError err;
    cr_assert_eq(spec_load(path, ov, 1, spec, &err), 0, "%s", err.message);
    graph_init(g);
    cr_assert_eq(maml_build(spec, kind, tasks, g, NULL, &err), 0, "%s", err.message);
}

static void read_fixture(const char *file, TensorSet *set) {
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/pytorch_maml/%s", file);
    MamlError err;
    tensorset_init(set);
    cr_assert_eq(safetensors_read(shared_path(1, rel), set, &err), 0, "%s", err.message);
}

/* The seed's meta-gradient on PyTorch's fixture weights and tasks (fused or not: two tests, so
 * they compile in parallel). */
static void seed_meta_gradient(int fuse) {
    GraphSpec spec = {0};
    Graph g;
    load_graph("graphs/omniglot_seed.yaml", 2, MAML_META_GRAD, &spec, &g);
    TensorSet in, batch;
    read_fixture("params_p5_default.safetensors", &in);
    read_fixture("batch_so_T2_5w1s_q1_in1.safetensors", &batch);
    MamlError err;
    for (int i = 0; i < batch.n; i++) {
        const Tensor *t = &batch.items[i];
        cr_assert(tensorset_add(&in, t->name, t->dtype, t->shape, t->data, &err), "%s",
                  err.message);
    }
    tensorset_free(&batch);
    cpu_matches_ref(&g, &in, fuse, "omniglot_seed meta-gradient T=2");
    tensorset_free(&in);
    graph_free(&g);
    spec_free(&spec);
}

Test(codegen, seed_meta_gradient_fused_matches_ref) {
    seed_meta_gradient(1);
}

Test(codegen, seed_meta_gradient_unfused_matches_ref) {
    seed_meta_gradient(0);
}

Test(codegen, sinusoid_train_step_matches_ref) {
    GraphSpec spec = {0};
    Graph g;
    load_graph("graphs/sinusoid.yaml", 4, MAML_TRAIN_STEP, &spec, &g);
    TensorSet in;
    random_inputs(&g, &in, 1);
    cpu_matches_ref(&g, &in, -1, "sinusoid train step T=4");
    tensorset_free(&in);
    graph_free(&g);
    spec_free(&spec);
}

/* ---- cpu against ref over 10 training steps, and on PyTorch's fixtures ----
 *
 * The bar: cpu in float32 equals ref in float64 within 1e-5 per tensor, or within 3x of
 * ref in float32's own error where float32 rounding is larger, on the meta-gradient (the outputs
 * of step 1: adam/m starts at zero, so after step 1 it is 0.1 x the meta-gradient) and on the
 * parameters and Adam state after 10 training steps, each run feeding its own outputs back
 * (runtime/compare.h). ref is slow (one primitive at a time), so under the sanitizers the long
 * graphs run fewer steps, and the log line says so. */

typedef struct {
    StepRun run[4]; /* ref f64, ref f32, cpu fused, cpu unfused (all float32 but the first) */
} SideBySide;

/* Runs `steps` steps of g from start on the four: the two refs side by side (one thread each),
 * then each cpu run alone, so OpenMP's threads do not fight the refs for the cores. */
static void run_side_by_side(const Graph *g, const TensorSet *start, int steps, SideBySide *s) {
    MamlError err;
    char why[512];
    memset(s, 0, sizeof *s);
    const char *labels[4] = {"ref f64", "ref f32", "cpu fused", "cpu unfused"};
    for (int i = 0; i < 4; i++) {
        s->run[i].label = labels[i];
        if (i < 2)
            cr_assert_eq(backend_open("ref", g, i ? PREC_F32 : PREC_F64, &s->run[i].backend, why,
                                      sizeof why, &err),
                         0, "%s", err.message);
        else
            s->run[i].backend = open_cpu(g, PREC_F32, i == 2, test_cache());
    }
    cr_assert_eq(compare_steps_start(s->run, 4, start, steps, &err), 0, "%s", err.message);
    cr_assert_eq(compare_steps_go(s->run, 2, steps, &err), 0, "%s", err.message);
    for (int i = 2; i < 4; i++)
        cr_assert_eq(compare_steps_go(&s->run[i], 1, steps, &err), 0, "%s", err.message);
}

static void side_by_side_free(SideBySide *s) {
    for (int i = 0; i < 4; i++) backend_close(s->run[i].backend);
    compare_steps_free(s->run, 4);
}

/* The meta-gradient part of step 1's outputs, a view sharing their tensors (free only .items):
 * meta_loss, and adam/m, which starts at zero and so is 0.1 x the meta-gradient after step 1.
 * The other outputs of step 1 are left out: Adam's first update is lr x g / (|g| + eps), about
 * lr x sign(g), so a gradient element that is zero up to rounding flips a parameter by 2 lr in
 * any float32 run; the 10-step comparison covers the parameters. Fixture outputs (meta_loss,
 * meta_acc, grad/) are all kept. */
static TensorSet meta_gradient_view(const TensorSet *out) {
    TensorSet v;
    tensorset_init(&v);
    v.items = calloc((size_t)out->n + 1, sizeof *v.items);
    cr_assert(v.items);
    bool train_step = false; /* a training step's outputs, not a meta-gradient graph's */
    for (int i = 0; i < out->n; i++) train_step |= !strncmp(out->items[i].name, "adam/m/", 7);
    for (int i = 0; i < out->n; i++) {
        const char *name = out->items[i].name;
        if (!train_step || !strncmp(name, "adam/m/", 7) || !strcmp(name, "meta_loss"))
            v.items[v.n++] = out->items[i];
    }
    return v;
}

/* Judges cpu run i's meta-gradient (after: false) or final state (true) against the refs;
 * returns the summary. */
static CompareSummary judge(const SideBySide *s, int i, bool after, const char *label) {
    const StepRun *r = s->run;
    CompareSummary sum;
    TensorSet got = meta_gradient_view(&r[i].first), want = meta_gradient_view(&r[0].first),
              ref32 = meta_gradient_view(&r[1].first);
    int bad = after ? compare_sets(&r[i].state, &r[0].state, &r[1].state, 1e-5, label, stderr,
                                   false, &sum)
                    : compare_sets(&got, &want, &ref32, 1e-5, label, stderr, false, &sum);
    free(got.items);
    free(want.items);
    free(ref32.items);
    cr_expect_eq(bad, 0, "%s: %d of %d tensors over their bound or missing; worst '%s' %.3g > %.3g",
                 label, bad, sum.n, sum.worst_name, sum.worst_err, sum.worst_bound);
    return sum;
}

/* The graph at `tasks` tasks, `steps` training steps (`sanitized_steps` under the sanitizers)
 * from compare_start_state's start (noise images or bench_inputs' own); cpu fused and unfused
 * against ref. */
static void cpu_equals_ref_after_steps(const char *path, int tasks, int sanitized_steps,
                                       bool noise) {
    int steps = sanitized_run() ? sanitized_steps : 10;
    GraphSpec spec = {0};
    Graph g;
    load_graph(path, tasks, MAML_TRAIN_STEP, &spec, &g);
    TensorSet start;
    MamlError err;
    cr_assert_eq(compare_start_state(&spec, &g, 7, noise, &start, &err), 0, "%s", err.message);
    SideBySide s;
    run_side_by_side(&g, &start, steps, &s);
    for (int i = 2; i < 4; i++) {
        char l1[256], ln[256];
        snprintf(l1, sizeof l1, "%s T=%d %s, meta-gradient (step 1)", path, tasks, s.run[i].label);
        snprintf(ln, sizeof ln, "%s T=%d %s, after %d steps%s", path, tasks, s.run[i].label, steps,
                 steps < 10 ? " (not 10: ref is slow under the sanitizers)" : "");
        CompareSummary a = judge(&s, i, false, l1), b = judge(&s, i, true, ln);
        cr_log_info("%s: worst error/bound %.3g ('%s' %.3g, bound %.3g); %s: %.3g ('%s')", ln,
                    b.worst, b.worst_name, b.worst_err, b.worst_bound, l1, a.worst, a.worst_name);
    }
    cr_log_info("%s: seconds ref f64 %.1f, ref f32 %.1f, cpu fused %.1f, unfused %.1f", path,
                s.run[0].seconds, s.run[1].seconds, s.run[2].seconds, s.run[3].seconds);
    side_by_side_free(&s);
    tensorset_free(&start);
    graph_free(&g);
    spec_free(&spec);
}

/* bench_inputs' own images: from noise images float32 itself (ref and cpu alike) is 7.5e-4 off
 * float64 on the seed's first meta-loss and ~15% on its meta-gradient, which would leave the
 * bound (3x ref f32's error) with nothing to hold; from these it is ~1e-7 and 2e-5. */
Test(codegen, cpu_equals_ref_after_10_training_steps_seed, .timeout = 900) {
    cpu_equals_ref_after_steps("graphs/omniglot_seed.yaml", 2, 2, false);
}

Test(codegen, cpu_equals_ref_after_10_training_steps_5w1s, .timeout = 900) {
    cpu_equals_ref_after_steps("graphs/omniglot_5w1s.yaml", 2, 3, true);
}

/* 20-way with 5 inner steps: one task, as ref takes about 9 s a step even then. Under the
 * sanitizers one step took 125 s (ref twice, at a quarter of its speed) and ran no kernel code
 * that 5w1s (same layers, strided, no pooling) does not run there too: left to the plain run. */
Test(codegen, cpu_equals_ref_after_10_training_steps_20w1s, .timeout = 900) {
    if (sanitized_run()) cr_skip_test("covered by the plain run and by 5w1s under the sanitizers");
    cpu_equals_ref_after_steps("graphs/omniglot_20w1s.yaml", 1, 1, true);
}

Test(codegen, cpu_equals_ref_after_10_training_steps_sinusoid, .timeout = 900) {
    cpu_equals_ref_after_steps("graphs/sinusoid.yaml", 2, 10, true);
}

/* One case of fixtures/pytorch_maml/manifest.yaml: its files and the settings it needs. */
typedef struct {
    char name[64], params[128], batch[128];
    int T, n_way, q_query, inner_steps;
    bool first_order;
    char inner_lr[32];
} Fixture;

static void fixture_field(Fixture *f, const char *key, const char *v) {
    if (!strcmp(key, "name"))
        snprintf(f->name, sizeof f->name, "%s", v);
    else if (!strcmp(key, "params_file"))
        snprintf(f->params, sizeof f->params, "%s", v);
    else if (!strcmp(key, "batch_file"))
        snprintf(f->batch, sizeof f->batch, "%s", v);
    else if (!strcmp(key, "inner_lr"))
        snprintf(f->inner_lr, sizeof f->inner_lr, "%s", v);
    else if (!strcmp(key, "T"))
        f->T = atoi(v);
    else if (!strcmp(key, "n_way"))
        f->n_way = atoi(v);
    else if (!strcmp(key, "q_query"))
        f->q_query = atoi(v);
    else if (!strcmp(key, "inner_steps"))
        f->inner_steps = atoi(v);
    else if (!strcmp(key, "first_order"))
        f->first_order = !strcmp(v, "true");
}

/* The scalar fields of one case's mapping. */
static void fixture_case(yaml_document_t *doc, yaml_node_t *c, Fixture *f) {
    memset(f, 0, sizeof *f);
    for (yaml_node_pair_t *q = c->data.mapping.pairs.start; q < c->data.mapping.pairs.top; q++) {
        yaml_node_t *k = yaml_document_get_node(doc, q->key),
                    *v = yaml_document_get_node(doc, q->value);
        if (k->type == YAML_SCALAR_NODE && v->type == YAML_SCALAR_NODE)
            fixture_field(f, (char *)k->data.scalar.value, (char *)v->data.scalar.value);
    }
}

/* Reads the manifest's case list; returns how many (at most max). */
static int read_fixtures(Fixture *cases, int max) {
    FILE *file = fopen(shared_path(0, "fixtures/pytorch_maml/manifest.yaml"), "r");
    cr_assert(file, "cannot open %s", shared_path(0, "fixtures/pytorch_maml/manifest.yaml"));
    yaml_parser_t p;
    yaml_document_t doc;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_file(&p, file);
    cr_assert(yaml_parser_load(&p, &doc), "manifest.yaml does not parse");
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int n = 0;
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key),
                    *v = yaml_document_get_node(&doc, pr->value);
        if (strcmp((char *)k->data.scalar.value, "cases") != 0 || v->type != YAML_SEQUENCE_NODE)
            continue;
        for (yaml_node_item_t *it = v->data.sequence.items.start;
             it < v->data.sequence.items.top && n < max; it++)
            fixture_case(&doc, yaml_document_get_node(&doc, *it), &cases[n++]);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    fclose(file);
    return n;
}

/* The seed's meta-gradient graph with the case's settings, and its inputs (params + batch). */
static void fixture_graph(const Fixture *f, GraphSpec *spec, Graph *g, TensorSet *in) {
    char sets[7][64];
    snprintf(sets[0], 64, "maml.n_way=%d", f->n_way);
    snprintf(sets[1], 64, "maml.q_query=%d", f->q_query);
    snprintf(sets[2], 64, "maml.inner.steps=%d", f->inner_steps);
    snprintf(sets[3], 64, "maml.inner.lr=%s", f->inner_lr);
    snprintf(sets[4], 64, "maml.inner.first_order=%s", f->first_order ? "true" : "false");
    snprintf(sets[5], 64, "maml.k_shot=1");
    snprintf(sets[6], 64, "maml.meta_batch=%d", f->T);
    const char *ov[7] = {sets[0], sets[1], sets[2], sets[3], sets[4], sets[5], sets[6]};
    MamlError err;
    cr_assert_eq(spec_load("graphs/omniglot_seed.yaml", ov, 7, spec, &err), 0, "%s", err.message);
    graph_init(g);
    cr_assert_eq(maml_build(spec, MAML_META_GRAD, f->T, g, NULL, &err), 0, "%s", err.message);
    TensorSet batch;
    read_fixture(f->params, in);
    read_fixture(f->batch, &batch);
    for (int i = 0; i < batch.n; i++) {
        const Tensor *t = &batch.items[i];
        cr_assert(tensorset_add(in, t->name, t->dtype, t->shape, t->data, &err), "%s", err.message);
    }
    tensorset_free(&batch);
}

/* The meta-gradient (and meta_loss, meta_acc) of cases [first, last) of the manifest. */
static void cpu_equals_ref_on_fixtures(int first, int last) {
    Fixture cases[16];
    int n = read_fixtures(cases, 16);
    cr_assert_gt(n, 0, "no fixture cases");
    if (sanitized_run() && last > first + 1) {
        cr_log_info("fixture cases %d to %d: only case %d under the sanitizers (ref is slow there; "
                    "the plain run covers them all)",
                    first, last - 1, first);
        last = first + 1;
    }
    for (int c = first; c < last && c < n; c++) {
        GraphSpec spec = {0};
        Graph g;
        TensorSet in;
        fixture_graph(&cases[c], &spec, &g, &in);
        SideBySide s;
        run_side_by_side(&g, &in, 1, &s);
        for (int i = 2; i < 4; i++) {
            char label[160];
            snprintf(label, sizeof label, "fixture %s, %s, meta-gradient", cases[c].name,
                     s.run[i].label);
            CompareSummary a = judge(&s, i, false, label);
            cr_log_info("%s: worst error/bound %.3g ('%s' %.3g, bound %.3g)", label, a.worst,
                        a.worst_name, a.worst_err, a.worst_bound);
        }
        side_by_side_free(&s);
        tensorset_free(&in);
        graph_free(&g);
        spec_free(&spec);
    }
}

/* Two tests, so that the cases run two at a time: the first three manifest cases, then the rest
 * (every case the manifest lists is covered). */
Test(codegen, cpu_equals_ref_on_meta_gradient_of_pytorch_fixtures_0_to_2, .timeout = 900) {
    cpu_equals_ref_on_fixtures(0, 3);
}

Test(codegen, cpu_equals_ref_on_meta_gradient_of_pytorch_fixtures_3_on, .timeout = 900) {
    cpu_equals_ref_on_fixtures(3, 16);
}

/* ---- fusion and the memory plan (no compiler needed) ---- */

Test(codegen, fusion_cuts_kernels_and_plan_stays_near_bound) {
    GraphSpec spec = {0};
    Graph g;
    load_graph("graphs/omniglot_seed.yaml", 2, MAML_TRAIN_STEP, &spec, &g);
    KernelProgram fused, unfused;
    MemPlan mf, mu;
    MamlError err;
    cr_assert_eq(kernels_lower(&g, true, &fused, &err), 0, "%s", err.message);
    cr_assert_eq(kernels_lower(&g, false, &unfused, &err), 0, "%s", err.message);
    cr_assert_eq(memplan_build(&fused, 4, &mf, &err), 0, "%s", err.message);
    cr_assert_eq(memplan_build(&unfused, 4, &mu, &err), 0, "%s", err.message);
    cr_log_info("seed train step T=2: %d nodes (%d live), %d kernels fused, %d unfused", g.n_nodes,
                fused.n_live_nodes, fused.n_kernels, unfused.n_kernels);
    cr_expect_lt(fused.n_kernels * 3, g.n_nodes, "fused: %d kernels for %d nodes", fused.n_kernels,
                 g.n_nodes);
    cr_expect_lt(fused.n_kernels * 2, unfused.n_kernels, "fused %d vs unfused %d kernels",
                 fused.n_kernels, unfused.n_kernels);
    const MemPlan *plans[2] = {&mf, &mu};
    for (int i = 0; i < 2; i++) {
        const MemPlan *m = plans[i];
        cr_log_info("arena %lld bytes, intermediates %lld, bound %lld (%.3fx)",
                    (long long)m->arena_bytes, (long long)m->temp_bytes, (long long)m->lower_bound,
                    (double)m->arena_bytes / (double)m->lower_bound);
        cr_expect_leq((double)m->arena_bytes, 1.25 * (double)m->lower_bound);
        cr_expect_lt(m->arena_bytes, m->temp_bytes);
    }
    /* no two buffers alive at once share bytes, except an in-place pair */
    for (int a = 0; a < fused.n_bufs; a++)
        for (int b = a + 1; b < fused.n_bufs; b++) {
            bool live = mf.first[a] <= mf.last[b] && mf.first[b] <= mf.last[a];
            bool inplace = mf.inplace[b] == a || mf.inplace[a] == b;
            cr_assert(!(live && !inplace && memplan_overlap(&mf, a, b)),
                      "buffers %d and %d overlap while both live", a, b);
        }
    memplan_free(&mf);
    memplan_free(&mu);
    kernel_program_free(&fused);
    kernel_program_free(&unfused);
    graph_free(&g);
    spec_free(&spec);
}

/* The blocks a backend copies in one go (memplan.h): the inputs from 0, the batch first; the
 * outputs at outputs_at; each updated input and its output at the same place in their blocks. */
Test(codegen, plan_keeps_inputs_and_outputs_in_blocks_with_the_feedback_lined_up) {
    GraphSpec spec = {0};
    Graph g;
    load_graph("graphs/omniglot_seed.yaml", 2, MAML_TRAIN_STEP, &spec, &g);
    KernelProgram p;
    MemPlan m;
    MamlError err;
    cr_assert_eq(kernels_lower(&g, true, &p, &err), 0, "%s", err.message);
    cr_assert_eq(memplan_build(&p, 4, &m, &err), 0, "%s", err.message);
    int64_t inputs = 0, data = 0, outputs = 0;
    int fed_back = 0;
    for (int b = 0; b < p.n_bufs; b++) {
        const KBuffer *kb = &p.bufs[b];
        if (kb->kind == BUF_INPUT) {
            inputs += m.bytes[b], data += kb->is_data ? m.bytes[b] : 0;
            cr_assert(m.offset[b] + m.bytes[b] <= m.input_bytes, "input %s", kb->name);
            cr_assert_eq(kb->is_data, m.offset[b] < m.data_bytes, "%s: batch first", kb->name);
        } else if (kb->is_output) {
            outputs += m.bytes[b];
            cr_assert(m.offset[b] >= m.outputs_at &&
                      m.offset[b] + m.bytes[b] <= m.outputs_at + m.outputs_bytes);
        } else {
            cr_assert(m.offset[b] >= m.outputs_at + m.outputs_bytes, "temps after both blocks");
        }
    }
    cr_assert_eq(inputs, m.input_bytes);
    cr_assert_eq(data, m.data_bytes);
    cr_assert(data > 0);
    cr_assert_eq(outputs, m.outputs_bytes);
    cr_assert_eq(m.outputs_at, m.input_bytes);
    for (int o = 0; o < p.n_outputs; o++) {
        int w = p.outputs[o].buf, in = -1;
        for (int b = 0; b < p.n_bufs; b++)
            if (p.bufs[b].kind == BUF_INPUT && !strcmp(p.bufs[b].name, p.outputs[o].name)) in = b;
        if (in < 0) continue;
        fed_back++;
        cr_assert_eq(m.offset[w] - m.outputs_at, m.offset[in] - m.data_bytes, "%s lines up",
                     p.outputs[o].name);
        cr_assert(m.offset[w] - m.outputs_at + m.bytes[w] <= m.feedback_bytes);
    }
    int params = 0;
    for (int i = 0; i < g.n_nodes; i++)
        params += g.nodes[i].op == OP_INPUT && g.nodes[i].input_kind == INPUT_PARAM;
    cr_assert_eq(fed_back, 3 * params, "%d updated: every parameter and its two Adam moments",
                 fed_back);
    memplan_free(&m);
    kernel_program_free(&p);
    graph_free(&g);
    spec_free(&spec);
}

/* Kernels that read only what earlier kernels (or the inputs) wrote, each buffer written once: the
 * order survives kernels storing fused outputs, sibling kernels joining an earlier one and maps
 * joining the reduction after them (whose inner stores write every point of the full space). */
static void assert_kernel_order(const char *path, int *multi_store, int *multi_reduce,
                                int *inner_store) {
    GraphSpec spec = {0};
    Graph g;
    load_graph(path, 2, MAML_TRAIN_STEP, &spec, &g);
    KernelProgram p;
    MamlError err;
    cr_assert_eq(kernels_lower(&g, true, &p, &err), 0, "%s", err.message);
    bool *written = calloc((size_t)p.n_bufs + 1, sizeof *written);
    for (int b = 0; b < p.n_bufs; b++) written[b] = p.bufs[b].kind == BUF_INPUT;
    int bufs[256];
    for (int i = 0; i < p.n_kernels; i++) {
        const Kernel *k = &p.kernels[i];
        for (int q = 0, n = kernel_reads(k, bufs, 256); q < n; q++)
            cr_assert(written[bufs[q]], "%s: %s reads buffer %d before it is written", path,
                      k->name, bufs[q]);
        int n_out = kernel_stores(k, bufs, 256), reduces = 0;
        cr_assert_eq(bufs[n_out - 1], kernel_writes(k), "%s: %s stores its root last", path,
                     k->name);
        for (int q = 0; q < n_out; q++) {
            cr_assert(!written[bufs[q]], "%s: buffer %d written twice", path, bufs[q]);
            written[bufs[q]] = true;
        }
        for (int o = 0; k->kind == KERNEL_LOOP && o < k->n_ops; o++)
            reduces += k->ops[o].op == KOP_REDUCE_SUM || k->ops[o].op == KOP_REDUCE_MAX;
        bool inner = false;
        for (int q = 0; k->kind == KERNEL_LOOP && q < k->n_stores; q++) {
            if (k->stores[q].phase != KPHASE_INNER) continue;
            inner = true;
            cr_assert(k->reduce_axes, "%s: %s stores at inner points without reducing", path,
                      k->name);
            for (int a = 0; a < k->rank; a++)
                cr_assert(k->dims[a] == 1 || k->stores[q].strides[a] != 0,
                          "%s: %s's inner store skips axis %d", path, k->name, a);
        }
        *inner_store += inner;
        *multi_store += n_out > 1;
        *multi_reduce += reduces > 1;
    }
    free(written);
    kernel_program_free(&p);
    graph_free(&g);
    spec_free(&spec);
}

Test(codegen, multi_output_kernels_keep_the_order) {
    static const char *const graphs[] = {"graphs/omniglot_seed.yaml", "graphs/omniglot_5w1s.yaml",
                                         "graphs/omniglot_20w1s.yaml", "graphs/sinusoid.yaml"};
    for (int i = 0; i < 4; i++) {
        int multi_store = 0, multi_reduce = 0, inner_store = 0;
        assert_kernel_order(graphs[i], &multi_store, &multi_reduce, &inner_store);
        cr_log_info("%s: %d kernels store several buffers, %d compute several reductions, %d "
                    "store a map's values while reducing them",
                    graphs[i], multi_store, multi_reduce, inner_store);
        /* Adam's m, v and parameter updates share kernels; so do batch norm's backward sums, and
         * its backward maps join the sums over their results */
        cr_expect_gt(multi_store, 0, "%s", graphs[i]);
        if (i < 3) cr_expect_gt(multi_reduce, 0, "%s", graphs[i]);
        if (i < 3) cr_expect_gt(inner_store, 0, "%s", graphs[i]);
    }
}

/* Independent maps over one loop space, without a common read: small ones (each a launch that
 * moves almost no memory, like the inner SGD step of every per-task batch-norm parameter) share a
 * kernel; large ones keep their own, since joining them saves no memory traffic. */
Test(codegen, small_independent_maps_share_a_kernel_and_large_ones_do_not) {
    static const int64_t rows[2] = {32, 512}; /* 32 x 64 and 512 x 1024 points */
    static const int64_t cols[2] = {64, 1024};
    for (int size = 0; size < 2; size++) {
        Graph g;
        graph_init(&g);
        Shape s = SHAPE(rows[size], cols[size]);
        for (int i = 0; i < 3; i++) {
            char name[16];
            snprintf(name, sizeof name, "in%d", i);
            int x = g_input(&g, name, INPUT_DATA, DT_REAL, s);
            snprintf(name, sizeof name, "out%d", i);
            out_node(&g, name, g_unary(&g, OP_EXP, x));
        }
        KernelProgram p;
        MamlError err;
        cr_assert_eq(kernels_lower(&g, true, &p, &err), 0, "%s", err.message);
        cr_expect_eq(p.n_kernels, size == 0 ? 1 : 3, "%lld x %lld: %d kernels",
                     (long long)rows[size], (long long)cols[size], p.n_kernels);
        if (size == 0) cr_expect_eq(p.kernels[0].n_stores, 3, "one kernel stores all three");
        kernel_program_free(&p);
        graph_free(&g);
    }
}

Test(codegen, generated_c_comes_from_templates) {
    Graph g;
    build_primitives(&g);
    KernelProgram p;
    MemPlan m;
    MamlError err;
    cr_assert_eq(kernels_lower(&g, true, &p, &err), 0, "%s", err.message);
    cr_assert_eq(memplan_build(&p, 8, &m, &err), 0, "%s", err.message);
    StrBuf src;
    sb_init(&src);
    CodegenOptions opt = {.f64 = true, .source = "test"};
    cr_assert_eq(codegen_c(&g, &p, &m, &opt, &src, &err), 0, "%s", err.message);
    cr_expect(strstr(src.data, "typedef double real;"));
    cr_expect(strstr(src.data, "void mamlc_run(real *A)"));
    cr_expect(strstr(src.data, "#pragma omp"));
    cr_expect(!strstr(src.data, "{{"), "an unfilled placeholder is left");
    /* reduce_sum_13 of [2, 3, 4, 5]: per leading index, 4 accumulators walked in memory order,
     * each run of 5 summed into a partial first; reduce_sum_1 (kept [4, 5] merged into one axis of
     * 20): the accumulators updated directly */
    cr_expect(strstr(src.data, "acc_t acc1[4] = {0};"), "reduce_sum_13 is not interleaved");
    cr_expect(strstr(src.data, "acc1[i2] += (acc_t)part1;"));
    cr_expect(strstr(src.data, "acc_t acc1[20] = {0};"), "reduce_sum_1 is not interleaved");
    cr_expect(strstr(src.data, "acc1[i2] += (acc_t)v0;"));
    cr_expect(strstr(src.data, "for (int64_t blk = 0; blk < 1100; blk += 512) {"),
              "reduce_sum_columns is not in blocks");
    /* a float plan does not render as double */
    CodegenOptions bad = {.f64 = false};
    StrBuf other;
    sb_init(&other);
    cr_expect_neq(codegen_c(&g, &p, &m, &bad, &other, &err), 0);
    sb_free(&other);
    sb_free(&src);
    memplan_free(&m);
    kernel_program_free(&p);
    graph_free(&g);
}

/* ---- the kernel cache ---- */

/* A small graph with one conv and a softmax, for the cache tests. */
static void small_graph(Graph *g, double c) {
    graph_init(g);
    int x = g_input(g, "x", INPUT_DATA, DT_REAL, SHAPE(1, 2, 1, 5, 5));
    int w = g_input(g, "w", INPUT_DATA, DT_REAL, SHAPE(1, 3, 1, 3, 3));
    int y = g_conv2d(g, x, w, 1, 1);
    graph_add_output(g, "y", g_scale(g, g_unary(g, OP_EXP, y), c));
}

static void run_small(Backend *b, const Graph *g) {
    TensorSet in, got, want;
    random_inputs(g, &in, 1);
    tensorset_init(&got);
    tensorset_init(&want);
    MamlError err;
    cr_assert_eq(backend_run(b, &in, &got, &err), 0, "%s", err.message);
    cr_assert_eq(ref_run(g, b->prec, &in, &want, &err), 0, "%s", err.message);
    check_outputs(&got, &want, b->prec == PREC_F32 ? &want : NULL, "small graph");
    tensorset_free(&in);
    tensorset_free(&got);
    tensorset_free(&want);
}

static double mtime_of(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    return (double)st.st_mtim.tv_sec + 1e-9 * (double)st.st_mtim.tv_nsec;
}

Test(codegen, second_open_compiles_nothing) {
    const char *dir = temp_dir(0);
    cr_assert(dir);
    Graph g;
    small_graph(&g, 1.25);
    int before = cpu_backend_compile_count();
    Backend *b = open_cpu(&g, PREC_F64, true, dir);
    CpuBackendInfo info;
    MamlError err;
    cr_assert_eq(cpu_backend_info(b, &info, &err), 0);
    cr_expect(!info.cache_hit);
    cr_expect_eq(cpu_backend_compile_count(), before + 1);
    double t0 = mtime_of(info.so_path);
    run_small(b, &g);
    backend_close(b);
    b = open_cpu(&g, PREC_F64, true, dir);
    cr_assert_eq(cpu_backend_info(b, &info, &err), 0);
    cr_expect(info.cache_hit, "second open missed the cache");
    cr_expect_eq(cpu_backend_compile_count(), before + 1, "second open ran the compiler");
    cr_expect_eq(mtime_of(info.so_path), t0);
    run_small(b, &g);
    backend_close(b);
    graph_free(&g);
}

/* Replaces the file at path by a damaged copy: truncated at `at` (len 0) or with `len` bytes of
 * garbage there. The copy goes in by rename, as the file may still be mapped by this process. */
static void damage(const char *path, long at, size_t len) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    size_t size = (size_t)st.st_size;
    cr_assert_leq((size_t)at + len, size);
    char *data = malloc(size + 1);
    FILE *f = fopen(path, "rb");
    cr_assert(data && f);
    cr_assert_eq(fread(data, 1, size, f), size);
    fclose(f);
    if (len == 0)
        size = (size_t)at;
    else
        memset(data + at, 0x5a, len);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.damaged", path);
    f = fopen(tmp, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(data, 1, size, f), size);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(rename(tmp, path), 0);
    free(data);
}

Test(codegen, corrupt_cache_entry_is_rebuilt) {
    const char *dir = temp_dir(1);
    cr_assert(dir);
    Graph g;
    small_graph(&g, 0.75);
    Backend *b = open_cpu(&g, PREC_F32, true, dir);
    CpuBackendInfo info;
    MamlError err;
    cr_assert_eq(cpu_backend_info(b, &info, &err), 0);
    backend_close(b);
    struct stat st;
    cr_assert_eq(stat(info.so_path, &st), 0);
    /* truncated, then bytes flipped in the middle (dlopen might well accept that one) */
    const long at[2] = {(long)st.st_size / 2, (long)st.st_size / 3};
    const size_t len[2] = {0, 64};
    for (int i = 0; i < 2; i++) {
        damage(info.so_path, at[i], len[i]);
        int before = cpu_backend_compile_count();
        b = open_cpu(&g, PREC_F32, true, dir);
        CpuBackendInfo again;
        cr_assert_eq(cpu_backend_info(b, &again, &err), 0);
        cr_expect(!again.cache_hit, "damaged entry %d was trusted", i);
        cr_expect_eq(cpu_backend_compile_count(), before + 1);
        run_small(b, &g);
        backend_close(b);
    }
    graph_free(&g);
}

Test(codegen, missing_compiler_is_a_clear_error_and_auto_falls_back) {
    Graph g;
    small_graph(&g, 2.0);
    CpuOptions opt = {.cc = "/nonexistent/cc", .cache_dir = temp_dir(2)};
    Backend *b = NULL;
    MamlError err;
    cr_assert_neq(cpu_backend_open(&g, PREC_F32, &opt, &b, &err), 0);
    cr_expect_null(b);
    cr_log_info("%s", err.message);
    cr_expect(strstr(err.message, "/nonexistent/cc"), "message: %s", err.message);
    cr_expect(strstr(err.message, "No such file"), "message: %s", err.message);
    cr_expect(strstr(err.message, ".c"), "no generated file named: %s", err.message);
    setenv("MAMLC_CC", "/nonexistent/cc", 1);
    char why[512];
    cr_assert_eq(backend_open("auto", &g, PREC_F32, &b, why, sizeof why, &err), 0, "%s",
                 err.message);
    unsetenv("MAMLC_CC");
    cr_expect_str_eq(b->name, "ref");
    cr_expect(strstr(why, "ref") && strstr(why, "/nonexistent/cc"), "why: %s", why);
    backend_close(b);
    graph_free(&g);
}

Test(codegen, failing_compiler_shows_its_message_and_the_source) {
    const char *dir = temp_dir(3);
    cr_assert(dir);
    char cc[256];
    snprintf(cc, sizeof cc, "%s/fakecc", dir);
    cr_assert_eq(write_text(cc, "#!/bin/sh\n"
                                "if [ \"$1\" = --version ]; then echo 'fakecc 1.0'; exit 0; fi\n"
                                "echo 'kernels.c:1:1: error: something broke' >&2\nexit 1\n"),
                 0);
    cr_assert_eq(chmod(cc, 0755), 0);
    Graph g;
    small_graph(&g, 3.0);
    CpuOptions opt = {.cc = cc, .cache_dir = dir};
    Backend *b = NULL;
    MamlError err;
    cr_assert_neq(cpu_backend_open(&g, PREC_F32, &opt, &b, &err), 0);
    cr_log_info("%s", err.message);
    cr_expect(strstr(err.message, "something broke"), "message: %s", err.message);
    cr_expect(strstr(err.message, "exit status 1"), "message: %s", err.message);
    const char *c_file = strstr(err.message, " on ");
    cr_assert(c_file, "no generated file named: %s", err.message);
    char path[1024];
    cr_assert_eq(sscanf(c_file + 4, "%1023[^:]", path), 1);
    cr_expect_eq(access(path, R_OK), 0, "generated file %s is not there", path);
    graph_free(&g);
}
