/* Training, checkpoints, evaluation and plots: `mamlc train`, `mamlc eval`, `mamlc plot`.
 *
 * Everything runs on the ref backend at small settings (the interpreter takes about a second
 * per seed-graph task), so the whole file stays within a couple of minutes. Omniglot tests load
 * the archives from ../shared/data/omniglot through the usual cache and are skipped with a
 * message when the archives are absent. */
#include <criterion/criterion.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "evaluate.h"
#include "maml.h"
#include "params.h"
#include "plot.h"
#include "safetensors.h"
#include "test_util.h"
#include "train.h"

#define SEED_GRAPH "graphs/omniglot_seed.yaml"
#define SINE_GRAPH "graphs/sinusoid.yaml"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                     */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static char made[4][64];
static int n_made;

/* A fresh scratch directory, removed after the test. */
static const char *scratch(void) {
    const char *d = temp_dir(n_made);
    cr_assert(d, "cannot create a temporary directory");
    snprintf(made[n_made & 3], sizeof made[0], "%s", d);
    n_made++;
    return made[(n_made - 1) & 3];
}

static void cleanup(void) {
    for (int i = 0; i < n_made && i < 4; i++) nftw(made[i], remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    n_made = 0;
}

TestSuite(train, .fini = cleanup);

static const char *omniglot_dir(void) {
    return shared_path(0, "data/omniglot");
}

static void require_omniglot(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/images_background.zip", omniglot_dir());
    if (access(path, R_OK) != 0) cr_skip_test("Omniglot archives not found at %s", omniglot_dir());
}

/* Options for a quiet ref run of `steps` steps into dir, without validation. */
static TrainOptions opts(const char *graph, const char *dir, long steps) {
    return (TrainOptions){.graph = graph,
                          .data_dir = omniglot_dir(),
                          .run_dir = dir,
                          .backend = "ref",
                          .steps = steps,
                          .progress = PROGRESS_QUIET};
}

static char *path_in(const char *dir, const char *name) {
    static char buf[4][1100];
    static int slot;
    char *p = buf[slot++ & 3];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

/* The whole file, NUL-terminated; *size receives its length. */
static char *slurp(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    fclose(f);
    if (size) *size = n;
    return buf;
}

static void write_bytes(const char *path, const char *data, long n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
}

static void train_ok(const TrainOptions *o, TrainResult *r) {
    MamlError err = {{0}};
    TrainStatus st = train_run(o, r, &err);
    cr_assert_eq(st, TRAIN_DONE, "train_run failed (%d): %s", st, err.message);
}

/* Runs the mamlc binary with a shell command line; returns its exit status. */
static int mamlc(const char *args) {
    const char *bin = getenv("MAMLC");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", bin && *bin ? bin : "./mamlc", args);
    int st = system(cmd);
    cr_assert(WIFEXITED(st), "'%s' did not exit normally", cmd);
    return WEXITSTATUS(st);
}

/* ------------------------------------------------------------------------------------------ */
/* Learning                                                                                    */

/* Measured: after 8 steps at meta-batch 2, validation accuracy (3 inner steps, 8 tasks) is
 * about 0.6-0.7; chance is 0.2. */
Test(train, seed_graph_short_run_on_ref_beats_chance_on_validation) {
    require_omniglot();
    const char *dir = scratch();
    const char *set[] = {"maml.meta_batch=2"};
    TrainOptions o = opts(SEED_GRAPH, dir, 8);
    o.overrides = set, o.n_overrides = 1;
    o.val_every = 8, o.val_tasks = 8;
    TrainResult r;
    train_ok(&o, &r);
    cr_assert_eq(r.step, 8);
    cr_assert(isfinite(r.meta_loss));
    cr_assert_gt(r.val_acc, 0.40, "validation accuracy %.3f is not well above chance (0.2)",
                 r.val_acc);
    char *log = slurp(path_in(dir, "log.csv"), NULL);
    cr_assert(strncmp(log, "step,meta_loss,meta_acc,val_acc,seconds", 39) == 0, "%s", log);
    cr_assert(strstr(log, "\n8,"), "%s", log);
    free(log);
}

/* Measured: after 300 steps at outer lr 0.01 the post-adaptation MSE is about 9x lower. */
Test(train, sinusoid_adaptation_cuts_mse_at_least_threefold_after_a_short_run) {
    const char *dir = scratch();
    const char *set[] = {"maml.outer.lr=0.01"};
    TrainOptions o = opts(SINE_GRAPH, dir, 300);
    o.overrides = set, o.n_overrides = 1;
    TrainResult r;
    train_ok(&o, &r);
    GraphSpec spec = {0};
    MamlError err = {{0}};
    cr_assert_eq(spec_load(SINE_GRAPH, NULL, 0, &spec, &err), 0, "%s", err.message);
    Evaluator ev;
    TensorSet params;
    tensorset_init(&params);
    cr_assert_eq(evaluator_open(&ev, &spec, "ref", 25, NULL, 0, &err), 0, "%s", err.message);
    cr_assert_eq(checkpoint_load(r.checkpoint, &ev.graph, CHECKPOINT_PARAMS, &params, NULL, &err),
                 0, "%s", err.message);
    TaskSource src = {.spec = &spec, .split = "test"};
    EvalResult e;
    cr_assert_eq(evaluator_run(&ev, &src, 7, 100, &params, &e, &err), 0, "%s", err.message);
    int k = e.inner_steps;
    cr_assert_eq(k, 10);
    cr_assert_lt(3 * e.loss_mean[k], e.loss_mean[0], "MSE before %.4f, after %d steps %.4f",
                 e.loss_mean[0], k, e.loss_mean[k]);
    tensorset_free(&params);
    evaluator_close(&ev);
    spec_free(&spec);
}

/* ------------------------------------------------------------------------------------------ */
/* Resume                                                                                      */

static void assert_same_tensors(const char *a, const char *b) {
    TensorSet x, y;
    tensorset_init(&x), tensorset_init(&y);
    MamlError err = {{0}};
    cr_assert_eq(safetensors_read(a, &x, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_read(b, &y, &err), 0, "%s", err.message);
    cr_assert_eq(x.n, y.n);
    for (int i = 0; i < x.n; i++) {
        const Tensor *t = &x.items[i], *u = tensorset_find(&y, t->name);
        cr_assert(u, "'%s' missing from %s", t->name, b);
        size_t bytes = (size_t)shape_numel(t->shape) * tensor_dtype_size(t->dtype);
        cr_assert(shape_equal(t->shape, u->shape) && t->dtype == u->dtype, "%s", t->name);
        cr_assert(memcmp(t->data, u->data, bytes) == 0, "'%s' differs", t->name);
    }
    const char *keys[] = {"step", "seed", "data_rng"};
    for (int i = 0; i < 3; i++)
        cr_assert_str_eq(tensorset_get_meta(&x, keys[i]), tensorset_get_meta(&y, keys[i]));
    tensorset_free(&x), tensorset_free(&y);
}

/* Step and meta_loss columns of a log, for comparing runs (seconds differ). */
static void loss_columns(const char *log, char *out, size_t size) {
    char *text = slurp(log, NULL), *save = NULL;
    out[0] = 0;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *c = strchr(line, ',');
        c = c ? strchr(c + 1, ',') : NULL;
        if (c) *c = 0;
        strncat(out, line, size - strlen(out) - 2);
        strcat(out, "\n");
    }
    free(text);
}

static void resume_matches(const char *graph, const char *set) {
    const char *straight = scratch(), *split = scratch();
    const char *ov[] = {set};
    TrainResult r;
    TrainOptions o = opts(graph, straight, 4);
    o.overrides = ov, o.n_overrides = 1;
    train_ok(&o, &r);
    o.run_dir = split, o.steps = 2;
    train_ok(&o, &r);
    o.steps = 4, o.resume = true;
    train_ok(&o, &r);
    cr_assert_eq(r.step, 4);
    assert_same_tensors(path_in(straight, "checkpoint.safetensors"),
                        path_in(split, "checkpoint.safetensors"));
    char a[4096], b[4096];
    loss_columns(path_in(straight, "log.csv"), a, sizeof a);
    loss_columns(path_in(split, "log.csv"), b, sizeof b);
    cr_assert_str_eq(a, b);
}

Test(train, resume_after_two_steps_equals_four_straight_steps_bit_for_bit_on_omniglot) {
    require_omniglot();
    resume_matches(SEED_GRAPH, "maml.meta_batch=1");
}

Test(train, resume_after_two_steps_equals_four_straight_steps_bit_for_bit_on_sinusoid) {
    resume_matches(SINE_GRAPH, "maml.meta_batch=5");
}

/* ------------------------------------------------------------------------------------------ */
/* Failures                                                                                    */

Test(train, nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint) {
    const char *dir = scratch();
    TrainResult r;
    TrainOptions o = opts(SINE_GRAPH, dir, 3);
    train_ok(&o, &r);
    long size;
    char *before = slurp(r.checkpoint, &size);
    const char *ov[] = {"maml.inner.lr=1e30"};
    o.overrides = ov, o.n_overrides = 1;
    o.steps = 6, o.resume = true, o.ckpt_every = 1;
    MamlError err = {{0}};
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_FAILED);
    cr_assert(strstr(err.message, "step 4:"), "%s", err.message);
    cr_assert(strstr(err.message, "NaN") || strstr(err.message, "Inf"), "%s", err.message);
    cr_assert(strstr(err.message, "checkpoint (step 3) is kept"), "%s", err.message);
    cr_assert_eq(r.checkpoint_step, 3);
    long size2;
    char *after = slurp(r.checkpoint, &size2);
    cr_assert(size == size2 && memcmp(before, after, (size_t)size) == 0);
    free(before), free(after);
}

Test(train, unwritable_run_directory_is_a_bad_input_naming_it) {
    const char *dir = scratch();
    char *file = path_in(dir, "plain-file"), bad[1200];
    write_bytes(file, "x", 1);
    snprintf(bad, sizeof bad, "%s/run", file); /* a directory under a regular file */
    TrainOptions o = opts(SINE_GRAPH, bad, 2);
    TrainResult r;
    MamlError err = {{0}};
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_BAD_INPUT);
    cr_assert(strstr(err.message, "cannot create run directory") && strstr(err.message, bad), "%s",
              err.message);
}

