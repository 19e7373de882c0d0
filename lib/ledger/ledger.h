/*
 * Ed25519 keys and signed notes in the C2SP signed-note encodings.
 *
 *   signer key   PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>
 *   verifier key <name>+<hex key id>+<base64(0x01 || public key)>
 *   key id       first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)
 *
 * A contributor's identity is its verifier key string.
 * Ownership: handles are freed with their *_free; strings returned through
 * `char **out` are trail_malloc'd.
 */
#ifndef TRAIL_LEDGER_H
#define TRAIL_LEDGER_H
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/core.h"

#define TRAIL_SIG_LEN 64

typedef struct trail_signer trail_signer;
typedef struct trail_verifier trail_verifier;

/*
 * Is `name` one trail gives a key (or a log origin): 1 to 256 bytes of
 * UTF-8 without Unicode spaces, '+' or control characters? NULL if so,
 * else what is wrong (a static string). Keys and notes made elsewhere need
 * only what C2SP signed-note asks: no Unicode spaces or '+'.
 */
const char *trail_key_name_problem(const char *name);

/* A new key pair for `name` (see trail_key_name_problem; TRAIL_EUSAGE if not). */
int trail_key_generate(const char *name, char **skey, char **vkey, trail_error *err);

/*
 * Write DIR/NAME.key (mode 0600) and DIR/NAME.pub for a new key; refuses to
 * overwrite either. *vkey (if not NULL) gets the verifier key.
 */
int trail_key_create_files(const char *dir, const char *name, char **vkey, trail_error *err);
/*
 * Write DIR/STEM.key (mode 0600) holding skey and DIR/STEM.pub holding pub,
 * refusing to overwrite either; skey's bytes are wiped after the write.
 */
int trail_key_files_put(const char *dir, const char *stem, char *skey, char *pub, trail_error *err);

int trail_signer_parse(const char *skey, size_t len, trail_signer **out, trail_error *err);
int trail_verifier_parse(const char *vkey, size_t len, trail_verifier **out, trail_error *err);
/* Load a NAME.key file. */
int trail_signer_load(const char *path, trail_signer **out, trail_error *err);
/* A verifier key given literally, or a file holding one (NAME.pub). */
int trail_verifier_load(const char *path_or_key, trail_verifier **out, trail_error *err);
void trail_signer_free(trail_signer *s);
void trail_verifier_free(trail_verifier *v);

const char *trail_signer_name(const trail_signer *s);
/* The signer's verifier key string (owned by the signer). */
const char *trail_signer_vkey(const trail_signer *s);
const char *trail_verifier_name(const trail_verifier *v);
const char *trail_verifier_str(const trail_verifier *v);
uint32_t trail_verifier_id(const trail_verifier *v);

void trail_sign(const trail_signer *s, const void *msg, size_t len, uint8_t sig[TRAIL_SIG_LEN]);
/* TRAIL_OK or TRAIL_EVERIFY. */
int trail_verify(const trail_verifier *v, const void *msg, size_t len,
		 const uint8_t sig[TRAIL_SIG_LEN]);

/*
 * Sign text into a note. The text must be UTF-8, non-empty, end with a
 * newline and hold no ASCII control character below U+0020 but newline
 * (C2SP signed-note; U+007F is allowed).
 */
int trail_note_sign(const char *text, size_t len, const trail_signer *const *signers,
		    size_t nsigners, char **note, size_t *notelen, trail_error *err);
/*
 * Open a note: TRAIL_OK if at least one of the given verifiers signed it
 * (signatures by unknown keys, of any algorithm and length, are ignored);
 * TRAIL_EVERIFY if none did or a known key's signature is bad; TRAIL_EDATA
 * naming the problem if it is not a note. One extra trailing newline is
 * accepted (a note never ends with a blank line). *text (if not NULL) gets
 * the signed text.
 */
