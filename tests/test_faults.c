/* Faults injected into real `mamlc` processes (issue 7, item 3): each test breaks something under
 * a running command and checks that it fails cleanly and that nothing was lost.
 *
 *   - the run directory turns read-only after the first checkpoint (as root, the child drops to
 *     nobody, since root ignores directory permissions);
 *   - the output file system fills up (a 64 KiB tmpfs when mount is allowed, else RLIMIT_FSIZE in
 *     the child; the test log says which; MAMLC_TEST_NO_MOUNT=1 forces the fallback);
 *   - SIGINT and SIGTERM during training;
 *   - two `mamlc grad --backend cpu` processes sharing one fresh kernel cache, and sharing a
 *     damaged entry;
 *   - an out-of-memory on the device (needs a GPU; skipped with a message elsewhere).
 *
 * Covered elsewhere, not repeated here: safetensors_write into a read-only directory and out of
 * space (tests/test_safetensors.c), a NaN loss keeping the last good checkpoint, corrupt and
 * truncated checkpoints (tests/test_train.c), damaged cpu, kernel-cache and NVRTC entries
 * rebuilt, concurrent kernel-cache writers (tests/test_codegen.c, tests/test_cuda.c).
 *
 * Training runs the sinusoid graph on the ref backend (milliseconds a step). $MAMLC names the
 * binary (the ASan run sets it), else ./mamlc; tests run from the repository root. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <math.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "clock.h"
#include "cuda_backend.h"
#include "cuda_driver.h"
#include "maml.h"
#include "params.h"
#include "safetensors.h"
#include "tasks.h"
#include "test_util.h"

#define SINE_GRAPH "graphs/sinusoid.yaml"
#define NOBODY 65534

/* ------------------------------------------------------------------------------------------ */
/* Scratch directories and mounts, removed after each test                                     */

static char made[4][64];
static int n_made;
static char mounted[1100];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    chmod(path, 0700); /* a directory a test made read-only (when not root) */
    return remove(path);
}

static const char *scratch(void) {
    const char *d = temp_dir(n_made);
    cr_assert(d, "cannot create a temporary directory");
    cr_assert_eq(chmod(d, 0755), 0); /* a child running as nobody must reach into it */
    snprintf(made[n_made & 3], sizeof made[0], "%s", d);
    return made[n_made++ & 3];
}

static void cleanup(void) {
    if (mounted[0]) umount2(mounted, MNT_DETACH);
    mounted[0] = 0;
    for (int i = 0; i < n_made && i < 4; i++) {
        chmod(made[i], 0700);
        nftw(made[i], remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    }
    n_made = 0;
}

TestSuite(faults, .fini = cleanup);

/* dir/name in one of 32 static slots (each test runs in its own process and uses fewer). */
static char *path_in(const char *dir, const char *name) {
    static char buf[32][1100];
    static int slot;
    char joined[1100];
    snprintf(joined, sizeof joined, "%s/%s", dir, name);
    char *p = buf[slot++ & 31];
    memcpy(p, joined, sizeof joined);
    return p;
}

/* The whole file, NUL-terminated, or NULL when it cannot be read; *size gets its length. */
static char *slurp(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = 0;
    if (size) *size = (long)got;
    return buf;
}

static void assert_same_bytes(const char *path, const char *want, long want_size, const char *why) {
    long n;
    char *got = slurp(path, &n);
    cr_assert(got, "%s: cannot read %s", why, path);
    cr_assert(n == want_size && memcmp(got, want, (size_t)n) == 0,
              "%s: %s changed (%ld bytes, was %ld)", why, path, n, want_size);
    free(got);
}

/* Entries of dir whose name contains `part`. */
static int count_named(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    cr_assert(d, "cannot list %s", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, part)) n++;
    closedir(d);
    return n;
}

