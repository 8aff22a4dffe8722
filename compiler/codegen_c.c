/* The C renderer: every piece of kernel text comes from templates/c/; this file only decides
 * which sections to fill, in what order, with which values. */
#include "codegen_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROGRAM "c/program.c.tmpl"
#define LOOP "c/loop.c.tmpl"
#define OPS "c/ops.tmpl"
/* Loop kernels smaller than this many points run on one thread: a parallel region costs a few
 * microseconds, more than such a loop takes. */
#define PARALLEL_MIN_POINTS 32768
#define SIMD_MIN_INNER 8 /* shortest innermost loop worth vectorizing on its own */

static int64_t elem_offset(const Cg *c, int buf) {
    return c->m->offset[buf] / (int64_t)c->m->elem_size;
}

/* ---- loop kernels ---- */

typedef struct {
    Cg *c;
    const Kernel *k;
    StrBuf *body;
    int depth;
} LoopCtx;

static int line(LoopCtx *L, const char *section, const Vars *vs) {
    for (int i = 0; i < L->depth + 1; i++) sb_puts(L->body, "    ");
    if (render(L->c, LOOP, section, vs, true, L->body)) return -1;
    sb_puts(L->body, "\n");
    return 0;
}

static void value_name(int op, char *buf, int size) {
    snprintf(buf, (size_t)size, "v%d", op);
}

/* The expression of op i (not a reduction); buffers are named by id off the arena base. */
static int op_expr(LoopCtx *L, int i, StrBuf *expr) {
    char buf[32];
    snprintf(buf, sizeof buf, "b%d", L->k->ops[i].buf);
    return codegen_op_expr(L->c, OPS, L->k, i, buf, expr);
}

static int emit_values(LoopCtx *L, KPhase phase) {
    const Kernel *k = L->k;
    for (int i = 0; i < k->n_ops; i++) {
        KOpKind kind = k->ops[i].op;
        if (k->ops[i].phase != phase || kind == KOP_REDUCE_SUM || kind == KOP_REDUCE_MAX ||
            codegen_mask_only(k, i))
            continue;
        StrBuf expr;
        sb_init(&expr);
        char v[32];
        value_name(i, v, sizeof v);
        int rc = op_expr(L, i, &expr);
        Vars vs = {.n = 0};
        var_s(&vs, "v", v);
        var_s(&vs, "expr", expr.data ? expr.data : "");
        if (rc == 0) rc = line(L, "value", &vs);
        sb_free(&expr);
        if (rc) return -1;
    }
    return 0;
}

static bool is_reduce(const KOp *op) {
    return op->op == KOP_REDUCE_SUM || op->op == KOP_REDUCE_MAX;
}

typedef enum { ACC_DECLARE, ACC_DECLARE_ARRAY, ACC_UPDATE, ACC_READ } AccStage;

/* How emit_accs names things: accumulator i is `<acc><i><at>` ("acc7", "part7", "acc7[i2]"); the
 * value it takes in is `<src><i>` when src is set, else op i's operand (v<n>). */
typedef struct {
    const char *acc, *at, *src;
    int64_t n; /* ACC_DECLARE_ARRAY: the length */
} AccNames;

static const AccNames SCALAR_ACCS = {"acc", "", NULL, 0};

/* Accumulator declarations (before the reduce loops), updates (inside), or the reads that round
 * each result to real (after), as a node boundary does. */
