#include "maml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autodiff.h"
#include "layers.h"
#include "optim.h"

typedef struct {
    const GraphSpec *spec;
    Graph *g;
    int64_t tasks;
    int *theta;    /* per ParamSpec: INPUT node of the initial parameter */
    int *lr_nodes; /* [layer * max_steps + step]: learnable lr INPUT, or -1 */
    int max_steps;
    MamlError *err;
} Builder;

/* Shape of a batch of examples: [T, count, example dims...]. */
static Shape batch_shape(int64_t tasks, int64_t count, const ExampleShape *ex) {
    Shape s = {.rank = 2 + ex->rank, .dims = {tasks, count}};
    for (int i = 0; i < ex->rank; i++) s.dims[2 + i] = ex->dims[i];
    return s;
}

static Shape param_shape(const ParamSpec *p) {
    return shape_make(p->rank, p->dims);
}

/* Runs the model on x with per-task parameters phi (one node per ParamSpec). */
static int model_forward(const Builder *b, int x, const int *phi) {
    const GraphSpec *spec = b->spec;
    for (int l = 0; l < spec->n_layers && x >= 0; l++) {
        int w = -1, bias = -1;
        for (int p = 0; p < spec->n_params; p++) {
            if (spec->params[p].layer != l) continue;
            if (spec->params[p].is_bias)
                bias = phi[p];
            else
                w = phi[p];
        }
        b->g->origin =
            spec->layers[l].name[0] ? spec->layers[l].name : layer_kind_name(spec->layers[l].kind);
        x = layer_forward(b->g, &spec->layers[l], x, w, bias);
    }
    b->g->origin = "loss";
    return x;
}

static int task_loss(const Builder *b, int out, int labels) {
    const GraphSpec *spec = b->spec;
    if (spec->loss == LOSS_MSE)
        return loss_mse(b->g, out, labels, spec->maml.inner.reduction, spec->maml.k_shot);
    return loss_cross_entropy(b->g, out, labels, spec->maml.inner.reduction, spec->maml.k_shot);
}

static int add_inputs(Builder *b, MamlGraphKind kind, int batch[4]) {
    const GraphSpec *spec = b->spec;
    Graph *g = b->g;
    g->origin = "input";
    for (int p = 0; p < spec->n_params; p++)
        b->theta[p] =
            g_input(g, spec->params[p].name, INPUT_PARAM, DT_REAL, param_shape(&spec->params[p]));
    int steps = kind == MAML_EVAL ? spec->maml.eval.inner_steps : spec->maml.inner.steps;
    for (int l = 0; spec->maml.inner.lr_learnable && l < spec->n_layers; l++)
        for (int k = 0; k < spec->maml.inner.steps && k < steps; k++) {
            bool adapts = false;
            for (int p = 0; p < spec->n_params; p++)
                adapts |= spec->params[p].layer == l && spec->params[p].adapt;
            if (!adapts) continue;
            char name[SPEC_NAME_MAX + 32];
            snprintf(name, sizeof name, "inner_lr.%s.step%d", spec->layers[l].name, k);
            b->lr_nodes[l * b->max_steps + k] =
                g_input(g, name, INPUT_PARAM, DT_REAL, shape_scalar());
        }
    int64_t S = spec_support_size(spec), Q = spec_query_size(spec);
    bool regression = spec->loss == LOSS_MSE;
    const LayerSpec *last = &spec->layers[spec->n_layers - 1];
    ExampleShape target = {.rank = 1, .dims = {last->out_shape.dims[0]}};
    batch[0] = g_input(g, "support_x", INPUT_DATA, DT_REAL, batch_shape(b->tasks, S, &spec->input));
    batch[1] = regression
                   ? g_input(g, "support_y", INPUT_DATA, DT_REAL, batch_shape(b->tasks, S, &target))
                   : g_input(g, "support_y", INPUT_DATA, DT_INT, SHAPE(b->tasks, S));
    batch[2] = g_input(g, "query_x", INPUT_DATA, DT_REAL, batch_shape(b->tasks, Q, &spec->input));
    batch[3] = regression
                   ? g_input(g, "query_y", INPUT_DATA, DT_REAL, batch_shape(b->tasks, Q, &target))
                   : g_input(g, "query_y", INPUT_DATA, DT_INT, SHAPE(b->tasks, Q));
    return graph_status(g, b->err);
}

