/*
 * Settlement. Three parts:
 *
 *  1. a strict, allocation-free JSON scanner that checks each NDJSON line
 *     and reads the few members settlement needs in the same pass
 *     (building a JSON tree per record would cost more than everything
 *     else together), optionally over blocks of lines in several threads;
 *  2. the accumulator: per payee, exact sums in 128-bit integers of
 *       acc  = sum over records of fee_num(r) * w(r, payee)
 *       mfee = sum of fee_num(r) over the records of the payee's model
 *     where fee_num(r) = prompt_tokens * fee_per_1k_prompt +
 *     completion_tokens * fee_per_1k_completion is 1000 times the record's
 *     fee, and w(r, payee) is its share in units of 1e-9 after clusters and
 *     normalisation (sum over a record <= 1e9);
 *  3. the result: fees = floor(sum fee_num / 1000) minor units, split by
 *     largest remainder at every level (roles by basis points, then payees
 *     by their exact quotas), then penalties and the conservation checks.
 *
 * Sums of integers do not depend on the order they are taken in, and every
 * rounding happens once, at the end, on those sums: the result is a
 * function of the multiset of lines.
 */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <xxhash.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "core/core.h"
#include "ledger/ledger.h"
#include "settle/settle.h"

typedef unsigned __int128 u128;
typedef __int128 i128;

#define NANO 1000000000LL                /* fixed-point unit of shares and scores */
#define FIX_MAX 1000000000000000000LL    /* |fixed-point value| saturates here (1e9) */
#define COUNT_MAX (1ULL << 40)           /* tokens, fees per 1k, flag counts */
/* sum of fee_num: fees stay below 2^53, the largest integer JSON carries exactly */
#define FEES_MAX (((u128)1 << 53) * 1000 - 1)
#define LINE_LIMIT ((size_t)256 << 20)
#define DEPTH_MAX 64

enum { R_PLATFORM, R_MODEL, R_STAKERS, R_CONTRIB };
static const char *const ROLE[4] = {"platform", "model", "stakers", "contributors"};
static const char *const ROLE_OUT[4] = {"platform", "model", "stakers", "contributor"};

/* ---- growable byte buffer ------------------------------------------------------------ */

typedef struct sbuf {
	char *p;
	size_t n, cap;
	int oom;
} sbuf;

