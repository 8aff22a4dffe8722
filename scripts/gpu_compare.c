/* gpu_compare: the checks scripts/gpu_check.sh runs on a machine with a GPU, where Criterion and
 * the ../shared data are not available. Linked against build/libmamlc.a.
 *
 *   gpu_compare device
 *       the CUDA driver and device, NVRTC and cuDNN this machine offers (exit 1 without a device)
 *   gpu_compare tensors GOT.safetensors WANT64.safetensors [REF32.safetensors] [--bound B]
 *       per tensor, max|got - want| / scale, where scale is the tensor's largest magnitude (or its
 *       group's, "grad/", "adam/m/", ..., when it is zero up to rounding, like the conv-bias
 *       gradients batch norm cancels exactly); the bound is B (default 1e-4), or 3x REF32's own
 *       error where that is larger. Exit 1 when a tensor is over its bound.
 *   gpu_compare steps GRAPH.yaml [--backend cuda] [--oracle ref] [--steps 10] [--tasks 2] [--set
 * K=V ...] STEPS training steps from the same start (bench_inputs, images replaced by uniform noise
 * so that max-pool windows hold no near-ties) on the backend, on the oracle in float64 and on the
 * oracle in float32, side by side on three threads, each feeding its updated parameters and Adam
 * state back; then `tensors` on the final state. The oracle is ref, or cpu where ref would take
 * minutes (the test suite holds cpu in float64 to ref within 1e-12).
 *   gpu_compare track GRAPH.yaml [same options as steps] [--dump FILE]
 *       the same steps, but every run starts each step from the oracle's float64 state, so one
 *       wrong step stands out from accumulated drift; checks the backend repeats a step bitwise
 *       and writes the worst step's inputs to FILE.
 *   gpu_compare profile GRAPH.yaml
 * [--top 15] [--no-fuse] [--set K=V ...] the cuda backend at the graph's meta-batch: the captured
 * step replayed (CUDA events), then every kernel timed alone; the slowest kernels with their
 * achieved FLOP/s and bytes/s. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "bench.h"
#include "compare.h"
#include "cuda_backend.h"
#include "cuda_driver.h"
#include "cuda_nvrtc.h"
#include "cudnn_conv.h"
#include "kernel.h"
#include "maml.h"
#include "safetensors.h"
#include "spec.h"

#define MAX_SETS 16

/* ---- device ---- */

static int cmd_device(void) {
    char why[1024];
    bool ok = cuda_device_available(why, sizeof why);
    printf("device: %s\n", why);
    MamlError err;
    Nvrtc *n;
    if (nvrtc_open(&n, &err) == 0) {
        int major, minor;
        nvrtc_version(n, &major, &minor);
        printf("nvrtc:  %d.%d (%s)\n", major, minor, nvrtc_library(n));
        nvrtc_close(n);
    } else {
        printf("nvrtc:  %s\n", err.message);
        ok = false;
    }
    Cudnn *c;
    if (cudnn_open(&c, &err) == 0) {
        printf("cudnn:  %zu (%s)\n", cudnn_version(c), cudnn_library(c));
        cudnn_close(c);
    } else {
        printf("cudnn:  %s (optional)\n", err.message);
    }
    return ok ? 0 : 1;
}

/* ---- tensors ---- */

/* runtime/compare.h's compare_sets on stdout: a line per tensor (unless quiet; those over their
 * bound always) and a summary; returns the number over their bound or missing; *worst_out (if
 * given) gets the largest error/bound. */
static int compare_sets_worst(const TensorSet *got, const TensorSet *want, const TensorSet *ref32,
                              double bound, const char *label, bool quiet, double *worst_out) {
    CompareSummary s;
    int bad = compare_sets(got, want, ref32, bound, label, stdout, !quiet, &s);
    if (worst_out) *worst_out = s.worst;
    return bad;
}

static int read_set(const char *path, TensorSet *set) {
    MamlError err;
    tensorset_init(set);
    if (safetensors_read(path, set, &err) == 0) return 0;
    fprintf(stderr, "gpu_compare: %s\n", err.message);
    return -1;
}

