/*
 * LoRA adapters in PEFT's layout: the keys, shapes and config fields trail
 * writes; the adapter built with numpy (tests/data/model/small-lora) loads,
 * also under PEFT's ".default" key form, and gives the logits of its weights
 * merged into the base; rsLoRA scaling; training moves only the adapter;
 * and bad adapters are refused, leaving the model without LoRA.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "tap.h"

static char dir[] = "/tmp/trail-lora-XXXXXX";
enum { T = 12 };
static const int32_t tok[T] = {1, 200, 3, 4, 90, 17, 5, 256, 0, 33, 33, 100};
static const int32_t tgt[T] = {200, 3, 4, 90, 17, 5, 256, 0, 33, 33, 100, -1};

static char fixture[4096];

static trail_model *base(void)
{
	trail_model *m;
	trail_error e = {0};
	char p[4200];
	snprintf(p, sizeof p, "%s/small", fixture);
	if (trail_model_load(p, &m, &e)) {
		diag("load %s: %s", p, e.msg);
		exit(70);
	}
	return m;
}

static float *logits(trail_model *m)
{
	size_t n = (size_t)T * (size_t)trail_model_config(m)->vocab_size;
	float *l = malloc(n * sizeof *l), loss;
	trail_error e = {0};
	trail_model_forward(m, tok, tgt, 1, T, &loss, &e);
	memcpy(l, trail_model_logits(m), n * sizeof *l);
	return l;
}

static double maxdiff(const float *a, const float *b, size_t n)
{
	double d = 0;
	tap_close(a, b, n, 0, &d);
	return d;
}

static void test_written_layout(void)
{
	trail_error e = {0};
	trail_model *m = base();
	trail_lora_config lc = {.r = 4, .alpha = 8, .targets = TRAIL_LORA_C_ATTN | TRAIL_LORA_ATTN_PROJ | TRAIL_LORA_C_FC};
	trail_model_add_lora(m, &lc, 3, &e);
	size_t nl;
	float *lp = trail_model_params(m, &nl);
	for (size_t i = 0; i < nl; i++) /* B is zero as initialised: give it weight */
		lp[i] += 0.05f * (float)sin(0.37 * (double)i);
	char *ad = trail_path(dir, "ours");
	ok(trail_model_save_adapter(m, ad, "small", &e) == 0, "save an adapter: %s", e.msg);
	char *wp = trail_path(ad, "adapter_model.safetensors"), *cp = trail_path(ad, "adapter_config.json");
	trail_st *st;
	trail_st_open(wp, &st, &e);
	int names = trail_st_count(st) == 12, shapes = 1;
	static const char *mods[3] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc"};
	static const int outs[3] = {96, 32, 128};
	float buf[4 * 128];
	for (int l = 0; l < 2; l++)
		for (int k = 0; k < 3; k++) {
			char a[128], b[128];
			snprintf(a, sizeof a, "base_model.model.transformer.h.%d.%s.lora_A.weight", l, mods[k]);
			snprintf(b, sizeof b, "base_model.model.transformer.h.%d.%s.lora_B.weight", l, mods[k]);
			int64_t sa[2] = {4, 32}, sb[2] = {outs[k], 4};
			names &= trail_st_has(st, a) && trail_st_has(st, b);
			shapes &= !trail_st_read_f32(st, a, sa, 2, buf, &e) && !trail_st_read_f32(st, b, sb, 2, buf, &e);
		}
	ok(names && shapes, "PEFT's keys (base_model.model.transformer.h.L.MODULE.lora_A/B.weight), A [r,in], B [out,r]");
	trail_st_free(st);
	void *cb;
	size_t cl;
	json_t *c = NULL;
	trail_read_file(cp, 0, &cb, &cl, &e);
	trail_json_parse(cb, cl, cp, &c, &e);
	static const char *fields[] = {"alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out",
				       "inference_mode", "init_lora_weights", "layers_pattern", "layers_to_transform", "lora_alpha",
				       "lora_dropout", "modules_to_save", "peft_type", "r", "rank_pattern", "revision",
				       "target_modules", "task_type", "use_rslora", "use_dora"};
	int have = 1;
	for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
		if (!json_object_get(c, fields[i]))
			diag("missing %s", fields[i]), have = 0;
	ok(have, "adapter_config.json has LoraConfig's fields");
	char *tm = json_dumps(json_object_get(c, "target_modules"), JSON_COMPACT);
	ok(!strcmp(json_string_value(json_object_get(c, "peft_type")), "LORA") && json_integer_value(json_object_get(c, "r")) == 4 &&
	       json_is_integer(json_object_get(c, "lora_alpha")) && json_integer_value(json_object_get(c, "lora_alpha")) == 8 &&
	       json_is_true(json_object_get(c, "fan_in_fan_out")) && !strcmp(json_string_value(json_object_get(c, "bias")), "none") &&
	       !strcmp(json_string_value(json_object_get(c, "task_type")), "CAUSAL_LM") &&
	       !strcmp(json_string_value(json_object_get(c, "base_model_name_or_path")), "small") &&
	       !strcmp(tm, "[\"c_attn\",\"attn.c_proj\",\"c_fc\"]"),
	   "peft_type LORA, r 4, lora_alpha 8, fan_in_fan_out, bias none, CAUSAL_LM, base; target_modules %s", tm);
	free(tm);
	json_decref(c);
	trail_free(cb);
	/* both projections are PEFT's plain "c_proj" */
	trail_lora_config both = {.r = 2, .alpha = 2, .targets = 15};
	json_t *j = trail_lora_config_json(&both, NULL);
	tm = json_dumps(json_object_get(j, "target_modules"), JSON_COMPACT);
	ok(!strcmp(tm, "[\"c_attn\",\"c_proj\",\"c_fc\"]") && json_is_null(json_object_get(j, "base_model_name_or_path")),
	   "all four layers: target_modules %s", tm);
	free(tm);
	json_decref(j);
	/* save, load onto a fresh base: identical logits; merging gives them too */
	float *want = logits(m);
	trail_model *m2 = base();
	ok(trail_model_load_adapter(m2, ad, &e) == 0, "load it back: %s", e.msg);
	float *got = logits(m2);
	ok(!memcmp(want, got, (size_t)T * 257 * sizeof *got), "identical logits after saving and loading");
	free(got);
	ok(trail_model_merge_lora(m2, &e) == 0 && !trail_model_has_lora(m2), "merge into the base");
	got = logits(m2);
	ok(maxdiff(want, got, (size_t)T * 257) < 1e-5, "merged weights give the adapter's logits (maxdiff %.1e)",
	   maxdiff(want, got, (size_t)T * 257));
	free(got), free(want);
	trail_model_free(m2);
	trail_model_free(m);
	trail_free(ad), trail_free(wp), trail_free(cp);
}

