#include "kernel_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- hash ---------------------------------------------------------------------------------- */

static const uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL,
                      P3 = 0x165667B19E3779F9ULL, P4 = 0x85EBCA77C2B2AE63ULL,
                      P5 = 0x27D4EB2F165667C5ULL;

static uint64_t rotl64(uint64_t x, int r) {
    return (x << r) | (x >> (64 - r));
}

static uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void hash_word(Hash64 *h, uint64_t w) {
    uint64_t k = rotl64(w * P2, 31) * P1;
    h->acc = rotl64(h->acc ^ k, 27) * P1 + P4;
}

void hash64_init(Hash64 *h, uint64_t seed) {
    memset(h, 0, sizeof *h);
    h->acc = seed + P5;
}

void hash64_update(Hash64 *h, const void *data, size_t size) {
    const uint8_t *p = data;
    h->total += size;
    while (size > 0 && h->nbuf > 0) { /* finish a partial word first */
        h->buf[h->nbuf++] = *p++;
        size--;
        if (h->nbuf == 8) {
            hash_word(h, load64(h->buf));
            h->nbuf = 0;
        }
    }
    for (; size >= 8; p += 8, size -= 8) hash_word(h, load64(p));
    memcpy(h->buf + h->nbuf, p, size);
    h->nbuf += (unsigned)size;
}

uint64_t hash64_final(const Hash64 *h) {
    uint64_t acc = h->acc + h->total;
    unsigned i = 0;
    if (h->nbuf >= 4) {
        uint32_t w;
        memcpy(&w, h->buf, 4);
        acc = rotl64(acc ^ (uint64_t)w * P1, 23) * P2 + P3;
        i = 4;
    }
    for (; i < h->nbuf; i++) acc = rotl64(acc ^ h->buf[i] * P5, 11) * P1;
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P3;
    return acc ^ (acc >> 32);
}

uint64_t hash64(const void *data, size_t size, uint64_t seed) {
    Hash64 h;
    hash64_init(&h, seed);
    hash64_update(&h, data, size);
    return hash64_final(&h);
}

/* ---- keys ---------------------------------------------------------------------------------- */

/* Two seeds give two hashes of the same material: 128 bits make an accidental collision (which
 * would load the wrong kernel) out of the question. */
static const uint64_t SEED_LO = 0, SEED_HI = 0x6d616d6c632d6b63ULL; /* "mamlc-kc" */

void cache_key_begin(CacheKeyHasher *k) {
    hash64_init(&k->lo, SEED_LO);
    hash64_init(&k->hi, SEED_HI);
}

void cache_key_add(CacheKeyHasher *k, const void *data, size_t size) {
    uint64_t n = size;
    hash64_update(&k->lo, &n, sizeof n);
    hash64_update(&k->hi, &n, sizeof n);
    hash64_update(&k->lo, data, size);
    hash64_update(&k->hi, data, size);
}

void cache_key_add_str(CacheKeyHasher *k, const char *s) {
    if (s) {
        cache_key_add(k, s, strlen(s));
        return;
    }
    uint64_t none = UINT64_MAX; /* a length prefix no real part has */
    hash64_update(&k->lo, &none, sizeof none);
    hash64_update(&k->hi, &none, sizeof none);
}

void cache_key_add_int(CacheKeyHasher *k, int64_t v) {
    cache_key_add(k, &v, sizeof v);
}

CacheKey cache_key_end(const CacheKeyHasher *k) {
    return (CacheKey){hash64_final(&k->lo), hash64_final(&k->hi)};
}

/* ---- entries ------------------------------------------------------------------------------- */

/* Header: magic, key.lo, key.hi, payload size, payload hash, hash of the preceding 40 bytes; the
 * integers in host byte order (a cache belongs to one machine). */
#define ENTRY_MAGIC "MAMLKC01"
enum { HEADER_WORDS = 6, HEADER_SIZE = HEADER_WORDS * 8 };
static const uint64_t PAYLOAD_SEED = 0x7061796c6f6164ULL; /* "payload" */
static const size_t MAX_PAYLOAD = (size_t)1 << 30;

static void make_header(uint8_t *h, CacheKey key, const void *data, size_t size) {
    uint64_t w[HEADER_WORDS];
    memcpy(&w[0], ENTRY_MAGIC, 8);
    w[1] = key.lo;
    w[2] = key.hi;
    w[3] = size;
    w[4] = hash64(data, size, PAYLOAD_SEED);
    w[5] = hash64(w, 40, PAYLOAD_SEED);
    memcpy(h, w, HEADER_SIZE);
}

/* Checks a whole entry file's bytes; returns NULL if it is sound, else what is wrong with it. */
static const char *entry_problem(const uint8_t *file, size_t size, CacheKey key) {
    if (size < HEADER_SIZE) return "shorter than its header";
    uint64_t w[HEADER_WORDS];
    memcpy(w, file, HEADER_SIZE);
    if (memcmp(&w[0], ENTRY_MAGIC, 8) != 0) return "bad magic";
    if (w[5] != hash64(w, 40, PAYLOAD_SEED)) return "header checksum mismatch";
    if (w[1] != key.lo || w[2] != key.hi) return "key mismatch";
    if (w[3] != size - HEADER_SIZE) return "payload size mismatch (truncated?)";
    if (w[4] != hash64(file + HEADER_SIZE, size - HEADER_SIZE, PAYLOAD_SEED))
        return "payload checksum mismatch";
    return NULL;
}

void kernel_cache_path(const KernelCache *c, CacheKey key, char *buf, size_t size) {
    snprintf(buf, size, "%s/%016" PRIx64 "%016" PRIx64 ".kc", c->dir, key.lo, key.hi);
}

