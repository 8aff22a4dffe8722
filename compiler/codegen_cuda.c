/* The CUDA renderer: the kernel IR rendered to one CUDA C file from templates/cuda/. Every piece
 * of kernel text comes from the templates; this file decides which sections to fill, with which
 * values, and how each kernel is launched (strategy, tiling, grid). */
#include "codegen_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

#define PROGRAM "cuda/program.cu.tmpl"
#define LOOP "cuda/loop.cu.tmpl"
#define OPS "cuda/ops.cu.tmpl"
#define CONV_MMA "cuda/conv_mma.cu.tmpl"
#define THREADS 256 /* every kernel's block (the templates' __launch_bounds__) */
/* Blocks of a grid-stride launch: about 30 per SM of an H100, enough to fill it and to hide
 * memory latency, without launching millions of one-element blocks. */
#define GRID_CAP 4096
/* Static shared memory per block; 48 KiB is the static limit, the rest is left for the compiler. */
#define SMEM_BUDGET (40 * 1024)
/* Blocks that keep the 132 SMs of an H100/H200 busy twice over: the template tilings shrink their
 * per-block work until a launch has about this many. */
#define MIN_BLOCKS 264

static int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

static int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

static void set_launch(CudaLaunch *l, int64_t gx, int64_t gy, int64_t gz) {
    l->grid[0] = (unsigned)gx, l->grid[1] = (unsigned)gy, l->grid[2] = (unsigned)gz;
    l->block[0] = THREADS, l->block[1] = 1, l->block[2] = 1;
}

static void launch_text(const CudaLaunch *l, char *buf, size_t size) {
    snprintf(buf, size, "launch: grid (%u, %u, %u) x %u threads", l->grid[0], l->grid[1],
             l->grid[2], l->block[0]);
}

/* ---- loop kernels ---- */

typedef enum { STRAT_MAP, STRAT_THREAD, STRAT_WARP, STRAT_BLOCK, STRAT_COLS } Strategy;

typedef struct {
    Cg *c;
    const Kernel *k;
    int outer_axes[MAX_RANK], inner_axes[MAX_RANK], n_outer, n_inner;
    int64_t outer, inner;
    const char *idx; /* the index type: int, or long long past 2^31 */
    Strategy strat;
    int bufs[CUDA_MAX_ARGS], n_bufs; /* the parameters p0, p1, ...: reads, then the writes */
    uint32_t used_inner, used_outer; /* axes the INNER / OUTER phase (with stores) refers to */
} LoopPlan;

static bool is_reduce(const KOp *op) {
    return op->op == KOP_REDUCE_SUM || op->op == KOP_REDUCE_MAX;
}

static uint32_t axes_of_op(const Kernel *k, const KOp *op) {
    uint32_t m = 0;
    if (op->op == KOP_INDEX) m |= 1u << op->axis;
    if (op->op == KOP_LOAD)
        for (int a = 0; a < k->rank; a++)
            if (op->strides[a]) m |= 1u << a;
    return m;
}

static void find_used_axes(LoopPlan *L) {
    const Kernel *k = L->k;
    L->used_inner = L->used_outer = 0;
    for (int i = 0; i < k->n_ops; i++) {
        uint32_t m = axes_of_op(k, &k->ops[i]);
        if (k->ops[i].phase == KPHASE_INNER)
            L->used_inner |= m;
        else
            L->used_outer |= m;
    }
    for (int s = 0; s < k->n_stores; s++)
        for (int a = 0; a < k->rank; a++)
            if (k->stores[s].strides[a]) {
                if (k->stores[s].phase == KPHASE_INNER)
                    L->used_inner |= 1u << a;
                else
                    L->used_outer |= 1u << a;
            }
}

/* Which threads take which points: see the sections of loop.cu.tmpl. */
static Strategy pick_strategy(const LoopPlan *L, bool has_reduce) {
    if (!has_reduce) return STRAT_MAP;
    if (L->inner <= 32) return STRAT_THREAD;
    bool innermost_reduced = (L->k->reduce_axes >> (L->k->rank - 1)) & 1;
    if (innermost_reduced) return L->outer < 1024 && L->inner >= 4096 ? STRAT_BLOCK : STRAT_WARP;
    return L->outer >= 8192 ? STRAT_THREAD : STRAT_COLS;
}

static bool stored(const Kernel *k, int buf) {
    for (int s = 0; s < k->n_stores; s++)
        if (k->stores[s].buf == buf) return true;
    return false;
}

/* The kernel's buffers in parameter order: those it reads, then those it writes (each once; the
 * root's last, as kernel_stores lists them). */
static int list_buffers(Cg *c, const Kernel *k, LoopPlan *L) {
    L->n_bufs = kernel_reads(k, L->bufs, CUDA_MAX_ARGS);
    if (L->n_bufs >= CUDA_MAX_ARGS) /* kernel_reads stops at the limit: some may be missing */
        return maml_fail(c->err,
                         "%s reads %d or more buffers (the CUDA renderer passes at most %d)",
                         k->name, CUDA_MAX_ARGS, CUDA_MAX_ARGS - 1);
    for (int s = 0; s < k->n_stores; s++) {
        bool seen = false;
        for (int i = 0; i < L->n_bufs; i++) seen |= L->bufs[i] == k->stores[s].buf;
        if (seen) continue;
        if (L->n_bufs == CUDA_MAX_ARGS)
            return maml_fail(c->err, "%s touches more than %d buffers (the CUDA renderer's limit)",
                             k->name, CUDA_MAX_ARGS);
        L->bufs[L->n_bufs++] = k->stores[s].buf;
    }
    return 0;
}

/* The parameter name of buffer buf ("p3"). */
static void param_name(const LoopPlan *L, int buf, char *name, size_t size) {
    int j = 0;
    while (j < L->n_bufs - 1 && L->bufs[j] != buf) j++;
    snprintf(name, size, "p%d", j);
}

