/*
 * attr-score --method exact: the audit. The adapter's training run is
 * replayed from its training.json (data order, schedule, AdamW, clipping,
 * fp32), checked to end at the adapter's weights bit for bit, and each
 * query's loss differentiated through it (model/metagrad.c). The records
 * are the other methods' (attr.c's event_build over the scores) with what
 * was replayed, so that anyone can run it again; --verify does, and names
 * the first byte that differs.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attr/attr.h"
#include "core/core.h"
#include "data/data.h"
#include "job/job.h"
#include "ledger/ledger.h"
#include "model/model.h"
#include "model/model_int.h"

typedef struct exact {
	trail_attr_session *s;
	trail_attr_ctx c;     /* the session's, method exact, no confidence floor */
	trail_model *m;       /* the replay's */
	trail_dataset *d;
	trail_metagrad *g;
	json_t *replay;       /* what a record says was replayed */
	trail_train_opts o;
	trail_metagrad_opts mo;
	char settings[72];    /* the run's settings digest: the half-runs' seed */
	float *start;         /* the run's start (the trainable parameters), for the half-runs */
} exact;

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static void exact_release(exact *x)
{
	trail_metagrad_free(x->g);
	trail_free(x->start);
	trail_model_free(x->m);
	trail_dataset_free(x->d);
	trail_attr_session_free(x->s);
	json_decref(x->replay);
}

/* A number of training.json's hyper-parameters, or a refusal naming it. */
static int hnum(const json_t *h, const char *k, double *v, const char *src, trail_error *err)
{
	json_t *j = json_object_get(h, k);
	if (!json_is_number(j))
		return trail_error_at(err, TRAIL_EDATA, src, 0, "hyperparameters.%s is missing: the run cannot be replayed", k);
	*v = json_number_value(j);
	return TRAIL_OK;
}

/* Members of training.json that trail_training_manifest writes itself; the rest is `extra`. */
static const char *const own_keys[] = {"format", "records_count", "training_root", "records_order_digest", "records",
				       "hyperparameters", "loss_curve", "steps_done", "settings", NULL};

/*
 * What the run was, from training.json: refused unless every field of the
 * replay is there and is what this replay does (a LoRA adapter, fp32,
 * AdamW with trail's constants, the run complete).
 */
