/* The largest inputs mamlc accepts. Each limit is tested at the limit (accepted) and just past it
 * (a clear error that names the limit). The README's table of limits lists the same numbers:
 * change both together. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fuzz/fuzz_common.h"
#include "omniglot.h"
#include "safetensors.h"
#include "spec.h"
#include "test_util.h"

TestSuite(yaml_limits, .fini = fuzz_remove_scratch);
TestSuite(safetensors_limits, .fini = fuzz_remove_scratch);
TestSuite(cli_limits, .fini = fuzz_remove_scratch);
TestSuite(zip_limits, .fini = fuzz_remove_scratch);

/* ------------------------------------------------------------------ graph files ----------- */

/* Settings of a minimal valid sinusoid graph (three lines), appended after a model section. */
#define SIN_SETTINGS                                                                               \
    "maml: {n_way: 1, k_shot: 1, q_query: 1, meta_batch: 1, inner: {steps: 1, lr: 0.1},\n"         \
    "       outer: {optimizer: sgd, lr: 0.1}, eval: {inner_steps: 1, tasks: 1}}\n"                 \
    "data: {dataset: sinusoid, seed: 1}\n"

/* A growing text buffer (open_memstream), so graphs of any size read like printf calls. */
typedef struct {
    char *text;
    size_t len;
    FILE *f;
} Text;

static void text_open(Text *t) {
    t->f = open_memstream(&t->text, &t->len);
    cr_assert(t->f);
}

static char *text_close(Text *t) {
    cr_assert_eq(fclose(t->f), 0);
    return t->text;
}

/* Loads text as a graph file; returns spec_load's status with err filled. */
static int load_text(const char *text, GraphSpec *spec, MamlError *err) {
    const char *path = fuzz_path(0, "graph.yaml");
    fuzz_write_file(path, text, strlen(text));
    return spec_load(path, NULL, 0, spec, err);
}

static void expect_loads(const char *text, int n_layers) {
    GraphSpec spec;
    MamlError err = {{0}};
    cr_assert_eq(load_text(text, &spec, &err), 0, "rejected at the limit: %s", err.message);
    cr_expect_eq(spec.n_layers, n_layers);
    spec_free(&spec);
}

static void expect_rejected(const char *text, const char *needle) {
    GraphSpec spec;
    MamlError err = {{0}};
    cr_assert_eq(load_text(text, &spec, &err), -1, "accepted past the limit");
    cr_expect(strstr(err.message, needle), "expected '%s' in: %s", needle, err.message);
    cr_expect(strstr(err.message, fuzz_path(0, "graph.yaml")), "names the file: %s", err.message);
}

/* A sinusoid graph: linear(1 -> 1) followed by `relus` relu layers. */
static char *relu_graph(int relus, size_t pad_to) {
    Text t;
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1]\n  loss: mse\n  layers:\n");
    fprintf(t.f, "    - {linear: {name: out, out_features: 1}}\n");
    for (int i = 0; i < relus; i++) fprintf(t.f, "    - relu\n");
    fprintf(t.f, SIN_SETTINGS);
    /* comment lines (at most 1000 bytes each) bring the file to exactly pad_to bytes */
    char dashes[1000];
    memset(dashes, '-', sizeof dashes);
    fflush(t.f);
    while (pad_to && t.len < pad_to) {
        size_t n = pad_to - t.len > sizeof dashes ? sizeof dashes : pad_to - t.len;
        if (n == 1)
            fputc('\n', t.f);
        else
            fprintf(t.f, "#%.*s\n", (int)(n - 2), dashes);
        fflush(t.f);
    }
    return text_close(&t);
}

Test(yaml_limits, file_size_1_mib) {
    char *at = relu_graph(0, 1 << 20), *past = relu_graph(0, (1 << 20) + 1);
    cr_assert_eq(strlen(at), 1u << 20);
    cr_assert_eq(strlen(past), (1u << 20) + 1);
    expect_loads(at, 1);
    expect_rejected(past, "file is larger than the limit of 1048576 bytes");
    free(at), free(past);
}