static int plan_loop(Cg *c, const Kernel *k, LoopPlan *L) {
    memset(L, 0, sizeof *L);
    L->c = c;
    L->k = k;
    L->outer = L->inner = 1;
    bool has_reduce = false;
    for (int a = 0; a < k->rank; a++) {
        if (k->reduce_axes & (1u << a))
            L->inner_axes[L->n_inner++] = a, L->inner *= k->dims[a];
        else
            L->outer_axes[L->n_outer++] = a, L->outer *= k->dims[a];
    }
    for (int i = 0; i < k->n_ops; i++) has_reduce |= is_reduce(&k->ops[i]);
    if (list_buffers(c, k, L)) return -1;
    int64_t biggest = L->outer * L->inner;
    for (int i = 0; i < L->n_bufs; i++)
        if (c->p->bufs[L->bufs[i]].numel > biggest) biggest = c->p->bufs[L->bufs[i]].numel;
    L->idx = biggest < ((int64_t)1 << 31) - 1024 ? "int" : "long long";
    L->strat = pick_strategy(L, has_reduce);
    find_used_axes(L);
    return 0;
}

static int64_t loop_grid(const LoopPlan *L) {
    switch (L->strat) {
    case STRAT_WARP:
        return min64(ceil_div(L->outer, 8), GRID_CAP);
    case STRAT_BLOCK:
        return min64(L->outer, GRID_CAP);
    case STRAT_COLS:
        return min64(ceil_div(L->outer, 32), GRID_CAP);
    default:
        return min64(ceil_div(L->outer, THREADS), GRID_CAP);
    }
}

/* One line of a section at an indentation depth (4 spaces each). */
static int line(Cg *c, int depth, const char *section, const Vars *vs, StrBuf *out) {
    for (int i = 0; i < depth; i++) sb_puts(out, "    ");
    if (render(c, LOOP, section, vs, true, out)) return -1;
    sb_puts(out, "\n");
    return 0;
}

/* The loop indices of `axes` (those in mask) from the linear index lin, row-major. */
static int emit_index(const LoopPlan *L, const int *axes, int n, uint32_t mask, const char *lin,
                      int depth, StrBuf *out) {
    for (int j = 0; j < n; j++) {
        if (!(mask & (1u << axes[j]))) continue;
        int64_t div = 1;
        for (int q = j + 1; q < n; q++) div *= L->k->dims[axes[q]];
        char i[16];
        snprintf(i, sizeof i, "i%d", axes[j]);
        Vars vs = {.n = 0};
        var_s(&vs, "idx", L->idx);
        var_s(&vs, "i", i);
        var_s(&vs, "lin", lin);
        var_i(&vs, "div", div);
        var_i(&vs, "n", L->k->dims[axes[j]]);
        const char *section = n == 1       ? "index_all"
                              : j == 0     ? "index_div"
                              : j == n - 1 ? "index_mod"
                                           : "index_divmod";
        if (line(L->c, depth, section, &vs, out)) return -1;
    }
    return 0;
}

/* The expression of op i (not a reduction); buffers are the kernel's parameters. */
static int op_expr(const LoopPlan *L, int i, StrBuf *expr) {
    char buf[32];
    param_name(L, L->k->ops[i].buf, buf, sizeof buf);
    return codegen_op_expr(L->c, OPS, L->k, i, buf, expr);
}

static int emit_values(const LoopPlan *L, KPhase phase, int depth, StrBuf *out) {
    const Kernel *k = L->k;
    for (int i = 0; i < k->n_ops; i++) {
        if (k->ops[i].phase != phase || is_reduce(&k->ops[i]) || codegen_mask_only(k, i)) continue;
        StrBuf expr;
        sb_init(&expr);
        char v[32];
        snprintf(v, sizeof v, "v%d", i);
        int rc = op_expr(L, i, &expr);
        Vars vs = {.n = 0};
        var_s(&vs, "v", v);
        var_s(&vs, "expr", expr.data ? expr.data : "");
        if (rc == 0) rc = line(L->c, depth, "value", &vs, out);
        sb_free(&expr);
        if (rc) return -1;
    }
    return 0;
}

/* One line per reduction of the kernel from section "<stem>_sum" / "<stem>_max" (or "<stem>"
 * when both kinds share it); k counts the reductions (the shared-memory slot). */
static int emit_accs(const LoopPlan *L, const char *stem, bool by_kind, int depth, StrBuf *out) {
    const Kernel *k = L->k;
    int slot = 0;
    for (int i = 0; i < k->n_ops; i++) {
        if (!is_reduce(&k->ops[i])) continue;
        char acc[32], src[32], v[32], section[32];
        snprintf(acc, sizeof acc, "acc%d", i);
        snprintf(src, sizeof src, "v%d", k->ops[i].src[0]);
        snprintf(v, sizeof v, "v%d", i);
        bool sum = k->ops[i].op == KOP_REDUCE_SUM;
        snprintf(section, sizeof section, "%s%s", stem, by_kind ? (sum ? "_sum" : "_max") : "");
        Vars vs = {.n = 0};
        var_s(&vs, "acc", acc);
        var_s(&vs, "src", src);
        var_s(&vs, "v", v);
        var_i(&vs, "k", slot++);
        if (line(L->c, depth, section, &vs, out)) return -1;
    }
    return 0;
}

static int emit_stores(const LoopPlan *L, KPhase phase, int depth, StrBuf *out) {
    const Kernel *k = L->k;
    for (int s = 0; s < k->n_stores; s++) {
        if (k->stores[s].phase != phase) continue;
        char var[32], v[32];
        param_name(L, k->stores[s].buf, var, sizeof var);
        snprintf(v, sizeof v, "v%d", k->stores[s].src);
        StrBuf idx;
        sb_init(&idx);
        codegen_index_expr(k, k->stores[s].strides, 0, &idx);
        Vars vs = {.n = 0};
        var_s(&vs, "var", var);
        var_s(&vs, "v", v);
        var_s(&vs, "index", idx.data ? idx.data : "0");
        int rc = idx.failed ? maml_fail(L->c->err, "out of memory")
                            : line(L->c, depth, "store", &vs, out);
        sb_free(&idx);
        if (rc) return -1;
    }
    return 0;
}

