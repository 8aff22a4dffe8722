/* Host tensors and the safetensors reader/writer: round trips, the PyTorch fixtures, every
 * malformed-file case (each asserting its message), and atomic writes under faults. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "safetensors.h"
#include "test_util.h"

/* ------------------------------------------------------------------ helpers --------------- */

/* Each test runs in its own process; it gets one scratch directory, made on first use and
 * removed with everything in it when the test ends. */
static char scratch[64];

static const char *tmp(void) {
    if (!*scratch) {
        const char *d = temp_dir(0);
        cr_assert(d, "cannot create a temporary directory");
        snprintf(scratch, sizeof scratch, "%s", d);
    }
    return scratch;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void cleanup(void) {
    if (*scratch) {
        chmod(scratch, 0700);
        nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

TestSuite(tensor, .fini = cleanup);
TestSuite(safetensors, .fini = cleanup);
TestSuite(malformed, .fini = cleanup);
TestSuite(write, .fini = cleanup);

static char *join(const char *dir, const char *name) {
    static char bufs[4][1024];
    static int slot;
    char *b = bufs[slot++ & 3];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* Reads a whole file into a malloc'd buffer. */
static char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    buf[len] = '\0';
    *n = (size_t)len;
    return buf;
}

/* A file made of an explicit 8-byte header length, header bytes and a zero-filled data block. */
static const char *craft_len(const char *dir, uint64_t header_len, const char *header,
                             size_t header_bytes, size_t data_bytes) {
    static int count;
    char name[64];
    snprintf(name, sizeof name, "crafted%d.safetensors", count++);
    const char *path = join(dir, name);
    size_t n = 8 + header_bytes + data_bytes;
    unsigned char *buf = calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, header, header_bytes);
    write_bytes(path, buf, n);
    free(buf);
    return path;
}

static const char *craft(const char *header, size_t data_bytes) {
    return craft_len(tmp(), strlen(header), header, strlen(header), data_bytes);
}

/* Reading path must fail with a message that starts with the path, contains want, is one line,
 * and leaves the set empty even though it held something before. */
static void expect_read_error(const char *path, const char *want) {
    TensorSet set;
    MamlError err = {{0}};
    tensorset_init(&set);
    float one = 1;
    cr_assert(tensorset_add(&set, "before", TENSOR_F32, shape_scalar(), &one, &err));
    cr_assert(tensorset_set_meta(&set, "k", "v", &err) == 0);
    int rc = safetensors_read(path, &set, &err);
    cr_assert_eq(rc, -1, "reading %s should fail with '%s'", path, want);
    cr_assert(strncmp(err.message, path, strlen(path)) == 0, "message lacks the path: %s",
              err.message);
    cr_assert(strstr(err.message, want), "expected '%s' in: %s", want, err.message);
    cr_assert_null(strchr(err.message, '\n'), "message is not one line: %s", err.message);
    cr_assert_eq(set.n, 0, "a failed read left tensors behind");
    cr_assert_eq(set.n_meta, 0, "a failed read left metadata behind");
    tensorset_free(&set);
}

static void expect_header_error(const char *header, size_t data_bytes, const char *want) {
    expect_read_error(craft(header, data_bytes), want);
}

/* Reads a crafted header that must be accepted. */
static void read_ok(const char *header, size_t data_bytes, TensorSet *set) {
    MamlError err = {{0}};
    tensorset_init(set);
    cr_assert_eq(safetensors_read(craft(header, data_bytes), set, &err), 0, "%s", err.message);
}

static int count_dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* A small set with every dtype, scalars, an empty tensor and metadata. */
static void make_sample(TensorSet *set) {
    MamlError err = {{0}};
    float f32[6] = {1.5f, -2.25f, 3e-8f, 1e30f, -0.0f, 7};
    double f64[4] = {3.141592653589793, -1e-300, 1e300, 0.1};
    int32_t i32[8] = {0, 1, -1, INT32_MAX, INT32_MIN, 42, -42, 7};
    int64_t i64[3] = {INT64_MAX, INT64_MIN, 1234567890123};
    float s32 = 0.5f;
    double s64 = -2.0;
    tensorset_init(set);
    cr_assert(tensorset_add(set, "conv1.conv2d.weight", TENSOR_F32, SHAPE(2, 3), f32, &err));
    cr_assert(tensorset_add(set, "f64", TENSOR_F64, SHAPE(4), f64, &err));
    cr_assert(tensorset_add(set, "i32", TENSOR_I32, SHAPE(2, 2, 2), i32, &err));
    cr_assert(tensorset_add(set, "labels", TENSOR_I64, SHAPE(3), i64, &err));
    cr_assert(tensorset_add(set, "meta_loss", TENSOR_F32, shape_scalar(), &s32, &err));
    cr_assert(tensorset_add(set, "step", TENSOR_F64, shape_scalar(), &s64, &err));
    cr_assert(tensorset_add(set, "empty", TENSOR_I32, SHAPE(0, 3), NULL, &err));
    cr_assert(tensorset_add(set, "weird \"name\"\\ \xc3\xa9\t", TENSOR_F32, SHAPE(1), &s32, &err));
    cr_assert(tensorset_set_meta(set, "step", "1000", &err) == 0);
    cr_assert(
        tensorset_set_meta(set, "note", "quote \" backslash \\ newline \n caf\xc3\xa9", &err) == 0);
}

static void assert_sets_equal(const TensorSet *a, const TensorSet *b) {
    cr_assert_eq(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const Tensor *x = &a->items[i], *y = &b->items[i];
        cr_assert_str_eq(x->name, y->name, "order differs at %d", i);
        cr_assert_eq(x->dtype, y->dtype, "%s", x->name);
        cr_assert(shape_equal(x->shape, y->shape), "%s", x->name);
        size_t bytes = (size_t)shape_numel(x->shape) * tensor_dtype_size(x->dtype);
        cr_assert(memcmp(x->data, y->data, bytes) == 0, "data of %s differs", x->name);
    }
    cr_assert_eq(a->n_meta, b->n_meta);
    for (int i = 0; i < a->n_meta; i++)
        cr_assert_str_eq(tensorset_get_meta(b, a->meta[i].key), a->meta[i].value);
}

/* ------------------------------------------------------------------ tensors --------------- */

Test(tensor, dtype_sizes_and_names) {
    cr_assert_eq(tensor_dtype_size(TENSOR_F32), 4);
    cr_assert_eq(tensor_dtype_size(TENSOR_F64), 8);
    cr_assert_eq(tensor_dtype_size(TENSOR_I32), 4);
    cr_assert_eq(tensor_dtype_size(TENSOR_I64), 8);
    cr_assert_str_eq(tensor_dtype_name(TENSOR_F32), "F32");
    cr_assert_str_eq(tensor_dtype_name(TENSOR_I64), "I64");
}

Test(tensor, add_copies_data_and_zero_fills) {
    TensorSet set;
    MamlError err = {{0}};
    float v[3] = {1, 2, 3};
    tensorset_init(&set);
    Tensor *t = tensorset_add(&set, "a", TENSOR_F32, SHAPE(3), v, &err);
    cr_assert(t);
    v[0] = 99;
    cr_assert_eq(tensor_get(t, 0), 1.0, "data was not copied");
    Tensor *z = tensorset_add(&set, "z", TENSOR_I64, SHAPE(2, 2), NULL, &err);
    for (int i = 0; i < 4; i++) cr_assert_eq(tensor_get(z, i), 0.0);
    cr_assert_eq(tensorset_find(&set, "z"), z);
    cr_assert_null(tensorset_find(&set, "nope"));
    tensorset_free(&set);
    cr_assert_eq(set.n, 0);
}

Test(tensor, add_replaces_same_name_in_place) {
    TensorSet set;
    MamlError err = {{0}};
    float a = 1;
    double b[2] = {5, 6};
    tensorset_init(&set);
    tensorset_add(&set, "x", TENSOR_F32, shape_scalar(), &a, &err);
    tensorset_add(&set, "y", TENSOR_F32, shape_scalar(), &a, &err);
    Tensor *t = tensorset_add(&set, "x", TENSOR_F64, SHAPE(2), b, &err);
    cr_assert_eq(set.n, 2);
    cr_assert_str_eq(set.items[0].name, "x", "replacement must keep the position");
    cr_assert_eq(t->dtype, TENSOR_F64);
    cr_assert_eq(tensor_get(t, 1), 6.0);
    /* replacing a tensor with its own data must not read freed memory */
    t = tensorset_add(&set, "x", TENSOR_F64, SHAPE(2), t->data, &err);
    cr_assert_eq(tensor_get(t, 0), 5.0);
    tensorset_free(&set);
}

Test(tensor, add_rejects_bad_shapes_and_names) {
    TensorSet set;
    MamlError err = {{0}};
    tensorset_init(&set);
    Shape neg = SHAPE(2, -1);
    cr_assert_null(tensorset_add(&set, "neg", TENSOR_F32, neg, NULL, &err));
    cr_assert(strstr(err.message, "tensor 'neg': negative dimension in shape [2, -1]"), "%s",
              err.message);
    Shape big = SHAPE(INT64_MAX / 2, 4);
    cr_assert_null(tensorset_add(&set, "big", TENSOR_F32, big, NULL, &err));
    cr_assert(strstr(err.message, "is too large"), "%s", err.message);
    Shape deep = {.rank = MAX_RANK + 1};
    cr_assert_null(tensorset_add(&set, "deep", TENSOR_F32, deep, NULL, &err));
    cr_assert(strstr(err.message, "rank 9 outside 0..8"), "%s", err.message);
    cr_assert_null(tensorset_add(&set, "", TENSOR_F32, shape_scalar(), NULL, &err));
    cr_assert(strstr(err.message, "must not be empty"), "%s", err.message);
    cr_assert_eq(set.n, 0);
    tensorset_free(&set);
}

Test(tensor, get_and_set_convert_between_dtypes) {
    TensorSet set;
    MamlError err = {{0}};
    tensorset_init(&set);
    Tensor *f = tensorset_add(&set, "f", TENSOR_F32, SHAPE(2), NULL, &err);
    Tensor *d = tensorset_add(&set, "d", TENSOR_F64, SHAPE(2), NULL, &err);
    Tensor *i = tensorset_add(&set, "i", TENSOR_I32, SHAPE(6), NULL, &err);
    Tensor *l = tensorset_add(&set, "l", TENSOR_I64, SHAPE(4), NULL, &err);
    tensor_set(f, 0, 0.1);
    cr_assert_eq(tensor_get(f, 0), (double)0.1f, "F32 stores the float nearest the value");
    tensor_set(d, 1, 0.1);
    cr_assert_eq(tensor_get(d, 1), 0.1);
    tensor_set(i, 0, 3.0);
    tensor_set(i, 1, -2.7);
    tensor_set(i, 2, 1e12);
    tensor_set(i, 3, -1e12);
    tensor_set(i, 4, NAN);
    tensor_set(i, 5, 2.999);
    cr_assert_eq(((int32_t *)i->data)[0], 3);
    cr_assert_eq(((int32_t *)i->data)[1], -2, "conversion truncates toward zero like C");
    cr_assert_eq(((int32_t *)i->data)[2], INT32_MAX, "out-of-range values saturate");
    cr_assert_eq(((int32_t *)i->data)[3], INT32_MIN);
    cr_assert_eq(((int32_t *)i->data)[4], 0, "NaN becomes 0");
    cr_assert_eq(((int32_t *)i->data)[5], 2);
    tensor_set(l, 0, 1e30);
    tensor_set(l, 1, -1e30);
    tensor_set(l, 2, 4503599627370496.0);
    tensor_set(l, 3, -7);
    cr_assert_eq(((int64_t *)l->data)[0], INT64_MAX);
    cr_assert_eq(((int64_t *)l->data)[1], INT64_MIN);
    cr_assert_eq(((int64_t *)l->data)[2], 4503599627370496LL);
    cr_assert_eq(tensor_get(l, 3), -7.0);
    tensorset_free(&set);
}

Test(tensor, metadata_set_replace_get) {
    TensorSet set;
    MamlError err = {{0}};
    tensorset_init(&set);
    cr_assert_null(tensorset_get_meta(&set, "step"));
    cr_assert_eq(tensorset_set_meta(&set, "step", "1", &err), 0);
    cr_assert_eq(tensorset_set_meta(&set, "seed", "7", &err), 0);
    cr_assert_eq(tensorset_set_meta(&set, "step", "2", &err), 0);
    cr_assert_eq(set.n_meta, 2);
    cr_assert_str_eq(tensorset_get_meta(&set, "step"), "2");
    cr_assert_str_eq(tensorset_get_meta(&set, "seed"), "7");
    tensorset_free(&set);
}

/* ------------------------------------------------------------------ round trips ----------- */

Test(safetensors, round_trip_every_dtype_scalars_and_metadata) {
    TensorSet set, back;
    MamlError err = {{0}};
    make_sample(&set);
    const char *path = join(tmp(), "sample.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    tensorset_init(&back);
    cr_assert_eq(safetensors_read(path, &back, &err), 0, "%s", err.message);
    assert_sets_equal(&set, &back);
    cr_assert_eq(tensorset_find(&back, "meta_loss")->shape.rank, 0);
    cr_assert_eq(tensorset_find(&back, "empty")->shape.dims[0], 0);
    tensorset_free(&set);
    tensorset_free(&back);
}

Test(safetensors, round_trip_of_an_empty_set) {
    TensorSet set, back;
    MamlError err = {{0}};
    tensorset_init(&set);
    tensorset_init(&back);
    const char *path = join(tmp(), "empty.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_read(path, &back, &err), 0, "%s", err.message);
    cr_assert_eq(back.n, 0);
    cr_assert_eq(back.n_meta, 0);
    tensorset_free(&back);
}

Test(safetensors, written_header_is_padded_to_8_bytes_with_spaces) {
    TensorSet set;
    MamlError err = {{0}};
    make_sample(&set);
    const char *path = join(tmp(), "padded.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    size_t n;
    char *buf = read_bytes(path, &n);
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | (unsigned char)buf[i];
    cr_assert_eq(len % 8, 0, "header length %llu", (unsigned long long)len);
    cr_assert_eq(buf[8], '{');
    size_t last = 8 + len - 1;
    while (buf[last] == ' ') last--;
    cr_assert_eq(buf[last], '}', "padding must be spaces after the object");
    cr_assert(8 + len - 1 - last < 8, "at most 7 padding spaces");
    free(buf);
    tensorset_free(&set);
}

Test(safetensors, reader_replaces_previous_contents) {
    TensorSet set, back;
    MamlError err = {{0}};
    make_sample(&set);
    const char *path = join(tmp(), "s.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    tensorset_init(&back);
    float x = 1;
    tensorset_add(&back, "stale", TENSOR_F32, shape_scalar(), &x, &err);
    cr_assert_eq(safetensors_read(path, &back, &err), 0, "%s", err.message);
    cr_assert_null(tensorset_find(&back, "stale"));
    assert_sets_equal(&set, &back);
    tensorset_free(&set);
    tensorset_free(&back);
}

Test(safetensors, accepts_whitespace_escapes_and_any_offset_order) {
    TensorSet set;
    /* b's bytes come first in the data block; the set keeps header order */
    read_ok(" \t\r\n{ \"a\\u00e9\\ud83d\\ude00\\n\" : { \"shape\" : [ ] , \"dtype\" : \"I32\" ,"
            " \"data_offsets\" : [ 4 , 8 ] } , \"b\" : {\"dtype\":\"F32\",\"shape\":[1],"
            "\"data_offsets\":[0,4]}, \"__metadata__\": {\"k\\\"\": \"v\\/\\b\\f\\r\\t\"} }   ",
            8, &set);
    cr_assert_eq(set.n, 2);
    cr_assert_str_eq(set.items[0].name, "a\xc3\xa9\xf0\x9f\x98\x80\n");
    cr_assert_eq(set.items[0].shape.rank, 0);
    cr_assert_str_eq(set.items[1].name, "b");
    cr_assert_str_eq(tensorset_get_meta(&set, "k\""), "v/\b\f\r\t");
    tensorset_free(&set);
}

Test(safetensors, accepts_an_empty_header_object_and_no_data) {
    TensorSet set;
    read_ok("{}", 0, &set);
    cr_assert_eq(set.n, 0);
    tensorset_free(&set);
}

Test(safetensors, accepts_zero_size_tensors_anywhere) {
    TensorSet set;
    read_ok("{\"z\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[4,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"e\":{\"dtype\":\"I64\",\"shape\":[3,0],\"data_offsets\":[0,0]}}",
            4, &set);
    cr_assert_eq(set.n, 3);
    tensorset_free(&set);
}

/* ------------------------------------------------------------------ PyTorch fixtures ------ */

static void read_fixture(const char *rel, TensorSet *set) {
    MamlError err = {{0}};
    const char *path = shared_path(0, rel);
    tensorset_init(set);
    cr_assert_eq(safetensors_read(path, set, &err), 0, "%s", err.message);
}

static void assert_shape(const TensorSet *set, const char *name, Shape want, TensorDType dtype) {
    char a[128], b[128];
    const Tensor *t = tensorset_find(set, name);
    cr_assert(t, "missing %s", name);
    cr_assert(shape_equal(t->shape, want), "%s: %s vs %s", name, shape_str(t->shape, a, 128),
              shape_str(want, b, 128));
    cr_assert_eq(t->dtype, dtype, "%s has dtype %s", name, tensor_dtype_name(t->dtype));
}

Test(safetensors, reads_pytorch_params_fixture) {
    TensorSet set;
    read_fixture("fixtures/pytorch_maml/params_p5_default.safetensors", &set);
    cr_assert_eq(set.n, 18);
    cr_assert_str_eq(set.items[0].name, "conv1.conv2d.weight");
    cr_assert_str_eq(set.items[17].name, "logits.bias");
    assert_shape(&set, "conv1.conv2d.weight", SHAPE(64, 1, 3, 3), TENSOR_F32);
    assert_shape(&set, "conv2.conv2d.weight", SHAPE(64, 64, 3, 3), TENSOR_F32);
    assert_shape(&set, "conv4.bn.bias", SHAPE(64), TENSOR_F32);
    assert_shape(&set, "logits.weight", SHAPE(5, 64), TENSOR_F32);
    assert_shape(&set, "logits.bias", SHAPE(5), TENSOR_F32);
    cr_assert_str_eq(tensorset_get_meta(&set, "n_way"), "5");
    cr_assert_str_eq(tensorset_get_meta(&set, "init"), "pytorch-default");
    /* PyTorch's default init: bn scale 1, shift 0, conv1 weights within 1/sqrt(9) */
    const Tensor *w = tensorset_find(&set, "conv1.conv2d.weight");
    const Tensor *g = tensorset_find(&set, "conv1.bn.weight"),
                 *b = tensorset_find(&set, "conv1.bn.bias");
    for (int i = 0; i < 64 * 9; i++) cr_assert_leq(fabs(tensor_get(w, i)), 1.0 / 3.0);
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(tensor_get(g, i), 1.0);
        cr_assert_eq(tensor_get(b, i), 0.0);
    }
    tensorset_free(&set);
}

static void check_batch(const char *rel, int T, int S, int Q, TensorDType label_dtype, int n_way) {
    TensorSet set;
    read_fixture(rel, &set);
    assert_shape(&set, "support_x", SHAPE(T, S, 1, 28, 28), TENSOR_F32);
    assert_shape(&set, "support_y", SHAPE(T, S), label_dtype);
    assert_shape(&set, "query_x", SHAPE(T, Q, 1, 28, 28), TENSOR_F32);
    assert_shape(&set, "query_y", SHAPE(T, Q), label_dtype);
    const Tensor *y = tensorset_find(&set, "query_y");
    for (int i = 0; i < T * Q; i++) {
        double v = tensor_get(y, i);
        cr_assert(v >= 0 && v < n_way && v == floor(v), "label %g", v);
    }
    tensorset_free(&set);
}

Test(safetensors, reads_pytorch_batch_with_i64_labels) {
    check_batch("fixtures/pytorch_maml/batch_so_T2_5w1s_q1_in1.safetensors", 2, 5, 5, TENSOR_I64,
                5);
    check_batch("fixtures/pytorch_maml/batch_so_T3_5w1s_q3_in3.safetensors", 3, 5, 15, TENSOR_I64,
                5);
    check_batch("fixtures/pytorch_maml/batch_so_T2_20w1s_q1_in1.safetensors", 2, 20, 20, TENSOR_I64,
                20);
}

Test(safetensors, reads_pytorch_batch_with_i32_labels) {
    check_batch("fixtures/pytorch_maml/batch_so_T2_5w1s_q5_in1.safetensors", 2, 5, 25, TENSOR_I32,
                5);
}

Test(safetensors, rewriting_a_fixture_preserves_every_tensor) {
    TensorSet set, back;
    MamlError err = {{0}};
    read_fixture("fixtures/pytorch_maml/expected64_so_T2_5w1s_q1_in1.safetensors", &set);
    assert_shape(&set, "meta_loss", shape_scalar(), TENSOR_F64);
    const char *path = join(tmp(), "copy.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    tensorset_init(&back);
    cr_assert_eq(safetensors_read(path, &back, &err), 0, "%s", err.message);
    assert_sets_equal(&set, &back);
    tensorset_free(&set);
    tensorset_free(&back);
}

/* ------------------------------------------------------------------ malformed files ------- */

#define T1(dtype, shape, offsets)                                                                  \
    "{\"t\":{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offsets "}}"

Test(malformed, missing_file) {
    const char *path = join(tmp(), "nope.safetensors");
    expect_read_error(path, "cannot open: No such file or directory");
}

Test(malformed, directory_instead_of_file) {
    expect_read_error(tmp(), "not a regular file");
}

Test(malformed, empty_file) {
    const char *path = join(tmp(), "empty");
    write_bytes(path, "", 0);
    expect_read_error(path, "file is 0 bytes, too short for the 8-byte header length");
}

Test(malformed, file_shorter_than_8_bytes) {
    const char *path = join(tmp(), "short");
    write_bytes(path, "\x02\0\0\0\0", 5);
    expect_read_error(path, "file is 5 bytes, too short for the 8-byte header length");
}

Test(malformed, header_length_beyond_file) {
    const char *dir = tmp();
    expect_read_error(craft_len(dir, 100, "{}", 2, 0),
                      "header length 100 extends beyond the end of the file (10 bytes)");
}

Test(malformed, header_length_absurdly_large) {
    const char *dir = tmp();
    expect_read_error(craft_len(dir, 1ull << 40, "{}", 2, 0),
                      "header length 1099511627776 exceeds the limit of 100000000 bytes");
    expect_read_error(craft_len(dir, UINT64_MAX, "{}", 2, 0), "exceeds the limit");
}

Test(malformed, header_length_zero) {
    expect_read_error(craft_len(tmp(), 0, "", 0, 4), "empty header");
}

Test(malformed, header_not_an_object) {
    expect_header_error("[1,2]", 0,
                        "invalid JSON header at byte 0: the header must be a JSON object");
    expect_header_error("   ", 0, "the header must be a JSON object");
}

Test(malformed, invalid_json_syntax) {
    expect_header_error("{\"a\":}", 0, "invalid JSON header at byte 5: unexpected character");
    expect_header_error("{\"a\" 1}", 0, "at byte 5: expected ':'");
    expect_header_error("{\"a\":1 \"b\":2}", 0, "at byte 7: expected ',' or '}'");
    expect_header_error("{\"a\":[1 2]}", 0, "expected ',' or ']'");
    expect_header_error("{\"a\":[1,]}", 0, "unexpected character");
    expect_header_error("{\"a\":1,}", 0, "expected a string key");
    expect_header_error("{'a':1}", 0, "expected a string key");
    expect_header_error("{\"a\":tru}", 0, "unexpected character");
    expect_header_error("{\"a\":NaN}", 0, "unexpected character");
    expect_header_error("{\"a\":01}", 0, "expected ',' or '}'");
    expect_header_error("{\"a\":-}", 0, "invalid number");
    expect_header_error("{\"a\":1.}", 0, "invalid number");
    expect_header_error("{\"a\":1e}", 0, "invalid number");
    expect_header_error("{\"a\":[", 0, "unexpected end of header");
    expect_header_error("{", 0, "expected a string key");
}

Test(malformed, trailing_garbage_after_header) {
    expect_header_error("{} x", 0, "at byte 3: trailing characters after the header object");
    expect_header_error("{}{}", 0, "trailing characters");
    const char with_nul[] = "{}\0 ";
    expect_read_error(craft_len(tmp(), 4, with_nul, 4, 0), "trailing characters");
}

Test(malformed, bad_strings) {
    expect_header_error("{\"abc", 0, "at byte 1: unterminated string");
    expect_header_error("{\"a\\qb\":1}", 0, "invalid escape sequence");
    expect_header_error("{\"a\\u12g4\":1}", 0, "invalid \\u escape");
    expect_header_error("{\"a\\u12\"}", 0, "invalid \\u escape");
    expect_header_error("{\"\\ud800\":1}", 0, "unpaired surrogate");
    expect_header_error("{\"\\ud800\\u0041\":1}", 0, "unpaired surrogate");
    expect_header_error("{\"\\udc00\":1}", 0, "unpaired surrogate");
    expect_header_error("{\"a\\u0000b\":1}", 0, "\\u0000 is not allowed in names");
    expect_header_error("{\"a\tb\":1}", 0, "control character in string");
    expect_header_error("{\"a\xff\":1}", 0, "invalid UTF-8 in string");
    expect_header_error("{\"a\xc0\xaf\":1}", 0, "invalid UTF-8 in string");     /* overlong */
    expect_header_error("{\"a\xed\xa0\x80\":1}", 0, "invalid UTF-8 in string"); /* surrogate */
    expect_header_error("{\"a\xe2\x82\":1}", 0, "invalid UTF-8 in string");     /* truncated */
}

Test(malformed, nesting_too_deep) {
    char header[256] = "{\"a\":";
    for (int i = 0; i < 40; i++) strcat(header, "[");
    expect_header_error(header, 0, "nesting too deep");
}

Test(malformed, overlong_arrays) {
    char header[512] = "{\"a\":[";
    for (int i = 0; i < 65; i++) strcat(header, i ? ",0" : "0");
    strcat(header, "]}");
    expect_header_error(header, 0, "array longer than 64 elements");
}

Test(malformed, tensor_not_an_object) {
    expect_header_error("{\"t\":[1]}", 0, "tensor 't': expected an object, found an array");
}

Test(malformed, missing_fields) {
    expect_header_error("{\"t\":{\"shape\":[],\"data_offsets\":[0,4]}}", 4,
                        "tensor 't': missing field 'dtype'");
    expect_header_error("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                        "tensor 't': missing field 'shape'");
    expect_header_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[]}}", 4,
                        "tensor 't': missing field 'data_offsets'");
}

Test(malformed, unknown_and_duplicate_fields) {
    expect_header_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"x\":1}}",
                        4, "tensor 't': unknown field 'x'");
    expect_header_error("{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[],"
                        "\"data_offsets\":[0,4]}}",
                        4, "tensor 't': duplicate field 'dtype'");
}

Test(malformed, unknown_dtype) {
    expect_header_error(T1("\"BOOL\"", "[1]", "[0,1]"), 1,
                        "tensor 't': unsupported dtype 'BOOL' (supported: F32, F64, I32, I64)");
    expect_header_error(T1("\"BF16\"", "[1]", "[0,2]"), 2, "tensor 't': unsupported dtype 'BF16'");
    expect_header_error(T1("\"f32\"", "[1]", "[0,4]"), 4, "unsupported dtype 'f32'");
    expect_header_error(T1("4", "[1]", "[0,4]"), 4,
                        "tensor 't': dtype must be a string, found a number");
}

Test(malformed, bad_shapes) {
    expect_header_error(T1("\"F32\"", "3", "[0,12]"), 12,
                        "tensor 't': shape must be an array, found a number");
    expect_header_error(T1("\"F32\"", "[2,-3]", "[0,4]"), 4,
                        "tensor 't': shape entry 1 is -3: must not be negative");
    expect_header_error(T1("\"F32\"", "[2.5]", "[0,4]"), 4,
                        "tensor 't': shape entry 0 is 2.5: not an integer");
    expect_header_error(T1("\"F32\"", "[1e2]", "[0,400]"), 400,
                        "shape entry 0 is 1e2: not an integer");
    expect_header_error(T1("\"F32\"", "[\"2\"]", "[0,8]"), 8,
                        "shape entry 0 must be an integer, found a string");
    expect_header_error(T1("\"F32\"", "[null]", "[0,8]"), 8, "found null");
    expect_header_error(T1("\"F32\"", "[99999999999999999999]", "[0,8]"), 8,
                        "shape entry 0 is 99999999999999999999: too large");
    expect_header_error(T1("\"F32\"", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 4,
                        "tensor 't': rank 9 exceeds the maximum of 8");
}

Test(malformed, element_count_overflow) {
    expect_header_error(T1("\"F32\"", "[4611686018427387904,4611686018427387904]", "[0,4]"), 4,
                        "tensor 't': element count of shape [4611686018427387904, "
                        "4611686018427387904] overflows");
    expect_header_error(T1("\"F64\"", "[2305843009213693952]", "[0,8]"), 8, "overflows");
}

Test(malformed, bad_data_offsets) {
    expect_header_error(T1("\"F32\"", "[1]", "[0]"), 4,
                        "tensor 't': data_offsets must be an array of two integers");
    expect_header_error(T1("\"F32\"", "[1]", "[0,4,8]"), 4, "must be an array of two integers");
    expect_header_error(T1("\"F32\"", "[1]", "{}"), 4, "must be an array of two integers");
    expect_header_error(T1("\"F32\"", "[1]", "[-4,0]"), 4,
                        "tensor 't': data_offsets entry 0 is -4: must not be negative");
    expect_header_error(T1("\"F32\"", "[1]", "[0,4.0]"), 4,
                        "data_offsets entry 1 is 4.0: not an integer");
    expect_header_error(T1("\"F32\"", "[0]", "[8,4]"), 8,
                        "tensor 't': data_offsets [8, 4]: end before begin");
}

Test(malformed, offsets_out_of_range) {
    expect_header_error(T1("\"F32\"", "[2]", "[0,8]"), 4,
                        "tensor 't': data_offsets [0, 8] beyond the data block of 4 bytes");
    expect_header_error(T1("\"F32\"", "[1]", "[9223372036854775800,9223372036854775804]"), 4,
                        "beyond the data block of 4 bytes");
}

Test(malformed, size_disagrees_with_shape) {
    expect_header_error(
        T1("\"F32\"", "[2,3]", "[0,20]"), 20,
        "tensor 't': shape [2, 3] of F32 needs 24 bytes, data_offsets [0, 20] hold 20");
    expect_header_error(T1("\"I64\"", "[]", "[0,4]"), 4, "shape [] of I64 needs 8 bytes");
}

Test(malformed, overlapping_offsets) {
    expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                        12, "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]");
    expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        4, "overlap tensor 'a' [0, 4]");
}

