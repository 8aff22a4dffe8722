/* Graphviz dumps of the graph IR, for reading what the compiler built. */
#ifndef MAMLC_DOT_H
#define MAMLC_DOT_H

#include "graph.h"

/* Writes the first n_nodes nodes of g (a prefix of an append-only graph is itself a graph) to
 * path as a Graphviz digraph: one box per node with its op, shape and origin; inputs and
 * outputs labelled by name. */
int graph_write_dot(const Graph *g, int n_nodes, const char *path, MamlError *err);

#endif
