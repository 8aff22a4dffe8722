/* mamlc grad: one meta-gradient on given weights and tasks. */
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "batch.h"
#include "cli.h"
#include "maml.h"
#include "params.h"
#include "safetensors.h"

typedef struct {
    const char *graph, *params, *batch, *out, *backend, *dtype;
    Overrides overrides;
    BackendFlags flags;
} GradArgs;

static int parse_args(int argc, char **argv, GradArgs *a) {
    memset(a, 0, sizeof *a);
    a->backend = "auto";
    a->dtype = "f32";
    for (int i = 1; i < argc; i++) {
        int taken = cli_take_override(argc, argv, &i, &a->overrides);
        if (taken == 0) taken = cli_take_backend_flag(argc, argv, &i, &a->flags);
        if (taken < 0) return -1;
        if (taken) continue;
        const char **slot = NULL;
        if (strcmp(argv[i], "--params") == 0)
            slot = &a->params;
        else if (strcmp(argv[i], "--batch") == 0)
            slot = &a->batch;
        else if (strcmp(argv[i], "--out") == 0)
            slot = &a->out;
        else if (strcmp(argv[i], "--backend") == 0)
            slot = &a->backend;
        else if (strcmp(argv[i], "--dtype") == 0)
            slot = &a->dtype;
        else if (argv[i][0] == '-') {
            cli_error("grad: unknown option '%s'", argv[i]);
            return -1;
        } else if (!a->graph) {
            a->graph = argv[i];
            continue;
        } else {
            cli_error("grad: unexpected argument '%s'", argv[i]);
            return -1;
        }
        if (i + 1 >= argc) {
            cli_error("grad: %s needs a value", argv[i]);
            return -1;
        }
        *slot = argv[++i];
    }
    if (!a->graph || !a->params || !a->batch || !a->out) {
        cli_error("usage: mamlc grad GRAPH.yaml --params P.safetensors --batch B.safetensors "
                  "--out G.safetensors [--backend ref|cpu|cuda|auto] "
                  "[--conv generated|cudnn|auto|tensor] [--require-cache] [--dtype f32|f64] "
                  "[--set K=V]");
        return -1;
    }
    if (strcmp(a->dtype, "f32") != 0 && strcmp(a->dtype, "f64") != 0) {
        cli_error("grad: --dtype must be f32 or f64, not '%s'", a->dtype);
        return -1;
    }
    return cli_apply_backend_flags("grad", &a->flags, a->backend);
}

/* Learnable inner learning rates absent from the parameters file start at maml.inner.lr. */
static int add_missing_inner_lrs(const Graph *g, const GraphSpec *spec, TensorSet *inputs,
                                 MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT || strncmp(n->name, "inner_lr.", 9) != 0) continue;
        if (tensorset_find(inputs, n->name)) continue;
        float lr = (float)spec->maml.inner.lr;
        if (!tensorset_add(inputs, n->name, TENSOR_F32, n->shape, &lr, err)) return -1;
    }
    return 0;
}

/* Prefixes err's message with the file it concerns; returns -1. */
static int prefix_path(const char *path, MamlError *err) {
    char why[MAML_ERROR_MAX];
    memcpy(why, err->message, sizeof why);
    return maml_fail(err, "%s: %s", path, why);
}

static int merge(TensorSet *into, const TensorSet *from, MamlError *err) {
    for (int i = 0; i < from->n; i++) {
        const Tensor *t = &from->items[i];
        if (!tensorset_add(into, t->name, t->dtype, t->shape, t->data, err)) return -1;
    }
    return 0;
}

static int run_grad(const GradArgs *a, MamlError *err) {
    GraphSpec spec = {0};
    TensorSet params, batch, outputs;
    tensorset_init(&params);
    tensorset_init(&batch);
    tensorset_init(&outputs);
    Graph g;
    graph_init(&g);
    int64_t tasks = 0;
    int rc = spec_load(a->graph, a->overrides.items, a->overrides.n, &spec, err);
    if (rc == 0) rc = safetensors_read(a->params, &params, err);
    if (rc == 0 && params_check(&spec, &params, err)) rc = prefix_path(a->params, err);
    if (rc == 0) rc = safetensors_read(a->batch, &batch, err);
    if (rc == 0) rc = batch_check(&spec, &batch, a->batch, &tasks, err);
    if (rc == 0) rc = maml_build(&spec, MAML_META_GRAD, tasks, &g, NULL, err);
    if (rc == 0) rc = add_missing_inner_lrs(&g, &spec, &params, err);
    if (rc == 0) rc = merge(&params, &batch, err);
    Precision prec = strcmp(a->dtype, "f64") == 0 ? PREC_F64 : PREC_F32;
    Backend *backend = NULL;
    if (rc == 0) rc = backend_open(a->backend, &g, prec, &backend, NULL, 0, err);
    if (rc == 0) rc = backend_run(backend, &params, &outputs, err);
    if (rc == 0) rc = safetensors_write(a->out, &outputs, err);
    if (rc == 0) {
        const Tensor *loss = tensorset_find(&outputs, "meta_loss");
        const Tensor *acc = tensorset_find(&outputs, "meta_acc");
        printf("meta_loss %.9g", tensor_get(loss, 0));
        if (acc) printf("  meta_acc %.6g", tensor_get(acc, 0));
        printf("  (%lld tasks, %d nodes, backend %s, %s) -> %s\n", (long long)tasks, g.n_nodes,
               backend->name, a->dtype, a->out);
    }
    backend_close(backend);
    graph_free(&g);
    tensorset_free(&params);
    tensorset_free(&batch);
    tensorset_free(&outputs);
    spec_free(&spec);
    return rc;
}

int cmd_grad(int argc, char **argv) {
    GradArgs a;
    if (parse_args(argc, argv, &a)) return 2;
    MamlError err;
    if (run_grad(&a, &err)) {
        cli_error("%s", err.message);
        return 2;
    }
    return 0;
}
