/*
 * Tokenizers from tokenizer.json: the small byte-level (Llama-3 regex, NFC,
 * added tokens) and SentencePiece-style (byte fallback) files in
 * tests/data/hf-bpe and tests/data/hf-sp, NFC, and the pre-tokeniser.
 *
 * With TRAIL_HF_REFERENCE=DIR and TRAIL_HF_NAMES="a b ..."
 * (tests/cli/hf-tokenizer.sh): DIR/corpus.ndjson holds one JSON string a
 * line; DIR/NAME/ a tokenizer.json and tokenizer_config.json, ids.ndjson
 * (tests/reference/hf_encode.js's output for each string) and time.txt
 * ("SECONDS BYTES": the reference encoding the corpus). Every id is
 * compared, with and without BOS/EOS, and every string the reference
 * decodes back is decoded back here too; the count of matching strings and
 * both encoders' speed are printed.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "tap.h"
#include "model/model.h"
#include "model/model_int.h"

static const char *top(void)
{
	const char *t = getenv("TRAIL_TOP");
	return t ? t : ".";
}

static int same(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
	return na == nb && (!na || !memcmp(a, b, na * sizeof *a));
}

static void show(const char *what, const int32_t *ids, size_t n)
{
	printf("#   %s:", what);
	for (size_t i = 0; i < n && i < 40; i++)
		printf(" %d", ids[i]);
	printf("%s\n", n > 40 ? " ..." : "");
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* encode_ex gives want (n ids, -1 ends) */
static int enc_is(const trail_tokenizer *t, const char *s, size_t len, unsigned flags, const int32_t *want)
{
	int32_t *ids;
	size_t n, nw = 0;
	while (want[nw] >= 0)
		nw++;
	if (trail_tokenizer_encode_ex(t, s, len, flags, &ids, &n, NULL))
		return 0;
	int r = same(ids, n, want, nw);
	if (!r)
		show("got", ids, n);
	trail_free(ids);
	return r;
}

static int round_trips(const trail_tokenizer *t, const char *s, size_t len, unsigned flags)
{
	int32_t *ids;
	size_t n, l;
	char *back;
	if (trail_tokenizer_encode_ex(t, s, len, flags, &ids, &n, NULL))
		return 0;
	int r = !trail_tokenizer_decode(t, ids, n, &back, &l, NULL) && l == len && !memcmp(back, s, len);
	if (r)
		trail_free(back);
	trail_free(ids);
	return r;
}

