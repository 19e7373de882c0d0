/*
 * Tokenizers from Hugging Face's tokenizer.json (with tokenizer_config.json
 * beside it for BOS and EOS), and the public tokenizer interface, which
 * dispatches to the byte tokenizer and GPT-2's files in tokenizer.c.
 *
 * Two families of tokenizer.json are read, both of model type "BPE":
 *
 *  byte-level  Llama-3 and Qwen: a Split pre-tokeniser whose regex is one
 *              of theirs (tokenizer.c's piece_end_split), then ByteLevel
 *              without its own regex; or GPT-2's ByteLevel with its regex.
 *              Tokens are spelled in GPT-2's byte alphabet; an optional NFC
 *              normaliser; ignore_merges (a piece that is a token is taken
 *              whole).
 *  SentencePiece-style  Llama-2 and TinyLlama: the normaliser prepends
 *              U+2581 and turns spaces into U+2581, there is no
 *              pre-tokeniser, so each section of text is one word whose
 *              characters are merged by rank; a character without a token
 *              becomes its UTF-8 bytes' <0xNN> tokens (byte_fallback), or
 *              the unknown token. Here a token's text has spaces for
 *              U+2581 and <0xNN> is the byte itself, so decoding is
 *              concatenation, less the one leading space the decoder's Strip
 *              removes.
 *
 * Added tokens (added_tokens) are split out of text before anything else,
 * leftmost first and, among those starting at one place, longest first;
 * the text between them is normalised and encoded on its own, as the
 * reference encoders do. Special ones are split out only with
 * TRAIL_TOKENIZE_SPECIAL; otherwise their text is encoded like any other.
 *
 * Anything else in a tokenizer.json (another model type, pre-tokeniser,
 * normaliser, regex, subword prefixes) is refused by name, not guessed at.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"

#define MAX_JSON ((size_t)1 << 28)

/* The Split patterns this file knows, exactly as tokenizer.json spells them. */
static const char RE_LLAMA3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
				"?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
			      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char METASPACE[] = "\xe2\x96\x81"; /* U+2581 */

/* ---- NFC ---- */

static int ccc_of(uint32_t cp)
{
	if (cp < 0x300)
		return 0;
	unsigned lo = 0, hi = trail_uc_nccc;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (cp > trail_uc_ccc[mid].hi)
			lo = mid + 1;
		else if (cp < trail_uc_ccc[mid].lo)
			hi = mid;
		else
			return trail_uc_ccc[mid].ccc;
	}
	return 0;
}

static const trail_uc_pair *decomp_of(uint32_t cp)
{
	unsigned lo = 0, hi = trail_uc_ndecomp;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (cp > trail_uc_decomp[mid].cp)
			lo = mid + 1;
		else if (cp < trail_uc_decomp[mid].cp)
			hi = mid;
		else
			return &trail_uc_decomp[mid];
	}
	return NULL;
}

/* The primary composite of a and b, 0 when none. */
static uint32_t compose(uint32_t a, uint32_t b)
{
	if (a >= 0x1100 && a < 0x1113 && b >= 0x1161 && b < 0x1176) /* Hangul L + V */
		return 0xAC00 + ((a - 0x1100) * 21 + (b - 0x1161)) * 28;
	if (a >= 0xAC00 && a < 0xAC00 + 11172 && (a - 0xAC00) % 28 == 0 && b > 0x11A7 && b < 0x11C3) /* LV + T */
		return a + (b - 0x11A7);
	unsigned lo = 0, hi = trail_uc_ncomp;
	uint64_t key = (uint64_t)a << 32 | b;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		uint64_t k = (uint64_t)trail_uc_comp[mid].a << 32 | trail_uc_comp[mid].b;
		if (key > k)
			lo = mid + 1;
		else if (key < k)
			hi = mid;
		else
			return trail_uc_comp[mid].cp;
	}
	return 0;
}

/* Appends cp's full canonical decomposition to d (room checked by the caller: at most 4 per code point). */
static size_t decompose(uint32_t cp, uint32_t *d)
{
	if (cp >= 0xAC00 && cp < 0xAC00 + 11172) {
		uint32_t s = cp - 0xAC00, n = 0;
		d[n++] = 0x1100 + s / 588;
		d[n++] = 0x1161 + (s % 588) / 28;
		if (s % 28)
			d[n++] = 0x11A7 + s % 28;
		return n;
	}
	const trail_uc_pair *p = cp >= 0xC0 && cp < 0x110000 ? decomp_of(cp) : NULL;
	if (!p) {
		d[0] = cp;
		return 1;
	}
	size_t n = decompose(p->a, d);
	if (p->b)
		n += decompose(p->b, d + n);
	return n;
}

static size_t put_utf8(uint8_t *o, uint32_t cp)
{
	if (cp >= 0x110000) { /* an invalid byte, kept */
		o[0] = (uint8_t)(cp - 0x110000);
		return 1;
	}
	if (cp < 0x80) {
		o[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (uint8_t)(0xC0 | cp >> 6), o[1] = (uint8_t)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (uint8_t)(0xE0 | cp >> 12), o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
		o[2] = (uint8_t)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (uint8_t)(0xF0 | cp >> 18), o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
	o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F)), o[3] = (uint8_t)(0x80 | (cp & 0x3F));
	return 4;
}

/*
 * NFC: full canonical decomposition, canonical ordering (a stable sort of
 * each run of non-starters by combining class), then canonical composition
 * (a character joins the last starter unless a character between them is a
 * starter or has a class no lower than its own). A byte that is not UTF-8
 * is a starter that composes with nothing. The output is never more than 3
 * times the input: NFC expands no character beyond that (and decomposition
 * at most 4 code points of at least 1 byte for each 1 to 4 bytes).
 */
int trail_uc_nfc(const uint8_t *s, size_t n, uint8_t **out, size_t *on)
{
	uint32_t *d = trail_malloc((4 * n + 1) * sizeof *d);
	uint8_t *o = trail_malloc(4 * n + 1);
	if (!d || !o) {
		trail_free(d);
		trail_free(o);
		return TRAIL_ENOMEM;
	}
	size_t nd = 0, l;
	uint32_t cp;
	for (size_t i = 0; i < n; i += l) {
		trail_tok_char(s, n, i, &l, &cp);
		nd += decompose(cp, d + nd);
	}
	for (size_t i = 1; i < nd; i++) { /* insertion sort of non-starter runs: runs are short */
		int c = ccc_of(d[i]);
		if (!c)
			continue;
		uint32_t v = d[i];
		size_t j = i;
		while (j > 0 && ccc_of(d[j - 1]) > c)
			d[j] = d[j - 1], j--;
		d[j] = v;
	}
	size_t m = 0, starter = (size_t)-1;
	int last = 0;
	for (size_t i = 0; i < nd; i++) {
		uint32_t c = d[i], x;
		int cc = c >= 0x110000 ? 0 : ccc_of(c);
		if (starter != (size_t)-1 && d[starter] < 0x110000 && (m == starter + 1 || (last && last < cc)) &&
		    (x = compose(d[starter], c))) {
			d[starter] = x;
			continue;
		}
		if (!cc)
			starter = m;
		last = cc;
		d[m++] = c;
	}
	size_t k = 0;
	for (size_t i = 0; i < m; i++)
		k += put_utf8(o + k, d[i]);
	trail_free(d);
	*out = o;
	*on = k;
	return TRAIL_OK;
}

