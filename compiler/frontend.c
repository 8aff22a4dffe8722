/* The YAML front end: graph file -> GraphSpec.
 *
 * A graph file is one YAML mapping with exactly the sections model, maml and data:
 *
 *   model:
 *     input: [1, 28, 28]          # one example: [C, H, W] or [features]
 *     loss: cross_entropy         # cross_entropy | mse
 *     blocks:                     # optional: reusable layer sequences
 *       conv_block:
 *         args: {channels: 64}    # arguments and their defaults (~: must be passed)
 *         layers:
 *           - {conv2d: {name: conv2d, out_channels: $channels, kernel: 3, padding: 1}}
 *           - {batch_norm: {name: bn}}
 *           - relu
 *           - {max_pool2d: {kernel: 2}}
 *     layers:
 *       - {block: conv_block, name: conv1}        # -> conv1.conv2d.weight, conv1.bn.bias, ...
 *       - {block: conv_block, name: conv2, args: {channels: 64}}
 *       - flatten
 *       - {linear: {name: logits, out_features: $maml.n_way}}
 *   maml:
 *     n_way: 5                    # n_way, k_shot, q_query, meta_batch: required
 *     k_shot: 1
 *     q_query: 1                  # queries per class
 *     meta_batch: 32
 *     inner: {steps: 1, lr: 0.04, first_order: false, adapt: all, reduction: mean}
 *     outer: {optimizer: adam, lr: 0.001}
 *     eval:  {inner_steps: 3, tasks: 600}
 *   data: {dataset: omniglot, split: background_evaluation, seed: 1206}
 *
 * Layers. A layer is a kind name (relu, flatten, global_avg_pool), a one-key mapping
 * {KIND: {settings}}, or a block instance {block: NAME, name: N, args: {...}} (name optional).
 * Settings, defaults in parentheses, everything else required:
 *   conv2d      name, out_channels, kernel, stride (1), padding (0), bias (true)
 *   batch_norm  name, scale (true), shift (true), eps (1e-5); training-mode batch statistics
 *   max_pool2d  kernel, stride (= kernel)
 *   linear      name, out_features, in_features (inferred; checked when given), bias (true)
 * Names are identifiers; a named block instance prefixes its layers' names with "NAME.", which
 * gives PyTorch's module paths; parameters are NAME.weight / NAME.bias in PyTorch's layouts
 * (batch norm: weight = scale, bias = shift).
 *
 * maml.inner: steps and lr required; lr may be `learnable` (per-layer, per-step rates, initial
 * value lr_init); first_order (false); adapt (all, or a list of fnmatch globs over parameter
 * names, each of which must match something); reduction (mean | sum | sum_over_k_shot).
 * maml.outer: optimizer (adam | sgd) and lr required; adam's beta1 (0.9), beta2 (0.999),
 * eps (1e-8). maml.eval: inner_steps and tasks required; lr (= inner lr).
 * data: dataset (omniglot | sinusoid) and seed required. Omniglot: split
 * (background_evaluation | shuffled_characters, the latter with train_characters), rotations
 * ([0]; each of 0/90/180/270 listed is a class of its own), image_size (28), resize
 * (nearest | lanczos; nearest), invert (false). Sinusoid: amplitude ([0.1, 5.0]),
 * phase ([0, pi]), x_range ([-5, 5]).
 *
 * References: a plain scalar "$x" is, inside a block, the block argument x; otherwise (or when
 * x is no argument) the value at dotted path x from the document root ("$maml.n_way"). A
 * reference may lead to another, 16 in a row at most; one that leads back to itself is a cycle.
 * Scalars: plain scalars are typed by the YAML 1.2 core schema (`yes` is a string, `1e-5` a
 * float); quoted scalars are strings. Unknown keys, duplicate keys and YAML aliases are errors.
 * Overrides: `--set a.b.c=VALUE` parses VALUE as YAML and puts it at that path of the parsed
 * document before anything is interpreted, so overrides pass the same checks as the file; an
 * unknown path is an "unknown setting".
 * Limits: 1 MiB files, 32 nesting levels, 64 layers after expansion, 16 nested blocks, reference
 * chains of 16, sizes up to 65536.
 *
 * The document is read into a tree whose nodes keep their source marks (ynode.h), so every error
 * carries file:line:column (overrides: "--set KEY=VALUE"). */
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"
#include "ynode.h"

/* Limits that keep hostile or runaway inputs from exhausting memory or stack (the file's size
 * and nesting: ynode.h). */
#define SPEC_MAX_LAYERS 64      /* layers after block expansion */
#define SPEC_MAX_BLOCK_DEPTH 16 /* nested block instances */
#define SPEC_MAX_DIM 65536      /* any size or count in the file */
#define SPEC_MAX_REF_HOPS 16    /* $a -> $b -> ... references in a row */
#define OMNIGLOT_DRAWINGS 20    /* drawings per Omniglot character */
#define OMNIGLOT_CHARACTERS 1623
#define OMNIGLOT_BACKGROUND 964
#define OMNIGLOT_EVALUATION 659
#define OMNIGLOT_PNG_SIZE 105

/* ---------------------------------------------------------------------------------------
 * Names */

/* dst = a b c; false when that does not fit in size bytes. */
static bool concat3(char *dst, size_t size, const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    if (la + lb + lc >= size) return false;
    memcpy(dst, a, la);
    memcpy(dst + la, b, lb);
    memcpy(dst + la + lb, c, lc + 1);
    return true;
}

static bool is_identifier(const char *s) {
    if (!*s || (*s >= '0' && *s <= '9')) return false;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") ==
           strlen(s);
}

/* ---------------------------------------------------------------------------------------
 * Interpretation context, references and typed values */

/* The arguments of one block instance: names and the (already resolved) values. */
typedef struct {
    const char *block;
    const YNode *const *names;
    const YNode **values;
    int n;
} Scope;

typedef struct {
    const char *file;
    YNode *root;
    const YNode *blocks;
    GraphSpec *spec;
    MamlError *err;
    /* nodes remembered for checks that span sections */
    const YNode *input, *loss, *n_way, *q_query;
    const YNode **globs; /* maml.inner.adapt patterns, parallel to spec->maml.inner.adapt */
} Ctx;

static bool is_reference(const YNode *n) {
    return n->kind == Y_SCALAR && !n->quoted && n->text[0] == '$';
}

static bool is_ref_path(const char *p) {
    char buf[SPEC_NAME_MAX];
    size_t len = strlen(p);
    if (len >= sizeof buf) return false;
    memcpy(buf, p, len + 1);
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save))
        if (!is_identifier(tok)) return false;
    return len && p[0] != '.' && p[len - 1] != '.' && !strstr(p, "..");
}

/* Looks up a dotted path ("maml.n_way") from the document root. */
static const YNode *doc_lookup(const YNode *root, const char *path) {
    char buf[SPEC_NAME_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    const YNode *node = root;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok && node; tok = strtok_r(NULL, ".", &save))
        node = ynode_find(node, tok);
    return node;
}

static const YNode *scope_find(const Scope *s, const char *name) {
    for (int i = 0; s && i < s->n; i++)
        if (strcmp(s->names[i]->text, name) == 0) return s->values[i];
    return NULL;
}

