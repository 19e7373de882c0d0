/*
 * The tensor kernels every architecture uses, on OpenBLAS: seeded numbers,
 * products, exp, GELU, LayerNorm, linear layers with LoRA, causal attention
 * and cross-entropy, each with its shapes (see model_int.h), and the
 * activation arena they work in. Every large
 * product goes through trail_k_sgemm, which has a naive reference loop
 * beside the BLAS call. Loops outside BLAS run in a fixed order, so the same
 * inputs and BLAS thread count give the same bits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

/* ---- seeded numbers ------------------------------------------------------------ */

uint64_t trail_rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

double trail_rng_unif(uint64_t *s)
{
	return ((double)(trail_rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Box-Muller over the stream: normal(0, std), the same on every host. */
void trail_rng_normal(float *x, size_t n, double std, uint64_t *s)
{
	for (size_t i = 0; i < n; i += 2) {
		double u1 = trail_rng_unif(s), u2 = trail_rng_unif(s), m = sqrt(-2 * log(u1));
		x[i] = (float)(std * m * cos(2 * M_PI * u2));
		if (i + 1 < n)
			x[i + 1] = (float)(std * m * sin(2 * M_PI * u2));
	}
}

/* ---- products -------------------------------------------------------------------- */

void trail_k_sgemm(int naive, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
		   const float *B, int ldb, float beta, float *C, int ldc)
{
	if (!naive) {
		trail_gemm(0, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
		return;
	}
	/* reference: op(A)[i,k] = ta ? A[k,i] : A[i,k]; op(B)[k,j] = tb ? B[j,k] : B[k,j] */
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double s = 0;
			for (int k = 0; k < K; k++)
				s += (double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
				     (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
			float *c = &C[(size_t)i * ldc + j];
			*c = (float)(alpha * s + (beta != 0 ? (double)beta * *c : 0));
		}
}

/*
 * A linear layer's product with its weights: bf16 when the precision says
 * so, the bf16 copies of the operands kept (keep: TRAIL_G_KEEP_A, _B) for
 * the other products of the pass that use them.
 */
static void lin_gemm(int naive, int keep, int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
		     int ldb, float *C, int ldc)
{
	if (naive)
		trail_k_sgemm(1, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
	else
		trail_gemm_x(TRAIL_G_BF16 | keep, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
}

/* One product on the calling thread alone (inside a pool item), or the reference. */
static void sgemm1(int naive, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
		   const float *B, int ldb, float beta, float *C, int ldc)
{
	if (naive)
		trail_k_sgemm(1, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
	else
		cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
			    A, lda, B, ldb, beta, C, ldc);
}

/* ---- loops on the pool --------------------------------------------------------------- */

/*
 * Row-wise and element-wise loops run as fixed items on the pool: an
 * item's range depends on the sizes alone, each element (or row, or
 * column of a sum over rows) is computed whole by one item with the
 * arithmetic of the one-thread loop, so the bits are those of that loop on
 * any number of threads.
 */
static void par(int items, trail_pool_fn fn, void *ctx)
{
	trail_pool_run(trail_compute_pool(), items, fn, ctx);
}

enum { ELEMS = 16384 }; /* floats per item of an element-wise loop (a multiple of the vector width) */

/* rows per item for rows of n floats */
static int rows_per(size_t n)
{
	size_t r = ELEMS / (n ? n : 1);
	return r < 1 ? 1 : (int)r;
}

typedef struct ew {
	float *y, *y2;
	const float *a, *b, *c;
	size_t n;
	int N, C, per;
	float eps;
	float *m, *r, *dw, *db;
	const int32_t *tgt;
	double *row; /* xent: each row's loss */
	double inv;
} ew;

static void ew_range(const ew *j, int it, size_t *i0, size_t *i1)
{
	*i0 = (size_t)it * ELEMS;
	*i1 = *i0 + ELEMS < j->n ? *i0 + ELEMS : j->n;
}

static int ew_items(size_t n)
{
	return (int)((n + ELEMS - 1) / ELEMS);
}

static void zero_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1;
	ew_range(j, it, &i0, &i1);
	memset(j->y + i0, 0, (i1 - i0) * sizeof *j->y);
}

void trail_k_zero(float *x, size_t n)
{
	ew j = {.y = x, .n = n};
	par(ew_items(n), zero_item, &j);
}

static void copy_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1;
	ew_range(j, it, &i0, &i1);
	memcpy(j->y + i0, j->a + i0, (i1 - i0) * sizeof *j->y);
}

void trail_k_copy(float *y, const float *x, size_t n)
{
	ew j = {.y = y, .a = x, .n = n};
	par(ew_items(n), copy_item, &j);
}

static void add_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1;
	ew_range(j, it, &i0, &i1);
	for (size_t i = i0; i < i1; i++)
		j->y[i] = j->a[i] + j->b[i];
}

void trail_k_add(float *y, const float *a, const float *b, size_t n)
{
	ew j = {.y = y, .a = a, .b = b, .n = n};
	par(ew_items(n), add_item, &j);
}

/* ---- exp and tanh on float vectors ------------------------------------------------ */

/*
 * GCC/Clang vector extensions: four lanes, the width every x86-64 and
 * arm64 has without target flags. exp(x) = 2^n e^r, n = round(x / ln 2), |r| <= ln2 / 2, e^r by a
 * degree-7 polynomial (Cephes' expf coefficients): below 2e-7 relative.
 */
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
#define VL 4

static inline vf vs(float x)
{
	return (vf){x, x, x, x};
}

/*
 * exp and GELU's forward and backward at one vector width: the four-lane
 * code and the sixteen-lane code below are the same operations, so their
 * bits agree (ISO C's default: no contraction into fused multiply-adds).
 */
#define VMATH(SFX, VF, VI, VS, ATTR)                                                                                   \
	ATTR VF vexp##SFX(VF x)                                                                                        \
	{                                                                                                              \
		VI lo = x < VS(-87.0f), hi = x > VS(88.0f);                                                            \
		x = (VF)(((VI)x & ~lo) | ((VI)VS(-87.0f) & lo));                                                       \
		x = (VF)(((VI)x & ~hi) | ((VI)VS(88.0f) & hi));                                                        \
		VF n = (x * VS(1.44269504088896341f) + VS(12582912.0f)) - VS(12582912.0f);                             \
		VF r = x - n * VS(0.693359375f) + n * VS(2.12194440e-4f);                                              \
		VF p = VS(1.9875691500e-4f);                                                                           \
		p = p * r + VS(1.3981999507e-3f);                                                                      \
		p = p * r + VS(8.3334519073e-3f);                                                                      \
		p = p * r + VS(4.1665795894e-2f);                                                                      \
		p = p * r + VS(1.6666665459e-1f);                                                                      \
		p = p * r + VS(5.0000001201e-1f);                                                                      \
		p = p * r * r + r + VS(1.0f);                                                                          \
		VI e = (__builtin_convertvector(n, VI) + 127) << 23;                                                   \
		return p * (VF)e;                                                                                      \
	}                                                                                                              \
	/* t = tanh(u), u = s (x + c x^3), through e = exp(2u): t = 1 - 2/(1+e), and                                   \
	   1 - t^2 = 4 e/(1+e)^2 without the cancellation of 1 - t*t */                                                \
	ATTR VF gelu_f##SFX(VF x)                                                                                      \
	{                                                                                                              \
		VF e = vexp##SFX(VS(2 * GELU_S) * (x + VS(GELU_C) * x * x * x)), d = VS(1.0f) / (VS(1.0f) + e);        \
		return VS(0.5f) * x * (VS(2.0f) - VS(2.0f) * d);                                                       \
	}                                                                                                              \
	ATTR VF gelu_b##SFX(VF x, VF dy)                                                                               \
	{                                                                                                              \
		VF e = vexp##SFX(VS(2 * GELU_S) * (x + VS(GELU_C) * x * x * x)), d = VS(1.0f) / (VS(1.0f) + e);        \
		VF t = VS(1.0f) - VS(2.0f) * d, sech2 = VS(4.0f) * (e * d) * d;                                        \
		return dy * (VS(0.5f) * (VS(1.0f) + t) +                                                               \
			     VS(0.5f) * x * sech2 * VS(GELU_S) * (VS(1.0f) + VS(3 * GELU_C) * x * x));                 \
	}

#define GELU_S 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f
VMATH(, vf, vi, vs, static inline)

void trail_k_expf(float *y, const float *x, size_t n)
{
	size_t i = 0;
	for (; i + VL <= n; i += VL) {
		vf v;
		memcpy(&v, x + i, sizeof v);
		v = vexp(v);
		memcpy(y + i, &v, sizeof v);
	}
	if (i < n) { /* the tail through the same arithmetic */
		vf v = vs(0);
		memcpy(&v, x + i, (n - i) * sizeof *x);
		v = vexp(v);
		memcpy(y + i, &v, (n - i) * sizeof *x);
	}
}

/* ---- GELU (tanh approximation, VMATH above) ------------------------------------------ */

static void gelu_fwd1(float *y, const float *x, size_t n)
{
	size_t i = 0;
	for (; i + VL <= n; i += VL) {
		vf v;
		memcpy(&v, x + i, sizeof v);
		v = gelu_f(v);
		memcpy(y + i, &v, sizeof v);
	}
	if (i < n) {
		vf v = vs(0);
		memcpy(&v, x + i, (n - i) * sizeof *x);
		v = gelu_f(v);
		memcpy(y + i, &v, (n - i) * sizeof *y);
	}
}

static void gelu_bwd1(float *dx, const float *x, const float *dy, size_t n)
{
	size_t i = 0;
	for (; i + VL <= n; i += VL) {
		vf v, d;
		memcpy(&v, x + i, sizeof v);
		memcpy(&d, dy + i, sizeof d);
		d = gelu_b(v, d);
		memcpy(dx + i, &d, sizeof d);
	}
	if (i < n) {
		vf v = vs(0), d = vs(0);
		memcpy(&v, x + i, (n - i) * sizeof *x);
		memcpy(&d, dy + i, (n - i) * sizeof *dy);
		d = gelu_b(v, d);
		memcpy(dx + i, &d, (n - i) * sizeof *dx);
	}
}

/*
 * The same arithmetic sixteen lanes wide, for AVX-512: every lane does
 * exactly the operations of the four-lane code (no contraction into fused
 * multiply-adds: ISO C's default), so both give the same bits.
 */
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
#define W16 __attribute__((target("avx512f"))) static inline

W16 vf16 vs16(float x)
{
	return (vf16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}

VMATH(16, vf16, vi16, vs16, W16)

/* n a multiple of 16 */
__attribute__((target("avx512f"))) static void gelu_fwd16(float *y, const float *x, size_t n)
{
	for (size_t i = 0; i + 16 <= n; i += 16) {
		vf16 v;
		memcpy(&v, x + i, sizeof v);
		v = gelu_f16(v);
		memcpy(y + i, &v, sizeof v);
	}
}

__attribute__((target("avx512f"))) static void gelu_bwd16(float *dx, const float *x, const float *dy, size_t n)
{
	for (size_t i = 0; i + 16 <= n; i += 16) {
		vf16 v, d;
		memcpy(&v, x + i, sizeof v);
		memcpy(&d, dy + i, sizeof d);
		d = gelu_b16(v, d);
		memcpy(dx + i, &d, sizeof d);
	}
}
#undef W16

int trail_k_has_avx512(void)
{
	static int h = -1;
	if (h < 0) {
		__builtin_cpu_init();
		h = __builtin_cpu_supports("avx512f") != 0;
	}
	return h;
}

int trail_k_has_avx2(void)
{
	static int h = -1;
	if (h < 0) {
		__builtin_cpu_init();
		h = __builtin_cpu_supports("avx2") != 0;
	}
	return h;
}

static void gelu_fwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1, w = 0;
	ew_range(j, it, &i0, &i1);
	if (trail_k_has_avx512())
		gelu_fwd16(j->y + i0, j->a + i0, w = (i1 - i0) & ~(size_t)15);
	gelu_fwd1(j->y + i0 + w, j->a + i0 + w, i1 - i0 - w);
}

static void gelu_bwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1, w = 0;
	ew_range(j, it, &i0, &i1);
	if (trail_k_has_avx512())
		gelu_bwd16(j->y + i0, j->a + i0, j->b + i0, w = (i1 - i0) & ~(size_t)15);
	gelu_bwd1(j->y + i0 + w, j->a + i0 + w, j->b + i0 + w, i1 - i0 - w);
}

void trail_k_gelu_fwd(float *y, const float *x, size_t n)
{
	ew j = {.y = y, .a = x, .n = n};
	par(ew_items(n), gelu_fwd_item, &j);
}

void trail_k_gelu_bwd(float *dx, const float *x, const float *dy, size_t n)
{
	ew j = {.y = dx, .a = x, .b = dy, .n = n};
	par(ew_items(n), gelu_bwd_item, &j);
}

/* ---- LayerNorm ------------------------------------------------------------------- */

static void ln_fwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	int C = j->C, i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	const float *x = j->a, *w = j->b, *b = j->c;
	for (int i = it * j->per; i < i1; i++) {
		const float *xi = x + (size_t)i * C;
		float *o = j->y + (size_t)i * C;
		double m = 0, v = 0;
		for (int c = 0; c < C; c++)
			m += xi[c];
		m /= C;
		for (int c = 0; c < C; c++)
			v += (xi[c] - m) * (xi[c] - m);
		v /= C;
		float s = (float)(1.0 / sqrt(v + 1e-5)), mf = (float)m;
		for (int c = 0; c < C; c++)
			o[c] = (xi[c] - mf) * s * w[c] + b[c];
		j->m[i] = mf;
		j->r[i] = s;
	}
}

void trail_k_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w,
			   const float *b, int N, int C)
{
	ew j = {.y = out, .m = mean, .r = rstd, .a = x, .b = w, .c = b, .N = N, .C = C, .per = rows_per((size_t)C)};
	par((N + j.per - 1) / j.per, ln_fwd_item, &j);
}

/* LayerNorm backward: dx by rows; dw, db by columns, each column summed over the rows in order */
typedef struct lnb {
	float *dx, *dw, *db;
	const float *dout, *x, *w, *mean, *rstd;
	int N, C, per;
} lnb;

enum { COLS = 64 }; /* columns per item of a sum over rows */

static void ln_bwd_rows(void *ctx, int it, int t)
{
	const lnb *j = ctx;
	int C = j->C, i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	const float *w = j->w;
	for (int i = it * j->per; i < i1; i++) {
		const float *d = j->dout + (size_t)i * C, *xi = j->x + (size_t)i * C;
		float *dxi = j->dx + (size_t)i * C, mi = j->mean[i], ri = j->rstd[i];
		double dm = 0, dnm = 0;
		for (int c = 0; c < C; c++) {
			float norm = (xi[c] - mi) * ri, dn = w[c] * d[c];
			dm += dn;
			dnm += dn * norm;
		}
		float fm = (float)(dm / C), fnm = (float)(dnm / C);
		for (int c = 0; c < C; c++) {
			float norm = (xi[c] - mi) * ri;
			dxi[c] += (w[c] * d[c] - fm - norm * fnm) * ri;
		}
	}
}

static void ln_bwd_cols(void *ctx, int it, int t)
{
	const lnb *j = ctx;
	int C = j->C, c0 = it * COLS, c1 = c0 + COLS < C ? c0 + COLS : C;
	if (c1 - c0 == COLS) { /* the same per column, four columns a vector, the sums in registers */
		vf dw[COLS / VL], db[COLS / VL];
		memcpy(dw, j->dw + c0, sizeof dw);
		memcpy(db, j->db + c0, sizeof db);
		for (int i = 0; i < j->N; i++) {
			vf d[COLS / VL], xi[COLS / VL], mi = vs(j->mean[i]), ri = vs(j->rstd[i]);
			memcpy(d, j->dout + (size_t)i * C + c0, sizeof d);
			memcpy(xi, j->x + (size_t)i * C + c0, sizeof xi);
			for (int k = 0; k < COLS / VL; k++) {
				vf norm = (xi[k] - mi) * ri;
				dw[k] += d[k] * norm;
				db[k] += d[k];
			}
		}
		memcpy(j->dw + c0, dw, sizeof dw);
		memcpy(j->db + c0, db, sizeof db);
		return;
	}
	for (int i = 0; i < j->N; i++) {
		const float *d = j->dout + (size_t)i * C, *xi = j->x + (size_t)i * C;
		float mi = j->mean[i], ri = j->rstd[i];
		for (int c = c0; c < c1; c++) {
			float norm = (xi[c] - mi) * ri;
			j->dw[c] += d[c] * norm;
			j->db[c] += d[c];
		}
	}
}

void trail_k_layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
			   const float *w, const float *mean, const float *rstd, int N, int C)
{
	lnb j = {.dx = dx, .dw = dw, .db = db, .dout = dout, .x = x, .w = w, .mean = mean, .rstd = rstd, .N = N, .C = C,
		 .per = rows_per((size_t)C)};
	if (dw)
		par((C + COLS - 1) / COLS, ln_bwd_cols, &j);
	par((N + j.per - 1) / j.per, ln_bwd_rows, &j);
}

