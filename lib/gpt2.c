/*
 * GPT-2 forward and backward on OpenBLAS, with LoRA. One section per layer
 * type; shapes in comments (B batch, T time, C channels, V vocab, NH heads,
 * hs = C/NH head size, N = B*T rows). Non-BLAS loops run in a fixed order,
 * so the same inputs and thread count give the same bits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cblas.h>

#include "json.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"

typedef struct lin {
	float *W, *b;   /* [in,out], [out] (views into the parameter arena) */
	float *dW, *db; /* gradients, NULL when frozen */
	int in, out;
	float *A, *Bm, *dA, *dB; /* LoRA [r,in], [out,r] and gradients, or NULL */
	float *u;                /* LoRA hidden x A^T [N,r] */
	const float *x;          /* the last input [N,in] */
	float *keep_dy;          /* dY [N,out] kept for attribution, or NULL */
	char name[40];
} lin;

typedef struct layer {
	float *ln1w, *ln1b, *ln2w, *ln2b, *dln1w, *dln1b, *dln2w, *dln2b;
	lin attn, aproj, fc, mproj;
	/* activations */
	float *ln1, *ln1m, *ln1r, *qkv, *att, *atty, *res1, *ln2, *ln2m, *ln2r, *fch, *fchg, *res2;
} layer;

struct trail_model {
	trail_gpt2_config c;
	float *p, *g; /* parameter arena and its gradients (g NULL when frozen) */
	size_t np;
	float *wte, *wpe, *lnfw, *lnfb, *dwte, *dwpe, *dlnfw, *dlnfb;
	layer *L;
	/* LoRA */
	trail_lora_config lc;
	float *lp, *lg;
	size_t nlp;
	double scale;
	/* activations for the allocated B*T */
	int B, T, cap, capT;
	float *acts, *x0, *lnf, *lnfm, *lnfr, *logits, *dlogits, *scratch;
	int32_t *tok, *tgt;
	float loss;
	long counted;
	int keep_io;
};

/* ---- helpers --------------------------------------------------------------- */

static int fail_oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

/* splitmix64 -> Box-Muller: a seeded normal stream, the same on every host */
typedef struct rng {
	uint64_t s;
} rng;

