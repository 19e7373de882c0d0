/*
 * GPT-2-family transformer: learned positions, pre-LayerNorm, GELU (tanh),
 * tied embeddings; forward, backward, LoRA on any of c_attn, attn.c_proj,
 * c_fc, mlp.c_proj (PEFT's scaling alpha/r), every large product through
 * cblas_sgemm.
 *
 * Shapes (B batch, T sequence, C n_embd, V vocab, L layers, NH heads):
 *   wte [V,C]  wpe [P,C]  per layer: ln_1 [C]x2, c_attn W [C,3C] b [3C],
 *   attn.c_proj W [C,C] b [C], ln_2 [C]x2, c_fc W [C,4C] b [4C],
 *   mlp.c_proj W [4C,C] b [C];  ln_f [C]x2.   (Conv1D: y = x W + b)
 *   LoRA on a layer with W [in,out]: A [r,in], B [out,r] (PEFT's lora_A,
 *   lora_B), y += (alpha/r) (x A^T) B^T.
 *
 * Memory: one arena for the parameters, one for their gradients (made on
 * the first backward; none for a frozen base under LoRA), one for the LoRA
 * matrices and one for theirs, one for the activations.
 *
 * Ownership: a trail_model owns its arenas; arrays returned by accessors
 * stay owned by the model and are valid until the next forward/backward,
 * LoRA change or trail_model_free.
 */
#ifndef TRAIL_MODEL_H
#define TRAIL_MODEL_H
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/core.h"

/*
 * A model's shape, read from a Hugging Face config.json. arch picks the
 * architecture (TRAIL_ARCH_*; 0 is GPT-2, so a configuration written as
 * {L, NH, C, P, V} is a GPT-2 one).
 */
typedef struct trail_model_cfg {
	int n_layer, n_head, n_embd, n_positions, vocab_size;
	int arch;
	/* Llama-family (0 where an architecture has no such thing) */
	int n_kv_head, n_inner, head_dim; /* key/value heads (GQA), MLP width, per-head width */
	int untied;                       /* a separate lm_head instead of the embeddings */
	int qkv_bias;                     /* biases on q, k, v (Qwen2) */
	int rope_type;                    /* TRAIL_ROPE_* */
	double norm_eps, rope_theta;
	double rope_factor, rope_low, rope_high; /* rope_scaling: factor, low/high_freq_factor */
	int rope_orig;                    /* rope_scaling's original_max_position_embeddings */
} trail_model_cfg;
enum { TRAIL_ARCH_GPT2 = 0, TRAIL_ARCH_LLAMA, TRAIL_ARCH_QWEN2, TRAIL_ARCH_MISTRAL };
enum { TRAIL_ROPE_DEFAULT = 0, TRAIL_ROPE_LINEAR, TRAIL_ROPE_LLAMA3 };
typedef trail_model_cfg trail_gpt2_config; /* the name of earlier releases */

/* LoRA targets: GPT-2's four linear layers, then the Llama family's seven. */
enum { TRAIL_LORA_C_ATTN = 1, TRAIL_LORA_ATTN_PROJ = 2, TRAIL_LORA_C_FC = 4, TRAIL_LORA_MLP_PROJ = 8 };
enum {
	TRAIL_LORA_Q_PROJ = 1 << 4, TRAIL_LORA_K_PROJ = 1 << 5, TRAIL_LORA_V_PROJ = 1 << 6, TRAIL_LORA_O_PROJ = 1 << 7,
	TRAIL_LORA_GATE_PROJ = 1 << 8, TRAIL_LORA_UP_PROJ = 1 << 9, TRAIL_LORA_DOWN_PROJ = 1 << 10
};

typedef struct trail_lora_config {
	int r;
	double alpha;
	int targets; /* TRAIL_LORA_* bits; 0: every linear layer of the architecture */
	int rslora;  /* scale alpha/sqrt(r) instead of alpha/r */
	int arch;    /* TRAIL_ARCH_* of the base: PEFT's module names and fan_in_fan_out */
} trail_lora_config;

typedef struct trail_model trail_model;

/*
 * Hugging Face config.json: the architecture from "model_type" or
 * "architectures" (GPT-2 when neither is there), then its fields; an
 * architecture not built in is TRAIL_EDATA naming it, and so are missing or
 * silly values.
 */
int trail_model_config_parse(const json_t *j, trail_model_cfg *c, trail_error *err);
/* config.json for c (new reference), and its parameter count. */
json_t *trail_model_config_json(const trail_model_cfg *c);
size_t trail_model_num_params(const trail_model_cfg *c);
/* GPT-2's own, which the functions above dispatch to. */
int trail_gpt2_config_parse(const json_t *j, trail_model_cfg *c, trail_error *err);
json_t *trail_gpt2_config_json(const trail_model_cfg *c);
size_t trail_gpt2_num_params(const trail_model_cfg *c);

/* A model with its architecture's initialisation (GPT-2: normal 0.02, projections scaled by 1/sqrt(2L)). */
int trail_model_init(const trail_model_cfg *c, uint64_t seed, trail_model **out,
		     trail_error *err);
