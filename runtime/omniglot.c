/* Omniglot archives -> packed 28x28 uint8 images, with an on-disk cache.
 *
 * Decoding is two passes over the zip: a serial scan of the central directory that validates
 * the layout and records each PNG's position, then a parallel decode in which every OpenMP
 * thread opens its own minizip handle (a handle is a file cursor, so it cannot be shared) and
 * inflates, decodes and resizes the entries it is given straight into their final slots. */
#include "omniglot.h"

#include <errno.h>
#include <limits.h>
#include <minizip/unzip.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "clock.h"
#include "resize.h"

#define ENTRY_NAME_MAX 1024
#define PNG_MAX_BYTES (16u << 20) /* far above any 105x105 PNG; guards a corrupt size field */

/* ------------------------------------------------------------------------------------------ */
/* Zip scan: list PNG entries, check the layout                                                */

typedef struct {
    char *name;
    unz64_file_pos pos;
    uint64_t size;
} ZipEntry;

typedef struct {
    ZipEntry *v;
    int n, cap;
} EntryList;

static void entries_free(EntryList *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i].name);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int entries_push(EntryList *l, const char *name, unz64_file_pos pos, uint64_t size,
                        MamlError *err) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 1024;
        ZipEntry *v = maml_realloc(l->v, (size_t)cap, sizeof *v, err);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    char *copy = maml_strdup(name, err);
    if (!copy) return -1;
    l->v[l->n++] = (ZipEntry){copy, pos, size};
    return 0;
}

/* Entries an archiver adds on its own (macOS resource forks, .DS_Store) carry no data and are
 * skipped, as are directory entries. */
static bool is_junk_entry(const char *name) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t n = strlen(name);
    return (n > 0 && name[n - 1] == '/') || strncmp(name, "__MACOSX/", 9) == 0 || base[0] == '.';
}

/* ROOT/<Alphabet>/characterNN/<file>.png, every component non-empty. */
static bool entry_matches_layout(const char *name) {
    const char *p[4];
    int parts = 0;
    p[parts++] = name;
    for (const char *c = name; *c; c++) {
        if (*c != '/') continue;
        if (parts == 4 || c == p[parts - 1]) return false;
        p[parts++] = c + 1;
    }
    if (parts != 4 || !*p[3]) return false;
    if (strncmp(p[2], "character", 9) != 0) return false;
    const char *d = p[2] + 9;
    if (*d == '/') return false;
    for (; *d != '/'; d++)
        if (*d < '0' || *d > '9') return false;
    size_t n = strlen(p[3]);
    return n > 4 && strcmp(p[3] + n - 4, ".png") == 0;
}

static bool same_root(const char *a, const char *b) {
    size_t n = (size_t)(strchr(a, '/') - a);
    return strncmp(a, b, n) == 0 && b[n] == '/';
}

static int scan_entry(const char *zip_path, unzFile z, EntryList *out, MamlError *err) {
    char name[ENTRY_NAME_MAX];
    unz_file_info64 fi;
    if (unzGetCurrentFileInfo64(z, &fi, name, sizeof name, NULL, 0, NULL, 0) != UNZ_OK)
        return maml_fail(err, "%s: corrupt zip archive (cannot read an entry of its directory)",
                         zip_path);
    if (fi.size_filename >= sizeof name)
        return maml_fail(err, "%s: entry name too long (%lu bytes)", zip_path, fi.size_filename);
    if (is_junk_entry(name)) return 0;
    if (!entry_matches_layout(name))
        return maml_fail(err,
                         "%s: unexpected entry '%s' (expected ROOT/<Alphabet>/characterNN/"
                         "XXXX_YY.png)",
                         zip_path, name);
    if (out->n > 0 && !same_root(out->v[0].name, name))
        return maml_fail(err, "%s: entry '%s' is outside the archive's root folder of '%s'",
                         zip_path, name, out->v[0].name);
    if (fi.uncompressed_size > PNG_MAX_BYTES)
        return maml_fail(err, "%s: entry '%s' is implausibly large (%llu bytes)", zip_path, name,
                         (unsigned long long)fi.uncompressed_size);
    unz64_file_pos pos;
    if (unzGetFilePos64(z, &pos) != UNZ_OK)
        return maml_fail(err, "%s: corrupt zip archive at entry '%s'", zip_path, name);
    return entries_push(out, name, pos, fi.uncompressed_size, err);
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const ZipEntry *)a)->name, ((const ZipEntry *)b)->name);
}

