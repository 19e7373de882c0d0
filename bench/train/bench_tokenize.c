/*
 * GPT-2 BPE encoding speed: usage bench_tokenize TOKENIZER-DIR FILE
 * Encodes FILE as one text, then line by line (one call a line, as mf-train
 * encodes records), ROUNDS times each with a fresh tokenizer; the first
 * round starts with an empty piece cache. Prints one NDJSON line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"
#include "util.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	trail_error e = {0};
	trail_tokenizer *t;
	void *buf;
	size_t len, n, ids_total = 0, lines = 0;
	int32_t *ids;
	if (argc != 3) {
		fprintf(stderr, "usage: bench_tokenize TOKENIZER-DIR FILE\n");
		return 64;
	}
	if (trail_tokenizer_load(argv[1], &t, &e) || trail_read_file(argv[2], 0, &buf, &len, &e)) {
		fprintf(stderr, "bench_tokenize: %s: %s\n", e.source, e.msg);
		return 66;
	}
	trail_tokenizer_free(t);
	double whole_cold = 0, whole = 0, per_line = 0;
	for (int r = 0; r < 3; r++) {
		trail_tokenizer_load(argv[1], &t, NULL);
		double t0 = now();
		trail_tokenizer_encode(t, buf, len, &ids, &n, NULL);
		double s = now() - t0;
		trail_free(ids);
		ids_total = n;
		if (r == 0)
			whole_cold = s;
		/* warm: the same text again, the cache filled */
		t0 = now();
		trail_tokenizer_encode(t, buf, len, &ids, &n, NULL);
		s = now() - t0;
		trail_free(ids);
		if (!whole || s < whole)
			whole = s;
		trail_tokenizer_free(t);
		trail_tokenizer_load(argv[1], &t, NULL);
		t0 = now();
		lines = 0;
		for (char *p = buf, *end = p + len; p < end;) {
			char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t l = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
			trail_tokenizer_encode(t, p, l, &ids, &n, NULL);
			trail_free(ids);
			p += l;
			lines++;
		}
		s = now() - t0;
		if (!per_line || s < per_line)
			per_line = s;
		trail_tokenizer_free(t);
	}
	printf("{\"file\":\"%s\",\"bytes\":%zu,\"ids\":%zu,\"bytes_per_id\":%.2f,\"lines\":%zu,"
	       "\"whole_cold_mb_s\":%.1f,\"whole_warm_mb_s\":%.1f,\"per_line_mb_s\":%.1f}\n",
	       argv[2], len, ids_total, (double)len / (double)ids_total, lines, (double)len / whole_cold / 1e6,
	       (double)len / whole / 1e6, (double)len / per_line / 1e6);
	trail_free(buf);
	return 0;
}
