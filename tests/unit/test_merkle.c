/*
 * Merkle trees: the transparency-dev reference cases and vectors, then
 * roots and proofs compared with a naive recursive tree built straight
 * from the RFC 9162 definitions, at every size to 300 and at random sizes
 * to 100,000, with tampered proofs that must fail.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "ledger/ledger.h"
#include "tap.h"
#include "core/core.h"

/* Reference: an explicit tree with MTH split at the largest power of two < n. */
struct ref {
	uint64_t n;
	trail_hash h;
	struct ref *l, *r;
};

struct pool {
	struct ref *nodes;
	size_t used, cap;
};

static struct ref *ref_build(struct pool *p, const trail_hash *leaves, uint64_t n)
{
	struct ref *x = &p->nodes[p->used++];
	x->n = n;
	x->l = x->r = NULL;
	if (n == 1) {
		memcpy(x->h, leaves[0], 32);
		return x;
	}
	uint64_t k = 1;
	while (k * 2 < n)
		k *= 2;
	x->l = ref_build(p, leaves, k);
	x->r = ref_build(p, leaves + k, n - k);
	trail_merkle_node(x->l->h, x->r->h, x->h);
	return x;
}

/* PATH(m, D[n]) */
static void ref_path(const struct ref *x, uint64_t m, trail_hash *out, size_t *np)
{
	if (x->n == 1)
		return;
	if (m < x->l->n) {
		ref_path(x->l, m, out, np);
		memcpy(out[(*np)++], x->r->h, 32);
	} else {
		ref_path(x->r, m - x->l->n, out, np);
		memcpy(out[(*np)++], x->l->h, 32);
	}
}

/* SUBPROOF(m, D[n], b) */
static void ref_subproof(const struct ref *x, uint64_t m, int b, trail_hash *out, size_t *np)
{
	if (m == x->n) {
		if (!b)
			memcpy(out[(*np)++], x->h, 32);
		return;
	}
	if (m <= x->l->n) {
		ref_subproof(x->l, m, b, out, np);
		memcpy(out[(*np)++], x->r->h, 32);
	} else {
		ref_subproof(x->r, m - x->l->n, 0, out, np);
		memcpy(out[(*np)++], x->l->h, 32);
	}
}

static uint64_t rng_state = 0x7261696c2d6d6b6cULL;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t below(uint64_t n)
{
	return rnd() % n;
}

static int same_proof(const trail_hash *a, size_t na, const trail_hash *b, size_t nb)
{
	return na == nb && (na == 0 || memcmp(a, b, na * 32) == 0);
}

/* Failure counters for the randomized comparisons. */
struct tally {
	long proofs, root, inc_diff, inc_bad, inc_forged, con_diff, con_bad, con_forged;
};

static void note(long *counter, const char *what, uint64_t a, uint64_t b)
{
	if ((*counter)++ < 5)
		diag("%s (%llu, %llu)", what, (unsigned long long)a, (unsigned long long)b);
}

