/*
 * The model's threads and matrix products: a pool of worker threads, and
 * products cut into fixed blocks of the output that each run whole on one
 * thread. float32 products go to OpenBLAS on one thread per block;
 * bfloat16 ones (bf16 inputs rounded to nearest even, float32 sums and
 * outputs) to oneDNN's matmul primitive, one primitive per block shape,
 * made once and kept. The blocks depend only on the product's shape,
 * never on the thread count, and no block is split along the sum, so
 * the bits are the same on any number of threads.
 *
 * oneDNN (Debian's build) runs its primitives on OpenMP: every thread that
 * calls one sets its own OpenMP team to one thread first, so a block is
 * computed by the calling thread alone.
 */
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

/* ---- the pool ------------------------------------------------------------------------ */

/*
 * A run is announced by bumping gen and finished when busy reaches 0.
 * Decoding one token makes some 200 runs of a few tens of microseconds, so
 * both sides first spin on the counters for about as long as a run takes
 * (SPIN polls), then sleep on the condition variables: a worker woken by a
 * futex for every run would spend more time waking than computing. The
 * sleeper counts and the counters are sequentially consistent, so a side
 * that goes to sleep is either seen by the other or sees its change.
 * Which thread takes which item never changes what an item computes.
 */
enum { SPIN = 300 };

struct trail_pool {
	int n; /* threads, the caller included */
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	atomic_ulong gen;
	atomic_int busy, sleeping, waiting;
	int stop;
	trail_pool_fn fn;
	void *ctx;
	int items;
	atomic_int next;
};

typedef struct { trail_pool *p; int t; } worker_arg;

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void claim(trail_pool *p, int t)
{
	int i;
	while ((i = atomic_fetch_add(&p->next, 1)) < p->items)
		p->fn(p->ctx, i, t);
}