/* ---- loading ---- */

static const char *str_or_content(const json_t *v)
{
	if (json_is_object(v))
		v = json_object_get(v, "content");
	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The id of added token or vocabulary entry s, -1 when none. */
static int32_t id_of(const trail_tokenizer *t, const json_t *vocab, const char *s)
{
	if (!s)
		return -1;
	for (size_t i = 0; i < t->n_added; i++)
		if (t->added[i].len == strlen(s) && !memcmp(t->text + t->added[i].off, s, t->added[i].len))
			return t->added[i].id;
	json_t *v = json_object_get(vocab, s);
	return json_is_integer(v) ? (int32_t)json_integer_value(v) : -1;
}

static int cmp_added(const void *a, const void *b, void *arg)
{
	const trail_tokenizer *t = arg;
	const tok_added *x = a, *y = b;
	uint8_t fx = (uint8_t)t->text[x->off], fy = (uint8_t)t->text[y->off];
	if (fx != fy)
		return fx < fy ? -1 : 1;
	if (x->len != y->len)
		return x->len > y->len ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Which pre-tokeniser and normaliser: TRAIL_OK or a refusal naming what is not known. */
static int read_pipeline(trail_tokenizer *t, const json_t *root, const char *path, trail_error *err)
{
	const json_t *pre = json_object_get(root, "pre_tokenizer"), *norm = json_object_get(root, "normalizer"),
		     *dec = json_object_get(root, "decoder");
	const char *pt = json_string_value(json_object_get(pre, "type"));
	t->kind = TK_HF_SP;
	if (pt && !strcmp(pt, "Sequence")) {
		const json_t *a = json_object_get(pre, "pretokenizers"), *sp = json_array_get(a, 0), *bl = json_array_get(a, 1);
		const char *re = json_string_value(json_object_get(json_object_get(sp, "pattern"), "Regex"));
		const char *beh = json_string_value(json_object_get(sp, "behavior"));
		if (json_array_size(a) != 2 || !re || !beh || strcmp(beh, "Isolated") ||
		    json_is_true(json_object_get(sp, "invert")) ||
		    strcmp(json_string_value(json_object_get(bl, "type")) ?: "", "ByteLevel") ||
		    json_is_true(json_object_get(bl, "use_regex")) || json_is_true(json_object_get(bl, "add_prefix_space")))
			return trail_error_at(err, TRAIL_EDATA, path, 0,
					      "pre_tokenizer: only Split (Isolated) then ByteLevel without its regex");
		if (!strcmp(re, RE_LLAMA3))
			t->pre = TK_PRE_LLAMA3;
		else if (!strcmp(re, RE_QWEN))
			t->pre = TK_PRE_QWEN;
		else
			return trail_error_at(err, TRAIL_EDATA, path, 0, "pre_tokenizer: a Split regex trail does not know: %s", re);
		t->kind = TK_HF_BPE;
	} else if (pt && !strcmp(pt, "ByteLevel")) {
		if (json_is_true(json_object_get(pre, "add_prefix_space")) || json_is_false(json_object_get(pre, "use_regex")))
			return trail_error_at(err, TRAIL_EDATA, path, 0, "pre_tokenizer: ByteLevel only as GPT-2's");
		t->pre = TK_PRE_GPT2;
		t->kind = TK_HF_BPE;
	} else if (pt) {
		return trail_error_at(err, TRAIL_EDATA, path, 0, "pre_tokenizer \"%s\" is not supported", pt);
	}
	/* normaliser: null, NFC, Prepend U+2581 + Replace " " by U+2581, alone or in a Sequence */
	const json_t *one = norm;
	size_t nn = json_is_null(norm) || !norm ? 0 : 1;
	const char *nt = json_string_value(json_object_get(norm, "type"));
	if (nt && !strcmp(nt, "Sequence"))
		nn = json_array_size(json_object_get(norm, "normalizers"));
	int prepend = 0, replace = 0;
	for (size_t i = 0; i < nn; i++) {
		if (nt && !strcmp(nt, "Sequence"))
			one = json_array_get(json_object_get(norm, "normalizers"), i);
		const char *ty = json_string_value(json_object_get(one, "type")) ?: "?";
		const char *pp = json_string_value(json_object_get(one, "prepend"));
		const char *pat = json_string_value(json_object_get(json_object_get(one, "pattern"), "String"));
		const char *con = json_string_value(json_object_get(one, "content"));
		if (!strcmp(ty, "NFC"))
			t->nfc = 1;
		else if (!strcmp(ty, "Prepend") && pp && !strcmp(pp, METASPACE))
			prepend = 1;
		else if (!strcmp(ty, "Replace") && pat && con && !strcmp(pat, " ") && !strcmp(con, METASPACE))
			replace = 1;
		else
			return trail_error_at(err, TRAIL_EDATA, path, 0, "normalizer \"%s\" is not supported here", ty);
	}
	if (t->kind == TK_HF_SP) {
		if (!prepend || !replace)
			return trail_error_at(err, TRAIL_EDATA, path, 0,
					      "no pre_tokenizer, and the normalizer is not SentencePiece's (Prepend and Replace U+2581)");
		t->metaspace = 1;
		/* the decoder's Strip of one leading space undoes the prepended one */
		const json_t *ds = json_object_get(dec, "decoders");
		for (size_t i = 0; i < json_array_size(ds); i++) {
			const json_t *d = json_array_get(ds, i);
			if (!strcmp(json_string_value(json_object_get(d, "type")) ?: "", "Strip") &&
			    json_integer_value(json_object_get(d, "start")) == 1)
				t->strip_space = 1;
		}
	} else if (prepend || replace) {
		return trail_error_at(err, TRAIL_EDATA, path, 0, "a SentencePiece normalizer with a byte-level pre_tokenizer");
	}
	return TRAIL_OK;
}

/* Every token's text: vocab (spelled in the byte alphabet, or SentencePiece's) and added_tokens. */
static int read_tokens(trail_tokenizer *t, const json_t *vocab, const json_t *added, const char *path, trail_error *err)
{
	const char *k, **keys = NULL;
	json_t *v;
	size_t total = 0, i;
	int rc = TRAIL_OK;
	if (!json_is_object(vocab) || !json_object_size(vocab) || (added && !json_is_array(added)))
		return trail_error_at(err, TRAIL_EDATA, path, 0, "model.vocab is not an object of token: id");
	json_object_foreach((json_t *)vocab, k, v) {
		json_int_t id = json_integer_value(v);
		if (!json_is_integer(v) || id < 0 || id >= (1 << 24))
			return trail_error_at(err, TRAIL_EDATA, path, 0, "token \"%s\": the id is not an integer in [0, 16777216)", k);
		if ((size_t)id >= t->n_vocab)
			t->n_vocab = (size_t)id + 1;
		total += strlen(k);
	}
	json_array_foreach(added, i, v) {
		json_int_t id = json_integer_value(json_object_get(v, "id"));
		const char *c = json_string_value(json_object_get(v, "content"));
		if (!json_is_integer(json_object_get(v, "id")) || id < 0 || id >= (1 << 24) || !c || !*c)
			return trail_error_at(err, TRAIL_EDATA, path, 0, "added_tokens[%zu]: needs an id in [0, 16777216) and content", i);
		if ((size_t)id >= t->n_vocab)
			t->n_vocab = (size_t)id + 1;
		total += strlen(c);
	}
	keys = trail_calloc(t->n_vocab, sizeof *keys);
	t->off = trail_malloc((t->n_vocab + 1) * sizeof *t->off);
	t->flags = trail_calloc(t->n_vocab, 1);
	t->text = trail_malloc(total + 1);
	t->added = trail_calloc(json_array_size(added) + 1, sizeof *t->added);
	if (!keys || !t->off || !t->flags || !t->text || !t->added || total >= UINT32_MAX) {
		trail_free(keys);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	json_object_foreach((json_t *)vocab, k, v) {
		json_int_t id = json_integer_value(v);
		if (keys[id]) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "tokens \"%s\" and \"%s\" share id %lld", keys[id], k,
					    (long long)id);
			goto out;
		}
		keys[id] = k;
	}
	json_array_foreach(added, i, v) { /* an added token's content is its text, whatever the vocabulary says */
		json_int_t id = json_integer_value(json_object_get(v, "id"));
		keys[id] = json_string_value(json_object_get(v, "content"));
		if (json_is_true(json_object_get(v, "single_word"))) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "added token \"%s\": single_word is not supported", keys[id]);
			goto out;
		}
		t->flags[id] = TOK_ADDED | (json_is_true(json_object_get(v, "special")) ? TOK_SPECIAL : 0);
	}
	for (i = 0; i < 256; i++)
		t->byte_id[i] = t->fallback[i] = -1;
	uint32_t o = 0;
	for (i = 0; i < t->n_vocab; i++) {
		t->off[i] = o;
		if (!(k = keys[i]))
			continue;
		const uint8_t *s = (const uint8_t *)k;
		size_t n = strlen(k);
		t->flags[i] |= TOK_PRESENT;
		long got;
		unsigned b;
		if (t->flags[i] & TOK_ADDED) {
			memcpy(t->text + o, k, n), o += (uint32_t)n;
		} else if (t->kind == TK_HF_BPE) {
			if ((got = trail_tok_unspell(s, n, (uint8_t *)t->text + o)) < 0) {
				memcpy(t->text + o, k, n), o += (uint32_t)n;
				t->flags[i] |= TOK_LITERAL;
			} else {
				if (got == 1 && t->byte_id[(uint8_t)t->text[o]] < 0)
					t->byte_id[(uint8_t)t->text[o]] = (int32_t)i;
				o += (uint32_t)got;
			}
		} else if (n == 6 && !memcmp(k, "<0x", 3) && k[5] == '>' && sscanf(k + 3, "%2X", &b) == 1 &&
			   strchr("0123456789ABCDEF", k[3]) && strchr("0123456789ABCDEF", k[4])) {
			t->text[o++] = (char)b; /* <0xNN>: the byte */
			t->fallback[b] = (int32_t)i;
			t->flags[i] |= TOK_LITERAL;
		} else { /* SentencePiece: U+2581 is a space */
			for (size_t j = 0; j < n;)
				if (j + 3 <= n && !memcmp(s + j, METASPACE, 3))
					t->text[o++] = ' ', j += 3;
				else
					t->text[o++] = (char)s[j++];
		}
		if (t->flags[i] & TOK_ADDED)
			t->added[t->n_added++] = (tok_added){t->off[i], o - t->off[i], (int32_t)i,
							     (uint8_t)!!(t->flags[i] & TOK_SPECIAL), 0, 0};
	}
	t->off[t->n_vocab] = o;
	if (t->kind == TK_HF_BPE)
		for (i = 0; i < 256; i++)
			if (t->byte_id[i] < 0) {
				rc = trail_error_at(err, TRAIL_EDATA, path, 0, "no token for the byte 0x%02zx", i);
				goto out;
			}
	json_array_foreach(added, i, v) {
		int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
		for (size_t j = 0; j < t->n_added; j++)
			if (t->added[j].id == id) {
				t->added[j].lstrip = json_is_true(json_object_get(v, "lstrip"));
				t->added[j].rstrip = json_is_true(json_object_get(v, "rstrip"));
			}
	}
	qsort_r(t->added, t->n_added, sizeof *t->added, cmp_added, t);
	for (size_t b = 0, j = 0; b <= 256; b++) {
		while (j < t->n_added && (uint8_t)t->text[t->added[j].off] < b)
			j++;
		t->added_first[b] = (uint32_t)j;
	}
	/* the map from text to id leaves out byte tokens and added ones: they are never looked up by text */
	uint8_t *keep = trail_malloc(t->n_vocab);
	if (!keep) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < t->n_vocab; i++) {
		keep[i] = t->flags[i];
		if ((t->kind == TK_HF_SP && (t->flags[i] & TOK_LITERAL)) || (t->flags[i] & TOK_ADDED))
			t->flags[i] &= (uint8_t)~TOK_PRESENT;
	}
	rc = trail_tok_map_build(t);
	memcpy(t->flags, keep, t->n_vocab);
	trail_free(keep);
	if (rc)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	trail_free(keys);
	return rc;
}

