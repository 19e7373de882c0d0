/*
 * Training: records to token sequences, the seeded data order, the loop
 * with AdamW, checkpoints, the training.json manifest, and mf-train's job.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "attr/attr.h"
#include "data/data.h"
#include "core/core.h"
#include "ledger/ledger.h"
#include "model/model_int.h"
#include "model/model.h"

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

/* The permutation of epoch e: Fisher-Yates driven by (seed, e). */
static void epoch_order(size_t *perm, size_t n, uint64_t seed, uint64_t e)
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

static json_t *hyperparameters(const trail_train_opts *o)
{
	return json_pack("{s:i, s:i, s:I, s:f, s:I, s:f, s:I, s:i, s:s, s:f, s:f, s:f, s:f}", "batch", o->batch, "seq",
			 o->seq, "steps", (json_int_t)o->steps, "lr", o->lr, "warmup", (json_int_t)o->warmup, "clip",
			 o->clip, "seed", (json_int_t)o->seed, "threads", o->threads, "optimizer", "adamw", "beta1", 0.9,
			 "beta2", 0.95, "eps", 1e-8, "weight_decay", 0.0);
}

void trail_train_settings(const trail_dataset *d, const trail_train_opts *o, const json_t *extra,
			  char out[72])
{
	json_t *j = json_pack("{s:s, s:s, s:o, s:O?}", "training_root", d->root, "records_order_digest", d->order,
			      "hyperparameters", hyperparameters(o), "extra", (json_t *)extra);
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
	size_t n = d->n, np, B = (size_t)o->batch, S = (size_t)o->seq;
	size_t *perm = trail_malloc(n * sizeof *perm);
	int32_t *x = trail_malloc(B * S * sizeof *x), *y = trail_malloc(B * S * sizeof *y);
	float *p = trail_model_params(m, &np), *good = trail_malloc(np * sizeof *good);
	int rc = TRAIL_OK;
	if (!perm || !x || !y || !good || np != r->opt.n) {
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
				epoch_order(perm, n, o->seed, epoch = g / n);
			fill(d, perm[g % n], o->seq, x + b * S, y + b * S);
		}
		float loss;
		trail_model_zero_grad(m);
		if ((rc = trail_model_forward(m, x, y, o->batch, o->seq, &loss, err)))
			break;
		if (!isfinite(loss)) {
			rc = trail_error_set(err, TRAIL_EDATA, "the loss is not finite at step %ld (%g)", r->step + 1, loss);
			break;
		}
		if ((rc = trail_model_backward(m, err)))
			break;
		double lr = trail_lr_schedule(o->lr, r->step, o->warmup, o->steps);
		memcpy(good, p, np * sizeof *good);
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
	trail_free(perm), trail_free(x), trail_free(y), trail_free(good);
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
			      d->order, "records", recs, "hyperparameters", hyperparameters(o), "loss_curve", loss,
			      "steps_done", (json_int_t)r->step, "settings", r->settings);
	if (m && extra)
		json_object_update(m, (json_t *)extra);
	return m;
}

/* ---- mf-train --------------------------------------------------------------------- */

int trail_lora_spec_parse(const char *spec, trail_lora_config *lc, trail_error *err)
{
	char *s = trail_strdup(spec), *save = NULL;
	int in_targets = 0, rc = TRAIL_OK;
	*lc = (trail_lora_config){.r = 8, .alpha = 16};
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (char *tok = strtok_r(s, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '='), *end = NULL;
		const char *t = tok;
		if (eq) {
			*eq = 0;
			t = eq + 1;
			in_targets = !strcmp(tok, "targets");
			if (!strcmp(tok, "r")) {
				long v = strtol(t, &end, 10);
				lc->r = *end || v < 1 || v > 65536 ? -1 : (int)v;
			} else if (!strcmp(tok, "alpha")) {
				lc->alpha = strtod(t, &end);
			} else if (!strcmp(tok, "rslora")) {
				lc->rslora = (int)strtol(t, &end, 10);
			} else if (!in_targets) {
				rc = trail_error_set(err, TRAIL_EUSAGE, "--lora: unknown key '%s' (r, alpha, targets, rslora)", tok);
				break;
			}
			if (end && (*end || lc->r < 1 || !(lc->alpha > 0))) {
				rc = trail_error_set(err, TRAIL_EUSAGE, "--lora: bad value '%s' for %s", t, tok);
				break;
			}
		}
		if (in_targets && trail_lora_targets_parse(t, &lc->targets))
			rc = trail_error_set(err, TRAIL_EUSAGE, "--lora: unknown target '%s' (c_attn, c_proj, attn.c_proj, c_fc, mlp.c_proj)", t);
	}
	trail_free(s);
	if (!rc && !lc->targets)
		lc->targets = 15;
	return rc;
}

