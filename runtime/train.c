/* The training loop (see train.h). */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "checkpoint.h"
#include "clock.h"
#include "evaluate.h"
#include "maml.h"
#include "omniglot.h"
#include "params.h"
#include "producer.h"
#include "tasks.h"

#define LOG_HEADER "step,meta_loss,meta_acc,val_acc,seconds,val_loss\n"

typedef struct {
    const TrainOptions *o;
    TrainResult *r;
    FILE *out;
    ProgressMode mode;
    GraphSpec spec;
    uint64_t seed;
    bool omniglot;
    OmniglotData data;
    OmniglotSplits splits;
    TaskSource train_src, val_src;
    Graph graph;
    Backend *backend;
    Evaluator val;
    bool have_val;
    TensorSet state; /* every graph input: parameters, optimizer state, the batch, adam/step */
    TensorSet outputs;
    Producer *producer;
    const ProducedBatch *staged; /* the next step's batch, already staged on the backend */
    TensorSet next_batch;        /* its tensors */
    long step, start_step;
    bool finished; /* the last step of this session is done */
    Rng data_rng;  /* the task stream after batch `step` */
    double seconds0, t_start, t_drawn, t_printed;
    FILE *log;
    char log_path[1100];
} Trainer;

/* ------------------------------------------------------------------------------------------ */
/* Paths                                                                                       */

void train_default_run_dir(const char *graph_path, char *buf, int size) {
    const char *base = strrchr(graph_path, '/');
    base = base ? base + 1 : graph_path;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".yaml") == 0)
        n -= 5;
    else if (n > 4 && strcmp(base + n - 4, ".yml") == 0)
        n -= 4;
    snprintf(buf, (size_t)size, "runs/%.*s", (int)n, base);
}

const char *train_data_dir(const char *data_dir) {
    if (data_dir && *data_dir) return data_dir;
    const char *env = getenv("OMNIGLOT");
    return env && *env ? env : TRAIN_DEFAULT_DATA;
}

