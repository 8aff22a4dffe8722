#include "backend.h"

#include "cpu_backend.h"
#include "cuda_backend.h"
#include "inputs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ref_backend_run(Backend *b, const TensorSet *inputs, TensorSet *outputs,
                           MamlError *err) {
    return ref_run(b->graph, b->prec, inputs, outputs, err);
}

static void plain_destroy(Backend *b) {
    free(b);
}

static int open_ref(const Graph *g, Precision prec, Backend **out, MamlError *err) {
    Backend *b = maml_calloc(1, sizeof *b, err);
    if (!b) return -1;
    b->name = "ref";
    b->run = ref_backend_run;
    b->destroy = plain_destroy;
    b->graph = g;
    b->prec = prec;
    *out = b;
    return 0;
}

/* cuda when a driver, a device and NVRTC work; else cpu when a C compiler runs; else ref. why
 * says which, and why not the faster ones, in one line. */
static int open_auto(const Graph *g, Precision prec, Backend **out, char *why, int why_size,
                     MamlError *err) {
    char cuda_why[MAML_ERROR_MAX + 16], cpu_why[400];
    if (cuda_device_available(cuda_why, sizeof cuda_why)) {
        MamlError cuda_err;
        if (cuda_backend_open(g, prec, NULL, out, &cuda_err) == 0) {
            if (why) snprintf(why, (size_t)why_size, "backend auto: cuda (%s)", cuda_why);
            return 0;
        }
        snprintf(cuda_why, sizeof cuda_why, "cuda failed: %s", cuda_err.message);
    }
    if (cpu_compiler_available(NULL, cpu_why, sizeof cpu_why)) {
        if (why) snprintf(why, (size_t)why_size, "backend auto: cpu (%s; %s)", cuda_why, cpu_why);
        return cpu_backend_open(g, prec, NULL, out, err);
    }
    if (why)
        snprintf(why, (size_t)why_size, "backend auto: ref (%s; cpu unavailable: %s)", cuda_why,
                 cpu_why);
    return open_ref(g, prec, out, err);
}

int backend_open(const char *name, const Graph *g, Precision prec, Backend **out, char *why,
                 int why_size, MamlError *err) {
    *out = NULL;
    if (strcmp(name, "auto") == 0) return open_auto(g, prec, out, why, why_size, err);
    if (strcmp(name, "cpu") == 0) {
        if (why) snprintf(why, (size_t)why_size, "backend cpu: requested");
        return cpu_backend_open(g, prec, NULL, out, err);
    }
    if (strcmp(name, "ref") == 0) {
        if (why) snprintf(why, (size_t)why_size, "backend ref: requested");
        return open_ref(g, prec, out, err);
    }
    if (strcmp(name, "cuda") == 0) {
        if (why) snprintf(why, (size_t)why_size, "backend cuda: requested");
        return cuda_backend_open(g, prec, NULL, out, err);
    }
    return maml_fail(err, "unknown backend '%s' (expected ref, cpu, cuda or auto)", name);
}

int backend_run(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err) {
    if (backend_launch(b, inputs, err)) return -1;
    return backend_finish(b, outputs, err);
}

int backend_launch(Backend *b, const TensorSet *inputs, MamlError *err) {
    if (b->launched)
        return maml_fail(err, "backend %s: a run is already launched (finish it first)", b->name);
    if (b->launch) {
        if (b->launch(b, inputs, err)) return -1;
    } else {
        b->inputs = inputs;
        tensorset_free(&b->running);
        b->running = b->staged;
        b->has_running = b->has_staged;
        tensorset_init(&b->staged);
    }
    b->has_staged = false;
    b->launched = true;
    return 0;
}

int backend_stage(Backend *b, const TensorSet *data, MamlError *err) {
    if (b->has_staged)
        return maml_fail(err, "backend %s: a batch is already staged for the next launch",
                         b->name);
    if (inputs_check_data(b->graph, data, err)) return -1;
    if (b->stage) {
        if (b->stage(b, data, err)) return -1;
    } else {
        tensorset_free(&b->staged);
        for (int i = 0; i < data->n; i++) {
            const Tensor *t = &data->items[i];
            if (!tensorset_add(&b->staged, t->name, t->dtype, t->shape, t->data, err)) return -1;
        }
    }
    b->has_staged = true;
    return 0;
}

/* inputs with the running batch in place of theirs, as a shallow view: its tensors borrow the
 * originals' names and data, so it is released with free(view->items) alone. */
static int overlay(const TensorSet *inputs, const TensorSet *batch, TensorSet *view,
                   MamlError *err) {
    tensorset_init(view);
    view->items = maml_calloc((size_t)inputs->n + 1, sizeof *view->items, err);
    if (!view->items) return -1;
    view->cap = inputs->n + 1;
    for (int i = 0; i < inputs->n; i++) {
        const Tensor *t = tensorset_find(batch, inputs->items[i].name);
        view->items[view->n++] = t ? *t : inputs->items[i];
    }
    return 0;
}

int backend_finish(Backend *b, TensorSet *outputs, MamlError *err) {
    if (!b->launched) return maml_fail(err, "backend %s: no run launched", b->name);
    b->launched = false;
    if (b->finish) return b->finish(b, outputs, err);
    if (!b->has_running) return b->run(b, b->inputs, outputs, err);
    TensorSet view;
    if (overlay(b->inputs, &b->running, &view, err)) return -1;
    int rc = b->run(b, &view, outputs, err);
    free(view.items);
    return rc;
}

void backend_close(Backend *b) {
    if (!b) return;
    tensorset_free(&b->staged);
    tensorset_free(&b->running);
    b->destroy(b);
}
