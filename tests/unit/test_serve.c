/*
 * lora-serve's library: sampling (greedy, temperature, top-p, the counter
 * stream), stop strings and what a stream may send, and the server in pipe
 * mode on random models — an adapter equals its merged model token for
 * token; 64 requests over 64 adapters batched equal each alone; sampled
 * outputs do not depend on the batch; 2,000 adapters through a cache that
 * holds a few, the cache and KV pool within their budgets; round-robin
 * between adapters; bad requests fail alone; events equal the responses'.
 * check-full: 2,000 rank-8 adapters on a 10.8M-parameter base, resident
 * memory within base + cache + KV pool.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "serve/serve_int.h"
#include "tap.h"

#define BAIL_OUT(...) (printf("Bail out! "), printf(__VA_ARGS__), printf("\n"), exit(1))

static char dir[64];

/* A base model (and LoRA-perturbed adapters of it) in dir/NAME. */
static void make_models(const char *name, const trail_model_cfg *c, int nad, int r, int targets, int merged)
{
	trail_model *m;
	trail_error e = {0};
	char p[512];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	if (trail_model_init(c, 7, &m, &e) || trail_model_save(m, p, &e))
		BAIL_OUT("base: %s", e.msg);
	trail_lora_config lc = {.r = r, .alpha = 2.0 * r, .targets = targets};
	trail_model_add_lora(m, &lc, 3, &e);
	uint64_t z = 99;
	for (int a = 0; a < nad; a++) {
		size_t n;
		float *w = trail_model_params(m, &n);
		for (size_t i = 0; i < n; i++) {
			z = z * 6364136223846793005ULL + 1442695040888963407ULL;
			w[i] = ((float)(z >> 40) / 16777216.0f - 0.5f) * 0.2f;
		}
		snprintf(p, sizeof p, "%s/%s-ads/a%d", dir, name, a);
		if (trail_model_save_adapter(m, p, name, &e))
			BAIL_OUT("adapter: %s", e.msg);
		if (a < merged) { /* the same adapter folded into a copy of the base */
			trail_model *t;
			snprintf(p, sizeof p, "%s/%s", dir, name);
			trail_model_load(p, &t, &e);
			snprintf(p, sizeof p, "%s/%s-ads/a%d", dir, name, a);
			trail_model_load_adapter(t, p, &e);
			trail_model_merge_lora(t, &e);
			snprintf(p, sizeof p, "%s/%s-merged%d", dir, name, a);
			trail_model_save(t, p, &e);
			trail_model_free(t);
		}
	}
	trail_model_free(m);
}

/* Serve `in` in pipe mode; responses by id (errors under "error"), in arrival order in *order. */
static json_t *serve(trail_serve_opts *o, const char *in, json_t **order, trail_serve_stats *st)
{
	trail_server *s;
	trail_error e = {0};
	if (trail_server_new(o, &s, &e)) {
		diag("server: %s", e.msg);
		return NULL;
	}
	FILE *fi = fmemopen((void *)in, strlen(in), "r"), *fo = tmpfile();
	int rc = trail_server_pipe(s, fi, fo, &e);
	if (rc)
		diag("pipe: %s", e.msg);
	if (st)
		trail_server_stats(s, st);
	trail_server_free(s);
	rewind(fo);
	json_t *by = json_object(), *ord = json_array(), *v;
	trail_ndjson *rd = trail_ndjson_new(fo, "out", 0);
	for (;;) {
		if (trail_ndjson_next(rd, &v, &e)) {
			diag("response: %s", e.msg);
			continue;
		}
		if (!v)
			break;
		json_object_set(by, json_string_value(json_object_get(v, "id")), v);
		json_array_append_new(ord, v);
	}
	trail_ndjson_free(rd);
	fclose(fi);
	fclose(fo);
	if (order)
		*order = ord;
	else
		json_decref(ord);
	return by;
}

static char *tokens_of(json_t *by, const char *id)
{
	json_t *r = json_object_get(by, id), *ev = json_object_get(r, "event");
	char *s = NULL;
	json_t *t = json_object_get(ev, "output_tokens");
	if (t)
		trail_jcs(t, &s, NULL, NULL);
	return s;
}

