/* Backend "cpu": lower, plan, render C, compile (or find in the cache), dlopen, run. */
#include "cpu_backend.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "codegen.h"
#include "inputs.h"
#include "kernel.h"
#include "memplan.h"
#include "pipeline.h"

#define DEFAULT_CFLAGS "-O3 -march=native -fopenmp"
/* Always added: what makes the output a loadable object, and no contraction of a * b + c into
 * one rounding, which could round an expression recomputed in two kernels differently in each
 * (a ReLU mask in the backward pass disagreeing with the forward one). */
#define REQUIRED_CFLAGS "-shared -fPIC -ffp-contract=off"
#define TRAILER_MAGIC "MAMLCSUM"
#define TRAILER_BYTES 16
#define OUTPUT_MAX 8192
#define ERROR_LINES 6

typedef void (*KernelFn)(void *arena);

typedef struct {
    CompiledGraph cg; /* the optimized graph, its kernels, plan and source (compiler/pipeline.h) */
    double cc_ms;     /* the C compiler's wall time for this object (see CpuBackendInfo) */
    void *so;
    KernelFn run_all;
    const KernelFn *kernels;
    void *arena;
    bool cache_hit;
    char so_path[1024], source_path[1024];
} CpuImpl;

static int compile_count;

int cpu_backend_compile_count(void) {
    return compile_count;
}

/* ---- hashing ---- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

#define FNV_OFFSET 14695981039346656037ull

/* ---- running programs ---- */

/* Runs argv[0] (found on PATH) with stdout and stderr collected into out (truncated to size).
 * Returns the exit status (128 + signal when killed), or -1 with err when it cannot start. */
static int run_process(char *const argv[], char *out, size_t size, MamlError *err) {
    int fd[2];
    if (pipe(fd) != 0) return maml_fail(err, "pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, fd[1], 2);
    if (rc == 0) rc = posix_spawn_file_actions_addclose(&fa, fd[0]);
    pid_t pid = -1;
    if (rc == 0) rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (rc != 0) {
        close(fd[0]);
        return maml_fail(err, "cannot run '%s': %s", argv[0], strerror(rc));
    }
    size_t len = 0;
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd[0], chunk, sizeof chunk)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        size_t take = (size_t)n < size - 1 - len ? (size_t)n : size - 1 - len;
        memcpy(out + len, chunk, take);
        len += take;
    }
    out[len] = 0;
    close(fd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return maml_fail(err, "waiting for '%s': %s", argv[0], strerror(errno));
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* The first `lines` lines of text, joined with " | " (for one-line error messages). */
static void first_lines(const char *text, int lines, char *buf, size_t size) {
    size_t n = 0;
    buf[0] = 0;
    for (int l = 0; l < lines && *text && n + 4 < size; l++) {
        const char *nl = strchr(text, '\n');
        size_t len = nl ? (size_t)(nl - text) : strlen(text);
        if (len > size - n - 4) len = size - n - 4;
        if (l) memcpy(buf + n, " | ", 3), n += 3;
        memcpy(buf + n, text, len);
        n += len;
        buf[n] = 0;
        if (!nl) break;
        text = nl + 1;
    }
}

static const char *compiler_name(const char *cc) {
    if (cc && *cc) return cc;
    const char *env = getenv("MAMLC_CC");
    return env && *env ? env : "cc";
}

/* `cc --version`, the compiler's identity in the cache key. */
static int compiler_version(const char *cc, char *out, size_t size, MamlError *err) {
    char *argv[] = {(char *)cc, "--version", NULL};
    int status = run_process(argv, out, size, err);
    if (status < 0) {
        char why[MAML_ERROR_MAX];
        memcpy(why, err->message, sizeof why);
        return maml_fail(err, "no usable C compiler for the cpu backend: %s (set MAMLC_CC)", why);
    }
    if (status != 0) {
        char lines[512];
        first_lines(out, 3, lines, sizeof lines);
        return maml_fail(err, "C compiler '%s --version' failed (exit status %d): %s", cc, status,
                         lines);
    }
    return 0;
}

bool cpu_compiler_available(const char *cc, char *why, int why_size) {
    char out[OUTPUT_MAX];
    MamlError err;
    cc = compiler_name(cc);
    if (compiler_version(cc, out, sizeof out, &err) == 0) {
        if (why) snprintf(why, (size_t)why_size, "C compiler '%s' works", cc);
        return true;
    }
    if (why) snprintf(why, (size_t)why_size, "%s", err.message);
    return false;
}

/* ---- files ---- */

static int mkdir_p(const char *dir, MamlError *err) {
    char path[1024];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return maml_fail(err, "cache directory path too long: %s", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != 0) continue;
        char c = *p;
        *p = 0;
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return maml_fail(err, "%s: cannot create directory: %s", path, strerror(errno));
        *p = c;
        if (!c) break;
    }
    return 0;
}

