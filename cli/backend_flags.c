/* --conv and --require-cache, the cuda backend's flags on every command that takes --backend. */
#include <stdbool.h>
#include <string.h>

#include "cli.h"
#include "cuda_backend.h"

int cli_take_backend_flag(int argc, char **argv, int *i, BackendFlags *f) {
    if (strcmp(argv[*i], "--require-cache") == 0) {
        f->require_cache = true;
        return 1;
    }
    if (strcmp(argv[*i], "--conv") != 0) return 0;
    if (*i + 1 >= argc) {
        cli_error("--conv needs a value: generated, cudnn, auto or tensor");
        return -1;
    }
    f->conv = argv[++*i];
    return 1;
}

/* Both flags only change the cuda backend: with cpu or ref they would silently do nothing, which
 * hides a typo in a benchmark script, so they are refused there. */
int cli_apply_backend_flags(const char *cmd, const BackendFlags *f, const char *backend) {
    CudaConvMode mode = CUDA_CONV_GENERATED;
    MamlError err;
    if (f->conv && cuda_conv_mode_parse(f->conv, &mode, &err)) {
        cli_error("%s: %s", cmd, err.message);
        return -1;
    }
    bool cuda_possible = !backend || strcmp(backend, "cuda") == 0 || strcmp(backend, "auto") == 0;
    if (!cuda_possible && mode != CUDA_CONV_GENERATED) {
        cli_error("%s: --conv %s needs --backend cuda or auto (backend %s has no such lowering)",
                  cmd, f->conv, backend);
        return -1;
    }
    if (!cuda_possible && f->require_cache) {
        cli_error("%s: --require-cache needs --backend cuda or auto (it checks the cuda kernel "
                  "cache; backend %s has none)",
                  cmd, backend);
        return -1;
    }
    cuda_set_defaults(mode, f->require_cache);
    return 0;
}
