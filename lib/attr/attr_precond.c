/*
 * Curvature in the projected space and scoring: the damped projected
 * covariance F + lambda I with its Cholesky factor (LAPACKE), DataInf's
 * per-layer closed form, and the scoring passes, which convert fp16 rows
 * inside their dot products and read the index once per pass.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "attr/attr_int.h"

/* Rows per block: one query streams through cache-sized blocks; many queries amortise sgemm packing. */
static size_t block_rows(size_t D, int nq)
{
	size_t r = nq > 1 ? ((size_t)8 << 20) / (D * 4) : ((size_t)256 << 10) / (D * 4);
	return r < 8 ? 8 : r;
}

/* Rows [i0, i0+n) of set s, dequantised (times their scales when `scaled`). */
static void rows_f32(const uint16_t *grads, const float *scales, size_t D, size_t i0, size_t n, float *buf,
		     int scaled)
{
	trail_attr_f16_to_f32(grads + i0 * D, buf, n * D);
	if (scaled)
		for (size_t r = 0; r < n; r++)
			cblas_sscal((int)D, scales[i0 + r], buf + r * D, 1);
}

/*
 * Per layer l (blocks of per = D/L coordinates): F_l = (1/N) sum_i g_il g_il^T,
 * lambda_l = damping * tr(F_l) / per, and the lower Cholesky factor of
 * F_l + lambda_l I. Block-diagonal, as K-FAC and LoGra treat layers: a
 * query's solve reads L per^2 floats instead of D^2.
 */
int trail_attr_curvature(uint8_t *map, const trail_attr_hdr *h, const trail_attr_off *o, trail_error *err)
{
	size_t N = h->nrecords, D = h->dim, L = (size_t)h->nlayers, per = D / L, last = (size_t)h->nsets - 1;
	const uint16_t *grads = (const uint16_t *)(map + o->grads) + last * N * D;
	const float *scales = (const float *)(map + o->scales) + last * N;
	const float *norms = (const float *)(map + o->norms) + last * N * L;
	float *F = (float *)(map + o->chol), *lambda = (float *)(map + o->lambda);
	size_t R = block_rows(D, 2);
	if (!trail_attr_has_blocks(h))
		goto datainf;
	float *buf = trail_malloc(R * D * sizeof *buf);
	if (!buf)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	memset(F, 0, L * per * per * sizeof *F);
	for (size_t i = 0; i < N; i += R) {
		size_t n = N - i < R ? N - i : R;
		rows_f32(grads, scales, D, i, n, buf, 1);
		for (size_t l = 0; l < L; l++)
			cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)per, (int)n, 1.0f / (float)N, buf + l * per,
				    (int)D, 1.0f, F + l * per * per, (int)per);
	}
	trail_free(buf);
	for (size_t l = 0; l < L; l++) {
		float *Fl = F + l * per * per;
		double tr = 0;
		for (size_t d = 0; d < per; d++)
			tr += Fl[d * per + d];
		double lam = h->damping * tr / (double)per;
		if (!(lam > 0))
			lam = h->damping; /* every gradient of the layer is zero: any positive damping will do */
		for (size_t d = 0; d < per; d++) {
			Fl[d * per + d] += (float)lam;
			for (size_t e = d + 1; e < per; e++)
				Fl[d * per + e] = 0; /* only the factor's triangle, so the file is deterministic */
		}
		lapack_int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)per, Fl, (lapack_int)per);
		if (info)
			return trail_error_set(err, TRAIL_EINTERNAL, "layer %zu: the damped covariance is not positive definite (%d)",
					       l, (int)info);
		lambda[L + l] = (float)lam;
	}
datainf: /* DataInf: lambda_l = 0.1 x mean squared norm of layer l's blocks */
	for (size_t l = 0; l < L; l++) {
		double sum = 0;
		for (size_t i = 0; i < N; i++)
			sum += norms[i * L + l];
		lambda[l] = (float)(sum > 0 ? 0.1 * sum / (double)N : 1e-30);
	}
	return TRAIL_OK;
}

int trail_attr_method(const char *name)
{
	static const char *names[] = {"influence", "graddot", "datainf", "tracin", "ekfac", "exact"};
	for (int i = 0; i < 6; i++)
		if (!strcmp(name, names[i]))
			return i;
	return -1;
}

