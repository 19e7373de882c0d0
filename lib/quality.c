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

#include <xxhash.h>

#include "validate_int.h"

struct word {
	uint32_t off, len; /* bytes in the text */
	uint32_t cps;      /* code points */
	uint32_t boff, blen; /* bare form, bytes */
	uint64_t h;        /* hash of the word as written */
	int alpha;         /* has a letter (ASCII or non-ASCII) */
};

struct span {
	uint32_t off, len;
};

struct doc {
	const char *s;
	size_t len;
	size_t cps; /* code points in the whole text */
	struct word *w;
	size_t nw;
	struct span *lines; /* every line, blank ones too */
	size_t nl;
	/* hash set scratch */
	uint64_t *keys;
	uint32_t *vals;
	size_t cap;
};

static inline int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static inline int is_punct(unsigned char c)
{
	return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
	       (c >= '{' && c <= '~');
}

static size_t cp_count(const char *s, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)s[i] & 0xC0) != 0x80;
	return c;
}

static void strip(const char *s, size_t *off, size_t *len)
{
	while (*len && is_space((unsigned char)s[*off]))
		(*off)++, (*len)--;
	while (*len && is_space((unsigned char)s[*off + *len - 1]))
		(*len)--;
}

static int ends_with(const char *s, size_t len, const char *suf)
{
	size_t n = strlen(suf);
	return len >= n && !memcmp(s + len - n, suf, n);
}

static int contains_ci(const char *s, size_t len, const char *needle)
{
	size_t n = strlen(needle);
	for (size_t i = 0; i + n <= len; i++) {
		size_t j = 0;
		while (j < n && ((unsigned char)s[i + j] | 0x20) == (unsigned char)needle[j])
			j++;
		if (j == n)
			return 1;
	}
	return 0;
}

static int doc_init(struct doc *d, const char *s, size_t len)
{
	memset(d, 0, sizeof *d);
	d->s = s;
	d->len = len;
	d->cps = cp_count(s, len);
	size_t maxw = len / 2 + 1, nl = 1;
	for (size_t i = 0; i < len; i++)
		nl += s[i] == '\n';
	d->w = trail_malloc(maxw * sizeof *d->w);
	d->lines = trail_malloc(nl * sizeof *d->lines);
	if (!d->w || !d->lines)
		return -1;
	size_t st = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || s[i] == '\n') {
			size_t e = i;
			if (e > st && s[e - 1] == '\r')
				e--;
			d->lines[d->nl].off = (uint32_t)st;
			d->lines[d->nl++].len = (uint32_t)(e - st);
			st = i + 1;
		}
	}
	size_t i = 0;
	while (i < len) {
		while (i < len && is_space((unsigned char)s[i]))
			i++;
		if (i == len)
			break;
		size_t b = i;
		int alpha = 0;
		while (i < len && !is_space((unsigned char)s[i])) {
			unsigned char c = (unsigned char)s[i];
			alpha |= ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c >= 0x80;
			i++;
		}
		struct word *w = &d->w[d->nw++];
		w->off = (uint32_t)b;
		w->len = (uint32_t)(i - b);
		w->cps = (uint32_t)cp_count(s + b, i - b);
		w->alpha = alpha;
		w->h = XXH3_64bits(s + b, i - b);
		size_t bo = b, bl = i - b;
		while (bl && is_punct((unsigned char)s[bo]))
			bo++, bl--;
		while (bl && is_punct((unsigned char)s[bo + bl - 1]))
			bl--;
		w->boff = (uint32_t)bo;
		w->blen = (uint32_t)bl;
	}
	return 0;
}

static void doc_free(struct doc *d)
{
	trail_free(d->w);
	trail_free(d->lines);
	trail_free(d->keys);
	trail_free(d->vals);
}

/* The hash set: 64-bit keys (0 reserved) with a 32-bit count, for n items. */
static int set_reset(struct doc *d, size_t n)
{
	size_t cap = 16;
	while (cap < n * 2)
		cap *= 2;
	if (cap > d->cap) {
		trail_free(d->keys);
		trail_free(d->vals);
		d->keys = trail_malloc(cap * sizeof *d->keys);
		d->vals = trail_malloc(cap * sizeof *d->vals);
		d->cap = d->keys && d->vals ? cap : 0;
		if (!d->cap)
			return -1;
	}
	memset(d->keys, 0, d->cap * sizeof *d->keys);
	return 0;
}

