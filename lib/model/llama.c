/*
 * The Llama family (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM):
 * token embeddings, pre-RMSNorm blocks of grouped-query attention with
 * rotary positions and a SwiGLU MLP on nn.Linear layers (W [out,in]), a
 * final RMSNorm and a head tied to the embeddings or not. Qwen2 adds biases
 * to q, k and v; Mistral is Llama where its sliding window does not bite.
 * The architecture behind model_int.h's interface, on kernels.c's kernels.
 *
 * Shapes: C hidden, nh heads and nkv key/value heads of hd (D = nh hd,
 * Dkv = nkv hd), F the MLP width. Attention runs on a packed [N, 3D] q|k|v
 * with each key/value head repeated for its nh/nkv query heads, so the
 * causal kernel is GPT-2's; its key and value gradients are summed back
 * over the group.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

enum { Q, K, V, O, GATE, UP, DOWN, NKINDS };

typedef struct lay {
	float *ln1w, *ln2w, *dln1w, *dln2w;
	trail_lin lin[NKINDS];
	/* activations of the last forward */
	float *h1, *r1, *q, *k, *v, *qkv, *att, *atty, *res1, *h2, *r2, *g, *u, *a, *res2;
} lay;

typedef struct llama {
	float *emb, *norm, *head, *demb, *dnorm, *dhead; /* head NULL when tied */
	lay *L;
	float *inv_freq, *cs, *sn; /* [hd/2], and the tables [n_positions, hd/2] */
	float *x0, *hn, *hnr;      /* activations */
	float *dres, *dln, *dq, *dk, *dv, *datty, *dqkv, *dF, *dg, *du, *dlora, *datt; /* backward scratch */
} llama;

#define LL(m) ((llama *)(m)->arch_state)

static size_t num_params(const trail_model_cfg *c);

static int D_(const trail_model_cfg *c)
{
	return c->n_head * c->head_dim;
}

static int Dkv_(const trail_model_cfg *c)
{
	return c->n_kv_head * c->head_dim;
}

/* ---- configuration ------------------------------------------------------------------ */

static int get_int(const json_t *j, const char *k, int def, int *out, trail_error *err)
{
	json_t *v = json_object_get(j, k);
	if (!v || json_is_null(v)) {
		if (def < 0)
			return trail_error_set(err, TRAIL_EDATA, "config: %s must be a positive integer", k);
		*out = def;
		return TRAIL_OK;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24))
		return trail_error_set(err, TRAIL_EDATA, "config: %s must be a positive integer", k);
	*out = (int)json_integer_value(v);
	return TRAIL_OK;
}

static int get_num(const json_t *j, const char *k, double def, double *out, trail_error *err)
{
	json_t *v = json_object_get(j, k);
	if (!v || json_is_null(v)) {
		*out = def;
		return TRAIL_OK;
	}
	if (!json_is_number(v) || !(json_number_value(v) > 0))
		return trail_error_set(err, TRAIL_EDATA, "config: %s must be a positive number", k);
	*out = json_number_value(v);
	return TRAIL_OK;
}

/* A field that would change the math to something not built here is refused by name. */
static int refuse_true(const json_t *j, const char *k, trail_error *err)
{
	if (json_is_true(json_object_get(j, k)))
		return trail_error_set(err, TRAIL_EDATA, "config: %s is true, which this implementation does not compute", k);
	return TRAIL_OK;
}

