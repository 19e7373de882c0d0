/*
 * Metagradients (lib/model/metagrad.c) against PyTorch autograd in float64
 * through the same tiny LoRA run (tests/reference/exact_torch.py, fixture
 * tests/data/exact/run.json): the replay's losses, then d(query
 * loss)/d(eps_i) of each record. The bound: worst error relative to the
 * largest |dq| under 1e-3 (the run is float32 and the Hessian-vector
 * products central differences; the figure is printed). Then what must
 * hold bit for bit: the replay is trail_train's run, and the scores do not
 * depend on the checkpoint interval or the thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"

static char dir[4096];

static trail_dataset *dataset(const json_t *recs)
{
	size_t n = json_array_size(recs);
	trail_dataset *d = trail_calloc(1, sizeof *d);
	d->n = n;
	d->tok = trail_calloc(n, sizeof *d->tok);
	d->len = trail_calloc(n, sizeof *d->len);
	d->first = trail_calloc(n, sizeof *d->first);
	d->id = trail_calloc(n, sizeof *d->id);
	d->contributor = trail_calloc(n, sizeof *d->contributor);
	for (size_t i = 0; i < n; i++) {
		json_t *r = json_array_get(recs, i), *t = json_object_get(r, "tokens");
		d->len[i] = json_array_size(t);
		d->tok[i] = trail_malloc(d->len[i] * sizeof **d->tok);
		for (size_t k = 0; k < d->len[i]; k++)
			d->tok[i][k] = (int32_t)json_integer_value(json_array_get(t, k));
		d->first[i] = (int32_t)json_integer_value(json_object_get(r, "first"));
		snprintf(d->id[i], sizeof d->id[i], "r%zu", i);
	}
	return d;
}

static trail_model *start(void)
{
	char p[4200];
	trail_model *m = NULL;
	trail_error e = {0};
	snprintf(p, sizeof p, "%s/small", dir);
	if (trail_model_load(p, &m, &e))
		return NULL;
	snprintf(p, sizeof p, "%s/small-lora", dir);
	if (trail_model_load_adapter(m, p, &e)) {
		trail_model_free(m);
		return NULL;
	}
	return m;
}

/* dq of the query for a checkpoint interval; NULL on failure. */
static double fd_eps;

static double *scores(const trail_dataset *d, const trail_train_opts *o, long every, const int32_t *q, size_t nq,
		      size_t first, float *losses, float *final, size_t *np)
{
	trail_model *m = start();
	trail_metagrad *g = NULL;
	trail_error e = {0};
	trail_metagrad_opts mo = {.every = every, .fd_eps = fd_eps};
	double *dq = calloc(d->n, sizeof *dq);
	if (!m || trail_metagrad_replay(m, d, o, &mo, &g, &e) || trail_metagrad_query(g, q, nq, first, dq, &e)) {
		diag("metagrad: %s", e.msg);
		free(dq);
		dq = NULL;
	}
	if (dq && losses)
		memcpy(losses, trail_metagrad_losses(g), (size_t)o->steps * sizeof *losses);
	if (dq && final) {
		float *p = trail_model_params(m, np);
		memcpy(final, p, *np * sizeof *p);
	}
	trail_metagrad_free(g);
	trail_model_free(m);
	return dq;
}

