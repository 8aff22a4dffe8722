/* The launch plan (plan.json) and the compile report (report.txt) written beside kernels.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"

void json_write_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_buffers(FILE *f, const KernelProgram *p, const MemPlan *m) {
    fprintf(f, "  \"buffers\": [\n");
    for (int b = 0; b < p->n_bufs; b++) {
        const KBuffer *kb = &p->bufs[b];
        fprintf(f, "    {\"id\": %d, \"kind\": \"%s\", \"node\": %d, \"elements\": %lld, ", b,
                kb->kind == BUF_INPUT ? "input" : "temp", kb->node, (long long)kb->numel);
        if (kb->name) {
            fprintf(f, "\"name\": ");
            json_write_string(f, kb->name);
            fprintf(f, ", ");
        }
        fprintf(f,
                "\"offset\": %lld, \"bytes\": %lld, \"first\": %d, \"last\": %d, "
                "\"inplace_of\": %d, \"output\": %s}%s\n",
                (long long)m->offset[b], (long long)m->bytes[b], m->first[b], m->last[b],
                m->inplace[b], kb->is_output ? "true" : "false", b + 1 < p->n_bufs ? "," : "");
    }
    fprintf(f, "  ],\n");
}

static int json_kernels(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                        MamlError *err) {
    int *reads = maml_alloc(((size_t)p->n_bufs + 1) * sizeof *reads, err);
    if (!reads) return -1;
    fprintf(f, "  \"kernels\": [\n");
    for (int i = 0; i < p->n_kernels; i++) {
        const Kernel *k = &p->kernels[i];
        char what[512];
        kernel_describe(g, k, what, sizeof what);
        fprintf(f, "    {\"name\": \"%s\", \"kind\": \"%s\", \"root\": %d, \"fuses\": ", k->name,
                kernel_kind_name(k->kind), k->root);
        json_write_string(f, what);
        fprintf(f, ", \"nodes\": [");
        for (int j = 0; j < k->n_nodes; j++) fprintf(f, "%s%d", j ? ", " : "", k->nodes[j]);
        fprintf(f, "], \"reads\": [");
        int n = kernel_reads(k, reads, p->n_bufs);
        for (int j = 0; j < n; j++) fprintf(f, "%s%d", j ? ", " : "", reads[j]);
        fprintf(f, "], \"writes\": %d, \"stores\": [", kernel_writes(k));
        n = kernel_stores(k, reads, p->n_bufs);
        for (int j = 0; j < n; j++) fprintf(f, "%s%d", j ? ", " : "", reads[j]);
        fprintf(f, "], \"flops\": %.0f, \"bytes\": %.0f}%s\n", kernel_flops(k),
                kernel_bytes(p, k, (int)m->elem_size), i + 1 < p->n_kernels ? "," : "");
    }
    free(reads);
    fprintf(f, "  ],\n");
    return 0;
}

int codegen_write_plan_json(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                            MamlError *err) {
    fprintf(f,
            "{\n  \"real_bytes\": %zu,\n  \"arena_bytes\": %lld,\n  \"lower_bound_bytes\": %lld,\n"
            "  \"graph_nodes\": %d,\n  \"live_nodes\": %d,\n  \"fused\": %s,\n",
            m->elem_size, (long long)m->arena_bytes, (long long)m->lower_bound, p->n_graph_nodes,
            p->n_live_nodes, p->fused ? "true" : "false");
    fprintf(f,
            "  \"input_bytes\": %lld,\n  \"data_bytes\": %lld,\n  \"feedback_bytes\": %lld,\n"
            "  \"outputs_at\": %lld,\n  \"outputs_bytes\": %lld,\n",
            (long long)m->input_bytes, (long long)m->data_bytes, (long long)m->feedback_bytes,
            (long long)m->outputs_at, (long long)m->outputs_bytes);
    json_buffers(f, p, m);
    if (json_kernels(f, g, p, m, err)) return -1;
    fprintf(f, "  \"outputs\": [\n");
    for (int i = 0; i < p->n_outputs; i++) {
        const KOutput *o = &p->outputs[i];
        char shape[128];
        fprintf(f, "    {\"name\": ");
        json_write_string(f, o->name);
        fprintf(f, ", \"buffer\": %d, \"shape\": %s}%s\n", o->buf,
                shape_str(o->shape, shape, sizeof shape), i + 1 < p->n_outputs ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (ferror(f)) return maml_fail(err, "cannot write the plan: %s", strerror(errno));
    return 0;
}

static double mib(int64_t bytes) {
    return (double)bytes / (1024.0 * 1024.0);
}

int codegen_write_report(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                         MamlError *err) {
    int kinds[KERNEL_KIND_COUNT] = {0};
    double flops = 0, bytes = 0;
    for (int i = 0; i < p->n_kernels; i++) {
        kinds[p->kernels[i].kind]++;
        flops += kernel_flops(&p->kernels[i]);
        bytes += kernel_bytes(p, &p->kernels[i], (int)m->elem_size);
    }
    fprintf(f, "graph: %d nodes, %d live (%d outputs)\n", p->n_graph_nodes, p->n_live_nodes,
            p->n_outputs);
    fprintf(f, "kernels: %d (%s)\n", p->n_kernels, p->fused ? "fused" : "one per node");
    for (int k = 0; k < KERNEL_KIND_COUNT; k++)
        if (kinds[k]) fprintf(f, "  %-20s %5d\n", kernel_kind_name((KernelKind)k), kinds[k]);
    fprintf(f, "memory (%zu-byte reals):\n", m->elem_size);
    fprintf(f, "  arena peak           %10.2f MiB\n", mib(m->arena_bytes));
    fprintf(f, "  liveness lower bound %10.2f MiB (peak / bound = %.3f)\n", mib(m->lower_bound),
            m->lower_bound ? (double)m->arena_bytes / (double)m->lower_bound : 1.0);
    fprintf(f, "  sum of intermediates %10.2f MiB\n", mib(m->temp_bytes));
    fprintf(f, "  graph inputs         %10.2f MiB (one block from offset 0, the batch first)\n",
            mib(m->input_bytes));
    fprintf(f, "  graph outputs        %10.2f MiB (one block at %.2f MiB)\n", mib(m->outputs_bytes),
            mib(m->outputs_at));
    fprintf(f, "  in-place writes      %10d\n", m->n_inplace);
    fprintf(f, "per step: %.3f GFLOP, %.1f MiB moved (estimates)\n\n", flops / 1e9,
            bytes / 1048576.0);
    fprintf(f, "%-28s %-18s %12s %12s  %s\n", "kernel", "kind", "MFLOP", "KiB", "fuses");
    for (int i = 0; i < p->n_kernels; i++) {
        const Kernel *k = &p->kernels[i];
        char what[512];
        kernel_describe(g, k, what, sizeof what);
        fprintf(f, "%-28s %-18s %12.3f %12.1f  %s\n", k->name, kernel_kind_name(k->kind),
                kernel_flops(k) / 1e6, kernel_bytes(p, k, (int)m->elem_size) / 1024.0, what);
    }
    if (ferror(f)) return maml_fail(err, "cannot write the report: %s", strerror(errno));
    return 0;
}

FILE *codegen_open_output(const char *dir, const char *name, char *path, size_t size,
                          MamlError *err) {
    snprintf(path, size, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) maml_fail(err, "%s: cannot write: %s", path, strerror(errno));
    return f;
}

int codegen_close_output(FILE *f, const char *path, int rc, MamlError *err) {
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0) bad = true;
    if (bad && rc == 0) return maml_fail(err, "%s: cannot write: %s", path, strerror(errno));
    return rc;
}
