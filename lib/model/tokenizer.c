/*
 * Tokenizers: the byte tokenizer (ids 0-255 are the bytes, 256 is
 * end-of-text), GPT-2's byte-level BPE, and the engine that
 * hf_tokenizer.c's tokenizers share: the pre-tokenisers (GPT-2's regex and
 * the Split regexes of Llama-3 and Qwen, piece_end_split), the BPE merge
 * loop over ids, the piece cache and the map from token text to id.
 * hf_tokenizer.c holds the public trail_tokenizer_* functions and calls
 * into this file, never the other way.
 *
 * GPT-2 encodes text in two steps.
 *
 * 1. Pre-tokenisation splits the text as the regex
 *      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *    does; piece_end() is that regex written out by hand over UTF-8 code
 *    points, with classes from lib/unicode_tab.c (\s is ECMAScript's, as in
 *    the reference encoder). A byte that does not start a valid UTF-8
 *    sequence (overlong, surrogate, past U+10FFFF, truncated, stray
 *    continuation) is one character of class "other", so every byte string
 *    encodes and decodes back to itself.
 *
 * 2. Each piece's bytes start as one token each and are merged by rank
 *    (bpe_piece). vocab.json and merges.txt spell tokens in GPT-2's
 *    bytes_to_unicode alphabet; here a token is its raw bytes and a merge is
 *    a pair of ids, looked up in an open-addressing table.
 *
 * A cache maps recent pieces to their ids. It is the only mutable state of a
 * loaded tokenizer; encode takes it with a trylock and encodes without it
 * when another thread holds it, so results never depend on it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"

/* Pieces of 2 to CACHE_KEY bytes are cached; the cache is cleared when full. */
#define CACHE_SLOTS (1u << 17)
#define CACHE_MAX (1u << 16)
#define CACHE_KEY 64
#define CACHE_TEXT (1u << 21)
#define CACHE_IDS (1u << 20)

typedef struct cache_slot {
	uint64_t h;
	uint32_t koff, ioff;
	uint8_t klen, nid; /* klen 0: empty */
} cache_slot;

struct tok_cache {
	pthread_mutex_t lock;
	cache_slot *slot;
	char *text;
	int32_t *ids;
	size_t n, ntext, nids;
};
typedef struct tok_cache cache;

/* GPT-2's bytes_to_unicode: the 188 printable Latin-1 bytes stand for
 * themselves, the other 68 (0x00-0x20, 0x7F-0xA0, 0xAD) take U+0100 onwards
 * in byte order. */
static uint32_t byte_char(unsigned b)
{
	if (b <= 0x20)
		return 256 + b;
	if (b >= 0x7F && b <= 0xA0)
		return 256 + 33 + (b - 0x7F);
	if (b == 0xAD)
		return 256 + 67;
	return b;
}

int trail_uc_class(uint32_t cp)
{
	unsigned lo = 0, hi = trail_uc_nranges;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (cp > trail_uc_ranges[mid].hi)
			lo = mid + 1;
		else if (cp < trail_uc_ranges[mid].lo)
			hi = mid;
		else
			return trail_uc_ranges[mid].cls;
	}
	return TRAIL_UC_OTHER;
}

/* ---- pre-tokenisation ---- */

/* The class of the character at s[i] (i < n) and its length in bytes. */
static inline int char_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	unsigned b = s[i];
	*len = 1;
	if (b < 0x80) {
		if ((unsigned)((b | 32) - 'a') < 26)
			return TRAIL_UC_LETTER;
		if ((unsigned)(b - '0') < 10)
			return TRAIL_UC_NUMBER;
		if (b == ' ' || (unsigned)(b - 9) < 5)
			return TRAIL_UC_SPACE;
		return TRAIL_UC_OTHER;
	}
	size_t need;
	uint32_t cp; /* the second byte's bounds rule out overlongs, surrogates and > U+10FFFF */
	unsigned lo = 0x80, hi = 0xBF;
	if (b >= 0xC2 && b <= 0xDF)
		need = 1, cp = b & 0x1F;
	else if (b >= 0xE0 && b <= 0xEF)
		need = 2, cp = b & 0x0F, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
	else if (b >= 0xF0 && b <= 0xF4)
		need = 3, cp = b & 0x07, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
	else
		return TRAIL_UC_OTHER;
	if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi)
		return TRAIL_UC_OTHER;
	for (size_t k = 1; k <= need; k++) {
		if ((s[i + k] & 0xC0) != 0x80)
			return TRAIL_UC_OTHER;
		cp = cp << 6 | (s[i + k] & 0x3Fu);
	}
	*len = need + 1;
	return trail_uc_class(cp);
}

