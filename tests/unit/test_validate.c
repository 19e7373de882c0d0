/* Validation: policy files, every quality rule, PII positives and near-misses,
 * redaction, MinHash estimates, the near-duplicate index, the validator. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "tap.h"
#include "data/data_int.h"

#include <xxhash.h>

/* A paragraph that passes every default rule. */
#define GOOD                                                                                      \
	"The history of the printing press is a story of how ideas spread across the world. "     \
	"Before the press, books were copied by hand, and that made them rare and costly. "       \
	"Johannes Gutenberg combined movable metal type with an oil-based ink and a screw press. " \
	"His workshop in Mainz printed the famous Bible around 1455. Within a few decades, "      \
	"printing shops opened in many European cities. The new technology lowered the cost of "   \
	"books and helped literacy grow. Scholars could compare identical copies of a text for "   \
	"the first time."

static json_t *reasons_of(const trail_policy *p, const char *text)
{
	json_t *r = json_array();
	if (trail_quality_check(p, text, strlen(text), r))
		diag("quality check failed");
	return r;
}

/* Whether the reasons name rule (and nothing else when only is set). */
static int has_rule(const json_t *r, const char *rule, int only)
{
	size_t i;
	json_t *x;
	int found = 0;
	json_array_foreach(r, i, x)
	{
		const char *n = json_string_value(json_object_get(x, "rule"));
		if (n && !strcmp(n, rule))
			found = 1;
		else if (only)
			return 0;
	}
	return found;
}

static void show(const json_t *r)
{
	char *s = json_dumps(r, JSON_COMPACT);
	diag("reasons: %s", s);
	free(s);
}

