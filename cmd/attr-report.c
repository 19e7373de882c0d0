/* attr-report: attribution and settlement NDJSON into one self-contained HTML page. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "report/report.h"

enum { O_OUT = 1, O_TITLE, O_KEY };

static const trail_opt opts[] = {
	{O_OUT, "output", 'o', "FILE", "write the page to FILE (default stdout)", "file"},
	{O_TITLE, "title", 't', "TEXT", "the page title", NULL},
	{O_KEY, "key", 'k', "VKEY", "the log's verifier key, to check receipts (repeatable)", "file"},
	{0},
};

static const trail_cli cli = {
	.prog = "attr-report",
	.usage = "[-o FILE] [--title TEXT] [--key VKEY]... [FILE|-]...",
	.summary = "Render attribution records, inference events, training records and "
		   "settlement lines (NDJSON, in any order) as one HTML page.",
	.opts = opts,
};

static int read_all(trail_report *r, FILE *in, const char *src, trail_error *err)
{
	trail_ndjson *nd = trail_ndjson_new(in, src, 0);
	json_t *v;
	int rc;
	if (!nd)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	while ((rc = trail_ndjson_next(nd, &v, err)) == TRAIL_OK && v) {
		rc = trail_report_add(r, v, err);
		json_decref(v);
		if (rc) {
			trail_error_at(err, rc, src, trail_ndjson_lineno(nd), "unrecognised line");
			break;
		}
	}
	trail_ndjson_free(nd);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	const char *out = NULL, *title = NULL, *v, *keys[16];
	trail_verifier *vs[16];
	int nkeys = 0, nv = 0, o, rc = TRAIL_OK;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while ((o = trail_args_next(&a, &v, &err)) > 0) {
		if (o == O_OUT)
			out = v;
		else if (o == O_TITLE)
			title = v;
		else if (o == O_KEY && nkeys < 16)
			keys[nkeys++] = v;
	}
	trail_report *r = trail_report_new(title);
	if (o == TRAIL_ARGS_EXIT || o == TRAIL_ARGS_ERROR || !r) {
		rc = o == TRAIL_ARGS_ERROR ? TRAIL_EUSAGE : r ? TRAIL_OK : TRAIL_ENOMEM;
		goto done;
	}
	for (int i = 0; i < nkeys && !rc; i++)
		if (!(rc = trail_verifier_load(keys[i], &vs[nv], &err)))
			nv++;
	trail_report_set_verifiers(r, (const trail_verifier *const *)vs, (size_t)nv);
	if (!rc && a.nrest == 0)
		rc = read_all(r, stdin, "<stdin>", &err);
	for (int i = 0; i < a.nrest && !rc; i++) {
		FILE *f = strcmp(a.rest[i], "-") ? fopen(a.rest[i], "r") : stdin;
		if (!f) {
			rc = trail_error_errno(&err, TRAIL_ENOINPUT, errno, "%s", a.rest[i]);
			break;
		}
		rc = read_all(r, f, a.rest[i], &err);
		if (f != stdin)
			fclose(f);
	}
	if (!rc && out) {
		/* write beside, then rename: a reader never sees half a page */
		char *buf = NULL;
		size_t len = 0;
		FILE *m = open_memstream(&buf, &len);
		rc = m ? trail_report_write(r, m, &err) : trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		if (m)
			fclose(m);
		if (!rc)
			rc = trail_write_atomic(out, buf, len, 0644, &err);
		free(buf);
	} else if (!rc) {
		rc = trail_report_write(r, stdout, &err);
	}
	for (size_t i = 0; !rc && i < trail_report_nwarnings(r); i++)
		fprintf(stderr, "%s: warning: %s\n", cli.prog, trail_report_warning(r, i));
done:
	for (int i = 0; i < nv; i++)
		trail_verifier_free(vs[i]);
	trail_report_free(r);
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
