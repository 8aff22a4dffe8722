/* The compile pipeline in one place: a built step graph -> passes_optimize -> kernels_lower ->
 * memplan_build -> (optionally) codegen_c, with the pass report and the wall time of each stage.
 *
 * `mamlc compile`, `mamlc bench` and the cpu backend all go through compile_pipeline, so what the
 * report describes is exactly what runs. The ref backend does not: it interprets the raw graph and
 * stays the oracle. The optimized graph keeps the raw graph's inputs and outputs (same names,
 * shapes, order), so callers feed and read it like the raw one. Its node origins point into the
 * spec the raw graph was built from: the spec must outlive the CompiledGraph. */
#ifndef MAMLC_PIPELINE_H
#define MAMLC_PIPELINE_H

#include <stdbool.h>
#include <stdio.h>

#include "graph.h"
#include "kernel.h"
#include "maml.h"
#include "memplan.h"
#include "passes.h"
#include "spec.h"
#include "template.h"

/* What kernels.c's header names as its origin when PipelineOptions.source is NULL. The cpu
 * backend keys its cache on the source text, so every caller that wants to share the cache (the
 * backend, `mamlc compile`, `mamlc bench`) keeps this default. */
#define PIPELINE_DEFAULT_SOURCE "a graph (cpu backend)"

typedef enum {
    PIPELINE_TARGET_NONE, /* stop after the memory plan (e.g. a renderer of its own follows) */
    PIPELINE_TARGET_C,    /* render kernels.c into CompiledGraph.source */
} PipelineTarget;

typedef struct {
    bool no_fuse; /* one kernel per node (for comparisons) */
    bool f64;     /* plan and render for double (else float) */
    PipelineTarget target;
    const char *source; /* kernels.c header; NULL: PIPELINE_DEFAULT_SOURCE */
} PipelineOptions;

/* Wall time of each stage, in milliseconds. build_ms is filled only by compile_pipeline_spec. */
typedef struct {
    double build_ms;  /* maml_build (spec -> step graph with its gradients) */
    double passes_ms; /* passes_optimize */
    double lower_ms;  /* kernels_lower (fusion) */
    double plan_ms;   /* memplan_build */
    double render_ms; /* codegen_c (0 without PIPELINE_TARGET_C) */
    double total_ms;  /* the sum: compile time without the C compiler */
} PipelineTimes;

typedef struct {
    Graph graph;   /* the optimized graph */
    int raw_nodes; /* node count of the graph given to the pipeline */
    PassReport passes;
    KernelProgram prog; /* kernels over graph */
    MemPlan plan;
    StrBuf source; /* PIPELINE_TARGET_C: kernels.c */
    bool f64;
    PipelineTimes times;
} CompiledGraph;

/* Default options: fusion on, float32, no rendering. */
PipelineOptions pipeline_default_options(void);

/* Runs the pipeline on raw (which is not modified and may be freed afterwards, but its spec must
 * outlive out). out is initialised here; free it with compiled_graph_free, also after a failure. */
int compile_pipeline(const Graph *raw, const PipelineOptions *opt, CompiledGraph *out,
                     MamlError *err);

/* maml_build of kind at `tasks` tasks into raw (initialised here, the caller frees it), then
 * compile_pipeline; times.build_ms includes the build. stages may be NULL. */
int compile_pipeline_spec(const GraphSpec *spec, MamlGraphKind kind, int64_t tasks,
                          const PipelineOptions *opt, Graph *raw, MamlStages *stages,
                          CompiledGraph *out, MamlError *err);

/* Releases everything compile_pipeline made; safe on a zeroed or partly built CompiledGraph. */
void compiled_graph_free(CompiledGraph *c);

/* Estimated FLOPs and bytes moved by one run of the whole program. */
double compiled_flops(const CompiledGraph *c);
double compiled_bytes(const CompiledGraph *c);

/* Prints the stage times on one line each ("  passes  123.4 ms"). */
void pipeline_times_print(const PipelineTimes *t, FILE *f);

/* ---- the compile report (pipeline_report.c) ---- */

/* What the report adds to the CompiledGraph's own figures. */
typedef struct {
    const char *graph_path; /* the YAML file */
    long long meta_batch;   /* tasks the graph was built for */
    int fused_kernels;      /* kernel counts of the optimized graph with and without fusion */
    int unfused_kernels;
    double cc_ms;   /* the C compiler's wall time; < 0: not run, or unknown */
    bool cc_cached; /* the object came from the cache (cc_ms is then the recorded time) */
} PipelineReportInfo;

/* Counts the kernels g lowers to (with or without fusion) into *n. */
int pipeline_count_kernels(const Graph *g, bool fuse, int *n, MamlError *err);

/* The report's head as text: nodes before and after each pass, kernels, memory, FLOPs and bytes
 * per step, and the compile time split into the compiler's stages and the C compiler. */
void pipeline_report_text(const CompiledGraph *c, const PipelineReportInfo *info, FILE *f);

/* The whole report as one JSON object, ending with a newline:
 * {"graph", "meta_batch", "fused", "nodes_raw", "passes": (pass_report_json), "live_nodes",
 *  "n_kernels", "fused_kernels", "unfused_kernels", "memory": {"arena_bytes",
 *  "sum_intermediates_bytes", "lower_bound_bytes", "input_bytes", "peak_over_bound"},
 *  "flops_per_step", "bytes_per_step", "compile_ms": {"build", "passes", "lower", "plan", "render",
 *  "total_without_cc", "cc", "cc_cached"}, "kernels": [{"name", "kind", "fuses", "nodes",
 *  "flops", "bytes"}, ...]} */
void pipeline_report_json(const CompiledGraph *c, const PipelineReportInfo *info, FILE *f);

/* `mamlc compile --backend cpu`: writes DIR/kernels.c (c->source), DIR/plan.json and
 * DIR/report.txt (pipeline_report_text, then codegen_write_report's kernel table). */
int pipeline_write_dir(const CompiledGraph *c, const PipelineReportInfo *info, const char *dir,
                       MamlError *err);

#endif
