/* The graph IR: an append-only array of SSA nodes over a small set of primitives.
 *
 * A node's inputs always precede it, so index order is a topological order. Every primitive
 * has shape inference here and a vector-Jacobian rule in autodiff.c written in primitives, so a
 * gradient graph can be differentiated again. Composite layers (batch norm, linear,
 * cross-entropy, optimizers) are expansions into these primitives (layers.c, optim.c).
 *
 * Conventions: binary elementwise ops take operands of identical shape (broadcasts are explicit
 * BROADCAST nodes); reductions keep reduced axes with size 1; activations of the MAML graphs are
 * [T, N, ...] with T the task dimension. */
#ifndef MAMLC_GRAPH_H
#define MAMLC_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

#define MAX_RANK 8
#define MAX_INPUTS 3

typedef enum {
    DT_REAL, /* float32 or float64, chosen by the backend */
    DT_INT,  /* integer labels */
    DT_BOOL, /* comparison masks */
} DType;

/* The primitives. Keep this list and the op table in graph.c in the same order. */
typedef enum {
    OP_INPUT, /* named graph input (parameter, optimizer state, data, step counter) */
    OP_CONST, /* a fill constant of the node's shape: attr.value */
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_NEG,
    OP_EXP,
    OP_LOG,
    OP_RSQRT,
    OP_SQRT,
    OP_GT,         /* mask a > b */
    OP_EQ,         /* mask a == b */
    OP_SELECT,     /* select(mask, a, b) */
    OP_REDUCE_SUM, /* over attr.axes, keeping them as size 1 */
    OP_REDUCE_MAX,
    OP_BROADCAST, /* same rank; size-1 axes expand to the node's shape */
    OP_RESHAPE,
    OP_PERMUTE,            /* out axis i = in axis attr.perm[i] */
    OP_MATMUL,             /* [..., M, K] x [..., K, N] with attr.trans_a / trans_b */
    OP_CONV2D,             /* x [T,N,C,H,W], w [T,O,C,KH,KW] -> [T,N,O,HO,WO] (per-task weights) */
    OP_CONV2D_GRAD_INPUT,  /* (dy [T,N,O,HO,WO], w) -> dx of the node's shape */
    OP_CONV2D_GRAD_WEIGHT, /* (x, dy) -> dw of the node's shape */
    OP_MAX_POOL2D,         /* x [..., H, W] -> max over attr.kernel windows with attr.stride */
    OP_POOL_SCATTER,       /* (x, dy) -> dy placed at each window's argmax of x, zeros elsewhere */
    OP_POOL_GATHER,        /* (x, z) -> z read at each window's argmax of x (pooled shape) */
    OP_ONE_HOT,            /* int labels [...] -> real [..., attr.depth] */
    OP_STOP_GRAD,          /* identity whose gradient is zero (first-order MAML, softmax shift) */
    OP_COUNT
} OpKind;

typedef struct {
    int rank;
    int64_t dims[MAX_RANK];
} Shape;

typedef struct {
    double value;          /* CONST */
    uint32_t axes;         /* REDUCE_*: bit i set = reduce axis i */
    int perm[MAX_RANK];    /* PERMUTE */
    bool trans_a, trans_b; /* MATMUL */
    int stride, padding;   /* CONV2D family */
    int kernel;            /* MAX_POOL2D family (stride above) */
    int depth;             /* ONE_HOT */
} Attr;

typedef enum { INPUT_PARAM, INPUT_STATE, INPUT_DATA } InputKind;

typedef struct {
    OpKind op;
    DType dtype;
    Shape shape;
    int n_in;
    int in[MAX_INPUTS];
    Attr attr;
    /* OP_INPUT: the tensor's name as in files ("conv1.conv2d.weight", "support_x") */
    char *name;
    InputKind input_kind;
    /* which layer or rule made the node, for dumps and error messages ("conv1.bn", "grad") */
    const char *origin;
} Node;

typedef struct {
    char *name;
    int node;
} GraphOutput;