/*
 * Load config.json + model.safetensors (F32, F16 or BF16; names with or
 * without "transformer."; the causal-mask buffers and lm_head of Hugging
 * Face checkpoints are accepted and ignored) from a directory, or from a
 * .safetensors path with config.json beside it. A missing path is
 * TRAIL_ENOINPUT; a bad file, unknown tensor or a shape that disagrees with
 * the config is TRAIL_EDATA naming the file.
 */
int trail_model_load(const char *dir, trail_model **out, trail_error *err);
/* Write config.json + model.safetensors into dir (created if needed). */
int trail_model_save(const trail_model *m, const char *dir, trail_error *err);
void trail_model_free(trail_model *m);
const trail_model_cfg *trail_model_config(const trail_model *m);
/* Route every product through the naive reference loop instead of BLAS (tests). */
void trail_model_set_reference(trail_model *m, int on);

/* Add LoRA matrices (A seeded normal/kaiming-like, B zero, as PEFT); base weights freeze. */
int trail_model_add_lora(trail_model *m, const trail_lora_config *lc, uint64_t seed,
			 trail_error *err);
/* The LoRA configuration, or NULL without LoRA. */
const trail_lora_config *trail_model_lora(const trail_model *m);
/* Add a target name ("c_attn", "c_proj" = both projections, "attn.c_proj", "c_fc", "mlp.c_proj") to *bits. */
int trail_lora_targets_parse(const char *name, int *bits);
/* adapter_config.json as PEFT writes it (new reference); base_name may be NULL. */
json_t *trail_lora_config_json(const trail_lora_config *lc, const char *base_name);
/*
 * PEFT adapter directory: adapter_config.json + adapter_model.safetensors.
 * Loading accepts PEFT's keys with or without the adapter name
 * (".lora_A.weight" or ".lora_A.default.weight") and checks every shape; on
 * failure the model is left without LoRA.
 */
int trail_model_load_adapter(trail_model *m, const char *dir, trail_error *err);
int trail_model_save_adapter(const trail_model *m, const char *dir, const char *base_name,
			     trail_error *err);
/* Fold the LoRA product into the base weights (W += scale A^T B^T) and drop LoRA. */
int trail_model_merge_lora(trail_model *m, trail_error *err);
int trail_model_has_lora(const trail_model *m);

/*
 * Forward over tokens [B,T] (T <= n_positions). targets [B,T] may be NULL
 * (no loss); a target of -1 is ignored. Returns the mean loss over counted
 * targets in *loss. Logits [B,T,V] stay readable through trail_model_logits.
 */
int trail_model_forward(trail_model *m, const int32_t *tokens, const int32_t *targets, int B,
			int T, float *loss, trail_error *err);
const float *trail_model_logits(const trail_model *m);
/* Backward of the last forward's mean loss: accumulates into the gradients. */
int trail_model_backward(trail_model *m, trail_error *err);
void trail_model_zero_grad(trail_model *m);

/*
 * Trainable parameters as one flat vector (all weights, or only LoRA when
 * the model has LoRA), with their gradients. n is the element count.
 */
float *trail_model_params(trail_model *m, size_t *n);
float *trail_model_grads(trail_model *m, size_t *n);

/*
 * The trained linear layers, for attribution (per-layer factored gradient
 * projections, without forming a gradient): all 4 n_layer layers, or only
 * the LoRA-targeted ones when the model has LoRA, in layer order. After
 * trail_model_keep_linear_io(m, 1), a forward and a backward over one
 * sequence (B = 1), layer i gives its input activations X [T,in] and the
 * gradient of the mean loss with respect to its output dY [T,out] (rows are
 * positions; T is B*T of the last forward). Then the weight gradient is
 * dW = X^T dY [in,out]; for LoRA, dA = scale (dY B)^T X [r,in] and
 * dB = scale dY^T (X A^T) [out,r], with A, B, scale from
 * trail_model_linear_lora. name is "h.3.attn.c_attn" and so on.
 * Keeping dY costs B*T*out floats per layer.
 */
void trail_model_keep_linear_io(trail_model *m, int on);
int trail_model_num_linear(const trail_model *m);
int trail_model_linear_io(const trail_model *m, int i, const char **name, const float **X,
			  const float **dY, int *in, int *out, int *T);
int trail_model_linear_lora(const trail_model *m, int i, const float **A, const float **B, int *r,
			    double *scale);
/* The TRAIL_LORA_* bit of the i-th of those layers' kind (0 past the last). */
int trail_model_linear_target(const trail_model *m, int i);

/* AdamW with decoupled weight decay (default 0) on every trainable parameter. */
typedef struct trail_adamw {
	double lr, beta1, beta2, eps, weight_decay;
	float *m, *v;
	size_t n;
	long t;
	int zero_grads; /* set: the step zeroes each gradient once used, and the next trail_model_zero_grad is free */
} trail_adamw;
int trail_adamw_init(trail_adamw *o, size_t n);
/*
 * One step; grads are clipped to global norm `clip` first (0: no clipping).
 * Returns the norm before clipping; a non-finite norm changes nothing.
 */
