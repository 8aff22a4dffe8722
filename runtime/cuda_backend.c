/* Backend "cuda": pipeline, CUDA rendering, parallel NVRTC through the cache, one arena, one
 * CUDA graph per step. */
#include "cuda_backend.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "cuda_driver.h"
#include "inputs.h"
#include "kernel_cache.h"

/* Estimated NVRTC cost of a function, in units of a plain loop kernel (about 15 ms of one core):
 * the unrolled convolution templates measured about 20 times that. */
#define CONV_COST 20
/* A piece holds about this much work: enough that NVRTC's fixed cost per program (about 60 ms)
 * stays small, small enough that 16 pieces keep 16 cores busy on the seed graph. */
#define PIECE_COST 24
#define MAX_PIECES 16

/* The command line's choices (cuda_set_defaults), for backends opened without options. */
static CudaConvMode default_conv = CUDA_CONV_GENERATED;
static bool default_require_cache = false;

void cuda_set_defaults(CudaConvMode conv, bool require_cache) {
    default_conv = conv;
    default_require_cache = require_cache;
}

CudaOptions cuda_default_options(void) {
    const char *require = getenv("MAMLC_REQUIRE_CACHE");
    bool env_require = require && *require && strcmp(require, "0") != 0;
    CudaOptions o = {.no_fuse = false,
                     .cache_dir = NULL,
                     .quiet = false,
                     .device = -1,
                     .require_cache = env_require || default_require_cache,
                     .conv = default_conv};
    return o;
}

/* ---- compiling in pieces ---- */

static int function_cost(const CudaFunction *f) {
    return strncmp(f->name, "conv2d", 6) == 0 ? CONV_COST : 1;
}

/* Greedy: the costliest functions first, each into the piece with the least work so far. The
 * result depends on the functions alone, so the pieces (and their cache keys) do too. */
static int assign_pieces(const CudaCode *code, int *piece_of, MamlError *err) {
    int n = code->n_functions, total = 0;
    for (int f = 0; f < n; f++) total += function_cost(&code->functions[f]);
    int pieces = (total + PIECE_COST - 1) / PIECE_COST;
    if (pieces > MAX_PIECES) pieces = MAX_PIECES;
    if (pieces > n) pieces = n;
    int *load = maml_calloc((size_t)pieces + 1, sizeof *load, err);
    if (!load) return -1;
    for (int f = 0; f < n; f++) piece_of[f] = -1;
    for (int cost = CONV_COST; cost >= 1; cost--)
        for (int f = 0; f < n; f++) {
            if (function_cost(&code->functions[f]) != cost) continue;
            int best = 0;
            for (int p = 1; p < pieces; p++)
                if (load[p] < load[best]) best = p;
            piece_of[f] = best;
            load[best] += cost;
        }
    free(load);
    return pieces;
}

typedef struct {
    Nvrtc *nvrtc;
    const NvrtcOptions *opt;
    StrBuf src;
    NvrtcImage *img;
    MamlError err;
    int rc;
} PieceJob;

typedef struct {
    PieceJob *jobs;
    int n, next;
    pthread_mutex_t lock;
} JobQueue;

static void *compile_worker(void *arg) {
    JobQueue *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        int i = q->next < q->n ? q->next++ : -1;
        pthread_mutex_unlock(&q->lock);
        if (i < 0) return NULL;
        PieceJob *j = &q->jobs[i];
        j->rc = nvrtc_compile(j->nvrtc, j->src.data, "kernels.cu", j->opt, j->img, &j->err);
    }
}

/* The prelude and the functions of piece p, in program order. */
static void piece_source(const char *text, const CudaCode *code, const int *piece_of, int p,
                         StrBuf *out) {
    sb_append(out, text + code->header_end, code->prelude_end - code->header_end);
    for (int f = 0; f < code->n_functions; f++)
        if (piece_of[f] == p)
            sb_append(out, text + code->functions[f].begin,
                      code->functions[f].end - code->functions[f].begin);
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_PIECES ? MAX_PIECES : (int)n;
}

/* Runs the jobs on up to `threads` threads (the calling one included). */
static void run_jobs(PieceJob *jobs, int n, int threads) {
    JobQueue q = {.jobs = jobs, .n = n, .next = 0};
    pthread_mutex_init(&q.lock, NULL);
    pthread_t tid[MAX_PIECES];
    int started = 0;
    for (int t = 1; t < threads && t < n; t++)
        if (pthread_create(&tid[started], NULL, compile_worker, &q) == 0) started++;
    compile_worker(&q); /* when no thread could start, this one does all the work */
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    pthread_mutex_destroy(&q.lock);
}

int cuda_compile_code(Nvrtc *n, const char *text, const CudaCode *code, const NvrtcOptions *opt,
                      int threads, CudaImages *out, MamlError *err) {
    double t0 = maml_now_ms();
    memset(out, 0, sizeof *out);
    out->piece_of = maml_calloc((size_t)code->n_functions + 1, sizeof *out->piece_of, err);
    if (!out->piece_of) return -1;
    int pieces = assign_pieces(code, out->piece_of, err);
    if (pieces < 0) return -1;
    out->images = maml_calloc((size_t)pieces + 1, sizeof *out->images, err);
    PieceJob *jobs = maml_calloc((size_t)pieces + 1, sizeof *jobs, err);
    if (!out->images || !jobs) {
        free(jobs);
        return -1;
    }
    out->n_pieces = pieces;
    for (int p = 0; p < pieces; p++) {
        jobs[p] = (PieceJob){.nvrtc = n, .opt = opt, .img = &out->images[p]};
        sb_init(&jobs[p].src);
        piece_source(text, code, out->piece_of, p, &jobs[p].src);
        if (jobs[p].src.failed) jobs[p].rc = maml_fail(&jobs[p].err, "out of memory");
    }
    out->threads = threads > 0 ? threads : online_cpus();
    if (out->threads > pieces) out->threads = pieces > 0 ? pieces : 1;
    run_jobs(jobs, pieces, out->threads);
    int rc = 0;
    for (int p = 0; p < pieces; p++) {
        if (jobs[p].rc && rc == 0) rc = maml_fail(err, "%s", jobs[p].err.message);
        if (jobs[p].rc == 0 && out->images[p].lookup == CACHE_HIT) out->cached++;
        sb_free(&jobs[p].src);
    }
    free(jobs);
    out->ms = maml_now_ms() - t0;
    return rc;
}

