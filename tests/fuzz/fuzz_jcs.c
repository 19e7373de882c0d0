/*
 * Fuzz canonical JSON: for any parseable input, the canonical form parses
 * back to an equal value and is a fixed point (canonical(canonical(x)) ==
 * canonical(x)).
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *j, *k;
	char *a, *b;
	size_t al, bl;
	if (trail_json_parse((const char *)data, size, "fuzz", &j, NULL))
		return 0;
	if (trail_jcs(j, &a, &al, NULL) == TRAIL_OK) {
		if (trail_json_parse(a, al, "canonical", &k, NULL))
			__builtin_trap();
		if (trail_jcs(k, &b, &bl, NULL) || bl != al || memcmp(a, b, al))
			__builtin_trap();
		trail_free(b);
		json_decref(k);
		trail_free(a);
	}
	json_decref(j);
	return 0;
}
