/*
 * The model against a naive double-precision reference written here from
 * the definitions (no BLAS): forward loss, finite-difference gradients of
 * every parameter tensor and of the LoRA matrices, LoRA merging, saving and
 * loading models and PEFT adapters, training lowering the loss.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "tap.h"
#include "util.h"

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

/* Finite differences of the reference against the model's gradients, for sampled indices. */
static int check_grads(trail_model *m, const ref *R0, double *vec, size_t n, const float *g, const int *tok,
		       const int *tgt, double *worst)
{
	ref R = *R0;
	int bad = 0;
	*worst = 0;
	uint64_t s = 12345;
	for (int k = 0; k < 400; k++) {
		s = s * 6364136223846793005ULL + 1442695040888963407ULL;
		size_t i = k < 40 ? (size_t)k * (n / 40) : (size_t)((s >> 17) % n);
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
	(void)m;
	return bad;
}

int main(void)
{
	trail_init();
	trail_gpt2_config c = {L, NH, C, P, V};
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
	int bad = check_grads(m, &R, dp, np, g, tok, tgt, &worst);
	ok(bad == 0, "every parameter tensor: gradients match double finite differences (worst rel %.2e)", worst);

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
	bad = check_grads(m, &RL, dl, nl, g, tok, tgt, &worst);
	ok(bad == 0 && ng == nl, "LoRA gradients match double finite differences (worst rel %.2e)", worst);

	/* adapter save/load gives identical logits; merging into the base too */
	char dir[] = "/tmp/trail-gpt2-XXXXXX";
	mkdtemp(dir);
	char *mdir = trail_path(dir, "base"), *adir = trail_path(dir, "adapter");
	float *before = malloc(sizeof(float) * B * T * V);
	memcpy(before, trail_model_logits(m), sizeof(float) * B * T * V);
	ok(trail_model_save_adapter(m, adir, "base", &e) == 0, "save adapter: %s", e.msg);
	ok(trail_model_merge_lora(m, &e) == 0, "merge");
	trail_model_forward(m, tok, tgt, B, T, &loss, &e);
	float md = 0;
	for (int i = 0; i < B * T * V; i++)
		md = fmaxf(md, fabsf(trail_model_logits(m)[i] - before[i]));
	ok(md < 1e-5, "merged weights give the adapter's logits (maxdiff %.2e)", md);
	ok(trail_model_save(m, mdir, &e) == 0, "save model: %s", e.msg);
	trail_model *m2;
	ok(trail_model_load(mdir, &m2, &e) == 0, "load model: %s", e.msg);
	trail_model_forward(m2, tok, tgt, B, T, &loss, &e);
	ok(!memcmp(trail_model_logits(m2), trail_model_logits(m), sizeof(float) * B * T * V),
	   "a saved and loaded model gives identical logits");
	trail_model_free(m2);
	/* base (unmerged) + adapter from disk = the adapter's logits */
	trail_model *m3;
	trail_model_init(&c, 7, &m3, &e);
	float *p3 = trail_model_params(m3, &np);
	for (size_t i = 0; i < np; i++)
		p3[i] = (float)dp[i];
	ok(trail_model_load_adapter(m3, adir, &e) == 0, "load adapter: %s", e.msg);
	trail_model_forward(m3, tok, tgt, B, T, &loss, &e);
	ok(!memcmp(trail_model_logits(m3), before, sizeof(float) * B * T * V), "base + loaded adapter = adapter's logits");
	trail_model_free(m3);

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

	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	free(before);
	free(dp);
	free(dl);
	trail_free(mdir);
	trail_free(adir);
	trail_model_free(m);
	return tap_done();
}
