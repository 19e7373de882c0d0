/*
 * lora-serve's core: requests from validation to response, the bounded
 * queue with round-robin admission between adapters, the decode loop
 * (continuous batching over a KV-cache pool bounded in bytes), inference
 * events and inference-batch ledger entries, and pipe mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "serve/serve_int.h"

static void sse_put(sreq *q, const json_t *j);
static json_t *chunk_json(const sreq *q, const char *text, size_t n, const char *reason);

/*
 * The chat template of the tokenizer's tokenizer_config.json (the base's
 * unless --tokenizer names another), and the special tokens that end a turn: the config's eos_token
 * and the usual end-of-turn tokens, where the tokenizer has them as special
 * tokens. No template is not an error: chat requests are answered 400.
 */
static int chat_setup(trail_server *s, trail_error *err)
{
	static const char *const ends[] = {"<|eot_id|>", "<|im_end|>", "</s>", "<|end_of_text|>", "<|endoftext|>",
					   "<|end|>", "<end_of_turn>"};
	const size_t nends = sizeof ends / sizeof *ends;
	trail_error e = {0};
	int rc = trail_tokenizer_chat(s->tk, &s->chat_tmpl, &s->chat_vars, &e);
	if (rc == TRAIL_ENOMEM)
		return trail_error_set(err, rc, "out of memory");
	if (rc)
		snprintf(s->chat_why, sizeof s->chat_why, "the model has no chat template (%.260s)", e.msg);
	const char *eos = json_string_value(json_object_get(s->chat_vars, "eos_token"));
	for (size_t i = 0; i <= nends && s->nturn_end < 8; i++) {
		const char *t = i < nends ? ends[i] : eos;
		int32_t *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		if (t && !trail_tokenizer_encode_ex(s->tk, t, strlen(t), TRAIL_TOKENIZE_SPECIAL, &a, &na, NULL) &&
		    !trail_tokenizer_encode(s->tk, t, strlen(t), &b, &nb, NULL) && na == 1 && (nb != 1 || b[0] != a[0])) {
			int dup = 0;
			for (int k = 0; k < s->nturn_end; k++)
				dup |= s->turn_end[k] == a[0];
			if (!dup)
				s->turn_end[s->nturn_end++] = a[0];
		}
		trail_free(a);
		trail_free(b);
	}
	return TRAIL_OK;
}

int trail_server_new(const trail_serve_opts *o, trail_server **out, trail_error *err)
{
	trail_server *s = trail_calloc(1, sizeof *s);
	int rc;
	*out = NULL;
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	s->o = *o;
	s->events_fd = -1;
	s->started = serve_now();
	uint8_t nonce[6];
	randombytes_buf(nonce, sizeof nonce);
	for (size_t i = 0; i < sizeof nonce; i++)
		snprintf(s->id_nonce + 2 * i, 3, "%02x", nonce[i]);
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->wake, NULL);
	pthread_cond_init(&s->changed, NULL);
#define DEF(f, v) if (!s->o.f) s->o.f = (v)
	DEF(cache_bytes, (size_t)256 << 20);
	DEF(max_batch, 64);
	DEF(max_queue, 256);
	DEF(max_tokens, 1024);
	DEF(max_prompt, 65536);
	DEF(step_rows, 512);
	DEF(max_body, (size_t)1 << 20);
	DEF(batch_events, 1000);
	DEF(max_connections, 256);
	DEF(timeout_s, 10);