/* "$a -> $b -> $c" for the first n references of chain, then last. */
static void chain_text(const YNode *const *chain, int n, const YNode *last, char *buf,
                       size_t size) {
    buf[0] = '\0';
    for (int k = 0; k < n; k++)
        snprintf(buf + strlen(buf), size - strlen(buf), "%s -> ", chain[k]->text);
    snprintf(buf + strlen(buf), size - strlen(buf), "%s", last->text);
}

/* Whether following chain[hops] to target goes round in a circle. Only the first reference is
 * looked up among the block arguments (scoped); every later one from the document root, so
 * reaching a later reference again repeats the chain from there, and so does reaching the first
 * when it was not scoped. */
static bool closes_cycle(const YNode *const *chain, int hops, const YNode *target, bool scoped) {
    for (int k = scoped ? 1 : 0; k <= hops; k++)
        if (chain[k] == target) return true;
    return false;
}

/* Follows references from n (the value of setting `key`) until a value that is not one. */
static int deref(const Ctx *c, const Scope *s, const YNode *n, const char *key, const YNode **out) {
    const YNode *chain[SPEC_MAX_REF_HOPS];
    char text[MAML_ERROR_MAX / 2];
    bool scoped = false;
    for (int hops = 0; is_reference(n); hops++) {
        const char *name = n->text + 1;
        if (hops == SPEC_MAX_REF_HOPS)
            return maml_fail_at(c->err, chain[0]->loc,
                                "'%s': reference chain deeper than %d, starting at '%s'", key,
                                SPEC_MAX_REF_HOPS, chain[0]->text);
        if (!is_ref_path(name))
            return maml_fail_at(c->err, n->loc,
                                "malformed reference '%s' (expected $NAME or $dotted.path)",
                                n->text);
        const YNode *target = hops == 0 ? scope_find(s, name) : NULL;
        scoped |= target != NULL;
        if (!target) target = doc_lookup(c->root, name);
        if (!target) return maml_fail_at(c->err, n->loc, "undefined reference '%s'", n->text);
        chain[hops] = n;
        if (closes_cycle(chain, hops, target, scoped)) {
            chain_text(chain, hops + 1, target, text, sizeof text);
            return maml_fail_at(c->err, chain[0]->loc, "'%s': cyclic reference %s", key, text);
        }
        n = target;
    }
    *out = n;
    return 0;
}

/* Errors about a value point at the value, which is where the user has to change something;
 * when the value came through a reference, the message names the reference too. Like maml_fail,
 * value_error is a macro whose value, -1, is in sight (compiler/error.h says why). */
#define value_error(...) (value_error_set(__VA_ARGS__), maml_failure())

