/*
 * AdamW (decoupled weight decay) with global-norm gradient clipping, and
 * the learning-rate schedule: linear warmup, then cosine decay to 10% of the
 * peak. The moments are float, updated in a fixed order: reproducible bits.
 */
#include <math.h>
#include <string.h>

#include "model/model_int.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define X86 1
#else
#define X86 0
#endif

int trail_adamw_init(trail_adamw *o, size_t n)
{
	memset(o, 0, sizeof *o);
	o->beta1 = 0.9;
	o->beta2 = 0.95;
	o->eps = 1e-8;
	o->weight_decay = 0.0;
	o->n = n;
	o->m = trail_calloc(n ? n : 1, sizeof *o->m);
	o->v = trail_calloc(n ? n : 1, sizeof *o->v);
	if (!o->m || !o->v) {
		trail_adamw_release(o);
		return TRAIL_ENOMEM;
	}
	return TRAIL_OK;
}

void trail_adamw_release(trail_adamw *o)
{
	trail_free(o->m);
	trail_free(o->v);
	o->m = o->v = NULL;
}

/*
 * The squares summed in eight partial sums of double, lane k taking the
 * elements k, k + 8, k + 16, ... in order, combined in a fixed order at the
 * end. The lanes are independent of each other: the sixteen-lane build
 * (eight doubles a register, the same additions in the same order) and the
 * portable one give the same bits, and on the pool the two halves of the
 * lanes (0-3 and 4-7) are two items, so the sum does not depend on the
 * thread count either.
 */
typedef double vd4 __attribute__((vector_size(32)));

#define NORM_BODY                                                                           \
	vd4 s = {0, 0, 0, 0};                                                               \
	size_t i = 0;                                                                       \
	for (; i + 8 <= n; i += 8) {                                                        \
		vd4 x = {g[i + k0], g[i + k0 + 1], g[i + k0 + 2], g[i + k0 + 3]};           \
		s += x * x;                                                                 \
	}                                                                                   \
	memcpy(out, &s, sizeof s);                                                          \
	for (; i < n; i++) /* the tail: lane 0 */                                           \
		if (k0 == 0)                                                                \
			out[0] += (double)g[i] * g[i];

#if X86
__attribute__((target("avx2"))) static void norm_lanes_avx2(const float *g, size_t n, int k0, double *out)
{
	NORM_BODY
}
#endif

static void norm_lanes_any(const float *g, size_t n, int k0, double *out)
{
	NORM_BODY
}
#undef NORM_BODY

typedef struct normj {
	const float *g;
	size_t n;
	double s[8];
} normj;

static void norm_item(void *ctx, int it, int t)
{
	normj *j = ctx;
#if X86
	if (trail_k_has_avx2()) {
		norm_lanes_avx2(j->g, j->n, 4 * it, j->s + 4 * it);
		return;
	}
#endif
	norm_lanes_any(j->g, j->n, 4 * it, j->s + 4 * it);
}