static void *worker(void *a)
{
	worker_arg w = *(worker_arg *)a;
	trail_pool *p = w.p;
	unsigned long seen = 0;
	trail_free(a);
	omp_set_num_threads(1);
	for (;;) {
		int s = 0;
		while (atomic_load(&p->gen) == seen && s < SPIN)
			relax(), s++;
		if (atomic_load(&p->gen) == seen) {
			pthread_mutex_lock(&p->mu);
			atomic_fetch_add(&p->sleeping, 1);
			while (atomic_load(&p->gen) == seen && !p->stop)
				pthread_cond_wait(&p->go, &p->mu);
			atomic_fetch_sub(&p->sleeping, 1);
			int stop = p->stop;
			pthread_mutex_unlock(&p->mu);
			if (stop)
				break;
		}
		seen = atomic_load(&p->gen);
		claim(p, w.t);
		if (atomic_fetch_sub(&p->busy, 1) == 1 && atomic_load(&p->waiting)) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
	return NULL;
}

trail_pool *trail_pool_new(int n)
{
	trail_pool *p = trail_calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->n = 1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	p->th = n > 1 ? trail_calloc((size_t)n, sizeof *p->th) : NULL;
	for (int t = 1; p->th && t < n; t++) {
		worker_arg *w = trail_malloc(sizeof *w);
		if (!w)
			break;
		*w = (worker_arg){p, t};
		if (pthread_create(&p->th[t], NULL, worker, w)) {
			trail_free(w);
			break;
		}
		p->n++;
	}
	return p;
}

void trail_pool_free(trail_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int t = 1; t < p->n; t++)
		pthread_join(p->th[t], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	trail_free(p->th);
	trail_free(p);
}

int trail_pool_threads(const trail_pool *p)
{
	return p ? p->n : 1;
}

void trail_pool_run(trail_pool *p, int items, trail_pool_fn fn, void *ctx)
{
	if (!p || p->n < 2 || items < 2) {
		for (int i = 0; i < items; i++)
			fn(ctx, i, 0);
		return;
	}
	p->fn = fn;
	p->ctx = ctx;
	p->items = items;
	atomic_store(&p->next, 0);
	atomic_store(&p->busy, p->n - 1);
	atomic_fetch_add(&p->gen, 1);
	if (atomic_load(&p->sleeping)) {
		pthread_mutex_lock(&p->mu);
		pthread_cond_broadcast(&p->go);
		pthread_mutex_unlock(&p->mu);
	}
	claim(p, 0);
	for (int s = 0; atomic_load(&p->busy) && s < SPIN; s++)
		relax();
	if (atomic_load(&p->busy)) {
		pthread_mutex_lock(&p->mu);
		atomic_store(&p->waiting, 1);
		while (atomic_load(&p->busy))
			pthread_cond_wait(&p->done, &p->mu);
		atomic_store(&p->waiting, 0);
		pthread_mutex_unlock(&p->mu);
	}
}

int trail_threads_default(void)
{
	cpu_set_t s;
	if (sched_getaffinity(0, sizeof s, &s))
		return 1;
	int n = CPU_COUNT(&s);
	return n < 1 ? 1 : n > TRAIL_MAX_THREADS ? TRAIL_MAX_THREADS : n;
}

/* ---- precision ---------------------------------------------------------------------- */

int trail_precision_parse(const char *s, int *prec, trail_error *err)
{
	if (!strcmp(s, "fp32"))
		*prec = TRAIL_PREC_FP32;
	else if (!strcmp(s, "bf16"))
		*prec = TRAIL_PREC_BF16;
	else if (!strcmp(s, "int8"))
		*prec = TRAIL_PREC_INT8;
	else
		return trail_error_set(err, TRAIL_EUSAGE, "--precision: '%s' is not fp32, bf16 or int8", s);
	return TRAIL_OK;
}

const char *trail_precision_name(int prec)
{
	return prec == TRAIL_PREC_BF16 ? "bf16" : prec == TRAIL_PREC_INT8 ? "int8" : "fp32";
}

const char *trail_compute_isa(void)
{
	dnnl_cpu_isa_t i = dnnl_get_effective_cpu_isa();
#define HAS(x) (((unsigned)i & (unsigned)(x)) == (unsigned)(x))
	return HAS(dnnl_cpu_isa_avx512_core_amx)    ? "avx512_core_amx"
	       : HAS(dnnl_cpu_isa_avx512_core_bf16) ? "avx512_core_bf16"
	       : HAS(dnnl_cpu_isa_avx512_core)      ? "avx512_core"
	       : HAS(dnnl_cpu_isa_avx2)             ? "avx2"
	       : HAS(dnnl_cpu_isa_avx)              ? "avx"
	       : HAS(dnnl_cpu_isa_sse41)            ? "sse41"
						    : "any";
}

int trail_precision_default(void)
{
	dnnl_cpu_isa_t i = dnnl_get_effective_cpu_isa();
	return HAS(dnnl_cpu_isa_avx512_core_bf16) ? TRAIL_PREC_BF16 : TRAIL_PREC_FP32;
#undef HAS
}

/* ---- oneDNN --------------------------------------------------------------------------- */

typedef struct prim {
	int M, N, K, tb;
	dnnl_memory_desc_t a, b, c, sp; /* sp: its scratchpad, which each thread gives it (never shared) */
	size_t spn;
	dnnl_primitive_t p;
} prim;

static struct {
	pthread_mutex_t mu;
	int ready, failed;
	dnnl_engine_t eng;
	prim *tab;
	int n, cap;
} dn = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int dnnl_ready(trail_error *err)
{
	pthread_mutex_lock(&dn.mu);
	if (!dn.ready && !dn.failed) {
		if (dnnl_engine_create(&dn.eng, dnnl_cpu, 0) == dnnl_success)
			dn.ready = 1;
		else
			dn.failed = 1;
	}
	pthread_mutex_unlock(&dn.mu);
	return dn.ready ? TRAIL_OK : trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: no CPU engine");
}

/* The primitive of C [M,N] f32 dense = A [M,K] bf16 dense times B [K,N] bf16 dense (or B^T [N,K] when tb). */
__attribute__((unused)) static const prim *prim_get(int M, int N, int K, int tb)
{
	const prim *r = NULL;
	pthread_mutex_lock(&dn.mu);
	for (int i = 0; i < dn.n && !r; i++)
		if (dn.tab[i].M == M && dn.tab[i].N == N && dn.tab[i].K == K && dn.tab[i].tb == tb)
			r = &dn.tab[i];
	if (!r && dn.ready) {
		if (dn.n == dn.cap) {
			int cap = dn.cap ? 2 * dn.cap : 64;
			prim *t = trail_realloc(dn.tab, (size_t)cap * sizeof *t);
			if (!t)
				goto out;
			/* primitives are pointers: moving the table keeps them; callers hold entries only under use */
			dn.tab = t, dn.cap = cap;
		}
		prim *e = &dn.tab[dn.n];
		memset(e, 0, sizeof *e);
		e->M = M, e->N = N, e->K = K, e->tb = tb;
		dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N}, sa = {K, 1}, sb = {N, 1}, sbt = {1, K}, sc = {N, 1};
		dnnl_matmul_desc_t md;
		dnnl_primitive_desc_t pd = NULL;
		dnnl_primitive_attr_t at = NULL;
		if (dnnl_primitive_attr_create(&at) || dnnl_primitive_attr_set_scratchpad_mode(at, dnnl_scratchpad_mode_user)) {
			if (at)
				dnnl_primitive_attr_destroy(at);
			goto out;
		}
		if (dnnl_memory_desc_init_by_strides(&e->a, 2, da, dnnl_bf16, sa) ||
		    dnnl_memory_desc_init_by_strides(&e->b, 2, db, dnnl_bf16, tb ? sbt : sb) ||
		    dnnl_memory_desc_init_by_strides(&e->c, 2, dc, dnnl_f32, sc) ||
		    dnnl_matmul_desc_init(&md, &e->a, &e->b, NULL, &e->c) ||
		    dnnl_primitive_desc_create(&pd, &md, at, dn.eng, NULL) || dnnl_primitive_create(&e->p, pd)) {
			if (pd)
				dnnl_primitive_desc_destroy(pd);
			dnnl_primitive_attr_destroy(at);
			goto out;
		}
		e->sp = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
		e->spn = dnnl_memory_desc_get_size(&e->sp);
		dnnl_primitive_desc_destroy(pd);
		dnnl_primitive_attr_destroy(at);
		r = &dn.tab[dn.n++];
	}
out:;
	/* copy out what the caller needs: the table may move when another shape is added */
	static _Thread_local prim copy;
	if (r)
		copy = *r;
	pthread_mutex_unlock(&dn.mu);
	return r ? &copy : NULL;
}

static uint16_t to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

