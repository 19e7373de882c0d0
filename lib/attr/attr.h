/*
 * The span engine: a suffix array over a tokenised training set, to find
 * the maximal spans of an answer that occur verbatim in training data, with
 * their counts and the records they occur in (the infini-gram idea).
 *
 * File layout (little-endian, mmap-able; all sections 8-byte aligned):
 *   header   magic "TRLSPAN\0", u32 version (1), u32 reserved,
 *            u64 ntokens, u64 nrecords, u32 vocab, u32 reserved,
 *            32-byte training-set root (the caller's, e.g. the Merkle root
 *            over record ids), 32-byte SHA-256 of everything after the header
 *   tokens   u32[ntokens]: each record's tokens followed by a separator
 *            (vocab + record index, so no two separators are equal and no
 *            match crosses a record boundary)
 *   starts   u64[nrecords + 1]: offset of each record in tokens
 *   sa       u32[ntokens]: suffix array (ntokens < 2^32)
 *
 * Ownership: the index handle owns its mapping; spans returned by
 * trail_span_match are one trail_malloc'd array (records included), freed
 * with trail_free.
 */
#ifndef TRAIL_ATTR_H
#define TRAIL_ATTR_H
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#define TRAIL_SPAN_MAX_RECORDS 16 /* record ids listed per span */

/* Build an index over nrec records (token arrays) and write it atomically. */
int trail_span_build(const int32_t *const *recs, const size_t *lens, size_t nrec,
		     uint32_t vocab, const uint8_t root[32], const char *path, trail_error *err);

typedef struct trail_span_index trail_span_index;

/* Open (mmap) and check an index: magic, version, sizes, content digest. */
int trail_span_open(const char *path, trail_span_index **out, trail_error *err);
void trail_span_free(trail_span_index *x);
uint64_t trail_span_ntokens(const trail_span_index *x);
uint64_t trail_span_nrecords(const trail_span_index *x);
const uint8_t *trail_span_root(const trail_span_index *x);

/* Occurrences of q[0..n) in the training set: the count (0 if none). */
uint64_t trail_span_count(const trail_span_index *x, const int32_t *q, size_t n);

typedef struct trail_span {
	size_t start, len;   /* in the query */
	uint64_t count;      /* occurrences in the training set */
	size_t nrecords;     /* distinct records listed (at most TRAIL_SPAN_MAX_RECORDS) */
	uint64_t records[TRAIL_SPAN_MAX_RECORDS]; /* record indexes, ascending */
} trail_span;

/*
 * Maximal spans of q of at least min_len tokens that occur in the training
 * set at most max_count times (0: no limit): for each query position the
 * longest match starting there, kept when not inside the previous one.
 * O(L log N) binary-search steps per query position.
 */
int trail_span_match(const trail_span_index *x, const int32_t *q, size_t n, size_t min_len,
		     uint64_t max_count, trail_span **out, size_t *nout, trail_error *err);