static int parse(const json_t *j, trail_model_cfg *c, int arch, trail_error *err)
{
	int rc;
	if ((rc = get_int(j, "num_hidden_layers", -1, &c->n_layer, err)) ||
	    (rc = get_int(j, "num_attention_heads", -1, &c->n_head, err)) ||
	    (rc = get_int(j, "hidden_size", -1, &c->n_embd, err)) ||
	    (rc = get_int(j, "max_position_embeddings", -1, &c->n_positions, err)) ||
	    (rc = get_int(j, "vocab_size", -1, &c->vocab_size, err)) ||
	    (rc = get_int(j, "intermediate_size", -1, &c->n_inner, err)) ||
	    (rc = get_int(j, "num_key_value_heads", c->n_head, &c->n_kv_head, err)) ||
	    (rc = get_int(j, "head_dim", c->n_embd / c->n_head, &c->head_dim, err)) ||
	    (rc = get_num(j, "rms_norm_eps", 1e-6, &c->norm_eps, err)) ||
	    (rc = get_num(j, "rope_theta", 10000, &c->rope_theta, err)) || (rc = refuse_true(j, "mlp_bias", err)) ||
	    (rc = refuse_true(j, "attention_bias", err)))
		return rc;
	if (c->n_head % c->n_kv_head)
		return trail_error_set(err, TRAIL_EDATA, "config: num_attention_heads %d is not a multiple of num_key_value_heads %d",
				       c->n_head, c->n_kv_head);
	if (c->head_dim % 2)
		return trail_error_set(err, TRAIL_EDATA, "config: head_dim %d is odd (rotary positions pair halves)",
				       c->head_dim);
	const char *act = json_string_value(json_object_get(j, "hidden_act"));
	if (act && strcmp(act, "silu"))
		return trail_error_set(err, TRAIL_EDATA, "config: hidden_act %s (only silu)", act);
	json_t *tie = json_object_get(j, "tie_word_embeddings");
	/* Hugging Face's default differs: Llama and Mistral untied, Qwen2 as its config says */
	c->untied = tie ? !json_is_true(tie) : arch != TRAIL_ARCH_QWEN2;
	c->qkv_bias = arch == TRAIL_ARCH_QWEN2;
	if (arch == TRAIL_ARCH_QWEN2 && json_is_true(json_object_get(j, "use_sliding_window")))
		return trail_error_set(err, TRAIL_EDATA, "config: use_sliding_window is true, which this implementation does not compute");
	json_t *sw = json_object_get(j, "sliding_window");
	if (arch == TRAIL_ARCH_MISTRAL && json_is_integer(sw) && json_integer_value(sw) < c->n_positions)
		return trail_error_set(err, TRAIL_EDATA, "config: sliding_window %lld is shorter than max_position_embeddings %d",
				       (long long)json_integer_value(sw), c->n_positions);
	json_t *rs = json_object_get(j, "rope_scaling");
	if (rs && !json_is_null(rs)) {
		const char *t = json_string_value(json_object_get(rs, "rope_type"));
		if (!t)
			t = json_string_value(json_object_get(rs, "type"));
		if (!t || (strcmp(t, "linear") && strcmp(t, "llama3") && strcmp(t, "default")))
			return trail_error_set(err, TRAIL_EDATA, "config: rope_scaling of type %s (linear and llama3 only)",
					       t ? t : "(none)");
		if (!strcmp(t, "default"))
			goto scaled;
		c->rope_type = !strcmp(t, "linear") ? TRAIL_ROPE_LINEAR : TRAIL_ROPE_LLAMA3;
		if ((rc = get_num(rs, "factor", -1, &c->rope_factor, err)))
			return rc;
		if (!(c->rope_factor > 0))
			return trail_error_set(err, TRAIL_EDATA, "config: rope_scaling needs a positive factor");
		if (c->rope_type == TRAIL_ROPE_LLAMA3 &&
		    ((rc = get_num(rs, "low_freq_factor", 1, &c->rope_low, err)) ||
		     (rc = get_num(rs, "high_freq_factor", 4, &c->rope_high, err)) ||
		     (rc = get_int(rs, "original_max_position_embeddings", 8192, &c->rope_orig, err))))
			return rc;
		if (c->rope_type == TRAIL_ROPE_LLAMA3 && !(c->rope_high > c->rope_low))
			return trail_error_set(err, TRAIL_EDATA, "config: rope_scaling needs high_freq_factor > low_freq_factor");
	}
scaled:
	if ((double)num_params(c) > 1e10)
		return trail_error_set(err, TRAIL_ELIMIT, "config: %.3g parameters is beyond this implementation",
				       (double)num_params(c));
	return TRAIL_OK;
}

static int parse_llama(const json_t *j, trail_model_cfg *c, trail_error *err)
{
	return parse(j, c, TRAIL_ARCH_LLAMA, err);
}

static int parse_qwen2(const json_t *j, trail_model_cfg *c, trail_error *err)
{
	return parse(j, c, TRAIL_ARCH_QWEN2, err);
}

static int parse_mistral(const json_t *j, trail_model_cfg *c, trail_error *err)
{
	return parse(j, c, TRAIL_ARCH_MISTRAL, err);
}