static uint64_t next64(rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static double unif(rng *r)
{
	return ((double)(next64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static void normal_fill(float *x, size_t n, double std, rng *r)
{
	for (size_t i = 0; i < n; i += 2) {
		double u1 = unif(r), u2 = unif(r), m = sqrt(-2 * log(u1));
		x[i] = (float)(std * m * cos(2 * M_PI * u2));
		if (i + 1 < n)
			x[i + 1] = (float)(std * m * sin(2 * M_PI * u2));
	}
}

int trail_gpt2_config_parse(const json_t *j, trail_gpt2_config *c, trail_error *err)
{
	static const char *keys[] = {"n_layer", "n_head", "n_embd", "n_positions", "vocab_size"};
	int *dst[] = {&c->n_layer, &c->n_head, &c->n_embd, &c->n_positions, &c->vocab_size};
	for (int i = 0; i < 5; i++) {
		json_t *v = json_object_get(j, keys[i]);
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 20))
			return trail_error_set(err, TRAIL_EDATA, "config: %s must be a positive integer", keys[i]);
		*dst[i] = (int)json_integer_value(v);
	}
	if (c->n_embd % c->n_head)
		return trail_error_set(err, TRAIL_EDATA, "config: n_embd %d is not a multiple of n_head %d",
				       c->n_embd, c->n_head);
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

/* Lay the views out in the arena: wte, wpe, layers in order, ln_f. */
static void bind(trail_model *m, float *base, int grads)
{
	size_t C = (size_t)m->c.n_embd, o = 0;
#define TAKE(ptr, n)              \
	do {                      \
		(ptr) = base + o; \
		o += (n);         \
	} while (0)
	if (!grads) {
		TAKE(m->wte, (size_t)m->c.vocab_size * C);
		TAKE(m->wpe, (size_t)m->c.n_positions * C);
	} else {
		TAKE(m->dwte, (size_t)m->c.vocab_size * C);
		TAKE(m->dwpe, (size_t)m->c.n_positions * C);
	}
	for (int l = 0; l < m->c.n_layer; l++) {
		layer *y = &m->L[l];
		lin *ls[4] = {&y->attn, &y->aproj, &y->fc, &y->mproj};
		size_t io[4][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
		if (!grads) {
			TAKE(y->ln1w, C);
			TAKE(y->ln1b, C);
		} else {
			TAKE(y->dln1w, C);
			TAKE(y->dln1b, C);
		}
		for (int k = 0; k < 4; k++) {
			if (k == 2) {
				if (!grads) {
					TAKE(y->ln2w, C);
					TAKE(y->ln2b, C);
				} else {
					TAKE(y->dln2w, C);
					TAKE(y->dln2b, C);
				}
			}
			ls[k]->in = (int)io[k][0];
			ls[k]->out = (int)io[k][1];
			if (!grads) {
				TAKE(ls[k]->W, io[k][0] * io[k][1]);
				TAKE(ls[k]->b, io[k][1]);
			} else {
				TAKE(ls[k]->dW, io[k][0] * io[k][1]);
				TAKE(ls[k]->db, io[k][1]);
			}
		}
		static const char *nm[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
		for (int k = 0; k < 4; k++)
			snprintf(ls[k]->name, sizeof ls[k]->name, "h.%d.%s", l, nm[k]);
	}
	if (!grads) {
		TAKE(m->lnfw, C);
		TAKE(m->lnfb, C);
	} else {
		TAKE(m->dlnfw, C);
		TAKE(m->dlnfb, C);
	}
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
	m->g = trail_calloc(m->np, sizeof *m->g);
	m->L = trail_calloc((size_t)c->n_layer, sizeof *m->L);
	if (!m->p || !m->g || !m->L) {
		trail_model_free(m);
		return fail_oom(err);
	}
	bind(m, m->p, 0);
	bind(m, m->g, 1);
	*out = m;
	return TRAIL_OK;
}

int trail_model_init(const trail_gpt2_config *c, uint64_t seed, trail_model **out,
		     trail_error *err)
{
	trail_model *m;
	int rc = alloc_model(c, &m, err);
	if (rc)
		return rc;
	rng r = {seed};
	size_t C = (size_t)c->n_embd;
	double proj = 0.02 / sqrt(2.0 * c->n_layer);
	normal_fill(m->wte, (size_t)c->vocab_size * C, 0.02, &r);
	normal_fill(m->wpe, (size_t)c->n_positions * C, 0.01, &r);
	for (int l = 0; l < c->n_layer; l++) {
		layer *y = &m->L[l];
		for (size_t i = 0; i < C; i++)
			y->ln1w[i] = y->ln2w[i] = 1;
		normal_fill(y->attn.W, C * 3 * C, 0.02, &r);
		normal_fill(y->aproj.W, C * C, proj, &r);
		normal_fill(y->fc.W, C * 4 * C, 0.02, &r);
		normal_fill(y->mproj.W, 4 * C * C, proj, &r);
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

/* ---- saving and loading ------------------------------------------------------ */

typedef struct pname {
	char name[64];
	float *data;
	int64_t shape[2];
	int ndim;
} pname;

/* Every parameter with its GPT-2 name, in arena order. */
static size_t param_names(const trail_model *m, pname *v)
{
	size_t n = 0, C = (size_t)m->c.n_embd;
#define ADD(nm, ptr, d0, d1, nd)                                          \
	do {                                                              \
		snprintf(v[n].name, sizeof v[n].name, "%s", nm);          \
		v[n].data = (ptr);                                        \
		v[n].shape[0] = (int64_t)(d0);                            \
		v[n].shape[1] = (int64_t)(d1);                            \
		v[n].ndim = (nd);                                         \
		n++;                                                      \
	} while (0)
	ADD("wte.weight", m->wte, m->c.vocab_size, C, 2);
	ADD("wpe.weight", m->wpe, m->c.n_positions, C, 2);
	for (int l = 0; l < m->c.n_layer; l++) {
		layer *y = &m->L[l];
		char b[64];
		const lin *ls[4] = {&y->attn, &y->aproj, &y->fc, &y->mproj};
		snprintf(b, sizeof b, "h.%d.ln_1.weight", l);
		ADD(b, y->ln1w, C, 0, 1);
		snprintf(b, sizeof b, "h.%d.ln_1.bias", l);
		ADD(b, y->ln1b, C, 0, 1);
		snprintf(b, sizeof b, "h.%d.ln_2.weight", l);
		ADD(b, y->ln2w, C, 0, 1);
		snprintf(b, sizeof b, "h.%d.ln_2.bias", l);
		ADD(b, y->ln2b, C, 0, 1);
		for (int k = 0; k < 4; k++) {
			snprintf(b, sizeof b, "%s.weight", ls[k]->name);
			ADD(b, ls[k]->W, ls[k]->in, ls[k]->out, 2);
			snprintf(b, sizeof b, "%s.bias", ls[k]->name);
			ADD(b, ls[k]->b, ls[k]->out, 0, 1);
		}
	}
	ADD("ln_f.weight", m->lnfw, C, 0, 1);
	ADD("ln_f.bias", m->lnfb, C, 0, 1);
#undef ADD
	return n;
}

int trail_model_save(const trail_model *m, const char *dir, trail_error *err)
{
	size_t cap = 4 + 12 * (size_t)m->c.n_layer;
	pname *v = trail_calloc(cap, sizeof *v);
	trail_st_tensor *t = trail_calloc(cap, sizeof *t);
	char *path = NULL, *cj = NULL;
	json_t *conf = NULL;
	int rc;
	if (!v || !t) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_mkdirs(dir, 0755, err)))
		goto out;
	size_t n = param_names(m, v);
	for (size_t i = 0; i < n; i++) {
		t[i].name = v[i].name;
		t[i].data = v[i].data;
		t[i].ndim = v[i].ndim;
		t[i].shape[0] = v[i].shape[0];
		t[i].shape[1] = v[i].shape[1];
	}
	json_t *meta = json_pack("{s:s}", "format", "pt");
	path = trail_path(dir, "model.safetensors");
	rc = path ? trail_st_write(path, t, n, meta, err) : fail_oom(err);
	json_decref(meta);
	if (rc)
		goto out;
	trail_free(path);
	size_t cl;
	conf = trail_gpt2_config_json(&m->c);
	if (!conf || (rc = trail_jcs(conf, &cj, &cl, err)) || !(path = trail_path(dir, "config.json"))) {
		rc = rc ? rc : fail_oom(err);
		goto out;
	}
	cj[cl] = '\n';
	rc = trail_write_atomic(path, cj, cl + 1, 0644, err);
out:
	json_decref(conf);
	trail_free(cj);
	trail_free(path);
	trail_free(v);
	trail_free(t);
	return rc;
}

int trail_model_load(const char *dir, trail_model **out, trail_error *err)
{
	char *cp = trail_path(dir, "config.json"), *wp = trail_path(dir, "model.safetensors");
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	trail_st *st = NULL;
	trail_model *m = NULL;
	pname *v = NULL;
	trail_gpt2_config c;
	int rc;
	*out = NULL;
	if (!cp || !wp) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_read_file(cp, 1 << 20, &cb, &cl, err)) || (rc = trail_json_parse(cb, cl, cp, &cj, err)) ||
	    (rc = trail_gpt2_config_parse(cj, &c, err)) || (rc = trail_st_open(wp, &st, err)) ||
	    (rc = alloc_model(&c, &m, err)))
		goto out;
	if (!(v = trail_calloc(4 + 12 * (size_t)c.n_layer, sizeof *v))) {
		rc = fail_oom(err);
		goto out;
	}
	size_t n = param_names(m, v);
	/* Hugging Face checkpoints prefix names with "transformer." */
	const char *prefix = trail_st_has(st, "transformer.wte.weight") ? "transformer." : "";
	for (size_t i = 0; i < n; i++) {
		char full[96];
		snprintf(full, sizeof full, "%s%s", prefix, v[i].name);
		if ((rc = trail_st_read_f32(st, full, v[i].shape, v[i].ndim, v[i].data, err)))
			goto out;
	}
	/* Anything else must be a known buffer (attention masks) or the tied head. */
	for (size_t i = 0; i < trail_st_count(st); i++) {
		const char *nm = trail_st_name(st, i);
		const char *bare = strncmp(nm, prefix, strlen(prefix)) ? nm : nm + strlen(prefix);
		int known = !strcmp(nm, "lm_head.weight") || strstr(nm, ".attn.bias") || strstr(nm, ".attn.masked_bias");
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
	trail_free(v);
	return rc;
}

/* ---- LoRA ------------------------------------------------------------------ */

static lin *target(trail_model *m, int l, int k)
{
	layer *y = &m->L[l];
	lin *ls[4] = {&y->attn, &y->aproj, &y->fc, &y->mproj};
	return ls[k];
}

int trail_model_has_lora(const trail_model *m)
{
	return m->lp != NULL;
}

int trail_model_add_lora(trail_model *m, const trail_lora_config *lc, uint64_t seed,
			 trail_error *err)
{
	if (m->lp)
		return trail_error_set(err, TRAIL_EUSAGE, "the model already has LoRA");
	if (lc->r < 1 || lc->r > 4096 || !(lc->alpha > 0) || !(lc->targets & 15))
		return trail_error_set(err, TRAIL_EUSAGE, "LoRA needs r >= 1, alpha > 0 and a target");
	size_t n = 0;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++)
			if (lc->targets & (1 << k)) {
				lin *x = target(m, l, k);
				n += (size_t)lc->r * ((size_t)x->in + (size_t)x->out);
			}
	m->lp = trail_calloc(n, sizeof *m->lp);
	m->lg = trail_calloc(n, sizeof *m->lg);
	if (!m->lp || !m->lg) {
		trail_free(m->lp);
		trail_free(m->lg);
		m->lp = m->lg = NULL;
		return fail_oom(err);
	}
	m->nlp = n;
	m->lc = *lc;
	m->scale = lc->rslora ? lc->alpha / sqrt(lc->r) : lc->alpha / lc->r;
	rng r = {seed ^ 0x10AA};
	size_t o = 0;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++) {
			if (!(lc->targets & (1 << k)))
				continue;
			lin *x = target(m, l, k);
			size_t na = (size_t)lc->r * (size_t)x->in, nb = (size_t)x->out * (size_t)lc->r;
			x->A = m->lp + o, x->dA = m->lg + o;
			o += na;
			x->Bm = m->lp + o, x->dB = m->lg + o;
			o += nb;
			/* as PEFT: A ~ kaiming-uniform(a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
			double bound = 1.0 / sqrt((double)x->in);
			for (size_t i = 0; i < na; i++)
				x->A[i] = (float)((2 * unif(&r) - 1) * bound);
		}
	m->cap = 0; /* activations now need room for the LoRA hidden states */
	/* the base is frozen from here */
	trail_free(m->g);
	m->g = NULL;
	m->dwte = m->dwpe = m->dlnfw = m->dlnfb = NULL;
	for (int l = 0; l < m->c.n_layer; l++) {
		layer *y = &m->L[l];
		y->dln1w = y->dln1b = y->dln2w = y->dln2b = NULL;
		for (int k = 0; k < 4; k++)
			target(m, l, k)->dW = target(m, l, k)->db = NULL;
	}
	return TRAIL_OK;
}

static const char *const peft_mod[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
static const char *const peft_target[4] = {"c_attn", "c_proj", "c_fc", "c_proj"};

int trail_model_save_adapter(const trail_model *m, const char *dir, const char *base_name,
			     trail_error *err)
{
	if (!m->lp)
		return trail_error_set(err, TRAIL_EUSAGE, "the model has no LoRA");
	size_t cap = 8 * (size_t)m->c.n_layer, n = 0;
	trail_st_tensor *t = trail_calloc(cap, sizeof *t);
	char (*names)[96] = trail_calloc(cap, sizeof *names);
	char *path = NULL, *cj = NULL;
	json_t *conf = NULL, *targets = json_array();
	int rc;
	if (!t || !names || !targets) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_mkdirs(dir, 0755, err)))
		goto out;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++) {
			lin *x = target((trail_model *)m, l, k);
			if (!x->A)
				continue;
			for (int ab = 0; ab < 2; ab++, n++) {
				snprintf(names[n], sizeof names[n], "base_model.model.transformer.h.%d.%s.lora_%c.weight", l,
					 peft_mod[k], ab ? 'B' : 'A');
				t[n].name = names[n];
				t[n].ndim = 2;
				t[n].data = ab ? x->Bm : x->A;
				t[n].shape[0] = ab ? x->out : m->lc.r;
				t[n].shape[1] = ab ? m->lc.r : x->in;
			}
		}
	/* PEFT lists module names; c_proj names both attn.c_proj and mlp.c_proj */
	int seen_proj = 0;
	for (int k = 0; k < 4; k++)
		if (m->lc.targets & (1 << k)) {
			if (!strcmp(peft_target[k], "c_proj") && seen_proj++)
				continue;
			json_array_append_new(targets, json_string(peft_target[k]));
		}
	json_t *meta = json_pack("{s:s}", "format", "pt");
	path = trail_path(dir, "adapter_model.safetensors");
	rc = path ? trail_st_write(path, t, n, meta, err) : fail_oom(err);
	json_decref(meta);
	if (rc)
		goto out;
	trail_free(path);
	conf = json_pack("{s:s, s:s, s:i, s:f, s:O, s:b, s:f, s:s, s:b, s:b, s:s, s:b}", "peft_type", "LORA",
			 "task_type", "CAUSAL_LM", "r", m->lc.r, "lora_alpha", m->lc.alpha, "target_modules", targets,
			 "fan_in_fan_out", 1, "lora_dropout", 0.0, "bias", "none", "use_rslora", m->lc.rslora,
			 "inference_mode", 1, "base_model_name_or_path", base_name ? base_name : "",
			 "modules_to_save", 0);
	/* trail's exact target set, since c_proj is ambiguous in PEFT's list */
	if (conf) {
		json_object_set_new(conf, "modules_to_save", json_null());
		json_t *ex = json_array();
		for (int k = 0; k < 4; k++)
			if (m->lc.targets & (1 << k))
				json_array_append_new(ex, json_string(peft_mod[k]));
		json_object_set_new(conf, "trail_target_layers", ex);
	}
	size_t cl;
	if (!conf || (rc = trail_jcs(conf, &cj, &cl, err)) || !(path = trail_path(dir, "adapter_config.json"))) {
		rc = rc ? rc : fail_oom(err);
		goto out;
	}
	cj[cl] = '\n';
	rc = trail_write_atomic(path, cj, cl + 1, 0644, err);
out:
	json_decref(conf);
	json_decref(targets);
	trail_free(cj);
	trail_free(path);
	trail_free(t);
	trail_free(names);
	return rc;
}

int trail_model_load_adapter(trail_model *m, const char *dir, trail_error *err)
{
	char *cp = trail_path(dir, "adapter_config.json"), *wp = trail_path(dir, "adapter_model.safetensors");
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	trail_st *st = NULL;
	int rc;
	if (!cp || !wp) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_read_file(cp, 1 << 20, &cb, &cl, err)) || (rc = trail_json_parse(cb, cl, cp, &cj, err)) ||
	    (rc = trail_st_open(wp, &st, err)))
		goto out;
	const char *pt = json_string_value(json_object_get(cj, "peft_type"));
	json_t *r = json_object_get(cj, "r"), *al = json_object_get(cj, "lora_alpha");
	if (!pt || strcmp(pt, "LORA") || !json_is_integer(r) || !json_is_number(al)) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "not a LoRA adapter config (peft_type, r, lora_alpha)");
		goto out;
	}
	if (!json_is_true(json_object_get(cj, "fan_in_fan_out")) && json_object_get(cj, "fan_in_fan_out")) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "fan_in_fan_out must be true for GPT-2's Conv1D layers");
		goto out;
	}
	/* which layers: the tensors present decide (PEFT's c_proj is ambiguous) */
	trail_lora_config lc = {.r = (int)json_integer_value(r), .alpha = json_number_value(al),
				.rslora = json_is_true(json_object_get(cj, "use_rslora"))};
	for (int k = 0; k < 4; k++) {
		char nm[128];
		snprintf(nm, sizeof nm, "base_model.model.transformer.h.0.%s.lora_A.weight", peft_mod[k]);
		if (trail_st_has(st, nm))
			lc.targets |= 1 << k;
	}
	if (!lc.targets) {
		rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "no LoRA tensors for this model's layers");
		goto out;
	}
	if ((rc = trail_model_add_lora(m, &lc, 0, err)))
		goto out;
	size_t expect = 0;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++) {
			lin *x = target(m, l, k);
			if (!x->A)
				continue;
			char nm[128];
			int64_t sa[2] = {lc.r, x->in}, sb[2] = {x->out, lc.r};
			snprintf(nm, sizeof nm, "base_model.model.transformer.h.%d.%s.lora_A.weight", l, peft_mod[k]);
			if ((rc = trail_st_read_f32(st, nm, sa, 2, x->A, err)))
				goto out;
			snprintf(nm, sizeof nm, "base_model.model.transformer.h.%d.%s.lora_B.weight", l, peft_mod[k]);
			if ((rc = trail_st_read_f32(st, nm, sb, 2, x->Bm, err)))
				goto out;
			expect += 2;
		}
	if (trail_st_count(st) != expect)
		rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "%zu tensors, expected %zu for this base model",
				    trail_st_count(st), expect);
