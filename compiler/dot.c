#include "dot.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void write_node(FILE *f, const Graph *g, int i) {
    const Node *n = &g->nodes[i];
    char shape[128];
    shape_str(n->shape, shape, sizeof shape);
    const char *fill = n->op == OP_INPUT ? "lightblue" : n->op == OP_CONST ? "gray90" : "white";
    fprintf(f, "  n%d [label=\"%s%s%s\\n%s\\n%s\", style=filled, fillcolor=%s];\n", i,
            op_info[n->op].name, n->name ? " " : "", n->name ? n->name : "", shape, n->origin,
            fill);
    for (int k = 0; k < n->n_in; k++) fprintf(f, "  n%d -> n%d;\n", n->in[k], i);
}

int graph_write_dot(const Graph *g, int n_nodes, const char *path, MamlError *err) {
    FILE *f = fopen(path, "w");
    if (!f) return maml_fail(err, "%s: cannot write: %s", path, strerror(errno));
    if (n_nodes > g->n_nodes) n_nodes = g->n_nodes;
    fprintf(f, "digraph mamlc {\n  node [shape=box, fontname=monospace, fontsize=9];\n");
    for (int i = 0; i < n_nodes; i++) write_node(f, g, i);
    for (int i = 0; i < g->n_outputs; i++) {
        if (g->outputs[i].node >= n_nodes) continue;
        fprintf(f, "  out%d [label=\"%s\", shape=ellipse, style=filled, fillcolor=palegreen];\n", i,
                g->outputs[i].name);
        fprintf(f, "  n%d -> out%d;\n", g->outputs[i].node, i);
    }
    fprintf(f, "}\n");
    if (ferror(f) | fclose(f)) return maml_fail(err, "%s: write failed: %s", path, strerror(errno));
    return 0;
}
