/*
 * Logits and loss of GPT-2 configurations with fixed random weights against
 * PyTorch (tests/reference/gpt2_torch.py): F32 and F16 weights, and a
 * PEFT-layout LoRA adapter built with numpy against PyTorch's logits for
 * the merged weights. The committed fixtures are in tests/data/model/;
 * TRAIL_REFERENCE_DIR points at freshly generated ones.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"

/*
 * The mean loss's gradients of every parameter (or, with LoRA, of every
 * LoRA matrix) against PyTorch's autograd in float64 (grads.safetensors,
 * where the fixture has one): worst error relative to each tensor's
 * largest gradient.
 */
static void check_grads(trail_model *m, const char *gpath, const char *name)
{
	trail_error e = {0};
	trail_st *st;
	if (access(gpath, R_OK))
		return;
	trail_model_zero_grad(m);
	if (trail_model_backward(m, &e) || trail_st_open(gpath, &st, &e)) {
		ok(0, "%s: backward and the reference gradients: %s", name, e.msg);
		return;
	}
	size_t np, ng, nt = 0;
	float *p = trail_model_params(m, &np), *g = trail_model_grads(m, &ng);
	trail_param *v = calloc(m->arch->num_tensors(&m->c) + 2 * (size_t)m->nlin, sizeof *v);
	if (m->lp) /* A [r,in] then B [out,r] of each targeted layer, PEFT's names */
		for (int i = 0; i < m->nlin; i++) {
			trail_lin *L = m->lin[i];
			if (!L->A)
				continue;
			for (int ab = 0; ab < 2; ab++, nt++) {
				snprintf(v[nt].name, sizeof v[nt].name, "base_model.model.%s.%d.%s.lora_%c.weight", m->arch->blocks,
					 i / m->arch->nkinds, m->arch->kinds[i % m->arch->nkinds], ab ? 'B' : 'A');
				v[nt].data = ab ? L->dB : L->dA;
				v[nt].shape[0] = ab ? L->out : m->lc.r;
				v[nt].shape[1] = ab ? m->lc.r : L->in;
				v[nt].ndim = 2;
			}
		}
	else {
		nt = m->arch->tensors(m, v);
		for (size_t i = 0; i < nt; i++)
			v[i].data = g + (v[i].data - p); /* the gradient arena has the parameters' layout */
	}
	double worst = 0;
	int read = 1;
	for (size_t i = 0; i < nt; i++) {
		size_t n = (size_t)v[i].shape[0] * (size_t)(v[i].ndim == 2 ? v[i].shape[1] : 1);
		float *want = malloc(n * sizeof *want);
		if (!want || trail_st_read_f32(st, v[i].name, v[i].shape, v[i].ndim, want, &e)) {
			read = 0;
			free(want);
			break;
		}
		double top = 1e-12, err = 0;
		for (size_t k = 0; k < n; k++) {
			top = fmax(top, fabs(want[k]));
			err = fmax(err, fabs(want[k] - v[i].data[k]));
		}
		worst = fmax(worst, err / top);
		free(want);
	}
	ok(read && nt == trail_st_count(st) && worst < 1e-4,
	   "%s: all %zu gradient tensors match PyTorch autograd in float64 (worst relative %.1e)", name, nt, worst);
	(void)ng;
	free(v);
	trail_st_free(st);
}

/* name: a model directory under dir; adapter: a LoRA adapter directory for it, or NULL */
static void check(const char *dir, const char *name, const char *adapter)
{
	char path[4096], *d;
	trail_error e = {0};
	trail_model *m;
	snprintf(path, sizeof path, "%s/%s", dir, name);
	d = path;
	if (trail_model_load(d, &m, &e)) {
		ok(0, "%s: load: %s", name, e.msg);
		return;
	}
	char *ep = trail_path(d, "expected.json"), *lp = trail_path(d, "logits.f32");
	json_t *x = json_load_file(ep, 0, NULL), *xa = NULL;
	char apath[4096];
	if (adapter) { /* the adapter's own logits and loss replace the base's */
		snprintf(apath, sizeof apath, "%s/%s", dir, adapter);
		ok(trail_model_load_adapter(m, apath, &e) == 0, "%s: load the PEFT adapter built with numpy: %s", adapter, e.msg);
		trail_free(lp);
		lp = trail_path(apath, "logits.f32");
		char *ap = trail_path(apath, "expected.json");
		xa = json_load_file(ap, 0, NULL);
		trail_free(ap);
		name = adapter;
	}
	void *lb;
	size_t ll;
	int B = (int)json_integer_value(json_object_get(x, "B")), T = (int)json_integer_value(json_object_get(x, "T"));
	int32_t *tok = malloc(sizeof *tok * B * T), *tgt = malloc(sizeof *tgt * B * T);
	for (int i = 0; i < B * T; i++) {
		tok[i] = (int32_t)json_integer_value(json_array_get(json_object_get(x, "tokens"), (size_t)i));
		tgt[i] = (int32_t)json_integer_value(json_array_get(json_object_get(x, "targets"), (size_t)i));
	}
	float loss;
	ok(trail_model_forward(m, tok, tgt, B, T, &loss, &e) == 0 && trail_read_file(lp, 0, &lb, &ll, &e) == 0, "%s: forward", name);
	size_t n = (size_t)B * T * (size_t)trail_model_config(m)->vocab_size;
	double maxdiff = INFINITY;
	int close = ll == n * 4 && tap_close(trail_model_logits(m), lb, n, 1e-4, &maxdiff);
	ok(close, "%s: logits match PyTorch (maxdiff %.2e)", name, maxdiff);
	double want = json_real_value(json_object_get(xa ? xa : x, "loss"));
	ok(fabs(loss - want) < 1e-4, "%s: loss %.6f vs PyTorch %.6f", name, loss, want);
	char *gp = trail_path(adapter ? apath : d, "grads.safetensors");
	check_grads(m, gp, name);
	trail_free(gp);
	trail_free(lb);
	json_decref(x);
	json_decref(xa);
	free(tok);
	free(tgt);
	trail_free(ep);
	trail_free(lp);
	trail_model_free(m);
}

int main(void)
{
	trail_init();
	char dir[4096];
	const char *ref = getenv("TRAIL_REFERENCE_DIR"), *top = getenv("TRAIL_TOP");
	if (ref)
		snprintf(dir, sizeof dir, "%s", ref);
	else
		snprintf(dir, sizeof dir, "%s/tests/data/model", top ? top : ".");
	check(dir, "small", NULL);
	check(dir, "wide", NULL); /* F16 weights */
	check(dir, "small", "small-lora");
	check(dir, "llama-gqa", NULL);    /* GQA, untied head, llama3 rope scaling */
	check(dir, "qwen2-tied", NULL);   /* MQA, q/k/v biases, tied embeddings, linear rope scaling */
	check(dir, "mistral-bf16", NULL); /* BF16 weights, head_dim apart from hidden/heads */
	check(dir, "llama-gqa", "llama-gqa-lora");
	return tap_done();
}
