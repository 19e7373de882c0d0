/* attr-score: attribute inference events to training records and contributors. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "attr/attr.h"
#include "core/core.h"
#include "ledger/ledger.h"
#include "job/job.h"

enum { O_MODEL = 1, O_ADAPTER, O_INDEX, O_METHOD, O_TOP, O_MINSPAN, O_MAXCOUNT, O_NEAR, O_DATA, O_DATANET, O_HOME,
       O_VERIFY, O_PROVE, O_BUILD, O_PROJ, O_SEED, O_DAMPING, O_SEQ, O_BATCH, O_CKPT, O_THREADS, O_ADAPTERS, O_RECORD,
       O_EPOCH, O_SHARD, O_RECORDS, O_PARTIAL, O_MERGE, O_MERGEIDX, O_PREC, O_EVERY, O_FDEPS, O_NORMALIZE, O_EXCLUDE,
       O_GENERIC, O_CENTRE, O_SAMPLES, O_LOWINFO };

static const trail_opt opts[] = {
	{O_MODEL, "model", 'm', "BASE", "the base model: a directory, or a GGUF file", "file"},
	{O_ADAPTER, "adapter", 'a', "DIR", "the LoRA adapter directory", "dir"},
	{O_ADAPTERS, "adapters", 0, "DIR", "adapter directories: each event is scored with its own adapter's index", "dir"},
	{O_INDEX, "index", 'i', "FILE", "the attribution index (default ADAPTER or MODEL/attribution.idx)", "file"},
	{O_METHOD, "method", 0, "M", "ekfac (default), influence, graddot, datainf, tracin, or exact (the audit: differentiate through the replayed training run)", "ekfac influence graddot datainf tracin exact"},
	{O_EVERY, "every", 0, "S", "with --method exact: store the replay's state every S steps (default sqrt of the steps)", NULL},
	{O_FDEPS, "fd-eps", 0, "X", "with --method exact: the Hessian-vector products' finite-difference step, relative (default 1e-3)", NULL},
	{O_SAMPLES, "samples", 0, "K", "with --method exact: the mean derivative over K seeded half-runs (default 0: the run's own)", NULL},
	{O_TOP, "top", 'k', "K", "records listed in top, whose scores make the shares (default 10)", NULL},
	{O_MINSPAN, "min-span", 0, "N", "shortest verbatim span reported, in tokens (default 8)", NULL},
	{O_MAXCOUNT, "max-count", 0, "N", "report spans that occur at most N times in training (default 16; 0: all)", NULL},
	{O_NORMALIZE, "normalize", 0, "none|unit", "unit: each record's score divided by its gradient's norm, against farming (default none)", "none unit"},
	{O_CENTRE, "centre", 0, "FILE", "subtract from each record's score its mean over FILE's events (held-out queries or the epoch's own), against farming", "file"},
	{O_EXCLUDE, "exclude", 0, "FILE", "leave the records named by FILE's lines (\"record\") out of top and shares", "file"},
	{O_GENERIC, "flag-generic", 0, "F", "read held-out events; print a flags line for each record in the top of more than F of them", NULL},
	{O_LOWINFO, "flag-low-info", 0, "K", "print a flags line for each record whose words say K median deviations less than the datanet's typical (word lists, boilerplate)", NULL},
	{O_NEAR, "near", 0, "J", "near-duplicate threshold, Jaccard of 8-token shingles (default 0.8)", NULL},
	{O_DATA, "data", 'd', "FILE", "the training records (NDJSON)", "file"},
	{O_DATANET, "datanet", 0, "NAME@SIZE", "the training records: a datanet snapshot in the store", NULL},
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail); records an attribution-batch entry", "dir"},
	{O_RECORD, "record", 0, NULL, "record an attribution-batch entry in the default store", NULL},
	{O_EPOCH, "epoch", 0, "ID", "the epoch the attribution-batch entry names", NULL},
	{O_VERIFY, "verify", 0, NULL, "read attribution records, recompute them; exit 1 on any difference", NULL},
	{O_PROVE, "prove", 0, NULL, "add each top record's proof chain (needs --datanet)", NULL},
	{O_BUILD, "build-index", 0, NULL, "build the index (and INDEX.span) for the model and records", NULL},
	{O_PROJ, "proj", 0, "KIN,KOUT", "with --build-index: projected sizes per layer (default 64,64, halved until 65,536 dimensions in all)", NULL},
	{O_SEED, "seed", 0, "S", "with --build-index: projection seed (default 1)", NULL},
	{O_DAMPING, "damping", 0, "X", "with --build-index: relative damping (default 0.01)", NULL},
	{O_SEQ, "seq", 0, "T", "with --build-index: tokens per record (default: as trained)", NULL},
	{O_BATCH, "batch", 0, "B", "with --build-index: records per forward pass (default 8)", NULL},
	{O_CKPT, "checkpoint", 0, "DIR[:W]", "with --build-index: a checkpoint for tracin, weight W (repeatable)", "dir"},
	/* shards: by record range, merged exactly */
	{O_SHARD, "shard", 0, "I/N", "with --build-index or --partial: records [N_rec I/N, N_rec (I+1)/N) only", NULL},
	{O_RECORDS, "records", 0, "LO:HI", "with --build-index or --partial: records [LO, HI) only (HI empty: to the end)", NULL},
	{O_PARTIAL, "partial", 0, NULL, "score the events against the records of --shard/--records; print the partial", NULL},
	{O_MERGE, "merge", 0, NULL, "read partials (the files), print the attribution records of the whole index", NULL},
	{O_MERGEIDX, "merge-index", 0, NULL, "merge index shards (the files) into the index and its span index", NULL},
	{O_THREADS, "threads", 0, "N", "threads for scoring (default: every CPU this process may use; records do not depend on it) and for --build-index (default 1)", NULL},
	{O_PREC, "precision", 0, "fp32|bf16", "the gradients' products (default: for --build-index the model's training.json's, else bf16 where the CPU has bf16 dot products, else fp32), recorded in each record's params", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "attr-score",
	.usage = "--model DIR [--adapter DIR] [--index FILE] [--method M] [--top K] --data FILE|--datanet NAME@SIZE [--prove]\n"
		 "    [--record] [--epoch ID] [file...]\n"
		 "--model DIR --adapters DIR [--data FILE|--datanet NAME@SIZE] [--record] [--epoch ID] [file...]\n"
		 "--verify --model DIR [--adapter DIR] --data FILE|--datanet NAME@SIZE [file...]\n"
		 "--method exact [--every S] [--fd-eps X] [--samples K] [--verify] --model DIR --adapter DIR --data FILE|--datanet NAME@SIZE [file...]\n"
		 "--build-index --model DIR [--adapter DIR] --data FILE|--datanet NAME@SIZE [--proj KIN,KOUT] [--checkpoint DIR]...\n"
		 "    [--shard I/N|--records LO:HI --index FILE]\n"
		 "--merge-index --model DIR [--adapter DIR] --data FILE|--datanet NAME@SIZE [--index FILE] shard...\n"
		 "--partial --shard I/N|--records LO:HI --model DIR [--adapter DIR] --data FILE|--datanet NAME@SIZE [file...]\n"
		 "--merge --model DIR [--adapter DIR] --data FILE|--datanet NAME@SIZE [--prove] [--record] partial...",
	.summary = "Attribute inference events to the training records and contributors that shaped them.",
	.opts = opts,
};