/* dst [rows, cols] (row stride dld) = bf16 of src (r, c) = tr ? src[c*sld + r] : src[r*sld + c] */
__attribute__((unused)) static void cvt(uint16_t *dst, int dld, const float *src, int sld, int rows, int cols, int tr)
{
	if (!tr) {
		for (int r = 0; r < rows; r++) {
			const float *s = src + (size_t)r * sld;
			uint16_t *d = dst + (size_t)r * dld;
			for (int c = 0; c < cols; c++)
				d[c] = to_bf16(s[c]);
		}
		return;
	}
	for (int r0 = 0; r0 < rows; r0 += 32)
		for (int c0 = 0; c0 < cols; c0 += 32)
			for (int r = r0; r < rows && r < r0 + 32; r++)
				for (int c = c0; c < cols && c < c0 + 32; c++)
					dst[(size_t)r * dld + c] = to_bf16(src[(size_t)c * sld + r]);
}

/* ---- bf16 conversion, vectorised ------------------------------------------------------- */

/*
 * The same rounding as to_bf16 (nearest even, NaN kept a NaN), sixteen
 * lanes at a time: the bits do not depend on the lanes, so the AVX-512
 * build and the portable one agree with each other and with to_bf16.
 */
typedef uint32_t vu32 __attribute__((vector_size(64)));
typedef uint16_t vu16 __attribute__((vector_size(32)));

#define CVT_BODY                                                                          \
	size_t i = 0;                                                                     \
	for (; i + 16 <= n; i += 16) {                                                    \
		vu32 u;                                                                   \
		memcpy(&u, src + i, sizeof u);                                            \
		vu32 nan = (vu32)((u & 0x7fffffffu) > 0x7f800000u);                       \
		vu32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, q = (u >> 16) | 0x40u;   \
		vu16 h = __builtin_convertvector((r & ~nan) | (q & nan), vu16);           \
		memcpy(dst + i, &h, sizeof h);                                            \
	}                                                                                 \
	for (; i < n; i++)                                                                \
		dst[i] = to_bf16(src[i]);

__attribute__((target("avx512f,avx512bw"))) static void cvt_avx512(uint16_t *dst, const float *src, size_t n)
{
	CVT_BODY
}

static void cvt_any(uint16_t *dst, const float *src, size_t n)
{
	CVT_BODY
}
#undef CVT_BODY

void trail_bf16_cvt(uint16_t *dst, const float *src, size_t n)
{
	static int wide = -1;
	if (wide < 0) {
		__builtin_cpu_init();
		wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
	}
	if (wide)
		cvt_avx512(dst, src, n);
	else
		cvt_any(dst, src, n);
}

/*
 * bf16 copies of the operands that stay put through a forward and its
 * backward (weights, and the activations the forward keeps), made on
 * their first product of a pass and used by every later one. A new pass
 * (trail_bf16_pass, at the start of each forward) makes each copy stale,
 * and frees those the last pass did not use.
 */
typedef struct bfop {
	const float *src;
	int rows, cols, ld;
	uint16_t *h;
	size_t cap;
	unsigned long made, used; /* the passes it was converted in and last used in */
} bfop;

static struct {
	bfop *e;
	int n, cap;
	unsigned long pass;
} BC = {.pass = 1};

void trail_bf16_pass(void)
{
	int k = 0;
	for (int i = 0; i < BC.n; i++)
		if (BC.e[i].used + 1 >= BC.pass)
			BC.e[k++] = BC.e[i];
		else
			trail_free(BC.e[i].h);
	BC.n = k;
	BC.pass++;
}

void trail_bf16_drop(const float *src)
{
	for (int i = 0; i < BC.n; i++)
		if (BC.e[i].src == src)
			BC.e[i].made = 0;
}

/* The entry of src as [rows, cols] (row stride ld), made (not yet converted) when new; NULL when out of memory. */
static bfop *bf_entry(const float *src, int rows, int cols, int ld)
{
	bfop *e = NULL;
	for (int i = 0; i < BC.n && !e; i++)
		if (BC.e[i].src == src && BC.e[i].rows == rows && BC.e[i].cols == cols && BC.e[i].ld == ld)
			e = &BC.e[i];
	if (!e) {
		if (BC.n == BC.cap) {
			int cap = BC.cap ? 2 * BC.cap : 64;
			bfop *t = trail_realloc(BC.e, (size_t)cap * sizeof *t);
			if (!t)
				return NULL;
			BC.e = t, BC.cap = cap;
		}
		e = &BC.e[BC.n++];
		*e = (bfop){.src = src, .rows = rows, .cols = cols, .ld = ld};
	}
	size_t want = (size_t)rows * (size_t)cols;
	if (want > e->cap) {
		uint16_t *h = trail_malloc(want * sizeof *h);
		if (!h)
			return NULL;
		trail_free(e->h);
		e->h = h, e->cap = want, e->made = 0;
	}
	e->used = BC.pass;
	return e;
}

/* ---- blocked products ---------------------------------------------------------------- */

enum { MB = 128, NB = 256 };

static struct {
	pthread_mutex_t mu;
	trail_pool *pool;
	int threads, prec;
	uint16_t *a, *b;
	size_t na, nb;
	float *tmp[TRAIL_MAX_THREADS]; /* [MB*NB] per thread */
	dnnl_stream_t st[TRAIL_MAX_THREADS]; /* made by its own thread, on its first block */
	void *sp[TRAIL_MAX_THREADS];          /* each thread's scratchpad, grown by that thread */
	size_t spn[TRAIL_MAX_THREADS];
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .threads = 1};

typedef struct job {
	int ta, tb, M, N, K, lda, ldb, ldc, bf, mi, nj;
	float alpha, beta;
	const float *A, *B;
	float *C;
} job;

