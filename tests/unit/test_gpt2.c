/*
 * The model against a naive double-precision reference written here from
 * the definitions (no BLAS). Each layer kernel alone: its output against
 * the reference and its gradients against central finite differences of
 * the reference (relative error < 1e-3). Then the whole model and the LoRA
 * matrices the same way, the BLAS path against the naive reference path,
 * the attribution interface (X and dY give the weight gradients), and a
 * few optimiser steps lowering the loss.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"
#include "core/core.h"

enum { L = 2, NH = 2, C = 8, P = 8, V = 11, B = 2, T = 5 };

/* ---- reference, in double, from the parameter vectors ---- */

typedef struct ref {
	const double *p;  /* base parameters, arena order */
	const double *lp; /* LoRA parameters (A then B per targeted layer), or NULL */
	int r, targets;
	double scale;
} ref;

static void ref_linear(const ref *R, const double **pp, const double **lpp, int k, const double *x, int in, int out,
		       double *y)
{
	const double *W = *pp, *b = W + in * out;
	*pp = b + out;
	for (int t = 0; t < T; t++)
		for (int o = 0; o < out; o++) {
			double s = b[o];
			for (int i = 0; i < in; i++)
				s += x[t * in + i] * W[i * out + o];
			y[t * out + o] = s;
		}
	if (R->lp && (R->targets & (1 << k))) {
		const double *A = *lpp, *Bm = A + R->r * in;
		*lpp = Bm + out * R->r;
		for (int t = 0; t < T; t++)
			for (int o = 0; o < out; o++) {
				double s = 0;
				for (int j = 0; j < R->r; j++) {
					double u = 0;
					for (int i = 0; i < in; i++)
						u += x[t * in + i] * A[j * in + i];
					s += u * Bm[o * R->r + j];
				}
				y[t * out + o] += R->scale * s;
			}
	}
}

static void ref_ln(const double **pp, const double *x, double *y)
{
	const double *w = *pp, *b = w + C;
	*pp = b + C;
	for (int t = 0; t < T; t++) {
		double m = 0, v = 0;
		for (int c = 0; c < C; c++)
			m += x[t * C + c] / C;
		for (int c = 0; c < C; c++)
			v += (x[t * C + c] - m) * (x[t * C + c] - m) / C;
		for (int c = 0; c < C; c++)
			y[t * C + c] = (x[t * C + c] - m) / sqrt(v + 1e-5) * w[c] + b[c];
	}
}

/* mean cross-entropy over the targets that are not -1, and logits */
static double ref_loss(const ref *R, const int *tok, const int *tgt, double *logits_out)
{
	double total = 0;
	int counted = 0;
	for (int b = 0; b < B; b++) {
		const double *wte = R->p, *wpe = wte + V * C, *pp = wpe + P * C, *lpp = R->lp;
		double x[T * C], ln[T * C], qkv[T * 3 * C], y[T * C], tmp[T * 4 * C], h[T * 4 * C];
		for (int t = 0; t < T; t++)
			for (int c = 0; c < C; c++)
				x[t * C + c] = wte[tok[b * T + t] * C + c] + wpe[t * C + c];
		for (int l = 0; l < L; l++) {
			ref_ln(&pp, x, ln);
			ref_linear(R, &pp, &lpp, 0, ln, C, 3 * C, qkv);
			int hs = C / NH;
			for (int hh = 0; hh < NH; hh++)
				for (int t = 0; t < T; t++) {
					double a[T], mx = -1e300, sum = 0;
					for (int u = 0; u <= t; u++) {
						a[u] = 0;
						for (int i = 0; i < hs; i++)
							a[u] += qkv[t * 3 * C + hh * hs + i] * qkv[u * 3 * C + C + hh * hs + i];
						a[u] /= sqrt((double)hs);
						mx = a[u] > mx ? a[u] : mx;
					}
					for (int u = 0; u <= t; u++)
						sum += (a[u] = exp(a[u] - mx));
					for (int i = 0; i < hs; i++) {
						double s = 0;
						for (int u = 0; u <= t; u++)
							s += a[u] / sum * qkv[u * 3 * C + 2 * C + hh * hs + i];
						y[t * C + hh * hs + i] = s;
					}
				}
			ref_linear(R, &pp, &lpp, 1, y, C, C, tmp);
			for (int i = 0; i < T * C; i++)
				x[i] += tmp[i];
			ref_ln(&pp, x, ln);
			ref_linear(R, &pp, &lpp, 2, ln, C, 4 * C, h);
			for (int i = 0; i < T * 4 * C; i++) {
				double v = h[i];
				h[i] = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
			}
			ref_linear(R, &pp, &lpp, 3, h, 4 * C, C, tmp);
			for (int i = 0; i < T * C; i++)
				x[i] += tmp[i];
		}
		ref_ln(&pp, x, ln);
		for (int t = 0; t < T; t++) {
			double lg[V], mx = -1e300, sum = 0;
			for (int v = 0; v < V; v++) {
				lg[v] = 0;
				for (int c = 0; c < C; c++)
					lg[v] += ln[t * C + c] * wte[v * C + c];
				mx = lg[v] > mx ? lg[v] : mx;
				if (logits_out)
					logits_out[(b * T + t) * V + v] = lg[v];
			}
			if (tgt[b * T + t] < 0)
				continue;
			for (int v = 0; v < V; v++)
				sum += exp(lg[v] - mx);
			total += log(sum) + mx - lg[tgt[b * T + t]];
			counted++;
		}
	}
	return total / counted;
}