#define MAXCK 64

/* --verify: each record recomputed; every difference named, then exit 1. */
static int verify_stream(trail_attr_session *s, FILE *f, const char *src, trail_error *err)
{
	trail_ndjson *r = trail_ndjson_new(f, src, 0);
	json_t *v = NULL;
	int rc = r ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory"), bad = 0;
	while (!rc && !(rc = trail_ndjson_next(r, &v, err)) && v) {
		long line = trail_ndjson_lineno(r);
		rc = trail_attr_session_verify(s, v, err);
		if (rc == TRAIL_EVERIFY) { /* report it and go on: every difference is named */
			fprintf(stderr, "attr-score: %s:%ld: %s\n", src, line, err->msg);
			bad = 1;
			rc = TRAIL_OK;
		}
		if (rc && !err->source[0])
			trail_error_at(err, rc, src, line, "%s", err->msg);
		json_decref(v);
	}
	trail_ndjson_free(r);
	return rc ? rc : bad ? trail_error_set(err, TRAIL_EVERIFY, "verification failed") : TRAIL_OK;
}

/* --verify --method exact: each file's bytes recomputed (stdin without files). */
static int verify_exact(const trail_attr_opts *o, const char *const *files, int n, trail_error *err)
{
	int rc = TRAIL_OK;
	for (int i = 0; !rc && i < (n ? n : 1); i++) {
		const char *src = n ? files[i] : "/dev/stdin";
		void *buf = NULL;
		size_t len;
		if (!(rc = trail_read_file(src, (size_t)1 << 32, &buf, &len, err)))
			rc = trail_attr_exact_verify(o, n ? src : "<stdin>", buf, len, err);
		trail_free(buf);
	}
	/* a model, adapter, training run or records that do not match is a difference too */
	return rc == TRAIL_EDATA || rc == TRAIL_EUNAVAIL ? (err->code = TRAIL_EVERIFY) : rc;
}