/*
 * Proof of Attribution, the influence engine: a per-record index of
 * projected loss gradients, preconditioned scoring of queries against it,
 * and the attribution records attr-score prints.
 *
 * Projection (in the manner of LoGra). A trained linear layer y = x W with
 * inputs X [T,in] and output gradients dY [T,out] has the weight gradient
 * dW = X^T dY. Each layer l gets two seeded Gaussian matrices P_in [k_in,in]
 * and P_out [k_out,out] (entries N(0, 1/k)), and a sequence's projected
 * gradient is
 *     g_l = sum_t outer(P_out dY_t, P_in X_t)      [k_out,k_in], row major
 * so the whole vector g = (g_0, g_1, ...) has D = L k_in k_out numbers and
 * equals (P_out (x) P_in) vec(dW) without ever forming dW. Gradients are of
 * the summed token loss (the negative log-likelihood of the counted
 * targets).
 *
 * Scores, for a query gradient q and record gradients g_i:
 *   graddot    q . g_i                                   (final weights)
 *   influence  q^T (F + lambda I)^-1 g_i, F the block-diagonal projected
 *              empirical Fisher: per layer F_l = (1/N) sum_i g_il g_il^T,
 *              lambda_l = damping * tr(F_l) / (k_in k_out); solved through
 *              each block's Cholesky factor, stored in the index
 *   datainf    per layer, DataInf's closed form of the inverse of
 *              (1/N) sum_i (g_il g_il^T + lambda_l I), lambda_l = 0.1 x the
 *              mean squared gradient norm of the layer
 *   tracin     sum_c w_c q_c . g_ci over the gradient sets saved at
 *              checkpoints c while training (w_c: the learning rate there)
 *   ekfac      q^T (Q (Lambda + lambda_l) Q^T)^-1 g_i per layer, the
 *              eigenvalue-corrected Kronecker factorisation of the layer's
 *              projected Fisher (attr_ekfac.c): Q = Q_S (x) Q_A, the
 *              eigenvectors of S = (1/N) sum_i G_i G_i^T and
 *              A = (1/N) sum_i G_i^T G_i of the gradient matrices
 *              G_i [k_out,k_in]; Lambda the mean squares of the gradients
 *              in that basis; lambda_l = damping * mean(Lambda_l)
 * A positive score means training on the record lowered the query's loss.
 *
 * Index file (little-endian, mmap-able, every section 64-byte aligned):
 *   header   512 bytes: magic "TRLATTR\0", u32 version (2), u32 dtype
 *            (1 = fp16), u64 nrecords, u32 nlayers, u32 dim, u32 nsets,
 *            u32 k_in, u32 k_out, u32 targets, u64 seed, f64 damping,
 *            u64 nparams, u64 blob, u64 file length, u32 seq, u32 reserved,
 *            char model[72], adapter[72], root[48] (training-set Merkle
 *            root, base64), at 480 the SHA-256 of header[0,480) and of
 *            everything after the header
 *   layers   nlayers x {u32 in, u32 out, u32 index, u32 reserved, char name[48]}
 *   sets     nsets x {f64 weight, f64 reserved}; the last set is the final
 *            model, earlier ones checkpoints (tracin)
 *   params   nsets x nparams f32: the trainable parameters of each set
 *   scales   nsets x nrecords f32: row scale (fp16 row = g / scale)
 *   norms    nsets x nrecords x nlayers f32: squared norm of each layer block
 *   lambda   nlayers f32 (DataInf), nlayers f32 (influence), nlayers f32 (ekfac)
 *   chol     nlayers x (k_in k_out)^2 f32: lower Cholesky factors of
 *            F_l + lambda_l I (final set); empty when dim > TRAIL_ATTR_MAX_DIM
 *   ekfac    nlayers x {Q_S [k_out,k_out], Q_A [k_in,k_in] (eigenvectors as
 *            columns, each one's largest component positive), Lambda
 *            [k_out,k_in]} f32 (final set)
 *   grads    nsets x nrecords x dim fp16
 *   records  nrecords x {u8 id[32], u64 contributor offset in blob, or ~0}
 *   blob     contributor strings, NUL-terminated
 *
 * Ownership: handles are freed with their *_free (NULL is a no-op); arrays
 * returned through pointers are trail_malloc'd unless said otherwise.
 */

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "model/model.h"

#define TRAIL_ATTR_VERSION 2
#define TRAIL_ATTR_MAX_DIM 8192  /* the dense preconditioner (influence) is dim^2 / nlayers floats */
#define TRAIL_ATTR_MAX_ROW 65536 /* dimensions of a row; above TRAIL_ATTR_MAX_DIM only EK-FAC's curvature */
#define TRAIL_ATTR_AUTO_K 64     /* the automatic projection: 64 x 64 per layer, or less for many layers */

