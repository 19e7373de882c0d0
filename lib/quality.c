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
	uint32_t cps; /* code points, for lines */
};

struct doc {
	const char *s;
	size_t len;
	size_t cps; /* code points in the whole text */
	size_t newlines, hashes, ellipses;
	struct word *w;
	size_t nw;
	struct span *lines; /* every line, blank ones too */
	size_t nl;
	char *low;     /* the text with ASCII letters folded */
	uint64_t *gh;  /* n-gram hashes, built up one word at a time */
	/* hash set scratch */
	uint64_t *keys;
	uint32_t *vals;
	size_t cap, mask;
	uint32_t *slot;     /* per position: its n-gram's slot */
	uint8_t *rep;       /* per position: its n-gram occurs more than once */
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

/* Whether the folded text holds needle (lower case) in [off, off + len). */
static int has_phrase(const struct doc *d, size_t off, size_t len, const char *needle)
{
	return memmem(d->low + off, len, needle, strlen(needle)) != NULL;
}

/* One pass over the bytes: folded copy, code points, lines, words, symbols. */
static int doc_init(struct doc *d, const char *s, size_t len)
{
	memset(d, 0, sizeof *d);
	d->s = s;
	d->len = len;
	size_t maxw = len / 2 + 1, nl = 1;
	for (const char *c = memchr(s, '\n', len); c; c = memchr(c + 1, '\n', len - (size_t)(c + 1 - s)))
		nl++;
	d->w = trail_malloc(maxw * sizeof *d->w);
	d->lines = trail_malloc(nl * sizeof *d->lines);
	d->low = trail_malloc(len + 1);
	d->gh = trail_malloc(maxw * sizeof *d->gh);
	if (!d->w || !d->lines || !d->low || !d->gh)
		return -1;
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < len; i++)
		d->low[i] = (char)(u[i] + ((unsigned)(u[i] - 'A') < 26u ? 32 : 0));
	/* Words run to the next whitespace; lines close at '\n' (and at the end). */
	size_t cont = 0, lst = 0, lcont = 0, i = 0;
	for (;;) {
		while (i < len && is_space(u[i]) && u[i] != '\n')
			i++;
		if (i == len || u[i] == '\n') {
			size_t e = i;
			if (e > lst && u[e - 1] == '\r')
				e--;
			d->lines[d->nl++] =
				(struct span){(uint32_t)lst, (uint32_t)(e - lst), (uint32_t)(e - lst - (cont - lcont))};
			if (i == len)
				break;
			d->newlines++;
			lst = ++i;
			lcont = cont;
			continue;
		}
		size_t wst = i, wcont = 0;
		int alpha = 0;
		for (; i < len && !is_space(u[i]); i++) {
			unsigned c = u[i];
			if (c < 0x80) {
				alpha |= (unsigned)((c | 0x20) - 'a') < 26u;
				if (c == '#')
					d->hashes++;
				else if (c == '.' && i + 2 < len && u[i + 1] == '.' && u[i + 2] == '.' &&
					 !(i > 0 && u[i - 1] == '.'))
					d->ellipses++;
			} else {
				alpha = 1;
				wcont += (c & 0xC0) == 0x80;
				if (c == 0xE2 && i + 2 < len && u[i + 1] == 0x80 && u[i + 2] == 0xA6)
					d->ellipses++;
			}
		}
		cont += wcont;
		struct word *w = &d->w[d->nw++];
		w->off = (uint32_t)wst;
		w->len = (uint32_t)(i - wst);
		w->cps = (uint32_t)(i - wst - wcont);
		w->alpha = alpha;
		w->h = XXH3_64bits(s + wst, i - wst);
		size_t bo = wst, bl = i - wst;
		while (bl && is_punct(u[bo]))
			bo++, bl--;
		while (bl && is_punct(u[bo + bl - 1]))
			bl--;
		w->boff = (uint32_t)bo;
		w->blen = (uint32_t)bl;
	}
	d->cps = len - cont;
	d->low[len] = 0;
	return 0;
}

