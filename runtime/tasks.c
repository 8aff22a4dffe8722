/* Splits, the Omniglot task sampler and sinusoid tasks (see tasks.h for the contracts). */
#include "tasks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Splits                                                                                      */

/* A character of either archive, in the global order background then evaluation. */
typedef struct {
    const OmniglotArchive *archive;
    int character;
} CharRef;

static int check_rotations(const DataSettings *ds, int *rot, int *n_rot, MamlError *err) {
    *n_rot = ds->n_rotations > 0 ? ds->n_rotations : 1;
    if (ds->n_rotations <= 0) rot[0] = 0;
    if (ds->n_rotations > 4)
        return maml_fail(err, "data.rotations: at most 4 rotations, found %d", ds->n_rotations);
    for (int i = 0; i < ds->n_rotations; i++) {
        int r = ds->rotations[i];
        if (r != 0 && r != 90 && r != 180 && r != 270)
            return maml_fail(err, "data.rotations: %d is not one of 0, 90, 180, 270", r);
        for (int j = 0; j < i; j++)
            if (rot[j] == r) return maml_fail(err, "data.rotations: %d is listed twice", r);
        rot[i] = r;
    }
    return 0;
}

static int class_set_make(ClassSet *s, const CharRef *chars, int n_chars, const int *rot, int n_rot,
                          const DataSettings *ds, MamlError *err) {
    s->classes = maml_calloc((size_t)n_chars * n_rot, sizeof *s->classes, err);
    if (!s->classes) return -1;
    s->n_characters = n_chars;
    s->n_classes = n_chars * n_rot;
    s->image_size = n_chars ? chars[0].archive->image_size : ds->image_size;
    s->invert = ds->invert;
    for (int c = 0; c < n_chars; c++)
        for (int r = 0; r < n_rot; r++)
            s->classes[c * n_rot + r] = (TaskClass){chars[c].archive, chars[c].character, rot[r]};
    return 0;
}

/* Every character of both archives, background first, each in path order. */
static CharRef *all_characters(const OmniglotData *d, int *n, MamlError *err) {
    const OmniglotArchive *arch[2] = {&d->background, &d->evaluation};
    *n = arch[0]->n_characters + arch[1]->n_characters;
    CharRef *refs = maml_calloc((size_t)*n, sizeof *refs, err);
    if (!refs) return NULL;
    int k = 0;
    for (int a = 0; a < 2; a++)
        for (int c = 0; c < arch[a]->n_characters; c++) refs[k++] = (CharRef){arch[a], c};
    return refs;
}

static void shuffle_chars(CharRef *v, int n, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed ^ OMNIGLOT_SPLIT_SALT);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_uniform_int(&rng, (uint64_t)i + 1);
        CharRef t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

int omniglot_splits(const OmniglotData *data, const DataSettings *ds, OmniglotSplits *out,
                    MamlError *err) {
    memset(out, 0, sizeof *out);
    int rot[4], n_rot, n = 0;
    if (check_rotations(ds, rot, &n_rot, err)) return -1;
    if (ds->split != SPLIT_BACKGROUND_EVALUATION && ds->split != SPLIT_SHUFFLED_CHARACTERS)
        return maml_fail(err, "data.split: unknown split %d", (int)ds->split);
    CharRef *all = all_characters(data, &n, err);
    if (!all) return -1;
    int n_train = data->background.n_characters;
    if (ds->split == SPLIT_SHUFFLED_CHARACTERS) {
        n_train = ds->train_characters;
        if (n_train <= 0 || n_train >= n) {
            free(all);
            return maml_fail(err,
                             "data.train_characters: %d must be in 1..%d (there are %d "
                             "characters)",
                             n_train, n - 1, n);
        }
        shuffle_chars(all, n, ds->seed);
    }
    int rc = class_set_make(&out->train, all, n_train, rot, n_rot, ds, err);
    if (!rc) rc = class_set_make(&out->val, all + n_train, n - n_train, rot, n_rot, ds, err);
    if (!rc) rc = class_set_make(&out->test, all + n_train, n - n_train, rot, n_rot, ds, err);
    free(all);
    if (rc) omniglot_splits_free(out);
    return rc;
}

