/* A fake CUDA driver (libcuda.so.1) that runs on the CPU, so the cuda backend's host code (arena,
 * pinned staging, streams, events, graph capture and replay, its error paths) runs in `make test`
 * on machines without a GPU. Tests load it with MAMLC_LIBCUDA=build/tests/libcuda-fake.so.
 *
 * Device memory is host memory (filled with 0xff bytes, NaN as floats, so reading what was never
 * written shows). Kernels run in the CPU emulation of tests/cuda_emu.h: $MAMLC_FAKE_CUDA_EMU lists
 * emulation objects (colon-separated) built from the same kernels.cu, each exporting the kernels
 * and emu_arity_NAME (cuLaunchKernel's parameter array carries no length).
 *
 * Work is asynchronous in the strictest way: nothing a stream holds runs until the host waits for
 * it (cuStreamSynchronize, cuEventSynchronize) or another stream's cuStreamWaitEvent needs it. So
 * a missing wait, or pinned memory rewritten while a copy from it is pending, gives wrong numbers
 * here as it might on a GPU, deterministically. A kernel that fails is reported at the next
 * synchronisation, as a GPU's faults are. Async host copies must use pinned memory
 * (cuMemHostAlloc), and waits or synchronisations during a capture are refused.
 *
 * $MAMLC_FAKE_CUDA_MIB sets the device's memory (default 4096), $MAMLC_FAKE_CUDA_ARCH its compute
 * capability (default 90: an H200's). Single-threaded, like mamlc's use.
 */
#include <cuda.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

#define MAX_ARGS 32
#define MAX_EMU 8

typedef enum { OP_KERNEL, OP_COPY, OP_MEMSET, OP_RECORD, OP_WAIT } OpKind;

typedef struct {
    OpKind kind;
    CUfunction fn; /* KERNEL */
    unsigned grid[3], block[3];
    void *args[MAX_ARGS];
    char *dst; /* COPY, MEMSET */
    const char *src;
    size_t bytes;
    unsigned char value;
    CUevent event; /* RECORD, WAIT */
    long generation;
} Op;

typedef struct {
    Op *ops;
    int n, cap;
} OpList;

struct CUctx_st {
    int unused;
};
struct CUmod_st {
    char *image; /* a copy, where cuModuleGetFunction looks for the kernel's name */
    size_t size;
    CUfunction *fns; /* handed out by cuModuleGetFunction; freed with the module */
    int n_fns;
};
struct CUfunc_st {
    char name[256];
    void (*entry)(void);
    int (*launch)(void (*)(void), const unsigned *, const unsigned *, void **, int, int, char *,
                  int);
    int arity; /* -1 until resolved in an emulation object */
};
struct CUstream_st {
    OpList queue;
    int head;      /* ops before head have run */
    bool draining; /* guards against waits in a cycle */
    struct CUgraph_st *capture;
};
struct CUevent_st {
    long recorded, done; /* generations: enqueued records, and the last that ran */
    CUstream stream;     /* of the last record */
    double ms;           /* host clock when the last record ran */
};
struct CUgraph_st {
    OpList ops;
};
struct CUgraphExec_st {
    OpList ops;
};

typedef struct {
    char *base;
    size_t bytes;
} Range;

static struct CUctx_st context;
static CUresult sticky = CUDA_SUCCESS; /* the first kernel failure, reported at every sync */
static size_t total_bytes, used_bytes;
static Range *pinned;
static int n_pinned;
static void *emu[MAX_EMU];
static int n_emu = -1;

static CUresult push(OpList *l, const Op *op) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        Op *ops = realloc(l->ops, (size_t)cap * sizeof *ops);
        if (!ops) return CUDA_ERROR_OUT_OF_MEMORY;
        l->ops = ops, l->cap = cap;
    }
    l->ops[l->n++] = *op;
    return CUDA_SUCCESS;
}

/* ---- running work -------------------------------------------------------------------------- */

static CUresult drain_until(CUstream s, CUevent e, long generation);

/* Like a GPU fault: the first one sticks and every later synchronisation reports it. */
static void fail_kernel(CUfunction f, const char *why) {
    if (sticky != CUDA_SUCCESS) return;
    fprintf(stderr, "fake CUDA: kernel %s failed: %s\n", f->name, why);
    sticky = CUDA_ERROR_LAUNCH_FAILED;
}