static int emit_accs(LoopCtx *L, AccStage stage, const AccNames *an, StrBuf *names, bool *all_sum) {
    static const char *const sections[4][2] = {{"acc_max", "acc_sum"},
                                               {"acc_array_max", "acc_array_sum"},
                                               {"update_max", "update_sum"},
                                               {"reduce_value", "reduce_value"}};
    const Kernel *k = L->k;
    *all_sum = true;
    for (int i = 0; i < k->n_ops; i++) {
        if (!is_reduce(&k->ops[i])) continue;
        bool sum = k->ops[i].op == KOP_REDUCE_SUM;
        *all_sum &= sum;
        char acc[256], src[32], v[32];
        snprintf(acc, sizeof acc, "%s%d%s", an->acc, i, an->at);
        if (an->src)
            snprintf(src, sizeof src, "%s%d", an->src, i);
        else
            value_name(k->ops[i].src[0], src, sizeof src);
        value_name(i, v, sizeof v);
        if (names) sb_printf(names, "%s%s", names->len ? ", " : "", acc);
        Vars vs = {.n = 0};
        var_s(&vs, "acc", acc);
        var_s(&vs, "src", src);
        var_s(&vs, "v", v);
        var_i(&vs, "n", an->n);
        if (line(L, sections[stage][sum], &vs)) return -1;
    }
    return 0;
}

static int open_loop(LoopCtx *L, int axis) {
    Vars vs = {.n = 0};
    char i[16];
    snprintf(i, sizeof i, "i%d", axis);
    var_s(&vs, "i", i);
    var_i(&vs, "n", L->k->dims[axis]);
    if (line(L, "loop", &vs)) return -1;
    L->depth++;
    return 0;
}

static int close_loops(LoopCtx *L, int n) {
    for (int i = 0; i < n; i++) {
        L->depth--;
        if (line(L, "close", NULL)) return -1;
    }
    return 0;
}

/* Threads share the n_collapse outermost loops (collapsed into one iteration space). */
static int emit_parallel(LoopCtx *L, int n_collapse, int64_t outer_points, int64_t points) {
    if (n_collapse == 0 || outer_points < 2 || points < PARALLEL_MIN_POINTS) return 0;
    StrBuf collapse;
    sb_init(&collapse);
    Vars cv = {.n = 0};
    var_i(&cv, "n", n_collapse);
    int rc = n_collapse > 1 ? render(L->c, LOOP, "collapse", &cv, true, &collapse) : 0;
    Vars vs = {.n = 0};
    var_s(&vs, "collapse", collapse.data ? collapse.data : "");
    if (rc == 0) rc = line(L, "parallel", &vs);
    sb_free(&collapse);
    return rc;
}

/* Prefetches, before the innermost reduce loop runs over a contiguous run of a buffer, the run
 * the next iteration of the enclosing reduce loop reads: those runs lie far apart (batch norm's
 * sums over images read one channel's plane per image, where no leading axis lets the interleaved
 * loops below take them), and the hardware prefetcher, which follows streams within a page,
 * starts over on each. Measured 20% off such a sum. */
static int emit_prefetches(LoopCtx *L, int axis, int outer_axis) {
    const Kernel *k = L->k;
    for (int i = 0; i < k->n_ops; i++) {
        const KOp *op = &k->ops[i];
        if (op->op != KOP_LOAD || op->strides[axis] != 1 || op->strides[outer_axis] == 0) continue;
        bool dup = false; /* one prefetch per run, however many loads read it */
        for (int j = 0; j < i; j++)
            dup |= k->ops[j].op == KOP_LOAD && k->ops[j].buf == op->buf &&
                   k->ops[j].offset == op->offset &&
                   !memcmp(k->ops[j].strides, op->strides, sizeof op->strides);
        if (dup) continue;
        int64_t at_start[MAX_RANK];
        memcpy(at_start, op->strides, sizeof at_start);
        at_start[axis] = 0;
        char var[32];
        snprintf(var, sizeof var, "b%d", op->buf);
        StrBuf idx;
        sb_init(&idx);
        codegen_index_expr(k, at_start, op->offset, &idx);
        Vars vs = {.n = 0};
        var_s(&vs, "var", var);
        var_s(&vs, "index", idx.data ? idx.data : "0");
        var_i(&vs, "n", k->dims[axis]);
        var_i(&vs, "ahead", op->strides[outer_axis]);
        int rc = idx.failed ? maml_fail(L->c->err, "out of memory") : line(L, "prefetch", &vs);
        sb_free(&idx);
        if (rc) return -1;
    }
    return 0;
}