/* model.merges: "left right" strings or [left, right] pairs, by rank. */
static int read_merges(trail_tokenizer *t, const json_t *vocab, const json_t *merges, const char *path, trail_error *err)
{
	size_t i, n = json_array_size(merges);
	json_t *m;
	char *buf = NULL;
	size_t cap = 0;
	if (merges && !json_is_array(merges))
		return trail_error_at(err, TRAIL_EDATA, path, 0, "model.merges is not an array");
	if (trail_tok_merges_alloc(t, n))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = TRAIL_OK;
	json_array_foreach(merges, i, m) {
		const char *a = NULL, *b = NULL;
		size_t la = 0, lb = 0;
		if (json_is_string(m)) { /* split at the first space, as the reference does */
			a = json_string_value(m);
			const char *sp = strchr(a, ' ');
			if (sp) {
				la = (size_t)(sp - a), b = sp + 1;
				const char *e = strchr(b, ' ');
				lb = e ? (size_t)(e - b) : strlen(b);
			}
		} else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
			   json_is_string(json_array_get(m, 1))) {
			a = json_string_value(json_array_get(m, 0)), la = strlen(a);
			b = json_string_value(json_array_get(m, 1)), lb = strlen(b);
		}
		if (!b) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "model.merges[%zu] is not two tokens", i);
			break;
		}
		if (la + lb + 1 > cap) {
			char *nb = trail_realloc(buf, cap = 2 * (la + lb + 1));
			if (!nb) {
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				break;
			}
			buf = nb;
		}
		int32_t id[3];
		for (int k = 0; k < 3; k++) {
			size_t l = k == 0 ? la : k == 1 ? lb : la + lb;
			if (k == 1)
				memcpy(buf, b, lb);
			else
				memcpy(buf, a, la);
			if (k == 2)
				memcpy(buf + la, b, lb);
			buf[l] = 0;
			json_t *v = json_object_get(vocab, buf);
			id[k] = v ? (int32_t)json_integer_value(v) : -1;
			if (id[k] < 0 || (t->flags[id[k]] & (TOK_LITERAL | TOK_ADDED))) {
				rc = trail_error_at(err, TRAIL_EDATA, path, 0, "model.merges[%zu]: \"%s\" is not a token BPE can make",
						    i, buf);
				break;
			}
		}
		if (rc)
			break;
		trail_tok_merge_put(t, id[0], id[1], (int32_t)t->n_merges, id[2]);
		t->merges[t->n_merges][0] = id[0];
		t->merges[t->n_merges][1] = id[1];
		t->n_merges++;
	}
	trail_free(buf);
	return rc;
}