static int sb_reserve(sbuf *b, size_t more)
{
	if (b->n + more <= b->cap)
		return 0;
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

static void sb_put(sbuf *b, const void *d, size_t n)
{
	if (!sb_reserve(b, n)) {
		memcpy(b->p + b->n, d, n);
		b->n += n;
	}
}

static void sb_c(sbuf *b, char c)
{
	if (!sb_reserve(b, 1))
		b->p[b->n++] = c;
}

/* A string in RFC 8785 form: only '"', '\\' and control characters escaped. */
static void sb_jstr(sbuf *b, const char *s, size_t n)
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

/* ---- the scanner ----------------------------------------------------------------------- */

/* A value's JSON text inside the current line. */
typedef struct span {
	const char *p, *e;
} span;

typedef struct scan {
	const char *p, *e;
	const char *why; /* the first thing found wrong */
	int oom;
} scan;

static int bad(scan *s, const char *why)
{
	if (!s->why)
		s->why = why;
	return -1;
}

/* a == b for n bytes: keys and names are short, a call to memcmp costs more than the loop */
static inline int same(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static inline void ws(scan *s)
{
	while (s->p < s->e && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static inline int lit(scan *s, char c)
{
	ws(s);
	if (s->p < s->e && *s->p == c) {
		s->p++;
		return 1;
	}
	return 0;
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
 * *esc whether it holds escapes (then decode() gives its value).
 */
static int str_scan(scan *s, span *raw, int *esc)
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
static void decode(const span *raw, sbuf *b)
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
static int num_scan(scan *s, span *t, int *isint)
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

static int value_skip(scan *s, int depth);

static int word(scan *s, const char *w, size_t n)
{
	if ((size_t)(s->e - s->p) < n || memcmp(s->p, w, n))
		return bad(s, "invalid JSON value");
	s->p += n;
	return 0;
}

/* Check and step over one value. */
static int value_skip(scan *s, int depth)
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
		return str_scan(s, &t, &f);
	case '{':
		s->p++;
		if (lit(s, '}'))
			return 0;
		do {
			if (str_scan(s, &t, &f))
				return -1;
			if (!lit(s, ':'))
				return bad(s, "':' was expected");
			if (value_skip(s, depth + 1))
				return -1;
		} while (lit(s, ','));
		return lit(s, '}') ? 0 : bad(s, "',' or '}' was expected");
	case '[':
		s->p++;
		if (lit(s, ']'))
			return 0;
		do
			if (value_skip(s, depth + 1))
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
		return num_scan(s, &t, &f);
	}
}

/*
 * Members and elements, one at a time: start with *n == 0. members() gives
 * 1 with the next key (decoded when it holds escapes) after its ':', 0 at
 * the '}'; elements() 1 with s->p at the next element, 0 at the ']'.
 */
#define KEY_RAW_MAX 72 /* the longest key wanted (12 bytes) written with \u escapes */

static int members(scan *s, int *n, char *kb, const char **k, size_t *kn)
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
	if (str_scan(s, &raw, &esc))
		return -1;
	*k = raw.p;
	*kn = (size_t)(raw.e - raw.p);
	if (esc) { /* rare: a key with escapes is compared decoded; a long one is no key wanted */
		sbuf b = {kb, 0, KEY_RAW_MAX, 0};
		if (*kn <= KEY_RAW_MAX)
			decode(&raw, &b);
		*k = kb;
		*kn = b.n;
	}
	if (!lit(s, ':'))
		return bad(s, "':' was expected");
	ws(s);
	return 1;
}

static int elements(scan *s, int *n)
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

/* Which of keys[] (nk < 32) k is, or -1; *seen refuses a key given twice. */
typedef struct mkey {
	const char *k;
	size_t n;
} mkey;
#define KEY(s) {s, sizeof s - 1}

static int key_of(scan *s, const mkey *keys, int nk, const char *k, size_t kn, unsigned *seen, int *out)
{
	*out = -1;
	for (int i = 0; i < nk; i++)
		if (keys[i].n == kn && same(keys[i].k, k, kn)) {
			if (*seen & 1u << i)
				return bad(s, "a member is given twice");
			*seen |= 1u << i;
			*out = i;
			break;
		}
	return 0;
}

/* An integer in [0, max] at s->p; -1 (no message) for anything else. */
static int count_at(scan *s, uint64_t max, uint64_t *out)
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

static int64_t fixed_of(const char *p, const char *e)
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

/* ---- payees ---------------------------------------------------------------------------- */

typedef struct payee {
	char *name; /* owned, NUL-terminated */
	uint32_t len;
	uint32_t slot;  /* position in the current record's credit list */
	uint64_t mark;  /* the record that slot belongs to */
	u128 acc;       /* sum of fee_num * w */
	u128 mfee;      /* sum of fee_num over records of the models this payee owns */
	i128 neg;       /* sum of negative top scores, 1e-9 units */
	uint64_t rejected, flagged, poisoning;
	uint64_t stake;
} payee;

/* String -> index + 1, open addressing over XXH3 (a hash table, not a content address). */
typedef struct ent {
	uint64_t h;
	uint32_t v; /* payee index + 1; 0: empty */
} ent;

typedef struct table {
	ent *e;
	size_t cap, n;
} table;

/* A string as read from a line: in the line itself, or decoded into the arena. */
typedef struct sref {
	size_t off;
	uint32_t len;
	uint8_t arena, null;
} sref;

typedef struct credit {
	uint32_t who;
	u128 w;
	u128 rem;
} credit;

typedef struct scored {
	sref who;
	int64_t v;
} scored;

typedef struct cluster {
	sref first;
	size_t m0, m1; /* members[m0..m1) */
} cluster;

#define VEC(T) struct { T *v; size_t n, cap; }

struct trail_settle {
	json_t *policy;
	uint64_t fee_p, fee_c;
	int64_t bps[4];
	uint32_t platform, model_owner;
	int64_t max_rejected, max_flagged, max_poisoning; /* -1: no rule */
	int has_min_influence;
	int64_t min_influence; /* 1e-9 units */
	int64_t slash_bps;

	payee *pay;
	size_t npay, cappay;
	table names;  /* payee name -> payee */
	table models; /* model -> owning payee; keys in mnames */
	char **mnames;     /* models named in model_owners */
	uint32_t *mowner;  /* their owners (payee indexes) */
	size_t nmodels;

	u128 fees;    /* sum of fee_num */
	uint8_t inputs[32];
	uint64_t records, flag_lines, serial;

	/* per-line scratch, reused: bounded by the longest line */
	sbuf arena, view;
	VEC(scored) contrib;
	VEC(scored) top;
	VEC(sref) members;
	VEC(sref) poison;
	VEC(cluster) clusters;
	VEC(credit) cred;
};

#define VEC_PUSH(s, vec, x)                                                                       \
	((vec).n < (vec).cap || vec_grow((void **)&(vec).v, &(vec).cap, sizeof *(vec).v) == 0     \
		 ? ((vec).v[(vec).n++] = (x), 0)                                                   \
		 : -1)

static int vec_grow(void **v, size_t *cap, size_t size)
{
	size_t nc = *cap ? *cap * 2 : 16;
	void *nv = trail_realloc(*v, nc * size);
	if (!nv)
		return -1;
	*v = nv;
	*cap = nc;
	return 0;
}

static uint64_t hash(const char *p, size_t n)
{
	return XXH3_64bits(p, n);
}

static int table_grow(table *t)
{
	size_t nc = t->cap ? t->cap * 2 : 64;
	ent *ne = trail_calloc(nc, sizeof *ne);
	if (!ne)
		return -1;
	for (size_t i = 0; i < t->cap; i++) {
		if (!t->e[i].v)
			continue;
		size_t j = (size_t)t->e[i].h & (nc - 1);
		while (ne[j].v)
			j = (j + 1) & (nc - 1);
		ne[j] = t->e[i];
	}
	trail_free(t->e);
	t->e = ne;
	t->cap = nc;
	return 0;
}

/* The slot for key (n bytes) under h: found (v != 0) or the empty one to fill. */
static ent *table_slot(table *t, char **keys, const char *k, size_t n, uint64_t h)
{
	size_t j = (size_t)h & (t->cap - 1);
	while (t->e[j].v) {
		const char *x = keys[t->e[j].v - 1];
		if (t->e[j].h == h && !memcmp(x, k, n) && x[n] == 0)
			return &t->e[j];
		j = (j + 1) & (t->cap - 1);
	}
	return &t->e[j];
}

static ent *name_slot(trail_settle *s, const char *k, size_t n, uint64_t h)
{
	size_t j = (size_t)h & (s->names.cap - 1);
	while (s->names.e[j].v) {
		const payee *p = &s->pay[s->names.e[j].v - 1];
		if (s->names.e[j].h == h && p->len == n && same(p->name, k, n))
			return &s->names.e[j];
		j = (j + 1) & (s->names.cap - 1);
	}
	return &s->names.e[j];
}

/* The payee called k; created when `create`. 0 found/created, 1 absent, -1 out of memory. */
static int payee_get(trail_settle *s, const char *k, size_t n, int create, uint32_t *out)
{
	if ((s->names.n + 1) * 4 > s->names.cap * 3 && table_grow(&s->names))
		return -1;
	uint64_t h = hash(k, n);
	ent *e = name_slot(s, k, n, h);
	if (e->v) {
		*out = e->v - 1;
		return 0;
	}
	if (!create)
		return 1;
	if (s->npay == s->cappay && vec_grow((void **)&s->pay, &s->cappay, sizeof *s->pay))
		return -1;
	payee *p = &s->pay[s->npay];
	memset(p, 0, sizeof *p);
	if (!(p->name = trail_malloc(n + 1)))
		return -1;
	memcpy(p->name, k, n);
	p->name[n] = 0;
	p->len = (uint32_t)n;
	e->h = h;
	e->v = (uint32_t)++s->npay;
	s->names.n++;
	*out = (uint32_t)(s->npay - 1);
	return 0;
}

/* ---- policy ------------------------------------------------------------------------------ */

static int check_keys(const json_t *o, const char *const *ok, const char *where, trail_error *err)
{
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v) {
		const char *const *p = ok;
		while (*p && strcmp(*p, k))
			p++;
		if (!*p)
			return trail_error_set(err, TRAIL_EDATA, "policy: unknown member %s%s", where, k);
	}
	return TRAIL_OK;
}

static int get_int(const json_t *o, const char *k, int64_t def, int64_t min, int64_t max, const char *where,
		   int64_t *out, trail_error *err)
{
	json_t *v = json_object_get(o, k);
	if (!v) {
		*out = def;
		return TRAIL_OK;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		return trail_error_set(err, TRAIL_EDATA, "policy: %s%s is an integer from %lld to %lld", where, k,
				       (long long)min, (long long)max);
	*out = json_integer_value(v);
	return TRAIL_OK;
}

static int named_payee(trail_settle *s, const json_t *policy, const char *k, const char *def, uint32_t *out,
		       trail_error *err)
{
	json_t *v = json_object_get(policy, k);
	const char *name = v ? json_string_value(v) : def;
	if (!name || !*name)
		return trail_error_set(err, TRAIL_EDATA, "policy: %s is a non-empty string", k);
	return payee_get(s, name, strlen(name), 1, out) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory")
							 : TRAIL_OK;
}

int trail_settle_new(const json_t *policy, trail_settle **out, trail_error *err)
{
	static const char *const top[] = {"fee_per_1k_prompt", "fee_per_1k_completion", "split_bps", "platform",
					  "model_owner", "model_owners", "stakes", "penalty", NULL};
	static const char *const pen[] = {"max_rejected", "max_flagged", "max_poisoning", "min_influence",
					  "slash_bps", NULL};
	static const char *const roles[] = {"platform", "model", "stakers", "contributors", NULL};
	*out = NULL;
	if (!json_is_object(policy))
		return trail_error_set(err, TRAIL_EDATA, "policy: a JSON object");
	json_t *split = json_object_get(policy, "split_bps"), *pe = json_object_get(policy, "penalty");
	json_t *stakes = json_object_get(policy, "stakes"), *owners = json_object_get(policy, "model_owners");
	if (!json_is_object(split))
		return trail_error_set(err, TRAIL_EDATA, "policy: split_bps is an object");
	if ((pe && !json_is_object(pe)) || (stakes && !json_is_object(stakes)) || (owners && !json_is_object(owners)))
		return trail_error_set(err, TRAIL_EDATA, "policy: penalty, stakes and model_owners are objects");
	trail_settle *s = trail_calloc(1, sizeof *s);
	if (!s || !(s->policy = json_deep_copy(policy))) {
		trail_free(s);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	int64_t fp, fc, sum = 0;
	int rc;
	if ((rc = check_keys(policy, top, "", err)) || (rc = check_keys(split, roles, "split_bps.", err)) ||
	    (pe && (rc = check_keys(pe, pen, "penalty.", err))) ||
	    (rc = get_int(policy, "fee_per_1k_prompt", 0, 0, (int64_t)COUNT_MAX, "", &fp, err)) ||
	    (rc = get_int(policy, "fee_per_1k_completion", 0, 0, (int64_t)COUNT_MAX, "", &fc, err)))
		goto fail;
	s->fee_p = (uint64_t)fp;
	s->fee_c = (uint64_t)fc;
	for (int i = 0; i < 4; i++) {
		if ((rc = get_int(split, ROLE[i], 0, 0, 10000, "split_bps.", &s->bps[i], err)))
			goto fail;
		sum += s->bps[i];
	}
	if (sum != 10000) {
		rc = trail_error_set(err, TRAIL_EDATA, "policy: split_bps sums to %lld, not 10000", (long long)sum);
		goto fail;
	}
	if ((rc = get_int(pe, "max_rejected", -1, 0, INT64_MAX, "penalty.", &s->max_rejected, err)) ||
	    (rc = get_int(pe, "max_flagged", -1, 0, INT64_MAX, "penalty.", &s->max_flagged, err)) ||
	    (rc = get_int(pe, "max_poisoning", -1, 0, INT64_MAX, "penalty.", &s->max_poisoning, err)) ||
	    (rc = get_int(pe, "slash_bps", 0, 0, 10000, "penalty.", &s->slash_bps, err)))
		goto fail;
	json_t *mi = json_object_get(pe, "min_influence");
	if (mi) {
		/* read from its canonical text, as scores are */
		char nb[40];
		scan t = {nb, nb, NULL, 0};
		span v;
		int isint;
		if (!json_is_number(mi) || trail_jcs_number(json_number_value(mi), nb, sizeof nb) ||
		    (t.e = nb + strlen(nb), num_scan(&t, &v, &isint)) || t.p != t.e) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: penalty.min_influence is a number");
			goto fail;
		}
		s->min_influence = fixed_of(v.p, v.e);
		s->has_min_influence = 1;
	}
	if ((rc = named_payee(s, policy, "platform", "platform", &s->platform, err)) ||
	    (rc = named_payee(s, policy, "model_owner", "model", &s->model_owner, err)))
		goto fail;
	const char *k;
	json_t *v;
	json_object_foreach(stakes, k, v) {
		uint32_t i;
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)1 << 53) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: stakes.%s is an integer from 0 to 2^53-1", k);
			goto fail;
		}
		if (payee_get(s, k, strlen(k), 1, &i)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
		s->pay[i].stake = (uint64_t)json_integer_value(v);
	}
	size_t no = json_object_size(owners);
	if (no && (!(s->mnames = trail_calloc(no, sizeof *s->mnames)) ||
		   !(s->mowner = trail_calloc(no, sizeof *s->mowner)))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	json_object_foreach(owners, k, v) {
		uint32_t i;
		const char *who = json_string_value(v);
		if (!who || !*who) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: model_owners.%s is a non-empty string", k);
			goto fail;
		}
		if (payee_get(s, who, strlen(who), 1, &i) ||
		    ((s->models.n + 1) * 4 > s->models.cap * 3 && table_grow(&s->models)) ||
		    !(s->mnames[s->nmodels] = trail_strdup(k))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
		uint64_t h = hash(k, strlen(k));
		ent *e = table_slot(&s->models, s->mnames, k, strlen(k), h);
		s->mowner[s->nmodels++] = i;
		e->h = h;
		e->v = (uint32_t)s->nmodels;
		s->models.n++;
	}
	*out = s;
	return TRAIL_OK;
fail:
	trail_settle_free(s);
	return rc;
}

void trail_settle_free(trail_settle *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->npay; i++)
		trail_free(s->pay[i].name);
	for (size_t i = 0; i < s->nmodels; i++)
		trail_free(s->mnames[i]);
	trail_free(s->pay);
	trail_free(s->names.e);
	trail_free(s->models.e);
	trail_free(s->mnames);
	trail_free(s->mowner);
	trail_free(s->arena.p);
	trail_free(s->view.p);
	trail_free(s->contrib.v);
	trail_free(s->top.v);
	trail_free(s->members.v);
	trail_free(s->poison.v);
	trail_free(s->clusters.v);
	trail_free(s->cred.v);
	json_decref(s->policy);
	trail_free(s);
}