static double *to_double(const float *x, size_t n)
{
	double *d = malloc(n * sizeof *d);
	for (size_t i = 0; i < n; i++)
		d[i] = x[i];
	return d;
}

/* Finite differences of the reference against the model's gradients, at every index. */
static int check_grads(const ref *R0, double *vec, size_t n, const float *g, const int *tok, const int *tgt,
		       double *worst)
{
	ref R = *R0;
	int bad = 0;
	*worst = 0;
	for (size_t i = 0; i < n; i++) {
		double keep = vec[i], h = 1e-5;
		vec[i] = keep + h;
		double lp = ref_loss(&R, tok, tgt, NULL);
		vec[i] = keep - h;
		double lm = ref_loss(&R, tok, tgt, NULL);
		vec[i] = keep;
		double fd = (lp - lm) / (2 * h), an = g[i];
		double rel = fabs(fd - an) / fmax(fabs(fd) + fabs(an), 1e-3);
		if (rel > *worst)
			*worst = rel;
		if (rel > 1e-3)
			bad++;
	}
	return bad;
}

/* ---- one layer at a time ---- */

static uint64_t lcg = 88172645463325252ULL;
static double rnd(void) /* uniform in [-1, 1) */
{
	lcg ^= lcg << 13, lcg ^= lcg >> 7, lcg ^= lcg << 17;
	return (double)(lcg >> 11) / 4503599627370496.0 - 1.0;
}

static float *frand(size_t n, double scale)
{
	float *x = malloc(n * sizeof *x);
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(scale * rnd());
	return x;
}

/*
 * f(v) is a scalar function of the concatenated inputs v (double); g the
 * kernel's gradient of it (float, same layout). Every index when n is small,
 * else 300 spread over the vector. Returns the worst relative error.
 */
typedef double (*scalar_fn)(const double *v);
static double fd_check(scalar_fn f, const float *v0, const float *g, size_t n)
{
	double *v = malloc(n * sizeof *v), worst = 0;
	for (size_t i = 0; i < n; i++)
		v[i] = v0[i];
	size_t step = n <= 300 ? 1 : n / 300;
	for (size_t i = 0; i < n; i += step) {
		double keep = v[i], h = 1e-5 * fmax(1, fabs(keep));
		v[i] = keep + h;
		double fp = f(v);
		v[i] = keep - h;
		double fm = f(v);
		v[i] = keep;
		double fd = (fp - fm) / (2 * h), rel = fabs(fd - g[i]) / fmax(fabs(fd) + fabs(g[i]), 1e-3);
		worst = fmax(worst, rel);
	}
	free(v);
	return worst;
}

static void cat(float *dst, size_t *o, const float *src, size_t n)
{
	memcpy(dst + *o, src, n * sizeof *src);
	*o += n;
}