const char *trail_attr_method_name(int method)
{
	static const char *names[] = {"influence", "graddot", "datainf", "tracin", "ekfac", "exact"};
	return method >= 0 && method < 6 ? names[method] : "?";
}

int trail_attr_query_rows(const trail_attr_index *x, int method)
{
	return method == TRAIL_ATTR_TRACIN ? x->h.nsets : 1;
}

/* ---- the scoring kernel ------------------------------------------------------------------ */

/*
 * Every score rests on dot(g, v) of an fp16 row g and a float vector v of n
 * coordinates, defined by one summation order so that every path gives the
 * same bits: eight lanes a_j start at +0; for d = 0, 1, ..., n-1 in turn
 * a_(d mod 8) = fmaf(g_d, v_d, a_(d mod 8)), fused, rounded once; then
 *     dot = ((a_0 + a_4) + (a_2 + a_6)) + ((a_1 + a_5) + (a_3 + a_7)).
 * The F16C + FMA kernel holds the eight lanes in one AVX register; the
 * portable kernel (CPUs without them, or TRAIL_ATTR_SCALAR=1 in the
 * environment) runs the same operations in C. Conversion from fp16 is exact
 * either way. Rows are split across threads and each score is computed by
 * one thread, so neither the thread count nor the kernel changes a bit.
 *
 * A kernel accumulates into lane state st[(r*nq + k)*8 + j], rows r < n at
 * g + r*ldg against vectors k < nq at v + k*ldv, over coordinates [d0, d1)
 * (d0 a multiple of 8): long vectors are taken in chunks that keep a block
 * of many queries in cache, without changing any lane's sequence.
 */
typedef void lanes_fn(const uint16_t *g, size_t ldg, size_t n, const float *v, size_t ldv, int nq, size_t d0,
		      size_t d1, float *st);

static void lanes_c(const uint16_t *g, size_t ldg, size_t n, const float *v, size_t ldv, int nq, size_t d0, size_t d1,
		    float *st)
{
	for (size_t r = 0; r < n; r++)
		for (int k = 0; k < nq; k++) {
			const uint16_t *gr = g + r * ldg;
			const float *vk = v + (size_t)k * ldv;
			float *a = st + (r * (size_t)nq + (size_t)k) * 8;
			for (size_t d = d0; d < d1; d++)
				a[d & 7] = fmaf(trail_attr_f32(gr[d]), vk[d], a[d & 7]);
		}
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TRAIL_ATTR_AVX 1
#define AVX __attribute__((target("avx2,fma,f16c")))

/* An R x Q tile of rows and vectors (R Q <= 12 accumulators, R <= 8): each converted row chunk serves Q vectors. */
static inline __attribute__((always_inline)) AVX void tile(const uint16_t *g, size_t ldg, const float *v, size_t ldv,
							  int nq, size_t d0, size_t d1, float *st, int R, int Q)
{
	__m256 acc[12], x[8];
#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
#pragma GCC unroll 12
		for (int k = 0; k < Q; k++)
			acc[r * Q + k] = _mm256_loadu_ps(st + ((size_t)r * (size_t)nq + (size_t)k) * 8);
	size_t d = d0;
	for (; d + 8 <= d1; d += 8) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++)
			x[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + (size_t)r * ldg + d)));
#pragma GCC unroll 12
		for (int k = 0; k < Q; k++) {
			__m256 y = _mm256_loadu_ps(v + (size_t)k * ldv + d);
#pragma GCC unroll 8
			for (int r = 0; r < R; r++)
				acc[r * Q + k] = _mm256_fmadd_ps(x[r], y, acc[r * Q + k]);
		}
	}
#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
#pragma GCC unroll 12
		for (int k = 0; k < Q; k++) {
			float *a = st + ((size_t)r * (size_t)nq + (size_t)k) * 8;
			_mm256_storeu_ps(a, acc[r * Q + k]);
			for (size_t e = d; e < d1; e++) /* d is a multiple of 8: lane e mod 8 */
				a[e & 7] = fmaf(trail_attr_f32(g[(size_t)r * ldg + e]), v[(size_t)k * ldv + e], a[e & 7]);
		}
}

