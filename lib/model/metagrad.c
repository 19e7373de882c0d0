/*
 * Metagradients through a recorded training run: the replay with stored
 * states, then for each query the reverse pass through the AdamW steps.
 *
 * One step of the run (trail_train, optim.c), eps the records' weights:
 *   g  = grad L_t(w; eps)            L_t = sum_b eps_b l_b / K
 *   s  = clip / |g| if |g| > clip, else 1;   c = s g
 *   m' = b1 m + (1 - b1) c;   v' = b2 v + (1 - b2) c^2
 *   w' = decay w - a m' / (k2 sqrt(v') + e)   a = lr / (1 - b1^t), k2 = 1 / sqrt(1 - b2^t)
 * Its reverse, given the adjoints w~', m~', v~' of the state after it:
 *   D = k2 sqrt(v') + e
 *   M = m~' - w~' a / D;   V = v~' + w~' a m' k2 / (2 D^2 sqrt(v'))
 *   c~ = (1 - b1) M + 2 (1 - b2) c V;   m~ = b1 M;   v~ = b2 V
 *   g~ = s (c~ - g (g . c~) / |g|^2) when clipped, else c~
 *   eps~_b += g~ . (k_b / K) grad mean_b(w)     (row b's own gradient)
 *   w~ = decay w~' + H_t g~                     (H_t: the batch loss's Hessian at w)
 * The adjoints are double; the weights, moments and gradients the run's
 * floats, with the step's own float constants.
 */
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

struct trail_metagrad {
	trail_model *m;
	const trail_dataset *d;
	trail_train_opts o;
	double fd_eps;
	size_t n, rows;    /* trainable parameters, training rows */
	long every, ncp;   /* checkpoint interval, stored states */
	float *cp;         /* ncp states [w, m, v] at steps 0, every, 2 every, ... */
	float *fin;        /* the final state */
	float *seg;        /* every + 1 states of the segment in hand */
	float *loss;       /* [steps] */
	trail_adamw opt;
	size_t *perm;
	uint64_t epoch;
	int32_t *x, *y, *ya; /* the batch: y with the dropped records' targets ignored, ya all of them */
	unsigned char *keep; /* [d->n] the records of the run (eps 1), the others eps 0; NULL: all */
	long K, Kall;        /* the batch's kept and all counted targets */
	float *g, *gr;     /* the batch gradient, one row's gradient */
	double *wb, *mb, *vb, *cb, *hv; /* adjoints and scratch */
	unsigned long long nrow;
};

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

const float *trail_metagrad_losses(const trail_metagrad *g)
{
	return g->loss;
}

unsigned long long trail_metagrad_rows(const trail_metagrad *g)
{
	return g->nrow;
}

void trail_metagrad_free(trail_metagrad *g)
{
	if (!g)
		return;
	trail_free(g->cp), trail_free(g->fin), trail_free(g->seg), trail_free(g->loss);
	trail_adamw_release(&g->opt);
	trail_free(g->perm), trail_free(g->x), trail_free(g->y), trail_free(g->ya), trail_free(g->keep), trail_free(g->g), trail_free(g->gr);
	trail_free(g->wb), trail_free(g->mb), trail_free(g->vb), trail_free(g->cb), trail_free(g->hv);
	trail_free(g);
}

/* The rows of step t, as trail_train fills them: batch row b is row perm_e[(t B + b) mod n]. */
static size_t row_of(trail_metagrad *g, long t, size_t b)
{
	uint64_t k = (uint64_t)t * (uint64_t)g->o.batch + b;
	if (k / g->rows != g->epoch)
		trail_train_order(g->perm, g->rows, g->o.seed, g->epoch = k / g->rows);
	return g->perm[k % g->rows];
}

static void fill_batch(trail_metagrad *g, long t)
{
	size_t S = (size_t)g->o.seq;
	g->K = g->Kall = 0;
	for (size_t b = 0; b < (size_t)g->o.batch; b++) {
		size_t r = row_of(g, t, b);
		int drop = g->keep && !g->keep[trail_dataset_row_record(g->d, r)];
		trail_dataset_row(g->d, r, g->o.seq, g->x + b * S, g->ya + b * S);
		for (size_t j = 0; j < S; j++) {
			int32_t v = g->ya[b * S + j];
			g->Kall += v >= 0;
			g->y[b * S + j] = drop ? -1 : v;
			g->K += !drop && v >= 0;
		}
	}
}

/*
 * The batch loss's gradient into the model's gradients: sum_kept l_b / K_all,
 * the forward's mean over the kept targets scaled by K / K_all (zero when
 * none is kept); *loss the forward's.
 */
