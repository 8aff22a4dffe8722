/* NVRTC, loaded at run time: CUDA C source -> CUBIN for one GPU architecture (PTX when the
 * architecture is newer than this NVRTC knows), through the kernel cache, so a second run
 * compiles nothing. NVRTC needs no GPU, so every generated kernel is compiled in the tests.
 *
 * (Named cuda_nvrtc.h, not nvrtc.h: with -Iruntime ahead of the CUDA include directory, a
 * runtime/nvrtc.h would hide the toolkit's <nvrtc.h>.)
 *
 * Library search (see CudaLibSpec in cuda_driver.h): $MAMLC_NVRTC; libnvrtc.so.13 then
 * libnvrtc.so in $CUDA_HOME/lib64, $CUDA_HOME/lib, /usr/local/cuda/lib64; the dynamic loader;
 * Python site-packages nvidia/cu13/lib and nvidia/cuda_nvrtc/lib (PyTorch's CUDA 13 and
 * CUDA 12 wheels). */
#ifndef MAMLC_CUDA_NVRTC_H
#define MAMLC_CUDA_NVRTC_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "kernel_cache.h"

typedef struct Nvrtc Nvrtc;

/* Loads NVRTC and reads its version and supported architectures. */
int nvrtc_open(Nvrtc **out, MamlError *err);
/* Releases the handle (the library stays loaded); NULL is allowed. */
void nvrtc_close(Nvrtc *n);

/* NVRTC's version, e.g. 13 and 0. */
void nvrtc_version(const Nvrtc *n, int *major, int *minor);
/* The path (or loader name) of the library that was loaded. */
const char *nvrtc_library(const Nvrtc *n);
/* Whether NVRTC can make a CUBIN for sm_<arch> (arch = 10 * major + minor). */
bool nvrtc_supports(const Nvrtc *n, int arch);

typedef struct {
    int arch;                   /* the device's compute capability, 10 * major + minor */
    const char *const *options; /* extra NVRTC options after the defaults (may be NULL) */
    int n_options;
    const KernelCache *cache; /* NULL: always compile */
    bool warnings_are_errors; /* a log with a warning fails the compile */
} NvrtcOptions;

typedef struct {
    void *image;        /* CUBIN (ELF), or PTX text; followed by a NUL byte either way */
    size_t size;        /* bytes of image, without that NUL */
    bool ptx;           /* true: PTX for the driver to JIT (architecture newer than NVRTC) */
    char target[24];    /* "sm_90" or "compute_120" */
    char *log;          /* NVRTC's log ("" when there was none or the image came from the cache) */
    CacheLookup lookup; /* CACHE_HIT: from the cache; otherwise compiled (and then stored) */
    double ms;          /* wall time of the whole call */
} NvrtcImage;

/* Compiles src, whose NVRTC program name is name (the name NVRTC's log uses), for opt->arch
 * with the options "--gpu-architecture=sm_XX -default-device -std=c++17 -lineinfo" (no fast
 * math; "--fmad=false" added when $MAMLC_NVRTC_FMAD=0) and opt->options. The cache key covers
 * source, name, options, target and NVRTC version. On a compile error the message names the
 * program, the kernel (__global__ function) around each error, the errors and the offending source
 * lines; the whole log is in out->log. out is always initialised: free it with nvrtc_image_free
 * whether or not the call succeeded. */
int nvrtc_compile(Nvrtc *n, const char *src, const char *name, const NvrtcOptions *opt,
                  NvrtcImage *out, MamlError *err);

void nvrtc_image_free(NvrtcImage *img);

#endif
