/*
 * Attribution records: an inference event in, its query gradient scored
 * against the index, the top records, contributor shares, verbatim spans,
 * copy clusters and (optionally) the proof chain of each top record out.
 * Sessions open everything once and check that it all belongs together.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "attr/attr_int.h"
#include "data/data.h"
#include "core/core.h"
#include "ledger/ledger.h"
#include "model/model.h"

static const char *jstr(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

/* ---- events ------------------------------------------------------------------------- */

/* Token ids under the first of `keys` that holds an array of integers. */
static int ids_of(const json_t *ev, const char *const *keys, int32_t **out, size_t *n, int *found,
		  trail_error *err)
{
	*found = 0;
	for (; *keys; keys++) {
		json_t *a = json_object_get(ev, *keys);
		if (!json_is_array(a))
			continue;
		size_t k = json_array_size(a), i;
		json_t *v;
		int32_t *t = trail_malloc((k ? k : 1) * sizeof *t);
		if (!t)
			return oom(err);
		json_array_foreach(a, i, v) {
			if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
				trail_free(t);
				return trail_error_set(err, TRAIL_EDATA, "event: %s[%zu] is not a token id", *keys, i);
			}
			t[i] = (int32_t)json_integer_value(v);
		}
		*out = t;
		*n = k;
		*found = 1;
		return TRAIL_OK;
	}
	return TRAIL_OK;
}

/* The query: prompt and output tokens, from ids or else from text. */
static int event_tokens(const trail_attr_ctx *c, const json_t *ev, int32_t **tok, size_t *n, size_t *first,
			trail_error *err)
{
	static const char *pk[] = {"prompt_ids", "prompt_tokens", "prompt_token_ids", NULL};
	static const char *ok[] = {"output_ids", "output_tokens", "output_token_ids", "completion_ids", NULL};
	static const char *pt[] = {"prompt", "prompt_text", NULL};
	static const char *ot[] = {"output_text", "text", "completion", NULL};
	int32_t *p = NULL, *o = NULL;
	size_t np = 0, no = 0;
	int fp, fo, rc;
	if ((rc = ids_of(ev, pk, &p, &np, &fp, err)) || (rc = ids_of(ev, ok, &o, &no, &fo, err)))
		goto out;
	const char *s;
	for (const char *const *k = pt; !fp && *k; k++)
		if ((s = jstr(ev, *k))) {
			if ((rc = trail_tokenizer_encode(c->tk, s, strlen(s), &p, &np, err)))
				goto out;
			fp = 1;
		}
	for (const char *const *k = ot; !fo && *k; k++)
		if ((s = jstr(ev, *k))) {
			if ((rc = trail_tokenizer_encode(c->tk, s, strlen(s), &o, &no, err)))
				goto out;
			fo = 1;
		}
	if (!fo || !no) {
		rc = trail_error_set(err, TRAIL_EDATA, "event: no output tokens or text");
		goto out;
	}
	int32_t eot = trail_tokenizer_eot(c->tk);
	if (!np && eot < 0) {
		rc = trail_error_set(err, TRAIL_EDATA, "event: an empty prompt and no end-of-text token to start from");
		goto out;
	}
	size_t lead = np ? 0 : 1, total = lead + np + no, P = (size_t)trail_model_config(c->model)->n_positions;
	int32_t *t = trail_malloc(total * sizeof *t);
	if (!t) {
		rc = oom(err);
		goto out;
	}
	if (lead)
		t[0] = eot;
	if (np)
		memcpy(t + lead, p, np * sizeof *t);
	memcpy(t + lead + np, o, no * sizeof *t);
	size_t f = lead + np;
	/* longer than the context: keep the window that ends the answer's first n_positions tokens */
	if (total > P) {
		size_t keep_out = no < P - 1 ? no : P - 1, start = f + keep_out - P;
		memmove(t, t + start, P * sizeof *t);
		f -= start;
		total = P;
	}
	*tok = t;
	*n = total;
	*first = f;
out:
	trail_free(p), trail_free(o);
	return rc;
}

static const json_t *event_of(const json_t *v)
{
	const json_t *e = json_object_get(v, "event");
	return json_is_object(e) ? e : v;
}