static int emit_stores(LoopCtx *L, KPhase phase) {
    const Kernel *k = L->k;
    for (int s = 0; s < k->n_stores; s++) {
        if (k->stores[s].phase != phase) continue;
        char var[32], v[32];
        snprintf(var, sizeof var, "b%d", k->stores[s].buf);
        value_name(k->stores[s].src, v, sizeof v);
        StrBuf idx;
        sb_init(&idx);
        codegen_index_expr(k, k->stores[s].strides, 0, &idx);
        Vars vs = {.n = 0};
        var_s(&vs, "var", var);
        var_s(&vs, "v", v);
        var_s(&vs, "index", idx.data ? idx.data : "0");
        int rc = idx.failed ? maml_fail(L->c->err, "out of memory") : line(L, "store", &vs);
        sb_free(&idx);
        if (rc) return -1;
    }
    return 0;
}

/* The reduction: accumulators, the loops over reduce axes with the prologue (and the inner
 * stores), the updates. */
static int emit_reduction(LoopCtx *L, const int *inner, int n_inner) {
    bool all_sum;
    StrBuf accs;
    sb_init(&accs);
    int rc = emit_accs(L, ACC_DECLARE, &SCALAR_ACCS, &accs, &all_sum);
    for (int a = 0; rc == 0 && a < n_inner; a++) {
        if (a == n_inner - 1 && a > 0) rc = emit_prefetches(L, inner[a], inner[a - 1]);
        if (rc == 0 && a == n_inner - 1 && all_sum) {
            Vars vs = {.n = 0};
            var_s(&vs, "accs", accs.data ? accs.data : "");
            rc = line(L, "simd_sum", &vs);
        }
        if (rc == 0) rc = open_loop(L, inner[a]);
    }
    if (rc == 0) rc = emit_values(L, KPHASE_INNER);
    if (rc == 0) rc = emit_stores(L, KPHASE_INNER);
    if (rc == 0) rc = emit_accs(L, ACC_UPDATE, &SCALAR_ACCS, NULL, &all_sum);
    if (rc == 0) rc = close_loops(L, n_inner);
    if (rc == 0) rc = emit_accs(L, ACC_READ, &SCALAR_ACCS, NULL, &all_sum);
    sb_free(&accs);
    return rc;
}

/* ---- reductions whose kept axes interleave with the reduced ones ----
 *
 * Batch norm's sums over a task's images and pixels keep the channel axis, which lies between the
 * two reduced ones ([T, N, C, HW]). Summed one output point at a time they read a run of HW
 * values per image and jump an image ahead: with 14x14 planes and several buffers per point,
 * that ran at 4-9 GB/s where maps run at 30-60. Here the loops after the leading kept axes run in
 * memory order with an array of accumulators over the kept axes among them ("middle" axes), and a
 * second loop over those axes rounds the sums and runs the epilogue. */

#define INTERLEAVED_MAX_ACCS 1024 /* accumulators per reduction (on the stack, per thread) */
/* Sums over leading axes that keep only the innermost one ([T, P] summed over tasks) have no
 * leading axis to share out: the kept axis is cut into blocks of this many accumulators. */
#define COLUMN_BLOCK 512

typedef struct {
    int first_reduced; /* the axes before it are the leading kept ones */
    int n_mid, mid[MAX_RANK];
    int64_t lead_points, mid_points;
    int64_t mid_strides[MAX_RANK]; /* row-major over the middle axes, 0 elsewhere */
    int64_t block;                 /* > 0: the innermost axis (the only kept one) in blocks */
} Interleaved;

/* True when k's reduction interleaves with kept axes and has leading kept axes, or blocks of
 * its one kept innermost axis, to share out. */
