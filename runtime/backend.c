#include "backend.h"

#include "cpu_backend.h"
#include "cuda_backend.h"

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
    return b->run(b, inputs, outputs, err);
}

void backend_close(Backend *b) {
    if (b) b->destroy(b);
}
