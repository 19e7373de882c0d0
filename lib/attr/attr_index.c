/*
 * The attribution index: seeded per-layer projections, projected gradients
 * of batches, the builder (rows written into a mapped temporary file, then
 * the curvature statistics, the record table and the digest), and opening
 * an index with every size and the content digest checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sodium.h>

#include "attr/attr.h"
#include "attr/attr_int.h"
#include "core/core.h"

/* ---- fp16 -------------------------------------------------------------------- */

uint16_t trail_attr_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
	int exp = (int)((x >> 23) & 0xff);
	if (exp == 0xff) /* inf, nan */
		return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
	int e = exp - 127 + 15;
	if (e >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (e <= 0) { /* subnormal or zero */
		if (e < -10)
			return (uint16_t)sign;
		mant |= 0x800000;
		int shift = 14 - e;
		uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(sign | h);
	}
	uint32_t h = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++; /* may carry into the exponent, which is right */
	return (uint16_t)(sign | h);
}

float trail_attr_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, mant = h & 0x3ff, x;
	if (e == 0) {
		if (!mant)
			x = sign;
		else { /* normalise the subnormal */
			int s = 0;
			while (!(mant & 0x400)) {
				mant <<= 1;
				s++;
			}
			x = sign | ((uint32_t)(127 - 15 - s + 1) << 23) | ((mant & 0x3ff) << 13);
		}
	} else if (e == 31)
		x = sign | 0x7f800000 | (mant << 13);
	else
		x = sign | ((e - 15 + 127) << 23) | (mant << 13);
	float f;
	memcpy(&f, &x, 4);
	return f;
}

/* n halves to floats; the F16C path gives the same (exact) values, faster. */
__attribute__((target("f16c,avx"))) static void f16_to_f32_f16c(const uint16_t *in, float *out, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(in + i));
		_mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
	}
	for (; i < n; i++)
		out[i] = trail_attr_f32(in[i]);
}

int trail_attr_cpu(void)
{
	/* cpuid rather than __builtin_cpu_supports, which not every compiler knows "f16c" in */
	unsigned a, b, c, d, lo, hi;
	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX) || !(c & bit_F16C))
		return 0;
	__asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 6) != 6) /* the OS saves the XMM and YMM registers */
		return 0;
	int f = TRAIL_ATTR_CPU_F16C;
	if ((c & bit_FMA) && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX2))
		f |= TRAIL_ATTR_CPU_AVX2_FMA;
	return f;
}

void trail_attr_f16_to_f32(const uint16_t *in, float *out, size_t n)
{
	static int f16c = -1;
	if (f16c < 0)
		f16c = trail_attr_cpu() & TRAIL_ATTR_CPU_F16C;
	if (f16c) {
		f16_to_f32_f16c(in, out, n);
		return;
	}
	for (size_t i = 0; i < n; i++)
		out[i] = trail_attr_f32(in[i]);
}