static void blk(const job *g, int u, int *i0, int *mb, int *j0, int *nb)
{
	int bi = u / g->nj, bj = u % g->nj;
	*i0 = bi * MB, *j0 = bj * NB;
	*mb = g->M - *i0 < MB ? g->M - *i0 : MB;
	*nb = g->N - *j0 < NB ? g->N - *j0 : NB;
}

static void f32_unit(void *ctx, int u, int t)
{
	const job *g = ctx;
	int i0, mb, j0, nb;
	blk(g, u, &i0, &mb, &j0, &nb);
	cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, mb, nb, g->K,
		    g->alpha, g->ta ? g->A + i0 : g->A + (size_t)i0 * g->lda, g->lda,
		    g->tb ? g->B + (size_t)j0 * g->ldb : g->B + j0, g->ldb, g->beta, g->C + (size_t)i0 * g->ldc + j0, g->ldc);
}

static int grow(uint16_t **p, size_t *n, size_t want)
{
	if (want <= *n)
		return 0;
	uint16_t *q = trail_malloc(want * sizeof *q);
	if (!q)
		return -1;
	trail_free(*p);
	*p = q, *n = want;
	return 0;
}

int trail_compute_set(int threads, int prec, trail_error *err)
{
	if (threads < 1)
		threads = 1;
	if (threads > TRAIL_MAX_THREADS)
		threads = TRAIL_MAX_THREADS;
	if (prec == TRAIL_PREC_INT8) /* a serving precision: trail_infer_set_precision */
		return trail_error_set(err, TRAIL_EUSAGE, "--precision int8 is for serving (lora-serve); training and "
				       "attribution take fp32 or bf16");
	if (prec == TRAIL_PREC_BF16 && dnnl_ready(err))
		return err ? err->code : TRAIL_EINTERNAL;
	pthread_mutex_lock(&G.mu);
	if (!G.pool || trail_pool_threads(G.pool) != threads) {
		trail_pool_free(G.pool);
		G.pool = trail_pool_new(threads);
	}
	for (int t = 0; t < TRAIL_MAX_THREADS; t++)
		if (t < threads && prec == TRAIL_PREC_BF16 && !G.tmp[t])
			G.tmp[t] = trail_malloc((size_t)MB * NB * sizeof(float));
	G.threads = trail_pool_threads(G.pool);
	G.prec = prec;
	pthread_mutex_unlock(&G.mu);
	openblas_set_num_threads(1); /* the pool's threads each run one block */
	omp_set_num_threads(1);
	return G.pool ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

int trail_compute_threads(void)
{
	return G.threads;
}

int trail_compute_precision(void)
{
	return G.prec;
}

trail_pool *trail_compute_pool(void)
{
	return G.pool;
}

/* ---- bf16 products of bf16 operands ---------------------------------------------------- */

/*
 * C [mb,nb] (row stride ldc) = alpha op(A) op(B) + beta C, A and B bf16 in
 * their stored layouts (op: transposed when ta, tb), written by oneDNN
 * straight into C (alpha as the output scale, beta as a sum post-op).
 */
/*
 * A bf16 x bf16 -> f32 matmul primitive of nd dimensions with these strides,
 * output scale alpha and sum post-op beta, user scratchpad (its descriptor
 * and size in sp, spn); NULL when oneDNN cannot make it.
 */
static dnnl_primitive_t matmul_prim(int nd, const dnnl_dim_t *da, const dnnl_dim_t *db, const dnnl_dim_t *dc,
				    const dnnl_dim_t *sa, const dnnl_dim_t *sb, const dnnl_dim_t *sc, float alpha,
				    float beta, dnnl_memory_desc_t *a, dnnl_memory_desc_t *b, dnnl_memory_desc_t *c,
				    dnnl_memory_desc_t *sp, size_t *spn)
{
	dnnl_primitive_t p = NULL;
	dnnl_matmul_desc_t md;
	dnnl_primitive_desc_t pd = NULL;
	dnnl_primitive_attr_t at = NULL;
	dnnl_post_ops_t po = NULL;
	int bad = dnnl_primitive_attr_create(&at) || dnnl_primitive_attr_set_scratchpad_mode(at, dnnl_scratchpad_mode_user) ||
		  (alpha != 1 && dnnl_primitive_attr_set_output_scales(at, 1, 0, &alpha));
	if (!bad && beta != 0)
		bad = dnnl_post_ops_create(&po) || dnnl_post_ops_append_sum(po, beta) ||
		      dnnl_primitive_attr_set_post_ops(at, po);
	bad = bad || dnnl_memory_desc_init_by_strides(a, nd, da, dnnl_bf16, sa) ||
	      dnnl_memory_desc_init_by_strides(b, nd, db, dnnl_bf16, sb) ||
	      dnnl_memory_desc_init_by_strides(c, nd, dc, dnnl_f32, sc) ||
	      dnnl_matmul_desc_init(&md, a, b, NULL, c) || dnnl_primitive_desc_create(&pd, &md, at, dn.eng, NULL) ||
	      dnnl_primitive_create(&p, pd);
	if (!bad) {
		*sp = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
		*spn = dnnl_memory_desc_get_size(sp);
	} else {
		p = NULL;
	}
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (po)
		dnnl_post_ops_destroy(po);
	if (at)
		dnnl_primitive_attr_destroy(at);
	return p;
}

typedef struct hprim {
	int M, N, K, ta, tb, lda, ldb, ldc;
	float alpha, beta;
	dnnl_memory_desc_t a, b, c, sp;
	size_t spn;
	dnnl_primitive_t p;
} hprim;

static struct {
	hprim *tab;
	int n, cap;
} HP;

static const hprim *hprim_get(int M, int N, int K, int ta, int tb, int lda, int ldb, int ldc, float alpha, float beta)
{
	for (int i = 0; i < HP.n; i++) {
		const hprim *e = &HP.tab[i];
		if (e->M == M && e->N == N && e->K == K && e->ta == ta && e->tb == tb && e->lda == lda && e->ldb == ldb &&
		    e->ldc == ldc && e->alpha == alpha && e->beta == beta)
			return e->p ? e : NULL;
	}
	if (HP.n == HP.cap) {
		int cap = HP.cap ? 2 * HP.cap : 64;
		hprim *t = trail_realloc(HP.tab, (size_t)cap * sizeof *t);
		if (!t)
			return NULL;
		HP.tab = t, HP.cap = cap;
	}
	hprim *e = &HP.tab[HP.n++];
	memset(e, 0, sizeof *e); /* kept with p NULL when oneDNN cannot make it: not asked again */
	*e = (hprim){.M = M, .N = N, .K = K, .ta = ta, .tb = tb, .lda = lda, .ldb = ldb, .ldc = ldc, .alpha = alpha,
		     .beta = beta};
	dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N};
	dnnl_dims_t sa = {ta ? 1 : lda, ta ? lda : 1}, sb = {tb ? 1 : ldb, tb ? ldb : 1}, sc = {ldc, 1};
	e->p = matmul_prim(2, da, db, dc, sa, sb, sc, alpha, beta, &e->a, &e->b, &e->c, &e->sp, &e->spn);
	return e->p ? e : NULL;
}