static void test_policy(void)
{
	trail_policy *p;
	trail_error e = {0};
	json_t *j;
	ok(trail_policy_new(TRAIL_SCHEMA_TEXT, &p) == 0, "default policy");
	ok(trail_policy_enabled(p, "gopher-word-count") == 1 && trail_policy_enabled(p, "nope") == -1,
	   "rules on by default for text; unknown rule is -1");
	json_t *pj = trail_policy_to_json(p);
	ok(json_integer_value(json_object_get(json_object_get(json_object_get(pj, "rules"),
							      "gopher-word-count"), "min")) == 50,
	   "gopher-word-count.min defaults to 50");
	ok(json_real_value(json_object_get(json_object_get(json_object_get(pj, "rules"),
							   "gopher-dup-ngram"), "10")) == 0.1,
	   "gopher-dup-ngram.10 defaults to 0.10");
	trail_policy *q;
	ok(trail_policy_from_json(pj, "t", -1, &q, &e) == 0, "the printed policy parses back");
	json_t *qj = q ? trail_policy_to_json(q) : NULL;
	ok(qj && json_equal(pj, qj), "and prints the same");
	json_decref(qj);
	trail_policy_free(q);
	json_decref(pj);
	trail_policy_free(p);

	ok(trail_policy_new(TRAIL_SCHEMA_INSTRUCT, &p) == 0 &&
		   trail_policy_enabled(p, "gopher-word-count") == 0 &&
		   trail_policy_enabled(p, "pii-email") == 1,
	   "instruct: quality rules off, PII on");
	trail_policy_free(p);

	const struct {
		const char *json, *want;
	} bad[] = {
		{"{\"rulez\":{}}", "unknown key 'rulez'"},
		{"{\"rules\":{\"gopher-word-count\":{\"mn\":3}}}", "unknown key 'rules.gopher-word-count.mn'"},
		{"{\"rules\":{\"no-such-rule\":true}}", "unknown key 'rules.no-such-rule'"},
		{"{\"rules\":{\"gopher-alpha-words\":{\"min\":1.5}}}", "out of range"},
		{"{\"rules\":{\"gopher-word-count\":{\"min\":\"50\"}}}", "expected an integer"},
		{"{\"rules\":{\"schema\":false}}", "cannot be turned off"},
		{"{\"schema\":\"image\"}", "schema"},
		{"{\"rules\":{\"near-duplicate\":{\"bands\":64,\"rows\":32}}}", "bands x rows"},
		{"[]", "JSON object"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		trail_error_clear(&e);
		int rc = trail_json_parse(bad[i].json, strlen(bad[i].json), "t", &j, NULL);
		rc = rc ? rc : trail_policy_from_json(j, "t", -1, &q, &e);
		ok(rc == TRAIL_EDATA && strstr(e.msg, bad[i].want), "policy %s refused: %s", bad[i].json,
		   e.msg);
		json_decref(j);
	}
	const char *good = "{\"schema\":\"instruct\",\"redact\":true,\"rules\":{\"gopher-word-count\":"
			   "{\"min\":5},\"c4-curly-bracket\":false,\"license\":{\"required\":true,"
			   "\"allowed\":[\"CC-BY-4.0\"]}}}";
	trail_json_parse(good, strlen(good), "t", &j, NULL);
	ok(trail_policy_from_json(j, "t", -1, &q, &e) == 0 && trail_policy_schema(q) == 1 &&
		   trail_policy_redact(q) && trail_policy_enabled(q, "gopher-word-count") == 1 &&
		   trail_policy_enabled(q, "gopher-stop-words") == 0 &&
		   trail_policy_enabled(q, "c4-curly-bracket") == 0,
	   "a policy object turns a rule on; missing keys keep the schema's defaults");
	trail_policy_free(q);
	ok(trail_policy_from_json(j, "t", TRAIL_SCHEMA_TEXT, &q, &e) == 0 &&
		   trail_policy_schema(q) == 0 && trail_policy_enabled(q, "gopher-stop-words") == 1,
	   "the schema argument overrides the file and picks the defaults");
	trail_policy_free(q);
	json_decref(j);
}

static char *repeat(const char *s, int n, const char *sep)
{
	size_t a = strlen(s), b = strlen(sep);
	char *r = malloc((a + b) * (size_t)n + 1), *w = r;
	for (int i = 0; i < n; i++) {
		memcpy(w, s, a);
		w += a;
		if (i + 1 < n) {
			memcpy(w, sep, b);
			w += b;
		}
	}
	*w = 0;
	return r;
}

static void test_quality(void)
{
	trail_policy *p;
	trail_policy_new(TRAIL_SCHEMA_TEXT, &p);
	json_t *r = reasons_of(p, GOOD);
	ok(json_array_size(r) == 0, "a clean paragraph passes every quality rule");
	if (json_array_size(r))
		show(r);
	json_decref(r);

	struct {
		const char *rule;
		char *text;
	} cases[] = {
		{"gopher-word-count", strdup("The cat sat on the mat and that was all. It was good. "
					     "It was fine. It was done. It was over.")},
		{"gopher-mean-word-length", NULL},
		{"gopher-symbol-ratio", NULL},
		{"gopher-bullet-lines", NULL},
		{"gopher-ellipsis-lines", NULL},
		{"gopher-alpha-words", NULL},
		{"gopher-stop-words", NULL},
		{"gopher-dup-lines", NULL},
		{"gopher-dup-paragraphs", NULL},
		{"gopher-top-ngram", NULL},
		{"gopher-dup-ngram", NULL},
		{"c4-lorem-ipsum", NULL},
		{"c4-curly-bracket", NULL},
		{"c4-sentences", NULL},
		{"fineweb-line-punct", NULL},
		{"fineweb-short-lines", NULL},
		{"fineweb-newline-ratio", NULL},
	};
	size_t k = 1;
	/* Long words. */
	cases[k++].text = repeat("Incomprehensibilities notwithstanding, the internationalization of "
				 "counterrevolutionaries overintellectualized institutionalization and "
				 "electroencephalographically uncharacteristic disproportionality.",
				 6, " ");
	{
		/* Many hashtags. */
		char *t = malloc(4096);
		snprintf(t, 4096, "%s #one #two #three #four #five #six #seven #eight #nine #ten "
				  "#eleven #twelve #thirteen #fourteen #fifteen.", GOOD);
		cases[k++].text = t;
	}
	cases[k++].text = repeat("- the first item of the list, with the details of that item.", 20, "\n");
	cases[k++].text = repeat("And then the story goes on and on with the words of that day...", 20, "\n");
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 "
				  "26 27 28 29 30 31 32 33 34 35",
			 GOOD);
		cases[k++].text = t;
	}
	cases[k++].text = strdup(
		"A quick brown fox jumps over lazy dogs. Bright stars shine above quiet hills. "
		"Several farmers harvest golden wheat in autumn. Cold rivers carry melting snow "
		"toward distant seas. Old bridges connect small villages across deep valleys. "
		"Young musicians practice scales every morning. Tall pines sway in strong winds "
		"while birds sing. Gentle rain falls upon green meadows near ancient ruins.");
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s\nThe same line is here again and again.\nThe same line is here again "
				  "and again.\nThe same line is here again and again.\nThe same line is "
				  "here again and again.",
			 GOOD);
		cases[k++].text = t;
	}
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s\n\n%s\n\n%s", GOOD, GOOD, GOOD);
		cases[k++].text = t;
	}
	{
		char *rep = repeat("the printing press", 12, " and ");
		char *t = malloc(8192);
		snprintf(t, 8192, "%s %s.", GOOD, rep);
		free(rep);
		cases[k++].text = t;
	}
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s %s %s", GOOD,
			 "Before the press, books were copied by hand, and that made them rare and costly.",
			 "Johannes Gutenberg combined movable metal type with an oil-based ink and a screw press.");
		cases[k++].text = t;
	}
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s Lorem ipsum dolor sit amet.", GOOD);
		cases[k++].text = t;
	}
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s The code was {x = 1}.", GOOD);
		cases[k++].text = t;
	}
	cases[k++].text = repeat("the printing press changed how people shared ideas with each other "
				 "and that mattered a lot for the spread of learning in Europe",
				 2, "\n");
	{
		/* Lines without punctuation, wrapped. */
		char *t = strdup(GOOD);
		for (char *c = t; *c; c++)
			if (*c == '.')
				*c = ',';
		cases[k++].text = t;
	}
	{
		char *t = malloc(8192);
		snprintf(t, 8192, "%s\nA.\nB.\nC.\nD.\nE.\nF.\nG.\nH.\nI.\nJ.\nK.\nL.\nM.\nN.\nO.\nP.\nQ.", GOOD);
		cases[k++].text = t;
	}
	{
		char *t = strdup(GOOD);
		int w = 0;
		for (char *c = t; *c; c++)
			if (*c == ' ' && ++w % 3 == 0)
				*c = '\n';
		cases[k++].text = t;
	}
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		r = reasons_of(p, cases[i].text);
		int found = has_rule(r, cases[i].rule, 0);
		ok(found, "%s fires", cases[i].rule);
		if (!found)
			show(r);
		json_decref(r);
		free(cases[i].text);
	}
	{
		/* Two words repeated fire the top 2-gram rule; the same words swapped do not. */
		static const char *a = "antidisestablishmentarianism", *b = "pneumonoultramicroscopicsilicovolcanoconiosis";
		char t[1024];
		snprintf(t, sizeof t, "%.256s The %s %s scholars met. Later the %s %s printers left.", GOOD, a, b, a, b);
		r = reasons_of(p, t);
		ok(has_rule(r, "gopher-top-ngram", 0), "a repeated 2-gram is found");
		json_decref(r);
		snprintf(t, sizeof t, "%.256s The %s %s scholars met. Later the %s %s printers left.", GOOD, a, b, b, a);
		r = reasons_of(p, t);
		ok(!has_rule(r, "gopher-top-ngram", 0), "n-grams are ordered: \"a b\" is not \"b a\"");
		json_decref(r);
	}
	r = reasons_of(p, "");
	ok(has_rule(r, "gopher-word-count", 0) && has_rule(r, "fineweb-line-punct", 0),
	   "an empty text fails the word count and line punctuation");
	json_decref(r);
	r = json_array();
	trail_quality_check(p, GOOD, strlen(GOOD), r);
	trail_policy_free(p);

	/* Thresholds come from the policy. */
	const char *pol = "{\"rules\":{\"gopher-word-count\":{\"min\":200}}}";
	json_t *j;
	trail_json_parse(pol, strlen(pol), "t", &j, NULL);
	trail_policy_from_json(j, "t", -1, &p, NULL);
	json_decref(r);
	r = reasons_of(p, GOOD);
	json_t *x = json_array_get(r, 0);
	ok(has_rule(r, "gopher-word-count", 1) &&
		   json_integer_value(json_object_get(x, "min")) == 200 &&
		   json_integer_value(json_object_get(x, "value")) > 50,
	   "a configured threshold is used and reported with the measured value");
	json_decref(r);
	json_decref(j);
	trail_policy_free(p);
}

