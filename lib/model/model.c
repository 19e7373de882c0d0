/*
 * The model, whatever its architecture: the table of architectures, the
 * parameter and gradient arenas, checkpoints in Hugging Face's layout, the
 * token checks and the loss around an architecture's forward and backward,
 * and the linear layers as attribution sees them. An architecture is one
 * file behind trail_arch (model_int.h) and one line in `archs` below.
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

/* The architectures, indexed by TRAIL_ARCH_*. */
extern const trail_arch trail_arch_gpt2;                                         /* gpt2.c */
extern const trail_arch trail_arch_llama, trail_arch_qwen2, trail_arch_mistral; /* llama.c */
static const trail_arch *const archs[] = {&trail_arch_gpt2, &trail_arch_llama, &trail_arch_qwen2, &trail_arch_mistral};
#define NARCHS (sizeof archs / sizeof *archs)

static int fail_oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

const trail_arch *trail_arch_of(int arch)
{
	return arch >= 0 && (size_t)arch < NARCHS ? archs[arch] : NULL;
}

static const trail_arch *arch_of(const trail_model_cfg *c)
{
	return trail_arch_of(c->arch);
}

/* ---- configuration ------------------------------------------------------------------ */

int trail_model_config_parse(const json_t *j, trail_model_cfg *c, trail_error *err)
{
	if (!json_is_object(j))
		return trail_error_set(err, TRAIL_EDATA, "config: not a JSON object");
	const char *type = json_string_value(json_object_get(j, "model_type"));
	const char *cls = json_string_value(json_array_get(json_object_get(j, "architectures"), 0));
	size_t a = 0;
	if (type || cls) {
		for (a = 0; a < NARCHS; a++)
			if ((!type || !strcmp(type, archs[a]->model_type)) && (!cls || !strcmp(cls, archs[a]->hf_class)))
				break;
		if (a == NARCHS) {
			char known[256] = "";
			for (size_t k = 0; k < NARCHS; k++)
				snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", k ? ", " : "",
					 archs[k]->hf_class);
			return trail_error_set(err, TRAIL_EDATA, "config: architecture %s%s%s%s is not built in (built in: %s)",
					       cls ? cls : "", cls && type ? " (" : "", type ? type : "", cls && type ? ")" : "",
					       known);
		}
	}
	*c = (trail_model_cfg){0};
	int rc = archs[a]->config_parse(j, c, err);
	if (!rc)
		c->arch = (int)a;
	return rc;
}

json_t *trail_model_config_json(const trail_model_cfg *c)
{
	const trail_arch *a = arch_of(c);
	return a ? a->config_json(c) : NULL;
}

size_t trail_model_num_params(const trail_model_cfg *c)
{
	const trail_arch *a = arch_of(c);
	return a ? a->num_params(c) : 0;
}

/* ---- the arenas ---------------------------------------------------------------------- */

static int alloc_model(const trail_model_cfg *c, trail_model **out, trail_error *err)
{
	const trail_arch *a = arch_of(c);
	if (!a)
		return trail_error_set(err, TRAIL_EUSAGE, "no architecture %d", c->arch);
	trail_model *m = trail_calloc(1, sizeof *m);
	if (!m)
		return fail_oom(err);
	m->c = *c;
	m->arch = a;
	m->np = a->num_params(c);
	m->p = trail_calloc(m->np, sizeof *m->p);
	if (!m->p || a->new_state(m)) {
		trail_model_free(m);
		return fail_oom(err);
	}
	a->bind(m, m->p, 0);
	*out = m;
	return TRAIL_OK;
}

int trail_model_need_grads(trail_model *m, trail_error *err)
{
	if (m->g || m->lp)
		return TRAIL_OK;
	if (!(m->g = trail_calloc(m->np, sizeof *m->g)))
		return fail_oom(err);
	m->arch->bind(m, m->g, 1);
	return TRAIL_OK;
}

int trail_model_init(const trail_model_cfg *c, uint64_t seed, trail_model **out, trail_error *err)
{
	trail_model *m;
	int rc = alloc_model(c, &m, err);
	if (rc)
		return rc;
	m->arch->init(m, seed);
	*out = m;
	return TRAIL_OK;
}

void trail_model_free(trail_model *m)
{
	if (!m)
		return;
	if (m->arch)
		m->arch->free_state(m);
	trail_free(m->p);
	trail_free(m->g);
	trail_free(m->lp);
	trail_free(m->lg);
	trail_free(m->lin);
	trail_free(m->acts);
	trail_free(m->tok);
	trail_free(m->tgt);
	trail_free(m);
}

const trail_model_cfg *trail_model_config(const trail_model *m)
{
	return &m->c;
}

