/*
 * Batched inference: the KV-cache step gives the training forward's logits;
 * an adapter gives its merged model's logits; rows of many adapters in one
 * step give each row exactly its solo result.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"
#include "core/core.h"

enum { T = 12, NA = 6 };

static float maxdiff(const float *a, const float *b, size_t n)
{
	float m = 0;
	for (size_t i = 0; i < n; i++)
		m = fmaxf(m, fabsf(a[i] - b[i]));
	return m;
}

/* One architecture through every check; LoRA targets for odd and even adapters. */
static void run(const char *what, trail_model_cfg c, int t_odd, int t_even)
{
	diag("%s", what);
	trail_model *m;
	trail_error e = {0};
	trail_model_init(&c, 3, &m, &e);
	int V = c.vocab_size;
	int32_t tok[T];
	int pos[T];
	for (int t = 0; t < T; t++)
		tok[t] = (t * 37 + 11) % V, pos[t] = t;
	trail_model_forward(m, tok, NULL, 1, T, NULL, &e);
	float *ref = malloc(sizeof(float) * T * V), *got = malloc(sizeof(float) * T * V);
	memcpy(ref, trail_model_logits(m), sizeof(float) * T * V);
	char dir[] = "/tmp/trail-infer-XXXXXX";
	mkdtemp(dir);
	char *bdir = trail_path(dir, "base");
	trail_infer *im;
	ok(trail_model_save(m, bdir, &e) == 0 && trail_infer_load(bdir, &im, &e) == 0, "load the base for inference: %s", e.msg);
	/* prefill all at once */
	trail_kvc *kv = trail_kvc_new(im, c.n_positions), *kvs[T];
	int rows[T];
	for (int t = 0; t < T; t++)
		rows[t] = t;
	const trail_lora_w *none[T] = {0};
	for (int t = 0; t < T; t++)
		kvs[t] = kv;
	ok(trail_infer_step(im, T, tok, pos, kvs, none, T, rows, got, &e) == 0, "prefill step");
	ok(maxdiff(ref, got, (size_t)T * V) < 1e-4, "prefill logits = forward logits (%.2e)", maxdiff(ref, got, (size_t)T * V));
	/* one token at a time through the cache */
	float md = 0;
	for (int t = 0; t < T; t++) {
		trail_infer_step(im, 1, tok + t, pos + t, &kv, none, 1, rows, got, &e);
		md = fmaxf(md, maxdiff(ref + (size_t)t * V, got, (size_t)V));
	}
	ok(md < 1e-4, "token-by-token decoding with the cache = forward (%.2e)", md);

	/* adapters: write NA random adapters to disk, load them for inference */
	trail_lora_w *w[NA];
	int bad = 0;
	float *solo = malloc(sizeof(float) * NA * V);
	for (int a = 0; a < NA; a++) {
		trail_model *t;
		trail_model_init(&c, 3, &t, &e);
		trail_lora_config lc = {.r = 2 + a % 3, .alpha = 4, .targets = a % 2 ? t_odd : t_even};
		trail_model_add_lora(t, &lc, (uint64_t)a, &e);
		size_t n;
		float *lp = trail_model_params(t, &n);
		for (size_t i = 0; i < n; i++)
			lp[i] += 0.05f * (float)sin((double)(i + a * 1000));
		char sub[64];
		snprintf(sub, sizeof sub, "%s/a%d", dir, a);
		trail_model_save_adapter(t, sub, "base", &e);
		if (trail_lora_w_load(im, sub, &w[a], &e))
			bad++;
		/* solo: the merged model's logits at the last prompt position */
		trail_model_merge_lora(t, &e);
		trail_model_forward(t, tok, NULL, 1, T, NULL, &e);
		memcpy(solo + (size_t)a * V, trail_model_logits(t) + (size_t)(T - 1) * V, sizeof(float) * V);
		trail_model_free(t);
	}
	ok(bad == 0, "%d adapters load for inference", NA);
	/* one step: NA sequences, each prefilled with its own adapter, all rows together */
	int n = NA * T;
	int32_t *bt = malloc(sizeof *bt * n);
	int *bp = malloc(sizeof *bp * n);
	trail_kvc **bk = malloc(sizeof *bk * n), *caches[NA];
	const trail_lora_w **bl = malloc(sizeof *bl * n);
	float *out = malloc(sizeof(float) * n * V);
	int *brow = malloc(sizeof *brow * n);
	for (int i = 0; i < n; i++)
		brow[i] = i;
	for (int a = 0; a < NA; a++)
		caches[a] = trail_kvc_new(im, c.n_positions);
	for (int i = 0; i < n; i++) { /* interleaved so adapters' rows are not contiguous */
		int a = i % NA, t = i / NA;
		bt[i] = tok[t], bp[i] = t, bk[i] = caches[a], bl[i] = w[a];
	}
	ok(trail_infer_step(im, n, bt, bp, bk, bl, n, brow, out, &e) == 0, "one step over %d rows of %d adapters", n, NA);
	md = 0;
	for (int a = 0; a < NA; a++)
		md = fmaxf(md, maxdiff(out + (size_t)((T - 1) * NA + a) * V, solo + (size_t)a * V, (size_t)V));
	ok(md < 1e-4, "each row of the mixed batch = its adapter merged into the base (%.2e)", md);
	/* the same rows alone, one sequence per step: the very same bits */
	int exact = 1;
	for (int a = 0; a < NA; a++) {
		trail_kvc *k1 = trail_kvc_new(im, T);
		const trail_lora_w *l1[T];
		trail_kvc *kk[T];
		for (int t = 0; t < T; t++)
			l1[t] = w[a], kk[t] = k1;
		int last = T - 1;
		trail_infer_step(im, T, tok, pos, kk, l1, 1, &last, got, &e);
		exact &= !memcmp(got, out + (size_t)((T - 1) * NA + a) * V, sizeof(float) * V);
		trail_kvc_free(k1);
	}
	ok(exact, "a sequence alone gives bit-identical logits to its rows in the mixed batch");
	/* a helper thread for the row-wise work: the same bits */
	trail_infer_set_threads(im, 2);
	float *two = malloc(sizeof(float) * n * V);
	trail_kvc *tc[NA];
	for (int a = 0; a < NA; a++)
		tc[a] = trail_kvc_new(im, c.n_positions);
	for (int i = 0; i < n; i++)
		bk[i] = tc[i % NA];
	ok(trail_infer_step(im, n, bt, bp, bk, bl, n, brow, two, &e) == 0 && !memcmp(two, out, sizeof(float) * n * V),
	   "two threads: bit-identical logits for all %d rows", n);
	for (int a = 0; a < NA; a++)
		trail_kvc_free(tc[a]);
	free(two);
	/* the naive double-precision path agrees with the fast path */
	trail_infer_set_reference(im, 1);
	float *naive = malloc(sizeof(float) * n * V);
	trail_kvc *nc[NA];
	for (int a = 0; a < NA; a++)
		nc[a] = trail_kvc_new(im, c.n_positions);
	for (int i = 0; i < n; i++)
		bk[i] = nc[i % NA];
	ok(trail_infer_step(im, n, bt, bp, bk, bl, n, brow, naive, &e) == 0, "reference step");
	double nd = maxdiff(naive, out, (size_t)n * V);
	ok(nd < 1e-4, "the reference path (plain loops in double) = the BLAS path (%.2e)", nd);
	trail_infer_set_reference(im, 0);
	for (int a = 0; a < NA; a++)
		trail_kvc_free(nc[a]);
	free(naive);
	/* fp32, bf16 and int8: the same bits on 1, 2 and 4 threads */
	float *pr[3];
	for (int p = 0; p < 3; p++) {
		int prec = p == 2 ? TRAIL_PREC_INT8 : p ? TRAIL_PREC_BF16 : TRAIL_PREC_FP32, same = 1;
		ok(trail_infer_set_precision(im, prec, &e) == 0 && trail_infer_precision(im) == prec, "%s: set %s",
		   trail_precision_name(prec), e.msg);
		pr[p] = malloc(sizeof(float) * n * V);
		for (int th = 1; th <= 4; th *= 2) {
			trail_infer_set_threads(im, th);
			float *o = th == 1 ? pr[p] : malloc(sizeof(float) * n * V);
			trail_kvc *pc[NA];
			for (int a = 0; a < NA; a++)
				pc[a] = trail_kvc_new(im, c.n_positions);
			for (int i = 0; i < n; i++)
				bk[i] = pc[i % NA];
			same &= trail_infer_step(im, n, bt, bp, bk, bl, n, brow, o, &e) == 0;
			if (th > 1)
				same &= !memcmp(o, pr[p], sizeof(float) * n * V), free(o);
			for (int a = 0; a < NA; a++)
				trail_kvc_free(pc[a]);
		}
		ok(same, "%s: bit-identical logits on 1, 2 and 4 threads (%d rows of %d adapters)", trail_precision_name(prec),
		   n, NA);
	}
	ok(!memcmp(pr[0], out, sizeof(float) * n * V), "fp32 on the pool: the bits of the first step");
	float big = 0;
	for (size_t i = 0; i < (size_t)n * V; i++)
		big = fmaxf(big, fabsf(pr[0][i]));
	float bd = maxdiff(pr[1], pr[0], (size_t)n * V);
	ok(bd < 0.02f * big && memcmp(pr[1], pr[0], sizeof(float) * n * V),
	   "bf16 logits differ from fp32's, by at most 2%% of the largest (%.2e of %.2e)", bd, big);
	float qd = maxdiff(pr[2], pr[0], (size_t)n * V);
	ok(qd < 0.05f * big && memcmp(pr[2], pr[0], sizeof(float) * n * V),
	   "int8 logits differ from fp32's, by at most 5%% of the largest (%.2e of %.2e)", qd, big);
	/* int8, 4 threads: each sequence alone, prefilled and then decoded one row at a time, = its rows in the batch */
	exact = 1;
	for (int a = 0; a < NA; a++) {
		trail_kvc *k1 = trail_kvc_new(im, T);
		const trail_lora_w *l1[T];
		trail_kvc *kk[T];
		for (int t = 0; t < T; t++)
			l1[t] = w[a], kk[t] = k1;
		int last = T - 1, zero = 0;
		trail_infer_step(im, T - 1, tok, pos, kk, l1, 0, NULL, NULL, &e);
		exact &= trail_infer_step(im, 1, tok + last, pos + last, kk, l1, 1, &zero, got, &e) == 0;
		exact &= !memcmp(got, pr[2] + (size_t)((T - 1) * NA + a) * V, sizeof(float) * V);
		trail_infer_step(im, T, tok, pos, kk, l1, 1, &last, got, &e);
		exact &= !memcmp(got, pr[2] + (size_t)((T - 1) * NA + a) * V, sizeof(float) * V);
		trail_kvc_free(k1);
	}
	ok(exact, "int8: a sequence alone (prefilled, and one row decoded) gives bit-identical logits to the mixed batch");
	ok(trail_infer_set_precision(im, TRAIL_PREC_BF16, &e) == 0 && trail_infer_precision(im) == TRAIL_PREC_BF16,
	   "from int8 back to bf16 %s", e.msg);
	/* bf16, 4 threads: each sequence alone, prefilled and then decoded one row at a time, = its rows in the batch */
	exact = 1;
	for (int a = 0; a < NA; a++) {
		trail_kvc *k1 = trail_kvc_new(im, T);
		const trail_lora_w *l1[T];
		trail_kvc *kk[T];
		for (int t = 0; t < T; t++)
			l1[t] = w[a], kk[t] = k1;
		int last = T - 1, zero = 0;
		trail_infer_step(im, T - 1, tok, pos, kk, l1, 0, NULL, NULL, &e);
		exact &= trail_infer_step(im, 1, tok + last, pos + last, kk, l1, 1, &zero, got, &e) == 0;
		exact &= !memcmp(got, pr[1] + (size_t)((T - 1) * NA + a) * V, sizeof(float) * V);
		trail_infer_step(im, T, tok, pos, kk, l1, 1, &last, got, &e);
		exact &= !memcmp(got, pr[1] + (size_t)((T - 1) * NA + a) * V, sizeof(float) * V);
		trail_kvc_free(k1);
	}
	ok(exact, "bf16: a sequence alone (prefilled, and one row decoded) gives bit-identical logits to the mixed batch");
	size_t sb = trail_infer_step_bytes(im), hb = trail_infer_bytes(im);
	ok(trail_infer_set_precision(im, TRAIL_PREC_FP32, &e) == 0 && 2 * sb >= trail_infer_step_bytes(im) &&
	   trail_infer_bytes(im) + 64 + sb == hb, "bf16: a step reads the bf16 copy, at least half the fp32 bytes; back to fp32 it is freed");
	trail_infer_set_threads(im, 1);
	free(pr[0]), free(pr[1]), free(pr[2]);
	size_t kvw = c.arch == TRAIL_ARCH_GPT2 ? (size_t)c.n_embd : (size_t)c.n_kv_head * c.head_dim;
	ok(trail_kvc_new(im, c.n_positions + 1) == NULL && trail_kvc_bytes(im, 8) == (size_t)c.n_layer * 2 * 8 * kvw * 4,
	   "KV caches sized by capacity and key/value width, at most the context");
	for (int a = 0; a < NA; a++) {
		trail_kvc_free(caches[a]);
		trail_lora_w_free(w[a]);
	}
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	free(bt), free(bp), free(bk), free(bl), free(out), free(solo), free(ref), free(got), free(brow);
	trail_kvc_free(kv);
	trail_infer_free(im);
	trail_free(bdir);
	trail_model_free(m);
}

