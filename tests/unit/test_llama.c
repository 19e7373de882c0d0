/*
 * The Llama family beside test_torch_parity's fixtures: RMSNorm, rotary
 * positions and SwiGLU against central finite differences of double
 * references written here; the whole model's gradients (GQA, untied head,
 * llama3 rope scaling; Qwen2's biases and tied head) and their LoRA paths
 * against finite differences of the model's own loss; the BLAS path against
 * the naive one; the attribution view of nn.Linear layers; checkpoints and
 * PEFT adapters written and read back; a few AdamW steps lowering the loss.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"

enum { B = 2, T = 6 };

static double unif(uint64_t *s)
{
	return trail_rng_unif(s) * 2 - 1;
}

/* ---- kernels ---- */

static double rms_ref(const double *x, const double *w, int C, double eps, double *y)
{
	double ss = 0;
	for (int c = 0; c < C; c++)
		ss += x[c] * x[c];
	double r = 1 / sqrt(ss / C + eps);
	for (int c = 0; c < C; c++)
		y[c] = x[c] * r * w[c];
	return r;
}

static void test_rmsnorm(void)
{
	enum { N = 3, C = 7 };
	uint64_t s = 1;
	float x[N * C], w[C], y[N * C], rstd[N], dy[N * C], dx[N * C] = {0}, dw[C] = {0};
	for (int i = 0; i < N * C; i++)
		x[i] = (float)unif(&s), dy[i] = (float)unif(&s);
	for (int c = 0; c < C; c++)
		w[c] = 1 + 0.3f * (float)unif(&s);
	trail_k_rmsnorm_fwd(y, rstd, x, w, N, C, 1e-5f);
	trail_k_rmsnorm_bwd(dx, dw, dy, x, w, rstd, N, C);
	/* L = sum dy . y: its finite differences against dx and dw */
	double worst = 0, md = 0, h = 1e-6;
	for (int i = 0; i < N; i++) {
		double xd[C], wd[C], yd[C];
		for (int c = 0; c < C; c++)
			xd[c] = x[i * C + c], wd[c] = w[c];
		rms_ref(xd, wd, C, 1e-5, yd);
		for (int c = 0; c < C; c++)
			md = fmax(md, fabs(yd[c] - y[i * C + c]));
		for (int c = 0; c < C; c++) {
			double lp = 0, lm = 0;
			xd[c] += h;
			rms_ref(xd, wd, C, 1e-5, yd);
			for (int k = 0; k < C; k++)
				lp += dy[i * C + k] * yd[k];
			xd[c] -= 2 * h;
			rms_ref(xd, wd, C, 1e-5, yd);
			for (int k = 0; k < C; k++)
				lm += dy[i * C + k] * yd[k];
			xd[c] += h;
			double fd = (lp - lm) / (2 * h);
			worst = fmax(worst, fabs(fd - dx[i * C + c]) / fmax(fabs(fd) + fabs(dx[i * C + c]), 1e-3));
		}
	}
	for (int c = 0; c < C; c++) {
		double fd = 0;
		for (int i = 0; i < N; i++) {
			double xd[C], wd[C], yp[C], ym[C];
			for (int k = 0; k < C; k++)
				xd[k] = x[i * C + k], wd[k] = w[k];
			wd[c] += h;
			rms_ref(xd, wd, C, 1e-5, yp);
			wd[c] -= 2 * h;
			rms_ref(xd, wd, C, 1e-5, ym);
			for (int k = 0; k < C; k++)
				fd += dy[i * C + k] * (yp[k] - ym[k]) / (2 * h);
		}
		worst = fmax(worst, fabs(fd - dw[c]) / fmax(fabs(fd) + fabs(dw[c]), 1e-3));
	}
	ok(md < 1e-6 && worst < 1e-3, "rmsnorm: output maxdiff %.1e, gradients of x and w worst rel %.1e", md, worst);
}

