#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "ledger.h"
#include "infer.h"
#include "serve.h"
#include "tokenizer.h"
#include "util.h"

typedef struct adapter {
	char *name;
	char digest[72];
	trail_lora_w *w;
	unsigned long long used; /* LRU clock */
	int refs;                /* running sequences */
	struct adapter *next;
} adapter;

typedef struct seq {
	json_t *req;
	char *id, *model, *prompt;
	adapter *ad;
	int32_t *tok; /* prompt then output */
	int nprompt, n, max_new, prefilled;
	double temperature, top_p;
	uint64_t seed;
	json_t *stop;
	trail_kvc *kv;
} seq;

struct trail_server {
	trail_serve_opts o;
	trail_infer *m;
	trail_tokenizer *tk;
	char *base_name, base_digest[72];
	adapter *ads;
	size_t cache_used;
	unsigned long long clock;
	trail_kvc **pool;
	int npool;
	trail_serve_stats st;
	trail_buf events; /* this run's event lines, for the ledger */
};

static char *digest_file(const char *path, char out[72])
{
	trail_map mp;
	if (trail_map_file(path, &mp, NULL))
		return NULL;
	trail_digest_str(mp.data ? mp.data : "", mp.len, out);
	trail_unmap(&mp);
	return out;
}

int trail_server_new(const trail_serve_opts *o, trail_server **out, trail_error *err)
{
	trail_server *s = trail_calloc(1, sizeof *s);
	int rc;
	*out = NULL;
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	s->o = *o;
	if (!s->o.cache_bytes)
		s->o.cache_bytes = (size_t)256 << 20;
	if (!s->o.max_batch)
		s->o.max_batch = 64;
	if (!s->o.max_tokens)
		s->o.max_tokens = 1024;
	if (!s->o.max_prompt)
		s->o.max_prompt = 65536;
	if ((rc = trail_infer_load(o->base, &s->m, err)) || (rc = trail_tokenizer_load(o->base, &s->tk, err)))
		goto fail;
	char *w = trail_path(o->base, "model.safetensors");
	digest_file(w, s->base_digest);
	trail_free(w);
	const char *slash = strrchr(o->base, '/');
	s->base_name = trail_strdup(slash && slash[1] ? slash + 1 : o->base);
	s->pool = trail_calloc((size_t)s->o.max_batch, sizeof *s->pool);
	if (!s->base_name || !s->pool) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
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
	for (adapter *a = s->ads, *n; a; a = n) {
		n = a->next;
		trail_lora_w_free(a->w);
		trail_free(a->name);
		trail_free(a);
	}
	for (int i = 0; i < s->npool; i++)
		trail_kvc_free(s->pool[i]);
	trail_free(s->pool);
	trail_infer_free(s->m);
	trail_tokenizer_free(s->tk);
	trail_free(s->base_name);
	trail_buf_release(&s->events);
	trail_free(s);
}

void trail_server_stats(const trail_server *s, trail_serve_stats *st)
{
	*st = s->st;
	st->cache_bytes = s->cache_used;
}

/* ---- adapters ------------------------------------------------------------------ */

static int valid_name(const char *n)
{
	if (!n || !*n || n[0] == '.' || strlen(n) > 200)
		return 0;
	for (const char *p = n; *p; p++)
		if (*p == '/' || (unsigned char)*p < 0x20)
			return 0;
	return 1;
}

/* Evict least recently used adapters not in use until `need` more bytes fit. */
static void evict(trail_server *s, size_t need)
{
	while (s->cache_used + need > s->o.cache_bytes) {
		adapter **best = NULL;
		for (adapter **p = &s->ads; *p; p = &(*p)->next)
			if (!(*p)->refs && (!best || (*p)->used < (*best)->used))
				best = p;
		if (!best)
			return; /* everything is in use: go over budget rather than fail requests */
		adapter *a = *best;
		*best = a->next;
		s->cache_used -= trail_lora_w_bytes(a->w);
		trail_lora_w_free(a->w);
		trail_free(a->name);
		trail_free(a);
		s->st.adapter_evictions++;
	}
}