/* LayerNorm: v = x [KN,KC] | w [KC] | b [KC]; f = sum R * ln(x) */
enum { KN = 6, KC = 10 };
static float *kR;
static double ln_ref(const double *v, double *out)
{
	const double *x = v, *w = v + KN * KC, *b = w + KC;
	double f = 0;
	for (int i = 0; i < KN; i++) {
		double m = 0, var = 0;
		for (int c = 0; c < KC; c++)
			m += x[i * KC + c] / KC;
		for (int c = 0; c < KC; c++)
			var += (x[i * KC + c] - m) * (x[i * KC + c] - m) / KC;
		for (int c = 0; c < KC; c++) {
			double y = (x[i * KC + c] - m) / sqrt(var + 1e-5) * w[c] + b[c];
			if (out)
				out[i * KC + c] = y;
			f += kR[i * KC + c] * y;
		}
	}
	return f;
}
static double ln_f(const double *v)
{
	return ln_ref(v, NULL);
}

static void test_layernorm(void)
{
	float *x = frand(KN * KC, 2), *w = frand(KC, 1), *b = frand(KC, 0.5), out[KN * KC], mean[KN], rstd[KN];
	float dx[KN * KC] = {0}, dw[KC] = {0}, db[KC] = {0}, v[KN * KC + 2 * KC], g[KN * KC + 2 * KC];
	double want[KN * KC], md = 0;
	kR = frand(KN * KC, 1);
	size_t o = 0;
	cat(v, &o, x, KN * KC), cat(v, &o, w, KC), cat(v, &o, b, KC);
	trail_k_layernorm_fwd(out, mean, rstd, x, w, b, KN, KC);
	double dv[KN * KC + 2 * KC];
	for (size_t i = 0; i < o; i++)
		dv[i] = v[i];
	ln_ref(dv, want);
	for (int i = 0; i < KN * KC; i++)
		md = fmax(md, fabs(out[i] - want[i]));
	trail_k_layernorm_bwd(dx, dw, db, kR, x, w, mean, rstd, KN, KC);
	o = 0;
	cat(g, &o, dx, KN * KC), cat(g, &o, dw, KC), cat(g, &o, db, KC);
	double worst = fd_check(ln_f, v, g, o);
	ok(md < 1e-5 && worst < 1e-3, "layernorm: output maxdiff %.1e, gradients of x, w, b worst rel %.1e", md, worst);
	free(x), free(w), free(b), free(kR);
}

