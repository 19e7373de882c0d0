/*
 * bf16 training's pieces: the vectorised conversion against the rounding
 * rule (nearest even, NaN kept a NaN, infinities and subnormals), the
 * cached bf16 operands of trail_gemm_x (kept through a pass, made again
 * after trail_bf16_pass or trail_bf16_drop), bf16 products close to the
 * double reference and the same bits on 1, 2 and 3 threads, batched
 * products (trail_bmm) against the reference, and bf16 attention close to
 * float attention.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"

/* oneDNN has bf16 products on this CPU (AVX512_BF16 or AMX); elsewhere bf16 runs its products in float32 */
static int native;

static uint16_t ref_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	uint32_t lo = u & 0xffffu, hi = u >> 16;
	if (lo > 0x8000u || (lo == 0x8000u && (hi & 1)))
		hi++;
	return (uint16_t)hi;
}

static float from_bf16(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static float fbits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static void test_cvt(void)
{
	enum { N = 4099 }; /* vectors of 16 and a tail */
	float *x = malloc(N * sizeof *x);
	uint16_t *h = malloc(N * sizeof *h);
	uint64_t s = 7;
	uint32_t special[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffa00000u,
			      0x00000001u, 0x00008000u, 0x00018000u, 0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu,
			      0x007fffffu, 0xbf7f8000u};
	for (int i = 0; i < N; i++) {
		uint32_t u = (uint32_t)(trail_rng_next(&s) >> 32);
		x[i] = i < (int)(sizeof special / sizeof *special) ? fbits(special[i]) : fbits(u);
	}
	trail_bf16_cvt(h, x, N);
	int bad = 0;
	for (int i = 0; i < N; i++)
		bad += h[i] != ref_bf16(x[i]);
	ok(!bad, "bf16 conversion: nearest even, NaN stays NaN, infinities and subnormals, %d values (%d differ)", N, bad);
	ok(isnan(from_bf16(h[5])) && isnan(from_bf16(h[6])) && from_bf16(h[2]) == INFINITY && h[10] == 0x3f80 &&
		   h[11] == 0x3f82 && h[13] == 0x7f80,
	   "signalling NaNs stay NaNs, ties go to even, the largest float rounds to infinity");
	free(x), free(h);
}

static void ref_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
		     float beta, const float *C0, float *C, int ldc)
{
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double acc = 0;
			for (int k = 0; k < K; k++)
				acc += (double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
				       (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
			C[(size_t)i * ldc + j] = (float)(alpha * acc + beta * C0[(size_t)i * ldc + j]);
		}
}

static double maxrel(const float *a, const float *b, size_t n)
{
	double m = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		m = fmax(m, fabs((double)a[i] - b[i]));
		s = fmax(s, fabs((double)b[i]));
	}
	return m / (s > 0 ? s : 1);
}

static void test_gemm(void)
{
	/* several blocks each way and edge blocks; op(A) [M,K] transposed, op(B) not */
	int M = 300, N = 520, K = 77;
	float *A = malloc(sizeof *A * K * M), *B = malloc(sizeof *B * K * N), *C0 = malloc(sizeof *C0 * M * N);
	float *C = malloc(sizeof *C * M * N), *R = malloc(sizeof *R * M * N), *D = malloc(sizeof *D * M * N);
	uint64_t s = 3;
	trail_rng_normal(A, (size_t)K * M, 1, &s);
	trail_rng_normal(B, (size_t)K * N, 1, &s);
	trail_rng_normal(C0, (size_t)M * N, 1, &s);
	int flags = TRAIL_G_BF16 | TRAIL_G_KEEP_A | TRAIL_G_KEEP_B, same = 1;
	for (int th = 1; th <= 3; th++) {
		trail_compute_set(th, TRAIL_PREC_BF16, NULL);
		trail_bf16_pass();
		memcpy(th == 1 ? C : D, C0, sizeof *C * M * N);
		trail_gemm_x(flags, 1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, th == 1 ? C : D, N);
		if (th > 1)
			same &= !memcmp(C, D, sizeof *C * M * N);
	}
	ref_gemm(1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, C0, R, N);
	double d = maxrel(C, R, (size_t)M * N);
	ok(d < 2e-2 && d > 0, "bf16 product (A transposed, alpha 0.5, beta 1) near the double reference: %.1e", d);
	ok(same, "the same bits on 1, 2 and 3 threads");
	/* the kept copies: B changed in the pass is not seen; after a new pass (or a drop) it is */
	for (size_t i = 0; i < (size_t)K * N; i++)
		B[i] = -B[i];
	memcpy(D, C0, sizeof *D * M * N);
	trail_gemm_x(flags, 1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, D, N);
	if (native)
		ok(!memcmp(C, D, sizeof *C * M * N), "a kept operand is converted once per pass");
	else
		skip("a kept operand is converted once per pass: no bf16 products with oneDNN's ISA %s",
		     trail_compute_isa());
	trail_bf16_drop(B);
	memcpy(D, C0, sizeof *D * M * N);
	trail_gemm_x(flags, 1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, D, N);
	ref_gemm(1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, C0, R, N);
	ok(maxrel(D, R, (size_t)M * N) < 2e-2, "dropped: converted again");
	for (size_t i = 0; i < (size_t)K * M; i++)
		A[i] *= 2;
	trail_bf16_pass();
	memcpy(D, C0, sizeof *D * M * N);
	trail_gemm_x(flags, 1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, D, N);
	ref_gemm(1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, C0, R, N);
	ok(maxrel(D, R, (size_t)M * N) < 2e-2, "a new pass: converted again");
	/* fp32 ignores the flags: the float product */
	trail_compute_set(2, TRAIL_PREC_FP32, NULL);
	memcpy(D, C0, sizeof *D * M * N);
	trail_gemm_x(flags, 1, 0, M, N, K, 0.5f, A, M, B, N, 1.0f, D, N);
	ok(maxrel(D, R, (size_t)M * N) < 1e-5, "fp32: the float product whatever the flags");
	free(A), free(B), free(C0), free(C), free(R), free(D);
}

