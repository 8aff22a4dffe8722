/* mamlc compile: builds the training graph, runs the compile pipeline (passes, fusion, memory
 * plan, C rendering) and writes what it made into DIR, with a report of every stage. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "codegen.h"
#include "cpu_backend.h"
#include "dot.h"
#include "maml.h"
#include "pipeline.h"

typedef struct {
    const char *graph, *out_dir, *backend, *conv;
    bool dot, json, no_fuse, no_cc;
    Overrides overrides;
} CompileArgs;

#define USAGE                                                                                      \
    "usage: mamlc compile GRAPH.yaml -o DIR [--backend cuda|cpu] [--conv generated|tensor|auto] "  \
    "[--json] [--no-fuse] [--no-cc] [--dot] [--set K=V]"

static int parse_flag(const char *arg, CompileArgs *a) {
    if (strcmp(arg, "--dot") == 0)
        a->dot = true;
    else if (strcmp(arg, "--json") == 0)
        a->json = true;
    else if (strcmp(arg, "--no-fuse") == 0)
        a->no_fuse = true;
    else if (strcmp(arg, "--no-cc") == 0)
        a->no_cc = true;
    else
        return 0;
    return 1;
}

static int parse_args(int argc, char **argv, CompileArgs *a) {
    memset(a, 0, sizeof *a);
    a->backend = "cpu";
    for (int i = 1; i < argc; i++) {
        int taken = cli_take_override(argc, argv, &i, &a->overrides);
        if (taken < 0) return -1;
        if (taken || parse_flag(argv[i], a)) continue;
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
            a->out_dir = argv[++i];
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc)
            a->backend = argv[++i];
        else if (strcmp(argv[i], "--conv") == 0 && i + 1 < argc)
            a->conv = argv[++i];
        else if (argv[i][0] != '-' && !a->graph)
            a->graph = argv[i];
        else {
            cli_error("compile: unexpected argument '%s'", argv[i]);
            return -1;
        }
    }
    if (!a->graph || !a->out_dir) {
        cli_error(USAGE);
        return -1;
    }
    if (strcmp(a->backend, "cpu") != 0 && strcmp(a->backend, "cuda") != 0) {
        cli_error("compile: unknown backend '%s' (expected cpu or cuda)", a->backend);
        return -1;
    }
    /* cudnn is chosen at run time, so its kernels.cu is generated's; auto's holds both forms */
    if (a->conv && strcmp(a->conv, "generated") != 0 &&
        ((strcmp(a->conv, "tensor") != 0 && strcmp(a->conv, "auto") != 0) ||
         strcmp(a->backend, "cuda") != 0)) {
        cli_error("compile: --conv must be generated, tensor or auto, with --backend cuda (not "
                  "'%s')",
                  a->conv);
        return -1;
    }
    return 0;
}

static int write_dumps(const CompileArgs *a, const Graph *g, const MamlStages *st, MamlError *err) {
    static const char *files[3] = {"forward.dot", "inner_grad.dot", "step.dot"};
    int counts[3] = {st->forward_nodes, st->inner_grad_nodes, g->n_nodes};
    for (int i = 0; i < 3; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", a->out_dir, files[i]);
        if (graph_write_dot(g, counts[i], path, err)) return -1;
    }
    return 0;
}

static void print_stages(const CompileArgs *a, const GraphSpec *spec, const Graph *g,
                         const MamlStages *st) {
    printf("graph %s (meta_batch %d, %d inner step%s, %s order)\n", a->graph, spec->maml.meta_batch,
           spec->maml.inner.steps, spec->maml.inner.steps == 1 ? "" : "s",
           spec->maml.inner.first_order ? "first" : "second");
    printf("  forward (support set)        %6d nodes\n", st->forward_nodes);
    printf("  + first inner gradient       %6d nodes\n", st->inner_grad_nodes);
    printf("  full training step           %6d nodes\n", g->n_nodes);
}

/* Fills the report's kernel counts: the other lowering of the same optimized graph is cheap. */
static int count_kernels(const CompiledGraph *c, PipelineReportInfo *info, MamlError *err) {
    int other;
    if (pipeline_count_kernels(&c->graph, !c->prog.fused, &other, err)) return -1;
    info->fused_kernels = c->prog.fused ? c->prog.n_kernels : other;
    info->unfused_kernels = c->prog.fused ? other : c->prog.n_kernels;
    return 0;
}

