/* make_inputs: writes a parameter file and a task batch file for a graph, for `mamlc grad` runs
 * outside the Criterion suite (scripts/valgrind_check.sh).
 *
 *   make_inputs GRAPH.yaml PARAMS.safetensors BATCH.safetensors [TASKS] [--set KEY=VALUE ...]
 *
 * The parameters are params_init's (the graph's data.seed); the batch holds TASKS tasks (default
 * 1) in the graph's layout: sinusoid tasks from the sampler, and for Omniglot graphs uniform
 * random pixels with labels 0..n_way-1 in the sampler's order (example i is class i % n_way), so
 * no archive is needed. Exit status 0, or 2 with one line on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "rng.h"
#include "safetensors.h"
#include "spec.h"
#include "tasks.h"

static void random_batch(const GraphSpec *spec, Rng *rng, TaskBatch *b) {
    int n_way = spec->maml.n_way;
    for (int64_t i = 0; i < (int64_t)b->tasks * b->support * b->x_numel; i++)
        b->support_x[i] = (float)rng_uniform(rng);
    for (int64_t i = 0; i < (int64_t)b->tasks * b->query * b->x_numel; i++)
        b->query_x[i] = (float)rng_uniform(rng);
    for (int t = 0; t < b->tasks; t++) {
        for (int i = 0; i < b->support; i++) b->support_y[t * b->support + i] = i % n_way;
        for (int i = 0; i < b->query; i++) b->query_y[t * b->query + i] = i % n_way;
    }
}

static int make(const char *graph, const char *params_path, const char *batch_path, int tasks,
                const char *const *ov, int n_ov, MamlError *err) {
    GraphSpec spec = {0};
    TensorSet params, batch;
    TaskBatch b = {0};
    tensorset_init(&params);
    tensorset_init(&batch);
    int rc = spec_load(graph, ov, n_ov, &spec, err);
    if (rc == 0) rc = params_init(&spec, spec.data.seed, &params, err);
    if (rc == 0) rc = safetensors_write(params_path, &params, err);
    bool regression = rc == 0 && spec.data.dataset == DATASET_SINUSOID;
    if (rc == 0)
        rc = task_batch_init(&b, tasks, spec_support_size(&spec), spec_query_size(&spec),
                             spec.input, regression ? 1 : 0, err);
    Rng rng;
    rng_seed(&rng, spec.data.seed);
    if (rc == 0 && regression) rc = sinusoid_sample(&spec.data, &rng, &b, NULL, NULL, err);
    if (rc == 0 && !regression) random_batch(&spec, &rng, &b);
    if (rc == 0) rc = task_batch_to_tensors(&b, &batch, err);
    if (rc == 0) rc = safetensors_write(batch_path, &batch, err);
    task_batch_free(&b);
    tensorset_free(&params);
    tensorset_free(&batch);
    spec_free(&spec);
    return rc;
}

int main(int argc, char **argv) {
    const char *ov[64];
    int n_ov = 0, tasks = 1;
    const char *pos[4] = {0};
    int n_pos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc && n_ov < 64) {
            ov[n_ov++] = argv[++i];
        } else if (n_pos < 4 && argv[i][0] != '-') {
            pos[n_pos++] = argv[i];
        } else {
            n_pos = -1;
            break;
        }
    }
    if (n_pos == 4) tasks = atoi(pos[3]);
    if (n_pos < 3 || tasks < 1) {
        fprintf(stderr, "usage: make_inputs GRAPH.yaml PARAMS.safetensors BATCH.safetensors "
                        "[TASKS] [--set KEY=VALUE ...]\n");
        return 2;
    }
    MamlError err = {{0}};
    if (make(pos[0], pos[1], pos[2], tasks, ov, n_ov, &err)) {
        fprintf(stderr, "make_inputs: %s\n", err.message);
        return 2;
    }
    return 0;
}