static json_t *config_json(const trail_model_cfg *c)
{
	static const char *type[] = {[TRAIL_ARCH_LLAMA] = "llama", [TRAIL_ARCH_QWEN2] = "qwen2",
				     [TRAIL_ARCH_MISTRAL] = "mistral"};
	static const char *cls[] = {[TRAIL_ARCH_LLAMA] = "LlamaForCausalLM", [TRAIL_ARCH_QWEN2] = "Qwen2ForCausalLM",
				    [TRAIL_ARCH_MISTRAL] = "MistralForCausalLM"};
	json_t *j = json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:s}", "model_type",
			      type[c->arch], "architectures", cls[c->arch], "num_hidden_layers", c->n_layer,
			      "num_attention_heads", c->n_head, "num_key_value_heads", c->n_kv_head, "hidden_size",
			      c->n_embd, "intermediate_size", c->n_inner, "head_dim", c->head_dim,
			      "max_position_embeddings", c->n_positions, "vocab_size", c->vocab_size, "rms_norm_eps",
			      c->norm_eps, "rope_theta", c->rope_theta, "tie_word_embeddings", !c->untied, "hidden_act",
			      "silu");
	if (j && c->rope_type == TRAIL_ROPE_LINEAR)
		json_object_set_new(j, "rope_scaling", json_pack("{s:s, s:f}", "rope_type", "linear", "factor", c->rope_factor));
	else if (j && c->rope_type == TRAIL_ROPE_LLAMA3)
		json_object_set_new(j, "rope_scaling",
				    json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", c->rope_factor,
					      "low_freq_factor", c->rope_low, "high_freq_factor", c->rope_high,
					      "original_max_position_embeddings", c->rope_orig));
	if (j && c->arch == TRAIL_ARCH_MISTRAL)
		json_object_set_new(j, "sliding_window", json_null());
	return j;
}

static size_t num_params(const trail_model_cfg *c)
{
	size_t C = (size_t)c->n_embd, D = (size_t)D_(c), Dkv = (size_t)Dkv_(c), F = (size_t)c->n_inner;
	size_t per = 2 * C + C * D + 2 * C * Dkv + D * C + 3 * C * F + (c->qkv_bias ? D + 2 * Dkv : 0);
	return (size_t)c->vocab_size * C * (c->untied ? 2 : 1) + (size_t)c->n_layer * per + C;
}

static size_t num_tensors(const trail_model_cfg *c)
{
	return 3 + (size_t)c->n_layer * (9 + 3 * (size_t)c->qkv_bias);
}

/* ---- tensors ----------------------------------------------------------------------- */

static const char *const kinds[NKINDS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
					   "self_attn.o_proj", "mlp.gate_proj",     "mlp.up_proj",
					   "mlp.down_proj"};

static void free_state(trail_model *m)
{
	llama *g = m->arch_state;
	if (g) {
		trail_free(g->L);
		trail_free(g->inv_freq);
		trail_free(g->cs);
		trail_free(g->sn);
	}
	trail_free(g);
	m->arch_state = NULL;
}

/* Hugging Face's rotary frequency i of a head, with rope_scaling applied, in double. */
static double rope_freq(const trail_model_cfg *c, int i)
{
	int hd = c->head_dim;
	double f = 1.0 / pow(c->rope_theta, (double)(2 * i) / hd);
	if (c->rope_type == TRAIL_ROPE_LINEAR)
		f /= c->rope_factor;
	else if (c->rope_type == TRAIL_ROPE_LLAMA3) {
		double wl = 2 * M_PI / f, lo = c->rope_orig / c->rope_low, hi = c->rope_orig / c->rope_high;
		if (wl > lo)
			f /= c->rope_factor;
		else if (wl >= hi) {
			double s = (c->rope_orig / wl - c->rope_low) / (c->rope_high - c->rope_low);
			f = (1 - s) * f / c->rope_factor + s * f;
		}
	}
	return f;
}

void trail_rope_inv_freq(const trail_model_cfg *c, float *inv)
{
	for (int i = 0; i < c->head_dim / 2; i++)
		inv[i] = (float)rope_freq(c, i);
}

/* llama.cpp's rope_freqs.weight: the unscaled frequencies over the scaled ones (1 exactly where unscaled). */
void trail_rope_freq_factors(const trail_model_cfg *c, float *ff)
{
	for (int i = 0; i < c->head_dim / 2; i++)
		ff[i] = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / c->head_dim) / rope_freq(c, i));
}

static int new_state(trail_model *m)
{
	const trail_model_cfg *c = &m->c;
	llama *g = trail_calloc(1, sizeof *g);
	if (!g)
		return TRAIL_ENOMEM;
	m->arch_state = g;
	m->nlin = NKINDS * c->n_layer;
	size_t h2 = (size_t)c->head_dim / 2, P = (size_t)c->n_positions;
	if (!(g->L = trail_calloc((size_t)c->n_layer, sizeof *g->L)) ||
	    !(m->lin = trail_calloc((size_t)m->nlin, sizeof *m->lin)) || !(g->inv_freq = trail_malloc(h2 * sizeof(float))) ||
	    !(g->cs = trail_malloc(P * h2 * sizeof(float))) || !(g->sn = trail_malloc(P * h2 * sizeof(float))))
		return TRAIL_ENOMEM;
	for (int l = 0; l < c->n_layer; l++)
		for (int k = 0; k < NKINDS; k++)
			m->lin[NKINDS * l + k] = &g->L[l].lin[k];
	trail_rope_inv_freq(c, g->inv_freq);
	trail_k_rope_tables(g->cs, g->sn, g->inv_freq, c->n_positions, c->head_dim);
	return TRAIL_OK;
}