typedef struct {
    Node *nodes;
    int n_nodes, cap_nodes;
    GraphOutput *outputs;
    int n_outputs, cap_outputs;
    const char *origin; /* stamped on nodes as they are made */
    /* sticky error: builders return -1 after the first failure and keep err's message */
    bool failed;
    MamlError err;
} Graph;

typedef struct {
    const char *name;
    int n_in;
} OpInfo;

extern const OpInfo op_info[OP_COUNT];

void graph_init(Graph *g);
void graph_free(Graph *g);

/* Returns the graph's first error status: 0 if every builder call succeeded, else -1 with the
 * message copied into err. */
int graph_status(const Graph *g, MamlError *err);

/* Node constructors. Each infers the result's shape and dtype, and returns the new node's index,
 * or -1 (with g->failed set and g->err filled) when an operand is -1 or the shapes do not fit. So
 * expressions can be nested and checked once with graph_status. */
int g_input(Graph *g, const char *name, InputKind kind, DType dtype, Shape shape);
int g_const(Graph *g, double value, Shape shape);
int g_binary(Graph *g, OpKind op, int a, int b);
int g_add(Graph *g, int a, int b);
int g_sub(Graph *g, int a, int b);
int g_mul(Graph *g, int a, int b);
int g_div(Graph *g, int a, int b);
int g_unary(Graph *g, OpKind op, int a);
int g_gt(Graph *g, int a, int b);
int g_eq(Graph *g, int a, int b);
int g_select(Graph *g, int mask, int a, int b);
int g_reduce(Graph *g, OpKind op, int a, uint32_t axes);
int g_broadcast(Graph *g, int a, Shape shape);
int g_reshape(Graph *g, int a, Shape shape);
int g_permute(Graph *g, int a, const int *perm);
int g_matmul(Graph *g, int a, int b, bool trans_a, bool trans_b);
int g_conv2d(Graph *g, int x, int w, int stride, int padding);
int g_conv2d_grad_input(Graph *g, int dy, int w, Shape x_shape, int stride, int padding);
int g_conv2d_grad_weight(Graph *g, int x, int dy, Shape w_shape, int stride, int padding);
int g_max_pool2d(Graph *g, int x, int kernel, int stride);
int g_pool_scatter(Graph *g, int x, int dy, int kernel, int stride);
int g_pool_gather(Graph *g, int x, int z, int kernel, int stride);
int g_one_hot(Graph *g, int labels, int depth);
int g_stop_grad(Graph *g, int a);

/* Conveniences built from the primitives above. */
int g_scale(Graph *g, int a, double c);        /* a * c */
int g_add_scalar(Graph *g, int a, double c);   /* a + c */
int g_expand_as(Graph *g, int a, Shape shape); /* broadcast a (same rank) or return it */
int g_sum_to(Graph *g, int a, Shape shape);    /* reduce_sum over axes where shape is 1 */

/* Adds a named output; the name must be unique. */
int graph_add_output(Graph *g, const char *name, int node);
/* Index of the output with this name, or -1. */
int graph_find_output(const Graph *g, const char *name);
/* Index of the INPUT node with this name, or -1. */
int graph_find_input(const Graph *g, const char *name);
/* Whether name is a data input (the task batch, INPUT_DATA) of g. */
bool graph_is_data_input(const Graph *g, const char *name);

/* An elementwise op's value in double (unary: NEG, EXP, LOG, RSQRT, SQRT, STOP_GRAD; binary: ADD,
 * SUB, MUL, DIV, and GT, EQ as 1 or 0); NAN for any other op. The reference interpreter computes
 * every elementwise node with these and constant folding folds with them, so a folded constant
 * is the value ref would compute. */
double op_eval_unary(OpKind op, double a);
double op_eval_binary(OpKind op, double a, double b);

/* Shape helpers. */
Shape shape_make(int rank, const int64_t *dims);
Shape shape_scalar(void);
/* SHAPE(2, 3, 4): a shape from its dims (at least one). */
#define SHAPE(...)                                                                                 \
    shape_make((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})
int64_t shape_numel(Shape s);
bool shape_equal(Shape a, Shape b);
/* Writes "[2, 3, 4]" into buf and returns buf. */
char *shape_str(Shape s, char *buf, int size);

#endif
