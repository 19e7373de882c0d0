/* Core library: canonical JSON, NDJSON reader, encodings, store. */
#include <netdb.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "tap.h"

static char *jcs_of(const char *text)
{
	json_t *j;
	char *out = NULL;
	if (trail_json_parse(text, strlen(text), "t", &j, NULL))
		return NULL;
	if (trail_jcs(j, &out, NULL, NULL))
		out = NULL;
	json_decref(j);
	return out;
}

static void check_jcs(const char *in, const char *want, const char *what)
{
	char *got = jcs_of(in);
	ok(got && !strcmp(got, want), "jcs: %s", what);
	if (got && strcmp(got, want))
		diag("got  %s\nwant %s", got, want);
	trail_free(got);
}

static void test_jcs(void)
{
	/* RFC 8785 section 3.2.2 example. */
	check_jcs("{\"numbers\": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],"
		  "\"string\": \"\\u20ac$\\u000F\\u000aA'\\u0042\\u0022\\u005c\\\\\\\"\\/\","
		  "\"literals\": [null, true, false]}",
		  "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],"
		  "\"string\":\"\xe2\x82\xac$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}",
		  "RFC 8785 example");
	/* RFC 8785 section 3.2.3: sorting by UTF-16 code units. */
	check_jcs("{\"\\u20ac\":1,\"\\r\":2,\"\\ufb33\":3,\"1\":4,\"\\ud83d\\ude00\":5,\"\\u0080\":6,\"\\u00f6\":7}",
		  "{\"\\r\":2,\"1\":4,\"\xc2\x80\":6,\"\xc3\xb6\":7,\"\xe2\x82\xac\":1,"
		  "\"\xf0\x9f\x98\x80\":5,\"\xef\xac\xb3\":3}",
		  "UTF-16 key order");
	check_jcs("[1, -0.0, 1.5e300, {\"b\":[],\"a\":{}}]", "[1,0,1.5e+300,{\"a\":{},\"b\":[]}]",
		  "nesting, zero, exponent");
	check_jcs("\"\\u0001\\b\\t\\f\\u001f\\u007f\"", "\"\\u0001\\b\\t\\f\\u001f\x7f\"", "escapes");
	check_jcs("9007199254740992", "9007199254740992", "2^53 integer");
	ok(jcs_of("9007199254740993") == NULL, "integer beyond 2^53 refused");
	json_t *j;
	ok(trail_json_parse("{\"a\":1,\"a\":2}", 13, "t", &j, NULL) == TRAIL_EDATA, "duplicate keys refused");
	ok(trail_json_parse("\"\xff\"", 3, "t", &j, NULL) == TRAIL_EDATA, "invalid UTF-8 refused");

	static const struct { uint64_t bits; const char *s; } v[] = {
		{0x0000000000000000ULL, "0"}, {0x8000000000000000ULL, "0"},
		{0x0000000000000001ULL, "5e-324"}, {0x8000000000000001ULL, "-5e-324"},
		{0x7fefffffffffffffULL, "1.7976931348623157e+308"},
		{0x4340000000000000ULL, "9007199254740992"},
		{0x4430000000000000ULL, "295147905179352830000"},
		{0x44b52d02c7e14af5ULL, "9.999999999999997e+22"}, {0x44b52d02c7e14af6ULL, "1e+23"},
		{0x444b1ae4d6e2ef4fULL, "999999999999999900000"}, {0x444b1ae4d6e2ef50ULL, "1e+21"},
		{0x3eb0c6f7a0b5ed8cULL, "9.999999999999997e-7"}, {0x3eb0c6f7a0b5ed8dULL, "0.000001"},
		{0x41b3de4355555554ULL, "333333333.33333325"},
		{0xbecbf647612f3696ULL, "-0.0000033333333333333333"},
		{0x43143ff3c1cb0959ULL, "1424953923781206.2"},
	};
	int bad = 0;
	for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
		double d;
		char buf[40];
		memcpy(&d, &v[i].bits, 8);
		trail_jcs_number(d, buf, sizeof buf);
		if (strcmp(buf, v[i].s)) {
			bad++;
			diag("%016llx: got %s want %s", (unsigned long long)v[i].bits, buf, v[i].s);
		}
	}
	ok(bad == 0, "RFC 8785 appendix B number vectors");

	/* 2,000 random doubles formatted by ECMAScript (tests/reference/gen_jcs_numbers.js). */
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/data/jcs/numbers.txt", getenv("TRAIL_TOP") ? getenv("TRAIL_TOP") : ".");
	FILE *f = fopen(path, "r");
	int n = 0;
	bad = 0;
	char line[128];
	while (f && fgets(line, sizeof line, f)) {
		unsigned long long bits;
		char want[64], got[40];
		double d;
		if (sscanf(line, "%llx %63s", &bits, want) != 2)
			continue;
		memcpy(&d, &bits, 8);
		trail_jcs_number(d, got, sizeof got);
		n++;
		if (strcmp(got, want) && bad++ < 5)
			diag("%016llx: got %s want %s", bits, got, want);
	}
	if (f)
		fclose(f);
	ok(n == 2000 && bad == 0, "2000 random doubles match ECMAScript (%d read, %d differ)", n, bad);
}

