/* Benchmark helpers: clocks, medians, the machine's peak, synthetic inputs, timing, reports. */
#include "bench.h"

#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cpu_backend.h"
#include "cuda_backend.h"
#include "params.h"
#include "rng.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- the machine's peak ---- */

/* The value after "key<tabs>: " on the first /proc/cpuinfo line starting with key, into buf. */
static bool cpuinfo_field(const char *key, char *buf, size_t size) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return false;
    char line[8192];
    bool found = false;
    size_t klen = strlen(key);
    while (!found && fgets(line, sizeof line, f)) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, key, klen) != 0 || !colon) continue;
        snprintf(buf, size, "%s", colon + 1 + (colon[1] == ' '));
        buf[strcspn(buf, "\n")] = 0;
        found = true;
    }
    fclose(f);
    return found;
}

static bool has_flag(const char *flags, const char *flag) {
    size_t n = strlen(flag);
    for (const char *p = strstr(flags, flag); p; p = strstr(p + 1, flag))
        if ((p == flags || p[-1] == ' ') && (p[n] == ' ' || p[n] == 0)) return true;
    return false;
}

void bench_isa_from_flags(const char *flags, MachinePeak *p) {
    static const struct {
        const char *isa, *units;
        int flop;
    } table[4] = {
        {"avx512f", "2 AVX-512 FMA units x 16 lanes x 2", 64},
        {"avx2+fma", "2 AVX2 FMA units x 8 lanes x 2", 32},
        {"avx", "1 add + 1 multiply unit x 8 lanes", 16},
        {"sse", "1 add + 1 multiply unit x 4 lanes", 8},
    };
    int i = has_flag(flags, "avx512f")                          ? 0
            : has_flag(flags, "avx2") && has_flag(flags, "fma") ? 1
            : has_flag(flags, "avx")                            ? 2
                                                                : 3;
    p->flop_per_cycle = table[i].flop;
    snprintf(p->isa, sizeof p->isa, "%s", table[i].isa);
    snprintf(p->units, sizeof p->units, "%s", table[i].units);
}

static void detect_isa(MachinePeak *p) {
    static char flags[8192];
    if (!cpuinfo_field("flags", flags, sizeof flags)) flags[0] = 0;
    bench_isa_from_flags(flags, p);
}

static void detect_clock(MachinePeak *p) {
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "r");
    double khz = 0;
    if (f) {
        if (fscanf(f, "%lf", &khz) != 1) khz = 0;
        fclose(f);
    }
    char mhz[64];
    if (khz > 0) {
        p->ghz = khz / 1e6;
        snprintf(p->clock_from, sizeof p->clock_from, "cpuinfo_max_freq");
    } else if (cpuinfo_field("cpu MHz", mhz, sizeof mhz) && atof(mhz) > 0) {
        p->ghz = atof(mhz) / 1e3;
        snprintf(p->clock_from, sizeof p->clock_from, "/proc/cpuinfo cpu MHz");
    } else {
        p->ghz = 2.0;
        snprintf(p->clock_from, sizeof p->clock_from, "unknown, 2 GHz assumed");
    }
}

void bench_machine_peak(MachinePeak *p) {
    memset(p, 0, sizeof *p);
    cpu_set_t set;
    p->cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    detect_isa(p);
    detect_clock(p);
    p->peak_gflops = p->cores * p->flop_per_cycle * p->ghz;
    const char *env = getenv("MAMLC_PEAK_GFLOPS");
    if (env && atof(env) > 0) {
        p->peak_gflops = atof(env);
        snprintf(p->assumption, sizeof p->assumption,
                 "FP32 peak %.1f GFLOP/s from $MAMLC_PEAK_GFLOPS", p->peak_gflops);
        return;
    }
    snprintf(p->assumption, sizeof p->assumption,
             "FP32 peak %.1f GFLOP/s = %d cores x %d FLOP/cycle (%s: %s, assumed) x %.2f GHz (%s)",
             p->peak_gflops, p->cores, p->flop_per_cycle, p->isa, p->units, p->ghz, p->clock_from);
}

/* ---- synthetic inputs ---- */

static void fill_images(Tensor *t, Rng *r) {
    for (int64_t i = 0, n = shape_numel(t->shape); i < n; i++)
        tensor_set(t, i, rng_uniform(r) < 0.15 ? 0.0 : 1.0);
}

static void fill_labels(Tensor *t, int n_way) {
    int64_t per_task = t->shape.rank > 1 ? t->shape.dims[1] : 1;
    for (int64_t i = 0, n = shape_numel(t->shape); i < n; i++)
        tensor_set(t, i, (double)((i % per_task) % (n_way > 0 ? n_way : 1)));
}

