/* `mamlc bench` and the compile report: the JSON each prints, that the passes shrink the graph and
 * fusion shrinks the kernel count, and the bench helpers (median, peak, synthetic inputs).
 *
 * Runs the binary named by $MAMLC (./mamlc otherwise). Compiled kernels go to $MAMLC_CACHE,
 * default build/test-cache, as in test_codegen.c; only the small sinusoid graph is C-compiled, the
 * seed graph's report comes from `compile --no-cc`. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "bench.h"
#include "maml.h"
#include "pipeline.h"
#include "spec.h"
#include "test_util.h"

static const char *mamlc(void) {
    const char *m = getenv("MAMLC");
    return m && *m ? m : "./mamlc";
}

static const char *test_cache(void) {
    const char *env = getenv("MAMLC_CACHE");
    return env && *env ? env : "build/test-cache";
}

/* Runs "mamlc ARGS" with stdout into out (stderr is left alone); returns the exit status. */
static int run(char *out, size_t size, const char *fmt, ...) {
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "MAMLC_CACHE=%s %s %s", test_cache(), mamlc(), args);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "cannot run %s", cmd);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- minimal JSON reading: the number after the first "key": at or after from ---- */

static const char *after_key(const char *json, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    return p ? p + strlen(pat) : NULL;
}

static double number_at(const char *json, const char *key) {
    const char *p = after_key(json, key);
    cr_assert(p, "no \"%s\" in %.300s", key, json);
    char *end;
    double v = strtod(p, &end);
    cr_assert(end != p, "\"%s\" is not a number: %.40s", key, p);
    return v;
}

/* Checks the text is one object with balanced brackets outside strings. */
static void assert_one_object(const char *json) {
    while (*json == ' ' || *json == '\n') json++;
    cr_assert_eq(*json, '{', "not an object: %.80s", json);
    int depth = 0, closed_at_end = 0;
    bool in_string = false;
    for (const char *p = json; *p; p++) {
        if (in_string) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '"')
                in_string = false;
            continue;
        }
        if (*p == '"')
            in_string = true;
        else if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']') {
            depth--;
            cr_assert(depth >= 0, "unbalanced JSON");
            if (depth == 0) closed_at_end = strspn(p + 1, " \n") == strlen(p + 1);
        }
    }
    cr_assert(depth == 0 && !in_string && closed_at_end, "not exactly one JSON object");
}

/* Counts the objects of the array under key (objects in it hold no nested objects). */
static int array_objects(const char *json, const char *key) {
    const char *p = after_key(json, key);
    cr_assert(p, "no \"%s\"", key);
    while (*p == ' ') p++;
    cr_assert_eq(*p, '[', "\"%s\" is not an array", key);
    int n = 0;
    for (p++; *p && *p != ']'; p++) n += *p == '{';
    return n;
}

/* ---- bench ---- */

#define BIG 1 << 20

Test(bench, json_on_sinusoid_has_the_step_median_pipelined_time_and_one_row_per_kernel,
     .timeout = 120) {
    static char out[BIG];
    int rc =
        run(out, sizeof out,
            "bench graphs/sinusoid.yaml --backend cpu --json --reps 3 --warmup 1 --kernel-reps 2");
    cr_assert_eq(rc, 0, "mamlc bench failed: %.500s", out);
    assert_one_object(out);
    double median = number_at(out, "step_ms_median");
    cr_assert(median > 0 && isfinite(median), "step_ms_median %g", median);
    cr_assert(number_at(out, "step_ms_min") <= median && median <= number_at(out, "step_ms_max"));
    cr_assert_eq((int)number_at(out, "reps"), 3);
    double piped = number_at(out, "pipelined_ms");
    cr_assert(piped > 0 && isfinite(piped), "pipelined_ms %g", piped);
    int n = (int)number_at(out, "n_kernels");
    cr_assert(n > 0);
    cr_assert_eq(array_objects(out, "kernels"), n, "one row per kernel");
    cr_assert(strstr(out, "\"fuses\": \"matmul"), "kernel rows say what they fuse");
    cr_assert(number_at(out, "peak_gflops") > 0);
    cr_assert(number_at(out, "flops_per_step") > 0);
    double share = number_at(strstr(out, "\"kernels\""), "share");
    cr_assert(share >= 0 && share < 10, "share %g", share);
}

