/*
 * Validation by record range: a shard's partial and the merge of partials
 * into the verdicts of one pass. Everything a record's verdict needs but
 * the duplicate checks is computed in its shard (schema, size, license,
 * quality, PII, redaction, and the MinHash signature as the index keeps
 * it); the duplicate checks depend on every earlier record, so the merge
 * runs them, in input order, with the same code and index as one pass:
 * the same verdicts, near duplicates across shards and first-seen copies
 * included. data.h has the format.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/core.h"
#include "data/data_int.h"

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static int policy_digest(const trail_validator *v, char out[TRAIL_DIGEST_STRLEN], trail_error *err)
{
	json_t *j = trail_policy_to_json(trail_validator_policy(v));
	int rc = j ? trail_jcs_digest(j, out, err) : oom(err);
	json_decref(j);
	return rc;
}

int trail_vpartial_header(const trail_validator *v, const json_t *inputs, const json_t *options, uint64_t records,
			  uint64_t lo, uint64_t hi, json_t **out, trail_error *err)
{
	char pd[TRAIL_DIGEST_STRLEN];
	int rc = policy_digest(v, pd, err);
	*out = NULL;
	if (rc)
		return rc;
	*out = json_pack("{s:s, s:i, s:s, s:O, s:O, s:I, s:I, s:I}", "type", "validation-partial", "version", 1, "policy",
			 pd, "inputs", inputs, "options", options, "records", (json_int_t)records, "lo", (json_int_t)lo, "hi",
			 (json_int_t)hi);
	return *out ? TRAIL_OK : oom(err);
}

int trail_vpartial_file_digest(const char *path, char digest[TRAIL_DIGEST_STRLEN], trail_error *err)
{
	FILE *f = fopen(path, "rb");
	crypto_hash_sha256_state h;
	unsigned char buf[1 << 16];
	uint8_t d[32];
	size_t n;
	if (!f)
		return trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", path);
	crypto_hash_sha256_init(&h);
	while ((n = fread(buf, 1, sizeof buf, f)) > 0)
		crypto_hash_sha256_update(&h, buf, n);
	int bad = ferror(f);
	fclose(f);
	if (bad)
		return trail_error_errno(err, TRAIL_EIO, errno, "%s", path);
	crypto_hash_sha256_final(&h, d);
	trail_digest_format(d, digest);
	return TRAIL_OK;
}

json_t *trail_vpartial_malformed(const trail_error *e)
{
	return json_pack("{s:s, s:s, s:s, s:I}", "malformed", e->msg, "code", e->code == TRAIL_ELIMIT ? "limit" : "data",
			 "source", e->source, "n", (json_int_t)e->line);
}

/* ---- the merge ------------------------------------------------------------------------- */

typedef struct part {
	const char *path;
	FILE *f;
	trail_ndjson *rd;
	json_t *head;
	uint64_t lo, hi;
} part;

struct trail_vmerge {
	trail_validator *v;
	part *ps, **by;
	size_t n, at;   /* by[at] is being read */
	uint64_t seen;  /* items of by[at] given */
	json_t *line;   /* the last item line, for *who */
};