/* Tampered inclusion proofs: each variant must be rejected. */
static void forge_inclusion(struct tally *t, uint64_t m, uint64_t n, const trail_hash leaf,
			    const trail_hash *proof, size_t np, const trail_hash root,
			    const trail_hash other)
{
	trail_hash p[TRAIL_MERKLE_MAXPROOF + 1], l, r;
	memcpy(l, leaf, 32);
	memcpy(r, root, 32);
	memcpy(p, proof, np * 32);
	if (np) {
		size_t i = below(np);
		unsigned bit = below(256);
		p[i][bit / 8] ^= 1 << bit % 8;
		if (trail_merkle_verify_inclusion(m, n, l, p, np, r, NULL) != TRAIL_EVERIFY)
			note(&t->inc_forged, "flipped proof bit accepted", m, n);
		p[i][bit / 8] ^= 1 << bit % 8;
		if (trail_merkle_verify_inclusion(m, n, l, p, np - 1, r, NULL) != TRAIL_EVERIFY)
			note(&t->inc_forged, "truncated proof accepted", m, n);
	}
	memcpy(p[np], other, 32);
	if (trail_merkle_verify_inclusion(m, n, l, p, np + 1, r, NULL) != TRAIL_EVERIFY)
		note(&t->inc_forged, "extended proof accepted", m, n);
	l[below(32)] ^= 0x80;
	if (trail_merkle_verify_inclusion(m, n, l, p, np, r, NULL) != TRAIL_EVERIFY)
		note(&t->inc_forged, "wrong leaf accepted", m, n);
	memcpy(l, leaf, 32);
	r[below(32)] ^= 0x01;
	if (trail_merkle_verify_inclusion(m, n, l, p, np, r, NULL) != TRAIL_EVERIFY)
		note(&t->inc_forged, "wrong root accepted", m, n);
	memcpy(r, root, 32);
	if (n > 1) {
		uint64_t m2 = (m + 1 + below(n - 1)) % n;
		if (trail_merkle_verify_inclusion(m2, n, l, p, np, r, NULL) != TRAIL_EVERIFY)
			note(&t->inc_forged, "other index accepted", m, n);
	}
	if (trail_merkle_verify_inclusion(n, n, l, p, np, r, NULL) != TRAIL_EVERIFY)
		note(&t->inc_forged, "index = size accepted", m, n);
}

static void forge_consistency(struct tally *t, uint64_t m, uint64_t n, const trail_hash root1,
			      const trail_hash root2, const trail_hash *proof, size_t np,
			      const trail_hash other)
{
	trail_hash p[TRAIL_MERKLE_MAXPROOF + 1], r1, r2;
	memcpy(r1, root1, 32);
	memcpy(r2, root2, 32);
	memcpy(p, proof, np * 32);
	if (np) {
		size_t i = below(np);
		unsigned bit = below(256);
		p[i][bit / 8] ^= 1 << bit % 8;
		if (trail_merkle_verify_consistency(m, n, r1, r2, p, np, NULL) != TRAIL_EVERIFY)
			note(&t->con_forged, "flipped proof bit accepted", m, n);
		p[i][bit / 8] ^= 1 << bit % 8;
		if (trail_merkle_verify_consistency(m, n, r1, r2, p, np - 1, NULL) != TRAIL_EVERIFY)
			note(&t->con_forged, "truncated proof accepted", m, n);
	}
	memcpy(p[np], other, 32);
	if (trail_merkle_verify_consistency(m, n, r1, r2, p, np + 1, NULL) != TRAIL_EVERIFY)
		note(&t->con_forged, "extended proof accepted", m, n);
	r1[below(32)] ^= 0x04;
	if (trail_merkle_verify_consistency(m, n, r1, r2, p, np, NULL) != TRAIL_EVERIFY)
		note(&t->con_forged, "wrong old root accepted", m, n);
	memcpy(r1, root1, 32);
	r2[below(32)] ^= 0x20;
	if (trail_merkle_verify_consistency(m, n, r1, r2, p, np, NULL) != TRAIL_EVERIFY)
		note(&t->con_forged, "wrong new root accepted", m, n);
	memcpy(r2, root2, 32);
	if (trail_merkle_verify_consistency(m, n, r2, r1, p, np, NULL) != TRAIL_EVERIFY &&
	    memcmp(r1, r2, 32) != 0)
		note(&t->con_forged, "swapped roots accepted", m, n);
}