/* The reads of the reductions' results, the OUTER-phase values, the stores. */
static int emit_epilogue(const LoopPlan *L, int depth, StrBuf *out) {
    if (emit_accs(L, "reduce_value", false, depth, out)) return -1;
    if (emit_values(L, KPHASE_OUTER, depth, out)) return -1;
    return emit_stores(L, KPHASE_OUTER, depth, out);
}

/* One pointer parameter per buffer; __restrict__ unless it shares bytes with another (in place). */
static int loop_params(const LoopPlan *L, StrBuf *out) {
    Cg *c = L->c;
    int rc = 0;
    for (int i = 0; rc == 0 && i < L->n_bufs; i++) {
        bool alone = true;
        for (int j = 0; j < L->n_bufs; j++)
            if (j != i && memplan_overlap(c->m, L->bufs[i], L->bufs[j])) alone = false;
        StrBuf restrict_text;
        sb_init(&restrict_text);
        if (alone) rc = render(c, LOOP, "restrict", NULL, true, &restrict_text);
        char var[32];
        snprintf(var, sizeof var, "p%d", i);
        Vars vs = {.n = 0};
        var_s(&vs, "var", var);
        var_s(&vs, "restrict", restrict_text.data ? restrict_text.data : "");
        if (rc == 0 && i > 0) rc = render(c, LOOP, "param_sep", NULL, true, out);
        if (rc == 0)
            rc = render(c, LOOP, stored(L->k, L->bufs[i]) ? "param_out" : "param_in", &vs, true,
                        out);
        sb_free(&restrict_text);
    }
    return rc;
}

/* The pieces a loop skeleton is filled with; depths follow the skeletons in loop.cu.tmpl. */
enum {
    P_PARAMS,
    P_OUTER_INDEX,
    P_OUTER_INDEX_INNER,
    P_OUTER_INDEX_EPILOGUE,
    P_ACC_DECLARE,
    P_INNER_INDEX,
    P_INNER_VALUES,
    P_ACC_UPDATE,
    P_ACC_WARP,
    P_ACC_WARP_DEEP,
    P_ACC_PUT_WARP,
    P_ACC_GET_WARP,
    P_ACC_PUT_COLS,
    P_ACC_GET_COLS,
    P_EPILOGUE,
    P_COUNT
};

static const char *const piece_names[P_COUNT] = {
    "params",       "outer_index",   "outer_index_inner", "outer_index_epilogue",
    "acc_declare",  "inner_index",   "inner_values",      "acc_update",
    "acc_warp",     "acc_warp_deep", "acc_put_warp",      "acc_get_warp",
    "acc_put_cols", "acc_get_cols",  "epilogue"};

static int loop_pieces(const LoopPlan *L, StrBuf *pc) {
    bool cols = L->strat == STRAT_COLS, block = L->strat == STRAT_BLOCK;
    int inner_depth = cols ? 4 : 3;
    int epi_depth = L->strat == STRAT_MAP || L->strat == STRAT_THREAD ? 2 : block ? 4 : 3;
    uint32_t all_used = L->used_inner | L->used_outer;
    int rc = loop_params(L, &pc[P_PARAMS]);
    if (rc == 0)
        rc = emit_index(L, L->outer_axes, L->n_outer, all_used, "o", 2, &pc[P_OUTER_INDEX]);
    if (rc == 0)
        rc = emit_index(L, L->outer_axes, L->n_outer, L->used_inner, "o", 3,
                        &pc[P_OUTER_INDEX_INNER]);
    if (rc == 0)
        rc = emit_index(L, L->outer_axes, L->n_outer, L->used_outer, "o", 3,
                        &pc[P_OUTER_INDEX_EPILOGUE]);
    if (rc == 0) rc = emit_accs(L, "acc", true, 2, &pc[P_ACC_DECLARE]);
    if (rc == 0)
        rc = emit_index(L, L->inner_axes, L->n_inner, L->used_inner, "q", inner_depth,
                        &pc[P_INNER_INDEX]);
    if (rc == 0) rc = emit_values(L, KPHASE_INNER, inner_depth, &pc[P_INNER_VALUES]);
    if (rc == 0) rc = emit_stores(L, KPHASE_INNER, inner_depth, &pc[P_INNER_VALUES]);
    if (rc == 0) rc = emit_accs(L, "update", true, inner_depth, &pc[P_ACC_UPDATE]);
    if (rc == 0) rc = emit_accs(L, "warp", true, 2, &pc[P_ACC_WARP]);
    if (rc == 0) rc = emit_accs(L, "warp", true, 3, &pc[P_ACC_WARP_DEEP]);
    if (rc == 0) rc = emit_accs(L, "put_warp", false, 3, &pc[P_ACC_PUT_WARP]);
    if (rc == 0) rc = emit_accs(L, "get_warp", true, 3, &pc[P_ACC_GET_WARP]);
    if (rc == 0) rc = emit_accs(L, "put_cols", false, 2, &pc[P_ACC_PUT_COLS]);
    if (rc == 0) rc = emit_accs(L, "get_cols", true, 3, &pc[P_ACC_GET_COLS]);
    if (rc == 0) rc = emit_epilogue(L, epi_depth, &pc[P_EPILOGUE]);
    return rc;
}

static int count_reduces(const Kernel *k) {
    int n = 0;
    for (int i = 0; i < k->n_ops; i++) n += is_reduce(&k->ops[i]);
    return n;
}

/* Renders kernel k as a function called name, with comment (either may be a placeholder token
 * for the dedup key), and fills launch. */