Test(train, n_way_beyond_the_classes_of_the_split_is_a_bad_input) {
    require_omniglot();
    const char *set[] = {"maml.n_way=2000"};
    TrainOptions o = opts(SEED_GRAPH, path_in(scratch(), "run"), 1);
    o.overrides = set, o.n_overrides = 1;
    TrainResult r;
    MamlError err = {{0}};
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_BAD_INPUT);
    /* The front end or the task source says it, depending on which knows the class count. */
    cr_assert(strstr(err.message, "n_way") && strstr(err.message, "2000") &&
                  strstr(err.message, "classes"),
              "%s", err.message);
}

Test(train, fresh_run_refuses_to_overwrite_a_checkpoint_and_resume_needs_one) {
    const char *dir = scratch();
    TrainResult r;
    TrainOptions o = opts(SINE_GRAPH, dir, 1);
    MamlError err = {{0}};
    o.resume = true;
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_BAD_INPUT);
    cr_assert(strstr(err.message, "--resume: no checkpoint"), "%s", err.message);
    o.resume = false;
    train_ok(&o, &r);
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_BAD_INPUT);
    cr_assert(strstr(err.message, "pass --resume"), "%s", err.message);
}

Test(train, stop_signal_checkpoints_at_the_step_boundary) {
    const char *dir = scratch();
    volatile sig_atomic_t stop = SIGINT;
    TrainOptions o = opts(SINE_GRAPH, dir, 5);
    o.stop_signal = &stop;
    TrainResult r;
    MamlError err = {{0}};
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_INTERRUPTED, "%s", err.message);
    cr_assert_eq(r.signal, SIGINT);
    cr_assert_eq(r.checkpoint_step, 0);
    stop = 0;
    o.resume = true;
    train_ok(&o, &r);
    cr_assert_eq(r.step, 5);
}