/*
 * Lay the views out in an arena (parameters, or gradients when grads; a
 * NULL arena sets every gradient view to NULL): embed_tokens, then per
 * layer input_layernorm, q, k, v (weight, then bias for Qwen2), o,
 * post_attention_layernorm, gate, up, down, then norm and lm_head.
 */
static void bind(trail_model *m, float *base, int grads)
{
	const trail_model_cfg *c = &m->c;
	llama *g = LL(m);
	size_t C = (size_t)c->n_embd, o = 0;
	size_t D = (size_t)D_(c), Dkv = (size_t)Dkv_(c), F = (size_t)c->n_inner;
#define TAKE(pp, gp, n)                                          \
	do {                                                     \
		*(grads ? &(gp) : &(pp)) = base ? base + o : NULL; \
		o += (n);                                        \
	} while (0)
	TAKE(g->emb, g->demb, (size_t)c->vocab_size * C);
	size_t io[NKINDS][2] = {{C, D}, {C, Dkv}, {C, Dkv}, {D, C}, {C, F}, {C, F}, {F, C}};
	for (int l = 0; l < c->n_layer; l++) {
		lay *y = &g->L[l];
		TAKE(y->ln1w, y->dln1w, C);
		for (int k = 0; k < NKINDS; k++) {
			trail_lin *L = &y->lin[k];
			if (k == GATE)
				TAKE(y->ln2w, y->dln2w, C);
			L->in = (int)io[k][0];
			L->out = (int)io[k][1];
			L->wt = 1;
			TAKE(L->W, L->dW, io[k][0] * io[k][1]);
			if (c->qkv_bias && k <= V)
				TAKE(L->b, L->db, io[k][1]);
			snprintf(L->name, sizeof L->name, "layers.%d.%s", l, kinds[k]);
		}
	}
	TAKE(g->norm, g->dnorm, C);
	if (c->untied)
		TAKE(g->head, g->dhead, (size_t)c->vocab_size * C);
#undef TAKE
}

/* Hugging Face's initialisation: normal(0, 0.02) weights, unit norms, zero biases. */
static void init(trail_model *m, uint64_t seed)
{
	const trail_model_cfg *c = &m->c;
	llama *g = LL(m);
	uint64_t s = seed;
	size_t C = (size_t)c->n_embd;
	trail_rng_normal(g->emb, (size_t)c->vocab_size * C, 0.02, &s);
	for (int l = 0; l < c->n_layer; l++) {
		lay *y = &g->L[l];
		for (size_t i = 0; i < C; i++)
			y->ln1w[i] = y->ln2w[i] = 1;
		for (int k = 0; k < NKINDS; k++)
			trail_rng_normal(y->lin[k].W, (size_t)y->lin[k].in * (size_t)y->lin[k].out, 0.02, &s);
	}
	for (size_t i = 0; i < C; i++)
		g->norm[i] = 1;
	if (g->head)
		trail_rng_normal(g->head, (size_t)c->vocab_size * C, 0.02, &s);
}

/* Every parameter with its Hugging Face name, in arena order. */
static size_t tensors(const trail_model *m, trail_param *v)
{
	const trail_model_cfg *c = &m->c;
	const llama *g = LL(m);
	size_t n = 0, C = (size_t)c->n_embd;
#define ADD(ptr, d0, d1, nd, ...)                                   \
	do {                                                        \
		snprintf(v[n].name, sizeof v[n].name, __VA_ARGS__); \
		v[n].data = (ptr);                                  \
		v[n].shape[0] = (int64_t)(d0);                      \
		v[n].shape[1] = (int64_t)(d1);                      \
		v[n].ndim = (nd);                                   \
		n++;                                                \
	} while (0)
	ADD(g->emb, c->vocab_size, C, 2, "model.embed_tokens.weight");
	for (int l = 0; l < c->n_layer; l++) {
		const lay *y = &g->L[l];
		ADD(y->ln1w, C, 0, 1, "model.layers.%d.input_layernorm.weight", l);
		for (int k = 0; k < NKINDS; k++) {
			const trail_lin *L = &y->lin[k];
			if (k == GATE)
				ADD(y->ln2w, C, 0, 1, "model.layers.%d.post_attention_layernorm.weight", l);
			ADD(L->W, L->out, L->in, 2, "model.%s.weight", L->name);
			if (L->b)
				ADD(L->b, L->out, 0, 1, "model.%s.bias", L->name);
		}
	}
	ADD(g->norm, C, 0, 1, "model.norm.weight");
	if (g->head)
		ADD(g->head, c->vocab_size, C, 2, "lm_head.weight");
#undef ADD
	return n;
}

