/*
 * Tokenizers. The byte tokenizer: ids 0-255 are the bytes, 256 is
 * end-of-text. GPT-2's byte-level BPE (vocab.json + merges.txt) is not in
 * this build: loading a BPE directory says so.
 */
#include <string.h>
#include <sys/stat.h>

#include "tokenizer.h"
#include "util.h"

struct trail_tokenizer {
	int kind; /* 0: bytes */
	char byte[256];
};

int trail_tokenizer_bytes(trail_tokenizer **out)
{
	trail_tokenizer *t = trail_calloc(1, sizeof *t);
	if (!t)
		return TRAIL_ENOMEM;
	for (int i = 0; i < 256; i++)
		t->byte[i] = (char)i;
	*out = t;
	return TRAIL_OK;
}

int trail_tokenizer_load(const char *spec, trail_tokenizer **out, trail_error *err)
{
	*out = NULL;
	if (!strcmp(spec, "bytes"))
		return trail_tokenizer_bytes(out) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
	char *p = trail_path(spec, "tokenizer.json");
	void *b;
	size_t n;
	int rc = p ? trail_read_file(p, 4096, &b, &n, NULL) : TRAIL_ENOMEM;
	trail_free(p);
	if (rc == TRAIL_OK) {
		int bytes = strstr(b, "\"bytes\"") != NULL;
		trail_free(b);
		if (bytes)
			return trail_tokenizer_bytes(out) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
	}
	p = trail_path(spec, "vocab.json");
	struct stat st;
	int bpe = p && stat(p, &st) == 0;
	trail_free(p);
	if (bpe)
		return trail_error_at(err, TRAIL_EUNAVAIL, spec, 0,
				      "GPT-2 byte-level BPE tokenizers are not supported by this build; use --tokenizer bytes");
	return trail_error_at(err, TRAIL_ENOINPUT, spec, 0, "no tokenizer here (tokenizer.json or vocab.json)");
}

int trail_tokenizer_save(const trail_tokenizer *t, const char *dir, trail_error *err)
{
	static const char text[] = "{\"type\":\"bytes\",\"vocab_size\":257,\"eot\":256}\n";
	(void)t;
	char *p = trail_path(dir, "tokenizer.json");
	int rc = p ? trail_write_atomic(p, text, sizeof text - 1, 0644, err) : TRAIL_ENOMEM;
	trail_free(p);
	return rc;
}

void trail_tokenizer_free(trail_tokenizer *t)
{
	trail_free(t);
}

const char *trail_tokenizer_kind(const trail_tokenizer *t)
{
	(void)t;
	return "bytes";
}

size_t trail_tokenizer_vocab_size(const trail_tokenizer *t)
{
	(void)t;
	return 257;
}

int32_t trail_tokenizer_eot(const trail_tokenizer *t)
{
	(void)t;
	return 256;
}

int trail_tokenizer_encode(const trail_tokenizer *t, const char *text, size_t len, int32_t **ids,
			   size_t *n, trail_error *err)
{
	(void)t;
	*ids = trail_malloc((len ? len : 1) * sizeof **ids);
	if (!*ids)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < len; i++)
		(*ids)[i] = (unsigned char)text[i];
	*n = len;
	return TRAIL_OK;
}

int trail_tokenizer_decode(const trail_tokenizer *t, const int32_t *ids, size_t n, char **text,
			   size_t *len, trail_error *err)
{
	(void)t;
	char *s = trail_malloc(n + 1);
	size_t k = 0;
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		if (ids[i] >= 0 && ids[i] < 256)
			s[k++] = (char)ids[i];
	s[k] = 0;
	*text = s;
	*len = k;
	return TRAIL_OK;
}

const char *trail_tokenizer_token(const trail_tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || id > 255)
		return NULL;
	*len = 1;
	return &t->byte[id];
}
