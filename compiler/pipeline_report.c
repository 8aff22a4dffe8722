/* The compile report of a CompiledGraph: text for report.txt and the terminal, JSON for machines,
 * and the directory `mamlc compile --backend cpu` writes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"
#include "pipeline.h"

int pipeline_count_kernels(const Graph *g, bool fuse, int *n, MamlError *err) {
    KernelProgram p;
    memset(&p, 0, sizeof p);
    int rc = kernels_lower(g, fuse, &p, err);
    *n = rc == 0 ? p.n_kernels : 0;
    kernel_program_free(&p);
    return rc;
}

static double mib(long long bytes) {
    return (double)bytes / 1048576.0;
}

static void text_passes(const CompiledGraph *c, FILE *f) {
    const PassReport *r = &c->passes;
    fprintf(f, "passes: %d -> %d nodes in %d round%s%s, %.1f ms\n", r->nodes_before, r->nodes_after,
            r->rounds, r->rounds == 1 ? "" : "s", r->fixed_point ? " (fixed point)" : "",
            r->total_ms);
    for (int i = 0; i < r->n_steps; i++) {
        const PassStep *s = &r->steps[i];
        fprintf(f, "  round %-2d %-9s %7d nodes  %6d rewrites  %7.1f ms\n", s->round, s->pass,
                s->nodes, s->rewrites, s->ms);
    }
}

static void text_cc(const PipelineReportInfo *info, FILE *f) {
    if (info->cc_ms < 0 && !info->cc_cached)
        fprintf(f, "  C compiler                 not run\n");
    else if (info->cc_ms < 0)
        fprintf(f, "  C compiler                 cached (time not recorded)\n");
    else
        fprintf(f, "  C compiler                 %9.1f ms%s\n", info->cc_ms,
                info->cc_cached ? " (cached: as measured when the object was built)" : "");
}

void pipeline_report_text(const CompiledGraph *c, const PipelineReportInfo *info, FILE *f) {
    const MemPlan *m = &c->plan;
    fprintf(f, "graph %s, meta_batch %lld: %d nodes built\n",
            info->graph_path ? info->graph_path : "?", info->meta_batch, c->raw_nodes);
    text_passes(c, f);
    fprintf(f, "kernels: %d (%s), %d with fusion, %d without; %d live nodes\n", c->prog.n_kernels,
            c->prog.fused ? "fused" : "unfused", info->fused_kernels, info->unfused_kernels,
            c->prog.n_live_nodes);
    fprintf(f,
            "memory: arena peak %.2f MiB, sum of intermediates %.2f MiB, liveness lower bound "
            "%.2f MiB (peak / bound %.3f)\n",
            mib(m->arena_bytes), mib(m->temp_bytes), mib(m->lower_bound),
            m->lower_bound ? (double)m->arena_bytes / (double)m->lower_bound : 1.0);
    fprintf(f, "work per step (estimates): %.3f GFLOP, %.1f MiB moved\n", compiled_flops(c) / 1e9,
            compiled_bytes(c) / 1048576.0);
    fprintf(f, "compile time:\n");
    pipeline_times_print(&c->times, f);
    text_cc(info, f);
}

static void json_memory(const MemPlan *m, FILE *f) {
    fprintf(f,
            "\"memory\": {\"arena_bytes\": %lld, \"sum_intermediates_bytes\": %lld, "
            "\"lower_bound_bytes\": %lld, \"input_bytes\": %lld, \"peak_over_bound\": %.4f}",
            (long long)m->arena_bytes, (long long)m->temp_bytes, (long long)m->lower_bound,
            (long long)m->input_bytes,
            m->lower_bound ? (double)m->arena_bytes / (double)m->lower_bound : 1.0);
}

static void json_times(const PipelineTimes *t, const PipelineReportInfo *info, FILE *f) {
    fprintf(f,
            "\"compile_ms\": {\"build\": %.3f, \"passes\": %.3f, \"lower\": %.3f, \"plan\": %.3f, "
            "\"render\": %.3f, \"total_without_cc\": %.3f, \"cc\": %.3f, \"cc_cached\": %s}",
            t->build_ms, t->passes_ms, t->lower_ms, t->plan_ms, t->render_ms, t->total_ms,
            info->cc_ms, info->cc_cached ? "true" : "false");
}

static void json_kernel_list(const CompiledGraph *c, FILE *f) {
    fprintf(f, "\"kernels\": [");
    for (int i = 0; i < c->prog.n_kernels; i++) {
        const Kernel *k = &c->prog.kernels[i];
        char what[512];
        kernel_describe(&c->graph, k, what, sizeof what);
        fprintf(f, "%s\n  {\"name\": \"%s\", \"kind\": \"%s\", \"fuses\": ", i ? "," : "", k->name,
                kernel_kind_name(k->kind));
        json_write_string(f, what);
        fprintf(f, ", \"nodes\": %d, \"flops\": %.0f, \"bytes\": %.0f}", k->n_nodes,
                kernel_flops(k), kernel_bytes(&c->prog, k, (int)c->plan.elem_size));
    }
    fprintf(f, "]");
}

void pipeline_report_json(const CompiledGraph *c, const PipelineReportInfo *info, FILE *f) {
    fprintf(f, "{\"graph\": ");
    json_write_string(f, info->graph_path);
    fprintf(f, ", \"meta_batch\": %lld, \"fused\": %s, \"nodes_raw\": %d, \"passes\": ",
            info->meta_batch, c->prog.fused ? "true" : "false", c->raw_nodes);
    pass_report_json(&c->passes, f);
    fprintf(f,
            ",\n\"live_nodes\": %d, \"n_kernels\": %d, \"fused_kernels\": %d, "
            "\"unfused_kernels\": %d,\n",
            c->prog.n_live_nodes, c->prog.n_kernels, info->fused_kernels, info->unfused_kernels);
    json_memory(&c->plan, f);
    fprintf(f, ",\n\"flops_per_step\": %.0f, \"bytes_per_step\": %.0f,\n", compiled_flops(c),
            compiled_bytes(c));
    json_times(&c->times, info, f);
    fprintf(f, ",\n");
    json_kernel_list(c, f);
    fprintf(f, "}\n");
}

int pipeline_write_dir(const CompiledGraph *c, const PipelineReportInfo *info, const char *dir,
                       MamlError *err) {
    char path[2048];
    FILE *f = codegen_open_output(dir, "kernels.c", path, sizeof path, err);
    if (!f) return -1;
    size_t len = c->source.len;
    int rc = len && fwrite(c->source.data, 1, len, f) != len
                 ? maml_fail(err, "%s: short write", path)
                 : 0;
    if (codegen_close_output(f, path, rc, err)) return -1;
    if (!(f = codegen_open_output(dir, "plan.json", path, sizeof path, err))) return -1;
    rc = codegen_write_plan_json(f, &c->graph, &c->prog, &c->plan, err);
    if (codegen_close_output(f, path, rc, err)) return -1;
    if (!(f = codegen_open_output(dir, "report.txt", path, sizeof path, err))) return -1;
    pipeline_report_text(c, info, f);
    fputc('\n', f);
    rc = codegen_write_report(f, &c->graph, &c->prog, &c->plan, err);
    return codegen_close_output(f, path, rc, err);
}
