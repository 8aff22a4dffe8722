/* Benchmark helpers for `mamlc bench`: clocks and medians, the machine's FP32 peak, synthetic
 * inputs of the right shapes for a training-step graph, timing a backend (whole steps and, on the
 * cpu backend, each kernel), and the result as a table or one JSON object. */
#ifndef MAMLC_BENCH_H
#define MAMLC_BENCH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "pipeline.h"
#include "spec.h"
#include "tensor.h"

/* The median of v[0..n) (sorts v in place); 0 when n is 0. */
double bench_median(double *v, int n);

/* The FP32 peak assumed for this machine: cores x FLOP/cycle/core x clock.
 *
 * FLOP/cycle/core for float32, from /proc/cpuinfo's flags (stated, not measured):
 *   avx512f:          64 -- two 16-lane AVX-512 FMA units (server cores with a single AVX-512 FMA
 *                           unit reach 32: set MAMLC_PEAK_GFLOPS for those)
 *   avx2 with fma:    32 -- two 8-lane FMA units
 *   avx without fma:  16 -- one 8-lane add and one 8-lane multiply per cycle
 *   otherwise (SSE):   8 -- one 4-lane add and one 4-lane multiply per cycle
 * The assumption line names the ISA taken and the units assumed.
 * Cores: the CPUs this process may run on (sched_getaffinity; hyper-threads count as cores).
 * Clock: cpufreq's cpuinfo_max_freq when present, else /proc/cpuinfo's "cpu MHz" (the current,
 * not the turbo, clock in most VMs). $MAMLC_PEAK_GFLOPS replaces the whole estimate. */
typedef struct {
    int cores;
    int flop_per_cycle;
    double ghz;
    double peak_gflops;
    char isa[16];         /* "avx512f", "avx2+fma", "avx", "sse" */
    char units[48];       /* the execution units assumed, e.g. "2 AVX2 FMA units x 8 lanes x 2" */
    char clock_from[48];  /* "cpuinfo_max_freq", "/proc/cpuinfo cpu MHz", "unknown" */
    char assumption[256]; /* one line stating all of the above */
} MachinePeak;

void bench_machine_peak(MachinePeak *p);

/* Sets p's flop_per_cycle, isa and units from a /proc/cpuinfo "flags" line (the table above). */
void bench_isa_from_flags(const char *flags, MachinePeak *p);

/* Fills out (initialised here) with one tensor per INPUT node of g (the raw training-step graph
 * built from spec): parameters from params_init(seed); Adam moments 0 and adam/step 1; learnable
 * inner learning rates at maml.inner.lr; images with Omniglot-like values (background 1, about
 * 15% ink 0); labels valid (example e of a task has class e mod n_way); sinusoid x uniform in the
 * data's x_range and targets A sin(x - phase) per task. */
int bench_inputs(const GraphSpec *spec, const Graph *g, uint64_t seed, TensorSet *out,
                 MamlError *err);

typedef struct {
    int warmup;      /* untimed steps first */
    int reps;        /* timed whole steps */
    int kernel_reps; /* instrumented steps for per-kernel times (cpu backend only; 0: none) */
} BenchOptions;

typedef struct {
    int reps, warmup, kernel_reps;
    double step_ms_median, step_ms_min, step_ms_max;
    double pipelined_ms; /* per step, reps steps back to back as mamlc train runs them */
    int n_kernels;       /* 0 when no per-kernel times were taken */
    double *kernel_ms;   /* per kernel: median over kernel_reps */
    double kernels_ms;   /* sum of kernel_ms */
} BenchResult;

/* Times backend b on inputs: warmup steps, then reps steps (backend_run, copies included), each
 * timed alone; then reps steps back to back as the trainer runs them (launch a step, stage the
 * next batch, finish the step), whose mean is pipelined_ms; then, on a cpu backend, kernel_reps
 * instrumented steps. r is initialised here; free it with bench_result_free. */
int bench_run(Backend *b, const TensorSet *inputs, const BenchOptions *o, BenchResult *r,
              MamlError *err);

void bench_result_free(BenchResult *r);

/* What is printed beside the timings. c may be NULL (no kernel table, no work estimate). */
typedef struct {
    const char *graph_path;
    const char *backend; /* the backend that ran */
    const char *why;     /* how it was chosen (backend_open's reason), or NULL */
    bool fused;
    long long meta_batch;
    int images_per_step;    /* (S + Q) x T examples per step */
    const CompiledGraph *c; /* kernels, FLOP and byte estimates */
    const MachinePeak *peak;
} BenchContext;

/* The human-readable report: totals, then (when there are kernel times) the per-kernel table
 * sorted by time: kernel, kind, what it fuses, time, GFLOP/s, GB/s, share of the step. top
 * limits the rows (0: all). */
void bench_print_text(const BenchContext *ctx, const BenchResult *r, int top, FILE *f);

/* One JSON object (DESIGN.md): "step_ms_median" and the per-kernel table under "kernels" (in
 * program order), plus the other totals. Ends with a newline. */
void bench_print_json(const BenchContext *ctx, const BenchResult *r, FILE *f);

#endif
