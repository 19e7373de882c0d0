/*
 * Batched inference for serving: a KV cache per sequence, and one step over
 * rows of many sequences and adapters — each base weight one sgemm over all
 * rows, each adapter's low-rank product over its own rows, gathered (the
 * CPU form of Punica's SGMV).
 */
#include <math.h>
#include <string.h>

#include <cblas.h>

#include "infer.h"
#include "json.h"
#include "safetensors.h"
#include "util.h"

typedef struct ilin {
	float *W, *b; /* [in,out], [out] */
	int in, out;
} ilin;

typedef struct ilayer {
	float *ln1w, *ln1b, *ln2w, *ln2b;
	ilin lin[4]; /* c_attn, attn.c_proj, c_fc, mlp.c_proj */
} ilayer;

struct trail_infer {
	trail_gpt2_config c;
	float *mem, *wte, *wpe, *lnfw, *lnfb;
	ilayer *L;
};

struct trail_lora_w {
	int r, nl;
	double scale;
	float **A, **B; /* [n_layer*4], NULL where the layer has no LoRA */
	float *mem;
	size_t bytes;
};

struct trail_kvc {
	float *mem; /* [L][2][P][C] */
};

static const char *const MOD[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

int trail_infer_load(const char *dir, trail_infer **out, trail_error *err)
{
	char *cp = trail_path(dir, "config.json"), *wp = trail_path(dir, "model.safetensors");
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	trail_st *st = NULL;
	trail_infer *m = NULL;
	int rc;
	*out = NULL;
	if (!cp || !wp || !(m = trail_calloc(1, sizeof *m))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_read_file(cp, 1 << 20, &cb, &cl, err)) || (rc = trail_json_parse(cb, cl, cp, &cj, err)) ||
	    (rc = trail_gpt2_config_parse(cj, &m->c, err)) || (rc = trail_st_open(wp, &st, err)))
		goto out;
	size_t C = (size_t)m->c.n_embd, n = trail_gpt2_num_params(&m->c);
	if (!(m->mem = trail_malloc(n * sizeof *m->mem)) || !(m->L = trail_calloc((size_t)m->c.n_layer, sizeof *m->L))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	const char *pre = trail_st_has(st, "transformer.wte.weight") ? "transformer." : "";
	float *p = m->mem;
	char nm[128];
#define READ(dst, name, d0, d1, nd)                                                         \
	do {                                                                                \
		int64_t sh_[2] = {(int64_t)(d0), (int64_t)(d1)};                            \
		snprintf(nm, sizeof nm, "%s%s", pre, name);                                 \
		(dst) = p;                                                                  \
		p += (size_t)(d0) * ((nd) == 2 ? (size_t)(d1) : 1);                         \
		if ((rc = trail_st_read_f32(st, nm, sh_, (nd), (dst), err)))                \
			goto out;                                                           \
	} while (0)
	READ(m->wte, "wte.weight", m->c.vocab_size, C, 2);
	READ(m->wpe, "wpe.weight", m->c.n_positions, C, 2);
	for (int l = 0; l < m->c.n_layer; l++) {
		ilayer *y = &m->L[l];
		int io[4][2] = {{(int)C, 3 * (int)C}, {(int)C, (int)C}, {(int)C, 4 * (int)C}, {4 * (int)C, (int)C}};
		char b[96];
		snprintf(b, sizeof b, "h.%d.ln_1.weight", l);
		READ(y->ln1w, b, C, 0, 1);
		snprintf(b, sizeof b, "h.%d.ln_1.bias", l);
		READ(y->ln1b, b, C, 0, 1);
		snprintf(b, sizeof b, "h.%d.ln_2.weight", l);
		READ(y->ln2w, b, C, 0, 1);
		snprintf(b, sizeof b, "h.%d.ln_2.bias", l);
		READ(y->ln2b, b, C, 0, 1);
		for (int k = 0; k < 4; k++) {
			y->lin[k].in = io[k][0];
			y->lin[k].out = io[k][1];
			snprintf(b, sizeof b, "h.%d.%s.weight", l, MOD[k]);
			READ(y->lin[k].W, b, io[k][0], io[k][1], 2);
			snprintf(b, sizeof b, "h.%d.%s.bias", l, MOD[k]);
			READ(y->lin[k].b, b, io[k][1], 0, 1);
		}
	}
	READ(m->lnfw, "ln_f.weight", C, 0, 1);
	READ(m->lnfb, "ln_f.bias", C, 0, 1);
#undef READ
	*out = m;
	m = NULL;
out:
	trail_infer_free(m);
	trail_st_free(st);
	json_decref(cj);
	trail_free(cb);
	trail_free(cp);
	trail_free(wp);
	return rc;
}

void trail_infer_free(trail_infer *m)
{
	if (!m)
		return;
	trail_free(m->mem);
	trail_free(m->L);
	trail_free(m);
}

const trail_gpt2_config *trail_infer_config(const trail_infer *m)
{
	return &m->c;
}

static size_t kv_bytes(const trail_infer *m)
{
	return (size_t)m->c.n_layer * 2 * (size_t)m->c.n_positions * (size_t)m->c.n_embd * sizeof(float);
}

trail_kvc *trail_kvc_new(const trail_infer *m)
{
	trail_kvc *kv = trail_calloc(1, sizeof *kv);
	if (kv && !(kv->mem = trail_malloc(kv_bytes(m)))) {
		trail_free(kv);
		kv = NULL;
	}
	return kv;
}

void trail_kvc_free(trail_kvc *kv)
{
	if (kv) {
		trail_free(kv->mem);
		trail_free(kv);
	}
}

void trail_lora_w_free(trail_lora_w *w)
{
	if (!w)
		return;
	trail_free(w->A);
	trail_free(w->B);
	trail_free(w->mem);
	trail_free(w);
}

size_t trail_lora_w_bytes(const trail_lora_w *w)
{
	return w->bytes;
}

/* PEFT's name for a LoRA tensor, with or without the adapter name "default". */
static int tensor_name(const trail_st *st, int l, int k, char ab, char *out, size_t n)
{
	snprintf(out, n, "base_model.model.transformer.h.%d.%s.lora_%c.weight", l, MOD[k], ab);
	if (trail_st_has(st, out))
		return 1;
	snprintf(out, n, "base_model.model.transformer.h.%d.%s.lora_%c.default.weight", l, MOD[k], ab);
	return trail_st_has(st, out);
}

int trail_lora_w_load(const trail_infer *base, const char *dir, trail_lora_w **out, trail_error *err)
{
	const trail_gpt2_config *c = &base->c;
	char *cp = trail_path(dir, "adapter_config.json"), *wp = trail_path(dir, "adapter_model.safetensors");
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	trail_st *st = NULL;
	trail_lora_w *w = NULL;
	int rc, C = c->n_embd, nl = 4 * c->n_layer;
	int io[4][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
	*out = NULL;
	if (!cp || !wp) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_read_file(cp, 1 << 20, &cb, &cl, err)) || (rc = trail_json_parse(cb, cl, cp, &cj, err)) ||
	    (rc = trail_st_open(wp, &st, err)))
		goto out;
	json_t *r = json_object_get(cj, "r"), *al = json_object_get(cj, "lora_alpha");
	const char *pt = json_string_value(json_object_get(cj, "peft_type"));
	if (!pt || strcmp(pt, "LORA") || !json_is_integer(r) || json_integer_value(r) < 1 || !json_is_number(al)) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "not a LoRA adapter config (peft_type, r, lora_alpha)");
		goto out;
	}
	int R = (int)json_integer_value(r);
	size_t total = 0, found = 0;
	char nm[160];
	for (int i = 0; i < nl; i++)
		if (tensor_name(st, i / 4, i % 4, 'A', nm, sizeof nm))
			total += (size_t)R * (size_t)(io[i % 4][0] + io[i % 4][1]);
	if (!(w = trail_calloc(1, sizeof *w)) || !(w->A = trail_calloc((size_t)nl, sizeof *w->A)) ||
	    !(w->B = trail_calloc((size_t)nl, sizeof *w->B)) || !(w->mem = trail_malloc((total ? total : 1) * sizeof *w->mem))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	w->r = R;
	w->nl = nl;
	w->scale = json_is_true(json_object_get(cj, "use_rslora")) ? json_number_value(al) / sqrt(R)
								     : json_number_value(al) / R;
	w->bytes = total * sizeof *w->mem;
	float *p = w->mem;
	for (int i = 0; i < nl; i++) {
		if (!tensor_name(st, i / 4, i % 4, 'A', nm, sizeof nm))
			continue;
		int64_t sa[2] = {R, io[i % 4][0]}, sb[2] = {io[i % 4][1], R};
		w->A[i] = p;
		p += (size_t)R * (size_t)io[i % 4][0];
		w->B[i] = p;
		p += (size_t)R * (size_t)io[i % 4][1];
		if ((rc = trail_st_read_f32(st, nm, sa, 2, w->A[i], err)))
			goto out;
		if (!tensor_name(st, i / 4, i % 4, 'B', nm, sizeof nm)) {
			rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "lora_A without lora_B for h.%d.%s", i / 4, MOD[i % 4]);
			goto out;
		}
		if ((rc = trail_st_read_f32(st, nm, sb, 2, w->B[i], err)))
			goto out;
		found += 2;
	}
	if (!found || trail_st_count(st) != found) {
		rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "%zu tensors, %zu of them LoRA tensors for this base model",
				    trail_st_count(st), found);
		goto out;
	}
	*out = w;
	w = NULL;
