/*
 * Inside the GPT-2 model: the structure shared by gpt2.c (layers, forward,
 * backward, files), lora.c (adapters) and optim.c, and the layer kernels,
 * which the unit tests check one by one against a double-precision
 * reference. Not installed; not part of the library's interface.
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
	float *W, *b;            /* [in,out], [out]: views into the parameter arena */
	float *dW, *db;          /* their gradients, NULL when frozen */
	int in, out;
	float *A, *Bm, *dA, *dB; /* LoRA [r,in], [out,r] and gradients, or NULL */
	float *u;                /* LoRA hidden state x A^T [N,r] */
	const float *x;          /* the last input [N,in] */
	float *keep_dy;          /* dY [N,out] kept for attribution, or NULL */
	float *keep_room;        /* where keep_dy points when kept, NULL when the arena has no room */
	char name[40];           /* "h.3.attn.c_attn" */
} trail_lin;

typedef struct trail_layer {
	float *ln1w, *ln1b, *ln2w, *ln2b, *dln1w, *dln1b, *dln2w, *dln2b;
	trail_lin attn, aproj, fc, mproj;
	/* activations of the last forward */
	float *ln1, *ln1m, *ln1r, *qkv, *att, *atty, *res1, *ln2, *ln2m, *ln2r, *fch, *fchg, *res2;
} trail_layer;

struct trail_model {
	trail_gpt2_config c;
	float *p, *g; /* the parameter arena and its gradients (g NULL when frozen) */
	size_t np;
	float *wte, *wpe, *lnfw, *lnfb, *dwte, *dwpe, *dlnfw, *dlnfb;
	trail_layer *L;
	/* LoRA: one arena for A and B of every targeted layer, one for their gradients */
	trail_lora_config lc;
	float *lp, *lg;
	size_t nlp;
	double scale;
	/* activations, sized for cap rows and capT positions */
	int B, T, cap, capT;
	float *acts, *x0, *lnf, *lnfm, *lnfr, *logits, *dlogits, *scratch;
	int32_t *tok, *tgt;
	float loss;
	long counted;
	int keep_io;
	int naive; /* every product by the reference loop instead of BLAS */
};

/* The k-th linear layer of layer l: 0 c_attn, 1 attn.c_proj, 2 c_fc, 3 mlp.c_proj. */
trail_lin *trail_model_lin(trail_model *m, int l, int k);

/* splitmix64: the seeded stream behind initialisation, the same on every host. */
uint64_t trail_rng_next(uint64_t *s);
double trail_rng_unif(uint64_t *s); /* (0,1) */

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