/*
 * The int8 product's sums are exact integers on every instruction set:
 * inputs at the top of their range (127) against weights of either sign
 * at +-127 make every pair of products 2 x 127 x 127 = 32258 (no 16-bit
 * saturation), and random ones; both against a plain integer loop.
 */
static void i8_exact(void)
{
	enum { M = 16, N = 200, K = 1000 };
	trail_error e = {0};
	trail_i8_mm *h[2] = {trail_i8_mm_new(M, 128, K, &e), trail_i8_mm_new(M, N - 128, K, &e)};
	ok(h[0] && h[1], "int8 products made on %s: %s", trail_compute_isa(), e.msg);
	if (!h[0] || !h[1])
		return;
	uint8_t *x = malloc((size_t)M * K);
	int8_t *W = malloc((size_t)N * K);
	int32_t *y = malloc(sizeof *y * M * 128);
	void *pk[2] = {malloc(trail_i8_mm_packed_bytes(h[0])), malloc(trail_i8_mm_packed_bytes(h[1]))};
	int bad = 0, worst = 0;
	for (int round = 0; round < 2; round++) {
		uint32_t r = 12345;
		for (int i = 0; i < M * K; i++) {
			r = r * 1103515245u + 12345u;
			x[i] = round ? (uint8_t)((r >> 16) % 128) : (i % K) % 7 == 3 ? 0 : 127;
		}
		for (int i = 0; i < N * K; i++) {
			r = r * 1103515245u + 12345u;
			W[i] = round ? (int8_t)((int)((r >> 16) % 255) - 127) : (i / K + i % K) % 3 ? 127 : -127;
		}
		for (int b = 0; b < 2; b++) {
			int c0 = b * 128, w = b ? N - 128 : 128;
			bad |= trail_i8_mm_pack(h[b], W + (size_t)c0 * K, pk[b]) != 0;
			bad |= trail_i8_mm_run(h[b], x, pk[b], y, 0) != 0;
			for (int i = 0; i < M; i++)
				for (int j = 0; j < w; j++) {
					int32_t s = 0;
					for (int k = 0; k < K; k++)
						s += (int32_t)x[(size_t)i * K + k] * W[(size_t)(c0 + j) * K + k];
					bad |= s != y[(size_t)i * w + j];
					worst = abs(s) > worst ? abs(s) : worst;
				}
		}
	}
	size_t pb = trail_i8_mm_packed_bytes(h[0]);
	ok(pb >= (size_t)128 * K && pb <= (size_t)128 * K * 11 / 10, "a packed int8 block: a byte a weight (%zu for %d)", pb,
	   128 * K);
	ok(!bad && worst > 127 * 127 * (K / 4), "int8 sums on %s = exact integer sums (largest %d), no saturation (%d)",
	   trail_compute_isa(), worst, bad);
	free(x), free(W), free(y), free(pk[0]), free(pk[1]);
	trail_i8_mm_free(h[0]), trail_i8_mm_free(h[1]);
}