out:
	trail_st_free(st);
	json_decref(cj);
	trail_free(cb);
	trail_free(cp);
	trail_free(wp);
	return rc;
}

int trail_model_merge_lora(trail_model *m, trail_error *err)
{
	if (!m->lp)
		return trail_error_set(err, TRAIL_EUSAGE, "the model has no LoRA");
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < 4; k++) {
			lin *x = target(m, l, k);
			if (!x->A)
				continue;
			/* W [in,out] += scale * A^T [in,r] B^T [r,out] */
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, x->in, x->out, m->lc.r, (float)m->scale, x->A,
				    x->in, x->Bm, m->lc.r, 1.0f, x->W, x->out);
			x->A = x->Bm = x->dA = x->dB = NULL;
		}
	trail_free(m->lp);
	trail_free(m->lg);
	m->lp = m->lg = NULL;
	m->nlp = 0;
	m->cap = 0;
	return TRAIL_OK;
}

/* ---- activations --------------------------------------------------------------- */

static int ensure_acts(trail_model *m, int B, int T, trail_error *err)
{
	size_t N = (size_t)B * (size_t)T, C = (size_t)m->c.n_embd, V = (size_t)m->c.vocab_size;
	size_t NH = (size_t)m->c.n_head, r = m->lp ? (size_t)m->lc.r : 0;
	if ((int)N <= m->cap && T <= m->capT) {
		m->B = B;
		m->T = T;
		return TRAIL_OK;
	}
	/* per layer: ln1, qkv, atty, res1, ln2, fch, fchg, res2 + att + stats + lora u */
	size_t per = N * (C + 3 * C + C + C + C + 4 * C + 4 * C + C) + (size_t)B * NH * (size_t)T * (size_t)T + 4 * N +
		     4 * N * r;
	size_t keep = m->keep_io ? N * (3 * C + C + 4 * C + C) : 0;
	size_t total = N * C + N * C + 2 * N + 2 * N * V + (size_t)m->c.n_layer * (per + keep) +
		       N * 4 * C * 3 + (size_t)T * (size_t)T * 2;
	trail_free(m->acts);
	trail_free(m->tok);
	trail_free(m->tgt);
	m->acts = trail_calloc(total, sizeof(float));
	m->tok = trail_calloc(N, sizeof *m->tok);
	m->tgt = trail_calloc(N, sizeof *m->tgt);
	if (!m->acts || !m->tok || !m->tgt) {
		m->cap = 0;
		return fail_oom(err);
	}
	float *p = m->acts;
#define TAKE(ptr, n)      \
	do {              \
		(ptr) = p; \
		p += (n); \
	} while (0)
	TAKE(m->x0, N * C);
	TAKE(m->lnf, N * C);
	TAKE(m->lnfm, N);
	TAKE(m->lnfr, N);
	TAKE(m->logits, N * V);
	TAKE(m->dlogits, N * V);
	for (int l = 0; l < m->c.n_layer; l++) {
		layer *y = &m->L[l];
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
		lin *ls[4] = {&y->attn, &y->aproj, &y->fc, &y->mproj};
		for (int k = 0; k < 4; k++) {
			if (ls[k]->A)
				TAKE(ls[k]->u, N * r);
			ls[k]->keep_dy = NULL;
			if (m->keep_io)
				TAKE(ls[k]->keep_dy, N * (size_t)ls[k]->out);
		}
	}
	TAKE(m->scratch, N * 4 * C * 3 + (size_t)T * (size_t)T * 2);
#undef TAKE
	m->B = B;
	m->T = T;
	m->cap = (int)N;
	m->capT = T;
	return TRAIL_OK;
}

