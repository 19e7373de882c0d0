/*
 * Decoding by precision: the SmolLM2-135M shape (LlamaForCausalLM: 30
 * layers, 576 wide, 9 heads over 3 key/value heads, MLP 1536, vocab
 * 49,152, tied) with random weights and 64 random rank-8 adapters on
 * q_proj and v_proj. For fp32, bf16 and int8, alternating, ROUNDS times
 * (each round sets each precision afresh): decode tokens/s of one request
 * (one adapter) and of 64 requests over the 64 adapters in one batch, each
 * the median step after a warmup step, and the process's CPU seconds a
 * step (getrusage, all threads); the base weight bytes one step
 * reads at that precision; the read bandwidth of THREADS threads measured
 * in the same run (each thread summing its slice of a 1 GiB buffer, best of
 * 5); and the memory-bandwidth bound of one-request decoding (bytes read /
 * bandwidth). Prints one JSON line per figure.
 *
 * usage: bench_prec DIR THREADS STEPS [ROUNDS]   (ROUNDS default 1)
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <inttypes.h>
#include <stdlib.h>
#include <xxhash.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "core/core.h"
#include "model/model.h"
#include "../bench.h"

typedef struct { const float *p; size_t n; double sum; } slice;

static void *reader(void *a)
{
	slice *s = a;
	float acc[16] = {0};
	for (size_t i = 0; i + 16 <= s->n; i += 16)
		for (int j = 0; j < 16; j++)
			acc[j] += s->p[i + j];
	for (int j = 0; j < 16; j++)
		s->sum += acc[j];
	return NULL;
}

/* Bytes/s of th threads reading disjoint slices of n floats at p, best of 5. */
static double read_bw(const float *p, size_t n, int th)
{
	double best = 1e9, sink = 0;
	pthread_t t[256];
	slice s[256];
	for (int rep = 0; rep < 5; rep++) {
		double a = now();
		for (int i = 0; i < th; i++) {
			s[i] = (slice){p + n / th * i, n / th, 0};
			pthread_create(&t[i], NULL, reader, &s[i]);
		}
		for (int i = 0; i < th; i++)
			pthread_join(t[i], NULL), sink += s[i].sum;
		double d = now() - a;
		best = d < best ? d : best;
	}
	if (sink == 1234.5)
		fprintf(stderr, "%g\n", sink);
	return (double)(n / th * th) * sizeof *p / best;
}