void cuda_images_free(CudaImages *im) {
    for (int p = 0; im->images && p < im->n_pieces; p++) nvrtc_image_free(&im->images[p]);
    free(im->images);
    free(im->piece_of);
    memset(im, 0, sizeof *im);
}

#if MAMLC_HAVE_CUDA

/* ---- the backend ---- */

typedef struct {
    CudaDriver drv;
    CompiledGraph cg;
    CudaCode code;
    CudaImages images;
    CUmodule *modules; /* per piece */
    CUfunction *fns;   /* per function */
    CUdeviceptr arena;
    CUstream stream;
    char *host; /* pinned mirror of the plan's inputs and outputs blocks, at arena offsets */
    CUdeviceptr *arg_values; /* every launch's arguments, concatenated */
    void **arg_ptrs;         /* what cuLaunchKernel takes: pointers to arg_values */
    int *arg_start;          /* per launch: its first entry in arg_values */
    /* Staged batches (backend_stage): two slots, each holding every data input, in pinned host
     * memory and on the device, laid out as the plan's data inputs [0, data_bytes); the batch
     * travels on copy_stream while a step computes, and the next step's graph copies it from its
     * device slot into the arena. */
    CUstream copy_stream;
    size_t slot_bytes;      /* the plan's data_bytes; 0 when the graph has no data inputs */
    char *slot_host;        /* pinned, 2 x slot_bytes */
    CUdeviceptr slot_dev;   /* 2 x slot_bytes */
    CUevent slot_copied[2]; /* the batch is on the device */
    CUevent slot_read[2];   /* the step that read the slot is done */
    int staged_slot;        /* the slot the next launch reads; -1: its batch comes from inputs */
    int running_slot;       /* the slot the launched (or last) step read, or -1 */
    /* The captured step, by where the batch comes from: graph[0] from the pinned inputs,
     * graph[1 + s] from device slot s. */
    CUgraph graph[3];
    CUgraphExec exec[3];
    CUevent ev[2];
    bool sync_each;
    /* backend_keep_state: the updated state stays in the arena, copied from the outputs block to
     * the inputs block at the end of each step (the plan lines the two up); the graphs are
     * captured again in that form. */
    bool resident;
    CudaConvLowering *convs;  /* --conv cudnn|auto: the kernels cuDNN runs, and the ones auto put
                                 on their tensor-core form; NULL: none */
    const char **function_of; /* per kernel: its function's name (for the conv lowering) */
    const char **tensor_function_of; /* per kernel: its tensor-core form's, or NULL */
    CudaBackendInfo info;
} CudaImpl;

static CudaImpl *impl_of(const Backend *b) {
    return b && strcmp(b->name, "cuda") == 0 ? b->impl : NULL;
}

/* Kernel i's launch in its generated form or its tensor-core form. */
static const CudaLaunch *launch_of(const CudaImpl *c, int i, bool tensor) {
    return tensor ? &c->code.tensor[i] : &c->code.launches[i];
}

/* "k12_mul (warp_0123456789abcdef)", or "k3_conv2d (cuDNN)": what errors about kernel i in the
 * given form say. */
static void describe_launch(const CudaImpl *c, int i, bool tensor, char *buf, size_t size) {
    const CudaLaunch *l = launch_of(c, i, tensor);
    snprintf(buf, size, "%s (%s)", l->name,
             cuda_conv_lowered(c->convs, i) ? "cuDNN" : c->code.functions[l->function].name);
}

/* The same for kernel i as the step runs it. */
static void launch_what(const CudaImpl *c, int i, char *buf, size_t size) {
    describe_launch(c, i, cuda_conv_on_tensor(c->convs, i), buf, size);
}

static int load_modules(CudaImpl *c, MamlError *err) {
    const CudaDriver *d = &c->drv;
    c->modules = maml_calloc((size_t)c->images.n_pieces + 1, sizeof *c->modules, err);
    c->fns = maml_calloc((size_t)c->code.n_functions + 1, sizeof *c->fns, err);
    if (!c->modules || !c->fns) return -1;
    for (int p = 0; p < c->images.n_pieces; p++) {
        char what[64];
        snprintf(what, sizeof what, "kernels.cu piece %d of %d", p + 1, c->images.n_pieces);
        if (cuda_module_load(d, c->images.images[p].image, what, &c->modules[p], err)) return -1;
    }
    for (int f = 0; f < c->code.n_functions; f++)
        if (cuda_module_function(d, c->modules[c->images.piece_of[f]], c->code.functions[f].name,
                                 &c->fns[f], err))
            return -1;
    return 0;
}

