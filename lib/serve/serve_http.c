/*
 * lora-serve's HTTP interface on libmicrohttpd, OpenAI-compatible:
 * POST /v1/completions and /v1/chat/completions (server-sent events when
 * "stream" is true),
 * GET /v1/models, /health, /metrics (Prometheus text). One thread per
 * connection (a request waits for its answer on a condition variable; a
 * stream blocks in its reader callback), one engine thread that admits and
 * decodes. Errors are JSON {"error":{"message","type","param","code"}}.
 *
 * Limits: a body over max_body is answered 413 and the connection closed;
 * headers are bounded by the connection memory limit; an idle or trickling
 * connection is closed after timeout_s without progress; at most
 * max_connections at once.
 */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "core/core.h"
#include "serve/serve_int.h"

typedef struct conn {
	trail_server *s;
	trail_capbuf body; /* at most max_body */
	int counted;
} conn;

typedef struct stream {
	trail_server *s;
	sreq *q;
	size_t pos; /* bytes of q->out already sent */
} stream;

static void count_status(trail_server *s, int status)
{
	pthread_mutex_lock(&s->mu);
	if (status >= 200 && status < 600)
		s->codes[status - 200]++;
	if (status >= 400)
		s->st.errors++;
	pthread_mutex_unlock(&s->mu);
}

/* Tell clients how long an idle connection lives, so they stop reusing it before it is closed under them. */
static void keep_alive(struct MHD_Response *r, const trail_server *s)
{
	char v[32];
	snprintf(v, sizeof v, "timeout=%d", s->o.timeout_s);
	MHD_add_response_header(r, "Keep-Alive", v);
}

static enum MHD_Result reply(struct MHD_Connection *c, trail_server *s, int status, const char *type, const char *body,
			     size_t n)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", type);
	keep_alive(r, s);
	if (status == 429 || status == 503)
		MHD_add_response_header(r, "Retry-After", "1");
	if (status == 413)
		MHD_add_response_header(r, "Connection", "close");
	enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
	MHD_destroy_response(r);
	count_status(s, status);
	return ok;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, trail_server *s, int status, json_t *j)
{
	char *b = NULL;
	size_t n = 0;
	enum MHD_Result ok;
	if (!j || trail_jcs(j, &b, &n, NULL))
		ok = reply(c, s, 500, "application/json", "{\"error\":{\"code\":500,\"message\":\"out of memory\"}}", 49);
	else
		ok = reply(c, s, status, "application/json", b, n);
	trail_free(b);
	json_decref(j);
	return ok;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, trail_server *s, int status, const char *msg)
{
	return reply_json(c, s, status, serve_error_json(status, msg));
}

/* ---- server-sent events ---------------------------------------------------------------- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	stream *st = cls;
	trail_server *s = st->s;
	sreq *q = st->q;
	ssize_t n;
	(void)pos;
	pthread_mutex_lock(&s->mu);
	while (st->pos == q->out.n && !q->done)
		pthread_cond_wait(&s->changed, &s->mu);
	if (st->pos < q->out.n) {
		size_t k = q->out.n - st->pos < max ? q->out.n - st->pos : max;
		memcpy(buf, q->out.p + st->pos, k);
		st->pos += k;
		n = (ssize_t)k;
	} else {
		n = MHD_CONTENT_READER_END_OF_STREAM;
	}
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* The stream's response is gone: a client that left cancels its request. */
static void sse_free(void *cls)
{
	stream *st = cls;
	trail_server *s = st->s;
	pthread_mutex_lock(&s->mu);
	st->q->cancelled = 1;
	req_unref(s, st->q);
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->mu);
	trail_free(st);
}

/* ---- routes ---------------------------------------------------------------------------- */

