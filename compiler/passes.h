/* Graph-to-graph optimizing passes: dead-code elimination, common-subexpression elimination,
 * constant folding and algebraic simplification, iterated to a fixed point.
 *
 * Every pass reads one graph and writes a new one through the graph.c builders, so each emitted
 * node has its shape and dtype inferred again, and the result is checked against the node it
 * replaces: a rewrite can never change what a node means to its users, only how it is computed.
 * The optimized graph keeps the interface of the original: every INPUT node (with its name, kind,
 * dtype and shape, in the original relative order, even when nothing reads it) and every output
 * (same names, same order); node ids are renumbered and origins are kept (the pointers are
 * shared, so whatever owned the original's origins, e.g. the spec, must outlive the result).
 *
 * Passes run AFTER autodiff: stop_grad is dropped (it is the identity on values), so an
 * optimized graph must not be differentiated again.
 *
 * Values are preserved exactly or to floating-point rounding (reassociated sums and products such
 * as reduce_sum(broadcast(x)) -> x * count, folded constants, merged scalings), with one class of
 * exception behind PassOptions.assume_finite, on by default: x * 0 -> 0, and a zero operand of
 * matmul or a convolution giving zero. Under IEEE 754 these are wrong when the other operand holds
 * an inf or a NaN (inf * 0 = NaN). The MAML graphs only carry finite values (data, weights, their
 * gradients and optimizer state), so the rules are sound there; a graph that propagates
 * non-finite values on purpose should turn the option off. (In the shipped graphs the structural
 * zeros, ReLU's and max's, sit inside selects, so these two rules rarely fire at all.)
 *
 * Fold and simplify leave the nodes they bypass in place; the dce of the next round removes them,
 * so a report may show a pass's count go up before it comes down. */
#ifndef MAMLC_PASSES_H
#define MAMLC_PASSES_H

#include <stdbool.h>
#include <stdio.h>

#include "error.h"
#include "graph.h"

/* The rewrite rules, counted in PassReport.rule_hits (names by pass_rule_name). */
typedef enum {
    /* fold: the result of an op on fill constants is a fill constant */
    RULE_FOLD_ELEMENTWISE, /* unary or binary op of fills */
    RULE_FOLD_SHAPE,       /* broadcast, reshape or permute of a fill */
    RULE_FOLD_REDUCE,      /* reduce_sum of fill c = c * count; reduce_max of fill c = c */
    RULE_FOLD_MATMUL,      /* matmul of fills a, b = a * b * K */
    RULE_FOLD_POOL,        /* max_pool2d(fill c) = c; pool_gather(x, fill c) = c;
                              pool_scatter(x, fill 0) = 0 */
    RULE_FOLD_SELECT,      /* select on a comparison of fills picks its branch;
                              select(m, fill c, fill c) = c */
    /* simplify */
    RULE_MUL_ONE,       /* x * 1, 1 * x -> x */
    RULE_MUL_ZERO,      /* x * 0, 0 * x -> 0 (assume_finite) */
    RULE_MUL_NEG_ONE,   /* x * -1, -1 * x -> neg x */
    RULE_DIV_ONE,       /* x / 1 -> x */
    RULE_ADD_ZERO,      /* x + 0, 0 + x, x - 0 -> x */
    RULE_ZERO_SUB,      /* 0 - x -> neg x */
    RULE_NEG_NEG,       /* neg(neg x) -> x */
    RULE_NEG_ABSORB,    /* a + neg b -> a - b; neg a + b -> b - a; a - neg b -> a + b;
                           neg a * neg b -> a * b; neg a * c -> a * (-c) for a fill c */
    RULE_NEG_SINK,      /* reduce_sum(neg x) -> neg(reduce_sum x) when the neg has no other
                           user: the negation moves to the smaller tensor, where the rules
                           above usually absorb it */
    RULE_SCALE_SCALE,   /* (x * c) * d -> x * (c*d) for fills c, d */
    RULE_STOP_GRAD,     /* stop_grad x -> x (passes run after autodiff) */
    RULE_SELECT_SAME,   /* select(m, a, a) -> a */
    RULE_SELECT_NESTED, /* select(m, select(m, a, b), c) -> select(m, a, c), and on the right */
    RULE_BROADCAST_IDENTITY,  /* broadcast to the operand's own shape -> x */
    RULE_BROADCAST_BROADCAST, /* broadcast(broadcast x) -> one broadcast */
    RULE_RESHAPE_IDENTITY,    /* reshape to the operand's own shape -> x */
    RULE_RESHAPE_RESHAPE,     /* reshape(reshape x) -> one reshape */
    RULE_PERMUTE_IDENTITY,    /* identity permutation -> x */
    RULE_PERMUTE_PERMUTE,     /* permute(permute x) -> one composed permute (or x) */
    RULE_REDUCE_TRIVIAL,      /* size-1 axes dropped from a reduction; none left -> x */
    RULE_REDUCE_REDUCE,       /* reduce(reduce(x, A), B) of the same kind -> reduce(x, A | B) */
    RULE_REDUCE_BROADCAST,    /* reduce over (a superset of) a broadcast's expanded axes:
                                 sum -> x * count (after reducing the other axes), max -> x */
    RULE_ZERO_PRODUCT,        /* matmul / conv2d family with a zero operand -> 0 (assume_finite) */
    RULE_POOL_RELU_MASK,      /* with r = relu(y) = select(y > 0, y, 0) and p = max_pool2d(r):
                                 select(y > 0, pool_scatter(r, g), 0)
                                   -> pool_scatter(r, select(p > 0, g, 0)),
                                 pool_gather(r, select(y > 0, z, 0))
                                   -> select(p > 0, pool_gather(r, z), 0): exact, the ReLU's
                                 mask moves to the pooled shape (a window's argmax is positive
                                 exactly when its maximum is) */
    PASS_RULE_COUNT
} PassRule;

