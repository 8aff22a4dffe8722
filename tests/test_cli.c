/* The mamlc command line end to end: exit statuses, one-line errors, files written. Runs the binary
 * named by $MAMLC (set by the Makefile; ./mamlc otherwise). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "safetensors.h"
#include "test_util.h"

static const char *mamlc(void) {
    const char *m = getenv("MAMLC");
    return m && *m ? m : "./mamlc";
}

/* Runs "mamlc ARGS", capturing stdout+stderr into out; returns the exit status. */
static int run(char *out, size_t size, const char *fmt, ...) {
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", mamlc(), args);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "cannot run %s", cmd);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

#define FIX "fixtures/pytorch_maml/"

Test(cli, grad_in_float64_writes_loss_accuracy_and_every_gradient_matching_pytorch) {
    const char *dir = temp_dir(0);
    char out[8192], path[256];
    snprintf(path, sizeof path, "%s/g.safetensors", dir);
    int rc = run(out, sizeof out,
                 "grad graphs/omniglot_seed.yaml --params %s --batch %s --out %s --dtype f64 "
                 "--set maml.inner.lr=0.4 --backend ref",
                 shared_path(0, FIX "params_p5_default.safetensors"),
                 shared_path(1, FIX "batch_so_T2_5w1s_q1_in1.safetensors"), path);
    cr_assert_eq(rc, 0, "mamlc grad failed: %s", out);
    TensorSet got, want;
    tensorset_init(&got);
    tensorset_init(&want);
    MamlError err;
    cr_assert_eq(safetensors_read(path, &got, &err), 0, "%s", err.message);
    cr_assert_eq(safetensors_read(shared_path(2, FIX "expected64_so_T2_5w1s_q1_in1.safetensors"),
                                  &want, &err),
                 0, "%s", err.message);
    cr_assert_eq(got.n, 20, "expected meta_loss, meta_acc and 18 gradients, found %d", got.n);
    for (int i = 0; i < want.n; i++) {
        const Tensor *w = &want.items[i], *g = tensorset_find(&got, w->name);
        cr_assert(g, "'%s' missing from the output", w->name);
        cr_assert_eq(g->dtype, TENSOR_F64);
        for (int64_t k = 0; k < shape_numel(w->shape); k++)
            cr_assert_lt(fabs(tensor_get(g, k) - tensor_get(w, k)), 1e-9, "%s[%lld]", w->name,
                         (long long)k);
    }
    tensorset_free(&got);
    tensorset_free(&want);
}

Test(cli, grad_names_a_missing_parameter_and_writes_nothing) {
    const char *dir = temp_dir(0);
    char out[8192], params[256], path[256];
    snprintf(params, sizeof params, "%s/p.safetensors", dir);
    snprintf(path, sizeof path, "%s/g.safetensors", dir);
    TensorSet set;
    tensorset_init(&set);
    MamlError err;
    cr_assert_eq(safetensors_read(shared_path(0, FIX "params_p5_default.safetensors"), &set, &err),
                 0);
    TensorSet partial;
    tensorset_init(&partial);
    for (int i = 0; i < set.n; i++)
        if (strcmp(set.items[i].name, "conv3.bn.weight") != 0)
            tensorset_add(&partial, set.items[i].name, set.items[i].dtype, set.items[i].shape,
                          set.items[i].data, &err);
    cr_assert_eq(safetensors_write(params, &partial, &err), 0, "%s", err.message);
    int rc = run(out, sizeof out, "grad graphs/omniglot_seed.yaml --params %s --batch %s --out %s",
                 params, shared_path(1, FIX "batch_so_T2_5w1s_q1_in1.safetensors"), path);
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert(strstr(out, "missing tensor 'conv3.bn.weight'"), "message: %s", out);
    cr_assert(strstr(out, params), "message does not name the file: %s", out);
    cr_assert_eq(count_lines(out), 1, "not one line: %s", out);
    struct stat st;
    cr_assert_neq(stat(path, &st), 0, "an output was written despite the error");
    tensorset_free(&set);
    tensorset_free(&partial);
}

Test(cli, grad_rejects_a_batch_whose_query_size_disagrees_with_the_settings) {
    char out[8192];
    int rc =
        run(out, sizeof out, "grad graphs/omniglot_seed.yaml --params %s --batch %s --out /tmp/x",
            shared_path(0, FIX "params_p5_default.safetensors"),
            shared_path(1, FIX "batch_so_T2_5w1s_q5_in1.safetensors"));
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert(
        strstr(out, "tensor 'query_x': expected shape [2, 5, 1, 28, 28], found [2, 25, 1, 28, 28]"),
        "message: %s", out);
}

Test(cli, grad_rejects_parameters_of_the_wrong_shape_naming_both_shapes) {
    char out[8192];
    int rc =
        run(out, sizeof out, "grad graphs/omniglot_seed.yaml --params %s --batch %s --out /tmp/x",
            shared_path(0, FIX "params_p20_default.safetensors"),
            shared_path(1, FIX "batch_so_T2_5w1s_q1_in1.safetensors"));
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert(strstr(out, "tensor 'logits.weight': expected shape [5, 64], found [20, 64]"),
              "message: %s", out);
}

Test(cli, grad_rejects_labels_out_of_range) {
    const char *dir = temp_dir(0);
    char out[8192], batch[256];
    snprintf(batch, sizeof batch, "%s/b.safetensors", dir);
    TensorSet set;
    tensorset_init(&set);
    MamlError err;
    cr_assert_eq(
        safetensors_read(shared_path(0, FIX "batch_so_T2_5w1s_q1_in1.safetensors"), &set, &err), 0);
    tensor_set(tensorset_find(&set, "support_y"), 3, 7);
    cr_assert_eq(safetensors_write(batch, &set, &err), 0, "%s", err.message);
    int rc =
        run(out, sizeof out, "grad graphs/omniglot_seed.yaml --params %s --batch %s --out /tmp/x",
            shared_path(1, FIX "params_p5_default.safetensors"), batch);
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert(
        strstr(out, "tensor 'support_y': label 7 of task 0, example 3 is out of range [0, 5)"),
        "message: %s", out);
    tensorset_free(&set);
}

Test(cli, compile_dot_writes_three_graphs_and_prints_node_counts_per_stage) {
    const char *dir = temp_dir(0);
    char out[8192], path[256];
    int rc = run(out, sizeof out, "compile graphs/omniglot_seed.yaml -o %s --dot", dir);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "forward (support set)") && strstr(out, "full training step"), "%s", out);
    static const char *files[3] = {"forward.dot", "inner_grad.dot", "step.dot"};
    long sizes[3];
    for (int i = 0; i < 3; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        cr_assert_eq(stat(path, &st), 0, "%s not written", path);
        sizes[i] = (long)st.st_size;
    }
    cr_assert(sizes[0] < sizes[1] && sizes[1] < sizes[2], "stages should grow");
}