#undef DEF
	if (s->o.step_rows < s->o.max_batch)
		s->o.step_rows = s->o.max_batch;
	if ((rc = trail_infer_load(o->base, &s->m, err)))
		goto fail;
	trail_infer_set_threads(s->m, s->o.threads);
	if ((rc = trail_infer_set_precision(s->m, s->o.precision, err)))
		goto fail;
	const trail_model_cfg *c = trail_infer_config(s->m);
	if (!s->o.kv_bytes)
		s->o.kv_bytes = (size_t)s->o.max_batch * trail_kvc_bytes(s->m, c->n_positions);
	if (o->tokenizer)
		rc = trail_tokenizer_load(o->tokenizer, &s->tk, err);
	else if ((rc = trail_tokenizer_load(o->base, &s->tk, err)) == TRAIL_ENOINPUT && c->vocab_size == 257)
		rc = trail_tokenizer_bytes(&s->tk) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
	if (rc || (rc = chat_setup(s, err)))
		goto fail;
	if ((rc = trail_base_digest(o->base, s->base_digest, err))) /* model.safetensors, its shards or the GGUF file */
		goto fail;
	/* the base's name: its directory's last component */
	size_t bl = strlen(o->base);
	while (bl > 1 && o->base[bl - 1] == '/')
		bl--;
	size_t b0 = bl;
	while (b0 > 0 && o->base[b0 - 1] != '/')
		b0--;
	s->base.name = trail_malloc(bl - b0 + 1);
	if (s->base.name) {
		memcpy(s->base.name, o->base + b0, bl - b0);
		s->base.name[bl - b0] = 0;
	}
	int B = s->o.max_batch, R = s->o.step_rows, V = c->vocab_size;
	s->act = trail_calloc((size_t)B, sizeof *s->act);
	s->adm = trail_calloc((size_t)B, sizeof *s->adm);
	s->done = trail_calloc((size_t)B, sizeof *s->done);
	s->logits = trail_malloc((size_t)B * (size_t)V * sizeof *s->logits);
	s->rtok = trail_malloc((size_t)R * sizeof *s->rtok);
	s->rpos = trail_malloc((size_t)R * sizeof *s->rpos);
	s->rkv = trail_malloc((size_t)R * sizeof *s->rkv);
	s->rlw = trail_malloc((size_t)R * sizeof *s->rlw);
	s->rout = trail_malloc((size_t)B * sizeof *s->rout);
	s->rseq = trail_malloc((size_t)B * sizeof *s->rseq);
	s->cands = trail_malloc((size_t)V * sizeof(cand));
	if (!s->base.name || !s->act || !s->adm || !s->done || !s->logits || !s->rtok || !s->rpos || !s->rkv || !s->rlw || !s->rout || !s->rseq ||
	    !s->cands) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = reg_scan(s, err)))
		goto fail;
	if (o->events && (s->events_fd = open(o->events, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", o->events);
		goto fail;
	}
	*out = s;
	return TRAIL_OK;
fail:
	trail_server_free(s);
	return rc;
}

void trail_server_free(trail_server *s)
{
	if (!s)
		return;
	if (s->mhd && s->http_stop) /* set by trail_server_http_start (serve_http.c) */
		s->http_stop(s, NULL);
	for (int i = 0; i < s->nact; i++) {
		trail_kvc_free(s->act[i]->kv);
		s->act[i]->kv = NULL;
		req_unref(s, s->act[i]);
	}
	for (adapter *a = s->rr_head; a; a = a->rr)
		for (sreq *q = a->qhead, *n; q; q = n) {
			n = q->next;
			req_unref(s, q);
		}
	reg_free(s);
	if (s->events_fd >= 0)
		close(s->events_fd);
	trail_infer_free(s->m);
	trail_tokenizer_free(s->tk);
	trail_free(s->chat_tmpl);
	json_decref(s->chat_vars);
	trail_free(s->base.name);
	trail_free(s->act), trail_free(s->adm), trail_free(s->done), trail_free(s->logits), trail_free(s->rtok), trail_free(s->rpos), trail_free(s->rkv);
	trail_free(s->rlw), trail_free(s->rout), trail_free(s->rseq), trail_free(s->cands);
	trail_buf_release(&s->batch);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->changed);
	trail_free(s);
}

void trail_server_stats(trail_server *s, trail_serve_stats *st)
{
	pthread_mutex_lock(&s->mu);
	*st = s->st;
	st->adapters = s->reg.nall;
	st->queued = s->queued;
	st->active = s->inflight - s->queued; /* s->nact and the byte counts belong to the engine: mirrors, under mu */
	st->cache_budget = s->o.cache_bytes;
	st->kv_budget = s->o.kv_bytes;
	st->base_bytes = trail_infer_bytes(s->m);
	pthread_mutex_unlock(&s->mu);
}

