#include <string.h>

#include <sodium.h>

#include "attr/attr.h"
#include "core/core.h"

#define MAGIC "TRLSPAN"
#define VERSION 1
#define HDR 112 /* 8 + 4 + 4 + 8 + 8 + 4 + 4 + 32 + 32 + 8 (pad) */

struct trail_span_index {
	trail_map map;
	uint64_t n, nrec;
	uint32_t vocab;
	const uint32_t *tok;
	const uint64_t *starts;
	const uint32_t *sa;
	uint8_t root[32];
};

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4); /* little-endian hosts only; checked at open by the magic */
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/*
 * Suffix array by prefix doubling with two counting-sort passes per round:
 * O(n log L) for a longest repeat L. Separators are unique, so L is at most
 * the longest record.
 *   tok[n]: keys < K;  sa[n]: out
 */
static int build_sa(const uint32_t *tok, uint32_t n, uint32_t K, uint32_t *sa)
{
	uint32_t m = (K > n ? K : n) + 1;
	uint32_t *rank = trail_malloc((size_t)n * 4), *tmp = trail_malloc((size_t)n * 4),
		 *nr = trail_malloc((size_t)n * 4), *cnt = trail_calloc(m, 4);
	if (!rank || !tmp || !nr || !cnt) {
		trail_free(rank), trail_free(tmp), trail_free(nr), trail_free(cnt);
		return TRAIL_ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++)
		cnt[(rank[i] = tok[i])]++;
	for (uint32_t i = 1; i < m; i++)
		cnt[i] += cnt[i - 1];
	for (uint32_t i = n; i-- > 0;)
		sa[--cnt[rank[i]]] = i;
	for (uint32_t k = 1;; k *= 2) {
		/* order by second key: suffixes without one first, then by sa */
		uint32_t p = 0;
		for (uint32_t i = n - (k < n ? k : n); i < n; i++)
			tmp[p++] = i;
		for (uint32_t i = 0; i < n; i++)
			if (sa[i] >= k)
				tmp[p++] = sa[i] - k;
		/* stable by first key */
		memset(cnt, 0, (size_t)m * 4);
		for (uint32_t i = 0; i < n; i++)
			cnt[rank[i]]++;
		for (uint32_t i = 1; i < m; i++)
			cnt[i] += cnt[i - 1];
		for (uint32_t i = n; i-- > 0;)
			sa[--cnt[rank[tmp[i]]]] = tmp[i];
		uint32_t r = 0;
		nr[sa[0]] = 0;
		for (uint32_t i = 1; i < n; i++) {
			uint32_t a = sa[i - 1], b = sa[i];
			int64_t a2 = a + k < n ? (int64_t)rank[a + k] : -1;
			int64_t b2 = b + k < n ? (int64_t)rank[b + k] : -1;
			if (rank[a] != rank[b] || a2 != b2)
				r++;
			nr[b] = r;
		}
		memcpy(rank, nr, (size_t)n * 4);
		if (r == n - 1 || k >= n)
			break;
	}
	trail_free(rank), trail_free(tmp), trail_free(nr), trail_free(cnt);
	return TRAIL_OK;
}

int trail_span_build(const int32_t *const *recs, const size_t *lens, size_t nrec,
		     uint32_t vocab, const uint8_t root[32], const char *path, trail_error *err)
{
	uint64_t n = nrec;
	for (size_t r = 0; r < nrec; r++)
		n += lens[r];
	if (n == 0 || n >= UINT32_MAX || (uint64_t)vocab + nrec >= UINT32_MAX)
		return trail_error_set(err, n ? TRAIL_ELIMIT : TRAIL_EDATA,
				       n ? "training set too large for one span index (%llu tokens)"
					 : "empty training set", (unsigned long long)n);
	size_t body = (size_t)(4 * n + (n & 1 ? 4 : 0) + 8 * (nrec + 1) + 4 * n);
	uint8_t *file = trail_calloc(1, HDR + body);
	if (!file)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	uint32_t *tok = (uint32_t *)(file + HDR);
	uint64_t *starts = (uint64_t *)(file + HDR + 4 * n + (n & 1 ? 4 : 0));
	uint32_t *sa = (uint32_t *)(starts + nrec + 1);
	uint64_t p = 0;
	for (size_t r = 0; r < nrec; r++) {
		starts[r] = p;
		for (size_t i = 0; i < lens[r]; i++) {
			if (recs[r][i] < 0 || (uint32_t)recs[r][i] >= vocab) {
				trail_free(file);
				return trail_error_set(err, TRAIL_EDATA,
						       "record %zu: token %d outside the vocabulary", r,
						       recs[r][i]);
			}
			tok[p++] = (uint32_t)recs[r][i];
		}
		tok[p++] = vocab + (uint32_t)r;
	}
	starts[nrec] = p;
	int rc = build_sa(tok, (uint32_t)n, vocab + (uint32_t)nrec, sa);
	if (rc) {
		trail_free(file);
		return trail_error_set(err, rc, "out of memory building the suffix array");
	}
	memcpy(file, MAGIC, 8);
	put32(file + 8, VERSION);
	put64(file + 16, n);
	put64(file + 24, nrec);
	put32(file + 32, vocab);
	memcpy(file + 40, root, 32);
	trail_sha256(file + HDR, body, file + 72);
	rc = trail_write_atomic(path, file, HDR + body, 0644, err);
	trail_free(file);
	return rc;
}

