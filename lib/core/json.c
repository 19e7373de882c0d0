#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/*
 * jansson reports a failed allocation as an error with no text (or, deep in
 * the lexer, as a syntax error, which cannot be told apart).
 */
static int parse_code(const json_error_t *je)
{
	if (json_error_code(je) == json_error_out_of_memory || !je->text[0])
		return TRAIL_ENOMEM;
	return TRAIL_EDATA;
}

/*
 * Strict parse. A failure is retried once: jansson reports some failed
 * allocations as syntax errors, and a second pass tells the two apart.
 */
static json_t *load(const char *buf, size_t len, json_error_t *je)
{
	const size_t flags = JSON_REJECT_DUPLICATES | JSON_DECODE_ANY;
	json_t *v = json_loadb(buf, len, flags, je);
	if (!v && json_error_code(je) != json_error_out_of_memory)
		v = json_loadb(buf, len, flags, je);
	return v;
}

/* ---- NDJSON reader ---------------------------------------------------- */

struct trail_ndjson {
	FILE *f;
	char source[256];
	size_t max;
	long lineno;
	char *buf; /* block buffer: [pos, fill) unread */
	size_t cap, pos, fill;
	char *line; /* current line (owned, grows) */
	size_t linecap, linelen;
	int eof;
};

#define BLOCK (64u << 10)

trail_ndjson *trail_ndjson_new(FILE *f, const char *source, size_t max_line)
{
	trail_ndjson *r = trail_calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->f = f;
	snprintf(r->source, sizeof r->source, "%s", source ? source : "<stdin>");
	r->max = max_line ? max_line : TRAIL_NDJSON_MAX_LINE;
	r->cap = BLOCK;
	r->buf = trail_malloc(r->cap);
	if (!r->buf) {
		trail_free(r);
		return NULL;
	}
	return r;
}

int trail_ndjson_slurp(const char *path, size_t max_line, json_t **lines, trail_error *err)
{
	FILE *f = fopen(path, "r");
	json_t *v = NULL, *a = NULL;
	int rc = TRAIL_OK;
	*lines = NULL;
	if (!f)
		return trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", path);
	trail_ndjson *r = trail_ndjson_new(f, path, max_line);
	if (!r || !(a = json_array()))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	while (!rc && !(rc = trail_ndjson_next(r, &v, err)) && v)
		if (json_array_append_new(a, v))
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	trail_ndjson_free(r);
	fclose(f);
	if (rc)
		json_decref(a);
	else
		*lines = a;
	return rc;
}

void trail_ndjson_free(trail_ndjson *r)
{
	if (!r)
		return;
	trail_free(r->buf);
	trail_free(r->line);
	trail_free(r);
}

static int line_append(trail_ndjson *r, const char *p, size_t n)
{
	if (r->linelen + n + 1 > r->linecap) {
		size_t c = r->linecap ? r->linecap : 256;
		while (c < r->linelen + n + 1)
			c *= 2;
		char *nl = trail_realloc(r->line, c);
		if (!nl)
			return TRAIL_ENOMEM;
		r->line = nl;
		r->linecap = c;
	}
	memcpy(r->line + r->linelen, p, n);
	r->linelen += n;
	r->line[r->linelen] = 0;
	return TRAIL_OK;
}

/*
 * Read one line into r->line. Returns 1 if a line was read, 0 at EOF, or a
 * negative trail code. A line over the cap is consumed to its end and
 * reported as TRAIL_ELIMIT (so reading can continue).
 */
static int read_line(trail_ndjson *r, int *over)
{
	r->linelen = 0;
	*over = 0;
	int got = 0;
	for (;;) {
		if (r->pos == r->fill) {
			if (r->eof)
				return got;
			r->fill = fread(r->buf, 1, r->cap, r->f);
			r->pos = 0;
			if (r->fill == 0) {
				if (ferror(r->f))
					return -TRAIL_EIO;
				r->eof = 1;
				return got;
			}
		}
		got = 1;
		char *s = r->buf + r->pos;
		char *nl = memchr(s, '\n', r->fill - r->pos);
		size_t n = nl ? (size_t)(nl - s) : r->fill - r->pos;
		if (!*over) {
			if (r->linelen + n > r->max) {
				*over = 1;
			} else if (line_append(r, s, n)) {
				return -TRAIL_ENOMEM;
			}
		}
		r->pos += n + (nl ? 1 : 0);
		if (nl)
			return 1;
	}
}

int trail_ndjson_next(trail_ndjson *r, json_t **out, trail_error *err)
{
	*out = NULL;
	for (;;) {
		int over;
		int rc = read_line(r, &over);
		if (rc < 0)
			return trail_error_at(err, -rc, r->source, r->lineno + 1, "%s",
					      rc == -TRAIL_EIO ? "read error" : "out of memory");
		if (rc == 0)
			return TRAIL_OK;
		r->lineno++;
		if (over)
			return trail_error_at(err, TRAIL_ELIMIT, r->source, r->lineno,
					      "line longer than %zu bytes", r->max);
		size_t n = r->linelen;
		if (n && r->line[n - 1] == '\r')
			r->line[--n] = 0;
		size_t i = 0;
		while (i < n && (r->line[i] == ' ' || r->line[i] == '\t'))
			i++;
		if (i == n)
			continue;
		json_error_t je;
		*out = load(r->line, n, &je);
		if (!*out)
			return trail_error_at(err, parse_code(&je),
					      r->source, r->lineno, "invalid json: %s (column %d)",
					      je.text, je.column);
		return TRAIL_OK;
	}
}

