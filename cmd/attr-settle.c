/* attr-settle: pay an epoch's fees to contributors, exactly and once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "settle/settle.h"
#include "ledger/ledger.h"
#include "job/job.h"

enum { O_POLICY = 1, O_EPOCH, O_KEY, O_HOME, O_DRY, O_VERBOSE, O_FORMAT, O_THREADS, O_BATCH, O_REQUIRE, O_STAKE, O_PARTIAL,
       O_RECORDS, O_SHARD, O_MERGE };

#define BATCH_MAX 64

static const trail_opt opts[] = {
	{O_POLICY, "policy", 'p', "FILE", "fees, split, stakes and penalty rules (JSON)", "file"},
	{O_EPOCH, "epoch", 'e', "ID", "the epoch to settle", NULL},
	{O_KEY, "key", 'k', "KEYFILE", "sign the settlement entry with this key (default: the operator's)", "file"},
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail when it exists)", "dir"},
	{O_DRY, "dry-run", 'n', NULL, "compute and print; record nothing", NULL},
	{O_VERBOSE, "verbose", 'v', NULL, "say on stderr what was done (silent otherwise)", NULL},
	{O_FORMAT, "format", 'f', "FORMAT", "ndjson (default) or text", "ndjson text"},
	{O_THREADS, "threads", 'j', "N", "read with N threads, 1 to 64 (default 2); the same result", NULL},
	{O_BATCH, "batch", 'b', "N", "the i-th names the ledger entry of the i-th input's attribution batch", NULL},
	{O_REQUIRE, "require-batch", 0, NULL, "refuse inputs with records found in no attribution batch", NULL},
	{O_STAKE, "stake", 0, "N", "post a stake of N signed with --key (the staker's) in the ledger, and exit", NULL},
	{O_PARTIAL, "partial", 0, NULL, "account one range of the lines and print its sums for --merge", NULL},
	{O_RECORDS, "records", 0, "LO:HI", "with --partial: the lines LO to HI-1 of the inputs (HI empty: to the end)", NULL},
	{O_SHARD, "shard", 0, "I/N", "with --partial: shard I of N equal ranges of the lines", NULL},
	{O_MERGE, "merge", 0, NULL, "the files are partials: settle the epoch of their inputs", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "attr-settle",
	.usage = "--policy FILE --epoch ID [--key KEYFILE] [--home DIR] [--dry-run] [-v] [--format ndjson|text] "
		 "[--threads N] [--batch N]... [--require-batch] [FILE|-]...\n"
		 "       attr-settle --stake N --key KEYFILE [--home DIR]\n"
		 "       attr-settle --partial --records LO:HI|--shard I/N --policy FILE --epoch ID FILE...\n"
		 "       attr-settle --merge --policy FILE --epoch ID [--key KEYFILE] [--home DIR] [--dry-run] [-v] "
		 "[--format ndjson|text] [--batch N]... [--require-batch] PARTIAL...",
	.summary = "Settle an epoch: fees from attribution records paid to platform, model owners, stakers and "
		   "contributors in exact integers, recorded once in the ledger.",
	.opts = opts,
};

static int feed(trail_settle *s, const char *path, int threads, trail_error *err)
{
	int in = !strcmp(path, "-");
	FILE *f = in ? stdin : fopen(path, "r");
	if (!f)
		return trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", path);
	int rc = trail_settle_read_threads(s, f, in ? "<stdin>" : path, threads, err);
	if (!in)
		fclose(f);
	return rc;
}

/* The whole input, for its digest: a file, or standard input read to its end. */
static int slurp(const char *path, void **out, size_t *len, trail_error *err)
{
	if (strcmp(path, "-"))
		return trail_read_file(path, 0, out, len, err);
	size_t n = 0, cap = 1 << 16;
	char *b = trail_malloc(cap), *nb;
	while (b) {
		n += fread(b + n, 1, cap - n, stdin);
		if (n < cap)
			break;
		if (!(nb = trail_realloc(b, cap *= 2)))
			trail_free(b);
		b = nb;
	}
	if (!b)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (ferror(stdin)) {
		trail_free(b);
		return trail_error_errno(err, TRAIL_EIO, errno, "<stdin>");
	}
	*out = b;
	*len = n;
	return TRAIL_OK;
}