int trail_note_open(const char *note, size_t len, const trail_verifier *const *vs, size_t nv,
		    char **text, size_t *textlen, trail_error *err);

/*
 * Signed JSON objects (ledger entries and manifests): "signer" is set to the
 * verifier key, "sig" to base64 of the Ed25519 signature over the canonical
 * JSON of the object without "sig".
 */
int trail_json_sign(json_t *obj, const trail_signer *s, trail_error *err);
/* Verify with the embedded "signer" key; TRAIL_EVERIFY on mismatch. */
int trail_json_verify(const json_t *obj, trail_error *err);

/*
 * RFC 9162 Merkle trees: hashing, roots, inclusion and consistency proofs.
 *
 * Trees are read through a callback that returns the hash of a complete,
 * aligned subtree: level k, index j covers leaves [j*2^k, (j+1)*2^k). A
 * store that keeps those hashes (the ledger) answers each call with one
 * read, so roots and proofs cost O(log n) calls at any size.
 *
 * Hashes are 32 bytes. Proofs have at most TRAIL_MERKLE_MAXPROOF hashes.
 */

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>


#define TRAIL_MERKLE_MAXPROOF 64

typedef uint8_t trail_hash[32];

/* leaf = SHA-256(0x00 || data); node = SHA-256(0x01 || left || right). */
void trail_merkle_leaf(const void *data, size_t len, trail_hash out);
void trail_merkle_node(const trail_hash left, const trail_hash right, trail_hash out);

/*
 * Returns TRAIL_OK, or an error code that is passed back to the caller.
 * Called only for subtrees that lie wholly inside the tree being read.
 */
typedef int (*trail_merkle_get_fn)(void *ctx, unsigned level, uint64_t index, trail_hash out);

/*
 * Root of the first `size` leaves (size 0: SHA-256 of the empty string).
 * popcount(size) calls.
 */
int trail_merkle_root(trail_merkle_get_fn get, void *ctx, uint64_t size, trail_hash out);
/*
 * Inclusion proof of leaf `index` in the tree of `size` leaves, deepest
 * sibling first (RFC 9162 2.1.3.1). TRAIL_EUSAGE unless index < size.
 * At most 2*log2(size) calls, no allocation.
 */
int trail_merkle_prove_inclusion(trail_merkle_get_fn get, void *ctx, uint64_t index,
				 uint64_t size, trail_hash proof[TRAIL_MERKLE_MAXPROOF],
				 size_t *nproof, trail_error *err);
/*
 * Consistency proof between sizes 0 < m <= n (RFC 9162 2.1.4.1); empty when
 * m == n. TRAIL_EUSAGE for m == 0 or m > n (a proof from the empty tree
 * says nothing, and the verifier rejects it). At most 3*log2(n) calls.
 */
int trail_merkle_prove_consistency(trail_merkle_get_fn get, void *ctx, uint64_t m, uint64_t n,
				   trail_hash proof[TRAIL_MERKLE_MAXPROOF], size_t *nproof,
				   trail_error *err);

/*
 * TRAIL_OK if the proof is valid, TRAIL_EVERIFY (with a reason) if not
 * (RFC 9162 2.1.3.2 and 2.1.4.2). An index outside the tree, more than
 * TRAIL_MERKLE_MAXPROOF hashes, or m == 0 are invalid proofs. For m == n the
 * proof must be empty and the roots equal. No allocation.
 */
int trail_merkle_verify_inclusion(uint64_t index, uint64_t size, const trail_hash leaf,
				  const trail_hash *proof, size_t nproof, const trail_hash root,
				  trail_error *err);
int trail_merkle_verify_consistency(uint64_t m, uint64_t n, const trail_hash root1,
				    const trail_hash root2, const trail_hash *proof,
				    size_t nproof, trail_error *err);

/*
 * An in-memory tree over leaf hashes (for bundles' record roots, tests).
 * Copies the leaves and keeps every complete subtree hash (2n hashes).
 * Its trail_merkle_get_fn is trail_merkle_mem_get, which answers
 * TRAIL_EUSAGE for a subtree beyond the leaves it holds. NULL on ENOMEM.
 */
