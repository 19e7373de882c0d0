/*
 * GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks of
 * causal self-attention and a GELU MLP on Conv1D layers, the tied head.
 * The architecture behind model_int.h's interface: config, the tensors'
 * layout and Hugging Face names, initialisation, forward and backward on
 * the kernels of kernels.c. model.c does the rest.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

/* ---- configuration ------------------------------------------------------------------ */

int trail_gpt2_config_parse(const json_t *j, trail_model_cfg *c, trail_error *err)
{
	static const char *keys[] = {"n_layer", "n_head", "n_embd", "n_positions", "vocab_size"};
	int *dst[] = {&c->n_layer, &c->n_head, &c->n_embd, &c->n_positions, &c->vocab_size};
	if (!json_is_object(j))
		return trail_error_set(err, TRAIL_EDATA, "config: not a JSON object");
	for (int i = 0; i < 5; i++) {
		json_t *v = json_object_get(j, keys[i]);
		/* Hugging Face also writes n_ctx; older configs have only it */
		if (!v && i == 3)
			v = json_object_get(j, "n_ctx");
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 20))
			return trail_error_set(err, TRAIL_EDATA, "config: %s must be a positive integer", keys[i]);
		*dst[i] = (int)json_integer_value(v);
	}
	if (c->n_embd % c->n_head)
		return trail_error_set(err, TRAIL_EDATA, "config: n_embd %d is not a multiple of n_head %d",
				       c->n_embd, c->n_head);
	if ((double)trail_gpt2_num_params(c) > 1e10)
		return trail_error_set(err, TRAIL_ELIMIT, "config: %.3g parameters is beyond this implementation",
				       (double)trail_gpt2_num_params(c));
	const char *act = json_string_value(json_object_get(j, "activation_function"));
	if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
		return trail_error_set(err, TRAIL_EDATA, "config: activation_function %s (only gelu_new)", act);
	return TRAIL_OK;
}

json_t *trail_gpt2_config_json(const trail_model_cfg *c)
{
	return json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:b}", "model_type", "gpt2",
			 "architectures", "GPT2LMHeadModel", "n_layer", c->n_layer, "n_head", c->n_head,
			 "n_embd", c->n_embd, "n_positions", c->n_positions, "n_ctx", c->n_positions,
			 "vocab_size", c->vocab_size, "activation_function", "gelu_new",
			 "layer_norm_epsilon", 1e-5, "tie_word_embeddings", 1);
}

size_t trail_gpt2_num_params(const trail_model_cfg *c)
{
	size_t C = (size_t)c->n_embd;
	size_t per = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * 4 * C + 4 * C + 4 * C * C + C;
	return (size_t)c->vocab_size * C + (size_t)c->n_positions * C + (size_t)c->n_layer * per + 2 * C;
}

/* ---- tensors ----------------------------------------------------------------------- */

/* GPT-2's tensors and activations, beside the model's arenas. */
typedef struct trail_layer {
	float *ln1w, *ln1b, *ln2w, *ln2b, *dln1w, *dln1b, *dln2w, *dln2b;
	trail_lin attn, aproj, fc, mproj;
	/* activations of the last forward */
	float *ln1, *ln1m, *ln1r, *qkv, *att, *atty, *res1, *ln2, *ln2m, *ln2r, *fch, *fchg, *res2;
} trail_layer;

typedef struct gpt2 {
	float *wte, *wpe, *lnfw, *lnfb, *dwte, *dwpe, *dlnfw, *dlnfb;
	trail_layer *L;
	float *x0, *lnf, *lnfm, *lnfr; /* activations */
} gpt2;

#define G(m) ((gpt2 *)(m)->arch_state)

static int new_state(trail_model *m)
{
	gpt2 *g = trail_calloc(1, sizeof *g);
	if (!g)
		return TRAIL_ENOMEM;
	m->arch_state = g;
	m->nlin = 4 * m->c.n_layer;
	if (!(g->L = trail_calloc((size_t)m->c.n_layer, sizeof *g->L)) ||
	    !(m->lin = trail_calloc((size_t)m->nlin, sizeof *m->lin)))
		return TRAIL_ENOMEM;
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &g->L[l];
		trail_lin *ls[4] = {&y->attn, &y->aproj, &y->fc, &y->mproj};
		for (int k = 0; k < 4; k++)
			m->lin[4 * l + k] = ls[k];
	}
	return TRAIL_OK;
}