static void remove_named(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    cr_assert(d, "cannot list %s", dir);
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, part)) {
            char path[1400];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Child processes                                                                             */

static const char *mamlc_bin(void) {
    const char *bin = getenv("MAMLC");
    return bin && *bin ? bin : "./mamlc";
}

typedef struct {
    bool as_nobody;     /* drop root (when root) before exec */
    long max_file_size; /* RLIMIT_FSIZE in bytes (SIGXFSZ ignored); 0: none */
    const char *cache;  /* MAMLC_CACHE; NULL: inherited */
    const char *output; /* file receiving stdout and stderr */
} ChildOptions;

static bool drop_root(void) {
    if (geteuid() != 0) return true;
    return setgroups(0, NULL) == 0 && setgid(NOBODY) == 0 && setuid(NOBODY) == 0;
}

/* Whether a child can drop root here (some containers forbid setuid); true when not root. */
static bool can_drop_root(void) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) _exit(drop_root() ? 0 : 1);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* Starts `mamlc ARGS...` (args NULL-terminated). Exit status 126 means the child could not set
 * itself up. */
static pid_t spawn(const ChildOptions *o, const char *const *args) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid > 0) return pid;
    int fd = open(o->output, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(126);
    close(fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (o->cache) setenv("MAMLC_CACHE", o->cache, 1);
    if (o->as_nobody && !drop_root()) _exit(126);
    if (o->max_file_size > 0) {
        struct rlimit rl = {(rlim_t)o->max_file_size, (rlim_t)o->max_file_size};
        signal(SIGXFSZ, SIG_IGN); /* write() then fails with EFBIG, as on a full disk */
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(126);
    }
    const char *argv[64] = {mamlc_bin()};
    int n = 1;
    for (; args[n - 1] && n < 63; n++) argv[n] = args[n - 1];
    argv[n] = NULL;
    execv(argv[0], (char *const *)argv);
    _exit(126);
}

/* Waits for pid; kills it and fails after timeout_s. Returns the wait status. */
static int wait_child(pid_t pid, double timeout_s, const char *output) {
    double t0 = maml_now_s();
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return st;
        if (maml_now_s() - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            char *out = slurp(output, NULL);
            cr_assert_fail("mamlc did not finish within %.0f s; its output:\n%s", timeout_s,
                           out ? out : "");
        }
        usleep(5000);
    }
}

/* Runs mamlc to completion; returns its exit status (fails when it died from a signal). */
static int run_child(const ChildOptions *o, const char *const *args) {
    int st = wait_child(spawn(o, args), 120, o->output);
    char *out = slurp(o->output, NULL);
    cr_assert(WIFEXITED(st), "mamlc died (status %d); output:\n%s", st, out ? out : "");
    free(out);
    return WEXITSTATUS(st);
}

/* Puts the child's first "mamlc:" line into the test log. */
static void log_error_line(const char *output) {
    char *out = slurp(output, NULL), *line = out ? strstr(out, "mamlc:") : NULL;
    if (line) cr_log_info("%.*s", (int)strcspn(line, "\n"), line);
    free(out);
}

static void assert_output_has(const char *output, const char *part) {
    char *out = slurp(output, NULL);
    cr_assert(out && strstr(out, part), "'%s' not in the output:\n%s", part, out ? out : "");
    free(out);
}

/* ------------------------------------------------------------------------------------------ */
/* Training runs                                                                               */

/* train arguments for the sinusoid graph on ref into run: `steps` steps, a checkpoint every
 * ckpt_every (0: default), resuming when asked. The strings live in static slots. */
static const char **train_args(const char *run, long steps, int ckpt_every, bool resume) {
    static char steps_s[32], ckpt_s[32];
    static const char *argv[24];
    snprintf(steps_s, sizeof steps_s, "%ld", steps);
    snprintf(ckpt_s, sizeof ckpt_s, "%d", ckpt_every > 0 ? ckpt_every : 500);
    int n = 0;
    const char *fixed[] = {"train",        SINE_GRAPH, "--backend",   "ref",
                           "--out",        run,        "--steps",     steps_s,
                           "--ckpt-every", ckpt_s,     "--val-every", "0",
                           "--progress",   "quiet",    "--set",       "maml.meta_batch=5"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) argv[n++] = fixed[i];
    if (resume) argv[n++] = "--resume";
    argv[n] = NULL;
    return argv;
}

/* Rows of log.csv (not counting the header), and the step of the last one (-1 when none). */
static int log_rows(const char *log, long *last_step) {
    char *text = slurp(log, NULL);
    int rows = 0;
    *last_step = -1;
    if (!text) return 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "step,", 5) == 0) continue;
        rows++;
        *last_step = atol(line);
    }
    free(text);
    return rows;
}