static void test_rope(void)
{
	enum { N = 4, TT = 4, NH = 2, HD = 6 };
	float inv[HD / 2] = {1.0f, 0.2f, 0.04f}, cs[TT * HD / 2], sn[TT * HD / 2];
	trail_k_rope_tables(cs, sn, inv, TT, HD);
	uint64_t s = 2;
	float x[N * NH * HD], y[N * NH * HD], g[N * NH * HD];
	for (int i = 0; i < N * NH * HD; i++)
		x[i] = y[i] = (float)unif(&s), g[i] = (float)unif(&s);
	trail_k_rope(y, N, TT, NH, HD, NH * HD, cs, sn, 0);
	/* against the definition: x cos + rotate_half(x) sin at position n % T */
	double md = 0;
	for (int n = 0; n < N; n++)
		for (int h = 0; h < NH; h++)
			for (int i = 0; i < HD; i++) {
				int p = n % TT, j = i % (HD / 2);
				double a = (double)p * inv[j], xi = x[n * NH * HD + h * HD + i];
				double rot = i < HD / 2 ? -x[n * NH * HD + h * HD + i + HD / 2] : x[n * NH * HD + h * HD + i - HD / 2];
				md = fmax(md, fabs(xi * cos(a) + rot * sin(a) - y[n * NH * HD + h * HD + i]));
			}
	/* the backward (inverse rotation) of dL/dy = g is the transpose of the rotation */
	float dx[N * NH * HD];
	memcpy(dx, g, sizeof dx);
	trail_k_rope(dx, N, TT, NH, HD, NH * HD, cs, sn, 1);
	double lhs = 0, rhs = 0; /* <g, R x> = <R^T g, x> */
	for (int i = 0; i < N * NH * HD; i++)
		lhs += (double)g[i] * y[i], rhs += (double)dx[i] * x[i];
	float back[N * NH * HD];
	memcpy(back, y, sizeof back);
	trail_k_rope(back, N, TT, NH, HD, NH * HD, cs, sn, 1);
	double rt = 0;
	for (int i = 0; i < N * NH * HD; i++)
		rt = fmax(rt, fabs(back[i] - x[i]));
	ok(md < 1e-6 && fabs(lhs - rhs) < 1e-5 && rt < 1e-6,
	   "rope: rotation maxdiff %.1e, backward is its transpose (%.1e), and undoes it (%.1e)", md, fabs(lhs - rhs), rt);
}

static void test_swiglu(void)
{
	enum { N = 40 };
	uint64_t s = 3;
	float g[N], u[N], y[N], dy[N], dg[N], du[N];
	for (int i = 0; i < N; i++)
		g[i] = 4 * (float)unif(&s), u[i] = (float)unif(&s), dy[i] = (float)unif(&s);
	trail_k_swiglu_fwd(y, g, u, N);
	trail_k_swiglu_bwd(dg, du, g, u, dy, N);
	double md = 0, worst = 0, h = 1e-6;
	for (int i = 0; i < N; i++) {
		double gd = g[i], f = gd / (1 + exp(-gd)) * u[i];
		md = fmax(md, fabs(f - y[i]));
		double fdg = ((gd + h) / (1 + exp(-(gd + h))) - (gd - h) / (1 + exp(-(gd - h)))) / (2 * h) * u[i] * dy[i];
		double fdu = gd / (1 + exp(-gd)) * dy[i];
		worst = fmax(worst, fabs(fdg - dg[i]) / fmax(fabs(fdg) + fabs(dg[i]), 1e-3));
		worst = fmax(worst, fabs(fdu - du[i]) / fmax(fabs(fdu) + fabs(du[i]), 1e-3));
	}
	ok(md < 1e-5 && worst < 1e-3, "swiglu: output maxdiff %.1e, gradients of gate and up worst rel %.1e", md, worst);
}

/* ---- the model ---- */

static trail_model_cfg llama_cfg(void)
{
	return (trail_model_cfg){.arch = TRAIL_ARCH_LLAMA, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .head_dim = 4,
				 .n_embd = 12, .n_inner = 20, .n_positions = 8, .vocab_size = 23, .untied = 1,
				 .norm_eps = 1e-5, .rope_theta = 10000, .rope_type = TRAIL_ROPE_LLAMA3,
				 .rope_factor = 4, .rope_low = 1, .rope_high = 4, .rope_orig = 4};
}

static trail_model_cfg qwen_cfg(void)
{
	return (trail_model_cfg){.arch = TRAIL_ARCH_QWEN2, .n_layer = 2, .n_head = 3, .n_kv_head = 1, .head_dim = 4,
				 .n_embd = 12, .n_inner = 16, .n_positions = 8, .vocab_size = 19, .qkv_bias = 1,
				 .norm_eps = 1e-6, .rope_theta = 1e6, .rope_type = TRAIL_ROPE_LINEAR, .rope_factor = 2};
}

static void batch(int V, int *tok, int *tgt)
{
	uint64_t s = 11;
	for (int i = 0; i < B * T; i++)
		tok[i] = (int)(trail_rng_next(&s) % (uint64_t)V);
	for (int i = 0; i < B * T; i++)
		tgt[i] = i % T == T - 1 ? -1 : tok[i + 1];
}

