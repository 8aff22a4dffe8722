/* The cuda backend's convolution lowering (--conv): which conv-family kernels cuDNN takes instead
 * of the generated ones, which run in their tensor-core form (auto), the measured choice of `auto`
 * kept beside the kernel cache, and running a lowered kernel on the backend's stream (so it is
 * captured into the step's CUDA graph like any kernel, and runs one at a time under
 * $MAMLC_CUDA_SYNC=1).
 *
 * Only a pure convolution is lowered: a CONV2D, CONV2D_GRAD_INPUT or CONV2D_GRAD_WEIGHT kernel
 * that computes exactly its one graph node from whole buffers, in float32. Today's fusion never
 * merges elementwise work into a conv template (template kernels read and write whole buffers),
 * so every conv kernel qualifies; a kernel that ever carries a fused prologue or epilogue, or runs
 * in float64, keeps its generated kernel (conv_kernel_lowerable says why).
 *
 * Layout (see cudnn_conv.h): cuDNN's grouped convolution reads activations as [N, T, C, H, W]
 * while the graph's are [T, N, C, H, W]. When T > 1 and N > 1 the lowering swaps the two outer
 * axes into scratch memory around the call (templates/cuda/transpose.cu.tmpl, compiled by NVRTC
 * through the kernel cache); with T == 1 or N == 1 the two layouts agree and cuDNN reads and writes
 * the arena directly. Weights [T, O, C, KH, KW] are cuDNN's grouped filter layout as they are. */
#ifndef MAMLC_CUDA_CONV_H
#define MAMLC_CUDA_CONV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda_driver.h"
#include "cudnn_conv.h"
#include "kernel_cache.h"
#include "pipeline.h"

/* --conv: how the cuda backend runs the convolution family. */
typedef enum {
    CUDA_CONV_GENERATED, /* the generated kernels (the default) */
    CUDA_CONV_CUDNN,     /* cuDNN for every pure conv kernel; no loadable cuDNN is an error */
    CUDA_CONV_AUTO,      /* per kernel, the fastest of the generated kernel, its tensor-core form
                            (compute capability 8.0 or newer) and cuDNN, measured once and
                            remembered */
    CUDA_CONV_TENSOR,    /* the generated kernels, the conv family on tensor cores in 3xTF32
                            (CodegenOptions.tensor_convs; compute capability 8.0 or newer) */
} CudaConvMode;

/* "generated", "cudnn", "auto" or "tensor" -> mode; anything else fails with one line naming
 * --conv. */
int cuda_conv_mode_parse(const char *s, CudaConvMode *mode, MamlError *err);
const char *cuda_conv_mode_name(CudaConvMode mode);
/* Whether mode opens the lowering (cudnn, auto); generated and tensor run only mamlc's own. */
bool cuda_conv_uses_cudnn(CudaConvMode mode);

/* ---- the plan (no device needed) ---- */

/* One conv kernel cuDNN can take. */
typedef struct {
    int kernel; /* index into the program's kernels */
    KernelKind kind;
    ConvShape shape;
    bool transpose;   /* T > 1 and N > 1: activations go through [N, T, ...] scratch */
    int64_t in_elems; /* the activation operand cuDNN reads (x or dy) */
    int64_t other;    /* the second activation: y (forward), dx (grad input), dy (grad weight) */
} ConvLowered;

typedef struct {
    ConvLowered *items;
    int n;                   /* lowerable conv kernels */
    int n_conv;              /* conv-family kernels in the program */
    char first_refusal[200]; /* why the first conv kernel that stays generated does ("" if none) */
} ConvPlan;

/* Whether kernel `kernel` of cg can be lowered to cuDNN: true with *s filled, or false with a
 * one-line reason in why (not a convolution, fused nodes, float64, operands that overlap its
 * result in the memory plan, a shape the template and the graph disagree on). */
bool conv_kernel_lowerable(const CompiledGraph *cg, int kernel, ConvShape *s, char *why,
                           size_t why_size);

/* Lists, in program order, the conv kernels of cg that cuDNN would take. out is initialised
 * here; free it with conv_plan_free (also after a failure). */
int conv_plan_build(const CompiledGraph *cg, ConvPlan *out, MamlError *err);
void conv_plan_free(ConvPlan *p);

