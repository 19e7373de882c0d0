/*
 * Batched inference for serving: a KV cache per sequence, and one step over
 * rows of many sequences and adapters — each base weight one sgemm over all
 * rows in fixed-height blocks, each adapter's low-rank product over its own
 * rows (the CPU form of Punica's SGMV), the attention of each row over its
 * own cache. A naive double-precision path beside every kernel. GPT-2 and
 * the Llama family (RMSNorm, rotary positions, grouped-query attention over
 * a cache of the key/value heads only, SwiGLU) share the batching, the
 * blocked products and the adapters; each has its own row phases.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cblas.h>

#include "model/model.h"
#include "core/core.h"
#include "model/model_int.h"

typedef struct ilin {
	float *W, *b; /* [in,out] (GPT-2's Conv1D) or [out,in] (nn.Linear), [out] or NULL */
	int in, out;
	/* bf16 (trail_infer_set_precision): the products of a full column block and of the last, narrower one */
	trail_bf16_mm *mm[2];
	unsigned char *Wp; /* W's column blocks, each packed for its product: block j at j pb[0] */
	size_t pb[2];
	uint16_t *Wb;      /* emulated: W as [out,in] */
	/* int8: the products of a full column block and of the last (their packed weights at Wp, pb), and per
	 * output row the weights' scale and the sum of its int8 weights */
	trail_i8_mm *qm[2];
	float *qs;
	int32_t *qsum;
} ilin;

enum { MAXK = 7 };

typedef struct ilayer {
	float *ln1w, *ln1b, *ln2w, *ln2b; /* the biases NULL under RMSNorm */
	ilin lin[MAXK]; /* GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj; Llama: q, k, v, o, gate, up, down */
} ilayer;

struct trail_infer {
	trail_model_cfg c;
	const trail_arch *arch;
	int llama;        /* the Llama family's phases */
	int nk, D, Dkv, F; /* linear layers per block; query, key/value and MLP widths */
	float *mem, *wte, *wpe, *lnfw, *lnfb;
	float *head;      /* Llama: lm_head [V,C], or the embeddings when tied */
	float *cs, *sn;   /* Llama: rotary tables [n_positions, head_dim/2] */
	size_t nparams;
	ilayer *L;
	int naive;
	float *ws; /* step workspace, grown as needed */
	size_t wsn;
	struct rowkey *keys; /* [ordn] */
	int *ord;            /* [ordn] */
	size_t ordn;
	int prec;            /* TRAIL_PREC_*: the base products' precision */
	int emu;             /* bf16 without oneDNN's products: see gemm_bf16_unit */
	ilin headl;          /* the logits' product: head [V,C] as a linear layer */
	unsigned char *bmem; /* bf16: every converted weight */
	size_t bn;           /* its bytes */
	struct mmshape { int n, k; trail_bf16_mm *h; } mmt[32];
	int nmm;
	struct qshape { int n, k; trail_i8_mm *h; } qmt[32]; /* int8's products */
	int nqm;
};

struct trail_lora_w {
	int r, nl;
	float scale;
	float **A, **B; /* [n_layer*nk], NULL where the layer has no LoRA */
	float *mem;
	size_t bytes;
};

struct trail_kvc {
	float *mem; /* [L][2][cap][Dkv], an anonymous mapping so a freed cache goes back to the system */
	size_t len;
	int cap;
};

static const char *const MOD[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

static void io_dims(int C, int k, int *in, int *out)
{
	static const int mul[4][2] = {{1, 3}, {1, 1}, {1, 4}, {4, 1}};
	*in = mul[k][0] * C;
	*out = mul[k][1] * C;
}

/* The Llama family's weights by their Hugging Face names, and the rotary tables. */
static int load_llama(trail_infer *m, const trail_st *st, trail_error *err)
{
	const trail_model_cfg *c = &m->c;
	size_t C = (size_t)c->n_embd, V = (size_t)c->vocab_size, h2 = (size_t)c->head_dim / 2;
	size_t io[MAXK][2] = {{C, (size_t)m->D}, {C, (size_t)m->Dkv}, {C, (size_t)m->Dkv}, {(size_t)m->D, C},
			      {C, (size_t)m->F}, {C, (size_t)m->F}, {(size_t)m->F, C}};
	m->nparams = trail_model_num_params(c);
	size_t tables = 2 * (size_t)c->n_positions * h2 + h2;
	if (!(m->mem = trail_malloc((m->nparams + tables) * sizeof *m->mem)) ||
	    !(m->L = trail_calloc((size_t)c->n_layer, sizeof *m->L)))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	float *p = m->mem;
	char nm[160];
	int rc;
#define READ(dst, d0, d1, nd, ...)                                                   \
	do {                                                                         \
		int64_t sh_[2] = {(int64_t)(d0), (int64_t)(d1)};                     \
		snprintf(nm, sizeof nm, __VA_ARGS__);                                \
		(dst) = p;                                                           \
		p += (size_t)(d0) * ((nd) == 2 ? (size_t)(d1) : 1);                  \
		if ((rc = trail_st_read_f32(st, nm, sh_, (nd), (dst), err)))         \
			return rc;                                                   \
	} while (0)
	READ(m->wte, V, C, 2, "model.embed_tokens.weight");
	for (int l = 0; l < c->n_layer; l++) {
		ilayer *y = &m->L[l];
		READ(y->ln1w, C, 0, 1, "model.layers.%d.input_layernorm.weight", l);
		READ(y->ln2w, C, 0, 1, "model.layers.%d.post_attention_layernorm.weight", l);
		for (int k = 0; k < m->nk; k++) {
			ilin *L = &y->lin[k];
			L->in = (int)io[k][0];
			L->out = (int)io[k][1];
			READ(L->W, L->out, L->in, 2, "model.layers.%d.%s.weight", l, m->arch->kinds[k]);
			if (c->qkv_bias && k < 3)
				READ(L->b, L->out, 0, 1, "model.layers.%d.%s.bias", l, m->arch->kinds[k]);
		}
	}
	READ(m->lnfw, C, 0, 1, "model.norm.weight");
	if (c->untied)
		READ(m->head, V, C, 2, "lm_head.weight");
	else
		m->head = m->wte;
#undef READ
	float *inv = p;
	m->cs = inv + h2;
	m->sn = m->cs + (size_t)c->n_positions * h2;
	trail_rope_inv_freq(c, inv);
	trail_k_rope_tables(m->cs, m->sn, inv, c->n_positions, c->head_dim);
	return TRAIL_OK;
}

int trail_infer_load(const char *dir, trail_infer **out, trail_error *err)
{
	trail_st *st = NULL;
	trail_infer *m = NULL;
	int rc;
	*out = NULL;
	if (!(m = trail_calloc(1, sizeof *m))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_base_open(dir, &m->c, &st, err))) /* a model directory or a GGUF file */
		goto out;
	m->arch = trail_arch_of(m->c.arch);
	m->llama = m->c.arch != TRAIL_ARCH_GPT2;
	m->nk = m->arch->nkinds;
	m->D = m->llama ? m->c.n_head * m->c.head_dim : m->c.n_embd;
	m->Dkv = m->llama ? m->c.n_kv_head * m->c.head_dim : m->c.n_embd;
	m->F = m->llama ? m->c.n_inner : 4 * m->c.n_embd;
	if (m->llama) {
		rc = load_llama(m, st, err);
		goto loaded;
	}
	size_t C = (size_t)m->c.n_embd;
	m->nparams = trail_gpt2_num_params(&m->c);
	if (!(m->mem = trail_malloc(m->nparams * sizeof *m->mem)) ||
	    !(m->L = trail_calloc((size_t)m->c.n_layer, sizeof *m->L))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	const char *pre = trail_st_has(st, "transformer.wte.weight") ? "transformer." : "";
	float *p = m->mem;
	char nm[160];
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
			io_dims((int)C, k, &y->lin[k].in, &y->lin[k].out);
			snprintf(b, sizeof b, "h.%d.%s.weight", l, MOD[k]);
			READ(y->lin[k].W, b, y->lin[k].in, y->lin[k].out, 2);
			snprintf(b, sizeof b, "h.%d.%s.bias", l, MOD[k]);
			READ(y->lin[k].b, b, y->lin[k].out, 0, 1);
		}
	}
	READ(m->lnfw, "ln_f.weight", C, 0, 1);
	READ(m->lnfb, "ln_f.bias", C, 0, 1);