static int cache_dir(const CpuOptions *opt, char *out, size_t size, MamlError *err) {
    const char *env = getenv("MAMLC_CACHE"), *home = getenv("HOME");
    if (opt && opt->cache_dir)
        snprintf(out, size, "%s", opt->cache_dir);
    else if (env && *env)
        snprintf(out, size, "%s", env);
    else if (home && *home)
        snprintf(out, size, "%s/.cache/mamlc/cpu", home);
    else
        snprintf(out, size, "/tmp/mamlc-cache-%d/cpu", (int)getuid());
    return mkdir_p(out, err);
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *data = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) data = malloc((size_t)size + 1);
    if (data && fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *len = data ? (size_t)size : 0;
    return data;
}

/* Writes data to path through a temporary file and a rename, so readers never see half a file. */
static int write_atomic(const char *path, const char *data, size_t len, MamlError *err) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return maml_fail(err, "%s: cannot write: %s", tmp, strerror(errno));
    bool ok = fwrite(data, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return maml_fail(err, "%s: cannot write: %s", path, strerror(errno));
    }
    return 0;
}

/* Appends "MAMLCSUM" and the FNV-1a of the file's bytes: the loader's corruption check. */
static int append_trailer(const char *path, MamlError *err) {
    size_t len;
    unsigned char *data = read_file(path, &len);
    if (!data) return maml_fail(err, "%s: cannot read the compiled object", path);
    uint64_t h = fnv1a(FNV_OFFSET, data, len);
    free(data);
    unsigned char tr[TRAILER_BYTES];
    memcpy(tr, TRAILER_MAGIC, 8);
    for (int i = 0; i < 8; i++) tr[8 + i] = (unsigned char)(h >> (8 * i));
    FILE *f = fopen(path, "ab");
    if (!f) return maml_fail(err, "%s: cannot append: %s", path, strerror(errno));
    bool ok = fwrite(tr, 1, sizeof tr, f) == sizeof tr;
    if (fclose(f) != 0 || !ok) return maml_fail(err, "%s: cannot append the checksum", path);
    return 0;
}

static bool trailer_ok(const char *path) {
    size_t len;
    unsigned char *data = read_file(path, &len);
    if (!data) return false;
    bool ok = len > TRAILER_BYTES && memcmp(data + len - TRAILER_BYTES, TRAILER_MAGIC, 8) == 0;
    if (ok) {
        uint64_t h = fnv1a(FNV_OFFSET, data, len - TRAILER_BYTES), stored = 0;
        for (int i = 0; i < 8; i++) stored |= (uint64_t)data[len - 8 + i] << (8 * i);
        ok = h == stored;
    }
    free(data);
    return ok;
}

/* ---- compile and load ---- */

/* The C compiler's time is kept beside the object (HASH.so.ms), so a report made from a cache hit
 * can still say what the compiler cost; losing the note only loses that figure. */
static void record_cc_ms(const CpuImpl *c) {
    char path[1100], text[32];
    snprintf(path, sizeof path, "%s.ms", c->so_path);
    int n = snprintf(text, sizeof text, "%.1f\n", c->cc_ms);
    MamlError ignored;
    write_atomic(path, text, (size_t)n, &ignored);
}

static double recorded_cc_ms(const CpuImpl *c) {
    char path[1100];
    snprintf(path, sizeof path, "%s.ms", c->so_path);
    FILE *f = fopen(path, "r");
    double ms = -1;
    if (f && fscanf(f, "%lf", &ms) != 1) ms = -1;
    if (f) fclose(f);
    return ms;
}

