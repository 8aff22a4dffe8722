/* The YAML document tree (ynode.h): libyaml's event stream to YNodes with source locations. */
#include "ynode.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

void ynode_free(YNode *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) {
        if (n->keys) ynode_free(n->keys[i]);
        ynode_free(n->items[i]);
    }
    free(n->keys);
    free(n->items);
    free(n->text);
    free(n->override_path);
    free(n);
}

YNode *ynode_new(YKind kind, SourceLoc loc, MamlError *err) {
    YNode *n = maml_calloc(1, sizeof *n, err);
    if (n) n->kind = kind, n->loc = loc;
    return n;
}

int ynode_append(YNode *n, YNode *key, YNode *item, MamlError *err) {
    if (n->n == n->cap) {
        int cap = n->cap ? 2 * n->cap : 4;
        YNode **items = maml_realloc(n->items, (size_t)cap, sizeof *items, err);
        if (items) n->items = items;
        YNode **keys = items && n->kind == Y_MAP
                           ? maml_realloc(n->keys, (size_t)cap, sizeof *keys, err)
                           : NULL;
        if (keys) n->keys = keys;
        if (!items || (n->kind == Y_MAP && !keys)) {
            ynode_free(key);
            ynode_free(item);
            return -1;
        }
        n->cap = cap;
    }
    if (n->kind == Y_MAP) n->keys[n->n] = key;
    n->items[n->n++] = item;
    return 0;
}

YNode *ynode_find(const YNode *map, const char *key) {
    if (!map || map->kind != Y_MAP) return NULL;
    for (int i = 0; i < map->n; i++)
        if (strcmp(map->keys[i]->text, key) == 0) return map->items[i];
    return NULL;
}