/* A tied checkpoint may still carry lm_head; older ones carry the rotary frequencies. */
static int extra_tensor(const char *nm, const char *bare)
{
	size_t n = strlen(bare);
	/* rope_freqs.weight: a GGUF file's llama3 rope scaling, read into the configuration */
	return !strcmp(nm, "lm_head.weight") || !strcmp(nm, "rope_freqs.weight") ||
	       (n > 20 && !strcmp(bare + n - 20, ".rotary_emb.inv_freq"));
}

/* ---- activations -------------------------------------------------------------------- */

static int acts(trail_model *m, int B, int T, trail_error *err)
{
	const trail_model_cfg *c = &m->c;
	llama *g = LL(m);
	size_t N = (size_t)B * (size_t)T, C = (size_t)c->n_embd, Vv = (size_t)c->vocab_size;
	size_t D = (size_t)D_(c), Dkv = (size_t)Dkv_(c), F = (size_t)c->n_inner, NH = (size_t)c->n_head;
	size_t r = m->lp ? (size_t)m->lc.r : 0, TT = (size_t)B * NH * (size_t)T * (size_t)T;
	if ((int)N <= m->cap && T <= m->capT) {
		m->B = B;
		m->T = T;
		return TRAIL_OK;
	}
	/* per layer: h1 q k v qkv att atty res1 h2 g u a res2, two rstd, the LoRA hidden states */
	size_t per = N * (4 * C + 2 * D + 2 * Dkv + 3 * D + 3 * F) + TT + 2 * N + NKINDS * N * r;
	size_t keep = 0;
	if (m->keep_io)
		keep = N * (2 * D + 2 * Dkv + 2 * F + C);
	/* scratch: dres dln [C] | dq datty [D] | dk dv [Dkv] | dqkv [3D] | dF dg du [F] | LoRA [r] | attention */
	size_t scratch = N * (2 * C + 2 * D + 2 * Dkv + 3 * D + 3 * F + r) + 2 * (size_t)T * T;
	size_t total = N * (2 * C + 1) + 2 * N * Vv + (size_t)c->n_layer * (per + keep) + scratch;
	float *p = trail_model_arena(m, N, total, err);
	if (!p)
		return TRAIL_ENOMEM;
	ARENA_TAKE(g->x0, N * C);
	ARENA_TAKE(g->hn, N * C);
	ARENA_TAKE(g->hnr, N);
	ARENA_TAKE(m->logits, N * Vv);
	ARENA_TAKE(m->dlogits, N * Vv);
	for (int l = 0; l < c->n_layer; l++) {
		lay *y = &g->L[l];
		ARENA_TAKE(y->h1, N * C);
		ARENA_TAKE(y->r1, N);
		ARENA_TAKE(y->q, N * D);
		ARENA_TAKE(y->k, N * Dkv);
		ARENA_TAKE(y->v, N * Dkv);
		ARENA_TAKE(y->qkv, N * 3 * D);
		ARENA_TAKE(y->att, TT);
		ARENA_TAKE(y->atty, N * D);
		ARENA_TAKE(y->res1, N * C);
		ARENA_TAKE(y->h2, N * C);
		ARENA_TAKE(y->r2, N);
		ARENA_TAKE(y->g, N * F);
		ARENA_TAKE(y->u, N * F);
		ARENA_TAKE(y->a, N * F);
		ARENA_TAKE(y->res2, N * C);
		for (int k = 0; k < NKINDS; k++)
			p = trail_lin_rooms(m, &y->lin[k], p, N);
	}
	ARENA_TAKE(m->scratch, scratch);
	p = m->scratch;
	ARENA_TAKE(g->dres, N * C);
	ARENA_TAKE(g->dln, N * C);
	ARENA_TAKE(g->dq, N * D);
	ARENA_TAKE(g->datty, N * D);
	ARENA_TAKE(g->dk, N * Dkv);
	ARENA_TAKE(g->dv, N * Dkv);
	ARENA_TAKE(g->dqkv, N * 3 * D);
	ARENA_TAKE(g->dF, N * F);
	ARENA_TAKE(g->dg, N * F);
	ARENA_TAKE(g->du, N * F);
	ARENA_TAKE(g->dlora, N * r);
	ARENA_TAKE(g->datt, 2 * (size_t)T * T);
	trail_model_arena_done(m, B, T);
	return TRAIL_OK;
}

