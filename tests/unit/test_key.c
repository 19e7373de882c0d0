/* Keys and signed notes: the C2SP known-answer vector, mutations, JSON signatures. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "tap.h"

static json_t *vector(void)
{
	char path[4096];
	const char *top = getenv("TRAIL_TOP");
	snprintf(path, sizeof path, "%s/../shared/testdata/signed-note/vector.json", top ? top : ".");
	return json_load_file(path, 0, NULL);
}

/* Every proper substring and every single-byte change of a key is refused. */
static int mutations_refused(const char *key, int signer)
{
	size_t n = strlen(key);
	int accepted = 0, tried = 0;
	char *m = malloc(n + 1);
	for (size_t a = 0; a < n; a++)
		for (size_t b = a + 1; b <= n; b++) {
			if (a == 0 && b == n)
				continue;
			void *h = NULL;
			int rc = signer ? trail_signer_parse(key + a, b - a, (trail_signer **)&h, NULL)
					: trail_verifier_parse(key + a, b - a, (trail_verifier **)&h, NULL);
			tried++;
			if (rc == 0) {
				accepted++;
				diag("accepted substring [%zu,%zu)", a, b);
			}
			signer ? trail_signer_free(h) : trail_verifier_free(h);
		}
	for (size_t i = 0; i < n; i++)
		for (int c = 1; c < 256; c++) {
			if (c == (unsigned char)key[i])
				continue;
			memcpy(m, key, n + 1);
			m[i] = (char)c;
			void *h = NULL;
			int rc = signer ? trail_signer_parse(m, n, (trail_signer **)&h, NULL)
					: trail_verifier_parse(m, n, (trail_verifier **)&h, NULL);
			tried++;
			if (rc == 0) {
				accepted++;
				diag("accepted byte %zu = 0x%02x", i, c);
			}
			signer ? trail_signer_free(h) : trail_verifier_free(h);
		}
	free(m);
	diag("%d mutations of a %s key tried", tried, signer ? "signer" : "verifier");
	return accepted == 0;
}

