/* The pass driver, dead-code and common-subexpression elimination, the graph verifier and the
 * report. Fold and simplify rules live in passes_rewrite.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "passes_internal.h"

/* ---- emitting nodes through the builders ---- */

static int emit_conv(Graph *g, const Node *n) {
    const int *in = n->in;
    int s = n->attr.stride, p = n->attr.padding;
    if (n->op == OP_CONV2D) return g_conv2d(g, in[0], in[1], s, p);
    if (n->op == OP_CONV2D_GRAD_INPUT) return g_conv2d_grad_input(g, in[0], in[1], n->shape, s, p);
    return g_conv2d_grad_weight(g, in[0], in[1], n->shape, s, p);
}

static int emit_pool(Graph *g, const Node *n) {
    int k = n->attr.kernel, s = n->attr.stride;
    if (n->op == OP_MAX_POOL2D) return g_max_pool2d(g, n->in[0], k, s);
    if (n->op == OP_POOL_SCATTER) return g_pool_scatter(g, n->in[0], n->in[1], k, s);
    return g_pool_gather(g, n->in[0], n->in[1], k, s);
}

int pass_emit(Graph *g, const Node *n) {
    const int *in = n->in;
    switch (n->op) {
    case OP_INPUT:
        return g_input(g, n->name, n->input_kind, n->dtype, n->shape);
    case OP_CONST:
        return g_const(g, n->attr.value, n->shape);
    case OP_ADD:
    case OP_SUB:
    case OP_MUL:
    case OP_DIV:
    case OP_GT:
    case OP_EQ:
        return g_binary(g, n->op, in[0], in[1]);
    case OP_NEG:
    case OP_EXP:
    case OP_LOG:
    case OP_RSQRT:
    case OP_SQRT:
    case OP_STOP_GRAD:
        return g_unary(g, n->op, in[0]);
    case OP_SELECT:
        return g_select(g, in[0], in[1], in[2]);
    case OP_REDUCE_SUM:
    case OP_REDUCE_MAX:
        return g_reduce(g, n->op, in[0], n->attr.axes);
    case OP_BROADCAST:
        return g_broadcast(g, in[0], n->shape);
    case OP_RESHAPE:
        return g_reshape(g, in[0], n->shape);
    case OP_PERMUTE:
        return g_permute(g, in[0], n->attr.perm);
    case OP_MATMUL:
        return g_matmul(g, in[0], in[1], n->attr.trans_a, n->attr.trans_b);
    case OP_CONV2D:
    case OP_CONV2D_GRAD_INPUT:
    case OP_CONV2D_GRAD_WEIGHT:
        return emit_conv(g, n);
    case OP_MAX_POOL2D:
    case OP_POOL_SCATTER:
    case OP_POOL_GATHER:
        return emit_pool(g, n);
    case OP_ONE_HOT:
        return g_one_hot(g, in[0], n->attr.depth);
    case OP_COUNT:
        break;
    }
    return g_reshape(g, -1, shape_scalar()); /* records the failure in g */
}

int pass_copy(Rewrite *rw, int i) {
    Node n = rw->src->nodes[i];
    for (int k = 0; k < n.n_in; k++) n.in[k] = rw->map[n.in[k]];
    return pass_emit(rw->dst, &n);
}

bool pass_single_use(const Rewrite *rw, int d) {
    int s = d >= 0 && d < rw->cap_stands_for ? rw->stands_for[d] : -1;
    return s >= 0 && rw->uses[s] == 1;
}

void pass_hit(Rewrite *rw, PassRule r) {
    rw->rewrites++;
    rw->rule_hits[r]++;
}

/* ---- running one pass ---- */

/* A rule may replace a node by another computation but never change its type: users were built
 * against the original's shape and dtype. */
static int check_replacement(const Rewrite *rw, const char *pass, int i, MamlError *err) {
    const Node *s = &rw->src->nodes[i];
    int d = rw->map[i];
    if (d < 0 || d >= rw->dst->n_nodes)
        return maml_fail(err, "pass %s: node %d (%s) has no replacement", pass, i,
                         op_info[s->op].name);
    const Node *t = &rw->dst->nodes[d];
    if (shape_equal(s->shape, t->shape) && s->dtype == t->dtype) return 0;
    char a[96], b[96];
    return maml_fail(err, "pass %s: node %d (%s in %s) became %s %s instead of %s", pass, i,
                     op_info[s->op].name, s->origin ? s->origin : "", op_info[t->op].name,
                     shape_str(t->shape, b, sizeof b), shape_str(s->shape, a, sizeof a));
}