/* Every event of f, with where it came from (lines: "src:line" per event). */
static int read_events(FILE *f, const char *src, json_t *events, json_t *where, trail_error *err)
{
	trail_ndjson *r = trail_ndjson_new(f, src, 0);
	json_t *v = NULL;
	int rc = r ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	while (!rc && !(rc = trail_ndjson_next(r, &v, err)) && v) {
		if (json_array_append_new(events, v) ||
		    json_array_append_new(where, json_pack("[s, I]", src, (json_int_t)trail_ndjson_lineno(r))))
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	trail_ndjson_free(r);
	return rc;
}

/*
 * Score: all events read and routed first, then the records written at
 * once, so that a failure writes nothing; with a store, the batch entry.
 */
/* The error of event `bad` at its source line. */
static void at_event(json_t *where, size_t bad, int rc, trail_error *err)
{
	if (rc && bad != (size_t)-1 && !err->source[0]) {
		json_t *w = json_array_get(where, bad);
		trail_error_at(err, rc, json_string_value(json_array_get(w, 0)), (long)json_integer_value(json_array_get(w, 1)),
			       "%s", err->msg);
	}
}

/* The bytes of out to stdout, flushed. */
static int put_out(const trail_buf *out, trail_error *err)
{
	if (out->n && fwrite(out->p, 1, out->n, stdout) != out->n)
		return trail_error_errno(err, TRAIL_EIO, errno, "<stdout>");
	if (fflush(stdout))
		return trail_error_errno(err, TRAIL_EIO, errno, "<stdout>");
	return TRAIL_OK;
}

static int emit(int rc, json_t *recs, const char *home, const char *epoch, trail_error *err);

static int score(const trail_attr_opts *o, const char *adapters, json_t *events, json_t *where, const char *home,
		 const char *epoch, trail_error *err)
{
	json_t *recs = NULL;
	size_t bad;
	int rc = trail_attr_run(o, adapters, events, &recs, &bad, err);
	at_event(where, bad, rc, err);
	return emit(rc, recs, home, epoch, err);
}

/* The records written at once (nothing on failure); with a store, the batch entry. recs is released. */
static int emit(int rc, json_t *recs, const char *home, const char *epoch, trail_error *err)
{
	json_t *r;
	trail_buf out = {0};
	size_t i;
	json_array_foreach(recs, i, r) {
		char *t = NULL;
		size_t n;
		if (rc || (rc = trail_jcs(r, &t, &n, err)))
			break;
		if (trail_buf_put(&out, t, n) || trail_buf_put(&out, "\n", 1))
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		trail_free(t);
	}
	if (!rc)
		rc = put_out(&out, err);
	uint64_t entry;
	if (!rc && home && json_array_size(recs) &&
	    !(rc = trail_attr_record_batch(home, epoch, recs, out.p, out.n, &entry, err)))
		fprintf(stderr, "attr-score: %zu records in ledger entry %llu\n", json_array_size(recs),
			(unsigned long long)entry);
	trail_buf_release(&out);
	json_decref(recs);
	return rc;
}

/*
 * --flag-generic: the flags lines of the records in the top of more than frac
 * of the events; --flag-low-info (events NULL): those of low information.
 */
static int flag_generic(const trail_attr_opts *o, const json_t *events, double frac, trail_error *err)
{
	trail_attr_session *s = NULL;
	json_t *flags = NULL, *v;
	size_t i;
	int rc = trail_attr_session_open(o, &s, err);
	if (!rc)
		rc = events ? trail_attr_generic(trail_attr_session_ctx(s), events, frac, &flags, err)
			    : trail_attr_low_info(trail_attr_session_ctx(s), frac, &flags, err);
	json_array_foreach(flags, i, v) {
		char *t = NULL;
		size_t n;
		if (rc || (rc = trail_jcs(v, &t, &n, err)))
			break;
		if (fwrite(t, 1, n, stdout) != n || putchar('\n') == EOF)
			rc = trail_error_errno(err, TRAIL_EIO, errno, "stdout");
		trail_free(t);
	}
	json_decref(flags);
	trail_attr_session_free(s);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	trail_attr_opts o = {.method = TRAIL_ATTR_EKFAC, .top = 10, .min_span = 8, .max_count = 16, .near = 0.8};
	trail_attr_params p = {.seed = 1, .damping = 0.01}; /* k 0 x 0: the automatic projection */
	const char *v, *ck[MAXCK];
	double ckw[MAXCK];
	long long n, threads = 0, batch = 8, nck = 0; /* 0: the default, which depends on the job */
	double generic = -1, lowinfo = -1;
	int op, rc = TRAIL_OK, verify = 0, build = 0, record = 0, partial = 0, merge = 0, mergeidx = 0, ranged = 0, prec = -1;
	trail_attr_range range = {0};
	trail_metagrad_opts mo = {0};
	const char *adapters = NULL, *epoch = NULL;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (op = trail_args_next(&a, &v, &err)) > 0) {
		switch (op) {
		case O_MODEL: o.model = v; break;
		case O_ADAPTER: o.adapter = v; break;
		case O_INDEX: o.index = v; break;
		case O_METHOD:
			if ((o.method = trail_attr_method(v)) < 0)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--method: '%s' is not ekfac, influence, graddot, datainf, tracin or exact", v);
			break;
		case O_TOP: rc = trail_parse_long(v, 1, 100000, &n, "--top", &err), o.top = (int)n; break;
		case O_MINSPAN: rc = trail_parse_long(v, 1, 1 << 20, &n, "--min-span", &err), o.min_span = (int)n; break;
		case O_MAXCOUNT: rc = trail_parse_long(v, 0, INT64_MAX, &n, "--max-count", &err), o.max_count = (uint64_t)n; break;
		case O_NORMALIZE:
			if ((o.normalize = trail_attr_normalize_mode(v)) < 0)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--normalize: '%s' is not none or unit", v);
			break;
		case O_EXCLUDE: o.exclude = v; break;
		case O_CENTRE: o.centre = v; break;
		case O_GENERIC: rc = trail_parse_double(v, 0, 1, &generic, "--flag-generic", &err); break;
		case O_LOWINFO: rc = trail_parse_double(v, 0, 1e6, &lowinfo, "--flag-low-info", &err); break;
		case O_NEAR: rc = trail_parse_double(v, 0.01, 1, &o.near, "--near", &err); break;
		case O_DATA: o.data = v; break;
		case O_DATANET: o.datanet = v; break;
		case O_HOME: o.home = v, record = 1; break;
		case O_RECORD: record = 1; break;
		case O_EPOCH: epoch = v; break;
		case O_ADAPTERS: adapters = v; break;
		case O_VERIFY: verify = 1; break;
		case O_PROVE: o.prove = 1; break;
		case O_BUILD: build = 1; break;
		case O_PROJ:
			if (sscanf(v, "%d,%d", &p.k_in, &p.k_out) != 2 || p.k_in < 1 || p.k_out < 1)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--proj: give KIN,KOUT");
			break;
		case O_SEED: rc = trail_parse_long(v, 0, INT64_MAX, &n, "--seed", &err), p.seed = (uint64_t)n; break;
		case O_DAMPING: rc = trail_parse_double(v, 1e-9, 1e6, &p.damping, "--damping", &err); break;
		case O_SEQ: rc = trail_parse_long(v, 2, 1 << 20, &n, "--seq", &err), p.seq = (int)n; break;
		case O_BATCH: rc = trail_parse_long(v, 1, 4096, &batch, "--batch", &err); break;
		case O_SHARD: rc = trail_attr_range_parse(v, 1, &range, &err), ranged = 1; break;
		case O_RECORDS: rc = trail_attr_range_parse(v, 0, &range, &err), ranged = 1; break;
		case O_PARTIAL: partial = 1; break;
		case O_MERGE: merge = 1; break;
		case O_MERGEIDX: mergeidx = 1; break;
		case O_THREADS: rc = trail_parse_long(v, 1, 256, &threads, "--threads", &err); break;
		case O_PREC:
			if (!(rc = trail_precision_parse(v, &prec, &err)) && prec == TRAIL_PREC_INT8)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--precision int8 is for serving (lora-serve); attr-score takes fp32 or bf16");
			break;
		case O_EVERY: rc = trail_parse_long(v, 1, 1L << 40, &n, "--every", &err), mo.every = (long)n; break;
		case O_FDEPS: rc = trail_parse_double(v, 1e-8, 0.1, &mo.fd_eps, "--fd-eps", &err); break;
		case O_SAMPLES: rc = trail_parse_long(v, 1, 4096, &n, "--samples", &err), mo.samples = (long)n; break;
		case O_CKPT: {
			if (nck == MAXCK) {
				rc = trail_error_set(&err, TRAIL_EUSAGE, "at most %d checkpoints", MAXCK);
				break;
			}
			char *c = strrchr(v, ':');
			ckw[nck] = c ? atof(c + 1) : 1.0;
			ck[nck++] = c ? strndup(v, (size_t)(c - v)) : v;
			break;
		}
		}
	}
	o.home = trail_store_home(o.home);
	if (rc || op == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (op == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (!o.model || (o.data && o.datanet) || (!adapters && !o.data == !o.datanet) ||
		 verify + build + o.prove > 1 || (build && a.nrest) || (adapters && (verify || build || o.index)))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "give --model and one of --data/--datanet (or --adapters DIR); "
				     "--verify, --prove and --build-index do not go together, nor --adapters with them "
				     "or --index");
	else if (verify + build + partial + merge + mergeidx > 1 || (ranged && !build && !partial) ||
		 (o.prove && !merge && (partial || mergeidx)) || (adapters && (partial || merge || mergeidx)) ||
		 ((merge || mergeidx) && !a.nrest) ||
		 ((generic >= 0 || lowinfo >= 0) && (adapters || verify || build || partial || merge || mergeidx || record ||
						     (generic >= 0 && lowinfo >= 0))))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--verify, --build-index, --partial, --merge and --merge-index "
				     "do not go together, nor --flag-generic or --flag-low-info with any of them, "
				     "each other, --adapters or --record; "
				     "--shard/--records go with --build-index or --partial; --merge "
				     "and --merge-index read the files named");
	else if (o.centre && (build || mergeidx || merge || partial || adapters || o.method == TRAIL_ATTR_EXACT))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--centre scores one index whole: not with --build-index, "
				     "--merge-index, --merge, --partial, --adapters or --method exact");
	else if (o.method == TRAIL_ATTR_EXACT && (build || mergeidx || merge || partial || adapters || o.prove || prec == TRAIL_PREC_BF16))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--method exact scores or verifies at fp32, one adapter: not with "
				     "--build-index, --merge-index, --merge, --partial, --adapters, --prove or --precision bf16");
	else if (o.method != TRAIL_ATTR_EXACT && (mo.every || mo.fd_eps || mo.samples))
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--every, --fd-eps and --samples go with --method exact");
	else {
		if (o.method == TRAIL_ATTR_EXACT)
			prec = TRAIL_PREC_FP32;
		/* an index is built with BLAS splitting gradients: its bits follow the count, so 1 unless asked */
		if (!threads)
			threads = build || mergeidx ? 1 : trail_cpu_count();
		if (prec < 0 && (build || mergeidx) && o.model)
			prec = trail_attr_training_precision(o.adapter ? o.adapter : o.model);
		rc = trail_compute_set((int)threads, prec < 0 ? trail_precision_default() : prec, &err);
		if (rc)
			;
		else if (build)
			rc = trail_attr_build_shard(&o, &p, (int)batch, ck, ckw, (size_t)nck, ranged ? &range : NULL, &err);
		else if (lowinfo >= 0)
			rc = flag_generic(&o, NULL, lowinfo, &err);
		else if (mergeidx)
			rc = trail_attr_merge_index(&o, (const char *const *)a.rest, (size_t)a.nrest, &err);
		else if (merge) {
			json_t *recs = NULL;
			rc = trail_attr_merge(&o, (const char *const *)a.rest, (size_t)a.nrest, &recs, &err);
			rc = emit(rc, recs, record ? o.home : NULL, epoch, &err);
		}
		else if (verify && o.method == TRAIL_ATTR_EXACT)
			rc = verify_exact(&o, a.nrest ? (const char *const *)a.rest : NULL, a.nrest, &err);
		else if (verify) {
			trail_attr_session *s = NULL;
			if (!(rc = trail_attr_session_open(&o, &s, &err)))
				for (int i = 0; !rc && i < (a.nrest ? a.nrest : 1); i++) {
					const char *src = a.nrest ? a.rest[i] : "-";
					FILE *f = strcmp(src, "-") ? fopen(src, "r") : stdin;
					if (!f)
						rc = trail_error_errno(&err, TRAIL_ENOINPUT, errno, "%s", src);
					else {
						rc = verify_stream(s, f, f == stdin ? "<stdin>" : src, &err);
						if (f != stdin)
							fclose(f);
					}
				}
			trail_attr_session_free(s);
			/* verifying against a model, index or records that do not match is a difference too */
			if (rc == TRAIL_EDATA || rc == TRAIL_EVERIFY)
				rc = err.code = TRAIL_EVERIFY;
		} else {
			json_t *events = json_array(), *where = json_array();
			for (int i = 0; !rc && i < (a.nrest ? a.nrest : 1); i++) {
				const char *src = a.nrest ? a.rest[i] : "-";
				FILE *f = strcmp(src, "-") ? fopen(src, "r") : stdin;
				if (!f)
					rc = trail_error_errno(&err, TRAIL_ENOINPUT, errno, "%s", src);
				else {
					rc = read_events(f, f == stdin ? "<stdin>" : src, events, where, &err);
					if (f != stdin)
						fclose(f);
				}
			}
			if (!rc && generic >= 0)
				rc = flag_generic(&o, events, generic, &err);
			else if (!rc && partial) {
				trail_buf out = {0};
				size_t bad;
				rc = trail_attr_partial(&o, ranged ? &range : NULL, events, &out, &bad, &err);
				at_event(where, bad, rc, &err);
				if (!rc)
					rc = put_out(&out, &err);
				trail_buf_release(&out);
			} else if (!rc && o.method == TRAIL_ATTR_EXACT) {
				json_t *recs = NULL;
				size_t bad;
				rc = trail_attr_exact_run(&o, &mo, events, &recs, &bad, &err);
				at_event(where, bad, rc, &err);
				rc = emit(rc, recs, record ? o.home : NULL, epoch, &err);
			} else if (!rc)
				rc = score(&o, adapters, events, where, record ? o.home : NULL, epoch, &err);
			json_decref(events), json_decref(where);
		}
	}
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