/* ---- products with cached bf16 operands ----------------------------------------------- */

typedef struct hjob {
	int M, N, K, ta, tb, lda, ldb, ldc, mi, nj;
	const uint16_t *A, *B;
	float *C;
	hprim pr[2][2]; /* [edge row block][edge column block] */
	/* conversions: up to two [rows, cols] (row stride ld) matrices into dense bf16, in items of crow rows */
	struct hcv {
		const float *src;
		uint16_t *dst;
		int rows, cols, ld, crow, items, ent; /* ent: the cache entry it fills, or -1 */
	} cv[2];
	int ncv;
} hjob;

static void hcvt_unit(void *ctx, int u, int t)
{
	const hjob *g = ctx;
	int k = 0;
	while (k + 1 < g->ncv && u >= g->cv[k].items)
		u -= g->cv[k++].items;
	int r0 = u * g->cv[k].crow, r1 = r0 + g->cv[k].crow, cols = g->cv[k].cols, ld = g->cv[k].ld;
	if (r1 > g->cv[k].rows)
		r1 = g->cv[k].rows;
	if (ld == cols)
		trail_bf16_cvt(g->cv[k].dst + (size_t)r0 * cols, g->cv[k].src + (size_t)r0 * ld, (size_t)(r1 - r0) * cols);
	else
		for (int r = r0; r < r1; r++)
			trail_bf16_cvt(g->cv[k].dst + (size_t)r * cols, g->cv[k].src + (size_t)r * ld, (size_t)cols);
}

/*
 * Run matmul primitive p on pool thread t alone: src A, weights B, dst C
 * (descriptors a, b, c), its scratchpad (sp, spn bytes) in the thread's own
 * buffer, on the thread's own stream. 0 when done, -1 otherwise.
 */
static int run_on(int t, dnnl_primitive_t p, const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b,
		  const dnnl_memory_desc_t *c, const dnnl_memory_desc_t *sp, size_t spn, const void *A, const void *B,
		  void *C)
{
	dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
	int rc = -1;
	omp_set_num_threads(1);
	if (spn > G.spn[t]) {
		void *q = trail_malloc(spn);
		if (q) {
			trail_free(G.sp[t]);
			G.sp[t] = q, G.spn[t] = spn;
		}
	}
	if (!G.st[t] && dnnl_stream_create(&G.st[t], dn.eng, dnnl_stream_default_flags))
		G.st[t] = NULL;
	if (G.st[t] && !dnnl_memory_create(&ma, a, dn.eng, (void *)A) && !dnnl_memory_create(&mb, b, dn.eng, (void *)B) &&
	    !dnnl_memory_create(&mc, c, dn.eng, C) && spn <= G.spn[t] && !dnnl_memory_create(&ms, sp, dn.eng, G.sp[t])) {
		dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc},
					   {DNNL_ARG_SCRATCHPAD, ms}};
		if (dnnl_primitive_execute(p, G.st[t], 4, args) == dnnl_success && dnnl_stream_wait(G.st[t]) == dnnl_success)
			rc = 0;
	}
	dnnl_memory_destroy(ma), dnnl_memory_destroy(mb), dnnl_memory_destroy(mc), dnnl_memory_destroy(ms);
	return rc;
}

static void hblk_unit(void *ctx, int u, int t)
{
	const hjob *g = ctx;
	int bi = u / g->nj, bj = u % g->nj, i0 = bi * MB, j0 = bj * NB;
	int mb = g->M - i0 < MB ? g->M - i0 : MB, nb = g->N - j0 < NB ? g->N - j0 : NB;
	const hprim *p = &g->pr[mb < MB][nb < NB];
	const uint16_t *a = g->ta ? g->A + i0 : g->A + (size_t)i0 * g->lda;
	const uint16_t *b = g->tb ? g->B + (size_t)j0 * g->ldb : g->B + j0;
	run_on(t, p->p, &p->a, &p->b, &p->c, &p->sp, p->spn, a, b, g->C + (size_t)i0 * g->ldc + j0);
}