Test(yaml_limits, layers_64_after_expansion) {
    char *at = relu_graph(63, 0), *past = relu_graph(64, 0);
    expect_loads(at, 64);
    expect_rejected(past, "more than 64 layers after block expansion");
    free(at), free(past);
}

/* An unused block argument holds `levels` nested sequences; its default sits at nesting level
 * 6 (root, model, blocks, b, args, the value), so the innermost "[]" is at level 5 + levels. */
static char *nested_graph(int depth) {
    Text t;
    text_open(&t);
    int levels = depth - 5;
    fprintf(t.f,
            "model:\n  input: [1]\n  loss: mse\n  blocks:\n    b:\n      args:\n        deep: ");
    for (int i = 0; i < levels; i++) fputc('[', t.f);
    for (int i = 0; i < levels; i++) fputc(']', t.f);
    fprintf(t.f, "\n      layers: [relu]\n  layers: [{linear: {name: out, out_features: "
                 "1}}]\n" SIN_SETTINGS);
    return text_close(&t);
}

Test(yaml_limits, nesting_32_levels) {
    char *at = nested_graph(32), *past = nested_graph(33);
    expect_loads(at, 1);
    expect_rejected(past, "document nested deeper than 32 levels");
    free(at), free(past);
}

/* A chain of `depth` blocks b1 -> b2 -> ... -> bN -> relu, instantiated once. */
static char *block_chain_graph(int depth) {
    Text t;
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1]\n  loss: mse\n  blocks:\n");
    for (int i = 1; i <= depth; i++)
        if (i < depth)
            fprintf(t.f, "    b%d: {layers: [{block: b%d, name: n%d}]}\n", i, i + 1, i + 1);
        else
            fprintf(t.f, "    b%d: {layers: [relu]}\n", i);
    fprintf(
        t.f,
        "  layers: [{linear: {name: out, out_features: 1}}, {block: b1, name: n1}]\n" SIN_SETTINGS);
    return text_close(&t);
}

Test(yaml_limits, block_nesting_16_levels) {
    char *at = block_chain_graph(16), *past = block_chain_graph(17);
    expect_loads(at, 2);
    expect_rejected(past, "blocks nested deeper than 16 levels");
    free(at), free(past);
}

/* A block whose argument map has `n` entries (or whose one argument is a list of n items). */
static char *entries_graph(int n, bool sequence) {
    Text t;
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1]\n  loss: mse\n  blocks:\n    b:\n      args: {");
    if (sequence) fprintf(t.f, "list: [");
    for (int i = 0; i < n; i++) fprintf(t.f, sequence ? "%s%d" : "%sa%d: 0", i ? ", " : "", i);
    fprintf(t.f, sequence ? "]}\n" : "}\n");
    fprintf(
        t.f,
        "      layers: [relu]\n  layers: [{linear: {name: out, out_features: 1}}]\n" SIN_SETTINGS);
    return text_close(&t);
}

Test(yaml_limits, mappings_and_sequences_of_1024_entries) {
    for (int seq = 0; seq <= 1; seq++) {
        char *at = entries_graph(1024, seq), *past = entries_graph(1025, seq);
        expect_loads(at, 1);
        expect_rejected(past, seq ? "sequence with more than 1024 entries"
                                  : "mapping with more than 1024 entries");
        free(at), free(past);
    }
}

static char *linear_graph(int hidden, int out, const char *name) {
    Text t;
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1]\n  loss: mse\n  layers:\n");
    fprintf(t.f, "    - {linear: {name: %s, out_features: %d}}\n", name, hidden);
    fprintf(t.f, "    - {linear: {name: b, out_features: %d}}\n", out);
    fprintf(t.f, "    - {linear: {name: c, out_features: 1}}\n" SIN_SETTINGS);
    return text_close(&t);
}

Test(yaml_limits, sizes_up_to_65536) {
    char *at = linear_graph(65536, 1, "a"), *past = linear_graph(65537, 1, "a");
    expect_loads(at, 3);
    expect_rejected(past, "'out_features' must be between 1 and 65536, got 65537");
    free(at), free(past);
}