/* BOS and EOS: tokenizer_config.json's, else the post-processor's template. What
 * TRAIL_TOKENIZE_ADD adds is the template's alone, as the reference encoder does
 * (add_bos_token and add_eos_token are not read). */
static int read_config(trail_tokenizer *t, const json_t *root, const json_t *vocab, const char *dir, const void *cfg,
		       size_t cfg_len, trail_error *err)
{
	const json_t *pp = json_object_get(root, "post_processor"), *single = json_object_get(pp, "single");
	const char *first = NULL, *last = NULL;
	for (size_t i = 0; i < json_array_size(single); i++) {
		const char *s = json_string_value(json_object_get(json_object_get(json_array_get(single, i), "SpecialToken"), "id"));
		if (s && i == 0)
			first = s;
		if (s && i + 1 == json_array_size(single) && i > 0)
			last = s;
	}
	t->bos = t->add_first = id_of(t, vocab, first);
	t->eos = t->add_last = id_of(t, vocab, last);
	if (!dir && !cfg)
		return TRAIL_OK;
	char *p = trail_path(dir ? dir : ".", "tokenizer_config.json");
	json_t *c = NULL;
	int rc = !p ? TRAIL_ENOMEM : cfg ? TRAIL_OK : trail_read_file(p, MAX_JSON, &t->config, &t->config_len, NULL);
	if (!rc && cfg) { /* given as bytes: the file's name is only for messages */
		if ((t->config = trail_malloc(cfg_len ? cfg_len : 1)))
			memcpy(t->config, cfg, t->config_len = cfg_len);
		else
			rc = TRAIL_ENOMEM;
	}
	if (rc == TRAIL_ENOMEM) {
		trail_free(p);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	if (rc) { /* no tokenizer_config.json */
		trail_free(p);
		t->config = NULL;
		return TRAIL_OK;
	}
	/* model_max_length is often 1e30 written as an integer: read numbers as reals */
	json_error_t je;
	if (!(c = json_loadb(t->config, t->config_len, JSON_DECODE_INT_AS_REAL, &je))) {
		rc = trail_error_at(err, TRAIL_EDATA, p, je.line, "invalid json: %s", je.text);
		trail_free(p);
		return rc;
	}
	const json_t *b = json_object_get(c, "bos_token"), *e = json_object_get(c, "eos_token");
	if (b && (t->bos = id_of(t, vocab, str_or_content(b))) < 0 && !json_is_null(b))
		rc = trail_error_at(err, TRAIL_EDATA, p, 0, "bos_token is not a token");
	if (!rc && e && (t->eos = id_of(t, vocab, str_or_content(e))) < 0 && !json_is_null(e))
		rc = trail_error_at(err, TRAIL_EDATA, p, 0, "eos_token is not a token");
	json_decref(c);
	trail_free(p);
	return rc;
}

int trail_hf_load(const char *file, const char *dir, trail_tokenizer **out, trail_error *err)
{
	void *buf;
	size_t len;
	*out = NULL;
	int rc = trail_read_file(file, MAX_JSON, &buf, &len, err);
	if (rc)
		return rc;
	rc = trail_hf_parse(buf, len, file, dir, out, err);
	trail_free(buf);
	return rc;
}

static int parse(const void *buf, size_t len, const char *file, const char *dir, const void *cfg, size_t cfg_len,
		 trail_tokenizer **out, trail_error *err);

int trail_hf_parse(const void *buf, size_t len, const char *file, const char *dir, trail_tokenizer **out,
		   trail_error *err)
{
	return parse(buf, len, file, dir, NULL, 0, out, err);
}

static int parse(const void *buf, size_t len, const char *file, const char *dir, const void *cfg, size_t cfg_len,
		 trail_tokenizer **out, trail_error *err)
{
	json_t *root = NULL;
	trail_tokenizer *t = trail_calloc(1, sizeof *t);
	int rc;
	*out = NULL;
	if (!t || !(t->json = trail_malloc(len ? len : 1))) {
		trail_free(t);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	memcpy(t->json, buf, len);
	t->json_len = len;
	t->eot = t->bos = t->eos = t->unk = t->add_first = t->add_last = -1;
	if ((rc = trail_json_parse(t->json, t->json_len, file, &root, err)))
		goto out;
	const json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
	const char *type = json_string_value(json_object_get(model, "type"));
	if (!json_is_object(root) || !type || strcmp(type, "BPE")) {
		rc = trail_error_at(err, TRAIL_EDATA, file, 0, "model.type \"%s\": only BPE is supported", type ? type : "?");
		goto out;
	}
	const char *cp = json_string_value(json_object_get(model, "continuing_subword_prefix")),
		   *ew = json_string_value(json_object_get(model, "end_of_word_suffix"));
	if ((cp && *cp) || (ew && *ew) || json_is_number(json_object_get(model, "dropout"))) {
		rc = trail_error_at(err, TRAIL_EDATA, file, 0, "BPE with subword affixes or dropout is not supported");
		goto out;
	}
	if ((rc = read_pipeline(t, root, file, err)) ||
	    (rc = read_tokens(t, vocab, json_object_get(root, "added_tokens"), file, err)) ||
	    (rc = read_merges(t, vocab, json_object_get(model, "merges"), file, err)) ||
	    (rc = read_config(t, root, vocab, dir, cfg, cfg_len, err)))
		goto out;
	t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
	t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
	t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
	t->unk = id_of(t, vocab, json_string_value(json_object_get(model, "unk_token")));
	t->eot = t->eos;
	if (t->kind == TK_HF_BPE && !(t->cache = trail_tok_cache_new()))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	json_decref(root);
	if (rc) {
		trail_tok_release(t);
		t = NULL;
	}
	*out = t;
	return rc;
}

/* ---- encoding ---- */

typedef struct ids_out {
	int32_t *p;
	size_t n, cap;
} ids_out;

static int ids_room(ids_out *o, size_t more)
{
	if (o->n + more <= o->cap)
		return TRAIL_OK;
	size_t cap = o->cap ? o->cap : 16;
	while (cap < o->n + more)
		cap *= 2;
	int32_t *p = trail_realloc(o->p, cap * sizeof *p);
	if (!p)
		return TRAIL_ENOMEM;
	o->p = p;
	o->cap = cap;
	return TRAIL_OK;
}

/* One SentencePiece word: s is the normalised section (spaces for U+2581). */
static int sp_word(const trail_tokenizer *t, const uint8_t *s, size_t n, ids_out *o)
{
	size_t m = 0, l;
	uint32_t cp;
	uint32_t *at = trail_malloc((n + 1) * sizeof *at);
	int32_t *id = trail_malloc((n + 1) * sizeof *id), *nx = trail_malloc((n + 1) * sizeof *nx);
	int rc = at && id && nx ? TRAIL_OK : TRAIL_ENOMEM;
	for (size_t i = 0; i < n && !rc; i += l, m++) {
		trail_tok_char(s, n, i, &l, &cp);
		at[m] = (uint32_t)i;
		id[m] = trail_tok_lookup(t, s + i, l);
	}
	if (!rc && m) {
		at[m] = (uint32_t)n;
		rc = trail_tok_bpe(t, id, nx, m);
	}
	if (!rc)
		rc = ids_room(o, n + 1);
	for (int32_t k = 0; !rc && (size_t)k < m; k = nx[k]) {
		if (id[k] >= 0) {
			o->p[o->n++] = id[k];
			continue;
		}
		size_t a = at[k], b = at[nx[k]], j; /* a character with no token */
		for (j = a; t->byte_fallback && j < b && t->fallback[s[j]] >= 0; j++)
			;
		if (t->byte_fallback && j == b) {
			for (j = a; j < b; j++)
				o->p[o->n++] = t->fallback[s[j]];
		} else if (t->unk >= 0 && !(t->fuse_unk && o->n && o->p[o->n - 1] == t->unk)) {
			o->p[o->n++] = t->unk;
		}
	}
	trail_free(at);
	trail_free(id);
	trail_free(nx);
	return rc;
}

/* One section of text between added tokens: normalise, then BPE. */
static int section(const trail_tokenizer *t, const uint8_t *s, size_t n, ids_out *o, trail_error *err)
{
	uint8_t *norm = NULL, *sp = NULL;
	size_t nn = n;
	int rc = TRAIL_OK;
	if (!n)
		return TRAIL_OK;
	if (t->nfc) {
		size_t i = 0;
		while (i < n && s[i] < 0xCC) /* below U+0300 all is NFC already */
			i++;
		if (i < n) {
			if (trail_uc_nfc(s, n, &norm, &nn))
				return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			s = norm;
		}
	}
	if (t->kind == TK_HF_BPE) {
		if (!(rc = ids_room(o, nn)))
			rc = trail_tok_bytelevel(t, s, nn, o->p, &o->n, err);
		else
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	} else {
		/* prepend a space; U+2581 in the text is a space too */
		if (!(sp = trail_malloc(nn + 1))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		} else {
			size_t k = 0;
			sp[k++] = ' ';
			for (size_t i = 0; i < nn;)
				if (i + 3 <= nn && !memcmp(s + i, METASPACE, 3))
					sp[k++] = ' ', i += 3;
				else
					sp[k++] = s[i++];
			if (sp_word(t, sp, k, o))
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
	}
	trail_free(norm);
	trail_free(sp);
	return rc;
}

/* The added token that starts at s[i], longest first; NULL when none. */
static const tok_added *added_at(const trail_tokenizer *t, const uint8_t *s, size_t n, size_t i, int special)
{
	for (uint32_t j = t->added_first[s[i]]; j < t->added_first[s[i] + 1]; j++) {
		const tok_added *a = &t->added[j];
		if (a->len <= n - i && (special || !a->special) && !memcmp(t->text + a->off, s + i, a->len))
			return a;
	}
	return NULL;
}

int trail_hf_encode(const trail_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids,
		    size_t *n, trail_error *err)
{
	const uint8_t *s = (const uint8_t *)text;
	ids_out o = {0};
	int rc = ids_room(&o, len + 2) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
	int add = (flags & TRAIL_TOKENIZE_ADD) != 0;
	if (!rc && add && t->add_first >= 0)
		o.p[o.n++] = t->add_first;
	size_t from = 0;
	for (size_t i = 0; i < len && !rc;) {
		const tok_added *a = t->added_first[s[i]] < t->added_first[s[i] + 1]
					     ? added_at(t, s, len, i, (flags & TRAIL_TOKENIZE_SPECIAL) != 0)
					     : NULL;
		if (!a) {
			i++;
			continue;
		}
		size_t end = i, l;
		uint32_t cp;
		if (a->lstrip) { /* the section before loses its trailing whitespace (ECMAScript's trimEnd) */
			end = from;
			for (size_t k = from; k < i; k += l)
				if (trail_tok_char(s, i, k, &l, &cp) != TRAIL_UC_SPACE)
					end = k + l;
		}
		if ((rc = section(t, s + from, end - from, &o, err)))
			break;
		if (ids_room(&o, 1)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			break;
		}
		o.p[o.n++] = a->id;
		i += a->len;
		while (a->rstrip && i < len && trail_tok_char(s, len, i, &l, &cp) == TRAIL_UC_SPACE)
			i += l;
		from = i;
	}
	if (!rc)
		rc = section(t, s + from, len - from, &o, err);
	if (!rc && add && t->add_last >= 0) {
		if (ids_room(&o, 1))
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		else
			o.p[o.n++] = t->add_last;
	}
	if (rc) {
		trail_free(o.p);
		return rc;
	}
	*ids = o.p;
	*n = o.n;
	return TRAIL_OK;
}

int trail_hf_save(const trail_tokenizer *t, const char *dir, trail_error *err)
{
	char *p = trail_path(dir, "tokenizer.json"), *c = trail_path(dir, "tokenizer_config.json");
	int rc = p && c ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!rc)
		rc = trail_write_atomic(p, t->json, t->json_len, 0644, err);
	if (!rc && t->config)
		rc = trail_write_atomic(c, t->config, t->config_len, 0644, err);
	trail_free(p);
	trail_free(c);
	return rc;
}

/* ---- the interface ---- */

int trail_tokenizer_load(const char *spec, trail_tokenizer **out, trail_error *err)
{
	struct stat st;
	*out = NULL;
	if (!strcmp(spec, "bytes"))
		return trail_tokenizer_bytes(out) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
	if (stat(spec, &st) == 0 && S_ISREG(st.st_mode) && trail_gguf_is(spec)) { /* a GGUF file's own */
		trail_gguf *g;
		int rc = trail_gguf_open(spec, &g, err);
		if (!rc)
			rc = trail_gguf_tokenizer(g, out, err);
		trail_gguf_free(g);
		return rc;
	}
	if (stat(spec, &st) == 0 && S_ISREG(st.st_mode)) { /* a tokenizer.json itself */
		char *dir = trail_malloc(strlen(spec) + 2), *sl;
		if (!dir)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		strcpy(dir, spec);
		if ((sl = strrchr(dir, '/')))
			sl[sl == dir] = 0;
		else
			strcpy(dir, ".");
		int rc = trail_hf_load(spec, dir, out, err);
		trail_free(dir);
		return rc;
	}
	char *p;
	/* GPT-2's own files win over a tokenizer.json beside them, as they always have */
	if (trail_path_first(spec, "vocab.json", "encoder.json", &p))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (p) {
		trail_free(p);
		return trail_tok_gpt2_load(spec, out, err);
	}
	if (!(p = trail_path(spec, "tokenizer.json")))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	void *b;
	size_t n;
	int rc = trail_read_file(p, 4096, &b, &n, NULL);
	if (rc == TRAIL_ENOMEM) {
		trail_free(p);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	if (rc == TRAIL_OK) {
		int bytes = strstr(b, "\"bytes\"") != NULL;
		trail_free(b);
		if (bytes) {
			trail_free(p);
			return trail_tokenizer_bytes(out) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
		}
	}
	if (stat(p, &st) == 0) {
		rc = trail_hf_load(p, spec, out, err);
		trail_free(p);
		return rc;
	}
	trail_free(p);
	return trail_error_at(err, TRAIL_ENOINPUT, spec, 0,
			      "no tokenizer here (tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe)");
}

int trail_tokenizer_save(const trail_tokenizer *t, const char *dir, trail_error *err)
{
	static const char text[] = "{\"type\":\"bytes\",\"vocab_size\":257,\"eot\":256}\n";
	if (t->kind == TK_GPT2)
		return trail_tok_gpt2_save(t, dir, err);
	if (t->kind == TK_HF_BPE || t->kind == TK_HF_SP)
		return trail_hf_save(t, dir, err);
	char *p = trail_path(dir, "tokenizer.json");
	int rc = p ? trail_write_atomic(p, text, sizeof text - 1, 0644, err) : TRAIL_ENOMEM;
	trail_free(p);
	return rc;
}

void trail_tokenizer_free(trail_tokenizer *t)
{
	trail_tok_release(t);
}

const char *trail_tokenizer_kind(const trail_tokenizer *t)
{
	static const char *const name[] = {"bytes", "gpt2", "bpe", "sentencepiece"};
	return name[t->kind];
}

size_t trail_tokenizer_vocab_size(const trail_tokenizer *t)
{
	return t->kind == TK_BYTES ? 257 : t->n_vocab;
}

int32_t trail_tokenizer_eot(const trail_tokenizer *t)
{
	return t->kind == TK_BYTES ? 256 : t->eot;
}

int32_t trail_tokenizer_bos(const trail_tokenizer *t)
{
	return t->kind == TK_HF_BPE || t->kind == TK_HF_SP ? t->bos : -1;
}

int trail_tokenizer_encode_ex(const trail_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids,
			      size_t *n, trail_error *err)
{
	*n = 0;
	*ids = NULL;
	if (t->kind == TK_HF_BPE || t->kind == TK_HF_SP)
		return trail_hf_encode(t, text, len, flags, ids, n, err);
	/* never more ids than bytes */
	*ids = trail_malloc((len ? len : 1) * sizeof **ids);
	if (!*ids)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (t->kind == TK_GPT2) {
		int rc = trail_tok_bytelevel(t, (const uint8_t *)text, len, *ids, n, err);
		if (rc) {
			trail_free(*ids);
			*ids = NULL;
			*n = 0;
			return rc;
		}
		if (*n < len / 2) { /* give back what typical text leaves unused */
			int32_t *p = trail_realloc(*ids, (*n ? *n : 1) * sizeof **ids);
			if (p)
				*ids = p;
		}
		return TRAIL_OK;
	}
	for (size_t i = 0; i < len; i++)
		(*ids)[i] = (unsigned char)text[i];
	*n = len;
	return TRAIL_OK;
}

int trail_tokenizer_encode(const trail_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
			   trail_error *err)
{
	return trail_tokenizer_encode_ex(t, text, len, 0, ids, n, err);
}

int trail_tokenizer_decode(const trail_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len,
			   trail_error *err)
{
	size_t total = 0, k = 0, tl;
	for (size_t i = 0; i < n; i++)
		if (trail_tokenizer_token(t, ids[i], &tl))
			total += tl;
	char *s = trail_malloc(total + 1);
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		const char *p = trail_tokenizer_token(t, ids[i], &tl);
		if (p) {
			memcpy(s + k, p, tl);
			k += tl;
		}
	}
	if (t->strip_space && k && s[0] == ' ')
		memmove(s, s + 1, k--);
	s[k] = 0;
	*text = s;
	*len = k;
	return TRAIL_OK;
}

const char *trail_tokenizer_token(const trail_tokenizer *t, int32_t id, size_t *len)
{
	if (t->kind == TK_BYTES) {
		if (id < 0 || id > 255)
			return NULL;
		*len = 1;
		return &t->byte[id];
	}
	if (id < 0 || (size_t)id >= t->n_vocab || !(t->flags[id] & TOK_PRESENT) || (t->flags[id] & TOK_SPECIAL) ||
	    (t->kind == TK_GPT2 && id == t->eot))
		return NULL;
	*len = t->off[id + 1] - t->off[id];
	return t->text + t->off[id];
}

/* ---- GGUF's arrays ---- */

/*
 * A GGUF tokenizer (llama.cpp's tokenizer.ggml.* arrays) is built as the
 * tokenizer.json it stands for, through the reader above, so that both give
 * the same tokenizer and the same ids:
 *
 *  "gpt2"   byte-level BPE; tokenizer.ggml.pre names the pre-tokeniser:
 *           llama-bpe (Llama-3's Split regex, ignore_merges as llama.cpp
 *           sets it), qwen2 (Qwen's regex, with Qwen's NFC normaliser) or
 *           gpt-2 (GPT-2's ByteLevel); merges "left right" by rank.
 *  "llama"  SentencePiece-style BPE with byte fallback (<0xNN> tokens):
 *           tokenizer.ggml.merges when the file has them, else the merges
 *           Hugging Face's converter derives from the scores (every split
 *           of a token into two tokens, by the token's score, highest
 *           first, then by id).
 *
 * Token types: 1 normal, 2 unknown and 3 control (added special tokens), 4
 * user-defined (added, not special), 5 unused (left out), 6 byte.
 */
enum { TT_NORMAL = 1, TT_UNKNOWN, TT_CONTROL, TT_USER, TT_UNUSED, TT_BYTE };

typedef struct sp_merge {
	float score;
	int32_t id, l, r;
} sp_merge;

static int cmp_sp_merge(const void *x, const void *y)
{
	const sp_merge *a = x, *b = y;
	if (a->score != b->score)
		return a->score > b->score ? -1 : 1;
	if (a->id != b->id)
		return a->id < b->id ? -1 : 1;
	if (a->l != b->l)
		return a->l < b->l ? -1 : 1;
	return a->r < b->r ? -1 : a->r > b->r;
}

/* SentencePiece's merges from the scores, as Hugging Face's converter derives them. */
static int sp_merges(const trail_tok_arrays *a, const json_t *vocab, json_t *merges)
{
	size_t cap = 0, n = 0;
	sp_merge *v = NULL;
	char *buf = NULL;
	size_t bl = 0;
	int rc = TRAIL_OK;
	for (size_t i = 0; i < a->n && !rc; i++) {
		if (a->type[i] != TT_NORMAL)
			continue;
		const char *s = a->tok[i];
		size_t len = strlen(s);
		if (len + 1 > bl) {
			char *nb = trail_realloc(buf, bl = 2 * len + 2);
			if (!nb) {
				rc = TRAIL_ENOMEM;
				break;
			}
			buf = nb;
		}
		for (size_t k = 1; k < len; k++) {
			if (((uint8_t)s[k] & 0xc0) == 0x80) /* split between characters only */
				continue;
			memcpy(buf, s, k);
			buf[k] = 0;
			json_t *l = json_object_get(vocab, buf), *r = json_object_get(vocab, s + k);
			if (!l || !r)
				continue;
			if (n == cap) {
				sp_merge *nv = trail_realloc(v, (cap = cap ? 2 * cap : 1024) * sizeof *v);
				if (!nv) {
					rc = TRAIL_ENOMEM;
					break;
				}
				v = nv;
			}
			v[n++] = (sp_merge){a->score ? a->score[i] : 0, (int32_t)i, (int32_t)json_integer_value(l),
					    (int32_t)json_integer_value(r)};
		}
	}
	if (!rc) {
		qsort(v, n, sizeof *v, cmp_sp_merge);
		for (size_t i = 0; i < n && !rc; i++)
			if (json_array_append_new(merges, json_pack("[s,s]", a->tok[v[i].l], a->tok[v[i].r])))
				rc = TRAIL_ENOMEM;
	}
	trail_free(v);
	trail_free(buf);
	return rc;
}

static json_t *template_json(const trail_tok_arrays *a)
{
	json_t *single = json_array();
	if (a->add_bos && a->bos >= 0)
		json_array_append_new(single, json_pack("{s:{s:s, s:i}}", "SpecialToken", "id", a->tok[a->bos], "type_id", 0));
	json_array_append_new(single, json_pack("{s:{s:s, s:i}}", "Sequence", "id", "A", "type_id", 0));
	if (a->add_eos && a->eos >= 0)
		json_array_append_new(single, json_pack("{s:{s:s, s:i}}", "SpecialToken", "id", a->tok[a->eos], "type_id", 0));
	return json_pack("{s:s, s:o}", "type", "TemplateProcessing", "single", single);
}

int trail_hf_from_arrays(const trail_tok_arrays *a, const char *file, trail_tokenizer **out, trail_error *err)
{
	static const char META[] = "\xe2\x96\x81";
	json_t *vocab = json_object(), *added = json_array(), *merges = json_array(), *root = NULL, *cfg = NULL;
	char *tj = NULL, *cj = NULL;
	size_t tl = 0, cl = 0;
	int rc = TRAIL_OK, bytes = 0;
	*out = NULL;
	if (!vocab || !added || !merges) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < a->n && !rc; i++) {
		const char *s = a->tok[i];
		int ty = a->type[i];
		if (ty == TT_UNUSED)
			continue;
		if (ty < TT_NORMAL || ty > TT_BYTE) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0, "token %zu has token type %d (1 to 6)", i, ty);
			break;
		}
		if (!*s) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0, "token %zu is empty", i);
			break;
		}
		if (ty == TT_UNKNOWN || ty == TT_CONTROL || ty == TT_USER) {
			json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i, "content", s,
							       "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
							       "special", ty != TT_USER));
			continue;
		}
		bytes |= ty == TT_BYTE;
		if (json_object_get(vocab, s)) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0, "token %zu \"%s\" appears twice", i, s);
			break;
		}
		if (!trail_utf8_valid(s, strlen(s))) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0, "token %zu is not UTF-8", i);
			break;
		}
		json_object_set_new(vocab, s, json_integer((json_int_t)i));
	}
	if (rc)
		goto out;
	for (size_t i = 0; i < a->n_merges; i++) {
		if (!trail_utf8_valid(a->merge[i], strlen(a->merge[i]))) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0, "merge %zu is not UTF-8", i);
			goto out;
		}
		json_array_append_new(merges, json_string(a->merge[i]));
	}
	json_t *model = json_pack("{s:s, s:O, s:O, s:n, s:n, s:n}", "type", "BPE", "vocab", vocab, "merges", merges, "dropout",
				  "continuing_subword_prefix", "end_of_word_suffix");
	root = json_pack("{s:o, s:O, s:n, s:n, s:n, s:n}", "model", model, "added_tokens", added, "normalizer", "pre_tokenizer",
			 "post_processor", "decoder");
	cfg = json_object();
	if (!model || !root || !cfg) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if (a->sp) {
		if (!a->n_merges && (rc = sp_merges(a, vocab, json_object_get(model, "merges")))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		json_object_set_new(root, "normalizer",
				    json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}, s:s}]}", "type", "Sequence", "normalizers", "type",
					      "Prepend", "prepend", META, "type", "Replace", "pattern", "String", " ", "content", META));
		json_object_set_new(root, "decoder",
				    json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]}", "type",
					      "Sequence", "decoders", "type", "Replace", "pattern", "String", META, "content", " ",
					      "type", "ByteFallback", "type", "Fuse", "type", "Strip", "content", " ", "start", 1,
					      "stop", 0));
		json_object_set_new(model, "byte_fallback", json_boolean(bytes));
		json_object_set_new(model, "fuse_unk", json_true());
		if (a->unk >= 0)
			json_object_set_new(model, "unk_token", json_string(a->tok[a->unk]));
	} else {
		const char *re = NULL;
		if (!a->n_merges) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0, "a gpt2 tokenizer without tokenizer.ggml.merges");
			goto out;
		}
		if (!strcmp(a->pre, "llama-bpe") || !strcmp(a->pre, "llama3") || !strcmp(a->pre, "llama-v3")) {
			re = RE_LLAMA3;
			json_object_set_new(model, "ignore_merges", json_true());
		} else if (!strcmp(a->pre, "qwen2")) {
			re = RE_QWEN;
			json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFC"));
		} else if (strcmp(a->pre, "gpt-2") && strcmp(a->pre, "gpt2")) {
			rc = trail_error_at(err, TRAIL_EDATA, file, 0,
					    "tokenizer.ggml.pre %s is not supported (llama-bpe, qwen2, gpt-2)", a->pre);
			goto out;
		}
		if (re)
			json_object_set_new(root, "pre_tokenizer",
					    json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
						      "pretokenizers", "type", "Split", "pattern", "Regex", re, "behavior", "Isolated",
						      "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
						      "use_regex", 0));
		else
			json_object_set_new(root, "pre_tokenizer",
					    json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
						      "trim_offsets", 0, "use_regex", 1));
		json_object_set_new(root, "decoder", json_pack("{s:s}", "type", "ByteLevel"));
	}
	json_object_set_new(root, "post_processor", template_json(a));
	if (a->bos >= 0)
		json_object_set_new(cfg, "bos_token", json_string(a->tok[a->bos]));
	if (a->eos >= 0)
		json_object_set_new(cfg, "eos_token", json_string(a->tok[a->eos]));
	if (a->chat_template && trail_utf8_valid(a->chat_template, strlen(a->chat_template)))
		json_object_set_new(cfg, "chat_template", json_string(a->chat_template));
	if ((rc = trail_jcs(root, &tj, &tl, err)) || (rc = trail_jcs(cfg, &cj, &cl, err)))
		goto out;
	rc = parse(tj, tl, file, NULL, cj, cl, out, err);