size_t trail_server_load_times(trail_server *s, double *ms, size_t max)
{
	size_t ring = sizeof s->load_ms / sizeof *s->load_ms;
	pthread_mutex_lock(&s->mu);
	size_t n = s->nload < ring ? (size_t)s->nload : ring;
	if (n > max)
		n = max;
	for (size_t i = 0; i < n; i++)
		ms[i] = s->load_ms[(s->nload - n + i) % ring];
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* ---- requests -------------------------------------------------------------------- */

void req_unref(trail_server *s, sreq *q)
{
	(void)s;
	if (!q || --q->refs > 0)
		return;
	trail_kvc_free(q->kv);
	json_decref(q->req);
	trail_free(q->id);
	trail_free(q->model);
	trail_free(q->tok);
	trail_free(q->body);
	trail_free(q->chat_prompt);
	json_decref(q->messages);
	trail_buf_release(&q->text);
	trail_buf_release(&q->out);
	trail_free(q);
}

json_t *serve_error_json(int status, const char *msg)
{
	const char *type = status == 404 ? "not_found_error" : status == 429 ? "rate_limit_error"
		: status >= 500 ? "server_error" : "invalid_request_error";
	return json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", msg, "type", type, "param", "code", status);
}

#define BAD(code, ...) do { *status = (code); trail_error_set(err, TRAIL_EDATA, __VA_ARGS__); goto bad; } while (0)

/*
 * A chat request's messages, checked and rendered with the chat template
 * (add_generation_prompt true) into q->chat_prompt. Content is a string,
 * null, or OpenAI's list of parts, of which the text parts are joined;
 * other members of a message (tool_calls, name...) reach the template as
 * they are.
 */
static int chat_render(trail_server *s, sreq *q, const json_t *msgs, int *status, trail_error *err)
{
	size_t i;
	json_t *m;
	if (!json_is_array(msgs) || !json_array_size(msgs))
		BAD(400, "\"messages\" is a non-empty list of messages");
	if (!(q->messages = json_array()))
		BAD(500, "out of memory");
	json_array_foreach(msgs, i, m) {
		json_t *c = json_object_get(m, "content"), *n;
		if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")))
			BAD(400, "messages[%zu] is an object with a string \"role\"", i);
		if (!(n = json_copy(m)) || json_array_append_new(q->messages, n))
			BAD(500, "out of memory");
		if (json_is_array(c)) {
			trail_buf t = {0};
			size_t k;
			json_t *part;
			json_array_foreach(c, k, part) {
				const char *ty = json_string_value(json_object_get(part, "type"));
				json_t *tx = json_object_get(part, "text");
				if (!ty || strcmp(ty, "text") || !json_is_string(tx)) {
					trail_buf_release(&t);
					BAD(400, "messages[%zu].content: only text parts are served", i);
				}
				trail_buf_put(&t, json_string_value(tx), json_string_length(tx));
			}
			json_object_set_new(n, "content", json_stringn(t.p ? t.p : "", t.n));
			trail_buf_release(&t);
		} else if (c && !json_is_string(c) && !json_is_null(c)) {
			BAD(400, "messages[%zu].content is a string, null or a list of text parts", i);
		}
	}
	if (!s->chat_tmpl)
		BAD(400, "%s", s->chat_why);
	trail_error e = {0};
	int rc = trail_chat_render(s->chat_tmpl, q->messages, 1, s->chat_vars, &q->chat_prompt, &e);
	if (rc == TRAIL_ENOMEM)
		BAD(500, "out of memory");
	if (rc && e.line > 0)
		BAD(400, "cannot render the chat template: line %ld: %s", e.line, e.msg);
	if (rc)
		BAD(400, "cannot render the chat template: %s", e.msg);
	q->prompt = q->chat_prompt;
	q->chat = 1;
	return 0;
bad:
	return -1;
}

sreq *req_new(trail_server *s, json_t *req, int http, int chat, int *status, trail_error *err)
{
	const trail_model_cfg *c = trail_infer_config(s->m);
	sreq *q = trail_calloc(1, sizeof *q);
	char num[48];
	if (!q) {
		*status = 500;
		trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		return NULL;
	}
	q->refs = 1;
	q->http = http;
	q->keep = (size_t)-1;
	q->req = json_incref(req);
	q->created = (long)time(NULL);
	json_t *id = json_object_get(req, "id");
	if (json_is_string(id))
		q->id = trail_strdup(json_string_value(id));
	else if (json_is_integer(id))
		snprintf(num, sizeof num, "%lld", (long long)json_integer_value(id)), q->id = trail_strdup(num);
	else {
		pthread_mutex_lock(&s->mu);
		snprintf(num, sizeof num, "%s-%s-%llu", chat ? "chatcmpl" : "cmpl", s->id_nonce, ++s->next_id);
		pthread_mutex_unlock(&s->mu);
		q->id = trail_strdup(http ? num : "");
	}
	if (!q->id)
		BAD(500, "out of memory");
	if (!json_is_object(req))
		BAD(400, "a request is a JSON object");
	json_t *jm = json_object_get(req, "model"), *jp = json_object_get(req, "prompt");
	size_t plen;
	if (chat) {
		if (!json_is_string(jm))
			BAD(400, "\"model\" is a string");
		if (!(q->model = trail_strdup(json_string_value(jm))))
			BAD(500, "out of memory");
		if (chat_render(s, q, json_object_get(req, "messages"), status, err))
			goto bad;
		if ((plen = strlen(q->prompt)) > (size_t)s->o.max_prompt)
			BAD(413, "the rendered conversation is longer than %d bytes", s->o.max_prompt);
	} else {
		if (http && json_is_array(jp) && json_array_size(jp) == 1) /* OpenAI's prompt list, of one */
			jp = json_array_get(jp, 0);
		if (!json_is_string(jm) || !json_is_string(jp))
			BAD(400, "\"model\" and \"prompt\" are strings");
		if ((plen = json_string_length(jp)) > (size_t)s->o.max_prompt)
			BAD(413, "prompt longer than %d bytes", s->o.max_prompt);
		if (!(q->model = trail_strdup(json_string_value(jm))))
			BAD(500, "out of memory");
		q->prompt = json_string_value(jp);
	}
	json_t *mt = json_object_get(req, "max_tokens"), *te = json_object_get(req, "temperature");
	if (chat && (!mt || json_is_null(mt)))
		mt = json_object_get(req, "max_completion_tokens");
	json_t *tp = json_object_get(req, "top_p"), *sd = json_object_get(req, "seed"), *st = json_object_get(req, "stop");
	json_t *sm = json_object_get(req, "stream"), *nn = json_object_get(req, "n"), *ie = json_object_get(req, "ignore_eos");
	if (mt && !json_is_null(mt) && (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > s->o.max_tokens))
		BAD(400, "max_tokens is an integer in 1..%d", s->o.max_tokens);
	q->max_new = mt && !json_is_null(mt) ? (int)json_integer_value(mt) : chat ? s->o.max_tokens : 16;
	q->temperature = te && !json_is_null(te) ? json_number_value(te) : 1.0;
	if (te && !json_is_null(te) && (!json_is_number(te) || !(q->temperature >= 0 && q->temperature <= 2)))
		BAD(400, "temperature is a number in 0..2");
	q->top_p = tp && !json_is_null(tp) ? json_number_value(tp) : 1.0;
	if (tp && !json_is_null(tp) && (!json_is_number(tp) || !(q->top_p > 0 && q->top_p <= 1)))
		BAD(400, "top_p is a number in (0, 1]");
	if (sd && !json_is_null(sd) && !json_is_integer(sd))
		BAD(400, "seed is an integer");
	q->seed = sd && !json_is_null(sd) ? (uint64_t)json_integer_value(sd) : 0;
	if (sm && !json_is_boolean(sm))
		BAD(400, "stream is true or false");
	q->stream = http && json_is_true(sm);
	if (ie && !json_is_boolean(ie))
		BAD(400, "ignore_eos is true or false");
	q->ignore_eos = json_is_true(ie);
	if (nn && !json_is_null(nn) && (!json_is_integer(nn) || json_integer_value(nn) != 1))
		BAD(400, "only n = 1 is served");
	if (st && !json_is_null(st)) {
		if (json_is_string(st)) {
			q->stops[q->nstop++] = json_string_value(st);
		} else if (json_is_array(st) && json_array_size(st) <= 4) {
			size_t i;
			json_t *v;
			json_array_foreach(st, i, v) {
				if (!json_is_string(v))
					BAD(400, "stop is a string or up to 4 strings");
				q->stops[q->nstop++] = json_string_value(v);
			}
		} else {
			BAD(400, "stop is a string or up to 4 strings");
		}
		for (int i = 0; i < q->nstop; i++) {
			q->stoplen[i] = strlen(q->stops[i]);
			if (q->stoplen[i] == 0 || q->stoplen[i] > 256)
				BAD(400, "a stop string has 1 to 256 bytes");
			if (q->stoplen[i] > q->maxstop)
				q->maxstop = q->stoplen[i];
		}
		q->stop = st;
	}
	size_t n;
	int32_t *ids;
	/* a rendered conversation holds the template's special tokens, which are tokens, not text */
	if (trail_tokenizer_encode_ex(s->tk, q->prompt, plen, chat ? TRAIL_TOKENIZE_SPECIAL : 0, &ids, &n, err)) {
		*status = 500;
		goto bad;
	}
	if (n == 0 || (int)n >= c->n_positions) {
		trail_free(ids);
		if (n)
			BAD(413, "prompt of %zu tokens does not fit the context of %d", n, c->n_positions);
		BAD(400, "empty prompt");
	}
	q->nprompt = q->n = (int)n;
	q->cap = q->nprompt + q->max_new < c->n_positions ? q->nprompt + q->max_new : c->n_positions;
	if (!(q->tok = trail_realloc(ids, ((size_t)q->cap + 1) * sizeof *ids))) {
		trail_free(ids);
		BAD(500, "out of memory");
	}
	if (strcmp(q->model, s->base.name) && strcmp(q->model, "base")) {
		pthread_mutex_lock(&s->mu);
		q->ad = reg_find(s, q->model);
		pthread_mutex_unlock(&s->mu);
		if (!q->ad)
			BAD(404, "unknown model '%s'", q->model);
	}
	if (q->chat && q->stream) { /* the stream opens with the assistant's role */
		json_t *j = chunk_json(q, NULL, 0, NULL);
		sse_put(q, j);
		json_decref(j);
	}
	return q;
bad:
	req_unref(s, q);
	return NULL;
}
#undef BAD

int req_submit(trail_server *s, sreq *q)
{
	pthread_mutex_lock(&s->mu);
	if (s->draining || s->stop) {
		pthread_mutex_unlock(&s->mu);
		return 503;
	}
	if (s->queued >= s->o.max_queue) {
		pthread_mutex_unlock(&s->mu);
		return 429;
	}
	adapter *a = q->ad ? q->ad : &s->base;
	q->refs++;
	q->t_queued = serve_now();
	q->next = NULL;
	if (a->qtail)
		a->qtail->next = q;
	else
		a->qhead = q;
	a->qtail = q;
	if (!a->in_rr) {
		a->in_rr = 1;
		a->rr = NULL;
		if (s->rr_tail)
			s->rr_tail->rr = a;
		else
			s->rr_head = a;
		s->rr_tail = a;
	}
	s->queued++;
	s->inflight++;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

/* Take the first request of the ring's first adapter; that adapter goes to the back. Under mu. */
static sreq *rr_pop(trail_server *s)
{
	adapter *a = s->rr_head;
	sreq *q = a->qhead;
	a->qhead = q->next;
	if (!a->qhead)
		a->qtail = NULL;
	q->next = NULL;
	s->rr_head = a->rr;
	if (!s->rr_head)
		s->rr_tail = NULL;
	a->rr = NULL;
	a->in_rr = 0;
	if (a->qhead) {
		a->in_rr = 1;
		if (s->rr_tail)
			s->rr_tail->rr = a;
		else
			s->rr_head = a;
		s->rr_tail = a;
	}
	s->queued--;
	return q;
}

/* ---- responses ------------------------------------------------------------------- */

static json_t *ids_json(const int32_t *t, int n)
{
	json_t *a = json_array();
	for (int i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer(t[i]));
	return a;
}

static char *jcs_line(const json_t *j, size_t *len)
{
	char *s = NULL;
	if (!j || trail_jcs(j, &s, len, NULL))
		return NULL;
	return s;
}

/* "data: <json>\n\n" onto q->out (under mu) */
static void sse_put(sreq *q, const json_t *j)
{
	size_t n;
	char *s = jcs_line(j, &n);
	if (!s)
		return;
	trail_buf_put(&q->out, "data: ", 6);
	trail_buf_put(&q->out, s, n);
	trail_buf_put(&q->out, "\n\n", 2);
	trail_free(s);
}

/* One chunk of a stream; a chat stream's first (text NULL) gives the role. */
static json_t *chunk_json(const sreq *q, const char *text, size_t n, const char *reason)
{
	if (q->chat) {
		json_t *d = !text ? json_pack("{s:s, s:s}", "role", "assistant", "content", "")
			  : n || !reason ? json_pack("{s:o}", "content", serve_text_json(text, n)) : json_object();
		return json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s?}]}", "id", q->id, "object",
				 "chat.completion.chunk", "created", (json_int_t)q->created, "model", q->model, "choices",
				 "index", 0, "delta", d, "logprobs", "finish_reason", reason);
	}
	return json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s?}]}", "id", q->id, "object", "text_completion",
			 "created", (json_int_t)q->created, "model", q->model, "choices", "index", 0, "text",
			 serve_text_json(text, n), "logprobs", "finish_reason", reason);
}