/* Do the requests named r0..r(n-1) have the same output tokens in both answers? */
static int same_outputs(json_t *a, json_t *b, int n, int *differ_from_base)
{
	int same = 1;
	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof id, "r%d", i);
		char *x = tokens_of(a, id), *y = tokens_of(b, id);
		if (!x || !y || strcmp(x, y)) {
			if (same)
				diag("%s: %s vs %s", id, x ? x : "(none)", y ? y : "(none)");
			same = 0;
		}
		trail_free(x), trail_free(y);
	}
	(void)differ_from_base;
	return same;
}

static char *reqs(int n, int nad, int stride, int tokens, const char *extra)
{
	trail_buf b = {0};
	char line[512];
	for (int i = 0; i < n; i++) {
		int a = (int)((long)i * stride % nad);
		int k = snprintf(line, sizeof line,
				 "{\"id\":\"r%d\",\"model\":\"a%d\",\"prompt\":\"Harbour %d opens at %d\",\"max_tokens\":%d,"
				 "\"ignore_eos\":true%s}\n",
				 i, a, i, i % 9, tokens, extra);
		trail_buf_put(&b, line, (size_t)k);
	}
	return b.p;
}

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, strlen(key)))
			v = atol(line + strlen(key) + 1);
	if (f)
		fclose(f);
	return v;
}

static void test_sampling(void)
{
	float lg[4] = {0, logf(2), logf(4), -INFINITY};
	cand c[4];
	ok(serve_sample(lg, 4, 0, 1, 0.99, c) == 2, "temperature 0 is greedy");
	int cnt[4] = {0}, n = 70000;
	double mean = 0;
	for (int i = 0; i < n; i++) {
		double u = serve_uniform(42, (uint64_t)i);
		mean += u;
		cnt[serve_sample(lg, 4, 1.0, 1.0, u, c)]++;
	}
	ok(fabs(mean / n - 0.5) < 0.01, "the counter stream is uniform (mean %.4f)", mean / n);
	ok(fabs(cnt[0] / (double)n - 1 / 7.) < 0.01 && fabs(cnt[1] / (double)n - 2 / 7.) < 0.01 &&
		   fabs(cnt[2] / (double)n - 4 / 7.) < 0.01 && cnt[3] == 0,
	   "temperature 1 draws softmax frequencies (%d %d %d %d)", cnt[0], cnt[1], cnt[2], cnt[3]);
	memset(cnt, 0, sizeof cnt);
	for (int i = 0; i < 5000; i++)
		cnt[serve_sample(lg, 4, 1.0, 0.5, serve_uniform(7, (uint64_t)i), c)]++;
	ok(cnt[2] == 5000, "top_p 0.5 keeps only the most likely token");
	memset(cnt, 0, sizeof cnt);
	for (int i = 0; i < 6000; i++)
		cnt[serve_sample(lg, 4, 1.0, 0.8, serve_uniform(7, (uint64_t)i), c)]++;
	ok(cnt[0] == 0 && fabs(cnt[1] / 6000.0 - 1 / 3.) < 0.03, "top_p 0.8 keeps two tokens, renormalised (%d %d %d)",
	   cnt[0], cnt[1], cnt[2]);
	memset(cnt, 0, sizeof cnt);
	for (int i = 0; i < 6000; i++)
		cnt[serve_sample(lg, 4, 0.25, 1.0, serve_uniform(9, (uint64_t)i), c)]++;
	ok(cnt[2] > 5500, "a low temperature sharpens (%d of 6000 on the top token)", cnt[2]);
	ok(serve_uniform(1, 5) == serve_uniform(1, 5) && serve_uniform(1, 5) != serve_uniform(2, 5) &&
		   serve_uniform(1, 5) != serve_uniform(1, 6),
	   "draws are a function of (seed, index)");
}