/* ---- forward and backward ------------------------------------------------------------ */

/* pack, unpack and the embeddings by rows on the pool (each row whole in one item); demb by columns */
typedef struct rowj {
	trail_model *m;
	float *a;
	float *b, *c;
	const float *d;
	int N, nh, nkv, hd, per;
} rowj;

/* qkv [N,3D] = q | k | v with key/value head j repeated for query heads j*rep .. j*rep+rep-1. */
static void pack_item(void *ctx, int it, int t)
{
	const rowj *j = ctx;
	int D = j->nh * j->hd, Dkv = j->nkv * j->hd, rep = j->nh / j->nkv, hd = j->hd;
	int n1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int n = it * j->per; n < n1; n++) {
		float *o = j->a + (size_t)n * 3 * D;
		const float *q = j->b, *k = j->c, *v = j->d;
		memcpy(o, q + (size_t)n * D, (size_t)D * sizeof *o);
		for (int h = 0; h < j->nh; h++) {
			memcpy(o + D + h * hd, k + (size_t)n * Dkv + (h / rep) * hd, (size_t)hd * sizeof *o);
			memcpy(o + 2 * D + h * hd, v + (size_t)n * Dkv + (h / rep) * hd, (size_t)hd * sizeof *o);
		}
	}
}

static void pack(trail_model *m, float *qkv, const float *q, const float *k, const float *v, int N, int nh, int nkv,
		 int hd)
{
	rowj j = {.m = m, .a = qkv, .b = (float *)q, .c = (float *)k, .d = v, .N = N, .nh = nh, .nkv = nkv, .hd = hd,
		  .per = 16};
	trail_pool_run(trail_compute_pool(), (N + j.per - 1) / j.per, pack_item, &j);
}

/* The backward of pack: dq = the q part; dk, dv summed over each group, in head order. */
static void unpack_item(void *ctx, int it, int t)
{
	const rowj *j = ctx;
	int D = j->nh * j->hd, Dkv = j->nkv * j->hd, rep = j->nh / j->nkv, hd = j->hd;
	int n1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int n = it * j->per; n < n1; n++) {
		const float *s = j->d + (size_t)n * 3 * D;
		memcpy(j->a + (size_t)n * D, s, (size_t)D * sizeof *j->a);
		float *k = j->b + (size_t)n * Dkv, *v = j->c + (size_t)n * Dkv;
		memset(k, 0, (size_t)Dkv * sizeof *k);
		memset(v, 0, (size_t)Dkv * sizeof *v);
		for (int h = 0; h < j->nh; h++)
			for (int i = 0; i < hd; i++) {
				k[(h / rep) * hd + i] += s[D + h * hd + i];
				v[(h / rep) * hd + i] += s[2 * D + h * hd + i];
			}
	}
}

static void unpack(trail_model *m, float *dq, float *dk, float *dv, const float *dqkv, int N, int nh, int nkv, int hd)
{
	rowj j = {.m = m, .a = dq, .b = dk, .c = dv, .d = dqkv, .N = N, .nh = nh, .nkv = nkv, .hd = hd, .per = 16};
	trail_pool_run(trail_compute_pool(), (N + j.per - 1) / j.per, unpack_item, &j);
}

static void emb_fwd_item(void *ctx, int it, int t)
{
	const rowj *j = ctx;
	trail_model *m = j->m;
	int C = m->c.n_embd, n1 = (it + 1) * j->per < j->N ? (it + 1) * j->per : j->N;
	for (int i = it * j->per; i < n1; i++)
		memcpy(j->a + (size_t)i * C, LL(m)->emb + (size_t)m->tok[i] * C, (size_t)C * sizeof(float));
}

enum { EMB_COLS = 64 };

static void emb_bwd_item(void *ctx, int it, int t)
{
	const rowj *j = ctx;
	trail_model *m = j->m;
	int C = m->c.n_embd, c0 = it * EMB_COLS, c1 = c0 + EMB_COLS < C ? c0 + EMB_COLS : C;
	for (int i = 0; i < j->N; i++) {
		float *dw = LL(m)->demb + (size_t)m->tok[i] * C;
		const float *d = j->d + (size_t)i * C;
		for (int k = c0; k < c1; k++)
			dw[k] += d[k];
	}
}