/* Copies the outputs of src, with their node mapped, into dst. */
static int map_outputs(Rewrite *rw) {
    for (int o = 0; o < rw->src->n_outputs; o++)
        if (graph_add_output(rw->dst, rw->src->outputs[o].name, rw->map[rw->src->outputs[o].node]))
            return -1;
    return 0;
}

static int finish_pass(Rewrite *rw, const char *pass, MamlError *err) {
    if (graph_status(rw->dst, err) == 0) return 0;
    char why[MAML_ERROR_MAX];
    memcpy(why, err->message, sizeof why);
    return maml_fail(err, "pass %s: %s", pass, why);
}

typedef struct {
    const char *name;
    NodeRule rule;    /* NULL: copy */
    const bool *live; /* NULL: every node; else only those marked */
    void *ctx;
} PassDef;

static int *count_uses(const Graph *g, MamlError *err) {
    int *uses = maml_calloc((size_t)(g->n_nodes ? g->n_nodes : 1), sizeof *uses, err);
    if (!uses) return NULL;
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++) uses[g->nodes[i].in[k]]++;
    for (int o = 0; o < g->n_outputs; o++) uses[g->outputs[o].node]++;
    return uses;
}

/* Records which src node the dst nodes made for src node i stand for (see Rewrite). */
static int note_made(Rewrite *rw, int i, int first_new, MamlError *err) {
    int n = rw->dst->n_nodes;
    if (n > rw->cap_stands_for) {
        int cap = rw->cap_stands_for ? rw->cap_stands_for : 256;
        while (cap < n) cap *= 2;
        int *p = maml_realloc(rw->stands_for, (size_t)cap, sizeof *p, err);
        if (!p) return -1;
        rw->stands_for = p;
        rw->cap_stands_for = cap;
    }
    for (int d = first_new; d < n; d++) rw->stands_for[d] = -1;
    int d = rw->map[i];
    if (d >= 0) rw->stands_for[d] = d >= first_new ? i : -1;
    return 0;
}

/* One node: the rule (or a copy), then the bookkeeping and the type check. */
static int rewrite_node(Rewrite *rw, const PassDef *def, int i, MamlError *err) {
    const Node *n = &rw->src->nodes[i];
    int first_new = rw->dst->n_nodes;
    rw->dst->origin = n->origin ? n->origin : "";
    rw->map[i] = def->rule ? def->rule(rw, i) : pass_copy(rw, i);
    if (rw->dst->failed) return -1;
    if (note_made(rw, i, first_new, err)) return -1;
    return check_replacement(rw, def->name, i, err);
}

/* Runs def's rule (NULL: copy) over the nodes of src (def->live: only those marked) into a fresh
 * dst. */
static int run_pass(const Graph *src, Graph *dst, const PassOptions *opt, const PassDef *def,
                    int *rule_hits, int *rewrites, MamlError *err) {
    graph_init(dst);
    size_t n = (size_t)(src->n_nodes ? src->n_nodes : 1);
    Rewrite rw = {.src = src, .dst = dst, .opt = opt, .rule_hits = rule_hits, .ctx = def->ctx};
    rw.map = maml_alloc(n * sizeof *rw.map, err);
    rw.uses = rw.map ? count_uses(src, err) : NULL;
    int rc = rw.uses ? 0 : -1;
    for (int i = 0; i < src->n_nodes && rc == 0; i++) {
        rw.map[i] = -1;
        if (!def->live || def->live[i]) rc = rewrite_node(&rw, def, i, err);
    }
    dst->origin = "";
    if (rc == 0) map_outputs(&rw);
    if (rc == 0 || dst->failed) rc = finish_pass(&rw, def->name, err);
    *rewrites = rw.rewrites;
    free(rw.map);
    free(rw.uses);
    free(rw.stands_for);
    if (rc) graph_free(dst);
    return rc;
}