static void reference(const char *dir, const char *names)
{
	char path[4200], name[256];
	void *cb = NULL;
	size_t cl;
	snprintf(path, sizeof path, "%s/corpus.ndjson", dir);
	if (!ok(!trail_read_file(path, (size_t)1 << 30, &cb, &cl, NULL), "read %s", path))
		return;
	for (const char *p = names; *p;) {
		size_t k = strcspn(p, " ");
		snprintf(name, sizeof name, "%.*s", (int)k, p);
		p += k;
		p += strspn(p, " ");
		if (!*name)
			continue;
		trail_error e = {0};
		trail_tokenizer *t;
		snprintf(path, sizeof path, "%s/%s", dir, name);
		if (!ok(!trail_tokenizer_load(path, &t, &e), "%s: load %s: %s", name, path, e.msg))
			continue;
		void *ib = NULL, *tb = NULL;
		size_t il, tl;
		snprintf(path, sizeof path, "%s/%s/ids.ndjson", dir, name);
		if (!ok(!trail_read_file(path, (size_t)1 << 30, &ib, &il, NULL), "read %s", path)) {
			trail_tokenizer_free(t);
			continue;
		}
		double js_s = 0, js_b = 0;
		snprintf(path, sizeof path, "%s/%s/time.txt", dir, name);
		if (!trail_read_file(path, 1 << 10, &tb, &tl, NULL)) {
			sscanf(tb, "%lf %lf", &js_s, &js_b);
			trail_free(tb);
		}
		size_t strings = 0, matched = 0, matched_add = 0, rt_want = 0, rt_ok = 0, bytes = 0, shown = 0;
		double secs = 0;
		char *cs = cb, *is = ib, *ce = cs + cl, *ie = is + il;
		while (cs < ce && is < ie) {
			char *cn = memchr(cs, '\n', (size_t)(ce - cs)), *in = memchr(is, '\n', (size_t)(ie - is));
			if (!cn)
				cn = ce;
			if (!in)
				in = ie;
			json_t *js = json_loadb(cs, (size_t)(cn - cs), JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL),
			       *ji = json_loadb(is, (size_t)(in - is), 0, NULL);
			cs = cn + 1;
			is = in + 1;
			if (!json_is_string(js) || !json_is_object(ji)) {
				json_decref(js);
				json_decref(ji);
				continue;
			}
			const char *s = json_string_value(js);
			size_t len = json_string_length(js);
			int32_t *got = NULL, *want[2];
			size_t n, nw[2];
			for (int a = 0; a < 2; a++) {
				json_t *arr = json_object_get(ji, a ? "add" : "ids"), *v;
				size_t i;
				nw[a] = json_array_size(arr);
				want[a] = malloc((nw[a] + 1) * sizeof **want);
				json_array_foreach(arr, i, v) want[a][i] = (int32_t)json_integer_value(v);
			}
			double t0 = now();
			int rc = trail_tokenizer_encode_ex(t, s, len, TRAIL_TOKENIZE_SPECIAL, &got, &n, NULL);
			secs += now() - t0;
			if (!rc && same(got, n, want[0], nw[0])) {
				matched++;
			} else if (shown++ < 3) {
				printf("# %s: string %zu differs: %.*s\n", name, strings, (int)(len < 200 ? len : 200), s);
				show("want", want[0], nw[0]);
				show("got", got, rc ? 0 : n);
			}
			if (json_is_true(json_object_get(ji, "rt"))) {
				rt_want++;
				char *back;
				size_t bl;
				if (!rc && !trail_tokenizer_decode(t, got, n, &back, &bl, NULL)) {
					rt_ok += bl == len && !memcmp(back, s, len);
					trail_free(back);
				}
			}
			trail_free(got);
			if (!trail_tokenizer_encode_ex(t, s, len, TRAIL_TOKENIZE_SPECIAL | TRAIL_TOKENIZE_ADD, &got, &n, NULL)) {
				matched_add += same(got, n, want[1], nw[1]);
				trail_free(got);
			}
			strings++;
			bytes += len;
			free(want[0]);
			free(want[1]);
			json_decref(js);
			json_decref(ji);
		}
		printf("# %s: %zu of %zu strings match the reference's ids (%zu with BOS/EOS added); "
		       "%zu of %zu that the reference decodes back decode back\n",
		       name, matched, strings, matched_add, rt_ok, rt_want);
		printf("# %s: encode %.2f MB/s here, the reference %.2f MB/s on the same %zu bytes (%.1fx)\n", name,
		       secs > 0 ? bytes / secs / 1e6 : 0, js_s > 0 ? js_b / js_s / 1e6 : 0, bytes,
		       js_s > 0 && secs > 0 ? (bytes / secs) / (js_b / js_s) : 0);
		ok(strings >= 10000, "%s: at least 10,000 strings (%zu)", name, strings);
		ok(matched == strings, "%s: every string's ids are the reference's (%zu differ)", name, strings - matched);
		ok(matched_add == strings, "%s: with BOS/EOS too (%zu differ)", name, strings - matched_add);
		ok(rt_ok == rt_want, "%s: decode(encode(s)) == s wherever the reference's is (%zu not)", name, rt_want - rt_ok);
		trail_free(ib);
		trail_tokenizer_free(t);
	}
	trail_free(cb);
}

