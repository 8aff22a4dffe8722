/* Every crash or hang the fuzzers (tests/fuzz/) found, replayed through the public API with the
 * exact input and the same harness steps (tests/fuzz/fuzz_common.h). Inputs live in
 * tests/fuzz/regressions/TARGET/ (run.sh also seeds the fuzzers with them); the tests below name
 * each bug and check the fixed behaviour, and `every_stored_input_*` replays all of them, so a
 * new reproducer only needs to be dropped into its folder. Tests run from the repository root. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "fuzz/fuzz_common.h"
#include "omniglot.h"
#include "safetensors.h"
#include "spec.h"
#include "test_util.h"

TestSuite(fuzz_yaml, .fini = fuzz_remove_scratch);
TestSuite(fuzz_overrides, .fini = fuzz_remove_scratch);
TestSuite(fuzz_safetensors, .fini = fuzz_remove_scratch);
TestSuite(fuzz_png_zip, .fini = fuzz_remove_scratch);

#define REGRESSIONS "tests/fuzz/regressions"

/* ------------------------------------------------------------------ the harnesses ---------- */

/* fuzz_yaml: the bytes are a graph file. */
static int run_yaml(const uint8_t *data, size_t n, MamlError *err) {
    const char *path = fuzz_path(0, "graph.yaml");
    fuzz_write_file(path, data, n);
    GraphSpec spec;
    int rc = spec_load(path, NULL, 0, &spec, err);
    spec_free(&spec);
    return rc;
}

/* fuzz_overrides: the bytes are newline-separated --set values for the seed graph. */
static int run_overrides(const uint8_t *data, size_t n, MamlError *err) {
    int count;
    char *text;
    const char **ov = fuzz_split_overrides(data, n, &count, &text);
    GraphSpec spec;
    int rc = spec_load("graphs/omniglot_seed.yaml", ov, count, &spec, err);
    spec_free(&spec);
    free(ov);
    free(text);
    return rc;
}

/* fuzz_safetensors: the bytes are a safetensors file. */
static int run_safetensors(const uint8_t *data, size_t n, MamlError *err) {
    const char *path = fuzz_path(0, "in.safetensors");
    fuzz_write_file(path, data, n);
    TensorSet set;
    tensorset_init(&set);
    int rc = safetensors_read(path, &set, err);
    tensorset_free(&set);
    return rc;
}

/* fuzz_png_zip: a PNG is wrapped into a one-character archive; anything else is the archive. The
 * length picks the filter and the image size. */
static int run_png_zip(const uint8_t *data, size_t n, MamlError *err) {
    const char *zip = fuzz_path(1, "images_background.zip");
    if (fuzz_is_png(data, n))
        fuzz_wrap_png_zip(zip, data, n);
    else
        fuzz_write_file(zip, data, n);
    setenv("MAMLC_CACHE", fuzz_path(2, "cache"), 1);
    OmniglotArchive a;
    int size = 1 + (int)(n % OMNIGLOT_SRC_SIZE);
    int rc = omniglot_load(zip, n & 1 ? RESIZE_LANCZOS : RESIZE_NEAREST, size, &a, NULL, err);
    omniglot_free(&a);
    return rc;
}

typedef int (*Harness)(const uint8_t *, size_t, MamlError *);

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (tests run from the repository root)", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    cr_assert_geq(size, 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)size + 1);
    cr_assert(buf);
    cr_assert_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *n = (size_t)size;
    return buf;
}

/* Replays one stored input; returns the harness status with err filled. A failure must say why,
 * and nothing may take long (the fuzzers' timeout is 10 s; these inputs are tiny). */
static int replay(Harness h, const char *target, const char *name, MamlError *err) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s", REGRESSIONS, target, name);
    size_t n;
    uint8_t *data = read_all(path, &n);
    double t0 = maml_now_s();
    int rc = h(data, n, err);
    double took = maml_now_s() - t0;
    free(data);
    cr_expect(rc == 0 || err->message[0], "%s: failed without a message", path);
    cr_expect_lt(took, 2.0, "%s took %.1f s", path, took);
    return rc;
}

/* Replays every file in REGRESSIONS/target (none yet is fine). */
static void replay_all(Harness h, const char *target) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", REGRESSIONS, target);
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        MamlError err = {{0}};
        replay(h, target, e->d_name, &err);
    }
    closedir(d);
}

