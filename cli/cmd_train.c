/* mamlc train: trains a graph on its tasks (runtime/train.h does the work). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "train.h"

#define TRAIN_USAGE                                                                                \
    "usage: mamlc train GRAPH.yaml [--data DIR] [--steps N] [--backend auto|cuda|cpu|ref]\n"       \
    "        [--conv generated|cudnn|auto|tensor] [--require-cache] [--out RUN_DIR] [--resume]\n"  \
    "        [--val-every N] [--val-tasks N] [--ckpt-every N]\n"                                   \
    "        [--seed S] [--time-limit SECONDS] [--progress auto|bar|lines|quiet]\n"                \
    "        [--set KEY=VALUE ...]"

static volatile sig_atomic_t stop_signal;

/* Records the signal; SA_RESETHAND makes a second Ctrl-C kill the process as usual, SA_RESTART
 * keeps file I/O in progress from failing with EINTR. */
static void on_signal(int sig) {
    stop_signal = sig;
}

static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Parses an integer option value in min..max. */
static int parse_count(const char *opt, const char *s, long min, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        cli_error("train: %s needs an integer in %ld..%ld, not '%s'", opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_progress(const char *s, ProgressMode *m) {
    static const char *const names[] = {"auto", "bar", "lines", "quiet"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *m = (ProgressMode)i;
            return 0;
        }
    cli_error("train: --progress must be auto, bar, lines or quiet, not '%s'", s);
    return -1;
}

typedef enum { V_STRING, V_STEPS, V_COUNT, V_SEED, V_PROGRESS, V_SECONDS } ValueKind;

typedef struct {
    const char *name;
    ValueKind kind;
    void *slot;
} ValuedOption;

static int store_value(const ValuedOption *opt, const char *v, TrainOptions *o) {
    long n = 0;
    switch (opt->kind) {
    case V_STRING:
        *(const char **)opt->slot = v;
        return 0;
    case V_PROGRESS:
        return parse_progress(v, opt->slot);
    case V_STEPS:
        if (parse_count(opt->name, v, 1, 1L << 40, &n)) return -1;
        *(long *)opt->slot = n;
        return 0;
    case V_COUNT:
        if (parse_count(opt->name, v, 0, 1L << 30, &n)) return -1;
        *(int *)opt->slot = (int)n;
        return 0;
    case V_SECONDS:
        if (parse_count(opt->name, v, 0, 1L << 30, &n)) return -1;
        *(double *)opt->slot = (double)n;
        return 0;
    case V_SEED:
        if (parse_count(opt->name, v, 0, 0x7fffffffffffffffL, &n)) return -1;
        o->seed = (uint64_t)n;
        o->has_seed = true;
        return 0;
    }
    return -1;
}

/* Options with a value; returns 1 when argv[*i] was one, -1 on a bad value, 0 otherwise. */
static int take_valued(int argc, char **argv, int *i, TrainOptions *o) {
    const ValuedOption opts[] = {
        {"--data", V_STRING, &o->data_dir},        {"--out", V_STRING, &o->run_dir},
        {"--backend", V_STRING, &o->backend},      {"--steps", V_STEPS, &o->steps},
        {"--val-every", V_COUNT, &o->val_every},   {"--val-tasks", V_COUNT, &o->val_tasks},
        {"--ckpt-every", V_COUNT, &o->ckpt_every}, {"--seed", V_SEED, NULL},
        {"--progress", V_PROGRESS, &o->progress},  {"--time-limit", V_SECONDS, &o->time_limit_s},
    };
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        if (strcmp(argv[*i], opts[k].name) != 0) continue;
        if (*i + 1 >= argc) {
            cli_error("train: %s needs a value", argv[*i]);
            return -1;
        }
        return store_value(&opts[k], argv[++*i], o) ? -1 : 1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, TrainOptions *o, Overrides *ov) {
    BackendFlags flags = {NULL, false};
    memset(o, 0, sizeof *o);
    memset(ov, 0, sizeof *ov);
    *o = (TrainOptions){
        .backend = "auto", .steps = 60000, .val_every = 500, .val_tasks = 100, .ckpt_every = 500};
    for (int i = 1; i < argc; i++) {
        int taken = cli_take_override(argc, argv, &i, ov);
        if (taken == 0) taken = cli_take_backend_flag(argc, argv, &i, &flags);
        if (taken == 0) taken = take_valued(argc, argv, &i, o);
        if (taken < 0) return -1;
        if (taken) continue;
        if (strcmp(argv[i], "--resume") == 0) {
            o->resume = true;
        } else if (argv[i][0] == '-' || o->graph) {
            cli_error("train: %s '%s'",
                      argv[i][0] == '-' ? "unknown option" : "unexpected argument", argv[i]);
            return -1;
        } else {
            o->graph = argv[i];
        }
    }
    if (!o->graph) {
        cli_error(TRAIN_USAGE);
        return -1;
    }
    o->overrides = ov->items;
    o->n_overrides = ov->n;
    return cli_apply_backend_flags("train", &flags, o->backend);
}

int cmd_train(int argc, char **argv) {
    TrainOptions o;
    Overrides ov;
    if (parse_args(argc, argv, &o, &ov)) return 2;
    o.stop_signal = &stop_signal;
    install_handlers();
    TrainResult r;
    MamlError err;
    TrainStatus st = train_run(&o, &r, &err);
    switch (st) {
    case TRAIN_DONE:
        printf("trained to step %ld; checkpoint %s, log %s/log.csv\n", r.step, r.checkpoint,
               r.run_dir);
        return 0;
    case TRAIN_INTERRUPTED:
        fprintf(stderr, "mamlc: interrupted by signal %d at step %ld; checkpoint %s\n", r.signal,
                r.step, r.checkpoint);
        return 128 + r.signal;
    case TRAIN_BAD_INPUT:
        cli_error("%s", err.message);
        return 2;
    default:
        cli_error("%s", err.message);
        return 1;
    }
}