/* TRAIL_ATTR_EXACT scores without the index (job/attr_exact.c: metagradients through the training run) */
enum { TRAIL_ATTR_INFLUENCE, TRAIL_ATTR_GRADDOT, TRAIL_ATTR_DATAINF, TRAIL_ATTR_TRACIN, TRAIL_ATTR_EKFAC, TRAIL_ATTR_EXACT };

/* "influence", "graddot", "datainf", "tracin", "ekfac", "exact" -> TRAIL_ATTR_*; -1 if unknown. */
int trail_attr_method(const char *name);
const char *trail_attr_method_name(int method);

/* What an index is tied to: digests of the weights and the training set. */
typedef struct trail_attr_ident {
	char model[72];   /* "sha256:" of model.safetensors */
	char adapter[72]; /* "sha256:" of adapter_model.safetensors, "" for none */
	char root[48];    /* base64 RFC 9162 root over the record ids */
} trail_attr_ident;

typedef struct trail_attr_params {
	uint64_t seed;  /* projection seed */
	int k_in, k_out; /* per layer; both 0: automatic, TRAIL_ATTR_AUTO_K each, halved until dim <= TRAIL_ATTR_MAX_ROW */
	int targets;    /* TRAIL_LORA_* bits of the layers to project; 0: all */
	double damping; /* relative damping of the influence solve (default 0.1) */
	int seq;        /* tokens per record, as in training (records are cut) */
	int split;      /* 1: records longer than seq are windows, as trained with mf-train --long split */
} trail_attr_params;

/* ---- projection -------------------------------------------------------------- */

typedef struct trail_attr_proj trail_attr_proj;

/* The projection of model m's selected linear layers. */
int trail_attr_proj_new(const trail_model *m, const trail_attr_params *p, trail_attr_proj **out,
			trail_error *err);
void trail_attr_proj_free(trail_attr_proj *p);
size_t trail_attr_proj_dim(const trail_attr_proj *p);
int trail_attr_proj_nlayers(const trail_attr_proj *p);

/*
 * Projected gradients of the B sequences of the last forward/backward of m
 * (made with trail_model_keep_linear_io on): row b of g [B,dim] is the
 * gradient of sequence b's summed loss, given its count of targets
 * (the backward differentiates the batch's mean loss: total = sum counts).
 */
int trail_attr_project(const trail_attr_proj *p, const trail_model *m, int B, int T,
		       const long *counts, float *g, trail_error *err);
/* Naive reference of trail_attr_project (for tests): explicit dW then P_out dW^T P_in^T. */
int trail_attr_project_ref(const trail_attr_proj *p, const trail_model *m, int B, int T,
			   const long *counts, float *g, trail_error *err);

/*
 * The projected gradient g [dim] of the summed loss of tok[first..n) given
 * the tokens before (targets are tok[t+1] for t+1 >= first). n is at most
 * the model's n_positions; first >= 1. Leaves keep_linear_io on.
 */
int trail_attr_grad(const trail_attr_proj *p, trail_model *m, const int32_t *tok, size_t n,
		    size_t first, float *g, trail_error *err);

/* ---- building an index ------------------------------------------------------- */

typedef struct trail_attr_builder trail_attr_builder;

/*
 * Start an index for nrecords records at path (written to a temporary file
 * beside it; nothing appears at path before trail_attr_builder_finish).
 * nsets: gradient sets, 1 for the final model only, more with tracin
 * checkpoints (the last set is always the final model).
 */
int trail_attr_builder_new(const char *path, const trail_model *m, const trail_attr_ident *id,
			   const trail_attr_params *p, size_t nrecords, int nsets,
			   trail_attr_builder **out, trail_error *err);
/*
 * Record the gradients of set `set` at m's current weights: copies the
 * trainable parameters and the set's weight (the learning rate at that
 * point, for tracin). Call before or after adding the set's rows.
 */
int trail_attr_builder_set(trail_attr_builder *b, int set, trail_model *m, double weight,
			   trail_error *err);