/* The head's products: bf16 when the precision says so, hn and the head kept for the backward. */
static void head_gemm(int naive, int keep, int ta, int tb, int rows, int cols, int inner, const float *A, int lda,
		      const float *B, int ldb, float beta, float *out, int ldo)
{
	if (naive)
		trail_k_sgemm(1, ta, tb, rows, cols, inner, 1.0f, A, lda, B, ldb, beta, out, ldo);
	else
		trail_gemm_x(TRAIL_G_BF16 | keep, ta, tb, rows, cols, inner, 1.0f, A, lda, B, ldb, beta, out, ldo);
}

static void forward(trail_model *m)
{
	const trail_model_cfg *c = &m->c;
	llama *g = LL(m);
	int C = c->n_embd, Vv = c->vocab_size, nh = c->n_head, nkv = c->n_kv_head, hd = c->head_dim;
	int D = nh * hd, Dkv = nkv * hd, F = c->n_inner, r = m->lp ? m->lc.r : 0, nv = m->naive;
	int B = m->B, T = m->T, N = B * T;
	float s = (float)m->scale, eps = (float)c->norm_eps;
	size_t NC = (size_t)N * C;
	trail_bf16_pass(); /* the weights may have moved since the last forward */
	rowj ej = {.m = m, .a = g->x0, .N = N, .per = 16};
	trail_pool_run(trail_compute_pool(), (N + ej.per - 1) / ej.per, emb_fwd_item, &ej);
	const float *x = g->x0;
	float *tmp = m->scratch; /* free until backward */
	for (int l = 0; l < c->n_layer; l++) {
		lay *y = &g->L[l];
		/* res1 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))), h1 = rmsnorm(x) */
		trail_k_rmsnorm_fwd(y->h1, y->r1, x, y->ln1w, N, C, eps);
		trail_k_linear_fwd(nv, &y->lin[Q], r, s, y->q, y->h1, N);
		trail_k_linear_fwd(nv, &y->lin[K], r, s, y->k, y->h1, N);
		trail_k_linear_fwd(nv, &y->lin[V], r, s, y->v, y->h1, N);
		trail_k_rope(y->q, N, T, nh, hd, D, g->cs, g->sn, 0);
		trail_k_rope(y->k, N, T, nkv, hd, Dkv, g->cs, g->sn, 0);
		pack(m, y->qkv, y->q, y->k, y->v, N, nh, nkv, hd);
		trail_k_attention_fwd(nv, y->atty, y->att, y->qkv, B, T, D, nh);
		trail_k_linear_fwd(nv, &y->lin[O], r, s, tmp, y->atty, N);
		trail_k_add(y->res1, x, tmp, NC);
		/* res2 = res1 + down(silu(gate(h2)) up(h2)), h2 = rmsnorm(res1) */
		trail_k_rmsnorm_fwd(y->h2, y->r2, y->res1, y->ln2w, N, C, eps);
		trail_k_linear_fwd(nv, &y->lin[GATE], r, s, y->g, y->h2, N);
		trail_k_linear_fwd(nv, &y->lin[UP], r, s, y->u, y->h2, N);
		trail_k_swiglu_fwd(y->a, y->g, y->u, (size_t)N * F);
		trail_k_linear_fwd(nv, &y->lin[DOWN], r, s, tmp, y->a, N);
		trail_k_add(y->res2, y->res1, tmp, NC);
		x = y->res2;
	}
	trail_k_rmsnorm_fwd(g->hn, g->hnr, x, g->norm, N, C, eps);
	/* logits [N,V] = hn [N,C] head^T (head [V,C]: lm_head, or the embeddings) */
	head_gemm(nv, TRAIL_G_KEEP_A | TRAIL_G_KEEP_B, 0, 1, N, Vv, C, g->hn, C, g->head ? g->head : g->emb, C, 0.0f,
		  m->logits, Vv);
}