static int add_record(void *ctx, const json_t *rec)
{
	return json_array_append((json_t *)ctx, (json_t *)rec) ? TRAIL_ENOMEM : TRAIL_OK;
}

static int write_manifest(const char *dir, const json_t *man, trail_error *err)
{
	char *p = trail_path(dir, "training.json"), *buf = NULL;
	size_t len;
	int rc = !p || !man ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : trail_jcs(man, &buf, &len, err);
	if (!rc) {
		buf[len] = '\n';
		rc = trail_write_atomic(p, buf, len + 1, 0644, err);
	}
	trail_free(p);
	trail_free(buf);
	return rc;
}

/* The digest of dir/name (name NULL: of the file dir), or an error naming it. */
static int file_digest(const char *dir, const char *name, char out[72], trail_error *err)
{
	char *p = name ? trail_path(dir, name) : trail_strdup(dir);
	trail_map mp;
	int rc = p ? trail_map_file(p, &mp, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!rc) {
		trail_digest_str(mp.data, mp.len, out);
		trail_unmap(&mp);
	}
	trail_free(p);
	return rc;
}

/* Every file of the output into the store, and a `model` entry naming them. */
static int record_in_store(trail_store *s, const trail_train_job *j, const json_t *man, int adapter,
			   json_t *result, trail_error *err)
{
	static const char *const model_files[] = {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "training.json",
						  "attribution.idx", "attribution.idx.span", NULL};
	static const char *const adapter_files[] = {"adapter_config.json", "adapter_model.safetensors", "training.json",
						    "attribution.idx", "attribution.idx.span", NULL};
	const char *const *files = adapter ? adapter_files : model_files;
	json_t *fo = json_object(), *entry = NULL;
	trail_ledger *l = NULL;
	uint64_t index;
	int rc = TRAIL_OK;
	for (int i = 0; files[i] && !rc; i++) {
		char *p = trail_path(j->out, files[i]), dg[72];
		struct stat sb;
		if (p && stat(p, &sb) == 0 && !(rc = trail_store_put_file(s, p, dg, err)))
			json_object_set_new(fo, files[i], json_string(dg));
		trail_free(p);
	}
	if (rc)
		goto out;
	entry = json_pack("{s:s, s:s, s:O, s:O?, s:O?, s:O?, s:O?}", "type", "model", "kind", adapter ? "adapter" : "model",
			  "files", fo, "training_root", json_object_get(man, "training_root"), "records_order_digest",
			  json_object_get(man, "records_order_digest"), "datanet", json_object_get(man, "datanet"),
			  "settings", json_object_get(man, "settings"));
	if (!entry) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	json_t *objs = json_array();
	const char *k;
	json_t *v;
	json_object_foreach(fo, k, v) json_array_append(objs, v);
	json_object_set_new(entry, "objects", objs);
	if (j->name)
		json_object_set_new(entry, "name", json_string(j->name));
	json_t *base = json_object_get(man, "base");
	if (base)
		json_object_set(entry, "base", json_object_get(base, "weights"));
	if ((rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, err)) || (rc = trail_ledger_append(l, entry, &index, err)) ||
	    (rc = trail_ledger_commit(l, err)))
		goto out;
	json_object_set_new(result, "entry", json_integer((json_int_t)index));
	/* the name points at the weights file: what lora-serve and attr-score resolve */
	const char *wkey = adapter ? "adapter_model.safetensors" : "model.safetensors";
	if (j->name && (rc = trail_store_name_set(s, adapter ? "adapter" : "model", j->name,
						  json_string_value(json_object_get(fo, wkey)), err)))
		goto out;
out:
	trail_ledger_free(l);
	json_decref(entry);
	json_decref(fo);
	return rc;
}

