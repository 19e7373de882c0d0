/*
 * datanet-validate's job: inputs read the way datanet-add reads them
 * (bundles by file or digest, NDJSON streamed, plain text split into
 * records), each record checked by the validator (or, to approve, loaded
 * as an approved record), verdicts written as NDJSON or GitHub
 * annotations; --partial ranges and --merge of their partials.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "data/data.h"
#include "job/job.h"

struct trail_vjob {
	trail_vjob_cfg c;
	trail_validator *v;
	int malformed;
	const char *const *skip; /* during trail_vjob_load_approved: bundles being validated: their own approved records do not count */
	int nskip;
	const char *who;  /* the contributor of the records being checked, or NULL */
	const char *bundle_who; /* a bundle's signer */
	int sharded;          /* --partial: partial lines for the items in [lo, hi) of all */
	uint64_t ord, lo, hi; /* items seen so far (records, malformed lines) */
};

/* The next item is outside the shard's range (always so while counting, with lo == hi). */
static int skipped(trail_vjob *r)
{
	uint64_t k = r->ord++;
	return r->sharded && (k < r->lo || k >= r->hi);
}

/* The contributor a record's flag names: its bundle's signer, its own "contributor", else --contributor. */
static const char *who_of(const trail_vjob *r, const json_t *rec)
{
	const char *w = json_string_value(json_object_get(rec, "contributor"));
	return r->bundle_who ? r->bundle_who : w && *w ? w : r->c.default_who;
}

/* A partial's line, with the contributor the record names (or --contributor's). */
static int emit_partial(trail_vjob *r, json_t *l)
{
	char *s = NULL;
	/* not canonical: the reasons keep their members' order, and numbers all their digits */
	if ((r->who && json_object_set_new(l, "who", json_string(r->who))) || !(s = json_dumps(l, JSON_COMPACT)))
		return TRAIL_ENOMEM;
	fprintf(r->c.out, "%s\n", s);
	free(s);
	return TRAIL_OK;
}

static int emit(trail_vjob *r, json_t *vd, const char *name)
{
	json_t *id = json_object_get(vd, "record");
	if (r->sharded)
		return emit_partial(r, vd);
	if (r->c.rejected && id && json_is_false(json_object_get(vd, "ok")) &&
	    json_array_append_new(r->c.rejected, json_pack("{s:O, s:O}", "n", json_object_get(vd, "n"),
							 "record", id)))
		return TRAIL_ENOMEM;
	if (r->c.flags && !json_object_get(vd, "summary")) {
		int oom;
		json_t *f = trail_verdict_flag(vd, r->who, &oom);
		char *l = NULL;
		if (oom || (f && trail_jcs(f, &l, NULL, NULL))) {
			json_decref(f);
			return TRAIL_ENOMEM;
		}
		if (l)
			fprintf(r->c.flags, "%s\n", l);
		trail_free(l);
		json_decref(f);
	}
	char *s = r->c.github ? trail_verdict_github(vd, name)
			    : json_dumps(vd, JSON_COMPACT | JSON_REAL_PRECISION(10));
	if (!s)
		return TRAIL_ENOMEM;
	fputs(s, r->c.out);
	if (!r->c.github)
		fputc('\n', r->c.out);
	if (r->c.report && !r->c.github)
		fprintf(r->c.report, "%s\n", s);
	r->c.github ? trail_free(s) : free(s);
	return TRAIL_OK;
}

/*
 * Print a verdict (consumed) and write the accepted record (consumed); q is
 * the check's result: malformed input is reported and counted, and stops
 * only the loading of approved records.
 */
static int deliver(trail_vjob *r, int q, json_t *vd, json_t *acc, trail_error *e, const char *name,
		   int approve, trail_error *err)
{
	int rc = TRAIL_OK;
	if (vd) {
		rc = emit(r, vd, name);
		json_decref(vd);
	}
	if (acc) {
		char *s = json_dumps(acc, JSON_COMPACT);
		if (s)
			fprintf(r->c.acc, "%s\n", s);
		free(s);
		json_decref(acc);
	}
	if ((q == TRAIL_EDATA || q == TRAIL_ELIMIT) && r->sharded) {
		json_t *l = trail_vpartial_malformed(e);
		r->who = NULL;
		rc = l ? emit_partial(r, l) : TRAIL_ENOMEM;
		json_decref(l);
		if (rc)
			rc = trail_error_set(err, rc, "out of memory");
	} else if (q == TRAIL_EDATA || q == TRAIL_ELIMIT) {
		r->malformed = 1;
		trail_validator_note_malformed(r->v);
		if (r->c.on_malformed)
			r->c.on_malformed(r->c.ctx, e);
		char *an = r->c.github ? trail_github_annotation(name, e->line, "malformed", e->msg) : NULL;
		if (an)
			fputs(an, r->c.out);
		trail_free(an);
		if (approve)
			rc = trail_error_at(err, q, e->source, e->line, "%s", e->msg);
	} else if (q) {
		*err = *e;
		rc = q;
	}
	return rc;
}

