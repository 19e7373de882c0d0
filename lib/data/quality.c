/*
 * Quality rules for documents: the Gopher quality and repetition filters
 * (Rae et al. 2021), C4's page filters (Raffel et al. 2020) and FineWeb's
 * own filters (Penedo et al. 2024), with the published thresholds as
 * defaults (policy.c). Each failing rule adds one reason with the value it
 * measured and the limit it broke.
 *
 * Conventions, shared by every rule: lengths count Unicode code points; a
 * line is the text between '\n's (a trailing '\r' dropped); a word is a
 * run of non-whitespace; a word's bare form drops ASCII punctuation at
 * both ends and folds ASCII case; a word of punctuation only is a symbol.
 */
#include <math.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "core/core.h"
#include "data/data_int.h"

/*
 * One pass over the text fills the scratch below: bit masks of whitespace,
 * continuation and letter bytes (8 bytes at a time), then words and lines
 * with their code points, word hashes and bare forms, and the counts the
 * rules share. Every rule then reads these instead of the bytes. The
 * buffers live in a trail_qscratch reused from one text to the next.
 */
struct word {
	uint32_t off, len; /* bytes in the text */
	uint32_t cps;      /* code points */
	uint32_t boff, blen; /* bare form, bytes */
	uint64_t h;        /* hash of the word as written */
};

struct span {
	uint32_t off, len;
	uint32_t cps; /* code points, for lines */
};

struct doc {
	const char *s;
	size_t len;
	size_t cps; /* code points in the whole text */
	size_t newlines, hashes, ellipses;
	size_t nonsym, nonsym_cps, alpha; /* words with a bare form, their code points; words with a letter */
	struct word *w;
	size_t nw;
	uint64_t *wcps;     /* wcps[i]: code points of words 0 .. i-1 */
	struct span *lines; /* every line, blank ones too */
	size_t nl;
	char *low;     /* the text with ASCII letters folded */
	uint64_t *msp, *mcont, *malpha, *mnl; /* per 64 bytes: whitespace, continuation, letter, '\n' */
	uint64_t *mend;                       /* per 64 bytes: '.', '!', '?' */
	uint64_t *mpunct;                     /* per 64 bytes: ASCII punctuation */
	uint64_t *mdot;                       /* per 64 bytes: '.' */
	size_t nmask;                         /* mask words in use: ceil(len / 64) */
	uint64_t *gh;  /* n-gram hashes, built up one word at a time */
	uint32_t *cand; /* n-gram positions still in the running */
	struct span *spans; /* paragraphs */
	/* hash set scratch: an entry is in the set when its gen is the set's */
	struct hent {
		uint64_t key;
		uint32_t val, gen;
	} *ht;
	size_t cap, mask;
	uint32_t gen;
	uint32_t *slot;     /* per candidate: its n-gram's slot */
};

struct trail_qscratch {
	struct doc d;
	/* capacities, in elements */
	size_t wcap, lcap, bcap, mcap, ghcap, ccap, pcap, scap, spcap;
};

trail_qscratch *trail_qscratch_new(void)
{
	return trail_calloc(1, sizeof(trail_qscratch));
}

void trail_qscratch_free(trail_qscratch *q)
{
	if (!q)
		return;
	struct doc *d = &q->d;
	trail_free(d->w);
	trail_free(d->wcps);
	trail_free(d->lines);
	trail_free(d->low);
	trail_free(d->msp); /* and the other masks */
	trail_free(d->gh);
	trail_free(d->cand);
	trail_free(d->spans);
	trail_free(d->ht);
	trail_free(d->slot);
	trail_free(q);
}

static inline int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* ASCII punctuation: '!'..'/', ':'..'@', '['..'`', '{'..'~', as a 128-bit set. */
static inline int is_punct(unsigned char c)
{
	static const uint64_t set[2] = {0xFC00FFFE00000000ull, 0x78000001F8000001ull};
	return c < 128 && (set[c >> 6] >> (c & 63)) & 1;
}

static void strip(const char *s, size_t *off, size_t *len)
{
	while (*len && is_space((unsigned char)s[*off]))
		(*off)++, (*len)--;
	while (*len && is_space((unsigned char)s[*off + *len - 1]))
		(*len)--;
}

static inline int ends_with_n(const char *s, size_t len, const char *suf, size_t n)
{
	return len >= n && !memcmp(s + len - n, suf, n);
}
/* For string literals: the length is known when compiling. */
#define ends_with(s, len, lit) ends_with_n(s, len, lit, sizeof lit - 1)

/* Whether the folded text holds needle (lower case) in [off, off + len). */
static int has_phrase(const struct doc *d, size_t off, size_t len, const char *needle)
{
	return memmem(d->low + off, len, needle, strlen(needle)) != NULL;
}

static size_t bits_in_long(const uint64_t *m, size_t a, size_t b)
{
	size_t wa = a >> 6, wb = (b - 1) >> 6;
	uint64_t lo = ~0ull << (a & 63), hi = ~0ull >> (63 - ((b - 1) & 63));
	size_t n = (size_t)tx_popcount(m[wa] & lo) + (size_t)tx_popcount(m[wb] & hi);
	for (size_t i = wa + 1; i < wb; i++)
		n += (size_t)tx_popcount(m[i]);
	return n;
}

/* Set bits of the mask array m in [a, b). */
static inline size_t bits_in(const uint64_t *m, size_t a, size_t b)
{
	if (a >= b)
		return 0;
	if ((a >> 6) != ((b - 1) >> 6))
		return bits_in_long(m, a, b);
	uint64_t lo = ~0ull << (a & 63), hi = ~0ull >> (63 - ((b - 1) & 63));
	return (size_t)tx_popcount(m[a >> 6] & lo & hi);
}