/* The log's steps must be 1, 2, ..., last: each exactly once, in order. */
static void assert_log_is_1_to(const char *log, long last) {
    char *text = slurp(log, NULL);
    cr_assert(text, "no %s", log);
    char *save = NULL;
    long want = 1;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "step,", 5) == 0) continue;
        cr_assert_eq(atol(line), want, "%s: row '%s', expected step %ld", log, line, want);
        want++;
    }
    cr_assert_eq(want - 1, last, "%s ends at step %ld, expected %ld", log, want - 1, last);
    free(text);
}

/* Waits until log has at least `rows` rows while pid runs. */
static void wait_for_rows(const char *log, int rows, pid_t pid, const char *output) {
    double t0 = maml_now_s();
    long last;
    while (log_rows(log, &last) < rows) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char *out = slurp(output, NULL);
            if (WIFEXITED(st) && WEXITSTATUS(st) == 126) cr_skip_test("the child could not start");
            cr_assert_fail("mamlc ended (status %d) before %d log rows; output:\n%s", st, rows,
                           out ? out : "");
        }
        if (maml_now_s() - t0 > 60) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("no %d log rows within 60 s", rows);
        }
        usleep(2000);
    }
}

/* Loads a training checkpoint of the sinusoid graph (every tensor checked against the graph)
 * and returns its step. */
static long checkpoint_step(const char *path) {
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    MamlError err = {{0}};
    const char *ov[] = {"maml.meta_batch=5"};
    cr_assert_eq(spec_load(SINE_GRAPH, ov, 1, &spec, &err), 0, "%s", err.message);
    cr_assert_eq(maml_build(&spec, MAML_TRAIN_STEP, 5, &g, NULL, &err), 0, "%s", err.message);
    TensorSet state;
    tensorset_init(&state);
    CheckpointMeta meta;
    cr_assert_eq(checkpoint_load(path, &g, CHECKPOINT_TRAIN, &state, &meta, &err), 0, "%s",
                 err.message);
    tensorset_free(&state);
    graph_free(&g);
    spec_free(&spec);
    return meta.step;
}

/* ------------------------------------------------------------------------------------------ */
/* An unwritable run directory                                                                 */

Test(faults, run_dir_made_read_only_mid_run_fails_the_next_checkpoint_and_keeps_the_last_one) {
    if (!can_drop_root())
        cr_skip_test("running as root and cannot drop to nobody: root ignores "
                     "directory permissions");
    const char *dir = scratch(), *run = path_in(dir, "run"), *out = path_in(dir, "out.txt");
    cr_assert_eq(mkdir(run, 0755), 0);
    if (geteuid() == 0) cr_assert_eq(chown(run, NOBODY, NOBODY), 0);
    const char *ckpt = path_in(run, "checkpoint.safetensors"), *log = path_in(run, "log.csv");
    ChildOptions o = {.as_nobody = true, .output = out};
    /* A checkpoint every step; once a few are written, the directory loses its write bit. */
    pid_t pid = spawn(&o, train_args(run, 100000000, 1, false));
    wait_for_rows(log, 3, pid, out);
    cr_assert_eq(chmod(run, 0555), 0);
    long size;
    char *kept = slurp(ckpt, &size); /* no rename can replace it from here on */
    cr_assert(kept, "no checkpoint after 3 steps");
    int st = wait_child(pid, 60, out);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "expected exit status 1, got status %d", st);
    assert_output_has(out, ckpt);
    assert_output_has(out, strerror(EACCES));
    log_error_line(out);
    assert_same_bytes(ckpt, kept, size, "after the failed checkpoint");
    long ckpt_step = checkpoint_step(ckpt), last;
    log_rows(log, &last);
    cr_assert_eq(last, ckpt_step + 1,
                 "the log ends at step %ld, the checkpoint is at step %ld: the "
                 "failed step should be the one after it",
                 last, ckpt_step);
    char said[128];
    snprintf(said, sizeof said,
             "step %ld: cannot write the checkpoint (the checkpoint of step %ld "
             "is kept)",
             last, ckpt_step);
    assert_output_has(out, said);
    /* Writable again: the run resumes from the kept checkpoint and the log has every step once. */
    cr_assert_eq(chmod(run, 0755), 0);
    remove_named(run, ".tmp."); /* a temporary the refused rename could not remove */
    cr_assert_eq(run_child(&o, train_args(run, ckpt_step + 2, 1, true)), 0);
    cr_assert_eq(checkpoint_step(ckpt), ckpt_step + 2);
    assert_log_is_1_to(log, ckpt_step + 2);
    free(kept);
}