static bool plan_interleaved(const Kernel *k, Interleaved *v) {
    memset(v, 0, sizeof *v);
    v->first_reduced = -1;
    v->lead_points = v->mid_points = 1;
    for (int a = 0; a < k->rank; a++) {
        bool reduced = k->reduce_axes & (1u << a);
        if (reduced && v->first_reduced < 0) v->first_reduced = a;
        if (reduced) continue;
        if (v->first_reduced < 0)
            v->lead_points *= k->dims[a];
        else
            v->mid[v->n_mid++] = a, v->mid_points *= k->dims[a];
    }
    int64_t stride = 1;
    for (int m = v->n_mid - 1; m >= 0; m--) {
        v->mid_strides[v->mid[m]] = stride;
        stride *= k->dims[v->mid[m]];
    }
    if (v->first_reduced < 0 || v->n_mid == 0) return false;
    if (v->lead_points >= 2) return v->mid_points <= INTERLEAVED_MAX_ACCS;
    if (v->first_reduced == 0 && v->n_mid == 1 && v->mid[0] == k->rank - 1 &&
        v->mid_points >= 2 * COLUMN_BLOCK) {
        v->block = COLUMN_BLOCK;
        v->lead_points = (v->mid_points + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
        return true;
    }
    return false;
}

/* Opens the loop over axis a; in block mode the kept innermost axis runs over the block. */
static int open_axis(LoopCtx *L, const Interleaved *v, int a) {
    if (!v->block || a != L->k->rank - 1) return open_loop(L, a);
    char i[16];
    snprintf(i, sizeof i, "i%d", a);
    Vars vs = {.n = 0};
    var_s(&vs, "i", i);
    if (line(L, "loop_block", &vs)) return -1;
    L->depth++;
    return 0;
}

/* The loops over the leading kept axes, or over the blocks. */
static int open_leading(LoopCtx *L, const Interleaved *v) {
    for (int a = 0; a < v->first_reduced; a++)
        if (open_loop(L, a)) return -1;
    if (!v->block) return 0;
    Vars vs = {.n = 0};
    var_i(&vs, "n", v->mid_points);
    var_i(&vs, "block", v->block);
    if (line(L, "blocks", &vs)) return -1;
    L->depth++;
    return line(L, "block_end", &vs);
}

static int interleaved_reduction(LoopCtx *L, const Interleaved *v, int64_t points) {
    const Kernel *k = L->k;
    int last = k->rank - 1, n_leading = v->first_reduced + (v->block ? 1 : 0);
    bool partial = k->reduce_axes & (1u << last); /* the innermost run sums into a scalar */
    StrBuf at, parts;
    sb_init(&at);
    sb_init(&parts);
    sb_puts(&at, "[");
    codegen_index_expr(k, v->mid_strides, 0, &at);
    sb_puts(&at, v->block ? " - blk]" : "]");
    AccNames declare = {"acc", "", NULL, v->block ? v->block : v->mid_points},
             arrays = {"acc", at.data ? at.data : "", NULL, 0};
    AccNames part = {"part", "", NULL, 0}, fold = {"acc", arrays.at, "part", 0};
    bool all_sum;
    int rc = at.failed ? maml_fail(L->c->err, "out of memory") : 0;
    if (rc == 0) rc = emit_parallel(L, n_leading, v->lead_points, points);
    if (rc == 0) rc = open_leading(L, v);
    if (rc == 0) rc = emit_accs(L, ACC_DECLARE_ARRAY, &declare, NULL, &all_sum);
    for (int a = v->first_reduced; rc == 0 && a <= last; a++) {
        if (a == last && partial) rc = emit_accs(L, ACC_DECLARE, &part, &parts, &all_sum);
        if (rc == 0 && a == last && (!partial || all_sum)) {
            Vars vs = {.n = 0};
            var_s(&vs, "accs", parts.data ? parts.data : "");
            rc = line(L, partial ? "simd_sum" : "simd", &vs);
        }
        if (rc == 0) rc = open_axis(L, v, a);
    }
    if (rc == 0) rc = emit_values(L, KPHASE_INNER);
    if (rc == 0) rc = emit_stores(L, KPHASE_INNER);
    if (rc == 0) rc = emit_accs(L, ACC_UPDATE, partial ? &part : &arrays, NULL, &all_sum);
    if (rc == 0) rc = close_loops(L, 1);
    if (rc == 0 && partial) rc = emit_accs(L, ACC_UPDATE, &fold, NULL, &all_sum);
    if (rc == 0) rc = close_loops(L, last - v->first_reduced);
    for (int m = 0; rc == 0 && m < v->n_mid; m++) rc = open_axis(L, v, v->mid[m]);
    if (rc == 0) rc = emit_accs(L, ACC_READ, &arrays, NULL, &all_sum);
    if (rc == 0) rc = emit_values(L, KPHASE_OUTER);
    if (rc == 0) rc = emit_stores(L, KPHASE_OUTER);
    if (rc == 0) rc = close_loops(L, v->n_mid + n_leading);
    sb_free(&at);
    sb_free(&parts);
    return rc;
}

static int loop_body(LoopCtx *L) {
    const Kernel *k = L->k;
    int outer[MAX_RANK] = {0}, inner[MAX_RANK] = {0}, n_outer = 0, n_inner = 0;
    int64_t points = 1, outer_points = 1;
    bool has_reduce = false;
    for (int a = 0; a < k->rank; a++) {
        points *= k->dims[a];
        if (k->reduce_axes & (1u << a))
            inner[n_inner++] = a;
        else
            outer[n_outer++] = a, outer_points *= k->dims[a];
    }
    for (int i = 0; i < k->n_ops; i++) has_reduce |= is_reduce(&k->ops[i]);
    Interleaved v;
    if (has_reduce && plan_interleaved(k, &v)) return interleaved_reduction(L, &v, points);
    /* An elementwise kernel keeps its innermost loop out of the collapse and vectorizes it:
     * collapsing it too turns every index into divisions, which measured 3-5x slower. */
    bool simd_inner = !has_reduce && n_outer >= 2 && k->dims[outer[n_outer - 1]] >= SIMD_MIN_INNER;
    int64_t shared = simd_inner ? outer_points / k->dims[outer[n_outer - 1]] : outer_points;
    int rc = emit_parallel(L, simd_inner ? n_outer - 1 : n_outer, shared, points);
    for (int a = 0; rc == 0 && a < n_outer; a++) {
        if (simd_inner && a == n_outer - 1) rc = line(L, "simd", NULL);
        if (rc == 0) rc = open_loop(L, outer[a]);
    }
    if (rc == 0 && has_reduce) rc = emit_reduction(L, inner, n_inner);
    if (rc == 0) rc = emit_values(L, KPHASE_OUTER);
    if (rc == 0) rc = emit_stores(L, KPHASE_OUTER);
    if (rc == 0) rc = close_loops(L, n_outer);
    return rc;
}

/* One pointer per buffer the kernel touches; restrict unless it shares bytes with another. */
static int pointer_decl(Cg *c, int b, bool written, bool alone, StrBuf *out) {
    Vars vs = {.n = 0};
    char var[32];
    snprintf(var, sizeof var, "b%d", b);
    var_s(&vs, "var", var);
    var_s(&vs, "restrict", alone ? "restrict " : "");
    var_i(&vs, "offset", elem_offset(c, b));
    return render(c, LOOP, written ? "pointer_out" : "pointer_in", &vs, false, out);
}

static bool stored(const Kernel *k, int buf) {
    for (int s = 0; s < k->n_stores; s++)
        if (k->stores[s].buf == buf) return true;
    return false;
}

/* The buffers a loop kernel reads, then those it only writes (each once); returns the count. */
static int loop_buffers(const Kernel *k, int *bufs) {
    int n = kernel_reads(k, bufs, k->n_ops + 1);
    for (int s = 0; s < k->n_stores; s++) {
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= bufs[i] == k->stores[s].buf;
        if (!seen) bufs[n++] = k->stores[s].buf;
    }
    return n;
}

static int loop_pointers(Cg *c, const Kernel *k, StrBuf *out) {
    int *bufs = maml_alloc(((size_t)k->n_ops + (size_t)k->n_stores + 1) * sizeof *bufs, c->err);
    if (!bufs) return -1;
    int n = loop_buffers(k, bufs), rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        bool alone = true;
        for (int j = 0; j < n; j++)
            if (j != i && memplan_overlap(c->m, bufs[i], bufs[j])) alone = false;
        rc = pointer_decl(c, bufs[i], stored(k, bufs[i]), alone, out);
    }
    free(bufs);
    return rc;
}

