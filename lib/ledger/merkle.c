/*
 * RFC 9162 Merkle trees.
 *
 * A tree of n leaves is read only through complete, aligned subtrees
 * (level k, index j = leaves [j*2^k, (j+1)*2^k)). Every node of the RFC
 * tree covers [j*2^k, min((j+1)*2^k, n)): either complete, or the one
 * ragged node per level on the right edge, which is the fold of the
 * complete subtrees given by the set bits of its width (range_hash).
 */
#include <math.h>
#include <string.h>

#include <sodium.h>

#include "ledger/ledger.h"

/* Largest power of two strictly below n (n >= 2). */
static uint64_t split_point(uint64_t n)
{
	return (uint64_t)1 << (63 - __builtin_clzll(n - 1));
}

static int is_pow2(uint64_t n)
{
	return n && !(n & (n - 1));
}

void trail_merkle_leaf(const void *data, size_t len, trail_hash out)
{
	crypto_hash_sha256_state st;
	static const uint8_t prefix = 0x00;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, &prefix, 1);
	crypto_hash_sha256_update(&st, data, len);
	crypto_hash_sha256_final(&st, out);
}

void trail_merkle_node(const trail_hash left, const trail_hash right, trail_hash out)
{
	uint8_t buf[65];
	buf[0] = 0x01;
	memcpy(buf + 1, left, 32);
	memcpy(buf + 33, right, 32);
	crypto_hash_sha256(out, buf, sizeof buf);
}

static int fetch(trail_merkle_get_fn get, void *ctx, unsigned level, uint64_t index,
		 trail_hash out, trail_error *err)
{
	int rc = get(ctx, level, index, out);
	if (rc != TRAIL_OK)
		return trail_error_set(err, rc, "cannot read subtree hash at level %u, index %llu",
				       level, (unsigned long long)index);
	return TRAIL_OK;
}

/*
 * Hash of the RFC subtree over leaves [lo, lo + width), width >= 1, lo a
 * multiple of a power of two >= width. The subtree is the complete
 * subtrees of width's set bits, largest first, folded from the right.
 */
static int range_hash(trail_merkle_get_fn get, void *ctx, uint64_t lo, uint64_t width,
		      trail_hash out, trail_error *err)
{
	trail_hash h;
	int have = 0;
	for (uint64_t rest = width; rest; rest &= rest - 1) {
		unsigned b = (unsigned)__builtin_ctzll(rest);
		/* Leaves before this piece: the bits of width above b. */
		uint64_t above = b == 63 ? 0 : width & ~(((uint64_t)2 << b) - 1);
		int rc = fetch(get, ctx, b, (lo + above) >> b, have ? h : out, err);
		if (rc)
			return rc;
		if (have)
			trail_merkle_node(h, out, out);
		have = 1;
	}
	return TRAIL_OK;
}

int trail_merkle_root(trail_merkle_get_fn get, void *ctx, uint64_t size, trail_hash out)
{
	if (size == 0) {
		crypto_hash_sha256(out, NULL, 0);
		return TRAIL_OK;
	}
	return range_hash(get, ctx, 0, size, out, NULL);
}

int trail_merkle_prove_inclusion(trail_merkle_get_fn get, void *ctx, uint64_t index,
				 uint64_t size, trail_hash proof[TRAIL_MERKLE_MAXPROOF],
				 size_t *nproof, trail_error *err)
{
	*nproof = 0;
	if (index >= size)
		return trail_error_set(err, TRAIL_EUSAGE, "leaf index %llu is not below tree size %llu",
				       (unsigned long long)index, (unsigned long long)size);
	size_t np = 0;
	uint64_t last = size - 1;
	/* Climb while the node holding the leaf is not the root. */
	for (unsigned level = 0; level < 64 && (last >> level) != 0; level++) {
		uint64_t node = index >> level;
		uint64_t width = (uint64_t)1 << level;
		uint64_t lo = node << level; /* first leaf of our node */
		int rc;
		if (node & 1) {
			rc = fetch(get, ctx, level, node ^ 1, proof[np], err);
		} else {
			/* A right sibling exists only if leaves remain past our node. */
			if (size - lo <= width)
				continue;
			uint64_t slo = lo + width, swidth = size - slo;
			if (swidth >= width)
				rc = fetch(get, ctx, level, node + 1, proof[np], err);
			else
				rc = range_hash(get, ctx, slo, swidth, proof[np], err);
		}
		if (rc)
			return rc;
		np++;
	}
	*nproof = np;
	return TRAIL_OK;
}

