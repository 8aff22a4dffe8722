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

typedef struct {
    bool no_fuse;          /* one kernel per node (for comparisons) */
    const char *cc;        /* NULL: $MAMLC_CC or "cc" */
    const char *cache_dir; /* NULL: $MAMLC_CACHE or ~/.cache/mamlc/cpu */
} CpuOptions;

/* Opens the cpu backend for g (which must outlive it); opt may be NULL for the defaults. */
int cpu_backend_open(const Graph *g, Precision prec, const CpuOptions *opt, Backend **out,
                     MamlError *err);

/* Whether a C compiler runs here (`CC --version`); when not, why gets a one-line reason. */
bool cpu_compiler_available(const char *cc, char *why, int why_size);

/* How many times this process has run the C compiler on kernels (a cache hit runs it 0 times). */
int cpu_backend_compile_count(void);

/* Facts about an open cpu backend, for reports and tests. */
typedef struct {
    int n_kernels;
    int n_graph_nodes;
    long long arena_bytes;
    bool cache_hit;          /* the object came from the cache */
    char so_path[1024];      /* the cached shared object */
    char source_path[1024];  /* the generated C file (written on a cache miss) */
} CpuBackendInfo;

int cpu_backend_info(const Backend *b, CpuBackendInfo *info, MamlError *err);

/* Runs kernel i alone on the backend's arena (as left by the last run), for per-kernel timing. */
int cpu_backend_run_kernel(Backend *b, int i, MamlError *err);

#endif