/* ---- layers ------------------------------------------------------------------- */

/* out[N,C] = (x - mean) * rstd * w + b; mean, rstd [N] kept for backward */
static void layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w,
			  const float *b, int N, int C)
{
	for (int i = 0; i < N; i++) {
		const float *xi = x + (size_t)i * C;
		double m = 0, v = 0;
		for (int c = 0; c < C; c++)
			m += xi[c];
		m /= C;
		for (int c = 0; c < C; c++)
			v += (xi[c] - m) * (xi[c] - m);
		v /= C;
		double s = 1.0 / sqrt(v + 1e-5);
		for (int c = 0; c < C; c++)
			out[(size_t)i * C + c] = (float)((xi[c] - m) * s) * w[c] + b[c];
		mean[i] = (float)m;
		rstd[i] = (float)s;
	}
}

static void layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
			  const float *w, const float *mean, const float *rstd, int N, int C)
{
	for (int i = 0; i < N; i++) {
		const float *d = dout + (size_t)i * C, *xi = x + (size_t)i * C;
		double dm = 0, dnm = 0;
		for (int c = 0; c < C; c++) {
			double norm = (xi[c] - mean[i]) * rstd[i], dn = (double)w[c] * d[c];
			dm += dn;
			dnm += dn * norm;
		}
		dm /= C;
		dnm /= C;
		for (int c = 0; c < C; c++) {
			double norm = (xi[c] - mean[i]) * rstd[i], dn = (double)w[c] * d[c];
			if (dw) {
				dw[c] += (float)(d[c] * norm);
				db[c] += d[c];
			}
			dx[(size_t)i * C + c] += (float)((dn - dm - norm * dnm) * rstd[i]);
		}
	}
}