int main(void)
{
	trail_init();
	json_t *v = vector();
	if (!v) {
		skip("signed-note vector not found (../shared/testdata)");
		return tap_done();
	}
	const char *skey = json_string_value(json_object_get(v, "signer_key"));
	const char *vkey = json_string_value(json_object_get(v, "verifier_key"));
	const char *text = json_string_value(json_object_get(v, "text"));
	const char *want = json_string_value(json_object_get(v, "signed_note"));
	trail_signer *s;
	trail_verifier *ver;
	ok(trail_signer_parse(skey, strlen(skey), &s, NULL) == 0, "vector signer key parses");
	ok(trail_verifier_parse(vkey, strlen(vkey), &ver, NULL) == 0, "vector verifier key parses");
	ok(!strcmp(trail_signer_vkey(s), vkey), "signer derives the vector's verifier key");
	char *note;
	size_t nl;
	ok(trail_note_sign(text, strlen(text), (const trail_signer *const *)&s, 1, &note, &nl, NULL) == 0 &&
	   !strcmp(note, want), "signed note reproduces byte for byte");
	char *body;
	ok(trail_note_open(want, strlen(want), (const trail_verifier *const *)&ver, 1, &body, NULL, NULL) == 0 &&
	   !strcmp(body, text), "vector note verifies and yields its text");
	trail_free(body);
	/* Any single flipped bit in the note makes it fail. */
	size_t wl = strlen(want);
	char *m = strdup(want);
	int accepted = 0;
	for (size_t i = 0; i < wl; i++)
		for (int bit = 0; bit < 8; bit++) {
			m[i] ^= (char)(1 << bit);
			if (trail_note_open(m, wl, (const trail_verifier *const *)&ver, 1, NULL, NULL, NULL) == 0)
				accepted++;
			m[i] ^= (char)(1 << bit);
		}
	ok(accepted == 0, "every single-bit change of the note is rejected (%d accepted)", accepted);
	free(m);
	ok(mutations_refused(skey, 1), "every substring and byte change of the signer key is refused");
	ok(mutations_refused(vkey, 0), "every substring and byte change of the verifier key is refused");

	/* Unknown signer: not verified; other key with the same name: not verified. */
	char *sk2, *vk2;
	trail_verifier *other;
	trail_key_generate("PeterNeumann", &sk2, &vk2, NULL);
	trail_verifier_parse(vk2, strlen(vk2), &other, NULL);
	ok(trail_note_open(want, wl, (const trail_verifier *const *)&other, 1, NULL, NULL, NULL) == TRAIL_EVERIFY,
	   "a different key of the same name does not verify");
	ok(trail_note_sign("no newline", 10, (const trail_signer *const *)&s, 1, &body, NULL, NULL) == TRAIL_EDATA,
	   "text without final newline refused");


	/* C2SP conformance (issue 18): longer signatures of other algorithms, DEL, names. */
	{
		/* an ML-DSA-65 sized signature (3309 bytes) by an unknown key before ours */
		size_t big = 4 + 3309;
		uint8_t *raw = calloc(1, big);
		char *b64 = malloc(trail_base64_len(big) + 1);
		raw[0] = 0x12, raw[4] = 0xab;
		trail_base64(raw, big, b64);
		const char *sigs = strstr(want, "\n\n") + 2;
		size_t tl = (size_t)(sigs - want);
		char *two = malloc(wl + strlen(b64) + 64);
		memcpy(two, want, tl);
		sprintf(two + tl, "\xe2\x80\x94 pq.example/mldsa %s\n%s", b64, sigs);
		trail_error e = {0};
		ok(trail_note_open(two, strlen(two), (const trail_verifier *const *)&ver, 1, NULL, NULL, &e) == 0,
		   "a long unknown-key signature line is ignored, the known key verifies (%s)", e.msg);
		ok(trail_note_open(two, strlen(two), (const trail_verifier *const *)&other, 1, NULL, NULL, &e) ==
			   TRAIL_EVERIFY && strstr(e.msg, "2 signatures"),
		   "without a known key it is not verified: %s", e.msg);
		free(two);
		free(b64);
		free(raw);

		/* one extra trailing newline (jq -r) is accepted, two are not */
		char *nl1 = malloc(wl + 3);
		memcpy(nl1, want, wl);
		memcpy(nl1 + wl, "\n\n", 3);
		ok(trail_note_open(nl1, wl + 1, (const trail_verifier *const *)&ver, 1, &body, NULL, &e) == 0 &&
			   !strcmp(body, text), "a note with one extra trailing newline verifies");
		trail_free(body);
		ok(trail_note_open(nl1, wl + 2, (const trail_verifier *const *)&ver, 1, NULL, NULL, &e) ==
			   TRAIL_EDATA && strstr(e.msg, "blank lines"), "two extra newlines: %s", e.msg);
		ok(trail_note_open(want, wl - 1, (const trail_verifier *const *)&ver, 1, NULL, NULL, &e) ==
			   TRAIL_EDATA && strstr(e.msg, "does not end with a newline"), "no final newline: %s", e.msg);
		ok(trail_note_open(text, strlen(text), (const trail_verifier *const *)&ver, 1, NULL, NULL, &e) ==
			   TRAIL_EDATA && strstr(e.msg, "no blank line"), "bare text: %s", e.msg);
		free(nl1);

		/* U+007F is not a control character to C2SP (only those below U+0020) */
		char *dn;
		ok(trail_note_sign("a\x7f" "b\n", 4, (const trail_signer *const *)&s, 1, &dn, NULL, &e) == 0 &&
			   trail_note_open(dn, strlen(dn), (const trail_verifier *const *)&ver, 1, NULL, NULL, &e) == 0,
		   "text with U+007F signs and verifies");
		trail_free(dn);
		ok(trail_note_sign("a\tb\n", 4, (const trail_signer *const *)&s, 1, &dn, NULL, &e) == TRAIL_EDATA &&
			   strstr(e.msg, "control character"), "a tab is refused: %s", e.msg);

		/* names: UTF-8, no Unicode spaces, no '+' */
		static const char *bad[] = {"a\xc2\xa0" "b", "a\xe3\x80\x80" "b", "a\xe2\x80\xa8" "b",
					    "a\xff" "b", "a\xc0\xaf", "a+b", "a b", "", "a\x7f"};
		int refused = 0;
		for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
			char *x, *y;
			if (trail_key_generate(bad[i], &x, &y, NULL) == TRAIL_EUSAGE)
				refused++;
			else
				diag("accepted name %zu", i), trail_free(x), trail_free(y);
		}
		ok(refused == (int)(sizeof bad / sizeof *bad), "names with Unicode spaces, bad UTF-8, '+' refused");
		char *x, *y;
		trail_verifier *uv;
		ok(trail_key_generate("caf\xc3\xa9.example/\xe6\x97\xa5", &x, &y, NULL) == 0 &&
			   trail_verifier_parse(y, strlen(y), &uv, NULL) == 0,
		   "a UTF-8 name is accepted and its key parses");
		trail_verifier_free(uv);
		trail_free(x);
		trail_free(y);
	}

	/* Signed JSON objects. */
	json_t *o = json_pack("{s:s, s:i}", "type", "contribution", "n", 3);
	ok(trail_json_sign(o, s, NULL) == 0 && trail_json_verify(o, NULL) == 0, "json signature verifies");
	json_object_set_new(o, "n", json_integer(4));
	ok(trail_json_verify(o, NULL) == TRAIL_EVERIFY, "altered json field detected");
	json_object_set_new(o, "n", json_integer(3));
	json_object_set_new(o, "signer", json_string(vk2));
	ok(trail_json_verify(o, NULL) == TRAIL_EVERIFY, "swapped signer detected");
	json_decref(o);
	trail_free(sk2);
	trail_free(vk2);
	trail_free(note);
	trail_verifier_free(other);
	trail_signer_free(s);
	trail_verifier_free(ver);
	json_decref(v);
	return tap_done();
}
