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
	int g_zero; /* the gradients trail_model_grads gives are known zero (AdamW consumed them) */
	int naive; /* every product by the reference loop instead of BLAS */
};

/*
 * The activation arena of an architecture's acts: m->acts of `floats`
 * floats (what was there freed) and N token and target slots; NULL (err
 * set) when out of memory. ARENA_TAKE(ptr, n) hands out the next n floats of p.
 */
float *trail_model_arena(trail_model *m, size_t N, size_t floats, trail_error *err);
#define ARENA_TAKE(ptr, n) \
	do {               \
		(ptr) = p; \
		p += (n);  \
	} while (0)
/* Linear layer L's rows from p for N rows: its LoRA hidden states, the room kept for its dY; p after them. */
float *trail_lin_rooms(const trail_model *m, trail_lin *L, float *p, size_t N);
/* After acts has laid out the arena for B x T. */
void trail_model_arena_done(trail_model *m, int B, int T);

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

/*
 * The pool (gemm.c): n threads, the caller one of them; trail_pool_run
 * calls fn(ctx, item, thread) for items [0,items), each item whole on one
 * thread (thread < trail_pool_threads), and returns when all are done.
 * One caller at a time; fn never runs the pool itself.
 */
typedef struct trail_pool trail_pool;
typedef void (*trail_pool_fn)(void *ctx, int item, int thread);
trail_pool *trail_pool_new(int n);
void trail_pool_free(trail_pool *p);
int trail_pool_threads(const trail_pool *p);
void trail_pool_run(trail_pool *p, int items, trail_pool_fn fn, void *ctx);
/* The pool trail_compute_set made (NULL before). */
trail_pool *trail_compute_pool(void);

/*
 * C [M,N] = alpha op(A) op(B) + beta C as trail_k_sgemm, in fixed blocks
 * of C on the pool: bf16 (oneDNN) when lowp is set and the precision is
 * bf16, else float32 (OpenBLAS, one thread per block). The same bits on
 * any number of threads. Not from inside a pool item.
 */
void trail_gemm(int lowp, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
		int ldb, float beta, float *C, int ldc);
/*
 * Serving's bf16 products (gemm.c): weights converted to bfloat16 once
 * (rounded to nearest even; _t: dst [N,K] = W^T of W [K,N]), and one
 * oneDNN matmul per block shape, y [M,N] f32 dense = x [M,K] bf16 dense
 * times W^T, its weights W [N,K] bf16 (row stride K) packed once into
 * oneDNN's layout for the shape (_pack, _packed_bytes at dst). _run
 * computes one block on pool thread t alone (its stream and scratchpad).
 * _pack and _run return 0 when done.
 */
void trail_bf16_convert(uint16_t *dst, const float *src, size_t n);
void trail_bf16_convert_t(uint16_t *dst, const float *W, int K, int N);
typedef struct trail_bf16_mm trail_bf16_mm;
trail_bf16_mm *trail_bf16_mm_new(int M, int N, int K, trail_error *err);
void trail_bf16_mm_free(trail_bf16_mm *h);
size_t trail_bf16_mm_packed_bytes(const trail_bf16_mm *h);
int trail_bf16_mm_pack(const trail_bf16_mm *h, const uint16_t *W, void *dst);
int trail_bf16_mm_run(const trail_bf16_mm *h, const uint16_t *x, const void *W, float *y, int t);
/*
 * Serving's int8 products, the same way: y [M,N] s32 dense = x [M,K] u8
 * dense times W^T, W [N,K] s8 (row stride K) packed once. The sums are
 * exact integers when x < 128 and |W| <= 127 (no 16-bit pair sum can
 * saturate on an instruction set without VNNI), so every instruction set
 * gives the same bits.
 */
