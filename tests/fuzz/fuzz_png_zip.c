/* libFuzzer target: Omniglot ingestion (minizip, libpng, the resize filters, the image cache).
 *
 * Two modes, chosen by the input itself so one corpus serves both: an input that starts with the
 * PNG signature is wrapped into a valid archive root/Alpha/character01/0001_DD.png (20 stored
 * copies), which puts the PNG decoder and resize straight behind the fuzzer; any other input is
 * the zip archive itself. The input's length picks the filter (odd: Lanczos) and the image size
 * (1 + length % 105), so every filter and size of data.image_size runs.
 *
 * An accepted archive must load a second time from the cache with the same characters and
 * pixels; the cache file is then removed so the scratch directory does not grow. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "omniglot.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    /* the cache must never land in the user's ~/.cache */
    if (setenv("MAMLC_CACHE", fuzz_path(0, "cache"), 1) != 0) abort();
    return 0;
}

static void check_archive(const OmniglotArchive *a, int image_size) {
    if (a->n_characters < 1 || a->n_alphabets < 1 || a->image_size != image_size) abort();
    for (int c = 0; c < a->n_characters; c++)
        if (!a->characters[c][0] || a->alphabet_of[c] < 0 || a->alphabet_of[c] >= a->n_alphabets)
            abort();
}

static void check_same(const OmniglotArchive *a, const OmniglotArchive *b) {
    size_t px = (size_t)a->n_characters * OMNIGLOT_DRAWINGS * a->image_size * a->image_size;
    if (a->n_characters != b->n_characters || memcmp(a->pixels, b->pixels, px) != 0) abort();
    for (int c = 0; c < a->n_characters; c++)
        if (strcmp(a->characters[c], b->characters[c]) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *zip = fuzz_path(1, "images_background.zip");
    if (fuzz_is_png(data, size))
        fuzz_wrap_png_zip(zip, data, size);
    else
        fuzz_write_file(zip, data, size);
    ResizeFilter filter = size & 1 ? RESIZE_LANCZOS : RESIZE_NEAREST;
    int image_size = 1 + (int)(size % OMNIGLOT_SRC_SIZE);
    OmniglotArchive a, b;
    OmniglotLoadInfo info, again;
    MamlError err = {{0}};
    int rc = omniglot_load(zip, filter, image_size, &a, &info, &err);
    fuzz_report(rc, &err);
    if (rc != 0) {
        if (!err.message[0] || a.pixels) abort();
        return 0;
    }
    check_archive(&a, image_size);
    if (info.cache_written) {
        if (omniglot_load(zip, filter, image_size, &b, &again, &err) != 0 || !again.from_cache)
            abort();
        check_same(&a, &b);
        omniglot_free(&b);
        unlink(info.cache_path);
    }
    omniglot_free(&a);
    return 0;
}
