/* mamlc check GRAPH.yaml [--set KEY=VALUE ...]: validates a graph file and prints its layers,
 * parameters and the settings in effect after the overrides. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "spec.h"

static const char *shape_str_ex(const ExampleShape *s, char *buf, size_t size) {
    int n = snprintf(buf, size, "[");
    for (int i = 0; i < s->rank && (size_t)n < size; i++)
        n += snprintf(buf + n, size - (size_t)n, "%s%" PRId64, i ? ", " : "", s->dims[i]);
    if ((size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
    return buf;
}

static const char *param_shape_str(const ParamSpec *p, char *buf, size_t size) {
    int n = snprintf(buf, size, "[");
    for (int i = 0; i < p->rank && (size_t)n < size; i++)
        n += snprintf(buf + n, size - (size_t)n, "%s%" PRId64, i ? ", " : "", p->dims[i]);
    if ((size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
    return buf;
}

/* 112261 -> "112,261" */
static const char *thousands(int64_t v, char *buf, size_t size) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%" PRId64, v), o = 0;
    for (int i = 0; i < n && (size_t)o + 2 < size; i++) {
        if (i && (n - i) % 3 == 0 && digits[i - 1] != '-') buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static void print_layers(const GraphSpec *s) {
    char shape[64], count[32];
    printf("%-3s %-16s %-16s %-14s %12s\n", "#", "layer", "kind", "output", "parameters");
    printf("%-3s %-16s %-16s %s\n", "", "(input)", "",
           shape_str_ex(&s->input, shape, sizeof shape));
    for (int i = 0; i < s->n_layers; i++) {
        const LayerSpec *l = &s->layers[i];
        printf("%-3d %-16s %-16s %-14s %12s\n", i + 1, l->name[0] ? l->name : "-",
               layer_kind_name(l->kind), shape_str_ex(&l->out_shape, shape, sizeof shape),
               thousands(l->n_params, count, sizeof count));
    }
    printf("total parameters: %s in %d tensors\n\n",
           thousands(s->total_params, count, sizeof count), s->n_params);
}

static void print_params(const GraphSpec *s) {
    char shape[64], count[32];
    int adapted = 0;
    printf("%-26s %-16s %10s  %s\n", "parameter", "shape", "size", "inner loop");
    for (int i = 0; i < s->n_params; i++) {
        const ParamSpec *p = &s->params[i];
        int64_t size = 1;
        for (int d = 0; d < p->rank; d++) size *= p->dims[d];
        adapted += p->adapt;
        printf("%-26s %-16s %10s  %s\n", p->name, param_shape_str(p, shape, sizeof shape),
               thousands(size, count, sizeof count), p->adapt ? "adapted" : "fixed");
    }
    printf("%d of %d tensors adapted in the inner loop\n\n", adapted, s->n_params);
}

static void print_maml(const GraphSpec *s) {
    static const char *const reductions[] = {"mean", "sum", "sum_over_k_shot"};
    const MamlSettings *m = &s->maml;
    printf("loss: %s\n", s->loss == LOSS_MSE ? "mse" : "cross_entropy");
    printf("maml: n_way %d, k_shot %d, q_query %d (support %d, query %d examples per task), "
           "meta_batch %d\n",
           m->n_way, m->k_shot, m->q_query, spec_support_size(s), spec_query_size(s),
           m->meta_batch);
    printf("  inner: steps %d, lr %s%g, %s order, reduction %s, adapt ", m->inner.steps,
           m->inner.lr_learnable ? "learnable from " : "", m->inner.lr,
           m->inner.first_order ? "first" : "second", reductions[m->inner.reduction]);
    if (m->inner.n_adapt == 0) printf("all");
    for (int i = 0; i < m->inner.n_adapt; i++) printf("%s%s", i ? ", " : "", m->inner.adapt[i]);
    if (m->outer.optimizer == OPT_ADAM)
        printf("\n  outer: adam, lr %g, beta1 %g, beta2 %g, eps %g\n", m->outer.lr, m->outer.beta1,
               m->outer.beta2, m->outer.eps);
    else
        printf("\n  outer: sgd, lr %g\n", m->outer.lr);
    printf("  eval:  inner_steps %d, lr %g, tasks %d\n", m->eval.inner_steps, m->eval.lr,
           m->eval.tasks);
}

static void print_data(const GraphSpec *s) {
    const DataSettings *d = &s->data;
    if (d->dataset == DATASET_SINUSOID) {
        printf("data: sinusoid, amplitude [%g, %g], phase [%g, %g], x_range [%g, %g], seed %" PRIu64
               "\n",
               d->amplitude[0], d->amplitude[1], d->phase[0], d->phase[1], d->x_range[0],
               d->x_range[1], d->seed);
        return;
    }
    printf("data: omniglot, split %s",
           d->split == SPLIT_SHUFFLED_CHARACTERS ? "shuffled_characters" : "background_evaluation");
    if (d->split == SPLIT_SHUFFLED_CHARACTERS)
        printf(" (%d training characters)", d->train_characters);
    printf(", rotations [");
    for (int i = 0; i < d->n_rotations; i++) printf("%s%d", i ? ", " : "", d->rotations[i]);
    printf("], image_size %d, resize %s, invert %s, seed %" PRIu64 "\n", d->image_size,
           d->resize == RESIZE_LANCZOS ? "lanczos" : "nearest", d->invert ? "true" : "false",
           d->seed);
}

int cmd_check(int argc, char **argv) {
    Overrides ov = {.n = 0};
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        int took = cli_take_override(argc, argv, &i, &ov);
        if (took < 0) return 2;
        if (took) continue;
        if (argv[i][0] == '-' || path) {
            cli_error(argv[i][0] == '-' ? "check: unknown option '%s'"
                                        : "check: unexpected argument '%s'",
                      argv[i]);
            return 2;
        }
        path = argv[i];
    }
    if (!path) {
        cli_error("usage: mamlc check GRAPH.yaml [--set KEY=VALUE ...]");
        return 2;
    }
    GraphSpec spec;
    MamlError err;
    if (spec_load(path, ov.items, ov.n, &spec, &err)) {
        cli_error("%s", err.message);
        return 2;
    }
    printf("graph: %s\n\n", path);
    print_layers(&spec);
    print_params(&spec);
    print_maml(&spec);
    print_data(&spec);
    spec_free(&spec);
    return 0;
}
