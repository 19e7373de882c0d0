/*
 * Digests, encodings and safe file I/O.
 *
 * Ownership: functions returning a buffer through `void **out` / `char **out`
 * hand the caller a trail_malloc'd block, released with trail_free.
 */
#ifndef TRAIL_UTIL_H
#define TRAIL_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "trail.h"

#define TRAIL_DIGEST_LEN 32
/* "sha256:" + 64 hex + NUL */
#define TRAIL_DIGEST_STRLEN 72

void trail_sha256(const void *buf, size_t len, uint8_t out[TRAIL_DIGEST_LEN]);
/* Format a digest as "sha256:<hex>"; out has TRAIL_DIGEST_STRLEN bytes. */
void trail_digest_format(const uint8_t d[TRAIL_DIGEST_LEN], char out[TRAIL_DIGEST_STRLEN]);
/* Parse "sha256:<64 lowercase hex>"; TRAIL_EDATA if malformed. */
int trail_digest_parse(const char *s, uint8_t out[TRAIL_DIGEST_LEN]);
/* Digest of a buffer, as a string. */
void trail_digest_str(const void *buf, size_t len, char out[TRAIL_DIGEST_STRLEN]);

/* Lowercase hex; out has 2*len+1 bytes. */
void trail_hex(const uint8_t *in, size_t len, char *out);
/* Decode exactly outlen bytes of hex (either case); TRAIL_EDATA otherwise. */
int trail_unhex(const char *in, size_t inlen, uint8_t *out, size_t outlen);
/* Standard base64 with padding; out has trail_base64_len(len) bytes. */
size_t trail_base64_len(size_t len);
void trail_base64(const uint8_t *in, size_t len, char *out);
/* Strict decode (canonical padding); *outlen gets the length. */
int trail_unbase64(const char *in, size_t inlen, uint8_t *out, size_t maxout, size_t *outlen);

/*
 * Write a file atomically: temp file in the same directory, write, fsync,
 * rename over path, fsync the directory. Either the old or the new content
 * survives a crash.
 */
int trail_write_atomic(const char *path, const void *buf, size_t len, mode_t mode,
		       trail_error *err);
/* Read a whole file (at most max bytes; 0 = no limit). Adds a NUL after the data. */
int trail_read_file(const char *path, size_t max, void **out, size_t *len, trail_error *err);
/* Read a whole stream fd until EOF (at most max bytes, 0 = no limit). */
int trail_read_fd(int fd, const char *source, size_t max, void **out, size_t *len,
		  trail_error *err);
/* write() all of buf, retrying on EINTR and short writes. */
int trail_write_all(int fd, const void *buf, size_t len, const char *what, trail_error *err);
/* fsync a directory. */
int trail_fsync_dir(const char *dir, trail_error *err);
/* mkdir -p with mode. */
int trail_mkdirs(const char *path, mode_t mode, trail_error *err);

/* Read-only mapping of a whole file. */
typedef struct trail_map {
	void *data;
	size_t len;
} trail_map;
int trail_map_file(const char *path, trail_map *m, trail_error *err);
void trail_unmap(trail_map *m);

/*
 * A growable byte buffer. Data is always followed by a NUL (not counted in
 * n). trail_buf_put returns TRAIL_ENOMEM and leaves the buffer as it was.
 */
typedef struct trail_buf {
	char *p;
	size_t n, cap;
} trail_buf;
int trail_buf_put(trail_buf *b, const void *data, size_t n);
void trail_buf_release(trail_buf *b);

/* Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
int trail_utf8_valid(const char *s, size_t n);

/* Path join into a trail_malloc'd string: trail_path(a, b) = "a/b". */
char *trail_path(const char *a, const char *b);

#endif
