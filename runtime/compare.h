/* Judging a backend against the reference: the per-tensor comparison every test and
 * scripts/gpu_compare use, and the "N training steps side by side" driver.
 *
 * A tensor's error is max|got - want| / scale, where scale is the tensor's largest magnitude, or
 * its group's ("grad/", "adam/m/", ...) when the tensor is zero up to rounding (below 1e-9 of the
 * group), like the conv-bias gradients batch norm cancels exactly: only rounding noise is left in
 * those, and dividing it by its own size would call noise an error. The bound is a fixed floor, or
 * COMPARE_REF32_FACTOR times the float32 reference's own error against the same float64 result
 * where that is larger, since a float32 backend cannot be asked to beat float32 rounding. */
#ifndef MAMLC_COMPARE_H
#define MAMLC_COMPARE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "spec.h"
#include "tensor.h"

#define COMPARE_REF32_FACTOR 3.0

/* "grad/conv1.x" -> "grad", "adam/m/x" -> "adam/m", "x" -> "" (truncated to size). */
void compare_group_of(const char *name, char *buf, size_t size);

/* The scale t (an item of want) is measured against, as described above; never 0. */
double compare_scale(const TensorSet *want, const Tensor *t);

/* max|got - want| / scale and ||got - want|| / ||want|| (or ||got - want|| when want is 0); a NaN
 * on one side only is an infinite error, NaN on both sides none. */
void compare_errors(const Tensor *got, const Tensor *want, double scale, double *max_rel,
                    double *l2_rel);

/* Outcome of comparing two sets. */
typedef struct {
    int n;        /* tensors of want */
    int over;     /* over their bound */
    int missing;  /* absent from got (or ref32), or of another shape there */
    double worst; /* largest error/bound */
    double worst_err, worst_bound;
    char worst_name[128]; /* the tensor with the largest error/bound */
} CompareSummary;

/* Compares every tensor of want with got's tensor of the same name: bound = floor, or
 * COMPARE_REF32_FACTOR x ref32's error where ref32 (may be NULL) gives a larger one. When out is
 * not NULL, prints to it a line per tensor (all of them when verbose, else only those over their
 * bound or missing) and a summary line that starts with label. Returns over + missing. */
int compare_sets(const TensorSet *got, const TensorSet *want, const TensorSet *ref32, double floor,
                 const char *label, FILE *out, bool verbose, CompareSummary *summary);

/* ---- training steps side by side ---- */

/* Uniform noise in [0, 1) for 4-d support_x/query_x (regression inputs keep their values): no two
 * pixels of a pooling window nearly tie, so float32 runs take the argmaxes float64 takes. */
void compare_noise_images(TensorSet *in);

/* Copies every output that names an input back into the inputs, and counts adam/step up: what the
 * trainer does between steps. */
void compare_feed_back(TensorSet *in, const TensorSet *out);

/* A copy of from (to is initialised here) with every real tensor as real_type; integer tensors
 * keep their type. */
int compare_copy_as(const TensorSet *from, TensorDType real_type, TensorSet *to, MamlError *err);

/* The start of a comparison: bench_inputs(spec, g, seed), with noise images when noise is set,
 * every real tensor rounded to float32 (as F32), so that float32 and float64 runs start from the
 * same values and their differences come from the arithmetic alone. */
int compare_start_state(const GraphSpec *spec, const Graph *g, uint64_t seed, bool noise,
                        TensorSet *out, MamlError *err);

/* One backend's run of training steps. */
typedef struct {
    Backend *backend; /* not owned */
    const char *label;
    TensorSet state; /* the start, then fed back after every step: the final state */
    TensorSet first; /* outputs of step 1 (adam/m after step 1 is (1 - beta1) x the meta-gradient
                        when m starts at zero, as in bench_inputs) */
    double *losses;  /* meta_loss before each update (NaN where the graph has none) */
    double seconds;  /* inside backend_run */
    int rc;
    MamlError err;
} StepRun;

/* Runs `steps` training steps on each of the n backends from start, each on its own thread (the
 * backends share nothing), each feeding its own outputs back. runs[i] must be zeroed with only
 * backend and label set; free them with compare_steps_free, also after a failure. */
int compare_run_steps(StepRun *runs, int n, const TensorSet *start, int steps, MamlError *err);

/* compare_run_steps in two halves, for a caller that changes a run's start state in between:
 * _start copies start into every run (float32, or float64 for a PREC_F64 backend), _go runs. */
int compare_steps_start(StepRun *runs, int n, const TensorSet *start, int steps, MamlError *err);
int compare_steps_go(StepRun *runs, int n, int steps, MamlError *err);

/* Prints the per-step meta_loss table and the seconds of each run. */
void compare_print_steps(const StepRun *runs, int n, int steps, FILE *out);

void compare_steps_free(StepRun *runs, int n);

#endif