/* ---- seeded projections -------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* N(0, std^2) by Box-Muller over splitmix64: the same numbers on every host. */
static void gauss(float *x, size_t n, double std, uint64_t seed)
{
	uint64_t s = seed;
	for (size_t i = 0; i < n; i += 2) {
		double u1 = ((double)(splitmix(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
		double u2 = ((double)(splitmix(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
		double r = sqrt(-2 * log(u1));
		x[i] = (float)(std * r * cos(2 * M_PI * u2));
		if (i + 1 < n)
			x[i + 1] = (float)(std * r * sin(2 * M_PI * u2));
	}
}

/* The layer's kind from its name ("h.3.attn.c_attn"), as TRAIL_LORA_* bits. */
static int layer_kind(const char *name)
{
	size_t n = strlen(name);
	static const struct {
		const char *suffix;
		int bit;
	} k[] = {{"attn.c_attn", TRAIL_LORA_C_ATTN}, {"attn.c_proj", TRAIL_LORA_ATTN_PROJ}, {"mlp.c_fc", TRAIL_LORA_C_FC},
		 {"mlp.c_proj", TRAIL_LORA_MLP_PROJ}};
	for (size_t i = 0; i < 4; i++) {
		size_t l = strlen(k[i].suffix);
		if (n >= l && !strcmp(name + n - l, k[i].suffix))
			return k[i].bit;
	}
	return 0;
}

static int layer_selected(const trail_model *m, int i, int targets)
{
	const char *name;
	const float *X, *dY;
	int in, out, T;
	if (trail_model_linear_io(m, i, &name, &X, &dY, &in, &out, &T))
		return 0;
	return !targets || (targets & layer_kind(name));
}

int trail_attr_proj_new(const trail_model *m, const trail_attr_params *p, trail_attr_proj **out,
			trail_error *err)
{
	*out = NULL;
	if (p->k_in < 1 || p->k_out < 1 || p->k_in > 4096 || p->k_out > 4096)
		return trail_error_set(err, TRAIL_EUSAGE, "projection sizes %d x %d are out of range", p->k_in, p->k_out);
	int nl = trail_model_num_linear(m), n = 0;
	for (int i = 0; i < nl; i++)
		n += layer_selected(m, i, p->targets);
	if (!n)
		return trail_error_set(err, TRAIL_EUSAGE, "no linear layer is selected");
	if ((size_t)n * (size_t)p->k_in * (size_t)p->k_out > TRAIL_ATTR_MAX_DIM)
		return trail_error_set(err, TRAIL_ELIMIT, "%d layers x %d x %d projected dimensions are over %d", n,
				       p->k_in, p->k_out, TRAIL_ATTR_MAX_DIM);
	trail_attr_proj *pr = trail_calloc(1, sizeof *pr);
	if (!pr || !(pr->L = trail_calloc((size_t)n, sizeof *pr->L)))
		goto oom;
	pr->n = n;
	pr->k_in = p->k_in;
	pr->k_out = p->k_out;
	pr->seed = p->seed;
	pr->targets = p->targets;
	pr->dim = (size_t)n * (size_t)p->k_in * (size_t)p->k_out;
	int j = 0;
	for (int i = 0; i < nl; i++) {
		if (!layer_selected(m, i, p->targets))
			continue;
		trail_attr_layer *L = &pr->L[j++];
		const char *name;
		const float *X, *dY;
		int T;
		trail_model_linear_io(m, i, &name, &X, &dY, &L->in, &L->out, &T);
		L->index = i;
		snprintf(L->name, sizeof L->name, "%s", name);
		L->pin = trail_malloc((size_t)p->k_in * (size_t)L->in * sizeof *L->pin);
		L->pout = trail_malloc((size_t)p->k_out * (size_t)L->out * sizeof *L->pout);
		if (!L->pin || !L->pout)
			goto oom;
		/* one stream per layer and side, so a layer's projection does not depend on the others */
		gauss(L->pin, (size_t)p->k_in * L->in, 1 / sqrt(p->k_in), p->seed ^ (0x1000003ULL * (uint64_t)(2 * i + 1)));
		gauss(L->pout, (size_t)p->k_out * L->out, 1 / sqrt(p->k_out), p->seed ^ (0x1000003ULL * (uint64_t)(2 * i + 2)));
	}
	*out = pr;
	return TRAIL_OK;
oom:
	trail_attr_proj_free(pr);
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

void trail_attr_proj_free(trail_attr_proj *p)
{
	if (!p)
		return;
	for (int i = 0; p->L && i < p->n; i++) {
		trail_free(p->L[i].pin);
		trail_free(p->L[i].pout);
	}
	trail_free(p->L);
	trail_free(p->xp);
	trail_free(p);
}

size_t trail_attr_proj_dim(const trail_attr_proj *p)
{
	return p->dim;
}

int trail_attr_proj_nlayers(const trail_attr_proj *p)
{
	return p->n;
}

static int io_of(const trail_attr_layer *L, const trail_model *m, int N, const float **X, const float **dY,
		 trail_error *err)
{
	const char *name;
	int in, out, T;
	trail_model_linear_io(m, L->index, &name, X, dY, &in, &out, &T);
	if (!*X || !*dY || T < N || in != L->in || out != L->out)
		return trail_error_set(err, TRAIL_EUSAGE, "layer %s has no kept input and output gradient "
				       "(keep_linear_io, forward and backward first)", L->name);
	return TRAIL_OK;
}

/*
 * Per layer: Xp [N,k_in] = X P_in^T, Dp [N,k_out] = dY P_out^T (two sgemms
 * over the whole batch), then per sequence b: g_l = c_b Dp_b^T Xp_b
 * [k_out,k_in] over its T rows (c_b turns the mean-loss gradient into the
 * gradient of the sequence's summed loss).
 */
int trail_attr_project(const trail_attr_proj *p, const trail_model *m, int B, int T,
		       const long *counts, float *g, trail_error *err)
{
	size_t N = (size_t)B * (size_t)T, need = N * (size_t)(p->k_in + p->k_out);
	trail_attr_proj *w = (trail_attr_proj *)p; /* scratch only */
	if (w->cap < need) {
		float *nx = trail_realloc(w->xp, need * sizeof *nx);
		if (!nx)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		w->xp = nx;
		w->cap = need;
	}
	long total = 0;
	for (int b = 0; b < B; b++)
		total += counts[b];
	float *xp = w->xp, *dp = w->xp + N * (size_t)p->k_in;
	size_t per = (size_t)p->k_in * (size_t)p->k_out;
	for (int l = 0; l < p->n; l++) {
		const trail_attr_layer *L = &p->L[l];
		const float *X, *dY;
		int rc;
		if ((rc = io_of(L, m, (int)N, &X, &dY, err)))
			return rc;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, p->k_in, L->in, 1.0f, X, L->in, L->pin, L->in,
			    0.0f, xp, p->k_in);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, p->k_out, L->out, 1.0f, dY, L->out, L->pout,
			    L->out, 0.0f, dp, p->k_out);
		for (int b = 0; b < B; b++)
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, p->k_out, p->k_in, T, (float)total,
				    dp + (size_t)b * T * p->k_out, p->k_out, xp + (size_t)b * T * p->k_in, p->k_in, 0.0f,
				    g + (size_t)b * p->dim + (size_t)l * per, p->k_in);
	}
	return TRAIL_OK;
}

int trail_attr_project_ref(const trail_attr_proj *p, const trail_model *m, int B, int T,
			   const long *counts, float *g, trail_error *err)
{
	long total = 0;
	for (int b = 0; b < B; b++)
		total += counts[b];
	size_t per = (size_t)p->k_in * (size_t)p->k_out;
	for (int l = 0; l < p->n; l++) {
		const trail_attr_layer *L = &p->L[l];
		const float *X, *dY;
		int rc;
		if ((rc = io_of(L, m, B * T, &X, &dY, err)))
			return rc;
		double *dW = trail_malloc((size_t)L->in * (size_t)L->out * sizeof *dW);
		if (!dW)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		for (int b = 0; b < B; b++) {
			/* dW [in,out] = total X_b^T dY_b; g[o][i] = sum P_out[o][a] dW[c][a] P_in[i][c] */
			memset(dW, 0, (size_t)L->in * (size_t)L->out * sizeof *dW);
			for (int t = 0; t < T; t++) {
				const float *x = X + ((size_t)b * T + t) * L->in, *dy = dY + ((size_t)b * T + t) * L->out;
				for (int c = 0; c < L->in; c++)
					for (int a = 0; a < L->out; a++)
						dW[(size_t)c * L->out + a] += (double)total * x[c] * dy[a];
			}
			for (int o = 0; o < p->k_out; o++)
				for (int i = 0; i < p->k_in; i++) {
					double s = 0;
					for (int c = 0; c < L->in; c++) {
						double u = 0;
						for (int a = 0; a < L->out; a++)
							u += (double)L->pout[(size_t)o * L->out + a] * dW[(size_t)c * L->out + a];
						s += u * L->pin[(size_t)i * L->in + c];
					}
					g[(size_t)b * p->dim + (size_t)l * per + (size_t)o * p->k_in + i] = (float)s;
				}
		}
		trail_free(dW);
	}
	return TRAIL_OK;
}

int trail_attr_grad(const trail_attr_proj *p, trail_model *m, const int32_t *tok, size_t n,
		    size_t first, float *g, trail_error *err)
{
	const trail_gpt2_config *c = trail_model_config(m);
	if (n < 2 || first < 1 || first >= n)
		return trail_error_set(err, TRAIL_EDATA, "a query needs a prompt and at least one output token");
	if (n > (size_t)c->n_positions)
		return trail_error_set(err, TRAIL_ELIMIT, "%zu tokens are over the model's %d positions", n, c->n_positions);
	int32_t *y = trail_malloc(n * sizeof *y);
	if (!y)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	long count = 0;
	for (size_t t = 0; t < n; t++) {
		y[t] = t + 1 < n && t + 1 >= first ? tok[t + 1] : -1;
		count += y[t] >= 0;
		if (tok[t] < 0 || tok[t] >= c->vocab_size) {
			trail_free(y);
			return trail_error_set(err, TRAIL_EDATA, "token id %d is outside the vocabulary", tok[t]);
		}
	}
	float loss;
	int rc;
	/*
	 * One BLAS thread: OpenBLAS splits a product between threads in ways
	 * that change its rounding, and a query's gradient must not depend on
	 * the thread count (scoring is split so that it does not).
	 */
	int nt = openblas_get_num_threads();
	openblas_set_num_threads(1);
	trail_model_keep_linear_io(m, 1);
	trail_model_zero_grad(m);
	if (!(rc = trail_model_forward(m, tok, y, 1, (int)n, &loss, err)) && !(rc = trail_model_backward(m, err)))
		rc = trail_attr_project(p, m, 1, (int)n, &count, g, err);
	openblas_set_num_threads(nt);
	trail_free(y);
	return rc;
}

/* ---- file layout ----------------------------------------------------------------- */

static size_t al64(size_t x)
{
	return (x + 63) & ~(size_t)63;
}

void trail_attr_layout(trail_attr_hdr *h, trail_attr_off *o)
{
	size_t N = h->nrecords, S = h->nsets, D = h->dim, L = h->nlayers;
	o->layers = 512;
	o->sets = al64(o->layers + L * 64);
	o->params = al64(o->sets + S * 16);
	o->scales = al64(o->params + S * h->nparams * 4);
	o->norms = al64(o->scales + S * N * 4);
	o->lambda = al64(o->norms + S * N * L * 4);
	o->chol = al64(o->lambda + 2 * L * 4);
	o->grads = al64(o->chol + D * (D / L) * 4); /* L blocks of (D/L)^2 */
	o->records = al64(o->grads + S * N * D * 2);
	o->blob = o->records + N * 40;
	o->end = o->blob + h->blob;
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}
static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}
static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static void hdr_write(uint8_t *b, const trail_attr_hdr *h)
{
	memset(b, 0, 480);
	memcpy(b, "TRLATTR\0", 8);
	put32(b + 8, TRAIL_ATTR_VERSION);
	put32(b + 12, 1);
	put64(b + 16, h->nrecords);
	put32(b + 24, (uint32_t)h->nlayers);
	put32(b + 28, (uint32_t)h->dim);
	put32(b + 32, (uint32_t)h->nsets);
	put32(b + 36, (uint32_t)h->k_in);
	put32(b + 40, (uint32_t)h->k_out);
	put32(b + 44, (uint32_t)h->targets);
	put64(b + 48, h->seed);
	memcpy(b + 56, &h->damping, 8);
	put64(b + 64, h->nparams);
	put64(b + 72, h->blob);
	put64(b + 80, h->filelen);
	put32(b + 88, (uint32_t)h->seq);
	memcpy(b + 96, h->id.model, 72);
	memcpy(b + 168, h->id.adapter, 72);
	memcpy(b + 240, h->id.root, 48);
}

static int hdr_read(const uint8_t *b, size_t len, trail_attr_hdr *h, const char *path, trail_error *err)
{
	if (len < 512 || memcmp(b, "TRLATTR\0", 8))
		return trail_error_at(err, TRAIL_EDATA, path, 0, "not an attribution index (bad magic)");
	if (get32(b + 8) != TRAIL_ATTR_VERSION)
		return trail_error_at(err, TRAIL_EDATA, path, 0,
				      "attribution index version %u; this build reads version %d: rebuild it with "
				      "attr-score --build-index", get32(b + 8), TRAIL_ATTR_VERSION);
	if (get32(b + 12) != 1)
		return trail_error_at(err, TRAIL_EDATA, path, 0, "unknown element type %u", get32(b + 12));
	memset(h, 0, sizeof *h);
	h->nrecords = get64(b + 16);
	h->nlayers = (int)get32(b + 24);
	h->dim = get32(b + 28);
	h->nsets = (int)get32(b + 32);
	h->k_in = (int)get32(b + 36);
	h->k_out = (int)get32(b + 40);
	h->targets = (int)get32(b + 44);
	h->seed = get64(b + 48);
	memcpy(&h->damping, b + 56, 8);
	h->nparams = get64(b + 64);
	h->blob = get64(b + 72);
	h->filelen = get64(b + 80);
	h->seq = (int)get32(b + 88);
	memcpy(h->id.model, b + 96, 72);
	memcpy(h->id.adapter, b + 168, 72);
	memcpy(h->id.root, b + 240, 48);
	h->id.model[71] = h->id.adapter[71] = h->id.root[47] = 0;
	/* bound every size before any product of them is formed */
	if (!h->nrecords || h->nrecords > ((uint64_t)1 << 32) || h->nlayers < 1 || h->nlayers > 4096 ||
	    h->nsets < 1 || h->nsets > 1024 || h->k_in < 1 || h->k_in > 4096 || h->k_out < 1 || h->k_out > 4096 ||
	    h->dim != (size_t)h->nlayers * (size_t)h->k_in * (size_t)h->k_out || h->dim > TRAIL_ATTR_MAX_DIM ||
	    h->nparams > ((uint64_t)1 << 34) || h->blob > ((uint64_t)1 << 40) || h->filelen != len)
		return trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index sizes do not add up "
				      "(truncated or altered: %zu bytes, the header says %llu)",
				      len, (unsigned long long)h->filelen);
	return TRAIL_OK;
}

static void content_digest(const uint8_t *b, size_t len, uint8_t out[32])
{
	crypto_hash_sha256_state st;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, b, 480);
	crypto_hash_sha256_update(&st, b + 512, len - 512);
	crypto_hash_sha256_final(&st, out);
}

/* ---- the builder ------------------------------------------------------------------- */

struct trail_attr_builder {
	char *path, *tmp;
	int fd;
	uint8_t *map;
	size_t maplen;
	trail_attr_hdr h;
	trail_attr_off o;
	trail_attr_proj *proj;
	uint8_t *done; /* nsets x nrecords */
	float *rows;   /* batch scratch */
	size_t rowcap;
};

int trail_attr_builder_new(const char *path, const trail_model *m, const trail_attr_ident *id,
			   const trail_attr_params *p, size_t nrecords, int nsets,
			   trail_attr_builder **out, trail_error *err)
{
	*out = NULL;
	if (!nrecords || nsets < 1 || nsets > 1024)
		return trail_error_set(err, TRAIL_EUSAGE, "an index needs records and 1 to 1024 gradient sets");
	trail_attr_builder *b = trail_calloc(1, sizeof *b);
	int rc;
	if (!b)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	b->fd = -1;
	size_t np = 0;
	trail_attr_hdr *h = &b->h;
	if (m) {
		if ((rc = trail_attr_proj_new(m, p, &b->proj, err)))
			goto fail;
		trail_model_params((trail_model *)m, &np);
		h->nlayers = b->proj->n;
		h->dim = b->proj->dim;
	} else { /* gradients from elsewhere: one block of k_out x k_in, rows added directly */
		if (p->k_in < 1 || p->k_out < 1 || (size_t)p->k_in * (size_t)p->k_out > TRAIL_ATTR_MAX_DIM) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "dimensions %d x %d are out of range", p->k_in, p->k_out);
			goto fail;
		}
		h->nlayers = 1;
		h->dim = (size_t)p->k_in * (size_t)p->k_out;
	}
	h->nrecords = nrecords;
	h->nsets = nsets;
	h->k_in = p->k_in;
	h->k_out = p->k_out;
	h->targets = p->targets;
	h->seed = p->seed;
	h->damping = p->damping > 0 ? p->damping : 0.1;
	h->nparams = np;
	h->seq = p->seq;
	h->id = *id;
	h->blob = 0; /* known at finish; the record table is the file's tail */
	trail_attr_layout(h, &b->o);
	b->path = trail_strdup(path);
	b->tmp = trail_malloc(strlen(path) + 16);
	b->done = trail_calloc((size_t)nsets * nrecords, 1);
	if (!b->path || !b->tmp || !b->done) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	sprintf(b->tmp, "%s.tmpXXXXXX", path);
	if ((b->fd = mkstemp(b->tmp)) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", path);
		b->tmp[0] = 0;
		goto fail;
	}
	b->maplen = b->o.records; /* the tail is appended at finish */
	if (ftruncate(b->fd, (off_t)b->maplen)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto fail;
	}
	b->map = mmap(NULL, b->maplen, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
	if (b->map == MAP_FAILED) {
		b->map = NULL;
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto fail;
	}
	for (int l = 0; m && l < h->nlayers; l++) {
		uint8_t *e = b->map + b->o.layers + (size_t)l * 64;
		put32(e, (uint32_t)b->proj->L[l].in);
		put32(e + 4, (uint32_t)b->proj->L[l].out);
		put32(e + 8, (uint32_t)b->proj->L[l].index);
		memcpy(e + 16, b->proj->L[l].name, 40);
	}
	if (!m) {
		put32(b->map + b->o.layers, (uint32_t)p->k_in);
		put32(b->map + b->o.layers + 4, (uint32_t)p->k_out);
		put32(b->map + b->o.layers + 8, ~0u);
		memcpy(b->map + b->o.layers + 16, "external", 9);
	}
	*out = b;
	return TRAIL_OK;
fail:
	trail_attr_builder_free(b);
	return rc;
}