void trail_model_set_reference(trail_model *m, int on)
{
	m->naive = on;
}

/* ---- saving and loading ------------------------------------------------------------ */

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
	size_t cap = m->arch->num_tensors(&m->c);
	trail_param *v = trail_calloc(cap, sizeof *v);
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
	size_t n = m->arch->tensors(m, v);
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
	conf = m->arch->config_json(&m->c);
	rc = write_json(dir, "config.json", conf, err);
out:
	json_decref(conf);
	json_decref(meta);
	trail_free(path);
	trail_free(v);
	trail_free(t);
	return rc;
}

/* base's directory, or the directory of the file base names. */
static char *dir_of(const char *base, int isdir)
{
	if (isdir)
		return trail_strdup(base);
	const char *sl = strrchr(base, '/');
	char *dir = sl ? trail_strdup(base) : trail_strdup(".");
	if (dir && sl)
		dir[sl - base ? sl - base : 1] = 0;
	return dir;
}

/* A directory's weights: model.safetensors, else model.safetensors.index.json (then *sharded). */
static char *weights_of(const char *dir, int *sharded)
{
	struct stat sb;
	char *wp = trail_path(dir, "model.safetensors");
	*sharded = 0;
	if (wp && stat(wp, &sb)) {
		char *ix = trail_path(dir, "model.safetensors.index.json");
		if (ix && !stat(ix, &sb)) {
			trail_free(wp);
			*sharded = 1;
			return ix;
		}
		trail_free(ix);
	}
	return wp;
}

int trail_base_open(const char *base, trail_model_cfg *c, trail_st **st, trail_error *err)
{
	struct stat sb;
	char *dir = NULL, *cp = NULL, *wp = NULL;
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	int rc, sharded;
	*st = NULL;
	if (stat(base, &sb))
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", base);
	if (!S_ISDIR(sb.st_mode) && trail_gguf_is(base)) { /* the configuration is in the file */
		if ((rc = trail_st_open(base, st, err)))
			return rc;
		if ((rc = trail_gguf_config(trail_st_gguf(*st), c, err))) {
			trail_st_free(*st);
			*st = NULL;
		}
		return rc;
	}
	/* a directory, or its model.safetensors (or index) with config.json beside it */
	dir = dir_of(base, S_ISDIR(sb.st_mode));
	wp = !dir ? NULL : S_ISDIR(sb.st_mode) ? weights_of(dir, &sharded) : trail_strdup(base);
	if (!dir || !wp || !(cp = trail_path(dir, "config.json"))) {
		rc = fail_oom(err);
		goto out;
	}
	if ((rc = trail_read_file(cp, 1 << 20, &cb, &cl, err)) || (rc = trail_json_parse(cb, cl, cp, &cj, err)))
		goto out;
	if ((rc = trail_model_config_parse(cj, c, err))) {
		trail_error_at(err, rc, cp, 0, "%s", err ? err->msg : "bad config");
		goto out;
	}
	rc = trail_st_open(wp, st, err);
out:
	json_decref(cj);
	trail_free(cb);
	trail_free(cp);
	trail_free(wp);
	trail_free(dir);
	return rc;
}

static int by_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The digest of "DIGEST NAME\n" for each shard of an index, in name order. */
static int shards_digest(const char *index, char out[72], trail_error *err)
{
	void *buf = NULL;
	size_t len, n = 0;
	json_t *ix = NULL, *v;
	const char **names = NULL, *k;
	char *dir = dir_of(index, 0);
	trail_buf text = {0};
	int rc;
	if (!dir)
		return fail_oom(err);
	if ((rc = trail_read_file(index, 64u << 20, &buf, &len, err)) || (rc = trail_json_parse(buf, len, index, &ix, err)))
		goto out;
	json_t *wm = json_object_get(ix, "weight_map");
	if (!(names = trail_calloc(json_object_size(wm) + 1, sizeof *names))) {
		rc = fail_oom(err);
		goto out;
	}
	json_object_foreach(wm, k, v)
		if (json_is_string(v))
			names[n++] = json_string_value(v);
	qsort(names, n, sizeof *names, by_str);
	for (size_t i = 0; i < n; i++) {
		if (i && !strcmp(names[i], names[i - 1]))
			continue;
		char *p = trail_path(dir, names[i]), dg[72];
		trail_map mp;
		if (!p) {
			rc = fail_oom(err);
			goto out;
		}
		rc = trail_map_file(p, &mp, err);
		trail_free(p);
		if (rc)
			goto out;
		trail_digest_str(mp.data ? mp.data : "", mp.len, dg);
		trail_unmap(&mp);
		if (trail_buf_put(&text, dg, strlen(dg)) || trail_buf_put(&text, " ", 1) ||
		    trail_buf_put(&text, names[i], strlen(names[i])) || trail_buf_put(&text, "\n", 1)) {
			rc = fail_oom(err);
			goto out;
		}
	}
	trail_digest_str(text.p ? text.p : "", text.n, out);
out:
	trail_buf_release(&text);
	trail_free(names);
	json_decref(ix);
	trail_free(buf);
	trail_free(dir);
	return rc;
}

