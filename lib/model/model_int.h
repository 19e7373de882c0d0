/*
 * Inside the model: the architecture interface (model.c dispatches to one
 * file per architecture, gpt2.c), the structure shared with lora.c and
 * optim.c, and the tensor kernels (kernels.c), which the unit tests check
 * one by one against a double-precision reference. Not part of the
 * library's interface.
 *
 * Shapes: B batch, T time, C channels, V vocab, NH heads, hs = C/NH,
 * N = B*T rows. A linear layer is GPT-2's Conv1D: y [N,out] = x [N,in] W
 * [in,out] + b, plus LoRA's scale (x A^T) B^T with A [r,in], B [out,r].
 */
#ifndef TRAIL_MODEL_INT_H
#define TRAIL_MODEL_INT_H
#include <stddef.h>
#include <stdint.h>

#include <cblas.h>

#include "model/model.h"

typedef struct trail_lin {
	float *W, *b;            /* [in,out] (or [out,in] when wt), [out] or NULL: views into the parameter arena */
	float *dW, *db;          /* their gradients, NULL when frozen */
	int in, out;
	float *A, *Bm, *dA, *dB; /* LoRA [r,in], [out,r] and gradients, or NULL */
	float *u;                /* LoRA hidden state x A^T [N,r] */
	const float *x;          /* the last input [N,in] */
	float *keep_dy;          /* dY [N,out] kept for attribution, or NULL */
	float *keep_room;        /* where keep_dy points when kept, NULL when the arena has no room */
	int wt;                  /* W is [out,in] (nn.Linear) rather than [in,out] (Conv1D) */
	char name[40];           /* "h.3.attn.c_attn" */
} trail_lin;

/* A tensor of an architecture: its Hugging Face name, view and shape. */
typedef struct trail_param {
	char name[64];
	float *data;
	int64_t shape[2];
	int ndim;
} trail_param;

/*
 * An architecture: one file behind these operations, and one line in
 * model.c's table. model.c owns what every architecture shares: the
 * parameter and gradient arenas, LoRA, loading and saving checkpoints, the
 * token checks, the loss, and the attribution view of the linear layers.
 * The architecture reads its config, lays its tensors out in an arena,
 * names them as Hugging Face does, and runs forward and backward.
 */
typedef struct trail_arch {
	const char *model_type;   /* config.json "model_type" ("gpt2") */
	const char *hf_class;     /* config.json "architectures"[0] ("GPT2LMHeadModel") */
	const char *prefix;       /* a prefix Hugging Face checkpoints may put on every name, or "" */
	const char *blocks;       /* the blocks' module path as PEFT names it ("transformer.h") */
	int nkinds;               /* linear layers per block; LoRA target bit kind_bit0 + k is kind k */
	int kind_bit0;
	int conv1d;               /* W [in,out] as GPT-2's Conv1D (PEFT's fan_in_fan_out), else nn.Linear's [out,in] */
	const char *const *kinds; /* their module names in a block ("attn.c_attn"), as PEFT names them */
	int (*config_parse)(const json_t *j, trail_model_cfg *c, trail_error *err);
	json_t *(*config_json)(const trail_model_cfg *c);
	size_t (*num_params)(const trail_model_cfg *c);
	size_t (*num_tensors)(const trail_model_cfg *c);
	/* per-architecture state in m->arch_state, with m->lin filled: nkinds per block, block-major */
	int (*new_state)(trail_model *m);
	void (*free_state)(trail_model *m);
	/* views into an arena of num_params floats: the parameters, or their gradients when grads */
	void (*bind)(trail_model *m, float *base, int grads);
	void (*init)(trail_model *m, uint64_t seed);
	/* every tensor, in arena order; v has num_tensors entries */
	size_t (*tensors)(const trail_model *m, trail_param *v);
	/* a checkpoint tensor that holds no parameter (a mask buffer, a tied head) */
	int (*extra_tensor)(const char *name, const char *bare);
	/* activations for B x T (m->acts, with m->logits, m->dlogits, m->scratch, m->tok, m->tgt) */
	int (*acts)(trail_model *m, int B, int T, trail_error *err);
	/* m->tok [B,T] to m->logits [N,V]; then, from m->dlogits, every gradient */
	void (*forward)(trail_model *m);
	void (*backward)(trail_model *m);
} trail_arch;


struct trail_model {
	trail_model_cfg c;
	const trail_arch *arch;
	void *arch_state;
	float *p, *g; /* the parameter arena and its gradients (g NULL when frozen) */
	size_t np;
	trail_lin **lin; /* every linear layer: arch->nkinds per block */
	int nlin;
	/* LoRA: one arena for A and B of every targeted layer, one for their gradients */
	trail_lora_config lc;
	float *lp, *lg;
	size_t nlp;
	double scale;
	/* activations, sized for cap rows and capT positions */
	int B, T, cap, capT;
	float *acts, *logits, *dlogits, *scratch;
	int32_t *tok, *tgt;
	float loss;
	long counted;
	int keep_io;
	int naive; /* every product by the reference loop instead of BLAS */
};

/* The gradient arena, made on the first backward of a model without LoRA. */
int trail_model_need_grads(trail_model *m, trail_error *err);