/* Grow *p to hold n elements of size sz (contents not kept). */
static int reserve(void *pp, size_t *cap, size_t n, size_t sz)
{
	void **p = pp;
	if (n <= *cap && *p)
		return 0;
	size_t c = n + n / 4 + 64;
	void *q = trail_malloc(c * sz);
	if (!q)
		return -1;
	trail_free(*p);
	*p = q;
	*cap = c;
	return 0;
}

/*
 * Masks of the 64 bytes at s[base .. base + cnt) into mask word wi, and
 * their folded copy; returns the high bits of the bytes (non-zero: not ASCII).
 * SSE2 where there is SSE2 (every x86-64), eight bytes at a time elsewhere.
 */
static uint64_t masks64(struct doc *d, const unsigned char *u, size_t base, size_t cnt, size_t wi)
{
	uint64_t sp = 0, cont = 0, alpha = 0, nl = 0, hash = 0, end = 0, punct = 0, dot = 0, high = 0;
	size_t k = 0;
#ifdef __SSE2__
	const __m128i c20 = _mm_set1_epi8(0x20), cA = _mm_set1_epi8('A'), c25 = _mm_set1_epi8(25);
	const __m128i ca = _mm_set1_epi8('a'), c9 = _mm_set1_epi8('\t'), c4 = _mm_set1_epi8(4);
	const __m128i csp = _mm_set1_epi8(' '), cnl = _mm_set1_epi8('\n'), chash = _mm_set1_epi8('#');
	const __m128i cC0 = _mm_set1_epi8((char)0xC0), cdot = _mm_set1_epi8('.');
	const __m128i cbang = _mm_set1_epi8('!'), cq = _mm_set1_epi8('?');
	const __m128i c0 = _mm_set1_epi8('0'), c9d = _mm_set1_epi8(9), c5d = _mm_set1_epi8(0x5D);
	for (; k + 16 <= cnt; k += 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(u + base + k));
		/* unsigned t <= m as min(t, m) == t */
		__m128i tu = _mm_sub_epi8(x, cA);
		__m128i up = _mm_cmpeq_epi8(_mm_min_epu8(tu, c25), tu);
		__m128i y = _mm_add_epi8(x, _mm_and_si128(up, c20));
		_mm_storeu_si128((__m128i *)(d->low + base + k), y);
		__m128i tl = _mm_sub_epi8(y, ca);
		__m128i lo = _mm_cmpeq_epi8(_mm_min_epu8(tl, c25), tl);
		__m128i tw = _mm_sub_epi8(x, c9);
		__m128i ws = _mm_or_si128(_mm_cmpeq_epi8(x, csp), _mm_cmpeq_epi8(_mm_min_epu8(tw, c4), tw));
		unsigned hb = (unsigned)_mm_movemask_epi8(x);
		sp |= (uint64_t)(unsigned)_mm_movemask_epi8(ws) << k;
		cont |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(x, cC0)) << k;
		alpha |= (uint64_t)((unsigned)_mm_movemask_epi8(lo) | hb) << k;
		nl |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, cnl)) << k;
		hash |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, chash)) << k;
		__m128i dt = _mm_cmpeq_epi8(x, cdot);
		__m128i se = _mm_or_si128(dt, _mm_or_si128(_mm_cmpeq_epi8(x, cbang), _mm_cmpeq_epi8(x, cq)));
		dot |= (uint64_t)(unsigned)_mm_movemask_epi8(dt) << k;
		end |= (uint64_t)(unsigned)_mm_movemask_epi8(se) << k;
		/* punctuation: '!' .. '~' but not a letter or digit */
		__m128i tg = _mm_sub_epi8(x, cbang), td = _mm_sub_epi8(x, c0);
		__m128i gr = _mm_cmpeq_epi8(_mm_min_epu8(tg, c5d), tg);
		__m128i dg = _mm_cmpeq_epi8(_mm_min_epu8(td, c9d), td);
		__m128i pu = _mm_andnot_si128(_mm_or_si128(lo, dg), gr);
		punct |= (uint64_t)(unsigned)_mm_movemask_epi8(pu) << k;
		high |= hb;
	}
#endif
	for (; k < cnt; k += 8) {
		uint64_t x = cnt - k >= 8 ? tx_load(u + base + k) : tx_load_tail(u + base + k, cnt - k);
		uint64_t y = tx_fold(x);
		if (cnt - k >= 8)
			tx_store(d->low + base + k, y);
		else
			for (size_t q = 0; q < cnt - k; q++)
				d->low[base + k + q] = (char)(y >> (8 * q));
		/* Whitespace: ' ' and '\t' .. '\r' (the padding, 0, is neither). */
		uint64_t msp = tx_eq(x, ' ') | tx_range(x, '\t', '\r');
		uint64_t mc = x & ~(x << 1) & TX_HIGH; /* 10xxxxxx: bit 7 set, bit 6 clear */
		uint64_t ma = tx_range(y, 'a', 'z') | (x & TX_HIGH);
		sp |= (uint64_t)tx_bits(msp) << k;
		cont |= (uint64_t)tx_bits(mc) << k;
		alpha |= (uint64_t)tx_bits(ma) << k;
		nl |= (uint64_t)tx_bits(tx_eq(x, '\n')) << k;
		hash |= (uint64_t)tx_bits(tx_eq(x, '#')) << k;
		end |= (uint64_t)tx_bits(tx_eq(x, '.') | tx_eq(x, '!') | tx_eq(x, '?')) << k;
		dot |= (uint64_t)tx_bits(tx_eq(x, '.')) << k;
		uint64_t mp = tx_range(x, '!', '/') | tx_range(x, ':', '@') | tx_range(x, '[', '`') |
			      tx_range(x, '{', '~');
		punct |= (uint64_t)tx_bits(mp) << k;
		high |= x & TX_HIGH;
	}
	if (cnt < 64)
		sp |= ~0ull << cnt; /* past the end: whitespace, so words close */
	d->msp[wi] = sp;
	d->mcont[wi] = cont;
	d->malpha[wi] = alpha;
	d->mnl[wi] = nl;
	d->mend[wi] = end;
	d->mpunct[wi] = punct;
	d->mdot[wi] = dot;
	d->hashes += tx_popcount(hash);
	return high;
}