typedef struct trail_i8_mm trail_i8_mm;
trail_i8_mm *trail_i8_mm_new(int M, int N, int K, trail_error *err);
void trail_i8_mm_free(trail_i8_mm *h);
size_t trail_i8_mm_packed_bytes(const trail_i8_mm *h);
int trail_i8_mm_pack(const trail_i8_mm *h, const int8_t *W, void *dst);
int trail_i8_mm_run(const trail_i8_mm *h, const uint8_t *x, const void *W, int32_t *y, int t);
/*
 * trail_gemm with flags: TRAIL_G_BF16 as lowp; TRAIL_G_KEEP_A (_B): A (B)
 * stays as it is until the next trail_bf16_pass, so its bf16 copy is made
 * once and used by every product of the pass that names the same matrix
 * (the same pointer, shape and row stride). trail_bf16_pass starts a pass
 * (each forward); trail_bf16_drop forgets the copy of one matrix, which
 * may then change. trail_bf16_cvt: float32 to bf16, nearest even.
 */
enum { TRAIL_G_BF16 = 1, TRAIL_G_KEEP_A = 2, TRAIL_G_KEEP_B = 4 };
void trail_gemm_x(int flags, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
		  const float *B, int ldb, float beta, float *C, int ldc);
void trail_bf16_pass(void);
void trail_bf16_drop(const float *src);
void trail_bf16_cvt(uint16_t *dst, const float *src, size_t n);
/*
 * Batched bf16 products on the calling thread alone (inside a pool item):
 * C[g] [M,N] (strides cs0, cs1, 1) = alpha op(A[g]) op(B[g]) + beta C[g],
 * g < G, A and B dense bf16 ([G,M,K], or [G,K,M] when ta; [G,K,N], or
 * [G,N,K] when tb). trail_bmm_get (not from inside an item) gives NULL
 * when the precision is not bf16 or oneDNN cannot; trail_bmm_run returns
 * -1 when it could not run.
 */
typedef struct trail_bmm trail_bmm;
const trail_bmm *trail_bmm_get(int G, int M, int N, int K, int ta, int tb, float alpha, float beta, int cs0, int cs1);
int trail_bmm_run(const trail_bmm *p, const uint16_t *A, const uint16_t *B, float *C, int thread);

/* x [n] = 0; y [n] = a + b (y may alias a or b): on the pool. */
void trail_k_zero(float *x, size_t n);
void trail_k_copy(float *y, const float *x, size_t n); /* y [n] = x, on the pool */
/* Does the CPU run AVX-512F / AVX2 code (cpuid, asked once)? */
int trail_k_has_avx512(void);
int trail_k_has_avx2(void);
void trail_k_add(float *y, const float *a, const float *b, size_t n);

/* out [N,C] = (x - mean) rstd w + b; mean, rstd [N] kept for backward. */
void trail_k_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w,
			   const float *b, int N, int C);
/* dx [N,C] += ..; dw, db [C] += .. (skipped when dw is NULL). */
void trail_k_layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
			   const float *w, const float *mean, const float *rstd, int N, int C);

/* GELU, tanh approximation ("gelu_new"); dx may alias dy. */
void trail_k_gelu_fwd(float *y, const float *x, size_t n);
void trail_k_gelu_bwd(float *dx, const float *x, const float *dy, size_t n);

/* y [N,out] = x W + b (+ scale (x A^T) B^T, u = x A^T [N,r] kept). In bf16, x and W are taken to stay as
 * they are until the next trail_bf16_pass (their bf16 copies serve the backward too). */
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

/*
 * Canonical composition (unicode_norm.c, generated by unicode_norm.sh):
 * combining classes, decompositions and primary composites.
 */
typedef struct trail_uc_ccc_range {
	uint32_t lo, hi; /* inclusive */
	uint8_t ccc;
} trail_uc_ccc_range;
typedef struct trail_uc_pair {
	uint32_t cp, a, b; /* cp is a, b canonically (b 0: cp is the singleton a) */
} trail_uc_pair;
extern const trail_uc_ccc_range trail_uc_ccc[];
extern const unsigned trail_uc_nccc;
extern const trail_uc_pair trail_uc_decomp[]; /* by cp */
extern const unsigned trail_uc_ndecomp;
extern const trail_uc_pair trail_uc_comp[];   /* by (a, b) */
extern const unsigned trail_uc_ncomp;