/* GELU: f = sum R * gelu(x), x over [-6, 6] */
static double gelu_ref(double x)
{
	return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
static double gelu_f(const double *v)
{
	double f = 0;
	for (int i = 0; i < 203; i++)
		f += kR[i] * gelu_ref(v[i]);
	return f;
}

static void test_gelu(void)
{
	float *x = frand(203, 6), y[203], dx[203];
	double md = 0;
	kR = frand(203, 1);
	trail_k_gelu_fwd(y, x, 203);
	for (int i = 0; i < 203; i++)
		md = fmax(md, fabs(y[i] - gelu_ref(x[i])));
	trail_k_gelu_bwd(dx, x, kR, 203);
	double worst = fd_check(gelu_f, x, dx, 203);
	ok(md < 2e-6 && worst < 1e-3, "gelu: output maxdiff %.1e, gradient worst rel %.1e (203 values: the vector tail too)",
	   md, worst);
	free(x), free(kR);
}

/* exp over the range the kernels use, and its clamping */
static void test_expf(void)
{
	enum { NE = 4001 };
	float *x = malloc(NE * sizeof *x), *y = malloc(NE * sizeof *y);
	for (int i = 0; i < NE; i++)
		x[i] = -100.0f + 190.0f * (float)i / (NE - 1);
	trail_k_expf(y, x, NE);
	double worst = 0;
	int finite = 1;
	for (int i = 0; i < NE; i++) {
		finite &= isfinite(y[i]) && y[i] >= 0;
		if (x[i] > -87 && x[i] < 88)
			worst = fmax(worst, fabs(y[i] - exp((double)x[i])) / exp((double)x[i]));
	}
	ok(worst < 3e-7 && finite, "expf: worst relative error %.1e over [-87, 88], finite and >= 0 on [-100, 90]", worst);
	free(x), free(y);
}

/* linear with LoRA: v = x [KN,IN] | W [IN,OUT] | b [OUT] | A [LR,IN] | B [OUT,LR] */
enum { IN = 7, OUT = 5, LR = 3 };
static const double lin_scale = 1.75;
static double lin_ref(const double *v, double *out)
{
	const double *x = v, *W = x + KN * IN, *b = W + IN * OUT, *A = b + OUT, *Bm = A + LR * IN;
	double f = 0;
	for (int i = 0; i < KN; i++)
		for (int o = 0; o < OUT; o++) {
			double y = b[o];
			for (int k = 0; k < IN; k++)
				y += x[i * IN + k] * W[k * OUT + o];
			for (int j = 0; j < LR; j++) {
				double u = 0;
				for (int k = 0; k < IN; k++)
					u += x[i * IN + k] * A[j * IN + k];
				y += lin_scale * u * Bm[o * LR + j];
			}
			if (out)
				out[i * OUT + o] = y;
			f += kR[i * OUT + o] * y;
		}
	return f;
}
static double lin_f(const double *v)
{
	return lin_ref(v, NULL);
}

static void test_linear(int naive)
{
	enum { NV = KN * IN + IN * OUT + OUT + LR * IN + OUT * LR };
	float *v = frand(NV, 1), g[NV] = {0}, y[KN * OUT], u[KN * LR], scratch[KN * LR], dx[KN * IN] = {0};
	trail_lin Ln = {.in = IN, .out = OUT, .u = u};
	Ln.W = v + KN * IN, Ln.b = Ln.W + IN * OUT, Ln.A = Ln.b + OUT, Ln.Bm = Ln.A + LR * IN;
	Ln.dW = g + KN * IN, Ln.db = Ln.dW + IN * OUT, Ln.dA = Ln.db + OUT, Ln.dB = Ln.dA + LR * IN;
	kR = frand(KN * OUT, 1);
	trail_k_linear_fwd(naive, &Ln, LR, (float)lin_scale, y, v, KN);
	double dv[NV], want[KN * OUT], md = 0;
	for (int i = 0; i < NV; i++)
		dv[i] = v[i];
	lin_ref(dv, want);
	for (int i = 0; i < KN * OUT; i++)
		md = fmax(md, fabs(y[i] - want[i]));
	trail_k_linear_bwd(naive, &Ln, LR, (float)lin_scale, dx, kR, KN, scratch);
	memcpy(g, dx, sizeof dx);
	double worst = fd_check(lin_f, v, g, NV);
	ok(md < 1e-5 && worst < 1e-3,
	   "linear + LoRA (%s): output maxdiff %.1e, gradients of x, W, b, A, B worst rel %.1e", naive ? "reference loop" : "BLAS",
	   md, worst);
	free(v), free(kR);
}

/* attention: v = qkv [AB,AT,3 AC]; f = sum R * y */
enum { AB = 2, AT = 5, AC = 6, ANH = 2 };
static double att_ref(const double *qkv, double *out)
{
	int hs = AC / ANH;
	double f = 0;
	for (int b = 0; b < AB; b++)
		for (int h = 0; h < ANH; h++)
			for (int t = 0; t < AT; t++) {
				double a[AT], mx = -1e300, sum = 0;
				const double *q = qkv + (b * AT + t) * 3 * AC + h * hs;
				for (int u = 0; u <= t; u++) {
					const double *k = qkv + (b * AT + u) * 3 * AC + AC + h * hs;
					a[u] = 0;
					for (int i = 0; i < hs; i++)
						a[u] += q[i] * k[i] / sqrt(hs);
					mx = fmax(mx, a[u]);
				}
				for (int u = 0; u <= t; u++)
					sum += (a[u] = exp(a[u] - mx));
				for (int i = 0; i < hs; i++) {
					double y = 0;
					for (int u = 0; u <= t; u++)
						y += a[u] / sum * qkv[(b * AT + u) * 3 * AC + 2 * AC + h * hs + i];
					if (out)
						out[(b * AT + t) * AC + h * hs + i] = y;
					f += kR[(b * AT + t) * AC + h * hs + i] * y;
				}
			}
	return f;
}
static double att_f(const double *v)
{
	return att_ref(v, NULL);
}

static void test_attention(int naive)
{
	enum { NQ = AB * AT * 3 * AC };
	float *qkv = frand(NQ, 1.5), y[AB * AT * AC], att[AB * ANH * AT * AT], dqkv[NQ] = {0}, scratch[2 * AT * AT];
	kR = frand(AB * AT * AC, 1);
	trail_k_attention_fwd(naive, y, att, qkv, AB, AT, AC, ANH);
	double dv[NQ], want[AB * AT * AC], md = 0;
	for (int i = 0; i < NQ; i++)
		dv[i] = qkv[i];
	att_ref(dv, want);
	for (int i = 0; i < AB * AT * AC; i++)
		md = fmax(md, fabs(y[i] - want[i]));
	trail_k_attention_bwd(naive, dqkv, kR, att, qkv, AB, AT, AC, ANH, scratch);
	double worst = fd_check(att_f, qkv, dqkv, NQ);
	ok(md < 1e-5 && worst < 1e-3, "causal attention (%s): output maxdiff %.1e, gradient of q, k, v worst rel %.1e",
	   naive ? "reference loop" : "BLAS", md, worst);
	free(qkv), free(kR);
}

/* cross-entropy: f = mean over counted rows of -log softmax(logits)[target] */
enum { XN = 5, XV = 9 };
static const int32_t xt[XN] = {3, -1, 0, 8, 3};
static double xent_f(const double *lg)
{
	double f = 0;
	for (int i = 0; i < XN; i++) {
		if (xt[i] < 0)
			continue;
		double mx = -1e300, s = 0;
		for (int v = 0; v < XV; v++)
			mx = fmax(mx, lg[i * XV + v]);
		for (int v = 0; v < XV; v++)
			s += exp(lg[i * XV + v] - mx);
		f += log(s) + mx - lg[i * XV + xt[i]];
	}
	return f / 4;
}

static void test_xent(void)
{
	float *lg = frand(XN * XV, 8), d[XN * XV];
	long counted;
	double dl[XN * XV];
	for (int i = 0; i < XN * XV; i++)
		dl[i] = lg[i];
	double loss = trail_k_xent_fwd(lg, xt, XN, XV, &counted) / (double)counted;
	trail_k_xent_bwd(d, lg, xt, XN, XV, 1.0 / (double)counted);
	double worst = fd_check(xent_f, lg, d, XN * XV);
	int zero = 1;
	for (int v = 0; v < XV; v++)
		zero &= d[XV + v] == 0;
	ok(counted == 4 && fabs(loss - xent_f(dl)) < 1e-6 && worst < 1e-3 && zero,
	   "cross-entropy: loss %.6f vs %.6f, gradient worst rel %.1e, ignored target gives zero gradient", loss, xent_f(dl),
	   worst);
	free(lg);
}

/* sgemm against its reference loop in all four transpositions, with alpha and beta */
static void test_sgemm(void)
{
	enum { M = 13, N = 9, K = 17 };
	double worst = 0;
	for (int ta = 0; ta < 2; ta++)
		for (int tb = 0; tb < 2; tb++) {
			float *A = frand(M * K, 1), *Bm = frand(K * N, 1), *C1 = frand(M * N, 1), C2[M * N];
			memcpy(C2, C1, sizeof C2);
			trail_k_sgemm(0, ta, tb, M, N, K, 0.7f, A, ta ? M : K, Bm, tb ? K : N, 0.3f, C1, N);
			trail_k_sgemm(1, ta, tb, M, N, K, 0.7f, A, ta ? M : K, Bm, tb ? K : N, 0.3f, C2, N);
			for (int i = 0; i < M * N; i++)
				worst = fmax(worst, fabs(C1[i] - C2[i]));
			free(A), free(Bm), free(C1);
		}
	ok(worst < 1e-5, "cblas_sgemm against the reference loop, four transpositions: maxdiff %.1e", worst);
}

/* After a B = 1 forward and backward: X^T dY of every trained layer is its weight gradient. */
static double attribution_check(trail_model *m, const int *tok, const int *tgt, int lora, int *nlayers)
{
	trail_error e = {0};
	float loss;
	trail_model_keep_linear_io(m, 1);
	trail_model_zero_grad(m);
	trail_model_forward(m, tok, tgt, 1, T, &loss, &e);
	trail_model_backward(m, &e);
	double worst = 0;
	*nlayers = trail_model_num_linear(m);
	for (int i = 0; i < *nlayers; i++) {
		const char *name;
		const float *X, *dY, *A, *Bm;
		int in, out, n, r;
		double scale;
		trail_model_linear_io(m, i, &name, &X, &dY, &in, &out, &n);
		trail_lin *Lw = trail_model_lin(m, i / 4, i % 4);
		if (!lora) {
			for (int a = 0; a < in; a++)
				for (int o = 0; o < out; o++) {
					double s = 0;
					for (int t = 0; t < n; t++)
						s += (double)X[t * in + a] * dY[t * out + o];
					worst = fmax(worst, fabs(s - Lw->dW[a * out + o]));
				}
		} else {
			/* dA [r,in] = scale (dY B)^T X */
			trail_model_linear_lora(m, i, &A, &Bm, &r, &scale);
			for (int j = 0; j < r; j++)
				for (int a = 0; a < in; a++) {
					double s = 0;
					for (int t = 0; t < n; t++) {
						double g = 0;
						for (int o = 0; o < out; o++)
							g += dY[t * out + o] * Bm[o * r + j];
						s += scale * g * X[t * in + a];
					}
					worst = fmax(worst, fabs(s - Lw->dA[j * in + a]));
				}
		}
	}
	trail_model_keep_linear_io(m, 0);
	return worst;
}

/* config.json picks the architecture; one not built in is refused by name. */
static void test_config(void)
{
	trail_error e = {0};
	trail_model_cfg c;
	json_t *j = json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i}", "model_type", "gpt2", "architectures",
			      "GPT2LMHeadModel", "n_layer", 2, "n_head", 2, "n_embd", 8, "n_positions", 16,
			      "vocab_size", 50);
	ok(trail_model_config_parse(j, &c, &e) == 0 && c.arch == TRAIL_ARCH_GPT2 && c.n_embd == 8,
	   "config: GPT2LMHeadModel is GPT-2");
	json_t *back = trail_model_config_json(&c);
	trail_model_cfg c2;
	ok(back && trail_model_config_parse(back, &c2, &e) == 0 && !memcmp(&c, &c2, sizeof c),
	   "config: written and read back the same");
	json_decref(back);
	json_object_del(j, "model_type");
	json_object_del(j, "architectures");
	ok(trail_model_config_parse(j, &c, &e) == 0 && c.arch == TRAIL_ARCH_GPT2, "config: neither field is GPT-2");
	json_object_set_new(j, "architectures", json_pack("[s]", "MambaForCausalLM"));
	ok(trail_model_config_parse(j, &c, &e) == TRAIL_EDATA && strstr(e.msg, "MambaForCausalLM") &&
		   strstr(e.msg, "GPT2LMHeadModel"),
	   "config: an architecture not built in is refused by name: %s", e.msg);
	json_decref(j);
}