static void value_error_set(const Ctx *c, const YNode *raw, const YNode *v, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void value_error_set(const Ctx *c, const YNode *raw, const YNode *v, const char *fmt, ...) {
    char msg[MAML_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (raw == v)
        maml_error_set_at(c->err, v->loc, "%s", msg);
    else if (raw->loc.line == 0)
        maml_error_set_at(c->err, v->loc, "%s (via %s)", msg, raw->text);
    else
        maml_error_set_at(c->err, v->loc, "%s (via %s at line %d)", msg, raw->text, raw->loc.line);
}

static int type_error(const Ctx *c, const YNode *raw, const YNode *v, const char *key,
                      const char *want) {
    char buf[96];
    return value_error(c, raw, v, "'%s' must be %s, got %s", key, want,
                       ynode_describe(v, buf, sizeof buf));
}

static int as_int(const Ctx *c, const Scope *s, const YNode *raw, const char *key, int64_t lo,
                  int64_t hi, int64_t *out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    if (v->kind != Y_SCALAR || ynode_scalar_type(v) != S_INT)
        return type_error(c, raw, v, key, "an integer");
    const char *t = v->text;
    int base = !strncmp(t, "0o", 2) ? 8 : !strncmp(t, "0x", 2) ? 16 : 10;
    errno = 0;
    long long x = strtoll(base == 10 ? t : t + 2, NULL, base);
    if (errno == ERANGE) return value_error(c, raw, v, "'%s' is out of range: %s", key, t);
    if (x < lo && lo == 1)
        return value_error(c, raw, v, "'%s' must be a positive integer, got %lld", key, x);
    if (x < lo && lo == 0)
        return value_error(c, raw, v, "'%s' must not be negative, got %lld", key, x);
    if (x < lo || x > hi)
        return value_error(c, raw, v, "'%s' must be between %lld and %lld, got %lld", key,
                           (long long)lo, (long long)hi, x);
    *out = x;
    return 0;
}

typedef enum { NUM_POSITIVE, NUM_NONNEG, NUM_FRACTION, NUM_ANY } NumRule;

static int as_number(const Ctx *c, const Scope *s, const YNode *raw, const char *key, NumRule rule,
                     double *out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    ScalarType t = v->kind == Y_SCALAR ? ynode_scalar_type(v) : S_STR;
    if (t != S_INT && t != S_FLOAT) return type_error(c, raw, v, key, "a number");
    const char *digits = v->text + (v->text[0] == '-' || v->text[0] == '+');
    double x = strtod(v->text, NULL);
    if (!strncmp(v->text, "0o", 2)) x = (double)strtoll(v->text + 2, NULL, 8);
    if (digits[0] == '.' &&
        (digits[1] == 'i' || digits[1] == 'I' || digits[1] == 'n' || digits[1] == 'N'))
        x = INFINITY; /* .inf and .nan, which strtod does not read: both are refused below */
    if (!isfinite(x))
        return value_error(c, raw, v, "'%s' must be a finite number, got %s", key, v->text);
    if (rule == NUM_POSITIVE && !(x > 0))
        return value_error(c, raw, v, "'%s' must be positive, got %s", key, v->text);
    if (rule == NUM_NONNEG && x < 0)
        return value_error(c, raw, v, "'%s' must not be negative, got %s", key, v->text);
    if (rule == NUM_FRACTION && !(x >= 0 && x < 1))
        return value_error(c, raw, v, "'%s' must be in [0, 1), got %s", key, v->text);
    *out = x;
    return 0;
}

static int as_bool(const Ctx *c, const Scope *s, const YNode *raw, const char *key, bool *out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    if (v->kind != Y_SCALAR || ynode_scalar_type(v) != S_BOOL)
        return type_error(c, raw, v, key, "true or false");
    *out = v->text[0] == 't' || v->text[0] == 'T';
    return 0;
}

static int as_string(const Ctx *c, const Scope *s, const YNode *raw, const char *key,
                     const char **out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    if (v->kind != Y_SCALAR || ynode_scalar_type(v) != S_STR)
        return type_error(c, raw, v, key, "a string");
    *out = v->text;
    return 0;
}

/* A string from a fixed set; names are listed in the message. */
static int as_enum(const Ctx *c, const Scope *s, const YNode *raw, const char *key,
                   const char *const *names, int n, int *out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    for (int i = 0; v->kind == Y_SCALAR && i < n; i++)
        if (strcmp(v->text, names[i]) == 0) return *out = i, 0;
    char list[256] = "", buf[96];
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
                 i ? (i == n - 1 ? " or " : ", ") : "", names[i]);
    return value_error(c, raw, v, "'%s' must be %s, got %s", key, list,
                       ynode_describe(v, buf, sizeof buf));
}

static int as_map(const Ctx *c, const Scope *s, const YNode *raw, const char *key,
                  const YNode **out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    if (v->kind != Y_MAP) return type_error(c, raw, v, key, "a mapping");
    *out = v;
    return 0;
}

static int as_seq(const Ctx *c, const Scope *s, const YNode *raw, const char *key,
                  const YNode **out) {
    const YNode *v = NULL;
    if (deref(c, s, raw, key, &v)) return -1;
    if (v->kind != Y_SEQ) return type_error(c, raw, v, key, "a sequence");
    *out = v;
    return 0;
}

/* Rejects keys of map that are not in allowed (a NULL-terminated list). */
static int check_keys(const Ctx *c, const YNode *map, const char *where,
                      const char *const *allowed) {
    for (int i = 0; i < map->n; i++) {
        const YNode *k = map->keys[i];
        bool ok = false;
        for (int j = 0; allowed[j] && !ok; j++) ok = strcmp(k->text, allowed[j]) == 0;
        if (ok) continue;
        if (k->override_path)
            return maml_fail_at(c->err, k->loc, "unknown setting '%s'", k->override_path);
        char list[512] = "";
        for (int j = 0; allowed[j]; j++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                     allowed[j]);
        if (!allowed[0])
            return maml_fail_at(c->err, k->loc, "unknown key '%s': a %s takes no settings", k->text,
                                where);
        return maml_fail_at(c->err, k->loc, "unknown key '%s' in %s (expected %s)", k->text, where,
                            list);
    }
    return 0;
}

/* Where key is written in map (for errors about the key itself rather than its value). */
static SourceLoc key_loc(const YNode *map, const char *key) {
    int i = ynode_index(map, key);
    return i >= 0 ? map->keys[i]->loc : map->loc;
}

static int require(const Ctx *c, const YNode *map, const char *where, const char *key,
                   const YNode **out) {
    *out = ynode_find(map, key);
    if (*out) return 0;
    return maml_fail_at(c->err, map->loc, "missing '%s' in %s", key, where);
}

/* Integer setting in [lo, SPEC_MAX_DIM]; required or, with `optional`, left alone when absent. */
static int get_int(const Ctx *c, const Scope *s, const YNode *map, const char *where,
                   const char *key, int lo, bool optional, int *out) {
    const YNode *raw = ynode_find(map, key);
    if (!raw && optional) return 0;
    int64_t x;
    if ((!raw && require(c, map, where, key, &raw)) || as_int(c, s, raw, key, lo, SPEC_MAX_DIM, &x))
        return -1;
    *out = (int)x;
    return 0;
}

static int get_number(const Ctx *c, const Scope *s, const YNode *map, const char *where,
                      const char *key, NumRule rule, bool optional, double *out) {
    const YNode *raw = ynode_find(map, key);
    if (!raw && optional) return 0;
    if (!raw && require(c, map, where, key, &raw)) return -1;
    return as_number(c, s, raw, key, rule, out);
}

static int get_bool(const Ctx *c, const Scope *s, const YNode *map, const char *key, bool *out) {
    const YNode *raw = ynode_find(map, key);
    return raw ? as_bool(c, s, raw, key, out) : 0;
}

static int get_enum(const Ctx *c, const YNode *map, const char *where, const char *key,
                    const char *const *names, int n, bool optional, int *out) {
    const YNode *raw = ynode_find(map, key);
    if (!raw && optional) return 0;
    if (!raw && require(c, map, where, key, &raw)) return -1;
    return as_enum(c, NULL, raw, key, names, n, out);
}

/* ---------------------------------------------------------------------------------------
 * --set overrides */

/* Returns the child mapping `key` (reached by prefix) of map, adding an empty one when absent;
 * a key added here carries the whole setting's path, for "unknown setting" messages. */
static int override_child(YNode *map, const char *key, const char *prefix, const char *path,
                          const char *label, YNode **out, MamlError *err) {
    SourceLoc loc = {label, 0, 0};
    YNode *child = (YNode *)ynode_find(map, key);
    if (child) {
        if (child->kind != Y_MAP)
            return maml_fail_at(err, loc, "unknown setting '%s' ('%s' is a value, not a mapping)",
                                path, prefix);
        *out = child;
        return 0;
    }
    YNode *k = ynode_new(Y_SCALAR, loc, err), *v = ynode_new(Y_MAP, loc, err);
    if (k && v && (k->text = maml_strdup(key, err)) &&
        (k->override_path = maml_strdup(path, err))) {
        if (ynode_append(map, k, v, err)) return -1;
        *out = v;
        return 0;
    }
    ynode_free(k);
    ynode_free(v);
    return -1;
}

/* Puts value under key in map, replacing an existing value. Takes ownership of value. */
static int override_put(YNode *map, const char *key, const char *path, YNode *value,
                        MamlError *err) {
    int i = ynode_index(map, key);
    if (i >= 0) {
        ynode_free(map->items[i]);
        map->items[i] = value;
        return 0;
    }
    YNode *k = ynode_new(Y_SCALAR, value->loc, err);
    if (k) k->text = maml_strdup(key, err), k->override_path = maml_strdup(path, err);
    if (!k || !k->text || !k->override_path) return ynode_free(k), ynode_free(value), -1;
    return ynode_append(map, k, value, err);
}

static int parse_override_value(const char *text, const char *label, YNode **out, MamlError *err) {
    if (ynode_parse(text, strlen(text), label, true, out, err)) return -1;
    if (*out) return 0;
    /* an empty value is YAML's null, which the type checks then reject where it matters */
    *out = ynode_new(Y_SCALAR, (SourceLoc){label, 0, 0}, err);
    if (*out && !((*out)->text = maml_strdup("", err))) return ynode_free(*out), *out = NULL, -1;
    return *out ? 0 : -1;
}

static int apply_override(YNode *root, const char *setting, const char *label, MamlError *err) {
    SourceLoc loc = {label, 0, 0};
    const char *eq = strchr(setting, '=');
    char path[SPEC_NAME_MAX];
    if (!eq || eq == setting) return maml_fail_at(err, loc, "expected KEY=VALUE");
    if ((size_t)(eq - setting) >= sizeof path)
        return maml_fail_at(err, loc, "setting path too long");
    memcpy(path, setting, (size_t)(eq - setting));
    path[eq - setting] = '\0';
    if (!is_ref_path(path))
        return maml_fail_at(
            err, loc,
            "malformed setting path '%s' (expected dotted key names such as maml.inner.lr)", path);
    YNode *value;
    if (parse_override_value(eq + 1, label, &value, err)) return -1;
    YNode *map = root;
    char walk[SPEC_NAME_MAX];
    snprintf(walk, sizeof walk, "%s", path);
    char *key = walk;
    for (char *dot = strchr(key, '.'); dot; dot = strchr(key, '.')) {
        *dot = '\0';
        /* the path so far names the child in messages: "maml.n_way" */
        char prefix[SPEC_NAME_MAX];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(dot - walk), path);
        if (override_child(map, key, prefix, path, label, &map, err)) return ynode_free(value), -1;
        key = dot + 1;
    }
    return override_put(map, key, path, value, err);
}

/* ---------------------------------------------------------------------------------------
 * The model: layers and blocks */

static const char *const kind_names[] = {"conv2d",          "batch_norm", "relu",  "max_pool2d",
                                         "global_avg_pool", "flatten",    "linear"};
#define N_KINDS ((int)(sizeof kind_names / sizeof *kind_names))

