/* The data pipeline: Omniglot archives, Pillow-exact resizing, the cache, splits, the task
 * sampler and sinusoid tasks.
 *
 * All tests share one cache directory made before any test runs (Criterion runs each test in
 * its own process), so the archives are decoded once per run of this binary and every other
 * test loads them from the cache. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <ftw.h>
#include <math.h>
#include <minizip/unzip.h>
#include <minizip/zip.h>
#include <sys/stat.h>
#include <unistd.h>

#include "omniglot.h"
#include "resize.h"
#include "safetensors.h"
#include "tasks.h"
#include "test_util.h"

#define BG_ZIP "data/omniglot/images_background.zip"
#define SMALL_ZIP "data/omniglot/images_background_small1.zip"
#define FIXTURE "fixtures/omniglot_resize/background_sample.safetensors"

static char shared_cache[64];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
    (void)set;
    snprintf(shared_cache, sizeof shared_cache, "/tmp/mamlc-test-data-XXXXXX");
    if (mkdtemp(shared_cache)) setenv("MAMLC_CACHE", shared_cache, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
    (void)stats;
    if (shared_cache[0]) nftw(shared_cache, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Directories made by the running test, removed by its fini even when an assertion fails. */
static char made_dirs[8][64];
static int n_made_dirs;

static const char *scratch_dir(int slot) {
    const char *d = temp_dir(slot);
    cr_assert(d, "cannot create a temporary directory");
    if (n_made_dirs < 8) snprintf(made_dirs[n_made_dirs++], sizeof made_dirs[0], "%s", d);
    return d;
}

