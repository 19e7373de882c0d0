/*
 * PII: e-mail addresses, phone numbers, public IPv4/IPv6 addresses, PEM
 * private keys and API tokens of well-known shapes. Each detector scans
 * the text on its own; the matches are then merged in text order, an
 * earlier (or, at the same start, longer) match winning an overlap.
 *
 * The detectors aim at few false positives on ordinary prose: dates,
 * times, version strings, MAC addresses, private and documentation
 * address ranges and bare digit runs are not reported.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data_int.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

static const char *const rule_names[TRAIL_PII_KINDS] = {
	"pii-email", "pii-phone", "pii-ip", "pii-private-key", "pii-api-token"};
static const char *const placeholders[TRAIL_PII_KINDS] = {"[EMAIL]", "[PHONE]", "[IP]",
							  "[PRIVATE KEY]", "[API TOKEN]"};

const char *trail_pii_rule(int kind)
{
	return kind >= 0 && kind < TRAIL_PII_KINDS ? rule_names[kind] : "?";
}

const char *trail_pii_placeholder(int kind)
{
	return kind >= 0 && kind < TRAIL_PII_KINDS ? placeholders[kind] : "";
}

static inline int is_digit(int c)
{
	return c >= '0' && c <= '9';
}
static inline int is_alpha(int c)
{
	return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
static inline int is_alnum(int c)
{
	return is_digit(c) || is_alpha(c);
}
static inline int is_hex(int c)
{
	return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

struct out {
	trail_pii_match *m;
	size_t n, cap;
};

static int push(struct out *o, int kind, size_t s, size_t e)
{
	if (o->n == o->cap) {
		size_t nc = o->cap ? o->cap * 2 : 16;
		trail_pii_match *nm = trail_realloc(o->m, nc * sizeof *nm);
		if (!nm)
			return -1;
		o->m = nm;
		o->cap = nc;
	}
	o->m[o->n++] = (trail_pii_match){kind, s, e};
	return 0;
}

/* ---- e-mail ------------------------------------------------------------------ */