static void free_state(trail_model *m)
{
	if (m->arch_state)
		trail_free(G(m)->L);
	trail_free(m->arch_state);
	m->arch_state = NULL;
}

static size_t num_tensors(const trail_model_cfg *c)
{
	return 4 + 12 * (size_t)c->n_layer;
}

/* Hugging Face's causal-mask buffers and the tied head hold no parameter. */
static int extra_tensor(const char *nm, const char *bare)
{
	size_t bl = strlen(bare);
	return !strcmp(nm, "lm_head.weight") ||
	       (!strncmp(bare, "h.", 2) && ((bl > 10 && !strcmp(bare + bl - 10, ".attn.bias")) ||
					    (bl > 17 && !strcmp(bare + bl - 17, ".attn.masked_bias"))));
}

/*
 * Lay the views out in an arena (parameters, or gradients when grads; a
 * NULL arena sets every gradient view to NULL, which freezes the base):
 * wte, wpe, then per layer ln_1, c_attn, attn.c_proj, ln_2, c_fc,
 * mlp.c_proj (weight before bias), then ln_f.
 */
static void bind(trail_model *m, float *base, int grads)
{
	gpt2 *g = G(m);
	size_t C = (size_t)m->c.n_embd, o = 0;
#define TAKE(pp, gp, n)                         \
	do {                                    \
		*(grads ? &(gp) : &(pp)) = base ? base + o : NULL; \
		o += (n);                       \
	} while (0)
	TAKE(g->wte, g->dwte, (size_t)m->c.vocab_size * C);
	TAKE(g->wpe, g->dwpe, (size_t)m->c.n_positions * C);
	static const char *nm[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &g->L[l];
		size_t io[4][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
		TAKE(y->ln1w, y->dln1w, C);
		TAKE(y->ln1b, y->dln1b, C);
		for (int k = 0; k < 4; k++) {
			trail_lin *L = m->lin[4 * l + k];
			if (k == 2) {
				TAKE(y->ln2w, y->dln2w, C);
				TAKE(y->ln2b, y->dln2b, C);
			}
			L->in = (int)io[k][0];
			L->out = (int)io[k][1];
			TAKE(L->W, L->dW, io[k][0] * io[k][1]);
			TAKE(L->b, L->db, io[k][1]);
			snprintf(L->name, sizeof L->name, "h.%d.%s", l, nm[k]);
		}
	}
	TAKE(g->lnfw, g->dlnfw, C);
	TAKE(g->lnfb, g->dlnfb, C);
#undef TAKE
}

static void init(trail_model *m, uint64_t seed)
{
	gpt2 *g = G(m);
	const trail_model_cfg *c = &m->c;
	uint64_t s = seed;
	size_t C = (size_t)c->n_embd;
	double proj = 0.02 / sqrt(2.0 * c->n_layer);
	trail_rng_normal(g->wte, (size_t)c->vocab_size * C, 0.02, &s);
	trail_rng_normal(g->wpe, (size_t)c->n_positions * C, 0.01, &s);
	for (int l = 0; l < c->n_layer; l++) {
		trail_layer *y = &g->L[l];
		for (size_t i = 0; i < C; i++)
			y->ln1w[i] = y->ln2w[i] = 1;
		trail_rng_normal(y->attn.W, C * 3 * C, 0.02, &s);
		trail_rng_normal(y->aproj.W, C * C, proj, &s);
		trail_rng_normal(y->fc.W, C * 4 * C, 0.02, &s);
		trail_rng_normal(y->mproj.W, 4 * C * C, proj, &s);
	}
	for (size_t i = 0; i < C; i++)
		g->lnfw[i] = 1;
}

/* Every parameter with its GPT-2 name, in arena order; v has 4 + 12 L entries. */
static size_t tensors(const trail_model *m, trail_param *v)
{
	const gpt2 *g = G(m);
	size_t n = 0, C = (size_t)m->c.n_embd;
#define ADD(ptr, d0, d1, nd, ...)                                            \
	do {                                                                 \
		snprintf(v[n].name, sizeof v[n].name, __VA_ARGS__);          \
		v[n].data = (ptr);                                           \
		v[n].shape[0] = (int64_t)(d0);                               \
		v[n].shape[1] = (int64_t)(d1);                               \
		v[n].ndim = (nd);                                            \
		n++;                                                         \
	} while (0)
	ADD(g->wte, m->c.vocab_size, C, 2, "wte.weight");
	ADD(g->wpe, m->c.n_positions, C, 2, "wpe.weight");
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &g->L[l];
		ADD(y->ln1w, C, 0, 1, "h.%d.ln_1.weight", l);
		ADD(y->ln1b, C, 0, 1, "h.%d.ln_1.bias", l);
		ADD(y->ln2w, C, 0, 1, "h.%d.ln_2.weight", l);
		ADD(y->ln2b, C, 0, 1, "h.%d.ln_2.bias", l);
		for (int k = 0; k < 4; k++) {
			const trail_lin *L = m->lin[4 * l + k];
			ADD(L->W, L->in, L->out, 2, "%s.weight", L->name);
			ADD(L->b, L->out, 0, 1, "%s.bias", L->name);
		}
	}
	ADD(g->lnfw, C, 0, 1, "ln_f.weight");
	ADD(g->lnfb, C, 0, 1, "ln_f.bias");
#undef ADD
	return n;
}