/* ---- dead-code elimination ---- */

/* live[i]: some output depends on node i. INPUT nodes are the graph's interface and always
 * stay, read or not. */
static int dce(const Graph *src, Graph *dst, const PassOptions *opt, int *hits, int *removed,
               MamlError *err) {
    bool *live = maml_calloc((size_t)(src->n_nodes ? src->n_nodes : 1), sizeof *live, err);
    if (!live) return -1;
    for (int o = 0; o < src->n_outputs; o++) live[src->outputs[o].node] = true;
    for (int i = src->n_nodes - 1; i >= 0; i--) {
        if (src->nodes[i].op == OP_INPUT) live[i] = true;
        if (!live[i]) continue;
        for (int k = 0; k < src->nodes[i].n_in; k++) live[src->nodes[i].in[k]] = true;
    }
    int unused;
    PassDef def = {.name = "dce", .live = live};
    int rc = run_pass(src, dst, opt, &def, hits, &unused, err);
    free(live);
    *removed = rc ? 0 : src->n_nodes - dst->n_nodes;
    return rc;
}

/* ---- common-subexpression elimination ---- */

/* Open-addressing hash set of dst node ids, keyed by what a node computes. */
typedef struct {
    int *slots; /* -1 = empty */
    size_t mask;
} NodeTable;

static bool commutative(OpKind op) {
    return op == OP_ADD || op == OP_MUL || op == OP_EQ;
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdULL;
}

/* The attributes that distinguish nodes of the same op and operands, as words to hash/compare. */
static int attr_words(const Node *n, uint64_t *w) {
    switch (n->op) {
    case OP_CONST:
        memcpy(&w[0], &n->attr.value, sizeof w[0]);
        return 1; /* bits: 0 != -0 */
    case OP_REDUCE_SUM:
    case OP_REDUCE_MAX:
        w[0] = n->attr.axes;
        return 1;
    case OP_PERMUTE:
        for (int i = 0; i < n->shape.rank; i++) w[i] = (uint64_t)n->attr.perm[i];
        return n->shape.rank;
    case OP_MATMUL:
        w[0] = (uint64_t)n->attr.trans_a * 2 + n->attr.trans_b;
        return 1;
    case OP_CONV2D:
    case OP_CONV2D_GRAD_INPUT:
    case OP_CONV2D_GRAD_WEIGHT:
        w[0] = (uint64_t)n->attr.stride << 32 | (uint32_t)n->attr.padding;
        return 1;
    case OP_MAX_POOL2D:
    case OP_POOL_SCATTER:
    case OP_POOL_GATHER:
        w[0] = (uint64_t)n->attr.kernel << 32 | (uint32_t)n->attr.stride;
        return 1;
    case OP_ONE_HOT:
        w[0] = (uint64_t)n->attr.depth;
        return 1;
    default:
        return 0;
    }
}

/* Operands in canonical order: commutative ops compare equal with swapped operands. */
static void canonical_inputs(const Node *n, int *in) {
    for (int k = 0; k < n->n_in; k++) in[k] = n->in[k];
    if (commutative(n->op) && n->n_in == 2 && in[0] > in[1]) {
        int t = in[0];
        in[0] = in[1];
        in[1] = t;
    }
}

static uint64_t node_hash(const Node *n) {
    uint64_t h = mix((uint64_t)n->op, (uint64_t)n->dtype), w[MAX_RANK];
    int in[MAX_INPUTS];
    canonical_inputs(n, in);
    for (int k = 0; k < n->n_in; k++) h = mix(h, (uint64_t)in[k]);
    for (int i = 0; i < n->shape.rank; i++) h = mix(h, (uint64_t)n->shape.dims[i]);
    for (int i = 0, c = attr_words(n, w); i < c; i++) h = mix(h, w[i]);
    return mix(h, (uint64_t)n->shape.rank);
}

static bool node_same(const Node *a, const Node *b) {
    if (a->op != b->op || a->dtype != b->dtype || a->n_in != b->n_in ||
        !shape_equal(a->shape, b->shape))
        return false;
    int ia[MAX_INPUTS], ib[MAX_INPUTS];
    canonical_inputs(a, ia);
    canonical_inputs(b, ib);
    for (int k = 0; k < a->n_in; k++)
        if (ia[k] != ib[k]) return false;
    uint64_t wa[MAX_RANK], wb[MAX_RANK];
    int ca = attr_words(a, wa), cb = attr_words(b, wb);
    return ca == cb && memcmp(wa, wb, (size_t)ca * sizeof wa[0]) == 0;
}