/*
 * Tokenizers, shared by tokenizer.c (bytes, GPT-2, the BPE engine and the
 * pre-tokenisers) and hf_tokenizer.c (tokenizer.json: its loader, added
 * tokens, NFC, SentencePiece-style BPE).
 */
enum { TK_BYTES, TK_GPT2, TK_HF_BPE, TK_HF_SP };
enum { TK_PRE_GPT2, TK_PRE_LLAMA3, TK_PRE_QWEN }; /* which regex splits a byte-level section */
enum {
	TOK_PRESENT = 1,
	TOK_LITERAL = 2, /* spelled outside the byte alphabet, never produced by BPE */
	TOK_ADDED = 4,   /* an added token: split out of text before BPE */
	TOK_SPECIAL = 8, /* an added special token: split out only when asked, skipped by decode */
};

typedef struct merge_slot {
	uint64_t key; /* left id << 32 | right id */
	int32_t rank; /* -1: empty slot */
	int32_t id;   /* the merged token */
} merge_slot;

typedef struct tok_cache tok_cache;

typedef struct tok_added {
	uint32_t off, len; /* its text in t->text */
	int32_t id;
	uint8_t special;
	uint8_t lstrip, rstrip; /* the whitespace before it (after it) goes with it */
} tok_added;

struct trail_tokenizer {
	int kind;             /* TK_* */
	char byte[256];       /* bytes: the text of id i */
	size_t n_vocab;       /* largest id + 1 */
	int32_t eot;          /* -1 when none */
	char *text;           /* every token's bytes, back to back */
	uint32_t *off;        /* n_vocab + 1: token i is text[off[i] .. off[i + 1]) */
	uint8_t *flags;       /* n_vocab: TOK_* */
	int32_t byte_id[256]; /* byte-level: the token of each byte */
	merge_slot *mt;       /* mt_mask + 1 slots */
	size_t mt_mask;
	int32_t (*merges)[2]; /* by rank, as read */
	size_t n_merges;
	tok_cache *cache;
	/* tokenizer.json */
	int pre;                /* TK_PRE_* (byte-level) */
	uint8_t nfc;            /* the normaliser is NFC */
	uint8_t metaspace;      /* SentencePiece: prepend U+2581, spaces to U+2581 */
	uint8_t strip_space;    /* decode drops one leading space */
	uint8_t byte_fallback;  /* a character without a token is its <0xNN> tokens */
	uint8_t fuse_unk;       /* consecutive unknowns are one */
	uint8_t ignore_merges;  /* a piece that is a token is that token, merges unread */
	int32_t bos, eos, unk;  /* -1 when none */
	int32_t add_first, add_last; /* what TRAIL_TOKENIZE_ADD adds: the post-processor template's, -1 none */
	int32_t fallback[256];  /* <0xNN>, -1 when absent */
	uint32_t *vm;           /* vm_mask + 1 slots of id + 1 (0 empty): token text -> id */
	size_t vm_mask;
	tok_added *added;       /* by first byte, then longest first */
	size_t n_added;
	uint32_t added_first[257]; /* added[added_first[b] .. added_first[b + 1]) start with byte b */
	void *json, *config;    /* tokenizer.json and tokenizer_config.json as read (save writes them back) */
	size_t json_len, config_len;
};

/* The class (TRAIL_UC_*) of the character at s[i], i < n, and its length;
 * a byte that starts no valid UTF-8 sequence is one character of class
 * other. *cp is the code point, or 0x110000 + the byte when invalid. */