/* Compare one size n against the reference, all or some indices. */
static void check_size(struct tally *t, trail_merkle_mem *mem, const trail_hash *leaves,
		       const struct ref *tree, const trail_hash *oldroots, const uint64_t *oldsizes,
		       size_t nold, int every, const trail_hash other)
{
	uint64_t n = tree->n;
	trail_hash root, root2, got[TRAIL_MERKLE_MAXPROOF], want[TRAIL_MERKLE_MAXPROOF];
	size_t ngot, nwant;
	trail_error e;

	if (trail_merkle_root(trail_merkle_mem_get, mem, n, root) != TRAIL_OK ||
	    memcmp(root, tree->h, 32) != 0)
		note(&t->root, "root differs", n, 0);
	if (trail_merkle_root_of(leaves, n, root2) != TRAIL_OK || memcmp(root2, tree->h, 32) != 0)
		note(&t->root, "root_of differs", n, 0);

	uint64_t count = every ? n : 40;
	for (uint64_t i = 0; i < count; i++) {
		uint64_t m = every ? i : i == 0 ? 0 : i == 1 ? n - 1 : below(n);
		int rc = trail_merkle_prove_inclusion(trail_merkle_mem_get, mem, m, n, got, &ngot, &e);
		nwant = 0;
		ref_path(tree, m, want, &nwant);
		t->proofs++;
		if (rc != TRAIL_OK || !same_proof(got, ngot, want, nwant)) {
			note(&t->inc_diff, "inclusion proof differs", m, n);
			continue;
		}
		if (trail_merkle_verify_inclusion(m, n, leaves[m], got, ngot, tree->h, &e) != TRAIL_OK)
			note(&t->inc_bad, "inclusion proof rejected", m, n);
		forge_inclusion(t, m, n, leaves[m], got, ngot, tree->h, other);
	}
	for (size_t i = 0; i < nold; i++) {
		uint64_t m = oldsizes[i];
		int rc = trail_merkle_prove_consistency(trail_merkle_mem_get, mem, m, n, got, &ngot,
						      &e);
		nwant = 0;
		ref_subproof(tree, m, 1, want, &nwant);
		t->proofs++;
		if (rc != TRAIL_OK || !same_proof(got, ngot, want, nwant)) {
			note(&t->con_diff, "consistency proof differs", m, n);
			continue;
		}
		if (trail_merkle_verify_consistency(m, n, oldroots[i], tree->h, got, ngot, &e) !=
		    TRAIL_OK)
			note(&t->con_bad, "consistency proof rejected", m, n);
		forge_consistency(t, m, n, oldroots[i], tree->h, got, ngot, other);
	}
}

static void report(const struct tally *t, const char *what)
{
	ok(t->root == 0, "%s: roots match the reference", what);
	ok(t->inc_diff == 0 && t->con_diff == 0,
	   "%s: %ld proofs equal the reference (%ld inclusion, %ld consistency differ)", what,
	   t->proofs, t->inc_diff, t->con_diff);
	ok(t->inc_bad == 0 && t->con_bad == 0, "%s: all proofs verify", what);
	ok(t->inc_forged == 0 && t->con_forged == 0, "%s: tampered proofs are rejected", what);
}

static void make_leaves(trail_hash *leaves, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t v = rnd();
		trail_merkle_leaf(&v, sizeof v, leaves[i]);
	}
}

static void test_small(void)
{
	enum { N = 300 };
	trail_hash *leaves = malloc((N + 1) * sizeof *leaves), roots[N + 1], other;
	uint64_t sizes[N + 1];
	/* Every tree 1..N stays alive: sum of 2n - 1 nodes. */
	struct pool p = {malloc((size_t)N * (N + 1) * sizeof(struct ref)), 0, 0};
	make_leaves(leaves, N);
	make_leaves(&other, 1);
	trail_merkle_mem *mem = trail_merkle_mem_new(leaves, N);
	struct tally t = {0};
	for (uint64_t n = 1; n <= N; n++) {
		struct ref *tree = ref_build(&p, leaves, n);
		memcpy(roots[n], tree->h, 32);
		sizes[n] = n;
		check_size(&t, mem, leaves, tree, roots + 1, sizes + 1, n, 1, other);
	}
	report(&t, "every size 1..300, every index and old size");
	trail_merkle_mem_free(mem);
	free(p.nodes);
	free(leaves);
}