int ynode_index(const YNode *map, const char *key) {
    for (int i = 0; map && map->kind == Y_MAP && i < map->n; i++)
        if (strcmp(map->keys[i]->text, key) == 0) return i;
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Scalars: YAML 1.2 core schema */

static bool all_in(const char *s, const char *set) {
    return *s && strspn(s, set) == strlen(s);
}

static bool is_core_int(const char *t) {
    if (strncmp(t, "0o", 2) == 0) return all_in(t + 2, "01234567");
    if (strncmp(t, "0x", 2) == 0) return all_in(t + 2, "0123456789abcdefABCDEF");
    if (*t == '-' || *t == '+') t++;
    return all_in(t, "0123456789");
}

static bool is_core_float(const char *t) {
    if (*t == '-' || *t == '+') t++;
    if (!strcmp(t, ".inf") || !strcmp(t, ".Inf") || !strcmp(t, ".INF")) return true;
    if (!strcmp(t, ".nan") || !strcmp(t, ".NaN") || !strcmp(t, ".NAN")) return true;
    size_t digits = strspn(t, "0123456789");
    t += digits;
    if (*t == '.') {
        size_t frac = strspn(t + 1, "0123456789");
        if (!digits && !frac) return false;
        t += 1 + frac;
    } else if (!digits) {
        return false;
    }
    if (*t == 'e' || *t == 'E') {
        t++;
        if (*t == '-' || *t == '+') t++;
        if (!all_in(t, "0123456789")) return false;
        t += strlen(t);
    }
    return *t == '\0';
}

ScalarType ynode_scalar_type(const YNode *n) {
    const char *t = n->text;
    if (n->quoted) return S_STR;
    if (!*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL"))
        return S_NULL;
    if (!strcmp(t, "true") || !strcmp(t, "True") || !strcmp(t, "TRUE") || !strcmp(t, "false") ||
        !strcmp(t, "False") || !strcmp(t, "FALSE"))
        return S_BOOL;
    if (is_core_int(t)) return S_INT;
    if (is_core_float(t)) return S_FLOAT;
    return S_STR;
}

const char *ynode_describe(const YNode *n, char *buf, size_t size) {
    if (n->kind == Y_MAP) return "a mapping";
    if (n->kind == Y_SEQ) return "a sequence";
    ScalarType t = ynode_scalar_type(n);
    if (t == S_NULL) return "null";
    if (t == S_STR)
        snprintf(buf, size, "'%.60s%s'", n->text, strlen(n->text) > 60 ? "..." : "");
    else
        snprintf(buf, size, "%.60s", n->text);
    return buf;
}

/* ---------------------------------------------------------------------------------------
 * Building the tree from libyaml events */

typedef struct {
    yaml_parser_t parser;
    const char *text;
    const char *label; /* SourceLoc.file of every node */
    bool override;     /* nodes of a --set value carry no line/column */
    MamlError *err;
} Reader;

static SourceLoc mark_loc(const Reader *r, yaml_mark_t m) {
    if (r->override) return (SourceLoc){r->label, 0, 0};
    return (SourceLoc){r->label, (int)m.line + 1, (int)m.column + 1};
}

/* Line and column of a byte offset, for libyaml's reader errors that only give an offset. */
static SourceLoc offset_loc(const Reader *r, size_t offset) {
    SourceLoc loc = {r->label, 1, 1};
    if (r->override) return (SourceLoc){r->label, 0, 0};
    for (size_t i = 0; i < offset && r->text[i]; i++) {
        if (r->text[i] == '\n')
            loc.line++, loc.column = 1;
        else if (((unsigned char)r->text[i] & 0xC0) != 0x80)
            loc.column++;
    }
    return loc;
}

static int syntax_error(Reader *r) {
    const yaml_parser_t *p = &r->parser;
    const char *problem = p->problem ? p->problem : "cannot parse the document";
    if (p->error == YAML_MEMORY_ERROR) return maml_fail(r->err, "out of memory while parsing YAML");
    if (p->error == YAML_READER_ERROR)
        return maml_fail_at(r->err, offset_loc(r, p->problem_offset), "invalid YAML text: %s",
                            problem);
    if (p->context && r->override) /* a --set value: its own line and column mean little */
        return maml_fail_at(r->err, mark_loc(r, p->problem_mark), "YAML syntax error: %s (%s)",
                            problem, p->context);
    if (p->context)
        return maml_fail_at(r->err, mark_loc(r, p->problem_mark),
                            "YAML syntax error: %s (%s that starts at line %d, column %d)", problem,
                            p->context, (int)p->context_mark.line + 1,
                            (int)p->context_mark.column + 1);
    return maml_fail_at(r->err, mark_loc(r, p->problem_mark), "YAML syntax error: %s", problem);
}

static int next_event(Reader *r, yaml_event_t *ev) {
    if (!yaml_parser_parse(&r->parser, ev)) return syntax_error(r);
    return 0;
}

/* Core-schema tag check: an explicit tag must agree with what the node is. */
static const char *const std_tags[] = {"str", "int", "float", "bool", "null", "seq", "map"};

static int check_tag(Reader *r, const yaml_event_t *ev, const unsigned char *tag,
                     const char *want) {
    if (!tag) return 0;
    const char *t = (const char *)tag;
    const char *prefix = "tag:yaml.org,2002:";
    if (strncmp(t, prefix, strlen(prefix)) == 0) {
        t += strlen(prefix);
        for (size_t i = 0; i < sizeof std_tags / sizeof *std_tags; i++)
            if (strcmp(t, std_tags[i]) == 0 && (!want || strcmp(t, want) == 0)) return 0;
    }
    return maml_fail_at(r->err, mark_loc(r, ev->start_mark), "unsupported YAML tag '%s' here",
                        (const char *)tag);
}

static int read_node(Reader *r, yaml_event_t *ev, int depth, YNode **out);

/* Whether scalar n (typed as plain text) is what its core-schema tag says. */
static bool tag_fits(const YNode *n, const char *tag) {
    ScalarType t = ynode_scalar_type(n);
    if (strstr(tag, ":int")) return t == S_INT;
    if (strstr(tag, ":float")) return t == S_INT || t == S_FLOAT;
    if (strstr(tag, ":bool")) return t == S_BOOL;
    if (strstr(tag, ":null")) return t == S_NULL;
    return true;
}

static int read_scalar(Reader *r, yaml_event_t *ev, YNode **out) {
    const char *tag = (const char *)ev->data.scalar.tag;
    bool quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    if (tag && check_tag(r, ev, ev->data.scalar.tag, NULL)) return -1;
    if (tag && (strstr(tag, ":seq") || strstr(tag, ":map")))
        return maml_fail_at(r->err, mark_loc(r, ev->start_mark), "tag '%s' on a scalar", tag);
    /* !!str makes a string; !!int and friends type the text as if it were plain, and must fit */
    if (tag) quoted = strstr(tag, ":str") != NULL;
    if (strlen((const char *)ev->data.scalar.value) != ev->data.scalar.length)
        return maml_fail_at(r->err, mark_loc(r, ev->start_mark), "NUL character in a scalar");
    YNode *n = ynode_new(Y_SCALAR, mark_loc(r, ev->start_mark), r->err);
    if (!n) return -1;
    n->quoted = quoted;
    n->text = maml_strdup((const char *)ev->data.scalar.value, r->err);
    if (!n->text) return ynode_free(n), -1;
    if (tag && !tag_fits(n, tag)) {
        maml_fail_at(r->err, n->loc, "'%s' is not a valid %s", n->text, strrchr(tag, ':') + 1);
        return ynode_free(n), -1;
    }
    *out = n;
    return 0;
}

/* Reads the children of a sequence or mapping until its end event. */
static int read_children(Reader *r, YNode *n, yaml_event_type_t end, int depth) {
    for (;;) {
        yaml_event_t ev;
        if (next_event(r, &ev)) return -1;
        if (ev.type == end) return yaml_event_delete(&ev), 0;
        if (n->n == SPEC_MAX_ENTRIES) {
            yaml_event_delete(&ev);
            return maml_fail_at(r->err, n->loc, "%s with more than %d entries",
                                n->kind == Y_MAP ? "mapping" : "sequence", SPEC_MAX_ENTRIES);
        }
        YNode *key = NULL, *item = NULL;
        int rc = read_node(r, &ev, depth + 1, n->kind == Y_MAP ? &key : &item);
        yaml_event_delete(&ev);
        if (rc) return -1;
        if (n->kind == Y_MAP) {
            if (key->kind != Y_SCALAR) {
                rc = maml_fail_at(r->err, key->loc, "mapping keys must be scalars");
            } else if (ynode_index(n, key->text) >= 0) {
                rc = maml_fail_at(r->err, key->loc, "duplicate key '%s' (first at line %d)",
                                  key->text, n->keys[ynode_index(n, key->text)]->loc.line);
            } else if (!(rc = next_event(r, &ev))) {
                rc = read_node(r, &ev, depth + 1, &item);
                yaml_event_delete(&ev);
            }
            if (rc) return ynode_free(key), -1;
        }
        if (ynode_append(n, key, item, r->err)) return -1;
    }
}

static int read_collection(Reader *r, yaml_event_t *ev, int depth, YNode **out) {
    bool is_map = ev->type == YAML_MAPPING_START_EVENT;
    const unsigned char *tag = is_map ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    if (check_tag(r, ev, tag, is_map ? "map" : "seq")) return -1;
    YNode *n = ynode_new(is_map ? Y_MAP : Y_SEQ, mark_loc(r, ev->start_mark), r->err);
    if (!n) return -1;
    if (read_children(r, n, is_map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT, depth))
        return ynode_free(n), -1;
    *out = n;
    return 0;
}

/* Builds the node that starts with event ev (owned by the caller). */
static int read_node(Reader *r, yaml_event_t *ev, int depth, YNode **out) {
    if (depth > SPEC_MAX_DEPTH)
        return maml_fail_at(r->err, mark_loc(r, ev->start_mark),
                            "document nested deeper than %d levels", SPEC_MAX_DEPTH);
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return read_scalar(r, ev, out);
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        return read_collection(r, ev, depth, out);
    case YAML_ALIAS_EVENT:
        return maml_fail_at(r->err, mark_loc(r, ev->start_mark),
                            "YAML aliases (*%s) are not supported; use blocks or $references",
                            (const char *)ev->data.alias.anchor);
    default:
        return maml_fail_at(r->err, mark_loc(r, ev->start_mark), "unexpected YAML event");
    }
}

/* Expects the stream to hold exactly one document and returns its root (NULL when empty). */
static int read_stream(Reader *r, YNode **root) {
    yaml_event_t ev;
    if (next_event(r, &ev)) return -1; /* STREAM-START */
    yaml_event_delete(&ev);
    if (next_event(r, &ev)) return -1;
    if (ev.type == YAML_STREAM_END_EVENT) return yaml_event_delete(&ev), 0;
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if (next_event(r, &ev)) return -1;
    int rc = read_node(r, &ev, 1, root);
    yaml_event_delete(&ev);
    if (rc || next_event(r, &ev)) return -1; /* DOCUMENT-END */
    yaml_event_delete(&ev);
    if (next_event(r, &ev)) return -1;
    if (ev.type != YAML_STREAM_END_EVENT)
        rc = maml_fail_at(r->err, mark_loc(r, ev.start_mark),
                          "a graph file holds one YAML document");
    yaml_event_delete(&ev);
    return rc;
}

int ynode_parse(const char *text, size_t len, const char *label, bool override, YNode **root,
                MamlError *err) {
    Reader r = {.text = text, .label = label, .override = override, .err = err};
    *root = NULL;
    if (!yaml_parser_initialize(&r.parser)) return maml_fail(err, "cannot initialise libyaml");
    yaml_parser_set_input_string(&r.parser, (const unsigned char *)text, len);
    int rc = read_stream(&r, root);
    yaml_parser_delete(&r.parser);
    if (rc) ynode_free(*root), *root = NULL;
    return rc;
}

int ynode_read_file(const char *path, char **text, size_t *len, MamlError *err) {
    SourceLoc loc = {path, 0, 0};
    FILE *f = fopen(path, "rb");
    if (!f) return maml_fail_at(err, loc, "cannot open: %s", strerror(errno));
    char *buf = maml_alloc(SPEC_MAX_FILE_BYTES + 1, err);
    if (!buf) return fclose(f), -1;
    size_t n = fread(buf, 1, SPEC_MAX_FILE_BYTES + 1, f);
    int rc = 0;
    if (ferror(f))
        rc = maml_fail_at(err, loc, "cannot read: %s", strerror(errno));
    else if (n > SPEC_MAX_FILE_BYTES)
        rc = maml_fail_at(err, loc, "file is larger than the limit of %d bytes",
                          SPEC_MAX_FILE_BYTES);
    fclose(f);
    if (rc) return free(buf), -1;
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}
