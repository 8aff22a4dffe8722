/* The CUDA runtime pieces: the kernel cache, NVRTC (no GPU needed), the driver loader, cuDNN
 * descriptors; and, where a GPU exists, kernels, graphs and cuDNN convolutions running on it
 * (those tests skip, saying why, elsewhere). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cuda_driver.h"
#include "cuda_nvrtc.h"
#include "cudnn_conv.h"
#include "kernel_cache.h"
#include "maml.h"
#include "spec.h"
#include "test_util.h"

/* ---- helpers ------------------------------------------------------------------------------- */

/* Removes the files of a flat directory, then the directory. */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    char path[1200];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Number of files in dir whose names end with suffix (all files for ""). */
static int count_files(const char *dir, const char *suffix, char *last, size_t last_size) {
    DIR *d = opendir(dir);
    cr_assert(d, "cannot open %s", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name), sl = strlen(suffix);
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (len < sl || strcmp(e->d_name + len - sl, suffix) != 0) continue;
        if (last) snprintf(last, last_size, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static void flip_byte(const char *path, long offset) {
    FILE *f = fopen(path, "r+b");
    cr_assert(f);
    cr_assert_eq(fseek(f, offset, SEEK_SET), 0);
    int c = fgetc(f);
    cr_assert_neq(c, EOF);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

static void truncate_to(const char *path, off_t size) {
    cr_assert_eq(truncate(path, size), 0, "truncate %s", path);
}

/* ---- kernel cache -------------------------------------------------------------------------- */

Test(kernel_cache, hash_is_incremental_and_keys_respect_part_boundaries) {
    const char *text = "extern \"C\" __global__ void k() {} // some kernel source text";
    size_t n = strlen(text);
    uint64_t whole = hash64(text, n, 7);
    for (size_t split = 0; split <= n; split++) {
        Hash64 h;
        hash64_init(&h, 7);
        hash64_update(&h, text, split);
        hash64_update(&h, text + split, n - split);
        cr_assert_eq(hash64_final(&h), whole, "split at %zu", split);
    }
    cr_assert_neq(hash64(text, n, 8), whole, "the seed matters");
    cr_assert_neq(hash64(text, n - 1, 7), whole);
    CacheKeyHasher a, b, c;
    cache_key_begin(&a);
    cache_key_add_str(&a, "ab");
    cache_key_add_str(&a, "c");
    cache_key_begin(&b);
    cache_key_add_str(&b, "a");
    cache_key_add_str(&b, "bc");
    cache_key_begin(&c);
    cache_key_add_str(&c, "ab");
    cache_key_add_str(&c, NULL);
    CacheKey ka = cache_key_end(&a), kb = cache_key_end(&b), kc = cache_key_end(&c);
    cr_assert(ka.lo != kb.lo && ka.hi != kb.hi && ka.lo != kc.lo);
    cr_assert_neq(ka.lo, ka.hi, "the two halves are independent hashes");
}

Test(kernel_cache, root_is_mamlc_cache_or_home) {
    char buf[1024];
    MamlError err;
    setenv("MAMLC_CACHE", "/tmp/some-cache", 1);
    cr_assert_eq(kernel_cache_root(buf, sizeof buf, &err), 0, "%s", err.message);
    cr_assert_str_eq(buf, "/tmp/some-cache");
    unsetenv("MAMLC_CACHE");
    setenv("HOME", "/home/someone", 1);
    cr_assert_eq(kernel_cache_root(buf, sizeof buf, &err), 0, "%s", err.message);
    cr_assert_str_eq(buf, "/home/someone/.cache/mamlc");
}

Test(kernel_cache, put_get_miss_and_require) {
    const char *root = temp_dir(0);
    MamlError err;
    KernelCache c;
    cr_assert_eq(kernel_cache_open(&c, root, "cuda/deeper", false, &err), 0, "%s", err.message);
    CacheKeyHasher h;
    cache_key_begin(&h);
    cache_key_add_str(&h, "source");
    CacheKey key = cache_key_end(&h);
    void *data;
    size_t size;
    CacheLookup lk;
    cr_assert_eq(kernel_cache_get(&c, key, "k", &data, &size, &lk, &err), 0, "%s", err.message);
    cr_assert_eq(lk, CACHE_MISS);
    cr_assert_null(data);
    const char payload[] = "\x7f"
                           "ELF and some bytes\0with a NUL inside";
    cr_assert_eq(kernel_cache_put(&c, key, payload, sizeof payload, &err), 0, "%s", err.message);
    cr_assert_eq(kernel_cache_get(&c, key, "k", &data, &size, &lk, &err), 0, "%s", err.message);
    cr_assert_eq(lk, CACHE_HIT);
    cr_assert_eq(size, sizeof payload);
    cr_assert_eq(memcmp(data, payload, size), 0);
    cr_assert_eq(((char *)data)[size], 0, "a NUL follows the payload");
    free(data);
    cr_assert_eq(count_files(c.dir, "", NULL, 0), 1, "no temporary files are left behind");
    KernelCache strict;
    cr_assert_eq(kernel_cache_open(&strict, root, "cuda/deeper", true, &err), 0, "%s", err.message);
    cr_assert_eq(kernel_cache_get(&strict, key, "k", &data, &size, &lk, &err), 0, "%s",
                 err.message);
    free(data);
    key.hi ^= 1;
    cr_assert_eq(kernel_cache_get(&strict, key, "kernel foo (sm_90)", &data, &size, &lk, &err), -1);
    cr_assert(strstr(err.message, "--require-cache: kernel cache miss for kernel foo (sm_90)"),
              "%s", err.message);
    char top[1100];
    snprintf(top, sizeof top, "%s/cuda", root);
    remove_dir(c.dir);
    rmdir(top);
    rmdir(root);
}

Test(kernel_cache, damaged_entries_are_detected_and_rebuilt) {
    const char *root = temp_dir(0);
    MamlError err;
    KernelCache c;
    cr_assert_eq(kernel_cache_open(&c, root, NULL, false, &err), 0, "%s", err.message);
    CacheKey key = {1234, 5678};
    char payload[4000], path[1200];
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (char)(i * 31);
    kernel_cache_path(&c, key, path, sizeof path);
    /* (damage, expected): a flipped payload byte, a flipped header byte, a truncation, an empty
     * file, a file shorter than the header */
    for (int damage = 0; damage < 5; damage++) {
        cr_assert_eq(kernel_cache_put(&c, key, payload, sizeof payload, &err), 0, "%s",
                     err.message);
        if (damage == 0) flip_byte(path, 48 + 1000);
        if (damage == 1) flip_byte(path, 25);
        if (damage == 2) truncate_to(path, 48 + 3999);
        if (damage == 3) truncate_to(path, 0);
        if (damage == 4) truncate_to(path, 20);
        void *data;
        size_t size;
        CacheLookup lk;
        cr_assert_eq(kernel_cache_get(&c, key, "k", &data, &size, &lk, &err), 0, "%s", err.message);
        cr_assert_eq(lk, CACHE_CORRUPT, "damage %d not detected", damage);
        cr_assert_null(data);
        KernelCache strict = c;
        strict.require = true;
        cr_assert_eq(kernel_cache_get(&strict, key, "k", &data, &size, &lk, &err), -1);
        cr_assert(strstr(err.message, "is corrupt"), "%s", err.message);
        cr_assert_eq(kernel_cache_put(&c, key, payload, sizeof payload, &err), 0, "%s",
                     err.message);
        cr_assert_eq(kernel_cache_get(&c, key, "k", &data, &size, &lk, &err), 0, "%s", err.message);
        cr_assert_eq(lk, CACHE_HIT, "damage %d: not rebuilt", damage);
        free(data);
    }
    remove_dir(root);
}

/* Writers replace one entry again and again with payloads of different sizes while a reader
 * reads it: the reader must only ever see a miss (before the first write) or a whole payload. */
Test(kernel_cache, concurrent_writers_never_show_a_torn_entry) {
    const char *root = temp_dir(0);
    MamlError err;
    KernelCache c;
    cr_assert_eq(kernel_cache_open(&c, root, NULL, false, &err), 0, "%s", err.message);
    CacheKey key = {42, 43};
    enum { WRITERS = 3, ROUNDS = 150 };
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        cr_assert_geq(pids[w], 0);
        if (pids[w] == 0) {
            size_t size = 20000 + 7000 * (size_t)w;
            char *p = malloc(size);
            memset(p, 'a' + w, size);
            int bad = 0;
            for (int r = 0; r < ROUNDS; r++) bad |= kernel_cache_put(&c, key, p, size, NULL);
            free(p);
            _exit(bad ? 1 : 0);
        }
    }
    int hits = 0, done = 0;
    while (done < WRITERS) {
        void *data;
        size_t size;
        CacheLookup lk;
        cr_assert_eq(kernel_cache_get(&c, key, "k", &data, &size, &lk, &err), 0, "%s", err.message);
        cr_assert_neq(lk, CACHE_CORRUPT, "a reader saw a torn entry");
        if (lk == CACHE_HIT) {
            int w = ((char *)data)[0] - 'a';
            cr_assert(w >= 0 && w < WRITERS && size == 20000 + 7000 * (size_t)w);
            for (size_t i = 0; i < size; i++) cr_assert_eq(((char *)data)[i], 'a' + w);
            hits++;
        }
        free(data);
        int status;
        while (waitpid(-1, &status, WNOHANG) > 0) {
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a writer failed");
            done++;
        }
    }
    cr_assert_gt(hits, 0);
    cr_assert_eq(count_files(root, "", NULL, 0), 1, "temporary files left behind");
    remove_dir(root);
}

/* ---- NVRTC --------------------------------------------------------------------------------- */

#if MAMLC_HAVE_CUDA

/* The text of section `name` ("@@ name" up to the next "@@ " line) of a template file. */
static char *template_section(const char *path, const char *name) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char head[128];
    snprintf(head, sizeof head, "@@ %s\n", name);
    char *s = strstr(buf, head);
    cr_assert(s, "no section %s in %s", name, path);
    s += strlen(head);
    char *end = strstr(s, "\n@@ ");
    return strndup(s, end ? (size_t)(end - s + 1) : strlen(s));
}

static char *selftest_source(void) {
    return template_section("templates/cuda/selftest.cu.tmpl", "selftest");
}

static Nvrtc *open_nvrtc(void) {
    Nvrtc *n;
    MamlError err;
    cr_assert_eq(nvrtc_open(&n, &err), 0, "%s", err.message);
    return n;
}

/* Compiles src for arch with the cache c (may be NULL); asserts success. */
static void compile_ok(Nvrtc *n, const char *src, const char *name, int arch, const KernelCache *c,
                       NvrtcImage *img) {
    MamlError err;
    NvrtcOptions o = {.arch = arch, .cache = c, .warnings_are_errors = true};
    int rc = nvrtc_compile(n, src, name, &o, img, &err);
    cr_assert_eq(rc, 0, "%s\nlog:\n%s", err.message, img->log ? img->log : "");
}

Test(nvrtc, selftest_template_compiles_for_sm90_and_sm80_without_warnings) {
    Nvrtc *n = open_nvrtc();
    char *src = selftest_source();
    int archs[] = {90, 80};
    for (int i = 0; i < 2; i++) {
        NvrtcImage img;
        compile_ok(n, src, "selftest.cu", archs[i], NULL, &img);
        cr_assert_null(strstr(img.log, "warning"), "sm_%d: %s", archs[i], img.log);
        cr_assert(!img.ptx && img.size > 4 &&
                      !memcmp(img.image,
                              "\x7f"
                              "ELF",
                              4),
                  "sm_%d: not a CUBIN", archs[i]);
        char want[16];
        snprintf(want, sizeof want, "sm_%d", archs[i]);
        cr_assert_str_eq(img.target, want);
        cr_assert_eq(img.lookup, CACHE_MISS);
        int major, minor;
        nvrtc_version(n, &major, &minor);
        cr_log_info("NVRTC %d.%d (%s): selftest.cu for sm_%d in %.1f ms, %zu-byte CUBIN", major,
                    minor, nvrtc_library(n), archs[i], img.ms, img.size);
        nvrtc_image_free(&img);
    }
    free(src);
    nvrtc_close(n);
}

Test(nvrtc, second_compile_hits_the_cache_and_require_cache_misses_fail) {
    Nvrtc *n = open_nvrtc();
    char *src = selftest_source();
    const char *root = temp_dir(0);
    MamlError err;
    KernelCache c;
    cr_assert_eq(kernel_cache_open(&c, root, "cuda", false, &err), 0, "%s", err.message);
    NvrtcImage first, second;
    compile_ok(n, src, "selftest.cu", 90, &c, &first);
    cr_assert_eq(first.lookup, CACHE_MISS);
    compile_ok(n, src, "selftest.cu", 90, &c, &second);
    cr_assert_eq(second.lookup, CACHE_HIT);
    cr_assert(second.size == first.size && !memcmp(second.image, first.image, first.size));
    cr_log_info("selftest.cu sm_90: compiled in %.1f ms, from the cache in %.2f ms", first.ms,
                second.ms);
    nvrtc_image_free(&second);
    KernelCache strict = c;
    strict.require = true;
    compile_ok(n, src, "selftest.cu", 90, &strict, &second);
    cr_assert_eq(second.lookup, CACHE_HIT);
    nvrtc_image_free(&second);
    /* Another architecture or option is another entry: a miss, an error under require. */
    NvrtcOptions o = {.arch = 80, .cache = &strict};
    cr_assert_eq(nvrtc_compile(n, src, "selftest.cu", &o, &second, &err), -1);
    cr_assert(strstr(err.message, "--require-cache: kernel cache miss for kernel program "
                                  "selftest.cu (sm_80)"),
              "%s", err.message);
    nvrtc_image_free(&second);
    const char *opts[] = {"-DMAMLC_SOMETHING=1"};
    NvrtcOptions o2 = {.arch = 90, .cache = &c, .options = opts, .n_options = 1};
    cr_assert_eq(nvrtc_compile(n, src, "selftest.cu", &o2, &second, &err), 0, "%s", err.message);
    cr_assert_eq(second.lookup, CACHE_MISS);
    nvrtc_image_free(&second);
    nvrtc_image_free(&first);
    char sub[1100];
    snprintf(sub, sizeof sub, "%s/cuda", root);
    remove_dir(sub);
    rmdir(root);
    free(src);
    nvrtc_close(n);
}

Test(nvrtc, corrupted_cache_entry_is_detected_and_rebuilt) {
    Nvrtc *n = open_nvrtc();
    char *src = selftest_source();
    const char *root = temp_dir(0);
    MamlError err;
    KernelCache c;
    cr_assert_eq(kernel_cache_open(&c, root, NULL, false, &err), 0, "%s", err.message);
    NvrtcImage good, img;
    compile_ok(n, src, "selftest.cu", 90, &c, &good);
    char entry[1200];
    cr_assert_eq(count_files(root, ".kc", entry, sizeof entry), 1);
    flip_byte(entry, 48 + (long)good.size / 2);
    compile_ok(n, src, "selftest.cu", 90, &c, &img);
    cr_assert_eq(img.lookup, CACHE_CORRUPT);
    cr_assert(img.size == good.size && !memcmp(img.image, good.image, good.size));
    nvrtc_image_free(&img);
    truncate_to(entry, 100);
    compile_ok(n, src, "selftest.cu", 90, &c, &img);
    cr_assert_eq(img.lookup, CACHE_CORRUPT);
    nvrtc_image_free(&img);
    compile_ok(n, src, "selftest.cu", 90, &c, &img);
    cr_assert_eq(img.lookup, CACHE_HIT, "the rebuilt entry is used");
    cr_assert(img.size == good.size && !memcmp(img.image, good.image, good.size));
    nvrtc_image_free(&img);
    nvrtc_image_free(&good);
    remove_dir(root);
    free(src);
    nvrtc_close(n);
}

static const char *BAD_SOURCE =
    "extern \"C\" __global__ void __launch_bounds__(128) good(float *y) { y[0] = 1.0f; }\n"
    "\n"
    "extern \"C\" __global__ void __launch_bounds__(128)\n"
    "bad_kernel(const float *x, float *y) {\n"
    "    int i = threadIdx.x;\n"
    "    y[i] = x[i] +;\n"
    "}\n";

Test(nvrtc, syntax_error_names_program_kernel_and_line) {
    Nvrtc *n = open_nvrtc();
    MamlError err;
    NvrtcImage img;
    NvrtcOptions o = {.arch = 90};
    cr_assert_eq(nvrtc_compile(n, BAD_SOURCE, "kernels.cu", &o, &img, &err), -1);
    const char *m = err.message;
    cr_assert(strstr(m, "nvrtc: kernels.cu (sm_90) does not compile"), "%s", m);
    cr_assert(strstr(m, "kernels.cu(6): error: expected an expression"), "%s", m);
    cr_assert(strstr(m, "in kernel bad_kernel"), "%s", m);
    cr_assert(strstr(m, "line 6: `y[i] = x[i] +;`"), "%s", m);
    cr_assert_null(strchr(m, '\n'), "one line: %s", m);
    cr_assert(img.log && strstr(img.log, "error"), "the whole log is kept");
    nvrtc_image_free(&img);
    nvrtc_close(n);
}

Test(nvrtc, warnings_fail_when_asked) {
    Nvrtc *n = open_nvrtc();
    const char *src = "extern \"C\" __global__ void w(float *y) {\n"
                      "    int unused = 3;\n"
                      "    y[0] = 1.0f;\n"
                      "}\n";
    MamlError err;
    NvrtcImage img;
    NvrtcOptions o = {.arch = 90, .warnings_are_errors = true};
    cr_assert_eq(nvrtc_compile(n, src, "warn.cu", &o, &img, &err), -1);
    cr_assert(strstr(err.message, "warn.cu (sm_90) compiles with warnings"), "%s", err.message);
    cr_assert(strstr(err.message, "in kernel w, line 2: `int unused = 3;`"), "%s", err.message);
    nvrtc_image_free(&img);
    o.warnings_are_errors = false;
    cr_assert_eq(nvrtc_compile(n, src, "warn.cu", &o, &img, &err), 0, "%s", err.message);
    cr_assert(strstr(img.log, "warning"));
    nvrtc_image_free(&img);
    nvrtc_close(n);
}

Test(nvrtc, newer_architecture_gets_ptx_and_older_is_refused) {
    Nvrtc *n = open_nvrtc();
    char *src = selftest_source();
    NvrtcImage img;
    compile_ok(n, src, "selftest.cu", 990, NULL, &img);
    cr_assert(img.ptx);
    cr_assert(!strncmp(img.target, "compute_", 8), "%s", img.target);
    cr_assert(strstr(img.image, ".entry mamlc_selftest_axpy"), "PTX text");
    cr_assert_eq(strlen(img.image), img.size);
    nvrtc_image_free(&img);
    MamlError err;
    NvrtcOptions o = {.arch = 20};
    cr_assert_eq(nvrtc_compile(n, src, "selftest.cu", &o, &img, &err), -1);
    cr_assert(strstr(err.message, "cannot compile for sm_20"), "%s", err.message);
    nvrtc_image_free(&img);
    free(src);
    nvrtc_close(n);
}

#else

Test(nvrtc, needs_the_cuda_headers) {
    cr_skip_test("mamlc was built without the CUDA headers (add -isystem $CUDA_HOME/include)");
}

#endif

/* ---- the driver ---------------------------------------------------------------------------- */

Test(cuda_driver, without_a_gpu_open_fails_with_one_clear_line) {
    CudaDriver d;
    MamlError err;
    if (cuda_driver_open(&d, 0, &err) == 0) {
        char what[512];
        cuda_driver_describe(&d, what, sizeof what);
        cuda_driver_close(&d);
        cr_skip_test("a CUDA device is present (%s): the no-driver message is not checked here",
                     what);
    }
    const char *m = err.message;
    bool clear = !strncmp(m, "no CUDA driver: libcuda.so.1 not found (", 40) ||
                 !strncmp(m, "no CUDA device: cuInit(): ", 26);
    if (!MAMLC_HAVE_CUDA) clear = strstr(m, "built without the CUDA headers") != NULL;
    cr_assert(clear, "unclear message: %s", m);
    cr_assert_null(strchr(m, '\n'), "one line: %s", m);
    cuda_driver_close(&d); /* safe after a failed open */
}

#if MAMLC_HAVE_CUDA
/* The toolkit's stub libcuda exports every driver entry point but answers every call with
 * CUDA_ERROR_STUB_LIBRARY: so every versioned name must resolve, and the failing call is
 * reported with its name and code. */
Test(cuda_driver, stub_library_resolves_every_entry_point_and_fails_at_cuinit) {
    const char *stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
    if (access(stub, R_OK) != 0) cr_skip_test("no CUDA toolkit stub library at %s", stub);
    setenv("MAMLC_LIBCUDA", stub, 1);
    CudaDriver d;
    MamlError err;
    cr_assert_eq(cuda_driver_open(&d, 0, &err), -1);
    /* the stub's cuGetErrorName fails too, so the code is shown as a number */
    char want[128];
    snprintf(want, sizeof want,
             "no CUDA device: cuInit(): CUresult %d: ", (int)CUDA_ERROR_STUB_LIBRARY);
    cr_assert(strstr(err.message, want), "%s", err.message);
    cuda_driver_close(&d);
}

Test(cuda_driver, a_named_library_that_does_not_load_says_so) {
    setenv("MAMLC_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
    CudaDriver d;
    MamlError err;
    cr_assert_eq(cuda_driver_open(&d, 0, &err), -1);
    cr_assert(strstr(err.message, "no CUDA driver: $MAMLC_LIBCUDA=/nonexistent/libcuda.so.1 does "
                                  "not load"),
              "%s", err.message);
}
#endif

/* ---- cuDNN --------------------------------------------------------------------------------- */

#if MAMLC_HAVE_CUDA

static Cudnn *open_cudnn(void) {
    Cudnn *c;
    MamlError err;
    cr_assert_eq(cudnn_open(&c, &err), 0, "%s", err.message);
    return c;
}

/* The dims cuDNN computes, [N, T*O, HO, WO], against the graph's y/dy [T, N, O, HO, WO]. */
static void assert_dims_match(const int d[4], const Shape *y, const char *what) {
    cr_assert(d[0] == y->dims[1] && d[1] == y->dims[0] * y->dims[2] && d[2] == y->dims[3] &&
                  d[3] == y->dims[4],
              "%s: cuDNN [%d, %d, %d, %d] vs graph [%lld, %lld, %lld, %lld, %lld]", what, d[0],
              d[1], d[2], d[3], (long long)y->dims[0], (long long)y->dims[1], (long long)y->dims[2],
              (long long)y->dims[3], (long long)y->dims[4]);
}

/* Creates descriptors for every convolution of the graph's training step and checks that
 * cuDNN's output size equals shape inference's; counts[k] counts CONV2D, GRAD_INPUT, GRAD_WEIGHT.
 */
static void check_graph_convs(Cudnn *c, const char *path, int counts[3]) {
    GraphSpec spec;
    memset(&spec, 0, sizeof spec);
    MamlError err;
    cr_assert_eq(spec_load(path, NULL, 0, &spec, &err), 0, "%s", err.message);
    Graph g;
    graph_init(&g);
    cr_assert_eq(maml_build(&spec, MAML_TRAIN_STEP, spec.maml.meta_batch, &g, NULL, &err), 0, "%s",
                 err.message);
    for (int i = 0; i < g.n_nodes; i++) {
        const Node *nd = &g.nodes[i];
        int kind = nd->op == OP_CONV2D               ? 0
                   : nd->op == OP_CONV2D_GRAD_INPUT  ? 1
                   : nd->op == OP_CONV2D_GRAD_WEIGHT ? 2
                                                     : -1;
        if (kind < 0) continue;
        ConvShape s;
        cr_assert_eq(conv_shape_of_node(&g, i, &s, &err), 0, "%s", err.message);
        cr_assert_eq(s.tasks, spec.maml.meta_batch);
        CudnnConv *cv;
        cr_assert_eq(cudnn_conv_create(c, &s, nd->origin, false, &cv, &err), 0, "%s: %s", path,
                     err.message);
        int d[4];
        cr_assert_eq(cudnn_conv_output_dims(cv, d, &err), 0, "%s", err.message);
        /* y for CONV2D is the node; for the gradients it is dy, an operand */
        const Shape *y = kind == 0 ? &nd->shape : &g.nodes[nd->in[kind == 1 ? 0 : 1]].shape;
        char what[256];
        snprintf(what, sizeof what, "%s node %d (%s, %s)", path, i, op_info[nd->op].name,
                 nd->origin ? nd->origin : "");
        assert_dims_match(d, y, what);
        cudnn_conv_destroy(cv);
        counts[kind]++;
    }
    graph_free(&g);
    spec_free(&spec);
}

Test(cudnn, descriptors_agree_with_shape_inference_on_shipped_graphs) {
    Cudnn *c = open_cudnn();
    const char *graphs[] = {"graphs/omniglot_seed.yaml", "graphs/omniglot_5w1s.yaml"};
    for (int i = 0; i < 2; i++) {
        int counts[3] = {0, 0, 0};
        check_graph_convs(c, graphs[i], counts);
        cr_assert(counts[0] > 0 && counts[1] > 0 && counts[2] > 0, "%s: %d/%d/%d convolutions",
                  graphs[i], counts[0], counts[1], counts[2]);
        cr_log_info("%s: cuDNN agrees on %d forward, %d grad-input, %d grad-weight convolutions "
                    "(cuDNN %zu)",
                    graphs[i], counts[0], counts[1], counts[2], cudnn_version(c));
    }
    cudnn_close(c);
}

Test(cudnn, a_strided_grouped_conv_has_the_expected_output) {
    Cudnn *c = open_cudnn();
    ConvShape s = {.tasks = 4,
                   .batch = 3,
                   .in_ch = 5,
                   .height = 9,
                   .width = 8,
                   .out_ch = 6,
                   .kh = 3,
                   .kw = 2,
                   .stride = 2,
                   .padding = 1};
    CudnnConv *cv;
    MamlError err;
    cr_assert_eq(cudnn_conv_create(c, &s, "strided", false, &cv, &err), 0, "%s", err.message);
    int d[4];
    cr_assert_eq(cudnn_conv_output_dims(cv, d, &err), 0, "%s", err.message);
    cr_assert(d[0] == 3 && d[1] == 24 && d[2] == 5 && d[3] == 5, "[%d %d %d %d]", d[0], d[1], d[2],
              d[3]);
    cr_assert_eq(cudnn_conv_choose(cv, 1 << 20, &err), -1, "no handle yet");
    cr_assert(strstr(err.message, "needs cudnn_attach"), "%s", err.message);
    cudnn_conv_destroy(cv);
    cudnn_close(c);
}

Test(cudnn, attaching_without_a_device_names_cudnn_create) {
    CudaDriver d;
    MamlError err;
    if (cuda_driver_open(&d, 0, &err) == 0) {
        cuda_driver_close(&d);
        cr_skip_test("a CUDA device is present: cudnnCreate would succeed");
    }
    Cudnn *c = open_cudnn();
    cr_assert_eq(cudnn_attach(c, NULL, &err), -1);
    cr_assert(strstr(err.message, "cudnnCreate(handle)"), "%s", err.message);
    cudnn_close(c);
}

/* ---- on a GPU ------------------------------------------------------------------------------ */

static void open_device_or_skip(CudaDriver *d) {
    MamlError err;
    if (cuda_driver_open(d, 0, &err)) cr_skip_test("no CUDA device here (%s)", err.message);
}

#define CU_OK(d, what, fn, ...)                                                                    \
    do {                                                                                           \
        MamlError e_;                                                                              \
        cr_assert_eq(CU_CHECK(d, &e_, what, fn, __VA_ARGS__), 0, "%s", e_.message);                \
    } while (0)

/* sum of (1 + k * a * x[i]) for the selftest data x[i] = (i % 7) / 2 */
static double selftest_expected_sum(int n, double scale) {
    double s = 0;
    for (int i = 0; i < n; i++) s += 1.0 + scale * (i % 7) * 0.5;
    return s;
}

Test(cuda_device, selftest_kernels_run_and_replay_as_a_graph) {
    CudaDriver d;
    open_device_or_skip(&d);
    char what[512];
    cuda_driver_describe(&d, what, sizeof what);
    cr_log_info("device: %s", what);
    Nvrtc *n = open_nvrtc();
    char *src = selftest_source();
    NvrtcImage img;
    compile_ok(n, src, "selftest.cu", cuda_driver_arch(&d), NULL, &img);
    MamlError err;
    CUmodule mod;
    CUfunction axpy, sum;
    cr_assert_eq(cuda_module_load(&d, img.image, "selftest.cu", &mod, &err), 0, "%s", err.message);
    cr_assert_eq(cuda_module_function(&d, mod, "mamlc_selftest_axpy", &axpy, &err), 0, "%s",
                 err.message);
    cr_assert_eq(cuda_module_function(&d, mod, "mamlc_selftest_sum", &sum, &err), 0, "%s",
                 err.message);
    cr_assert_eq(cuda_module_function(&d, mod, "no_such_kernel", &sum, &err), -1);
    cr_assert(strstr(err.message, "cuModuleGetFunction(no_such_kernel): CUDA_ERROR_NOT_FOUND"),
              "%s", err.message);
    cr_assert_eq(cuda_module_function(&d, mod, "mamlc_selftest_sum", &sum, &err), 0, "%s",
                 err.message);

    enum { N = 1000 };
    CUstream s;
    CU_OK(&d, "test", cuStreamCreate, &s, CU_STREAM_NON_BLOCKING);
    float *host;
    CU_OK(&d, "test", cuMemHostAlloc, (void **)&host, (2 * N + 1) * sizeof(float), 0);
    for (int i = 0; i < N; i++) {
        host[i] = (float)(i % 7) * 0.5f;
        host[N + i] = 1.0f;
    }
    CUdeviceptr dx, dy, dsum;
    CU_OK(&d, "test", cuMemAlloc, &dx, N * sizeof(float));
    CU_OK(&d, "test", cuMemAlloc, &dy, N * sizeof(float));
    CU_OK(&d, "test", cuMemAlloc, &dsum, sizeof(float));
    CU_OK(&d, "test", cuMemcpyHtoDAsync, dx, host, N * sizeof(float), s);
    CU_OK(&d, "test", cuMemcpyHtoDAsync, dy, host + N, N * sizeof(float), s);
    int count = N;
    float a = 2.0f;
    void *axpy_args[] = {&count, &a, &dx, &dy};
    void *sum_args[] = {&count, &dy, &dsum};
    CU_OK(&d, "mamlc_selftest_axpy", cuLaunchKernel, axpy, (N + 255) / 256, 1, 1, 256, 1, 1, 0, s,
          axpy_args, NULL);
    CU_OK(&d, "mamlc_selftest_sum", cuLaunchKernel, sum, 1, 1, 1, 256, 1, 1, 0, s, sum_args, NULL);
    CU_OK(&d, "test", cuMemcpyDtoHAsync, host + 2 * N, dsum, sizeof(float), s);
    CU_OK(&d, "test", cuStreamSynchronize, s);
    double want = selftest_expected_sum(N, 2.0);
    cr_assert(fabs(host[2 * N] - want) <= 1e-5 * want, "sum %g, want %g", host[2 * N], want);

    /* The same two launches captured once and replayed three times. */
    CUgraph graph;
    CUgraphExec exec;
    CU_OK(&d, "capture", cuStreamBeginCapture, s, CU_STREAM_CAPTURE_MODE_GLOBAL);
    CU_OK(&d, "mamlc_selftest_axpy", cuLaunchKernel, axpy, (N + 255) / 256, 1, 1, 256, 1, 1, 0, s,
          axpy_args, NULL);
    CU_OK(&d, "mamlc_selftest_sum", cuLaunchKernel, sum, 1, 1, 1, 256, 1, 1, 0, s, sum_args, NULL);
    CU_OK(&d, "capture", cuStreamEndCapture, s, &graph);
    CU_OK(&d, "capture", cuGraphInstantiate, &exec, graph, 0);
    CUevent e0, e1;
    CU_OK(&d, "timing", cuEventCreate, &e0, CU_EVENT_DEFAULT);
    CU_OK(&d, "timing", cuEventCreate, &e1, CU_EVENT_DEFAULT);
    CU_OK(&d, "timing", cuEventRecord, e0, s);
    for (int r = 0; r < 3; r++) CU_OK(&d, "replay", cuGraphLaunch, exec, s);
    CU_OK(&d, "timing", cuEventRecord, e1, s);
    CU_OK(&d, "test", cuMemcpyDtoHAsync, host + 2 * N, dsum, sizeof(float), s);
    CU_OK(&d, "test", cuStreamSynchronize, s);
    float ms = -1;
    CU_OK(&d, "timing", cuEventElapsedTime, &ms, e0, e1);
    want = selftest_expected_sum(N, 8.0);
    cr_assert(fabs(host[2 * N] - want) <= 1e-5 * want, "after replays: sum %g, want %g",
              host[2 * N], want);
    cr_assert_geq(ms, 0.0f);
    size_t free_mem = 0, total = 0;
    CU_OK(&d, "memory", cuMemGetInfo, &free_mem, &total);
    cr_assert(total > 0 && free_mem <= total);
    cr_log_info("3 graph replays in %.3f ms; %zu of %zu MiB free", ms, free_mem >> 20, total >> 20);

    d.cuGraphExecDestroy(exec);
    d.cuGraphDestroy(graph);
    d.cuEventDestroy(e0);
    d.cuEventDestroy(e1);
    d.cuMemFree(dx);
    d.cuMemFree(dy);
    d.cuMemFree(dsum);
    d.cuMemFreeHost(host);
    d.cuStreamDestroy(s);
    d.cuModuleUnload(mod);
    nvrtc_image_free(&img);
    free(src);
    nvrtc_close(n);
    cuda_driver_close(&d);
}

/* Direct loops in cuDNN's layout: x [N,T,C,H,W], w [T,O,C,KH,KW], y/dy [N,T,O,HO,WO]. */
static void reference_conv(const ConvShape *s, int ho, int wo, const float *x, const float *w,
                           const float *dy, double *y, double *dx, double *dw) {
    int T = s->tasks, C = s->in_ch, O = s->out_ch;
    for (int n = 0; n < s->batch; n++)
        for (int t = 0; t < T; t++)
            for (int o = 0; o < O; o++)
                for (int i = 0; i < ho; i++)
                    for (int j = 0; j < wo; j++)
                        for (int c = 0; c < C; c++)
                            for (int p = 0; p < s->kh; p++)
                                for (int q = 0; q < s->kw; q++) {
                                    int h = i * s->stride - s->padding + p;
                                    int v = j * s->stride - s->padding + q;
                                    if (h < 0 || h >= s->height || v < 0 || v >= s->width) continue;
                                    size_t xi =
                                        ((((size_t)n * T + t) * C + c) * s->height + h) * s->width +
                                        v;
                                    size_t wi =
                                        ((((size_t)t * O + o) * C + c) * s->kh + p) * s->kw + q;
                                    size_t yi = ((((size_t)n * T + t) * O + o) * ho + i) * wo + j;
                                    y[yi] += (double)x[xi] * w[wi];
                                    dx[xi] += (double)dy[yi] * w[wi];
                                    dw[wi] += (double)x[xi] * dy[yi];
                                }
}

static double max_rel_err(const float *got, const double *want, size_t n) {
    double scale = 0, e = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs(got[i] - want[i]));
    return e / (scale > 0 ? scale : 1);
}

static void fill(float *p, size_t n, double phase) {
    for (size_t i = 0; i < n; i++) p[i] = (float)sin(0.37 * (double)i + phase);
}

static CUdeviceptr alloc_floats(const CudaDriver *d, size_t n) {
    CUdeviceptr p;
    CU_OK(d, "test", cuMemAlloc, &p, n * sizeof(float));
    return p;
}

/* Uploads n floats to a new device buffer. */
static CUdeviceptr upload(const CudaDriver *d, const float *h, size_t n) {
    CUdeviceptr p = alloc_floats(d, n);
    CU_OK(d, "test", cuMemcpyHtoDAsync, p, h, n * sizeof(float), NULL);
    return p;
}

static void run_cudnn_case(const CudaDriver *d, Cudnn *c, const ConvShape *s) {
    MamlError err;
    CudnnConv *cv;
    cr_assert_eq(cudnn_conv_create(c, s, "case", false, &cv, &err), 0, "%s", err.message);
    cr_assert_eq(cudnn_conv_choose(cv, 64 << 20, &err), 0, "%s", err.message);
    int dims[4];
    cr_assert_eq(cudnn_conv_output_dims(cv, dims, &err), 0, "%s", err.message);
    int ho = dims[2], wo = dims[3];
    size_t nx = (size_t)s->batch * s->tasks * s->in_ch * s->height * s->width;
    size_t nw = (size_t)s->tasks * s->out_ch * s->in_ch * s->kh * s->kw;
    size_t ny = (size_t)s->batch * s->tasks * s->out_ch * ho * wo;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4);
    float *y = malloc(ny * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4);
    double *ry = calloc(ny, 8), *rdx = calloc(nx, 8), *rdw = calloc(nw, 8);
    fill(x, nx, 0.1);
    fill(w, nw, 0.7);
    fill(dy, ny, 1.3);
    reference_conv(s, ho, wo, x, w, dy, ry, rdx, rdw);
    CUdeviceptr gx = upload(d, x, nx), gw = upload(d, w, nw), gdy = upload(d, dy, ny);
    CUdeviceptr gy = alloc_floats(d, ny), gdx = alloc_floats(d, nx), gdw = alloc_floats(d, nw);
    CUdeviceptr ws = 0;
    if (cudnn_conv_workspace(cv)) CU_OK(d, "test", cuMemAlloc, &ws, cudnn_conv_workspace(cv));
    cr_assert_eq(cudnn_conv_forward(cv, gx, gw, gy, ws, &err), 0, "%s", err.message);
    cr_assert_eq(cudnn_conv_backward_data(cv, gdy, gw, gdx, ws, &err), 0, "%s", err.message);
    cr_assert_eq(cudnn_conv_backward_filter(cv, gx, gdy, gdw, ws, &err), 0, "%s", err.message);
    CU_OK(d, "test", cuMemcpyDtoHAsync, y, gy, ny * 4, NULL);
    CU_OK(d, "test", cuMemcpyDtoHAsync, dx, gdx, nx * 4, NULL);
    CU_OK(d, "test", cuMemcpyDtoHAsync, dw, gdw, nw * 4, NULL);
    CU_OK(d, "test", cuStreamSynchronize, NULL);
    char shape[128];
    conv_shape_str(s, shape, sizeof shape);
    double ey = max_rel_err(y, ry, ny), edx = max_rel_err(dx, rdx, nx),
           edw = max_rel_err(dw, rdw, nw);
    cr_log_info("cuDNN %s: relative errors y %.2e dx %.2e dw %.2e", shape, ey, edx, edw);
    /* the cuda backend's bound: float32 relative error below 1e-4 per tensor */
    cr_assert(ey < 1e-4 && edx < 1e-4 && edw < 1e-4, "%s: errors y %g dx %g dw %g", shape, ey, edx,
              edw);
    CUdeviceptr bufs[] = {gx, gw, gdy, gy, gdx, gdw, ws};
    for (int i = 0; i < 7; i++)
        if (bufs[i]) d->cuMemFree(bufs[i]);
    free(x), free(w), free(dy), free(y), free(dx), free(dw), free(ry), free(rdx), free(rdw);
    cudnn_conv_destroy(cv);
}

Test(cuda_device, cudnn_grouped_convolutions_match_direct_loops) {
    CudaDriver d;
    open_device_or_skip(&d);
    Cudnn *c = open_cudnn();
    MamlError err;
    cr_assert_eq(cudnn_attach(c, NULL, &err), 0, "%s", err.message);
    ConvShape cases[] = {
        {.tasks = 3,
         .batch = 2,
         .in_ch = 2,
         .height = 7,
         .width = 6,
         .out_ch = 4,
         .kh = 3,
         .kw = 3,
         .stride = 1,
         .padding = 1},
        {.tasks = 2,
         .batch = 5,
         .in_ch = 3,
         .height = 9,
         .width = 9,
         .out_ch = 2,
         .kh = 3,
         .kw = 3,
         .stride = 2,
         .padding = 0},
    };
    for (int i = 0; i < 2; i++) run_cudnn_case(&d, c, &cases[i]);
    cudnn_close(c);
    cuda_driver_close(&d);
}

#else

Test(cudnn, needs_the_cuda_headers) {
    cr_skip_test("mamlc was built without the CUDA headers (add -isystem $CUDA_HOME/include)");
}

#endif