/* The bf16 operand for X [rows, cols] (row stride ld): its cached copy, or a conversion queued into g. */
static const uint16_t *hoperand(hjob *g, const float *X, int rows, int cols, int ld, int keep, uint16_t **tmp,
				size_t *ntmp)
{
	uint16_t *dst;
	int ent = -1;
	if (keep) {
		bfop *e = bf_entry(X, rows, cols, ld);
		if (!e)
			return NULL;
		if (e->made == BC.pass)
			return e->h;
		dst = e->h;
		ent = (int)(e - BC.e);
	} else {
		if (grow(tmp, ntmp, (size_t)rows * cols))
			return NULL;
		dst = *tmp;
	}
	int crow = 16384 / (cols > 0 ? cols : 1);
	crow = crow < 1 ? 1 : crow;
	g->cv[g->ncv++] = (struct hcv){.src = X, .dst = dst, .rows = rows, .cols = cols, .ld = ld, .crow = crow,
					       .items = (rows + crow - 1) / crow, .ent = ent};
	return dst;
}

/* The bf16 product of trail_gemm_x; 0 when done, -1 when it cannot be (then nothing was written to C). */
static int hgemm(int flags, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
		 int ldb, float beta, float *C, int ldc)
{
	if (!dn.ready || K <= 0)
		return -1;
	hjob g = {.M = M, .N = N, .K = K, .ta = ta, .tb = tb, .ldc = ldc, .mi = (M + MB - 1) / MB, .nj = (N + NB - 1) / NB,
		  .C = C};
	/* stored A: [K,M] when ta, else [M,K]; stored B: [N,K] when tb, else [K,N]; the copies are dense */
	int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
	g.A = hoperand(&g, A, ar, ac, lda, flags & TRAIL_G_KEEP_A, &G.a, &G.na);
	g.B = g.A ? hoperand(&g, B, br, bc, ldb, flags & TRAIL_G_KEEP_B, &G.b, &G.nb) : NULL;
	if (!g.A || !g.B)
		return -1;
	g.lda = ac, g.ldb = bc;
	for (int e = 0; e < 4; e++) {
		int em = e >> 1, en = e & 1, mb = em ? M % MB : MB, nb = en ? N % NB : NB;
		if (mb == 0 || nb == 0 || (!em && M < MB) || (!en && N < NB))
			continue;
		const hprim *p = hprim_get(mb, nb, K, ta, tb, g.lda, g.ldb, ldc, alpha, beta);
		if (!p)
			return -1;
		g.pr[em][en] = *p;
	}
	omp_set_num_threads(1);
	if (g.ncv)
		trail_pool_run(G.pool, g.cv[0].items + (g.ncv > 1 ? g.cv[1].items : 0), hcvt_unit, &g);
	for (int k = 0; k < g.ncv; k++)
		if (g.cv[k].ent >= 0)
			BC.e[g.cv[k].ent].made = BC.pass;
	trail_pool_run(G.pool, g.mi * g.nj, hblk_unit, &g);
	return 0;
}

