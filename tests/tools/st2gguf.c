/*
 * st2gguf: a Hugging Face model directory (config.json, model.safetensors
 * or its shards, tokenizer.json when there is one) as a GGUF file, for the
 * tests and for running llama.cpp on the same weights.
 *
 *   st2gguf [-t f32|f16|bf16|q8_0] [-k TOKENIZER] SRC OUT.gguf
 *   st2gguf SRC OUTDIR     (any base back to a directory, F32)
 *   st2gguf [-t TYPE] -a ADAPTER_DIR BASE OUT.gguf
 *
 * -a writes the PEFT adapter in ADAPTER_DIR (trained on BASE, a directory
 * or GGUF file) as a llama.cpp LoRA adapter GGUF (F32 unless -t), for the
 * base as st2gguf writes it.
 *
 * -k names another tokenizer (a directory or tokenizer.json; "none" for no
 * tokenizer). Exit 0 on success, 1 on a bad input, 2 on a usage error.
 */
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "model/model.h"

int main(int argc, char **argv)
{
	int type = TRAIL_GGUF_F32, a = 1;
	const char *tks = NULL, *adapter = NULL;
	static const char *const names[] = {"f32", "f16", "bf16", "q8_0"};
	static const int types[] = {TRAIL_GGUF_F32, TRAIL_GGUF_F16, TRAIL_GGUF_BF16, TRAIL_GGUF_Q8_0};
	for (; a + 1 < argc && argv[a][0] == '-'; a += 2) {
		if (!strcmp(argv[a], "-t")) {
			size_t i = 0;
			while (i < 4 && strcmp(argv[a + 1], names[i]))
				i++;
			if (i == 4)
				break;
			type = types[i];
		} else if (!strcmp(argv[a], "-k")) {
			tks = argv[a + 1];
		} else if (!strcmp(argv[a], "-a")) {
			adapter = argv[a + 1];
		} else {
			break;
		}
	}
	if (argc - a != 2) {
		fprintf(stderr, "usage: st2gguf [-t f32|f16|bf16|q8_0] [-k TOKENIZER] SRC OUT.gguf|OUTDIR\n"
				"       st2gguf [-t f32|f16|bf16|q8_0] -a ADAPTER_DIR BASE OUT.gguf\n");
		return 2;
	}
	size_t ol = strlen(argv[a + 1]);
	if (adapter && !(ol > 5 && !strcmp(argv[a + 1] + ol - 5, ".gguf"))) {
		fprintf(stderr, "st2gguf: error: -a writes a .gguf file, not %s\n", argv[a + 1]);
		return 2;
	}
	trail_error e = {0};
	trail_model *m = NULL;
	trail_tokenizer *tk = NULL;
	int rc = trail_model_load(argv[a], &m, &e);
	if (adapter) {
		if (!rc && !(rc = trail_model_load_adapter(m, adapter, &e)))
			rc = trail_gguf_write_adapter(argv[a + 1], m, type, &e);
		goto done;
	}
	if (!rc && !(tks && !strcmp(tks, "none"))) {
		rc = trail_tokenizer_load(tks ? tks : argv[a], &tk, &e);
		if (rc == TRAIL_ENOINPUT && !tks)
			rc = TRAIL_OK; /* no tokenizer beside the weights: none in the file */
		if (!rc && tk && !strcmp(trail_tokenizer_kind(tk), "bytes")) {
			trail_tokenizer_free(tk);
			tk = NULL;
		}
	}
	if (!rc && ol > 5 && !strcmp(argv[a + 1] + ol - 5, ".gguf"))
		rc = trail_gguf_write(argv[a + 1], m, tk, type, &e);
	else if (!rc && !(rc = trail_model_save(m, argv[a + 1], &e)) && tk)
		rc = trail_tokenizer_save(tk, argv[a + 1], &e);
done:
	if (rc)
		fprintf(stderr, "st2gguf: error: %s%s%s\n", e.source[0] ? e.source : "", e.source[0] ? ": " : "", e.msg);
	trail_tokenizer_free(tk);
	trail_model_free(m);
	return rc ? 1 : 0;
}
