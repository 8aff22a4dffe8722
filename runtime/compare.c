/* The per-tensor comparison and the training-steps driver (see compare.h). */
#include "compare.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "clock.h"

void compare_group_of(const char *name, char *buf, size_t size) {
    const char *slash = strrchr(name, '/');
    size_t n = slash ? (size_t)(slash - name) : 0;
    if (n >= size) n = size - 1;
    memcpy(buf, name, n);
    buf[n] = 0;
}

static double max_abs(const Tensor *t) {
    double m = 0;
    for (int64_t k = 0, c = shape_numel(t->shape); k < c; k++) m = fmax(m, fabs(tensor_get(t, k)));
    return m;
}

double compare_scale(const TensorSet *want, const Tensor *t) {
    char g[128], h[128];
    compare_group_of(t->name, g, sizeof g);
    double own = max_abs(t), group = 0;
    for (int i = 0; i < want->n; i++) {
        compare_group_of(want->items[i].name, h, sizeof h);
        if (strcmp(g, h) == 0) group = fmax(group, max_abs(&want->items[i]));
    }
    double s = own >= 1e-9 * group ? own : group;
    return s > 0 ? s : 1.0;
}

void compare_errors(const Tensor *got, const Tensor *want, double scale, double *max_rel,
                    double *l2_rel) {
    double d = 0, num = 0, den = 0;
    for (int64_t k = 0, c = shape_numel(want->shape); k < c; k++) {
        double a = tensor_get(got, k), b = tensor_get(want, k);
        if (isnan(a) && isnan(b)) continue;
        double e = isnan(a) || isnan(b) ? INFINITY : fabs(a - b);
        d = fmax(d, e);
        num += e * e;
        den += b * b;
    }
    *max_rel = d / scale;
    *l2_rel = den > 0 ? sqrt(num / den) : sqrt(num);
}

/* A tensor of the other set by name, when it has the shape of w. */
static const Tensor *find_like(const TensorSet *set, const Tensor *w) {
    const Tensor *t = set ? tensorset_find(set, w->name) : NULL;
    return t && shape_equal(t->shape, w->shape) ? t : NULL;
}

/* One tensor: its error, l2 error and bound; false when it is missing from got or ref32. */
static bool compare_one(const TensorSet *got, const TensorSet *want, const TensorSet *ref32,
                        const Tensor *w, double floor, double e[3]) {
    const Tensor *g = find_like(got, w), *r = find_like(ref32, w);
    if (!g || (ref32 && !r)) return false;
    double scale = compare_scale(want, w), re = 0, rl2;
    compare_errors(g, w, scale, &e[0], &e[1]);
    if (r) compare_errors(r, w, scale, &re, &rl2);
    e[2] = fmax(floor, COMPARE_REF32_FACTOR * re);
    return true;
}

int compare_sets(const TensorSet *got, const TensorSet *want, const TensorSet *ref32, double floor,
                 const char *label, FILE *out, bool verbose, CompareSummary *summary) {
    CompareSummary s = {.n = want->n};
    if (out && verbose)
        fprintf(out, "%-36s %12s %12s %12s  %s\n", "tensor", "max rel err", "bound", "l2 rel err",
                label);
    for (int i = 0; i < want->n; i++) {
        const Tensor *w = &want->items[i];
        double e[3]; /* max rel, l2 rel, bound */
        if (!compare_one(got, want, ref32, w, floor, e)) {
            s.missing++;
            if (out) fprintf(out, "%-36s missing or of another shape\n", w->name);
            continue;
        }
        bool ok = e[0] <= e[2];
        s.over += !ok;
        if (!(e[0] / e[2] <= s.worst)) { /* also takes a NaN, which is never fine */
            s.worst = e[0] / e[2], s.worst_err = e[0], s.worst_bound = e[2];
            snprintf(s.worst_name, sizeof s.worst_name, "%s", w->name);
        }
        if (out && (verbose || !ok))
            fprintf(out, "%-36s %12.3g %12.3g %12.3g  %s\n", w->name, e[0], e[2], e[1],
                    ok ? "ok" : "OVER");
    }
    if (out)
        fprintf(out, "%s: %d of %d tensors over their bound%s; worst error/bound %.3g (%s)\n",
                label, s.over + s.missing, s.n, s.missing ? " or missing" : "", s.worst,
                s.worst_name);
    if (summary) *summary = s;
    return s.over + s.missing;
}

/* ---- training steps side by side ---- */

void compare_noise_images(TensorSet *in) {
    uint64_t x = 12345;
    for (int i = 0; i < in->n; i++) {
        Tensor *t = &in->items[i];
        if (strcmp(t->name, "support_x") != 0 && strcmp(t->name, "query_x") != 0) continue;
        if (t->shape.rank < 4) continue;
        for (int64_t k = 0, n = shape_numel(t->shape); k < n; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            tensor_set(t, k, (double)(x >> 11) / 9007199254740992.0);
        }
    }
}

void compare_feed_back(TensorSet *in, const TensorSet *out) {
    for (int i = 0; i < out->n; i++) {
        const Tensor *o = &out->items[i];
        Tensor *t = tensorset_find(in, o->name);
        if (!t || !shape_equal(t->shape, o->shape)) continue;
        for (int64_t k = 0, n = shape_numel(o->shape); k < n; k++)
            tensor_set(t, k, tensor_get(o, k));
    }
    Tensor *step = tensorset_find(in, "adam/step");
    if (step) tensor_set(step, 0, tensor_get(step, 0) + 1);
}