int trail_base_digest(const char *base, char out[72], trail_error *err)
{
	struct stat sb;
	int sharded = 0, rc;
	if (stat(base, &sb))
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", base);
	char *wp = S_ISDIR(sb.st_mode) ? weights_of(base, &sharded) : trail_strdup(base);
	size_t n = wp ? strlen(wp) : 0;
	if (!wp)
		return fail_oom(err);
	if (sharded || (n > 11 && !strcmp(wp + n - 11, ".index.json"))) {
		rc = shards_digest(wp, out, err);
	} else {
		trail_map mp;
		if (!(rc = trail_map_file(wp, &mp, err))) {
			trail_digest_str(mp.data ? mp.data : "", mp.len, out);
			trail_unmap(&mp);
		}
	}
	trail_free(wp);
	return rc;
}

int trail_model_load(const char *arg, trail_model **out, trail_error *err)
{
	trail_st *st = NULL;
	trail_model *m = NULL;
	trail_param *v = NULL;
	trail_model_cfg c;
	int rc;
	*out = NULL;
	if ((rc = trail_base_open(arg, &c, &st, err)) || (rc = alloc_model(&c, &m, err)))
		goto out;
	if (!(v = trail_calloc(m->arch->num_tensors(&c), sizeof *v))) {
		rc = fail_oom(err);
		goto out;
	}
	size_t n = m->arch->tensors(m, v);
	/* Hugging Face's checkpoints may put the architecture's prefix on every name */
	char first[96];
	snprintf(first, sizeof first, "%s%s", m->arch->prefix, n ? v[0].name : "");
	const char *prefix = *m->arch->prefix && trail_st_has(st, first) ? m->arch->prefix : "";
	size_t pl = strlen(prefix);
	for (size_t i = 0; i < n; i++) {
		char full[96];
		snprintf(full, sizeof full, "%s%s", prefix, v[i].name);
		if ((rc = trail_st_read_f32(st, full, v[i].shape, v[i].ndim, v[i].data, err)))
			goto out;
	}
	/* anything else must be a tensor that holds no parameter */
	for (size_t i = 0; i < trail_st_count(st); i++) {
		const char *nm = trail_st_name(st, i), *bare = strncmp(nm, prefix, pl) ? nm : nm + pl;
		int known = m->arch->extra_tensor(nm, bare);
		for (size_t k = 0; !known && k < n; k++)
			known = !strcmp(bare, v[k].name);
		if (!known) {
			rc = trail_error_at(err, TRAIL_EDATA, arg, 0, "unknown tensor %s", nm);
			goto out;
		}
	}
	*out = m;
	m = NULL;
out:
	trail_model_free(m);
	trail_st_free(st);
	trail_free(v);
	return rc;
}

/* ---- GGUF ----------------------------------------------------------------------------- */

int trail_gguf_config(const trail_gguf *g, trail_model_cfg *c, trail_error *err)
{
	json_t *j;
	int rc = trail_gguf_config_json(g, &j, err);
	if (!rc && (rc = trail_model_config_parse(j, c, err)))
		trail_error_at(err, rc, trail_gguf_path(g), 0, "%s", err ? err->msg : "bad metadata");
	json_decref(j);
	return rc;
}

int trail_gguf_write(const char *path, const trail_model *m, const trail_tokenizer *tk, int type, trail_error *err)
{
	trail_tok_arrays a = {0};
	size_t nt = m->arch->num_tensors(&m->c);
	trail_param *v = trail_calloc(nt, sizeof *v);
	int rc = v ? TRAIL_OK : fail_oom(err);
	if (!rc && tk && m->c.arch != TRAIL_ARCH_GPT2)
		rc = trail_hf_to_arrays(tk, (size_t)m->c.vocab_size, &a, err);
	if (!rc)
		rc = trail_gguf_write_tensors(path, &m->c, v, m->arch->tensors(m, v), tk ? &a : NULL, type, err);
	trail_tok_arrays_release(&a);
	trail_free(v);
	return rc;
}