Test(bench, text_table_and_bad_usage, .timeout = 120) {
    static char out[BIG];
    int rc = run(out, sizeof out,
                 "bench graphs/sinusoid.yaml --backend cpu --reps 2 --warmup 0 "
                 "--kernel-reps 1 --top 3 2>/dev/null");
    cr_assert_eq(rc, 0, "%.500s", out);
    cr_assert(strstr(out, "step: median") && strstr(out, "GFLOP/s") && strstr(out, "share"), "%s",
              out);
    cr_assert(strstr(out, "FLOP/cycle"), "the peak's assumption is printed: %s", out);
    cr_assert_eq(run(out, sizeof out, "bench graphs/sinusoid.yaml --reps 0 2>&1"), 2, "%s", out);
    cr_assert(strstr(out, "--reps needs an integer >= 1"), "%s", out);
    cr_assert_eq(run(out, sizeof out, "bench graphs/sinusoid.yaml --backend tpu 2>&1"), 2, "%s",
                 out);
    cr_assert(strstr(out, "unknown backend 'tpu'"), "%s", out);
}

/* ---- the compile report ---- */

static void compile_json(char *out, size_t size, const char *dir, const char *extra) {
    int rc =
        run(out, size, "compile graphs/omniglot_seed.yaml -o %s --backend cpu --json --no-cc %s",
            dir, extra);
    cr_assert_eq(rc, 0, "mamlc compile failed: %.500s", out);
    assert_one_object(out);
}

Test(compile_report, passes_shrink_the_seed_graph_and_fusion_shrinks_the_kernel_count,
     .timeout = 60) {
    static char fused[BIG], unfused[BIG];
    const char *dir = temp_dir(0);
    compile_json(fused, sizeof fused, dir, "");
    double before = number_at(fused, "nodes_before"), after = number_at(fused, "nodes_after");
    cr_assert(after < before, "passes: %g -> %g nodes", before, after);
    /* every step's count is below the input's, and the last equals the result */
    const char *p = strstr(fused, "\"steps\"");
    double last = -1;
    for (p = after_key(p, "nodes"); p; p = after_key(p, "nodes")) {
        if (p > strstr(fused, "\"rules\"")) break;
        last = strtod(p, NULL);
        cr_assert(last <= before, "a pass grew the graph past its input: %g > %g", last, before);
    }
    cr_assert_eq(last, after, "last pass count %g, result %g", last, after);
    int kernels = (int)number_at(fused, "n_kernels");
    cr_assert(kernels < after, "%d kernels for %g nodes", kernels, after);
    cr_assert(3 * kernels < after, "fusion: %d kernels for %g primitives is not far fewer", kernels,
              after);
    cr_log_info("seed step: %g -> %g nodes, %d kernels", before, after, kernels);
    compile_json(unfused, sizeof unfused, dir, "--no-fuse");
    int one_per_node = (int)number_at(unfused, "n_kernels");
    cr_assert(one_per_node > kernels, "--no-fuse: %d kernels, fused %d", one_per_node, kernels);
    cr_assert_eq((int)number_at(fused, "unfused_kernels"), one_per_node);
    cr_assert_eq((int)number_at(unfused, "fused_kernels"), kernels);
    cr_assert(number_at(fused, "arena_bytes") <= number_at(fused, "sum_intermediates_bytes"));
    cr_assert(number_at(fused, "flops_per_step") > 30e9, "the seed step is ~38 GFLOP");
    cr_assert(number_at(fused, "total_without_cc") > 0);
    cr_assert_eq(number_at(fused, "cc"), -1, "--no-cc runs no C compiler");
}

Test(compile_report, writes_kernels_plan_and_report_with_the_stage_times, .timeout = 60) {
    static char out[BIG];
    const char *dir = temp_dir(0);
    cr_assert_eq(run(out, sizeof out, "compile graphs/omniglot_seed.yaml -o %s --no-cc", dir), 0,
                 "%s", out);
    cr_assert(strstr(out, "passes:") && strstr(out, "total without C compiler") &&
                  strstr(out, "liveness lower bound"),
              "%s", out);
    static const char *files[3] = {"kernels.c", "plan.json", "report.txt"};
    for (int i = 0; i < 3; i++) {
        char path[512];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        cr_assert(stat(path, &st) == 0 && st.st_size > 0, "%s not written", path);
    }
}

/* ---- helpers in the library ---- */

Test(bench_helpers, median_of_odd_and_even_counts) {
    double a[] = {5, 1, 3}, b[] = {4, 1, 3, 2};
    cr_assert_eq(bench_median(a, 3), 3);
    cr_assert_eq(bench_median(b, 4), 2.5);
    cr_assert_eq(bench_median(NULL, 0), 0);
}