/* y[N,out] = x[N,in] W[in,out] + b  (+ scale (x A^T) B^T) */
static void linear_fwd(const trail_model *m, lin *L, float *y, const float *x, int N)
{
	L->x = x;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, L->out, L->in, 1.0f, x, L->in, L->W, L->out, 0.0f, y,
		    L->out);
	for (int i = 0; i < N; i++)
		for (int o = 0; o < L->out; o++)
			y[(size_t)i * L->out + o] += L->b[o];
	if (L->A) {
		int r = m->lc.r;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, L->in, 1.0f, x, L->in, L->A, L->in, 0.0f, L->u, r);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, L->out, r, (float)m->scale, L->u, r, L->Bm, r, 1.0f, y,
			    L->out);
	}
}

/* dx[N,in] += dy W^T; dW += x^T dy; db += sum dy; LoRA grads. scratch [N,r]. */
static void linear_bwd(const trail_model *m, lin *L, float *dx, const float *dy, int N, float *scratch)
{
	if (L->keep_dy)
		memcpy(L->keep_dy, dy, (size_t)N * (size_t)L->out * sizeof *dy);
	if (L->dW) {
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->in, L->out, N, 1.0f, L->x, L->in, dy, L->out, 1.0f,
			    L->dW, L->out);
		for (int i = 0; i < N; i++)
			for (int o = 0; o < L->out; o++)
				L->db[o] += dy[(size_t)i * L->out + o];
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, L->in, L->out, 1.0f, dy, L->out, L->W, L->out, 1.0f, dx,
		    L->in);
	if (L->A) {
		int r = m->lc.r;
		float s = (float)m->scale, *du = scratch;
		/* du [N,r] = s dy B;  dB [out,r] += s dy^T u;  dA [r,in] += du^T x;  dx += du A */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, L->out, s, dy, L->out, L->Bm, r, 0.0f, du, r);
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->out, r, N, s, dy, L->out, L->u, r, 1.0f, L->dB, r);
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, L->in, N, 1.0f, du, r, L->x, L->in, 1.0f, L->dA, L->in);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, L->in, r, 1.0f, du, r, L->A, L->in, 1.0f, dx, L->in);
	}
}

#define GELU_S 0.7978845608028654 /* sqrt(2/pi) */

static void gelu_fwd(float *y, const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		double v = x[i];
		y[i] = (float)(0.5 * v * (1 + tanh(GELU_S * (v + 0.044715 * v * v * v))));
	}
}

static void gelu_bwd(float *dx, const float *x, const float *dy, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		double v = x[i], u = GELU_S * (v + 0.044715 * v * v * v), t = tanh(u);
		double g = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * GELU_S * (1 + 3 * 0.044715 * v * v);
		dx[i] = (float)(g * dy[i]);
	}
}

/*
 * Causal self-attention. qkv [B,T,3C] -> atty [B,T,C]; att [B,NH,T,T] keeps
 * the probabilities. Per (b, h) two sgemms over strided views.
 */
static void attention_fwd(float *atty, float *att, const float *qkv, int B, int T, int C, int NH)
{
	int hs = C / NH;
	float scale = (float)(1.0 / sqrt((double)hs));
	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++) {
			const float *q = qkv + (size_t)b * T * 3 * C + (size_t)h * hs;
			const float *k = q + C, *v = q + 2 * C;
			float *a = att + ((size_t)b * NH + h) * T * T;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, 3 * C, k, 3 * C, 0.0f, a, T);
			for (int t = 0; t < T; t++) {
				float *row = a + (size_t)t * T, mx = row[0];
				for (int u = 1; u <= t; u++)
					mx = row[u] > mx ? row[u] : mx;
				double sum = 0;
				for (int u = 0; u <= t; u++)
					sum += (row[u] = expf(row[u] - mx));
				for (int u = 0; u < T; u++)
					row[u] = u <= t ? (float)(row[u] / sum) : 0.0f;
			}
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, v, 3 * C, 0.0f,
				    atty + (size_t)b * T * C + (size_t)h * hs, C);
		}
}

static void attention_bwd(float *dqkv, const float *datty, const float *att, const float *qkv, int B, int T,
			  int C, int NH, float *scratch)
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
			const float *dy = datty + (size_t)b * T * C + (size_t)h * hs;
			/* da = dy v^T [T,T];  dv += a^T dy [T,hs] */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dy, C, v, 3 * C, 0.0f, da, T);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, dy, C, 1.0f, dv, 3 * C);
			/* softmax backward: ds = a * (da - rowsum(a * da)) */
			for (int t = 0; t < T; t++) {
				const float *ar = a + (size_t)t * T;
				const float *dr = da + (size_t)t * T;
				double dot = 0;
				for (int u = 0; u <= t; u++)
					dot += (double)ar[u] * dr[u];
				for (int u = 0; u < T; u++)
					ds[(size_t)t * T + u] = u <= t ? (float)(ar[u] * (dr[u] - dot)) : 0.0f;
			}
			/* dq += scale ds k;  dk += scale ds^T q */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale, ds, T, k, 3 * C, 1.0f, dq, 3 * C);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale, ds, T, q, 3 * C, 1.0f, dk, 3 * C);
		}
}

/* ---- the model ------------------------------------------------------------------ */