static long count_kind(const char *s, int kind)
{
	trail_pii_match m[16];
	long n = trail_pii_scan(s, strlen(s), 1u << kind, m, 16);
	return n;
}

static void test_pii(void)
{
	const struct {
		int kind;
		const char *s, *match;
	} pos[] = {
		{TRAIL_PII_EMAIL, "write to jane.doe+news@mail.example.co.uk today", "jane.doe+news@mail.example.co.uk"},
		{TRAIL_PII_EMAIL, "(bob_smith@example.org).", "bob_smith@example.org"},
		{TRAIL_PII_PHONE, "call +1 415 555 2671 now", "+1 415 555 2671"},
		{TRAIL_PII_PHONE, "call (415) 555-2671.", "(415) 555-2671"},
		{TRAIL_PII_PHONE, "tel 415-555-2671", "415-555-2671"},
		{TRAIL_PII_PHONE, "tel 415.555.2671", "415.555.2671"},
		{TRAIL_PII_PHONE, "London +44 20 7946 0958", "+44 20 7946 0958"},
		{TRAIL_PII_PHONE, "London 020 7946 0958", "020 7946 0958"},
		{TRAIL_PII_PHONE, "toll free 1-800-555-0199", "1-800-555-0199"},
		{TRAIL_PII_PHONE, "mobile +4915112345678", "+4915112345678"},
		{TRAIL_PII_PHONE, "+1 (415) 555-2671", "+1 (415) 555-2671"},
		{TRAIL_PII_IP, "resolver 8.8.8.8 answered", "8.8.8.8"},
		{TRAIL_PII_IP, "connect to 93.184.216.34:443", "93.184.216.34"},
		{TRAIL_PII_IP, "http://151.101.1.69/index", "151.101.1.69"},
		{TRAIL_PII_IP, "v6 2606:4700:4700::1111 is up", "2606:4700:4700::1111"},
		{TRAIL_PII_IP, "try 2001:4860:4860::8888.", "2001:4860:4860::8888"},
		{TRAIL_PII_IP, "[2a00:1450:4001:82a::200e]:443", "2a00:1450:4001:82a::200e"},
		{TRAIL_PII_IP, "mapped ::ffff:8.8.4.4 here", "::ffff:8.8.4.4"},
		{TRAIL_PII_PRIVATE_KEY, "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nend",
		 "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"},
		{TRAIL_PII_PRIVATE_KEY, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA",
		 "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA"},
		{TRAIL_PII_PRIVATE_KEY, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
		 "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"},
		{TRAIL_PII_API_TOKEN, "aws AKIAIOSFODNN7EXAMPLE key", "AKIAIOSFODNN7EXAMPLE"},
		{TRAIL_PII_API_TOKEN, "token=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"},
		{TRAIL_PII_API_TOKEN, "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
		 "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"},
		{TRAIL_PII_API_TOKEN, "OPENAI_API_KEY=sk-proj-AbCdEf1234567890GhIjKlMnOp", "sk-proj-AbCdEf1234567890GhIjKlMnOp"},
		{TRAIL_PII_API_TOKEN, "key AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"},
		{TRAIL_PII_API_TOKEN, "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"},
		{TRAIL_PII_API_TOKEN, "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
		 "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"},
	};
	for (size_t i = 0; i < sizeof pos / sizeof *pos; i++) {
		trail_pii_match m[4];
		long n = trail_pii_scan(pos[i].s, strlen(pos[i].s), 1u << pos[i].kind, m, 4);
		int good = n == 1 && m[0].kind == pos[i].kind &&
			   m[0].end - m[0].start == strlen(pos[i].match) &&
			   !memcmp(pos[i].s + m[0].start, pos[i].match, strlen(pos[i].match));
		ok(good, "%s found: %.*s", trail_pii_rule(pos[i].kind),
		   (int)strcspn(pos[i].match, "\n"), pos[i].match);
		if (!good && n > 0)
			diag("got %ld matches, first [%zu,%zu)", n, m[0].start, m[0].end);
	}
	const char *neg[] = {
		"version 1.2.3.4 is out",    "Linux 2.6.32.71 kernel",   "build 10.0.19041.1",
		"libfoo-1.2.3.4.tar.gz",     "v1.2.3.4",                 "home router 192.168.1.1",
		"10.0.0.1 and 172.16.5.4",   "localhost 127.0.0.1",      "link 169.254.1.1",
		"docs 192.0.2.1 198.51.100.7 203.0.113.9", "carrier 100.64.1.1",
		"2001:db8::1 is for docs",   "fe80::1%eth0",             "loopback ::1",
		"unique fd00::1",            "on 2023-01-15 at 12:30:45", "15/01/2023",
		"01.02.2023",                "2024-06-30T12:00:00Z",     "MAC 00:1a:2b:3c:4d:5e",
		"std::vector<int> a::b",     "user@localhost",           "npm i pkg@1.2.3",
		"@handle and a@b",           "ISBN 978-3-16-148410-0",   "id 1234567890",
		"pi is 3.14159265358979",    "$1,234,567.89",            "order #12345678",
		"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
		"-----BEGIN CERTIFICATE-----", "AKIA is a prefix",       "use sk-learn for that",
		"ghp_short",                 "sk-this-is-a-long-hyphenated-phrase-of-words",
		"call 555-0199",             "year 1999-2004 and 12-345-6789",
		"the 3 4 5 triangle",        "chapter 4.2.1.3 page 17",  "a ratio of 1:2:3",
		"time 10:30",                "score 255.255.255.255",
	};
	for (size_t i = 0; i < sizeof neg / sizeof *neg; i++) {
		trail_pii_match m[4];
		long n = trail_pii_scan(neg[i], strlen(neg[i]), 0x1f, m, 4);
		ok(n == 0, "near-miss not reported: %.*s", (int)strcspn(neg[i], "\n"), neg[i]);
		if (n > 0)
			diag("reported as %s: [%zu,%zu)", trail_pii_rule(m[0].kind), m[0].start, m[0].end);
	}
	ok(count_kind("a@example.com b@example.com c@example.com", TRAIL_PII_EMAIL) == 3,
	   "three addresses counted");

	/* Redaction. */
	const char *in = "mail jane@example.com or call +1 415 555 2671 from 8.8.8.8; "
			 "key AKIAIOSFODNN7EXAMPLE.";
	char *a, *b, *c;
	size_t la, lb, lc, ca[TRAIL_PII_KINDS], cb[TRAIL_PII_KINDS], cc[TRAIL_PII_KINDS];
	trail_pii_redact(in, strlen(in), 0x1f, &a, &la, ca);
	trail_pii_redact(in, strlen(in), 0x1f, &b, &lb, cb);
	ok(!strcmp(a, "mail [EMAIL] or call [PHONE] from [IP]; key [API TOKEN]."),
	   "redaction rewrites with placeholders: %s", a);
	ok(la == lb && !strcmp(a, b) && !memcmp(ca, cb, sizeof ca), "redaction is deterministic");
	ok(ca[TRAIL_PII_EMAIL] == 1 && ca[TRAIL_PII_PHONE] == 1 && ca[TRAIL_PII_IP] == 1 &&
		   ca[TRAIL_PII_API_TOKEN] == 1 && ca[TRAIL_PII_PRIVATE_KEY] == 0,
	   "redaction counts per kind");
	trail_pii_redact(a, la, 0x1f, &c, &lc, cc);
	ok(!strcmp(a, c) && cc[0] + cc[1] + cc[2] + cc[3] + cc[4] == 0,
	   "redacting redacted text changes nothing");
	trail_free(a);
	trail_free(b);
	trail_free(c);
	trail_pii_redact(in, strlen(in), 1u << TRAIL_PII_EMAIL, &a, &la, ca);
	ok(strstr(a, "[EMAIL]") && strstr(a, "8.8.8.8"), "only the kinds asked for are redacted");
	trail_free(a);
}