/* ---- linear (Conv1D) with LoRA ------------------------------------------------------ */

static void bias_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	int i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int i = it * j->per; i < i1; i++)
		if (j->a)
			memcpy(j->y + (size_t)i * j->C, j->a, (size_t)j->C * sizeof *j->y);
		else
			memset(j->y + (size_t)i * j->C, 0, (size_t)j->C * sizeof *j->y);
}

/* db [C] += the column sums of dy [N,C], each column in row order */
static void colsum_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	int C = j->C, c0 = it * COLS, c1 = c0 + COLS < C ? c0 + COLS : C;
	if (c1 - c0 == COLS) { /* COLS sums in registers, each over the rows in order */
		vf acc[COLS / VL];
		memcpy(acc, j->db + c0, sizeof acc);
		for (int i = 0; i < j->N; i++) {
			vf d[COLS / VL];
			memcpy(d, j->a + (size_t)i * C + c0, sizeof d);
			for (int k = 0; k < COLS / VL; k++)
				acc[k] += d[k];
		}
		memcpy(j->db + c0, acc, sizeof acc);
		return;
	}
	for (int i = 0; i < j->N; i++) {
		const float *d = j->a + (size_t)i * C;
		for (int o = c0; o < c1; o++)
			j->db[o] += d[o];
	}
}