static int table_init(NodeTable *t, int n_nodes, MamlError *err) {
    size_t cap = 64;
    while (cap < 2 * (size_t)n_nodes) cap *= 2;
    t->slots = maml_alloc(cap * sizeof *t->slots, err);
    if (!t->slots) return -1;
    memset(t->slots, 0xff, cap * sizeof *t->slots);
    t->mask = cap - 1;
    return 0;
}

/* The slot holding a node equal to n, or the empty slot where it would go. The table is sized
 * for every node of the pass, so it never fills. */
static size_t table_find(const NodeTable *t, const Graph *g, const Node *n) {
    size_t s = (size_t)node_hash(n) & t->mask;
    while (t->slots[s] >= 0 && !node_same(&g->nodes[t->slots[s]], n)) s = (s + 1) & t->mask;
    return s;
}

/* An INPUT is an interface slot, never a computation: two inputs are never the same node. */
static int cse_node(Rewrite *rw, int i) {
    Node n = rw->src->nodes[i];
    if (n.op == OP_INPUT) return pass_copy(rw, i);
    for (int k = 0; k < n.n_in; k++) n.in[k] = rw->map[n.in[k]];
    NodeTable *t = rw->ctx;
    size_t s = table_find(t, rw->dst, &n);
    if (t->slots[s] >= 0) {
        rw->rewrites++;
        return t->slots[s];
    }
    int id = pass_emit(rw->dst, &n);
    if (id >= 0) t->slots[s] = id;
    return id;
}

static int cse(const Graph *src, Graph *dst, const PassOptions *opt, int *hits, int *merged,
               MamlError *err) {
    NodeTable table;
    if (table_init(&table, src->n_nodes, err)) return -1;
    PassDef def = {.name = "cse", .rule = cse_node, .ctx = &table};
    int rc = run_pass(src, dst, opt, &def, hits, merged, err);
    free(table.slots);
    return rc;
}

/* ---- fold and simplify ---- */

static int fold(const Graph *src, Graph *dst, const PassOptions *opt, int *hits, int *n,
                MamlError *err) {
    PassDef def = {.name = "fold", .rule = pass_fold_node};
    return run_pass(src, dst, opt, &def, hits, n, err);
}

static int simplify(const Graph *src, Graph *dst, const PassOptions *opt, int *hits, int *n,
                    MamlError *err) {
    PassDef def = {.name = "simplify", .rule = pass_simplify_node};
    return run_pass(src, dst, opt, &def, hits, n, err);
}

static int copy(const Graph *src, Graph *dst, const PassOptions *opt, int *hits, int *n,
                MamlError *err) {
    PassDef def = {.name = "copy"};
    return run_pass(src, dst, opt, &def, hits, n, err);
}

/* ---- the driver ---- */

typedef int (*PassFn)(const Graph *src, Graph *dst, const PassOptions *opt, int *hits,
                      int *rewrites, MamlError *err);

typedef struct {
    const char *name;
    PassFn fn;
} Stage;

/* The graph being optimized: cur is the latest result; passes alternate between two buffers so
 * that at most two graphs are alive at once. */
typedef struct {
    const Graph *in, *cur;
    Graph bufs[2];
    int next;
    const PassOptions *opt;
    PassReport *report;
} Driver;

static void record(PassReport *r, const char *pass, int round, int nodes, int rewrites, double ms) {
    if (r->n_steps >= PASS_REPORT_STEPS) return;
    PassStep *s = &r->steps[r->n_steps++];
    s->pass = pass;
    s->round = round;
    s->nodes = nodes;
    s->rewrites = rewrites;
    s->ms = ms;
}

