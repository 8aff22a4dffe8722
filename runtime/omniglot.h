/* The Omniglot loader: reads the official zip archives (images_background.zip,
 * images_evaluation.zip) directly, decodes every 105x105 PNG, resizes it with the graph's filter
 * and keeps the result as packed uint8 images, cached on disk so the next start skips the decode.
 *
 * Layout inside an archive: ROOT/<Alphabet>/characterNN/XXXX_YY.png, 20 drawings per character.
 * Characters are ordered by path (C locale), drawings by file name; that order is part of the
 * contract because the splits and the task sampler index into it. */
#ifndef MAMLC_OMNIGLOT_H
#define MAMLC_OMNIGLOT_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "spec.h"

#define OMNIGLOT_DRAWINGS 20  /* drawings (drawers) per character */
#define OMNIGLOT_SRC_SIZE 105 /* side of the original images */
#define OMNIGLOT_DOWNLOAD                                                                          \
    "https://github.com/brendenlake/omniglot (python/images_background.zip and "                   \
    "python/images_evaluation.zip)"

/* One archive, decoded and resized. Pixels are Pillow's 8-bit values: 255 background, 0 ink. */
typedef struct {
    char *path;       /* the archive it came from */
    int n_characters; /* in path order */
    int n_alphabets;
    int image_size; /* side of the stored images (28) */
    ResizeFilter filter;
    char **alphabets;  /* [n_alphabets] names, sorted */
    char **characters; /* [n_characters] "Alphabet/characterNN" */
    int *alphabet_of;  /* [n_characters] index into alphabets */
    uint8_t *pixels;   /* [n_characters][OMNIGLOT_DRAWINGS][image_size][image_size] */
} OmniglotArchive;

/* What a load did, for logs and tests. */
typedef struct {
    bool from_cache;       /* true: read from the cache; false: decoded from the zip */
    bool cache_written;    /* a fresh cache file was written */
    bool cache_rejected;   /* a cache file existed but was corrupt or stale, and was rebuilt */
    double seconds;        /* wall time of the whole load */
    char cache_path[1024]; /* "" when caching is unavailable */
} OmniglotLoadInfo;

/* Loads one archive resized to image_size with filter, from the cache when a valid entry for
 * this archive's contents exists, else from the zip (then writing the cache; failure to write
 * it is not an error). The cache lives in $MAMLC_CACHE, else ~/.cache/mamlc. info may be NULL.
 * Errors name the archive (and the entry for PNG or layout problems); out is left zeroed. */
int omniglot_load(const char *zip_path, ResizeFilter filter, int image_size, OmniglotArchive *out,
                  OmniglotLoadInfo *info, MamlError *err);

/* Releases an archive; safe on a zeroed one. */
void omniglot_free(OmniglotArchive *a);

/* Image d of character c (image_size * image_size bytes). */
const uint8_t *omniglot_image(const OmniglotArchive *a, int c, int d);

/* Both archives of the data set: DIR/images_background.zip and DIR/images_evaluation.zip. */
typedef struct {
    OmniglotArchive background, evaluation;
} OmniglotData;

/* Loads both archives from data_dir with the data settings' filter and image size. A missing
 * archive is an error naming the path and where to download it. infos may be NULL or point to
 * two entries (background, evaluation). */
int omniglot_open(const char *data_dir, const DataSettings *ds, OmniglotData *out,
                  OmniglotLoadInfo *infos, MamlError *err);

/* Releases both archives; safe on a zeroed struct. */
void omniglot_close(OmniglotData *d);

/* Directory the cache uses ($MAMLC_CACHE or $HOME/.cache/mamlc), into buf; -1 when neither is
 * set. */
int omniglot_cache_dir(char *buf, int size);

#endif