static void test_random(void)
{
	enum { N = 100000, NSIZES = 20 };
	trail_hash *leaves = malloc(N * sizeof *leaves), roots[NSIZES], other;
	uint64_t sizes[NSIZES] = {301, 65535, 65536, 65537, N};
	struct pool p = {malloc(2 * N * sizeof(struct ref)), 0, 0};
	for (int i = 5; i < NSIZES; i++)
		sizes[i] = 302 + below(N - 302);
	for (int i = 1; i < NSIZES; i++) /* insertion sort: old sizes come first */
		for (int j = i; j > 0 && sizes[j] < sizes[j - 1]; j--) {
			uint64_t s = sizes[j];
			sizes[j] = sizes[j - 1];
			sizes[j - 1] = s;
		}
	make_leaves(leaves, N);
	make_leaves(&other, 1);
	trail_merkle_mem *mem = trail_merkle_mem_new(leaves, N);
	struct tally t = {0};
	for (int i = 0; i < NSIZES; i++) {
		p.used = 0;
		struct ref *tree = ref_build(&p, leaves, sizes[i]);
		memcpy(roots[i], tree->h, 32);
		/* Old sizes: every earlier size and a few small ones near powers of two. */
		uint64_t old[NSIZES + 4];
		trail_hash oldroots[NSIZES + 4];
		size_t nold = 0;
		for (int j = 0; j <= i; j++) {
			old[nold] = sizes[j];
			memcpy(oldroots[nold++], roots[j], 32);
		}
		static const uint64_t smalls[] = {1, 2, 255, 256};
		for (size_t j = 0; j < 4; j++) {
			trail_merkle_root_of(leaves, smalls[j], oldroots[nold]);
			old[nold++] = smalls[j];
		}
		check_size(&t, mem, leaves, tree, oldroots, old, nold, 0, other);
	}
	report(&t, "random sizes to 100,000");
	trail_merkle_mem_free(mem);
	free(p.nodes);
	free(leaves);
}

/*
 * A tree whose leaves are all equal: the subtree at level k is H_k at every
 * index, so the callback answers for any size, up to 2^64 - 1 leaves.
 */
static int uniform_get(void *ctx, unsigned level, uint64_t index, trail_hash out)
{
	memcpy(out, ((trail_hash *)ctx)[level], 32);
	return TRAIL_OK;
}

static void test_huge(void)
{
	trail_hash h[64], root, root1, proof[TRAIL_MERKLE_MAXPROOF];
	size_t np;
	trail_merkle_leaf("x", 1, h[0]);
	for (int k = 1; k < 64; k++)
		trail_merkle_node(h[k - 1], h[k - 1], h[k]);
	const uint64_t max = UINT64_MAX;
	int good = 1;
	const uint64_t sizes[] = {max, max - 1, (uint64_t)1 << 63, ((uint64_t)1 << 63) + 1,
				  0x5555555555555555ULL};
	for (size_t i = 0; i < 5; i++) {
		uint64_t n = sizes[i];
		const uint64_t idx[] = {0, n - 1, n / 2, n / 3};
		good &= trail_merkle_root(uniform_get, h, n, root) == TRAIL_OK;
		for (size_t j = 0; j < 4; j++) {
			good &= trail_merkle_prove_inclusion(uniform_get, h, idx[j], n, proof, &np,
							     NULL) == TRAIL_OK;
			good &= trail_merkle_verify_inclusion(idx[j], n, h[0], proof, np, root,
							      NULL) == TRAIL_OK;
			uint64_t m = idx[j] ? idx[j] : 1;
			if (trail_merkle_prove_consistency(uniform_get, h, m, n, proof, &np, NULL) ==
			    TRAIL_ELIMIT)
				continue;
			good &= trail_merkle_root(uniform_get, h, m, root1) == TRAIL_OK;
			good &= trail_merkle_verify_consistency(m, n, root1, root, proof, np, NULL) ==
				TRAIL_OK;
		}
	}
	ok(good, "sizes up to 2^64-1: proofs are generated and verify");
	/* The longest consistency proof below 2^64 leaves needs 65 hashes. */
	ok(trail_merkle_prove_consistency(uniform_get, h, max - 2, max, proof, &np, NULL) ==
		   TRAIL_ELIMIT,
	   "a consistency proof over %d hashes is refused", TRAIL_MERKLE_MAXPROOF);
	const uint64_t top = (uint64_t)1 << 63;
	trail_merkle_root(uniform_get, h, top - 1, root1);
	trail_merkle_root(uniform_get, h, top, root);
	ok(trail_merkle_prove_consistency(uniform_get, h, top - 1, top, proof, &np, NULL) ==
			   TRAIL_OK &&
		   np == TRAIL_MERKLE_MAXPROOF &&
		   trail_merkle_verify_consistency(top - 1, top, root1, root, proof, np, NULL) ==
			   TRAIL_OK,
	   "a consistency proof of %d hashes (2^63 - 1 to 2^63) is made and verifies",
	   TRAIL_MERKLE_MAXPROOF);
}