static void run_op(CUstream s, Op *op) {
    switch (op->kind) {
    case OP_KERNEL: {
        char why[256] = "";
        if (!op->fn->launch)
            fail_kernel(op->fn, "no emulation object ($MAMLC_FAKE_CUDA_EMU) has it");
        else if (op->fn->launch(op->fn->entry, op->grid, op->block, op->args, op->fn->arity, 1, why,
                                (int)sizeof why))
            fail_kernel(op->fn, why);
        break;
    }
    case OP_COPY:
        memmove(op->dst, op->src, op->bytes);
        break;
    case OP_MEMSET:
        memset(op->dst, op->value, op->bytes);
        break;
    case OP_RECORD:
        op->event->done = op->generation;
        op->event->ms = maml_now_ms();
        break;
    case OP_WAIT: {
        CUevent e = op->event;
        if (e->stream && e->stream != s && e->done < op->generation)
            drain_until(e->stream, e, op->generation);
        break;
    }
    }
}

/* Runs s's queue up to the record of e's generation (e NULL: all of it). */
static CUresult drain_until(CUstream s, CUevent e, long generation) {
    if (s->draining) {
        fprintf(stderr, "fake CUDA: streams wait on each other in a cycle\n");
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    s->draining = true;
    while (s->head < s->queue.n && !(e && e->done >= generation))
        run_op(s, &s->queue.ops[s->head++]);
    if (s->head == s->queue.n) s->head = s->queue.n = 0;
    s->draining = false;
    return sticky;
}

/* Appends op to s: into the graph being captured, or the queue. */
static CUresult enqueue(CUstream s, Op op) {
    if (!s) return CUDA_ERROR_INVALID_HANDLE; /* mamlc uses its own streams only */
    if (s->capture) return push(&s->capture->ops, &op);
    if (op.kind == OP_RECORD) {
        op.generation = ++op.event->recorded;
        op.event->stream = s;
    }
    return push(&s->queue, &op);
}

/* ---- errors, device, context --------------------------------------------------------------- */

CUresult cuGetErrorName(CUresult error, const char **pStr) {
    switch (error) {
#define NAME(x)                                                                                    \
    case x:                                                                                        \
        *pStr = #x;                                                                                \
        return CUDA_SUCCESS;
        NAME(CUDA_SUCCESS)
        NAME(CUDA_ERROR_INVALID_VALUE)
        NAME(CUDA_ERROR_OUT_OF_MEMORY)
        NAME(CUDA_ERROR_INVALID_IMAGE)
        NAME(CUDA_ERROR_INVALID_HANDLE)
        NAME(CUDA_ERROR_NOT_FOUND)
        NAME(CUDA_ERROR_LAUNCH_FAILED)
        NAME(CUDA_ERROR_ILLEGAL_STATE)
        NAME(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        NAME(CUDA_ERROR_NOT_SUPPORTED)
#undef NAME
    default:
        *pStr = NULL;
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuGetErrorString(CUresult error, const char **pStr) {
    if (cuGetErrorName(error, pStr) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_VALUE;
    *pStr = "(fake CUDA driver)";
    return CUDA_SUCCESS;
}

CUresult cuInit(unsigned int flags) {
    const char *mib = getenv("MAMLC_FAKE_CUDA_MIB");
    total_bytes = (size_t)(mib && *mib ? atol(mib) : 4096) << 20;
    return flags ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int *v) {
    *v = CUDA_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
    *count = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    *device = ordinal;
    return ordinal == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static int fake_arch(void) {
    const char *arch = getenv("MAMLC_FAKE_CUDA_ARCH");
    return arch && *arch ? atoi(arch) : 90;
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    (void)dev;
    switch (attrib) { /* an H200's figures */
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
        *pi = fake_arch() / 10;
        break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
        *pi = fake_arch() % 10;
        break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
        *pi = 132;
        break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE:
        *pi = 1980000;
        break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE:
        *pi = 2619000;
        break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH:
        *pi = 5120;
        break;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    (void)dev;
    snprintf(name, (size_t)len, "fake CUDA device (CPU emulation)");
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev) {
    (void)dev;
    *bytes = total_bytes;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    (void)dev;
    *pctx = &context;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
    (void)dev;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    return ctx == NULL || ctx == &context ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

/* ---- modules and kernels ------------------------------------------------------------------- */

static void open_emulations(void) {
    n_emu = 0;
    const char *list = getenv("MAMLC_FAKE_CUDA_EMU");
    char path[4096];
    for (const char *p = list; p && *p && n_emu < MAX_EMU;) {
        size_t len = strcspn(p, ":");
        snprintf(path, sizeof path, "%.*s", (int)len, p);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h)
            emu[n_emu++] = h;
        else
            fprintf(stderr, "fake CUDA: %s\n", dlerror());
        p += len + (p[len] == ':');
    }
}

/* Finds the kernel's emulation: the function, its arity and the object's emu_launch. */
static void resolve(CUfunction f) {
    if (n_emu < 0) open_emulations();
    char arity_name[300];
    snprintf(arity_name, sizeof arity_name, "emu_arity_%s", f->name);
    for (int i = 0; i < n_emu; i++) {
        void *entry = dlsym(emu[i], f->name), *arity = dlsym(emu[i], arity_name),
             *launch = dlsym(emu[i], "emu_launch");
        if (!entry || !arity || !launch) continue;
        int (*arity_fn)(void);
        memcpy(&arity_fn, &arity, sizeof arity);
        memcpy(&f->entry, &entry, sizeof entry);
        memcpy(&f->launch, &launch, sizeof launch);
        f->arity = arity_fn();
        return;
    }
}

/* The image's size: a 64-bit ELF file ends with its section headers; PTX is a C string. */
static size_t image_size(const char *p) {
    if (memcmp(p, "\177ELF", 4) != 0) return strlen(p) + 1;
    uint64_t shoff;
    uint16_t shentsize, shnum;
    memcpy(&shoff, p + 0x28, sizeof shoff);
    memcpy(&shentsize, p + 0x3a, sizeof shentsize);
    memcpy(&shnum, p + 0x3c, sizeof shnum);
    return (size_t)shoff + (size_t)shentsize * shnum;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    const char *p = image;
    /* a CUBIN is an ELF file; PTX is text starting with a comment or a directive */
    if (!p || (memcmp(p, "\177ELF", 4) != 0 && p[0] != '/' && p[0] != '.'))
        return CUDA_ERROR_INVALID_IMAGE;
    struct CUmod_st *m = calloc(1, sizeof *m);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    m->size = image_size(p);
    m->image = malloc(m->size);
    if (!m->image) {
        free(m);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memcpy(m->image, p, m->size);
    *module = m;
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int n, CUjit_option *o,
                            void **v) {
    (void)n, (void)o, (void)v;
    return cuModuleLoadData(module, image);
}

CUresult cuModuleUnload(CUmodule m) {
    if (!m) return CUDA_ERROR_INVALID_HANDLE;
    for (int i = 0; i < m->n_fns; i++) free(m->fns[i]);
    free(m->fns);
    free(m->image);
    free(m);
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    if (!hmod || strlen(name) >= sizeof((struct CUfunc_st *)0)->name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!memmem(hmod->image, hmod->size, name, strlen(name) + 1)) return CUDA_ERROR_NOT_FOUND;
    CUfunction *fns = realloc(hmod->fns, ((size_t)hmod->n_fns + 1) * sizeof *fns);
    CUfunction f = fns ? calloc(1, sizeof *f) : NULL;
    if (fns) hmod->fns = fns;
    if (!f) return CUDA_ERROR_OUT_OF_MEMORY;
    hmod->fns[hmod->n_fns++] = f;
    snprintf(f->name, sizeof f->name, "%s", name);
    f->arity = -1;
    resolve(f);
    *hfunc = f;
    return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction f) {
    (void)attrib, (void)f;
    *pi = 0;
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute attrib, int value) {
    (void)f, (void)attrib, (void)value;
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream s, void **params,
                        void **extra) {
    if (!f || extra || shared) return CUDA_ERROR_INVALID_VALUE;
    if (bx * by * bz > 1024 || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
    Op op = {.kind = OP_KERNEL, .fn = f, .grid = {gx, gy, gz}, .block = {bx, by, bz}};
    /* parameters are copied at launch, as the driver does; every mamlc kernel takes pointers */
    for (int a = 0; a < f->arity && a < MAX_ARGS; a++)
        op.args[a] = (void *)(uintptr_t) * (const CUdeviceptr *)params[a];
    return enqueue(s, op);
}

/* ---- memory -------------------------------------------------------------------------------- */

CUresult cuMemGetInfo(size_t *free_b, size_t *total) {
    *free_b = total_bytes - used_bytes;
    *total = total_bytes;
    return CUDA_SUCCESS;
}

/* Allocations carry their size in front, for cuMemFree's accounting. Blocks up to 256 MiB are
 * filled with 0xff; larger ones (tests that fill the device) stay untouched, so cost nothing. */
static void *alloc_block(size_t bytes) {
    char *p = malloc(bytes + 64);
    if (!p) return NULL;
    memcpy(p, &bytes, sizeof bytes);
    if (bytes <= ((size_t)256 << 20)) memset(p + 64, 0xff, bytes);
    return p + 64;
}

static size_t block_size(const void *p) {
    size_t bytes;
    memcpy(&bytes, (const char *)p - 64, sizeof bytes);
    return bytes;
}

CUresult cuMemAlloc(CUdeviceptr *dptr, size_t bytes) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (bytes > total_bytes - used_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
    void *p = alloc_block(bytes);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    used_bytes += bytes;
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr dptr) {
    char *p = (char *)(uintptr_t)dptr;
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    used_bytes -= block_size(p);
    free(p - 64);
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void **pp, size_t bytes, unsigned int flags) {
    (void)flags;
    Range *r = realloc(pinned, ((size_t)n_pinned + 1) * sizeof *r);
    if (!r) return CUDA_ERROR_OUT_OF_MEMORY;
    pinned = r;
    char *p = alloc_block(bytes);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    pinned[n_pinned++] = (Range){p, bytes};
    *pp = p;
    return CUDA_SUCCESS;
}

CUresult cuMemFreeHost(void *p) {
    for (int i = 0; i < n_pinned; i++)
        if (pinned[i].base == p) {
            pinned[i] = pinned[--n_pinned];
            free((char *)p - 64);
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_INVALID_VALUE;
}

static bool is_pinned(const void *p, size_t bytes) {
    for (int i = 0; i < n_pinned; i++)
        if ((const char *)p >= pinned[i].base &&
            (const char *)p + bytes <= pinned[i].base + pinned[i].bytes)
            return true;
    return false;
}

static CUresult copy(CUstream s, void *dst, const void *src, size_t bytes) {
    return enqueue(s, (Op){.kind = OP_COPY, .dst = dst, .src = src, .bytes = bytes});
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t bytes, CUstream s) {
    if (!is_pinned(src, bytes)) return CUDA_ERROR_INVALID_VALUE;
    return copy(s, (void *)(uintptr_t)dst, src, bytes);
}

CUresult cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t bytes, CUstream s) {
    if (!is_pinned(dst, bytes)) return CUDA_ERROR_INVALID_VALUE;
    return copy(s, dst, (const void *)(uintptr_t)src, bytes);
}

CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s) {
    return copy(s, (void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream s) {
    return enqueue(
        s, (Op){.kind = OP_MEMSET, .dst = (char *)(uintptr_t)dst, .bytes = n, .value = value});
}

/* ---- streams, graphs, events --------------------------------------------------------------- */

CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
    (void)flags;
    *s = calloc(1, sizeof **s);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuStreamDestroy(CUstream s) {
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = drain_until(s, NULL, 0); /* the driver finishes pending work first */
    free(s->queue.ops);
    free(s);
    return rc;
}

CUresult cuStreamSynchronize(CUstream s) {
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return drain_until(s, NULL, 0);
}

CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags) {
    if (!s || !e || flags) return CUDA_ERROR_INVALID_VALUE;
    if (s->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* not needed by mamlc */
    return enqueue(s, (Op){.kind = OP_WAIT, .event = e, .generation = e->recorded});
}

CUresult cuStreamBeginCapture(CUstream s, CUstreamCaptureMode mode) {
    (void)mode;
    if (!s || s->capture) return CUDA_ERROR_ILLEGAL_STATE;
    s->capture = calloc(1, sizeof *s->capture);
    return s->capture ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuStreamEndCapture(CUstream s, CUgraph *graph) {
    if (!s || !s->capture) return CUDA_ERROR_ILLEGAL_STATE;
    *graph = s->capture;
    s->capture = NULL;
    return CUDA_SUCCESS;
}

static CUresult copy_ops(OpList *to, const OpList *from) {
    for (int i = 0; i < from->n; i++)
        if (push(to, &from->ops[i]) != CUDA_SUCCESS) return CUDA_ERROR_OUT_OF_MEMORY;
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiate(CUgraphExec *exec, CUgraph graph, unsigned long long flags) {
    (void)flags;
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    *exec = calloc(1, sizeof **exec);
    if (!*exec) return CUDA_ERROR_OUT_OF_MEMORY;
    return copy_ops(&(*exec)->ops, &graph->ops);
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
    if (!exec || !s || s->capture) return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < exec->ops.n; i++) {
        CUresult rc = enqueue(s, exec->ops.ops[i]);
        if (rc != CUDA_SUCCESS) return rc;
    }
    return CUDA_SUCCESS;
}

CUresult cuGraphExecDestroy(CUgraphExec exec) {
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    free(exec->ops.ops);
    free(exec);
    return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph graph) {
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    free(graph->ops.ops);
    free(graph);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent *e, unsigned int flags) {
    (void)flags;
    *e = calloc(1, sizeof **e);
    return *e ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    return enqueue(s, (Op){.kind = OP_RECORD, .event = e});
}

CUresult cuEventSynchronize(CUevent e) {
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    if (!e->stream || e->done >= e->recorded) return sticky;
    return drain_until(e->stream, e, e->recorded);
}

CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end) {
    if (!start || !end || start->done == 0 || end->done == 0 || start->done < start->recorded ||
        end->done < end->recorded)
        return CUDA_ERROR_INVALID_VALUE; /* CUDA_ERROR_NOT_READY on a GPU */
    *ms = (float)(end->ms - start->ms);
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent e) {
    free(e);
    return CUDA_SUCCESS;
}
