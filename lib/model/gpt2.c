/*
 * GPT-2 forward and backward on OpenBLAS. One section per layer type, each
 * kernel with its shapes (see model_int.h); every large product goes through
 * trail_k_sgemm, which has a naive reference loop beside the BLAS call. Loops
 * outside BLAS run in a fixed order, so the same inputs and BLAS thread
 * count give the same bits.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

static int fail_oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

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
static void normal_fill(float *x, size_t n, double std, uint64_t *s)
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
		cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
			    A, lda, B, ldb, beta, C, ldc);
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

static inline vf vexp(vf x)
{
	vi lo = x < vs(-87.0f), hi = x > vs(88.0f);
	x = (vf)(((vi)x & ~lo) | ((vi)vs(-87.0f) & lo));
	x = (vf)(((vi)x & ~hi) | ((vi)vs(88.0f) & hi));
	vf n = (x * vs(1.44269504088896341f) + vs(12582912.0f)) - vs(12582912.0f);
	vf r = x - n * vs(0.693359375f) + n * vs(2.12194440e-4f);
	vf p = vs(1.9875691500e-4f);
	p = p * r + vs(1.3981999507e-3f);
	p = p * r + vs(8.3334519073e-3f);
	p = p * r + vs(4.1665795894e-2f);
	p = p * r + vs(1.6666665459e-1f);
	p = p * r + vs(5.0000001201e-1f);
	p = p * r * r + r + vs(1.0f);
	vi e = (__builtin_convertvector(n, vi) + 127) << 23;
	return p * (vf)e;
}

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

/* ---- GELU (tanh approximation) ----------------------------------------------------- */

#define GELU_S 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f

/*
 * t = tanh(u), u = s (x + c x^3), through e = exp(2u): t = 1 - 2/(1+e), and
 * 1 - t^2 = 4 e/(1+e)^2 without the cancellation of 1 - t*t.
 */
static inline vf gelu_f(vf x)
{
	vf e = vexp(vs(2 * GELU_S) * (x + vs(GELU_C) * x * x * x)), d = vs(1.0f) / (vs(1.0f) + e);
	return vs(0.5f) * x * (vs(2.0f) - vs(2.0f) * d);
}

static inline vf gelu_b(vf x, vf dy)
{
	vf e = vexp(vs(2 * GELU_S) * (x + vs(GELU_C) * x * x * x)), d = vs(1.0f) / (vs(1.0f) + e);
	vf t = vs(1.0f) - vs(2.0f) * d, sech2 = vs(4.0f) * (e * d) * d;
	return dy * (vs(0.5f) * (vs(1.0f) + t) + vs(0.5f) * x * sech2 * vs(GELU_S) * (vs(1.0f) + vs(3 * GELU_C) * x * x));
}

void trail_k_gelu_fwd(float *y, const float *x, size_t n)
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

void trail_k_gelu_bwd(float *dx, const float *x, const float *dy, size_t n)
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

/* ---- LayerNorm ------------------------------------------------------------------- */

void trail_k_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w,
			   const float *b, int N, int C)
{
	for (int i = 0; i < N; i++) {
		const float *xi = x + (size_t)i * C;
		float *o = out + (size_t)i * C;
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
		mean[i] = mf;
		rstd[i] = s;
	}
}

void trail_k_layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
			   const float *w, const float *mean, const float *rstd, int N, int C)
{
	for (int i = 0; i < N; i++) {
		const float *d = dout + (size_t)i * C, *xi = x + (size_t)i * C;
		float *dxi = dx + (size_t)i * C, mi = mean[i], ri = rstd[i];
		double dm = 0, dnm = 0;
		for (int c = 0; c < C; c++) {
			float norm = (xi[c] - mi) * ri, dn = w[c] * d[c];
			dm += dn;
			dnm += dn * norm;
		}
		float fm = (float)(dm / C), fnm = (float)(dnm / C);
		if (dw)
			for (int c = 0; c < C; c++) {
				float norm = (xi[c] - mi) * ri;
				dw[c] += d[c] * norm;
				db[c] += d[c];
			}
		for (int c = 0; c < C; c++) {
			float norm = (xi[c] - mi) * ri;
			dxi[c] += (w[c] * d[c] - fm - norm * fnm) * ri;
		}
	}
}

/* ---- linear (Conv1D) with LoRA ------------------------------------------------------ */