int main(void)
{
	const char *ref = getenv("TRAIL_HF_REFERENCE");
	if (ref && *ref) {
		const char *names = getenv("TRAIL_HF_NAMES");
		reference(ref, names ? names : "");
		printf("1..%d\n", tap_n);
		return tap_failed != 0;
	}
	char dir[4096], tmp[] = "/tmp/trail-hftok.XXXXXX";
	trail_error e = {0};
	trail_tokenizer *t = NULL;

	/* NFC */
	static const struct {
		const char *in, *out;
	} nfc[] = {
		{"e\xcc\x81", "\xc3\xa9"},                       /* e + acute */
		{"a\xcc\xa3\xcc\x88", "\xe1\xba\xa1\xcc\x88"},   /* a + dot below + diaeresis: reordered, composed */
		{"a\xcc\x88\xcc\xa3", "\xe1\xba\xa1\xcc\x88"},   /* the other order, the same */
		{"\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81"}, /* Hangul L V T */
		{"\xe2\x84\xa6", "\xce\xa9"},                     /* OHM SIGN, a singleton */
		{"\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc"},     /* DEVANAGARI QA: excluded from composition */
		{"x\xffy\xcc\x81", "x\xff\xc3\xbd"},               /* an invalid byte passes through */
		{"\xcc\x81\xcc\x81", "\xcc\x81\xcc\x81"},         /* marks without a starter */
	};
	for (size_t i = 0; i < sizeof nfc / sizeof *nfc; i++) {
		uint8_t *o;
		size_t on;
		size_t n = strlen(nfc[i].in);
		ok(!trail_uc_nfc((const uint8_t *)nfc[i].in, n, &o, &on) && on == strlen(nfc[i].out) &&
			   !memcmp(o, nfc[i].out, on),
		   "NFC case %zu", i);
		trail_free(o);
	}

	/* byte-level: Llama-3's regex, NFC, ignore_merges, added tokens */
	snprintf(dir, sizeof dir, "%s/tests/data/hf-bpe", top());
	if (!ok(!trail_tokenizer_load(dir, &t, &e), "load tests/data/hf-bpe: %s", e.msg))
		return 1;
	ok(!strcmp(trail_tokenizer_kind(t), "bpe") && trail_tokenizer_vocab_size(t) == 270 &&
		   trail_tokenizer_bos(t) == 266 && trail_tokenizer_eot(t) == 267,
	   "kind bpe, 270 tokens, BOS 266 and EOS 267 from tokenizer_config.json");
	ok(enc_is(t, "hello world", 11, 0, (const int32_t[]){259, 264, -1}), "hello world");
	ok(enc_is(t, "hello world", 11, TRAIL_TOKENIZE_ADD, (const int32_t[]){259, 264, -1}),
	   "nothing added: the post-processor is ByteLevel, whatever add_bos_token says");
	ok(enc_is(t, "12345", 5, 0, (const int32_t[]){265, '3', '4', '5', -1}), "digits in threes: 123 45");
	ok(enc_is(t, "<|bos|>he", 9, TRAIL_TOKENIZE_SPECIAL, (const int32_t[]){266, 256, -1}),
	   "a special token split out when asked");
	ok(enc_is(t, "<|bos|>", 7, 0, (const int32_t[]){'<', '|', 'b', 'o', 's', '|', '>', -1}),
	   "and encoded as text when not");
	ok(enc_is(t, "a<xy>b<x>", 9, 0, (const int32_t[]){'a', 269, 'b', 268, -1}),
	   "added tokens split out always, longest first");
	ok(enc_is(t, "e\xcc\x81", 3, 0, (const int32_t[]){0xc3, 0xa9, -1}), "NFC before BPE");
	ok(enc_is(t, "'S's\n\n x", 8, 0, (const int32_t[]){'\'', 'S', '\'', 's', '\n', '\n', ' ', 'x', -1}),
	   "contractions any case, a newline run");
	static const char *const rt[] = {"hello world", "  x\n\n  y \t", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac",
					 "\xff\xfe bad \xc0\x80", "<|eos|><x>"};
	for (size_t i = 0; i < sizeof rt / sizeof *rt; i++)
		ok(round_trips(t, rt[i], strlen(rt[i]), 0), "byte-level round trip %zu", i);
	int32_t sp_ids[] = {266, 259, 267, 268};
	char *text;
	size_t tl;
	ok(!trail_tokenizer_decode(t, sp_ids, 4, &text, &tl, &e) && tl == 8 && !memcmp(text, "hello<x>", 8),
	   "decode skips special tokens, keeps other added ones");
	trail_free(text);
	if (mkdtemp(tmp)) {
		trail_tokenizer *t2 = NULL;
		ok(!trail_tokenizer_save(t, tmp, &e) && !trail_tokenizer_load(tmp, &t2, &e) && t2 &&
			   enc_is(t2, "hello world", 11, TRAIL_TOKENIZE_SPECIAL, (const int32_t[]){259, 264, -1}),
		   "saved and loaded again: %s", e.msg);
		trail_tokenizer_free(t2);
		char path[4200];
		snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
		ok(!trail_tokenizer_load(path, &t2, &e) && trail_tokenizer_bos(t2) == 266,
		   "loaded from the file's path, tokenizer_config.json beside it");
		trail_tokenizer_free(t2);
		snprintf(path, sizeof path, "rm -rf '%s'", tmp);
		if (system(path)) {
		}
	}
	trail_tokenizer_free(t);

	/* SentencePiece-style: U+2581, merges, byte fallback */
	snprintf(dir, sizeof dir, "%s/tests/data/hf-sp", top());
	if (!ok(!trail_tokenizer_load(dir, &t, &e), "load tests/data/hf-sp: %s", e.msg))
		return 1;
	ok(!strcmp(trail_tokenizer_kind(t), "sentencepiece") && trail_tokenizer_bos(t) == 1, "kind sentencepiece, BOS <s>");
	ok(enc_is(t, "ab", 2, 0, (const int32_t[]){266, -1}), "\"ab\" is \"\xe2\x96\x81" "ab\"");
	ok(enc_is(t, "ab ca", 5, TRAIL_TOKENIZE_ADD, (const int32_t[]){1, 266, 259, 262, 260, -1}),
	   "BOS from the template; merges by rank");
	ok(enc_is(t, "a\xc3\xa9z", 4, 0, (const int32_t[]){264, 263, 3 + 'z', -1}), "z falls back to <0x7A>");
	ok(enc_is(t, "\xe6\x97\xa5", 3, 0, (const int32_t[]){259, 3 + 0xe6, 3 + 0x97, 3 + 0xa5, -1}),
	   "a character without a token is its UTF-8 bytes");
	ok(enc_is(t, "a</s>a", 6, TRAIL_TOKENIZE_SPECIAL, (const int32_t[]){264, 2, 264, -1}),
	   "each section between added tokens gets its own U+2581");
	static const char *const srt[] = {"ab", " ab  c", "x\xffy", "caf\xc3\xa9 \xe6\x97\xa5", ""};
	for (size_t i = 0; i < sizeof srt / sizeof *srt; i++)
		ok(round_trips(t, srt[i], strlen(srt[i]), 0), "SentencePiece round trip %zu", i);
	trail_tokenizer_free(t);

	/* refusals */
	static const char *const bad[] = {
		"{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Whitespace\"}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\","
		"\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\w+\"},\"behavior\":\"Isolated\"},"
		"{\"type\":\"ByteLevel\",\"use_regex\":false}]}}",
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
	};
	char tmp2[] = "/tmp/trail-hftok.XXXXXX";
	if (mkdtemp(tmp2)) {
		char path[4200];
		snprintf(path, sizeof path, "%s/tokenizer.json", tmp2);
		for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
			trail_error be = {0};
			ok(!trail_write_atomic(path, bad[i], strlen(bad[i]), 0644, NULL) && trail_tokenizer_load(tmp2, &t, &be) &&
				   !t,
			   "refused: %s", be.msg);
		}
		snprintf(path, sizeof path, "rm -rf '%s'", tmp2);
		if (system(path)) {
		}
	}
	printf("1..%d\n", tap_n);
	return tap_failed != 0;
}