typedef struct {
    bool dce, cse, fold, simplify; /* which passes run */
    bool assume_finite;            /* allow RULE_MUL_ZERO and RULE_ZERO_PRODUCT (see above) */
    int max_rounds;                /* cap on rounds of all passes; the fixed point comes first */
} PassOptions;

/* The report keeps the first PASS_REPORT_STEPS pass applications (16 rounds of 4 passes fit). */
#define PASS_REPORT_STEPS 72

/* One pass application. */
typedef struct {
    const char *pass; /* "dce", "cse", "fold", "simplify" */
    int round;        /* 1-based round of the fixed-point loop */
    int nodes;        /* node count after the pass */
    int rewrites;     /* dce: nodes removed; cse: nodes merged; fold/simplify: rules applied */
    double ms;        /* wall time of the pass */
} PassStep;

typedef struct {
    int nodes_before, nodes_after;
    int rounds;
    bool fixed_point; /* false when max_rounds stopped the loop first */
    int n_steps;
    PassStep steps[PASS_REPORT_STEPS];
    int rule_hits[PASS_RULE_COUNT];
    double total_ms; /* all passes, including the check of the input graph */
} PassReport;

/* Every pass on, assume_finite on, max_rounds 16. */
PassOptions passes_default_options(void);

/* Optimizes in with the default options into out, a new graph (out is initialised here; free it
 * with graph_free). report may be NULL. Returns 0, or -1 with err filled and out left empty (a
 * malformed input graph, or an internal inconsistency naming the pass and the node). */
int passes_optimize(const Graph *in, Graph *out, PassReport *report, MamlError *err);

/* The same with explicit options (NULL: the defaults). */
int passes_optimize_with(const Graph *in, Graph *out, const PassOptions *opt, PassReport *report,
                         MamlError *err);

/* Verifies a graph: each node's op, operand count and operand ids (every operand precedes its
 * user), INPUT names present and unique, outputs valid and uniquely named, and every node's shape
 * and dtype equal to what the builders infer again from its operands and attributes. Returns 0,
 * or -1 with err naming the first offending node. */
int graph_check(const Graph *g, MamlError *err);

/* The rule's short name ("mul_one", "reduce_broadcast", ...). */
const char *pass_rule_name(PassRule rule);

/* Prints the report as text: node counts before, after each pass, and after; time; rule hits. */
void pass_report_print(const PassReport *r, FILE *f);

/* Prints the report as one JSON object (no trailing newline), to embed in a larger document:
 * {"nodes_before": N, "nodes_after": N, "rounds": R, "fixed_point": true, "ms": T,
 *  "steps": [{"pass": "dce", "round": 1, "nodes": N, "rewrites": K, "ms": T}, ...],
 *  "rules": {"mul_one": K, ...}} (rules that never fired are left out). */
void pass_report_json(const PassReport *r, FILE *f);

#endif