int trail_tok_char(const uint8_t *s, size_t n, size_t i, size_t *len, uint32_t *cp);
/* Open-addressing tables: merge pairs, and token text to id. */
void trail_tok_merge_put(trail_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id);
int32_t trail_tok_lookup(const trail_tokenizer *t, const void *p, size_t n); /* -1 when none */
/*
 * BPE over m >= 1 symbols whose ids are in id[0..m) (-1: a symbol with no
 * token, never merged): lowest rank first, leftmost among equals. Leaves
 * the surviving symbols as the chain k = 0, nx[k], ... < m in id[] and nx[]
 * (both at least m long).
 */
int trail_tok_bpe(const trail_tokenizer *t, int32_t *id, int32_t *nx, size_t m);
int trail_tok_merges_alloc(trail_tokenizer *t, size_t n); /* room for n merges */
/* Byte-level BPE over one section (pre-tokeniser t->pre, the piece cache,
 * ignore_merges); appends to ids[*n ..], which has room for len more. */
int trail_tok_bytelevel(const trail_tokenizer *t, const uint8_t *s, size_t len, int32_t *ids, size_t *n,
			trail_error *err);

/* GPT-2's files (vocab.json + merges.txt or encoder.json + vocab.bpe) in dir, and back. */
int trail_tok_gpt2_load(const char *dir, trail_tokenizer **out, trail_error *err);
int trail_tok_gpt2_save(const trail_tokenizer *t, const char *dir, trail_error *err);
/* Frees every part of t and t itself; NULL is a no-op. */
void trail_tok_release(trail_tokenizer *t);
tok_cache *trail_tok_cache_new(void);
/* Builds t->vm over every present token's text. */
int trail_tok_map_build(trail_tokenizer *t);
/* A token spelled in GPT-2's byte alphabet to its n or fewer bytes in out; -1 if outside it. */
long trail_tok_unspell(const uint8_t *k, size_t n, uint8_t *out);

/* hf_tokenizer.c */
int trail_hf_load(const char *file, const char *dir, trail_tokenizer **out, trail_error *err);
/* The same from tokenizer.json's bytes (file names them in errors); dir NULL: no tokenizer_config.json. */
int trail_hf_parse(const void *buf, size_t len, const char *file, const char *dir, trail_tokenizer **out,
		   trail_error *err);
int trail_hf_encode(const trail_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t **ids,
		    size_t *n, trail_error *err);
int trail_hf_save(const trail_tokenizer *t, const char *dir, trail_error *err);
/* NFC of s[0..n) into a trail_malloc'd *out (*on bytes); invalid bytes pass through. */
int trail_uc_nfc(const uint8_t *s, size_t n, uint8_t **out, size_t *on);

/*
 * GGUF and base models (gguf.c, safetensors.c, model.c): a GGUF file seen
 * as a checkpoint with Hugging Face's names, and the tokenizer arrays that
 * stand for a tokenizer.json (hf_tokenizer.c).
 */
/* Name the tensors as Hugging Face does (q and k rows reordered on reading, for architecture llama). */
int trail_gguf_bind(trail_gguf *g, trail_error *err);
/* The metadata as a config.json (new reference), which trail_gguf_config (model.c) parses. */
int trail_gguf_config_json(const trail_gguf *g, json_t **out, trail_error *err);
const char *trail_gguf_path(const trail_gguf *g);
const char *trail_gguf_hf_name(const trail_gguf *g, size_t i);
int trail_gguf_find_hf(const trail_gguf *g, const char *hf); /* -1 when none */
/* Tensor i by Hugging Face's shape [d0, d1] (ne reversed), checked. */
int trail_gguf_read_hf(const trail_gguf *g, size_t i, const int64_t *shape, int ndim, float *dst, trail_error *err);
/* GGUF's name for a Hugging Face one; 0 when it has none. */
int trail_gguf_name(const char *hf, char *out, size_t n);
float trail_gguf_half(uint16_t h);
uint16_t trail_gguf_to_half(float x);
uint16_t trail_gguf_to_bf16(float x);
/* The GGUF file behind a checkpoint, or NULL. */
const trail_gguf *trail_st_gguf(const trail_st *st);
/* A safetensors file in memory (kept alive by the caller); name is for messages. */
int trail_st_parse(const void *buf, size_t len, const char *name, trail_st **out, trail_error *err);

