/*
 * Jobs: what a program does from end to end when it joins subsystems —
 * a training set built from records, mf-train's training run on a datanet
 * snapshot (with the index built as it trains), and attr-score's session.
 */
#ifndef TRAIL_JOB_H
#define TRAIL_JOB_H

#include <signal.h>
#include <stdio.h>

#include <jansson.h>

#include "core/core.h"
#include "model/model.h"
#include "ledger/ledger.h"
#include "data/data.h"
#include "attr/attr.h"

/*
 * Build from records ({"text"} or {"prompt","completion"}, optional
 * "contributor" and, from snapshots, "record"). TRAIL_EDATA names the
 * record that is neither; an empty list is TRAIL_EDATA too.
 */
int trail_dataset_from_records(const json_t *records, const trail_tokenizer *tk,
			       trail_dataset **out, trail_error *err);
/*
 * What mf-train does, as one call: the records (an NDJSON file or a
 * datanet snapshot from the store), the tokenizer, the model (from a config
 * or a base directory), optionally LoRA, training with checkpoints and
 * resume, then the model or adapter directory with training.json; with a
 * store, the output's files as objects and a `model` ledger entry. Also
 * --eval (mean loss) and --merge (base + adapter folded). *result gets the
 * line to print (new reference); with records longer than seq its "long"
 * is {"mode","records","seq"} (and "rows" when split), for a warning.
 */
/*
 * Records longer than --seq: cut at seq tokens (today's rows, the
 * default), split into windows of seq tokens (trail_dataset_split), or
 * refused (TRAIL_EDATA naming the first). The result says how many.
 */
enum { TRAIL_LONG_TRUNCATE, TRAIL_LONG_SPLIT, TRAIL_LONG_ERROR };
/* "truncate", "split", "error" -> TRAIL_LONG_*; -1 if unknown. */
int trail_long_mode(const char *name);

/*
 * The attribution index mf-train writes: every record's gradient at the
 * final weights, one more forward and backward over the records after
 * training (TRAIL_INDEX_AT_FINAL, what attr-score --build-index makes), or
 * each record's row captured in the run's own step at its last visit, before
 * that step's update, the rows no step of this process visited (a run of
 * fewer steps than an epoch, a resumed one) at the final weights
 * (TRAIL_INDEX_AT_LAST_EPOCH: training.json's "index" is {"at":"last-epoch"}
 * and the result's "index_rows" {"captured","final"} counts the rows each
 * way). "last-epoch", "final" -> TRAIL_INDEX_AT_*; -1 if unknown.
 */
enum { TRAIL_INDEX_AT_FINAL, TRAIL_INDEX_AT_LAST_EPOCH };
int trail_index_at(const char *name);

typedef struct trail_train_job {
	const char *init, *base, *adapter, *data, *datanet, *home, *out, *tokenizer, *metrics, *lora, *name;
	long steps, epochs, warmup, checkpoint_every; /* warmup < 0: 5% of the steps */
	int batch, seq, threads;                      /* seq 0: the model's n_positions */
	double lr;                                    /* 0: 3e-4, or 1e-3 for LoRA */
	uint64_t seed;
	int resume, eval, merge, no_index;
	int long_mode;                                /* TRAIL_LONG_*: records longer than seq */
	int index_at;                                 /* TRAIL_INDEX_AT_*: the gradients the index holds */
	FILE *progress;
	volatile sig_atomic_t *stop;
} trail_train_job;
int trail_train_job_run(const trail_train_job *j, json_t **result, trail_error *err);
/* ---- sessions: what attr-score opens once ---------------------------------------- */

typedef struct trail_attr_opts {
	const char *model, *adapter; /* directories */
	const char *index;           /* default: ADAPTER (else MODEL)/attribution.idx */
	const char *data;            /* training records, NDJSON */
	const char *datanet, *home;  /* or a datanet snapshot NAME@SIZE in a store */
	int method, top, min_span, prove;
	uint64_t max_count;          /* rarity filter of spans (0: none) */
	double near;                 /* near-duplicate Jaccard threshold (default 0.8) */
	int shards;                  /* 1: the session scores no noise floor at open (partials carry theirs) */
	int normalize;               /* TRAIL_ATTR_NORM_*: unit-normalised scores (attr-score --normalize) */
	const char *exclude;         /* or NULL: NDJSON lines whose "record"s are left out of top and shares */
	const char *centre;          /* or NULL: reference events (NDJSON) whose mean score each record's is centred on */
} trail_attr_opts;

typedef struct trail_attr_session trail_attr_session;

/*
 * Load the model and adapter, the tokenizer, the index (checked), the
 * training records (their root must be the index's) and the span index
 * (INDEX.span, else built in a temporary file). Every mismatch is a clean
 * TRAIL_EDATA naming both sides; a missing input TRAIL_ENOINPUT.
 */
