/* The CUDA driver API, loaded at run time with dlopen("libcuda.so.1"), so one mamlc binary runs
 * on machines without a GPU (the cuda backend then reports why it is unavailable and "auto"
 * picks cpu). cuda.h supplies the types and prototypes only; nothing links against libcuda.
 *
 * Every entry point is resolved under the versioned name cuda.h maps it to (cuMemAlloc ->
 * cuMemAlloc_v2, cuGraphInstantiate -> cuGraphInstantiateWithFlags, ...), so the loaded function
 * always has the signature the header declares. Calls go through CU_CHECK, which names the call,
 * the CUresult and a context (usually a kernel name) in the error.
 *
 * Also here: cuda_lib_open, the search for the CUDA libraries that NVRTC and cuDNN load. */
#ifndef MAMLC_CUDA_DRIVER_H
#define MAMLC_CUDA_DRIVER_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* Builds without the CUDA headers (-isystem $(CUDA_HOME)/include), or with -DMAMLC_HAVE_CUDA=0,
 * still compile and link: the CUDA parts then fail to open, saying so. */
#ifndef MAMLC_HAVE_CUDA
#if defined(__has_include)
#if __has_include(<cuda.h>)
#define MAMLC_HAVE_CUDA 1
#endif
#endif
#endif
#ifndef MAMLC_HAVE_CUDA
#define MAMLC_HAVE_CUDA 0
#endif
#if MAMLC_HAVE_CUDA
#include <cuda.h>
#endif

/* Where to look for a CUDA library. The search, in order:
 *   1. $ENV (e.g. $MAMLC_NVRTC), when set: that file only;
 *   2. when toolkit: $CUDA_HOME/lib64, $CUDA_HOME/lib, /usr/local/cuda/lib64;
 *   3. the dynamic loader (LD_LIBRARY_PATH, the ldconfig cache, RUNPATH);
 *   4. dirs;
 *   5. the wheel_dirs under each Python site-packages (where PyTorch's pip wheels put NVRTC and
 *      cuDNN): $VIRTUAL_ENV, $CONDA_PREFIX, /opt/STAR/.venv, /usr/local, /usr, ~/.local, each
 *      lib/python3.STAR/{site,dist}-packages (STAR: any name).
 * Each step tries every name of names before the next step. */
typedef struct {
    const char *what;              /* "NVRTC": for messages */
    const char *env;               /* variable naming the library file; NULL for none */
    const char *const *names;      /* file names, NULL-terminated: "libnvrtc.so.13", ... */
    bool toolkit;                  /* search the toolkit directories (step 2) */
    const char *const *dirs;       /* NULL-terminated, or NULL */
    const char *const *wheel_dirs; /* NULL-terminated, or NULL: "nvidia/cu13/lib", ... */
} CudaLibSpec;

/* dlopens the first library the search finds and writes its path (or loader name) into path.
 * Fails with "no WHAT: NAME not found (dlerror...)" naming where it looked. Libraries stay loaded
 * for the life of the process (RTLD_NODELETE): unloading the driver or NVRTC while their threads
 * run is unsafe, and LeakSanitizer cannot name the frames of an unloaded library. */
void *cuda_lib_open(const CudaLibSpec *spec, char *path, size_t path_size, MamlError *err);

