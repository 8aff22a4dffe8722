#include "memplan.h"

#include <stdlib.h>
#include <string.h>

/* A group is a chain of buffers sharing bytes through in-place writes; it is placed as one. */
typedef struct {
    int rep;         /* first buffer of the chain */
    int first, last; /* union of the members' lifetimes */
    int64_t bytes;
    int64_t offset;
    bool placed;
} Group;

static int64_t round_up(int64_t n, int64_t a) {
    return (n + a - 1) / a * a;
}

static int liveness(const KernelProgram *p, MemPlan *m, MamlError *err) {
    int *reads = maml_alloc(((size_t)p->n_bufs + 1) * sizeof *reads, err);
    if (!reads) return -1;
    for (int b = 0; b < p->n_bufs; b++) {
        m->bytes[b] = round_up(p->bufs[b].numel * (int64_t)m->elem_size, MEMPLAN_ALIGN);
        m->first[b] = p->bufs[b].kind == BUF_INPUT ? -1 : p->n_kernels;
        m->last[b] = p->bufs[b].is_output ? p->n_kernels : -1;
        m->inplace[b] = -1;
    }
    for (int k = 0; k < p->n_kernels; k++) {
        int n = kernel_stores(&p->kernels[k], reads, p->n_bufs);
        for (int i = 0; i < n; i++)
            if (m->first[reads[i]] > k) m->first[reads[i]] = k;
        n = kernel_reads(&p->kernels[k], reads, p->n_bufs);
        for (int i = 0; i < n; i++)
            if (m->last[reads[i]] < k) m->last[reads[i]] = k;
    }
    for (int b = 0; b < p->n_bufs; b++)
        if (m->last[b] < m->first[b]) m->last[b] = m->first[b]; /* written, never read */
    free(reads);
    return 0;
}

/* Lets store w of kernel k take over one of the operands (reads[0..n)) that dies there. An operand
 * numbered after w is left alone: place_groups relies on a source preceding its taker. */
static void inplace_store(const KernelProgram *p, MemPlan *m, int k, int w, const int *reads, int n,
                          bool *taken) {
    const Kernel *kn = &p->kernels[k];
    for (int i = 0; i < n; i++) {
        int b = reads[i];
        if (taken[b] || b > w || m->last[b] != k || p->bufs[b].is_output ||
            p->bufs[b].kind == BUF_INPUT || p->bufs[w].is_output || m->bytes[b] != m->bytes[w] ||
            !kernel_can_write_in_place(kn, w, b))
            continue;
        m->inplace[w] = b;
        taken[b] = true;
        m->n_inplace++;
        return;
    }
}

/* Lets each store of a loop kernel take over an operand that dies there, when that is legal. */
static int plan_inplace(const KernelProgram *p, MemPlan *m, MamlError *err) {
    int *reads = maml_alloc(((size_t)p->n_bufs + 1) * sizeof *reads, err);
    int *outs = maml_alloc(((size_t)p->n_bufs + 1) * sizeof *outs, err);
    bool *taken = maml_calloc((size_t)p->n_bufs + 1, sizeof *taken, err);
    int rc = (!reads || !outs || !taken) ? -1 : 0;
    for (int k = 0; rc == 0 && k < p->n_kernels; k++) {
        int n = kernel_reads(&p->kernels[k], reads, p->n_bufs);
        int n_out = kernel_stores(&p->kernels[k], outs, p->n_bufs);
        for (int s = 0; s < n_out; s++)
            if (m->first[outs[s]] == k) inplace_store(p, m, k, outs[s], reads, n, taken);
    }
    free(taken);
    free(outs);
    free(reads);
    return rc;
}

static int64_t compute_lower_bound(const KernelProgram *p, const MemPlan *m, MamlError *err) {
    /* live bytes at time t (t = -1 .. n_kernels) via a difference array */
    int64_t *delta = maml_calloc((size_t)p->n_kernels + 3, sizeof *delta, err);
    if (!delta) return -1;
    for (int b = 0; b < p->n_bufs; b++) {
        delta[m->first[b] + 1] += m->bytes[b];
        delta[m->last[b] + 2] -= m->bytes[b];
    }
    int64_t live = 0, best = 0;
    for (int t = 0; t < p->n_kernels + 2; t++) {
        live += delta[t];
        if (live > best) best = live;
    }
    free(delta);
    return best;
}

static int group_cmp(const void *a, const void *b) {
    const Group *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
    return x->first - y->first;
}

static bool overlaps(const Group *a, const Group *b) {
    return a->first <= b->last && b->first <= a->last;
}

