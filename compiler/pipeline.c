/* The compile pipeline: passes, lowering with fusion, memory plan, C rendering, each timed. */
#include "pipeline.h"

#include <string.h>

#include "clock.h"
#include "codegen.h"

PipelineOptions pipeline_default_options(void) {
    PipelineOptions o = {
        .no_fuse = false, .f64 = false, .target = PIPELINE_TARGET_NONE, .source = NULL};
    return o;
}

static int render_c(CompiledGraph *c, const PipelineOptions *opt, MamlError *err) {
    CodegenOptions co = {.f64 = opt->f64,
                         .source = opt->source ? opt->source : PIPELINE_DEFAULT_SOURCE};
    return codegen_c(&c->graph, &c->prog, &c->plan, &co, &c->source, err);
}

int compile_pipeline(const Graph *raw, const PipelineOptions *opt, CompiledGraph *out,
                     MamlError *err) {
    PipelineOptions defaults = pipeline_default_options();
    if (!opt) opt = &defaults;
    memset(out, 0, sizeof *out);
    graph_init(&out->graph);
    sb_init(&out->source);
    out->raw_nodes = raw->n_nodes;
    out->f64 = opt->f64;
    if (graph_status(raw, err)) return -1;
    PipelineTimes *t = &out->times;
    double t0 = maml_now_ms();
    if (passes_optimize(raw, &out->graph, &out->passes, err)) return -1;
    double t1 = maml_now_ms();
    t->passes_ms = t1 - t0;
    if (kernels_lower(&out->graph, !opt->no_fuse, &out->prog, err)) return -1;
    double t2 = maml_now_ms();
    t->lower_ms = t2 - t1;
    if (memplan_build(&out->prog, opt->f64 ? 8 : 4, &out->plan, err)) return -1;
    double t3 = maml_now_ms();
    t->plan_ms = t3 - t2;
    if (opt->target == PIPELINE_TARGET_C && render_c(out, opt, err)) return -1;
    t->render_ms = maml_now_ms() - t3;
    t->total_ms = t->passes_ms + t->lower_ms + t->plan_ms + t->render_ms;
    return 0;
}

int compile_pipeline_spec(const GraphSpec *spec, MamlGraphKind kind, int64_t tasks,
                          const PipelineOptions *opt, Graph *raw, MamlStages *stages,
                          CompiledGraph *out, MamlError *err) {
    memset(out, 0, sizeof *out);
    graph_init(raw);
    double t0 = maml_now_ms();
    if (maml_build(spec, kind, tasks, raw, stages, err)) return -1;
    double build = maml_now_ms() - t0;
    if (compile_pipeline(raw, opt, out, err)) return -1;
    out->times.build_ms = build;
    out->times.total_ms += build;
    return 0;
}

void compiled_graph_free(CompiledGraph *c) {
    sb_free(&c->source);
    memplan_free(&c->plan);
    kernel_program_free(&c->prog);
    graph_free(&c->graph);
    memset(c, 0, sizeof *c);
}

double compiled_flops(const CompiledGraph *c) {
    double s = 0;
    for (int i = 0; i < c->prog.n_kernels; i++) s += kernel_flops(&c->prog.kernels[i]);
    return s;
}

double compiled_bytes(const CompiledGraph *c) {
    double s = 0;
    int elem = (int)c->plan.elem_size;
    for (int i = 0; i < c->prog.n_kernels; i++)
        s += kernel_bytes(&c->prog, &c->prog.kernels[i], elem);
    return s;
}

void pipeline_times_print(const PipelineTimes *t, FILE *f) {
    fprintf(f, "  build graph (maml_build)   %9.1f ms\n", t->build_ms);
    fprintf(f, "  passes                     %9.1f ms\n", t->passes_ms);
    fprintf(f, "  lower + fuse               %9.1f ms\n", t->lower_ms);
    fprintf(f, "  memory plan                %9.1f ms\n", t->plan_ms);
    fprintf(f, "  render C                   %9.1f ms\n", t->render_ms);
    fprintf(f, "  total without C compiler   %9.1f ms\n", t->total_ms);
}