/* ------------------------------------------------------------------------------------------ */
/* Corrupt checkpoints                                                                         */

/* A one-step sinusoid checkpoint, read back into set. */
static const char *good_checkpoint(TensorSet *set) {
    const char *dir = scratch();
    TrainResult r;
    TrainOptions o = opts(SINE_GRAPH, dir, 1);
    train_ok(&o, &r);
    MamlError err = {{0}};
    tensorset_init(set);
    cr_assert_eq(safetensors_read(r.checkpoint, set, &err), 0, "%s", err.message);
    return dir;
}

/* Writes a variant and expects checkpoint_load to reject it with `expect` in the message, and
 * resuming from it to fail before touching the run's files. */
static void expect_rejected(const char *dir, const TensorSet *variant, const char *expect) {
    MamlError err = {{0}};
    const char *ckpt = path_in(dir, "checkpoint.safetensors");
    cr_assert_eq(safetensors_write(ckpt, variant, &err), 0, "%s", err.message);
    long n0, n1;
    char *log0 = slurp(path_in(dir, "log.csv"), &n0);
    TrainOptions o = opts(SINE_GRAPH, dir, 3);
    o.resume = true;
    TrainResult r;
    cr_assert_eq(train_run(&o, &r, &err), TRAIN_BAD_INPUT);
    cr_assert(strstr(err.message, ckpt) && strstr(err.message, expect), "%s", err.message);
    char *log1 = slurp(path_in(dir, "log.csv"), &n1);
    cr_assert(n0 == n1 && memcmp(log0, log1, (size_t)n0) == 0, "the log was touched");
    free(log0), free(log1);
}

