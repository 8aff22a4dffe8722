/* mamlc plot: the loss and accuracy curves of a run as SVG, from RUN_DIR/log.csv. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "plot.h"

int cmd_plot(int argc, char **argv) {
    const char *run_dir = NULL, *svg = NULL;
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--out") == 0) && i + 1 < argc) {
            svg = argv[++i];
        } else if (argv[i][0] == '-' || run_dir) {
            cli_error("plot: %s '%s'", argv[i][0] == '-' ? "unknown option" : "unexpected argument",
                      argv[i]);
            return 2;
        } else {
            run_dir = argv[i];
        }
    }
    if (!run_dir) {
        cli_error("usage: mamlc plot RUN_DIR [-o FILE.svg]");
        return 2;
    }
    char log[1100], out[1100];
    snprintf(log, sizeof log, "%s/log.csv", run_dir);
    snprintf(out, sizeof out, "%s/curves.svg", run_dir);
    MamlError err;
    if (plot_log(log, svg ? svg : out, run_dir, &err)) {
        cli_error("%s", err.message);
        return 2;
    }
    printf("%s\n", svg ? svg : out);
    return 0;
}