/* The end of the piece that starts at s[i], i < n: the regex's match there. */
static size_t piece_end(const uint8_t *s, size_t n, size_t i)
{
	size_t l0, l, k, lk;
	int c0 = char_at(s, n, i, &l0), c = c0;
	if (s[i] == '\'' && i + 1 < n) { /* 's 't 're 've 'm 'll 'd, case-sensitive */
		unsigned a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
		if (a == 's' || a == 't' || a == 'm' || a == 'd')
			return i + 2;
		if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
			return i + 3;
	}
	size_t j = i;
	l = l0;
	if (s[i] == ' ' && i + 1 < n) { /* " ?": the space joins a following non-space run */
		c = char_at(s, n, i + 1, &l);
		if (c == TRAIL_UC_SPACE)
			c = c0, l = l0;
		else
			j = i + 1;
	}
	if (c != TRAIL_UC_SPACE) { /* ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ */
		for (k = j + l; k < n && char_at(s, n, k, &lk) == c; k += lk)
			;
		return k;
	}
	/* \s+(?!\S) | \s+: a run of spaces, less its last character when a
	 * non-space follows (that one starts the next piece), but at least one */
	size_t last = i;
	for (k = i + l0; k < n && char_at(s, n, k, &lk) == TRAIL_UC_SPACE; k += lk)
		last = k;
	if (k == n)
		return n;
	return last > i ? last : i + l0;
}

int trail_tok_char(const uint8_t *s, size_t n, size_t i, size_t *len, uint32_t *cp)
{
	int c = char_at(s, n, i, len);
	unsigned b = s[i];
	if (*len == 1) {
		*cp = b < 0x80 ? b : 0x110000 + b;
		return c;
	}
	uint32_t v = b & (*len == 2 ? 0x1F : *len == 3 ? 0x0F : 0x07);
	for (size_t k = 1; k < *len; k++)
		v = v << 6 | (s[i + k] & 0x3Fu);
	*cp = v;
	return c;
}

/*
 * The piece at s[i] under Llama-3's Split regex (maxdig 3) or Qwen's
 * (maxdig 1), JavaScript's semantics (leftmost alternative that matches):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * Every character is a letter, number, space or other, so one of them
 * always matches and the pieces tile the text.
 */
