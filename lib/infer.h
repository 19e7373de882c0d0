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
 * trail_infer keeps a scratch workspace (and its helper thread), so one
 * thread steps it at a time;
 * adapters and caches are only read by a step.
 */
#ifndef TRAIL_INFER_H
#define TRAIL_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct trail_infer trail_infer;

/* config.json + model.safetensors from a model directory (GPT-2 names, with or without "transformer."). */
int trail_infer_load(const char *dir, trail_infer **out, trail_error *err);
void trail_infer_free(trail_infer *m);
const trail_gpt2_config *trail_infer_config(const trail_infer *m);
/* Bytes of the base weights held in memory. */
size_t trail_infer_bytes(const trail_infer *m);
/*
 * Route every product, the attention and the LoRA deltas through plain
 * loops accumulating in double (the reference the tests compare with).
 */
void trail_infer_set_reference(trail_infer *m, int on);
/*
 * Split the row-wise work of a step (bias, low-rank products, attention,
 * LayerNorm, GELU) over n threads (1 or 2: one helper thread). The results
 * are the same bits for any n.
 */
void trail_infer_set_threads(trail_infer *m, int n);

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

#endif
