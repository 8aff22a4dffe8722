/* Shared machinery of the passes (passes.c: driver, dce, cse, check, report; passes_rewrite.c:
 * fold and simplify). Not a public interface. */
#ifndef MAMLC_PASSES_INTERNAL_H
#define MAMLC_PASSES_INTERNAL_H

#include "passes.h"

/* One pass in progress: src is read, dst is written, map[i] is the dst node that now stands for
 * src node i (-1 for nodes dce dropped). Rules see their operands already mapped, i.e. already
 * rewritten by the same pass, so chains collapse in one sweep. */
typedef struct {
    const Graph *src;
    Graph *dst;
    int *map;
    const PassOptions *opt;
    int rewrites;
    int *rule_hits; /* PassReport.rule_hits */
    void *ctx;      /* the pass's own state (cse: its hash table) */
    /* Use counts, for rules that only pay off when they make a node dead: uses[i] counts the
     * operand and output references to src node i; stands_for[d] is the src node dst node d was
     * made for, or -1 when it stands for several (a rule returned an existing node) or none. */
    int *uses;
    int *stands_for;
    int cap_stands_for;
} Rewrite;

/* A rule: the dst node for src node i (a new node, or an existing one it equals), or -1 after
 * a builder failure (recorded in dst). */
typedef int (*NodeRule)(Rewrite *rw, int i);

/* Re-creates node n in g through the builders; n->in refers to nodes of g. Returns the new id or
 * -1 (g->failed set). */
int pass_emit(Graph *g, const Node *n);

/* Emits src node i unchanged, its operands mapped. */
int pass_copy(Rewrite *rw, int i);

/* Whether dst node d will have exactly one user (as far as the src graph tells). */
bool pass_single_use(const Rewrite *rw, int d);

/* Counts one application of rule r. */
void pass_hit(Rewrite *rw, PassRule r);

/* The two rule sets of passes_rewrite.c. */
int pass_fold_node(Rewrite *rw, int i);
int pass_simplify_node(Rewrite *rw, int i);

#endif