typedef struct {
    const char *cc;
    char flags[512];
    char hash[17];
    char dir[960];
} BuildKey;

/* Splits flags at spaces into argv (flags is modified). */
static int split_flags(char *flags, char **argv, int max) {
    int n = 0;
    for (char *tok = strtok(flags, " \t"); tok && n < max; tok = strtok(NULL, " \t"))
        argv[n++] = tok;
    return n;
}

static int compile_object(const BuildKey *key, CpuImpl *c, const StrBuf *src, MamlError *err) {
    if (write_atomic(c->source_path, src->data, src->len, err)) return -1;
    char tmp[1100], define[64], flags[512], out[OUTPUT_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", c->so_path, (int)getpid());
    snprintf(define, sizeof define, "-DMAMLC_SO_HASH=\"%s\"", key->hash);
    snprintf(flags, sizeof flags, "%s", key->flags);
    char *argv[80];
    int n = 0;
    argv[n++] = (char *)key->cc;
    n += split_flags(flags, argv + n, 70);
    argv[n++] = define;
    argv[n++] = "-o";
    argv[n++] = tmp;
    argv[n++] = c->source_path;
    argv[n++] = "-lm";
    argv[n] = NULL;
    compile_count++;
    double t0 = maml_now_ms();
    int status = run_process(argv, out, sizeof out, err);
    c->cc_ms = maml_now_ms() - t0;
    if (status != 0) {
        unlink(tmp);
        if (status < 0) return -1;
        char lines[700];
        first_lines(out, ERROR_LINES, lines, sizeof lines);
        return maml_fail(err, "C compiler '%s' failed (exit status %d) on %s: %s", key->cc, status,
                         c->source_path, lines);
    }
    if (append_trailer(tmp, err)) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, c->so_path) != 0) {
        unlink(tmp);
        return maml_fail(err, "%s: cannot store the compiled object: %s", c->so_path,
                         strerror(errno));
    }
    return 0;
}

static void *sym(void *so, const char *name, const char *path, bool *ok, MamlError *err) {
    void *p = dlsym(so, name);
    if (!p && *ok) {
        maml_fail(err, "%s: symbol %s missing", path, name);
        *ok = false;
    }
    return p;
}

/* Opens c->so_path and checks it is the object for this key and plan; -1 with err otherwise. */
static int load_object(const BuildKey *key, CpuImpl *c, size_t elem_size, MamlError *err) {
    /* NODELETE: the object pulls in the OpenMP runtime, whose worker threads outlive any one
     * backend; unloading it under them would crash the next parallel region. */
    void *so = dlopen(c->so_path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!so) return maml_fail(err, "dlopen %s: %s", c->so_path, dlerror());
    bool ok = true;
    const char *hash = sym(so, "mamlc_so_hash", c->so_path, &ok, err);
    const int *real_size = sym(so, "mamlc_real_size", c->so_path, &ok, err);
    const int *n_kernels = sym(so, "mamlc_n_kernels", c->so_path, &ok, err);
    const long long *arena = sym(so, "mamlc_arena_bytes", c->so_path, &ok, err);
    void *run = sym(so, "mamlc_run", c->so_path, &ok, err);
    const KernelFn *kernels = sym(so, "mamlc_kernels", c->so_path, &ok, err);
    if (ok && (strcmp(hash, key->hash) != 0 || *real_size != (int)elem_size ||
               *n_kernels != c->cg.prog.n_kernels || *arena != c->cg.plan.arena_bytes)) {
        maml_fail(err, "%s: built for another program (key %.16s)", c->so_path, hash);
        ok = false;
    }
    if (!ok) {
        dlclose(so);
        return -1;
    }
    c->so = so;
    memcpy(&c->run_all, &run, sizeof run); /* POSIX: dlsym's object pointer is the function */
    c->kernels = kernels;
    return 0;
}

/* Without a working compiler there is no key; the source still goes to the cache directory,
 * named by its own hash, so the message can point at it. */
static int no_compiler(const BuildKey *key, const StrBuf *src, uint64_t src_hash, MamlError *err) {
    char why[MAML_ERROR_MAX], path[1024];
    memcpy(why, err->message, sizeof why);
    snprintf(path, sizeof path, "%s/%016llx.c", key->dir, (unsigned long long)src_hash);
    if (write_atomic(path, src->data, src->len, err)) return -1;
    return maml_fail(err, "%s; generated source: %s", why, path);
}