void trail_k_linear_fwd(int naive, trail_lin *L, int r, float scale, float *y, const float *x, int N)
{
	L->x = x;
	/* y [N,out] = b (each row), then += x [N,in] W [in,out] */
	for (int i = 0; i < N; i++)
		memcpy(y + (size_t)i * L->out, L->b, (size_t)L->out * sizeof *y);
	trail_k_sgemm(naive, 0, 0, N, L->out, L->in, 1.0f, x, L->in, L->W, L->out, 1.0f, y, L->out);
	if (L->A) {
		/* u [N,r] = x A^T;  y += scale u B^T  (B [out,r]) */
		trail_k_sgemm(naive, 0, 1, N, r, L->in, 1.0f, x, L->in, L->A, L->in, 0.0f, L->u, r);
		trail_k_sgemm(naive, 0, 1, N, L->out, r, scale, L->u, r, L->Bm, r, 1.0f, y, L->out);
	}
}

void trail_k_linear_bwd(int naive, trail_lin *L, int r, float scale, float *dx, const float *dy, int N,
			float *scratch)
{
	if (L->keep_dy)
		memcpy(L->keep_dy, dy, (size_t)N * (size_t)L->out * sizeof *dy);
	if (L->dW) {
		/* dW [in,out] += x^T [in,N] dy [N,out];  db [out] += column sums of dy */
		trail_k_sgemm(naive, 1, 0, L->in, L->out, N, 1.0f, L->x, L->in, dy, L->out, 1.0f, L->dW, L->out);
		for (int i = 0; i < N; i++) {
			const float *d = dy + (size_t)i * L->out;
			for (int o = 0; o < L->out; o++)
				L->db[o] += d[o];
		}
	}
	/* dx [N,in] += dy [N,out] W^T */
	if (dx)
		trail_k_sgemm(naive, 0, 1, N, L->in, L->out, 1.0f, dy, L->out, L->W, L->out, 1.0f, dx, L->in);
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

void trail_k_attention_fwd(int naive, float *y, float *att, const float *qkv, int B, int T, int C, int NH)
{
	int hs = C / NH;
	float scale = (float)(1.0 / sqrt((double)hs));
	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++) {
			/* q, k, v: [T,hs] views with row stride 3C */
			const float *q = qkv + (size_t)b * T * 3 * C + (size_t)h * hs;
			const float *k = q + C, *v = q + 2 * C;
			float *a = att + ((size_t)b * NH + h) * T * T;
			/* a [T,T] = scale q k^T, then a causal softmax per row */
			trail_k_sgemm(naive, 0, 1, T, T, hs, scale, q, 3 * C, k, 3 * C, 0.0f, a, T);
			for (int t = 0; t < T; t++) {
				float *row = a + (size_t)t * T, mx = row[0];
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
			/* y [T,hs] (row stride C) = a v */
			trail_k_sgemm(naive, 0, 0, T, hs, T, 1.0f, a, T, v, 3 * C, 0.0f, y + (size_t)b * T * C + (size_t)h * hs, C);
		}
}

void trail_k_attention_bwd(int naive, float *dqkv, const float *dy, const float *att, const float *qkv, int B,
			   int T, int C, int NH, float *scratch)
{
	int hs = C / NH;
	float scale = (float)(1.0 / sqrt((double)hs));
	float *da = scratch, *ds = scratch + (size_t)T * T;
	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++) {
			size_t off = (size_t)b * T * 3 * C + (size_t)h * hs;
			const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
			float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
			const float *a = att + ((size_t)b * NH + h) * T * T;
			const float *dyh = dy + (size_t)b * T * C + (size_t)h * hs;
			/* da [T,T] = dy v^T;  dv [T,hs] += a^T dy */
			trail_k_sgemm(naive, 0, 1, T, T, hs, 1.0f, dyh, C, v, 3 * C, 0.0f, da, T);
			trail_k_sgemm(naive, 1, 0, T, hs, T, 1.0f, a, T, dyh, C, 1.0f, dv, 3 * C);
			/* softmax backward: ds = a (da - rowsum(a da)) */
			for (int t = 0; t < T; t++) {
				const float *ar = a + (size_t)t * T, *dr = da + (size_t)t * T;
				float *dsr = ds + (size_t)t * T;
				double dot = 0;
				for (int u = 0; u <= t; u++)
					dot += (double)ar[u] * dr[u];
				float fd = (float)dot;
				for (int u = 0; u <= t; u++)
					dsr[u] = ar[u] * (dr[u] - fd);
				memset(dsr + t + 1, 0, (size_t)(T - t - 1) * sizeof *dsr);
			}
			/* dq [T,hs] += scale ds k;  dk [T,hs] += scale ds^T q */
			trail_k_sgemm(naive, 0, 0, T, hs, T, scale, ds, T, k, 3 * C, 1.0f, dq, 3 * C);
			trail_k_sgemm(naive, 1, 0, T, hs, T, scale, ds, T, q, 3 * C, 1.0f, dk, 3 * C);
		}
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

double trail_k_xent_fwd(const float *logits, const int32_t *tgt, int N, int V, long *counted)
{
	double total = 0;
	long n = 0;
	float *p = trail_malloc((size_t)V * sizeof *p);
	for (int i = 0; p && i < N; i++) {
		if (tgt[i] < 0)
			continue;
		const float *lg = logits + (size_t)i * V;
		total += softmax_row(p, lg, V) - lg[tgt[i]];
		n++;
	}
	trail_free(p);
	*counted = p ? n : -1;
	return total;
}

void trail_k_xent_bwd(float *dlogits, const float *logits, const int32_t *tgt, int N, int V, double inv)
{
	for (int i = 0; i < N; i++) {
		float *d = dlogits + (size_t)i * V;
		if (tgt[i] < 0) {
			memset(d, 0, (size_t)V * sizeof *d);
			continue;
		}
		softmax_row(d, logits + (size_t)i * V, V);
		float s = (float)inv;
		for (int v = 0; v < V; v++)
			d[v] *= s;
		d[tgt[i]] -= s;
	}
}

/* ---- configuration and parameters --------------------------------------------------- */

int trail_gpt2_config_parse(const json_t *j, trail_gpt2_config *c, trail_error *err)
{
	static const char *keys[] = {"n_layer", "n_head", "n_embd", "n_positions", "vocab_size"};
	int *dst[] = {&c->n_layer, &c->n_head, &c->n_embd, &c->n_positions, &c->vocab_size};
	if (!json_is_object(j))
		return trail_error_set(err, TRAIL_EDATA, "config: not a JSON object");
	for (int i = 0; i < 5; i++) {
		json_t *v = json_object_get(j, keys[i]);
		/* Hugging Face also writes n_ctx; older configs have only it */
		if (!v && i == 3)
			v = json_object_get(j, "n_ctx");
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 20))
			return trail_error_set(err, TRAIL_EDATA, "config: %s must be a positive integer", keys[i]);
		*dst[i] = (int)json_integer_value(v);
	}
	if (c->n_embd % c->n_head)
		return trail_error_set(err, TRAIL_EDATA, "config: n_embd %d is not a multiple of n_head %d",
				       c->n_embd, c->n_head);
	if ((double)trail_gpt2_num_params(c) > 1e10)
		return trail_error_set(err, TRAIL_ELIMIT, "config: %.3g parameters is beyond this implementation",
				       (double)trail_gpt2_num_params(c));
	const char *act = json_string_value(json_object_get(j, "activation_function"));
	if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
		return trail_error_set(err, TRAIL_EDATA, "config: activation_function %s (only gelu_new)", act);
	return TRAIL_OK;
}