/* Add key; returns its count after adding. */
static uint32_t set_add(struct doc *d, uint64_t key)
{
	key |= 1; /* never 0 */
	size_t m = d->cap - 1, s = (size_t)(key * 0x9E3779B97F4A7C15ull >> 20) & m;
	while (d->keys[s] && d->keys[s] != key)
		s = (s + 1) & m;
	if (!d->keys[s]) {
		d->keys[s] = key;
		d->vals[s] = 0;
	}
	return ++d->vals[s];
}

static int set_has(struct doc *d, uint64_t key)
{
	key |= 1;
	size_t m = d->cap - 1, s = (size_t)(key * 0x9E3779B97F4A7C15ull >> 20) & m;
	while (d->keys[s] && d->keys[s] != key)
		s = (s + 1) & m;
	return d->keys[s] != 0;
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

static int word_in(const struct doc *d, const struct word *w, const trail_words *list)
{
	for (size_t i = 0; i < list->n; i++) {
		const char *x = list->v[i];
		size_t n = strlen(x);
		if (n != w->blen)
			continue;
		size_t j = 0;
		while (j < n && (unsigned char)(((unsigned char)d->s[w->boff + j] >= 'A' &&
						 (unsigned char)d->s[w->boff + j] <= 'Z')
							? d->s[w->boff + j] + 32
							: d->s[w->boff + j]) == (unsigned char)x[j])
			j++;
		if (j == n)
			return 1;
	}
	return 0;
}

/* ---- Gopher quality ---------------------------------------------------------- */

static int gopher_quality(const trail_policy *p, struct doc *d, json_t *R)
{
	size_t nonsym = 0, cps = 0, alpha = 0, hashes = 0, ellipses = 0;
	for (size_t i = 0; i < d->nw; i++) {
		const struct word *w = &d->w[i];
		if (w->blen) {
			nonsym++;
			cps += w->cps;
		}
		alpha += w->alpha;
	}
	for (size_t i = 0; i < d->len; i++) {
		char c = d->s[i];
		if (c == '#')
			hashes++;
		else if (c == '.' && i + 2 < d->len && d->s[i + 1] == '.' && d->s[i + 2] == '.')
			ellipses++, i += 2;
		else if (c == '\xe2' && i + 2 < d->len && d->s[i + 1] == '\x80' &&
			 d->s[i + 2] == '\xa6')
			ellipses++, i += 2;
	}
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
		/* Distinct stop words present. */
		size_t n = p->gq_stop_words.n, found = 0;
		unsigned char seen[64] = {0};
		for (size_t i = 0; i < d->nw && found < n; i++) {
			const struct word *w = &d->w[i];
			for (size_t k = 0; k < n && k < 64; k++) {
				if (seen[k] || strlen(p->gq_stop_words.v[k]) != w->blen)
					continue;
				trail_words one = {&p->gq_stop_words.v[k], 1};
				if (word_in(d, w, &one)) {
					seen[k] = 1;
					found++;
				}
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
static int dup_spans(struct doc *d, const struct span *sp, size_t n, size_t *dups, size_t *dupcps)
{
	*dups = *dupcps = 0;
	if (set_reset(d, n))
		return -1;
	for (size_t i = 0; i < n; i++) {
		uint64_t h = XXH3_64bits(d->s + sp[i].off, sp[i].len);
		if (set_add(d, h) > 1) {
			(*dups)++;
			*dupcps += cp_count(d->s + sp[i].off, sp[i].len);
		}
	}
	return 0;
}

static uint64_t ngram_hash(const struct doc *d, size_t i, int n)
{
	uint64_t h = 0x243F6A8885A308D3ull;
	for (int k = 0; k < n; k++)
		h = (h ^ d->w[i + k].h) * 0x100000001B3ull + (uint64_t)k;
	return XXH3_64bits_withSeed(&h, sizeof h, (uint64_t)n);
}

static int gopher_repetition(const trail_policy *p, struct doc *d, json_t *R)
{
	double total = d->cps ? (double)d->cps : 1;
	if (p->on[R_GR_PARAS]) {
		/* Paragraphs: the stripped text split at runs of two or more newlines. */
		size_t off = 0, len = d->len, np = 0, dups, dupc;
		strip(d->s, &off, &len);
		struct span *ps = trail_malloc((d->nl + 1) * sizeof *ps);
		if (!ps)
			return -1;
		size_t st = off, e = off + len;
		for (size_t i = off; i <= e; i++) {
			if (i == e) {
				ps[np++] = (struct span){(uint32_t)st, (uint32_t)(i - st)};
				break;
			}
			if (d->s[i] == '\n' && i + 1 < e && d->s[i + 1] == '\n') {
				ps[np++] = (struct span){(uint32_t)st, (uint32_t)(i - st)};
				while (i < e && d->s[i] == '\n')
					i++;
				st = i;
				i--;
			}
		}
		int rc = dup_spans(d, ps, np, &dups, &dupc);
		trail_free(ps);
		if (rc)
			return -1;
		double f = np ? (double)dups / (double)np : 0, c = (double)dupc / total;
		if (f > p->gr_para_frac && reason(R, R_GR_PARAS, f, "max", p->gr_para_frac))
			return -1;
		else if (f <= p->gr_para_frac && c > p->gr_para_chars &&
			 reason(R, R_GR_PARAS, c, "max", p->gr_para_chars))
			return -1;
	}
	if (p->on[R_GR_LINES]) {
		/* Lines: split at runs of newlines, so blank lines do not count. */
		size_t nl = 0, dups, dupc;
		struct span *ls = trail_malloc((d->nl + 1) * sizeof *ls);
		if (!ls)
			return -1;
		for (size_t i = 0; i < d->nl; i++)
			if (d->lines[i].len || (i == 0 && d->nl == 1))
				ls[nl++] = d->lines[i];
		int rc = dup_spans(d, ls, nl, &dups, &dupc);
		trail_free(ls);
		if (rc)
			return -1;
		double f = nl ? (double)dups / (double)nl : 0, c = (double)dupc / total;
		if (f > p->gr_line_frac && reason(R, R_GR_LINES, f, "max", p->gr_line_frac))
			return -1;
		else if (f <= p->gr_line_frac && c > p->gr_line_chars &&
			 reason(R, R_GR_LINES, c, "max", p->gr_line_chars))
			return -1;
	}
	if (p->on[R_GR_TOP]) {
		/* The most frequent repeated n-gram's share of the text. */
		for (int n = 2; n <= 4; n++) {
			if (d->nw < (size_t)n)
				break;
			size_t ng = d->nw - (size_t)n + 1, best = 0;
			if (set_reset(d, ng))
				return -1;
			for (size_t i = 0; i < ng; i++) {
				uint32_t c = set_add(d, ngram_hash(d, i, n));
				if (c < 2)
					continue;
				size_t cps = (size_t)n - 1;
				for (int k = 0; k < n; k++)
					cps += d->w[i + k].cps;
				if (c * cps > best)
					best = c * cps;
			}
			double f = (double)best / total;
			if (f > p->gr_top[n]) {
				if (reason_n(R, R_GR_TOP, n, f, p->gr_top[n]))
					return -1;
				break;
			}
		}
	}
	if (p->on[R_GR_DUP]) {
		/*
		 * Characters in repeated n-grams, scanning left to right and
		 * skipping past each repeat (so overlapping repeats count once).
		 */
		for (int n = 5; n <= 10; n++) {
			if (d->nw < (size_t)n)
				break;
			size_t ng = d->nw - (size_t)n + 1, rep = 0;
			if (set_reset(d, ng))
				return -1;
			for (size_t i = 0; i < ng;) {
				uint64_t h = ngram_hash(d, i, n);
				if (set_has(d, h)) {
					for (int k = 0; k < n; k++)
						rep += d->w[i + k].cps;
					i += (size_t)n;
				} else {
					set_add(d, h);
					i++;
				}
			}
			double f = (double)rep / total;
			if (f > p->gr_dup[n]) {
				if (reason_n(R, R_GR_DUP, n, f, p->gr_dup[n]))
					return -1;
				break;
			}
		}
	}
	return 0;
}

/* ---- C4 ------------------------------------------------------------------------ */

static const char *const policy_phrases[] = {"terms of use", "privacy policy", "cookie policy",
					     "uses cookies", "use of cookies", "use cookies"};

static int c4_terminal(const char *l, size_t len)
{
	if (!len || ends_with(l, len, "..."))
		return 0;
	char c = l[len - 1];
	return c == '.' || c == '?' || c == '!' || c == '"';
}

/* Sentence ends in a line: runs of . ! ? followed by whitespace or the end. */
static size_t sentences(const char *l, size_t len)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (l[i] != '.' && l[i] != '!' && l[i] != '?')
			continue;
		size_t j = i;
		while (j < len && (l[j] == '.' || l[j] == '!' || l[j] == '?' || l[j] == '"' ||
				   l[j] == '\'' || l[j] == ')'))
			j++;
		if ((j == len || is_space((unsigned char)l[j])) && i > 0 &&
		    !is_space((unsigned char)l[i - 1]))
			n++;
		i = j;
	}
	return n;
}

static int c4(const trail_policy *p, struct doc *d, json_t *R)
{
	if (p->on[R_C4_LOREM] && contains_ci(d->s, d->len, "lorem ipsum")) {
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
		for (size_t i = 0; i < d->nl; i++) {
			size_t off = d->lines[i].off, len = d->lines[i].len, end = off + len;
			/* Words of this line: d->w is in text order. */
			while (wi < d->nw && d->w[wi].off < off)
				wi++;
			size_t nwl = 0;
			int longword = 0;
			for (size_t k = wi; k < d->nw && d->w[k].off < end; k++) {
				nwl++;
				longword |= (long long)d->w[k].cps > p->c4_max_word_len;
			}
			strip(d->s, &off, &len);
			const char *l = d->s + off;
			if (longword || !len)
				continue;
			if (p->c4_terminal_punct && !c4_terminal(l, len))
				continue;
			if ((long long)nwl < p->c4_min_line_words)
				continue;
			if (p->c4_javascript && contains_ci(l, len, "javascript"))
				continue;
			int pol = 0;
			for (size_t k = 0; p->c4_policy_lines && k < 6 && !pol; k++)
				pol = contains_ci(l, len, policy_phrases[k]);
			if (pol)
				continue;
			ns += sentences(l, len);
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

static int fineweb(const trail_policy *p, struct doc *d, json_t *R)
{
	size_t nl = 0, punct = 0, shortl = 0;
	struct span *ls = trail_malloc((d->nl + 1) * sizeof *ls);
	if (!ls)
		return -1;
	for (size_t i = 0; i < d->nl; i++) {
		size_t off = d->lines[i].off, len = d->lines[i].len;
		strip(d->s, &off, &len);
		if (!len)
			continue;
		const struct span *l = &d->lines[i];
		ls[nl++] = *l;
		punct += fw_terminal(d->s + l->off, l->len);
		shortl += (long long)cp_count(d->s + l->off, l->len) <= p->fw_short_len;
	}
	double n = nl ? (double)nl : 1;
	int rc = 0;
	if (p->on[R_FW_PUNCT] && punct / n < p->fw_min_punct)
		rc = reason(R, R_FW_PUNCT, punct / n, "min", p->fw_min_punct);
	if (!rc && p->on[R_FW_SHORT] && nl && shortl / n > p->fw_max_short)
		rc = reason(R, R_FW_SHORT, shortl / n, "max", p->fw_max_short);
	if (!rc && p->on[R_FW_DUPCHARS]) {
		size_t dups, dupc, newlines = 0;
		for (size_t i = 0; i < d->len; i++)
			newlines += d->s[i] == '\n';
		rc = dup_spans(d, ls, nl, &dups, &dupc);
		double base = d->cps > newlines ? (double)(d->cps - newlines) : 1;
		if (!rc && dupc / base > p->fw_max_dup_chars)
			rc = reason(R, R_FW_DUPCHARS, dupc / base, "max", p->fw_max_dup_chars);
	}
	if (!rc && p->on[R_FW_NEWLINE]) {
		size_t newlines = 0;
		for (size_t i = 0; i < d->len; i++)
			newlines += d->s[i] == '\n';
		double r = (double)newlines / (d->nw ? (double)d->nw : 1);
		if (r > p->fw_max_newline)
			rc = reason(R, R_FW_NEWLINE, r, "max", p->fw_max_newline);
	}
	trail_free(ls);
	return rc;
}

int trail_quality_check(const trail_policy *p, const char *text, size_t len, json_t *reasons)
{
	struct doc d;
	int rc = -1;
	if (len > UINT32_MAX)
		len = UINT32_MAX;
	if (!doc_init(&d, text, len) && !gopher_quality(p, &d, reasons) &&
	    !gopher_repetition(p, &d, reasons) && !c4(p, &d, reasons) &&
	    !fineweb(p, &d, reasons))
		rc = 0;
	doc_free(&d);
	return rc ? -TRAIL_ENOMEM : 0;
}