/* Add one row: the projected gradient g [dim] of record `rec` in `set`. */
int trail_attr_builder_add(trail_attr_builder *b, int set, size_t rec, const float *g,
			   trail_error *err);
/*
 * After a forward and backward of m over a batch of records (rows b*T..,
 * trail_model_keep_linear_io on): project and add each record's gradient.
 * counts[b] are the records' counted targets.
 */
int trail_attr_builder_add_batch(trail_attr_builder *b, int set, trail_model *m,
				 const size_t *recs, const long *counts, int B, int T,
				 trail_error *err);
/*
 * One pass over the dataset at m's current weights: forward and backward of
 * every record in batches of `batch` (cut at p->seq tokens as in
 * training), added to `set`, whose weight is `weight`.
 */
int trail_attr_builder_pass(trail_attr_builder *b, int set, trail_model *m,
			    const trail_dataset *d, int batch, double weight, trail_error *err);
/*
 * Compute the curvature statistics, write the record table (ids and
 * contributors, from d) and the digest, fsync and rename into place. Every
 * row of every set must have been added. The builder is freed either way.
 */
int trail_attr_builder_finish(trail_attr_builder *b, const trail_dataset *d, trail_error *err);
/* Drop an unfinished index (its temporary file is removed). */
void trail_attr_builder_free(trail_attr_builder *b);
/* The identity the index records (model, adapter digests, root): set before finish when known only then. */
void trail_attr_builder_set_ident(trail_attr_builder *b, const trail_attr_ident *id);

/*
 * Rows captured while training (a single gradient set, set 0, of a whole
 * index): each row of d (record, or window of a split record) is captured
 * at its last visit in steps [from, steps) of a run of batch B and seed
 * `seed` (row g = step B + b of the run, in trail_train_order), in that step's own
 * forward and backward, before its optimiser update; a split record's row
 * is the sum of its windows' rows, as trail_attr_builder_pass makes it.
 * trail_attr_capture_hook gives the trail_train_hook that does it.
 * trail_attr_capture_rest adds the rows no step of [from, steps) visited
 * (a run shorter than an epoch, one resumed after their last visit) at
 * m's current weights, in batches of `batch`, and records m's weights as
 * the set's (those a query's gradient is taken at); *captured and *rest
 * count the dataset rows each way. The builder stays the caller's.
 */
typedef struct trail_attr_capture trail_attr_capture;
int trail_attr_capture_new(trail_attr_builder *b, const trail_dataset *d, int B, uint64_t seed, long from, long steps,
			   trail_attr_capture **out, trail_error *err);
void trail_attr_capture_hook(trail_attr_capture *c, trail_train_hook *h);
int trail_attr_capture_rest(trail_attr_capture *c, trail_model *m, int batch, size_t *captured, size_t *rest,
			    trail_error *err);
void trail_attr_capture_free(trail_attr_capture *c);

/*
 * Shards. A shard is the index of records [lo, hi) of a set of `total`:
 * the same file layout with nrecords = hi - lo, a shard flag (u32 at 92:
 * 1) and its range (u64 lo at 288, u64 hi at 296, u64 total at 304; zero
 * in a whole index), the whole set's root and no curvature (zeros: it is
 * the whole set's, computed by the merge). Rows and the record table are
 * the shard's; trail_attr_builder_add and _pass take record indexes of the
 * whole set, and the passes run the whole pass's batches (those holding a
 * record of the range: batches of `batch` records, or of windows, from
 * record 0), so every row has the bits of the unsharded build. Shards are
 * refused by trail_attr_index_open.
 */
int trail_attr_builder_new_shard(const char *path, const trail_model *m, const trail_attr_ident *id,
				 const trail_attr_params *p, size_t lo, size_t hi, size_t total, int nsets,
				 trail_attr_builder **out, trail_error *err);