/* Copy the numpy-built fixture, with each key renamed by `rename` (may be NULL). */
static char *copy_fixture(const char *name, void (*rename)(char *key, size_t cap), const char *config_edit)
{
	trail_error e = {0};
	char src[4200], *d = trail_path(dir, name);
	snprintf(src, sizeof src, "%s/small-lora", fixture);
	trail_mkdirs(d, 0755, &e);
	char *sw = trail_path(src, "adapter_model.safetensors"), *sc = trail_path(src, "adapter_config.json");
	char *dw = trail_path(d, "adapter_model.safetensors"), *dc = trail_path(d, "adapter_config.json");
	trail_st *st;
	trail_st_open(sw, &st, &e);
	size_t n = trail_st_count(st);
	trail_st_tensor *t = calloc(n, sizeof *t);
	char (*names)[160] = calloc(n, sizeof *names);
	float **bufs = calloc(n, sizeof *bufs);
	for (size_t i = 0; i < n; i++) {
		const char *k = trail_st_name(st, i);
		int64_t sh[2] = {4, 0};
		/* lora_A [4, in]; lora_B [out, 4]: find the other dimension by trying the sizes */
		static const int64_t dims[] = {32, 96, 128};
		int isb = strstr(k, "lora_B") != NULL;
		bufs[i] = malloc(4 * 128 * sizeof(float));
		for (int q = 0; q < 3; q++) {
			sh[0] = isb ? dims[q] : 4;
			sh[1] = isb ? 4 : dims[q];
			if (!trail_st_read_f32(st, k, sh, 2, bufs[i], NULL))
				break;
		}
		snprintf(names[i], sizeof names[i], "%s", k);
		if (rename)
			rename(names[i], sizeof names[i]);
		t[i] = (trail_st_tensor){.name = names[i], .ndim = 2, .shape = {sh[0], sh[1]}, .data = bufs[i]};
	}
	trail_st_write(dw, t, n, NULL, &e);
	trail_st_free(st);
	json_t *c = json_load_file(sc, 0, NULL);
	if (config_edit) {
		json_t *ed = json_loads(config_edit, 0, NULL);
		json_object_update(c, ed);
		json_decref(ed);
	}
	json_dump_file(c, dc, 0);
	json_decref(c);
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs), free(t), free(names);
	trail_free(sw), trail_free(sc), trail_free(dw), trail_free(dc);
	return d;
}

static void with_default(char *k, size_t cap)
{
	char *w = strstr(k, ".weight");
	if (w && (size_t)(w - k) + 16 < cap)
		memcpy(w, ".default.weight", 16);
}

static void drop_layer1_b(char *k, size_t cap)
{
	(void)cap;
	if (strstr(k, "h.1.attn.c_attn.lora_B"))
		memcpy(strstr(k, "lora_B"), "lora_Z", 6);
}

static void to_layer7(char *k, size_t cap)
{
	(void)cap;
	char *h = strstr(k, ".h.1.");
	if (h)
		h[3] = '7';
}

