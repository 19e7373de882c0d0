/*
 * C2SP tlog-witness over HTTP: the witness's server (libmicrohttpd, POST
 * <prefix>/add-checkpoint) and the log's client (libcurl), which sends the
 * ledger's checkpoint with a consistency proof from the size the witness
 * last cosigned, learning that size from a 409 when it does not know it.
 *
 * Server limits: a body over 64 KiB is answered 413 (a checkpoint with 63
 * proof lines is under 8 KiB); a connection idle for 30 seconds is closed;
 * at most 64 connections at once, one thread each.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <curl/curl.h>
#include <sodium.h>
#include <microhttpd.h>

#include "core/core.h"
#include "ledger/ledger.h"

#define BODY_MAX (64u << 10)
#define REPLY_MAX (64u << 10)

struct trail_witness_server {
	trail_witness *w;
	struct MHD_Daemon *mhd;
	trail_witness_log_fn log;
	void *ctx;
	pthread_mutex_t mu; /* serialises log calls */
};

typedef struct conn {
	trail_capbuf body; /* at most BODY_MAX */
} conn;

__attribute__((format(printf, 2, 3))) static void logf_(trail_witness_server *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	if (!s->log)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&s->mu);
	s->log(s->ctx, line);
	pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result send_reply(struct MHD_Connection *c, int status, const char *type,
				  const char *body, size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", type);
	enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
	MHD_destroy_response(r);
	return ok;
}