json_t *trail_gpt2_config_json(const trail_gpt2_config *c)
{
	return json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:b}", "model_type", "gpt2",
			 "architectures", "GPT2LMHeadModel", "n_layer", c->n_layer, "n_head", c->n_head,
			 "n_embd", c->n_embd, "n_positions", c->n_positions, "n_ctx", c->n_positions,
			 "vocab_size", c->vocab_size, "activation_function", "gelu_new",
			 "layer_norm_epsilon", 1e-5, "tie_word_embeddings", 1);
}

size_t trail_gpt2_num_params(const trail_gpt2_config *c)
{
	size_t C = (size_t)c->n_embd;
	size_t per = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * 4 * C + 4 * C + 4 * C * C + C;
	return (size_t)c->vocab_size * C + (size_t)c->n_positions * C + (size_t)c->n_layer * per + 2 * C;
}

trail_lin *trail_model_lin(trail_model *m, int l, int k)
{
	trail_layer *y = &m->L[l];
	trail_lin *ls[4] = {&y->attn, &y->aproj, &y->fc, &y->mproj};
	return ls[k];
}

/*
 * Lay the views out in an arena (parameters, or gradients when grads):
 * wte, wpe, then per layer ln_1, c_attn, attn.c_proj, ln_2, c_fc,
 * mlp.c_proj (weight before bias), then ln_f.
 */
