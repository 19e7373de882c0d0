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

#include "core/core.h"
#include "model/model.h"
#include "tap.h"

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
	return tap_done();
}
