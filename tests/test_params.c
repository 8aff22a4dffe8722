/* The shared RNG (golden values, ranges, statistics), PyTorch-style parameter initialisation and
 * checking parameter sets against a spec, including the PyTorch fixtures. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "params.h"
#include "rng.h"
#include "safetensors.h"
#include "test_util.h"

/* ------------------------------------------------------------------ rng ------------------- */

Test(rng, matches_golden_values_bit_for_bit) {
    /* Computed independently (Python, arbitrary-precision integers and IEEE doubles) from the
     * published splitmix64 and xoshiro256** algorithms; any platform must reproduce them. */
    Rng r;
    rng_seed(&r, 0);
    cr_assert_eq(rng_next_u64(&r), 0x99ec5f36cb75f2b4ull);
    cr_assert_eq(rng_next_u64(&r), 0xbf6e1f784956452aull);
    cr_assert_eq(rng_next_u64(&r), 0x1a5f849d4933e6e0ull);
    rng_seed(&r, 1206);
    cr_assert_eq(rng_next_u64(&r), 0xb22fa4698ce2c1e7ull);
    cr_assert_eq(rng_next_u64(&r), 0xd9132078208c9e1eull);
    rng_seed(&r, 42);
    cr_assert_eq(rng_uniform(&r), 0x1.5780b2e0c2ec0p-4);
    cr_assert_eq(rng_uniform(&r), 0x1.84136619b444ep-2);
    rng_seed(&r, 42);
    cr_assert_eq(rng_normal(&r), -0x1.73d2feb0fb377p-1);
    cr_assert_eq(rng_normal(&r), 0x1.c5e21f7812a4ep-3);
    cr_assert_eq(rng_normal(&r), 0x1.db514bfac5b4ep-2);
}

Test(rng, uniform_stays_in_the_half_open_unit_interval) {
    Rng r;
    rng_seed(&r, 7);
    double sum = 0, lo = 1, hi = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double u = rng_uniform(&r);
        cr_assert(u >= 0.0 && u < 1.0, "%a", u);
        sum += u;
        lo = fmin(lo, u), hi = fmax(hi, u);
    }
    cr_assert(fabs(sum / n - 0.5) < 0.005, "mean %g", sum / n);
    cr_assert(lo < 1e-4 && hi > 1 - 1e-4);
}

Test(rng, uniform_int_is_in_range_and_unbiased) {
    Rng r;
    rng_seed(&r, 3);
    cr_assert_eq(rng_uniform_int(&r, 0), 0);
    cr_assert_eq(rng_uniform_int(&r, 1), 0);
    int counts[7] = {0};
    const int n = 70000;
    for (int i = 0; i < n; i++) {
        uint64_t k = rng_uniform_int(&r, 7);
        cr_assert_lt(k, 7);
        counts[k]++;
    }
    double chi2 = 0;
    for (int k = 0; k < 7; k++) chi2 += (counts[k] - n / 7.0) * (counts[k] - n / 7.0) / (n / 7.0);
    cr_assert_lt(chi2, 22.5, "chi-square %g with 6 degrees of freedom (p < 0.001)", chi2);
    /* n just above 2^63 rejects almost half the draws; the result must still be in range */
    uint64_t big = (1ull << 63) + 12345;
    for (int i = 0; i < 1000; i++) cr_assert_lt(rng_uniform_int(&r, big), big);
}

Test(rng, normal_has_zero_mean_and_unit_variance) {
    Rng r;
    rng_seed(&r, 11);
    double sum = 0, sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = rng_normal(&r);
        cr_assert(isfinite(x));
        sum += x, sq += x * x;
    }
    double mean = sum / n, var = sq / n - mean * mean;
    cr_assert(fabs(mean) < 0.01, "mean %g", mean);
    cr_assert(fabs(var - 1) < 0.02, "variance %g", var);
}

Test(rng, same_seed_same_stream_and_jump_gives_another) {
    Rng a, b;
    rng_seed(&a, 99);
    rng_seed(&b, 99);
    for (int i = 0; i < 100; i++) cr_assert_eq(rng_next_u64(&a), rng_next_u64(&b));
    rng_seed(&b, 100);
    cr_assert_neq(rng_next_u64(&a), rng_next_u64(&b));
    rng_seed(&a, 5);
    b = a;
    rng_jump(&b);
    int same = 0;
    for (int i = 0; i < 100; i++) same += rng_next_u64(&a) == rng_next_u64(&b);
    cr_assert_eq(same, 0);
}