typedef struct trail_merkle_mem trail_merkle_mem;
trail_merkle_mem *trail_merkle_mem_new(const trail_hash *leaves, size_t n);
int trail_merkle_mem_get(void *mem, unsigned level, uint64_t index, trail_hash out);
void trail_merkle_mem_free(trail_merkle_mem *m);
/* Root over an array of leaf hashes, without allocating. */
int trail_merkle_root_of(const trail_hash *leaves, size_t n, trail_hash out);

/*
 * Check one proof given as JSON in the transparency-dev test-case format:
 * {leafIdx, treeSize, root, leafHash, proof} or {size1, size2, root1, root2,
 * proof}, base64 hashes; "proof" may be null. TRAIL_OK valid, TRAIL_EVERIFY
 * invalid (including hashes of the wrong length, sizes that are negative or
 * beyond 64 bits, undecodable base64), TRAIL_EDATA if it is neither shape.
 * One exception to the hash length, as in the reference verifier: between
 * equal sizes there is nothing to hash, and the two roots are compared as
 * the byte strings given.
 */
int trail_merkle_check_json(const json_t *c, trail_error *err);
/*
 * The same for JSON text (one value, nothing after it). Integers beyond
 * 64 bits are read (and rejected as out of range) rather than refused as
 * malformed. TRAIL_EDATA if the text is not JSON.
 */
int trail_merkle_check_text(const char *text, size_t len, trail_error *err);

/*
 * The store: a directory (--home DIR, else $TRAIL_HOME, else ./.trail) with
 *
 *   objects/sha256/<2 hex>/<62 hex>   immutable blobs, digest checked on read
 *   names/<kind>/<name>               registered names -> digest
 *   log/                              the ledger (ledger.h)
 *   keys/operator.key                 the operator's signer key
 *   keys/operator.pub                 its verifier key, for offline checks
 *   config.json                       origin and operator verifier key
 *
 * Ownership: the store handle owns its strings; buffers returned through
 * `void **out` are trail_malloc'd.
 */

#include <stddef.h>


typedef struct trail_store trail_store;

/* The store directory a program should use: opt, else $TRAIL_HOME, else ".trail". */
const char *trail_store_home(const char *opt);

/*
 * Create a store: directories, config.json with `origin` (default: the
 * absolute path's last component), and the operator key: copied from
 * keyfile, or generated. TRAIL_EDATA if a store already exists there.
 */
int trail_store_init(const char *home, const char *origin, const char *keyfile,
		     trail_error *err);
/* Open an existing store; TRAIL_ENOINPUT if there is none. */
int trail_store_open(const char *home, trail_store **out, trail_error *err);
void trail_store_free(trail_store *s);

const char *trail_store_dir(const trail_store *s);
const char *trail_store_origin(const trail_store *s);
/* The operator key (loaded on first use). */
int trail_store_operator(trail_store *s, const trail_signer **out, trail_error *err);
const trail_verifier *trail_store_operator_vkey(const trail_store *s);

/* Add a blob (atomic, idempotent); digest gets "sha256:<hex>". */
int trail_store_put(trail_store *s, const void *buf, size_t len, char digest[72],
		    trail_error *err);
int trail_store_put_file(trail_store *s, const char *path, char digest[72], trail_error *err);
/* Read a blob and check its digest (TRAIL_EVERIFY on mismatch, ENOINPUT if absent). */
int trail_store_get(trail_store *s, const char *digest, void **out, size_t *len,
		    trail_error *err);
int trail_store_has(trail_store *s, const char *digest);
/* The path of an object's file (trail_malloc'd), whether or not it exists. */
char *trail_store_object_path(const trail_store *s, const char *digest);

