/* datanet-validate: check NDJSON records against a validation policy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "json.h"
#include "util.h"
#include "validate.h"

enum { O_POLICY = 1, O_SCHEMA, O_REDACT, O_FORMAT, O_LICENSE, O_APPROVED, O_OUTPUT,
       O_PRINT, O_PROGRESS, O_NOPROGRESS };

static const trail_opt opts[] = {
	{O_POLICY, "policy", 'p', "FILE", "validation policy (JSON; default: built-in)", "file"},
	{O_SCHEMA, "schema", 's', "SCHEMA", "record schema: text or instruct", "text instruct"},
	{O_REDACT, "redact", 0, NULL, "rewrite PII with placeholders instead of rejecting", NULL},
	{O_FORMAT, "format", 'f', "FORMAT", "output: ndjson verdicts or github annotations", "ndjson github"},
	{O_LICENSE, "license", 'l', "ID", "license of records that name none", NULL},
	{O_APPROVED, "approved", 'a', "FILE", "NDJSON of approved records to check copies against", "file"},
	{O_OUTPUT, "output", 'o', "FILE", "write the accepted (redacted) records to FILE", "file"},
	{O_PRINT, "print-policy", 0, NULL, "print the effective policy and exit", NULL},
	{O_PROGRESS, "progress", 0, NULL, "always show progress on stderr", NULL},
	{O_NOPROGRESS, "no-progress", 0, NULL, "never show progress", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "datanet-validate",
	.usage = "[--policy FILE] [--schema text|instruct] [--redact] [--format ndjson|github]\n"
		 "    [--approved FILE]... [--output FILE] [FILE|-]...",
	.summary = "Validate dataset records: schema, duplicates, quality rules and PII.",
	.opts = opts,
};

struct run {
	trail_validator *v;
	int github, progress, malformed;
	FILE *acc; /* accepted records, or NULL */
};

static int emit(struct run *r, json_t *vd, const char *name)
{
	char *s = r->github ? trail_verdict_github(vd, name)
			    : json_dumps(vd, JSON_COMPACT | JSON_REAL_PRECISION(10));
	if (!s)
		return TRAIL_ENOMEM;
	fputs(s, stdout);
	if (!r->github)
		putchar('\n');
	r->github ? trail_free(s) : free(s);
	return TRAIL_OK;
}

/* Validate (or, with approve, load) one NDJSON input. */
static int input(struct run *r, const char *path, int approve, trail_error *err)
{
	int std = !strcmp(path, "-");
	const char *name = std ? "<stdin>" : path;
	FILE *f = std ? stdin : fopen(path, "rb");
	struct stat st;
	if (!f)
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", path);
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
		if (q == TRAIL_OK && approve)
			q = trail_validator_approve(r->v, j, &e);
		else if (q == TRAIL_OK)
			q = trail_validator_check(r->v, j, trail_ndjson_lineno(rd), &vd, r->acc ? &acc : NULL, &e);
		else if (q == TRAIL_EDATA && !approve) {
			size_t len;
			const char *line = trail_ndjson_line(rd, &len);
			q = trail_validator_check_line(r->v, line, len, name, trail_ndjson_lineno(rd), &vd, NULL, &e);
		}
		json_decref(j);
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
		if (q == TRAIL_EDATA || q == TRAIL_ELIMIT) {
			r->malformed = 1;
			trail_validator_note_malformed(r->v);
			trail_cli_report(&cli, &e, stderr);
			char *an = r->github ? trail_github_annotation(name, e.line, "malformed", e.msg) : NULL;
			if (an)
				fputs(an, stdout);
			trail_free(an);
			if (approve)
				rc = trail_error_at(err, q, e.source, e.line, "%s", e.msg);
		} else if (q) {
			*err = e;
			rc = q;
		}
		if (!std)
			trail_progress_set(pg, (unsigned long long)ftell(f));
	}
	trail_progress_free(pg);
	trail_ndjson_free(rd);
	if (!std)
		fclose(f);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	struct run r = {.progress = -1};
	const char *v, *policy = NULL, *license = NULL, *output = NULL, *approved[64];
	int o, rc = TRAIL_OK, schema = -1, redact = 0, print = 0, napproved = 0;
	char *accbuf = NULL;
	size_t acclen = 0;
	trail_policy *p = NULL;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		if (o == O_POLICY) policy = v;
		else if (o == O_SCHEMA && (schema = trail_schema_parse(v)) < 0)
			rc = trail_error_set(&err, TRAIL_EUSAGE, "--schema: expected text or instruct");
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
		else if (o == O_PROGRESS || o == O_NOPROGRESS) r.progress = o == O_PROGRESS;
	}
	if (rc || o == TRAIL_ARGS_EXIT || o == TRAIL_ARGS_ERROR) {
		trail_args_release(&a);
		return rc || o == TRAIL_ARGS_ERROR ? trail_cli_report(&cli, &err, stderr) : trail_cli_finish(&cli, 0);
	}
	rc = policy ? trail_policy_load(policy, schema, &p, &err) : trail_policy_new(schema < 0 ? 0 : schema, &p);
	if (!rc && redact)
		trail_policy_set_redact(p, 1);
	if (!rc && print) {
		json_t *j = trail_policy_to_json(p);
		char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : NULL;
		if (s)
			puts(s);
		free(s);
		json_decref(j);
	} else if (!rc && !(rc = trail_validator_new(p, &r.v, &err))) {
		if (license && trail_validator_set_license(r.v, license))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		for (int i = 0; !rc && i < napproved; i++)
			rc = input(&r, approved[i], 1, &err);
		if (!rc && trail_validator_compact(r.v))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		if (!rc && output && !(r.acc = open_memstream(&accbuf, &acclen)))
			rc = trail_error_errno(&err, TRAIL_ENOMEM, errno, "open_memstream");
		for (int i = 0; !rc && i < (a.nrest ? a.nrest : 1); i++)
			rc = input(&r, a.nrest ? a.rest[i] : "-", 0, &err);
		if (!rc && r.acc && fclose(r.acc) == 0) {
			r.acc = NULL;
			rc = trail_write_atomic(output, accbuf, acclen, 0644, &err);
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
		json_decref(sum);
	}
	if (r.acc)
		fclose(r.acc);
	free(accbuf);
	int status = rc ? trail_cli_report(&cli, &err, stderr)
		     : r.malformed ? 65 : r.v && trail_validator_rejected(r.v) ? 1 : 0;
	trail_validator_free(r.v);
	trail_policy_free(p);
	trail_args_release(&a);
	return trail_cli_finish(&cli, status);
}