/* Deterministic pseudo-random words. */
static uint64_t rng = 88172645463325252ull;
static unsigned rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng >> 11);
}

static char *random_text(int words, char **outwords)
{
	char *t = malloc((size_t)words * 12 + 1), *w = t;
	for (int i = 0; i < words; i++)
		w += sprintf(w, "%sw%u", i ? " " : "", rnd() % 50000);
	(void)outwords;
	return t;
}

/* Replace every k-th word (by position) with a fresh one. */
static char *edit_text(const char *t, int every)
{
	char *r = malloc(strlen(t) * 2 + 64), *w = r;
	int i = 0;
	const char *s = t;
	while (*s) {
		const char *e = strchr(s, ' ');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		if (i % every == every - 1)
			w += sprintf(w, "x%u", rnd() % 50000);
		else {
			memcpy(w, s, n);
			w += n;
		}
		i++;
		s += n;
		if (*s)
			*w++ = *s++;
	}
	*w = 0;
	return r;
}

/*
 * The one-pass PII scan against each scanner run on its own over every
 * byte: random texts over the bytes phones, addresses and tokens are made
 * of, with seeds of each kind spliced in, every kind and each alone.
 */
static void test_pii_onepass(void)
{
	static const char *const seeds[] = {
		"+44 20 7946 0958", "(212) 555-0187", "1 415 555 2671", "020 7946 0958",
		"8.8.8.8", "203.0.113.9", "version 1.2.3.4", "AKIAIOSFODNN7EXAMPLE",
		"ghp_abcdefghijklmnopqrstuvwxyz0123456789", "xoxb-1234-5678-abcdefghij",
		"sk_live_abcdefghijklmnop1234", "sk-AbCdEf12GhIjKl34MnOpQr56",
		"AIzaSyA-abcdefghijklmnopqrstuvwxyz12345", "github_pat_abcdefghijklmnopqrstuvwx",
		"a@b.example.org", "2001:4860:4860::8888", "-----BEGIN RSA PRIVATE KEY-----"};
	static const char bytes[] = "0123456789 +-.()/:,_$#Aagxsrkh@\nAIzaSKIAob\xc3\xa9";
	int same = 1, total = 0;
	for (int t = 0; t < 3000 && same; t++) {
		char buf[400];
		size_t len = 0, want = (size_t)(rnd() % 380);
		while (len < want) {
			if (rnd() % 6 == 0) {
				const char *sd = seeds[rnd() % (sizeof seeds / sizeof *seeds)];
				size_t n = strlen(sd);
				if (len + n >= sizeof buf)
					break;
				memcpy(buf + len, sd, n);
				len += n;
			} else {
				buf[len++] = bytes[rnd() % (sizeof bytes - 1)];
			}
		}
		for (unsigned kinds = 0; kinds <= 32 && same; kinds = kinds ? kinds << 1 : 1) {
			unsigned k = kinds == 32 ? 31u : kinds;
			trail_pii_match a[64], b[64];
			long na = trail_pii_scan(buf, len, k, a, 64);
			long nb = trail_pii_scan_reference(buf, len, k, b, 64);
			same = na == nb;
			for (long q = 0; same && q < na && q < 64; q++)
				same = a[q].kind == b[q].kind && a[q].start == b[q].start &&
				       a[q].end == b[q].end;
			total += na > 0 ? (int)na : 0;
			if (!same) {
				diag("kinds %u: %ld vs reference %ld in [%.*s]", k, na, nb, (int)len, buf);
				for (long q = 0; q < na && q < 64; q++)
					diag("  fast %d %zu-%zu", a[q].kind, a[q].start, a[q].end);
				for (long q = 0; q < nb && q < 64; q++)
					diag("  ref  %d %zu-%zu", b[q].kind, b[q].start, b[q].end);
			}
		}
	}
	ok(same, "one-pass PII scan finds what each scanner finds alone (%d matches)", total);
}