/* The adapter named `name`, loading it if needed; NULL with *code 404 if unknown. */
static adapter *get_adapter(trail_server *s, const char *name, int *code, trail_error *err)
{
	for (adapter *a = s->ads; a; a = a->next)
		if (!strcmp(a->name, name)) {
			a->used = ++s->clock;
			return a;
		}
	*code = 404;
	if (!s->o.adapters || !valid_name(name)) {
		trail_error_set(err, TRAIL_ENOINPUT, "unknown model '%s'", name);
		return NULL;
	}
	char *dir = trail_path(s->o.adapters, name), *w = dir ? trail_path(dir, "adapter_model.safetensors") : NULL;
	struct stat st;
	adapter *a = NULL;
	if (!dir || !w || stat(w, &st)) {
		trail_error_set(err, TRAIL_ENOINPUT, "unknown model '%s'", name);
		goto out;
	}
	*code = 500;
	if (!(a = trail_calloc(1, sizeof *a)) || !(a->name = trail_strdup(name)))
		goto oom;
	if (trail_lora_w_load(s->m, dir, &a->w, err)) {
		*code = 422;
		trail_free(a->name);
		trail_free(a);
		a = NULL;
		goto out;
	}
	digest_file(w, a->digest);
	evict(s, trail_lora_w_bytes(a->w));
	s->cache_used += trail_lora_w_bytes(a->w);
	a->used = ++s->clock;
	a->next = s->ads;
	s->ads = a;
	s->st.adapter_loads++;
	goto out;
oom:
	trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (a)
		trail_free(a->name);
	trail_free(a);
	a = NULL;
out:
	trail_free(dir);
	trail_free(w);
	return a;
}

/* ---- requests -------------------------------------------------------------------- */

static void free_seq(trail_server *s, seq *q)
{
	if (!q)
		return;
	if (q->ad)
		q->ad->refs--;
	if (q->kv) {
		if (s->npool < s->o.max_batch)
			s->pool[s->npool++] = q->kv;
		else
			trail_kvc_free(q->kv);
	}
	json_decref(q->req);
	trail_free(q->id);
	trail_free(q->tok);
	trail_free(q);
}

/* Validate a request and make its sequence; *code is the HTTP-style status on failure. */
static seq *make_seq(trail_server *s, json_t *req, int *code, trail_error *err)
{
	seq *q = trail_calloc(1, sizeof *q);
	int P = trail_infer_config(s->m)->n_positions;
	*code = 400;
	if (!q) {
		*code = 500;
		trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		return NULL;
	}
	q->req = json_incref(req);
	json_t *id = json_object_get(req, "id");
	char num[32];
	if (json_is_integer(id))
		snprintf(num, sizeof num, "%lld", (long long)json_integer_value(id));
	q->id = trail_strdup(json_is_string(id) ? json_string_value(id) : json_is_integer(id) ? num : "");
	if (!json_is_object(req)) {
		trail_error_set(err, TRAIL_EDATA, "a request is a JSON object");
		goto bad;
	}
	const char *model = json_string_value(json_object_get(req, "model"));
	const char *prompt = json_string_value(json_object_get(req, "prompt"));
	json_t *mt = json_object_get(req, "max_tokens"), *te = json_object_get(req, "temperature");
	json_t *tp = json_object_get(req, "top_p"), *sd = json_object_get(req, "seed");
	q->stop = json_object_get(req, "stop");
	if (!model || !prompt) {
		trail_error_set(err, TRAIL_EDATA, "\"model\" and \"prompt\" are strings");
		goto bad;
	}
	if (json_string_length(json_object_get(req, "prompt")) > (size_t)s->o.max_prompt) {
		*code = 413;
		trail_error_set(err, TRAIL_ELIMIT, "prompt longer than %d bytes", s->o.max_prompt);
		goto bad;
	}
	q->max_new = mt ? (int)json_integer_value(mt) : 16;
	q->temperature = te ? json_number_value(te) : 1.0;
	q->top_p = tp ? json_number_value(tp) : 1.0;
	q->seed = sd ? (uint64_t)json_integer_value(sd) : 0;
	if ((mt && !json_is_integer(mt)) || q->max_new < 1 || q->max_new > s->o.max_tokens) {
		trail_error_set(err, TRAIL_EDATA, "max_tokens is an integer in 1..%d", s->o.max_tokens);
		goto bad;
	}
	if ((te && !json_is_number(te)) || !(q->temperature >= 0 && q->temperature <= 10)) {
		trail_error_set(err, TRAIL_EDATA, "temperature is a number in 0..10");
		goto bad;
	}
	if ((tp && !json_is_number(tp)) || !(q->top_p > 0 && q->top_p <= 1)) {
		trail_error_set(err, TRAIL_EDATA, "top_p is a number in (0, 1]");
		goto bad;
	}
	if ((sd && !json_is_integer(sd)) || (q->stop && !json_is_string(q->stop) &&
					     (!json_is_array(q->stop) || json_array_size(q->stop) > 4))) {
		trail_error_set(err, TRAIL_EDATA, "seed is an integer; stop a string or up to 4 strings");
		goto bad;
	}
	size_t n;
	int32_t *ids;
	if (trail_tokenizer_encode(s->tk, prompt, strlen(prompt), &ids, &n, err))
		goto bad;
	if (n == 0 || (int)n + 1 > P) {
		trail_free(ids);
		*code = n ? 413 : 400;
		trail_error_set(err, TRAIL_ELIMIT, n ? "prompt of %zu tokens does not fit the context of %d" : "empty prompt", n, P);
		goto bad;
	}
	q->tok = trail_realloc(ids, ((size_t)P + 1) * sizeof *ids);
	if (!q->tok) {
		trail_free(ids);
		goto bad;
	}
	q->nprompt = q->n = (int)n;
	q->model = (char *)model;
	q->prompt = (char *)prompt;
	if (strcmp(model, s->base_name) && strcmp(model, "base")) {
		int c2;
		if (!(q->ad = get_adapter(s, model, &c2, err))) {
			*code = c2;
			goto bad;
		}
		q->ad->refs++;
	}
	return q;
bad:
	*code = *code ? *code : 400;
	s->st.errors++;
	json_t *keep = q->req;
	q->req = NULL;
	free_seq(s, q);
	json_decref(keep);
	return NULL;
}

