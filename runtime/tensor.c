/* Host tensors and named tensor sets (see tensor.h). */
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t tensor_dtype_size(TensorDType dtype) {
    switch (dtype) {
    case TENSOR_F32:
        return 4;
    case TENSOR_F64:
        return 8;
    case TENSOR_I32:
        return 4;
    case TENSOR_I64:
        return 8;
    }
    return 0;
}

const char *tensor_dtype_name(TensorDType dtype) {
    switch (dtype) {
    case TENSOR_F32:
        return "F32";
    case TENSOR_F64:
        return "F64";
    case TENSOR_I32:
        return "I32";
    case TENSOR_I64:
        return "I64";
    }
    return "?";
}

void tensorset_init(TensorSet *set) {
    memset(set, 0, sizeof *set);
}

void tensorset_free(TensorSet *set) {
    for (int i = 0; i < set->n; i++) {
        free(set->items[i].name);
        free(set->items[i].data);
    }
    for (int i = 0; i < set->n_meta; i++) {
        free(set->meta[i].key);
        free(set->meta[i].value);
    }
    free(set->items);
    free(set->meta);
    tensorset_init(set);
}

/* Byte size of a tensor of this shape and dtype, or -1 when the shape is invalid or the size
 * does not fit in memory. Dimensions of 0 are allowed (empty tensors, as safetensors allows). */
static int64_t tensor_bytes(TensorDType dtype, Shape shape, const char *name, MamlError *err) {
    char buf[256];
    if (shape.rank < 0 || shape.rank > MAX_RANK)
        return maml_fail(err, "tensor '%s': rank %d outside 0..%d", name, shape.rank, MAX_RANK);
    int64_t bytes = (int64_t)tensor_dtype_size(dtype);
    for (int i = 0; i < shape.rank; i++) {
        int64_t d = shape.dims[i];
        if (d < 0)
            return maml_fail(err, "tensor '%s': negative dimension in shape %s", name,
                             shape_str(shape, buf, sizeof buf));
        if (d && bytes > INT64_MAX / d)
            return maml_fail(err, "tensor '%s': shape %s is too large", name,
                             shape_str(shape, buf, sizeof buf));
        bytes *= d;
    }
    if ((uint64_t)bytes > SIZE_MAX)
        return maml_fail(err, "tensor '%s': shape %s is too large", name,
                         shape_str(shape, buf, sizeof buf));
    return bytes;
}

static int find_index(const TensorSet *set, const char *name) {
    for (int i = 0; i < set->n; i++)
        if (strcmp(set->items[i].name, name) == 0) return i;
    return -1;
}

/* Makes room for one more tensor; the new slot is not yet counted in set->n. */
static int reserve_item(TensorSet *set, MamlError *err) {
    if (set->n < set->cap) return 0;
    if (set->cap > INT32_MAX / 2) return maml_fail(err, "too many tensors in one set");
    int cap = set->cap ? 2 * set->cap : 16;
    Tensor *items = maml_realloc(set->items, (size_t)cap, sizeof *items, err);
    if (!items) return -1;
    set->items = items;
    set->cap = cap;
    return 0;
}

Tensor *tensorset_add(TensorSet *set, const char *name, TensorDType dtype, Shape shape,
                      const void *data, MamlError *err) {
    if (!name || !*name) {
        maml_fail(err, "tensor names must not be empty");
        return NULL;
    }
    int64_t bytes = tensor_bytes(dtype, shape, name, err);
    if (bytes < 0) return NULL;
    /* Allocate everything before touching the set, so a failure leaves it as it was and data
     * may point into the tensor being replaced. */
    void *copy = bytes ? maml_alloc((size_t)bytes, err) : maml_calloc(1, 1, err);
    if (!copy) return NULL;
    if (data && bytes)
        memcpy(copy, data, (size_t)bytes);
    else if (bytes)
        memset(copy, 0, (size_t)bytes);
    int i = find_index(set, name);
    if (i < 0) {
        char *name_copy = maml_strdup(name, err);
        if (!name_copy || reserve_item(set, err) < 0) {
            free(name_copy);
            free(copy);
            return NULL;
        }
        i = set->n++;
        set->items[i].name = name_copy;
    } else {
        free(set->items[i].data);
    }
    Tensor *t = &set->items[i];
    t->dtype = dtype;
    t->shape = shape;
    for (int d = shape.rank; d < MAX_RANK; d++) t->shape.dims[d] = 0;
    t->data = copy;
    return t;
}