static int local_char(int c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

static int scan_email(const unsigned char *s, size_t len, struct out *o)
{
	for (const unsigned char *at = memchr(s, '@', len); at;
	     at = memchr(at + 1, '@', len - (size_t)(at + 1 - s))) {
		size_t a = (size_t)(at - s), st = a;
		while (st > 0 && a - st < 64 && local_char(s[st - 1]))
			st--;
		if (st > 0 && (local_char(s[st - 1]) || s[st - 1] == '@'))
			continue; /* local part too long, or a@b@c */
		while (st < a && s[st] == '.')
			st++;
		if (st == a || s[a - 1] == '.')
			continue;
		/* Domain: labels of [A-Za-z0-9-] separated by single dots. */
		size_t i = a + 1, labels = 0, last = i, lastlen = 0, end = 0;
		for (;;) {
			size_t ls = i;
			while (i < len && (is_alnum(s[i]) || s[i] == '-') && i - ls < 63)
				i++;
			if (i == ls || s[ls] == '-' || s[i - 1] == '-')
				break;
			labels++;
			last = ls;
			lastlen = i - ls;
			end = i;
			if (i + 1 < len && s[i] == '.' && is_alnum(s[i + 1]))
				i++;
			else
				break;
		}
		if (labels < 2 || lastlen < 2)
			continue;
		int alpha_tld = 1;
		for (size_t k = 0; k < lastlen; k++)
			alpha_tld &= is_alpha(s[last + k]);
		if (!alpha_tld || (end < len && (is_alnum(s[end]) || s[end] == '_' || s[end] == '-')))
			continue;
		if (push(o, TRAIL_PII_EMAIL, st, end))
			return -1;
	}
	return 0;
}

/* ---- phone numbers --------------------------------------------------------------- */

/*
 * Accepted shapes (separators: one space, '-' or '.'; parentheses around
 * an area code):
 *   +CC ...           8 to 15 digits after '+', first digit not 0
 *   NANP              [1 ]NXX NXX XXXX, (NXX) NXX-XXXX
 *   national trunk 0  10 or 11 digits in 2 to 5 groups, first group 0X..
 *                     (not 00), separators all the same and not '.'
 */
/* The phone scanner at s[i]: the next position it looks at, or -1 (out of memory). */
static long phone_at(const unsigned char *s, size_t len, size_t i, struct out *o)
{
	do {
		unsigned char c = s[i];
		if (!(is_digit(c) || c == '+' || c == '('))
			continue;
		if (i > 0) {
			unsigned char p = s[i - 1];
			if (is_alnum(p) || p == '_' || p == '.' || p == '-' || p == '/' || p == ':' ||
			    p == '+' || p == '(' || p == '$' || p == '#' || p >= 0x80 ||
			    (p == ',' && i > 1 && is_digit(s[i - 2]))) {
				while (i + 1 < len && (is_digit(s[i + 1]) || is_alpha(s[i + 1])))
					i++;
				continue;
			}
		}
		size_t j = i;
		int plus = 0, paren = 0, ngroups = 0, digits = 0, bad = 0;
		int glen[16];
		size_t gst[16];
		char seps[16];
		int nseps = 0;
		if (s[j] == '+') {
			plus = 1;
			j++;
			if (j >= len || !is_digit(s[j]) || s[j] == '0')
				continue;
		}
		for (;;) {
			int open = 0;
			if (j < len && s[j] == '(') {
				if (paren || ngroups > (plus ? 1 : 0))
					break;
				open = 1;
				j++;
			}
			size_t g = j;
			while (j < len && is_digit(s[j]))
				j++;
			if (j == g || ngroups == 16) {
				bad = 1;
				break;
			}
			gst[ngroups] = g;
			glen[ngroups++] = (int)(j - g);
			digits += (int)(j - g);
			if (open) {
				if (j >= len || s[j] != ')') {
					bad = 1;
					break;
				}
				paren = 1;
				j++;
				seps[nseps++] = ')';
				if (j < len && (s[j] == ' ' || s[j] == '-') && j + 1 < len &&
				    is_digit(s[j + 1]))
					j++;
				if (j < len && is_digit(s[j]))
					continue;
				break;
			}
			if (j + 1 < len && (s[j] == ' ' || s[j] == '-' || s[j] == '.') &&
			    (is_digit(s[j + 1]) || (s[j] == ' ' && s[j + 1] == '('))) {
				if (nseps < 16)
					seps[nseps++] = (char)s[j];
				j++;
				continue;
			}
			break;
		}
		size_t end = j;
		/* Right boundary: no letter, digit, or another number glued on. */
		if (bad || (end < len && (is_alnum(s[end]) || s[end] == '_' || s[end] == '%' ||
					  s[end] == '/' || s[end] == ':' || s[end] >= 0x80 ||
					  ((s[end] == '.' || s[end] == '-' || s[end] == ',') &&
					   end + 1 < len && is_digit(s[end + 1]))))) {
			i = end > i ? end - 1 : i;
			continue;
		}
		int ok = 0;
		if (plus) {
			ok = digits >= 8 && digits <= 15;
		} else if (s[gst[0]] == '0') {
			int same = 1;
			for (int k = 1; k < nseps; k++)
				same &= seps[k] == seps[0] || seps[k] == ')' || seps[0] == ')';
			ok = (digits == 10 || digits == 11) && ngroups >= 2 && ngroups <= 5 &&
			     glen[0] >= 2 && s[gst[0] + 1] != '0' && same &&
			     (!nseps || seps[0] != '.');
		} else {
			int k = ngroups == 4 && glen[0] == 1 && s[gst[0]] == '1';
			ok = ngroups - k == 3 && glen[k] == 3 && glen[k + 1] == 3 &&
			     glen[k + 2] == 4 && s[gst[k]] >= '2' && s[gst[k + 1]] >= '2';
			/* Separators used consistently, except after "(NXX)". */
			for (int q = 1; ok && q < nseps; q++)
				ok &= seps[q] == seps[0] || seps[q - 1] == ')';
		}
		if (ok && push(o, TRAIL_PII_PHONE, i, end))
			return -1;
		i = end > i ? end - 1 : i;
	} while (0);
	return (long)i + 1;
}

/* ---- IP addresses ------------------------------------------------------------------- */

static int v4_public(const unsigned char a[4])
{
	unsigned x = (unsigned)a[0] << 24 | (unsigned)a[1] << 16 | (unsigned)a[2] << 8 | a[3];
	static const struct {
		unsigned net, bits;
	} special[] = {
		{0x00000000, 8},  {0x0A000000, 8},  {0x64400000, 10}, {0x7F000000, 8},
		{0xA9FE0000, 16}, {0xAC100000, 12}, {0xC0000000, 24}, {0xC0000200, 24},
		{0xC0586300, 24}, {0xC0A80000, 16}, {0xC6120000, 15}, {0xC6336400, 24},
		{0xCB007100, 24}, {0xE0000000, 4},  {0xF0000000, 4},
	};
	for (size_t i = 0; i < sizeof special / sizeof *special; i++)
		if ((x >> (32 - special[i].bits)) == (special[i].net >> (32 - special[i].bits)))
			return 0;
	return 1;
}

/* Words before a dotted number that make it a version, not an address. */
static int version_context(const unsigned char *s, size_t i)
{
	static const char *const words[] = {"version", "ver", "v", "release", "rel", "rev",
					    "revision", "build", "kernel", "linux", "firmware",
					    "update", "patch", "python", "java", "node", "go",
					    "chapter", "section", "sec", "figure", "fig", "table",
					    "step", "clause", "appendix", "item", "part", "rule"};
	size_t e = i;
	while (e > 0 && (s[e - 1] == ' ' || s[e - 1] == '\t'))
		e--;
	size_t b = e;
	while (b > 0 && is_alpha(s[b - 1]))
		b--;
	if (b == e || e - b > 9)
		return 0;
	for (size_t k = 0; k < sizeof words / sizeof *words; k++) {
		size_t n = strlen(words[k]);
		if (n != e - b)
			continue;
		size_t q = 0;
		while (q < n && (s[b + q] | 0x20) == words[k][q])
			q++;
		if (q == n)
			return 1;
	}
	return 0;
}

/* The IPv4 scanner at s[i]: the next position it looks at, or -1 (out of memory). */
static long ipv4_at(const unsigned char *s, size_t len, size_t i, struct out *o)
{
	do {
		if (!is_digit(s[i]))
			continue;
		if (i > 0 && (is_alnum(s[i - 1]) || s[i - 1] == '_' || s[i - 1] == '.' ||
			      s[i - 1] == '-' || s[i - 1] >= 0x80)) {
			while (i + 1 < len && (is_digit(s[i + 1]) || s[i + 1] == '.'))
				i++;
			continue;
		}
		unsigned char a[4];
		size_t j = i;
		int k = 0;
		for (; k < 4; k++) {
			size_t st = j;
			unsigned v = 0;
			while (j < len && is_digit(s[j]) && j - st < 4)
				v = v * 10 + (unsigned)(s[j++] - '0');
			if (j == st || j - st > 3 || v > 255 || (j - st > 1 && s[st] == '0'))
				break;
			a[k] = (unsigned char)v;
			if (k < 3) {
				if (j >= len || s[j] != '.')
					break;
				j++;
			}
		}
		size_t end = j;
		int boundary = end >= len || !(is_alnum(s[end]) || s[end] == '_' || s[end] >= 0x80 ||
					       ((s[end] == '.' || s[end] == '-') && end + 1 < len &&
						is_alnum(s[end + 1])));
		if (k == 4 && boundary && v4_public(a) && !version_context(s, i) &&
		    push(o, TRAIL_PII_IP, i, end))
			return -1;
		while (i + 1 < len && (is_digit(s[i + 1]) || s[i + 1] == '.'))
			i++;
	} while (0);
	return (long)i + 1;
}

static int v6_public(const unsigned char a[16])
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	if (!memcmp(a, mapped, 12))
		return v4_public(a + 12);
	if ((a[0] & 0xE0) != 0x20) /* global unicast is 2000::/3 */
		return 0;
	if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) /* documentation */
		return 0;
	if (a[0] == 0x20 && a[1] == 0x01 && a[2] < 0x02) /* IETF protocol assignments */
		return 0;
	return 1;
}