/* llama.cpp's tokenizer.ggml.* arrays; every pointer owned (trail_tok_arrays_release). */
typedef struct trail_tok_arrays {
	int sp;              /* "llama" (SentencePiece-style) rather than "gpt2" (byte-level BPE) */
	char *pre;           /* tokenizer.ggml.pre of a byte-level one */
	size_t n;
	char **tok;          /* [n] spelled as tokenizer.json's vocab spells them */
	int32_t *type;       /* [n] 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
	float *score;        /* [n], or NULL */
	size_t n_merges;
	char **merge;        /* "left right", by rank */
	int32_t bos, eos, unk; /* -1 when none */
	int add_bos, add_eos;
	char *chat_template; /* or NULL */
} trail_tok_arrays;
void trail_tok_arrays_release(trail_tok_arrays *a);
/* The file's tokenizer.ggml.* arrays (TRAIL_ENOINPUT without tokenizer.ggml.model). */
int trail_gguf_tok_arrays(const trail_gguf *g, trail_tok_arrays *a, trail_error *err);
/* Write a Llama-family configuration's tensors (Hugging Face's names) and tokenizer arrays (NULL: none). */
int trail_gguf_write_tensors(const char *path, const trail_model_cfg *c, const trail_param *v, size_t n,
			     const trail_tok_arrays *tk, int type, trail_error *err);
/* One LoRA layer of an adapter file: the base weight's Hugging Face name, A [r,in], B [out,r]. */
typedef struct trail_gguf_lora {
	char name[64];
	const float *A, *B;
	int r, in, out;
} trail_gguf_lora;
/* Write the layers as a llama.cpp LoRA adapter (gguf_write.c); alpha as llama.cpp scales it, alpha / r. */
int trail_gguf_write_lora(const char *path, const trail_model_cfg *c, const trail_gguf_lora *l, size_t n,
			  double alpha, int type, trail_error *err);
/* llama.cpp's rope_freqs.weight for llama3 rope scaling: [head_dim/2] divisors of the unscaled frequencies. */
void trail_rope_freq_factors(const trail_model_cfg *c, float *ff);
/* The tokenizer the arrays stand for, built through the tokenizer.json reader; file names them in errors. */
int trail_hf_from_arrays(const trail_tok_arrays *a, const char *file, trail_tokenizer **out, trail_error *err);
/* A tokenizer.json tokenizer's arrays for a model of V tokens (padded with unused ones). */
int trail_hf_to_arrays(const trail_tokenizer *t, size_t V, trail_tok_arrays *a, trail_error *err);

/*
 * jinja_parse.c and jinja_eval.c: the Jinja subset of chat templates, as
 * @huggingface/jinja reads and renders it. One trail_jx per render owns
 * every allocation (an arena) and the jump taken on any error, so nothing
 * in between frees or checks a result.
 */
#include <setjmp.h>

enum { JN_TEXT, JN_COMMENT, JN_IF, JN_FOR, JN_SET, JN_MACRO, JN_BREAK, JN_CONTINUE, JN_FILTERBLK,
       JN_IDENT, JN_INT, JN_FLOAT, JN_STR, JN_ARRAY, JN_TUPLE, JN_OBJECT, JN_MEMBER, JN_SLICE,
       JN_CALL, JN_KWARG, JN_BINARY, JN_UNARY, JN_FILTER, JN_TEST, JN_TERNARY, JN_SELECT };

