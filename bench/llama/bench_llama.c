/*
 * The SmolLM2-135M shape (LlamaForCausalLM: 30 layers, 576 wide, 9 heads
 * over 3 key/value heads, MLP 1536, vocab 49,152, tied) with random
 * weights: LoRA training tokens/s (r 8 on q_proj and v_proj, AdamW step
 * included) and decoding tokens/s for one request and for 64 requests over
 * 64 adapters in one batch, each the median step after a warmup. Prints
 * one JSON line per figure with the peak RSS so far.
 *
 * usage: bench_llama THREADS TRAIN_STEPS DECODE_STEPS [B T]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/core.h"
#include "model/model.h"
#include "../bench.h"

int main(int argc, char **argv)
{
	if (argc < 4)
		return 64;
	int threads = atoi(argv[1]), steps = atoi(argv[2]), dsteps = atoi(argv[3]);
	int B = argc > 5 ? atoi(argv[4]) : 4, T = argc > 5 ? atoi(argv[5]) : 128;
	trail_init();
	trail_blas_threads(threads);
	trail_model_cfg c = {.arch = TRAIL_ARCH_LLAMA, .n_layer = 30, .n_head = 9, .n_kv_head = 3, .head_dim = 64,
			     .n_embd = 576, .n_inner = 1536, .n_positions = 2048, .vocab_size = 49152,
			     .norm_eps = 1e-5, .rope_theta = 100000};
	trail_model *m;
	trail_error e = {0};
	if (trail_model_init(&c, 1, &m, &e))
		return 70;
	char dir[] = "/tmp/trail-bench-llama-XXXXXX";
	if (!mkdtemp(dir))
		return 73;
	char *base = trail_path(dir, "base");
	if (trail_model_save(m, base, &e))
		return 74;
	trail_lora_config lc;
	trail_lora_spec_parse("r=8,alpha=16,targets=q_proj,v_proj", &lc, &e);
	if (trail_model_add_lora(m, &lc, 1, &e))
		return 70;
	size_t n;
	float *lp = trail_model_params(m, &n);
	trail_adamw o;
	trail_adamw_init(&o, n);
	int32_t *x = malloc(sizeof *x * B * T), *y = malloc(sizeof *y * B * T);
	uint64_t s = 12345;
	for (int i = 0; i < B * T; i++) {
		s = s * 6364136223846793005ULL + 1442695040888963407ULL;
		x[i] = (int32_t)((s >> 33) % 49152);
		y[i] = (int32_t)((s >> 13) % 49152);
	}
	double *dt = malloc(sizeof *dt * (size_t)(steps + dsteps + 2));
	float loss = 0;
	for (int i = 0; i <= steps; i++) {
		double t = now();
		trail_model_zero_grad(m);
		trail_model_forward(m, x, y, B, T, &loss, &e);
		trail_model_backward(m, &e);
		trail_adamw_step(&o, m, 1e-4, 1.0);
		if (i) /* the first step allocates the activations */
			dt[i - 1] = now() - t;
	}
	double med = median(dt, steps);
	printf("{\"impl\":\"trail\",\"what\":\"lora-train\",\"B\":%d,\"T\":%d,\"threads\":%d,\"params\":%zu,\"trainable\":%zu,"
	       "\"tokens_per_s\":%.1f,\"step_s\":%.3f,\"loss\":%.4f,\"peak_rss_mb\":%.0f}\n",
	       B, T, threads, trail_model_num_params(&c), n, B * T / med, med, loss, rss_mb());
	fflush(stdout);
	/* 64 adapters: this one's shape, each with its own random weights */
	enum { NA = 64 };
	for (int a = 0; a < NA; a++) {
		for (size_t i = 0; i < n; i++)
			lp[i] = 0.01f * (float)sin((double)(i + 7919 * (size_t)a));
		char sub[64];
		snprintf(sub, sizeof sub, "ad%d", a);
		char *ad = trail_path(dir, sub);
		trail_model_save_adapter(m, ad, "base", &e);
		trail_free(ad);
	}
	trail_adamw_release(&o);
	trail_model_free(m);
	trail_infer *im;
	if (trail_infer_load(base, &im, &e)) {
		fprintf(stderr, "bench_llama: %s\n", e.msg);
		return 70;
	}
	trail_infer_set_threads(im, threads);
	trail_lora_w *w[NA];
	for (int a = 0; a < NA; a++) {
		char sub[96];
		snprintf(sub, sizeof sub, "%s/ad%d", dir, a);
		if (trail_lora_w_load(im, sub, &w[a], &e))
			return 70;
	}
	int V = c.vocab_size, P = 16 + dsteps + 2;
	float *logits = malloc(sizeof *logits * (size_t)NA * V);
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
		for (int st = 0; st < dsteps + 1; st++) {
			double t = now();
			if (trail_infer_step(im, batch, tok, pos, kv, lw, batch, rows, logits, &e))
				return 70;
			if (st)
				dt[st - 1] = now() - t;
			for (int i = 0; i < batch; i++) {
				tok[i] = (tok[i] * 31 + 7) % V;
				pos[i]++;
			}
		}
		med = median(dt, dsteps);
		printf("{\"impl\":\"trail\",\"what\":\"decode\",\"requests\":%d,\"adapters\":%d,\"threads\":%d,"
		       "\"tokens_per_s\":%.1f,\"step_ms\":%.2f,\"weights_mb\":%.0f,\"peak_rss_mb\":%.0f}\n",
		       batch, batch, threads, batch / med, med * 1e3, (double)trail_infer_bytes(im) / (1 << 20), rss_mb());
		fflush(stdout);
		for (int i = 0; i < batch; i++)
			trail_kvc_free(kv[i]);
	}
	for (int a = 0; a < NA; a++)
		trail_lora_w_free(w[a]);
	trail_infer_free(im);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd))
		return 74;
	free(x), free(y), free(dt), free(logits);
	trail_free(base);
	return 0;
}