static int batch_grad(trail_metagrad *g, float *loss, trail_error *err)
{
	int rc;
	*loss = 0;
	trail_model_zero_grad(g->m);
	if (!g->K)
		return TRAIL_OK;
	if ((rc = trail_model_forward(g->m, g->x, g->y, g->o.batch, g->o.seq, loss, err)) ||
	    (rc = trail_model_backward(g->m, err)))
		return rc;
	if (g->K != g->Kall) {
		size_t ng;
		float *gr = trail_model_grads(g->m, &ng), f = (float)((double)g->K / (double)g->Kall);
		for (size_t j = 0; j < ng; j++)
			gr[j] *= f;
	}
	return TRAIL_OK;
}

/* The state [w, m, v] of the run into st, or from it. */
static void save_state(trail_metagrad *g, float *st)
{
	size_t n;
	float *p = trail_model_params(g->m, &n);
	memcpy(st, p, n * sizeof *st);
	memcpy(st + n, g->opt.m, n * sizeof *st);
	memcpy(st + 2 * n, g->opt.v, n * sizeof *st);
}

static void load_state(trail_metagrad *g, const float *st, long t)
{
	size_t n;
	float *p = trail_model_params(g->m, &n);
	memcpy(p, st, n * sizeof *st);
	memcpy(g->opt.m, st + n, n * sizeof *st);
	memcpy(g->opt.v, st + 2 * n, n * sizeof *st);
	g->opt.t = t;
}

/* Step t of the run, trail_train's arithmetic exactly. */
static int step(trail_metagrad *g, long t, trail_error *err)
{
	float loss;
	int rc;
	fill_batch(g, t);
	if ((rc = batch_grad(g, &loss, err)))
		return rc;
	double norm = trail_adamw_step(&g->opt, g->m, trail_lr_schedule(g->o.lr, t, g->o.warmup, g->o.steps), g->o.clip);
	if (!isfinite(loss) || !isfinite(norm))
		return trail_error_set(err, TRAIL_EDATA, "the replay's loss or gradient is not finite at step %ld", t + 1);
	g->loss[t] = loss;
	return TRAIL_OK;
}

int trail_metagrad_replay(trail_model *m, const trail_dataset *d, const trail_train_opts *o,
			  const trail_metagrad_opts *mo, trail_metagrad **out, trail_error *err)
{
	trail_metagrad *g = trail_calloc(1, sizeof *g);
	size_t n;
	int rc = TRAIL_OK;
	*out = NULL;
	if (!g)
		return oom(err);
	trail_model_params(m, &n);
	g->m = m, g->d = d, g->o = *o, g->n = n, g->rows = trail_dataset_rows(d), g->epoch = UINT64_MAX;
	g->fd_eps = mo && mo->fd_eps > 0 ? mo->fd_eps : 1e-3;
	if (mo && mo->keep && !(g->keep = trail_malloc(d->n))) {
		trail_free(g);
		return oom(err);
	}
	if (g->keep)
		memcpy(g->keep, mo->keep, d->n);
	if (o->steps < 1 || o->batch < 1 || o->seq < 1 || !g->rows || !n) {
		trail_free(g->keep), trail_free(g);
		return trail_error_set(err, TRAIL_EUSAGE, "nothing to replay (%ld steps, %zu rows, %zu parameters)",
				       o->steps, g->rows, n);
	}
	g->every = mo && mo->every > 0 ? mo->every : (long)ceil(sqrt((double)o->steps));
	if (g->every > o->steps)
		g->every = o->steps;
	g->ncp = (o->steps + g->every - 1) / g->every;
	size_t B = (size_t)o->batch, S = (size_t)o->seq, st = 3 * n;
	g->cp = trail_malloc((size_t)g->ncp * st * sizeof *g->cp);
	g->fin = trail_malloc(st * sizeof *g->fin);
	g->seg = trail_malloc((size_t)(g->every + 1) * st * sizeof *g->seg);
	g->loss = trail_malloc((size_t)o->steps * sizeof *g->loss);
	g->perm = trail_malloc(g->rows * sizeof *g->perm);
	g->x = trail_malloc(B * S * sizeof *g->x), g->y = trail_malloc(B * S * sizeof *g->y);
	g->ya = trail_malloc(B * S * sizeof *g->ya);
	g->g = trail_malloc(n * sizeof *g->g), g->gr = trail_malloc(n * sizeof *g->gr);
	g->wb = trail_malloc(n * sizeof *g->wb), g->mb = trail_malloc(n * sizeof *g->mb);
	g->vb = trail_malloc(n * sizeof *g->vb), g->cb = trail_malloc(n * sizeof *g->cb);
	g->hv = trail_malloc(n * sizeof *g->hv);
	if (!g->cp || !g->fin || !g->seg || !g->loss || !g->perm || !g->x || !g->y || !g->ya || !g->g || !g->gr || !g->wb ||
	    !g->mb || !g->vb || !g->cb || !g->hv || trail_adamw_init(&g->opt, n)) {
		trail_metagrad_free(g);
		return oom(err);
	}
	for (long t = 0; t < o->steps && !rc; t++) {
		if (t % g->every == 0)
			save_state(g, g->cp + (size_t)(t / g->every) * st);
		rc = step(g, t, err);
	}
	if (rc) {
		trail_metagrad_free(g);
		return rc;
	}
	save_state(g, g->fin);
	*out = g;
	return TRAIL_OK;
}