out:
	trail_lora_w_free(w);
	trail_st_free(st);
	json_decref(cj);
	trail_free(cb);
	trail_free(cp);
	trail_free(wp);
	return rc;
}

/*
 * Row blocks of a fixed height: BLAS libraries pick kernels by matrix size,
 * so a row's result could change with how many rows share the call. In
 * blocks of RB rows (the last zero-padded) every row is computed the same
 * way whatever the batch: a request's output does not depend on its company.
 *   y [n,N] = alpha x [n,K] op(W) + beta y;  W [K,N], or [N,K] when transW
 */
enum { RB = 16 };

static void bgemm(int n, int N, int K, float alpha, const float *x, const float *W, int transW, float beta,
		  float *y, float *px, float *py)
{
	int ldw = transW ? K : N;
	for (int r = 0; r < n; r += RB) {
		int k = n - r < RB ? n - r : RB;
		const float *xa = x + (size_t)r * K;
		float *ya = y + (size_t)r * N;
		if (k < RB) {
			memset(px, 0, sizeof *px * RB * (size_t)K);
			memcpy(px, xa, sizeof *px * (size_t)k * K);
			memset(py, 0, sizeof *py * RB * (size_t)N);
			if (beta != 0)
				memcpy(py, ya, sizeof *py * (size_t)k * N);
			xa = px;
			ya = py;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, transW ? CblasTrans : CblasNoTrans, RB, N, K, alpha, xa, K, W, ldw,
			    beta, ya, N);
		if (k < RB)
			memcpy(y + (size_t)r * N, py, sizeof *py * (size_t)k * N);
	}
}

