/*
 * Fuzz the tokenizer.json loader: any bytes are a tokenizer.json; one that
 * loads encodes its own bytes (special tokens split out and not), every id
 * has a token or is special, decoding never fails, and a byte-level
 * tokenizer without a normaliser gives plain text back byte for byte. A
 * refusal always says why.
 */
#include <string.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	trail_tokenizer *t;
	trail_error e = {0};
	if (trail_hf_parse(data, size, "fuzz", NULL, &t, &e)) {
		if (t || !e.msg[0])
			__builtin_trap();
		return 0;
	}
	size_t nv = trail_tokenizer_vocab_size(t);
	for (unsigned flags = 0; flags < 4; flags++) {
		int32_t *ids;
		size_t n, len, tl;
		char *text;
		if (trail_tokenizer_encode_ex(t, (const char *)data, size, flags, &ids, &n, NULL))
			__builtin_trap();
		for (size_t i = 0; i < n; i++)
			if (ids[i] < 0 || (size_t)ids[i] >= nv ||
			    (!trail_tokenizer_token(t, ids[i], &tl) && ids[i] != trail_tokenizer_bos(t) &&
			     ids[i] != trail_tokenizer_eot(t) && !(t->flags[ids[i]] & TOK_SPECIAL)))
				__builtin_trap();
		if (trail_tokenizer_decode(t, ids, n, &text, &len, NULL))
			__builtin_trap();
		if (flags == 0 && t->kind == TK_HF_BPE && !t->nfc && (len != size || memcmp(text, data, size)))
			__builtin_trap();
		trail_free(text);
		trail_free(ids);
	}
	trail_tokenizer_free(t);
	return 0;
}
