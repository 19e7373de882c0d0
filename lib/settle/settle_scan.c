/*
 * Settlement's JSON scanner: strict (RFC 8259, UTF-8 checked, no NUL),
 * allocation-free, reading a value's text where it lies in the line;
 * growable buffers; numbers read as fixed point from their decimal text.
 */
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "settle/settle_int.h"

int settle_sb_grow(sbuf *b, size_t more)
{
	size_t nc = b->cap ? b->cap : 256;
	while (nc < b->n + more)
		nc *= 2;
	char *np = trail_realloc(b->p, nc);
	if (!np) {
		b->oom = 1;
		return -1;
	}
	b->p = np;
	b->cap = nc;
	return 0;
}

/* A string in RFC 8785 form: only '"', '\\' and control characters escaped. */
void settle_sb_jstr(sbuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	sb_c(b, '"');
	size_t i = 0;
	while (i < n) {
		size_t j = i;
		while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\')
			j++;
		sb_put(b, s + i, j - i);
		if (j == n)
			break;
		unsigned char c = (unsigned char)s[j];
		char e[6] = {'\\', 0};
		size_t en = 2;
		switch (c) {
		case '"': e[1] = '"'; break;
		case '\\': e[1] = '\\'; break;
		case '\b': e[1] = 'b'; break;
		case '\f': e[1] = 'f'; break;
		case '\n': e[1] = 'n'; break;
		case '\r': e[1] = 'r'; break;
		case '\t': e[1] = 't'; break;
		default:
			memcpy(e + 1, "u00", 3);
			e[4] = hex[c >> 4];
			e[5] = hex[c & 15];
			en = 6;
		}
		sb_put(b, e, en);
		i = j + 1;
	}
	sb_c(b, '"');
}

/* Length of the UTF-8 sequence at p (first byte >= 0x80), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *e)
{
	unsigned c = p[0];
	size_t n;
	unsigned lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		if (c == 0xed)
			hi = 0x9f; /* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if ((size_t)(e - p) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

static int hex4(const char *p, unsigned *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
			     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
			     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
		if (d > 15)
			return -1;
		*v = *v << 4 | d;
	}
	return 0;
}

/*
 * The first byte at or after p that ends a run of plain string bytes (not
 * '"', '\\', a control character or a non-ASCII byte), or e. Most of a
 * record's bytes are in strings, so this loop is the scanner's hot spot.
 */
static const char *plain(const char *p, const char *e)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
#define STOPS(x)                                                                                                   \
	(_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),           \
					_mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x))) |                                   \
	 _mm_movemask_epi8(x))
	/* 32 bytes a step: a content address (71 bytes) takes 3 steps, and fewer mispredicted exits */
	while (e - p >= 32) {
		__m128i a = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i b = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
		unsigned m = (unsigned)STOPS(a) | (unsigned)STOPS(b) << 16;
		if (m)
			return p + __builtin_ctz(m);
		p += 32;
	}
#undef STOPS
	while (e - p >= 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
					    _mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x));
		int m = _mm_movemask_epi8(stop) | _mm_movemask_epi8(x); /* high bit: non-ASCII */
		if (m)
			return p + __builtin_ctz((unsigned)m);
		p += 16;
	}
#endif
	while (p < e && (unsigned char)*p >= 0x20 && *p != '"' && *p != '\\' && (unsigned char)*p < 0x80)
		p++;
	return p;
}

/*
 * A string at s->p: checked completely (escapes, surrogate pairs, UTF-8, no
 * control characters, no NUL). *raw gets the text between the quotes and
 * *esc whether it holds escapes (then settle_decode() gives its value).
 */
int settle_str_scan(scan *s, span *raw, int *esc)
{
	ws(s);
	if (s->p >= s->e || *s->p != '"')
		return bad(s, "a string was expected");
	const char *p = ++s->p, *e = s->e;
	*esc = 0;
	raw->p = p;
	for (;;) {
		p = plain(p, e);
		if (p >= e)
			return bad(s, "unterminated string");
		unsigned char c = (unsigned char)*p;
		if (c == '"')
			break;
		if (c < 0x20)
			return bad(s, "control character in a string");
		if (c >= 0x80) {
			size_t n = utf8_len((const unsigned char *)p, (const unsigned char *)e);
			if (!n)
				return bad(s, "invalid UTF-8");
			p += n;
			continue;
		}
		/* an escape */
		*esc = 1;
		if (e - p < 2)
			return bad(s, "unterminated string");
		switch (p[1]) {
		case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
			p += 2;
			break;
		case 'u': {
			unsigned v, w;
			if (e - p < 6 || hex4(p + 2, &v))
				return bad(s, "bad \\u escape");
			if (v == 0)
				return bad(s, "\\u0000 in a string");
			p += 6;
			if (v >= 0xdc00 && v <= 0xdfff)
				return bad(s, "lone surrogate in a string");
			if (v >= 0xd800 && v <= 0xdbff) {
				if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &w) || w < 0xdc00 || w > 0xdfff)
					return bad(s, "lone surrogate in a string");
				p += 6;
			}
			break;
		}
		default:
			return bad(s, "bad escape in a string");
		}
	}
	raw->e = p;
	s->p = p + 1;
	return 0;
}