static int render_loop(Cg *c, const Kernel *k, StrBuf *out) {
    StrBuf ptrs, body;
    sb_init(&ptrs);
    sb_init(&body);
    LoopCtx L = {.c = c, .k = k, .body = &body, .depth = 0};
    int rc = loop_pointers(c, k, &ptrs);
    if (rc == 0) rc = loop_body(&L);
    char comment[512];
    codegen_kernel_comment(c, k, comment, sizeof comment);
    Vars vs = {.n = 0};
    var_s(&vs, "name", k->name);
    var_s(&vs, "comment", comment);
    var_s(&vs, "pointers", ptrs.data ? ptrs.data : "");
    var_s(&vs, "body", body.data ? body.data : "");
    if (rc == 0 && (ptrs.failed || body.failed)) rc = maml_fail(c->err, "out of memory");
    if (rc == 0) rc = render(c, LOOP, "kernel", &vs, false, out);
    sb_free(&ptrs);
    sb_free(&body);
    return rc;
}

/* ---- template kernels ---- */

static void conv_vars(const Kernel *k, Vars *vs) {
    const KTemplate *t = &k->t;
    var_i(vs, "T", t->T), var_i(vs, "N", t->N), var_i(vs, "C", t->C), var_i(vs, "H", t->H);
    var_i(vs, "W", t->W), var_i(vs, "O", t->O), var_i(vs, "KH", t->KH), var_i(vs, "KW", t->KW);
    var_i(vs, "HO", t->HO), var_i(vs, "WO", t->WO);
    var_i(vs, "stride", t->stride), var_i(vs, "padding", t->padding);
}

