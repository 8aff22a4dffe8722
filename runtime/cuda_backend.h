/* Backend "cuda": the graph through the compile pipeline (passes, fusion, memory plan), rendered to
 * CUDA C (compiler/codegen_cuda.c), compiled by NVRTC in parallel pieces through the kernel cache,
 * and run with the driver API loaded at run time.
 *
 * One device allocation holds the whole arena (the memory plan's figure, printed when the backend
 * opens). Inputs go through pinned host memory into their fixed places in the arena; the whole
 * step (input copies, every kernel, output copies) is captured once into a CUDA graph and
 * replayed by every run. Every driver call is checked and names the call and the kernel.
 *
 * A batch staged for the next run (backend_stage) is copied at once from pinned memory into one
 * of two device slots on a second stream, overlapping the running step; the next step waits for
 * that copy through an event and runs the graph variant that takes its batch from the slot (one
 * captured graph per slot, a third for batches from the inputs). The copy into a slot waits for
 * the step that last read it, so neither side ever sees the other's half-written batch.
 *
 * The memory plan keeps the inputs and the outputs in two blocks (compiler/memplan.h), so a step
 * moves its inputs in one copy and its outputs back in one. With backend_keep_state (the trainer)
 * the updated parameters and optimizer state stay on the device: one device copy at the end of
 * each step moves them from the outputs block to the inputs block, and only the loss and the
 * other outputs come back to the host; backend_get_state reads the state back when the trainer
 * validates or checkpoints.
 *
 * $MAMLC_CUDA_SYNC=1 runs the kernels one at a time with a synchronisation after each instead of
 * the graph, so an asynchronous fault (an illegal address) names the kernel that caused it.
 * $MAMLC_CUDA_DEVICE picks the device (default 0); $MAMLC_REQUIRE_CACHE=1 makes a kernel cache miss
 * an error (--require-cache).
 *
 * CudaOptions.conv (--conv) may hand the pure convolution kernels to cuDNN (runtime/cuda_conv.h):
 * their calls go on the same stream and into the same CUDA graph as the generated kernels. */
#ifndef MAMLC_CUDA_BACKEND_H
#define MAMLC_CUDA_BACKEND_H

#include <stdbool.h>

#include "backend.h"
#include "codegen.h"
#include "cuda_conv.h"
#include "cuda_nvrtc.h"
#include "pipeline.h"

typedef struct {
    bool no_fuse;          /* one kernel per node (for comparisons) */
    const char *cache_dir; /* NULL: kernel_cache_root()/cuda ($MAMLC_CACHE or ~/.cache/mamlc) */
    bool require_cache;    /* --require-cache: a kernel cache miss is an error */
    bool quiet;            /* do not print the device and memory line when opening */
    int device;            /* ordinal; -1: $MAMLC_CUDA_DEVICE or 0 */
    CudaConvMode conv;     /* --conv: generated (default), cudnn or auto */
} CudaOptions;

/* Defaults: fused, default cache, messages on, device from the environment, the process's conv
 * mode (cuda_set_defaults; generated unless set); require_cache when $MAMLC_REQUIRE_CACHE is set
 * (not "0") or cuda_set_defaults asked for it. */
CudaOptions cuda_default_options(void);

/* The command line's --conv and --require-cache for every cuda backend this process opens
 * without explicit options (backend_open, "auto" included). Call it before opening any backend
 * or starting threads; it is not synchronised. */
void cuda_set_defaults(CudaConvMode conv, bool require_cache);

/* Opens the cuda backend for g (which must outlive it); opt may be NULL. Fails with one line:
 * "no CUDA driver: ...", "no CUDA device: ...", NVRTC's errors (naming the kernel and line), or a
 * device allocation that does not fit (naming the plan's figure and what cuMemGetInfo reports). */
int cuda_backend_open(const Graph *g, Precision prec, const CudaOptions *opt, Backend **out,
                      MamlError *err);

/* Whether a CUDA driver and device are usable here (the driver opens and finds the device);
 * why gets a one-line reason either way: the device's description, or why not. */
bool cuda_device_available(char *why, int why_size);

/* ---- compiling (no device needed) ---- */

/* The NVRTC images of a rendered program, one per piece: the prelude with a share of the
 * functions, so the pieces compile in parallel and each is cached on its own. */
typedef struct {
    int n_pieces;
    NvrtcImage *images; /* per piece */
    int *piece_of;      /* per function: the piece holding it */
    int cached;         /* pieces that came from the cache */
    int threads;        /* compile threads used */
    double ms;          /* wall time of the whole compile */
} CudaImages;

/* Splits text (rendered by codegen_cuda, laid out by code) into pieces of similar estimated
 * compile cost (how many depends only on the text, so the cache keys do too) and compiles them
 * with opt on up to `threads` threads (0: one per online CPU, at most 16). out is always
 * initialised; free it with cuda_images_free. */
int cuda_compile_code(Nvrtc *n, const char *text, const CudaCode *code, const NvrtcOptions *opt,
                      int threads, CudaImages *out, MamlError *err);

void cuda_images_free(CudaImages *im);

/* ---- facts and timing for bench and tests ---- */

typedef struct {
    char device[320]; /* cuda_driver_describe */
    int arch;         /* 10 * major + minor */
    int n_kernels, n_functions, n_pieces, pieces_cached;
    double compile_ms;  /* NVRTC (or cache) wall time at open */
    CudaConvMode conv;  /* the --conv the backend was opened with */
    int cudnn_kernels;  /* kernels that run on cuDNN instead of their generated function */
    int tensor_kernels; /* kernels that --conv auto runs in their tensor-core form */
    long long arena_bytes, lower_bound;
    long long free_bytes, total_bytes; /* cuMemGetInfo before the arena was allocated */
    /* The device's FP32 peak: SMs x FP32 lanes per SM (64 on sm_70/sm_80, else 128) x 2 (FMA) x
     * the clock the driver reports; and its memory bandwidth: 2 (DDR) x memory clock x bus
     * width. Stated, not measured; peak_assumption says how each was made. */
    double peak_gflops, peak_gbs;
    char peak_assumption[256];
} CudaBackendInfo;

int cuda_backend_info(const Backend *b, CudaBackendInfo *info, MamlError *err);

/* The compiled graph and code an open cuda backend runs (kernels, plan, launches). */
const CompiledGraph *cuda_backend_compiled(const Backend *b);
const CudaCode *cuda_backend_code(const Backend *b);
/* Kernel i's launch as the step runs it: its generated function, or the tensor-core form --conv
 * auto chose; *on_cudnn says whether cuDNN runs the kernel instead. NULL when b is not an open
 * cuda backend or i is out of range. */
const CudaLaunch *cuda_backend_launch(const Backend *b, int i, bool *on_cudnn);

/* Launches kernel i alone on the arena (as left by the last run) and waits for it. */
int cuda_backend_run_kernel(Backend *b, int i, MamlError *err);

/* Times the captured step (copies and kernels, no host-side conversion) replayed reps times on
 * the inputs of the last run: ms[r] per replay, from CUDA events. */
int cuda_backend_time_steps(Backend *b, int reps, double *ms, MamlError *err);

/* Times every kernel alone: kernel_ms[i] = the mean over reps launches of kernel i, from CUDA
 * events, on the arena as left by the last run (so the inputs are realistic). */
int cuda_backend_time_kernels(Backend *b, int reps, double *kernel_ms, MamlError *err);

#endif