int main(void)
{
	trail_init();
	test_sgemm();
	test_expf();
	test_layernorm();
	test_gelu();
	test_linear(0);
	test_linear(1);
	test_attention(0);
	test_attention(1);
	test_xent();
	test_config();

	trail_model_cfg c = {.n_layer = L, .n_head = NH, .n_embd = C, .n_positions = P, .vocab_size = V};
	trail_model *m;
	trail_error e = {0};
	ok(trail_model_init(&c, 7, &m, &e) == 0, "init");
	ok(trail_gpt2_num_params(&c) == (size_t)(V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C), "parameter count");
	int tok[B * T], tgt[B * T];
	for (int i = 0; i < B * T; i++) {
		tok[i] = (i * 7 + 3) % V;
		tgt[i] = i % 4 == 3 ? -1 : (i * 5 + 1) % V;
	}
	/* make biases and layer-norm weights non-trivial so every path is tested */
	size_t np;
	float *p = trail_model_params(m, &np);
	for (size_t i = 0; i < np; i++)
		p[i] += 0.05f * (float)sin((double)i * 1.7);
	float loss;
	ok(trail_model_forward(m, tok, tgt, B, T, &loss, &e) == 0, "forward");
	double *dp = to_double(p, np);
	ref R = {dp, NULL, 0, 0, 0};
	double want_logits[B * T * V], maxdiff = 0;
	double want = ref_loss(&R, tok, tgt, want_logits);
	const float *lg = trail_model_logits(m);
	for (int i = 0; i < B * T * V; i++)
		maxdiff = fmax(maxdiff, fabs(lg[i] - want_logits[i]));
	ok(fabs(loss - want) < 1e-5 && maxdiff < 1e-5, "loss %.7f vs reference %.7f, logits maxdiff %.2e", loss, want,
	   maxdiff);
	trail_model_zero_grad(m);
	ok(trail_model_backward(m, &e) == 0, "backward");
	size_t ng;
	float *g = trail_model_grads(m, &ng);
	double worst;
	int bad = check_grads(&R, dp, np, g, tok, tgt, &worst);
	ok(bad == 0, "all %zu parameters (embeddings, layer norms, attention, MLP, tied head): gradients match double finite differences (worst rel %.2e)", np, worst);

	/* the same through the naive reference loops instead of BLAS */
	float *g_blas = malloc(ng * sizeof *g_blas), lg_blas[B * T * V];
	memcpy(g_blas, g, ng * sizeof *g);
	memcpy(lg_blas, trail_model_logits(m), sizeof lg_blas);
	trail_model_set_reference(m, 1);
	float loss_ref;
	trail_model_forward(m, tok, tgt, B, T, &loss_ref, &e);
	trail_model_zero_grad(m);
	trail_model_backward(m, &e);
	double gd = 0;
	for (size_t i = 0; i < ng; i++)
		gd = fmax(gd, fabs(g[i] - g_blas[i]));
	ok(fabs(loss_ref - loss) < 1e-6 && tap_close(trail_model_logits(m), lg_blas, B * T * V, 1e-5, &maxdiff) && gd < 1e-5,
	   "reference path (no BLAS) = BLAS path: logits maxdiff %.1e, gradients maxdiff %.1e", maxdiff, gd);
	trail_model_set_reference(m, 0);
	free(g_blas);
	int nlin;
	double ad = attribution_check(m, tok, tgt, 0, &nlin);
	ok(nlin == 4 * L && ad < 1e-5, "attribution: %d layers, X^T dY of one sequence = dW (maxdiff %.1e)", nlin, ad);

	/* LoRA on all four layer kinds, B made non-zero */
	trail_lora_config lc = {.r = 3, .alpha = 6, .targets = 15};
	ok(trail_model_add_lora(m, &lc, 9, &e) == 0, "add LoRA");
	size_t nl;
	float *lpf = trail_model_params(m, &nl);
	for (size_t i = 0; i < nl; i++)
		lpf[i] += 0.1f * (float)cos((double)i);
	trail_model_forward(m, tok, tgt, B, T, &loss, &e);
	double *dl = to_double(lpf, nl);
	ref RL = {dp, dl, 3, 15, 2.0};
	want = ref_loss(&RL, tok, tgt, want_logits);
	ok(fabs(loss - want) < 1e-5, "LoRA loss %.7f vs reference %.7f", loss, want);
	trail_model_zero_grad(m);
	trail_model_backward(m, &e);
	g = trail_model_grads(m, &ng);
	bad = check_grads(&RL, dl, nl, g, tok, tgt, &worst);
	ok(bad == 0 && ng == nl, "all %zu LoRA parameters: gradients match double finite differences (worst rel %.2e)", nl, worst);
	ad = attribution_check(m, tok, tgt, 1, &nlin);
	ok(nlin == 4 * L && ad < 1e-5, "attribution under LoRA: scale (dY B)^T X = dA (maxdiff %.1e)", ad);
	/* only the targeted layers are trained */
	trail_model *m4;
	trail_lora_config l2 = {.r = 2, .alpha = 4, .targets = TRAIL_LORA_C_ATTN | TRAIL_LORA_MLP_PROJ};
	trail_model_init(&c, 3, &m4, &e);
	trail_model_add_lora(m4, &l2, 1, &e);
	const char *n0, *n1;
	const float *X0, *dY0;
	int i0, o0, t0;
	trail_model_linear_io(m4, 0, &n0, &X0, &dY0, &i0, &o0, &t0);
	trail_model_linear_io(m4, 1, &n1, &X0, &dY0, &i0, &o0, &t0);
	ok(trail_model_num_linear(m4) == 2 * L && !strcmp(n0, "h.0.attn.c_attn") && !strcmp(n1, "h.0.mlp.c_proj") && o0 == C,
	   "LoRA on c_attn and mlp.c_proj: %d trained layers, %s and %s", trail_model_num_linear(m4), n0, n1);
	trail_model_free(m4);

	/* a few optimiser steps lower the loss */
	trail_model *mt;
	trail_model_init(&c, 1, &mt, &e);
	trail_adamw o;
	trail_adamw_init(&o, np);
	float first = 0, last = 0;
	for (int step = 0; step < 60; step++) {
		trail_model_forward(mt, tok, tgt, B, T, &loss, &e);
		if (!step)
			first = loss;
		last = loss;
		trail_model_zero_grad(mt);
		trail_model_backward(mt, &e);
		trail_adamw_step(&o, mt, 1e-2, 1.0);
	}
	ok(last < first * 0.5f, "60 AdamW steps on one batch: loss %.3f -> %.3f", first, last);
	trail_adamw_release(&o);
	trail_model_free(mt);

	free(dp);
	free(dl);
	trail_model_free(m);
	return tap_done();
}
