/* datanet-validate: check records (NDJSON, plain text, bundles) against a validation policy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "data/data.h"
#include "ledger/ledger.h"
#include "job/job.h"

enum { O_POLICY = 1, O_PRESET, O_SCHEMA, O_REDACT, O_FORMAT, O_LICENSE, O_APPROVED, O_OUTPUT,
       O_PRINT, O_PERFILE, O_PROGRESS, O_NOPROGRESS, O_HOME, O_DATANET, O_KEY, O_RECORD, O_APPROVE, O_ACCEPTED, O_REJECT,
       O_FLAGS, O_CONTRIB, O_PARTIAL, O_RECORDS, O_SHARD, O_MERGE };

static const trail_opt opts[] = {
	{O_POLICY, "policy", 'p', "FILE", "validation policy (JSON; default: built-in)", "file"},
	{O_PRESET, "preset", 'P', "NAME", "built-in policy: web (default), short-form or code", "web short-form code"},
	{O_SCHEMA, "schema", 's', "SCHEMA", "record schema: text, instruct or chat", "text instruct chat"},
	{O_REDACT, "redact", 0, NULL, "rewrite PII with placeholders instead of rejecting", NULL},
	{O_FORMAT, "format", 'f', "FORMAT", "output: ndjson verdicts or github annotations", "ndjson github"},
	{O_LICENSE, "license", 'l', "ID", "license of records that name none", NULL},
	{O_APPROVED, "approved", 'a', "FILE", "NDJSON of approved records to check copies against", "file"},
	{O_OUTPUT, "output", 'o', "FILE", "write the accepted (redacted) records to FILE", "file"},
	{O_PRINT, "print-policy", 0, NULL, "print the effective policy and exit", NULL},
	{O_PERFILE, "per-file", 0, NULL, "plain text: one record per file, not per paragraph", NULL},
	{O_PROGRESS, "progress", 0, NULL, "always show progress on stderr", NULL},
	{O_NOPROGRESS, "no-progress", 0, NULL, "never show progress", NULL},
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_DATANET, "datanet", 'd', "NAME", "check against this datanet's policy and approved records", NULL},
	{O_KEY, "key", 'k', "KEYFILE", "signer key for --record, --approve, --reject", "file"},
	{O_RECORD, "record", 0, NULL, "append a signed validation entry to the ledger", NULL},
	{O_APPROVE, "approve", 0, NULL, "owner: approve the bundles if every record is accepted", NULL},
	{O_ACCEPTED, "accepted-only", 0, NULL, "with --approve: approve the accepted records, naming the rejected", NULL},
	{O_REJECT, "reject", 0, NULL, "owner: reject the bundles", NULL},
	{O_FLAGS, "flags", 0, "FILE", "write attr-settle penalty flags of rejected records to FILE", "file"},
	{O_CONTRIB, "contributor", 'c', "KEY", "contributor of records that name none (verifier key or .pub file)",
	 "file"},
	{O_PARTIAL, "partial", 0, NULL, "check one range of the records and print its partial for --merge", NULL},
	{O_RECORDS, "records", 0, "LO:HI", "with --partial: the items LO to HI-1 of the inputs (HI empty: to the end)",
	 NULL},
	{O_SHARD, "shard", 0, "I/N", "with --partial: shard I of N equal ranges of the items", NULL},
	{O_MERGE, "merge", 0, NULL, "the files are partials: print the verdicts of one pass over their inputs", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "datanet-validate",
	.usage = "[--policy FILE | --preset NAME] [--schema text|instruct|chat] [--redact] [--format ndjson|github]\n"
		 "    [--per-file] [--approved FILE]... [--output FILE] [--flags FILE [--contributor KEY]]\n"
		 "    [FILE|-]...\n"
		 "--home DIR --datanet NAME [--key KEYFILE [--record] [--approve [--accepted-only]|--reject]]\n"
		 "    BUNDLE|DIGEST...\n"
		 "--partial --records LO:HI|--shard I/N [--policy FILE | --preset NAME] [--schema S] [--redact]\n"
		 "    [--contributor KEY] FILE...\n"
		 "--merge [--policy FILE | --preset NAME] [--schema S] [--redact] [--format F] [--approved FILE]...\n"
		 "    [--flags FILE [--contributor KEY]] [--home DIR --datanet NAME] PARTIAL...",
	.summary = "Validate dataset records: schema, duplicates, quality rules and PII.",
	.opts = opts,
};

struct run {
	trail_validator *v;
	int github, progress, malformed, per_file;
	FILE *acc; /* accepted records, or NULL */
	FILE *report; /* a copy of the verdicts for --record, or NULL */
	trail_store *store;
	char **skip; /* bundles being validated: their own approved records do not count */
	int nskip;
	json_t *rejected; /* {"n","record"} of rejected records, for --accepted-only */
	int partial;      /* an approval left them out */
	FILE *flags;      /* penalty flags of rejected records, or NULL */
	const char *who;  /* the contributor of the records being checked, or NULL */
	const char *bundle_who, *default_who; /* a bundle's signer; --contributor */
	int sharded;          /* --partial: partial lines for the items in [lo, hi) of all */
	uint64_t ord, lo, hi; /* items seen so far (records, malformed lines) */
};

