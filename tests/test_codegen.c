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

#include "codegen.h"
#include "cpu_backend.h"
#include "kernel.h"
#include "maml.h"
#include "memplan.h"
#include "ref.h"
#include "safetensors.h"
#include "spec.h"
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
            if (n->dtype != DT_REAL) v = (double)((k * 7 + 3) % n_way);
            else if (strstr(n->name, "adam/v/")) v = 1e-4 * (v + 1.5);
            else if (strstr(n->name, "adam/step")) v = 3;
            else if (strstr(n->name, "pos")) v = v + 1.5;
            else if (strstr(n->name, "tie")) v = (double)((k * 5) % 3);
            else if (strstr(n->name, "_x")) v = 2 * v;
            else v = 0.5 * v;
            tensor_set(t, k, v);
        }
    }
}

/* "grad/conv1.x" -> "grad", "adam/m/x" -> "adam/m", "x" -> "". */
static void group_of(const char *name, char *buf, size_t size) {
    const char *slash = strrchr(name, '/');
    size_t n = slash ? (size_t)(slash - name) : 0;
    if (n >= size) n = size - 1;
    memcpy(buf, name, n);
    buf[n] = 0;
}

static double max_abs(const Tensor *t) {
    double m = 0;
    for (int64_t k = 0, c = shape_numel(t->shape); k < c; k++) m = fmax(m, fabs(tensor_get(t, k)));
    return m;
}

/* A tensor's scale: its largest magnitude, or its group's when it is zero up to rounding. */
static double scale_of(const TensorSet *want, const Tensor *t) {
    char g[128], h[128];
    group_of(t->name, g, sizeof g);
    double group = 0;
    for (int i = 0; i < want->n; i++) {
        group_of(want->items[i].name, h, sizeof h);
        if (strcmp(g, h) == 0) group = fmax(group, max_abs(&want->items[i]));
    }
    double s = max_abs(t) >= 1e-9 * group ? max_abs(t) : group;
    return s > 0 ? s : 1.0;
}

static double rel_err(const Tensor *got, const Tensor *want, double scale) {
    double d = 0;
    for (int64_t k = 0, c = shape_numel(want->shape); k < c; k++) {
        double a = tensor_get(got, k), b = tensor_get(want, k);
        if (isnan(a) && isnan(b)) continue;
        d = fmax(d, isnan(a) || isnan(b) ? INFINITY : fabs(a - b));
    }
    return d / scale;
}

/* Checks got against ref64 (and, in float32, the allowance from ref32); returns the worst ratio
 * of error to bound. */