int trail_merkle_prove_consistency(trail_merkle_get_fn get, void *ctx, uint64_t m, uint64_t n,
				   trail_hash proof[TRAIL_MERKLE_MAXPROOF], size_t *nproof,
				   trail_error *err)
{
	*nproof = 0;
	if (m == 0 || m > n)
		return trail_error_set(err, TRAIL_EUSAGE,
				       "no consistency proof from size %llu to size %llu",
				       (unsigned long long)m, (unsigned long long)n);
	/*
	 * SUBPROOF(m, D[off:off+n], b) unrolled. Each step appends one hash
	 * that belongs after everything the deeper steps produce, so the
	 * hashes are collected outermost first and reversed at the end.
	 */
	uint64_t off = 0;
	int whole = 1; /* b: the old tree is still a prefix we may omit */
	size_t np = 0;
	int rc;
	while (m != n) {
		uint64_t k = split_point(n);
		if (np == TRAIL_MERKLE_MAXPROOF)
			goto too_long;
		if (m <= k) {
			rc = range_hash(get, ctx, off + k, n - k, proof[np], err);
			n = k;
		} else {
			rc = fetch(get, ctx, (unsigned)__builtin_ctzll(k), off / k, proof[np], err);
			off += k;
			m -= k;
			n -= k;
			whole = 0;
		}
		if (rc)
			return rc;
		np++;
	}
	if (!whole) {
		if (np == TRAIL_MERKLE_MAXPROOF)
			goto too_long;
		rc = range_hash(get, ctx, off, n, proof[np], err);
		if (rc)
			return rc;
		np++;
	}
	for (size_t i = 0; i < np / 2; i++) {
		trail_hash t;
		memcpy(t, proof[i], 32);
		memcpy(proof[i], proof[np - 1 - i], 32);
		memcpy(proof[np - 1 - i], t, 32);
	}
	*nproof = np;
	return TRAIL_OK;
too_long:
	return trail_error_set(err, TRAIL_ELIMIT, "consistency proof needs more than %d hashes",
			       TRAIL_MERKLE_MAXPROOF);
}

int trail_merkle_verify_inclusion(uint64_t index, uint64_t size, const trail_hash leaf,
				  const trail_hash *proof, size_t nproof, const trail_hash root,
				  trail_error *err)
{
	if (index >= size)
		return trail_error_set(err, TRAIL_EVERIFY, "leaf index %llu is not below tree size %llu",
				       (unsigned long long)index, (unsigned long long)size);
	if (nproof > TRAIL_MERKLE_MAXPROOF)
		return trail_error_set(err, TRAIL_EVERIFY, "proof has %zu hashes, more than any tree needs",
				       nproof);
	uint64_t fn = index, sn = size - 1;
	trail_hash r;
	memcpy(r, leaf, 32);
	for (size_t i = 0; i < nproof; i++) {
		if (sn == 0)
			return trail_error_set(err, TRAIL_EVERIFY,
					       "inclusion proof too long: %zu hashes, %zu needed", nproof, i);
		if ((fn & 1) || fn == sn) {
			trail_merkle_node(proof[i], r, r);
			/* fn == sn on the right edge: skip the levels where our
			 * node has no sibling. */
			while (fn && !(fn & 1)) {
				fn >>= 1;
				sn >>= 1;
			}
		} else {
			trail_merkle_node(r, proof[i], r);
		}
		fn >>= 1;
		sn >>= 1;
	}
	if (sn != 0)
		return trail_error_set(err, TRAIL_EVERIFY, "inclusion proof too short: %zu hashes",
				       nproof);
	if (memcmp(r, root, 32) != 0)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "inclusion proof does not lead to the root");
	return TRAIL_OK;
}

