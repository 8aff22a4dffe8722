/* What the C and CUDA renderers (codegen_c.c, codegen_cuda.c) share: the placeholder lists of a
 * template section, the renderer's state and the text of a loop kernel's scalar ops, whose
 * sections (ops.tmpl, ops.cu.tmpl) take the same placeholders. Not a public interface. */
#ifndef MAMLC_CODEGEN_INTERNAL_H
#define MAMLC_CODEGEN_INTERNAL_H

#include <stdio.h>

#include "codegen.h"

#define MAX_VARS 64

/* Placeholder values for one section; numbers are formatted into `store`. */
typedef struct {
    TmplVar v[MAX_VARS];
    char store[MAX_VARS][64];
    int n;
} Vars;

static inline void var_s(Vars *vs, const char *key, const char *value) {
    if (vs->n == MAX_VARS) return; /* never reached: sections use far fewer */
    vs->v[vs->n].key = key;
    vs->v[vs->n++].value = value;
}

static inline void var_i(Vars *vs, const char *key, int64_t x) {
    if (vs->n == MAX_VARS) return;
    snprintf(vs->store[vs->n], sizeof vs->store[0], "%lld", (long long)x);
    var_s(vs, key, vs->store[vs->n]);
}

/* One rendering in progress. code: the launches and functions the CUDA renderer fills (NULL for
 * C). */
typedef struct {
    Templates tp;
    const Graph *g;
    const KernelProgram *p;
    const MemPlan *m;
    CudaCode *code;
    bool tensor_convs; /* conv kernels in their tensor-core form where they have one (CUDA): set
                          per kernel rendered, from CodegenOptions.tensor_convs or, for the
                          second functions of tensor_variants, true */
    MamlError *err;
} Cg;

static inline int render(Cg *c, const char *file, const char *section, const Vars *vs, bool trim,
                         StrBuf *out) {
    return template_render(&c->tp, file, section, vs ? vs->v : NULL, vs ? vs->n : 0, trim, out,
                           c->err);
}

/* "k12_mul: mul+exp (conv1.bn)": what kernel k fuses and the layer it came from, fit to sit in a
 * C block comment or a // line comment. */
void codegen_kernel_comment(const Cg *c, const Kernel *k, char *buf, int size);

/* The flat index "i0 * 64 + i2 + 5" of a point of k's loop nest in a buffer with these strides
 * (0 for axes it does not vary along) starting `offset` elements in. */
void codegen_index_expr(const Kernel *k, const int64_t *strides, int64_t offset, StrBuf *out);

/* True when op i is a comparison whose value only selects use as their mask: those selects test
 * the comparison themselves (codegen_op_expr), so renderers skip op i. */
bool codegen_mask_only(const Kernel *k, int i);

/* Appends the expression of k's op i (not a reduction) from section kop_name(op) of ops_file:
 * operands are the values v<src>, buf is what the kernel calls the buffer a load reads, and a
 * constant is its double to 17 digits, exactly (ops_file's sections nan, inf and neg_inf spell the
 * others). */
int codegen_op_expr(Cg *c, const char *ops_file, const Kernel *k, int i, const char *buf,
                    StrBuf *expr);

#endif