/*
 * The whole index from its n shards (any order) at path, byte for byte
 * the unsharded build: each shard checked (digest, the same model,
 * adapter, root, count, projection, sets and parameters as the first) and
 * every record in exactly one shard (TRAIL_EDATA naming a gap, an overlap
 * or a shard given twice); the curvature computed over all rows as
 * trail_attr_builder_finish does. want (may be NULL): the weights and
 * training set the shards must be of.
 */
int trail_attr_index_merge(const char *const *paths, size_t n, const trail_attr_ident *want, const char *path,
			   trail_error *err);

/* ---- reading and scoring ----------------------------------------------------- */

typedef struct trail_attr_index trail_attr_index;

/*
 * Map and check an index: magic and version (a hint when they differ),
 * sizes against the file length, the SHA-256 of the content (TRAIL_EVERIFY
 * when it differs: truncated or altered).
 */
int trail_attr_index_open(const char *path, trail_attr_index **out, trail_error *err);
void trail_attr_index_free(trail_attr_index *x);

typedef struct trail_attr_info {
	uint64_t nrecords;
	int nlayers, nsets, k_in, k_out, targets, seq;
	size_t dim, nparams;
	uint64_t seed;
	double damping;
	trail_attr_ident id;
	char digest[72]; /* of the whole file's content (the header's SHA-256) */
} trail_attr_info;
const trail_attr_info *trail_attr_index_info(const trail_attr_index *x);
/* Record i's id ("sha256:") and contributor (NULL when none). */
void trail_attr_index_record(const trail_attr_index *x, size_t i, char id[72],
			     const char **contributor);
/* The projection the index was built with, for model m (checked against the layers). */
int trail_attr_index_proj(const trail_attr_index *x, const trail_model *m, trail_attr_proj **out,
			  trail_error *err);

/*
 * Query gradients for `method`: q gets nsets x dim (tracin: one per set,
 * computed at each set's saved parameters, m's own restored after) or dim.
 * trail_attr_query_rows tells how many rows of dim.
 */
int trail_attr_query_rows(const trail_attr_index *x, int method);
int trail_attr_query_grad(const trail_attr_index *x, const trail_attr_proj *p, trail_model *m,
			  int method, const int32_t *tok, size_t n, size_t first, float *q,
			  trail_error *err);

/*
 * Scores of nq queries against every record: scores [nq, nrecords].
 * q holds nq blocks of trail_attr_query_rows(x, method) x dim. Each score
 * is scale_i x dot(g_i, v) with the dot product in one defined order
 * (eight lanes of fused multiply-adds in coordinate order, the lanes added
 * in a fixed tree; fp16 converted inside it), the influence solve in
 * double: the same inputs give the same bits whatever the thread count
 * (trail_blas_threads, which also splits the records), the CPU's kernel
 * (F16C + FMA, or the portable one: TRAIL_ATTR_SCALAR=1 in the environment
 * forces it) or the number of queries scored together.
 */
int trail_attr_score(const trail_attr_index *x, int method, const float *q, int nq,
		     float *scores, trail_error *err);
/*
 * The scores of records [lo, hi) only: scores [nq, hi - lo], each the bits
 * trail_attr_score gives that record (DataInf's preconditioned query is a
 * sum over every record and reads them all).
 */
int trail_attr_score_range(const trail_attr_index *x, int method, const float *q, int nq, size_t lo, size_t hi,
			   float *scores, trail_error *err);
/* Naive double-precision reference of trail_attr_score, for tests. */
int trail_attr_score_ref(const trail_attr_index *x, int method, const float *q, int nq,
			 double *scores, trail_error *err);

/*
 * Unit-normalised scores (a farming defence): each record's score divided
 * by the norm of its projected gradient at the final weights, |g_i| =
 * sqrt(sum of its layer blocks' squared norms, as stored); a record of
 * zero norm scores 0. A record's share then grows with how well its
 * gradient points along the query's, not with how large it is, which is
 * what outlier and generic high-gradient records farm. scores [hi - lo]
 * are those of records [lo, hi), changed in place.
 */
