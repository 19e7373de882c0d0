/* attr-settle: pay an epoch's fees to contributors, exactly and once. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "json.h"
#include "settle.h"
#include "store.h"
#include "util.h"

enum { O_POLICY = 1, O_EPOCH, O_KEY, O_HOME, O_DRY, O_VERBOSE, O_FORMAT, O_FLAGS };

static const trail_opt opts[] = {
	{O_POLICY, "policy", 'p', "FILE", "fees, splits, stakes and penalties (JSON)", "file"},
	{O_EPOCH, "epoch", 'e', "ID", "the epoch to settle", NULL},
	{O_KEY, "key", 'k', "KEYFILE", "sign the settlement entry with this key", "file"},
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail, when it exists)", "dir"},
	{O_DRY, "dry-run", 'n', NULL, "compute and print; record nothing", NULL},
	{O_VERBOSE, "verbose", 'v', NULL, "say on stderr what was done (silent otherwise)", NULL},
	{O_FORMAT, "format", 'f', "FORMAT", "ndjson (default) or text", "ndjson text"},
	{O_FLAGS, "flags", 0, "FILE", "penalty inputs: NDJSON {contributor, rejected, flagged, poisoning}", "file"},
	{0},
};

static const trail_cli cli = {
	.prog = "attr-settle",
	.usage = "--policy FILE --epoch ID [--key KEYFILE] [--home DIR] [--dry-run] [-v] [--format ndjson|text]\n"
		 "    [--flags FILE] [FILE|-]...",
	.summary = "Settle an epoch: fees from attribution records paid to platform, model, stakers and "
		   "contributors in exact integers, recorded once in the ledger.",
	.opts = opts,
};

static int feed(trail_settle *s, const char *path, int flags, trail_error *err)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
	if (!f)
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", path);
	trail_ndjson *r = trail_ndjson_new(f, strcmp(path, "-") ? path : "<stdin>", 0);
	json_t *v;
	int rc = r ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	while (!rc && !(rc = trail_ndjson_next(r, &v, err)) && v) {
		if ((rc = flags ? trail_settle_flag(s, v, err) : trail_settle_add(s, v, err)))
			trail_error_at(err, rc, path, trail_ndjson_lineno(r), "%s", err ? err->msg : "");
		json_decref(v);
	}
	trail_ndjson_free(r);
	if (f != stdin)
		fclose(f);
	return rc;
}

static void print(const json_t *res, int text)
{
	size_t i;
	json_t *l;
	if (text)
		printf("%-12s %-46s %14s\n", "role", "payee", "amount");
	json_array_foreach(res, i, l) {
		const char *t = json_string_value(json_object_get(l, "type"));
		if (!text) {
			char *s;
			if (!trail_jcs(l, &s, NULL, NULL)) {
				puts(s);
				trail_free(s);
			}
		} else if (!strcmp(t, "epoch")) {
			printf("epoch %s: fees %lld, paid %lld, retained %lld (%lld records)\n",
			       json_string_value(json_object_get(l, "epoch")), (long long)json_integer_value(json_object_get(l, "fees")),
			       (long long)json_integer_value(json_object_get(l, "paid")),
			       (long long)json_integer_value(json_object_get(l, "retained")),
			       (long long)json_integer_value(json_object_get(l, "records")));
		} else {
			const char *to = json_string_value(json_object_get(l, "to"));
			const char *plus = strchr(to, '+');
			printf("%-12s %-46.*s %14lld\n", !strcmp(t, "slash") ? "slashed" : json_string_value(json_object_get(l, "role")),
			       plus ? (int)(plus - to) : 46, to, (long long)json_integer_value(json_object_get(l, "amount")));
		}
	}
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	const char *v, *policy = NULL, *epoch = NULL, *keyf = NULL, *home = NULL, *flags = NULL;
	int o, rc = TRAIL_OK, dry = 0, verbose = 0, text = 0, recorded = 0;
	trail_settle *s = NULL;
	trail_store *st = NULL;
	trail_signer *key = NULL;
	json_t *pol = NULL, *res = NULL;
	void *pb = NULL;
	size_t pl;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		switch (o) {
		case O_POLICY: policy = v; break;
		case O_EPOCH: epoch = v; break;
		case O_KEY: keyf = v; break;
		case O_HOME: home = v; break;
		case O_DRY: dry = 1; break;
		case O_VERBOSE: verbose = 1; break;
		case O_FORMAT:
			if (strcmp(v, "ndjson") && strcmp(v, "text"))
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--format: ndjson or text");
			text = !strcmp(v, "text");
			break;
		case O_FLAGS: flags = v; break;
		}
	}
	if (rc || o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o == TRAIL_ARGS_EXIT)
		goto done;
	else if (!policy || !epoch)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--policy FILE and --epoch ID are required");
	if (!rc && !(rc = trail_read_file(policy, 1 << 20, &pb, &pl, &err)) &&
	    !(rc = trail_json_parse(pb, pl, policy, &pol, &err)) && !(rc = trail_settle_new(pol, &s, &err)) &&
	    (!keyf || !(rc = trail_signer_load(keyf, &key, &err))) && (!flags || !(rc = feed(s, flags, 1, &err)))) {
		for (int i = 0; !rc && i < (a.nrest ? a.nrest : 1); i++)
			rc = feed(s, a.nrest ? a.rest[i] : "-", 0, &err);
	}
	/* a store is used when named, or when the default one exists */
	const char *h = trail_store_home(home);
	char *cfg = trail_path(h, "config.json");
	struct stat sb;
	int use_store = !dry && (home || (cfg && stat(cfg, &sb) == 0));
	trail_free(cfg);
	if (!rc && use_store && !(rc = trail_store_open(h, &st, &err)))
		rc = trail_settle_record(s, st, epoch, key, &res, &recorded, &err);
	else if (!rc)
		rc = trail_settle_result(s, epoch, &res, &err);
	if (!rc)
		print(res, text);
	if (!rc && verbose)
		fprintf(stderr, "attr-settle: epoch %s %s\n", epoch,
			!use_store ? "computed, not recorded" : recorded ? "was already settled: the recorded result"
									 : "settled and recorded");
done:
	json_decref(pol);
	json_decref(res);
	trail_free(pb);
	trail_settle_free(s);
	trail_store_free(st);
	trail_signer_free(key);
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