/*
 * One vector: eight rows at a time (eight independent chains). Several:
 * 3 x 4 tiles, twelve accumulators, three converted rows and one vector
 * chunk in the sixteen AVX registers.
 */
AVX static void lanes_avx(const uint16_t *g, size_t ldg, size_t n, const float *v, size_t ldv, int nq, size_t d0,
			  size_t d1, float *st)
{
	size_t r = 0, Q = (size_t)nq;
	if (nq == 1) {
		for (; r + 8 <= n; r += 8)
			tile(g + r * ldg, ldg, v, ldv, 1, d0, d1, st + r * 8, 8, 1);
		for (; r < n; r++)
			tile(g + r * ldg, ldg, v, ldv, 1, d0, d1, st + r * 8, 1, 1);
		return;
	}
	for (; r + 3 <= n; r += 3) {
		size_t k = 0;
		for (; k + 4 <= Q; k += 4)
			tile(g + r * ldg, ldg, v + k * ldv, ldv, nq, d0, d1, st + (r * Q + k) * 8, 3, 4);
		for (; k < Q; k++)
			tile(g + r * ldg, ldg, v + k * ldv, ldv, nq, d0, d1, st + (r * Q + k) * 8, 3, 1);
	}
	for (; r < n; r++) {
		size_t k = 0;
		for (; k + 8 <= Q; k += 8)
			tile(g + r * ldg, ldg, v + k * ldv, ldv, nq, d0, d1, st + (r * Q + k) * 8, 1, 8);
		for (; k < Q; k++)
			tile(g + r * ldg, ldg, v + k * ldv, ldv, nq, d0, d1, st + (r * Q + k) * 8, 1, 1);
	}
}
#endif

/* The kernel for this CPU, or the portable one when TRAIL_ATTR_SCALAR is set (tests compare them). */
static lanes_fn *kernel(void)
{
	const char *e = getenv("TRAIL_ATTR_SCALAR");
	if (e && *e && strcmp(e, "0"))
		return lanes_c;
#ifdef TRAIL_ATTR_AVX
	int f = trail_attr_cpu();
	if ((f & TRAIL_ATTR_CPU_F16C) && (f & TRAIL_ATTR_CPU_AVX2_FMA))
		return lanes_avx;
#endif
	return lanes_c;
}