/* The learning rate of step k for the layer of parameter p, broadcast to shape s. */
static int inner_lr(const Builder *b, int p, int k, double lr, Shape s) {
    const GraphSpec *spec = b->spec;
    if (!spec->maml.inner.lr_learnable) return g_const(b->g, lr, s);
    int last = spec->maml.inner.steps - 1;
    int node = b->lr_nodes[spec->params[p].layer * b->max_steps + (k < last ? k : last)];
    return scalar_to(b->g, node, s);
}

/* One inner SGD step on the support set: phi <- phi - lr * d(sum of task losses)/d phi for the
 * adapted parameters. Tasks are independent, so the gradient of the sum is each task's own. */
static int inner_step(Builder *b, int *phi, int k, double lr, const int batch[4], bool first,
                      MamlStages *stages) {
    const GraphSpec *spec = b->spec;
    int out = model_forward(b, batch[0], phi);
    int loss = g_reduce(b->g, OP_REDUCE_SUM, task_loss(b, out, batch[1]), 1u << 0);
    if (stages && first) stages->forward_nodes = b->g->n_nodes;
    int wrt[256], grads[256], n = 0, idx[256];
    for (int p = 0; p < spec->n_params && n < 256; p++)
        if (spec->params[p].adapt) idx[n] = p, wrt[n++] = phi[p];
    if (graph_status(b->g, b->err) || autodiff_grad(b->g, loss, wrt, n, grads, b->err)) return -1;
    if (stages && first) stages->inner_grad_nodes = b->g->n_nodes;
    b->g->origin = "inner_update";
    for (int i = 0; i < n; i++) {
        int grad = spec->maml.inner.first_order ? g_stop_grad(b->g, grads[i]) : grads[i];
        Shape s = b->g->nodes[wrt[i]].shape;
        phi[idx[i]] = g_sub(b->g, wrt[i], g_mul(b->g, inner_lr(b, idx[i], k, lr, s), grad));
    }
    return graph_status(b->g, b->err);
}

/* Query loss and accuracy at the weights phi: scalars (acc is -1 for regression). */
static void query_metrics(Builder *b, const int *phi, const int batch[4], int *loss, int *acc) {
    int out = model_forward(b, batch[2], phi);
    *loss = mean_over_tasks(b->g, task_loss(b, out, batch[3]));
    *acc = b->spec->loss == LOSS_MSE ? -1 : mean_over_tasks(b->g, accuracy(b->g, out, batch[3]));
}

static int add_named(Graph *g, const char *prefix, const char *name, int node) {
    char full[SPEC_NAME_MAX + 64];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return graph_add_output(g, full, node);
}

static int build_eval(Builder *b, int *phi, const int batch[4]) {
    const MamlSettings *m = &b->spec->maml;
    int loss = -1, acc = -1;
    for (int k = 0; k <= m->eval.inner_steps; k++) {
        if (k > 0 && inner_step(b, phi, k - 1, m->eval.lr, batch, false, NULL)) return -1;
        query_metrics(b, phi, batch, &loss, &acc);
        char name[32];
        snprintf(name, sizeof name, "step%d", k);
        add_named(b->g, "loss/", name, loss);
        if (acc >= 0) add_named(b->g, "acc/", name, acc);
    }
    graph_add_output(b->g, "meta_loss", loss);
    if (acc >= 0) graph_add_output(b->g, "meta_acc", acc);
    for (int p = 0; p < b->spec->n_params; p++)
        if (b->spec->params[p].adapt) add_named(b->g, "fast/", b->spec->params[p].name, phi[p]);
    return graph_status(b->g, b->err);
}