/* Decode a checked string body with escapes, appending it to b (no NUL). */
void settle_decode(const span *raw, sbuf *b)
{
	const char *p = raw->p;
	while (p < raw->e) {
		if (*p != '\\') {
			const char *q = p;
			while (q < raw->e && *q != '\\')
				q++;
			sb_put(b, p, (size_t)(q - p));
			p = q;
			continue;
		}
		char c = p[1];
		p += 2;
		switch (c) {
		case 'b': sb_c(b, '\b'); break;
		case 'f': sb_c(b, '\f'); break;
		case 'n': sb_c(b, '\n'); break;
		case 'r': sb_c(b, '\r'); break;
		case 't': sb_c(b, '\t'); break;
		case 'u': {
			unsigned v, w;
			hex4(p, &v);
			p += 4;
			if (v >= 0xd800 && v <= 0xdbff) {
				hex4(p + 2, &w);
				p += 6;
				v = 0x10000 + ((v - 0xd800) << 10) + (w - 0xdc00);
			}
			char u[4];
			size_t n;
			if (v < 0x80)
				u[0] = (char)v, n = 1;
			else if (v < 0x800)
				u[0] = (char)(0xc0 | v >> 6), u[1] = (char)(0x80 | (v & 63)), n = 2;
			else if (v < 0x10000)
				u[0] = (char)(0xe0 | v >> 12), u[1] = (char)(0x80 | (v >> 6 & 63)),
				u[2] = (char)(0x80 | (v & 63)), n = 3;
			else
				u[0] = (char)(0xf0 | v >> 18), u[1] = (char)(0x80 | (v >> 12 & 63)),
				u[2] = (char)(0x80 | (v >> 6 & 63)), u[3] = (char)(0x80 | (v & 63)), n = 4;
			sb_put(b, u, n);
			break;
		}
		default: sb_c(b, c); break;
		}
	}
}

static int digits(scan *s)
{
	const char *p = s->p;
	while (s->p < s->e && *s->p >= '0' && *s->p <= '9')
		s->p++;
	return s->p > p ? 0 : bad(s, "malformed number");
}

/* A number per RFC 8259; *isint when it has neither fraction nor exponent. */
int settle_num_scan(scan *s, span *t, int *isint)
{
	ws(s);
	t->p = s->p;
	*isint = 1;
	if (s->p < s->e && *s->p == '-')
		s->p++;
	if (s->p < s->e && *s->p == '0')
		s->p++;
	else if (digits(s))
		return -1;
	if (s->p < s->e && *s->p == '.') {
		s->p++;
		*isint = 0;
		if (digits(s))
			return -1;
	}
	if (s->p < s->e && (*s->p == 'e' || *s->p == 'E')) {
		s->p++;
		*isint = 0;
		if (s->p < s->e && (*s->p == '+' || *s->p == '-'))
			s->p++;
		if (digits(s))
			return -1;
	}
	t->e = s->p;
	return 0;
}

static int word(scan *s, const char *w, size_t n)
{
	if ((size_t)(s->e - s->p) < n || memcmp(s->p, w, n))
		return bad(s, "invalid JSON value");
	s->p += n;
	return 0;
}

/* Check and step over one value. */
int settle_value_skip(scan *s, int depth)
{
	span t;
	int f;
	ws(s);
	if (s->p >= s->e)
		return bad(s, "a value was expected");
	if (depth > DEPTH_MAX)
		return bad(s, "nested too deeply");
	switch (*s->p) {
	case '"':
		return settle_str_scan(s, &t, &f);
	case '{':
		s->p++;
		if (lit(s, '}'))
			return 0;
		do {
			if (settle_str_scan(s, &t, &f))
				return -1;
			if (!lit(s, ':'))
				return bad(s, "':' was expected");
			if (settle_value_skip(s, depth + 1))
				return -1;
		} while (lit(s, ','));
		return lit(s, '}') ? 0 : bad(s, "',' or '}' was expected");
	case '[':
		s->p++;
		if (lit(s, ']'))
			return 0;
		do
			if (settle_value_skip(s, depth + 1))
				return -1;
		while (lit(s, ','));
		return lit(s, ']') ? 0 : bad(s, "',' or ']' was expected");
	case 't':
		return word(s, "true", 4);
	case 'f':
		return word(s, "false", 5);
	case 'n':
		return word(s, "null", 4);
	default:
		return settle_num_scan(s, &t, &f);
	}
}

