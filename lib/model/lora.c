/*
 * LoRA on GPT-2's linear layers, in PEFT's layout: for a Conv1D layer with
 * W [in,out], lora_A.weight [r,in] and lora_B.weight [out,r], y += scale
 * (x A^T) B^T with scale alpha/r (alpha/sqrt(r) under rsLoRA). Adapters are
 * PEFT directories: adapter_config.json and adapter_model.safetensors with
 * the names PEFT saves ("base_model.model.transformer.h.0.attn.c_attn.
 * lora_A.weight"), so PEFT loads them and they load adapters PEFT wrote.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

static int fail_oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

int trail_model_has_lora(const trail_model *m)
{
	return m->lp != NULL;
}

const trail_lora_config *trail_model_lora(const trail_model *m)
{
	return m->lp ? &m->lc : NULL;
}

int trail_model_add_lora(trail_model *m, const trail_lora_config *lc, uint64_t seed,
			 trail_error *err)
{
	if (m->lp)
		return trail_error_set(err, TRAIL_EUSAGE, "the model already has LoRA");
	int b0 = m->arch->kind_bit0, kmask = ((1 << m->arch->nkinds) - 1) << b0;
	int targets = lc->targets ? lc->targets : kmask;
	if (targets & ~kmask)
		return trail_error_set(err, TRAIL_EUSAGE, "LoRA targets a layer %s does not have", m->arch->hf_class);
	if (lc->r < 1 || lc->r > m->c.n_embd || !(lc->alpha > 0))
		return trail_error_set(err, TRAIL_EUSAGE, "LoRA needs 1 <= r <= n_embd (%d), alpha > 0 and a target",
				       m->c.n_embd);
	size_t n = 0;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < m->arch->nkinds; k++)
			if (targets & (1 << (b0 + k))) {
				trail_lin *L = trail_model_lin(m, l, k);
				n += (size_t)lc->r * ((size_t)L->in + (size_t)L->out);
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
	m->lc.targets = targets;
	m->lc.arch = m->c.arch;
	m->scale = lc->rslora ? lc->alpha / sqrt(lc->r) : lc->alpha / lc->r;
	uint64_t s = seed ^ 0x10AAULL;
	size_t o = 0;
	/* arena order: per layer, per target, A then B */
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < m->arch->nkinds; k++) {
			if (!(targets & (1 << (b0 + k))))
				continue;
			trail_lin *L = trail_model_lin(m, l, k);
			size_t na = (size_t)lc->r * (size_t)L->in, nb = (size_t)L->out * (size_t)lc->r;
			L->A = m->lp + o, L->dA = m->lg + o;
			o += na;
			L->Bm = m->lp + o, L->dB = m->lg + o;
			o += nb;
			/* as PEFT: A kaiming-uniform(a = sqrt 5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
			double bound = 1.0 / sqrt((double)L->in);
			for (size_t i = 0; i < na; i++)
				L->A[i] = (float)((2 * trail_rng_unif(&s) - 1) * bound);
		}
	m->cap = 0; /* the activations need room for the LoRA hidden states */
	/* the base is frozen from here */
	trail_free(m->g);
	m->g = NULL;
	m->arch->bind(m, NULL, 1); /* every gradient view NULL */
	return TRAIL_OK;
}

/*
 * PEFT's target_modules: names matched as suffixes of module names.
 * "c_proj" is both attention's and the MLP's, so one of them alone is
 * written with its parent ("attn.c_proj"), which PEFT matches the same way.
 */
static json_t *peft_targets(int t, int arch)
{
	json_t *a = json_array();
	const trail_arch *ar = trail_arch_of(arch);
	if (ar && !ar->conv1d) { /* module names without their parent: q_proj, ..., down_proj */
		for (int k = 0; k < ar->nkinds; k++)
			if (t & (1 << (ar->kind_bit0 + k)))
				json_array_append_new(a, json_string(strrchr(ar->kinds[k], '.') + 1));
		return a;
	}
	if (t & 1)
		json_array_append_new(a, json_string("c_attn"));
	if ((t & 10) == 10)
		json_array_append_new(a, json_string("c_proj"));
	else if (t & 2)
		json_array_append_new(a, json_string("attn.c_proj"));
	else if (t & 8)
		json_array_append_new(a, json_string("mlp.c_proj"));
	if (t & 4)
		json_array_append_new(a, json_string("c_fc"));
	return a;
}

