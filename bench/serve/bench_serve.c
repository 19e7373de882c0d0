/*
 * Serving benchmark: aggregate completion tokens/s for 64 concurrent
 * requests (a) on one adapter, (b) over 64 adapters, (c) over 2,000
 * adapters with a cache that holds a fraction of them, (d) the requests of
 * (a) served one at a time; adapter cold-load p50/p99; resident memory
 * against base + cache + KV pool; the memory-bandwidth and sgemm bounds of
 * one decode step measured in the same run.
 *
 * usage: bench_serve DIR [ADAPTERS [TOKENS [THREADS]]]
 * Builds a GPT-2 base (6 layers, 384 wide, 256 positions, byte vocabulary:
 * 10.8M parameters) and ADAPTERS rank-8 LoRA adapters on c_attn in DIR.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cblas.h>

#include "model/model.h"
#include "serve/serve.h"
#include "core/core.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec * 1e-9;
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

static void reset_peak(void)
{
	FILE *f = fopen("/proc/self/clear_refs", "w");
	if (f) {
		fputs("5", f);
		fclose(f);
	}
}

static int die(const char *what, const trail_error *e)
{
	fprintf(stderr, "bench_serve: %s: %s\n", what, e->msg);
	exit(1);
}

typedef struct run {
	long rss_start_kb, peak_kb; /* before the server exists; the peak while it serves */
	double secs, tok_s;
	unsigned long long tokens, loads, steps, rows;
	trail_serve_stats st;
} run;

/* Serve the NDJSON text `in` through pipe mode; responses are checked for errors. */
static run serve(trail_serve_opts *o, const char *in, double *loads, size_t *nloads)
{
	trail_server *s;
	trail_error e = {0};
	run r = {0};
	r.rss_start_kb = status_kb("VmRSS:");
	if (trail_server_new(o, &s, &e))
		die("server", &e);
	FILE *fi = fmemopen((void *)in, strlen(in), "r"), *fo = tmpfile();
	reset_peak(); /* loading the base maps its file beside the copy: a transient, not serving memory */
	double t0 = now();
	if (trail_server_pipe(s, fi, fo, &e))
		die("serve", &e);
	r.secs = now() - t0;
	r.peak_kb = status_kb("VmHWM:");
	trail_server_stats(s, &r.st);
	if (r.st.errors) {
		fprintf(stderr, "bench_serve: %llu errors\n", r.st.errors);
		exit(1);
	}
	r.tokens = r.st.completion_tokens;
	r.tok_s = (double)r.tokens / r.secs;
	if (loads)
		*nloads = trail_server_load_times(s, loads, *nloads);
	fclose(fi);
	fclose(fo);
	trail_server_free(s);
	return r;
}

static int by_rate(const void *a, const void *b)
{
	double x = ((const run *)a)->tok_s, y = ((const run *)b)->tok_s;
	return x < y ? -1 : x > y;
}

static run median(run *r, int n)
{
	qsort(r, (size_t)n, sizeof *r, by_rate);
	return r[n / 2];
}