/*
 * Central differences of the model's float loss on n parameters spread over
 * the arena (h = 4e-3: float rounding and curvature both well below the signal), against
 * the analytic gradient; relative to the gradient's scale.
 */
static double fd_check(trail_model *m, const int *tok, const int *tgt, size_t *checked)
{
	trail_error e = {0};
	float loss;
	trail_model_zero_grad(m);
	trail_model_forward(m, tok, tgt, B, T, &loss, &e);
	trail_model_backward(m, &e);
	size_t np, ng;
	float *p = trail_model_params(m, &np), *g0 = trail_model_grads(m, &ng);
	float *g = malloc(ng * sizeof *g);
	memcpy(g, g0, ng * sizeof *g);
	double gmax = 0, worst = 0;
	for (size_t i = 0; i < ng; i++)
		gmax = fmax(gmax, fabs(g[i]));
	size_t step = np / 300 ? np / 300 : 1;
	*checked = 0;
	for (size_t i = 0; i < np; i += step, (*checked)++) {
		float keep = p[i], lp, lm, h = 4e-3f;
		p[i] = keep + h;
		trail_model_forward(m, tok, tgt, B, T, &lp, &e);
		p[i] = keep - h;
		trail_model_forward(m, tok, tgt, B, T, &lm, &e);
		p[i] = keep;
		double fd = ((double)lp - lm) / (2.0 * h);
		worst = fmax(worst, fabs(fd - g[i]) / gmax);
	}
	free(g);
	return worst;
}

/* X^T dY of each linear layer is its weight gradient ([out,in] for nn.Linear). */
static double attribution_check(trail_model *m, const int *tok, const int *tgt)
{
	trail_error e = {0};
	float loss;
	trail_model_keep_linear_io(m, 1);
	trail_model_zero_grad(m);
	trail_model_forward(m, tok, tgt, B, T, &loss, &e);
	trail_model_backward(m, &e);
	double worst = 0;
	for (int i = 0; i < trail_model_num_linear(m); i++) {
		const char *name;
		const float *X, *dY;
		int in, out, n;
		trail_model_linear_io(m, i, &name, &X, &dY, &in, &out, &n);
		const trail_lin *L = m->lin[i];
		for (int a = 0; a < in; a++)
			for (int o = 0; o < out; o++) {
				double s = 0;
				for (int t = 0; t < n; t++)
					s += (double)X[t * in + a] * dY[t * out + o];
				worst = fmax(worst, fabs(s - L->dW[o * in + a]));
			}
	}
	trail_model_keep_linear_io(m, 0);
	return worst;
}