static int cmd_tensors(int argc, char **argv) {
    const char *files[3] = {NULL, NULL, NULL};
    double bound = 1e-4;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--bound") == 0 && i + 1 < argc)
            bound = atof(argv[++i]);
        else if (n < 3)
            files[n++] = argv[i];
    }
    if (n < 2) {
        fprintf(stderr, "usage: gpu_compare tensors GOT WANT64 [REF32] [--bound B]\n");
        return 2;
    }
    TensorSet got, want, ref32;
    tensorset_init(&ref32);
    if (read_set(files[0], &got) || read_set(files[1], &want) ||
        (files[2] && read_set(files[2], &ref32)))
        return 2;
    int bad =
        compare_sets_worst(&got, &want, files[2] ? &ref32 : NULL, bound, files[0], false, NULL);
    tensorset_free(&got);
    tensorset_free(&want);
    tensorset_free(&ref32);
    return bad == 0 ? 0 : 1;
}

/* ---- steps ---- */

typedef struct {
    const char *graph, *backend, *oracle;
    int steps, tasks;
    double perturb; /* relative noise added to the backend's starting parameters */
    const char *sets[MAX_SETS];
    int n_sets;
} StepArgs;

/* --conv MODE (generated, cudnn, auto, tensor): how the cuda backend runs the convolutions. */
static int take_conv(const char *v, CudaConvMode *mode) {
    MamlError err;
    if (cuda_conv_mode_parse(v, mode, &err) == 0) return 0;
    fprintf(stderr, "gpu_compare: %s\n", err.message);
    return -1;
}

static int parse_steps(int argc, char **argv, StepArgs *a) {
    memset(a, 0, sizeof *a);
    a->backend = "cuda", a->oracle = "ref", a->steps = 10, a->tasks = 2;
    for (int i = 0; i < argc; i++) {
        bool more = i + 1 < argc;
        if (!strcmp(argv[i], "--backend") && more)
            a->backend = argv[++i];
        else if (!strcmp(argv[i], "--oracle") && more)
            a->oracle = argv[++i];
        else if (!strcmp(argv[i], "--steps") && more)
            a->steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tasks") && more)
            a->tasks = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--perturb") && more)
            a->perturb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--conv") && more) {
            CudaConvMode m; /* backend_open's cuda backends take the process default */
            if (take_conv(argv[++i], &m)) return -1;
            cuda_set_defaults(m, false);
        } else if (!strcmp(argv[i], "--set") && more && a->n_sets < MAX_SETS - 1)
            a->sets[a->n_sets++] = argv[++i];
        else if (argv[i][0] != '-' && !a->graph)
            a->graph = argv[i];
        else
            return -1;
    }
    return a->graph && a->steps > 0 && a->tasks > 0 ? 0 : -1;
}

/* The backend, the oracle in float64 and the oracle in float32: runtime/compare.h's StepRun. */
typedef StepRun Runner;

/* Opens the three backends and copies the start into each (float32; the float64 run keeps its
 * state in float64), so their differences come from the arithmetic alone. */
static int open_runners(const StepArgs *a, const Graph *g, const TensorSet *start, Runner *r,
                        MamlError *err) {
    static char labels[3][32];
    const char *names[3] = {a->backend, a->oracle, a->oracle};
    Precision precs[3] = {PREC_F32, PREC_F64, PREC_F32};
    for (int i = 0; i < 3; i++) {
        char why[1200];
        if (backend_open(names[i], g, precs[i], &r[i].backend, why, sizeof why, err)) return -1;
        snprintf(labels[i], sizeof labels[i], "%s%s", names[i],
                 i == 0   ? ""
                 : i == 1 ? " f64"
                          : " f32");
        r[i].label = labels[i];
    }
    return compare_steps_start(r, 3, start, a->steps, err);
}

/* Multiplies every parameter value by (1 + rel * u), u uniform in [-1, 1): how much a
 * perturbation of the size of float32 rounding grows over the steps. */
static void perturb_params(TensorSet *state, const Graph *g, double rel) {
    uint64_t x = 99;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT || n->input_kind != INPUT_PARAM) continue;
        Tensor *t = tensorset_find(state, n->name);
        for (int64_t k = 0, c = t ? shape_numel(t->shape) : 0; k < c; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            double u = (double)(x >> 11) / 4503599627370496.0 - 1.0;
            tensor_set(t, k, tensor_get(t, k) * (1 + rel * u));
        }
    }
}

/* The three runs go side by side, each on its own thread (the backends share nothing). */
static int run_steps(const StepArgs *a, Runner *r, MamlError *err) {
    if (compare_steps_go(r, 3, a->steps, err)) return -1;
    compare_print_steps(r, 3, a->steps, stdout);
    return 0;
}