int trail_train_job_run(const trail_train_job *j, json_t **result, trail_error *err)
{
	trail_model *m = NULL;
	trail_tokenizer *tk = NULL;
	trail_dataset *d = NULL;
	trail_store *s = NULL;
	trail_train_run run = {0};
	json_t *recs = json_array(), *extra = json_object(), *man = NULL, *cj = NULL;
	FILE *metrics = NULL;
	void *buf = NULL;
	size_t len;
	char *name = NULL, *ckpt = NULL;
	uint64_t size = 0;
	int rc, trc;
	*result = NULL;
	if (!recs || !extra) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	/* the model first: cheap failures before reading the data */
	if (j->init) {
		trail_gpt2_config gc;
		if (!(rc = trail_read_file(j->init, 1 << 20, &buf, &len, err)) &&
		    !(rc = trail_json_parse(buf, len, j->init, &cj, err)) && (rc = trail_gpt2_config_parse(cj, &gc, err)))
			trail_error_at(err, rc, j->init, 0, "%s", err ? err->msg : "bad config");
		if (!rc)
			rc = trail_model_init(&gc, j->seed, &m, err);
		json_object_set_new(extra, "init", trail_gpt2_config_json(&gc));
	} else if (!(rc = trail_model_load(j->base, &m, err))) {
		char dg[72];
		struct stat sb;
		int isdir = !stat(j->base, &sb) && S_ISDIR(sb.st_mode);
		if (!(rc = file_digest(j->base, isdir ? "model.safetensors" : NULL, dg, err)))
			json_object_set_new(extra, "base", json_pack("{s:s, s:s}", "dir", j->base, "weights", dg));
	}
	if (rc)
		goto out;
	const trail_gpt2_config *gc = trail_model_config(m);
	if (j->merge) {
		if (!(rc = trail_model_load_adapter(m, j->adapter, err)) && !(rc = trail_model_merge_lora(m, err)) &&
		    !(rc = trail_model_save(m, j->out, err)) &&
		    !(rc = trail_tokenizer_load(j->tokenizer ? j->tokenizer : j->base, &tk, err)) &&
		    !(rc = trail_tokenizer_save(tk, j->out, err)))
			*result = json_pack("{s:s, s:s, s:s}", "output", j->out, "base", j->base, "adapter", j->adapter);
		goto out;
	}
	/* the tokenizer: given, else the base model's, else bytes */
	const char *tks = j->tokenizer ? j->tokenizer : "bytes";
	if (!j->tokenizer && j->base && !trail_tokenizer_load(j->base, &tk, NULL))
		tks = NULL;
	if ((tks && (rc = trail_tokenizer_load(tks, &tk, err))))
		goto out;
	if ((size_t)gc->vocab_size < trail_tokenizer_vocab_size(tk)) {
		rc = trail_error_at(err, TRAIL_EDATA, j->init ? j->init : j->base, 0,
				    "vocab_size %d is smaller than the tokenizer's %zu", gc->vocab_size,
				    trail_tokenizer_vocab_size(tk));
		goto out;
	}
	json_object_set_new(extra, "tokenizer", json_string(trail_tokenizer_kind(tk)));
	int seq = j->seq ? j->seq : gc->n_positions;
	if (seq > gc->n_positions) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "--seq %d is over the model's n_positions %d", seq, gc->n_positions);
		goto out;
	}
	/* the records */
	trail_free(buf);
	buf = NULL;
	if (j->data) {
		char dg[72];
		if ((rc = trail_read_file(j->data, (size_t)1 << 34, &buf, &len, err)) ||
		    (rc = trail_source_records(buf, len, j->data, 0, recs, err)))
			goto out;
		trail_digest_str(buf, len, dg);
		json_object_set_new(extra, "data", json_pack("{s:s, s:s}", "file", j->data, "sha256", dg));
	} else {
		trail_ledger *l;
		if ((rc = trail_datanet_spec(j->datanet, &name, &size, err)) || (rc = trail_store_open(j->home, &s, err)))
			goto out;
		if (!size && !(rc = trail_ledger_open(s, 0, &l, err))) {
			size = trail_ledger_size(l);
			trail_ledger_free(l);
		}
		if (rc || (rc = trail_datanet_snapshot(s, name, size, add_record, recs, err)))
			goto out;
		json_object_set_new(extra, "datanet", json_pack("{s:s, s:I}", "name", name, "tree_size", (json_int_t)size));
	}
	if ((rc = trail_dataset_from_records(recs, tk, &d, err)))
		goto out;
	if (j->eval) {
		double el;
		if ((!j->adapter || !(rc = trail_model_load_adapter(m, j->adapter, err))) &&
		    !(rc = trail_eval_loss(m, d, j->batch, seq, &el, err)))
			*result = json_pack("{s:f, s:I}", "loss", round(el * 1e6) / 1e6, "records", (json_int_t)d->n);
		goto out;
	}
	trail_lora_config lc;
	if (j->lora) {
		if ((rc = trail_lora_spec_parse(j->lora, &lc, err)) || (rc = trail_model_add_lora(m, &lc, j->seed, err)))
			goto out;
		json_t *pc = trail_lora_config_json(&lc, NULL);
		json_object_set_new(extra, "lora", json_pack("{s:i, s:f, s:O?, s:b}", "r", lc.r, "alpha", lc.alpha,
							     "target_modules", json_object_get(pc, "target_modules"),
							     "rslora", lc.rslora));
		json_decref(pc);
	}
	json_object_set_new(extra, "model", trail_gpt2_config_json(gc));
	json_object_set_new(extra, "kind", json_string(j->lora ? "adapter" : "model"));
	trail_train_opts o = {
		.batch = j->batch, .seq = seq, .lr = j->lr > 0 ? j->lr : j->lora ? 1e-3 : 3e-4, .clip = 1.0,
		.seed = j->seed, .threads = j->threads, .stop = j->stop, .progress = j->progress,
		.checkpoint_every = j->checkpoint_every,
	};
	long per_epoch = (long)((d->n + (size_t)o.batch - 1) / (size_t)o.batch);
	o.steps = j->steps ? j->steps : per_epoch * j->epochs;
	o.warmup = j->warmup >= 0 ? j->warmup : o.steps / 20;
	if ((rc = trail_mkdirs(j->out, 0755, err)) || !(ckpt = trail_path(j->out, "checkpoint.safetensors"))) {
		rc = rc ? rc : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	o.checkpoint = ckpt;
	char settings[72];
	trail_train_settings(d, &o, extra, settings);
	struct stat sb;
	if (j->resume && stat(ckpt, &sb)) {
		rc = trail_error_at(err, TRAIL_ENOINPUT, ckpt, 0, "no checkpoint to resume from");
		goto out;
	}
	if ((rc = j->resume ? trail_train_checkpoint_load(ckpt, m, &o, settings, &run, err)
			    : trail_train_run_init(&run, m, &o, settings, err)))
		goto out;
	if (j->metrics && !(metrics = fopen(j->metrics, j->resume ? "a" : "w"))) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", j->metrics);
		goto out;
	}
	o.metrics = metrics;
	trc = trail_train(m, d, &o, &run, err);
	if (trc == TRAIL_EAGAIN || trc == TRAIL_EDATA) {
		trail_error_set(err, trc, "%s; %s in %s", err ? err->msg : "stopped",
				trc == TRAIL_EAGAIN ? "continue with --resume from the checkpoint"
						    : "the state of the last good step is the checkpoint",
				ckpt);
		rc = trc;
		goto out;
	}
	if ((rc = trc) || (rc = j->lora ? trail_model_save_adapter(m, j->out, j->base, err) : trail_model_save(m, j->out, err)) ||
	    (!j->lora && (rc = trail_tokenizer_save(tk, j->out, err))))
		goto out;
	man = trail_training_manifest(d, &o, &run, extra);
	if ((rc = write_manifest(j->out, man, err)))
		goto out;
	unlink(ckpt); /* the run is complete: nothing to resume */
	if (!j->no_index) { /* the attribution index over the same records (attr-score(1)) */
		trail_attr_opts ao = {.model = j->lora ? j->base : j->out, .adapter = j->lora ? j->out : NULL,
				      .data = j->data, .datanet = j->datanet, .home = j->home};
		trail_attr_params ap = {.seed = 1, .k_in = 16, .k_out = 16, .damping = 0.1, .seq = seq};
		if ((rc = trail_attr_build_index(&ao, &ap, j->batch, NULL, NULL, 0, err)))
			goto out;
	}
	*result = json_pack("{s:s, s:s, s:I, s:f, s:I, s:s, s:s}", "output", j->out, "kind", j->lora ? "adapter" : "model",
			    "steps", (json_int_t)run.step, "loss", run.step ? round(run.curve[run.step - 1] * 1e6) / 1e6 : 0.0,
			    "records", (json_int_t)d->n, "training_root", d->root, "settings", settings);
	if (*result && !j->no_index) {
		char *ip = trail_path(j->out, "attribution.idx");
		json_object_set_new(*result, "index", ip ? json_string(ip) : json_null());
		trail_free(ip);
	}
	if (s && *result)
		rc = record_in_store(s, j, man, j->lora != NULL, *result, err);
out:
	if (metrics && fclose(metrics) && !rc)
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", j->metrics);
	if (rc) {
		json_decref(*result);
		*result = NULL;
	} else if (!*result) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	trail_train_run_release(&run);
	json_decref(recs), json_decref(extra), json_decref(man), json_decref(cj);
	trail_free(buf), trail_free(name), trail_free(ckpt);
	trail_model_free(m);
	trail_tokenizer_free(tk);
	trail_dataset_free(d);
	trail_store_free(s);
	return rc;
}