static void bind(trail_model *m, float *base, int grads)
{
	size_t C = (size_t)m->c.n_embd, o = 0;
#define TAKE(pp, gp, n)                         \
	do {                                    \
		*(grads ? &(gp) : &(pp)) = base + o; \
		o += (n);                       \
	} while (0)
	TAKE(m->wte, m->dwte, (size_t)m->c.vocab_size * C);
	TAKE(m->wpe, m->dwpe, (size_t)m->c.n_positions * C);
	static const char *nm[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &m->L[l];
		size_t io[4][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
		TAKE(y->ln1w, y->dln1w, C);
		TAKE(y->ln1b, y->dln1b, C);
		for (int k = 0; k < 4; k++) {
			trail_lin *L = trail_model_lin(m, l, k);
			if (k == 2) {
				TAKE(y->ln2w, y->dln2w, C);
				TAKE(y->ln2b, y->dln2b, C);
			}
			L->in = (int)io[k][0];
			L->out = (int)io[k][1];
			TAKE(L->W, L->dW, io[k][0] * io[k][1]);
			TAKE(L->b, L->db, io[k][1]);
			snprintf(L->name, sizeof L->name, "h.%d.%s", l, nm[k]);
		}
	}
	TAKE(m->lnfw, m->dlnfw, C);
	TAKE(m->lnfb, m->dlnfb, C);
#undef TAKE
}

static int alloc_model(const trail_gpt2_config *c, trail_model **out, trail_error *err)
{
	trail_model *m = trail_calloc(1, sizeof *m);
	if (!m)
		return fail_oom(err);
	m->c = *c;
	m->np = trail_gpt2_num_params(c);
	m->p = trail_calloc(m->np, sizeof *m->p);
	m->L = trail_calloc((size_t)c->n_layer, sizeof *m->L);
	if (!m->p || !m->L) {
		trail_model_free(m);
		return fail_oom(err);
	}
	bind(m, m->p, 0);
	*out = m;
	return TRAIL_OK;
}

/* The gradient arena, made on the first backward of a model without LoRA. */
static int need_grads(trail_model *m, trail_error *err)
{
	if (m->g || m->lp)
		return TRAIL_OK;
	if (!(m->g = trail_calloc(m->np, sizeof *m->g)))
		return fail_oom(err);
	bind(m, m->g, 1);
	return TRAIL_OK;
}

int trail_model_init(const trail_gpt2_config *c, uint64_t seed, trail_model **out,
		     trail_error *err)
{
	trail_model *m;
	int rc = alloc_model(c, &m, err);
	if (rc)
		return rc;
	uint64_t s = seed;
	size_t C = (size_t)c->n_embd;
	double proj = 0.02 / sqrt(2.0 * c->n_layer);
	normal_fill(m->wte, (size_t)c->vocab_size * C, 0.02, &s);
	normal_fill(m->wpe, (size_t)c->n_positions * C, 0.01, &s);
	for (int l = 0; l < c->n_layer; l++) {
		trail_layer *y = &m->L[l];
		for (size_t i = 0; i < C; i++)
			y->ln1w[i] = y->ln2w[i] = 1;
		normal_fill(y->attn.W, C * 3 * C, 0.02, &s);
		normal_fill(y->aproj.W, C * C, proj, &s);
		normal_fill(y->fc.W, C * 4 * C, 0.02, &s);
		normal_fill(y->mproj.W, 4 * C * C, proj, &s);
	}
	for (size_t i = 0; i < C; i++)
		m->lnfw[i] = 1;
	*out = m;
	return TRAIL_OK;
}

void trail_model_free(trail_model *m)
{
	if (!m)
		return;
	trail_free(m->p);
	trail_free(m->g);
	trail_free(m->lp);
	trail_free(m->lg);
	trail_free(m->L);
	trail_free(m->acts);
	trail_free(m->tok);
	trail_free(m->tgt);
	trail_free(m);
}

const trail_gpt2_config *trail_model_config(const trail_model *m)
{
	return &m->c;
}

void trail_model_set_reference(trail_model *m, int on)
{
	m->naive = on;
}

/* ---- saving and loading ------------------------------------------------------------ */

typedef struct pname {
	char name[64];
	float *data;
	int64_t shape[2];
	int ndim;
} pname;

/* Every parameter with its GPT-2 name, in arena order; v has 4 + 12 L entries. */
static size_t param_names(const trail_model *m, pname *v)
{
	size_t n = 0, C = (size_t)m->c.n_embd;
#define ADD(ptr, d0, d1, nd, ...)                                            \
	do {                                                                 \
		snprintf(v[n].name, sizeof v[n].name, __VA_ARGS__);          \
		v[n].data = (ptr);                                           \
		v[n].shape[0] = (int64_t)(d0);                               \
		v[n].shape[1] = (int64_t)(d1);                               \
		v[n].ndim = (nd);                                            \
		n++;                                                         \
	} while (0)
	ADD(m->wte, m->c.vocab_size, C, 2, "wte.weight");
	ADD(m->wpe, m->c.n_positions, C, 2, "wpe.weight");
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &m->L[l];
		ADD(y->ln1w, C, 0, 1, "h.%d.ln_1.weight", l);
		ADD(y->ln1b, C, 0, 1, "h.%d.ln_1.bias", l);
		ADD(y->ln2w, C, 0, 1, "h.%d.ln_2.weight", l);
		ADD(y->ln2b, C, 0, 1, "h.%d.ln_2.bias", l);
		for (int k = 0; k < 4; k++) {
			const trail_lin *L = trail_model_lin((trail_model *)m, l, k);
			ADD(L->W, L->in, L->out, 2, "%s.weight", L->name);
			ADD(L->b, L->out, 0, 1, "%s.bias", L->name);
		}
	}
	ADD(m->lnfw, C, 0, 1, "ln_f.weight");
	ADD(m->lnfb, C, 0, 1, "ln_f.bias");
#undef ADD
	return n;
}