static int render_loop(Cg *c, const Kernel *k, const char *name, const char *comment,
                       CudaLaunch *launch, StrBuf *out) {
    static const char *const skeletons[] = {"map", "thread", "warp", "block", "cols"};
    LoopPlan L;
    if (plan_loop(c, k, &L)) return -1;
    set_launch(launch, loop_grid(&L), 1, 1);
    launch->n_args = L.n_bufs;
    memcpy(launch->args, L.bufs, (size_t)L.n_bufs * sizeof *L.bufs);
    StrBuf pc[P_COUNT];
    for (int i = 0; i < P_COUNT; i++) sb_init(&pc[i]);
    int rc = loop_pieces(&L, pc);
    for (int i = 0; rc == 0 && i < P_COUNT; i++)
        if (pc[i].failed) rc = maml_fail(c->err, "out of memory rendering %s", k->name);
    char launch_line[96];
    launch_text(launch, launch_line, sizeof launch_line);
    Vars vs = {.n = 0};
    var_s(&vs, "name", name);
    var_s(&vs, "comment", comment);
    var_s(&vs, "launch", launch_line);
    var_s(&vs, "idx", L.idx);
    var_i(&vs, "outer", L.outer);
    var_i(&vs, "inner", L.inner);
    var_i(&vs, "n_acc", count_reduces(k) > 0 ? count_reduces(k) : 1);
    for (int i = 0; i < P_COUNT; i++) var_s(&vs, piece_names[i], pc[i].data ? pc[i].data : "");
    if (rc == 0) rc = render(c, LOOP, skeletons[L.strat], &vs, false, out);
    for (int i = 0; i < P_COUNT; i++) sb_free(&pc[i]);
    return rc;
}

/* ---- template kernels: tilings ---- */

/* The largest divisor of n that is at most cap and a multiple of step (0 when none). */
static int64_t divisor_at_most(int64_t n, int64_t cap, int64_t step) {
    for (int64_t d = min64(n, cap); d >= step; d--)
        if (n % d == 0 && d % step == 0) return d;
    return 0;
}

/* The largest power of two that divides n and is at most cap. */
static int64_t pow2_divisor(int64_t n, int64_t cap) {
    int64_t d = 1;
    while (d * 2 <= cap && n % (d * 2) == 0) d *= 2;
    return d;
}

/* A direct-convolution tiling (forward and grad_input share it): a block makes OB output
 * channels (RO per thread) of TH rows of a WO-wide output plane, reading CC input channels of the
 * staged input rows at a time. */
typedef struct {
    int64_t OB, RO, CC, TH, NT, MAXI, blocks;
} DirectTiles;

typedef struct {
    int64_t out_ch, in_ch, HO, WO, KH, KW, stride, images; /* images = T * N */
    bool transposed; /* grad_input: staged rows follow (TH + KH - 2) / S + 2, width (W + KW - 2) / S
                        + 2 */
} DirectShape;

static int64_t staged_rows(const DirectShape *s, int64_t TH) {
    return s->transposed ? (TH + s->KH - 2) / s->stride + 2 : (TH - 1) * s->stride + s->KH;
}

static int64_t staged_cols(const DirectShape *s) {
    return s->transposed ? (s->WO + s->KW - 2) / s->stride + 2 : (s->WO - 1) * s->stride + s->KW;
}

/* Rows per tile for OB/RO channel groups, so each thread keeps at most 32 accumulators. */
static bool fit_rows(const DirectShape *s, DirectTiles *t) {
    int64_t max_items = THREADS * (32 / t->RO), groups = t->OB / t->RO;
    if (groups < 1 || s->WO < 1) return false;
    int64_t TH = min64(s->HO, max_items / (groups * s->WO));
    if (TH < 1) return false;
    t->NT = ceil_div(s->HO, TH);
    t->TH = ceil_div(s->HO, t->NT);
    t->MAXI = ceil_div(groups * t->TH * s->WO, THREADS);
    t->blocks = s->out_ch / t->OB * t->NT * s->images;
    return true;
}

/* Halves the channel block (keeping it a divisor and a multiple of RO), false when it cannot. */
static bool shrink_block(const DirectShape *s, DirectTiles *t) {
    int64_t ob = divisor_at_most(s->out_ch, t->OB / 2, t->RO);
    if (ob == 0 || ob == t->OB) return false;
    t->OB = ob;
    return true;
}

/* Fewer output channels per thread (RO), with the channel block following; false at RO 1. */
static bool shrink_registers(const DirectShape *s, DirectTiles *t) {
    if (t->RO == 1) return false;
    t->RO /= 2;
    t->OB = divisor_at_most(s->out_ch, 64, t->RO);
    return true;
}

static int plan_direct(const DirectShape *s, size_t elem, const char *name, DirectTiles *t,
                       MamlError *err) {
    memset(t, 0, sizeof *t);
    t->RO = s->out_ch % 8 == 0 ? 8 : s->out_ch % 4 == 0 ? 4 : s->out_ch % 2 == 0 ? 2 : 1;
    t->OB = divisor_at_most(s->out_ch, 64, t->RO);
    while (!fit_rows(s, t))
        if (!shrink_block(s, t) && !shrink_registers(s, t))
            return maml_fail(err,
                             "%s: output rows of %lld pixels are too wide for the CUDA "
                             "convolution templates",
                             name, (long long)s->WO);
    /* Small planes: fewer channels per thread, then per block, until the launch fills the GPU. */
    while (t->RO > 1 && (t->OB / t->RO) * t->TH * s->WO < THREADS / 2) {
        t->RO /= 2;
        fit_rows(s, t);
    }
    while (t->blocks < MIN_BLOCKS && shrink_block(s, t)) fit_rows(s, t);
    int64_t per_channel =
        (staged_rows(s, t->TH) * staged_cols(s) + s->KH * s->KW * t->OB) * (int64_t)elem;
    int64_t cc = min64(s->in_ch, SMEM_BUDGET / per_channel);
    if (cc < 1)
        return maml_fail(err,
                         "%s: one input channel's tile (%lld bytes) exceeds the CUDA "
                         "templates' shared memory budget",
                         name, (long long)per_channel);
    /* a chunk that divides the channels avoids a zero-filled tail, when it costs at most half */
    int64_t even = divisor_at_most(s->in_ch, cc, 1);
    t->CC = 2 * even >= cc ? even : cc;
    return 0;
}

static int grid_ok(Cg *c, const Kernel *k, int64_t gx, int64_t gy, int64_t gz) {
    if (gx < 1 || gx > 2147483647 || gy > 65535 || gz > 65535)
        return maml_fail(c->err, "%s: grid (%lld, %lld, %lld) exceeds CUDA's limits", k->name,
                         (long long)gx, (long long)gy, (long long)gz);
    return 0;
}

