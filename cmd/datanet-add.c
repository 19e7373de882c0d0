/* datanet-add: create datanets and add signed contributions, all or nothing. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"

enum { O_HOME = 1, O_CREATE, O_SCHEMA, O_OWNER, O_POLICY, O_LICENSE, O_KEY, O_PERFILE,
       O_SHA, O_MAXB, O_TIMEOUT, O_ZSTD, O_BUNDLE, O_OUT };

static const trail_opt opts[] = {
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_CREATE, "create", 'c', "NAME", "create a datanet", NULL},
	{O_SCHEMA, "schema", 's', "SCHEMA", "with --create: text, instruct or chat", "text instruct chat"},
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
	.usage = "--create NAME --schema text|instruct|chat --owner KEYFILE [--policy FILE] [--license L]\n"
		 "NAME --key KEYFILE [--license L] [--zstd] [--per-file] [FILE|URL|-]...\n"
		 "--bundle-only -o FILE NAME --key KEYFILE [FILE|URL|-]...",
	.summary = "Create a datanet, or add one signed contribution to it (all or nothing).",
	.opts = opts,
};

struct conf {
	const char *home, *create, *schema, *owner, *policy, *license, *key, *out;
	int bundle_only;
	trail_source_opts src;
};

static int contribute(trail_args *a, struct conf *c, trail_error *err)
{
	trail_signer *k = NULL;
	trail_store *s = NULL;
	json_t *receipt = NULL, *def = NULL, *pol = NULL;
	void *bundle = NULL;
	size_t blen, nrec;
	char *line, d[72];
	const char *name = a->rest[0];
	int rc;
	if (!c->key)
		return trail_error_set(err, TRAIL_EUSAGE, "adding needs --key KEYFILE");
	if ((rc = trail_signer_load(c->key, &k, err)))
		return rc;
	/* in a store, a contribution takes the datanet's license unless told otherwise */
	if (!c->bundle_only &&
	    ((rc = trail_store_open(c->home, &s, err)) || (rc = trail_datanet_policy(s, name, &def, &pol, err))))
		goto out;
	if (!c->src.license && def)
		c->src.license = json_string_value(json_object_get(def, "license"));
	if ((rc = trail_source_bundle(a->rest + 1, a->nrest - 1, &c->src, name, k, &bundle, &blen, &nrec, err)))
		goto out;
	if (c->bundle_only) {
		trail_digest_str(bundle, blen, d);
		if (!(rc = trail_write_atomic(c->out, bundle, blen, 0644, err)))
			printf("{\"bundle\":\"%s\",\"records\":%zu}\n", d, nrec);
	} else if (!(rc = trail_datanet_contribute(s, name, bundle, blen, k, &receipt, err)) &&
		   !(rc = trail_jcs(receipt, &line, NULL, err))) {
		puts(line);
		trail_free(line);
	}
out:
	json_decref(receipt);
	json_decref(def);
	json_decref(pol);
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
	struct conf c = {.src = {.fetch = {.max_redirects = -1}}};
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
		case O_LICENSE: c.license = c.src.license = v; break;
		case O_KEY: c.key = v; break;
		case O_PERFILE: c.src.per_file = 1; break;
		case O_SHA: c.src.fetch.sha256 = v; break;
		case O_MAXB: rc = trail_parse_long(v, 1, 1LL << 40, &n, "--max-bytes", &err), c.src.fetch.max_bytes = (size_t)n; break;
		case O_TIMEOUT: rc = trail_parse_long(v, 1, 86400, &n, "--timeout", &err), c.src.fetch.timeout_s = (long)n; break;
		case O_ZSTD: c.src.zstd = 1; break;
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