/*
 * A node. TEXT, STR, IDENT: s[0..n); INT, FLOAT: num; IF: a test, l body,
 * l2 else; FOR: a target (IDENT or TUPLE), b iterable, c its `if` or NULL,
 * l body, l2 else; SET: a target, b value or NULL (then l is the block);
 * MACRO: s name, l parameters (IDENT or KWARG), l2 body; ARRAY, TUPLE: l;
 * OBJECT: l keys, l2 values; MEMBER: a object, b property, flag computed;
 * SLICE: a, b, c (each may be NULL); CALL: a callee, l arguments; KWARG:
 * s name, a value; BINARY: s operator, a, b; UNARY: s operator, a;
 * FILTER: a operand, s name, flag called (l its arguments); FILTERBLK:
 * s, flag, l as FILTER, l2 body; TEST: a operand, s name, flag negated;
 * TERNARY: a condition, b then, c else; SELECT: a value, b condition.
 */
typedef struct trail_jnode trail_jnode;
struct trail_jnode {
	int kind, line, flag;
	const char *s;
	size_t n;
	double num;
	trail_jnode *a, *b, *c;
	trail_jnode **l, **l2;
	size_t nl, nl2;
};

typedef struct trail_jx {
	jmp_buf jb;
	trail_error *err;
	int code;
	struct trail_jblk *blk; /* the arena */
	const int *lines;       /* line in the template of each byte of the preprocessed source */
} trail_jx;

/* Arena memory, zeroed; jumps with TRAIL_ENOMEM when none is left. */
void *trail_jx_alloc(trail_jx *x, size_t n);
/* Fill in the error (source "chat_template", line) and jump. */
void trail_jx_fail(trail_jx *x, int code, int line, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 4, 5)));
/* The template's statements (preprocessed with trim_blocks and lstrip_blocks). */
trail_jnode **trail_jx_parse(trail_jx *x, const char *src, size_t n, size_t *count);
/* Frees the arena. */
void trail_jx_release(trail_jx *x);
/* ECMAScript's WhiteSpace and LineTerminator (String.prototype.trim, \s). */
int trail_jx_space(uint32_t c);
/* The code point at s[*i] (advancing *i), valid UTF-8 assumed; bytes that are not pass as themselves. */
uint32_t trail_jx_cp(const char *s, size_t n, size_t *i);

/*
 * The values of jinja_value.c, for jinja_eval.c: JavaScript's kinds as the
 * reference has them (a tuple is a list that is not iterable), an
 * object's members in order; all in the render's arena.
 */
enum { JV_UNDEF, JV_NULL, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_ARRAY, JV_TUPLE, JV_OBJECT, JV_KWARGS, JV_NS, JV_FUNC };

enum { JF_RAISE, JF_RANGE, JF_NAMESPACE, JF_STRFTIME, JF_UPPER, JF_LOWER, JF_STRIP, JF_TITLE, JF_CAPITALIZE, JF_RSTRIP,
       JF_LSTRIP, JF_STARTSWITH, JF_ENDSWITH, JF_SPLIT, JF_REPLACE, JF_GET, JF_ITEMS, JF_KEYS, JF_VALUES, JF_MACRO };

typedef struct trail_jenv trail_jenv;
typedef struct trail_jv trail_jv;
struct trail_jv {
	int t, b, fn;
	double num;
	const char *s; /* JV_STR */
	size_t n;
	trail_jv **v, **k;   /* elements; an object's values and keys (JV_STR) */
	size_t nv, cap;
	const trail_jv *self;         /* a method's object */
	const trail_jnode *mac; /* JF_MACRO */
	trail_jenv *menv;              /* where the macro was defined */
};

struct trail_jenv {
	trail_jenv *parent;
	const char **name;
	size_t *len;
	trail_jv **val;
	size_t n, cap;
};

typedef struct trail_jsink {
	char *p;
	size_t n, cap;
} trail_jsink;