static double check_outputs(const TensorSet *got, const TensorSet *ref64, const TensorSet *ref32,
                            const char *label) {
    double worst = 0;
    for (int i = 0; i < ref64->n; i++) {
        const Tensor *w = &ref64->items[i];
        const Tensor *g = tensorset_find(got, w->name);
        cr_assert(g, "%s: output '%s' missing", label, w->name);
        cr_assert(shape_equal(g->shape, w->shape), "%s: '%s' shape differs", label, w->name);
        double scale = scale_of(ref64, w), err = rel_err(g, w, scale), bound = 1e-12;
        if (ref32) {
            const Tensor *r = tensorset_find(ref32, w->name);
            cr_assert(r, "%s: ref32 output '%s' missing", label, w->name);
            bound = fmax(1e-5, 3 * rel_err(r, w, scale));
        }
        cr_expect(err <= bound, "%s: '%s' relative error %.3g > bound %.3g", label, w->name, err,
                  bound);
        worst = fmax(worst, err / bound);
    }
    return worst;
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
static void cpu_matches_ref(const Graph *g, const TensorSet *inputs, int fuse_only, const char *label) {
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

static void out(Graph *g, const char *name, int node) {
    graph_add_output(g, name, node);
}

static void add_elementwise(Graph *g) {
    Shape s = SHAPE(2, 3, 4, 5);
    int x = g_input(g, "x", INPUT_DATA, DT_REAL, s), y = g_input(g, "y", INPUT_DATA, DT_REAL, s);
    int pos = g_input(g, "pos", INPUT_DATA, DT_REAL, s);
    int ta = g_input(g, "tie_a", INPUT_DATA, DT_REAL, s), tb = g_input(g, "tie_b", INPUT_DATA, DT_REAL, s);
    out(g, "add", g_add(g, x, y));
    out(g, "sub", g_sub(g, x, y));
    out(g, "mul", g_mul(g, x, y));
    out(g, "div", g_div(g, x, pos));
    out(g, "neg", g_unary(g, OP_NEG, x));
    out(g, "exp", g_unary(g, OP_EXP, x));
    out(g, "log", g_unary(g, OP_LOG, pos));
    out(g, "rsqrt", g_unary(g, OP_RSQRT, pos));
    out(g, "sqrt", g_unary(g, OP_SQRT, pos));
    out(g, "gt", g_gt(g, x, y));
    out(g, "eq", g_eq(g, ta, tb));
    out(g, "select", g_select(g, g_gt(g, x, y), x, y));
    out(g, "reduce_sum_13", g_reduce(g, OP_REDUCE_SUM, x, 0xa));
    out(g, "reduce_sum_all", g_reduce(g, OP_REDUCE_SUM, x, 0xf));
    out(g, "reduce_max_02", g_reduce(g, OP_REDUCE_MAX, x, 0x5));
    out(g, "reduce_max_3", g_reduce(g, OP_REDUCE_MAX, ta, 0x8));
    int b = g_input(g, "b", INPUT_DATA, DT_REAL, SHAPE(2, 1, 4, 1));
    out(g, "broadcast", g_broadcast(g, b, s));
    out(g, "reshape", g_reshape(g, x, SHAPE(6, 20)));
    out(g, "permute", g_permute(g, x, (int[]){2, 0, 3, 1}));
    out(g, "stop_grad", g_stop_grad(g, x));
    out(g, "const", g_const(g, 1.5, SHAPE(2, 3)));
    int labels = g_input(g, "labels", INPUT_DATA, DT_INT, SHAPE(2, 3));
    out(g, "one_hot", g_one_hot(g, labels, 4));
    /* chains: softmax over the last axis, and rsqrt(mean(x^2) + eps) * x */
    Shape r = SHAPE(2, 3, 4, 1);
    int m = g_broadcast(g, g_reduce(g, OP_REDUCE_MAX, x, 0x8), s);
    int e = g_unary(g, OP_EXP, g_sub(g, x, m));
    out(g, "softmax", g_div(g, e, g_broadcast(g, g_reduce(g, OP_REDUCE_SUM, e, 0x8), s)));
    int ms = g_scale(g, g_reduce(g, OP_REDUCE_SUM, g_mul(g, x, x), 0x8), 0.2);
    int rs = g_unary(g, OP_RSQRT, g_add(g, ms, g_const(g, 1e-5, r)));
    out(g, "rms_norm", g_mul(g, x, g_broadcast(g, rs, s)));
}

static void add_matmuls(Graph *g) {
    int a = g_input(g, "mm_a", INPUT_DATA, DT_REAL, SHAPE(2, 3, 4));
    int at = g_input(g, "mm_at", INPUT_DATA, DT_REAL, SHAPE(2, 4, 3));
    int b = g_input(g, "mm_b", INPUT_DATA, DT_REAL, SHAPE(2, 4, 5));
    int bt = g_input(g, "mm_bt", INPUT_DATA, DT_REAL, SHAPE(2, 5, 4));
    out(g, "matmul", g_matmul(g, a, b, false, false));
    out(g, "matmul_ta", g_matmul(g, at, b, true, false));
    out(g, "matmul_tb", g_matmul(g, a, bt, false, true));
    out(g, "matmul_tab", g_matmul(g, at, bt, true, true));
}

static void add_convs(Graph *g) {
    static const int cfg[3][2] = {{1, 1}, {2, 0}, {2, 1}}; /* stride, padding */
    Shape xs = SHAPE(2, 3, 2, 7, 7), ws = SHAPE(2, 4, 2, 3, 3);
    int x = g_input(g, "conv_x", INPUT_DATA, DT_REAL, xs);
    int w = g_input(g, "conv_w", INPUT_DATA, DT_REAL, ws);
    for (int i = 0; i < 3; i++) {
        int s = cfg[i][0], p = cfg[i][1];
        int64_t ho = (7 + 2 * p - 3) / s + 1;
        char name[64];
        snprintf(name, sizeof name, "conv_dy%d", i);
        int dy = g_input(g, name, INPUT_DATA, DT_REAL, SHAPE(2, 3, 4, ho, ho));
        snprintf(name, sizeof name, "conv2d_s%dp%d", s, p);
        out(g, name, g_conv2d(g, x, w, s, p));
        snprintf(name, sizeof name, "conv2d_grad_input_s%dp%d", s, p);
        out(g, name, g_conv2d_grad_input(g, dy, w, xs, s, p));
        snprintf(name, sizeof name, "conv2d_grad_weight_s%dp%d", s, p);
        out(g, name, g_conv2d_grad_weight(g, x, dy, ws, s, p));
    }
}

static void add_pools(Graph *g) {
    static const int cfg[2][2] = {{2, 2}, {3, 2}}; /* kernel, stride (3/2 overlaps) */
    int x = g_input(g, "pool_x", INPUT_DATA, DT_REAL, SHAPE(2, 3, 7, 7));
    int t = g_input(g, "pool_tie", INPUT_DATA, DT_REAL, SHAPE(2, 3, 7, 7));
    int dy = g_input(g, "pool_dy", INPUT_DATA, DT_REAL, SHAPE(2, 3, 3, 3));
    for (int i = 0; i < 2; i++) {
        int k = cfg[i][0], s = cfg[i][1];
        char name[64];
        snprintf(name, sizeof name, "max_pool2d_k%d", k);
        out(g, name, g_max_pool2d(g, x, k, s));
        snprintf(name, sizeof name, "pool_scatter_k%d", k);
        out(g, name, g_pool_scatter(g, x, dy, k, s));
        snprintf(name, sizeof name, "pool_scatter_ties_k%d", k);
        out(g, name, g_pool_scatter(g, t, dy, k, s));
        snprintf(name, sizeof name, "pool_gather_k%d", k);
        out(g, name, g_pool_gather(g, t, x, k, s));
    }
}

static void build_primitives(Graph *g) {
    graph_init(g);
    add_elementwise(g);
    add_matmuls(g);
    add_convs(g);
    add_pools(g);
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
        cr_assert(tensorset_add(&in, t->name, t->dtype, t->shape, t->data, &err), "%s", err.message);
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
    cr_log_info("seed train step T=2: %d nodes (%d live), %d kernels fused, %d unfused",
                g.n_nodes, fused.n_live_nodes, fused.n_kernels, unfused.n_kernels);
    cr_expect_lt(fused.n_kernels * 3, g.n_nodes, "fused: %d kernels for %d nodes",
                 fused.n_kernels, g.n_nodes);
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
    if (len == 0) size = (size_t)at;
    else memset(data + at, 0x5a, len);
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
    cr_assert_eq(backend_open("auto", &g, PREC_F32, &b, why, sizeof why, &err), 0, "%s", err.message);
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