static int write_json(const char *dir, const char *file, const json_t *j, trail_error *err)
{
	char *path = trail_path(dir, file), *buf = NULL;
	size_t len;
	int rc;
	if (!path || !j)
		rc = fail_oom(err);
	else if (!(rc = trail_jcs(j, &buf, &len, err))) {
		buf[len] = '\n'; /* trail_jcs leaves room for the NUL */
		rc = trail_write_atomic(path, buf, len + 1, 0644, err);
	}
	trail_free(buf);
	trail_free(path);
	return rc;
}

int trail_model_save(const trail_model *m, const char *dir, trail_error *err)
{
	size_t cap = 4 + 12 * (size_t)m->c.n_layer;
	pname *v = trail_calloc(cap, sizeof *v);
	trail_st_tensor *t = trail_calloc(cap, sizeof *t);
	char *path = NULL;
	json_t *conf = NULL, *meta = NULL;
	int rc;
	if (!v || !t) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_mkdirs(dir, 0755, err)))
		goto out;
	size_t n = param_names(m, v);
	for (size_t i = 0; i < n; i++)
		t[i] = (trail_st_tensor){.name = v[i].name, .data = v[i].data, .ndim = v[i].ndim,
					 .shape = {v[i].shape[0], v[i].shape[1]}};
	meta = json_pack("{s:s}", "format", "pt");
	if (!(path = trail_path(dir, "model.safetensors")) || !meta) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_st_write(path, t, n, meta, err)))
		goto out;
	conf = trail_gpt2_config_json(&m->c);
	rc = write_json(dir, "config.json", conf, err);
out:
	json_decref(conf);
	json_decref(meta);
	trail_free(path);
	trail_free(v);
	trail_free(t);
	return rc;
}

int trail_model_load(const char *arg, trail_model **out, trail_error *err)
{
	struct stat sb;
	char *dir = NULL, *cp = NULL, *wp = NULL;
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	trail_st *st = NULL;
	trail_model *m = NULL;
	pname *v = NULL;
	trail_gpt2_config c;
	int rc;
	*out = NULL;
	if (stat(arg, &sb)) {
		rc = trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", arg);
		goto out;
	}
	/* a directory, or its model.safetensors (config.json beside it) */
	if (S_ISDIR(sb.st_mode)) {
		dir = trail_strdup(arg);
		wp = trail_path(arg, "model.safetensors");
	} else {
		const char *sl = strrchr(arg, '/');
		dir = sl ? trail_strdup(arg) : trail_strdup(".");
		if (dir && sl)
			dir[sl - arg ? sl - arg : 1] = 0;
		wp = trail_strdup(arg);
	}
	if (!dir || !wp || !(cp = trail_path(dir, "config.json"))) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_read_file(cp, 1 << 20, &cb, &cl, err)) || (rc = trail_json_parse(cb, cl, cp, &cj, err)))
		goto out;
	if ((rc = trail_gpt2_config_parse(cj, &c, err))) {
		trail_error_at(err, rc, cp, 0, "%s", err ? err->msg : "bad config");
		goto out;
	}
	if ((rc = trail_st_open(wp, &st, err)) || (rc = alloc_model(&c, &m, err)))
		goto out;
	if (!(v = trail_calloc(4 + 12 * (size_t)c.n_layer, sizeof *v))) {
		rc = fail_oom(err);
		goto out;
	}
	size_t n = param_names(m, v);
	/* Hugging Face's GPT2LMHeadModel prefixes names with "transformer." */
	const char *prefix = trail_st_has(st, "transformer.wte.weight") ? "transformer." : "";
	size_t pl = strlen(prefix);
	for (size_t i = 0; i < n; i++) {
		char full[96];
		snprintf(full, sizeof full, "%s%s", prefix, v[i].name);
		if ((rc = trail_st_read_f32(st, full, v[i].shape, v[i].ndim, v[i].data, err)))
			goto out;
	}
	/* anything else must be a causal-mask buffer or the tied head */
	for (size_t i = 0; i < trail_st_count(st); i++) {
		const char *nm = trail_st_name(st, i), *bare = strncmp(nm, prefix, pl) ? nm : nm + pl;
		size_t bl = strlen(bare);
		int known = !strcmp(nm, "lm_head.weight") ||
			    (!strncmp(bare, "h.", 2) && ((bl > 10 && !strcmp(bare + bl - 10, ".attn.bias")) ||
							 (bl > 17 && !strcmp(bare + bl - 17, ".attn.masked_bias"))));
		for (size_t k = 0; !known && k < n; k++)
			known = !strcmp(bare, v[k].name);
		if (!known) {
			rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "unknown tensor %s", nm);
			goto out;
		}
	}
	*out = m;
	m = NULL;
