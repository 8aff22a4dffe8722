/* The MAML graphs: the inner loop unrolled on every task's support set with per-task fast
 * weights (all T tasks flow through the same nodes), the query loss at the adapted weights, the
 * meta-gradient (second order unless inner.first_order), and the outer update.
 *
 * Graph inputs: every parameter under its PyTorch name; "inner_lr.<layer>.step<k>" scalars when
 * inner.lr is learnable; support_x [T,S,...], support_y [T,S] (int labels, or [T,S,F] targets
 * for regression), query_x, query_y; for training with Adam "adam/m/NAME", "adam/v/NAME" and
 * the scalar "adam/step" (1-based number of this update).
 * Outputs: "meta_loss" [], "meta_acc" [] (classification), and per kind below. */
#ifndef MAMLC_MAML_H
#define MAMLC_MAML_H

#include "graph.h"
#include "spec.h"

typedef enum {
    MAML_META_GRAD,  /* + "grad/NAME" for every learnable input */
    MAML_TRAIN_STEP, /* + the updated "NAME", "adam/m/NAME", "adam/v/NAME" */
    MAML_EVAL,       /* eval.inner_steps with eval.lr, no update; + "loss/step<k>", "acc/step<k>"
                        after k steps, and the adapted weights "fast/NAME" [T, ...] */
} MamlGraphKind;

/* Names of the graph stages for dumps: the forward pass on the support set, the first-order
 * gradient graph (one inner step), the full graph. */
typedef struct {
    int forward_nodes;    /* nodes after the first support forward pass */
    int inner_grad_nodes; /* nodes after the first inner gradient */
} MamlStages;

/* Builds the graph of the given kind for `tasks` tasks into g (initialised by the caller).
 * stages may be NULL. Returns 0, or -1 with err naming the failing layer or rule. */
int maml_build(const GraphSpec *spec, MamlGraphKind kind, int64_t tasks, Graph *g,
               MamlStages *stages, MamlError *err);

/* The learnable parameters the graph expects, in order: the model's, then the learnable inner
 * learning rates. names[i] points into storage owned by the graph (its INPUT nodes). */
int maml_learnable_inputs(const Graph *g, const char **names, int max);

#endif