static enum MHD_Result completions(struct MHD_Connection *c, trail_server *s, conn *k, int chat)
{
	trail_error e = {0};
	json_t *j = NULL;
	int status;
	pthread_mutex_lock(&s->mu);
	s->st.requests++;
	pthread_mutex_unlock(&s->mu);
	if (k->body.over) {
		char m[96];
		snprintf(m, sizeof m, "request body over %zu bytes", s->o.max_body);
		return reply_error(c, s, 413, m);
	}
	if (trail_json_parse(k->body.b.p ? k->body.b.p : "", k->body.b.n, "request", &j, &e))
		return reply_error(c, s, 400, e.msg);
	sreq *q = req_new(s, j, 1, chat, &status, &e);
	json_decref(j);
	if (!q)
		return reply_error(c, s, status, e.msg);
	if ((status = req_submit(s, q))) {
		pthread_mutex_lock(&s->mu);
		req_unref(s, q);
		pthread_mutex_unlock(&s->mu);
		return reply_error(c, s, status, status == 429 ? "the queue is full; retry later" : "the server is shutting down");
	}
	pthread_mutex_lock(&s->mu);
	k->counted = 1; /* the drain waits for this answer to be sent */
	s->conns_begun++;
	pthread_mutex_unlock(&s->mu);
	/*
	 * The idle timeout is for clients that stall; a request waiting for its
	 * tokens is not idle. Off until the answer is sent (restored in completed()).
	 */
	MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
	if (q->stream) {
		stream *st = trail_calloc(1, sizeof *st);
		struct MHD_Response *r = st ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, st, sse_free)
					    : NULL;
		if (!r) {
			trail_free(st);
			pthread_mutex_lock(&s->mu);
			q->cancelled = 1;
			req_unref(s, q);
			pthread_mutex_unlock(&s->mu);
			return reply_error(c, s, 503, "out of memory");
		}
		st->s = s;
		st->q = q; /* the stream holds the request's reference now */
		MHD_add_response_header(r, "Content-Type", "text/event-stream");
		MHD_add_response_header(r, "Cache-Control", "no-cache");
		keep_alive(r, s);
		enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
		MHD_destroy_response(r);
		count_status(s, 200);
		return ok;
	}
	pthread_mutex_lock(&s->mu);
	while (!q->done)
		pthread_cond_wait(&s->changed, &s->mu);
	char *body = q->body;
	q->body = NULL;
	status = q->status;
	req_unref(s, q);
	pthread_mutex_unlock(&s->mu);
	enum MHD_Result ok = body ? reply(c, s, status, "application/json", body, strlen(body))
				  : reply_error(c, s, 500, "out of memory");
	trail_free(body);
	return ok;
}

static enum MHD_Result models(struct MHD_Connection *c, trail_server *s)
{
	json_t *data = json_array();
	json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s, s:s}", "id", s->base.name, "object", "model", "created",
					      0, "owned_by", "trail", "digest", s->base_digest));
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->reg.nall; i++)
		json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s, s:s}", "id", s->reg.all[i]->name, "object",
						      "model", "created", 0, "owned_by", "trail", "parent", s->base.name));
	pthread_mutex_unlock(&s->mu);
	return reply_json(c, s, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static enum MHD_Result metrics(struct MHD_Connection *c, trail_server *s)
{
	char *t;
	size_t n;
	if (trail_server_metrics(s, &t, &n))
		return reply_error(c, s, 500, "out of memory");
	enum MHD_Result ok = reply(c, s, 200, "text/plain; version=0.0.4; charset=utf-8", t, n);
	trail_free(t);
	return ok;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
			       const char *version, const char *upload, size_t *upload_size, void **ctx)
{
	trail_server *s = cls;
	conn *k = *ctx;
	(void)version;
	int post = !strcmp(method, "POST"), get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	if (!k) {
		if (!(k = trail_calloc(1, sizeof *k)))
			return MHD_NO;
		k->s = s;
		k->body.max = s->o.max_body;
		*ctx = k;
		if (post)
			trail_capbuf_declare(&k->body, MHD_lookup_connection_value(c, MHD_HEADER_KIND,
										   MHD_HTTP_HEADER_CONTENT_LENGTH));
		if (k->body.over)
			return completions(c, s, k, 0); /* answered before reading the body; the connection closes */
		return MHD_YES;
	}
	if (*upload_size) {
		trail_capbuf_add(&k->body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (!strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions"))
		return post ? completions(c, s, k, !strcmp(url, "/v1/chat/completions")) : reply_error(c, s, 405, "use POST");
	if (!strcmp(url, "/v1/models"))
		return get ? models(c, s) : reply_error(c, s, 405, "use GET");
	if (!strcmp(url, "/metrics"))
		return get ? metrics(c, s) : reply_error(c, s, 405, "use GET");
	if (!strcmp(url, "/health")) {
		pthread_mutex_lock(&s->mu);
		int draining = s->draining;
		pthread_mutex_unlock(&s->mu);
		return reply_json(c, s, draining ? 503 : 200, json_pack("{s:s}", "status", draining ? "draining" : "ok"));
	}
	return reply_error(c, s, 404, "no such endpoint");
}

static void completed(void *cls, struct MHD_Connection *c, void **ctx, enum MHD_RequestTerminationCode why)
{
	trail_server *s = cls;
	conn *k = *ctx;
	(void)why;
	if (!k)
		return;
	if (k->counted) {
		MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)s->o.timeout_s);
		pthread_mutex_lock(&s->mu);
		s->conns_done++;
		pthread_cond_broadcast(&s->changed);
		pthread_mutex_unlock(&s->mu);
	}
	trail_buf_release(&k->body.b);
	trail_free(k);
	*ctx = NULL;
}

/* libmicrohttpd's own messages are not printed: lib/ never prints. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls, (void)fmt, (void)ap;
}

/* ---- the engine thread ------------------------------------------------------------------ */

static void *engine_main(void *p)
{
	trail_server *s = p;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->stop && !s->inflight)
			pthread_cond_wait(&s->wake, &s->mu);
		int quit = s->stop && !s->inflight;
		pthread_mutex_unlock(&s->mu);
		if (quit)
			break;
		trail_error e = {0};
		if (engine_round(s, NULL, &e) < 0)
			engine_fail_all(s, &e);
	}
	return NULL;
}