static void test_minhash(void)
{
	trail_nd_params np;
	trail_nd_params_default(&np);
	trail_minhasher *m;
	trail_minhasher_new(&np, &m);
	uint32_t s1[112], s2[112];
	const uint64_t *sh;
	ok(trail_minhash(m, "", 0, s1) == 0, "no words, no shingles");
	ok(trail_minhash(m, "Hello, world", 12, s1) == 1, "fewer than 5 words make one shingle");
	ok(trail_shingles(m, "a b c d e f g", 13, &sh) == 3, "7 words make 3 shingles");
	trail_minhash(m, "The Quick brown fox, jumps over the lazy dog.", 45, s1);
	trail_minhash(m, "the quick BROWN fox jumps over... the lazy dog", 46, s2);
	ok(!memcmp(s1, s2, sizeof s1), "case and punctuation do not change the signature");

	/* Estimates against exact Jaccard on 200 pairs at several edit rates. */
	double err = 0, worst = 0;
	int pairs = 0;
	trail_ndindex *ix;
	trail_ndindex_new(&np, &ix);
	for (int every = 2; every <= 40; every += 2) {
		for (int rep = 0; rep < 10; rep++) {
			char *a = random_text(300, NULL), *b = edit_text(a, every);
			uint64_t *ha;
			long na = trail_shingles(m, a, strlen(a), &sh);
			ha = malloc((size_t)na * 8);
			memcpy(ha, sh, (size_t)na * 8);
			long nb = trail_shingles(m, b, strlen(b), &sh);
			double j = trail_jaccard(ha, (size_t)na, sh, (size_t)nb);
			trail_minhash(m, a, strlen(a), s1);
			trail_minhash(m, b, strlen(b), s2);
			int eq = 0;
			for (int i = 0; i < 112; i++)
				eq += s1[i] == s2[i];
			double d = fabs(eq / 112.0 - j);
			err += d;
			worst = d > worst ? d : worst;
			pairs++;
			free(ha);
			free(a);
			free(b);
		}
	}
	ok(err / pairs < 0.04 && worst < 0.2, "MinHash estimates exact Jaccard: mean error %.3f, worst %.3f over %d pairs",
	   err / pairs, worst, pairs);
	trail_ndindex_free(ix);
	trail_minhasher_free(m);
}

/*
 * Signatures are part of the stored state (indexes are rebuilt from them and
 * compared across runs), so their values are pinned: XXH3 of the 112
 * minima of three texts, as computed when the format was set. Every MinHash
 * kernel this CPU runs must give the C reference's signature.
 */
