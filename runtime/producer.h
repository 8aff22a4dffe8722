/* Task sources and the batch producer.
 *
 * A TaskSource says where a graph's tasks come from (an Omniglot class set, or the sinusoid
 * generator) and samples batches of them in the graph's input layout. The Producer runs a source
 * on its own thread into a double buffer, so the training loop never waits for data while a step
 * runs. Sampling is a pure function of the RNG state, and the producer hands batches out strictly
 * in order, each with the RNG state that follows it: the sequence depends only on the starting
 * state, so a run resumed from a checkpoint's state sees exactly the batches it would have seen. */
#ifndef MAMLC_PRODUCER_H
#define MAMLC_PRODUCER_H

#include "error.h"
#include "rng.h"
#include "spec.h"
#include "tasks.h"

/* Where tasks come from: classes for Omniglot, NULL for the sinusoid generator. Both pointers are
 * borrowed and must outlive the source's users. */
typedef struct {
    const GraphSpec *spec;
    const ClassSet *classes;
    const char *split; /* "train", "val", "test": for messages */
} TaskSource;

/* Checks that the source can produce the graph's tasks (n_way within the split's classes,
 * k_shot + q_query within the drawings per character); errors name the setting and the split. */
int task_source_check(const TaskSource *src, MamlError *err);

/* Allocates a batch shaped for `tasks` tasks of this source. */
int task_source_batch_init(const TaskSource *src, int tasks, TaskBatch *b, MamlError *err);

/* Fills b (from task_source_batch_init) with fresh tasks drawn with rng. */
int task_source_sample(const TaskSource *src, Rng *rng, TaskBatch *b, MamlError *err);

/* One batch handed out by the producer. */
typedef struct {
    TaskBatch batch;
    long index;    /* 0 for the first batch after producer_start, then 1, 2, ... */
    Rng rng_after; /* the RNG state right after sampling this batch */
} ProducedBatch;

typedef struct Producer Producer;

/* Starts a thread that samples batches of `tasks` tasks from src, the first one with rng (copied),
 * into two buffers. The thread runs with every signal blocked, so Ctrl-C and SIGTERM reach the
 * caller's thread (the training loop checks for them at step boundaries). */
int producer_start(const TaskSource *src, int tasks, const Rng *rng, Producer **out,
                   MamlError *err);

/* Returns the next batch in order, waiting for it if needed; the batch returned by the previous
 * call goes back to the producer and must not be used any more. NULL with err filled when
 * sampling failed. */
const ProducedBatch *producer_next(Producer *p, MamlError *err);

/* Stops the thread and releases everything; NULL is allowed. */
void producer_stop(Producer *p);

#endif