int trail_merkle_verify_consistency(uint64_t m, uint64_t n, const trail_hash root1,
				    const trail_hash root2, const trail_hash *proof,
				    size_t nproof, trail_error *err)
{
	if (m > n)
		return trail_error_set(err, TRAIL_EVERIFY, "old size %llu is above new size %llu",
				       (unsigned long long)m, (unsigned long long)n);
	if (m == 0)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "a consistency proof from the empty tree proves nothing");
	if (m == n) {
		if (nproof)
			return trail_error_set(err, TRAIL_EVERIFY,
					       "equal sizes need an empty proof, got %zu hashes", nproof);
		if (memcmp(root1, root2, 32) != 0)
			return trail_error_set(err, TRAIL_EVERIFY, "equal sizes but different roots");
		return TRAIL_OK;
	}
	if (nproof == 0)
		return trail_error_set(err, TRAIL_EVERIFY, "empty consistency proof");
	if (nproof > TRAIL_MERKLE_MAXPROOF)
		return trail_error_set(err, TRAIL_EVERIFY, "proof has %zu hashes, more than any tree needs",
				       nproof);
	/* When m is a power of two the proof omits its root: it is root1. */
	const trail_hash *first = is_pow2(m) ? (const trail_hash *)root1 : &proof[0];
	size_t i = is_pow2(m) ? 0 : 1;
	uint64_t fn = m - 1, sn = n - 1;
	while (fn & 1) {
		fn >>= 1;
		sn >>= 1;
	}
	trail_hash fr, sr;
	memcpy(fr, *first, 32);
	memcpy(sr, *first, 32);
	for (; i < nproof; i++) {
		if (sn == 0)
			return trail_error_set(err, TRAIL_EVERIFY, "consistency proof too long: %zu hashes",
					       nproof);
		if ((fn & 1) || fn == sn) {
			trail_merkle_node(proof[i], fr, fr);
			trail_merkle_node(proof[i], sr, sr);
			while (fn && !(fn & 1)) {
				fn >>= 1;
				sn >>= 1;
			}
		} else {
			trail_merkle_node(sr, proof[i], sr);
		}
		fn >>= 1;
		sn >>= 1;
	}
	if (sn != 0)
		return trail_error_set(err, TRAIL_EVERIFY, "consistency proof too short: %zu hashes",
				       nproof);
	if (memcmp(fr, root1, 32) != 0)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "consistency proof does not lead to the old root");
	if (memcmp(sr, root2, 32) != 0)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "consistency proof does not lead to the new root");
	return TRAIL_OK;
}

/* In-memory tree: level k holds the floor(n / 2^k) complete subtrees. */
struct trail_merkle_mem {
	unsigned nlevels;
	uint64_t count[65];
	trail_hash *level[65];
	trail_hash hashes[];
};

trail_merkle_mem *trail_merkle_mem_new(const trail_hash *leaves, size_t n)
{
	size_t total = 0;
	for (size_t c = n; c; c >>= 1)
		total += c;
	if (total > (SIZE_MAX - sizeof(trail_merkle_mem)) / sizeof(trail_hash))
		return NULL;
	trail_merkle_mem *m = trail_malloc(sizeof *m + total * sizeof(trail_hash));
	if (!m)
		return NULL;
	m->nlevels = 0;
	trail_hash *p = m->hashes;
	for (size_t c = n; c; c >>= 1) {
		unsigned k = m->nlevels++;
		m->level[k] = p;
		m->count[k] = c;
		if (k == 0)
			memcpy(p, leaves, c * sizeof(trail_hash));
		else
			for (size_t j = 0; j < c; j++)
				trail_merkle_node(m->level[k - 1][2 * j], m->level[k - 1][2 * j + 1], p[j]);
		p += c;
	}
	return m;
}

int trail_merkle_mem_get(void *mem, unsigned level, uint64_t index, trail_hash out)
{
	const trail_merkle_mem *m = mem;
	if (level >= m->nlevels || index >= m->count[level])
		return TRAIL_EUSAGE;
	memcpy(out, m->level[level][index], 32);
	return TRAIL_OK;
}