static void test_minhash_pinned(void)
{
	static const struct {
		const char *text;
		long shingles;
		uint64_t digest;
	} pin[] = {
		{"Hello, world", 1, 0x6f7d71a5bdedf92dull},
		{"The Quick brown fox, jumps over the lazy dog. It was 1999; caf\xc3\xa9 "
		 "na\xc3\xafve ABC-123 x_y",
		 14, 0x39a8cda6906c8f85ull},
		{"a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 AA BB CC DD "
		 "EE FF GG HH II JJ KK",
		 43, 0x9d107d9298d9797eull},
	};
	trail_nd_params np;
	trail_nd_params_default(&np);
	trail_minhasher *m;
	trail_minhasher_new(&np, &m);
	for (size_t i = 0; i < sizeof pin / sizeof *pin; i++) {
		uint32_t s[112];
		long n = trail_minhash(m, pin[i].text, strlen(pin[i].text), s);
		ok(n == pin[i].shingles && XXH3_64bits(s, sizeof s) == pin[i].digest,
		   "pinned signature %zu (%ld shingles, %016llx)", i, n,
		   (unsigned long long)XXH3_64bits(s, sizeof s));
	}
	/* Kernels against the reference, over texts of every length up to 3 words per byte. */
	int kernels = 0, same = 1;
	for (int kern = 1; kern <= 2; kern++) {
		if (trail_minhasher_set_kernel(m, kern))
			continue;
		kernels++;
		for (int t = 0; t < 300 && same; t++) {
			uint32_t s0[112], s1[112];
			char *txt = random_text(1 + t % 150, NULL);
			size_t len = strlen(txt), cut = (size_t)(t % 7);
			len -= cut < len ? cut : 0;
			trail_minhasher_set_kernel(m, 0);
			long n0 = trail_minhash(m, txt, len, s0);
			trail_minhasher_set_kernel(m, kern);
			long n1 = trail_minhash(m, txt, len, s1);
			same = n0 == n1 && !memcmp(s0, s1, sizeof s0);
			free(txt);
		}
	}
	ok(same, "%d vector MinHash kernels agree with the C reference", kernels);

	/*
	 * The word scanner (a bit mask per 64 bytes) against a byte-at-a-time
	 * one: shingle sets of random texts over letters of both cases,
	 * digits, punctuation, spaces and UTF-8, words crossing 64-byte marks.
	 */
	static const char alpha[] = "aBcZz09 .,-_\n\t\xc3\xa9@A";
	int agree = 1;
	for (int t = 0; t < 2000 && agree; t++) {
		size_t len = (size_t)(rnd() % 300), nw = 0;
		char *txt = malloc(len + 1), low[300];
		uint64_t words[300], ref[300];
		for (size_t i = 0; i < len; i++)
			txt[i] = alpha[rnd() % (sizeof alpha - 1)];
		for (size_t i = 0; i < len; i++)
			low[i] = (char)(txt[i] >= 'A' && txt[i] <= 'Z' ? txt[i] + 32 : txt[i]);
		for (size_t i = 0; i < len;) {
			size_t st = i;
			while (i < len && ((low[i] >= 'a' && low[i] <= 'z') ||
					   (low[i] >= '0' && low[i] <= '9') || (unsigned char)low[i] >= 0x80))
				i++;
			if (i > st)
				words[nw++] = XXH3_64bits(low + st, i - st);
			else
				i++;
		}
		size_t nref = 0;
		if (nw)
			for (size_t i = 0; i + 5 <= nw || (i == 0 && nw < 5); i++)
				ref[nref++] = XXH3_64bits_withSeed(words + i, (nw < 5 ? nw : 5) * 8, np.seed);
		for (size_t i = 1; i < nref; i++) /* insertion sort, then unique */
			for (size_t j = i; j > 0 && ref[j - 1] > ref[j]; j--) {
				uint64_t x = ref[j];
				ref[j] = ref[j - 1];
				ref[j - 1] = x;
			}
		size_t u = 0;
		for (size_t i = 0; i < nref; i++)
			if (!u || ref[u - 1] != ref[i])
				ref[u++] = ref[i];
		const uint64_t *sh;
		long n = trail_shingles(m, txt, len, &sh);
		agree = n == (long)u && (!u || !memcmp(sh, ref, u * 8));
		if (!agree)
			diag("text %d: %ld shingles, reference %zu", t, n, u);
		free(txt);
	}
	ok(agree, "word scanner matches a byte-at-a-time reference on 2000 random texts");
	trail_minhasher_free(m);
}

static void test_index(void)
{
	trail_nd_params np;
	trail_nd_params_default(&np);
	trail_minhasher *m;
	trail_ndindex *ix;
	trail_minhasher_new(&np, &m);
	trail_ndindex_new(&np, &ix);
	enum { N = 20000 };
	static uint32_t sigs[N][112];
	uint8_t id[32] = {0};
	for (int i = 0; i < N; i++) {
		char *t = random_text(60, NULL);
		trail_minhash(m, t, strlen(t), sigs[i]);
		memcpy(id, &i, sizeof i);
		if (trail_ndindex_add(ix, sigs[i], id))
			break;
		free(t);
	}
	ok(trail_ndindex_count(ix) == N, "%d records indexed", N);
	int self = 0, other = 0;
	uint64_t o;
	double sc;
	for (int i = 0; i < N; i += 7) {
		int f = trail_ndindex_query(ix, sigs[i], &o, &sc);
		self += f == 1 && o == (uint64_t)i && sc == 1.0;
	}
	ok(self == (N + 6) / 7, "every record finds itself with score 1 (%d)", self);
	/* Fresh random texts match nothing. */
	for (int i = 0; i < 2000; i++) {
		char *t = random_text(60, NULL);
		uint32_t s[112];
		trail_minhash(m, t, strlen(t), s);
		other += trail_ndindex_query(ix, s, &o, &sc) == 1;
		free(t);
	}
	ok(other == 0, "unrelated texts are not near duplicates (%d of 2000)", other);
	memcpy(id, &(int){5}, sizeof(int));
	ok(trail_ndindex_contains(ix, sigs[5], id, &o) == 1 && o == 5, "exact copy found by id");
	id[31] = 1;
	ok(trail_ndindex_contains(ix, sigs[5], id, &o) == 0, "same text, other id: not an exact copy");
	trail_ndindex_compact(ix);
	self = 0;
	for (int i = 0; i < N; i += 7)
		self += trail_ndindex_query(ix, sigs[i], &o, &sc) == 1 && o == (uint64_t)i;
	ok(self == (N + 6) / 7, "the same after compaction");
	/*
	 * A flood: 30,000 more records with one signature share every band key.
	 * Queries stay bounded and give the earliest of the tied best; an exact
	 * copy is still found by id however deep in the flood it is.
	 */
	enum { F = 30000 };
	for (int i = 0; i < F; i++) {
		memcpy(id, &(int){N + i}, sizeof(int));
		if (trail_ndindex_add(ix, sigs[3], id))
			break;
	}
	int f = trail_ndindex_query(ix, sigs[3], &o, &sc);
	ok(f == 1 && o == 3 && sc == 1.0, "flood: the earliest identical record is the match (%llu)",
	   (unsigned long long)o);
	memcpy(id, &(int){N + F - 1}, sizeof(int));
	ok(trail_ndindex_contains(ix, sigs[3], id, &o) == 1 && o == (uint64_t)(N + F - 1),
	   "flood: the last copy is found by id");
	trail_ndindex_compact(ix);
	f = trail_ndindex_query(ix, sigs[3], &o, &sc);
	ok(f == 1 && o == 3, "flood: the same after compaction");
	double per = (double)trail_ndindex_bytes(ix) / (N + F);
	diag("index: %.1f bytes per record at %d records (directories dominate at this size)", per, N + F);
	ok(per < 400, "index size is bounded");
	trail_ndindex_free(ix);
	trail_minhasher_free(m);
}