typedef struct work {
	float *gx, *gu, *gy, *px, *py;
} work;

/* y [n,out] = x W + b, then each adapter's scale (x A^T) B^T over its rows (gathered). */
static void step_linear(const ilin *L, int li, int n, const float *x, float *y, const int *ord,
			const trail_lora_w *const *lora, const work *w)
{
	bgemm(n, L->out, L->in, 1.0f, x, L->W, 0, 0.0f, y, w->px, w->py);
	for (int i = 0; i < n; i++)
		for (int o = 0; o < L->out; o++)
			y[(size_t)i * L->out + o] += L->b[o];
	for (int s = 0; s < n;) { /* ord groups rows by adapter */
		const trail_lora_w *a = lora[ord[s]];
		int e = s;
		while (e < n && lora[ord[e]] == a)
			e++;
		if (a && a->A[li]) {
			int k = e - s, r = a->r;
			for (int j = 0; j < k; j++)
				memcpy(w->gx + (size_t)j * L->in, x + (size_t)ord[s + j] * L->in, (size_t)L->in * sizeof *x);
			bgemm(k, r, L->in, 1.0f, w->gx, a->A[li], 1, 0.0f, w->gu, w->px, w->py);
			bgemm(k, L->out, r, (float)a->scale, w->gu, a->B[li], 1, 0.0f, w->gy, w->px, w->py);
			for (int j = 0; j < k; j++)
				for (int o = 0; o < L->out; o++)
					y[(size_t)ord[s + j] * L->out + o] += w->gy[(size_t)j * L->out + o];
		}
		s = e;
	}
}

/* out [C] = (x - mean) / sqrt(var + 1e-5) * w + b, accumulated in double */
static void layernorm(float *out, const float *x, const float *w, const float *b, int C)
{
	double m = 0, v = 0;
	for (int c = 0; c < C; c++)
		m += x[c];
	m /= C;
	for (int c = 0; c < C; c++)
		v += (x[c] - m) * (x[c] - m);
	double s = 1.0 / sqrt(v / C + 1e-5);
	for (int c = 0; c < C; c++)
		out[c] = (float)((x[c] - m) * s) * w[c] + b[c];
}

/* GELU, tanh approximation (GPT-2's "gelu_new") */
static void gelu(float *y, const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		double v = x[i];
		y[i] = (float)(0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
	}
}