void trail_k_linear_fwd(int naive, trail_lin *L, int r, float scale, float *y, const float *x, int N)
{
	enum { KX = TRAIL_G_KEEP_A, KW = TRAIL_G_KEEP_B };
	L->x = x;
	/* y [N,out] = b (each row) or 0, then += x [N,in] W [in,out] (or W^T, W [out,in]) */
	ew j = {.y = y, .a = L->b, .N = N, .C = L->out, .per = rows_per((size_t)L->out)};
	par((N + j.per - 1) / j.per, bias_item, &j);
	if (L->wt)
		lin_gemm(naive, KX | KW, 0, 1, N, L->out, L->in, x, L->in, L->W, L->in, y, L->out);
	else
		lin_gemm(naive, KX | KW, 0, 0, N, L->out, L->in, x, L->in, L->W, L->out, y, L->out);
	if (L->A) {
		/* u [N,r] = x A^T;  y += scale u B^T  (B [out,r]) */
		trail_k_sgemm(naive, 0, 1, N, r, L->in, 1.0f, x, L->in, L->A, L->in, 0.0f, L->u, r);
		trail_k_sgemm(naive, 0, 1, N, L->out, r, scale, L->u, r, L->Bm, r, 1.0f, y, L->out);
	}
}

void trail_k_linear_bwd(int naive, trail_lin *L, int r, float scale, float *dx, const float *dy, int N,
			float *scratch)
{
	/* x and W as in the forward; dy kept for the products below, then forgotten */
	enum { KA = TRAIL_G_KEEP_A, KB = TRAIL_G_KEEP_B };
	if (L->keep_dy)
		memcpy(L->keep_dy, dy, (size_t)N * (size_t)L->out * sizeof *dy);
	if (L->dW) {
		/* dW [in,out] += x^T [in,N] dy [N,out] (or dW [out,in] += dy^T x);  db [out] += column sums of dy */
		if (L->wt)
			lin_gemm(naive, KA | KB, 1, 0, L->out, L->in, N, dy, L->out, L->x, L->in, L->dW, L->in);
		else
			lin_gemm(naive, KA | KB, 1, 0, L->in, L->out, N, L->x, L->in, dy, L->out, L->dW, L->out);
		if (L->db) {
			ew j = {.a = dy, .db = L->db, .N = N, .C = L->out};
			par((L->out + COLS - 1) / COLS, colsum_item, &j);
		}
	}
	/* dx [N,in] += dy [N,out] W^T (or dy W, W [out,in]) */
	if (dx && L->wt)
		lin_gemm(naive, KA | KB, 0, 0, N, L->in, L->out, dy, L->out, L->W, L->in, dx, L->in);
	else if (dx)
		lin_gemm(naive, KA | KB, 0, 1, N, L->in, L->out, dy, L->out, L->W, L->out, dx, L->in);
	if (!naive)
		trail_bf16_drop(dy);
	if (L->A) {
		/* du [N,r] = s dy B;  dB [out,r] += s dy^T u;  dA [r,in] += du^T x;  dx += du A */
		float *du = scratch;
		trail_k_sgemm(naive, 0, 0, N, r, L->out, scale, dy, L->out, L->Bm, r, 0.0f, du, r);
		trail_k_sgemm(naive, 1, 0, L->out, r, N, scale, dy, L->out, L->u, r, 1.0f, L->dB, r);
		trail_k_sgemm(naive, 1, 0, r, L->in, N, 1.0f, du, r, L->x, L->in, 1.0f, L->dA, L->in);
		if (dx)
			trail_k_sgemm(naive, 0, 0, N, L->in, r, 1.0f, du, r, L->A, L->in, 1.0f, dx, L->in);
	}
}