/* The base and adapter named by the event must be the index's. */
static int check_event_model(const trail_attr_ctx *c, const json_t *ev, trail_error *err)
{
	const trail_attr_info *in = trail_attr_index_info(c->index);
	static const char *bk[] = {"base_digest", "base", "model_digest", NULL};
	static const char *ak[] = {"adapter_digest", "adapter", NULL};
	for (const char *const *k = bk; *k; k++) {
		const char *s = jstr(ev, *k);
		if (s && !strncmp(s, "sha256:", 7)) {
			if (strcmp(s, in->id.model))
				return trail_error_set(err, TRAIL_EDATA, "event: base model %s is not the index's %s", s,
						       in->id.model);
			break;
		}
	}
	for (const char *const *k = ak; *k; k++) {
		json_t *v = json_object_get(ev, *k);
		if (!v)
			continue;
		const char *s = json_string_value(v);
		if (json_is_null(v) && in->id.adapter[0])
			return trail_error_set(err, TRAIL_EDATA, "event: no adapter, the index is for adapter %s",
					       in->id.adapter);
		if (s && !strncmp(s, "sha256:", 7) && strcmp(s, in->id.adapter))
			return trail_error_set(err, TRAIL_EDATA, "event: adapter %s is not the index's %s", s,
					       in->id.adapter[0] ? in->id.adapter : "(none)");
		if (s && !strncmp(s, "sha256:", 7))
			break;
	}
	return TRAIL_OK;
}

/* ---- clusters ------------------------------------------------------------------------ */

static long entry_of(const trail_attr_ctx *c, size_t i)
{
	json_t *r = c->records ? json_array_get(c->records, i) : NULL;
	json_t *e = json_object_get(r, "entry");
	return json_is_integer(e) ? (long)json_integer_value(e) : -1;
}

