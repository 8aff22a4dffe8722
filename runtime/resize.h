/* Pillow-compatible image resizing for the Omniglot loader.
 *
 * The MAML reference pipelines resized with Pillow, and the pixels a model sees change its
 * accuracy, so both filters reproduce Pillow 9.4 to the bit rather than "a" nearest or Lanczos:
 *  - RESIZE_NEAREST is what `Image.resize(size, LANCZOS)` does to a mode-"1" image (Pillow
 *    silently falls back to nearest for 1-bit images): an affine scale sampling source pixel
 *    floor((x + 0.5) * in / out).
 *  - RESIZE_LANCZOS is Pillow's separable Lanczos-3 (`ImagingResample`) on the 8-bit image:
 *    horizontal pass then vertical, support widened by the downscale factor, coefficients
 *    normalised per output pixel and quantised to 22-bit fixed point, rounded and clipped to
 *    uint8 after each pass. */
#ifndef MAMLC_RESIZE_H
#define MAMLC_RESIZE_H

#include <stdint.h>

#include "error.h"
#include "spec.h"

/* Fixed-point resampling weights along one axis (Pillow's precompute_coeffs). */
typedef struct {
    int in_size, out_size;
    int ksize;       /* coefficients per output pixel */
    int *bounds;     /* [out_size][2]: first input pixel, number of input pixels */
    int32_t *coeffs; /* [out_size][ksize], sum 1 << 22 each */
    int *nearest;    /* [out_size]: source pixel for RESIZE_NEAREST */
} ResizeAxis;

/* Everything needed to resize many images of one size: built once, read-only afterwards, so
 * threads can share it. */
typedef struct {
    ResizeFilter filter;
    int in_w, in_h, out_w, out_h;
    ResizeAxis horiz, vert;
} ResizePlan;

/* Prepares a plan for in_w x in_h -> out_w x out_h 8-bit images. */
int resize_plan_init(ResizePlan *plan, ResizeFilter filter, int in_w, int in_h, int out_w,
                     int out_h, MamlError *err);

/* Bytes of scratch memory resize_apply needs (the intermediate image of the two passes). */
int resize_scratch_size(const ResizePlan *plan);

/* Resizes one row-major 8-bit image; scratch holds resize_scratch_size(plan) bytes (per thread).
 * in and out must not overlap. */
void resize_apply(const ResizePlan *plan, const uint8_t *in, uint8_t *out, uint8_t *scratch);

/* Releases a plan; safe on a zeroed or failed one. */
void resize_plan_free(ResizePlan *plan);

/* Name used in cache files and messages: "nearest" or "lanczos". */
const char *resize_filter_name(ResizeFilter filter);

#endif