/*
 * Ellipses: runs of three or more dots, counted once each (at a dot with
 * dots at the next two bytes and none before), and U+2026.
 */
static size_t count_ellipses(const struct doc *d, int ascii)
{
	size_t n = 0, nm = d->nmask;
	for (size_t wi = 0; wi < nm; wi++) {
		uint64_t m = d->mdot[wi], next = wi + 1 < nm ? d->mdot[wi + 1] : 0;
		uint64_t before = m << 1 | (wi ? d->mdot[wi - 1] >> 63 : 0);
		n += tx_popcount(m & ~before & (m >> 1 | next << 63) & (m >> 2 | next << 62));
	}
	const char *p = d->s, *end = d->s + d->len;
	for (; !ascii && (p = memmem(p, (size_t)(end - p), "\xe2\x80\xa6", 3)); p += 3)
		n++;
	return n;
}

static void add_line(struct doc *d, size_t lst, size_t i)
{
	size_t e = i;
	if (e > lst && d->s[e - 1] == '\r')
		e--;
	d->lines[d->nl++] = (struct span){(uint32_t)lst, (uint32_t)(e - lst),
					  (uint32_t)(e - lst - bits_in(d->mcont, lst, e))};
}

static int doc_init(trail_qscratch *q, const char *s, size_t len)
{
	struct doc *d = &q->d;
	d->s = s;
	d->len = len;
	d->cps = d->newlines = d->hashes = d->ellipses = 0;
	d->nonsym = d->nonsym_cps = d->alpha = 0;
	d->nw = d->nl = 0;
	size_t nm = len / 64 + 1;
	if (reserve(&d->low, &q->bcap, len + 1, 1) || reserve(&d->msp, &q->mcap, 7 * nm, 8))
		return -1;
	d->mcont = d->msp + nm;
	d->malpha = d->mcont + nm;
	d->mnl = d->malpha + nm;
	d->mend = d->mnl + nm;
	d->mpunct = d->mend + nm;
	d->mdot = d->mpunct + nm;
	const unsigned char *u = (const unsigned char *)s;
	uint64_t high = 0;
	size_t cont = 0;
	for (size_t base = 0, wi = 0; base < len; base += 64, wi++) {
		high |= masks64(d, u, base, len - base < 64 ? len - base : 64, wi);
		d->newlines += (size_t)tx_popcount(d->mnl[wi]);
		cont += (size_t)tx_popcount(d->mcont[wi]);
	}
	d->low[len] = 0;
	d->cps = len - cont;
	d->nmask = (len + 63) / 64;
	d->ellipses = count_ellipses(d, !high);

	/* Words: runs of non-whitespace, from the 0->1 and 1->0 steps of ~msp. */
	if (reserve(&d->w, &q->wcap, len / 2 + 1, sizeof *d->w))
		return -1;
	size_t ns = 0, ne = 0;
	uint64_t carry = 0;
	for (size_t base = 0, wi = 0; base < len; base += 64, wi++) {
		uint64_t ws = ~d->msp[wi], prev = ws << 1 | carry;
		uint64_t starts = ws & ~prev, ends = ~ws & prev;
		for (; starts; starts &= starts - 1)
			d->w[ns++].off = (uint32_t)(base + (size_t)__builtin_ctzll(starts));
		for (; ends; ends &= ends - 1, ne++)
			d->w[ne].len = (uint32_t)(base + (size_t)__builtin_ctzll(ends) - d->w[ne].off);
		carry = ws >> 63;
	}
	if (ne < ns) /* a word running up to a multiple of 64 bytes */
		d->w[ne].len = (uint32_t)(len - d->w[ne].off);
	d->nw = ns;
	for (size_t i = 0; i < d->nw; i++) {
		struct word *w = &d->w[i];
		size_t wst = w->off, e = wst + w->len, bo = wst, bl = w->len;
		w->h = XXH3_64bits(s + wst, w->len);
		if ((wst >> 6) == ((e - 1) >> 6)) {
			/* Within one mask word: the word's bits from bit 0, len of them. */
			size_t sh = wst & 63;
			uint64_t in = ~0ull >> (64 - w->len);
			uint64_t wc = (d->mcont[wst >> 6] >> sh) & in;
			uint64_t bare = ~(d->mpunct[wst >> 6] >> sh) & in;
			w->cps = w->len - tx_popcount(wc);
			d->alpha += ((d->malpha[wst >> 6] >> sh) & in) != 0;
			if (bare) {
				bo = wst + (size_t)__builtin_ctzll(bare);
				bl = wst + 64 - (size_t)__builtin_clzll(bare) - bo;
			} else {
				bl = 0;
			}
		} else {
			w->cps = w->len - (uint32_t)bits_in(d->mcont, wst, e);
			d->alpha += bits_in(d->malpha, wst, e) != 0;
			while (bl && is_punct(u[bo]))
				bo++, bl--;
			while (bl && is_punct(u[bo + bl - 1]))
				bl--;
		}
		w->boff = (uint32_t)bo;
		w->blen = (uint32_t)bl;
		if (bl) {
			d->nonsym++;
			d->nonsym_cps += w->cps;
		}
	}

	/* Lines close at '\n' (a '\r' before it dropped) and at the end. */
	if (reserve(&d->lines, &q->lcap, d->newlines + 1, sizeof *d->lines))
		return -1;
	size_t lst = 0;
	for (size_t wi = 0; wi * 64 < len; wi++)
		for (uint64_t m = d->mnl[wi]; m; m &= m - 1) {
			size_t i = wi * 64 + (size_t)__builtin_ctzll(m);
			add_line(d, lst, i);
			lst = i + 1;
		}
	add_line(d, lst, len);
	/* For the rules: n-gram state per word, paragraphs per line. */
	size_t nw = d->nw + 1;
	if (reserve(&d->gh, &q->ghcap, nw, sizeof *d->gh) ||
	    reserve(&d->cand, &q->ccap, nw, sizeof *d->cand) ||
	    reserve(&d->wcps, &q->pcap, nw, sizeof *d->wcps) ||
	    reserve(&d->slot, &q->scap, nw, sizeof *d->slot) ||
	    reserve(&d->spans, &q->spcap, d->nl + 1, sizeof *d->spans))
		return -1;
	d->wcps[0] = 0;
	return 0;
}