/* ---- causal self-attention --------------------------------------------------------- */

/*
 * One (batch, head) pair per pool item: each writes its own slices of y,
 * att and dqkv, with its thread's scratch, and its products run on that
 * thread alone, so the bits do not depend on the thread count.
 */
typedef struct attjob {
	int naive, T, C, NH;
	float *y, *att, *dqkv, *scratch;
	const float *qkv, *dy, *catt;
	size_t per; /* scratch floats per thread */
} attjob;

/* A row's causal softmax in place: row [0,t] normalised, (t,T) zero. */
static void causal_softmax(float *row, int t, int T)
{
	float mx = row[0];
	for (int u = 1; u <= t; u++)
		mx = row[u] > mx ? row[u] : mx;
	for (int u = 0; u <= t; u++)
		row[u] -= mx;
	trail_k_expf(row, row, (size_t)t + 1);
	double sum = 0;
	for (int u = 0; u <= t; u++)
		sum += row[u];
	float inv = (float)(1.0 / sum);
	for (int u = 0; u <= t; u++)
		row[u] *= inv;
	memset(row + t + 1, 0, (size_t)(T - t - 1) * sizeof *row);
}

/* Softmax backward of a row: ds = a (da - sum(a da)) on [0,t], zero after. */
static void causal_softmax_bwd(float *dsr, const float *ar, const float *dr, int t, int T)
{
	double dot = 0;
	for (int u = 0; u <= t; u++)
		dot += (double)ar[u] * dr[u];
	float fd = (float)dot;
	for (int u = 0; u <= t; u++)
		dsr[u] = ar[u] * (dr[u] - fd);
	memset(dsr + t + 1, 0, (size_t)(T - t - 1) * sizeof *dsr);
}

