/*
 * libtrail — common definitions: error codes, error detail, allocation hook.
 *
 * Rules that hold for the whole library:
 *  - Every exported symbol starts with trail_ (TRAIL_ for macros).
 *  - The library never prints and never exits; it returns an int error code
 *    (TRAIL_OK == 0) and, when the caller passes a trail_error, fills in a
 *    caller-owned detail (source, line, message).
 *  - Opaque handles are released with *_free(); *_free(NULL) is a no-op.
 *  - No global mutable state, except the allocation hook, which is set once
 *    at start-up (tests use it to inject allocation failures).
 */
#ifndef TRAIL_CORE_H
#define TRAIL_CORE_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define TRAIL_VERSION "0.1.0"

/* Error codes. Each maps to one exit status (trail_exit_status). */
enum trail_code {
	TRAIL_OK = 0,
	TRAIL_EVERIFY,   /* a check said no: rejected, invalid proof   -> 1  */
	TRAIL_EUSAGE,    /* bad command line                           -> 64 */
	TRAIL_EDATA,     /* bad input data                             -> 65 */
	TRAIL_ELIMIT,    /* input over a configured limit              -> 65 */
	TRAIL_ENOINPUT,  /* input missing or unreadable                -> 66 */
	TRAIL_EUNAVAIL,  /* service unavailable: lock held, port busy  -> 69 */
	TRAIL_EINTERNAL, /* internal error, broken invariant           -> 70 */
	TRAIL_ENOMEM,    /* out of memory                              -> 70 */
	TRAIL_EIO,       /* I/O error                                  -> 74 */
	TRAIL_EAGAIN,    /* temporary failure, retry                   -> 75 */
	TRAIL_ECODES
};

/*
 * Caller-owned error detail. Functions that take a `trail_error *err` accept
 * NULL. `source` names the input (a path, "<stdin>", a URL) and `line` is a
 * 1-based line number or 0 when it does not apply.
 */
typedef struct trail_error {
	int code;
	long line;
	char source[256];
	char msg[512];
} trail_error;