/*
 * The hash set: 64-bit keys with a 32-bit count, for n items. Emptied by
 * moving to the next generation, not by clearing, as it is refilled for
 * every n-gram length of every text.
 */
static int set_reset(trail_qscratch *q, size_t n)
{
	struct doc *d = &q->d;
	size_t cap = 16;
	while (cap < n * 2)
		cap *= 2;
	if (cap > d->cap) {
		trail_free(d->ht);
		d->ht = trail_calloc(cap, sizeof *d->ht);
		d->cap = d->ht ? cap : 0;
		d->gen = 0;
		if (!d->ht)
			return -1;
	}
	if (++d->gen == 0) {
		memset(d->ht, 0, d->cap * sizeof *d->ht);
		d->gen = 1;
	}
	d->mask = cap - 1;
	return 0;
}

/* Add key; returns its slot, whose count (ht[].val) it increments. */
static inline size_t set_slot(struct doc *d, uint64_t key)
{
	size_t m = d->mask, s = (size_t)(key * 0x9E3779B97F4A7C15ull >> 20) & m;
	struct hent *h = d->ht;
	while (h[s].gen == d->gen && h[s].key != key)
		s = (s + 1) & m;
	if (h[s].gen != d->gen) {
		h[s].gen = d->gen;
		h[s].key = key;
		h[s].val = 0;
	}
	h[s].val++;
	return s;
}

static inline uint32_t set_add(struct doc *d, uint64_t key)
{
	return d->ht[set_slot(d, key)].val;
}

static double round4(double v)
{
	return round(v * 1e4) / 1e4;
}

/* A measured value or limit: an integer when it is one, else 4 decimals. */
static json_t *num(double v)
{
	v = round4(v);
	if (v == floor(v) && fabs(v) < 9007199254740992.0)
		return json_integer((json_int_t)v);
	return json_real(v);
}

static int reason(json_t *reasons, int rule, double value, const char *limname, double limit)
{
	json_t *r = json_pack("{s:s,s:o,s:o}", "rule", trail_rule_name_of(rule), "value",
			      num(value), limname, num(limit));
	return !r || json_array_append_new(reasons, r) ? -1 : 0;
}

static int reason_n(json_t *reasons, int rule, int n, double value, double limit)
{
	json_t *r = json_pack("{s:s,s:i,s:o,s:o}", "rule", trail_rule_name_of(rule), "n", n,
			      "value", num(value), "max", num(limit));
	return !r || json_array_append_new(reasons, r) ? -1 : 0;
}

/* Whether a word's bare form, folded, is in the list (lower-case words). */
static int word_in(const struct doc *d, const struct word *w, const trail_words *list)
{
	for (size_t i = 0; i < list->n; i++)
		if (strlen(list->v[i]) == w->blen && !memcmp(d->low + w->boff, list->v[i], w->blen))
			return 1;
	return 0;
}

/* ---- Gopher quality ---------------------------------------------------------- */

