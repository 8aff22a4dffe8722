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
    return backend_run_overlapped(b, inputs, NULL, NULL, outputs, err);
}

int backend_run_overlapped(Backend *b, const TensorSet *inputs, BackendOverlap overlap, void *ctx,
                           TensorSet *outputs, MamlError *err) {
    if (backend_launch(b, inputs, err)) return -1;
    int rc = overlap ? overlap(ctx, err) : 0;
    MamlError finish_err;
    int finished = backend_finish(b, outputs, rc ? &finish_err : err);
    return rc ? rc : finished;
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
        return maml_fail(err, "backend %s: a batch is already staged for the next launch", b->name);
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

/* inputs with the tensors of the n sets (the running batch, the held state) in place of theirs,
 * as a shallow view: its tensors borrow the originals' names and data, so it is released with
 * free(view->items) alone. */
static int overlay(const TensorSet *inputs, const TensorSet *const *sets, int n, TensorSet *view,
                   MamlError *err) {
    tensorset_init(view);
    view->items = maml_calloc((size_t)inputs->n + 1, sizeof *view->items, err);
    if (!view->items) return -1;
    view->cap = inputs->n + 1;
    for (int i = 0; i < inputs->n; i++) {
        const Tensor *t = &inputs->items[i];
        for (int k = 0; k < n; k++) {
            const Tensor *over = tensorset_find(sets[k], inputs->items[i].name);
            if (over) t = over;
        }
        view->items[view->n++] = *t;
    }
    return 0;
}

/* Whether output `name` feeds back: it bears the name of a graph input. */
static bool is_feedback(const Backend *b, const char *name) {
    return graph_find_input(b->graph, name) >= 0;
}

/* The synchronous backends' run: the inputs with the running batch and the held state in place;
 * when the state is kept, the feedback outputs go into held. */
static int finish_sync(Backend *b, TensorSet *outputs, MamlError *err) {
    const TensorSet *sets[2];
    int n_sets = 0;
    if (b->has_running) sets[n_sets++] = &b->running;
    if (b->holds_state) sets[n_sets++] = &b->held;
    if (n_sets == 0 && !b->keeps_state) return b->run(b, b->inputs, outputs, err);
    TensorSet view, all;
    tensorset_init(&all);
    int rc = overlay(b->inputs, sets, n_sets, &view, err);
    if (rc == 0) rc = b->run(b, &view, b->keeps_state ? &all : outputs, err);
    free(view.items);
    for (int i = 0; rc == 0 && i < all.n; i++) {
        const Tensor *t = &all.items[i];
        TensorSet *to = is_feedback(b, t->name) ? &b->held : outputs;
        if (!tensorset_add(to, t->name, t->dtype, t->shape, t->data, err)) rc = -1;
    }
    tensorset_free(&all);
    return rc;
}

int backend_finish(Backend *b, TensorSet *outputs, MamlError *err) {
    if (!b->launched) return maml_fail(err, "backend %s: no run launched", b->name);
    b->launched = false;
    int rc = b->finish ? b->finish(b, outputs, err) : finish_sync(b, outputs, err);
    if (rc == 0 && b->keeps_state) b->holds_state = true;
    return rc;
}

int backend_keep_state(Backend *b, MamlError *err) {
    if (b->launched) return maml_fail(err, "backend %s: a run is launched", b->name);
    if (b->keeps_state) return 0;
    if (b->keep_state && b->keep_state(b, err)) return -1;
    b->keeps_state = true;
    return 0;
}

int backend_get_state(Backend *b, TensorSet *state, MamlError *err) {
    if (b->launched) return maml_fail(err, "backend %s: a run is launched", b->name);
    if (!b->holds_state) return 0;
    if (b->get_state) return b->get_state(b, state, err);
    for (int i = 0; i < b->held.n; i++) {
        const Tensor *t = &b->held.items[i];
        if (!tensorset_add(state, t->name, t->dtype, t->shape, t->data, err)) return -1;
    }
    return 0;
}

void backend_close(Backend *b) {
    if (!b) return;
    tensorset_free(&b->staged);
    tensorset_free(&b->running);
    tensorset_free(&b->held);
    b->destroy(b);
}