double trail_adamw_step(trail_adamw *o, trail_model *m, double lr, double clip);
void trail_adamw_release(trail_adamw *o);

/* The L2 norm of a vector, summed in double in a fixed order. */
double trail_grad_norm(const float *g, size_t n);

/* Warmup then cosine decay to 10% of the peak. */
double trail_lr_schedule(double peak, long step, long warmup, long total);

/*
 * Tokenizers: GPT-2 byte-level BPE (vocab.json + merges.txt), a plain
 * byte tokenizer (ids 0-255; id 256 is end-of-text when the model's
 * vocabulary has room for it), and Hugging Face's tokenizer.json:
 * byte-level BPE with Llama-3's or Qwen's pre-tokeniser (kind "bpe") and
 * SentencePiece-style BPE with byte fallback (kind "sentencepiece"), their
 * added and special tokens, BOS and EOS (trail-formats(5) says exactly
 * what is read; the ids are those of the reference encoder
 * @lenml/tokenizers, tests/cli/hf-tokenizer.sh).
 *
 * GPT-2 BPE gives the ids of GPT-2's own encoder: its pre-tokenisation
 * regex with Unicode 15.0 letter and number classes and ECMAScript's \s,
 * then merges by rank. Input is bytes, not necessarily UTF-8: a byte that
 * does not start a valid UTF-8 sequence (overlong, surrogate, past
 * U+10FFFF, truncated, stray continuation) counts as one character that is
 * neither letter, number nor space, whose byte is merged like any other, so
 * decode(encode(s)) == s for every byte string. "<|endoftext|>" in text is
 * encoded as text; decode skips end-of-text and ids without a token.
 * tokenizer.json's tokenizers take the same bytes the same way (a byte
 * that is not UTF-8 is its byte's token, or its <0xNN> token); decode
 * skips special tokens and ids without a token, and decode(encode(s)) == s
 * except where the tokenizer itself loses text (NFC; SentencePiece's
 * U+2581 in the text, or a space after an added token).
 *
 * Ownership: the tokenizer handle is freed with trail_tokenizer_free
 * (NULL is a no-op); id and text buffers returned through pointers are
 * trail_malloc'd and the caller's. A loaded tokenizer may be used from
 * several threads at once.
 */

#include <stddef.h>
#include <stdint.h>


typedef struct trail_tokenizer trail_tokenizer;

int trail_tokenizer_bytes(trail_tokenizer **out);
/*
 * "bytes", or a directory with tokenizer.json ({"type":"bytes"}), with
 * vocab.json and merges.txt (Hugging Face's names), or with encoder.json and
 * vocab.bpe (OpenAI's names for the same files); else a directory with
 * Hugging Face's tokenizer.json (and tokenizer_config.json), or the path of
 * a tokenizer.json itself (tokenizer_config.json read beside it).
 */
int trail_tokenizer_load(const char *spec, trail_tokenizer **out, trail_error *err);
/*
 * Write the tokenizer's files into dir: tokenizer.json {"type":"bytes"}, or
 * vocab.json (compact, in id order) and merges.txt ("#version: 0.2", then
 * by rank), the same bytes for the same tokenizer whichever names it was
 * read from; a byte tokenizer's tokenizer.json there is removed.
 * A tokenizer.json tokenizer writes tokenizer.json and tokenizer_config.json
 * back as they were read.
 */
int trail_tokenizer_save(const trail_tokenizer *t, const char *dir, trail_error *err);
void trail_tokenizer_free(trail_tokenizer *t);

const char *trail_tokenizer_kind(const trail_tokenizer *t); /* "bytes", "gpt2", "bpe" or "sentencepiece" */
size_t trail_tokenizer_vocab_size(const trail_tokenizer *t);
int32_t trail_tokenizer_eot(const trail_tokenizer *t); /* end-of-text (tokenizer.json: EOS), -1 when none */

int trail_tokenizer_encode(const trail_tokenizer *t, const char *text, size_t len,
			   int32_t **ids, size_t *n, trail_error *err);
/*
 * encode with flags: TRAIL_TOKENIZE_SPECIAL splits special tokens out of
 * the text (without it their text is encoded as text); TRAIL_TOKENIZE_ADD
 * adds the special tokens of tokenizer.json's post-processor template
 * (Llama-2's BOS, say), as the reference encoder does. Both apply
 * to tokenizer.json's tokenizers only; encode is encode_ex with flags 0.
 */
enum { TRAIL_TOKENIZE_SPECIAL = 1, TRAIL_TOKENIZE_ADD = 2 };
int trail_tokenizer_encode_ex(const trail_tokenizer *t, const char *text, size_t len, unsigned flags,
			      int32_t **ids, size_t *n, trail_error *err);
int32_t trail_tokenizer_bos(const trail_tokenizer *t); /* -1 when none */
/* Decoding is byte-exact: decode(encode(s)) == s. */
int trail_tokenizer_decode(const trail_tokenizer *t, const int32_t *ids, size_t n, char **text,
			   size_t *len, trail_error *err);