static void conv_vars(const Kernel *k, Vars *vs) {
    const KTemplate *t = &k->t;
    var_i(vs, "T", t->T), var_i(vs, "N", t->N), var_i(vs, "C", t->C), var_i(vs, "H", t->H);
    var_i(vs, "W", t->W), var_i(vs, "O", t->O), var_i(vs, "KH", t->KH), var_i(vs, "KW", t->KW);
    var_i(vs, "HO", t->HO), var_i(vs, "WO", t->WO);
    var_i(vs, "stride", t->stride), var_i(vs, "padding", t->padding);
}

static int conv_forward_vars(Cg *c, const Kernel *k, Vars *vs, CudaLaunch *l) {
    const KTemplate *t = &k->t;
    DirectShape s = {.out_ch = t->O,
                     .in_ch = t->C,
                     .HO = t->HO,
                     .WO = t->WO,
                     .KH = t->KH,
                     .KW = t->KW,
                     .stride = t->stride,
                     .images = t->T * t->N};
    DirectTiles d;
    if (plan_direct(&s, c->m->elem_size, k->name, &d, c->err)) return -1;
    var_i(vs, "OB", d.OB), var_i(vs, "RO", d.RO), var_i(vs, "CC", d.CC), var_i(vs, "TH", d.TH);
    var_i(vs, "NT", d.NT), var_i(vs, "MAXI", d.MAXI);
    set_launch(l, t->O / d.OB * d.NT, t->N, t->T);
    return grid_ok(c, k, t->O / d.OB * d.NT, t->N, t->T);
}

static int conv_grad_input_vars(Cg *c, const Kernel *k, Vars *vs, CudaLaunch *l) {
    const KTemplate *t = &k->t;
    DirectShape s = {.out_ch = t->C,
                     .in_ch = t->O,
                     .HO = t->H,
                     .WO = t->W,
                     .KH = t->KH,
                     .KW = t->KW,
                     .stride = t->stride,
                     .images = t->T * t->N,
                     .transposed = true};
    DirectTiles d;
    if (plan_direct(&s, c->m->elem_size, k->name, &d, c->err)) return -1;
    var_i(vs, "CB", d.OB), var_i(vs, "RC", d.RO), var_i(vs, "OC", d.CC), var_i(vs, "TH", d.TH);
    var_i(vs, "NT", d.NT), var_i(vs, "MAXI", d.MAXI);
    set_launch(l, t->C / d.OB * d.NT, t->N, t->T);
    return grid_ok(c, k, t->C / d.OB * d.NT, t->N, t->T);
}

/* Shared bytes of the grad_weight template for TH rows per tile. */
static int64_t grad_weight_smem(const KTemplate *t, int64_t OB, int64_t CB, int64_t split,
                                int64_t TH, size_t elem) {
    int64_t ih = (TH - 1) * t->stride + t->KH, iw = (t->WO - 1) * t->stride + t->KW;
    int64_t floats = OB * TH * t->WO + CB * ((ih * iw) | 1) + (split > 1 ? THREADS : 0);
    return floats * (int64_t)elem;
}

static int conv_grad_weight_vars(Cg *c, const Kernel *k, Vars *vs, CudaLaunch *l) {
    const KTemplate *t = &k->t;
    size_t elem = c->m->elem_size;
    int64_t OB = pow2_divisor(t->O, 16), CB = pow2_divisor(t->C, 16);
    /* fewer channels per block (more blocks, more split rows) while the GPU would idle */
    while (t->O / OB * (t->C / CB) * t->T < MIN_BLOCKS && (OB > 1 || CB > 1)) {
        if (OB >= CB)
            OB /= 2;
        else
            CB /= 2;
    }
    int64_t split = THREADS / (OB * CB), TH = t->HO;
    while (TH > 1 && grad_weight_smem(t, OB, CB, split, TH, elem) > SMEM_BUDGET) TH = (TH + 1) / 2;
    if (grad_weight_smem(t, OB, CB, split, TH, elem) > SMEM_BUDGET)
        return maml_fail(c->err,
                         "%s: a %lldx%lld kernel over %lld-pixel rows exceeds the CUDA "
                         "grad_weight template's shared memory budget",
                         k->name, (long long)t->KH, (long long)t->KW, (long long)t->WO);
    int64_t NT = ceil_div(t->HO, TH);
    TH = ceil_div(t->HO, NT);
    var_i(vs, "OB", OB), var_i(vs, "CB", CB), var_i(vs, "SPLIT", split);
    var_i(vs, "TH", TH), var_i(vs, "NT", NT);
    int64_t gx = t->O / OB * (t->C / CB);
    set_launch(l, gx, 1, t->T);
    return grid_ok(c, k, gx, 1, t->T);
}

static void matmul_vars(const Kernel *k, Vars *vs, CudaLaunch *l) {
    const KTemplate *t = &k->t;
    var_i(vs, "batch", t->batch), var_i(vs, "M", t->m), var_i(vs, "N", t->n), var_i(vs, "K", t->k);
    var_i(vs, "a_si", t->trans_a ? 1 : t->k), var_i(vs, "a_sq", t->trans_a ? t->m : 1);
    var_i(vs, "b_sq", t->trans_b ? 1 : t->n), var_i(vs, "b_sj", t->trans_b ? t->k : 1);
    set_launch(l, ceil_div(t->n, 16), ceil_div(t->m, 16), min64(t->batch, 65535));
}

static void pool_vars(const Kernel *k, Vars *vs, CudaLaunch *l) {
    const KTemplate *t = &k->t;
    var_i(vs, "planes", t->planes), var_i(vs, "H", t->H), var_i(vs, "W", t->W);
    var_i(vs, "HO", t->HO), var_i(vs, "WO", t->WO);
    var_i(vs, "kernel", t->kernel), var_i(vs, "stride", t->stride);
    int64_t points = t->planes * (k->kind == KERNEL_POOL_SCATTER ? t->H * t->W : t->HO * t->WO);
    set_launch(l, min64(ceil_div(points, THREADS), GRID_CAP), 1, 1);
}