double trail_grad_norm(const float *g, size_t n)
{
	normj j = {.g = g, .n = n};
	trail_pool_run(trail_compute_pool(), 2, norm_item, &j);
	double *s = j.s;
	return sqrt(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
}

/* The update in fixed items of parameters on the pool: each element's arithmetic is the one-thread loop's. */
enum { ADAM_ITEM = 65536 };

typedef struct adamj {
	float *p, *m, *v, *g;
	size_t n;
	int zero; /* the gradient zeroed once used */
	float gsf, b1, b2, a, k2, eps, decay;
} adamj;

/*
 * One element: gi = g gsf; m = b1 m + (1 - b1) gi; v = b2 v + (1 - b2) gi gi;
 * p = p decay - a m / (sqrt(v) k2 + eps), in that order, and the same
 * operations sixteen lanes at a time (IEEE sqrt and division are exact
 * roundings, and ISO C contracts nothing into fused multiply-adds): the
 * AVX-512 loop and the scalar one give the same bits.
 */
#define ADAM_1(i)                                                                         \
	do {                                                                              \
		float gi = g[i] * j->gsf;                                                 \
		mm[i] = b1 * mm[i] + (1 - b1) * gi;                                       \
		vv[i] = b2 * vv[i] + (1 - b2) * gi * gi;                                  \
		p[i] = p[i] * j->decay - a * mm[i] / (sqrtf(vv[i]) * k2 + eps);           \
		if (j->zero)                                                              \
			g[i] = 0;                                                         \
	} while (0)

#if X86
__attribute__((target("avx512f"))) static size_t adam16(const adamj *j, size_t i0, size_t i1)
{
	float *p = j->p, *mm = j->m, *vv = j->v, *g = j->g;
	__m512 gsf = _mm512_set1_ps(j->gsf), b1 = _mm512_set1_ps(j->b1), c1 = _mm512_set1_ps(1 - j->b1);
	__m512 b2 = _mm512_set1_ps(j->b2), c2 = _mm512_set1_ps(1 - j->b2), a = _mm512_set1_ps(j->a);
	__m512 k2 = _mm512_set1_ps(j->k2), eps = _mm512_set1_ps(j->eps), decay = _mm512_set1_ps(j->decay);
	size_t i = i0;
	for (; i + 16 <= i1; i += 16) {
		__m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), gsf);
		__m512 m = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(mm + i)), _mm512_mul_ps(c1, gi));
		__m512 v = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(vv + i)),
					 _mm512_mul_ps(_mm512_mul_ps(c2, gi), gi));
		__m512 d = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(v), k2), eps);
		__m512 q = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + i), decay), _mm512_div_ps(_mm512_mul_ps(a, m), d));
		_mm512_storeu_ps(mm + i, m);
		_mm512_storeu_ps(vv + i, v);
		_mm512_storeu_ps(p + i, q);
		if (j->zero)
			_mm512_storeu_ps(g + i, _mm512_setzero_ps());
	}
	return i;
}

#endif

static void adam_item(void *ctx, int it, int t)
{
	const adamj *j = ctx;
	size_t i0 = (size_t)it * ADAM_ITEM, i1 = i0 + ADAM_ITEM < j->n ? i0 + ADAM_ITEM : j->n;
	float *p = j->p, *mm = j->m, *vv = j->v, *g = j->g, b1 = j->b1, b2 = j->b2, a = j->a, k2 = j->k2, eps = j->eps;
	size_t i = i0;
#if X86
	if (trail_k_has_avx512())
		i = adam16(j, i0, i1);
#endif
	for (; i < i1; i++)
		ADAM_1(i);
}
#undef ADAM_1

double trail_adamw_step(trail_adamw *o, trail_model *m, double lr, double clip)
{
	size_t n;
	float *p = trail_model_params(m, &n), *g = trail_model_grads(m, &n);
	if (!g || n != o->n)
		return NAN;
	double norm = trail_grad_norm(g, n);
	if (!isfinite(norm))
		return norm; /* nothing moves: the caller stops */
	double gs = clip > 0 && norm > clip ? clip / norm : 1.0;
	o->t++;
	/* bias corrections folded into the step size and epsilon */
	double b1c = 1 - pow(o->beta1, (double)o->t), b2c = 1 - pow(o->beta2, (double)o->t);
	float b1 = (float)o->beta1, b2 = (float)o->beta2, gsf = (float)gs;
	float a = (float)(lr / b1c), k2 = (float)(1 / sqrt(b2c)), eps = (float)o->eps;
	float decay = (float)(1 - lr * o->weight_decay);
	adamj j = {.p = p, .g = g, .m = o->m, .v = o->v, .n = n, .zero = o->zero_grads, .gsf = gsf, .b1 = b1, .b2 = b2, .a = a, .k2 = k2,
		   .eps = eps, .decay = decay};
	trail_pool_run(trail_compute_pool(), (int)((n + ADAM_ITEM - 1) / ADAM_ITEM), adam_item, &j);
	m->g_zero = o->zero_grads != 0;
	return norm;
}

double trail_lr_schedule(double peak, long step, long warmup, long total)
{
	if (step < warmup)
		return peak * (double)(step + 1) / (double)warmup;
	if (total <= warmup)
		return peak;
	double f = (double)(step - warmup) / (double)(total - warmup);
	if (f > 1)
		f = 1;
	return peak * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * f)));
}
