/*
 * The ledger: an append-only RFC 9162 Merkle tree over canonical JSON
 * entries, in the store's log/ directory.
 *
 * An entry is a JSON object with a string "type"; it is stored in canonical
 * form and its leaf hash is SHA-256(0x00 || bytes). Appends become durable
 * (and may be acknowledged) only after trail_ledger_commit. Writers are
 * serialised with flock: a handle opened with TRAIL_LEDGER_WRITE holds the
 * lock until trail_ledger_free. Readers see the last committed tree.
 *
 * Ownership: entries returned through `char **` / `json_t **` are the
 * caller's (trail_free / json_decref).
 */
#ifndef TRAIL_LEDGER_H
#define TRAIL_LEDGER_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "merkle.h"
#include "store.h"

enum {
	TRAIL_LEDGER_WRITE = 1,  /* take the writer lock (waits) */
	TRAIL_LEDGER_NOWAIT = 2, /* with WRITE: TRAIL_EUNAVAIL if the lock is held */
};

typedef struct trail_ledger trail_ledger;

int trail_ledger_open(trail_store *s, int flags, trail_ledger **out, trail_error *err);
void trail_ledger_free(trail_ledger *l);

/* Committed size (plus pending appends, for the writer). */
uint64_t trail_ledger_size(const trail_ledger *l);

/* Append one entry (canonicalised); *index gets its position. Not yet durable. */
int trail_ledger_append(trail_ledger *l, const json_t *entry, uint64_t *index,
			trail_error *err);
/* Make every pending append durable (one fsync round for the batch). */
int trail_ledger_commit(trail_ledger *l, trail_error *err);

/*
 * Append NDJSON entries from `in` (named `src` in errors), printing one
 * receipt line {"index","leaf","size"} to `receipts` per entry once it is
 * durable. Unbatched, each entry is committed alone; batched, up to 4096
 * share a commit, and a batch closes early when input stalls. A bad line
 * stops the run: acknowledged entries stay, the rest of its batch is
 * discarded.
 */
int trail_ledger_append_ndjson(trail_ledger *l, FILE *in, const char *src, int batch,
			       FILE *receipts, trail_error *err);

/* Entry i as stored bytes (canonical JSON, NUL-terminated) or parsed. */
int trail_ledger_get(trail_ledger *l, uint64_t i, char **out, size_t *len, trail_error *err);
int trail_ledger_get_json(trail_ledger *l, uint64_t i, json_t **out, trail_error *err);
int trail_ledger_leaf(trail_ledger *l, uint64_t i, trail_hash out, trail_error *err);

int trail_ledger_root(trail_ledger *l, uint64_t size, trail_hash out, trail_error *err);
int trail_ledger_prove(trail_ledger *l, uint64_t index, uint64_t size,
		       trail_hash proof[TRAIL_MERKLE_MAXPROOF], size_t *nproof, trail_error *err);
int trail_ledger_consistency(trail_ledger *l, uint64_t m, uint64_t n,
			     trail_hash proof[TRAIL_MERKLE_MAXPROOF], size_t *nproof,
			     trail_error *err);

/*
 * A signed checkpoint note (C2SP tlog-checkpoint) of the committed tree,
 * by the operator key. Refuses (TRAIL_EVERIFY) to sign a tree inconsistent
 * with the last checkpoint signed.
 */
int trail_ledger_checkpoint(trail_ledger *l, char **note, trail_error *err);
/* A C2SP tlog-proof receipt for entry `index` against a fresh checkpoint. */
int trail_ledger_receipt(trail_ledger *l, uint64_t index, char **out, trail_error *err);
/*
 * Verify a tlog-proof receipt offline against the operator verifier key(s)
 * and, unless origin is NULL, the log's origin (its checkpoint's first
 * line): TRAIL_OK, TRAIL_EVERIFY, or TRAIL_EDATA if it is not a receipt.
 * *index and the entry's leaf hash come back for the caller to compare.
 */
int trail_receipt_verify(const char *receipt, size_t len, const trail_verifier *const *vs,
			 size_t nv, const char *origin, uint64_t *index, trail_hash leaf,
			 trail_error *err);

/* Proofs as JSON in the transparency-dev test-case format (base64 hashes). */
int trail_ledger_proof_json(trail_ledger *l, uint64_t index, uint64_t size, json_t **out,
			    trail_error *err);
int trail_ledger_consistency_json(trail_ledger *l, uint64_t m, uint64_t n, json_t **out,
				  trail_error *err);
/*
 * Check one proof file: a tlog-proof receipt (against the verifier keys vs
 * and, unless NULL, the origin) or a JSON test case. TRAIL_OK valid,
 * TRAIL_EVERIFY invalid, TRAIL_EDATA unrecognised.
 */
int trail_proof_check(const char *buf, size_t len, const trail_verifier *const *vs, size_t nv,
		      const char *origin, trail_error *err);

/* fsck: every entry hash, tree node, referenced object and signature. */
typedef void (*trail_ledger_progress_fn)(void *ctx, uint64_t done, uint64_t total);
int trail_ledger_verify(trail_ledger *l, trail_ledger_progress_fn fn, void *ctx,
			trail_error *err);

#endif
