/* A CPU emulation of the little of CUDA the generated kernels use, so tests on machines without
 * a GPU can run kernels.cu and compare its results with the reference interpreter.
 *
 * kernels.cu is compiled as C++ (g++ -include tests/cuda_emu.h -x c++ -shared) into a shared
 * object exporting each extern "C" kernel and emu_launch. Blocks run one after another. Within a
 * block, kernels without barriers run their threads one after another; the others run every
 * thread as a coroutine, switching at __syncthreads and at warp shuffles, so shared
 * memory, barriers and shuffles behave as on the GPU, and a barrier that not every thread of its
 * block (or warp) reaches is reported instead of hanging. __shared__ variables become static
 * locals: one copy, which the threads of the running block share.
 *
 * Coroutines switch with a few instructions on x86-64 (callee-saved registers and the stack
 * pointer; glibc's swapcontext makes a system call per switch, which dominated the run time),
 * and with ucontext elsewhere. */
#ifndef MAMLC_CUDA_EMU_H
#define MAMLC_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

using std::max;
using std::min;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct emu_dim3 {
    unsigned x, y, z;
};

namespace emu {

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

enum { MAX_THREADS = 1024, STACK = 128 * 1024, MAX_ARGS = 32 };

struct Thread {
    ucontext_t ctx; /* without the x86-64 switch */
    void *sp;       /* with it: the saved stack pointer */
    emu_dim3 idx;
    State st;
};

static Thread threads[MAX_THREADS];
static char *stacks;
static ucontext_t scheduler;
static void *scheduler_sp;
static int current, n_threads;
static bool coroutines;
static double lanes[MAX_THREADS];
static void (*call_fn)();
static void **call_args;
static int call_n;
static char failure[256];

static emu_dim3 block_dim, grid_dim, block_idx;

static void fail(const char *what) {
    if (!failure[0]) snprintf(failure, sizeof failure, "%s", what);
}

/* Calls call_fn with call_n pointer arguments: a table of callers, one per argument count. */
template <size_t... I> static void call_with(std::index_sequence<I...>) {
    ((void (*)(decltype((void)I, (void *)0)...))call_fn)(call_args[I]...);
}

template <size_t N> static void call_n_args() {
    call_with(std::make_index_sequence<N>{});
}

template <size_t... N>
static std::array<void (*)(), sizeof...(N)> callers(std::index_sequence<N...>) {
    return {{&call_n_args<N>...}};
}

static void invoke() {
    static const auto table = callers(std::make_index_sequence<MAX_ARGS + 1>{});
    if (call_n < 0 || call_n > MAX_ARGS)
        fail("too many kernel parameters (extend cuda_emu.h)");
    else
        table[(size_t)call_n]();
}

#if defined(__x86_64__)
/* emu_switch(&save, to): pushes the callee-saved registers, saves the stack pointer in save,
 * loads `to` and pops the registers saved there (System V x86-64 ABI). */
extern "C" void emu_switch(void **save, void *to);
__asm__(".text\n"
        ".local emu_switch\n"
        ".type emu_switch, @function\n"
        "emu_switch:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n"
        "    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n"
        "    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n"
        ".size emu_switch, .-emu_switch\n");
#define EMU_FAST_SWITCH 1
#else
#define EMU_FAST_SWITCH 0
#endif

static void to_scheduler() {
#if EMU_FAST_SWITCH
    emu_switch(&threads[current].sp, scheduler_sp);
#else
    swapcontext(&threads[current].ctx, &scheduler);
#endif
}

static void resume(int t) {
    current = t;
#if EMU_FAST_SWITCH
    emu_switch(&scheduler_sp, threads[t].sp);
#else
    swapcontext(&scheduler, &threads[t].ctx);
#endif
}

static void entry() {
    invoke();
    threads[current].st = DONE;
#if EMU_FAST_SWITCH
    to_scheduler(); /* never resumed */
    abort();
#endif
    /* with ucontext, uc_link returns to the scheduler */
}

/* Prepares thread t to start in entry() on its own stack. */
static void start(int t) {
    char *top = stacks + (size_t)(t + 1) * STACK;
#if EMU_FAST_SWITCH
    void **sp = (void **)((uintptr_t)top & ~(uintptr_t)15);
    *--sp = nullptr;       /* entry's return address slot: rsp % 16 == 8 on entry */
    *--sp = (void *)entry; /* where emu_switch's ret goes */
    for (int r = 0; r < 6; r++) *--sp = nullptr; /* rbp, rbx, r12-r15 */
    threads[t].sp = sp;
#else
    Thread *th = &threads[t];
    getcontext(&th->ctx);
    th->ctx.uc_stack.ss_sp = top - STACK;
    th->ctx.uc_stack.ss_size = STACK;
    th->ctx.uc_link = &scheduler;
    makecontext(&th->ctx, entry, 0);
#endif
}

/* A barrier: the coroutine waits until the scheduler releases its block or warp. */
static void wait(State s) {
    if (!coroutines) {
        fail("a barrier or shuffle in a kernel run without coroutines");
        return;
    }
    threads[current].st = s;
    to_scheduler();
}

/* Releases the barriers every participant has reached; false when none could be released. */
static bool release() {
    bool released = false, block_all = true, any_block = false;
    for (int t = 0; t < n_threads; t++) {
        any_block |= threads[t].st == WAIT_BLOCK;
        block_all &= threads[t].st == WAIT_BLOCK;
    }
    if (block_all) {
        for (int t = 0; t < n_threads; t++) threads[t].st = RUNNABLE;
        return true;
    }
    for (int w = 0; w * 32 < n_threads; w++) {
        int lo = w * 32, hi = std::min(n_threads, lo + 32), waiting = 0;
        for (int t = lo; t < hi; t++) waiting += threads[t].st == WAIT_WARP;
        if (waiting == hi - lo) {
            for (int t = lo; t < hi; t++) threads[t].st = RUNNABLE;
            released = true;
        }
    }
    if (!released && any_block)
        fail("__syncthreads not reached by every thread of the block");
    else if (!released)
        fail("a warp shuffle not reached by every lane of the warp");
    return released;
}

static void run_block_coroutines() {
    for (int t = 0; t < n_threads; t++) {
        start(t);
        threads[t].st = RUNNABLE;
    }
    for (;;) {
        bool all_done = true;
        for (int t = 0; t < n_threads; t++) {
            if (threads[t].st != RUNNABLE) {
                all_done &= threads[t].st == DONE;
                continue;
            }
            resume(t);
            all_done &= threads[t].st == DONE;
        }
        if (all_done || !release()) return;
    }
}

static void set_idx(int t) {
    threads[t].idx.x = (unsigned)t % block_dim.x;
    threads[t].idx.y = (unsigned)t / block_dim.x % block_dim.y;
    threads[t].idx.z = (unsigned)t / (block_dim.x * block_dim.y);
}

} // namespace emu