static int scan_zip(const char *zip_path, EntryList *out, MamlError *err) {
    memset(out, 0, sizeof *out);
    unzFile z = unzOpen64(zip_path);
    if (!z)
        return maml_fail(err, "%s: not a readable zip archive (corrupt or truncated?)", zip_path);
    int rc = unzGoToFirstFile(z), failed = 0;
    while (rc == UNZ_OK && !failed) {
        failed = scan_entry(zip_path, z, out, err) != 0;
        if (!failed) rc = unzGoToNextFile(z);
    }
    unzClose(z);
    if (!failed && rc != UNZ_END_OF_LIST_OF_FILE)
        failed = maml_fail(err, "%s: corrupt zip archive (directory unreadable)", zip_path);
    if (failed) {
        entries_free(out);
        return -1;
    }
    if (out->n == 0) {
        entries_free(out);
        return maml_fail(err,
                         "%s: no PNG images in the archive (expected ROOT/<Alphabet>/"
                         "characterNN/XXXX_YY.png)",
                         zip_path);
    }
    qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_entry);
    return 0;
}

/* Length of "ROOT/Alphabet/characterNN" in an entry name. */
static size_t dir_len(const char *name) {
    return (size_t)(strrchr(name, '/') - name);
}

static bool same_dir(const char *a, const char *b) {
    size_t n = dir_len(a);
    return n == dir_len(b) && strncmp(a, b, n) == 0;
}

/* Every character folder must hold exactly OMNIGLOT_DRAWINGS images; returns the count of
 * characters. */
static int check_characters(const char *zip_path, const EntryList *l, MamlError *err) {
    int chars = 0;
    for (int i = 0; i < l->n;) {
        int j = i;
        while (j < l->n && same_dir(l->v[i].name, l->v[j].name)) j++;
        if (j - i != OMNIGLOT_DRAWINGS)
            return maml_fail(err, "%s: folder '%.*s' has %d drawings, expected %d", zip_path,
                             (int)dir_len(l->v[i].name), l->v[i].name, j - i, OMNIGLOT_DRAWINGS);
        chars++;
        i = j;
    }
    return chars;
}