static enum MHD_Result send_text(struct MHD_Connection *c, int status, const char *msg)
{
	return send_reply(c, status, "text/plain; charset=utf-8", msg, strlen(msg));
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *upload,
			       size_t *upload_size, void **ctx)
{
	trail_witness_server *s = cls;
	conn *k = *ctx;
	(void)version;
	if (!k) {
		if (!(k = trail_calloc(1, sizeof *k)))
			return MHD_NO;
		k->body.max = BODY_MAX;
		*ctx = k;
		trail_capbuf_declare(&k->body, MHD_lookup_connection_value(c, MHD_HEADER_KIND,
									  MHD_HTTP_HEADER_CONTENT_LENGTH));
		return MHD_YES;
	}
	if (*upload_size) {
		trail_capbuf_add(&k->body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (strcmp(url, "/add-checkpoint")) {
		logf_(s, "%s %s: 404 no such endpoint", method, url);
		return send_text(c, 404, "no such endpoint (POST /add-checkpoint)\n");
	}
	if (strcmp(method, "POST")) {
		logf_(s, "%s %s: 405 use POST", method, url);
		return send_text(c, 405, "use POST\n");
	}
	if (k->body.over) {
		logf_(s, "POST /add-checkpoint: 413 body over %u bytes", BODY_MAX);
		return send_text(c, 413, "request body too large\n");
	}
	trail_witness_reply r;
	trail_error e = {0};
	trail_witness_add_checkpoint(s->w, k->body.b.p ? k->body.b.p : "", k->body.b.n,
				     (uint64_t)time(NULL), &r, &e);
	if (r.status == 200)
		logf_(s, "%s: cosigned size %" PRIu64 " (old %" PRIu64 "): 200", r.origin, r.size, r.old);
	else
		logf_(s, "add-checkpoint: %d %s", r.status, e.msg);
	enum MHD_Result ok = r.body ? send_reply(c, r.status, r.type, r.body, r.len)
				    : send_text(c, 500, "out of memory\n");
	trail_witness_reply_release(&r);
	return ok;
}

static void completed(void *cls, struct MHD_Connection *c, void **ctx,
		      enum MHD_RequestTerminationCode why)
{
	conn *k = *ctx;
	(void)cls, (void)c, (void)why;
	if (!k)
		return;
	trail_buf_release(&k->body.b);
	trail_free(k);
	*ctx = NULL;
}

/* libmicrohttpd's own messages are not printed: lib/ never prints. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls, (void)fmt, (void)ap;
}

int trail_witness_server_start(trail_witness *w, const char *listen, trail_witness_log_fn log,
			       void *ctx, trail_witness_server **out, trail_error *err)
{
	struct addrinfo *ai;
	*out = NULL;
	int rc = trail_listen_resolve(listen, "HOST:PORT (127.0.0.1:7380, [::1]:7380)", &ai, err);
	if (rc)
		return rc;
	trail_witness_server *s = trail_calloc(1, sizeof *s);
	if (!s) {
		freeaddrinfo(ai);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	s->w = w;
	s->log = log;
	s->ctx = ctx;
	pthread_mutex_init(&s->mu, NULL);
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			 MHD_USE_ITC | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
	errno = 0;
	s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				  MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_LIMIT, 64u,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 << 10,
				  MHD_OPTION_THREAD_STACK_SIZE, (size_t)512 << 10,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_EXTERNAL_LOGGER,
				  mhd_log, NULL, MHD_OPTION_END);
	int en = errno;
	freeaddrinfo(ai);
	if (!s->mhd) {
		pthread_mutex_destroy(&s->mu);
		trail_free(s);
		return trail_error_errno(err, TRAIL_EUNAVAIL, en ? en : EADDRINUSE, "cannot listen on %s", listen);
	}
	*out = s;
	return TRAIL_OK;
}

int trail_witness_server_port(const trail_witness_server *s)
{
	const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
	return i ? i->port : -1;
}

void trail_witness_server_stop(trail_witness_server *s)
{
	if (!s)
		return;
	MHD_stop_daemon(s->mhd); /* joins the connection threads: requests in flight finish */
	pthread_mutex_destroy(&s->mu);
	trail_free(s);
}

/* ---- the log's side ---------------------------------------------------- */

/* POST body to url; status, Content-Type and body (capped) come back. */
static int post(const char *url, const char *body, size_t len, long timeout_s, long *status,
		char *ctype, size_t ctcap, trail_buf *out, trail_error *err)
{
	char ebuf[CURL_ERROR_SIZE] = "";
	if (curl_global_init(CURL_GLOBAL_DEFAULT))
		return trail_error_set(err, TRAIL_EINTERNAL, "libcurl did not initialise");
	CURL *c = curl_easy_init();
	if (!c)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	trail_capbuf cb = {.max = REPLY_MAX};
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: text/plain; charset=utf-8");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, timeout_s);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, trail_capbuf_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &cb);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "trail/" TRAIL_VERSION);
	CURLcode cc = curl_easy_perform(c);
	int rc = TRAIL_OK;
	if (cb.over)
		rc = trail_error_at(err, TRAIL_ELIMIT, url, 0, "response over %u bytes", REPLY_MAX);
	else if (cc != CURLE_OK)
		rc = trail_error_at(err, TRAIL_EUNAVAIL, url, 0, "%s", ebuf[0] ? ebuf : curl_easy_strerror(cc));
	if (!rc) {
		char *ct = NULL;
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
		curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
		snprintf(ctype, ctcap, "%s", ct ? ct : "");
		*out = cb.b;
	} else {
		trail_buf_release(&cb.b);
	}
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return rc;
}

/* The request body: "old N\n", the proof from old to size, "\n", the note. */
static int request_body(trail_ledger *l, uint64_t old, uint64_t size, const char *note, size_t notelen,
			trail_buf *b, trail_error *err)
{
	trail_hash proof[TRAIL_MERKLE_MAXPROOF];
	size_t np = 0;
	char line[64];
	int rc;
	if (old > 0 && old < size && (rc = trail_ledger_consistency(l, old, size, proof, &np, err)))
		return rc;
	int n = snprintf(line, sizeof line, "old %" PRIu64 "\n", old);
	rc = trail_buf_put(b, line, (size_t)n);
	for (size_t i = 0; !rc && i < np; i++) {
		trail_base64(proof[i], 32, line);
		n = (int)strlen(line);
		line[n++] = '\n';
		rc = trail_buf_put(b, line, (size_t)n);
	}
	if (!rc)
		rc = trail_buf_put(b, "\n", 1);
	if (!rc)
		rc = trail_buf_put(b, note, notelen);
	return rc ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
}

/* What the witness said, on one line, for the operator. */
static void quote_body(const trail_buf *b, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < b->n && o + 2 < cap; i++) {
		unsigned char ch = (unsigned char)b->p[i];
		if (ch == '\n' && i + 1 == b->n)
			break;
		out[o++] = ch == '\n' ? ' ' : ch < 0x20 ? '?' : (char)ch;
	}
	out[o] = 0;
}