Tensor *tensorset_find(const TensorSet *set, const char *name) {
    int i = find_index(set, name);
    return i < 0 ? NULL : &set->items[i];
}

int tensorset_set_meta(TensorSet *set, const char *key, const char *value, MamlError *err) {
    char *v = maml_strdup(value, err);
    if (!v) return -1;
    for (int i = 0; i < set->n_meta; i++) {
        if (strcmp(set->meta[i].key, key) == 0) {
            free(set->meta[i].value);
            set->meta[i].value = v;
            return 0;
        }
    }
    char *k = maml_strdup(key, err);
    if (!k) {
        free(v);
        return -1;
    }
    if (set->n_meta == set->cap_meta) {
        int cap = set->cap_meta ? 2 * set->cap_meta : 8;
        MetaEntry *meta = maml_realloc(set->meta, (size_t)cap, sizeof *meta, err);
        if (!meta) {
            free(k);
            free(v);
            return -1;
        }
        set->meta = meta;
        set->cap_meta = cap;
    }
    set->meta[set->n_meta++] = (MetaEntry){k, v};
    return 0;
}

const char *tensorset_get_meta(const TensorSet *set, const char *key) {
    for (int i = 0; i < set->n_meta; i++)
        if (strcmp(set->meta[i].key, key) == 0) return set->meta[i].value;
    return NULL;
}

double tensor_get(const Tensor *t, int64_t i) {
    switch (t->dtype) {
    case TENSOR_F32:
        return ((const float *)t->data)[i];
    case TENSOR_F64:
        return ((const double *)t->data)[i];
    case TENSOR_I32:
        return ((const int32_t *)t->data)[i];
    case TENSOR_I64:
        return (double)((const int64_t *)t->data)[i];
    }
    return 0.0;
}

/* C's conversion truncates toward zero, but out-of-range values and NaN are undefined
 * behaviour; saturate them instead (NaN becomes 0). */
static int64_t to_int(double v, int64_t lo, int64_t hi) {
    if (isnan(v)) return 0;
    if (v <= (double)lo) return lo;
    if (v >= (double)hi) return hi; /* (double)INT64_MAX rounds up to 2^63, so >= is exact */
    return (int64_t)v;
}

void tensor_set(Tensor *t, int64_t i, double v) {
    switch (t->dtype) {
    case TENSOR_F32:
        ((float *)t->data)[i] = (float)v;
        break;
    case TENSOR_F64:
        ((double *)t->data)[i] = v;
        break;
    case TENSOR_I32:
        ((int32_t *)t->data)[i] = (int32_t)to_int(v, INT32_MIN, INT32_MAX);
        break;
    case TENSOR_I64:
        ((int64_t *)t->data)[i] = to_int(v, INT64_MIN, INT64_MAX);
        break;
    }
}

void tensor_copy_reals(const Tensor *t, void *dst, bool f64) {
    int64_t count = shape_numel(t->shape);
    if (f64 && t->dtype == TENSOR_F64)
        memcpy(dst, t->data, (size_t)count * 8);
    else if (!f64 && t->dtype == TENSOR_F32)
        memcpy(dst, t->data, (size_t)count * 4);
    else if (f64)
        for (int64_t i = 0; i < count; i++) ((double *)dst)[i] = tensor_get(t, i);
    else
        for (int64_t i = 0; i < count; i++) ((float *)dst)[i] = (float)tensor_get(t, i);
}
