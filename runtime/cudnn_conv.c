#include "cudnn_conv.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"

void conv_shape_str(const ConvShape *s, char *buf, size_t size) {
    snprintf(buf, size, "T=%d N=%d %dx%dx%d -> %d k%dx%d s%d p%d", s->tasks, s->batch, s->in_ch,
             s->height, s->width, s->out_ch, s->kh, s->kw, s->stride, s->padding);
}

/* Fills s from x [T,N,C,H,W] and w [T,O,C,KH,KW]. */
static int shape_from(const Shape *x, const Shape *w, int stride, int padding, ConvShape *s,
                      MamlError *err) {
    if (x->rank != 5 || w->rank != 5 || x->dims[0] != w->dims[0] || x->dims[2] != w->dims[2])
        return maml_fail(err, "conv: operands are not x [T,N,C,H,W] and w [T,O,C,KH,KW]");
    *s = (ConvShape){(int)x->dims[0], (int)x->dims[1], (int)x->dims[2], (int)x->dims[3],
                     (int)x->dims[4], (int)w->dims[1], (int)w->dims[3], (int)w->dims[4],
                     stride,          padding};
    return 0;
}

int conv_shape_of_node(const Graph *g, int node, ConvShape *s, MamlError *err) {
    const Node *n = &g->nodes[node];
    bool conv =
        n->op == OP_CONV2D || n->op == OP_CONV2D_GRAD_INPUT || n->op == OP_CONV2D_GRAD_WEIGHT;
    if (!conv || n->n_in != 2)
        return maml_fail(err, "conv: node %d is a %s, not a convolution", node,
                         op_info[n->op].name);
    const Shape *a = &g->nodes[n->in[0]].shape, *b = &g->nodes[n->in[1]].shape;
    switch (n->op) {
    case OP_CONV2D: /* (x, w) -> y */
        return shape_from(a, b, n->attr.stride, n->attr.padding, s, err);
    case OP_CONV2D_GRAD_INPUT: /* (dy, w) -> dx */
        return shape_from(&n->shape, b, n->attr.stride, n->attr.padding, s, err);
    default: /* OP_CONV2D_GRAD_WEIGHT: (x, dy) -> dw */
        return shape_from(a, &n->shape, n->attr.stride, n->attr.padding, s, err);
    }
}

#if MAMLC_HAVE_CUDA && defined(__has_include)
#if __has_include(<cudnn.h>)
#define MAMLC_HAVE_CUDNN 1
#endif
#endif

#ifdef MAMLC_HAVE_CUDNN
#include <cudnn.h>

#define CUDNN_FUNCS(X)                                                                             \
    X(cudnnGetVersion)                                                                             \
    X(cudnnGetErrorString)                                                                         \
    X(cudnnCreate)                                                                                 \
    X(cudnnDestroy)                                                                                \
    X(cudnnSetStream)                                                                              \
    X(cudnnCreateTensorDescriptor)                                                                 \
    X(cudnnSetTensor4dDescriptor)                                                                  \
    X(cudnnDestroyTensorDescriptor)                                                                \
    X(cudnnCreateFilterDescriptor)                                                                 \
    X(cudnnSetFilter4dDescriptor)                                                                  \
    X(cudnnDestroyFilterDescriptor)                                                                \
    X(cudnnCreateConvolutionDescriptor)                                                            \
    X(cudnnSetConvolution2dDescriptor)                                                             \
    X(cudnnSetConvolutionGroupCount)                                                               \
    X(cudnnSetConvolutionMathType)                                                                 \
    X(cudnnGetConvolution2dForwardOutputDim)                                                       \
    X(cudnnDestroyConvolutionDescriptor)                                                           \
    X(cudnnGetConvolutionForwardAlgorithm_v7)                                                      \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                                                 \
    X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                                               \
    X(cudnnGetConvolutionForwardWorkspaceSize)                                                     \
    X(cudnnGetConvolutionBackwardDataWorkspaceSize)                                                \
    X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                                              \
    X(cudnnConvolutionForward)                                                                     \
    X(cudnnConvolutionBackwardData)                                                                \
    X(cudnnConvolutionBackwardFilter)

struct Cudnn {
    void *lib;
    char path[512];
    cudnnHandle_t handle; /* NULL until cudnn_attach */
#define CUDNN_FIELD(fn) __typeof__(fn) *fn;
    CUDNN_FUNCS(CUDNN_FIELD)
#undef CUDNN_FIELD
};