static int failing_get(void *ctx, unsigned level, uint64_t index, trail_hash out)
{
	int *budget = ctx;
	if ((*budget)-- <= 0)
		return TRAIL_EIO;
	memset(out, 0, 32);
	return TRAIL_OK;
}

static void test_api(void)
{
	trail_hash leaves[5], root, proof[TRAIL_MERKLE_MAXPROOF];
	size_t np = 99;
	trail_error e = {0};
	for (int i = 0; i < 5; i++)
		trail_merkle_leaf(&i, sizeof i, leaves[i]);
	trail_merkle_mem *mem = trail_merkle_mem_new(leaves, 5);
	ok(mem != NULL, "in-memory tree of 5 leaves");
	ok(trail_merkle_prove_inclusion(trail_merkle_mem_get, mem, 5, 5, proof, &np, &e) ==
			   TRAIL_EUSAGE &&
		   np == 0 && strstr(e.msg, "not below"),
	   "inclusion proof of index = size is refused: %s", e.msg);
	ok(trail_merkle_prove_consistency(trail_merkle_mem_get, mem, 0, 5, proof, &np, &e) ==
		   TRAIL_EUSAGE,
	   "consistency proof from size 0 is refused");
	ok(trail_merkle_prove_consistency(trail_merkle_mem_get, mem, 6, 5, proof, &np, &e) ==
		   TRAIL_EUSAGE,
	   "consistency proof from a larger size is refused");
	ok(trail_merkle_prove_consistency(trail_merkle_mem_get, mem, 5, 5, proof, &np, &e) ==
			   TRAIL_OK &&
		   np == 0,
	   "consistency proof between equal sizes is empty");
	ok(trail_merkle_root(trail_merkle_mem_get, mem, 6, root) == TRAIL_EUSAGE,
	   "in-memory tree refuses subtrees past its leaves");
	ok(trail_merkle_mem_get(mem, 3, 0, root) == TRAIL_EUSAGE &&
		   trail_merkle_mem_get(mem, 2, 1, root) == TRAIL_EUSAGE &&
		   trail_merkle_mem_get(mem, 2, 0, root) == TRAIL_OK,
	   "in-memory tree holds only complete subtrees");
	trail_merkle_mem_free(mem);
	trail_merkle_mem_free(NULL);

	trail_merkle_mem *empty = trail_merkle_mem_new(NULL, 0);
	trail_hash r0, want0;
	trail_sha256("", 0, want0);
	ok(empty && trail_merkle_root(trail_merkle_mem_get, empty, 0, r0) == TRAIL_OK &&
		   memcmp(r0, want0, 32) == 0,
	   "empty tree: root is SHA-256 of nothing");
	trail_merkle_mem_free(empty);

	/* Callback errors come back unchanged; count the calls too. */
	int budget = 1000, fails = 0;
	trail_merkle_prove_inclusion(failing_get, &budget, 12345, 1000001, proof, &np, NULL);
	int calls = 1000 - budget;
	ok(calls <= 2 * 20, "inclusion proof at 1,000,001 leaves: %d callback calls", calls);
	budget = 1000;
	trail_merkle_prove_consistency(failing_get, &budget, 777777, 1000001, proof, &np, NULL);
	ok(1000 - budget <= 3 * 20, "consistency proof at 1,000,001 leaves: %d callback calls",
	   1000 - budget);
	for (int b = 0; b < calls; b++) {
		budget = b;
		e.msg[0] = 0;
		if (trail_merkle_prove_inclusion(failing_get, &budget, 12345, 1000001, proof, &np,
						 &e) != TRAIL_EIO ||
		    !strstr(e.msg, "subtree"))
			fails++;
		budget = b;
		if (trail_merkle_prove_consistency(failing_get, &budget, 777777, 1000001, proof,
						   &np, &e) != TRAIL_EIO)
			fails++;
		budget = b;
		if (b < 7 && trail_merkle_root(failing_get, &budget, 1000001, root) != TRAIL_EIO)
			fails++;
	}
	ok(fails == 0, "callback errors are passed back (%d wrong)", fails);

	/* Hand-checked shapes. */
	trail_hash h01, h23, h0123;
	trail_merkle_node(leaves[0], leaves[1], h01);
	trail_merkle_node(leaves[2], leaves[3], h23);
	trail_merkle_node(h01, h23, h0123);
	trail_merkle_node(h0123, leaves[4], root);
	trail_hash r5;
	trail_merkle_root_of(leaves, 5, r5);
	ok(memcmp(r5, root, 32) == 0, "root of 5 leaves is node(node(01, 23), 4)");
	trail_hash p4[] = {{0}};
	memcpy(p4[0], h0123, 32);
	ok(trail_merkle_verify_inclusion(4, 5, leaves[4], p4, 1, root, &e) == TRAIL_OK,
	   "leaf 4 of 5 is proven by the root of the first 4");
	ok(trail_merkle_verify_inclusion(4, 5, leaves[4], p4, 0, root, &e) == TRAIL_EVERIFY &&
		   strstr(e.msg, "short"),
	   "an empty proof for leaf 4 of 5 is too short: %s", e.msg);
	trail_hash big[TRAIL_MERKLE_MAXPROOF + 1] = {{0}};
	ok(trail_merkle_verify_inclusion(4, 5, leaves[4], big, TRAIL_MERKLE_MAXPROOF + 1, root,
					 &e) == TRAIL_EVERIFY,
	   "a proof over the maximum length is rejected");
	ok(trail_merkle_verify_consistency(4, 5, h0123, root, big, TRAIL_MERKLE_MAXPROOF + 1, &e) ==
		   TRAIL_EVERIFY,
	   "a consistency proof over the maximum length is rejected");
	ok(trail_merkle_verify_consistency(0, 0, root, root, NULL, 0, &e) == TRAIL_EVERIFY,
	   "consistency from the empty tree is rejected");
}

