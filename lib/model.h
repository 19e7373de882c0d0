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

#include "trail.h"

typedef struct trail_gpt2_config {
	int n_layer, n_head, n_embd, n_positions, vocab_size;
} trail_gpt2_config;

enum { TRAIL_LORA_C_ATTN = 1, TRAIL_LORA_ATTN_PROJ = 2, TRAIL_LORA_C_FC = 4, TRAIL_LORA_MLP_PROJ = 8 };

typedef struct trail_lora_config {
	int r;
	double alpha;
	int targets; /* TRAIL_LORA_* bits */
	int rslora;  /* scale alpha/sqrt(r) instead of alpha/r */
} trail_lora_config;

typedef struct trail_model trail_model;

/* Hugging Face config.json fields; missing or silly values are TRAIL_EDATA. */
int trail_gpt2_config_parse(const json_t *j, trail_gpt2_config *c, trail_error *err);
json_t *trail_gpt2_config_json(const trail_gpt2_config *c);
size_t trail_gpt2_num_params(const trail_gpt2_config *c);

/* A model with GPT-2's initialisation (normal 0.02, projections scaled by 1/sqrt(2L)). */
int trail_model_init(const trail_gpt2_config *c, uint64_t seed, trail_model **out,
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
const trail_gpt2_config *trail_model_config(const trail_model *m);
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

/* ---- inference --------------------------------------------------------------- */

/* A LoRA adapter's weights for inference, shared read-only between requests. */
typedef struct trail_lora_weights trail_lora_weights;
/* Load a PEFT adapter directory for this base; TRAIL_EDATA if shapes do not fit. */
int trail_lora_weights_load(const trail_model *base, const char *dir, trail_lora_weights **out,
			    trail_error *err);
void trail_lora_weights_free(trail_lora_weights *w);
size_t trail_lora_weights_bytes(const trail_lora_weights *w);

/* A sequence's key/value cache: [n_layer][2][n_positions][C] floats. */
typedef struct trail_kv trail_kv;
trail_kv *trail_kv_new(const trail_model *m);
void trail_kv_free(trail_kv *kv);
size_t trail_kv_bytes(const trail_model *m);

/*
 * One batched step over n rows: row i feeds token tok[i] at position pos[i]
 * of the sequence cached in kv[i], through adapter lora[i] (NULL: the base).
 * Rows of one sequence may come together (prefill), in position order.
 * Each base weight is one sgemm over all n rows; each adapter's low-rank
 * product runs over its own rows. logits [n,V] (NULL: only fill caches).
 */
int trail_model_step(trail_model *m, int n, const int32_t *tok, const int *pos, trail_kv *const *kv,
		     const trail_lora_weights *const *lora, float *logits, trail_error *err);

/* AdamW with decoupled weight decay (default 0) on every trainable parameter. */
typedef struct trail_adamw {
	double lr, beta1, beta2, eps, weight_decay;
	float *m, *v;
	size_t n;
	long t;
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

#endif