int trail_infer_step(trail_infer *m, int n, const int32_t *tok, const int *pos, trail_kvc *const *kv,
		     const trail_lora_w *const *lora, float *logits, trail_error *err)
{
	const trail_gpt2_config *c = &m->c;
	int C = c->n_embd, V = c->vocab_size, NH = c->n_head, P = c->n_positions, hs = C / NH, rmax = 1;
	if (n < 1)
		return TRAIL_OK;
	for (int i = 0; i < n; i++) {
		if (tok[i] < 0 || tok[i] >= V || pos[i] < 0 || pos[i] >= P)
			return trail_error_set(err, TRAIL_EDATA, "row %d: token %d at position %d out of range", i, tok[i], pos[i]);
		if (lora[i] && lora[i]->r > rmax)
			rmax = lora[i]->r;
	}
	size_t N = (size_t)n, wide = (size_t)(V > 4 * C ? V : 4 * C);
	float *mem = trail_malloc(sizeof(float) * (N * C * 4 + N * 3 * C + N * 4 * C * 4 + N * (size_t)rmax + (size_t)P +
						    2 * RB * wide));
	int *ord = trail_malloc(N * sizeof *ord);
	if (!mem || !ord) {
		trail_free(mem), trail_free(ord);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	float *x = mem, *ln = x + N * C, *y = ln + N * C, *tmp = y + N * C, *qkv = tmp + N * C, *h = qkv + N * 3 * C;
	float *hg = h + N * 4 * C, *sc;
	work w;
	w.gx = hg + N * 4 * C;
	w.gy = w.gx + N * 4 * C;
	w.gu = w.gy + N * 4 * C;
	sc = w.gu + N * (size_t)rmax;
	w.px = sc + P;
	w.py = w.px + RB * wide;
	/* group rows by adapter, stably */
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
		for (int k = 0; k < C; k++)
			x[(size_t)i * C + k] = m->wte[(size_t)tok[i] * C + k] + m->wpe[(size_t)pos[i] * C + k];
	for (int l = 0; l < c->n_layer; l++) {
		ilayer *Ly = &m->L[l];
		for (int i = 0; i < n; i++)
			layernorm(ln + (size_t)i * C, x + (size_t)i * C, Ly->ln1w, Ly->ln1b, C);
		step_linear(&Ly->lin[0], 4 * l, n, ln, qkv, ord, lora, &w);
		for (int i = 0; i < n; i++) { /* cache this position's key and value */
			memcpy(kv[i]->mem + ((size_t)l * 2 * P + (size_t)pos[i]) * C, qkv + (size_t)i * 3 * C + C,
			       (size_t)C * sizeof *qkv);
			memcpy(kv[i]->mem + (((size_t)l * 2 + 1) * P + (size_t)pos[i]) * C, qkv + (size_t)i * 3 * C + 2 * C,
			       (size_t)C * sizeof *qkv);
		}
		for (int i = 0; i < n; i++) { /* attention over the row's own cache */
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
				float *o = y + (size_t)i * C + (size_t)hh * hs;
				memset(o, 0, (size_t)hs * sizeof *o);
				for (int u = 0; u <= pos[i]; u++) {
					float a = (float)(sc[u] / sum);
					for (int k = 0; k < hs; k++)
						o[k] += a * vb[(size_t)u * C + (size_t)hh * hs + k];
				}
			}
		}
		step_linear(&Ly->lin[1], 4 * l + 1, n, y, tmp, ord, lora, &w);
		for (size_t i = 0; i < N * C; i++)
			x[i] += tmp[i];
		for (int i = 0; i < n; i++)
			layernorm(ln + (size_t)i * C, x + (size_t)i * C, Ly->ln2w, Ly->ln2b, C);
		step_linear(&Ly->lin[2], 4 * l + 2, n, ln, h, ord, lora, &w);
		gelu(hg, h, N * 4 * C);
		step_linear(&Ly->lin[3], 4 * l + 3, n, hg, tmp, ord, lora, &w);
		for (size_t i = 0; i < N * C; i++)
			x[i] += tmp[i];
	}
	if (logits) {
		for (int i = 0; i < n; i++)
			layernorm(ln + (size_t)i * C, x + (size_t)i * C, m->lnfw, m->lnfb, C);
		bgemm(n, V, C, 1.0f, ln, m->wte, 1, 0.0f, logits, w.px, w.py);
	}
	trail_free(mem);
	trail_free(ord);
	return TRAIL_OK;
}