static size_t piece_end_split(const uint8_t *s, size_t n, size_t i, int maxdig)
{
	size_t l0, l1, k, lk;
	int c0 = char_at(s, n, i, &l0);
	if (s[i] == '\'' && i + 1 < n) { /* contractions, ASCII case-insensitive */
		unsigned a = s[i + 1] | 32, b = i + 2 < n ? s[i + 2] | 32 : 0;
		int al = (unsigned)((s[i + 1] | 32) - 'a') < 26, bl = i + 2 < n && (unsigned)((s[i + 2] | 32) - 'a') < 26;
		if (al && (a == 's' || a == 't' || a == 'm' || a == 'd'))
			return i + 2;
		if (al && bl && ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')))
			return i + 3;
	}
	if (c0 == TRAIL_UC_LETTER || (c0 != TRAIL_UC_NUMBER && s[i] != '\r' && s[i] != '\n' && i + l0 < n &&
				      char_at(s, n, i + l0, &l1) == TRAIL_UC_LETTER)) {
		k = c0 == TRAIL_UC_LETTER ? i + l0 : i + l0 + l1;
		while (k < n && char_at(s, n, k, &lk) == TRAIL_UC_LETTER)
			k += lk;
		return k;
	}
	if (c0 == TRAIL_UC_NUMBER) {
		k = i + l0;
		for (int d = 1; d < maxdig && k < n && char_at(s, n, k, &lk) == TRAIL_UC_NUMBER; d++)
			k += lk;
		return k;
	}
	k = i;
	if (s[i] == ' ' && i + 1 < n && char_at(s, n, i + 1, &l1) == TRAIL_UC_OTHER)
		k = i + 1;
	if (k > i || c0 == TRAIL_UC_OTHER) { /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
		while (k < n && char_at(s, n, k, &lk) == TRAIL_UC_OTHER)
			k += lk;
		while (k < n && (s[k] == '\r' || s[k] == '\n'))
			k++;
		return k;
	}
	/* a space: \s*[\r\n]+ ends after the run's last CR or LF; else \s+(?!\S) | \s+ */
	size_t last = i, crlf = 0;
	for (k = i; k < n && char_at(s, n, k, &lk) == TRAIL_UC_SPACE; k += lk) {
		if (s[k] == '\r' || s[k] == '\n')
			crlf = k + 1;
		last = k;
	}
	if (crlf)
		return crlf;
	if (k == n)
		return n;
	return last > i ? last : k;
}

/* ---- merges ---- */

/* Merges are keyed by the pair of ids, as GPT-2's Python keys them by the
 * pair of strings. (The JavaScript reference joins the two strings with a
 * comma, which makes ('",', '"') look like the merge ('"', ',"'); the
 * comparison's corpus holds runs of such characters and no id differs.) */
static inline size_t merge_hash(uint64_t key, size_t mask)
{
	return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static inline const merge_slot *merge_find(const trail_tokenizer *t, int32_t a, int32_t b)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	for (size_t h = merge_hash(key, t->mt_mask);; h = (h + 1) & t->mt_mask) {
		const merge_slot *m = &t->mt[h];
		if (m->rank < 0)
			return NULL;
		if (m->key == key)
			return m;
	}
}

/* A later duplicate of a pair replaces the earlier rank, as in the reference. */
void trail_tok_merge_put(trail_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	size_t h = merge_hash(key, t->mt_mask);
	while (t->mt[h].rank >= 0 && t->mt[h].key != key)
		h = (h + 1) & t->mt_mask;
	t->mt[h] = (merge_slot){key, rank, id};
}

/* Scratch for bpe_piece over a piece of up to cap bytes; pieces up to
 * WORK_SMALL bytes (nearly all) use the array inside, longer ones the heap. */
#define WORK_SMALL 64
#define TOK_GONE INT32_MIN /* a symbol merged into its left neighbour */
#define WORK_BYTES(cap) ((cap) * (6 * sizeof(uint64_t) + 3 * sizeof(int32_t)))

typedef struct work {
	int32_t *id, *nx, *pv;
	uint64_t *heap, *pend; /* heap: the m - 1 first pairs plus at most two per merge */
	size_t cap;
	void *owned;
	uint64_t small[WORK_BYTES(WORK_SMALL) / sizeof(uint64_t)];
} work;

static void work_carve(work *w, uint64_t *p, size_t cap)
{
	w->heap = p;
	w->pend = p + 3 * cap;
	w->id = (int32_t *)(w->pend + 3 * cap);
	w->nx = w->id + cap;
	w->pv = w->nx + cap;
	w->cap = cap;
}

static int work_reserve(work *w, size_t m)
{
	if (m <= w->cap)
		return TRAIL_OK;
	if (m <= WORK_SMALL) {
		work_carve(w, w->small, WORK_SMALL);
		return TRAIL_OK;
	}
	uint64_t *p = trail_malloc(WORK_BYTES(m));
	if (!p)
		return TRAIL_ENOMEM;
	trail_free(w->owned);
	w->owned = p;
	work_carve(w, p, m);
	return TRAIL_OK;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
	size_t i = (*n)++;
	while (i && h[(i - 1) / 2] > v) {
		h[i] = h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
	uint64_t top = h[0], v = h[--*n];
	size_t i = 0, m = *n;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= m)
			break;
		if (c + 1 < m && h[c + 1] < h[c])
			c++;
		if (h[c] >= v)
			break;
		h[i] = h[c];
		i = c;
	}
	if (m)
		h[i] = v;
	return top;
}

/*
 * GPT-2's bpe() over the m >= 2 bytes of one piece: every round takes the
 * adjacent pair of lowest rank and merges all its occurrences, left to
 * right, without overlap; it stops when no adjacent pair is a merge. The
 * heap holds (rank << 32 | left position); pairs formed during a round wait
 * in pend until the round ends, so a merges file whose ranks are not
 * ordered by construction still gives the reference's result. O(m log m).
 * Writes the ids to out (at least m long); returns their count.
 */