/* Validate (or, with approve, load) one NDJSON stream. */
static int stream(trail_vjob *r, FILE *f, const char *name, int std, int approve, trail_error *err)
{
	struct stat st;
	trail_ndjson *rd = trail_ndjson_new(f, name, 0);
	trail_progress *pg = trail_progress_new(r->c.progress_to, approve ? 0 : r->c.progress, name,
						!fstat(fileno(f), &st) && S_ISREG(st.st_mode) ? (unsigned long long)st.st_size : 0);
	int rc = rd ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!rc && !approve)
		rc = trail_validator_set_source(r->v, name);
	while (!rc) {
		json_t *j = NULL, *vd = NULL, *acc = NULL;
		trail_error e = {0};
		int q = trail_ndjson_next(rd, &j, &e);
		if (q == TRAIL_OK && !j)
			break;
		if (!approve && (q == TRAIL_OK || q == TRAIL_EDATA || q == TRAIL_ELIMIT) && skipped(r)) {
			json_decref(j);
			if (!std)
				trail_progress_set(pg, (unsigned long long)ftell(f));
			continue;
		}
		r->who = q == TRAIL_OK ? who_of(r, j) : r->bundle_who ? r->bundle_who : r->c.default_who;
		if (q == TRAIL_OK && approve)
			q = trail_validator_approve(r->v, j, &e);
		else if (q == TRAIL_OK)
			q = trail_validator_check(r->v, j, trail_ndjson_lineno(rd), &vd, r->c.acc ? &acc : NULL, &e);
		else if (q == TRAIL_EDATA && !approve) {
			size_t len;
			const char *line = trail_ndjson_line(rd, &len);
			q = trail_validator_check_line(r->v, line, len, name, trail_ndjson_lineno(rd), &vd, NULL, &e);
		}
		rc = deliver(r, q, vd, acc, &e, name, approve, err);
		json_decref(j);
		r->who = NULL;
		if (!std)
			trail_progress_set(pg, (unsigned long long)ftell(f));
	}
	trail_progress_free(pg);
	trail_ndjson_free(rd);
	return rc;
}