enum { TRAIL_ATTR_NORM_NONE, TRAIL_ATTR_NORM_UNIT };
/* "none", "unit" -> TRAIL_ATTR_NORM_*; -1 if unknown. */
int trail_attr_normalize_mode(const char *name);
void trail_attr_normalize(const trail_attr_index *x, float *scores, int nq, size_t lo, size_t hi);

/* Self-influence g_i^T (F + lambda I)^-1 g_i of every record (poisoning and outliers). */
int trail_attr_self_influence(const trail_attr_index *x, float *out, trail_error *err);

/* fp16 conversion (round to nearest even), exposed for tests and benches. */
uint16_t trail_attr_f16(float f);
float trail_attr_f32(uint16_t h);

/* ---- attribution records ----------------------------------------------------- */

/*
 * Everything an attribution run needs, opened once: the model (with its
 * adapter), the tokenizer, the index, the training records and their span
 * index. All references are borrowed.
 */
typedef struct trail_attr_ctx {
	trail_model *model;
	const trail_tokenizer *tk;
	const trail_attr_index *index;
	const trail_attr_proj *proj;
	const trail_dataset *data;      /* the training records, in index order */
	const json_t *records;          /* their JSON (with "entry", "bundle" from snapshots), or NULL */
	const trail_span_index *spans;  /* or NULL: no spans */
	const char *index_name;         /* as printed in "index" */
	int method, top, min_span;
	uint64_t max_count;             /* rarity filter of spans (0: none) */
	double near;                    /* Jaccard threshold of near-duplicate clusters */
	int confidence;                 /* 1: records get "confidence" against floor */
	int normalize;                  /* TRAIL_ATTR_NORM_*: scores divided by the record's gradient norm */
	const float *centre;            /* or NULL: centre[i] subtracted from record i's every score (trail_attr_centre) */
	char centre_digest[72];         /* the centre's digest ("sha256:", of its float32 bits), with centre */
	const uint8_t *skip;            /* or NULL: skip[i] 1 leaves record i out of top and shares */
	size_t nskip;                   /* records skipped */
	float floor;                    /* trail_attr_noise_floor's */
} trail_attr_ctx;

/*
 * Query centring (a farming defence): the score a record gets on an average
 * query of a reference set, centre [N] (every record's), to be subtracted
 * from its score on each query: score_i(q) - mean over q' of score_i(q').
 * A record that helps every query alike (generic text) then earns nothing
 * for it; a record's credit is what it gives this query more than it gives
 * the others. Scores are linear in the query's gradient, so the centre is
 * the score of the reference queries' mean gradient, one extra query (with
 * c->normalize applied, as the scores it is subtracted from). c->centre is
 * not read. TRAIL_EDATA for an event that cannot be scored, or no events.
 */
int trail_attr_centre(const trail_attr_ctx *c, const json_t *events, float *centre, trail_error *err);

/*
 * The attribution confidence of a query: how far its top record stands
 * out of the scores of all N records, z = (s_top - mean) / sd (0 when
 * every score is equal). Gradients of an answer the model learnt from a
 * few records single them out; an answer learnt from nothing (gibberish)
 * gives scores like noise, whose top is the largest of N draws.
 */
float trail_attr_confidence(const float *scores, size_t n);
/*
 * The noise floor of c's index and method: the largest confidence of
 * TRAIL_ATTR_FLOOR_QUERIES queries of random tokens (a seeded draw, by the
 * index's seed, from the tokens of the training records: a 32-token
 * answer to an empty prompt). The same index, model and records give the
 * same floor.
 */