static void test_bmm(void)
{
	int G = 3, M = 40, N = 24, K = 33, cs0 = 24, cs1 = 3 * 24; /* C rows strided as heads in a row of 3 */
	trail_compute_set(2, TRAIL_PREC_BF16, NULL);
	const trail_bmm *p = trail_bmm_get(G, M, N, K, 1, 0, 0.25f, 1.0f, cs0, cs1);
	if (!native) {
		ok(p == NULL, "no batched bf16 product with oneDNN's ISA %s: callers take the float path", trail_compute_isa());
		return;
	}
	ok(p != NULL, "a batched bf16 product");
	if (!p)
		return;
	float *A = malloc(sizeof *A * G * K * M), *B = malloc(sizeof *B * G * K * N);
	float *C = calloc((size_t)M * cs1, sizeof *C), *R = calloc((size_t)M * cs1, sizeof *R);
	uint16_t *ah = malloc(sizeof *ah * G * K * M), *bh = malloc(sizeof *bh * G * K * N);
	uint64_t s = 9;
	trail_rng_normal(A, (size_t)G * K * M, 1, &s);
	trail_rng_normal(B, (size_t)G * K * N, 1, &s);
	trail_rng_normal(C, (size_t)M * cs1, 1, &s);
	memcpy(R, C, sizeof *R * M * cs1);
	for (size_t i = 0; i < (size_t)G * K * M; i++)
		A[i] = from_bf16(ref_bf16(A[i]));
	for (size_t i = 0; i < (size_t)G * K * N; i++)
		B[i] = from_bf16(ref_bf16(B[i]));
	trail_bf16_cvt(ah, A, (size_t)G * K * M);
	trail_bf16_cvt(bh, B, (size_t)G * K * N);
	ok(trail_bmm_run(p, ah, bh, C, 0) == 0, "runs on this thread");
	for (int g = 0; g < G; g++)
		ref_gemm(1, 0, M, N, K, 0.25f, A + (size_t)g * K * M, M, B + (size_t)g * K * N, N, 1.0f, R + g * cs0,
			 R + g * cs0, cs1);
	double d = maxrel(C, R, (size_t)M * cs1);
	ok(d < 1e-5, "batched, A transposed, strided output: the reference of the bf16 inputs: %.1e", d);
	free(A), free(B), free(C), free(R), free(ah), free(bh);
}

static void test_attention(void)
{
	int B = 2, T = 24, C = 40, NH = 5; /* groups of 2 heads and a last group of 1 */
	size_t N = (size_t)B * T;
	float *qkv = malloc(sizeof *qkv * N * 3 * C), *y = malloc(sizeof *y * N * C), *y32 = malloc(sizeof *y32 * N * C);
	float *att = malloc(sizeof *att * B * NH * T * T), *att32 = malloc(sizeof *att32 * B * NH * T * T);
	float *dy = malloc(sizeof *dy * N * C), *dq = calloc(N * 3 * C, sizeof *dq), *dq32 = calloc(N * 3 * C, sizeof *dq);
	float *scr = malloc(sizeof *scr * 2 * T * T), *dq2 = calloc(N * 3 * C, sizeof *dq2);
	uint64_t s = 5;
	trail_rng_normal(qkv, N * 3 * C, 1, &s);
	trail_rng_normal(dy, N * C, 1, &s);
	trail_compute_set(2, TRAIL_PREC_FP32, NULL);
	trail_k_attention_fwd(0, y32, att32, qkv, B, T, C, NH);
	trail_k_attention_bwd(0, dq32, dy, att32, qkv, B, T, C, NH, scr);
	trail_compute_set(2, TRAIL_PREC_BF16, NULL);
	trail_k_attention_fwd(0, y, att, qkv, B, T, C, NH);
	trail_k_attention_bwd(0, dq, dy, att, qkv, B, T, C, NH, scr);
	double dyv = maxrel(y, y32, N * C), da = maxrel(att, att32, (size_t)B * NH * T * T), dg = maxrel(dq, dq32, N * 3 * C);
	if (native)
		ok(dyv < 3e-2 && da < 3e-2 && dg < 3e-2 && dyv > 0,
		   "bf16 attention near float: y %.1e, probabilities %.1e, dqkv %.1e", dyv, da, dg);
	else
		ok(dyv == 0 && da == 0 && dg == 0, "bf16 attention is float attention with oneDNN's ISA %s",
		   trail_compute_isa());
	trail_compute_set(1, TRAIL_PREC_BF16, NULL);
	trail_k_attention_bwd(0, dq2, dy, att, qkv, B, T, C, NH, scr);
	ok(!memcmp(dq, dq2, sizeof *dq * N * 3 * C), "bf16 attention's backward: the same bits on 1 and 2 threads");
	free(qkv), free(y), free(y32), free(att), free(att32), free(dy), free(dq), free(dq32), free(scr), free(dq2);
}

int main(void)
{
	trail_init();
	test_cvt();
	trail_error e = {0};
	if (trail_compute_set(1, TRAIL_PREC_BF16, &e)) {
		skip("oneDNN: %s", e.msg);
		return 0;
	}
	native = trail_precision_default() == TRAIL_PREC_BF16;
	test_gemm();
	test_bmm();
	test_attention();
	trail_compute_set(1, TRAIL_PREC_FP32, NULL);
	return tap_failed != 0;
}