static int compile_kernels(CudaImpl *c, const CudaOptions *opt, const StrBuf *text,
                           MamlError *err) {
    Nvrtc *n = NULL;
    KernelCache cache;
    int rc = nvrtc_open(&n, err);
    if (rc == 0 && opt->cache_dir)
        rc = kernel_cache_open(&cache, opt->cache_dir, NULL, opt->require_cache, err);
    else if (rc == 0)
        rc = kernel_cache_open(&cache, NULL, "cuda", opt->require_cache, err);
    NvrtcOptions no = {.arch = cuda_driver_arch(&c->drv), .cache = &cache};
    if (rc == 0) rc = cuda_compile_code(n, text->data, &c->code, &no, 0, &c->images, err);
    nvrtc_close(n);
    if (rc) return -1;
    c->info.n_pieces = c->images.n_pieces;
    c->info.pieces_cached = c->images.cached;
    c->info.compile_ms = c->images.ms;
    return load_modules(c, err);
}

static double mib(long long bytes) {
    return (double)bytes / (1024.0 * 1024.0);
}

/* The one device allocation: the arena, sized by the memory plan. */
static int alloc_arena(CudaImpl *c, const CudaOptions *opt, MamlError *err) {
    const CudaDriver *d = &c->drv;
    size_t free_b = 0, total_b = 0;
    if (CU_CHECK(d, err, "before the arena", cuMemGetInfo, &free_b, &total_b)) return -1;
    c->info.free_bytes = (long long)free_b;
    c->info.total_bytes = (long long)total_b;
    long long bytes = c->cg.plan.arena_bytes > 0 ? c->cg.plan.arena_bytes : MEMPLAN_ALIGN;
    if (!opt->quiet)
        fprintf(stderr,
                "mamlc: cuda: %s; memory plan: arena %.1f MiB (liveness bound %.1f MiB) + "
                "%.1f MiB for two staged batches, %.1f MiB free on the device; %d kernels as %d "
                "functions%s, NVRTC %.0f ms (%d of %d pieces from the cache)\n",
                c->info.device, mib(bytes), mib(c->cg.plan.lower_bound),
                mib(2 * c->cg.plan.data_bytes), mib((long long)free_b), c->code.n_kernels,
                c->code.n_functions,
                opt->conv == CUDA_CONV_TENSOR ? " (convolutions on tensor cores, 3xTF32)" : "",
                c->info.compile_ms, c->info.pieces_cached, c->info.n_pieces);
    CUresult rc = d->cuMemAlloc(&c->arena, (size_t)bytes);
    if (rc == CUDA_SUCCESS) return 0;
    c->arena = 0;
    MamlError why;
    cuda_check(d, rc, "cuMemAlloc", "arena", &why);
    return maml_fail(err,
                     "%s; the memory plan needs %.1f MiB for the arena (liveness bound %.1f "
                     "MiB), cuMemGetInfo reports %.1f MiB free of %.1f MiB",
                     why.message, mib(bytes), mib(c->cg.plan.lower_bound), mib((long long)free_b),
                     mib((long long)total_b));
}

/* The pinned mirror of the inputs and outputs blocks, and every launch's arguments. */
static int prepare_buffers(CudaImpl *c, MamlError *err) {
    const KernelProgram *p = &c->cg.prog;
    const MemPlan *m = &c->cg.plan;
    c->arg_start = maml_calloc((size_t)p->n_kernels + 1, sizeof *c->arg_start, err);
    if (!c->arg_start) return -1;
    size_t mirror = (size_t)(m->outputs_at + m->outputs_bytes);
    if (CU_CHECK(&c->drv, err, "pinned inputs and outputs", cuMemHostAlloc, (void **)&c->host,
                 mirror ? mirror : 64, 0))
        return -1;
    int total = 0;
    for (int i = 0; i < p->n_kernels; i++)
        c->arg_start[i] = total, total += c->code.launches[i].n_args;
    c->arg_values = maml_calloc((size_t)total + 1, sizeof *c->arg_values, err);
    c->arg_ptrs = maml_calloc((size_t)total + 1, sizeof *c->arg_ptrs, err);
    if (!c->arg_values || !c->arg_ptrs) return -1;
    for (int i = 0; i < p->n_kernels; i++) {
        const CudaLaunch *l = &c->code.launches[i];
        for (int a = 0; a < l->n_args; a++) {
            CUdeviceptr *v = &c->arg_values[c->arg_start[i] + a];
            *v = c->arena + (CUdeviceptr)c->cg.plan.offset[l->args[a]];
            c->arg_ptrs[c->arg_start[i] + a] = v;
        }
    }
    return 0;
}

/* The two staging slots, each as large as the plan's data inputs; two streams' events say when a
 * slot's copy is done and when the step that read it is. */
static int prepare_slots(CudaImpl *c, MamlError *err) {
    const CudaDriver *d = &c->drv;
    c->staged_slot = c->running_slot = -1;
    c->slot_bytes = (size_t)c->cg.plan.data_bytes;
    if (CU_CHECK(d, err, "batch stream", cuStreamCreate, &c->copy_stream, CU_STREAM_NON_BLOCKING))
        return -1;
    for (int i = 0; i < 2; i++)
        if (CU_CHECK(d, err, "staged batch", cuEventCreate, &c->slot_copied[i],
                     CU_EVENT_DISABLE_TIMING) ||
            CU_CHECK(d, err, "staged batch", cuEventCreate, &c->slot_read[i],
                     CU_EVENT_DISABLE_TIMING))
            return -1;
    if (c->slot_bytes == 0) return 0;
    if (CU_CHECK(d, err, "staged batches (pinned)", cuMemHostAlloc, (void **)&c->slot_host,
                 2 * c->slot_bytes, 0))
        return -1;
    return CU_CHECK(d, err, "staged batches (device)", cuMemAlloc, &c->slot_dev, 2 * c->slot_bytes);
}