static const char *const conv_keys[] = {"name",    "out_channels", "kernel", "stride",
                                        "padding", "bias",         NULL};
static const char *const bn_keys[] = {"name", "scale", "shift", "eps", NULL};
static const char *const pool_keys[] = {"kernel", "stride", NULL};
static const char *const linear_keys[] = {"name", "out_features", "in_features", "bias", NULL};
static const char *const no_keys[] = {NULL};

static const char *const *const kind_keys[] = {conv_keys, bn_keys, no_keys,    pool_keys,
                                               no_keys,   no_keys, linear_keys};

static int find_kind(const char *name) {
    for (int k = 0; k < N_KINDS; k++)
        if (strcmp(name, kind_names[k]) == 0) return k;
    return -1;
}

static int unknown_kind(const Ctx *c, const YNode *at, const char *name) {
    return maml_fail_at(c->err, at->loc,
                        "unknown layer kind '%s' (expected conv2d, batch_norm, relu, max_pool2d, "
                        "global_avg_pool, flatten, linear or {block: NAME})",
                        name);
}

/* True when module path a is b or lies inside it ("b1.conv" inside "b1"). */
static bool path_within(const char *a, const char *b) {
    size_t n = strlen(b);
    return n && strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '.');
}

/* A new module path must not clash with an earlier layer's, or parameter names would. */
static int check_new_name(const Ctx *c, SourceLoc at, const char *name) {
    for (int i = 0; i < c->spec->n_layers; i++) {
        const LayerSpec *other = &c->spec->layers[i];
        if (path_within(other->name, name) || path_within(name, other->name))
            return maml_fail_at(
                c->err, at,
                "layer name '%s' clashes with layer '%s' (line %d): parameter names must be unique",
                name, other->name, other->loc.line);
    }
    return 0;
}

/* Layer name: an identifier, prefixed by the enclosing block instances. */
static int read_layer_name(const Ctx *c, const Scope *s, const YNode *set, const char *where,
                           const char *prefix, LayerSpec *l) {
    const YNode *raw = NULL;
    const char *name;
    if (require(c, set, where, "name", &raw) || as_string(c, s, raw, "name", &name)) return -1;
    if (!is_identifier(name))
        return maml_fail_at(c->err, raw->loc,
                            "layer name '%s' must be an identifier (letters, digits, _)", name);
    if (!concat3(l->name, sizeof l->name, prefix, name, ""))
        return maml_fail_at(c->err, raw->loc, "layer name '%s%s' is longer than %d characters",
                            prefix, name, SPEC_NAME_MAX - 1);
    return check_new_name(c, raw->loc, l->name);
}

static int read_conv2d(const Ctx *c, const Scope *s, const YNode *set, const char *w,
                       LayerSpec *l) {
    l->stride = 1, l->padding = 0, l->bias = true;
    if (get_int(c, s, set, w, "out_channels", 1, false, &l->out_channels) ||
        get_int(c, s, set, w, "kernel", 1, false, &l->kernel) ||
        get_int(c, s, set, w, "stride", 1, true, &l->stride) ||
        get_int(c, s, set, w, "padding", 0, true, &l->padding) ||
        get_bool(c, s, set, "bias", &l->bias))
        return -1;
    return 0;
}

static int read_batch_norm(const Ctx *c, const Scope *s, const YNode *set, const char *w,
                           LayerSpec *l) {
    l->scale = true, l->shift = true, l->eps = 1e-5; /* PyTorch's BatchNorm2d defaults */
    if (get_bool(c, s, set, "scale", &l->scale) || get_bool(c, s, set, "shift", &l->shift) ||
        get_number(c, s, set, w, "eps", NUM_POSITIVE, true, &l->eps))
        return -1;
    return 0;
}

static int read_max_pool2d(const Ctx *c, const Scope *s, const YNode *set, const char *w,
                           LayerSpec *l) {
    if (get_int(c, s, set, w, "kernel", 1, false, &l->kernel)) return -1;
    l->stride = l->kernel; /* PyTorch's default */
    return get_int(c, s, set, w, "stride", 1, true, &l->stride);
}

static int read_linear(const Ctx *c, const Scope *s, const YNode *set, const char *w,
                       LayerSpec *l) {
    l->bias = true;
    if (get_int(c, s, set, w, "out_features", 1, false, &l->out_features) ||
        get_int(c, s, set, w, "in_features", 1, true, &l->in_features) ||
        get_bool(c, s, set, "bias", &l->bias))
        return -1;
    return 0;
}

/* Appends one layer of the given kind; set is its settings mapping (NULL: none). */
static int add_layer(Ctx *c, const Scope *s, int kind, const YNode *at, const YNode *set,
                     const char *prefix) {
    GraphSpec *spec = c->spec;
    if (spec->n_layers == SPEC_MAX_LAYERS)
        return maml_fail_at(c->err, at->loc, "more than %d layers after block expansion",
                            SPEC_MAX_LAYERS);
    LayerSpec *l = &spec->layers[spec->n_layers];
    memset(l, 0, sizeof *l);
    l->kind = (LayerKind)kind;
    l->loc = at->loc;
    char where[64];
    snprintf(where, sizeof where, "%s layer", kind_names[kind]);
    YNode none = {.kind = Y_MAP, .loc = at->loc};
    if (!set) set = &none;
    bool named =
        kind == LAYER_CONV2D || kind == LAYER_BATCH_NORM || kind == LAYER_LINEAR; /* has params */
    if (check_keys(c, set, where, kind_keys[kind]) ||
        (named && read_layer_name(c, s, set, where, prefix, l)))
        return -1;
    int rc = 0;
    switch (l->kind) {
    case LAYER_CONV2D:
        rc = read_conv2d(c, s, set, where, l);
        break;
    case LAYER_BATCH_NORM:
        rc = read_batch_norm(c, s, set, where, l);
        break;
    case LAYER_MAX_POOL2D:
        rc = read_max_pool2d(c, s, set, where, l);
        break;
    case LAYER_LINEAR:
        rc = read_linear(c, s, set, where, l);
        break;
    default:
        break;
    }
    if (rc) return -1;
    spec->n_layers++;
    return 0;
}

static int expand_list(Ctx *c, const Scope *s, const YNode *seq, const char *prefix, int depth);

static int find_block(const Ctx *c, const YNode *name_node, const char *name, const YNode **def) {
    *def = ynode_find(c->blocks, name);
    if (*def) return 0;
    return maml_fail_at(c->err, name_node->loc, "unknown block '%s'", name);
}

/* Binds a block's arguments: its defaults, replaced by what the instance passes. */
static int bind_args(const Ctx *c, const Scope *caller, const char *block, const YNode *def,
                     const YNode *inst, const YNode *args, Scope *ns) {
    const YNode *params = ynode_find(def, "args");
    int n = params ? params->n : 0;
    ns->block = block;
    ns->names = params ? (const YNode *const *)params->keys : NULL;
    ns->n = n;
    ns->values = maml_calloc((size_t)n, sizeof *ns->values, c->err);
    if (!ns->values) return -1;
    for (int i = 0; args && i < args->n; i++) {
        int j = ynode_index(params, args->keys[i]->text);
        if (j < 0)
            return maml_fail_at(c->err, args->keys[i]->loc, "block '%s' has no argument '%s'",
                                block, args->keys[i]->text);
        if (deref(c, caller, args->items[i], args->keys[i]->text, &ns->values[j])) return -1;
    }
    for (int j = 0; j < n; j++) {
        if (ns->values[j]) continue;
        const YNode *d = params->items[j];
        if (d->kind == Y_SCALAR && ynode_scalar_type(d) == S_NULL)
            return maml_fail_at(c->err, inst->loc, "block '%s' needs argument '%s'", block,
                                params->keys[j]->text);
        if (deref(c, NULL, d, params->keys[j]->text, &ns->values[j])) return -1;
    }
    return 0;
}