#define threadIdx (emu::threads[emu::current].idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

static inline void __syncthreads() {
    emu::wait(emu::WAIT_BLOCK);
}

template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    (void)mask;
    emu::lanes[emu::current] = (double)v;
    emu::wait(emu::WAIT_WARP);
    T r = (T)emu::lanes[emu::current ^ lane_mask];
    emu::wait(emu::WAIT_WARP);
    return r;
}

static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

namespace emu {
/* Each warp's operands of its current mma, as dense tiles: A[16][8] and B transposed, Bt[8][8]
 * (column n of B is Bt[n]), so that a lane's results read rows of both. */
static float mma_A[MAX_THREADS / 32][16][8], mma_Bt[MAX_THREADS / 32][8][8];
} // namespace emu

/* The float nearest to x toward zero. */
static inline float emu_round_toward_zero(double x) {
    float f = (float)x;
    if (fabs((double)f) <= fabs(x)) return f; /* also NaN */
    /* f is one ulp too far out, and not zero: one step back toward zero (infinity: FLT_MAX) */
    return __uint_as_float(__float_as_uint(f) - 1u);
}

/* mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 as the PTX ISA lays its fragments out over
 * the warp (g = lane / 4, q = lane % 4): a = A[g][q], A[g+8][q], A[g][q+4], A[g+8][q+4];
 * b = B[q][g], B[q+4][g]; d = D[g][2q], D[g][2q+1], D[g+8][2q], D[g+8][2q+1]. Every lane posts
 * its fragments into its warp's tiles, then each computes its own four results. The low 13 bits
 * of each operand are ignored, as the tensor cores ignore them. The summation follows what has
 * been measured of the tensor cores up to the A100 (Fasi et al., "Numerical behavior of NVIDIA
 * tensor cores", 2021): products exact, each group of four added to the accumulator at once and
 * the sum truncated (rounded toward zero) to float, not rounded to nearest. That is the
 * pessimistic case: truncation errors all lean one way and add up along a convolution's depth, so
 * kernels that pass here keep their bound on a GPU whose tensor cores round more carefully. */
static inline void mma_tf32(float d[4], const float a[4], const float b[2]) {
    using namespace emu;
    const int me = current, g = (me & 31) / 4, q = me % 4;
    float(*A)[8] = mma_A[me / 32], (*Bt)[8] = mma_Bt[me / 32];
    for (int r = 0; r < 4; r++)
        A[g + r % 2 * 8][q + r / 2 * 4] = __uint_as_float(__float_as_uint(a[r]) & 0xffffe000u);
    for (int r = 0; r < 2; r++)
        Bt[g][q + r * 4] = __uint_as_float(__float_as_uint(b[r]) & 0xffffe000u);
    wait(WAIT_WARP);
    for (int r = 0; r < 4; r++) {
        const float *row = A[g + r / 2 * 8], *col = Bt[2 * q + r % 2];
        float s = d[r];
        for (int k0 = 0; k0 < 8; k0 += 4) {
            double sum = s; /* the products are exact; a double holds their sum all but exactly */
            for (int k = k0; k < k0 + 4; k++) sum += (double)row[k] * col[k];
            s = emu_round_toward_zero(sum);
        }
        d[r] = s;
    }
    wait(WAIT_WARP); /* every lane has read the tiles before any posts its next fragments */
}