static uint64_t *shingles(const trail_dataset *d, size_t i, size_t *n)
{
	size_t L = d->len[i], k = L >= 8 ? L - 7 : 1;
	uint64_t *s = trail_malloc(k * sizeof *s);
	if (!s)
		return NULL;
	for (size_t j = 0; j < k; j++)
		s[j] = XXH3_64bits(d->tok[i] + j, (L >= 8 ? 8 : L) * sizeof(int32_t));
	*n = k;
	return s;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double jaccard(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
	size_t i = 0, j = 0, inter = 0, ua = 0, ub = 0;
	while (i < na || j < nb) { /* distinct values only */
		if (j == nb || (i < na && a[i] < b[j])) {
			ua++;
			uint64_t v = a[i];
			while (i < na && a[i] == v)
				i++;
		} else if (i == na || b[j] < a[i]) {
			ub++;
			uint64_t v = b[j];
			while (j < nb && b[j] == v)
				j++;
		} else {
			inter++;
			uint64_t v = a[i];
			while (i < na && a[i] == v)
				i++;
			while (j < nb && b[j] == v)
				j++;
		}
	}
	size_t uni = ua + ub + inter;
	return uni ? (double)inter / (double)uni : 0;
}

static size_t find(size_t *parent, size_t i)
{
	while (parent[i] != i)
		i = parent[i] = parent[parent[i]];
	return i;
}

typedef struct ord {
	long entry;
	size_t rec;
} ord;

static int cmp_ord(const void *a, const void *b)
{
	const ord *x = a, *y = b;
	/* records with a ledger entry come before those without, earliest first; then training order */
	if (x->entry != y->entry) {
		if (x->entry < 0 || y->entry < 0)
			return x->entry < 0 ? 1 : -1;
		return x->entry < y->entry ? -1 : 1;
	}
	return x->rec < y->rec ? -1 : x->rec > y->rec;
}

json_t *trail_attr_clusters(const trail_attr_ctx *c, const size_t *recs, size_t n)
{
	const trail_dataset *d = c->data;
	json_t *out = json_array();
	if (!out || !n)
		return out;
	/* candidates: the given records and every exact copy of one of them */
	size_t cap = n * 2 + 16, m = 0;
	size_t *cand = trail_malloc(cap * sizeof *cand);
	uint64_t *h = trail_malloc(n * sizeof *h);
	if (!cand || !h)
		goto fail;
	for (size_t i = 0; i < n; i++)
		h[i] = XXH3_64bits(d->tok[recs[i]], d->len[recs[i]] * sizeof(int32_t));
	for (size_t j = 0; j < d->n; j++) {
		int take = 0;
		for (size_t i = 0; i < n && !take; i++)
			take = j == recs[i];
		if (!take) {
			uint64_t hj = 0;
			int hashed = 0;
			for (size_t i = 0; i < n && !take; i++)
				if (d->len[j] == d->len[recs[i]]) {
					if (!hashed)
						hj = XXH3_64bits(d->tok[j], d->len[j] * sizeof(int32_t)), hashed = 1;
					take = hj == h[i] && !memcmp(d->tok[j], d->tok[recs[i]], d->len[j] * sizeof(int32_t));
				}
		}
		if (!take)
			continue;
		if (m == cap) {
			size_t *nc = trail_realloc(cand, (cap *= 2) * sizeof *cand);
			if (!nc)
				goto fail;
			cand = nc;
		}
		cand[m++] = j;
	}
	size_t *parent = trail_malloc(m * sizeof *parent), *ns = trail_calloc(m, sizeof *ns);
	uint64_t **sh = trail_calloc(m, sizeof *sh);
	if (!parent || !ns || !sh) {
		trail_free(parent), trail_free(ns), trail_free(sh);
		goto fail;
	}
	for (size_t i = 0; i < m; i++) {
		parent[i] = i;
		if ((sh[i] = shingles(d, cand[i], &ns[i])))
			qsort(sh[i], ns[i], sizeof *sh[i], cmp_u64);
	}
	for (size_t i = 0; i < m; i++)
		for (size_t j = i + 1; j < m; j++) {
			size_t a = cand[i], b = cand[j];
			int same = d->len[a] == d->len[b] && !memcmp(d->tok[a], d->tok[b], d->len[a] * sizeof(int32_t));
			if (same || (sh[i] && sh[j] && jaccard(sh[i], ns[i], sh[j], ns[j]) >= c->near))
				parent[find(parent, i)] = find(parent, j);
		}
	ord *o = trail_malloc(m * sizeof *o);
	for (size_t r = 0; o && r < m; r++) {
		if (find(parent, r) != r)
			continue;
		size_t k = 0;
		for (size_t i = 0; i < m; i++)
			if (find(parent, i) == r)
				o[k++] = (ord){entry_of(c, cand[i]), cand[i]};
		if (k < 2)
			continue;
		qsort(o, k, sizeof *o, cmp_ord);
		json_t *ids = json_array(), *mem = json_array();
		for (size_t i = 0; i < k; i++) {
			const char *who = d->contributor[o[i].rec];
			json_array_append_new(ids, json_string(d->id[o[i].rec]));
			int seen = !who;
			for (size_t j = 0; j < json_array_size(mem) && !seen; j++)
				seen = !strcmp(json_string_value(json_array_get(mem, j)), who);
			if (!seen)
				json_array_append_new(mem, json_string(who));
		}
		json_t *first = json_array_get(mem, 0);
		json_array_append_new(out, json_pack("{s:o, s:o, s:O}", "records", ids, "members", mem, "first",
						     first ? first : json_null()));
	}
	/* a fixed order: by the first record of each cluster */
	for (size_t i = 0; i < m; i++)
		trail_free(sh[i]);
	trail_free(o), trail_free(sh), trail_free(ns), trail_free(parent), trail_free(cand), trail_free(h);
	return out;
fail:
	trail_free(cand), trail_free(h);
	json_decref(out);
	return NULL;
}

/* ---- one attribution record --------------------------------------------------------- */

typedef struct ranked {
	float s;
	size_t i;
} ranked;

static int cmp_ranked(const void *a, const void *b)
{
	const ranked *x = a, *y = b;
	if (x->s != y->s)
		return x->s > y->s ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

/* Sift rk[i] down a heap of n whose root is the lowest-ranked (by cmp_ranked). */
static void sift_down(ranked *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, w = i;
		if (l < n && cmp_ranked(&h[l], &h[w]) > 0)
			w = l;
		if (r < n && cmp_ranked(&h[r], &h[w]) > 0)
			w = r;
		if (w == i)
			return;
		ranked t = h[i];
		h[i] = h[w];
		h[w] = t;
		i = w;
	}
}

/*
 * rk [K]: the K highest-ranked of the N scores, in rank order (score, then
 * record index): the first K of a full sort, in O(N log K).
 */
static void top_k(const float *scores, size_t N, size_t K, ranked *rk)
{
	if (!K)
		return;
	for (size_t i = 0; i < K; i++)
		rk[i] = (ranked){scores[i], i};
	for (size_t i = K / 2; i-- > 0;)
		sift_down(rk, K, i);
	for (size_t i = K; i < N; i++) {
		ranked x = {scores[i], i};
		if (cmp_ranked(&x, &rk[0]) < 0) {
			rk[0] = x;
			sift_down(rk, K, 0);
		}
	}
	qsort(rk, K, sizeof *rk, cmp_ranked);
}

typedef struct share {
	const char *who;
	double v;
} share;

static int cmp_share_name(const void *a, const void *b)
{
	return strcmp(((const share *)a)->who, ((const share *)b)->who);
}

static int cmp_share(const void *a, const void *b)
{
	const share *x = a, *y = b;
	if (x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return strcmp(x->who, y->who);
}

/* JSON numbers from floats: the float's own shortest decimal, so the text re-reads to the same float. */
static json_t *fnum(float f)
{
	char b[32];
	snprintf(b, sizeof b, "%.9g", (double)f);
	for (int p = 1; p <= 9; p++) {
		char t[32];
		snprintf(t, sizeof t, "%.*g", p, (double)f);
		if (strtof(t, NULL) == f) {
			memcpy(b, t, sizeof t);
			break;
		}
	}
	return json_real(strtod(b, NULL));
}

static json_t *spans_json(const trail_attr_ctx *c, const int32_t *out, size_t no, size_t **recs, size_t *nrecs,
			  trail_error *err, int *rc)
{
	json_t *a = json_array();
	trail_span *sp = NULL;
	size_t ns = 0;
	*rc = TRAIL_OK;
	if (!c->spans || !a || !no)
		return a;
	if ((*rc = trail_span_match(c->spans, out, no, (size_t)(c->min_span > 0 ? c->min_span : 1), c->max_count, &sp,
				    &ns, err))) {
		json_decref(a);
		return NULL;
	}
	for (size_t k = 0; k < ns; k++) {
		char *text = NULL;
		size_t tl = 0;
		if ((*rc = trail_tokenizer_decode(c->tk, out + sp[k].start, sp[k].len, &text, &tl, err)))
			break;
		json_t *rs = json_array();
		for (size_t j = 0; j < sp[k].nrecords; j++) {
			size_t r = (size_t)sp[k].records[j];
			if (r >= c->data->n)
				continue;
			json_array_append_new(rs, json_pack("{s:s, s:s?}", "record", c->data->id[r], "contributor",
							    c->data->contributor[r]));
			size_t *nr = trail_realloc(*recs, (*nrecs + 1) * sizeof *nr);
			if (nr) {
				*recs = nr;
				nr[(*nrecs)++] = r;
			}
		}
		/* span text must be valid UTF-8 for JSON: a cut multi-byte character is replaced */
		json_t *t = json_stringn(text, tl);
		if (!t) {
			char *fixed = trail_malloc(tl * 3 + 1);
			size_t o = 0;
			for (size_t i = 0; fixed && i < tl;) {
				size_t k2 = 1;
				while (k2 <= 4 && i + k2 <= tl && !trail_utf8_valid(text + i, k2))
					k2++;
				if (k2 <= 4 && i + k2 <= tl) {
					memcpy(fixed + o, text + i, k2);
					o += k2;
					i += k2;
				} else {
					memcpy(fixed + o, "\xEF\xBF\xBD", 3);
					o += 3;
					i++;
				}
			}
			t = fixed ? json_stringn(fixed, o) : NULL;
			trail_free(fixed);
		}
		trail_free(text);
		json_array_append_new(a, json_pack("{s:I, s:I, s:o, s:I, s:o}", "start", (json_int_t)sp[k].start, "len",
						   (json_int_t)sp[k].len, "text", t ? t : json_string(""), "count",
						   (json_int_t)sp[k].count, "records", rs));
	}
	trail_free(sp);
	if (*rc) {
		json_decref(a);
		return NULL;
	}
	return a;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

float trail_attr_confidence(const float *scores, size_t n)
{
	double sum = 0, ss = 0, top = -INFINITY;
	for (size_t i = 0; i < n; i++) {
		sum += scores[i];
		top = scores[i] > top ? scores[i] : top;
	}
	double mean = n ? sum / (double)n : 0;
	for (size_t i = 0; i < n; i++)
		ss += ((double)scores[i] - mean) * ((double)scores[i] - mean);
	double sd = n > 1 ? sqrt(ss / (double)(n - 1)) : 0;
	return sd > 0 ? (float)((top - mean) / sd) : 0.0f;
}

float trail_attr_floor_of(const float *scores, size_t n)
{
	float floor = 0;
	for (int r = 0; r < TRAIL_ATTR_FLOOR_QUERIES; r++) {
		float z = trail_attr_confidence(scores + (size_t)r * n, n);
		floor = z > floor ? z : floor;
	}
	return floor;
}

int trail_attr_noise_floor(const trail_attr_ctx *c, float *floor, trail_error *err)
{
	size_t N = trail_attr_index_info(c->index)->nrecords;
	float *scores = trail_malloc((size_t)TRAIL_ATTR_FLOOR_QUERIES * (N ? N : 1) * sizeof *scores);
	int rc = scores ? trail_attr_noise_scores(c, 0, N, scores, err) : oom(err);
	*floor = rc ? 0 : trail_attr_floor_of(scores, N);
	trail_free(scores);
	return rc;
}

int trail_attr_noise_scores(const trail_attr_ctx *c, size_t lo, size_t hi, float *scores, trail_error *err)
{
	const trail_attr_info *in = trail_attr_index_info(c->index);
	const trail_dataset *d = c->data;
	size_t D = in->dim, L = 32, total = 0, N = hi - lo;
	int rows = trail_attr_query_rows(c->index, c->method), rc = TRAIL_OK;
	int32_t eot = trail_tokenizer_eot(c->tk), *tok = trail_malloc((L + 1) * sizeof *tok);
	float *q = trail_malloc((size_t)rows * D * sizeof *q);
	uint64_t seed = in->seed ^ 0x6E6F697365ULL; /* "noise" */
	/* a query with no tokens to draw from scores zero everywhere, whose confidence is zero */
	memset(scores, 0, (size_t)TRAIL_ATTR_FLOOR_QUERIES * N * sizeof *scores);
	for (size_t i = 0; i < d->n; i++)
		total += d->len[i];
	if (!tok || !q) {
		rc = oom(err);
		goto out;
	}
	size_t P = (size_t)trail_model_config(c->model)->n_positions;
	if (L + 1 > P)
		L = P - 1;
	for (int r = 0; r < TRAIL_ATTR_FLOOR_QUERIES && total && L && !rc; r++) {
		tok[0] = eot >= 0 ? eot : d->tok[0][0];
		for (size_t t = 1; t <= L; t++) { /* a token of the training stream, drawn uniformly */
			uint64_t k = splitmix(&seed) % total;
			size_t i = 0;
			while (k >= d->len[i])
				k -= d->len[i++];
			tok[t] = d->tok[i][k];
		}
		if (!(rc = trail_attr_query_grad(c->index, c->proj, c->model, c->method, tok, L + 1, 1, q, err)))
			rc = trail_attr_score_range(c->index, c->method, q, 1, lo, hi, scores + (size_t)r * N, err);
	}
	if (!rc && c->normalize)
		trail_attr_normalize(c->index, scores, TRAIL_ATTR_FLOOR_QUERIES, lo, hi);
	for (int r = 0; !rc && c->centre && r < TRAIL_ATTR_FLOOR_QUERIES; r++)
		for (size_t j = 0; j < N; j++)
			scores[(size_t)r * N + j] -= c->centre[lo + j];
out:
	trail_free(tok), trail_free(q);
	return rc;
}

/* The event of v, checked against the index's weights, and its query tokens. */
static int event_prep(const trail_attr_ctx *c, const json_t *event, const json_t **ev, int32_t **tok, size_t *n,
		      size_t *first, trail_error *err)
{
	int rc;
	*ev = event_of(event);
	*tok = NULL;
	if (!json_is_object(*ev))
		return trail_error_set(err, TRAIL_EDATA, "not an inference event (a JSON object)");
	if ((rc = check_event_model(c, *ev, err)))
		return rc;
	return event_tokens(c, *ev, tok, n, first, err);
}

int trail_attr_event_query(const trail_attr_ctx *c, const json_t *event, int32_t **tok, size_t *n, size_t *first,
			   trail_error *err)
{
	const json_t *ev;
	int rc = event_prep(c, event, &ev, tok, n, first, err);
	if (rc) {
		trail_free(*tok);
		*tok = NULL;
	}
	return rc;
}

/* The query's gradient scored against records [lo, hi). */
static int event_score(const trail_attr_ctx *c, const int32_t *tok, size_t n, size_t first, size_t lo, size_t hi,
		       float *scores, trail_error *err)
{
	int rows = trail_attr_query_rows(c->index, c->method), rc;
	float *q = trail_malloc((size_t)rows * trail_attr_index_info(c->index)->dim * sizeof *q);
	if (!q)
		return oom(err);
	if (!(rc = trail_attr_query_grad(c->index, c->proj, c->model, c->method, tok, n, first, q, err)))
		rc = trail_attr_score_range(c->index, c->method, q, 1, lo, hi, scores, err);
	if (!rc && c->normalize)
		trail_attr_normalize(c->index, scores, 1, lo, hi);
	for (size_t j = 0; !rc && c->centre && j < hi - lo; j++)
		scores[j] -= c->centre[lo + j];
	trail_free(q);
	return rc;
}

int trail_attr_centre(const trail_attr_ctx *c, const json_t *events, float *centre, trail_error *err)
{
	size_t N = trail_attr_index_info(c->index)->nrecords, D = trail_attr_index_info(c->index)->dim, i;
	size_t R = (size_t)trail_attr_query_rows(c->index, c->method) * D, ne = json_array_size(events);
	float *q = trail_malloc((R ? R : 1) * sizeof *q);
	double *sum = trail_calloc(R ? R : 1, sizeof *sum);
	int rc = TRAIL_OK;
	if (!q || !sum) {
		rc = oom(err);
		goto out;
	}
	if (!ne) {
		rc = trail_error_set(err, TRAIL_EDATA, "no reference events to centre the scores on");
		goto out;
	}
	const json_t *event;
	json_array_foreach(events, i, event) {
		const json_t *ev;
		int32_t *tok = NULL;
		size_t n = 0, first = 0;
		if (!(rc = event_prep(c, event, &ev, &tok, &n, &first, err)))
			rc = trail_attr_query_grad(c->index, c->proj, c->model, c->method, tok, n, first, q, err);
		trail_free(tok);
		if (rc) {
			char msg[sizeof err->msg];
			snprintf(msg, sizeof msg, "%s", err->msg);
			trail_error_set(err, rc, "reference event %zu: %s", i + 1, msg);
			goto out;
		}
		for (size_t k = 0; k < R; k++) /* in event order: the same events give the same bits */
			sum[k] += q[k];
	}
	for (size_t k = 0; k < R; k++)
		q[k] = (float)(sum[k] / (double)ne);
	if (!(rc = trail_attr_score_range(c->index, c->method, q, 1, 0, N, centre, err)) && c->normalize)
		trail_attr_normalize(c->index, centre, 1, 0, N);
out:
	trail_free(q), trail_free(sum);
	return rc;
}

static int event_build(const trail_attr_ctx *c, const json_t *event, const json_t *ev, const int32_t *tok, size_t n,
		       size_t first, const float *scores, json_t **out, trail_error *err);

int trail_attr_event(const trail_attr_ctx *c, const json_t *event, json_t **out, trail_error *err)
{
	size_t N = trail_attr_index_info(c->index)->nrecords, n = 0, first = 0;
	const json_t *ev;
	int32_t *tok = NULL;
	float *scores = NULL;
	int rc;
	*out = NULL;
	if (!(rc = event_prep(c, event, &ev, &tok, &n, &first, err))) {
		if (!(scores = trail_malloc(N * sizeof *scores)))
			rc = oom(err);
		else if (!(rc = event_score(c, tok, n, first, 0, N, scores, err)))
			rc = event_build(c, event, ev, tok, n, first, scores, out, err);
	}
	trail_free(tok), trail_free(scores);
	return rc;
}

int trail_attr_event_scores(const trail_attr_ctx *c, const json_t *event, size_t lo, size_t hi, float *scores,
			    trail_error *err)
{
	size_t n = 0, first = 0;
	const json_t *ev;
	int32_t *tok = NULL;
	int rc = event_prep(c, event, &ev, &tok, &n, &first, err);
	if (!rc)
		rc = event_score(c, tok, n, first, lo, hi, scores, err);
	trail_free(tok);
	return rc;
}

int trail_attr_event_from_scores(const trail_attr_ctx *c, const json_t *event, const float *scores, json_t **out,
				 trail_error *err)
{
	size_t n = 0, first = 0;
	const json_t *ev;
	int32_t *tok = NULL;
	int rc;
	*out = NULL;
	if (!(rc = event_prep(c, event, &ev, &tok, &n, &first, err)))
		rc = event_build(c, event, ev, tok, n, first, scores, out, err);
	trail_free(tok);
	return rc;
}

/* The record from the scores of all N records. */
static int event_build(const trail_attr_ctx *c, const json_t *event, const json_t *ev, const int32_t *tok, size_t n,
		       size_t first, const float *scores, json_t **out, trail_error *err)
{
	const trail_attr_info *in = trail_attr_index_info(c->index);
	size_t N = in->nrecords, nspan = 0;
	ranked *rk = NULL;
	share *sh = NULL;
	size_t *spanrecs = NULL;
	json_t *rec = NULL;
	int rc = TRAIL_OK;
	*out = NULL;
	size_t K = (size_t)(c->top > 0 ? c->top : 10);
	K = K < N ? K : N;
	rk = trail_malloc((K ? K : 1) * sizeof *rk);
	sh = trail_malloc((K ? K : 1) * sizeof *sh);
	if (!rk || !sh) {
		rc = oom(err);
		goto out;
	}
	/* the digest of every score, as little-endian float32 */
	char sd[72];
	trail_digest_str(scores, N * sizeof *scores, sd);
	float *ranks = NULL;
	if (c->skip && c->nskip) { /* records left out: ranked below every other */
		if (!(ranks = trail_malloc((N ? N : 1) * sizeof *ranks))) {
			rc = oom(err);
			goto out;
		}
		for (size_t i = 0; i < N; i++)
			ranks[i] = c->skip[i] ? -INFINITY : scores[i];
		K = K < N - c->nskip ? K : N - c->nskip;
	}
	top_k(ranks ? ranks : scores, N, K, rk);
	trail_free(ranks);
	json_t *top = json_array();
	for (size_t k = 0; k < K; k++)
		json_array_append_new(top, json_pack("{s:s, s:s?, s:o}", "record", c->data->id[rk[k].i], "contributor",
						     c->data->contributor[rk[k].i], "score", fnum(rk[k].s)));
	/*
	 * shares: the positive scores of the top records summed per contributor,
	 * normalised. The records below the top carry the noise floor of the
	 * projected gradients: hundreds of small positive scores whose sum can
	 * outweigh the few records that shaped the answer.
	 */
	size_t ns = 0;
	for (size_t k = 0; k < K; k++)
		if (c->data->contributor[rk[k].i])
			sh[ns++] = (share){c->data->contributor[rk[k].i], rk[k].s > 0 ? rk[k].s : 0};
	qsort(sh, ns, sizeof *sh, cmp_share_name); /* not stable: the sums below are over equal names only */
	size_t u = 0;
	double total = 0;
	for (size_t i = 0; i < ns; i++) {
		if (u && !strcmp(sh[u - 1].who, sh[i].who))
			sh[u - 1].v += sh[i].v;
		else
			sh[u++] = sh[i];
	}
	for (size_t i = 0; i < u; i++)
		total += sh[i].v;
	qsort(sh, u, sizeof *sh, cmp_share);
	json_t *contrib = json_array();
	for (size_t i = 0; i < u && total > 0; i++) {
		if (sh[i].v <= 0)
			break;
		double v = round(sh[i].v / total * 1e9) / 1e9; /* shares to 9 decimals: stable text */
		json_array_append_new(contrib, json_pack("{s:s, s:f}", "contributor", sh[i].who, "share", v));
	}
	json_t *spans = spans_json(c, tok + first, n - first, &spanrecs, &nspan, err, &rc);
	if (rc) {
		json_decref(top), json_decref(contrib);
		goto out;
	}
	/* clusters among the top records and the records of spans */
	size_t *cand = trail_malloc((K + nspan + 1) * sizeof *cand);
	json_t *clusters = NULL;
	if (cand) {
		for (size_t k = 0; k < K; k++)
			cand[k] = rk[k].i;
		if (nspan)
			memcpy(cand + K, spanrecs, nspan * sizeof *cand);
		clusters = trail_attr_clusters(c, cand, K + nspan);
		trail_free(cand);
	}
	char edg[72];
	if (!clusters || (rc = trail_jcs_digest(ev, edg, err))) {
		rc = rc ? rc : oom(err);
		json_decref(top), json_decref(contrib), json_decref(spans), json_decref(clusters);
		goto out;
	}
	json_t *qp = json_array(), *qo = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(i < first ? qp : qo, json_integer(tok[i]));
	const char *eid = jstr(ev, "id");
	json_t *usage = json_object_get(ev, "usage");
	if (!usage)
		usage = json_object_get(event, "usage");
	rec = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s, s:{s:i, s:i, s:I, s:f, s:I, s:i, s:i, s:f}, "
			"s:{s:o, s:o}, s:o, s:o, s:o, s:o, s:O, s:s}",
			"event", eid ? eid : edg, "event_digest", edg, "model", in->id.model, "adapter",
			in->id.adapter[0] ? in->id.adapter : NULL, "index", in->digest, "method",
			trail_attr_method_name(c->method), "params", "top", (int)K, "min_span", c->min_span, "max_count",
			(json_int_t)c->max_count, "near", c->near, "seed", (json_int_t)in->seed, "k_in", in->k_in,
			"k_out", in->k_out, "damping", in->damping, "query", "prompt", qp, "output", qo, "top", top,
			"contributors", contrib, "spans", spans, "clusters", clusters, "usage",
			usage ? usage : json_null(), "scores_digest", sd);
	if (rec && c->normalize &&
	    json_object_set_new(json_object_get(rec, "params"), "normalize", json_string("unit")))
		json_decref(rec), rec = NULL;
	if (rec && c->centre &&
	    json_object_set_new(json_object_get(rec, "params"), "centre", json_string(c->centre_digest)))
		json_decref(rec), rec = NULL;
	if (rec && c->skip && c->nskip &&
	    json_object_set_new(json_object_get(rec, "params"), "excluded", json_integer((json_int_t)c->nskip)))
		json_decref(rec), rec = NULL;
	if (!rec)
		rc = oom(err);
	else if (c->confidence) {
		float z = trail_attr_confidence(scores, N);
		if (json_object_set_new(rec, "confidence", json_pack("{s:o, s:o, s:b}", "score", fnum(z), "floor",
								  fnum(c->floor), "attributed", z > c->floor)))
			rc = oom(err);
	}
out:
	trail_free(rk), trail_free(sh), trail_free(spanrecs);
	*out = rec;
	return rc;
}

int trail_attr_generic(const trail_attr_ctx *c, const json_t *events, double frac, json_t **out, trail_error *err)
{
	size_t N = trail_attr_index_info(c->index)->nrecords, ne = json_array_size(events), i;
	size_t K = (size_t)(c->top > 0 ? c->top : 10);
	K = K < N ? K : N;
	float *scores = trail_malloc((N ? N : 1) * sizeof *scores);
	ranked *rk = trail_malloc((K ? K : 1) * sizeof *rk);
	uint64_t *n = trail_calloc(N ? N : 1, sizeof *n);
	int rc = TRAIL_OK;
	*out = NULL;
	if (!scores || !rk || !n) {
		rc = oom(err);
		goto out;
	}
	json_t *ev;
	json_array_foreach(events, i, ev) {
		if ((rc = trail_attr_event_scores(c, ev, 0, N, scores, err)))
			goto out;
		top_k(scores, N, K, rk);
		for (size_t k = 0; k < K; k++)
			n[rk[k].i]++;
	}
	*out = json_array();
	for (i = 0; i < N && *out; i++)
		if (ne && (double)n[i] > frac * (double)ne && c->data->contributor[i] &&
		    json_array_append_new(*out, json_pack("{s:s, s:s, s:i, s:s, s:[s], s:I}", "type", "flags", "contributor",
							  c->data->contributor[i], "flagged", 1, "record", c->data->id[i],
							  "rules", "generic", "n", (json_int_t)n[i])))
			json_decref(*out), *out = NULL;
	if (!*out)
		rc = oom(err);
out:
	trail_free(scores), trail_free(rk), trail_free(n);
	return rc;
}

int trail_attr_query_grad(const trail_attr_index *x, const trail_attr_proj *p, trail_model *m, int method,
			  const int32_t *tok, size_t n, size_t first, float *q, trail_error *err)
{
	if (method != TRAIL_ATTR_TRACIN)
		return trail_attr_grad(p, m, tok, n, first, q, err);
	size_t np, D = x->h.dim;
	float *params = trail_model_params(m, &np), *saved = trail_malloc(np * sizeof *saved);
	int rc = TRAIL_OK;
	if (!saved)
		return oom(err);
	memcpy(saved, params, np * sizeof *saved);
	for (int s = 0; s < x->h.nsets && !rc; s++) {
		memcpy(params, trail_attr_set_params(x, s), np * sizeof *params);
		rc = trail_attr_grad(p, m, tok, n, first, q + (size_t)s * D, err);
	}
	memcpy(params, saved, np * sizeof *params);
	trail_free(saved);
	return rc;
}

int trail_attr_verify(const trail_attr_ctx *c, const json_t *record, trail_error *err)
{
	json_t *q = json_object_get(record, "query");
	json_t *ev = json_pack("{s:O, s:O}", "prompt_ids", json_object_get(q, "prompt"), "output_ids",
			       json_object_get(q, "output"));
	json_t *again = NULL;
	int rc;
	if (!json_is_object(record) || !ev || !json_is_array(json_object_get(q, "prompt")) ||
	    !json_is_array(json_object_get(q, "output"))) {
		json_decref(ev);
		return trail_error_set(err, TRAIL_EDATA, "not an attribution record (no query tokens)");
	}
	trail_attr_ctx cc = *c;
	json_t *params = json_object_get(record, "params");
	const char *method = jstr(record, "method");
	if (!method || trail_attr_method(method) < 0) {
		json_decref(ev);
		return trail_error_set(err, TRAIL_EDATA, "attribution record: unknown method");
	}
	cc.method = trail_attr_method(method);
	cc.top = (int)json_integer_value(json_object_get(params, "top"));
	cc.min_span = (int)json_integer_value(json_object_get(params, "min_span"));
	cc.max_count = (uint64_t)json_integer_value(json_object_get(params, "max_count"));
	cc.near = json_number_value(json_object_get(params, "near"));
	const char *norm = jstr(params, "normalize");
	cc.normalize = norm && trail_attr_normalize_mode(norm) > 0 ? trail_attr_normalize_mode(norm) : TRAIL_ATTR_NORM_NONE;
	const char *centre = jstr(params, "centre");
	if (!centre != !c->centre || (centre && strcmp(centre, c->centre_digest))) {
		json_decref(ev);
		return trail_error_set(err, TRAIL_EVERIFY, "event %s: scored %s, verified %s",
				       jstr(record, "event") ? jstr(record, "event") : "?",
				       centre ? "centred on reference events" : "without --centre",
				       !c->centre ? "without --centre" : centre ? "on other reference events" : "centred");
	}
	/* a record scored with the other normalisation has the other noise floor */
	if ((cc.normalize != c->normalize && cc.confidence && (rc = trail_attr_noise_floor(&cc, &cc.floor, err))) ||
	    (rc = trail_attr_event(&cc, ev, &again, err))) {
		json_decref(ev);
		return rc;
	}
	/* the event's identity and usage are the record's: only what attribution computes is compared */
	json_object_set(again, "event", json_object_get(record, "event"));
	json_object_set(again, "event_digest", json_object_get(record, "event_digest"));
	json_object_set(again, "usage", json_object_get(record, "usage") ? json_object_get(record, "usage") : json_null());
	json_t *mine = json_deep_copy(record);
	json_object_del(mine, "proofs");
	char *a = NULL, *b = NULL;
	size_t la, lb;
	if (!(rc = trail_jcs(mine, &a, &la, err)) && !(rc = trail_jcs(again, &b, &lb, err)) && (la != lb || memcmp(a, b, la))) {
		const char *k;
		json_t *v;
		const char *what = "a field";
		json_object_foreach(again, k, v) if (!json_equal(v, json_object_get(mine, k))) {
			what = k;
			break;
		}
		json_object_foreach(mine, k, v) if (!json_object_get(again, k)) {
			what = k;
			break;
		}
		rc = trail_error_set(err, TRAIL_EVERIFY, "event %s: \"%s\" differs from the recomputation",
				     jstr(record, "event") ? jstr(record, "event") : "?", what);
	}
	trail_free(a), trail_free(b);
	json_decref(mine), json_decref(again), json_decref(ev);
	return rc;
}