int trail_witness_submit(trail_ledger *l, const char *note, size_t notelen, const char *url,
			 const trail_cosigner *c, long timeout_s, trail_witness_result *res,
			 trail_error *err)
{
	const char *bl = NULL;
	for (size_t i = 1; i < notelen; i++)
		if (note[i] == '\n' && note[i - 1] == '\n') {
			bl = note + i;
			break;
		}
	memset(res, 0, sizeof *res);
	if (!bl)
		return trail_error_set(err, TRAIL_EDATA, "malformed checkpoint note");
	size_t tl = (size_t)(bl - note);
	char *text = trail_strndup(note, tl), *u = NULL;
	uint64_t size, old = 0;
	trail_hash root;
	int rc = text ? trail_checkpoint_parse(text, NULL, &size, root, err)
		      : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	size_t ul = strlen(url) + 32;
	if (!rc && !(u = trail_malloc(ul)))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!rc) {
		size_t n = strlen(url);
		while (n && url[n - 1] == '/')
			n--;
		snprintf(u, ul, "%.*s/add-checkpoint", (int)n, url);
	}
	res->size = size;
	/* old 0 first: a 409 names the size the witness has (C2SP tlog-witness). */
	for (int tries = 0; !rc && tries < 3; tries++) {
		trail_buf b = {0}, reply = {0};
		char ctype[128];
		res->old = old;
		if ((rc = request_body(l, old, size, note, notelen, &b, err)) ||
		    (rc = post(u, b.p, b.n, timeout_s > 0 ? timeout_s : 30, &res->status, ctype,
			       sizeof ctype, &reply, err))) {
			trail_buf_release(&b);
			break;
		}
		trail_buf_release(&b);
		quote_body(&reply, res->body, sizeof res->body);
		uint64_t named;
		if (res->status == 409 && !strncmp(ctype, "text/x.tlog.size", 16) && reply.n &&
		    reply.p[reply.n - 1] == '\n' && reply.n < 22 && reply.p[0] >= '0' && reply.p[0] <= '9' &&
		    (named = strtoull(reply.p, NULL, 10), 1) && named != old) {
			old = named;
			trail_buf_release(&reply);
			continue;
		}
		if (res->status != 200) {
			rc = trail_error_set(err, TRAIL_EVERIFY, "witness %s refused the checkpoint (size %" PRIu64
					     ", old %" PRIu64 "): %ld %s", url, size, old, res->status, res->body);
			trail_buf_release(&reply);
			break;
		}
		/* Keep the lines by this witness that verify; ignore the rest. */
		trail_buf lines = {0};
		for (size_t p = 0; p < reply.n;) {
			const char *nl = memchr(reply.p + p, '\n', reply.n - p);
			size_t ll = nl ? (size_t)(nl - reply.p) - p : reply.n - p;
			if (!trail_cosignature_verify(c, text, tl, reply.p + p, ll, NULL, NULL) &&
			    (trail_buf_put(&lines, reply.p + p, ll) || trail_buf_put(&lines, "\n", 1))) {
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				break;
			}
			p += ll + 1;
		}
		trail_buf_release(&reply);
		if (!rc && !lines.n)
			rc = trail_error_set(err, TRAIL_EVERIFY, "witness %s answered 200 without a valid "
					     "cosignature by '%s'", url, trail_cosigner_name(c));
		if (!rc)
			res->lines = lines.p;
		else
			trail_buf_release(&lines);
		goto out;
	}
	if (!rc)
		rc = trail_error_set(err, TRAIL_EVERIFY, "witness %s keeps naming other sizes (last %" PRIu64 ")",
				     url, old);
out:
	trail_free(text);
	trail_free(u);
	return rc;
}

int trail_witness_check_url(trail_tiles *t, const char *url, const trail_verifier *const *vs,
			    size_t nv, const char *origin, const trail_cosigner *const *cs, size_t nc,
			    size_t quorum, long timeout_s, size_t *nvalid, trail_error *err)
{
	char ebuf[CURL_ERROR_SIZE] = "", *u;
	size_t ul = strlen(url) + 16;
	if (curl_global_init(CURL_GLOBAL_DEFAULT))
		return trail_error_set(err, TRAIL_EINTERNAL, "libcurl did not initialise");
	if (!(u = trail_malloc(ul)))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	size_t n = strlen(url);
	while (n && url[n - 1] == '/')
		n--;
	snprintf(u, ul, "%.*s/checkpoint", (int)n, url);
	CURL *c = curl_easy_init();
	trail_capbuf cb = {.max = REPLY_MAX};
	if (!c) {
		trail_free(u);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	curl_easy_setopt(c, CURLOPT_URL, u);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 2L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s > 0 ? timeout_s : 30L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, trail_capbuf_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &cb);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "trail/" TRAIL_VERSION);
	CURLcode cc = curl_easy_perform(c);
	curl_easy_cleanup(c);
	int rc = TRAIL_OK;
	if (cb.over)
		rc = trail_error_at(err, TRAIL_ELIMIT, u, 0, "response over %u bytes", REPLY_MAX);
	else if (cc != CURLE_OK)
		rc = trail_error_at(err, TRAIL_EUNAVAIL, u, 0, "%s", ebuf[0] ? ebuf : curl_easy_strerror(cc));
	char *text = NULL;
	uint64_t size;
	trail_hash root, troot;
	if (!rc)
		rc = trail_checkpoint_check_quorum(cb.b.p, cb.b.n, vs, nv, origin, cs, nc, quorum, nvalid, err);
	if (!rc && !(rc = trail_note_open(cb.b.p, cb.b.n, vs, nv, &text, NULL, err)) &&
	    !(rc = trail_checkpoint_parse(text, NULL, &size, root, err))) {
		/* The cosigned checkpoint is the tree the tiles make. */
		trail_tiles_root(t, troot);
		if (size != trail_tiles_size(t) || sodium_memcmp(root, troot, 32))
			rc = trail_error_at(err, TRAIL_EVERIFY, u, 0, "the cosigned checkpoint (size %" PRIu64
					    ") is not the tree the tiles make (size %" PRIu64 ")", size,
					    trail_tiles_size(t));
	}
	trail_free(text);
	trail_buf_release(&cb.b);
	trail_free(u);
	return rc;
}