/* Register a name (kind: "model", "adapter", "datanet", ...) for a digest. */
int trail_store_name_set(trail_store *s, const char *kind, const char *name,
			 const char *digest, trail_error *err);
int trail_store_name_get(trail_store *s, const char *kind, const char *name, char digest[72],
			 trail_error *err);
/* A "sha256:" digest present in the store, or a registered name of `kind`. */
int trail_store_resolve(trail_store *s, const char *kind, const char *arg, char digest[72],
			trail_error *err);

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

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>


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

/*
 * Parse a checkpoint body (the note's text): origin, size, base64 root,
 * extension lines allowed. *origin (if not NULL) is trail_malloc'd.
 * TRAIL_EDATA if malformed.
 */
int trail_checkpoint_parse(const char *text, char **origin, uint64_t *size, trail_hash root,
			   trail_error *err);

/*
 * The ledger as C2SP tlog-tiles in a directory any static HTTP server can
 * serve: checkpoint, tile/<L>/<N>[.p/<W>] (256 hashes of level 8L a full
 * tile), tile/entries/<N>[.p/<W>] (each entry as a 2-byte big-endian length
 * and its bytes). N is in groups of three digits, all but the last prefixed
 * 'x'. Full tiles already present are left alone (they never change);
 * partial ones are replaced atomically; the checkpoint is written last, so
 * a reader never sees one whose tiles are missing. An entry over
 * TRAIL_TILE_ENTRY_MAX bytes cannot be bundled (TRAIL_ELIMIT).
 */
#define TRAIL_TILE_ENTRY_MAX 65535
typedef struct trail_tiles_stats {
	uint64_t size, written, kept; /* tree size; tile files written, full ones kept */
} trail_tiles_stats;
int trail_tiles_write(trail_ledger *l, const char *dir, trail_tiles_stats *st, trail_error *err);

/*
 * A log read from tiles over HTTP(S) (libcurl). Every response is capped
 * (checkpoint 64 KiB, hash tile 8 KiB, entry bundle 256 * (2 + 65535)
 * bytes), at most 2 redirects are followed, http and https only, a
 * transfer slower than 1 KiB/s for timeout_s/2 seconds or longer than
 * timeout_s in all is abandoned. Errors: TRAIL_EUNAVAIL (no answer, an
 * HTTP error, a redirect loop, a timeout, a truncated transfer),
 * TRAIL_ELIMIT (a response over its cap), TRAIL_EVERIFY (the checkpoint's
 * signature or origin, a tile of the wrong length or contents, an entry
 * whose hash is not the tile's, a root other than the checkpoint's).
 *
 * trail_tiles_open fetches the checkpoint, checks it against the verifier
 * keys (and origin, unless NULL), fetches every entry bundle and hash tile
 * and checks that they make the checkpoint's tree.
 */
typedef struct trail_tiles trail_tiles;
typedef struct trail_tiles_opts {
	long timeout_s; /* per transfer; 0: 30 */
} trail_tiles_opts;
int trail_tiles_open(const char *url, const trail_verifier *const *vs, size_t nv,
		     const char *origin, const trail_tiles_opts *o, trail_tiles **out,
		     trail_error *err);
void trail_tiles_free(trail_tiles *t);
uint64_t trail_tiles_size(const trail_tiles *t);
void trail_tiles_root(const trail_tiles *t, trail_hash out);
/* Bytes fetched so far. */
uint64_t trail_tiles_fetched(const trail_tiles *t);
/*
 * Check a tlog-proof receipt (signed by vs) against the served log: the
 * entry at its index is the receipt's, the served tree includes it (an
 * inclusion proof from the tiles), and the receipt's checkpoint is a
 * prefix of the served tree (a consistency proof from the tiles).
 */
int trail_tiles_check_receipt(trail_tiles *t, const char *buf, size_t len,
			      const trail_verifier *const *vs, size_t nv, trail_error *err);