/* Kernel i's generated function, or its tensor-core form (the same arguments). */
static int launch(CudaImpl *c, int i, bool tensor, MamlError *err) {
    const CudaLaunch *l = launch_of(c, i, tensor);
    char what[128];
    describe_launch(c, i, tensor, what, sizeof what);
    return CU_CHECK(&c->drv, err, what, cuLaunchKernel, c->fns[l->function], l->grid[0], l->grid[1],
                    l->grid[2], l->block[0], l->block[1], l->block[2], 0, c->stream,
                    &c->arg_ptrs[c->arg_start[i]], NULL);
}

/* Kernel i: its generated function (or the tensor-core form auto chose), or, when lowered, its
 * transposes and cuDNN call. */
static int run_kernel(CudaImpl *c, int i, MamlError *err) {
    if (cuda_conv_lowered(c->convs, i)) return cuda_conv_enqueue(c->convs, i, err);
    return launch(c, i, cuda_conv_on_tensor(c->convs, i), err);
}

/* One H2D copy of the inputs block's bytes [from, to) from the pinned mirror. */
static int copy_in_range(CudaImpl *c, int64_t from, int64_t to, const char *what, MamlError *err) {
    if (to <= from) return 0;
    return CU_CHECK(&c->drv, err, what, cuMemcpyHtoDAsync, c->arena + (CUdeviceptr)from,
                    c->host + from, (size_t)(to - from), c->stream);
}

/* The inputs block into the arena from its pinned mirror: the batch from device slot `slot`
 * instead when slot >= 0, and when the state is resident, not the fed-back part. */
static int copy_inputs_async(CudaImpl *c, int slot, MamlError *err) {
    const MemPlan *m = &c->cg.plan;
    int64_t state_from = m->data_bytes + (c->resident ? m->feedback_bytes : 0);
    if (slot >= 0 && m->data_bytes > 0 &&
        CU_CHECK(&c->drv, err, "staged batch", cuMemcpyDtoDAsync, c->arena,
                 c->slot_dev + slot * c->slot_bytes, (size_t)m->data_bytes, c->stream))
        return -1;
    if (slot < 0 && copy_in_range(c, 0, m->data_bytes, "batch", err)) return -1;
    return copy_in_range(c, state_from, m->input_bytes, "inputs", err);
}

/* The outputs block back in one copy (an output that is an input buffer is already in the
 * mirror: kernels never write inputs); with the state resident, the updated state goes into the
 * inputs block instead, and only the other outputs come back. */
static int copy_outputs_async(CudaImpl *c, MamlError *err) {
    const MemPlan *m = &c->cg.plan;
    int64_t fb = c->resident ? m->feedback_bytes : 0;
    if (fb > 0 && CU_CHECK(&c->drv, err, "state (kept on the device)", cuMemcpyDtoDAsync,
                           c->arena + (CUdeviceptr)m->data_bytes,
                           c->arena + (CUdeviceptr)m->outputs_at, (size_t)fb, c->stream))
        return -1;
    if (m->outputs_bytes - fb <= 0) return 0;
    return CU_CHECK(&c->drv, err, "outputs", cuMemcpyDtoHAsync, c->host + m->outputs_at + fb,
                    c->arena + (CUdeviceptr)(m->outputs_at + fb), (size_t)(m->outputs_bytes - fb),
                    c->stream);
}

/* Copies in (the batch from slot, or from the pinned inputs when slot is -1), every kernel,
 * copies out, on the stream; with sync_each, a synchronisation after each kernel names the one
 * that faulted. */
static int enqueue_step(CudaImpl *c, int slot, bool sync_each, MamlError *err) {
    if (copy_inputs_async(c, slot, err)) return -1;
    for (int i = 0; i < c->cg.prog.n_kernels; i++) {
        if (run_kernel(c, i, err)) return -1;
        char what[128];
        launch_what(c, i, what, sizeof what);
        if (sync_each && CU_CHECK(&c->drv, err, what, cuStreamSynchronize, c->stream)) return -1;
    }
    return copy_outputs_async(c, err);
}

/* Captures the step whose batch comes from slot (-1: the pinned inputs) into graph[1 + slot]. */
static int capture_step(CudaImpl *c, int slot, MamlError *err) {
    const CudaDriver *d = &c->drv;
    /* cuDNN's calls are runtime-API work we do not control: relaxed capture keeps a harmless
     * query of theirs from invalidating the capture (the warm-up already ran every call once) */
    CUstreamCaptureMode mode = cuda_conv_count(c->convs) > 0 ? CU_STREAM_CAPTURE_MODE_RELAXED
                                                             : CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    if (CU_CHECK(d, err, "step", cuStreamBeginCapture, c->stream, mode)) return -1;
    int rc = enqueue_step(c, slot, false, err);
    CUgraph graph = NULL;
    CUresult end = d->cuStreamEndCapture(c->stream, &graph); /* always: it leaves capture mode */
    if (rc == 0) rc = cuda_check(d, end, "cuStreamEndCapture", "step", err);
    c->graph[1 + slot] = graph;
    if (rc) return -1;
    return CU_CHECK(d, err, "step", cuGraphInstantiate, &c->exec[1 + slot], graph, 0);
}