int trail_server_http_start(trail_server *s, const char *listen, trail_error *err)
{
	struct addrinfo *ai;
	int rc = trail_listen_resolve(listen, "ADDR:PORT (127.0.0.1:8080, [::1]:8080)", &ai, err);
	if (rc)
		return rc;
	pthread_mutex_lock(&s->mu);
	s->draining = s->stop = 0;
	pthread_mutex_unlock(&s->mu);
	if (pthread_create(&s->engine, NULL, engine_main, s)) {
		freeaddrinfo(ai);
		return trail_error_set(err, TRAIL_ENOMEM, "cannot start the engine thread");
	}
	s->engine_running = 1;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
			 (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
	errno = 0;
	s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->o.timeout_s, MHD_OPTION_CONNECTION_LIMIT,
				  (unsigned)s->o.max_connections, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 << 10,
				  MHD_OPTION_THREAD_STACK_SIZE, (size_t)512 << 10, MHD_OPTION_NOTIFY_COMPLETED, completed, s,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, 0, MHD_OPTION_END);
	int en = errno;
	freeaddrinfo(ai);
	if (!s->mhd) {
		pthread_mutex_lock(&s->mu);
		s->stop = 1;
		pthread_cond_signal(&s->wake);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->engine, NULL);
		s->engine_running = 0;
		return trail_error_errno(err, TRAIL_EUNAVAIL, en ? en : EADDRINUSE, "cannot listen on %s", listen);
	}
	s->http_stop = trail_server_http_stop;
	return TRAIL_OK;
}

int trail_server_http_port(const trail_server *s)
{
	const union MHD_DaemonInfo *i = s->mhd ? MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT) : NULL;
	return i ? i->port : -1;
}

int trail_server_http_stop(trail_server *s, trail_error *err)
{
	if (!s->mhd)
		return TRAIL_OK;
	/* no new requests (503) and no new connections; then let everything in flight finish */
	pthread_mutex_lock(&s->mu);
	s->draining = 1;
	pthread_mutex_unlock(&s->mu);
	MHD_socket ls = MHD_quiesce_daemon(s->mhd);
	if (ls != MHD_INVALID_SOCKET)
		close(ls);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 60; /* a client that stops reading its answer does not hold the exit forever */
	pthread_mutex_lock(&s->mu);
	while ((s->inflight || s->conns_begun > s->conns_done) &&
	       pthread_cond_timedwait(&s->changed, &s->mu, &dl) != ETIMEDOUT)
		;
	s->stop = 1;
	pthread_cond_broadcast(&s->changed);
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->mu);
	MHD_stop_daemon(s->mhd);
	s->mhd = NULL;
	if (s->engine_running)
		pthread_join(s->engine, NULL);
	s->engine_running = 0;
	return serve_flush_batch(s, err);
}

