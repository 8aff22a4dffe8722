/* mamlc bench: times the training step (warm-up, then the median over repetitions) and, on the
 * cpu backend, each kernel, on synthetic inputs of the graph's shapes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli.h"
#include "cpu_backend.h"
#include "cuda_backend.h"
#include "maml.h"
#include "pipeline.h"

#define DEFAULT_REPS 20 /* the floor for a median */

typedef struct {
    const char *graph, *backend;
    bool json, no_fuse;
    int reps, warmup, kernel_reps, top;
    unsigned long long seed;
    Overrides overrides;
    BackendFlags flags;
} BenchArgs;

#define USAGE                                                                                      \
    "usage: mamlc bench GRAPH.yaml [--backend cpu|ref|cuda|auto] "                                 \
    "[--conv generated|cudnn|auto|tensor] [--require-cache] [--json] [--no-fuse] [--reps N] "      \
    "[--warmup N] [--kernel-reps N] [--top N] [--seed S] [--set K=V]"

/* Parses the value of an integer option into *v (>= lo). */
static int int_value(const char *opt, const char *text, int lo, int *v) {
    char *end;
    long n = strtol(text, &end, 10);
    if (*text == 0 || *end != 0 || n < lo || n > 1000000) {
        cli_error("bench: %s needs an integer >= %d, found '%s'", opt, lo, text);
        return -1;
    }
    *v = (int)n;
    return 0;
}

/* Options with a value; returns 1 when argv[*i] was one, 0 when not, -1 on a bad value. */
static int parse_valued(int argc, char **argv, int *i, BenchArgs *a) {
    static const char *names[] = {"--reps", "--warmup", "--kernel-reps",
                                  "--top",  "--seed",   "--backend"};
    int which = -1;
    for (int k = 0; k < 6; k++)
        if (strcmp(argv[*i], names[k]) == 0) which = k;
    if (which < 0 || *i + 1 >= argc) return 0;
    const char *v = argv[++*i];
    int n = 0;
    switch (which) {
    case 0:
        return int_value(names[0], v, 1, &a->reps) ? -1 : 1;
    case 1:
        return int_value(names[1], v, 0, &a->warmup) ? -1 : 1;
    case 2:
        return int_value(names[2], v, 0, &a->kernel_reps) ? -1 : 1;
    case 3:
        return int_value(names[3], v, 0, &a->top) ? -1 : 1;
    case 4:
        if (int_value(names[4], v, 0, &n)) return -1;
        a->seed = (unsigned long long)n;
        return 1;
    default:
        a->backend = v;
        return 1;
    }
}

static int parse_args(int argc, char **argv, BenchArgs *a) {
    memset(a, 0, sizeof *a);
    *a = (BenchArgs){.backend = "auto",
                     .reps = DEFAULT_REPS,
                     .warmup = 2,
                     .kernel_reps = -1,
                     .top = 25,
                     .seed = 1206};
    for (int i = 1; i < argc; i++) {
        int taken = cli_take_override(argc, argv, &i, &a->overrides);
        if (taken == 0) taken = cli_take_backend_flag(argc, argv, &i, &a->flags);
        if (taken == 0) taken = parse_valued(argc, argv, &i, a);
        if (taken < 0) return -1;
        if (taken) continue;
        if (strcmp(argv[i], "--json") == 0)
            a->json = true;
        else if (strcmp(argv[i], "--no-fuse") == 0)
            a->no_fuse = true;
        else if (argv[i][0] != '-' && !a->graph)
            a->graph = argv[i];
        else {
            cli_error("bench: unexpected argument '%s'", argv[i]);
            return -1;
        }
    }
    if (!a->graph) {
        cli_error(USAGE);
        return -1;
    }
    if (a->kernel_reps < 0) a->kernel_reps = a->reps;
    static const char *backends[] = {"cpu", "ref", "cuda", "auto"};
    for (int k = 0; k < 4; k++)
        if (strcmp(a->backend, backends[k]) == 0)
            return cli_apply_backend_flags("bench", &a->flags, a->backend);
    cli_error("bench: unknown backend '%s' (expected cpu, ref, cuda or auto)", a->backend);
    return -1;
}

typedef struct {
    GraphSpec spec;
    Graph raw;
    CompiledGraph estimate; /* for backends other than cpu: the work the kernel program does */
    Backend *backend;
    char why[512];
    TensorSet inputs;
} BenchState;