static void test_ndjson(void)
{
	const char *in = "{\"a\":1}\n\n  \r\n[1,2]\r\n{bad\n\"x\"\n{\"long\":\"" /* no newline at end */;
	FILE *f = fmemopen((void *)in, strlen(in), "r");
	trail_ndjson *r = trail_ndjson_new(f, "in.ndjson", 32);
	json_t *j;
	trail_error e = {0};
	int rc = trail_ndjson_next(r, &j, &e);
	ok(rc == 0 && json_is_object(j) && trail_ndjson_lineno(r) == 1, "first line");
	json_decref(j);
	rc = trail_ndjson_next(r, &j, &e);
	ok(rc == 0 && json_is_array(j) && trail_ndjson_lineno(r) == 4, "blank lines skipped, CRLF accepted");
	json_decref(j);
	rc = trail_ndjson_next(r, &j, &e);
	ok(rc == TRAIL_EDATA && e.line == 5 && !strcmp(e.source, "in.ndjson"), "bad line reported with line number");
	rc = trail_ndjson_next(r, &j, &e);
	ok(rc == 0 && json_is_string(j), "reading continues after an error");
	json_decref(j);
	rc = trail_ndjson_next(r, &j, &e);
	ok(rc == TRAIL_EDATA && e.line == 7, "truncated last line is an error");
	rc = trail_ndjson_next(r, &j, &e);
	ok(rc == 0 && j == NULL, "end of input");
	trail_ndjson_free(r);
	fclose(f);

	char big[200];
	memset(big, 'x', sizeof big);
	big[0] = '"';
	big[sizeof big - 2] = '"';
	big[sizeof big - 1] = '\n';
	f = fmemopen(big, sizeof big, "r");
	r = trail_ndjson_new(f, "big", 64);
	ok(trail_ndjson_next(r, &j, &e) == TRAIL_ELIMIT && e.line == 1, "line over the cap refused");
	ok(trail_ndjson_next(r, &j, &e) == 0 && !j, "over-long line consumed");
	trail_ndjson_free(r);
	fclose(f);
}