static int read_run(const char *dir, json_t **man, char digest[72], trail_error *err)
{
	char *p = trail_path(dir, "training.json");
	void *buf = NULL;
	size_t len;
	int rc;
	*man = NULL;
	if (!p)
		return oom(err);
	if (!(rc = trail_read_file(p, 1 << 30, &buf, &len, err)) && !(rc = trail_json_parse(buf, len, p, man, err)))
		trail_digest_str(buf, len, digest);
	trail_free(buf);
	if (rc) {
		trail_free(p);
		return rc;
	}
	json_t *j = *man, *h = json_object_get(j, "hyperparameters");
	const char *fmt = json_string_value(json_object_get(j, "format")), *kind = json_string_value(json_object_get(j, "kind"));
	const char *prec = json_string_value(json_object_get(h, "precision")), *opt = json_string_value(json_object_get(h, "optimizer"));
	double b1, b2, e, wd;
	if (!fmt || strcmp(fmt, "trail-training/1"))
		rc = trail_error_at(err, TRAIL_EDATA, p, 0, "not a trail training manifest (format trail-training/1)");
	else if (!kind || strcmp(kind, "adapter") || !json_is_object(json_object_get(j, "lora")))
		rc = trail_error_at(err, TRAIL_EUNAVAIL, p, 0, "the exact audit replays LoRA fine-tunes; this is a %s run",
				    kind ? kind : "(kind missing)");
	else if (!prec || strcmp(prec, "fp32"))
		rc = trail_error_at(err, TRAIL_EUNAVAIL, p, 0, "the run was trained at %s precision; the exact audit replays "
				    "fp32 runs (mf-train --precision fp32)", prec ? prec : "(missing)");
	else if (!opt || strcmp(opt, "adamw"))
		rc = trail_error_at(err, TRAIL_EUNAVAIL, p, 0, "optimizer %s: the exact audit replays adamw", opt ? opt : "(missing)");
	else if (!(rc = hnum(h, "beta1", &b1, p, err)) && !(rc = hnum(h, "beta2", &b2, p, err)) &&
		 !(rc = hnum(h, "eps", &e, p, err)) && !(rc = hnum(h, "weight_decay", &wd, p, err))) {
		trail_adamw a;
		if (trail_adamw_init(&a, 0))
			rc = oom(err);
		else if (b1 != a.beta1 || b2 != a.beta2 || e != a.eps || wd != a.weight_decay)
			rc = trail_error_at(err, TRAIL_EUNAVAIL, p, 0, "AdamW with beta1 %g, beta2 %g, eps %g, weight decay %g: the "
					    "replay has %g, %g, %g, %g", b1, b2, e, wd, a.beta1, a.beta2, a.eps, a.weight_decay);
		trail_adamw_release(&a);
	}
	if (!rc && json_integer_value(json_object_get(j, "steps_done")) != json_integer_value(json_object_get(h, "steps")))
		rc = trail_error_at(err, TRAIL_EDATA, p, 0, "the run stopped after %lld of %lld steps",
				    (long long)json_integer_value(json_object_get(j, "steps_done")),
				    (long long)json_integer_value(json_object_get(h, "steps")));
	static const char *const need[] = {"training_root", "records_order_digest", "settings", NULL};
	for (int i = 0; !rc && need[i]; i++)
		if (!json_is_string(json_object_get(j, need[i])))
			rc = trail_error_at(err, TRAIL_EDATA, p, 0, "%s is missing: the run cannot be replayed", need[i]);
	trail_free(p);
	if (rc) {
		json_decref(*man);
		*man = NULL;
	}
	return rc;
}