/* 65536 x 32768 is exactly 2^31 weights; one more output row is past the limit. */
Test(yaml_limits, weights_of_2_pow_31_elements) {
    char *at = linear_graph(65536, 32768, "a"), *past = linear_graph(65536, 32769, "a");
    expect_loads(at, 3);
    expect_rejected(past, "linear 'b': weight has more than 2147483648 elements");
    free(at), free(past);
}

Test(yaml_limits, layer_names_of_127_characters) {
    char name[130];
    memset(name, 'n', sizeof name);
    name[127] = '\0';
    char *at = linear_graph(4, 4, name);
    name[127] = 'n', name[128] = '\0';
    char *past = linear_graph(4, 4, name);
    GraphSpec spec;
    MamlError err = {{0}};
    cr_assert_eq(load_text(at, &spec, &err), 0, "%s", err.message);
    cr_expect_eq(strlen(spec.params[0].name), 127 + strlen(".weight"));
    spec_free(&spec);
    expect_rejected(past, "is longer than 127 characters");
    free(at), free(past);
}

/* Argument k of the chain: "v" (the value 4) for k < 0, else "aK" (a reference to argument k-1). */
static const char *chain_arg(int k, char *buf) {
    if (k < 0) return "v";
    sprintf(buf, "a%d", k);
    return buf;
}

/* out_features reached through `refs` references: $...a(refs-2) -> ... -> $...a0 -> $...v = 4. */
static char *reference_chain_graph(int refs) {
    Text t;
    char b1[16], b2[16];
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1]\n  loss: mse\n  blocks:\n    b:\n      args: {v: 4");
    for (int k = 0; k < refs - 1; k++)
        fprintf(t.f, ", %s: $model.blocks.b.args.%s", chain_arg(k, b1), chain_arg(k - 1, b2));
    fprintf(t.f, "}\n      layers: [relu]\n  layers:\n");
    fprintf(t.f, "    - {linear: {name: h, out_features: $model.blocks.b.args.%s}}\n",
            chain_arg(refs - 2, b1));
    fprintf(t.f, "    - {linear: {name: o, out_features: 1}}\n" SIN_SETTINGS);
    return text_close(&t);
}

Test(yaml_limits, reference_chains_of_16) {
    char *at = reference_chain_graph(16), *past = reference_chain_graph(17);
    expect_loads(at, 2);
    expect_rejected(past, "'out_features': reference chain deeper than 16, starting at "
                          "'$model.blocks.b.args.a15'");
    free(at), free(past);
}

/* Block b's argument ak defaults to $...a(k+1), the last to $...a0: a cycle of `refs` references,
 * followed when the graph uses b. */
static char *reference_cycle_graph(int refs) {
    Text t;
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1]\n  loss: mse\n  blocks:\n    b:\n      args: {");
    for (int k = 0; k < refs; k++)
        fprintf(t.f, "%sa%d: $model.blocks.b.args.a%d", k ? ", " : "", k, (k + 1) % refs);
    fprintf(t.f, "}\n      layers: [relu]\n  layers:\n");
    fprintf(t.f, "    - {block: b}\n    - {linear: {name: o, out_features: 1}}\n" SIN_SETTINGS);
    return text_close(&t);
}

/* A cycle within the limit is reported as a cycle, naming every reference; past the limit the
 * chain is too deep before it comes round. */
Test(yaml_limits, reference_cycles_of_16) {
    char *at = reference_cycle_graph(16), *past = reference_cycle_graph(17);
    Text want;
    text_open(&want);
    fprintf(want.f, "'a0': cyclic reference ");
    for (int k = 1; k <= 16; k++) fprintf(want.f, "$model.blocks.b.args.a%d -> ", k % 16);
    fprintf(want.f, "$model.blocks.b.args.a1");
    char *cycle = text_close(&want);
    expect_rejected(at, cycle);
    expect_rejected(past, "'a0': reference chain deeper than 16, starting at "
                          "'$model.blocks.b.args.a1'");
    free(at), free(past), free(cycle);
}

