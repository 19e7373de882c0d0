/* The span engine against naive scans: suffix order, counts, maximal matches. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attr/attr.h"
#include "tap.h"
#include "core/core.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng % n);
}

/* Naive: occurrences of q inside records (never across a boundary). */
static uint64_t naive_count(int32_t **recs, size_t *lens, size_t nrec, const int32_t *q, size_t n,
			    uint64_t *firstrec)
{
	uint64_t c = 0;
	*firstrec = UINT64_MAX;
	for (size_t r = 0; r < nrec; r++)
		for (size_t i = 0; i + n <= lens[r]; i++)
			if (!memcmp(recs[r] + i, q, n * sizeof *q)) {
				c++;
				if (*firstrec == UINT64_MAX)
					*firstrec = r;
			}
	return c;
}

int main(void)
{
	trail_init();
	char path[] = "/tmp/trail-span-XXXXXX";
	int fd = mkstemp(path);
	close(fd);
	enum { NREC = 300, VOCAB = 12 };
	int32_t *recs[NREC];
	size_t lens[NREC];
	for (int r = 0; r < NREC; r++) {
		lens[r] = 1 + rnd(60);
		if (r > 10 && rnd(5) == 0) { /* a copy, with an edit */
			int src = (int)rnd((uint32_t)r);
			lens[r] = lens[src];
			recs[r] = malloc(lens[r] * sizeof(int32_t));
			memcpy(recs[r], recs[src], lens[r] * sizeof(int32_t));
			recs[r][rnd((uint32_t)lens[r])] = (int32_t)rnd(VOCAB);
		} else {
			recs[r] = malloc(lens[r] * sizeof(int32_t));
			for (size_t i = 0; i < lens[r]; i++)
				recs[r][i] = (int32_t)rnd(VOCAB);
		}
	}
	uint8_t root[32] = {1, 2, 3};
	trail_error e = {0};
	ok(trail_span_build((const int32_t *const *)recs, lens, NREC, VOCAB, root, path, &e) == 0,
	   "build: %s", e.msg);
	trail_span_index *x;
	ok(trail_span_open(path, &x, &e) == 0, "open");
	ok(!memcmp(trail_span_root(x), root, 32) && trail_span_nrecords(x) == NREC, "header");

	int bad = 0;
	for (int t = 0; t < 3000; t++) {
		int32_t q[8];
		size_t n = 1 + rnd(8);
		if (rnd(2)) { /* a substring of some record: often present */
			int r = (int)rnd(NREC);
			if (lens[r] < n)
				n = lens[r];
			memcpy(q, recs[r] + rnd((uint32_t)(lens[r] - n + 1)), n * sizeof *q);
		} else {
			for (size_t i = 0; i < n; i++)
				q[i] = (int32_t)rnd(VOCAB);
		}
		uint64_t fr;
		if (trail_span_count(x, q, n) != naive_count(recs, lens, NREC, q, n, &fr))
			bad++;
	}
	ok(bad == 0, "3000 counts match a naive scan (%d differ)", bad);

	/* maximal matches: each reported span occurs, cannot be extended, and its
	 * count and first record agree with a naive scan */
	bad = 0;
	int spans = 0;
	for (int t = 0; t < 300; t++) {
		int32_t q[40];
		size_t n = 40;
		int r = (int)rnd(NREC);
		for (size_t i = 0; i < n; i++)
			q[i] = (int32_t)rnd(VOCAB);
		size_t take = lens[r] < 20 ? lens[r] : 20;
		memcpy(q + 10, recs[r], take * sizeof *q); /* plant a record's prefix */
		trail_span *s;
		size_t ns;
		if (trail_span_match(x, q, n, 4, 0, &s, &ns, &e)) {
			bad++;
			continue;
		}
		size_t prev_end = 0;
		for (size_t k = 0; k < ns; k++) {
			uint64_t fr, c = naive_count(recs, lens, NREC, q + s[k].start, s[k].len, &fr);
			uint64_t fr2;
			int extends = s[k].start + s[k].len < n &&
				      naive_count(recs, lens, NREC, q + s[k].start, s[k].len + 1, &fr2) > 0;
			if (c != s[k].count || c == 0 || extends || s[k].len < 4 ||
			    s[k].start + s[k].len <= prev_end || s[k].nrecords == 0 || s[k].records[0] != fr)
				bad++;
			prev_end = s[k].start + s[k].len;
			spans++;
		}
		/* the planted prefix is covered by some span */
		int covered = take < 4;
		for (size_t k = 0; k < ns; k++)
			if (s[k].start <= 10 && s[k].start + s[k].len >= 10 + take)
				covered = 1;
		if (!covered)
			bad++;
		trail_free(s);
	}
	ok(bad == 0 && spans > 300, "maximal spans are exact, unextendable and cover planted text (%d spans, %d bad)",
	   spans, bad);

	/* corruption and truncation are refused */
	FILE *f = fopen(path, "r+b");
	fseek(f, 200, SEEK_SET);
	int c = fgetc(f);
	fseek(f, 200, SEEK_SET);
	fputc(c ^ 1, f);
	fclose(f);
	trail_span_index *y;
	ok(trail_span_open(path, &y, &e) == TRAIL_EDATA, "flipped byte refused: %s", e.msg);
	ok(truncate(path, 150) == 0 && trail_span_open(path, &y, &e) == TRAIL_EDATA, "truncated index refused");
	trail_span_free(x);
	unlink(path);
	for (int r = 0; r < NREC; r++)
		free(recs[r]);

	/* scale: a million tokens build in reasonable time */
	enum { BIG = 20000 };
	int32_t **br = malloc(BIG * sizeof *br);
	size_t *bl = malloc(BIG * sizeof *bl);
	for (int r = 0; r < BIG; r++) {
		bl[r] = 50;
		br[r] = malloc(50 * sizeof(int32_t));
		for (int i = 0; i < 50; i++)
			br[r][i] = (int32_t)rnd(50257);
		if (r % 10 == 9)
			memcpy(br[r], br[r - 1], 50 * sizeof(int32_t)); /* exact duplicates */
	}
	ok(trail_span_build((const int32_t *const *)br, bl, BIG, 50257, root, path, &e) == 0 &&
	   trail_span_open(path, &x, &e) == 0, "1M-token index with duplicates");
	ok(trail_span_count(x, br[8], 50) == 2, "a duplicated record counts twice");
	trail_span_free(x);
	unlink(path);
	for (int r = 0; r < BIG; r++)
		free(br[r]);
	free(br);
	free(bl);
	return tap_done();
}