static int exact_open(const trail_attr_opts *o, const trail_metagrad_opts *mo, exact *x, trail_error *err)
{
	json_t *man = NULL, *extra = NULL;
	char tdg[72], wd[72], settings[72];
	int rc;
	memset(x, 0, sizeof *x);
	if (!o->adapter)
		return trail_error_set(err, TRAIL_EUNAVAIL, "the exact audit replays a LoRA fine-tune: give --adapter DIR "
				       "(full-model runs are not replayed)");
	if (trail_compute_precision() != TRAIL_PREC_FP32)
		return trail_error_set(err, TRAIL_EUSAGE, "the exact audit runs at fp32 precision");
	if ((rc = read_run(o->adapter, &man, tdg, err)))
		return rc;
	char *src = trail_path(o->adapter, "training.json");
	/* the session: model and adapter, tokenizer, index and records, checked together */
	trail_attr_opts so = *o;
	so.method = TRAIL_ATTR_EKFAC, so.shards = 1; /* no noise floor: the confidence is the index's, not this method's */
	if (!src || (rc = trail_attr_session_open(&so, &x->s, err)))
		goto out;
	x->c = *trail_attr_session_ctx(x->s);
	x->c.method = TRAIL_ATTR_EXACT, x->c.confidence = 0;
	/* the training rows */
	json_t *h = json_object_get(man, "hyperparameters"), *lj = json_object_get(man, "long");
	const char *mode = json_string_value(json_object_get(lj, "mode"));
	if ((rc = trail_dataset_from_records(x->c.records, x->c.tk, &x->d, err)))
		goto out;
	if (strcmp(x->d->root, json_string_value(json_object_get(man, "training_root"))) ||
	    strcmp(x->d->order, json_string_value(json_object_get(man, "records_order_digest")))) {
		rc = trail_error_at(err, TRAIL_EDATA, src, 0, "the training records (root %s) are not the run's (root %s), or "
				    "not in its order", x->d->root, json_string_value(json_object_get(man, "training_root")));
		goto out;
	}
	double v[7];
	static const char *const hk[] = {"batch", "seq", "steps", "lr", "warmup", "clip", "seed"};
	for (int i = 0; i < 7 && !rc; i++)
		rc = hnum(h, hk[i], v + i, src, err);
	if (rc)
		goto out;
	x->o = (trail_train_opts){.batch = (int)v[0], .seq = (int)v[1], .steps = (long)v[2], .lr = v[3],
				  .warmup = (long)v[4], .clip = v[5], .seed = (uint64_t)v[6]};
	if (mode && !strcmp(mode, "split") && json_integer_value(json_object_get(lj, "records")) &&
	    (rc = trail_dataset_split(x->d, x->o.seq, err)))
		goto out;
	/* the settings digest of what will be replayed must be the run's */
	if (!(extra = json_deep_copy(man))) {
		rc = oom(err);
		goto out;
	}
	for (int i = 0; own_keys[i]; i++)
		json_object_del(extra, own_keys[i]);
	trail_train_settings(x->d, &x->o, extra, settings);
	if (strcmp(settings, json_string_value(json_object_get(man, "settings")))) {
		rc = trail_error_at(err, TRAIL_EDATA, src, 0, "its fields give settings %s, not the recorded %s: the run "
				    "cannot be replayed as recorded", settings, json_string_value(json_object_get(man, "settings")));
		goto out;
	}
	/* the run's start: the base and LoRA as mf-train made them, from the seed */
	json_t *lo = json_object_get(man, "lora"), *t;
	trail_buf spec = {0};
	char head[128];
	size_t k;
	snprintf(head, sizeof head, "r=%lld,alpha=%.17g,rslora=%d,targets=", (long long)json_integer_value(json_object_get(lo, "r")),
		 json_number_value(json_object_get(lo, "alpha")), json_is_true(json_object_get(lo, "rslora")));
	trail_buf_put(&spec, head, strlen(head));
	json_array_foreach(json_object_get(lo, "target_modules"), k, t) {
		const char *s = json_string_value(t);
		if (k)
			trail_buf_put(&spec, ",", 1);
		if (s)
			trail_buf_put(&spec, s, strlen(s));
	}
	trail_buf_put(&spec, "", 1);
	trail_lora_config lc;
	if (!spec.p)
		rc = oom(err);
	else if ((rc = trail_lora_spec_parse(spec.p, &lc, err)))
		trail_error_at(err, TRAIL_EDATA, src, 0, "lora: %s", err->msg);
	trail_buf_release(&spec);
	if (rc || (rc = trail_model_load(o->model, &x->m, err)) || (rc = trail_model_add_lora(x->m, &lc, x->o.seed, err)))
		goto out;
	size_t n0;
	const float *p0 = trail_model_params(x->m, &n0);
	if (mo->samples > 0 && !(x->start = trail_malloc(n0 * sizeof *x->start))) {
		rc = oom(err);
		goto out;
	}
	if (x->start)
		memcpy(x->start, p0, n0 * sizeof *x->start);
	trail_metagrad_opts mo_run = *mo;
	mo_run.keep = NULL;
	if ((rc = trail_metagrad_replay(x->m, x->d, &x->o, &mo_run, &x->g, err)))
		goto out;
	/* the replay must be the run: its weights the adapter's, its losses the recorded curve */
	size_t n, na;
	const float *rp = trail_model_params(x->m, &n), *ap = trail_model_params(x->c.model, &na);
	if (n != na || memcmp(rp, ap, n * sizeof *rp)) {
		size_t i = 0;
		while (i < n && i < na && !memcmp(rp + i, ap + i, sizeof *rp))
			i++;
		rc = trail_error_at(err, TRAIL_EDATA, o->adapter, 0, "the replay does not end at the adapter's weights "
				    "(first difference at parameter %zu of %zu): not the recorded run", i, n);
		goto out;
	}
	json_t *curve = json_object_get(man, "loss_curve");
	const float *ls = trail_metagrad_losses(x->g);
	for (long s = 0; s < x->o.steps; s++)
		if (round((double)ls[s] * 1e6) / 1e6 != json_number_value(json_array_get(curve, (size_t)s))) {
			rc = trail_error_at(err, TRAIL_EDATA, src, 0, "the replay's loss at step %ld (%.6f) is not the recorded one",
					    s + 1, round((double)ls[s] * 1e6) / 1e6);
			goto out;
		}
	if ((rc = trail_base_digest(o->model, wd, err)))
		goto out;
	const trail_attr_info *in = trail_attr_index_info(x->c.index);
	x->replay = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "model", wd, "adapter", in->id.adapter,
			      "training", tdg, "training_root", x->d->root, "records_order_digest", x->d->order,
			      "settings", settings, "steps", (json_int_t)x->o.steps, "rows",
			      (json_int_t)trail_dataset_rows(x->d));
	if (!x->replay)
		rc = oom(err);
	x->mo = *mo;
	x->mo.keep = NULL;
	memcpy(x->settings, settings, sizeof x->settings);