Test(bench_helpers, machine_peak_states_its_assumption) {
    MachinePeak p;
    unsetenv("MAMLC_PEAK_GFLOPS");
    bench_machine_peak(&p);
    cr_assert(p.cores >= 1 && p.flop_per_cycle >= 8 && p.ghz > 0 && p.peak_gflops > 0);
    cr_assert(strstr(p.assumption, "FLOP/cycle"), "%s", p.assumption);
    cr_assert(strstr(p.assumption, p.isa) && strstr(p.assumption, p.units), "%s", p.assumption);
    cr_log_info("%s", p.assumption);
    setenv("MAMLC_PEAK_GFLOPS", "123.5", 1);
    bench_machine_peak(&p);
    cr_assert_eq(p.peak_gflops, 123.5);
    unsetenv("MAMLC_PEAK_GFLOPS");
}

/* The FLOP/cycle follows the ISA: 64 with AVX-512 (two FMA units), 32 with AVX2 + FMA, 16 with
 * AVX alone, 8 otherwise; a flag only counts as a whole word. */
Test(bench_helpers, flop_per_cycle_follows_the_isa) {
    static const struct {
        const char *flags, *isa;
        int flop;
    } cases[] = {
        {"fpu sse sse2 avx avx2 fma avx512f avx512dq", "avx512f", 64},
        {"fpu sse sse2 avx fma avx2", "avx2+fma", 32},
        {"fpu sse sse2 avx avx2", "avx", 16},
        {"fpu sse sse2 avx512fx avx2x", "sse", 8},
        {"", "sse", 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        MachinePeak p;
        memset(&p, 0, sizeof p);
        bench_isa_from_flags(cases[i].flags, &p);
        cr_expect_eq(p.flop_per_cycle, cases[i].flop, "'%s': %d", cases[i].flags, p.flop_per_cycle);
        cr_expect_str_eq(p.isa, cases[i].isa, "'%s'", cases[i].flags);
    }
}

static void load_graph(const char *path, GraphSpec *spec, Graph *g) {
    MamlError err;
    memset(spec, 0, sizeof *spec);
    cr_assert_eq(spec_load(path, NULL, 0, spec, &err), 0, "%s", err.message);
    graph_init(g);
    cr_assert_eq(maml_build(spec, MAML_TRAIN_STEP, 2, g, NULL, &err), 0, "%s", err.message);
}

Test(bench_helpers, synthetic_inputs_fit_the_graph) {
    GraphSpec spec;
    Graph g;
    load_graph("graphs/omniglot_seed.yaml", &spec, &g);
    TensorSet in;
    MamlError err;
    cr_assert_eq(bench_inputs(&spec, &g, 7, &in, &err), 0, "%s", err.message);
    const Tensor *x = tensorset_find(&in, "support_x"), *y = tensorset_find(&in, "query_y");
    const Tensor *step = tensorset_find(&in, "adam/step"),
                 *w = tensorset_find(&in, "conv1.conv2d.weight");
    cr_assert(x && y && step && w);
    int zeros = 0;
    for (int64_t i = 0, n = shape_numel(x->shape); i < n; i++) {
        double v = tensor_get(x, i);
        cr_assert(v == 0 || v == 1);
        zeros += v == 0;
    }
    cr_assert(zeros > 0 && zeros < shape_numel(x->shape) / 2, "%d ink pixels", zeros);
    for (int64_t i = 0, n = shape_numel(y->shape); i < n; i++)
        cr_assert(tensor_get(y, i) >= 0 && tensor_get(y, i) < spec.maml.n_way);
    cr_assert_eq(tensor_get(step, 0), 1);
    cr_assert_neq(tensor_get(w, 0), 0);
    tensorset_free(&in);
    graph_free(&g);
    spec_free(&spec);
}

Test(bench_helpers, the_pipeline_keeps_the_raw_graphs_interface) {
    GraphSpec spec;
    Graph g;
    load_graph("graphs/sinusoid.yaml", &spec, &g);
    CompiledGraph c;
    MamlError err;
    cr_assert_eq(compile_pipeline(&g, NULL, &c, &err), 0, "%s", err.message);
    cr_assert(c.graph.n_nodes < g.n_nodes);
    cr_assert_eq(c.graph.n_outputs, g.n_outputs);
    for (int i = 0; i < g.n_outputs; i++)
        cr_assert_str_eq(c.graph.outputs[i].name, g.outputs[i].name);
    cr_assert_eq(c.source.len, 0, "no rendering unless asked");
    cr_assert(c.times.total_ms >= c.times.passes_ms);
    compiled_graph_free(&c);
    graph_free(&g);
    spec_free(&spec);
}
