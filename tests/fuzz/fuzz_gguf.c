/*
 * Fuzz the GGUF reader: any bytes are a GGUF file; one that opens has every
 * tensor inside the bytes (reading each one whole and as Hugging Face's
 * tensor is in bounds), its configuration and tokenizer either build or
 * are refused with a message. A refusal always says why.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	trail_gguf *g;
	trail_error e = {0};
	if (trail_gguf_parse(data, size, "fuzz", &g, &e)) {
		if (!e.msg[0])
			__builtin_trap();
		return 0;
	}
	for (size_t i = 0; i < trail_gguf_kv_count(g); i++)
		if (!trail_gguf_kv_key(g, i, NULL))
			__builtin_trap();
	for (size_t i = 0; i < trail_gguf_count(g); i++) {
		const char *nm;
		int ty, nd;
		int64_t ne[4];
		if (trail_gguf_tensor(g, i, &nm, &ty, &nd, ne) || !trail_gguf_type_name(ty))
			__builtin_trap();
		size_t n = (size_t)(ne[0] * ne[1] * ne[2] * ne[3]);
		if (n > ((size_t)1 << 22)) /* bounded by the file already; keep the harness fast */
			continue;
		float *d = malloc((n ? n : 1) * sizeof *d);
		if (d && trail_gguf_read(g, i, d))
			__builtin_trap();
		free(d);
	}
	trail_model_cfg c;
	e.msg[0] = 0;
	if (trail_gguf_config(g, &c, &e) && !e.msg[0])
		__builtin_trap();
	e.msg[0] = 0;
	if (trail_gguf_bind(g, &e)) {
		if (!e.msg[0])
			__builtin_trap();
	} else {
		for (size_t i = 0; i < trail_gguf_count(g); i++) {
			const char *nm;
			int ty, nd;
			int64_t ne[4], shape[4];
			trail_gguf_tensor(g, i, &nm, &ty, &nd, ne);
			size_t n = (size_t)(ne[0] * ne[1] * ne[2] * ne[3]);
			if (n > ((size_t)1 << 22))
				continue;
			for (int d = 0; d < nd; d++)
				shape[d] = ne[nd - 1 - d];
			float *d = malloc((n ? n : 1) * sizeof *d);
			e.msg[0] = 0;
			if (d && trail_gguf_read_hf(g, i, shape, nd, d, &e) && !e.msg[0])
				__builtin_trap();
			free(d);
		}
	}
	trail_tokenizer *t = NULL;
	e.msg[0] = 0;
	if (trail_gguf_tokenizer(g, &t, &e)) {
		if (t || !e.msg[0])
			__builtin_trap();
	} else {
		int32_t *ids;
		size_t n;
		static const char text[] = "Hello, world! <s> 123 \xe6\x97\xa5\xe6\x9c\xac";
		if (trail_tokenizer_encode_ex(t, text, sizeof text - 1, TRAIL_TOKENIZE_SPECIAL | TRAIL_TOKENIZE_ADD, &ids, &n, NULL))
			__builtin_trap();
		for (size_t i = 0; i < n; i++)
			if (ids[i] < 0 || (size_t)ids[i] >= trail_tokenizer_vocab_size(t))
				__builtin_trap();
		trail_free(ids);
		trail_tokenizer_free(t);
	}
	trail_gguf_free(g);
	return 0;
}