/* Deliver a failure for a request already queued. */
static void fail_req(trail_server *s, sreq *q, int status, const char *msg, FILE *out)
{
	json_t *e = serve_error_json(status, msg);
	if (!q->http) {
		json_t *r = json_pack("{s:s, s:{s:i, s:s}}", "id", q->id, "error", "code", status, "message", msg);
		char *line = jcs_line(r, NULL);
		if (line && out) {
			fputs(line, out);
			fputc('\n', out);
			fflush(out);
		}
		trail_free(line);
		json_decref(r);
	}
	pthread_mutex_lock(&s->mu);
	if (!q->http || q->stream) /* HTTP answers with a status are counted as they are sent */
		s->st.errors++;
	if (q->http) {
		q->status = status;
		q->body = jcs_line(e, NULL);
		if (q->stream)
			sse_put(q, e);
		q->done = 1;
		pthread_cond_broadcast(&s->changed);
	}
	pthread_mutex_unlock(&s->mu);
	json_decref(e);
}

/*
 * The event and the response of a finished request: the event goes to the
 * events file and the batch; the response waits in q->body until deliver().
 */
static void finish(trail_server *s, sreq *q)
{
	int nout = q->n - q->nprompt;
	const char *text = q->text.p ? q->text.p : "";
	if (q->keep > q->text.n)
		q->keep = q->text.n;
	char rd[72] = "";
	trail_jcs_digest(q->req, rd, NULL);
	json_t *usage = json_pack("{s:i, s:i, s:i}", "prompt_tokens", q->nprompt, "completion_tokens", nout,
				  "total_tokens", q->n);
	json_t *ev = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:s?, s:o, s:o, s:o, s:s, s:o, "
			       "s:{s:f, s:f, s:I, s:i, s:O?}, s:O}",
			       "id", q->id, "request_digest", rd, "base", s->base.name, "base_digest", s->base_digest,
			       "adapter", q->ad ? q->ad->name : NULL, "adapter_digest", q->ad ? q->ad->digest : NULL,
			       "prompt", serve_text_json(q->prompt, strlen(q->prompt)), "prompt_tokens",
			       ids_json(q->tok, q->nprompt), "output_tokens", ids_json(q->tok + q->nprompt, nout),
			       "finish_reason", q->finish_reason, "output_text", serve_text_json(text, q->keep),
			       "sampling", "temperature", q->temperature, "top_p", q->top_p, "seed", (json_int_t)q->seed,
			       "max_tokens", q->max_new, "stop", q->stop, "usage", usage);
	if (ev && q->chat) /* the conversation the prompt was rendered from */
		json_object_set(ev, "messages", q->messages);
	/* the bits depend on them: the products' precision and oneDNN's instruction set */
	if (ev) {
		json_object_set_new(ev, "precision", json_string(trail_precision_name(trail_infer_precision(s->m))));
		json_object_set_new(ev, "isa", json_string(trail_compute_isa()));
	}
	size_t evn = 0;
	char *evl = jcs_line(ev, &evn);
	if (evl) {
		if (s->events_fd >= 0) {
			evl[evn] = '\n'; /* one write per event, so concurrent appends stay whole */
			trail_write_all(s->events_fd, evl, evn + 1, "events", NULL);
			evl[evn] = 0;
		}
		if (s->o.store) {
			trail_buf_put(&s->batch, evl, evn);
			trail_buf_put(&s->batch, "\n", 1);
			s->batch_n++;
		}
	}
	trail_free(evl);
	json_t *r;
	if (!q->http)
		r = json_pack("{s:s, s:s, s:o, s:s, s:O, s:O}", "id", q->id, "model", q->model,
			      "text", serve_text_json(text, q->keep), "finish_reason", q->finish_reason, "usage", usage,
			      "event", ev);
	else if (!q->stream && q->chat)
		r = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:o}, s:n, s:s}], s:O, s:O}", "id", q->id, "object",
			      "chat.completion", "created", (json_int_t)q->created, "model", q->model, "choices", "index", 0,
			      "message", "role", "assistant", "content", serve_text_json(text, q->keep), "logprobs",
			      "finish_reason", q->finish_reason, "usage", usage, "event", ev);
	else if (!q->stream)
		r = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s}], s:O, s:o, s:s, s:O}", "id", q->id, "object",
			      "text_completion", "created", (json_int_t)q->created, "model", q->model, "choices", "index", 0,
			      "text", serve_text_json(text, q->keep), "logprobs", "finish_reason", q->finish_reason, "usage",
			      usage, "text", serve_text_json(text, q->keep), "finish_reason", q->finish_reason, "event", ev);
	else {
		r = chunk_json(q, text + q->sent, q->keep > q->sent ? q->keep - q->sent : 0, q->finish_reason);
		json_object_set(r, "usage", usage);
		json_object_set(r, "event", ev);
	}
	size_t bn = 0;
	char *b = jcs_line(r, &bn);
	if (b && q->stream) { /* the last chunk, then the end of the stream */
		trail_buf sb = {0};
		trail_buf_put(&sb, "data: ", 6);
		trail_buf_put(&sb, b, bn);
		static const char end[] = "\n\ndata: [DONE]\n\n";
		trail_buf_put(&sb, end, sizeof end - 1);
		trail_free(b);
		b = sb.p;
	}
	q->body = b;
	pthread_mutex_lock(&s->mu);
	s->st.prompt_tokens += (unsigned long long)q->nprompt;
	s->st.completion_tokens += (unsigned long long)nout;
	pthread_mutex_unlock(&s->mu);
	json_decref(r);
	json_decref(ev);
	json_decref(usage);
}