/* ---- sampling ------------------------------------------------------------------ */

static uint64_t mix(uint64_t z)
{
	z += 0x9E3779B97F4A7C15ULL;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

typedef struct cand {
	double p;
	int id;
} cand;

static int by_p(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	return x->p < y->p ? 1 : x->p > y->p ? -1 : x->id - y->id;
}

/* Greedy at temperature 0; else top-p sampling with a counter-based draw, so a
 * request's tokens do not depend on what else is in the batch. */
static int sample(const float *lg, int V, const seq *q, cand *c)
{
	int best = 0;
	for (int v = 1; v < V; v++)
		if (lg[v] > lg[best])
			best = v;
	if (q->temperature == 0)
		return best;
	double sum = 0;
	for (int v = 0; v < V; v++) {
		c[v].p = exp(((double)lg[v] - lg[best]) / q->temperature);
		c[v].id = v;
		sum += c[v].p;
	}
	qsort(c, (size_t)V, sizeof *c, by_p);
	double keep = 0;
	int k = 0;
	while (k < V && (k == 0 || keep < q->top_p * sum))
		keep += c[k++].p;
	double u = (double)(mix(q->seed ^ mix((uint64_t)(q->n - q->nprompt) + 0x5eed)) >> 11) / 9007199254740992.0 * keep;
	for (int i = 0; i < k; i++) {
		if (u < c[i].p)
			return c[i].id;
		u -= c[i].p;
	}
	return c[k - 1].id;
}

/* ---- responses -------------------------------------------------------------------- */

/* Bytes to a JSON string: invalid UTF-8 becomes U+FFFD (the event keeps the token ids). */
static json_t *text_json(const char *s, size_t n)
{
	trail_buf b = {0};
	for (size_t i = 0; i < n;) {
		size_t k = 1;
		unsigned char c = (unsigned char)s[i];
		k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
		if (k && i + k <= n && trail_utf8_valid(s + i, k)) {
			trail_buf_put(&b, s + i, k);
			i += k;
		} else {
			trail_buf_put(&b, "\xef\xbf\xbd", 3);
			i++;
		}
	}
	json_t *j = json_stringn(b.p ? b.p : "", b.n);
	trail_buf_release(&b);
	return j;
}

static json_t *ids_json(const int32_t *t, int n)
{
	json_t *a = json_array();
	for (int i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer(t[i]));
	return a;
}

static void write_line(FILE *out, json_t *j)
{
	char *s;
	if (j && !trail_jcs(j, &s, NULL, NULL)) {
		fputs(s, out);
		fputc('\n', out);
		trail_free(s);
	}
	fflush(out);
}

static void respond_error(trail_server *s, FILE *out, const char *id, int code, const char *msg)
{
	json_t *r = json_pack("{s:s, s:{s:i, s:s}}", "id", id ? id : "", "error", "code", code, "message", msg);
	write_line(out, r);
	json_decref(r);
	(void)s;
}

static void finish(trail_server *s, seq *q, const char *reason, size_t textlen, FILE *out)
{
	char *text;
	size_t tl;
	int nout = q->n - q->nprompt;
	trail_tokenizer_decode(s->tk, q->tok + q->nprompt, (size_t)nout, &text, &tl, NULL);
	if (textlen < tl)
		tl = textlen;
	char rd[72];
	trail_jcs_digest(q->req, rd, NULL);
	json_t *usage = json_pack("{s:i, s:i, s:i}", "prompt_tokens", q->nprompt, "completion_tokens", nout,
				  "total_tokens", q->n);
	json_t *ev = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:s?, s:o, s:o, s:o, s:s, s:o, s:{s:f, s:f, s:I, s:i, s:O?}, s:O}",
			       "id", q->id, "request_digest", rd, "base", s->base_name, "base_digest", s->base_digest,
			       "adapter", q->ad ? q->ad->name : NULL, "adapter_digest", q->ad ? q->ad->digest : NULL,
			       "prompt", text_json(q->prompt, strlen(q->prompt)), "prompt_tokens", ids_json(q->tok, q->nprompt),
			       "output_tokens", ids_json(q->tok + q->nprompt, nout), "finish_reason", reason,
			       "output_text", text_json(text, tl), "sampling", "temperature", q->temperature, "top_p", q->top_p,
			       "seed", (json_int_t)q->seed, "max_tokens", q->max_new, "stop", q->stop, "usage", usage);
	json_t *r = json_pack("{s:s, s:s, s:o, s:s, s:O, s:O}", "id", q->id, "model", q->model, "text", text_json(text, tl),
			      "finish_reason", reason, "usage", usage, "event", ev);
	write_line(out, r);
	char *line;
	if (ev && !trail_jcs(ev, &line, NULL, NULL)) {
		if (s->o.events) {
			fputs(line, s->o.events);
			fputc('\n', s->o.events);
		}
		trail_buf_put(&s->events, line, strlen(line));
		trail_buf_put(&s->events, "\n", 1);
		trail_free(line);
	}
	s->st.prompt_tokens += (unsigned long long)q->nprompt;
	s->st.completion_tokens += (unsigned long long)nout;
	json_decref(r);
	json_decref(ev);
	json_decref(usage);
	trail_free(text);
}