const char *trail_ndjson_line(const trail_ndjson *r, size_t *len)
{
	if (len)
		*len = r->linelen;
	return r->line ? r->line : "";
}

size_t trail_ndjson_buffered(const trail_ndjson *r)
{
	return r->fill - r->pos;
}

long trail_ndjson_lineno(const trail_ndjson *r)
{
	return r->lineno;
}

int trail_json_parse(const char *buf, size_t len, const char *source, json_t **out,
		     trail_error *err)
{
	json_error_t je;
	*out = load(buf, len, &je);
	if (!*out)
		return trail_error_at(err, parse_code(&je),
				      source, je.line > 0 ? je.line : 0,
				      "invalid json: %s (column %d)", je.text, je.column);
	return TRAIL_OK;
}

/* ---- canonical JSON (RFC 8785) ---------------------------------------- */

typedef struct sb {
	trail_buf b;
	int oom;
} sb;

static void sb_put(sb *b, const char *s, size_t n)
{
	if (!b->oom && trail_buf_put(&b->b, s, n))
		b->oom = 1;
}

static void sb_putc(sb *b, char c)
{
	sb_put(b, &c, 1);
}

int trail_jcs_number(double d, char *buf, size_t size)
{
	if (!isfinite(d))
		return TRAIL_EDATA;
	if (d == 0) {
		snprintf(buf, size, "0");
		return TRAIL_OK;
	}
	/* Shortest digits that round-trip: the ECMAScript digit string. */
	char tmp[40];
	int prec;
	for (prec = 0; prec < 17; prec++) {
		snprintf(tmp, sizeof tmp, "%.*e", prec, d);
		if (strtod(tmp, NULL) == d)
			break;
	}
	/* tmp is [-]D[.DDD]e[+-]XX: split into sign, digits, exponent. */
	const char *p = tmp;
	int neg = 0;
	if (*p == '-') {
		neg = 1;
		p++;
	}
	char digits[24];
	int k = 0;
	for (; *p && *p != 'e'; p++)
		if (*p != '.')
			digits[k++] = *p;
	while (k > 1 && digits[k - 1] == '0')
		k--;
	digits[k] = 0;
	int n = atoi(p + 1) + 1; /* value = 0.digits * 10^n */
	char *o = buf;
	size_t left = size;
#define EMIT(...)                                                    \
	do {                                                         \
		int w_ = snprintf(o, left, __VA_ARGS__);             \
		if (w_ < 0 || (size_t)w_ >= left)                    \
			return TRAIL_EINTERNAL;                      \
		o += w_;                                             \
		left -= (size_t)w_;                                  \
	} while (0)
	if (neg)
		EMIT("-");
	if (k <= n && n <= 21) {
		EMIT("%s%.*s", digits, n - k, "000000000000000000000");
	} else if (0 < n && n <= 21) {
		EMIT("%.*s.%s", n, digits, digits + n);
	} else if (-6 < n && n <= 0) {
		EMIT("0.%.*s%s", -n, "000000", digits);
	} else {
		int e = n - 1;
		if (k == 1)
			EMIT("%se%c%d", digits, e < 0 ? '-' : '+', abs(e));
		else
			EMIT("%c.%se%c%d", digits[0], digits + 1, e < 0 ? '-' : '+', abs(e));
	}
#undef EMIT
	return TRAIL_OK;
}

static void put_string(sb *b, const char *s, size_t n)
{
	static const char hx[] = "0123456789abcdef";
	sb_putc(b, '"');
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		sb_put(b, s + run, i - run);
		run = i + 1;
		char e[7] = {'\\', 0};
		switch (c) {
		case '"': e[1] = '"'; break;
		case '\\': e[1] = '\\'; break;
		case '\b': e[1] = 'b'; break;
		case '\f': e[1] = 'f'; break;
		case '\n': e[1] = 'n'; break;
		case '\r': e[1] = 'r'; break;
		case '\t': e[1] = 't'; break;
		default:
			memcpy(e, "\\u00", 4);
			e[4] = hx[c >> 4];
			e[5] = hx[c & 15];
		}
		sb_put(b, e, strlen(e));
	}
	sb_put(b, s + run, n - run);
	sb_putc(b, '"');
}