/* Hand a finished request's response over: a line on out, or to its connection. */
static void deliver(trail_server *s, sreq *q, FILE *out)
{
	if (!q->http) {
		if (q->body && out) {
			fputs(q->body, out);
			fputc('\n', out);
			fflush(out);
		}
		return;
	}
	pthread_mutex_lock(&s->mu);
	q->status = 200;
	if (q->stream && q->body) {
		trail_buf_put(&q->out, q->body, strlen(q->body));
		trail_free(q->body);
		q->body = NULL;
	}
	q->done = 1;
	pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->mu);
}

int serve_flush_batch(trail_server *s, trail_error *err)
{
	if (!s->o.store || !s->batch_n)
		return TRAIL_OK;
	char dg[72];
	trail_ledger *l;
	int rc;
	if ((rc = trail_store_put(s->o.store, s->batch.p, s->batch.n, dg, err)) ||
	    (rc = trail_ledger_open(s->o.store, TRAIL_LEDGER_WRITE, &l, err)))
		return rc;
	json_t *e = json_pack("{s:s, s:s, s:I, s:s, s:s}", "type", "inference-batch", "events_object", dg, "events",
			      (json_int_t)s->batch_n, "base", s->base.name, "base_digest", s->base_digest);
	uint64_t idx;
	if (!e)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	else if (!(rc = trail_ledger_append(l, e, &idx, err)))
		rc = trail_ledger_commit(l, err);
	json_decref(e);
	trail_ledger_free(l);
	if (!rc) {
		s->batch.n = 0;
		s->batch_n = 0;
	}
	return rc;
}