/* An Omniglot graph at image size `size` (input [1, size, size]). */
static char *omniglot_graph(int size) {
    Text t;
    text_open(&t);
    fprintf(t.f, "model:\n  input: [1, %d, %d]\n  loss: cross_entropy\n", size, size);
    fprintf(t.f, "  layers: [flatten, {linear: {name: logits, out_features: 5}}]\n");
    fprintf(t.f,
            "maml: {n_way: 5, k_shot: 1, q_query: 1, meta_batch: 1, inner: {steps: 1, lr: 0.1},\n"
            "       outer: {optimizer: sgd, lr: 0.1}, eval: {inner_steps: 1, tasks: 1}}\n");
    fprintf(t.f,
            "data: {dataset: omniglot, split: background_evaluation, image_size: %d, seed: 1}\n",
            size);
    return text_close(&t);
}

Test(yaml_limits, omniglot_image_size_105) {
    char *at = omniglot_graph(105), *past = omniglot_graph(106);
    expect_loads(at, 2);
    expect_rejected(past, "'image_size' 106 is larger than the 105x105 Omniglot images");
    free(at), free(past);
}

/* ------------------------------------------------------------------ --set count ------------ */

/* Runs `mamlc check graphs/omniglot_seed.yaml` with n overrides; returns the exit status and
 * the last line of its stderr. */