static void test_stops(void)
{
	sreq q = {0};
	q.stops[0] = "END";
	q.stoplen[0] = 3;
	q.stops[1] = "\n\n";
	q.stoplen[1] = 2;
	q.nstop = 2;
	const char *t = "abc\nxEN";
	ok(serve_find_stop(&q, t, strlen(t), 0) == -1, "no stop string yet");
	ok(serve_safe_prefix(&q, t, strlen(t)) == 5, "a stream holds back the start of a stop string (\"EN\")");
	t = "abc\nxENDmore";
	ok(serve_find_stop(&q, t, 8, 7) == 5, "a stop string found across the last token's boundary");
	t = "ab\n\nEND";
	ok(serve_find_stop(&q, t, strlen(t), 0) == 2, "the earliest stop string wins");
	t = "caf\xc3";
	ok(serve_safe_prefix(&q, t, strlen(t)) == 3, "and holds back half a UTF-8 character");
	t = "caf\xc3\xa9";
	ok(serve_safe_prefix(&q, t, strlen(t)) == 5, "a whole character goes");
	json_t *j = serve_text_json("a\xff" "b\0", 4);
	ok(!strcmp(json_string_value(j), "a\xef\xbf\xbd" "b\xef\xbf\xbd"), "invalid UTF-8 and NUL in output text become U+FFFD");
	json_decref(j);
}