static int scan_ipv6(const unsigned char *s, size_t len, struct out *o)
{
	size_t next = 0;
	const unsigned char *c;
	while (next < len && (c = memchr(s + next, ':', len - next))) {
		/* Widen around the colon to the whole candidate; resume after it. */
		size_t st = (size_t)(c - s), e = st;
		while (st > 0 && (is_hex(s[st - 1]) || s[st - 1] == ':'))
			st--;
		while (e < len && (is_hex(s[e]) || s[e] == ':' || s[e] == '.'))
			e++;
		next = e;
		if ((st > 0 && (is_alnum(s[st - 1]) || s[st - 1] == '_' || s[st - 1] == '.')) ||
		    (e < len && (is_alnum(s[e]) || s[e] == '_')))
			continue;
		/* Sentence punctuation after the address. */
		while (e > st && (s[e - 1] == '.' || (s[e - 1] == ':' && !(e - st >= 2 && s[e - 2] == ':'))))
			e--;
		int colons = 0;
		for (size_t k = st; k < e; k++)
			colons += s[k] == ':';
		char buf[64];
		unsigned char a[16];
		if (colons >= 2 && e - st < sizeof buf) {
			memcpy(buf, s + st, e - st);
			buf[e - st] = 0;
			if (inet_pton(AF_INET6, buf, a) == 1 && v6_public(a) &&
			    push(o, TRAIL_PII_IP, st, e))
				return -1;
		}
	}
	return 0;
}

