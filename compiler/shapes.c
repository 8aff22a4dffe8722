/* Shape inference over the model spec: per-example shapes through the layer list, and the
 * parameter list with PyTorch's names and layouts. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"

/* Largest tensor (elements per example, or per parameter) we accept; kernels index with int. */
#define SPEC_MAX_ELEMS ((int64_t)1 << 31)

const char *layer_kind_name(LayerKind kind) {
    switch (kind) {
    case LAYER_CONV2D:
        return "conv2d";
    case LAYER_BATCH_NORM:
        return "batch_norm";
    case LAYER_RELU:
        return "relu";
    case LAYER_MAX_POOL2D:
        return "max_pool2d";
    case LAYER_GLOBAL_AVG_POOL:
        return "global_avg_pool";
    case LAYER_FLATTEN:
        return "flatten";
    case LAYER_LINEAR:
        return "linear";
    }
    return "?";
}

int spec_support_size(const GraphSpec *spec) {
    return spec->maml.k_shot * spec->maml.n_way;
}

int spec_query_size(const GraphSpec *spec) {
    return spec->maml.q_query * spec->maml.n_way;
}

static const char *shape_text(const ExampleShape *s, char *buf, size_t size) {
    int n = snprintf(buf, size, "[");
    for (int i = 0; i < s->rank && n > 0 && (size_t)n < size; i++)
        n += snprintf(buf + n, size - (size_t)n, "%s%lld", i ? ", " : "", (long long)s->dims[i]);
    if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
    return buf;
}

/* "linear 'logits'" or, for layers without a name, just the kind. */
static const char *layer_label(const LayerSpec *l, char *buf, size_t size) {
    if (l->name[0])
        snprintf(buf, size, "%s '%s'", layer_kind_name(l->kind), l->name);
    else
        snprintf(buf, size, "%s", layer_kind_name(l->kind));
    return buf;
}

static int64_t numel(const ExampleShape *s) {
    int64_t n = 1;
    for (int i = 0; i < s->rank; i++) n *= s->dims[i];
    return n;
}

/* Fails unless x is an image [C, H, W]. */
static int need_image(const LayerSpec *l, const ExampleShape *x, MamlError *err) {
    char label[SPEC_NAME_MAX + 32], shape[96];
    if (x->rank == 3) return 0;
    return maml_fail_at(err, l->loc, "%s needs an image input [C, H, W], got %s",
                        layer_label(l, label, sizeof label), shape_text(x, shape, sizeof shape));
}

/* Output size of a window of size k sliding with stride over n (padded by pad on each side). */
static int window_out(const LayerSpec *l, const ExampleShape *x, int k, int stride, int pad,
                      int64_t *out, MamlError *err) {
    char label[SPEC_NAME_MAX + 32];
    for (int d = 1; d <= 2; d++) {
        if (x->dims[d] + 2 * (int64_t)pad >= k) continue;
        if (pad)
            return maml_fail_at(
                err, l->loc, "%s: kernel %d is larger than its padded input %lldx%lld (padding %d)",
                layer_label(l, label, sizeof label), k, (long long)(x->dims[1] + 2 * pad),
                (long long)(x->dims[2] + 2 * pad), pad);
        return maml_fail_at(err, l->loc, "%s: kernel %d is larger than its input %lldx%lld",
                            layer_label(l, label, sizeof label), k, (long long)x->dims[1],
                            (long long)x->dims[2]);
    }
    if (k <= 0 || stride <= 0 || pad < 0)
        return maml_fail_at(err, l->loc,
                            "%s: kernel and stride must be positive, padding not negative",
                            layer_label(l, label, sizeof label));
    for (int d = 1; d <= 2; d++) out[d - 1] = (x->dims[d] + 2 * pad - k) / stride + 1;
    return 0;
}

static int infer_conv2d(const LayerSpec *l, const ExampleShape *x, ExampleShape *y,
                        MamlError *err) {
    int64_t hw[2];
    if (need_image(l, x, err) || window_out(l, x, l->kernel, l->stride, l->padding, hw, err))
        return -1;
    if (l->out_channels <= 0)
        return maml_fail_at(err, l->loc, "conv2d '%s': out_channels must be positive", l->name);
    *y = (ExampleShape){3, {l->out_channels, hw[0], hw[1]}};
    return 0;
}