Test(fuzz_yaml, every_stored_input_replays_quickly, .timeout = 60) {
    replay_all(run_yaml, "yaml");
}

Test(fuzz_overrides, every_stored_input_replays_quickly, .timeout = 60) {
    replay_all(run_overrides, "overrides");
}

Test(fuzz_safetensors, every_stored_input_replays_quickly, .timeout = 60) {
    replay_all(run_safetensors, "safetensors");
}

Test(fuzz_png_zip, every_stored_input_replays_quickly, .timeout = 60) {
    replay_all(run_png_zip, "png_zip");
}

/* ------------------------------------------------------------------ the bugs --------------- */

/* Hang (compiler/frontend.c, expand_block and visit_block): a block whose `layers` is a
 * $reference was expanded from the raw reference node, which has no items, so it expanded to
 * nothing; eight levels of 20 instances each of such blocks made 20^8 empty expansions from a
 * 3 KB file (found while reading the expansion code the YAML fuzzer drives). Now the reference is
 * followed, every block adds layers, and the 64-layer limit stops the expansion at once. */
Test(fuzz_yaml, block_layers_by_reference_fan_out_hits_the_layer_limit, .timeout = 10) {
    MamlError err = {{0}};
    cr_expect_eq(replay(run_yaml, "yaml", "block_reference_fanout.yaml", &err), -1);
    cr_expect(strstr(err.message, "graph.yaml:8:23: more than 64 layers after block expansion"),
              "%s", err.message);
}

/* The same fix, seen from a valid graph: a referenced layer list is expanded, and a block that
 * reaches itself through a reference is a cycle rather than an empty block. */
/* A graph whose block `leaf` takes its layers from its own argument `s`, given as text. */
static int load_leaf_graph(const char *s, GraphSpec *spec, MamlError *err) {
    char text[1024];
    snprintf(text, sizeof text,
             "model:\n  input: [1]\n  loss: mse\n  blocks:\n"
             "    leaf: {args: {s: %s}, layers: $model.blocks.leaf.args.s}\n"
             "  layers: [{linear: {name: o, out_features: 1}}, {block: leaf}]\n"
             "maml: {n_way: 1, k_shot: 1, q_query: 1, meta_batch: 1, inner: {steps: 1, lr: 0.1},\n"
             "       outer: {optimizer: sgd, lr: 0.1}, eval: {inner_steps: 1, tasks: 1}}\n"
             "data: {dataset: sinusoid, seed: 1}\n",
             s);
    const char *path = fuzz_path(0, "graph.yaml");
    fuzz_write_file(path, text, strlen(text));
    return spec_load(path, NULL, 0, spec, err);
}

Test(fuzz_yaml, block_layers_by_reference_expand_and_cycles_are_found) {
    GraphSpec spec;
    MamlError err = {{0}};
    cr_assert_eq(load_leaf_graph("[relu, relu]", &spec, &err), 0, "%s", err.message);
    cr_expect_eq(spec.n_layers, 3);
    spec_free(&spec);
    cr_assert_eq(load_leaf_graph("[{block: leaf}]", &spec, &err), -1);
    cr_expect(strstr(err.message, "cyclic block definition: leaf -> leaf"), "%s", err.message);
}

/* Hang (compiler/frontend.c, read_children): the duplicate-key check compares each key with all
 * earlier ones, so a 1 MiB graph whose one mapping had 100,000 keys took over 30 s of CPU (more
 * under ASan). Mappings and sequences now hold at most 1024 entries; the file below is
 * generated, not stored, since it is as large as the file-size limit allows. */
Test(fuzz_yaml, huge_mapping_is_refused_quickly, .timeout = 10) {
    size_t cap = 1 << 20;
    char *text = malloc(cap + 1);
    cr_assert(text);
    size_t n = (size_t)snprintf(text, cap, "model: {blocks: {b: {args: {");
    for (int i = 0; n + 32 < cap - 64; i++) n += (size_t)snprintf(text + n, cap - n, "k%d: 0, ", i);
    n += (size_t)snprintf(text + n, cap - n, "z: 0}}}}\n");
    double t0 = maml_now_s();
    MamlError err = {{0}};
    cr_assert_eq(run_yaml((const uint8_t *)text, n, &err), -1);
    cr_expect_lt(maml_now_s() - t0, 2.0);
    cr_expect(strstr(err.message, "graph.yaml:1:28: mapping with more than 1024 entries"), "%s",
              err.message);
    free(text);
}