/* ---- private keys -------------------------------------------------------------------- */

static int scan_pem(const unsigned char *s, size_t len, struct out *o)
{
	static const char begin[] = "-----BEGIN ";
	const unsigned char *p = s, *end = s + len;
	while ((p = memmem(p, (size_t)(end - p), begin, sizeof begin - 1))) {
		const unsigned char *lab = p + sizeof begin - 1, *q = lab;
		while (q < end && q - lab < 64 && (is_alnum(*q) || *q == ' '))
			q++;
		size_t ll = (size_t)(q - lab);
		if (q + 5 > end || memcmp(q, "-----", 5) ||
		    !((ll >= 11 && !memcmp(q - 11, "PRIVATE KEY", 11)) ||
		      (ll >= 21 && !memcmp(q - 21, "PGP PRIVATE KEY BLOCK", 21)))) {
			p = lab;
			continue;
		}
		/* Up to the matching END line, or the end of the text. */
		char endline[96];
		snprintf(endline, sizeof endline, "-----END %.*s-----", (int)ll, (const char *)lab);
		const unsigned char *e = memmem(q, (size_t)(end - q), endline, strlen(endline));
		size_t stop = e ? (size_t)(e - s) + strlen(endline) : len;
		if (push(o, TRAIL_PII_PRIVATE_KEY, (size_t)(p - s), stop))
			return -1;
		p = s + stop;
	}
	return 0;
}

/* ---- API tokens --------------------------------------------------------------------- */

static size_t run_of(const unsigned char *s, size_t len, size_t i, const char *extra)
{
	size_t j = i;
	while (j < len && (is_alnum(s[j]) || (s[j] && strchr(extra, s[j]))))
		j++;
	return j - i;
}

/*
 * Length of the token at s+i, or 0. The shapes, by first byte, each tried
 * in this order: AWS access key ids and Google API keys ('A'); GitHub
 * tokens ('g'); Slack tokens ('x'); Stripe secret and restricted keys
 * ('s', 'r'); OpenAI-style secret keys ('s').
 */