static void copy_set(const TensorSet *from, TensorSet *to, const char *skip) {
    MamlError err = {{0}};
    tensorset_init(to);
    for (int i = 0; i < from->n; i++) {
        const Tensor *t = &from->items[i];
        if (skip && strcmp(t->name, skip) == 0) continue;
        cr_assert(tensorset_add(to, t->name, t->dtype, t->shape, t->data, &err));
    }
    for (int i = 0; i < from->n_meta; i++)
        tensorset_set_meta(to, from->meta[i].key, from->meta[i].value, &err);
}

Test(train, corrupt_checkpoints_are_rejected_before_anything_is_loaded) {
    TensorSet good, v;
    const char *dir = good_checkpoint(&good);
    MamlError err = {{0}};
    copy_set(&good, &v, "out.bias");
    expect_rejected(dir, &v, "missing tensor 'out.bias'");
    tensorset_free(&v);
    copy_set(&good, &v, "adam/v/hidden1.weight");
    expect_rejected(dir, &v, "missing tensor 'adam/v/hidden1.weight'");
    tensorset_free(&v);
    copy_set(&good, &v, NULL);
    tensorset_add(&v, "hidden2.weight", TENSOR_F32, SHAPE(40, 41), NULL, &err);
    expect_rejected(dir, &v, "tensor 'hidden2.weight': expected shape [40, 40], found [40, 41]");
    tensorset_free(&v);
    copy_set(&good, &v, NULL);
    ((float *)tensorset_find(&v, "out.weight")->data)[3] = NAN;
    expect_rejected(dir, &v, "tensor 'out.weight' holds NaN or Inf");
    tensorset_free(&v);
    copy_set(&good, &v, NULL);
    tensorset_add(&v, "extra", TENSOR_F32, SHAPE(2), NULL, &err);
    expect_rejected(dir, &v, "unexpected tensor 'extra'");
    tensorset_free(&v);
    tensorset_free(&good);
}

