/* Meta-learning tasks: the Omniglot splits and task sampler, and the sinusoid task generator
 * (MAML paper §5.1).
 *
 * Sampling is a pure function of (split, RNG state): it touches nothing else, so a producer
 * thread can fill batches ahead of the consumer and the same seed gives the same tasks, byte for
 * byte, on every run, thread and backend. */
#ifndef MAMLC_TASKS_H
#define MAMLC_TASKS_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "omniglot.h"
#include "rng.h"
#include "spec.h"
#include "tensor.h"

/* One class: a character of an archive seen at one rotation (degrees counter-clockwise, as
 * numpy.rot90 and PIL's rotate turn). */
typedef struct {
    const OmniglotArchive *archive;
    int character; /* index into archive->characters */
    int rotation;  /* 0, 90, 180 or 270 */
} TaskClass;

/* The classes tasks of one split are drawn from, character-major: (c0, r0), (c0, r1), ... */
typedef struct {
    TaskClass *classes;
    int n_classes;
    int n_characters;
    int image_size;
    bool invert; /* false: background 1.0, ink 0.0 */
} ClassSet;

/* SPLIT_BACKGROUND_EVALUATION: train = images_background, val = test = images_evaluation (the
 * seed's protocol). SPLIT_SHUFFLED_CHARACTERS (the MAML paper's): all characters, background then
 * evaluation in path order, shuffled by an RNG seeded with data.seed ^ OMNIGLOT_SPLIT_SALT;
 * train = the first data.train_characters, val = test = the rest. Either way each rotation in
 * data.rotations makes a distinct class (none listed = 0 only). The splits point into data,
 * which must outlive them. */
typedef struct {
    ClassSet train, val, test;
} OmniglotSplits;

/* Keeps the split shuffle's stream apart from task streams seeded with data.seed itself. */
#define OMNIGLOT_SPLIT_SALT 0x53504c4954ull /* "SPLIT" */

/* Builds the splits; errors name the offending setting (data.train_characters,
 * data.rotations). */
int omniglot_splits(const OmniglotData *data, const DataSettings *ds, OmniglotSplits *out,
                    MamlError *err);

/* Releases the class lists; safe on a zeroed struct. */
void omniglot_splits_free(OmniglotSplits *s);

/* A batch of T tasks, in the graph's input layout: support_x [T, S, ...x_shape], query_x
 * [T, Q, ...x_shape], and support_y/query_y [T, S|Q] int32 class labels when y_features is 0,
 * else [T, S|Q, y_features] float regression targets. */
typedef struct {
    int tasks, support, query;
    ExampleShape x_shape;
    int y_features;
    int64_t x_numel; /* elements of one example */
    float *support_x, *query_x;
    int32_t *support_y, *query_y; /* labels (y_features == 0) */
    float *support_t, *query_t;   /* targets (y_features > 0) */
    /* Omniglot provenance of each example, class index in the ClassSet * 20 + drawing: for
     * checks and per-class analysis; the graph never sees it. */
    int32_t *support_src, *query_src;
} TaskBatch;

/* Allocates a batch (zero-filled). */
int task_batch_init(TaskBatch *b, int tasks, int support, int query, ExampleShape x_shape,
                    int y_features, MamlError *err);

/* Releases a batch; safe on a zeroed one. */
void task_batch_free(TaskBatch *b);

/* Adds support_x, support_y, query_x, query_y to out (F32 inputs, I32 labels or F32 targets),
 * replacing tensors of those names. */
int task_batch_to_tensors(const TaskBatch *b, TensorSet *out, MamlError *err);

/* Fills b (initialised with support = n_way*k_shot, query = n_way*q_query, x_shape [1, S, S] and
 * y_features 0) with b->tasks tasks from set. Per task, in this order of RNG use: n_way distinct
 * classes (Floyd's algorithm), a random permutation giving their labels, then per class
 * k_shot + q_query distinct drawings (partial Fisher-Yates), the first k_shot for support and the
 * rest for query. Example i of the support (and of the query) set belongs to class slot
 * i % n_way, i.e. shot i / n_way: every prefix of n_way examples holds each class once (the MAML
 * reference code's order). Pixels are v / 255 (1 - v / 255 when invert), rotated per class.
 * Errors: n_way > classes in the set, k_shot + q_query > 20, a batch of the wrong shape. */
int omniglot_sample_tasks(const ClassSet *set, int n_way, int k_shot, int q_query, Rng *rng,
                          TaskBatch *b, MamlError *err);

/* Fills b (initialised with x_shape [1], y_features 1) with b->tasks sinusoid regression tasks:
 * per task amplitude A ~ U[data.amplitude], phase p ~ U[data.phase], then b->support and
 * b->query inputs x ~ U[data.x_range], targets A sin(x - p) (the MAML reference code's
 * definition). amplitude and phase, when not NULL, receive each task's values (b->tasks each). */
int sinusoid_sample(const DataSettings *ds, Rng *rng, TaskBatch *b, double *amplitude,
                    double *phase, MamlError *err);

#endif