static int cmd_steps(int argc, char **argv) {
    StepArgs a;
    if (parse_steps(argc, argv, &a)) {
        fprintf(
            stderr,
            "usage: gpu_compare steps GRAPH.yaml [--backend cuda] [--oracle ref|cpu] [--steps 10] "
            "[--tasks 2] [--conv generated|cudnn|auto|tensor] [--set K=V ...]\n");
        return 2;
    }
    char batch[64];
    snprintf(batch, sizeof batch, "maml.meta_batch=%d", a.tasks);
    a.sets[a.n_sets++] = batch;
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    TensorSet start;
    tensorset_init(&start);
    Runner r[3];
    memset(r, 0, sizeof r);
    MamlError err;
    int rc = spec_load(a.graph, a.sets, a.n_sets, &spec, &err);
    if (rc == 0) rc = maml_build(&spec, MAML_TRAIN_STEP, a.tasks, &g, NULL, &err);
    if (rc == 0) rc = bench_inputs(&spec, &g, 7, &start, &err);
    if (rc == 0) compare_noise_images(&start);
    if (rc == 0) rc = open_runners(&a, &g, &start, r, &err);
    if (rc == 0 && a.perturb > 0) perturb_params(&r[0].state, &g, a.perturb);
    if (rc == 0) rc = run_steps(&a, r, &err);
    int bad = 0;
    if (rc == 0) {
        char label[300];
        snprintf(label, sizeof label, "%s after %d steps (T=%d): %s vs %s", a.graph, a.steps,
                 a.tasks, r[0].label, a.oracle);
        bad = compare_sets_worst(&r[0].state, &r[1].state, &r[2].state, 1e-4, label, false, NULL);
    } else {
        fprintf(stderr, "gpu_compare: %s\n", err.message);
    }
    for (int i = 0; i < 3; i++) backend_close(r[i].backend);
    compare_steps_free(r, 3);
    tensorset_free(&start);
    graph_free(&g);
    spec_free(&spec);
    return rc ? 2 : bad ? 1 : 0;
}

/* ---- track ---- */

/* Whether two output sets are bitwise equal. */
static bool same_bits(const TensorSet *a, const TensorSet *b) {
    if (a->n != b->n) return false;
    for (int i = 0; i < a->n; i++) {
        const Tensor *x = &a->items[i], *y = tensorset_find(b, x->name);
        if (!y || !shape_equal(x->shape, y->shape)) return false;
        for (int64_t k = 0, n = shape_numel(x->shape); k < n; k++) {
            double u = tensor_get(x, k), v = tensor_get(y, k);
            if (memcmp(&u, &v, sizeof u) != 0) return false;
        }
    }
    return true;
}

typedef struct {
    Backend *b[3]; /* backend f32, oracle f64, oracle f32 */
    TensorSet out[3], state64, s32, worst_state;
    double worst;
    int worst_step;
} Track;

/* One step of every run on the same state; compares; advances the state along float64. */
static int track_step(Track *t, int step, bool check_repeat, MamlError *err) {
    for (int i = 0; i < 3; i++) {
        tensorset_free(&t->out[i]);
        tensorset_init(&t->out[i]);
    }
    tensorset_free(&t->s32);
    if (compare_copy_as(&t->state64, TENSOR_F32, &t->s32, err)) return -1;
    if (backend_run(t->b[0], &t->s32, &t->out[0], err) ||
        backend_run(t->b[1], &t->state64, &t->out[1], err) ||
        backend_run(t->b[2], &t->s32, &t->out[2], err))
        return -1;
    if (check_repeat) {
        TensorSet again;
        tensorset_init(&again);
        int rc = backend_run(t->b[0], &t->s32, &again, err);
        if (rc == 0)
            printf("deterministic: %s (the same step run twice)\n",
                   same_bits(&t->out[0], &again) ? "yes, bitwise" : "NO: the outputs differ");
        tensorset_free(&again);
        if (rc) return -1;
    }
    char label[96];
    snprintf(label, sizeof label, "step %d from the float64 trajectory", step);
    double worst = 0;
    compare_sets_worst(&t->out[0], &t->out[1], &t->out[2], 1e-4, label, true, &worst);
    if (worst > t->worst) {
        t->worst = worst, t->worst_step = step;
        tensorset_free(&t->worst_state);
        if (compare_copy_as(&t->s32, TENSOR_F32, &t->worst_state, err)) return -1;
    }
    compare_feed_back(&t->state64, &t->out[1]);
    return 0;
}