/* Next UTF-16 code unit of a UTF-8 string (jansson has validated it). */
static unsigned next_unit(const unsigned char **p, const unsigned char *end, unsigned *pending)
{
	if (*pending) {
		unsigned u = *pending;
		*pending = 0;
		return u;
	}
	const unsigned char *s = *p;
	unsigned cp;
	if (s[0] < 0x80) {
		cp = s[0];
		*p += 1;
	} else if (s[0] < 0xE0 && s + 1 < end) {
		cp = (unsigned)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
		*p += 2;
	} else if (s[0] < 0xF0 && s + 2 < end) {
		cp = (unsigned)(s[0] & 0x0F) << 12 | (unsigned)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
		*p += 3;
	} else if (s + 3 < end) {
		cp = (unsigned)(s[0] & 0x07) << 18 | (unsigned)(s[1] & 0x3F) << 12 |
		     (unsigned)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
		*p += 4;
	} else {
		cp = s[0];
		*p = end;
	}
	if (cp >= 0x10000) {
		cp -= 0x10000;
		*pending = 0xDC00 | (cp & 0x3FF);
		return 0xD800 | (cp >> 10);
	}
	return cp;
}

static int utf16_cmp(const void *a, const void *b)
{
	const char *x = *(const char *const *)a, *y = *(const char *const *)b;
	const unsigned char *p = (const unsigned char *)x, *q = (const unsigned char *)y;
	const unsigned char *pe = p + strlen(x), *qe = q + strlen(y);
	unsigned pp = 0, qp = 0;
	while ((p < pe || pp) && (q < qe || qp)) {
		unsigned u = next_unit(&p, pe, &pp), v = next_unit(&q, qe, &qp);
		if (u != v)
			return u < v ? -1 : 1;
	}
	int ra = p < pe || pp, rb = q < qe || qp;
	return ra - rb;
}

#define JCS_MAX_DEPTH 512

static int jcs_value(sb *b, const json_t *v, int depth, trail_error *err)
{
	char num[40];
	if (depth > JCS_MAX_DEPTH)
		return trail_error_set(err, TRAIL_ELIMIT, "json nested deeper than %d", JCS_MAX_DEPTH);
	switch (json_typeof(v)) {
	case JSON_NULL: sb_put(b, "null", 4); break;
	case JSON_TRUE: sb_put(b, "true", 4); break;
	case JSON_FALSE: sb_put(b, "false", 5); break;
	case JSON_INTEGER: {
		json_int_t i = json_integer_value(v);
		if (i > (1LL << 53) || i < -(1LL << 53))
			return trail_error_set(err, TRAIL_EDATA,
					       "integer %lld has no exact canonical form (beyond 2^53)",
					       (long long)i);
		int w = snprintf(num, sizeof num, "%lld", (long long)i);
		sb_put(b, num, (size_t)w);
		break;
	}
	case JSON_REAL: {
		double d = json_real_value(v);
		/*
		 * ECMAScript prints these as integer literals, which no exact
		 * integer parser reads back as the same double: refuse them as
		 * we refuse integers beyond 2^53.
		 */
		if (fabs(d) > 9007199254740992.0 && fabs(d) < 1e21)
			return trail_error_set(err, TRAIL_EDATA,
					       "number %.17g has no exact canonical form (integral, beyond 2^53)",
					       d);
		if (trail_jcs_number(d, num, sizeof num))
			return trail_error_set(err, TRAIL_EDATA, "non-finite number");
		sb_put(b, num, strlen(num));
		break;
	}
	case JSON_STRING:
		put_string(b, json_string_value(v), json_string_length(v));
		break;
	case JSON_ARRAY: {
		sb_putc(b, '[');
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				sb_putc(b, ',');
			int rc = jcs_value(b, json_array_get(v, i), depth + 1, err);
			if (rc)
				return rc;
		}
		sb_putc(b, ']');
		break;
	}
	case JSON_OBJECT: {
		size_t n = json_object_size(v), i = 0;
		const char **keys = trail_malloc((n ? n : 1) * sizeof *keys);
		if (!keys)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		const char *k;
		json_t *x;
		json_object_foreach((json_t *)v, k, x) keys[i++] = k;
		qsort(keys, n, sizeof *keys, utf16_cmp);
		sb_putc(b, '{');
		for (i = 0; i < n; i++) {
			if (i)
				sb_putc(b, ',');
			put_string(b, keys[i], strlen(keys[i]));
			sb_putc(b, ':');
			int rc = jcs_value(b, json_object_get(v, keys[i]), depth + 1, err);
			if (rc) {
				trail_free(keys);
				return rc;
			}
		}
		sb_putc(b, '}');
		trail_free(keys);
		break;
	}
	}
	return TRAIL_OK;
}

int trail_jcs(const json_t *v, char **out, size_t *len, trail_error *err)
{
	sb b = {0};
	int rc = jcs_value(&b, v, 0, err);
	if (!rc && !b.b.p)
		sb_put(&b, "", 0);
	if (!rc && b.oom)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (rc) {
		trail_buf_release(&b.b);
		return rc;
	}
	*out = b.b.p;
	if (len)
		*len = b.b.n;
	return TRAIL_OK;
}

int trail_jcs_digest(const json_t *v, char out[72], trail_error *err)
{
	char *s;
	size_t n;
	int rc = trail_jcs(v, &s, &n, err);
	if (rc)
		return rc;
	trail_digest_str(s, n, out);
	trail_free(s);
	return TRAIL_OK;
}