Test(malformed, gap_between_tensors) {
    expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                        12, "tensor 'b': data_offsets [8, 12] leave a gap: bytes 4..8");
    expect_header_error(T1("\"F32\"", "[1]", "[4,8]"), 8,
                        "bytes 0..4 of the data block belong to no tensor");
}

Test(malformed, data_block_not_covered_to_the_end) {
    expect_header_error(T1("\"F32\"", "[1]", "[0,4]"), 8,
                        "the data block has 8 bytes but the tensors cover only 4");
    expect_header_error("{}", 3, "the data block has 3 bytes but the tensors cover only 0");
}

Test(malformed, duplicate_tensor_names) {
    expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                        8, "tensor 'a': duplicate tensor name");
}

Test(malformed, bad_metadata) {
    expect_header_error("{\"__metadata__\":{\"step\":3}}", 0,
                        "__metadata__ 'step': value must be a string, found a number");
    expect_header_error("{\"__metadata__\":{\"a\":{}}}", 0,
                        "value must be a string, found an object");
    expect_header_error("{\"__metadata__\":[]}", 0,
                        "__metadata__ must be an object of strings, found an array");
    expect_header_error("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
                        "__metadata__: duplicate key 'k'");
    expect_header_error("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate __metadata__");
}

Test(malformed, names_in_messages_stay_on_one_line) {
    expect_header_error("{\"a\\nb\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}", 0,
                        "tensor 'a\\x0ab': unsupported dtype 'X'");
}