out:
	trail_model_free(m);
	trail_st_free(st);
	json_decref(cj);
	trail_free(cb);
	trail_free(cp);
	trail_free(wp);
	trail_free(dir);
	trail_free(v);
	return rc;
}

/* ---- activations ---------------------------------------------------------------- */

static int ensure_acts(trail_model *m, int B, int T, trail_error *err)
{
	size_t N = (size_t)B * (size_t)T, C = (size_t)m->c.n_embd, V = (size_t)m->c.vocab_size;
	size_t NH = (size_t)m->c.n_head, r = m->lp ? (size_t)m->lc.r : 0;
	if ((int)N <= m->cap && T <= m->capT) { /* then B T^2 <= cap capT too */
		m->B = B;
		m->T = T;
		return TRAIL_OK;
	}
	/* per layer: ln1, qkv, atty, res1, ln2, fch, fchg, res2 = 16C per row, att, LN stats, LoRA u */
	size_t per = N * 16 * C + (size_t)B * NH * (size_t)T * (size_t)T + 4 * N + 4 * N * r;
	size_t keep = m->keep_io ? N * 12 * C : 0; /* the room stays until the next reallocation */
	/* scratch: dres | dln | dbig [4C] | dqkv [3C] | LoRA [r] per row, then 2 T^2 for attention */
	size_t scratch = N * (9 * C + r) + 2 * (size_t)T * T;
	size_t total = 2 * N * C + 2 * N + 2 * N * V + (size_t)m->c.n_layer * (per + keep) + scratch;
	trail_free(m->acts);
	trail_free(m->tok);
	trail_free(m->tgt);
	m->cap = 0;
	m->acts = trail_malloc(total * sizeof(float));
	m->tok = trail_calloc(N, sizeof *m->tok);
	m->tgt = trail_calloc(N, sizeof *m->tgt);
	if (!m->acts || !m->tok || !m->tgt)
		return fail_oom(err);
	float *p = m->acts;
#define TAKE(ptr, n)       \
	do {               \
		(ptr) = p; \
		p += (n);  \
	} while (0)
	TAKE(m->x0, N * C);
	TAKE(m->lnf, N * C);
	TAKE(m->lnfm, N);
	TAKE(m->lnfr, N);
	TAKE(m->logits, N * V);
	TAKE(m->dlogits, N * V);
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &m->L[l];
		TAKE(y->ln1, N * C);
		TAKE(y->ln1m, N);
		TAKE(y->ln1r, N);
		TAKE(y->qkv, N * 3 * C);
		TAKE(y->att, (size_t)B * NH * (size_t)T * (size_t)T);
		TAKE(y->atty, N * C);
		TAKE(y->res1, N * C);
		TAKE(y->ln2, N * C);
		TAKE(y->ln2m, N);
		TAKE(y->ln2r, N);
		TAKE(y->fch, N * 4 * C);
		TAKE(y->fchg, N * 4 * C);
		TAKE(y->res2, N * C);
		for (int k = 0; k < 4; k++) {
			trail_lin *L = trail_model_lin(m, l, k);
			L->u = NULL;
			if (L->A)
				TAKE(L->u, N * r);
			L->keep_room = NULL;
			if (m->keep_io)
				TAKE(L->keep_room, N * (size_t)L->out);
			L->keep_dy = L->keep_room;
		}
	}
	TAKE(m->scratch, scratch);
#undef TAKE
	m->B = B;
	m->T = T;
	m->cap = (int)N;
	m->capT = T;
	return TRAIL_OK;
}

/* ---- the model -------------------------------------------------------------------- */