/* ---- activations -------------------------------------------------------------------- */

static int acts(trail_model *m, int B, int T, trail_error *err)
{
	gpt2 *g = G(m);
	size_t N = (size_t)B * (size_t)T, C = (size_t)m->c.n_embd, V = (size_t)m->c.vocab_size;
	size_t NH = (size_t)m->c.n_head, r = m->lp ? (size_t)m->lc.r : 0;
	if ((int)N <= m->cap && T <= m->capT) { /* then B T^2 <= cap capT too */
		m->B = B;
		m->T = T;
		return TRAIL_OK;
	}
	/* per layer: ln1, qkv, atty, res1, ln2, fch, fchg, res2 = 16C per row, att, LN stats, LoRA u */
	size_t per = N * 16 * C + (size_t)B * NH * (size_t)T * (size_t)T + 4 * N + 4 * N * r;
	size_t keep = m->keep_io ? N * 12 * C : 0; /* the room stays until the next reallocation */
	/* scratch: dres | dln | dbig [4C] | dqkv [3C] | LoRA [r] per row, then 2 T^2 for attention */
	size_t scratch = N * (9 * C + r) + 2 * (size_t)T * T;
	size_t total = 2 * N * C + 2 * N + 2 * N * V + (size_t)m->c.n_layer * (per + keep) + scratch;
	float *p = trail_model_arena(m, N, total, err);
	if (!p)
		return TRAIL_ENOMEM;
	ARENA_TAKE(g->x0, N * C);
	ARENA_TAKE(g->lnf, N * C);
	ARENA_TAKE(g->lnfm, N);
	ARENA_TAKE(g->lnfr, N);
	ARENA_TAKE(m->logits, N * V);
	ARENA_TAKE(m->dlogits, N * V);
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &g->L[l];
		ARENA_TAKE(y->ln1, N * C);
		ARENA_TAKE(y->ln1m, N);
		ARENA_TAKE(y->ln1r, N);
		ARENA_TAKE(y->qkv, N * 3 * C);
		ARENA_TAKE(y->att, (size_t)B * NH * (size_t)T * (size_t)T);
		ARENA_TAKE(y->atty, N * C);
		ARENA_TAKE(y->res1, N * C);
		ARENA_TAKE(y->ln2, N * C);
		ARENA_TAKE(y->ln2m, N);
		ARENA_TAKE(y->ln2r, N);
		ARENA_TAKE(y->fch, N * 4 * C);
		ARENA_TAKE(y->fchg, N * 4 * C);
		ARENA_TAKE(y->res2, N * C);
		for (int k = 0; k < 4; k++)
			p = trail_lin_rooms(m, m->lin[4 * l + k], p, N);
	}
	ARENA_TAKE(m->scratch, scratch);
	trail_model_arena_done(m, B, T);
	return TRAIL_OK;
}

/* ---- forward and backward ------------------------------------------------------------ */

/* x0 [N,C] = wte[tok] + wpe[t], by rows; the backward's dwte, dwpe by columns, the rows in order */
typedef struct embj {
	trail_model *m;
	float *x;
	const float *d;
	int per;
} embj;