static json_t *rec(const char *text)
{
	return json_pack("{s:s}", "text", text);
}

static const json_t *reason0(const json_t *vd)
{
	return json_array_get(json_object_get(vd, "reasons"), 0);
}

static void test_validator(void)
{
	trail_policy *p;
	trail_validator *v;
	trail_error e = {0};
	json_t *vd, *acc, *r;
	trail_policy_new(TRAIL_SCHEMA_TEXT, &p);
	trail_validator_new(p, &v, &e);
	char *edited = strdup(GOOD);
	memcpy(strstr(edited, "Mainz"), "Basel", 5);

	/* Approved: the good text. */
	r = rec(GOOD);
	ok(trail_validator_approve(v, r, &e) == 0, "approve a record");
	json_decref(r);
	trail_validator_compact(v);

	r = rec(GOOD);
	trail_validator_check(v, r, 1, &vd, &acc, &e);
	ok(!json_is_true(json_object_get(vd, "ok")) &&
		   !strcmp(json_string_value(json_object_get(reason0(vd), "rule")), "duplicate") &&
		   json_equal(json_object_get(reason0(vd), "of"), json_object_get(vd, "record")),
	   "an approved record is an exact duplicate");
	ok(acc == NULL, "no accepted record when rejected");
	json_decref(vd);
	json_decref(r);

	r = rec(edited);
	trail_validator_check(v, r, 2, &vd, &acc, &e);
	const json_t *x = reason0(vd);
	ok(!strcmp(json_string_value(json_object_get(x, "rule")), "near-duplicate") &&
		   json_real_value(json_object_get(x, "score")) >= 0.7 &&
		   !json_object_get(x, "n"),
	   "an edited approved record is a near duplicate with a score");
	json_decref(vd);
	json_decref(r);

	/* Extra fields are kept, the id covers them, the copy inside the submission is found. */
	r = json_pack("{s:s,s:s}", "text",
		      "Rivers shape the land over long periods of time. Water carries sand and stones "
		      "from the mountains to the sea, and the valleys grow deeper with every flood. "
		      "People have settled near rivers for thousands of years because the soil is rich "
		      "and the water is close. Many great cities stand on the banks of a river. Bridges, "
		      "mills and harbours followed. Today engineers study rivers to prevent floods and to "
		      "keep the water clean for the people who live downstream.",
		      "source", "field notes");
	trail_validator_check(v, r, 3, &vd, &acc, &e);
	ok(json_is_true(json_object_get(vd, "ok")) && acc &&
		   !strcmp(json_string_value(json_object_get(acc, "source")) ? json_string_value(json_object_get(acc, "source")) : "",
			   "field notes"),
	   "a new record with an extra string field is accepted and kept whole");
	char first[72];
	snprintf(first, sizeof first, "%s", json_string_value(json_object_get(vd, "record")));
	json_decref(vd);
	json_decref(acc);
	trail_validator_check(v, r, 4, &vd, NULL, &e);
	x = reason0(vd);
	ok(!strcmp(json_string_value(json_object_get(x, "rule")), "duplicate") &&
		   json_integer_value(json_object_get(x, "n")) == 3 &&
		   !strcmp(json_string_value(json_object_get(x, "of")), first),
	   "a copy inside the submission names the first line");
	json_decref(vd);
	json_object_set_new(r, "source", json_string("other notes"));
	trail_validator_check(v, r, 5, &vd, NULL, &e);
	x = reason0(vd);
	ok(!strcmp(json_string_value(json_object_get(x, "rule")), "near-duplicate") &&
		   json_real_value(json_object_get(x, "score")) == 1.0 &&
		   json_integer_value(json_object_get(x, "n")) == 3,
	   "same text with other fields is a near duplicate with score 1");
	json_decref(vd);
	json_decref(r);

	/* Schema. */
	r = json_pack("{s:i,s:s}", "text", 5, "x", "y");
	trail_validator_check(v, r, 6, &vd, NULL, &e);
	ok(has_rule(json_object_get(vd, "reasons"), "schema", 1), "a number field breaks the schema");
	json_decref(vd);
	json_decref(r);
	r = json_pack("[]");
	trail_validator_check(v, r, 7, &vd, NULL, &e);
	ok(has_rule(json_object_get(vd, "reasons"), "schema", 1), "an array is not a record");
	json_decref(vd);
	json_decref(r);

	/* UTF-8 and malformed lines. */
	const char bad[] = "{\"text\":\"caf\xe9\"}";
	ok(trail_validator_check_line(v, bad, sizeof bad - 1, "t", 8, &vd, NULL, &e) == 0 &&
		   has_rule(json_object_get(vd, "reasons"), "utf8", 1) &&
		   json_integer_value(json_object_get(reason0(vd), "offset")) == 12,
	   "invalid UTF-8 is a utf8 verdict with the byte offset");
	json_decref(vd);
	ok(trail_validator_check_line(v, "{\"text\":", 8, "t", 9, &vd, NULL, &e) == TRAIL_EDATA &&
		   vd == NULL && e.line == 9,
	   "malformed JSON is an error with its line, not a verdict");

	/* PII is rejected, or redacted. */
	char *pii = malloc(4096);
	snprintf(pii, 4096, "%s Write to ada@example.org for a copy.", GOOD);
	memcpy(strstr(pii, "printing press"), "paper and ink!", 14);
	r = json_pack("{s:s}", "text", pii);
	trail_validator_check(v, r, 10, &vd, NULL, &e);
	ok(has_rule(json_object_get(vd, "reasons"), "pii-email", 0), "PII is rejected by default");
	json_decref(vd);
	trail_validator_free(v);
	trail_validator_new(p, &v, &e);
	trail_validator_set_redact(v, 1);
	trail_validator_check(v, r, 1, &vd, &acc, &e);
	json_t *vd2, *acc2;
	trail_validator_free(v);
	trail_validator_new(p, &v, &e);
	trail_validator_set_redact(v, 1);
	trail_validator_check(v, r, 1, &vd2, &acc2, &e);
	ok(json_is_true(json_object_get(vd, "ok")) && acc &&
		   strstr(json_string_value(json_object_get(acc, "text")), "Write to [EMAIL] for") &&
		   json_integer_value(json_object_get(json_array_get(json_object_get(vd, "redacted"), 0),
						      "count")) == 1,
	   "--redact rewrites and accepts, reporting what it rewrote");
	ok(json_equal(vd, vd2) && json_equal(acc, acc2), "redaction gives the same record and id every time");
	char rid[72];
	trail_jcs_digest(acc, rid, NULL);
	ok(!strcmp(rid, json_string_value(json_object_get(vd, "record"))),
	   "the record id is the digest of the redacted record's canonical JSON");
	json_decref(vd);
	json_decref(vd2);
	json_decref(acc);
	json_decref(acc2);
	json_decref(r);
	free(pii);
	trail_validator_free(v);
	trail_policy_free(p);

	/* License and size. */
	const char *pol = "{\"rules\":{\"license\":{\"required\":true,\"allowed\":[\"CC-BY-4.0\"]},"
			  "\"size\":{\"max-bytes\":100}}}";
	json_t *j;
	trail_json_parse(pol, strlen(pol), "t", &j, NULL);
	trail_policy_from_json(j, "t", -1, &p, &e);
	json_decref(j);
	trail_validator_new(p, &v, &e);
	r = rec(GOOD);
	trail_validator_check(v, r, 1, &vd, NULL, &e);
	ok(has_rule(json_object_get(vd, "reasons"), "license", 0) &&
		   has_rule(json_object_get(vd, "reasons"), "size", 0),
	   "missing license and oversized record are reported");
	json_decref(vd);
	json_object_set_new(r, "license", json_string("MIT"));
	trail_validator_check(v, r, 2, &vd, NULL, &e);
	ok(has_rule(json_object_get(vd, "reasons"), "license", 0), "a license not allowed is reported");
	json_decref(vd);
	json_object_del(r, "license");
	trail_validator_set_license(v, "CC-BY-4.0");
	trail_validator_check(v, r, 3, &vd, NULL, &e);
	ok(!has_rule(json_object_get(vd, "reasons"), "license", 0),
	   "the submission's license covers records without one");
	json_decref(vd);
	json_decref(r);
	json_t *sum = trail_validator_summary(v);
	ok(json_integer_value(json_object_get(json_object_get(sum, "summary"), "rejected")) == 3,
	   "summary counts rejections");
	json_decref(sum);
	trail_validator_free(v);
	trail_policy_free(p);

	/* Instruct schema. */
	trail_policy_new(TRAIL_SCHEMA_INSTRUCT, &p);
	trail_validator_new(p, &v, &e);
	r = json_pack("{s:s,s:s}", "prompt", "What is 2+2?", "completion", "4");
	trail_validator_check(v, r, 1, &vd, NULL, &e);
	ok(json_is_true(json_object_get(vd, "ok")), "a short instruct pair passes the instruct defaults");
	json_decref(vd);
	json_decref(r);
	r = json_pack("{s:s}", "prompt", "Hi");
	trail_validator_check(v, r, 2, &vd, NULL, &e);
	ok(has_rule(json_object_get(vd, "reasons"), "schema", 1), "instruct needs a completion");
	json_decref(vd);
	json_decref(r);
	trail_validator_free(v);
	trail_policy_free(p);

	char *gh = trail_github_annotation("a,b:c.ndjson", 3, "pii-email", "100% bad\nline");
	ok(gh && !strcmp(gh, "::error file=a%2Cb%3Ac.ndjson,line=3,title=pii-email::100%25 bad%0Aline\n"),
	   "GitHub annotations are escaped");
	trail_free(gh);
	free(edited);
}

int main(void)
{
	trail_init();
	test_policy();
	test_quality();
	test_pii();
	test_pii_onepass();
	test_minhash();
	test_minhash_pinned();
	test_index();
	test_validator();
	return tap_done();
}