int trail_model_forward(trail_model *m, const int32_t *tokens, const int32_t *targets, int B,
			int T, float *loss, trail_error *err)
{
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, N = B * T, rc;
	if (B < 1 || T < 1 || T > m->c.n_positions)
		return trail_error_set(err, TRAIL_EUSAGE, "sequence length %d outside 1..%d", T, m->c.n_positions);
	if ((rc = ensure_acts(m, B, T, err)))
		return rc;
	for (int i = 0; i < N; i++) {
		if (tokens[i] < 0 || tokens[i] >= V)
			return trail_error_set(err, TRAIL_EDATA, "token %d outside the vocabulary (%d)", tokens[i], V);
		m->tok[i] = tokens[i];
		m->tgt[i] = targets ? targets[i] : -1;
		if (m->tgt[i] >= V)
			return trail_error_set(err, TRAIL_EDATA, "target %d outside the vocabulary", m->tgt[i]);
	}
	/* x0 [N,C] = wte[tok] + wpe[t] */
	for (int i = 0; i < N; i++)
		for (int c = 0; c < C; c++)
			m->x0[(size_t)i * C + c] = m->wte[(size_t)m->tok[i] * C + c] + m->wpe[(size_t)(i % T) * C + c];
	const float *x = m->x0;
	float *tmp = m->scratch;
	for (int l = 0; l < m->c.n_layer; l++) {
		layer *y = &m->L[l];
		layernorm_fwd(y->ln1, y->ln1m, y->ln1r, x, y->ln1w, y->ln1b, N, C);
		linear_fwd(m, &y->attn, y->qkv, y->ln1, N);
		attention_fwd(y->atty, y->att, y->qkv, B, T, C, NH);
		linear_fwd(m, &y->aproj, tmp, y->atty, N);
		for (size_t i = 0; i < (size_t)N * C; i++)
			y->res1[i] = x[i] + tmp[i];
		layernorm_fwd(y->ln2, y->ln2m, y->ln2r, y->res1, y->ln2w, y->ln2b, N, C);
		linear_fwd(m, &y->fc, y->fch, y->ln2, N);
		gelu_fwd(y->fchg, y->fch, (size_t)N * 4 * C);
		linear_fwd(m, &y->mproj, tmp, y->fchg, N);
		for (size_t i = 0; i < (size_t)N * C; i++)
			y->res2[i] = y->res1[i] + tmp[i];
		x = y->res2;
	}
	layernorm_fwd(m->lnf, m->lnfm, m->lnfr, x, m->lnfw, m->lnfb, N, C);
	/* logits [N,V] = lnf wte^T (tied head) */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, V, C, 1.0f, m->lnf, C, m->wte, C, 0.0f, m->logits, V);
	double total = 0;
	long counted = 0;
	for (int i = 0; i < N; i++) {
		if (m->tgt[i] < 0)
			continue;
		const float *lg = m->logits + (size_t)i * V;
		float mx = lg[0];
		for (int v = 1; v < V; v++)
			mx = lg[v] > mx ? lg[v] : mx;
		double sum = 0;
		for (int v = 0; v < V; v++)
			sum += exp((double)lg[v] - mx);
		total += log(sum) + mx - lg[m->tgt[i]];
		counted++;
	}
	m->counted = counted;
	m->loss = counted ? (float)(total / counted) : 0.0f;
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
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, B = m->B, T = m->T, N = B * T;
	if (!m->cap)
		return trail_error_set(err, TRAIL_EUSAGE, "backward before forward");
	/* dlogits = (softmax - onehot) / counted */
	double inv = m->counted ? 1.0 / (double)m->counted : 0;
	for (int i = 0; i < N; i++) {
		float *d = m->dlogits + (size_t)i * V;
		if (m->tgt[i] < 0) {
			memset(d, 0, (size_t)V * sizeof *d);
			continue;
		}
		const float *lg = m->logits + (size_t)i * V;
		float mx = lg[0];
		for (int v = 1; v < V; v++)
			mx = lg[v] > mx ? lg[v] : mx;
		double sum = 0;
		for (int v = 0; v < V; v++)
			sum += exp((double)lg[v] - mx);
		for (int v = 0; v < V; v++)
			d[v] = (float)(exp((double)lg[v] - mx) / sum * inv);
		d[m->tgt[i]] -= (float)inv;
	}
	/* scratch: dres [N,C] | dln [N,C] | dbig [N,4C] | dqkv [N,3C] ... | attention [2T^2] */
	float *dres = m->scratch, *dln = dres + (size_t)N * C, *dbig = dln + (size_t)N * C;
	float *dqkv = dbig + (size_t)N * 4 * C, *dsmall = dqkv + (size_t)N * 3 * C;
	float *datt = m->scratch + (size_t)N * 4 * C * 3;
	/* head: dwte += dlogits^T lnf [V,C];  dlnf = dlogits wte [N,C] */
	if (m->dwte)
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, N, 1.0f, m->dlogits, V, m->lnf, C, 1.0f, m->dwte, C);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, V, 1.0f, m->dlogits, V, m->wte, C, 0.0f, dln, C);
	memset(dres, 0, (size_t)N * C * sizeof *dres);
	const float *xlast = m->c.n_layer ? m->L[m->c.n_layer - 1].res2 : m->x0;
	layernorm_bwd(dres, m->dlnfw, m->dlnfb, dln, xlast, m->lnfw, m->lnfm, m->lnfr, N, C);
	float *lora_scratch = dsmall; /* [N,r] fits: r <= 4096 is checked, N*C >= N*r for r <= C */
	for (int l = m->c.n_layer - 1; l >= 0; l--) {
		layer *y = &m->L[l];
		const float *xin = l ? m->L[l - 1].res2 : m->x0;
		/* MLP: res2 = res1 + mproj(gelu(fc(ln2(res1)))) */
		memset(dbig, 0, (size_t)N * 4 * C * sizeof *dbig);
		linear_bwd(m, &y->mproj, dbig, dres, N, lora_scratch);
		gelu_bwd(dbig, y->fch, dbig, (size_t)N * 4 * C);
		memset(dln, 0, (size_t)N * C * sizeof *dln);
		linear_bwd(m, &y->fc, dln, dbig, N, lora_scratch);
		layernorm_bwd(dres, y->dln2w, y->dln2b, dln, y->res1, y->ln2w, y->ln2m, y->ln2r, N, C);
		/* attention: res1 = x + aproj(attn(c_attn(ln1(x)))) */
		memset(dln, 0, (size_t)N * C * sizeof *dln); /* datty */
		linear_bwd(m, &y->aproj, dln, dres, N, lora_scratch);
		memset(dqkv, 0, (size_t)N * 3 * C * sizeof *dqkv);
		attention_bwd(dqkv, dln, y->att, y->qkv, B, T, C, NH, datt);
		memset(dln, 0, (size_t)N * C * sizeof *dln);
		linear_bwd(m, &y->attn, dln, dqkv, N, lora_scratch);
		layernorm_bwd(dres, y->dln1w, y->dln1b, dln, xin, y->ln1w, y->ln1m, y->ln1r, N, C);
	}
	if (m->dwte)
		for (int i = 0; i < N; i++)
			for (int c = 0; c < C; c++) {
				m->dwte[(size_t)m->tok[i] * C + c] += dres[(size_t)i * C + c];
				m->dwpe[(size_t)(i % T) * C + c] += dres[(size_t)i * C + c];
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
	return m->lp ? m->lg : m->g;
}

