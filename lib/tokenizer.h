/*
 * Tokenizers: GPT-2 byte-level BPE (vocab.json + merges.txt) and a plain
 * byte tokenizer (ids 0-255; id 256 is end-of-text when the model's
 * vocabulary has room for it).
 *
 * GPT-2 BPE gives the ids of GPT-2's own encoder: its pre-tokenisation
 * regex with Unicode 15.0 letter and number classes and ECMAScript's \s,
 * then merges by rank. Input is bytes, not necessarily UTF-8: a byte that
 * does not start a valid UTF-8 sequence (overlong, surrogate, past
 * U+10FFFF, truncated, stray continuation) counts as one character that is
 * neither letter, number nor space, whose byte is merged like any other, so
 * decode(encode(s)) == s for every byte string. "<|endoftext|>" in text is
 * encoded as text; decode skips end-of-text and ids without a token.
 *
 * Ownership: the tokenizer handle is freed with trail_tokenizer_free
 * (NULL is a no-op); id and text buffers returned through pointers are
 * trail_malloc'd and the caller's. A loaded tokenizer may be used from
 * several threads at once.
 */
#ifndef TRAIL_TOKENIZER_H
#define TRAIL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "trail.h"

typedef struct trail_tokenizer trail_tokenizer;

int trail_tokenizer_bytes(trail_tokenizer **out);
/*
 * "bytes", or a directory with tokenizer.json ({"type":"bytes"}), with
 * vocab.json and merges.txt (Hugging Face's names), or with encoder.json and
 * vocab.bpe (OpenAI's names for the same files).
 */
int trail_tokenizer_load(const char *spec, trail_tokenizer **out, trail_error *err);
/*
 * Write the tokenizer's files into dir: tokenizer.json {"type":"bytes"}, or
 * vocab.json (compact, in id order) and merges.txt ("#version: 0.2", then
 * by rank), the same bytes for the same tokenizer whichever names it was
 * read from; a byte tokenizer's tokenizer.json there is removed.
 */
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