void trail_attr_builder_free(trail_attr_builder *b)
{
	if (!b)
		return;
	if (b->map)
		munmap(b->map, b->maplen);
	if (b->fd >= 0)
		close(b->fd);
	if (b->tmp && b->tmp[0])
		unlink(b->tmp);
	trail_attr_proj_free(b->proj);
	trail_free(b->path), trail_free(b->tmp), trail_free(b->done), trail_free(b->rows);
	trail_free(b);
}

int trail_attr_builder_set(trail_attr_builder *b, int set, trail_model *m, double weight, trail_error *err)
{
	size_t np = 0;
	const float *p = m ? trail_model_params(m, &np) : NULL;
	if (set < 0 || set >= b->h.nsets || np != b->h.nparams)
		return trail_error_set(err, TRAIL_EUSAGE, "gradient set %d: out of range or another model", set);
	memcpy(b->map + b->o.sets + (size_t)set * 16, &weight, 8);
	if (np)
		memcpy(b->map + b->o.params + (size_t)set * np * 4, p, np * 4);
	return TRAIL_OK;
}

int trail_attr_builder_add(trail_attr_builder *b, int set, size_t rec, const float *g, trail_error *err)
{
	const trail_attr_hdr *h = &b->h;
	if (set < 0 || set >= h->nsets || rec >= h->nrecords)
		return trail_error_set(err, TRAIL_EUSAGE, "row %zu of set %d is out of range", rec, set);
	size_t D = h->dim, row = (size_t)set * h->nrecords + rec;
	float mx = 0;
	for (size_t i = 0; i < D; i++) {
		if (!isfinite(g[i]))
			return trail_error_set(err, TRAIL_EDATA, "record %zu: the gradient is not finite", rec);
		mx = fabsf(g[i]) > mx ? fabsf(g[i]) : mx;
	}
	/* rows are stored as g / scale with |g / scale| <= 1, where fp16 keeps 11 bits */
	float scale = mx > 0 ? mx : 1, inv = 1 / scale;
	uint16_t *dst = (uint16_t *)(b->map + b->o.grads) + row * D;
	float *norms = (float *)(b->map + b->o.norms) + row * (size_t)h->nlayers;
	size_t per = (size_t)h->k_in * (size_t)h->k_out;
	for (int l = 0; l < h->nlayers; l++) {
		double s = 0;
		for (size_t i = l * per; i < (l + 1) * per; i++) {
			dst[i] = trail_attr_f16(g[i] * inv);
			double v = (double)trail_attr_f32(dst[i]) * scale;
			s += v * v;
		}
		norms[l] = (float)s;
	}
	((float *)(b->map + b->o.scales))[row] = scale;
	b->done[row] = 1;
	return TRAIL_OK;
}