static int infer_pool(const LayerSpec *l, const ExampleShape *x, ExampleShape *y, MamlError *err) {
    int64_t hw[2];
    if (need_image(l, x, err)) return -1;
    if (l->kind == LAYER_GLOBAL_AVG_POOL) {
        *y = (ExampleShape){1, {x->dims[0]}};
        return 0;
    }
    if (window_out(l, x, l->kernel, l->stride, 0, hw, err)) return -1;
    *y = (ExampleShape){3, {x->dims[0], hw[0], hw[1]}};
    return 0;
}

static int infer_linear(const LayerSpec *l, const ExampleShape *x, ExampleShape *y,
                        MamlError *err) {
    char shape[96];
    if (x->rank != 1)
        return maml_fail_at(
            err, l->loc,
            "linear '%s' needs a flat input, got %s; put flatten or global_avg_pool before it",
            l->name, shape_text(x, shape, sizeof shape));
    if (l->in_features && l->in_features != x->dims[0])
        return maml_fail_at(err, l->loc,
                            "linear '%s': in_features is %d but its input has %lld features",
                            l->name, l->in_features, (long long)x->dims[0]);
    if (l->out_features <= 0)
        return maml_fail_at(err, l->loc, "linear '%s': out_features must be positive", l->name);
    *y = (ExampleShape){1, {l->out_features}};
    return 0;
}

static int infer_layer(const LayerSpec *l, const ExampleShape *x, ExampleShape *y, MamlError *err) {
    switch (l->kind) {
    case LAYER_CONV2D:
        return infer_conv2d(l, x, y, err);
    case LAYER_MAX_POOL2D:
    case LAYER_GLOBAL_AVG_POOL:
        return infer_pool(l, x, y, err);
    case LAYER_LINEAR:
        return infer_linear(l, x, y, err);
    case LAYER_FLATTEN:
        *y = (ExampleShape){1, {numel(x)}};
        return 0;
    case LAYER_BATCH_NORM:
        if (l->eps <= 0)
            return maml_fail_at(err, l->loc, "batch_norm '%s': eps must be positive", l->name);
        *y = *x;
        return 0;
    case LAYER_RELU:
        *y = *x;
        return 0;
    }
    return maml_fail_at(err, l->loc, "unknown layer kind %d", (int)l->kind);
}

static int add_param(GraphSpec *spec, int layer, const char *suffix, int rank, const int64_t *dims,
                     int64_t fan_in, bool is_bias, MamlError *err) {
    const LayerSpec *l = &spec->layers[layer];
    ParamSpec *p = &spec->params[spec->n_params];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s.%s", l->name, suffix);
    for (int i = 0; i < spec->n_params; i++)
        if (strcmp(spec->params[i].name, p->name) == 0)
            return maml_fail_at(
                err, l->loc,
                "duplicate parameter name '%s' (first defined by the layer at line %d)", p->name,
                spec->layers[spec->params[i].layer].loc.line);
    p->rank = rank;
    int64_t n = 1;
    for (int i = 0; i < rank; i++) p->dims[i] = dims[i], n *= dims[i];
    p->layer = layer;
    p->fan_in = fan_in;
    p->is_bias = is_bias;
    p->is_bn = l->kind == LAYER_BATCH_NORM;
    p->adapt = spec->maml.inner.n_adapt == 0;
    for (int i = 0; i < spec->maml.inner.n_adapt && !p->adapt; i++)
        p->adapt = fnmatch(spec->maml.inner.adapt[i], p->name, 0) == 0;
    spec->n_params++;
    spec->total_params += n;
    spec->layers[layer].n_params += n;
    return 0;
}