/* ---- --conv tensor: the conv family as implicit GEMMs (conv_mma.cu.tmpl) ---- */

#define MMA_BM 64 /* the GEMM rows of a block: every output (or input) channel of the seed */
/* Blocks a tensor-core launch aims for: one per SM of an H100/H200. A wider tile issues fewer
 * operand loads and index computations per tensor-core product (the kernels are issue-bound
 * rather than math-bound), which is worth more than the second wave MIN_BLOCKS asks of the
 * direct templates; 8 warps per block and two or more blocks per SM still hide latency. */
#define MMA_MIN_BLOCKS 132

/* A conv kernel's per-task GEMM: rows, columns and depth. */
static void conv_gemm(const KTemplate *t, KernelKind kind, int64_t *m, int64_t *n, int64_t *k) {
    int64_t k2 = t->KH * t->KW;
    if (kind == KERNEL_CONV2D)
        *m = t->O, *n = t->N * t->HO * t->WO, *k = t->C * k2;
    else if (kind == KERNEL_CONV2D_GRAD_INPUT)
        *m = t->C, *n = t->N * t->H * t->W, *k = t->O * k2;
    else
        *m = t->O, *n = t->C * k2, *k = t->N * t->HO * t->WO;
}

/* Whether kernel k runs on tensor cores: float32, --conv tensor, and a GEMM whose tiles are not
 * mostly padding (16 rows, 32 columns and 16 deep at least: the first layer's 3x3 single-channel
 * taps stay direct). On success the columns per block (BN: 128, 64 or 32, the widest that still
 * gives the GPU MMA_MIN_BLOCKS blocks) and the grid's x. */
static bool plan_mma(const Cg *c, const Kernel *k, int64_t *bn, int64_t *gx) {
    int64_t m, n, depth;
    if (!c->tensor_convs || c->m->elem_size != 4 || !kernel_is_conv(k->kind)) return false;
    conv_gemm(&k->t, k->kind, &m, &n, &depth);
    if (m < 16 || n < 32 || depth < 16 || m * n > INT32_MAX || m * depth > INT32_MAX ||
        n * depth > INT32_MAX)
        return false;
    for (*bn = 128; *bn > 32; *bn /= 2)
        if (ceil_div(m, MMA_BM) * ceil_div(n, *bn) * k->t.T >= MMA_MIN_BLOCKS) break;
    *gx = ceil_div(m, MMA_BM) * ceil_div(n, *bn);
    return true;
}

static int mma_vars(Cg *c, const Kernel *k, int64_t bn, int64_t gx, Vars *vs, CudaLaunch *l) {
    conv_vars(k, vs);
    var_i(vs, "BM", MMA_BM), var_i(vs, "BN", bn);
    set_launch(l, gx, 1, k->t.T);
    return grid_ok(c, k, gx, 1, k->t.T);
}

static int template_vars(Cg *c, const Kernel *k, Vars *vs, CudaLaunch *l, const char **file,
                         const char **section) {
    *section = "kernel";
    int64_t bn, gx;
    if (plan_mma(c, k, &bn, &gx)) {
        *file = CONV_MMA;
        *section = kernel_kind_name(k->kind);
        return mma_vars(c, k, bn, gx, vs, l);
    }
    switch (k->kind) {
    case KERNEL_CONV2D:
        *file = "cuda/conv2d.cu.tmpl";
        conv_vars(k, vs);
        return conv_forward_vars(c, k, vs, l);
    case KERNEL_CONV2D_GRAD_INPUT:
        *file = "cuda/conv2d_grad_input.cu.tmpl";
        conv_vars(k, vs);
        return conv_grad_input_vars(c, k, vs, l);
    case KERNEL_CONV2D_GRAD_WEIGHT:
        *file = "cuda/conv2d_grad_weight.cu.tmpl";
        conv_vars(k, vs);
        return conv_grad_weight_vars(c, k, vs, l);
    case KERNEL_MATMUL:
        *file = "cuda/matmul.cu.tmpl";
        matmul_vars(k, vs, l);
        return 0;
    default:
        *file = "cuda/pool.cu.tmpl";
        *section = kernel_kind_name(k->kind);
        pool_vars(k, vs, l);
        return 0;
    }
}

static int render_template(Cg *c, const Kernel *k, const char *name, const char *comment,
                           CudaLaunch *launch, StrBuf *out) {
    Vars vs = {.n = 0};
    const char *file, *section;
    if (template_vars(c, k, &vs, launch, &file, &section)) return -1;
    launch->n_args = 0;
    for (int i = 0; i < k->n_in; i++) launch->args[launch->n_args++] = k->in[i];
    launch->args[launch->n_args++] = k->out;
    char launch_line[96];
    launch_text(launch, launch_line, sizeof launch_line);
    var_s(&vs, "name", name);
    var_s(&vs, "comment", comment);
    var_s(&vs, "launch", launch_line);
    bool argmax = k->kind == KERNEL_POOL_SCATTER || k->kind == KERNEL_POOL_GATHER;
    if (argmax && render(c, file, "argmax", &vs, false, out)) return -1;
    return render(c, file, section, &vs, false, out);
}

/* ---- the program ---- */

static int render_kernel(Cg *c, const Kernel *k, const char *name, const char *comment,
                         CudaLaunch *l, StrBuf *out) {
    return k->kind == KERNEL_LOOP ? render_loop(c, k, name, comment, l, out)
                                  : render_template(c, k, name, comment, l, out);
}

/* What is rendered comes in slots: slot s < n is kernel s as the options ask, slot n + i (with
 * CodegenOptions.tensor_variants) kernel i's tensor-core form. */
typedef struct {
    int n_slots;
    bool tensor_convs; /* CodegenOptions.tensor_convs */
} Slots;

static const Kernel *slot_kernel(const Cg *c, int s) {
    return &c->p->kernels[s % c->p->n_kernels];
}

static bool slot_is_variant(const Cg *c, int s) {
    return s >= c->p->n_kernels;
}