Test(cli, check_reports_a_bad_graph_in_one_line_with_exit_status_2) {
    const char *dir = temp_dir(0);
    char out[8192], path[256];
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    write_text(path, "model:\n  input: [1, 28, 28]\n  layers: [\n");
    int rc = run(out, sizeof out, "check %s", path);
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert_eq(count_lines(out), 1, "not one line: %s", out);
    cr_assert(strstr(out, path), "message does not name the file: %s", out);
}

Test(cli, unknown_command_and_unknown_backend_are_usage_errors) {
    char out[8192];
    cr_assert_eq(run(out, sizeof out, "frobnicate"), 2, "%s", out);
    cr_assert(strstr(out, "unknown command 'frobnicate'"), "%s", out);
    int rc = run(out, sizeof out,
                 "grad graphs/omniglot_seed.yaml --params %s --batch %s --out /tmp/x "
                 "--backend tpu",
                 shared_path(0, FIX "params_p5_default.safetensors"),
                 shared_path(1, FIX "batch_so_T2_5w1s_q1_in1.safetensors"));
    cr_assert_eq(rc, 2, "%s", out);
    cr_assert(strstr(out, "unknown backend 'tpu'"), "%s", out);
}

/* compile renders kernels.cu only: --conv picks the generated, tensor-core or both (auto's)
 * rendering, and cudnn (a run-time lowering) or a cpu compile are one-line usage errors. */
Test(cli, compile_conv_tensor_and_auto_render_tensor_core_kernels_and_cudnn_is_refused) {
    const char *dir = temp_dir(0);
    char out[8192], path[256];
    int rc = run(out, sizeof out,
                 "compile graphs/omniglot_seed.yaml -o %s --backend cuda --conv tensor", dir);
    cr_assert_eq(rc, 0, "%s", out);
    snprintf(path, sizeof path, "%s/kernels.cu", dir);
    static char text[1 << 22];
    cr_assert_geq(read_text_file(path, text, sizeof text), 0, "%s not written", path);
    cr_assert(strstr(text, "mma.sync.aligned.m16n8k8") && strstr(text, "mma_gemm_tile<"),
              "no tensor-core kernel in %s", path);
    rc = run(out, sizeof out, "compile graphs/omniglot_seed.yaml -o %s --backend cuda --conv auto",
             dir);
    cr_assert_eq(rc, 0, "%s", out);
    snprintf(path, sizeof path, "%s/report.txt", dir);
    cr_assert_geq(read_text_file(path, text, sizeof text), 0, "%s not written", path);
    cr_assert(strstr(text, "k10_conv2d ") && strstr(text, "  or on tensor cores "),
              "auto's report lists the tensor-core forms: %s", path);
    const char *bad[] = {"--backend cuda --conv cudnn", "--backend cpu --conv auto",
                         "--backend cpu --conv tensor", "--backend cuda --conv bogus"};
    for (int i = 0; i < 4; i++) {
        rc = run(out, sizeof out, "compile graphs/omniglot_seed.yaml -o %s %s", dir, bad[i]);
        cr_assert_eq(rc, 2, "%s: %s", bad[i], out);
        cr_assert_eq(count_lines(out), 1, "%s: not one line: %s", bad[i], out);
        cr_assert(strstr(out, "--conv must be generated, tensor or auto"), "%s: %s", bad[i], out);
    }
}
