/*
 * Fuzz the validator: the first byte picks the schema and redaction, the
 * rest is NDJSON fed line by line. Also runs the PII scanner, redaction and
 * the quality rules on the raw bytes and checks their invariants: matches
 * in bounds, ordered and disjoint; redaction idempotent; every verdict well
 * formed.
 */
#include <string.h>

#include "data/data.h"

static void check_pii(const char *s, size_t n)
{
	trail_pii_match m[64];
	long k = trail_pii_scan(s, n, 0x1f, m, 64);
	for (long i = 0; i < k && i < 64; i++)
		if (m[i].start >= m[i].end || m[i].end > n || (i && m[i].start < m[i - 1].end))
			__builtin_trap();
	char *r1, *r2;
	size_t l1, l2, c1[TRAIL_PII_KINDS], c2[TRAIL_PII_KINDS];
	if (trail_pii_redact(s, n, 0x1f, &r1, &l1, c1))
		return;
	if (trail_pii_redact(r1, l1, 0x1f, &r2, &l2, c2) == TRAIL_OK) {
		/* Placeholders never look like PII, so a second pass changes nothing. */
		if (l1 != l2 || memcmp(r1, r2, l1))
			__builtin_trap();
		trail_free(r2);
	}
	trail_free(r1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	int flags = data[0];
	const char *s = (const char *)data + 1;
	size_t n = size - 1;
	check_pii(s, n);
	trail_policy *p;
	trail_validator *v;
	if (trail_policy_new(flags & 1, &p))
		return 0;
	json_t *r = json_array();
	if (r && trail_quality_check(p, s, n, r) == 0 && json_array_size(r) > 64)
		__builtin_trap();
	json_decref(r);
	if (trail_validator_new(p, &v, NULL) == TRAIL_OK) {
		trail_validator_set_redact(v, flags & 2);
		long line = 0;
		for (size_t i = 0; i < n;) {
			const char *e = memchr(s + i, '\n', n - i);
			size_t len = e ? (size_t)(e - (s + i)) : n - i;
			json_t *vd = NULL, *acc = NULL;
			trail_error err = {0};
			int rc = trail_validator_check_line(v, s + i, len, "fuzz", ++line, &vd, &acc, &err);
			if (rc == TRAIL_OK) {
				const char *id = json_string_value(json_object_get(vd, "record"));
				if (!id || strncmp(id, "sha256:", 7) || strlen(id) != 71 ||
				    !json_is_boolean(json_object_get(vd, "ok")) ||
				    !json_is_array(json_object_get(vd, "reasons")) ||
				    json_is_true(json_object_get(vd, "ok")) !=
					    (json_array_size(json_object_get(vd, "reasons")) == 0))
					__builtin_trap();
				char *gh = trail_verdict_github(vd, "fuzz");
				trail_free(gh);
			} else if (rc != TRAIL_EDATA || err.line != line) {
				__builtin_trap();
			}
			json_decref(vd);
			json_decref(acc);
			i += len + 1;
		}
		json_t *sum = trail_validator_summary(v);
		json_decref(sum);
		trail_validator_free(v);
	}
	trail_policy_free(p);
	return 0;
}