int compare_copy_as(const TensorSet *from, TensorDType real_type, TensorSet *to, MamlError *err) {
    tensorset_init(to);
    for (int k = 0; k < from->n; k++) {
        const Tensor *t = &from->items[k];
        bool real = t->dtype == TENSOR_F32 || t->dtype == TENSOR_F64;
        Tensor *c = tensorset_add(to, t->name, real ? real_type : t->dtype, t->shape, NULL, err);
        if (!c) return -1;
        for (int64_t q = 0, n = shape_numel(t->shape); q < n; q++)
            tensor_set(c, q, tensor_get(t, q));
    }
    return 0;
}

int compare_start_state(const GraphSpec *spec, const Graph *g, uint64_t seed, bool noise,
                        TensorSet *out, MamlError *err) {
    TensorSet raw;
    if (bench_inputs(spec, g, seed, &raw, err)) return -1;
    if (noise) compare_noise_images(&raw);
    int rc = compare_copy_as(&raw, TENSOR_F32, out, err);
    tensorset_free(&raw);
    return rc;
}

typedef struct {
    StepRun *run;
    int steps;
} RunnerArg;

/* One step: outputs into a fresh set, kept as run->first on step 1, then fed back. */
static int one_step(StepRun *r, int s) {
    TensorSet out;
    tensorset_init(&out);
    double t0 = maml_now_s();
    int rc = backend_run(r->backend, &r->state, &out, &r->err);
    r->seconds += maml_now_s() - t0;
    const Tensor *loss = tensorset_find(&out, "meta_loss");
    r->losses[s] = rc == 0 && loss ? tensor_get(loss, 0) : NAN;
    if (rc == 0) compare_feed_back(&r->state, &out);
    if (rc == 0 && s == 0) {
        r->first = out; /* taken over */
        return 0;
    }
    tensorset_free(&out);
    return rc;
}

static void *runner_main(void *arg) {
    RunnerArg *a = arg;
    for (int s = 0; s < a->steps && a->run->rc == 0; s++) a->run->rc = one_step(a->run, s);
    return NULL;
}

static int prepare_run(StepRun *r, const TensorSet *start, int steps, MamlError *err) {
    tensorset_init(&r->first);
    r->losses = calloc((size_t)steps, sizeof *r->losses);
    if (!r->losses) {
        tensorset_init(&r->state);
        return maml_fail(err, "out of memory");
    }
    /* a float64 run keeps its state in float64: rounding it to float32 between steps would mix
     * float32 rounding into the reference */
    TensorDType real = r->backend->prec == PREC_F64 ? TENSOR_F64 : TENSOR_F32;
    return compare_copy_as(start, real, &r->state, err);
}

int compare_steps_start(StepRun *runs, int n, const TensorSet *start, int steps, MamlError *err) {
    for (int i = 0; i < n; i++)
        if (prepare_run(&runs[i], start, steps, err)) return -1;
    return 0;
}

int compare_steps_go(StepRun *runs, int n, int steps, MamlError *err) {
    pthread_t *tid = calloc((size_t)n, sizeof *tid);
    RunnerArg *args = calloc((size_t)n, sizeof *args);
    bool *started = calloc((size_t)n, sizeof *started);
    int rc = tid && args && started ? 0 : maml_fail(err, "out of memory");
    for (int i = 0; rc == 0 && i < n; i++) {
        args[i] = (RunnerArg){&runs[i], steps};
        started[i] = pthread_create(&tid[i], NULL, runner_main, &args[i]) == 0;
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            runner_main(&args[i]); /* no thread to be had: run it here */
    }
    for (int i = 0; rc == 0 && i < n; i++)
        if (runs[i].rc) rc = maml_fail(err, "%s: %s", runs[i].label, runs[i].err.message);
    free(tid);
    free(args);
    free(started);
    return rc;
}

int compare_run_steps(StepRun *runs, int n, const TensorSet *start, int steps, MamlError *err) {
    if (compare_steps_start(runs, n, start, steps, err)) return -1;
    return compare_steps_go(runs, n, steps, err);
}

void compare_print_steps(const StepRun *runs, int n, int steps, FILE *out) {
    fprintf(out, "%-5s", "step");
    for (int i = 0; i < n; i++) fprintf(out, " %16s", runs[i].label);
    fprintf(out, "   (meta_loss before each update)\n");
    for (int s = 0; s < steps; s++) {
        fprintf(out, "%-5d", s + 1);
        for (int i = 0; i < n; i++) fprintf(out, " %16.9g", runs[i].losses[s]);
        fprintf(out, "\n");
    }
    fprintf(out, "seconds:");
    for (int i = 0; i < n; i++)
        fprintf(out, "%s %s %.3f", i ? "," : "", runs[i].label, runs[i].seconds);
    fprintf(out, "\n");
}

void compare_steps_free(StepRun *runs, int n) {
    for (int i = 0; i < n; i++) {
        tensorset_free(&runs[i].state);
        tensorset_free(&runs[i].first);
        free(runs[i].losses);
        runs[i].losses = NULL;
    }
}