static void test_model(const char *what, trail_model_cfg c)
{
	trail_error e = {0};
	trail_model *m;
	int tok[B * T], tgt[B * T];
	batch(c.vocab_size, tok, tgt);
	ok(trail_model_init(&c, 5, &m, &e) == 0, "%s: init: %s", what, e.msg);
	size_t np;
	float *p = trail_model_params(m, &np);
	for (size_t i = 0; i < np; i++) /* weights far enough from init that every path carries signal */
		p[i] += 0.2f * (float)sin((double)i * 0.37);
	ok(np == trail_model_num_params(&c), "%s: %zu parameters", what, np);
	size_t n;
	double w = fd_check(m, tok, tgt, &n);
	ok(w < 2e-3, "%s: gradients of %zu parameters match finite differences (worst %.1e of the largest)", what, n, w);

	/* the naive loops give the BLAS path's numbers */
	float l1, l2;
	trail_model_forward(m, tok, tgt, B, T, &l1, &e);
	size_t nv = (size_t)B * T * c.vocab_size;
	float *lg = malloc(nv * sizeof *lg);
	memcpy(lg, trail_model_logits(m), nv * sizeof *lg);
	trail_model_set_reference(m, 1);
	trail_model_forward(m, tok, tgt, B, T, &l2, &e);
	double md = 0;
	ok(tap_close(trail_model_logits(m), lg, nv, 1e-5, &md) && fabs(l1 - l2) < 1e-6,
	   "%s: reference path (no BLAS) = BLAS path (logits maxdiff %.1e)", what, md);
	trail_model_set_reference(m, 0);
	free(lg);
	ok(attribution_check(m, tok, tgt) < 1e-5, "%s: attribution: X^T dY of one batch = dW for all %d layers", what,
	   trail_model_num_linear(m));

	/* a checkpoint written and read back gives the same loss */
	char dir[] = "/tmp/trail-llama-XXXXXX";
	ok(mkdtemp(dir) && trail_model_save(m, dir, &e) == 0, "%s: save: %s", what, e.msg);
	trail_model *m2;
	float l3 = -1;
	int loaded = trail_model_load(dir, &m2, &e) == 0 && trail_model_forward(m2, tok, tgt, B, T, &l3, &e) == 0;
	ok(loaded && l3 == l1 && trail_model_config(m2)->arch == c.arch &&
		   trail_model_config(m2)->n_kv_head == c.n_kv_head,
	   "%s: a saved checkpoint loads with the same config and loss (%.6f, %.6f): %s", what, l1, l3, e.msg);

	/* LoRA by the family's names, its gradients, and the PEFT adapter round trip */
	trail_lora_config lc, bad;
	trail_lora_spec_parse("targets=c_attn", &bad, &e);
	int refused = trail_model_add_lora(m2, &bad, 1, &e) != 0 && !trail_model_has_lora(m2);
	ok(refused && strstr(e.msg, "does not have"), "%s: GPT-2's c_attn is refused: %s", what, e.msg);
	int added = trail_lora_spec_parse("r=2,alpha=4,targets=q_proj,v_proj,down_proj", &lc, &e) == 0 &&
		    trail_model_add_lora(m2, &lc, 3, &e) == 0;
	ok(added && trail_model_num_linear(m2) == 3 * c.n_layer, "%s: LoRA on q_proj, v_proj, down_proj: %d layers", what,
	   trail_model_num_linear(m2));
	size_t nl;
	float *lp = trail_model_params(m2, &nl);
	for (size_t i = 0; i < nl; i++)
		lp[i] += 0.3f * (float)cos((double)i);
	w = fd_check(m2, tok, tgt, &n);
	ok(w < 2e-3, "%s: LoRA gradients of %zu parameters match finite differences (worst %.1e)", what, n, w);
	char ad[] = "/tmp/trail-llama-ad-XXXXXX";
	ok(mkdtemp(ad) && trail_model_save_adapter(m2, ad, "base", &e) == 0, "%s: save the adapter", what);
	char *cp = trail_path(ad, "adapter_config.json");
	json_t *cj = json_load_file(cp, 0, NULL);
	json_t *tm = json_object_get(cj, "target_modules");
	ok(json_array_size(tm) == 3 && !strcmp(json_string_value(json_array_get(tm, 0)), "q_proj") &&
		   !strcmp(json_string_value(json_array_get(tm, 2)), "down_proj") &&
		   json_is_false(json_object_get(cj, "fan_in_fan_out")),
	   "%s: adapter_config.json names q_proj, v_proj, down_proj, fan_in_fan_out false", what);
	json_decref(cj);
	trail_free(cp);
	trail_model *m3;
	float la = 0, lb = -1;
	trail_model_forward(m2, tok, tgt, B, T, &la, &e);
	loaded = trail_model_load(dir, &m3, &e) == 0 && trail_model_load_adapter(m3, ad, &e) == 0 &&
		 trail_model_forward(m3, tok, tgt, B, T, &lb, &e) == 0;
	ok(loaded && la == lb, "%s: the adapter loads onto the base with the same loss (%.6f, %.6f): %s", what, la, lb,
	   e.msg);
	trail_model_free(m3);
	trail_model_free(m2);
	char cmd[200];
	snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, ad);
	if (system(cmd))
		diag("could not remove %s", dir);

	/* a few AdamW steps on one batch lower the loss */
	trail_adamw opt;
	trail_adamw_init(&opt, np);
	float first = 0, last = 0;
	for (int it = 0; it < 40; it++) {
		trail_model_zero_grad(m);
		trail_model_forward(m, tok, tgt, B, T, &last, &e);
		if (!it)
			first = last;
		trail_model_backward(m, &e);
		trail_adamw_step(&opt, m, 1e-2, 1.0);
	}
	trail_adamw_release(&opt);
	ok(last < first * 0.5f, "%s: 40 AdamW steps on one batch: loss %.3f -> %.3f", what, first, last);
	trail_model_free(m);
}

int main(void)
{
	trail_init();
	test_rmsnorm();
	test_rope();
	test_swiglu();
	test_model("llama (GQA, untied, llama3 rope)", llama_cfg());
	test_model("qwen2 (MQA, q/k/v biases, tied, linear rope)", qwen_cfg());
	return tap_done();
}