/* cpu: the compiled graph the backend runs; others: the backend the name picks, with the cpu
 * pipeline's program as the work estimate (an auto pick of cpu already carries one). */
static int open_backend(const BenchArgs *a, BenchState *s, MamlError *err) {
    PipelineOptions po = pipeline_default_options();
    po.no_fuse = a->no_fuse;
    if (strcmp(a->backend, "cpu") == 0) {
        CpuOptions co = {.no_fuse = a->no_fuse};
        snprintf(s->why, sizeof s->why, "backend cpu: requested");
        return cpu_backend_open(&s->raw, PREC_F32, &co, &s->backend, err);
    }
    if (backend_open(a->backend, &s->raw, PREC_F32, &s->backend, s->why, sizeof s->why, err))
        return -1;
    if (cpu_backend_compiled(s->backend) && a->no_fuse) {
        /* auto picked cpu, which compiled with fusion: reopen unfused as asked (cpu_backend_open
         * sets s->backend, to NULL when it fails) */
        backend_close(s->backend);
        CpuOptions co = {.no_fuse = true};
        return cpu_backend_open(&s->raw, PREC_F32, &co, &s->backend, err);
    }
    if (cpu_backend_compiled(s->backend) || cuda_backend_compiled(s->backend)) return 0;
    return compile_pipeline(&s->raw, &po, &s->estimate, err);
}

static int prepare(const BenchArgs *a, BenchState *s, MamlError *err) {
    if (spec_load(a->graph, a->overrides.items, a->overrides.n, &s->spec, err)) return 2;
    if (maml_build(&s->spec, MAML_TRAIN_STEP, s->spec.maml.meta_batch, &s->raw, NULL, err))
        return 2;
    if (bench_inputs(&s->spec, &s->raw, a->seed, &s->inputs, err)) return 1;
    if (open_backend(a, s, err)) return 1;
    return 0;
}

static void report(const BenchArgs *a, BenchState *s, const BenchResult *r) {
    MachinePeak peak;
    bench_machine_peak(&peak);
    CudaBackendInfo info;
    MamlError ignored;
    if (cuda_backend_info(s->backend, &info, &ignored) == 0 && info.peak_gflops > 0) {
        peak.peak_gflops = info.peak_gflops; /* the GPU's, not the host's */
        snprintf(peak.assumption, sizeof peak.assumption, "%s", info.peak_assumption);
    }
    const CompiledGraph *c = cpu_backend_compiled(s->backend);
    if (!c) c = cuda_backend_compiled(s->backend);
    const GraphSpec *sp = &s->spec;
    BenchContext ctx = {
        .graph_path = a->graph,
        .backend = s->backend->name,
        .why = s->why[0] ? s->why : NULL,
        .fused = c ? c->prog.fused : !a->no_fuse,
        .meta_batch = sp->maml.meta_batch,
        .images_per_step = (spec_support_size(sp) + spec_query_size(sp)) * sp->maml.meta_batch,
        .c = c ? c : &s->estimate,
        .peak = &peak,
    };
    if (a->json)
        bench_print_json(&ctx, r, stdout);
    else
        bench_print_text(&ctx, r, a->top, stdout);
}

static int run_bench(const BenchArgs *a, MamlError *err) {
    BenchState s;
    memset(&s, 0, sizeof s);
    graph_init(&s.raw);
    tensorset_init(&s.inputs);
    int rc = prepare(a, &s, err);
    BenchResult r = {0};
    BenchOptions o = {.warmup = a->warmup, .reps = a->reps, .kernel_reps = a->kernel_reps};
    if (rc == 0 && !a->json && a->reps < DEFAULT_REPS)
        fprintf(stderr, "mamlc: bench: %d reps (a quick run; the reported medians use >= %d)\n",
                a->reps, DEFAULT_REPS);
    if (rc == 0) rc = bench_run(s.backend, &s.inputs, &o, &r, err) ? 1 : 0;
    if (rc == 0) report(a, &s, &r);
    bench_result_free(&r);
    backend_close(s.backend);
    compiled_graph_free(&s.estimate);
    tensorset_free(&s.inputs);
    graph_free(&s.raw);
    spec_free(&s.spec);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    BenchArgs a;
    if (parse_args(argc, argv, &a)) return 2;
    MamlError err;
    int rc = run_bench(&a, &err);
    if (rc) cli_error("%s", err.message);
    return rc;
}
