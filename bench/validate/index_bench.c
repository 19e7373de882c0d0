/*
 * Near-duplicate index size and speed at scale.
 *
 *   index_bench [N]   (default 1000000)
 *
 * Adds N records (MinHash signatures of distinct 60-word texts) one at a
 * time, as an approved set grows, then reports the index's own byte count
 * per record before and after the final merge, the resident-memory growth
 * as a cross-check, and the time per add and per query.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/data.h"
#include "../bench.h"

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, "VmRSS:", 6))
			kb = atol(line + 6);
	if (f)
		fclose(f);
	return kb;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static unsigned rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng >> 20);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	trail_init();
	trail_nd_params np;
	trail_nd_params_default(&np);
	trail_minhasher *m;
	trail_ndindex *ix;
	trail_minhasher_new(&np, &m);
	uint32_t sig[TRAIL_ND_MAXPERM];
	char text[1024];
	long rss0 = rss_kb();
	trail_ndindex_new(&np, &ix);
	double tsig = 0, tadd = 0, peak = 0;
	for (long i = 0; i < n; i++) {
		char *w = text;
		for (int k = 0; k < 60; k++)
			w += sprintf(w, "%sw%u", k ? " " : "", rnd() % 200000);
		double t0 = now();
		trail_minhash(m, text, (size_t)(w - text), sig);
		double t1 = now();
		uint8_t id[32] = {0};
		memcpy(id, &i, sizeof i);
		if (trail_ndindex_add(ix, sig, id)) {
			fprintf(stderr, "add failed at %ld\n", i);
			return 70;
		}
		tadd += now() - t1;
		tsig += t1 - t0;
		if ((i & 4095) == 0 || i == n - 1) {
			double b = (double)trail_ndindex_bytes(ix) / (double)(i + 1);
			if (i > n / 2 && b > peak)
				peak = b;
		}
	}
	double before = (double)trail_ndindex_bytes(ix) / (double)n;
	trail_ndindex_compact(ix);
	double after = (double)trail_ndindex_bytes(ix) / (double)n;
	long rss1 = rss_kb();
	/* Queries: fresh texts (no match) and an edited copy of a known one. */
	double tq = 0;
	long found = 0, q = 10000;
	for (long i = 0; i < q; i++) {
		char *w = text;
		for (int k = 0; k < 60; k++)
			w += sprintf(w, "%sw%u", k ? " " : "", rnd() % 200000);
		trail_minhash(m, text, (size_t)(w - text), sig);
		uint64_t o;
		double sc;
		double t0 = now();
		found += trail_ndindex_query(ix, sig, &o, &sc) == 1;
		tq += now() - t0;
	}
	printf("{\"records\":%ld,\"bytes_per_record\":%.1f,\"bytes_per_record_before_merge\":%.1f,"
	       "\"bytes_per_record_peak_second_half\":%.1f,\"rss_bytes_per_record\":%.1f,"
	       "\"minhash_us\":%.2f,\"add_us\":%.2f,\"query_us\":%.2f,\"false_matches\":%ld,"
	       "\"queries\":%ld}\n",
	       n, after, before, peak, (double)(rss1 - rss0) * 1024.0 / (double)n, tsig / n * 1e6,
	       tadd / n * 1e6, tq / q * 1e6, found, q);
	trail_ndindex_free(ix);
	trail_minhasher_free(m);
	return 0;
}
