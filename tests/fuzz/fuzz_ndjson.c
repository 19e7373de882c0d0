/* Fuzz the NDJSON reader: any bytes, small line cap; every value read re-canonicalises. */
#include <stdio.h>
#include <string.h>

#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FILE *f = fmemopen((void *)data, size, "r");
	if (!f)
		return 0;
	trail_ndjson *r = trail_ndjson_new(f, "fuzz", 256);
	for (int i = 0; r && i < 10000; i++) {
		json_t *j;
		trail_error e = {0};
		int rc = trail_ndjson_next(r, &j, &e);
		if (rc == TRAIL_OK && !j)
			break;
		if (rc == TRAIL_OK) {
			char *s;
			if (trail_jcs(j, &s, NULL, NULL) == TRAIL_OK)
				trail_free(s);
			json_decref(j);
		} else if (e.line <= 0 || e.msg[0] == 0) {
			__builtin_trap(); /* every error names its line */
		}
	}
	trail_ndjson_free(r);
	fclose(f);
	return 0;
}