/*
 * An input read from its bytes in memory, then looked up among the
 * ledger's attribution batches by their digest (want: the entry --batch
 * named, else UINT64_MAX).
 */
static int feed_anchored(trail_settle *s, trail_store *st, const char *path, const char *epoch, int threads,
			 uint64_t want, int require, int verbose, trail_error *err)
{
	const char *src = strcmp(path, "-") ? path : "<stdin>";
	void *b = NULL;
	size_t len = 0;
	char dg[TRAIL_DIGEST_STRLEN];
	uint64_t r0 = trail_settle_records(s), at;
	int rc = slurp(path, &b, &len, err);
	if (rc)
		return rc;
	trail_digest_str(b, len, dg);
	FILE *f = len ? fmemopen(b, len, "r") : NULL;
	if (len && !f)
		rc = trail_error_errno(err, TRAIL_ENOMEM, errno, "%s", src);
	else if (f)
		rc = trail_settle_read_threads(s, f, src, threads, err);
	if (f)
		fclose(f);
	uint64_t n = trail_settle_records(s) - r0;
	if (!rc && !(rc = trail_settle_anchor(s, st, epoch, dg, n, want, &at, err))) {
		if (at == UINT64_MAX && require && n)
			rc = trail_error_set(err, TRAIL_EVERIFY, "%s: its %llu records (%s) are in no attribution batch of the ledger",
					     src, (unsigned long long)n, dg);
		else if (verbose && at != UINT64_MAX)
			fprintf(stderr, "attr-settle: %s: %llu records, the attribution batch at entry %llu\n", src,
				(unsigned long long)n, (unsigned long long)at);
		else if (verbose && n)
			fprintf(stderr, "attr-settle: %s: %llu records in no attribution batch\n", src, (unsigned long long)n);
	}
	trail_free(b);
	return rc;
}

/* --partial: every line of the inputs counted (and each input's digest), then the range accounted. */
static int partial(trail_settle *s, const char *epoch, char *const *in, int nin, const trail_attr_range *range,
		   trail_error *err)
{
	json_t *inputs = json_array(), *recs = json_array();
	trail_buf out = {0};
	uint64_t at = 0;
	size_t lo = 0, hi = 0;
	char dg[TRAIL_DIGEST_STRLEN];
	int rc = inputs && recs ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!rc && !nin)
		rc = trail_error_set(err, TRAIL_EUSAGE, "--partial reads files: name them");
	for (int pass = 0; pass < 2 && !rc; pass++) {
		if (pass && !(rc = trail_attr_range_resolve(range, at, &lo, &hi, err)))
			at = 0;
		for (int i = 0; i < nin && !rc; i++) {
			FILE *f = strcmp(in[i], "-") ? fopen(in[i], "r") : NULL;
			uint64_t a0 = at, r0 = trail_settle_records(s);
			if (!strcmp(in[i], "-"))
				rc = trail_error_set(err, TRAIL_EUSAGE, "--partial reads files, not standard input");
			else if (!f)
				rc = trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", in[i]);
			else if (!(rc = trail_settle_read_range(s, f, in[i], &at, lo, hi, pass ? NULL : dg, err)) &&
				 json_array_append_new(pass ? recs : inputs,
						       pass ? json_integer((json_int_t)(trail_settle_records(s) - r0))
							    : json_pack("{s:s, s:s, s:I}", "name", in[i], "digest", dg, "lines",
									(json_int_t)(at - a0))))
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			if (f)
				fclose(f);
		}
	}
	if (!rc && !(rc = trail_settle_partial(s, epoch, inputs, recs, at, lo, hi, &out, err)) &&
	    fwrite(out.p, 1, out.n, stdout) != out.n)
		rc = trail_error_errno(err, TRAIL_EIO, errno, "<stdout>");
	trail_buf_release(&out);
	json_decref(inputs);
	json_decref(recs);
	return rc;
}