int trail_attr_session_open(const trail_attr_opts *o, trail_attr_session **out, trail_error *err);
void trail_attr_session_free(trail_attr_session *s);
const trail_attr_ctx *trail_attr_session_ctx(const trail_attr_session *s);
/* One attribution record (with "proofs" when o->prove). */
int trail_attr_session_event(trail_attr_session *s, const json_t *event, json_t **out, trail_error *err);
/* Recompute a record (proofs are checked offline, not recomputed). */
int trail_attr_session_verify(trail_attr_session *s, const json_t *record, trail_error *err);

/*
 * A run of attr-score over events (an array, in order), each routed to the
 * session of its adapter: the adapter's digest ("adapter_digest", else an
 * "adapter" that is a digest) or name ("adapter"), or none (an explicit
 * null: the base model alone). Routes: o as given (the route of events
 * that name nothing), each adapter directory under `adapters` (may be
 * NULL) and the base model. Every event is routed before any is scored, so
 * an event of an adapter not there fails (TRAIL_EDATA) with nothing done;
 * sessions are opened one at a time, for the events routed to them, with
 * the training records given in o, else those the adapter's (or model's)
 * training.json names (a datanet snapshot in o->home, or the data file
 * with that digest). *out: the attribution records in the events' order
 * (new reference). On failure *bad is the index of the event at fault, or
 * (size_t)-1.
 */
int trail_attr_run(const trail_attr_opts *o, const char *adapters, const json_t *events, json_t **out,
		   size_t *bad, trail_error *err);

/*
 * The attribution-batch ledger entry of a run: the exact bytes written
 * (one canonical record and a newline each) stored as an object, and
 * {"type":"attribution-batch","epoch"?,"records":N,"records_object",
 * "indexes":[digests of the indexes used, sorted],"method"} appended.
 * *entry: its index in the ledger.
 */
int trail_attr_record_batch(const char *home, const char *epoch, const json_t *records, const void *bytes,
			    size_t len, uint64_t *entry, trail_error *err);

/*
 * Build the index (o->index) and its span index for an existing model or
 * adapter and its training records. ckpts: directories of checkpoints
 * saved while training (adapters, or models), each a tracin gradient set
 * with weight ckpt_weights[i] (NULL: 1); the final model is the last set.
 */
int trail_attr_build_index(const trail_attr_opts *o, const trail_attr_params *p, int batch,
			   const char *const *ckpts, const double *ckpt_weights, size_t nckpts,
			   trail_error *err);

/*
 * trail_attr_build_index for model m as it is in memory, with tokenizer
 * tk: the model (and adapter) that o->model (and o->adapter) hold, as
 * mf-train has just written them, so the bytes are those of
 * trail_attr_build_index without loading the model a second time.
 * model_digest: o->model's trail_base_digest, when known (NULL: computed).
 * m's gradients and activations are overwritten.
 */
int trail_attr_build_index_for(const trail_attr_opts *o, const trail_attr_params *p, int batch, trail_model *m,
			       const trail_tokenizer *tk, const char *model_digest, trail_error *err);

/* ---- shards (attr_shard.c) ------------------------------------------------------------ */

/*
 * A range of the training records: [lo, hi) (hi 0: to the end), or, when
 * n > 0, shard i of n: [N i / n, N (i + 1) / n). Resolved against N.
 */
typedef struct trail_attr_range {
	uint64_t lo, hi;
	int i, n;
} trail_attr_range;
int trail_attr_range_resolve(const trail_attr_range *r, uint64_t N, size_t *lo, size_t *hi, trail_error *err);
/* "I/N" or "LO:HI" (HI may be empty: to the end) into r. */
int trail_attr_range_parse(const char *s, int shard, trail_attr_range *r, trail_error *err);

/* trail_attr_build_index for the records of r only: a shard (o->index is required), no span index. */
/*
 * The precision training.json of a model or adapter directory records
 * (TRAIL_PREC_*), or -1: what --build-index takes by default, so an index
 * rebuilt for a trained model has the bytes training wrote.
 */
int trail_attr_training_precision(const char *dir);
int trail_attr_build_shard(const trail_attr_opts *o, const trail_attr_params *p, int batch,
			   const char *const *ckpts, const double *ckpt_weights, size_t nckpts,
			   const trail_attr_range *r, trail_error *err);
/*
 * The whole index (o->index, else the default) from its shards
 * (trail_attr_index_merge), checked against the training records, and
 * its span index beside it: the bytes of trail_attr_build_index.
 */
int trail_attr_merge_index(const trail_attr_opts *o, const char *const *shards, size_t n, trail_error *err);

/*
 * Score the records of r for each event (one session, o as given): the
 * partial, NDJSON appended to out. Line 1:
 *   {"type":"attribution-partial","index","root","nrecords","lo","hi",
 *    "method","events","floor"}
 * floor: base64 of the noise-floor queries' float32 scores of records
 * [lo, hi) (TRAIL_ATTR_FLOOR_QUERIES rows, little-endian); then one line
 * per event: {"event": the event as given, "scores": base64 of its
 * float32 scores of [lo, hi)}. Canonical JSON (JCS), one value a line.
 */
