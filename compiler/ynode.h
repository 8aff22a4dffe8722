/* The YAML document tree of a graph file: every node keeps its source location, so that the
 * front end can name file:line:column in each message.
 *
 * Built from libyaml's event stream (not its document API, which drops marks of scalars' tags
 * and offers no limits). Plain scalars are typed by the YAML 1.2 core schema (`yes` is a string,
 * `1e-5` a float); quoted scalars and !!str are strings; other core tags must fit their scalar.
 * Duplicate keys, non-scalar keys, aliases and documents beyond the first are errors. */
#ifndef MAMLC_YNODE_H
#define MAMLC_YNODE_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* Limits that keep hostile or runaway inputs from exhausting memory or stack. */
#define SPEC_MAX_FILE_BYTES (1 << 20) /* a graph file is a few KiB */
#define SPEC_MAX_DEPTH 32             /* YAML nesting levels */
/* Entries of one YAML mapping or sequence: the duplicate-key check is quadratic, and a 1 MiB
 * mapping of 100k keys took half a minute; no graph needs more than a few dozen. */
#define SPEC_MAX_ENTRIES 1024

typedef enum { Y_SCALAR, Y_SEQ, Y_MAP } YKind;

typedef struct YNode {
    YKind kind;
    SourceLoc loc;
    char *text;          /* scalar */
    bool quoted;         /* scalar: quoted or tagged !!str, so never a number or reference */
    char *override_path; /* a key added by --set: its full dotted path, for messages */
    struct YNode **keys; /* map: key scalars, parallel to items */
    struct YNode **items;
    int n, cap;
} YNode;

/* What a scalar is under the core schema. */
typedef enum { S_NULL, S_BOOL, S_INT, S_FLOAT, S_STR } ScalarType;

/* Parses text (len bytes) as one YAML document into *root (NULL for an empty stream); label is
 * every node's file name. override: the text is a --set value, whose nodes carry no line. */
int ynode_parse(const char *text, size_t len, const char *label, bool override, YNode **root,
                MamlError *err);

/* Reads a graph file of at most SPEC_MAX_FILE_BYTES into a NUL-terminated *text (caller frees). */
int ynode_read_file(const char *path, char **text, size_t *len, MamlError *err);

/* A new empty node of kind at loc, or NULL (err filled). */
YNode *ynode_new(YKind kind, SourceLoc loc, MamlError *err);

/* Appends item (and key, for mappings); takes ownership of both, also on failure. */
int ynode_append(YNode *n, YNode *key, YNode *item, MamlError *err);

/* Frees n and everything below it (NULL is fine). */
void ynode_free(YNode *n);

/* The value under key in mapping map, or NULL (also when map is NULL or not a mapping). */
YNode *ynode_find(const YNode *map, const char *key);

/* The index of key in mapping map, or -1. */
int ynode_index(const YNode *map, const char *key);

/* The core-schema type of scalar n. */
ScalarType ynode_scalar_type(const YNode *n);

/* "'abc'", "3.5", "null", "a mapping": how a value is shown in messages (buf holds scalars). */
const char *ynode_describe(const YNode *n, char *buf, size_t size);

#endif
