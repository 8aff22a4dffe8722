/* The cuda backend's convolution lowering: plan, auto's remembered choices, cuDNN on the step's
 * stream. */
#include "cuda_conv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_nvrtc.h"
#include "template.h"

static const char *const MODE_NAMES[] = {"generated", "cudnn", "auto", "tensor"};

int cuda_conv_mode_parse(const char *s, CudaConvMode *mode, MamlError *err) {
    for (int m = 0; m <= CUDA_CONV_TENSOR; m++)
        if (s && strcmp(s, MODE_NAMES[m]) == 0) {
            *mode = (CudaConvMode)m;
            return 0;
        }
    return maml_fail(err, "--conv must be generated, cudnn, auto or tensor, not '%.64s'",
                     s ? s : "");
}

const char *cuda_conv_mode_name(CudaConvMode mode) {
    return mode >= CUDA_CONV_GENERATED && mode <= CUDA_CONV_TENSOR ? MODE_NAMES[mode] : "?";
}

bool cuda_conv_uses_cudnn(CudaConvMode mode) {
    return mode == CUDA_CONV_CUDNN || mode == CUDA_CONV_AUTO;
}

/* ---- the plan ---- */

static bool refuse(char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool refuse(char *why, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return false;
}

/* Whether buffers a and b share bytes in the memory plan (cuDNN's operands must not alias). */
static bool overlap(const MemPlan *m, int a, int b) {
    int64_t a0 = m->offset[a], a1 = a0 + m->bytes[a], b0 = m->offset[b], b1 = b0 + m->bytes[b];
    return a0 < b1 && b0 < a1;
}

/* The graph node's shape against the template's parameters, output size included. */
static bool same_shape(const ConvShape *s, const KTemplate *t) {
    int64_t ho = (s->height + 2 * s->padding - s->kh) / s->stride + 1;
    int64_t wo = (s->width + 2 * s->padding - s->kw) / s->stride + 1;
    return s->tasks == t->T && s->batch == t->N && s->in_ch == t->C && s->height == t->H &&
           s->width == t->W && s->out_ch == t->O && s->kh == t->KH && s->kw == t->KW &&
           s->stride == t->stride && s->padding == t->padding && ho == t->HO && wo == t->WO;
}

bool conv_kernel_lowerable(const CompiledGraph *cg, int kernel, ConvShape *s, char *why,
                           size_t why_size) {
    const Kernel *k = &cg->prog.kernels[kernel];
    MamlError e;
    if (!kernel_is_conv(k->kind)) return refuse(why, why_size, "%s is not a convolution", k->name);
    if (k->n_nodes != 1 || k->n_in != 2)
        return refuse(why, why_size, "%s fuses %d graph nodes (cuDNN computes a bare convolution)",
                      k->name, k->n_nodes);
    if (cg->plan.elem_size != 4)
        return refuse(why, why_size, "%s runs in float64 (the cuDNN lowering is float32 only)",
                      k->name);
    if (overlap(&cg->plan, k->out, k->in[0]) || overlap(&cg->plan, k->out, k->in[1]))
        return refuse(why, why_size, "%s writes over an operand in the memory plan", k->name);
    if (conv_shape_of_node(&cg->graph, k->root, s, &e))
        return refuse(why, why_size, "%s: %s", k->name, e.message);
    if (!same_shape(s, &k->t))
        return refuse(why, why_size, "%s: the template's shape differs from the graph node's",
                      k->name);
    return true;
}

static void fill_item(const Kernel *k, const ConvShape *s, ConvLowered *l) {
    const KTemplate *t = &k->t;
    int64_t x = t->T * t->N * t->C * t->H * t->W, y = t->T * t->N * t->O * t->HO * t->WO;
    *l = (ConvLowered){.kernel = 0, .kind = k->kind, .shape = *s};
    l->transpose = s->tasks > 1 && s->batch > 1;
    l->in_elems = k->kind == KERNEL_CONV2D_GRAD_INPUT ? y : x;
    l->other = k->kind == KERNEL_CONV2D_GRAD_INPUT ? x : y;
}

int conv_plan_build(const CompiledGraph *cg, ConvPlan *out, MamlError *err) {
    memset(out, 0, sizeof *out);
    const KernelProgram *p = &cg->prog;
    out->items = maml_calloc((size_t)p->n_kernels + 1, sizeof *out->items, err);
    if (!out->items) return -1;
    for (int i = 0; i < p->n_kernels; i++) {
        if (!kernel_is_conv(p->kernels[i].kind)) continue;
        out->n_conv++;
        ConvShape s = {0};
        char why[sizeof out->first_refusal];
        if (!conv_kernel_lowerable(cg, i, &s, why, sizeof why)) {
            if (!out->first_refusal[0]) snprintf(out->first_refusal, sizeof why, "%s", why);
            continue;
        }
        ConvLowered *l = &out->items[out->n++];
        fill_item(&p->kernels[i], &s, l);
        l->kernel = i;
    }
    return 0;
}

void conv_plan_free(ConvPlan *p) {
    free(p->items);
    memset(p, 0, sizeof *p);
}

/* cuDNN's operands start on 256-byte boundaries, like the arena's buffers. */
static int64_t align256(int64_t bytes) {
    return (bytes + 255) / 256 * 256;
}

int64_t conv_lowered_scratch(const ConvLowered *l) {
    return l->transpose ? align256(l->in_elems * 4) + align256(l->other * 4) : 0;
}

/* ---- auto's remembered choices ---- */

CacheKey conv_choice_key(const ConvLowered *l, const char *device, size_t cudnn_version,
                         const char *function, const char *tensor_function) {
    const ConvShape *s = &l->shape;
    const int v[] = {s->tasks,  s->batch, s->in_ch, s->height, s->width,
                     s->out_ch, s->kh,    s->kw,    s->stride, s->padding};
    CacheKeyHasher h;
    cache_key_begin(&h);
    cache_key_add_str(&h, "mamlc conv choice 2");
    cache_key_add_int(&h, l->kind);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) cache_key_add_int(&h, v[i]);
    cache_key_add_str(&h, device);
    cache_key_add_int(&h, (int64_t)cudnn_version);
    cache_key_add_str(&h, function);
    cache_key_add_str(&h, tensor_function ? tensor_function : "");
    return cache_key_end(&h);
}

