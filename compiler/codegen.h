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
    /* CUDA only (--conv tensor): float32 convolution-family kernels large enough to pay run as
     * implicit GEMMs on tensor cores in 3xTF32 (templates/cuda/conv_mma.cu.tmpl; compute
     * capability 8.0 or newer); the others keep the direct templates. */
    bool tensor_convs;
    /* CUDA only (--conv auto): the kernels as without tensor_convs, and besides, every kernel
     * that has a tensor-core form also in that form, as a second function (CudaCode.tensor), so
     * that the backend can measure both and launch the faster. */
    bool tensor_variants;
} CodegenOptions;

/* Renders p to one C file (templates/c/): a static function per kernel taking the arena base,
 * the table mamlc_kernels[], mamlc_n_kernels, mamlc_real_size, mamlc_arena_bytes and
 * mamlc_run(real *arena); mamlc_so_hash when compiled with -DMAMLC_SO_HASH. Appends to out. */
int codegen_c(const Graph *g, const KernelProgram *p, const MemPlan *m, const CodegenOptions *opt,
              StrBuf *out, MamlError *err);

/* Opens DIR/name for writing (its path into path), or fails naming it. */
FILE *codegen_open_output(const char *dir, const char *name, char *path, size_t size,
                          MamlError *err);
/* Closes f, and returns rc, or a failure naming path when a write or the close failed and rc was
 * 0 (a full disk shows at the close). */
int codegen_close_output(FILE *f, const char *path, int rc, MamlError *err);

/* Writes s as a JSON string literal (quotes and escapes included). */
void json_write_string(FILE *f, const char *s);

/* Writes the launch plan as JSON: arena size, buffers (offsets, inputs by name), kernels in order
 * with the nodes they fuse, outputs. */
int codegen_write_plan_json(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                            MamlError *err);

/* Writes a human-readable report: node and kernel counts, memory figures, estimated FLOPs and
 * bytes per kernel. */
int codegen_write_report(FILE *f, const Graph *g, const KernelProgram *p, const MemPlan *m,
                         MamlError *err);

/* How the cuda backend launches one kernel of kernels.cu: 256 threads per block, static shared
 * memory only, the kernel's buffers as pointer parameters. */
#define CUDA_MAX_ARGS 64
typedef struct {
    char name[48]; /* the kernel's name in the KernelProgram */
    int function;  /* index into CudaCode.functions; -1 for a tensor variant that is none */
    unsigned grid[3], block[3];
    int n_args;
    int args[CUDA_MAX_ARGS]; /* buffer ids, in parameter order: pass arena + offset[buf] */
} CudaLaunch;

/* One extern "C" __global__ function of the rendered text. Kernels that differ only in their
 * buffers share a function; its name is its kind and a hash of its text ("warp_0123456789abcdef"),
 * so the same function gets the same name in every program. */
typedef struct {
    char name[48];
    size_t begin, end; /* its bytes in the rendered text */
} CudaFunction;

/* The layout of a rendered program: text [0, header_end) describes the program, [header_end,
 * prelude_end) is the prelude every function needs (it depends only on the real type and on
 * CodegenOptions.tensor_convs and tensor_variants), then the functions. A piece made of the prelude
 * and any subset of the functions compiles on its own. */
typedef struct {
    CudaLaunch *launches; /* p->n_kernels entries */
    /* p->n_kernels entries: with CodegenOptions.tensor_variants, kernel i's tensor-core form (same
     * arguments, its own function and grid), or function -1 where it has none; else all -1 */
    CudaLaunch *tensor;
    CudaFunction *functions; /* 2 x p->n_kernels entries, the first n_functions used */
    int n_functions, n_kernels;
    size_t header_end, prelude_end;
} CudaCode;

/* Allocates code's arrays for n_kernels kernels; cuda_code_free releases them (also after a
 * failed alloc or render). */
int cuda_code_alloc(CudaCode *code, int n_kernels, MamlError *err);
void cuda_code_free(CudaCode *code);

/* Renders p to one CUDA C file (templates/cuda/) appended to out (which must be empty: code's
 * offsets count from its start), and fills code: every kernel's launch, every function's span. */
int codegen_cuda(const Graph *g, const KernelProgram *p, const MemPlan *m,
                 const CodegenOptions *opt, StrBuf *out, CudaCode *code, MamlError *err);

/* What codegen_write_cuda_dir made. */
typedef struct {
    int kernels, functions, unfused_kernels, live_nodes;
    long long arena_bytes, lower_bound, source_bytes;
    double seconds; /* lowering, planning and rendering (not NVRTC) */
} CudaCompileSummary;

/* `mamlc compile --backend cuda`: lowers g with fusion, plans it for f32 (or f64, opt->f64) and
 * writes DIR/kernels.cu (rendered with opt), DIR/plan.json and DIR/report.txt (with each kernel's
 * launch). summary may be NULL. */
int codegen_write_cuda_dir(const Graph *g, const char *dir, const CodegenOptions *opt,
                           CudaCompileSummary *summary, MamlError *err);

#endif