static int build_update(Builder *b, MamlGraphKind kind, int meta_loss, MamlStages *stages) {
    Graph *g = b->g;
    int n = 0, wrt[512], grads[512];
    for (int i = 0; i < g->n_nodes && n < 512; i++)
        if (g->nodes[i].op == OP_INPUT && g->nodes[i].input_kind == INPUT_PARAM) wrt[n++] = i;
    g->origin = "meta_grad";
    if (autodiff_grad(g, meta_loss, wrt, n, grads, b->err)) return -1;
    (void)stages;
    int step = kind == MAML_TRAIN_STEP && b->spec->maml.outer.optimizer == OPT_ADAM
                   ? g_input(g, "adam/step", INPUT_STATE, DT_REAL, shape_scalar())
                   : -1;
    for (int i = 0; i < n; i++) {
        const char *name = g->nodes[wrt[i]].name;
        if (kind == MAML_META_GRAD) {
            add_named(g, "grad/", name, grads[i]);
            continue;
        }
        int m = -1, v = -1, new_p, new_m, new_v;
        if (step >= 0) {
            char mn[SPEC_NAME_MAX + 64], vn[SPEC_NAME_MAX + 64];
            snprintf(mn, sizeof mn, "adam/m/%s", name);
            snprintf(vn, sizeof vn, "adam/v/%s", name);
            m = g_input(g, mn, INPUT_STATE, DT_REAL, g->nodes[wrt[i]].shape);
            v = g_input(g, vn, INPUT_STATE, DT_REAL, g->nodes[wrt[i]].shape);
        }
        g->origin = "outer_update";
        if (optim_update(g, &b->spec->maml, wrt[i], grads[i], m, v, step, &new_p, &new_m, &new_v))
            return graph_status(g, b->err);
        add_named(g, "", name, new_p);
        if (step >= 0) add_named(g, "adam/m/", name, new_m), add_named(g, "adam/v/", name, new_v);
    }
    return graph_status(g, b->err);
}

static int build(Builder *b, MamlGraphKind kind, MamlStages *stages) {
    int batch[4];
    if (add_inputs(b, kind, batch)) return -1;
    int *phi = maml_calloc((size_t)b->spec->n_params, sizeof *phi, b->err);
    if (!phi) return -1;
    b->g->origin = "fast_weights";
    for (int p = 0; p < b->spec->n_params; p++)
        phi[p] = layer_per_task(b->g, b->theta[p], b->tasks);
    int rc = 0;
    if (kind == MAML_EVAL) {
        rc = build_eval(b, phi, batch);
    } else {
        const MamlSettings *m = &b->spec->maml;
        for (int k = 0; k < m->inner.steps && rc == 0; k++)
            rc = inner_step(b, phi, k, m->inner.lr, batch, k == 0, stages);
        int loss = -1, acc = -1;
        if (rc == 0) query_metrics(b, phi, batch, &loss, &acc);
        graph_add_output(b->g, "meta_loss", loss);
        if (acc >= 0) graph_add_output(b->g, "meta_acc", acc);
        if (rc == 0 && graph_status(b->g, b->err) == 0)
            rc = build_update(b, kind, loss, stages);
        else
            rc = -1;
    }
    free(phi);
    return rc ? -1 : graph_status(b->g, b->err);
}

int maml_build(const GraphSpec *spec, MamlGraphKind kind, int64_t tasks, Graph *g,
               MamlStages *stages, MamlError *err) {
    int max_steps = spec->maml.inner.steps > 0 ? spec->maml.inner.steps : 1;
    Builder b = {.spec = spec, .g = g, .tasks = tasks, .max_steps = max_steps, .err = err};
    if (tasks <= 0)
        return maml_fail(err, "the number of tasks must be positive, not %lld", (long long)tasks);
    b.theta = maml_calloc((size_t)spec->n_params, sizeof *b.theta, err);
    b.lr_nodes = maml_calloc((size_t)(spec->n_layers * max_steps), sizeof *b.lr_nodes, err);
    int rc = -1;
    if (b.theta && b.lr_nodes) {
        for (int i = 0; i < spec->n_layers * max_steps; i++) b.lr_nodes[i] = -1;
        if (stages) memset(stages, 0, sizeof *stages);
        rc = build(&b, kind, stages);
    }
    free(b.theta);
    free(b.lr_nodes);
    g->origin = "";
    return rc;
}

int maml_learnable_inputs(const Graph *g, const char **names, int max) {
    int n = 0;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == OP_INPUT && g->nodes[i].input_kind == INPUT_PARAM) {
            if (n < max) names[n] = g->nodes[i].name;
            n++;
        }
    return n;
}
