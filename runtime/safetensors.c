/* safetensors reader and writer (see safetensors.h).
 *
 * The reader trusts nothing in the file: the header goes through a small strict JSON parser
 * (RFC 8259 syntax, UTF-8 checked, nesting bounded) into a tree, the tree is checked against the
 * format (fields, dtypes, shapes, offsets that tile the data block exactly, unique names), and
 * only then are tensors allocated and read. Everything is built in a private set and handed
 * over at the end, so a failure never leaves a half-loaded set behind.
 *
 * The writer produces what the reference implementation does (header padded with spaces to a
 * multiple of 8, tensors packed in order) and replaces the target atomically. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest JSON header accepted: far beyond any real file (a header entry is ~100 bytes), small
 * enough that a corrupt length cannot make us allocate gigabytes. */
#define ST_HEADER_MAX 100000000ull
/* Nesting the format needs is 3 (root, tensor, shape); anything deeper is garbage, and the
 * bound keeps the recursive parser's stack small on hostile input. */
#define JSON_MAX_DEPTH 16
/* Arrays in a header are shapes (at most MAX_RANK entries) and offset pairs. Refusing long ones
 * stops a header of "[0,0,0,...]" from costing ~40 bytes of tree per byte of input. */
#define JSON_MAX_ARRAY 64

/* ---------------------------------------------------------------- messages ---------------- */

/* Copies s into buf for an error message: printable and non-ASCII bytes as they are, control
 * bytes as \xNN, long names cut with "...", so a message stays one readable line. */
static const char *printable(const char *s, char *buf, size_t size) {
    size_t n = 0;
    for (; *s && n + 8 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            n += (size_t)snprintf(buf + n, size - n, "\\x%02x", c);
        else
            buf[n++] = (char)c;
    }
    if (*s)
        memcpy(buf + n, "...", 4);
    else
        buf[n] = '\0';
    return buf;
}

#define NAME_BUF 160

/* ---------------------------------------------------------------- JSON tree --------------- */

typedef enum { J_OBJECT, J_ARRAY, J_STRING, J_NUMBER, J_TRUE, J_FALSE, J_NULL } JKind;

/* Integer status of a JSON number: the format only ever wants non-negative integers, but the
 * messages should say what was found instead. */
typedef enum { JNUM_INT, JNUM_FRACTION, JNUM_TOO_LARGE } JNumKind;

typedef struct JValue JValue;
struct JValue {
    JKind kind;
    /* J_STRING */
    char *str;
    /* J_NUMBER */
    JNumKind num_kind;
    int64_t num;
    const char *text; /* the number as written (points into the header) */
    int text_len;
    /* J_ARRAY, J_OBJECT (keys[i] names items[i]) */
    JValue *items;
    char **keys;
    int n, cap;
};