int trail_model_forward(trail_model *m, const int32_t *tokens, const int32_t *targets, int B,
			int T, float *loss, trail_error *err)
{
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, r = m->lp ? m->lc.r : 0, rc;
	float s = (float)m->scale;
	if (B < 1 || T < 1 || T > m->c.n_positions || (size_t)B * (size_t)T > (size_t)1 << 30)
		return trail_error_set(err, TRAIL_EUSAGE, "sequence length %d outside 1..%d", T, m->c.n_positions);
	int N = B * T;
	for (int i = 0; i < N; i++) {
		if (tokens[i] < 0 || tokens[i] >= V)
			return trail_error_set(err, TRAIL_EDATA, "token %d outside the vocabulary (%d)", tokens[i], V);
		if (targets && targets[i] >= V)
			return trail_error_set(err, TRAIL_EDATA, "target %d outside the vocabulary (%d)", targets[i], V);
	}
	if ((rc = ensure_acts(m, B, T, err)))
		return rc;
	for (int i = 0; i < N; i++) {
		m->tok[i] = tokens[i];
		m->tgt[i] = targets && targets[i] >= 0 ? targets[i] : -1;
	}
	/* x0 [N,C] = wte[tok] + wpe[t] */
	for (int i = 0; i < N; i++) {
		const float *e = m->wte + (size_t)m->tok[i] * C, *pe = m->wpe + (size_t)(i % T) * C;
		float *x = m->x0 + (size_t)i * C;
		for (int c = 0; c < C; c++)
			x[c] = e[c] + pe[c];
	}
	const float *x = m->x0;
	float *tmp = m->scratch;
	size_t NC = (size_t)N * C;
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &m->L[l];
		/* res1 = x + attn.c_proj(attention(c_attn(ln_1(x)))) */
		trail_k_layernorm_fwd(y->ln1, y->ln1m, y->ln1r, x, y->ln1w, y->ln1b, N, C);
		trail_k_linear_fwd(m->naive, &y->attn, r, s, y->qkv, y->ln1, N);
		trail_k_attention_fwd(m->naive, y->atty, y->att, y->qkv, B, T, C, NH);
		trail_k_linear_fwd(m->naive, &y->aproj, r, s, tmp, y->atty, N);
		for (size_t i = 0; i < NC; i++)
			y->res1[i] = x[i] + tmp[i];
		/* res2 = res1 + mlp.c_proj(gelu(c_fc(ln_2(res1)))) */
		trail_k_layernorm_fwd(y->ln2, y->ln2m, y->ln2r, y->res1, y->ln2w, y->ln2b, N, C);
		trail_k_linear_fwd(m->naive, &y->fc, r, s, y->fch, y->ln2, N);
		trail_k_gelu_fwd(y->fchg, y->fch, (size_t)N * 4 * C);
		trail_k_linear_fwd(m->naive, &y->mproj, r, s, tmp, y->fchg, N);
		for (size_t i = 0; i < NC; i++)
			y->res2[i] = y->res1[i] + tmp[i];
		x = y->res2;
	}
	trail_k_layernorm_fwd(m->lnf, m->lnfm, m->lnfr, x, m->lnfw, m->lnfb, N, C);
	/* logits [N,V] = lnf [N,C] wte^T (the tied head) */
	trail_k_sgemm(m->naive, 0, 1, N, V, C, 1.0f, m->lnf, C, m->wte, C, 0.0f, m->logits, V);
	double total = trail_k_xent_fwd(m->logits, m->tgt, N, V, &m->counted);
	if (m->counted < 0) {
		m->cap = 0;
		return fail_oom(err);
	}
	m->loss = m->counted ? (float)(total / (double)m->counted) : 0.0f;
	if (loss)
		*loss = m->loss;
	return TRAIL_OK;
}

const float *trail_model_logits(const trail_model *m)
{
	return m->logits;
}

void trail_model_zero_grad(trail_model *m)
{
	if (m->g)
		memset(m->g, 0, m->np * sizeof *m->g);
	if (m->lg)
		memset(m->lg, 0, m->nlp * sizeof *m->lg);
}

