/*
 * Attribution by record range: a shard's partial (the scores of its
 * records for every event and every noise-floor query) and the merge of
 * partials into the records one pass makes. Every score is computed by
 * itself (trail_attr_score_range), so the joined scores are the unsharded
 * ones bit for bit and everything made from them (top records, shares,
 * confidence, the scores' digest) is too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attr/attr.h"
#include "core/core.h"
#include "job/job.h"

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static json_t *b64(const float *v, size_t n)
{
	size_t len = trail_base64_len(n * sizeof *v);
	char *t = trail_malloc(len);
	json_t *j = NULL;
	if (t) {
		trail_base64((const uint8_t *)v, n * sizeof *v, t);
		j = json_string(t);
		trail_free(t);
	}
	return j;
}

/* n floats from base64 (little-endian float32, as this machine's). */
static int unb64(const json_t *j, float *v, size_t n)
{
	const char *s = json_string_value(j);
	size_t got = 0;
	if (!s || trail_unbase64(s, strlen(s), (uint8_t *)v, n * sizeof *v, &got) || got != n * sizeof *v)
		return TRAIL_EDATA;
	return TRAIL_OK;
}

static int put_line(trail_buf *out, const json_t *v, trail_error *err)
{
	char *t = NULL;
	size_t n;
	int rc = trail_jcs(v, &t, &n, err);
	if (!rc && (trail_buf_put(out, t, n) || trail_buf_put(out, "\n", 1)))
		rc = oom(err);
	trail_free(t);
	return rc;
}

int trail_attr_partial(const trail_attr_opts *o, const trail_attr_range *r, const json_t *events, trail_buf *out,
		       size_t *bad, trail_error *err)
{
	trail_attr_opts so = *o;
	trail_attr_session *s = NULL;
	float *sc = NULL;
	json_t *line = NULL;
	size_t lo, hi, k;
	int rc;
	*bad = (size_t)-1;
	so.shards = 1;
	if ((rc = trail_attr_session_open(&so, &s, err)))
		return rc;
	const trail_attr_ctx *c = trail_attr_session_ctx(s);
	const trail_attr_info *in = trail_attr_index_info(c->index);
	if ((rc = trail_attr_range_resolve(r, in->nrecords, &lo, &hi, err)))
		goto out;
	size_t n = hi - lo;
	if (!(sc = trail_malloc((size_t)TRAIL_ATTR_FLOOR_QUERIES * n * sizeof *sc))) {
		rc = oom(err);
		goto out;
	}
	if ((rc = trail_attr_noise_scores(c, lo, hi, sc, err)))
		goto out;
	line = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:I, s:o}", "type", "attribution-partial", "index", in->digest,
			 "root", in->id.root, "nrecords", (json_int_t)in->nrecords, "lo", (json_int_t)lo, "hi",
			 (json_int_t)hi, "method", trail_attr_method_name(c->method), "events",
			 (json_int_t)json_array_size(events), "floor", b64(sc, (size_t)TRAIL_ATTR_FLOOR_QUERIES * n));
	if (line && c->normalize && json_object_set_new(line, "normalize", json_string("unit")))
		json_decref(line), line = NULL;
	if (!line || (rc = put_line(out, line, err))) {
		rc = rc ? rc : oom(err);
		goto out;
	}
	json_t *ev;
	json_array_foreach(events, k, ev) {
		json_decref(line);
		line = NULL;
		if ((rc = trail_attr_event_scores(c, ev, lo, hi, sc, err))) {
			*bad = k;
			break;
		}
		if (!(line = json_pack("{s:O, s:o}", "event", ev, "scores", b64(sc, n)))) {
			rc = oom(err);
			break;
		}
		if ((rc = put_line(out, line, err)))
			break;
	}
out:
	json_decref(line);
	trail_free(sc);
	trail_attr_session_free(s);
	return rc;
}

/* ---- the merge ------------------------------------------------------------------------- */

typedef struct part {
	const char *path;
	json_t *lines; /* [header, event lines...] */
	size_t lo, hi;
} part;

static int read_part(part *p, trail_error *err)
{
	int rc = trail_ndjson_slurp(p->path, (size_t)1 << 31, &p->lines, err);
	if (rc)
		return rc;
	json_t *h = json_array_get(p->lines, 0);
	const char *type = json_string_value(json_object_get(h, "type"));
	json_t *lo = json_object_get(h, "lo"), *hi = json_object_get(h, "hi");
	if (!type || strcmp(type, "attribution-partial") || !json_is_integer(lo) || !json_is_integer(hi) ||
	    json_integer_value(lo) < 0 || json_integer_value(hi) <= json_integer_value(lo))
		return trail_error_at(err, TRAIL_EDATA, p->path, 1, "not a partial of attr-score --partial");
	p->lo = (size_t)json_integer_value(lo), p->hi = (size_t)json_integer_value(hi);
	return TRAIL_OK;
}