/* The bytes of one token (for streaming output); NULL if out of range. */
const char *trail_tokenizer_token(const trail_tokenizer *t, int32_t id, size_t *len);

/*
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {...}}, then the tensor bytes. Reading maps the file and converts F32,
 * F16 and BF16 to float; writing emits F32 with names sorted, offsets
 * contiguous and the header padded to 8 bytes, so the same tensors give the
 * same bytes.
 *
 * Ownership: a trail_st owns its mapping; trail_st_free releases it.
 */

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>


typedef struct trail_st trail_st;

/*
 * Map and check a file: header length and JSON, every entry's dtype, shape
 * and offsets, and that the tensors cover the data exactly (a truncated
 * file is TRAIL_EDATA here, naming the file). A missing file is
 * TRAIL_ENOINPUT.
 */
int trail_st_open(const char *path, trail_st **out, trail_error *err);
void trail_st_free(trail_st *st);
/* The "__metadata__" object (string values), or NULL; owned by st. */
const json_t *trail_st_metadata(const trail_st *st);
/* Does the file hold `name`? */
int trail_st_has(const trail_st *st, const char *name);
/* Number of tensors, and the i-th name (in header order). */
size_t trail_st_count(const trail_st *st);
const char *trail_st_name(const trail_st *st, size_t i);
/*
 * Copy tensor `name` into dst as float, checking its shape against
 * shape[0..ndim). TRAIL_EDATA for a missing tensor, a wrong shape or dtype.
 */
int trail_st_read_f32(const trail_st *st, const char *name, const int64_t *shape, int ndim,
		      float *dst, trail_error *err);

typedef struct trail_st_tensor {
	const char *name;
	int64_t shape[4];
	int ndim;
	const float *data;
} trail_st_tensor;

/* Write tensors (any order; sorted on output) atomically. metadata may be NULL. */
int trail_st_write(const char *path, const trail_st_tensor *t, size_t n, const json_t *metadata,
		   trail_error *err);

/*
 * Inference for serving: a base model held for decoding, LoRA adapters'
 * weights, a KV cache per sequence, and one batched step over rows of many
 * sequences and adapters — each base weight one sgemm over all rows, each
 * adapter's low-rank product over its own rows (the CPU form of Punica's
 * SGMV: gather the segment's rows, x A^T then (.) B^T, scatter-add).
 *
 * Batch invariance: base products run in row blocks of a fixed height (the
 * last zero-padded) and the low-rank products row by row in a fixed order,
 * so a row's result is the same bits whatever else shares the step — a
 * request's output does not depend on its company.
 *
 * Shapes (C n_embd, V vocab, L layers, P n_positions): weights as in
 * model.h; a LoRA layer with W [in,out] has A [r,in], B [out,r] (PEFT's
 * lora_A, lora_B) and adds scale (x A^T) B^T, scale = alpha/r (alpha/sqrt r
 * with rsLoRA). A KV cache of capacity cap holds [L][2][cap][C] floats.
 *
 * Ownership: each handle owns its memory; *_free(NULL) is a no-op. A
 * trail_infer keeps a scratch workspace and runs on the process's pool
 * (trail_compute_set), so one thread steps it at a time;
 * adapters and caches are only read by a step.
 */

#include <stddef.h>
#include <stdint.h>


typedef struct trail_infer trail_infer;

/* A base as trail_base_open takes it (a model directory, shards or a GGUF file; GPT-2 names with or without "transformer."). */
int trail_infer_load(const char *dir, trail_infer **out, trail_error *err);
void trail_infer_free(trail_infer *m);
const trail_model_cfg *trail_infer_config(const trail_infer *m);
/* Bytes of the base weights held in memory (float32, and the bf16 copy when set). */
size_t trail_infer_bytes(const trail_infer *m);
/* Bytes of base weights one step reads at the precision set: the linear layers and the head. */
size_t trail_infer_step_bytes(const trail_infer *m);
/*
 * Route every product, the attention and the LoRA deltas through plain
 * loops accumulating in double (the reference the tests compare with).
 */
void trail_infer_set_reference(trail_infer *m, int on);
/*
 * Run steps on n threads: the process's pool (trail_compute_set, keeping
 * its precision), shared with anything else that computes. The base
 * products go in fixed units (row blocks times column blocks) and the
 * row-wise work (bias, low-rank products, attention, norms, activations)
 * row by row, each unit whole on one thread, so the results are the same
 * bits for any n.
 */
void trail_infer_set_threads(trail_infer *m, int n);
/*
 * The base products' precision (default TRAIL_PREC_FP32). bf16: each base
 * weight (and the head) is converted once, here, to bfloat16 (rounded to
 * nearest even) and kept beside the float32 weights; a step rounds its
 * rows' inputs to bfloat16 and sums in float32 (oneDNN, one primitive per
 * block shape, each block on one thread). Adapters, attention, norms and
 * the KV cache stay float32. The bits depend on the precision and on
 * oneDNN's instruction set (trail_compute_isa), never on the threads or
 * the batch.
 */
int trail_infer_set_precision(trail_infer *m, int prec, trail_error *err);
int trail_infer_precision(const trail_infer *m);

