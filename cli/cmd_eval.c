/* mamlc eval: meta-test accuracy (or, for regression, MSE) of a checkpoint on the test split,
 * after 0..K inner steps with the graph's eval settings, as mean and 95% confidence interval. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli.h"
#include "evaluate.h"
#include "omniglot.h"
#include "tasks.h"
#include "train.h"

#define EVAL_USAGE                                                                                 \
    "usage: mamlc eval GRAPH.yaml --checkpoint C.safetensors [--data DIR] [--tasks N]\n"           \
    "        [--backend auto|cuda|cpu|ref] [--conv generated|cudnn|auto|tensor]\n"                 \
    "        [--require-cache]\n"                                                                  \
    "        [--tasks-per-run N] [--seed S] [--set KEY=VALUE ...]"

typedef struct {
    const char *graph, *checkpoint, *data, *backend, *tasks, *per_run, *seed;
    Overrides overrides;
    BackendFlags flags;
} EvalArgs;

static int parse_args(int argc, char **argv, EvalArgs *a) {
    memset(a, 0, sizeof *a);
    a->backend = "auto";
    for (int i = 1; i < argc; i++) {
        int taken = cli_take_override(argc, argv, &i, &a->overrides);
        if (taken == 0) taken = cli_take_backend_flag(argc, argv, &i, &a->flags);
        if (taken < 0) return -1;
        if (taken) continue;
        const char *names[] = {"--checkpoint", "--data",          "--backend",
                               "--tasks",      "--tasks-per-run", "--seed"};
        const char **slots[] = {&a->checkpoint, &a->data,    &a->backend,
                                &a->tasks,      &a->per_run, &a->seed};
        int k = 0;
        while (k < 6 && strcmp(argv[i], names[k]) != 0) k++;
        const char *bad = k < 6               ? (i + 1 < argc ? NULL : "missing value for")
                          : argv[i][0] == '-' ? "unknown option"
                          : a->graph          ? "unexpected argument"
                                              : NULL;
        if (bad) {
            cli_error("eval: %s '%s'", bad, argv[i]);
            return -1;
        }
        if (k < 6)
            *slots[k] = argv[++i];
        else
            a->graph = argv[i];
    }
    if (a->graph && a->checkpoint) return cli_apply_backend_flags("eval", &a->flags, a->backend);
    cli_error(EVAL_USAGE);
    return -1;
}

/* A positive integer option, or the fallback when absent. */
static int positive(const char *opt, const char *s, long fallback, long *out) {
    if (!s) {
        *out = fallback;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > (1L << 30)) {
        cli_error("eval: %s needs a positive integer, not '%s'", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* "0.6400 +- 0.0320", or "+- n/a" when a single run gave no interval. */
static const char *with_ci(double mean, double ci, char *buf, size_t size) {
    if (isnan(ci))
        snprintf(buf, size, "%.4f +- n/a", mean);
    else
        snprintf(buf, size, "%.4f +- %.4f", mean, ci);
    return buf;
}

static void print_result(const EvalArgs *a, const EvalResult *r, long ckpt_step) {
    int k = r->inner_steps;
    char x[48], y[48];
    printf("%s on %d test tasks (checkpoint %s", a->graph, r->n_tasks, a->checkpoint);
    if (ckpt_step >= 0) printf(", step %ld", ckpt_step);
    printf(")\n%-12s %-22s %s\n", "inner steps", r->has_acc ? "accuracy" : "MSE",
           r->has_acc ? "loss" : "");
    for (int s = 0; s <= k; s++) {
        if (r->has_acc)
            printf("%-12d %s      %s\n", s, with_ci(r->acc_mean[s], r->acc_ci[s], x, sizeof x),
                   with_ci(r->loss_mean[s], r->loss_ci[s], y, sizeof y));
        else
            printf("%-12d %s\n", s, with_ci(r->loss_mean[s], r->loss_ci[s], x, sizeof x));
    }
    if (r->has_acc) {
        if (isnan(r->acc_ci[k]))
            snprintf(x, sizeof x, "n/a");
        else
            snprintf(x, sizeof x, "%.2f%%", 100 * r->acc_ci[k]);
        printf("meta-test accuracy: %.2f%% +- %s (95%% CI; %d tasks, %d inner steps)\n",
               100 * r->acc_mean[k], x, r->n_tasks, k);
    } else
        printf("MSE before adaptation %s, after %d steps %s (%d tasks)\n",
               with_ci(r->loss_mean[0], r->loss_ci[0], x, sizeof x), k,
               with_ci(r->loss_mean[k], r->loss_ci[k], y, sizeof y), r->n_tasks);
}

typedef struct {
    GraphSpec spec;
    Evaluator ev;
    TensorSet params;
    CheckpointMeta meta;
    OmniglotData data;
    OmniglotSplits splits;
    TaskSource src;
} EvalJob;

/* Everything that can be wrong with the input, checked before any task runs, and before the
 * backend spends time compiling. */
static int prepare(const EvalArgs *a, long per_run, EvalJob *j, MamlError *err) {
    if (spec_load(a->graph, a->overrides.items, a->overrides.n, &j->spec, err) ||
        evaluator_build(&j->ev, &j->spec, (int)per_run, err) ||
        checkpoint_load(a->checkpoint, &j->ev.graph, CHECKPOINT_PARAMS, &j->params, &j->meta, err))
        return -1;
    j->src = (TaskSource){.spec = &j->spec, .split = "test"};
    if (j->spec.data.dataset == DATASET_OMNIGLOT) {
        if (omniglot_open(train_data_dir(a->data), &j->spec.data, &j->data, NULL, err) ||
            omniglot_splits(&j->data, &j->spec.data, &j->splits, err))
            return -1;
        j->src.classes = &j->splits.test;
        if (task_source_check(&j->src, err)) return -1;
    }
    return evaluator_start(&j->ev, a->backend, NULL, 0, err);
}

/* --seed, else the seed the checkpoint was trained with, else data.seed. */
static uint64_t pick_seed(const EvalArgs *a, const EvalJob *j) {
    if (a->seed) return strtoull(a->seed, NULL, 10);
    return j->meta.complete ? j->meta.seed : j->spec.data.seed;
}

static int run_eval(const EvalArgs *a, long tasks, long per_run) {
    EvalJob j;
    memset(&j, 0, sizeof j);
    tensorset_init(&j.params);
    MamlError err;
    EvalResult r;
    int rc = prepare(a, per_run, &j, &err) ? 2 : 0;
    if (rc == 0) {
        if (tasks == 0) tasks = j.spec.maml.eval.tasks > 0 ? j.spec.maml.eval.tasks : 600;
        uint64_t seed = pick_seed(a, &j) ^ TEST_SALT;
        rc = evaluator_run(&j.ev, &j.src, seed, (int)tasks, &j.params, &r, &err) ? 1 : 0;
    }
    if (rc)
        cli_error("%s", err.message);
    else
        print_result(a, &r, j.meta.complete ? j.meta.step : -1);
    omniglot_splits_free(&j.splits);
    omniglot_close(&j.data);
    tensorset_free(&j.params);
    evaluator_close(&j.ev);
    spec_free(&j.spec);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    EvalArgs a;
    long tasks, per_run;
    if (parse_args(argc, argv, &a) || positive("--tasks", a.tasks, 0, &tasks) ||
        positive("--tasks-per-run", a.per_run, 1, &per_run))
        return 2;
    if (a.seed && (a.seed[0] < '0' || a.seed[0] > '9')) {
        cli_error("eval: --seed needs an unsigned integer, not '%s'", a.seed);
        return 2;
    }
    return run_eval(&a, tasks, per_run);
}