/* ------------------------------------------------------------------ specs ----------------- */

static void add_param(GraphSpec *spec, const char *name, int rank, const int64_t *dims,
                      int64_t fan_in, bool is_bias, bool is_bn) {
    ParamSpec *p = &spec->params[spec->n_params++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->rank = rank;
    for (int i = 0; i < rank; i++) p->dims[i] = dims[i];
    p->fan_in = fan_in;
    p->is_bias = is_bias;
    p->is_bn = is_bn;
    p->adapt = true;
}

/* The seed's Classifier: 4 x [conv3x3 (in -> 64), batch norm with scale and shift] and
 * linear(64, n_way), with the parameters the front end would list. */
static void seed_spec(GraphSpec *spec, int n_way) {
    static ParamSpec params[32];
    memset(spec, 0, sizeof *spec);
    spec->params = params;
    for (int b = 1; b <= 4; b++) {
        int64_t in = b == 1 ? 1 : 64;
        char name[64];
        snprintf(name, sizeof name, "conv%d.conv2d.weight", b);
        add_param(spec, name, 4, (int64_t[]){64, in, 3, 3}, in * 9, false, false);
        snprintf(name, sizeof name, "conv%d.conv2d.bias", b);
        add_param(spec, name, 1, (int64_t[]){64}, in * 9, true, false);
        snprintf(name, sizeof name, "conv%d.bn.weight", b);
        add_param(spec, name, 1, (int64_t[]){64}, 0, false, true);
        snprintf(name, sizeof name, "conv%d.bn.bias", b);
        add_param(spec, name, 1, (int64_t[]){64}, 0, true, true);
    }
    add_param(spec, "logits.weight", 2, (int64_t[]){n_way, 64}, 64, false, false);
    add_param(spec, "logits.bias", 1, (int64_t[]){n_way}, 64, true, false);
}

static void init_ok(const GraphSpec *spec, uint64_t seed, TensorSet *set) {
    MamlError err = {{0}};
    tensorset_init(set);
    cr_assert_eq(params_init(spec, seed, set, &err), 0, "%s", err.message);
}

/* ------------------------------------------------------------------ params_init ----------- */

Test(params_init, makes_one_f32_tensor_per_parameter_in_spec_order) {
    GraphSpec spec;
    TensorSet set;
    seed_spec(&spec, 5);
    init_ok(&spec, 0, &set);
    cr_assert_eq(set.n, 18);
    int64_t total = 0;
    for (int i = 0; i < set.n; i++) {
        cr_assert_str_eq(set.items[i].name, spec.params[i].name);
        cr_assert_eq(set.items[i].dtype, TENSOR_F32);
        total += shape_numel(set.items[i].shape);
    }
    cr_assert_eq(total, 112261, "the seed's parameter count");
    Tensor *w = tensorset_find(&set, "conv1.conv2d.weight");
    cr_assert(shape_equal(w->shape, SHAPE(64, 1, 3, 3)));
    cr_assert(shape_equal(tensorset_find(&set, "logits.weight")->shape, SHAPE(5, 64)));
    tensorset_free(&set);
}

/* Uniform on [-b, b]: every value inside, the extremes near both ends, mean 0, variance b^2/3. */
static void assert_uniform(const Tensor *t, double b) {
    int64_t n = shape_numel(t->shape);
    double sum = 0, sq = 0, lo = 0, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = tensor_get(t, i);
        cr_assert(fabs(x) <= b, "%s[%lld] = %g outside +-%g", t->name, (long long)i, x, b);
        sum += x, sq += x * x;
        lo = fmin(lo, x), hi = fmax(hi, x);
    }
    if (n < 1000) return;
    double mean = sum / n, var = sq / n - mean * mean;
    cr_assert(fabs(mean) < 0.05 * b, "%s: mean %g", t->name, mean);
    cr_assert(fabs(var / (b * b / 3) - 1) < 0.05, "%s: variance %g, want %g", t->name, var,
              b * b / 3);
    cr_assert(lo < -0.99 * b && hi > 0.99 * b, "%s: range [%g, %g] of +-%g", t->name, lo, hi, b);
}