static float lanes_sum(const float *a)
{
	return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* ---- threads: contiguous ranges, results independent of how many ------------------------- */

typedef int work_fn(void *ctx, size_t i0, size_t i1);
typedef struct job {
	work_fn *fn;
	void *ctx;
	size_t i0, i1;
	int rc;
} job;

static void *job_run(void *p)
{
	job *j = p;
	j->rc = j->i0 < j->i1 ? j->fn(j->ctx, j->i0, j->i1) : TRAIL_OK;
	return NULL;
}

/* The thread count: the BLAS setting (trail_blas_threads), which attr-score's --threads sets. */
static int nthreads(void)
{
	int n = openblas_get_num_threads();
	return n < 1 ? 1 : n > 64 ? 64 : n;
}

/*
 * fn over [0, n) split into nthreads() contiguous ranges whose bounds are
 * multiples of `align`, the first on the calling thread (the others run
 * there too if a thread cannot start). The first error code, else TRAIL_OK.
 */
static int split(size_t n, size_t align, work_fn *fn, void *ctx)
{
	job jb[64];
	pthread_t th[64];
	int started[64] = {0}, nt = nthreads(), rc = TRAIL_OK;
	size_t units = (n + align - 1) / align;
	if ((size_t)nt > units)
		nt = units ? (int)units : 1;
	for (int t = 0; t < nt; t++) {
		size_t a = units * (size_t)t / (size_t)nt * align, b = units * (size_t)(t + 1) / (size_t)nt * align;
		jb[t] = (job){fn, ctx, a < n ? a : n, b < n ? b : n, TRAIL_OK};
	}
	for (int t = 1; t < nt; t++)
		started[t] = !pthread_create(&th[t], NULL, job_run, &jb[t]);
	job_run(&jb[0]);
	for (int t = 1; t < nt; t++) {
		if (started[t])
			pthread_join(th[t], NULL);
		else
			job_run(&jb[t]);
	}
	for (int t = 0; t < nt && !rc; t++)
		rc = jb[t].rc;
	return rc;
}

static int no_blocks(const trail_attr_index *x, trail_error *err)
{
	return trail_error_set(err, TRAIL_EUSAGE, "an index of %zu dimensions has no dense curvature blocks (at most %d): "
			       "score it with --method ekfac", x->h.dim, TRAIL_ATTR_MAX_DIM);
}

/* ---- scoring passes ----------------------------------------------------------------------- */

/* One pass over set `set`: out[k*N + i] += (float)(w scale_i) * dot(G_s[i], V[k]) for nq vectors V [nq,D]. */
typedef struct pass_ctx {
	lanes_fn *fn;
	const uint16_t *G;
	const float *sc, *V;
	size_t N, D;
	int nq;
	double w;
	float *out;
} pass_ctx;

static int pass_rows(void *p, size_t i0, size_t i1)
{
	const pass_ctx *c = p;
	size_t D = c->D, Q = (size_t)c->nq;
	/* one query: blocks of 64 rows over the whole row; many: 24 rows (whole tiles) by chunks of 1,024
	   coordinates, so the chunks of all queries (256 KB for 64) stay in cache while the rows stream past once */
	size_t BR = Q == 1 ? 64 : 24, DC = Q == 1 ? D : 1024;
	float *st = trail_malloc(BR * Q * 8 * sizeof *st);
	if (!st)
		return TRAIL_ENOMEM;
	for (size_t i = i0; i < i1; i += BR) {
		size_t n = i1 - i < BR ? i1 - i : BR;
		memset(st, 0, n * Q * 8 * sizeof *st);
		for (size_t d0 = 0; d0 < D; d0 += DC)
			c->fn(c->G + i * D, D, n, c->V, D, c->nq, d0, D - d0 < DC ? D : d0 + DC, st);
		for (size_t r = 0; r < n; r++) {
			float s = (float)(c->w * c->sc[i + r]);
			for (size_t k = 0; k < Q; k++)
				c->out[k * c->N + i + r] += s * lanes_sum(st + (r * Q + k) * 8);
		}
	}
	trail_free(st);
	return TRAIL_OK;
}

/* Rows [lo, hi) of the set; out [nq, hi - lo]. */
static int pass(const trail_attr_index *x, lanes_fn *fn, int set, const float *V, int nq, double w, size_t lo,
		size_t hi, float *out, trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim;
	pass_ctx c = {fn, x->grads + ((size_t)set * N + lo) * D, x->scales + (size_t)set * N + lo, V, hi - lo, D, nq, w,
		      out};
	if (split(hi - lo, 64, pass_rows, &c))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	return TRAIL_OK;
}

/*
 * Rows of V [nq,D] <- V (F + lambda I)^-1, block by block in double: L y = v_l
 * by the rows of L^T (column-oriented forward substitution), then L^T z = y
 * by the rows of L. The factors are read from the index; nothing else is
 * worth keeping between queries (a solve is L (D/L)^2 multiply-adds).
 */
typedef struct solve_ctx {
	const trail_attr_index *x;
	float *V;
} solve_ctx;

static int solve_blocks(void *p, size_t u0, size_t u1)
{
	const solve_ctx *c = p;
	size_t D = c->x->h.dim, L = (size_t)c->x->h.nlayers, per = D / L;
	double *y = trail_malloc(per * sizeof *y);
	if (!y)
		return TRAIL_ENOMEM;
	for (size_t u = u0; u < u1; u++) { /* block u: layer u % L of query u / L */
		size_t l = u % L;
		const float *Lf = c->x->chol + l * per * per, *U = c->x->cholt + l * per * per;
		float *v = c->V + u / L * D + l * per;
		for (size_t i = 0; i < per; i++)
			y[i] = v[i];
		for (size_t j = 0; j < per; j++) {
			double yj = y[j] /= U[j * per + j];
			const float *ur = U + j * per;
			for (size_t i = j + 1; i < per; i++)
				y[i] -= ur[i] * yj;
		}
		for (size_t j = per; j-- > 0;) {
			double zj = y[j] /= Lf[j * per + j];
			const float *lr = Lf + j * per;
			for (size_t i = 0; i < j; i++)
				y[i] -= lr[i] * zj;
		}
		for (size_t i = 0; i < per; i++)
			v[i] = (float)y[i];
	}
	trail_free(y);
	return TRAIL_OK;
}

/*
 * DataInf, per layer l with lambda_l:
 *   H_l^-1 v_l ~ (1/lambda_l) (v_l - (1/N) sum_i g_il (g_il . v_l) / (lambda_l + |g_il|^2))
 * One pass: each block of rows gives its per-layer dots r_il = g_il . v_l
 * (the kernel's order) and, while still in cache, adds w_il g_il to its
 * chunk's sum u_c (double). Chunks are fixed by N alone and their sums are
 * added in order, so the thread count does not change the result.
 */
typedef struct datainf_ctx {
	lanes_fn *fn;
	const trail_attr_index *x;
	const float *q;
	size_t CH;
	double *U; /* [nchunks, D] */
} datainf_ctx;

static int datainf_chunks(void *p, size_t c0, size_t c1)
{
	const datainf_ctx *c = p;
	const trail_attr_index *x = c->x;
	size_t N = x->h.nrecords, D = x->h.dim, L = (size_t)x->h.nlayers, per = D / L, set = (size_t)x->h.nsets - 1;
	const uint16_t *G = x->grads + set * N * D;
	const float *sc = x->scales + set * N, *nr = x->norms + set * N * L;
	size_t BR = 8;
	float *st = trail_malloc(BR * 8 * sizeof *st), *w = trail_malloc(BR * L * sizeof *w);
	float *buf = trail_malloc(BR * D * sizeof *buf);
	if (!st || !w || !buf) {
		trail_free(st), trail_free(w), trail_free(buf);
		return TRAIL_ENOMEM;
	}
	for (size_t ch = c0; ch < c1; ch++) {
		double *u = c->U + ch * D;
		size_t end = (ch + 1) * c->CH < N ? (ch + 1) * c->CH : N;
		memset(u, 0, D * sizeof *u);
		for (size_t i = ch * c->CH; i < end; i += BR) {
			size_t n = end - i < BR ? end - i : BR;
			for (size_t l = 0; l < L; l++) {
				memset(st, 0, n * 8 * sizeof *st);
				c->fn(G + i * D + l * per, D, n, c->q + l * per, D, 1, 0, per, st);
				for (size_t k = 0; k < n; k++) {
					size_t j = (i + k) * L + l;
					double lam = x->lambda[l], s = sc[i + k];
					/* w_il = r_il / (lambda_l + |g_il|^2) / N, folded with the row scale of g_il */
					w[k * L + l] = (float)(s * lanes_sum(st + k * 8) / (lam + nr[j]) / (double)N * s);
				}
			}
			trail_attr_f16_to_f32(G + i * D, buf, n * D);
			for (size_t k = 0; k < n; k++)
				for (size_t l = 0; l < L; l++) {
					double wk = w[k * L + l];
					const float *g = buf + k * D + l * per;
					double *ul = u + l * per;
					for (size_t e = 0; e < per; e++)
						ul[e] += wk * g[e];
				}
		}
	}
	trail_free(st), trail_free(w), trail_free(buf);
	return TRAIL_OK;
}

static int datainf_vec(const trail_attr_index *x, lanes_fn *fn, const float *q, float *v, trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim, L = (size_t)x->h.nlayers, per = D / L;
	/* 1,024 rows a chunk, or more to keep at most 512 chunks */
	size_t CH = N > (size_t)512 * 1024 ? (N + 511) / 512 : 1024, nc = (N + CH - 1) / CH;
	datainf_ctx c = {fn, x, q, CH, trail_malloc(nc * D * sizeof(double))};
	if (!c.U || split(nc, 1, datainf_chunks, &c)) {
		trail_free(c.U);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	for (size_t d = 0; d < D; d++) {
		double u = 0;
		for (size_t ch = 0; ch < nc; ch++)
			u += c.U[ch * D + d];
		v[d] = (float)(((double)q[d] - u) / x->lambda[d / per]);
	}
	trail_free(c.U);
	return TRAIL_OK;
}

int trail_attr_score(const trail_attr_index *x, int method, const float *q, int nq, float *scores,
		     trail_error *err)
{
	return trail_attr_score_range(x, method, q, nq, 0, x->h.nrecords, scores, err);
}

int trail_attr_score_range(const trail_attr_index *x, int method, const float *q, int nq, size_t lo, size_t hi,
			   float *scores, trail_error *err)
{
	size_t N = hi - lo, D = x->h.dim;
	int last = x->h.nsets - 1, rc = TRAIL_OK;
	lanes_fn *fn = kernel();
	if (lo >= hi || hi > x->h.nrecords)
		return trail_error_set(err, TRAIL_EUSAGE, "records %zu:%zu of %llu are out of range", lo, hi,
				       (unsigned long long)x->h.nrecords);
	if (nq < 1)
		return trail_error_set(err, TRAIL_EUSAGE, "no query");
	if (method < 0 || method > TRAIL_ATTR_EKFAC)
		return trail_error_set(err, TRAIL_EUSAGE, "unknown method %d", method);
	if (method == TRAIL_ATTR_INFLUENCE && !x->chol)
		return no_blocks(x, err);
	memset(scores, 0, (size_t)nq * N * sizeof *scores);
	float *V = trail_malloc((size_t)nq * D * sizeof *V);
	if (!V)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (method == TRAIL_ATTR_TRACIN) {
		/* q holds nq blocks of nsets rows: gather each set's rows; sets add up in order */
		size_t S = (size_t)x->h.nsets;
		for (size_t s = 0; s < S && !rc; s++) {
			for (int k = 0; k < nq; k++)
				memcpy(V + (size_t)k * D, q + ((size_t)k * S + s) * D, D * sizeof *V);
			rc = pass(x, fn, (int)s, V, nq, trail_attr_set_weight(x, (int)s), lo, hi, scores, err);
		}
		trail_free(V);
		return rc;
	}
	memcpy(V, q, (size_t)nq * D * sizeof *V);
	if (method == TRAIL_ATTR_INFLUENCE) {
		solve_ctx c = {x, V};
		if (split((size_t)nq * (size_t)x->h.nlayers, 1, solve_blocks, &c))
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	} else if (method == TRAIL_ATTR_EKFAC)
		rc = trail_attr_ekfac_precond(x, V, nq, err);
	else if (method == TRAIL_ATTR_DATAINF)
		for (int k = 0; k < nq && !rc; k++)
			rc = datainf_vec(x, fn, q + (size_t)k * D, V + (size_t)k * D, err);
	if (!rc)
		rc = pass(x, fn, last, V, nq, 1.0, lo, hi, scores, err);
	trail_free(V);
	return rc;
}

int trail_attr_self_influence(const trail_attr_index *x, float *out, trail_error *err)
{
	if (!x->chol)
		return no_blocks(x, err);
	size_t N = x->h.nrecords, D = x->h.dim, R = block_rows(D, 2), set = (size_t)x->h.nsets - 1;
	float *buf = trail_malloc(R * D * sizeof *buf);
	if (!buf)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < N; i += R) {
		size_t n = N - i < R ? N - i : R;
		rows_f32(x->grads + set * N * D, x->scales + set * N, D, i, n, buf, 1);
		/* rows y = g L^-T per block, so |y|^2 = g^T (F + lambda I)^-1 g */
		size_t L = (size_t)x->h.nlayers, per = D / L;
		for (size_t l = 0; l < L; l++)
			cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)n, (int)per, 1.0f,
				    x->chol + l * per * per, (int)per, buf + l * per, (int)D);
		for (size_t r = 0; r < n; r++) {
			double s = 0;
			for (size_t d = 0; d < D; d++)
				s += (double)buf[r * D + d] * buf[r * D + d];
			out[i + r] = (float)s;
		}
	}
	trail_free(buf);
	return TRAIL_OK;
}

