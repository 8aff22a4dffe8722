/* Parameter initialisation and checking (see params.h). */
#include "params.h"

#include <math.h>

#include "rng.h"

static Shape param_shape(const ParamSpec *p) {
    Shape s = {.rank = p->rank};
    for (int i = 0; i < p->rank && i < SPEC_MAX_RANK; i++) s.dims[i] = p->dims[i];
    return s;
}

/* Fills one tensor. The uniform bound 1/sqrt(fan_in) is what PyTorch's
 * kaiming_uniform_(a=sqrt(5)) works out to for weights (gain sqrt(2/(1+5)), times sqrt(3) for a
 * uniform's standard deviation), and what reset_parameters uses for biases. */
static int init_one(const ParamSpec *p, Rng *rng, Tensor *t, MamlError *err) {
    int64_t n = shape_numel(t->shape);
    if (p->is_bn) {
        for (int64_t i = 0; i < n; i++) tensor_set(t, i, p->is_bias ? 0.0 : 1.0);
        return 0;
    }
    if (p->fan_in <= 0)
        return maml_fail(err, "parameter '%s': fan_in must be positive, not %lld", p->name,
                         (long long)p->fan_in);
    double bound = 1.0 / sqrt((double)p->fan_in);
    float *w = t->data;
    for (int64_t i = 0; i < n; i++) {
        /* Rounding to float can step just past the bound; step back so |w| <= bound holds. */
        float x = (float)(bound * (2.0 * rng_uniform(rng) - 1.0));
        w[i] = fabsf(x) > bound ? nextafterf(x, 0.0f) : x;
    }
    return 0;
}

int params_init(const GraphSpec *spec, uint64_t seed, TensorSet *out, MamlError *err) {
    Rng rng;
    rng_seed(&rng, seed);
    tensorset_free(out);
    for (int i = 0; i < spec->n_params; i++) {
        const ParamSpec *p = &spec->params[i];
        if (p->rank < 0 || p->rank > SPEC_MAX_RANK) {
            tensorset_free(out);
            return maml_fail(err, "parameter '%s': rank %d outside 0..%d", p->name, p->rank,
                             SPEC_MAX_RANK);
        }
        Tensor *t = tensorset_add(out, p->name, TENSOR_F32, param_shape(p), NULL, err);
        if (!t || init_one(p, &rng, t, err) < 0) {
            tensorset_free(out);
            return -1;
        }
    }
    return 0;
}

static int check_one(const ParamSpec *p, const TensorSet *params, MamlError *err) {
    char want[256], got[256];
    const Tensor *t = tensorset_find(params, p->name);
    if (!t) return maml_fail(err, "missing tensor '%s'", p->name);
    Shape s = param_shape(p);
    if (!shape_equal(s, t->shape))
        return maml_fail(err, "tensor '%s': expected shape %s, found %s", p->name,
                         shape_str(s, want, sizeof want), shape_str(t->shape, got, sizeof got));
    if (t->dtype != TENSOR_F32 && t->dtype != TENSOR_F64)
        return maml_fail(err, "tensor '%s': expected dtype F32 or F64, found %s", p->name,
                         tensor_dtype_name(t->dtype));
    return 0;
}

int params_check(const GraphSpec *spec, const TensorSet *params, MamlError *err) {
    for (int i = 0; i < spec->n_params; i++)
        if (check_one(&spec->params[i], params, err) < 0) return -1;
    return 0;
}
