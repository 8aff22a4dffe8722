/* A content-addressed disk cache for compiled kernels: CUBIN/PTX images for the cuda backend,
 * and anything else a backend wants to keep between runs (the cpu backend's shared objects).
 *
 * An entry's key is a 128-bit hash (two independently seeded 64-bit hashes) of everything that
 * determines its content: source, options, compiler version. Each entry is one file
 * DIR/<key>.kc: a 48-byte header (magic, key, payload size and checksum, header checksum), then
 * the payload. Entries are written to a temporary file in the same directory and renamed into
 * place, so a reader (another process too) sees the complete old entry, the complete new one, or
 * none; a truncated or damaged file (a crash, a full disk, a stray edit) fails its checks, counts
 * as a miss and is rebuilt. The cache root is $MAMLC_CACHE, else ~/.cache/mamlc. */
#ifndef MAMLC_KERNEL_CACHE_H
#define MAMLC_KERNEL_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* An incremental 64-bit hash (XXH64's single-lane round and avalanche; not cryptographic). */
typedef struct {
    uint64_t acc, total;
    uint8_t buf[8];
    unsigned nbuf;
} Hash64;

void hash64_init(Hash64 *h, uint64_t seed);
void hash64_update(Hash64 *h, const void *data, size_t size);
uint64_t hash64_final(const Hash64 *h);
/* One-shot hash of a buffer. */
uint64_t hash64(const void *data, size_t size, uint64_t seed);

typedef struct {
    uint64_t lo, hi;
} CacheKey;

/* Builds a CacheKey from parts. Each part is length-prefixed, so ("ab", "c") and ("a", "bc")
 * give different keys. */
typedef struct {
    Hash64 lo, hi;
} CacheKeyHasher;

void cache_key_begin(CacheKeyHasher *k);
void cache_key_add(CacheKeyHasher *k, const void *data, size_t size);
/* Adds a NUL-terminated string; NULL is added as a part distinct from every string. */
void cache_key_add_str(CacheKeyHasher *k, const char *s);
void cache_key_add_int(CacheKeyHasher *k, int64_t v);
CacheKey cache_key_end(const CacheKeyHasher *k);

/* An open cache directory. Nothing in it changes after kernel_cache_open, so threads may share
 * one. */
typedef struct {
    char dir[1024];
    bool require; /* --require-cache: a miss is an error */
} KernelCache;

typedef enum {
    CACHE_HIT,
    CACHE_MISS,    /* no entry */
    CACHE_CORRUPT, /* an entry that failed its checks: treated as a miss, rebuilt by the next put */
} CacheLookup;

/* Writes the cache root into buf: $MAMLC_CACHE when set and not empty, else $HOME/.cache/mamlc. */
int kernel_cache_root(char *buf, size_t size, MamlError *err);

/* Opens (creating it and its parents) the directory ROOT/SUB, ROOT being kernel_cache_root() when
 * root is NULL; e.g. sub "cuda" for NVRTC images. Fails when it cannot be created or written. */
int kernel_cache_open(KernelCache *c, const char *root, const char *sub, bool require,
                      MamlError *err);

/* Looks key up. On a hit *data (malloc'ed, the caller frees it; one extra NUL byte follows the
 * payload so text payloads can be used as strings) and *size receive the payload. *lookup says
 * hit, miss or corrupt. Returns 0, or -1 when the file cannot be read, or on a miss when the cache
 * was opened with require ("--require-cache: kernel cache miss for WHAT ..."). */
int kernel_cache_get(const KernelCache *c, CacheKey key, const char *what, void **data,
                     size_t *size, CacheLookup *lookup, MamlError *err);

/* Stores the payload under key atomically (temporary file + rename), replacing any entry. */
int kernel_cache_put(const KernelCache *c, CacheKey key, const void *data, size_t size,
                     MamlError *err);

/* The entry's file name, DIR/<32 hex digits>.kc. */
void kernel_cache_path(const KernelCache *c, CacheKey key, char *buf, size_t size);

#endif
