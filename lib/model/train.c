/*
 * Training: the seeded data order, the loop with AdamW, checkpoints and
 * the training.json manifest. Building a dataset from records is job/dataset.c.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

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
	for (size_t i = 0; d->mask && i < d->n; i++)
		trail_free(d->mask[i]);
	trail_free(d->mask);
	trail_free(d->id);
	trail_free(d->contributor);
	trail_free(d->row_rec);
	trail_free(d->row_off);
	trail_free(d);
}

size_t trail_dataset_rows(const trail_dataset *d)
{
	return d->row_rec ? d->nrows : d->n;
}

int trail_dataset_target(const trail_dataset *d, size_t r, size_t p)
{
	return p >= (size_t)d->first[r] && (!d->mask || !d->mask[r] || d->mask[r][p]);
}

size_t trail_dataset_long(const trail_dataset *d, int seq, size_t *first)
{
	size_t k = 0;
	if (first)
		*first = d->n;
	for (size_t i = 0; i < d->n; i++)
		if (d->len[i] > (size_t)seq + 1 && k++ == 0 && first)
			*first = i;
	return k;
}

int trail_dataset_split(trail_dataset *d, int seq, trail_error *err)
{
	size_t S = (size_t)seq, n = 0, k = 0;
	if (seq < 1)
		return trail_error_set(err, TRAIL_EUSAGE, "windows of %d tokens", seq);
	/* window o counts when a target in it does: o + t + 1 >= first for some t < S */
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < d->n; i++) {
			if (d->len[i] <= S + 1) {
				if (pass)
					d->row_rec[k] = i, d->row_off[k] = 0, k++;
				else
					n++;
				continue;
			}
			for (size_t o = 0; o + 1 < d->len[i]; o += S)
				if (o + S >= (size_t)d->first[i]) {
					if (pass)
						d->row_rec[k] = i, d->row_off[k] = o, k++;
					else
						n++;
				}
		}
		if (!pass) {
			trail_free(d->row_rec), trail_free(d->row_off);
			d->row_rec = trail_malloc((n ? n : 1) * sizeof *d->row_rec);
			d->row_off = trail_malloc((n ? n : 1) * sizeof *d->row_off);
			if (!d->row_rec || !d->row_off) {
				trail_free(d->row_rec), trail_free(d->row_off);
				d->row_rec = d->row_off = NULL;
				return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			}
		}
	}
	d->nrows = n;
	return TRAIL_OK;
}

/*
 * One row of a batch: x[t] the window's tokens (0 past the record's end),
 * y[t] the next token where it counts in the loss (the completion, for
 * instruct records, end-of-text included), else -1. Without windows, a
 * record longer than seq is cut.
 */
long trail_dataset_row(const trail_dataset *d, size_t row, int seq, int32_t *x, int32_t *y)
{
	size_t r = trail_dataset_row_record(d, row), o = d->row_rec ? d->row_off[row] : 0, n = d->len[r];
	long k = 0;
	for (int t = 0; t < seq; t++) {
		size_t p = o + (size_t)t;
		x[t] = p < n ? d->tok[r][p] : 0;
		y[t] = p + 1 < n && trail_dataset_target(d, r, p + 1) ? d->tok[r][p + 1] : -1;
		k += y[t] >= 0;
	}
	return k;
}

static long fill(const trail_dataset *d, size_t r, int seq, int32_t *x, int32_t *y)
{
	return trail_dataset_row(d, r, seq, x, y);
}