int trail_lora_targets_parse(const char *name, int *bits)
{
	/* a module name of any architecture, whole ("attn.c_proj") or its last part ("c_proj": both of GPT-2's) */
	int found = 0;
	const trail_arch *a;
	for (int i = 0; (a = trail_arch_of(i)); i++)
		for (int k = 0; k < a->nkinds; k++) {
			const char *dot = strrchr(a->kinds[k], '.');
			if (!strcmp(name, a->kinds[k]) || (dot && !strcmp(name, dot + 1)))
				*bits |= 1 << (a->kind_bit0 + k), found = 1;
		}
	return found ? TRAIL_OK : TRAIL_EUSAGE;
}

json_t *trail_lora_config_json(const trail_lora_config *lc, const char *base_name)
{
	/* the fields PEFT's LoraConfig saves, with its defaults where trail has no choice */
	json_t *j = json_pack("{s:s, s:s?, s:s, s:i, s:o, s:o, s:b, s:f, s:s, s:b, s:b, s:b, s:n, s:n, s:n, s:n,"
			      " s:{}, s:{}, s:b, s:n, s:n, s:s, s:{}, s:n}",
			      "peft_type", "LORA", "base_model_name_or_path", base_name, "task_type", "CAUSAL_LM", "r",
			      lc->r, "lora_alpha", json_real(lc->alpha), "target_modules", peft_targets(lc->targets, lc->arch),
			      "fan_in_fan_out", !trail_arch_of(lc->arch) || trail_arch_of(lc->arch)->conv1d, "lora_dropout", 0.0, "bias", "none", "use_rslora", lc->rslora,
			      "inference_mode", 1, "init_lora_weights", 1, "modules_to_save", "layers_to_transform",
			      "layers_pattern", "revision", "rank_pattern", "alpha_pattern", "use_dora", 0,
			      "auto_mapping", "megatron_config", "megatron_core", "megatron.core", "loftq_config",
			      "layer_replication");
	if (j && lc->alpha == floor(lc->alpha) && fabs(lc->alpha) < 1e15) /* PEFT writes an integer alpha */
		json_object_set_new(j, "lora_alpha", json_integer((json_int_t)lc->alpha));
	return j;
}

int trail_model_save_adapter(const trail_model *m, const char *dir, const char *base_name,
			     trail_error *err)
{
	if (!m->lp)
		return trail_error_set(err, TRAIL_EUSAGE, "the model has no LoRA");
	size_t cap = 2 * (size_t)m->nlin, n = 0;
	trail_st_tensor *t = trail_calloc(cap, sizeof *t);
	char (*names)[96] = trail_calloc(cap, sizeof *names);
	json_t *conf = NULL, *meta = json_pack("{s:s}", "format", "pt");
	char *path = NULL, *cj = NULL;
	size_t cl;
	int rc;
	if (!t || !names || !meta) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_mkdirs(dir, 0755, err)))
		goto out;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < m->arch->nkinds; k++) {
			trail_lin *L = trail_model_lin((trail_model *)m, l, k);
			if (!L->A)
				continue;
			for (int ab = 0; ab < 2; ab++, n++) {
				snprintf(names[n], sizeof names[n], "base_model.model.%s.%d.%s.lora_%c.weight", m->arch->blocks, l,
					 m->arch->kinds[k], ab ? 'B' : 'A');
				t[n] = (trail_st_tensor){.name = names[n], .ndim = 2, .data = ab ? L->Bm : L->A};
				t[n].shape[0] = ab ? L->out : m->lc.r;
				t[n].shape[1] = ab ? m->lc.r : L->in;
			}
		}
	if (!(path = trail_path(dir, "adapter_model.safetensors"))) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_st_write(path, t, n, meta, err)))
		goto out;
	trail_free(path);
	conf = trail_lora_config_json(&m->lc, base_name);
	if (!conf || (rc = trail_jcs(conf, &cj, &cl, err)) || !(path = trail_path(dir, "adapter_config.json"))) {
		rc = rc ? rc : fail_oom(err);
		goto out;
	}
	cj[cl] = '\n';
	rc = trail_write_atomic(path, cj, cl + 1, 0644, err);