/* The mean loss's gradient at the model's weights over rows [B, T] of x, y, into out; *k the counted targets. */
static int grad_at(trail_metagrad *g, const int32_t *x, const int32_t *y, int B, int T, float *out, trail_error *err)
{
	float loss;
	size_t n;
	int rc;
	trail_model_zero_grad(g->m);
	if ((rc = trail_model_forward(g->m, x, y, B, T, &loss, err)) || (rc = trail_model_backward(g->m, err)))
		return rc;
	memcpy(out, trail_model_grads(g->m, &n), g->n * sizeof *out);
	return TRAIL_OK;
}

/*
 * H u |u| by central differences: (grad(w + h u^) - grad(w - h u^)) |u| / 2h,
 * u^ = u / |u|, h = fd_eps max(1, |w|); into g->hv. The weights are restored.
 */
static int hvp(trail_metagrad *g, const float *w, const double *u, trail_error *err)
{
	size_t n = g->n;
	float *p = trail_model_params(g->m, &n);
	double un = 0, wn = 0;
	for (size_t i = 0; i < n; i++)
		un += u[i] * u[i], wn += (double)w[i] * w[i];
	un = sqrt(un), wn = sqrt(wn);
	memset(g->hv, 0, n * sizeof *g->hv);
	if (un == 0)
		return TRAIL_OK;
	double h = g->fd_eps * (wn > 1 ? wn : 1);
	int rc = TRAIL_OK;
	for (int sgn = 1; sgn >= -1 && !rc; sgn -= 2) {
		for (size_t i = 0; i < n; i++)
			p[i] = (float)((double)w[i] + sgn * h * u[i] / un);
		float loss;
		if (!(rc = batch_grad(g, &loss, err))) {
			const float *gr = trail_model_grads(g->m, &n);
			for (size_t i = 0; i < n; i++)
				g->hv[i] += sgn * (double)gr[i] * un / (2 * h);
		}
	}
	memcpy(p, w, n * sizeof *p);
	return rc;
}