#undef READ
loaded:
	if (rc)
		goto out;
	m->headl = (ilin){.W = m->llama ? m->head : m->wte, .in = m->c.n_embd, .out = m->c.vocab_size};
	*out = m;
	m = NULL;
out:
	trail_infer_free(m);
	trail_st_free(st);
	return rc;
}

void trail_infer_free(trail_infer *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->nmm; i++)
		trail_bf16_mm_free(m->mmt[i].h);
	for (int i = 0; i < m->nqm; i++)
		trail_i8_mm_free(m->qmt[i].h);
	trail_free(m->bmem);
	trail_free(m->mem);
	trail_free(m->L);
	trail_free(m->ws);
	trail_free(m->keys);
	trail_free(m->ord);
	trail_free(m);
}

const trail_model_cfg *trail_infer_config(const trail_infer *m)
{
	return &m->c;
}

size_t trail_infer_bytes(const trail_infer *m)
{
	return m->nparams * sizeof(float) + m->bn;
}

void trail_infer_set_reference(trail_infer *m, int on)
{
	m->naive = on;
}

/* ---- KV caches ------------------------------------------------------------------- */

size_t trail_kvc_bytes(const trail_infer *m, int cap)
{
	return (size_t)m->c.n_layer * 2 * (size_t)cap * (size_t)m->Dkv * sizeof(float);
}

trail_kvc *trail_kvc_new(const trail_infer *m, int cap)
{
	if (cap < 1 || cap > m->c.n_positions)
		return NULL;
	trail_kvc *kv = trail_calloc(1, sizeof *kv);
	if (!kv)
		return NULL;
	kv->len = trail_kvc_bytes(m, cap);
	kv->cap = cap;
	void *p = mmap(NULL, kv->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		trail_free(kv);
		return NULL;
	}
	kv->mem = p;
	return kv;
}

void trail_kvc_free(trail_kvc *kv)
{
	if (!kv)
		return;
	munmap(kv->mem, kv->len);
	trail_free(kv);
}

/* ---- adapters -------------------------------------------------------------------- */

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

int trail_lora_w_rank(const trail_lora_w *w)
{
	return w->r;
}

/* PEFT's name for a LoRA tensor, with or without the adapter name "default". */
static int tensor_name(const trail_infer *m, const trail_st *st, int l, int k, char ab, char *out, size_t n)
{
	const trail_arch *a = m->arch;
	snprintf(out, n, "base_model.model.%s.%d.%s.lora_%c.weight", a->blocks, l, a->kinds[k], ab);
	if (trail_st_has(st, out))
		return 1;
	snprintf(out, n, "base_model.model.%s.%d.%s.lora_%c.default.weight", a->blocks, l, a->kinds[k], ab);
	return trail_st_has(st, out);
}