static const char *const instance_keys[] = {"block", "name", "args", NULL};

/* A block's layer list, following a $reference as check_block_def does. The raw node of a
 * referenced list is a scalar with no items: expanding it gave nothing, and blocks of such
 * empty blocks fanned a 2 KB file out into billions of expansions (tests/test_fuzz_regressions.c).
 */
static const YNode *block_layers(const Ctx *c, const YNode *def) {
    const YNode *layers = NULL;
    return as_seq(c, NULL, ynode_find(def, "layers"), "layers", &layers) ? NULL : layers;
}

static int expand_block(Ctx *c, const Scope *s, const YNode *inst, const char *prefix, int depth) {
    const YNode *def, *args = NULL, *raw_name = ynode_find(inst, "name");
    const char *block, *name = "";
    if (check_keys(c, inst, "block instance", instance_keys) ||
        as_string(c, NULL, ynode_find(inst, "block"), "block", &block) ||
        find_block(c, ynode_find(inst, "block"), block, &def))
        return -1;
    if (depth + 1 > SPEC_MAX_BLOCK_DEPTH)
        return maml_fail_at(c->err, inst->loc, "blocks nested deeper than %d levels",
                            SPEC_MAX_BLOCK_DEPTH);
    if (raw_name && as_string(c, s, raw_name, "name", &name)) return -1;
    if (raw_name && !is_identifier(name))
        return maml_fail_at(c->err, raw_name->loc, "block instance name '%s' must be an identifier",
                            name);
    if (ynode_find(inst, "args") && as_map(c, s, ynode_find(inst, "args"), "args", &args))
        return -1;
    char path[SPEC_NAME_MAX], inner[SPEC_NAME_MAX]; /* "conv1" and the prefix "conv1." */
    if (!concat3(path, sizeof path, prefix, name, "") ||
        !concat3(inner, sizeof inner, prefix, name, *name ? "." : ""))
        return maml_fail_at(c->err, inst->loc, "layer names get longer than %d characters",
                            SPEC_NAME_MAX - 1);
    if (*name && check_new_name(c, raw_name->loc, path)) return -1;
    Scope ns = {0};
    int rc = bind_args(c, s, block, def, inst, args, &ns);
    const YNode *layers = rc ? NULL : block_layers(c, def);
    if (!rc) rc = layers ? expand_list(c, &ns, layers, inner, depth + 1) : -1;
    free(ns.values);
    return rc;
}

/* One entry of a layers list: "relu", {conv2d: {...}} or {block: ...}. */
static int expand_item(Ctx *c, const Scope *s, const YNode *item, const char *prefix, int depth) {
    if (item->kind == Y_SCALAR) {
        int kind = find_kind(item->text);
        if (kind < 0) return unknown_kind(c, item, item->text);
        return add_layer(c, s, kind, item, NULL, prefix);
    }
    if (item->kind != Y_MAP || item->n == 0)
        return maml_fail_at(c->err, item->loc,
                            "a layer must be a kind name, {KIND: {settings}} or {block: NAME}");
    if (ynode_index(item, "block") >= 0) return expand_block(c, s, item, prefix, depth);
    int kind = find_kind(item->keys[0]->text);
    if (kind < 0) return unknown_kind(c, item->keys[0], item->keys[0]->text);
    if (item->n > 1)
        return maml_fail_at(
            c->err, item->keys[1]->loc,
            "unexpected key '%s': a layer is {%s: {settings}} with the settings inside",
            item->keys[1]->text, kind_names[kind]);
    const YNode *set = item->items[0];
    if (set->kind == Y_SCALAR && ynode_scalar_type(set) == S_NULL)
        set = NULL;
    else if (set->kind != Y_MAP)
        return type_error(c, set, set, kind_names[kind], "a mapping of settings");
    return add_layer(c, s, kind, item, set, prefix);
}

static int expand_list(Ctx *c, const Scope *s, const YNode *seq, const char *prefix, int depth) {
    for (int i = 0; i < seq->n; i++)
        if (expand_item(c, s, seq->items[i], prefix, depth)) return -1;
    return 0;
}

static const char *const block_keys[] = {"args", "layers", NULL};

/* Checks one block definition's structure: {args: {...}, layers: [non-empty]}. */
static int check_block_def(const Ctx *c, const YNode *name, const YNode *def) {
    char where[SPEC_NAME_MAX + 16];
    const YNode *layers = NULL, *args = NULL;
    snprintf(where, sizeof where, "block '%s'", name->text);
    if (!is_identifier(name->text))
        return maml_fail_at(c->err, name->loc, "block name '%s' must be an identifier", name->text);
    if (def->kind != Y_MAP)
        return type_error(c, def, def, name->text, "a block definition {args, layers}");
    if (check_keys(c, def, where, block_keys) || require(c, def, where, "layers", &layers) ||
        as_seq(c, NULL, layers, "layers", &layers))
        return -1;
    if (layers->n == 0)
        return maml_fail_at(c->err, layers->loc, "block '%s' has no layers", name->text);
    if ((args = ynode_find(def, "args")) && args->kind != Y_MAP)
        return type_error(c, args, args, "args", "a mapping");
    for (int i = 0; args && i < args->n; i++)
        if (!is_identifier(args->keys[i]->text))
            return maml_fail_at(c->err, args->keys[i]->loc,
                                "argument name '%s' must be an identifier", args->keys[i]->text);
    return 0;
}

/* path[0..depth] is the chain of blocks being visited; use names one of them again. */
static int cycle_error(const Ctx *c, const YNode *use, const char **path, int depth) {
    int from = 0;
    while (from < depth && strcmp(path[from], use->text) != 0) from++;
    char cycle[512] = "";
    for (int k = from; k <= depth; k++)
        snprintf(cycle + strlen(cycle), sizeof cycle - strlen(cycle), "%s -> ", path[k]);
    return maml_fail_at(c->err, use->loc, "cyclic block definition: %s%s", cycle, use->text);
}

/* Depth-first search over the blocks each block uses; state: 0 new, 1 on the path, 2 done. */
static int visit_block(const Ctx *c, int b, int *state, const char **path, int depth) {
    const YNode *layers = block_layers(c, c->blocks->items[b]);
    if (!layers) return -1;
    path[depth] = c->blocks->keys[b]->text;
    if (depth + 1 > SPEC_MAX_BLOCK_DEPTH)
        return maml_fail_at(c->err, c->blocks->keys[b]->loc, "blocks nested deeper than %d levels",
                            SPEC_MAX_BLOCK_DEPTH);
    state[b] = 1;
    for (int i = 0; i < layers->n; i++) {
        const YNode *use = ynode_find(layers->items[i], "block");
        if (!use) continue;
        if (use->kind != Y_SCALAR || ynode_scalar_type(use) != S_STR)
            return type_error(c, use, use, "block", "a block name");
        int j = ynode_index(c->blocks, use->text);
        if (j < 0) return maml_fail_at(c->err, use->loc, "unknown block '%s'", use->text);
        if (state[j] == 1) return cycle_error(c, use, path, depth);
        if (state[j] == 0 && visit_block(c, j, state, path, depth + 1)) return -1;
    }
    state[b] = 2;
    return 0;
}