/* ---- the naive double-precision reference ------------------------------------------ */

static double row_at(const trail_attr_index *x, size_t set, size_t i, size_t d)
{
	size_t N = x->h.nrecords, D = x->h.dim;
	return (double)trail_attr_f32(x->grads[(set * N + i) * D + d]) * x->scales[set * N + i];
}

int trail_attr_score_ref(const trail_attr_index *x, int method, const float *q, int nq, double *scores,
			 trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim, L = (size_t)x->h.nlayers, per = D / L, S = (size_t)x->h.nsets;
	size_t last = S - 1;
	double *v = trail_malloc(D * sizeof *v), *F = NULL, *E = NULL;
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (method == TRAIL_ATTR_EKFAC) { /* every query's preconditioned vector, from the rows */
		int rc;
		if (!(E = trail_malloc((size_t)nq * D * sizeof *E))) {
			trail_free(v);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		if ((rc = trail_attr_ekfac_ref(x, q, nq, E, err))) {
			trail_free(v), trail_free(E);
			return rc;
		}
	}
	if (method == TRAIL_ATTR_INFLUENCE) {
		/* F + lambda I in double, its own Cholesky factor */
		if (!(F = trail_calloc(D * D, sizeof *F))) {
			trail_free(v);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		/* the block-diagonal F + lambda I in double (zero across layers), its own Cholesky factor */
		for (size_t i = 0; i < N; i++)
			for (size_t a = 0; a < D; a++) {
				double ga = row_at(x, last, i, a);
				for (size_t b = (a / per) * per; b <= a; b++)
					F[a * D + b] += ga * row_at(x, last, i, b) / (double)N;
			}
		for (size_t a = 0; a < D; a++)
			F[a * D + a] += x->lambda[L + a / per];
		for (size_t j = 0; j < D; j++) {
			double s = F[j * D + j];
			for (size_t k = 0; k < j; k++)
				s -= F[j * D + k] * F[j * D + k];
			F[j * D + j] = sqrt(s);
			for (size_t i = j + 1; i < D; i++) {
				double t = F[i * D + j];
				for (size_t k = 0; k < j; k++)
					t -= F[i * D + k] * F[j * D + k];
				F[i * D + j] = t / F[j * D + j];
			}
		}
	}
	for (int k = 0; k < nq; k++) {
		double *out = scores + (size_t)k * N;
		memset(out, 0, N * sizeof *out);
		if (method == TRAIL_ATTR_TRACIN) {
			for (size_t s = 0; s < S; s++) {
				const float *qs = q + ((size_t)k * S + s) * D;
				double w = trail_attr_set_weight(x, (int)s);
				for (size_t i = 0; i < N; i++) {
					double t = 0;
					for (size_t d = 0; d < D; d++)
						t += row_at(x, s, i, d) * qs[d];
					out[i] += w * t;
				}
			}
			continue;
		}
		const float *qk = q + (size_t)k * D;
		for (size_t d = 0; d < D; d++)
			v[d] = E ? E[(size_t)k * D + d] : qk[d];
		if (method == TRAIL_ATTR_INFLUENCE) {
			for (size_t i = 0; i < D; i++) { /* L y = v */
				for (size_t j = 0; j < i; j++)
					v[i] -= F[i * D + j] * v[j];
				v[i] /= F[i * D + i];
			}
			for (size_t i = D; i-- > 0;) { /* L^T z = y */
				for (size_t j = i + 1; j < D; j++)
					v[i] -= F[j * D + i] * v[j];
				v[i] /= F[i * D + i];
			}
		} else if (method == TRAIL_ATTR_DATAINF) {
			for (size_t l = 0; l < L; l++) {
				double lam = x->lambda[l];
				double *u = trail_calloc(per, sizeof *u);
				if (!u) {
					trail_free(v), trail_free(F);
					return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				}
				for (size_t i = 0; i < N; i++) {
					double r = 0, nn = 0;
					for (size_t e = 0; e < per; e++) {
						double g = row_at(x, last, i, l * per + e);
						r += g * qk[l * per + e];
						nn += g * g;
					}
					for (size_t e = 0; e < per; e++)
						u[e] += r / (lam + nn) / (double)N * row_at(x, last, i, l * per + e);
				}
				for (size_t e = 0; e < per; e++)
					v[l * per + e] = ((double)qk[l * per + e] - u[e]) / lam;
				trail_free(u);
			}
		}
		for (size_t i = 0; i < N; i++) {
			double t = 0;
			for (size_t d = 0; d < D; d++)
				t += row_at(x, last, i, d) * v[d];
			out[i] = t;
		}
	}
	trail_free(v), trail_free(F), trail_free(E);
	return TRAIL_OK;
}