static void backward(trail_model *m)
{
	const trail_model_cfg *c = &m->c;
	llama *g = LL(m);
	int C = c->n_embd, Vv = c->vocab_size, nh = c->n_head, nkv = c->n_kv_head, hd = c->head_dim;
	int D = nh * hd, Dkv = nkv * hd, F = c->n_inner, r = m->lp ? m->lc.r : 0, nv = m->naive;
	int B = m->B, T = m->T, N = B * T;
	float s = (float)m->scale;
	size_t NC = (size_t)N * C;
	/* head: dhead (or demb) [V,C] += dlogits^T hn;  dhn [N,C] = dlogits head */
	const float *head = g->head ? g->head : g->emb;
	float *dhead = g->head ? g->dhead : g->demb;
	enum { KA = TRAIL_G_KEEP_A, KB = TRAIL_G_KEEP_B };
	if (dhead)
		head_gemm(nv, KA | KB, 1, 0, Vv, C, N, m->dlogits, Vv, g->hn, C, 1.0f, dhead, C);
	head_gemm(nv, KA | KB, 0, 0, N, C, Vv, m->dlogits, Vv, head, C, 0.0f, g->dln, C);
	trail_bf16_drop(m->dlogits);
	trail_k_zero(g->dres, NC);
	const float *xlast = c->n_layer ? g->L[c->n_layer - 1].res2 : g->x0;
	trail_k_rmsnorm_bwd(g->dres, g->dnorm, g->dln, xlast, g->norm, g->hnr, N, C);
	/* dres carries the gradient of the residual stream down the layers */
	for (int l = c->n_layer - 1; l >= 0; l--) {
		lay *y = &g->L[l];
		const float *xin = l ? g->L[l - 1].res2 : g->x0;
		trail_k_zero(g->dF, (size_t)N * F);
		trail_k_linear_bwd(nv, &y->lin[DOWN], r, s, g->dF, g->dres, N, g->dlora);
		trail_k_swiglu_bwd(g->dg, g->du, y->g, y->u, g->dF, (size_t)N * F);
		trail_k_zero(g->dln, NC);
		trail_k_linear_bwd(nv, &y->lin[GATE], r, s, g->dln, g->dg, N, g->dlora);
		trail_k_linear_bwd(nv, &y->lin[UP], r, s, g->dln, g->du, N, g->dlora);
		trail_k_rmsnorm_bwd(g->dres, y->dln2w, g->dln, y->res1, y->ln2w, y->r2, N, C);
		trail_k_zero(g->datty, (size_t)N * D);
		trail_k_linear_bwd(nv, &y->lin[O], r, s, g->datty, g->dres, N, g->dlora);
		trail_k_zero(g->dqkv, (size_t)N * 3 * D);
		trail_k_attention_bwd(nv, g->dqkv, g->datty, y->att, y->qkv, B, T, D, nh, g->datt);
		unpack(m, g->dq, g->dk, g->dv, g->dqkv, N, nh, nkv, hd);
		trail_k_rope(g->dq, N, T, nh, hd, D, g->cs, g->sn, 1);
		trail_k_rope(g->dk, N, T, nkv, hd, Dkv, g->cs, g->sn, 1);
		trail_k_zero(g->dln, NC);
		trail_k_linear_bwd(nv, &y->lin[Q], r, s, g->dln, g->dq, N, g->dlora);
		trail_k_linear_bwd(nv, &y->lin[K], r, s, g->dln, g->dk, N, g->dlora);
		trail_k_linear_bwd(nv, &y->lin[V], r, s, g->dln, g->dv, N, g->dlora);
		trail_k_rmsnorm_bwd(g->dres, y->dln1w, g->dln, xin, y->ln1w, y->r1, N, C);
	}
	if (g->demb) {
		rowj ej = {.m = m, .d = g->dres, .N = N};
		trail_pool_run(trail_compute_pool(), (C + EMB_COLS - 1) / EMB_COLS, emb_bwd_item, &ej);
	}
}

extern const trail_arch trail_arch_llama, trail_arch_qwen2, trail_arch_mistral;

#define FAMILY                                                                                        \
	.prefix = "", .blocks = "model.layers", .nkinds = NKINDS, .kind_bit0 = 4, .conv1d = 0, .kinds = kinds, .config_json = config_json, \
	.num_params = num_params, .num_tensors = num_tensors, .new_state = new_state, .free_state = free_state, \
	.bind = bind, .init = init, .tensors = tensors, .extra_tensor = extra_tensor, .acts = acts,            \
	.forward = forward, .backward = backward

const trail_arch trail_arch_llama = {.model_type = "llama", .hf_class = "LlamaForCausalLM",
				     .config_parse = parse_llama, FAMILY};
const trail_arch trail_arch_qwen2 = {.model_type = "qwen2", .hf_class = "Qwen2ForCausalLM",
				     .config_parse = parse_qwen2, FAMILY};
const trail_arch trail_arch_mistral = {.model_type = "mistral", .hf_class = "MistralForCausalLM",
				       .config_parse = parse_mistral, FAMILY};