static int check_blocks(Ctx *c, const YNode *model) {
    const YNode *raw = ynode_find(model, "blocks");
    if (!raw) return 0;
    if (as_map(c, NULL, raw, "blocks", &c->blocks)) return -1;
    for (int i = 0; i < c->blocks->n; i++)
        if (check_block_def(c, c->blocks->keys[i], c->blocks->items[i])) return -1;
    int *state = maml_calloc((size_t)c->blocks->n, sizeof *state, c->err);
    if (!state) return -1;
    const char *path[SPEC_MAX_BLOCK_DEPTH + 1];
    int rc = 0;
    for (int i = 0; i < c->blocks->n && !rc; i++)
        if (state[i] == 0) rc = visit_block(c, i, state, path, 0);
    free(state);
    return rc;
}

static int read_input(Ctx *c, const YNode *model) {
    const YNode *raw = NULL, *seq = NULL;
    if (require(c, model, "model", "input", &raw) || as_seq(c, NULL, raw, "input", &seq)) return -1;
    if (seq->n != 1 && seq->n != 3)
        return maml_fail_at(c->err, seq->loc,
                            "'input' must be [C, H, W] or [features], got %d dimensions", seq->n);
    ExampleShape *in = &c->spec->input;
    in->rank = seq->n;
    for (int i = 0; i < seq->n; i++)
        if (as_int(c, NULL, seq->items[i], "input", 1, SPEC_MAX_DIM, &in->dims[i])) return -1;
    c->input = seq;
    return 0;
}

static const char *const model_keys[] = {"input", "loss", "blocks", "layers", NULL};
static const char *const loss_names[] = {"cross_entropy", "mse"};

static int read_model(Ctx *c) {
    const YNode *raw = NULL, *model = NULL, *layers = NULL;
    int loss;
    if (require(c, c->root, "the graph file", "model", &raw) ||
        as_map(c, NULL, raw, "model", &model) || check_keys(c, model, "model", model_keys) ||
        read_input(c, model) || get_enum(c, model, "model", "loss", loss_names, 2, false, &loss) ||
        check_blocks(c, model) || require(c, model, "model", "layers", &raw) ||
        as_seq(c, NULL, raw, "layers", &layers))
        return -1;
    c->spec->loss = (LossKind)loss;
    c->loss = ynode_find(model, "loss");
    if (layers->n == 0) return maml_fail_at(c->err, layers->loc, "'layers' is empty");
    c->spec->layers = maml_calloc(SPEC_MAX_LAYERS, sizeof *c->spec->layers, c->err);
    if (!c->spec->layers) return -1;
    return expand_list(c, NULL, layers, "", 0);
}

/* ---------------------------------------------------------------------------------------
 * MAML settings */

static const char *const maml_keys[] = {"n_way", "k_shot", "q_query", "meta_batch",
                                        "inner", "outer",  "eval",    NULL};
static const char *const inner_keys[] = {"steps", "lr",        "lr_init", "first_order",
                                         "adapt", "reduction", NULL};
static const char *const outer_keys[] = {"optimizer", "lr", "beta1", "beta2", "eps", NULL};
static const char *const eval_keys[] = {"inner_steps", "lr", "tasks", NULL};
static const char *const reduction_names[] = {"mean", "sum", "sum_over_k_shot"};
static const char *const optimizer_names[] = {"adam", "sgd"};

static int section(const Ctx *c, const YNode *parent, const char *pwhere, const char *key,
                   const char *where, const char *const *keys, const YNode **out) {
    const YNode *raw = NULL;
    if (require(c, parent, pwhere, key, &raw) || as_map(c, NULL, raw, key, out)) return -1;
    return check_keys(c, *out, where, keys);
}

/* inner.lr: a positive number, or `learnable` with the initial value in lr_init. */
static int read_inner_lr(Ctx *c, const YNode *inner) {
    MamlSettings *m = &c->spec->maml;
    const YNode *raw, *v, *init = ynode_find(inner, "lr_init");
    if (require(c, inner, "maml.inner", "lr", &raw) || deref(c, NULL, raw, "lr", &v)) return -1;
    m->inner.lr_learnable = v->kind == Y_SCALAR && !v->quoted && !strcmp(v->text, "learnable");
    if (!m->inner.lr_learnable) {
        if (init)
            return maml_fail_at(c->err, key_loc(inner, "lr_init"),
                                "'lr_init' applies only when 'lr' is learnable");
        return as_number(c, NULL, raw, "lr", NUM_POSITIVE, &m->inner.lr);
    }
    if (!init)
        return maml_fail_at(c->err, v->loc,
                            "'lr: learnable' needs 'lr_init' (the initial inner learning rate)");
    return as_number(c, NULL, init, "lr_init", NUM_POSITIVE, &m->inner.lr);
}

/* inner.adapt: `all`, or a non-empty list of fnmatch globs over parameter names. */
static int read_adapt(Ctx *c, const YNode *inner) {
    MamlSettings *m = &c->spec->maml;
    const YNode *raw = ynode_find(inner, "adapt"), *v = NULL;
    if (!raw || deref(c, NULL, raw, "adapt", &v)) return raw ? -1 : 0;
    if (v->kind == Y_SCALAR && !v->quoted && !strcmp(v->text, "all")) return 0;
    if (v->kind != Y_SEQ || v->n == 0)
        return type_error(c, raw, v, "adapt", "all or a non-empty list of globs");
    m->inner.adapt = maml_calloc((size_t)v->n, sizeof *m->inner.adapt, c->err);
    c->globs = maml_calloc((size_t)v->n, sizeof *c->globs, c->err);
    if (!m->inner.adapt || !c->globs) return -1;
    for (int i = 0; i < v->n; i++) {
        const char *glob;
        if (as_string(c, NULL, v->items[i], "adapt", &glob)) return -1;
        if (!(m->inner.adapt[i] = maml_strdup(glob, c->err))) return -1;
        c->globs[i] = v->items[i];
        m->inner.n_adapt++;
    }
    return 0;
}

static int read_inner(Ctx *c, const YNode *maml) {
    MamlSettings *m = &c->spec->maml;
    const YNode *inner = NULL;
    int red = REDUCE_MEAN;
    m->inner.first_order = false; /* MAML proper is second order */
    if (section(c, maml, "maml", "inner", "maml.inner", inner_keys, &inner) ||
        get_int(c, NULL, inner, "maml.inner", "steps", 1, false, &m->inner.steps) ||
        read_inner_lr(c, inner) || get_bool(c, NULL, inner, "first_order", &m->inner.first_order) ||
        read_adapt(c, inner) ||
        get_enum(c, inner, "maml.inner", "reduction", reduction_names, 3, true, &red))
        return -1;
    m->inner.reduction = (LossReduction)red;
    return 0;
}