Test(params_init, weights_and_biases_are_uniform_within_one_over_sqrt_fan_in) {
    GraphSpec spec;
    TensorSet set;
    seed_spec(&spec, 5);
    init_ok(&spec, 1206, &set);
    assert_uniform(tensorset_find(&set, "conv1.conv2d.weight"), 1.0 / 3.0);
    assert_uniform(tensorset_find(&set, "conv1.conv2d.bias"), 1.0 / 3.0);
    assert_uniform(tensorset_find(&set, "conv2.conv2d.weight"), 1.0 / 24.0);
    assert_uniform(tensorset_find(&set, "conv4.conv2d.bias"), 1.0 / 24.0);
    assert_uniform(tensorset_find(&set, "logits.weight"), 1.0 / 8.0);
    assert_uniform(tensorset_find(&set, "logits.bias"), 1.0 / 8.0);
    tensorset_free(&set);
}

Test(params_init, batch_norm_scale_is_one_and_shift_zero) {
    GraphSpec spec;
    TensorSet set;
    seed_spec(&spec, 5);
    init_ok(&spec, 3, &set);
    for (int b = 1; b <= 4; b++) {
        char name[64];
        snprintf(name, sizeof name, "conv%d.bn.weight", b);
        Tensor *g = tensorset_find(&set, name);
        snprintf(name, sizeof name, "conv%d.bn.bias", b);
        Tensor *s = tensorset_find(&set, name);
        for (int i = 0; i < 64; i++) {
            cr_assert_eq(tensor_get(g, i), 1.0);
            cr_assert_eq(tensor_get(s, i), 0.0);
        }
    }
    tensorset_free(&set);
}

Test(params_init, same_seed_same_values_different_seed_different_values) {
    GraphSpec spec;
    TensorSet a, b, c;
    seed_spec(&spec, 5);
    init_ok(&spec, 17, &a);
    init_ok(&spec, 17, &b);
    init_ok(&spec, 18, &c);
    for (int i = 0; i < a.n; i++) {
        size_t bytes = (size_t)shape_numel(a.items[i].shape) * 4;
        cr_assert(memcmp(a.items[i].data, b.items[i].data, bytes) == 0, "%s", a.items[i].name);
        if (!spec.params[i].is_bn)
            cr_assert(memcmp(a.items[i].data, c.items[i].data, bytes) != 0, "%s", a.items[i].name);
    }
    tensorset_free(&a);
    tensorset_free(&b);
    tensorset_free(&c);
}

Test(params_init, replaces_previous_contents) {
    GraphSpec spec;
    TensorSet set;
    MamlError err = {{0}};
    seed_spec(&spec, 5);
    tensorset_init(&set);
    tensorset_add(&set, "stale", TENSOR_F32, shape_scalar(), NULL, &err);
    cr_assert_eq(params_init(&spec, 0, &set, &err), 0, "%s", err.message);
    cr_assert_null(tensorset_find(&set, "stale"));
    cr_assert_eq(set.n, 18);
    tensorset_free(&set);
}

Test(params_init, rejects_a_nonpositive_fan_in_and_leaves_the_set_empty) {
    GraphSpec spec;
    TensorSet set;
    MamlError err = {{0}};
    seed_spec(&spec, 5);
    spec.params[17].fan_in = 0;
    tensorset_init(&set);
    cr_assert_eq(params_init(&spec, 0, &set, &err), -1);
    cr_assert_str_eq(err.message, "parameter 'logits.bias': fan_in must be positive, not 0");
    cr_assert_eq(set.n, 0);
    tensorset_free(&set);
}

Test(params_init, survives_a_safetensors_round_trip) {
    GraphSpec spec;
    TensorSet set, back;
    MamlError err = {{0}};
    char path[128];
    seed_spec(&spec, 20);
    init_ok(&spec, 5, &set);
    const char *dir = temp_dir(0);
    snprintf(path, sizeof path, "%s/params.safetensors", dir);
    cr_assert_eq(safetensors_write(path, &set, &err), 0, "%s", err.message);
    tensorset_init(&back);
    cr_assert_eq(safetensors_read(path, &back, &err), 0, "%s", err.message);
    cr_assert_eq(params_check(&spec, &back, &err), 0, "%s", err.message);
    for (int i = 0; i < set.n; i++)
        cr_assert(memcmp(set.items[i].data, back.items[i].data,
                         (size_t)shape_numel(set.items[i].shape) * 4) == 0);
    remove(path);
    rmdir(dir);
    tensorset_free(&set);
    tensorset_free(&back);
}

/* ------------------------------------------------------------------ params_check ---------- */

static void expect_check_error(const GraphSpec *spec, const TensorSet *set, const char *want) {
    MamlError err = {{0}};
    cr_assert_eq(params_check(spec, set, &err), -1, "expected: %s", want);
    cr_assert_str_eq(err.message, want);
}