/* The next item is outside the shard's range (always so while counting, with lo == hi). */
static int skipped(struct run *r)
{
	uint64_t k = r->ord++;
	return r->sharded && (k < r->lo || k >= r->hi);
}

/* The contributor a record's flag names: its bundle's signer, its own "contributor", else --contributor. */
static const char *who_of(const struct run *r, const json_t *rec)
{
	const char *w = json_string_value(json_object_get(rec, "contributor"));
	return r->bundle_who ? r->bundle_who : w && *w ? w : r->default_who;
}

/* A partial's line, with the contributor the record names (or --contributor's). */
static int emit_partial(struct run *r, json_t *l)
{
	char *s = NULL;
	/* not canonical: the reasons keep their members' order, and numbers all their digits */
	if ((r->who && json_object_set_new(l, "who", json_string(r->who))) || !(s = json_dumps(l, JSON_COMPACT)))
		return TRAIL_ENOMEM;
	puts(s);
	free(s);
	return TRAIL_OK;
}

static int emit(struct run *r, json_t *vd, const char *name)
{
	json_t *id = json_object_get(vd, "record");
	if (r->sharded)
		return emit_partial(r, vd);
	if (r->rejected && id && json_is_false(json_object_get(vd, "ok")) &&
	    json_array_append_new(r->rejected, json_pack("{s:O, s:O}", "n", json_object_get(vd, "n"),
							 "record", id)))
		return TRAIL_ENOMEM;
	if (r->flags && !json_object_get(vd, "summary")) {
		int oom;
		json_t *f = trail_verdict_flag(vd, r->who, &oom);
		char *l = NULL;
		if (oom || (f && trail_jcs(f, &l, NULL, NULL))) {
			json_decref(f);
			return TRAIL_ENOMEM;
		}
		if (l)
			fprintf(r->flags, "%s\n", l);
		trail_free(l);
		json_decref(f);
	}
	char *s = r->github ? trail_verdict_github(vd, name)
			    : json_dumps(vd, JSON_COMPACT | JSON_REAL_PRECISION(10));
	if (!s)
		return TRAIL_ENOMEM;
	fputs(s, stdout);
	if (!r->github)
		putchar('\n');
	if (r->report && !r->github)
		fprintf(r->report, "%s\n", s);
	r->github ? trail_free(s) : free(s);
	return TRAIL_OK;
}

/*
 * Print a verdict (consumed) and write the accepted record (consumed); q is
 * the check's result: malformed input is reported and counted, and stops
 * only the loading of approved records.
 */