static void bpe_run(const trail_tokenizer *t, size_t m, int32_t *id, int32_t *nx, int32_t *pv, uint64_t *heap,
		    uint64_t *pend)
{
	size_t hn = 0, np = 0;
	for (size_t k = 0; k < m; k++) {
		nx[k] = (int32_t)k + 1;
		pv[k] = (int32_t)k - 1;
	}
	for (size_t k = 0; k + 1 < m; k++) {
		const merge_slot *ms = merge_find(t, id[k], id[k + 1]);
		if (ms)
			heap_push(heap, &hn, (uint64_t)ms->rank << 32 | k);
	}
	int64_t round = -1;
	for (;;) {
		if (!hn || (int64_t)(heap[0] >> 32) != round) {
			for (size_t i = 0; i < np; i++)
				heap_push(heap, &hn, pend[i]);
			np = 0;
			if (!hn)
				break;
			round = (int64_t)(heap[0] >> 32);
		}
		int32_t k = (int32_t)(uint32_t)heap_pop(heap, &hn), r = nx[k];
		if (id[k] == TOK_GONE || (size_t)r >= m)
			continue;
		const merge_slot *ms = merge_find(t, id[k], id[r]);
		if (!ms || ms->rank != round) /* stale: a neighbour changed */
			continue;
		id[k] = ms->id;
		id[r] = TOK_GONE;
		nx[k] = nx[r];
		if ((size_t)nx[k] < m)
			pv[nx[k]] = k;
		if (pv[k] >= 0 && (ms = merge_find(t, id[pv[k]], id[k])))
			pend[np++] = (uint64_t)ms->rank << 32 | (uint32_t)pv[k];
		if ((size_t)nx[k] < m && (ms = merge_find(t, id[k], id[nx[k]])))
			pend[np++] = (uint64_t)ms->rank << 32 | (uint32_t)k;
	}
}

/* bpe_run over the m >= 2 bytes of one piece; writes the ids to out (at least m long), returns their count. */
static size_t bpe_piece(const trail_tokenizer *t, const uint8_t *p, size_t m, work *w, int32_t *out)
{
	for (size_t k = 0; k < m; k++)
		w->id[k] = t->byte_id[p[k]];
	bpe_run(t, m, w->id, w->nx, w->pv, w->heap, w->pend);
	size_t c = 0;
	for (int32_t k = 0; (size_t)k < m; k = w->nx[k])
		out[c++] = w->id[k];
	return c;
}

int trail_tok_bpe(const trail_tokenizer *t, int32_t *id, int32_t *nx, size_t m)
{
	work w;
	w.owned = NULL;
	work_carve(&w, w.small, WORK_SMALL);
	if (work_reserve(&w, m))
		return TRAIL_ENOMEM;
	bpe_run(t, m, id, nx, w.pv, w.heap, w.pend);
	trail_free(w.owned);
	return TRAIL_OK;
}

/* ---- the piece cache ---- */

static const cache_slot *cache_get(const cache *c, uint64_t h, const uint8_t *p, size_t m)
{
	for (size_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
		const cache_slot *s = &c->slot[i];
		if (!s->klen)
			return NULL;
		if (s->h == h && s->klen == m && !memcmp(c->text + s->koff, p, m))
			return s;
	}
}

static void cache_put(cache *c, uint64_t h, const uint8_t *p, size_t m, const int32_t *ids, size_t n)
{
	if (c->n >= CACHE_MAX || c->ntext + m > CACHE_TEXT || c->nids + n > CACHE_IDS) {
		memset(c->slot, 0, CACHE_SLOTS * sizeof *c->slot);
		c->n = c->ntext = c->nids = 0;
	}
	size_t i = h & (CACHE_SLOTS - 1);
	while (c->slot[i].klen)
		i = (i + 1) & (CACHE_SLOTS - 1);
	c->slot[i] = (cache_slot){h, (uint32_t)c->ntext, (uint32_t)c->nids, (uint8_t)m, (uint8_t)n};
	memcpy(c->text + c->ntext, p, m);
	memcpy(c->ids + c->nids, ids, n * sizeof *ids);
	c->ntext += m;
	c->nids += n;
	c->n++;
}

static void cache_free(cache *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	trail_free(c->slot);
	trail_free(c->text);
	trail_free(c->ids);
	trail_free(c);
}

static cache *cache_new(void)
{
	cache *c = trail_calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->slot = trail_calloc(CACHE_SLOTS, sizeof *c->slot);
	c->text = trail_malloc(CACHE_TEXT);
	c->ids = trail_malloc(CACHE_IDS * sizeof *c->ids);
	if (pthread_mutex_init(&c->lock, NULL)) {
		trail_free(c->slot);
		trail_free(c->text);
		trail_free(c->ids);
		trail_free(c);
		return NULL;
	}
	if (!c->slot || !c->text || !c->ids) {
		cache_free(c);
		return NULL;
	}
	return c;
}

