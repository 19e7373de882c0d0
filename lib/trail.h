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
#ifndef TRAIL_H
#define TRAIL_H

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

#endif