Test(train, checkpoints_with_bad_metadata_are_rejected) {
    TensorSet good, v;
    const char *dir = good_checkpoint(&good);
    MamlError err = {{0}};
    const char *cases[][3] = {
        {"step", "two", "__metadata__ 'step' is 'two', expected a non-negative integer"},
        {"step", "-1", "'step' is '-1'"},
        {"seed", "x1", "__metadata__ 'seed' is 'x1'"},
        {"data_rng", "0123", "__metadata__ 'data_rng' is '0123', expected 64 hex digits"},
        {"mamlc_checkpoint", "7", "checkpoint format '7' is not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        copy_set(&good, &v, NULL);
        tensorset_set_meta(&v, cases[i][0], cases[i][1], &err);
        expect_rejected(dir, &v, cases[i][2]);
        tensorset_free(&v);
    }
    copy_set(&good, &v, NULL);
    v.n_meta = 0; /* no metadata at all: the parameters alone, not a training checkpoint */
    expect_rejected(dir, &v, "lacks 'mamlc_checkpoint'");
    v.n_meta = good.n_meta;
    tensorset_free(&v);
    tensorset_free(&good);
}

Test(train, truncated_checkpoint_is_rejected_and_load_leaves_the_set_empty) {
    TensorSet good;
    const char *dir = good_checkpoint(&good);
    const char *ckpt = path_in(dir, "checkpoint.safetensors");
    long n;
    char *bytes = slurp(ckpt, &n);
    write_bytes(ckpt, bytes, n - 100);
    free(bytes);
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    MamlError err = {{0}};
    cr_assert_eq(spec_load(SINE_GRAPH, NULL, 0, &spec, &err), 0, "%s", err.message);
    cr_assert_eq(maml_build(&spec, MAML_TRAIN_STEP, 2, &g, NULL, &err), 0, "%s", err.message);
    TensorSet into;
    tensorset_init(&into);
    cr_assert_eq(checkpoint_load(ckpt, &g, CHECKPOINT_TRAIN, &into, NULL, &err), -1);
    cr_assert(strstr(err.message, ckpt), "%s", err.message);
    cr_assert_eq(into.n, 0);
    graph_free(&g);
    spec_free(&spec);
    tensorset_free(&good);
}

/* ------------------------------------------------------------------------------------------ */
/* Names, layouts, plots, the command line                                                     */

/* The parameters carry PyTorch's names and layouts (the seed fixture was written by PyTorch's
 * state_dict), the optimizer state sits under adam/m/ and adam/v/, and the metadata is there. */
Test(train, checkpoint_names_and_layouts_match_the_pytorch_state_dict) {
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    MamlError err = {{0}};
    TensorSet state, file, torch;
    tensorset_init(&state), tensorset_init(&file), tensorset_init(&torch);
    cr_assert_eq(spec_load(SEED_GRAPH, NULL, 0, &spec, &err), 0, "%s", err.message);
    cr_assert_eq(maml_build(&spec, MAML_TRAIN_STEP, 1, &g, NULL, &err), 0, "%s", err.message);
    cr_assert_eq(params_init(&spec, 1, &state, &err), 0, "%s", err.message);
    for (int i = 0; i < spec.n_params; i++) {
        char name[300];
        const Tensor *p = &state.items[i];
        snprintf(name, sizeof name, "adam/m/%s", p->name);
        tensorset_add(&state, name, TENSOR_F32, p->shape, NULL, &err);
        snprintf(name, sizeof name, "adam/v/%s", state.items[i].name);
        tensorset_add(&state, name, TENSOR_F32, state.items[i].shape, NULL, &err);
    }
    const char *ckpt = path_in(scratch(), "c.safetensors");
    CheckpointMeta meta = {.step = 3, .seed = 9, .data_rng = {{1, 2, 3, 4}}, .graph = "seed"};
    cr_assert_eq(checkpoint_save(ckpt, &g, &state, &meta, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_read(ckpt, &file, &err), 0, "%s", err.message);
    cr_assert_eq(file.n, 3 * spec.n_params);
    cr_assert_str_eq(tensorset_get_meta(&file, "step"), "3");
    cr_assert_str_eq(tensorset_get_meta(&file, "seed"), "9");
    const char *fixture = shared_path(1, "fixtures/pytorch_maml/params_p5_default.safetensors");
    if (access(fixture, R_OK) != 0) cr_skip_test("PyTorch fixture not found: %s", fixture);
    cr_assert_eq(safetensors_read(fixture, &torch, &err), 0, "%s", err.message);
    cr_assert_eq(torch.n, spec.n_params, "the state_dict has %d tensors", torch.n);
    for (int i = 0; i < torch.n; i++) {
        const Tensor *t = &torch.items[i], *c = tensorset_find(&file, t->name);
        char m[300], v[300];
        snprintf(m, sizeof m, "adam/m/%s", t->name), snprintf(v, sizeof v, "adam/v/%s", t->name);
        cr_assert(c, "'%s' of the state_dict is not in the checkpoint", t->name);
        cr_assert(shape_equal(c->shape, t->shape) && c->dtype == TENSOR_F32, "%s", t->name);
        cr_assert(tensorset_find(&file, m) && tensorset_find(&file, v), "%s", t->name);
    }
    tensorset_free(&state), tensorset_free(&file), tensorset_free(&torch);
    graph_free(&g);
    spec_free(&spec);
}

/* results/omniglot_20w1s holds the 20-way protocol run that goes on session by session (README):
 * a change to the graph file or to the checkpoint format must not strand it, so its checkpoint
 * loads for resuming with the shipped graph, its metadata is complete and its log reaches its
 * step. */
Test(train, committed_20_way_run_still_resumes_with_the_shipped_graph) {
    const char *ckpt = "results/omniglot_20w1s/checkpoint.safetensors";
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    MamlError err = {{0}};
    TensorSet state;
    tensorset_init(&state);
    cr_assert_eq(spec_load("graphs/omniglot_20w1s.yaml", NULL, 0, &spec, &err), 0, "%s",
                 err.message);
    cr_assert_eq(maml_build(&spec, MAML_TRAIN_STEP, spec.maml.meta_batch, &g, NULL, &err), 0, "%s",
                 err.message);
    CheckpointMeta meta;
    cr_assert_eq(checkpoint_load(ckpt, &g, CHECKPOINT_TRAIN, &state, &meta, &err), 0, "%s",
                 err.message);
    cr_assert(meta.complete && meta.step > 0 && meta.seed == spec.data.seed, "%s: step %ld", ckpt,
              meta.step);
    cr_assert_eq(state.n, 3 * spec.n_params);
    char *log = slurp("results/omniglot_20w1s/log.csv", NULL);
    char row[64];
    snprintf(row, sizeof row, "\n%ld,", meta.step);
    cr_assert(strstr(log, row), "the log has no row for the checkpoint's step %ld", meta.step);
    cr_log_info("%s: step %ld, %.1f h of training", ckpt, meta.step, meta.seconds / 3600);
    free(log);
    tensorset_free(&state);
    graph_free(&g);
    spec_free(&spec);
}

/* A Python interpreter with PyTorch ($PYTHON, python3, or Debian's /usr/bin/python3), or NULL. */
static const char *python_with_torch(void) {
    static const char *candidates[] = {NULL, "python3", "/usr/bin/python3"};
    candidates[0] = getenv("PYTHON");
    for (int i = 0; i < 3; i++) {
        char cmd[512];
        if (!candidates[i] || !*candidates[i]) continue;
        snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", candidates[i]);
        if (system(cmd) == 0) return candidates[i];
    }
    return NULL;
}

/* examples/load_checkpoint.py loads a training checkpoint into the seed's PyTorch Classifier with
 * load_state_dict(strict=True) and writes its state_dict back: the same tensors, bit for bit. */
Test(train, checkpoint_loads_into_the_pytorch_seed_model_and_back) {
    const char *py = python_with_torch();
    if (!py) cr_skip_test("no Python with PyTorch (apt-get install python3-torch)");
    const char *dir = scratch();
    const char *set[] = {"maml.meta_batch=1"};
    TrainOptions o = opts(SEED_GRAPH, dir, 1);
    o.overrides = set, o.n_overrides = 1;
    require_omniglot();
    TrainResult r;
    train_ok(&o, &r);
    char cmd[4096];
    const char *back = path_in(dir, "back.safetensors");
    snprintf(cmd, sizeof cmd, "%s examples/load_checkpoint.py %s --export %s >/dev/null", py,
             r.checkpoint, back);
    cr_assert_eq(system(cmd), 0, "%s failed", cmd);
    TensorSet a, b;
    tensorset_init(&a), tensorset_init(&b);
    MamlError err = {{0}};
    cr_assert_eq(safetensors_read(r.checkpoint, &a, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_read(back, &b, &err), 0, "%s", err.message);
    cr_assert_eq(b.n, a.n / 3, "the state_dict has %d tensors", b.n);
    for (int i = 0; i < b.n; i++) {
        const Tensor *t = &b.items[i], *c = tensorset_find(&a, t->name);
        cr_assert(c && shape_equal(c->shape, t->shape) && t->dtype == TENSOR_F32, "%s", t->name);
        cr_assert(memcmp(c->data, t->data, (size_t)shape_numel(t->shape) * 4) == 0, "%s", t->name);
    }
    tensorset_free(&a), tensorset_free(&b);
}

Test(train, plot_writes_an_svg_of_the_logged_curves) {
    const char *dir = scratch();
    TrainResult r;
    TrainOptions o = opts(SINE_GRAPH, dir, 20);
    o.val_every = 10, o.val_tasks = 5;
    train_ok(&o, &r);
    MamlError err = {{0}};
    const char *svg = path_in(dir, "curves.svg");
    cr_assert_eq(plot_log(path_in(dir, "log.csv"), svg, "sine", &err), 0, "%s", err.message);
    char *text = slurp(svg, NULL);
    cr_assert(strncmp(text, "<svg", 4) == 0 && strstr(text, "</svg>"));
    cr_assert(strstr(text, "<polyline") && strstr(text, "validation loss"));
    free(text);
    write_bytes(path_in(dir, "bad.csv"), "step,meta_loss\n1,abc\n", 21);
    cr_assert_eq(plot_log(path_in(dir, "bad.csv"), svg, "x", &err), -1);
    cr_assert(strstr(err.message, "bad.csv:2: column 'meta_loss': 'abc' is not a number"), "%s",
              err.message);
}

/* Near 1e16 the tick spacing (0.5 for steps, 1 for the loss) is below a double's precision: the
 * axes used to add ticks without end, growing the .svg.tmp by 100 MB a second. */
Test(train, plot_of_values_beyond_double_precision_finishes, .timeout = 5) {
    const char *dir = scratch();
    const char *csv = "step,meta_loss\n1e16,1e16\n1.0000000000000004e16,1.0000000000000004e16\n";
    write_bytes(path_in(dir, "big.csv"), csv, (long)strlen(csv));
    MamlError err = {{0}};
    const char *svg = path_in(dir, "big.svg");
    cr_assert_eq(plot_log(path_in(dir, "big.csv"), svg, "big", &err), 0, "%s", err.message);
    long size;
    char *text = slurp(svg, &size);
    cr_assert(strstr(text, "</svg>") && size < 100000, "%ld bytes", size);
    free(text);
}

/* Logs whose values give no range (none finite, one step) or one too wide for a double (+-1e308):
 * the plot still has axes, and every coordinate is a number (it printed "-nan" and "inf"). */
Test(train, plot_of_non_finite_single_and_huge_values_has_only_numeric_coordinates) {
    const char *logs[] = {
        "step,meta_loss,meta_acc\n1,nan,inf\n2,-inf,0.5\ninf,1,0.5\n",
        "step,meta_loss\n7,2.5\n",
        "step,meta_loss,meta_acc,val_acc\n1,1e308,1e308,1e308\n2,-1e308,-1e308,\n",
        "step,meta_loss\n1e16,1e16\n",
    };
    const char *dir = scratch();
    for (int i = 0; i < 4; i++) {
        write_bytes(path_in(dir, "odd.csv"), logs[i], (long)strlen(logs[i]));
        MamlError err = {{0}};
        const char *svg = path_in(dir, "odd.svg");
        cr_assert_eq(plot_log(path_in(dir, "odd.csv"), svg, "odd", &err), 0, "%s", err.message);
        long size;
        char *text = slurp(svg, &size);
        cr_assert(strstr(text, "</svg>") && strstr(text, "class='xt'"), "log %d", i);
        const char *bad = strstr(text, "nan") ? strstr(text, "nan") : strstr(text, "inf");
        cr_expect_null(bad, "log %d: '%.60s'", i, bad);
        free(text);
    }
}

/* Exit statuses: 0 done, 1 NaN loss, 2 bad input, 128+signal when interrupted. */
Test(train, command_line_exit_statuses) {
    const char *dir = scratch();
    char args[2048];
    snprintf(args, sizeof args,
             "train " SINE_GRAPH " --backend ref --steps 2 --out %s/a --progress quiet >/dev/null",
             dir);
    cr_assert_eq(mamlc(args), 0);
    snprintf(args, sizeof args,
             "eval " SINE_GRAPH " --backend ref --tasks 4 --checkpoint %s/a/checkpoint.safetensors"
             " >%s/eval.txt",
             dir, dir);
    cr_assert_eq(mamlc(args), 0);
    char *text = slurp(path_in(dir, "eval.txt"), NULL);
    cr_assert(strstr(text, "MSE before adaptation"), "%s", text);
    free(text);
    snprintf(args, sizeof args,
             "train " SINE_GRAPH " --backend ref --steps 2 --out %s/b --progress quiet "
             "--set maml.inner.lr=1e30 2>/dev/null",
             dir);
    cr_assert_eq(mamlc(args), 1);
    snprintf(args, sizeof args,
             "train " SINE_GRAPH " --out /dev/null/run --progress quiet 2>/dev/null");
    cr_assert_eq(mamlc(args), 2);
    snprintf(args, sizeof args, "eval " SINE_GRAPH " --checkpoint %s/eval.txt 2>/dev/null", dir);
    cr_assert_eq(mamlc(args), 2);
    snprintf(args, sizeof args, "plot %s/a -o %s/a.svg >/dev/null", dir, dir);
    cr_assert_eq(mamlc(args), 0);
}

/* A bad option value: exit status 2 and one line that names the flag and what it takes. */
Test(train, bad_option_values_are_one_line_usage_errors_naming_the_flag) {
    const char *dir = scratch();
    const char *cases[][2] = {
        {"--steps 0", "train: --steps needs an integer in 1..1099511627776, not '0'"},
        {"--steps -5", "train: --steps needs an integer in 1..1099511627776, not '-5'"},
        {"--val-every x", "train: --val-every needs an integer in 0..1073741824, not 'x'"},
        {"--time-limit 1.5", "train: --time-limit needs an integer in 0..1073741824, not '1.5'"},
        {"--progress fancy", "train: --progress must be auto, bar, lines or quiet, not 'fancy'"},
        {"--ckpt-every", "train: --ckpt-every needs a value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048];
        snprintf(args, sizeof args, "train " SINE_GRAPH " --backend ref --out %s/run %s 2>%s/err",
                 dir, cases[i][0], dir);
        cr_assert_eq(mamlc(args), 2, "%s", cases[i][0]);
        char *text = slurp(path_in(dir, "err"), NULL);
        cr_assert(strstr(text, cases[i][1]), "%s: '%s' not in: %s", cases[i][0], cases[i][1], text);
        cr_assert(strchr(text, '\n') == text + strlen(text) - 1, "%s: not one line: %s",
                  cases[i][0], text);
        free(text);
    }
}

Test(train, sigterm_checkpoints_and_exits_143) {
    const char *dir = scratch();
    char args[2048];
    snprintf(args, sizeof args,
             "train " SINE_GRAPH " --backend ref --steps 100000000 --out %s/run --progress quiet "
             "2>/dev/null & pid=$!; while [ ! -s %s/run/log.csv ] || [ $(wc -l < %s/run/log.csv) "
             "-lt 3 ]; do sleep 0.05; done; kill -TERM $pid; wait $pid",
             dir, dir, dir);
    const char *bin = getenv("MAMLC");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", bin && *bin ? bin : "./mamlc", args);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 143, "status %d", st);
    TensorSet set;
    tensorset_init(&set);
    MamlError err = {{0}};
    char ckpt[1200];
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoint.safetensors", dir);
    cr_assert_eq(safetensors_read(ckpt, &set, &err), 0, "%s", err.message);
    cr_assert_geq(atol(tensorset_get_meta(&set, "step")), 2);
    tensorset_free(&set);
}