static int offset_cmp(const void *a, const void *b) {
    const Group *x = *(Group *const *)a, *y = *(Group *const *)b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* Best fit: the smallest gap between already placed groups that overlap g in time. */
static void place(Group *groups, int n, Group *g, Group **tmp) {
    int c = 0;
    for (int i = 0; i < n; i++)
        if (groups[i].placed && overlaps(&groups[i], g)) tmp[c++] = &groups[i];
    qsort(tmp, (size_t)c, sizeof *tmp, offset_cmp);
    int64_t at = 0, best = -1, best_gap = INT64_MAX;
    for (int i = 0; i < c; i++) {
        int64_t gap = tmp[i]->offset - at;
        if (gap >= g->bytes && gap < best_gap) best = at, best_gap = gap;
        int64_t end = tmp[i]->offset + tmp[i]->bytes;
        if (end > at) at = end;
    }
    g->offset = best >= 0 ? best : at;
    g->placed = true;
}

/* The temp buffer holding the output named like input b, or -1. */
static int feedback_of(const KernelProgram *p, const MemPlan *m, int b) {
    for (int o = 0; o < p->n_outputs; o++) {
        int w = p->outputs[o].buf;
        if (p->bufs[w].kind == BUF_TEMP && m->bytes[w] == m->bytes[b] &&
            strcmp(p->outputs[o].name, p->bufs[b].name) == 0)
            return w;
    }
    return -1;
}

/* Which part of the inputs block input b goes to: 0 data, 1 feedback, 2 the others. */
static int input_part(const KernelProgram *p, const MemPlan *m, int b) {
    return p->bufs[b].is_data ? 0 : feedback_of(p, m, b) >= 0 ? 1 : 2;
}

/* Fixes the inputs and outputs blocks (memplan.h); fixed[b] marks the buffers placed. */
static void place_blocks(const KernelProgram *p, MemPlan *m, bool *fixed) {
    int64_t at = 0;
    for (int part = 0; part < 3; part++) {
        for (int b = 0; b < p->n_bufs; b++)
            if (p->bufs[b].kind == BUF_INPUT && input_part(p, m, b) == part)
                m->offset[b] = at, at += m->bytes[b], fixed[b] = true;
        if (part == 0) m->data_bytes = at;
        if (part == 1) m->feedback_bytes = at - m->data_bytes;
    }
    m->outputs_at = at;
    for (int b = 0; b < p->n_bufs; b++)
        if (p->bufs[b].kind == BUF_INPUT && input_part(p, m, b) == 1) {
            int w = feedback_of(p, m, b);
            m->offset[w] = at, at += m->bytes[w], fixed[w] = true;
        }
    for (int b = 0; b < p->n_bufs; b++)
        if (p->bufs[b].kind == BUF_TEMP && p->bufs[b].is_output && !fixed[b])
            m->offset[b] = at, at += m->bytes[b], fixed[b] = true;
    m->outputs_bytes = at - m->outputs_at;
    m->arena_bytes = at;
}

static int place_groups(const KernelProgram *p, MemPlan *m, MamlError *err) {
    int *group_of = maml_alloc(((size_t)p->n_bufs + 1) * sizeof *group_of, err);
    Group *groups = maml_calloc((size_t)p->n_bufs + 1, sizeof *groups, err);
    Group **tmp = maml_calloc((size_t)p->n_bufs + 1, sizeof *tmp, err);
    bool *fixed = maml_calloc((size_t)p->n_bufs + 1, sizeof *fixed, err);
    int n = 0, rc = (!group_of || !groups || !tmp || !fixed) ? -1 : 0;
    if (rc == 0) place_blocks(p, m, fixed);
    /* buffers come in kernel order, so an in-place source's group already exists */
    for (int b = 0; rc == 0 && b < p->n_bufs; b++) {
        int src = m->inplace[b];
        if (src >= 0 && src < b) {
            Group *g = &groups[group_of[src]];
            group_of[b] = group_of[src];
            if (m->last[b] > g->last) g->last = m->last[b];
            continue;
        }
        groups[n] =
            (Group){.rep = b, .first = m->first[b], .last = m->last[b], .bytes = m->bytes[b]};
        if (fixed[b]) /* reserved for the whole step */
            groups[n].first = -1, groups[n].last = p->n_kernels, groups[n].offset = m->offset[b],
            groups[n].placed = true;
        group_of[b] = n++;
    }
    if (rc == 0) {
        qsort(groups, (size_t)n, sizeof *groups, group_cmp);
        for (int i = 0; i < n; i++)
            if (!groups[i].placed) place(groups, n, &groups[i], tmp);
        for (int i = 0; i < n; i++) {
            m->offset[groups[i].rep] = groups[i].offset;
            int64_t end = groups[i].offset + groups[i].bytes;
            if (end > m->arena_bytes) m->arena_bytes = end;
        }
        /* in-place members follow their source (buffer order is kernel order) */
        for (int b = 0; b < p->n_bufs; b++)
            if (m->inplace[b] >= 0) m->offset[b] = m->offset[m->inplace[b]];
    }
    free(group_of);
    free(groups);
    free(tmp);
    free(fixed);
    return rc;
}

int memplan_build(const KernelProgram *p, size_t elem_size, MemPlan *out, MamlError *err) {
    memset(out, 0, sizeof *out);
    size_t n = (size_t)p->n_bufs + 1;
    out->n_bufs = p->n_bufs;
    out->elem_size = elem_size;
    out->offset = maml_calloc(n, sizeof *out->offset, err);
    out->bytes = maml_calloc(n, sizeof *out->bytes, err);
    out->first = maml_calloc(n, sizeof *out->first, err);
    out->last = maml_calloc(n, sizeof *out->last, err);
    out->inplace = maml_calloc(n, sizeof *out->inplace, err);
    int rc = (!out->offset || !out->bytes || !out->first || !out->last || !out->inplace) ? -1 : 0;
    if (rc == 0) rc = liveness(p, out, err);
    if (rc == 0) rc = plan_inplace(p, out, err);
    if (rc == 0) rc = place_groups(p, out, err);
    if (rc == 0) {
        out->lower_bound = compute_lower_bound(p, out, err);
        if (out->lower_bound < 0) rc = -1;
    }
    for (int b = 0; rc == 0 && b < p->n_bufs; b++) {
        if (p->bufs[b].kind == BUF_INPUT)
            out->input_bytes += out->bytes[b];
        else
            out->temp_bytes += out->bytes[b];
    }
    if (rc) memplan_free(out);
    return rc;
}

void memplan_free(MemPlan *m) {
    free(m->offset);
    free(m->bytes);
    free(m->first);
    free(m->last);
    free(m->inplace);
    memset(m, 0, sizeof *m);
}

bool memplan_overlap(const MemPlan *m, int a, int b) {
    return m->offset[a] < m->offset[b] + m->bytes[b] && m->offset[b] < m->offset[a] + m->bytes[a];
}