static void test_json_shapes(void)
{
	static const struct {
		const char *json;
		int want;
	} cases[] = {
		{"[]", TRAIL_EDATA},
		{"{}", TRAIL_EDATA},
		{"{\"leafIdx\":0,\"size1\":1}", TRAIL_EDATA},
		{"{\"leafIdx\":\"0\",\"treeSize\":1,\"root\":\"\",\"leafHash\":\"\",\"proof\":[]}",
		 TRAIL_EDATA},
		{"{\"leafIdx\":0,\"treeSize\":1,\"root\":\"\",\"leafHash\":\"\",\"proof\":{}}",
		 TRAIL_EDATA},
		{"{\"leafIdx\":0,\"treeSize\":1,\"root\":\"\",\"leafHash\":\"\",\"proof\":[1]}",
		 TRAIL_EDATA},
		{"{\"leafIdx\":0,\"treeSize\":1,\"root\":\"\",\"leafHash\":\"\"}", TRAIL_EDATA},
		{"{\"leafIdx\":0.5,\"treeSize\":1,\"root\":\"\",\"leafHash\":\"\",\"proof\":[]}",
		 TRAIL_EDATA},
		{"{\"leafIdx\":-1,\"treeSize\":1,\"root\":\"\",\"leafHash\":\"\",\"proof\":[]}",
		 TRAIL_EVERIFY},
		{"{\"size1\":1,\"size2\":1,\"root1\":\"AA==\",\"root2\":\"AA==\",\"proof\":null}",
		 TRAIL_OK},
		{"{\"size1\":1,\"size2\":1,\"root1\":\"AA==\",\"root2\":\"AA=\",\"proof\":null}",
		 TRAIL_EVERIFY},
		{"{\"size1\":1,\"size2\":1,\"root1\":\"AA==\",\"root2\":\"AB==\",\"proof\":null}",
		 TRAIL_EVERIFY},
		{"{\"size1\":1,\"size2\":2,\"root1\":\"AA==\",\"root2\":\"AA==\",\"proof\":null}",
		 TRAIL_EVERIFY},
		{"{\"size1\":99999999999999999999,\"size2\":1,\"root1\":\"\",\"root2\":\"\","
		 "\"proof\":[]}",
		 TRAIL_EVERIFY},
		{"{\"size1\":1,\"size2\":1,\"root1\":\"AA==\",\"root2\":\"AA==\",\"proof\":[]} x",
		 TRAIL_EDATA},
		{"{\"size1\":1,\"size1\":1,\"size2\":1,\"root1\":\"AA==\",\"root2\":\"AA==\"}",
		 TRAIL_EDATA},
	};
	int bad = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		trail_error e = {0};
		int rc = trail_merkle_check_text(cases[i].json, strlen(cases[i].json), &e);
		if (rc != cases[i].want) {
			bad++;
			diag("case %zu: got %d (%s), want %d", i, rc, e.msg, cases[i].want);
		}
	}
	ok(bad == 0, "JSON cases: shapes, ranges and equal-size roots (%d wrong)", bad);
	ok(trail_merkle_check_json(NULL, NULL) == TRAIL_EDATA, "NULL is not a proof case");
}