static int capture_steps(CudaImpl *c, MamlError *err) {
    for (int slot = -1; slot < 2; slot++)
        if (capture_step(c, slot, err)) return -1;
    return 0;
}

static void destroy_graphs(CudaImpl *c) {
    for (int i = 0; i < 3; i++) {
        if (c->exec[i]) c->drv.cuGraphExecDestroy(c->exec[i]);
        if (c->graph[i]) c->drv.cuGraphDestroy(c->graph[i]);
        c->exec[i] = NULL, c->graph[i] = NULL;
    }
}

/* Whether buffer b is in the fed-back part of the inputs block (or, for an output, of the
 * outputs block). */
static bool fed_back(const CudaImpl *c, int b) {
    const MemPlan *m = &c->cg.plan;
    int64_t at = m->offset[b];
    int64_t base = c->cg.prog.bufs[b].kind == BUF_INPUT ? m->data_bytes : m->outputs_at;
    return at >= base && at < base + m->feedback_bytes;
}

/* ---- inputs and outputs ---- */

/* The step whose batch comes from slot (-1: the pinned inputs): its graph, or with sync_each its
 * kernels one at a time. */
static int enqueue_run(CudaImpl *c, int slot, MamlError *err) {
    if (c->sync_each) return enqueue_step(c, slot, true, err);
    return CU_CHECK(&c->drv, err, "step", cuGraphLaunch, c->exec[1 + slot], c->stream);
}

static int cuda_launch(Backend *b, const TensorSet *inputs, MamlError *err) {
    CudaImpl *c = b->impl;
    const CudaDriver *d = &c->drv;
    int slot = c->staged_slot;
    if (inputs_check(b->graph, inputs, err) ||
        (slot < 0 && inputs_check_labels(b->graph, inputs, err)))
        return -1;
    if (CU_CHECK(d, err, "run", cuCtxSetCurrent, d->ctx)) return -1;
    bool f64 = b->prec == PREC_F64;
    const KernelProgram *p = &c->cg.prog;
    bool kept = c->resident && b->holds_state; /* the state is on the device already */
    for (int i = 0; i < p->n_bufs; i++)
        if (p->bufs[i].kind == BUF_INPUT && (slot < 0 || !p->bufs[i].is_data) &&
            !(kept && fed_back(c, i)))
            tensor_copy_reals(tensorset_find(inputs, p->bufs[i].name),
                              c->host + c->cg.plan.offset[i], f64);
    c->staged_slot = -1;
    c->running_slot = slot;
    const MemPlan *m = &c->cg.plan;
    if (c->resident && !kept &&
        copy_in_range(c, m->data_bytes, m->data_bytes + m->feedback_bytes, "state", err))
        return -1;
    if (slot >= 0 &&
        CU_CHECK(d, err, "staged batch", cuStreamWaitEvent, c->stream, c->slot_copied[slot], 0))
        return -1;
    if (enqueue_run(c, slot, err)) return -1;
    return slot >= 0
               ? CU_CHECK(d, err, "staged batch", cuEventRecord, c->slot_read[slot], c->stream)
               : 0;
}

/* The batch goes into the slot the launched step does not read, once the step that last read
 * that slot is done, on copy_stream: it overlaps the launched step. */
static int cuda_stage(Backend *b, const TensorSet *data, MamlError *err) {
    CudaImpl *c = b->impl;
    const CudaDriver *d = &c->drv;
    int slot = c->running_slot == 0 ? 1 : 0;
    if (CU_CHECK(d, err, "stage", cuCtxSetCurrent, d->ctx) ||
        CU_CHECK(d, err, "staged batch (pinned slot free)", cuEventSynchronize,
                 c->slot_copied[slot]))
        return -1;
    bool f64 = b->prec == PREC_F64;
    const KernelProgram *p = &c->cg.prog;
    /* no staging slot: the graph has no data inputs */
    char *host = c->slot_bytes ? c->slot_host + slot * c->slot_bytes : NULL;
    for (int i = 0; host && i < p->n_bufs; i++)
        if (p->bufs[i].kind == BUF_INPUT && p->bufs[i].is_data)
            tensor_copy_reals(tensorset_find(data, p->bufs[i].name), host + c->cg.plan.offset[i],
                              f64);
    if (CU_CHECK(d, err, "staged batch", cuStreamWaitEvent, c->copy_stream, c->slot_read[slot], 0))
        return -1;
    if (c->slot_bytes > 0 &&
        CU_CHECK(d, err, "staged batch", cuMemcpyHtoDAsync, c->slot_dev + slot * c->slot_bytes,
                 host, c->slot_bytes, c->copy_stream))
        return -1;
    if (CU_CHECK(d, err, "staged batch", cuEventRecord, c->slot_copied[slot], c->copy_stream))
        return -1;
    c->staged_slot = slot;
    return 0;
}

static int cuda_finish(Backend *b, TensorSet *outputs, MamlError *err) {
    CudaImpl *c = b->impl;
    const CudaDriver *d = &c->drv;
    if (CU_CHECK(d, err, "finish", cuCtxSetCurrent, d->ctx) ||
        CU_CHECK(d, err, "step (set MAMLC_CUDA_SYNC=1 to name the kernel)", cuStreamSynchronize,
                 c->stream))
        return -1;
    bool f64 = b->prec == PREC_F64;
    const KernelProgram *p = &c->cg.prog;
    for (int o = 0; o < p->n_outputs; o++) {
        const KOutput *out = &p->outputs[o];
        if (c->resident && fed_back(c, out->buf)) continue; /* stays on the device */
        if (!tensorset_add(outputs, out->name, f64 ? TENSOR_F64 : TENSOR_F32, out->shape,
                           c->host + c->cg.plan.offset[out->buf], err))
            return -1;
    }
    return 0;
}

