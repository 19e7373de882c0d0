/*
 * GPT-2 BPE encoding speed: usage bench_tokenize TOKENIZER-DIR FILE
 * Encodes FILE as one text, then line by line (one call a line, as mf-train
 * encodes records), 5 rounds each with a fresh tokenizer (an empty piece
 * cache: "cold"), the whole text again once the cache is filled ("warm").
 * Each figure is the best round, in MB (10^6 bytes) per second of wall time
 * and per second of the thread's CPU time (which other jobs on a shared
 * machine disturb less). Prints one NDJSON line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/model.h"
#include "core/core.h"

typedef struct stamp {
	double wall, cpu;
} stamp;

static stamp now(void)
{
	struct timespec w, c;
	clock_gettime(CLOCK_MONOTONIC, &w);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c);
	return (stamp){(double)w.tv_sec + 1e-9 * (double)w.tv_nsec, (double)c.tv_sec + 1e-9 * (double)c.tv_nsec};
}

/* keep the best (shortest) of each clock */
static void best(stamp *b, stamp t0, stamp t1)
{
	double w = t1.wall - t0.wall, c = t1.cpu - t0.cpu;
	if (!b->wall || w < b->wall)
		b->wall = w;
	if (!b->cpu || c < b->cpu)
		b->cpu = c;
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
	stamp cold = {0}, warm = {0}, line = {0}, t0;
	for (int r = 0; r < 5; r++) {
		trail_tokenizer_load(argv[1], &t, NULL);
		t0 = now();
		trail_tokenizer_encode(t, buf, len, &ids, &n, NULL);
		best(&cold, t0, now());
		trail_free(ids);
		ids_total = n;
		t0 = now();
		trail_tokenizer_encode(t, buf, len, &ids, &n, NULL);
		best(&warm, t0, now());
		trail_free(ids);
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
		best(&line, t0, now());
		trail_tokenizer_free(t);
	}
	double mb = (double)len / 1e6;
	printf("{\"file\":\"%s\",\"bytes\":%zu,\"ids\":%zu,\"bytes_per_id\":%.2f,\"lines\":%zu,"
	       "\"mb_s\":{\"cold\":%.1f,\"warm\":%.1f,\"per_line\":%.1f},"
	       "\"mb_per_cpu_s\":{\"cold\":%.1f,\"warm\":%.1f,\"per_line\":%.1f}}\n",
	       argv[2], len, ids_total, (double)len / (double)ids_total, lines, mb / cold.wall, mb / warm.wall,
	       mb / line.wall, mb / cold.cpu, mb / warm.cpu, mb / line.cpu);
	trail_free(buf);
	return 0;
}