void trail_gemm_x(int flags, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
		  int ldb, float beta, float *C, int ldc)
{
	if (M <= 0 || N <= 0)
		return;
	if (!G.pool) /* nothing set: one thread, float32 */
		trail_compute_set(1, TRAIL_PREC_FP32, NULL);
	if ((flags & TRAIL_G_BF16) && G.prec == TRAIL_PREC_BF16 &&
	    !hgemm(flags, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
		return;
	job g = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb, .ldc = ldc, .mi = (M + MB - 1) / MB,
		 .nj = (N + NB - 1) / NB, .alpha = alpha, .beta = beta, .A = A, .B = B, .C = C};
	trail_pool_run(G.pool, g.mi * g.nj, f32_unit, &g);
}

/* ---- batched bf16 products, one thread each ------------------------------------------- */

/*
 * C[g] = alpha op(A[g]) op(B[g]) + beta C[g] for g < G: A, B dense bf16
 * ([G,M,K], or [G,K,M] when ta; [G,K,N], or [G,N,K] when tb), C float with
 * strides (cs0, cs1, 1). Each entry is allocated on its own and kept, so
 * the pointer stays good while other shapes are added.
 */
struct trail_bmm {
	int G, M, N, K, ta, tb, cs0, cs1;
	float alpha, beta;
	dnnl_memory_desc_t a, b, c, sp;
	size_t spn;
	dnnl_primitive_t p;
};

static struct {
	pthread_mutex_t mu;
	trail_bmm **tab;
	int n, cap;
} BM = {.mu = PTHREAD_MUTEX_INITIALIZER};

static trail_bmm *bmm_make(int Gn, int M, int N, int K, int ta, int tb, float alpha, float beta, int cs0, int cs1)
{
	trail_bmm *e = trail_calloc(1, sizeof *e);
	if (!e)
		return NULL;
	*e = (trail_bmm){.G = Gn, .M = M, .N = N, .K = K, .ta = ta, .tb = tb, .cs0 = cs0, .cs1 = cs1, .alpha = alpha,
			 .beta = beta};
	dnnl_dims_t da = {Gn, M, K}, db = {Gn, K, N}, dc = {Gn, M, N};
	dnnl_dims_t sa = {(dnnl_dim_t)M * K, ta ? 1 : K, ta ? M : 1}, sb = {(dnnl_dim_t)K * N, tb ? 1 : N, tb ? K : 1};
	dnnl_dims_t sc = {cs0, cs1, 1};
	e->p = matmul_prim(3, da, db, dc, sa, sb, sc, alpha, beta, &e->a, &e->b, &e->c, &e->sp, &e->spn);
	return e;
}

const trail_bmm *trail_bmm_get(int Gn, int M, int N, int K, int ta, int tb, float alpha, float beta, int cs0, int cs1)
{
	if (G.prec != TRAIL_PREC_BF16 || !dn.ready || Gn < 1 || M < 1 || N < 1 || K < 1)
		return NULL;
	trail_bmm *r = NULL;
	pthread_mutex_lock(&BM.mu);
	for (int i = 0; i < BM.n && !r; i++) {
		trail_bmm *e = BM.tab[i];
		if (e->G == Gn && e->M == M && e->N == N && e->K == K && e->ta == ta && e->tb == tb && e->cs0 == cs0 &&
		    e->cs1 == cs1 && e->alpha == alpha && e->beta == beta)
			r = e;
	}
	if (!r && BM.n == BM.cap) {
		int cap = BM.cap ? 2 * BM.cap : 32;
		trail_bmm **t = trail_realloc(BM.tab, (size_t)cap * sizeof *t);
		if (t)
			BM.tab = t, BM.cap = cap;
	}
	if (!r && BM.n < BM.cap) {
		omp_set_num_threads(1);
		if ((r = bmm_make(Gn, M, N, K, ta, tb, alpha, beta, cs0, cs1)))
			BM.tab[BM.n++] = r;
	}
	pthread_mutex_unlock(&BM.mu);
	return r && r->p ? r : NULL;
}

int trail_bmm_run(const trail_bmm *p, const uint16_t *A, const uint16_t *B, float *C, int t)
{
	return run_on(t, p->p, &p->a, &p->b, &p->c, &p->sp, p->spn, A, B, C);
}

void trail_gemm(int lowp, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
		int ldb, float beta, float *C, int ldc)
{
	trail_gemm_x(lowp ? TRAIL_G_BF16 : 0, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- serving: bf16 products of weights converted once ----------------------------- */

void trail_bf16_convert(uint16_t *dst, const float *src, size_t n)
{
	trail_bf16_cvt(dst, src, n); /* one rounding rule for training and serving */
}

void trail_bf16_convert_t(uint16_t *dst, const float *W, int K, int N)
{
	cvt(dst, K, W, N, N, K, 1);
}

/*
 * One product shape, its weights in oneDNN's own layout for it (format
 * "any", packed once by trail_bf16_mm_pack), so no step reorders them.
 */
struct trail_bf16_mm {
	dnnl_primitive_t p, ro;       /* the matmul; the reorder plain [N,K] rows -> packed */
	dnnl_memory_desc_t a, b, c, sp, plain;
	size_t spn;
	/*
	 * Thread t's memory objects for src, weights, dst and scratchpad,
	 * made on its first run and given new data handles after: a decoded
	 * token runs some 1,700 blocks, and making and destroying four memory
	 * objects a block cost more than a tenth of its time. Only thread t
	 * touches mem[t]. NULL (no cache) when the packed weights have
	 * padding, which setting a handle would zero.
	 */
	dnnl_memory_t (*mem)[4];
};

void trail_bf16_mm_free(trail_bf16_mm *h)
{
	if (!h)
		return;
	for (int t = 0; h->mem && t < TRAIL_MAX_THREADS; t++)
		for (int i = 0; i < 4; i++)
			if (h->mem[t][i])
				dnnl_memory_destroy(h->mem[t][i]);
	trail_free(h->mem);
	if (h->p)
		dnnl_primitive_destroy(h->p);
	if (h->ro)
		dnnl_primitive_destroy(h->ro);
	trail_free(h);
}

/* The packed product of these data types: src x [M,K], weights W^T (W [N,K] plain), dst y [M,N]. */
static trail_bf16_mm *packed_mm_new(int M, int N, int K, dnnl_data_type_t ts, dnnl_data_type_t tw,
				    dnnl_data_type_t td, trail_error *err)
{
	if (dnnl_ready(err))
		return NULL;
	omp_set_num_threads(1); /* a primitive made for one thread */
	trail_bf16_mm *h = trail_calloc(1, sizeof *h);
	if (!h) {
		trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		return NULL;
	}
	dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N}, sbt = {1, K};
	dnnl_matmul_desc_t md;
	dnnl_primitive_desc_t pd = NULL, rpd = NULL;
	dnnl_primitive_attr_t at = NULL;
	int ok = !dnnl_primitive_attr_create(&at) && !dnnl_primitive_attr_set_scratchpad_mode(at, dnnl_scratchpad_mode_user) &&
		 !dnnl_memory_desc_init_by_tag(&h->a, 2, da, ts, dnnl_ab) &&
		 !dnnl_memory_desc_init_by_tag(&h->b, 2, db, tw, dnnl_format_tag_any) &&
		 !dnnl_memory_desc_init_by_tag(&h->c, 2, dc, td, dnnl_ab) &&
		 !dnnl_memory_desc_init_by_strides(&h->plain, 2, db, tw, sbt) &&
		 !dnnl_matmul_desc_init(&md, &h->a, &h->b, NULL, &h->c) &&
		 !dnnl_primitive_desc_create(&pd, &md, at, dn.eng, NULL) && !dnnl_primitive_create(&h->p, pd);
	if (ok) {
		h->b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
		h->sp = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
		h->spn = dnnl_memory_desc_get_size(&h->sp);
		ok = !dnnl_reorder_primitive_desc_create(&rpd, &h->plain, dn.eng, &h->b, dn.eng, NULL) &&
		     !dnnl_primitive_create(&h->ro, rpd);
		int pad = 0;
		for (int i = 0; i < h->b.ndims; i++)
			pad |= h->b.padded_dims[i] != h->b.dims[i];
		if (ok && !pad)
			h->mem = trail_calloc(TRAIL_MAX_THREADS, sizeof *h->mem); /* none: run_on makes them each run */
	}
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (rpd)
		dnnl_primitive_desc_destroy(rpd);
	if (at)
		dnnl_primitive_attr_destroy(at);
	if (!ok) {
		trail_bf16_mm_free(h);
		trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: no %s matmul %dx%dx%d", ts == dnnl_u8 ? "int8" : "bf16", M, N,
				K);
		return NULL;
	}
	return h;
}

trail_bf16_mm *trail_bf16_mm_new(int M, int N, int K, trail_error *err)
{
	return packed_mm_new(M, N, K, dnnl_bf16, dnnl_bf16, dnnl_f32, err);
}

size_t trail_bf16_mm_packed_bytes(const trail_bf16_mm *h)
{
	return dnnl_memory_desc_get_size(&h->b);
}

static int packed_mm_pack(const trail_bf16_mm *h, const void *W, void *dst)
{
	dnnl_stream_t st = NULL;
	dnnl_memory_t ms = NULL, md = NULL;
	int rc = -1;
	omp_set_num_threads(1);
	if (!dnnl_stream_create(&st, dn.eng, dnnl_stream_default_flags) &&
	    !dnnl_memory_create(&ms, &h->plain, dn.eng, (void *)W) && !dnnl_memory_create(&md, &h->b, dn.eng, dst)) {
		dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
		if (dnnl_primitive_execute(h->ro, st, 2, args) == dnnl_success && dnnl_stream_wait(st) == dnnl_success)
			rc = 0;
	}
	dnnl_memory_destroy(ms), dnnl_memory_destroy(md);
	if (st)
		dnnl_stream_destroy(st);
	return rc;
}

int trail_bf16_mm_pack(const trail_bf16_mm *h, const uint16_t *W, void *dst)
{
	return packed_mm_pack(h, W, dst);
}

/* run_on with thread t's kept memory objects (see trail_bf16_mm) */
static int run_kept(const trail_bf16_mm *h, int t, const void *A, const void *B, void *C)
{
	if (!h->mem || t < 0 || t >= TRAIL_MAX_THREADS)
		return run_on(t, h->p, &h->a, &h->b, &h->c, &h->sp, h->spn, A, B, C);
	omp_set_num_threads(1);
	if (h->spn > G.spn[t]) {
		void *q = trail_malloc(h->spn);
		if (!q)
			return -1;
		trail_free(G.sp[t]);
		G.sp[t] = q, G.spn[t] = h->spn;
	}
	if (!G.st[t] && dnnl_stream_create(&G.st[t], dn.eng, dnnl_stream_default_flags))
		G.st[t] = NULL;
	if (!G.st[t])
		return -1;
	dnnl_memory_t *m = h->mem[t];
	const dnnl_memory_desc_t *md[4] = {&h->a, &h->b, &h->c, &h->sp};
	void *ptr[4] = {(void *)A, (void *)B, C, G.sp[t]};
	for (int i = 0; i < 4; i++) {
		if (m[i] ? dnnl_memory_set_data_handle(m[i], ptr[i]) != dnnl_success
			 : dnnl_memory_create(&m[i], md[i], dn.eng, ptr[i]) != dnnl_success)
			return -1;
	}
	dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, m[0]}, {DNNL_ARG_WEIGHTS, m[1]}, {DNNL_ARG_DST, m[2]},
				   {DNNL_ARG_SCRATCHPAD, m[3]}};
	return dnnl_primitive_execute(h->p, G.st[t], 4, args) == dnnl_success && dnnl_stream_wait(G.st[t]) == dnnl_success
		       ? 0
		       : -1;
}