/* gpu_compare track GRAPH.yaml [--backend cuda] [--oracle ref] [--steps 10] [--tasks 2]
 *     [--dump FILE] [--set K=V ...]
 * Each step's outputs on the oracle's own float64 trajectory: at every step the backend, the
 * oracle in float64 and in float32 run on the same state, so a step that computes something wrong
 * stands out from the drift that accumulates in `steps`. Checks that the backend repeats a step
 * bitwise, and writes the state (inputs) of the worst step to FILE for reproducing it elsewhere. */
static int cmd_track(int argc, char **argv) {
    StepArgs a;
    const char *dump = NULL;
    int kept = 0;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--dump") && i + 1 < argc)
            dump = argv[++i];
        else
            argv[kept++] = argv[i];
    if (parse_steps(kept, argv, &a)) {
        fprintf(stderr, "usage: gpu_compare track GRAPH.yaml [--backend cuda] [--oracle ref|cpu] "
                        "[--steps 10] [--tasks 2] [--dump FILE] [--set K=V ...]\n");
        return 2;
    }
    char batch[64];
    snprintf(batch, sizeof batch, "maml.meta_batch=%d", a.tasks);
    a.sets[a.n_sets++] = batch;
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    Track t;
    memset(&t, 0, sizeof t);
    tensorset_init(&t.state64);
    tensorset_init(&t.s32);
    tensorset_init(&t.worst_state);
    for (int i = 0; i < 3; i++) tensorset_init(&t.out[i]);
    MamlError err;
    char why[1200];
    int rc = spec_load(a.graph, a.sets, a.n_sets, &spec, &err);
    if (rc == 0) rc = maml_build(&spec, MAML_TRAIN_STEP, a.tasks, &g, NULL, &err);
    if (rc == 0) rc = bench_inputs(&spec, &g, 7, &t.state64, &err);
    if (rc == 0) compare_noise_images(&t.state64);
    const char *names[3] = {a.backend, a.oracle, a.oracle};
    Precision precs[3] = {PREC_F32, PREC_F64, PREC_F32};
    for (int i = 0; rc == 0 && i < 3; i++)
        rc = backend_open(names[i], &g, precs[i], &t.b[i], why, sizeof why, &err);
    for (int s = 1; rc == 0 && s <= a.steps; s++) rc = track_step(&t, s, s == 1, &err);
    if (rc == 0) {
        printf("%s (T=%d): worst step %d, error/bound %.3g\n", a.graph, a.tasks, t.worst_step,
               t.worst);
        if (dump && t.worst_state.n) rc = safetensors_write(dump, &t.worst_state, &err);
        if (rc == 0 && dump) printf("wrote the state of step %d to %s\n", t.worst_step, dump);
    }
    if (rc) fprintf(stderr, "gpu_compare: %s\n", err.message);
    for (int i = 0; i < 3; i++) {
        backend_close(t.b[i]);
        tensorset_free(&t.out[i]);
    }
    tensorset_free(&t.state64);
    tensorset_free(&t.s32);
    tensorset_free(&t.worst_state);
    graph_free(&g);
    spec_free(&spec);
    return rc ? 2 : t.worst > 1 ? 1 : 0;
}

/* ---- profile ---- */

typedef struct {
    int kernel;
    double ms;
} KernelTime;