out:
	json_decref(conf);
	json_decref(meta);
	trail_free(cj);
	trail_free(path);
	trail_free(t);
	trail_free(names);
	return rc;
}

/* Strip PEFT's adapter name from a key: "...lora_A.default.weight" -> "...lora_A.weight". */
static int adapter_key(const char *key, char *out, size_t cap)
{
	const char *a = strstr(key, ".lora_A."), *b = strstr(key, ".lora_B.");
	const char *at = a ? a : b;
	if (!at)
		return -1;
	at += 8;
	const char *w = strrchr(key, '.');
	if (!w || strcmp(w, ".weight"))
		return -1;
	snprintf(out, cap, "%.*s%s", (int)(at - key), key, "weight");
	return w == at - 1 ? 0 : 1; /* 0: already plain */
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
	json_t *fifo = json_object_get(cj, "fan_in_fan_out");
	if (m->arch->conv1d && fifo && !json_is_true(fifo)) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "fan_in_fan_out must be true for GPT-2's Conv1D layers");
		goto out;
	}
	if (!m->arch->conv1d && json_is_true(fifo)) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "fan_in_fan_out must be false for %s's linear layers",
				    m->arch->hf_class);
		goto out;
	}
	const char *bias = json_string_value(json_object_get(cj, "bias"));
	if ((bias && strcmp(bias, "none")) || json_is_true(json_object_get(cj, "use_dora")) ||
	    json_object_size(json_object_get(cj, "rank_pattern")) || json_object_size(json_object_get(cj, "alpha_pattern"))) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "unsupported adapter options (bias, DoRA, rank or alpha patterns)");
		goto out;
	}
	trail_lora_config lc = {.r = (int)json_integer_value(r), .alpha = json_number_value(al),
				.rslora = json_is_true(json_object_get(cj, "use_rslora")), .arch = m->c.arch};
	/* which layers: the tensors decide (target_modules may be a regex in PEFT) */
	size_t count = trail_st_count(st);
	for (size_t i = 0; i < count; i++) {
		char key[160];
		const char *nm = trail_st_name(st, i);
		int found = 0;
		if (adapter_key(nm, key, sizeof key) < 0) {
			rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "unknown tensor %s (not a LoRA weight)", nm);
			goto out;
		}
		for (int k = 0; k < m->arch->nkinds && !found; k++) {
			char pfx[64];
			int l, len = 0;
			snprintf(pfx, sizeof pfx, ".%s.lora_", m->arch->kinds[k]);
			char pat[96];
			snprintf(pat, sizeof pat, "base_model.model.%s.%%d%%n", m->arch->blocks);
			if (sscanf(key, pat, &l, &len) == 1 && l >= 0 &&
			    l < m->c.n_layer && !strncmp(key + len, pfx, strlen(pfx)))
				found = 1, lc.targets |= 1 << (m->arch->kind_bit0 + k);
		}
		if (!found) {
			rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "tensor %s matches no layer of this base model", nm);
			goto out;
		}
	}
	if (!lc.targets) {
		rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "no LoRA tensors");
		goto out;
	}
	if ((rc = trail_model_add_lora(m, &lc, 0, err))) {
		trail_error_at(err, TRAIL_EDATA, cp, 0, "%s", err ? err->msg : "bad LoRA config");
		rc = TRAIL_EDATA;
		goto out;
	}
	/* every targeted layer needs both matrices, under either key form */
	size_t expect = 0;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < m->arch->nkinds; k++) {
			trail_lin *L = trail_model_lin(m, l, k);
			if (!L->A)
				continue;
			for (int ab = 0; ab < 2; ab++, expect++) {
				char nm[160];
				int64_t shape[2] = {ab ? L->out : lc.r, ab ? lc.r : L->in};
				snprintf(nm, sizeof nm, "base_model.model.%s.%d.%s.lora_%c.weight", m->arch->blocks, l, m->arch->kinds[k],
					 ab ? 'B' : 'A');
				if (!trail_st_has(st, nm))
					snprintf(nm, sizeof nm, "base_model.model.%s.%d.%s.lora_%c.default.weight", m->arch->blocks, l,
						 m->arch->kinds[k], ab ? 'B' : 'A');
				if ((rc = trail_st_read_f32(st, nm, shape, 2, ab ? L->Bm : L->A, err)))
					goto out;
			}
		}
	if (count != expect)
		rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "%zu tensors, expected %zu: some layers lack lora_A or lora_B",
				    count, expect);
