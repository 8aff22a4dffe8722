/* Training checkpoints: one safetensors file holding the parameters under their PyTorch names,
 * the optimizer state under "adam/m/NAME" and "adam/v/NAME", and in __metadata__ the step, the
 * seed and the training task stream's RNG state, so that a resumed run continues bit for bit.
 *
 * Metadata keys (all strings): "mamlc_checkpoint" "1"; "step" completed meta-steps; "seed" the
 * data.seed the run started from; "data_rng" the task stream's state after batch `step`, four
 * 64-bit words as 64 hex digits; "seconds" training wall time so far; "graph" the graph file's
 * name (informational).
 *
 * Writes are atomic (safetensors_write: temporary file, fsync, rename). Loads validate the whole
 * file against the graph before anything is handed over, so a checkpoint is never half-loaded. */
#ifndef MAMLC_CHECKPOINT_H
#define MAMLC_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "graph.h"
#include "rng.h"
#include "tensor.h"

#define CHECKPOINT_FORMAT "1"

typedef struct {
    long step;
    uint64_t seed;
    Rng data_rng;
    double seconds;
    char graph[256];
    bool complete; /* step, seed and data_rng were all present (always so for CHECKPOINT_TRAIN) */
} CheckpointMeta;

/* What a load is for: resuming training needs the parameters, the optimizer state and the
 * metadata, and rejects tensors the graph does not know; evaluation needs only the parameters
 * (other tensors and missing metadata are fine, so plain parameter files work too). */
typedef enum { CHECKPOINT_TRAIN, CHECKPOINT_PARAMS } CheckpointUse;

/* Writes the checkpoint of graph g: every parameter input of g and every optimizer state input
 * (all but "adam/step"), taken from state, plus meta. Refuses to write non-finite values, so a
 * checkpoint on disk is always a good one. On failure the previous file at path is untouched. */
int checkpoint_save(const char *path, const Graph *g, const TensorSet *state,
                    const CheckpointMeta *meta, MamlError *err);

/* Reads path and checks it against graph g for the given use: every expected tensor present,
 * real-valued, shaped as g's input, finite; metadata present and well formed (CHECKPOINT_TRAIN),
 * or well formed where present (CHECKPOINT_PARAMS). Only then fills `into` (initialised and
 * empty) with the expected tensors as F32, and meta when not NULL (zeroed where absent). Errors
 * name the file and the tensor or metadata key; `into` stays empty on failure. */
int checkpoint_load(const char *path, const Graph *g, CheckpointUse use, TensorSet *into,
                    CheckpointMeta *meta, MamlError *err);

/* Whether a tensor holds only finite values (integer tensors always do). */
int tensor_all_finite(const Tensor *t);

#endif