out:
	json_decref(man), json_decref(extra);
	trail_free(src);
	if (rc)
		exact_release(x);
	return rc;
}

/*
 * Half-run k's records: a seeded permutation of the records (the seed the
 * first 8 bytes of sha256("trail-exact-half\0" settings "\0" k), its
 * first n / 2 kept. Independent of anything but the run's settings.
 */
static void half_mask(const exact *x, long k, size_t *perm, unsigned char *keep)
{
	char buf[128];
	uint8_t h[TRAIL_DIGEST_LEN];
	size_t N = x->d->n;
	int len = snprintf(buf, sizeof buf, "trail-exact-half%c%s%c%ld", 0, x->settings, 0, k);
	uint64_t seed = 0;
	trail_sha256(buf, (size_t)len, h);
	for (int i = 0; i < 8; i++)
		seed = seed << 8 | h[i];
	trail_train_order(perm, N, seed, 0);
	memset(keep, 0, N);
	for (size_t i = 0; i < N / 2; i++)
		keep[perm[i]] = 1;
}

/*
 * dQ/deps for each event of evs [ne] into dq [ne x d->n]: of the run itself
 * (samples 0), or the mean over `samples` half-runs of each one's
 * derivative, every record's (kept or not) at that half. *bad the event at
 * fault.
 */
static int exact_dq(exact *x, const json_t *evs, double *dq, size_t *bad, trail_error *err)
{
	size_t ne = json_array_size(evs), N = x->d->n;
	int32_t **tok = trail_calloc(ne ? ne : 1, sizeof *tok);
	size_t *tn = trail_calloc(ne ? ne : 1, sizeof *tn), *first = trail_calloc(ne ? ne : 1, sizeof *first);
	double *one = trail_malloc(N * sizeof *one);
	size_t *perm = trail_malloc(N * sizeof *perm);
	unsigned char *keep = trail_malloc(N);
	int rc = !tok || !tn || !first || !one || !perm || !keep ? oom(err) : TRAIL_OK;
	for (size_t e = 0; e < ne && !rc; e++)
		if ((rc = trail_attr_event_query(&x->c, json_array_get(evs, e), tok + e, tn + e, first + e, err)))
			*bad = e;
	if (!rc)
		memset(dq, 0, ne * N * sizeof *dq);
	long K = x->mo.samples;
	for (long k = 0; k < (K > 0 ? K : 1) && !rc; k++) {
		trail_metagrad *g = x->g;
		if (K > 0) {
			size_t n;
			trail_metagrad_opts mo = x->mo;
			half_mask(x, k, perm, keep);
			mo.keep = keep;
			float *p = trail_model_params(x->m, &n);
			memcpy(p, x->start, n * sizeof *p);
			if ((rc = trail_metagrad_replay(x->m, x->d, &x->o, &mo, &g, err)))
				break;
		}
		for (size_t e = 0; e < ne && !rc; e++) {
			if ((rc = trail_metagrad_query(g, tok[e], tn[e], first[e], one, err))) {
				*bad = e;
				break;
			}
			for (size_t i = 0; i < N; i++)
				dq[e * N + i] += K > 0 ? one[i] / (double)K : one[i];
		}
		if (g != x->g)
			trail_metagrad_free(g);
	}
	for (size_t e = 0; tok && e < ne; e++)
		trail_free(tok[e]);
	trail_free(tok), trail_free(tn), trail_free(first), trail_free(one), trail_free(perm), trail_free(keep);
	return rc;
}