static int gopher_quality(const trail_policy *p, struct doc *d, json_t *R)
{
	size_t nonsym = d->nonsym, cps = d->nonsym_cps, alpha = d->alpha;
	size_t hashes = d->hashes, ellipses = d->ellipses;
	double nw = d->nw ? (double)d->nw : 1;
	if (p->on[R_GQ_WORDS]) {
		if ((long long)nonsym < p->gq_min_words && reason(R, R_GQ_WORDS, (double)nonsym, "min", (double)p->gq_min_words))
			return -1;
		if ((long long)nonsym > p->gq_max_words && reason(R, R_GQ_WORDS, (double)nonsym, "max", (double)p->gq_max_words))
			return -1;
	}
	if (p->on[R_GQ_WORDLEN]) {
		double mean = nonsym ? (double)cps / (double)nonsym : 0;
		if (mean < p->gq_min_wordlen && reason(R, R_GQ_WORDLEN, mean, "min", p->gq_min_wordlen))
			return -1;
		if (mean > p->gq_max_wordlen && reason(R, R_GQ_WORDLEN, mean, "max", p->gq_max_wordlen))
			return -1;
	}
	if (p->on[R_GQ_SYMBOL]) {
		double r = (double)(hashes > ellipses ? hashes : ellipses) / nw;
		if (r > p->gq_max_symbol && reason(R, R_GQ_SYMBOL, r, "max", p->gq_max_symbol))
			return -1;
	}
	if (p->on[R_GQ_BULLET] || p->on[R_GQ_ELLIPSIS]) {
		size_t bullets = 0, ell = 0;
		for (size_t i = 0; i < d->nl; i++) {
			size_t off = d->lines[i].off, len = d->lines[i].len;
			strip(d->s, &off, &len);
			const char *l = d->s + off;
			bullets += len && (l[0] == '-' || l[0] == '*' ||
					   (len >= 3 && !memcmp(l, "\xe2\x80\xa2", 3)));
			ell += ends_with(l, len, "...") || ends_with(l, len, "\xe2\x80\xa6");
		}
		double nl = d->nl ? (double)d->nl : 1;
		if (p->on[R_GQ_BULLET] && bullets / nl > p->gq_max_bullet &&
		    reason(R, R_GQ_BULLET, bullets / nl, "max", p->gq_max_bullet))
			return -1;
		if (p->on[R_GQ_ELLIPSIS] && ell / nl > p->gq_max_ellipsis &&
		    reason(R, R_GQ_ELLIPSIS, ell / nl, "max", p->gq_max_ellipsis))
			return -1;
	}
	if (p->on[R_GQ_ALPHA]) {
		double r = d->nw ? (double)alpha / nw : 0;
		if (r < p->gq_min_alpha && reason(R, R_GQ_ALPHA, r, "min", p->gq_min_alpha))
			return -1;
	}
	if (p->on[R_GQ_STOP]) {
		/*
		 * Distinct stop words present. The count only shows when it is
		 * below the minimum, so the search stops once it gets there.
		 */
		size_t n = p->gq_stop_words.n < 64 ? p->gq_stop_words.n : 64, found = 0;
		size_t lens[64], minl = SIZE_MAX, maxl = 0;
		size_t enough = p->gq_min_stop > 0 ? (size_t)p->gq_min_stop : 0;
		unsigned char seen[64] = {0};
		for (size_t k = 0; k < n; k++) {
			lens[k] = strlen(p->gq_stop_words.v[k]);
			minl = lens[k] < minl ? lens[k] : minl;
			maxl = lens[k] > maxl ? lens[k] : maxl;
		}
		for (size_t i = 0; i < d->nw && found < n && found < enough; i++) {
			const struct word *w = &d->w[i];
			if (w->blen < minl || w->blen > maxl)
				continue;
			for (size_t k = 0; k < n; k++)
				if (!seen[k] && lens[k] == w->blen &&
				    !memcmp(d->low + w->boff, p->gq_stop_words.v[k], lens[k])) {
					seen[k] = 1;
					found++;
				}
		}
		if ((long long)found < p->gq_min_stop &&
		    reason(R, R_GQ_STOP, (double)found, "min", (double)p->gq_min_stop))
			return -1;
	}
	return 0;
}

/* ---- Gopher repetition ----------------------------------------------------- */

/* Duplicate elements among spans: count and code points of the repeats. */
static int dup_spans(trail_qscratch *q, const struct span *sp, size_t n, size_t *dups,
		     size_t *dupcps)
{
	struct doc *d = &q->d;
	*dups = *dupcps = 0;
	if (set_reset(q, n))
		return -1;
	for (size_t i = 0; i < n; i++) {
		uint64_t h = XXH3_64bits(d->s + sp[i].off, sp[i].len);
		if (set_add(d, h) > 1) {
			(*dups)++;
			*dupcps += sp[i].len - bits_in(d->mcont, sp[i].off, sp[i].off + sp[i].len);
		}
	}
	return 0;
}

/*
 * Repeated lines, for gopher-dup-lines (every line with a byte, or the one
 * line of a one-line text) and fineweb-dup-line-chars (lines with more than
 * whitespace): one hash per line, one pass. A line repeats for the second
 * set exactly when it does for the first, as a copy of a line that is more
 * than whitespace is too.
 */
struct line_stats {
	size_t g_lines, g_dups, g_dupc; /* gopher */
	size_t f_lines, f_dups, f_dupc; /* fineweb */
	size_t f_punct, f_short;
};

static int fw_terminal(const char *l, size_t len);

static int line_stats(const trail_policy *p, trail_qscratch *q, struct line_stats *ls)
{
	struct doc *d = &q->d;
	memset(ls, 0, sizeof *ls);
	if (set_reset(q, d->nl))
		return -1;
	for (size_t i = 0; i < d->nl; i++) {
		const struct span *l = &d->lines[i];
		if (!l->len && !(i == 0 && d->nl == 1))
			continue;
		size_t off = l->off, len = l->len;
		strip(d->s, &off, &len);
		int text = len != 0;
		int rep = set_add(d, XXH3_64bits(d->s + l->off, l->len)) > 1;
		ls->g_lines++;
		ls->g_dups += rep;
		ls->g_dupc += rep ? l->cps : 0;
		if (!text)
			continue;
		ls->f_lines++;
		ls->f_dups += rep;
		ls->f_dupc += rep ? l->cps : 0;
		ls->f_punct += fw_terminal(d->s + l->off, l->len);
		ls->f_short += (long long)l->cps <= p->fw_short_len;
	}
	return 0;
}

