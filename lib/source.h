/*
 * Where contributions come from: files, standard input and http(s) URLs
 * (libcurl, with a size cap, a timeout, a redirect limit and an optional
 * SHA-256 pin), and turning their bytes into records.
 *
 * Ownership: buffers returned through `void **` are trail_malloc'd.
 */
#ifndef TRAIL_SOURCE_H
#define TRAIL_SOURCE_H

#include <stddef.h>

#include <jansson.h>

#include "key.h"
#include "trail.h"

typedef struct trail_fetch_opts {
	size_t max_bytes;  /* default 256 MiB */
	long timeout_s;    /* whole transfer; default 60 */
	long max_redirects; /* default 3 */
	const char *sha256; /* "sha256:<hex>" or bare hex pin; NULL = none */
} trail_fetch_opts;

/* Once per process, before any fetch (libcurl's global setup). */
int trail_source_init(void);

int trail_is_url(const char *s);
/* Fetch a URL. TRAIL_EVERIFY when the pin does not match; TRAIL_EAGAIN on timeouts and 5xx. */
int trail_fetch(const char *url, const trail_fetch_opts *o, void **out, size_t *len,
		char digest[72], trail_error *err);

enum { TRAIL_SRC_NDJSON, TRAIL_SRC_TEXT, TRAIL_SRC_BUNDLE };
/* Guess what bytes hold: a bundle (tar or zstd magic), NDJSON ('{' first), or text. */
int trail_source_kind(const void *buf, size_t len);

/*
 * Append the records in buf to `records`: NDJSON objects, or plain text as
 * {"text": ...}, one record per paragraph (blank-line separated) or, with
 * per_file, one for the whole input. Errors name `source` and the line.
 */
int trail_source_records(const void *buf, size_t len, const char *source, int per_file,
			 json_t *records, trail_error *err);

/*
 * Split plain text into records as trail_source_records does: one per
 * paragraph (lines of only spaces, tabs or CRs separate them) or, with
 * per_file, the whole input; each trimmed of trailing whitespace and
 * leading line breaks, empty ones skipped. fn gets the bytes (not yet
 * checked to be UTF-8) and the line each starts on; a non-zero return
 * stops the split and is returned. The one splitter of datanet-add and
 * datanet-validate, so both see the same records.
 */
typedef int (*trail_text_fn)(void *ctx, const char *text, size_t len, long line,
			     trail_error *err);
int trail_source_split_text(const void *buf, size_t len, int per_file, trail_text_fn fn,
			    void *ctx, trail_error *err);

/* Read one input whole: a file, "-" (standard input) or an http(s) URL. For
 * a URL, *source (if not NULL) gets {"url","sha256"}; else it is left alone. */
int trail_source_read(const char *input, const trail_fetch_opts *o, void **out, size_t *len,
		      json_t **source, trail_error *err);

typedef struct trail_source_opts {
	trail_fetch_opts fetch; /* also the size cap of files and standard input */
	int per_file;           /* plain text: one record per input */
	int zstd;               /* compress the bundle */
	const char *license;    /* the contribution's license; NULL: "" */
} trail_source_opts;

/*
 * One contribution from inputs (files, "-", URLs; none: "-"): their records
 * packed into one bundle for `datanet`, signed by `contributor`, with the
 * source in the manifest when the only input is a URL. An existing bundle
 * must come alone and is verified and passed through unchanged. *records
 * gets the record count. All inputs are read before anything is returned.
 */
int trail_source_bundle(char *const *inputs, int n, const trail_source_opts *o,
			const char *datanet, const trail_signer *contributor, void **out,
			size_t *len, size_t *records, trail_error *err);

#endif
