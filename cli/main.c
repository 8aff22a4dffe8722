/* mamlc: compiles a MAML training graph from YAML and trains, evaluates or benchmarks it. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} Command;

static const Command commands[] = {
    {"check", cmd_check, "check GRAPH.yaml [--set KEY=VALUE ...]"},
    {"compile", cmd_compile,
     "compile GRAPH.yaml -o DIR [--backend cuda|cpu] [--conv generated|tensor|auto] [--json]\n"
     "        [--no-fuse] [--no-cc] [--dot] [--set KEY=VALUE ...]"},
    {"grad", cmd_grad,
     "grad GRAPH.yaml --params P.safetensors --batch B.safetensors --out G.safetensors\n"
     "        [--backend ref|cpu|cuda|auto] [--conv generated|cudnn|auto|tensor]\n"
     "        [--require-cache] [--dtype f32|f64] [--set KEY=VALUE ...]"},
    {"train", cmd_train,
     "train GRAPH.yaml [--data DIR] [--steps N] [--backend auto|cuda|cpu|ref] [--out RUN_DIR]\n"
     "        [--conv generated|cudnn|auto|tensor] [--require-cache]\n"
     "        [--resume] [--val-every N] [--val-tasks N] [--ckpt-every N] [--seed S]\n"
     "        [--time-limit SECONDS] [--progress auto|bar|lines|quiet] [--set KEY=VALUE ...]"},
    {"eval", cmd_eval,
     "eval GRAPH.yaml --checkpoint C.safetensors [--data DIR] [--tasks N] [--backend ...]\n"
     "        [--conv generated|cudnn|auto|tensor] [--require-cache]\n"
     "        [--tasks-per-run N] [--seed S] [--set KEY=VALUE ...]"},
    {"plot", cmd_plot, "plot RUN_DIR [-o FILE.svg]"},
    {"bench", cmd_bench,
     "bench GRAPH.yaml [--backend cpu|ref|cuda|auto] [--conv generated|cudnn|auto|tensor] "
     "[--require-cache]\n"
     "        [--json] [--no-fuse] [--reps N] [--warmup N]\n"
     "        [--kernel-reps N] [--top N] [--seed S] [--set KEY=VALUE ...]"},
};

#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

void cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("mamlc: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_take_override(int argc, char **argv, int *i, Overrides *ov) {
    if (strcmp(argv[*i], "--set") != 0) return 0;
    if (*i + 1 >= argc) {
        cli_error("--set needs KEY=VALUE");
        return -1;
    }
    if (ov->n == (int)(sizeof ov->items / sizeof ov->items[0])) {
        cli_error("too many --set options (at most %d)", ov->n);
        return -1;
    }
    ov->items[ov->n++] = argv[++*i];
    return 1;
}

static void usage(FILE *out) {
    fprintf(out, "usage: mamlc COMMAND ...\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(out, "  mamlc %s\n", commands[i].usage);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s'", argv[1]);
    usage(stderr);
    return 2;
}