/* Round-to-nearest arithmetic that the GPU never contracts into an FMA; g++ in ISO mode
 * (-std=c++17) contracts nothing either. */
static inline float __fadd_rn(float a, float b) {
    return a + b;
}
static inline double __dadd_rn(double a, double b) {
    return a + b;
}
static inline float __fsub_rn(float a, float b) {
    return a - b;
}
static inline double __dsub_rn(double a, double b) {
    return a - b;
}
static inline float __fmul_rn(float a, float b) {
    return a * b;
}
static inline double __dmul_rn(double a, double b) {
    return a * b;
}

/* The device's float exp and log are not correctly rounded (CUDA's documented maximum errors:
 * expf 2 ulp, logf 1 ulp; glibc's are within an ulp of correct rounding too, but rarely off and
 * never the same way). The emulation moves their results by up to one ulp, up or down as a hash
 * of the argument says, so kernels that rely on float exp or log rounding as the reference does
 * fail here as they would on a GPU: omniglot_5w1s's 10-step comparison went 3,580x over its bound
 * on an H200 for that reason, and does here too. The double versions are left exact (the device's
 * are within one double ulp, invisible once rounded to float). */
static inline float emu_off_by_an_ulp(float r, float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    switch ((bits * 2654435761u) >> 30) {
    case 0:
        return nextafterf(r, 0.0f);
    case 1:
        return nextafterf(r, INFINITY);
    default:
        return r;
    }
}
static inline float emu_device_exp(float x) {
    return emu_off_by_an_ulp(expf(x), x);
}
static inline double emu_device_exp(double x) {
    return std::exp(x);
}
static inline float emu_device_log(float x) {
    return emu_off_by_an_ulp(logf(x), x);
}
static inline double emu_device_log(double x) {
    return std::log(x);
}
#define exp(x) emu_device_exp(x)
#define log(x) emu_device_log(x)

static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

/* A kernel's parameter count, exported as emu_arity_NAME by EMU_EXPORT_ARITY(NAME) for the fake
 * CUDA driver (tests/fake_cuda.c): cuLaunchKernel's parameter array carries no length. */
template <class... A> static constexpr int emu_arity(void (*)(A...)) {
    return (int)sizeof...(A);
}
#define EMU_EXPORT_ARITY(f)                                                                        \
    extern "C" int emu_arity_##f() {                                                               \
        return emu_arity(f);                                                                       \
    }

__attribute__((destructor)) static void emu_unmap_stacks() {
    if (emu::stacks) munmap(emu::stacks, (size_t)emu::MAX_THREADS * emu::STACK);
}

/* Runs fn over the grid; coroutines: the kernel has barriers or shuffles. Returns 0, or -1 with
 * the failure in err. */
extern "C" int emu_launch(void (*fn)(), const unsigned grid[3], const unsigned block[3],
                          void **args, int n_args, int coroutines, char *err, int err_size) {
    using namespace emu;
    failure[0] = 0;
    n_threads = (int)(block[0] * block[1] * block[2]);
    if (n_threads > MAX_THREADS || n_args > MAX_ARGS) {
        snprintf(err, (size_t)err_size, "block of %d threads or %d arguments", n_threads, n_args);
        return -1;
    }
    if (!stacks) { /* mapped, not malloc'ed: released when the object is unloaded */
        void *m = mmap(nullptr, (size_t)MAX_THREADS * STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(err, (size_t)err_size, "cannot map the coroutine stacks");
            return -1;
        }
        stacks = (char *)m;
    }
    emu::coroutines = coroutines != 0;
    call_fn = fn, call_args = args, call_n = n_args;
    block_dim = {block[0], block[1], block[2]};
    grid_dim = {grid[0], grid[1], grid[2]};
    for (unsigned z = 0; z < grid[2] && !failure[0]; z++)
        for (unsigned y = 0; y < grid[1] && !failure[0]; y++)
            for (unsigned x = 0; x < grid[0] && !failure[0]; x++) {
                block_idx = {x, y, z};
                for (int t = 0; t < n_threads; t++) set_idx(t);
                if (emu::coroutines) {
                    run_block_coroutines();
                    continue;
                }
                for (int t = 0; t < n_threads; t++) {
                    current = t;
                    invoke();
                }
            }
    if (failure[0]) snprintf(err, (size_t)err_size, "%s", failure);
    return failure[0] ? -1 : 0;
}

#endif
