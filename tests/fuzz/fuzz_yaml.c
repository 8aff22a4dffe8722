/* libFuzzer target: the YAML front end through shape inference. The input is a graph file;
 * spec_load parses it, expands blocks, resolves references, validates every setting and infers
 * shapes. Besides crashes and sanitizer reports, two invariants abort: a failure must say why
 * (a non-empty message), and an accepted spec must be internally consistent. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "spec.h"

/* What every later stage assumes of an accepted spec. */
static void check_spec(const GraphSpec *s) {
    if (s->n_layers < 1 || s->n_params < 0 || s->n_params > 2 * s->n_layers) abort();
    for (int i = 0; i < s->n_layers; i++) {
        const ExampleShape *y = &s->layers[i].out_shape;
        if (y->rank != 1 && y->rank != 3) abort();
        for (int d = 0; d < y->rank; d++)
            if (y->dims[d] <= 0) abort();
    }
    for (int i = 0; i < s->n_params; i++)
        if (s->params[i].layer < 0 || s->params[i].layer >= s->n_layers || !s->params[i].name[0])
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path(0, "graph.yaml");
    fuzz_write_file(path, data, size);
    GraphSpec spec;
    MamlError err = {{0}};
    int rc = spec_load(path, NULL, 0, &spec, &err);
    fuzz_report(rc, &err);
    if (rc == 0)
        check_spec(&spec);
    else if (!err.message[0])
        abort();
    spec_free(&spec);
    return 0;
}
