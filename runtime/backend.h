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
    /* Runs the graph: inputs by name (see ref_run), every graph output added to outputs. NULL
     * for a backend that runs asynchronously (the three below instead). */
    int (*run)(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err);
    /* backend_launch, backend_stage and backend_finish of an asynchronous backend (cuda); NULL
     * where run is synchronous, and backend.c keeps the bookkeeping below. */
    int (*launch)(Backend *b, const TensorSet *inputs, MamlError *err);
    int (*stage)(Backend *b, const TensorSet *data, MamlError *err);
    int (*finish)(Backend *b, TensorSet *outputs, MamlError *err);
    /* backend_keep_state and backend_get_state of a backend that keeps the state itself (cuda:
     * on the device); NULL: backend.c keeps it in `held`. */
    int (*keep_state)(Backend *b, MamlError *err);
    int (*get_state)(Backend *b, TensorSet *state, MamlError *err);
    void (*destroy)(Backend *b);
    const Graph *graph; /* not owned: must outlive the backend */
    Precision prec;
    void *impl;
    /* backend.c's bookkeeping; staged, running and held serve the synchronous backends only */
    bool launched;             /* between backend_launch and backend_finish */
    const TensorSet *inputs;   /* the launched run's */
    TensorSet staged, running; /* batches for the next launch and for the launched run */
    bool has_staged, has_running;
    bool keeps_state; /* backend_keep_state was called */
    bool holds_state; /* a run finished since: the fed-back inputs are the backend's */
    TensorSet held;   /* their values, for the synchronous backends */
};

/* Opens a backend by name for graph g: "ref", "cpu", "cuda" or "auto" (the fastest one that works
 * here; *why, when not NULL, receives a one-line reason for the choice). An unknown name or one not
 * available on this machine is an error that says why. */
int backend_open(const char *name, const Graph *g, Precision prec, Backend **out, char *why,
                 int why_size, MamlError *err);

/* Runs b once: backend_launch, then backend_finish. */
int backend_run(Backend *b, const TensorSet *inputs, TensorSet *outputs, MamlError *err);

/* Work done while a run computes: the callers fetch the next batch and backend_stage it. */
typedef int (*BackendOverlap)(void *ctx, MamlError *err);

/* Runs b once with overlap(ctx) between backend_launch and backend_finish (NULL: nothing). A
 * launched run is always finished, even when overlap fails, so b is ready for the next run; the
 * first error is the one reported. */
int backend_run_overlapped(Backend *b, const TensorSet *inputs, BackendOverlap overlap, void *ctx,
                           TensorSet *outputs, MamlError *err);

/* Runs in two halves, so that the next step's batch can travel to the device while this step
 * computes (the trainer: launch step k, stage batch k+1, finish step k):
 *   backend_launch starts a run on inputs, which must stay unchanged until backend_finish; data
 *     inputs staged since the last launch take the place of those in inputs (which must still be
 *     there and well shaped: a stale batch does);
 *   backend_stage hands over the data inputs (INPUT_DATA: the task batch) of the next launch,
 *     checked by inputs_check_data; the cuda backend copies them on a second stream at once, the
 *     others keep a copy; at most once between two launches;
 *   backend_finish waits for the run and adds its outputs to outputs.
 * One run at a time: launching twice, or finishing without a launch, is an error. */
int backend_launch(Backend *b, const TensorSet *inputs, MamlError *err);
int backend_stage(Backend *b, const TensorSet *data, MamlError *err);
int backend_finish(Backend *b, TensorSet *outputs, MamlError *err);

/* The state kept on the backend between runs (the trainer's parameters and optimizer state stay
 * on the device): after backend_keep_state, each output that bears an input's name (the updated
 * state: the feedback) becomes that input for the next launch inside the backend, and
 * backend_finish adds only the other outputs. Launches take the fed-back inputs from their
 * `inputs` until the first run has finished. backend_get_state adds (or replaces, by name) the
 * values the next launch would use to state; nothing before the first finished run. Neither may
 * be called while a run is launched. */
int backend_keep_state(Backend *b, MamlError *err);
int backend_get_state(Backend *b, TensorSet *state, MamlError *err);

/* Releases b; NULL is allowed. */
void backend_close(Backend *b);

#endif