static void test_numpy_adapter(void)
{
	trail_error e = {0};
	char src[4200];
	snprintf(src, sizeof src, "%s/small-lora", fixture);
	trail_model *m = base();
	ok(trail_model_load_adapter(m, src, &e) == 0, "the adapter built with numpy in PEFT's layout loads: %s", e.msg);
	const trail_lora_config *lc = trail_model_lora(m);
	ok(lc && lc->r == 4 && lc->alpha == 8 && lc->targets == 15, "r 4, alpha 8, targets c_attn c_proj c_fc (all four layers)");
	float *a = logits(m);
	trail_model_merge_lora(m, &e);
	float *b = logits(m);
	ok(maxdiff(a, b, (size_t)T * 257) < 1e-5, "its logits = those of its weights merged into the base (maxdiff %.1e)",
	   maxdiff(a, b, (size_t)T * 257));
	trail_model_free(m);
	char *d = copy_fixture("default", with_default, NULL);
	m = base();
	ok(trail_model_load_adapter(m, d, &e) == 0, "keys with PEFT's adapter name (lora_A.default.weight) load too: %s", e.msg);
	float *c = logits(m);
	ok(!memcmp(a, c, (size_t)T * 257 * sizeof *c), "with the same logits");
	free(a), free(b), free(c);
	trail_model_free(m);
	trail_free(d);
	/* rsLoRA: scale alpha/sqrt(r) */
	d = copy_fixture("rs", NULL, "{\"use_rslora\": true}");
	m = base();
	trail_model_load_adapter(m, d, &e);
	a = logits(m);
	trail_model_free(m);
	trail_free(d);
	d = copy_fixture("rs-equiv", NULL, "{\"lora_alpha\": 16}"); /* 16/4 = 8/sqrt(4) */
	m = base();
	trail_model_load_adapter(m, d, &e);
	b = logits(m);
	ok(!memcmp(a, b, (size_t)T * 257 * sizeof *b), "rsLoRA scales by alpha/sqrt(r)");
	free(a), free(b);
	trail_model_free(m);
	trail_free(d);
	/* refused, and the model keeps no LoRA */
	static const struct {
		const char *name, *edit, *want;
		void (*rename)(char *, size_t);
	} bad[] = {
		{"fifo", "{\"fan_in_fan_out\": false}", "fan_in_fan_out", NULL},
		{"bias", "{\"bias\": \"all\"}", "unsupported", NULL},
		{"dora", "{\"use_dora\": true}", "unsupported", NULL},
		{"rank", "{\"r\": 8}", "shape", NULL},
		{"type", "{\"peft_type\": \"IA3\"}", "not a LoRA", NULL},
		{"halfb", NULL, "unknown tensor", drop_layer1_b},
		{"layer7", NULL, "matches no layer", to_layer7},
	};
	int all = 1;
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		d = copy_fixture(bad[i].name, bad[i].rename, bad[i].edit);
		m = base();
		int rc = trail_model_load_adapter(m, d, &e);
		if (rc != TRAIL_EDATA || !strstr(e.msg, bad[i].want) || trail_model_has_lora(m)) {
			diag("%s: rc %d: %s", bad[i].name, rc, e.msg);
			all = 0;
		}
		float loss;
		all &= trail_model_forward(m, tok, tgt, 1, T, &loss, &e) == 0;
		trail_model_free(m);
		trail_free(d);
	}
	ok(all, "fan_in_fan_out false, bias, DoRA, another r, another peft_type, a missing lora_B, a layer the base lacks: "
		"TRAIL_EDATA, and the model is left usable without LoRA");
}

static void test_frozen_base(void)
{
	trail_error e = {0};
	trail_model *m = base();
	size_t np;
	trail_lora_config lc = {.r = 2, .alpha = 4, .targets = 15};
	/* the base parameters before LoRA, bit for bit */
	const trail_model_cfg *c = trail_model_config(m);
	np = trail_gpt2_num_params(c);
	float *p0 = malloc(np * sizeof *p0), *p = trail_model_params(m, &np);
	memcpy(p0, p, np * sizeof *p0);
	trail_model_add_lora(m, &lc, 1, &e);
	size_t nl;
	trail_model_params(m, &nl);
	trail_adamw o;
	trail_adamw_init(&o, nl);
	float first = 0, last = 0, loss;
	for (int s = 0; s < 30; s++) {
		trail_model_zero_grad(m);
		trail_model_forward(m, tok, tgt, 1, T, &loss, &e);
		trail_model_backward(m, &e);
		trail_adamw_step(&o, m, 1e-2, 1.0);
		first = s ? first : loss, last = loss;
	}
	ok(nl == 2 * 2 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32)) && last < first, /* L r (in + out) */
	   "LoRA training on %zu parameters lowers the loss %.3f -> %.3f", nl, first, last);
	ok(!memcmp(p, p0, np * sizeof *p0), "and leaves every base weight bit-identical");
	trail_adamw_release(&o);
	free(p0);
	trail_model_free(m);
}

int main(void)
{
	trail_init();
	const char *top = getenv("TRAIL_TOP");
	snprintf(fixture, sizeof fixture, "%s/tests/data/model", top ? top : ".");
	if (!mkdtemp(dir))
		return 70;
	test_written_layout();
	test_numpy_adapter();
	test_frozen_base();
	char cmd[64];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	return tap_done();
}
