/* libFuzzer target: `--set KEY=VALUE` overrides. The input is split at newlines into at most 64
 * override strings (the CLI's limit) and applied to graphs/omniglot_seed.yaml (or the graph
 * named by $MAMLC_FUZZ_GRAPH), through the same spec_load the CLI calls. A failure must say why;
 * an accepted spec must have at least one layer and its parameters. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "spec.h"

static const char *graph_path(void) {
    const char *g = getenv("MAMLC_FUZZ_GRAPH");
    return g && *g ? g : "graphs/omniglot_seed.yaml";
}

/* Runs from the repository root (tests/fuzz/run.sh does); say so rather than fuzz a missing
 * file, which would only ever exercise "cannot open". */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (access(graph_path(), R_OK) != 0) {
        fprintf(stderr, "fuzz_overrides: cannot read %s (run from the repository root)\n",
                graph_path());
        exit(2);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int n;
    char *text;
    const char **overrides = fuzz_split_overrides(data, size, &n, &text);
    GraphSpec spec;
    MamlError err = {{0}};
    int rc = spec_load(graph_path(), overrides, n, &spec, &err);
    fuzz_report(rc, &err);
    if (rc == 0) {
        if (spec.n_layers < 1 || spec.n_params < 1) abort();
    } else if (!err.message[0]) {
        abort();
    }
    spec_free(&spec);
    free(overrides);
    free(text);
    return 0;
}
