#include <stdio.h>
#include <string.h>

#include <curl/curl.h>

#include "data/data.h"
#include "core/core.h"

int trail_source_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? TRAIL_OK : TRAIL_EINTERNAL;
}

int trail_is_url(const char *s)
{
	return !strncmp(s, "http://", 7) || !strncmp(s, "https://", 8);
}

int trail_fetch(const char *url, const trail_fetch_opts *o, void **out, size_t *len,
		char digest[72], trail_error *err)
{
	trail_capbuf s = {.max = o && o->max_bytes ? o->max_bytes : (size_t)256 << 20};
	CURL *c = curl_easy_init();
	char ebuf[CURL_ERROR_SIZE] = "";
	int rc = TRAIL_OK;
	if (!c)
		return trail_error_set(err, TRAIL_ENOMEM, "curl: cannot start");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, o && o->max_redirects >= 0 ? o->max_redirects : 3L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, o && o->timeout_s > 0 ? o->timeout_s : 60L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s.max);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, trail_capbuf_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "trail/" TRAIL_VERSION);
	CURLcode cc = curl_easy_perform(c);
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (s.over || cc == CURLE_FILESIZE_EXCEEDED)
		rc = trail_error_at(err, TRAIL_ELIMIT, url, 0, "larger than %zu bytes", s.max);
	else if (cc == CURLE_OPERATION_TIMEDOUT || (cc == CURLE_HTTP_RETURNED_ERROR && status >= 500))
		rc = trail_error_at(err, TRAIL_EAGAIN, url, 0, "%s", ebuf[0] ? ebuf : curl_easy_strerror(cc));
	else if (cc == CURLE_TOO_MANY_REDIRECTS)
		rc = trail_error_at(err, TRAIL_EDATA, url, 0, "too many redirects");
	else if (cc != CURLE_OK)
		rc = trail_error_at(err, TRAIL_ENOINPUT, url, 0, "%s", ebuf[0] ? ebuf : curl_easy_strerror(cc));
	curl_easy_cleanup(c);
	if (rc) {
		trail_buf_release(&s.b);
		return rc;
	}
	if (!s.b.p && trail_buf_put(&s.b, "", 0))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	trail_digest_str(s.b.p, s.b.n, digest);
	if (o && o->sha256) {
		const char *pin = o->sha256;
		if (!strncmp(pin, "sha256:", 7))
			pin += 7;
		if (strcasecmp(pin, digest + 7)) {
			trail_buf_release(&s.b);
			return trail_error_at(err, TRAIL_EVERIFY, url, 0, "content is %s, not the pinned sha256:%s",
					      digest, pin);
		}
	}
	*out = s.b.p;
	*len = s.b.n;
	return TRAIL_OK;
}

int trail_source_kind(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	if (len >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd)
		return TRAIL_SRC_BUNDLE;
	if (len >= 262 && !memcmp(p + 257, "ustar", 5))
		return TRAIL_SRC_BUNDLE;
	size_t i = 0;
	while (i < len && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t'))
		i++;
	return i < len && p[i] == '{' ? TRAIL_SRC_NDJSON : TRAIL_SRC_TEXT;
}

/* One piece of text, trimmed, to fn (nothing when it is empty). */
static int text_trim(const char *s, size_t n, long line, trail_text_fn fn, void *ctx,
		     trail_error *err)
{
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	while (n && (*s == '\n' || *s == '\r')) {
		if (*s == '\n')
			line++;
		s++, n--;
	}
	return n ? fn(ctx, s, n, line, err) : TRAIL_OK;
}

int trail_source_split_text(const void *buf, size_t len, int per_file, trail_text_fn fn,
			    void *ctx, trail_error *err)
{
	const char *p = buf, *end = p + len, *start = p;
	long line = 1, start_line = 1;
	int rc;
	if (per_file)
		p = end;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *next = nl ? nl + 1 : end;
		int blank = 1;
		for (const char *q = p; q < (nl ? nl : end); q++)
			if (*q != ' ' && *q != '\t' && *q != '\r')
				blank = 0;
		if (blank) {
			if ((rc = text_trim(start, (size_t)(p - start), start_line, fn, ctx, err)))
				return rc;
			start = next;
			start_line = line + 1;
		}
		p = next;
		line++;
	}
	return text_trim(start, (size_t)(end - start), start_line, fn, ctx, err);
}

