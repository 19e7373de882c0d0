/*
 * Tokenizers: GPT-2 byte-level BPE (vocab.json + merges.txt) and a plain
 * byte tokenizer (ids 0-255; id 256 is end-of-text when the model's
 * vocabulary has room for it).
 *
 * Ownership: the tokenizer handle is freed with trail_tokenizer_free; id and
 * text buffers returned through pointers are trail_malloc'd.
 */
#ifndef TRAIL_TOKENIZER_H
#define TRAIL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "trail.h"

typedef struct trail_tokenizer trail_tokenizer;

int trail_tokenizer_bytes(trail_tokenizer **out);
/* "bytes", or a directory with vocab.json and merges.txt. */
int trail_tokenizer_load(const char *spec, trail_tokenizer **out, trail_error *err);
/* Write the tokenizer's files into dir (vocab.json + merges.txt, or tokenizer.json {"type":"bytes"}). */
int trail_tokenizer_save(const trail_tokenizer *t, const char *dir, trail_error *err);
void trail_tokenizer_free(trail_tokenizer *t);

const char *trail_tokenizer_kind(const trail_tokenizer *t); /* "bytes" or "gpt2" */
size_t trail_tokenizer_vocab_size(const trail_tokenizer *t);
int32_t trail_tokenizer_eot(const trail_tokenizer *t); /* -1 when none */

int trail_tokenizer_encode(const trail_tokenizer *t, const char *text, size_t len,
			   int32_t **ids, size_t *n, trail_error *err);
/* Decoding is byte-exact: decode(encode(s)) == s. */
int trail_tokenizer_decode(const trail_tokenizer *t, const int32_t *ids, size_t n, char **text,
			   size_t *len, trail_error *err);
/* The bytes of one token (for streaming output); NULL if out of range. */
const char *trail_tokenizer_token(const trail_tokenizer *t, int32_t id, size_t *len);

#endif