/* Scratch bytes a lowered kernel needs for its transposes (0 without them). */
int64_t conv_lowered_scratch(const ConvLowered *l);

/* ---- auto's remembered choices (no device needed) ---- */

typedef enum {
    CONV_CHOICE_NONE,
    CONV_CHOICE_GENERATED, /* the generated kernel as rendered without --conv tensor */
    CONV_CHOICE_CUDNN,
    CONV_CHOICE_TENSOR, /* the generated kernel's tensor-core form */
} ConvChoice;

/* What auto measured for one kernel: mean milliseconds per run, negative for a candidate the
 * kernel does not have. */
typedef struct {
    double generated_ms, tensor_ms, cudnn_ms;
} ConvTimes;

/* The name of the choices file in a cache directory. */
#define CONV_CHOICES_FILE "conv_choices.txt"

/* What a measured choice depends on: the kernel kind and shape, the device's name, cuDNN's version
 * (0: none loaded) and the generated function and its tensor-core form ("" for none): their names
 * carry a hash of their text, so a new tiling remeasures. */
CacheKey conv_choice_key(const ConvLowered *l, const char *device, size_t cudnn_version,
                         const char *function, const char *tensor_function);

/* Looks key up in DIR/conv_choices.txt: *choice is CONV_CHOICE_NONE when the file or the line is
 * missing (or damaged). Fails only when the file exists but cannot be read. */
int conv_choice_lookup(const char *dir, CacheKey key, ConvChoice *choice, MamlError *err);

/* Records a choice (replacing any line with the same key) with the times and a label, by
 * writing the whole file to a temporary name and renaming it into place: readers see the old file
 * or the new one. Two processes storing at once may lose one line, which is then measured again. */
int conv_choice_store(const char *dir, CacheKey key, ConvChoice choice, const ConvTimes *times,
                      const char *label, MamlError *err);

/* ---- on the device ---- */

typedef struct CudaConvLowering CudaConvLowering;

/* What the lowering needs from the backend that opens it (all owned by the backend). */
typedef struct {
    CudaConvMode mode;
    const CudaDriver *driver;
    void *stream;             /* CUstream: the step's stream */
    unsigned long long arena; /* CUdeviceptr */
    const CompiledGraph *cg;
    const char *const *function_of; /* per kernel: its generated function's name */
    /* per kernel: its tensor-core form's function name, or NULL (all NULL but under auto on a
     * device of compute capability 8.0 or newer) */
    const char *const *tensor_function_of;
    const char *cache_dir; /* where the transpose image and conv_choices.txt live */
    bool require_cache;
    bool quiet;
    /* auto: launches generated kernel i, in its tensor-core form when asked, on the stream (no
     * synchronisation) */
    int (*launch_generated)(void *ctx, int kernel, bool tensor, MamlError *err);
    void *ctx;
} CudaConvSetup;

/* Opens the lowering for s->mode (generated and tensor: *out stays NULL). cudnn: every lowerable
 * kernel goes to cuDNN, and a missing cuDNN, a shape it refuses or a call that fails is an error;
 * auto: each lowerable kernel runs in the fastest of its forms (generated, tensor-core, cuDNN),
 * and a missing cuDNN or a shape it refuses only leaves it out (said on stderr unless quiet).
 * Every cuDNN item runs once here (on a zeroed arena), outside any capture, so a failing call is
 * reported naming its kernel and cuDNN has loaded its kernels before the step is captured. */
int cuda_conv_open(const CudaConvSetup *s, CudaConvLowering **out, MamlError *err);
void cuda_conv_close(CudaConvLowering *l);

/* Whether kernel i runs on cuDNN; NULL l: never. */
bool cuda_conv_lowered(const CudaConvLowering *l, int kernel);
/* Whether kernel i runs in its tensor-core form (auto's choice); NULL l: never. */
bool cuda_conv_on_tensor(const CudaConvLowering *l, int kernel);
/* Kernels on cuDNN (0 for NULL). */
int cuda_conv_count(const CudaConvLowering *l);
/* Kernels that auto put on their tensor-core form (0 for NULL). */
int cuda_conv_tensor_count(const CudaConvLowering *l);

/* Enqueues lowered kernel i (transposes and the cuDNN call) on the stream. */
int cuda_conv_enqueue(CudaConvLowering *l, int kernel, MamlError *err);

#endif