/* The reverse of step t: states t (s0) and t + 1 (s1); the adjoints in g->wb, mb, vb. */
static int reverse_step(trail_metagrad *g, long t, const float *s0, const float *s1, double *dq, trail_error *err)
{
	size_t n = g->n, B = (size_t)g->o.batch, S = (size_t)g->o.seq;
	const float *w = s0, *m1 = s1 + n, *v1 = s1 + 2 * n;
	float *p = trail_model_params(g->m, &n);
	int rc;
	memcpy(p, w, n * sizeof *p);
	fill_batch(g, t);
	float loss;
	size_t ng;
	if ((rc = batch_grad(g, &loss, err)))
		return rc;
	memcpy(g->g, trail_model_grads(g->m, &ng), n * sizeof *g->g);
	g->nrow += B;
	/* the step's constants, as trail_adamw_step computes them */
	double lr = trail_lr_schedule(g->o.lr, t, g->o.warmup, g->o.steps), norm = trail_grad_norm(g->g, n);
	double gs = g->o.clip > 0 && norm > g->o.clip ? g->o.clip / norm : 1.0;
	double b1c = 1 - pow(g->opt.beta1, (double)(t + 1)), b2c = 1 - pow(g->opt.beta2, (double)(t + 1));
	float b1 = (float)g->opt.beta1, b2 = (float)g->opt.beta2, gsf = (float)gs;
	double a = (float)(lr / b1c), k2 = (float)(1 / sqrt(b2c)), e = (float)g->opt.eps;
	double decay = (float)(1 - lr * g->opt.weight_decay), c1 = (float)(1 - b1), c2 = (float)(1 - b2);
	double dot = 0;
	for (size_t i = 0; i < n; i++) {
		double sv = sqrt((double)v1[i]), D = sv * k2 + e, wb = g->wb[i];
		double M = g->mb[i] - wb * a / D, V = g->vb[i] + (sv > 0 ? wb * a * m1[i] * k2 / (2 * D * D * sv) : 0);
		double c = (double)(g->g[i] * gsf);
		g->cb[i] = c1 * M + 2 * c2 * c * V;
		g->mb[i] = b1 * M;
		g->vb[i] = b2 * V;
		dot += (double)g->g[i] * g->cb[i];
	}
	if (gs != 1.0) /* through the clipping: s (I - g g^T / |g|^2) */
		for (size_t i = 0; i < n; i++)
			g->cb[i] = gs * (g->cb[i] - g->g[i] * dot / (norm * norm));
	/* the records: each row's share of the batch loss, k_b / K times its own mean loss (K all the batch's targets) */
	long K = g->Kall;
	for (size_t b = 0; b < B && K; b++) {
		size_t r = row_of(g, t, b);
		long k = 0;
		for (size_t j = 0; j < S; j++)
			k += g->ya[b * S + j] >= 0;
		if (!k)
			continue;
		if ((rc = grad_at(g, g->x + b * S, g->ya + b * S, 1, g->o.seq, g->gr, err)))
			return rc;
		g->nrow++;
		double s = 0;
		for (size_t i = 0; i < n; i++)
			s += g->cb[i] * g->gr[i];
		dq[trail_dataset_row_record(g->d, r)] += s * (double)k / (double)K;
	}
	if (t == 0) /* the start does not depend on the weights eps: no w~ needed */
		return TRAIL_OK;
	fill_batch(g, t); /* the rows again: row_of may have moved the epoch's order */
	if ((rc = hvp(g, w, g->cb, err)))
		return rc;
	g->nrow += 2 * B;
	for (size_t i = 0; i < n; i++)
		g->wb[i] = decay * g->wb[i] + g->hv[i];
	return TRAIL_OK;
}

int trail_metagrad_query(trail_metagrad *g, const int32_t *tok, size_t n, size_t first, double *dq,
			 trail_error *err)
{
	size_t np = g->n, st = 3 * np, T = n - 1, N = g->d->n;
	int rc;
	if (n < 2 || first < 1 || first >= n || T > (size_t)trail_model_config(g->m)->n_positions)
		return trail_error_set(err, TRAIL_EDATA, "the query has no output tokens to score (or is too long)");
	int32_t *x = trail_malloc(T * sizeof *x), *y = trail_malloc(T * sizeof *y);
	if (!x || !y) {
		trail_free(x), trail_free(y);
		return oom(err);
	}
	for (size_t i = 0; i < T; i++)
		x[i] = tok[i], y[i] = i + 1 >= first ? tok[i + 1] : -1;
	g->nrow = 0;
	memset(dq, 0, N * sizeof *dq);
	load_state(g, g->fin, g->o.steps);
	rc = grad_at(g, x, y, 1, (int)T, g->gr, err);
	trail_free(x), trail_free(y);
	if (rc)
		return rc;
	g->nrow++;
	for (size_t i = 0; i < np; i++)
		g->wb[i] = g->gr[i], g->mb[i] = 0, g->vb[i] = 0;
	for (long k = g->ncp - 1; k >= 0 && !rc; k--) {
		long t0 = k * g->every, t1 = t0 + g->every < g->o.steps ? t0 + g->every : g->o.steps;
		/* the segment recomputed from its stored state; its end must be the next stored state */
		load_state(g, g->cp + (size_t)k * st, t0);
		save_state(g, g->seg);
		for (long t = t0; t < t1 && !rc; t++)
			if (!(rc = step(g, t, err)))
				save_state(g, g->seg + (size_t)(t - t0 + 1) * st);
		if (rc)
			break;
		g->nrow += (unsigned long long)(t1 - t0) * (size_t)g->o.batch;
		const float *end = k + 1 < g->ncp ? g->cp + (size_t)(k + 1) * st : g->fin;
		if (memcmp(g->seg + (size_t)(t1 - t0) * st, end, st * sizeof *end)) {
			rc = trail_error_set(err, TRAIL_EINTERNAL, "steps %ld to %ld do not recompute to the same bits", t0 + 1, t1);
			break;
		}
		for (long t = t1 - 1; t >= t0 && !rc; t--) {
			g->opt.t = t; /* the step's bias correction is of t + 1 */
			rc = reverse_step(g, t, g->seg + (size_t)(t - t0) * st, g->seg + (size_t)(t - t0 + 1) * st, dq, err);
		}
	}
	load_state(g, g->fin, g->o.steps); /* the model as the run left it */
	return rc;
}