int trail_attr_builder_add_batch(trail_attr_builder *b, int set, trail_model *m, const size_t *recs,
				 const long *counts, int B, int T, trail_error *err)
{
	size_t need = (size_t)B * b->h.dim;
	int rc;
	if (b->rowcap < need) {
		float *r = trail_realloc(b->rows, need * sizeof *r);
		if (!r)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		b->rows = r;
		b->rowcap = need;
	}
	if ((rc = trail_attr_project(b->proj, m, B, T, counts, b->rows, err)))
		return rc;
	for (int i = 0; i < B; i++)
		if ((rc = trail_attr_builder_add(b, set, recs[i], b->rows + (size_t)i * b->h.dim, err)))
			return rc;
	return TRAIL_OK;
}

int trail_attr_builder_pass(trail_attr_builder *b, int set, trail_model *m, const trail_dataset *d,
			    int batch, double weight, trail_error *err)
{
	int T = b->h.seq, rc;
	const trail_gpt2_config *c = trail_model_config(m);
	if (T < 2 || T > c->n_positions)
		T = c->n_positions;
	if (d->n != b->h.nrecords)
		return trail_error_set(err, TRAIL_EUSAGE, "the dataset has %zu records, the index %llu", d->n,
				       (unsigned long long)b->h.nrecords);
	if (batch < 1)
		batch = 1;
	int32_t *x = trail_malloc((size_t)batch * T * sizeof *x), *y = trail_malloc((size_t)batch * T * sizeof *y);
	size_t *recs = trail_malloc((size_t)batch * sizeof *recs);
	long *counts = trail_malloc((size_t)batch * sizeof *counts);
	if (!x || !y || !recs || !counts) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_attr_builder_set(b, set, m, weight, err)))
		goto out;
	trail_model_keep_linear_io(m, 1);
	for (size_t i = 0; i < d->n; i += (size_t)batch) {
		int nb = (int)(d->n - i < (size_t)batch ? d->n - i : (size_t)batch);
		for (int k = 0; k < nb; k++) {
			trail_attr_fill(d, i + (size_t)k, T, x + (size_t)k * T, y + (size_t)k * T, &counts[k]);
			recs[k] = i + (size_t)k;
		}
		long total = 0;
		for (int k = 0; k < nb; k++)
			total += counts[k];
		float loss;
		if (!total) { /* nothing counts in any of these records: zero gradients */
			for (int k = 0; k < nb; k++) {
				float *z = trail_calloc(b->h.dim, sizeof *z);
				if (!z) {
					rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
					goto out;
				}
				rc = trail_attr_builder_add(b, set, recs[k], z, err);
				trail_free(z);
				if (rc)
					goto out;
			}
			continue;
		}
		trail_model_zero_grad(m);
		if ((rc = trail_model_forward(m, x, y, nb, T, &loss, err)) || (rc = trail_model_backward(m, err)) ||
		    (rc = trail_attr_builder_add_batch(b, set, m, recs, counts, nb, T, err)))
			goto out;
	}
