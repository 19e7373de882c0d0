/*
 * JSON on top of jansson: the NDJSON reader and canonical JSON (RFC 8785,
 * JCS) for everything that is hashed or signed.
 *
 * Ownership: json_t values follow jansson's reference counting; a value
 * returned through `json_t **out` is a new reference the caller must
 * json_decref. Buffers returned through `char **out` are trail_malloc'd.
 */
#ifndef TRAIL_JSON_H
#define TRAIL_JSON_H

#include <stdio.h>

#include <jansson.h>

#include "trail.h"

#define TRAIL_NDJSON_MAX_LINE (16u << 20) /* default line cap: 16 MiB */

typedef struct trail_ndjson trail_ndjson;

/*
 * Read NDJSON from f, named `source` in errors ("<stdin>", a path).
 * max_line 0 means the default. Blank lines are skipped.
 */
trail_ndjson *trail_ndjson_new(FILE *f, const char *source, size_t max_line);
/*
 * Next value: TRAIL_OK with *out set, or TRAIL_OK with *out == NULL at end
 * of input. Malformed JSON, a line over the cap, invalid UTF-8 or a
 * duplicate key give TRAIL_EDATA/TRAIL_ELIMIT with source and line in err;
 * reading may continue with the next line after an error.
 */
int trail_ndjson_next(trail_ndjson *r, json_t **out, trail_error *err);
/* The raw bytes of the last line read (without '\n'), valid until the next call. */
const char *trail_ndjson_line(const trail_ndjson *r, size_t *len);
long trail_ndjson_lineno(const trail_ndjson *r);
/* Bytes read from the stream but not yet returned as lines. */
size_t trail_ndjson_buffered(const trail_ndjson *r);
void trail_ndjson_free(trail_ndjson *r);

/* Parse one JSON text strictly (duplicate keys rejected). */
int trail_json_parse(const char *buf, size_t len, const char *source, json_t **out,
		     trail_error *err);

/*
 * Canonical JSON (RFC 8785): members sorted by UTF-16 code units, no
 * whitespace, minimal escapes, numbers in ECMAScript shortest form.
 * Integral numbers beyond +-2^53 (which ECMAScript would print as integer
 * literals no exact parser reads back) and non-finite reals are refused
 * (TRAIL_EDATA). *out is NUL-terminated.
 */
int trail_jcs(const json_t *v, char **out, size_t *len, trail_error *err);
/* ECMAScript Number::toString of a finite double into buf (>= 32 bytes). */
int trail_jcs_number(double d, char *buf, size_t size);
/* SHA-256 digest string of the canonical form. */
int trail_jcs_digest(const json_t *v, char out[72], trail_error *err);

#endif