struct CudnnConv {
    Cudnn *c;
    ConvShape s;
    char label[160]; /* name and shape, for messages */
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    bool chosen;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t ws_fwd, ws_bwd_data, ws_bwd_filter;
};

static int cudnn_check(const Cudnn *c, cudnnStatus_t st, const char *call, const char *what,
                       MamlError *err) {
    if (st == CUDNN_STATUS_SUCCESS) return 0;
    return maml_fail(err, "cudnn: %s(%s): %s", call, what, c->cudnnGetErrorString(st));
}

/* Calls c->FN(...) and checks its status, naming FN and WHAT in the error. */
#define CUDNN_CHECK(c, err, what, fn, ...)                                                         \
    cudnn_check((c), (c)->fn(__VA_ARGS__), #fn, (what), (err))

/* ---- loading ------------------------------------------------------------------------------- */

static int load_syms(Cudnn *c, MamlError *err) {
    void *sym;
#define LOAD(fn)                                                                                   \
    dlerror();                                                                                     \
    if (!(sym = dlsym(c->lib, #fn)))                                                               \
        return maml_fail(err, "cudnn: %s lacks %s: %s", c->path, #fn, dlerror());                  \
    memcpy(&c->fn, &sym, sizeof sym);
    CUDNN_FUNCS(LOAD)
#undef LOAD
    return 0;
}

int cudnn_open(Cudnn **out, MamlError *err) {
    static const char *const names[] = {"libcudnn.so.9", NULL};
    static const char *const wheels[] = {"nvidia/cudnn/lib", "nvidia/cu13/lib", NULL};
    static const CudaLibSpec spec = {"cuDNN", "MAMLC_CUDNN", names, true, NULL, wheels};
    *out = NULL;
    Cudnn *c = maml_calloc(1, sizeof *c, err);
    if (!c) return -1;
    c->lib = cuda_lib_open(&spec, c->path, sizeof c->path, err);
    if (!c->lib || load_syms(c, err)) {
        free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void cudnn_close(Cudnn *c) {
    if (!c) return;
    if (c->handle) c->cudnnDestroy(c->handle);
    free(c); /* the library stays loaded: see cuda_lib_open */
}

size_t cudnn_version(const Cudnn *c) {
    return c->cudnnGetVersion();
}

const char *cudnn_library(const Cudnn *c) {
    return c->path;
}

int cudnn_attach(Cudnn *c, void *stream, MamlError *err) {
    if (!c->handle && CUDNN_CHECK(c, err, "handle", cudnnCreate, &c->handle)) {
        c->handle = NULL;
        return -1;
    }
    return CUDNN_CHECK(c, err, "handle", cudnnSetStream, c->handle, (cudaStream_t)stream);
}

/* ---- descriptors --------------------------------------------------------------------------- */

static int out_hw(const ConvShape *s, int *ho, int *wo) {
    *ho = (s->height + 2 * s->padding - s->kh) / s->stride + 1;
    *wo = (s->width + 2 * s->padding - s->kw) / s->stride + 1;
    return *ho > 0 && *wo > 0 ? 0 : -1;
}

/* x [N, T*C, H, W], w [T*O, C, KH, KW], T groups, y [N, T*O, HO, WO]. */
static int set_descriptors(CudnnConv *cv, bool allow_tf32, MamlError *err) {
    const Cudnn *c = cv->c;
    const ConvShape *s = &cv->s;
    const char *l = cv->label;
    int ho, wo;
    if (out_hw(s, &ho, &wo)) return maml_fail(err, "cudnn: %s: empty output", l);
    return CUDNN_CHECK(c, err, l, cudnnSetTensor4dDescriptor, cv->x, CUDNN_TENSOR_NCHW,
                       CUDNN_DATA_FLOAT, s->batch, s->tasks * s->in_ch, s->height, s->width) ||
           CUDNN_CHECK(c, err, l, cudnnSetFilter4dDescriptor, cv->w, CUDNN_DATA_FLOAT,
                       CUDNN_TENSOR_NCHW, s->tasks * s->out_ch, s->in_ch, s->kh, s->kw) ||
           CUDNN_CHECK(c, err, l, cudnnSetConvolution2dDescriptor, cv->conv, s->padding, s->padding,
                       s->stride, s->stride, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ||
           CUDNN_CHECK(c, err, l, cudnnSetConvolutionGroupCount, cv->conv, s->tasks) ||
           CUDNN_CHECK(c, err, l, cudnnSetConvolutionMathType, cv->conv,
                       allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH) ||
           CUDNN_CHECK(c, err, l, cudnnSetTensor4dDescriptor, cv->y, CUDNN_TENSOR_NCHW,
                       CUDNN_DATA_FLOAT, s->batch, s->tasks * s->out_ch, ho, wo);
}

static int create_descriptors(CudnnConv *cv, MamlError *err) {
    const Cudnn *c = cv->c;
    const char *l = cv->label;
    return CUDNN_CHECK(c, err, l, cudnnCreateTensorDescriptor, &cv->x) ||
           CUDNN_CHECK(c, err, l, cudnnCreateTensorDescriptor, &cv->y) ||
           CUDNN_CHECK(c, err, l, cudnnCreateFilterDescriptor, &cv->w) ||
           CUDNN_CHECK(c, err, l, cudnnCreateConvolutionDescriptor, &cv->conv);
}

/* cuDNN must agree with our shape inference, or the buffers would not fit. */
static int check_output(const CudnnConv *cv, MamlError *err) {
    int d[4], ho, wo;
    if (cudnn_conv_output_dims(cv, d, err)) return -1;
    out_hw(&cv->s, &ho, &wo);
    if (d[0] != cv->s.batch || d[1] != cv->s.tasks * cv->s.out_ch || d[2] != ho || d[3] != wo)
        return maml_fail(err,
                         "cudnn: %s: cuDNN's output [%d, %d, %d, %d] differs from ours "
                         "[%d, %d, %d, %d]",
                         cv->label, d[0], d[1], d[2], d[3], cv->s.batch, cv->s.tasks * cv->s.out_ch,
                         ho, wo);
    return 0;
}

int cudnn_conv_create(Cudnn *c, const ConvShape *s, const char *name, bool allow_tf32,
                      CudnnConv **out, MamlError *err) {
    *out = NULL;
    CudnnConv *cv = maml_calloc(1, sizeof *cv, err);
    if (!cv) return -1;
    cv->c = c;
    cv->s = *s;
    char shape[96];
    conv_shape_str(s, shape, sizeof shape);
    snprintf(cv->label, sizeof cv->label, "%s [%s]", name ? name : "conv", shape);
    if (create_descriptors(cv, err) || set_descriptors(cv, allow_tf32, err) ||
        check_output(cv, err)) {
        cudnn_conv_destroy(cv);
        return -1;
    }
    *out = cv;
    return 0;
}

void cudnn_conv_destroy(CudnnConv *cv) {
    if (!cv) return;
    const Cudnn *c = cv->c;
    if (cv->x) c->cudnnDestroyTensorDescriptor(cv->x);
    if (cv->y) c->cudnnDestroyTensorDescriptor(cv->y);
    if (cv->w) c->cudnnDestroyFilterDescriptor(cv->w);
    if (cv->conv) c->cudnnDestroyConvolutionDescriptor(cv->conv);
    free(cv);
}

int cudnn_conv_output_dims(const CudnnConv *cv, int dims[4], MamlError *err) {
    return CUDNN_CHECK(cv->c, err, cv->label, cudnnGetConvolution2dForwardOutputDim, cv->conv,
                       cv->x, cv->w, &dims[0], &dims[1], &dims[2], &dims[3]);
}

/* ---- algorithms ---------------------------------------------------------------------------- */

enum { MAX_ALGOS = 16 };

/* What the three kinds of perf results have in common. */
typedef struct {
    int algo;
    cudnnStatus_t status;
    size_t memory;
    bool deterministic;
} Candidate;

/* The first (fastest by the heuristics' order) usable deterministic candidate that fits, else
 * the first usable one that fits; -1 when none does. */
static int pick(const Candidate *cand, int n, size_t limit) {
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if (cand[i].status == CUDNN_STATUS_SUCCESS && cand[i].memory <= limit &&
                (pass == 1 || cand[i].deterministic))
                return cand[i].algo;
    return -1;
}

#define TO_CANDIDATES(perf, n, cand)                                                               \
    for (int i = 0; i < (n); i++)                                                                  \
        (cand)[i] = (Candidate){(int)(perf)[i].algo, (perf)[i].status, (perf)[i].memory,           \
                                (perf)[i].determinism == CUDNN_DETERMINISTIC};

static int no_algo(const CudnnConv *cv, const char *pass, size_t limit, MamlError *err) {
    return maml_fail(err, "cudnn: %s: no %s algorithm fits a %zu-byte workspace", cv->label, pass,
                     limit);
}

static int choose_fwd(CudnnConv *cv, size_t limit, MamlError *err) {
    Cudnn *c = cv->c;
    cudnnConvolutionFwdAlgoPerf_t perf[MAX_ALGOS];
    Candidate cand[MAX_ALGOS];
    int n = 0;
    if (CUDNN_CHECK(c, err, cv->label, cudnnGetConvolutionForwardAlgorithm_v7, c->handle, cv->x,
                    cv->w, cv->conv, cv->y, MAX_ALGOS, &n, perf))
        return -1;
    TO_CANDIDATES(perf, n, cand);
    int algo = pick(cand, n, limit);
    if (algo < 0) return no_algo(cv, "forward", limit, err);
    cv->fwd = (cudnnConvolutionFwdAlgo_t)algo;
    return CUDNN_CHECK(c, err, cv->label, cudnnGetConvolutionForwardWorkspaceSize, c->handle, cv->x,
                       cv->w, cv->conv, cv->y, cv->fwd, &cv->ws_fwd);
}

static int choose_bwd_data(CudnnConv *cv, size_t limit, MamlError *err) {
    Cudnn *c = cv->c;
    cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_ALGOS];
    Candidate cand[MAX_ALGOS];
    int n = 0;
    if (CUDNN_CHECK(c, err, cv->label, cudnnGetConvolutionBackwardDataAlgorithm_v7, c->handle,
                    cv->w, cv->y, cv->conv, cv->x, MAX_ALGOS, &n, perf))
        return -1;
    TO_CANDIDATES(perf, n, cand);
    int algo = pick(cand, n, limit);
    if (algo < 0) return no_algo(cv, "backward-data", limit, err);
    cv->bwd_data = (cudnnConvolutionBwdDataAlgo_t)algo;
    return CUDNN_CHECK(c, err, cv->label, cudnnGetConvolutionBackwardDataWorkspaceSize, c->handle,
                       cv->w, cv->y, cv->conv, cv->x, cv->bwd_data, &cv->ws_bwd_data);
}

static int choose_bwd_filter(CudnnConv *cv, size_t limit, MamlError *err) {
    Cudnn *c = cv->c;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_ALGOS];
    Candidate cand[MAX_ALGOS];
    int n = 0;
    if (CUDNN_CHECK(c, err, cv->label, cudnnGetConvolutionBackwardFilterAlgorithm_v7, c->handle,
                    cv->x, cv->y, cv->conv, cv->w, MAX_ALGOS, &n, perf))
        return -1;
    TO_CANDIDATES(perf, n, cand);
    int algo = pick(cand, n, limit);
    if (algo < 0) return no_algo(cv, "backward-filter", limit, err);
    cv->bwd_filter = (cudnnConvolutionBwdFilterAlgo_t)algo;
    return CUDNN_CHECK(c, err, cv->label, cudnnGetConvolutionBackwardFilterWorkspaceSize, c->handle,
                       cv->x, cv->y, cv->conv, cv->w, cv->bwd_filter, &cv->ws_bwd_filter);
}

int cudnn_conv_choose(CudnnConv *cv, size_t limit, MamlError *err) {
    if (!cv->c->handle)
        return maml_fail(err, "cudnn: %s: choosing algorithms needs cudnn_attach", cv->label);
    if (choose_fwd(cv, limit, err) || choose_bwd_data(cv, limit, err) ||
        choose_bwd_filter(cv, limit, err))
        return -1;
    cv->chosen = true;
    return 0;
}

size_t cudnn_conv_workspace(const CudnnConv *cv) {
    size_t m = cv->ws_fwd > cv->ws_bwd_data ? cv->ws_fwd : cv->ws_bwd_data;
    return m > cv->ws_bwd_filter ? m : cv->ws_bwd_filter;
}

/* ---- running ------------------------------------------------------------------------------- */

static void *dev(unsigned long long p) {
    return (void *)(uintptr_t)p;
}

static int ready(const CudnnConv *cv, MamlError *err) {
    if (cv->chosen) return 0;
    return maml_fail(err, "cudnn: %s: run before cudnn_conv_choose", cv->label);
}

int cudnn_conv_forward(CudnnConv *cv, unsigned long long x, unsigned long long w,
                       unsigned long long y, unsigned long long ws, MamlError *err) {
    const float one = 1.0f, zero = 0.0f;
    Cudnn *c = cv->c;
    return ready(cv, err) ||
           CUDNN_CHECK(c, err, cv->label, cudnnConvolutionForward, c->handle, &one, cv->x, dev(x),
                       cv->w, dev(w), cv->conv, cv->fwd, dev(ws), cv->ws_fwd, &zero, cv->y, dev(y));
}

int cudnn_conv_backward_data(CudnnConv *cv, unsigned long long dy, unsigned long long w,
                             unsigned long long dx, unsigned long long ws, MamlError *err) {
    const float one = 1.0f, zero = 0.0f;
    Cudnn *c = cv->c;
    return ready(cv, err) ||
           CUDNN_CHECK(c, err, cv->label, cudnnConvolutionBackwardData, c->handle, &one, cv->w,
                       dev(w), cv->y, dev(dy), cv->conv, cv->bwd_data, dev(ws), cv->ws_bwd_data,
                       &zero, cv->x, dev(dx));
}

int cudnn_conv_backward_filter(CudnnConv *cv, unsigned long long x, unsigned long long dy,
                               unsigned long long dw, unsigned long long ws, MamlError *err) {
    const float one = 1.0f, zero = 0.0f;
    Cudnn *c = cv->c;
    return ready(cv, err) ||
           CUDNN_CHECK(c, err, cv->label, cudnnConvolutionBackwardFilter, c->handle, &one, cv->x,
                       dev(x), cv->y, dev(dy), cv->conv, cv->bwd_filter, dev(ws), cv->ws_bwd_filter,
                       &zero, cv->w, dev(dw));
}

#else /* built without the CUDA headers */

struct Cudnn {
    int unused;
};

int cudnn_open(Cudnn **out, MamlError *err) {
    *out = NULL;
    return maml_fail(err, "no cuDNN: mamlc was built without the CUDA headers "
                          "(add -isystem $CUDA_HOME/include to CFLAGS)");
}

void cudnn_close(Cudnn *c) {
    (void)c;
}

/* Unreachable without a Cudnn from cudnn_open; defined so that callers link. */
size_t cudnn_version(const Cudnn *c) {
    (void)c;
    return 0;
}

const char *cudnn_library(const Cudnn *c) {
    (void)c;
    return "";
}

static int no_cudnn(MamlError *err) {
    return maml_fail(err, "no cuDNN: mamlc was built without the CUDA headers");
}

int cudnn_attach(Cudnn *c, void *stream, MamlError *err) {
    (void)c, (void)stream;
    return no_cudnn(err);
}

int cudnn_conv_create(Cudnn *c, const ConvShape *s, const char *name, bool allow_tf32,
                      CudnnConv **out, MamlError *err) {
    (void)c, (void)s, (void)name, (void)allow_tf32;
    *out = NULL;
    return no_cudnn(err);
}

void cudnn_conv_destroy(CudnnConv *cv) {
    (void)cv;
}

int cudnn_conv_output_dims(const CudnnConv *cv, int dims[4], MamlError *err) {
    (void)cv, (void)dims;
    return no_cudnn(err);
}

int cudnn_conv_choose(CudnnConv *cv, size_t workspace_limit, MamlError *err) {
    (void)cv, (void)workspace_limit;
    return no_cudnn(err);
}

size_t cudnn_conv_workspace(const CudnnConv *cv) {
    (void)cv;
    return 0;
}

int cudnn_conv_forward(CudnnConv *cv, unsigned long long x, unsigned long long w,
                       unsigned long long y, unsigned long long ws, MamlError *err) {
    (void)cv, (void)x, (void)w, (void)y, (void)ws;
    return no_cudnn(err);
}

int cudnn_conv_backward_data(CudnnConv *cv, unsigned long long dy, unsigned long long w,
                             unsigned long long dx, unsigned long long ws, MamlError *err) {
    (void)cv, (void)dy, (void)w, (void)dx, (void)ws;
    return no_cudnn(err);
}

int cudnn_conv_backward_filter(CudnnConv *cv, unsigned long long x, unsigned long long dy,
                               unsigned long long dw, unsigned long long ws, MamlError *err) {
    (void)cv, (void)x, (void)dy, (void)dw, (void)ws;
    return no_cudnn(err);
}

#endif