Test(params_check, accepts_f32_and_f64_and_ignores_extra_tensors) {
    GraphSpec spec;
    TensorSet set;
    MamlError err = {{0}};
    seed_spec(&spec, 5);
    init_ok(&spec, 0, &set);
    tensorset_add(&set, "logits.bias", TENSOR_F64, SHAPE(5), NULL, &err);
    tensorset_add(&set, "adam/m/logits.bias", TENSOR_F32, SHAPE(5), NULL, &err);
    cr_assert_eq(params_check(&spec, &set, &err), 0, "%s", err.message);
    tensorset_free(&set);
}

Test(params_check, names_a_missing_tensor) {
    GraphSpec spec;
    TensorSet set;
    seed_spec(&spec, 5);
    init_ok(&spec, 0, &set);
    free(set.items[17].name);
    set.items[17].name = strdup("logits.b");
    expect_check_error(&spec, &set, "missing tensor 'logits.bias'");
    tensorset_free(&set);
}

Test(params_check, names_a_wrong_shape_with_both_shapes) {
    GraphSpec spec;
    TensorSet set;
    MamlError err = {{0}};
    seed_spec(&spec, 5);
    init_ok(&spec, 0, &set);
    tensorset_add(&set, "conv1.conv2d.weight", TENSOR_F32, SHAPE(64, 3, 3), NULL, &err);
    expect_check_error(
        &spec, &set,
        "tensor 'conv1.conv2d.weight': expected shape [64, 1, 3, 3], found [64, 3, 3]");
    tensorset_add(&set, "conv1.conv2d.weight", TENSOR_F32, SHAPE(64, 1, 3, 3), NULL, &err);
    tensorset_add(&set, "conv3.bn.bias", TENSOR_F32, shape_scalar(), NULL, &err);
    expect_check_error(&spec, &set, "tensor 'conv3.bn.bias': expected shape [64], found []");
    tensorset_free(&set);
}

Test(params_check, names_an_integer_dtype) {
    GraphSpec spec;
    TensorSet set;
    MamlError err = {{0}};
    seed_spec(&spec, 5);
    init_ok(&spec, 0, &set);
    tensorset_add(&set, "logits.weight", TENSOR_I64, SHAPE(5, 64), NULL, &err);
    expect_check_error(&spec, &set, "tensor 'logits.weight': expected dtype F32 or F64, found I64");
    tensorset_free(&set);
}

static void read_fixture(const char *rel, TensorSet *set) {
    MamlError err = {{0}};
    tensorset_init(set);
    cr_assert_eq(safetensors_read(shared_path(0, rel), set, &err), 0, "%s", err.message);
}

Test(params_check, accepts_the_pytorch_fixtures_for_their_n_way) {
    GraphSpec spec5, spec20;
    MamlError err = {{0}};
    TensorSet p5, p20, bn;
    seed_spec(&spec5, 5);
    read_fixture("fixtures/pytorch_maml/params_p5_default.safetensors", &p5);
    read_fixture("fixtures/pytorch_maml/params_p5_bnpert.safetensors", &bn);
    read_fixture("fixtures/pytorch_maml/params_p20_default.safetensors", &p20);
    cr_assert_eq(params_check(&spec5, &p5, &err), 0, "%s", err.message);
    cr_assert_eq(params_check(&spec5, &bn, &err), 0, "%s", err.message);
    expect_check_error(&spec5, &p20,
                       "tensor 'logits.weight': expected shape [5, 64], found [20, 64]");
    seed_spec(&spec20, 20);
    cr_assert_eq(params_check(&spec20, &p20, &err), 0, "%s", err.message);
    tensorset_free(&p5);
    tensorset_free(&bn);
    tensorset_free(&p20);
}

Test(params_check, pytorch_fixture_values_follow_the_same_init_rule) {
    /* PyTorch's own draws differ from ours, but the distribution is the one params_init uses. */
    GraphSpec spec;
    TensorSet set;
    seed_spec(&spec, 5);
    read_fixture("fixtures/pytorch_maml/params_p5_default.safetensors", &set);
    for (int i = 0; i < spec.n_params; i++) {
        const ParamSpec *p = &spec.params[i];
        if (!p->is_bn) assert_uniform(tensorset_find(&set, p->name), 1.0 / sqrt((double)p->fan_in));
    }
    tensorset_free(&set);
}
