/* Internals shared by the attribution sources (attr_proj.c, attr_index.c, attr_precond.c, attr.c). */
#ifndef TRAIL_ATTR_INT_H
#define TRAIL_ATTR_INT_H
#include <string.h>

#include "attr/attr.h"
#include "core/core.h"

typedef struct trail_attr_layer {
	int index, in, out; /* the model's linear layer and its shape */
	char name[40];
	float *pin, *pout;  /* P_in [k_in,in], P_out [k_out,out] */
} trail_attr_layer;

struct trail_attr_proj {
	int n, k_in, k_out, targets;
	uint64_t seed;
	size_t dim;
	trail_attr_layer *L;
	float *xp; /* scratch [N, k_in + k_out] */
	size_t cap;
};

typedef struct trail_attr_hdr {
	uint64_t nrecords, seed, nparams, blob, filelen;
	int nlayers, nsets, k_in, k_out, targets, seq;
	size_t dim;
	double damping;
	trail_attr_ident id;
	int shard;              /* 1: records [lo, lo + nrecords) of a set of `total` (no curvature yet) */
	uint64_t lo, total;
} trail_attr_hdr;

typedef struct trail_attr_off {
	size_t layers, sets, params, scales, norms, lambda, chol, ekfac, grads, records, blob, end;
} trail_attr_off;

struct trail_attr_index {
	trail_map map;
	trail_attr_hdr h;
	trail_attr_off o;
	trail_attr_info info;
	const float *scales, *norms, *lambda, *chol, *ekfac;
	float *cholt; /* the factors transposed (upper, row major), for the forward solve by rows; NULL without blocks */
	const uint16_t *grads;
};

void trail_attr_layout(trail_attr_hdr *h, trail_attr_off *o);
void trail_attr_fill(const trail_dataset *d, size_t r, int T, int32_t *x, int32_t *y, long *count);
void trail_attr_f16_to_f32(const uint16_t *in, float *out, size_t n);
/* What the CPU (and OS) support: TRAIL_ATTR_CPU_* bits; 0 off x86. */
enum { TRAIL_ATTR_CPU_F16C = 1, TRAIL_ATTR_CPU_AVX2_FMA = 2 };
int trail_attr_cpu(void);
/* Covariance, its Cholesky factor and the DataInf dampings, written into the mapped file (EK-FAC's: attr_ekfac.c). */
int trail_attr_curvature(uint8_t *map, const trail_attr_hdr *h, const trail_attr_off *o, trail_error *err);
/* Whether an index of h's sizes has the dense per-layer blocks (influence): dim <= TRAIL_ATTR_MAX_DIM. */
static inline int trail_attr_has_blocks(const trail_attr_hdr *h)
{
	return h->dim <= TRAIL_ATTR_MAX_DIM;
}
/* EK-FAC (attr_ekfac.c): floats a layer (Q_S, Q_A, Lambda), the curvature, a query's preconditioning, the reference. */
size_t trail_attr_ekfac_floats(int k_in, int k_out);
int trail_attr_ekfac_curvature(uint8_t *map, const trail_attr_hdr *h, const trail_attr_off *o, trail_error *err);
int trail_attr_ekfac_precond(const trail_attr_index *x, float *V, int nq, trail_error *err);
int trail_attr_ekfac_ref(const trail_attr_index *x, const float *q, int nq, double *V, trail_error *err);
/* The weight of a gradient set (the learning rate at its checkpoint) and its parameters. */
static inline double trail_attr_set_weight(const trail_attr_index *x, int set)
{
	double w;
	memcpy(&w, (const uint8_t *)x->map.data + x->o.sets + (size_t)set * 16, 8);
	return w;
}

static inline const float *trail_attr_set_params(const trail_attr_index *x, int set)
{
	return (const float *)((const uint8_t *)x->map.data + x->o.params + (size_t)set * x->h.nparams * 4);
}

#endif