out:
	trail_free(x), trail_free(y), trail_free(recs), trail_free(counts);
	return rc;
}

/* As training fills a row: the record's tokens, cut at T; targets where the loss counts. */
void trail_attr_fill(const trail_dataset *d, size_t r, int T, int32_t *x, int32_t *y, long *count)
{
	size_t n = d->len[r];
	long k = 0;
	for (int t = 0; t < T; t++) {
		x[t] = (size_t)t < n ? d->tok[r][t] : 0;
		y[t] = (size_t)t + 1 < n && t + 1 >= d->first[r] ? d->tok[r][t + 1] : -1;
		k += y[t] >= 0;
	}
	*count = k;
}

int trail_attr_builder_finish(trail_attr_builder *b, const trail_dataset *d, trail_error *err)
{
	trail_attr_hdr *h = &b->h;
	int rc = TRAIL_OK;
	uint8_t *tail = NULL;
	if (d->n != h->nrecords) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "the dataset has %zu records, the index %llu", d->n,
				     (unsigned long long)h->nrecords);
		goto out;
	}
	for (size_t i = 0; i < (size_t)h->nsets * h->nrecords; i++)
		if (!b->done[i]) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "record %zu of gradient set %zu was never added",
					     i % h->nrecords, i / h->nrecords);
			goto out;
		}
	if ((rc = trail_attr_curvature(b->map, h, &b->o, err)))
		goto out;
	/* the record table and contributor strings */
	size_t blob = 0;
	for (size_t i = 0; i < d->n; i++)
		if (d->contributor[i])
			blob += strlen(d->contributor[i]) + 1;
	h->blob = blob;
	trail_attr_layout(h, &b->o);
	h->filelen = b->o.end;
	size_t tl = b->o.end - b->o.records;
	if (!(tail = trail_calloc(tl ? tl : 1, 1))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	size_t off = 0;
	for (size_t i = 0; i < d->n; i++) {
		uint8_t *e = tail + i * 40;
		if (trail_digest_parse(d->id[i], e)) {
			rc = trail_error_set(err, TRAIL_EDATA, "record %zu has no valid id", i);
			goto out;
		}
		if (d->contributor[i]) {
			put64(e + 32, off);
			size_t n = strlen(d->contributor[i]) + 1;
			memcpy(tail + (b->o.blob - b->o.records) + off, d->contributor[i], n);
			off += n;
		} else
			put64(e + 32, ~(uint64_t)0);
	}
	hdr_write(b->map, h);
	if (pwrite(b->fd, tail, tl, (off_t)b->o.records) != (ssize_t)tl) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto out;
	}
	/* the digest over the mapping plus the tail */
	crypto_hash_sha256_state st;
	uint8_t dg[32];
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, b->map, 480);
	crypto_hash_sha256_update(&st, b->map + 512, b->o.records - 512);
	crypto_hash_sha256_update(&st, tail, tl);
	crypto_hash_sha256_final(&st, dg);
	memcpy(b->map + 480, dg, 32);
	if (msync(b->map, b->maplen, MS_SYNC) || fsync(b->fd)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto out;
	}
	if (fchmod(b->fd, 0644) || rename(b->tmp, b->path)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->path);
		goto out;
	}
	b->tmp[0] = 0;
	char *dir = trail_strdup(b->path), *slash = dir ? strrchr(dir, '/') : NULL;
	if (dir) {
		if (slash)
			*slash = 0;
		rc = trail_fsync_dir(slash ? (dir[0] ? dir : "/") : ".", err);
		trail_free(dir);
	}