/* ------------------------------------------------------------------------------------------ */
/* A full file system                                                                          */

/* Fills the file system holding dir, then frees `slack` bytes: small writes (the log) still fit,
 * a checkpoint does not. Returns the filler's size. */
static long fill_up(const char *dir, long slack) {
    const char *filler = path_in(dir, "filler");
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    char block[4096];
    memset(block, 0x55, sizeof block);
    long n = 0;
    for (;;) {
        ssize_t w = write(fd, block, sizeof block);
        if (w <= 0) break;
        n += w;
    }
    cr_assert_eq(errno, ENOSPC, "filling %s: %s", dir, strerror(errno));
    cr_assert_eq(ftruncate(fd, n > slack ? n - slack : 0), 0);
    close(fd);
    return n;
}

Test(faults, full_file_system_fails_the_checkpoint_and_keeps_the_previous_one) {
    const char *dir = scratch(), *out = path_in(dir, "out.txt");
    const char *fs = path_in(dir, "fs");
    cr_assert_eq(mkdir(fs, 0755), 0);
    /* MAMLC_TEST_NO_MOUNT=1 tries the fallback where mounting is allowed. */
    const char *no_mount = getenv("MAMLC_TEST_NO_MOUNT");
    bool tmpfs = geteuid() == 0 && !(no_mount && *no_mount == '1') &&
                 mount("tmpfs", fs, "tmpfs", 0, "size=64k") == 0;
    if (tmpfs) snprintf(mounted, sizeof mounted, "%s", fs);
    cr_log_info("full disk: %s",
                tmpfs ? "a 64 KiB tmpfs, filled up but for 8 KiB"
                      : "mount refused: RLIMIT_FSIZE of 8 KiB in the child (EFBIG, not ENOSPC)");
    const char *run = path_in(fs, "run"), *ckpt = path_in(run, "checkpoint.safetensors");
    const char *log = path_in(run, "log.csv");
    ChildOptions o = {.output = out};
    cr_assert_eq(run_child(&o, train_args(run, 2, 1, false)), 0);
    long size;
    char *kept = slurp(ckpt, &size);
    cr_assert(kept);
    cr_assert_gt(size, 16384, "the checkpoint (%ld bytes) must not fit in the slack", size);
    if (tmpfs) fill_up(fs, 8192);
    ChildOptions full = {.output = out, .max_file_size = tmpfs ? 0 : 8192};
    cr_assert_eq(run_child(&full, train_args(run, 4, 1, true)), 1);
    assert_output_has(out, ckpt);
    assert_output_has(out, strerror(tmpfs ? ENOSPC : EFBIG));
    log_error_line(out);
    assert_same_bytes(ckpt, kept, size, "after the failed checkpoint");
    cr_assert_eq(checkpoint_step(ckpt), 2);
    cr_assert_eq(count_named(run, ".tmp"), 0, "a temporary file was left in %s", run);
    long last;
    log_rows(log, &last);
    cr_assert_eq(last, 3, "the log should end at step 3, whose checkpoint failed; it ends at %ld",
                 last);
    assert_output_has(out,
                      "step 3: cannot write the checkpoint (the checkpoint of step 2 is kept)");
    /* Space again: the run resumes from step 2 and ends at 4, the log holding each step once. */
    if (tmpfs) cr_assert_eq(unlink(path_in(fs, "filler")), 0);
    cr_assert_eq(run_child(&o, train_args(run, 4, 1, true)), 0);
    cr_assert_eq(checkpoint_step(ckpt), 4);
    assert_log_is_1_to(log, 4);
    free(kept);
}

/* ------------------------------------------------------------------------------------------ */
/* Signals                                                                                     */