static void key_hex(CacheKey k, char hex[33]) {
    snprintf(hex, 33, "%016llx%016llx", (unsigned long long)k.hi, (unsigned long long)k.lo);
}

static void choices_path(const char *dir, char *buf, size_t size) {
    snprintf(buf, size, "%s/%s", dir, CONV_CHOICES_FILE);
}

/* The whole file into *text (malloc'ed, NUL-terminated), or *text NULL when there is none. */
static int read_choices(const char *path, char **text, MamlError *err) {
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 0 : maml_fail(err, "%s: %s", path, strerror(errno));
    StrBuf sb;
    sb_init(&sb);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) sb_append(&sb, chunk, n);
    int bad = ferror(f);
    fclose(f);
    sb_append(&sb, "", 1);
    if (bad || sb.failed) {
        sb_free(&sb);
        return maml_fail(err, "%s: cannot read it", path);
    }
    *text = sb.data;
    return 0;
}

static const char *const CHOICE_NAMES[] = {"none", "generated", "cudnn", "tensor"};

/* The choice on a line "HEX generated|cudnn|tensor ...", or NONE when the line is not key's. */
static ConvChoice line_choice(const char *line, const char *hex) {
    if (strncmp(line, hex, 32) != 0 || line[32] != ' ') return CONV_CHOICE_NONE;
    for (int c = CONV_CHOICE_GENERATED; c <= CONV_CHOICE_TENSOR; c++) {
        size_t n = strlen(CHOICE_NAMES[c]);
        if (strncmp(line + 33, CHOICE_NAMES[c], n) == 0 && line[33 + n] == ' ')
            return (ConvChoice)c;
    }
    return CONV_CHOICE_NONE;
}

int conv_choice_lookup(const char *dir, CacheKey key, ConvChoice *choice, MamlError *err) {
    char path[1200], hex[33], *text;
    *choice = CONV_CHOICE_NONE;
    choices_path(dir, path, sizeof path);
    key_hex(key, hex);
    if (read_choices(path, &text, err)) return -1;
    for (const char *line = text; line && *line && *choice == CONV_CHOICE_NONE;) {
        const char *end = strchr(line, '\n');
        if (!end) break; /* a torn last line is ignored */
        *choice = line_choice(line, hex);
        line = end + 1;
    }
    free(text);
    return 0;
}