/* One event's record from its dQ/deps: -dQ/deps_i (so that, as in every method, a record that helped the answer scores above 0). */
static int exact_event(exact *x, const json_t *event, const double *dq, json_t **out, trail_error *err)
{
	size_t N = x->d->n;
	float *sc = trail_malloc(N * sizeof *sc);
	int rc = !sc ? oom(err) : TRAIL_OK;
	*out = NULL;
	if (!rc) {
		for (size_t i = 0; i < N; i++)
			sc[i] = (float)-dq[i];
		rc = trail_attr_event_from_scores(&x->c, event, sc, out, err);
	}
	json_t *p = *out ? json_object_get(*out, "params") : NULL;
	if (!rc && p) {
		static const char *const index_only[] = {"seed", "k_in", "k_out", "damping", NULL};
		for (int i = 0; index_only[i]; i++)
			json_object_del(p, index_only[i]);
		long every = x->mo.every > 0 ? x->mo.every : (long)ceil(sqrt((double)x->o.steps));
		json_t *ex = json_pack("{s:I, s:f, s:s}", "every", (json_int_t)(every < x->o.steps ? every : x->o.steps),
				       "fd_eps", x->mo.fd_eps > 0 ? x->mo.fd_eps : 1e-3,
				       "score", x->mo.samples > 0 ? "-mean_k dQ/deps at half-run k" : "-dQ/deps");
		if (!ex || (x->mo.samples > 0 && json_object_set_new(ex, "samples", json_integer(x->mo.samples))) ||
		    json_object_set_new(p, "precision", json_string("fp32")) || json_object_set_new(p, "exact", ex) ||
		    json_object_set(*out, "replay", x->replay))
			rc = oom(err);
	}
	if (rc) {
		json_decref(*out);
		*out = NULL;
	}
	trail_free(sc);
	return rc;
}

int trail_attr_exact_run(const trail_attr_opts *o, const trail_metagrad_opts *mo, const json_t *events, json_t **out,
			 size_t *bad, trail_error *err)
{
	exact x;
	size_t i;
	json_t *ev;
	int rc;
	*out = NULL;
	*bad = (size_t)-1;
	if ((rc = exact_open(o, mo, &x, err)))
		return rc;
	json_t *recs = json_array();
	size_t ne = json_array_size(events), N = x.d->n;
	double *dq = trail_malloc((ne ? ne : 1) * N * sizeof *dq);
	if (!recs || !dq)
		rc = oom(err);
	else
		rc = exact_dq(&x, events, dq, bad, err);
	json_array_foreach(events, i, ev) {
		json_t *r;
		if (rc || (rc = exact_event(&x, ev, dq + i * N, &r, err))) {
			*bad = rc && *bad == (size_t)-1 ? i : *bad;
			break;
		}
		json_array_append_new(recs, r);
	}
	trail_free(dq);
	exact_release(&x);
	if (rc)
		json_decref(recs);
	else
		*out = recs;
	return rc;
}