void trail_merkle_mem_free(trail_merkle_mem *m)
{
	trail_free(m);
}

int trail_merkle_root_of(const trail_hash *leaves, size_t n, trail_hash out)
{
	if (n == 0) {
		crypto_hash_sha256(out, NULL, 0);
		return TRAIL_OK;
	}
	/*
	 * stack[] holds the complete subtrees of the leaves seen so far,
	 * largest first (the set bits of the count); a new leaf merges with
	 * as many as the carry in count+1 says.
	 */
	trail_hash stack[64];
	unsigned sp = 0;
	for (size_t i = 0; i < n; i++) {
		memcpy(stack[sp], leaves[i], 32);
		for (size_t c = i; c & 1; c >>= 1) {
			sp--;
			trail_merkle_node(stack[sp], stack[sp + 1], stack[sp]);
		}
		sp++;
	}
	while (sp > 1) {
		sp--;
		trail_merkle_node(stack[sp - 1], stack[sp], stack[sp - 1]);
	}
	memcpy(out, stack[0], 32);
	return TRAIL_OK;
}

/* JSON test cases. */

enum { FIELD_OK, FIELD_SHAPE, FIELD_BAD };

static int json_size(const json_t *v, uint64_t *out)
{
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);
		if (i < 0)
			return FIELD_BAD;
		*out = (uint64_t)i;
		return FIELD_OK;
	}
	if (json_is_real(v)) {
		/* Integers past 64-bit signed arrive as reals (see check_text). */
		double d = json_real_value(v);
		if (d != floor(d))
			return FIELD_SHAPE;
		if (!(d >= 0 && d < 9007199254740992.0))
			return FIELD_BAD;
		*out = (uint64_t)d;
		return FIELD_OK;
	}
	return FIELD_SHAPE;
}

/* Decodes into buf (max bytes); FIELD_BAD if undecodable or longer. */
static int json_hash(const json_t *v, uint8_t *buf, size_t max, size_t *len)
{
	if (!json_is_string(v))
		return FIELD_SHAPE;
	const char *s = json_string_value(v), *end;
	size_t slen = json_string_length(v);
	*len = 0;
	if (sodium_base642bin(buf, max, s, slen, NULL, len, &end,
			      sodium_base64_VARIANT_ORIGINAL) != 0 || end != s + slen)
		return FIELD_BAD;
	return FIELD_OK;
}

/* 32-byte hashes; anything else invalidates the proof. */
struct jproof {
	size_t n;
	int bad, toolong;
	trail_hash h[TRAIL_MERKLE_MAXPROOF];
};

static int json_proof(const json_t *v, struct jproof *p)
{
	p->n = 0;
	p->bad = p->toolong = 0;
	if (json_is_null(v))
		return FIELD_OK;
	if (!json_is_array(v))
		return FIELD_SHAPE;
	size_t i;
	json_t *e;
	json_array_foreach(v, i, e) {
		uint8_t buf[33];
		size_t len;
		int rc = json_hash(e, buf, sizeof buf, &len);
		if (rc == FIELD_SHAPE)
			return rc;
		if (rc == FIELD_BAD || len != 32)
			p->bad = 1;
		else if (p->n == TRAIL_MERKLE_MAXPROOF)
			p->toolong = 1;
		else
			memcpy(p->h[p->n++], buf, 32);
	}
	return FIELD_OK;
}