static size_t token_at(const unsigned char *s, size_t len, size_t i)
{
	const unsigned char *t = s + i;
	size_t rest = len - i, n;
	switch (t[0]) {
	case 'A': {
		/* AWS access key ids. */
		static const char aws[][4] = {"AKIA", "ASIA", "AGPA", "AIDA", "AROA",
					      "AIPA", "ANPA", "ANVA", "ABIA", "ACCA"};
		for (size_t k = 0; rest >= 20 && k < sizeof aws / sizeof *aws; k++)
			if (!memcmp(t, aws[k], 4)) {
				size_t q = 4;
				while (q < 20 && (is_digit(t[q]) || (t[q] >= 'A' && t[q] <= 'Z')))
					q++;
				if (q == 20 && !(rest > 20 && is_alnum(t[20])))
					return 20;
			}
		/* Google API keys. */
		if (rest >= 39 && !memcmp(t, "AIza", 4) && run_of(s, len, i + 4, "_-") == 35)
			return 39;
		return 0;
	}
	case 'g':
		/* GitHub tokens. */
		if (rest >= 40 && t[1] == 'h' && t[2] && strchr("pousr", t[2]) && t[3] == '_' &&
		    run_of(s, len, i + 4, "") == 36)
			return 40;
		if (rest > 11 && !memcmp(t, "github_pat_", 11) && (n = run_of(s, len, i + 11, "_")) >= 22)
			return 11 + n;
		return 0;
	case 'x':
		/* Slack tokens. */
		if (rest > 5 && !memcmp(t, "xox", 3) && t[3] && strchr("abposr", t[3]) && t[4] == '-' &&
		    (n = run_of(s, len, i + 5, "-")) >= 10) {
			size_t dig = 0;
			for (size_t q = 5; q < 5 + n; q++)
				dig += is_digit(t[q]);
			if (dig >= 4)
				return 5 + n;
		}
		return 0;
	case 's':
	case 'r':
		if (rest < 2 || t[1] != 'k')
			return 0;
		/* Stripe secret and restricted keys. */
		if (rest > 8 && t[2] == '_' && (!memcmp(t + 3, "live_", 5) || !memcmp(t + 3, "test_", 5)) &&
		    (n = run_of(s, len, i + 8, "")) >= 16)
			return 8 + n;
		/* OpenAI-style secret keys: sk-, sk-proj-, sk-ant-...: 20+ characters of mixed class. */
		if (rest > 3 && t[0] == 's' && t[2] == '-' && (n = run_of(s, len, i + 3, "_-")) >= 20) {
			size_t dig = 0, up = 0, lo = 0;
			for (size_t q = 3; q < 3 + n; q++) {
				dig += is_digit(t[q]);
				up += t[q] >= 'A' && t[q] <= 'Z';
				lo += t[q] >= 'a' && t[q] <= 'z';
			}
			if (dig >= 2 && up >= 2 && lo >= 2)
				return 3 + n;
		}
		return 0;
	}
	return 0;
}

/* The token scanner at s[i]: the next position it looks at, or -1 (out of memory). */
static long token_step(const unsigned char *s, size_t len, size_t i, struct out *o)
{
	do {
		unsigned char c = s[i];
		if (!(c == 'A' || c == 'g' || c == 'x' || c == 's' || c == 'r'))
			continue;
		if (i > 0 && (is_alnum(s[i - 1]) || s[i - 1] == '_' || s[i - 1] == '-'))
			continue;
		size_t n = token_at(s, len, i);
		if (!n)
			continue;
		size_t e = i + n;
		if (e < len && (is_alnum(s[e]) || s[e] == '_'))
			continue;
		if (push(o, TRAIL_PII_API_TOKEN, i, e))
			return -1;
		i = e - 1;
	} while (0);
	return (long)i + 1;
}

/* ---- the byte-driven scanners ------------------------------------------------------ */

typedef long step_fn(const unsigned char *s, size_t len, size_t i, struct out *o);

/*
 * The reference: one scanner over every byte, as each was written. Every
 * `continue` of a scanner's loop body moves it to the position it returns.
 */
static int scan_each(const unsigned char *s, size_t len, step_fn *step, struct out *o)
{
	for (size_t i = 0; i < len;) {
		long n = step(s, len, i, o);
		if (n < 0)
			return -1;
		i = (size_t)n;
	}
	return 0;
}

static inline int token_first(int c)
{
	return c == 'A' || c == 'g' || c == 'x' || c == 's' || c == 'r';
}