/* ---- the engine ------------------------------------------------------------------------ */

static void retire(trail_server *s, int i)
{
	sreq *q = s->act[i];
	if (q->ad)
		cache_release(s, q->ad);
	s->kv_used -= trail_kvc_bytes(s->m, q->cap);
	trail_kvc_free(q->kv);
	q->kv = NULL;
	s->act[i] = s->act[--s->nact];
	pthread_mutex_lock(&s->mu);
	s->inflight--;
	s->st.kv_bytes = s->kv_used;
	s->st.cache_bytes = s->cache_used;
	pthread_cond_broadcast(&s->changed);
	req_unref(s, q);
	pthread_mutex_unlock(&s->mu);
}

void engine_fail_all(trail_server *s, const trail_error *e)
{
	while (s->nact > 0) {
		fail_req(s, s->act[s->nact - 1], 500, e->msg[0] ? e->msg : "internal error", NULL);
		retire(s, s->nact - 1);
	}
}

/* Append SSE text that can no longer change. */
static void stream_more(trail_server *s, sreq *q)
{
	size_t safe = serve_safe_prefix(q, q->text.p, q->text.n);
	if (safe <= q->sent)
		return;
	json_t *j = chunk_json(q, q->text.p + q->sent, safe - q->sent, NULL);
	pthread_mutex_lock(&s->mu);
	sse_put(q, j);
	pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->mu);
	json_decref(j);
	q->sent = safe;
}