out:
	trail_free(tail);
	trail_attr_builder_free(b);
	return rc;
}

/* ---- opening ------------------------------------------------------------------------ */

int trail_attr_index_open(const char *path, trail_attr_index **out, trail_error *err)
{
	trail_attr_index *x = trail_calloc(1, sizeof *x);
	int rc;
	*out = NULL;
	if (!x)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if ((rc = trail_map_file(path, &x->map, err)))
		goto fail;
	const uint8_t *b = x->map.data;
	trail_attr_hdr *h = &x->h;
	if ((rc = hdr_read(b, x->map.len, h, path, err)))
		goto fail;
	trail_attr_layout(h, &x->o);
	if (x->o.end != x->map.len) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index is %zu bytes, its sections %zu "
				    "(truncated or altered)", x->map.len, x->o.end);
		goto fail;
	}
	uint8_t dg[32];
	content_digest(b, x->map.len, dg);
	if (sodium_memcmp(dg, b + 480, 32)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index digest mismatch: the file was altered");
		goto fail;
	}
	trail_digest_format(b + 480, x->info.digest);
	if (h->blob && ((const char *)b)[x->o.end - 1]) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "contributor strings are not terminated");
		goto fail;
	}
	for (uint64_t i = 0; i < h->nrecords; i++) {
		uint64_t off = get64(b + x->o.records + i * 40 + 32);
		if (off != ~(uint64_t)0 && off >= h->blob) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "record %llu: contributor offset out of range",
					    (unsigned long long)i);
			goto fail;
		}
	}
	x->scales = (const float *)(b + x->o.scales);
	x->norms = (const float *)(b + x->o.norms);
	x->lambda = (const float *)(b + x->o.lambda);
	x->chol = (const float *)(b + x->o.chol);
	x->grads = (const uint16_t *)(b + x->o.grads);
	size_t per = h->dim / (size_t)h->nlayers;
	if (!(x->cholt = trail_malloc(h->dim * per * sizeof *x->cholt))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t l = 0; l < (size_t)h->nlayers; l++)
		for (size_t i = 0; i < per; i++)
			for (size_t j = 0; j < per; j++)
				x->cholt[l * per * per + j * per + i] = x->chol[l * per * per + i * per + j];
	trail_attr_info *in = &x->info;
	in->nrecords = h->nrecords;
	in->nlayers = h->nlayers;
	in->nsets = h->nsets;
	in->k_in = h->k_in;
	in->k_out = h->k_out;
	in->targets = h->targets;
	in->seq = h->seq;
	in->dim = h->dim;
	in->nparams = h->nparams;
	in->seed = h->seed;
	in->damping = h->damping;
	in->id = h->id;
	*out = x;
	return TRAIL_OK;
