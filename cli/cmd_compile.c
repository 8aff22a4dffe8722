/* mamlc compile: builds the training graphs and writes what the compiler made into DIR. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "codegen.h"
#include "dot.h"
#include "maml.h"

typedef struct {
    const char *graph, *out_dir, *backend;
    bool dot;
    Overrides overrides;
} CompileArgs;

static int parse_args(int argc, char **argv, CompileArgs *a) {
    memset(a, 0, sizeof *a);
    a->backend = "cpu";
    for (int i = 1; i < argc; i++) {
        int taken = cli_take_override(argc, argv, &i, &a->overrides);
        if (taken < 0) return -1;
        if (taken) continue;
        if (strcmp(argv[i], "--dot") == 0) a->dot = true;
        else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) a->out_dir = argv[++i];
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) a->backend = argv[++i];
        else if (argv[i][0] != '-' && !a->graph) a->graph = argv[i];
        else {
            cli_error("compile: unexpected argument '%s'", argv[i]);
            return -1;
        }
    }
    if (!a->graph || !a->out_dir) {
        cli_error("usage: mamlc compile GRAPH.yaml -o DIR [--backend cuda|cpu] [--dot] [--set K=V]");
        return -1;
    }
    return 0;
}

static int write_dumps(const CompileArgs *a, const Graph *g, const MamlStages *st, MamlError *err) {
    static const char *files[3] = {"forward.dot", "inner_grad.dot", "step.dot"};
    int counts[3] = {st->forward_nodes, st->inner_grad_nodes, g->n_nodes};
    for (int i = 0; i < 3; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", a->out_dir, files[i]);
        if (graph_write_dot(g, counts[i], path, err)) return -1;
    }
    return 0;
}

static int write_cpu(const CompileArgs *a, const Graph *g, MamlError *err) {
    CpuCompileSummary s;
    if (codegen_write_cpu_dir(g, a->out_dir, a->graph, false, &s, err)) return -1;
    printf("  cpu kernels                  %6d (%d without fusion), arena %.1f MiB "
           "(liveness bound %.1f MiB), %.3f s\n",
           s.kernels, s.unfused_kernels, (double)s.arena_bytes / 1048576.0,
           (double)s.lower_bound / 1048576.0, s.seconds);
    printf("wrote %s/{kernels.c,plan.json,report.txt}\n", a->out_dir);
    return 0;
}

static int run_compile(const CompileArgs *a, MamlError *err) {
    if (mkdir(a->out_dir, 0777) != 0 && errno != EEXIST)
        return maml_fail(err, "%s: cannot create directory: %s", a->out_dir, strerror(errno));
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    MamlStages st;
    int rc = spec_load(a->graph, a->overrides.items, a->overrides.n, &spec, err);
    if (rc == 0) rc = maml_build(&spec, MAML_TRAIN_STEP, spec.maml.meta_batch, &g, &st, err);
    if (rc == 0) {
        printf("graph %s (meta_batch %d, %d inner step%s, %s order)\n", a->graph,
               spec.maml.meta_batch, spec.maml.inner.steps, spec.maml.inner.steps == 1 ? "" : "s",
               spec.maml.inner.first_order ? "first" : "second");
        printf("  forward (support set)        %6d nodes\n", st.forward_nodes);
        printf("  + first inner gradient       %6d nodes\n", st.inner_grad_nodes);
        printf("  full training step           %6d nodes\n", g.n_nodes);
    }
    if (rc == 0 && a->dot) rc = write_dumps(a, &g, &st, err);
    if (rc == 0 && a->dot) printf("wrote %s/{forward,inner_grad,step}.dot\n", a->out_dir);
    if (rc == 0 && strcmp(a->backend, "cpu") == 0) rc = write_cpu(a, &g, err);
    graph_free(&g);
    spec_free(&spec);
    return rc;
}

int cmd_compile(int argc, char **argv) {
    CompileArgs a;
    if (parse_args(argc, argv, &a)) return 2;
    MamlError err;
    if (run_compile(&a, &err)) {
        cli_error("%s", err.message);
        return 2;
    }
    return 0;
}
