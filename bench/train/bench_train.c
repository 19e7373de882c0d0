/*
 * Training throughput of one configuration: full training or LoRA, random
 * tokens, the optimiser step included. Prints one JSON line: tokens/s
 * (median step after warmup), achieved GFLOP/s, the sgemm peak measured
 * here (2048^3, same threads) and peak RSS.
 *
 * usage: bench_train L H C T B THREADS STEPS full|lora [R [fp32|bf16]]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <cblas.h>

#include "model/model.h"
#include "../bench.h"

static double sgemm_peak(void)
{
	int n = 2048;
	float *a = calloc((size_t)n * n, 4), *b = calloc((size_t)n * n, 4), *c = calloc((size_t)n * n, 4);
	for (size_t i = 0; i < (size_t)n * n; i++)
		a[i] = (float)(i % 7), b[i] = (float)(i % 5);
	double best = 0;
	for (int r = 0; r < 4; r++) {
		double t = now();
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
		t = now() - t;
		if (r && 2.0 * n * n * n / t > best)
			best = 2.0 * n * n * n / t;
	}
	free(a), free(b), free(c);
	return best / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 9)
		return 64;
	int L = atoi(argv[1]), H = atoi(argv[2]), C = atoi(argv[3]), T = atoi(argv[4]), B = atoi(argv[5]);
	int threads = atoi(argv[6]), steps = atoi(argv[7]), lora = !strcmp(argv[8], "lora"), r = argc > 9 ? atoi(argv[9]) : 8;
	int prec = TRAIL_PREC_FP32;
	trail_init();
	if (argc > 10 && trail_precision_parse(argv[10], &prec, NULL))
		return 64;
	if (trail_compute_set(threads, prec, NULL))
		return 70;
	double peak = sgemm_peak();
	trail_model_cfg c = {.n_layer = L, .n_head = H, .n_embd = C, .n_positions = T, .vocab_size = 257};
	trail_model *m;
	trail_error e = {0};
	if (trail_model_init(&c, 1, &m, &e))
		return 70;
	if (lora) {
		trail_lora_config lc = {.r = r, .alpha = 2.0 * r, .targets = 15};
		trail_model_add_lora(m, &lc, 1, &e);
	}
	size_t n;
	trail_model_params(m, &n);
	trail_adamw o;
	trail_adamw_init(&o, n);
	int32_t *x = malloc(sizeof *x * B * T), *y = malloc(sizeof *y * B * T);
	uint64_t s = 12345;
	for (int i = 0; i < B * T; i++) {
		s = s * 6364136223846793005ULL + 1442695040888963407ULL;
		x[i] = (int32_t)((s >> 33) % 257);
		y[i] = (int32_t)((s >> 13) % 257);
	}
	double *dt = malloc(sizeof *dt * steps);
	float loss = 0;
	for (int i = 0; i < steps; i++) {
		double t = now();
		trail_model_zero_grad(m);
		trail_model_forward(m, x, y, B, T, &loss, &e);
		trail_model_backward(m, &e);
		trail_adamw_step(&o, m, 1e-4, 1.0);
		dt[i] = now() - t;
	}
	qsort(dt + 1, (size_t)steps - 1, sizeof *dt, cmp);
	double med = dt[1 + (steps - 1) / 2];
	/* FLOPs: linear layers 2 N 12 C^2 L forward, the head 2 N C V, attention 4 B T^2 C L (full T x T);
	 * backward: dX of each, and dW unless LoRA freezes it; LoRA's own products are small and not counted */
	double N = (double)B * T, fl = 2 * N * 12.0 * C * C * L + 2 * N * C * 257, at = 4.0 * B * T * T * C * L;
	double flops = lora ? 2 * fl + 3 * at : 3 * fl + 3 * at;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"impl\":\"trail\",\"precision\":\"%s\",\"mode\":\"%s\",\"params\":%zu,\"trainable\":%zu,\"tokens_per_s\":%.1f,\"gflops\":%.1f,"
	       "\"sgemm_peak_gflops\":%.1f,\"peak_rss_mb\":%.1f,\"loss\":%.4f}\n",
	       trail_precision_name(prec), lora ? "lora" : "full", trail_gpt2_num_params(&c), n, N / med, flops / med / 1e9, peak,
	       (double)ru.ru_maxrss / 1024, loss);
	trail_adamw_release(&o);
	trail_model_free(m);
	free(x), free(y), free(dt);
	return 0;
}