/* A bundle (file or store digest): its records, under its own license. */
static int bundle(trail_vjob *r, const char *ref, char digest[72], trail_error *err)
{
	trail_bundle *b;
	char *text = NULL;
	size_t len = 0;
	int rc = trail_datanet_load_bundle(r->c.store, ref, &b, digest, err);
	if (rc)
		return rc;
	FILE *m = open_memstream(&text, &len);
	size_t i;
	json_t *rec;
	json_array_foreach(b->records, i, rec) {
		char *line;
		if (m && !trail_jcs(rec, &line, NULL, NULL)) {
			fprintf(m, "%s\n", line);
			trail_free(line);
		}
	}
	const char *lic = json_string_value(json_object_get(b->manifest, "license"));
	r->bundle_who = json_string_value(json_object_get(b->manifest, "contributor"));
	if (lic && *lic)
		trail_validator_set_license(r->v, lic);
	if (!m || fclose(m))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	FILE *f = rc ? NULL : fmemopen(text, len ? len : 1, "rb");
	if (!rc)
		rc = f ? stream(r, f, ref, 1, 0, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (f)
		fclose(f);
	free(text);
	r->bundle_who = NULL;
	trail_bundle_free(b);
	return rc;
}

struct text {
	trail_vjob *r;
	const char *name;
	int approve;
};

/* One record of plain text, as datanet-add would make it. */
static int text_record(void *ctx, const char *s, size_t n, long line, trail_error *err)
{
	struct text *t = ctx;
	trail_vjob *r = t->r;
	json_t *vd = NULL, *acc = NULL, *rec = NULL;
	trail_error e = {0};
	int q;
	if (!t->approve && skipped(r))
		return TRAIL_OK;
	if (!trail_utf8_valid(s, n))
		q = t->approve ? trail_error_at(&e, TRAIL_EDATA, t->name, line, "text is not valid UTF-8")
			       : trail_validator_check_line(r->v, s, n, t->name, line, &vd, NULL, &e);
	else if (!(rec = json_pack("{s:s%}", "text", s, n)))
		q = trail_error_set(&e, TRAIL_ENOMEM, "out of memory");
	else if (t->approve)
		q = trail_validator_approve(r->v, rec, &e);
	else
		q = trail_validator_check(r->v, rec, line, &vd, r->c.acc ? &acc : NULL, &e);
	r->who = r->c.default_who;
	q = deliver(r, q, vd, acc, &e, t->name, t->approve, err);
	r->who = NULL;
	json_decref(rec);
	return q;
}

/* Plain text (buf, consumed): one record per paragraph, or per input with --per-file. */
static int text(trail_vjob *r, char *buf, size_t len, const char *name, int approve, trail_error *err)
{
	struct text t = {r, name, approve};
	int rc = approve ? TRAIL_OK : trail_validator_set_source(r->v, name);
	if (!rc)
		rc = trail_source_split_text(buf, len, r->c.per_file, text_record, &t, err);
	trail_free(buf);
	return rc;
}

/*
 * One input, read the way datanet-add reads it: a bundle, NDJSON (streamed)
 * or plain text. Standard input that cannot be rewound is read whole.
 */
int trail_vjob_input(trail_vjob *r, const char *path, int approve, char digest[72], trail_error *err)
{
	uint8_t d[32];
	char head[512];
	int std = !strcmp(path, "-");
	digest[0] = 0;
	if (!approve && !std && trail_digest_parse(path, d) == TRAIL_OK)
		return bundle(r, path, digest, err);
	FILE *f = std ? stdin : fopen(path, "rb");
	const char *name = std ? "<stdin>" : path;
	void *buf = NULL;
	size_t len = 0, n;
	int rc = TRAIL_OK;
	if (!f)
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", path);
	if (std && fseek(f, 0, SEEK_SET)) {
		/* a pipe: the whole of it, then the same choices from memory */
		if ((rc = trail_read_fd(0, name, (size_t)1 << 30, &buf, &len, err)))
			return rc;
		n = len < sizeof head ? len : sizeof head;
		memcpy(head, buf, n);
	} else {
		n = fread(head, 1, sizeof head, f);
		rewind(f);
	}
	int kind = n ? trail_source_kind(head, n) : TRAIL_SRC_NDJSON;
	if (kind == TRAIL_SRC_TEXT && !buf) /* a long run of blank lines may hide a '{' */
		rc = std ? trail_read_fd(fileno(f), name, (size_t)1 << 30, &buf, &len, err)
			 : trail_read_file(path, (size_t)1 << 30, &buf, &len, err);
	if (rc)
		goto out;
	if (buf)
		kind = trail_source_kind(buf, len);
	if (kind == TRAIL_SRC_BUNDLE && (std || approve))
		rc = trail_error_at(err, TRAIL_EUSAGE, name, 0, "a bundle is given as a file%s",
				    approve ? " to validate, not as approved records" : "");
	else if (kind == TRAIL_SRC_BUNDLE)
		rc = bundle(r, path, digest, err);
	else if (kind == TRAIL_SRC_TEXT)
		rc = text(r, buf, len, name, approve, err), buf = NULL;
	else if (buf && len) {
		FILE *m = fmemopen(buf, len, "rb");
		rc = m ? stream(r, m, name, 1, approve, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		if (m)
			fclose(m);
	} else if (!buf) {
		rc = stream(r, f, name, std, approve, err);
	} /* else empty: no records */
out:
	trail_free(buf);
	if (!std)
		fclose(f);
	return rc;
}

/* A snapshot record, without the fields the snapshot added. */
static int approve_record(void *ctx, const json_t *rec)
{
	trail_vjob *r = ctx;
	const char *from = json_string_value(json_object_get(rec, "bundle"));
	for (int i = 0; from && i < r->nskip; i++)
		if (!strcmp(from, r->skip[i]))
			return TRAIL_OK;
	json_t *c = json_copy((json_t *)rec);
	if (!c)
		return TRAIL_ENOMEM;
	json_object_del(c, "record");
	json_object_del(c, "contributor");
	json_object_del(c, "bundle");
	json_object_del(c, "entry");
	int rc = trail_validator_approve(r->v, c, NULL);
	json_decref(c);
	return rc;
}

/*
 * --partial: the inputs (files or store digests) with their digests, every
 * item counted, then the items of the range checked into partial lines.
 */
int trail_vjob_partial(trail_vjob *r, char *const *in, int nin, const trail_attr_range *range, const char *license,
		   trail_error *err)
{
	json_t *inputs = json_array(), *h = NULL;
	json_t *how = json_pack("{s:s?, s:b, s:s?}", "license", license, "per_file", r->c.per_file, "contributor",
				 r->c.default_who);
	char digest[72];
	size_t lo, hi;
	int rc = inputs && how ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (int i = 0; !rc && i < nin; i++) {
		uint8_t d[32];
		if (!strcmp(in[i], "-"))
			rc = trail_error_set(err, TRAIL_EUSAGE, "--partial reads files, not standard input");
		else if (trail_digest_parse(in[i], d) == TRAIL_OK)
			snprintf(digest, sizeof digest, "%s", in[i]);
		else
			rc = trail_vpartial_file_digest(in[i], digest, err);
		if (!rc && json_array_append_new(inputs, json_pack("{s:s, s:s}", "name", in[i], "digest", digest)))
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	if (!rc && !nin)
		rc = trail_error_set(err, TRAIL_EUSAGE, "--partial reads files: name them");
	r->sharded = 1; /* lo == hi == 0: every item skipped, counted */
	for (int i = 0; !rc && i < nin; i++)
		rc = trail_vjob_input(r, in[i], 0, digest, err);
	if (!rc && !(rc = trail_attr_range_resolve(range, r->ord, &lo, &hi, err)) &&
	    !(rc = trail_vpartial_header(r->v, inputs, how, r->ord, lo, hi, &h, err)))
		rc = emit_partial(r, h);
	r->ord = 0, r->lo = lo, r->hi = hi;
	trail_validator_set_partial(r->v, 1);
	for (int i = 0; !rc && i < nin; i++)
		rc = trail_vjob_input(r, in[i], 0, digest, err);
	json_decref(h);
	json_decref(inputs);
	json_decref(how);
	return rc;
}

/* --merge: the verdicts and malformed lines of the partials, in input order, delivered as one pass delivers them. */
int trail_vjob_merge(trail_vjob *r, trail_vmerge *m, trail_error *err)
{
	int rc = TRAIL_OK;
	while (!rc) {
		json_t *vd;
		const char *who;
		trail_error bad;
		if ((rc = trail_vmerge_next(m, &vd, &who, &bad, err)) || (!vd && !bad.code))
			break;
		const char *name = vd ? json_string_value(json_object_get(vd, "file")) : bad.source;
		r->who = who ? who : r->c.default_who;
		rc = deliver(r, bad.code, vd, NULL, &bad, name, 0, err);
		r->who = NULL;
	}
	return rc;
}
int trail_vjob_new(trail_validator *v, const trail_vjob_cfg *c, trail_vjob **out)
{
	trail_vjob *r = calloc(1, sizeof *r);
	if (!r)
		return TRAIL_ENOMEM;
	r->v = v;
	r->c = *c;
	if (!r->c.out)
		r->c.out = stdout;
	*out = r;
	return TRAIL_OK;
}

void trail_vjob_free(trail_vjob *r)
{
	free(r);
}

int trail_vjob_malformed(const trail_vjob *r)
{
	return r->malformed;
}

int trail_vjob_load_approved(trail_vjob *r, const char *datanet, const char *const *in, int nin,
			     const trail_vmerge *vm, trail_error *err)
{
	/* the digests of the inputs' bundles, so a bundle is not its own duplicate */
	char dg[64][72];
	const char *skip[64];
	int n = 0;
	const json_t *ins = vm ? trail_vmerge_inputs(vm) : NULL;
	for (size_t i = 0; i < json_array_size(ins) && n < 64; i++) {
		const char *d = json_string_value(json_object_get(json_array_get(ins, i), "digest"));
		snprintf(dg[n], sizeof dg[n], "%s", d ? d : "");
		skip[n] = dg[n];
		n++;
	}
	for (int i = 0; !vm && i < nin && n < 64; i++) {
		uint8_t d[32];
		void *fb;
		size_t fl;
		if (trail_digest_parse(in[i], d) == TRAIL_OK)
			snprintf(dg[n], sizeof dg[n], "%s", in[i]);
		else if (trail_read_file(in[i], (size_t)1 << 30, &fb, &fl, NULL) == TRAIL_OK) {
			trail_digest_str(fb, fl, dg[n]);
			trail_free(fb);
		} else
			continue;
		skip[n] = dg[n];
		n++;
	}
	r->skip = skip, r->nskip = n;
	int rc = trail_datanet_snapshot(r->c.store, datanet, 0, approve_record, r, err);
	r->skip = NULL, r->nskip = 0;
	return rc;
}

int trail_vjob_summary(trail_vjob *r, long *accepted, long *rejected)
{
	json_t *sum = trail_validator_summary(r->v);
	json_t *s = json_object_get(sum, "summary");
	int rc = sum ? TRAIL_OK : TRAIL_ENOMEM;
	*accepted = (long)json_integer_value(json_object_get(s, "accepted"));
	*rejected = (long)json_integer_value(json_object_get(s, "rejected"));
	if (sum && r->c.github)
		fprintf(r->c.out, "::notice title=datanet-validate::%lld records, %lld accepted, %lld rejected, %lld malformed\n",
			(long long)json_integer_value(json_object_get(s, "records")),
			(long long)json_integer_value(json_object_get(s, "accepted")),
			(long long)json_integer_value(json_object_get(s, "rejected")),
			(long long)json_integer_value(json_object_get(s, "malformed")));
	else if (sum)
		rc = emit(r, sum, NULL);
	json_decref(sum);
	return rc;
}