static int cuda_keep_state(Backend *b, MamlError *err) {
    CudaImpl *c = b->impl;
    if (CU_CHECK(&c->drv, err, "keep state", cuCtxSetCurrent, c->drv.ctx)) return -1;
    c->resident = true;
    destroy_graphs(c);
    return c->sync_each ? 0 : capture_steps(c, err);
}

/* The fed-back part of the inputs block, read back from the device. */
static int cuda_get_state(Backend *b, TensorSet *state, MamlError *err) {
    CudaImpl *c = b->impl;
    const CudaDriver *d = &c->drv;
    const MemPlan *m = &c->cg.plan;
    if (CU_CHECK(d, err, "state", cuCtxSetCurrent, d->ctx) ||
        (m->feedback_bytes > 0 &&
         CU_CHECK(d, err, "state", cuMemcpyDtoHAsync, c->host + m->data_bytes,
                  c->arena + (CUdeviceptr)m->data_bytes, (size_t)m->feedback_bytes, c->stream)) ||
        CU_CHECK(d, err, "state", cuStreamSynchronize, c->stream))
        return -1;
    const KernelProgram *p = &c->cg.prog;
    bool f64 = b->prec == PREC_F64;
    for (int i = 0; i < p->n_bufs; i++)
        if (p->bufs[i].kind == BUF_INPUT && fed_back(c, i) &&
            !tensorset_add(state, p->bufs[i].name, f64 ? TENSOR_F64 : TENSOR_F32,
                           c->cg.graph.nodes[p->bufs[i].node].shape, c->host + m->offset[i], err))
            return -1;
    return 0;
}

/* ---- open and close ---- */

static void cuda_destroy(Backend *b) {
    CudaImpl *c = b ? b->impl : NULL;
    if (c) {
        CudaDriver *d = &c->drv;
        if (d->ctx_retained) {
            d->cuCtxSetCurrent(d->ctx);
            /* a staged batch may still be in flight: nothing it uses goes before it is done */
            if (c->copy_stream) d->cuStreamSynchronize(c->copy_stream);
            if (c->stream) d->cuStreamSynchronize(c->stream);
            destroy_graphs(c);
            cuda_conv_close(c->convs); /* before the stream its handle issues work on */
            for (int i = 0; i < 2; i++) {
                if (c->ev[i]) d->cuEventDestroy(c->ev[i]);
                if (c->slot_copied[i]) d->cuEventDestroy(c->slot_copied[i]);
                if (c->slot_read[i]) d->cuEventDestroy(c->slot_read[i]);
            }
            if (c->copy_stream) d->cuStreamDestroy(c->copy_stream);
            if (c->stream) d->cuStreamDestroy(c->stream);
            if (c->slot_host) d->cuMemFreeHost(c->slot_host);
            if (c->slot_dev) d->cuMemFree(c->slot_dev);
            if (c->host) d->cuMemFreeHost(c->host);
            if (c->arena) d->cuMemFree(c->arena);
            for (int p = 0; c->modules && p < c->images.n_pieces; p++)
                if (c->modules[p]) d->cuModuleUnload(c->modules[p]);
        }
        cuda_driver_close(d);
        free(c->modules), free(c->fns);
        free(c->arg_values), free(c->arg_ptrs), free(c->arg_start), free(c->function_of);
        free(c->tensor_function_of);
        cuda_images_free(&c->images);
        cuda_code_free(&c->code);
        compiled_graph_free(&c->cg);
        free(c);
    }
    free(b);
}

static void device_peaks(const CudaDriver *d, CudaBackendInfo *info) {
    int arch = cuda_driver_arch(d);
    int lanes = (arch == 70 || arch == 72 || arch == 80) ? 64 : 128;
    double ghz = d->clock_khz / 1e6;
    info->peak_gflops = (double)d->sm_count * lanes * 2 * ghz;
    info->peak_gbs = 2.0 * d->memory_clock_khz * 1e3 * (d->bus_bits / 8) / 1e9;
    snprintf(
        info->peak_assumption, sizeof info->peak_assumption,
        "FP32 peak %.1f GFLOP/s = %d SMs x %d FP32 lanes x 2 (FMA) x %.2f GHz; memory %.0f GB/s "
        "= 2 x %.2f GHz x %d bits (stated by the driver's attributes, not measured)",
        info->peak_gflops, d->sm_count, lanes, ghz, info->peak_gbs, d->memory_clock_khz / 1e6,
        d->bus_bits);
}

static int device_ordinal(const CudaOptions *opt) {
    if (opt->device >= 0) return opt->device;
    const char *env = getenv("MAMLC_CUDA_DEVICE");
    return env && *env ? atoi(env) : 0;
}

static int render(CudaImpl *c, const Graph *g, const CudaOptions *opt, Precision prec, StrBuf *text,
                  MamlError *err) {
    PipelineOptions po = pipeline_default_options();
    po.no_fuse = opt->no_fuse;
    po.f64 = prec == PREC_F64;
    if (compile_pipeline(g, &po, &c->cg, err)) return -1;
    if (cuda_code_alloc(&c->code, c->cg.prog.n_kernels, err)) return -1;
    CodegenOptions co = {.f64 = po.f64,
                         .source = "a graph (cuda backend)",
                         .tensor_convs = opt->conv == CUDA_CONV_TENSOR,
                         .tensor_variants = opt->conv == CUDA_CONV_AUTO && c->info.arch >= 80};
    return codegen_cuda(&c->cg.graph, &c->cg.prog, &c->cg.plan, &co, text, &c->code, err);
}