/* Add the next word to the n-gram hashes of the candidates: gh[i] covers words i .. i+n-1. */
static void grow_grams(struct doc *d, size_t nc, int n)
{
	for (size_t j = 0; j < nc; j++) {
		uint32_t i = d->cand[j];
		uint64_t h = (d->gh[i] ^ d->w[i + (size_t)n - 1].h) * 0x9E3779B97F4A7C15ull;
		d->gh[i] = h ^ (h >> 29);
	}
}

static int gopher_repetition(const trail_policy *p, trail_qscratch *q,
			     const struct line_stats *ls, json_t *R)
{
	struct doc *d = &q->d;
	double total = d->cps ? (double)d->cps : 1;
	if (p->on[R_GR_PARAS]) {
		/*
		 * Paragraphs: the stripped text split at runs of two or more
		 * newlines. Line k > 0 starts after a newline; a run of newlines
		 * is a run of lines with no bytes at all between them.
		 */
		size_t off = 0, len = d->len, np = 0, dups, dupc;
		strip(d->s, &off, &len);
		size_t st = off, e = off + len;
		for (size_t k = 1; k < d->nl;) {
			size_t nlpos = d->lines[k].off - 1, r = k;
			if (nlpos >= e)
				break;
			while (r + 1 < d->nl && d->lines[r + 1].off == d->lines[r].off + 1)
				r++;
			if (nlpos >= off && r > k) {
				d->spans[np++] = (struct span){(uint32_t)st, (uint32_t)(nlpos - st), 0};
				st = d->lines[r].off;
			}
			k = r + 1;
		}
		d->spans[np++] = (struct span){(uint32_t)st, (uint32_t)(e - st), 0};
		if (dup_spans(q, d->spans, np, &dups, &dupc))
			return -1;
		double f = np ? (double)dups / (double)np : 0, c = (double)dupc / total;
		if (f > p->gr_para_frac && reason(R, R_GR_PARAS, f, "max", p->gr_para_frac))
			return -1;
		else if (f <= p->gr_para_frac && c > p->gr_para_chars &&
			 reason(R, R_GR_PARAS, c, "max", p->gr_para_chars))
			return -1;
	}
	if (p->on[R_GR_LINES]) {
		/* Lines: blank lines (no bytes) do not count. */
		size_t nl = ls->g_lines, dups = ls->g_dups, dupc = ls->g_dupc;
		double f = nl ? (double)dups / (double)nl : 0, c = (double)dupc / total;
		if (f > p->gr_line_frac && reason(R, R_GR_LINES, f, "max", p->gr_line_frac))
			return -1;
		else if (f <= p->gr_line_frac && c > p->gr_line_chars &&
			 reason(R, R_GR_LINES, c, "max", p->gr_line_chars))
			return -1;
	}
	if (!p->on[R_GR_TOP] && !p->on[R_GR_DUP])
		return 0;
	/*
	 * N-grams for n = 2..10, hashes grown one word at a time. Top n-grams
	 * (2..4): the most frequent repeated n-gram's share of the text. Dup
	 * n-grams (5..10): characters in repeated n-grams, scanning left to
	 * right and skipping past each repeat so overlaps count once; with no
	 * repeated 5-gram there is no longer repeat either.
	 *
	 * An n-gram can repeat only where its (n-1)-gram prefix repeats, so
	 * each n looks only at the positions still in cand (in text order); an
	 * n-gram that occurs once never matters to either rule, and every
	 * occurrence of a repeated one is a candidate, so the counts are exact.
	 * Repetition is equality of these hashes. A word's hash is mixed
	 * before the next is folded in, so "a b" and "b a" differ.
	 */
	int top_done = !p->on[R_GR_TOP], dup_done = !p->on[R_GR_DUP];
	size_t nw = d->nw, nc = nw;
	for (size_t i = 0; i < nw; i++) {
		uint64_t h = d->w[i].h * 0x9E3779B97F4A7C15ull;
		d->gh[i] = h ^ (h >> 29);
		d->cand[i] = (uint32_t)i;
		d->wcps[i + 1] = d->wcps[i] + d->w[i].cps;
	}
	for (int n = 2; n <= 10 && (!top_done || !dup_done) && nw >= (size_t)n; n++) {
		size_t k = 0;
		for (size_t j = 0; j < nc; j++)
			if (d->cand[j] + (size_t)n <= nw)
				d->cand[k++] = d->cand[j];
		nc = k;
		grow_grams(d, nc, n);
		if (set_reset(q, nc))
			return -1;
		for (size_t j = 0; j < nc; j++)
			d->slot[j] = (uint32_t)set_slot(d, d->gh[d->cand[j]]);
		k = 0;
		for (size_t j = 0; j < nc; j++)
			if (d->ht[d->slot[j]].val > 1) {
				d->cand[k] = d->cand[j];
				d->slot[k++] = d->slot[j];
			}
		nc = k; /* the repeated n-grams */
		if (n <= 4 && !top_done) {
			size_t best = 0;
			for (size_t j = 0; j < nc; j++) {
				uint32_t i = d->cand[j];
				size_t cps = (size_t)n - 1 + (size_t)(d->wcps[i + (size_t)n] - d->wcps[i]);
				size_t c = d->ht[d->slot[j]].val;
				if (c * cps > best)
					best = c * cps;
			}
			double f = (double)best / total;
			if (f > p->gr_top[n]) {
				if (reason_n(R, R_GR_TOP, n, f, p->gr_top[n]))
					return -1;
				top_done = 1;
			}
		}
		if (n >= 5 && !dup_done) {
			/*
			 * Greedy scan over the repeated positions; the counts are reused to
			 * mark the repeated n-grams seen so far. Positions a counted
			 * repeat covers are skipped without being marked.
			 */
			size_t rep = 0, next = 0;
			for (size_t j = 0; j < nc; j++)
				d->ht[d->slot[j]].val = 0;
			for (size_t j = 0; j < nc; j++) {
				uint32_t i = d->cand[j];
				if (i < next)
					continue;
				if (d->ht[d->slot[j]].val) {
					rep += (size_t)(d->wcps[i + (size_t)n] - d->wcps[i]);
					next = i + (size_t)n;
				} else {
					d->ht[d->slot[j]].val = 1;
					next = i + 1;
				}
			}
			double f = (double)rep / total;
			if (f > p->gr_dup[n]) {
				if (reason_n(R, R_GR_DUP, n, f, p->gr_dup[n]))
					return -1;
				dup_done = 1;
			}
		}
		if (!nc)
			break; /* no repeated n-gram: no longer one either */
	}
	return 0;
}

