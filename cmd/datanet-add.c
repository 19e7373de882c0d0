/* datanet-add: create datanets and add signed contributions, all or nothing. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "datanet.h"
#include "json.h"
#include "source.h"
#include "util.h"

enum { O_HOME = 1, O_CREATE, O_SCHEMA, O_OWNER, O_POLICY, O_LICENSE, O_KEY, O_PERFILE,
       O_SHA, O_MAXB, O_TIMEOUT, O_ZSTD, O_BUNDLE, O_OUT };

static const trail_opt opts[] = {
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_CREATE, "create", 'c', "NAME", "create a datanet", NULL},
	{O_SCHEMA, "schema", 's', "SCHEMA", "with --create: text or instruct", "text instruct"},
	{O_OWNER, "owner", 0, "KEYFILE", "with --create: the owner's signer key", "file"},
	{O_POLICY, "policy", 'p', "FILE", "with --create: the validation policy (JSON)", "file"},
	{O_LICENSE, "license", 'l', "SPDX", "license of the datanet or the contribution", NULL},
	{O_KEY, "key", 'k', "KEYFILE", "the contributor's signer key", "file"},
	{O_PERFILE, "per-file", 0, NULL, "plain text: one record per file, not per paragraph", NULL},
	{O_SHA, "sha256", 0, "HEX", "URL: refuse content with another digest", NULL},
	{O_MAXB, "max-bytes", 0, "N", "URL or file: size cap (default 256 MiB)", NULL},
	{O_TIMEOUT, "timeout", 0, "SECONDS", "URL: transfer timeout (default 60)", NULL},
	{O_ZSTD, "zstd", 'z', NULL, "compress the bundle with zstd", NULL},
	{O_BUNDLE, "bundle-only", 0, NULL, "build the signed bundle without a store (with -o)", NULL},
	{O_OUT, "output", 'o', "FILE", "with --bundle-only: where to write the bundle", "file"},
	{0},
};

static const trail_cli cli = {
	.prog = "datanet-add",
	.usage = "--create NAME --schema text|instruct --owner KEYFILE [--policy FILE] [--license L]\n"
		 "NAME --key KEYFILE [--license L] [--zstd] [--per-file] [FILE|URL|-]...\n"
		 "--bundle-only -o FILE NAME --key KEYFILE [FILE|URL|-]...",
	.summary = "Create a datanet, or add one signed contribution to it (all or nothing).",
	.opts = opts,
};

struct conf {
	const char *home, *create, *schema, *owner, *policy, *license, *key, *out;
	int per_file, zstd, bundle_only;
	trail_fetch_opts fetch;
};

/* Read one input (file, URL or "-") whole. */
static int slurp(const char *in, const struct conf *c, void **buf, size_t *len, json_t **source,
		 trail_error *err)
{
	char digest[72];
	if (trail_is_url(in)) {
		int rc = trail_fetch(in, &c->fetch, buf, len, digest, err);
		if (!rc)
			*source = json_pack("{s:s, s:s}", "url", in, "sha256", digest);
		return rc;
	}
	size_t max = c->fetch.max_bytes ? c->fetch.max_bytes : (size_t)256 << 20;
	return strcmp(in, "-") ? trail_read_file(in, max, buf, len, err)
			       : trail_read_fd(0, "<stdin>", max, buf, len, err);
}