/* ------------------------------------------------------------------ writing --------------- */

/* An existing file holding one tensor, to check that failed writes leave it alone. */
static const char *existing_file(const char *dir) {
    TensorSet set;
    MamlError err = {{0}};
    float v = 42;
    tensorset_init(&set);
    tensorset_add(&set, "old", TENSOR_F32, shape_scalar(), &v, &err);
    const char *path = join(dir, "ckpt.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    tensorset_free(&set);
    return path;
}

static void assert_existing_intact(const char *path) {
    TensorSet set;
    MamlError err = {{0}};
    tensorset_init(&set);
    cr_assert_eq(safetensors_read(path, &set, &err), 0, "previous file damaged: %s", err.message);
    cr_assert_eq(set.n, 1);
    cr_assert_eq(tensor_get(tensorset_find(&set, "old"), 0), 42.0);
    tensorset_free(&set);
}

Test(write, replaces_an_existing_file_and_leaves_no_temporary) {
    TensorSet set, back;
    MamlError err = {{0}};
    const char *dir = tmp();
    const char *path = existing_file(dir);
    make_sample(&set);
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    cr_assert_eq(count_dir_entries(dir), 1, "a temporary file was left behind");
    tensorset_init(&back);
    cr_assert_eq(safetensors_read(path, &back, &err), 0, "%s", err.message);
    assert_sets_equal(&set, &back);
    tensorset_free(&set);
    tensorset_free(&back);
}

Test(write, into_a_nonexistent_directory_fails_clearly) {
    TensorSet set;
    MamlError err = {{0}};
    make_sample(&set);
    const char *path = join(tmp(), "no/such/dir/out.safetensors");
    cr_assert_eq(safetensors_write(path, &set, &err), -1);
    cr_assert(strncmp(err.message, path, strlen(path)) == 0, "%s", err.message);
    cr_assert(strstr(err.message, "cannot create temporary file"), "%s", err.message);
    cr_assert(strstr(err.message, "No such file or directory"), "%s", err.message);
    tensorset_free(&set);
}

/* Runs safetensors_write in a child process, after dropping root (root ignores directory
 * permissions) and/or capping the file size; returns the child's message ("" on success). */
static void write_in_child(const char *path, bool drop_root, long max_file_size, char *msg,
                           size_t size) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        MamlError err = {{0}};
        TensorSet set;
        if (drop_root && geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(3);
        if (max_file_size > 0) {
            struct rlimit rl = {(rlim_t)max_file_size, (rlim_t)max_file_size};
            signal(SIGXFSZ, SIG_IGN); /* so write() fails with EFBIG instead of killing us */
            if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(4);
        }
        make_sample(&set);
        float big[4096] = {0};
        tensorset_add(&set, "big", TENSOR_F32, SHAPE(4096), big, &err);
        int rc = safetensors_write(path, &set, &err);
        ssize_t w =
            write(fds[1], rc == 0 ? "" : err.message, rc == 0 ? 1 : strlen(err.message) + 1);
        _exit(w > 0 ? 0 : 5);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], msg, size - 1);
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
        cr_skip_test("cannot drop root privileges to test directory permissions");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status %d", status);
    msg[n > 0 ? n : 0] = '\0';
}

