/*
 * Low-information records (a farming defence): how much a record says that
 * the rest of its datanet does not. A word list of the datanet's most
 * frequent words, or boilerplate, is relevant to every answer made of those
 * words and takes a share of each; a definition or a fact brings words of
 * its own. Each record's information is the mean surprisal of its words
 * under the word frequencies of the other records; a record far below the
 * datanet's typical (a robust z-score) is flagged.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "attr/attr.h"
#include "core/core.h"

static int word_byte(unsigned char b)
{
	return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b >= 0x80;
}

/* The hashes of text's words (runs of letters, digits and non-ASCII bytes, ASCII folded to lower case). */
static int words_of(const char *text, size_t len, uint64_t **out, size_t *n)
{
	size_t cap = 16, k = 0;
	uint64_t *w = trail_malloc(cap * sizeof *w);
	char *buf = trail_malloc(len + 1);
	if (!w || !buf) {
		trail_free(w), trail_free(buf);
		return -1;
	}
	for (size_t i = 0; i < len;) {
		if (!word_byte((unsigned char)text[i])) {
			i++;
			continue;
		}
		size_t m = 0;
		for (; i < len && word_byte((unsigned char)text[i]); i++) {
			char ch = text[i];
			buf[m++] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
		}
		if (k == cap) {
			uint64_t *nw = trail_realloc(w, (cap *= 2) * sizeof *w);
			if (!nw) {
				trail_free(w), trail_free(buf);
				return -1;
			}
			w = nw;
		}
		w[k++] = XXH3_64bits(buf, m);
	}
	trail_free(buf);
	*out = w;
	*n = k;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Occurrences of v in the sorted s [n]. */
static size_t count_of(const uint64_t *s, size_t n, uint64_t v)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	size_t k = 0;
	while (lo + k < n && s[lo + k] == v)
		k++;
	return k;
}

static double median_of(double *v, size_t n)
{
	qsort(v, n, sizeof *v, cmp_dbl);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int trail_attr_record_info(const trail_dataset *d, const trail_tokenizer *tk, double *info, trail_error *err)
{
	size_t N = d->n, T = 0, V = 0;
	uint64_t **w = trail_calloc(N ? N : 1, sizeof *w), *all = NULL;
	size_t *nw = trail_calloc(N ? N : 1, sizeof *nw);
	int rc = TRAIL_OK;
	if (!w || !nw)
		goto oom;
	for (size_t i = 0; i < N; i++) {
		char *text = NULL;
		size_t len = 0;
		size_t n = d->len[i];
		/* the record's text: its tokens, end-of-text left out */
		if ((rc = trail_tokenizer_decode(tk, d->tok[i], n, &text, &len, err)))
			goto out;
		int bad = words_of(text, len, &w[i], &nw[i]);
		trail_free(text);
		if (bad)
			goto oom;
		qsort(w[i], nw[i], sizeof *w[i], cmp_u64);
		T += nw[i];
	}
	if (!(all = trail_malloc((T ? T : 1) * sizeof *all)))
		goto oom;
	for (size_t i = 0, k = 0; i < N; i++)
		memcpy(all + k, w[i], nw[i] * sizeof *all), k += nw[i];
	qsort(all, T, sizeof *all, cmp_u64);
	for (size_t k = 0; k < T; k++)
		V += !k || all[k] != all[k - 1];
	for (size_t i = 0; i < N; i++) {
		/* add-one estimate over the other records' words: a word only this record has is new */
		double s = 0, den = (double)(T - nw[i]) + (double)V;
		for (size_t j = 0; j < nw[i];) {
			size_t own = 1;
			while (j + own < nw[i] && w[i][j + own] == w[i][j])
				own++;
			size_t c = count_of(all, T, w[i][j]) - own;
			s += (double)own * -log(((double)c + 1) / den);
			j += own;
		}
		info[i] = nw[i] ? s / (double)nw[i] : NAN;
	}
	goto out;
oom:
	rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	for (size_t i = 0; w && i < N; i++)
		trail_free(w[i]);
	trail_free(w), trail_free(nw), trail_free(all);
	return rc;
}

int trail_attr_low_info(const trail_attr_ctx *c, double k, json_t **out, trail_error *err)
{
	const trail_dataset *d = c->data;
	size_t N = d->n, n = 0;
	double *info = trail_malloc((N ? N : 1) * sizeof *info), *v = trail_malloc((N ? N : 1) * sizeof *v);
	int rc = TRAIL_OK;
	*out = NULL;
	if (!info || !v) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto done;
	}
	if ((rc = trail_attr_record_info(d, c->tk, info, err)))
		goto done;
	for (size_t i = 0; i < N; i++)
		if (!isnan(info[i]))
			v[n++] = info[i];
	double med = n ? median_of(v, n) : 0;
	for (size_t i = 0; i < n; i++)
		v[i] = fabs(v[i] - med);
	double mad = n ? median_of(v, n) : 0;
	*out = json_array();
	for (size_t i = 0; i < N && *out; i++) {
		if (isnan(info[i]) || !(mad > 0) || !d->contributor[i])
			continue;
		double z = (info[i] - med) / mad;
		/* z in thousandths, so that the line's bytes do not depend on how a double prints */
		if (z < -k &&
		    json_array_append_new(*out, json_pack("{s:s, s:s, s:i, s:s, s:[s], s:I}", "type", "flags",
							  "contributor", d->contributor[i], "flagged", 1, "record",
							  d->id[i], "rules", "low-info", "z_milli",
							  (json_int_t)llround(z * 1000)))) {
			json_decref(*out);
			*out = NULL;
		}
	}
	if (!*out)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
done:
	trail_free(info), trail_free(v);
	return rc;
}