static int by_time(const void *a, const void *b) {
    double x = ((const KernelTime *)a)->ms, y = ((const KernelTime *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_profile(Backend *b, const double *kernel_ms, double step_ms, int top) {
    const CompiledGraph *cg = cuda_backend_compiled(b);
    const CudaCode *code = cuda_backend_code(b);
    int n = cg->prog.n_kernels;
    KernelTime *t = calloc((size_t)n + 1, sizeof *t);
    double sum = 0, flops = 0;
    for (int i = 0; i < n; i++) t[i] = (KernelTime){i, kernel_ms[i]}, sum += kernel_ms[i];
    for (int i = 0; i < n; i++) flops += kernel_flops(&cg->prog.kernels[i]);
    qsort(t, (size_t)n, sizeof *t, by_time);
    printf("step (graph replay, median): %.3f ms; kernels alone sum to %.3f ms; %d kernels; %.2f "
           "GFLOP "
           "-> %.1f GFLOP/s\n",
           step_ms, sum, n, flops / 1e9, flops / 1e6 / step_ms);
    printf("%-26s %-34s %-18s %9s %6s %10s %9s\n", "kernel", "function", "grid", "ms", "%",
           "GFLOP/s", "GB/s");
    for (int r = 0; r < top && r < n; r++) {
        const Kernel *k = &cg->prog.kernels[t[r].kernel];
        bool on_cudnn;
        const CudaLaunch *l = cuda_backend_launch(b, t[r].kernel, &on_cudnn);
        char grid[48] = "-";
        if (!on_cudnn)
            snprintf(grid, sizeof grid, "(%u,%u,%u)", l->grid[0], l->grid[1], l->grid[2]);
        double s = t[r].ms * 1e-3;
        printf("%-26s %-34s %-18s %9.4f %6.1f %10.1f %9.1f\n", l->name,
               on_cudnn ? "cuDNN" : code->functions[l->function].name, grid, t[r].ms,
               100 * t[r].ms / sum, kernel_flops(k) / 1e9 / s,
               kernel_bytes(&cg->prog, k, (int)cg->plan.elem_size) / 1e9 / s);
    }
    printf("%-20s %8s %10s %6s\n", "kind", "kernels", "ms", "%");
    for (int kind = 0; kind < KERNEL_KIND_COUNT; kind++) {
        int count = 0;
        double ms = 0;
        for (int i = 0; i < n; i++)
            if ((int)cg->prog.kernels[i].kind == kind) count++, ms += kernel_ms[i];
        if (count)
            printf("%-20s %8d %10.3f %6.1f\n", kernel_kind_name((KernelKind)kind), count, ms,
                   100 * ms / sum);
    }
    free(t);
}

static int cmd_profile(int argc, char **argv) {
    const char *graph = NULL, *sets[MAX_SETS];
    int n_sets = 0, top = 15;
    CudaOptions o = cuda_default_options();
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--top") && i + 1 < argc)
            top = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-fuse"))
            o.no_fuse = true;
        else if (!strcmp(argv[i], "--conv") && i + 1 < argc) {
            if (take_conv(argv[++i], &o.conv)) return 2;
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc && n_sets < MAX_SETS)
            sets[n_sets++] = argv[++i];
        else if (argv[i][0] != '-' && !graph)
            graph = argv[i];
        else
            return fprintf(
                       stderr,
                       "usage: gpu_compare profile GRAPH.yaml [--top N] [--no-fuse] [--set K=V]\n"),
                   2;
    }
    if (!graph)
        return fprintf(stderr,
                       "usage: gpu_compare profile GRAPH.yaml [--top N] [--no-fuse] [--set K=V]\n"),
               2;
    GraphSpec spec = {0};
    Graph g;
    graph_init(&g);
    TensorSet in, out;
    tensorset_init(&in);
    tensorset_init(&out);
    Backend *b = NULL;
    MamlError err;
    enum { REPS = 30 };
    double steps[REPS], *kernel_ms = NULL;
    int rc = spec_load(graph, sets, n_sets, &spec, &err);
    if (rc == 0) rc = maml_build(&spec, MAML_TRAIN_STEP, spec.maml.meta_batch, &g, NULL, &err);
    if (rc == 0) rc = bench_inputs(&spec, &g, 7, &in, &err);
    if (rc == 0) rc = cuda_backend_open(&g, PREC_F32, &o, &b, &err);
    if (rc == 0) rc = backend_run(b, &in, &out, &err);
    if (rc == 0) rc = cuda_backend_time_steps(b, REPS, steps, &err);
    if (rc == 0 && !(kernel_ms = calloc((size_t)cuda_backend_compiled(b)->prog.n_kernels + 1,
                                        sizeof *kernel_ms)))
        rc = maml_fail(&err, "out of memory");
    if (rc == 0) rc = cuda_backend_time_kernels(b, 10, kernel_ms, &err);
    if (rc == 0) {
        qsort(steps, REPS, sizeof *steps, cmp_double);
        printf("profile %s (meta_batch %d%s)\n", graph, spec.maml.meta_batch,
               o.no_fuse ? ", unfused" : "");
        print_profile(b, kernel_ms, steps[REPS / 2], top);
    } else {
        fprintf(stderr, "gpu_compare: %s\n", err.message);
    }
    free(kernel_ms);
    backend_close(b);
    tensorset_free(&in);
    tensorset_free(&out);
    graph_free(&g);
    spec_free(&spec);
    return rc ? 2 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "device")) return cmd_device();
    if (argc >= 2 && !strcmp(argv[1], "tensors")) return cmd_tensors(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "steps")) return cmd_steps(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "track")) return cmd_track(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "profile")) return cmd_profile(argc - 2, argv + 2);
    fprintf(stderr, "usage: gpu_compare device | tensors GOT WANT64 [REF32] [--bound B] | steps "
                    "GRAPH.yaml [...] "
                    "| track GRAPH.yaml [...] | profile GRAPH.yaml [...]\n");
    return 2;
}