/* The layer's parameters in PyTorch's order and layouts. */
static int layer_params(GraphSpec *spec, int i, MamlError *err) {
    const LayerSpec *l = &spec->layers[i];
    int64_t in = l->in_shape.dims[0], k = l->kernel;
    int rc = 0;
    if (l->kind == LAYER_CONV2D) {
        int64_t fan_in = in * k * k;
        rc = add_param(spec, i, "weight", 4, (int64_t[]){l->out_channels, in, k, k}, fan_in, false,
                       err);
        if (!rc && l->bias)
            rc = add_param(spec, i, "bias", 1, (int64_t[]){l->out_channels}, fan_in, true, err);
    } else if (l->kind == LAYER_LINEAR) {
        rc = add_param(spec, i, "weight", 2, (int64_t[]){l->out_features, in}, in, false, err);
        if (!rc && l->bias)
            rc = add_param(spec, i, "bias", 1, (int64_t[]){l->out_features}, in, true, err);
    } else if (l->kind == LAYER_BATCH_NORM) {
        /* fan_in is unused by batch norm's init (ones and zeros); the channel count keeps it sane
         */
        if (l->scale) rc = add_param(spec, i, "weight", 1, (int64_t[]){in}, in, false, err);
        if (!rc && l->shift) rc = add_param(spec, i, "bias", 1, (int64_t[]){in}, in, true, err);
    }
    return rc;
}

static int check_size(const LayerSpec *l, const ExampleShape *y, MamlError *err) {
    char label[SPEC_NAME_MAX + 32], shape[96];
    int64_t n = 1;
    for (int i = 0; i < y->rank; i++) {
        if (y->dims[i] <= 0 || n > SPEC_MAX_ELEMS / y->dims[i])
            return maml_fail_at(err, l->loc,
                                "%s: output %s is empty or has more than %lld elements",
                                layer_label(l, label, sizeof label),
                                shape_text(y, shape, sizeof shape), (long long)SPEC_MAX_ELEMS);
        n *= y->dims[i];
    }
    /* the largest weight, conv's out * in * k * k, must fit too */
    int64_t k = l->kind == LAYER_CONV2D ? (int64_t)l->kernel * l->kernel : 1;
    int64_t w = l->kind == LAYER_CONV2D   ? l->out_channels
                : l->kind == LAYER_LINEAR ? l->out_features
                                          : 0;
    if (w && (double)w * (double)l->in_shape.dims[0] * (double)k > (double)SPEC_MAX_ELEMS)
        return maml_fail_at(err, l->loc, "%s: weight has more than %lld elements",
                            layer_label(l, label, sizeof label), (long long)SPEC_MAX_ELEMS);
    return 0;
}

/* The model's output must be what the loss compares: n_way logits, or one regression value. */
static int check_output(const GraphSpec *spec, const ExampleShape *y, MamlError *err) {
    char shape[96];
    /* specs built by hand (tests of later stages) may leave the task settings unset */
    if (spec->maml.n_way <= 0 || spec->n_layers == 0) return 0;
    int64_t want = spec->loss == LOSS_CROSS_ENTROPY ? spec->maml.n_way : 1;
    if (y->rank == 1 && y->dims[0] == want) return 0;
    const LayerSpec *last = &spec->layers[spec->n_layers - 1];
    if (spec->loss == LOSS_CROSS_ENTROPY)
        return maml_fail_at(
            err, last->loc,
            "the model's output is %s but cross_entropy over n_way = %d classes needs [%lld]",
            shape_text(y, shape, sizeof shape), spec->maml.n_way, (long long)want);
    return maml_fail_at(err, last->loc, "the model's output is %s but mse regression needs [1]",
                        shape_text(y, shape, sizeof shape));
}

static int check_input(const GraphSpec *spec, MamlError *err) {
    const ExampleShape *x = &spec->input;
    SourceLoc loc = {spec->path, 0, 0};
    if (x->rank != 1 && x->rank != 3)
        return maml_fail_at(err, loc, "input must be [C, H, W] or [features]");
    for (int i = 0; i < x->rank; i++)
        if (x->dims[i] <= 0) return maml_fail_at(err, loc, "input dimensions must be positive");
    return 0;
}

int spec_infer_shapes(GraphSpec *spec, MamlError *err) {
    free(spec->params);
    spec->n_params = 0;
    spec->total_params = 0;
    spec->params = maml_calloc((size_t)spec->n_layers * 2, sizeof *spec->params, err);
    if (!spec->params || check_input(spec, err)) return -1;
    ExampleShape x = spec->input;
    for (int i = 0; i < spec->n_layers; i++) {
        LayerSpec *l = &spec->layers[i];
        l->in_shape = x;
        l->n_params = 0;
        if (infer_layer(l, &x, &l->out_shape, err) || check_size(l, &l->out_shape, err) ||
            layer_params(spec, i, err))
            return -1;
        x = l->out_shape;
    }
    return check_output(spec, &x, err);
}