/* The permutation of epoch e: Fisher-Yates driven by (seed, e). */
void trail_train_order(size_t *perm, size_t n, uint64_t seed, uint64_t e)
{
	uint64_t s = seed ^ (0xD1B54A32D192ED03ULL * (e + 1));
	for (size_t i = 0; i < n; i++)
		perm[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(trail_rng_next(&s) % (i + 1)), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
}

/*
 * The hyper-parameters; the thread count only in the manifest (the bits do
 * not depend on it), the precision and, for bf16, oneDNN's instruction set
 * in both (they do).
 */
static json_t *hyperparameters(const trail_train_opts *o, int threads)
{
	int prec = trail_compute_precision();
	json_t *h = json_pack("{s:i, s:i, s:I, s:f, s:I, s:f, s:I, s:s, s:f, s:f, s:f, s:f, s:s}", "batch", o->batch, "seq",
			      o->seq, "steps", (json_int_t)o->steps, "lr", o->lr, "warmup", (json_int_t)o->warmup, "clip",
			      o->clip, "seed", (json_int_t)o->seed, "optimizer", "adamw", "beta1", 0.9, "beta2", 0.95, "eps",
			      1e-8, "weight_decay", 0.0, "precision", trail_precision_name(prec));
	if (h && prec == TRAIL_PREC_BF16)
		json_object_set_new(h, "isa", json_string(trail_compute_isa()));
	if (h && threads)
		json_object_set_new(h, "threads", json_integer(o->threads));
	return h;
}

void trail_train_settings(const trail_dataset *d, const trail_train_opts *o, const json_t *extra,
			  char out[72])
{
	json_t *j = json_pack("{s:s, s:s, s:o, s:O?}", "training_root", d->root, "records_order_digest", d->order,
			      "hyperparameters", hyperparameters(o, 0), "extra", (json_t *)extra);
	char *buf = NULL;
	size_t len = 0;
	if (!j || trail_jcs(j, &buf, &len, NULL))
		snprintf(out, 72, "sha256:?");
	else
		trail_digest_str(buf, len, out);
	trail_free(buf);
	json_decref(j);
}

int trail_train_run_init(trail_train_run *r, trail_model *m, const trail_train_opts *o,
			 const char settings[72], trail_error *err)
{
	size_t n;
	memset(r, 0, sizeof *r);
	trail_model_params(m, &n);
	r->curve = trail_calloc((size_t)(o->steps > 0 ? o->steps : 1), sizeof *r->curve);
	if (!r->curve || trail_adamw_init(&r->opt, n)) {
		trail_train_run_release(r);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	r->opt.zero_grads = 1; /* every step starts with trail_model_zero_grad */
	snprintf(r->settings, sizeof r->settings, "%s", settings);
	return TRAIL_OK;
}

void trail_train_run_release(trail_train_run *r)
{
	trail_adamw_release(&r->opt);
	trail_free(r->curve);
	r->curve = NULL;
}

int trail_train_checkpoint_save(const char *path, trail_model *m, const trail_train_run *r,
				trail_error *err)
{
	size_t n;
	float *p = trail_model_params(m, &n);
	char step[32], t[32];
	snprintf(step, sizeof step, "%ld", r->step);
	snprintf(t, sizeof t, "%ld", r->opt.t);
	trail_st_tensor ts[4] = {
		{.name = "params", .ndim = 1, .shape = {(int64_t)n}, .data = p},
		{.name = "adam_m", .ndim = 1, .shape = {(int64_t)n}, .data = r->opt.m},
		{.name = "adam_v", .ndim = 1, .shape = {(int64_t)n}, .data = r->opt.v},
		{.name = "loss_curve", .ndim = 1, .shape = {r->step}, .data = r->curve},
	};
	json_t *meta = json_pack("{s:s, s:s, s:s, s:s}", "format", "trail-checkpoint/1", "step", step, "adam_t", t,
				 "settings", r->settings);
	int rc = meta ? trail_st_write(path, ts, 4, meta, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_decref(meta);
	return rc;
}

int trail_train_checkpoint_load(const char *path, trail_model *m, const trail_train_opts *o,
				const char settings[72], trail_train_run *r, trail_error *err)
{
	trail_st *st = NULL;
	json_t *meta = NULL;
	size_t n;
	float *p = trail_model_params(m, &n);
	int rc;
	if ((rc = trail_train_run_init(r, m, o, settings, err)) || (rc = trail_st_open(path, &st, err)))
		goto out;
	meta = (json_t *)trail_st_metadata(st);
	const char *fmt = json_string_value(json_object_get(meta, "format"));
	const char *set = json_string_value(json_object_get(meta, "settings"));
	const char *step = json_string_value(json_object_get(meta, "step"));
	const char *t = json_string_value(json_object_get(meta, "adam_t"));
	char *e1 = NULL, *e2 = NULL;
	long sv = step ? strtol(step, &e1, 10) : -1, tv = t ? strtol(t, &e2, 10) : -1;
	if (!fmt || strcmp(fmt, "trail-checkpoint/1") || !set || sv < 0 || tv < 0 || *e1 || *e2) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "not a trail checkpoint (format trail-checkpoint/1)");
		goto out;
	}
	if (strcmp(set, settings)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0,
				    "the checkpoint is of a run with other data, model or hyper-parameters (settings %.19s..., "
				    "these give %.19s...)", set, settings);
		goto out;
	}
	if (sv > o->steps) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "the checkpoint is at step %ld, beyond %ld", sv, o->steps);
		goto out;
	}
	int64_t sn[1] = {(int64_t)n}, sc[1] = {sv};
	if ((rc = trail_st_read_f32(st, "params", sn, 1, p, err)) ||
	    (rc = trail_st_read_f32(st, "adam_m", sn, 1, r->opt.m, err)) ||
	    (rc = trail_st_read_f32(st, "adam_v", sn, 1, r->opt.v, err)) ||
	    (rc = trail_st_read_f32(st, "loss_curve", sc, 1, r->curve, err)))
		goto out;
	r->step = sv;
	r->opt.t = tv;
out:
	if (rc)
		trail_train_run_release(r);
	trail_st_free(st);
	return rc;
}

