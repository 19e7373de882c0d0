#include <math.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "bundle.h"
#include "cli.h"
#include "json.h"
#include "merkle.h"
#include "train.h"
#include "util.h"

static const char *str(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

int trail_dataset_from_records(const json_t *records, const trail_tokenizer *tk,
			       trail_dataset **out, trail_error *err)
{
	size_t n = json_array_size(records);
	trail_dataset *d = trail_calloc(1, sizeof *d);
	trail_hash *leaves = trail_malloc((n ? n : 1) * sizeof *leaves);
	trail_buf order = {0};
	int rc = TRAIL_OK;
	*out = NULL;
	if (!d || !leaves || !(d->tok = trail_calloc(n ? n : 1, sizeof *d->tok)) ||
	    !(d->len = trail_calloc(n ? n : 1, sizeof *d->len)) || !(d->first = trail_calloc(n ? n : 1, sizeof *d->first)) ||
	    !(d->id = trail_calloc(n ? n : 1, sizeof *d->id)) ||
	    !(d->contributor = trail_calloc(n ? n : 1, sizeof *d->contributor))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	d->n = n;
	if (!n) {
		rc = trail_error_set(err, TRAIL_EDATA, "no training records");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *r = json_array_get(records, i);
		const char *text = str(r, "text"), *pr = str(r, "prompt"), *co = str(r, "completion");
		if (!text && !(pr && co)) {
			rc = trail_error_at(err, TRAIL_EDATA, "records", (long)i + 1,
					    "a training record has \"text\" or \"prompt\" and \"completion\"");
			goto out;
		}
		/* the record id: given by a snapshot, else the digest of the record itself */
		if (str(r, "record") && !trail_digest_parse(str(r, "record"), (uint8_t[32]){0}))
			snprintf(d->id[i], 72, "%s", str(r, "record"));
		else if ((rc = trail_record_id(r, d->id[i], err)))
			goto out;
		if (str(r, "contributor") && !(d->contributor[i] = trail_strdup(str(r, "contributor")))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		int32_t *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		if ((rc = trail_tokenizer_encode(tk, text ? text : pr, strlen(text ? text : pr), &a, &na, err)) ||
		    (!text && (rc = trail_tokenizer_encode(tk, co, strlen(co), &b, &nb, err)))) {
			trail_free(a);
			goto out;
		}
		d->tok[i] = trail_malloc((na + nb + 1) * sizeof **d->tok);
		if (!d->tok[i]) {
			trail_free(a), trail_free(b);
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		memcpy(d->tok[i], a, na * sizeof *a);
		if (nb)
			memcpy(d->tok[i] + na, b, nb * sizeof *b);
		d->tok[i][na + nb] = trail_tokenizer_eot(tk);
		d->len[i] = na + nb + 1;
		d->first[i] = text ? 0 : (int32_t)na;
		trail_free(a), trail_free(b);
		uint8_t dg[32];
		trail_digest_parse(d->id[i], dg);
		trail_merkle_leaf(dg, 32, leaves[i]);
		if (trail_buf_put(&order, d->id[i], 71) || trail_buf_put(&order, "\n", 1)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
	}
	trail_hash root;
	trail_merkle_root_of((const trail_hash *)leaves, n, root);
	trail_base64(root, 32, d->root);
	trail_digest_str(order.p, order.n, d->order);
	*out = d;
	d = NULL;
out:
	trail_buf_release(&order);
	trail_free(leaves);
	trail_dataset_free(d);
	return rc;
}

void trail_dataset_free(trail_dataset *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++) {
		if (d->tok)
			trail_free(d->tok[i]);
		if (d->contributor)
			trail_free(d->contributor[i]);
	}
	trail_free(d->tok);
	trail_free(d->len);
	trail_free(d->first);
	trail_free(d->id);
	trail_free(d->contributor);
	trail_free(d);
}

/*
 * One row of a batch: x[t] the record's tokens (0 past its end), y[t] the
 * next token where it counts in the loss (the completion, for instruct
 * records, end-of-text included), else -1. Records longer than seq are cut.
 */
static void fill(const trail_dataset *d, size_t r, int seq, int32_t *x, int32_t *y)
{
	size_t n = d->len[r];
	for (int t = 0; t < seq; t++) {
		x[t] = (size_t)t < n ? d->tok[r][t] : 0;
		y[t] = (size_t)t + 1 < n && t + 1 >= d->first[r] ? d->tok[r][t + 1] : -1;
	}
}

static uint64_t mix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

int trail_train(trail_model *m, const trail_dataset *d, const trail_train_opts *o, float **losses,
		long *nsteps, trail_error *err)
{
	size_t n = d->n, np;
	size_t *perm = trail_malloc(n * sizeof *perm);
	int32_t *x = trail_malloc((size_t)o->batch * (size_t)o->seq * sizeof *x);
	int32_t *y = trail_malloc((size_t)o->batch * (size_t)o->seq * sizeof *y);
	float *curve = trail_calloc((size_t)(o->steps > 0 ? o->steps : 1), sizeof *curve);
	float *p = trail_model_params(m, &np), *good = trail_malloc(np * sizeof *good);
	trail_adamw opt;
	int rc = TRAIL_OK;
	long step = 0;
	if (!perm || !x || !y || !curve || !good || trail_adamw_init(&opt, np)) {
		trail_free(perm), trail_free(x), trail_free(y), trail_free(curve), trail_free(good);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	uint64_t s = o->seed;
	size_t pos = n; /* start a new epoch at once */
	trail_progress *pg = o->progress ? trail_progress_new(o->progress, 1, "train", (unsigned long long)o->steps) : NULL;
	struct timespec t0, t1;
	for (; step < o->steps; step++) {
		if (o->stop && *o->stop)
			break;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		long tokens = 0;
		for (int b = 0; b < o->batch; b++) {
			if (pos == n) { /* a new seeded permutation each epoch */
				for (size_t i = 0; i < n; i++)
					perm[i] = i;
				for (size_t i = n - 1; i > 0; i--) {
					size_t j = (size_t)(mix(&s) % (i + 1)), t = perm[i];
					perm[i] = perm[j];
					perm[j] = t;
				}
				pos = 0;
			}
			fill(d, perm[pos++], o->seq, x + (size_t)b * o->seq, y + (size_t)b * o->seq);
		}
		for (int i = 0; i < o->batch * o->seq; i++)
			tokens += y[i] >= 0;
		float loss;
		memcpy(good, p, np * sizeof *good);
		trail_model_zero_grad(m);
		if ((rc = trail_model_forward(m, x, y, o->batch, o->seq, &loss, err)) ||
		    (rc = trail_model_backward(m, err)))
			break;
		if (!isfinite(loss)) {
			rc = trail_error_set(err, TRAIL_EDATA, "the loss is not finite at step %ld (%g): stopped; "
					     "the weights are those of the last good step", step, loss);
			break;
		}
		double lr = trail_lr_schedule(o->lr, step, o->warmup, o->steps);
		double norm = trail_adamw_step(&opt, m, lr, o->clip);
		if (!isfinite(norm)) {
			memcpy(p, good, np * sizeof *good);
			rc = trail_error_set(err, TRAIL_EDATA, "the gradient is not finite at step %ld: stopped; "
					     "the weights are those of the last good step", step);
			break;
		}
		curve[step] = loss;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
		if (o->metrics)
			fprintf(o->metrics, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f}\n",
				step + 1, loss, lr, norm, (double)o->batch * o->seq / (dt > 0 ? dt : 1e-9));
		trail_progress_set(pg, (unsigned long long)step + 1);
	}
	trail_progress_free(pg);
	trail_adamw_release(&opt);
	trail_free(perm), trail_free(x), trail_free(y), trail_free(good);
	if (losses)
		*losses = curve;
	else
		trail_free(curve);
	if (nsteps)
		*nsteps = step;
	return rc;
}

int trail_eval_loss(trail_model *m, const trail_dataset *d, int batch, int seq, double *loss,
		    trail_error *err)
{
	int32_t *x = trail_malloc((size_t)batch * seq * sizeof *x), *y = trail_malloc((size_t)batch * seq * sizeof *y);
	double total = 0;
	long count = 0;
	int rc = TRAIL_OK;
	if (!x || !y) {
		trail_free(x), trail_free(y);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < d->n && !rc; i += (size_t)batch) {
		int nb = (int)(d->n - i < (size_t)batch ? d->n - i : (size_t)batch), k = 0;
		for (int b = 0; b < nb; b++)
			fill(d, i + (size_t)b, seq, x + (size_t)b * seq, y + (size_t)b * seq);
		for (int j = 0; j < nb * seq; j++)
			k += y[j] >= 0;
		float l;
		if (!(rc = trail_model_forward(m, x, y, nb, seq, &l, err))) {
			total += (double)l * k;
			count += k;
		}
	}
	trail_free(x), trail_free(y);
	*loss = count ? total / (double)count : 0;
	return rc;
}

void trail_blas_threads(int n)
{
	openblas_set_num_threads(n);
}

json_t *trail_training_manifest(const trail_dataset *d, const trail_train_opts *o,
				const float *curve, long nsteps, const json_t *extra)
{
	json_t *recs = json_array(), *loss = json_array();
	for (size_t i = 0; recs && i < d->n; i++)
		json_array_append_new(recs, json_pack("{s:s, s:s?}", "record", d->id[i], "contributor", d->contributor[i]));
	for (long i = 0; loss && i < nsteps; i++)
		json_array_append_new(loss, json_real(round((double)curve[i] * 1e6) / 1e6));
	json_t *m = json_pack("{s:s, s:I, s:s, s:s, s:o, s:{s:i, s:i, s:I, s:f, s:I, s:f, s:I}, s:o}", "format",
			      "trail-training/1", "records_count", (json_int_t)d->n, "training_root", d->root,
			      "records_order_digest", d->order, "records", recs, "hyperparameters", "batch", o->batch,
			      "seq", o->seq, "steps", (json_int_t)o->steps, "lr", o->lr, "warmup", (json_int_t)o->warmup,
			      "clip", o->clip, "seed", (json_int_t)o->seed, "loss_curve", loss);
	if (m && extra)
		json_object_update(m, (json_t *)extra);
	if (m && nsteps < o->steps)
		json_object_set_new(m, "interrupted_at_step", json_integer(nsteps));
	return m;
}
