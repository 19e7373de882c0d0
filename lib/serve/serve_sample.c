/*
 * Sampling and output text: greedy decoding, temperature and top-p with a
 * counter-based random stream (draw i of a request is a function of its
 * seed and i alone, so its tokens do not depend on the batch it lands in),
 * stop strings, and how much text a stream may send before it is final.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_int.h"

/* splitmix64's finaliser: a bijection that mixes every input bit into every output bit */
static uint64_t mix(uint64_t z)
{
	z += 0x9E3779B97F4A7C15ULL;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

double serve_uniform(uint64_t seed, uint64_t i)
{
	return (double)(mix(mix(seed) ^ (i * 0xD1B54A32D192ED03ULL + 1)) >> 11) / 9007199254740992.0;
}

static int by_p(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	return x->p < y->p ? 1 : x->p > y->p ? -1 : x->id - y->id;
}

int serve_sample(const float *lg, int V, double temperature, double top_p, double u, cand *c)
{
	int best = 0;
	for (int v = 1; v < V; v++)
		if (lg[v] > lg[best])
			best = v;
	if (temperature == 0)
		return best;
	/* p_v proportional to exp((l_v - max) / T), in double */
	double sum = 0;
	for (int v = 0; v < V; v++) {
		c[v].p = exp(((double)lg[v] - lg[best]) / temperature);
		c[v].id = v;
		sum += c[v].p;
	}
	int k = V;
	double keep = sum;
	if (top_p < 1) { /* the smallest set of most likely tokens holding top_p of the mass */
		qsort(c, (size_t)V, sizeof *c, by_p);
		keep = 0;
		k = 0;
		while (k < V && (k == 0 || keep < top_p * sum))
			keep += c[k++].p;
	}
	double x = u * keep;
	for (int i = 0; i < k; i++) {
		if (x < c[i].p)
			return c[i].id;
		x -= c[i].p;
	}
	return c[k - 1].id;
}

long serve_find_stop(const sreq *q, const char *text, size_t n, size_t from)
{
	long at = -1;
	for (int i = 0; i < q->nstop; i++) {
		size_t sl = q->stoplen[i], f = from >= sl - 1 ? from - (sl - 1) : 0;
		if (n < sl || f > n - sl)
			continue;
		const char *h = memmem(text + f, n - f, q->stops[i], sl);
		if (h && (at < 0 || h - text < at))
			at = h - text;
	}
	return at;
}

size_t serve_safe_prefix(const sreq *q, const char *text, size_t n)
{
	size_t k = n;
	/* hold back the longest tail that is the start of a stop string */
	for (int i = 0; i < q->nstop; i++)
		for (size_t l = q->stoplen[i] - 1; l > 0; l--)
			if (l <= n && !memcmp(text + n - l, q->stops[i], l)) {
				if (n - l < k)
					k = n - l;
				break;
			}
	/* and an unfinished UTF-8 character */
	size_t j = k, back = 0;
	while (j > 0 && back < 4 && ((unsigned char)text[j - 1] & 0xC0) == 0x80)
		j--, back++;
	if (j > 0) {
		unsigned char c = (unsigned char)text[j - 1];
		size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
		if (len > back + 1)
			k = j - 1;
	}
	return k;
}

/* NUL too: strict JSON readers (jansson's, without JSON_ALLOW_NUL) refuse "\u0000". */
json_t *serve_text_json(const char *s, size_t n)
{
	if (trail_utf8_valid(s, n) && !memchr(s, 0, n))
		return json_stringn(n ? s : "", n);
	trail_buf b = {0};
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
		if (k && c && i + k <= n && trail_utf8_valid(s + i, k)) {
			trail_buf_put(&b, s + i, k);
			i += k;
		} else {
			trail_buf_put(&b, "\xef\xbf\xbd", 3);
			i++;
		}
	}
	json_t *j = json_stringn(b.p ? b.p : "", b.n);
	trail_buf_release(&b);
	return j;
}