/* For the conv lowering's auto measurement: launch generated kernel i (or its tensor-core form),
 * nothing else. */
static int launch_generated(void *ctx, int i, bool tensor, MamlError *err) {
    return launch(ctx, i, tensor, err);
}

/* --conv cudnn|auto: cuDNN for the pure conv kernels (after the arena and launches exist, since
 * auto times the generated kernels against cuDNN's calls). */
static int open_convs(CudaImpl *c, const CudaOptions *opt, MamlError *err) {
    c->info.conv = opt->conv;
    if (!cuda_conv_uses_cudnn(opt->conv)) return 0;
    int n = c->code.n_kernels;
    c->function_of = maml_calloc((size_t)n + 1, sizeof *c->function_of, err);
    c->tensor_function_of = maml_calloc((size_t)n + 1, sizeof *c->tensor_function_of, err);
    if (!c->function_of || !c->tensor_function_of) return -1;
    for (int i = 0; i < n; i++) {
        const CudaLaunch *t = &c->code.tensor[i];
        c->function_of[i] = c->code.functions[c->code.launches[i].function].name;
        c->tensor_function_of[i] = t->function >= 0 ? c->code.functions[t->function].name : NULL;
    }
    CudaConvSetup s = {.mode = opt->conv,
                       .driver = &c->drv,
                       .stream = c->stream,
                       .arena = c->arena,
                       .cg = &c->cg,
                       .function_of = c->function_of,
                       .tensor_function_of = c->tensor_function_of,
                       .cache_dir = opt->cache_dir,
                       .require_cache = opt->require_cache,
                       .quiet = opt->quiet,
                       .launch_generated = launch_generated,
                       .ctx = c};
    if (cuda_conv_open(&s, &c->convs, err)) return -1;
    c->info.cudnn_kernels = cuda_conv_count(c->convs);
    c->info.tensor_kernels = cuda_conv_tensor_count(c->convs);
    return 0;
}

static int prepare(CudaImpl *c, const Graph *g, const CudaOptions *opt, Precision prec,
                   MamlError *err) {
    CudaDriver *d = &c->drv;
    if (cuda_driver_open(d, device_ordinal(opt), err)) return -1;
    cuda_driver_describe(d, c->info.device, sizeof c->info.device);
    c->info.arch = cuda_driver_arch(d);
    if (opt->conv == CUDA_CONV_TENSOR && c->info.arch < 80)
        return maml_fail(err,
                         "--conv tensor needs compute capability 8.0 or newer (tensor cores with "
                         "TF32); %s is sm_%d",
                         c->info.device, c->info.arch);
    device_peaks(d, &c->info);
    StrBuf text;
    sb_init(&text);
    int rc = render(c, g, opt, prec, &text, err);
    if (rc == 0) rc = compile_kernels(c, opt, &text, err);
    sb_free(&text);
    if (rc || alloc_arena(c, opt, err)) return -1;
    if (CU_CHECK(d, err, "step stream", cuStreamCreate, &c->stream, CU_STREAM_NON_BLOCKING))
        return -1;
    for (int i = 0; i < 2; i++)
        if (CU_CHECK(d, err, "timing", cuEventCreate, &c->ev[i], CU_EVENT_DEFAULT)) return -1;
    if (prepare_buffers(c, err) || prepare_slots(c, err) || open_convs(c, opt, err)) return -1;
    const char *sync = getenv("MAMLC_CUDA_SYNC");
    c->sync_each = sync && *sync && strcmp(sync, "0") != 0;
    c->info.n_kernels = c->code.n_kernels;
    c->info.n_functions = c->code.n_functions;
    c->info.arena_bytes = c->cg.plan.arena_bytes;
    c->info.lower_bound = c->cg.plan.lower_bound;
    return c->sync_each ? 0 : capture_steps(c, err);
}

int cuda_backend_open(const Graph *g, Precision prec, const CudaOptions *opt, Backend **out,
                      MamlError *err) {
    *out = NULL;
    CudaOptions defaults = cuda_default_options();
    if (!opt) opt = &defaults;
    if (graph_status(g, err)) return -1;
    Backend *b = maml_calloc(1, sizeof *b, err);
    CudaImpl *c = b ? maml_calloc(1, sizeof *c, err) : NULL;
    if (!c) {
        free(b);
        return -1;
    }
    b->name = "cuda";
    b->launch = cuda_launch;
    b->stage = cuda_stage;
    b->finish = cuda_finish;
    b->keep_state = cuda_keep_state;
    b->get_state = cuda_get_state;
    b->destroy = cuda_destroy;
    b->graph = g;
    b->prec = prec;
    b->impl = c;
    if (prepare(c, g, opt, prec, err)) {
        cuda_destroy(b);
        return -1;
    }
    *out = b;
    return 0;
}

bool cuda_device_available(char *why, int why_size) {
    CudaDriver d;
    MamlError err;
    bool ok = cuda_driver_open(&d, 0, &err) == 0;
    if (ok)
        cuda_driver_describe(&d, why, (size_t)why_size);
    else
        snprintf(why, (size_t)why_size, "%s", err.message);
    cuda_driver_close(&d);
    return ok;
}

/* ---- facts and timing ---- */