typedef struct trail_lora_w trail_lora_w;
/*
 * A PEFT adapter directory for this base (adapter_config.json +
 * adapter_model.safetensors, keys with or without ".default"): the file is
 * mapped, checked and converted. TRAIL_ENOINPUT if missing, TRAIL_EDATA if
 * its config or tensors do not fit the base.
 */
int trail_lora_w_load(const trail_infer *m, const char *dir, trail_lora_w **out, trail_error *err);
void trail_lora_w_free(trail_lora_w *w);
size_t trail_lora_w_bytes(const trail_lora_w *w);
int trail_lora_w_rank(const trail_lora_w *w);

typedef struct trail_kvc trail_kvc;
/* A cache for positions 0..cap-1 (cap <= n_positions); NULL when out of memory. */
trail_kvc *trail_kvc_new(const trail_infer *m, int cap);
void trail_kvc_free(trail_kvc *kv);
size_t trail_kvc_bytes(const trail_infer *m, int cap);

/*
 * One step over n rows: row i feeds token tok[i] at position pos[i] (below
 * its cache's cap) of the sequence cached in kv[i], through adapter
 * lora[i] (NULL: the base). Rows of one sequence come together, in
 * position order (a prompt prefilled in one step, or in chunks over
 * several). logits [nout,V] for rows out_rows[0..nout) (nout 0: only fill
 * the caches).
 */
int trail_infer_step(trail_infer *m, int n, const int32_t *tok, const int *pos, trail_kvc *const *kv,
		     const trail_lora_w *const *lora, int nout, const int *out_rows, float *logits,
		     trail_error *err);

/*
 * Training on an exact list of records: tokenise, batch in a seeded order,
 * AdamW with warmup + cosine, gradient clipping, a loss curve, checkpoints
 * to resume from, and the training.json manifest that ties the weights to
 * the records.
 *
 * Ownership: a trail_dataset owns its records (json references) and token
 * arrays; trail_dataset_free releases them.
 */

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>


typedef struct trail_dataset {
	size_t n;
	int32_t **tok;    /* per record: tokens then end-of-text */
	size_t *len;
	int32_t *first;   /* first token that counts in the loss (instruct: the completion) */
	uint8_t **mask;   /* NULL, or per record NULL or len flags: the tokens that count (chat: the assistant's) */
	char (*id)[72];   /* record ids */
	char **contributor; /* or NULL entries */
	char root[64];    /* base64 RFC 9162 root over the record ids */
	char order[72];   /* digest of the ids, one per line, in order */
	/*
	 * The training rows: none (row_rec NULL) when each record is one row
	 * from its first token, cut at seq; after trail_dataset_split, row i is
	 * record row_rec[i] from token row_off[i], in record order.
	 */
	size_t nrows;
	size_t *row_rec, *row_off;
} trail_dataset;

void trail_dataset_free(trail_dataset *d);
/* Training rows: d->nrows after trail_dataset_split, else d->n. */
size_t trail_dataset_rows(const trail_dataset *d);
/*
 * Records a row of seq tokens cuts: those with more than seq targets
 * (len > seq + 1). *first (may be NULL) gets the first such record, or n.
 */
size_t trail_dataset_long(const trail_dataset *d, int seq, size_t *first);
/* Whether token p of record r counts in the loss (as a target): from first on, where the mask allows. */
int trail_dataset_target(const trail_dataset *d, size_t r, size_t p);
/*
 * Each record longer than seq becomes consecutive windows of seq input
 * tokens (window k from token k*seq, its targets the next seq tokens), so
 * every target of the record is a target of exactly one row; windows
 * with no target that counts (an instruct prompt's) are left out. Ids,
 * root and order stay the records'. Idempotent for one seq.
 */
int trail_dataset_split(trail_dataset *d, int seq, trail_error *err);
/*
 * Row r as training fills it: x [T] the window's tokens (0 past the
 * record's end), y [T] the next token where the loss counts, else -1.
 * Returns the count of targets that count.
 */
long trail_dataset_row(const trail_dataset *d, size_t r, int T, int32_t *x, int32_t *y);
/*
 * The training order of epoch e, a function of (seed, e): row
 * g = step * batch + b of a run is perm[g mod n] of epoch g / n (n the
 * dataset's rows). metagrad.c replays it; attribution captures rows by it.
 */
void trail_train_order(size_t *perm, size_t n, uint64_t seed, uint64_t e);
/* The record row r is a window of. */
static inline size_t trail_dataset_row_record(const trail_dataset *d, size_t r)
{
	return d->row_rec ? d->row_rec[r] : r;
}

typedef struct trail_train_opts {
	int batch, seq;
	long steps;   /* total optimiser steps */
	double lr;    /* peak */
	long warmup;
	double clip;
	uint64_t seed;
	int threads;  /* BLAS threads, recorded: the bits depend on it */
	FILE *metrics;  /* one NDJSON line per step, or NULL */
	FILE *progress; /* progress bar, or NULL */
	volatile sig_atomic_t *stop; /* set (e.g. by SIGINT) to stop after the current step */
	const char *checkpoint; /* where checkpoints go, or NULL */
	long checkpoint_every;  /* also every so many steps (0: only when stopping early) */
	const struct trail_train_hook *hook; /* or NULL: called around each step (below) */
} trail_train_opts;