typedef struct trail_jev {
	trail_jx *x;
	int ctl; /* 1 break, 2 continue, on their way to the loop */
	int depth;
	long long now;
} trail_jev;

#define JV_FAIL(E, nd, ...) trail_jx_fail((E)->x, TRAIL_EDATA, (nd) ? (nd)->line : 0, __VA_ARGS__)

extern const char *const trail_jv_type_name[]; /* by JV_ value */

typedef struct trail_jopt { /* tojson's options; NULL separators: Python's defaults */
	int indent, ascii;
	const trail_jv *item_sep, *key_sep;
} trail_jopt;
static inline int trail_jv_is_obj(const trail_jv *v) { return v->t == JV_OBJECT || v->t == JV_KWARGS; }
static inline int trail_jv_is_attr(const trail_jv *v) { return trail_jv_is_obj(v) || v->t == JV_NS; }
static inline int trail_jv_is_arr(const trail_jv *v) { return v->t == JV_ARRAY || v->t == JV_TUPLE; }
static inline int trail_jv_is_num(const trail_jv *v) { return v->t == JV_INT || v->t == JV_FLOAT; }
trail_jv *trail_jv_mk(trail_jev *E, int t);
trail_jv *trail_jv_mk_num(trail_jev *E, int t, double d);
trail_jv *trail_jv_mk_bool(trail_jev *E, int b);
trail_jv *trail_jv_mk_str(trail_jev *E, const char *s, size_t n);
trail_jv *trail_jv_mk_strcopy(trail_jev *E, const char *s, size_t n);
void trail_jv_push_v(trail_jev *E, trail_jv *a, trail_jv *k, trail_jv *val);
trail_jv *trail_jv_obj_get(const trail_jv *o, const char *k, size_t n);
void trail_jv_obj_set(trail_jev *E, trail_jv *o, trail_jv *k, trail_jv *val);
int trail_jv_truthy(const trail_jv *v);
void trail_jv_put(trail_jev *E, trail_jsink *o, const char *s, size_t n);
void trail_jv_puts(trail_jev *E, trail_jsink *o, const char *s);
trail_jv *trail_jv_sink_str(trail_jev *E, trail_jsink *o);
void trail_jv_to_json(trail_jev *E, trail_jsink *o, const trail_jv *v, const trail_jopt *op, int depth, int undef_null, const trail_jnode *nd);
void trail_jv_to_string(trail_jev *E, trail_jsink *o, const trail_jv *v, const trail_jnode *nd);
void trail_jv_value_str(trail_jev *E, trail_jsink *o, const trail_jv *v, const trail_jnode *nd);
trail_jv *trail_jv_concat(trail_jev *E, const trail_jv *a, const trail_jv *b, const trail_jnode *nd);
int trail_jv_loose_eq(trail_jev *E, const trail_jv *a, const trail_jv *b, const trail_jnode *nd);
int trail_jv_strict_eq(const trail_jv *a, const trail_jv *b);
size_t trail_jv_u16_len(const char *s, size_t n);
size_t *trail_jv_cp_offsets(trail_jev *E, const char *s, size_t n, size_t *count);
size_t trail_jv_trim_start(const char *s, size_t n);
size_t trail_jv_trim_end(const char *s, size_t n, size_t from);
trail_jv *trail_jv_case_map(trail_jev *E, const trail_jv *s, int up, const trail_jnode *nd);
trail_jv *trail_jv_title(trail_jev *E, const trail_jv *s);
const char *trail_jv_find(const char *h, size_t hn, const char *nd, size_t n);
trail_jv *trail_jv_split(trail_jev *E, const trail_jv *s, trail_jv **a, size_t na, const trail_jnode *nd);
trail_jv *trail_jv_replace(trail_jev *E, const trail_jv *s, const trail_jv *old, const trail_jv *nw, double count);
trail_jv *trail_jv_from_json(trail_jev *E, const json_t *j);

#endif
