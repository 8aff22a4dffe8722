/* Code generators: a KernelProgram plus its memory plan rendered to source from templates/, and
 * the plan and report files `mamlc compile` writes beside it. */
#ifndef MAMLC_CODEGEN_H
#define MAMLC_CODEGEN_H

#include <stdbool.h>
#include <stdio.h>

#include "graph.h"
#include "kernel.h"
#include "memplan.h"
#include "template.h"

typedef struct {
    bool f64;           /* typedef double real (else float); must match the plan's elem_size */
    const char *source; /* what the program was compiled from, for the header comment */
} CodegenOptions;

/* Renders p to one C file (templates/c/): a static function per kernel taking the arena base,
 * the table mamlc_kernels[], mamlc_n_kernels, mamlc_real_size, mamlc_arena_bytes and
 * mamlc_run(real *arena); mamlc_so_hash when compiled with -DMAMLC_SO_HASH. Appends to out. */
int codegen_c(const Graph *g, const KernelProgram *p, const MemPlan *m, const CodegenOptions *opt,
              StrBuf *out, MamlError *err);

/* Writes the launch plan as JSON: arena size, buffers (offsets, inputs by name), kernels in order
 * with the nodes they fuse, outputs. */
int codegen_write_plan_json(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                            MamlError *err);

/* Writes a human-readable report: node and kernel counts, memory figures, estimated FLOPs and
 * bytes per kernel. */
int codegen_write_report(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                         MamlError *err);

/* What codegen_write_cpu_dir made. */
typedef struct {
    int kernels, unfused_kernels, live_nodes;
    long long arena_bytes, lower_bound;
    double seconds; /* lowering, planning and rendering (not the C compiler) */
} CpuCompileSummary;

/* `mamlc compile --backend cpu`: lowers g with fusion, plans it for f32 (or f64) and writes
 * DIR/kernels.c, DIR/plan.json and DIR/report.txt. summary may be NULL. */
int codegen_write_cpu_dir(const Graph *g, const char *dir, const char *source, bool f64,
                          CpuCompileSummary *summary, MamlError *err);

#endif