/* Has the output reached a stop string? Returns the text length to keep, or -1. */
static long stopped(trail_server *s, const seq *q)
{
	if (!q->stop)
		return -1;
	char *text;
	size_t tl;
	long at = -1;
	if (trail_tokenizer_decode(s->tk, q->tok + q->nprompt, (size_t)(q->n - q->nprompt), &text, &tl, NULL))
		return -1;
	size_t k;
	json_t *v;
	json_t *list = json_is_string(q->stop) ? json_pack("[O]", q->stop) : json_incref(q->stop);
	json_array_foreach(list, k, v) {
		const char *st = json_string_value(v);
		char *hit = st && *st ? memmem(text, tl, st, strlen(st)) : NULL;
		if (hit && (at < 0 || hit - text < at))
			at = hit - text;
	}
	json_decref(list);
	trail_free(text);
	return at;
}

/* ---- the loop ------------------------------------------------------------------------ */

int trail_server_pipe(trail_server *s, FILE *in, FILE *out, trail_error *err)
{
	const trail_gpt2_config *c = trail_infer_config(s->m);
	int V = c->vocab_size, P = c->n_positions, B = s->o.max_batch, rc = TRAIL_OK;
	seq **act = trail_calloc((size_t)B, sizeof *act);
	size_t rowcap = (size_t)B * (size_t)P;
	int32_t *tok = trail_malloc(rowcap * sizeof *tok);
	int *pos = trail_malloc(rowcap * sizeof *pos), *last = trail_malloc((size_t)B * sizeof *last);
	trail_kvc **kvs = trail_malloc(rowcap * sizeof *kvs);
	const trail_lora_w **ls = trail_malloc(rowcap * sizeof *ls);
	float *logits = trail_malloc(rowcap * (size_t)V * sizeof *logits);
	cand *cands = trail_malloc((size_t)V * sizeof *cands);
	trail_ndjson *rd = trail_ndjson_new(in, "<stdin>", (size_t)s->o.max_prompt * 8 + 4096);
	int nact = 0, eof = 0;
	if (!act || !tok || !pos || !last || !kvs || !ls || !logits || !cands || !rd) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	while (!eof || nact) {
		/* admit requests while there is room; block only when idle */
		while (!eof && nact < B) {
			struct pollfd p = {fileno(in), POLLIN, 0};
			if (nact && trail_ndjson_buffered(rd) == 0 && poll(&p, 1, 0) == 0)
				break;
			json_t *req;
			trail_error e = {0};
			int r = trail_ndjson_next(rd, &req, &e);
			if (r == TRAIL_OK && !req) {
				eof = 1;
				break;
			}
			s->st.requests++;
			if (r) {
				s->st.errors++;
				respond_error(s, out, NULL, 400, e.msg);
				continue;
			}
			int code;
			seq *q = make_seq(s, req, &code, &e);
			if (!q) {
				json_t *id = json_object_get(req, "id");
				respond_error(s, out, json_is_string(id) ? json_string_value(id) : NULL, code, e.msg);
			} else if (!(q->kv = s->npool ? s->pool[--s->npool] : trail_kvc_new(s->m))) {
				free_seq(s, q);
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory for the KV cache");
			} else {
				act[nact++] = q;
			}
			json_decref(req);
		}
		if (!nact)
			continue;
		/* one step: prompts of new sequences and the next token of the others */
		int n = 0;
		for (int i = 0; i < nact; i++) {
			seq *q = act[i];
			int from = q->prefilled ? q->n - 1 : 0;
			for (int t = from; t < q->n; t++) {
				tok[n] = q->tok[t];
				pos[n] = t;
				kvs[n] = q->kv;
				ls[n] = q->ad ? q->ad->w : NULL;
				n++;
			}
			last[i] = n - 1;
			q->prefilled = 1;
		}
		if ((rc = trail_infer_step(s->m, n, tok, pos, kvs, ls, logits, err)))
			goto out;
		s->st.steps++;
		s->st.rows += (unsigned long long)n;
		for (int i = 0; i < nact; i++) {
			seq *q = act[i];
			int next = sample(logits + (size_t)last[i] * V, V, q, cands);
			const char *why = NULL;
			long keep = -1;
			if (next == trail_tokenizer_eot(s->tk)) {
				why = "stop";
			} else {
				q->tok[q->n++] = next;
				if ((keep = stopped(s, q)) >= 0)
					why = "stop";
				else if (q->n - q->nprompt >= q->max_new || q->n >= P)
					why = "length";
			}
			if (why) {
				finish(s, q, why, keep >= 0 ? (size_t)keep : (size_t)-1, out);
				free_seq(s, q);
				nact--;
				act[i] = act[nact];
				last[i] = last[nact]; /* the moved sequence keeps its own row */
				i--;
			}
		}
	}
	/* the run's events, recorded as one inference-batch entry */
	if (s->o.store && s->events.n) {
		char dg[72];
		trail_ledger *l;
		if (!(rc = trail_store_put(s->o.store, s->events.p, s->events.n, dg, err)) &&
		    !(rc = trail_ledger_open(s->o.store, TRAIL_LEDGER_WRITE, &l, err))) {
			json_t *e = json_pack("{s:s, s:s, s:s, s:I}", "type", "inference-batch", "events_object", dg, "base",
					      s->base_digest, "requests", (json_int_t)s->st.requests);
			uint64_t idx;
			if (!(rc = trail_ledger_append(l, e, &idx, err)))
				rc = trail_ledger_commit(l, err);
			json_decref(e);
			trail_ledger_free(l);
		}
	}
out:
	for (int i = 0; i < nact; i++)
		free_seq(s, act[i]);
	trail_ndjson_free(rd);
	trail_free(act), trail_free(tok), trail_free(pos), trail_free(last), trail_free(kvs), trail_free(ls);
	trail_free(logits), trail_free(cands);
	return rc;
}