/* ---- loading ---- */

int trail_tokenizer_bytes(trail_tokenizer **out)
{
	trail_tokenizer *t = trail_calloc(1, sizeof *t);
	if (!t)
		return TRAIL_ENOMEM;
	t->kind = TK_BYTES;
	for (int i = 0; i < 256; i++)
		t->byte[i] = (char)i;
	*out = t;
	return TRAIL_OK;
}

/* Token spellings to raw bytes: each character is one byte of the alphabet, else the token is literal. */
static int read_vocab(trail_tokenizer *t, const char *path, json_t **vocab, trail_error *err)
{
	void *buf = NULL;
	size_t len, total = 0;
	const char *k, **keys = NULL;
	json_t *v;
	int rc;
	int16_t dec[324]; /* character -> byte */
	for (int i = 0; i < 324; i++)
		dec[i] = -1;
	for (int i = 0; i < 256; i++)
		dec[byte_char((unsigned)i)] = (int16_t)i;
	if ((rc = trail_read_file(path, (size_t)1 << 28, &buf, &len, err)) ||
	    (rc = trail_json_parse(buf, len, path, vocab, err)))
		goto out;
	if (!json_is_object(*vocab) || !json_object_size(*vocab)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "not a JSON object of token: id");
		goto out;
	}
	json_object_foreach(*vocab, k, v) {
		json_int_t id = json_integer_value(v);
		if (!json_is_integer(v) || id < 0 || id >= (1 << 24)) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "token \"%s\": the id is not an integer in [0, 16777216)", k);
			goto out;
		}
		if ((size_t)id >= t->n_vocab)
			t->n_vocab = (size_t)id + 1;
		total += strlen(k);
	}
	keys = trail_calloc(t->n_vocab, sizeof *keys);
	t->off = trail_malloc((t->n_vocab + 1) * sizeof *t->off);
	t->flags = trail_calloc(t->n_vocab, 1);
	t->text = trail_malloc(total + 1);
	if (!keys || !t->off || !t->flags || !t->text || total >= UINT32_MAX) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	json_object_foreach(*vocab, k, v) {
		json_int_t id = json_integer_value(v);
		if (keys[id]) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "tokens \"%s\" and \"%s\" share id %lld", keys[id], k,
					    (long long)id);
			goto out;
		}
		keys[id] = k;
	}
	for (int i = 0; i < 256; i++)
		t->byte_id[i] = -1;
	uint32_t o = 0;
	for (size_t i = 0; i < t->n_vocab; i++) {
		t->off[i] = o;
		if (!(k = keys[i]))
			continue;
		t->flags[i] = TOK_PRESENT;
		const uint8_t *s = (const uint8_t *)k;
		size_t n = strlen(k), j = 0, cl;
		uint32_t start = o;
		while (j < n) {
			uint32_t cp = s[j];
			cl = 1;
			if (s[j] >= 0xC0 && s[j] < 0xE0 && j + 1 < n) /* the alphabet is below U+0144 */
				cp = (uint32_t)(s[j] & 0x1F) << 6 | (s[j + 1] & 0x3F), cl = 2;
			if (cp >= 324 || dec[cp] < 0 || (cl == 1 && s[j] >= 0x80))
				break;
			t->text[o++] = (char)dec[cp];
			j += cl;
		}
		if (j < n) { /* spelled outside the alphabet: kept as written */
			o = start;
			memcpy(t->text + o, k, n);
			o += (uint32_t)n;
			t->flags[i] |= TOK_LITERAL;
		} else if (o - start == 1 && t->byte_id[(uint8_t)t->text[start]] < 0) {
			t->byte_id[(uint8_t)t->text[start]] = (int32_t)i;
		}
	}
	t->off[t->n_vocab] = o;
	for (int i = 0; i < 256; i++)
		if (t->byte_id[i] < 0) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "no token for the byte 0x%02x (spelled U+%04X)", i,
					    (unsigned)byte_char((unsigned)i));
			goto out;
		}
	json_t *e = json_object_get(*vocab, "<|endoftext|>");
	t->eot = e ? (int32_t)json_integer_value(e) : -1;
out:
	trail_free(keys);
	trail_free(buf);
	return rc;
}

