/*
 * Fuzz proof checking three ways on every input:
 *  1. the bytes as a JSON test case (trail_merkle_check_text): any verdict,
 *     no crash;
 *  2. the bytes as a raw proof: mode, two 64-bit sizes, two hashes, then
 *     proof hashes, straight into the verifiers: only OK or EVERIFY, and a
 *     proof that holds fails once any one of its hashes changes;
 *  3. the bytes as a mask over a real proof from a 300-leaf tree: the
 *     unmasked proof verifies, and any change to it is rejected.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/ledger.h"

#define LEAVES 300

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static trail_merkle_mem *tree(trail_hash *leaves)
{
	static trail_merkle_mem *mem;
	static trail_hash keep[LEAVES];
	if (!mem) {
		for (uint32_t i = 0; i < LEAVES; i++)
			trail_merkle_leaf(&i, sizeof i, keep[i]);
		mem = trail_merkle_mem_new(keep, LEAVES);
		if (!mem)
			abort();
	}
	memcpy(leaves, keep, sizeof keep);
	return mem;
}

static void raw(const uint8_t *data, size_t size)
{
	enum { HEAD = 1 + 8 + 8 + 32 + 32 };
	if (size < HEAD)
		return;
	trail_hash h1, h2, proof[TRAIL_MERKLE_MAXPROOF + 2];
	uint64_t a = le64(data + 1), b = le64(data + 9);
	memcpy(h1, data + 17, 32);
	memcpy(h2, data + 49, 32);
	size_t np = (size - HEAD) / 32;
	if (np > TRAIL_MERKLE_MAXPROOF + 2)
		np = TRAIL_MERKLE_MAXPROOF + 2;
	memcpy(proof, data + HEAD, np * 32);
	int incl = data[0] & 1;
	int rc = incl ? trail_merkle_verify_inclusion(a, b, h1, proof, np, h2, NULL)
		      : trail_merkle_verify_consistency(a, b, h1, h2, proof, np, NULL);
	if (rc != TRAIL_OK && rc != TRAIL_EVERIFY)
		abort();
	if (rc != TRAIL_OK)
		return;
	/* A proof that holds must stop holding when any one hash changes. */
	for (size_t i = 0; i <= np; i++) {
		uint8_t *h = i < np ? proof[i] : h1;
		h[i % 32] ^= 0x40;
		rc = incl ? trail_merkle_verify_inclusion(a, b, h1, proof, np, h2, NULL)
			  : trail_merkle_verify_consistency(a, b, h1, h2, proof, np, NULL);
		h[i % 32] ^= 0x40;
		if (rc != TRAIL_EVERIFY)
			abort();
	}
}

/* XOR mask bytes into buf; returns whether anything changed. */
static int apply(uint8_t *buf, size_t len, const uint8_t **mask, size_t *left)
{
	int changed = 0;
	for (size_t i = 0; i < len && *left; i++, (*mask)++, (*left)--) {
		buf[i] ^= **mask;
		changed |= **mask != 0;
	}
	return changed;
}

static void roundtrip(const uint8_t *data, size_t size)
{
	if (size < 5)
		return;
	trail_hash leaves[LEAVES], proof[TRAIL_MERKLE_MAXPROOF], root, root1, leaf;
	trail_merkle_mem *mem = tree(leaves);
	uint64_t n = 1 + (data[1] | data[2] << 8) % LEAVES;
	uint64_t m = (data[3] | data[4] << 8) % n;
	const uint8_t *mask = data + 5;
	size_t left = size - 5, np;
	trail_error e;
	if (trail_merkle_root(trail_merkle_mem_get, mem, n, root) != TRAIL_OK)
		abort();
	if (data[0] & 2) {
		if (trail_merkle_prove_inclusion(trail_merkle_mem_get, mem, m, n, proof, &np, &e) ||
		    trail_merkle_verify_inclusion(m, n, leaves[m], proof, np, root, &e))
			abort();
		memcpy(leaf, leaves[m], 32);
		int changed = apply((uint8_t *)proof, np * 32, &mask, &left);
		changed |= apply(leaf, 32, &mask, &left);
		changed |= apply(root, 32, &mask, &left);
		int rc = trail_merkle_verify_inclusion(m, n, leaf, proof, np, root, &e);
		/* In a one-leaf tree the claim is only "the leaf is the root". */
		int same = n == 1 && !memcmp(leaf, root, 32);
		if (rc != (changed && !same ? TRAIL_EVERIFY : TRAIL_OK))
			abort();
	} else {
		m++; /* 1..n */
		if (trail_merkle_root(trail_merkle_mem_get, mem, m, root1) ||
		    trail_merkle_prove_consistency(trail_merkle_mem_get, mem, m, n, proof, &np, &e) ||
		    trail_merkle_verify_consistency(m, n, root1, root, proof, np, &e))
			abort();
		int changed = apply((uint8_t *)proof, np * 32, &mask, &left);
		changed |= apply(root1, 32, &mask, &left);
		changed |= apply(root, 32, &mask, &left);
		int rc = trail_merkle_verify_consistency(m, n, root1, root, proof, np, &e);
		/* Equal sizes: only "the roots are the same" is claimed. */
		int same = m == n && !memcmp(root1, root, 32);
		if (rc != (changed && !same ? TRAIL_EVERIFY : TRAIL_OK))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int rc = trail_merkle_check_text((const char *)data, size, NULL);
	if (rc != TRAIL_OK && rc != TRAIL_EVERIFY && rc != TRAIL_EDATA)
		abort();
	raw(data, size);
	roundtrip(data, size);
	return 0;
}
