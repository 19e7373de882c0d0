/*
 * The ledger against a naive RFC 9162 tree: roots and proofs at every size
 * up to 300 and at random sizes up to 100,000, across reopen; torn tails.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "tap.h"

static trail_hash *leaves;

/* MTH(D[a:b]) computed recursively from the leaf hashes. */
static void naive(uint64_t a, uint64_t b, trail_hash out)
{
	if (b - a == 1) {
		memcpy(out, leaves[a], 32);
		return;
	}
	uint64_t k = 1;
	while (k * 2 < b - a)
		k *= 2;
	trail_hash l, r;
	naive(a, a + k, l);
	naive(a + k, b, r);
	trail_merkle_node(l, r, out);
}

static void naive_root(uint64_t n, trail_hash out)
{
	if (n == 0)
		trail_sha256("", 0, out);
	else
		naive(0, n, out);
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(uint64_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return n ? rng % n : 0;
}

static int append_n(trail_ledger *l, uint64_t from, uint64_t count)
{
	for (uint64_t i = from; i < from + count; i++) {
		json_t *e = json_pack("{s:s, s:I}", "type", "t", "i", (json_int_t)i);
		char *s;
		size_t n;
		trail_jcs(e, &s, &n, NULL);
		trail_merkle_leaf(s, n, leaves[i]);
		trail_free(s);
		if (trail_ledger_append(l, e, NULL, NULL))
			return 1;
		json_decref(e);
	}
	return trail_ledger_commit(l, NULL);
}

/* Roots, inclusion and consistency proofs at size n agree with the naive tree. */
static int check_size(trail_ledger *l, uint64_t n)
{
	trail_hash r, want, proof[TRAIL_MERKLE_MAXPROOF], r2;
	size_t np;
	if (trail_ledger_root(l, n, r, NULL))
		return 0;
	naive_root(n, want);
	if (memcmp(r, want, 32))
		return 0;
	if (n == 0)
		return 1;
	uint64_t i = rnd(n);
	if (trail_ledger_prove(l, i, n, proof, &np, NULL) ||
	    trail_merkle_verify_inclusion(i, n, leaves[i], (const trail_hash *)proof, np, r, NULL))
		return 0;
	uint64_t m = 1 + rnd(n); /* size 0 has no consistency proof */
	naive_root(m, r2);
	if (trail_ledger_consistency(l, m, n, proof, &np, NULL) ||
	    trail_merkle_verify_consistency(m, n, r2, r, (const trail_hash *)proof, np, NULL))
		return 0;
	return 1;
}

int main(void)
{
	char dir[] = "/tmp/trail-ledger-XXXXXX", *home;
	trail_store *s;
	trail_ledger *l;
	trail_init();
	ok(mkdtemp(dir) != NULL, "temp dir");
	home = trail_path(dir, "h");
	leaves = calloc(100001, sizeof *leaves);
	ok(trail_store_init(home, "t.example/log", NULL, NULL) == 0 && trail_store_open(home, &s, NULL) == 0,
	   "store");
	ok(trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL) == 0, "open for writing");
	int bad = 0;
	for (uint64_t n = 0; n <= 300; n++) {
		if (n && append_n(l, n - 1, 1))
			bad++;
		if (!check_size(l, n))
			bad++;
	}
	ok(bad == 0, "every size 0..300: root, inclusion and consistency match the naive tree");
	trail_ledger_free(l);

	/* Reopen (peaks reloaded from disk) and grow in uneven batches to 100,000. */
	uint64_t size = 300;
	bad = 0;
	ok(trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL) == 0 && trail_ledger_size(l) == 300,
	   "reopened at size 300");
	while (size < 100000) {
		uint64_t k = 1 + rnd(9000);
		if (size + k > 100000)
			k = 100000 - size;
		if (append_n(l, size, k))
			bad++;
		size += k;
		if (rnd(3) == 0) { /* sometimes reopen between batches */
			trail_ledger_free(l);
			if (trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL))
				bad++;
		}
		for (int t = 0; t < 5; t++)
			if (!check_size(l, 1 + rnd(size)))
				bad++;
		if (!check_size(l, size))
			bad++;
	}
	ok(bad == 0, "random sizes up to 100,000: roots and proofs match the naive tree");
	ok(trail_ledger_verify(l, NULL, NULL, NULL) == 0, "fsck of 100,000 entries");

	/* Pending appends that are never committed leave nothing behind. */
	json_t *e = json_pack("{s:s}", "type", "lost");
	trail_ledger_append(l, e, NULL, NULL);
	json_decref(e);
	trail_ledger_free(l);
	ok(trail_ledger_open(s, 0, &l, NULL) == 0 && trail_ledger_size(l) == 100000,
	   "uncommitted append discarded");
	trail_ledger_free(l);

	/* A torn tail (bytes past the head in every file) is cut on open. */
	const char *files[] = {"log/data", "log/index", "log/tree"};
	for (int i = 0; i < 3; i++) {
		char *p = trail_path(home, files[i]);
		int fd = open(p, O_WRONLY | O_APPEND);
		ok(fd >= 0 && write(fd, "garbage-tail\n{\"x\"", 17) == 17, "append garbage to %s", files[i]);
		close(fd);
		trail_free(p);
	}
	ok(trail_ledger_open(s, 0, &l, NULL) == 0 && trail_ledger_size(l) == 100000 &&
	   trail_ledger_verify(l, NULL, NULL, NULL) == 0, "reader ignores the torn tail");
	trail_ledger_free(l);
	ok(trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL) == 0 && append_n(l, 100000, 1) == 0 &&
	   trail_ledger_verify(l, NULL, NULL, NULL) == 0, "writer cuts the tail and appends after it");
	trail_ledger_free(l);

	/* NOWAIT while another writer holds the lock. */
	trail_ledger *l2;
	trail_error err = {0};
	ok(trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL) == 0 &&
	   trail_ledger_open(s, TRAIL_LEDGER_WRITE | TRAIL_LEDGER_NOWAIT, &l2, &err) == TRAIL_EUNAVAIL,
	   "second writer gets TRAIL_EUNAVAIL with NOWAIT");
	trail_ledger_free(l);

	trail_store_free(s);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	trail_free(home);
	free(leaves);
	return tap_done();
}
