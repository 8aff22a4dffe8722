/* The pieces of loop kernels the C and CUDA renderers write alike (codegen_internal.h). */
#include "codegen_internal.h"

#include <math.h>

void codegen_kernel_comment(const Cg *c, const Kernel *k, char *buf, int size) {
    char what[400];
    kernel_describe(c->g, k, what, sizeof what);
    const char *origin = c->g->nodes[k->root].origin;
    snprintf(buf, (size_t)size, "%s: %s%s%s%s", k->name, what, origin && *origin ? " (" : "",
             origin ? origin : "", origin && *origin ? ")" : "");
    /* no comment terminator, no line break */
    for (char *q = buf; *q; q++) {
        if (*q == '*') *q = '.';
        if (*q == '\n' || *q == '\r') *q = ' ';
    }
}

void codegen_index_expr(const Kernel *k, const int64_t *strides, int64_t offset, StrBuf *out) {
    bool any = false;
    for (int a = 0; a < k->rank; a++) {
        if (strides[a] == 0) continue;
        if (any) sb_puts(out, " + ");
        if (strides[a] == 1)
            sb_printf(out, "i%d", a);
        else
            sb_printf(out, "i%d * %lld", a, (long long)strides[a]);
        any = true;
    }
    if (offset || !any) sb_printf(out, "%s%lld", any ? " + " : "", (long long)offset);
}

/* A constant's text; NaN and the infinities have no literal in either language. */
static int const_text(Cg *c, const char *ops_file, double v, StrBuf *out) {
    if (isnan(v)) return render(c, ops_file, "nan", NULL, true, out);
    if (isinf(v)) return render(c, ops_file, v < 0 ? "neg_inf" : "inf", NULL, true, out);
    sb_printf(out, "%.17g", v);
    return 0;
}

/* The comparison (GT or EQ, of the same phase) select op tests: codegen_op_expr then renders the
 * select on the comparison's operands. NULL for other ops. */
static const KOp *tested_comparison(const Kernel *k, const KOp *op) {
    if (op->op != KOP_SELECT) return NULL;
    const KOp *m = &k->ops[op->src[0]];
    return (m->op == KOP_GT || m->op == KOP_EQ) && m->phase == op->phase ? m : NULL;
}

bool codegen_mask_only(const Kernel *k, int m) {
    if (k->ops[m].op != KOP_GT && k->ops[m].op != KOP_EQ) return false;
    bool used = false;
    for (int i = m + 1; i < k->n_ops; i++)
        for (int s = 0; s < 3; s++) {
            if (k->ops[i].src[s] != m) continue;
            if (s != 0 || !tested_comparison(k, &k->ops[i])) return false;
            used = true;
        }
    for (int s = 0; s < k->n_stores; s++)
        if (k->stores[s].src == m) return false;
    return used;
}

int codegen_op_expr(Cg *c, const char *ops_file, const Kernel *k, int i, const char *buf,
                    StrBuf *expr) {
    const KOp *op = &k->ops[i];
    /* "?" for an operand the op does not have: a section that used one would not compile */
    char names[3][32], axis[16];
    for (int s = 0; s < 3; s++) {
        if (op->src[s] >= 0)
            snprintf(names[s], sizeof names[s], "v%d", op->src[s]);
        else
            snprintf(names[s], sizeof names[s], "?");
    }
    snprintf(axis, sizeof axis, "i%d", op->axis);
    StrBuf idx, num;
    sb_init(&idx);
    sb_init(&num);
    if (op->op == KOP_LOAD) codegen_index_expr(k, op->strides, op->offset, &idx);
    int rc = op->op == KOP_CONST ? const_text(c, ops_file, op->value, &num) : 0;
    Vars vs = {.n = 0};
    var_s(&vs, "a", names[0]);
    var_s(&vs, "b", names[1]);
    var_s(&vs, "c", names[2]);
    var_s(&vs, "buf", buf);
    var_s(&vs, "index", idx.data ? idx.data : "");
    var_s(&vs, "value", num.data ? num.data : "");
    var_s(&vs, "i", axis);
    /* A select on a comparison of the same phase tests the comparison itself: GCC if-converts
     * (and vectorizes) that, but not always the chain "m = a > b ? 1 : 0; m != 0 ? x : y", which
     * it compiled to a branch per element in some of omniglot_5w1s's ReLU maps (4 GB/s). */
    const char *section = kop_name(op->op);
    const KOp *mask = tested_comparison(k, op);
    char x[32], y[32];
    if (mask) {
        snprintf(x, sizeof x, "v%d", mask->src[0]);
        snprintf(y, sizeof y, "v%d", mask->src[1]);
        var_s(&vs, "x", x);
        var_s(&vs, "y", y);
        section = mask->op == KOP_GT ? "select_gt" : "select_eq";
    }
    if (rc == 0 && (idx.failed || num.failed)) rc = maml_fail(c->err, "out of memory");
    if (rc == 0) rc = render(c, ops_file, section, &vs, true, expr);
    sb_free(&idx);
    sb_free(&num);
    return rc;
}