int trail_gguf_write_adapter(const char *path, const trail_model *m, int type, trail_error *err)
{
	if (!m->lp)
		return trail_error_set(err, TRAIL_EUSAGE, "the model has no LoRA adapter");
	trail_gguf_lora *l = trail_calloc((size_t)m->nlin, sizeof *l);
	if (!l)
		return fail_oom(err);
	size_t n = 0;
	for (int i = 0; i < m->c.n_layer; i++)
		for (int k = 0; k < m->arch->nkinds; k++) {
			const trail_lin *L = trail_model_lin((trail_model *)m, i, k);
			if (!L->A)
				continue;
			snprintf(l[n].name, sizeof l[n].name, "%s.%d.%s.weight", m->arch->blocks, i, m->arch->kinds[k]);
			l[n].A = L->A;
			l[n].B = L->Bm;
			l[n].r = m->lc.r;
			l[n].in = L->in;
			l[n].out = L->out;
			n++;
		}
	/* llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt r is alpha sqrt r over r */
	double alpha = m->lc.rslora ? m->lc.alpha * sqrt((double)m->lc.r) : m->lc.alpha;
	int rc = trail_gguf_write_lora(path, &m->c, l, n, alpha, type, err);
	trail_free(l);
	return rc;
}

/* ---- forward and backward -------------------------------------------------------------- */

int trail_model_forward(trail_model *m, const int32_t *tokens, const int32_t *targets, int B,
			int T, float *loss, trail_error *err)
{
	int V = m->c.vocab_size, rc;
	if (B < 1 || T < 1 || T > m->c.n_positions || (size_t)B * (size_t)T > (size_t)1 << 30)
		return trail_error_set(err, TRAIL_EUSAGE, "sequence length %d outside 1..%d", T, m->c.n_positions);
	int N = B * T;
	for (int i = 0; i < N; i++) {
		if (tokens[i] < 0 || tokens[i] >= V)
			return trail_error_set(err, TRAIL_EDATA, "token %d outside the vocabulary (%d)", tokens[i], V);
		if (targets && targets[i] >= V)
			return trail_error_set(err, TRAIL_EDATA, "target %d outside the vocabulary (%d)", targets[i], V);
	}
	if ((rc = m->arch->acts(m, B, T, err)))
		return rc;
	for (int i = 0; i < N; i++) {
		m->tok[i] = tokens[i];
		m->tgt[i] = targets && targets[i] >= 0 ? targets[i] : -1;
	}
	m->arch->forward(m);
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
	/* what AdamW left zero (zero_grads) needs no second pass */
	if (m->g && !(m->g_zero && !m->lp))
		trail_k_zero(m->g, m->np);
	if (m->lg && !m->g_zero)
		trail_k_zero(m->lg, m->nlp);
	m->g_zero = 1;
}

int trail_model_backward(trail_model *m, trail_error *err)
{
	int rc;
	if (!m->cap)
		return trail_error_set(err, TRAIL_EUSAGE, "backward before forward");
	if (!m->g && !m->lp) {
		if ((rc = trail_model_need_grads(m, err)))
			return rc;
		trail_model_zero_grad(m);
	}
	/* the mean loss: dlogits = (softmax - onehot) / counted */
	trail_k_xent_bwd(m->dlogits, m->logits, m->tgt, m->B * m->T, m->c.vocab_size,
			 m->counted ? 1.0 / (double)m->counted : 0);
	m->g_zero = 0;
	m->arch->backward(m);
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
	if (!m->lp && trail_model_need_grads(m, NULL))
		return NULL;
	m->g_zero = 0; /* the caller may write them */
	return m->lp ? m->lg : m->g;
}

/* ---- attribution ------------------------------------------------------------------- */

void trail_model_keep_linear_io(trail_model *m, int on)
{
	if (m->keep_io == !!on)
		return;
	m->keep_io = !!on;
	if (on && (!m->cap || !m->nlin || !m->lin[0]->keep_room)) {
		m->cap = 0; /* reallocate with room for dY */
		return;
	}
	/* switch the copies on or off in the arena as it is: no new pages to fault in */
	for (int i = 0; i < m->nlin; i++)
		m->lin[i]->keep_dy = on ? m->lin[i]->keep_room : NULL;
}

int trail_model_num_linear(const trail_model *m)
{
	int n = 0;
	for (int i = 0; i < m->nlin; i++)
		n += !m->lp || m->lin[i]->A;
	return n;
}

/* The i-th trained linear layer (LoRA-targeted ones when the model has LoRA). */
static trail_lin *trained(const trail_model *m, int i)
{
	for (int k = 0; k < m->nlin; k++)
		if ((!m->lp || m->lin[k]->A) && i-- == 0)
			return m->lin[k];
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

int trail_model_linear_target(const trail_model *m, int i)
{
	trail_lin *L = i >= 0 ? trained(m, i) : NULL;
	for (int k = 0; L && k < m->nlin; k++)
		if (m->lin[k] == L)
			return 1 << (m->arch->kind_bit0 + k % m->arch->nkinds);
	return 0;
}