static int deliver(struct run *r, int q, json_t *vd, json_t *acc, trail_error *e, const char *name,
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
			fprintf(r->acc, "%s\n", s);
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
		trail_cli_report(&cli, e, stderr);
		char *an = r->github ? trail_github_annotation(name, e->line, "malformed", e->msg) : NULL;
		if (an)
			fputs(an, stdout);
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
static int stream(struct run *r, FILE *f, const char *name, int std, int approve, trail_error *err)
{
	struct stat st;
	trail_ndjson *rd = trail_ndjson_new(f, name, 0);
	trail_progress *pg = trail_progress_new(stderr, approve ? 0 : r->progress, name,
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
		r->who = q == TRAIL_OK ? who_of(r, j) : r->bundle_who ? r->bundle_who : r->default_who;
		if (q == TRAIL_OK && approve)
			q = trail_validator_approve(r->v, j, &e);
		else if (q == TRAIL_OK)
			q = trail_validator_check(r->v, j, trail_ndjson_lineno(rd), &vd, r->acc ? &acc : NULL, &e);
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
static int bundle(struct run *r, const char *ref, char digest[72], trail_error *err)
{
	trail_bundle *b;
	char *text = NULL;
	size_t len = 0;
	int rc = trail_datanet_load_bundle(r->store, ref, &b, digest, err);
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
	struct run *r;
	const char *name;
	int approve;
};

/* One record of plain text, as datanet-add would make it. */
static int text_record(void *ctx, const char *s, size_t n, long line, trail_error *err)
{
	struct text *t = ctx;
	struct run *r = t->r;
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
		q = trail_validator_check(r->v, rec, line, &vd, r->acc ? &acc : NULL, &e);
	r->who = r->default_who;
	q = deliver(r, q, vd, acc, &e, t->name, t->approve, err);
	r->who = NULL;
	json_decref(rec);
	return q;
}

/* Plain text (buf, consumed): one record per paragraph, or per input with --per-file. */
static int text(struct run *r, char *buf, size_t len, const char *name, int approve, trail_error *err)
{
	struct text t = {r, name, approve};
	int rc = approve ? TRAIL_OK : trail_validator_set_source(r->v, name);
	if (!rc)
		rc = trail_source_split_text(buf, len, r->per_file, text_record, &t, err);
	trail_free(buf);
	return rc;
}

/*
 * One input, read the way datanet-add reads it: a bundle, NDJSON (streamed)
 * or plain text. Standard input that cannot be rewound is read whole.
 */
static int input(struct run *r, const char *path, int approve, char digest[72], trail_error *err)
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
	struct run *r = ctx;
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
static int partial(struct run *r, char *const *in, int nin, const trail_attr_range *range, const char *license,
		   trail_error *err)
{
	json_t *inputs = json_array(), *h = NULL;
	json_t *how = json_pack("{s:s?, s:b, s:s?}", "license", license, "per_file", r->per_file, "contributor",
				 r->default_who);
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
		rc = input(r, in[i], 0, digest, err);
	if (!rc && !(rc = trail_attr_range_resolve(range, r->ord, &lo, &hi, err)) &&
	    !(rc = trail_vpartial_header(r->v, inputs, how, r->ord, lo, hi, &h, err)))
		rc = emit_partial(r, h);
	r->ord = 0, r->lo = lo, r->hi = hi;
	trail_validator_set_partial(r->v, 1);
	for (int i = 0; !rc && i < nin; i++)
		rc = input(r, in[i], 0, digest, err);
	json_decref(h);
	json_decref(inputs);
	json_decref(how);
	return rc;
}

/* --merge: the verdicts and malformed lines of the partials, in input order, delivered as one pass delivers them. */
static int merge(struct run *r, trail_vmerge *m, trail_error *err)
{
	int rc = TRAIL_OK;
	while (!rc) {
		json_t *vd;
		const char *who;
		trail_error bad;
		if ((rc = trail_vmerge_next(m, &vd, &who, &bad, err)) || (!vd && !bad.code))
			break;
		const char *name = vd ? json_string_value(json_object_get(vd, "file")) : bad.source;
		r->who = who ? who : r->default_who;
		rc = deliver(r, bad.code, vd, NULL, &bad, name, 0, err);
		r->who = NULL;
	}
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	struct run r = {.progress = -1};
	const char *v, *policy = NULL, *preset = NULL, *license = NULL, *output = NULL, *approved[64];
	const char *home = NULL, *datanet = NULL, *keyfile = NULL, *flags = NULL, *contrib_key = NULL;
	char *flagbuf = NULL;
	size_t flaglen = 0;
	trail_verifier *cv = NULL;
	int o, rc = TRAIL_OK, schema = -1, redact = 0, print = 0, napproved = 0, record = 0, decide = 0;
	int accepted_only = 0, part = 0, merging = 0, ranged = 0;
	trail_attr_range range = {0};
	trail_vmerge *vm = NULL;
	char *repbuf = NULL, digest[72] = "";
	size_t replen = 0;
	json_t *def = NULL, *dpol = NULL;
	trail_signer *key = NULL;
	char *accbuf = NULL;
	size_t acclen = 0;
	trail_policy *p = NULL;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		if (o == O_POLICY) policy = v;
		else if (o == O_PRESET) preset = v;
		else if (o == O_SCHEMA && (schema = trail_schema_parse(v)) < 0)
			rc = trail_error_set(&err, TRAIL_EUSAGE, "--schema: expected text, instruct or chat");
		else if (o == O_REDACT) redact = 1;
		else if (o == O_FORMAT && strcmp(v, "ndjson") && strcmp(v, "github"))
			rc = trail_error_set(&err, TRAIL_EUSAGE, "--format: expected ndjson or github");
		else if (o == O_FORMAT) r.github = !strcmp(v, "github");
		else if (o == O_LICENSE) license = v;
		else if (o == O_APPROVED && napproved == 64)
			rc = trail_error_set(&err, TRAIL_EUSAGE, "at most 64 --approved files");
		else if (o == O_APPROVED) approved[napproved++] = v;
		else if (o == O_OUTPUT) output = v;
		else if (o == O_PRINT) print = 1;
		else if (o == O_PERFILE) r.per_file = 1;
		else if (o == O_PROGRESS || o == O_NOPROGRESS) r.progress = o == O_PROGRESS;
		else if (o == O_HOME) home = v;
		else if (o == O_DATANET) datanet = v;
		else if (o == O_KEY) keyfile = v;
		else if (o == O_RECORD) record = 1;
		else if (o == O_APPROVE || o == O_REJECT) decide = o == O_APPROVE ? 1 : -1;
		else if (o == O_ACCEPTED) accepted_only = 1;
		else if (o == O_FLAGS) flags = v;
		else if (o == O_CONTRIB) contrib_key = v;
		else if (o == O_PARTIAL) part = 1;
		else if (o == O_MERGE) merging = 1;
		else if ((o == O_RECORDS || o == O_SHARD) && ranged++)
			rc = trail_error_set(&err, TRAIL_EUSAGE, "--records and --shard: give one, once");
		else if (o == O_RECORDS || o == O_SHARD)
			rc = trail_attr_range_parse(v, o == O_SHARD, &range, &err);
	}
	if (!rc && (part || ranged) && (!part || !ranged))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--partial goes with --records LO:HI or --shard I/N");
	if (!rc && part && merging)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--partial and --merge: give one");
	if (!rc && part && (napproved || output || flags || r.github || print))
		rc = trail_error_set(&err, TRAIL_EUSAGE,
				     "--approved, --output, --flags and --format go to the merge, not to --partial");
	if (!rc && (part || merging) && (record || decide || keyfile))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--record, --approve and --reject validate in one pass");
	if (!rc && merging && output)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--output: the partials hold no records (validate in one pass)");
	if (!rc && merging && (license || r.per_file))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--license and --per-file go to the shards (--partial)");
	if (!rc && contrib_key && !flags && !part) /* a shard names the contributor in its lines */
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--contributor goes with --flags");
	if (!rc && contrib_key && !(rc = trail_verifier_load(contrib_key, &cv, &err)))
		r.default_who = trail_verifier_str(cv);
	if (!rc && accepted_only && (decide <= 0 || redact))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--accepted-only goes with --approve, without --redact");
	if (!rc && accepted_only && !(r.rejected = json_array()))
		rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
	if (!rc && policy && preset)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--policy and --preset: give one");
	if (!rc && (record || decide) && (!datanet || !keyfile))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--record, --approve and --reject need --datanet and --key");
	if (!rc && datanet) {
		const char *sc;
		if (!(rc = trail_store_open(trail_store_home(home), &r.store, &err)) &&
		    !(rc = trail_datanet_policy(r.store, datanet, &def, &dpol, &err)) && schema < 0 &&
		    (sc = json_string_value(json_object_get(def, "schema"))))
			schema = trail_schema_parse(sc);
		if (!rc && keyfile)
			rc = trail_signer_load(keyfile, &key, &err);
		if (!rc && record && !(r.report = open_memstream(&repbuf, &replen)))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
	}
	if (!rc && flags && !print && !(r.flags = open_memstream(&flagbuf, &flaglen)))
		rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
	if (rc || o == TRAIL_ARGS_EXIT || o == TRAIL_ARGS_ERROR) {
		if (r.flags)
			fclose(r.flags);
		free(flagbuf);
		trail_verifier_free(cv);
		trail_args_release(&a);
		return rc || o == TRAIL_ARGS_ERROR ? trail_cli_report(&cli, &err, stderr) : trail_cli_finish(&cli, 0);
	}
	if (!rc)
		rc = policy ? trail_policy_load(policy, schema, &p, &err)
		     : preset ? trail_policy_preset(preset, schema, &p, &err)
		     : dpol ? trail_policy_from_json(dpol, datanet, schema, &p, &err)
			    : trail_policy_new(schema < 0 ? 0 : schema, &p);
	if (!rc && redact)
		trail_policy_set_redact(p, 1);
	if (!rc && print) {
		json_t *j = trail_policy_to_json(p);
		char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : NULL;
		if (s)
			puts(s);
		free(s);
		json_decref(j);
	} else if (!rc && !(rc = trail_validator_new(p, &r.v, &err)) && part) {
		if (license && trail_validator_set_license(r.v, license))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		if (!rc)
			rc = partial(&r, a.rest, a.nrest, &range, license, &err);
	} else if (!rc) {
		if (license && trail_validator_set_license(r.v, license))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		for (int i = 0; !rc && i < napproved; i++)
			rc = input(&r, approved[i], 1, digest, &err);
		/* the digests of bundle inputs, so a bundle is not its own duplicate */
		char dg[64][72];
		char *skip[64];
		if (!rc && merging)
			rc = trail_vmerge_open(r.v, (const char *const *)a.rest, (size_t)a.nrest, &vm, &err);
		const json_t *ins = vm ? trail_vmerge_inputs(vm) : NULL;
		for (size_t i = 0; datanet && i < json_array_size(ins) && i < 64; i++) {
			const char *d = json_string_value(json_object_get(json_array_get(ins, i), "digest"));
			snprintf(dg[r.nskip], 72, "%s", d ? d : "");
			skip[r.nskip] = dg[r.nskip];
			r.nskip++;
		}
		for (int i = 0; datanet && !vm && i < a.nrest && i < 64; i++) {
			uint8_t d[32];
			void *fb;
			size_t fl;
			if (trail_digest_parse(a.rest[i], d) == TRAIL_OK)
				snprintf(dg[r.nskip], 72, "%s", a.rest[i]);
			else if (trail_read_file(a.rest[i], (size_t)1 << 30, &fb, &fl, NULL) == TRAIL_OK) {
				trail_digest_str(fb, fl, dg[r.nskip]);
				trail_free(fb);
			} else
				continue;
			skip[r.nskip] = dg[r.nskip];
			r.nskip++;
		}
		r.skip = skip;
		if (!rc && datanet)
			rc = trail_datanet_snapshot(r.store, datanet, 0, approve_record, &r, &err);
		if (!rc && trail_validator_compact(r.v))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		if (!rc && output && !(r.acc = open_memstream(&accbuf, &acclen)))
			rc = trail_error_errno(&err, TRAIL_ENOMEM, errno, "open_memstream");
		for (int i = 0; !rc && !vm && i < (a.nrest ? a.nrest : 1); i++)
			rc = input(&r, a.nrest ? a.rest[i] : "-", 0, digest, &err);
		if (!rc && vm)
			rc = merge(&r, vm, &err);
		if (!rc && decide && (a.nrest != 1 || !digest[0]))
			rc = trail_error_set(&err, TRAIL_EUSAGE, "--approve and --reject take one bundle");
		if (!rc && r.acc && fclose(r.acc) == 0) {
			r.acc = NULL;
			rc = trail_write_atomic(output, accbuf, acclen, 0644, &err);
		}
		if (!rc && r.flags && fclose(r.flags) == 0) {
			r.flags = NULL;
			rc = trail_write_atomic(flags, flagbuf, flaglen, 0644, &err);
		}
		json_t *sum = trail_validator_summary(r.v);
		if (!rc && r.github && sum) {
			json_t *s = json_object_get(sum, "summary");
			printf("::notice title=datanet-validate::%lld records, %lld accepted, %lld rejected, %lld malformed\n",
			       (long long)json_integer_value(json_object_get(s, "records")),
			       (long long)json_integer_value(json_object_get(s, "accepted")),
			       (long long)json_integer_value(json_object_get(s, "rejected")),
			       (long long)json_integer_value(json_object_get(s, "malformed")));
		} else if (!rc && sum) {
			emit(&r, sum, NULL);
		}
		json_t *su = json_object_get(sum, "summary");
		long acc_n = (long)json_integer_value(json_object_get(su, "accepted"));
		long rej_n = (long)json_integer_value(json_object_get(su, "rejected"));
		json_decref(sum);
		uint64_t entry, contrib;
		if (!rc && r.report && !fclose(r.report)) {
			r.report = NULL;
			rc = trail_datanet_record_validation(r.store, datanet, digest[0] ? digest : NULL, repbuf,
							     replen, acc_n, rej_n, key, &entry, &err);
		}
		if (!rc && decide > 0 && (r.malformed || (rej_n && !accepted_only)))
			rc = trail_error_set(&err, TRAIL_EVERIFY,
					     "not approved: %ld record(s) rejected%s", rej_n,
					     r.malformed ? "" : " (--accepted-only approves the others)");
		if (!rc && decide > 0 && accepted_only && !acc_n)
			rc = trail_error_set(&err, TRAIL_EVERIFY, "not approved: no record accepted");
		if (!rc && decide &&
		    !(rc = trail_datanet_contribution_of(r.store, datanet, digest, &contrib, &err)))
			rc = trail_datanet_approve_records(r.store, datanet, contrib, decide > 0,
							   rej_n ? r.rejected : NULL, NULL, key, &entry, &err);
		if (!rc && accepted_only && rej_n)
			r.partial = 1; /* the rejected records are named in the approval: that is the result */
		if (!rc && decide < 0)
			r.malformed = 0, decide = -2; /* the rejection is recorded: that is the result */
	}
	if (r.acc)
		fclose(r.acc);
	if (r.report)
		fclose(r.report);
	if (r.flags)
		fclose(r.flags);
	free(flagbuf);
	trail_verifier_free(cv);
	trail_vmerge_free(vm);
	free(accbuf);
	free(repbuf);
	json_decref(def);
	json_decref(dpol);
	json_decref(r.rejected);
	trail_signer_free(key);
	trail_store_free(r.store);
	int status = rc ? trail_cli_report(&cli, &err, stderr)
		     : decide == -2 || r.partial ? 0 : r.malformed ? 65 : flags ? 0 : r.v && trail_validator_rejected(r.v) ? 1 : 0;
	trail_validator_free(r.v);
	trail_policy_free(p);
	trail_args_release(&a);
	return trail_cli_finish(&cli, status);
}