/* ---- C4 ------------------------------------------------------------------------ */

static const char *const policy_phrases[] = {"terms of use", "privacy policy", "cookie policy",
					     "uses cookies", "use of cookies", "use cookies"};

/* The phrases C4 looks for: bit k of phrases_in's answer for phrase k. */
enum { PH_LOREM, PH_JS, PH_POLICY }; /* PH_POLICY + k: policy_phrases[k] */
#define PHRASE(s) {s, sizeof s - 1}
static const struct {
	const char *s;
	size_t n;
} phrases[] = {PHRASE("lorem ipsum"),   PHRASE("javascript"),     PHRASE("terms of use"),
	       PHRASE("privacy policy"), PHRASE("cookie policy"),  PHRASE("uses cookies"),
	       PHRASE("use of cookies"), PHRASE("use cookies")};
#define NPHRASES (sizeof phrases / sizeof *phrases)

/*
 * Which phrases the folded text holds, in one pass: positions where a
 * phrase's first two bytes stand (an SSE2 mask of the pairs), each checked
 * against the phrases starting so.
 */
static unsigned phrases_in(const struct doc *d)
{
	const unsigned char *u = (const unsigned char *)d->low;
	size_t len = d->len, i = 0;
	unsigned found = 0, all = (1u << NPHRASES) - 1;
	for (;;) {
		uint32_t m = 0;
		size_t base = i;
#ifdef __SSE2__
		/* d->low has a NUL at len, so the load at i + 1 stays inside. */
		if (i + 16 <= len) {
			__m128i x = _mm_loadu_si128((const __m128i *)(u + i));
			__m128i y = _mm_loadu_si128((const __m128i *)(u + i + 1));
#define PAIR(a, b) _mm_and_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(a)), _mm_cmpeq_epi8(y, _mm_set1_epi8(b)))
			__m128i c = _mm_or_si128(_mm_or_si128(PAIR('l', 'o'), PAIR('j', 'a')),
						 _mm_or_si128(PAIR('t', 'e'), PAIR('p', 'r')));
			c = _mm_or_si128(c, _mm_or_si128(PAIR('c', 'o'), PAIR('u', 's')));
#undef PAIR
			m = (uint32_t)_mm_movemask_epi8(c);
			i += 16;
		}
#endif
		if (base == i) {
			if (i >= len)
				break;
			m = 1; /* one byte at a time at the end */
			i++;
		}
		for (; m; m &= m - 1) {
			size_t p = base + (size_t)__builtin_ctzll(m);
			for (size_t k = 0; k < NPHRASES; k++)
				if (u[p] == (unsigned char)phrases[k].s[0] && p + phrases[k].n <= len &&
				    !memcmp(u + p, phrases[k].s, phrases[k].n))
					found |= 1u << k;
		}
		if (found == all)
			break;
	}
	return found;
}

static int c4_terminal(const char *l, size_t len)
{
	if (!len || ends_with(l, len, "..."))
		return 0;
	char c = l[len - 1];
	return c == '.' || c == '?' || c == '!' || c == '"';
}

/* The first set bit of mask array m in [a, b), or b. */
static size_t next_bit(const uint64_t *m, size_t a, size_t b)
{
	while (a < b) {
		uint64_t w = m[a >> 6] & (~0ull << (a & 63));
		if (w) {
			size_t i = (a & ~(size_t)63) + (size_t)__builtin_ctzll(w);
			return i < b ? i : b;
		}
		a = (a | 63) + 1;
	}
	return b;
}

/*
 * Sentence ends in the line s[off .. off + len): runs of . ! ? (with
 * closing quotes and brackets) followed by whitespace or the end, after a
 * byte that is not whitespace. The runs start at the bits of d->mend.
 */
static size_t sentences(const struct doc *d, size_t off, size_t len)
{
	const char *s = d->s;
	size_t n = 0, end = off + len;
	for (size_t i = next_bit(d->mend, off, end); i < end; i = next_bit(d->mend, i, end)) {
		size_t j = i;
		while (j < end && (s[j] == '.' || s[j] == '!' || s[j] == '?' || s[j] == '"' ||
				   s[j] == '\'' || s[j] == ')'))
			j++;
		if ((j == end || is_space((unsigned char)s[j])) && i > off &&
		    !is_space((unsigned char)s[i - 1]))
			n++;
		i = j + (j < end);
	}
	return n;
}