static int cmp_part(const void *a, const void *b)
{
	const part *x = *(part *const *)a, *y = *(part *const *)b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The parts against the session and each other: one index, method and set of events; ranges exactly once. */
static int check_parts(const trail_attr_ctx *c, part **by, size_t n, trail_error *err)
{
	const trail_attr_info *in = trail_attr_index_info(c->index);
	const char *method = trail_attr_method_name(c->method);
	json_t *h0 = json_array_get(by[0]->lines, 0);
	for (size_t i = 0; i < n; i++) {
		json_t *h = json_array_get(by[i]->lines, 0);
		const char *idx = json_string_value(json_object_get(h, "index"));
		const char *m = json_string_value(json_object_get(h, "method"));
		if (!idx || strcmp(idx, in->digest))
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "a partial of index %s, not %s (%s)",
					      idx ? idx : "?", in->digest, c->index_name);
		if (json_integer_value(json_object_get(h, "nrecords")) != (json_int_t)in->nrecords || by[i]->hi > in->nrecords)
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "the range is not of the index's %llu records",
					      (unsigned long long)in->nrecords);
		if (!m || strcmp(m, method))
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "scored with method %s, not %s (give --method %s)",
					      m ? m : "?", method, m ? m : "?");
		if (!json_object_get(h, "normalize") != !c->normalize)
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "scored %s --normalize unit, merged %s it",
					      c->normalize ? "without" : "with", c->normalize ? "with" : "without");
		if (!json_equal(json_object_get(h, "events"), json_object_get(h0, "events")) ||
		    json_array_size(by[i]->lines) != (size_t)json_integer_value(json_object_get(h, "events")) + 1)
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "another number of events than %s",
					      by[0]->path);
	}
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		if (by[i]->lo > at)
			return trail_error_set(err, TRAIL_EDATA, "records %zu:%zu are in no partial", at, by[i]->lo);
		if (by[i]->lo < at)
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "records %zu:%zu are also in %s%s", by[i]->lo,
					      at < by[i]->hi ? at : by[i]->hi, by[i - 1]->path,
					      by[i - 1]->lo == by[i]->lo && by[i - 1]->hi == by[i]->hi ? " (the same part twice)" : "");
		at = by[i]->hi;
	}
	if (at != in->nrecords)
		return trail_error_set(err, TRAIL_EDATA, "records %zu:%llu are in no partial", at,
				       (unsigned long long)in->nrecords);
	return TRAIL_OK;
}

int trail_attr_merge(const trail_attr_opts *o, const char *const *paths, size_t n, json_t **out, trail_error *err)
{
	trail_attr_opts so = *o;
	trail_attr_session *s = NULL;
	part *ps = trail_calloc(n ? n : 1, sizeof *ps);
	part **by = trail_calloc(n ? n : 1, sizeof *by);
	json_t *recs = json_array();
	float *sc = NULL;
	int rc = TRAIL_OK;
	*out = NULL;
	if (!ps || !by || !recs) {
		rc = oom(err);
		goto out;
	}
	if (!n) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "no partials to merge");
		goto out;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		ps[i].path = paths[i];
		by[i] = &ps[i];
		rc = read_part(&ps[i], err);
	}
	so.shards = 1;
	if (rc || (rc = trail_attr_session_open(&so, &s, err)))
		goto out;
	qsort(by, n, sizeof *by, cmp_part);
	const trail_attr_ctx *c = trail_attr_session_ctx(s);
	size_t N = trail_attr_index_info(c->index)->nrecords, Q = TRAIL_ATTR_FLOOR_QUERIES;
	if ((rc = check_parts(c, by, n, err)))
		goto out;
	if (!(sc = trail_malloc(Q * N * sizeof *sc))) {
		rc = oom(err);
		goto out;
	}
	/* the floor queries' scores: part i's rows [Q, hi - lo] into rows [Q, N] */
	for (size_t i = 0; i < n && !rc; i++) {
		size_t m = by[i]->hi - by[i]->lo;
		float *t = trail_malloc(Q * m * sizeof *t);
		if (!t)
			rc = oom(err);
		else if (unb64(json_object_get(json_array_get(by[i]->lines, 0), "floor"), t, Q * m))
			rc = trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "the floor scores are not %zu floats", Q * m);
		else
			for (size_t q = 0; q < Q; q++)
				memcpy(sc + q * N + by[i]->lo, t + q * m, m * sizeof *t);
		trail_free(t);
	}
	if (rc)
		goto out;
	trail_attr_session_set_floor(s, trail_attr_floor_of(sc, N));
	size_t E = json_array_size(by[0]->lines) - 1;
	for (size_t e = 1; e <= E && !rc; e++) {
		json_t *ev = json_object_get(json_array_get(by[0]->lines, e), "event"), *rec = NULL;
		for (size_t i = 0; i < n && !rc; i++) {
			json_t *l = json_array_get(by[i]->lines, e);
			if (!ev || !json_equal(json_object_get(l, "event"), ev))
				rc = trail_error_at(err, TRAIL_EDATA, by[i]->path, (long)e + 1, "another event than %s's",
						    by[0]->path);
			else if (unb64(json_object_get(l, "scores"), sc + by[i]->lo, by[i]->hi - by[i]->lo))
				rc = trail_error_at(err, TRAIL_EDATA, by[i]->path, (long)e + 1, "the scores are not %zu floats",
						    by[i]->hi - by[i]->lo);
		}
		if (!rc && !(rc = trail_attr_session_from_scores(s, ev, sc, &rec, err)) && json_array_append_new(recs, rec))
			rc = oom(err);
	}
	if (!rc) {
		*out = recs;
		recs = NULL;
	}
out:
	for (size_t i = 0; ps && i < n; i++)
		json_decref(ps[i].lines);
	trail_free(ps), trail_free(by), trail_free(sc);
	trail_attr_session_free(s);
	json_decref(recs);
	return rc;
}