#define TRAIL_ATTR_FLOOR_QUERIES 16
int trail_attr_noise_floor(const trail_attr_ctx *c, float *floor, trail_error *err);
/*
 * The floor in two steps, for shards: the scores of records [lo, hi) of
 * every random query (out [TRAIL_ATTR_FLOOR_QUERIES, hi - lo]), then the
 * floor from all N records' (scores [TRAIL_ATTR_FLOOR_QUERIES, N]).
 */
int trail_attr_noise_scores(const trail_attr_ctx *c, size_t lo, size_t hi, float *out, trail_error *err);
float trail_attr_floor_of(const float *scores, size_t n);

/*
 * One attribution record for one inference event (or a lora-serve response
 * holding one in "event"), with "confidence": {"score", "floor",
 * "attributed": score > floor} when c->confidence. TRAIL_EDATA for an event of another base or
 * adapter than the index, or without tokens or text. *out: new reference.
 */
int trail_attr_event(const trail_attr_ctx *c, const json_t *event, json_t **out,
		     trail_error *err);
/*
 * trail_attr_event in two steps, for shards: the scores of records
 * [lo, hi) for the event (scores [hi - lo]), then the record from all N
 * scores: the same bytes as trail_attr_event.
 */
int trail_attr_event_scores(const trail_attr_ctx *c, const json_t *event, size_t lo, size_t hi, float *scores,
			    trail_error *err);
int trail_attr_event_from_scores(const trail_attr_ctx *c, const json_t *event, const float *scores, json_t **out,
				 trail_error *err);
/*
 * The query of an event as trail_attr_event reads it (checked against the
 * index's weights): tokens [n] (*tok new, trail_free), the answer from *first.
 */
int trail_attr_event_query(const trail_attr_ctx *c, const json_t *event, int32_t **tok, size_t *n, size_t *first,
			   trail_error *err);
/*
 * Generic records (a farming defence): score each of the held-out events
 * (inference events, or {"prompt","output_text"}) and count, for every
 * record, the events whose top c->top it is in. A record answers few
 * queries of a varied set; one in the top of more than frac of them is
 * generic (boilerplate, frequent words) and would take a share of every
 * answer. *out (new reference): one flags line per generic record with a
 * contributor, in training order:
 *   {"type":"flags","contributor","flagged":1,"record","rules":["generic"],"n"}
 * n the events it tops; attr-settle(1) reads them, attr-score --exclude
 * leaves the records out.
 */
int trail_attr_generic(const trail_attr_ctx *c, const json_t *events, double frac, json_t **out,
		       trail_error *err);

/*
 * Low-information records (a farming defence, attr_info.c). A record's
 * information, info [d->n]: the mean surprisal (nats) of its words (runs of
 * letters, digits and non-ASCII bytes of its decoded text, ASCII case
 * folded) under the add-one word frequencies of the other records; NAN for
 * a record without words. trail_attr_low_info flags the records whose
 * information is more than k median absolute deviations below the median
 * (word lists of the datanet's frequent words, boilerplate): *out (new
 * reference), one flags line per such record with a contributor, in
 * training order:
 *   {"type":"flags","contributor","flagged":1,"record","rules":["low-info"],"z_milli"}
 * z_milli the robust z-score in thousandths. Needs c->data and c->tk only.
 */
int trail_attr_record_info(const trail_dataset *d, const trail_tokenizer *tk, double *info, trail_error *err);
int trail_attr_low_info(const trail_attr_ctx *c, double k, json_t **out, trail_error *err);

/* Recompute an attribution record: TRAIL_OK if identical, TRAIL_EVERIFY with the difference. */
int trail_attr_verify(const trail_attr_ctx *c, const json_t *record, trail_error *err);

/*
 * Near-duplicate clusters among `recs` (indexes into c->data): records with
 * the same tokens, or whose 8-token shingle sets have Jaccard >= c->near,
 * from different contributors; earliest ledger entry (else training order)
 * first. New reference: [{"records","members","first"}].
 */
json_t *trail_attr_clusters(const trail_attr_ctx *c, const size_t *recs, size_t n);

#endif