uint64_t trail_settle_records(const trail_settle *s)
{
	return s->records;
}

size_t trail_settle_payees(const trail_settle *s)
{
	return s->npay;
}

static const char *str_of(const trail_settle *s, const char *line, const sref *r)
{
	return r->arena ? s->arena.p + r->off : line + r->off;
}

static void add256(uint8_t acc[32], const uint8_t d[32])
{
	unsigned carry = 0;
	for (int i = 31; i >= 0; i--) {
		unsigned v = acc[i] + d[i] + carry;
		acc[i] = (uint8_t)v;
		carry = v >> 8;
	}
}

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static int name_cmp(const payee *a, const payee *b)
{
	size_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->name, b->name, n);
	return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* largest remainder first, then name */
static int by_rem(const void *x, const void *y, void *ctx)
{
	const credit *a = x, *b = y;
	const payee *pay = ctx;
	if (a->rem != b->rem)
		return a->rem > b->rem ? -1 : 1;
	return name_cmp(&pay[a->who], &pay[b->who]);
}

/* Credit w to payee who in the current record's list. */
static int credit_add(trail_settle *s, uint32_t who, u128 w)
{
	payee *p = &s->pay[who];
	if (p->mark == s->serial) {
		s->cred.v[p->slot].w += w;
		return 0;
	}
	p->mark = s->serial;
	p->slot = (uint32_t)s->cred.n;
	return VEC_PUSH(s, s->cred, ((credit){who, w, 0}));
}

/*
 * A record's credit: positive shares, merged by name. A cluster of copies
 * counts once: its members' credit (the first's own included) is replaced
 * by the largest of them, credited to the first; the record's credit is
 * then scaled back to the sum it had (at most 1e9) by largest remainder,
 * as it is when the shares add up to more than 1e9. Fills s->cred.
 */
static int record_credit(trail_settle *s, const char *line)
{
	uint32_t who;
	s->serial++;
	s->cred.n = 0;
	for (size_t i = 0; i < s->contrib.n; i++) {
		const scored *c = &s->contrib.v[i];
		if (c->v <= 0)
			continue;
		if (payee_get(s, str_of(s, line, &c->who), c->who.len, 1, &who) || credit_add(s, who, (u128)c->v))
			return -1;
	}
	u128 S0 = 0, S = 0;
	int collapsed = 0;
	for (size_t i = 0; i < s->cred.n; i++)
		S0 += s->cred.v[i].w;
	for (size_t i = 0; i < s->clusters.n; i++) {
		const cluster *cl = &s->clusters.v[i];
		uint32_t first;
		u128 best = 0;
		int any = 0;
		if (cl->first.null)
			continue;
		if (payee_get(s, str_of(s, line, &cl->first), cl->first.len, 1, &first))
			return -1;
		if (s->pay[first].mark == s->serial)
			best = s->cred.v[s->pay[first].slot].w;
		for (size_t j = cl->m0; j < cl->m1; j++) {
			const sref *m = &s->members.v[j];
			int r = payee_get(s, str_of(s, line, m), m->len, 0, &who);
			if (r < 0)
				return -1;
			if (r || who == first || s->pay[who].mark != s->serial || !s->cred.v[s->pay[who].slot].w)
				continue;
			credit *c = &s->cred.v[s->pay[who].slot];
			best = c->w > best ? c->w : best;
			c->w = 0;
			any = 1;
		}
		if (!any)
			continue;
		collapsed = 1;
		if (s->pay[first].mark == s->serial)
			s->cred.v[s->pay[first].slot].w = best;
		else if (credit_add(s, first, best))
			return -1;
	}
	for (size_t i = 0; i < s->cred.n; i++)
		S += s->cred.v[i].w;
	u128 target = S0 < (u128)NANO ? S0 : (u128)NANO;
	if (S && (S > (u128)NANO || (collapsed && S != target))) {
		u128 given = 0;
		for (size_t i = 0; i < s->cred.n; i++) {
			u128 num = s->cred.v[i].w * target;
			s->cred.v[i].w = num / S;
			s->cred.v[i].rem = num % S;
			given += s->cred.v[i].w;
		}
		qsort_r(s->cred.v, s->cred.n, sizeof *s->cred.v, by_rem, s->pay);
		for (size_t i = 0; given < target; i++, given++)
			s->cred.v[i].w++;
	}
	return 0;
}

/* ---- reading a line -------------------------------------------------------------------- */

/*
 * One pass over the line: every value is checked as JSON while the members
 * settlement uses are read into the per-line scratch. Whether the line is a
 * record or a flags line is known only at its end (the "type" member may
 * come last), so a member whose value has not the shape wanted is checked
 * again as plain JSON and its fault kept: an error if the line turns out to
 * use that member, nothing otherwise (a flags line ignores a record's
 * members, and the other way round).
 */
enum { K_TYPE, K_EVENT, K_USAGE, K_CONTRIB, K_CLUSTERS, K_TOP, K_MODEL, K_POISON, K_WHO, K_REJ, K_FLAG, NKEYS };
static const mkey LINE_KEYS[NKEYS] = {KEY("type"),  KEY("event"),     KEY("usage"),    KEY("contributors"),
				     KEY("clusters"), KEY("top"),    KEY("model"),    KEY("poisoning"),
				     KEY("contributor"), KEY("rejected"), KEY("flagged")};

/* What one line holds, read in one pass. */
typedef struct line {
	const char *p;           /* the line: string references point into it */
	unsigned seen;           /* members present (1 << K_...) */
	const char *fault[NKEYS]; /* a member's value not of the shape wanted */
	span type;
	sref event, model, who;
	uint64_t usage[2], count[3]; /* prompt, completion; rejected, flagged, poisoning */
	int poison_list;         /* "poisoning" was an array (a record's), else a count */
} rdline;

/* A string, or null when nullok, at s->p: a reference into the line or the arena. */
static int str_at(trail_settle *t, scan *s, const char *lp, int nullok, sref *out, const char *what)
{
	span raw;
	int esc;
	memset(out, 0, sizeof *out);
	if (nullok && s->e - s->p >= 4 && !memcmp(s->p, "null", 4)) {
		s->p += 4;
		out->null = 1;
		return 0;
	}
	if (s->p >= s->e || *s->p != '"')
		return bad(s, what);
	if (str_scan(s, &raw, &esc))
		return -1;
	if (raw.e == raw.p || raw.e - raw.p > (1 << 30))
		return bad(s, what);
	if (!esc) {
		out->off = (size_t)(raw.p - lp);
		out->len = (uint32_t)(raw.e - raw.p);
		return 0;
	}
	out->off = t->arena.n;
	out->arena = 1;
	decode(&raw, &t->arena);
	out->len = (uint32_t)(t->arena.n - out->off);
	return 0;
}

static int fixed_at(scan *s, int64_t *out)
{
	span n;
	int isint;
	if (s->p >= s->e || (*s->p != '-' && (unsigned)(unsigned char)*s->p - '0' >= 10) || num_scan(s, &n, &isint))
		return -1;
	*out = fixed_of(n.p, n.e);
	return 0;
}