/* ---- directories --------------------------------------------------------------------------- */

int kernel_cache_root(char *buf, size_t size, MamlError *err) {
    const char *env = getenv("MAMLC_CACHE");
    int n;
    if (env && *env) {
        n = snprintf(buf, size, "%s", env);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return maml_fail(err, "kernel cache: neither MAMLC_CACHE nor HOME is set");
        n = snprintf(buf, size, "%s/.cache/mamlc", home);
    }
    if (n < 0 || (size_t)n >= size) return maml_fail(err, "kernel cache: root path too long");
    return 0;
}

/* mkdir -p: creates path and its missing parents. */
static int make_dirs(const char *path, MamlError *err) {
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return maml_fail(err, "kernel cache: path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        bool end = *p == '\0';
        if (*p != '/' && !end) continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return maml_fail(err, "kernel cache: cannot create %s: %s", buf, strerror(errno));
        if (end) break;
        *p = '/';
    }
    return 0;
}

int kernel_cache_open(KernelCache *c, const char *root, const char *sub, bool require,
                      MamlError *err) {
    char rootbuf[1024];
    memset(c, 0, sizeof *c);
    c->require = require;
    if (!root) {
        if (kernel_cache_root(rootbuf, sizeof rootbuf, err)) return -1;
        root = rootbuf;
    }
    int n = snprintf(c->dir, sizeof c->dir, "%s%s%s", root, sub && *sub ? "/" : "", sub ? sub : "");
    if (n < 0 || (size_t)n >= sizeof c->dir)
        return maml_fail(err, "kernel cache: directory path too long");
    if (make_dirs(c->dir, err)) return -1;
    if (access(c->dir, W_OK) != 0)
        return maml_fail(err, "kernel cache: %s is not writable: %s", c->dir, strerror(errno));
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------- */

/* Reads the whole file at fd into a new buffer (plus a NUL byte). Returns 0 or -1 with errno. */
static int read_all(int fd, uint8_t **out, size_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    if (st.st_size < 0 || (uint64_t)st.st_size > MAX_PAYLOAD + HEADER_SIZE) {
        errno = EFBIG;
        return -1;
    }
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(n + 1);
    if (!buf) return -1;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* shrank under us: the checks below see a short file */
        got += (size_t)r;
    }
    buf[got] = 0;
    *out = buf;
    *size = got;
    return 0;
}

static int report_miss(const KernelCache *c, const char *what, const char *path,
                       const char *problem, MamlError *err) {
    if (!c->require) return 0;
    if (problem)
        return maml_fail(err, "--require-cache: kernel cache miss for %s (entry %s is corrupt: %s)",
                         what, path, problem);
    return maml_fail(err, "--require-cache: kernel cache miss for %s (no entry %s)", what, path);
}

int kernel_cache_get(const KernelCache *c, CacheKey key, const char *what, void **data,
                     size_t *size, CacheLookup *lookup, MamlError *err) {
    char path[1100];
    kernel_cache_path(c, key, path, sizeof path);
    *data = NULL;
    *size = 0;
    *lookup = CACHE_MISS;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return report_miss(c, what, path, NULL, err);
        return maml_fail(err, "kernel cache: cannot open %s: %s", path, strerror(errno));
    }
    uint8_t *file;
    size_t n;
    int rc = read_all(fd, &file, &n);
    int saved = errno;
    close(fd);
    if (rc) return maml_fail(err, "kernel cache: cannot read %s: %s", path, strerror(saved));
    const char *problem = entry_problem(file, n, key);
    if (problem) {
        free(file);
        *lookup = CACHE_CORRUPT;
        return report_miss(c, what, path, problem, err);
    }
    memmove(file, file + HEADER_SIZE, n - HEADER_SIZE + 1); /* keep the trailing NUL */
    *data = file;
    *size = n - HEADER_SIZE;
    *lookup = CACHE_HIT;
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------- */

static int write_all(int fd, const void *data, size_t size) {
    const uint8_t *p = data;
    while (size > 0) {
        ssize_t w = write(fd, p, size);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        size -= (size_t)w;
    }
    return 0;
}

/* Writes header and payload to fd and closes it; returns 0 or -1 with errno. */
static int write_entry(int fd, CacheKey key, const void *data, size_t size) {
    uint8_t header[HEADER_SIZE];
    make_header(header, key, data, size);
    int rc = write_all(fd, header, sizeof header);
    if (rc == 0) rc = write_all(fd, data, size);
    if (rc == 0) rc = fchmod(fd, 0644); /* mkstemp makes 0600 */
    int saved = errno;
    if (close(fd) != 0 && rc == 0) return -1;
    errno = saved;
    return rc;
}

int kernel_cache_put(const KernelCache *c, CacheKey key, const void *data, size_t size,
                     MamlError *err) {
    if (size > MAX_PAYLOAD)
        return maml_fail(err, "kernel cache: entry of %zu bytes is too large", size);
    char path[1100], tmp[1100];
    kernel_cache_path(c, key, path, sizeof path);
    /* The temporary lives in the same directory, so rename() is atomic; its name never ends in
     * .kc, so readers never open it. No fsync: a file torn by a crash fails its checksum. */
    snprintf(tmp, sizeof tmp, "%s/.tmp-%016" PRIx64 "-XXXXXX", c->dir, key.lo);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return maml_fail(err, "kernel cache: cannot create a file in %s: %s", c->dir,
                         strerror(errno));
    if (write_entry(fd, key, data, size) != 0 || rename(tmp, path) != 0) {
        int saved = errno;
        unlink(tmp);
        return maml_fail(err, "kernel cache: cannot write %s: %s", path, strerror(saved));
    }
    return 0;
}