static void att_fwd_item(void *ctx, int item, int thread)
{
	const attjob *j = ctx;
	int T = j->T, C = j->C, NH = j->NH, hs = C / NH, b = item / NH, h = item % NH, naive = j->naive;
	float scale = (float)(1.0 / sqrt((double)hs));
	/* q, k, v: [T,hs] views with row stride 3C */
	const float *q = j->qkv + (size_t)b * T * 3 * C + (size_t)h * hs;
	const float *k = q + C, *v = q + 2 * C;
	float *a = j->att + ((size_t)b * NH + h) * T * T;
	/* a [T,T] = scale q k^T, then a causal softmax per row */
	sgemm1(naive, 0, 1, T, T, hs, scale, q, 3 * C, k, 3 * C, 0.0f, a, T);
	for (int t = 0; t < T; t++)
		causal_softmax(a + (size_t)t * T, t, T);
	/* y [T,hs] (row stride C) = a v */
	sgemm1(naive, 0, 0, T, hs, T, 1.0f, a, T, v, 3 * C, 0.0f, j->y + (size_t)b * T * C + (size_t)h * hs, C);
}

static void att_bwd_item(void *ctx, int item, int thread)
{
	const attjob *j = ctx;
	int T = j->T, C = j->C, NH = j->NH, hs = C / NH, b = item / NH, h = item % NH, naive = j->naive;
	float scale = (float)(1.0 / sqrt((double)hs));
	float *da = j->scratch + (size_t)thread * j->per, *ds = da + (size_t)T * T;
	size_t off = (size_t)b * T * 3 * C + (size_t)h * hs;
	const float *q = j->qkv + off, *k = q + C, *v = q + 2 * C;
	float *dq = j->dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
	const float *a = j->catt + ((size_t)b * NH + h) * T * T;
	const float *dyh = j->dy + (size_t)b * T * C + (size_t)h * hs;
	/* da [T,T] = dy v^T;  dv [T,hs] += a^T dy */
	sgemm1(naive, 0, 1, T, T, hs, 1.0f, dyh, C, v, 3 * C, 0.0f, da, T);
	sgemm1(naive, 1, 0, T, hs, T, 1.0f, a, T, dyh, C, 1.0f, dv, 3 * C);
	/* softmax backward: ds = a (da - rowsum(a da)) */
	for (int t = 0; t < T; t++)
		causal_softmax_bwd(ds + (size_t)t * T, a + (size_t)t * T, da + (size_t)t * T, t, T);
	/* dq [T,hs] += scale ds k;  dk [T,hs] += scale ds^T q */
	sgemm1(naive, 0, 0, T, hs, T, scale, ds, T, k, 3 * C, 1.0f, dq, 3 * C);
	sgemm1(naive, 1, 0, T, hs, T, scale, ds, T, q, 3 * C, 1.0f, dk, 3 * C);
}

/*
 * bf16 attention (the precision bf16): items of one batch row and a group
 * of gs heads (gs from the shape alone), the products batched over the
 * group by oneDNN on the item's thread, softmax and its backward in float.
 * Each item writes its own slices of y, att and dqkv.
 */
typedef struct attbf {
	int T, C, NH, hs, gs, ng, qs; /* qs: the row stride of q, k, v (3C) */
	float scale;
	float *y, *att, *dqkv;
	const float *qkv, *dy;
	const trail_bmm *qk[2], *av[2], *dav[2], *dv[2], *dq[2], *dk[2]; /* [the short last group] */
	uint16_t *h;
	float *f;
	size_t hper, fper; /* scratch per thread */
} attbf;

/* g heads from h0 of rows [T] of src (row stride ld) to dst [g,T,hs] bf16 */
static void heads_bf16(uint16_t *dst, const float *src, int ld, int T, int hs, int g)
{
	for (int i = 0; i < g; i++)
		for (int t = 0; t < T; t++)
			trail_bf16_cvt(dst + ((size_t)i * T + t) * hs, src + (size_t)t * ld + (size_t)i * hs, (size_t)hs);
}

