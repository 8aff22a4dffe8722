#include "cuda_driver.h"

#include <dlfcn.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- library search ------------------------------------------------------------------------ */

typedef struct {
    char loader_error[400]; /* dlerror() of the dynamic loader's attempt */
    char file_error[400];   /* dlerror() of the first existing file that failed to load */
} SearchErrors;

/* NVRTC, cuDNN and the driver stay mapped until the process ends, even if something dlcloses
 * them: what they leave allocated is then reported by LeakSanitizer with frames it can symbolize,
 * so tests/lsan.supp can suppress it by library name. */
#define CUDA_LIB_FLAGS (RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)

/* dlopens path; on failure remembers why. A file that exists but does not load (wrong
 * architecture, missing dependency) says more than "not found", so that error is kept. */
static void *try_open(const char *path, bool by_loader, SearchErrors *e) {
    void *lib = dlopen(path, CUDA_LIB_FLAGS);
    if (lib) return lib;
    const char *msg = dlerror();
    if (!msg) msg = "dlopen failed";
    if (by_loader) {
        if (!e->loader_error[0]) snprintf(e->loader_error, sizeof e->loader_error, "%s", msg);
    } else if (!e->file_error[0] && !strstr(msg, "No such file")) {
        snprintf(e->file_error, sizeof e->file_error, "%s", msg);
    }
    return NULL;
}

/* Tries DIR/NAME for every name; returns the library and writes its path. */
static void *try_dir(const CudaLibSpec *s, const char *dir, char *path, size_t size,
                     SearchErrors *e) {
    for (const char *const *n = s->names; *n; n++) {
        snprintf(path, size, "%s/%s", dir, *n);
        void *lib = try_open(path, false, e);
        if (lib) return lib;
    }
    return NULL;
}

static void *try_toolkit(const CudaLibSpec *s, char *path, size_t size, SearchErrors *e) {
    char dir[512];
    const char *home = getenv("CUDA_HOME");
    const char *subs[] = {"lib64", "lib"};
    for (int i = 0; home && *home && i < 2; i++) {
        snprintf(dir, sizeof dir, "%s/%s", home, subs[i]);
        void *lib = try_dir(s, dir, path, size, e);
        if (lib) return lib;
    }
    return try_dir(s, "/usr/local/cuda/lib64", path, size, e);
}

static void *try_loader(const CudaLibSpec *s, char *path, size_t size, SearchErrors *e) {
    for (const char *const *n = s->names; *n; n++) {
        void *lib = try_open(*n, true, e);
        if (lib) {
            snprintf(path, size, "%s", *n);
            return lib;
        }
    }
    return NULL;
}

/* Python installations where pip wheels (PyTorch's nvidia-* packages) live. */
static void *try_wheels(const CudaLibSpec *s, char *path, size_t size, SearchErrors *e) {
    const char *envs[] = {"VIRTUAL_ENV", "CONDA_PREFIX", "HOME"};
    const char *fixed[] = {"/opt/*/.venv", "/usr/local", "/usr"};
    char roots[6][512];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(envs[i]);
        if (v && *v) snprintf(roots[n++], sizeof roots[0], "%s%s", v, i == 2 ? "/.local" : "");
    }
    for (int i = 0; i < 3; i++) snprintf(roots[n++], sizeof roots[0], "%s", fixed[i]);
    for (int r = 0; r < n; r++) {
        for (const char *const *w = s->wheel_dirs; *w; w++) {
            char pattern[1024];
            int len =
                snprintf(pattern, sizeof pattern, "%s/lib/python3*/*-packages/%s", roots[r], *w);
            glob_t g;
            if (len >= (int)sizeof pattern || glob(pattern, 0, NULL, &g) != 0) continue;
            void *lib = NULL;
            for (size_t i = 0; i < g.gl_pathc && !lib; i++)
                lib = try_dir(s, g.gl_pathv[i], path, size, e);
            globfree(&g);
            if (lib) return lib;
        }
    }
    return NULL;
}

/* Appends text to the NUL-terminated buf of size bytes, truncating silently. */
static void append(char *buf, size_t size, const char *text) {
    size_t n = strlen(buf);
    if (n + 1 < size) snprintf(buf + n, size - n, "%s", text);
}