out:
	if (rc && m->lp) { /* leave the model as it was */
		trail_free(m->lp);
		trail_free(m->lg);
		m->lp = m->lg = NULL;
		m->nlp = 0;
		m->cap = 0;
		for (int l = 0; l < m->c.n_layer; l++)
			for (int k = 0; k < m->arch->nkinds; k++) {
				trail_lin *L = trail_model_lin(m, l, k);
				L->A = L->Bm = L->dA = L->dB = L->u = NULL;
			}
	}
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
		for (int k = 0; k < m->arch->nkinds; k++) {
			trail_lin *L = trail_model_lin(m, l, k);
			if (!L->A)
				continue;
			/* W [in,out] += scale A^T [in,r] B^T [r,out];  or W [out,in] += scale B A */
			if (L->wt)
				trail_k_sgemm(m->naive, 0, 0, L->out, L->in, m->lc.r, (float)m->scale, L->Bm, m->lc.r, L->A,
					      L->in, 1.0f, L->W, L->in);
			else
				trail_k_sgemm(m->naive, 1, 1, L->in, L->out, m->lc.r, (float)m->scale, L->A, L->in, L->Bm,
					      m->lc.r, 1.0f, L->W, L->out);
			L->A = L->Bm = L->dA = L->dB = L->u = NULL;
		}
	trail_free(m->lp);
	trail_free(m->lg);
	m->lp = m->lg = NULL;
	m->nlp = 0;
	m->cap = 0;
	return TRAIL_OK;
}

int trail_lora_spec_parse(const char *spec, trail_lora_config *lc, trail_error *err)
{
	char *s = trail_strdup(spec), *save = NULL;
	int in_targets = 0, rc = TRAIL_OK;
	*lc = (trail_lora_config){.r = 8, .alpha = 16};
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (char *tok = strtok_r(s, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '='), *end = NULL;
		const char *t = tok;
		if (eq) {
			*eq = 0;
			t = eq + 1;
			in_targets = !strcmp(tok, "targets");
			if (!strcmp(tok, "r")) {
				long v = strtol(t, &end, 10);
				lc->r = *end || v < 1 || v > 65536 ? -1 : (int)v;
			} else if (!strcmp(tok, "alpha")) {
				lc->alpha = strtod(t, &end);
			} else if (!strcmp(tok, "rslora")) {
				lc->rslora = (int)strtol(t, &end, 10);
			} else if (!in_targets) {
				rc = trail_error_set(err, TRAIL_EUSAGE, "--lora: unknown key '%s' (r, alpha, targets, rslora)", tok);
				break;
			}
			if (end && (*end || lc->r < 1 || !(lc->alpha > 0))) {
				rc = trail_error_set(err, TRAIL_EUSAGE, "--lora: bad value '%s' for %s", t, tok);
				break;
			}
		}
		if (in_targets && trail_lora_targets_parse(t, &lc->targets))
			rc = trail_error_set(err, TRAIL_EUSAGE, "--lora: unknown target '%s' (c_attn, c_proj, attn.c_proj, c_fc, mlp.c_proj; q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", t);
	}
	trail_free(s);
	return rc;
}