static void attbf_fwd_item(void *ctx, int item, int thread)
{
	const attbf *j = ctx;
	int T = j->T, C = j->C, hs = j->hs, b = item / j->ng, h0 = (item % j->ng) * j->gs;
	int g = j->NH - h0 < j->gs ? j->NH - h0 : j->gs, tail = g < j->gs;
	size_t GT = (size_t)g * T * hs;
	uint16_t *qh = j->h + (size_t)thread * j->hper, *kh = qh + GT, *vh = kh + GT, *ah = vh + GT;
	const float *q = j->qkv + (size_t)b * T * j->qs + (size_t)h0 * hs;
	float *a = j->att + ((size_t)b * j->NH + h0) * T * T;
	heads_bf16(qh, q, j->qs, T, hs, g);
	heads_bf16(kh, q + C, j->qs, T, hs, g);
	heads_bf16(vh, q + 2 * C, j->qs, T, hs, g);
	trail_bmm_run(j->qk[tail], qh, kh, a, thread);
	for (int i = 0; i < g; i++)
		for (int t = 0; t < T; t++)
			causal_softmax(a + ((size_t)i * T + t) * T, t, T);
	trail_bf16_cvt(ah, a, (size_t)g * T * T);
	trail_bmm_run(j->av[tail], ah, vh, j->y + (size_t)b * T * C + (size_t)h0 * hs, thread);
}

static void attbf_bwd_item(void *ctx, int item, int thread)
{
	const attbf *j = ctx;
	int T = j->T, C = j->C, hs = j->hs, b = item / j->ng, h0 = (item % j->ng) * j->gs;
	int g = j->NH - h0 < j->gs ? j->NH - h0 : j->gs, tail = g < j->gs;
	size_t GT = (size_t)g * T * hs, TT = (size_t)g * T * T;
	uint16_t *qh = j->h + (size_t)thread * j->hper, *kh = qh + GT, *vh = kh + GT, *dyh = vh + GT, *ah = dyh + GT,
		 *dsh = ah + TT;
	float *da = j->f + (size_t)thread * j->fper, *ds = da + TT;
	size_t off = (size_t)b * T * j->qs + (size_t)h0 * hs;
	const float *q = j->qkv + off, *a = j->att + ((size_t)b * j->NH + h0) * T * T;
	float *dq = j->dqkv + off;
	heads_bf16(qh, q, j->qs, T, hs, g);
	heads_bf16(kh, q + C, j->qs, T, hs, g);
	heads_bf16(vh, q + 2 * C, j->qs, T, hs, g);
	heads_bf16(dyh, j->dy + (size_t)b * T * C + (size_t)h0 * hs, C, T, hs, g);
	trail_bf16_cvt(ah, a, TT);
	/* da = dy v^T;  dv += a^T dy */
	trail_bmm_run(j->dav[tail], dyh, vh, da, thread);
	trail_bmm_run(j->dv[tail], ah, dyh, dq + 2 * C, thread);
	for (int i = 0; i < g; i++)
		for (int t = 0; t < T; t++) {
			size_t r = ((size_t)i * T + t) * T;
			causal_softmax_bwd(ds + r, a + r, da + r, t, T);
		}
	trail_bf16_cvt(dsh, ds, TT);
	/* dq += scale ds k;  dk += scale ds^T q */
	trail_bmm_run(j->dq[tail], dsh, kh, dq, thread);
	trail_bmm_run(j->dk[tail], dsh, qh, dq + C, thread);
}

/* The bf16 job of a shape, its primitives made; 0 when the precision is fp32 or oneDNN cannot. */
static int attbf_init(attbf *j, int B, int T, int C, int NH, int bwd)
{
	int hs = C / NH, gs = (NH + 3) / 4;
	while (gs > 1 && (size_t)gs * T * T > (1u << 20))
		gs--;
	*j = (attbf){.T = T, .C = C, .NH = NH, .hs = hs, .gs = gs, .ng = (NH + gs - 1) / gs, .qs = 3 * C,
		     .scale = (float)(1.0 / sqrt((double)hs))};
	for (int tail = 0; tail < 2; tail++) {
		int g = tail ? NH % gs : gs;
		if (!g)
			continue;
		int TT = T * T, ok;
		if (!bwd)
			ok = (j->qk[tail] = trail_bmm_get(g, T, T, hs, 0, 1, j->scale, 0, TT, T)) &&
			     (j->av[tail] = trail_bmm_get(g, T, hs, T, 0, 0, 1, 0, hs, C));
		else
			ok = (j->dav[tail] = trail_bmm_get(g, T, T, hs, 0, 1, 1, 0, TT, T)) &&
			     (j->dv[tail] = trail_bmm_get(g, T, hs, T, 1, 0, 1, 1, hs, 3 * C)) &&
			     (j->dq[tail] = trail_bmm_get(g, T, hs, T, 0, 0, j->scale, 1, hs, 3 * C)) &&
			     (j->dk[tail] = trail_bmm_get(g, T, hs, T, 1, 0, j->scale, 1, hs, 3 * C));
		if (!ok)
			return 0;
	}
	size_t GT = (size_t)gs * T * hs, TT = (size_t)gs * T * T;
	j->hper = 4 * GT + 2 * TT;
	j->fper = bwd ? 2 * TT : 0;
	return 1;
}

void trail_k_attention_fwd(int naive, float *y, float *att, const float *qkv, int B, int T, int C, int NH)
{
	trail_pool *p = naive ? NULL : trail_compute_pool();
	attbf jb;
	if (!naive && attbf_init(&jb, B, T, C, NH, 0)) {
		int n = trail_pool_threads(p);
		jb.h = trail_malloc((size_t)n * jb.hper * sizeof *jb.h);
		if (jb.h) {
			jb.y = y, jb.att = att, jb.qkv = qkv;
			trail_pool_run(p, B * jb.ng, attbf_fwd_item, &jb);
			trail_free(jb.h);
			return;
		}
	}
	attjob j = {.naive = naive, .T = T, .C = C, .NH = NH, .y = y, .att = att, .qkv = qkv};
	trail_pool_run(p, B * NH, att_fwd_item, &j);
}