/* merges.txt: an optional "#version" line, then one "left right" pair a line, by rank. */
static int read_merges(trail_tokenizer *t, const char *path, const json_t *vocab, trail_error *err)
{
	void *buf = NULL;
	size_t len, lines = 1;
	char *pair = NULL;
	int rc = trail_read_file(path, (size_t)1 << 28, &buf, &len, err);
	if (rc)
		return rc;
	char *s = buf;
	for (size_t i = 0; i < len; i++)
		lines += s[i] == '\n';
	size_t slots = 16;
	while (slots < 2 * lines)
		slots *= 2;
	t->mt = trail_malloc(slots * sizeof *t->mt);
	t->merges = trail_malloc(lines * sizeof *t->merges);
	pair = trail_malloc(len + 1);
	if (!t->mt || !t->merges || !pair) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	t->mt_mask = slots - 1;
	for (size_t i = 0; i < slots; i++)
		t->mt[i].rank = -1;
	long line = 0;
	for (char *p = s, *end = s + len; p < end;) {
		char *nl = memchr(p, '\n', (size_t)(end - p)), *e = nl ? nl : end;
		line++;
		size_t n = (size_t)(e - p);
		if (n && p[n - 1] == '\r')
			n--;
		/* fields separated by spaces or tabs */
		char *f[3];
		size_t fl[3], nf = 0;
		for (size_t i = 0; i < n;) {
			while (i < n && (p[i] == ' ' || p[i] == '\t'))
				i++;
			if (i == n)
				break;
			size_t st = i;
			while (i < n && p[i] != ' ' && p[i] != '\t')
				i++;
			if (nf < 3)
				f[nf] = p + st, fl[nf] = i - st;
			nf++;
		}
		int version = line == 1 && n >= 8 && !memcmp(p, "#version", 8);
		p = e + 1;
		if (version || nf == 0)
			continue;
		if (nf != 2) {
			rc = trail_error_at(err, TRAIL_EDATA, path, line, "a merge is two tokens, found %zu fields", nf);
			goto out;
		}
		int32_t id[3];
		for (int k = 0; k < 3; k++) {
			if (k < 2) {
				memcpy(pair, f[k], fl[k]);
				pair[fl[k]] = 0;
			} else {
				memcpy(pair, f[0], fl[0]);
				memcpy(pair + fl[0], f[1], fl[1]);
				pair[fl[0] + fl[1]] = 0;
			}
			json_t *v = json_object_get(vocab, pair);
			if (!v) {
				rc = trail_error_at(err, TRAIL_EDATA, path, line, "\"%s\" is not in the vocabulary", pair);
				goto out;
			}
			id[k] = (int32_t)json_integer_value(v);
			if (t->flags[id[k]] & TOK_LITERAL) {
				rc = trail_error_at(err, TRAIL_EDATA, path, line,
						    "\"%s\" is not spelled in GPT-2's byte alphabet", pair);
				goto out;
			}
		}
		trail_tok_merge_put(t, id[0], id[1], (int32_t)t->n_merges, id[2]);
		t->merges[t->n_merges][0] = id[0];
		t->merges[t->n_merges][1] = id[1];
		t->n_merges++;
	}
out:
	trail_free(pair);
	trail_free(buf);
	return rc;
}

/* Hugging Face's layout (vocab.json, merges.txt) or OpenAI's (encoder.json, vocab.bpe). */
int trail_tok_gpt2_load(const char *dir, trail_tokenizer **out, trail_error *err)
{
	char *vp = NULL, *mp = NULL;
	json_t *vocab = NULL;
	int rc;
	trail_tokenizer *t = trail_calloc(1, sizeof *t);
	if (!t || trail_path_first(dir, "vocab.json", "encoder.json", &vp) || trail_path_first(dir, "merges.txt", "vocab.bpe", &mp) ||
	    !vp) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	t->kind = TK_GPT2;
	if (!mp) {
		rc = trail_error_at(err, TRAIL_ENOINPUT, dir, 0, "a BPE vocabulary without merges.txt (or vocab.bpe)");
		goto out;
	}
	if ((rc = read_vocab(t, vp, &vocab, err)) || (rc = read_merges(t, mp, vocab, err)))
		goto out;
	if (!(t->cache = cache_new()))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	json_decref(vocab);
	trail_free(vp);
	trail_free(mp);
	if (rc) {
		trail_tok_release(t);
		t = NULL;
	}
	*out = t;
	return rc;
}

/* ---- saving ---- */