static int die(const char *what, const trail_error *e)
{
	fprintf(stderr, "bench_prec: %s: %s\n", what, e->msg);
	exit(70);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: bench_prec DIR THREADS STEPS\n");
		return 64;
	}
	const char *dir = argv[1];
	int th = atoi(argv[2]), steps = atoi(argv[3]), rounds = argc > 4 ? atoi(argv[4]) : 1;
	trail_init();
	trail_compute_set(th, TRAIL_PREC_FP32, NULL);
	trail_model_cfg c = {.arch = TRAIL_ARCH_LLAMA, .n_layer = 30, .n_head = 9, .n_kv_head = 3, .head_dim = 64,
			     .n_embd = 576, .n_inner = 1536, .n_positions = 2048, .vocab_size = 49152,
			     .norm_eps = 1e-5, .rope_theta = 100000};
	enum { NA = 64 };
	trail_error e = {0};
	char *base = trail_path(dir, "base"), sub[512];
	struct stat sb;
	if (stat(base, &sb)) { /* built once; a second run reuses the files */
		trail_model *m;
		if (trail_model_init(&c, 1, &m, &e) || trail_model_save(m, base, &e))
			die("base", &e);
		trail_lora_config lc;
		trail_lora_spec_parse("r=8,alpha=16,targets=q_proj,v_proj", &lc, &e);
		if (trail_model_add_lora(m, &lc, 1, &e))
			die("lora", &e);
		size_t n;
		float *lp = trail_model_params(m, &n);
		for (int a = 0; a < NA; a++) {
			for (size_t i = 0; i < n; i++)
				lp[i] = 0.01f * (float)sin((double)(i + 7919 * (size_t)a));
			snprintf(sub, sizeof sub, "%s/ad%d", dir, a);
			if (trail_model_save_adapter(m, sub, "base", &e))
				die("adapter", &e);
		}
		trail_model_free(m);
	}
	trail_infer *im;
	if (trail_infer_load(base, &im, &e))
		die("load", &e);
	trail_infer_set_threads(im, th);
	trail_lora_w *w[NA];
	for (int a = 0; a < NA; a++) {
		snprintf(sub, sizeof sub, "%s/ad%d", dir, a);
		if (trail_lora_w_load(im, sub, &w[a], &e))
			die("adapter", &e);
	}
	size_t bn = (size_t)1 << 28; /* floats: 1 GiB */
	float *big = malloc(bn * sizeof *big);
	for (size_t i = 0; i < bn; i++)
		big[i] = (float)(i & 7);
	double bw = read_bw(big, bn, th);
	free(big);
	printf("{\"what\":\"read_bandwidth\",\"threads\":%d,\"gb_s\":%.2f,\"isa\":\"%s\"}\n", th, bw / 1e9, trail_compute_isa());
	int V = c.vocab_size, P = 16 + steps + 2;
	float *logits = malloc(sizeof *logits * (size_t)NA * V);
	double *dt = malloc(sizeof *dt * (size_t)steps);
	static const int precs[3] = {TRAIL_PREC_FP32, TRAIL_PREC_BF16, TRAIL_PREC_INT8};
	for (int round = 0; round < rounds; round++)
	for (int pi = 0; pi < 3; pi++) {
		int prec = precs[pi];
		if (trail_infer_set_precision(im, TRAIL_PREC_FP32, &e)) /* afresh, each round */
			die("precision", &e);
		double t0 = now();
		if (trail_infer_set_precision(im, prec, &e))
			die("precision", &e);
		double tconv = now() - t0;
		size_t bytes = trail_infer_step_bytes(im);
		for (int batch = 1; batch <= NA; batch *= NA) {
			trail_kvc *kv[NA];
			const trail_lora_w *lw[NA];
			int32_t tok[NA];
			int pos[NA], rows[NA];
			for (int i = 0; i < batch; i++) {
				kv[i] = trail_kvc_new(im, P);
				lw[i] = batch == 1 ? w[0] : w[i];
				tok[i] = (i * 37 + 11) % V;
				pos[i] = 0;
				rows[i] = i;
			}
			double c0 = 0;
			uint64_t digest = 0; /* the logits of every step: the same bits across builds that claim so */
			for (int st = 0; st < steps + 1; st++) {
				if (st == 1)
					c0 = cpu();
				double t = now();
				if (trail_infer_step(im, batch, tok, pos, kv, lw, batch, rows, logits, &e))
					die("step", &e);
				if (st)
					dt[st - 1] = now() - t;
				digest = XXH64(logits, sizeof *logits * (size_t)batch * V, digest);
				for (int i = 0; i < batch; i++)
					tok[i] = (tok[i] * 31 + 7) % V, pos[i]++;
			}
			double cstep = (cpu() - c0) / steps;
			qsort(dt, (size_t)steps, sizeof *dt, cmp);
			double med = dt[steps / 2], bound = (double)bytes / bw;
			printf("{\"what\":\"decode\",\"round\":%d,\"precision\":\"%s\",\"requests\":%d,\"adapters\":%d,"
			       "\"threads\":%d,\"tokens_per_s\":%.1f,\"step_ms\":%.2f,\"cpu_ms_per_step\":%.2f,"
			       "\"weight_bytes_per_step\":%zu,\"bound_step_ms\":%.2f,\"step_over_bound\":%.2f,\"convert_s\":%.2f,\"logits_xxh64\":\"%016" PRIx64 "\"}\n",
			       round, trail_precision_name(prec), batch, batch, th, batch / med, med * 1e3, cstep * 1e3, bytes,
			       bound * 1e3, med / bound, tconv, digest);
			fflush(stdout);
			for (int i = 0; i < batch; i++)
				trail_kvc_free(kv[i]);
		}
	}
	for (int a = 0; a < NA; a++)
		trail_lora_w_free(w[a]);
	trail_infer_free(im);
	free(logits), free(dt);
	trail_free(base);
	return 0;
}