static void matmul_vars(const Kernel *k, Vars *vs) {
    const KTemplate *t = &k->t;
    var_i(vs, "batch", t->batch), var_i(vs, "M", t->m), var_i(vs, "N", t->n), var_i(vs, "K", t->k);
    var_i(vs, "a_si", t->trans_a ? 1 : t->k), var_i(vs, "a_sq", t->trans_a ? t->m : 1);
    var_i(vs, "b_sq", t->trans_b ? 1 : t->n), var_i(vs, "b_sj", t->trans_b ? t->k : 1);
}

static void pool_vars(const Kernel *k, Vars *vs) {
    const KTemplate *t = &k->t;
    var_i(vs, "planes", t->planes), var_i(vs, "H", t->H), var_i(vs, "W", t->W);
    var_i(vs, "HO", t->HO), var_i(vs, "WO", t->WO);
    var_i(vs, "kernel", t->kernel), var_i(vs, "stride", t->stride);
}

static int render_template(Cg *c, const Kernel *k, StrBuf *out) {
    static const char *const in_names[KERNEL_KIND_COUNT][3] = {
        [KERNEL_CONV2D] = {"x", "w", "y"},
        [KERNEL_CONV2D_GRAD_INPUT] = {"dy", "w", "dx"},
        [KERNEL_CONV2D_GRAD_WEIGHT] = {"x", "dy", "dw"},
        [KERNEL_MATMUL] = {"a", "b", "c"},
        [KERNEL_MAX_POOL2D] = {"x", "z", "out"},
        [KERNEL_POOL_SCATTER] = {"x", "z", "out"},
        [KERNEL_POOL_GATHER] = {"x", "z", "out"},
    };
    char comment[512];
    codegen_kernel_comment(c, k, comment, sizeof comment);
    Vars vs = {.n = 0};
    var_s(&vs, "name", k->name);
    var_s(&vs, "comment", comment);
    for (int i = 0; i < 2; i++)
        var_i(&vs, in_names[k->kind][i], i < k->n_in ? elem_offset(c, k->in[i]) : 0);
    var_i(&vs, in_names[k->kind][2], elem_offset(c, k->out));
    const char *file, *section = "kernel";
    switch (k->kind) {
    case KERNEL_CONV2D:
        file = "c/conv2d.c.tmpl";
        conv_vars(k, &vs);
        break;
    case KERNEL_CONV2D_GRAD_INPUT:
        file = "c/conv2d_grad_input.c.tmpl";
        conv_vars(k, &vs);
        break;
    case KERNEL_CONV2D_GRAD_WEIGHT:
        file = "c/conv2d_grad_weight.c.tmpl";
        conv_vars(k, &vs);
        break;
    case KERNEL_MATMUL:
        file = "c/matmul.c.tmpl";
        matmul_vars(k, &vs);
        break;
    default:
        file = "c/pool.c.tmpl";
        section = kernel_kind_name(k->kind);
        pool_vars(k, &vs);
        if (k->kind != KERNEL_MAX_POOL2D && render(c, file, "argmax", &vs, false, out)) return -1;
        break;
    }
    return render(c, file, section, &vs, false, out);
}