static int make_key(const CpuOptions *opt, const StrBuf *src, BuildKey *key, MamlError *err) {
    key->cc = compiler_name(opt ? opt->cc : NULL);
    const char *env = getenv("MAMLC_CFLAGS");
    snprintf(key->flags, sizeof key->flags, "%s %s", env && *env ? env : DEFAULT_CFLAGS,
             REQUIRED_CFLAGS);
    if (cache_dir(opt, key->dir, sizeof key->dir, err)) return -1;
    uint64_t h = fnv1a(FNV_OFFSET, src->data, src->len);
    char version[OUTPUT_MAX];
    if (compiler_version(key->cc, version, sizeof version, err))
        return no_compiler(key, src, h, err);
    h = fnv1a(h, key->cc, strlen(key->cc) + 1);
    h = fnv1a(h, key->flags, strlen(key->flags) + 1);
    h = fnv1a(h, version, strlen(version));
    snprintf(key->hash, sizeof key->hash, "%016llx", (unsigned long long)h);
    return 0;
}

/* The cached object when it is intact, else a fresh compile. */
static int obtain_object(const BuildKey *key, CpuImpl *c, const StrBuf *src, size_t elem_size,
                         MamlError *err) {
    snprintf(c->so_path, sizeof c->so_path, "%s/%s.so", key->dir, key->hash);
    snprintf(c->source_path, sizeof c->source_path, "%s/%s.c", key->dir, key->hash);
    if (access(c->so_path, F_OK) == 0) {
        MamlError ignored;
        if (trailer_ok(c->so_path) && load_object(key, c, elem_size, &ignored) == 0) {
            c->cache_hit = true;
            c->cc_ms = recorded_cc_ms(c);
            return 0;
        }
        /* Corrupt or foreign: rebuild. No unlink: by now another process may have renamed a good
         * object into place, which it is about to dlopen; the rebuild's rename replaces the bad
         * one atomically. */
    }
    if (compile_object(key, c, src, err)) return -1;
    record_cc_ms(c);
    return load_object(key, c, elem_size, err);
}

/* ---- running ---- */

static void load_inputs(Backend *b, const TensorSet *inputs) {
    CpuImpl *c = b->impl;
    bool f64 = b->prec == PREC_F64;
    char *arena = c->arena;
    for (int i = 0; i < c->cg.prog.n_bufs; i++) {
        const KBuffer *kb = &c->cg.prog.bufs[i];
        if (kb->kind == BUF_INPUT)
            tensor_copy_reals(tensorset_find(inputs, kb->name), arena + c->cg.plan.offset[i], f64);
    }
}

static int cpu_run(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err) {
    CpuImpl *c = b->impl;
    if (inputs_check(b->graph, inputs, err) || inputs_check_labels(b->graph, inputs, err))
        return -1;
    bool f64 = b->prec == PREC_F64;
    char *arena = c->arena;
    load_inputs(b, inputs);
    c->run_all(arena);
    for (int i = 0; i < c->cg.prog.n_outputs; i++) {
        const KOutput *o = &c->cg.prog.outputs[i];
        if (!tensorset_add(outputs, o->name, f64 ? TENSOR_F64 : TENSOR_F32, o->shape,
                           arena + c->cg.plan.offset[o->buf], err))
            return -1;
    }
    return 0;
}

int cpu_backend_run_kernel(Backend *b, int i, MamlError *err) {
    CpuImpl *c = b->impl;
    if (i < 0 || i >= c->cg.prog.n_kernels)
        return maml_fail(err, "kernel %d out of range (%d kernels)", i, c->cg.prog.n_kernels);
    c->kernels[i](c->arena);
    return 0;
}

int cpu_backend_run_timed(Backend *b, const TensorSet *inputs, double *kernel_ms, MamlError *err) {
    CpuImpl *c = b->impl;
    if (inputs_check(b->graph, inputs, err) || inputs_check_labels(b->graph, inputs, err))
        return -1;
    /* fresh inputs every time: kernels may write in place over inputs that die */
    load_inputs(b, inputs);
    for (int i = 0; i < c->cg.prog.n_kernels; i++) {
        double t0 = maml_now_ms();
        c->kernels[i](c->arena);
        kernel_ms[i] = maml_now_ms() - t0;
    }
    return 0;
}