int engine_round(trail_server *s, FILE *out, trail_error *err)
{
	const trail_model_cfg *c = trail_infer_config(s->m);
	int V = c->vocab_size, B = s->o.max_batch, nadm = 0;
	/* drop sequences whose client went away */
	for (int i = 0; i < s->nact; i++) {
		pthread_mutex_lock(&s->mu);
		int gone = s->act[i]->cancelled;
		pthread_mutex_unlock(&s->mu);
		if (gone)
			retire(s, i--);
	}
	/*
	 * Admit round-robin between adapters while the batch, the KV pool and
	 * the adapter cache allow: pinned adapters plus those about to load
	 * stay within the cache budget, so loading never evicts one in use.
	 * With nothing running, the next request goes in whatever it needs.
	 */
	pthread_mutex_lock(&s->mu);
	size_t kv = s->kv_used, reserved = 0;
	while (s->rr_head && s->nact + nadm < B) {
		sreq *q = s->rr_head->qhead;
		if (q->cancelled) {
			req_unref(s, rr_pop(s));
			s->inflight--;
			continue;
		}
		adapter *a = q->ad;
		size_t need = trail_kvc_bytes(s->m, q->cap), extra = 0;
		if (a && !a->w)
			extra = a->pending ? 0 : a->est;
		else if (a && !a->refs)
			extra = trail_lora_w_bytes(a->w);
		if (s->nact + nadm > 0 && (kv + need > s->o.kv_bytes || s->pinned + reserved + extra > s->o.cache_bytes))
			break;
		kv += need;
		if (a && !a->w) {
			reserved += extra;
			a->pending = 1;
		} else if (a) {
			cache_pin(s, a);
			q->pinned = 1;
		}
		s->adm[nadm++] = rr_pop(s);
	}
	pthread_mutex_unlock(&s->mu);
	for (int i = 0; i < nadm; i++) {
		sreq *q = s->adm[i];
		trail_error e = {0};
		int rc = q->ad && !q->pinned ? cache_acquire(s, q->ad, &e) : TRAIL_OK;
		if (!rc)
			q->pinned = q->ad != NULL;
		if (rc || !(q->kv = trail_kvc_new(s->m, q->cap))) {
			if (q->ad && q->pinned)
				cache_release(s, q->ad);
			else if (q->ad)
				q->ad->pending = 0;
			fail_req(s, q, rc == TRAIL_EDATA ? 422 : rc && rc != TRAIL_ENOMEM ? 500 : 503,
				 rc ? e.msg : "out of memory for the KV cache", out);
			pthread_mutex_lock(&s->mu);
			s->inflight--;
			req_unref(s, q);
			pthread_mutex_unlock(&s->mu);
			continue;
		}
		s->kv_used += trail_kvc_bytes(s->m, q->cap);
		pthread_mutex_lock(&s->mu);
		s->st.kv_bytes = s->kv_used;
		if (s->kv_used > s->st.kv_peak)
			s->st.kv_peak = s->kv_used;
		pthread_mutex_unlock(&s->mu);
		q->t_admit = serve_now();
		s->act[s->nact++] = q;
	}
	if (!s->nact)
		return nadm > 0;
	/* rows: the next token of every decoding sequence, then prompt chunks while rows are left */
	int R = s->o.step_rows, n = 0, nout = 0;
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < s->nact; i++) {
			sreq *q = s->act[i];
			int decoding = q->fed >= q->nprompt;
			if (decoding != !pass || q->fed >= q->n)
				continue;
			int k = q->n - q->fed;
			if (k > R - n)
				k = R - n;
			for (int t = 0; t < k; t++, n++) {
				s->rtok[n] = q->tok[q->fed + t];
				s->rpos[n] = q->fed + t;
				s->rkv[n] = q->kv;
				s->rlw[n] = q->ad ? q->ad->w : NULL;
			}
			q->fed += k;
			if (k && q->fed == q->n) {
				s->rout[nout] = n - 1;
				s->rseq[nout++] = i;
			}
		}
	int rc = trail_infer_step(s->m, n, s->rtok, s->rpos, s->rkv, s->rlw, nout, s->rout, s->logits, err);
	if (rc)
		return -rc;
	pthread_mutex_lock(&s->mu);
	s->st.steps++;
	s->st.rows += (unsigned long long)n;
	pthread_mutex_unlock(&s->mu);
	/* sample; finished sequences are answered once their events are synced */
	int ndone = 0;
	for (int j = 0; j < nout; j++) {
		sreq *q = s->act[s->rseq[j]];
		double u = q->temperature > 0 ? serve_uniform(q->seed, (uint64_t)(q->n - q->nprompt)) : 0;
		int next = serve_sample(s->logits + (size_t)j * V, V, q->temperature, q->top_p, u, s->cands);
		int end = next == trail_tokenizer_eot(s->tk);
		for (int k = 0; q->chat && k < s->nturn_end; k++)
			end |= next == s->turn_end[k];
		if (end && !q->ignore_eos) {
			q->finish_reason = "stop";
		} else {
			size_t before = q->text.n, tl = 0;
			const char *tb = trail_tokenizer_token(s->tk, next, &tl);
			q->tok[q->n++] = next;
			if (tb)
				trail_buf_put(&q->text, tb, tl);
			long at = q->nstop ? serve_find_stop(q, q->text.p, q->text.n, before) : -1;
			if (at >= 0) {
				q->finish_reason = "stop";
				q->keep = (size_t)at;
			} else if (q->n - q->nprompt >= q->max_new || q->n >= q->cap) {
				q->finish_reason = "length";
			}
		}
		if (q->finish_reason)
			s->done[ndone++] = s->rseq[j];
		else if (q->stream)
			stream_more(s, q);
	}
	for (int j = 0; j < ndone; j++)
		finish(s, s->act[s->done[j]]);
	if (ndone && s->events_fd >= 0 && fdatasync(s->events_fd))
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", s->o.events);
	/* in decreasing slot order: retire moves the last slot into the freed one */
	for (int a = 1; a < ndone; a++)
		for (int b = a; b > 0 && s->done[b] > s->done[b - 1]; b--) {
			int t = s->done[b];
			s->done[b] = s->done[b - 1];
			s->done[b - 1] = t;
		}
	for (int j = 0; j < ndone; j++) {
		deliver(s, s->act[s->done[j]], out);
		retire(s, s->done[j]);
	}
	if (!rc && s->batch_n >= (size_t)s->o.batch_events)
		rc = serve_flush_batch(s, err);
	return rc ? -rc : 1;
}