static double lerp(const double range[2], double u) {
    return range[0] + (range[1] - range[0]) * u;
}

/* Sinusoid tasks: x uniform in x_range, y = A sin(x - phase), A and phase drawn per task. */
static void fill_sinusoid(const DataSettings *d, Tensor *x, Tensor *y, Rng *r) {
    int64_t tasks = x->shape.dims[0], per_task = shape_numel(x->shape) / (tasks ? tasks : 1);
    for (int64_t t = 0; t < tasks; t++) {
        double a = lerp(d->amplitude, rng_uniform(r)), ph = lerp(d->phase, rng_uniform(r));
        for (int64_t i = t * per_task; i < (t + 1) * per_task; i++) {
            double v = lerp(d->x_range, rng_uniform(r));
            tensor_set(x, i, v);
            if (y && y->dtype != TENSOR_I64) tensor_set(y, i, a * sin(v - ph));
        }
    }
}

static void fill_uniform(Tensor *t, Rng *r, double scale) {
    for (int64_t i = 0, n = shape_numel(t->shape); i < n; i++)
        tensor_set(t, i, scale * (2 * rng_uniform(r) - 1));
}

/* Fills one input by its name; parameters come from params. */
static void fill_input(const GraphSpec *spec, const TensorSet *params, Tensor *t, Rng *r) {
    const Tensor *p = tensorset_find(params, t->name);
    if (p) {
        for (int64_t i = 0, n = shape_numel(t->shape); i < n; i++)
            tensor_set(t, i, tensor_get(p, i));
    } else if (strncmp(t->name, "adam/", 5) == 0) {
        if (strcmp(t->name, "adam/step") == 0) tensor_set(t, 0, 1.0); /* m and v stay zero */
    } else if (strncmp(t->name, "inner_lr.", 9) == 0) {
        for (int64_t i = 0, n = shape_numel(t->shape); i < n; i++)
            tensor_set(t, i, spec->maml.inner.lr);
    } else if (strcmp(t->name, "support_y") == 0 || strcmp(t->name, "query_y") == 0) {
        if (t->dtype == TENSOR_I64) fill_labels(t, spec->maml.n_way);
    } else if (strcmp(t->name, "support_x") == 0 || strcmp(t->name, "query_x") == 0) {
        if (spec->data.dataset == DATASET_OMNIGLOT) fill_images(t, r);
    } else {
        fill_uniform(t, r, 0.1); /* an input this helper does not know: small values */
    }
}

static int add_inputs(const Graph *g, TensorSet *out, MamlError *err) {
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT) continue;
        TensorDType dt = n->dtype == DT_REAL ? TENSOR_F32 : TENSOR_I64;
        if (!tensorset_add(out, n->name, dt, n->shape, NULL, err)) return -1;
    }
    return 0;
}

int bench_inputs(const GraphSpec *spec, const Graph *g, uint64_t seed, TensorSet *out,
                 MamlError *err) {
    tensorset_init(out);
    TensorSet params;
    tensorset_init(&params);
    int rc = params_init(spec, seed, &params, err);
    if (rc == 0) rc = add_inputs(g, out, err);
    Rng r;
    rng_seed(&r, seed ^ 0x6d616d6c63ull);
    for (int i = 0; rc == 0 && i < out->n; i++) fill_input(spec, &params, &out->items[i], &r);
    if (rc == 0 && spec->data.dataset == DATASET_SINUSOID) {
        static const char *sets[2][2] = {{"support_x", "support_y"}, {"query_x", "query_y"}};
        for (int s = 0; s < 2; s++) {
            Tensor *x = tensorset_find(out, sets[s][0]), *y = tensorset_find(out, sets[s][1]);
            if (x && y && shape_numel(x->shape) == shape_numel(y->shape))
                fill_sinusoid(&spec->data, x, y, &r);
        }
    }
    tensorset_free(&params);
    if (rc) tensorset_free(out);
    return rc;
}

/* ---- timing ---- */

static int time_steps(Backend *b, const TensorSet *inputs, int n, double *ms, MamlError *err) {
    for (int i = 0; i < n; i++) {
        TensorSet outputs;
        tensorset_init(&outputs);
        double t0 = maml_now_ms();
        int rc = backend_run(b, inputs, &outputs, err);
        double t1 = maml_now_ms();
        tensorset_free(&outputs);
        if (rc) return -1;
        if (ms) ms[i] = t1 - t0;
    }
    return 0;
}