int trail_span_open(const char *path, trail_span_index **out, trail_error *err)
{
	trail_span_index *x = trail_calloc(1, sizeof *x);
	*out = NULL;
	if (!x)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_map_file(path, &x->map, err);
	if (rc) {
		trail_free(x);
		return rc;
	}
	const uint8_t *f = x->map.data;
	uint32_t ver = 0;
	if (x->map.len < HDR || memcmp(f, MAGIC, 8)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "not a span index (bad magic)");
		goto fail;
	}
	memcpy(&ver, f + 8, 4);
	if (ver != VERSION) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0,
				    "span index version %u, this build reads %u: rebuild it", ver, VERSION);
		goto fail;
	}
	memcpy(&x->n, f + 16, 8);
	memcpy(&x->nrec, f + 24, 8);
	memcpy(&x->vocab, f + 32, 4);
	memcpy(x->root, f + 40, 32);
	uint64_t n = x->n;
	if (n == 0 || n >= UINT32_MAX || x->nrec == 0 || x->nrec > n ||
	    x->map.len != HDR + 4 * n + (n & 1 ? 4 : 0) + 8 * (x->nrec + 1) + 4 * n) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "span index truncated or inconsistent");
		goto fail;
	}
	uint8_t d[32];
	trail_sha256(f + HDR, x->map.len - HDR, d);
	if (sodium_memcmp(d, f + 72, 32)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "span index corrupt (digest mismatch)");
		goto fail;
	}
	x->tok = (const uint32_t *)(f + HDR);
	x->starts = (const uint64_t *)(f + HDR + 4 * n + (n & 1 ? 4 : 0));
	x->sa = (const uint32_t *)(x->starts + x->nrec + 1);
	*out = x;
	return TRAIL_OK;
fail:
	trail_span_free(x);
	return rc;
}

void trail_span_free(trail_span_index *x)
{
	if (!x)
		return;
	trail_unmap(&x->map);
	trail_free(x);
}

uint64_t trail_span_ntokens(const trail_span_index *x) { return x->n; }
uint64_t trail_span_nrecords(const trail_span_index *x) { return x->nrec; }
const uint8_t *trail_span_root(const trail_span_index *x) { return x->root; }

/* Token `off` of suffix s, or -1 past the end (sorts first). */
static int64_t at(const trail_span_index *x, uint32_t s, size_t off)
{
	return s + off < x->n ? (int64_t)x->tok[s + off] : -1;
}

/*
 * Narrow [*lo, *hi) — suffixes sharing the first `off` tokens — to those
 * whose token at `off` is t. Tokens at `off` are sorted within the range.
 */
static void narrow(const trail_span_index *x, size_t off, int64_t t, uint64_t *lo, uint64_t *hi)
{
	uint64_t a = *lo, b = *hi;
	while (a < b) {
		uint64_t m = a + (b - a) / 2;
		if (at(x, x->sa[m], off) < t)
			a = m + 1;
		else
			b = m;
	}
	uint64_t first = a;
	b = *hi;
	while (a < b) {
		uint64_t m = a + (b - a) / 2;
		if (at(x, x->sa[m], off) <= t)
			a = m + 1;
		else
			b = m;
	}
	*lo = first;
	*hi = a;
}

uint64_t trail_span_count(const trail_span_index *x, const int32_t *q, size_t n)
{
	uint64_t lo = 0, hi = x->n;
	for (size_t i = 0; i < n && lo < hi; i++)
		narrow(x, i, q[i] < 0 ? -2 : q[i], &lo, &hi);
	return hi - lo;
}

static uint64_t record_of(const trail_span_index *x, uint64_t pos)
{
	uint64_t a = 0, b = x->nrec; /* largest r with starts[r] <= pos */
	while (b - a > 1) {
		uint64_t m = a + (b - a) / 2;
		if (x->starts[m] <= pos)
			a = m;
		else
			b = m;
	}
	return a;
}

int trail_span_match(const trail_span_index *x, const int32_t *q, size_t n, size_t min_len,
		     uint64_t max_count, trail_span **out, size_t *nout, trail_error *err)
{
	size_t cap = 8, k = 0, prev_end = 0;
	trail_span *v = trail_malloc(cap * sizeof *v);
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (min_len == 0)
		min_len = 1;
	for (size_t i = 0; i < n; i++) {
		uint64_t lo = 0, hi = x->n, blo = 0, bhi = 0;
		size_t len = 0;
		while (i + len < n) {
			uint64_t a = lo, b = hi;
			narrow(x, len, q[i + len] < 0 ? -2 : q[i + len], &a, &b);
			if (a == b)
				break;
			lo = blo = a;
			hi = bhi = b;
			len++;
		}
		/* maximal: not inside the previous match */
		if (len < min_len || i + len <= prev_end)
			continue;
		prev_end = i + len;
		if (max_count && bhi - blo > max_count)
			continue;
		if (k == cap) {
			trail_span *nv = trail_realloc(v, 2 * cap * sizeof *v);
			if (!nv) {
				trail_free(v);
				return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			}
			v = nv;
			cap *= 2;
		}
		trail_span *s = &v[k++];
		memset(s, 0, sizeof *s);
		s->start = i;
		s->len = len;
		s->count = bhi - blo;
		/* distinct records, ascending; look at a bounded number of occurrences */
		for (uint64_t j = blo; j < bhi && j < blo + 4096; j++) {
			uint64_t r = record_of(x, x->sa[j]);
			size_t at_ = 0;
			while (at_ < s->nrecords && s->records[at_] < r)
				at_++;
			if (at_ < s->nrecords && s->records[at_] == r)
				continue;
			if (s->nrecords == TRAIL_SPAN_MAX_RECORDS) {
				if (at_ == s->nrecords)
					continue;
				s->nrecords--; /* keep the smallest ids */
			}
			memmove(&s->records[at_ + 1], &s->records[at_],
				(s->nrecords - at_) * sizeof *s->records);
			s->records[at_] = r;
			s->nrecords++;
		}
	}
	*out = v;
	*nout = k;
	return TRAIL_OK;
}