static int cmp_part(const void *a, const void *b)
{
	const part *x = *(part *const *)a, *y = *(part *const *)b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int uint_of(const json_t *j, uint64_t *out)
{
	if (!json_is_integer(j) || json_integer_value(j) < 0)
		return -1;
	*out = (uint64_t)json_integer_value(j);
	return 0;
}

static int open_part(part *p, trail_error *err)
{
	json_t *h = NULL;
	uint64_t N;
	if (!(p->f = fopen(p->path, "r")))
		return trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", p->path);
	if (!(p->rd = trail_ndjson_new(p->f, p->path, 0)))
		return oom(err);
	int rc = trail_ndjson_next(p->rd, &h, err);
	if (rc)
		return rc;
	p->head = h;
	const char *type = json_string_value(json_object_get(h, "type"));
	if (!type || strcmp(type, "validation-partial") || uint_of(json_object_get(h, "lo"), &p->lo) ||
	    uint_of(json_object_get(h, "hi"), &p->hi) || uint_of(json_object_get(h, "records"), &N) ||
	    p->hi <= p->lo || p->hi > N || !json_is_array(json_object_get(h, "inputs")))
		return trail_error_at(err, TRAIL_EDATA, p->path, 1, "not a partial of datanet-validate --partial");
	if (json_integer_value(json_object_get(h, "version")) != 1)
		return trail_error_at(err, TRAIL_EDATA, p->path, 1, "a partial of version %lld, not 1 (made by another release)",
				      (long long)json_integer_value(json_object_get(h, "version")));
	return TRAIL_OK;
}

/* The parts against the validator and each other: one policy, one set of inputs; every item exactly once. */
static int check_parts(trail_vmerge *m, trail_error *err)
{
	char pd[TRAIL_DIGEST_STRLEN];
	int rc = policy_digest(m->v, pd, err);
	if (rc)
		return rc;
	json_t *h0 = m->by[0]->head;
	uint64_t N = (uint64_t)json_integer_value(json_object_get(h0, "records")), at = 0;
	for (size_t i = 0; i < m->n; i++) {
		part *p = m->by[i];
		const char *pol = json_string_value(json_object_get(p->head, "policy"));
		if (!pol || strcmp(pol, pd))
			return trail_error_at(err, TRAIL_EDATA, p->path, 1,
					      "a partial of another policy (%s, not %s): give the merge the shards' --policy, "
					      "--preset and --schema", pol ? pol : "?", pd);
		if (!json_equal(json_object_get(p->head, "inputs"), json_object_get(h0, "inputs")) ||
		    (uint64_t)json_integer_value(json_object_get(p->head, "records")) != N)
			return trail_error_at(err, TRAIL_EDATA, p->path, 1, "a partial of other inputs than %s", m->by[0]->path);
		if (!json_equal(json_object_get(p->head, "options"), json_object_get(h0, "options")))
			return trail_error_at(err, TRAIL_EDATA, p->path, 1,
					      "a partial made with other options (--license, --per-file, --contributor) than %s",
					      m->by[0]->path);
		if (p->lo > at)
			return trail_error_set(err, TRAIL_EDATA, "records %llu:%llu are in no partial", (unsigned long long)at,
					       (unsigned long long)p->lo);
		if (p->lo < at)
			return trail_error_at(err, TRAIL_EDATA, p->path, 1, "records %llu:%llu are also in %s%s",
					      (unsigned long long)p->lo, (unsigned long long)(at < p->hi ? at : p->hi),
					      m->by[i - 1]->path,
					      m->by[i - 1]->lo == p->lo && m->by[i - 1]->hi == p->hi ? " (the same part twice)" : "");
		at = p->hi;
	}
	if (at != N)
		return trail_error_set(err, TRAIL_EDATA, "records %llu:%llu are in no partial", (unsigned long long)at,
				       (unsigned long long)N);
	return TRAIL_OK;
}

int trail_vmerge_open(trail_validator *v, const char *const *paths, size_t n, trail_vmerge **out,
		      trail_error *err)
{
	trail_vmerge *m = trail_calloc(1, sizeof *m);
	int rc = TRAIL_OK;
	*out = NULL;
	if (!m || !(m->ps = trail_calloc(n ? n : 1, sizeof *m->ps)) || !(m->by = trail_calloc(n ? n : 1, sizeof *m->by))) {
		trail_vmerge_free(m);
		return oom(err);
	}
	m->v = v;
	m->n = n;
	if (!n)
		rc = trail_error_set(err, TRAIL_EUSAGE, "no partials to merge");
	for (size_t i = 0; i < n && !rc; i++) {
		m->ps[i].path = paths[i];
		m->by[i] = &m->ps[i];
		rc = open_part(&m->ps[i], err);
	}
	if (!rc) {
		qsort(m->by, n, sizeof *m->by, cmp_part);
		rc = check_parts(m, err);
	}
	if (rc) {
		trail_vmerge_free(m);
		return rc;
	}
	*out = m;
	return TRAIL_OK;
}

const json_t *trail_vmerge_inputs(const trail_vmerge *m)
{
	return json_object_get(m->ps[0].head, "inputs");
}

/* A malformed item's line into bad. */
static int malformed(const part *p, long ln, const json_t *l, trail_error *bad, trail_error *err)
{
	const char *msg = json_string_value(json_object_get(l, "malformed"));
	const char *code = json_string_value(json_object_get(l, "code"));
	const char *src = json_string_value(json_object_get(l, "source"));
	json_t *n = json_object_get(l, "n");
	if (!msg || !code || !src || !json_is_integer(n) || (strcmp(code, "data") && strcmp(code, "limit")))
		return trail_error_at(err, TRAIL_EDATA, p->path, ln, "not an item of a partial");
	trail_error_at(bad, strcmp(code, "data") ? TRAIL_ELIMIT : TRAIL_EDATA, src, (long)json_integer_value(n), "%s", msg);
	return TRAIL_OK;
}

int trail_vmerge_next(trail_vmerge *m, json_t **verdict, const char **who, trail_error *bad, trail_error *err)
{
	*verdict = NULL;
	*who = NULL;
	memset(bad, 0, sizeof *bad);
	json_decref(m->line);
	m->line = NULL;
	while (m->at < m->n) {
		part *p = m->by[m->at];
		json_t *l = NULL;
		int rc = trail_ndjson_next(p->rd, &l, err);
		if (rc)
			return rc;
		long ln = trail_ndjson_lineno(p->rd);
		if (!l) {
			if (m->seen != p->hi - p->lo)
				return trail_error_at(err, TRAIL_EDATA, p->path, ln, "%llu items for the range %llu:%llu (cut short?)",
						      (unsigned long long)m->seen, (unsigned long long)p->lo,
						      (unsigned long long)p->hi);
			m->at++;
			m->seen = 0;
			continue;
		}
		if (++m->seen > p->hi - p->lo) {
			json_decref(l);
			return trail_error_at(err, TRAIL_EDATA, p->path, ln, "more items than the range %llu:%llu",
					      (unsigned long long)p->lo, (unsigned long long)p->hi);
		}
		m->line = l;
		if (json_object_get(l, "malformed"))
			return malformed(p, ln, l, bad, err);
		rc = trail_validator_partial_verdict(m->v, l, verdict);
		if (rc == TRAIL_EDATA)
			return trail_error_at(err, rc, p->path, ln, "not an item of a partial");
		if (rc)
			return oom(err);
		*who = json_string_value(json_object_get(l, "who"));
		return TRAIL_OK;
	}
	return TRAIL_OK;
}

void trail_vmerge_free(trail_vmerge *m)
{
	if (!m)
		return;
	for (size_t i = 0; m->ps && i < m->n; i++) {
		trail_ndjson_free(m->ps[i].rd);
		if (m->ps[i].f)
			fclose(m->ps[i].f);
		json_decref(m->ps[i].head);
	}
	json_decref(m->line);
	trail_free(m->ps);
	trail_free(m->by);
	trail_free(m);
}
