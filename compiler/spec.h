/* The model spec: what the YAML front end produces and every later stage reads.
 *
 * Blocks are already expanded and references resolved: `layers` is the flat list of layers in
 * execution order, each with its full PyTorch module path as name (e.g. "conv1.conv2d"). */
#ifndef MAMLC_SPEC_H
#define MAMLC_SPEC_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

#define SPEC_NAME_MAX 128
#define SPEC_MAX_RANK 4

typedef enum {
    LAYER_CONV2D,
    LAYER_BATCH_NORM,
    LAYER_RELU,
    LAYER_MAX_POOL2D,
    LAYER_GLOBAL_AVG_POOL,
    LAYER_FLATTEN,
    LAYER_LINEAR,
} LayerKind;

/* Shape of one example (no task or example dimension): [C, H, W] for images, [F] for vectors. */
typedef struct {
    int rank;
    int64_t dims[3];
} ExampleShape;

typedef struct {
    LayerKind kind;
    char name[SPEC_NAME_MAX]; /* module path; "" for layers without parameters */
    SourceLoc loc;            /* the layer's mapping in the YAML file */
    /* conv2d */
    int out_channels, kernel, stride, padding;
    /* linear */
    int out_features;
    int in_features; /* 0 when the YAML leaves it to inference */
    /* conv2d, linear */
    bool bias;
    /* batch_norm */
    bool scale, shift;
    double eps;
    /* max_pool2d: kernel and stride above (stride defaults to kernel) */
    /* filled by spec_infer_shapes */
    ExampleShape in_shape, out_shape;
    int64_t n_params;
} LayerSpec;

/* One learnable parameter; names follow PyTorch ("conv1.conv2d.weight"), layouts too. */
typedef struct {
    char name[SPEC_NAME_MAX + 8];
    int rank;
    int64_t dims[SPEC_MAX_RANK];
    int layer;      /* index into GraphSpec.layers */
    int64_t fan_in; /* for PyTorch's default initialisation */
    bool is_bias;   /* bias of conv2d/linear, or batch-norm shift */
    bool is_bn;     /* batch-norm scale or shift */
    bool adapt;     /* updated in the inner loop */
} ParamSpec;

typedef enum { LOSS_CROSS_ENTROPY, LOSS_MSE } LossKind;

/* How a task's per-example losses become its loss: mean, sum, or sum divided by k_shot
 * (the MAML reference code's convention). */
typedef enum { REDUCE_MEAN, REDUCE_SUM, REDUCE_SUM_OVER_K_SHOT } LossReduction;

typedef enum { OPT_ADAM, OPT_SGD } OptimizerKind;

typedef struct {
    int n_way, k_shot, q_query, meta_batch;
    struct {
        int steps;
        double lr;
        bool lr_learnable; /* Meta-SGD / MAML++: one learnable lr per layer and step */
        bool first_order;
        char **adapt; /* glob patterns over parameter names; NULL/0 = all */
        int n_adapt;
        LossReduction reduction;
    } inner;
    struct {
        OptimizerKind optimizer;
        double lr, beta1, beta2, eps;
    } outer;
    struct {
        int inner_steps;
        double lr;
        int tasks;
    } eval;
} MamlSettings;

typedef enum { DATASET_OMNIGLOT, DATASET_SINUSOID } DatasetKind;
typedef enum { SPLIT_BACKGROUND_EVALUATION, SPLIT_SHUFFLED_CHARACTERS } SplitKind;
typedef enum { RESIZE_NEAREST, RESIZE_LANCZOS } ResizeFilter;

typedef struct {
    DatasetKind dataset;
    uint64_t seed;
    /* omniglot */
    SplitKind split;
    int train_characters; /* SPLIT_SHUFFLED_CHARACTERS: characters for training */
    int rotations[4];     /* degrees, each a distinct class */
    int n_rotations;
    int image_size;
    ResizeFilter resize;
    bool invert; /* false: background 1.0, ink 0.0 (the seed's polarity) */
    /* sinusoid */
    double amplitude[2], phase[2], x_range[2];
} DataSettings;

typedef struct {
    char *path;
    ExampleShape input;
    LayerSpec *layers;
    int n_layers;
    LossKind loss;
    MamlSettings maml;
    DataSettings data;
    /* filled by spec_infer_shapes */
    ParamSpec *params;
    int n_params;
    int64_t total_params;
} GraphSpec;

/* Loads a graph file, applies `--set KEY=VALUE` overrides (dotted paths into the YAML
 * document, e.g. "maml.inner.lr=0.4"), expands blocks, resolves references and validates every
 * setting, then runs spec_infer_shapes. Errors carry file:line:column. */
int spec_load(const char *path, const char *const *overrides, int n_overrides, GraphSpec *out,
              MamlError *err);

/* Computes each layer's input/output shape and the parameter list; errors name the layer and
 * its YAML location. */
int spec_infer_shapes(GraphSpec *spec, MamlError *err);

/* Releases everything spec_load allocated; safe on a zeroed or partially loaded spec. */
void spec_free(GraphSpec *spec);

/* Name of a layer kind as written in YAML ("conv2d", "batch_norm", ...). */
const char *layer_kind_name(LayerKind kind);

/* Number of examples per task in the support (k_shot*n_way) and query (q_query*n_way) sets. */
int spec_support_size(const GraphSpec *spec);
int spec_query_size(const GraphSpec *spec);

#endif