/*
 * Members and elements, one at a time: start with *n == 0. settle_members() gives
 * 1 with the next key (decoded when it holds escapes) after its ':', 0 at
 * the '}'; settle_elements() 1 with s->p at the next element, 0 at the ']'.
 */

int settle_members(scan *s, int *n, char *kb, const char **k, size_t *kn)
{
	span raw;
	int esc;
	if (!*n) {
		if (!lit(s, '{'))
			return bad(s, "an object was expected");
		if (lit(s, '}'))
			return 0;
	} else if (!lit(s, ',')) {
		return lit(s, '}') ? 0 : bad(s, "',' or '}' was expected");
	}
	++*n;
	if (settle_str_scan(s, &raw, &esc))
		return -1;
	*k = raw.p;
	*kn = (size_t)(raw.e - raw.p);
	if (esc) { /* rare: a key with escapes is compared decoded; a long one is no key wanted */
		sbuf b = {kb, 0, KEY_RAW_MAX, 0};
		if (*kn <= KEY_RAW_MAX)
			settle_decode(&raw, &b);
		*k = kb;
		*kn = b.n;
	}
	if (!lit(s, ':'))
		return bad(s, "':' was expected");
	ws(s);
	return 1;
}

int settle_elements(scan *s, int *n)
{
	if (!*n) {
		if (!lit(s, '['))
			return bad(s, "an array was expected");
		if (lit(s, ']'))
			return 0;
	} else if (!lit(s, ',')) {
		return lit(s, ']') ? 0 : bad(s, "',' or ']' was expected");
	}
	++*n;
	ws(s);
	return 1;
}

/* An integer in [0, max] at s->p; -1 (no message) for anything else. */
int settle_count_at(scan *s, uint64_t max, uint64_t *out)
{
	const char *p = s->p, *e = s->e, *q;
	uint64_t x = 0;
	if (p < e && *p == '0') {
		p++;
	} else {
		for (q = p; p < e && (unsigned)(unsigned char)*p - '0' < 10; p++)
			if ((x = x * 10 + (uint64_t)(*p - '0')) > max)
				return -1;
		if (p == q)
			return -1;
	}
	if (p < e && (*p == '.' || *p == 'e' || *p == 'E'))
		return -1;
	s->p = p;
	*out = x;
	return 0;
}

/*
 * The value of a number's checked text in units of 1e-9, rounded toward zero and saturated at
 * +-FIX_MAX, computed from its decimal text with integers only.
 */
static int64_t fixed_slow(const char *p, const char *e);

int64_t settle_fixed_of(const char *p, const char *e)
{
	/* the usual case: no exponent, at most 9 integer digits; digits past 1e-9 are dropped */
	static const uint64_t pow10[10] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, NANO};
	const char *q = p + (*p == '-');
	uint64_t ip = 0, fr = 0;
	int ni = 0, nf = 0;
	for (; q < e && (unsigned)(unsigned char)*q - '0' < 10 && ni < 10; q++, ni++)
		ip = ip * 10 + (uint64_t)(*q - '0');
	if (ni <= 9 && q < e && *q == '.')
		for (q++; q < e && (unsigned)(unsigned char)*q - '0' < 10; q++)
			if (nf < 9)
				fr = fr * 10 + (uint64_t)(*q - '0'), nf++;
	if (ni <= 9 && q == e) {
		int64_t m = (int64_t)(ip * NANO + fr * pow10[9 - nf]);
		return *p == '-' ? -m : m;
	}
	return fixed_slow(p, e);
}

/* Any number: the mantissa's digits in 128 bits, the exponent applied by steps of ten. */
static int64_t fixed_slow(const char *p, const char *e)
{
	const u128 big = (u128)FIX_MAX * FIX_MAX; /* 1e36: beyond it digits no longer matter */
	int neg = *p == '-', frac = 0;
	long k = 9;
	u128 m = 0;
	p += neg;
	for (; p < e && *p != 'e' && *p != 'E'; p++) {
		if (*p == '.') {
			frac = 1;
			continue;
		}
		if (m < big) {
			m = m * 10 + (unsigned)(*p - '0');
			k -= frac;
		} else if (!frac) {
			k++;
		}
	}
	if (p < e) {
		long x = 0;
		int xneg = 0;
		p++;
		if (*p == '+' || *p == '-')
			xneg = *p++ == '-';
		for (; p < e; p++)
			if (x < 100000)
				x = x * 10 + (*p - '0');
		k += xneg ? -x : x;
	}
	if (m && k > 0) {
		while (k-- > 0 && m <= (u128)FIX_MAX)
			m *= 10;
	} else if (m && k < 0) {
		if (k < -40)
			m = 0;
		while (k++ < 0 && m)
			m /= 10;
	}
	if (m > (u128)FIX_MAX)
		m = FIX_MAX;
	return neg ? -(int64_t)m : (int64_t)m;
}