static int read_outer(Ctx *c, const YNode *maml) {
    MamlSettings *m = &c->spec->maml;
    const YNode *outer = NULL;
    int opt;
    m->outer.beta1 = 0.9, m->outer.beta2 = 0.999, m->outer.eps = 1e-8; /* torch.optim.Adam */
    if (section(c, maml, "maml", "outer", "maml.outer", outer_keys, &outer) ||
        get_enum(c, outer, "maml.outer", "optimizer", optimizer_names, 2, false, &opt) ||
        get_number(c, NULL, outer, "maml.outer", "lr", NUM_POSITIVE, false, &m->outer.lr))
        return -1;
    m->outer.optimizer = (OptimizerKind)opt;
    for (int i = 2; m->outer.optimizer == OPT_SGD && outer_keys[i]; i++)
        if (ynode_find(outer, outer_keys[i]))
            return maml_fail_at(c->err, key_loc(outer, outer_keys[i]),
                                "'%s' applies only to optimizer adam", outer_keys[i]);
    if (get_number(c, NULL, outer, "maml.outer", "beta1", NUM_FRACTION, true, &m->outer.beta1) ||
        get_number(c, NULL, outer, "maml.outer", "beta2", NUM_FRACTION, true, &m->outer.beta2) ||
        get_number(c, NULL, outer, "maml.outer", "eps", NUM_POSITIVE, true, &m->outer.eps))
        return -1;
    return 0;
}

static int read_eval(Ctx *c, const YNode *maml) {
    MamlSettings *m = &c->spec->maml;
    const YNode *eval = NULL;
    m->eval.lr = m->inner.lr; /* evaluation adapts like training unless told otherwise */
    if (section(c, maml, "maml", "eval", "maml.eval", eval_keys, &eval) ||
        get_int(c, NULL, eval, "maml.eval", "inner_steps", 1, false, &m->eval.inner_steps) ||
        get_number(c, NULL, eval, "maml.eval", "lr", NUM_POSITIVE, true, &m->eval.lr) ||
        get_int(c, NULL, eval, "maml.eval", "tasks", 1, false, &m->eval.tasks))
        return -1;
    return 0;
}