/* The old lines but key's (and any torn last line), then the new one. */
static void merged_choices(const char *old, const char *hex, const char *line, StrBuf *out) {
    for (const char *l = old; l && *l;) {
        const char *end = strchr(l, '\n');
        if (!end) break;
        if (strncmp(l, hex, 32) != 0) sb_append(out, l, (size_t)(end - l + 1));
        l = end + 1;
    }
    sb_puts(out, line);
}

static int write_atomically(const char *path, const StrBuf *text, MamlError *err) {
    char tmp[1300];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return maml_fail(err, "%s: %s", tmp, strerror(errno));
    bool ok = fwrite(text->data, 1, text->len, f) == text->len;
    ok = fclose(f) == 0 && ok;
    if (ok && rename(tmp, path) == 0) return 0;
    int e = errno;
    unlink(tmp);
    return maml_fail(err, "%s: cannot write it: %s", path, strerror(e));
}

/* "name=0.1234 " for a candidate's time, "name=- " for one that is not. */
static void time_field(char *buf, size_t size, const char *name, double ms) {
    if (ms < 0)
        snprintf(buf, size, "%s=- ", name);
    else
        snprintf(buf, size, "%s=%.4f ", name, ms);
}

int conv_choice_store(const char *dir, CacheKey key, ConvChoice choice, const ConvTimes *times,
                      const char *label, MamlError *err) {
    char path[1200], hex[33], *old;
    choices_path(dir, path, sizeof path);
    key_hex(key, hex);
    if (choice <= CONV_CHOICE_NONE || choice > CONV_CHOICE_TENSOR)
        return maml_fail(err, "%s: no choice to store", path);
    if (read_choices(path, &old, err)) return -1;
    char line[512], gen[40], ten[40], dnn[40];
    time_field(gen, sizeof gen, "generated_ms", times->generated_ms);
    time_field(ten, sizeof ten, "tensor_ms", times->tensor_ms);
    time_field(dnn, sizeof dnn, "cudnn_ms", times->cudnn_ms);
    snprintf(line, sizeof line, "%s %s %s%s%s%s\n", hex, CHOICE_NAMES[choice], gen, ten, dnn,
             label ? label : "");
    for (char *c = line; c[1]; c++) /* one line per entry, whatever the label holds */
        if (*c == '\n') *c = ' ';
    StrBuf sb;
    sb_init(&sb);
    merged_choices(old, hex, line, &sb);
    free(old);
    int rc = sb.failed ? maml_fail(err, "out of memory") : write_atomically(path, &sb, err);
    sb_free(&sb);
    return rc;
}

/* ---- on the device ---- */

#if MAMLC_HAVE_CUDA

/* cuDNN may use up to this much workspace per convolution: generous for the graphs here (the
 * seed's largest choice is a few MiB), small next to any GPU that runs them. */
#define WORKSPACE_LIMIT ((size_t)256 << 20)
#define TIMING_REPS 5
#define SWAP_THREADS 256
#define SWAP_MAX_BLOCKS 8192

struct CudaConvLowering {
    CudaConvSetup s;
    const CudaDriver *d;
    CUstream stream;
    KernelCache cache;
    ConvPlan plan;
    Cudnn *cudnn;       /* NULL: none loaded (auto only) */
    CudnnConv **convs;  /* per plan item; NULL: cuDNN cannot take it (auto only) */
    ConvChoice *choice; /* per plan item: the form it runs in */
    int *item_of;       /* per kernel: its plan item when on cuDNN, else -1 */
    bool *on_tensor;    /* per kernel: runs its tensor-core form */
    int n_lowered, n_tensor, measured, remembered;
    CUmodule module;
    CUfunction swap;
    CUdeviceptr mem, scratch, workspace;
    CUevent ev[2];
};