int trail_bf16_mm_run(const trail_bf16_mm *h, const uint16_t *x, const void *W, float *y, int t)
{
	return run_kept(h, t, x, W, y);
}

/* ---- serving: int8 products of weights quantised once ------------------------------ */

/*
 * The same packed product with u8 inputs, s8 weights and exact s32 sums.
 * The inputs stay below 128 and the weights within [-127, 127], so a pair
 * of products sums to at most 2 x 127 x 127 = 32258: the 16-bit pair sums
 * of the instruction sets without VNNI (vpmaddubsw) never saturate, and
 * every instruction set gives the same integers.
 */
struct trail_i8_mm {
	trail_bf16_mm h;
};

trail_i8_mm *trail_i8_mm_new(int M, int N, int K, trail_error *err)
{
	return (trail_i8_mm *)packed_mm_new(M, N, K, dnnl_u8, dnnl_s8, dnnl_s32, err);
}

void trail_i8_mm_free(trail_i8_mm *h)
{
	trail_bf16_mm_free(h ? &h->h : NULL);
}

size_t trail_i8_mm_packed_bytes(const trail_i8_mm *h)
{
	return trail_bf16_mm_packed_bytes(&h->h);
}

int trail_i8_mm_pack(const trail_i8_mm *h, const int8_t *W, void *dst)
{
	return packed_mm_pack(&h->h, W, dst);
}

int trail_i8_mm_run(const trail_i8_mm *h, const uint8_t *x, const void *W, int32_t *y, int t)
{
	return run_kept(&h->h, t, x, W, y);
}