static int check_with_overrides(int n, char *last, size_t size) {
    const char *env = getenv("MAMLC"), *mamlc = env && *env ? env : "./mamlc";
    if (access(mamlc, X_OK) != 0)
        cr_skip_test("no mamlc binary at %s (build it, or set MAMLC)", mamlc);
    const char *log = fuzz_path(1, "stderr.txt");
    char **argv = calloc((size_t)(2 * n + 4), sizeof *argv);
    cr_assert(argv);
    int k = 0;
    argv[k++] = (char *)mamlc, argv[k++] = "check", argv[k++] = "graphs/omniglot_seed.yaml";
    for (int i = 0; i < n; i++)
        argv[k++] = "--set", argv[k++] = i % 2 ? "maml.inner.lr=0.4" : "maml.k_shot=2";
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (!freopen(log, "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(127);
        execv(mamlc, argv);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    free(argv);
    FILE *f = fopen(log, "r");
    cr_assert(f);
    char line[512];
    last[0] = '\0';
    while (fgets(line, sizeof line, f)) snprintf(last, size, "%s", line);
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(cli_limits, set_options_64) {
    char msg[512];
    cr_expect_eq(check_with_overrides(64, msg, sizeof msg), 0, "64 --set options rejected: %s",
                 msg);
    cr_expect_eq(check_with_overrides(65, msg, sizeof msg), 2);
    cr_expect(strstr(msg, "too many --set options (at most 64)"), "%s", msg);
}

/* ------------------------------------------------------------------ safetensors ------------ */

/* A file with this JSON header (padded to 8 bytes) and n_data zero bytes of data. */
static const char *st_file(const char *header, size_t n_data) {
    const char *path = fuzz_path(2, "t.safetensors");
    size_t len = strlen(header), padded = (len + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    for (int i = 0; i < 8; i++) fputc((int)((uint64_t)padded >> (8 * i) & 0xff), f);
    fputs(header, f);
    for (size_t i = len; i < padded; i++) fputc(' ', f);
    for (size_t i = 0; i < n_data; i++) fputc(0, f);
    cr_assert_eq(fclose(f), 0);
    return path;
}

static void st_expect_ok(const char *header, size_t n_data, int rank) {
    TensorSet set;
    tensorset_init(&set);
    MamlError err = {{0}};
    cr_assert_eq(safetensors_read(st_file(header, n_data), &set, &err), 0, "%s", err.message);
    cr_expect_eq(set.n, 1);
    if (set.n == 1) cr_expect_eq(set.items[0].shape.rank, rank);
    tensorset_free(&set);
}

static void st_expect_error(const char *header, size_t n_data, const char *needle) {
    TensorSet set;
    tensorset_init(&set);
    MamlError err = {{0}};
    cr_assert_eq(safetensors_read(st_file(header, n_data), &set, &err), -1, "accepted: %s", header);
    cr_expect(strstr(err.message, needle), "expected '%s' in: %s", needle, err.message);
    cr_expect_eq(set.n, 0);
}

/* {"t": {"dtype": DT, "shape": [SHAPE], "data_offsets": [0, BYTES]}} */
static const char *st_header(const char *dtype, const char *shape, long long bytes) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "{\"t\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[0,%lld]}}",
             dtype, shape, bytes);
    return buf;
}

/* "v,v,...,v" with n entries. */
static const char *repeat(const char *v, int n) {
    static char buf[2048];
    buf[0] = '\0';
    for (int i = 0; i < n; i++)
        snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", i ? "," : "", v);
    return buf;
}

Test(safetensors_limits, rank_8) {
    st_expect_ok(st_header("F32", repeat("1", 8), 4), 4, 8);
    st_expect_error(st_header("F32", repeat("1", 9), 4), 4,
                    "tensor 't': rank 9 exceeds the maximum of 8");
}

/* Dimensions are int64: INT64_MAX is a valid size (here of an empty tensor), one more is not. */
Test(safetensors_limits, dimension_int64_max) {
    st_expect_ok(st_header("F32", "0,9223372036854775807", 0), 0, 2);
    st_expect_error(st_header("F32", "0,9223372036854775808", 0), 0,
                    "shape entry 1 is 9223372036854775808: too large");
}

/* The byte size of a shape must fit in int64: 2^61 - 1 F32 elements do (the file then lacks
 * their data, which is the error), 2^61 do not. */
Test(safetensors_limits, byte_size_int64_max) {
    st_expect_error(st_header("F32", "2305843009213693951", 4), 4,
                    "needs 9223372036854775804 bytes");
    st_expect_error(st_header("F32", "2305843009213693952", 4), 4, "element count of shape");
}

/* A header of exactly 100,000,000 bytes (one tensor, then spaces) loads. */
Test(safetensors_limits, header_100_mb, .timeout = 120) {
    const uint64_t limit = 100000000;
    const char *path = fuzz_path(2, "big.safetensors");
    const char *head = "{\"t\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    for (int i = 0; i < 8; i++) fputc((int)(limit >> (8 * i) & 0xff), f);
    fputs(head, f);
    static char spaces[1 << 16];
    memset(spaces, ' ', sizeof spaces);
    for (uint64_t left = limit - strlen(head); left;) {
        size_t n = left < sizeof spaces ? (size_t)left : sizeof spaces;
        cr_assert_eq(fwrite(spaces, 1, n, f), n);
        left -= n;
    }
    fwrite("\0\0\0\0", 1, 4, f);
    cr_assert_eq(fclose(f), 0);
    TensorSet set;
    tensorset_init(&set);
    MamlError err = {{0}};
    cr_expect_eq(safetensors_read(path, &set, &err), 0, "%s", err.message);
    tensorset_free(&set);
    unlink(path);
}

/* One past: rejected from the length field alone, before anything is allocated or read. */
Test(safetensors_limits, header_length_past_100_mb) {
    const char *path = fuzz_path(2, "t.safetensors");
    const unsigned char len[8] = {0x01, 0xe1, 0xf5, 0x05, 0, 0, 0, 0}; /* 100000001 */
    fuzz_write_file(path, len, sizeof len);
    TensorSet set;
    tensorset_init(&set);
    MamlError err = {{0}};
    cr_assert_eq(safetensors_read(path, &set, &err), -1);
    cr_expect(strstr(err.message, "header length 100000001 exceeds the limit of 100000000 bytes"),
              "%s", err.message);
}

/* JSON nesting of 16 levels parses (and then fails the format check); 17 is refused by the
 * parser. Levels: the root object, the tensor's object, then `shape` and its nested arrays. */
static const char *nested_shape(int depth) {
    int arrays = depth - 2;
    char shape[128];
    snprintf(shape, sizeof shape, "%.*s%.*s", arrays - 1, "[[[[[[[[[[[[[[[[[[[[", arrays - 1,
             "]]]]]]]]]]]]]]]]]]]]");
    return st_header("F32", shape, 4);
}

Test(safetensors_limits, json_nesting_16) {
    st_expect_error(nested_shape(16), 4, "shape entry 0 must be an integer, found an array");
    st_expect_error(nested_shape(17), 4, "nesting too deep");
}

/* Arrays hold at most 64 elements: 64 parse (a shape of rank 64 then exceeds the rank limit),
 * 65 are refused by the parser. */
Test(safetensors_limits, json_arrays_of_64) {
    st_expect_error(st_header("F32", repeat("1", 64), 4), 4, "rank 64 exceeds the maximum of 8");
    st_expect_error(st_header("F32", repeat("1", 65), 4), 4, "array longer than 64 elements");
}

/* ------------------------------------------------------------------ zip entries ------------ */

/* A valid Omniglot PNG: the fuzz seed (105x105, 1-bit gray). */
static uint8_t *seed_png(size_t *n) {
    FILE *f = fopen("tests/fuzz/corpus/png_zip/gray1.png", "rb");
    cr_assert(f, "run from the repository root");
    static uint8_t buf[4096];
    *n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

/* Entry names r/AAA...A/character01/0001_DD.png of exactly `len` bytes. */
static int load_zip_with_names(size_t len, MamlError *err) {
    const size_t fixed = strlen("r/") + strlen("/character01") + strlen("/0001_01.png");
    char dir[2048];
    memcpy(dir, "r/", 2);
    memset(dir + 2, 'A', len - fixed);
    strcpy(dir + 2 + len - fixed, "/character01");
    size_t n;
    const uint8_t *png = seed_png(&n);
    const char *zip = fuzz_path(3, "images_background.zip");
    fuzz_write_png_zip(zip, dir, png, n);
    setenv("MAMLC_CACHE", fuzz_path(1, "cache"), 1);
    OmniglotArchive a;
    int rc = omniglot_load(zip, RESIZE_NEAREST, 28, &a, NULL, err);
    omniglot_free(&a);
    return rc;
}

Test(zip_limits, entry_names_of_1023_bytes) {
    MamlError err = {{0}};
    cr_expect_eq(load_zip_with_names(1023, &err), 0, "%s", err.message);
    cr_expect_eq(load_zip_with_names(1024, &err), -1);
    cr_expect(strstr(err.message, "entry name too long (1024 bytes)"), "%s", err.message);
}

static int load_seed_archive(ResizeFilter filter, int image_size, MamlError *err) {
    size_t n;
    const uint8_t *png = seed_png(&n);
    const char *zip = fuzz_path(3, "images_background.zip");
    fuzz_wrap_png_zip(zip, png, n);
    setenv("MAMLC_CACHE", fuzz_path(1, "cache"), 1);
    OmniglotArchive a;
    int rc = omniglot_load(zip, filter, image_size, &a, NULL, err);
    if (rc == 0) cr_expect_eq(a.image_size, image_size);
    omniglot_free(&a);
    return rc;
}

/* data.image_size is 1..105 (the Omniglot images' side): every size loads with both filters. */
Test(zip_limits, image_sizes_1_to_105, .timeout = 120) {
    for (int f = RESIZE_NEAREST; f <= RESIZE_LANCZOS; f++) {
        for (int size = 1; size <= OMNIGLOT_SRC_SIZE; size++) {
            MamlError err = {{0}};
            cr_expect_eq(load_seed_archive((ResizeFilter)f, size, &err), 0, "size %d: %s", size,
                         err.message);
        }
        MamlError err = {{0}};
        cr_expect_eq(load_seed_archive((ResizeFilter)f, 106, &err), -1);
        cr_expect(strstr(err.message, "data.image_size 106 must be in 1..105"), "%s", err.message);
        cr_expect_eq(load_seed_archive((ResizeFilter)f, 0, &err), -1);
    }
}