/* The k-th linear layer of block l (GPT-2: 0 c_attn, 1 attn.c_proj, 2 c_fc, 3 mlp.c_proj). */
/* The Llama family's rotary frequencies [head_dim/2], rope_scaling applied (llama.c). */
void trail_rope_inv_freq(const trail_model_cfg *c, float *inv);

/* The architecture of a configuration (NULL for an unknown TRAIL_ARCH_ value). */
const trail_arch *trail_arch_of(int arch);

static inline trail_lin *trail_model_lin(trail_model *m, int l, int k)
{
	return m->lin[l * m->arch->nkinds + k];
}

/* splitmix64: the seeded stream behind initialisation, the same on every host. */
uint64_t trail_rng_next(uint64_t *s);
double trail_rng_unif(uint64_t *s); /* (0,1) */
/* Box-Muller over the stream: normal(0, std), the same on every host. */
void trail_rng_normal(float *x, size_t n, double std, uint64_t *s);

/*
 * C [M,N] = alpha op(A) op(B) + beta C, row-major, as cblas_sgemm; with
 * naive set, a plain triple loop accumulating in double (the reference the
 * tests compare the BLAS path with).
 */
void trail_k_sgemm(int naive, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
		   const float *B, int ldb, float beta, float *C, int ldc);

/* out [N,C] = (x - mean) rstd w + b; mean, rstd [N] kept for backward. */
void trail_k_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w,
			   const float *b, int N, int C);
/* dx [N,C] += ..; dw, db [C] += .. (skipped when dw is NULL). */
void trail_k_layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
			   const float *w, const float *mean, const float *rstd, int N, int C);

/* GELU, tanh approximation ("gelu_new"); dx may alias dy. */
void trail_k_gelu_fwd(float *y, const float *x, size_t n);
void trail_k_gelu_bwd(float *dx, const float *x, const float *dy, size_t n);

/* y [N,out] = x W + b (+ scale (x A^T) B^T, u = x A^T [N,r] kept). */
void trail_k_linear_fwd(int naive, trail_lin *L, int r, float scale, float *y, const float *x, int N);
/* dx [N,in] += dy W^T (+ LoRA); dW, db, dA, dB += .. when not NULL; scratch [N,r]. dx may be NULL. */
void trail_k_linear_bwd(int naive, trail_lin *L, int r, float scale, float *dx, const float *dy, int N,
			float *scratch);

/*
 * Causal self-attention: qkv [B,T,3C] -> y [B,T,C]; att [B,NH,T,T] keeps
 * the probabilities. Backward accumulates into dqkv [B,T,3C]; scratch 2T^2.
 */
void trail_k_attention_fwd(int naive, float *y, float *att, const float *qkv, int B, int T, int C, int NH);
void trail_k_attention_bwd(int naive, float *dqkv, const float *dy, const float *att, const float *qkv, int B,
			   int T, int C, int NH, float *scratch);

/*
 * Cross-entropy over logits [N,V] with targets (-1: not counted): returns
 * the summed loss and the count. Backward: dlogits = (softmax - onehot) *
 * inv for counted rows, 0 for the others.
 */
double trail_k_xent_fwd(const float *logits, const int32_t *tgt, int N, int V, long *counted);
void trail_k_xent_bwd(float *dlogits, const float *logits, const int32_t *tgt, int N, int V, double inv);

/* out [N,C] = x rstd w, rstd = (mean x^2 + eps)^-1/2 [N] kept; dx [N,C] +=, dw [C] += (skipped when NULL). */
void trail_k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps);
void trail_k_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
			 const float *rstd, int N, int C);
/* cos, sin [T, hd/2] of t inv_freq[i]. */
void trail_k_rope_tables(float *cs, float *sn, const float *inv_freq, int T, int hd);
/*
 * Rotate, in place, nh heads of hd (row stride `stride`) of N rows at
 * positions n % T, pairing i with i + hd/2 (Hugging Face's rotate_half);
 * inverse rotates back, which is the backward of the rotation.
 */
void trail_k_rope(float *x, int N, int T, int nh, int hd, int stride, const float *cs, const float *sn, int inverse);
/* y = silu(g) u; dg, du = (may not alias dy). */
void trail_k_swiglu_fwd(float *y, const float *g, const float *u, size_t n);
void trail_k_swiglu_bwd(float *dg, float *du, const float *g, const float *u, const float *dy, size_t n);

/* exp on floats, vectorised, relative error below 2e-7 over the whole range. */
void trail_k_expf(float *y, const float *x, size_t n);

/*
 * The character classes of GPT-2's pre-tokeniser: \p{L}, \p{N}, \s and the
 * rest. The table (lib/unicode_tab.c) is generated by lib/unicode_tab.sh
 * from the Unicode Character Database; trail_uc_version names its version.
 */

#include <stdint.h>

enum { TRAIL_UC_OTHER, TRAIL_UC_LETTER, TRAIL_UC_NUMBER, TRAIL_UC_SPACE };

typedef struct trail_uc_range {
	uint32_t lo, hi; /* inclusive */
	uint8_t cls;
} trail_uc_range;

extern const char trail_uc_version[];
extern const trail_uc_range trail_uc_ranges[];
extern const unsigned trail_uc_nranges;

/* The class of code point cp (TRAIL_UC_OTHER for anything past U+10FFFF). */
int trail_uc_class(uint32_t cp);

#endif
