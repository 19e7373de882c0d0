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
/* A malformed line: reported, counted, and the run goes on. */
static void report_malformed(void *ctx, const trail_error *e)
{
	trail_cli_report(ctx, e, stderr);
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	trail_vjob_cfg r = {.progress = -1, .progress_to = stderr, .on_malformed = report_malformed, .ctx = (void *)&cli};
	trail_vjob *job = NULL;
	trail_validator *tv = NULL;
	const char *v, *policy = NULL, *preset = NULL, *license = NULL, *output = NULL, *approved[64];
	const char *home = NULL, *datanet = NULL, *keyfile = NULL, *flags = NULL, *contrib_key = NULL;
	char *flagbuf = NULL;
	size_t flaglen = 0;
	trail_verifier *cv = NULL;
	int o, rc = TRAIL_OK, schema = -1, redact = 0, print = 0, napproved = 0, record = 0, decide = 0;
	int accepted_only = 0, part = 0, merging = 0, ranged = 0, malformed = 0, named = 0;
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
	} else if (!rc && !(rc = trail_validator_new(p, &tv, &err))) {
		if (license && trail_validator_set_license(tv, license))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		if (!rc && output && !(r.acc = open_memstream(&accbuf, &acclen)))
			rc = trail_error_errno(&err, TRAIL_ENOMEM, errno, "open_memstream");
		if (!rc && trail_vjob_new(tv, &r, &job))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
	}
	if (!rc && job && part) {
		rc = trail_vjob_partial(job, a.rest, a.nrest, &range, license, &err);
	} else if (!rc && job) {
		for (int i = 0; !rc && i < napproved; i++)
			rc = trail_vjob_input(job, approved[i], 1, digest, &err);
		if (!rc && merging)
			rc = trail_vmerge_open(tv, (const char *const *)a.rest, (size_t)a.nrest, &vm, &err);
		if (!rc && datanet)
			rc = trail_vjob_load_approved(job, datanet, (const char *const *)a.rest, a.nrest, vm, &err);
		if (!rc && trail_validator_compact(tv))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		for (int i = 0; !rc && !vm && i < (a.nrest ? a.nrest : 1); i++)
			rc = trail_vjob_input(job, a.nrest ? a.rest[i] : "-", 0, digest, &err);
		if (!rc && vm)
			rc = trail_vjob_merge(job, vm, &err);
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
		long acc_n = 0, rej_n = 0;
		if (!rc && trail_vjob_summary(job, &acc_n, &rej_n))
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		malformed = trail_vjob_malformed(job);
		uint64_t entry, contrib;
		if (!rc && r.report && !fclose(r.report)) {
			r.report = NULL;
			rc = trail_datanet_record_validation(r.store, datanet, digest[0] ? digest : NULL, repbuf,
							     replen, acc_n, rej_n, key, &entry, &err);
		}
		if (!rc && decide > 0 && (malformed || (rej_n && !accepted_only)))
			rc = trail_error_set(&err, TRAIL_EVERIFY,
					     "not approved: %ld record(s) rejected%s", rej_n,
					     malformed ? "" : " (--accepted-only approves the others)");
		if (!rc && decide > 0 && accepted_only && !acc_n)
			rc = trail_error_set(&err, TRAIL_EVERIFY, "not approved: no record accepted");
		if (!rc && decide &&
		    !(rc = trail_datanet_contribution_of(r.store, datanet, digest, &contrib, &err)))
			rc = trail_datanet_approve_records(r.store, datanet, contrib, decide > 0,
							   rej_n ? r.rejected : NULL, NULL, key, &entry, &err);
		if (!rc && accepted_only && rej_n)
			named = 1; /* the rejected records are named in the approval: that is the result */
		if (!rc && decide < 0)
			malformed = 0, decide = -2; /* the rejection is recorded: that is the result */
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
		     : decide == -2 || named ? 0 : malformed ? 65 : flags ? 0 : tv && trail_validator_rejected(tv) ? 1 : 0;
	trail_vjob_free(job);
	trail_validator_free(tv);
	trail_policy_free(p);
	trail_args_release(&a);
	return trail_cli_finish(&cli, status);
}