/* vectors.json: roots of the 8 reference leaves for sizes 0..8. */
static void test_vectors(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/vectors.json", dir);
	json_error_t je;
	json_t *v = json_load_file(path, 0, &je);
	json_t *in = json_object_get(v, "leaf_inputs_hex");
	json_t *want = json_object_get(v, "root_hashes_hex_by_tree_size");
	if (!ok(json_array_size(in) == 8 && json_array_size(want) == 9, "vectors.json read")) {
		json_decref(v);
		return;
	}
	trail_hash leaves[8];
	for (size_t i = 0; i < 8; i++) {
		const char *hx = json_string_value(json_array_get(in, i));
		uint8_t buf[64];
		size_t len = strlen(hx) / 2;
		trail_unhex(hx, strlen(hx), buf, len);
		trail_merkle_leaf(buf, len, leaves[i]);
	}
	trail_merkle_mem *mem = trail_merkle_mem_new(leaves, 8);
	for (size_t n = 0; n <= 8; n++) {
		trail_hash a, b;
		char ha[65], hb[65];
		trail_merkle_root(trail_merkle_mem_get, mem, n, a);
		trail_merkle_root_of(leaves, n, b);
		trail_hex(a, 32, ha);
		trail_hex(b, 32, hb);
		const char *w = json_string_value(json_array_get(want, n));
		ok(w && strcmp(ha, w) == 0 && strcmp(hb, w) == 0, "root of %zu reference leaves: %s",
		   n, ha);
	}
	trail_merkle_mem_free(mem);
	json_decref(v);
}

struct casecount {
	int files, valid, invalid, wrong, mutated_wrong;
};

/*
 * Flip one bit in each proof hash of a valid case: each variant must fail.
 * The reference mutations cover a few positions; this covers every hash.
 */
