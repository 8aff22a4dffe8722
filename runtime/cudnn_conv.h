/* cuDNN, loaded at run time, as an optional lowering of the convolution family (forward,
 * backward data, backward filter) with all tasks of the meta-batch in one call: the tasks are
 * convolution groups.
 *
 * Layout. cuDNN sees the input as N images of T*C channels, NCHW, packed; that is memory order
 * [N, T, C, H, W], and likewise dy/y as [N, T, O, HO, WO]. The graph's activations are
 * [T, N, C, H, W]: the two agree only when N == 1 (or T == 1), because channel t*C + c cannot be
 * one stride of a [T, N, C, H, W] tensor. So the caller either keeps conv activations in
 * [N, T, ...] order or transposes around the call. The per-task weights [T, O, C, KH, KW] are
 * cuDNN's grouped filter [T*O, C, KH, KW] as they are.
 *
 * Descriptor setup needs no device (so the tests check it on machines without a GPU); choosing
 * algorithms and running needs cudnn_attach, that is, a device with a current context.
 *
 * Library search (CudaLibSpec in cuda_driver.h): $MAMLC_CUDNN; libcudnn.so.9 in the toolkit
 * directories; the dynamic loader; Python site-packages nvidia/cudnn/lib (PyTorch's wheels). */
#ifndef MAMLC_CUDNN_CONV_H
#define MAMLC_CUDNN_CONV_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "graph.h"

/* One grouped convolution: T tasks, N images per task, C -> O channels, square stride/padding
 * (PyTorch's conv2d semantics: cross-correlation, no dilation). */
typedef struct {
    int tasks, batch;
    int in_ch, height, width;
    int out_ch, kh, kw;
    int stride, padding;
} ConvShape;

/* The convolution behind a CONV2D, CONV2D_GRAD_INPUT or CONV2D_GRAD_WEIGHT node, taken from the
 * shapes of its operands and result. */
int conv_shape_of_node(const Graph *g, int node, ConvShape *s, MamlError *err);

/* "T=32 N=5 64x14x14 -> 64 k3x3 s1 p1", for messages. */
void conv_shape_str(const ConvShape *s, char *buf, size_t size);

typedef struct Cudnn Cudnn;

/* Loads cuDNN and its entry points (needs no device). */
int cudnn_open(Cudnn **out, MamlError *err);
/* Destroys the handle, if attached (the library stays loaded); NULL is allowed. */
void cudnn_close(Cudnn *c);

/* cudnnGetVersion(), e.g. 91900 for 9.19.0, and the library's path. */
size_t cudnn_version(const Cudnn *c);
const char *cudnn_library(const Cudnn *c);

/* Creates the cuDNN handle on the current context and makes it issue work on stream (a
 * CUstream; NULL for the default stream). Needs a device: without one it fails naming
 * cudnnCreate. */
int cudnn_attach(Cudnn *c, void *stream, MamlError *err);

/* Descriptors and chosen algorithms for one ConvShape. */
typedef struct CudnnConv CudnnConv;

/* Creates the descriptors for s (float32). name labels errors (e.g. "conv2.conv2d"). Unless
 * allow_tf32, the math type is CUDNN_FMA_MATH, which keeps TF32 tensor cores out: the cuda
 * backend's float32 error bound assumes full-precision products. Fails when cuDNN's output
 * size differs from ours. Needs no device. */
int cudnn_conv_create(Cudnn *c, const ConvShape *s, const char *name, bool allow_tf32,
                      CudnnConv **out, MamlError *err);
void cudnn_conv_destroy(CudnnConv *cv);

/* cuDNN's forward output dims, [N, T*O, HO, WO]. */
int cudnn_conv_output_dims(const CudnnConv *cv, int dims[4], MamlError *err);

/* Picks forward, backward-data and backward-filter algorithms from cuDNN's heuristics (the
 * fastest deterministic one that needs at most workspace_limit bytes, else the fastest that
 * fits) and records their workspace needs. Needs cudnn_attach. */
int cudnn_conv_choose(CudnnConv *cv, size_t workspace_limit, MamlError *err);

/* The largest workspace the three chosen algorithms need, in bytes. */
size_t cudnn_conv_workspace(const CudnnConv *cv);

/* The three convolutions, on device pointers (CUdeviceptr values), y/dx/dw overwritten; ws is a
 * workspace of at least cudnn_conv_workspace bytes. Need cudnn_conv_choose first. */
int cudnn_conv_forward(CudnnConv *cv, unsigned long long x, unsigned long long w,
                       unsigned long long y, unsigned long long ws, MamlError *err);
int cudnn_conv_backward_data(CudnnConv *cv, unsigned long long dy, unsigned long long w,
                             unsigned long long dx, unsigned long long ws, MamlError *err);
int cudnn_conv_backward_filter(CudnnConv *cv, unsigned long long x, unsigned long long dy,
                               unsigned long long dw, unsigned long long ws, MamlError *err);

#endif