Test(write, into_a_read_only_directory_fails_and_keeps_the_previous_file) {
    const char *dir = tmp();
    const char *path = existing_file(dir);
    cr_assert_eq(chmod(dir, 0555), 0);
    char msg[MAML_ERROR_MAX];
    write_in_child(path, true, 0, msg, sizeof msg);
    chmod(dir, 0700);
    cr_assert(strncmp(msg, path, strlen(path)) == 0, "%s", msg);
    cr_assert(strstr(msg, "cannot create temporary file"), "%s", msg);
    cr_assert(strstr(msg, "Permission denied"), "%s", msg);
    assert_existing_intact(path);
    cr_assert_eq(count_dir_entries(dir), 1);
}

Test(write, running_out_of_space_removes_the_temporary_and_keeps_the_previous_file) {
    /* A file size limit makes write() fail part-way, as a full disk does (EFBIG, not ENOSPC). */
    const char *dir = tmp();
    const char *path = existing_file(dir);
    char msg[MAML_ERROR_MAX];
    write_in_child(path, false, 1000, msg, sizeof msg);
    cr_assert(strncmp(msg, path, strlen(path)) == 0, "%s", msg);
    cr_assert(strstr(msg, "writing temporary file"), "%s", msg);
    cr_assert(strstr(msg, strerror(EFBIG)), "%s", msg);
    assert_existing_intact(path);
    cr_assert_eq(count_dir_entries(dir), 1, "the temporary file was not removed");
}