static void mutate_case(struct casecount *c, const char *text, size_t len, const char *name)
{
	json_error_t je;
	json_t *j = json_loadb(text, len, JSON_DECODE_INT_AS_REAL, &je);
	json_t *proof = json_object_get(j, "proof");
	for (size_t i = 0; i < json_array_size(proof); i++) {
		json_t *orig = json_array_get(proof, i);
		const char *s = json_string_value(orig);
		uint8_t h[32];
		size_t hl;
		char b64[64];
		if (!s || trail_unbase64(s, strlen(s), h, sizeof h, &hl) != TRAIL_OK || hl != 32)
			continue;
		h[i % 32] ^= 0x10;
		trail_base64(h, 32, b64);
		json_incref(orig);
		json_array_set_new(proof, i, json_string(b64));
		if (trail_merkle_check_json(j, NULL) != TRAIL_EVERIFY) {
			c->mutated_wrong++;
			diag("%s: proof[%zu] with a flipped bit accepted", name, i);
		}
		json_array_set_new(proof, i, orig);
	}
	json_decref(j);
}

static void walk(struct casecount *c, const char *dir, const char *rel)
{
	struct dirent **ents;
	int n = scandir(dir, &ents, NULL, alphasort);
	for (int i = 0; i < n; i++) {
		const char *name = ents[i]->d_name;
		char path[4096], sub[1024];
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, name);
		snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", name);
		if (name[0] == '.' || stat(path, &st) != 0) {
		} else if (S_ISDIR(st.st_mode)) {
			walk(c, path, sub);
		} else if (strlen(name) > 5 && !strcmp(name + strlen(name) - 5, ".json") &&
			   strcmp(sub, "vectors.json") != 0) {
			void *buf;
			size_t len;
			trail_error e = {0};
			if (trail_read_file(path, 1 << 20, &buf, &len, &e) != TRAIL_OK) {
				ok(0, "%s: %s", sub, e.msg);
				free(ents[i]);
				continue;
			}
			json_error_t je;
			json_t *j = json_loadb(buf, len, JSON_DECODE_INT_AS_REAL, &je);
			json_t *w = json_object_get(j, "wantErr");
			int rc = trail_merkle_check_text(buf, len, &e);
			int pass = json_is_boolean(w) &&
				   (json_is_true(w) ? rc == TRAIL_EVERIFY : rc == TRAIL_OK);
			c->files++;
			if (json_is_true(w))
				c->invalid++;
			else
				c->valid++;
			if (!pass) {
				c->wrong++;
				ok(0, "%s: %s (got %s: %s)", sub,
				   json_string_value(json_object_get(j, "desc")), trail_strerror(rc),
				   rc ? e.msg : "");
			}
			if (json_is_false(w))
				mutate_case(c, buf, len, sub);
			json_decref(j);
			trail_free(buf);
		}
		free(ents[i]);
	}
	if (n >= 0)
		free(ents);
}

static void test_cases(const char *dir)
{
	struct casecount c = {0};
	char inc[4096], con[4096];
	snprintf(inc, sizeof inc, "%s/inclusion", dir);
	snprintf(con, sizeof con, "%s/consistency", dir);
	walk(&c, inc, "inclusion");
	int ninc = c.files;
	walk(&c, con, "consistency");
	ok(ninc >= 50 && c.files - ninc >= 50, "reference cases read: %d inclusion, %d consistency",
	   ninc, c.files - ninc);
	ok(c.wrong == 0, "%d reference cases give their verdict (%d valid, %d invalid; %d wrong)",
	   c.files, c.valid, c.invalid, c.wrong);
	ok(c.mutated_wrong == 0, "every proof hash of the valid cases matters");
}

int main(void)
{
	trail_init();
	const char *top = getenv("TRAIL_TOP");
	char dir[2048];
	struct stat st;
	snprintf(dir, sizeof dir, "%s/../shared/testdata/merkle", top ? top : ".");
	if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
		test_vectors(dir);
		test_cases(dir);
	} else {
		skip("reference cases: %s not found", dir);
	}
	test_api();
	test_json_shapes();
	test_huge();
	test_small();
	test_random();
	return tap_done();
}