/* Fill in *err (if not NULL) and return code. */
int trail_error_set(trail_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int trail_error_at(trail_error *err, int code, const char *source, long line,
		   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Same, with errno's text appended as ": strerror(errno)". */
int trail_error_errno(trail_error *err, int code, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void trail_error_clear(trail_error *err);

const char *trail_strerror(int code);
int trail_exit_status(int code);

/*
 * Allocation. Every allocation in libtrail goes through these. The hook is
 * process-wide and must be set before any other trail_ call.
 */
void *trail_malloc(size_t n);
void *trail_calloc(size_t n, size_t size);
void *trail_realloc(void *p, size_t n);
void trail_free(void *p);
char *trail_strdup(const char *s);
char *trail_strndup(const char *s, size_t n);
void trail_set_alloc(void *(*m)(size_t), void *(*r)(void *, size_t), void (*f)(void *));

/* Initialise the crypto backend; safe to call more than once. */
int trail_init(void);

/*
 * Digests, encodings and safe file I/O.
 *
 * Ownership: functions returning a buffer through `void **out` / `char **out`
 * hand the caller a trail_malloc'd block, released with trail_free.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


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

/*
 * A buffer that takes at most max bytes: trail_capbuf_write has the shape of
 * a libcurl write callback (ctx is the trail_capbuf) and refuses, setting
 * over, the write that would pass max; it also refuses when memory runs out.
 */
typedef struct trail_capbuf {
	trail_buf b;
	size_t max;
	int over;
} trail_capbuf;
size_t trail_capbuf_write(char *p, size_t size, size_t n, void *ctx);
/*
 * The same buffer as an HTTP server's request body, read in pieces:
 * trail_capbuf_declare sets over when the Content-Length header (NULL if
 * none) already says more than max; trail_capbuf_add keeps a piece or,
 * once the body would pass max or memory runs out, sets over, drops what
 * it held and ignores every later piece. The body is b.p (NULL when
 * empty), b.n bytes, unless over.
 */
void trail_capbuf_declare(trail_capbuf *s, const char *content_length);
void trail_capbuf_add(trail_capbuf *s, const void *p, size_t n);

/*
 * A server's listen address, "HOST:PORT" ([v6]:PORT, port numeric), for
 * bind: *out is getaddrinfo's list (freeaddrinfo). TRAIL_EUSAGE naming the
 * option and `want` (the form, with examples) if it is not one.
 */
struct addrinfo;
int trail_listen_resolve(const char *listen, const char *want, struct addrinfo **out, trail_error *err);

/* Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
int trail_utf8_valid(const char *s, size_t n);

/* Path join into a trail_malloc'd string: trail_path(a, b) = "a/b". */
char *trail_path(const char *a, const char *b);
/* The first of dir/a and dir/b that exists, trail_malloc'd in *out (NULL if neither); TRAIL_ENOMEM when a path cannot be made. */
int trail_path_first(const char *dir, const char *a, const char *b, char **out);

/*
 * JSON on top of jansson: the NDJSON reader and canonical JSON (RFC 8785,
 * JCS) for everything that is hashed or signed.
 *
 * Ownership: json_t values follow jansson's reference counting; a value
 * returned through `json_t **out` is a new reference the caller must
 * json_decref. Buffers returned through `char **out` are trail_malloc'd.
 */

#include <stdio.h>

#include <jansson.h>


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
/* Every value of the NDJSON file at path, in order, as a new array in *lines. */
int trail_ndjson_slurp(const char *path, size_t max_line, json_t **lines, trail_error *err);

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

/*
 * Command-line support shared by every program: one option table drives
 * parsing, --help and shell completion; error reporting in the house format
 * "prog: error: source:line: message"; a checked final write to stdout; a
 * progress bar on stderr.
 *
 * The library writes only to the streams the caller passes in.
 */

#include <stdio.h>


typedef struct trail_opt {
	int id;               /* returned by trail_args_next; > 0 */
	const char *name;     /* long name, without "--" */
	char shortname;       /* 0 when none */
	const char *arg;      /* argument placeholder ("FILE", "N"); NULL for a flag */
	const char *help;     /* one line */
	const char *complete; /* argument completion: "file", "dir", or words "a b c" */
} trail_opt;

typedef struct trail_cli {
	const char *prog;        /* program name */
	const char *usage;       /* usage lines after "usage: ", '\n' separated */
	const char *summary;     /* one sentence */
	const char *subcommands; /* space-separated, or NULL */
	const trail_opt *opts;   /* terminated by an entry with id 0 */
} trail_cli;

/* Parser state. Positional arguments are gathered in rest[0..nrest). */
typedef struct trail_args {
	const trail_cli *cli;
	int argc, i;
	char **argv;
	const char *bundle; /* remaining short flags in "-abc" */
	char **rest;
	int nrest;
	int dashdash;
	FILE *out; /* where --help, --version, --completion write */
} trail_args;

enum {
	TRAIL_ARGS_END = -1,   /* no more options; see rest/nrest */
	TRAIL_ARGS_ERROR = -2, /* usage error; err is set (TRAIL_EUSAGE) */
	TRAIL_ARGS_EXIT = -3,  /* --help/--version/--completion written: exit 0 */
};

/*
 * Initialise a parser. rest is allocated here and released by
 * trail_args_release. Options may follow positional arguments; "--" ends
 * options. Built in: -h/--help, --version, --completion bash|zsh|fish.
 */
int trail_args_init(trail_args *a, const trail_cli *cli, int argc, char **argv, FILE *out);
/* Next option: its id (>0), or a TRAIL_ARGS_* value. *val gets the argument. */
int trail_args_next(trail_args *a, const char **val, trail_error *err);
void trail_args_release(trail_args *a);

void trail_cli_usage(const trail_cli *cli, FILE *out);
int trail_cli_completion(const trail_cli *cli, const char *shell, FILE *out);

/* Parse helpers for option arguments; on failure set err (TRAIL_EUSAGE). */
/* The CPUs this process may run on (sched_getaffinity), at least 1: the default thread count. */
int trail_cpu_count(void);

int trail_parse_long(const char *s, long long min, long long max, long long *out,
		     const char *what, trail_error *err);
int trail_parse_double(const char *s, double min, double max, double *out,
		       const char *what, trail_error *err);

/*
 * Print "prog: error: [source:[line:]] message" to f and return the exit
 * status of err->code. A usage error adds a hint to run --help.
 */
int trail_cli_report(const trail_cli *cli, const trail_error *err, FILE *f);
/* Flush and check stdout; returns status, or 74 if the final write failed. */
int trail_cli_finish(const trail_cli *cli, int status);

/* Progress on stderr: shown when enabled (terminal by default). */
typedef struct trail_progress trail_progress;
/* mode: -1 auto (isatty), 0 off, 1 on. total 0 = unknown. */
trail_progress *trail_progress_new(FILE *f, int mode, const char *label, unsigned long long total);
void trail_progress_set(trail_progress *p, unsigned long long done);
void trail_progress_free(trail_progress *p); /* ends the line */

#endif