void trail_k_attention_bwd(int naive, float *dqkv, const float *dy, const float *att, const float *qkv, int B,
			   int T, int C, int NH, float *scratch)
{
	trail_pool *p = naive ? NULL : trail_compute_pool();
	int n = trail_pool_threads(p);
	attbf jb;
	if (!naive && attbf_init(&jb, B, T, C, NH, 1)) {
		jb.h = trail_malloc((size_t)n * jb.hper * sizeof *jb.h);
		jb.f = trail_malloc((size_t)n * jb.fper * sizeof *jb.f);
		if (jb.h && jb.f) {
			jb.dqkv = dqkv, jb.att = (float *)att, jb.qkv = qkv, jb.dy = dy;
			trail_pool_run(p, B * jb.ng, attbf_bwd_item, &jb);
			trail_free(jb.h), trail_free(jb.f);
			return;
		}
		trail_free(jb.h), trail_free(jb.f);
	}
	attjob j = {.naive = naive, .T = T, .C = C, .NH = NH, .dqkv = dqkv, .qkv = qkv, .dy = dy, .catt = att,
		    .scratch = scratch, .per = 2 * (size_t)T * T};
	float *own = n > 1 ? trail_malloc((size_t)n * j.per * sizeof *own) : NULL;
	if (own)
		j.scratch = own;
	else
		p = NULL; /* one thread, the caller's scratch */
	trail_pool_run(p, B * NH, att_bwd_item, &j);
	trail_free(own);
}

/* ---- RMSNorm ---------------------------------------------------------------------- */

static void rms_fwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	int C = j->C, i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int i = it * j->per; i < i1; i++) {
		const float *xi = j->a + (size_t)i * C, *w = j->b;
		float *o = j->y + (size_t)i * C;
		double ss = 0;
		for (int c = 0; c < C; c++)
			ss += (double)xi[c] * xi[c];
		float r = (float)(1.0 / sqrt(ss / C + j->eps));
		for (int c = 0; c < C; c++)
			o[c] = xi[c] * r * w[c];
		j->r[i] = r;
	}
}

void trail_k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps)
{
	ew j = {.y = out, .r = rstd, .a = x, .b = w, .N = N, .C = C, .eps = eps, .per = rows_per((size_t)C)};
	par((N + j.per - 1) / j.per, rms_fwd_item, &j);
}

/* RMSNorm backward: dx by rows, dw by columns (each summed over the rows in order) */
static void rms_bwd_rows(void *ctx, int it, int t)
{
	const lnb *j = ctx;
	int C = j->C, i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	const float *w = j->w;
	for (int i = it * j->per; i < i1; i++) {
		const float *xi = j->x + (size_t)i * C, *d = j->dout + (size_t)i * C;
		float *dxi = j->dx + (size_t)i * C, r = j->rstd[i];
		/* y = x r w, r = (mean x^2 + eps)^-1/2: dx = r (d w) - x r^3 mean(d w x) */
		double dot = 0;
		for (int c = 0; c < C; c++)
			dot += (double)d[c] * w[c] * xi[c];
		float k = (float)(dot / C) * r * r * r;
		for (int c = 0; c < C; c++)
			dxi[c] += r * d[c] * w[c] - xi[c] * k;
	}
}

static void rms_bwd_cols(void *ctx, int it, int t)
{
	const lnb *j = ctx;
	int C = j->C, c0 = it * COLS, c1 = c0 + COLS < C ? c0 + COLS : C;
	for (int i = 0; i < j->N; i++) {
		const float *xi = j->x + (size_t)i * C, *d = j->dout + (size_t)i * C;
		float r = j->rstd[i];
		for (int c = c0; c < c1; c++)
			j->dw[c] += d[c] * xi[c] * r;
	}
}

void trail_k_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
			 const float *rstd, int N, int C)
{
	lnb j = {.dx = dx, .dw = dw, .dout = dout, .x = x, .w = w, .rstd = rstd, .N = N, .C = C,
		 .per = rows_per((size_t)C)};
	if (dw)
		par((C + COLS - 1) / COLS, rms_bwd_cols, &j);
	par((N + j.per - 1) / j.per, rms_bwd_rows, &j);
}

/* ---- rotary positions --------------------------------------------------------------- */

void trail_k_rope_tables(float *cs, float *sn, const float *inv_freq, int T, int hd)
{
	for (int t = 0; t < T; t++)
		for (int i = 0; i < hd / 2; i++) {
			float a = (float)t * inv_freq[i]; /* as Hugging Face: the angle in float */
			cs[(size_t)t * (hd / 2) + i] = (float)cos((double)a);
			sn[(size_t)t * (hd / 2) + i] = (float)sin((double)a);
		}
}

typedef struct ropej {
	float *x;
	const float *cs, *sn;
	int N, T, nh, hd, stride, inverse, per;
} ropej;

static void rope_item(void *ctx, int it, int t)
{
	const ropej *j = ctx;
	int h2 = j->hd / 2, n1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int n = it * j->per; n < n1; n++) {
		const float *c = j->cs + (size_t)(n % j->T) * h2, *s = j->sn + (size_t)(n % j->T) * h2;
		for (int h = 0; h < j->nh; h++) {
			float *v = j->x + (size_t)n * j->stride + (size_t)h * j->hd;
			for (int i = 0; i < h2; i++) {
				float a = v[i], b = v[i + h2], si = j->inverse ? -s[i] : s[i];
				v[i] = a * c[i] - b * si;
				v[i + h2] = b * c[i] + a * si;
			}
		}
	}
}

void trail_k_rope(float *x, int N, int T, int nh, int hd, int stride, const float *cs, const float *sn, int inverse)
{
	ropej j = {.x = x, .cs = cs, .sn = sn, .N = N, .T = T, .nh = nh, .hd = hd, .stride = stride, .inverse = inverse,
		   .per = rows_per((size_t)nh * hd)};
	par((N + j.per - 1) / j.per, rope_item, &j);
}