static int not_found(const CudaLibSpec *s, const SearchErrors *e, MamlError *err) {
    char more[400] = "";
    if (s->toolkit)
        append(more, sizeof more, "; also searched $CUDA_HOME/lib64, /usr/local/cuda/lib64");
    if (s->wheel_dirs) {
        append(more, sizeof more, s->toolkit ? ", " : "; also searched ");
        append(more, sizeof more, "Python site-packages/");
        append(more, sizeof more, s->wheel_dirs[0]);
    }
    if (s->env) {
        append(more, sizeof more, "; set $");
        append(more, sizeof more, s->env);
        append(more, sizeof more, " to its path");
    }
    const char *why = e->file_error[0] ? e->file_error : e->loader_error;
    return maml_fail(err, "no %s: %s not found (%s%s)", s->what, s->names[0], why, more);
}

void *cuda_lib_open(const CudaLibSpec *s, char *path, size_t size, MamlError *err) {
    SearchErrors e = {{0}, {0}};
    const char *forced = s->env ? getenv(s->env) : NULL;
    if (forced && *forced) {
        snprintf(path, size, "%s", forced);
        void *lib = dlopen(forced, CUDA_LIB_FLAGS);
        if (!lib)
            maml_fail(err, "no %s: $%s=%s does not load (%s)", s->what, s->env, forced, dlerror());
        return lib;
    }
    void *lib = s->toolkit ? try_toolkit(s, path, size, &e) : NULL;
    if (!lib) lib = try_loader(s, path, size, &e);
    for (const char *const *d = s->dirs; !lib && d && *d; d++) lib = try_dir(s, *d, path, size, &e);
    if (!lib && s->wheel_dirs) lib = try_wheels(s, path, size, &e);
    if (!lib) not_found(s, &e, err);
    return lib;
}

/* ---- the driver ---------------------------------------------------------------------------- */

#if MAMLC_HAVE_CUDA

#define STR_(x) #x
#define STR(x) STR_(x)

static int load_sym(void *lib, const char *name, void **out, const CudaDriver *d, MamlError *err) {
    dlerror();
    *out = dlsym(lib, name);
    if (*out) return 0;
    return maml_fail(err,
                     "CUDA driver %s lacks %s (driver older than the CUDA %d.%d headers mamlc was "
                     "built with?): %s",
                     d->path, name, CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10, dlerror());
}

/* Resolves every entry point under the versioned name cuda.h gives it (STR expands the macro). */
static int load_driver_syms(CudaDriver *d, MamlError *err) {
    void *sym;
#define LOAD(fn)                                                                                   \
    if (load_sym(d->lib, STR(fn), &sym, d, err)) return -1;                                        \
    memcpy(&d->fn, &sym, sizeof sym);
    CUDA_DRIVER_FUNCS(LOAD)
#undef LOAD
    return 0;
}

int cuda_check(const CudaDriver *d, CUresult rc, const char *call, const char *what,
               MamlError *err) {
    if (rc == CUDA_SUCCESS) return 0;
    const char *name = NULL, *desc = NULL;
    if (d->cuGetErrorName(rc, &name) != CUDA_SUCCESS) name = NULL;
    if (d->cuGetErrorString(rc, &desc) != CUDA_SUCCESS) desc = NULL;
    char code[32];
    snprintf(code, sizeof code, "CUresult %d", (int)rc);
    return maml_fail(err, "%s(%s): %s: %s", call, what && *what ? what : "", name ? name : code,
                     desc ? desc : "unknown error");
}

static int query_device(CudaDriver *d, MamlError *err) {
    int count = 0;
    if (CU_CHECK(d, err, "device count", cuDeviceGetCount, &count)) return -1;
    if (d->ordinal < 0 || d->ordinal >= count)
        return maml_fail(err, "no CUDA device %d (this machine has %d)", d->ordinal, count);
    if (CU_CHECK(d, err, "device", cuDeviceGet, &d->device, d->ordinal)) return -1;
    struct {
        CUdevice_attribute attr;
        int *out;
    } attrs[] = {{CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &d->cc_major},
                 {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &d->cc_minor},
                 {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, &d->sm_count},
                 {CU_DEVICE_ATTRIBUTE_CLOCK_RATE, &d->clock_khz},
                 {CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, &d->memory_clock_khz},
                 {CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, &d->bus_bits}};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++)
        if (CU_CHECK(d, err, "device attributes", cuDeviceGetAttribute, attrs[i].out, attrs[i].attr,
                     d->device))
            return -1;
    if (CU_CHECK(d, err, "device name", cuDeviceGetName, d->name, (int)sizeof d->name, d->device))
        return -1;
    return CU_CHECK(d, err, "device memory", cuDeviceTotalMem, &d->total_mem, d->device);
}