struct add_ctx {
	json_t *records;
	const char *source;
};

static int add_text(void *ctx, const char *s, size_t n, long line, trail_error *err)
{
	struct add_ctx *a = ctx;
	if (!trail_utf8_valid(s, n))
		return trail_error_at(err, TRAIL_EDATA, a->source, line, "text is not valid UTF-8");
	json_t *r = json_pack("{s:s%}", "text", s, n);
	if (!r || json_array_append_new(a->records, r))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	return TRAIL_OK;
}

int trail_source_records(const void *buf, size_t len, const char *source, int per_file,
			 json_t *records, trail_error *err)
{
	int rc;
	if (trail_source_kind(buf, len) == TRAIL_SRC_NDJSON) {
		FILE *f = fmemopen((void *)buf, len, "r");
		trail_ndjson *r = f ? trail_ndjson_new(f, source, 0) : NULL;
		json_t *v;
		if (!r) {
			if (f)
				fclose(f);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		while ((rc = trail_ndjson_next(r, &v, err)) == TRAIL_OK && v) {
			if (!json_is_object(v)) {
				json_decref(v);
				rc = trail_error_at(err, TRAIL_EDATA, source, trail_ndjson_lineno(r),
						    "a record is a JSON object");
				break;
			}
			if (json_array_append_new(records, v)) {
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				break;
			}
		}
		trail_ndjson_free(r);
		fclose(f);
		return rc;
	}
	struct add_ctx a = {records, source};
	return trail_source_split_text(buf, len, per_file, add_text, &a, err);
}

int trail_source_read(const char *input, const trail_fetch_opts *o, void **out, size_t *len,
		      json_t **source, trail_error *err)
{
	char digest[72];
	if (trail_is_url(input)) {
		int rc = trail_fetch(input, o, out, len, digest, err);
		if (rc || !source)
			return rc;
		json_decref(*source);
		if (!(*source = json_pack("{s:s, s:s}", "url", input, "sha256", digest))) {
			trail_free(*out);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		return TRAIL_OK;
	}
	size_t max = o && o->max_bytes ? o->max_bytes : (size_t)256 << 20;
	return strcmp(input, "-") ? trail_read_file(input, max, out, len, err)
				  : trail_read_fd(0, "<stdin>", max, out, len, err);
}

int trail_source_bundle(char *const *inputs, int n, const trail_source_opts *o,
			const char *datanet, const trail_signer *contributor, void **out,
			size_t *len, size_t *records, trail_error *err)
{
	static char *const std_in[] = {"-"};
	json_t *recs = json_array(), *source = NULL;
	void *buf = NULL;
	size_t blen;
	int rc = TRAIL_OK;
	*out = NULL;
	if (!recs)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (n == 0)
		inputs = std_in, n = 1;
	for (int i = 0; i < n && !rc; i++) {
		if ((rc = trail_source_read(inputs[i], &o->fetch, &buf, &blen, &source, err)))
			break;
		if (trail_source_kind(buf, blen) == TRAIL_SRC_BUNDLE) {
			trail_bundle *b;
			if (n > 1)
				rc = trail_error_at(err, TRAIL_EUSAGE, inputs[i], 0,
						    "a bundle is a whole contribution: give it alone");
			else if ((rc = trail_bundle_read(buf, blen, NULL, &b, err)))
				trail_error_at(err, rc, inputs[i], err ? err->line : 0, "%s", err ? err->msg : "");
			else {
				*records = json_array_size(b->records);
				trail_bundle_free(b);
				*out = buf, *len = blen, buf = NULL;
			}
			break;
		}
		rc = trail_source_records(buf, blen, inputs[i], o->per_file, recs, err);
		trail_free(buf);
		buf = NULL;
	}
	if (!rc && !*out) {
		if (!json_array_size(recs))
			rc = trail_error_set(err, TRAIL_EDATA, "no records in the input");
		else if (!(rc = trail_bundle_create(recs, datanet, o->license, n == 1 ? source : NULL,
						    contributor, o->zstd, out, len, err)))
			*records = json_array_size(recs);
	}
	trail_free(buf);
	json_decref(recs);
	json_decref(source);
	return rc;
}
