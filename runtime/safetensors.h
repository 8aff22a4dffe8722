/* The safetensors format: 8-byte little-endian header length, a JSON header mapping names to
 * {dtype, shape, data_offsets} (plus an optional "__metadata__" map of strings), then raw
 * little-endian data. Dtypes F32, F64, I32, I64; shape [] is a scalar. */
#ifndef MAMLC_SAFETENSORS_H
#define MAMLC_SAFETENSORS_H

#include "tensor.h"

/* Reads a whole file into out (which must be initialised). Rejects, with a message naming the
 * file and the tensor: truncated files, header lengths beyond the file, malformed JSON, unknown
 * dtypes, offsets out of range, overlapping or with gaps, shape/size disagreements, duplicate
 * names. On failure out is left empty. */
int safetensors_read(const char *path, TensorSet *out, MamlError *err);

/* Writes set atomically: a temporary file in the same directory, fsync, rename over path, fsync
 * of the directory. On failure the previous file at path is untouched. */
int safetensors_write(const char *path, const TensorSet *set, MamlError *err);

#endif