static CudaLaunch *slot_launch(const Cg *c, int s) {
    int n = c->p->n_kernels;
    return s < n ? &c->code->launches[s] : &c->code->tensor[s - n];
}

/* Sets the form slot s renders in; false for a variant slot whose kernel has no tensor form. */
static bool slot_select(Cg *c, const Slots *sl, int s) {
    c->tensor_convs = slot_is_variant(c, s) || sl->tensor_convs;
    int64_t bn, gx;
    return !slot_is_variant(c, s) || plan_mma(c, slot_kernel(c, s), &bn, &gx);
}

/* Slots with the same text up to their name and comment share a function: key[s] holds slot s's
 * text rendered with neutral tokens, fn[s] the first slot whose key equals it (-1: nothing to
 * render). */
typedef struct {
    StrBuf *key;
    uint64_t *hash;
    int *fn;
} Dedup;

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* The function's name: what it is (strategy or template kind) and its text's hash. */
static int function_name(Cg *c, const Kernel *k, uint64_t hash, char *buf, size_t size) {
    static const char *const strategies[] = {"map", "thread", "warp", "block", "cols"};
    const char *stem = kernel_kind_name(k->kind);
    LoopPlan L;
    if (k->kind == KERNEL_LOOP) {
        if (plan_loop(c, k, &L)) return -1;
        stem = strategies[L.strat];
    }
    snprintf(buf, size, "%s_%016llx", stem, (unsigned long long)hash);
    return 0;
}

/* The first earlier slot with the same text as slot s, or s. */
static int same_text(const Dedup *d, int s) {
    for (int j = 0; j < s; j++)
        if (d->fn[j] == j && d->hash[j] == d->hash[s] && d->key[j].len == d->key[s].len &&
            memcmp(d->key[j].data, d->key[s].data, d->key[s].len) == 0)
            return j;
    return s;
}

static int find_functions(Cg *c, const Slots *sl, Dedup *d) {
    CudaCode *code = c->code;
    for (int s = 0; s < sl->n_slots; s++) {
        const Kernel *k = slot_kernel(c, s);
        CudaLaunch *l = slot_launch(c, s);
        snprintf(l->name, sizeof l->name, "%s", k->name);
        l->function = d->fn[s] = -1;
        if (!slot_select(c, sl, s)) continue;
        if (render_kernel(c, k, "mamlc_fn", "", l, &d->key[s])) return -1;
        if (d->key[s].failed) return maml_fail(c->err, "out of memory rendering kernels");
        d->hash[s] = fnv1a(d->key[s].data, d->key[s].len);
        d->fn[s] = same_text(d, s);
        if (d->fn[s] != s) {
            l->function = slot_launch(c, d->fn[s])->function;
            continue;
        }
        CudaFunction *f = &code->functions[code->n_functions];
        if (function_name(c, k, d->hash[s], f->name, sizeof f->name)) return -1;
        l->function = code->n_functions++;
    }
    return 0;
}

/* The kernels that launch function fn, for its comment. */
static void function_comment(Cg *c, const Slots *sl, int fn, char *buf, int size) {
    int n = 0, users = 0;
    buf[0] = 0;
    for (int s = 0; s < sl->n_slots; s++) {
        if (slot_launch(c, s)->function != fn) continue;
        const Kernel *k = slot_kernel(c, s);
        if (users == 0) {
            codegen_kernel_comment(c, k, buf, size);
            n = (int)strlen(buf);
        } else if (n < size - 80) {
            n += snprintf(buf + n, (size_t)(size - n), "%s%s", users > 1 ? ", " : "; also ",
                          k->name);
        } else if (n < size - 20) {
            n += snprintf(buf + n, (size_t)(size - n), ", ...");
        }
        users++;
    }
}

static int emit_functions(Cg *c, const Slots *sl, const Dedup *d, StrBuf *out) {
    for (int s = 0; s < sl->n_slots; s++) {
        if (d->fn[s] != s) continue;
        int fn = slot_launch(c, s)->function;
        CudaFunction *f = &c->code->functions[fn];
        char comment[700];
        CudaLaunch scratch;
        function_comment(c, sl, fn, comment, sizeof comment);
        slot_select(c, sl, s);
        f->begin = out->len;
        if (render_kernel(c, slot_kernel(c, s), f->name, comment, &scratch, out)) return -1;
        sb_puts(out, "\n");
        f->end = out->len;
    }
    return 0;
}

static int render_program(Cg *c, const CodegenOptions *opt, StrBuf *out) {
    const KernelProgram *p = c->p;
    Slots sl = {.n_slots = p->n_kernels * (opt->tensor_variants && !opt->f64 ? 2 : 1),
                .tensor_convs = opt->tensor_convs};
    size_t n = (size_t)sl.n_slots + 1;
    Dedup d = {.key = maml_calloc(n, sizeof *d.key, c->err),
               .hash = maml_calloc(n, sizeof *d.hash, c->err),
               .fn = maml_calloc(n, sizeof *d.fn, c->err)};
    int rc = d.key && d.hash && d.fn ? find_functions(c, &sl, &d) : -1;
    Vars vs = {.n = 0};
    var_s(&vs, "source", opt->source ? opt->source : "a graph");
    var_i(&vs, "n_kernels", p->n_kernels);
    var_i(&vs, "n_functions", c->code->n_functions);
    var_i(&vs, "arena_bytes", c->m->arena_bytes);
    var_s(&vs, "real", opt->f64 ? "double" : "float");
    bool mma = (opt->tensor_convs || opt->tensor_variants) && !opt->f64;
    if (rc == 0) rc = render(c, PROGRAM, "header", &vs, false, out);
    c->code->header_end = out->len;
    if (rc == 0) rc = render(c, PROGRAM, "prelude", &vs, false, out);
    if (rc == 0 && mma) rc = render(c, CONV_MMA, "core", &vs, false, out);
    c->code->prelude_end = out->len;
    if (rc == 0) rc = emit_functions(c, &sl, &d, out);
    if (rc == 0) rc = render(c, PROGRAM, "epilogue", &vs, false, out);
    for (size_t i = 0; d.key && i < n; i++) sb_free(&d.key[i]);
    free(d.key);
    free(d.hash);
    free(d.fn);
    return rc;
}

