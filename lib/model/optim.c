/*
 * AdamW (decoupled weight decay) with global-norm gradient clipping, and
 * the learning-rate schedule: linear warmup, then cosine decay to 10% of the
 * peak. The moments are float, updated in a fixed order: reproducible bits.
 */
#include <math.h>
#include <string.h>

#include "model/model_int.h"

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

double trail_grad_norm(const float *g, size_t n)
{
	/* eight partial sums in double, combined in a fixed order */
	double s[8] = {0};
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int k = 0; k < 8; k++)
			s[k] += (double)g[i + k] * g[i + k];
	for (; i < n; i++)
		s[0] += (double)g[i] * g[i];
	return sqrt(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
}

/* The update in fixed items of parameters on the pool: each element's arithmetic is the one-thread loop's. */
enum { ADAM_ITEM = 65536 };

typedef struct adamj {
	float *p, *m, *v;
	const float *g;
	size_t n;
	float gsf, b1, b2, a, k2, eps, decay;
} adamj;

static void adam_item(void *ctx, int it, int t)
{
	const adamj *j = ctx;
	size_t i0 = (size_t)it * ADAM_ITEM, i1 = i0 + ADAM_ITEM < j->n ? i0 + ADAM_ITEM : j->n;
	float *p = j->p, *mm = j->m, *vv = j->v, b1 = j->b1, b2 = j->b2, a = j->a, k2 = j->k2, eps = j->eps;
	for (size_t i = i0; i < i1; i++) {
		float gi = j->g[i] * j->gsf;
		mm[i] = b1 * mm[i] + (1 - b1) * gi;
		vv[i] = b2 * vv[i] + (1 - b2) * gi * gi;
		p[i] = p[i] * j->decay - a * mm[i] / (sqrtf(vv[i]) * k2 + eps);
	}
}

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
	adamj j = {.p = p, .g = g, .m = o->m, .v = o->v, .n = n, .gsf = gsf, .b1 = b1, .b2 = b2, .a = a, .k2 = k2,
		   .eps = eps, .decay = decay};
	trail_pool_run(trail_compute_pool(), (int)((n + ADAM_ITEM - 1) / ADAM_ITEM), adam_item, &j);
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