static void test_encodings(void)
{
	uint8_t d[32], b[64];
	char s[80];
	size_t n;
	trail_digest_str("abc", 3, s);
	ok(!strcmp(s, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
	   "sha256 digest string");
	ok(trail_digest_parse(s, d) == 0, "digest parses");
	s[10] = 'A';
	ok(trail_digest_parse(s, d) == TRAIL_EDATA, "uppercase hex refused");
	ok(trail_digest_parse("sha256:00", d) == TRAIL_EDATA, "short digest refused");
	ok(trail_unbase64("aGk=", 4, b, sizeof b, &n) == 0 && n == 2 && !memcmp(b, "hi", 2), "base64");
	ok(trail_unbase64("aGl=", 4, b, sizeof b, &n) == TRAIL_EDATA, "non-canonical base64 refused");
	ok(trail_unbase64("aGk", 3, b, sizeof b, &n) == TRAIL_EDATA, "unpadded base64 refused");
	ok(trail_utf8_valid("\xed\xa0\x80", 3) == 0 && trail_utf8_valid("\xc0\xaf", 2) == 0 &&
	   trail_utf8_valid("\xf0\x9f\x98\x80", 4) == 1, "utf-8 validation");
}

static void test_store(void)
{
	char dir[] = "/tmp/trail-test-XXXXXX";
	ok(mkdtemp(dir) != NULL, "temp dir");
	char *home = trail_path(dir, "home");
	trail_error e = {0};
	trail_store *s;
	ok(trail_store_init(home, "test.example/log", NULL, &e) == 0, "init store");
	ok(trail_store_init(home, NULL, NULL, &e) == TRAIL_EDATA, "init twice refused");
	ok(trail_store_open(home, &s, &e) == 0, "open store");
	char dg[72], dg2[72];
	ok(trail_store_put(s, "hello", 5, dg, &e) == 0, "put object");
	ok(trail_store_put(s, "hello", 5, dg2, &e) == 0 && !strcmp(dg, dg2), "put is idempotent");
	void *b;
	size_t n;
	ok(trail_store_get(s, dg, &b, &n, &e) == 0 && n == 5 && !memcmp(b, "hello", 5), "get object");
	trail_free(b);
	char *p = trail_store_object_path(s, dg);
	chmod(p, 0644);
	FILE *f = fopen(p, "r+");
	fputc('j', f);
	fclose(f);
	ok(trail_store_get(s, dg, &b, &n, &e) == TRAIL_EVERIFY, "flipped object byte detected");
	trail_free(p);
	ok(trail_store_name_set(s, "model", "base", dg, &e) == 0, "register a name");
	ok(trail_store_resolve(s, "model", "base", dg2, &e) == 0 && !strcmp(dg, dg2), "resolve a name");
	ok(trail_store_resolve(s, "model", "../x", dg2, &e) == TRAIL_ENOINPUT, "path-like names refused");
	const trail_signer *op;
	ok(trail_store_operator(s, &op, &e) == 0 && !strcmp(trail_signer_name(op), "test.example/log"),
	   "operator key named after the origin");
	trail_store_free(s);
	trail_free(home);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
}

/* The capped request body both HTTP servers read, and their listen address. */
static void test_capbuf(void)
{
	trail_capbuf b = {.max = 10};
	trail_capbuf_declare(&b, NULL);
	trail_capbuf_declare(&b, "10");
	ok(!b.over, "capbuf: no Content-Length, or one of max bytes, is taken");
	trail_capbuf_add(&b, "hello", 5);
	trail_capbuf_add(&b, "world", 5);
	ok(!b.over && b.b.n == 10 && !memcmp(b.b.p, "helloworld", 10) && b.b.p[10] == 0,
	   "capbuf: pieces up to max are kept, NUL-terminated");
	trail_capbuf_add(&b, "!", 1);
	ok(b.over && !b.b.p && b.b.n == 0, "capbuf: one byte past max drops the body");
	trail_capbuf_add(&b, "x", 1);
	ok(b.over && !b.b.p, "capbuf: later pieces are ignored");
	trail_capbuf c = {.max = 10};
	trail_capbuf_declare(&c, "11");
	ok(c.over, "capbuf: a Content-Length over max is refused before the body");
	trail_buf_release(&c.b);

	struct addrinfo *ai = NULL;
	trail_error e = {0};
	ok(trail_listen_resolve("127.0.0.1:0", "HOST:PORT", &ai, &e) == TRAIL_OK && ai &&
	   ai->ai_family == AF_INET, "listen: 127.0.0.1:0 resolves");
	if (ai)
		freeaddrinfo(ai);
	ai = NULL;
	ok(trail_listen_resolve("[::1]:7380", "HOST:PORT", &ai, &e) == TRAIL_OK && ai &&
	   ai->ai_family == AF_INET6, "listen: [::1]:7380 is IPv6");
	if (ai)
		freeaddrinfo(ai);
	const char *bad[] = {"7380", ":7380", "127.0.0.1:", "127.0.0.1:http"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		e = (trail_error){0};
		ai = (struct addrinfo *)&e;
		ok(trail_listen_resolve(bad[i], "HOST:PORT (127.0.0.1:7380)", &ai, &e) == TRAIL_EUSAGE && !ai &&
		   strstr(e.msg, "--listen"), "listen: '%s' refused (%s)", bad[i], e.msg);
	}
}

int main(void)
{
	trail_init();
	test_jcs();
	test_ndjson();
	test_encodings();
	test_store();
	test_capbuf();
	return tap_done();
}