static int read_maml(Ctx *c) {
    MamlSettings *m = &c->spec->maml;
    const YNode *maml = NULL;
    if (section(c, c->root, "the graph file", "maml", "maml", maml_keys, &maml) ||
        get_int(c, NULL, maml, "maml", "n_way", 1, false, &m->n_way) ||
        get_int(c, NULL, maml, "maml", "k_shot", 1, false, &m->k_shot) ||
        get_int(c, NULL, maml, "maml", "q_query", 1, false, &m->q_query) ||
        get_int(c, NULL, maml, "maml", "meta_batch", 1, false, &m->meta_batch) ||
        read_inner(c, maml) || read_outer(c, maml) || read_eval(c, maml))
        return -1;
    c->n_way = ynode_find(maml, "n_way");
    c->q_query = ynode_find(maml, "q_query");
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Data settings */

static const char *const dataset_names[] = {"omniglot", "sinusoid"};
static const char *const split_names[] = {"background_evaluation", "shuffled_characters"};
static const char *const resize_names[] = {"nearest", "lanczos"};
static const char *const omniglot_keys[] = {"dataset",          "seed",      "split",
                                            "train_characters", "rotations", "image_size",
                                            "resize",           "invert",    NULL};
static const char *const sinusoid_keys[] = {"dataset", "seed",    "amplitude",
                                            "phase",   "x_range", NULL};

static int read_rotations(Ctx *c, const YNode *data) {
    DataSettings *d = &c->spec->data;
    const YNode *raw = ynode_find(data, "rotations"), *seq = NULL;
    d->n_rotations = 1, d->rotations[0] = 0; /* no augmentation unless asked */
    if (!raw) return 0;
    if (as_seq(c, NULL, raw, "rotations", &seq)) return -1;
    if (seq->n < 1 || seq->n > 4)
        return maml_fail_at(c->err, seq->loc, "'rotations' must list 1 to 4 of 0, 90, 180, 270");
    for (int i = 0; i < seq->n; i++) {
        int64_t r;
        if (as_int(c, NULL, seq->items[i], "rotations", 0, 270, &r)) return -1;
        if (r % 90)
            return maml_fail_at(c->err, seq->items[i]->loc,
                                "rotation %lld is not one of 0, 90, 180, 270", (long long)r);
        for (int j = 0; j < i; j++)
            if (d->rotations[j] == r)
                return maml_fail_at(c->err, seq->items[i]->loc, "rotation %lld is listed twice",
                                    (long long)r);
        d->rotations[i] = (int)r;
    }
    d->n_rotations = seq->n;
    return 0;
}

static int read_omniglot(Ctx *c, const YNode *data) {
    DataSettings *d = &c->spec->data;
    int split, resize = RESIZE_NEAREST; /* what the MAML paper's 1-bit PNG resize amounted to */
    d->image_size = 28;
    const YNode *tc = ynode_find(data, "train_characters");
    if (check_keys(c, data, "data (omniglot)", omniglot_keys) ||
        get_enum(c, data, "data", "split", split_names, 2, false, &split) ||
        get_int(c, NULL, data, "data", "image_size", 1, true, &d->image_size) ||
        get_enum(c, data, "data", "resize", resize_names, 2, true, &resize) ||
        get_bool(c, NULL, data, "invert", &d->invert) || read_rotations(c, data))
        return -1;
    d->split = (SplitKind)split;
    d->resize = (ResizeFilter)resize;
    if (d->image_size > OMNIGLOT_PNG_SIZE)
        return maml_fail_at(c->err, ynode_find(data, "image_size")->loc,
                            "'image_size' %d is larger than the %dx%d Omniglot images",
                            d->image_size, OMNIGLOT_PNG_SIZE, OMNIGLOT_PNG_SIZE);
    if (d->split == SPLIT_BACKGROUND_EVALUATION && tc)
        return maml_fail_at(c->err, key_loc(data, "train_characters"),
                            "'train_characters' applies only to split shuffled_characters");
    if (d->split != SPLIT_SHUFFLED_CHARACTERS) return 0;
    int64_t n;
    if (!tc)
        return maml_fail_at(c->err, data->loc,
                            "split shuffled_characters needs 'train_characters'");
    if (as_int(c, NULL, tc, "train_characters", 1, OMNIGLOT_CHARACTERS - 1, &n)) return -1;
    d->train_characters = (int)n;
    return 0;
}

/* [lo, hi] with lo <= hi. */
static int read_range(Ctx *c, const YNode *data, const char *key, bool nonneg, double out[2]) {
    const YNode *raw = ynode_find(data, key), *seq = NULL;
    if (!raw) return 0;
    if (as_seq(c, NULL, raw, key, &seq)) return -1;
    if (seq->n != 2) return maml_fail_at(c->err, seq->loc, "'%s' must be [low, high]", key);
    double v[2];
    for (int i = 0; i < 2; i++)
        if (as_number(c, NULL, seq->items[i], key, nonneg ? NUM_NONNEG : NUM_ANY, &v[i])) return -1;
    if (v[0] > v[1])
        return maml_fail_at(c->err, seq->loc, "'%s' must be [low, high] with low <= high", key);
    out[0] = v[0], out[1] = v[1];
    return 0;
}

static int read_sinusoid(Ctx *c, const YNode *data) {
    DataSettings *d = &c->spec->data;
    /* MAML paper section 5.1 */
    d->amplitude[0] = 0.1, d->amplitude[1] = 5.0;
    d->phase[0] = 0.0, d->phase[1] = M_PI;
    d->x_range[0] = -5.0, d->x_range[1] = 5.0;
    if (check_keys(c, data, "data (sinusoid)", sinusoid_keys) ||
        read_range(c, data, "amplitude", true, d->amplitude) ||
        read_range(c, data, "phase", false, d->phase) ||
        read_range(c, data, "x_range", false, d->x_range))
        return -1;
    return 0;
}

static int read_data(Ctx *c) {
    DataSettings *d = &c->spec->data;
    const YNode *raw = NULL, *data = NULL;
    int dataset;
    int64_t seed;
    if (require(c, c->root, "the graph file", "data", &raw) ||
        as_map(c, NULL, raw, "data", &data) ||
        get_enum(c, data, "data", "dataset", dataset_names, 2, false, &dataset))
        return -1;
    d->dataset = (DatasetKind)dataset;
    if ((d->dataset == DATASET_OMNIGLOT ? read_omniglot(c, data) : read_sinusoid(c, data)) ||
        require(c, data, "data", "seed", &raw) || as_int(c, NULL, raw, "seed", 0, INT64_MAX, &seed))
        return -1;
    d->seed = (uint64_t)seed;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Checks across sections */

static int check_omniglot(const Ctx *c) {
    const GraphSpec *s = c->spec;
    const DataSettings *d = &s->data;
    if (s->loss != LOSS_CROSS_ENTROPY)
        return maml_fail_at(c->err, c->loss->loc,
                            "Omniglot is classification: 'loss' must be cross_entropy");
    const ExampleShape *in = &s->input;
    if (in->rank != 3 || in->dims[0] != 1 || in->dims[1] != d->image_size ||
        in->dims[2] != d->image_size)
        return maml_fail_at(c->err, c->input->loc,
                            "'input' must be [1, %d, %d] for Omniglot images of size %d",
                            d->image_size, d->image_size, d->image_size);
    if (s->maml.k_shot + s->maml.q_query > OMNIGLOT_DRAWINGS)
        return maml_fail_at(
            c->err, c->q_query->loc,
            "k_shot + q_query = %d exceeds the %d drawings of an Omniglot character",
            s->maml.k_shot + s->maml.q_query, OMNIGLOT_DRAWINGS);
    int train = d->split == SPLIT_SHUFFLED_CHARACTERS ? d->train_characters : OMNIGLOT_BACKGROUND;
    int test =
        d->split == SPLIT_SHUFFLED_CHARACTERS ? OMNIGLOT_CHARACTERS - train : OMNIGLOT_EVALUATION;
    int classes = (train < test ? train : test) * d->n_rotations;
    if (s->maml.n_way < 2 || s->maml.n_way > classes)
        return maml_fail_at(
            c->err, c->n_way->loc,
            "'n_way' must be between 2 and %d (the classes of the smaller split), got %d", classes,
            s->maml.n_way);
    return 0;
}

static int check_sinusoid(const Ctx *c) {
    const GraphSpec *s = c->spec;
    if (s->loss != LOSS_MSE)
        return maml_fail_at(c->err, c->loss->loc, "sinusoid is regression: 'loss' must be mse");
    if (s->input.rank != 1 || s->input.dims[0] != 1)
        return maml_fail_at(c->err, c->input->loc, "'input' must be [1] for the sinusoid dataset");
    if (s->maml.n_way != 1)
        return maml_fail_at(c->err, c->n_way->loc,
                            "'n_way' must be 1 for the sinusoid dataset (one function per task)");
    return 0;
}

/* Each adapt glob must select something, or a typo would silently freeze parameters. */
static int check_globs(const Ctx *c) {
    const GraphSpec *s = c->spec;
    for (int i = 0; i < s->maml.inner.n_adapt; i++) {
        bool hit = false;
        for (int p = 0; p < s->n_params && !hit; p++)
            hit = fnmatch(s->maml.inner.adapt[i], s->params[p].name, 0) == 0;
        if (!hit)
            return maml_fail_at(c->err, c->globs[i]->loc, "adapt pattern '%s' matches no parameter",
                                s->maml.inner.adapt[i]);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Entry points */

/* spec->path holds the file's path followed by one "--set KEY=VALUE" label per override, so
 * the locations of nodes that came from an override stay valid as long as the spec. */
static int make_labels(GraphSpec *spec, const char *path, const char *const *ov, int n,
                       const char **labels, MamlError *err) {
    size_t size = strlen(path) + 1;
    for (int i = 0; i < n; i++) size += strlen("--set ") + strlen(ov[i]) + 1;
    char *p = spec->path = maml_alloc(size, err);
    if (!p) return -1;
    p += sprintf(p, "%s", path) + 1;
    for (int i = 0; i < n; i++) {
        labels[i] = p;
        p += sprintf(p, "--set %s", ov[i]) + 1;
    }
    return 0;
}

static int load(Ctx *c, const char *path, const char *const *overrides, int n_overrides) {
    GraphSpec *spec = c->spec;
    const char **labels = maml_calloc((size_t)n_overrides, sizeof *labels, c->err);
    char *text = NULL;
    size_t len = 0;
    int rc = !labels || make_labels(spec, path, overrides, n_overrides, labels, c->err) ? -1 : 0;
    c->file = spec->path;
    if (!rc) rc = ynode_read_file(path, &text, &len, c->err);
    if (!rc) rc = ynode_parse(text, len, c->file, false, &c->root, c->err);
    free(text);
    if (!rc && !c->root)
        rc = maml_fail_at(c->err, (SourceLoc){c->file, 1, 1}, "the graph file is empty");
    if (!rc && c->root->kind != Y_MAP)
        rc = maml_fail_at(c->err, c->root->loc,
                          "the graph file must be a mapping with model, maml and data");
    for (int i = 0; !rc && i < n_overrides; i++)
        rc = apply_override(c->root, overrides[i], labels[i], c->err);
    free(labels);
    return rc;
}

static const char *const top_keys[] = {"model", "maml", "data", NULL};

int spec_load(const char *path, const char *const *overrides, int n_overrides, GraphSpec *out,
              MamlError *err) {
    memset(out, 0, sizeof *out);
    Ctx c = {.spec = out, .err = err};
    int rc = load(&c, path, overrides, n_overrides);
    if (!rc) rc = check_keys(&c, c.root, "the graph file", top_keys);
    /* settings before the model, so a bad setting is reported under its own name rather than
     * through a layer that references it */
    if (!rc) rc = read_maml(&c);
    if (!rc) rc = read_model(&c);
    if (!rc) rc = read_data(&c);
    if (!rc) rc = out->data.dataset == DATASET_OMNIGLOT ? check_omniglot(&c) : check_sinusoid(&c);
    if (!rc) rc = spec_infer_shapes(out, err);
    if (!rc) rc = check_globs(&c);
    ynode_free(c.root);
    free(c.globs);
    if (rc) spec_free(out);
    return rc;
}

void spec_free(GraphSpec *spec) {
    if (!spec) return;
    for (int i = 0; spec->maml.inner.adapt && i < spec->maml.inner.n_adapt; i++)
        free(spec->maml.inner.adapt[i]);
    free(spec->maml.inner.adapt);
    free(spec->path);
    free(spec->layers);
    free(spec->params);
    memset(spec, 0, sizeof *spec);
}