static char *requests(int n, int nadapters, int stride, int tokens)
{
	trail_buf b = {0};
	char line[256];
	for (int i = 0; i < n; i++) {
		int a = (int)(((long)i * stride) % nadapters);
		int k = snprintf(line, sizeof line,
				 "{\"id\":\"r%d\",\"model\":\"a%d\",\"prompt\":\"Request %d asks adapter %d.\","
				 "\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true}\n",
				 i, a, i, a, tokens);
		trail_buf_put(&b, line, (size_t)k);
	}
	return b.p;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bench_serve DIR [ADAPTERS [TOKENS [THREADS]]]\n");
		return 64;
	}
	trail_init();
	const char *dir = argv[1];
	int NA = argc > 2 ? atoi(argv[2]) : 2000, TOK = argc > 3 ? atoi(argv[3]) : 64, TH = argc > 4 ? atoi(argv[4]) : 2;
	trail_blas_threads(TH);
	trail_model_cfg c = {.n_layer = 6, .n_head = 6, .n_embd = 384, .n_positions = 256, .vocab_size = 257};
	trail_error e = {0};
	char *base = trail_path(dir, "base"), *ads = trail_path(dir, "adapters"), sub[512];
	trail_model *m;
	double t0 = now();
	struct stat sb;
	if (stat(base, &sb)) { /* build once; a second run reuses the files */
		if (trail_model_init(&c, 1, &m, &e) || trail_model_save(m, base, &e))
			die("base", &e);
		trail_lora_config lc = {.r = 8, .alpha = 16, .targets = TRAIL_LORA_C_ATTN};
		if (trail_model_add_lora(m, &lc, 2, &e))
			die("lora", &e);
		uint64_t z = 12345;
		for (int a = 0; a < NA; a++) {
			size_t n;
			float *p = trail_model_params(m, &n);
			for (size_t i = 0; i < n; i++) {
				z = z * 6364136223846793005ULL + 1442695040888963407ULL;
				p[i] = ((float)(z >> 40) / 16777216.0f - 0.5f) * 0.1f;
			}
			snprintf(sub, sizeof sub, "%s/a%d", ads, a);
			if (trail_model_save_adapter(m, sub, "base", &e))
				die("adapter", &e);
		}
		trail_model_free(m);
	}
	double tbuild = now() - t0;
	snprintf(sub, sizeof sub, "%s/a0/adapter_model.safetensors", ads);
	stat(sub, &sb);
	size_t adapter_file = (size_t)sb.st_size;

	/* bounds: streaming the weights once per step, and sgemm's rate */
	size_t np = trail_gpt2_num_params(&c), wbytes = np * sizeof(float);
	size_t bn = (size_t)256 << 20;
	float *big = malloc(bn), *bx = malloc(64 * 1536 * sizeof(float)), *by = malloc(64 * 1536 * sizeof(float));
	memset(big, 1, bn);
	memset(bx, 0, 64 * 1536 * sizeof(float));
	double best = 1e9, sum = 0;
	for (int rep = 0; rep < 5; rep++) {
		double a = now();
		for (size_t i = 0; i < bn / sizeof(float); i += 16)
			sum += big[i] + big[i + 8];
		double t = now() - a;
		best = t < best ? t : best;
	}
	double bw = (double)bn / best; /* bytes/s reading, one cache line per 64 bytes touched */
	double g0 = now();
	int greps = 0;
	while (now() - g0 < 1.0) {
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 64, 1536, 384, 1.0f, bx, 384, big, 1536, 0.0f, by, 1536);
		greps++;
	}
	double gflops = 2.0 * 64 * 1536 * 384 * greps / (now() - g0) / 1e9;
	free(big), free(bx), free(by);

	trail_serve_opts o = {.base = base, .adapters = ads, .max_batch = 64, .cache_bytes = (size_t)1 << 30, .threads = TH};
	int N = 64, ND = 16, NC = NA < 256 ? NA : 256, REPS = getenv("BENCH_REPS") ? atoi(getenv("BENCH_REPS")) : 3;
	/*
	 * (a) one adapter, (b) 64 adapters, (c) NC requests spread uniformly over
	 * all adapters (a stride coprime to NA: every request a different
	 * adapter), 64 at a time, through a cache of 64 MiB; (d) the requests of
	 * (a), one at a time. (a)-(c) interleaved REPS times, medians reported,
	 * so load from other jobs on the machine falls on all of them alike.
	 */
	char *ra = requests(N, 1, 1, TOK), *rb = requests(N, 64, 1, TOK), *rc = requests(NC, NA, 997, TOK);
	char *rd = requests(ND, 1, 1, TOK);
	o.max_queue = NC;
	trail_serve_opts oc = o;
	oc.cache_bytes = (size_t)64 << 20;
	run A, Bv, Cv, D, ra_[16], rb_[16], rc_[16];
	double loads[4096];
	size_t nl = 4096;
	if (REPS > 16)
		REPS = 16;
	for (int r = 0; r < REPS; r++) {
		ra_[r] = serve(&o, ra, NULL, NULL);
		rb_[r] = serve(&o, rb, NULL, NULL);
		nl = 4096;
		rc_[r] = serve(&oc, rc, loads, &nl);
	}
	A = median(ra_, REPS), Bv = median(rb_, REPS), Cv = median(rc_, REPS);
	trail_serve_opts od = o;
	od.max_batch = 1;
	D = serve(&od, rd, NULL, NULL);
	/* (c) over every adapter once: one long run, between two runs of (a) */
	run A1 = {0}, Call = {0}, A2 = {0};
	if (NA > NC) {
		char *rall = requests(NA, NA, 997, TOK);
		trail_serve_opts oall = oc;
		oall.max_queue = NA;
		A1 = serve(&o, ra, NULL, NULL);
		Call = serve(&oall, rall, NULL, NULL);
		A2 = serve(&o, ra, NULL, NULL);
		free(rall);
	}
	double aa = (A1.tok_s + A2.tok_s) / 2;
	long rss0 = Cv.rss_start_kb, hwm = Cv.peak_kb;
	qsort(loads, nl, sizeof *loads, cmp_d);
	double p50 = nl ? loads[nl / 2] : 0, p99 = nl ? loads[(size_t)(nl * 0.99)] : 0;
	size_t kvpool = Cv.st.kv_budget, budget = oc.cache_bytes;

	double step_a = A.secs / (double)A.st.steps * 1e3, step_d = D.secs / (double)D.st.steps * 1e3;
	double bound_ms = (double)wbytes / bw * 1e3;
	double flops_tok = 2.0 * (double)np, gemm_bound_tok_s = gflops * 1e9 / flops_tok;
	printf("{\"params\":%zu,\"adapters\":%d,\"adapter_file_bytes\":%zu,\"build_s\":%.1f,\"threads\":%d,"
	       "\"tokens_per_request\":%d,"
	       "\"a_one_adapter_tok_s\":%.1f,\"b_64_adapters_tok_s\":%.1f,\"c_%d_adapters_tok_s\":%.1f,"
	       "\"d_one_at_a_time_tok_s\":%.1f,\"b_over_a\":%.3f,\"c_over_a\":%.3f,\"a_over_d\":%.2f,"
	       "\"reps\":%d,\"c_requests\":%d,\"c_loads\":%llu,\"c_evictions\":%llu,\"cold_load_p50_ms\":%.3f,\"cold_load_p99_ms\":%.3f,"
	       "\"step_a_ms\":%.2f,\"step_d_ms\":%.2f,\"read_bandwidth_gb_s\":%.2f,\"weights_bytes\":%zu,"
	       "\"bandwidth_bound_step_ms\":%.2f,\"bandwidth_bound_one_at_a_time_tok_s\":%.1f,\"sgemm_gflops\":%.1f,"
	       "\"sgemm_bound_tok_s\":%.1f,"
	       "\"c_rss_before_kb\":%ld,\"c_peak_rss_kb\":%ld,\"base_bytes\":%zu,\"cache_budget\":%zu,\"kv_pool\":%zu,"
	       "\"bound_kb\":%zu,\"c_all_requests\":%d,\"c_all_tok_s\":%.1f,\"c_all_loads\":%llu,"
	       "\"c_all_evictions\":%llu,\"a_around_c_all_tok_s\":%.1f,\"c_all_over_a\":%.3f,\"c_all_peak_rss_kb\":%ld}\n",
	       np, NA, adapter_file, tbuild, TH, TOK, A.tok_s, Bv.tok_s, NA, Cv.tok_s, D.tok_s, Bv.tok_s / A.tok_s,
	       Cv.tok_s / A.tok_s, A.tok_s / D.tok_s, REPS, NC, Cv.st.adapter_loads, Cv.st.adapter_evictions, p50, p99,
	       step_a, step_d, bw / 1e9, wbytes, bound_ms, 1e3 / bound_ms, gflops, gemm_bound_tok_s, rss0, hwm,
	       Cv.st.base_bytes, budget, kvpool, (Cv.st.base_bytes + budget + kvpool) / 1024, NA > NC ? NA : 0, Call.tok_s,
	       Call.st.adapter_loads, Call.st.adapter_evictions, aa, aa > 0 ? Call.tok_s / aa : 0, Call.peak_kb);
	if (sum == 1234.5)
		fprintf(stderr, "%g\n", sum); /* keeps the read loop */
	free(ra), free(rb), free(rc), free(rd);
	trail_free(base), trail_free(ads);
	return 0;
}
