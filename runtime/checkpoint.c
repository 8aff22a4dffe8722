/* Training checkpoints (see checkpoint.h). */
#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

/* Whether INPUT node n of a graph is stored in checkpoints for this use. The step counter is
 * derived from "step", so it is not stored. */
static bool stored(const Node *n, CheckpointUse use) {
    if (n->op != OP_INPUT) return false;
    if (n->input_kind == INPUT_PARAM) return true;
    return use == CHECKPOINT_TRAIN && n->input_kind == INPUT_STATE &&
           strcmp(n->name, "adam/step") != 0;
}

int tensor_all_finite(const Tensor *t) {
    int64_t n = shape_numel(t->shape);
    if (t->dtype == TENSOR_F32) {
        const float *v = t->data;
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(v[i])) return 0;
    } else if (t->dtype == TENSOR_F64) {
        const double *v = t->data;
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(v[i])) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Saving                                                                                      */

/* Copies the stored tensors of g from state into out: parameters first, then the first moments,
 * then the rest of the optimizer state, so a file lists them in a readable order. */
static int collect(const Graph *g, const TensorSet *state, const char *path, TensorSet *out,
                   MamlError *err) {
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < g->n_nodes; i++) {
            const Node *n = &g->nodes[i];
            if (!stored(n, CHECKPOINT_TRAIN)) continue;
            bool is_m = strncmp(n->name, "adam/m/", 7) == 0;
            int want = n->input_kind == INPUT_PARAM ? 0 : is_m ? 1 : 2;
            if (want != pass) continue;
            const Tensor *t = tensorset_find(state, n->name);
            if (!t) return maml_fail(err, "%s: cannot save: no tensor '%s'", path, n->name);
            if (!tensor_all_finite(t))
                return maml_fail(err, "%s: refusing to save tensor '%s': it holds NaN or Inf", path,
                                 n->name);
            if (!tensorset_add(out, t->name, t->dtype, t->shape, t->data, err)) return -1;
        }
    return 0;
}