static void emb_fwd_item(void *ctx, int it, int t)
{
	const embj *j = ctx;
	trail_model *m = j->m;
	gpt2 *g = G(m);
	int C = m->c.n_embd, T = m->T, N = m->B * m->T, i1 = (it + 1) * j->per < N ? (it + 1) * j->per : N;
	for (int i = it * j->per; i < i1; i++) {
		const float *e = g->wte + (size_t)m->tok[i] * C, *pe = g->wpe + (size_t)(i % T) * C;
		float *x = g->x0 + (size_t)i * C;
		for (int c = 0; c < C; c++)
			x[c] = e[c] + pe[c];
	}
}

enum { EMB_COLS = 64 };

static void emb_bwd_item(void *ctx, int it, int t)
{
	const embj *j = ctx;
	trail_model *m = j->m;
	gpt2 *g = G(m);
	int C = m->c.n_embd, T = m->T, N = m->B * m->T, c0 = it * EMB_COLS, c1 = c0 + EMB_COLS < C ? c0 + EMB_COLS : C;
	for (int i = 0; i < N; i++) {
		float *dw = g->dwte + (size_t)m->tok[i] * C, *dp = g->dwpe + (size_t)(i % T) * C;
		const float *d = j->d + (size_t)i * C;
		for (int c = c0; c < c1; c++) {
			dw[c] += d[c];
			dp[c] += d[c];
		}
	}
}