/* ---- pipe mode ------------------------------------------------------------------------- */

static void pipe_error(trail_server *s, FILE *out, const char *id, int status, const char *msg)
{
	json_t *r = json_pack("{s:s, s:{s:i, s:s}}", "id", id ? id : "", "error", "code", status, "message", msg);
	char *line = jcs_line(r, NULL);
	if (line) {
		fputs(line, out);
		fputc('\n', out);
	}
	fflush(out);
	trail_free(line);
	json_decref(r);
	pthread_mutex_lock(&s->mu);
	s->st.errors++;
	pthread_mutex_unlock(&s->mu);
}

int trail_server_pipe(trail_server *s, FILE *in, FILE *out, trail_error *err)
{
	trail_ndjson *rd = trail_ndjson_new(in, "<stdin>", s->o.max_body);
	int eof = 0, rc = TRAIL_OK;
	if (!rd)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (;;) {
		/* read ahead while the queue has room; block on input only when idle */
		while (!eof && s->queued < s->o.max_queue) {
			struct pollfd p = {fileno(in), POLLIN, 0};
			int idle = !s->nact && !s->queued;
			if (!idle && trail_ndjson_buffered(rd) == 0 && poll(&p, 1, 0) == 0)
				break;
			json_t *req;
			trail_error e = {0};
			int r = trail_ndjson_next(rd, &req, &e);
			if (r == TRAIL_OK && !req) {
				eof = 1;
				break;
			}
			pthread_mutex_lock(&s->mu);
			s->st.requests++;
			pthread_mutex_unlock(&s->mu);
			if (r == TRAIL_EIO || r == TRAIL_ENOMEM) { /* the stream itself failed: answer what is running, then stop */
				rc = r;
				if (err)
					*err = e;
				eof = 1;
				break;
			}
			if (r) {
				pipe_error(s, out, NULL, r == TRAIL_ELIMIT ? 413 : 400, e.msg);
				continue;
			}
			int status;
			int chat = json_is_object(req) && json_object_get(req, "messages") && !json_object_get(req, "prompt");
			sreq *q = req_new(s, req, 0, chat, &status, &e);
			if (!q) {
				json_t *id = json_is_object(req) ? json_object_get(req, "id") : NULL;
				char num[32];
				if (json_is_integer(id))
					snprintf(num, sizeof num, "%lld", (long long)json_integer_value(id));
				pipe_error(s, out, json_is_string(id) ? json_string_value(id) : json_is_integer(id) ? num : NULL,
					   status, e.msg);
			} else {
				req_submit(s, q);
				req_unref(s, q);
			}
			json_decref(req);
		}
		int r = engine_round(s, out, rc ? NULL : err);
		if (r < 0) {
			rc = rc ? rc : -r;
			break;
		}
		if (!r && eof && !s->queued && !s->nact)
			break;
	}
	trail_ndjson_free(rd);
	int fr = serve_flush_batch(s, rc ? NULL : err);
	return rc ? rc : fr;
}