fail:
	trail_attr_index_free(x);
	return rc;
}

void trail_attr_index_free(trail_attr_index *x)
{
	if (!x)
		return;
	if (x->map.data)
		trail_unmap(&x->map);
	trail_free(x->cholt);
	trail_free(x);
}

const trail_attr_info *trail_attr_index_info(const trail_attr_index *x)
{
	return &x->info;
}

void trail_attr_index_record(const trail_attr_index *x, size_t i, char id[72], const char **contributor)
{
	const uint8_t *e = (const uint8_t *)x->map.data + x->o.records + i * 40;
	trail_digest_format(e, id);
	uint64_t off = get64(e + 32);
	*contributor = off == ~(uint64_t)0 ? NULL : (const char *)x->map.data + x->o.blob + off;
}

double trail_attr_set_weight(const trail_attr_index *x, int set)
{
	double w;
	memcpy(&w, (const uint8_t *)x->map.data + x->o.sets + (size_t)set * 16, 8);
	return w;
}

const float *trail_attr_set_params(const trail_attr_index *x, int set)
{
	return (const float *)((const uint8_t *)x->map.data + x->o.params + (size_t)set * x->h.nparams * 4);
}

int trail_attr_index_proj(const trail_attr_index *x, const trail_model *m, trail_attr_proj **out,
			  trail_error *err)
{
	const trail_attr_hdr *h = &x->h;
	trail_attr_params p = {.seed = h->seed, .k_in = h->k_in, .k_out = h->k_out, .targets = h->targets};
	int rc = trail_attr_proj_new(m, &p, out, err);
	if (rc)
		return rc;
	size_t np;
	trail_model_params((trail_model *)m, &np);
	int ok = (*out)->n == h->nlayers && np == h->nparams;
	for (int l = 0; ok && l < h->nlayers; l++) {
		const uint8_t *e = (const uint8_t *)x->map.data + x->o.layers + (size_t)l * 64;
		ok = get32(e) == (uint32_t)(*out)->L[l].in && get32(e + 4) == (uint32_t)(*out)->L[l].out &&
		     get32(e + 8) == (uint32_t)(*out)->L[l].index;
	}
	if (!ok) {
		trail_attr_proj_free(*out);
		*out = NULL;
		return trail_error_set(err, TRAIL_EDATA, "the index was built for a model of another shape");
	}
	return TRAIL_OK;
}