static void json_free(JValue *v) {
    free(v->str);
    for (int i = 0; i < v->n; i++) {
        json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

static const char *json_kind_name(JKind k) {
    static const char *names[] = {"an object", "an array", "a string", "a number",
                                  "true",      "false",    "null"};
    return names[k];
}

/* ---------------------------------------------------------------- JSON parser ------------- */

typedef struct {
    const char *s;
    size_t n, pos;
    int depth;
    const char *path;
    MamlError *err;
} JParser;

static int jfail(JParser *p, size_t pos, const char *what) {
    return maml_fail(p->err, "%s: invalid JSON header at byte %zu: %s", p->path, pos, what);
}

static void skip_ws(JParser *p) {
    while (p->pos < p->n) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int peek(const JParser *p) {
    return p->pos < p->n ? (unsigned char)p->s[p->pos] : -1;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if it is not one: no overlong
 * forms, no surrogates, nothing above U+10FFFF. */
static int utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len;
    unsigned min, cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

static bool utf8_valid(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        int len = utf8_seq_len((const unsigned char *)s + i, n - i);
        if (!len) return false;
        i += (size_t)len;
    }
    return true;
}

static int hex4(JParser *p, size_t at, unsigned *out) {
    if (at + 4 > p->n) return jfail(p, at, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[at + (size_t)i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return jfail(p, at, "invalid \\u escape");
        v = v << 4 | (unsigned)d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes the \u escape at p->pos (just past the backslash and 'u'), joining surrogate pairs. */
static int unicode_escape(JParser *p, char *o, size_t *len) {
    size_t at = p->pos - 2;
    unsigned cp = 0, lo = 0;
    if (hex4(p, p->pos, &cp) < 0) return -1;
    p->pos += 4;
    if (cp >= 0xdc00 && cp <= 0xdfff) return jfail(p, at, "unpaired surrogate in \\u escape");
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (p->pos + 2 > p->n || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return jfail(p, at, "unpaired surrogate in \\u escape");
        if (hex4(p, p->pos + 2, &lo) < 0) return -1;
        if (lo < 0xdc00 || lo > 0xdfff) return jfail(p, at, "unpaired surrogate in \\u escape");
        p->pos += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    /* Names are C strings; an embedded NUL would silently truncate them. */
    if (cp == 0) return jfail(p, at, "\\u0000 is not allowed in names");
    *len = put_utf8(o, cp);
    return 0;
}

static int simple_escape(JParser *p, char c, char *o) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *hit = c ? strchr(from, c) : NULL;
    if (!hit) return jfail(p, p->pos - 2, "invalid escape sequence");
    *o = to[hit - from];
    return 0;
}

/* Finds the closing quote of the string starting at p->pos (after the opening quote), so the
 * decoded string can be allocated at its final size (decoding never lengthens a string). */
static int string_span(JParser *p, size_t *end) {
    for (size_t i = p->pos; i < p->n; i++) {
        if (p->s[i] == '"') return *end = i, 0;
        if (p->s[i] == '\\') i++;
    }
    return jfail(p, p->pos - 1, "unterminated string");
}

static int decode_char(JParser *p, char *o, size_t *len) {
    unsigned char c = (unsigned char)p->s[p->pos];
    if (c < 0x20) return jfail(p, p->pos, "control character in string");
    if (c == '\\') {
        char e = p->s[p->pos + 1];
        p->pos += 2;
        if (e == 'u') return unicode_escape(p, o, len);
        *len = 1;
        return simple_escape(p, e, o);
    }
    int n = utf8_seq_len((const unsigned char *)p->s + p->pos, p->n - p->pos);
    if (!n) return jfail(p, p->pos, "invalid UTF-8 in string");
    memcpy(o, p->s + p->pos, (size_t)n);
    p->pos += (size_t)n;
    *len = (size_t)n;
    return 0;
}

/* Parses a string at p->pos (on the opening quote) into a new NUL-terminated buffer. */
static int parse_string(JParser *p, char **out) {
    size_t end = 0;
    p->pos++;
    if (string_span(p, &end) < 0) return -1;
    char *buf = maml_alloc(end - p->pos + 1, p->err);
    if (!buf) return -1;
    size_t o = 0;
    while (p->pos < end) {
        size_t len = 0;
        if (decode_char(p, buf + o, &len) < 0) {
            free(buf);
            return -1;
        }
        o += len;
    }
    buf[o] = '\0';
    p->pos = end + 1;
    *out = buf;
    return 0;
}

static bool is_digit(int c) {
    return c >= '0' && c <= '9';
}

/* Scans the JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(JParser *p, bool *integral) {
    size_t start = p->pos;
    *integral = true;
    if (peek(p) == '-') p->pos++;
    if (peek(p) == '0')
        p->pos++;
    else if (is_digit(peek(p)))
        while (is_digit(peek(p))) p->pos++;
    else
        return jfail(p, start, "invalid number");
    if (peek(p) == '.') {
        *integral = false;
        p->pos++;
        if (!is_digit(peek(p))) return jfail(p, start, "invalid number");
        while (is_digit(peek(p))) p->pos++;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        *integral = false;
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!is_digit(peek(p))) return jfail(p, start, "invalid number");
        while (is_digit(peek(p))) p->pos++;
    }
    return 0;
}

static int parse_number(JParser *p, JValue *v) {
    bool integral;
    size_t start = p->pos;
    if (scan_number(p, &integral) < 0) return -1;
    v->kind = J_NUMBER;
    v->text = p->s + start;
    v->text_len = p->pos - start > 40 ? 40 : (int)(p->pos - start);
    v->num_kind = integral ? JNUM_INT : JNUM_FRACTION;
    if (!integral) return 0;
    bool neg = p->s[start] == '-';
    uint64_t mag = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (size_t i = start + neg; i < p->pos; i++) {
        unsigned d = (unsigned)(p->s[i] - '0');
        if (mag > (limit - d) / 10) return v->num_kind = JNUM_TOO_LARGE, 0;
        mag = mag * 10 + d;
    }
    v->num = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return 0;
}

static int parse_literal(JParser *p, JValue *v) {
    static const struct {
        const char *word;
        JKind kind;
    } lits[] = {{"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL}};
    for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++) {
        size_t len = strlen(lits[i].word);
        if (p->n - p->pos >= len && memcmp(p->s + p->pos, lits[i].word, len) == 0) {
            v->kind = lits[i].kind;
            p->pos += len;
            return 0;
        }
    }
    return jfail(p, p->pos, "unexpected character");
}

static int parse_value(JParser *p, JValue *v);

/* Appends a zeroed child to an array or object and returns it. */
static JValue *add_child(JParser *p, JValue *v) {
    if (v->kind == J_ARRAY && v->n == JSON_MAX_ARRAY)
        return jfail(p, p->pos, "array longer than 64 elements"), NULL;
    if (v->n == v->cap) {
        if (v->cap > INT32_MAX / 2) return jfail(p, p->pos, "too many elements"), NULL;
        int cap = v->cap ? 2 * v->cap : 4;
        JValue *items = maml_realloc(v->items, (size_t)cap, sizeof *items, p->err);
        if (!items) return NULL;
        v->items = items;
        if (v->kind == J_OBJECT) {
            char **keys = maml_realloc(v->keys, (size_t)cap, sizeof *keys, p->err);
            if (!keys) return NULL;
            v->keys = keys;
        }
        v->cap = cap;
    }
    JValue *c = &v->items[v->n];
    memset(c, 0, sizeof *c);
    if (v->keys) v->keys[v->n] = NULL;
    v->n++;
    return c;
}

static int expect(JParser *p, char c, const char *what) {
    skip_ws(p);
    if (peek(p) != c) return jfail(p, p->pos, what);
    p->pos++;
    return 0;
}

/* One "key": value member of an object; the child is counted before parsing so json_free
 * reclaims it whatever happens. */
static int parse_member(JParser *p, JValue *v) {
    skip_ws(p);
    if (peek(p) != '"') return jfail(p, p->pos, "expected a string key");
    JValue *c = add_child(p, v);
    if (!c) return -1;
    if (parse_string(p, &v->keys[v->n - 1]) < 0) return -1;
    if (expect(p, ':', "expected ':'") < 0) return -1;
    return parse_value(p, &v->items[v->n - 1]);
}

/* Objects and arrays: open bracket already consumed; elements separated by commas, no
 * trailing comma. */
static int parse_container(JParser *p, JValue *v, char close) {
    skip_ws(p);
    if (peek(p) == close) return p->pos++, 0;
    for (;;) {
        if (v->kind == J_OBJECT) {
            if (parse_member(p, v) < 0) return -1;
        } else {
            JValue *c = add_child(p, v);
            if (!c || parse_value(p, c) < 0) return -1;
        }
        skip_ws(p);
        int c = peek(p);
        p->pos++;
        if (c == close) return 0;
        if (c != ',')
            return jfail(p, p->pos - 1,
                         close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(JParser *p, JValue *v) {
    skip_ws(p);
    int c = peek(p);
    if (c == '{' || c == '[') {
        if (++p->depth > JSON_MAX_DEPTH) return jfail(p, p->pos, "nesting too deep");
        v->kind = c == '{' ? J_OBJECT : J_ARRAY;
        p->pos++;
        int rc = parse_container(p, v, c == '{' ? '}' : ']');
        p->depth--;
        return rc;
    }
    if (c == '"') {
        v->kind = J_STRING;
        return parse_string(p, &v->str);
    }
    if (c == '-' || is_digit(c)) return parse_number(p, v);
    if (c < 0) return jfail(p, p->pos, "unexpected end of header");
    return parse_literal(p, v);
}

/* Parses the whole header: one object, then only whitespace (the writer's padding). */
static int json_parse(const char *s, size_t n, const char *path, JValue *root, MamlError *err) {
    JParser p = {.s = s, .n = n, .path = path, .err = err};
    memset(root, 0, sizeof *root);
    skip_ws(&p);
    if (peek(&p) != '{') return jfail(&p, p.pos, "the header must be a JSON object");
    if (parse_value(&p, root) < 0) return -1;
    skip_ws(&p);
    if (p.pos != n) return jfail(&p, p.pos, "trailing characters after the header object");
    return 0;
}

/* ---------------------------------------------------------------- header checks ----------- */

typedef struct {
    const char *name; /* points into the JSON tree */
    TensorDType dtype;
    Shape shape;
    int64_t begin, end;
} Entry;

typedef struct {
    const char *path;
    MamlError *err;
    uint64_t data_size;
} Checker;

/* "PATH: tensor 'NAME': ..." */
__attribute__((format(printf, 3, 4))) static int tfail(const Checker *c, const char *name,
                                                       const char *fmt, ...) {
    char what[512], nb[NAME_BUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return maml_fail(c->err, "%s: tensor '%s': %s", c->path, printable(name, nb, sizeof nb), what);
}

static int parse_dtype(const Checker *c, const char *name, const JValue *v, TensorDType *out) {
    static const TensorDType all[] = {TENSOR_F32, TENSOR_F64, TENSOR_I32, TENSOR_I64};
    char nb[NAME_BUF];
    if (v->kind != J_STRING)
        return tfail(c, name, "dtype must be a string, found %s", json_kind_name(v->kind));
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(v->str, tensor_dtype_name(all[i])) == 0) return *out = all[i], 0;
    return tfail(c, name, "unsupported dtype '%s' (supported: F32, F64, I32, I64)",
                 printable(v->str, nb, sizeof nb));
}

/* A non-negative integer field element, or an error saying what was found instead. */
static int nonneg_int(const Checker *c, const char *name, const char *field, int i, const JValue *v,
                      int64_t *out) {
    if (v->kind != J_NUMBER)
        return tfail(c, name, "%s entry %d must be an integer, found %s", field, i,
                     json_kind_name(v->kind));
    if (v->num_kind == JNUM_FRACTION)
        return tfail(c, name, "%s entry %d is %.*s: not an integer", field, i, v->text_len,
                     v->text);
    if (v->num_kind == JNUM_TOO_LARGE)
        return tfail(c, name, "%s entry %d is %.*s: too large", field, i, v->text_len, v->text);
    if (v->num < 0)
        return tfail(c, name, "%s entry %d is %lld: must not be negative", field, i,
                     (long long)v->num);
    *out = v->num;
    return 0;
}

static int parse_shape(const Checker *c, const char *name, const JValue *v, Shape *out) {
    if (v->kind != J_ARRAY)
        return tfail(c, name, "shape must be an array, found %s", json_kind_name(v->kind));
    if (v->n > MAX_RANK) return tfail(c, name, "rank %d exceeds the maximum of %d", v->n, MAX_RANK);
    memset(out, 0, sizeof *out);
    out->rank = v->n;
    for (int i = 0; i < v->n; i++)
        if (nonneg_int(c, name, "shape", i, &v->items[i], &out->dims[i]) < 0) return -1;
    return 0;
}

static int parse_offsets(const Checker *c, Entry *e, const JValue *v) {
    if (v->kind != J_ARRAY || v->n != 2)
        return tfail(c, e->name, "data_offsets must be an array of two integers");
    if (nonneg_int(c, e->name, "data_offsets", 0, &v->items[0], &e->begin) < 0 ||
        nonneg_int(c, e->name, "data_offsets", 1, &v->items[1], &e->end) < 0)
        return -1;
    if (e->end < e->begin)
        return tfail(c, e->name, "data_offsets [%lld, %lld]: end before begin", (long long)e->begin,
                     (long long)e->end);
    if ((uint64_t)e->end > c->data_size)
        return tfail(c, e->name, "data_offsets [%lld, %lld] beyond the data block of %llu bytes",
                     (long long)e->begin, (long long)e->end, (unsigned long long)c->data_size);
    return 0;
}

/* The shape's byte size must match the offsets; computed with overflow checks since a hostile
 * shape can multiply past 2^63. */
static int check_size(const Checker *c, const Entry *e) {
    char sb[256];
    int64_t bytes = (int64_t)tensor_dtype_size(e->dtype);
    for (int i = 0; i < e->shape.rank; i++) {
        int64_t d = e->shape.dims[i];
        if (d && bytes > INT64_MAX / d)
            return tfail(c, e->name, "element count of shape %s overflows",
                         shape_str(e->shape, sb, sizeof sb));
        bytes *= d;
    }
    if (bytes != e->end - e->begin)
        return tfail(
            c, e->name, "shape %s of %s needs %lld bytes, data_offsets [%lld, %lld] hold %lld",
            shape_str(e->shape, sb, sizeof sb), tensor_dtype_name(e->dtype), (long long)bytes,
            (long long)e->begin, (long long)e->end, (long long)(e->end - e->begin));
    return 0;
}

/* Fills e from one tensor's {"dtype", "shape", "data_offsets"} object. */
static int parse_entry(const Checker *c, const char *name, const JValue *v, Entry *e) {
    e->name = name;
    if (v->kind != J_OBJECT)
        return tfail(c, name, "expected an object, found %s", json_kind_name(v->kind));
    const JValue *dtype = NULL, *shape = NULL, *offsets = NULL;
    char kb[NAME_BUF];
    for (int i = 0; i < v->n; i++) {
        const JValue **slot = strcmp(v->keys[i], "dtype") == 0          ? &dtype
                              : strcmp(v->keys[i], "shape") == 0        ? &shape
                              : strcmp(v->keys[i], "data_offsets") == 0 ? &offsets
                                                                        : NULL;
        if (!slot)
            return tfail(c, name, "unknown field '%s'", printable(v->keys[i], kb, sizeof kb));
        if (*slot) return tfail(c, name, "duplicate field '%s'", v->keys[i]);
        *slot = &v->items[i];
    }
    if (!dtype) return tfail(c, name, "missing field 'dtype'");
    if (!shape) return tfail(c, name, "missing field 'shape'");
    if (!offsets) return tfail(c, name, "missing field 'data_offsets'");
    if (parse_dtype(c, name, dtype, &e->dtype) < 0 || parse_shape(c, name, shape, &e->shape) < 0 ||
        parse_offsets(c, e, offsets) < 0)
        return -1;
    return check_size(c, e);
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a repeated string among n (sorting a copy of the pointers: O(n log n), since a hostile
 * header can hold millions of names). Returns it, or NULL; *failed on allocation failure. */
static const char *find_duplicate(const char *const *names, int n, MamlError *err, bool *failed) {
    *failed = false;
    if (n < 2) return NULL;
    const char **sorted = maml_alloc((size_t)n * sizeof *sorted, err);
    if (!sorted) return *failed = true, NULL;
    memcpy(sorted, names, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_str_ptr);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) dup = sorted[i];
    free(sorted);
    return dup;
}

static int check_unique_names(const Checker *c, const Entry *entries, int n) {
    const char **names = maml_alloc((size_t)(n ? n : 1) * sizeof *names, c->err);
    if (!names) return -1;
    for (int i = 0; i < n; i++) names[i] = entries[i].name;
    bool failed;
    const char *dup = find_duplicate(names, n, c->err, &failed);
    free(names);
    if (failed) return -1;
    return dup ? tfail(c, dup, "duplicate tensor name") : 0;
}

static int cmp_entry_offsets(const void *a, const void *b) {
    const Entry *x = *(const Entry *const *)a, *y = *(const Entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x < y ? -1 : x > y; /* header order, so messages are deterministic */
}

static int check_tiling_sorted(const Checker *c, const Entry *const *by_offset, int n) {
    char nb[NAME_BUF];
    int64_t cursor = 0;
    for (int i = 0; i < n; i++) {
        const Entry *e = by_offset[i];
        if (e->begin < cursor)
            return tfail(c, e->name, "data_offsets [%lld, %lld] overlap tensor '%s' [%lld, %lld]",
                         (long long)e->begin, (long long)e->end,
                         printable(by_offset[i - 1]->name, nb, sizeof nb),
                         (long long)by_offset[i - 1]->begin, (long long)by_offset[i - 1]->end);
        if (e->begin > cursor)
            return tfail(c, e->name,
                         "data_offsets [%lld, %lld] leave a gap: bytes %lld..%lld of "
                         "the data block belong to no tensor",
                         (long long)e->begin, (long long)e->end, (long long)cursor,
                         (long long)e->begin);
        cursor = e->end;
    }
    if ((uint64_t)cursor != c->data_size)
        return maml_fail(c->err,
                         "%s: the data block has %llu bytes but the tensors cover only "
                         "%lld: bytes after %lld belong to no tensor",
                         c->path, (unsigned long long)c->data_size, (long long)cursor,
                         (long long)cursor);
    return 0;
}

/* The spec requires the tensors to tile the data block exactly: no overlaps, no holes. */
static int check_tiling(const Checker *c, const Entry *entries, int n) {
    const Entry **by_offset = maml_alloc((size_t)(n ? n : 1) * sizeof *by_offset, c->err);
    if (!by_offset) return -1;
    for (int i = 0; i < n; i++) by_offset[i] = &entries[i];
    qsort(by_offset, (size_t)n, sizeof *by_offset, cmp_entry_offsets);
    int rc = check_tiling_sorted(c, by_offset, n);
    free(by_offset);
    return rc;
}

/* Copies checked, duplicate-free metadata into an empty set directly: tensorset_set_meta's
 * lookup per key would make a hostile header with millions of keys quadratic. */
static int store_metadata(const JValue *v, TensorSet *set, MamlError *err) {
    if (v->n == 0) return 0;
    set->meta = maml_calloc((size_t)v->n, sizeof *set->meta, err);
    if (!set->meta) return -1;
    set->cap_meta = v->n;
    for (int i = 0; i < v->n; i++) {
        MetaEntry *m = &set->meta[set->n_meta];
        m->key = maml_strdup(v->keys[i], err);
        m->value = m->key ? maml_strdup(v->items[i].str, err) : NULL;
        if (!m->value) {
            free(m->key);
            return -1;
        }
        set->n_meta++;
    }
    return 0;
}

static int parse_metadata(const Checker *c, const JValue *v, TensorSet *set) {
    char kb[NAME_BUF];
    if (v->kind != J_OBJECT)
        return maml_fail(c->err, "%s: __metadata__ must be an object of strings, found %s", c->path,
                         json_kind_name(v->kind));
    for (int i = 0; i < v->n; i++)
        if (v->items[i].kind != J_STRING)
            return maml_fail(c->err, "%s: __metadata__ '%s': value must be a string, found %s",
                             c->path, printable(v->keys[i], kb, sizeof kb),
                             json_kind_name(v->items[i].kind));
    bool failed;
    const char *dup = find_duplicate((const char *const *)v->keys, v->n, c->err, &failed);
    if (failed) return -1;
    if (dup)
        return maml_fail(c->err, "%s: __metadata__: duplicate key '%s'", c->path,
                         printable(dup, kb, sizeof kb));
    return store_metadata(v, set, c->err);
}

/* Checks the whole tree; fills entries (root->n slots) and the set's metadata. */
static int check_header(const Checker *c, const JValue *root, Entry *entries, int *n_entries,
                        TensorSet *set) {
    const JValue *meta = NULL;
    int n = 0;
    for (int i = 0; i < root->n; i++) {
        if (strcmp(root->keys[i], "__metadata__") == 0) {
            if (meta) return maml_fail(c->err, "%s: duplicate __metadata__", c->path);
            meta = &root->items[i];
        } else if (parse_entry(c, root->keys[i], &root->items[i], &entries[n++]) < 0) {
            return -1;
        }
    }
    *n_entries = n;
    if (check_unique_names(c, entries, n) < 0 || check_tiling(c, entries, n) < 0) return -1;
    return meta ? parse_metadata(c, meta, set) : 0;
}

/* ---------------------------------------------------------------- byte order -------------- */

static bool host_little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* The format is little-endian; on a big-endian host every element is reversed in place. */
static void swap_elements(void *data, size_t bytes, size_t elem) {
    unsigned char *p = data;
    for (size_t i = 0; i + elem <= bytes; i += elem)
        for (size_t a = i, b = i + elem - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b], p[b] = t;
        }
}

/* ---------------------------------------------------------------- reading ----------------- */

typedef struct {
    FILE *f;
    uint64_t file_size, header_len;
    char *header;
} Reader;

static int read_exact(FILE *f, void *buf, size_t n, const char *path, const char *what,
                      MamlError *err) {
    if (n && fread(buf, 1, n, f) != n)
        return maml_fail(err, "%s: reading %s failed: %s", path, what,
                         ferror(f) ? strerror(errno) : "unexpected end of file");
    return 0;
}

/* Opens the file and reads and bounds-checks the header length and the header. */
static int read_header(Reader *r, const char *path, MamlError *err) {
    struct stat st;
    unsigned char len8[8];
    r->f = fopen(path, "rb");
    if (!r->f) return maml_fail(err, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fileno(r->f), &st) != 0) return maml_fail(err, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return maml_fail(err, "%s: not a regular file", path);
    r->file_size = (uint64_t)st.st_size;
    if (r->file_size < 8)
        return maml_fail(err, "%s: file is %llu bytes, too short for the 8-byte header length",
                         path, (unsigned long long)r->file_size);
    if (read_exact(r->f, len8, 8, path, "the header length", err) < 0) return -1;
    for (int i = 7; i >= 0; i--) r->header_len = r->header_len << 8 | len8[i];
    if (r->header_len > ST_HEADER_MAX)
        return maml_fail(err, "%s: header length %llu exceeds the limit of %llu bytes", path,
                         (unsigned long long)r->header_len, ST_HEADER_MAX);
    if (r->header_len > r->file_size - 8)
        return maml_fail(err,
                         "%s: header length %llu extends beyond the end of the file (%llu "
                         "bytes)",
                         path, (unsigned long long)r->header_len, (unsigned long long)r->file_size);
    if (r->header_len == 0) return maml_fail(err, "%s: empty header", path);
    r->header = maml_alloc((size_t)r->header_len, err);
    if (!r->header) return -1;
    return read_exact(r->f, r->header, (size_t)r->header_len, path, "the header", err);
}

/* Appends a zero-filled tensor for e to a set with room for it, without tensorset_add's lookup
 * by name (names are already known to be unique), so a huge hostile header stays O(n log n). */
static Tensor *append_tensor(TensorSet *set, const Entry *e, MamlError *err) {
    size_t bytes = (size_t)(e->end - e->begin);
    Tensor *t = &set->items[set->n];
    t->name = maml_strdup(e->name, err);
    t->data = t->name ? maml_calloc(1, bytes ? bytes : 1, err) : NULL;
    if (!t->data) {
        free(t->name);
        return NULL;
    }
    t->dtype = e->dtype;
    t->shape = e->shape;
    set->n++;
    return t;
}

static int reserve_tensors(TensorSet *set, int n, MamlError *err) {
    set->items = maml_calloc((size_t)(n ? n : 1), sizeof *set->items, err);
    if (!set->items) return -1;
    set->cap = n ? n : 1;
    return 0;
}

/* Creates the tensors in header order and reads their bytes. */
static int load_tensors(Reader *r, const char *path, const Entry *entries, int n, TensorSet *set,
                        MamlError *err) {
    char nb[NAME_BUF], what[NAME_BUF + 16];
    if (reserve_tensors(set, n, err) < 0) return -1;
    for (int i = 0; i < n; i++) {
        const Entry *e = &entries[i];
        Tensor *t = append_tensor(set, e, err);
        if (!t) return -1;
        off_t at = (off_t)(8 + r->header_len + (uint64_t)e->begin);
        if (fseeko(r->f, at, SEEK_SET) != 0)
            return maml_fail(err, "%s: seeking to tensor '%s' failed: %s", path,
                             printable(e->name, nb, sizeof nb), strerror(errno));
        size_t bytes = (size_t)(e->end - e->begin);
        snprintf(what, sizeof what, "tensor '%s'", printable(e->name, nb, sizeof nb));
        if (read_exact(r->f, t->data, bytes, path, what, err) < 0) return -1;
        if (!host_little_endian()) swap_elements(t->data, bytes, tensor_dtype_size(e->dtype));
    }
    return 0;
}

static int parse_and_load(Reader *r, const char *path, TensorSet *set, MamlError *err) {
    JValue root;
    Checker c = {.path = path, .err = err, .data_size = r->file_size - 8 - r->header_len};
    if (json_parse(r->header, (size_t)r->header_len, path, &root, err) < 0) {
        json_free(&root);
        return -1;
    }
    Entry *entries = maml_calloc((size_t)(root.n ? root.n : 1), sizeof *entries, err);
    int n = 0;
    int rc = entries ? 0 : -1;
    if (rc == 0) rc = check_header(&c, &root, entries, &n, set);
    if (rc == 0) rc = load_tensors(r, path, entries, n, set, err);
    free(entries);
    json_free(&root);
    return rc;
}

int safetensors_read(const char *path, TensorSet *out, MamlError *err) {
    Reader r = {0};
    TensorSet set;
    tensorset_init(&set);
    int rc = read_header(&r, path, err);
    if (rc == 0) rc = parse_and_load(&r, path, &set, err);
    if (r.f) fclose(r.f);
    free(r.header);
    tensorset_free(out);
    if (rc < 0) {
        tensorset_free(&set);
        return -1;
    }
    *out = set;
    return 0;
}

/* ---------------------------------------------------------------- header writing ---------- */

typedef struct {
    char *s;
    size_t len, cap;
    bool failed;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return (void)(b->failed = true);
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_str(Buf *b, const char *s) {
    buf_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_printf(Buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) buf_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal: quote, backslash and control characters escaped, UTF-8 as is. */
static void buf_json_string(Buf *b, const char *s) {
    buf_str(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            buf_printf(b, "\\u%04x", c);
        else
            buf_put(b, s, 1);
    }
    buf_str(b, "\"");
}

static int check_writable_name(const char *path, const char *what, const char *s, MamlError *err) {
    char nb[NAME_BUF];
    if (!*s) return maml_fail(err, "%s: %s must not be empty", path, what);
    if (!utf8_valid(s))
        return maml_fail(err, "%s: %s '%s' is not valid UTF-8", path, what,
                         printable(s, nb, sizeof nb));
    return 0;
}

static int check_writable(const char *path, const TensorSet *set, MamlError *err) {
    for (int i = 0; i < set->n; i++) {
        if (check_writable_name(path, "tensor name", set->items[i].name, err) < 0) return -1;
        if (strcmp(set->items[i].name, "__metadata__") == 0)
            return maml_fail(err, "%s: '__metadata__' is reserved and cannot name a tensor", path);
    }
    for (int i = 0; i < set->n_meta; i++)
        if (check_writable_name(path, "metadata key", set->meta[i].key, err) < 0 ||
            (!utf8_valid(set->meta[i].value) &&
             maml_fail(err, "%s: metadata value of '%s' is not valid UTF-8", path,
                       set->meta[i].key) < 0))
            return -1;
    return 0;
}

static size_t tensor_nbytes(const Tensor *t) {
    return (size_t)shape_numel(t->shape) * tensor_dtype_size(t->dtype);
}

static void header_metadata(Buf *b, const TensorSet *set) {
    buf_str(b, "\"__metadata__\":{");
    for (int i = 0; i < set->n_meta; i++) {
        if (i) buf_str(b, ",");
        buf_json_string(b, set->meta[i].key);
        buf_str(b, ":");
        buf_json_string(b, set->meta[i].value);
    }
    buf_str(b, "}");
}

/* The JSON header, metadata first as the reference writer does, tensors in set order and
 * packed back to back; padded with spaces so the data block starts 8-byte aligned. */
static void build_header(Buf *b, const TensorSet *set) {
    uint64_t offset = 0;
    buf_str(b, "{");
    if (set->n_meta) header_metadata(b, set);
    for (int i = 0; i < set->n; i++) {
        const Tensor *t = &set->items[i];
        if (i || set->n_meta) buf_str(b, ",");
        buf_json_string(b, t->name);
        buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", tensor_dtype_name(t->dtype));
        for (int d = 0; d < t->shape.rank; d++)
            buf_printf(b, "%s%lld", d ? "," : "", (long long)t->shape.dims[d]);
        uint64_t end = offset + tensor_nbytes(t);
        buf_printf(b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                   (unsigned long long)end);
        offset = end;
    }
    buf_str(b, "}");
    while (!b->failed && b->len % 8) buf_str(b, " ");
}

/* ---------------------------------------------------------------- atomic file writing ----- */

static int write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        if (w == 0) return errno = EIO, -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Tensor data in little-endian order; big-endian hosts swap through a bounded scratch buffer. */
static int write_tensor_data(int fd, const Tensor *t) {
    size_t bytes = tensor_nbytes(t), elem = tensor_dtype_size(t->dtype);
    if (host_little_endian()) return write_all(fd, t->data, bytes);
    unsigned char chunk[4096];
    for (size_t at = 0; at < bytes; at += sizeof chunk) {
        size_t n = bytes - at < sizeof chunk ? bytes - at : sizeof chunk;
        memcpy(chunk, (const unsigned char *)t->data + at, n);
        swap_elements(chunk, n, elem);
        if (write_all(fd, chunk, n) < 0) return -1;
    }
    return 0;
}

static int write_contents(int fd, const Buf *header, const TensorSet *set) {
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)header->len >> (8 * i));
    if (write_all(fd, len8, 8) < 0 || write_all(fd, header->s, header->len) < 0) return -1;
    for (int i = 0; i < set->n; i++)
        if (write_tensor_data(fd, &set->items[i]) < 0) return -1;
    return 0;
}

/* Writes the temporary file completely and durably; on failure removes it. */
static int write_temp(const char *path, const char *tmp, const Buf *header, const TensorSet *set,
                      MamlError *err) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return maml_fail(err, "%s: cannot create temporary file '%s': %s", path, tmp,
                         strerror(errno));
    const char *step = "writing";
    int rc = write_contents(fd, header, set);
    if (rc == 0 && (rc = fsync(fd)) != 0) step = "syncing";
    int saved = errno;
    /* close can report a deferred write error (NFS, quotas) */
    if (close(fd) != 0 && rc == 0) rc = -1, step = "closing", saved = errno;
    if (rc == 0) return 0;
    unlink(tmp);
    return maml_fail(err, "%s: %s temporary file '%s' failed: %s", path, step, tmp,
                     strerror(saved));
}

/* Makes the rename durable. Some file systems cannot sync directories (EINVAL); that is no
 * reason to fail a write that is otherwise complete. */
static int sync_parent_dir(const char *path, MamlError *err) {
    char *dir = maml_strdup(path, err);
    if (!dir) return -1;
    char *slash = strrchr(dir, '/');
    const char *name = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    int rc = 0, fd = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
        rc = maml_fail(err, "%s: written, but syncing directory '%s' failed: %s", path, name,
                       strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

int safetensors_write(const char *path, const TensorSet *set, MamlError *err) {
    if (check_writable(path, set, err) < 0) return -1;
    Buf header = {0};
    build_header(&header, set);
    if (header.failed) {
        free(header.s);
        return maml_fail(err, "%s: out of memory building the header", path);
    }
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int rc = n < 0 || (size_t)n >= sizeof tmp ? maml_fail(err, "%s: path too long", path) : 0;
    if (rc == 0) rc = write_temp(path, tmp, &header, set, err);
    free(header.s);
    if (rc < 0) return -1;
    if (rename(tmp, path) != 0) {
        int saved = errno;
        unlink(tmp);
        return maml_fail(err, "%s: cannot replace the file with '%s': %s", path, tmp,
                         strerror(saved));
    }
    return sync_parent_dir(path, err);
}
