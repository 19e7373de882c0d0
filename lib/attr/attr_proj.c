/*
 * Attribution's vector pieces: fp16 storage of gradients (with F16C where
 * the CPU has it) and the seeded per-layer projections of a linear layer's
 * gradient (in the manner of LoGra), built from the layer's kept inputs and
 * output gradients of a batch.
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
static int layer_selected(const trail_model *m, int i, int targets)
{
	const char *name;
	const float *X, *dY;
	int in, out, T;
	if (trail_model_linear_io(m, i, &name, &X, &dY, &in, &out, &T))
		return 0;
	return !targets || (targets & trail_model_linear_target(m, i));
}

int trail_attr_proj_new(const trail_model *m, const trail_attr_params *p, trail_attr_proj **out,
			trail_error *err)
{
	*out = NULL;
	int nl = trail_model_num_linear(m), n = 0;
	for (int i = 0; i < nl; i++)
		n += layer_selected(m, i, p->targets);
	if (!n)
		return trail_error_set(err, TRAIL_EUSAGE, "no linear layer is selected");
	trail_attr_params auto_p = *p;
	if (!p->k_in && !p->k_out) { /* the most of TRAIL_ATTR_AUTO_K squared per layer that the rows allow */
		int k = TRAIL_ATTR_AUTO_K;
		while (k > 1 && (size_t)n * (size_t)k * (size_t)k > TRAIL_ATTR_MAX_ROW)
			k /= 2;
		auto_p.k_in = auto_p.k_out = k;
		p = &auto_p;
	}
	if (p->k_in < 1 || p->k_out < 1 || p->k_in > 4096 || p->k_out > 4096)
		return trail_error_set(err, TRAIL_EUSAGE, "projection sizes %d x %d are out of range", p->k_in, p->k_out);
	if ((size_t)n * (size_t)p->k_in * (size_t)p->k_out > TRAIL_ATTR_MAX_ROW)
		return trail_error_set(err, TRAIL_ELIMIT, "%d layers x %d x %d projected dimensions are over %d", n,
				       p->k_in, p->k_out, TRAIL_ATTR_MAX_ROW);
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
	const trail_model_cfg *c = trail_model_config(m);
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