out:
	json_decref(vocab);
	json_decref(added);
	json_decref(merges);
	json_decref(root);
	json_decref(cfg);
	trail_free(tj);
	trail_free(cj);
	return rc;
}

/* The arrays of a tokenizer read from tokenizer.json, for V tokens (the model's vocabulary). */
int trail_hf_to_arrays(const trail_tokenizer *t, size_t V, trail_tok_arrays *a, trail_error *err)
{
	json_t *root = NULL, *cfg = NULL;
	json_error_t je;
	int rc = TRAIL_OK;
	memset(a, 0, sizeof *a);
	if (t->kind != TK_HF_BPE && t->kind != TK_HF_SP)
		return trail_error_set(err, TRAIL_EUSAGE, "GGUF: only tokenizer.json tokenizers are written (this one is %s)",
				       trail_tokenizer_kind(t));
	if (t->n_vocab > V)
		return trail_error_set(err, TRAIL_EUSAGE, "GGUF: the tokenizer has %zu tokens, the model %zu", t->n_vocab, V);
	a->sp = t->kind == TK_HF_SP;
	/* what GGUF cannot say is refused rather than lost */
	const char *why = NULL;
	if (a->sp && (!t->strip_space || !t->fuse_unk || t->nfc || t->ignore_merges))
		why = "a SentencePiece tokenizer other than Llama-2's (decoder Strip, fuse_unk, no NFC, merges)";
	else if (!a->sp && (t->nfc != (t->pre == TK_PRE_QWEN) || t->ignore_merges != (t->pre == TK_PRE_LLAMA3)))
		why = "NFC other than with Qwen's pre-tokeniser, or ignore_merges other than with Llama-3's";
	for (size_t i = 0; !why && i < t->n_added; i++)
		if (t->added[i].lstrip || t->added[i].rstrip)
			why = "added tokens with lstrip or rstrip";
	if (!why && (t->add_first >= 0 && t->add_first != t->bos))
		why = "a post-processor that adds a token other than BOS first";
	if (!why && (t->add_last >= 0 && t->add_last != t->eos))
		why = "a post-processor that adds a token other than EOS last";
	if (why)
		return trail_error_set(err, TRAIL_EUSAGE, "GGUF cannot hold this tokenizer: %s", why);
	if (!(root = json_loadb(t->json, t->json_len, 0, &je)))
		return trail_error_set(err, TRAIL_EDATA, "tokenizer.json: %s", je.text);
	if (t->config && !(cfg = json_loadb(t->config, t->config_len, JSON_DECODE_INT_AS_REAL, &je))) {
		json_decref(root);
		return trail_error_set(err, TRAIL_EDATA, "tokenizer_config.json: %s", je.text);
	}
	const json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab"),
		     *merges = json_object_get(model, "merges"), *added = json_object_get(root, "added_tokens"), *v;
	a->n = V;
	a->pre = trail_strdup(t->pre == TK_PRE_LLAMA3 ? "llama-bpe" : t->pre == TK_PRE_QWEN ? "qwen2" : "gpt-2");
	a->tok = trail_calloc(V + 1, sizeof *a->tok);
	a->type = trail_calloc(V + 1, sizeof *a->type);
	a->score = a->sp ? trail_calloc(V + 1, sizeof *a->score) : NULL;
	a->merge = trail_calloc(json_array_size(merges) + 1, sizeof *a->merge);
	if (!a->pre || !a->tok || !a->type || (a->sp && !a->score) || !a->merge)
		goto oom;
	const char *k;
	size_t i;
	json_object_foreach((json_t *)vocab, k, v) {
		size_t id = (size_t)json_integer_value(v);
		if (!a->tok[id] && !(a->tok[id] = trail_strdup(k)))
			goto oom;
		a->type[id] = a->sp && (t->flags[id] & TOK_LITERAL) ? TT_BYTE : TT_NORMAL;
	}
	json_array_foreach(added, i, v) {
		size_t id = (size_t)json_integer_value(json_object_get(v, "id"));
		trail_free(a->tok[id]);
		if (!(a->tok[id] = trail_strdup(json_string_value(json_object_get(v, "content")))))
			goto oom;
		a->type[id] = (int32_t)id == t->unk && a->sp ? TT_UNKNOWN
			      : json_is_true(json_object_get(v, "special")) ? TT_CONTROL : TT_USER;
	}
	for (i = 0; i < V; i++)
		if (!a->tok[i]) { /* the model's rows past the tokenizer: llama.cpp's padding tokens */
			char b[32];
			snprintf(b, sizeof b, "[PAD%zu]", i);
			if (!(a->tok[i] = trail_strdup(b)))
				goto oom;
			a->type[i] = TT_UNUSED;
		}
	json_array_foreach(merges, i, v) {
		const char *l = NULL, *r = NULL;
		size_t ll = 0;
		if (json_is_string(v)) {
			l = json_string_value(v);
			const char *sp = strchr(l, ' ');
			ll = sp ? (size_t)(sp - l) : 0;
			r = sp ? sp + 1 : NULL;
		} else if (json_is_array(v)) {
			l = json_string_value(json_array_get(v, 0)), r = json_string_value(json_array_get(v, 1));
			ll = l ? strlen(l) : 0;
		}
		char *m = l && r ? trail_malloc(ll + strlen(r) + 2) : NULL;
		if (!m)
			goto oom;
		memcpy(m, l, ll);
		m[ll] = ' ';
		strcpy(m + ll + 1, r);
		a->merge[a->n_merges++] = m;
		if (a->sp) { /* llama.cpp merges by score: a merged token scores minus (1 + its first rank) */
			memmove(m + ll, m + ll + 1, strlen(r) + 1);
			json_t *id = json_object_get(vocab, m);
			if (id && a->score[json_integer_value(id)] == 0)
				a->score[json_integer_value(id)] = -(float)(i + 1);
			memmove(m + ll + 1, m + ll, strlen(r) + 1);
			m[ll] = ' ';
		}
	}
	a->bos = t->bos;
	a->eos = t->eos;
	a->unk = t->unk;
	a->add_bos = t->add_first >= 0;
	a->add_eos = t->add_last >= 0;
	const char *ct = json_string_value(json_object_get(cfg, "chat_template"));
	if (ct && !(a->chat_template = trail_strdup(ct)))
		goto oom;
	goto out;
oom:
	rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	trail_tok_arrays_release(a);
out:
	json_decref(root);
	json_decref(cfg);
	return rc;
}

int trail_gguf_tokenizer(const trail_gguf *g, trail_tokenizer **out, trail_error *err)
{
	trail_tok_arrays a = {0};
	*out = NULL;
	int rc = trail_gguf_tok_arrays(g, &a, err);
	if (!rc)
		rc = trail_hf_from_arrays(&a, trail_gguf_path(g), out, err);
	trail_tok_arrays_release(&a);
	return rc;
}