/*
 * Check that an earlier signed checkpoint note (signed by vs) is consistent
 * with the served one: a consistency proof built from the tiles verifies
 * between the two signed roots.
 */
int trail_tiles_check_checkpoint(trail_tiles *t, const char *buf, size_t len,
				 const trail_verifier *const *vs, size_t nv, trail_error *err);

/* fsck: every entry hash, tree node, referenced object and signature. */
typedef void (*trail_ledger_progress_fn)(void *ctx, uint64_t done, uint64_t total);
int trail_ledger_verify(trail_ledger *l, trail_ledger_progress_fn fn, void *ctx,
			trail_error *err);

/*
 * Witnesses: C2SP tlog-cosignature (Ed25519 cosignature/v1) and
 * C2SP tlog-witness (add-checkpoint).
 *
 *   cosigner key  <name>+<hex key id>+<base64(0x04 || public key)>
 *   key id        first 4 bytes of SHA-256(name || 0x0A || 0x04 || public key)
 *   cosignature   "\u2014 <name> " base64(key id || u64 big-endian time ||
 *                 Ed25519 signature) "\n", the signature over
 *                 "cosignature/v1\ntime <decimal time>\n" || checkpoint body
 *
 * A witness key is an ordinary signer key (NAME.key); only its verifier key
 * differs (type 0x04, and so its key id). Ed25519 cosignatures do not sign
 * the witness's name: one key, one witness name.
 * Ownership: as above; a trail_witness borrows its key and log keys, which
 * must outlive it.
 */
#define TRAIL_COSIG_LEN (4 + 8 + TRAIL_SIG_LEN)

typedef struct trail_cosigner trail_cosigner;

/* The cosigner key of a signer (trail_malloc'd). */
int trail_cosigner_vkey(const trail_signer *s, char **vkey, trail_error *err);
/* TRAIL_EDATA if malformed, of another key type, or with a wrong key id. */
int trail_cosigner_parse(const char *vkey, size_t len, trail_cosigner **out, trail_error *err);
/* A cosigner key given literally, or a file holding one. */
int trail_cosigner_load(const char *path_or_key, trail_cosigner **out, trail_error *err);
void trail_cosigner_free(trail_cosigner *c);
const char *trail_cosigner_name(const trail_cosigner *c);
const char *trail_cosigner_str(const trail_cosigner *c);
uint32_t trail_cosigner_id(const trail_cosigner *c);
/* DIR/NAME.key (mode 0600) and DIR/NAME.pub holding the cosigner key; never overwrites. */
int trail_witness_key_create_files(const char *dir, const char *name, char **vkey,
				   trail_error *err);

/* The cosignature line (with its newline) of checkpoint text at time t (seconds). */
int trail_cosign(const trail_signer *s, const char *text, size_t len, uint64_t t, char **line,
		 trail_error *err);
/* Check one signature line (newline optional) by c over text; *t (if not NULL) gets its time. */
int trail_cosignature_verify(const trail_cosigner *c, const char *text, size_t len,
			     const char *line, size_t linelen, uint64_t *t, trail_error *err);
/*
 * How many of the distinct cosigners cs[0..nc) cosigned the note: lines
 * that match no cosigner's name and key id are ignored, one that matches
 * but does not verify is TRAIL_EVERIFY.
 */
int trail_cosignatures_count(const char *note, size_t len, const trail_cosigner *const *cs,
			     size_t nc, size_t *nvalid, trail_error *err);
/*
 * A checkpoint note, or a tlog-proof receipt (its proof checked too), signed
 * by one of the log keys vs (for origin, unless NULL) and cosigned by at
 * least `quorum` of the distinct cosigners cs: TRAIL_OK, else TRAIL_EVERIFY
 * (TRAIL_EDATA if malformed). *nvalid (if not NULL) gets the count.
 */
int trail_checkpoint_check_quorum(const char *buf, size_t len, const trail_verifier *const *vs,
				  size_t nv, const char *origin, const trail_cosigner *const *cs,
				  size_t nc, size_t quorum, size_t *nvalid, trail_error *err);

