/* Host tensors and named tensor sets: what safetensors files hold and what backends consume and
 * produce. Data is stored densely in row-major (C) order, little-endian. */
#ifndef MAMLC_TENSOR_H
#define MAMLC_TENSOR_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "graph.h"

typedef enum { TENSOR_F32, TENSOR_F64, TENSOR_I32, TENSOR_I64 } TensorDType;

typedef struct {
    char *name;
    TensorDType dtype;
    Shape shape;
    void *data; /* shape_numel(shape) elements of dtype */
} Tensor;

typedef struct {
    char *key, *value;
} MetaEntry;

/* An ordered set of uniquely named tensors plus string metadata (safetensors' __metadata__). */
typedef struct {
    Tensor *items;
    int n, cap;
    MetaEntry *meta;
    int n_meta, cap_meta;
} TensorSet;

size_t tensor_dtype_size(TensorDType dtype);
const char *tensor_dtype_name(TensorDType dtype); /* "F32", "F64", "I32", "I64" */

void tensorset_init(TensorSet *set);
void tensorset_free(TensorSet *set);

/* Adds a tensor, copying data (or zero-filling when data is NULL); replaces an existing tensor of
 * the same name. Returns the tensor, or NULL with err filled. */
Tensor *tensorset_add(TensorSet *set, const char *name, TensorDType dtype, Shape shape,
                      const void *data, MamlError *err);

/* The tensor with this name, or NULL. */
Tensor *tensorset_find(const TensorSet *set, const char *name);

/* Sets a metadata entry (replacing an existing key). */
int tensorset_set_meta(TensorSet *set, const char *key, const char *value, MamlError *err);

/* The metadata value for key, or NULL. */
const char *tensorset_get_meta(const TensorSet *set, const char *key);

/* Element i of a tensor converted to double (any dtype). */
double tensor_get(const Tensor *t, int64_t i);

/* Stores v into element i, converting to the tensor's dtype. */
void tensor_set(Tensor *t, int64_t i, double v);

/* Copies t's values into dst as reals, float64 (f64) or float32: one memcpy when the dtypes agree,
 * else converted value by value. */
void tensor_copy_reals(const Tensor *t, void *dst, bool f64);

#endif
