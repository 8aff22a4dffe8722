#include "cuda_nvrtc.h"

#include <ctype.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cuda_driver.h"

void nvrtc_image_free(NvrtcImage *img) {
    if (!img) return;
    free(img->image);
    free(img->log);
    memset(img, 0, sizeof *img);
}

#if MAMLC_HAVE_CUDA && defined(__has_include)
#if __has_include(<nvrtc.h>)
#define MAMLC_HAVE_NVRTC 1
#endif
#endif

#ifdef MAMLC_HAVE_NVRTC
#include <nvrtc.h>

#define NVRTC_FUNCS(X)                                                                             \
    X(nvrtcVersion)                                                                                \
    X(nvrtcGetErrorString)                                                                         \
    X(nvrtcGetNumSupportedArchs)                                                                   \
    X(nvrtcGetSupportedArchs)                                                                      \
    X(nvrtcCreateProgram)                                                                          \
    X(nvrtcDestroyProgram)                                                                         \
    X(nvrtcCompileProgram)                                                                         \
    X(nvrtcGetProgramLogSize)                                                                      \
    X(nvrtcGetProgramLog)                                                                          \
    X(nvrtcGetCUBINSize)                                                                           \
    X(nvrtcGetCUBIN)                                                                               \
    X(nvrtcGetPTXSize)                                                                             \
    X(nvrtcGetPTX)

enum { MAX_ARCHS = 64, MAX_OPTIONS = 64 };

struct Nvrtc {
    void *lib;
    char path[512];
    int major, minor;
    int archs[MAX_ARCHS];
    int n_archs;
#define NVRTC_FIELD(fn) __typeof__(fn) *fn;
    NVRTC_FUNCS(NVRTC_FIELD)
#undef NVRTC_FIELD
};

/* ---- loading ------------------------------------------------------------------------------- */

static int nvrtc_check(const Nvrtc *n, nvrtcResult rc, const char *call, const char *what,
                       MamlError *err) {
    if (rc == NVRTC_SUCCESS) return 0;
    return maml_fail(err, "nvrtc: %s(%s): %s", call, what, n->nvrtcGetErrorString(rc));
}