int main(void)
{
	trail_init();
	struct stat sh; /* tmpfs when there is one: thousands of adapters are written with fsync */
	snprintf(dir, sizeof dir, "%s/trail-serve-XXXXXX", stat("/dev/shm", &sh) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	if (!mkdtemp(dir))
		BAIL_OUT("mkdtemp");
	test_sampling();
	test_stops();

	trail_model_cfg c = {.n_layer = 2, .n_head = 2, .n_embd = 32, .n_positions = 64, .vocab_size = 257};
	make_models("b", &c, 64, 4, 15, 3);
	char base[600], ads[600], merged[600];
	snprintf(base, sizeof base, "%s/b", dir);
	snprintf(ads, sizeof ads, "%s/b-ads", dir);

	/* 1. an adapter gives its merged model's greedy tokens */
	int same = 1;
	for (int a = 0; a < 3; a++) {
		char in[256];
		snprintf(in, sizeof in, "{\"id\":\"r0\",\"model\":\"a%d\",\"prompt\":\"Harbour 3 \",\"max_tokens\":40,"
			 "\"temperature\":0,\"ignore_eos\":true}\n", a);
		trail_serve_opts o = {.base = base, .adapters = ads};
		json_t *x = serve(&o, in, NULL, NULL);
		snprintf(merged, sizeof merged, "%s/b-merged%d", dir, a);
		trail_serve_opts om = {.base = merged};
		snprintf(in, sizeof in, "{\"id\":\"r0\",\"model\":\"base\",\"prompt\":\"Harbour 3 \",\"max_tokens\":40,"
			 "\"temperature\":0,\"ignore_eos\":true}\n");
		json_t *y = serve(&om, in, NULL, NULL);
		same &= x && y && same_outputs(x, y, 1, NULL);
		json_decref(x), json_decref(y);
	}
	ok(same, "greedy tokens with an adapter = with it merged into the weights (3 adapters, 40 tokens)");

	/* 64 requests over 64 adapters, batched, vs one at a time */
	char *in64 = reqs(64, 64, 1, 24, ",\"temperature\":0");
	trail_serve_opts o = {.base = base, .adapters = ads, .max_batch = 64, .max_queue = 64, .threads = 2};
	trail_serve_stats st;
	json_t *batched = serve(&o, in64, NULL, &st);
	ok(batched && json_object_size(batched) == 64 && st.errors == 0, "64 answers");
	ok(st.steps < 64 * 25 / 4, "in batches (%llu steps for 64 x 24 tokens)", st.steps);
	trail_serve_opts o1 = o;
	o1.max_batch = 1;
	o1.threads = 1; /* batched with a helper thread, alone without */
	json_t *alone = serve(&o1, in64, NULL, NULL);
	ok(batched && alone && same_outputs(batched, alone, 64, NULL), "each of 64 requests over 64 adapters gets exactly its solo output");
	char *t0 = tokens_of(batched, "r0"), *t1 = tokens_of(batched, "r1");
	json_t *r0 = json_object_get(batched, "r0");
	ok(t0 && t1 && strcmp(t0, t1), "adapters change the output");
	ok(json_is_string(json_object_get(r0, "text")) && !strcmp(json_string_value(json_object_get(r0, "finish_reason")), "length") &&
		   json_integer_value(json_object_get(json_object_get(r0, "usage"), "completion_tokens")) == 24,
	   "a response carries text, finish_reason and usage");
	trail_free(t0), trail_free(t1);
	/* sampled: the same seeds give the same tokens in any company */
	char *ins = reqs(64, 64, 1, 24, ",\"temperature\":0.9,\"top_p\":0.9,\"seed\":5");
	json_t *sb = serve(&o, ins, NULL, NULL), *sa = serve(&o1, ins, NULL, NULL);
	ok(sb && sa && same_outputs(sb, sa, 64, NULL), "sampled outputs (temperature, top_p, seed) do not depend on the batch");
	json_decref(sb), json_decref(sa);
	trail_free(ins);

	/* a KV pool of 5 sequences and prompts prefilled in chunks of 7 rows */
	trail_serve_opts ok5 = o;
	ok5.kv_bytes = 5 * 2 * 2 * 64 * 32 * sizeof(float);
	ok5.step_rows = 7;
	json_t *small = serve(&ok5, in64, NULL, &st);
	ok(small && same_outputs(small, alone, 64, NULL) && st.kv_peak <= ok5.kv_bytes,
	   "a KV pool of 5 full contexts and 7-row prefill chunks: the same answers, at most %zu bytes of KV (%zu)",
	   ok5.kv_bytes, st.kv_peak);
	json_decref(small);

	/* 2. more adapters than the cache holds */
	size_t one = 0;
	{
		trail_infer *im;
		trail_lora_w *w;
		trail_error e = {0};
		char p[700];
		snprintf(p, sizeof p, "%s/a0", ads);
		trail_infer_load(base, &im, &e);
		trail_lora_w_load(im, p, &w, &e);
		one = w ? trail_lora_w_bytes(w) : 0;
		trail_lora_w_free(w);
		trail_infer_free(im);
	}
	trail_serve_opts oc = o;
	oc.cache_bytes = 5 * one;
	oc.max_batch = 8;
	json_t *cached = serve(&oc, in64, NULL, &st);
	ok(cached && same_outputs(cached, alone, 64, NULL), "a cache of 5 adapters serves 64 adapters, every answer the same");
	ok(st.adapter_evictions > 0 && st.cache_peak <= oc.cache_bytes, "%llu evictions; the cache peaked at %zu of %zu bytes",
	   st.adapter_evictions, st.cache_peak, oc.cache_bytes);
	json_decref(cached);

	/* 2,000 adapters, requests spread over all of them, a cache holding 20 */
	make_models("c", &c, 2000, 8, 15, 0);
	char cbase[600], cads[600];
	snprintf(cbase, sizeof cbase, "%s/c", dir);
	snprintf(cads, sizeof cads, "%s/c-ads", dir);
	char *in2k = reqs(2000, 2000, 997, 4, ",\"temperature\":0");
	trail_serve_opts o2k = {.base = cbase, .adapters = cads, .max_batch = 64, .max_queue = 2000, .cache_bytes = 20 * one * 2};
	json_t *k2 = serve(&o2k, in2k, NULL, &st);
	ok(k2 && json_object_size(k2) == 2000 && st.errors == 0, "2,000 requests over 2,000 adapters answered (%zu, %llu errors)",
	   json_object_size(k2), st.errors);
	ok(st.adapters == 2000 && st.adapter_loads >= 2000 && st.cache_peak <= o2k.cache_bytes,
	   "2,000 registered, %llu loads, %llu evictions, cache peak %zu <= %zu", st.adapter_loads, st.adapter_evictions,
	   st.cache_peak, o2k.cache_bytes);
	trail_serve_opts o2r = o2k;
	o2r.max_batch = 7;
	o2r.cache_bytes = (size_t)1 << 30;
	json_t *k2r = serve(&o2r, in2k, NULL, NULL);
	ok(k2 && k2r && same_outputs(k2, k2r, 2000, NULL), "each answer equals the one from a cache holding all of them, batched otherwise");
	json_decref(k2), json_decref(k2r);
	trail_free(in2k);

	/* round-robin: one request for a2 behind ten for a1 is answered second, not last */
	trail_buf rb = {0};
	for (int i = 0; i < 10; i++) {
		char l[200];
		int k = snprintf(l, sizeof l, "{\"id\":\"x%d\",\"model\":\"a1\",\"prompt\":\"Hi\",\"max_tokens\":3,\"temperature\":0}\n", i);
		trail_buf_put(&rb, l, (size_t)k);
	}
	const char *yl = "{\"id\":\"y\",\"model\":\"a2\",\"prompt\":\"Hi\",\"max_tokens\":3,\"temperature\":0}\n";
	trail_buf_put(&rb, yl, strlen(yl));
	trail_serve_opts orr = o;
	orr.max_batch = 1;
	json_t *ord = NULL, *rr = serve(&orr, rb.p, &ord, NULL);
	ok(ord && !strcmp(json_string_value(json_object_get(json_array_get(ord, 1), "id")), "y"),
	   "round-robin between adapters: a2's one request goes second, not after a1's ten");
	json_decref(rr), json_decref(ord);
	trail_buf_release(&rb);

	/* bad requests fail alone */
	char prompt[300];
	memset(prompt, 'x', 200);
	prompt[200] = 0;
	char bad[4096];
	snprintf(bad, sizeof bad,
		 "{\"id\":\"ok1\",\"model\":\"a1\",\"prompt\":\"Hi\",\"max_tokens\":4,\"temperature\":0}\n"
		 "{\"id\":\"e1\",\"model\":\"nope\",\"prompt\":\"Hi\"}\n"
		 "{\"id\":\"e2\",\"model\":\"a1\",\"prompt\":\"Hi\",\"max_tokens\":100000}\n"
		 "{\"id\":\"e3\",\"model\":\"a1\",\"prompt\":\"Hi\",\"temperature\":-1}\n"
		 "{\"id\":\"e4\",\"model\":\"a1\",\"prompt\":\"%s\"}\n"
		 "{\"id\":\"e5\",\"model\":\"../b\",\"prompt\":\"Hi\"}\n"
		 "{\"id\":\"e6\",\"model\":\"a1\",\"prompt\":\"\"}\n"
		 "{\"id\":\"e7\",\"model\":\"a1\",\"prompt\":\"Hi\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}\n"
		 "{\"id\":\"e8\",\"model\":\"a1\",\"prompt\":\"Hi\",\"top_p\":0}\n"
		 "{\"id\":\"e9\",\"model\":\"a1\",\"prompt\":7}\n"
		 "{\"id\":\"e10\",\"model\":\"a1\",\"prompt\":\"\\ud800\"}\n"
		 "not json\n"
		 "{\"id\":\"ok2\",\"model\":\"base\",\"prompt\":\"Hi\",\"max_tokens\":4,\"temperature\":0,\"stop\":\"i\"}\n",
		 prompt);
	json_t *mix = serve(&o, bad, &ord, &st);
	static const struct { const char *id; int code; } want[] = {
		{"e1", 404}, {"e2", 400}, {"e3", 400}, {"e4", 413}, {"e5", 404}, {"e6", 400}, {"e7", 400}, {"e8", 400},
		{"e9", 400}};
	int codes = 1;
	for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
		json_t *er = json_object_get(json_object_get(mix, want[i].id), "error");
		if (json_integer_value(json_object_get(er, "code")) != want[i].code) {
			diag("%s: wanted %d", want[i].id, want[i].code);
			codes = 0;
		}
	}
	ok(mix && json_array_size(ord) == 13 && codes, "13 requests, 13 answers; each bad one its own error (404, 400, 413)");
	ok(json_is_string(json_object_get(json_object_get(mix, "ok1"), "text")) &&
		   json_is_string(json_object_get(json_object_get(mix, "ok2"), "text")),
	   "the good requests around them are answered");
	json_decref(mix), json_decref(ord);

	/* events: appended, one per response, equal to the response's */
	char evp[700];
	snprintf(evp, sizeof evp, "%s/events.ndjson", dir);
	trail_serve_opts oe = o;
	oe.events = evp;
	json_t *er = serve(&oe, in64, NULL, NULL);
	void *eb;
	size_t el;
	int evok = er && !trail_read_file(evp, 1 << 26, &eb, &el, NULL), lines = 0;
	if (evok) {
		for (char *p = eb, *nl; (nl = memchr(p, '\n', el - (size_t)(p - (char *)eb))); p = nl + 1, lines++) {
			json_t *ev;
			if (trail_json_parse(p, (size_t)(nl - p), "ev", &ev, NULL)) {
				evok = 0;
				break;
			}
			json_t *resp = json_object_get(er, json_string_value(json_object_get(ev, "id")));
			if (!json_equal(ev, json_object_get(resp, "event")) || !json_object_get(ev, "adapter_digest") ||
			    !json_object_get(ev, "request_digest") || !json_is_array(json_object_get(ev, "prompt_tokens")))
				evok = 0;
			json_decref(ev);
		}
		trail_free(eb);
	}
	ok(evok && lines == 64, "--events: 64 events appended, each the response's own (%d)", lines);
	json_decref(er);

	/* check-full: 2,000 rank-8 adapters on a 10.8M-parameter base */
	if (tap_full()) {
		trail_model_cfg big = {.n_layer = 6, .n_head = 6, .n_embd = 384, .n_positions = 256, .vocab_size = 257};
		make_models("g", &big, 2000, 8, 1, 0);
		char gb[600], ga[600];
		snprintf(gb, sizeof gb, "%s/g", dir);
		snprintf(ga, sizeof ga, "%s/g-ads", dir);
		char *ing = reqs(2000, 2000, 997, 4, ",\"temperature\":0");
		trail_serve_opts og = {.base = gb, .adapters = ga, .max_batch = 64, .max_queue = 2000,
				       .cache_bytes = (size_t)64 << 20};
		trail_server *s;
		trail_error e = {0};
		long before = status_kb("VmRSS:");
		trail_server_new(&og, &s, &e);
		FILE *f = fopen("/proc/self/clear_refs", "w");
		if (f)
			fputs("5", f), fclose(f);
		FILE *fi = fmemopen(ing, strlen(ing), "r"), *fo = tmpfile();
		trail_server_pipe(s, fi, fo, &e);
		long peak = status_kb("VmHWM:");
		trail_server_stats(s, &st);
		trail_server_free(s);
		fclose(fi), fclose(fo);
		size_t bound = st.base_bytes + og.cache_bytes + st.kv_budget;
		diag("resident: %ld kB before, peak %ld kB serving; base %zu + cache %zu + KV pool %zu = %zu kB "
		     "(cache peak %zu, KV peak %zu)", before, peak, st.base_bytes, og.cache_bytes, st.kv_budget, bound / 1024,
		     st.cache_peak, st.kv_peak);
		ok(st.completion_tokens == 8000 && st.errors == 0 && st.adapter_evictions > 0,
		   "10.8M base: 2,000 requests over 2,000 adapters, %llu loads, %llu evictions", st.adapter_loads,
		   st.adapter_evictions);
		ok(peak > 0 && (size_t)(peak - before) * 1024 <= bound, "resident memory grew %ld kB, within %zu kB", peak - before,
		   bound / 1024);
		trail_serve_opts ogr = og;
		ogr.cache_bytes = (size_t)1 << 30;
		ogr.max_batch = 13;
		json_t *x = serve(&og, ing, NULL, NULL), *y = serve(&ogr, ing, NULL, NULL);
		ok(x && y && same_outputs(x, y, 2000, NULL), "every answer equals the one without cache misses, batched otherwise");
		json_decref(x), json_decref(y);
		trail_free(ing);
	}

	json_decref(batched), json_decref(alone);
	trail_free(in64);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	return tap_done();
}