/*
 * The phone, IPv4 and token scanners in one pass. Each looks only at its
 * own first bytes (phones: digits, '+', '('; IPv4: digits; tokens: A g x s
 * r not after a letter, digit, '_' or '-', where the token scanner stops
 * at once) and skips ahead on its own, so each keeps a cursor, the position
 * its loop would look at next, and runs at the bytes of a 64-byte mask at
 * or past it: the same steps as three loops over every byte.
 */
static int scan_bytes(const unsigned char *s, size_t len, unsigned kinds, struct out *o)
{
	int ph = (kinds >> TRAIL_PII_PHONE) & 1, v4 = (kinds >> TRAIL_PII_IP) & 1;
	int tok = (kinds >> TRAIL_PII_API_TOKEN) & 1;
	size_t ph_next = 0, v4_next = 0, tk_next = 0;
	uint64_t carry = 0; /* the byte before the block is alphanumeric, '_' or '-' */
	for (size_t base = 0; base < len; base += 64) {
		size_t cnt = len - base < 64 ? len - base : 64, k = 0;
		uint64_t dig = 0, pp = 0, first = 0, wordy = 0;
#ifdef __SSE2__
		const __m128i c0 = _mm_set1_epi8('0'), c9 = _mm_set1_epi8(9), c25 = _mm_set1_epi8(25);
		const __m128i c20 = _mm_set1_epi8(0x20), ca = _mm_set1_epi8('a');
		for (; k + 16 <= cnt; k += 16) {
			__m128i x = _mm_loadu_si128((const __m128i *)(s + base + k));
			__m128i td = _mm_sub_epi8(x, c0), tl = _mm_sub_epi8(_mm_or_si128(x, c20), ca);
			__m128i d = _mm_cmpeq_epi8(_mm_min_epu8(td, c9), td);
			__m128i l = _mm_cmpeq_epi8(_mm_min_epu8(tl, c25), tl);
			__m128i w = _mm_or_si128(_mm_or_si128(d, l),
						 _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('_')),
							      _mm_cmpeq_epi8(x, _mm_set1_epi8('-'))));
			__m128i p = _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('+')),
						 _mm_cmpeq_epi8(x, _mm_set1_epi8('(')));
			__m128i f = _mm_or_si128(
				_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('A')),
					     _mm_cmpeq_epi8(x, _mm_set1_epi8('g'))),
				_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('x')),
					     _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('s')),
							  _mm_cmpeq_epi8(x, _mm_set1_epi8('r')))));
			dig |= (uint64_t)(unsigned)_mm_movemask_epi8(d) << k;
			pp |= (uint64_t)(unsigned)_mm_movemask_epi8(p) << k;
			first |= (uint64_t)(unsigned)_mm_movemask_epi8(f) << k;
			wordy |= (uint64_t)(unsigned)_mm_movemask_epi8(w) << k;
		}
#endif
		for (; k < cnt; k++) {
			int c = s[base + k];
			dig |= (uint64_t)is_digit(c) << k;
			pp |= (uint64_t)(c == '+' || c == '(') << k;
			first |= (uint64_t)token_first(c) << k;
			wordy |= (uint64_t)(is_alnum(c) || c == '_' || c == '-') << k;
		}
		uint64_t m = (ph | v4 ? dig : 0) | (ph ? pp : 0) |
			     (tok ? first & ~(wordy << 1 | carry) : 0);
		carry = wordy >> 63;
		for (; m; m &= m - 1) {
			size_t i = base + (size_t)__builtin_ctzll(m);
			long n;
			if (is_digit(s[i]) && v4 && i >= v4_next) {
				if ((n = ipv4_at(s, len, i, o)) < 0)
					return -1;
				v4_next = (size_t)n;
			}
			if (!token_first(s[i]) && ph && i >= ph_next) {
				if ((n = phone_at(s, len, i, o)) < 0)
					return -1;
				ph_next = (size_t)n;
			}
			if (token_first(s[i]) && tok && i >= tk_next) {
				if ((n = token_step(s, len, i, o)) < 0)
					return -1;
				tk_next = (size_t)n;
			}
		}
	}
	return 0;
}

