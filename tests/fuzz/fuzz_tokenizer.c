/*
 * Fuzz GPT-2 BPE encoding over the small vocabulary in tests/data/tokenizer
 * (found through $TRAIL_TOP, else the working directory): any bytes encode,
 * decode back to themselves, and encode the same with the piece cache warm.
 */
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static trail_tokenizer *t;
	if (!t) {
		const char *top = getenv("TRAIL_TOP");
		char *dir = trail_path(top ? top : ".", "tests/data/tokenizer");
		if (!dir || trail_tokenizer_load(dir, &t, NULL))
			__builtin_trap();
		trail_free(dir);
	}
	int32_t *a, *b;
	size_t na, nb, len;
	char *text;
	if (trail_tokenizer_encode(t, (const char *)data, size, &a, &na, NULL) ||
	    trail_tokenizer_encode(t, (const char *)data, size, &b, &nb, NULL))
		__builtin_trap();
	if (na != nb || na > size || (na && memcmp(a, b, na * sizeof *a)))
		__builtin_trap();
	if (trail_tokenizer_decode(t, a, na, &text, &len, NULL) || len != size || (size && memcmp(text, data, size)))
		__builtin_trap();
	trail_free(text);
	trail_free(a);
	trail_free(b);
	return 0;
}
