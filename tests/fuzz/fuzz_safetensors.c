/* libFuzzer target: the safetensors reader. The input is a whole file. An accepted file must
 * round-trip: every tensor's bytes are readable (ASan checks the sizes), and writing the set and
 * reading it back gives the same names, dtypes, shapes, bytes and metadata. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "safetensors.h"

static size_t nbytes(const Tensor *t) {
    return (size_t)shape_numel(t->shape) * tensor_dtype_size(t->dtype);
}

static void check_same(const TensorSet *a, const TensorSet *b) {
    if (a->n != b->n || a->n_meta != b->n_meta) abort();
    for (int i = 0; i < a->n; i++) {
        const Tensor *x = &a->items[i], *y = tensorset_find(b, x->name);
        if (!y || x->dtype != y->dtype || x->shape.rank != y->shape.rank) abort();
        for (int d = 0; d < x->shape.rank; d++)
            if (x->shape.dims[d] != y->shape.dims[d]) abort();
        if (memcmp(x->data, y->data, nbytes(x)) != 0) abort();
    }
    for (int i = 0; i < a->n_meta; i++) {
        const char *v = tensorset_get_meta(b, a->meta[i].key);
        if (!v || strcmp(v, a->meta[i].value) != 0) abort();
    }
}

/* Reads every element, so a data buffer shorter than its shape says shows up under ASan. */
static double touch(const TensorSet *set) {
    double sum = 0;
    for (int i = 0; i < set->n; i++) {
        const Tensor *t = &set->items[i];
        int64_t n = shape_numel(t->shape);
        for (int64_t k = 0; k < n; k++) sum += tensor_get(t, k);
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *in = fuzz_path(0, "in.safetensors"), *out = fuzz_path(1, "out.safetensors");
    fuzz_write_file(in, data, size);
    TensorSet set, back;
    tensorset_init(&set);
    tensorset_init(&back);
    MamlError err = {{0}};
    int rc = safetensors_read(in, &set, &err);
    fuzz_report(rc, &err);
    if (rc == 0) {
        volatile double sink = touch(&set);
        (void)sink;
        /* the writer refuses some names the reader takes (""); only what it writes must match */
        if (safetensors_write(out, &set, &err) == 0) {
            if (safetensors_read(out, &back, &err) != 0) abort();
            check_same(&set, &back);
        }
    } else if (!err.message[0]) {
        abort();
    }
    tensorset_free(&set);
    tensorset_free(&back);
    return 0;
}