static int check_inclusion(const json_t *c, trail_error *err)
{
	uint64_t index = 0, size = 0;
	uint8_t root[33], leaf[33];
	size_t rlen = 0, llen = 0;
	struct jproof p;
	int r[5] = {
		json_size(json_object_get(c, "leafIdx"), &index),
		json_size(json_object_get(c, "treeSize"), &size),
		json_hash(json_object_get(c, "root"), root, sizeof root, &rlen),
		json_hash(json_object_get(c, "leafHash"), leaf, sizeof leaf, &llen),
		json_proof(json_object_get(c, "proof"), &p),
	};
	for (int i = 0; i < 5; i++)
		if (r[i] == FIELD_SHAPE)
			return trail_error_set(err, TRAIL_EDATA, "not an inclusion proof case: %s",
					       (const char *[]){"leafIdx", "treeSize", "root",
								"leafHash", "proof"}[i]);
	if (r[0] || r[1])
		return trail_error_set(err, TRAIL_EVERIFY, "leaf index or tree size out of range");
	if (r[2] || rlen != 32)
		return trail_error_set(err, TRAIL_EVERIFY, "root is not a 32-byte hash");
	if (r[3] || llen != 32)
		return trail_error_set(err, TRAIL_EVERIFY, "leaf hash is not a 32-byte hash");
	if (p.bad)
		return trail_error_set(err, TRAIL_EVERIFY, "proof holds a hash that is not 32 bytes");
	if (p.toolong)
		return trail_error_set(err, TRAIL_EVERIFY, "proof has more hashes than any tree needs");
	return trail_merkle_verify_inclusion(index, size, leaf, (const trail_hash *)p.h, p.n,
					     root, err);
}

static int check_consistency(const json_t *c, trail_error *err)
{
	uint64_t m = 0, n = 0;
	uint8_t r1[64], r2[64];
	size_t l1 = 0, l2 = 0;
	struct jproof p;
	int r[5] = {
		json_size(json_object_get(c, "size1"), &m),
		json_size(json_object_get(c, "size2"), &n),
		json_hash(json_object_get(c, "root1"), r1, sizeof r1, &l1),
		json_hash(json_object_get(c, "root2"), r2, sizeof r2, &l2),
		json_proof(json_object_get(c, "proof"), &p),
	};
	for (int i = 0; i < 5; i++)
		if (r[i] == FIELD_SHAPE)
			return trail_error_set(err, TRAIL_EDATA, "not a consistency proof case: %s",
					       (const char *[]){"size1", "size2", "root1", "root2",
								"proof"}[i]);
	if (r[0] || r[1])
		return trail_error_set(err, TRAIL_EVERIFY, "tree size out of range");
	if (r[2] || r[3])
		return trail_error_set(err, TRAIL_EVERIFY, "root is not a base64 hash");
	size_t np = p.n + (size_t)(p.bad | p.toolong);
	if (m == n && m > 0 && np == 0) {
		/* Nothing to recompute: the claim is only that the roots are one. */
		if (l1 != l2 || memcmp(r1, r2, l1) != 0)
			return trail_error_set(err, TRAIL_EVERIFY, "equal sizes but different roots");
		return TRAIL_OK;
	}
	if (l1 != 32 || l2 != 32)
		return trail_error_set(err, TRAIL_EVERIFY, "root is not a 32-byte hash");
	if (p.bad)
		return trail_error_set(err, TRAIL_EVERIFY, "proof holds a hash that is not 32 bytes");
	if (p.toolong)
		return trail_error_set(err, TRAIL_EVERIFY, "proof has more hashes than any tree needs");
	return trail_merkle_verify_consistency(m, n, r1, r2, (const trail_hash *)p.h, p.n, err);
}

int trail_merkle_check_json(const json_t *c, trail_error *err)
{
	if (!json_is_object(c))
		return trail_error_set(err, TRAIL_EDATA, "proof case is not a JSON object");
	int inc = json_object_get(c, "leafIdx") != NULL;
	int con = json_object_get(c, "size1") != NULL;
	if (inc == con)
		return trail_error_set(err, TRAIL_EDATA,
				       "proof case has neither or both of leafIdx and size1");
	return inc ? check_inclusion(c, err) : check_consistency(c, err);
}

int trail_merkle_check_text(const char *text, size_t len, trail_error *err)
{
	json_error_t je;
	json_t *c = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!c && json_error_code(&je) == json_error_numeric_overflow)
		c = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je);
	if (!c)
		return trail_error_set(err, TRAIL_EDATA, "line %d: %s", je.line, je.text);
	int rc = trail_merkle_check_json(c, err);
	json_decref(c);
	return rc;
}
