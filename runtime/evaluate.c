/* Meta-evaluation (see evaluate.h). */
#include "evaluate.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "maml.h"

int evaluator_build(Evaluator *ev, const GraphSpec *spec, int tasks_per_run, MamlError *err) {
    memset(ev, 0, sizeof *ev);
    graph_init(&ev->graph);
    ev->spec = spec;
    ev->tasks_per_run = tasks_per_run;
    if (spec->maml.eval.inner_steps > EVAL_MAX_STEPS)
        return maml_fail(err, "maml.eval.inner_steps %d exceeds the supported %d",
                         spec->maml.eval.inner_steps, EVAL_MAX_STEPS);
    if (tasks_per_run < 1)
        return maml_fail(err, "evaluation needs at least 1 task per run, not %d", tasks_per_run);
    return maml_build(spec, MAML_EVAL, tasks_per_run, &ev->graph, NULL, err);
}

int evaluator_start(Evaluator *ev, const char *backend, char *why, int why_size, MamlError *err) {
    return backend_open(backend, &ev->graph, PREC_F32, &ev->backend, why, why_size, err);
}

int evaluator_open(Evaluator *ev, const GraphSpec *spec, const char *backend, int tasks_per_run,
                   char *why, int why_size, MamlError *err) {
    if (evaluator_build(ev, spec, tasks_per_run, err)) return -1;
    return evaluator_start(ev, backend, why, why_size, err);
}

void evaluator_close(Evaluator *ev) {
    if (!ev) return;
    backend_close(ev->backend);
    graph_free(&ev->graph);
    memset(ev, 0, sizeof *ev);
}

/* Running mean and sum of squared deviations (Welford), per inner step. */
typedef struct {
    long n;
    double mean[EVAL_MAX_STEPS + 1], m2[EVAL_MAX_STEPS + 1];
} Moments;

static void moments_add(Moments *m, int k, double x) {
    double d = x - m->mean[k];
    m->mean[k] += d / (double)m->n;
    m->m2[k] += d * (x - m->mean[k]);
}

/* 1.96 * std / sqrt(n), std with divisor n (np.std); NAN when one run gives no spread. */
static double ci95(const Moments *m, int k) {
    if (m->n < 2) return NAN;
    return 1.96 * sqrt(m->m2[k] / (double)m->n) / sqrt((double)m->n);
}

/* The graph's parameter inputs, copied from params. */
static int copy_params(const Graph *g, const TensorSet *params, TensorSet *inputs, MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT || n->input_kind != INPUT_PARAM) continue;
        const Tensor *t = tensorset_find(params, n->name);
        if (!t) return maml_fail(err, "evaluation: no parameter '%s'", n->name);
        if (!tensorset_add(inputs, t->name, t->dtype, t->shape, t->data, err)) return -1;
    }
    return 0;
}

static int read_scalar(const TensorSet *out, const char *prefix, int k, double *v, MamlError *err) {
    char name[48];
    snprintf(name, sizeof name, "%s%d", prefix, k);
    const Tensor *t = tensorset_find(out, name);
    if (!t) return maml_fail(err, "evaluation: the graph has no output '%s'", name);
    *v = tensor_get(t, 0);
    return 0;
}

/* Adds one run's per-step loss and accuracy to the moments. */
static int record(const Evaluator *ev, const TensorSet *out, Moments *loss, Moments *acc,
                  MamlError *err) {
    bool has_acc = ev->spec->loss != LOSS_MSE;
    loss->n++, acc->n++;
    for (int k = 0; k <= ev->spec->maml.eval.inner_steps; k++) {
        double l, a = 0;
        if (read_scalar(out, "loss/step", k, &l, err)) return -1;
        if (has_acc && read_scalar(out, "acc/step", k, &a, err)) return -1;
        moments_add(loss, k, l);
        moments_add(acc, k, a);
    }
    return 0;
}

static void summarise(const Evaluator *ev, const Moments *loss, const Moments *acc, EvalResult *r) {
    memset(r, 0, sizeof *r);
    r->n_runs = (int)loss->n;
    r->n_tasks = r->n_runs * ev->tasks_per_run;
    r->inner_steps = ev->spec->maml.eval.inner_steps;
    r->has_acc = ev->spec->loss != LOSS_MSE;
    for (int k = 0; k <= r->inner_steps; k++) {
        r->loss_mean[k] = loss->mean[k];
        r->loss_ci[k] = ci95(loss, k);
        r->acc_mean[k] = acc->mean[k];
        r->acc_ci[k] = ci95(acc, k);
    }
}

/* The producer's next batch into batch (task_batch_to_tensors). */
static int next_batch(Producer *p, TensorSet *batch, MamlError *err) {
    const ProducedBatch *b = producer_next(p, err);
    return b ? task_batch_to_tensors(&b->batch, batch, err) : -1;
}

/* The next run's batch, staged while a run computes. */
typedef struct {
    Backend *backend;
    Producer *producer;
    TensorSet batch;
} NextRun;

static int stage_next_run(void *ctx, MamlError *err) {
    NextRun *n = ctx;
    if (next_batch(n->producer, &n->batch, err)) return -1;
    return backend_stage(n->backend, &n->batch, err);
}

/* Runs every batch the producer hands out, n_runs of them, each staged on the backend while the
 * run before it computes (inputs keep the first batch, stale afterwards, as backend_launch
 * allows). */
static int run_all(Evaluator *ev, Producer *p, int n_runs, TensorSet *inputs, Moments *loss,
                   Moments *acc, MamlError *err) {
    TensorSet out;
    tensorset_init(&out);
    NextRun next = {.backend = ev->backend, .producer = p};
    tensorset_init(&next.batch);
    int rc = next_batch(p, inputs, err);
    for (int r = 0; r < n_runs && rc == 0; r++) {
        BackendOverlap overlap = r + 1 < n_runs ? stage_next_run : NULL;
        rc = backend_run_overlapped(ev->backend, inputs, overlap, &next, &out, err);
        if (rc == 0) rc = record(ev, &out, loss, acc, err);
    }
    tensorset_free(&out);
    tensorset_free(&next.batch);
    return rc;
}

int evaluator_run(Evaluator *ev, const TaskSource *src, uint64_t seed, int n_tasks,
                  const TensorSet *params, EvalResult *out, MamlError *err) {
    if (n_tasks < 1) return maml_fail(err, "evaluation needs at least 1 task, not %d", n_tasks);
    int n_runs = (n_tasks + ev->tasks_per_run - 1) / ev->tasks_per_run;
    TensorSet inputs;
    tensorset_init(&inputs);
    Moments loss = {0}, acc = {0};
    Rng rng;
    rng_seed(&rng, seed);
    Producer *p = NULL;
    int rc = copy_params(&ev->graph, params, &inputs, err);
    if (rc == 0) rc = producer_start(src, ev->tasks_per_run, &rng, &p, err);
    if (rc == 0) rc = run_all(ev, p, n_runs, &inputs, &loss, &acc, err);
    producer_stop(p);
    tensorset_free(&inputs);
    if (rc == 0) summarise(ev, &loss, &acc, out);
    return rc;
}