void trail_model_keep_linear_io(trail_model *m, int on)
{
	if (m->keep_io != on) {
		m->keep_io = on;
		m->cap = 0; /* reallocate with (or without) the kept gradients */
	}
}

int trail_model_num_linear(const trail_model *m)
{
	return 4 * m->c.n_layer;
}

int trail_model_linear_io(const trail_model *m, int i, const char **name, const float **X,
			  const float **dY, int *in, int *out, int *T)
{
	if (i < 0 || i >= 4 * m->c.n_layer)
		return TRAIL_EUSAGE;
	lin *L = target((trail_model *)m, i / 4, i % 4);
	*name = L->name;
	*X = L->x;
	*dY = L->keep_dy;
	*in = L->in;
	*out = L->out;
	*T = m->B * m->T;
	return TRAIL_OK;
}

/* ---- optimiser ------------------------------------------------------------------- */

int trail_adamw_init(trail_adamw *o, size_t n)
{
	memset(o, 0, sizeof *o);
	o->beta1 = 0.9;
	o->beta2 = 0.95;
	o->eps = 1e-8;
	o->weight_decay = 0.0;
	o->n = n;
	o->m = trail_calloc(n, sizeof *o->m);
	o->v = trail_calloc(n, sizeof *o->v);
	return o->m && o->v ? TRAIL_OK : TRAIL_ENOMEM;
}

void trail_adamw_release(trail_adamw *o)
{
	trail_free(o->m);
	trail_free(o->v);
	o->m = o->v = NULL;
}

double trail_adamw_step(trail_adamw *o, trail_model *m, double lr, double clip)
{
	size_t n;
	float *p = trail_model_params(m, &n), *g = trail_model_grads(m, &n);
	double norm = 0;
	for (size_t i = 0; i < n; i++)
		norm += (double)g[i] * g[i];
	norm = sqrt(norm);
	double gs = clip > 0 && norm > clip ? clip / norm : 1.0;
	o->t++;
	double b1c = 1 - pow(o->beta1, (double)o->t), b2c = 1 - pow(o->beta2, (double)o->t);
	for (size_t i = 0; i < n; i++) {
		double gi = g[i] * gs;
		o->m[i] = (float)(o->beta1 * o->m[i] + (1 - o->beta1) * gi);
		o->v[i] = (float)(o->beta2 * o->v[i] + (1 - o->beta2) * gi * gi);
		double mh = o->m[i] / b1c, vh = o->v[i] / b2c;
		p[i] -= (float)(lr * (mh / (sqrt(vh) + o->eps) + o->weight_decay * p[i]));
	}
	return norm;
}

double trail_lr_schedule(double peak, long step, long warmup, long total)
{
	if (step < warmup)
		return peak * (double)(step + 1) / (double)warmup;
	if (total <= warmup)
		return peak;
	double f = (double)(step - warmup) / (double)(total - warmup);
	if (f > 1)
		f = 1;
	return peak * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * f)));
}

/* ---- inference ------------------------------------------------------------------- */

struct trail_lora_weights {
	int r, nl;
	double scale;
	float **A, **B; /* [n_layer*4], NULL where the layer has no LoRA */
	float *mem;
	size_t bytes;
};

struct trail_kv {
	float *mem; /* [L][2][P][C] */
};

size_t trail_kv_bytes(const trail_model *m)
{
	return (size_t)m->c.n_layer * 2 * (size_t)m->c.n_positions * (size_t)m->c.n_embd * sizeof(float);
}

trail_kv *trail_kv_new(const trail_model *m)
{
	trail_kv *kv = trail_calloc(1, sizeof *kv);
	if (kv && !(kv->mem = trail_malloc(trail_kv_bytes(m)))) {
		trail_free(kv);
		kv = NULL;
	}
	return kv;
}

void trail_kv_free(trail_kv *kv)
{
	if (kv) {
		trail_free(kv->mem);
		trail_free(kv);
	}
}

void trail_lora_weights_free(trail_lora_weights *w)
{
	if (!w)
		return;
	trail_free(w->A);
	trail_free(w->B);
	trail_free(w->mem);
	trail_free(w);
}

size_t trail_lora_weights_bytes(const trail_lora_weights *w)
{
	return w->bytes;
}

int trail_lora_weights_load(const trail_model *base, const char *dir, trail_lora_weights **out,
			    trail_error *err)
{
	/* load through a scratch model so the checks are the training path's own */
	trail_model *t = NULL;
	trail_lora_weights *w = NULL;
	int rc = alloc_model(&base->c, &t, err);
	*out = NULL;
	if (rc)
		return rc;
	if ((rc = trail_model_load_adapter(t, dir, err)))
		goto out;
	int nl = 4 * base->c.n_layer;
	if (!(w = trail_calloc(1, sizeof *w)) || !(w->A = trail_calloc((size_t)nl, sizeof *w->A)) ||
	    !(w->B = trail_calloc((size_t)nl, sizeof *w->B)) || !(w->mem = trail_malloc(t->nlp * sizeof *w->mem))) {
		rc = fail_oom(err);
		goto out;
	}
	memcpy(w->mem, t->lp, t->nlp * sizeof *w->mem);
	w->r = t->lc.r;
	w->nl = nl;
	w->scale = t->scale;
	w->bytes = t->nlp * sizeof *w->mem;
	for (int i = 0; i < nl; i++) {
		lin *x = target(t, i / 4, i % 4);
		if (x->A) {
			w->A[i] = w->mem + (x->A - t->lp);
			w->B[i] = w->mem + (x->Bm - t->lp);
		}
	}
	*out = w;
	w = NULL;
out:
	trail_lora_weights_free(w);
	trail_model_free(t);
	return rc;
}