/* ---- the program ---- */

static int render_program(Cg *c, const CodegenOptions *opt, StrBuf *out) {
    const KernelProgram *p = c->p;
    Vars vs = {.n = 0};
    var_s(&vs, "source", opt->source ? opt->source : "a graph");
    var_i(&vs, "n_kernels", p->n_kernels);
    var_i(&vs, "arena_bytes", c->m->arena_bytes);
    var_s(&vs, "real", opt->f64 ? "double" : "float");
    if (render(c, PROGRAM, "prelude", &vs, false, out)) return -1;
    /* the convolution kernels share their register block, packing and Winograd code, rendered
     * once */
    for (int i = 0; i < p->n_kernels; i++) {
        if (kernel_is_conv(p->kernels[i].kind)) {
            if (render(c, "c/conv2d.c.tmpl", "support", NULL, false, out) ||
                render(c, "c/winograd.c.tmpl", "support", NULL, false, out))
                return -1;
            break;
        }
    }
    StrBuf table;
    sb_init(&table);
    int rc = 0;
    for (int i = 0; rc == 0 && i < p->n_kernels; i++) {
        const Kernel *k = &p->kernels[i];
        rc = k->kind == KERNEL_LOOP ? render_loop(c, k, out) : render_template(c, k, out);
        Vars tv = {.n = 0};
        var_s(&tv, "name", k->name);
        if (rc == 0) rc = render(c, PROGRAM, "table_entry", &tv, false, &table);
    }
    /* C forbids an empty initializer list: a program without kernels gets a no-op entry */
    if (p->n_kernels == 0) sb_puts(&table, "    0,\n");
    var_s(&vs, "kernel_table", table.data ? table.data : "");
    if (rc == 0 && table.failed) rc = maml_fail(c->err, "out of memory");
    if (rc == 0) rc = render(c, PROGRAM, "epilogue", &vs, false, out);
    sb_free(&table);
    return rc;
}

int codegen_c(const Graph *g, const KernelProgram *p, const MemPlan *m, const CodegenOptions *opt,
              StrBuf *out, MamlError *err) {
    if (m->elem_size != (opt->f64 ? 8u : 4u))
        return maml_fail(err, "memory plan is for %zu-byte reals, codegen for %s", m->elem_size,
                         opt->f64 ? "double" : "float");
    Cg c = {.g = g, .p = p, .m = m, .err = err};
    templates_init(&c.tp);
    int rc = render_program(&c, opt, out);
    templates_free(&c.tp);
    if (rc == 0 && out->failed) rc = maml_fail(err, "out of memory rendering kernels");
    return rc;
}