/* cuInit failing is how a driver without a usable GPU answers; say so plainly. */
static int init_driver(CudaDriver *d, MamlError *err) {
    MamlError why;
    if (cuda_check(d, d->cuInit(0), "cuInit", "", &why))
        return maml_fail(err, "no CUDA device: %s", why.message);
    return CU_CHECK(d, err, "driver version", cuDriverGetVersion, &d->driver_version);
}

int cuda_driver_open(CudaDriver *d, int ordinal, MamlError *err) {
    static const char *const names[] = {"libcuda.so.1", NULL};
    /* Never the toolkit's lib64/stubs: its libcuda only returns CUDA_ERROR_STUB_LIBRARY. */
    static const char *const dirs[] = {"/usr/local/nvidia/lib64", "/usr/lib/wsl/lib", NULL};
    static const CudaLibSpec spec = {"CUDA driver", "MAMLC_LIBCUDA", names, false, dirs, NULL};
    memset(d, 0, sizeof *d);
    d->ordinal = ordinal;
    d->lib = cuda_lib_open(&spec, d->path, sizeof d->path, err);
    if (!d->lib || load_driver_syms(d, err) || init_driver(d, err) || query_device(d, err))
        return -1;
    /* The primary context is the one the CUDA runtime (inside cuDNN) uses, so our allocations,
     * modules and streams are valid there without any context juggling. */
    if (CU_CHECK(d, err, "primary context", cuDevicePrimaryCtxRetain, &d->ctx, d->device))
        return -1;
    d->ctx_retained = true;
    return CU_CHECK(d, err, "primary context", cuCtxSetCurrent, d->ctx);
}

void cuda_driver_close(CudaDriver *d) {
    if (d->ctx_retained) {
        d->cuCtxSetCurrent(NULL);
        d->cuDevicePrimaryCtxRelease(d->device);
    }
    d->ctx_retained = false;
    d->ctx = NULL;
}

int cuda_module_load(const CudaDriver *d, const void *image, const char *what, CUmodule *mod,
                     MamlError *err) {
    char log[2048] = "";
    CUjit_option opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[] = {log, (void *)(uintptr_t)sizeof log};
    CUresult rc = d->cuModuleLoadDataEx(mod, image, 2, opts, vals);
    if (rc == CUDA_SUCCESS) return 0;
    MamlError why;
    cuda_check(d, rc, "cuModuleLoadDataEx", what, &why);
    if (!log[0]) return maml_fail(err, "%s", why.message);
    for (char *p = log; *p; p++)
        if (*p == '\n') *p = ' ';
    return maml_fail(err, "%s; JIT log: %s", why.message, log);
}

int cuda_module_function(const CudaDriver *d, CUmodule mod, const char *kernel, CUfunction *fn,
                         MamlError *err) {
    return CU_CHECK(d, err, kernel, cuModuleGetFunction, fn, mod, kernel);
}

#else /* built without cuda.h */

int cuda_driver_open(CudaDriver *d, int ordinal, MamlError *err) {
    memset(d, 0, sizeof *d);
    d->ordinal = ordinal;
    return maml_fail(err, "no CUDA driver: mamlc was built without the CUDA headers "
                          "(add -isystem $CUDA_HOME/include to CFLAGS)");
}

void cuda_driver_close(CudaDriver *d) {
    (void)d;
}

#endif

int cuda_driver_arch(const CudaDriver *d) {
    return 10 * d->cc_major + d->cc_minor;
}

void cuda_driver_describe(const CudaDriver *d, char *buf, size_t size) {
    snprintf(buf, size, "%s (sm_%d, %d SMs, %.1f GiB, driver %d.%d)", d->name, cuda_driver_arch(d),
             d->sm_count, (double)d->total_mem / (1024.0 * 1024.0 * 1024.0),
             d->driver_version / 1000, d->driver_version % 1000 / 10);
}