int cuda_code_alloc(CudaCode *code, int n_kernels, MamlError *err) {
    memset(code, 0, sizeof *code);
    size_t n = (size_t)n_kernels + 1;
    code->launches = maml_calloc(n, sizeof *code->launches, err);
    code->tensor = code->launches ? maml_calloc(n, sizeof *code->tensor, err) : NULL;
    code->functions = code->tensor ? maml_calloc(2 * n, sizeof *code->functions, err) : NULL;
    code->n_kernels = n_kernels;
    return code->functions ? 0 : -1;
}

void cuda_code_free(CudaCode *code) {
    free(code->launches);
    free(code->tensor);
    free(code->functions);
    memset(code, 0, sizeof *code);
}

int codegen_cuda(const Graph *g, const KernelProgram *p, const MemPlan *m,
                 const CodegenOptions *opt, StrBuf *out, CudaCode *code, MamlError *err) {
    if (m->elem_size != (opt->f64 ? 8u : 4u))
        return maml_fail(err, "memory plan is for %zu-byte reals, codegen for %s", m->elem_size,
                         opt->f64 ? "double" : "float");
    if (out->len != 0) return maml_fail(err, "codegen_cuda needs an empty output buffer");
    if (code->n_kernels < p->n_kernels)
        return maml_fail(err, "CudaCode holds %d kernels, the program has %d", code->n_kernels,
                         p->n_kernels);
    code->n_functions = 0;
    for (int i = 0; i < p->n_kernels; i++) code->tensor[i].function = -1;
    Cg c = {.g = g, .p = p, .m = m, .code = code, .tensor_convs = opt->tensor_convs, .err = err};
    templates_init(&c.tp);
    int rc = render_program(&c, opt, out);
    templates_free(&c.tp);
    if (rc == 0 && out->failed) rc = maml_fail(err, "out of memory rendering kernels");
    return rc;
}

/* ---- mamlc compile --backend cuda ---- */

static void write_launch(FILE *f, const Kernel *k, const CudaLaunch *l, const CudaCode *code) {
    char grid[64];
    snprintf(grid, sizeof grid, "(%u, %u, %u)", l->grid[0], l->grid[1], l->grid[2]);
    fprintf(f, "%-28s %-18s %-28s %24s\n", l->name, kernel_kind_name(k->kind),
            code->functions[l->function].name, grid);
}

/* Each kernel's launch, and below it its tensor-core form's where kernels.cu has one. */
static void write_launches(FILE *f, const KernelProgram *p, const CudaCode *code) {
    fprintf(f, "\nCUDA launches (256 threads per block):\n%-28s %-18s %-28s %24s\n", "kernel",
            "kind", "function", "grid");
    for (int i = 0; i < p->n_kernels; i++) {
        write_launch(f, &p->kernels[i], &code->launches[i], code);
        if (code->tensor[i].function < 0) continue;
        CudaLaunch t = code->tensor[i];
        snprintf(t.name, sizeof t.name, "  or on tensor cores");
        write_launch(f, &p->kernels[i], &t, code);
    }
}

static int write_cuda_files(const char *dir, const Graph *g, const KernelProgram *p,
                            const MemPlan *m, const StrBuf *src, const CudaCode *code,
                            const CudaCompileSummary *s, MamlError *err) {
    char path[2048];
    FILE *f = codegen_open_output(dir, "kernels.cu", path, sizeof path, err);
    if (!f) return -1;
    int rc =
        fwrite(src->data, 1, src->len, f) == src->len ? 0 : maml_fail(err, "%s: short write", path);
    if (codegen_close_output(f, path, rc, err)) return -1;
    if (!(f = codegen_open_output(dir, "plan.json", path, sizeof path, err))) return -1;
    rc = codegen_close_output(f, path, codegen_write_plan_json(f, g, p, m, err), err);
    if (rc || !(f = codegen_open_output(dir, "report.txt", path, sizeof path, err))) return -1;
    fprintf(f,
            "mamlc compile --backend cuda: lowering, memory plan and CUDA rendering took %.3f s "
            "(NVRTC runs when the backend opens)\n",
            s->seconds);
    fprintf(f, "without fusion: %d kernels\n", s->unfused_kernels);
    rc = codegen_write_report(f, g, p, m, err);
    if (rc == 0) write_launches(f, p, code);
    return codegen_close_output(f, path, rc, err);
}

int codegen_write_cuda_dir(const Graph *g, const char *dir, const CodegenOptions *opt,
                           CudaCompileSummary *summary, MamlError *err) {
    double t0 = maml_now_s();
    KernelProgram p = {0}, unfused = {0};
    MemPlan m = {0};
    StrBuf src;
    sb_init(&src);
    CudaCode code = {0};
    CudaCompileSummary s = {0};
    int rc = kernels_lower(g, true, &p, err);
    if (rc == 0) rc = memplan_build(&p, opt->f64 ? 8 : 4, &m, err);
    if (rc == 0) rc = cuda_code_alloc(&code, p.n_kernels, err);
    if (rc == 0) rc = codegen_cuda(g, &p, &m, opt, &src, &code, err);
    s.seconds = maml_now_s() - t0;
    if (rc == 0) rc = kernels_lower(g, false, &unfused, err);
    if (rc == 0) {
        s.kernels = p.n_kernels;
        s.functions = code.n_functions;
        s.unfused_kernels = unfused.n_kernels;
        s.live_nodes = p.n_live_nodes;
        s.arena_bytes = m.arena_bytes;
        s.lower_bound = m.lower_bound;
        s.source_bytes = (long long)src.len;
        rc = write_cuda_files(dir, g, &p, &m, &src, &code, &s, err);
    }
    if (rc == 0 && summary) *summary = s;
    cuda_code_free(&code);
    sb_free(&src);
    memplan_free(&m);
    kernel_program_free(&p);
    kernel_program_free(&unfused);
    return rc;
}