/* ---- SwiGLU ------------------------------------------------------------------------- */

static void swiglu_fwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1;
	ew_range(j, it, &i0, &i1);
	const float *g = j->a, *u = j->b;
	for (size_t i = i0; i < i1; i++) {
		float s = 1.0f / (1.0f + expf(-g[i]));
		j->y[i] = g[i] * s * u[i];
	}
}

static void swiglu_bwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	size_t i0, i1;
	ew_range(j, it, &i0, &i1);
	const float *g = j->a, *u = j->b, *dy = j->c;
	float *dg = j->y, *du = j->y2;
	for (size_t i = i0; i < i1; i++) {
		float s = 1.0f / (1.0f + expf(-g[i])), silu = g[i] * s;
		du[i] = dy[i] * silu;
		dg[i] = dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
	}
}

void trail_k_swiglu_fwd(float *y, const float *g, const float *u, size_t n)
{
	ew j = {.y = y, .a = g, .b = u, .n = n};
	par(ew_items(n), swiglu_fwd_item, &j);
}

void trail_k_swiglu_bwd(float *dg, float *du, const float *g, const float *u, const float *dy, size_t n)
{
	ew j = {.y = dg, .y2 = du, .a = g, .b = u, .c = dy, .n = n};
	par(ew_items(n), swiglu_bwd_item, &j);
}

/* ---- cross-entropy ---------------------------------------------------------------- */

/* Softmax of one row into p [V]; returns log of the normaliser (max included). */
static double softmax_row(float *p, const float *lg, int V)
{
	float mx = lg[0];
	for (int v = 1; v < V; v++)
		mx = lg[v] > mx ? lg[v] : mx;
	for (int v = 0; v < V; v++)
		p[v] = lg[v] - mx;
	trail_k_expf(p, p, (size_t)V);
	double sum = 0;
	for (int v = 0; v < V; v++)
		sum += p[v];
	float inv = (float)(1.0 / sum);
	for (int v = 0; v < V; v++)
		p[v] *= inv;
	return log(sum) + mx;
}

/* Cross-entropy by rows: each row's loss (forward) or gradient whole in one item, with its thread's row of p. */
static void xent_fwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	int V = j->C, i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	float *p = j->y + (size_t)t * V;
	for (int i = it * j->per; i < i1; i++) {
		if (j->tgt[i] < 0)
			continue;
		const float *lg = j->a + (size_t)i * V;
		j->row[i] = softmax_row(p, lg, V) - lg[j->tgt[i]];
	}
}

double trail_k_xent_fwd(const float *logits, const int32_t *tgt, int N, int V, long *counted)
{
	trail_pool *pool = trail_compute_pool();
	int n = trail_pool_threads(pool);
	float *p = trail_malloc((size_t)n * V * sizeof *p);
	double *row = trail_malloc((size_t)(N > 0 ? N : 1) * sizeof *row), total = 0;
	if (!p || !row) {
		trail_free(p), trail_free(row);
		*counted = -1;
		return 0;
	}
	ew j = {.y = p, .a = logits, .tgt = tgt, .row = row, .N = N, .C = V, .per = rows_per((size_t)V)};
	trail_pool_run(pool, (N + j.per - 1) / j.per, xent_fwd_item, &j);
	long k = 0;
	for (int i = 0; i < N; i++) /* summed in row order */
		if (tgt[i] >= 0) {
			total += row[i];
			k++;
		}
	trail_free(p), trail_free(row);
	*counted = k;
	return total;
}

static void xent_bwd_item(void *ctx, int it, int t)
{
	const ew *j = ctx;
	int V = j->C, i1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int i = it * j->per; i < i1; i++) {
		float *d = j->y + (size_t)i * V;
		if (j->tgt[i] < 0) {
			memset(d, 0, (size_t)V * sizeof *d);
			continue;
		}
		softmax_row(d, j->a + (size_t)i * V, V);
		float s = (float)j->inv;
		for (int v = 0; v < V; v++)
			d[v] *= s;
		d[j->tgt[i]] -= s;
	}
}

void trail_k_xent_bwd(float *dlogits, const float *logits, const int32_t *tgt, int N, int V, double inv)
{
	ew j = {.y = dlogits, .a = logits, .tgt = tgt, .N = N, .C = V, .inv = inv, .per = rows_per((size_t)V)};
	par((N + j.per - 1) / j.per, xent_bwd_item, &j);
}

/* ---- the activation arena ------------------------------------------------------- */

float *trail_model_arena(trail_model *m, size_t N, size_t floats, trail_error *err)
{
	trail_free(m->acts);
	trail_free(m->tok);
	trail_free(m->tgt);
	m->cap = 0;
	m->acts = trail_malloc(floats * sizeof(float));
	m->tok = trail_calloc(N, sizeof *m->tok);
	m->tgt = trail_calloc(N, sizeof *m->tgt);
	if (!m->acts || !m->tok || !m->tgt) {
		trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		return NULL;
	}
	return m->acts;
}

float *trail_lin_rooms(const trail_model *m, trail_lin *L, float *p, size_t N)
{
	L->u = NULL;
	if (L->A)
		ARENA_TAKE(L->u, N * (size_t)m->lc.r);
	L->keep_room = NULL;
	if (m->keep_io)
		ARENA_TAKE(L->keep_room, N * (size_t)L->out);
	L->keep_dy = L->keep_room;
	return p;
}

void trail_model_arena_done(trail_model *m, int B, int T)
{
	m->B = B;
	m->T = T;
	m->cap = B * T;
	m->capT = T;
}