/* ---- merging -------------------------------------------------------------------------- */

static int cmp_match(const void *a, const void *b)
{
	const trail_pii_match *x = a, *y = b;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x->end != y->end)
		return x->end > y->end ? -1 : 1;
	return x->kind - y->kind;
}

/* reference: each byte-driven scanner on its own (for the tests) */
static long scan_all(const char *text, size_t len, unsigned kinds, int reference, struct out *o)
{
	const unsigned char *s = (const unsigned char *)text;
	if (((kinds >> TRAIL_PII_PRIVATE_KEY) & 1) && scan_pem(s, len, o))
		return -TRAIL_ENOMEM;
	if (((kinds >> TRAIL_PII_EMAIL) & 1) && scan_email(s, len, o))
		return -TRAIL_ENOMEM;
	if (((kinds >> TRAIL_PII_IP) & 1) && scan_ipv6(s, len, o))
		return -TRAIL_ENOMEM;
	if (!reference && scan_bytes(s, len, kinds, o))
		return -TRAIL_ENOMEM;
	if (reference && ((((kinds >> TRAIL_PII_API_TOKEN) & 1) && scan_each(s, len, token_step, o)) ||
			  (((kinds >> TRAIL_PII_IP) & 1) && scan_each(s, len, ipv4_at, o)) ||
			  (((kinds >> TRAIL_PII_PHONE) & 1) && scan_each(s, len, phone_at, o))))
		return -TRAIL_ENOMEM;
	if (o->n > 1)
		qsort(o->m, o->n, sizeof *o->m, cmp_match);
	size_t k = 0;
	for (size_t i = 0; i < o->n; i++)
		if (!k || o->m[i].start >= o->m[k - 1].end)
			o->m[k++] = o->m[i];
	o->n = k;
	return (long)k;
}

static long pii_scan(const char *s, size_t len, unsigned kinds, int reference,
		     trail_pii_match *m, size_t max)
{
	struct out o = {0};
	long n = scan_all(s, len, kinds, reference, &o);
	if (n > 0 && max)
		memcpy(m, o.m, (size_t)((size_t)n < max ? (size_t)n : max) * sizeof *m);
	trail_free(o.m);
	return n;
}

long trail_pii_scan(const char *s, size_t len, unsigned kinds, trail_pii_match *m, size_t max)
{
	return pii_scan(s, len, kinds, 0, m, max);
}

long trail_pii_scan_reference(const char *s, size_t len, unsigned kinds, trail_pii_match *m,
			      size_t max)
{
	return pii_scan(s, len, kinds, 1, m, max);
}

int trail_pii_redact(const char *s, size_t len, unsigned kinds, char **out, size_t *outlen,
		     size_t counts[TRAIL_PII_KINDS])
{
	struct out o = {0};
	*out = NULL;
	for (int k = 0; k < TRAIL_PII_KINDS; k++)
		counts[k] = 0;
	long n = scan_all(s, len, kinds, 0, &o);
	if (n < 0) {
		trail_free(o.m);
		return TRAIL_ENOMEM;
	}
	size_t size = len + 1;
	for (long i = 0; i < n; i++)
		size += strlen(placeholders[o.m[i].kind]);
	char *r = trail_malloc(size), *w = r;
	if (!r) {
		trail_free(o.m);
		return TRAIL_ENOMEM;
	}
	size_t pos = 0;
	for (long i = 0; i < n; i++) {
		memcpy(w, s + pos, o.m[i].start - pos);
		w += o.m[i].start - pos;
		size_t pl = strlen(placeholders[o.m[i].kind]);
		memcpy(w, placeholders[o.m[i].kind], pl);
		w += pl;
		pos = o.m[i].end;
		counts[o.m[i].kind]++;
	}
	memcpy(w, s + pos, len - pos);
	w += len - pos;
	*w = 0;
	*out = r;
	if (outlen)
		*outlen = (size_t)(w - r);
	trail_free(o.m);
	return TRAIL_OK;
}