static int put_meta(TensorSet *out, const CheckpointMeta *meta, MamlError *err) {
    char step[32], seed[32], rng[80], secs[40];
    snprintf(step, sizeof step, "%ld", meta->step);
    snprintf(seed, sizeof seed, "%" PRIu64, meta->seed);
    snprintf(rng, sizeof rng, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64,
             meta->data_rng.s[0], meta->data_rng.s[1], meta->data_rng.s[2], meta->data_rng.s[3]);
    snprintf(secs, sizeof secs, "%.3f", meta->seconds);
    const char *kv[][2] = {{"mamlc_checkpoint", CHECKPOINT_FORMAT},
                           {"step", step},
                           {"seed", seed},
                           {"data_rng", rng},
                           {"seconds", secs},
                           {"graph", meta->graph}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (tensorset_set_meta(out, kv[i][0], kv[i][1], err)) return -1;
    return 0;
}

int checkpoint_save(const char *path, const Graph *g, const TensorSet *state,
                    const CheckpointMeta *meta, MamlError *err) {
    TensorSet out;
    tensorset_init(&out);
    int rc = collect(g, state, path, &out, err);
    if (rc == 0) rc = put_meta(&out, meta, err);
    if (rc == 0) rc = safetensors_write(path, &out, err);
    tensorset_free(&out);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                     */

static int parse_long(const char *s, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0) return -1;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* 64 hex digits, four words, not all zero (xoshiro's one invalid state). */
static int parse_rng(const char *s, Rng *out) {
    if (strlen(s) != 64) return -1;
    uint64_t any = 0;
    for (int w = 0; w < 4; w++) {
        char word[17];
        memcpy(word, s + 16 * w, 16);
        word[16] = 0;
        char *end;
        if (strspn(word, "0123456789abcdefABCDEF") != 16) return -1;
        out->s[w] = (uint64_t)strtoull(word, &end, 16);
        any |= out->s[w];
    }
    return any ? 0 : -1;
}

static int parse_seconds(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < 0) return -1;
    *out = v;
    return 0;
}

/* Reads one metadata key with its parser; `required` keys must be present. */
static int meta_field(const char *path, const TensorSet *file, const char *key, bool required,
                      int (*parse)(const char *, void *), void *out, const char *expect,
                      MamlError *err) {
    const char *v = tensorset_get_meta(file, key);
    if (!v) {
        if (!required) return 0;
        return maml_fail(err, "%s: __metadata__ lacks '%s' (not a mamlc training checkpoint)", path,
                         key);
    }
    if (parse(v, out))
        return maml_fail(err, "%s: __metadata__ '%s' is '%.64s', expected %s", path, key, v,
                         expect);
    return 0;
}

/* Adapters giving the parsers one signature. */
static int p_long(const char *s, void *o) {
    return parse_long(s, o);
}
static int p_u64(const char *s, void *o) {
    return parse_u64(s, o);
}
static int p_rng(const char *s, void *o) {
    return parse_rng(s, o);
}
static int p_secs(const char *s, void *o) {
    return parse_seconds(s, o);
}

static int check_meta(const char *path, const TensorSet *file, CheckpointUse use, CheckpointMeta *m,
                      MamlError *err) {
    memset(m, 0, sizeof *m);
    bool req = use == CHECKPOINT_TRAIN;
    const char *fmt = tensorset_get_meta(file, "mamlc_checkpoint");
    if (req && !fmt)
        return maml_fail(err,
                         "%s: __metadata__ lacks 'mamlc_checkpoint' (not a mamlc training "
                         "checkpoint)",
                         path);
    if (fmt && strcmp(fmt, CHECKPOINT_FORMAT) != 0)
        return maml_fail(err, "%s: checkpoint format '%.32s' is not supported (expected '%s')",
                         path, fmt, CHECKPOINT_FORMAT);
    if (meta_field(path, file, "step", req, p_long, &m->step, "a non-negative integer", err) ||
        meta_field(path, file, "seed", req, p_u64, &m->seed, "an unsigned integer", err) ||
        meta_field(path, file, "data_rng", req, p_rng, &m->data_rng, "64 hex digits, not all zero",
                   err) ||
        meta_field(path, file, "seconds", false, p_secs, &m->seconds, "a non-negative number", err))
        return -1;
    m->complete = tensorset_get_meta(file, "step") && tensorset_get_meta(file, "seed") &&
                  tensorset_get_meta(file, "data_rng");
    const char *graph = tensorset_get_meta(file, "graph");
    snprintf(m->graph, sizeof m->graph, "%s", graph ? graph : "");
    return 0;
}

static int check_tensor(const char *path, const Node *n, const Tensor *t, MamlError *err) {
    char want[96], found[96];
    if (!t) return maml_fail(err, "%s: missing tensor '%s'", path, n->name);
    if (t->dtype != TENSOR_F32 && t->dtype != TENSOR_F64)
        return maml_fail(err, "%s: tensor '%s' has dtype %s, expected F32 or F64", path, n->name,
                         tensor_dtype_name(t->dtype));
    if (!shape_equal(t->shape, n->shape))
        return maml_fail(err, "%s: tensor '%s': expected shape %s, found %s", path, n->name,
                         shape_str(n->shape, want, sizeof want),
                         shape_str(t->shape, found, sizeof found));
    if (!tensor_all_finite(t))
        return maml_fail(err, "%s: tensor '%s' holds NaN or Inf", path, n->name);
    return 0;
}

static int check_tensors(const char *path, const Graph *g, CheckpointUse use, const TensorSet *file,
                         MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (stored(n, use) && check_tensor(path, n, tensorset_find(file, n->name), err)) return -1;
    }
    if (use != CHECKPOINT_TRAIN) return 0;
    for (int i = 0; i < file->n; i++) {
        int node = graph_find_input(g, file->items[i].name);
        if (node < 0 || !stored(&g->nodes[node], use))
            return maml_fail(err,
                             "%s: unexpected tensor '%s' (not a parameter or optimizer "
                             "state of this graph)",
                             path, file->items[i].name);
    }
    return 0;
}

/* Adds tensor t to into as F32 (converting F64). */
static int add_f32(TensorSet *into, const Tensor *t, MamlError *err) {
    if (t->dtype == TENSOR_F32)
        return tensorset_add(into, t->name, t->dtype, t->shape, t->data, err) ? 0 : -1;
    Tensor *c = tensorset_add(into, t->name, TENSOR_F32, t->shape, NULL, err);
    if (!c) return -1;
    int64_t n = shape_numel(t->shape);
    for (int64_t i = 0; i < n; i++) ((float *)c->data)[i] = (float)((const double *)t->data)[i];
    return 0;
}

static int hand_over(const Graph *g, CheckpointUse use, const TensorSet *file, TensorSet *into,
                     MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (!stored(n, use)) continue;
        if (add_f32(into, tensorset_find(file, n->name), err)) return -1;
    }
    return 0;
}

int checkpoint_load(const char *path, const Graph *g, CheckpointUse use, TensorSet *into,
                    CheckpointMeta *meta, MamlError *err) {
    TensorSet file;
    tensorset_init(&file);
    CheckpointMeta m;
    int rc = safetensors_read(path, &file, err);
    if (rc == 0) rc = check_meta(path, &file, use, &m, err);
    if (rc == 0) rc = check_tensors(path, g, use, &file, err);
    if (rc == 0) rc = hand_over(g, use, &file, into, err);
    if (rc) {
        tensorset_free(into);
        tensorset_init(into);
    } else if (meta) {
        *meta = m;
    }
    tensorset_free(&file);
    return rc;
}