static void remove_scratch_dirs(void) {
    for (int i = 0; i < n_made_dirs; i++) nftw(made_dirs[i], remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    n_made_dirs = 0;
}

TestSuite(omniglot_cache, .fini = remove_scratch_dirs);
TestSuite(bad_input, .fini = remove_scratch_dirs);

static DataSettings settings(ResizeFilter filter, SplitKind split) {
    DataSettings ds = {.dataset = DATASET_OMNIGLOT,
                       .seed = 1206,
                       .split = split,
                       .train_characters = 1200,
                       .rotations = {0},
                       .n_rotations = 1,
                       .image_size = 28,
                       .resize = filter};
    return ds;
}

static void open_data(OmniglotData *d, ResizeFilter filter, OmniglotLoadInfo *infos) {
    MamlError err = {{0}};
    DataSettings ds = settings(filter, SPLIT_BACKGROUND_EVALUATION);
    int rc = omniglot_open(shared_path(0, "data/omniglot"), &ds, d, infos, &err);
    cr_assert_eq(rc, 0, "%s", err.message);
}

/* ------------------------------------------------------------------------------------------ */
/* Loader                                                                                      */

Test(omniglot, counts_964_and_659_characters_of_20_drawings_in_30_and_20_alphabets) {
    OmniglotData d;
    OmniglotLoadInfo info[2];
    open_data(&d, RESIZE_NEAREST, info);
    cr_log_info("load: background %.3f s (%s), evaluation %.3f s (%s)", info[0].seconds,
                info[0].from_cache ? "cache" : "decoded", info[1].seconds,
                info[1].from_cache ? "cache" : "decoded");
    cr_expect_eq(d.background.n_characters, 964);
    cr_expect_eq(d.evaluation.n_characters, 659);
    cr_expect_eq(d.background.n_alphabets, 30);
    cr_expect_eq(d.evaluation.n_alphabets, 20);
    cr_expect_str_eq(d.background.characters[0], "Alphabet_of_the_Magi/character01");
    cr_expect_str_eq(d.evaluation.alphabets[19], "ULOG");
    /* 20 drawings each: every slot holds a real image (ink and background present) */
    const OmniglotArchive *arch[2] = {&d.background, &d.evaluation};
    for (int a = 0; a < 2; a++)
        for (int c = 0; c < arch[a]->n_characters; c++)
            for (int k = 0; k < OMNIGLOT_DRAWINGS; k++) {
                const uint8_t *px = omniglot_image(arch[a], c, k);
                int ink = 0;
                for (int i = 0; i < 28 * 28; i++) {
                    cr_assert(px[i] == 0 || px[i] == 255, "nearest pixels are 0 or 255");
                    ink += px[i] == 0;
                }
                cr_assert(ink > 0 && ink < 28 * 28 / 2, "%s drawing %d: %d ink pixels",
                          arch[a]->characters[c], k, ink);
            }
    omniglot_close(&d);
}

/* Compares every fixture tensor of one filter with the loader's image; returns the max error. */
static double max_fixture_error(ResizeFilter filter, int *checked) {
    MamlError err = {{0}};
    OmniglotArchive a;
    cr_assert_eq(omniglot_load(shared_path(0, BG_ZIP), filter, 28, &a, NULL, &err), 0, "%s",
                 err.message);
    TensorSet ts;
    tensorset_init(&ts);
    cr_assert_eq(safetensors_read(shared_path(1, FIXTURE), &ts, &err), 0, "%s", err.message);
    const char *prefix =
        filter == RESIZE_NEAREST ? "nearest/images_background/" : "lanczos/images_background/";
    double worst = 0.0;
    *checked = 0;
    for (int i = 0; i < ts.n; i++) {
        const Tensor *t = &ts.items[i];
        if (strncmp(t->name, prefix, strlen(prefix)) != 0) continue;
        const char *path = t->name + strlen(prefix), *slash = strrchr(path, '/');
        int c = 0, len = (int)(slash - path);
        while (c < a.n_characters &&
               !(strncmp(a.characters[c], path, (size_t)len) == 0 && !a.characters[c][len]))
            c++;
        cr_assert_lt(c, a.n_characters, "character of %s not found", t->name);
        int drawing = atoi(slash + 6) - 1; /* XXXX_YY.png: drawer YY, 1-based */
        const uint8_t *px = omniglot_image(&a, c, drawing);
        for (int k = 0; k < 28 * 28; k++) worst = fmax(worst, fabs(px[k] - tensor_get(t, k)));
        (*checked)++;
    }
    tensorset_free(&ts);
    omniglot_free(&a);
    return worst;
}

Test(omniglot, nearest_resize_matches_pillow_exactly_on_all_fixture_samples) {
    int n;
    double worst = max_fixture_error(RESIZE_NEAREST, &n);
    cr_expect_eq(n, 24);
    cr_expect_eq(worst, 0.0, "max |error| %g", worst);
}

Test(omniglot, lanczos_resize_within_one_level_of_pillow, .timeout = 60) {
    int n;
    double worst = max_fixture_error(RESIZE_LANCZOS, &n);
    cr_log_info("lanczos: max |error| vs Pillow over %d samples: %g / 255", n, worst);
    cr_expect_eq(n, 24);
    cr_expect_leq(worst, 1.0, "max |error| %g", worst);
}

Test(omniglot, pixel_values_background_one_ink_zero_and_invert_flips) {
    OmniglotData d;
    open_data(&d, RESIZE_NEAREST, NULL);
    DataSettings ds = settings(RESIZE_NEAREST, SPLIT_BACKGROUND_EVALUATION);
    for (int inv = 0; inv < 2; inv++) {
        ds.invert = inv;
        OmniglotSplits s;
        MamlError err = {{0}};
        cr_assert_eq(omniglot_splits(&d, &ds, &s, &err), 0, "%s", err.message);
        TaskBatch b;
        cr_assert_eq(task_batch_init(&b, 1, 1, 0, (ExampleShape){3, {1, 28, 28}}, 0, &err), 0);
        Rng rng;
        rng_seed(&rng, 5);
        cr_assert_eq(omniglot_sample_tasks(&s.train, 1, 1, 0, &rng, &b, &err), 0, "%s",
                     err.message);
        int ones = 0, zeros = 0;
        for (int i = 0; i < 28 * 28; i++) {
            ones += b.support_x[i] == 1.0f;
            zeros += b.support_x[i] == 0.0f;
        }
        cr_expect_eq(ones + zeros, 28 * 28);
        cr_expect(inv ? zeros > ones : ones > zeros, "background is %s", inv ? "0" : "1");
        task_batch_free(&b);
        omniglot_splits_free(&s);
    }
    omniglot_close(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Cache                                                                                       */

static void expect_same_archive(const OmniglotArchive *a, const OmniglotArchive *b) {
    cr_assert_eq(a->n_characters, b->n_characters);
    cr_assert_eq(a->n_alphabets, b->n_alphabets);
    for (int c = 0; c < a->n_characters; c++) {
        cr_assert_str_eq(a->characters[c], b->characters[c]);
        cr_assert_eq(a->alphabet_of[c], b->alphabet_of[c]);
    }
    size_t n = (size_t)a->n_characters * OMNIGLOT_DRAWINGS * 28 * 28;
    cr_assert_eq(memcmp(a->pixels, b->pixels, n), 0);
}

static void load_small(OmniglotArchive *a, OmniglotLoadInfo *info) {
    MamlError err = {{0}};
    cr_assert_eq(omniglot_load(shared_path(0, SMALL_ZIP), RESIZE_NEAREST, 28, a, info, &err), 0,
                 "%s", err.message);
}

static void damage_file(const char *path, long offset, bool truncate_instead) {
    if (truncate_instead) {
        cr_assert_eq(truncate(path, offset), 0);
        return;
    }
    FILE *f = fopen(path, "r+b");
    cr_assert(f);
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

Test(omniglot_cache, round_trip_then_corrupt_and_truncated_files_are_rebuilt) {
    setenv("MAMLC_CACHE", scratch_dir(0), 1);
    OmniglotArchive first, again;
    OmniglotLoadInfo info;
    load_small(&first, &info);
    cr_assert(!info.from_cache && info.cache_written, "first load decodes and writes the cache");
    cr_assert_eq(first.n_characters, 136);
    char path[1024];
    snprintf(path, sizeof path, "%s", info.cache_path);
    load_small(&again, &info);
    cr_expect(info.from_cache && !info.cache_rejected);
    cr_log_info("cache: cached load of %s: %.3f s", SMALL_ZIP, info.seconds);
    expect_same_archive(&first, &again);
    omniglot_free(&again);
    /* a flipped payload byte, a flipped header byte, a truncated file: each detected, rebuilt */
    struct {
        long offset;
        bool truncate;
    } damage[] = {{5000, false}, {20, false}, {4000, true}};
    for (int i = 0; i < 3; i++) {
        damage_file(path, damage[i].offset, damage[i].truncate);
        load_small(&again, &info);
        cr_expect(!info.from_cache && info.cache_rejected && info.cache_written, "damage %d", i);
        expect_same_archive(&first, &again);
        omniglot_free(&again);
        load_small(&again, &info);
        cr_expect(info.from_cache, "rebuilt cache is used after damage %d", i);
        omniglot_free(&again);
    }
    omniglot_free(&first);
}

Test(omniglot_cache, filters_and_sizes_get_separate_entries) {
    setenv("MAMLC_CACHE", scratch_dir(0), 1);
    MamlError err = {{0}};
    OmniglotArchive a, b;
    OmniglotLoadInfo ia, ib;
    const char *zip = shared_path(0, SMALL_ZIP);
    cr_assert_eq(omniglot_load(zip, RESIZE_NEAREST, 28, &a, &ia, &err), 0, "%s", err.message);
    cr_assert_eq(omniglot_load(zip, RESIZE_NEAREST, 14, &b, &ib, &err), 0, "%s", err.message);
    cr_expect(!ib.from_cache && strcmp(ia.cache_path, ib.cache_path) != 0);
    cr_expect_eq(b.image_size, 14);
    omniglot_free(&a);
    omniglot_free(&b);
}

/* ------------------------------------------------------------------------------------------ */
/* Splits                                                                                      */

Test(splits, background_evaluation_uses_whole_archives) {
    OmniglotData d;
    open_data(&d, RESIZE_NEAREST, NULL);
    DataSettings ds = settings(RESIZE_NEAREST, SPLIT_BACKGROUND_EVALUATION);
    OmniglotSplits s;
    MamlError err = {{0}};
    cr_assert_eq(omniglot_splits(&d, &ds, &s, &err), 0, "%s", err.message);
    cr_expect_eq(s.train.n_classes, 964);
    cr_expect_eq(s.val.n_classes, 659);
    cr_expect_eq(s.test.n_classes, 659);
    for (int i = 0; i < s.train.n_classes; i++)
        cr_assert(s.train.classes[i].archive == &d.background && s.train.classes[i].rotation == 0);
    cr_expect(s.test.classes[0].archive == &d.evaluation);
    omniglot_splits_free(&s);
    omniglot_close(&d);
}

static int char_key(const OmniglotData *d, const TaskClass *c) {
    return (c->archive == &d->evaluation ? d->background.n_characters : 0) + c->character;
}

Test(splits, shuffled_characters_1200x4_and_423x4_disjoint_and_seeded) {
    OmniglotData d;
    open_data(&d, RESIZE_NEAREST, NULL);
    DataSettings ds = settings(RESIZE_NEAREST, SPLIT_SHUFFLED_CHARACTERS);
    ds.n_rotations = 4;
    memcpy(ds.rotations, (int[]){0, 90, 180, 270}, sizeof ds.rotations);
    OmniglotSplits s, same, other;
    MamlError err = {{0}};
    cr_assert_eq(omniglot_splits(&d, &ds, &s, &err), 0, "%s", err.message);
    cr_expect_eq(s.train.n_classes, 1200 * 4);
    cr_expect_eq(s.test.n_classes, 423 * 4);
    cr_expect_eq(s.val.n_classes, 423 * 4);
    static int seen[1623];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < s.train.n_classes; i++) {
        cr_assert_eq(s.train.classes[i].rotation, (i % 4) * 90);
        seen[char_key(&d, &s.train.classes[i])] |= 1;
    }
    for (int i = 0; i < s.test.n_classes; i++) seen[char_key(&d, &s.test.classes[i])] |= 2;
    for (int k = 0; k < 1623; k++) cr_assert(seen[k] == 1 || seen[k] == 2, "character %d", k);
    cr_assert_eq(omniglot_splits(&d, &ds, &same, &err), 0);
    cr_expect_eq(memcmp(s.train.classes, same.train.classes, sizeof *s.train.classes * 4800), 0);
    ds.seed++;
    cr_assert_eq(omniglot_splits(&d, &ds, &other, &err), 0);
    cr_expect_neq(memcmp(s.train.classes, other.train.classes, sizeof *s.train.classes * 4800), 0);
    omniglot_splits_free(&s);
    omniglot_splits_free(&same);
    omniglot_splits_free(&other);
    omniglot_close(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Task sampler                                                                                */

typedef struct {
    OmniglotData data;
    OmniglotSplits splits;
} Fixture;

static void fixture_open(Fixture *f, bool rotations) {
    open_data(&f->data, RESIZE_NEAREST, NULL);
    DataSettings ds = settings(RESIZE_NEAREST,
                               rotations ? SPLIT_SHUFFLED_CHARACTERS : SPLIT_BACKGROUND_EVALUATION);
    if (rotations) {
        ds.n_rotations = 4;
        memcpy(ds.rotations, (int[]){0, 90, 180, 270}, sizeof ds.rotations);
    }
    MamlError err = {{0}};
    cr_assert_eq(omniglot_splits(&f->data, &ds, &f->splits, &err), 0, "%s", err.message);
}

static void fixture_close(Fixture *f) {
    omniglot_splits_free(&f->splits);
    omniglot_close(&f->data);
}

static void sample(const ClassSet *set, int T, int n, int k, int q, uint64_t seed, TaskBatch *b) {
    MamlError err = {{0}};
    cr_assert_eq(task_batch_init(b, T, n * k, n * q, (ExampleShape){3, {1, 28, 28}}, 0, &err), 0);
    Rng rng;
    rng_seed(&rng, seed);
    cr_assert_eq(omniglot_sample_tasks(set, n, k, q, &rng, b, &err), 0, "%s", err.message);
}

/* numpy.rot90(img, 1), applied rot/90 times. */
static void rot90_ref(const uint8_t *in, int rot, uint8_t *out) {
    uint8_t a[28 * 28], t[28 * 28];
    memcpy(a, in, sizeof a);
    for (int r = 0; r < rot / 90; r++) {
        for (int i = 0; i < 28; i++)
            for (int j = 0; j < 28; j++) t[i * 28 + j] = a[j * 28 + 27 - i];
        memcpy(a, t, sizeof a);
    }
    memcpy(out, a, sizeof a);
}

/* Every example's pixels are its recorded source drawing, rotated as its class says. */
static void expect_pixels_match_source(const ClassSet *set, const float *x, const int32_t *src,
                                       int count) {
    for (int e = 0; e < count; e++) {
        const TaskClass *c = &set->classes[src[e] / OMNIGLOT_DRAWINGS];
        uint8_t want[28 * 28];
        rot90_ref(omniglot_image(c->archive, c->character, src[e] % OMNIGLOT_DRAWINGS), c->rotation,
                  want);
        for (int i = 0; i < 28 * 28; i++)
            cr_assert_eq(x[(size_t)e * 784 + i], (float)(want[i] / 255.0), "example %d", e);
    }
}

/* Per task: n distinct classes, class slot i % n, k + q distinct drawings per class split
 * between support and query, labels a permutation consistent across support and query. */
static void check_task(const TaskBatch *b, int t, int n, int k, int q) {
    const int32_t *ss = b->support_src + t * n * k, *qs = b->query_src + t * n * q;
    const int32_t *sy = b->support_y + t * n * k, *qy = b->query_y + t * n * q;
    int label_seen[64] = {0};
    for (int j = 0; j < n; j++) {
        int cls = ss[j] / OMNIGLOT_DRAWINGS, used[OMNIGLOT_DRAWINGS] = {0};
        cr_assert(sy[j] >= 0 && sy[j] < n && !label_seen[sy[j]]++, "labels are a permutation");
        for (int j2 = 0; j2 < j; j2++) cr_assert_neq(ss[j2] / OMNIGLOT_DRAWINGS, cls);
        for (int m = 0; m < k + q; m++) {
            bool sup = m < k;
            int i = (sup ? m : m - k) * n + j, src = sup ? ss[i] : qs[i];
            cr_assert_eq(src / OMNIGLOT_DRAWINGS, cls, "example %d is class slot %d", i, j);
            cr_assert_eq(sup ? sy[i] : qy[i], sy[j], "one label per class");
            cr_assert(!used[src % OMNIGLOT_DRAWINGS]++, "drawing reused (support/query overlap)");
        }
    }
}

Test(sampler, tasks_have_distinct_balanced_classes_no_overlap_permuted_labels) {
    Fixture f;
    fixture_open(&f, false);
    int T = 32, n = 5, k = 1, q = 15;
    TaskBatch b;
    sample(&f.splits.train, T, n, k, q, 42, &b);
    for (int t = 0; t < T; t++) check_task(&b, t, n, k, q);
    expect_pixels_match_source(&f.splits.train, b.support_x, b.support_src, T * n * k);
    expect_pixels_match_source(&f.splits.train, b.query_x, b.query_src, T * n * q);
    task_batch_free(&b);
    fixture_close(&f);
}

Test(sampler, classes_labels_and_drawings_are_uniform_over_many_tasks) {
    Fixture f;
    fixture_open(&f, false);
    int T = 4000, n = 5, k = 1, q = 1;
    TaskBatch b;
    sample(&f.splits.train, T, n, k, q, 7, &b);
    static int per_class[964];
    int label_at_slot[5][5] = {{0}}, drawing[OMNIGLOT_DRAWINGS] = {0};
    for (int t = 0; t < T; t++)
        for (int j = 0; j < n; j++) {
            int src = b.support_src[t * n + j];
            per_class[src / OMNIGLOT_DRAWINGS]++;
            drawing[src % OMNIGLOT_DRAWINGS]++;
            label_at_slot[j][b.support_y[t * n + j]]++;
        }
    /* expected 20.7 draws per class; a fair sampler stays well within these loose bounds */
    for (int c = 0; c < 964; c++) cr_expect(per_class[c] > 3 && per_class[c] < 50, "class %d", c);
    for (int j = 0; j < n; j++)
        for (int l = 0; l < n; l++)
            cr_expect(label_at_slot[j][l] > 650 && label_at_slot[j][l] < 950, "slot %d label %d", j,
                      l);
    for (int d = 0; d < OMNIGLOT_DRAWINGS; d++) cr_expect(drawing[d] > 800 && drawing[d] < 1200);
    task_batch_free(&b);
    fixture_close(&f);
}

Test(sampler, same_seed_same_bytes_different_seed_different) {
    Fixture f;
    fixture_open(&f, false);
    TaskBatch a, b, c;
    sample(&f.splits.train, 8, 20, 1, 5, 1206, &a);
    sample(&f.splits.train, 8, 20, 1, 5, 1206, &b);
    sample(&f.splits.train, 8, 20, 1, 5, 1207, &c);
    size_t xs = sizeof(float) * 8 * 20 * 784, ys = sizeof(int32_t) * 8 * 20;
    cr_expect_eq(memcmp(a.support_x, b.support_x, xs), 0);
    cr_expect_eq(memcmp(a.query_x, b.query_x, xs * 5), 0);
    cr_expect_eq(memcmp(a.support_y, b.support_y, ys), 0);
    cr_expect_eq(memcmp(a.query_y, b.query_y, ys * 5), 0);
    cr_expect_neq(memcmp(a.support_x, c.support_x, xs), 0);
    cr_expect_neq(memcmp(a.support_src, c.support_src, ys), 0);
    task_batch_free(&a);
    task_batch_free(&b);
    task_batch_free(&c);
    fixture_close(&f);
}

Test(sampler, rotated_classes_show_rotated_drawings) {
    Fixture f;
    fixture_open(&f, true);
    int T = 64, n = 20, k = 1, q = 1;
    TaskBatch b;
    sample(&f.splits.train, T, n, k, q, 3, &b);
    int rot_seen[4] = {0};
    for (int t = 0; t < T; t++) check_task(&b, t, n, k, q);
    for (int e = 0; e < T * n; e++)
        rot_seen[f.splits.train.classes[b.support_src[e] / OMNIGLOT_DRAWINGS].rotation / 90]++;
    for (int r = 0; r < 4; r++) cr_expect_gt(rot_seen[r], 200, "rotation %d used", r * 90);
    expect_pixels_match_source(&f.splits.train, b.support_x, b.support_src, T * n);
    expect_pixels_match_source(&f.splits.train, b.query_x, b.query_src, T * n);
    task_batch_free(&b);
    fixture_close(&f);
}

Test(sampler, batch_converts_to_graph_input_tensors) {
    Fixture f;
    fixture_open(&f, false);
    TaskBatch b;
    sample(&f.splits.train, 4, 5, 1, 3, 9, &b);
    TensorSet ts;
    tensorset_init(&ts);
    MamlError err = {{0}};
    cr_assert_eq(task_batch_to_tensors(&b, &ts, &err), 0, "%s", err.message);
    const Tensor *sx = tensorset_find(&ts, "support_x"), *qy = tensorset_find(&ts, "query_y");
    cr_assert(sx && qy);
    cr_expect(shape_equal(sx->shape, SHAPE(4, 5, 1, 28, 28)));
    cr_expect(qy->dtype == TENSOR_I32 && shape_equal(qy->shape, SHAPE(4, 15)));
    cr_expect_eq(memcmp(sx->data, b.support_x, sizeof(float) * 4 * 5 * 784), 0);
    tensorset_free(&ts);
    task_batch_free(&b);
    fixture_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* Bad input                                                                                   */

Test(bad_input, missing_archive_names_path_and_download_location) {
    MamlError err = {{0}};
    OmniglotArchive a;
    cr_expect_eq(
        omniglot_load("/nonexistent/images_background.zip", RESIZE_NEAREST, 28, &a, NULL, &err),
        -1);
    cr_expect(strstr(err.message, "/nonexistent/images_background.zip"), "%s", err.message);
    cr_expect(strstr(err.message, "github.com/brendenlake/omniglot"), "%s", err.message);
    OmniglotData d;
    DataSettings ds = settings(RESIZE_NEAREST, SPLIT_BACKGROUND_EVALUATION);
    cr_expect_eq(omniglot_open("/nonexistent", &ds, &d, NULL, &err), -1);
    cr_expect(strstr(err.message, "/nonexistent/images_background.zip"), "%s", err.message);
}

Test(bad_input, garbage_zip_is_rejected_naming_the_file) {
    setenv("MAMLC_CACHE", scratch_dir(1), 1);
    char path[256];
    snprintf(path, sizeof path, "%s/images_background.zip", scratch_dir(0));
    cr_assert_eq(write_text(path, "this is not a zip archive, just some text\n"), 0);
    MamlError err = {{0}};
    OmniglotArchive a;
    cr_expect_eq(omniglot_load(path, RESIZE_NEAREST, 28, &a, NULL, &err), -1);
    cr_expect(strstr(err.message, path) && strstr(err.message, "zip"), "%s", err.message);
    cr_expect_null(a.pixels);
}

/* One genuine PNG from the small archive, to build synthetic archives with. */
static void *real_png(unsigned *size) {
    unzFile z = unzOpen64(shared_path(0, SMALL_ZIP));
    cr_assert(z);
    unz_file_info64 fi;
    cr_assert_eq(unzLocateFile(z, "images_background_small1/Balinese/character01/0108_01.png", 1),
                 UNZ_OK);
    cr_assert_eq(unzGetCurrentFileInfo64(z, &fi, NULL, 0, NULL, 0, NULL, 0), UNZ_OK);
    void *buf = malloc(fi.uncompressed_size);
    cr_assert_eq(unzOpenCurrentFile(z), UNZ_OK);
    cr_assert_eq(unzReadCurrentFile(z, buf, (unsigned)fi.uncompressed_size),
                 (int)fi.uncompressed_size);
    unzCloseCurrentFile(z);
    unzClose(z);
    *size = (unsigned)fi.uncompressed_size;
    return buf;
}

typedef enum { LAYOUT_GOOD, ZIP_19_DRAWINGS, ZIP_STRAY_FILE, ZIP_BAD_PNG } ZipVariant;

/* Writes root/Alpha/character01/0001_YY.png x 20 (stored, uncompressed) with one defect. */
static const char *make_zip(ZipVariant v) {
    static char path[256];
    snprintf(path, sizeof path, "%s/test.zip", scratch_dir(2));
    unsigned size;
    void *png = real_png(&size);
    zipFile z = zipOpen64(path, APPEND_STATUS_CREATE);
    cr_assert(z);
    zip_fileinfo zi;
    memset(&zi, 0, sizeof zi);
    for (int d = 1; d <= 20 + (v == ZIP_STRAY_FILE); d++) {
        if (v == ZIP_19_DRAWINGS && d == 7) continue;
        char name[128];
        snprintf(name, sizeof name,
                 d <= 20 ? "root/Alpha/character01/0001_%02d.png" : "root/Alpha/notes.txt", d);
        cr_assert_eq(zipOpenNewFileInZip64(z, name, &zi, NULL, 0, NULL, 0, NULL, 0, 0, 0), ZIP_OK);
        const char *garbage = "not a PNG at all";
        bool bad = v == ZIP_BAD_PNG && d == 13;
        cr_assert_eq(zipWriteInFileInZip(z, bad ? garbage : png, bad ? 16 : size), ZIP_OK);
        cr_assert_eq(zipCloseFileInZip(z), ZIP_OK);
    }
    cr_assert_eq(zipClose(z, NULL), ZIP_OK);
    free(png);
    return path;
}

static void expect_load_error(const char *zip, const char *needle1, const char *needle2) {
    MamlError err = {{0}};
    OmniglotArchive a;
    cr_expect_eq(omniglot_load(zip, RESIZE_NEAREST, 28, &a, NULL, &err), -1, "loads: %s", zip);
    cr_expect(strstr(err.message, zip), "names the archive: %s", err.message);
    cr_expect(strstr(err.message, needle1) && strstr(err.message, needle2), "%s", err.message);
}

Test(bad_input, synthetic_archive_with_correct_layout_loads) {
    setenv("MAMLC_CACHE", scratch_dir(1), 1);
    MamlError err = {{0}};
    OmniglotArchive a;
    cr_assert_eq(omniglot_load(make_zip(LAYOUT_GOOD), RESIZE_LANCZOS, 28, &a, NULL, &err), 0, "%s",
                 err.message);
    cr_expect_eq(a.n_characters, 1);
    cr_expect_str_eq(a.characters[0], "Alpha/character01");
    omniglot_free(&a);
}

Test(bad_input, layout_errors_png_errors_and_crc_errors_name_the_entry) {
    setenv("MAMLC_CACHE", scratch_dir(1), 1);
    expect_load_error(make_zip(ZIP_19_DRAWINGS), "root/Alpha/character01", "19 drawings");
    expect_load_error(make_zip(ZIP_STRAY_FILE), "root/Alpha/notes.txt", "unexpected entry");
    expect_load_error(make_zip(ZIP_BAD_PNG), "root/Alpha/character01/0001_13.png", "PNG");
    /* flip a byte inside a stored entry's data: the zip CRC catches it */
    const char *zip = make_zip(LAYOUT_GOOD);
    damage_file(zip, 2000, false);
    expect_load_error(zip, "character01/0001_", "corrupt");
}

Test(bad_input, n_way_too_large_and_too_many_shots_are_errors) {
    Fixture f;
    fixture_open(&f, false);
    MamlError err = {{0}};
    TaskBatch b;
    Rng rng;
    rng_seed(&rng, 1);
    ExampleShape img = {3, {1, 28, 28}};
    cr_assert_eq(task_batch_init(&b, 2, 965, 965, img, 0, &err), 0);
    cr_expect_eq(omniglot_sample_tasks(&f.splits.train, 965, 1, 1, &rng, &b, &err), -1);
    cr_expect(strstr(err.message, "n_way 965") && strstr(err.message, "964"), "%s", err.message);
    task_batch_free(&b);
    cr_assert_eq(task_batch_init(&b, 2, 5 * 5, 5 * 16, img, 0, &err), 0);
    cr_expect_eq(omniglot_sample_tasks(&f.splits.train, 5, 5, 16, &rng, &b, &err), -1);
    cr_expect(strstr(err.message, "k_shot + maml.q_query = 21"), "%s", err.message);
    task_batch_free(&b);
    fixture_close(&f);
}

Test(bad_input, bad_split_settings_name_the_setting) {
    Fixture f;
    fixture_open(&f, false);
    MamlError err = {{0}};
    OmniglotSplits s;
    DataSettings ds = settings(RESIZE_NEAREST, SPLIT_SHUFFLED_CHARACTERS);
    ds.train_characters = 1623;
    cr_expect_eq(omniglot_splits(&f.data, &ds, &s, &err), -1);
    cr_expect(strstr(err.message, "data.train_characters"), "%s", err.message);
    ds.train_characters = 1200;
    ds.rotations[0] = 45;
    cr_expect_eq(omniglot_splits(&f.data, &ds, &s, &err), -1);
    cr_expect(strstr(err.message, "data.rotations"), "%s", err.message);
    fixture_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* Sinusoid                                                                                    */

static DataSettings sinusoid_settings(void) {
    DataSettings ds = {.dataset = DATASET_SINUSOID,
                       .seed = 1,
                       .amplitude = {0.1, 5.0},
                       .phase = {0.0, M_PI},
                       .x_range = {-5.0, 5.0}};
    return ds;
}

Test(sinusoid, targets_follow_amplitude_and_phase_within_ranges) {
    DataSettings ds = sinusoid_settings();
    MamlError err = {{0}};
    TaskBatch b;
    cr_assert_eq(task_batch_init(&b, 25, 10, 10, (ExampleShape){1, {1}}, 1, &err), 0);
    double amp[25], ph[25];
    Rng rng;
    rng_seed(&rng, 11);
    cr_assert_eq(sinusoid_sample(&ds, &rng, &b, amp, ph, &err), 0, "%s", err.message);
    for (int t = 0; t < 25; t++) {
        cr_assert(amp[t] >= 0.1 && amp[t] <= 5.0 && ph[t] >= 0 && ph[t] <= M_PI);
        for (int i = 0; i < 10; i++) {
            float xs = b.support_x[t * 10 + i], xq = b.query_x[t * 10 + i];
            cr_assert(xs >= -5 && xs <= 5 && xq >= -5 && xq <= 5);
            cr_assert_float_eq(b.support_t[t * 10 + i], amp[t] * sin(xs - ph[t]), 1e-5);
            cr_assert_float_eq(b.query_t[t * 10 + i], amp[t] * sin(xq - ph[t]), 1e-5);
        }
    }
    task_batch_free(&b);
}

Test(sinusoid, deterministic_per_seed_and_rejects_bad_ranges) {
    DataSettings ds = sinusoid_settings();
    MamlError err = {{0}};
    TaskBatch a, b;
    ExampleShape one = {1, {1}};
    cr_assert_eq(task_batch_init(&a, 4, 5, 7, one, 1, &err), 0);
    cr_assert_eq(task_batch_init(&b, 4, 5, 7, one, 1, &err), 0);
    Rng r1, r2;
    rng_seed(&r1, 3);
    rng_seed(&r2, 3);
    cr_assert_eq(sinusoid_sample(&ds, &r1, &a, NULL, NULL, &err), 0);
    cr_assert_eq(sinusoid_sample(&ds, &r2, &b, NULL, NULL, &err), 0);
    cr_expect_eq(memcmp(a.query_t, b.query_t, sizeof(float) * 28), 0);
    cr_assert_eq(sinusoid_sample(&ds, &r2, &b, NULL, NULL, &err), 0);
    cr_expect_neq(memcmp(a.query_t, b.query_t, sizeof(float) * 28), 0);
    ds.amplitude[0] = 6.0;
    cr_expect_eq(sinusoid_sample(&ds, &r1, &a, NULL, NULL, &err), -1);
    cr_expect(strstr(err.message, "amplitude"), "%s", err.message);
    task_batch_free(&a);
    task_batch_free(&b);
}