/* --merge: the partials' sums, then with a store each input looked up among the attribution batches as one pass does. */
static int merge(trail_settle *s, trail_store *st, const char *epoch, char *const *parts, int n, const uint64_t *batch,
		 int nbatch, int require, int verbose, trail_error *err)
{
	json_t *ins = NULL;
	int rc = trail_settle_merge(s, epoch, (const char *const *)parts, (size_t)n, &ins, err);
	if (!rc && (size_t)nbatch > json_array_size(ins))
		rc = trail_error_set(err, TRAIL_EUSAGE, "--batch: more than there are inputs");
	for (size_t i = 0; !rc && st && i < json_array_size(ins); i++) {
		json_t *in = json_array_get(ins, i);
		const char *src = json_string_value(json_object_get(in, "name"));
		uint64_t k = (uint64_t)json_integer_value(json_object_get(in, "records")), at;
		if ((rc = trail_settle_anchor(s, st, epoch, json_string_value(json_object_get(in, "digest")), k,
					      i < (size_t)nbatch ? batch[i] : UINT64_MAX, &at, err)))
			break;
		if (at == UINT64_MAX && (require || nbatch) && k)
			rc = trail_error_set(err, TRAIL_EVERIFY, "%s: its %llu records (%s) are in no attribution batch of the ledger",
					     src, (unsigned long long)k, json_string_value(json_object_get(in, "digest")));
		else if (verbose && at != UINT64_MAX)
			fprintf(stderr, "attr-settle: %s: %llu records, the attribution batch at entry %llu\n", src,
				(unsigned long long)k, (unsigned long long)at);
		else if (verbose && k)
			fprintf(stderr, "attr-settle: %s: %llu records in no attribution batch\n", src, (unsigned long long)k);
	}
	json_decref(ins);
	return rc;
}

