/* The mamlc command line: one file per command, dispatched by main.c. Each command returns the
 * process exit status (0 success, 1 runtime failure, 2 bad usage or bad input). */
#ifndef MAMLC_CLI_H
#define MAMLC_CLI_H

#include <stdbool.h>

/* Collects the repeated `--set KEY=VALUE` options of argv (any position). */
typedef struct {
    const char *items[64];
    int n;
} Overrides;

/* If argv[*i] is "--set", consumes it and its value into ov and returns 1; returns -1 (after
 * printing an error) when the value is missing or there are too many; 0 when argv[*i] is not
 * "--set". */
int cli_take_override(int argc, char **argv, int *i, Overrides *ov);

/* The cuda backend's flags, on every command that takes --backend: --conv MODE (generated,
 * cudnn or auto) and --require-cache (a kernel cache miss is an error). */
typedef struct {
    const char *conv; /* NULL: not given (generated) */
    bool require_cache;
} BackendFlags;

/* If argv[*i] is --conv (with its value) or --require-cache, consumes it into f and returns 1;
 * -1 (after printing an error) when --conv lacks its value; 0 otherwise. */
int cli_take_backend_flag(int argc, char **argv, int *i, BackendFlags *f);

/* Checks f (an unknown --conv mode; --conv cudnn|auto or --require-cache with a backend other
 * than cuda or auto) and makes it the default of every cuda backend this process opens
 * (cuda_set_defaults). Returns -1 after printing a one-line error "mamlc: CMD: ...". */
int cli_apply_backend_flags(const char *cmd, const BackendFlags *f, const char *backend);

/* Prints "mamlc: MESSAGE" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int cmd_check(int argc, char **argv);
int cmd_grad(int argc, char **argv);
int cmd_compile(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