/* Runs one pass on d->cur; returns its rewrite count, or -1. */
static int apply(Driver *d, const Stage *st, int round, MamlError *err) {
    Graph *dst = &d->bufs[d->next];
    int rewrites = 0;
    double t0 = maml_now_ms();
    if (st->fn(d->cur, dst, d->opt, d->report->rule_hits, &rewrites, err)) return -1;
    record(d->report, st->name, round, dst->n_nodes, rewrites, maml_now_ms() - t0);
    if (d->cur != d->in) graph_free((Graph *)d->cur);
    d->cur = dst;
    d->next ^= 1;
    return rewrites;
}

/* Rounds of every enabled pass until one round changes nothing (or max_rounds). A round ends
 * with simplify, so a round cut short by max_rounds is followed by a last dce. */
static int iterate(Driver *d, MamlError *err) {
    const PassOptions *o = d->opt;
    const Stage all[4] = {{"dce", dce}, {"cse", cse}, {"fold", fold}, {"simplify", simplify}};
    const bool on[4] = {o->dce, o->cse, o->fold, o->simplify};
    int changed = 1;
    for (int round = 1; round <= o->max_rounds && changed; round++) {
        changed = 0;
        for (int p = 0; p < 4; p++) {
            if (!on[p]) continue;
            int n = apply(d, &all[p], round, err);
            if (n < 0) return -1;
            changed += n;
        }
        d->report->rounds = round;
    }
    d->report->fixed_point = changed == 0;
    if (changed && o->dce && apply(d, &all[0], d->report->rounds + 1, err) < 0) return -1;
    if (d->cur == d->in) {
        const Stage plain = {"copy", copy};
        if (apply(d, &plain, 0, err) < 0) return -1;
    }
    return 0;
}

PassOptions passes_default_options(void) {
    PassOptions o = {.dce = true,
                     .cse = true,
                     .fold = true,
                     .simplify = true,
                     .assume_finite = true,
                     .max_rounds = 16};
    return o;
}

int passes_optimize(const Graph *in, Graph *out, PassReport *report, MamlError *err) {
    PassOptions o = passes_default_options();
    return passes_optimize_with(in, out, &o, report, err);
}

int passes_optimize_with(const Graph *in, Graph *out, const PassOptions *opt, PassReport *report,
                         MamlError *err) {
    PassOptions defaults = passes_default_options();
    if (!opt) opt = &defaults;
    PassReport local = {0};
    PassReport *r = report ? report : &local;
    memset(r, 0, sizeof *r);
    graph_init(out);
    double t0 = maml_now_ms();
    r->nodes_before = in->n_nodes;
    if (graph_check(in, err)) return -1;
    Driver d = {.in = in, .cur = in, .opt = opt, .report = r};
    if (iterate(&d, err)) {
        if (d.cur != d.in) graph_free((Graph *)d.cur);
        return -1;
    }
    *out = *d.cur;
    r->nodes_after = out->n_nodes;
    r->total_ms = maml_now_ms() - t0;
    return 0;
}

/* ---- the verifier ---- */

static int check_structure(const Graph *g, int i, MamlError *err) {
    const Node *n = &g->nodes[i];
    if ((unsigned)n->op >= OP_COUNT) return maml_fail(err, "node %d: invalid op %d", i, (int)n->op);
    const char *op = op_info[n->op].name;
    if (n->n_in != op_info[n->op].n_in)
        return maml_fail(err, "node %d (%s): %d operands, expected %d", i, op, n->n_in,
                         op_info[n->op].n_in);
    for (int k = 0; k < n->n_in; k++)
        if (n->in[k] < 0 || n->in[k] >= i)
            return maml_fail(err, "node %d (%s): operand %d is node %d, which does not precede it",
                             i, op, k, n->in[k]);
    if (n->op == OP_INPUT && !n->name) return maml_fail(err, "node %d: input without a name", i);
    return 0;
}

static int check_outputs(const Graph *g, MamlError *err) {
    for (int o = 0; o < g->n_outputs; o++) {
        const GraphOutput *out = &g->outputs[o];
        if (!out->name) return maml_fail(err, "output %d has no name", o);
        if (out->node < 0 || out->node >= g->n_nodes)
            return maml_fail(err, "output '%s' is node %d, not a node of the graph", out->name,
                             out->node);
        /* outputs are few (tens), so the quadratic scan costs nothing */
        for (int p = 0; p < o; p++)
            if (strcmp(g->outputs[p].name, out->name) == 0)
                return maml_fail(err, "duplicate output '%s'", out->name);
    }
    return 0;
}

