/* `mamlc bench`'s output: the totals and the per-kernel table, as text or one JSON object. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "codegen.h"

/* One row of the kernel table, derived from the timings and the kernel's estimates. */
typedef struct {
    int index;
    double ms, gflops, gbs, share;
} KernelRow;

static KernelRow kernel_row(const BenchContext *ctx, const BenchResult *r, int i) {
    const CompiledGraph *c = ctx->c;
    const Kernel *k = &c->prog.kernels[i];
    KernelRow row = {.index = i, .ms = r->kernel_ms[i]};
    double s = row.ms * 1e-3;
    row.gflops = s > 0 ? kernel_flops(k) / s / 1e9 : 0;
    row.gbs = s > 0 ? kernel_bytes(&c->prog, k, (int)c->plan.elem_size) / s / 1e9 : 0;
    row.share = r->step_ms_median > 0 ? row.ms / r->step_ms_median : 0;
    return row;
}

static int by_time_desc(const void *a, const void *b) {
    double x = ((const KernelRow *)a)->ms, y = ((const KernelRow *)b)->ms;
    return (x < y) - (x > y);
}

static bool has_kernels(const BenchContext *ctx, const BenchResult *r) {
    return ctx->c && r->n_kernels == ctx->c->prog.n_kernels && r->n_kernels > 0;
}

static void text_totals(const BenchContext *ctx, const BenchResult *r, FILE *f) {
    double s = r->step_ms_median * 1e-3;
    fprintf(f, "bench %s: backend %s%s, meta_batch %lld, %d images per step\n", ctx->graph_path,
            ctx->backend,
            strcmp(ctx->backend, "ref") == 0 ? " (interpreter)"
            : ctx->fused                     ? " (fused)"
                                             : " (unfused)",
            ctx->meta_batch, ctx->images_per_step);
    if (ctx->why) fprintf(f, "  %s\n", ctx->why);
    fprintf(f, "step: median %.3f ms (min %.3f, max %.3f) over %d reps after %d warm-up\n",
            r->step_ms_median, r->step_ms_min, r->step_ms_max, r->reps, r->warmup);
    fprintf(f,
            "pipelined: %.3f ms per step over %d steps back to back, the next batch staged "
            "during each (as mamlc train runs them)\n",
            r->pipelined_ms, r->reps);
    if (s > 0) fprintf(f, "  %.1f images/s\n", ctx->images_per_step / s);
    if (ctx->c && s > 0) {
        double flops = compiled_flops(ctx->c), gf = flops / s / 1e9;
        fprintf(f, "  %.3f GFLOP per step (estimate) -> %.1f GFLOP/s = %.1f%% of peak; %.1f GB/s\n",
                flops / 1e9, gf, 100 * gf / ctx->peak->peak_gflops,
                compiled_bytes(ctx->c) / s / 1e9);
    }
    fprintf(f, "  %s\n", ctx->peak->assumption);
}

static void text_table(const BenchContext *ctx, const BenchResult *r, int top, FILE *f) {
    KernelRow *rows = malloc((size_t)r->n_kernels * sizeof *rows);
    if (!rows) return;
    for (int i = 0; i < r->n_kernels; i++) rows[i] = kernel_row(ctx, r, i);
    qsort(rows, (size_t)r->n_kernels, sizeof *rows, by_time_desc);
    fprintf(f,
            "kernels: %d, sum of per-kernel medians %.3f ms (%.1f%% of the step median, which also "
            "copies inputs in and outputs out), medians over %d instrumented steps\n",
            r->n_kernels, r->kernels_ms,
            r->step_ms_median > 0 ? 100 * r->kernels_ms / r->step_ms_median : 0, r->kernel_reps);
    fprintf(f, "%-24s %-18s %10s %9s %8s %7s  %s\n", "kernel", "kind", "ms", "GFLOP/s", "GB/s",
            "share", "fuses");
    int n = top > 0 && top < r->n_kernels ? top : r->n_kernels;
    for (int j = 0; j < n; j++) {
        const Kernel *k = &ctx->c->prog.kernels[rows[j].index];
        char what[160];
        kernel_describe(&ctx->c->graph, k, what, sizeof what);
        fprintf(f, "%-24s %-18s %10.3f %9.2f %8.2f %6.1f%%  %s\n", k->name,
                kernel_kind_name(k->kind), rows[j].ms, rows[j].gflops, rows[j].gbs,
                100 * rows[j].share, what);
    }
    if (n < r->n_kernels) fprintf(f, "(%d more kernels; --top 0 lists all)\n", r->n_kernels - n);
    free(rows);
}