/*
 * Seeing each step's own forward and backward (attribution rows captured
 * while training). before: the step's batch, rows[B] (dataset rows) and
 * counts[B] (their targets), before its forward; it returns 1 to be called
 * after (linear layers' inputs and output gradients then kept, as
 * trail_model_keep_linear_io), 0 not to, or a negative TRAIL_E* code.
 * after: once the step's backward is done, before its optimiser update;
 * nonzero (a TRAIL_E* code, err set) stops the run with that code. The
 * hook does not change the weights' bits.
 */
typedef struct trail_train_hook {
	int (*before)(void *ctx, long step, const size_t *rows, const long *counts, int B, trail_error *err);
	int (*after)(void *ctx, trail_model *m, long step, const size_t *rows, const long *counts, int B, int T,
		     trail_error *err);
	void *ctx;
} trail_train_hook;

/*
 * A run in progress: steps done, the optimiser state and the loss curve.
 * Record g = step * batch + b of the run is record perm_e[g mod n] of
 * epoch e = g / n, each epoch's permutation seeded by (seed, e): the data
 * order is a function of the step, so a run continues from any step.
 */
typedef struct trail_train_run {
	long step;
	trail_adamw opt;
	float *curve; /* [steps] */
	char settings[72]; /* digest of everything the result depends on */
} trail_train_run;

/*
 * The digest of the settings a run's result depends on: the records and
 * their order, the hyper-parameters and `extra` (model configuration, base
 * weights, LoRA). A checkpoint only resumes a run with the same digest.
 */
void trail_train_settings(const trail_dataset *d, const trail_train_opts *o, const json_t *extra,
			  char out[72]);
/* A fresh run for the model's trainable parameters. */
int trail_train_run_init(trail_train_run *r, trail_model *m, const trail_train_opts *o,
			 const char settings[72], trail_error *err);
void trail_train_run_release(trail_train_run *r);
/*
 * Checkpoints: a safetensors file with the trainable parameters, the
 * optimiser moments and the loss curve; the step and settings digest in its
 * metadata. Loading restores the model's trainable parameters and the run;
 * TRAIL_EDATA for a damaged file or other settings (the message says which).
 */
int trail_train_checkpoint_save(const char *path, trail_model *m, const trail_train_run *r,
				trail_error *err);
int trail_train_checkpoint_load(const char *path, trail_model *m, const trail_train_opts *o,
				const char settings[72], trail_train_run *r, trail_error *err);

/*
 * Train m on d from r->step to o->steps. Stops early when *o->stop is set
 * (TRAIL_EAGAIN) or the loss or gradient is not finite (TRAIL_EDATA, the
 * weights and r those of the last good step); in both cases, and every
 * o->checkpoint_every steps, r is saved to o->checkpoint (but never weights
 * that are not finite: an earlier checkpoint is kept then).
 */
int trail_train(trail_model *m, const trail_dataset *d, const trail_train_opts *o, trail_train_run *r,
		trail_error *err);

/* Mean loss of the model over the whole dataset (batches of o->batch). */
int trail_eval_loss(trail_model *m, const trail_dataset *d, int batch, int seq, double *loss,
		    trail_error *err);

/*
 * The training.json manifest: the records (ids in training order with their
 * contributors), the Merkle root over them and the digest of their order,
 * the hyper-parameters, the loss curve, and `extra` members (datanet,
 * tree size, base model...). New reference.
 */
json_t *trail_training_manifest(const trail_dataset *d, const trail_train_opts *o,
				const trail_train_run *r, const json_t *extra);

/*
 * Metagradients (metagrad.c): the derivative of a query's loss after a
 * training run with respect to each record's weight eps_i in the training
 * loss (eps_i = 1 as trained; the batch loss is sum_b eps_b l_b / K, l_b
 * the summed token losses of row b, K the batch's counted targets).
 *
 * trail_metagrad_replay runs the training of o on d from the model's
 * current trainable parameters (the run's start) and fresh AdamW moments,
 * exactly as trail_train does (fp32: the same bits), storing the weights
 * and moments every `every` steps; the model is left at the final weights.
 * trail_metagrad_query then runs the reverse pass through every optimiser
 * step for one query (tokens [n], the loss over targets from `first` on):
 * the AdamW step's vector-Jacobian product (moments, bias correction,
 * weight decay, clipping to the global norm), per-row gradients dotted
 * with the gradient's adjoint, and Hessian-vector products of the batch
 * loss by central differences of gradients along the unit adjoint, a step
 * of fd_eps * max(1, |w|). Each segment of `every` steps is recomputed
 * from its stored state (checked bit for bit against the next one).
 * Memory: (steps/every + every + 2) x 3 x n floats, and 5 n doubles.
 * Cost per query: per step, the segment's recomputation, the batch
 * gradient, each row's own and two for the Hessian-vector product: about
 * five batch passes (attr-score(1)). dq [d->n]: dQ/deps_i, summed over a
 * record's rows.
 */