#define NVRTC_CHECK(n, err, what, fn, ...)                                                         \
    nvrtc_check((n), (n)->fn(__VA_ARGS__), #fn, (what), (err))

static int load_syms(Nvrtc *n, MamlError *err) {
    void *sym;
#define LOAD(fn)                                                                                   \
    dlerror();                                                                                     \
    if (!(sym = dlsym(n->lib, #fn)))                                                               \
        return maml_fail(err, "nvrtc: %s lacks %s: %s", n->path, #fn, dlerror());                  \
    memcpy(&n->fn, &sym, sizeof sym);
    NVRTC_FUNCS(LOAD)
#undef LOAD
    return 0;
}

static int read_archs(Nvrtc *n, MamlError *err) {
    if (NVRTC_CHECK(n, err, "", nvrtcVersion, &n->major, &n->minor) ||
        NVRTC_CHECK(n, err, "", nvrtcGetNumSupportedArchs, &n->n_archs))
        return -1;
    if (n->n_archs <= 0 || n->n_archs > MAX_ARCHS)
        return maml_fail(err, "nvrtc: %s reports %d supported architectures", n->path, n->n_archs);
    return NVRTC_CHECK(n, err, "", nvrtcGetSupportedArchs, n->archs);
}

/* NVRTC dlopens libnvrtc-builtins (beside it, named by its version) for each compile and dlcloses
 * it after; what it leaves allocated then has frames in an unmapped library, which LeakSanitizer
 * can neither symbolize nor suppress by name. A reference of our own that is never deleted keeps
 * it mapped. Failing costs only that: NVRTC finds the library itself. */
static void pin_builtins(const Nvrtc *n) {
    char path[sizeof n->path + 64];
    const char *slash = strrchr(n->path, '/');
    int dir = slash ? (int)(slash - n->path) + 1 : 0;
    snprintf(path, sizeof path, "%.*slibnvrtc-builtins.so.%d.%d", dir, n->path, n->major, n->minor);
    if (!dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)) dlerror();
}

int nvrtc_open(Nvrtc **out, MamlError *err) {
    static const char *const names[] = {"libnvrtc.so.13", "libnvrtc.so", NULL};
    static const char *const wheels[] = {"nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", NULL};
    static const CudaLibSpec spec = {"NVRTC", "MAMLC_NVRTC", names, true, NULL, wheels};
    *out = NULL;
    Nvrtc *n = maml_calloc(1, sizeof *n, err);
    if (!n) return -1;
    n->lib = cuda_lib_open(&spec, n->path, sizeof n->path, err);
    if (!n->lib || load_syms(n, err) || read_archs(n, err)) {
        free(n);
        return -1;
    }
    pin_builtins(n);
    *out = n;
    return 0;
}

void nvrtc_close(Nvrtc *n) {
    free(n); /* the library stays loaded: see cuda_lib_open */
}

void nvrtc_version(const Nvrtc *n, int *major, int *minor) {
    *major = n->major;
    *minor = n->minor;
}

const char *nvrtc_library(const Nvrtc *n) {
    return n->path;
}

bool nvrtc_supports(const Nvrtc *n, int arch) {
    for (int i = 0; i < n->n_archs; i++)
        if (n->archs[i] == arch) return true;
    return false;
}

/* ---- options and key ----------------------------------------------------------------------- */

/* CUBIN for an architecture NVRTC knows; PTX of its newest one for a newer device (the driver
 * compiles that PTX for the device when the module loads). */
static int pick_target(const Nvrtc *n, int arch, NvrtcImage *out, MamlError *err) {
    int newest = n->archs[n->n_archs - 1];
    if (nvrtc_supports(n, arch)) {
        snprintf(out->target, sizeof out->target, "sm_%d", arch);
        return 0;
    }
    if (arch > newest) {
        snprintf(out->target, sizeof out->target, "compute_%d", newest);
        out->ptx = true;
        return 0;
    }
    return maml_fail(err, "nvrtc %d.%d cannot compile for sm_%d (it supports sm_%d to sm_%d)",
                     n->major, n->minor, arch, n->archs[0], newest);
}

typedef struct {
    char arch[48];
    const char *list[MAX_OPTIONS];
    int n;
} OptionList;

static int build_options(const NvrtcImage *img, const NvrtcOptions *opt, OptionList *o,
                         MamlError *err) {
    snprintf(o->arch, sizeof o->arch, "--gpu-architecture=%s", img->target);
    const char *defaults[] = {o->arch, "-default-device", "-std=c++17", "-lineinfo"};
    o->n = 0;
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) o->list[o->n++] = defaults[i];
    /* For accuracy experiments: no contraction of a*b+c into one rounding. */
    const char *fmad = getenv("MAMLC_NVRTC_FMAD");
    if (fmad && strcmp(fmad, "0") == 0) o->list[o->n++] = "--fmad=false";
    if (opt->n_options > MAX_OPTIONS - o->n)
        return maml_fail(err, "nvrtc: too many options (%d)", opt->n_options);
    for (int i = 0; i < opt->n_options; i++) o->list[o->n++] = opt->options[i];
    return 0;
}

static CacheKey compile_key(const Nvrtc *n, const char *src, const char *name, const OptionList *o,
                            const NvrtcOptions *opt) {
    CacheKeyHasher k;
    cache_key_begin(&k);
    cache_key_add_str(&k, "mamlc nvrtc 1");
    cache_key_add_int(&k, n->major);
    cache_key_add_int(&k, n->minor);
    cache_key_add_int(&k, opt->warnings_are_errors);
    for (int i = 0; i < o->n; i++) cache_key_add_str(&k, o->list[i]);
    cache_key_add_str(&k, name);
    cache_key_add_str(&k, src);
    return cache_key_end(&k);
}

/* ---- diagnostics --------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t size, len;
} Text;

static void __attribute__((format(printf, 2, 3))) text_add(Text *t, const char *fmt, ...) {
    if (t->len + 1 >= t->size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, t->size - t->len, fmt, ap);
    va_end(ap);
    if (n > 0) t->len += (size_t)n < t->size - t->len ? (size_t)n : t->size - t->len - 1;
}

/* Start of 1-based line `line` of src, or NULL. */
static const char *line_start(const char *src, int line) {
    for (int l = 1; l < line; l++) {
        src = strchr(src, '\n');
        if (!src) return NULL;
        src++;
    }
    return src;
}

/* The name of the function whose definition starts on the line nearest above `line` that holds
 * "__global__" or "__device__"; kind receives "kernel" or "device function". */
static bool enclosing_function(const char *src, int line, char *name, size_t size,
                               const char **kind) {
    const char *def = NULL, *s = src;
    for (int l = 1; l <= line && s; l++) {
        const char *e = strchr(s, '\n');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        const char *g = memmem(s, len, "__global__", 10);
        const char *d = memmem(s, len, "__device__", 10);
        if (g || d) {
            def = g ? g : d;
            *kind = g ? "kernel" : "device function";
        }
        s = e ? e + 1 : NULL;
    }
    if (!def) return false;
    /* The name is the identifier before the first '(' that does not open __launch_bounds__(..). */
    for (const char *p = strchr(def, '('); p; p = strchr(p + 1, '(')) {
        const char *e = p;
        while (e > def && isspace((unsigned char)e[-1])) e--;
        const char *b = e;
        while (b > def && (isalnum((unsigned char)b[-1]) || b[-1] == '_')) b--;
        if (b == e) return false;
        if ((size_t)(e - b) == 17 && memcmp(b, "__launch_bounds__", 17) == 0) {
            p = strchr(p, ')');
            if (!p) return false;
            continue;
        }
        snprintf(name, size, "%.*s", (int)(e - b), b);
        return true;
    }
    return false;
}

/* Describes one diagnostic "NAME(LINE): MESSAGE" with the function around it and the source
 * line it points at. */
static void describe_diagnostic(Text *t, const char *src, int line, const char *msg,
                                size_t msg_len) {
    char fn[128];
    const char *kind = "";
    text_add(t, "%s%.*s [", t->len ? "; " : "", (int)msg_len, msg);
    if (enclosing_function(src, line, fn, sizeof fn, &kind)) text_add(t, "in %s %s, ", kind, fn);
    const char *s = line_start(src, line);
    if (s) {
        while (*s == ' ' || *s == '\t') s++;
        const char *e = strchr(s, '\n');
        int len = e ? (int)(e - s) : (int)strlen(s);
        text_add(t, "line %d: `%.*s`]", line, len > 160 ? 160 : len, s);
    } else {
        text_add(t, "line %d]", line);
    }
}

/* True when msg (text after "NAME(LINE): ") is a diagnostic of the wanted kind. */
static bool is_kind(const char *msg, bool warnings) {
    if (warnings) return strncmp(msg, "warning", 7) == 0;
    return strncmp(msg, "error", 5) == 0 || strncmp(msg, "catastrophic error", 18) == 0;
}

/* Adds every "NAME(LINE): error..." (or warning) line of the log to t; returns how many. */
static int describe_log(Text *t, const char *src, const char *name, const char *log,
                        bool warnings) {
    size_t name_len = strlen(name);
    int found = 0;
    for (const char *l = log; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        const char *end = strchr(l, '\n');
        size_t len = end ? (size_t)(end - l) : strlen(l);
        if (len <= name_len || strncmp(l, name, name_len) != 0 || l[name_len] != '(') continue;
        char *after;
        long line = strtol(l + name_len + 1, &after, 10);
        if (after[0] != ')' || after[1] != ':' || after[2] != ' ' || !is_kind(after + 3, warnings))
            continue;
        describe_diagnostic(t, src, (int)line, l, len);
        found++;
    }
    return found;
}

/* The log with newlines shown as " | ", for logs whose lines do not parse. */
static void add_flat_log(Text *t, const char *log) {
    for (const char *p = log; *p && t->len + 1 < t->size; p++) {
        if (*p == '\n') {
            if (p[1]) text_add(t, " | ");
        } else {
            t->buf[t->len++] = *p;
            t->buf[t->len] = 0;
        }
    }
}

static int compile_failed(const char *src, const char *name, const char *target, const char *status,
                          const char *log, bool warnings, MamlError *err) {
    char body[MAML_ERROR_MAX] = "";
    Text t = {body, sizeof body, 0};
    if (describe_log(&t, src, name, log, warnings) == 0) {
        text_add(&t, "%s: ", status);
        add_flat_log(&t, log);
    }
    return maml_fail(err, "nvrtc: %s (%s) %s: %s", name, target,
                     warnings ? "compiles with warnings" : "does not compile", body);
}

/* ---- compiling ----------------------------------------------------------------------------- */

static int read_log(const Nvrtc *n, nvrtcProgram prog, const char *name, NvrtcImage *out,
                    MamlError *err) {
    size_t size = 0;
    if (NVRTC_CHECK(n, err, name, nvrtcGetProgramLogSize, prog, &size)) return -1;
    out->log = maml_calloc(size + 1, 1, err);
    if (!out->log) return -1;
    return NVRTC_CHECK(n, err, name, nvrtcGetProgramLog, prog, out->log);
}

static int read_image(const Nvrtc *n, nvrtcProgram prog, const char *name, NvrtcImage *out,
                      MamlError *err) {
    size_t size = 0;
    nvrtcResult rc = out->ptx ? n->nvrtcGetPTXSize(prog, &size) : n->nvrtcGetCUBINSize(prog, &size);
    if (nvrtc_check(n, rc, out->ptx ? "nvrtcGetPTXSize" : "nvrtcGetCUBINSize", name, err))
        return -1;
    out->image = maml_calloc(size + 1, 1, err);
    if (!out->image) return -1;
    rc = out->ptx ? n->nvrtcGetPTX(prog, out->image) : n->nvrtcGetCUBIN(prog, out->image);
    if (nvrtc_check(n, rc, out->ptx ? "nvrtcGetPTX" : "nvrtcGetCUBIN", name, err)) return -1;
    /* PTX's size counts its NUL; report the text length so size means the same for both. */
    out->size = out->ptx && size > 0 ? size - 1 : size;
    return 0;
}

static int run_nvrtc(const Nvrtc *n, const char *src, const char *name, const OptionList *o,
                     NvrtcImage *out, MamlError *err) {
    nvrtcProgram prog;
    if (NVRTC_CHECK(n, err, name, nvrtcCreateProgram, &prog, src, name, 0, NULL, NULL)) return -1;
    nvrtcResult rc = n->nvrtcCompileProgram(prog, o->n, o->list);
    int status = read_log(n, prog, name, out, err);
    if (status == 0 && rc != NVRTC_SUCCESS)
        status = compile_failed(src, name, out->target, n->nvrtcGetErrorString(rc), out->log, false,
                                err);
    if (status == 0) status = read_image(n, prog, name, out, err);
    nvrtcResult drc = n->nvrtcDestroyProgram(&prog);
    if (status == 0) status = nvrtc_check(n, drc, "nvrtcDestroyProgram", name, err);
    return status;
}

static int from_cache(const NvrtcOptions *opt, CacheKey key, const char *name, NvrtcImage *out,
                      MamlError *err) {
    char what[256];
    snprintf(what, sizeof what, "kernel program %s (%s)", name, out->target);
    return kernel_cache_get(opt->cache, key, what, &out->image, &out->size, &out->lookup, err);
}

int nvrtc_compile(Nvrtc *n, const char *src, const char *name, const NvrtcOptions *opt,
                  NvrtcImage *out, MamlError *err) {
    double t0 = maml_now_ms();
    memset(out, 0, sizeof *out);
    out->lookup = CACHE_MISS;
    OptionList o;
    if (pick_target(n, opt->arch, out, err) || build_options(out, opt, &o, err)) return -1;
    CacheKey key = compile_key(n, src, name, &o, opt);
    if (opt->cache && from_cache(opt, key, name, out, err)) return -1;
    if (out->lookup == CACHE_HIT) {
        out->log = maml_strdup("", err);
        out->ms = maml_now_ms() - t0;
        return out->log ? 0 : -1;
    }
    if (run_nvrtc(n, src, name, &o, out, err)) return -1;
    if (opt->warnings_are_errors && strstr(out->log, "warning"))
        return compile_failed(src, name, out->target, "warnings", out->log, true, err);
    if (opt->cache && kernel_cache_put(opt->cache, key, out->image, out->size, err)) return -1;
    out->ms = maml_now_ms() - t0;
    return 0;
}

#else /* built without the CUDA headers */

struct Nvrtc {
    int unused;
};

int nvrtc_open(Nvrtc **out, MamlError *err) {
    *out = NULL;
    return maml_fail(err, "no NVRTC: mamlc was built without the CUDA headers "
                          "(add -isystem $CUDA_HOME/include to CFLAGS)");
}

void nvrtc_close(Nvrtc *n) {
    (void)n;
}

void nvrtc_version(const Nvrtc *n, int *major, int *minor) {
    (void)n;
    *major = *minor = 0;
}

const char *nvrtc_library(const Nvrtc *n) {
    (void)n;
    return "";
}

bool nvrtc_supports(const Nvrtc *n, int arch) {
    (void)n;
    (void)arch;
    return false;
}

int nvrtc_compile(Nvrtc *n, const char *src, const char *name, const NvrtcOptions *opt,
                  NvrtcImage *out, MamlError *err) {
    (void)n;
    (void)src;
    (void)opt;
    memset(out, 0, sizeof *out);
    return maml_fail(err, "nvrtc: cannot compile %s: built without the CUDA headers", name);
}

#endif