/*
 * The witness: for each log (its origin, and the keys that sign for it) the
 * latest checkpoint it cosigned, one file per log in dir, written durably
 * (temp, fsync, rename, fsync dir) under a per-log flock before a
 * cosignature is returned. origins[i] NULL (or origins NULL): the key's name.
 */
typedef struct trail_witness trail_witness;
int trail_witness_open(const char *dir, const trail_signer *key, const trail_verifier *const *logs,
		       const char *const *origins, size_t nlogs, trail_witness **out,
		       trail_error *err);
/*
 * trail_witness_open with the witness's key file and the log keys ("VKEY"
 * or "ORIGIN=VKEY") loaded and owned by the witness; *cosigner its
 * cosigner vkey (trail_free).
 */
int trail_witness_load(const char *dir, const char *keyfile, const char *const *logs, size_t nlogs,
		       trail_witness **out, char **cosigner, trail_error *err);
void trail_witness_free(trail_witness *w);

typedef struct trail_witness_reply {
	int status;        /* HTTP status */
	const char *type;  /* Content-Type (static) */
	char *body;        /* trail_malloc'd; trail_witness_reply_release */
	size_t len;
	char origin[257];  /* the log's, when the request got that far */
	uint64_t old, size;
} trail_witness_reply;
void trail_witness_reply_release(trail_witness_reply *r);
/*
 * One add-checkpoint request body ("old N\n", proof lines, "\n", the signed
 * checkpoint), as C2SP tlog-witness says: 200 and the cosignature line;
 * 400 malformed (or old larger than the checkpoint's size); 403 not signed
 * by a known key of its origin; 404 unknown origin; 409 old is not the size
 * last cosigned (text/x.tlog.size, that size), or a checkpoint of the size
 * last cosigned with another root (a fork); 422 the consistency proof from
 * the last cosigned checkpoint does not verify; 500 the state cannot be
 * read or written. Returns TRAIL_OK for 200, else a code with err saying
 * why (for the witness's log). Safe to call from several threads.
 */
int trail_witness_add_checkpoint(trail_witness *w, const char *req, size_t len, uint64_t now,
				 trail_witness_reply *r, trail_error *err);

/*
 * The witness over HTTP: POST /add-checkpoint on listen ("HOST:PORT", port
 * 0 for any free one), one thread per connection. `log` (may be NULL) gets
 * one line per request: what was cosigned, or why not. Stopping waits for
 * the requests in flight.
 */
typedef struct trail_witness_server trail_witness_server;
typedef void (*trail_witness_log_fn)(void *ctx, const char *line);
int trail_witness_server_start(trail_witness *w, const char *listen, trail_witness_log_fn log,
			       void *ctx, trail_witness_server **out, trail_error *err);
int trail_witness_server_port(const trail_witness_server *s);
void trail_witness_server_stop(trail_witness_server *s);

/*
 * The log's side: submit the checkpoint note (the ledger's, signed) to the
 * witness at url (its submission prefix), with the consistency proof from
 * the size the witness last cosigned: first "old 0", then the size a 409
 * names. TRAIL_OK: res->lines holds the witness's cosignature lines by c
 * that verify (trail_malloc'd; trail_free). TRAIL_EVERIFY: the witness
 * refused; res->status and res->body say how. TRAIL_EUNAVAIL: no answer.
 */
typedef struct trail_witness_result {
	long status;      /* the last HTTP status */
	char body[512];   /* its body, on one line */
	uint64_t old, size;
	char *lines;
} trail_witness_result;
int trail_witness_submit(trail_ledger *l, const char *note, size_t notelen, const char *url,
			 const trail_cosigner *c, long timeout_s, trail_witness_result *res,
			 trail_error *err);

