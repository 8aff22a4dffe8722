/* The training loop behind `mamlc train`, as a library function.
 *
 * It compiles the graph (MAML_TRAIN_STEP at maml.meta_batch tasks, MAML_EVAL for validation),
 * initialises the parameters from the seed (or resumes from RUN_DIR/checkpoint.safetensors),
 * samples meta-batches on a producer thread and runs the steps on a backend. Along the way it
 * writes RUN_DIR/log.csv (step, meta_loss, meta_acc, val_acc, seconds, val_loss), validates on the
 * validation split, and checkpoints atomically every ckpt_every steps, at the end and when asked
 * to stop. A run stopped and resumed from its checkpoint ends bit for bit where an uninterrupted
 * run ends: the checkpoint holds the exact F32 state, the step and the task stream's RNG state.
 *
 * Task streams are seeded from the run's seed (data.seed unless overridden): the training stream
 * with seed ^ TRAIN_SALT, validation tasks with seed ^ VAL_SALT (the same tasks every time, so
 * validation points are comparable), `mamlc eval` with seed ^ TEST_SALT. */
#ifndef MAMLC_TRAIN_H
#define MAMLC_TRAIN_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

#define TRAIN_SALT 0x545241494eull /* "TRAIN" */
#define VAL_SALT 0x56414cull       /* "VAL" */
#define TEST_SALT 0x54455354ull    /* "TEST" */

/* The default Omniglot directory when neither --data nor $OMNIGLOT is given. */
#define TRAIN_DEFAULT_DATA "../shared/data/omniglot"

typedef enum {
    PROGRESS_AUTO,  /* a bar when the output is a terminal, else lines */
    PROGRESS_BAR,   /* one line redrawn in place: step, loss, accuracy, steps/s, ETA */
    PROGRESS_LINES, /* a plain line every few seconds, at validations and at the end */
    PROGRESS_QUIET, /* errors only */
} ProgressMode;

typedef struct {
    const char *graph;            /* GRAPH.yaml */
    const char *const *overrides; /* --set KEY=VALUE */
    int n_overrides;
    const char *data_dir; /* NULL: $OMNIGLOT, else TRAIN_DEFAULT_DATA */
    const char *run_dir;  /* NULL: runs/<graph file name without .yaml> */
    const char *backend;  /* NULL: "auto" */
    long steps;           /* meta-steps of the whole run; --resume continues to it */
    bool resume;          /* continue from RUN_DIR/checkpoint.safetensors */
    int val_every;        /* validate every N steps and at the end; 0: never */
    int val_tasks;        /* tasks per validation */
    int ckpt_every;       /* checkpoint every N steps; 0: only at the end */
    bool has_seed;        /* seed below replaces data.seed */
    uint64_t seed;
    ProgressMode progress;
    FILE *out;             /* progress and notes; NULL: stdout */
    double log_interval_s; /* PROGRESS_LINES: seconds between lines; 0: 10 */
    /* Ends the run like its last step (validation, checkpoint) at the first step boundary after
     * this many seconds of training in this session; 0: no limit. */
    double time_limit_s;
    /* Set to a signal number (by the caller's handler) to checkpoint at the next step boundary
     * and stop; NULL: never. */
    const volatile sig_atomic_t *stop_signal;
} TrainOptions;

typedef enum {
    TRAIN_DONE,        /* all steps (or the time limit) done, final checkpoint written */
    TRAIN_INTERRUPTED, /* stop_signal seen: checkpoint written at the step boundary */
    TRAIN_BAD_INPUT,   /* graph, settings, data, run directory or checkpoint rejected */
    TRAIN_FAILED,      /* a step failed or the loss went NaN/Inf (last good checkpoint kept) */
} TrainStatus;

typedef struct {
    long step;                  /* completed meta-steps */
    long checkpoint_step;       /* step of the checkpoint on disk; -1 when none */
    double meta_loss, meta_acc; /* of the last step; NAN when none (acc: or regression) */
    double val_acc, val_loss;   /* of the last validation; NAN when none */
    int signal;                 /* TRAIN_INTERRUPTED: the signal seen */
    char run_dir[1024];
    char checkpoint[1100]; /* RUN_DIR/checkpoint.safetensors */
} TrainResult;

/* Runs (or resumes) a training run as described above; r is filled in every case. Errors are
 * one line in err, naming the file, setting or step. */
TrainStatus train_run(const TrainOptions *o, TrainResult *r, MamlError *err);

/* Writes "runs/<name of graph_path without directory and extension>" into buf. */
void train_default_run_dir(const char *graph_path, char *buf, int size);

/* The Omniglot directory: data_dir, else $OMNIGLOT, else TRAIN_DEFAULT_DATA. */
const char *train_data_dir(const char *data_dir);

#endif