Test(write, over_a_directory_fails_and_removes_the_temporary) {
    TensorSet set;
    MamlError err = {{0}};
    const char *dir = tmp();
    const char *path = join(dir, "sub");
    cr_assert_eq(mkdir(path, 0700), 0);
    make_sample(&set);
    cr_assert_eq(safetensors_write(path, &set, &err), -1);
    cr_assert(strstr(err.message, "cannot replace the file"), "%s", err.message);
    cr_assert(strstr(err.message, "Is a directory"), "%s", err.message);
    cr_assert_eq(count_dir_entries(dir), 1, "the temporary file was not removed");
    tensorset_free(&set);
}

Test(write, rejects_names_it_could_not_read_back) {
    TensorSet set;
    MamlError err = {{0}};
    const char *dir = tmp();
    tensorset_init(&set);
    tensorset_add(&set, "__metadata__", TENSOR_F32, shape_scalar(), NULL, &err);
    cr_assert_eq(safetensors_write(join(dir, "a"), &set, &err), -1);
    cr_assert(strstr(err.message, "'__metadata__' is reserved"), "%s", err.message);
    tensorset_free(&set);
    tensorset_add(&set, "bad\xff", TENSOR_F32, shape_scalar(), NULL, &err);
    cr_assert_eq(safetensors_write(join(dir, "b"), &set, &err), -1);
    cr_assert(strstr(err.message, "tensor name 'bad\xff' is not valid UTF-8"), "%s", err.message);
    tensorset_free(&set);
    cr_assert_eq(count_dir_entries(dir), 0);
}
