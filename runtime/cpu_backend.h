/* Backend "cpu": the graph lowered to kernels (compiler/kernel.h), planned into one arena
 * (compiler/memplan.h), rendered to C (compiler/codegen.h), compiled by the system C compiler into
 * a shared object and loaded with dlopen.
 *
 * Compiled objects are cached in $MAMLC_CACHE (default ~/.cache/mamlc/cpu), keyed by an FNV-1a
 * hash of the source, the compiler, its flags and its `--version` output, so a second open of the
 * same graph compiles nothing. A cached object carries its key as the exported string
 * mamlc_so_hash and a checksum of its own bytes in a trailer; one that fails either check (or
 * dlopen) is rebuilt, never trusted. $MAMLC_CC picks the compiler (default cc) and
 * $MAMLC_CFLAGS replaces the default flags (-O3 -march=native -fopenmp). */
#ifndef MAMLC_CPU_BACKEND_H
#define MAMLC_CPU_BACKEND_H

#include <stdbool.h>

#include "backend.h"
#include "pipeline.h"

typedef struct {
    bool no_fuse;          /* one kernel per node (for comparisons) */
    const char *cc;        /* NULL: $MAMLC_CC or "cc" */
    const char *cache_dir; /* NULL: $MAMLC_CACHE or ~/.cache/mamlc/cpu */
} CpuOptions;

/* Opens the cpu backend for g (which must outlive it); opt may be NULL for the defaults. g goes
 * through compile_pipeline (compiler/pipeline.h): the backend runs the optimized graph, which
 * keeps g's inputs and outputs. *out is NULL on failure. */
int cpu_backend_open(const Graph *g, Precision prec, const CpuOptions *opt, Backend **out,
                     MamlError *err);

/* The same from a graph compile_pipeline already made from g (target C, f64 matching prec), for
 * callers that also write or report it: on success the backend takes cg over (cg is zeroed); on
 * failure cg is left as it was, still the caller's.
 * opt->no_fuse is ignored here (cg was lowered already). */
int cpu_backend_open_compiled(const Graph *g, Precision prec, const CpuOptions *opt,
                              CompiledGraph *cg, Backend **out, MamlError *err);

/* The compiled graph an open cpu backend runs (optimized graph, kernels, plan, pass report, stage
 * times); NULL when b is not a cpu backend. */
const CompiledGraph *cpu_backend_compiled(const Backend *b);

/* Whether a C compiler runs here (`CC --version`); when not, why gets a one-line reason. */
bool cpu_compiler_available(const char *cc, char *why, int why_size);

/* How many times this process has run the C compiler on kernels (a cache hit runs it 0 times). */
int cpu_backend_compile_count(void);

/* Facts about an open cpu backend, for reports and tests. */
typedef struct {
    int n_kernels;
    int n_graph_nodes;
    long long arena_bytes;
    bool cache_hit;         /* the object came from the cache */
    double cc_ms;           /* the C compiler's wall time for this object: measured by this open,
                               or on a cache hit as recorded when the object was built (-1:
                               unknown) */
    char so_path[1024];     /* the cached shared object */
    char source_path[1024]; /* the generated C file (written on a cache miss) */
} CpuBackendInfo;

int cpu_backend_info(const Backend *b, CpuBackendInfo *info, MamlError *err);

/* Runs kernel i alone on the backend's arena (as left by the last run), for per-kernel timing. */
int cpu_backend_run_kernel(Backend *b, int i, MamlError *err);

/* One instrumented step: copies inputs in, runs the kernels one at a time and stores each one's
 * wall time in kernel_ms[i] (n_kernels entries); outputs stay in the arena. */
int cpu_backend_run_timed(Backend *b, const TensorSet *inputs, double *kernel_ms, MamlError *err);

#endif
