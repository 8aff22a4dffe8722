/* Task sources and the double-buffered batch producer (see producer.h). */
#include "producer.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Task sources                                                                                */

static int check_image_shape(const TaskSource *src, MamlError *err) {
    const ExampleShape *in = &src->spec->input;
    int n = src->classes->image_size;
    if (in->rank == 3 && in->dims[0] == 1 && in->dims[1] == n && in->dims[2] == n) return 0;
    return maml_fail(err,
                     "model.input must be [1, %d, %d] to take the %s split's %dx%d images "
                     "(data.image_size)",
                     n, n, src->split, n, n);
}

int task_source_check(const TaskSource *src, MamlError *err) {
    const MamlSettings *m = &src->spec->maml;
    if (!src->classes) return 0; /* sinusoid: the front end validated every setting */
    if (m->n_way > src->classes->n_classes)
        return maml_fail(err, "maml.n_way %d exceeds the %d classes of the %s split", m->n_way,
                         src->classes->n_classes, src->split);
    if (m->k_shot + m->q_query > OMNIGLOT_DRAWINGS)
        return maml_fail(err,
                         "maml.k_shot + maml.q_query = %d exceeds the %d drawings per Omniglot "
                         "character",
                         m->k_shot + m->q_query, OMNIGLOT_DRAWINGS);
    return check_image_shape(src, err);
}

int task_source_batch_init(const TaskSource *src, int tasks, TaskBatch *b, MamlError *err) {
    const GraphSpec *spec = src->spec;
    int y_features = 0;
    if (!src->classes) {
        const LayerSpec *last = &spec->layers[spec->n_layers - 1];
        y_features = (int)last->out_shape.dims[0];
    }
    return task_batch_init(b, tasks, spec_support_size(spec), spec_query_size(spec), spec->input,
                           y_features, err);
}

int task_source_sample(const TaskSource *src, Rng *rng, TaskBatch *b, MamlError *err) {
    const MamlSettings *m = &src->spec->maml;
    if (!src->classes) return sinusoid_sample(&src->spec->data, rng, b, NULL, NULL, err);
    return omniglot_sample_tasks(src->classes, m->n_way, m->k_shot, m->q_query, rng, b, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Producer                                                                                    */

/* Slot i holds batch number k when k % 2 == i. The producer writes a slot only while it is
 * neither full nor handed out, and the consumer reads it only while it is handed out, so the
 * batch data itself needs no lock. */
struct Producer {
    TaskSource src;
    Rng rng; /* producer thread only */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ProducedBatch slots[2];
    bool full[2];
    int in_use; /* slot handed out, or -1 */
    long next_fill, next_take;
    bool stop, failed;
    MamlError err;
};

/* Waits (holding mu) until the slot for the next batch is free or stop is set; returns the slot,
 * or -1 to stop. */
static int wait_free_slot(Producer *p) {
    for (;;) {
        if (p->stop) return -1;
        int s = (int)(p->next_fill % 2);
        if (!p->full[s] && p->in_use != s) return s;
        pthread_cond_wait(&p->cv, &p->mu);
    }
}

static void *producer_main(void *arg) {
    Producer *p = arg;
    pthread_mutex_lock(&p->mu);
    for (int s; (s = wait_free_slot(p)) >= 0;) {
        pthread_mutex_unlock(&p->mu);
        MamlError err;
        int rc = task_source_sample(&p->src, &p->rng, &p->slots[s].batch, &err);
        pthread_mutex_lock(&p->mu);
        if (rc) {
            p->failed = true;
            p->err = err;
            pthread_cond_broadcast(&p->cv);
            break;
        }
        p->slots[s].index = p->next_fill++;
        p->slots[s].rng_after = p->rng;
        p->full[s] = true;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void producer_free(Producer *p) {
    task_batch_free(&p->slots[0].batch);
    task_batch_free(&p->slots[1].batch);
    free(p);
}

/* Creates the thread with every signal blocked in it; the caller's mask is restored after. */
static int spawn(Producer *p, MamlError *err) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->thread, NULL, producer_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) return maml_fail(err, "cannot start the batch producer thread: %s", strerror(rc));
    return 0;
}

int producer_start(const TaskSource *src, int tasks, const Rng *rng, Producer **out,
                   MamlError *err) {
    *out = NULL;
    Producer *p = maml_calloc(1, sizeof *p, err);
    if (!p) return -1;
    p->src = *src;
    p->rng = *rng;
    p->in_use = -1;
    if (task_source_batch_init(src, tasks, &p->slots[0].batch, err) ||
        task_source_batch_init(src, tasks, &p->slots[1].batch, err)) {
        producer_free(p);
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (spawn(p, err)) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        producer_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

const ProducedBatch *producer_next(Producer *p, MamlError *err) {
    pthread_mutex_lock(&p->mu);
    if (p->in_use >= 0) {
        p->in_use = -1;
        pthread_cond_broadcast(&p->cv);
    }
    int s = (int)(p->next_take % 2);
    while (!p->full[s] && !p->failed) pthread_cond_wait(&p->cv, &p->mu);
    const ProducedBatch *got = NULL;
    if (p->full[s]) {
        p->full[s] = false;
        p->in_use = s;
        p->next_take++;
        got = &p->slots[s];
    } else if (err) {
        *err = p->err;
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

void producer_stop(Producer *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    producer_free(p);
}