static int contribute(trail_args *a, struct conf *c, trail_error *err)
{
	trail_signer *k = NULL;
	trail_store *s = NULL;
	json_t *records = json_array(), *source = NULL, *receipt = NULL;
	void *bundle = NULL, *buf;
	size_t blen = 0, len;
	int rc;
	if (!c->key)
		return json_decref(records), trail_error_set(err, TRAIL_EUSAGE, "adding needs --key KEYFILE");
	if ((rc = trail_signer_load(c->key, &k, err)))
		goto out;
	const char *name = a->rest[0];
	char *const *in = a->rest + 1;
	int nin = a->nrest - 1;
	const char *stdin_only[] = {"-"};
	if (nin == 0)
		in = (char *const *)stdin_only, nin = 1;
	for (int i = 0; i < nin && !rc; i++) {
		if ((rc = slurp(in[i], c, &buf, &len, &source, err)))
			break;
		if (trail_source_kind(buf, len) == TRAIL_SRC_BUNDLE) {
			if (nin > 1)
				rc = trail_error_at(err, TRAIL_EUSAGE, in[i], 0, "a bundle is a whole contribution: give it alone");
			bundle = buf, blen = len;
			break;
		}
		rc = trail_source_records(buf, len, in[i], c->per_file, records, err);
		trail_free(buf);
	}
	if (!rc && !bundle) {
		if (!json_array_size(records))
			rc = trail_error_set(err, TRAIL_EDATA, "no records in the input");
		else
			rc = trail_bundle_create(records, name, c->license, nin == 1 ? source : NULL, k,
						 c->zstd, &bundle, &blen, err);
	}
	if (rc)
		goto out;
	if (c->bundle_only) {
		rc = trail_write_atomic(c->out, bundle, blen, 0644, err);
		if (!rc) {
			char d[72];
			trail_digest_str(bundle, blen, d);
			printf("{\"bundle\":\"%s\",\"records\":%zu}\n", d, json_array_size(records));
		}
		goto out;
	}
	if ((rc = trail_store_open(c->home, &s, err)) ||
	    (rc = trail_datanet_contribute(s, name, bundle, blen, k, &receipt, err)))
		goto out;
	char *line;
	if (!(rc = trail_jcs(receipt, &line, NULL, err))) {
		puts(line);
		trail_free(line);
	}
out:
	json_decref(records);
	json_decref(source);
	json_decref(receipt);
	trail_free(bundle);
	trail_signer_free(k);
	trail_store_free(s);
	return rc;
}

static int create(struct conf *c, trail_error *err)
{
	trail_signer *o = NULL;
	trail_store *s = NULL;
	json_t *pol = NULL;
	void *pb = NULL;
	size_t pl;
	uint64_t idx;
	int rc;
	if (!c->schema || !c->owner)
		return trail_error_set(err, TRAIL_EUSAGE, "--create needs --schema and --owner");
	if ((rc = trail_signer_load(c->owner, &o, err)) ||
	    (c->policy && ((rc = trail_read_file(c->policy, 1 << 20, &pb, &pl, err)) ||
			   (rc = trail_json_parse(pb, pl, c->policy, &pol, err)))) ||
	    (rc = trail_store_open(c->home, &s, err)) ||
	    (rc = trail_datanet_create(s, c->create, c->schema, c->license, pol, o, &idx, err)))
		goto out;
	printf("{\"datanet\":\"%s\",\"entry\":%llu}\n", c->create, (unsigned long long)idx);
out:
	json_decref(pol);
	trail_free(pb);
	trail_signer_free(o);
	trail_store_free(s);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	struct conf c = {.fetch = {.max_redirects = -1}};
	const char *v;
	long long n;
	int o, rc = TRAIL_OK;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout) || trail_source_init())
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		switch (o) {
		case O_HOME: c.home = v; break;
		case O_CREATE: c.create = v; break;
		case O_SCHEMA: c.schema = v; break;
		case O_OWNER: c.owner = v; break;
		case O_POLICY: c.policy = v; break;
		case O_LICENSE: c.license = v; break;
		case O_KEY: c.key = v; break;
		case O_PERFILE: c.per_file = 1; break;
		case O_SHA: c.fetch.sha256 = v; break;
		case O_MAXB: rc = trail_parse_long(v, 1, 1LL << 40, &n, "--max-bytes", &err), c.fetch.max_bytes = (size_t)n; break;
		case O_TIMEOUT: rc = trail_parse_long(v, 1, 86400, &n, "--timeout", &err), c.fetch.timeout_s = (long)n; break;
		case O_ZSTD: c.zstd = 1; break;
		case O_BUNDLE: c.bundle_only = 1; break;
		case O_OUT: c.out = v; break;
		}
	}
	c.home = trail_store_home(c.home);
	if (rc || o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (c.create)
		rc = a.nrest ? trail_error_set(&err, TRAIL_EUSAGE, "--create takes no inputs") : create(&c, &err);
	else if (a.nrest < 1)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "missing datanet NAME");
	else if (c.bundle_only && !c.out)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--bundle-only needs -o FILE");
	else
		rc = contribute(&a, &c, &err);
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