/* The tied head's products: bf16 when the precision says so, lnf and wte kept for the backward. */
static void head_gemm(int naive, int keep, int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
		      int ldb, float beta, float *C, int ldc)
{
	if (naive)
		trail_k_sgemm(1, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
	else
		trail_gemm_x(TRAIL_G_BF16 | keep, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

static void forward(trail_model *m)
{
	gpt2 *g = G(m);
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, r = m->lp ? m->lc.r : 0;
	int B = m->B, T = m->T, N = B * T;
	float s = (float)m->scale;
	trail_bf16_pass(); /* the weights may have moved since the last forward */
	embj ej = {.m = m, .per = 16384 / C > 0 ? 16384 / C : 1};
	trail_pool_run(trail_compute_pool(), (N + ej.per - 1) / ej.per, emb_fwd_item, &ej);
	const float *x = g->x0;
	float *tmp = m->scratch;
	size_t NC = (size_t)N * C;
	for (int l = 0; l < m->c.n_layer; l++) {
		trail_layer *y = &g->L[l];
		/* res1 = x + attn.c_proj(attention(c_attn(ln_1(x)))) */
		trail_k_layernorm_fwd(y->ln1, y->ln1m, y->ln1r, x, y->ln1w, y->ln1b, N, C);
		trail_k_linear_fwd(m->naive, &y->attn, r, s, y->qkv, y->ln1, N);
		trail_k_attention_fwd(m->naive, y->atty, y->att, y->qkv, B, T, C, NH);
		trail_k_linear_fwd(m->naive, &y->aproj, r, s, tmp, y->atty, N);
		trail_k_add(y->res1, x, tmp, NC);
		/* res2 = res1 + mlp.c_proj(gelu(c_fc(ln_2(res1)))) */
		trail_k_layernorm_fwd(y->ln2, y->ln2m, y->ln2r, y->res1, y->ln2w, y->ln2b, N, C);
		trail_k_linear_fwd(m->naive, &y->fc, r, s, y->fch, y->ln2, N);
		trail_k_gelu_fwd(y->fchg, y->fch, (size_t)N * 4 * C);
		trail_k_linear_fwd(m->naive, &y->mproj, r, s, tmp, y->fchg, N);
		trail_k_add(y->res2, y->res1, tmp, NC);
		x = y->res2;
	}
	trail_k_layernorm_fwd(g->lnf, g->lnfm, g->lnfr, x, g->lnfw, g->lnfb, N, C);
	/* logits [N,V] = lnf [N,C] wte^T (the tied head) */
	head_gemm(m->naive, TRAIL_G_KEEP_A | TRAIL_G_KEEP_B, 0, 1, N, V, C, g->lnf, C, g->wte, C, 0.0f, m->logits, V);
}

static void backward(trail_model *m)
{
	gpt2 *g = G(m);
	int C = m->c.n_embd, V = m->c.vocab_size, NH = m->c.n_head, B = m->B, T = m->T, N = B * T;
	int r = m->lp ? m->lc.r : 0, nv = m->naive;
	float s = (float)m->scale;
	size_t NC = (size_t)N * C;
	enum { KA = TRAIL_G_KEEP_A, KB = TRAIL_G_KEEP_B };
	/* scratch: dres [N,C] | dln [N,C] | dbig [N,4C] | dqkv [N,3C] | LoRA [N,r] | attention [2T^2] */
	float *dres = m->scratch, *dln = dres + NC, *dbig = dln + NC, *dqkv = dbig + 4 * NC;
	float *dlora = dqkv + 3 * NC, *datt = dlora + (size_t)N * r;
	/* head: dwte [V,C] += dlogits^T lnf;  dlnf [N,C] = dlogits wte */
	if (g->dwte)
		head_gemm(nv, KA | KB, 1, 0, V, C, N, m->dlogits, V, g->lnf, C, 1.0f, g->dwte, C);
	head_gemm(nv, KA | KB, 0, 0, N, C, V, m->dlogits, V, g->wte, C, 0.0f, dln, C);
	trail_bf16_drop(m->dlogits);
	trail_k_zero(dres, NC);
	const float *xlast = m->c.n_layer ? g->L[m->c.n_layer - 1].res2 : g->x0;
	trail_k_layernorm_bwd(dres, g->dlnfw, g->dlnfb, dln, xlast, g->lnfw, g->lnfm, g->lnfr, N, C);
	/* dres carries the gradient of the residual stream down the layers */
	for (int l = m->c.n_layer - 1; l >= 0; l--) {
		trail_layer *y = &g->L[l];
		const float *xin = l ? g->L[l - 1].res2 : g->x0;
		int first = l == 0 && !g->dwte; /* nothing below needs dx: embeddings frozen */
		trail_k_zero(dbig, 4 * NC);
		trail_k_linear_bwd(nv, &y->mproj, r, s, dbig, dres, N, dlora);
		trail_k_gelu_bwd(dbig, y->fch, dbig, 4 * NC);
		trail_k_zero(dln, NC);
		trail_k_linear_bwd(nv, &y->fc, r, s, dln, dbig, N, dlora);
		trail_k_layernorm_bwd(dres, y->dln2w, y->dln2b, dln, y->res1, y->ln2w, y->ln2m, y->ln2r, N, C);
		trail_k_zero(dln, NC); /* d atty */
		trail_k_linear_bwd(nv, &y->aproj, r, s, dln, dres, N, dlora);
		trail_k_zero(dqkv, 3 * NC);
		trail_k_attention_bwd(nv, dqkv, dln, y->att, y->qkv, B, T, C, NH, datt);
		if (first && !y->dln1w) { /* LoRA on the first layer: only its own gradients remain */
			trail_k_linear_bwd(nv, &y->attn, r, s, NULL, dqkv, N, dlora);
			break;
		}
		trail_k_zero(dln, NC);
		trail_k_linear_bwd(nv, &y->attn, r, s, dln, dqkv, N, dlora);
		trail_k_layernorm_bwd(dres, y->dln1w, y->dln1b, dln, xin, y->ln1w, y->ln1m, y->ln1r, N, C);
	}
	if (g->dwte) {
		embj ej = {.m = m, .d = dres};
		trail_pool_run(trail_compute_pool(), (C + EMB_COLS - 1) / EMB_COLS, emb_bwd_item, &ej);
	}
}

static const char *const kinds[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

extern const trail_arch trail_arch_gpt2;

const trail_arch trail_arch_gpt2 = {
	.model_type = "gpt2",
	.hf_class = "GPT2LMHeadModel",
	.prefix = "transformer.",
	.blocks = "transformer.h",
	.nkinds = 4,
	.kind_bit0 = 0,
	.conv1d = 1,
	.kinds = kinds,
	.config_parse = trail_gpt2_config_parse,
	.config_json = trail_gpt2_config_json,
	.num_params = trail_gpt2_num_params,
	.num_tensors = num_tensors,
	.new_state = new_state,
	.free_state = free_state,
	.bind = bind,
	.init = init,
	.tensors = tensors,
	.extra_tensor = extra_tensor,
	.acts = acts,
	.forward = forward,
	.backward = backward,
};