void omniglot_splits_free(OmniglotSplits *s) {
    if (!s) return;
    free(s->train.classes);
    free(s->val.classes);
    free(s->test.classes);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------ */
/* Batches                                                                                     */

int task_batch_init(TaskBatch *b, int tasks, int support, int query, ExampleShape x_shape,
                    int y_features, MamlError *err) {
    memset(b, 0, sizeof *b);
    if (tasks <= 0 || support <= 0 || query < 0 || y_features < 0 || x_shape.rank < 1 ||
        x_shape.rank > 3)
        return maml_fail(err, "task batch: invalid sizes (tasks %d, support %d, query %d)", tasks,
                         support, query);
    int64_t numel = 1;
    for (int i = 0; i < x_shape.rank; i++) numel *= x_shape.dims[i];
    *b = (TaskBatch){.tasks = tasks,
                     .support = support,
                     .query = query,
                     .x_shape = x_shape,
                     .y_features = y_features,
                     .x_numel = numel};
    size_t ns = (size_t)tasks * support, nq = (size_t)tasks * query;
    b->support_x = maml_calloc(ns * (size_t)numel, sizeof(float), err);
    b->query_x = maml_calloc(nq * (size_t)numel + 1, sizeof(float), err);
    if (y_features == 0) {
        b->support_y = maml_calloc(ns, sizeof(int32_t), err);
        b->query_y = maml_calloc(nq + 1, sizeof(int32_t), err);
        b->support_src = maml_calloc(ns, sizeof(int32_t), err);
        b->query_src = maml_calloc(nq + 1, sizeof(int32_t), err);
    } else {
        b->support_t = maml_calloc(ns * (size_t)y_features, sizeof(float), err);
        b->query_t = maml_calloc(nq * (size_t)y_features + 1, sizeof(float), err);
    }
    bool ok = b->support_x && b->query_x &&
              (y_features ? b->support_t && b->query_t
                          : b->support_y && b->query_y && b->support_src && b->query_src);
    if (!ok) task_batch_free(b);
    return ok ? 0 : -1;
}

void task_batch_free(TaskBatch *b) {
    if (!b) return;
    free(b->support_x);
    free(b->query_x);
    free(b->support_y);
    free(b->query_y);
    free(b->support_t);
    free(b->query_t);
    free(b->support_src);
    free(b->query_src);
    memset(b, 0, sizeof *b);
}

static int add_pair(const TaskBatch *b, int count, const char *xname, const float *x,
                    const char *yname, const void *y, TensorSet *out, MamlError *err) {
    Shape xs = {.rank = 2 + b->x_shape.rank, .dims = {b->tasks, count}};
    for (int i = 0; i < b->x_shape.rank; i++) xs.dims[2 + i] = b->x_shape.dims[i];
    Shape ys = {.rank = b->y_features ? 3 : 2, .dims = {b->tasks, count, b->y_features}};
    TensorDType yt = b->y_features ? TENSOR_F32 : TENSOR_I32;
    if (!tensorset_add(out, xname, TENSOR_F32, xs, x, err)) return -1;
    return tensorset_add(out, yname, yt, ys, y, err) ? 0 : -1;
}

int task_batch_to_tensors(const TaskBatch *b, TensorSet *out, MamlError *err) {
    const void *sy = b->y_features ? (const void *)b->support_t : (const void *)b->support_y;
    const void *qy = b->y_features ? (const void *)b->query_t : (const void *)b->query_y;
    if (add_pair(b, b->support, "support_x", b->support_x, "support_y", sy, out, err)) return -1;
    return add_pair(b, b->query, "query_x", b->query_x, "query_y", qy, out, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Omniglot task sampler                                                                       */

/* Reads the image as numpy does (uint8 / 255. in double), then rounds to float once, which is
 * what the PyTorch loaders feed the model. */
static void make_pixel_table(float *lut, bool invert) {
    for (int v = 0; v < 256; v++) {
        double x = v / 255.0;
        lut[v] = (float)(invert ? 1.0 - x : x);
    }
}

/* Writes one drawing rotated counter-clockwise by cls->rotation (numpy.rot90 semantics). */
static void write_image(const TaskClass *cls, int drawing, int n, const float *lut, float *out) {
    const uint8_t *in = omniglot_image(cls->archive, cls->character, drawing);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            int si = i, sj = j;
            if (cls->rotation == 90) {
                si = j;
                sj = n - 1 - i;
            } else if (cls->rotation == 180) {
                si = n - 1 - i;
                sj = n - 1 - j;
            } else if (cls->rotation == 270) {
                si = n - 1 - j;
                sj = i;
            }
            out[i * n + j] = lut[in[si * n + sj]];
        }
}

/* Floyd's algorithm: k distinct values of [0, n) in O(k^2) time and no O(n) memory. */
static void choose_distinct(Rng *rng, int n, int k, int *out) {
    int m = 0;
    for (int j = n - k; j < n; j++) {
        int t = (int)rng_uniform_int(rng, (uint64_t)j + 1);
        for (int i = 0; i < m; i++)
            if (out[i] == t) {
                t = j;
                break;
            }
        out[m++] = t;
    }
}

static void permutation(Rng *rng, int n, int *out) {
    for (int i = 0; i < n; i++) out[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_uniform_int(rng, (uint64_t)i + 1), t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

static int check_sampler_args(const ClassSet *set, int n_way, int k_shot, int q_query,
                              const TaskBatch *b, MamlError *err) {
    int n = set->image_size;
    if (n_way < 1 || k_shot < 1 || q_query < 0)
        return maml_fail(err, "maml: n_way %d and k_shot %d must be >= 1, q_query %d >= 0", n_way,
                         k_shot, q_query);
    if (n_way > set->n_classes)
        return maml_fail(err, "maml.n_way %d exceeds the %d classes available in the split", n_way,
                         set->n_classes);
    if (k_shot + q_query > OMNIGLOT_DRAWINGS)
        return maml_fail(err,
                         "maml.k_shot + maml.q_query = %d exceeds the %d drawings per "
                         "character",
                         k_shot + q_query, OMNIGLOT_DRAWINGS);
    if (b->support != n_way * k_shot || b->query != n_way * q_query || b->y_features != 0 ||
        b->x_numel != (int64_t)n * n)
        return maml_fail(err,
                         "task batch: shaped for %d support / %d query examples of %lld "
                         "pixels, the sampler needs %d / %d of %d",
                         b->support, b->query, (long long)b->x_numel, n_way * k_shot,
                         n_way * q_query, n * n);
    return 0;
}

/* Per-task scratch: chosen classes, their labels, one class's drawings. */
typedef struct {
    int *cls, *label, draw[OMNIGLOT_DRAWINGS];
    float lut[256];
} SampleScratch;

static void sample_task(const ClassSet *set, int n_way, int k_shot, int q_query, Rng *rng,
                        SampleScratch *s, TaskBatch *b, int t) {
    int n = set->image_size;
    size_t px = (size_t)n * n;
    choose_distinct(rng, set->n_classes, n_way, s->cls);
    permutation(rng, n_way, s->label);
    for (int j = 0; j < n_way; j++) {
        const TaskClass *cls = &set->classes[s->cls[j]];
        for (int d = 0; d < OMNIGLOT_DRAWINGS; d++) s->draw[d] = d;
        for (int m = 0; m < k_shot + q_query; m++) { /* partial Fisher-Yates */
            int r = m + (int)rng_uniform_int(rng, (uint64_t)(OMNIGLOT_DRAWINGS - m)),
                tmp = s->draw[m];
            s->draw[m] = s->draw[r];
            s->draw[r] = tmp;
        }
        for (int m = 0; m < k_shot + q_query; m++) {
            bool sup = m < k_shot;
            size_t i = (size_t)t * (sup ? b->support : b->query) +
                       (size_t)(sup ? m : m - k_shot) * n_way + (size_t)j;
            write_image(cls, s->draw[m], n, s->lut, (sup ? b->support_x : b->query_x) + i * px);
            (sup ? b->support_y : b->query_y)[i] = s->label[j];
            (sup ? b->support_src : b->query_src)[i] = s->cls[j] * OMNIGLOT_DRAWINGS + s->draw[m];
        }
    }
}

int omniglot_sample_tasks(const ClassSet *set, int n_way, int k_shot, int q_query, Rng *rng,
                          TaskBatch *b, MamlError *err) {
    if (check_sampler_args(set, n_way, k_shot, q_query, b, err)) return -1;
    SampleScratch s;
    s.cls = maml_calloc((size_t)n_way * 2, sizeof(int), err);
    if (!s.cls) return -1;
    s.label = s.cls + n_way;
    make_pixel_table(s.lut, set->invert);
    for (int t = 0; t < b->tasks; t++) sample_task(set, n_way, k_shot, q_query, rng, &s, b, t);
    free(s.cls);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Sinusoid                                                                                    */

static double uniform_in(Rng *rng, const double range[2]) {
    return range[0] + (range[1] - range[0]) * rng_uniform(rng);
}

static void sinusoid_points(Rng *rng, const DataSettings *ds, double amp, double ph, int count,
                            float *x, float *y) {
    for (int i = 0; i < count; i++) {
        double xi = uniform_in(rng, ds->x_range);
        x[i] = (float)xi;
        y[i] = (float)(amp * sin(xi - ph));
    }
}

int sinusoid_sample(const DataSettings *ds, Rng *rng, TaskBatch *b, double *amplitude,
                    double *phase, MamlError *err) {
    if (b->x_numel != 1 || b->y_features != 1)
        return maml_fail(err, "task batch: sinusoid tasks need x_shape [1] and 1 target feature");
    if (!(ds->amplitude[0] <= ds->amplitude[1]) || !(ds->phase[0] <= ds->phase[1]) ||
        !(ds->x_range[0] <= ds->x_range[1]))
        return maml_fail(err,
                         "data: sinusoid ranges must be [low, high] with low <= high "
                         "(amplitude [%g, %g], phase [%g, %g], x_range [%g, %g])",
                         ds->amplitude[0], ds->amplitude[1], ds->phase[0], ds->phase[1],
                         ds->x_range[0], ds->x_range[1]);
    for (int t = 0; t < b->tasks; t++) {
        double amp = uniform_in(rng, ds->amplitude), ph = uniform_in(rng, ds->phase);
        if (amplitude) amplitude[t] = amp;
        if (phase) phase[t] = ph;
        size_t s = (size_t)t * b->support, q = (size_t)t * b->query;
        sinusoid_points(rng, ds, amp, ph, b->support, b->support_x + s, b->support_t + s);
        sinusoid_points(rng, ds, amp, ph, b->query, b->query_x + q, b->query_t + q);
    }
    return 0;
}