void bench_print_text(const BenchContext *ctx, const BenchResult *r, int top, FILE *f) {
    text_totals(ctx, r, f);
    if (has_kernels(ctx, r)) text_table(ctx, r, top, f);
}

static void json_kernels(const BenchContext *ctx, const BenchResult *r, FILE *f) {
    fprintf(f, "\"kernels\": [");
    for (int i = 0; has_kernels(ctx, r) && i < r->n_kernels; i++) {
        const Kernel *k = &ctx->c->prog.kernels[i];
        KernelRow row = kernel_row(ctx, r, i);
        char what[512];
        kernel_describe(&ctx->c->graph, k, what, sizeof what);
        fprintf(f, "%s\n  {\"name\": \"%s\", \"kind\": \"%s\", \"fuses\": ", i ? "," : "", k->name,
                kernel_kind_name(k->kind));
        json_write_string(f, what);
        fprintf(f,
                ", \"ms\": %.6f, \"gflops\": %.4f, \"gbs\": %.4f, \"share\": %.6f, "
                "\"flops\": %.0f, \"bytes\": %.0f}",
                row.ms, row.gflops, row.gbs, row.share, kernel_flops(k),
                kernel_bytes(&ctx->c->prog, k, (int)ctx->c->plan.elem_size));
    }
    fprintf(f, "]");
}

static void json_work(const BenchContext *ctx, const BenchResult *r, FILE *f) {
    double s = r->step_ms_median * 1e-3;
    double flops = ctx->c ? compiled_flops(ctx->c) : 0, bytes = ctx->c ? compiled_bytes(ctx->c) : 0;
    double gf = s > 0 ? flops / s / 1e9 : 0;
    fprintf(f,
            "\"images_per_step\": %d, \"images_per_s\": %.3f, \"flops_per_step\": %.0f, "
            "\"bytes_per_step\": %.0f, \"gflops\": %.3f, \"gbs\": %.3f,\n",
            ctx->images_per_step, s > 0 ? ctx->images_per_step / s : 0, flops, bytes, gf,
            s > 0 ? bytes / s / 1e9 : 0);
    fprintf(f, "\"peak_gflops\": %.3f, \"peak_fraction\": %.5f, \"peak_assumption\": ",
            ctx->peak->peak_gflops, ctx->peak->peak_gflops > 0 ? gf / ctx->peak->peak_gflops : 0);
    json_write_string(f, ctx->peak->assumption);
    fprintf(f, ",\n");
}

void bench_print_json(const BenchContext *ctx, const BenchResult *r, FILE *f) {
    fprintf(f, "{\"graph\": ");
    json_write_string(f, ctx->graph_path);
    fprintf(f, ", \"backend\": ");
    json_write_string(f, ctx->backend);
    fprintf(f, ", \"fused\": %s, \"meta_batch\": %lld,\n", ctx->fused ? "true" : "false",
            ctx->meta_batch);
    fprintf(f,
            "\"step_ms_median\": %.6f, \"step_ms_min\": %.6f, \"step_ms_max\": %.6f, \"reps\": %d, "
            "\"warmup\": %d, \"pipelined_ms\": %.6f,\n",
            r->step_ms_median, r->step_ms_min, r->step_ms_max, r->reps, r->warmup, r->pipelined_ms);
    json_work(ctx, r, f);
    fprintf(f, "\"n_kernels\": %d, \"kernel_reps\": %d, \"kernels_ms_sum\": %.6f,\n",
            ctx->c ? ctx->c->prog.n_kernels : 0, r->kernel_reps, r->kernels_ms);
    json_kernels(ctx, r, f);
    fprintf(f, "}\n");
}
