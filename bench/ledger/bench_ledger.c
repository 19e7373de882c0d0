/*
 * Ledger benchmark: batched append, single fsynced append latency,
 * inclusion proof time, full verify rate — each beside libsodium's raw
 * SHA-256 rate on the same entry sizes (the limit: every entry is hashed
 * once as a leaf and about once more as an interior node).
 * usage: bench_ledger DIR N
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "../bench.h"

int main(int argc, char **argv)
{
	if (argc != 3)
		return 64;
	const char *home = argv[1];
	long n = atol(argv[2]);
	trail_store *s;
	trail_ledger *l;
	trail_error e = {0};
	trail_init();
	if (trail_store_init(home, "bench.example/log", NULL, &e) || trail_store_open(home, &s, &e) ||
	    trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, &e)) {
		fprintf(stderr, "bench_ledger: %s\n", e.msg);
		return 1;
	}
	/* Entries like the ones programs append: a type, a digest, a few fields. */
	json_t **ents = malloc((size_t)n * sizeof *ents);
	char dg[72];
	size_t bytes = 0;
	for (long i = 0; i < n; i++) {
		trail_digest_str(&i, sizeof i, dg);
		ents[i] = json_pack("{s:s, s:s, s:I, s:s}", "type", "contribution", "bundle_digest", dg,
				    "records", (json_int_t)(i % 1000), "datanet", "bench");
	}
	char *one;
	size_t onelen;
	trail_jcs(ents[0], &one, &onelen, NULL);

	/* raw SHA-256 over entry-sized inputs: 2 hashes per entry in the tree */
	uint8_t h[32];
	double t0 = now();
	for (long i = 0; i < n; i++)
		trail_sha256(one, onelen, h);
	double sha_entry = (double)n / (now() - t0);
	size_t big = 64u << 20;
	char *buf = calloc(1, big);
	t0 = now();
	trail_sha256(buf, big, h);
	double sha_mbs = (double)big / 1e6 / (now() - t0);
	free(buf);

	/* batched append, 4096 entries per commit (as trail-log append --batch) */
	t0 = now();
	for (long i = 0; i < n; i++) {
		if (trail_ledger_append(l, ents[i], NULL, &e))
			return 1;
		if ((i + 1) % 4096 == 0 && trail_ledger_commit(l, &e))
			return 1;
	}
	if (trail_ledger_commit(l, &e))
		return 1;
	double t_app = now() - t0;
	bytes = (size_t)n * (onelen + 1);

	/* single fsynced appends */
	enum { SINGLE = 200 };
	double lat[SINGLE];
	for (int i = 0; i < SINGLE; i++) {
		t0 = now();
		trail_ledger_append(l, ents[i], NULL, &e);
		if (trail_ledger_commit(l, &e))
			return 1;
		lat[i] = now() - t0;
	}
	qsort(lat, SINGLE, sizeof *lat, cmp);

	/* inclusion proofs at full size */
	uint64_t size = trail_ledger_size(l);
	trail_hash proof[TRAIL_MERKLE_MAXPROOF];
	size_t np;
	enum { PROOFS = 20000 };
	uint64_t r = 12345;
	t0 = now();
	for (int i = 0; i < PROOFS; i++) {
		r = r * 6364136223846793005ULL + 1442695040888963407ULL;
		if (trail_ledger_prove(l, (r >> 11) % size, size, proof, &np, &e))
			return 1;
	}
	double t_proof = (now() - t0) / PROOFS;

	/* full verify (fsck) */
	t0 = now();
	if (trail_ledger_verify(l, NULL, NULL, &e)) {
		fprintf(stderr, "verify: %s\n", e.msg);
		return 1;
	}
	double t_ver = now() - t0;

	printf("{\"entries\":%ld,\"entry_bytes\":%zu,\"sha256_entries_per_s\":%.0f,"
	       "\"sha256_mb_per_s\":%.0f,\"append_batched_per_s\":%.0f,\"append_mb_per_s\":%.1f,"
	       "\"append_single_p50_ms\":%.3f,\"append_single_p99_ms\":%.3f,"
	       "\"proof_us\":%.2f,\"verify_per_s\":%.0f}\n",
	       n, onelen, sha_entry, sha_mbs, (double)n / t_app, (double)bytes / 1e6 / t_app,
	       lat[SINGLE / 2] * 1e3, lat[SINGLE * 99 / 100] * 1e3, t_proof * 1e6,
	       (double)size / t_ver);
	for (long i = 0; i < n; i++)
		json_decref(ents[i]);
	free(ents);
	trail_free(one);
	trail_ledger_free(l);
	trail_store_free(s);
	return 0;
}