/* Runs the C compiler on the rendered program through the cpu backend (so the object lands in
 * its cache and the next `train` or `bench` compiles nothing). On success *b owns the compiled
 * graph; on failure cg is still the caller's. */
static int build_object(const Graph *raw, CompiledGraph *cg, PipelineReportInfo *info, Backend **b,
                        MamlError *err) {
    if (cpu_backend_open_compiled(raw, PREC_F32, NULL, cg, b, err)) return -1;
    CpuBackendInfo bi;
    if (cpu_backend_info(*b, &bi, err)) return -1;
    info->cc_ms = bi.cc_ms;
    info->cc_cached = bi.cache_hit;
    return 0;
}

static void print_summary(const CompileArgs *a, const CompiledGraph *c,
                          const PipelineReportInfo *info, bool wrote) {
    if (a->json) {
        pipeline_report_json(c, info, stdout);
        return;
    }
    pipeline_report_text(c, info, stdout);
    if (wrote)
        printf("wrote %s/{%s,plan.json,report.txt}\n", a->out_dir,
               strcmp(a->backend, "cpu") == 0 ? "kernels.c" : "kernels.cu");
}

/* The kernels: the report, the files, and for cpu the C compiler. cuda renders the optimized graph
 * with codegen_write_cuda_dir (always fused; NVRTC runs when the backend opens). */
static int compile_kernels(const CompileArgs *a, const GraphSpec *spec, const Graph *raw,
                           CompiledGraph *cg, MamlError *err) {
    PipelineReportInfo info = {
        .graph_path = a->graph, .meta_batch = spec->maml.meta_batch, .cc_ms = -1};
    if (count_kernels(cg, &info, err)) return -1;
    bool cpu = strcmp(a->backend, "cpu") == 0;
    Backend *b = NULL;
    MamlError cc_err;
    int cc_rc = cpu && !a->no_cc ? build_object(raw, cg, &info, &b, &cc_err) : 0;
    const CompiledGraph *c = b ? cpu_backend_compiled(b) : cg;
    CodegenOptions co = {.source = a->graph,
                         .tensor_convs = a->conv && !strcmp(a->conv, "tensor"),
                         .tensor_variants = a->conv && !strcmp(a->conv, "auto")};
    int rc = cpu ? pipeline_write_dir(c, &info, a->out_dir, err)
                 : codegen_write_cuda_dir(&c->graph, a->out_dir, &co, NULL, err);
    if (rc == 0) print_summary(a, c, &info, true);
    backend_close(b);
    if (rc == 0 && cc_rc) {
        *err = cc_err;
        rc = -1;
    }
    return rc;
}

static int run_compile(const CompileArgs *a, MamlError *err) {
    if (mkdir(a->out_dir, 0777) != 0 && errno != EEXIST)
        return maml_fail(err, "%s: cannot create directory: %s", a->out_dir, strerror(errno));
    GraphSpec spec = {0};
    Graph raw;
    graph_init(&raw);
    CompiledGraph cg;
    memset(&cg, 0, sizeof cg);
    MamlStages st;
    PipelineOptions po = pipeline_default_options();
    po.no_fuse = a->no_fuse;
    po.target = strcmp(a->backend, "cpu") == 0 ? PIPELINE_TARGET_C : PIPELINE_TARGET_NONE;
    int rc = spec_load(a->graph, a->overrides.items, a->overrides.n, &spec, err);
    if (rc == 0)
        rc = compile_pipeline_spec(&spec, MAML_TRAIN_STEP, spec.maml.meta_batch, &po, &raw, &st,
                                   &cg, err);
    if (rc == 0 && !a->json) print_stages(a, &spec, &raw, &st);
    if (rc == 0 && a->dot) rc = write_dumps(a, &raw, &st, err);
    if (rc == 0 && a->dot && !a->json)
        printf("wrote %s/{forward,inner_grad,step}.dot\n", a->out_dir);
    if (rc == 0) rc = compile_kernels(a, &spec, &raw, &cg, err);
    compiled_graph_free(&cg);
    graph_free(&raw);
    spec_free(&spec);
    return rc;
}

int cmd_compile(int argc, char **argv) {
    CompileArgs a;
    if (parse_args(argc, argv, &a)) return 2;
    MamlError err;
    if (run_compile(&a, &err)) {
        cli_error("%s", err.message);
        return 2;
    }
    return 0;
}
