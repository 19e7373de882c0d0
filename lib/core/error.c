#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "core/core.h"

static const struct {
	const char *text;
	int status;
} codes[TRAIL_ECODES] = {
	[TRAIL_OK] = {"ok", 0},
	[TRAIL_EVERIFY] = {"verification failed", 1},
	[TRAIL_EUSAGE] = {"usage error", 64},
	[TRAIL_EDATA] = {"bad input data", 65},
	[TRAIL_ELIMIT] = {"input over limit", 65},
	[TRAIL_ENOINPUT] = {"input missing or unreadable", 66},
	[TRAIL_EUNAVAIL] = {"service unavailable", 69},
	[TRAIL_EINTERNAL] = {"internal error", 70},
	[TRAIL_ENOMEM] = {"out of memory", 70},
	[TRAIL_EIO] = {"i/o error", 74},
	[TRAIL_EAGAIN] = {"temporary failure", 75},
};

const char *trail_strerror(int code)
{
	if (code < 0 || code >= TRAIL_ECODES)
		return "unknown error";
	return codes[code].text;
}

int trail_exit_status(int code)
{
	if (code < 0 || code >= TRAIL_ECODES)
		return 70;
	return codes[code].status;
}

static int vset(trail_error *err, int code, const char *source, long line,
		const char *fmt, va_list ap)
{
	if (!err)
		return code;
	/* Format aside first: callers may pass err->msg or err->source as arguments. */
	char msg[sizeof err->msg], src[sizeof err->source];
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (source) {
		snprintf(src, sizeof src, "%s", source);
		memcpy(err->source, src, sizeof src);
		err->line = line;
	}
	memcpy(err->msg, msg, sizeof msg);
	err->code = code;
	return code;
}

int trail_error_set(trail_error *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(err, code, NULL, 0, fmt, ap);
	va_end(ap);
	return code;
}

int trail_error_at(trail_error *err, int code, const char *source, long line,
		   const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(err, code, source, line, fmt, ap);
	va_end(ap);
	return code;
}

int trail_error_errno(trail_error *err, int code, int errnum, const char *fmt, ...)
{
	va_list ap;
	if (!err)
		return code;
	va_start(ap, fmt);
	vset(err, code, NULL, 0, fmt, ap);
	va_end(ap);
	size_t n = strlen(err->msg);
	char e[128];
	snprintf(e, sizeof e, ": %s", strerror(errnum));
	snprintf(err->msg + n, sizeof err->msg - n, "%s", e);
	return code;
}

void trail_error_clear(trail_error *err)
{
	if (err)
		memset(err, 0, sizeof *err);
}

/* The allocation hook: set once at start-up, read everywhere. */
static void *(*hook_malloc)(size_t) = malloc;
static void *(*hook_realloc)(void *, size_t) = realloc;
static void (*hook_free)(void *) = free;

void trail_set_alloc(void *(*m)(size_t), void *(*r)(void *, size_t), void (*f)(void *))
{
	hook_malloc = m ? m : malloc;
	hook_realloc = r ? r : realloc;
	hook_free = f ? f : free;
	json_set_alloc_funcs(hook_malloc, hook_free);
}

void *trail_malloc(size_t n)
{
	return hook_malloc(n ? n : 1);
}

void *trail_calloc(size_t n, size_t size)
{
	if (size && n > SIZE_MAX / size)
		return NULL;
	size_t total = n * size;
	void *p = hook_malloc(total ? total : 1);
	if (p)
		memset(p, 0, total);
	return p;
}

void *trail_realloc(void *p, size_t n)
{
	return hook_realloc(p, n ? n : 1);
}

void trail_free(void *p)
{
	if (p)
		hook_free(p);
}

char *trail_strndup(const char *s, size_t n)
{
	char *d = trail_malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}

char *trail_strdup(const char *s)
{
	return trail_strndup(s, strlen(s));
}

int trail_init(void)
{
	return sodium_init() < 0 ? TRAIL_EINTERNAL : TRAIL_OK;
}
