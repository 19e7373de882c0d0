/*
 * Attribution speed: an index of N records x 4,096 projected dimensions
 * (fp16), one query and a batch of 64 queries including their gradients on
 * a GPT-2 of a few million parameters with LoRA, next to the memory read
 * and copy bandwidth of this machine (the bound for a pass over the index),
 * and the cost of building index rows against training steps, measured in
 * one run. The 64 gradients are computed each alone, as attr-score does for
 * an event (one BLAS thread, the same bits), split over THREADS copies of
 * the model; then one scoring pass. The same 64 as one batch through the
 * model, with THREADS BLAS threads, is the second figure.
 * One query is also scored without preconditioning (graddot: the
 * difference is the influence solve), with ekfac (its own preconditioning,
 * the same pass) and with the portable kernel; finish_s is the curvature
 * of both (blocks and EK-FAC) and the record table.
 *
 * usage: speed INDEX-PATH [N] [THREADS]   (prints one JSON line)
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attr/attr.h"
#include "model/model.h"
#include "core/core.h"
#include "job/job.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rs = 88172645463325252ULL;
static float frand(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return (float)((double)(rs >> 11) / 9007199254740992.0 - 0.5);
}

/* read bandwidth: threads summing their share of a buffer */
typedef struct span {
	const uint64_t *p;
	size_t n;
	uint64_t sum;
} span;

static void *sum_span(void *a)
{
	span *s = a;
	uint64_t t = 0;
	for (size_t i = 0; i < s->n; i++)
		t += s->p[i];
	s->sum = t;
	return NULL;
}

static double read_pass(const void *buf, size_t bytes, int threads)
{
	span sp[64];
	pthread_t th[64];
	size_t words = bytes / 8;
	if (threads > 64)
		threads = 64;
	double a = now();
	for (int t = 0; t < threads; t++) {
		sp[t] = (span){(const uint64_t *)buf + words * t / threads, words * (t + 1) / threads - words * t / threads, 0};
		if (t)
			pthread_create(&th[t], NULL, sum_span, &sp[t]);
	}
	sum_span(&sp[0]);
	uint64_t all = sp[0].sum;
	for (int t = 1; t < threads; t++) {
		pthread_join(th[t], NULL);
		all += sp[t].sum;
	}
	double e = now() - a;
	return all == 42 ? e + 1e-9 : e; /* keep the sum */
}

/* gradients of queries [lo, hi), each alone */
typedef struct gjob {
	trail_attr_proj *pr;
	trail_model *m;
	const int32_t *qt;
	float *q;
	int lo, hi, L, rc;
} gjob;