int trail_attr_exact_verify(const trail_attr_opts *o, const char *src, const char *bytes, size_t len, trail_error *err)
{
	json_t *first = NULL, *recs = json_array();
	int rc = recs ? TRAIL_OK : oom(err);
	/* the records, each one canonical JSON line */
	for (size_t a = 0, line = 1; !rc && a < len; line++) {
		const char *nl = memchr(bytes + a, '\n', len - a);
		size_t b = nl ? (size_t)(nl - bytes) : len;
		json_t *r = NULL;
		if ((rc = trail_json_parse(bytes + a, b - a, src, &r, err)))
			break;
		json_array_append_new(recs, r);
		a = b + 1;
	}
	first = json_array_get(recs, 0);
	json_t *p = json_object_get(first, "params"), *ex = json_object_get(p, "exact");
	const char *method = json_string_value(json_object_get(first, "method"));
	if (!rc && (!first || !method || strcmp(method, "exact") || !json_is_object(ex)))
		rc = trail_error_at(err, TRAIL_EVERIFY, src, 1, "not a record of the exact audit (method exact, params.exact)");
	if (rc) {
		json_decref(recs);
		return rc;
	}
	trail_attr_opts ro = *o;
	ro.top = (int)json_integer_value(json_object_get(p, "top"));
	ro.min_span = (int)json_integer_value(json_object_get(p, "min_span"));
	ro.max_count = (uint64_t)json_integer_value(json_object_get(p, "max_count"));
	ro.near = json_number_value(json_object_get(p, "near"));
	trail_metagrad_opts mo = {.every = (long)json_integer_value(json_object_get(ex, "every")),
				  .fd_eps = json_number_value(json_object_get(ex, "fd_eps")),
				  .samples = (long)json_integer_value(json_object_get(ex, "samples"))};
	exact x;
	trail_buf again = {0};
	size_t i;
	json_t *r;
	if ((rc = exact_open(&ro, &mo, &x, err))) {
		json_decref(recs);
		return rc;
	}
	x.c.top = ro.top, x.c.min_span = ro.min_span, x.c.max_count = ro.max_count, x.c.near = ro.near;
	/* the records' queries as events, their derivatives recomputed together */
	json_t *evs = json_array();
	size_t N = x.d->n, bad = (size_t)-1;
	double *dq = trail_malloc((json_array_size(recs) ? json_array_size(recs) : 1) * N * sizeof *dq);
	if (!evs || !dq)
		rc = oom(err);
	json_array_foreach(recs, i, r) {
		json_t *q = json_object_get(r, "query");
		if (!rc && json_array_append_new(evs, json_pack("{s:O?, s:O?}", "prompt_ids", json_object_get(q, "prompt"),
								"output_ids", json_object_get(q, "output"))))
			rc = oom(err);
	}
	if (!rc && (rc = exact_dq(&x, evs, dq, &bad, err)) && bad != (size_t)-1 && !err->source[0])
		trail_error_at(err, rc, src, (long)bad + 1, "%s", err->msg);
	json_array_foreach(recs, i, r) {
		json_t *mine = NULL;
		char *t = NULL;
		size_t tn;
		if (rc)
			break;
		if (!(rc = exact_event(&x, json_array_get(evs, i), dq + i * N, &mine, err))) {
			/* the event's identity and usage are the record's: only what attribution computes is compared */
			json_object_set(mine, "event", json_object_get(r, "event"));
			json_object_set(mine, "event_digest", json_object_get(r, "event_digest"));
			json_object_set(mine, "usage", json_object_get(r, "usage") ? json_object_get(r, "usage") : json_null());
			if (!(rc = trail_jcs(mine, &t, &tn, err)) && (trail_buf_put(&again, t, tn) || trail_buf_put(&again, "\n", 1)))
				rc = oom(err);
		}
		trail_free(t);
		json_decref(mine);
		if (rc) {
			if (!err->source[0])
				trail_error_at(err, rc, src, (long)i + 1, "%s", err->msg);
			break;
		}
	}
	json_decref(evs);
	trail_free(dq);
	exact_release(&x);
	json_decref(recs);
	if (!rc && (again.n != len || memcmp(again.p, bytes, len))) {
		size_t k = 0, line = 1;
		while (k < len && k < again.n && bytes[k] == again.p[k])
			line += bytes[k++] == '\n';
		rc = trail_error_at(err, TRAIL_EVERIFY, src, (long)line, "byte %zu differs from the replay's recomputation%s",
				    k + 1, k == len || k == again.n ? " (the lengths differ)" : "");
	}
	trail_buf_release(&again);
	return rc;
}