int trail_attr_partial(const trail_attr_opts *o, const trail_attr_range *r, const json_t *events, trail_buf *out,
		       size_t *bad, trail_error *err);
/*
 * The attribution records of partials (files, any order): each of the
 * same index (the session's), method and events, the ranges covering
 * every record exactly once (TRAIL_EDATA naming a gap, an overlap or a
 * part given twice); the scores and floors joined in record order and the
 * records made as trail_attr_run makes them: the same bytes. *out: new
 * reference.
 */
int trail_attr_merge(const trail_attr_opts *o, const char *const *parts, size_t n, json_t **out, trail_error *err);

/* ---- the exact audit (attr_exact.c) ---------------------------------------------------- */

/*
 * attr-score --method exact: o->adapter's run replayed from its
 * training.json (refused, TRAIL_EUNAVAIL, for what it cannot replay: a
 * full-model run, bf16, another optimiser; TRAIL_EDATA for missing fields,
 * other records, or a replay that does not end at the adapter's weights
 * bit for bit), then each event's record as trail_attr_run makes them,
 * method "exact", the scores -dQ/deps_i (model.h's metagradients), with
 * params.exact {every, fd_eps, score} and "replay" {model, adapter,
 * training (training.json's digest), training_root, records_order_digest,
 * settings, steps, rows}. Needs fp32 products (trail_compute_set).
 */
int trail_attr_exact_run(const trail_attr_opts *o, const trail_metagrad_opts *mo, const json_t *events, json_t **out,
			 size_t *bad, trail_error *err);
/*
 * The records in bytes [len] (canonical lines, as attr-score writes them)
 * recomputed with their own settings: TRAIL_EVERIFY naming the first byte
 * (and line) that differs; a changed input fails as trail_attr_exact_run does.
 */
int trail_attr_exact_verify(const trail_attr_opts *o, const char *src, const char *bytes, size_t len, trail_error *err);

/* For the merge: a session's noise floor, and a record from all N scores (with proofs when o->prove). */
void trail_attr_session_set_floor(trail_attr_session *s, float floor);
int trail_attr_session_from_scores(trail_attr_session *s, const json_t *event, const float *scores, json_t **out,
				   trail_error *err);

/* ---- datanet-validate's job (validate_job.c) --------------------------------------------- */

/*
 * What a validation run writes, and where (every FILE borrowed, NULL for
 * none): verdicts to out (NULL: stdout), as NDJSON or, with github, as
 * GitHub annotations; accepted (redacted) records to acc; a copy of the
 * NDJSON verdicts to report (for the ledger's validation entry); attr-settle
 * penalty flags of rejected records to flags; {"n","record"} of rejected
 * records appended to rejected (for an approval that names them).
 * progress: 1 always, 0 never, -1 when progress_to is a terminal.
 * default_who: the contributor of records that name none. on_malformed
 * (ctx, error) is told of each malformed line; it is counted and the run
 * goes on.
 */
typedef struct trail_vjob_cfg {
	FILE *out, *acc, *report, *flags, *progress_to;
	json_t *rejected;
	int github, progress, per_file;
	trail_store *store;
	const char *default_who;
	void (*on_malformed)(void *ctx, const trail_error *e);
	void *ctx;
} trail_vjob_cfg;
typedef struct trail_vjob trail_vjob;
/* A run of v (borrowed, as is everything c names); *out: new, free with trail_vjob_free. */
int trail_vjob_new(trail_validator *v, const trail_vjob_cfg *c, trail_vjob **out);
void trail_vjob_free(trail_vjob *r);
/*
 * One input ("-": standard input), read as datanet-add reads it: a bundle
 * (file or store digest; digest gets its digest, else ""), NDJSON or plain
 * text; each record checked, or with approve loaded as approved.
 */
int trail_vjob_input(trail_vjob *r, const char *path, int approve, char digest[72], trail_error *err);
/*
 * The approved records of datanet's snapshot loaded, except those of the
 * bundles being validated: the inputs in[nin], or vm's when merging.
 */
int trail_vjob_load_approved(trail_vjob *r, const char *datanet, const char *const *in, int nin,
			     const trail_vmerge *vm, trail_error *err);
/*
 * --partial: every item of the inputs (files or digests) counted, the
 * partial's header written, then the items of range checked into partial
 * lines (license: the one records that name none were given, recorded).
 */
int trail_vjob_partial(trail_vjob *r, char *const *in, int nin, const trail_attr_range *range, const char *license,
		       trail_error *err);
/* --merge: the partials' verdicts and malformed lines, in input order, delivered as one pass delivers them. */
int trail_vjob_merge(trail_vjob *r, trail_vmerge *m, trail_error *err);
/* The run's summary written (a line, or a notice with github); the counts of accepted and rejected records. */
int trail_vjob_summary(trail_vjob *r, long *accepted, long *rejected);
/* Whether a malformed line was seen. */
int trail_vjob_malformed(const trail_vjob *r);

#endif
