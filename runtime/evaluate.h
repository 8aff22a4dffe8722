/* Meta-evaluation: adapt to held-out tasks with the graph's eval inner steps and measure the
 * query loss and accuracy after 0, 1, ..., K steps, as the mean over tasks with a 95% confidence
 * interval (1.96 * std / sqrt(n), std over tasks as numpy's np.std, the MAML code's convention;
 * NAN when there is a single run).
 * Used by `mamlc eval` (test split) and by training's validation (val split). */
#ifndef MAMLC_EVALUATE_H
#define MAMLC_EVALUATE_H

#include <stdbool.h>

#include "backend.h"
#include "producer.h"

#define EVAL_MAX_STEPS 64

typedef struct {
    int n_tasks;     /* tasks evaluated (a multiple of tasks_per_run) */
    int n_runs;      /* graph runs; the statistics are over runs (over tasks when 1 per run) */
    int inner_steps; /* K: entries 0..K below are filled */
    bool has_acc;    /* classification; false for regression (loss is the MSE) */
    double loss_mean[EVAL_MAX_STEPS + 1], loss_ci[EVAL_MAX_STEPS + 1];
    double acc_mean[EVAL_MAX_STEPS + 1], acc_ci[EVAL_MAX_STEPS + 1];
} EvalResult;

/* The MAML_EVAL graph and a backend running it. */
typedef struct {
    const GraphSpec *spec;
    Graph graph;
    Backend *backend;
    int tasks_per_run;
} Evaluator;

/* Builds the eval graph for tasks_per_run tasks and opens the named backend on it ("auto" picks;
 * why as in backend_open): evaluator_build then evaluator_start. tasks_per_run 1 gives per-task
 * statistics; more runs faster on parallel backends, with the statistics then taken over runs
 * (the standard error of the mean is estimated the same way). */
int evaluator_open(Evaluator *ev, const GraphSpec *spec, const char *backend, int tasks_per_run,
                   char *why, int why_size, MamlError *err);

/* Builds only the graph (ev->graph), so inputs can be checked against it before a backend spends
 * time compiling it. */
int evaluator_build(Evaluator *ev, const GraphSpec *spec, int tasks_per_run, MamlError *err);

/* Opens the named backend on the graph evaluator_build made. */
int evaluator_start(Evaluator *ev, const char *backend, char *why, int why_size, MamlError *err);

/* Evaluates params (every parameter input of the graph, by name) on n_tasks tasks from src (rounded
 * up to whole runs), drawn with a generator seeded with seed, so equal seeds give equal tasks. */
int evaluator_run(Evaluator *ev, const TaskSource *src, uint64_t seed, int n_tasks,
                  const TensorSet *params, EvalResult *out, MamlError *err);

/* Releases the graph and backend; safe on a zeroed evaluator. */
void evaluator_close(Evaluator *ev);

#endif