/* Token i spelled as in vocab.json, appended to b. */
static int spell(const trail_tokenizer *t, size_t i, trail_buf *b)
{
	const char *s = t->text + t->off[i];
	size_t n = t->off[i + 1] - t->off[i];
	if (t->flags[i] & TOK_LITERAL)
		return trail_buf_put(b, s, n);
	for (size_t k = 0; k < n; k++) {
		uint32_t c = byte_char((uint8_t)s[k]);
		char u[2] = {(char)c, 0};
		if (c >= 0x80)
			u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3F));
		int rc = trail_buf_put(b, u, c < 0x80 ? 1 : 2);
		if (rc)
			return rc;
	}
	return TRAIL_OK;
}

/* vocab.json in id order and merges.txt by rank: the same tokenizer always gives the same bytes. */
int trail_tok_gpt2_save(const trail_tokenizer *t, const char *dir, trail_error *err)
{
	trail_buf b = {0}, w = {0};
	json_t *vocab = json_object();
	char *js = NULL, *vp = trail_path(dir, "vocab.json"), *mp = trail_path(dir, "merges.txt"),
	     *tp = trail_path(dir, "tokenizer.json");
	int rc = vocab && vp && mp && tp ? TRAIL_OK : TRAIL_ENOMEM;
	for (size_t i = 0; i < t->n_vocab && !rc; i++) {
		if (!(t->flags[i] & TOK_PRESENT))
			continue;
		w.n = 0;
		if ((rc = spell(t, i, &w)) || json_object_set_new(vocab, w.p, json_integer((json_int_t)i)))
			rc = TRAIL_ENOMEM;
	}
	if (!rc && !(js = json_dumps(vocab, JSON_COMPACT | JSON_PRESERVE_ORDER)))
		rc = TRAIL_ENOMEM;
	if (!rc)
		rc = trail_buf_put(&b, "#version: 0.2\n", 14);
	for (size_t r = 0; r < t->n_merges && !rc; r++)
		if ((rc = spell(t, (size_t)t->merges[r][0], &b)) || (rc = trail_buf_put(&b, " ", 1)) ||
		    (rc = spell(t, (size_t)t->merges[r][1], &b)) || (rc = trail_buf_put(&b, "\n", 1)))
			break;
	if (rc)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	else if (!(rc = trail_write_atomic(vp, js, strlen(js), 0644, err)) &&
		 !(rc = trail_write_atomic(mp, b.p, b.n, 0644, err))) {
		/* a byte tokenizer's tokenizer.json left by an earlier run would win on load */
		void *old;
		size_t n;
		int orc = trail_read_file(tp, 4096, &old, &n, NULL);
		if (orc == TRAIL_ENOMEM)
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		if (orc == TRAIL_OK) {
			if (strstr(old, "\"bytes\"") && unlink(tp))
				rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", tp);
			trail_free(old);
		}
	}
	free(js);
	json_decref(vocab);
	trail_buf_release(&b);
	trail_buf_release(&w);
	trail_free(vp);
	trail_free(mp);
	trail_free(tp);
	return rc;
}

void trail_tok_release(trail_tokenizer *t)
{
	if (!t)
		return;
	cache_free(t->cache);
	trail_free(t->text);
	trail_free(t->off);
	trail_free(t->flags);
	trail_free(t->mt);
	trail_free(t->merges);
	trail_free(t->vm);
	trail_free(t->added);
	trail_free(t->json);
	trail_free(t->config);
	trail_free(t);
}

int trail_tok_merges_alloc(trail_tokenizer *t, size_t n)
{
	size_t slots = 16;
	while (slots < 2 * n)
		slots *= 2;
	t->mt = trail_malloc(slots * sizeof *t->mt);
	t->merges = trail_malloc((n ? n : 1) * sizeof *t->merges);
	if (!t->mt || !t->merges)
		return TRAIL_ENOMEM;
	t->mt_mask = slots - 1;
	for (size_t i = 0; i < slots; i++)
		t->mt[i].rank = -1;
	return TRAIL_OK;
}

tok_cache *trail_tok_cache_new(void)
{
	return cache_new();
}

/* ---- token text to id ---- */