static void doc_free(struct doc *d)
{
	trail_free(d->w);
	trail_free(d->lines);
	trail_free(d->low);
	trail_free(d->gh);
	trail_free(d->keys);
	trail_free(d->vals);
	trail_free(d->slot);
	trail_free(d->rep);
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
	d->mask = cap - 1;
	memset(d->keys, 0, cap * sizeof *d->keys);
	return 0;
}

/* Add key; returns its slot, whose count (vals) it increments. */
static size_t set_slot(struct doc *d, uint64_t key)
{
	key |= 1; /* never 0 */
	size_t m = d->mask, s = (size_t)(key * 0x9E3779B97F4A7C15ull >> 20) & m;
	while (d->keys[s] && d->keys[s] != key)
		s = (s + 1) & m;
	if (!d->keys[s]) {
		d->keys[s] = key;
		d->vals[s] = 0;
	}
	d->vals[s]++;
	return s;
}

static uint32_t set_add(struct doc *d, uint64_t key)
{
	return d->vals[set_slot(d, key)];
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
	size_t nonsym = 0, cps = 0, alpha = 0, hashes = d->hashes, ellipses = d->ellipses;
	for (size_t i = 0; i < d->nw; i++) {
		const struct word *w = &d->w[i];
		if (w->blen) {
			nonsym++;
			cps += w->cps;
		}
		alpha += w->alpha;
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
		size_t n = p->gq_stop_words.n < 64 ? p->gq_stop_words.n : 64, found = 0;
		size_t lens[64], minl = SIZE_MAX, maxl = 0;
		unsigned char seen[64] = {0};
		for (size_t k = 0; k < n; k++) {
			lens[k] = strlen(p->gq_stop_words.v[k]);
			minl = lens[k] < minl ? lens[k] : minl;
			maxl = lens[k] > maxl ? lens[k] : maxl;
		}
		for (size_t i = 0; i < d->nw && found < n; i++) {
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
static int dup_spans(struct doc *d, const struct span *sp, size_t n, size_t *dups, size_t *dupcps)
{
	*dups = *dupcps = 0;
	if (set_reset(d, n))
		return -1;
	for (size_t i = 0; i < n; i++) {
		uint64_t h = XXH3_64bits(d->s + sp[i].off, sp[i].len);
		if (set_add(d, h) > 1) {
			(*dups)++;
			*dupcps += sp[i].cps ? sp[i].cps : cp_count(d->s + sp[i].off, sp[i].len);
		}
	}
	return 0;
}

/* Extend the n-gram hashes of candidate positions by one word: gh[i] covers words i .. i+n-1. */
static void grow_grams(struct doc *d, int n)
{
	for (size_t i = 0; i + (size_t)n <= d->nw; i++) {
		if (!d->rep[i])
			continue;
		uint64_t h = (d->gh[i] ^ d->w[i + (size_t)n - 1].h) * 0x9E3779B97F4A7C15ull;
		d->gh[i] = h ^ (h >> 29);
	}
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
				ps[np++] = (struct span){(uint32_t)st, (uint32_t)(i - st), 0};
				break;
			}
			if (d->s[i] == '\n' && i + 1 < e && d->s[i + 1] == '\n') {
				ps[np++] = (struct span){(uint32_t)st, (uint32_t)(i - st), 0};
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
	if (!p->on[R_GR_TOP] && !p->on[R_GR_DUP])
		return 0;
	/*
	 * N-grams for n = 2..10, hashes grown one word at a time. Top n-grams
	 * (2..4): the most frequent repeated n-gram's share of the text. Dup
	 * n-grams (5..10): characters in repeated n-grams, scanning left to
	 * right and skipping past each repeat so overlaps count once; with no
	 * repeated 5-gram there is no longer repeat either.
	 */
	int top_done = !p->on[R_GR_TOP], dup_done = !p->on[R_GR_DUP];
	/*
	 * An n-gram can repeat only where its (n-1)-gram prefix repeats, so
	 * each n looks only at the positions still marked in rep; an n-gram
	 * that occurs once never matters to either rule.
	 */
	size_t nw = d->nw;
	d->slot = trail_malloc((nw ? nw : 1) * sizeof *d->slot);
	d->rep = trail_malloc(nw ? nw : 1);
	if (!d->slot || !d->rep)
		return -1;
	for (size_t i = 0; i < nw; i++) {
		d->gh[i] = d->w[i].h;
		d->rep[i] = 1;
	}
	for (int n = 2; n <= 10 && (!top_done || !dup_done) && nw >= (size_t)n; n++) {
		size_t ng = nw - (size_t)n + 1, ncand = 0, nrep = 0;
		grow_grams(d, n);
		for (size_t i = 0; i < ng; i++)
			ncand += d->rep[i];
		if (set_reset(d, ncand))
			return -1;
		for (size_t i = 0; i < ng; i++)
			if (d->rep[i])
				d->slot[i] = (uint32_t)set_slot(d, d->gh[i]);
		for (size_t i = 0; i < ng; i++) {
			d->rep[i] = d->rep[i] && d->vals[d->slot[i]] > 1;
			nrep += d->rep[i];
		}
		d->rep[ng] = 0; /* the last position of n-1 has no n-gram */
		if (n <= 4 && !top_done) {
			size_t best = 0;
			for (size_t i = 0; i < ng; i++) {
				if (!d->rep[i])
					continue;
				size_t cps = (size_t)n - 1;
				for (int k = 0; k < n; k++)
					cps += d->w[i + k].cps;
				size_t c = d->vals[d->slot[i]];
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
			/* Greedy scan; vals is reused to mark the repeated n-grams seen so far. */
			size_t rep = 0;
			for (size_t i = 0; i < ng; i++)
				if (d->rep[i])
					d->vals[d->slot[i]] = 0;
			for (size_t i = 0; i < ng;) {
				if (d->rep[i] && d->vals[d->slot[i]]) {
					for (int k = 0; k < n; k++)
						rep += d->w[i + k].cps;
					i += (size_t)n;
				} else {
					if (d->rep[i])
						d->vals[d->slot[i]] = 1;
					i++;
				}
			}
			double f = (double)rep / total;
			if (f > p->gr_dup[n]) {
				if (reason_n(R, R_GR_DUP, n, f, p->gr_dup[n]))
					return -1;
				dup_done = 1;
			}
		}
		if (!nrep)
			break; /* no repeated n-gram: no longer one either */
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
	if (p->on[R_C4_LOREM] && has_phrase(d, 0, d->len, "lorem ipsum")) {
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
		int js = p->c4_javascript && has_phrase(d, 0, d->len, "javascript");
		int pol_any[6] = {0}, any = 0;
		for (size_t k = 0; p->c4_policy_lines && k < 6; k++)
			any |= pol_any[k] = has_phrase(d, 0, d->len, policy_phrases[k]);
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
			if (js && has_phrase(d, off, len, "javascript"))
				continue;
			int pol = 0;
			for (size_t k = 0; any && k < 6 && !pol; k++)
				pol = pol_any[k] && has_phrase(d, off, len, policy_phrases[k]);
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
		shortl += (long long)l->cps <= p->fw_short_len;
	}
	double n = nl ? (double)nl : 1;
	int rc = 0;
	if (p->on[R_FW_PUNCT] && punct / n < p->fw_min_punct)
		rc = reason(R, R_FW_PUNCT, punct / n, "min", p->fw_min_punct);
	if (!rc && p->on[R_FW_SHORT] && nl && shortl / n > p->fw_max_short)
		rc = reason(R, R_FW_SHORT, shortl / n, "max", p->fw_max_short);
	if (!rc && p->on[R_FW_DUPCHARS]) {
		size_t dups, dupc, newlines = d->newlines;
		rc = dup_spans(d, ls, nl, &dups, &dupc);
		double base = d->cps > newlines ? (double)(d->cps - newlines) : 1;
		if (!rc && dupc / base > p->fw_max_dup_chars)
			rc = reason(R, R_FW_DUPCHARS, dupc / base, "max", p->fw_max_dup_chars);
	}
	if (!rc && p->on[R_FW_NEWLINE]) {
		double r = (double)d->newlines / (d->nw ? (double)d->nw : 1);
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