static void *grads(void *p)
{
	gjob *j = p;
	trail_error err = {0};
	for (int k = j->lo; k < j->hi && !j->rc; k++)
		j->rc = trail_attr_grad(j->pr, j->m, j->qt + (size_t)k * j->L, (size_t)j->L, 32, j->q + (size_t)k * 4096, &err);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: speed INDEX-PATH [N] [THREADS]\n");
		return 64;
	}
	trail_init();
	size_t N = argc > 2 ? (size_t)atol(argv[2]) : 100000;
	int threads = argc > 3 ? atoi(argv[3]) : 2;
	trail_blas_threads(threads);
	trail_error err = {0};
	/* 4 layers x 256 channels: 3.2M parameters; LoRA r=8 on all 16 linear layers; 16 x 16 per layer = 4,096 */
	trail_model_cfg c = {.n_layer = 4, .n_head = 4, .n_embd = 256, .n_positions = 128, .vocab_size = 257};
	trail_lora_config lc = {.r = 8, .alpha = 16, .targets = 15};
	trail_model *m = NULL;
	if (trail_model_init(&c, 1, &m, &err) || trail_model_add_lora(m, &lc, 1, &err)) {
		fprintf(stderr, "speed: %s\n", err.msg);
		return 70;
	}
	size_t np;
	float *pp = trail_model_params(m, &np);
	for (size_t i = 0; i < np; i++)
		pp[i] = 0.02f * frand();
	/* the records: synthetic text of 96 bytes each */
	json_t *recs = json_array();
	for (size_t i = 0; i < N; i++) {
		char t[128];
		snprintf(t, sizeof t, "record %zu: the keeper of light %zu counts %zu gulls over the harbour wall at dusk.", i,
			 i * 7919 % 100003, i % 97);
		json_array_append_new(recs, json_pack("{s:s, s:s}", "text", t, "contributor", i % 2 ? "a" : "b"));
	}
	trail_tokenizer *tk;
	trail_tokenizer_bytes(&tk);
	trail_dataset *d = NULL;
	trail_dataset_from_records(recs, tk, &d, &err);
	json_decref(recs);
	trail_attr_ident id = {.model = "sha256:bench"};
	memcpy(id.root, d->root, 44);
	trail_attr_params p = {.seed = 1, .k_in = 16, .k_out = 16, .damping = 0.1, .seq = 96};
	trail_attr_builder *b = NULL;
	if (trail_attr_builder_new(argv[1], m, &id, &p, N, 1, &b, &err)) {
		fprintf(stderr, "speed: %s\n", err.msg);
		return 70;
	}
	/* index rows for a sample of records through the model, timed against training steps on the same batches */
	int B = 8, T = 96, steps = 20;
	int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
	long cnt[8];
	size_t ids[8];
	trail_adamw opt;
	trail_adamw_init(&opt, np);
	double t_train = 0, t_index = 0, t_capture = 0;
	float loss;
	for (int s = 0; s < steps; s++) {
		for (int k = 0; k < B; k++) {
			size_t r = (size_t)(s * B + k);
			for (int t = 0; t < T; t++) {
				x[k * T + t] = (size_t)t < d->len[r] ? d->tok[r][t] : 0;
				y[k * T + t] = (size_t)t + 1 < d->len[r] ? d->tok[r][t + 1] : -1;
			}
			cnt[k] = 0;
			for (int t = 0; t < T; t++)
				cnt[k] += y[k * T + t] >= 0;
			ids[k] = r;
		}
		/* (a) a plain training step */
		double t0 = now();
		trail_model_keep_linear_io(m, 0);
		trail_model_zero_grad(m);
		trail_model_forward(m, x, y, B, T, &loss, &err);
		trail_model_backward(m, &err);
		trail_adamw_step(&opt, m, 1e-4, 1.0);
		/* (b) a training step that keeps X, dY and adds the batch's rows after its backward */
		double t1 = now();
		trail_model_keep_linear_io(m, 1);
		trail_model_zero_grad(m);
		trail_model_forward(m, x, y, B, T, &loss, &err);
		trail_model_backward(m, &err);
		trail_attr_builder_add_batch(b, 0, m, ids, cnt, B, T, &err);
		trail_adamw_step(&opt, m, 1e-4, 1.0);
		/* (c) a pass at fixed weights: forward, backward, rows (what the final-weights pass costs per batch) */
		double t2 = now();
		trail_model_zero_grad(m);
		trail_model_forward(m, x, y, B, T, &loss, &err);
		trail_model_backward(m, &err);
		trail_attr_builder_add_batch(b, 0, m, ids, cnt, B, T, &err);
		double t3 = now();
		if (s) { /* the first step allocates */
			t_train += t1 - t0;
			t_capture += t2 - t1;
			t_index += t3 - t2;
		}
	}
	/* the remaining rows: synthetic gradients of the same shape (the bench is about scoring them) */
	float *g = malloc(sizeof(float) * 4096);
	for (size_t r = (size_t)steps * B; r < N; r++) {
		float a = frand(), c2 = frand();
		for (int e = 0; e < 4096; e++)
			g[e] = a * sinf((float)e * 0.01f * (float)(r % 13)) + c2 * frand();
		trail_attr_builder_add(b, 0, r, g, &err);
	}
	trail_attr_builder_set(b, 0, m, 1.0, &err);
	double tb0 = now();
	if (trail_attr_builder_finish(b, d, &err)) {
		fprintf(stderr, "speed: %s\n", err.msg);
		return 70;
	}
	double t_finish = now() - tb0;
	trail_attr_index *ix = NULL;
	double to0 = now();
	if (trail_attr_index_open(argv[1], &ix, &err)) {
		fprintf(stderr, "speed: %s\n", err.msg);
		return 70;
	}
	double t_open = now() - to0;
	trail_attr_proj *pr = NULL;
	trail_attr_index_proj(ix, m, &pr, &err);
	/* queries: 32 prompt + 32 answer tokens */
	int nq = 64, L = 64;
	int32_t *qt = malloc(sizeof(int32_t) * nq * L);
	for (int i = 0; i < nq * L; i++)
		qt[i] = 32 + (int)((frand() + 0.5f) * 90);
	float *q = malloc(sizeof(float) * nq * 4096), *sc = malloc(sizeof(float) * nq * N);
	/* warm the index into the page cache and the code paths */
	trail_attr_grad(pr, m, qt, (size_t)L, 32, q, &err);
	trail_attr_score(ix, TRAIL_ATTR_INFLUENCE, q, 1, sc, &err);
	double best1 = 1e9, best1s = 1e9, best64 = 1e9, best64s = 1e9, bestg = 1e9, bestdot = 1e9, bestek = 1e9;
	for (int rep = 0; rep < 5; rep++) {
		double a = now();
		trail_attr_grad(pr, m, qt, (size_t)L, 32, q, &err);
		double a1 = now();
		trail_attr_score(ix, TRAIL_ATTR_INFLUENCE, q, 1, sc, &err);
		double a2 = now();
		trail_attr_score(ix, TRAIL_ATTR_GRADDOT, q, 1, sc, &err);
		double a3 = now();
		trail_attr_score(ix, TRAIL_ATTR_EKFAC, q, 1, sc, &err);
		bestek = fmin(bestek, now() - a3);
		best1 = fmin(best1, a2 - a);
		best1s = fmin(best1s, a2 - a1);
		bestg = fmin(bestg, a1 - a);
		bestdot = fmin(bestdot, a3 - a2);
	}
	/* the portable kernel (CPUs without F16C and FMA): the same bits, once */
	setenv("TRAIL_ATTR_SCALAR", "1", 1);
	double p0 = now();
	trail_attr_score(ix, TRAIL_ATTR_INFLUENCE, q, 1, sc, &err);
	double t_portable = now() - p0;
	unsetenv("TRAIL_ATTR_SCALAR");
	/* 64 queries: each gradient alone on one of `threads` model copies, then one scoring pass */
	trail_model *mc[8] = {m};
	trail_attr_proj *pc[8] = {pr};
	int nw = threads < 1 ? 1 : threads > 8 ? 8 : threads;
	for (int w = 1; w < nw; w++) {
		size_t n2;
		if (trail_model_init(&c, 1, &mc[w], &err) || trail_model_add_lora(mc[w], &lc, 1, &err) ||
		    trail_attr_index_proj(ix, mc[w], &pc[w], &err)) {
			fprintf(stderr, "speed: %s\n", err.msg);
			return 70;
		}
		memcpy(trail_model_params(mc[w], &n2), pp, np * sizeof *pp);
	}
	float *q2 = malloc(sizeof(float) * nq * 4096);
	double best64a = 1e9, best64as = 1e9, best64ek = 1e9;
	int same = 1;
	for (int rep = 0; rep < 3; rep++) {
		double a = now();
		trail_blas_threads(1);
		gjob gj[8];
		pthread_t gt[8];
		for (int w = 0; w < nw; w++) {
			gj[w] = (gjob){pc[w], mc[w], qt, q2, nq * w / nw, nq * (w + 1) / nw, L, 0};
			if (w)
				pthread_create(&gt[w], NULL, grads, &gj[w]);
		}
		grads(&gj[0]);
		for (int w = 1; w < nw; w++)
			pthread_join(gt[w], NULL);
		trail_blas_threads(threads);
		for (int w = 0; w < nw; w++)
			if (gj[w].rc) {
				fprintf(stderr, "speed: a query gradient failed\n");
				return 70;
			}
		double a1 = now();
		trail_attr_score(ix, TRAIL_ATTR_INFLUENCE, q2, nq, sc, &err);
		double a2 = now();
		best64a = fmin(best64a, a2 - a);
		best64as = fmin(best64as, a2 - a1);
		trail_attr_score(ix, TRAIL_ATTR_EKFAC, q2, nq, sc, &err);
		best64ek = fmin(best64ek, now() - a2);
	}
	/* each equals the gradient attr-score computes for it alone */
	for (int k = 0; k < nq; k++) {
		trail_attr_grad(pr, m, qt + (size_t)k * L, (size_t)L, 32, q, &err);
		same &= !memcmp(q, q2 + (size_t)k * 4096, sizeof(float) * 4096);
	}
	/* the same 64 as one batch of sequences through the model, BLAS threads splitting each product */
	for (int rep = 0; rep < 3; rep++) {
		double a = now();
		trail_model_keep_linear_io(m, 1);
		int32_t *yy = malloc(sizeof(int32_t) * nq * L);
		long qc[64];
		for (int k = 0; k < nq; k++) {
			qc[k] = 0;
			for (int t = 0; t < L; t++) {
				yy[k * L + t] = t + 1 < L && t + 1 >= 32 ? qt[k * L + t + 1] : -1;
				qc[k] += yy[k * L + t] >= 0;
			}
		}
		trail_model_zero_grad(m);
		trail_model_forward(m, qt, yy, nq, L, &loss, &err);
		trail_model_backward(m, &err);
		trail_attr_project(pr, m, nq, L, qc, q, &err);
		free(yy);
		double a1 = now();
		trail_attr_score(ix, TRAIL_ATTR_INFLUENCE, q, nq, sc, &err);
		double a2 = now();
		best64 = fmin(best64, a2 - a);
		best64s = fmin(best64s, a2 - a1);
	}
	/* copy bandwidth: memcpy of a buffer the size of the index's gradients, best of 3 */
	size_t bytes = N * 4096 * 2;
	char *s1 = malloc(bytes), *s2 = malloc(bytes);
	memset(s1, 1, bytes);
	memset(s2, 2, bytes);
	double bw = 0, rbw = 0;
	for (int rep = 0; rep < 3; rep++) {
		double a = now();
		memcpy(s2, s1, bytes);
		double e = now() - a;
		bw = fmax(bw, 2.0 * (double)bytes / e); /* read + write */
		rbw = fmax(rbw, (double)bytes / read_pass(s1, bytes, threads));
	}
	printf("{\"records\":%zu,\"dim\":4096,\"threads\":%d,\"index_bytes\":%zu,\"open_check_s\":%.3f,\"finish_s\":%.3f,"
	       "\"query1_total_ms\":%.2f,\"query1_grad_ms\":%.2f,\"query1_score_ms\":%.2f,\"query1_graddot_ms\":%.2f,"
	       "\"query1_ekfac_score_ms\":%.2f,\"query64_ekfac_score_ms\":%.1f,\"query1_portable_ms\":%.1f,\"query64_total_ms\":%.1f,\"query64_score_ms\":%.1f,"
	       "\"query64_alone_equal\":%s,\"query64_batched_total_ms\":%.1f,\"query64_batched_score_ms\":%.1f,\"score_read_gb_s\":%.2f,\"read_gb_s\":%.2f,\"copy_gb_s\":%.2f,\"train_step_ms\":%.2f,"
	       "\"capture_step_ms\":%.2f,\"capture_over_train\":%.3f,\"pass_ms_per_batch\":%.2f,\"pass_over_train_step\":%.3f}\n",
	       N, threads, bytes, t_open, t_finish, best1 * 1e3, bestg * 1e3, best1s * 1e3, bestdot * 1e3,
	       bestek * 1e3, best64ek * 1e3, t_portable * 1e3, best64a * 1e3, best64as * 1e3, same ? "true" : "false", best64 * 1e3, best64s * 1e3, (double)bytes / best1s / 1e9, rbw / 1e9, bw / 1e9,
	       t_train / (steps - 1) * 1e3, t_capture / (steps - 1) * 1e3, t_capture / t_train - 1, t_index / (steps - 1) * 1e3, t_index / t_train);
	return 0;
}