static void signal_checkpoints_at_the_step_boundary(int sig) {
    const char *dir = scratch(), *run = path_in(dir, "run"), *out = path_in(dir, "out.txt");
    const char *ckpt = path_in(run, "checkpoint.safetensors"), *log = path_in(run, "log.csv");
    ChildOptions o = {.output = out};
    pid_t pid = spawn(&o, train_args(run, 100000000, 0, false));
    wait_for_rows(log, 3, pid, out);
    cr_assert_eq(kill(pid, sig), 0);
    int st = wait_child(pid, 60, out);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 128 + sig, "expected exit status %d, got %d",
              128 + sig, st);
    long step = checkpoint_step(ckpt), last;
    log_rows(log, &last);
    cr_assert_geq(step, 2);
    cr_assert_eq(step, last, "checkpoint at step %ld, but the log ends at step %ld", step, last);
    char said[128];
    snprintf(said, sizeof said, "interrupted by signal %d at step %ld", sig, step);
    assert_output_has(out, said);
    /* and the run continues from it */
    cr_assert_eq(run_child(&o, train_args(run, step + 2, 0, true)), 0);
    cr_assert_eq(checkpoint_step(ckpt), step + 2);
    assert_log_is_1_to(log, step + 2);
}

Test(faults, sigint_during_training_checkpoints_at_the_step_boundary_and_exits_130) {
    signal_checkpoints_at_the_step_boundary(SIGINT);
}

Test(faults, sigterm_during_training_checkpoints_at_the_step_boundary_and_exits_143) {
    signal_checkpoints_at_the_step_boundary(SIGTERM);
}

/* ------------------------------------------------------------------------------------------ */
/* Two processes sharing one kernel cache                                                      */

