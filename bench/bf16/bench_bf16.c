/*
 * Training throughput of one shape, mode and precision on random tokens,
 * the AdamW step included: the GPT-2 of bench/train (6 layers, 6 heads,
 * 384 wide, vocab 257, LoRA r 8 on all four layer kinds) or the
 * SmolLM2-135M shape of bench/llama (LoRA r 8 on q_proj and v_proj).
 * Prints one JSON line: tokens/s of the median step after the first (which
 * allocates), the matrix-product GFLOP/s that gives, and the last loss.
 * With PHASES=1 in the environment, also the seconds of the forward, the
 * backward and the optimiser step (medians), and the CPU seconds of a step
 * (every thread's: on a machine other jobs share, the work done).
 *
 * usage: bench_bf16 gpt2|llama full|lora THREADS STEPS fp32|bf16 [B T]
 */
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
	if (argc < 6) {
		fprintf(stderr, "usage: bench_bf16 gpt2|llama full|lora THREADS STEPS fp32|bf16 [B T]\n");
		return 64;
	}
	int llama = !strcmp(argv[1], "llama"), lora = !strcmp(argv[2], "lora");
	int threads = atoi(argv[3]), steps = atoi(argv[4]), prec;
	int B = argc > 7 ? atoi(argv[6]) : llama ? 4 : 8, T = argc > 7 ? atoi(argv[7]) : 128;
	trail_error e = {0};
	trail_init();
	if (steps < 1 || trail_precision_parse(argv[5], &prec, &e) || trail_compute_set(threads, prec, &e)) {
		fprintf(stderr, "bench_bf16: %s\n", e.msg[0] ? e.msg : "bad arguments");
		return 64;
	}
	trail_model_cfg c = {.n_layer = 6, .n_head = 6, .n_embd = 384, .n_positions = T, .vocab_size = 257};
	if (llama)
		c = (trail_model_cfg){.arch = TRAIL_ARCH_LLAMA, .n_layer = 30, .n_head = 9, .n_kv_head = 3, .head_dim = 64,
				      .n_embd = 576, .n_inner = 1536, .n_positions = 2048, .vocab_size = 49152,
				      .norm_eps = 1e-5, .rope_theta = 100000};
	trail_model *m;
	if (trail_model_init(&c, 1, &m, &e)) {
		fprintf(stderr, "bench_bf16: %s\n", e.msg);
		return 70;
	}
	if (lora) {
		trail_lora_config lc = {.r = 8, .alpha = 16, .targets = 15}; /* GPT-2: all four kinds */
		if ((llama && trail_lora_spec_parse("r=8,alpha=16,targets=q_proj,v_proj", &lc, &e)) ||
		    trail_model_add_lora(m, &lc, 1, &e)) {
			fprintf(stderr, "bench_bf16: %s\n", e.msg);
			return 70;
		}
	}
	size_t n;
	trail_model_params(m, &n);
	trail_adamw o;
	trail_adamw_init(&o, n);
	o.zero_grads = 1; /* as mf-train's loop: the step leaves the gradients zero */
	int32_t *x = malloc(sizeof *x * (size_t)B * T), *y = malloc(sizeof *y * (size_t)B * T);
	uint64_t s = 12345;
	for (int i = 0; i < B * T; i++) {
		s = s * 6364136223846793005ULL + 1442695040888963407ULL;
		x[i] = (int32_t)((s >> 33) % (uint64_t)c.vocab_size);
		y[i] = (int32_t)((s >> 13) % (uint64_t)c.vocab_size);
	}
	double *dt = malloc(sizeof *dt * 5 * (size_t)steps);
	double *df = dt + steps, *db = df + steps, *dopt = db + steps, *dc = dopt + steps;
	float loss = 0;
	for (int i = 0; i <= steps; i++) {
		double t0 = now(), c0 = cpu();
		trail_model_zero_grad(m);
		trail_model_forward(m, x, y, B, T, &loss, &e);
		double t1 = now();
		trail_model_backward(m, &e);
		double t2 = now();
		trail_adamw_step(&o, m, 1e-4, 1.0);
		double t3 = now();
		if (i)
			dt[i - 1] = t3 - t0, df[i - 1] = t1 - t0, db[i - 1] = t2 - t1, dopt[i - 1] = t3 - t2, dc[i - 1] = cpu() - c0;
	}
	double med = median(dt, steps);
	/*
	 * FLOPs of the matrix products: the linear layers 2 N sum(in out) and
	 * the head 2 N C V forward, attention 4 B T^2 D per layer (the full T x
	 * T); backward: dX of each (and attention's two more), dW unless LoRA
	 * freezes it. LoRA's own products are small and not counted.
	 */
	double N = (double)B * T, lin, at;
	if (llama) {
		double C = c.n_embd, D = c.n_head * c.head_dim, Dkv = c.n_kv_head * c.head_dim, F = c.n_inner;
		lin = c.n_layer * (C * D + 2 * C * Dkv + D * C + 3 * C * F);
		at = 4.0 * B * T * T * D * c.n_layer;
	} else {
		double C = c.n_embd;
		lin = c.n_layer * 12.0 * C * C;
		at = 4.0 * B * T * T * C * c.n_layer;
	}
	double fl = 2 * N * lin + 2 * N * c.n_embd * c.vocab_size;
	double flops = (lora ? 2 * fl : 3 * fl) + 3 * at;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"impl\":\"trail-%s\",\"shape\":\"%s\",\"mode\":\"%s\",\"B\":%d,\"T\":%d,\"threads\":%d,\"params\":%zu,"
	       "\"trainable\":%zu,\"tokens_per_s\":%.1f,\"step_s\":%.4f,\"gflops\":%.1f,\"isa\":\"%s\",\"loss\":%.4f,"
	       "\"peak_rss_mb\":%.0f",
	       argv[5], argv[1], lora ? "lora" : "full", B, T, threads, trail_model_num_params(&c), n, N / med, med,
	       flops / med / 1e9, trail_compute_isa(), loss, (double)ru.ru_maxrss / 1024);
	if (getenv("PHASES") && !strcmp(getenv("PHASES"), "1"))
		printf(",\"forward_s\":%.4f,\"backward_s\":%.4f,\"adamw_s\":%.4f,\"cpu_s\":%.4f", median(df, steps),
		       median(db, steps), median(dopt, steps), median(dc, steps));
	printf("}\n");
	trail_adamw_release(&o);
	trail_model_free(m);
	free(x), free(y), free(dt);
	return 0;
}