/* y [n,out] = x W + b, then each adapter's (x A^T) B^T over its rows (gathered). */
static int step_linear(const lin *L, int li, int n, const float *x, float *y, const int *ord,
		       const trail_lora_weights *const *lora, float *gx, float *gu, float *gy)
{
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, L->out, L->in, 1.0f, x, L->in, L->W, L->out, 0.0f, y,
		    L->out);
	for (int i = 0; i < n; i++)
		for (int o = 0; o < L->out; o++)
			y[(size_t)i * L->out + o] += L->b[o];
	for (int s = 0; s < n;) { /* ord groups rows by adapter */
		const trail_lora_weights *w = lora[ord[s]];
		int e = s;
		while (e < n && lora[ord[e]] == w)
			e++;
		if (w && w->A[li]) {
			int k = e - s, r = w->r;
			for (int j = 0; j < k; j++)
				memcpy(gx + (size_t)j * L->in, x + (size_t)ord[s + j] * L->in, (size_t)L->in * sizeof *x);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, r, L->in, 1.0f, gx, L->in, w->A[li], L->in, 0.0f,
				    gu, r);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, L->out, r, (float)w->scale, gu, r, w->B[li], r,
				    0.0f, gy, L->out);
			for (int j = 0; j < k; j++)
				for (int o = 0; o < L->out; o++)
					y[(size_t)ord[s + j] * L->out + o] += gy[(size_t)j * L->out + o];
		}
		s = e;
	}
	return TRAIL_OK;
}

int trail_model_step(trail_model *m, int n, const int32_t *tok, const int *pos, trail_kv *const *kv,
		     const trail_lora_weights *const *lora, float *logits, trail_error *err)
{
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, P = m->c.n_positions, hs = C / NH, rmax = 1;
	if (n < 1)
		return TRAIL_OK;
	for (int i = 0; i < n; i++) {
		if (tok[i] < 0 || tok[i] >= V || pos[i] < 0 || pos[i] >= P)
			return trail_error_set(err, TRAIL_EDATA, "row %d: token %d at position %d out of range", i, tok[i], pos[i]);
		if (lora[i] && lora[i]->r > rmax)
			rmax = lora[i]->r;
	}
	size_t N = (size_t)n;
	float *mem = trail_malloc(sizeof(float) * (N * C * 4 + N * 3 * C + N * 4 * C * 2 + N * 4 * C * 2 + N * (size_t)rmax +
						    (size_t)P));
	int *ord = trail_malloc(N * sizeof *ord);
	if (!mem || !ord) {
		trail_free(mem), trail_free(ord);
		return fail_oom(err);
	}
	float *x = mem, *ln = x + N * C, *y = ln + N * C, *tmp = y + N * C, *qkv = tmp + N * C, *h = qkv + N * 3 * C;
	float *hg = h + N * 4 * C, *gx = hg + N * 4 * C, *gy = gx + N * 4 * C, *gu = gy + N * 4 * C, *sc = gu + N * (size_t)rmax;
	float lnm[1], lnr[1];
	/* group rows by adapter (stable), for the low-rank products */
	for (int i = 0; i < n; i++)
		ord[i] = i;
	for (int i = 1; i < n; i++) {
		int v = ord[i], j = i;
		while (j > 0 && (uintptr_t)lora[ord[j - 1]] > (uintptr_t)lora[v]) {
			ord[j] = ord[j - 1];
			j--;
		}
		ord[j] = v;
	}
	for (int i = 0; i < n; i++)
		for (int c = 0; c < C; c++)
			x[(size_t)i * C + c] = m->wte[(size_t)tok[i] * C + c] + m->wpe[(size_t)pos[i] * C + c];
	for (int l = 0; l < m->c.n_layer; l++) {
		layer *Ly = &m->L[l];
		for (int i = 0; i < n; i++)
			layernorm_fwd(ln + (size_t)i * C, lnm, lnr, x + (size_t)i * C, Ly->ln1w, Ly->ln1b, 1, C);
		step_linear(&Ly->attn, 4 * l, n, ln, qkv, ord, lora, gx, gu, gy);
		for (int i = 0; i < n; i++) { /* cache this position's key and value */
			float *kc = kv[i]->mem + ((size_t)l * 2 * P + (size_t)pos[i]) * C;
			float *vc = kv[i]->mem + (((size_t)l * 2 + 1) * P + (size_t)pos[i]) * C;
			memcpy(kc, qkv + (size_t)i * 3 * C + C, (size_t)C * sizeof *kc);
			memcpy(vc, qkv + (size_t)i * 3 * C + 2 * C, (size_t)C * sizeof *vc);
		}
		for (int i = 0; i < n; i++) {
			const float *kb = kv[i]->mem + (size_t)l * 2 * P * C, *vb = kv[i]->mem + ((size_t)l * 2 + 1) * P * C;
			for (int hh = 0; hh < NH; hh++) {
				const float *q = qkv + (size_t)i * 3 * C + (size_t)hh * hs;
				float mx = -INFINITY, scale = (float)(1.0 / sqrt((double)hs));
				for (int u = 0; u <= pos[i]; u++) {
					float s = 0;
					for (int k = 0; k < hs; k++)
						s += q[k] * kb[(size_t)u * C + (size_t)hh * hs + k];
					sc[u] = s * scale;
					mx = sc[u] > mx ? sc[u] : mx;
				}
				double sum = 0;
				for (int u = 0; u <= pos[i]; u++)
					sum += (sc[u] = expf(sc[u] - mx));
				float *out = y + (size_t)i * C + (size_t)hh * hs;
				for (int k = 0; k < hs; k++)
					out[k] = 0;
				for (int u = 0; u <= pos[i]; u++) {
					float a = (float)(sc[u] / sum);
					for (int k = 0; k < hs; k++)
						out[k] += a * vb[(size_t)u * C + (size_t)hh * hs + k];
				}
			}
		}
		step_linear(&Ly->aproj, 4 * l + 1, n, y, tmp, ord, lora, gx, gu, gy);
		for (size_t i = 0; i < N * C; i++)
			x[i] += tmp[i];
		for (int i = 0; i < n; i++)
			layernorm_fwd(ln + (size_t)i * C, lnm, lnr, x + (size_t)i * C, Ly->ln2w, Ly->ln2b, 1, C);
		step_linear(&Ly->fc, 4 * l + 2, n, ln, h, ord, lora, gx, gu, gy);
		gelu_fwd(hg, h, N * 4 * C);
		step_linear(&Ly->mproj, 4 * l + 3, n, hg, tmp, ord, lora, gx, gu, gy);
		for (size_t i = 0; i < N * C; i++)
			x[i] += tmp[i];
	}
	if (logits) {
		for (int i = 0; i < n; i++)
			layernorm_fwd(ln + (size_t)i * C, lnm, lnr, x + (size_t)i * C, m->lnfw, m->lnfb, 1, C);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, V, C, 1.0f, ln, C, m->wte, C, 0.0f, logits, V);
	}
	trail_free(mem);
	trail_free(ord);
	return TRAIL_OK;
}