int cuda_backend_info(const Backend *b, CudaBackendInfo *info, MamlError *err) {
    const CudaImpl *c = impl_of(b);
    if (!c) return maml_fail(err, "not a cuda backend");
    *info = c->info;
    return 0;
}

const CompiledGraph *cuda_backend_compiled(const Backend *b) {
    const CudaImpl *c = impl_of(b);
    return c ? &c->cg : NULL;
}

const CudaCode *cuda_backend_code(const Backend *b) {
    const CudaImpl *c = impl_of(b);
    return c ? &c->code : NULL;
}

const CudaLaunch *cuda_backend_launch(const Backend *b, int i, bool *on_cudnn) {
    const CudaImpl *c = impl_of(b);
    if (!c || i < 0 || i >= c->code.n_kernels) return NULL;
    *on_cudnn = cuda_conv_lowered(c->convs, i);
    return launch_of(c, i, cuda_conv_on_tensor(c->convs, i));
}

int cuda_backend_run_kernel(Backend *b, int i, MamlError *err) {
    CudaImpl *c = impl_of(b);
    if (!c) return maml_fail(err, "not a cuda backend");
    if (i < 0 || i >= c->code.n_kernels)
        return maml_fail(err, "kernel %d out of range (%d kernels)", i, c->code.n_kernels);
    char what[128];
    launch_what(c, i, what, sizeof what);
    if (CU_CHECK(&c->drv, err, what, cuCtxSetCurrent, c->drv.ctx) || run_kernel(c, i, err))
        return -1;
    return CU_CHECK(&c->drv, err, what, cuStreamSynchronize, c->stream);
}

/* The milliseconds between the two timing events, after waiting for the second. */
static int elapsed(CudaImpl *c, const char *what, double *ms, MamlError *err) {
    float f = 0;
    if (CU_CHECK(&c->drv, err, what, cuEventSynchronize, c->ev[1]) ||
        CU_CHECK(&c->drv, err, what, cuEventElapsedTime, &f, c->ev[0], c->ev[1]))
        return -1;
    *ms = f;
    return 0;
}

int cuda_backend_time_steps(Backend *b, int reps, double *ms, MamlError *err) {
    CudaImpl *c = impl_of(b);
    if (!c) return maml_fail(err, "not a cuda backend");
    const CudaDriver *d = &c->drv;
    if (CU_CHECK(d, err, "timing", cuCtxSetCurrent, d->ctx)) return -1;
    for (int r = 0; r < reps; r++) {
        int rc = CU_CHECK(d, err, "timing", cuEventRecord, c->ev[0], c->stream);
        if (rc == 0) rc = enqueue_run(c, c->running_slot, err);
        if (rc == 0) rc = CU_CHECK(d, err, "timing", cuEventRecord, c->ev[1], c->stream);
        if (rc || elapsed(c, "step", &ms[r], err)) return -1;
    }
    return 0;
}

int cuda_backend_time_kernels(Backend *b, int reps, double *kernel_ms, MamlError *err) {
    CudaImpl *c = impl_of(b);
    if (!c) return maml_fail(err, "not a cuda backend");
    const CudaDriver *d = &c->drv;
    if (reps < 1) reps = 1;
    if (CU_CHECK(d, err, "timing", cuCtxSetCurrent, d->ctx)) return -1;
    for (int i = 0; i < c->code.n_kernels; i++) {
        char what[128];
        launch_what(c, i, what, sizeof what);
        int rc = CU_CHECK(d, err, what, cuEventRecord, c->ev[0], c->stream);
        for (int r = 0; rc == 0 && r < reps; r++) rc = run_kernel(c, i, err);
        if (rc == 0) rc = CU_CHECK(d, err, what, cuEventRecord, c->ev[1], c->stream);
        if (rc || elapsed(c, what, &kernel_ms[i], err)) return -1;
        kernel_ms[i] /= reps;
    }
    return 0;
}

#else /* built without the CUDA headers */

int cuda_backend_open(const Graph *g, Precision prec, const CudaOptions *opt, Backend **out,
                      MamlError *err) {
    (void)g, (void)prec, (void)opt;
    *out = NULL;
    return maml_fail(err, "no CUDA driver: mamlc was built without the CUDA headers "
                          "(add -isystem $CUDA_HOME/include to CFLAGS)");
}

bool cuda_device_available(char *why, int why_size) {
    snprintf(why, (size_t)why_size, "no CUDA driver: mamlc was built without the CUDA headers");
    return false;
}

int cuda_backend_info(const Backend *b, CudaBackendInfo *info, MamlError *err) {
    (void)b, (void)info;
    return maml_fail(err, "not a cuda backend");
}

const CompiledGraph *cuda_backend_compiled(const Backend *b) {
    (void)b;
    return NULL;
}

const CudaCode *cuda_backend_code(const Backend *b) {
    (void)b;
    return NULL;
}

const CudaLaunch *cuda_backend_launch(const Backend *b, int i, bool *on_cudnn) {
    (void)b, (void)i;
    *on_cudnn = false;
    return NULL;
}

int cuda_backend_run_kernel(Backend *b, int i, MamlError *err) {
    (void)b, (void)i;
    return maml_fail(err, "not a cuda backend");
}

int cuda_backend_time_steps(Backend *b, int reps, double *ms, MamlError *err) {
    (void)b, (void)reps, (void)ms;
    return maml_fail(err, "not a cuda backend");
}

int cuda_backend_time_kernels(Backend *b, int reps, double *kernel_ms, MamlError *err) {
    (void)b, (void)reps, (void)kernel_ms;
    return maml_fail(err, "not a cuda backend");
}

#endif