/* The data inputs (the task batch) of inputs, copied. */
static int batch_of(const Graph *g, const TensorSet *inputs, TensorSet *batch, MamlError *err) {
    tensorset_init(batch);
    for (int i = 0; i < inputs->n; i++) {
        const Tensor *t = &inputs->items[i];
        if (graph_is_data_input(g, t->name) &&
            !tensorset_add(batch, t->name, t->dtype, t->shape, t->data, err))
            return -1;
    }
    return 0;
}

typedef struct {
    Backend *backend;
    const TensorSet *batch;
} SameBatch;

static int stage_same_batch(void *ctx, MamlError *err) {
    const SameBatch *s = ctx;
    return backend_stage(s->backend, s->batch, err);
}

/* n steps back to back, each staging the next one's batch (here the same batch again) while it
 * runs: the mean milliseconds per step. */
static int time_pipelined(Backend *b, const TensorSet *inputs, int n, double *ms, MamlError *err) {
    TensorSet batch, outputs;
    tensorset_init(&outputs);
    int rc = batch_of(b->graph, inputs, &batch, err);
    SameBatch next = {.backend = b, .batch = &batch};
    double t0 = maml_now_ms();
    for (int i = 0; rc == 0 && i < n; i++)
        rc = backend_run_overlapped(b, inputs, i + 1 < n ? stage_same_batch : NULL, &next, &outputs,
                                    err);
    *ms = (maml_now_ms() - t0) / n;
    tensorset_free(&batch);
    tensorset_free(&outputs);
    return rc;
}

/* Per-kernel medians over reps instrumented steps (kernel-major samples: samples[k * reps + i]). */
static int time_kernels(Backend *b, const TensorSet *inputs, int reps, BenchResult *r,
                        MamlError *err) {
    int nk = cpu_backend_compiled(b)->prog.n_kernels;
    double *samples = maml_alloc((size_t)nk * (size_t)reps * sizeof *samples + 1, err);
    double *one = maml_alloc((size_t)nk * sizeof *one + 1, err);
    r->kernel_ms = maml_calloc((size_t)nk + 1, sizeof *r->kernel_ms, err);
    int rc = samples && one && r->kernel_ms ? 0 : -1;
    for (int i = 0; rc == 0 && i < reps; i++) {
        rc = cpu_backend_run_timed(b, inputs, one, err);
        for (int k = 0; rc == 0 && k < nk; k++)
            samples[(size_t)k * (size_t)reps + (size_t)i] = one[k];
    }
    for (int k = 0; rc == 0 && k < nk; k++) {
        r->kernel_ms[k] = bench_median(samples + (size_t)k * (size_t)reps, reps);
        r->kernels_ms += r->kernel_ms[k];
    }
    if (rc == 0) r->n_kernels = nk, r->kernel_reps = reps;
    free(samples);
    free(one);
    return rc;
}

/* Per-kernel means over reps launches of each kernel alone, from CUDA events. */
static int time_cuda_kernels(Backend *b, int reps, BenchResult *r, MamlError *err) {
    int nk = cuda_backend_compiled(b)->prog.n_kernels;
    r->kernel_ms = maml_calloc((size_t)nk + 1, sizeof *r->kernel_ms, err);
    if (!r->kernel_ms || cuda_backend_time_kernels(b, reps, r->kernel_ms, err)) return -1;
    for (int k = 0; k < nk; k++) r->kernels_ms += r->kernel_ms[k];
    r->n_kernels = nk, r->kernel_reps = reps;
    return 0;
}

int bench_run(Backend *b, const TensorSet *inputs, const BenchOptions *o, BenchResult *r,
              MamlError *err) {
    memset(r, 0, sizeof *r);
    if (o->reps < 1) return maml_fail(err, "bench needs at least one repetition");
    double *ms = maml_alloc((size_t)o->reps * sizeof *ms, err);
    if (!ms) return -1;
    int rc = time_steps(b, inputs, o->warmup, NULL, err);
    if (rc == 0) rc = time_steps(b, inputs, o->reps, ms, err);
    if (rc == 0) {
        r->reps = o->reps;
        r->warmup = o->warmup;
        r->step_ms_median = bench_median(ms, o->reps);
        r->step_ms_min = ms[0];
        r->step_ms_max = ms[o->reps - 1];
    }
    free(ms);
    if (rc == 0) rc = time_pipelined(b, inputs, o->reps, &r->pipelined_ms, err);
    if (rc == 0 && o->kernel_reps > 0 && cpu_backend_compiled(b))
        rc = time_kernels(b, inputs, o->kernel_reps, r, err);
    else if (rc == 0 && o->kernel_reps > 0 && cuda_backend_compiled(b))
        rc = time_cuda_kernels(b, o->kernel_reps, r, err);
    return rc;
}

void bench_result_free(BenchResult *r) {
    free(r->kernel_ms);
    memset(r, 0, sizeof *r);
}