int trail_model_backward(trail_model *m, trail_error *err)
{
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, B = m->B, T = m->T, N = B * T, rc;
	int r = m->lp ? m->lc.r : 0, nv = m->naive;
	float s = (float)m->scale;
	if (!m->cap)
		return trail_error_set(err, TRAIL_EUSAGE, "backward before forward");
	if (!m->g && !m->lp) {
		if ((rc = need_grads(m, err)))
			return rc;
		trail_model_zero_grad(m);
	}
	size_t NC = (size_t)N * C;
	/* scratch: dres [N,C] | dln [N,C] | dbig [N,4C] | dqkv [N,3C] | LoRA [N,r] | attention [2T^2] */
	float *dres = m->scratch, *dln = dres + NC, *dbig = dln + NC, *dqkv = dbig + 4 * NC;
	float *dlora = dqkv + 3 * NC, *datt = dlora + (size_t)N * r;
	/* the mean loss: dlogits = (softmax - onehot) / counted */
	trail_k_xent_bwd(m->dlogits, m->logits, m->tgt, N, V, m->counted ? 1.0 / (double)m->counted : 0);
	/* head: dwte [V,C] += dlogits^T lnf;  dlnf [N,C] = dlogits wte */
	if (m->dwte)
		trail_k_sgemm(nv, 1, 0, V, C, N, 1.0f, m->dlogits, V, m->lnf, C, 1.0f, m->dwte, C);
	trail_k_sgemm(nv, 0, 0, N, C, V, 1.0f, m->dlogits, V, m->wte, C, 0.0f, dln, C);
	memset(dres, 0, NC * sizeof *dres);
	const float *xlast = m->c.n_layer ? m->L[m->c.n_layer - 1].res2 : m->x0;
	trail_k_layernorm_bwd(dres, m->dlnfw, m->dlnfb, dln, xlast, m->lnfw, m->lnfm, m->lnfr, N, C);
	/* dres carries the gradient of the residual stream down the layers */
	for (int l = m->c.n_layer - 1; l >= 0; l--) {
		trail_layer *y = &m->L[l];
		const float *xin = l ? m->L[l - 1].res2 : m->x0;
		int first = l == 0 && !m->dwte; /* nothing below needs dx: embeddings frozen */
		memset(dbig, 0, 4 * NC * sizeof *dbig);
		trail_k_linear_bwd(nv, &y->mproj, r, s, dbig, dres, N, dlora);
		trail_k_gelu_bwd(dbig, y->fch, dbig, 4 * NC);
		memset(dln, 0, NC * sizeof *dln);
		trail_k_linear_bwd(nv, &y->fc, r, s, dln, dbig, N, dlora);
		trail_k_layernorm_bwd(dres, y->dln2w, y->dln2b, dln, y->res1, y->ln2w, y->ln2m, y->ln2r, N, C);
		memset(dln, 0, NC * sizeof *dln); /* d atty */
		trail_k_linear_bwd(nv, &y->aproj, r, s, dln, dres, N, dlora);
		memset(dqkv, 0, 3 * NC * sizeof *dqkv);
		trail_k_attention_bwd(nv, dqkv, dln, y->att, y->qkv, B, T, C, NH, datt);
		if (first && !y->dln1w) { /* LoRA on the first layer: only its own gradients remain */
			trail_k_linear_bwd(nv, &y->attn, r, s, NULL, dqkv, N, dlora);
			break;
		}
		memset(dln, 0, NC * sizeof *dln);
		trail_k_linear_bwd(nv, &y->attn, r, s, dln, dqkv, N, dlora);
		trail_k_layernorm_bwd(dres, y->dln1w, y->dln1b, dln, xin, y->ln1w, y->ln1m, y->ln1r, N, C);
	}
	if (m->dwte)
		for (int i = 0; i < N; i++) {
			float *dw = m->dwte + (size_t)m->tok[i] * C, *dp = m->dwpe + (size_t)(i % T) * C;
			const float *d = dres + (size_t)i * C;
			for (int c = 0; c < C; c++) {
				dw[c] += d[c];
				dp[c] += d[c];
			}
		}
	return TRAIL_OK;
}

float *trail_model_params(trail_model *m, size_t *n)
{
	*n = m->lp ? m->nlp : m->np;
	return m->lp ? m->lp : m->p;
}

float *trail_model_grads(trail_model *m, size_t *n)
{
	*n = m->lp ? m->nlp : m->np;
	if (!m->lp && need_grads(m, NULL))
		return NULL;
	return m->lp ? m->lg : m->g;
}

/* ---- attribution ------------------------------------------------------------------- */

void trail_model_keep_linear_io(trail_model *m, int on)
{
	if (m->keep_io == !!on)
		return;
	m->keep_io = !!on;
	if (on && (!m->cap || !trail_model_lin(m, 0, 0)->keep_room)) {
		m->cap = 0; /* reallocate with room for dY */
		return;
	}
	/* switch the copies on or off in the arena as it is: no new pages to fault in */
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++) {
			trail_lin *L = trail_model_lin(m, l, k);
			L->keep_dy = on ? L->keep_room : NULL;
		}
}

int trail_model_num_linear(const trail_model *m)
{
	int n = 0;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++)
			n += !m->lp || trail_model_lin((trail_model *)m, l, k)->A;
	return n;
}

/* The i-th trained linear layer (LoRA-targeted ones when the model has LoRA). */
static trail_lin *trained(const trail_model *m, int i)
{
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++) {
			trail_lin *L = trail_model_lin((trail_model *)m, l, k);
			if ((!m->lp || L->A) && i-- == 0)
				return L;
		}
	return NULL;
}

int trail_model_linear_io(const trail_model *m, int i, const char **name, const float **X,
			  const float **dY, int *in, int *out, int *T)
{
	trail_lin *L = i >= 0 ? trained(m, i) : NULL;
	if (!L)
		return TRAIL_EUSAGE;
	*name = L->name;
	*X = m->cap ? L->x : NULL;
	*dY = m->cap ? L->keep_dy : NULL;
	*in = L->in;
	*out = L->out;
	*T = m->B * m->T;
	return TRAIL_OK;
}

int trail_model_linear_lora(const trail_model *m, int i, const float **A, const float **B, int *r,
			    double *scale)
{
	trail_lin *L = i >= 0 ? trained(m, i) : NULL;
	if (!L || !L->A)
		return TRAIL_EUSAGE;
	*A = L->A;
	*B = L->Bm;
	*r = m->lc.r;
	*scale = m->scale;
	return TRAIL_OK;
}