/* The driver entry points mamlc uses; X(name) for each. */
#define CUDA_DRIVER_FUNCS(X)                                                                       \
    X(cuGetErrorName)                                                                              \
    X(cuGetErrorString)                                                                            \
    X(cuInit)                                                                                      \
    X(cuDriverGetVersion)                                                                          \
    X(cuDeviceGetCount)                                                                            \
    X(cuDeviceGet)                                                                                 \
    X(cuDeviceGetAttribute)                                                                        \
    X(cuDeviceGetName)                                                                             \
    X(cuDeviceTotalMem)                                                                            \
    X(cuDevicePrimaryCtxRetain)                                                                    \
    X(cuDevicePrimaryCtxRelease)                                                                   \
    X(cuCtxSetCurrent)                                                                             \
    X(cuModuleLoadData)                                                                            \
    X(cuModuleLoadDataEx)                                                                          \
    X(cuModuleUnload)                                                                              \
    X(cuModuleGetFunction)                                                                         \
    X(cuFuncGetAttribute)                                                                          \
    X(cuFuncSetAttribute)                                                                          \
    X(cuLaunchKernel)                                                                              \
    X(cuMemAlloc)                                                                                  \
    X(cuMemFree)                                                                                   \
    X(cuMemGetInfo)                                                                                \
    X(cuMemsetD8Async)                                                                             \
    X(cuMemcpyHtoDAsync)                                                                           \
    X(cuMemcpyDtoHAsync)                                                                           \
    X(cuMemcpyDtoDAsync)                                                                           \
    X(cuMemHostAlloc)                                                                              \
    X(cuMemFreeHost)                                                                               \
    X(cuStreamCreate)                                                                              \
    X(cuStreamDestroy)                                                                             \
    X(cuStreamSynchronize)                                                                         \
    X(cuStreamWaitEvent)                                                                           \
    X(cuStreamBeginCapture)                                                                        \
    X(cuStreamEndCapture)                                                                          \
    X(cuGraphInstantiate)                                                                          \
    X(cuGraphLaunch)                                                                               \
    X(cuGraphExecDestroy)                                                                          \
    X(cuGraphDestroy)                                                                              \
    X(cuEventCreate)                                                                               \
    X(cuEventRecord)                                                                               \
    X(cuEventSynchronize)                                                                          \
    X(cuEventElapsedTime)                                                                          \
    X(cuEventDestroy)

typedef struct {
    void *lib;
    char path[512]; /* the library that was loaded */
#if MAMLC_HAVE_CUDA
/* A field per entry point, named and typed as cuda.h declares it: d->cuMemAlloc(...) calls
 * cuMemAlloc_v2 through the pointer, exactly as a program linked with -lcuda would. */
#define CUDA_DRIVER_FIELD(fn) __typeof__(fn) *fn;
    CUDA_DRIVER_FUNCS(CUDA_DRIVER_FIELD)
#undef CUDA_DRIVER_FIELD
    CUdevice device;
    CUcontext ctx; /* the device's primary context (the one cuDNN's runtime uses too) */
#endif
    int driver_version; /* e.g. 13000 for 13.0 */
    int ordinal;
    int cc_major, cc_minor, sm_count;
    int clock_khz, memory_clock_khz, bus_bits; /* for the peaks bench quotes */
    size_t total_mem;
    char name[256];
    bool ctx_retained;
} CudaDriver;

/* Loads libcuda.so.1 and every entry point, initialises the driver, and makes device `ordinal`'s
 * primary context current on this thread. Fails with a one-line reason: "no CUDA driver:
 * libcuda.so.1 not found (...)", "no CUDA device: cuInit: CUDA_ERROR_NO_DEVICE (...)", a missing
 * entry point (a driver older than the headers), or no such device. */
int cuda_driver_open(CudaDriver *d, int ordinal, MamlError *err);

/* Releases the primary context; safe on a zeroed or failed-to-open driver. */
void cuda_driver_close(CudaDriver *d);

/* The compute capability as one number, 10 * major + minor (90 for sm_90). */
int cuda_driver_arch(const CudaDriver *d);

/* One line about the device: "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB, driver 13.0)". */
void cuda_driver_describe(const CudaDriver *d, char *buf, size_t size);

#if MAMLC_HAVE_CUDA
/* Returns 0 when rc is CUDA_SUCCESS, else fails with "CALL(WHAT): NAME: description". */
int cuda_check(const CudaDriver *d, CUresult rc, const char *call, const char *what,
               MamlError *err);

/* Calls d->FN(...) and checks it: `if (CU_CHECK(d, err, "conv1_fwd", cuLaunchKernel, f, ...))
 * return -1;`. WHAT names what the call was for; the message names FN as written. */
#define CU_CHECK(d, err, what, fn, ...) cuda_check((d), (d)->fn(__VA_ARGS__), #fn, (what), (err))

/* Loads a CUBIN or NUL-terminated PTX image; a PTX JIT failure includes the driver's log. */
int cuda_module_load(const CudaDriver *d, const void *image, const char *what, CUmodule *mod,
                     MamlError *err);

/* Looks up an extern "C" kernel by name in mod. */
int cuda_module_function(const CudaDriver *d, CUmodule mod, const char *kernel, CUfunction *fn,
                         MamlError *err);
#endif

#endif