static int print(const json_t *res, int text)
{
	size_t i;
	json_t *l;
	if (text)
		return trail_settle_print_text(res, stdout);
	json_array_foreach(res, i, l) {
		char *s;
		int rc = trail_jcs(l, &s, NULL, NULL);
		if (rc)
			return rc;
		puts(s);
		trail_free(s);
	}
	return TRAIL_OK;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	const char *v, *policy = NULL, *epoch = NULL, *keyf = NULL, *home = NULL, *what = "computed, not recorded";
	int o, rc = TRAIL_OK, dry = 0, verbose = 0, text = 0, recorded = 0, threads = 2, require = 0, nbatch = 0;
	long long stake = -1;
	int part = 0, merging = 0, ranged = 0;
	trail_attr_range range = {0};
	uint64_t batch[BATCH_MAX];
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
		case O_REQUIRE: require = 1; break;
		case O_STAKE: rc = trail_parse_long(v, 0, ((long long)1 << 53) - 1, &stake, "--stake", &err); break;
		case O_BATCH: {
			char *end;
			unsigned long long n = strtoull(v, &end, 10);
			if (*end || !*v || *v == '-' || nbatch == BATCH_MAX)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--batch: a ledger index, at most %d times", BATCH_MAX);
			else
				batch[nbatch++] = n;
			break;
		}
		case O_THREADS: {
			char *end;
			long n = strtol(v, &end, 10);
			if (*end || n < 1 || n > 64)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--threads: a number from 1 to 64");
			threads = (int)n;
			break;
		}
		case O_PARTIAL: part = 1; break;
		case O_MERGE: merging = 1; break;
		case O_RECORDS:
		case O_SHARD:
			rc = ranged++ ? trail_error_set(&err, TRAIL_EUSAGE, "--records and --shard: give one, once")
				      : trail_attr_range_parse(v, o == O_SHARD, &range, &err);
			break;
		}
	}
	if (!rc && (part || ranged) && (!part || !ranged))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--partial goes with --records LO:HI or --shard I/N");
	if (!rc && stake >= 0 && (part || merging))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--stake posts a stake: not with --partial or --merge");
	if (!rc && part && (merging || keyf || home || nbatch || require || text))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--partial only reads: --merge settles, records and prints");
	if (rc || o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o == TRAIL_ARGS_EXIT)
		goto done;
	else if (stake >= 0)
		goto post;
	else if (!policy || !epoch || !*epoch)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--policy FILE and --epoch ID are required");
	if (!rc && !merging && nbatch > (a.nrest ? a.nrest : 1))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--batch: more than there are inputs");
	if (!rc && !(rc = trail_read_file(policy, 1 << 20, &pb, &pl, &err)) &&
	    !(rc = trail_json_parse(pb, pl, policy, &pol, &err)) && !(rc = trail_settle_new(pol, &s, &err)) &&
	    !(rc = keyf ? trail_signer_load(keyf, &key, &err) : TRAIL_OK)) {
		/* a store named (--home, $TRAIL_HOME) must exist; ./.trail is used when it does */
		const char *h = trail_store_home(home);
		char *cfg = trail_path(h, "config.json");
		struct stat sb;
		if (!cfg)
			rc = trail_error_set(&err, TRAIL_ENOMEM, "out of memory");
		else if (part)
			; /* a shard reads its lines, nothing else (the merge reads the ledger's stakes) */
		else if ((!dry || nbatch || require || trail_settle_stakes_from_ledger(s)) &&
			 (home || getenv("TRAIL_HOME") || stat(cfg, &sb) == 0))
			rc = trail_store_open(h, &st, &err);
		else if (nbatch || require)
			rc = trail_error_set(&err, TRAIL_EUSAGE, "--batch and --require-batch need a store (--home)");
		else if (trail_settle_stakes_from_ledger(s))
			rc = trail_error_set(&err, TRAIL_EUSAGE, "the policy's stakes are the ledger's: a store is needed (--home)");
		trail_free(cfg);
	}
	if (!rc && s && part) {
		rc = partial(s, epoch, a.rest, a.nrest, &range, &err);
		goto done;
	}
	if (!rc && st)
		rc = trail_settle_ledger_stakes(s, st, epoch, &err);
	if (!rc && s && merging)
		rc = merge(s, st, epoch, a.rest, a.nrest, batch, nbatch, require, verbose, &err);
	/* with a store, each input is looked up among the attribution batches by the digest of its bytes */
	for (int i = 0; !rc && s && !merging && i < (a.nrest ? a.nrest : 1); i++) {
		const char *in = a.nrest ? a.rest[i] : "-";
		rc = st ? feed_anchored(s, st, in, epoch, threads, i < nbatch ? batch[i] : UINT64_MAX, require || nbatch,
					verbose, &err)
			: feed(s, in, threads, &err);
	}
	if (!rc && st && !dry) {
		rc = trail_settle_record(s, st, epoch, key, &res, &recorded, &err);
		what = recorded ? "settled before with these inputs: the recorded result" : "settled and recorded";
	}
	if (!rc && !res)
		rc = trail_settle_result(s, epoch, &res, &err);
	if (!rc && (rc = print(res, text)))
		trail_error_set(&err, rc, "cannot write the result");
	if (!rc && verbose) {
		json_t *ep = json_array_get(res, json_array_size(res) - 1);
		fprintf(stderr, "attr-settle: epoch %s: %s; %lld records, fees %lld, paid %lld, retained %lld\n", epoch,
			what, (long long)trail_settle_records(s),
			(long long)json_integer_value(json_object_get(ep, "fees")),
			(long long)json_integer_value(json_object_get(ep, "paid")),
			(long long)json_integer_value(json_object_get(ep, "retained")));
	}
	goto done;
post:
	/* a staker posts a stake: signed by its own key, appended to the ledger */
	if (!keyf) {
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--stake needs --key, the staker's key");
	} else if (!(rc = trail_signer_load(keyf, &key, &err)) && !(rc = trail_store_open(trail_store_home(home), &st, &err))) {
		uint64_t at;
		if (!(rc = trail_settle_post_stake(st, key, stake, &at, &err))) {
			printf("%llu\n", (unsigned long long)at);
			if (verbose)
				fprintf(stderr, "attr-settle: stake %lld of %s posted at entry %llu\n", stake,
					trail_signer_name(key), (unsigned long long)at);
		}
	}
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