int trail_train(trail_model *m, const trail_dataset *d, const trail_train_opts *o, trail_train_run *r,
		trail_error *err)
{
	size_t n = trail_dataset_rows(d), np, B = (size_t)o->batch, S = (size_t)o->seq;
	size_t *perm = trail_malloc(n * sizeof *perm);
	int32_t *x = trail_malloc(B * S * sizeof *x), *y = trail_malloc(B * S * sizeof *y);
	float *p = trail_model_params(m, &np), *good = trail_malloc(np * sizeof *good);
	size_t *rows = trail_malloc(B * sizeof *rows);
	long *counts = trail_malloc(B * sizeof *counts);
	const trail_train_hook *hk = o->hook;
	int rc = TRAIL_OK;
	if (!perm || !x || !y || !good || !rows || !counts || np != r->opt.n) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	uint64_t epoch = UINT64_MAX;
	trail_progress *pg = o->progress ? trail_progress_new(o->progress, 1, "train", (unsigned long long)o->steps) : NULL;
	trail_progress_set(pg, (unsigned long long)r->step);
	struct timespec t0, t1;
	while (r->step < o->steps) {
		if (o->stop && *o->stop) {
			rc = trail_error_set(err, TRAIL_EAGAIN, "interrupted after %ld of %ld steps", r->step, o->steps);
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (size_t b = 0; b < B; b++) {
			uint64_t g = (uint64_t)r->step * B + b;
			if (g / n != epoch)
				trail_train_order(perm, n, o->seed, epoch = g / n);
			rows[b] = perm[g % n];
			counts[b] = fill(d, rows[b], o->seq, x + b * S, y + b * S);
		}
		float loss;
		int seen = 0;
		if (hk && (seen = hk->before(hk->ctx, r->step, rows, counts, o->batch, err)) < 0) {
			rc = -seen;
			break;
		}
		if (hk)
			trail_model_keep_linear_io(m, seen);
		trail_model_zero_grad(m);
		if ((rc = trail_model_forward(m, x, y, o->batch, o->seq, &loss, err)))
			break;
		if (!isfinite(loss)) {
			rc = trail_error_set(err, TRAIL_EDATA, "the loss is not finite at step %ld (%g)", r->step + 1, loss);
			break;
		}
		if ((rc = trail_model_backward(m, err)))
			break;
		if (seen && (rc = hk->after(hk->ctx, m, r->step, rows, counts, o->batch, o->seq, err)))
			break;
		double lr = trail_lr_schedule(o->lr, r->step, o->warmup, o->steps);
		trail_k_copy(good, p, np);
		double norm = trail_adamw_step(&r->opt, m, lr, o->clip);
		if (!isfinite(norm) || !isfinite(trail_grad_norm(p, np))) {
			memcpy(p, good, np * sizeof *good);
			rc = trail_error_set(err, TRAIL_EDATA, "the gradient or the weights are not finite at step %ld",
					     r->step + 1);
			break;
		}
		r->curve[r->step++] = loss;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
		if (o->metrics)
			fprintf(o->metrics, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f}\n",
				r->step, loss, lr, norm, (double)(B * S) / (dt > 0 ? dt : 1e-9));
		trail_progress_set(pg, (unsigned long long)r->step);
		if (o->checkpoint && o->checkpoint_every > 0 && r->step % o->checkpoint_every == 0 &&
		    r->step < o->steps && (rc = trail_train_checkpoint_save(o->checkpoint, m, r, err)))
			break;
	}
	trail_progress_free(pg);
	/*
	 * Stopped early: the state of the last good step goes to the
	 * checkpoint, unless the weights themselves are not finite (a damaged
	 * start): then an earlier checkpoint stays as it is.
	 */
	if ((rc == TRAIL_EAGAIN || rc == TRAIL_EDATA) && o->checkpoint && isfinite(trail_grad_norm(p, np))) {
		trail_error e2 = {0};
		if (trail_train_checkpoint_save(o->checkpoint, m, r, &e2))
			rc = trail_error_set(err, e2.code, "%s; and the checkpoint was not saved: %s", err ? err->msg : "",
					     e2.msg);
	}
out:
	if (hk)
		trail_model_keep_linear_io(m, 0);
	trail_free(perm), trail_free(x), trail_free(y), trail_free(good), trail_free(rows), trail_free(counts);
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
	size_t rows = trail_dataset_rows(d);
	for (size_t i = 0; i < rows && !rc; i += (size_t)batch) {
		int nb = (int)(rows - i < (size_t)batch ? rows - i : (size_t)batch), k = 0;
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
	trail_compute_set(n, trail_compute_precision(), NULL);
}

json_t *trail_training_manifest(const trail_dataset *d, const trail_train_opts *o,
				const trail_train_run *r, const json_t *extra)
{
	json_t *recs = json_array(), *loss = json_array();
	for (size_t i = 0; recs && i < d->n; i++)
		json_array_append_new(recs, json_pack("{s:s, s:s?}", "record", d->id[i], "contributor", d->contributor[i]));
	/* six decimals: short, and exactly the same text for the same floats */
	for (long i = 0; loss && i < r->step; i++)
		json_array_append_new(loss, json_real(round((double)r->curve[i] * 1e6) / 1e6));
	json_t *m = json_pack("{s:s, s:I, s:s, s:s, s:o, s:o, s:o, s:I, s:s}", "format", "trail-training/1",
			      "records_count", (json_int_t)d->n, "training_root", d->root, "records_order_digest",
			      d->order, "records", recs, "hyperparameters", hyperparameters(o, 1), "loss_curve", loss,
			      "steps_done", (json_int_t)r->step, "settings", r->settings);
	if (m && extra)
		json_object_update(m, (json_t *)extra);
	return m;
}