typedef struct trail_metagrad_opts {
	long every;    /* 0: ceil(sqrt(steps)) */
	double fd_eps; /* 0: 1e-3 */
	/* [d->n] or NULL: the run with only these records (keep[i] != 0, eps 1; the
	   others' targets ignored, eps 0, the batch loss still over all K targets),
	   and its derivative there, for every record */
	const unsigned char *keep;
	/* the audit's (attr-score --method exact --samples K), not the replay's: 0
	   the run's own derivative, K the mean over K seeded half-runs' */
	long samples;
} trail_metagrad_opts;
typedef struct trail_metagrad trail_metagrad;
int trail_metagrad_replay(trail_model *m, const trail_dataset *d, const trail_train_opts *o,
			  const trail_metagrad_opts *mo, trail_metagrad **out, trail_error *err);
/* The replay's loss curve [steps] (the mean batch losses, as trail_train's). */
const float *trail_metagrad_losses(const trail_metagrad *g);
int trail_metagrad_query(trail_metagrad *g, const int32_t *tok, size_t n, size_t first, double *dq,
			 trail_error *err);
/* What the last query cost: forward-backward passes of one row each. */
unsigned long long trail_metagrad_rows(const trail_metagrad *g);
void trail_metagrad_free(trail_metagrad *g);

/*
 * Parse "r=8,alpha=16,targets=c_attn,c_proj,rslora=1" (defaults r 8, alpha 16,
 * every linear layer); Llama-family targets are q_proj, k_proj, v_proj,
 * o_proj, gate_proj, up_proj, down_proj.
 */
int trail_lora_spec_parse(const char *spec, trail_lora_config *lc, trail_error *err);

/*
 * The threads and precision of the model's products. fp32: float32
 * throughout (OpenBLAS); bf16: the linear layers' products (forward, the
 * weights' gradient and the input's) take bfloat16 inputs with float32
 * sums and outputs (oneDNN); weights, gradients and optimiser state stay
 * float32. Every product is cut into fixed blocks, so the bits depend on
 * the precision (and oneDNN's instruction set, trail_compute_isa) but
 * never on the thread count. Process-wide.
 */
enum { TRAIL_PREC_FP32, TRAIL_PREC_BF16, TRAIL_PREC_INT8 }; /* int8: serving only (trail_infer_set_precision) */
#define TRAIL_MAX_THREADS 256
int trail_compute_set(int threads, int prec, trail_error *err);
int trail_compute_threads(void);
int trail_compute_precision(void);
/* bf16 where the CPU has native bf16 dot products (oneDNN's ISA has AVX512_BF16 or AMX), else fp32. */
int trail_precision_default(void);
int trail_precision_parse(const char *s, int *prec, trail_error *err);
const char *trail_precision_name(int prec);
/* oneDNN's instruction set, e.g. avx512_core_bf16 (capped by ONEDNN_MAX_CPU_ISA). */
const char *trail_compute_isa(void);
/* The cores this process may run on (sched_getaffinity). */
int trail_threads_default(void);
/* Set the thread count, keeping the precision. */
void trail_blas_threads(int n);

/*
 * Base models and GGUF (llama.cpp's model file, versions 2 and 3).
 *
 * A base is a directory with config.json and model.safetensors, or with
 * config.json and model.safetensors.index.json (Hugging Face's shards: its
 * weight_map names, for every tensor, the shard beside it that holds it);
 * a .safetensors or .index.json path with config.json beside it; or a GGUF
 * file, whose metadata is the configuration and whose tensors are read
 * under Hugging Face's names (trail-formats(5) gives the mapping).
 *
 * A GGUF file is mapped and checked whole when opened: its version, every
 * key, value type, string and array length (arrays nested up to three
 * deep), every tensor's name, shape, type, offset and size against the
 * file, with arithmetic that cannot overflow; tensors of types other than
 * F32, F16, BF16 and Q8_0 are refused by name. Q8_0 is dequantised (blocks
 * of 32: an fp16 scale and 32 int8).
 *
 * Ownership: trail_gguf owns its mapping; trail_gguf_free(NULL) is a no-op.
 */
typedef struct trail_gguf trail_gguf;
enum { TRAIL_GGUF_F32 = 0, TRAIL_GGUF_F16 = 1, TRAIL_GGUF_Q8_0 = 8, TRAIL_GGUF_BF16 = 30 }; /* ggml's type ids */