/* Re-creates node i in scratch (whose ids equal g's) and compares the inferred type. */
static int check_inferred(const Graph *g, Graph *scratch, int i, MamlError *err) {
    const Node *n = &g->nodes[i];
    const char *op = op_info[n->op].name, *origin = n->origin ? n->origin : "";
    scratch->origin = "";
    int id = pass_emit(scratch, n);
    if (id < 0) {
        MamlError why;
        graph_status(scratch, &why);
        return maml_fail(err, "node %d (%s in %s): %s", i, op, origin, why.message);
    }
    const Node *m = &scratch->nodes[id];
    char a[96], b[96];
    if (!shape_equal(m->shape, n->shape) || m->dtype != n->dtype)
        return maml_fail(err,
                         "node %d (%s in %s): has shape %s (dtype %d), its operands give %s "
                         "(dtype %d)",
                         i, op, origin, shape_str(n->shape, a, sizeof a), (int)n->dtype,
                         shape_str(m->shape, b, sizeof b), (int)m->dtype);
    return 0;
}

int graph_check(const Graph *g, MamlError *err) {
    if (graph_status(g, err)) return -1;
    if (g->n_nodes < 0 || (g->n_nodes > 0 && !g->nodes))
        return maml_fail(err, "graph has an invalid node array");
    Graph scratch;
    graph_init(&scratch);
    int rc = 0;
    for (int i = 0; i < g->n_nodes && rc == 0; i++) {
        rc = check_structure(g, i, err);
        if (rc == 0) rc = check_inferred(g, &scratch, i, err);
    }
    if (rc == 0) rc = check_outputs(g, err);
    graph_free(&scratch);
    return rc;
}

/* ---- the report ---- */

void pass_report_print(const PassReport *r, FILE *f) {
    double pct = r->nodes_before ? 100.0 * r->nodes_after / r->nodes_before : 100.0;
    fprintf(f, "passes: %d -> %d nodes (%.1f%%), %d round%s%s, %.2f ms\n", r->nodes_before,
            r->nodes_after, pct, r->rounds, r->rounds == 1 ? "" : "s",
            r->fixed_point ? "" : " (stopped before the fixed point)", r->total_ms);
    fprintf(f, "  round  pass        nodes  rewrites      ms\n");
    for (int i = 0; i < r->n_steps; i++) {
        const PassStep *s = &r->steps[i];
        fprintf(f, "  %5d  %-9s %7d  %8d  %6.2f\n", s->round, s->pass, s->nodes, s->rewrites,
                s->ms);
    }
    int shown = 0;
    for (int k = 0; k < PASS_RULE_COUNT; k++) {
        if (!r->rule_hits[k]) continue;
        const char *sep = shown == 0 ? "  rules:" : shown % 6 == 0 ? ",\n        " : ",";
        fprintf(f, "%s %s %d", sep, pass_rule_name((PassRule)k), r->rule_hits[k]);
        shown++;
    }
    if (shown) fputc('\n', f);
}

void pass_report_json(const PassReport *r, FILE *f) {
    fprintf(f,
            "{\"nodes_before\": %d, \"nodes_after\": %d, \"rounds\": %d, \"fixed_point\": %s, "
            "\"ms\": %.3f, \"steps\": [",
            r->nodes_before, r->nodes_after, r->rounds, r->fixed_point ? "true" : "false",
            r->total_ms);
    for (int i = 0; i < r->n_steps; i++) {
        const PassStep *s = &r->steps[i];
        fprintf(f,
                "%s{\"pass\": \"%s\", \"round\": %d, \"nodes\": %d, \"rewrites\": %d, "
                "\"ms\": %.3f}",
                i ? ", " : "", s->pass, s->round, s->nodes, s->rewrites, s->ms);
    }
    fprintf(f, "], \"rules\": {");
    int shown = 0;
    for (int k = 0; k < PASS_RULE_COUNT; k++)
        if (r->rule_hits[k])
            fprintf(f, "%s\"%s\": %d", shown++ ? ", " : "", pass_rule_name((PassRule)k),
                    r->rule_hits[k]);
    fprintf(f, "}}");
}
