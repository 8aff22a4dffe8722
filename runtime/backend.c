#include "backend.h"

#include "cpu_backend.h"

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

int backend_open(const char *name, const Graph *g, Precision prec, Backend **out, char *why,
                 int why_size, MamlError *err) {
    *out = NULL;
    if (strcmp(name, "auto") == 0) {
        char reason[400];
        if (cpu_compiler_available(NULL, reason, sizeof reason)) {
            if (why) snprintf(why, (size_t)why_size, "backend auto: cpu (%s)", reason);
            return cpu_backend_open(g, prec, NULL, out, err);
        }
        if (why) snprintf(why, (size_t)why_size, "backend auto: ref (cpu unavailable: %s)", reason);
        return open_ref(g, prec, out, err);
    }
    if (strcmp(name, "cpu") == 0) {
        if (why) snprintf(why, (size_t)why_size, "backend cpu: requested");
        return cpu_backend_open(g, prec, NULL, out, err);
    }
    if (strcmp(name, "ref") == 0) {
        if (why) snprintf(why, (size_t)why_size, "backend ref: requested");
        return open_ref(g, prec, out, err);
    }
    if (strcmp(name, "cuda") == 0)
        return maml_fail(err, "backend '%s' is not available in this build (use ref, cpu or auto)", name);
    return maml_fail(err, "unknown backend '%s' (expected ref, cpu, cuda or auto)", name);
}

int backend_run(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err) {
    return b->run(b, inputs, outputs, err);
}

void backend_close(Backend *b) {
    if (b) b->destroy(b);
}