int trail_lora_w_load(const trail_infer *base, const char *dir, trail_lora_w **out, trail_error *err)
{
	const trail_model_cfg *c = &base->c;
	char *cp = trail_path(dir, "adapter_config.json"), *wp = trail_path(dir, "adapter_model.safetensors");
	void *cb = NULL;
	size_t cl;
	json_t *cj = NULL;
	trail_st *st = NULL;
	trail_lora_w *w = NULL;
	int rc, nk = base->nk, nl = nk * c->n_layer, in, ou;
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
	if (!pt || strcmp(pt, "LORA") || !json_is_integer(r) || json_integer_value(r) < 1 ||
	    json_integer_value(r) > 4096 || !json_is_number(al)) {
		rc = trail_error_at(err, TRAIL_EDATA, cp, 0, "not a LoRA adapter config (peft_type, r, lora_alpha)");
		goto out;
	}
	int R = (int)json_integer_value(r);
	size_t total = 0, found = 0;
	char nm[160];
	for (int i = 0; i < nl; i++)
		if (tensor_name(base, st, i / nk, i % nk, 'A', nm, sizeof nm)) {
			in = base->L[i / nk].lin[i % nk].in, ou = base->L[i / nk].lin[i % nk].out;
			total += (size_t)R * (size_t)(in + ou);
		}
	if (!(w = trail_calloc(1, sizeof *w)) || !(w->A = trail_calloc((size_t)nl, sizeof *w->A)) ||
	    !(w->B = trail_calloc((size_t)nl, sizeof *w->B)) || !(w->mem = trail_malloc((total ? total : 1) * sizeof *w->mem))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	w->r = R;
	w->nl = nl;
	w->scale = (float)(json_is_true(json_object_get(cj, "use_rslora")) ? json_number_value(al) / sqrt(R)
									    : json_number_value(al) / R);
	w->bytes = total * sizeof *w->mem;
	float *p = w->mem;
	for (int i = 0; i < nl; i++) {
		if (!tensor_name(base, st, i / nk, i % nk, 'A', nm, sizeof nm))
			continue;
		in = base->L[i / nk].lin[i % nk].in, ou = base->L[i / nk].lin[i % nk].out;
		int64_t sa[2] = {R, in}, sb[2] = {ou, R};
		w->A[i] = p;
		p += (size_t)R * (size_t)in;
		w->B[i] = p;
		p += (size_t)R * (size_t)ou;
		if ((rc = trail_st_read_f32(st, nm, sa, 2, w->A[i], err)))
			goto out;
		if (!tensor_name(base, st, i / nk, i % nk, 'B', nm, sizeof nm)) {
			rc = trail_error_at(err, TRAIL_EDATA, wp, 0, "lora_A without lora_B for %s.%d.%s", base->arch->blocks,
					    i / nk, base->arch->kinds[i % nk]);
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

/* ---- kernels ------------------------------------------------------------------------ */

/* Four-lane vectors (GCC/Clang extensions): the width every x86-64 and arm64 has. */
typedef float v4 __attribute__((vector_size(16)));

static inline v4 ld4(const float *p)
{
	v4 v;
	memcpy(&v, p, sizeof v);
	return v;
}

/* sum a[i] b[i], in a fixed order for a given n */
static float dot(const float *a, const float *b, int n)
{
	v4 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		s0 += ld4(a + i) * ld4(b + i);
		s1 += ld4(a + i + 4) * ld4(b + i + 4);
		s2 += ld4(a + i + 8) * ld4(b + i + 8);
		s3 += ld4(a + i + 12) * ld4(b + i + 12);
	}
	for (; i + 4 <= n; i += 4)
		s0 += ld4(a + i) * ld4(b + i);
	v4 s = (s0 + s1) + (s2 + s3);
	float r = (s[0] + s[1]) + (s[2] + s[3]);
	for (; i < n; i++)
		r += a[i] * b[i];
	return r;
}

/* y += a x */
static void axpy(float *y, float a, const float *x, int n)
{
	int i = 0;
	v4 av = {a, a, a, a};
	for (; i + 4 <= n; i += 4) {
		v4 v = ld4(y + i) + av * ld4(x + i);
		memcpy(y + i, &v, sizeof v);
	}
	for (; i < n; i++)
		y[i] += a * x[i];
}

static double dot_ref(const float *a, const float *b, int n)
{
	double s = 0;
	for (int i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

/*
 * The base products, y [n,N] = x [n,K] op(W) with W [K,N] (or [N,K] when
 * transW), made independent of the batch and of the thread count. BLAS
 * libraries pick kernels by matrix size and split a product between their
 * threads in ways that change its rounding, so a row's result could change
 * with the rows beside it or with --threads. Here every call has a fixed
 * shape and runs on one BLAS thread: blocks of RB rows (the last
 * zero-padded) with the rows as the kernel's vector lanes (column-major
 * y^T, transposed back), times a fixed split of the columns. Work units
 * (block, column part) go whole to one thread of the pool, so which thread
 * computes a unit does not matter.
 *
 * In bf16 the units are (block, CB-column block): the block's rows rounded
 * to bfloat16 times the weights' bfloat16 copy, one oneDNN primitive per
 * shape (LB x CB x K, and LB x the last columns x K), each on one thread;
 * int8 the same with the rows quantised. Their blocks are LB = 8 rows, half
 * of fp32's: one request's decoding then computes 8 rows, not 16, for the
 * one it needs (the products there are at the weights' read speed). Each
 * output is the same sum in the same order over K whatever the block's
 * height, so the bits are those of 16-row blocks (bench_prec's logits
 * digests are equal for both). fp32 keeps RB = 16: OpenBLAS's kernels
 * round by shape.
 */
enum { RB = 16, LB = 8, CB = 128 };

typedef struct gemmjob {
	int n, N, K, transW, parts;
	const float *x, *W;
	float *y;
	float *pad;  /* thread t's pad + t padn: an x block [RB,K] and a y^T block [N,RB] */
	size_t padn;
	const ilin *L; /* bf16: its Wb and mm */
	int emu;       /* bf16 without oneDNN's product (see gemm_bf16_unit) */
	int fail;      /* bf16, int8: a block oneDNN did not compute */
	uint16_t *xb;  /* bf16: x rounded, in whole blocks of RB rows (the last zero-padded) */
	uint8_t *xq;   /* int8: x quantised, in whole blocks of RB rows (the last zero-padded) */
	float *xs;     /* int8: each row's scale */
	int32_t *xz;   /* int8: each row's zero point */
} gemmjob;

/* The columns of part p of `parts`: a fixed split on 64-column bounds. */
static void part_cols(const gemmjob *g, int p, int *c0, int *c1)
{
	int half = ((g->N / 2) + 63) & ~63;
	*c0 = p ? half : 0;
	*c1 = g->parts == 1 || p ? g->N : half;
}

static void gemm_units(const gemmjob *g, int u0, int u1, int t)
{
	float *px = g->pad + (size_t)t * g->padn, *pt = px + (size_t)RB * g->K;
	for (int u = u0; u < u1; u++) {
		int r = u / g->parts * RB, k = g->n - r < RB ? g->n - r : RB, c0, c1;
		part_cols(g, u % g->parts, &c0, &c1);
		int w = c1 - c0;
		const float *xa = g->x + (size_t)r * g->K;
		if (k < RB) {
			memcpy(px, xa, sizeof *px * (size_t)k * g->K);
			memset(px + (size_t)k * g->K, 0, sizeof *px * (size_t)(RB - k) * g->K);
			xa = px;
		}
		if (g->transW)
			cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, RB, w, g->K, 1.0f, xa, g->K,
				    g->W + (size_t)c0 * g->K, g->K, 0.0f, pt, RB);
		else
			cblas_sgemm(CblasColMajor, CblasTrans, CblasTrans, RB, w, g->K, 1.0f, xa, g->K, g->W + c0, g->N,
				    0.0f, pt, RB);
		for (int i = 0; i < k; i++) {
			float *yr = g->y + (size_t)(r + i) * g->N + c0;
			for (int j = 0; j < w; j++)
				yr[j] = pt[(size_t)j * RB + i];
		}
	}
}

/* bf16: row block u of x to bfloat16 */
static void gemm_bf16_rows(void *ctx, int u, int t)
{
	gemmjob *g = ctx;
	int r = u * LB, k = g->n - r < LB ? g->n - r : LB;
	uint16_t *xb = g->xb + (size_t)r * g->K;
	(void)t;
	trail_bf16_convert(xb, g->x + (size_t)r * g->K, (size_t)k * g->K);
	memset(xb + (size_t)k * g->K, 0, sizeof *xb * (size_t)(LB - k) * g->K);
}

/* bf16 unit u: row block u / nc, column block u % nc */
static void gemm_bf16_unit(void *ctx, int u, int t)
{
	gemmjob *g = ctx;
	int nc = (g->N + CB - 1) / CB, r = u / nc * LB, c0 = u % nc * CB, k = g->n - r < LB ? g->n - r : LB;
	int w = g->N - c0 < CB ? g->N - c0 : CB;
	float *pt = g->pad + (size_t)t * g->padn;
	const uint16_t *xb = g->xb + (size_t)r * g->K;
	if (g->emu) {
		/*
		 * Where oneDNN has no bf16 product (its instruction set capped
		 * below AVX-512): the same bf16 inputs, widened exactly, each sum
		 * a dot in this file's fixed order. Other bits than oneDNN's,
		 * labelled by the instruction set; still the row's own, on any
		 * thread. Only the block's k rows are computed.
		 */
		float *xf = pt + (size_t)RB * CB, *wf = xf + (size_t)k * g->K;
		for (size_t i = 0; i < (size_t)k * g->K; i++) {
			uint32_t v = (uint32_t)xb[i] << 16;
			memcpy(xf + i, &v, 4);
		}
		for (int j = 0; j < w; j++) {
			const uint16_t *wb = g->L->Wb + (size_t)(c0 + j) * g->K;
			for (int q = 0; q < g->K; q++) {
				uint32_t v = (uint32_t)wb[q] << 16;
				memcpy(wf + q, &v, 4);
			}
			for (int i = 0; i < k; i++)
				g->y[(size_t)(r + i) * g->N + c0 + j] = dot(xf + (size_t)i * g->K, wf, g->K);
		}
		return;
	}
	if (trail_bf16_mm_run(g->L->mm[w < CB], xb, g->L->Wp + (size_t)(c0 / CB) * g->L->pb[0], pt, t)) {
		g->fail = 1;
		return;
	}
	for (int i = 0; i < k; i++)
		memcpy(g->y + (size_t)(r + i) * g->N + c0, pt + (size_t)i * w, sizeof *pt * (size_t)w);
}

/*
 * int8. A row x [K] of a product's input becomes q [K] in [0, 127] with
 * x ~ s (q - z): s = (max - min) / 127 over x and 0, z = round(-min / s),
 * so that 0 is exact and the range is the row's own; 7 bits, so that no
 * pair of products saturates a 16-bit sum (trail_i8_mm). A row with an
 * infinity or a NaN gets the scale NaN, so its outputs are NaN as in fp32.
 * The rounding is (v + 1.5 2^23) - 1.5 2^23, to nearest even, in the same
 * operations at every width.
 */
#define QMAGIC 12582912.0f

static void quant_row(uint8_t *q, float *s, int32_t *z, const float *x, int K)
{
	float lo = 0, hi = 0, bad = 0;
	for (int k = 0; k < K; k++) {
		lo = x[k] < lo ? x[k] : lo;
		hi = x[k] > hi ? x[k] : hi;
		bad += x[k] - x[k]; /* NaN from an infinity or a NaN */
	}
	float sc = (hi - lo) / 127.0f;
	if (bad != 0 || !(sc > 0)) {
		memset(q, 0, (size_t)K);
		*s = bad != 0 ? NAN : 0;
		*z = 0;
		return;
	}
	float inv = 127.0f / (hi - lo), zf = (-lo * inv + QMAGIC) - QMAGIC;
	for (int k = 0; k < K; k++) {
		float v = x[k] * inv;
		v = v + zf;
		v = v >= 0 ? v : 0;
		v = v <= 127 ? v : 127;
		v = (v + QMAGIC) - QMAGIC;
		q[k] = (uint8_t)(int)v;
	}
	*s = sc;
	*z = (int32_t)zf;
}

/* int8: row block u of x quantised, row by row */
static void gemm_i8_rows(void *ctx, int u, int t)
{
	gemmjob *g = ctx;
	int r = u * LB, k = g->n - r < LB ? g->n - r : LB;
	uint8_t *xq = g->xq + (size_t)r * g->K;
	(void)t;
	for (int i = 0; i < k; i++)
		quant_row(xq + (size_t)i * g->K, g->xs + r + i, g->xz + r + i, g->x + (size_t)(r + i) * g->K, g->K);
	memset(xq + (size_t)k * g->K, 0, (size_t)(LB - k) * g->K);
}

/* int8 unit u: row block u / nc, column block u % nc; y = s_row s_col (sum q w - z sum w), in that order */
static void gemm_i8_unit(void *ctx, int u, int t)
{
	gemmjob *g = ctx;
	int nc = (g->N + CB - 1) / CB, r = u / nc * LB, c0 = u % nc * CB, k = g->n - r < LB ? g->n - r : LB;
	int w = g->N - c0 < CB ? g->N - c0 : CB;
	int32_t *pt = (int32_t *)(g->pad + (size_t)t * g->padn);
	if (trail_i8_mm_run(g->L->qm[w < CB], g->xq + (size_t)r * g->K, g->L->Wp + (size_t)(c0 / CB) * g->L->pb[0], pt,
			    t)) {
		g->fail = 1;
		return;
	}
	const float *qs = g->L->qs + c0;
	const int32_t *qsum = g->L->qsum + c0;
	for (int i = 0; i < k; i++) {
		float *yr = g->y + (size_t)(r + i) * g->N + c0, sr = g->xs[r + i];
		const int32_t *a = pt + (size_t)i * w;
		int32_t zr = g->xz[r + i];
		for (int j = 0; j < w; j++)
			yr[j] = (float)(a[j] - zr * qsum[j]) * sr * qs[j];
	}
}

/*
 * y [out] += scale (x A^T) B^T for one row: u [r] = A x, then each output a
 * dot of B's row with u. Row by row, so the result is the row's own.
 */
static void lora_row(int naive, const float *x, const float *A, const float *B, int r, int in, int out, float scale,
		     float *y, float *u)
{
	if (naive) {
		double ud[64], *up = r <= 64 ? ud : NULL;
		for (int o = 0; o < out; o++) {
			double s = 0;
			for (int j = 0; j < r; j++) {
				double uj = up && o ? up[j] : dot_ref(A + (size_t)j * in, x, in);
				if (up && !o)
					up[j] = uj;
				s += uj * B[(size_t)o * r + j];
			}
			y[o] = (float)(y[o] + scale * s);
		}
		return;
	}
	for (int j = 0; j < r; j++)
		u[j] = dot(A + (size_t)j * in, x, in);
	for (int o = 0; o < out; o++)
		y[o] += scale * dot(B + (size_t)o * r, u, r);
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

/*
 * One row's attention over its cache (GPT-2's is the case nkv = nh): y [D] from q [D] and the
 * keys/values of nkv heads at positions 0..p of k, v [cap,Dkv]; query head h
 * reads key/value head h / (nh/nkv). sc [p+1] scratch.
 */
static void attend_gqa(int naive, float *y, const float *q, const float *k, const float *v, int p, int nh, int nkv,
		       int hd, float *sc)
{
	int Dkv = nkv * hd, rep = nh / nkv;
	float scale = (float)(1.0 / sqrt((double)hd));
	for (int h = 0; h < nh; h++) {
		const float *qh = q + (size_t)h * hd, *kh = k + (size_t)(h / rep) * hd, *vh = v + (size_t)(h / rep) * hd;
		float *o = y + (size_t)h * hd, mx = -INFINITY;
		for (int u = 0; u <= p; u++) {
			sc[u] = (naive ? (float)dot_ref(qh, kh + (size_t)u * Dkv, hd) : dot(qh, kh + (size_t)u * Dkv, hd)) * scale;
			mx = sc[u] > mx ? sc[u] : mx;
		}
		double sum = 0;
		for (int u = 0; u <= p; u++)
			sc[u] -= mx;
		if (naive)
			for (int u = 0; u <= p; u++)
				sc[u] = (float)exp(sc[u]);
		else
			trail_k_expf(sc, sc, (size_t)p + 1);
		for (int u = 0; u <= p; u++)
			sum += sc[u];
		memset(o, 0, (size_t)hd * sizeof *o);
		if (naive) {
			for (int c = 0; c < hd; c++) {
				double s = 0;
				for (int u = 0; u <= p; u++)
					s += (double)sc[u] * vh[(size_t)u * Dkv + c];
				o[c] = (float)(s / sum);
			}
		} else {
			for (int u = 0; u <= p; u++)
				axpy(o, (float)(sc[u] / sum), vh + (size_t)u * Dkv, hd);
		}
	}
}

static void gelu_ref(float *y, const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		double v = x[i];
		y[i] = (float)(0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
	}
}

typedef struct rowkey {
	uintptr_t adapter;
	int row;
} rowkey;

static int by_adapter(const void *a, const void *b)
{
	const rowkey *x = a, *y = b;
	return x->adapter != y->adapter ? (x->adapter < y->adapter ? -1 : 1) : x->row - y->row;
}

/*
 * The row-wise work of a step, between the base products: everything a row
 * computes from itself and its own cache alone, so rows split between
 * threads in any way give the same bits.
 */
enum { P_LN1, P_QKV, P_ATT, P_PROJ, P_FC, P_MPROJ };

typedef struct rowjob {
	const trail_infer *m;
	int phase, l;
	const int *ord, *pos;
	trail_kvc *const *kv;
	const trail_lora_w *const *lora;
	float *x, *ln, *att, *tmp, *qkv, *h, *hg;
	float *kk, *vv; /* Llama: this step's keys and values [N,Dkv]; qkv holds the queries [N,D] */
	float *scr;     /* thread t's scratch at scr + t scn: scores [P], LoRA hidden [rmax], then its gemm pad */
	size_t scn;
	uint16_t *xb;   /* bf16: a product's input rows rounded, [N rounded up to RB, kmax] */
	uint8_t *xq;    /* int8: a product's input rows quantised, [N rounded up to RB, kmax] */
	float *xs;      /* int8: their scales [N] */
	int32_t *xz;    /* int8: their zero points [N] */
	int P, rmax;
} rowjob;

#define SC(k, t) ((k)->scr + (size_t)(t) * (k)->scn)
#define UU(k, t) (SC(k, t) + (k)->P)

/* y [out] += b + the row's adapter's low-rank product of x */
static void finish_linear(const rowjob *k, int i, int li, const ilin *L, const float *x, float *y, float *u)
{
	if (L->b)
		for (int o = 0; o < L->out; o++)
			y[o] += L->b[o];
	const trail_lora_w *a = k->lora[i];
	if (a && a->A[li])
		lora_row(k->m->naive, x, a->A[li], a->B[li], a->r, L->in, L->out, a->scale, y, u);
}

/* Rows ord[lo..hi) through the job's phase, with thread t's scratch. */
static void rows(const rowjob *k, int lo, int hi, int t)
{
	const trail_infer *m = k->m;
	int C = m->c.n_embd, l = k->l;
	const ilayer *Ly = &m->L[l];
	for (int j = lo; j < hi; j++) {
		int i = k->ord[j];
		size_t ic = (size_t)i * C;
		float *x = k->x + ic, *ln = k->ln + ic, *att = k->att + ic, *tmp = k->tmp + ic;
		float *qkv = k->qkv + 3 * ic, *h = k->h + 4 * ic, *hg = k->hg + 4 * ic;
		size_t cap = (size_t)k->kv[i]->cap;
		float *kb = k->kv[i]->mem + (size_t)l * 2 * cap * C, *vb = kb + cap * C;
		switch (k->phase) {
		case P_LN1:
			layernorm(ln, x, Ly->ln1w, Ly->ln1b, C);
			break;
		case P_QKV: /* and cache this position's key and value */
			finish_linear(k, i, 4 * l, &Ly->lin[0], ln, qkv, UU(k, t));
			memcpy(kb + (size_t)k->pos[i] * C, qkv + C, (size_t)C * sizeof *qkv);
			memcpy(vb + (size_t)k->pos[i] * C, qkv + 2 * C, (size_t)C * sizeof *qkv);
			break;
		case P_ATT: /* once every row's key and value are cached: a prompt's rows see each other */
			attend_gqa(m->naive, att, qkv, kb, vb, k->pos[i], m->c.n_head, m->c.n_head, C / m->c.n_head, SC(k, t));
			break;
		case P_PROJ:
			finish_linear(k, i, 4 * l + 1, &Ly->lin[1], att, tmp, UU(k, t));
			for (int c = 0; c < C; c++)
				x[c] += tmp[c];
			layernorm(ln, x, Ly->ln2w, Ly->ln2b, C);
			break;
		case P_FC:
			finish_linear(k, i, 4 * l + 2, &Ly->lin[2], ln, h, UU(k, t));
			if (m->naive)
				gelu_ref(hg, h, (size_t)4 * C);
			else
				trail_k_gelu_fwd(hg, h, (size_t)4 * C);
			break;
		case P_MPROJ: /* and the next layer's first LayerNorm */
			finish_linear(k, i, 4 * l + 3, &Ly->lin[3], hg, tmp, UU(k, t));
			for (int c = 0; c < C; c++)
				x[c] += tmp[c];
			if (l + 1 < m->c.n_layer)
				layernorm(ln, x, m->L[l + 1].ln1w, m->L[l + 1].ln1b, C);
			break;
		}
	}
}

static void rmsnorm(float *out, const float *x, const float *w, int C, float eps)
{
	float r;
	trail_k_rmsnorm_fwd(out, &r, x, w, 1, C, eps);
}

/* The Llama family's rows ord[lo..hi) through the job's phase, with thread t's scratch. */
static void rows_llama(const rowjob *k, int lo, int hi, int t)
{
	const trail_infer *m = k->m;
	const trail_model_cfg *c = &m->c;
	int C = c->n_embd, l = k->l, D = m->D, Dkv = m->Dkv, F = m->F, nk = m->nk, hd = c->head_dim, h2 = hd / 2;
	float eps = (float)c->norm_eps;
	const ilayer *Ly = &m->L[l];
	for (int j = lo; j < hi; j++) {
		int i = k->ord[j], p = k->pos[i];
		size_t ic = (size_t)i * C;
		float *x = k->x + ic, *ln = k->ln + ic, *tmp = k->tmp + ic, *att = k->att + (size_t)i * D;
		float *q = k->qkv + (size_t)i * D, *kr = k->kk + (size_t)i * Dkv, *vr = k->vv + (size_t)i * Dkv;
		float *g = k->h + (size_t)i * F, *u = k->hg + (size_t)i * F;
		size_t cap = (size_t)k->kv[i]->cap;
		float *kb = k->kv[i]->mem + (size_t)l * 2 * cap * Dkv, *vb = kb + cap * Dkv;
		switch (k->phase) {
		case P_LN1:
			rmsnorm(ln, x, Ly->ln1w, C, eps);
			break;
		case P_QKV: /* rotate this position's query and key, and cache its key and value */
			finish_linear(k, i, nk * l + 0, &Ly->lin[0], ln, q, UU(k, t));
			finish_linear(k, i, nk * l + 1, &Ly->lin[1], ln, kr, UU(k, t));
			finish_linear(k, i, nk * l + 2, &Ly->lin[2], ln, vr, UU(k, t));
			trail_k_rope(q, 1, 1, c->n_head, hd, D, m->cs + (size_t)p * h2, m->sn + (size_t)p * h2, 0);
			trail_k_rope(kr, 1, 1, c->n_kv_head, hd, Dkv, m->cs + (size_t)p * h2, m->sn + (size_t)p * h2, 0);
			memcpy(kb + (size_t)p * Dkv, kr, (size_t)Dkv * sizeof *kr);
			memcpy(vb + (size_t)p * Dkv, vr, (size_t)Dkv * sizeof *vr);
			break;
		case P_ATT:
			attend_gqa(m->naive, att, q, kb, vb, p, c->n_head, c->n_kv_head, hd, SC(k, t));
			break;
		case P_PROJ:
			finish_linear(k, i, nk * l + 3, &Ly->lin[3], att, tmp, UU(k, t));
			for (int e = 0; e < C; e++)
				x[e] += tmp[e];
			rmsnorm(ln, x, Ly->ln2w, C, eps);
			break;
		case P_FC: /* g = silu(gate) up, in place */
			finish_linear(k, i, nk * l + 4, &Ly->lin[4], ln, g, UU(k, t));
			finish_linear(k, i, nk * l + 5, &Ly->lin[5], ln, u, UU(k, t));
			trail_k_swiglu_fwd(g, g, u, (size_t)F);
			break;
		case P_MPROJ: /* and the next layer's first RMSNorm */
			finish_linear(k, i, nk * l + 6, &Ly->lin[6], g, tmp, UU(k, t));
			for (int e = 0; e < C; e++)
				x[e] += tmp[e];
			if (l + 1 < c->n_layer)
				rmsnorm(ln, x, m->L[l + 1].ln1w, C, eps);
			break;
		}
	}
}

/* Row ord[j] through the row phase k, on thread t. */
static void row_item(void *ctx, int j, int t)
{
	const rowjob *k = ctx;
	if (k->m->llama)
		rows_llama(k, j, j + 1, t);
	else
		rows(k, j, j + 1, t);
}

static void gemm_item(void *ctx, int u, int t)
{
	gemm_units(ctx, u, u + 1, t);
}

void trail_infer_set_threads(trail_infer *m, int n)
{
	(void)m;
	trail_compute_set(n, trail_compute_precision(), NULL);
}

/* A phase over rows [0,n), each row whole on one thread of the pool. */
static void run_rows(trail_infer *m, rowjob *k, int phase, int l, int n)
{
	(void)m;
	k->phase = phase;
	k->l = l;
	trail_pool_run(trail_compute_pool(), n, row_item, k);
}

/* y [n,N] = x [n,K] op(W) for the linear layer L (see gemmjob), on the pool. */
static int bgemm(trail_infer *m, const rowjob *k, int n, const float *x, const ilin *L, int transW, float *y,
		 trail_error *err)
{
	int N = L->out, K = L->in;
	const float *W = L->W;
	if (m->naive) {
		for (int i = 0; i < n; i++)
			for (int j = 0; j < N; j++) {
				double s = 0;
				for (int q = 0; q < K; q++)
					s += (double)x[(size_t)i * K + q] * (transW ? W[(size_t)j * K + q] : W[(size_t)q * N + j]);
				y[(size_t)i * N + j] = (float)s;
			}
		return TRAIL_OK;
	}
	gemmjob g = {n, N, K, transW, N >= 256 ? 2 : 1, x, W, y, SC(k, 0) + k->P + k->rmax, k->scn, L, m->emu, 0, NULL, NULL, NULL, NULL};
	if (m->prec == TRAIL_PREC_BF16) {
		g.xb = k->xb;
		trail_pool_run(trail_compute_pool(), (n + LB - 1) / LB, gemm_bf16_rows, &g);
		trail_pool_run(trail_compute_pool(), (n + LB - 1) / LB * ((N + CB - 1) / CB), gemm_bf16_unit, &g);
		return g.fail ? trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: a bf16 product failed") : TRAIL_OK;
	}
	if (m->prec == TRAIL_PREC_INT8) {
		g.xq = k->xq, g.xs = k->xs, g.xz = k->xz;
		trail_pool_run(trail_compute_pool(), (n + LB - 1) / LB, gemm_i8_rows, &g);
		trail_pool_run(trail_compute_pool(), (n + LB - 1) / LB * ((N + CB - 1) / CB), gemm_i8_unit, &g);
		return g.fail ? trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: an int8 product failed") : TRAIL_OK;
	}
	trail_pool_run(trail_compute_pool(), (n + RB - 1) / RB * g.parts, gemm_item, &g);
	return TRAIL_OK;
}

/*
 * Products of one input by several layers (q, k and v; gate and up): in
 * bf16 and int8 the input rounded or quantised once and every layer's
 * units in one run of the pool, each unit computed as bgemm computes it.
 */
typedef struct multijob {
	gemmjob g[3];
	int at[4]; /* layer i's units are [at[i], at[i + 1]) */
	int nl;
} multijob;

static void multi_unit(void *ctx, int u, int t)
{
	multijob *mj = ctx;
	int i = 0;
	while (u >= mj->at[i + 1])
		i++;
	if (mj->g[0].xq)
		gemm_i8_unit(&mj->g[i], u - mj->at[i], t);
	else
		gemm_bf16_unit(&mj->g[i], u - mj->at[i], t);
}

static int bgemm_multi(trail_infer *m, const rowjob *k, int n, const float *x, const ilin *const *L, float *const *y,
		       int nl, trail_error *err)
{
	if (m->naive || m->prec == TRAIL_PREC_FP32) {
		for (int i = 0; i < nl; i++) {
			int rc = bgemm(m, k, n, x, L[i], 1, y[i], err);
			if (rc)
				return rc;
		}
		return TRAIL_OK;
	}
	multijob mj = {.nl = nl};
	int nb = (n + LB - 1) / LB;
	for (int i = 0; i < nl; i++) {
		int N = L[i]->out;
		mj.g[i] = (gemmjob){n, N, L[i]->in, 1, N >= 256 ? 2 : 1, x, L[i]->W, y[i], SC(k, 0) + k->P + k->rmax, k->scn,
				   L[i], m->emu, 0, NULL, NULL, NULL, NULL};
		if (m->prec == TRAIL_PREC_INT8)
			mj.g[i].xq = k->xq, mj.g[i].xs = k->xs, mj.g[i].xz = k->xz;
		else
			mj.g[i].xb = k->xb;
		mj.at[i + 1] = mj.at[i] + nb * ((N + CB - 1) / CB);
	}
	trail_pool_run(trail_compute_pool(), nb, m->prec == TRAIL_PREC_INT8 ? gemm_i8_rows : gemm_bf16_rows, &mj.g[0]);
	trail_pool_run(trail_compute_pool(), mj.at[nl], multi_unit, &mj);
	for (int i = 0; i < nl; i++)
		if (mj.g[i].fail)
			return trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: a %s product failed",
					       m->prec == TRAIL_PREC_INT8 ? "int8" : "bf16");
	return TRAIL_OK;
}

/* Check a step's rows, grow the workspace to `need` floats and order the rows by adapter. */
static int prepare(trail_infer *m, int n, const int32_t *tok, const int *pos, trail_kvc *const *kv,
		   const trail_lora_w *const *lora, int nout, const int *out_rows, int *rmax, size_t (*need)(const trail_infer *, size_t, int, int),
		   trail_error *err)
{
	int V = m->c.vocab_size;
	*rmax = 1;
	for (int i = 0; i < n; i++) {
		if (tok[i] < 0 || tok[i] >= V || pos[i] < 0 || pos[i] >= kv[i]->cap)
			return trail_error_set(err, TRAIL_EDATA, "row %d: token %d at position %d out of range", i, tok[i], pos[i]);
		if (lora[i] && lora[i]->r > *rmax)
			*rmax = lora[i]->r;
	}
	for (int i = 0; i < nout; i++)
		if (out_rows[i] < 0 || out_rows[i] >= n)
			return trail_error_set(err, TRAIL_EINTERNAL, "logits for row %d of %d", out_rows[i], n);
	size_t N = (size_t)n, want = need(m, N, *rmax, nout);
	if (want > m->wsn) {
		float *ws = trail_malloc(want * sizeof *ws);
		if (!ws)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory for a step of %d rows", n);
		trail_free(m->ws);
		m->ws = ws;
		m->wsn = want;
	}
	if (N > m->ordn) {
		rowkey *o = trail_malloc(N * sizeof *o);
		int *r = trail_malloc(N * sizeof *r);
		if (!o || !r) {
			trail_free(o), trail_free(r);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory for a step of %d rows", n);
		}
		trail_free(m->keys), trail_free(m->ord);
		m->keys = o;
		m->ord = r;
		m->ordn = N;
	}
	/* rows grouped by adapter, in row order within a group: each adapter's segment, read once per phase */
	for (int i = 0; i < n; i++)
		m->keys[i] = (rowkey){(uintptr_t)lora[i], i};
	qsort(m->keys, N, sizeof *m->keys, by_adapter);
	for (int i = 0; i < n; i++)
		m->ord[i] = m->keys[i].row;
	return TRAIL_OK;
}

/*
 * The workspace: the rows' activations, lnout [nout,C], then per thread
 * (scn floats each, from a 64-byte boundary): scores [P], LoRA hidden
 * [rmax] and a gemm pad 2 RB wide; then, in bf16, the rounded inputs of a
 * product, in int8 the rows' scales and zero points and their quantised
 * inputs (xfloats).
 */
static size_t kmax(const trail_infer *m)
{
	size_t k = m->llama ? (size_t)m->F : 4 * (size_t)m->c.n_embd;
	k = k > (size_t)m->D ? k : (size_t)m->D;
	return k > (size_t)m->c.n_embd ? k : (size_t)m->c.n_embd;
}

static size_t xfloats(const trail_infer *m, size_t N)
{
	size_t nr = (N + RB - 1) / RB * RB;
	if (m->prec == TRAIL_PREC_INT8)
		return 2 * nr + (nr * kmax(m) + 3) / 4 + 32;
	return m->prec == TRAIL_PREC_BF16 ? (nr * kmax(m) + 1) / 2 + 16 : 0;
}
static size_t thread_floats(const trail_infer *m, int rmax, size_t wide)
{
	/* bf16 emulated: also the block's inputs widened [RB,K] and a weight row [K], K <= wide */
	size_t emu = m->emu ? (size_t)(RB + 1) * wide + 64 : 0;
	return ((size_t)m->c.n_positions + (size_t)rmax + 2 * RB * wide + emu + 15) & ~(size_t)15;
}

static int pool_threads(void)
{
	return trail_pool_threads(trail_compute_pool());
}

/* x, ln, att, tmp [N,C]; qkv [N,3C]; h, hg [N,4C] */
static size_t gpt2_wide(const trail_infer *m)
{
	size_t C = (size_t)m->c.n_embd, V = (size_t)m->c.vocab_size;
	return V > 4 * C ? V : 4 * C;
}

static size_t need_gpt2(const trail_infer *m, size_t N, int rmax, int nout)
{
	size_t C = (size_t)m->c.n_embd;
	return N * C * 4 + N * 3 * C + N * 8 * C + (size_t)nout * C + 16 +
	       (size_t)pool_threads() * thread_floats(m, rmax, gpt2_wide(m)) + xfloats(m, N);
}

/* x, ln, tmp [N,C]; att, q [N,D]; k, v [N,Dkv]; g, u [N,F] */
static size_t llama_wide(const trail_infer *m)
{
	size_t w = (size_t)m->c.vocab_size;
	w = w > (size_t)m->F ? w : (size_t)m->F;
	w = w > (size_t)m->D ? w : (size_t)m->D;
	return w > (size_t)m->c.n_embd ? w : (size_t)m->c.n_embd;
}

static size_t need_llama(const trail_infer *m, size_t N, int rmax, int nout)
{
	size_t C = (size_t)m->c.n_embd, D = (size_t)m->D, Dkv = (size_t)m->Dkv, F = (size_t)m->F;
	return N * (3 * C + 2 * D + 2 * Dkv + 2 * F) + (size_t)nout * C + 16 +
	       (size_t)pool_threads() * thread_floats(m, rmax, llama_wide(m)) + xfloats(m, N);
}

/* The per-thread scratch after `end` (on a 64-byte boundary), then a product's rounded inputs for n rows. */
static void scratch(trail_infer *m, rowjob *k, float *end, int rmax, size_t wide, int n)
{
	uintptr_t a = ((uintptr_t)end + 63) & ~(uintptr_t)63;
	size_t nr = ((size_t)n + RB - 1) / RB * RB;
	k->scr = (float *)a;
	k->scn = thread_floats(m, rmax, wide);
	k->xb = (uint16_t *)(k->scr + (size_t)pool_threads() * k->scn);
	k->xs = (float *)k->xb;
	k->xz = (int32_t *)(k->xs + nr);
	k->xq = (uint8_t *)(((uintptr_t)(k->xz + nr) + 63) & ~(uintptr_t)63);
	k->P = m->c.n_positions;
	k->rmax = rmax;
}

#define GEMM(n, x, L, tw, y)                                          \
	do {                                                          \
		if ((rc = bgemm(m, &k, (n), (x), (L), (tw), (y), err))) \
			goto done;                                    \
	} while (0)

static int step_llama(trail_infer *m, int n, const int32_t *tok, const int *pos, trail_kvc *const *kv,
		      const trail_lora_w *const *lora, int nout, const int *out_rows, float *logits, trail_error *err)
{
	const trail_model_cfg *c = &m->c;
	int C = c->n_embd, D = m->D, Dkv = m->Dkv, F = m->F, rmax, rc;
	if ((rc = prepare(m, n, tok, pos, kv, lora, nout, out_rows, &rmax, need_llama, err)))
		return rc;
	size_t N = (size_t)n;
	rowjob k = {.m = m, .pos = pos, .kv = kv, .lora = lora, .ord = m->ord};
	int blas = openblas_get_num_threads(); /* one BLAS thread per product: see gemmjob */
	openblas_set_num_threads(1);
	k.x = m->ws, k.ln = k.x + N * C, k.tmp = k.ln + N * C, k.att = k.tmp + N * C, k.qkv = k.att + N * D;
	k.kk = k.qkv + N * D, k.vv = k.kk + N * Dkv, k.h = k.vv + N * Dkv, k.hg = k.h + N * F;
	float *lnout = k.hg + N * F;
	scratch(m, &k, lnout + (size_t)nout * C, rmax, llama_wide(m), n);
	for (int i = 0; i < n; i++)
		memcpy(k.x + (size_t)i * C, m->wte + (size_t)tok[i] * C, (size_t)C * sizeof *k.x);
	run_rows(m, &k, P_LN1, 0, n);
	for (int l = 0; l < c->n_layer; l++) {
		const ilin *L = m->L[l].lin;
		const ilin *qkv[3] = {&L[0], &L[1], &L[2]}, *gu[2] = {&L[4], &L[5]};
		float *yqkv[3] = {k.qkv, k.kk, k.vv}, *ygu[2] = {k.h, k.hg};
		if ((rc = bgemm_multi(m, &k, n, k.ln, qkv, yqkv, 3, err)))
			goto done;
		run_rows(m, &k, P_QKV, l, n);
		run_rows(m, &k, P_ATT, l, n);
		GEMM(n, k.att, &L[3], 1, k.tmp);
		run_rows(m, &k, P_PROJ, l, n);
		if ((rc = bgemm_multi(m, &k, n, k.ln, gu, ygu, 2, err)))
			goto done;
		run_rows(m, &k, P_FC, l, n);
		GEMM(n, k.h, &L[6], 1, k.tmp);
		run_rows(m, &k, P_MPROJ, l, n);
	}
	if (nout) {
		for (int i = 0; i < nout; i++)
			rmsnorm(lnout + (size_t)i * C, k.x + (size_t)out_rows[i] * C, m->lnfw, C, (float)c->norm_eps);
		GEMM(nout, lnout, &m->headl, 1, logits);
	}
done:
	openblas_set_num_threads(blas);
	return rc;
}

int trail_infer_step(trail_infer *m, int n, const int32_t *tok, const int *pos, trail_kvc *const *kv,
		     const trail_lora_w *const *lora, int nout, const int *out_rows, float *logits,
		     trail_error *err)
{
	const trail_model_cfg *c = &m->c;
	int C = c->n_embd, rmax, rc;
	if (n < 1)
		return TRAIL_OK;
	if (m->llama)
		return step_llama(m, n, tok, pos, kv, lora, nout, out_rows, logits, err);
	if ((rc = prepare(m, n, tok, pos, kv, lora, nout, out_rows, &rmax, need_gpt2, err)))
		return rc;
	size_t N = (size_t)n;
	rowjob k = {.m = m, .pos = pos, .kv = kv, .lora = lora, .ord = m->ord};
	int blas = openblas_get_num_threads(); /* one BLAS thread per product: see gemmjob */
	openblas_set_num_threads(1);
	k.x = m->ws, k.ln = k.x + N * C, k.att = k.ln + N * C, k.tmp = k.att + N * C, k.qkv = k.tmp + N * C;
	k.h = k.qkv + N * 3 * C, k.hg = k.h + N * 4 * C;
	float *lnout = k.hg + N * 4 * C;
	scratch(m, &k, lnout + (size_t)nout * C, rmax, gpt2_wide(m), n);
	for (int i = 0; i < n; i++)
		for (int c2 = 0; c2 < C; c2++)
			k.x[(size_t)i * C + c2] = m->wte[(size_t)tok[i] * C + c2] + m->wpe[(size_t)pos[i] * C + c2];
	run_rows(m, &k, P_LN1, 0, n);
	for (int l = 0; l < c->n_layer; l++) {
		const ilayer *Ly = &m->L[l];
		GEMM(n, k.ln, &Ly->lin[0], 0, k.qkv);
		run_rows(m, &k, P_QKV, l, n);
		run_rows(m, &k, P_ATT, l, n);
		GEMM(n, k.att, &Ly->lin[1], 0, k.tmp);
		run_rows(m, &k, P_PROJ, l, n);
		GEMM(n, k.ln, &Ly->lin[2], 0, k.h);
		run_rows(m, &k, P_FC, l, n);
		GEMM(n, k.hg, &Ly->lin[3], 0, k.tmp);
		run_rows(m, &k, P_MPROJ, l, n);
	}
	if (nout) {
		for (int i = 0; i < nout; i++)
			layernorm(lnout + (size_t)i * C, k.x + (size_t)out_rows[i] * C, m->lnfw, m->lnfb, C);
		GEMM(nout, lnout, &m->headl, 1, logits);
	}
done:
	openblas_set_num_threads(blas);
	return rc;
}

/* ---- precision -------------------------------------------------------------------- */

/* The bf16 product of shape LB x n x k, made once per model. */
static trail_bf16_mm *mm_of(trail_infer *m, int n, int k, trail_error *err)
{
	for (int i = 0; i < m->nmm; i++)
		if (m->mmt[i].n == n && m->mmt[i].k == k)
			return m->mmt[i].h;
	if (m->nmm == (int)(sizeof m->mmt / sizeof *m->mmt)) {
		trail_error_set(err, TRAIL_EINTERNAL, "too many product shapes");
		return NULL;
	}
	trail_bf16_mm *h = trail_bf16_mm_new(LB, n, k, err);
	if (h)
		m->mmt[m->nmm++] = (struct mmshape){n, k, h};
	return h;
}

/* A linear layer's products and the bytes of its bf16 weights (each block's from a 64-byte boundary). */
static int size_lin(trail_infer *m, ilin *L, size_t *bytes, trail_error *err)
{
	int N = L->out, K = L->in;
	if (m->emu) {
		*bytes += ((size_t)N * K * sizeof(uint16_t) + 63) & ~(size_t)63;
		return TRAIL_OK;
	}
	if (N >= CB && !(L->mm[0] = mm_of(m, CB, K, err)))
		return err ? err->code : TRAIL_EINTERNAL;
	if (N % CB && !(L->mm[1] = mm_of(m, N % CB, K, err)))
		return err ? err->code : TRAIL_EINTERNAL;
	L->pb[0] = L->mm[0] ? (trail_bf16_mm_packed_bytes(L->mm[0]) + 63) & ~(size_t)63 : 0;
	L->pb[1] = L->mm[1] ? (trail_bf16_mm_packed_bytes(L->mm[1]) + 63) & ~(size_t)63 : 0;
	*bytes += (size_t)(N / CB) * L->pb[0] + L->pb[1];
	return TRAIL_OK;
}

/* Its weights in bf16 as [out,in] (in tmp, unless emulated), packed per column block at *p, advanced past them. */
static int convert_lin(trail_infer *m, ilin *L, int transW, unsigned char **p, uint16_t *tmp, trail_error *err)
{
	int N = L->out, K = L->in;
	uint16_t *wb = m->emu ? (uint16_t *)*p : tmp;
	if (transW)
		trail_bf16_convert(wb, L->W, (size_t)N * K);
	else
		trail_bf16_convert_t(wb, L->W, K, N);
	if (m->emu) {
		L->Wb = wb;
		*p += ((size_t)N * K * sizeof(uint16_t) + 63) & ~(size_t)63;
		return TRAIL_OK;
	}
	L->Wp = *p;
	for (int c0 = 0; c0 < N; c0 += CB) {
		int edge = N - c0 < CB;
		if (trail_bf16_mm_pack(L->mm[edge], wb + (size_t)c0 * K, *p))
			return trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: packing bf16 weights %dx%d failed", N, K);
		*p += L->pb[edge];
	}
	return TRAIL_OK;
}

static void drop_lin(ilin *L)
{
	L->Wb = NULL, L->Wp = NULL, L->mm[0] = L->mm[1] = NULL, L->pb[0] = L->pb[1] = 0;
	L->qm[0] = L->qm[1] = NULL, L->qs = NULL, L->qsum = NULL;
}

/* Forget the bf16 or int8 weights (the products stay made, for a later return). */
static void drop_bf16(trail_infer *m)
{
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < m->nk; k++)
			drop_lin(&m->L[l].lin[k]);
	drop_lin(&m->headl);
	trail_free(m->bmem);
	m->bmem = NULL, m->bn = 0;
}

/* ---- int8 weights ---- */

/* The int8 product of shape LB x n x k, made once per model. */
static trail_i8_mm *qm_of(trail_infer *m, int n, int k, trail_error *err)
{
	for (int i = 0; i < m->nqm; i++)
		if (m->qmt[i].n == n && m->qmt[i].k == k)
			return m->qmt[i].h;
	if (m->nqm == (int)(sizeof m->qmt / sizeof *m->qmt)) {
		trail_error_set(err, TRAIL_EINTERNAL, "too many product shapes");
		return NULL;
	}
	trail_i8_mm *h = trail_i8_mm_new(LB, n, k, err);
	if (h)
		m->qmt[m->nqm++] = (struct qshape){n, k, h};
	return h;
}

#define A64(x) (((size_t)(x) + 63) & ~(size_t)63)

/* A linear layer's int8 products and its bytes: packed column blocks, then scales and sums [out]. */
static int size_q(trail_infer *m, ilin *L, size_t *bytes, trail_error *err)
{
	int N = L->out, K = L->in;
	if (N >= CB && !(L->qm[0] = qm_of(m, CB, K, err)))
		return err ? err->code : TRAIL_EINTERNAL;
	if (N % CB && !(L->qm[1] = qm_of(m, N % CB, K, err)))
		return err ? err->code : TRAIL_EINTERNAL;
	L->pb[0] = L->qm[0] ? A64(trail_i8_mm_packed_bytes(L->qm[0])) : 0;
	L->pb[1] = L->qm[1] ? A64(trail_i8_mm_packed_bytes(L->qm[1])) : 0;
	*bytes += (size_t)(N / CB) * L->pb[0] + L->pb[1] + 2 * A64((size_t)N * 4);
	return TRAIL_OK;
}

/*
 * W [N,K] (transW) or [K,N] to int8 rows q [N,K]: per output row j, the
 * scale s_j = max |W_j| / 127 and q = round(W_j / s_j) in [-127, 127]
 * (s_j = 0 and q = 0 for a row of zeros); sum_j = sum of q's row.
 */
static void quant_w(int8_t *q, float *s, int32_t *sum, const float *W, int K, int N, int transW)
{
	for (int j = 0; j < N; j++)
		s[j] = 0;
	for (int j = 0; transW && j < N; j++)
		for (int k = 0; k < K; k++)
			s[j] = fmaxf(s[j], fabsf(W[(size_t)j * K + k]));
	for (int k = 0; !transW && k < K; k++)
		for (int j = 0; j < N; j++)
			s[j] = fmaxf(s[j], fabsf(W[(size_t)k * N + j]));
	for (int j = 0; j < N; j++) {
		float inv = s[j] > 0 ? 127.0f / s[j] : 0;
		int32_t t = 0;
		for (int k = 0; k < K; k++) {
			float v = (transW ? W[(size_t)j * K + k] : W[(size_t)k * N + j]) * inv;
			v = v >= -127 ? v : -127;
			v = v <= 127 ? v : 127;
			int8_t b = (int8_t)(int)((v + QMAGIC) - QMAGIC);
			q[(size_t)j * K + k] = b;
			t += b;
		}
		s[j] = s[j] / 127.0f;
		sum[j] = t;
	}
}

/* Its weights quantised (into tmp [out,in]) and packed per column block at *p, then scales and sums; *p advanced. */
static int quant_lin(ilin *L, int transW, unsigned char **p, int8_t *tmp, trail_error *err)
{
	int N = L->out, K = L->in;
	unsigned char *w = *p;
	L->Wp = w;
	w += (size_t)(N / CB) * L->pb[0] + L->pb[1];
	L->qs = (float *)w;
	L->qsum = (int32_t *)(w + A64((size_t)N * 4));
	quant_w(tmp, L->qs, L->qsum, L->W, K, N, transW);
	for (int c0 = 0; c0 < N; c0 += CB) {
		int edge = N - c0 < CB;
		if (trail_i8_mm_pack(L->qm[edge], tmp + (size_t)c0 * K, L->Wp + (size_t)(c0 / CB) * L->pb[0]))
			return trail_error_set(err, TRAIL_EINTERNAL, "oneDNN: packing int8 weights %dx%d failed", N, K);
	}
	*p = w + 2 * A64((size_t)N * 4);
	return TRAIL_OK;
}

static int set_int8(trail_infer *m, trail_error *err)
{
	size_t bytes = 0, most = (size_t)m->headl.in * (size_t)m->headl.out;
	int rc = size_q(m, &m->headl, &bytes, err);
	for (int l = 0; !rc && l < m->c.n_layer; l++)
		for (int k = 0; !rc && k < m->nk; k++) {
			ilin *L = &m->L[l].lin[k];
			rc = size_q(m, L, &bytes, err);
			most = (size_t)L->in * (size_t)L->out > most ? (size_t)L->in * (size_t)L->out : most;
		}
	int8_t *tmp = NULL;
	if (!rc && (!(m->bmem = trail_malloc(bytes + 64)) || !(tmp = trail_malloc(most))))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory for the int8 weights");
	m->bn = bytes + 64;
	unsigned char *p = (unsigned char *)(((uintptr_t)m->bmem + 63) & ~(uintptr_t)63);
	if (!rc)
		rc = quant_lin(&m->headl, 1, &p, tmp, err);
	for (int l = 0; !rc && l < m->c.n_layer; l++)
		for (int k = 0; !rc && k < m->nk; k++)
			rc = quant_lin(&m->L[l].lin[k], m->llama, &p, tmp, err);
	trail_free(tmp);
	if (rc) {
		drop_bf16(m);
		return rc;
	}
	m->prec = TRAIL_PREC_INT8;
	return TRAIL_OK;
}

int trail_infer_set_precision(trail_infer *m, int prec, trail_error *err)
{
	if (prec == m->prec)
		return TRAIL_OK;
	drop_bf16(m);
	m->prec = TRAIL_PREC_FP32;
	m->emu = 0;
	if (prec == TRAIL_PREC_INT8)
		return set_int8(m, err);
	if (prec != TRAIL_PREC_BF16)
		return TRAIL_OK;
	/* oneDNN 2.6 has bf16 matmul from AVX-512 up; below, the products are emulated */
	trail_bf16_mm *probe = trail_bf16_mm_new(LB, CB, m->c.n_embd, NULL);
	m->emu = !probe;
	trail_bf16_mm_free(probe);
	size_t bytes = 0, most = (size_t)m->headl.in * (size_t)m->headl.out;
	int rc = size_lin(m, &m->headl, &bytes, err);
	for (int l = 0; !rc && l < m->c.n_layer; l++)
		for (int k = 0; !rc && k < m->nk; k++) {
			ilin *L = &m->L[l].lin[k];
			rc = size_lin(m, L, &bytes, err);
			most = (size_t)L->in * (size_t)L->out > most ? (size_t)L->in * (size_t)L->out : most;
		}
	uint16_t *tmp = NULL;
	if (!rc && (!(m->bmem = trail_malloc(bytes + 64)) || !(tmp = trail_malloc(most * sizeof *tmp))))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory for the bf16 weights");
	m->bn = bytes + 64;
	unsigned char *p = (unsigned char *)(((uintptr_t)m->bmem + 63) & ~(uintptr_t)63);
	if (!rc)
		rc = convert_lin(m, &m->headl, 1, &p, tmp, err);
	for (int l = 0; !rc && l < m->c.n_layer; l++)
		for (int k = 0; !rc && k < m->nk; k++)
			rc = convert_lin(m, &m->L[l].lin[k], m->llama, &p, tmp, err);
	trail_free(tmp);
	if (rc) {
		drop_bf16(m);
		m->emu = 0;
		return rc;
	}
	m->prec = TRAIL_PREC_BF16;
	return TRAIL_OK;
}

int trail_infer_precision(const trail_infer *m)
{
	return m->prec;
}

size_t trail_infer_step_bytes(const trail_infer *m)
{
	if (m->prec != TRAIL_PREC_FP32)
		return m->bn - 64; /* every block of every converted weight (int8: and its scales and sums), padding included */
	size_t n = (size_t)m->headl.in * (size_t)m->headl.out;
	for (int l = 0; l < m->c.n_layer; l++)
		for (int k = 0; k < m->nk; k++)
			n += (size_t)m->L[l].lin[k].in * (size_t)m->L[l].lin[k].out;
	return n * sizeof(float);
}