static int c4(const trail_policy *p, struct doc *d, json_t *R)
{
	unsigned ph = p->on[R_C4_LOREM] || p->on[R_C4_SENTENCES] ? phrases_in(d) : 0;
	if (p->on[R_C4_LOREM] && (ph >> PH_LOREM & 1)) {
		json_t *r = json_pack("{s:s}", "rule", trail_rule_name_of(R_C4_LOREM));
		if (!r || json_array_append_new(R, r))
			return -1;
	}
	if (p->on[R_C4_CURLY] && memchr(d->s, '{', d->len)) {
		json_t *r = json_pack("{s:s}", "rule", trail_rule_name_of(R_C4_CURLY));
		if (!r || json_array_append_new(R, r))
			return -1;
	}
	if (p->on[R_C4_BADWORDS] && p->c4_bad_words.n) {
		size_t bad = 0;
		for (size_t i = 0; i < d->nw; i++)
			bad += d->w[i].blen && word_in(d, &d->w[i], &p->c4_bad_words);
		if (bad) {
			json_t *r = json_pack("{s:s,s:I}", "rule", trail_rule_name_of(R_C4_BADWORDS),
					      "count", (json_int_t)bad);
			if (!r || json_array_append_new(R, r))
				return -1;
		}
	}
	if (p->on[R_C4_SENTENCES]) {
		size_t ns = 0, wi = 0;
		/* Phrases checked per line only when the text holds them at all. */
		int js = p->c4_javascript && (ph >> PH_JS & 1);
		int pol_any[6] = {0}, any = 0;
		for (size_t k = 0; p->c4_policy_lines && k < 6; k++)
			any |= pol_any[k] = ph >> (PH_POLICY + k) & 1;
		for (size_t i = 0; i < d->nl; i++) {
			size_t off = d->lines[i].off, len = d->lines[i].len, end = off + len;
			/* The line's conditions are all needed, so the cheap ones go first. */
			strip(d->s, &off, &len);
			const char *l = d->s + off;
			if (!len)
				continue;
			if (p->c4_terminal_punct && !c4_terminal(l, len))
				continue;
			/* Words of this line: d->w is in text order. */
			while (wi < d->nw && d->w[wi].off < d->lines[i].off)
				wi++;
			size_t nwl = 0;
			int longword = 0;
			for (size_t k = wi; k < d->nw && d->w[k].off < end; k++) {
				nwl++;
				longword |= (long long)d->w[k].cps > p->c4_max_word_len;
			}
			if (longword)
				continue;
			if ((long long)nwl < p->c4_min_line_words)
				continue;
			if (js && has_phrase(d, off, len, "javascript"))
				continue;
			int pol = 0;
			for (size_t k = 0; any && k < 6 && !pol; k++)
				pol = pol_any[k] && has_phrase(d, off, len, policy_phrases[k]);
			if (pol)
				continue;
			ns += sentences(d, off, len);
		}
		if ((long long)ns < p->c4_min_sentences &&
		    reason(R, R_C4_SENTENCES, (double)ns, "min", (double)p->c4_min_sentences))
			return -1;
	}
	return 0;
}

/* ---- FineWeb ------------------------------------------------------------------- */

static int fw_terminal(const char *l, size_t len)
{
	if (!len)
		return 0;
	char c = l[len - 1];
	return c == '.' || c == '!' || c == '?' || c == '"' || c == '\'' ||
	       ends_with(l, len, "\xe2\x80\xa6") || ends_with(l, len, "\xe2\x80\x9d");
}

static int fineweb(const trail_policy *p, struct doc *d, const struct line_stats *ls, json_t *R)
{
	size_t nl = ls->f_lines, punct = ls->f_punct, shortl = ls->f_short;
	double n = nl ? (double)nl : 1;
	int rc = 0;
	if (p->on[R_FW_PUNCT] && punct / n < p->fw_min_punct)
		rc = reason(R, R_FW_PUNCT, punct / n, "min", p->fw_min_punct);
	if (!rc && p->on[R_FW_SHORT] && nl && shortl / n > p->fw_max_short)
		rc = reason(R, R_FW_SHORT, shortl / n, "max", p->fw_max_short);
	if (!rc && p->on[R_FW_DUPCHARS]) {
		size_t dupc = ls->f_dupc, newlines = d->newlines;
		double base = d->cps > newlines ? (double)(d->cps - newlines) : 1;
		if (dupc / base > p->fw_max_dup_chars)
			rc = reason(R, R_FW_DUPCHARS, dupc / base, "max", p->fw_max_dup_chars);
	}
	if (!rc && p->on[R_FW_NEWLINE]) {
		double r = (double)d->newlines / (d->nw ? (double)d->nw : 1);
		if (r > p->fw_max_newline)
			rc = reason(R, R_FW_NEWLINE, r, "max", p->fw_max_newline);
	}
	return rc;
}

int trail_quality_check_with(const trail_policy *p, trail_qscratch *q, const char *text,
			     size_t len, json_t *reasons)
{
	struct line_stats ls;
	if (len > UINT32_MAX)
		len = UINT32_MAX;
	struct doc *d = &q->d;
	if (doc_init(q, text, len) || line_stats(p, q, &ls) || gopher_quality(p, d, reasons) ||
	    gopher_repetition(p, q, &ls, reasons) || c4(p, d, reasons) || fineweb(p, d, &ls, reasons))
		return -TRAIL_ENOMEM;
	return 0;
}

int trail_quality_check(const trail_policy *p, const char *text, size_t len, json_t *reasons)
{
	trail_qscratch *q = trail_qscratch_new();
	int rc = q ? trail_quality_check_with(p, q, text, len, reasons) : -TRAIL_ENOMEM;
	trail_qscratch_free(q);
	return rc;
}