static void note(const CudaConvLowering *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A line on stderr about what the lowering decided, unless quiet. */
static void note(const CudaConvLowering *l, const char *fmt, ...) {
    if (l->s.quiet) return;
    char msg[MAML_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mamlc: cuda: --conv %s: %s\n", cuda_conv_mode_name(l->s.mode), msg);
}

static const Kernel *kernel_of(const CudaConvLowering *l, int item) {
    return &l->s.cg->prog.kernels[l->plan.items[item].kernel];
}

/* cudnn: the failure is the error; auto: it is said, and the caller carries on without. */
static int setback(const CudaConvLowering *l, const MamlError *why, MamlError *err) {
    if (l->s.mode == CUDA_CONV_CUDNN) return maml_fail(err, "--conv cudnn: %s", why->message);
    note(l, "%s", why->message);
    return 0;
}

static int open_cudnn(CudaConvLowering *l, MamlError *err) {
    MamlError why;
    if (cudnn_open(&l->cudnn, &why) == 0 && cudnn_attach(l->cudnn, l->stream, &why) == 0) return 0;
    cudnn_close(l->cudnn);
    l->cudnn = NULL;
    if (setback(l, &why, err)) return -1;
    note(l, "no convolution goes to cuDNN");
    return 0;
}

static int alloc_items(CudaConvLowering *l, MamlError *err) {
    int n = l->s.cg->prog.n_kernels;
    l->convs = maml_calloc((size_t)l->plan.n + 1, sizeof *l->convs, err);
    l->choice = maml_calloc((size_t)l->plan.n + 1, sizeof *l->choice, err);
    l->item_of = maml_calloc((size_t)n + 1, sizeof *l->item_of, err);
    l->on_tensor = maml_calloc((size_t)n + 1, sizeof *l->on_tensor, err);
    if (!l->convs || !l->choice || !l->item_of || !l->on_tensor) return -1;
    for (int k = 0; k < n; k++) l->item_of[k] = -1;
    for (int i = 0; i < l->plan.n; i++) l->choice[i] = CONV_CHOICE_GENERATED;
    return 0;
}

static int create_convs(CudaConvLowering *l, MamlError *err) {
    for (int i = 0; i < l->plan.n; i++) {
        MamlError why;
        CudnnConv *cv = NULL;
        int rc = cudnn_conv_create(l->cudnn, &l->plan.items[i].shape, kernel_of(l, i)->name, false,
                                   &cv, &why);
        if (rc == 0) rc = cudnn_conv_choose(cv, WORKSPACE_LIMIT, &why);
        if (rc == 0) {
            l->convs[i] = cv;
            continue;
        }
        cudnn_conv_destroy(cv);
        if (setback(l, &why, err)) return -1;
    }
    return 0;
}

static bool needs_swap(const CudaConvLowering *l) {
    for (int i = 0; i < l->plan.n; i++)
        if (l->convs[i] && l->plan.items[i].transpose) return true;
    return false;
}

/* templates/cuda/transpose.cu.tmpl through NVRTC and the kernel cache, loaded. */
static int load_swap(CudaConvLowering *l, MamlError *err) {
    Templates t;
    templates_init(&t);
    StrBuf src;
    sb_init(&src);
    int rc = template_render(&t, "cuda/transpose.cu.tmpl", "transpose", NULL, 0, false, &src, err);
    templates_free(&t);
    Nvrtc *n = NULL;
    NvrtcImage img;
    memset(&img, 0, sizeof img);
    if (rc == 0) rc = nvrtc_open(&n, err);
    NvrtcOptions o = {.arch = cuda_driver_arch(l->d), .cache = &l->cache};
    if (rc == 0) rc = nvrtc_compile(n, src.data, "transpose.cu", &o, &img, err);
    if (rc == 0) rc = cuda_module_load(l->d, img.image, "transpose.cu", &l->module, err);
    if (rc == 0) rc = cuda_module_function(l->d, l->module, "mamlc_swap_outer", &l->swap, err);
    nvrtc_image_free(&img);
    nvrtc_close(n);
    sb_free(&src);
    return rc;
}

/* One allocation: the largest scratch any lowered kernel needs, then the largest workspace. */
static int alloc_memory(CudaConvLowering *l, MamlError *err) {
    int64_t scratch = 0;
    size_t ws = 0;
    for (int i = 0; i < l->plan.n; i++) {
        if (!l->convs[i]) continue;
        int64_t s = conv_lowered_scratch(&l->plan.items[i]);
        size_t w = cudnn_conv_workspace(l->convs[i]);
        if (s > scratch) scratch = s;
        if (w > ws) ws = w;
    }
    size_t total = (size_t)scratch + ws;
    char what[160];
    snprintf(what, sizeof what, "cuDNN scratch %.1f MiB and workspace %.1f MiB",
             (double)scratch / 1048576.0, (double)ws / 1048576.0);
    if (CU_CHECK(l->d, err, what, cuMemAlloc, &l->mem, total ? total : 256)) {
        l->mem = 0;
        return -1;
    }
    l->scratch = l->mem;
    l->workspace = l->mem + (CUdeviceptr)scratch;
    return 0;
}

/* out [B, A, inner] = in [A, B, inner] swapped, enqueued on the stream. */
static int swap_outer(CudaConvLowering *l, CUdeviceptr in, CUdeviceptr out, long long A,
                      long long B, long long inner, const char *what, MamlError *err) {
    long long total = A * B * inner, blocks = (total + SWAP_THREADS - 1) / SWAP_THREADS;
    if (blocks > SWAP_MAX_BLOCKS) blocks = SWAP_MAX_BLOCKS;
    if (blocks < 1) blocks = 1;
    void *args[] = {&in, &out, &A, &B, &inner};
    return CU_CHECK(l->d, err, what, cuLaunchKernel, l->swap, (unsigned)blocks, 1, 1, SWAP_THREADS,
                    1, 1, 0, l->stream, args, NULL);
}

static CUdeviceptr buf_at(const CudaConvLowering *l, int buf) {
    return (CUdeviceptr)l->s.arena + (CUdeviceptr)l->s.cg->plan.offset[buf];
}

/* y = conv(x, w); through [N, T, ...] scratch when the layouts differ. */
static int run_forward(CudaConvLowering *l, int item, MamlError *err) {
    const ConvLowered *it = &l->plan.items[item];
    const Kernel *k = kernel_of(l, item);
    const KTemplate *t = &k->t;
    CudnnConv *cv = l->convs[item];
    CUdeviceptr x = buf_at(l, k->in[0]), w = buf_at(l, k->in[1]), y = buf_at(l, k->out);
    if (!it->transpose) return cudnn_conv_forward(cv, x, w, y, l->workspace, err);
    CUdeviceptr xs = l->scratch, ys = l->scratch + (CUdeviceptr)align256(it->in_elems * 4);
    return swap_outer(l, x, xs, t->T, t->N, t->C * t->H * t->W, k->name, err) ||
           cudnn_conv_forward(cv, xs, w, ys, l->workspace, err) ||
           swap_outer(l, ys, y, t->N, t->T, t->O * t->HO * t->WO, k->name, err);
}

/* dx = conv_backward_data(dy, w). */
static int run_grad_input(CudaConvLowering *l, int item, MamlError *err) {
    const ConvLowered *it = &l->plan.items[item];
    const Kernel *k = kernel_of(l, item);
    const KTemplate *t = &k->t;
    CudnnConv *cv = l->convs[item];
    CUdeviceptr dy = buf_at(l, k->in[0]), w = buf_at(l, k->in[1]), dx = buf_at(l, k->out);
    if (!it->transpose) return cudnn_conv_backward_data(cv, dy, w, dx, l->workspace, err);
    CUdeviceptr dys = l->scratch, dxs = l->scratch + (CUdeviceptr)align256(it->in_elems * 4);
    return swap_outer(l, dy, dys, t->T, t->N, t->O * t->HO * t->WO, k->name, err) ||
           cudnn_conv_backward_data(cv, dys, w, dxs, l->workspace, err) ||
           swap_outer(l, dxs, dx, t->N, t->T, t->C * t->H * t->W, k->name, err);
}

/* dw = conv_backward_filter(x, dy): the weights need no transpose. */
static int run_grad_weight(CudaConvLowering *l, int item, MamlError *err) {
    const ConvLowered *it = &l->plan.items[item];
    const Kernel *k = kernel_of(l, item);
    const KTemplate *t = &k->t;
    CudnnConv *cv = l->convs[item];
    CUdeviceptr x = buf_at(l, k->in[0]), dy = buf_at(l, k->in[1]), dw = buf_at(l, k->out);
    if (!it->transpose) return cudnn_conv_backward_filter(cv, x, dy, dw, l->workspace, err);
    CUdeviceptr xs = l->scratch, dys = l->scratch + (CUdeviceptr)align256(it->in_elems * 4);
    return swap_outer(l, x, xs, t->T, t->N, t->C * t->H * t->W, k->name, err) ||
           swap_outer(l, dy, dys, t->T, t->N, t->O * t->HO * t->WO, k->name, err) ||
           cudnn_conv_backward_filter(cv, xs, dys, dw, l->workspace, err);
}

static int run_item(CudaConvLowering *l, int item, MamlError *err) {
    switch (l->plan.items[item].kind) {
    case KERNEL_CONV2D:
        return run_forward(l, item, err);
    case KERNEL_CONV2D_GRAD_INPUT:
        return run_grad_input(l, item, err);
    default:
        return run_grad_weight(l, item, err);
    }
}

/* Every cuDNN item once, on a zeroed arena, outside any capture: a failing call names its kernel
 * here, and cuDNN loads its kernels before the step is captured (auto then times on that arena). */
static int warm_up(CudaConvLowering *l, MamlError *err) {
    const CudaDriver *d = l->d;
    size_t arena = (size_t)l->s.cg->plan.arena_bytes;
    if (arena && CU_CHECK(d, err, "arena (before the cuDNN warm-up)", cuMemsetD8Async,
                          (CUdeviceptr)l->s.arena, 0, arena, l->stream))
        return -1;
    for (int i = 0; i < l->plan.n; i++) {
        if (!l->convs[i]) continue;
        const char *name = kernel_of(l, i)->name;
        if (run_item(l, i, err) || CU_CHECK(d, err, name, cuStreamSynchronize, l->stream))
            return -1;
    }
    return 0;
}

/* Mean milliseconds of TIMING_REPS runs of item in the given form. */
static int time_item(CudaConvLowering *l, int item, ConvChoice form, double *ms, MamlError *err) {
    const CudaDriver *d = l->d;
    const char *name = kernel_of(l, item)->name;
    int kernel = l->plan.items[item].kernel, rc = 0;
    /* one untimed run first: the generated kernel's first launch may load its module */
    for (int r = 0; rc == 0 && r <= TIMING_REPS; r++) {
        if (r == 1) rc = CU_CHECK(d, err, name, cuEventRecord, l->ev[0], l->stream);
        if (rc == 0)
            rc = form == CONV_CHOICE_CUDNN
                     ? run_item(l, item, err)
                     : l->s.launch_generated(l->s.ctx, kernel, form == CONV_CHOICE_TENSOR, err);
    }
    float f = 0;
    if (rc || CU_CHECK(d, err, name, cuEventRecord, l->ev[1], l->stream) ||
        CU_CHECK(d, err, name, cuEventSynchronize, l->ev[1]) ||
        CU_CHECK(d, err, name, cuEventElapsedTime, &f, l->ev[0], l->ev[1]))
        return -1;
    *ms = f / TIMING_REPS;
    return 0;
}

static bool has_tensor_form(const CudaConvLowering *l, int item) {
    return l->s.tensor_function_of && l->s.tensor_function_of[l->plan.items[item].kernel];
}

/* Whether item can run in form c. */
static bool available(const CudaConvLowering *l, int item, ConvChoice c) {
    return c == CONV_CHOICE_GENERATED || (c == CONV_CHOICE_TENSOR && has_tensor_form(l, item)) ||
           (c == CONV_CHOICE_CUDNN && l->convs[item]);
}

/* The fastest candidate; generated on ties. */
static ConvChoice fastest(const ConvTimes *t) {
    ConvChoice best = CONV_CHOICE_GENERATED;
    double ms = t->generated_ms;
    if (t->tensor_ms >= 0 && t->tensor_ms < ms) best = CONV_CHOICE_TENSOR, ms = t->tensor_ms;
    if (t->cudnn_ms >= 0 && t->cudnn_ms < ms) best = CONV_CHOICE_CUDNN;
    return best;
}

static int measure(CudaConvLowering *l, int item, CacheKey key, MamlError *err) {
    ConvTimes t = {.generated_ms = -1, .tensor_ms = -1, .cudnn_ms = -1};
    if (time_item(l, item, CONV_CHOICE_GENERATED, &t.generated_ms, err)) return -1;
    if (available(l, item, CONV_CHOICE_TENSOR) &&
        time_item(l, item, CONV_CHOICE_TENSOR, &t.tensor_ms, err))
        return -1;
    if (available(l, item, CONV_CHOICE_CUDNN) &&
        time_item(l, item, CONV_CHOICE_CUDNN, &t.cudnn_ms, err))
        return -1;
    l->choice[item] = fastest(&t);
    l->measured++;
    char label[200], shape[96];
    conv_shape_str(&l->plan.items[item].shape, shape, sizeof shape);
    snprintf(label, sizeof label, "%s %s [%s]", kernel_kind_name(l->plan.items[item].kind),
             kernel_of(l, item)->name, shape);
    MamlError why;
    if (conv_choice_store(l->cache.dir, key, l->choice[item], &t, label, &why))
        note(l, "the choice is not remembered: %s", why.message);
    return 0;
}

/* auto: for each item with more than one form, its remembered choice, or a measurement (then
 * remembered). */
static int choose_auto(CudaConvLowering *l, MamlError *err) {
    for (int i = 0; i < l->plan.n; i++) {
        if (!available(l, i, CONV_CHOICE_TENSOR) && !available(l, i, CONV_CHOICE_CUDNN)) continue;
        int kernel = l->plan.items[i].kernel;
        CacheKey key = conv_choice_key(
            &l->plan.items[i], l->d->name, l->cudnn ? cudnn_version(l->cudnn) : 0,
            l->s.function_of[kernel], has_tensor_form(l, i) ? l->s.tensor_function_of[kernel] : "");
        ConvChoice c;
        if (conv_choice_lookup(l->cache.dir, key, &c, err)) return -1;
        if (c != CONV_CHOICE_NONE && available(l, i, c)) {
            l->choice[i] = c;
            l->remembered++;
        } else if (measure(l, i, key, err)) {
            return -1;
        }
    }
    return 0;
}

static void map_kernels(CudaConvLowering *l) {
    for (int i = 0; i < l->plan.n; i++) {
        if (l->s.mode == CUDA_CONV_CUDNN)
            l->choice[i] = l->convs[i] ? CONV_CHOICE_CUDNN : CONV_CHOICE_GENERATED;
        int kernel = l->plan.items[i].kernel;
        if (l->choice[i] == CONV_CHOICE_CUDNN) l->item_of[kernel] = i, l->n_lowered++;
        if (l->choice[i] == CONV_CHOICE_TENSOR) l->on_tensor[kernel] = true, l->n_tensor++;
    }
}

static void summary(const CudaConvLowering *l) {
    char dnn[1200] = "on cuDNN (none loaded)";
    if (l->cudnn)
        snprintf(dnn, sizeof dnn, "on cuDNN %zu (%s)", cudnn_version(l->cudnn),
                 cudnn_library(l->cudnn));
    if (l->s.mode == CUDA_CONV_AUTO)
        note(l,
             "%d of %d convolution kernels %s, %d in their tensor-core form, %d generated (%d "
             "measured now, %d remembered in %s/%s)",
             l->n_lowered, l->plan.n_conv, dnn, l->n_tensor,
             l->plan.n_conv - l->n_lowered - l->n_tensor, l->measured, l->remembered, l->cache.dir,
             CONV_CHOICES_FILE);
    else
        note(l, "%d of %d convolution kernels %s", l->n_lowered, l->plan.n_conv, dnn);
    if (l->plan.first_refusal[0])
        note(l, "%d keep their generated kernels, e.g. %s", l->plan.n_conv - l->plan.n,
             l->plan.first_refusal);
}

/* Everything after the plan: cuDNN, descriptors, transpose, memory, warm-up, choices. */
static int prepare(CudaConvLowering *l, MamlError *err) {
    if (open_cudnn(l, err) || alloc_items(l, err)) return -1;
    if (l->cudnn && create_convs(l, err)) return -1;
    if (needs_swap(l) && load_swap(l, err)) return -1;
    for (int i = 0; i < 2; i++)
        if (CU_CHECK(l->d, err, "conv timing", cuEventCreate, &l->ev[i], CU_EVENT_DEFAULT))
            return -1;
    if ((l->cudnn && alloc_memory(l, err)) || warm_up(l, err)) return -1;
    if (l->s.mode == CUDA_CONV_AUTO && choose_auto(l, err)) return -1;
    map_kernels(l);
    summary(l);
    return 0;
}

static int open_cache(CudaConvLowering *l, MamlError *err) {
    const char *dir = l->s.cache_dir;
    return kernel_cache_open(&l->cache, dir, dir ? NULL : "cuda", l->s.require_cache, err);
}

int cuda_conv_open(const CudaConvSetup *s, CudaConvLowering **out, MamlError *err) {
    *out = NULL;
    if (!cuda_conv_uses_cudnn(s->mode)) return 0;
    CudaConvLowering *l = maml_calloc(1, sizeof *l, err);
    if (!l) return -1;
    l->s = *s;
    l->d = s->driver;
    l->stream = (CUstream)s->stream;
    int rc = open_cache(l, err);
    if (rc == 0) rc = conv_plan_build(s->cg, &l->plan, err);
    if (rc == 0 && l->plan.n == 0 && s->mode == CUDA_CONV_CUDNN && l->plan.n_conv > 0)
        rc = maml_fail(err, "--conv cudnn: no convolution kernel can go to cuDNN: %s",
                       l->plan.first_refusal);
    if (rc == 0 && l->plan.n > 0) rc = prepare(l, err);
    if (rc) {
        cuda_conv_close(l);
        return -1;
    }
    *out = l;
    return 0;
}

/* The caller makes the context current first (cuda_destroy does). */
void cuda_conv_close(CudaConvLowering *l) {
    if (!l) return;
    const CudaDriver *d = l->d;
    for (int i = 0; l->convs && i < l->plan.n; i++) cudnn_conv_destroy(l->convs[i]);
    cudnn_close(l->cudnn);
    for (int i = 0; i < 2; i++)
        if (l->ev[i]) d->cuEventDestroy(l->ev[i]);
    if (l->mem) d->cuMemFree(l->mem);
    if (l->module) d->cuModuleUnload(l->module);
    free(l->convs), free(l->choice), free(l->item_of), free(l->on_tensor);
    conv_plan_free(&l->plan);
    free(l);
}

bool cuda_conv_lowered(const CudaConvLowering *l, int kernel) {
    return l && l->item_of && kernel >= 0 && kernel < l->s.cg->prog.n_kernels &&
           l->item_of[kernel] >= 0;
}

bool cuda_conv_on_tensor(const CudaConvLowering *l, int kernel) {
    return l && l->on_tensor && kernel >= 0 && kernel < l->s.cg->prog.n_kernels &&
           l->on_tensor[kernel];
}

int cuda_conv_count(const CudaConvLowering *l) {
    return l ? l->n_lowered : 0;
}

int cuda_conv_tensor_count(const CudaConvLowering *l) {
    return l ? l->n_tensor : 0;
}

int cuda_conv_enqueue(CudaConvLowering *l, int kernel, MamlError *err) {
    if (!cuda_conv_lowered(l, kernel))
        return maml_fail(err, "kernel %d is not lowered to cuDNN", kernel);
    return run_item(l, l->item_of[kernel], err);
}

#else /* built without the CUDA headers */

int cuda_conv_open(const CudaConvSetup *s, CudaConvLowering **out, MamlError *err) {
    *out = NULL;
    if (!cuda_conv_uses_cudnn(s->mode)) return 0;
    return maml_fail(err, "--conv %s: mamlc was built without the CUDA headers",
                     cuda_conv_mode_name(s->mode));
}

void cuda_conv_close(CudaConvLowering *l) {
    (void)l;
}

bool cuda_conv_lowered(const CudaConvLowering *l, int kernel) {
    (void)l, (void)kernel;
    return false;
}

bool cuda_conv_on_tensor(const CudaConvLowering *l, int kernel) {
    (void)l, (void)kernel;
    return false;
}

int cuda_conv_count(const CudaConvLowering *l) {
    (void)l;
    return 0;
}

int cuda_conv_tensor_count(const CudaConvLowering *l) {
    (void)l;
    return 0;
}

int cuda_conv_enqueue(CudaConvLowering *l, int kernel, MamlError *err) {
    (void)l, (void)kernel;
    return maml_fail(err, "no cuDNN: mamlc was built without the CUDA headers");
}

#endif