/*
 * The store's cosigned checkpoint, log/checkpoint.cosigned: the operator's
 * checkpoint with the cosignature lines witnesses returned for it.
 * trail_cosigned_merge adds signature lines to a note, replacing those by
 * the same name and key id; trail_cosigned_attach gives back a checkpoint
 * note or tlog-proof receipt with the stored cosignatures when its
 * checkpoint's text is the cosigned one's, else a copy of it.
 */
int trail_cosigned_read(trail_store *s, char **note, size_t *len, trail_error *err);
int trail_cosigned_write(trail_store *s, const char *note, size_t len, trail_error *err);
int trail_cosigned_merge(const char *note, size_t len, const char *lines, char **out,
			 size_t *outlen, trail_error *err);
int trail_cosigned_attach(trail_store *s, const char *doc, size_t len, char **out, size_t *outlen,
			  trail_error *err);

/* DIR/checkpoint (written by trail_tiles_write) with the stored cosignatures, when they are for it. */
int trail_cosigned_publish(trail_store *s, const char *dir, trail_error *err);
/*
 * Fetch url/checkpoint (the log served as tiles, already opened as t) and
 * check that it is the tiles' tree, signed by vs (for origin) and cosigned
 * by at least `quorum` of the distinct cosigners cs.
 */
int trail_witness_check_url(trail_tiles *t, const char *url, const trail_verifier *const *vs,
			    size_t nv, const char *origin, const trail_cosigner *const *cs, size_t nc,
			    size_t quorum, long timeout_s, size_t *nvalid, trail_error *err);

/*
 * Key arguments "ORIGIN=VKEY" (a log key) and "URL=VKEY" (a cosigner key),
 * split at the '=' after which a key (literal or file) parses, since
 * origins and URLs may hold '='. *origin / *url are trail_malloc'd.
 * TRAIL_EUSAGE if no split gives a key.
 */
int trail_log_key_split(const char *arg, char **origin, trail_verifier **key, trail_error *err);
int trail_cosigner_split(const char *arg, char **url, trail_cosigner **key, trail_error *err);

/*
 * Send the ledger's checkpoint to each witness wits[i] ("URL=VKEY"),
 * keeping the cosignatures already stored for that checkpoint, and store
 * those returned (log/checkpoint.cosigned). One JSON line per witness to
 * out: {witness, url, ok, size, old[, status][, body]}. A witness that
 * refuses or does not answer is told to refusal (may be NULL) with why, and
 * the call fails once all are asked: TRAIL_EVERIFY if one refused, else
 * TRAIL_EUNAVAIL.
 */
int trail_ledger_cosign(trail_ledger *l, trail_store *s, const char *const *wits, size_t nwit, long timeout_s,
			FILE *out, trail_witness_log_fn refusal, void *ctx, trail_error *err);

/*
 * trail-log verify-proof and verify --url: each file (an inclusion proof,
 * a receipt or a checkpoint) checked against the log keys and origin and,
 * with cosigner keys, for cosignatures of at least quorum of them; with
 * url, against the log served there as tiles (without files: the served
 * checkpoint itself). One JSON line per file to out, {file, ok[,
 * cosigned][, reason]} (or, for the served checkpoint, {[cosigned,]
 * fetched, ok, root, size}). A check that fails sets *bad and goes on;
 * other errors stop.
 */
typedef struct trail_proofs_opts {
	const char *home;         /* without keys: this store's operator key, and its origin unless origin is set */
	const char *const *keys;  /* log keys, files or vkeys */
	size_t nkeys;
	const char *origin;       /* NULL: the store's, or any */
	const char *const *wits;  /* cosigner keys, files or vkeys */
	size_t nwit, quorum;      /* quorum 0: every cosigner */
	const char *url;          /* NULL: the files alone */
	long timeout_s;
} trail_proofs_opts;
int trail_proofs_verify(const trail_proofs_opts *o, const char *const *files, size_t n, FILE *out, int *bad,
			trail_error *err);

#endif