/* ---- /metrics ---------------------------------------------------------------------------- */

static void put(trail_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(trail_buf *b, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n > 0)
		trail_buf_put(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void metric(trail_buf *b, const char *name, const char *type, const char *help, double v)
{
	put(b, "# HELP lora_serve_%s %s\n# TYPE lora_serve_%s %s\nlora_serve_%s %.17g\n", name, help, name, type, name, v);
}

int trail_server_metrics(trail_server *s, char **out, size_t *len)
{
	trail_serve_stats st;
	trail_server_stats(s, &st);
	trail_buf b = {0};
	metric(&b, "requests_total", "counter", "Requests received.", (double)st.requests);
	put(&b, "# HELP lora_serve_responses_total Responses by HTTP status.\n# TYPE lora_serve_responses_total counter\n");
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < 400; i++)
		if (s->codes[i])
			put(&b, "lora_serve_responses_total{code=\"%d\"} %llu\n", i + 200, s->codes[i]);
	double lsum = 0;
	unsigned long long lb[8] = {0};
	static const double le[8] = {1, 2, 5, 10, 20, 50, 100, 1000};
	size_t ring = sizeof s->load_ms / sizeof *s->load_ms, nl = s->nload < ring ? (size_t)s->nload : ring;
	for (size_t i = 0; i < nl; i++) {
		lsum += s->load_ms[i] / 1e3;
		for (int j = 0; j < 8; j++)
			lb[j] += s->load_ms[i] <= le[j];
	}
	pthread_mutex_unlock(&s->mu);
	metric(&b, "errors_total", "counter", "Requests answered with an error.", (double)st.errors);
	metric(&b, "prompt_tokens_total", "counter", "Prompt tokens of answered requests.", (double)st.prompt_tokens);
	metric(&b, "completion_tokens_total", "counter", "Tokens generated.", (double)st.completion_tokens);
	metric(&b, "steps_total", "counter", "Batched decode steps.", (double)st.steps);
	metric(&b, "step_rows_total", "counter", "Rows (tokens) over all steps.", (double)st.rows);
	metric(&b, "queue_depth", "gauge", "Requests waiting for a batch slot.", st.queued);
	metric(&b, "active_sequences", "gauge", "Sequences being decoded.", st.active);
	metric(&b, "adapters_registered", "gauge", "Adapters known by name.", (double)st.adapters);
	metric(&b, "adapter_cache_bytes", "gauge", "Bytes of adapter weights resident.", (double)st.cache_bytes);
	metric(&b, "adapter_cache_budget_bytes", "gauge", "The adapter cache budget.", (double)st.cache_budget);
	metric(&b, "adapter_loads_total", "counter", "Adapters loaded (cache misses).", (double)st.adapter_loads);
	metric(&b, "adapter_evictions_total", "counter", "Adapters evicted from the cache.", (double)st.adapter_evictions);
	metric(&b, "kv_cache_bytes", "gauge", "Bytes of KV cache held by running sequences.", (double)st.kv_bytes);
	metric(&b, "kv_cache_budget_bytes", "gauge", "The KV-cache pool budget.", (double)st.kv_budget);
	metric(&b, "base_bytes", "gauge", "Bytes of base model weights.", (double)st.base_bytes);
	put(&b, "# HELP lora_serve_adapter_load_seconds Adapter cold loads (the latest %zu).\n"
		"# TYPE lora_serve_adapter_load_seconds histogram\n", ring);
	for (int j = 0; j < 8; j++)
		put(&b, "lora_serve_adapter_load_seconds_bucket{le=\"%g\"} %llu\n", le[j] / 1e3, lb[j]);
	put(&b, "lora_serve_adapter_load_seconds_bucket{le=\"+Inf\"} %zu\n", nl);
	put(&b, "lora_serve_adapter_load_seconds_sum %.9g\nlora_serve_adapter_load_seconds_count %zu\n", lsum, nl);
	metric(&b, "uptime_seconds", "gauge", "Seconds since the server started.", serve_now() - s->started);
	if (!b.p) {
		trail_buf_release(&b);
		return TRAIL_ENOMEM;
	}
	*out = b.p;
	*len = b.n;
	return TRAIL_OK;
}