static void cpu_destroy(Backend *b) {
    CpuImpl *c = b->impl;
    if (c) {
        if (c->so) dlclose(c->so);
        free(c->arena);
        compiled_graph_free(&c->cg);
        free(c);
    }
    free(b);
}

int cpu_backend_info(const Backend *b, CpuBackendInfo *info, MamlError *err) {
    if (!b || strcmp(b->name, "cpu") != 0) return maml_fail(err, "not a cpu backend");
    const CpuImpl *c = b->impl;
    memset(info, 0, sizeof *info);
    info->n_kernels = c->cg.prog.n_kernels;
    info->n_graph_nodes = c->cg.prog.n_graph_nodes;
    info->arena_bytes = c->cg.plan.arena_bytes;
    info->cache_hit = c->cache_hit;
    info->cc_ms = c->cc_ms;
    snprintf(info->so_path, sizeof info->so_path, "%s", c->so_path);
    snprintf(info->source_path, sizeof info->source_path, "%s", c->source_path);
    return 0;
}

const CompiledGraph *cpu_backend_compiled(const Backend *b) {
    return b && strcmp(b->name, "cpu") == 0 ? &((const CpuImpl *)b->impl)->cg : NULL;
}

/* Compiles (or finds in the cache) the rendered program and allocates the arena. */
static int prepare(Precision prec, const CpuOptions *opt, CpuImpl *c, MamlError *err) {
    size_t elem = prec == PREC_F64 ? 8 : 4;
    if (c->cg.f64 != (prec == PREC_F64) || c->cg.plan.elem_size != elem)
        return maml_fail(err, "compiled graph is for %zu-byte reals, the backend for %zu",
                         c->cg.plan.elem_size, elem);
    if (c->cg.source.len == 0) return maml_fail(err, "compiled graph has no C source (target C)");
    BuildKey key;
    if (make_key(opt, &c->cg.source, &key, err)) return -1;
    if (obtain_object(&key, c, &c->cg.source, elem, err)) return -1;
    size_t bytes = (size_t)(c->cg.plan.arena_bytes > 0 ? c->cg.plan.arena_bytes : MEMPLAN_ALIGN);
    c->arena =
        aligned_alloc(MEMPLAN_ALIGN, (bytes + MEMPLAN_ALIGN - 1) / MEMPLAN_ALIGN * MEMPLAN_ALIGN);
    if (!c->arena) return maml_fail(err, "out of memory allocating the %zu-byte arena", bytes);
    return 0;
}

int cpu_backend_open_compiled(const Graph *g, Precision prec, const CpuOptions *opt,
                              CompiledGraph *cg, Backend **out, MamlError *err) {
    *out = NULL;
    Backend *b = maml_calloc(1, sizeof *b, err);
    CpuImpl *c = b ? maml_calloc(1, sizeof *c, err) : NULL;
    if (!c) {
        free(b);
        return -1;
    }
    c->cg = *cg; /* taken over: the pointers move, nothing is copied */
    memset(cg, 0, sizeof *cg);
    b->name = "cpu";
    b->run = cpu_run;
    b->destroy = cpu_destroy;
    b->graph = g;
    b->prec = prec;
    b->impl = c;
    if (prepare(prec, opt, c, err)) {
        *cg = c->cg; /* handed back: still the caller's */
        memset(&c->cg, 0, sizeof c->cg);
        cpu_destroy(b);
        return -1;
    }
    *out = b;
    return 0;
}

int cpu_backend_open(const Graph *g, Precision prec, const CpuOptions *opt, Backend **out,
                     MamlError *err) {
    *out = NULL;
    PipelineOptions po = pipeline_default_options();
    po.no_fuse = opt && opt->no_fuse;
    po.f64 = prec == PREC_F64;
    po.target = PIPELINE_TARGET_C;
    CompiledGraph cg;
    int rc = compile_pipeline(g, &po, &cg, err);
    if (rc == 0) rc = cpu_backend_open_compiled(g, prec, opt, &cg, out, err);
    compiled_graph_free(&cg); /* empty after a successful open */
    return rc;
}