/* ------------------------------------------------------------------------------------------ */
/* PNG decode                                                                                  */

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    char message[200];
} PngSource;

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    PngSource *src = png_get_io_ptr(png);
    if (n > src->size - src->pos) png_error(png, "truncated PNG data");
    memcpy(out, src->data + src->pos, n);
    src->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg) {
    PngSource *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* Whatever the PNG's format, ask libpng for 8-bit gray: 1-bit gray (Omniglot) expands to 0/255,
 * exactly Pillow's mode "1" -> "L" values. */
static void png_request_gray8(png_structp png, png_infop info) {
    int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png);
    if (depth < 8) png_set_packing(png);
    if (color & PNG_COLOR_MASK_ALPHA || png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_strip_alpha(png);
    if (color & PNG_COLOR_MASK_COLOR || color == PNG_COLOR_TYPE_PALETTE)
        png_set_rgb_to_gray_fixed(png, 1, -1, -1);
    png_read_update_info(png, info);
}

/* Decodes a PNG that must be OMNIGLOT_SRC_SIZE square into out (8-bit gray). On failure
 * src->message says why. */
static int decode_png(PngSource *src, uint8_t *out) {
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, src, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        snprintf(src->message, sizeof src->message, "out of memory in libpng");
        return -1;
    }
    png_bytep rows[OMNIGLOT_SRC_SIZE];
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_read_fn(png, src, png_read_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (w != OMNIGLOT_SRC_SIZE || h != OMNIGLOT_SRC_SIZE) png_error(png, "image is not 105x105");
    png_request_gray8(png, info);
    if (png_get_rowbytes(png, info) != w) png_error(png, "cannot convert to 8-bit gray");
    for (int y = 0; y < OMNIGLOT_SRC_SIZE; y++) rows[y] = out + (size_t)y * OMNIGLOT_SRC_SIZE;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Parallel decode of all entries                                                              */

typedef struct {
    const char *zip_path;
    const EntryList *entries;
    const ResizePlan *plan;
    uint8_t *pixels; /* one image_size^2 slot per entry, in entry order */
    int fail_at;     /* lowest failing entry so far; entries above it are skipped */
    MamlError *err;
} DecodeJob;

typedef struct {
    unzFile zip;
    uint8_t *png, *gray, *scratch;
    size_t png_cap;
} DecodeWorker;

/* Inflates entry e into w->png; returns a reason on failure, NULL on success. */
static const char *read_entry(DecodeWorker *w, const ZipEntry *e) {
    if (e->size > w->png_cap) {
        uint8_t *p = realloc(w->png, (size_t)e->size);
        if (!p) return "out of memory";
        w->png = p;
        w->png_cap = (size_t)e->size;
    }
    if (!w->zip || unzGoToFilePos64(w->zip, &e->pos) != UNZ_OK ||
        unzOpenCurrentFile(w->zip) != UNZ_OK)
        return "corrupt zip archive (cannot open the entry)";
    int got = e->size ? unzReadCurrentFile(w->zip, w->png, (unsigned)e->size) : 0;
    char extra;
    int more = unzReadCurrentFile(w->zip, &extra, 1);
    int closed = unzCloseCurrentFile(w->zip); /* checks the CRC once the entry is fully read */
    if (closed == UNZ_CRCERROR) return "corrupt zip data (CRC mismatch)";
    if (got != (int)e->size || more != 0 || closed != UNZ_OK) return "corrupt zip data";
    return NULL;
}

static void record_failure(DecodeJob *job, int i, const char *msg) {
#pragma omp critical(omniglot_fail)
    {
        if (i < job->fail_at) {
#pragma omp atomic write
            job->fail_at = i;
            maml_fail(job->err, "%s: entry '%s': %s", job->zip_path, job->entries->v[i].name, msg);
        }
    }
}

static void decode_one(DecodeJob *job, DecodeWorker *w, int i) {
    const ZipEntry *e = &job->entries->v[i];
    const char *why = read_entry(w, e);
    if (why) {
        record_failure(job, i, why);
        return;
    }
    PngSource src = {w->png, (size_t)e->size, 0, ""};
    if (decode_png(&src, w->gray)) {
        char msg[256];
        snprintf(msg, sizeof msg, "PNG decode failed: %s", src.message);
        record_failure(job, i, msg);
        return;
    }
    size_t slot = (size_t)job->plan->out_w * job->plan->out_h;
    resize_apply(job->plan, w->gray, job->pixels + slot * (size_t)i, w->scratch);
}

static void decode_all(DecodeJob *job) {
#pragma omp parallel
    {
        DecodeWorker w = {0};
        w.zip = unzOpen64(job->zip_path);
        w.gray = malloc((size_t)OMNIGLOT_SRC_SIZE * OMNIGLOT_SRC_SIZE);
        w.scratch = malloc((size_t)resize_scratch_size(job->plan) + 1);
#pragma omp for schedule(dynamic, 64)
        for (int i = 0; i < job->entries->n; i++) {
            int fail_at;
#pragma omp atomic read
            fail_at = job->fail_at;
            if (i > fail_at) continue;
            if (!w.gray || !w.scratch)
                record_failure(job, i, "out of memory");
            else
                decode_one(job, &w, i);
        }
        if (w.zip) unzClose(w.zip);
        free(w.png);
        free(w.gray);
        free(w.scratch);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Archive struct                                                                              */

void omniglot_free(OmniglotArchive *a) {
    if (!a) return;
    for (int i = 0; a->characters && i < a->n_characters; i++) free(a->characters[i]);
    for (int i = 0; a->alphabets && i < a->n_alphabets; i++) free(a->alphabets[i]);
    free(a->characters);
    free(a->alphabets);
    free(a->alphabet_of);
    free(a->pixels);
    free(a->path);
    memset(a, 0, sizeof *a);
}

const uint8_t *omniglot_image(const OmniglotArchive *a, int c, int d) {
    size_t px = (size_t)a->image_size * a->image_size;
    return a->pixels + ((size_t)c * OMNIGLOT_DRAWINGS + (size_t)d) * px;
}

/* Derives the alphabet list from the characters ("Alphabet/characterNN"): since characters are
 * in path order, each alphabet's characters are contiguous. */
static int build_alphabets(OmniglotArchive *a, MamlError *err) {
    a->alphabet_of = maml_calloc((size_t)a->n_characters, sizeof(int), err);
    a->alphabets = maml_calloc((size_t)a->n_characters, sizeof(char *), err);
    if (!a->alphabet_of || !a->alphabets) return -1;
    for (int c = 0; c < a->n_characters; c++) {
        const char *name = a->characters[c], *slash = strchr(name, '/');
        if (!slash || slash == name) return maml_fail(err, "bad character name '%s'", name);
        size_t n = (size_t)(slash - name);
        const char *last = a->n_alphabets ? a->alphabets[a->n_alphabets - 1] : NULL;
        if (!last || strlen(last) != n || strncmp(last, name, n) != 0) {
            char *copy = maml_alloc(n + 1, err);
            if (!copy) return -1;
            memcpy(copy, name, n);
            copy[n] = '\0';
            a->alphabets[a->n_alphabets++] = copy;
        }
        a->alphabet_of[c] = a->n_alphabets - 1;
    }
    return 0;
}

/* Fills characters[] with "Alphabet/characterNN" (the folder without the root). */
static int names_from_entries(OmniglotArchive *a, const EntryList *l, MamlError *err) {
    a->characters = maml_calloc((size_t)a->n_characters, sizeof(char *), err);
    if (!a->characters) return -1;
    for (int c = 0; c < a->n_characters; c++) {
        const char *name = l->v[c * OMNIGLOT_DRAWINGS].name;
        const char *start = strchr(name, '/') + 1;
        size_t n = dir_len(name) - (size_t)(start - name);
        a->characters[c] = maml_alloc(n + 1, err);
        if (!a->characters[c]) return -1;
        memcpy(a->characters[c], start, n);
        a->characters[c][n] = '\0';
    }
    return 0;
}

static int archive_setup(OmniglotArchive *a, const char *zip_path, ResizeFilter filter,
                         int image_size, int n_characters, MamlError *err) {
    a->path = maml_strdup(zip_path, err);
    a->filter = filter;
    a->image_size = image_size;
    a->n_characters = n_characters;
    size_t bytes = (size_t)n_characters * OMNIGLOT_DRAWINGS * image_size * image_size;
    a->pixels = maml_alloc(bytes, err);
    return a->path && a->pixels ? 0 : -1;
}

static int decode_archive(const char *zip_path, ResizeFilter filter, int image_size,
                          OmniglotArchive *out, MamlError *err) {
    EntryList l;
    if (scan_zip(zip_path, &l, err)) return -1;
    ResizePlan plan;
    int chars = check_characters(zip_path, &l, err);
    if (chars < 0 || resize_plan_init(&plan, filter, OMNIGLOT_SRC_SIZE, OMNIGLOT_SRC_SIZE,
                                      image_size, image_size, err)) {
        entries_free(&l);
        return -1;
    }
    int rc = archive_setup(out, zip_path, filter, image_size, chars, err);
    if (!rc) {
        DecodeJob job = {zip_path, &l, &plan, out->pixels, INT_MAX, err};
        decode_all(&job);
        rc = job.fail_at == INT_MAX ? 0 : -1;
    }
    if (!rc) rc = names_from_entries(out, &l, err);
    if (!rc) rc = build_alphabets(out, err);
    resize_plan_free(&plan);
    entries_free(&l);
    if (rc) omniglot_free(out);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Cache                                                                                       */

/* The cache key is the archive's contents, not its path or mtime, so a replaced or re-downloaded
 * archive can never be served stale images. zlib's crc32 and adler32 are both already linked,
 * run at several GB/s (hashing both archives costs a few ms, so no (path, mtime) sidecar is
 * kept: it would save little and reintroduce the staleness risk), and together with the byte
 * size give a 96-bit key: accidental collisions are out of reach. Nothing here defends against
 * a deliberately forged archive; the cache is the user's own. */
typedef struct {
    uint64_t size;
    uint32_t crc, adler;
} ArchiveKey;

#define CACHE_MAGIC "MAMLCOG\0"
#define CACHE_VERSION 1u
#define CACHE_HEADER_BYTES 72

typedef struct {
    uint32_t version, filter, image_size, drawings, n_characters;
    ArchiveKey key;
    uint64_t names_bytes, pixels_bytes;
    uint32_t payload_crc;
} CacheHeader;

static int hash_archive(const char *path, ArchiveKey *key, MamlError *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return maml_fail(err, "%s: cannot open: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = maml_alloc(CHUNK, err);
    if (!buf) {
        fclose(f);
        return -1;
    }
    uLong crc = crc32(0L, Z_NULL, 0), adler = adler32(0L, Z_NULL, 0);
    uint64_t size = 0;
    size_t n;
    while ((n = fread(buf, 1, CHUNK, f)) > 0) {
        crc = crc32(crc, buf, (uInt)n);
        adler = adler32(adler, buf, (uInt)n);
        size += n;
    }
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad) return maml_fail(err, "%s: read error", path);
    *key = (ArchiveKey){size, (uint32_t)crc, (uint32_t)adler};
    return 0;
}

static int mkdir_p(const char *dir) {
    char tmp[1024];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

int omniglot_cache_dir(char *buf, int size) {
    const char *env = getenv("MAMLC_CACHE"), *home = getenv("HOME");
    int n;
    if (env && *env)
        n = snprintf(buf, (size_t)size, "%s", env);
    else if (home && *home)
        n = snprintf(buf, (size_t)size, "%s/.cache/mamlc", home);
    else
        return -1;
    return n < 0 || n >= size ? -1 : 0;
}

/* DIR/omniglot-<stem>-<filter>-<size>-<key>.bin; -1 when no cache directory is usable. */
static int cache_file_path(const char *zip_path, ResizeFilter filter, int image_size,
                           const ArchiveKey *key, char *buf, size_t size) {
    char dir[900];
    if (omniglot_cache_dir(dir, sizeof dir) || mkdir_p(dir)) return -1;
    const char *base = strrchr(zip_path, '/');
    base = base ? base + 1 : zip_path;
    char stem[64];
    snprintf(stem, sizeof stem, "%s", base);
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem) *dot = '\0';
    for (char *p = stem; *p; p++)
        if (!(*p == '-' || *p == '_' || (*p >= '0' && *p <= '9') ||
              ((*p | 32) >= 'a' && (*p | 32) <= 'z')))
            *p = '_';
    int n = snprintf(buf, size, "%s/omniglot-%s-%s-%d-%08x%08x-%llu.bin", dir, stem,
                     resize_filter_name(filter), image_size, key->crc, key->adler,
                     (unsigned long long)key->size);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Little-endian fixed layout, so the file means the same on any host; the header carries its
 * own CRC so a damaged size field is caught before it drives an allocation. */
static void header_encode(const CacheHeader *h, uint8_t *b) {
    memset(b, 0, CACHE_HEADER_BYTES);
    memcpy(b, CACHE_MAGIC, 8);
    put_u32(b + 8, h->version);
    put_u32(b + 12, h->filter);
    put_u32(b + 16, h->image_size);
    put_u32(b + 20, h->drawings);
    put_u64(b + 24, h->key.size);
    put_u32(b + 32, h->key.crc);
    put_u32(b + 36, h->key.adler);
    put_u32(b + 40, h->n_characters);
    put_u64(b + 48, h->names_bytes);
    put_u64(b + 56, h->pixels_bytes);
    put_u32(b + 64, h->payload_crc);
    put_u32(b + 68, (uint32_t)crc32(0L, b, 68));
}

static int header_decode(const uint8_t *b, CacheHeader *h) {
    if (memcmp(b, CACHE_MAGIC, 8) != 0 || get_u32(b + 68) != (uint32_t)crc32(0L, b, 68)) return -1;
    h->version = get_u32(b + 8);
    h->filter = get_u32(b + 12);
    h->image_size = get_u32(b + 16);
    h->drawings = get_u32(b + 20);
    h->key = (ArchiveKey){get_u64(b + 24), get_u32(b + 32), get_u32(b + 36)};
    h->n_characters = get_u32(b + 40);
    h->names_bytes = get_u64(b + 48);
    h->pixels_bytes = get_u64(b + 56);
    h->payload_crc = get_u32(b + 64);
    return 0;
}

static uint32_t crc_big(uint32_t crc, const uint8_t *p, uint64_t n) {
    while (n > 0) {
        uInt step = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = (uint32_t)crc32(crc, p, step);
        p += step;
        n -= step;
    }
    return crc;
}

/* Characters as consecutive NUL-terminated strings. */
static char *names_blob(const OmniglotArchive *a, uint64_t *bytes, MamlError *err) {
    uint64_t n = 0;
    for (int c = 0; c < a->n_characters; c++) n += strlen(a->characters[c]) + 1;
    char *blob = maml_alloc((size_t)n, err), *p = blob;
    if (!blob) return NULL;
    for (int c = 0; c < a->n_characters; c++) p = stpcpy(p, a->characters[c]) + 1;
    *bytes = n;
    return blob;
}

static int write_all(FILE *f, const void *p, uint64_t n) {
    return n == 0 || fwrite(p, 1, (size_t)n, f) == n ? 0 : -1;
}

/* Temporary file in the cache directory, then rename: readers see the old file or the complete
 * new one, never a partial write, even with several processes loading at once. */
static int cache_write(const char *path, const OmniglotArchive *a, const ArchiveKey *key) {
    uint64_t nb;
    char *blob = names_blob(a, &nb, NULL);
    if (!blob) return -1;
    uint64_t pb = (uint64_t)a->n_characters * OMNIGLOT_DRAWINGS * a->image_size * a->image_size;
    CacheHeader h = {CACHE_VERSION,
                     (uint32_t)a->filter,
                     (uint32_t)a->image_size,
                     OMNIGLOT_DRAWINGS,
                     (uint32_t)a->n_characters,
                     *key,
                     nb,
                     pb,
                     0};
    h.payload_crc = crc_big(crc_big(0, (const uint8_t *)blob, nb), a->pixels, pb);
    uint8_t hb[CACHE_HEADER_BYTES];
    header_encode(&h, hb);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(blob);
        return -1;
    }
    int rc = write_all(f, hb, sizeof hb) || write_all(f, blob, nb) || write_all(f, a->pixels, pb) ||
             fflush(f) || fsync(fileno(f));
    rc = fclose(f) || rc;
    free(blob);
    if (!rc && chmod(tmp, 0644) == 0 && rename(tmp, path) == 0) return 0;
    unlink(tmp);
    return -1;
}

/* Splits the names blob into characters; every string must be non-empty and the count exact. */
static int names_from_blob(OmniglotArchive *a, const char *blob, uint64_t n, MamlError *err) {
    a->characters = maml_calloc((size_t)a->n_characters, sizeof(char *), err);
    if (!a->characters || n == 0 || blob[n - 1] != '\0') return -1;
    const char *p = blob, *end = blob + n;
    for (int c = 0; c < a->n_characters; c++) {
        if (p >= end || !*p) return -1;
        a->characters[c] = maml_strdup(p, err);
        if (!a->characters[c]) return -1;
        p += strlen(p) + 1;
    }
    return p == end ? 0 : -1;
}

static bool header_fits(const CacheHeader *h, const ArchiveKey *key, ResizeFilter filter,
                        int image_size, uint64_t file_size) {
    uint64_t px = (uint64_t)h->n_characters * OMNIGLOT_DRAWINGS * (uint64_t)image_size * image_size;
    return h->version == CACHE_VERSION && h->filter == (uint32_t)filter &&
           h->image_size == (uint32_t)image_size && h->drawings == OMNIGLOT_DRAWINGS &&
           h->key.size == key->size && h->key.crc == key->crc && h->key.adler == key->adler &&
           h->n_characters > 0 && h->n_characters < (1u << 20) && h->pixels_bytes == px &&
           h->names_bytes < (64u << 20) &&
           file_size == CACHE_HEADER_BYTES + h->names_bytes + h->pixels_bytes;
}

static int cache_read_body(FILE *f, const CacheHeader *h, const char *zip_path,
                           OmniglotArchive *a) {
    char *blob = malloc((size_t)h->names_bytes + 1);
    int rc = -1;
    if (blob && fread(blob, 1, (size_t)h->names_bytes, f) == h->names_bytes &&
        !archive_setup(a, zip_path, (ResizeFilter)h->filter, (int)h->image_size,
                       (int)h->n_characters, NULL) &&
        fread(a->pixels, 1, (size_t)h->pixels_bytes, f) == h->pixels_bytes) {
        uint32_t crc =
            crc_big(crc_big(0, (const uint8_t *)blob, h->names_bytes), a->pixels, h->pixels_bytes);
        if (crc == h->payload_crc && !names_from_blob(a, blob, h->names_bytes, NULL) &&
            !build_alphabets(a, NULL))
            rc = 0;
    }
    free(blob);
    if (rc) omniglot_free(a);
    return rc;
}

/* 0: loaded; 1: no cache file; -1: a cache file exists but is invalid (never trusted). */
static int cache_read(const char *path, const char *zip_path, const ArchiveKey *key,
                      ResizeFilter filter, int image_size, OmniglotArchive *a) {
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 1 : -1;
    struct stat st;
    uint8_t hb[CACHE_HEADER_BYTES];
    CacheHeader h;
    int rc = -1;
    if (fstat(fileno(f), &st) == 0 && fread(hb, 1, sizeof hb, f) == sizeof hb &&
        header_decode(hb, &h) == 0 &&
        header_fits(&h, key, filter, image_size, (uint64_t)st.st_size))
        rc = cache_read_body(f, &h, zip_path, a);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Public entry points                                                                         */

static int check_archive_exists(const char *zip_path, MamlError *err) {
    struct stat st;
    if (stat(zip_path, &st) == 0 && S_ISREG(st.st_mode)) return 0;
    return maml_fail(err,
                     "Omniglot archive not found: %s (download it from %s; pass its folder "
                     "with --data)",
                     zip_path, OMNIGLOT_DOWNLOAD);
}

int omniglot_load(const char *zip_path, ResizeFilter filter, int image_size, OmniglotArchive *out,
                  OmniglotLoadInfo *info, MamlError *err) {
    OmniglotLoadInfo local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    memset(out, 0, sizeof *out);
    double t0 = maml_now_s();
    if (image_size <= 0 || image_size > OMNIGLOT_SRC_SIZE)
        return maml_fail(err, "data.image_size %d must be in 1..%d", image_size, OMNIGLOT_SRC_SIZE);
    ArchiveKey key = {0};
    if (check_archive_exists(zip_path, err) || hash_archive(zip_path, &key, err)) return -1;
    char *cache = info->cache_path;
    if (cache_file_path(zip_path, filter, image_size, &key, cache, sizeof info->cache_path))
        cache[0] = '\0';
    int cached = cache[0] ? cache_read(cache, zip_path, &key, filter, image_size, out) : 1;
    info->from_cache = cached == 0;
    info->cache_rejected = cached < 0;
    if (cached != 0) {
        if (decode_archive(zip_path, filter, image_size, out, err)) return -1;
        info->cache_written = cache[0] && cache_write(cache, out, &key) == 0;
    }
    info->seconds = maml_now_s() - t0;
    return 0;
}

int omniglot_open(const char *data_dir, const DataSettings *ds, OmniglotData *out,
                  OmniglotLoadInfo *infos, MamlError *err) {
    memset(out, 0, sizeof *out);
    char bg[1024], ev[1024];
    snprintf(bg, sizeof bg, "%s/images_background.zip", data_dir);
    snprintf(ev, sizeof ev, "%s/images_evaluation.zip", data_dir);
    if (check_archive_exists(bg, err) || check_archive_exists(ev, err)) return -1;
    if (omniglot_load(bg, ds->resize, ds->image_size, &out->background, infos, err) ||
        omniglot_load(ev, ds->resize, ds->image_size, &out->evaluation, infos ? infos + 1 : NULL,
                      err)) {
        omniglot_close(out);
        return -1;
    }
    return 0;
}

void omniglot_close(OmniglotData *d) {
    if (!d) return;
    omniglot_free(&d->background);
    omniglot_free(&d->evaluation);
}