/* Parameters and a 2-task batch for the sinusoid graph, written into dir. */
static void write_sine_inputs(const char *params_path, const char *batch_path) {
    GraphSpec spec = {0};
    MamlError err = {{0}};
    TensorSet params, batch;
    tensorset_init(&params), tensorset_init(&batch);
    cr_assert_eq(spec_load(SINE_GRAPH, NULL, 0, &spec, &err), 0, "%s", err.message);
    cr_assert_eq(params_init(&spec, 7, &params, &err), 0, "%s", err.message);
    TaskBatch b;
    cr_assert_eq(task_batch_init(&b, 2, spec_support_size(&spec), spec_query_size(&spec),
                                 spec.input, 1, &err),
                 0, "%s", err.message);
    Rng rng;
    rng_seed(&rng, 11);
    cr_assert_eq(sinusoid_sample(&spec.data, &rng, &b, NULL, NULL, &err), 0, "%s", err.message);
    cr_assert_eq(task_batch_to_tensors(&b, &batch, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_write(params_path, &params, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_write(batch_path, &batch, &err), 0, "%s", err.message);
    task_batch_free(&b);
    tensorset_free(&params), tensorset_free(&batch);
    spec_free(&spec);
}

/* Starts `mamlc grad --backend B` on the sinusoid inputs in dir, writing grad file `out`. */
static pid_t spawn_grad(const ChildOptions *o, const char *dir, const char *backend,
                        const char *out) {
    static char p[4][1100];
    static int slot;
    char *params = p[slot++ & 3], *batch = p[slot++ & 3];
    snprintf(params, 1100, "%s/params.safetensors", dir);
    snprintf(batch, 1100, "%s/batch.safetensors", dir);
    const char *args[] = {"grad",  SINE_GRAPH, "--params",  params,  "--batch", batch,
                          "--out", out,        "--backend", backend, NULL};
    return spawn(o, args);
}

/* Both gradients of a concurrent pair exist, are byte-identical, and (the first) matches ref. */
static void assert_same_grads(const char *a, const char *b, const char *ref) {
    long na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    cr_assert(x && y, "a gradient file is missing");
    cr_assert(na == nb && memcmp(x, y, (size_t)na) == 0, "%s and %s differ", a, b);
    free(x), free(y);
    TensorSet g, r;
    tensorset_init(&g), tensorset_init(&r);
    MamlError err = {{0}};
    cr_assert_eq(safetensors_read(a, &g, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_read(ref, &r, &err), 0, "%s", err.message);
    cr_assert_eq(g.n, r.n);
    for (int i = 0; i < r.n; i++) {
        const Tensor *t = &r.items[i], *u = tensorset_find(&g, t->name);
        cr_assert(u && shape_equal(t->shape, u->shape), "'%s' missing or mis-shaped", t->name);
        for (int64_t k = 0; k < shape_numel(t->shape); k++) {
            double want = tensor_get(t, k), got = tensor_get(u, k);
            cr_assert(fabs(got - want) <= 1e-4 * (1 + fabs(want)), "%s[%lld]: cpu %.9g, ref %.9g",
                      t->name, (long long)k, got, want);
        }
    }
    tensorset_free(&g), tensorset_free(&r);
}

/* The compiled object in a cpu cache directory. */
static void find_object(const char *cache, char *path, size_t size) {
    DIR *d = opendir(cache);
    cr_assert(d, "no cache directory %s", cache);
    path[0] = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n > 3 && strcmp(e->d_name + n - 3, ".so") == 0) {
            int w = snprintf(path, size, "%s/%s", cache, e->d_name);
            cr_assert(w > 0 && (size_t)w < size, "path too long");
        }
    }
    closedir(d);
    cr_assert(path[0], "no compiled object in %s", cache);
}

/* Runs two grads at once on one cache; both must succeed with the same (and right) gradient,
 * leaving no temporary file. */
static void concurrent_pair(const char *dir, const char *cache, int round, const char *ref) {
    char a[1100], b[1100], oa[1100], ob[1100];
    snprintf(a, sizeof a, "%s/grad-%d-a.safetensors", dir, round);
    snprintf(b, sizeof b, "%s/grad-%d-b.safetensors", dir, round);
    snprintf(oa, sizeof oa, "%s/out-%d-a.txt", dir, round);
    snprintf(ob, sizeof ob, "%s/out-%d-b.txt", dir, round);
    ChildOptions ca = {.cache = cache, .output = oa}, cb = {.cache = cache, .output = ob};
    pid_t pa = spawn_grad(&ca, dir, "cpu", a), pb = spawn_grad(&cb, dir, "cpu", b);
    int sa = wait_child(pa, 120, oa), sb = wait_child(pb, 120, ob);
    char *ta = slurp(oa, NULL), *tb = slurp(ob, NULL);
    cr_assert(WIFEXITED(sa) && WEXITSTATUS(sa) == 0, "round %d, first grad: status %d\n%s", round,
              sa, ta ? ta : "");
    cr_assert(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "round %d, second grad: status %d\n%s", round,
              sb, tb ? tb : "");
    free(ta), free(tb);
    assert_same_grads(a, b, ref);
    cr_assert_eq(count_named(cache, ".tmp"), 0, "round %d left a temporary file in %s", round,
                 cache);
}

Test(faults, two_grads_sharing_a_fresh_cpu_cache_both_succeed_with_identical_gradients,
     .timeout = 240) {
    const char *dir = scratch();
    write_sine_inputs(path_in(dir, "params.safetensors"), path_in(dir, "batch.safetensors"));
    const char *ref = path_in(dir, "grad-ref.safetensors");
    ChildOptions o = {.output = path_in(dir, "out-ref.txt")};
    cr_assert_eq(wait_child(spawn_grad(&o, dir, "ref", ref), 60, o.output), 0);
    char cache[1100] = "";
    for (int round = 0; round < 3; round++) {
        snprintf(cache, sizeof cache, "%s/cache-%d", dir, round); /* fresh: both compile */
        concurrent_pair(dir, cache, round, ref);
    }
    /* Both find the same damaged object (half of it): both rebuild it and agree. */
    char so[1200];
    find_object(cache, so, sizeof so);
    struct stat st;
    cr_assert_eq(stat(so, &st), 0);
    cr_assert_eq(truncate(so, st.st_size / 2), 0);
    concurrent_pair(dir, cache, 3, ref);
    cr_assert_eq(stat(so, &st), 0, "the damaged object was not rebuilt");
}

/* ------------------------------------------------------------------------------------------ */
/* Out of memory on the device                                                                 */

#if MAMLC_HAVE_CUDA
/* The sinusoid training step at `tasks` tasks (its arena grows with them). */
static void sine_train_graph(int tasks, GraphSpec *spec, Graph *g) {
    MamlError err = {{0}};
    cr_assert_eq(spec_load(SINE_GRAPH, NULL, 0, spec, &err), 0, "%s", err.message);
    graph_init(g);
    cr_assert_eq(maml_build(spec, MAML_TRAIN_STEP, tasks, g, NULL, &err), 0, "%s", err.message);
}

/* On a GPU, or else on the fake driver (tests/fake_cuda.c), whose device has 4 GiB. */
Test(faults, device_out_of_memory_names_the_plan_and_what_was_free_and_a_retry_works,
     .timeout = 300) {
    char why[600];
    if (!cuda_device_available(why, sizeof why)) {
        cr_assert_eq(use_fake_cuda_library(), 0, "no GPU (%s) and no fake driver", why);
        cr_log_info("no GPU (%s): on the fake driver", why);
    }
    GraphSpec spec = {0};
    Graph g;
    sine_train_graph(2000, &spec, &g);
    CudaOptions opt = cuda_default_options();
    opt.quiet = true;
    opt.cache_dir = scratch();
    MamlError err = {{0}};
    Backend *b = NULL;
    cr_assert_eq(cuda_backend_open(&g, PREC_F32, &opt, &b, &err), 0, "%s", err.message);
    CudaBackendInfo info;
    cr_assert_eq(cuda_backend_info(b, &info, &err), 0, "%s", err.message);
    backend_close(b);
    long long arena = info.arena_bytes;
    cr_log_info("%s: arena %.1f MiB, %.1f MiB free", info.device, arena / 1048576.0,
                info.free_bytes / 1048576.0);
    /* Take the device's memory until less than half the arena is left. */
    CudaDriver d;
    cr_assert_eq(cuda_driver_open(&d, 0, &err), 0, "%s", err.message);
    enum { MAX_BLOCKS = 8192 };
    static CUdeviceptr blocks[MAX_BLOCKS];
    int n = 0;
    size_t chunk = (size_t)1 << 30, free_b = 0, total_b = 0;
    for (;;) {
        cr_assert_eq(d.cuMemGetInfo(&free_b, &total_b), CUDA_SUCCESS);
        if ((long long)free_b < arena / 2 || n == MAX_BLOCKS || chunk < ((size_t)1 << 20)) break;
        if (chunk > free_b - (size_t)arena / 4)
            chunk /= 2;
        else if (d.cuMemAlloc(&blocks[n], chunk) == CUDA_SUCCESS)
            n++;
        else
            chunk /= 2;
    }
    if ((long long)free_b >= arena) {
        for (int i = 0; i < n; i++) cr_assert_eq(d.cuMemFree(blocks[i]), CUDA_SUCCESS);
        cuda_driver_close(&d);
        cr_skip_test("could not fill the device below the arena (%.1f MiB free)",
                     free_b / 1048576.0);
    }
    int rc = cuda_backend_open(&g, PREC_F32, &opt, &b, &err);
    /* Closing a backend leaves no context current on this thread: make ours current again. */
    cr_assert_eq(d.cuCtxSetCurrent(d.ctx), CUDA_SUCCESS);
    for (int i = 0; i < n; i++) cr_assert_eq(d.cuMemFree(blocks[i]), CUDA_SUCCESS);
    cr_assert_eq(rc, -1, "the backend opened with %.1f MiB free for a %.1f MiB arena",
                 free_b / 1048576.0, arena / 1048576.0);
    cr_assert_null(b);
    char figure[64];
    snprintf(figure, sizeof figure, "needs %.1f MiB for the arena", arena / 1048576.0);
    cr_assert(strstr(err.message, "OUT_OF_MEMORY") && strstr(err.message, figure) &&
                  strstr(err.message, "MiB free of"),
              "%s", err.message);
    cr_assert_null(strchr(err.message, '\n'), "one line: %s", err.message);
    cr_log_info("%s", err.message);
    /* Nothing is left behind: with the memory back, the same graph opens. */
    cr_assert_eq(cuda_backend_open(&g, PREC_F32, &opt, &b, &err), 0, "%s", err.message);
    backend_close(b);
    cuda_driver_close(&d);
    graph_free(&g);
    spec_free(&spec);
}
#else
Test(faults, device_out_of_memory_needs_the_cuda_headers) {
    cr_skip_test("mamlc was built without the CUDA headers: no device out-of-memory test");
}
#endif
