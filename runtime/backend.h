/* A backend runs one compiled graph many times: "ref" (the interpreter), "cpu" (generated C) and
 * "cuda" (generated CUDA) all present this interface, so the trainer, `grad`, `eval` and `bench`
 * never care which one they drive. */
#ifndef MAMLC_BACKEND_H
#define MAMLC_BACKEND_H

#include "graph.h"
#include "ref.h"
#include "tensor.h"

typedef struct Backend Backend;

struct Backend {
    const char *name; /* "ref", "cpu", "cuda" */
    /* Runs the graph: inputs by name (see ref_run), every graph output added to outputs. */
    int (*run)(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err);
    void (*destroy)(Backend *b);
    const Graph *graph; /* not owned: must outlive the backend */
    Precision prec;
    void *impl;
};

/* Opens a backend by name for graph g: "ref", "cpu", "cuda" or "auto" (the fastest one that works
 * here; *why, when not NULL, receives a one-line reason for the choice). An unknown name or one not
 * available on this machine is an error that says why. */
int backend_open(const char *name, const Graph *g, Precision prec, Backend **out, char *why,
                 int why_size, MamlError *err);

/* Runs b once (b->run). */
int backend_run(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err);

/* Releases b; NULL is allowed. */
void backend_close(Backend *b);

#endif