int main(void)
{
	const char *top = getenv("TRAIL_TOP");
	char p[4200];
	trail_error e = {0};
	snprintf(dir, sizeof dir, "%s/tests/data/model", top ? top : ".");
	snprintf(p, sizeof p, "%s/tests/data/exact/run.json", top ? top : ".");
	json_t *run = json_load_file(p, 0, NULL);
	if (!ok(run != NULL, "the PyTorch reference run.json"))
		return 1;
	trail_compute_set(1, TRAIL_PREC_FP32, NULL);
	json_t *h = json_object_get(run, "hyperparameters"), *qj = json_object_get(run, "query");
	trail_train_opts o = {
		.batch = (int)json_integer_value(json_object_get(h, "batch")),
		.seq = (int)json_integer_value(json_object_get(h, "seq")),
		.steps = (long)json_integer_value(json_object_get(h, "steps")),
		.lr = json_number_value(json_object_get(h, "lr")),
		.warmup = (long)json_integer_value(json_object_get(h, "warmup")),
		.clip = json_number_value(json_object_get(h, "clip")),
		.seed = (uint64_t)json_integer_value(json_object_get(h, "seed")),
	};
	trail_dataset *d = dataset(json_object_get(run, "records"));
	json_t *qt = json_object_get(qj, "tokens");
	size_t nq = json_array_size(qt), first = (size_t)json_integer_value(json_object_get(qj, "first"));
	int32_t q[64];
	for (size_t i = 0; i < nq && i < 64; i++)
		q[i] = (int32_t)json_integer_value(json_array_get(qt, i));
	float losses[64], fin[65536], fin2[65536];
	size_t np = 0, np2 = 0;
	double *dq = scores(d, &o, 0, q, nq, first, losses, fin, &np);
	if (!ok(dq != NULL, "replay and reverse pass run"))
		return 1;
	double lw = 0;
	for (long t = 0; t < o.steps; t++) {
		double want = json_number_value(json_array_get(json_object_get(run, "losses"), (size_t)t));
		lw = fmax(lw, fabs(losses[t] - want) / want);
	}
	ok(lw < 1e-5, "the replay's %ld losses are PyTorch's (worst relative %.1e)", o.steps, lw);
	double top_ = 0, worst = 0;
	json_t *ref = json_object_get(run, "dq");
	for (size_t i = 0; i < d->n; i++)
		top_ = fmax(top_, fabs(json_number_value(json_array_get(ref, i))));
	for (size_t i = 0; i < d->n; i++) {
		double want = json_number_value(json_array_get(ref, i));
		diag("record %zu: dq %.9f, PyTorch float64 %.9f", i, dq[i], want);
		worst = fmax(worst, fabs(dq[i] - want) / top_);
	}
	ok(top_ > 0 && worst < 1e-3, "dQ/deps of %zu records match PyTorch autograd through AdamW (worst %.2e of max |dq| %.3g)",
	   d->n, worst, top_);

	/* other finite-difference steps: truncation (h^2) above, rounding below */
	static const double steps[] = {1e-2, 3e-4, 1e-4};
	for (int k = 0; k < 3; k++) {
		fd_eps = steps[k];
		double *d1 = scores(d, &o, 0, q, nq, first, NULL, NULL, NULL), w1 = 0;
		for (size_t i = 0; d1 && i < d->n; i++)
			w1 = fmax(w1, fabs(d1[i] - json_number_value(json_array_get(ref, i))) / top_);
		ok(d1 && w1 < (k ? 1e-3 : 5e-2), "--fd-eps %g: worst %.2e of max |dq|", fd_eps, w1);
		free(d1);
	}
	fd_eps = 0;

	/* the replay is the training run, bit for bit */
	trail_model *m = start();
	trail_train_run r;
	size_t n;
	char set[72] = "sha256:test";
	trail_model_params(m, &n);
	int rc = trail_train_run_init(&r, m, &o, set, &e) || trail_train(m, d, &o, &r, &e);
	float *tp = trail_model_params(m, &n);
	ok(!rc && n == np && !memcmp(tp, fin, n * sizeof *tp), "the replay ends at trail_train's weights, bit for bit");
	ok(!rc && !memcmp(r.curve, losses, (size_t)o.steps * sizeof *losses), "and has its loss curve");
	trail_train_run_release(&r);
	trail_model_free(m);

	/* the checkpoint interval and the threads change nothing */
	int same = 1;
	for (long every = 1; every <= o.steps; every += 2) {
		double *d2 = scores(d, &o, every, q, nq, first, NULL, NULL, NULL);
		same &= d2 && !memcmp(d2, dq, d->n * sizeof *dq);
		free(d2);
	}
	ok(same, "checkpoints every 1, 3, 5 and 7 steps give the same bits");
	trail_compute_set(2, TRAIL_PREC_FP32, NULL);
	double *d3 = scores(d, &o, 2, q, nq, first, NULL, fin2, &np2);
	ok(d3 && !memcmp(d3, dq, d->n * sizeof *dq) && np2 == np && !memcmp(fin, fin2, np * sizeof *fin),
	   "two threads give the same bits");
	free(d3);

	/* half-runs: every record kept is the run itself; a mask replays the run with the others' targets ignored */
	{
		unsigned char *all = malloc(d->n), *half = malloc(d->n);
		memset(all, 1, d->n);
		for (size_t i = 0; i < d->n; i++)
			half[i] = i % 2 == 0;
		trail_metagrad_opts ma = {.keep = all}, mh = {.keep = half};
		trail_model *ma_m = start(), *mh_m = start(), *mt = start();
		trail_metagrad *ga = NULL, *gh = NULL;
		double *da = calloc(d->n, sizeof *da), *dh = calloc(d->n, sizeof *dh);
		int rca = trail_metagrad_replay(ma_m, d, &o, &ma, &ga, &e) || trail_metagrad_query(ga, q, nq, first, da, &e);
		ok(!rca && !memcmp(da, dq, d->n * sizeof *dq), "every record kept gives the run's derivative, bit for bit");
		int rch = trail_metagrad_replay(mh_m, d, &o, &mh, &gh, &e);
		/* the masked run written out: the rows of the dropped records ignored, the gradient scaled by K_kept / K */
		trail_adamw opt;
		size_t nt, B = (size_t)o.batch, S = (size_t)o.seq, *perm = malloc(d->n * sizeof *perm);
		int32_t *x = malloc(B * S * sizeof *x), *y = malloc(B * S * sizeof *y);
		trail_model_params(mt, &nt);
		trail_adamw_init(&opt, nt);
		uint64_t epoch = UINT64_MAX;
		int rct = 0;
		for (long s = 0; s < o.steps && !rct; s++) {
			long K = 0, Kall = 0;
			for (size_t b = 0; b < B; b++) {
				uint64_t k = (uint64_t)s * B + b;
				if (k / d->n != epoch)
					trail_train_order(perm, d->n, o.seed, epoch = k / d->n);
				size_t row = perm[k % d->n];
				trail_dataset_row(d, row, o.seq, x + b * S, y + b * S);
				for (size_t j = 0; j < S; j++) {
					Kall += y[b * S + j] >= 0;
					if (!half[row])
						y[b * S + j] = -1;
					K += y[b * S + j] >= 0;
				}
			}
			float loss;
			trail_model_zero_grad(mt);
			if (K && !(rct = trail_model_forward(mt, x, y, o.batch, o.seq, &loss, &e) || trail_model_backward(mt, &e)) &&
			    K != Kall) {
				size_t ng;
				float *gr = trail_model_grads(mt, &ng), f = (float)((double)K / (double)Kall);
				for (size_t j = 0; j < ng; j++)
					gr[j] *= f;
			}
			trail_adamw_step(&opt, mt, trail_lr_schedule(o.lr, s, o.warmup, o.steps), o.clip);
		}
		size_t nh;
		const float *ph = trail_model_params(mh_m, &nh), *pt = trail_model_params(mt, &nt);
		ok(!rch && !rct && nh == nt && !memcmp(ph, pt, nh * sizeof *ph), "the half-run ends at the masked training's weights");
		ok(!rch && memcmp(ph, fin, nh * sizeof *ph) != 0, "which are not the run's");
		rch = rch || trail_metagrad_query(gh, q, nq, first, dh, &e);
		int differ = 0, finite = 1;
		for (size_t i = 0; i < d->n; i++)
			differ |= dh[i] != dq[i], finite &= isfinite(dh[i]);
		ok(!rch && differ && finite, "its derivative is finite and not the run's");
		double *dh2 = calloc(d->n, sizeof *dh2);
		trail_metagrad_opts mh2 = {.keep = half, .every = 1};
		trail_metagrad *gh2 = NULL;
		trail_model *mh2_m = start();
		ok(!trail_metagrad_replay(mh2_m, d, &o, &mh2, &gh2, &e) && !trail_metagrad_query(gh2, q, nq, first, dh2, &e) &&
		   !memcmp(dh, dh2, d->n * sizeof *dh), "and does not depend on the checkpoint interval");
		trail_metagrad_free(ga), trail_metagrad_free(gh), trail_metagrad_free(gh2);
		trail_model_free(ma_m), trail_model_free(mh_m), trail_model_free(mt), trail_model_free(mh2_m);
		trail_adamw_release(&opt);
		free(all), free(half), free(da), free(dh), free(dh2), free(perm), free(x), free(y);
	}

	/* a query with no output, or too long, is refused */
	trail_model *m2 = start();
	trail_metagrad *g = NULL;
	trail_metagrad_opts mo = {0};
	rc = trail_metagrad_replay(m2, d, &o, &mo, &g, &e);
	ok(!rc && trail_metagrad_query(g, q, nq, nq, dq, &e) == TRAIL_EDATA, "a query without output tokens: %s", e.msg);
	trail_metagrad_free(g);
	trail_model_free(m2);
	free(dq);
	trail_dataset_free(d);
	json_decref(run);
	printf("1..%d\n", tap_n);
	return tap_failed != 0;
}