static int rd_usage(scan *s, rdline *l, int depth)
{
	static const mkey k[] = {KEY("prompt_tokens"), KEY("completion_tokens")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	unsigned seen = 0;
	int n = 0, r, i;
	while ((r = members(s, &n, kb, &kp, &kn)) > 0) {
		if (key_of(s, k, 2, kp, kn, &seen, &i))
			return -1;
		if (i < 0 ? value_skip(s, depth + 1) : count_at(s, COUNT_MAX, &l->usage[i]))
			return bad(s, "prompt_tokens and completion_tokens are integers from 0 to 2^40");
	}
	return r < 0 ? -1 : seen == 3 ? 0 : bad(s, "{\"prompt_tokens\": N, \"completion_tokens\": N} was expected");
}

static int rd_event(trail_settle *t, scan *s, rdline *l, int depth)
{
	static const mkey k[] = {KEY("id")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	unsigned seen = 0;
	int n = 0, r, i;
	if (s->p < s->e && *s->p != '{')
		return str_at(t, s, l->p, 0, &l->event, "a string or an object with an id was expected");
	while ((r = members(s, &n, kb, &kp, &kn)) > 0)
		if (key_of(s, k, 1, kp, kn, &seen, &i) ||
		    (i < 0 ? value_skip(s, depth + 1) : str_at(t, s, l->p, 0, &l->event, "id is a non-empty string")))
			return -1;
	return r < 0 ? -1 : seen ? 0 : bad(s, "an event object has a string id");
}

/* [{"contributor": NAME, "share": N}...] (pairs_top: [{"contributor": NAME|null, "score": N|null}...]) */
static int rd_pairs(trail_settle *t, scan *s, const char *lp, int is_top, int depth)
{
	static const mkey kc[] = {KEY("contributor"), KEY("share")}, kt[] = {KEY("contributor"), KEY("score")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	int n = 0, r, q, i;
	while ((r = elements(s, &n)) > 0) {
		scored x = {{0, 0, 0, 1}, 0};
		unsigned seen = 0;
		int m = 0;
		while ((q = members(s, &m, kb, &kp, &kn)) > 0) {
			if (key_of(s, is_top ? kt : kc, 2, kp, kn, &seen, &i))
				return -1;
			if (i < 0) {
				if (value_skip(s, depth + 2))
					return -1;
			} else if (i == 0) {
				if (str_at(t, s, lp, is_top, &x.who, "contributor is a non-empty string"))
					return -1;
			} else if (is_top && s->e - s->p >= 4 && !memcmp(s->p, "null", 4)) {
				s->p += 4;
			} else if (fixed_at(s, &x.v)) {
				return bad(s, is_top ? "score is a number or null" : "share is a number");
			}
		}
		if (q < 0)
			return -1;
		if (!is_top && seen != 3)
			return bad(s, "an array of {\"contributor\", \"share\"} was expected");
		if (is_top ? VEC_PUSH(t, t->top, x) : VEC_PUSH(t, t->contrib, x))
			return s->oom = 1, -1;
	}
	return r;
}

/* [NAME...] into `to` */
static int rd_names(trail_settle *t, scan *s, const char *lp, int members_list)
{
	int n = 0, r;
	while ((r = elements(s, &n)) > 0) {
		sref who;
		if (str_at(t, s, lp, 0, &who, "an array of non-empty strings was expected"))
			return -1;
		if (members_list ? VEC_PUSH(t, t->members, who) : VEC_PUSH(t, t->poison, who))
			return s->oom = 1, -1;
	}
	return r;
}

/* [{"members": [NAME...], "first": NAME|null}...] */
static int rd_clusters(trail_settle *t, scan *s, const char *lp, int depth)
{
	static const mkey k[] = {KEY("members"), KEY("first")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	int n = 0, r, q, i;
	while ((r = elements(s, &n)) > 0) {
		cluster cl = {{0, 0, 0, 1}, t->members.n, 0};
		unsigned seen = 0;
		int m = 0;
		while ((q = members(s, &m, kb, &kp, &kn)) > 0) {
			if (key_of(s, k, 2, kp, kn, &seen, &i))
				return -1;
			if (i < 0 ? value_skip(s, depth + 2)
				  : i == 0 ? (cl.m0 = t->members.n, rd_names(t, s, lp, 1))
					   : str_at(t, s, lp, 1, &cl.first, "first is a string or null"))
				return -1;
			if (i == 0)
				cl.m1 = t->members.n;
		}
		if (q < 0)
			return -1;
		if (!(seen & 1))
			return bad(s, "an array of {\"members\": [...], \"first\"} was expected");
		if (VEC_PUSH(t, t->clusters, cl))
			return s->oom = 1, -1;
	}
	return r;
}

/* One member's value, read as the member wants. */
static int rd_member(trail_settle *t, scan *s, rdline *l, int k)
{
	const char *v = s->p;
	switch (k) {
	case K_TYPE:
		if (value_skip(s, 1))
			return -1;
		l->type = (span){v, s->p};
		return 0;
	case K_EVENT: return rd_event(t, s, l, 1);
	case K_USAGE: return rd_usage(s, l, 1);
	case K_CONTRIB: return rd_pairs(t, s, l->p, 0, 1);
	case K_TOP: return rd_pairs(t, s, l->p, 1, 1);
	case K_CLUSTERS: return rd_clusters(t, s, l->p, 1);
	case K_MODEL: return str_at(t, s, l->p, 1, &l->model, "a string or null was expected");
	case K_WHO: return str_at(t, s, l->p, 0, &l->who, "a non-empty string was expected");
	case K_REJ:
	case K_FLAG:
	case K_POISON:
		l->poison_list = k == K_POISON && s->p < s->e && *s->p == '[';
		if (l->poison_list)
			return rd_names(t, s, l->p, 0);
		return count_at(s, COUNT_MAX, &l->count[k == K_REJ ? 0 : k == K_FLAG ? 1 : 2])
			       ? bad(s, "an integer from 0 to 2^40 was expected")
			       : 0;
	}
	return value_skip(s, 1);
}

/* The whole line: 0, or -1 with s->why (or s->oom). */
static int rd_line(trail_settle *t, scan *s, rdline *l)
{
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	int n = 0, r, k;
	while ((r = members(s, &n, kb, &kp, &kn)) > 0) {
		const char *v = s->p;
		if (key_of(s, LINE_KEYS, NKEYS, kp, kn, &l->seen, &k))
			return -1;
		if (!rd_member(t, s, l, k))
			continue;
		if (s->oom || k < 0)
			return -1;
		/* not the shape wanted: is it JSON at all? */
		l->fault[k] = s->why ? s->why : "not of the type wanted";
		s->why = NULL;
		s->p = v;
		if (value_skip(s, 1))
			return -1;
	}
	if (r < 0)
		return -1;
	ws(s);
	return s->p == s->e ? 0 : bad(s, "text after the JSON object");
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

/*
 * The view a line adds to the inputs digest: what settlement uses from it,
 * in a compact binary form (attr-settle(1) defines it). Integers are
 * LEB128, signed ones zigzag; strings as view_str() writes them. The
 * event's id is left out: it cannot change the result.
 */
static void sb_uv(sbuf *b, uint64_t v)
{
	if (sb_reserve(b, 10))
		return;
	while (v >= 0x80) {
		b->p[b->n++] = (char)(v | 0x80);
		v >>= 7;
	}
	b->p[b->n++] = (char)v;
}

static void sb_sv(sbuf *b, int64_t v)
{
	sb_uv(b, (uint64_t)v << 1 ^ (uint64_t)(v >> 63));
}

/* a lowercase hex digit's value + 1; 0 for any other byte (a table: the digits are random, branches would miss) */
static const uint8_t HEX1[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
	['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/*
 * A string: LEB128 of twice its length, then its bytes; a content address
 * ("sha256:" and 64 lowercase hex digits) as 65 (2 * 32 + 1) and its 32
 * bytes; absent or null: 0.
 */
static void view_str(trail_settle *s, const char *lp, const sref *r)
{
	const char *p = str_of(s, lp, r);
	if (r->null) {
		sb_c(&s->view, 0);
		return;
	}
	if (r->len == 71 && same(p, "sha256:", 7) && !sb_reserve(&s->view, 33)) {
		char *o = s->view.p + s->view.n;
		unsigned missing = 0;
		o[0] = 65;
		for (int i = 0; i < 32; i++) {
			unsigned hi = HEX1[(unsigned char)p[7 + 2 * i]], lo = HEX1[(unsigned char)p[8 + 2 * i]];
			missing |= (hi == 0) | (lo == 0);
			o[1 + i] = (char)((hi - 1) << 4 | ((lo - 1) & 15));
		}
		if (!missing) {
			s->view.n += 33;
			return;
		}
	}
	sb_uv(&s->view, (uint64_t)r->len * 2);
	sb_put(&s->view, p, r->len);
}

/* personalisation of the inputs digest's BLAKE2b: the view's version */
static const unsigned char VIEW_PERSONAL[16] = "trail-settle-v2";

static void view_digest(trail_settle *s)
{
	uint8_t d[32];
	crypto_generichash_blake2b_salt_personal(d, sizeof d, (const unsigned char *)s->view.p, s->view.n, NULL, 0,
						 NULL, VIEW_PERSONAL);
	add256(s->inputs, d);
}

static int line_record(trail_settle *s, const rdline *l, trail_error *err)
{
	const char *lp = l->p;
	uint64_t pt = l->usage[0], ct = l->usage[1];
	u128 fee = (u128)pt * s->fee_p + (u128)ct * s->fee_c;
	if (s->fees + fee > FEES_MAX) {
		trail_error_set(err, TRAIL_ELIMIT, "the epoch's fees exceed 2^53-1 minor units");
		return -2;
	}

	s->view.n = 0;
	sb_c(&s->view, 'R');
	sb_uv(&s->view, pt);
	sb_uv(&s->view, ct);
	view_str(s, lp, &l->model);
	sb_uv(&s->view, s->contrib.n);
	for (size_t i = 0; i < s->contrib.n; i++) {
		view_str(s, lp, &s->contrib.v[i].who);
		sb_sv(&s->view, s->contrib.v[i].v);
	}
	sb_uv(&s->view, s->clusters.n);
	for (size_t i = 0; i < s->clusters.n; i++) {
		const cluster *cl = &s->clusters.v[i];
		view_str(s, lp, &cl->first);
		sb_uv(&s->view, cl->m1 - cl->m0);
		for (size_t j = cl->m0; j < cl->m1; j++)
			view_str(s, lp, &s->members.v[j]);
	}
	sb_uv(&s->view, s->poison.n);
	for (size_t i = 0; i < s->poison.n; i++)
		view_str(s, lp, &s->poison.v[i]);
	size_t nneg = 0;
	for (size_t i = 0; i < s->top.n; i++)
		nneg += !s->top.v[i].who.null && s->top.v[i].v < 0;
	sb_uv(&s->view, nneg);
	for (size_t i = 0; i < s->top.n; i++)
		if (!s->top.v[i].who.null && s->top.v[i].v < 0) {
			view_str(s, lp, &s->top.v[i].who);
			sb_sv(&s->view, s->top.v[i].v);
		}
	if (s->view.oom)
		return oom(err);

	/* from here on the record counts; only memory can fail */
	uint32_t who;
	if (record_credit(s, lp))
		return oom(err);
	for (size_t i = 0; i < s->cred.n; i++)
		s->pay[s->cred.v[i].who].acc += fee * s->cred.v[i].w;
	who = s->model_owner;
	if (l->model.len && s->nmodels) {
		const char *m = str_of(s, lp, &l->model);
		ent *e = table_slot(&s->models, s->mnames, m, l->model.len, hash(m, l->model.len));
		if (e->v)
			who = s->mowner[e->v - 1];
	}
	s->pay[who].mfee += fee;
	for (size_t i = 0; i < s->top.n; i++) {
		const scored *x = &s->top.v[i];
		if (x->who.null || x->v >= 0)
			continue;
		if (payee_get(s, str_of(s, lp, &x->who), x->who.len, 1, &who))
			return oom(err);
		s->pay[who].neg += x->v;
	}
	for (size_t i = 0; i < s->poison.n; i++) {
		if (payee_get(s, str_of(s, lp, &s->poison.v[i]), s->poison.v[i].len, 1, &who))
			return oom(err);
		s->pay[who].poisoning++;
	}
	view_digest(s);
	s->fees += fee;
	s->records++;
	return 0;
}

static int line_flags(trail_settle *s, const rdline *l, trail_error *err)
{
	uint32_t i;
	s->view.n = 0;
	sb_c(&s->view, 'F');
	view_str(s, l->p, &l->who);
	for (int k = 0; k < 3; k++)
		sb_uv(&s->view, l->count[k]);
	if (s->view.oom || payee_get(s, str_of(s, l->p, &l->who), l->who.len, 1, &i))
		return oom(err);
	payee *p = &s->pay[i];
	p->rejected = sat_add(p->rejected, l->count[0]);
	p->flagged = sat_add(p->flagged, l->count[1]);
	p->poisoning = sat_add(p->poisoning, l->count[2]);
	view_digest(s);
	s->flag_lines++;
	return 0;
}

/* The first fault among the members `use` that the line has, as "member: fault". */
static const char *faulty(const rdline *l, unsigned use, char *buf, size_t size)
{
	for (int k = 0; k < NKEYS; k++)
		if (use & l->seen & 1u << k && l->fault[k]) {
			snprintf(buf, size, "%s: %s", LINE_KEYS[k].k, l->fault[k]);
			return buf;
		}
	return NULL;
}

int trail_settle_line(trail_settle *s, const char *text, size_t len, trail_error *err)
{
	scan sc = {text, text + len, NULL, 0};
	rdline l;
	char why[160];
	const char *f;
	ws(&sc);
	if (sc.p == sc.e)
		return TRAIL_OK;
	s->arena.n = 0;
	s->arena.oom = s->view.oom = 0;
	s->contrib.n = s->top.n = s->members.n = s->poison.n = s->clusters.n = 0;
	if (*sc.p != '{')
		return trail_error_set(err, TRAIL_EDATA, "not a JSON object");
	memset(&l, 0, sizeof l);
	l.p = text;
	if (rd_line(s, &sc, &l))
		return sc.oom ? oom(err) : trail_error_set(err, TRAIL_EDATA, "%s", sc.why);
	if (s->arena.oom)
		return oom(err);
	int rc;
	if (l.seen & 1u << K_TYPE) {
		static const char flags[] = "\"flags\"";
		if (l.type.e - l.type.p != 7 || memcmp(l.type.p, flags, 7))
			return trail_error_set(err, TRAIL_EDATA,
					       "a line with a type other than \"flags\" is not settlement input");
		if (!(l.seen & 1u << K_WHO) || l.fault[K_WHO])
			return trail_error_set(err, TRAIL_EDATA, "a flags line names its contributor");
		if ((f = faulty(&l, 1u << K_REJ | 1u << K_FLAG | 1u << K_POISON, why, sizeof why)) || l.poison_list)
			return trail_error_set(err, TRAIL_EDATA, "%s", f ? f : "poisoning: a count was expected");
		rc = line_flags(s, &l, err);
	} else {
		const unsigned need = 1u << K_EVENT | 1u << K_USAGE | 1u << K_CONTRIB;
		if ((l.seen & need) != need)
			return trail_error_set(err, TRAIL_EDATA, "an attribution record has event, usage and contributors");
		if ((f = faulty(&l, need | 1u << K_CLUSTERS | 1u << K_TOP | 1u << K_MODEL | 1u << K_POISON, why,
				sizeof why)) ||
		    (l.seen & 1u << K_POISON && !l.poison_list))
			return trail_error_set(err, TRAIL_EDATA, "%s", f ? f : "poisoning: an array of contributors was expected");
		rc = line_record(s, &l, err);
	}
	if (rc == -2)
		return TRAIL_ELIMIT;
	return rc ? (err && err->code ? err->code : TRAIL_ENOMEM) : TRAIL_OK;
}

int trail_settle_add(trail_settle *s, const json_t *rec, trail_error *err)
{
	char *t = json_dumps(rec, JSON_COMPACT);
	if (!t)
		return trail_error_set(err, TRAIL_EDATA, "not a JSON value that can be written");
	int rc = trail_settle_line(s, t, strlen(t), err);
	free(t);
	return rc;
}

int trail_settle_read(trail_settle *s, FILE *in, const char *src, trail_error *err)
{
	size_t cap = (size_t)1 << 20, have = 0;
	char *buf = trail_malloc(cap);
	long lineno = 0;
	int rc = TRAIL_OK;
	if (!buf)
		return oom(err);
	for (;;) {
		size_t got = fread(buf + have, 1, cap - have, in), start = 0;
		have += got;
		char *nl;
		while (!rc && (nl = memchr(buf + start, '\n', have - start))) {
			lineno++;
			if ((rc = trail_settle_line(s, buf + start, (size_t)(nl - buf) - start, err)))
				break;
			start = (size_t)(nl - buf) + 1;
		}
		if (rc)
			break;
		memmove(buf, buf + start, have - start);
		have -= start;
		if (got == 0 || have == cap) {
			if (ferror(in)) {
				rc = trail_error_at(err, TRAIL_EIO, src, lineno + 1, "read error");
				goto out;
			}
			if (got == 0) {
				if (have) { /* a last line without its newline */
					lineno++;
					rc = trail_settle_line(s, buf, have, err);
				}
				break;
			}
			if (cap >= LINE_LIMIT) {
				trail_free(buf);
				return trail_error_at(err, TRAIL_ELIMIT, src, lineno + 1, "a line longer than 256 MiB");
			}
			char *nb = trail_realloc(buf, cap * 2);
			if (!nb) {
				rc = oom(err);
				goto out;
			}
			buf = nb;
			cap *= 2;
		}
	}
	if (rc && err) {
		char msg[sizeof err->msg];
		memcpy(msg, err->msg, sizeof msg);
		trail_error_at(err, rc, src, lineno, "%s", msg);
	}
out:
	trail_free(buf);
	return rc;
}

/* ---- reading with helper threads --------------------------------------------------------- */

/*
 * The input is cut at newlines into blocks of about BLOCK bytes, handed in
 * order to `threads` workers, each with its own handle made from the same
 * policy. The per-payee sums are exact integers, so adding the workers'
 * handles into s afterwards gives exactly the sums one thread would have:
 * the result does not depend on the number of threads. An error is
 * reported for the first bad line in input order (every block before it
 * was dispatched, so read, before the reader stopped).
 */
#define BLOCK ((size_t)4 << 20)

typedef struct block {
	char *p;
	size_t n, cap;
	uint64_t seq;
	long lines; /* lines read in this block: all of them, or up to the bad one */
	int rc;
	trail_error err;
	struct block *next;
} block;

typedef struct rdpool {
	pthread_mutex_t mu;
	pthread_cond_t full_cv, free_cv;
	block *full, *full_tail, *free;
	int done, failed;
	uint64_t fail_seq;
	block *blocks;
	size_t nblocks;
	long *lines; /* lines of block seq, once read */
	size_t caplines;
} rdpool;

typedef struct worker {
	rdpool *pl;
	trail_settle *s;
	pthread_t th;
} worker;

static void block_lines(trail_settle *s, block *b)
{
	size_t start = 0;
	char *nl;
	b->lines = 0;
	b->rc = TRAIL_OK;
	while (start < b->n) {
		nl = memchr(b->p + start, '\n', b->n - start);
		size_t end = nl ? (size_t)(nl - b->p) : b->n;
		b->lines++;
		if ((b->rc = trail_settle_line(s, b->p + start, end - start, &b->err)))
			return;
		start = end + 1;
	}
}

static void *work(void *arg)
{
	worker *w = arg;
	rdpool *pl = w->pl;
	pthread_mutex_lock(&pl->mu);
	for (;;) {
		while (!pl->full && !pl->done)
			pthread_cond_wait(&pl->full_cv, &pl->mu);
		block *b = pl->full;
		if (!b)
			break;
		if (!(pl->full = b->next))
			pl->full_tail = NULL;
		pthread_mutex_unlock(&pl->mu);
		block_lines(w->s, b);
		pthread_mutex_lock(&pl->mu);
		pl->lines[b->seq] = b->lines;
		if (b->rc && (!pl->failed || b->seq < pl->fail_seq)) {
			pl->failed = 1;
			pl->fail_seq = b->seq;
		}
		if (b->rc) { /* kept aside: its error is reported */
			b->next = NULL;
		} else {
			b->next = pl->free;
			pl->free = b;
		}
		pthread_cond_signal(&pl->free_cv);
	}
	pthread_mutex_unlock(&pl->mu);
	return NULL;
}

/* Add t's sums into s: payees by name. */
static int merge(trail_settle *s, const trail_settle *t)
{
	for (size_t i = 0; i < t->npay; i++) {
		const payee *q = &t->pay[i];
		uint32_t k;
		if (payee_get(s, q->name, q->len, 1, &k))
			return -1;
		payee *p = &s->pay[k];
		p->acc += q->acc;
		p->mfee += q->mfee;
		p->neg += q->neg;
		p->rejected = sat_add(p->rejected, q->rejected);
		p->flagged = sat_add(p->flagged, q->flagged);
		p->poisoning = sat_add(p->poisoning, q->poisoning);
	}
	s->fees += t->fees;
	add256(s->inputs, t->inputs);
	s->records += t->records;
	s->flag_lines += t->flag_lines;
	return 0;
}

int trail_settle_read_threads(trail_settle *s, FILE *in, const char *src, int threads, trail_error *err)
{
	if (threads <= 1)
		return trail_settle_read(s, in, src, err);
	if (threads > 64)
		threads = 64;
	rdpool pl = {.nblocks = (size_t)threads * 2 + 2};
	worker w[64];
	int started = 0, rc = TRAIL_OK;
	uint64_t seq = 0;
	char *carry = NULL; /* the start of a line cut by the end of a block */
	size_t ncarry = 0, capcarry = 0;
	block *failed = NULL;
	pthread_mutex_init(&pl.mu, NULL);
	pthread_cond_init(&pl.full_cv, NULL);
	pthread_cond_init(&pl.free_cv, NULL);
	if (!(pl.blocks = trail_calloc(pl.nblocks, sizeof *pl.blocks))) {
		rc = oom(err);
		goto out;
	}
	for (size_t i = 0; i < pl.nblocks; i++) {
		if (!(pl.blocks[i].p = trail_malloc(pl.blocks[i].cap = BLOCK))) {
			rc = oom(err);
			goto out;
		}
		pl.blocks[i].next = pl.free;
		pl.free = &pl.blocks[i];
	}
	for (; started < threads; started++) {
		w[started].pl = &pl;
		if (started == 0) {
			w[0].s = s;
		} else if ((rc = trail_settle_new(s->policy, &w[started].s, err))) {
			goto out;
		}
		if (pthread_create(&w[started].th, NULL, work, &w[started])) {
			if (started)
				trail_settle_free(w[started].s);
			rc = trail_error_set(err, TRAIL_ENOMEM, "cannot start a thread");
			goto out;
		}
	}
	for (int eof = 0; !eof;) {
		pthread_mutex_lock(&pl.mu);
		while (!pl.free && !pl.failed)
			pthread_cond_wait(&pl.free_cv, &pl.mu);
		block *b = pl.failed ? NULL : pl.free;
		if (b)
			pl.free = b->next;
		pthread_mutex_unlock(&pl.mu);
		if (!b)
			break;
		/* the block: the carried part line, then as much input as fits, cut after its last newline */
		char *nl = NULL;
		b->n = 0;
		for (;;) {
			if (b->cap < ncarry + BLOCK / 2) {
				size_t nc = b->cap;
				while (nc < ncarry + BLOCK / 2)
					nc *= 2;
				char *np = nc > LINE_LIMIT + BLOCK ? NULL : trail_realloc(b->p, nc);
				if (!np) {
					rc = nc > LINE_LIMIT + BLOCK
						     ? trail_error_set(err, TRAIL_ELIMIT, "%s: a line longer than 256 MiB", src)
						     : oom(err);
					break;
				}
				b->p = np, b->cap = nc;
			}
			if (ncarry)
				memcpy(b->p, carry, ncarry);
			b->n = ncarry;
			size_t got = fread(b->p + b->n, 1, b->cap - b->n, in);
			b->n += got;
			if (got == 0) {
				if (ferror(in))
					rc = trail_error_set(err, TRAIL_EIO, "%s: read error", src);
				eof = 1;
				ncarry = 0;
				break;
			}
			nl = memrchr(b->p + ncarry, '\n', got);
			if (nl)
				break;
			/* no newline yet: the whole block is one line's start; carry it and read on */
			if (ncarry + got > capcarry) {
				char *nc2 = trail_realloc(carry, (ncarry + got) * 2);
				if (!nc2) {
					rc = oom(err);
					break;
				}
				carry = nc2, capcarry = (ncarry + got) * 2;
			}
			memcpy(carry, b->p, ncarry + got);
			ncarry += got;
		}
		if (rc) {
			pthread_mutex_lock(&pl.mu);
			b->next = pl.free, pl.free = b;
			pthread_mutex_unlock(&pl.mu);
			break;
		}
		if (nl) {
			size_t tail = b->n - (size_t)(nl - b->p) - 1;
			if (tail > capcarry) {
				char *nc2 = trail_realloc(carry, tail * 2);
				if (!nc2) {
					rc = oom(err);
					break;
				}
				carry = nc2, capcarry = tail * 2;
			}
			if (tail)
				memcpy(carry, nl + 1, tail);
			ncarry = tail;
			b->n -= tail + 1; /* the last newline too: block_lines reads up to the end */
		}
		b->seq = seq++;
		b->next = NULL;
		pthread_mutex_lock(&pl.mu);
		if (b->seq >= pl.caplines) {
			long *nl2 = trail_realloc(pl.lines, (pl.caplines * 2 + 64) * sizeof *nl2);
			if (!nl2) {
				b->next = pl.free, pl.free = b;
				pthread_mutex_unlock(&pl.mu);
				rc = oom(err);
				break;
			}
			pl.lines = nl2, pl.caplines = pl.caplines * 2 + 64;
		}
		if (pl.full_tail)
			pl.full_tail->next = b;
		else
			pl.full = b;
		pl.full_tail = b;
		pthread_cond_signal(&pl.full_cv);
		pthread_mutex_unlock(&pl.mu);
	}
out:
	pthread_mutex_lock(&pl.mu);
	pl.done = 1;
	pthread_cond_broadcast(&pl.full_cv);
	pthread_mutex_unlock(&pl.mu);
	for (int i = 0; i < started; i++)
		pthread_join(w[i].th, NULL);
	/* the first bad line in input order: every block before it was read whole */
	if (!rc && pl.failed) {
		long before = 0;
		for (uint64_t i = 0; i < pl.fail_seq; i++)
			before += pl.lines[i];
		for (size_t i = 0; i < pl.nblocks; i++)
			if (pl.blocks[i].rc && pl.blocks[i].seq == pl.fail_seq)
				failed = &pl.blocks[i];
		rc = trail_error_at(err, failed->rc, src, before + failed->lines, "%s", failed->err.msg);
	}
	for (int i = 1; i < started; i++) {
		if (!rc && merge(s, w[i].s))
			rc = oom(err);
		trail_settle_free(w[i].s);
	}
	if (!rc && s->fees > FEES_MAX)
		rc = trail_error_set(err, TRAIL_ELIMIT, "the epoch's fees exceed 2^53-1 minor units");
	for (size_t i = 0; pl.blocks && i < pl.nblocks; i++)
		trail_free(pl.blocks[i].p);
	trail_free(pl.blocks);
	trail_free(pl.lines);
	trail_free(carry);
	pthread_mutex_destroy(&pl.mu);
	pthread_cond_destroy(&pl.full_cv);
	pthread_cond_destroy(&pl.free_cv);
	return rc;
}

/* ---- the result ---------------------------------------------------------------------- */

/* q = a * b / d, r = a * b % d, for d < 2^127 and a quotient below 2^128. */
static void muldiv(uint64_t a, u128 b, u128 d, u128 *q, u128 *r)
{
	if (b >> 64 == 0) {
		u128 p = (u128)a * (uint64_t)b;
		*q = p / d;
		*r = p % d;
		return;
	}
	/* a * b = hi * 2^128 + lo, then long division one bit at a time */
	u128 lo = (u128)a * (uint64_t)b, mid = (u128)a * (uint64_t)(b >> 64);
	uint64_t hi = (uint64_t)(mid >> 64);
	u128 low = lo + (mid << 64);
	hi += low < lo;
	u128 rem = 0, quo = 0;
	for (int i = 191; i >= 0; i--) {
		unsigned bit = i >= 128 ? (unsigned)(hi >> (i - 128)) & 1 : (unsigned)(low >> i) & 1;
		rem = rem << 1 | bit;
		quo <<= 1;
		if (rem >= d) {
			rem -= d;
			quo |= 1;
		}
	}
	*q = quo;
	*r = rem;
}

typedef struct part {
	uint32_t who;
	u128 w, rem;
	int64_t amount;
} part;

static int part_by_rem(const void *x, const void *y, void *ctx)
{
	const part *a = *(part *const *)x, *b = *(part *const *)y;
	const payee *pay = ctx;
	if (a->rem != b->rem)
		return a->rem > b->rem ? -1 : 1;
	return name_cmp(&pay[a->who], &pay[b->who]);
}

/*
 * Largest remainder: P over the parts, part i's quota P * w_i / D (sum of
 * w_i <= D). Each gets the floor of its quota, then one unit each goes to
 * the largest remainders (equal remainders: the smaller name first) until
 * floor(P * sum w / D) is given out. Returns that total; -1 out of memory.
 */
static int64_t hamilton(const trail_settle *s, part *v, size_t n, int64_t P, u128 D)
{
	u128 W = 0, T, r, given = 0;
	for (size_t i = 0; i < n; i++)
		W += v[i].w;
	if (!n || !D)
		return 0;
	muldiv((uint64_t)P, W, D, &T, &r);
	for (size_t i = 0; i < n; i++) {
		u128 q;
		muldiv((uint64_t)P, v[i].w, D, &q, &v[i].rem);
		v[i].amount = (int64_t)q;
		given += q;
	}
	if (given < T) {
		part **o = trail_malloc(n * sizeof *o);
		if (!o)
			return -1;
		for (size_t i = 0; i < n; i++)
			o[i] = &v[i];
		qsort_r(o, n, sizeof *o, part_by_rem, s->pay);
		for (size_t i = 0; given < T; i++, given++)
			o[i]->amount++;
		trail_free(o);
	}
	return (int64_t)T;
}

static int idx_by_name(const void *x, const void *y, void *ctx)
{
	const payee *pay = ctx;
	return name_cmp(&pay[*(const uint32_t *)x], &pay[*(const uint32_t *)y]);
}

/* The penalty rules p breaks, as an array of names (empty: none). */
static json_t *reasons(const trail_settle *s, const payee *p)
{
	json_t *a = json_array();
	if (s->max_rejected >= 0 && p->rejected > (uint64_t)s->max_rejected)
		json_array_append_new(a, json_string("rejected"));
	if (s->max_flagged >= 0 && p->flagged > (uint64_t)s->max_flagged)
		json_array_append_new(a, json_string("flagged"));
	if (s->max_poisoning >= 0 && p->poisoning > (uint64_t)s->max_poisoning)
		json_array_append_new(a, json_string("poisoning"));
	if (s->has_min_influence && p->neg < (i128)s->min_influence)
		json_array_append_new(a, json_string("negative-influence"));
	return a;
}

static int payout(json_t *out, const char *to, const char *role, int64_t amount, int64_t *paid)
{
	if (amount <= 0)
		return 0;
	*paid += amount;
	return json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:I}", "type", "payout", "to", to, "role", role,
						     "amount", (json_int_t)amount));
}

/* One role's pool over the payees whose weight `w` is set, in name order; penalised ones withheld. */
static int64_t pay_role(trail_settle *s, const uint32_t *order, part *v, int role, int64_t pool, u128 D,
			json_t *pay, json_t *withheld, int64_t *paid, int64_t *held, int *rc)
{
	size_t n = 0;
	for (size_t i = 0; i < s->npay; i++) {
		const payee *p = &s->pay[order[i]];
		u128 w = role == R_MODEL ? p->mfee : role == R_STAKERS ? (u128)p->stake : p->acc;
		if (w)
			v[n++] = (part){order[i], w, 0, 0};
	}
	int64_t T = hamilton(s, v, n, pool, D);
	if (T < 0) {
		*rc = TRAIL_ENOMEM;
		return 0;
	}
	for (size_t i = 0; i < n && !*rc; i++) {
		const payee *p = &s->pay[v[i].who];
		json_t *why = role == R_MODEL ? json_array() : reasons(s, p);
		if (!why) {
			*rc = TRAIL_ENOMEM;
		} else if (json_array_size(why)) {
			if (v[i].amount > 0 &&
			    json_array_append_new(withheld, json_pack("{s:s, s:s, s:I, s:O}", "to", p->name, "role",
								      ROLE_OUT[role], "amount", (json_int_t)v[i].amount,
								      "reasons", why)))
				*rc = TRAIL_ENOMEM;
			*held += v[i].amount;
		} else if (payout(pay, p->name, ROLE_OUT[role], v[i].amount, paid)) {
			*rc = TRAIL_ENOMEM;
		}
		json_decref(why);
	}
	return T;
}

int trail_settle_result(trail_settle *s, const char *epoch, json_t **out, trail_error *err)
{
	*out = NULL;
	int64_t F = (int64_t)(s->fees / 1000), pool[4], given = 0, rem[4];
	/* roles: basis points, largest remainder, equal remainders in role order */
	for (int i = 0; i < 4; i++) {
		pool[i] = (int64_t)((u128)F * (u128)s->bps[i] / 10000);
		rem[i] = (int64_t)((u128)F * (u128)s->bps[i] % 10000);
		given += pool[i];
	}
	while (given < F) {
		int best = 0;
		for (int i = 1; i < 4; i++)
			if (rem[i] > rem[best])
				best = i;
		pool[best]++;
		rem[best] = -1;
		given++;
	}

	uint32_t *order = trail_malloc(s->npay * sizeof *order);
	part *v = trail_malloc(s->npay * sizeof *v);
	json_t *pay = json_array(), *withheld = json_array(), *slashed = json_array(), *res = NULL;
	int64_t paid = 0, held = 0, unattributed = 0, unstaked = 0, slash_total = 0;
	int rc = 0;
	if (!order || !v || !pay || !withheld || !slashed) {
		rc = TRAIL_ENOMEM;
		goto done;
	}
	for (size_t i = 0; i < s->npay; i++)
		order[i] = (uint32_t)i;
	qsort_r(order, s->npay, sizeof *order, idx_by_name, s->pay);

	if (payout(pay, s->pay[s->platform].name, "platform", pool[R_PLATFORM], &paid))
		rc = TRAIL_ENOMEM;
	int64_t tm = pay_role(s, order, v, R_MODEL, pool[R_MODEL], s->fees, pay, withheld, &paid, &held, &rc);
	u128 stake = 0;
	for (size_t i = 0; i < s->npay; i++)
		stake += s->pay[i].stake;
	int64_t ts = pay_role(s, order, v, R_STAKERS, pool[R_STAKERS], stake, pay, withheld, &paid, &held, &rc);
	unstaked = pool[R_STAKERS] - ts;
	int64_t tc = pay_role(s, order, v, R_CONTRIB, pool[R_CONTRIB], s->fees * (u128)NANO, pay, withheld, &paid,
			      &held, &rc);
	unattributed = pool[R_CONTRIB] - tc;
	for (size_t i = 0; i < s->npay && !rc; i++) {
		const payee *p = &s->pay[order[i]];
		json_t *why = p->stake ? reasons(s, p) : NULL;
		int64_t amt = (int64_t)((u128)p->stake * (u128)s->slash_bps / 10000);
		if (why && json_array_size(why) && amt > 0) {
			slash_total += amt;
			if (json_array_append_new(slashed, json_pack("{s:s, s:I, s:I, s:O}", "to", p->name, "stake",
								     (json_int_t)p->stake, "amount", (json_int_t)amt,
								     "reasons", why)))
				rc = TRAIL_ENOMEM;
		}
		json_decref(why);
	}
	if (rc)
		goto done;

	/* conservation, checked from the lines themselves */
	int64_t sum = 0, neg = 0;
	size_t i;
	json_t *l;
	json_array_foreach(pay, i, l) {
		int64_t a = json_integer_value(json_object_get(l, "amount"));
		sum += a;
		neg |= a <= 0;
	}
	int64_t retained = F - paid;
	if (pool[0] + pool[1] + pool[2] + pool[3] != F || sum != paid || neg || retained < 0 ||
	    (F && tm != pool[R_MODEL]) || ts > pool[R_STAKERS] || tc > pool[R_CONTRIB] ||
	    retained != unattributed + unstaked + held) {
		rc = trail_error_set(err, TRAIL_EINTERNAL,
				     "conservation failed: fees %lld, paid %lld (lines %lld), retained %lld = "
				     "unattributed %lld + unstaked %lld + withheld %lld",
				     (long long)F, (long long)paid, (long long)sum, (long long)retained,
				     (long long)unattributed, (long long)unstaked, (long long)held);
		goto done;
	}
	char in[80] = "blake2b:", pd[72], od[72], dg[72];
	trail_hex(s->inputs, 32, in + 8);
	if ((rc = trail_jcs_digest(s->policy, pd, err)) || (rc = trail_jcs_digest(pay, od, err)))
		goto done;
	json_t *ep = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O, s:O, s:s, s:s, s:s}", "type",
			       "epoch", "epoch", epoch, "fees", (json_int_t)F, "paid", (json_int_t)paid, "retained",
			       (json_int_t)retained, "records", (json_int_t)s->records, "flags",
			       (json_int_t)s->flag_lines, "unattributed", (json_int_t)unattributed, "unstaked",
			       (json_int_t)unstaked, "withheld", withheld, "slashed", slashed, "inputs_digest", in,
			       "policy_digest", pd, "payouts_digest", od);
	/* the epoch's digest covers inputs, policy and outputs */
	if (!ep || (rc = trail_jcs_digest(ep, dg, err)) || json_object_set_new(ep, "digest", json_string(dg)) ||
	    json_array_append_new(pay, ep)) {
		rc = rc ? rc : TRAIL_ENOMEM;
		goto done;
	}
	res = pay;
	pay = NULL;
done:
	if (rc == TRAIL_ENOMEM)
		oom(err);
	trail_free(order);
	trail_free(v);
	json_decref(pay);
	json_decref(withheld);
	json_decref(slashed);
	*out = res;
	return rc;
}

/* ---- for people ------------------------------------------------------------------------- */

/* A verifier key "name+hex+base64" shown as "name+hex"; other names whole. */
static int shown(const char *to)
{
	const char *a = strchr(to, '+'), *b = a ? strchr(a + 1, '+') : NULL;
	return b && b - a == 9 ? (int)(b - to) : (int)strlen(to);
}

static void join(FILE *f, const json_t *a)
{
	size_t i;
	json_t *x;
	json_array_foreach(a, i, x)
		fprintf(f, "%s%s", i ? ", " : "", json_string_value(x));
}

int trail_settle_print_text(const json_t *res, FILE *f)
{
	size_t i;
	json_t *l, *ep = NULL;
	fprintf(f, "%-12s %-32s %12s\n", "ROLE", "PAYEE", "AMOUNT");
	json_array_foreach(res, i, l) {
		const char *t = json_string_value(json_object_get(l, "type")), *to;
		if (t && !strcmp(t, "epoch"))
			ep = l;
		if (!t || strcmp(t, "payout"))
			continue;
		to = json_string_value(json_object_get(l, "to"));
		fprintf(f, "%-12s %-32.*s %12lld\n", json_string_value(json_object_get(l, "role")), shown(to), to,
			(long long)json_integer_value(json_object_get(l, "amount")));
	}
	if (!ep)
		return TRAIL_EDATA;
	json_array_foreach(json_object_get(ep, "withheld"), i, l) {
		const char *to = json_string_value(json_object_get(l, "to"));
		fprintf(f, "%-12s %-32.*s %12lld  as %s, for: ", "withheld", shown(to), to,
			(long long)json_integer_value(json_object_get(l, "amount")),
			json_string_value(json_object_get(l, "role")));
		join(f, json_object_get(l, "reasons"));
		fputc('\n', f);
	}
	json_array_foreach(json_object_get(ep, "slashed"), i, l) {
		const char *to = json_string_value(json_object_get(l, "to"));
		fprintf(f, "%-12s %-32.*s %12lld  of a stake of %lld, for: ", "slashed", shown(to), to,
			(long long)json_integer_value(json_object_get(l, "amount")),
			(long long)json_integer_value(json_object_get(l, "stake")));
		join(f, json_object_get(l, "reasons"));
		fputc('\n', f);
	}
	long long held = 0;
	json_array_foreach(json_object_get(ep, "withheld"), i, l)
		held += json_integer_value(json_object_get(l, "amount"));
	fprintf(f, "epoch %s: fees %lld = paid %lld + retained %lld (unattributed %lld, unstaked %lld, withheld %lld); "
		   "%lld records\n",
		json_string_value(json_object_get(ep, "epoch")), (long long)json_integer_value(json_object_get(ep, "fees")),
		(long long)json_integer_value(json_object_get(ep, "paid")),
		(long long)json_integer_value(json_object_get(ep, "retained")),
		(long long)json_integer_value(json_object_get(ep, "unattributed")),
		(long long)json_integer_value(json_object_get(ep, "unstaked")), held,
		(long long)json_integer_value(json_object_get(ep, "records")));
	return ferror(f) ? TRAIL_EIO : TRAIL_OK;
}

/* ---- the ledger ------------------------------------------------------------------------- */

/*
 * The settlement of `epoch` recorded in the ledger: *index, or
 * UINT64_MAX when there is none. Entries are canonical JSON, so a plain
 * byte search finds the candidates before any is parsed.
 */
static int find_settlement(trail_ledger *l, const char *epoch, uint64_t *index, json_t **entry, trail_error *err)
{
	static const char type[] = "\"type\":\"settlement\"";
	sbuf pat = {0};
	int rc = TRAIL_OK;
	*index = UINT64_MAX;
	*entry = NULL;
	sb_put(&pat, "\"epoch\":", 8);
	sb_jstr(&pat, epoch, strlen(epoch));
	if (pat.oom)
		return oom(err);
	for (uint64_t i = 0, n = trail_ledger_size(l); i < n && !rc && !*entry; i++) {
		char *b;
		size_t len;
		json_t *j;
		if ((rc = trail_ledger_get(l, i, &b, &len, err)))
			break;
		if (memmem(b, len, type, sizeof type - 1) && memmem(b, len, pat.p, pat.n) &&
		    trail_json_parse(b, len, "log", &j, NULL) == TRAIL_OK) {
			/* the byte search is only a filter: "type" and "epoch" must be the entry's own members */
			const char *e = json_string_value(json_object_get(j, "epoch"));
			const char *t = json_string_value(json_object_get(j, "type"));
			if (e && t && !strcmp(t, "settlement") && !strcmp(e, epoch)) {
				*entry = j;
				*index = i;
			} else {
				json_decref(j);
			}
		}
		trail_free(b);
	}
	trail_free(pat.p);
	return rc;
}

int trail_settle_record(trail_settle *s, trail_store *st, const char *epoch, const trail_signer *key,
			json_t **out, int *recorded, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *res = NULL, *e = NULL, *prev = NULL;
	uint64_t at;
	int rc;
	*out = NULL;
	*recorded = 0;
	if ((rc = trail_settle_result(s, epoch, &res, err)))
		return rc;
	json_t *ep = json_array_get(res, json_array_size(res) - 1);
	const char *in = json_string_value(json_object_get(ep, "inputs_digest"));
	const char *pd = json_string_value(json_object_get(ep, "policy_digest"));
	/* the lock is held from the search to the commit: one settlement per epoch */
	if ((rc = trail_ledger_open(st, TRAIL_LEDGER_WRITE | TRAIL_LEDGER_NOWAIT, &l, err)) ||
	    (rc = find_settlement(l, epoch, &at, &prev, err)))
		goto out;
	if (prev) {
		const char *ri = json_string_value(json_object_get(prev, "inputs_digest"));
		const char *rp = json_string_value(json_object_get(prev, "policy_digest"));
		const char *ro = json_string_value(json_object_get(prev, "result_object"));
		void *ob;
		size_t ol;
		json_t *old;
		if (!ri || !rp || !ro || strcmp(ri, in) || strcmp(rp, pd)) {
			rc = trail_error_set(err, TRAIL_EVERIFY, "epoch %s was settled at entry %llu with other %s", epoch,
					     (unsigned long long)at, ri && !strcmp(ri, in) ? "policy" : "inputs");
			goto out;
		}
		if ((rc = trail_store_get(st, ro, &ob, &ol, err)))
			goto out;
		rc = trail_json_parse(ob, ol, ro, &old, err);
		trail_free(ob);
		if (rc)
			goto out;
		json_decref(res);
		res = old;
		*recorded = 1;
		goto out;
	}
	char *text, od[72];
	size_t tl;
	if ((rc = trail_jcs(res, &text, &tl, err)))
		goto out;
	rc = trail_store_put(st, text, tl, od, err);
	trail_free(text);
	if (rc || (!key && (rc = trail_store_operator(st, &key, err))))
		goto out;
	e = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O, s:O, s:O, s:O}", "type", "settlement", "epoch", epoch,
		      "inputs_digest", in, "policy_digest", pd, "result_object", od, "fees", json_object_get(ep, "fees"),
		      "paid", json_object_get(ep, "paid"), "retained", json_object_get(ep, "retained"), "digest",
		      json_object_get(ep, "digest"));
	if (!e) {
		rc = oom(err);
		goto out;
	}
	if (!(rc = trail_json_sign(e, key, err)) && !(rc = trail_ledger_append(l, e, &at, err)))
		rc = trail_ledger_commit(l, err);
out:
	json_decref(e);
	json_decref(prev);
	trail_ledger_free(l);
	if (rc)
		json_decref(res);
	else
		*out = res;
	return rc;
}