int main(void)
{
	trail_init();
	i8_exact();
	run("GPT-2", (trail_model_cfg){.n_layer = 2, .n_head = 2, .n_embd = 16, .n_positions = 16, .vocab_size = 257}, 15,
	    5);
	/* grouped-query attention, untied head, llama3 rope scaling that bites within the context */
	run("Llama", (trail_model_cfg){.arch = TRAIL_ARCH_LLAMA, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .head_dim = 4,
				       .n_embd = 16, .n_inner = 24, .n_positions = 16, .vocab_size = 257, .untied = 1,
				       .norm_eps = 1e-5, .rope_theta = 10000, .rope_type = TRAIL_ROPE_LLAMA3,
				       .rope_factor = 4, .rope_low = 1, .rope_high = 4, .rope_orig = 8},
	    0, TRAIL_LORA_Q_PROJ | TRAIL_LORA_V_PROJ | TRAIL_LORA_DOWN_PROJ);
	/* one key/value head, q/k/v biases, tied embeddings */
	run("Qwen2", (trail_model_cfg){.arch = TRAIL_ARCH_QWEN2, .n_layer = 2, .n_head = 3, .n_kv_head = 1, .head_dim = 6,
				       .n_embd = 12, .n_inner = 20, .n_positions = 16, .vocab_size = 257, .qkv_bias = 1,
				       .norm_eps = 1e-6, .rope_theta = 1e6, .rope_type = TRAIL_ROPE_LINEAR, .rope_factor = 2},
	    TRAIL_LORA_K_PROJ | TRAIL_LORA_O_PROJ | TRAIL_LORA_UP_PROJ, 0);
	return tap_done();
}