int trail_tok_map_build(trail_tokenizer *t)
{
	size_t slots = 16;
	while (slots < 2 * t->n_vocab)
		slots *= 2;
	trail_free(t->vm);
	if (!(t->vm = trail_calloc(slots, sizeof *t->vm)))
		return TRAIL_ENOMEM;
	t->vm_mask = slots - 1;
	for (size_t i = 0; i < t->n_vocab; i++) {
		if (!(t->flags[i] & TOK_PRESENT))
			continue;
		const char *p = t->text + t->off[i];
		size_t n = t->off[i + 1] - t->off[i], h = (size_t)XXH3_64bits(p, n) & t->vm_mask;
		for (; t->vm[h]; h = (h + 1) & t->vm_mask) {
			uint32_t j = t->vm[h] - 1;
			if (t->off[j + 1] - t->off[j] == n && !memcmp(t->text + t->off[j], p, n))
				break; /* the same text twice: the lower id stays */
		}
		if (!t->vm[h])
			t->vm[h] = (uint32_t)i + 1;
	}
	return TRAIL_OK;
}

int32_t trail_tok_lookup(const trail_tokenizer *t, const void *p, size_t n)
{
	if (!t->vm)
		return -1;
	for (size_t h = (size_t)XXH3_64bits(p, n) & t->vm_mask; t->vm[h]; h = (h + 1) & t->vm_mask) {
		uint32_t j = t->vm[h] - 1;
		if (t->off[j + 1] - t->off[j] == n && !memcmp(t->text + t->off[j], p, n))
			return (int32_t)j;
	}
	return -1;
}

static int16_t unspell_tab[324]; /* character -> byte, -1 outside the alphabet */
static pthread_once_t unspell_once = PTHREAD_ONCE_INIT;

static void unspell_init(void)
{
	for (int i = 0; i < 324; i++)
		unspell_tab[i] = -1;
	for (int i = 0; i < 256; i++)
		unspell_tab[byte_char((unsigned)i)] = (int16_t)i;
}

long trail_tok_unspell(const uint8_t *k, size_t n, uint8_t *out)
{
	const int16_t *dec = unspell_tab;
	pthread_once(&unspell_once, unspell_init);
	size_t j = 0, o = 0;
	while (j < n) {
		uint32_t cp = k[j];
		size_t cl = 1;
		if (k[j] >= 0xC0 && k[j] < 0xE0 && j + 1 < n)
			cp = (uint32_t)(k[j] & 0x1F) << 6 | (k[j + 1] & 0x3F), cl = 2;
		if (cp >= 324 || dec[cp] < 0 || (cl == 1 && k[j] >= 0x80))
			return -1;
		out[o++] = (uint8_t)dec[cp];
		j += cl;
	}
	return (long)o;
}

/* ---- encoding and decoding ---- */

int trail_tok_bytelevel(const trail_tokenizer *t, const uint8_t *s, size_t len, int32_t *ids, size_t *n,
			trail_error *err)
{
	cache *c = t->cache && !pthread_mutex_trylock(&t->cache->lock) ? t->cache : NULL;
	work w;
	size_t k = *n;
	w.cap = 0;
	w.owned = NULL;
	int rc = TRAIL_OK;
	for (size_t i = 0, e; i < len; i = e) {
		e = t->pre == TK_PRE_GPT2 ? piece_end(s, len, i) : piece_end_split(s, len, i, t->pre == TK_PRE_LLAMA3 ? 3 : 1);
		size_t m = e - i;
		if (m == 1) {
			ids[k++] = t->byte_id[s[i]];
			continue;
		}
		if (t->ignore_merges) {
			int32_t v = trail_tok_lookup(t, s + i, m);
			if (v >= 0 && !(t->flags[v] & (TOK_LITERAL | TOK_ADDED))) {
				ids[k++] = v;
				continue;
			}
		}
		uint64_t h = 0;
		const cache_slot *cs = NULL;
		if (c && m <= CACHE_KEY) {
			h = XXH3_64bits(s + i, m);
			if ((cs = cache_get(c, h, s + i, m))) {
				memcpy(ids + k, c->ids + cs->ioff, cs->nid * sizeof *ids);
				k += cs->nid;
				continue;
			}
		}
		if (m >= INT32_MAX) {
			rc = trail_error_set(err, TRAIL_ELIMIT, "a piece of %zu bytes (all spaces or one run) is too long", m);
			break;
		}
		if (work_reserve(&w, m)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			break;
		}
		size_t got = bpe_piece(t, s + i, m, &w, ids + k);
		if (c && m <= CACHE_KEY)
			cache_put(c, h, s + i, m, ids + k, got);
		k += got;
	}
	if (c)
		pthread_mutex_unlock(&c->lock);
	trail_free(w.owned);
	*n = k;
	return rc;
}

