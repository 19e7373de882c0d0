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
#ifndef TRAIL_MERKLE_H
#define TRAIL_MERKLE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trail.h"

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

#endif