/* mkdir -p: creates every missing component of path. */
static int make_dirs(const char *path, MamlError *err) {
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return maml_fail(err, "run directory '%.64s...': path too long", path);
    for (char *p = buf + 1;; p++) {
        bool end = *p == 0;
        if (*p != '/' && !end) continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return maml_fail(err, "cannot create run directory '%s': %s", path, strerror(errno));
        if (end) break;
        *p = '/';
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return maml_fail(err, "cannot create run directory '%s': %s", path,
                         stat(path, &st) != 0 ? strerror(errno) : "a file of that name exists");
    if (access(path, W_OK | X_OK) != 0)
        return maml_fail(err, "run directory '%s' is not writable: %s", path, strerror(errno));
    return 0;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Output                                                                                      */

/* Prints a note on its own line (clearing a progress bar first). */
static void note(Trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(Trainer *t, const char *fmt, ...) {
    if (t->mode == PROGRESS_QUIET) return;
    if (t->mode == PROGRESS_BAR) fputs("\r\033[K", t->out);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(t->out, fmt, ap);
    va_end(ap);
    fputc('\n', t->out);
    fflush(t->out);
    t->t_drawn = 0; /* redraw the bar right away */
}

static void format_eta(double s, char *buf, size_t size) {
    long v = (long)(s + 0.5);
    if (!isfinite(s) || s < 0)
        snprintf(buf, size, "?");
    else if (v >= 3600)
        snprintf(buf, size, "%ldh%02ldm", v / 3600, v / 60 % 60);
    else if (v >= 60)
        snprintf(buf, size, "%ldm%02lds", v / 60, v % 60);
    else
        snprintf(buf, size, "%lds", v);
}

/* "loss 1.2345 acc 0.412 val 0.523 | 1.23 steps/s | ETA 5m10s" for the current state. */
/* Fraction of the run done and seconds left: by steps, or by the time limit when that ends the
 * run sooner. */
static double run_fraction(const Trainer *t, double now, double *eta) {
    double rate = (double)(t->step - t->start_step) / (now - t->t_start);
    double frac = (double)t->step / (double)t->o->steps;
    *eta = (double)(t->o->steps - t->step) / rate;
    double limit = t->o->time_limit_s, used = now - t->t_start;
    if (limit > 0 && limit - used < *eta) {
        *eta = limit > used ? limit - used : 0;
        frac = used / limit < 1 ? used / limit : 1;
    }
    return frac;
}

static void status_text(const Trainer *t, double now, char *buf, size_t size) {
    double rate = (double)(t->step - t->start_step) / (now - t->t_start), left;
    char eta[32], acc[32] = "", val[32] = "";
    run_fraction(t, now, &left);
    format_eta(left, eta, sizeof eta);
    if (!isnan(t->r->meta_acc)) snprintf(acc, sizeof acc, " acc %.3f", t->r->meta_acc);
    if (!isnan(t->r->val_acc))
        snprintf(val, sizeof val, " val %.3f", t->r->val_acc);
    else if (!isnan(t->r->val_loss))
        snprintf(val, sizeof val, " val_loss %.4g", t->r->val_loss);
    snprintf(buf, size, "loss %.4f%s%s | %.2f steps/s | ETA %s", t->r->meta_loss, acc, val, rate,
             eta);
}

static void draw_bar(Trainer *t, double now) {
    char text[256], bar[21];
    double left;
    int filled = (int)(20.0 * run_fraction(t, now, &left));
    for (int i = 0; i < 20; i++) bar[i] = i < filled ? '#' : '.';
    bar[20] = 0;
    status_text(t, now, text, sizeof text);
    fprintf(t->out, "\rstep %ld/%ld [%s] %s\033[K", t->step, t->o->steps, bar, text);
    fflush(t->out);
}

/* Shows progress after a step: the bar at most ten times a second, lines every interval. */
static void progress(Trainer *t, bool force) {
    double now = maml_now_s();
    if (t->mode == PROGRESS_BAR && (force || now - t->t_drawn >= 0.1)) {
        draw_bar(t, now);
        t->t_drawn = now;
    } else if (t->mode == PROGRESS_LINES) {
        double every = t->o->log_interval_s > 0 ? t->o->log_interval_s : 10.0;
        if (!force && now - t->t_printed < every && t->step != t->start_step + 1) return;
        char text[256];
        status_text(t, now, text, sizeof text);
        fprintf(t->out, "step %ld/%ld  %s\n", t->step, t->o->steps, text);
        fflush(t->out);
        t->t_printed = now;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* log.csv                                                                                     */

static void csv_num(FILE *f, double v, const char *fmt) {
    fputc(',', f);
    if (!isnan(v)) fprintf(f, fmt, v);
}

static int log_row(Trainer *t, double val_acc, double val_loss, MamlError *err) {
    FILE *f = t->log;
    fprintf(f, "%ld", t->step);
    csv_num(f, t->r->meta_loss, "%.9g");
    csv_num(f, t->r->meta_acc, "%.6g");
    csv_num(f, val_acc, "%.6g");
    csv_num(f, t->seconds0 + maml_now_s() - t->t_start, "%.3f");
    csv_num(f, val_loss, "%.9g");
    fputc('\n', f);
    if (fflush(f) != 0 || ferror(f))
        return maml_fail(err, "%s: write failed: %s", t->log_path, strerror(errno));
    return 0;
}

/* Copies the header and the rows up to `step` of the old log into f: a resumed run continues a
 * log that ends at its checkpoint, without the rows of steps it is about to redo. */
static void copy_rows_until(FILE *old, FILE *f, long step) {
    char line[512];
    fputs(LOG_HEADER, f);
    while (fgets(line, sizeof line, old)) {
        char *end;
        long s = strtol(line, &end, 10);
        if (end != line && *end == ',' && s <= step) fputs(line, f);
    }
}

/* Rewrites log.csv atomically (temporary file, rename) keeping the rows up to `step`. */
static int trim_log(const Trainer *t, long step, MamlError *err) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", t->log_path);
    FILE *f = fopen(tmp, "w");
    if (!f) return maml_fail(err, "%s: cannot write: %s", tmp, strerror(errno));
    FILE *old = fopen(t->log_path, "r");
    if (old) {
        copy_rows_until(old, f, step);
        fclose(old);
    } else {
        fputs(LOG_HEADER, f);
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, t->log_path) != 0) {
        remove(tmp);
        return maml_fail(err, "%s: cannot rewrite: %s", t->log_path, strerror(errno));
    }
    return 0;
}

static int open_log(Trainer *t, MamlError *err) {
    snprintf(t->log_path, sizeof t->log_path, "%s/log.csv", t->r->run_dir);
    if (t->o->resume && trim_log(t, t->step, err)) return -1;
    t->log = fopen(t->log_path, t->o->resume ? "a" : "w");
    if (!t->log) return maml_fail(err, "%s: cannot write: %s", t->log_path, strerror(errno));
    if (!t->o->resume && fputs(LOG_HEADER, t->log) == EOF)
        return maml_fail(err, "%s: cannot write: %s", t->log_path, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Setup                                                                                       */

static int setup_spec(Trainer *t, MamlError *err) {
    const TrainOptions *o = t->o;
    if (o->steps < 1) return maml_fail(err, "--steps must be at least 1, not %ld", o->steps);
    if (o->val_every < 0 || o->ckpt_every < 0 || (o->val_every > 0 && o->val_tasks < 1))
        return maml_fail(err, "--val-every and --ckpt-every must be >= 0 and --val-tasks >= 1");
    if (spec_load(o->graph, o->overrides, o->n_overrides, &t->spec, err)) return -1;
    t->seed = o->has_seed ? o->seed : t->spec.data.seed;
    if (o->run_dir && *o->run_dir)
        snprintf(t->r->run_dir, sizeof t->r->run_dir, "%s", o->run_dir);
    else
        train_default_run_dir(o->graph, t->r->run_dir, sizeof t->r->run_dir);
    snprintf(t->r->checkpoint, sizeof t->r->checkpoint, "%s/checkpoint.safetensors", t->r->run_dir);
    return 0;
}

/* A fresh run must not overwrite another run's checkpoint; a resumed one needs it. */
static int check_run_dir(Trainer *t, MamlError *err) {
    bool have = file_exists(t->r->checkpoint);
    if (t->o->resume && !have)
        return maml_fail(err, "--resume: no checkpoint at %s", t->r->checkpoint);
    if (!t->o->resume && have)
        return maml_fail(err,
                         "%s already exists: pass --resume to continue that run, or choose "
                         "another --out",
                         t->r->checkpoint);
    return make_dirs(t->r->run_dir, err);
}

static int setup_data(Trainer *t, MamlError *err) {
    t->train_src = (TaskSource){.spec = &t->spec, .split = "train"};
    t->val_src = (TaskSource){.spec = &t->spec, .split = "val"};
    t->omniglot = t->spec.data.dataset == DATASET_OMNIGLOT;
    if (!t->omniglot) return 0;
    if (omniglot_open(train_data_dir(t->o->data_dir), &t->spec.data, &t->data, NULL, err) ||
        omniglot_splits(&t->data, &t->spec.data, &t->splits, err))
        return -1;
    t->train_src.classes = &t->splits.train;
    t->val_src.classes = &t->splits.val;
    if (task_source_check(&t->train_src, err)) return -1;
    return t->o->val_every > 0 ? task_source_check(&t->val_src, err) : 0;
}

/* The training graph and, when validating, the eval graph; no backend yet. */
static int build_graphs(Trainer *t, MamlError *err) {
    if (maml_build(&t->spec, MAML_TRAIN_STEP, t->spec.maml.meta_batch, &t->graph, NULL, err))
        return -1;
    if (t->o->val_every <= 0) return 0;
    /* At most a meta-batch per run (memory), and at least five runs for the interval. */
    int per_run = t->o->val_tasks / 5 < t->spec.maml.meta_batch ? t->o->val_tasks / 5
                                                                : t->spec.maml.meta_batch;
    if (per_run < 1) per_run = 1;
    t->have_val = true;
    return evaluator_build(&t->val, &t->spec, per_run, err);
}

/* Opens the backends last, after every input has been checked: compiling takes time. */
static int open_backends(Trainer *t, MamlError *err) {
    const char *name = t->o->backend && *t->o->backend ? t->o->backend : "auto";
    char why[512] = "";
    /* the parameters and optimizer state stay on the backend between steps (on the device, for
     * cuda); fetch_state brings them back when they are needed here */
    if (backend_open(name, &t->graph, PREC_F32, &t->backend, why, sizeof why, err) ||
        backend_keep_state(t->backend, err) ||
        (t->have_val && evaluator_start(&t->val, name, NULL, 0, err)))
        return -1;
    const MamlSettings *m = &t->spec.maml;
    note(t, "mamlc train: %s, %lld parameters, %d-way %d-shot, meta-batch %d, seed %llu; %s",
         t->o->graph, (long long)t->spec.total_params, m->n_way, m->k_shot, m->meta_batch,
         (unsigned long long)t->seed, why);
    return 0;
}

/* Learnable inner learning rates start at maml.inner.lr, optimizer state at zero. */
static int init_extra_inputs(Trainer *t, MamlError *err) {
    for (int i = 0; i < t->graph.n_nodes; i++) {
        const Node *n = &t->graph.nodes[i];
        if (n->op != OP_INPUT || n->input_kind == INPUT_DATA) continue;
        if (tensorset_find(&t->state, n->name) || strcmp(n->name, "adam/step") == 0) continue;
        bool lr = strncmp(n->name, "inner_lr.", 9) == 0;
        if (n->input_kind == INPUT_PARAM && !lr)
            return maml_fail(err, "graph input '%s' has no initial value", n->name);
        float v = lr ? (float)t->spec.maml.inner.lr : 0.0f;
        Tensor *x = tensorset_add(&t->state, n->name, TENSOR_F32, n->shape, NULL, err);
        if (!x) return -1;
        for (int64_t k = 0; k < shape_numel(n->shape); k++) ((float *)x->data)[k] = v;
    }
    return 0;
}

static int load_state(Trainer *t, MamlError *err) {
    CheckpointMeta meta;
    if (checkpoint_load(t->r->checkpoint, &t->graph, CHECKPOINT_TRAIN, &t->state, &meta, err))
        return -1;
    if (t->o->has_seed && meta.seed != t->o->seed)
        return maml_fail(err, "--seed %llu differs from the seed %llu of %s",
                         (unsigned long long)t->o->seed, (unsigned long long)meta.seed,
                         t->r->checkpoint);
    t->seed = meta.seed;
    t->step = meta.step;
    t->data_rng = meta.data_rng;
    t->seconds0 = meta.seconds;
    t->r->checkpoint_step = meta.step;
    note(t, "resuming %s from step %ld", t->r->checkpoint, meta.step);
    return 0;
}

static int setup_state(Trainer *t, MamlError *err) {
    if (t->o->resume) return load_state(t, err);
    rng_seed(&t->data_rng, t->seed ^ TRAIN_SALT);
    if (params_init(&t->spec, t->seed, &t->state, err)) return -1;
    return init_extra_inputs(t, err);
}

static int setup(Trainer *t, MamlError *err) {
    if (setup_spec(t, err) || check_run_dir(t, err) || setup_data(t, err) || build_graphs(t, err) ||
        setup_state(t, err))
        return -1;
    t->start_step = t->step;
    if (t->step >= t->o->steps) return 0;
    if (open_backends(t, err) || open_log(t, err)) return -1;
    return producer_start(&t->train_src, t->spec.maml.meta_batch, &t->data_rng, &t->producer, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Steps, validation, checkpoints                                                              */

/* Stops on a non-finite loss or state, naming the step and what was kept. */
static int nonfinite(Trainer *t, long step, const char *what, MamlError *err) {
    char kept[1300];
    if (t->r->checkpoint_step >= 0)
        snprintf(kept, sizeof kept, "the last good checkpoint (step %ld) is kept: %s",
                 t->r->checkpoint_step, t->r->checkpoint);
    else
        snprintf(kept, sizeof kept, "no checkpoint had been written yet");
    return maml_fail(err, "step %ld: %s; training stopped, %s", step, what, kept);
}

/* The updated parameters and optimizer state, back from the backend into state, each checked to
 * be finite: a non-finite one stops training (naming it) before anything is validated or saved. */
static int fetch_state(Trainer *t, MamlError *err) {
    if (backend_get_state(t->backend, &t->state, err)) return -1;
    const Graph *g = &t->graph;
    for (int i = 0; i < g->n_outputs; i++) {
        const Tensor *x = tensorset_find(&t->state, g->outputs[i].name);
        if (!x || tensor_all_finite(x)) continue;
        char what[300];
        snprintf(what, sizeof what, "the updates made '%.200s' NaN or Inf", x->name);
        return nonfinite(t, t->step, what, err);
    }
    return 0;
}

static int save(Trainer *t, MamlError *err) {
    if (fetch_state(t, err)) return -1;
    CheckpointMeta meta = {.step = t->step, .seed = t->seed, .data_rng = t->data_rng};
    meta.seconds = t->seconds0 + maml_now_s() - t->t_start;
    const char *base = strrchr(t->o->graph, '/');
    snprintf(meta.graph, sizeof meta.graph, "%s", base ? base + 1 : t->o->graph);
    if (checkpoint_save(t->r->checkpoint, &t->graph, &t->state, &meta, err)) {
        /* Say what survives: the previous checkpoint is untouched (written atomically). */
        char why[MAML_ERROR_MAX], kept[64] = "no checkpoint had been written yet";
        memcpy(why, err->message, sizeof why);
        if (t->r->checkpoint_step >= 0)
            snprintf(kept, sizeof kept, "the checkpoint of step %ld is kept",
                     t->r->checkpoint_step);
        return maml_fail(err, "step %ld: cannot write the checkpoint (%s): %s", t->step, kept, why);
    }
    t->r->checkpoint_step = t->step;
    if (t->mode == PROGRESS_LINES) note(t, "checkpoint at step %ld: %s", t->step, t->r->checkpoint);
    return 0;
}

static int validate(Trainer *t, MamlError *err) {
    EvalResult v;
    if (fetch_state(t, err)) return -1;
    if (evaluator_run(&t->val, &t->val_src, t->seed ^ VAL_SALT, t->o->val_tasks, &t->state, &v,
                      err))
        return -1;
    int k = v.inner_steps;
    t->r->val_loss = v.loss_mean[k];
    if (v.has_acc) {
        t->r->val_acc = v.acc_mean[k];
        note(t,
             "step %ld: validation accuracy %.4f +- %.4f over %d tasks (%d inner steps), loss %.4f",
             t->step, v.acc_mean[k], v.acc_ci[k], v.n_tasks, k, v.loss_mean[k]);
    } else {
        note(t,
             "step %ld: validation loss %.4g +- %.2g over %d tasks after %d inner steps (%.4g "
             "before)",
             t->step, v.loss_mean[k], v.loss_ci[k], v.n_tasks, k, v.loss_mean[0]);
    }
    return 0;
}

static int set_step_input(Trainer *t, MamlError *err) {
    if (graph_find_input(&t->graph, "adam/step") < 0) return 0;
    float s = (float)(t->step + 1);
    return tensorset_add(&t->state, "adam/step", TENSOR_F32, shape_scalar(), &s, err) ? 0 : -1;
}

static double output_scalar(const TensorSet *s, const char *name) {
    const Tensor *x = tensorset_find(s, name);
    return x ? tensor_get(x, 0) : NAN;
}

/* The next step's batch goes to the backend while this step computes (backend_stage). The
 * batch already in state stays there, stale but well shaped, as backend_launch allows. */
static int stage_next(void *trainer, MamlError *err) {
    Trainer *t = trainer;
    const ProducedBatch *n = producer_next(t->producer, err);
    if (!n || task_batch_to_tensors(&n->batch, &t->next_batch, err) ||
        backend_stage(t->backend, &t->next_batch, err))
        return -1;
    t->staged = n;
    return 0;
}

static int run_step(Trainer *t, MamlError *err) {
    const ProducedBatch *b = t->staged ? t->staged : producer_next(t->producer, err);
    if (!b || (!t->staged && task_batch_to_tensors(&b->batch, &t->state, err)) ||
        set_step_input(t, err))
        return -1;
    Rng rng_after = b->rng_after; /* b goes back to the producer in stage_next */
    t->staged = NULL;
    BackendOverlap overlap = t->step + 1 < t->o->steps ? stage_next : NULL;
    if (backend_run_overlapped(t->backend, &t->state, overlap, t, &t->outputs, err)) return -1;
    double loss = output_scalar(&t->outputs, "meta_loss");
    if (!isfinite(loss)) {
        char what[64];
        snprintf(what, sizeof what, "meta_loss is %s", isnan(loss) ? "NaN" : "Inf");
        return nonfinite(t, t->step + 1, what, err);
    }
    t->step++;
    t->data_rng = rng_after;
    t->r->meta_loss = loss;
    t->r->meta_acc = output_scalar(&t->outputs, "meta_acc");
    return 0;
}

/* After step `step`: validation, log row, progress, checkpoint. */
static int after_step(Trainer *t, MamlError *err) {
    const TrainOptions *o = t->o;
    bool timed_out = o->time_limit_s > 0 && maml_now_s() - t->t_start >= o->time_limit_s;
    bool last = t->step == o->steps || timed_out;
    t->finished = last;
    if (timed_out && t->step < o->steps)
        note(t, "time limit of %gs reached at step %ld", o->time_limit_s, t->step);
    double val_acc = NAN, val_loss = NAN;
    if (t->have_val && (t->step % o->val_every == 0 || last)) {
        if (validate(t, err)) return -1;
        val_acc = t->r->val_acc, val_loss = t->r->val_loss;
    }
    if (log_row(t, val_acc, val_loss, err)) return -1;
    progress(t, last);
    if ((o->ckpt_every > 0 && t->step % o->ckpt_every == 0) || last) return save(t, err);
    return 0;
}

static TrainStatus loop(Trainer *t, MamlError *err) {
    while (!t->finished) {
        int sig = t->o->stop_signal ? *t->o->stop_signal : 0;
        if (sig) {
            t->r->signal = sig;
            note(t, "signal %d: checkpointing at step %ld and stopping", sig, t->step);
            if (t->r->checkpoint_step != t->step && save(t, err)) return TRAIN_FAILED;
            return TRAIN_INTERRUPTED;
        }
        if (run_step(t, err) || after_step(t, err)) {
            if (t->mode == PROGRESS_BAR) fputs("\n", t->out);
            return TRAIN_FAILED;
        }
    }
    if (t->mode == PROGRESS_BAR) fputs("\n", t->out);
    return TRAIN_DONE;
}

/* ------------------------------------------------------------------------------------------ */

static void teardown(Trainer *t) {
    producer_stop(t->producer);
    if (t->log) fclose(t->log);
    evaluator_close(&t->val);
    backend_close(t->backend);
    graph_free(&t->graph);
    tensorset_free(&t->state);
    tensorset_free(&t->next_batch);
    tensorset_free(&t->outputs);
    omniglot_splits_free(&t->splits);
    omniglot_close(&t->data);
    spec_free(&t->spec);
}

static ProgressMode pick_mode(const TrainOptions *o, FILE *out) {
    if (o->progress != PROGRESS_AUTO) return o->progress;
    return isatty(fileno(out)) ? PROGRESS_BAR : PROGRESS_LINES;
}

TrainStatus train_run(const TrainOptions *o, TrainResult *r, MamlError *err) {
    memset(r, 0, sizeof *r);
    r->checkpoint_step = -1;
    r->meta_loss = r->meta_acc = r->val_acc = r->val_loss = NAN;
    Trainer t = {.o = o, .r = r, .out = o->out ? o->out : stdout};
    t.mode = pick_mode(o, t.out);
    graph_init(&t.graph);
    tensorset_init(&t.state);
    tensorset_init(&t.next_batch);
    tensorset_init(&t.outputs);
    TrainStatus status = TRAIN_BAD_INPUT;
    if (setup(&t, err) == 0) {
        t.t_start = maml_now_s();
        if (t.step >= o->steps) {
            note(&t, "%s is at step %ld already; nothing to do for --steps %ld", r->checkpoint,
                 t.step, o->steps);
            status = TRAIN_DONE;
        } else {
            status = loop(&t, err);
        }
    }
    r->step = t.step;
    teardown(&t);
    return status;
}
