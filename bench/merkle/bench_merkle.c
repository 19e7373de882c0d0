/*
 * Merkle proof benchmark: proof generation and verification over an
 * in-memory tree of N leaves (default 1,000,000), next to the cost of one
 * raw node hash (libsodium SHA-256 of 65 bytes), which bounds everything:
 * a verification is about log2(N) node hashes.
 *
 * Usage: bench_merkle [N]    Prints a markdown table on stdout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

#include "ledger/ledger.h"
#include "../bench.h"

static uint64_t rng = 0x62656e63686d6b6cULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Counts callback calls on the way to the in-memory tree. */
struct counted {
	trail_merkle_mem *mem;
	long calls;
};

static int counted_get(void *ctx, unsigned level, uint64_t index, trail_hash out)
{
	struct counted *c = ctx;
	c->calls++;
	return trail_merkle_mem_get(c->mem, level, index, out);
}

/*
 * Time of one node hash, folded into *best; called between the other
 * measurements too, so that the ratios are not skewed by a machine that is
 * busier at one moment than another.
 */
static void node_hash_ns(double *best, trail_hash a, const trail_hash b)
{
	enum { REPS = 100000 };
	double t0 = now();
	for (long i = 0; i < REPS; i++)
		trail_merkle_node(a, b, a);
	*best = fmin(*best, (now() - t0) * 1e9 / REPS);
}

static void row(const char *what, double ns, double node_ns, const char *extra)
{
	printf("| %s | %.0f ns | %.1f | %s |\n", what, ns, ns / node_ns, extra);
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
	enum { OPS = 20000, REPEAT = 5 };
	if (n < 2)
		return 64;
	trail_hash *leaves = malloc(n * sizeof *leaves), a = {1}, b = {2};
	if (!leaves)
		return 70;
	double t0 = now();
	for (uint64_t i = 0; i < n; i++)
		trail_merkle_leaf(&i, sizeof i, leaves[i]);
	double leaf_s = now() - t0;

	/* The limit: one node hash. Every figure is the best of REPEAT runs. */
	double node_ns = 1e30;
	node_hash_ns(&node_ns, a, b);

	t0 = now();
	trail_merkle_mem *mem = trail_merkle_mem_new(leaves, n);
	double build_s = now() - t0;
	if (!mem)
		return 70;
	trail_hash root, r2;
	t0 = now();
	trail_merkle_root_of(leaves, n, r2);
	double rootof_s = now() - t0;
	struct counted c = {mem, 0};

	size_t total_np = 0;
	trail_merkle_root(counted_get, &c, n, root);
	if (memcmp(root, r2, 32) != 0)
		return 70;

	/* Inclusion: generate, then verify, at random indices. */
	uint64_t *idx = malloc(OPS * sizeof *idx);
	trail_hash(*proofs)[TRAIL_MERKLE_MAXPROOF] = malloc(OPS * sizeof *proofs);
	size_t *nps = malloc(OPS * sizeof *nps);
	if (!idx || !proofs || !nps)
		return 70;
	memset(proofs, 0, OPS * sizeof *proofs); /* no page faults inside the timing */
	for (int i = 0; i < OPS; i++)
		idx[i] = rnd() % n;
	double inc_gen_ns = 1e30, inc_ver_ns = 1e30;
	for (int r = 0; r < REPEAT; r++) {
		c.calls = 0;
		t0 = now();
		for (int i = 0; i < OPS; i++)
			if (trail_merkle_prove_inclusion(counted_get, &c, idx[i], n, proofs[i], &nps[i],
							 NULL))
				return 70;
		inc_gen_ns = fmin(inc_gen_ns, (now() - t0) * 1e9 / OPS);
		t0 = now();
		for (int i = 0; i < OPS; i++)
			if (trail_merkle_verify_inclusion(idx[i], n, leaves[idx[i]], proofs[i], nps[i],
							  root, NULL))
				return 70;
		inc_ver_ns = fmin(inc_ver_ns, (now() - t0) * 1e9 / OPS);
		node_hash_ns(&node_ns, a, b);
	}
	double inc_calls = (double)c.calls / OPS;
	for (int i = 0; i < OPS; i++)
		total_np += nps[i];
	double inc_len = (double)total_np / OPS;

	/* Consistency from a random older size to n. */
	trail_hash *oldroots = malloc(OPS * sizeof *oldroots);
	if (!oldroots)
		return 70;
	for (int i = 0; i < OPS; i++) {
		idx[i] = 1 + rnd() % (n - 1);
		trail_merkle_root(trail_merkle_mem_get, mem, idx[i], oldroots[i]);
	}
	double con_gen_ns = 1e30, con_ver_ns = 1e30;
	for (int r = 0; r < REPEAT; r++) {
		c.calls = 0;
		t0 = now();
		for (int i = 0; i < OPS; i++)
			if (trail_merkle_prove_consistency(counted_get, &c, idx[i], n, proofs[i],
							   &nps[i], NULL))
				return 70;
		con_gen_ns = fmin(con_gen_ns, (now() - t0) * 1e9 / OPS);
		t0 = now();
		for (int i = 0; i < OPS; i++)
			if (trail_merkle_verify_consistency(idx[i], n, oldroots[i], root, proofs[i],
							    nps[i], NULL))
				return 70;
		con_ver_ns = fmin(con_ver_ns, (now() - t0) * 1e9 / OPS);
		node_hash_ns(&node_ns, a, b);
	}
	double con_calls = (double)c.calls / OPS;
	total_np = 0;
	for (int i = 0; i < OPS; i++)
		total_np += nps[i];
	double con_len = (double)total_np / OPS;

	char extra[128];
	printf("Tree of %llu leaves, %d random proofs of each kind, in-memory callback;\n"
	       "best of %d runs.\n\n",
	       (unsigned long long)n, OPS, REPEAT);
	printf("| operation | time | in node hashes | notes |\n|---|---|---|---|\n");
	row("node hash (libsodium SHA-256, 65 bytes)", node_ns, node_ns, "the limit");
	snprintf(extra, sizeof extra, "%.2f hashes, %.2f callback calls", inc_len, inc_calls);
	row("inclusion proof, generate", inc_gen_ns, node_ns, extra);
	row("inclusion proof, verify", inc_ver_ns, node_ns, "");
	snprintf(extra, sizeof extra, "%.2f hashes, %.2f callback calls", con_len, con_calls);
	row("consistency proof, generate", con_gen_ns, node_ns, extra);
	row("consistency proof, verify", con_ver_ns, node_ns, "");
	snprintf(extra, sizeof extra, "%.2f M leaves/s", n / build_s / 1e6);
	row("in-memory tree build, per leaf", build_s * 1e9 / n, node_ns, extra);
	snprintf(extra, sizeof extra, "%.2f M leaves/s", n / rootof_s / 1e6);
	row("root over leaf hashes, per leaf", rootof_s * 1e9 / n, node_ns, extra);
	snprintf(extra, sizeof extra, "%.2f M leaves/s (8-byte leaves)", n / leaf_s / 1e6);
	row("leaf hash", leaf_s * 1e9 / n, node_ns, extra);
	trail_merkle_mem_free(mem);
	free(leaves);
	free(idx);
	free(proofs);
	free(nps);
	free(oldroots);
	return 0;
}