/* TRAIL_ENOINPUT for a missing file, TRAIL_EDATA (naming the file) for anything wrong in it. */
int trail_gguf_open(const char *path, trail_gguf **out, trail_error *err);
/* The same over bytes the caller keeps alive until trail_gguf_free; name is for messages. */
int trail_gguf_parse(const void *buf, size_t len, const char *name, trail_gguf **out, trail_error *err);
void trail_gguf_free(trail_gguf *g);
/* Does the file start with GGUF's magic? */
int trail_gguf_is(const char *path);
uint32_t trail_gguf_version(const trail_gguf *g);
size_t trail_gguf_kv_count(const trail_gguf *g);
/* The i-th key and its GGUF value type (8 string, 9 array, ...); NULL past the last. */
const char *trail_gguf_kv_key(const trail_gguf *g, size_t i, int *type);
size_t trail_gguf_count(const trail_gguf *g);
/* Tensor i: its GGUF name, ggml type, dimensions and ne (innermost first, 1 past nd). */
int trail_gguf_tensor(const trail_gguf *g, size_t i, const char **name, int *type, int *nd, int64_t ne[4]);
/* Tensor i as floats, in the file's order (dst holds the product of ne). */
int trail_gguf_read(const trail_gguf *g, size_t i, float *dst);
/* "F32", "Q4_K"... for a ggml type id; NULL when unknown. */
const char *trail_gguf_type_name(int type);
/* The model configuration from the metadata (general.architecture llama or qwen2). */
int trail_gguf_config(const trail_gguf *g, trail_model_cfg *c, trail_error *err);
/* The tokenizer stored in the file (tokenizer.ggml.*); TRAIL_ENOINPUT when it has none. */
int trail_gguf_tokenizer(const trail_gguf *g, trail_tokenizer **out, trail_error *err);
/*
 * Write m (the Llama family) as GGUF version 3 with its matrices in type
 * (TRAIL_GGUF_*; norms and biases F32, Q8_0 matrices whose rows are not
 * whole blocks F16), q and k in llama.cpp's row order, and tk's arrays
 * (a tokenizer.json tokenizer; NULL: none), atomically.
 */
int trail_gguf_write(const char *path, const trail_model *m, const trail_tokenizer *tk, int type, trail_error *err);
/*
 * Write m's LoRA adapter (loaded with trail_model_load_adapter, or trained)
 * as a llama.cpp LoRA adapter GGUF for m written by trail_gguf_write:
 * general.type "adapter", adapter.lora.alpha, each adapted weight's
 * lora_a and lora_b in type (F32, F16, BF16 or Q8_0, as above), lora_b of
 * q and k in llama.cpp's row order. TRAIL_EUSAGE when m has no LoRA.
 */
int trail_gguf_write_adapter(const char *path, const trail_model *m, int type, trail_error *err);

/*
 * Open a base: its configuration and its tensors under Hugging Face's
 * names (*st, freed by the caller). TRAIL_ENOINPUT when it is missing.
 */
int trail_base_open(const char *base, trail_model_cfg *c, trail_st **st, trail_error *err);
/*
 * The digest that names a base's weights: of model.safetensors (or the
 * .safetensors or GGUF file given); for shards, of the lines "DIGEST NAME\n",
 * one per shard in name order.
 */
int trail_base_digest(const char *base, char out[72], trail_error *err);

/*
 * Chat templates: the chat_template of tokenizer_config.json rendered for a
 * conversation byte for byte as @huggingface/jinja renders it (with
 * trim_blocks and lstrip_blocks, as transformers does), in the subset of
 * Jinja such templates use: {{ }}, {% %}, {# #}, whitespace control, if,
 * for (loop.*, else, break, continue, `for x in xs if c`), set (also of
 * namespace members and blocks), macros, filter blocks, the usual filters,
 * tests, string and dict methods, slices, namespace(), range(),
 * raise_exception() and strftime_now() (tests/cli/chat-template.sh
 * compares them). A construct outside the subset, or one the reference
 * rejects, gives TRAIL_EDATA with the template's line in err, never
 * different output; raise_exception(msg) gives TRAIL_EDATA with msg.
 *
 * trail_jinja_render: the template's len bytes with the variables of the
 * object vars (NULL: none); strftime_now() reads the local time of now
 * (seconds since the epoch; -1 for the present). *out is NUL-terminated,
 * *olen (if not NULL) its length; both the caller's (trail_free).
 * trail_chat_render: with {messages, add_generation_prompt} and the members
 * of extra (bos_token, eos_token, ...; NULL: none); out as above.
 * trail_chat_config: the chat_template of dir/tokenizer_config.json (a
 * string, or the "default" of a list of {name, template}) into *tmpl, and
 * the variables transformers passes beside the messages into *vars: tools
 * and documents null, bos_token, eos_token, unk_token, sep_token,
 * pad_token, cls_token and mask_token where the config names them (as
 * strings, an AddedToken by its content). TRAIL_ENOINPUT when there is no
 * tokenizer_config.json or it has no chat_template. Both the caller's.
 * trail_tokenizer_chat: the same from the tokenizer_config.json a
 * tokenizer was loaded with.
 */
int trail_jinja_render(const char *tmpl, size_t len, const json_t *vars, long long now, char **out, size_t *olen,
		       trail_error *err);
int trail_chat_render(const char *tmpl, const json_t *messages, int add_generation_prompt, const json_t *extra,
		      char **out, trail_error *err);
int trail_chat_config(const char *dir, char **tmpl, json_t **vars, trail_error *err);
int trail_tokenizer_chat(const trail_tokenizer *t, char **tmpl, json_t **vars, trail_error *err);

#endif
